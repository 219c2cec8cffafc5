"""Labels of z-stacks and time series written to OME-Zarr plane after plane."""

import dask.array as da
import numpy as np
import pytest
import zarr
from skimage.measure import label

from helpers import ThresholdNet
from napari_mutualseg.images import AxisImage
from napari_mutualseg.measure import measure_cells, measure_planes
from napari_mutualseg.models import ModelPair
from napari_mutualseg.ome import PixelSize, labels_zarr
from napari_mutualseg.synthetic import synthetic_volume


def _pair() -> ModelPair:
    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4, "rgb": "gray"})


def _stack() -> np.ndarray:
    """Six 48 x 48 planes of cells, one of them missed in the fourth plane (intensities of
    0.5 and 1.5: a mask of 0 and 1 is warned of as no microscope image)."""
    _, truth = synthetic_volume((6, 48, 48), 8, seed=1)
    truth[3][label(truth[3] > 0) == 1] = 0
    return (truth > 0).astype(np.float32) + 0.5


@pytest.mark.parametrize(
    ("axes", "settings"),
    [("ZYX", {}), ("TYX", {"track": True}), ("TZYX", {"track": True})],
)
def test_a_stack_streamed_to_ome_zarr_has_the_labels_it_has_in_memory(tmp_path, axes, settings):
    stack = _stack().reshape((2, 3, 48, 48) if axes == "TZYX" else (6, 48, 48))
    pair = _pair()
    whole = pair.segment(stack, axes=axes, blockwise=True, block_size=32, halo=8, **settings)
    path = tmp_path / "cells.ome.zarr"
    with labels_zarr(path, stack.shape, axes=axes, chunk=32) as out:
        assert out.chunks == (1,) * (len(axes) - 2) + (32, 32)
        pair.segment(stack, axes=axes, out=out, block_size=32, halo=8, **settings)
    assert whole.max() > 1
    written = AxisImage.from_file(path)
    assert written.axes == axes
    np.testing.assert_array_equal(np.asarray(written.data), whole)
    level_1 = zarr.open_group(str(path), mode="r")["1"]
    assert level_1.shape == (*stack.shape[:-2], 24, 24)  # halved along y and x only


@pytest.mark.parametrize(("axes", "shape"), [("ZYX", (1, 48, 48)), ("TZYX", (1, 1, 48, 48))])
def test_a_stack_of_one_plane_is_written_into_the_out_its_labels_shape_asks_for(
    tmp_path, axes, shape
):
    """A z-stack of one plane, or a time series of one frame, fills the OME-Zarr made with
    labels_zarr(path, image.label_shape, axes=image.label_axes) (it was refused)."""
    image = AxisImage.from_array(_stack()[2:3].reshape(shape), axes)
    pair = _pair()
    path = tmp_path / "one.ome.zarr"
    with labels_zarr(path, image.label_shape, axes=image.label_axes) as out:
        pair.segment(image, out=out, block_size=32, halo=8, track=True)
    expected = pair.segment(image, blockwise=True, block_size=32, halo=8, track=True)
    assert expected.max() > 1
    stored = zarr.open_group(str(path), mode="r")["0"]
    np.testing.assert_array_equal(stored[...], expected)


def test_a_stack_out_of_another_shape_or_a_type_too_small_for_labels_is_refused():
    """The message gives the shape to make (the caller of the Python API has a plain array,
    no image.label_shape), and predict_planes refuses at the call, not at the first plane."""
    make = (
        r"np.zeros\(\(6, 48, 48\), np.int32\), or labels_zarr\(path, \(6, 48, 48\), axes='ZYX'\)"
    )
    wrong = np.zeros((48, 48), np.int32)
    with pytest.raises(ValueError, match=rf"shape \(6, 48, 48\) \(axes ZYX.*{make}"):
        _pair().segment(_stack(), axes="ZYX", out=wrong)
    with pytest.raises(ValueError, match=make):
        _pair().predict_planes(_stack(), axes="ZYX", out=wrong)
    with pytest.raises(TypeError, match=f"out must be an array .* got a list: make it {make}"):
        _pair().segment(_stack(), axes="ZYX", out=wrong.tolist())
    for dtype in (np.uint8, np.int16, np.float32):  # uint8 wrapped past 255 cells silently
        with pytest.raises(ValueError, match=f"out has dtype {np.dtype(dtype)}; .*{make}"):
            _pair().segment(_stack(), axes="ZYX", out=np.zeros((6, 48, 48), dtype))


@pytest.mark.parametrize("blockwise", [True, False])
def test_predict_planes_into_zarr_gives_each_planes_labels_read_from_it(tmp_path, blockwise):
    """A prediction's labels are its plane of a zarr out, read when asked for, whether the
    plane was segmented whole or block by block (block by block it was the internal writer,
    which neither printed nor read as labels)."""
    stack = _stack()[:3]
    pair = _pair()
    settings = {"axes": "ZYX", "blockwise": blockwise, "block_size": 32, "halo": 8}
    expected = [p.labels for p in pair.predict_planes(stack, **settings)]
    with labels_zarr(tmp_path / "cells.ome.zarr", stack.shape, axes="ZYX") as out:
        for z, prediction in enumerate(pair.predict_planes(stack, **settings, out=out)):
            assert isinstance(prediction.labels, da.Array)  # not read until asked for
            assert f"48 x 48 px, {expected[z].max()} cells" in repr(prediction)
            np.testing.assert_array_equal(np.asarray(prediction.labels), expected[z])
            np.testing.assert_array_equal(out[z], expected[z])


def test_ome_zarr_labels_keep_z_step_frame_interval_and_units(tmp_path):
    size = PixelSize(0.5, 0.5, "um", z=2.0, t=30.0)
    with labels_zarr(tmp_path / "a.zarr", (2, 3, 8, 8), axes="TZYX", pixel_size=size) as out:
        out[1, 2] = 1
    image = AxisImage.from_file(tmp_path / "a.zarr")
    assert image.axes == "TZYX"
    assert image.pixel_size == {"T": 30.0, "Z": 2.0, "Y": 0.5, "X": 0.5}
    assert image.unit in ("µm", "micrometer")


def test_an_interval_without_a_pixel_size_is_written_alone(tmp_path):
    with labels_zarr(tmp_path / "a.zarr", (3, 8, 8), axes="TYX", frame_interval=5.0):
        pass
    image = AxisImage.from_file(tmp_path / "a.zarr")
    assert image.frame_interval == 5.0
    assert PixelSize.of(image) is None  # no pixel size made up


@pytest.mark.parametrize("size", [None, PixelSize(0.5, 0.5, "um")])
def test_ome_zarr_and_tiff_labels_read_back_no_size_the_image_did_not_have(tmp_path, size):
    """OME-Zarr's scale of 1 where no size is known is not read as a pixel size or a z step
    of 1 µm: both routes give back what the image had."""
    from napari_mutualseg.io import write_labels

    labels = np.zeros((3, 8, 8), np.int32)
    with labels_zarr(tmp_path / "a.zarr", labels.shape, axes="ZYX", pixel_size=size):
        pass
    tiff = write_labels(tmp_path / "a.tif", labels, pixel_size=size, axes="ZYX")
    for path in (tmp_path / "a.zarr", tiff):
        image = AxisImage.from_file(path)
        assert PixelSize.of(image) == size
        assert image.pixel_size == ({} if size is None else {"Y": 0.5, "X": 0.5})


def test_3d_cells_measured_a_plane_at_a_time_are_measured_as_a_whole_stack():
    _, truth = synthetic_volume((5, 40, 40), 6, seed=2)
    image = np.random.default_rng(0).integers(0, 4000, (2, *truth.shape)).astype(np.uint16)
    whole = measure_cells(truth, image, channel_names=["a", "b"], pixel_size=(2, 0.5, 0.5))
    planes = measure_planes(
        zip(truth, np.moveaxis(image, 1, 0), strict=True),
        channel_names=["a", "b"],
        pixel_size=(2, 0.5, 0.5),
    )
    assert list(planes) == list(whole)
    for column in whole:
        assert planes[column].dtype == whole[column].dtype, column
        np.testing.assert_array_equal(planes[column], whole[column], err_msg=column)


@pytest.mark.parametrize("out_format", ["zarr", "tif"])
def test_a_batchs_labels_keep_the_frame_interval_of_a_file_without_a_pixel_size(
    tmp_path, out_format
):
    import tifffile

    from napari_mutualseg.batch import BatchOptions, BatchRun

    (tmp_path / "in").mkdir()
    movie = np.random.default_rng(0).integers(0, 60, (3, 32, 32)).astype(np.uint8)
    movie[:, 8:20, 8:20] += 150
    metadata = {"axes": "TYX", "finterval": 2.5}
    tifffile.imwrite(tmp_path / "in" / "m.tif", movie, imagej=True, metadata=metadata)
    options = BatchOptions(out_format=out_format, track=True)
    (result,) = BatchRun(_pair(), [tmp_path / "in"], tmp_path / "out", options, workers=0)
    assert result.status == "done"
    labels = AxisImage.from_file(result.job.labels)
    assert labels.frame_interval == 2.5
    assert PixelSize.of(labels) is None
