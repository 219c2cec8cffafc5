"""Files as microscopes and the field's libraries write them: units, series, pyramids."""

import warnings

import numpy as np
import pytest
import tifffile

from napari_mutualseg.images import AxisImage


def _ome_zarr(path, data, axes, scale, units):
    """A one-level OME-Zarr (NGFF 0.4, zarr format 2) as ome-zarr-py writes it."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=data.shape)
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "axes": [
                        {
                            "name": a,
                            "type": {"c": "channel", "t": "time"}.get(a, "space"),
                            **({"unit": units[a]} if a in units else {}),
                        }
                        for a in axes
                    ],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                }
            ]
        }
    )
    return path


def test_ome_tiff_axes_in_different_units_are_read_in_one_unit(tmp_path):
    data = np.zeros((3, 16, 20), np.uint16)
    path = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 65,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 65,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.3,
            "PhysicalSizeZUnit": "µm",
        },
    )
    image = AxisImage.from_file(path)
    assert image.unit == "nm"
    assert image.pixel_size == pytest.approx({"Z": 300.0, "Y": 65.0, "X": 65.0})

    path = tmp_path / "xy.ome.tif"
    metadata = {"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"}
    metadata.update({"PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(path, data[0], ome=True, metadata=metadata)
    image = AxisImage.from_file(path)
    assert (image.pixel_size, image.unit) == ({"Y": 500.0, "X": 500.0}, "nm")


def test_ome_zarr_axes_in_different_units_are_read_in_one_unit(tmp_path):
    data = np.zeros((2, 3, 16, 20), np.uint16)
    units = {"t": "second", "z": "micrometer", "y": "nanometer", "x": "nanometer"}
    path = _ome_zarr(tmp_path / "a.ome.zarr", data, "tzyx", [60.0, 0.3, 65.0, 65.0], units)
    image = AxisImage.from_file(path)
    assert image.unit == "nm"
    assert image.pixel_size == pytest.approx({"T": 60.0, "Z": 300.0, "Y": 65.0, "X": 65.0})


def test_an_ome_zarr_step_without_a_unit_beside_axes_with_one_is_left_out_with_a_note(tmp_path):
    data = np.zeros((3, 8, 10), np.uint8)
    units = {"y": "micrometer", "x": "micrometer"}
    path = _ome_zarr(tmp_path / "z.ome.zarr", data, "zyx", [2.0, 0.5, 0.5], units)
    image = AxisImage.from_file(path)
    # it was a z step of 2 µm, the unit of y and x
    assert (image.pixel_size, image.unit) == ({"Y": 0.5, "X": 0.5}, "µm")
    (note,) = [note for note in image.notes if "Z 2 has no unit" in note]
    assert "left out rather than taken in µm" in note and "--pixel-size" in note
    # OME-Zarr's scale of 1 where no size is known is no size, and no unit at all no guess
    path = _ome_zarr(tmp_path / "one.ome.zarr", data, "zyx", [1.0, 0.5, 0.5], units)
    image = AxisImage.from_file(path)
    assert image.pixel_size == {"Y": 0.5, "X": 0.5} and len(image.notes) == 1
    path = _ome_zarr(tmp_path / "none.ome.zarr", data, "zyx", [2.0, 0.5, 0.5], {})
    image = AxisImage.from_file(path)
    assert (image.pixel_size, image.unit) == ({"Z": 2.0, "Y": 0.5, "X": 0.5}, None)


def test_labels_of_a_stack_keep_their_axes_and_z_step(tmp_path):
    from napari_mutualseg.io import write_labels
    from napari_mutualseg.ome import PixelSize

    labels = np.zeros((3, 8, 10), np.int32)
    labels[1, 2:5, 3:6] = 1
    size = PixelSize(0.5, 0.5, "µm", z=2.0)
    path = write_labels(tmp_path / "zyx.tif", labels, pixel_size=size, axes="ZYX")
    image = AxisImage.from_file(path)
    assert image.axes == "ZYX" and image.shape == (3, 8, 10)
    assert image.pixel_size == {"Z": 2.0, "Y": 0.5, "X": 0.5} and image.unit == "µm"
    np.testing.assert_array_equal(image.data, labels)

    # axes unknown: the file must not say that the planes are channels
    path = write_labels(tmp_path / "unknown.tif", labels, pixel_size=size)
    with tifffile.TiffFile(path) as tif:
        assert "C" not in tif.series[0].axes and "S" not in tif.series[0].axes  # no colours
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    image = AxisImage.from_file(path, axes="ZYX")
    assert image.pixel_size == {"Y": 0.5, "X": 0.5} and image.unit == "µm"
    with pytest.raises(ValueError, match="labels have no channels"):
        write_labels(tmp_path / "bad.tif", labels, axes="CYX")


def test_pixel_size_of_an_image_keeps_its_z_step():
    from napari_mutualseg.ome import PixelSize

    image = AxisImage.from_array(
        np.zeros((3, 8, 10)), "ZYX", pixel_size={"Z": 2.0, "Y": 0.5, "X": 0.25}, unit="µm"
    )
    assert PixelSize.of(image) == PixelSize(0.5, 0.25, "micrometer", z=2.0)


def test_pixel_size_text_is_unchanged_without_a_z_step():
    from napari_mutualseg.ome import PixelSize

    # batch records keep this text to recognise their own results
    assert str(PixelSize(0.5, 0.65)) == "PixelSize(y=0.5, x=0.65, unit='micrometer')"
    assert str(PixelSize(0.5, 0.65, z=2)).endswith(", z=2.0)")


def test_a_pyramidal_ome_tiff_is_opened_lazily_at_full_resolution(tmp_path):
    data = np.arange(2 * 128 * 128, dtype=np.uint16).reshape(2, 128, 128)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        metadata = {"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}}
        tif.write(data, subifds=1, tile=(64, 64), metadata=metadata)
        tif.write(data[:, ::2, ::2], subfiletype=1, tile=(64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not read whole into memory, with a warning
        image = AxisImage.from_file(path, lazy=True)
    assert type(image.data).__module__.startswith("dask")
    assert image.axes == "CYX" and image.channel_names == ("DAPI", "GFP")
    np.testing.assert_array_equal(np.asarray(image.data), data)


@pytest.mark.parametrize("plane", ["-1.0", "1.5"])
def test_a_napari_csv_with_boxes_off_the_planes_is_refused(tmp_path, plane):
    from napari_mutualseg.box_tables import read_box_table

    rows = ["index,shape-type,vertex-index,axis-0,axis-1,axis-2"]
    corners = [(2, 3), (2, 30), (20, 30), (20, 3)]
    rows += [f"0,rectangle,{v},{plane},{y},{x}" for v, (y, x) in enumerate(corners)]
    path = tmp_path / "boxes.csv"
    path.write_text("\n".join(rows) + "\n")
    # they were dropped (plane -1: "no image has any boxes") or put on a neighbour plane
    with pytest.raises(ValueError, match=f"plane {float(plane)}, which is no plane"):
        read_box_table(path)


def test_a_tiff_of_several_images_says_that_only_the_first_is_read(tmp_path):
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(np.zeros((2, 16, 20), np.uint8), metadata={"axes": "CYX"})
        tif.write(np.ones((3, 12, 10), np.uint16), metadata={"axes": "ZYX"})
    with pytest.warns(UserWarning, match="holds 2 images; the first .CYX 2x16x20. is read"):
        image = AxisImage.from_file(path)
    assert image.axes == "CYX" and image.shape == (2, 16, 20)
    assert any("holds 2 images" in note for note in image.notes)


def _shoelace(ring):
    x, y = np.asarray(ring, float).T
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_exported_outlines_enclose_exactly_the_cells_pixels(tmp_path):
    import json

    import roifile

    from napari_mutualseg.export import fiji_roi_zip, qupath_geojson

    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 1  # a rectangle: rows 2-4, columns 3-8
    labels[10, 20] = 2  # one pixel
    labels[12:18, 0:4] = 3  # at the border
    labels[12:15, 10:13] = 4
    labels[13, 11] = 0  # a ring: the hole is not traced
    labels[7, 24:27] = 5
    labels[8, 26] = 5  # an L
    areas = {k: int((labels == k).sum()) for k in range(1, 6)}
    areas[4] += 1

    path = tmp_path / "cells.zip"
    path.write_bytes(fiji_roi_zip(labels))
    rois = {r.name: r for r in roifile.roiread(path)}
    for k, area in areas.items():
        # ImageJ's pixel edges: pixel (i, j) covers [j, j + 1) x [i, i + 1)
        assert _shoelace(rois[f"cell {k}"].coordinates()) == area
    corners = rois["cell 1"].coordinates().tolist()
    assert sorted(corners) == [[3, 2], [3, 5], [9, 2], [9, 5]]
    assert rois["cell 2"].coordinates().tolist() == [[20, 10], [21, 10], [21, 11], [20, 11]]

    collection = json.loads(qupath_geojson(labels))
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["properties"]["objectType"] == "detection"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1]  # closed
        k = int(feature["properties"]["name"].split()[-1])
        assert _shoelace(ring[:-1]) == areas[k]


def test_a_16_bit_rgb_tiff_is_read_as_its_colours(tmp_path):
    data = np.arange(40 * 50 * 3, dtype=np.uint16).reshape(40, 50, 3)
    path = tmp_path / "he16.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    image = AxisImage.from_file(path)  # was refused: axes unknown, read as 'YXS'
    assert image.axes == "CYX" and image.rgb and image.dtype == np.uint16
    assert "RGB photometric tag" in image.notes[0]
    np.testing.assert_array_equal(image.data, np.moveaxis(data, -1, 0))
    assert image.select(rgb="gray").n_channels == 1


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("y0;x0;y1;x1;image\n3;11,5;23;31;a.tif\n", "utf-8"),  # a decimal comma
        ("y0\tx0\ty1\tx1\timage\n3\t11.5\t23\t31\ta.tif\n", "utf-8"),  # tab-separated
        ("y0,x0,y1,x1,image,,\n3,11.5,23,31,a.tif,,\n", "utf-8"),  # empty columns after
        ("y0,x0,y1,x1,image\n3,11.5,23,31,a.tif,\n", "utf-8"),  # a comma after the last
        # Excel's 'Unicode Text': UTF-16 with its byte order mark, tab-separated, CRLF
        ("y0\tx0\ty1\tx1\timage\r\n3\t11.5\t23\t31\ta.tif\r\n", "utf-16"),
        (",y0,x0,y1,x1,image\n0,3,11.5,23,31,a.tif\n", "utf-8"),  # pandas' to_csv, its index
    ],
)
def test_box_tables_as_spreadsheets_save_them(tmp_path, text, encoding):
    from napari_mutualseg.box_tables import read_box_table

    path = tmp_path / "boxes.csv"
    path.write_bytes(text.encode(encoding))
    (box,) = read_box_table(path)["a.tif"]
    assert box.pixel_range() == pytest.approx((3, 11.5, 23, 31))


@pytest.mark.parametrize(
    ("data", "said"),
    [
        # Excel's plain 'CSV' on Windows: its own encoding, an image named café.tif
        ("y0,x0,y1,x1,image\n3,1,23,31,café.tif\n".encode("cp1252"), "not saved as UTF-8"),
        # a decimal comma or a thousands separator, quoted, in a table separated by commas
        (b'y0,x0,y1,x1\n"3,5",1,23,31\n', "decimal comma, or one between thousands"),
        (b'y0,x0,y1,x1\n"1,203",1,"1,223",31\n', "decimal comma, or one between thousands"),
        # no header: which column is x is not guessed
        (b"3;1,5;23;31\n", r"no header: .*\('3', '1,5', '23', '31'\).* 'x0,y0,x1,y1'"),
    ],
)
def test_a_box_table_saved_otherwise_says_how_to_save_it(tmp_path, data, said):
    from napari_mutualseg.box_tables import read_box_table

    path = tmp_path / "boxes.csv"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=said):
        read_box_table(path)


def test_64_bit_labels_are_written_as_32_bit(tmp_path):
    from napari_mutualseg.io import write_labels
    from napari_mutualseg.ome import PixelSize

    labels = np.arange(120, dtype=np.int64).reshape(10, 12)  # numpy's default integer
    # with a pixel size this raised OmeXmlError: data type 'int64' not supported
    path = write_labels(tmp_path / "cells.tif", labels, pixel_size=PixelSize(0.5, 0.5))
    written = tifffile.imread(path)
    assert written.dtype == np.int32
    np.testing.assert_array_equal(written, labels)
    path = write_labels(tmp_path / "big.tif", labels.astype(np.uint64) + 2**31)
    assert tifffile.imread(path).dtype == np.uint32
    with pytest.raises(ValueError, match="beyond the 32 bits"):
        write_labels(tmp_path / "huge.tif", labels + 2**40)


def test_an_rgb_ome_tiff_with_a_named_channel_opens(tmp_path):
    # one OME channel of three samples, as slide scanners and QuPath write brightfield
    rgb = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    path = tmp_path / "he.ome.tif"
    metadata = {"Channel": {"Name": ["brightfield"]}, "PhysicalSizeX": 0.25}
    metadata["PhysicalSizeY"] = 0.25
    tifffile.imwrite(path, rgb, ome=True, photometric="rgb", metadata=metadata)
    image = AxisImage.from_file(path)  # raised: 3 channel(s) but 1 channel name(s)
    assert image.axes == "CYX" and image.rgb and image.channel_names is None
    assert image.pixel_size == {"Y": 0.25, "X": 0.25}


def test_an_ome_zarr_plate_names_the_images_to_give(tmp_path):
    import zarr

    plate = tmp_path / "plate.ome.zarr"
    group = zarr.open_group(str(plate), mode="w", zarr_format=2)
    group.attrs["plate"] = {
        "version": "0.4",
        "rows": [{"name": "A"}],
        "columns": [{"name": "1"}],
        "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}],
    }
    well = group.create_group("A").create_group("1")
    well.attrs["well"] = {"version": "0.4", "images": [{"path": "0"}]}
    _ome_zarr(plate / "A" / "1" / "0", np.ones((16, 20), np.uint16), "yx", [0.5, 0.5], {})
    field = str(plate / "A" / "1" / "0")
    with pytest.raises(ValueError, match="OME-Zarr plate of 1 well") as err:
        AxisImage.from_file(plate)
    assert field in str(err.value) and str(plate / "*/*/*") in str(err.value)
    with pytest.raises(ValueError, match="OME-Zarr well, not one image"):
        AxisImage.from_file(plate / "A" / "1")
    assert AxisImage.from_file(field).shape == (16, 20)


def test_image_names_in_capitals_lose_their_ome_suffix():
    from napari_mutualseg.io import image_stem, output_paths

    assert image_stem("WELL_A01.OME.TIF") == "WELL_A01"
    assert image_stem("s.Ome.Zarr") == "s" and image_stem("a.ome.tif") == "a"
    assert output_paths(["x/B2.OME.TIFF"], "out")[0].name == "B2_cells.tif"


def test_results_are_never_written_inside_an_ome_zarr_input(tmp_path):
    from napari_mutualseg.io import output_paths

    store = _ome_zarr(tmp_path / "w.ome.zarr", np.ones((16, 20), np.uint16), "yx", [1, 1], {})
    for out in (store, store / "results"):
        with pytest.raises(ValueError, match=r"inside the image .*w\.ome\.zarr"):
            output_paths([store], out)
    assert output_paths([store], tmp_path / "out")[0] == tmp_path / "out" / "w_cells.tif"


def test_a_level_of_an_ome_zarr_is_read_with_the_images_metadata(tmp_path):
    data = np.zeros((2, 16, 20), np.uint16)
    units = {"y": "micrometer", "x": "micrometer"}
    store = _ome_zarr(tmp_path / "a.ome.zarr", data, "cyx", [1.0, 0.5, 0.5], units)
    # the array itself: its axes were unknown
    image = AxisImage.from_file(store / "0")
    assert image.axes == "CYX" and image.pixel_size == {"Y": 0.5, "X": 0.5}


def test_qupath_export_keeps_text_columns_as_metadata():
    import json

    from napari_mutualseg.export import qupath_geojson

    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 2:5], labels[6:9, 6:9] = 1, 2
    table = {
        "label": np.array([1, 2]),
        "area_px": np.array([9, 9]),
        "class": np.array(["tumor", "stroma"], dtype=object),  # given by a person or a tool
        "checked": np.array([True, False]),
    }
    features = json.loads(qupath_geojson(labels, table))["features"]  # raised ValueError
    first = features[0]["properties"]
    assert first["measurements"] == {"area_px": 9.0, "checked": 1.0}
    assert first["metadata"] == {"class": "tumor"}


def test_a_napari_csv_of_a_five_axis_layer_is_read(tmp_path):
    from napari_mutualseg.box_tables import read_box_table

    # a Shapes layer on a (C, T, Z, Y, X) layer, as napari saves it
    rows = ["index,shape-type,vertex-index,axis-0,axis-1,axis-2,axis-3,axis-4"]
    corners = [(2, 3), (2, 30), (20, 30), (20, 3)]
    rows += [f"0,rectangle,{v},1.0,0.0,2.0,{y},{x}" for v, (y, x) in enumerate(corners)]
    path = tmp_path / "boxes.csv"
    path.write_text("\n".join(rows) + "\n")
    (box,) = read_box_table(path)[(1, 0, 2)]  # was refused as an unknown header
    assert box.pixel_range() == pytest.approx((2.5, 3.5, 20.5, 30.5))


def test_an_lzw_tiff_is_read(tmp_path):
    from PIL import Image

    path = tmp_path / "lzw.tif"
    pixels = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40)
    Image.fromarray(pixels).save(path, compression="tiff_lzw")
    for lazy in (False, True):
        image = AxisImage.from_file(path, lazy=lazy)
        np.testing.assert_array_equal(np.asarray(image.data), pixels)


def test_a_tiff_whose_codec_is_missing_says_what_to_install(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "lzw.tif"
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(path, compression="tiff_lzw")
    # as where imagecodecs is missing (an environment installed without the dependencies)
    missing = {5}
    decompressors = tifffile.TIFF.DECOMPRESSORS

    class Codecs:
        def __getitem__(self, key):
            if key in missing:
                raise KeyError(f"{key} requires the 'imagecodecs' package")
            return decompressors[key]

    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", Codecs())
    for lazy in (False, True):  # lazily it failed later, in the middle of the work
        with pytest.raises(ValueError, match=r"LZW-compressed.*pip install imagecodecs"):
            AxisImage.from_file(path, lazy=lazy)


def test_a_pixel_size_of_zero_in_a_file_is_left_out(tmp_path):
    from napari_mutualseg.ome import PixelSize

    path = tmp_path / "zero.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0, "PhysicalSizeY": 0, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, np.zeros((2, 16, 20), np.uint16), ome=True, metadata=metadata)
    image = AxisImage.from_file(path)
    assert image.pixel_size == {"Z": 2.0}
    assert PixelSize.of(image) is None  # raised: pixel size along y must be positive
    (note,) = [note for note in image.notes if "Y 0, X 0 is no size" in note]
    # the note reaches the panel and scripts too: every face's setting is named
    assert "--pixel-size on the command line or pixel_size= in Python" in note


def test_a_zarr_group_without_metadata_names_the_axes_setting_of_each_face(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(ValueError, match=r"--axes on the command line or axes= in Python"):
        AxisImage.from_file(tmp_path / "plain.zarr")


def test_table_rows_with_columns_of_their_own_are_written():
    from napari_mutualseg.export import table_csv

    rows = [
        {"image": "a", "median_area_um2": 1.5},
        {"image": "b", "median_area_nm2": 5.0},  # raised: fields not in fieldnames
    ]
    assert table_csv(rows) == "image,median_area_um2,median_area_nm2\na,1.5,\nb,,5.0\n"


def test_fiji_rois_of_a_stack_carry_their_plane(tmp_path):
    import roifile

    from napari_mutualseg.export import fiji_roi_zip

    labels = np.zeros((2, 3, 10, 12), np.int32)  # T, Z, Y, X
    labels[1, 2, 2:5, 3:7] = 4
    labels[0, 0, 6:8, 6:8] = 1
    with pytest.raises(ValueError, match="axes='ZYX'"):
        fiji_roi_zip(labels)
    path = tmp_path / "cells.zip"
    path.write_bytes(fiji_roi_zip(labels, axes="TZYX"))
    rois = {r.name: r for r in roifile.roiread(path)}
    assert sorted(rois) == ["cell 1 t000 z000", "cell 4 t001 z002"]
    roi = rois["cell 4 t001 z002"]
    # a hyperstack's ROI: its 1-based slice and frame, on every channel, as ImageJ writes them
    assert (roi.position, roi.c_position, roi.z_position, roi.t_position) == (0, 0, 3, 2)
    assert sorted(roi.coordinates().tolist()) == [[3, 2], [3, 5], [7, 2], [7, 5]]
    (roi,) = roifile.roiread(_write(tmp_path / "z.zip", fiji_roi_zip(labels[1], axes="ZYX")))
    # a plain stack's ROI: its 1-based stack position only
    assert (roi.name, roi.position, roi.z_position) == ("cell 4 z002", 3, 0)


@pytest.mark.parametrize(
    ("image_axes", "sizes", "fields"),
    [
        # a plain stack's ROI with a z or frame: ImageJ drew it on every plane
        ("ZYX", (3,), (2, 0, 0)),
        ("TYX", (3,), (2, 0, 0)),
        ("TZYX", (2, 3), (0, 2, 1)),
        # with channels, a stack position counts them: ImageJ drew such a ROI on no plane
        ("CZYX", (2, 3), (0, 2, 1)),
        ("CTYX", (2, 3), (0, 1, 2)),
    ],
)
def test_fiji_shows_a_stacks_cell_on_its_plane_only(tmp_path, image_axes, sizes, fields):
    """Each cell's ROI has the fields ImageJ gives a ROI added on its plane (ImageJ's canvas
    draws it there only), and reads back on that plane."""
    import roifile

    from napari_mutualseg.box_tables import read_box_table, table_planes
    from napari_mutualseg.export import fiji_roi_zip

    image = AxisImage.from_array(np.zeros((*sizes, 8, 8), np.uint8), image_axes)
    labels = np.zeros((*sizes[image_axes.startswith("C") :], 8, 8), np.int32)
    labels.reshape(-1, 8, 8)[1, 2:5, 3:6] = 4
    channels = sizes[0] if image_axes.startswith("C") else 1
    data = fiji_roi_zip(labels, image_axes.replace("C", ""), channels=channels)
    (roi,) = roifile.roiread(_write(tmp_path / "cells.zip", data))
    assert (roi.position, roi.z_position, roi.t_position) == fields and roi.c_position == 0
    # the project's own reader places it there too (as a box: cells are outlines)
    roi.roitype, roi.integer_coordinates, roi.n_coordinates = roifile.ROI_TYPE.RECT, None, 0
    table = read_box_table(_write(tmp_path / "box.roi", roi.tobytes()))
    assert list(table_planes(table, image)) == [1]


def _write(path, data):
    path.write_bytes(data)
    return path


def test_a_gray_picture_with_transparency_is_one_channel(tmp_path):
    import imageio.v3 as iio

    gray = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
    path = tmp_path / "la.png"
    iio.imwrite(path, np.dstack([gray, np.full_like(gray, 255)]))  # gray and alpha
    image = AxisImage.from_file(path)  # was two channels, the alpha one of them
    assert image.axes == "YX" and not image.rgb
    np.testing.assert_array_equal(image.data, gray)
    assert "alpha" in image.notes[0]


def test_boxes_of_a_time_series_of_stacks_are_written_back(tmp_path):
    from napari_mutualseg.box_tables import read_box_table, write_box_table
    from napari_mutualseg.boxes import Box

    boxes = {(0, 2): [Box.from_corners(2, 3, 20, 30)], (1, 0): [Box.from_corners(5, 5, 9, 9)]}
    path = write_box_table(tmp_path / "tz.csv", boxes)  # raised: keys must be ... plane indices
    assert path.read_text().splitlines()[0].endswith("axis-2,axis-3")
    assert read_box_table(path) == boxes


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        (["DAPI", "GFP"] * 3, ("DAPI", "GFP")),
        ([f"z{z} c{c}" for z in range(3) for c in range(2)], None),
    ],
)
def test_imagej_slice_labels_name_channels_only_when_they_name_each_channel(
    tmp_path, labels, names
):
    path = tmp_path / "hyperstack.tif"
    data = np.zeros((3, 2, 8, 8), np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX", "Labels": labels})
    assert AxisImage.from_file(path).channel_names == names


@pytest.mark.parametrize(("dpi", "size"), [(25400, 1.0), (39116.8, 0.649337)])
def test_a_tiff_resolution_in_inches_is_a_pixel_size_in_micrometres(tmp_path, dpi, size):
    path = tmp_path / "inch.tif"
    tifffile.imwrite(
        path, np.zeros((4, 6), np.uint8), resolution=(dpi, dpi), resolutionunit="INCH"
    )
    image = AxisImage.from_file(path, axes="YX")
    assert image.pixel_size == {"Y": size, "X": size}
    assert image.unit == "µm"


@pytest.mark.parametrize(
    ("resolution", "unit", "said"),
    [(72, "INCH", "72 dpi"), (300, "INCH", "300 dpi"), (37.8, "CENTIMETER", "96 dpi")],
)
def test_a_tiff_resolution_of_a_screen_or_print_setting_is_no_pixel_size(
    tmp_path, resolution, unit, said
):
    path = tmp_path / "screen.tif"
    tifffile.imwrite(
        path, np.zeros((4, 6), np.uint8), resolution=(resolution,) * 2, resolutionunit=unit
    )
    image = AxisImage.from_file(path, axes="YX")
    assert image.pixel_size == {}
    assert image.unit is None
    (note,) = [note for note in image.notes if said in note]
    assert "--pixel-size on the command line or pixel_size= in Python" in note


def test_a_size_in_angstrom_is_read_in_angstrom(tmp_path):
    # it was taken in the unit of the other axes: 6500 µm
    metadata = {"axes": "ZYX", "PhysicalSizeZ": 0.5}  # µm, OME's default unit
    metadata.update({"PhysicalSizeX": 6500, "PhysicalSizeXUnit": "Å"})
    metadata.update({"PhysicalSizeY": 6500, "PhysicalSizeYUnit": "Å"})
    tifffile.imwrite(
        tmp_path / "em.ome.tif", np.zeros((2, 4, 6), np.uint8), ome=True, metadata=metadata
    )
    image = AxisImage.from_file(tmp_path / "em.ome.tif")
    assert (image.pixel_size, image.unit) == ({"Z": 5000.0, "Y": 6500.0, "X": 6500.0}, "Å")

    units = {"y": "angstrom", "x": "angstrom"}
    path = _ome_zarr(tmp_path / "em.ome.zarr", np.zeros((4, 6), np.uint8), "yx", [8.0, 8.0], units)
    assert AxisImage.from_file(path).unit == "Å"


def test_a_size_in_a_unit_that_is_no_known_length_is_left_out_with_a_note(tmp_path):
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    metadata.update({"PhysicalSizeZ": 2, "PhysicalSizeZUnit": "furlong"})
    tifffile.imwrite(
        tmp_path / "z.ome.tif", np.zeros((2, 4, 6), np.uint8), ome=True, metadata=metadata
    )
    image = AxisImage.from_file(tmp_path / "z.ome.tif")
    # it was 2 µm
    assert (image.pixel_size, image.unit) == ({"Y": 0.5, "X": 0.5}, "µm")
    (note,) = [note for note in image.notes if "Z 2 furlong" in note]
    assert "--pixel-size on the command line or pixel_size= in Python" in note

    path = tmp_path / "ij.tif"
    metadata = {"unit": "mic", "axes": "YX"}
    tifffile.imwrite(
        path, np.zeros((4, 6), np.uint8), imagej=True, resolution=(3.0, 3.0), metadata=metadata
    )
    image = AxisImage.from_file(path)
    assert (image.pixel_size, image.unit) == ({}, None)
    assert any("X 0.333333 mic, Y 0.333333 mic" in note for note in image.notes)  # was silent


@pytest.mark.parametrize(("dpi", "size"), [(72, None), (25400 / 0.65, 0.65)])
def test_imagej_inches_are_dots_per_inch(tmp_path, dpi, size):
    path = tmp_path / "ij.tif"
    metadata = {"unit": "inch", "axes": "YX"}
    tifffile.imwrite(
        path, np.zeros((4, 6), np.uint8), imagej=True, resolution=(dpi, dpi), metadata=metadata
    )
    image = AxisImage.from_file(path)
    if size is None:
        assert image.pixel_size == {}
        assert any("72 dpi, is a screen or print setting" in note for note in image.notes)
    else:
        assert (image.pixel_size, image.unit) == ({"Y": size, "X": size}, "µm")


def test_an_imagej_z_step_in_a_unit_of_its_own_is_read_in_that_unit(tmp_path):
    path = tmp_path / "ij.tif"
    metadata = {"unit": "micron", "zunit": "nm", "spacing": 300, "axes": "ZYX"}
    tifffile.imwrite(
        path, np.zeros((2, 4, 6), np.uint8), imagej=True, resolution=(2.0, 2.0), metadata=metadata
    )
    image = AxisImage.from_file(path)
    # it was 300 µm
    assert (image.pixel_size, image.unit) == ({"Z": 0.3, "Y": 0.5, "X": 0.5}, "µm")


def test_an_ome_tiff_whose_pixel_size_is_no_number_opens_without_it(tmp_path):
    path = tmp_path / "comma.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 6), np.uint8), ome=True, metadata={"PhysicalSizeX": 0.5})
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata.replace('PhysicalSizeX="0.5"', 'PhysicalSizeX="0,65"')
    tifffile.imwrite(path, np.zeros((4, 6), np.uint8), description=xml, metadata=None)
    image = AxisImage.from_file(path)  # raised: could not convert string to float
    assert image.pixel_size == {}
    assert any("X 0,65 µm is no length" in note for note in image.notes)


def test_a_z_step_in_pixels_is_no_length(tmp_path):
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    metadata.update({"PhysicalSizeZ": 1, "PhysicalSizeZUnit": "pixel"})
    tifffile.imwrite(
        tmp_path / "z.ome.tif", np.zeros((2, 4, 6), np.uint8), ome=True, metadata=metadata
    )
    image = AxisImage.from_file(tmp_path / "z.ome.tif")
    assert image.pixel_size == {"Y": 0.5, "X": 0.5}  # Z was 1 µm
    assert any("Z 1 pixel is no length" in note for note in image.notes)


def _qupath_feature(ring, geometry=None, kind="annotation"):
    """One object as QuPath 0.4/0.5's *Export objects as GeoJSON* writes it."""
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in ring]
    return {
        "type": "Feature",
        "id": "8e0b3c52-7c1e-4a57-9d1e-2f6f3b2f0b61",
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]], **(geometry or {})},
        "properties": {
            "objectType": kind,
            "classification": {"name": "Cell", "color": [200, 0, 0]},
            "isLocked": False,
        },
    }


def _qupath_rectangle(x, y, width, height, **geometry):
    corners = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
    return _qupath_feature(corners, geometry)


def test_qupath_boxes_of_a_stack_keep_their_plane(tmp_path):
    import json

    from napari_mutualseg.box_tables import read_box_table

    features = [
        _qupath_rectangle(3, 2, 12, 10),  # the first plane: QuPath writes no plane
        _qupath_rectangle(20, 5, 6, 8, plane={"c": -1, "z": 2, "t": 0}),
        _qupath_rectangle(1, 1, 5, 5, plane={"c": -1, "z": 1, "t": 3}),
    ]
    path = tmp_path / "stack.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    # every box was taken for one of a 2D image, all planes on one
    boxes = read_box_table(path)
    assert {k: [b.pixel_range() for b in v] for k, v in boxes.items()} == {
        0: [(2, 3, 12, 15)],
        2: [(5, 20, 13, 26)],
        (3, 1): [(1, 1, 6, 6)],
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features[:1]}))
    assert list(read_box_table(path)) == [None]
    features[1]["geometry"]["plane"] = {"c": -1, "z": 1.5, "t": 0}
    path.write_text(json.dumps(features))
    with pytest.raises(ValueError, match=r"object 2 has plane .* whole numbers from 0"):
        read_box_table(path)


def test_box_tables_say_what_wrote_them(tmp_path):
    import json
    import pickle

    import roifile

    from napari_mutualseg.box_tables import read_box_table

    # (1, 0) is time point 1 of Fiji's and QuPath's (t, z), but channel 1 of time point 0
    # of a napari layer of a time series with channels: only what wrote the table tells
    roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=2, top=3, right=9, bottom=8)
    roi.c_position, roi.z_position, roi.t_position = 2, 1, 2
    roi.tofile(tmp_path / "fiji.roi")
    plane = {"c": -1, "z": 0, "t": 1}
    collection = {
        "type": "FeatureCollection",
        "features": [_qupath_rectangle(2, 3, 7, 5, plane=plane)],
    }
    (tmp_path / "qupath.geojson").write_text(json.dumps(collection))
    corners = [(3, 2), (3, 9), (8, 9), (8, 2)]
    rows = [f"0,rectangle,{v},1,0,{y - 0.5},{x - 0.5}" for v, (y, x) in enumerate(corners)]
    header = "index,shape-type,vertex-index,axis-0,axis-1,axis-2,axis-3"
    (tmp_path / "napari.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "plain.csv").write_text("y0,x0,y1,x1\n3,2,8,9\n")
    for origin in ("fiji", "qupath", "napari"):
        (path,) = tmp_path.glob(f"{origin}.*")
        table = read_box_table(path)
        assert list(table) == [(1, 0)] and table[(1, 0)][0].pixel_range() == (3, 2, 8, 9)
        assert table.origin == pickle.loads(pickle.dumps(table)).origin == origin
    assert read_box_table(tmp_path / "plain.csv").origin == "table"


def test_qupath_ellipses_are_boxes(tmp_path):
    import json

    from napari_mutualseg.box_tables import read_box_table

    # QuPath writes an ellipse as its outline's polygon, marked so that it reads it back
    angles = np.linspace(0, 2 * np.pi, 33)[:-1]
    ring = np.c_[9 + 6 * np.cos(angles), 7 + 5 * np.sin(angles)]
    ellipse = _qupath_feature(ring, {"isEllipse": True})
    path = tmp_path / "ellipses.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [ellipse]}))
    (box,) = read_box_table(path)[None]  # refused as a polygon of 32 corners
    assert box.kind == "ellipse" and box.pixel_range() == (2, 3, 12, 15)
    del ellipse["geometry"]["isEllipse"]  # a polygon drawn by hand stays refused
    path.write_text(json.dumps([ellipse]))
    with pytest.raises(ValueError, match="a polygon of 32 corners; only rectangles and"):
        read_box_table(path)


@pytest.mark.parametrize(("kind", "shape"), [("RECT", "rectangle"), ("OVAL", "ellipse")])
def test_fiji_rois_at_sub_pixel_resolution_keep_their_corners(tmp_path, kind, shape):
    import roifile

    from napari_mutualseg.box_tables import read_box_table

    # as ImageJ's RoiEncoder saves a rectangle with sub-pixel corners: its float bounds, and
    # whole-pixel ones that only round them
    roi = roifile.ImagejRoi(version=228, name="cell 1")
    roi.roitype = roifile.ROI_TYPE[kind]
    roi.options = roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
    roi.top, roi.left, roi.bottom, roi.right = 2, 3, 12, 15
    roi.xd, roi.yd, roi.widthd, roi.heightd = 3.5, 2.25, 12.0, 10.0
    roifile.roiwrite(tmp_path / "cell.roi", roi)
    (box,) = read_box_table(tmp_path / "cell.roi")[None]
    assert box.kind == shape
    assert box.pixel_range() == (2.25, 3.5, 12.25, 15.5)  # was (2, 3, 12, 15)


def _imagej_turned_roi(path, subtype, points, ends):
    """A Fiji ROI as ImageJ's RoiEncoder saves a rotated rectangle or an ellipse: a freehand
    ROI of that subtype, its outline's float points and the ends of its long axis."""
    import roifile

    roi = roifile.ImagejRoi.frompoints(np.asarray(points, np.float32), name="cell 1")
    roi.version = 228
    roi.subtype = roifile.ROI_SUBTYPE[subtype]
    (roi.x1, roi.y1), (roi.x2, roi.y2) = ends
    roifile.roiwrite(path, roi)
    return path


def test_fiji_rotated_rectangles_and_ellipses_are_boxes(tmp_path):
    from napari_mutualseg.box_tables import read_box_table

    # ImageJ's pixel edges: a long axis from (3, 4) to (15, 10) (x, y), 6 pixels across
    ends = np.array([[3.0, 4.0], [15.0, 10.0]])
    along = (ends[1] - ends[0]) / 2
    across = np.array([-along[1], along[0]]) / np.linalg.norm(along) * 3
    centre = ends.mean(axis=0)
    corners = [centre + s * along + t * across for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    # napari's box: pixel centres half a pixel up and left of ImageJ's edges, (y, x)
    expected = sorted((np.asarray(corners)[:, ::-1] - 0.5).tolist())

    # drawn, and made by a macro (makeRotatedRectangle), which closes the outline
    for outline in (corners, [*corners, corners[0]]):
        path = _imagej_turned_roi(tmp_path / "rect.roi", "ROTATED_RECT", outline, ends)
        (box,) = read_box_table(path)[None]  # was refused as a 'rotated rect'
        assert box.kind == "rectangle"
        np.testing.assert_allclose(sorted(box.corners.tolist()), expected, atol=1e-4)

    # EllipseRoi.makeEllipse: 72 points from the end of the long axis round, the ends of the
    # short one a quarter of the way
    angle = np.linspace(0, 2 * np.pi, 73)[:-1]
    outline = centre + np.cos(angle)[:, None] * along + np.sin(angle)[:, None] * across
    path = _imagej_turned_roi(tmp_path / "ellipse.roi", "ELLIPSE", outline, ends)
    (box,) = read_box_table(path)[None]
    assert box.kind == "ellipse"
    np.testing.assert_allclose(sorted(box.corners.tolist()), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("axes", "shape", "places", "planes"),
    [
        ("TZYX", (3, 4), [(2, 1), (3, 2)], [1, 6]),
        ("CTYX", (2, 3), [(1, 1), (1, 3)], [0, 2]),  # frame 3 was read back as frame 1
    ],
)
def test_fiji_boxes_on_planes_are_written_as_the_planes_of_their_image(
    tmp_path, axes, shape, places, planes
):
    import roifile

    from napari_mutualseg.box_tables import read_box_table, table_planes, write_box_table

    rois = []
    for z, t in places:  # ImageJ's hyperstack positions, from 1
        roi = roifile.ImagejRoi(version=228, name=f"z{z} t{t}")
        roi.roitype = roifile.ROI_TYPE.RECT
        roi.top, roi.left, roi.bottom, roi.right = 2, 3, 12, 15
        roi.c_position, roi.z_position, roi.t_position = 1, z, t
        rois.append(roi)
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois, mode="w")
    boxes = read_box_table(tmp_path / "RoiSet.zip")
    # their (t, z) came back as a napari layer's (c, t) on a time series with channels
    with pytest.raises(ValueError, match=r"write box_tables\.table_planes\(table, image\)"):
        write_box_table(tmp_path / "raw.csv", boxes)
    image = AxisImage.from_array(np.zeros((*shape, 8, 8), np.uint16), axes)
    placed = table_planes(boxes, image)
    assert list(placed) == planes
    path = write_box_table(tmp_path / "boxes.csv", placed)
    assert table_planes(read_box_table(path), image) == placed


@pytest.mark.parametrize(
    ("geometry", "said"),
    [
        (None, "has no geometry"),  # was "is 'no geometry'"
        ({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, "is a MultiPoint"),
    ],
)
def test_qupath_objects_that_are_no_boxes_are_named_in_words(tmp_path, geometry, said):
    import json

    from napari_mutualseg.box_tables import read_box_table

    feature = {"type": "Feature", "geometry": geometry, "properties": {"objectType": "annotation"}}
    path = tmp_path / "objects.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(ValueError, match=f"object 1 {said}; only rectangles and ellipses"):
        read_box_table(path)


@pytest.mark.parametrize(("kind", "said"), [("tmaCore", "TMA core"), ("tile", "tile")])
def test_qupath_tma_cores_and_tiles_are_no_boxes(tmp_path, kind, said):
    import json

    from napari_mutualseg.box_tables import read_box_table

    # QuPath writes a TMA core as an ellipse, a tile as a rectangle
    angles = np.linspace(0, 2 * np.pi, 33)[:-1]
    ring = np.c_[900 + 600 * np.cos(angles), 700 + 600 * np.sin(angles)]
    core = _qupath_feature(ring, {"isEllipse": True}, kind=kind)
    features = [_qupath_rectangle(3, 2, 12, 10), core]
    path = tmp_path / "all objects.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(ValueError, match=f"object 2 is a QuPath {said}, not a box drawn"):
        read_box_table(path)
    features[0]["properties"]["objectType"] = ["annotation"]  # not QuPath's: no type said
    path.write_text(json.dumps(features[:1]))
    assert len(read_box_table(path)[None]) == 1  # raised TypeError: unhashable type: 'list'


@pytest.mark.parametrize("imagej", [True, False], ids=["imagej-stack", "plane"])
def test_a_tiff_cut_short_says_so(tmp_path, imagej):
    """A copy that stopped halfway: an ImageJ z-stack was read as its first plane without a
    word (tifffile's note was held back) and segmented so; a plane said 'failed to read
    8192 bytes, got 3968'."""
    pixels = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32)
    path = tmp_path / "cut.tif"
    if imagej:
        tifffile.imwrite(path, pixels, imagej=True, metadata={"axes": "ZYX"})
    else:
        tifffile.imwrite(path, pixels[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=r"Cannot read .*cut\.tif: it is cut short.*copy it again"
    ):
        AxisImage.from_file(path)


def test_a_fiji_stack_index_counts_the_channels_of_the_image(tmp_path):
    import roifile

    from napari_mutualseg.box_tables import read_box_table, table_planes

    # ImageJ's stack index runs over channels, then slices: index 4 of a 2-channel z-stack
    # shown as a plain stack is slice 2 (plane 1); it was read as plane 3
    roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=2, top=3, right=9, bottom=8)
    roi.position = 4
    roi.tofile(tmp_path / "cell.roi")
    table = read_box_table(tmp_path / "cell.roi")
    assert list(table) == [3]  # without the image, as of one channel
    czyx = AxisImage.from_array(np.zeros((2, 3, 8, 8), np.uint16), "CZYX")
    assert list(table_planes(table, czyx)) == [1]
    # an RGB image's colours are no channels to ImageJ
    rgb = AxisImage.from_array(np.zeros((5, 8, 8, 3), np.uint8), "ZYXC", rgb=True)
    assert list(table_planes(table, rgb)) == [3]
