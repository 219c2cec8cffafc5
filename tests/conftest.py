"""Shared fixtures: tiny synthetic images, the dock widget, captured notifications."""

from __future__ import annotations

import os

import numpy as np
import pytest

# napari refuses attribute writes on its objects from any thread but the main one
os.environ["NAPARI_ENSURE_PLUGIN_MAIN_THREAD"] = "1"

WIDGET_NAME = "Mutual segmentation"


def disc_image(shape=(64, 64), centres=((16, 16), (20, 46), (46, 24), (44, 48)), radius=7, seed=0):
    """A small fluorescence-like image of bright discs and their half-open pixel boxes."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 0.1, np.float32)
    boxes = []
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
        boxes.append((cy - radius, cx - radius, cy + radius + 1, cx + radius + 1))
    rng = np.random.default_rng(seed)
    image += rng.normal(0, 0.03, shape).astype(np.float32)
    return image, np.array(boxes)


def rectangles(rows, plane=None):
    """napari rectangle vertices for half-open box rows (optionally on a plane of a stack)."""
    from napari_mutualseg._sample_data import box_rows_to_rectangles

    rects = box_rows_to_rectangles(rows)
    if plane is None:
        return rects
    return [np.column_stack([np.full(4, plane, float), r]) for r in rects]


def tiny_settings(widget, rounds=2, steps=3):
    """Settings small enough for a test: seconds on two CPU cores."""
    widget.rounds_spin.setValue(rounds)
    widget.steps_spin.setValue(steps)
    widget.width_spin.setValue(4)
    widget.depth_spin.setValue(2)
    widget.patch_spin.setValue(32)
    widget.batch_spin.setValue(2)
    widget.tile_spin.setValue(64)
    widget.device_combo.setCurrentText("cpu")


@pytest.fixture
def viewer_widget(make_napari_viewer):
    """A viewer with the dock widget opened through the plugin manifest."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    tiny_settings(widget)
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
def notes():
    """Every napari notification raised during the test."""
    from napari.utils.notifications import notification_manager

    got = []

    def grab(notification):
        got.append(notification)

    notification_manager.notification_ready.connect(grab)
    yield got
    notification_manager.notification_ready.disconnect(grab)


def messages(notes, severity=None):
    """The text of the captured notifications (of one severity, e.g. "error")."""
    return [
        str(n.message) for n in notes if severity is None or str(n.severity).lower() == severity
    ]
