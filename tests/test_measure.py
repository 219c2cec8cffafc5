"""Per-cell measurements and exports on images whose cells are known exactly."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from napari_mutualseg.export import cell_outlines, fiji_roi_zip, qupath_geojson, table_csv
from napari_mutualseg.measure import (
    measure_cells,
    measure_planes,
    summarize,
    with_frame_interval,
    with_pixel_size,
)
from napari_mutualseg.synthetic import synthetic_volume


@pytest.fixture
def cells():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:11] = 1  # a 4 x 8 rectangle: 32 px
    labels[10:17, 15:22] = 2  # a 7 x 7 square: 49 px
    nuclei = np.where(labels == 1, 100.0, np.where(labels == 2, 50.0, 1.0))
    membrane = np.where(labels > 0, 7.0, 0.0)
    membrane[12, 18] = 9.0
    return labels, np.stack([nuclei, membrane])


def test_measurements_are_the_known_values(cells):
    labels, image = cells
    table = measure_cells(labels, image, channel_names=["dapi", "actin"], pixel_size=(0.5, 0.25))
    np.testing.assert_array_equal(table["label"], [1, 2])
    np.testing.assert_array_equal(table["area_px"], [32, 49])
    np.testing.assert_allclose(table["area_um2"], [32 * 0.125, 49 * 0.125])
    np.testing.assert_allclose(table["centroid_y_px"], [3.5, 13.0])
    np.testing.assert_allclose(table["centroid_x_um"], [6.5 * 0.25, 18.0 * 0.25])
    np.testing.assert_array_equal(table["bbox_y0_px"], [2, 10])
    np.testing.assert_array_equal(table["bbox_x1_px"], [11, 22])
    np.testing.assert_allclose(table["mean_intensity_dapi"], [100, 50])
    np.testing.assert_allclose(table["max_intensity_actin"], [7, 9])
    np.testing.assert_allclose(table["solidity"], [1, 1])
    assert table["eccentricity"][0] > table["eccentricity"][1]  # elongated vs square
    row = summarize("img", table)
    assert row["cells"] == 2 and row["median_area_px"] == pytest.approx(40.5)


def test_one_channel_and_3d_stacks(cells):
    labels, image = cells
    table = measure_cells(labels, image[0])
    np.testing.assert_allclose(table["mean_intensity_0"], [100, 50])
    volume = np.stack([labels, labels, np.zeros_like(labels)])
    table = measure_cells(volume, pixel_size=(2.0, 0.5, 0.25))
    np.testing.assert_array_equal(table["volume_px"], [64, 98])
    np.testing.assert_allclose(table["volume_um3"], [64 * 0.25, 98 * 0.25])
    np.testing.assert_allclose(table["centroid_z_px"], [0.5, 0.5])
    with pytest.raises(ValueError, match="channels first"):
        measure_cells(labels, image[:, :10])
    with pytest.raises(ValueError, match="one positive size per axis"):
        measure_cells(labels, pixel_size=(1.0,))


def test_outlines_rois_and_geojson_trace_each_cell(cells):
    from roifile import ImagejRoi

    labels, image = cells
    outlines = cell_outlines(labels)
    assert sorted(outlines) == [1, 2]
    xs, ys = outlines[1][:, 0], outlines[1][:, 1]
    # along the edges of the cell's pixels (x 3..10, y 2..5), in ImageJ's coordinates
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 11, 2, 6)
    with zipfile.ZipFile(io.BytesIO(fiji_roi_zip(labels))) as archive:
        names = archive.namelist()
        roi = ImagejRoi.frombytes(archive.read(names[1]))
    assert len(names) == 2 and roi.name == "cell 2"
    corners = roi.coordinates()
    assert (*corners.min(0), *corners.max(0)) == (15, 10, 22, 17)
    collection = json.loads(qupath_geojson(labels, measure_cells(labels, image)))
    first = collection["features"][0]
    assert first["properties"]["objectType"] == "detection"
    assert first["properties"]["measurements"]["area_px"] == 32
    ring = first["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]


def test_table_csv_has_a_header_and_a_row_per_cell(cells):
    labels, _ = cells
    text = table_csv(measure_cells(labels))
    lines = text.splitlines()
    assert lines[0].startswith("label,area_px,centroid_y_px")
    assert len(lines) == 3 and lines[1].startswith("1,32,")


def test_physical_units_match_regionprops_with_anisotropic_spacing():
    image, labels = synthetic_volume((6, 32, 32), 3, seed=2)
    spacing = (2.0, 0.5, 0.25)
    table = measure_cells(labels, image, pixel_size=spacing, unit="µm")
    expected = regionprops_table(
        labels, image, properties=("label", "area", "centroid"), spacing=spacing
    )
    np.testing.assert_allclose(table["volume_um3"], expected["area"])
    for i, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}_um"], expected[f"centroid-{i}"])
    # the same columns, in the same order, added to a table measured in pixels
    added = with_pixel_size(measure_cells(labels, image), spacing, "µm")
    assert list(added) == list(table)
    for column, values in table.items():
        np.testing.assert_array_equal(added[column], values)
    with pytest.raises(ValueError, match="zyx"):
        with_pixel_size(table, (0.5, 0.5))


def test_a_time_series_summary_counts_each_tracked_cell_once():
    table = {
        "t": np.array([0, 0, 1, 1, 2]),
        "label": np.array([1, 2, 1, 2, 1]),  # two cells tracked over three frames
        "area_px": np.array([10, 20, 12, 22, 14]),
    }
    row = summarize("movie", table)
    assert row["cells"] == 2 and row["frames"] == 3
    assert row["median_area_px"] == 14.0
    assert summarize("movie", table, tracked=False)["cells"] == 5  # each frame's own cells


def test_a_time_series_table_gets_its_time_in_seconds_beside_its_frame():
    table = {"t": np.array([0, 1, 3]), "label": np.array([1, 1, 1]), "area_px": np.array([9] * 3)}
    table |= {"centroid_y_px": np.array([1.0] * 3), "centroid_x_px": np.array([2.0] * 3)}
    timed = with_frame_interval(with_pixel_size(table, (0.5, 0.5)), 0.1)
    assert list(timed)[:3] == ["t", "time_s", "label"]
    assert timed["time_s"].tolist() == [0.0, 0.1, 0.3]
    # sizes in µm added after the time keep it where it is
    assert list(with_pixel_size(timed, (0.5, 0.5))) == list(timed)
    assert summarize("movie", timed) == summarize("movie", table) | {"median_area_um2": 2.25}
    with pytest.raises(ValueError, match="no frame column"):
        with_frame_interval({"label": np.array([1])}, 0.1)
    with pytest.raises(ValueError, match="positive number of seconds"):
        with_frame_interval(table, 0)


@pytest.mark.parametrize("module", ["measure", "segmenter", "io", "box_tables", "export"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"napari_mutualseg.{module}")
    assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0


def test_channels_sharing_a_name_keep_a_column_each():
    # two channels named GFP: the second's columns replaced the first's
    labels = np.zeros((12, 12), np.int32)
    labels[2:6, 2:6] = 1
    image = np.stack([np.full((12, 12), v, np.float32) for v in (1.0, 2.0, 3.0)])
    table = measure_cells(labels, image, channel_names=["GFP", "GFP", "DAPI"])
    assert table["mean_intensity_GFP_0"][0] == 1.0 and table["mean_intensity_GFP_1"][0] == 2.0
    assert table["mean_intensity_DAPI"][0] == 3.0 and "mean_intensity_GFP" not in table


def _outlines_one_step_at_a_time(labels):
    """Each cell's outline the slow, plain way: its largest 4-connected piece (the first of
    those as large), walked one pixel edge at a time from its first pixel's top-left corner,
    turning right where two of its pixels touch only by a corner."""
    out = {}
    for k in np.unique(labels[labels > 0]).tolist():
        pieces, _ = ndi.label(labels == k)
        inside = np.pad(pieces == 1 + np.argmax(np.bincount(pieces.ravel())[1:]), 1)
        ways = {}
        for (dy, dx), (x0, y0), step in (
            ((-1, 0), (0, 0), (1, 0)),
            ((0, 1), (1, 0), (0, 1)),
            ((1, 0), (1, 1), (-1, 0)),
            ((0, -1), (0, 1), (0, -1)),
        ):
            for r, c in np.argwhere(inside & ~np.roll(inside, (-dy, -dx), (0, 1))).tolist():
                ways.setdefault((c + x0, r + y0), []).append(step)
        r, c = (int(i[0]) for i in np.nonzero(inside))
        here, step, corners = (c, r), (1, 0), [(c, r)]
        while (here := (here[0] + step[0], here[1] + step[1])) != corners[0]:
            right = (-step[1], step[0])
            turn = right if right in ways[here] else ways[here][0]
            if turn != step:
                corners.append(here)
            step = turn
        out[k] = np.array(corners, np.float64) - 1
    return out


@pytest.fixture
def awkward_cells():
    """Cells that touch, a ring around another cell, cells on the image's border and corners,
    cells in pieces (two as large), outlines that touch themselves, an id of another tool, and
    many small cells."""
    labels = np.zeros((40, 36), np.int64)
    labels[0:5, 0:7] = 1  # the top-left corner
    labels[0:5, 7:12] = 2  # touches 1
    labels[8:20, 8:20] = 3
    labels[11:17, 11:17] = 0  # a hole in 3 ...
    labels[13:15, 13:15] = 4  # ... with a cell in it
    labels[9, 9] = 0  # a hole touching the outside only by a corner
    labels[8, 8] = 0
    labels[0:6, 30:36] = 2**40 + 7  # the right border, an id of another tool
    labels[22:25, 0:3] = labels[25:28, 3:6] = 5  # two pieces as large, touching by a corner
    labels[22:24, 10:12] = 6
    labels[24:27, 12:15] = 6  # the second piece is the larger
    labels[22:25, 18:21] = 7
    labels[23, 19] = labels[24, 20] = 0  # 7 touches itself at a corner, around a notch
    rng = np.random.default_rng(1)
    labels[29:40, :] = rng.integers(0, 30, (11, 36)) + 100 * (rng.random((11, 36)) < 0.5)
    return labels


def test_outlines_are_those_walked_one_pixel_edge_at_a_time(awkward_cells):
    from roifile import ImagejRoi

    outlines = cell_outlines(awkward_cells)
    expected = _outlines_one_step_at_a_time(awkward_cells)
    assert list(outlines) == list(expected) and len(expected) > 40
    for k, outline in expected.items():
        assert type(k) is int and outlines[k].dtype == np.float64
        np.testing.assert_array_equal(outlines[k], outline, err_msg=f"cell {k}")
    ids = np.array(list(expected))
    table = {"label": ids, "big": ids * 3, "ratio": np.float32(1 / 3) * ids, "round": ids % 2 == 0}
    table["kind"] = np.where(ids > 100, "small", "large")
    collection = json.loads(qupath_geojson(awkward_cells, table))
    for i, (feature, outline) in enumerate(
        zip(collection["features"], expected.values(), strict=True)
    ):
        ring = feature["geometry"]["coordinates"][0]
        assert ring == [*outline.tolist(), outline[0].tolist()]
        assert all(type(x) is float for corner in ring for x in corner)
        assert feature["properties"]["measurements"] == {
            "big": float(ids[i] * 3),
            "ratio": float(table["ratio"][i]),
            "round": float(ids[i] % 2 == 0),
        }
        assert feature["properties"]["metadata"] == {"kind": str(table["kind"][i])}
    stack = np.stack([awkward_cells, awkward_cells[::-1, ::-1]])
    planes = [_outlines_one_step_at_a_time(plane) for plane in stack]
    with zipfile.ZipFile(io.BytesIO(fiji_roi_zip(stack, axes="ZYX"))) as archive:
        rois = [ImagejRoi.frombytes(archive.read(name)) for name in archive.namelist()]
    expected_rois = [(z, k, v) for z, plane in enumerate(planes) for k, v in plane.items()]
    assert len(rois) == len(expected_rois)
    for roi, (z, k, outline) in zip(rois, expected_rois, strict=True):
        assert roi.name == f"cell {k} z{z:03d}" and roi.position == z + 1
        np.testing.assert_array_equal(roi.coordinates(), outline)


def test_outlines_of_labels_of_any_number_type_and_size():
    labels = np.zeros((12, 12), np.int64)
    labels[2:6, 2:6], labels[7:11, 5:9] = 3, 5
    outlines = cell_outlines(labels)
    huge = cell_outlines(labels * 10**12)  # ids of another tool: no memory for every id
    assert sorted(huge) == [3 * 10**12, 5 * 10**12]
    np.testing.assert_array_equal(huge[5 * 10**12], outlines[5])
    as_float = cell_outlines(labels.astype(np.float32))  # whole numbers read as float
    assert all(np.array_equal(as_float[k], outlines[k]) for k in outlines)
    with pytest.raises(ValueError, match=r"a mask .* skimage\.measure\.label\(mask\)"):
        fiji_roi_zip(labels > 0)
    with pytest.raises(ValueError, match="hold fractions"):
        cell_outlines(labels + 0.5)
    with pytest.raises(ValueError, match="negative values"):
        qupath_geojson(-labels)


def test_table_csv_of_a_data_frame_is_that_of_its_columns():
    pd = pytest.importorskip("pandas")
    table = {"label": np.array([1, 2]), "area": np.array([4.0, 9.5])}
    assert table_csv(pd.DataFrame(table)) == table_csv(table) == "label,area\n1,4.0\n2,9.5\n"


def test_a_plane_measured_band_by_band_is_measured_as_regionprops_measures_it(monkeypatch):
    # ragged cells (lines, single pixels, holes) over bands of a few rows each
    from napari_mutualseg import measure

    monkeypatch.setattr(measure, "_BAND_PIXELS", 3 * 40)
    rng = np.random.default_rng(0)
    labels = ndi.label(rng.random((30, 40)) < 0.45)[0]
    counts = rng.integers(0, 60000, labels.shape).astype(np.uint16)
    image = np.stack([counts, rng.random(labels.shape)])
    table = measure_cells(labels, image)
    shape = ("eccentricity", "solidity", "intensity_mean", "intensity_max")
    expected = regionprops_table(
        labels, np.moveaxis(image, 0, -1), properties=("label", "area", "centroid", "bbox", *shape)
    )
    assert len(table["label"]) > 50 and (table["area_px"] == 1).any()
    pairs = {"label": "label", "area_px": "area", "eccentricity": "eccentricity"}
    pairs |= {"solidity": "solidity", "centroid_y_px": "centroid-0", "bbox_x1_px": "bbox-3"}
    pairs |= {"mean_intensity_0": "intensity_mean-0", "max_intensity_1": "intensity_max-1"}
    for column, prop in pairs.items():
        np.testing.assert_allclose(table[column], expected[prop], rtol=1e-12, err_msg=column)


def test_cells_with_ids_of_another_tool_are_measured_under_their_ids(cells):
    # ids far apart took memory per id up to the largest (MemoryError beyond about 10**9)
    labels, image = cells
    labels = labels.astype(np.int64)
    small = measure_cells(labels, image)
    huge = measure_cells(labels * 10**12, image)
    assert huge["label"].tolist() == [10**12, 2 * 10**12]
    assert all(np.array_equal(huge[k], small[k]) for k in small if k != "label")
    # no background: every pixel a cell's, the first id too
    full = measure_cells(np.where(labels > 0, labels, 3) * 10**12)
    assert full["label"].tolist() == [10**12, 2 * 10**12, 3 * 10**12]
    assert full["area_px"].sum() == labels.size
    volume = measure_cells(np.stack([labels, labels]) * 10**12)
    np.testing.assert_array_equal(volume["volume_px"], 2 * small["area_px"])


def test_labels_are_taken_or_refused_as_exports_take_them(cells):
    # whole numbers stored as floats (a Fiji label image) were refused; a negative id's cell
    # was left out of the table without a word
    labels, image = cells
    as_float = measure_cells(labels.astype(np.float32), image)
    np.testing.assert_array_equal(as_float["area_px"], measure_cells(labels, image)["area_px"])
    with pytest.raises(ValueError, match=r"skimage\.measure\.label\(mask\)"):
        measure_cells(labels > 0)
    with pytest.raises(ValueError, match="negative values"):
        measure_cells(np.where(labels == 2, -2, labels))
    with pytest.raises(ValueError, match="hold fractions"):
        measure_planes([(labels + 0.5, None)])
