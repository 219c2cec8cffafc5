"""Fixtures: the dock widget in a viewer, a scene to train on, captured notifications.

GUI tests (those using a viewer or ``qtbot``, directly or through a fixture, marked ``gui``
here) need a display. Under ``make test`` they run in a virtual X server (Xvfb, started by
pytest-xvfb); where there is neither a display nor Xvfb they are skipped with one line that
says how to run them, and the core tests still run.
"""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

from helpers import TINY, WIDGET_NAME, ThresholdNet, disc_image, rectangles

# napari refuses attribute writes on its objects from any thread but the main one
os.environ["NAPARI_ENSURE_PLUGIN_MAIN_THREAD"] = "1"

NO_DISPLAY = (
    "there is no display. Install Xvfb (apt-get install xvfb) and run `make test` again: "
    "they then run in a virtual display."
)


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


_GUI_FIXTURES = {"make_napari_viewer", "qtbot", "viewer_widget"}


def pytest_collection_modifyitems(config, items):
    gui = [item for item in items if _GUI_FIXTURES & set(getattr(item, "fixturenames", ()))]
    for item in gui:
        item.add_marker(pytest.mark.gui)
    # pytest-xvfb has started Xvfb (and set DISPLAY) by now, where Xvfb is installed
    if gui and not _has_display():
        config.stash[_SKIPPED] = len(gui)
        for item in gui:
            item.add_marker(pytest.mark.skip(reason="no display (see the line at the end)"))


_SKIPPED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    skipped = config.stash.get(_SKIPPED, 0)
    if skipped:
        terminalreporter.write_line(f"{skipped} GUI tests skipped: {NO_DISPLAY}", yellow=True)


@pytest.fixture(autouse=True)
def default_dask_scheduler():
    """A test leaves dask's default scheduler as it found it: a run's client that stayed
    the default would take every later dask computation of the process (napari drawing a
    lazy layer, a test reading a lazy file) to its workers, or fail once it is closed."""
    import dask

    yield
    assert dask.config.get("scheduler", None) is None, "dask's default scheduler was changed"


@pytest.fixture(autouse=True)
def preferences(request, tmp_path, monkeypatch):
    """GUI tests: the plugin's napari Preferences, kept in the test's folder (never the
    user's own, which would change the panel's starting settings); ``None`` in core tests."""
    if request.node.get_closest_marker("gui") is None:
        yield None
        return
    from napari import settings

    # napari's own `plugin_settings` fixture does the same, but blocks plugin discovery
    monkeypatch.setattr(settings, "_CFG_PATH", str(tmp_path / "settings.yaml"))
    settings._clear_plugin_settings_cache()
    # What exists before the test (napari, Qt, torch and the objects of the tests before) is
    # left out of the test's full garbage collections: napari's viewer fixture makes one at
    # teardown, and scanning every object of the session made it take most of a second. The
    # test's own objects are collected as before (a leak of them is still seen); a training
    # job's own freeze and thaw (the plugin's freeze_gc) thaws everything, as in the app.
    gc.freeze()
    yield settings.get_plugin_settings("napari-mutualseg")
    settings._clear_plugin_settings_cache()
    gc.unfreeze()


@pytest.fixture
def viewer_widget(make_napari_viewer):
    """A viewer with the dock widget opened through the plugin manifest, tiny settings."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.settings.update(**TINY)
    yield viewer, widget
    widget.shutdown(timeout=30)


@pytest.fixture
def scene(viewer_widget):
    """Viewer + widget + a disc image "cells" and its boxes in a "boxes" layer."""
    viewer, widget = viewer_widget
    image, rows = disc_image()
    layer = viewer.add_image(image, name="cells")
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows))
    widget.image_layer = layer
    widget.boxes_layer = boxes
    return viewer, widget, layer, boxes


@pytest.fixture
def thresholded(viewer_widget):
    """The widget with a pair that needs no training (bright is cell), no boxed image."""
    from napari_mutualseg.models import ModelPair

    viewer, widget = viewer_widget
    widget.controller.set_pair(
        ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4, "rgb": "gray"})
    )
    return viewer, widget


#: The one round ``second_image`` trains, by what it was trained on: the pair and its report.
_TRAINED: dict[tuple, tuple] = {}


def _replaying(pair, report):
    """A stand-in for the trainer that gives ``pair`` and ``report`` as its one round."""
    import copy

    from napari_mutualseg import training

    class Replay(training.MutualTrainer):
        def __iter__(self):
            self._pair = pair.copy()
            yield copy.deepcopy(report)

    return Replay


@pytest.fixture
def second_image(scene):
    """The scene trained for one round, and a second image of discs ("other") predicted.

    The round is trained once per session; later tests get the same pair and report through
    the panel's training path (training on the CPU is reproducible, so they are the ones a
    new training would give), without the seconds of training again.
    """
    import copy

    from napari_mutualseg import training

    viewer, widget, image, boxes = scene
    widget.settings.update(rounds=1, steps_per_round=80, width=8)
    key = (
        repr(widget.config().to_dict()),
        np.asarray(image.data).tobytes(),
        np.asarray(boxes.data).tobytes(),
    )
    if key in _TRAINED:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(training, "MutualTrainer", _replaying(*_TRAINED[key]))
            widget.train(block=True)
    else:
        widget.train(block=True)
        if widget.last_report is not None and len(widget.history) == 1:
            _TRAINED[key] = (widget.pair.copy(), copy.deepcopy(widget.last_report))
    assert widget.pair is not None and [h["round"] for h in widget.history] == [1]
    other_image, _ = disc_image(centres=((16, 44), (44, 16), (44, 46)), seed=5)
    other = viewer.add_image(other_image, name="other")
    widget.predict(other, block=True)
    return viewer, widget, image, other


@pytest.fixture
def notes():
    """Every napari notification raised during the test."""
    from napari.utils.notifications import notification_manager

    got = []
    notification_manager.notification_ready.connect(got.append)
    yield got
    notification_manager.notification_ready.disconnect(got.append)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for torch in this process, the threads it starts (Qt workers,
    training threads) included: tiny networks gain nothing from a second one, and where the
    cores are busy (a shared 2-core CI machine, Xvfb drawing beside) its waiting for the
    other thread makes each step many times slower. The processes a test starts keep theirs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
