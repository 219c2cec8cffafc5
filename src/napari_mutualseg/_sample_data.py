"""napari sample data: the bundled BBBC039 nuclei image with one box per nucleus."""

from __future__ import annotations

import numpy as np


def box_rows_to_rectangles(rows: np.ndarray) -> list[np.ndarray]:
    """napari rectangles (4 vertices each) from half-open pixel boxes ``y0, x0, y1, x1``.

    A pixel box covers rows ``y0 .. y1 - 1``; napari puts pixel centres on integers, so the
    rectangle's edges lie half a pixel outside the first and last pixel centres.
    """
    rects = []
    for y0, x0, y1, x1 in np.asarray(rows, dtype=float).reshape(-1, 4):
        top, left, bottom, right = y0 - 0.5, x0 - 0.5, y1 - 0.5, x1 - 0.5
        rects.append(
            np.array([[top, left], [top, right], [bottom, right], [bottom, left]], dtype=float)
        )
    return rects


def make_sample_data() -> list[tuple]:
    """The BBBC039 sample image and its boxes, as napari layer data.

    Returns
    -------
    list of tuple
        ``[(image, {"name": ...}, "image"), (rectangles, {"name": "boxes", ...}, "shapes")]``.
    """
    from .sample import load_sample

    sample = load_sample()
    # the nuclei fill a small part of the uint16 range: show them with a readable contrast
    low, high = (float(v) for v in np.percentile(sample.image, (0.5, 99.8)))
    image_meta = {
        "name": "nuclei",
        "colormap": "gray",
        "contrast_limits": (low, max(high, low + 1)),
        "metadata": {"source": sample.name},
    }
    boxes_meta = {
        "name": "boxes",
        "shape_type": "rectangle",
        "edge_color": "yellow",
        "face_color": "transparent",
        "edge_width": 1.5,
    }
    return [
        (sample.image, image_meta, "image"),
        (box_rows_to_rectangles(sample.boxes), boxes_meta, "shapes"),
    ]
