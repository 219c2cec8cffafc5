"""Layers and panels coming and going while jobs run: the user's layers are never written, jobs
end with their viewer, closed panels leave nothing behind, and every refusal is said."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from helpers import TIMEOUT, WIDGET_NAME, ThresholdNet, disc_image, messages, rectangles, same
from napari_mutualseg._napari.layers import OWNER_KEY
from napari_mutualseg._napari.runs import training_status
from napari_mutualseg.models import ModelPair


def threshold_pair():
    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4, "rgb": "gray"})


def boxed_widget(viewer):
    """The dock widget on ``viewer`` with the disc image "cells" and its boxes picked."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.settings.update(device="cpu", tile_size=64)
    image, rows = disc_image()
    layer = viewer.add_image(image, name="cells")
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows))
    widget.image_layer, widget.boxes_layer = layer, boxes
    return widget, layer


@pytest.fixture
def slow_rounds(monkeypatch):
    """Training whose rounds take half a second each (five of them) and honour Stop."""
    from napari_mutualseg import training
    from test_widget import fake_report

    class Slow(training.MutualTrainer):
        def __iter__(self):
            for k in range(1, 6):
                for _ in range(10):
                    if self.cancelled:
                        return
                    time.sleep(0.05)
                yield fake_report(k, rounds=5)

    monkeypatch.setattr(training, "MutualTrainer", Slow)


@pytest.fixture
def held_planes(monkeypatch):
    """Prediction whose planes each wait for the test's leave (``held_planes.release(n)``
    lets n more through): the job is where the test says when the test looks at it, however
    slow the machine."""
    real = ModelPair._planes  # under predict_planes and segment, each plane as it is made
    leave = threading.Semaphore(0)

    def held(self, *args, **kwargs):
        for plane in real(self, *args, **kwargs):
            assert leave.acquire(timeout=TIMEOUT / 1000), "the test let no more planes through"
            yield plane

    monkeypatch.setattr(ModelPair, "_planes", held)
    return leave


def plugin_callbacks(viewer):
    """The callbacks of the plugin's objects on the viewer's and its layers' events."""
    groups = [viewer.events, viewer.dims.events, viewer.layers.events]
    groups += [viewer.layers.selection.events, *(layer.events for layer in viewer.layers)]
    found = []
    for group in groups:
        for name, emitter in group.emitters.items():
            for callback in emitter.callbacks:
                if isinstance(callback, tuple):  # (weak reference to an object, method name)
                    callback = callback[0]()
                owner = getattr(callback, "func", callback)  # a partial
                owner = getattr(owner, "__self__", owner)  # a bound method
                if type(owner).__module__.startswith("napari_mutualseg"):
                    found.append((name, callback))
    return found


# -------------------------------------------------------------------------------- the manifest


def test_the_manifest_passes_npe2_validate():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mutualseg")
    PluginManifest.model_validate(manifest.model_dump())  # what `npe2 validate` checks
    writers = {w.command.rsplit(".", 1)[-1]: w for w in manifest.contributions.writers}
    for name, suffix in (("table", ".csv"), ("fiji_rois", ".zip"), ("qupath_geojson", ".geojson")):
        writer = writers[f"write_{name}"]
        assert [str(t) for t in writer.layer_types] == ["labels"]
        assert writer.filename_extensions == [suffix]


def test_the_menu_command_writes_into_its_own_viewer(make_napari_viewer):
    """Run in one viewer while another is current, it never takes a layer of its viewer for
    its result because the other viewer has no layer of that name."""
    viewer = make_napari_viewer()
    image, rows = disc_image()
    img = viewer.add_image(image, name="img")
    shapes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="boxes")
    mine = viewer.add_labels(np.full(image.shape, 7, np.int32), name="img supervision")
    _, gui = viewer.window.add_plugin_dock_widget(
        "napari-mutualseg", "Boxes → ellipse supervision"
    )
    make_napari_viewer()  # now the current viewer
    gui.image.value, gui.boxes.value = img, shapes
    gui()
    assert (mine.data == 7).all() and OWNER_KEY not in mine.metadata
    made = viewer.layers["img supervision [2]"]
    assert made.metadata[OWNER_KEY]["role"] == "supervision"


def test_a_writer_that_cannot_write_says_why_and_raises_nothing(
    make_napari_viewer, tmp_path, notes
):
    viewer = make_napari_viewer()
    cells = np.zeros((16, 16), np.int32)
    cells[2:6, 2:6] = 1
    layer = viewer.add_labels(cells, name="cells")
    folder = tmp_path / "cells.csv"
    folder.mkdir()  # a folder of the name chosen
    with pytest.warns(UserWarning):  # napari's own: the plugin wrote nothing
        assert layer.save(str(folder), plugin="napari-mutualseg") == []
    [error] = messages(notes, "error")
    assert error.startswith(f"{folder} was not written") and "is a folder" in error


# -------------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("change", ["removed", "changed"])
def test_cells_of_an_image_removed_or_changed_while_segmented_are_not_shown(
    thresholded, held_planes, notes, change
):
    viewer, widget = thresholded
    a = disc_image()[0]
    image = viewer.add_image(np.stack([a, a, a]), name="st", axis_labels=("z", "y", "x"))
    assert widget.predict(image) is not None
    if change == "removed":
        viewer.layers.remove(image)
    else:  # another file opened into the same layer
        image.data = disc_image(shape=(48, 80), centres=((20, 20),))[0]
    held_planes.release(3)
    widget.wait()
    assert [layer.name for layer in viewer.layers] == ([] if change == "removed" else ["st"])
    [warning] = messages(notes, "warning")
    assert "while it was segmented: its cells are not shown" in warning
    assert warning.startswith("'st' was removed" if change == "removed" else "'st' changed")
    assert ("Predict it again" in warning) == (change == "changed")
    assert widget.status.text() == warning


def test_results_of_images_closed_are_let_go(thresholded):
    """Predicting one image after another, closing each: only open images' results are kept."""
    viewer, widget = thresholded
    kept = widget.controller.predictions, widget.controller.writer.written
    first = viewer.add_image(disc_image()[0], name="a")
    widget.predict(first, block=True)
    assert all(str(first.unique_id) in cache for cache in kept)
    viewer.layers.remove(first)
    second = viewer.add_image(disc_image(seed=1)[0], name="b")
    widget.predict(second, block=True)
    assert [list(cache) for cache in kept] == [[str(second.unique_id)]] * 2


def test_a_prediction_stops_after_the_plane_at_hand(thresholded, held_planes, qtbot):
    viewer, widget = thresholded
    a = disc_image()[0]
    image = viewer.add_image(np.stack([a] * 20), name="st", axis_labels=("z", "y", "x"))
    idle = widget.training.sizeHint()
    widget.predict(image)
    held_planes.release()  # the first plane; the second waits until the job is stopped
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=TIMEOUT)
    assert widget.training.stop.isEnabled()  # a long stack can be stopped
    assert widget.training.sizeHint() == idle  # the panel does not jump while a job runs
    assert widget.training.device.text().startswith("Device in use: cpu")  # the pair's
    widget.stop()
    assert widget.is_busy and not widget.training.stop.isEnabled()  # asked once is enough
    held_planes.release()  # the plane at hand
    widget.wait()
    assert "st cells" not in [layer.name for layer in viewer.layers]
    assert "Stopped segmenting 'st'" in widget.status.text()
    assert widget.training.device.text().startswith("Device: ")  # the settings' pick again
    assert widget.model.predict.isEnabled() and not widget.training.stop.isEnabled()


def test_predicting_a_layer_name_that_is_not_there_says_which_are(thresholded, notes):
    viewer, widget = thresholded
    viewer.add_image(disc_image()[0], name="nuclei")
    assert widget.predict("nucleus") is None
    assert messages(notes, "error")[-1] == (
        "There is no layer named 'nucleus' to segment; the layers are: 'nuclei'."
    )


def test_a_layer_of_another_viewer_is_refused_with_a_reason(
    thresholded, make_napari_viewer, notes
):
    """A script's layer of another viewer: its cells would have nowhere to go."""
    _viewer, widget = thresholded
    elsewhere = make_napari_viewer().add_image(disc_image()[0], name="elsewhere")
    assert widget.predict(elsewhere) is None and not widget.is_busy
    assert messages(notes, "error")[-1].startswith("'elsewhere' is not in this panel's viewer")
    with pytest.raises(ValueError, match="'elsewhere' cannot be picked: it is not among"):
        widget.image_layer = elsewhere


def test_predict_is_enabled_only_with_an_image_to_segment(thresholded, notes):
    viewer, widget = thresholded
    assert not widget.model.predict.isEnabled()  # a model, but no image
    assert widget.predict() is None
    assert "pick it in the list next to Predict" in messages(notes, "error")[-1]
    image = viewer.add_image(disc_image()[0], name="x")
    assert widget.model.predict.isEnabled()
    viewer.layers.remove(image)
    assert not widget.model.predict.isEnabled()


# -------------------------------------------------------------------------------- training


@pytest.fixture
def training(make_napari_viewer, slow_rounds, qtbot):
    """A viewer, the widget and its image "cells", training past its first (slow) round."""
    viewer = make_napari_viewer()
    widget, image = boxed_widget(viewer)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=TIMEOUT)
    return viewer, widget, image


def test_results_of_an_image_removed_while_training_are_not_shown(training, notes):
    viewer, widget, _image = training
    for name in [layer.name for layer in viewer.layers if layer.name != "boxes"]:
        viewer.layers.remove(name)  # the image and every layer made for it
    widget.wait()
    assert len(widget.history) == 5  # training went on; its pair is kept
    assert [layer.name for layer in viewer.layers] == ["boxes"]  # nothing made again
    [warning] = messages(notes, "warning")
    assert "'cells' is no longer in the viewer" in warning and "Stop" in warning
    assert not messages(notes, "error")


def test_a_supervision_is_made_again_for_other_pixels_of_another_shape(scene, notes):
    viewer, widget, image, _boxes = scene
    widget.settings.rounds = 1
    widget.generate_supervision()
    other, _ = disc_image(shape=(48, 80), centres=((16, 16), (20, 46)))
    image.data = other  # another file opened into the same layer
    assert widget.train(block=True) is not None
    assert viewer.layers["cells supervision"].data.shape == other.shape
    assert viewer.layers["cells cells"].data.shape == other.shape
    assert not messages(notes, "error")


def test_editing_the_cells_being_trained_on_is_refused(training, notes):
    _viewer, widget, image = training
    assert not widget.check.add.isEnabled()  # Add to training starts a job: not now
    widget.check.image.value = image
    widget.check.split.click()
    assert "is being trained on" in messages(notes, "error")[-1]
    widget.stop()
    widget.wait()
    assert widget.check.add.isEnabled()


def test_changing_the_annotation_mode_while_training_keeps_generate_disabled(training):
    from napari_mutualseg._napari.panels import MODE_ALL, MODE_REGION

    _viewer, widget, _image = training
    data = widget.data
    for mode in (MODE_REGION, MODE_ALL):
        data.mode.value = mode
        assert not data.generate.isEnabled() and not data.new_boxes.isEnabled()
    widget.stop()
    widget.wait()
    assert data.generate.isEnabled() and data.new_boxes.isEnabled()


def test_the_status_line_says_the_round_and_how_far_it_is(training, qtbot):
    _viewer, widget, _image = training
    qtbot.waitUntil(lambda: "round" in widget.status.text(), timeout=TIMEOUT)
    text = widget.status.text()
    assert re.fullmatch(r"Training on cpu.*: round [1-5] of 5 \((\d+%|predicting .*)\)\.", text)
    widget.stop()
    widget.wait()
    # a round's steps done, it said 100% for the seconds the networks predict
    assert training_status("cpu", 2, 5, 1.0).endswith(
        "round 2 of 5 (predicting the training images)."
    )


def test_the_status_line_says_how_long_the_job_has_left(training, monkeypatch):
    from types import SimpleNamespace

    from napari_mutualseg._napari import panels

    _viewer, widget, _image = training
    progress, left = widget.controller.progress, widget.footer.left
    # the panel's clock, not the machine's: a loaded machine's pause would change the pace
    clock = SimpleNamespace(perf_counter=lambda: 100.0)
    monkeypatch.setattr(panels, "time", clock)
    progress.emit(10, 100)  # the pace is taken from here on, not from the set-up before
    clock.perf_counter = lambda: 100.05
    progress.emit(20, 100)  # 5 ms a step, 80 steps to go
    assert left.text() == "about 5 s left"
    widget.stop()
    assert left.text() == ""  # a stopping job has no time left to tell
    widget.wait()


def test_the_round_note_says_the_cells_found_and_the_labels_changed(training):
    _viewer, widget, _image = training
    note = widget.training.round_note
    said = "cells found in 100% of the boxes; 10.0% of the labels changed"
    assert re.match(rf"Round [1-5]: {said} \(training ends early once under 0.5%", note.text())
    widget.stop()
    widget.wait()
    # still the report's word on the last round once the run has ended
    assert note.text().startswith(f"Round {widget.history[-1]['round']}: {said}")
    widget.reset_models()
    assert note.text() == ""


def test_stop_is_disabled_while_training_stops(training):
    _viewer, widget, _image = training
    assert widget.training.stop.isEnabled()
    widget.stop()
    assert widget.is_training and not widget.training.stop.isEnabled()
    assert "Stopping" in widget.status.text()
    widget.wait()
    assert widget.training.train.isEnabled() and not widget.training.stop.isEnabled()


def test_stopped_before_the_first_round_says_there_are_no_models(
    make_napari_viewer, slow_rounds, qtbot
):
    viewer = make_napari_viewer()
    widget, _image = boxed_widget(viewer)
    widget.train()
    widget.stop()
    widget.wait()
    assert widget.pair is None and not widget.model.predict.isEnabled()
    assert "no models yet" in widget.status.text()
    assert "models of the last completed round are kept" not in widget.status.text()


def test_the_device_line_says_in_use_only_while_training(scene):
    _viewer, widget, _image, _boxes = scene
    widget.settings.rounds = 1
    idle = widget.training.device.text()
    assert idle.startswith("Device: ")
    widget.train(block=True)
    assert widget.training.device.text() == idle


# -------------------------------------------------------------------------------- closing


def test_a_closed_panel_leaves_no_callbacks_on_the_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.controller.set_pair(threshold_pair())
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    viewer.layers.selection.active = cells  # the Check panel follows its picked cells
    assert plugin_callbacks(viewer)
    viewer.window.remove_dock_widget(dock)  # the dock's close button
    assert plugin_callbacks(viewer) == []
    cells.selected_label = 2  # nothing of the closed panel answers
    viewer.add_image(np.zeros((8, 8)), name="later").name = "renamed"
    viewer.layers.selection.active = viewer.layers["renamed"]
    # opened again, it follows the viewer again
    _, again = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    assert same(again.pair, widget.pair) and again.model.predict.isEnabled()
    viewer.add_image(np.zeros((8, 8)), name="newest")
    assert again.model.target.layer.name == "newest"


def test_a_closed_panel_is_freed(make_napari_viewer, qtbot):
    """Nothing of the plugin keeps a closed panel (nor the viewer through it) alive."""
    import gc
    import weakref

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.controller.set_pair(threshold_pair())
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    widget.settings.rounds = 3  # through the form's editors
    widget.training.form.editors["rounds"].setValue(4)
    assert widget.settings.rounds == 4
    panel = weakref.ref(widget)
    viewer.window.remove_dock_widget(dock)  # the dock's close button
    del dock, widget
    # napari deletes the dock later (deleteLater)
    qtbot.waitUntil(lambda: gc.collect() is not None and panel() is None)


def test_a_viewer_closed_while_another_is_current_ends_its_training(
    make_napari_viewer, slow_rounds, qtbot
):
    viewer = make_napari_viewer()
    widget, _image = boxed_widget(viewer)
    make_napari_viewer()  # now the current viewer: napari files the job under it
    widget.train()
    job = widget.controller.job
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=TIMEOUT)
    viewer.close()
    qtbot.waitUntil(job.done.is_set, timeout=TIMEOUT)
    assert len(widget.history) < 5


def test_closing_another_viewer_leaves_this_viewers_job_running(
    make_napari_viewer, slow_rounds, qtbot
):
    """The job is a task of its own viewer (napari files a worker under the current one):
    another viewer's closing neither stops it nor lists it; its own closing stops it."""
    viewer = make_napari_viewer()
    widget, _image = boxed_widget(viewer)
    other = make_napari_viewer()  # now the current viewer
    widget.train()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=TIMEOUT)
    assert other.window._task_status_manager.get_status() == []
    [task] = viewer.window._task_status_manager.get_status()
    assert task == "napari-mutualseg: training on 'cells'"
    other.close()
    widget.wait()
    assert len(widget.history) == 5  # trained to the end
    assert viewer.window._task_status_manager.get_status() == []  # done: nothing to ask
    widget.train()  # five more rounds, stopped by closing its own viewer
    job = widget.controller.job
    qtbot.waitUntil(lambda: len(widget.history) >= 6, timeout=TIMEOUT)
    viewer.close()
    qtbot.waitUntil(job.done.is_set, timeout=TIMEOUT)
    assert len(widget.history) < 10


def test_a_training_stopped_before_it_began_is_no_task_of_its_viewer(make_napari_viewer):
    """Stopped while its layers were made: napari must not ask, when the viewer closes,
    whether to stop a task that never ran."""
    viewer = make_napari_viewer()
    widget, _image = boxed_widget(viewer)
    assert widget.train() is not None
    widget.stop()
    widget.wait()
    assert widget.history == [] and not widget.is_training
    assert viewer.window._task_status_manager.get_status() == []


def test_a_finished_job_leaves_nothing_alive_in_naparis_task_list(thresholded):
    """napari keeps every task it listed; the plugin's keep no worker, model or image."""
    import gc
    import weakref

    viewer, widget = thresholded
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    worker = weakref.ref(widget.controller.segmenting.worker)
    widget.predict(image, block=True)  # the controller keeps only its newest job
    gc.collect()
    assert worker() is None


def test_a_folder_run_ended_by_closing_the_viewer_writes_its_summary(
    make_napari_viewer, held_planes, qtbot, tmp_path
):
    import tifffile

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.settings.update(device="cpu", tile_size=64)
    widget.controller.set_pair(threshold_pair())
    folder, out = tmp_path / "plate", tmp_path / "results"
    folder.mkdir()
    for k in range(20):
        tifffile.imwrite(folder / f"f{k:02d}.tif", disc_image(seed=k)[0])
    widget.segment_folder(folder, out)
    held_planes.release()  # the first image; the second waits until the viewer is closed
    qtbot.waitUntil(lambda: any(out.glob("*_cells.csv")), timeout=TIMEOUT)
    viewer.close()
    held_planes.release()  # the image at hand
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    done = len(list(out.glob("*_cells.csv")))
    assert done in (1, 2)  # it ended after the image at hand (if it had begun the second)
    # the run's reports, as at the end of every run
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + done
    report = (out / "run_report.csv").read_text().splitlines()
    assert len(report) == 1 + 20 and sum("not done" in row for row in report) == 20 - done


def test_jobs_of_two_viewers_at_once_each_say_their_own_warnings(make_napari_viewer, monkeypatch):
    """Two viewers segment at once, the first ends while the second runs: each job's warnings
    reach its own panel, and once both have ended the process's warnings are as before."""
    import threading
    import warnings

    from napari_mutualseg._napari import runs

    both, first_done = threading.Barrier(2, timeout=TIMEOUT / 1000), threading.Event()

    def job(pair, data, axes, tile_size, name, *args):
        both.wait()  # both jobs run
        if name == "b":
            first_done.wait(TIMEOUT / 1000)
        yield 0, 1
        warnings.warn(f"a word on '{name}'", UserWarning, stacklevel=1)
        return None

    monkeypatch.setattr(runs, "run_prediction", job)
    hook, filters = warnings.showwarning, list(warnings.filters)
    said = {}
    for name in "ab":
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
        widget.settings.device = "cpu"
        widget.controller.set_pair(threshold_pair())
        said[name] = (widget, [])
        widget.controller.message.connect(said[name][1].append)
        widget.predict(viewer.add_image(disc_image()[0], name=name))
    said["a"][0].wait()
    first_done.set()
    said["b"][0].wait()
    assert [m for m in said["a"][1] if "a word" in m] == ["a word on 'a'"]
    assert [m for m in said["b"][1] if "a word" in m] == ["a word on 'b'"]
    # a finished job's hook and superqt's "always" were left in place for good
    assert warnings.showwarning is hook and warnings.filters[: len(filters)] == filters


def test_the_loss_legend_gives_each_networks_latest_loss(qtbot):
    from napari_mutualseg._napari.loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.legend() == ("— A", "— B")
    plot.set_history([(0.8, 0.5), (0.41234, float("nan"))])
    assert plot.legend() == ("— A 0.412", "— B 0.5")  # B's last finite loss


def test_the_loss_plot_marks_each_round_on_its_axis(qtbot):
    from qtpy.QtGui import QColor, QImage

    from napari_mutualseg._napari.loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 120)
    plot.set_history([(1.0, 1.0), (0.5, 0.5), (0.1, 0.1)])
    picture = QImage(plot.size(), QImage.Format.Format_ARGB32)
    picture.fill(QColor(0, 0, 0))
    plot.render(picture)
    frame = plot.frame()
    middle = frame.left() + frame.width() // 2  # round 2 of 3, where the curves are high
    y = frame.bottom() - 2
    background = picture.pixelColor(middle + 10, y)
    assert any(picture.pixelColor(x, y) != background for x in range(middle - 1, middle + 2))
