"""napari sample data: the bundled BBBC039 nuclei image with one box per nucleus."""

from __future__ import annotations

import numpy as np

from ..boxes import rectangle_vertices
from ..sample import load_sample


def make_sample_data() -> list[tuple]:
    """The BBBC039 sample image and its boxes, as napari layer data.

    Returns
    -------
    list of tuple
        ``[(image, {"name": ...}, "image"), (rectangles, {"name": "boxes", ...}, "shapes")]``.
    """
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
        (rectangle_vertices(sample.boxes), boxes_meta, "shapes"),
    ]
