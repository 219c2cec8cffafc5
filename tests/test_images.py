"""Images with named axes: every layout read from files and arrays, channels, normalisation."""

import sys
import types
import warnings

import numpy as np
import pytest
import tifffile

from napari_mutualseg import readers
from napari_mutualseg.config import TrainConfig
from napari_mutualseg.images import AxisImage, as_image, as_images, parse_channels
from napari_mutualseg.io import read_image
from napari_mutualseg.network_input import network_planes
from napari_mutualseg.preprocess import apply_ranges, channel_ranges, normalize


def _ramp(shape, dtype=np.uint16):
    return np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(dtype)


def test_imagej_hyperstack_gives_axes_pixel_size_and_planes(tmp_path):
    data = _ramp((2, 3, 2, 16, 20))  # T, Z, C, Y, X as ImageJ stores them
    path = tmp_path / "tzc.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um"},
    )
    image = AxisImage.from_file(path)
    assert image.axes == "TCZYX" and image.shape == (2, 2, 3, 16, 20)
    assert image.pixel_size == {"Z": 1.5, "Y": 0.5, "X": 0.5} and image.unit == "µm"
    assert image.n_planes == 6 and image.label_axes == "TZYX"
    assert image.plane_position(4) == {"T": 1, "Z": 1}
    np.testing.assert_array_equal(image.plane(4), data[1, 1])  # (C, Y, X) of t=1, z=1
    assert image.plane_name(4) == "t001_z001"
    assert "ImageJ" in image.notes[0]


def test_ome_tiff_channel_names_and_selection(tmp_path):
    data = _ramp((2, 16, 20))
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}, "PhysicalSizeX": 0.3},
    )
    image = AxisImage.from_file(path)
    assert image.axes == "CYX" and image.channel_names == ("DAPI", "GFP")
    assert image.pixel_size["X"] == pytest.approx(0.3)
    for choice in (["gfp"], [1], "1", ["GFP"]):
        chosen = image.select(choice)
        assert chosen.channel_names == ("GFP",)
        np.testing.assert_array_equal(chosen.plane(0), data[1:2])
    swapped = image.select("GFP,DAPI")
    np.testing.assert_array_equal(swapped.plane(0), data[::-1])
    with pytest.raises(ValueError, match="no channel 'RFP'; its channels are DAPI, GFP"):
        image.select(["RFP"])
    with pytest.raises(ValueError, match="no channel 2"):
        image.select([2])
    with pytest.raises(ValueError, match="twice"):
        image.select([0, "DAPI"])


def test_axes_given_against_the_file_replace_its_reading_in_the_notes(tmp_path):
    # a (3, H, W) TIFF that its writer tagged planar RGB (tifffile's own unasked tag asks for
    # axes): read so, the note says the RGB tag; given as a z-stack, that note would
    # contradict the image it describes
    path = tmp_path / "three.tif"
    data = _ramp((3, 16, 20))
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate", metadata=None)
    assert AxisImage.from_file(path).notes == ("axes CYX from the RGB photometric tag",)
    stack = AxisImage.from_file(path, axes="ZYX")
    assert stack.notes == ("axes ZYX as given, not CYX as the file says",)


def test_a_3d_file_without_metadata_asks_for_its_axes(tmp_path):
    path = tmp_path / "stack.tif"
    data = _ramp((5, 16, 20))
    tifffile.imwrite(path, data)
    with pytest.raises(ValueError, match=r"--axes.*axes=.*CYX.*ZYX.*TYX"):
        AxisImage.from_file(path)
    stack = AxisImage.from_file(path, axes="zyx")
    assert stack.axes == "ZYX" and stack.n_planes == 5 and stack.n_channels == 1
    assert "as given" in stack.notes[-1]
    channels = AxisImage.from_file(path, axes="CYX")
    assert channels.n_planes == 1 and channels.n_channels == 5
    frames = AxisImage.from_file(path, axes="TYX")
    assert frames.label_axes == "TYX"
    with pytest.raises(ValueError, match=r"name 2 axes but stack\.tif has 3"):
        AxisImage.from_file(path, axes="YX")
    with pytest.raises(ValueError, match="at most once"):
        AxisImage.from_file(path, axes="QYX")
    np.testing.assert_array_equal(read_image(path), data)  # raw pixels need no axes


def test_arrays_are_reordered_and_never_guessed():
    data = _ramp((16, 20, 3, 4))  # Y X C Z
    image = AxisImage.from_array(data, "YXCZ")
    assert image.axes == "CZYX" and image.shape == (3, 4, 16, 20)
    np.testing.assert_array_equal(image.plane(2), data[:, :, :, 2].transpose(2, 0, 1))
    with pytest.raises(ValueError, match="no axes were given"):
        AxisImage.from_array(_ramp((2, 16, 20)))
    assert AxisImage.from_array(_ramp((16, 20))).axes == "YX"


def test_an_axis_image_made_of_a_zarr_array_reads_it_through_dask(tmp_path):
    import zarr

    stored = zarr.open_array(tmp_path / "a.zarr", mode="w", shape=(2, 16, 20), dtype="uint16")
    stored[:] = _ramp((2, 16, 20))
    image = AxisImage(stored, "ZYX")
    selected = image.select(None)  # zarr indexes neither with None nor with arrays
    np.testing.assert_array_equal(np.asarray(selected.plane(1))[0], stored[1])


def test_rgb_pictures_as_colours_or_gray(tmp_path):
    import skimage.io

    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 255
    path = tmp_path / "he.png"
    skimage.io.imsave(path, rgba, check_contrast=False)
    image = AxisImage.from_file(path)
    assert image.rgb and image.axes == "CYX" and image.n_channels == 4
    colours = image.select()
    assert colours.n_channels == 3 and "alpha" in colours.notes[-1]
    gray = image.select(rgb="gray")
    expected = 0.2125 * 200 + 0.7154 * 100 + 0.0721 * 50
    assert gray.n_channels == 1 and gray.plane(0)[0, 0, 0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="gray"):
        image.select([0], rgb="gray")
    # an RGB TIFF, and a bare 8-bit array: the one layout taken without axes, with a warning
    tifffile.imwrite(tmp_path / "rgb.tif", rgba[..., :3], photometric="rgb")
    assert AxisImage.from_file(tmp_path / "rgb.tif").rgb
    with pytest.warns(UserWarning, match="RGB"):
        assert AxisImage.from_array(rgba[..., :3]).rgb
    with pytest.raises(ValueError, match="RGB"):
        as_image(rgba[..., :3].astype(np.float32))


def test_ome_zarr_is_read_lazily_with_its_metadata(tmp_path):
    import zarr

    data = _ramp((1, 2, 3, 32, 40))
    group = zarr.open_group(str(tmp_path / "cells.zarr"), mode="w")
    array = group.create_array("0", shape=data.shape, chunks=(1, 1, 1, 16, 16), dtype=data.dtype)
    array[:] = data
    group.create_array("1", shape=(1, 2, 3, 16, 20), dtype=data.dtype)
    space = {"type": "space", "unit": "micrometer"}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "c", "type": "channel"},
                {"name": "z", **space},
                {"name": "y", **space},
                {"name": "x", **space},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2, 0.5, 0.5]}],
                },
                {"path": "1"},
            ],
        }
    ]
    group.attrs["omero"] = {"channels": [{"label": "nuclei"}, {"label": "membrane"}]}
    image = AxisImage.from_file(tmp_path / "cells.zarr")
    assert image.axes == "CZYX" and image.channel_names == ("nuclei", "membrane")
    assert image.pixel_size == {"Z": 2.0, "Y": 0.5, "X": 0.5} and image.unit == "µm"
    assert not isinstance(image.data, np.ndarray)  # lazy
    assert not isinstance(image.select(["membrane"]).plane_array(1), np.ndarray)
    np.testing.assert_array_equal(image.plane(1), data[0, :, 1])
    assert "level 0 of 2" in " ".join(image.notes)
    # one level given by its path: named with its image, where it was called "1"
    level = AxisImage.from_file(tmp_path / "cells.zarr" / "1")
    assert level.name == "cells.zarr/1" and level.describe().startswith("cells.zarr/1: 16 x 20")


def test_large_tiffs_are_opened_lazily(tmp_path, monkeypatch):
    data = _ramp((2, 64, 48))
    tifffile.imwrite(tmp_path / "big.tif", data, metadata={"axes": "CYX"}, tile=(16, 16))
    monkeypatch.setattr(readers, "LAZY_BYTES", 1024)
    image = AxisImage.from_file(tmp_path / "big.tif")
    assert not isinstance(image.data, np.ndarray)
    np.testing.assert_array_equal(image.plane(0), data)


def test_a_file_without_axes_is_refused_with_its_pixels_as_stored(tmp_path, monkeypatch):
    data = _ramp((2, 3, 64, 48))
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack", tile=(16, 16))
    monkeypatch.setattr(readers, "LAZY_BYTES", 1024)
    with pytest.raises(readers.AxesUnknownError, match="whose axes the file does not say") as err:
        AxisImage.from_file(tmp_path / "plain.tif")
    assert not isinstance(err.value.data, np.ndarray)  # still lazy: a caller may show it
    np.testing.assert_array_equal(np.asarray(err.value.data), data)


def test_bioio_formats_keep_axes_names_and_pixel_size(tmp_path, monkeypatch):
    data = _ramp((1, 2, 4, 16, 20))

    class FakeBioImage:
        def __init__(self, path):
            self.dims = types.SimpleNamespace(order="TCZYX")
            self.dask_data = data
            self.channel_names = ["DAPI", "Actin"]
            self.physical_pixel_sizes = types.SimpleNamespace(Z=1.0, Y=0.2, X=0.2)

    monkeypatch.setitem(sys.modules, "bioio", types.SimpleNamespace(BioImage=FakeBioImage))
    path = tmp_path / "cells.czi"
    path.write_bytes(b"")
    image = AxisImage.from_file(path)
    assert image.axes == "CZYX" and image.channel_names == ("DAPI", "Actin")
    assert image.pixel_size == {"Z": 1.0, "Y": 0.2, "X": 0.2}
    np.testing.assert_array_equal(image.plane(3), data[0, :, 3])


def test_formats_for_bioio_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioio", None)  # import fails
    path = tmp_path / "cells.nd2"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"napari-mutualseg\[bioio\]"):
        AxisImage.from_file(path)


def test_parse_channels_forms():
    assert parse_channels(None) is None and parse_channels([]) is None
    assert parse_channels(["0,2", "GFP"]) == (0, 2, "GFP")
    assert parse_channels(1) == (1,)
    # True and fractions were taken as channels named "True" and "0.5", or raised TypeError
    for value in (True, [0.5], 1.5, [np.float32(2)]):
        with pytest.raises(ValueError, match=r"by index .* or by name"):
            parse_channels(value)
    with pytest.raises(ValueError, match="got True"):
        TrainConfig(channels=[True])


def test_network_planes_of_every_input_form():
    rng = np.random.default_rng(0)
    two = rng.random((2, 16, 20)).astype(np.float32)
    planes, names = network_planes([two, two])
    assert [p.shape for p in planes] == [(2, 16, 20)] * 2 and names is None
    planes, _ = network_planes(rng.random((3, 16, 20)))  # a bare 3D array is a stack
    assert [p.shape for p in planes] == [(1, 16, 20)] * 3
    named = AxisImage.from_array(two, "CYX", channel_names=["a", "b"])
    planes, names = network_planes(named, channels=["b"])
    np.testing.assert_array_equal(planes[0], normalize(two[1:]))
    assert names == ("b",)
    with pytest.raises(ValueError, match="different numbers of channels"):
        network_planes([two, two[0]])


def test_a_lazy_stack_given_for_training_is_not_loaded_whole():
    import dask.array as da

    stack = da.from_array(np.random.default_rng(0).random((3, 16, 20)), chunks=(1, 16, 20))
    (image,) = as_images(stack)  # was read whole, by dask's default scheduler
    assert image.axes == "ZYX" and type(image.data).__module__.startswith("dask")


def test_training_images_naming_their_channels_in_another_order_are_taken_by_name():
    rng = np.random.default_rng(0)
    dapi, gfp = rng.random((2, 16, 20)).astype(np.float32)
    a = AxisImage.from_array(np.stack([dapi, gfp]), "CYX", channel_names=["DAPI", "GFP"])
    b = AxisImage.from_array(np.stack([gfp, dapi]), "CYX", channel_names=["gfp", "dapi"])
    # by position, the first input channel was DAPI in a and GFP in b, and no names were kept
    planes, names = network_planes([a, b])
    np.testing.assert_array_equal(planes[1], planes[0])
    assert names == ("DAPI", "GFP")
    # picked by index, channel 0 is DAPI in one and GFP in the other: said, not silent
    with pytest.warns(UserWarning, match=r"other names \(image: DAPI; image: gfp\).*by name"):
        network_planes([a, b], channels=[0])


def test_training_images_of_other_channel_counts_are_named_in_the_refusal():
    gray = AxisImage.from_array(np.random.default_rng(0).random((16, 20)), "YX", name="g.tif")
    rgb = AxisImage.from_array(np.zeros((16, 20, 3), np.uint8) + 9, "YXC", rgb=True, name="c.png")
    with pytest.raises(ValueError, match=r"\(1 channel: g.tif; 3 channels: c.png\): .*--rgb gray"):
        network_planes([gray, rgb])


def test_per_channel_ranges_apply_to_blocks_as_to_the_whole():
    rng = np.random.default_rng(1)
    image = np.stack([rng.random((40, 50)) * 10, rng.random((40, 50)) * 1000 + 5])
    ranges = channel_ranges(image)
    whole = normalize(image)
    for c in range(2):
        lo, hi = np.percentile(image[c], (1.0, 99.8))
        assert ranges[c] == pytest.approx([lo, hi])
    np.testing.assert_allclose(apply_ranges(image[:, 10:30, 5:25], ranges), whole[:, 10:30, 5:25])
    np.testing.assert_allclose(normalize(image[0]), whole[0], atol=1e-6)  # 2D as before
    image[1] = 7
    with pytest.raises(ValueError, match="channel 1 of image is constant"):
        channel_ranges(image)


def test_a_constant_channel_is_called_as_the_file_calls_it_not_by_its_place_in_the_pick():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.random((2, 16, 20)), np.zeros((1, 16, 20))]).astype(np.float32)
    unnamed = AxisImage.from_array(data, "CYX", name="a.tif")
    # channels 0 and 2 picked: the empty one was called channel 1, which was not picked
    with pytest.raises(ValueError, match=r"channel 2 of a\.tif is constant"):
        network_planes(unnamed, channels=[0, 2])
    named = AxisImage.from_array(data, "CYX", channel_names=["DAPI", "GFP", "empty"])
    with pytest.raises(ValueError, match="channel empty of image is constant"):
        network_planes(named, channels=[2, 0])


def test_large_images_sample_the_percentiles(monkeypatch):
    from napari_mutualseg import preprocess

    monkeypatch.setattr(preprocess, "SAMPLE_PIXELS", 1000)
    image = np.random.default_rng(2).random((1, 100, 100)).astype(np.float32)
    ranges = channel_ranges(image)
    np.testing.assert_allclose(ranges[0], np.percentile(image, (1.0, 99.8)), atol=0.02)


def test_describe_says_what_was_read():
    image = AxisImage.from_array(
        np.zeros((2, 3, 8, 10)),
        "CZYX",
        channel_names=["a", "b"],
        pixel_size={"Y": 0.5, "X": 0.5},
        unit="µm",
        name="x.tif",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = image.describe()
    assert text == (
        "x.tif: 8 x 10 px, 2 channels (a, b), 3 z-planes, axes CZYX, pixel size Y 0.5, X 0.5 µm"
    )


def test_a_file_without_axes_is_told_in_words_not_the_readers_codes(tmp_path):
    # the message said "(read as 'QQQYX')": tifffile's codes for axes it does not know
    tifffile.imwrite(tmp_path / "hyper.tif", _ramp((3, 4, 2, 16, 20)))
    with pytest.raises(readers.AxesUnknownError) as err:
        AxisImage.from_file(tmp_path / "hyper.tif")
    message = str(err.value)
    assert "QQQ" not in message and "it names only Y and X" in message
    assert "5 letters for this file" in message


class _Reads:
    """An array that counts the pixels read from it (as a zarr store on disk would)."""

    def __init__(self, data):
        self.data, self.read = data, 0
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        block = self.data[key]
        self.read += block.size
        return block


def test_labels_given_as_the_image_are_warned_of_lazy_float_or_in_a_stack():
    """Lazy labels (read a window only), labels saved as float32, and a stack of labels
    whose first plane is empty are warned of; intensities, also as whole-number floats, not."""
    import dask.array as da

    from helpers import disc_image
    from napari_mutualseg.network_input import warn_if_labels

    yy, xx = np.mgrid[:512, :512]
    labels = ((yy // 32) * 16 + xx // 32 + 1).astype(np.int32)  # 256 squares
    labels[(yy % 32 < 4) | (xx % 32 < 4)] = 0
    stored = _Reads(labels)
    stack = np.stack([np.zeros_like(labels), labels])
    intensities, _ = disc_image((128, 128))
    for array, axes in [
        (da.from_array(stored, chunks=64), "YX"),
        (labels.astype(np.float32), "YX"),
        (stack, "ZYX"),
    ]:
        with pytest.warns(UserWarning, match="looks like labels or a mask"):
            assert warn_if_labels(AxisImage.from_array(array, axes))
    assert 0 < stored.read <= labels.size // 4  # a window, not the image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for array in (intensities, (intensities * 1000).astype(np.uint16).astype(np.float32)):
            assert not warn_if_labels(AxisImage.from_array(array, "YX"))
