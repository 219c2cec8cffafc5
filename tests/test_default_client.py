"""Lazy images (a large TIFF, zarr) read in this process beside a dask Client that the user
made the default (a notebook's, dask-jobqueue's): every read went to its cluster, which
cannot be sent an open TIFF ('Could not serialize object of type _HLGExprSequence') and
read a zarr's pixels on its workers for this process."""

import numpy as np
import pytest
import tifffile
import zarr

from helpers import ThresholdNet
from napari_mutualseg.blockwise import measure_blockwise
from napari_mutualseg.boxes import boxes_from_labels
from napari_mutualseg.image_task import measure_image
from napari_mutualseg.images import AxisImage
from napari_mutualseg.io import read_image
from napari_mutualseg.jobs import find_images
from napari_mutualseg.measure import measure_planes
from napari_mutualseg.models import ModelPair
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.synthetic import synthetic_volume
from napari_mutualseg.training import MutualTrainer, TrainConfig

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """In this process (its workers are threads), which serialises what it is sent as a
    cluster of processes does, and starts in a fraction of a second."""
    with distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as made:
        yield made


@pytest.fixture
def client(cluster):
    """The default Client of each test (the default for a test only: dask's setting is
    checked after each)."""
    with distributed.Client(cluster) as made:
        yield made


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Three 48 x 48 planes of cells as a lazy TIFF and a zarr store, in memory, and their
    cells."""
    folder = tmp_path_factory.mktemp("lazy")
    _, truth = synthetic_volume((3, 48, 48), 6, seed=2)
    pixels = ((truth > 0) * 800 + 100 + np.arange(48) % 7).astype(np.uint16)
    tifffile.imwrite(folder / "stack.tif", pixels, imagej=True, metadata={"axes": "ZYX"})
    store = zarr.open(str(folder / "stack.zarr"), mode="w", shape=pixels.shape, chunks=(1, 32, 32))
    store[:] = pixels
    return folder, pixels, truth


def _pair() -> ModelPair:
    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})


def _lazy(folder, kind):
    if kind == "tif":
        return AxisImage.from_file(folder / "stack.tif", lazy=True)
    return AxisImage.from_file(folder / "stack.zarr", axes="ZYX")


@pytest.mark.parametrize("kind", ["tif", "zarr"])
def test_segment_predict_and_measure_read_a_lazy_image_here(client, stack, kind):
    folder, pixels, _ = stack
    image = _lazy(folder, kind)
    assert not isinstance(image.data, np.ndarray)
    pair = _pair()
    expected = pair.segment(pixels, axes="ZYX")
    assert expected.max() > 1
    with distributed.get_task_stream(client) as sent:
        np.testing.assert_array_equal(pair.segment(image), expected)
        blocks = pair.segment(image, blockwise=True, block_size=32, halo=8)
        planes = [p.labels for p in pair.predict_planes(image)]
        table = measure_planes((planes[z], image.plane_array(z)) for z in range(image.n_planes))
        whole = read_image(folder / f"stack.{kind}")
        by_blocks = measure_blockwise(planes[1], image.plane_array(1), block_size=32, halo=8)
        series = AxisImage(image.data, "TYX")  # a time series is measured frame by frame
        frames = measure_image(np.stack(planes), series, None)
    assert blocks.max() > 1 and len(table["label"]) > 1 and len(by_blocks["label"]) > 1
    assert len(frames["label"]) > 1 and set(frames["t"]) <= {0, 1, 2}
    np.testing.assert_array_equal(whole, pixels)
    assert sent.data == []  # nothing was read on the cluster


def test_training_and_a_folder_search_read_lazy_images_here(client, stack):
    folder, _, truth = stack
    supervisions = [make_supervision((48, 48), boxes_from_labels(truth[1])), None, None]
    config = TrainConfig(
        rounds=1, steps_per_round=2, batch_size=1, patch_size=32, width=4, depth=2, device="cpu"
    )
    with distributed.get_task_stream(client) as sent:
        assert len(list(MutualTrainer(_lazy(folder, "tif"), supervisions, config))) == 1
        assert sorted(p.name for p in find_images([folder])) == ["stack.tif", "stack.zarr"]
    assert sent.data == []
