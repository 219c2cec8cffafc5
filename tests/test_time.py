"""Time series keep their time: the frame interval read from files, said by ``info``, in
cell tables and in the labels written."""

import datetime
import json
import sys
import types

import numpy as np
import pytest
import tifffile

from napari_mutualseg.images import AxisImage
from napari_mutualseg.ome import PixelSize, in_seconds

MOVIE = np.zeros((3, 8, 10), np.uint8)


def _imagej(path, **metadata):
    tifffile.imwrite(path, MOVIE, imagej=True, metadata={"axes": "TYX", **metadata})
    return path


def _ome(path, **metadata):
    tifffile.imwrite(path, MOVIE, ome=True, metadata={"axes": "TYX", **metadata})
    return path


def _zarr(path, scale, unit=None):
    from test_formats import _ome_zarr

    units = {"t": unit} if unit else {}
    return _ome_zarr(path, MOVIE, "tyx", [scale, 1.0, 1.0], units)


@pytest.mark.parametrize(
    ("write", "seconds"),
    [
        (lambda p: _imagej(p / "a.tif", finterval=2.5), 2.5),  # ImageJ's unit: the second
        (lambda p: _imagej(p / "a.tif", finterval=2.5, tunit="min"), 150.0),
        (lambda p: _ome(p / "a.ome.tif", TimeIncrement=0.5), 0.5),  # OME's unit: the second
        (lambda p: _ome(p / "a.ome.tif", TimeIncrement=40, TimeIncrementUnit="ms"), 0.04),
        (lambda p: _zarr(p / "a.ome.zarr", 5.0, "minute"), 300.0),
    ],
)
def test_the_frame_interval_a_file_states_is_read_in_seconds(tmp_path, write, seconds):
    image = AxisImage.from_file(write(tmp_path))
    assert image.frame_interval == pytest.approx(seconds)
    assert image.pixel_size["T"] == pytest.approx(seconds)
    assert f"frame interval {seconds:g} s" in image.describe()
    assert not any("frame interval" in note for note in image.notes)


@pytest.mark.parametrize(
    ("write", "said"),
    [
        (lambda p: _imagej(p / "a.tif", finterval=0), "0 sec"),
        (lambda p: _imagej(p / "a.tif", finterval=2, tunit="furlong"), "2 furlong"),
        (lambda p: _ome(p / "a.ome.tif", TimeIncrement=2, TimeIncrementUnit="m"), "2 m"),
        (lambda p: _zarr(p / "a.ome.zarr", 2.0, "micrometer"), "2 micrometer"),
        (lambda p: _zarr(p / "a.ome.zarr", 2.0), "2 (no unit)"),
    ],
)
def test_a_frame_interval_that_is_no_time_is_left_out_and_said(tmp_path, write, said):
    image = AxisImage.from_file(write(tmp_path))
    assert image.frame_interval is None and "T" not in image.pixel_size
    [note] = [n for n in image.notes if "frame interval" in n]
    assert f"frame interval, {said}, is no time step" in note


def test_a_time_series_without_an_interval_has_none_and_no_note(tmp_path):
    for path in (_imagej(tmp_path / "a.tif"), _zarr(tmp_path / "a.ome.zarr", 1.0)):
        image = AxisImage.from_file(path)
        assert image.frame_interval is None and "T" not in image.pixel_size
        assert not any("frame interval" in note for note in image.notes)


def test_an_ome_tiff_without_a_time_increment_takes_its_planes_delta_t(tmp_path):
    # two channels a frame, 10 s apart within a few percent, as microscopes time them
    movie = np.zeros((3, 2, 8, 10), np.uint8)
    delta_t = {"DeltaT": [0.0, 0.1, 10.2, 10.3, 20.0, 20.1], "DeltaTUnit": ["s"] * 6}
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, movie, ome=True, metadata={"axes": "TCYX", "Plane": delta_t})
    assert AxisImage.from_file(path).frame_interval == 10.0
    # a pause in the acquisition: no one interval gives each frame's time
    path = _ome(
        tmp_path / "b.ome.tif", Plane={"DeltaT": [0, 1000, 30000], "DeltaTUnit": ["ms"] * 3}
    )
    image = AxisImage.from_file(path)
    assert image.frame_interval is None
    assert any("DeltaT are 1 to 29 s apart" in note for note in image.notes)


def test_a_movie_kept_as_imagej_slices_gets_its_interval_once_named_a_time_series(tmp_path):
    stack = _imagej(tmp_path / "slices.tif", axes="ZYX", finterval=2.0)
    assert AxisImage.from_file(stack, axes="TYX").frame_interval == 2.0
    assert AxisImage.from_file(stack).pixel_size == {}  # a z-stack has no time
    # nor is it told of an interval that is no time step
    image = AxisImage.from_file(_imagej(tmp_path / "zero.tif", axes="ZYX", finterval=0))
    assert not any("frame interval" in note for note in image.notes)


def test_bioio_gives_its_frame_interval_as_a_duration(tmp_path, monkeypatch):
    class FakeBioImage:
        def __init__(self, path):
            self.dims = types.SimpleNamespace(order="TCZYX")
            self.dask_data = np.zeros((3, 1, 1, 8, 10), np.uint8)
            self.channel_names = ["DAPI"]
            self.physical_pixel_sizes = types.SimpleNamespace(Z=None, Y=0.2, X=0.2)
            self.time_interval = datetime.timedelta(minutes=2)

    monkeypatch.setitem(sys.modules, "bioio", types.SimpleNamespace(BioImage=FakeBioImage))
    path = tmp_path / "movie.nd2"
    path.write_bytes(b"")
    assert AxisImage.from_file(path).frame_interval == 120.0


def test_time_units_in_seconds():
    assert in_seconds(5, "min") == 300.0 and in_seconds(100, "ms") == 0.1
    assert in_seconds(2, "hour") == 7200.0 and in_seconds(3, "µs") == 3e-6
    with pytest.raises(ValueError, match="Unknown time unit 'm'"):
        in_seconds(1, "m")


def test_pixel_size_keeps_the_frame_interval_and_its_text_without_one():
    image = AxisImage.from_array(
        MOVIE, "TYX", pixel_size={"T": 2.5, "Y": 0.5, "X": 0.5}, unit="µm"
    )
    size = PixelSize.of(image)
    assert size == PixelSize(0.5, 0.5, "µm", t=2.5)
    assert str(size) == "PixelSize(y=0.5, x=0.5, unit='micrometer', t=2.5)"
    # batch records keep this text to recognise their own results
    assert str(PixelSize(0.5, 0.65, z=2)) == "PixelSize(y=0.5, x=0.65, unit='micrometer', z=2.0)"
    with pytest.raises(ValueError, match="frame interval must be positive"):
        PixelSize(0.5, 0.5, t=0)


def test_labels_of_a_time_series_keep_the_frame_interval(tmp_path):
    from napari_mutualseg.io import write_labels

    labels = np.zeros((3, 8, 10), np.int32)
    size = PixelSize(0.5, 0.5, "µm", t=150.0)
    path = write_labels(tmp_path / "tyx.tif", labels, pixel_size=size, axes="TYX")
    with tifffile.TiffFile(path) as tif:
        assert 'TimeIncrement="150.0" TimeIncrementUnit="s"' in tif.ome_metadata
    image = AxisImage.from_file(path)
    assert image.pixel_size == {"T": 150.0, "Y": 0.5, "X": 0.5}
    # a stack of planes has no time: nothing about it is written
    path = write_labels(tmp_path / "zyx.tif", labels, pixel_size=size, axes="ZYX")
    with tifffile.TiffFile(path) as tif:
        assert "TimeIncrement" not in tif.ome_metadata
    # a file that gives the interval but no pixel size: the interval alone
    path = write_labels(tmp_path / "t.tif", labels, axes="TYX", frame_interval=2.5)
    image = AxisImage.from_file(path)
    assert image.frame_interval == 2.5 and PixelSize.of(image) is None


def test_info_says_the_frame_interval(tmp_path, capsys):
    from napari_mutualseg.cli import main

    path = _imagej(tmp_path / "movie.tif", finterval=0.5)
    assert main(["info", str(path), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["frame_interval_s"] == 0.5 and card["pixel_size"] == {}
    assert main(["info", str(path)]) == 0
    assert "frame interval 0.5 s" in capsys.readouterr().out
    assert main(["info", str(_imagej(tmp_path / "frames.tif"))]) == 0
    assert "frame interval: none in the file" in capsys.readouterr().out


def test_a_time_series_opens_in_napari_a_frame_a_step_with_its_interval(tmp_path):
    from napari_mutualseg._napari.reader import image_layer

    path = _zarr(tmp_path / "a.ome.zarr", 5.0, "minute")
    _, kwargs, _ = image_layer(AxisImage.from_file(path), "movie")
    assert kwargs["scale"] == (1.0, 1.0, 1.0)
    assert kwargs["metadata"]["pixel_size"]["T"] == 300.0


def test_the_panels_cell_table_of_a_time_series_has_its_time_in_seconds(tmp_path):
    from napari.layers import Image

    from napari_mutualseg._napari.axes import layer_axes
    from napari_mutualseg._napari.reader import image_layer
    from napari_mutualseg._napari.workers import measure

    data, kwargs, _ = image_layer(
        AxisImage.from_file(_imagej(tmp_path / "movie.tif", finterval=0.5)), "movie"
    )
    layer = Image(data, **kwargs)
    labels = np.zeros(MOVIE.shape, np.int32)
    labels[:, 2:5, 2:5] = 1
    table = measure(labels, layer.data, layer_axes(layer))
    assert table["time_s"].tolist() == [0.5 * t for t in range(MOVIE.shape[0])]
