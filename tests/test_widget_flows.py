"""The widget as a biologist meets it: edits kept, closing stops training, a cheap viewer."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from helpers import TIMEOUT, WIDGET_NAME, disc_image, messages, rectangles, same, wait_idle
from napari_mutualseg._napari.layers import OWNER_KEY
from napari_mutualseg._napari.loss_plot import LossPlot
from napari_mutualseg.supervision import BACKGROUND, CELL


def open_widget(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.settings.update(
        rounds=1, steps_per_round=3, width=4, depth=2, patch_size=32, batch_size=2,
        tile_size=64, device="cpu",
    )  # fmt: skip
    return dock, widget


def menu_supervision(viewer, image, boxes):
    """Run the Boxes → ellipse supervision command on ``image`` and ``boxes``; its form."""
    _, gui = viewer.window.add_plugin_dock_widget(
        "napari-mutualseg", "Boxes → ellipse supervision"
    )
    gui.image.value, gui.boxes.value = image, boxes
    gui()
    return gui


def close_panel(viewer, dock):
    # what the dock's close button does
    viewer.window.remove_dock_widget(dock)


def test_painted_edits_survive_the_menu_command_renames_and_reopening(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, rows = disc_image()
    img = viewer.add_image(image, name="img")
    shapes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="boxes")
    menu_supervision(viewer, img, shapes)
    sup = viewer.layers["img supervision"]
    painted = sup.data.copy()
    assert (painted[:4, :4] == BACKGROUND).all()
    painted[:4, :4] = CELL  # a cell the boxes missed, painted by hand
    sup.data = painted
    img.name = "renamed"
    shapes.add_rectangles(rectangles([[30, 2, 40, 12]]))  # one more box after painting

    dock, widget = open_widget(viewer)
    widget.image_layer, widget.boxes_layer = img, shapes
    said = []
    widget.controller.message.connect(said.append)
    widget.train(block=True)
    assert same(widget.controller.trained_image, img)
    assert [layer.name for layer in viewer.layers].count("img supervision") == 1
    assert (sup.data[:4, :4] == CELL).all()  # the paint is kept
    assert sup.data[35, 7] == CELL  # and the new box is in
    assert any("keeping the 16 pixels you painted" in m for m in said)
    assert any("with the 16 pixels you painted" in m for m in said)
    assert (widget.last_report.labels_a[0][:4, :4] == CELL).all()  # trusted while training

    close_panel(viewer, dock)
    _, again = open_widget(viewer)
    again.image_layer, again.boxes_layer = img, shapes
    again.train(block=True)
    assert (sup.data[:4, :4] == CELL).all()
    assert (again.last_report.labels_b[0][:4, :4] == CELL).all()


def test_paint_saved_yesterday_is_reused_and_new_boxes_keep_their_ellipse(
    make_napari_viewer, tmp_path, notes
):
    viewer = make_napari_viewer()
    image, rows = disc_image()
    img = viewer.add_image(image, name="img")
    shapes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="boxes")
    dock, widget = open_widget(viewer)
    widget.image_layer, widget.boxes_layer = img, shapes
    sup = widget.generate_supervision()
    painted = sup.data.copy()
    painted[:4, :4] = CELL  # a cell the boxes missed, painted by hand
    sup.data = painted
    sup.save(str(tmp_path / "img supervision.tif"))  # napari's own writer: no plugin tag
    close_panel(viewer, dock)
    viewer.layers.clear()

    # the next day: the image, the boxes, one box more, and the saved supervision
    img = viewer.add_image(image, name="img")
    shapes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="boxes")
    shapes.add_rectangles(rectangles([[30, 2, 40, 12]]))
    [saved] = viewer.open(str(tmp_path / "img supervision.tif"), plugin="napari")
    before = saved.data.copy()
    _, widget = open_widget(viewer)
    widget.image_layer, widget.boxes_layer = img, shapes
    assert widget.earlier_supervision is None  # never taken unasked
    widget.earlier_supervision = saved
    said = []
    widget.controller.message.connect(said.append)
    layer = widget.generate_supervision()
    assert layer is not saved and np.array_equal(saved.data, before)  # the user's, untouched
    assert (layer.data[:4, :4] == CELL).all()  # the paint is reused
    assert layer.data[35, 7] == CELL  # the box drawn since gets its ellipse
    assert any("keeping the 16 pixels you painted" in m for m in said)
    assert any("1 box(es) have no cell in 'img supervision'" in m for m in messages(notes))
    assert widget.earlier_supervision is None  # taken once
    widget.train(block=True)
    assert (widget.last_report.labels_a[0][:4, :4] == CELL).all()


def test_the_menu_command_keeps_paint_that_no_longer_fits_the_image(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    a, rows = disc_image()
    img = viewer.add_image(np.stack([a, a]), name="two")  # unnamed: taken as a z-stack
    boxes = viewer.add_shapes(rectangles(rows, plane=0), shape_type="rectangle", ndim=3)
    gui = menu_supervision(viewer, img, boxes)
    sup = viewer.layers["two supervision"]
    painted = sup.data.copy()
    painted[0, :4, :4] = CELL
    sup.data = painted
    img.axis_labels = ("c", "y", "x")  # its first axis was channels after all
    gui.boxes.value = viewer.add_shapes(rectangles(rows), shape_type="rectangle")
    gui()
    np.testing.assert_array_equal(sup.data, painted)  # the paint is the user's, untouched
    assert OWNER_KEY not in sup.metadata
    new = viewer.layers["two supervision [2]"]
    assert new.data.shape == a.shape and new.metadata[OWNER_KEY]["role"] == "supervision"
    assert any("no longer fits" in m for m in messages(notes, "warning"))


def test_closing_the_panel_stops_training_and_the_pair_stays(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, rows = disc_image()
    img = viewer.add_image(image, name="img")
    dock, widget = open_widget(viewer)
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows))
    widget.image_layer = img
    widget.train(block=True)
    trained = widget.pair
    widget.settings.update(rounds=5, steps_per_round=100_000)
    widget.train()
    job = widget.controller.job
    qtbot.waitUntil(lambda: job.progress()[0] >= 1, timeout=TIMEOUT)
    close_panel(viewer, dock)
    qtbot.waitUntil(job.done.is_set, timeout=15_000)
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    assert widget.pair is trained  # the interrupted round is not kept, the last whole one is

    _, reopened = open_widget(viewer)
    assert reopened.pair is trained and not reopened.is_training
    assert reopened.model.predict.isEnabled()
    assert len(reopened.training.loss_plot.losses) == 1
    assert "Stopped" in reopened.status.text()


def test_train_after_stop_trains_the_remaining_rounds(scene, qtbot):
    _viewer, widget, _image, _boxes = scene
    widget.settings.update(rounds=3, steps_per_round=20)
    stop_after_first = widget.controller.round_done.connect(lambda _: widget.stop())
    widget.train(block=True)
    widget.controller.round_done.disconnect(stop_after_first)
    assert [h["round"] for h in widget.history] == [1]
    assert "1 of 3 rounds" in widget.status.text() and widget.last_error is None
    widget.train(block=True)
    assert [h["round"] for h in widget.history] == [1, 2, 3]
    # a finished training goes on for the rounds set
    widget.settings.rounds = 1
    widget.train(block=True)
    assert [h["round"] for h in widget.history] == [1, 2, 3, 4]


def test_ctrl_c_while_a_script_waits_stops_training_and_reaches_the_script(scene):
    _viewer, widget, _image, _boxes = scene
    widget.settings.update(rounds=3, steps_per_round=20)
    interrupt = widget.controller.round_done.connect(lambda _: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt, match="Stopped after 1 of 3 rounds"):
        widget.train(block=True)  # it was printed by the slot running, and training went on
    widget.controller.round_done.disconnect(interrupt)
    assert [h["round"] for h in widget.history] == [1] and not widget.is_busy
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_predicting_the_training_image_keeps_the_box_guided_result(scene, notes, monkeypatch):
    viewer, widget, image, _boxes = scene
    widget.train(block=True)
    guided = viewer.layers["cells cells"].data.copy()
    widget.predict(image, block=True)
    beside = viewer.layers["cells cells (no boxes)"]
    assert beside.metadata[OWNER_KEY]["role"] == "prediction"
    np.testing.assert_array_equal(viewer.layers["cells cells"].data, guided)
    # nothing found: the user is told what to try
    monkeypatch.setattr(widget.pair, "segment", lambda data, **kw: np.zeros(data.shape, np.int32))
    widget.predict(image, block=True)
    assert any("No cells found" in m and "more training" in m for m in messages(notes, "warning"))


def test_the_viewer_repaints_only_when_a_round_is_shown(
    make_napari_viewer, qtbot, capsys, monkeypatch
):
    # Counts, not clocks: how long a round or a stall takes is measured in
    # benchmarks/viewer_cost.py on an otherwise idle machine.
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QOpenGLWidget

    from napari_mutualseg._napari import runs

    # the status line's once-a-second update does not come, so that the count does not grow
    # with the time a loaded machine takes
    monkeypatch.setattr(runs, "_STATUS_MS", 24 * 3600 * 1000)

    viewer = make_napari_viewer(show=True)  # a drawn window: paints are part of the cost
    image, rows = disc_image()
    widget = open_widget(viewer)[1]
    widget.image_layer = viewer.add_image(image, name="cells")
    widget.new_boxes_layer().add_rectangles(rectangles(rows))
    widget.settings.update(rounds=3, steps_per_round=10, show_learning=True)
    widget.generate_supervision()  # also makes the result layers, before training starts
    widget.wait()

    class Paints(QObject):
        count = 0

        def eventFilter(self, obj, event):
            self.count += event.type() == QEvent.Type.Paint
            return False

    paints = Paints()
    canvases = widget.window().findChildren(QOpenGLWidget)
    assert canvases
    for canvas in canvases:
        canvas.installEventFilter(paints)
    # any change in the panel redraws the whole window (it holds the OpenGL canvas)
    redraws = Paints()
    widget.window().installEventFilter(redraws)
    started = time.perf_counter()
    widget.train()
    wait_idle(qtbot, widget)
    seconds = time.perf_counter() - started
    rounds = len(widget.history)
    with capsys.disabled():
        print(
            f"\n[viewer cost] {paints.count} canvas paints, {redraws.count} window redraws "
            f"for {rounds} rounds in {seconds:.1f} s"
        )
    # every round reached the layers (the labels may settle before the third)
    assert widget.controller.applied_rounds[-1] == widget.history[-1]["round"]
    # a few paints per shown round, not an activity spinner's 30 a second for the whole run
    assert paints.count <= 4 * rounds + 2
    # the status line follows the steps at its timer's pace, not at every step: 60 steps
    # would redraw the window where the bar, the status line and the canvas lie 60 times more
    assert redraws.count <= 7 * rounds + 6
    # cells come as uint16, which napari draws without recasting the whole array at each write
    assert viewer.layers["cells cells"].data.dtype == np.uint16


def test_small_labels_keeps_ids_that_need_more_than_16_bits():
    from napari_mutualseg._napari.workers import small_labels

    few = np.array([[0, 3], [65534, 1]], np.int32)
    (small,) = small_labels([few])
    assert small.dtype == np.uint16
    np.testing.assert_array_equal(small, few)
    # one plane's ids too many for 16 bits: every plane of the layer keeps its own
    planes = [few, np.array([[0, 70000]], np.int32)]
    assert all(a is b for a, b in zip(small_labels(planes), planes, strict=True))


def _stack_round(axes, planes):
    """Cells on ``planes`` of a stack shaped by ``axes``: each plane's and its layout."""
    from napari_mutualseg._napari.workers import Layout, distinct_cells, small_labels

    cells = []
    for k in range(len(planes)):
        plane = np.zeros(axes.label_shape[-2:], np.int32)
        plane[2 + k : 6 + k, 3:9], plane[10:14, 1 + k : 5 + 2 * k] = 1, 2
        cells.append(plane)
    return small_labels(distinct_cells(cells)), Layout(axes.label_shape, planes, axes)


def test_a_round_of_a_lazy_stack_reads_only_its_trained_planes_for_the_cells_table():
    import dask.array as da

    from napari_mutualseg._napari.axes import LayerAxes
    from napari_mutualseg._napari.workers import Layout, TrainingJob, measure
    from napari_mutualseg.training import RoundReport

    read = []

    def plane(block_id=None):
        read.append(block_id[1])
        return np.random.default_rng(block_id[1]).random((2, 1, 16, 16), dtype=np.float32)

    stack = da.map_blocks(plane, chunks=((2,), (1,) * 30, (16,), (16,)), dtype=np.float32)
    sizes = ((2.0, 0.5, 0.5), "um")
    axes = LayerAxes("CZYX", stack.shape, channel_names=("dna", "actin"), pixel_size=sizes)
    cells = np.zeros((16, 16), np.int32)
    cells[2:6, 3:9], cells[10:14, 1:5] = 1, 2
    classes = (cells > 0).astype(np.uint8)
    two = [[classes, classes]] * 2
    report = RoundReport(1, 2, 1.0, 1.0, *two, *[[cells, cells]] * 3, *two, 0.1, 0.1, "cpu")
    report.disagreement = [np.zeros((16, 16), np.float16)] * 2
    job = TrainingJob(lambda: None, [Layout(axes.label_shape, [4, 27], axes)], [stack])
    read.clear()
    update = job.update(report)
    assert sorted(set(read)) == [4, 27]  # not the 28 planes without boxes
    layer = next(data for role, _, data in update.layers if role == "cells")
    whole = measure(layer, stack.compute(), axes)
    table = update.tables[0]
    assert list(table) == list(whole) and len(whole["label"]) == 4
    for column, values in whole.items():
        assert table[column].dtype == values.dtype, column
        np.testing.assert_array_equal(table[column], values, err_msg=column)


def test_the_trained_planes_of_a_time_series_are_measured_as_on_the_whole_series():
    from napari_mutualseg._napari.axes import LayerAxes
    from napari_mutualseg._napari.workers import measure, measure_planes

    rng = np.random.default_rng(0)
    for letters, shape, planes, rgb in [
        ("TZYX", (3, 4, 16, 16), [1, 2, 9], False),  # 3D cells per time point
        ("TYX", (4, 16, 16, 3), [3, 1], True),  # 2D cells per frame, colours
    ]:
        data = rng.integers(0, 255, shape).astype(np.uint8)
        axes = LayerAxes(letters, shape, rgb)
        cells, layout = _stack_round(axes, planes)
        table = measure_planes(cells, data, layout)
        whole = measure(layout.place(cells, 0), data, axes)
        assert list(table) == list(whole), letters
        for column, values in whole.items():
            np.testing.assert_array_equal(table[column], values, err_msg=f"{letters} {column}")


def test_loss_plot_shows_a_single_round(qtbot):
    from qtpy.QtGui import QColor, QImage

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 120)
    plot.add(0.8, 0.5)
    picture = QImage(plot.size(), QImage.Format.Format_ARGB32)
    picture.fill(QColor(0, 0, 0))
    plot.render(picture)
    colours = {picture.pixelColor(x, y).name() for x in range(300) for y in range(120)}
    blue, orange = (c.name() for c in LossPlot.COLORS)
    assert blue in colours and orange in colours


def test_the_loss_axis_has_room_for_its_labels_and_stays_at_or_above_zero(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 120)
    plot.set_history([(123.4, 99.1), (12.1, 10.2)])
    assert plot.value_range()[0] == 0  # its margin below 10.2 made it -1.12
    plot.set_history([(0.0345, 0.0291), (0.0151, 0.0112)])  # late rounds
    lo, hi = plot.value_range()
    assert 0 < lo < 0.0112 and hi > 0.0345
    widest = max(plot.fontMetrics().horizontalAdvance(t) for t in plot.value_labels())
    assert plot.value_labels()[1].startswith("0.00") and plot.frame().left() > widest


def test_a_result_layer_napari_refuses_is_reported_and_training_still_runs(
    scene, notes, monkeypatch
):
    from napari_mutualseg._napari import writer

    _viewer, widget, _image, _boxes = scene
    real = writer.upsert_layer

    def refuse_model_a(viewer, **kwargs):
        if kwargs["role"] == "model A":
            raise ValueError("no such colormap")
        return real(viewer, **kwargs)

    monkeypatch.setattr(writer, "upsert_layer", refuse_model_a)
    widget.settings.rounds = 1
    widget.train(block=True)
    assert len(widget.history) == 1  # the job did not stall on the layer
    assert any("could not be shown: no such colormap" in m for m in messages(notes, "error"))


def test_supervision_of_another_image_waits_for_the_running_training(scene, qtbot, notes):
    viewer, widget, image, _boxes = scene
    widget.settings.update(rounds=3, steps_per_round=100_000)
    widget.train()
    job = widget.controller.job
    qtbot.waitUntil(lambda: job.progress()[0] >= 1, timeout=TIMEOUT)
    other_image, rows = disc_image(shape=(48, 80), centres=((20, 20), (24, 56)), seed=2)
    other = viewer.add_image(other_image, name="other")
    other_boxes = viewer.add_shapes(rectangles(rows), shape_type="rectangle")
    widget.image_layer, widget.boxes_layer = other, other_boxes
    assert widget.generate_supervision() is None  # refused, as the button is disabled
    assert not widget.data.generate.isEnabled()
    assert any("Busy" in m for m in messages(notes, "warning"))
    names = [layer.name for layer in viewer.layers]
    assert "other supervision" not in names and "other cells" not in names
    widget.stop()
    wait_idle(qtbot, widget)
    assert viewer.layers["cells cells"].data.shape == image.data.shape


def test_predict_or_save_during_the_first_training_says_to_wait_not_to_train(scene, notes):
    _viewer, widget, _image, _boxes = scene
    widget.train()  # no pair yet: the first training
    assert widget.predict("cells") is None and widget.save_model("cells.pt") is None
    said = messages(notes)
    assert not any("No trained model" in m for m in said)
    assert any("Busy" in m for m in said) and any("A job is running" in m for m in said)
    widget.stop()
    widget.wait()


def test_a_channel_asked_for_by_name_in_an_image_without_names_is_said_in_panel_words(
    viewer_widget, notes
):
    viewer, widget = viewer_widget
    image, rows = disc_image()
    layer = viewer.add_image(np.stack([image, image]), name="two", axis_labels=("c", "y", "x"))
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles([np.column_stack([np.zeros(4), r]) for r in rectangles(rows)])
    widget.image_layer, widget.boxes_layer = layer, boxes
    widget.settings.channels = "DAPI"
    widget.train(block=True)
    [error] = messages(notes, "error")
    assert "channel 'DAPI' cannot be found" in error and "(the Channels setting)" in error
    assert "--" not in error and "in Python" not in error


def test_a_reopened_panel_shows_the_settings_of_the_pair_it_goes_on_with(make_napari_viewer):
    """As after Load model: the network size and channels are the pair's, not the defaults."""
    from helpers import ThresholdNet
    from napari_mutualseg.models import ModelPair

    viewer = make_napari_viewer()
    dock, widget = open_widget(viewer)
    kept = {"width": 6, "depth": 3, "channels": [1], "rgb": "gray"}
    widget.controller.set_pair(ModelPair(ThresholdNet(), ThresholdNet(), settings=kept))
    close_panel(viewer, dock)
    _, reopened = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    settings = reopened.settings
    assert (settings.width, settings.depth, settings.channels, settings.rgb) == (6, 3, "1", "gray")
    assert reopened.training.form.editors["channels"].text() == "1"


def test_the_last_rounds_results_stay_with_their_image_when_another_is_prepared_at_once(
    scene, qtbot
):
    """Generate supervision on another image as training ends, its last round still being
    drawn: that round's results go to the trained image's layers, never the new image's."""
    from napari_mutualseg._napari.runs import RunState

    viewer, widget, _image, _boxes = scene
    data, rows = disc_image(centres=((12, 12), (30, 30)), seed=3)  # the same shape
    other = viewer.add_image(data, name="other")
    other_boxes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="theirs")
    busy = []

    def prepare_other(state):
        if state is RunState.IDLE and not busy:
            busy.append(widget.is_busy)  # the last round is still on its way into the layers
            widget.image_layer, widget.boxes_layer = other, other_boxes
            widget.generate_supervision()

    widget.controller.state_changed.connect(prepare_other)
    widget.settings.rounds = 1
    widget.train()
    qtbot.waitUntil(lambda: bool(busy), timeout=TIMEOUT)
    widget.wait()
    assert busy == [True]
    assert not viewer.layers["other disagreement"].data.any()
    assert viewer.layers["cells disagreement"].data.any()


def test_a_model_trained_in_the_panel_keeps_the_pixel_size_of_its_image(viewer_widget, tmp_path):
    from napari_mutualseg.models import ModelPair

    viewer, widget = viewer_widget
    image, rows = disc_image()
    scale = {"scale": (0.5, 0.5), "units": ("um", "um")}  # as the plugin's reader opens a file
    widget.image_layer = viewer.add_image(image, name="cells", **scale)
    widget.new_boxes_layer().add_rectangles(rectangles(rows))
    widget.settings.update(rounds=1, steps_per_round=1)
    widget.train(block=True)
    assert widget.pair.pixel_size == 0.5
    assert ModelPair.load(widget.save_model(tmp_path / "m.pt")).pixel_size == 0.5


def test_units_given_to_a_layer_after_its_supervision_reach_the_model(viewer_widget):
    # the supervision made before, without units, was reused: the model recorded no pixel size
    viewer, widget = viewer_widget
    image, rows = disc_image()
    layer = widget.image_layer = viewer.add_image(image, name="cells", scale=(0.5, 0.5))
    widget.new_boxes_layer().add_rectangles(rectangles(rows))
    widget.generate_supervision()
    layer.units = ("um", "um")
    widget.settings.update(rounds=1, steps_per_round=1)
    widget.train(block=True)
    assert widget.pair.pixel_size == 0.5


def test_an_image_of_other_pixels_than_the_training_images_is_warned_of_once(thresholded, notes):
    viewer, widget = thresholded
    widget.pair.pixel_size = 0.5  # µm, as trained on
    image, _ = disc_image()
    blank = np.zeros_like(image)
    stack = viewer.add_image(
        np.stack([image, blank, blank]), name="stack", scale=(2, 5, 5), units=("um",) * 3
    )
    widget.predict(stack, block=True)
    [warning] = [m for m in messages(notes, "warning") if "pixels of" in m]
    assert warning.startswith("'stack' has pixels of 5 µm, the networks were trained on pixels")
    assert any("z-plane 1, z-plane 2 are constant" in m for m in messages(notes, "warning"))
    notes.clear()
    widget.predict(viewer.add_image(image, name="plain"), block=True)  # no pixel size: no word
    assert not [m for m in messages(notes, "warning") if "pixels of" in m]


def test_segmenting_uses_the_device_chosen_now_not_the_one_the_pair_is_on(
    thresholded, tmp_path, notes
):
    """Trained or loaded on a GPU, then the CPU chosen to free it: the CPU segments (a pair
    on the meta device stands for a GPU, on which this machine cannot compute)."""
    import tifffile
    import torch

    viewer, widget = thresholded
    widget.settings.device = "cpu"
    image, _ = disc_image()
    layer = viewer.add_image(image, name="img")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    for segment in (
        lambda: widget.predict(layer, block=True),
        lambda: widget.segment_folder(tmp_path / "in", tmp_path / "out", block=True),
    ):
        widget.pair.device = torch.device("meta")
        segment()
        assert widget.pair.device == torch.device("cpu")
    assert not messages(notes, "error")
    assert viewer.layers["img cells"].data.max() == 4
    assert (tmp_path / "out" / "a_cells.csv").exists()


def test_channels_named_otherwise_than_in_training_are_warned_of_in_panel_words():
    import pytest

    from helpers import ThresholdNet
    from napari_mutualseg._napari.workers import in_panel_words
    from napari_mutualseg.images import AxisImage
    from napari_mutualseg.models import ModelPair

    pair = ModelPair(ThresholdNet(), ThresholdNet(), channel_names=("DAPI",))
    image = AxisImage.from_array(disc_image()[0][None], "CYX", channel_names=["GFP"])
    with pytest.warns(UserWarning, match="trained on DAPI and are given GFP") as caught:
        pair.network_input(image)
    said = in_panel_words(str(caught[0].message))
    assert "--" not in said and "in Python" not in said and "set Channels" in said


def test_cells_cut_off_at_a_blocks_margin_are_warned_of(thresholded, notes, monkeypatch):
    """A slide scan goes block by block; the core warns of the cells cut off once it has
    taken every block, which the panel did not wait for."""
    from functools import partial

    from napari_mutualseg import segmenter

    viewer, widget = thresholded
    pair = widget.pair
    monkeypatch.setattr(segmenter, "AUTO_BLOCKWISE_PIXELS", 1)  # as a plane above 4096²
    blocks = partial(type(pair).predict_planes, pair, block_size=64)
    monkeypatch.setattr(pair, "predict_planes", blocks)
    monkeypatch.setattr(pair, "cell_size", 4)  # boxes of 4 px: a margin of 64
    image = np.full((224, 32), 0.1, np.float32)
    image[4:220, 10:20] = 1  # a cell longer than a block and its margins
    widget.predict(viewer.add_image(image, name="scan"), block=True)
    assert any("reached the edge of their block's margin" in m for m in messages(notes, "warning"))
    notes.clear()
    speck = np.zeros((64, 64), np.float32)
    speck[5, 5] = 1  # smaller than a cell
    widget.predict(viewer.add_image(speck, name="empty"), block=True)
    assert len([m for m in messages(notes) if m.startswith("No cells found")]) == 1


@pytest.mark.filterwarnings("default::napari_mutualseg.segmenter.NoCellsWarning")  # told
def test_planes_of_a_stack_without_cells_are_said_once(thresholded, notes):
    """A stack whose later planes came out empty: the user is told which, once; an image
    without any cell is still said once, in the panel's words."""
    viewer, widget = thresholded
    image, _ = disc_image()
    dim = np.random.default_rng(0).uniform(0, 0.05, image.shape).astype(image.dtype)
    widget.predict(viewer.add_image(np.stack([image, dim, dim]), name="stack"), block=True)
    [said] = [m for m in messages(notes, "warning") if "No cells found" in m]
    assert said.startswith("No cells found in 2 of the 3 planes of 'stack' (z001, z002)")
    notes.clear()
    speck = np.zeros_like(image)
    speck[5, 5] = 1  # smaller than a cell
    widget.predict(viewer.add_image(np.stack([speck, speck]), name="empty"), block=True)
    [said] = [m for m in messages(notes) if "No cells found" in m]
    assert said.startswith("No cells found in 'empty':")


def test_a_device_without_room_for_the_models_is_said_and_the_pair_stays_usable(
    thresholded, tmp_path, notes, monkeypatch
):
    """Moving the models to the device chosen fails halfway through (one network moved, the
    other out of memory, as on a GPU without room; this machine has only the CPU, so the move
    to it stands in): the user is told what to do, the panel stays idle, the pair where it
    was."""
    import tifffile
    import torch

    viewer, widget = thresholded
    pair = widget.pair
    layer = viewer.add_image(disc_image()[0], name="img")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", layer.data)
    move = pair.model_b.to
    for segment in (
        lambda: widget.predict(layer, block=True),
        lambda: widget.segment_folder(tmp_path / "in", tmp_path / "out", block=True),
    ):
        moved = []

        def no_room(device, moved=moved):
            moved.append(device)
            if len(moved) == 1:  # there; back where it was, it fits again
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return move(device)

        monkeypatch.setattr(pair.model_b, "to", no_room)
        segment()
        [error] = messages(notes, "error")
        assert error.startswith("Could not move the models to cpu: it has no room for them")
        assert error.endswith(
            "other programs using the GPU, or choose another Device (e.g. cpu), and segment again."
        )
        assert not widget.controller.busy and len(moved) == 2  # moved back where it was
        notes.clear()
    monkeypatch.undo()
    widget.predict(layer, block=True)
    assert viewer.layers["img cells"].data.max() == 4


def test_a_model_loaded_onto_a_device_without_room_is_said(
    thresholded, tmp_path, notes, monkeypatch
):
    """Load model… moves the networks to the device chosen; there out of memory (a GPU
    without room, the CPU standing in) is said, and the pair in use stays."""
    import torch

    from napari_mutualseg.models import ModelPair
    from napari_mutualseg.unet import UNet

    _, widget = thresholded
    pair = widget.pair
    path = ModelPair(UNet(width=2, depth=1), UNet(width=2, depth=1)).save(tmp_path / "m.pt")

    moves, move = [], ModelPair.to

    def no_room(self, device):
        moves.append(device)
        if len(moves) > 1:  # the file is read onto the CPU; the device chosen has no room
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return move(self, device)

    monkeypatch.setattr(ModelPair, "to", no_room)
    assert widget.load_model(path) is None
    [error] = messages(notes, "error")
    assert error.startswith("Could not move the models to cpu: it has no room for them")
    assert error.endswith("or choose another Device (e.g. cpu), and load the model again.")
    assert widget.pair is pair and not widget.controller.busy


def test_a_script_is_told_that_training_failed_and_then_that_it_worked(scene, monkeypatch):
    from napari_mutualseg import training

    _viewer, widget, _image, _boxes = scene

    class Failing(training.MutualTrainer):
        def __iter__(self):
            raise training.TrainingError("The loss of network A became NaN in round 1.")

    original = training.MutualTrainer
    monkeypatch.setattr(training, "MutualTrainer", Failing)
    assert widget.train(block=True) is None  # the job started, then failed
    assert widget.last_error.startswith("The loss of network A became NaN in round 1.")
    monkeypatch.setattr(training, "MutualTrainer", original)
    widget.settings.update(rounds=1, steps_per_round=1)
    pair = widget.train(block=True)  # what it trained
    assert widget.last_error is None and len(widget.history) == 1
    assert pair is not None and pair is widget.pair


def test_a_script_is_told_that_a_prediction_or_a_folder_failed(thresholded, tmp_path):
    import tifffile

    viewer, widget = thresholded
    image, _ = disc_image()
    nan = image.copy()
    nan[5, 5] = np.nan
    widget.predict(viewer.add_image(nan, name="nan"), block=True)
    assert widget.last_error.startswith("'nan' contains NaN")
    good = viewer.add_image(image, name="good")
    widget.predict(good, block=True)
    assert widget.last_error is None
    widget.predict(good)
    viewer.layers.remove(good)  # before its cells arrive: they have nowhere to go
    widget.wait()
    assert "'good' was removed while it was segmented" in widget.last_error

    widget.segment_folder(tmp_path / "nowhere", tmp_path / "out", block=True)
    assert "nowhere not found" in widget.last_error
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    (tmp_path / "in" / "b.tif").write_bytes(b"not an image")
    widget.segment_folder(tmp_path / "in", tmp_path / "out", block=True)
    assert "1 failed" in widget.last_error and "run_report.csv" in widget.last_error
    (tmp_path / "in" / "b.tif").unlink()
    widget.segment_folder(tmp_path / "in", tmp_path / "out", block=True)
    assert widget.last_error is None


def test_a_call_refused_before_its_job_starts_is_a_failure_for_a_script(thresholded, tmp_path):
    viewer, widget = thresholded
    widget.predict(viewer.add_image(disc_image()[0], name="good"), block=True)
    assert widget.last_error is None
    assert widget.predict("god", block=True) is None  # a script's misspelt layer name
    assert widget.last_error.startswith("There is no layer named 'god' to segment")
    widget.reset_models()
    assert widget.segment_folder(tmp_path, tmp_path / "out", block=True) is None
    assert widget.last_error.startswith("No trained model yet")
    assert widget.train(block=True) is None
    assert widget.last_error.startswith("No boxes layer selected")


def test_a_blocking_call_returns_what_it_made(thresholded, tmp_path):
    """A script looked the cells layer up by name: block=True returned the worker."""
    import tifffile

    viewer, widget = thresholded
    image, _ = disc_image()
    good = viewer.add_image(image, name="good")
    assert same(widget.predict(good, block=True), viewer.layers["good cells"])
    assert widget.predict("nowhere", block=True) is None
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    run = widget.segment_folder(tmp_path / "in", tmp_path / "out", block=True)
    assert [r.status for r in run.results] == ["done"]
    assert widget.segment_folder(tmp_path / "nowhere", tmp_path / "out", block=True) is None


def test_the_images_of_a_folder_run_may_be_any_iterable_of_paths(thresholded, tmp_path):
    """A tuple, or ``Path.glob``'s paths, were taken as one name, which was not found."""
    import tifffile

    _viewer, widget = thresholded
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", disc_image()[0])
    run = widget.segment_folder(tmp_path.glob("*.tif"), tmp_path / "out", block=True)
    assert widget.last_error is None
    assert [r.status for r in run.results] == ["done", "done"]


def test_pixels_given_to_predict_instead_of_a_layer_are_refused_saying_why(thresholded):
    """A script's array raised an AttributeError from inside the panel."""
    _viewer, widget = thresholded
    assert widget.predict(disc_image()[0], block=True) is None
    assert widget.last_error.startswith(
        "predict takes an image layer of this viewer or its name (it was given a ndarray)"
    )
