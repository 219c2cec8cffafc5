"""The cells table in napari: measurements in layer.features, a row a click from its cell,
and the exports (panel buttons and File > Save)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import TIMEOUT, disc_image, messages, same
from napari_mutualseg._napari.cells import cell_table, export
from napari_mutualseg._napari.layers import camera


@pytest.fixture
def predicted(second_image):
    viewer, widget, image, _other = second_image
    return viewer, widget, image, viewer.layers["other cells"]


def test_results_carry_their_measurements(predicted):
    viewer, _widget, _image, cells = predicted
    labels = np.asarray(cells.data)
    n = len(np.unique(labels[labels > 0]))
    features = cells.features
    assert n and len(features) == n
    np.testing.assert_array_equal(features["index"], features["label"])
    first = int(features["label"][0])
    assert features["area_px"][0] == (labels == first).sum()
    assert features["mean_intensity_0"][0] > 0.5  # the discs are bright
    trained = viewer.layers["cells cells"].features  # the training result is measured too
    assert len(trained) and "area_px" in trained


def test_the_table_follows_the_active_layer_and_goes_to_a_cell(predicted):
    viewer, widget, _image, cells = predicted
    viewer.layers.selection.active = cells
    panel = widget.cells
    n = len(cells.features)
    assert panel.model.rowCount() == n and f"{n} cells" in panel.title.text()
    row = n - 1
    panel.view.clicked.emit(panel.model.index(row, 0))
    expected = (cells.features["centroid_y_px"][row], cells.features["centroid_x_px"][row])
    np.testing.assert_allclose(camera(viewer).center[-2:], expected)
    assert cells.selected_label == cells.features["label"][row]
    cells.name = "mine"
    assert panel.title.text() == f"'mine': {n} cells."
    viewer.layers.selection.active = viewer.layers["other"]  # an image: no table
    assert panel.model.rowCount() == 0


def test_exports_from_the_panel_and_from_file_save(predicted, tmp_path):
    from roifile import ImagejRoi

    _viewer, _widget, _image, cells = predicted
    table = cell_table(cells)
    n = len(table["label"])
    csv = export("table", tmp_path / "cells.csv", cells, table, overwrite=False)
    assert Path(csv).read_text().splitlines()[0].startswith("label,area_px")
    with pytest.raises(FileExistsError):  # never replaced unless asked
        export("table", tmp_path / "cells.csv", cells, table, overwrite=False)
    rois = export("fiji", tmp_path / "cells.zip", cells, table, overwrite=False)
    with zipfile.ZipFile(rois) as archive:
        assert len(archive.namelist()) == n
        ImagejRoi.frombytes(archive.read(archive.namelist()[0]))
    # File > Save Selected Layers with a .geojson name goes through the plugin's writer
    written = cells.save(str(tmp_path / "cells.geojson"), plugin="napari-mutualseg")
    features = json.loads(Path(written[0]).read_text())["features"]
    assert len(features) == n and features[0]["properties"]["measurements"]["area_px"] > 0
    # napari's Save dialog passes the name as typed, without the filter's suffix: the writer
    # adds it, and replaces no file of that name, which napari did not ask about
    from napari_mutualseg._napari.cells import write_fiji_rois

    data, meta = cells.data, {"name": cells.name}
    assert write_fiji_rois(str(tmp_path / "typed"), data, meta) == [str(tmp_path / "typed.zip")]
    before = (tmp_path / "typed.zip").read_bytes()
    assert write_fiji_rois(str(tmp_path / "typed"), data[:, ::-1], meta) == []
    assert (tmp_path / "typed.zip").read_bytes() == before


def test_a_folder_is_segmented_in_the_background_and_its_summary_opens(predicted, tmp_path, notes):
    import tifffile

    viewer, widget, _image, _cells = predicted
    folder = tmp_path / "plate"
    (folder / "B02").mkdir(parents=True)
    for name, seed in (("A01.tif", 1), ("B02/A01.tif", 2)):
        pixels = (disc_image(seed=seed)[0] * 1000).astype(np.uint16)
        # 0.5 µm pixels, written as Fiji writes them
        tifffile.imwrite(folder / name, pixels, imagej=True, resolution=(2.0, 2.0),
                         metadata={"unit": "um"})  # fmt: skip
    (folder / "broken.tif").write_bytes(b"II*\0 not a tiff")
    two = np.stack([disc_image(seed=3)[0]] * 2)  # two channels; the networks take one
    tifffile.imwrite(
        folder / "two.ome.tif", (two * 1000).astype(np.uint16), metadata={"axes": "CYX"}
    )
    out = tmp_path / "results"
    widget.segment_folder(folder, out, block=True)
    assert (out / "A01_cells.tif").exists() and (out / "B02" / "A01_cells.csv").exists()
    assert any("Folder done: 2 segmented, 2 failed" in m for m in messages(notes, "warning"))
    summary = widget.summary
    names = ["A01.tif", "B02/A01.tif", "broken.tif", "two.ome.tif"]
    assert [r.job.name for r in summary.results] == names
    assert [r.status for r in summary.results] == ["done", "done", "failed", "failed"]
    assert summary.model.rowCount() == 4
    reason = summary.model.data(summary.model.index(3, summary.model.columnCount() - 1))
    assert "2 channels" in reason and "Channels setting" in reason and "--" not in reason
    # a click opens the image with its cells and their table
    layer = summary.open(1)
    assert layer.name == "B02/A01.tif cells" and viewer.layers[-2].name == "B02/A01.tif"
    # in µm, as File > Open shows the image, so that it lines up with the images open
    assert tuple(viewer.layers[-2].scale) == tuple(layer.scale) == (0.5, 0.5)
    np.testing.assert_array_equal(layer.data, tifffile.imread(out / "B02" / "A01_cells.tif"))
    assert len(layer.features) == len(np.unique(layer.data)) - 1
    assert summary.open(2) is None  # the broken file: its reason, no layer
    assert any("broken.tif: failed" in m for m in messages(notes, "warning"))
    # run again: the finished images are kept
    widget.segment_folder(folder, out, block=True)
    assert [r.status for r in widget.summary.results] == ["skipped", "skipped", "failed", "failed"]


def _frames():
    first, _ = disc_image()
    second, _ = disc_image(centres=((16, 44), (44, 16), (44, 46)), seed=5)
    return np.stack([first, second])


def test_measure_follows_the_images_axes(thresholded, notes):
    viewer, widget = thresholded
    panel = widget.cells
    movie = viewer.add_image(_frames(), name="movie", axis_labels=("t", "y", "x"))
    widget.predict(movie, block=True)
    cells = viewer.layers["movie cells"]
    predicted = {k: np.asarray(v) for k, v in cells.features.items()}
    assert "t" in predicted and set(predicted["t"]) == {0, 1}
    viewer.layers.selection.active = cells
    panel.measure.click()  # frame by frame again, not one 3D image with time as z
    assert list(cells.features.columns) == list(predicted)
    for column, values in predicted.items():
        np.testing.assert_allclose(np.asarray(cells.features[column], float), values)
    # a time series of z-stacks: 3D cells per time point
    stacks = np.stack([np.stack([frame] * 3) for frame in _frames()])
    tz = viewer.add_image(stacks, name="tz", axis_labels=("t", "z", "y", "x"))
    widget.predict(tz, block=True)
    viewer.layers.selection.active = viewer.layers["tz cells"]
    viewer.layers["tz cells"].features = {}
    panel.measure.click()
    table = viewer.layers["tz cells"].features
    assert {"t", "centroid_z_px", "volume_px"} <= set(table.columns) and len(table)
    # RGB: every colour
    rgb = (np.repeat(_frames()[0][..., None], 3, axis=-1).clip(0, 1) * 255).astype(np.uint8)
    photo = viewer.add_image(rgb, name="photo", rgb=True)
    widget.predict(photo, block=True)
    viewer.layers.selection.active = viewer.layers["photo cells"]
    viewer.layers["photo cells"].features = {}
    panel.measure.click()
    assert "mean_intensity_R" in viewer.layers["photo cells"].features
    assert not messages(notes, "error")


def test_measure_gives_physical_units_where_the_pixel_size_is_known(thresholded, notes):
    from skimage.measure import regionprops_table

    viewer, widget = thresholded
    panel = widget.cells
    stack = np.stack([_frames()[0]] * 3)
    spacing = (2.0, 0.5, 0.25)  # z steps coarser than the pixels
    image = viewer.add_image(
        stack, name="stack", axis_labels=("z", "y", "x"), scale=spacing, units=("µm",) * 3
    )
    widget.predict(image, block=True)
    cells = viewer.layers["stack cells"]
    predicted = cells.features.copy()  # the prediction's own table is in µm already
    viewer.layers.selection.active = cells
    panel.measure.click()
    table = cells.features
    expected = regionprops_table(
        np.asarray(cells.data), stack, properties=("label", "area", "centroid"), spacing=spacing
    )
    np.testing.assert_array_equal(table["label"], expected["label"])
    np.testing.assert_allclose(table["volume_um3"], expected["area"])  # µm³
    np.testing.assert_allclose(predicted["volume_um3"], expected["area"])
    for i, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}_um"], expected[f"centroid-{i}"])
    # units of another size are converted to the unit of x
    image.units = ("nm", "µm", "µm")
    image.scale = (2000.0, 0.5, 0.25)
    panel.measure.click()
    np.testing.assert_allclose(cells.features["volume_um3"], expected["area"])
    # a time series: areas per cell and frame
    movie = viewer.add_image(
        _frames(), name="movie", axis_labels=("t", "y", "x"), scale=(1.0, 0.5, 0.5),
        units=("s", "µm", "µm"),
    )  # fmt: skip
    widget.predict(movie, block=True)
    viewer.layers.selection.active = viewer.layers["movie cells"]
    panel.measure.click()
    table = viewer.layers["movie cells"].features
    assert "t" in table and set(table["t"]) == {0, 1}
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.25)
    # a reader's pixel size without a z step: no volume in µm³ is made up
    opened = viewer.add_image(
        stack, name="opened", axis_labels=("z", "y", "x"), scale=(1.0, 0.5, 0.5),
        metadata={"pixel_size": {"Y": 0.5, "X": 0.5}, "unit": "micrometer"},
    )  # fmt: skip
    widget.predict(opened, block=True)
    viewer.layers.selection.active = viewer.layers["opened cells"]
    panel.measure.click()
    columns = set(viewer.layers["opened cells"].features.columns)
    assert "volume_px" in columns and not any(c.endswith("_um") for c in columns)
    assert not messages(notes, "error")


def test_tables_and_exports_follow_the_edited_cells(thresholded, qtbot, tmp_path):
    viewer, widget = thresholded
    panel = widget.cells
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    # the new cells are selected, their table shown (not the hidden disagreement added after)
    assert same(viewer.layers.selection.active, cells)
    assert panel.model.rowCount() == len(cells.features) > 0
    first = int(cells.features["label"][0])
    edited = np.asarray(cells.data).copy()
    edited[edited == first] = 0  # a wrong cell erased
    edited[28:34, 2:8] = 99  # a missed cell painted
    viewer.layers.selection.active = image  # while the panel shows another layer
    cells.data = edited
    expected = sorted(int(i) for i in np.unique(edited) if i)
    # File > Save Selected Layers: the cells as they are now, not the table of the prediction
    written = cells.save(str(tmp_path / "cells.csv"), plugin="napari-mutualseg")
    rows = Path(written[0]).read_text().splitlines()[1:]
    assert sorted(int(r.split(",")[0]) for r in rows) == expected
    written = cells.save(str(tmp_path / "cells.geojson"), plugin="napari-mutualseg")
    found = json.loads(Path(written[0]).read_text())["features"]
    painted = [f for f in found if f["id"] == "cell-99"]
    assert painted and painted[0]["properties"]["measurements"]["area_px"] == 36
    # the panel measures a changed layer when it shows it
    viewer.layers.selection.active = cells
    assert sorted(panel.model.table["label"].tolist()) == expected
    assert f"{len(expected)} cells." in panel.title.text()
    assert "mean_intensity_0" in panel.model.table  # in the image's intensities
    # and after each edit, painting included (a cell grows: the same cells, another size)
    before = int(cells.features["area_px"][cells.features["label"] == 99].iloc[0])
    cells.paint((27, 4), 99)
    qtbot.waitUntil(
        lambda: int(cells.features["area_px"][cells.features["label"] == 99].iloc[0]) > before,
        timeout=5000,
    )


def test_file_save_measures_edited_cells_in_their_image_in_any_viewer(
    thresholded, make_napari_viewer, tmp_path
):
    """An npe2 writer is given no viewer: the image is found in the viewer holding it, not
    the current one; without it, a time series' cells are still measured frame by frame."""
    viewer, widget = thresholded
    movie = viewer.add_image(
        _frames(), name="movie", axis_labels=("t", "y", "x"), scale=(1.0, 0.5, 0.5),
        units=("s", "µm", "µm"),
    )  # fmt: skip
    widget.predict(movie, block=True)
    cells = viewer.layers["movie cells"]
    viewer.layers.selection.active = movie  # the panel leaves the cells' table as it was
    make_napari_viewer()  # another viewer, the current one now

    def saved_columns(name, value):
        edited = np.asarray(cells.data).copy()
        edited[1, 28:34, 2:8] = value  # a missed cell painted: the table is out of date
        cells.data = edited
        written = cells.save(str(tmp_path / name), plugin="napari-mutualseg")
        return Path(written[0]).read_text().splitlines()[0].split(",")

    columns = saved_columns("in_image.csv", 99)
    assert columns[:2] == ["t", "label"] and {"area_um2", "mean_intensity_0"} <= set(columns)
    viewer.layers.remove(movie)
    columns = saved_columns("alone.csv", 98)
    assert columns[:2] == ["t", "label"] and "area_um2" in columns


def test_a_row_goes_to_its_cells_frame_and_plane(thresholded):
    viewer, widget = thresholded
    panel = widget.cells
    stacks = np.stack([np.stack([frame] * 3) for frame in _frames()])
    tz = viewer.add_image(stacks, name="tz", axis_labels=("t", "z", "y", "x"))
    widget.predict(tz, block=True)
    cells = viewer.layers["tz cells"]
    viewer.layers.selection.active = cells
    table = panel.model.table
    row = int(np.flatnonzero(table["t"] == 1)[0])  # a cell of the second frame
    viewer.dims.set_point(0, 0)
    viewer.dims.set_point(1, 0)
    panel.view.clicked.emit(panel.model.index(row, 0))
    assert viewer.dims.point[0] == 1  # its frame
    assert viewer.dims.point[1] == pytest.approx(table["centroid_z_px"][row])  # its plane
    expected = (table["centroid_y_px"][row], table["centroid_x_px"][row])
    np.testing.assert_allclose(camera(viewer).center[-2:], expected)
    assert cells.selected_label == table["label"][row]
    # in a 3D view the camera turns about the cell, not the middle of the volume's depth
    first = _frames()[0]
    stack = viewer.add_image(np.stack([first, first, first * 0]), name="st", axis_labels="zyx")
    widget.predict(stack, block=True)
    viewer.layers.selection.active = viewer.layers["st cells"]
    viewer.dims.ndisplay = 3
    panel.view.clicked.emit(panel.model.index(0, 0))
    table = panel.model.table
    expected = [table[f"centroid_{a}_px"][0] for a in "zyx"]
    np.testing.assert_allclose(camera(viewer).center, expected)
    assert expected[0] == 0.5


def test_cells_of_a_time_series_are_tracked_when_asked(thresholded):
    viewer, widget = thresholded
    first = _frames()[0]
    movie = viewer.add_image(np.stack([first, first]), name="movie", axis_labels=("t", "y", "x"))
    widget.predict(movie, block=True)
    cells = np.asarray(viewer.layers["movie cells"].data)
    assert not set(np.unique(cells[0])[1:]) & set(np.unique(cells[1])[1:])  # apart by default
    widget.settings.track = True
    widget.predict(movie, block=True)
    cells = np.asarray(viewer.layers["movie cells"].data)
    np.testing.assert_array_equal(cells[0], cells[1])  # the same cells keep their labels
    assert set(viewer.layers["movie cells"].features["t"]) == {0, 1}


def test_a_stacks_cells_go_to_fiji_with_their_planes(thresholded, tmp_path):
    from roifile import roiread

    viewer, widget = thresholded
    stack = np.stack([_frames()[0]] * 3)
    image = viewer.add_image(stack, name="stack", axis_labels=("z", "y", "x"))
    widget.predict(image, block=True)
    cells = viewer.layers["stack cells"]
    path = export("fiji", tmp_path / "stack.zip", cells, cells.features, overwrite=False,
                  image=image)  # fmt: skip
    rois = roiread(path)
    # a plain z-stack's ROIs: their stack position only (a z was drawn on every slice)
    assert sorted({(roi.position, roi.z_position) for roi in rois}) == [(1, 0), (2, 0), (3, 0)]
    assert len(rois) == 3 * len(np.unique(np.asarray(cells.data)[0])[1:])
    # the same cells of the stack with its channels: a hyperstack's, on every channel (a stack
    # position counts channels there)
    channels = viewer.add_image(np.stack([stack, stack]), axis_labels=("c", "z", "y", "x"))
    export("fiji", path, cells, cells.features, overwrite=True, image=channels)
    rois = roiread(path)
    assert sorted({(r.position, r.c_position, r.z_position) for r in rois}) == [
        (0, 0, 1),
        (0, 0, 2),
        (0, 0, 3),
    ]


def test_a_save_that_cannot_be_done_says_why(viewer_widget, tmp_path, notes):
    viewer, _widget = viewer_widget
    stack = np.zeros((2, 32, 32), np.int32)
    stack[:, 5:9, 5:9] = 1
    layer = viewer.add_labels(stack, name="stack cells")
    viewer.layers.selection = {layer}
    for name in ("rois.zip", "cells.geojson"):
        with pytest.warns(UserWarning):  # napari's own: the plugin wrote nothing
            assert viewer.layers.save(str(tmp_path / name), selected=True) == []
        assert not (tmp_path / name).exists()
    errors = messages(notes, "error")
    assert len(errors) == 2
    for error in errors:
        assert "'stack cells' is 3D" in error and "export the table" in error
    # the table of a stack is written
    assert viewer.layers.save(str(tmp_path / "cells.csv"), selected=True)


def test_the_panel_writes_an_export_in_a_worker(
    viewer_widget, tmp_path, notes, qtbot, monkeypatch
):
    """The outlines of tens of thousands of cells take seconds to write: the viewer stays
    usable meanwhile, and is told once the file is there."""
    import threading

    from qtpy.QtWidgets import QFileDialog

    from napari_mutualseg._napari import cells as cells_module

    viewer, widget = viewer_widget
    labels = np.zeros((32, 32), np.int32)
    labels[4:10, 4:10], labels[20:28, 15:25] = 1, 2
    # named as a folder run names its layers: by the image's path below the plate
    viewer.layers.selection.active = viewer.add_labels(labels, name="a/x.tif cells")
    threads, real = [], cells_module.fiji_roi_zip

    def roi_zip(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(cells_module, "fiji_roi_zip", roi_zip)
    path = tmp_path / "rois.zip"
    suggested = []
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", lambda *a: suggested.append(a[2]) or (str(path), "")
    )
    widget.cells.buttons["fiji"].click()
    assert suggested == ["a_x.tif cells.zip"]  # a file name, not a folder's
    qtbot.waitUntil(lambda: f"Wrote {path}" in messages(notes, "info"), timeout=TIMEOUT)
    assert threads and threads[0] is not threading.main_thread()
    with zipfile.ZipFile(path) as archive:
        assert len(archive.namelist()) == 2
    # a write that fails in the worker is told (it was lost: superqt raised it there)
    monkeypatch.setattr(cells_module, "fiji_roi_zip", lambda *a, **k: 1 / 0)
    widget.cells.buttons["fiji"].click()
    qtbot.waitUntil(
        lambda: any("Could not export: division" in m for m in messages(notes, "error")),
        timeout=TIMEOUT,
    )


def test_a_layer_without_cells_is_not_exported_and_says_so(
    viewer_widget, tmp_path, notes, monkeypatch
):
    """Every format alike: an empty table, ROI set or GeoJSON is refused, from the panel and
    from File > Save, with the reason."""
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = viewer_widget
    layer = viewer.add_labels(np.zeros((32, 32), np.int32), name="x cells")
    viewer.layers.selection.active = layer
    for kind, name in (("table", "c.csv"), ("fiji", "r.zip"), ("qupath", "g.geojson")):
        path = str(tmp_path / f"panel_{name}")
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, p=path: (p, ""))
        widget.cells.buttons[kind].click()
        with pytest.warns(UserWarning):  # napari's own: the plugin wrote nothing
            assert layer.save(str(tmp_path / name), plugin="napari-mutualseg") == []
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".csv", ".zip", ".geojson")]
    errors = messages(notes, "error")
    assert len(errors) == 6
    for error in errors:
        assert "'x cells' has no cells" in error and "nothing to export" in error


def test_results_of_other_options_in_the_folder_are_replaced_only_when_the_user_agrees(
    thresholded, tmp_path, notes, qtbot, monkeypatch
):
    """The panel asks (Replace / Cancel) instead of giving command-line advice; a script is
    told to pass overwrite=True."""
    import json

    import tifffile
    from qtpy.QtWidgets import QMessageBox

    _viewer, widget = thresholded
    folder, out = tmp_path / "plate", tmp_path / "results"
    folder.mkdir()
    for k in range(2):
        tifffile.imwrite(folder / f"f{k}.tif", disc_image(seed=k)[0])
    widget.segment_folder(folder, out, block=True)
    record = out / "f0_cells.json"
    assert json.loads(record.read_text())["options"]["tile_size"] == 64
    widget.settings.tile_size = 48  # other options: the results there are not this run's
    asked = []

    def answer(reply):
        def exec_(box):
            asked.append(box.text())
            return reply

        monkeypatch.setattr(QMessageBox, "exec", exec_)

    answer(QMessageBox.StandardButton.Cancel)
    widget.model.folder_requested.emit(str(folder), str(out))  # the panel's dialogs' answer
    qtbot.waitUntil(lambda: len(asked) == 1 and not widget.is_busy, timeout=TIMEOUT)
    assert "made with other options (tile size 64 -> 48)" in asked[0]
    assert "--" not in asked[0] and "overwrite=True" not in asked[0]
    assert json.loads(record.read_text())["options"]["tile_size"] == 64  # kept
    warning = messages(notes, "warning")[-1]
    assert "nothing was segmented and those results are kept" in warning
    assert "choose another output folder" in warning and not messages(notes, "error")
    answer(QMessageBox.StandardButton.Yes)
    widget.model.folder_requested.emit(str(folder), str(out))
    qtbot.waitUntil(
        lambda: len(asked) == 2 and "Folder done" in widget.status.text(), timeout=TIMEOUT
    )
    widget.wait()
    assert json.loads(record.read_text())["options"]["tile_size"] == 48  # replaced
    assert [r.status for r in widget.summary.results] == ["done", "done"]
    # a script is not asked: told how to replace them in Python
    widget.settings.tile_size = 64
    widget.segment_folder(folder, out, block=True)
    assert len(asked) == 2
    [error] = messages(notes, "error")
    assert "made with other options" in error and "pass overwrite=True" in error
    widget.segment_folder(folder, out, overwrite=True, block=True)
    assert json.loads(record.read_text())["options"]["tile_size"] == 64
    # an image's result that another program wrote meanwhile fails that image alone; its
    # reason in the summary says what to do in the panel
    from napari_mutualseg._napari.workers import in_panel_words
    from napari_mutualseg.files import ResultExistsError
    from napari_mutualseg.image_task import error_reason

    reason = in_panel_words(error_reason(ResultExistsError(f"{out}/f0_cells.tif already exists")))
    assert "segment the folder again and answer Replace" in reason and "overwrite" not in reason


def test_a_folder_segmented_again_replaces_its_summary(thresholded, tmp_path, qtbot):
    """One summary per results folder, the newest: earlier ones do not pile up beside it."""
    import tifffile
    from qtpy.QtWidgets import QDockWidget

    viewer, widget = thresholded
    folder, out = tmp_path / "plate", tmp_path / "results"
    folder.mkdir()
    tifffile.imwrite(folder / "f0.tif", disc_image()[0])

    def summaries():
        docks = viewer.window._qt_window.findChildren(QDockWidget)
        return [d for d in docks if d.windowTitle() == "Summary of results"]

    # a removed dock is deleted on the next pass of the event loop (napari's deleteLater)
    for _ in range(3):
        widget.segment_folder(folder, out, block=True)
    qtbot.waitUntil(lambda: len(summaries()) <= 1)
    assert len(summaries()) == 1
    assert [r.status for r in widget.summary.results] == ["skipped"]  # the newest run's
    viewer.window.remove_dock_widget(summaries()[0])  # closed by the user
    widget.segment_folder(folder, out, block=True)
    qtbot.waitUntil(lambda: len(summaries()) <= 1)
    assert len(summaries()) == 1


def test_a_folder_of_images_without_axes_asks_for_them(thresholded, tmp_path, qtbot, monkeypatch):
    """Files that do not say their axes: the panel asks (the reason's advice is --axes, which
    the panel has not) and segments them again with the axes typed; scripts pass axes=."""
    import tifffile
    from qtpy.QtWidgets import QInputDialog

    viewer, widget = thresholded
    folder, out = tmp_path / "plate", tmp_path / "results"
    folder.mkdir()
    for k in range(2):  # z-stacks, saved without axes
        stack = np.stack([disc_image(seed=k)[0]] * 3)
        tifffile.imwrite(folder / f"f{k}.tif", stack, photometric="minisblack")
    asked = []

    def get_text(parent, title, label):
        asked.append(label)
        return "zyx", True

    monkeypatch.setattr(QInputDialog, "getText", get_text)
    widget.model.folder_requested.emit(str(folder), str(out))
    qtbot.waitUntil(lambda: "Folder done: 2 segmented" in widget.status.text(), timeout=TIMEOUT)
    widget.wait()
    [question] = asked
    assert "f0.tif holds an array of shape (3, 64, 64)" in question and "--" not in question
    assert tifffile.imread(out / "f0_cells.tif").shape == (3, 64, 64)
    assert [r.status for r in widget.summary.results] == ["done", "done"]
    # a script gives them
    widget.segment_folder(folder, tmp_path / "again", axes="ZYX", block=True)
    assert (tmp_path / "again" / "f1_cells.csv").exists() and len(asked) == 1
    # a click on a row opens the image with the axes the run was given
    layer = widget.summary.open(0)
    assert layer is not None and layer.data.shape == (3, 64, 64)
    assert tuple(viewer.layers["f0.tif"].axis_labels) == ("z", "y", "x")


def test_a_stopped_folder_of_images_without_axes_asks_nothing(thresholded, tmp_path, monkeypatch):
    import tifffile
    from qtpy.QtWidgets import QInputDialog

    _viewer, widget = thresholded
    folder = tmp_path / "plate"
    folder.mkdir()
    for k in range(3):
        stack = np.stack([disc_image(seed=k)[0]] * 3)
        tifffile.imwrite(folder / f"f{k}.tif", stack, photometric="minisblack")
    asked = []
    monkeypatch.setattr(QInputDialog, "getText", lambda *a: asked.append(a) or ("ZYX", True))
    widget.model.folder_requested.emit(str(folder), str(tmp_path / "results"))
    widget.stop()
    widget.wait()
    assert "Folder stopped" in widget.status.text() and asked == []
