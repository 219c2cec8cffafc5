"""Helpers shared by the tests: tiny synthetic images, napari rectangles, notifications."""

from __future__ import annotations

import numpy as np
import torch

from napari_mutualseg.boxes import rectangle_vertices

WIDGET_NAME = "Mutual segmentation"
TIMEOUT = 60_000  # ms; generous for a loaded 2-core CI machine


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
    rects = rectangle_vertices(rows)
    if plane is None:
        return rects
    return [np.column_stack([np.full(4, plane, float), r]) for r in rects]


#: Settings small enough for a test: seconds on two CPU cores.
TINY = {
    "rounds": 2,
    "steps_per_round": 3,
    "width": 4,
    "depth": 2,
    "patch_size": 32,
    "batch_size": 2,
    "tile_size": 64,
    "device": "cpu",
}


def messages(notes, severity=None):
    """The text of the captured notifications (of one severity, e.g. "error")."""
    return [
        str(n.message) for n in notes if severity is None or str(n.severity).lower() == severity
    ]


def same(a, b):
    """Identity through napari's plugin proxies."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def wait_idle(qtbot, widget, timeout=TIMEOUT):
    """Until the widget's jobs are done and their results are in the layers."""
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=timeout)


class ThresholdNet(torch.nn.Module):
    """A "network" that calls every pixel brighter than the middle of the range cell:
    predictions without training."""

    divisor = 1

    def __init__(self):
        super().__init__()
        self.arch = {"in_channels": 1, "n_classes": 3}

    def forward(self, x):
        return torch.cat([(0.5 - x) * 8, (x - 0.5) * 8, x * 0 - 8], dim=1)
