"""The napari face: dock widget, supervision layer, live training, predict, save/load, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers import (
    TIMEOUT,
    WIDGET_NAME,
    disc_image,
    messages,
    rectangles,
    same,
    wait_idle,
)
from napari_mutualseg._napari.commands import boxes_to_supervision
from napari_mutualseg._napari.layers import OWNER_KEY
from napari_mutualseg._napari.widget import MutualSegWidget
from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.supervision import BOUNDARY, CELL, IGNORE, make_supervision

# -------------------------------------------------------------------------------- loading


def test_widget_loads_through_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    assert isinstance(widget, MutualSegWidget)
    assert widget.training.device.text().startswith("Device: ")
    assert not widget.model.predict.isEnabled()  # nothing trained yet
    # layer pickers follow the layer list, and a renamed layer stays picked (not only the
    # first of the list, which a lost pick falls back to)
    viewer.add_image(np.zeros((32, 32)), name="b")
    a = viewer.add_image(np.zeros((32, 32)), name="a")
    assert [name for name, _ in widget.data.image._layers()] == ["b", "a"]
    widget.image_layer = "a"
    a.name = "renamed"
    assert same(widget.image_layer, a) and same(widget.model.target.layer, a)
    assert widget.data.image.native.currentText() == "renamed"
    del viewer.layers["renamed"]
    assert all(name != "renamed" for name, _ in widget.data.image._layers())
    boxes = widget.new_boxes_layer()
    assert boxes.name == "boxes" and boxes.mode == "add_rectangle"
    assert same(widget.boxes_layer, boxes)


def test_settings_are_one_object_for_panel_and_scripts(viewer_widget):
    _viewer, widget = viewer_widget
    editor = widget.training.form.editors["rounds"]
    widget.settings.rounds = 7
    assert editor.value() == 7
    editor.setValue(4)
    assert widget.settings.rounds == 4 and widget.config().rounds == 4
    assert widget.training.form.editors["learning_rate"].decimals() >= 5
    with pytest.raises(ValueError, match="rounds must be a whole number between 1 and 1000"):
        widget.settings.rounds = 0
    for wrong in (2.5, "many", None):  # never rounded or converted into something else
        with pytest.raises(ValueError, match=f"rounds must be a whole number.*got {wrong!r}"):
            widget.settings.rounds = wrong
    with pytest.raises(ValueError, match="show_learning must be True or False, got 'no'"):
        widget.settings.show_learning = "no"
    with pytest.raises(AttributeError, match="no setting"):
        widget.settings.round = 3
    assert widget.settings.rounds == 4


def test_a_scripts_wrong_setting_is_refused_in_plain_words():
    from napari_mutualseg._napari.settings import TrainingSettings

    settings = TrainingSettings()
    with pytest.raises(ValueError, match=r"rounds must be a whole number.*got True"):
        settings.rounds = True  # not 1
    with pytest.raises(ValueError, match="seed must be a whole number between 0 and 2147483647"):
        settings.seed = -1
    with pytest.raises(ValueError, match=r"channels: .*by index .* or by name, got 1\.5"):
        settings.channels = 1.5
    with pytest.raises(ValueError, match=r"channels: .*got True"):  # not a channel named True
        settings.channels = [True]
    assert settings.rounds != 1 and settings.channels == ""
    with pytest.raises(ValueError, match="seed must be"):
        settings.update(rounds=7, seed=-1)
    assert settings.rounds != 7  # none of them, not the ones before the wrong one


def test_panel_fits_a_laptop_screen(viewer_widget):
    from qtpy.QtWidgets import QScrollArea

    _viewer, widget = viewer_widget
    # a 1366 x 768 screen leaves about 650 px for a dock; the content scrolls instead
    assert widget.minimumSizeHint().height() < 400
    # but not the status line: what runs, which round, what to do next stays in sight
    scroll = widget.findChild(QScrollArea)
    assert not scroll.isAncestorOf(widget.status)
    # nor sideways: the dock is as wide as the panels beside the scroll bar (it opened
    # narrower, the panels' right-hand buttons behind a sideways scroll bar)
    panels = scroll.widget().minimumSizeHint().width()
    bar = scroll.verticalScrollBar().sizeHint().width()
    assert widget.minimumSizeHint().width() >= panels + bar
    # and a long path in it does not widen the dock past the screen
    width = widget.minimumSizeHint().width()
    widget.controller.notify("Folder done; tables in /" + "a_long_folder_name" * 20 + ".")
    widget.status.parentWidget().layout().activate()  # as showing it would
    assert widget.minimumSizeHint().width() == width


def test_the_cells_panel_keeps_a_narrow_dock(viewer_widget):
    _viewer, widget = viewer_widget
    # its buttons do not widen a dock dragged narrow (four in a row held it at 420 px)
    assert widget.cells.minimumSizeHint().width() < 300


def test_a_long_layer_name_does_not_widen_the_panel(make_napari_viewer):
    def widths(name):
        viewer = make_napari_viewer()
        viewer.add_image(np.zeros((8, 8)), name=name)  # opened before the panel
        _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
        return [panel.minimumSizeHint().width() for panel in (widget.data, widget.model)]

    # its buttons stay in sight: the name is cut in the box
    assert widths("20231012_HeLa_DAPI_GFP_plate3_well_B07_field_012") == widths("nuclei")


def test_a_narrow_dock_shows_a_long_layer_name_without_sideways_scrolling(
    make_napari_viewer, qtbot
):
    from qtpy.QtCore import QEvent, QPoint
    from qtpy.QtGui import QHelpEvent
    from qtpy.QtWidgets import QApplication, QScrollArea, QToolTip

    viewer = make_napari_viewer()
    name = "2024-03-12_HeLa_H2B-GFP_plate3_wellB07_field04.tif"
    viewer.add_image(np.zeros((8, 8)), name=name)
    widget = MutualSegWidget(viewer)
    qtbot.addWidget(widget)
    # a laptop's dock: 430 px were the least, or the panels scrolled sideways
    widget.resize(330, 600)
    widget.show()
    qtbot.waitExposed(widget)
    assert widget.width() == 330
    assert widget.findChild(QScrollArea).horizontalScrollBar().maximum() == 0
    # the name is cut in its middle, its end (well, field) in sight; hovering shows it whole
    shown = widget.data.image.shown_name
    assert "…" in shown and name.startswith(shown[:4]) and name.endswith(shown[-4:])
    combo = widget.data.image.native
    at = QPoint(5, 5)
    QApplication.sendEvent(combo, QHelpEvent(QEvent.Type.ToolTip, at, combo.mapToGlobal(at)))
    assert QToolTip.text().startswith(f"{name}\n")
    widget.close_panel()


def test_panels_that_grow_widen_the_dock_without_a_sideways_scroll_bar(make_napari_viewer):
    from qtpy.QtWidgets import QApplication, QFormLayout, QScrollArea

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    QApplication.processEvents()
    # the dock opens wide enough for every field beside its name: napari sized it before its
    # font reached the panels, which opened with the Boxes and Region rows under their names
    for _ in range(5):
        QApplication.processEvents()
    form = widget.data.layout()
    label, field = QFormLayout.ItemRole.LabelRole, QFormLayout.ItemRole.FieldRole
    for row in range(form.rowCount()):
        name, control = form.itemAt(row, label), form.itemAt(row, field)
        if name is not None and control is not None:
            assert control.geometry().top() <= name.geometry().center().y()
    width, bar = widget.width(), widget.findChild(QScrollArea).horizontalScrollBar()
    # a button's text grows while a job runs (Next cell to check while it searches)
    widget.check.next.setText("Finding the cells where the networks disagree most…")
    ranges = []
    for _ in range(10):  # event-loop turns: the panels, the dock, the window laid out again
        QApplication.processEvents()
        ranges.append(bar.maximum())
    # the dock widened at once: a sideways bar showed until the window's next layout pass
    assert widget.width() > width
    assert ranges == [0] * 10


def test_every_setting_and_button_says_what_it_does(viewer_widget):
    from qtpy.QtWidgets import QLabel, QPushButton

    from napari_mutualseg._napari.settings import SETTINGS

    _viewer, widget = viewer_widget
    for setting in SETTINGS:
        editor = widget.training.form.editors[setting.name]
        assert editor.toolTip() == setting.tooltip
        if setting.kind is not bool:  # its name, beside it, says it too
            label = editor.parentWidget().layout().labelForField(editor)
            assert label.text() == setting.label and label.toolTip() == setting.tooltip
    panels = (widget.data, widget.training, widget.model, widget.check, widget.cells)
    buttons = [b for panel in panels for b in panel.findChildren(QPushButton)]
    assert len(buttons) >= 18
    assert [b.text() for b in buttons if not b.toolTip()] == []
    names = [name for panel in (widget.data, widget.model) for name in panel.findChildren(QLabel)]
    assert len(names) >= 7
    assert [name.text() for name in names if not name.toolTip()] == []


# -------------------------------------------------------------------------------- supervision


def test_generate_supervision_updates_in_place(scene):
    viewer, widget, image, boxes = scene
    layer = widget.generate_supervision()
    assert layer is not None and layer.name == "cells supervision"
    assert layer.metadata[OWNER_KEY]["role"] == "supervision"
    assert layer.data.shape == image.data.shape
    assert {0, CELL, BOUNDARY} <= set(np.unique(layer.data).tolist())
    n_layers = len(viewer.layers)
    boxes.add_rectangles(rectangles([[2, 2, 10, 10]]))
    again = widget.generate_supervision()
    assert same(again, layer) and len(viewer.layers) == n_layers
    assert again.data[6, 6] == CELL


def test_boxes_on_another_scale_map_through_world(scene):
    viewer, widget, image, _boxes = scene
    expected = widget.generate_supervision().data.copy()
    # the same image shown at twice the pixel size; boxes drawn on a scale-1 layer in world units
    big = viewer.add_image(image.data, name="big", scale=(2, 2))
    world_boxes = viewer.add_shapes(
        [r * 2 + 0.5 for r in rectangles(disc_image()[1])], shape_type="rectangle", name="world"
    )
    widget.image_layer, widget.boxes_layer = big, world_boxes
    layer = widget.generate_supervision()
    assert layer.name == "big supervision"
    np.testing.assert_array_equal(layer.scale, (2, 2))
    # rectangles in world units land on the same pixels (within the rounding of the ellipse edge)
    assert np.mean(layer.data == expected) > 0.98


def test_boxes_that_miss_the_image_give_advice(scene, notes):
    viewer, widget, _image, _boxes = scene
    far = viewer.add_shapes(rectangles([[500, 500, 520, 520]]), shape_type="rectangle", name="far")
    widget.boxes_layer = far
    assert widget.generate_supervision() is None
    assert any("scale" in m for m in messages(notes, "error"))


def test_user_layer_with_the_same_name_is_never_touched(scene):
    viewer, widget, image, _boxes = scene
    mine = np.full(image.data.shape, 7, np.int32)
    user = viewer.add_labels(mine.copy(), name="cells supervision")
    layer = widget.generate_supervision()
    assert not same(layer, user) and layer.name != "cells supervision"
    np.testing.assert_array_equal(user.data, mine)
    assert OWNER_KEY not in user.metadata


def test_boxes_opened_from_fiji_are_picked_and_the_users_layers_are_not(scene, tmp_path):
    import roifile

    viewer, widget, _image, boxes = scene
    viewer.add_shapes(name="notes")  # a layer the user adds leaves the pick as it is
    assert same(widget.boxes_layer, boxes)
    roi = roifile.ImagejRoi(version=228, name="cell", roitype=roifile.ROI_TYPE["RECT"])
    roi.left, roi.top, roi.right, roi.bottom = 2, 3, 9, 8
    roifile.roiwrite(tmp_path / "RoiSet.zip", [roi])
    [opened] = viewer.open(tmp_path / "RoiSet.zip", plugin="napari-mutualseg")
    assert same(widget.boxes_layer, opened)
    widget.boxes_layer = boxes
    viewer.add_shapes(opened.data, metadata=opened.metadata, name="copy")  # the user's
    assert same(widget.boxes_layer, boxes)


def test_region_mode_ignores_outside_the_region(scene):
    _viewer, widget, _image, _boxes = scene
    region = widget.new_region_layer()
    region.add_polygons([np.array([[0, 0], [0, 40], [40, 40], [40, 0]], float)])
    widget.region_layer = region
    layer = widget.generate_supervision()
    assert layer.data[60, 60] == IGNORE  # outside the region: unknown
    assert layer.data[2, 30] == 0  # inside the region, outside every box: background


def test_region_mode_needs_a_region_and_takes_a_closed_path(scene, notes):
    from napari_mutualseg._napari.panels import MODE_REGION

    _viewer, widget, _image, _boxes = scene
    widget.data.mode.value = MODE_REGION  # chosen before any region layer exists
    assert widget.generate_supervision() is None  # not "every cell is boxed" in silence
    assert widget.train() is None
    errors = messages(notes, "error")
    assert len(errors) == 2 and all("New region layer" in m for m in errors)
    region = widget.new_region_layer()
    assert widget.generate_supervision() is None  # nothing drawn on it yet
    said = messages(notes, "error")[-1]
    assert f"Annotation '{MODE_REGION}' needs a region" in said
    assert "set Annotation to 'Every cell is boxed'" in said
    region.add_paths([np.array([[0, 0], [0, 40], [40, 40], [40, 0], [1, 0]], float)])
    layer = widget.generate_supervision()  # outlined with the path tool, ends meeting
    assert layer.data[60, 60] == IGNORE and layer.data[2, 30] == 0
    region.data = []
    region.add_paths([np.array([[0, 0], [0, 40], [40, 40]], float)])  # open: no area
    assert widget.generate_supervision() is None
    assert "outlines an area" in messages(notes, "error")[-1]
    assert not any("None" in m for m in messages(notes))


def test_a_stack_plane_boxed_without_a_region_is_named_as_the_slider_does(viewer_widget, notes):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    widget.image_layer = viewer.add_image(
        np.stack([a, a]), name="stack", axis_labels=("z", "y", "x")
    )
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows, plane=0) + rectangles(rows, plane=1))
    region = widget.new_region_layer()
    region.add_polygons([np.array([[0, 0, 0], [0, 0, 40], [0, 40, 40], [0, 40, 0]], float)])
    sup = widget.generate_supervision()
    assert sup.data[0, 60, 60] == IGNORE and sup.data[1, 60, 60] == 0
    assert any("The boxes on z-plane 1 have no region" in m for m in messages(notes, "warning"))


def test_box_warnings_name_the_shapes_as_the_layer_counts_them(viewer_widget, notes):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    widget.image_layer = viewer.add_image(
        np.stack([a, a]), name="stack", axis_labels=("z", "y", "x")
    )
    boxes = widget.new_boxes_layer()
    # shape 0: a click on plane 1; 1-4: plane 0's cells; 5 on plane 1 around 6, 7 over the edge
    outer, inner, edge = [10, 10, 40, 40], [20, 20, 30, 30], [50, 50, 70, 70]
    boxes.add_rectangles(
        rectangles([[5, 5, 6, 6]], plane=1)
        + rectangles(rows, plane=0)
        + rectangles([outer, inner, edge], plane=1)
    )
    assert widget.generate_supervision() is not None
    said = " ".join(messages(notes, "warning"))
    assert "box 6 inside box 5" in said and "(box 7)" in said


def test_menu_command_without_the_dock_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    image, rows = disc_image()
    img = viewer.add_image(image, name="img")
    shp = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="my boxes")
    data, meta, kind = boxes_to_supervision(img, shp)
    assert kind == "labels" and meta["name"] == "img supervision"
    expected = make_supervision(image.shape, boxes_from_shapes(rectangles(rows))).classes
    np.testing.assert_array_equal(data, expected)
    # the same command as a menu widget (Layers > Segment)
    _, gui = viewer.window.add_plugin_dock_widget(
        "napari-mutualseg", "Boxes → ellipse supervision"
    )
    gui.image.value, gui.boxes.value = img, shp
    gui()
    assert viewer.layers["img supervision"].metadata[OWNER_KEY]["role"] == "supervision"


# -------------------------------------------------------------------------------- training


def test_train_stop_resume_predict_save_load(scene, qtbot, tmp_path, notes):
    viewer, widget, _image, _boxes = scene
    widget.settings.show_learning = True
    seen = []
    worker = widget.train()
    assert worker is not None
    worker.yielded.connect(lambda update: seen.append(update.report.round))

    # every round rewrites the prediction layers
    wait_idle(qtbot, widget)
    assert seen == [1, 2]  # one report per round
    # said where it is seen with the panel out of sight, not on its status line alone
    [said] = [m for m in messages(notes, "info") if m.startswith("Trained 2 round(s)")]
    # the losses fall on tiny networks, the cells of the boxes are not found: train on
    found = widget.history[-1]["found"]
    assert found < 0.5 and f"found the cells of only {found:.0%} of the boxes" in said
    assert widget.controller.applied_rounds[-1] == 2  # the newest round always lands
    for name in ("model A", "model B", "cells cells", "A learns from", "B learns from"):
        assert viewer.layers[name].metadata[OWNER_KEY], name
    last = widget.last_report
    np.testing.assert_array_equal(viewer.layers["model A"].data, last.classes_a[0])
    np.testing.assert_array_equal(viewer.layers["cells cells"].data, last.instances[0])
    assert widget.pair is not None and widget.model.predict.isEnabled()
    assert [h["round"] for h in widget.history] == [1, 2]
    assert len(widget.training.loss_plot.losses) == 2

    # resume: a longer run, stopped mid-way; the completed rounds' models are kept
    widget.settings.update(rounds=3, steps_per_round=5000)
    before = widget.pair
    widget.train()
    job = widget.controller.job
    qtbot.waitUntil(lambda: job.progress()[0] >= 2, timeout=TIMEOUT)
    # the device the running networks are on, once the worker has built them
    qtbot.waitUntil(
        lambda: widget.training.device.text().startswith("Device in use: cpu"), timeout=TIMEOUT
    )
    t0 = time.perf_counter()
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    assert time.perf_counter() - t0 < 5
    assert widget.pair is before  # no round completed: the previous models stay
    assert "Stopped" in widget.status.text()
    assert not messages(notes, "error")

    # predict on another layer
    other_image, _ = disc_image(centres=((32, 32), (12, 50)), seed=3)
    other = viewer.add_image(other_image, name="other")
    assert same(widget.model.target.layer, other)  # a new image is picked to segment
    widget.predict(block=True)
    result = viewer.layers["other cells"]
    # uint16, which napari draws as it is: int32 is recast for its texture on the main thread
    assert result.data.shape == other_image.shape and result.data.dtype == np.uint16
    assert result.metadata[OWNER_KEY]["role"] == "cells"

    # save, refuse to overwrite silently, load, predict again with the loaded pair
    path = tmp_path / "pair.pt"
    assert widget.save_model(path) == path and path.exists()
    assert widget.save_model(path) is None
    assert any("exist" in m for m in messages(notes, "error"))
    trained = widget.pair
    widget.reset_models()
    assert not widget.model.predict.isEnabled()
    assert widget.load_model(path) is not None
    assert widget.model.predict.isEnabled()
    assert "pair.pt (2 round(s) trained; it takes 1 channel)" in widget.status.text()
    proba = trained.predict_proba(other_image, tile_size=64)
    first = result.data.copy()
    widget.predict("other", block=True)
    assert same(viewer.layers["other cells"], result)
    np.testing.assert_array_equal(result.data, first)
    np.testing.assert_allclose(widget.pair.predict_proba(other_image, tile_size=64), proba)


def fake_report(k, shape=(64, 64), rounds=3):
    from napari_mutualseg.training import RoundReport

    classes = np.full(shape, k % 3, np.uint8)
    instances = np.full(shape, k, np.int32)
    return RoundReport(
        round=k,
        rounds=rounds,
        loss_a=1.0 / k,
        loss_b=1.5 / k,
        classes_a=[classes],
        classes_b=[classes],
        instances=[instances],
        labels_a=[classes],
        labels_b=[classes],
        disagreement=[np.zeros(shape, np.float16)],
        changed=0.1,
        seconds=0.01,
        device="cpu",
    )


def test_refreshes_are_coalesced(scene, monkeypatch):
    """Reports that arrive faster than the layers refresh: only the newest is drawn."""
    from napari_mutualseg import training

    viewer, widget, _image, _boxes = scene

    class Instant(training.MutualTrainer):
        def __iter__(self):
            yield from (fake_report(k) for k in (1, 2, 3))

    monkeypatch.setattr(training, "MutualTrainer", Instant)
    widget.train(block=True)
    assert [h["round"] for h in widget.history] == [1, 2, 3]
    assert widget.controller.applied_rounds[-1] == 3
    np.testing.assert_array_equal(viewer.layers["cells cells"].data, 3)
    # a burst with no event-loop turn in between (the worker's yielded signal, called as the
    # worker would): only the last one reaches the layers
    controller = widget.controller
    applied = len(controller.applied_rounds)
    for k in (4, 5, 6):
        controller.training.on_update(controller.job.update(fake_report(k, rounds=6)))
    widget.wait()
    assert controller.applied_rounds[applied:] == [6]
    np.testing.assert_array_equal(viewer.layers["cells cells"].data, 6)
    assert len(widget.training.loss_plot.losses) == 6  # the loss curve still gets every round


def test_stack_is_trained_plane_by_plane(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    widget.settings.update(rounds=1, steps_per_round=2)
    a, rows_a = disc_image()
    b, rows_b = disc_image(centres=((30, 30), (12, 12)), seed=1)
    stack = viewer.add_image(np.stack([a, b, a]), name="stack")
    widget.image_layer = stack
    boxes = widget.new_boxes_layer()
    assert boxes.ndim == 3
    boxes.add_rectangles(rectangles(rows_a, plane=0) + rectangles(rows_b, plane=1))
    beyond = viewer.add_shapes(rectangles(rows_a, plane=5), shape_type="rectangle", name="b5")
    widget.boxes_layer = beyond  # scripted past the last plane: said so, not "plane -1.0"
    assert widget.generate_supervision() is None
    said = "Shape 0 lies beyond the planes of the image, ZYX (3 z-planes)"
    assert any(said in m for m in messages(notes, "error")), messages(notes)
    widget.boxes_layer = boxes
    sup = widget.generate_supervision()
    assert sup.data.shape == stack.data.shape
    assert (sup.data[2] == IGNORE).all()  # no boxes on plane 2: not annotated
    assert (sup.data[0] == CELL).any() and (sup.data[1] == CELL).any()
    widget.train()
    wait_idle(qtbot, widget)
    model_a = viewer.layers["model A"]
    assert model_a.data.shape == stack.data.shape
    np.testing.assert_array_equal(model_a.data[1], widget.last_report.classes_a[1])
    assert (model_a.data[2] == IGNORE).all()


def test_closing_the_viewer_during_training_stops_the_worker(scene, qtbot):
    viewer, widget, _image, _boxes = scene
    widget.settings.update(rounds=5, steps_per_round=100_000)
    widget.train()
    job = widget.controller.job
    qtbot.waitUntil(lambda: job.progress()[0] >= 1, timeout=TIMEOUT)
    viewer.close()
    qtbot.waitUntil(job.done.is_set, timeout=15_000)


# -------------------------------------------------------------------------------- errors


def test_user_mistakes_are_notifications(viewer_widget, notes):
    viewer, widget = viewer_widget
    assert widget.train() is None  # no image at all
    assert widget.predict() is None  # nothing to segment
    img = viewer.add_image(disc_image()[0], name="img")
    widget.image_layer = img
    assert widget.predict() is None  # no model
    assert widget.generate_supervision() is None  # no boxes layer
    empty = widget.new_boxes_layer()
    assert widget.generate_supervision() is None  # no rectangles
    vol4 = viewer.add_image(np.zeros((2, 2, 16, 16), np.float32), name="4d")
    widget.image_layer = vol4
    assert widget.train() is None
    stack = viewer.add_image(np.zeros((3, 32, 32), np.float32), name="stack")
    flat = viewer.add_shapes(rectangles([[2, 2, 9, 9]]), shape_type="rectangle", name="flat")
    widget.image_layer, widget.boxes_layer = stack, flat
    # a 2D boxes layer on a stack cannot say which plane a box belongs to
    assert flat.ndim == 2
    assert widget.generate_supervision() is None
    # a box drawn across planes (3D view): the plugin trains on 2D planes only
    slanted = np.array([[0, 2, 2], [0, 2, 9], [2, 9, 9], [2, 9, 2]], float)
    across = viewer.add_shapes([slanted], shape_type="rectangle", name="across", ndim=3)
    widget.boxes_layer = across
    assert widget.generate_supervision() is None
    errors = messages(notes, "error")
    for expected in (
        "lie on one plane",
        "must know its plane",
        "No image layer",
        "No trained model",
        "No boxes layer",
        "no rectangles",
        "4 axes (2, 2, 16, 16) without names: set Axes",
    ):
        assert any(expected in m for m in errors), expected
    assert empty.name in viewer.layers and len(empty.data) == 0
    # the status line says the same as the latest notification
    assert widget.status.text() == errors[-1]


def test_painted_values_that_are_not_classes(scene, notes):
    _viewer, widget, _image, _boxes = scene
    sup = widget.generate_supervision()
    sup.data[0, 0] = 5
    assert widget.train() is None
    assert any("not classes" in m for m in messages(notes, "error"))


def test_load_errors_say_what_is_wrong_once(viewer_widget, tmp_path, notes):
    _viewer, widget = viewer_widget
    bad = tmp_path / "notes.pt"
    bad.write_text("not a model")
    assert widget.load_model(bad) is None
    (error,) = messages(notes, "error")
    assert error.count(str(bad)) == 1


@pytest.mark.parametrize("failure", ["nan", "oom"])
def test_training_failures_stop_cleanly_with_advice(scene, qtbot, monkeypatch, notes, failure):
    import torch

    from napari_mutualseg import training

    viewer, widget, image, _boxes = scene
    layers_before = {layer.name: layer for layer in viewer.layers}
    image_before = image.data.copy()

    class Failing(training.MutualTrainer):
        def __iter__(self):
            if failure == "nan":
                raise training.TrainingError("The loss of network A became NaN in round 1.")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    original = training.MutualTrainer
    monkeypatch.setattr(training, "MutualTrainer", Failing)
    assert widget.train() is not None
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    errors = messages(notes, "error")
    assert errors, "no notification"
    if failure == "nan":
        assert any("NaN" in m and "kept" in m for m in errors)
    else:
        assert any("Out of memory" in m and "cpu" in m for m in errors)
    assert widget.status.text() == errors[-1]  # not overwritten by a "Trained" line
    assert widget.training.train.isEnabled() and not widget.training.stop.isEnabled()
    for name, layer in layers_before.items():
        assert same(viewer.layers[name], layer)
    np.testing.assert_array_equal(image.data, image_before)
    # the viewer is still usable: training again works once the failure is gone
    monkeypatch.setattr(training, "MutualTrainer", original)
    widget.settings.rounds = 1
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.pair is not None
