"""From boxes drawn around cells to the first pixel supervision (the round-0 label).

Every box stands for one cell. Its largest inscribed ellipse is the first guess of the cell:
pixels inside the ellipse are cell (class 1), the ellipse's edge is boundary (class 2), and
where ellipses overlap each pixel goes to the ellipse it is deepest inside (the smallest
normalised elliptical distance), so a dividing line of boundary pixels separates them.
Outside the ellipses is background (class 0), or ignore (255) outside the annotated region
when only part of the image has every cell boxed. Box geometry and the pixel convention are in
:mod:`napari_mutualseg.boxes`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from .boxes import BOX_TYPES, MIN_BOX_SIZE, Box, boxes_by_plane, boxes_from_shapes

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "BOX_TYPES",
    "CELL",
    "CLASS_VALUES",
    "IGNORE",
    "Box",
    "Supervision",
    "boxes_by_plane",
    "boxes_from_shapes",
    "boxes_mask",
    "check_class_map",
    "make_supervision",
]

BACKGROUND, CELL, BOUNDARY, IGNORE = 0, 1, 2, 255

#: The values a class map (supervision or training label) may hold.
CLASS_VALUES = (BACKGROUND, CELL, BOUNDARY, IGNORE)


@dataclass
class Supervision:
    """The round-0 supervision of one image.

    Attributes
    ----------
    classes : numpy.ndarray
        ``(H, W)`` uint8 user-facing ellipse label: 0 background, 1 cell, 2 boundary,
        255 ignore.
    instances : numpy.ndarray
        ``(H, W)`` int32: ``k + 1`` on the pixels owned by box ``k``'s ellipse, 0 elsewhere.
    boxes : list of Box
        The boxes, in the order of the instance ids.
    region : numpy.ndarray or None
        bool ``(H, W)`` annotated region; ``None`` means every cell of the image is boxed.
    """

    classes: np.ndarray
    instances: np.ndarray
    boxes: list[Box]
    region: np.ndarray | None = None


def check_class_map(labels: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    """A painted or loaded class map as uint8, or a ``ValueError`` that says how to fix it.

    Parameters
    ----------
    labels : numpy.ndarray
        The class map (a supervision the user may have painted on).
    shape : tuple of int
        The shape it must have (its image's).
    name : str
        How messages call it (a layer or file name).

    Returns
    -------
    numpy.ndarray
        A uint8 copy.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ValueError(
            f"{name} has shape {labels.shape} but its image has {tuple(shape)}; make the "
            "supervision again for this image."
        )
    bad = ~np.isin(labels, CLASS_VALUES)
    if bad.any():
        values = np.unique(labels[bad])[:5].tolist()
        raise ValueError(
            f"{name} contains label values {values} that are not classes; paint with 0 "
            f"(background), 1 (cell), 2 (boundary) or {IGNORE} (ignore)."
        )
    return labels.astype(np.uint8)


def _check_boxes(shape: tuple[int, int], boxes: Sequence[Box]) -> None:
    partly = []
    for k, box in enumerate(boxes):
        if not isinstance(box, Box):
            raise TypeError(
                f"boxes[{k}] is a {type(box).__name__}, not a Box; convert shapes with "
                "boxes_from_shapes."
            )
        name = box.describe(k)
        name = name[:1].upper() + name[1:]
        if box.too_small:
            h0, h1 = box.half_sizes
            raise ValueError(
                f"{name} is {2 * h0:g} x {2 * h1:g} pixels; a box must be at least "
                f"{MIN_BOX_SIZE:g} pixels wide and tall. Redraw it around the whole cell or "
                "delete it."
            )
        if not box.overlaps(shape):
            raise ValueError(
                f"{name} lies wholly outside the image of shape {shape}; delete it or move it "
                "onto the image."
            )
        if not box.within(shape):
            partly.append(k)
    if partly:
        shown = ", ".join(str(k) for k in partly[:10]) + (" ..." if len(partly) > 10 else "")
        warnings.warn(
            f"{len(partly)} box(es) reach past the image border (box {shown}); they are clipped "
            f"to the image of shape {shape}.",
            UserWarning,
            stacklevel=3,
        )


def boxes_mask(shape: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    """Pixels (centres) inside any of ``boxes``, as a bool ``shape`` array."""
    mask = np.zeros(tuple(shape), bool)
    for box in boxes:
        slices, u, v = box.local_coords(mask.shape)
        mask[slices] |= np.maximum(np.abs(u), np.abs(v)) <= 1.0
    return mask


def make_supervision(
    shape: Sequence[int],
    boxes: Sequence[Box] | np.ndarray,
    *,
    region: np.ndarray | None = None,
    edge_width: int = 1,
) -> Supervision:
    """The ellipse supervision of one image from its boxes (round-0 label).

    Each box's largest inscribed ellipse (rotated with the box) is a cell: the pixel centred
    at ``(i, j)`` is inside when ``u**2 + v**2 <= 1`` (see :meth:`Box.local_coords`). A pixel
    inside several ellipses belongs to the one with the smallest normalised distance
    ``u**2 + v**2`` (ties: the earlier box). Every instance's inner edge, which includes the
    dividing lines where the owner changes, is boundary. The box corners outside the ellipse
    are background like the rest of the image; the engine decides how to trust them.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    boxes : sequence of Box or array_like
        The boxes, or anything :func:`boxes_from_shapes` accepts.
    region : numpy.ndarray, optional
        bool ``(H, W)``: the region where every cell is boxed. Background is then only
        inside the region; outside it is ignore (255), except the ellipses themselves.
        ``None`` (default): the whole image is annotated.
    edge_width : int
        Thickness of the boundary in pixels (inwards from each ellipse's edge).

    Returns
    -------
    Supervision

    Raises
    ------
    ValueError
        No boxes, a box wholly outside the image or smaller than 2 pixels, an image shape
        that is not 2D, a region of another shape, or an edge width below 1.

    Warns
    -----
    UserWarning
        When boxes reach past the image border (they are clipped).

    Examples
    --------
    >>> sup = make_supervision((64, 64), [Box.from_corners(10, 10, 30, 40)])
    >>> sorted(np.unique(sup.classes).tolist())
    [0, 1, 2]
    """
    shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape)))
    if len(shape) != 2:
        raise ValueError(
            f"make_supervision needs a 2D image shape (H, W), got {shape}. For a stack, make "
            "one supervision per plane (boxes_by_plane groups the boxes); for RGB, pass "
            "image.shape[:2]."
        )
    if min(shape) < 1:
        raise ValueError(f"The image shape {shape} is empty.")
    if isinstance(boxes, np.ndarray) or (
        len(boxes) > 0 and not all(isinstance(b, Box) for b in boxes)
    ):
        boxes = boxes_from_shapes(boxes)
    boxes = list(boxes)
    if not boxes:
        raise ValueError("No boxes: draw at least one rectangle around a cell on the boxes layer.")
    edge_width = int(edge_width)
    if edge_width < 1:
        raise ValueError(f"edge_width must be at least 1 pixel, got {edge_width}.")
    if region is not None:
        region = np.asarray(region)
        if region.shape != shape:
            raise ValueError(
                f"The region mask has shape {region.shape} but the image is {shape}; draw the "
                "region on this image (or pass region=None when every cell is boxed)."
            )
        region = region.astype(bool, copy=False)
    h, w = shape
    _check_boxes((h, w), boxes)

    instances = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float64)
    for k, box in enumerate(boxes):
        # Per-box work on its own bounding slices keeps this linear in the boxes' area.
        sl, u, v = box.local_coords(shape)
        dist = u * u + v * v
        take = (dist <= 1.0) & (dist < best[sl])
        instances[sl][take] = k + 1
        best[sl][take] = dist[take]

    # Inner boundaries mark both each ellipse's edge against background and the pixels on
    # either side of a dividing line, so two cells never share a cell-class border.
    boundary = find_boundaries(instances, mode="inner")
    if edge_width > 1:
        boundary = ndi.binary_dilation(boundary, iterations=edge_width - 1)
        boundary &= instances > 0

    if region is None:
        classes = np.full(shape, BACKGROUND, np.uint8)
    else:
        classes = np.where(region, BACKGROUND, IGNORE).astype(np.uint8)
    classes[instances > 0] = CELL
    classes[boundary] = BOUNDARY
    return Supervision(classes=classes, instances=instances, boxes=boxes, region=region)
