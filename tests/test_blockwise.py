"""Block-by-block segmentation: cells cut by block faces stay whole, outputs keep pixel size."""

import os
import weakref

import numpy as np
import pytest
import tifffile
import torch
from skimage.segmentation import find_boundaries

from napari_mutualseg import blockwise
from napari_mutualseg.blockwise import block_grid, default_halo, segment_blockwise
from napari_mutualseg.images import AxisImage
from napari_mutualseg.io import write_labels
from napari_mutualseg.models import ModelPair
from napari_mutualseg.ome import PixelSize
from napari_mutualseg.preprocess import channel_ranges
from napari_mutualseg.synthetic import synthetic_scene

BLOCK = 64


class _PixelNet(torch.nn.Module):
    """A 'network' that reads the class off each pixel: 0 background, 1 cell, 0.5 boundary.

    Its output at a pixel depends on that pixel only, so whole-image and block-by-block
    probabilities are equal and any difference in the labels comes from the blocks.
    """

    divisor = 1

    def __init__(self):
        super().__init__()
        self.arch = {"in_channels": 1, "n_classes": 3}
        self.register_buffer("centres", torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1))

    def forward(self, x):
        return -100 * (x - self.centres) ** 2


def _pair() -> ModelPair:
    return ModelPair(_PixelNet(), _PixelNet())


def _image_of(truth: np.ndarray) -> np.ndarray:
    """What the pixel net reads back as ``truth``: cells 1, their edges 0.5, background 0."""
    image = (truth > 0).astype(np.float32)
    image[find_boundaries(truth, mode="inner")] = 0.5
    return image


def _cells_across_faces() -> np.ndarray:
    """Discs on block faces and corners, and touching pairs divided along a face."""
    yy, xx = np.mgrid[:192, :192]
    centres = [(64, 30), (30, 128), (64, 64), (128, 128), (64, 128), (128, 64), (170, 100)]
    centres += [(118, 20), (138, 20), (20, 54), (20, 74)]  # touching, split by a face
    truth = np.zeros((192, 192), np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= 9.5**2) & (truth == 0)] = k
    return truth


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects, whatever their numbers."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (
        np.unique(pairs[0]).size == pairs.shape[1] and np.unique(pairs[1]).size == pairs.shape[1]
    )


def pixel_size_of(path):
    return PixelSize.of(AxisImage.from_file(path))


def test_cells_across_block_faces_and_corners_get_one_label_each():
    truth = _cells_across_faces()
    image = _image_of(truth)
    pair = _pair()
    labels = pair.segment(image, blockwise=True, block_size=BLOCK, halo=32)
    assert len(block_grid(image.shape, BLOCK, 32)) == 9
    assert labels.max() == truth.max()  # no cell counted twice
    for k in range(1, truth.max() + 1):
        inside = labels[truth == k]
        assert np.unique(inside).size == 1 and inside[0] > 0  # no cell split at a face
    assert _same_objects(labels, pair.segment(image, blockwise=False))


def test_small_blocks_give_the_whole_image_segmentation():
    _, truth, _ = synthetic_scene((150, 170), 30, seed=3)
    image = _image_of(truth) * 300 + 100  # any intensity range: the percentiles are global
    pair = _pair()
    whole = pair.segment(image, blockwise=False)
    for block, halo in ((32, 32), (64, 64), (96, 32)):
        blocks = pair.segment(image, blockwise=True, block_size=block, halo=halo)
        assert blocks.max() == whole.max() and _same_objects(blocks, whole)


def test_a_halo_narrower_than_the_cells_is_reported():
    image = _image_of(_cells_across_faces())
    with pytest.warns(UserWarning, match="larger halo"):
        _pair().segment(image, blockwise=True, block_size=BLOCK, halo=0)
    with pytest.warns(UserWarning, match="larger halo"):  # labels written into out too
        _pair().segment(image, out=np.zeros(image.shape, np.int32), block_size=BLOCK, halo=0)
    with pytest.warns(UserWarning, match="larger halo") as told:  # plane by plane too
        list(_pair().predict_planes(image, blockwise=True, block_size=BLOCK, halo=0))
    assert told[0].filename == __file__  # the caller's line


def test_labels_segmented_whole_are_written_into_out():
    image = _image_of(_cells_across_faces())
    out = np.zeros(image.shape, np.int32)
    assert _pair().segment(image, out=out, blockwise=False) is out
    assert _same_objects(out, _pair().segment(image)) and out.max() == 11


def test_an_out_segmented_into_again_holds_the_new_images_cells_only():
    """Block by block (out's default), the labels an out held were kept as cells of earlier
    blocks: a second image segmented into it had the first image's cells and lost its own."""
    first = _image_of(_cells_across_faces()[:128, :128])  # four blocks
    second = first[::-1, ::-1].copy()
    blocks = {"block_size": BLOCK, "halo": 32}
    out = np.zeros(first.shape, np.int32)
    _pair().segment(first, out=out, **blocks)
    _pair().segment(second, out=out, **blocks)
    np.testing.assert_array_equal(out, _pair().segment(second, out=np.zeros_like(out), **blocks))


def test_halo_follows_the_cell_size_and_large_images_go_by_blocks():
    assert default_halo(None) == 128
    assert default_halo(10) == 64  # the networks' context at least
    assert default_halo(70) == 160  # twice the largest cell, on the pooling grid
    with pytest.raises(ValueError, match="block_size"):
        block_grid((100, 100), 0, 32)


def test_a_block_is_freed_and_trimmed_before_the_next_is_predicted(monkeypatch):
    """What a block holds does not pile up: memory stays that of one block, not the image's."""
    truth = _cells_across_faces()
    alive, trims = [], []
    find_cells = blockwise.instances_from_proba

    def cells(proba, **kwargs):
        labels = find_cells(proba, **kwargs)
        alive.append(weakref.ref(labels))
        return labels

    def predict(window):
        assert all(ref() is None for ref in alive)  # earlier probabilities and labels gone
        assert 2 * len(trims) == len(alive)  # and their memory given back
        cell = window.reshape(window.shape[-2:])
        proba = np.stack([1 - cell, cell, np.zeros_like(cell)])
        alive.append(weakref.ref(proba))
        return proba

    monkeypatch.setattr(blockwise, "instances_from_proba", cells)
    monkeypatch.setattr(blockwise, "_release_freed_memory", lambda: trims.append(1))
    result = segment_blockwise((truth > 0).astype(np.float32), predict, block_size=BLOCK, halo=32)
    assert result.blocks == len(trims) == 9 and result.objects == truth.max()


def test_percentiles_of_an_array_too_large_to_load_are_sampled_the_same_way(tmp_path):
    import zarr

    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, (2100, 2100)).astype(np.uint16)  # above the 4-Mpixel sampling
    stored = zarr.open_array(
        str(tmp_path / "im.zarr"),
        mode="w",
        shape=image.shape,
        chunks=(512, 512),
        dtype=image.dtype,
    )
    stored[:] = image
    ((low, high),) = channel_ranges(image.astype(np.float32))
    np.testing.assert_array_equal(channel_ranges(stored), [[low, high]])
    exact = np.percentile(image, (1, 99.8))
    assert abs(low - exact[0]) <= 2 and abs(high - exact[1]) <= 0.02 * exact[1]


def test_labels_written_to_ome_zarr_from_a_tiff_read_block_by_block(tmp_path):
    import zarr

    from napari_mutualseg.ome import labels_zarr

    truth = _cells_across_faces()
    raw = (_image_of(truth) * 1000).astype(np.uint16)
    size = PixelSize(0.5, 0.25, "um")
    source = tmp_path / "big.tif"
    tifffile.imwrite(
        source,
        raw,
        tile=(64, 64),
        compression="zlib",
        resolution=size.per_centimeter(),
        resolutionunit="CENTIMETER",
    )
    assert pixel_size_of(source) == size
    image = AxisImage.from_file(source, lazy=True)
    assert not isinstance(image.data, np.ndarray) and image.plane_shape == raw.shape
    pair = _pair()
    target = tmp_path / "cells.ome.zarr"
    with labels_zarr(target, image.plane_shape, pixel_size=pixel_size_of(source), chunk=64) as out:
        pair.segment(image, out=out, block_size=BLOCK, halo=32)
    assert not list(tmp_path.glob(".*partial"))
    group = zarr.open_group(str(target), mode="r")
    entry = group.attrs["multiscales"][0]
    assert "image-label" in group.attrs and entry["version"] == "0.4"
    assert [d["path"] for d in entry["datasets"]] == ["0", "1", "2"]  # 192 -> 96 -> 48 pixels
    assert entry["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 0.5]
    assert all(a["unit"] == "micrometer" for a in entry["axes"])
    labels = group["0"][:]
    assert _same_objects(labels, pair.segment(raw))
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])
    assert pixel_size_of(target) == size
    np.testing.assert_array_equal(AxisImage.from_file(target).plane(0)[0], labels)
    # never replaced without overwrite; replaced with it
    with pytest.raises(FileExistsError), labels_zarr(target, image.plane_shape):
        pass
    with labels_zarr(target, (8, 8), overwrite=True) as out:
        out[:] = 1
    assert zarr.open_group(str(target), mode="r")["0"].shape == (8, 8)


def test_a_failed_segmentation_leaves_no_store_behind(tmp_path):

    from napari_mutualseg.ome import labels_zarr

    with pytest.raises(RuntimeError), labels_zarr(tmp_path / "c.ome.zarr", (64, 64)):
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_store_another_run_finished_meanwhile_is_kept(tmp_path):
    """Without overwrite, the labels of a run that finished first stay: the last run replaced
    them (and two in one process shared one temporary store, leaving neither readable)."""
    import zarr

    from napari_mutualseg.ome import labels_zarr

    target = tmp_path / "c.ome.zarr"
    with (
        pytest.raises(FileExistsError, match="already exists"),
        labels_zarr(target, (16, 16)) as out,
    ):
        out[:] = 1
        with labels_zarr(target, (16, 16)) as first:
            first[:] = 2
    assert zarr.open_group(str(target), mode="r")["0"][0, 0] == 2
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_uncompressed_tiff_is_read_window_by_window_with_its_calibration(tmp_path):
    raw = np.arange(120 * 90, dtype=np.uint16).reshape(120, 90)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(
        path, raw, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "micron"}
    )
    image = AxisImage.from_file(path, lazy=True)
    assert image.plane_shape == raw.shape and not isinstance(image.data, np.ndarray)
    np.testing.assert_array_equal(
        np.asarray(image.plane_array(0))[0, 10:20, 30:35], raw[10:20, 30:35]
    )
    assert pixel_size_of(path) == PixelSize(0.65, 0.65)


def test_tiff_labels_carry_the_pixel_size(tmp_path):
    labels = _cells_across_faces()
    size = PixelSize.parse("0.5,0.65 nm")
    path = write_labels(tmp_path / "cells.tif", labels, pixel_size=size)
    np.testing.assert_array_equal(tifffile.imread(path), labels)
    assert pixel_size_of(path) == size
    with tifffile.TiffFile(path) as tif:  # read as resolution tags too, by other readers
        x_res, _ = tif.pages.first.get_resolution()
    assert x_res == pytest.approx(1e7 / 0.65)
    assert pixel_size_of(write_labels(tmp_path / "plain.tif", labels)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.65", PixelSize(0.65, 0.65, "micrometer")),
        ("0.5,0.65um", PixelSize(0.5, 0.65, "micrometer")),
        ("650 nm", PixelSize(650, 650, "nanometer")),
        ("0.5, 0.5 µm", PixelSize(0.5, 0.5)),
        ("2,0.5,0.65um", PixelSize(0.5, 0.65, "micrometer", z=2.0)),  # a stack's z step
    ],
)
def test_pixel_size_from_text(text, expected):
    assert PixelSize.parse(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "0.5,", "-1", "1 parsec", "0", "1,2,3,4"])
def test_bad_pixel_sizes_are_explained(text):
    with pytest.raises(ValueError, match=r"pixel size|unit|positive"):
        PixelSize.parse(text)


def test_command_line_predicts_block_by_block_and_keeps_the_pixel_size(tmp_path, capsys):
    import zarr

    from napari_mutualseg.cli import main
    from napari_mutualseg.models import build_unet

    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    model = ModelPair(build_unet(arch, 0), build_unet(arch, 1)).save(tmp_path / "m.pt")
    image, _, _ = synthetic_scene((96, 80), 8, seed=1)
    source = tmp_path / "well.tif"
    tifffile.imwrite(
        source,
        (image * 1000).astype(np.uint16),
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={"unit": "um"},
    )
    out = tmp_path / "pred"
    common = ["predict", model, source, "--device", "cpu", "--block-size", "64"]
    zarr_run = [*common, "--out", out / "zarr", "--out-format", "zarr", "--halo", "32"]
    assert main([str(a) for a in zarr_run]) == 0
    group = zarr.open_group(str(out / "zarr" / "well_cells.ome.zarr"), mode="r")
    assert group["0"].shape == (96, 80)
    assert pixel_size_of(out / "zarr" / "well_cells.ome.zarr") == PixelSize(0.65, 0.65)
    table = (out / "zarr" / "well_cells.csv").read_text().splitlines()
    assert "area_um2" in table[0] and len(table) - 1 == group["0"][:].max()
    assert main([str(a) for a in [*common, "--out", out, "--pixel-size", "0.5,0.4um"]]) == 0
    assert pixel_size_of(out / "well_cells.tif") == PixelSize(0.5, 0.4)
    capsys.readouterr()
    # a second run finds the image complete and leaves it as it is
    assert main([str(a) for a in zarr_run]) == 0
    assert "1 skipped" in capsys.readouterr().out
    common += ["--out", out]
    assert main([str(a) for a in [*common, "--disagreement-out", tmp_path / "d"]]) == 2
    assert "whole images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_size": 10}, "at least 32"),
        ({"block_size": -5}, "at least 32"),
        ({"halo": -3}, "0 or more"),
    ],
)
def test_block_settings_are_refused_before_any_image(settings, message):
    from napari_mutualseg.batch import BatchOptions

    with pytest.raises(ValueError, match=message):
        BatchOptions(**settings)


def test_measuring_block_by_block_gives_the_whole_image_table():
    from napari_mutualseg.blockwise import measure_blockwise
    from napari_mutualseg.measure import measure_cells

    image, truth, _ = synthetic_scene((300, 260), 40, seed=1)
    intensities = np.stack([image, 2 * image])
    settings = {"channel_names": ["dna", "actin"], "pixel_size": (0.5, 0.25)}
    whole = measure_cells(truth.astype(np.int32), intensities, **settings)
    blocks = measure_blockwise(truth, intensities, block_size=64, halo=64, **settings)
    assert list(blocks) == list(whole) and len(whole["label"]) == 40
    for key, values in whole.items():
        np.testing.assert_allclose(blocks[key], values, err_msg=key)


def test_stacks_and_time_series_go_block_by_block_plane_after_plane():
    """The large planes of a z-stack or a time series are segmented block by block, and the
    planes are linked as when the stack is segmented whole."""
    image = _image_of(_cells_across_faces())
    stack = np.stack([image, np.roll(image, 3, axis=1), np.roll(image, 6, axis=1)])
    pair = _pair()
    steps = []
    for axes, linking in (("ZYX", {}), ("TYX", {"track": True})):
        whole = pair.segment(stack, axes=axes, blockwise=False, **linking)
        blocks = pair.segment(
            stack,
            axes=axes,
            blockwise=True,
            block_size=BLOCK,
            halo=32,
            progress=lambda done, total: steps.append((done, total)),
            **linking,
        )
        assert blocks.max() == whole.max() == 11  # one label per cell through the stack
        assert _same_objects(blocks, whole)
    assert steps[-1] == (27, 27)  # three planes of nine blocks


def test_a_flat_plane_of_a_stack_has_no_cells_block_by_block_as_whole():
    """A constant plane (blank padding, a skipped frame) is not one bright cell per block,
    and a plane blank but for one cell in its last block keeps that cell."""
    image = _image_of(_cells_across_faces())
    yy, xx = np.mgrid[:192, :192]
    last = _image_of(((yy - 170) ** 2 + (xx - 170) ** 2 <= 90).astype(np.int32))
    stack = np.stack([image, last, np.ones_like(image)])
    pair = _pair()
    whole = pair.segment(stack, axes="ZYX", link=False, blockwise=False)
    assert whole[1].any() and not whole[2].any()
    steps = []
    blocks = pair.segment(
        stack,
        axes="ZYX",
        link=False,
        out=np.zeros(stack.shape, np.int32),
        block_size=BLOCK,
        halo=32,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert _same_objects(blocks, whole) and steps[-1] == (27, 27)
    planes = pair.predict_planes(stack, axes="ZYX", blockwise=True, block_size=BLOCK, halo=32)
    for prediction, z in zip(planes, whole, strict=True):
        np.testing.assert_array_equal(prediction.labels > 0, z > 0)


@pytest.mark.parametrize(("axes", "track"), [("ZYX", False), ("TYX", True)])
def test_a_stack_in_a_batch_is_written_as_tiff_or_ome_zarr_with_one_table(tmp_path, axes, track):
    """A z-stack or time series segmented by blocks in a batch: its OME-Zarr labels (written
    plane after plane) and their cell table are those of the TIFF route, and a rerun keeps
    them."""
    from napari_mutualseg.batch import BatchOptions, BatchRun

    image = _image_of(_cells_across_faces())
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", np.stack([image, np.roll(image, 3, axis=1)]))
    statuses = []
    for out_format in ("tif", "zarr", "zarr"):  # the second zarr run: a rerun
        options = BatchOptions(
            axes=axes, block_size=BLOCK, halo=32, out_format=out_format, track=track
        )
        run = BatchRun(_pair(), [tmp_path / "in"], tmp_path / out_format, options, workers=0)
        statuses += [result.status for result in run]
    assert statuses == ["done", "done", "skipped"]
    tif = tifffile.imread(tmp_path / "tif" / "stack_cells.tif")
    written = AxisImage.from_file(tmp_path / "zarr" / "stack_cells.ome.zarr")
    assert written.axes == axes
    np.testing.assert_array_equal(np.asarray(written.data), tif)
    assert tif.max() == (11 if axes == "ZYX" or track else 22)
    tables = [(tmp_path / f / "stack_cells.csv").read_text() for f in ("tif", "zarr")]
    assert tables[0] == tables[1]


def test_a_store_a_killed_process_left_is_removed_and_a_running_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys

    from napari_mutualseg.ome import labels_zarr

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    target = tmp_path / "c.ome.zarr"
    stale = tmp_path / f".c.ome.zarr.{host}.{int(gone.stdout)}.partial"
    running = tmp_path / f".c.ome.zarr.{host}.{os.getppid()}.partial"  # e.g. another run's
    elsewhere = tmp_path / f".c.ome.zarr.other-node.{int(gone.stdout)}.partial"
    for temp in (stale, running, elsewhere):
        (temp / "0").mkdir(parents=True)
    with labels_zarr(target, (16, 16)) as out:
        out[:] = 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, running.name, elsewhere.name]
    )
