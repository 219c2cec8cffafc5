"""From boxes drawn around cells to the first pixel supervision (the round-0 label).

Every box stands for one cell. Its largest inscribed ellipse is the first guess of the cell:
pixels inside the ellipse are cell (class 1), the ellipse's edge is boundary (class 2), and
where ellipses overlap each pixel goes to the ellipse it is deepest inside (the smallest
normalised elliptical distance), so a dividing line of boundary pixels separates them.
Outside the ellipses is background (class 0), or ignore (255) outside the annotated region
when only part of the image has every cell boxed. Box geometry and the pixel convention are in
:mod:`napari_mutualseg.boxes`.

A corrected segmentation is supervision too (:func:`supervision_from_masks`): the cells a person
drew or fixed are whole masks, trusted in every round, with the background around them; boxes
drawn beside them are ordinary boxes; the rest of the image is trusted as shown or ignored.
:func:`corrected_cells` tells which cells of a corrected segmentation the person changed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from .boxes import (
    BOX_TYPES,
    MIN_BOX_SIZE,
    Box,
    box_numbers,
    boxes_by_plane,
    boxes_from_shapes,
    inside_box,
    repeated_boxes,
)

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "BOX_TYPES",
    "CELL",
    "CLASS_VALUES",
    "IGNORE",
    "REST_MODES",
    "TRUSTED_RING",
    "Box",
    "Supervision",
    "boxes_by_plane",
    "boxes_from_shapes",
    "boxes_mask",
    "check_class_map",
    "corrected_cells",
    "make_supervision",
    "supervision_from_masks",
]

BACKGROUND, CELL, BOUNDARY, IGNORE = 0, 1, 2, 255

#: The values a class map (supervision or training label) may hold.
CLASS_VALUES = (BACKGROUND, CELL, BOUNDARY, IGNORE)

#: What the unchecked part of a corrected image is: ignored, or trusted as shown.
REST_MODES = ("ignore", "trusted")
#: Background trusted around each corrected cell, in pixels.
TRUSTED_RING = 2


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
    trusted : numpy.ndarray or None
        bool ``(H, W)``: pixels whose class is certain in every round (corrected cells and
        the background around them, see :func:`supervision_from_masks`); ``None``: only the
        boxes speak.
    """

    classes: np.ndarray
    instances: np.ndarray
    boxes: list[Box]
    region: np.ndarray | None = None
    trusted: np.ndarray | None = None

    def __repr__(self) -> str:
        # the make-up of the labels, not two printed maps and every box
        height, width = self.classes.shape
        counts = np.bincount(self.classes.ravel(), minlength=IGNORE + 1)
        shares = ", ".join(
            f"{100 * counts[value] / self.classes.size:.0f}% {word}"
            for value, word in (
                (CELL, "cell"),
                (BOUNDARY, "boundary"),
                (BACKGROUND, "background"),
                (IGNORE, "ignore"),
            )
        )
        extra = "" if self.region is None else ", in a region"
        if self.trusted is not None:
            extra += f", {int(np.count_nonzero(self.trusted))} trusted pixels"
        return f"Supervision({height} x {width} px, {len(self.boxes)} boxes: {shares}{extra})"

    def labelled_window(
        self, labels: np.ndarray | None = None, margin: int = 0
    ) -> tuple[slice, slice]:
        """The rows and columns that hold every pixel training learns from, and ``margin``.

        Those are the pixels that are not ignore (255) in :attr:`classes` or in ``labels``,
        and the boxes (the exchange writes labels anywhere in a box).

        Parameters
        ----------
        labels : numpy.ndarray, optional
            The supervision as the user left it (painted over).
        margin : int
            Pixels of context kept around them, within the image.

        Returns
        -------
        tuple of slice
            ``(rows, cols)``; the whole image when no pixel is labelled.
        """
        known = self.classes != IGNORE
        if labels is not None:
            known |= labels != IGNORE
        known |= boxes_mask(known.shape, self.boxes)
        window = []
        for axis, size in enumerate(known.shape):
            used = np.flatnonzero(known.any(axis=1 - axis))
            if not used.size:
                return slice(0, known.shape[0]), slice(0, known.shape[1])
            window.append(
                slice(max(int(used[0]) - margin, 0), min(int(used[-1]) + 1 + margin, size))
            )
        return window[0], window[1]

    def crop(self, window: tuple[slice, slice]) -> Supervision:
        """This supervision on a part of its image.

        Parameters
        ----------
        window : tuple of slice
            ``(rows, cols)`` of the part, with steps of 1.

        Returns
        -------
        Supervision
            The part, boxes moved with it; this one itself for the whole image.
        """
        if tuple(window) == tuple(slice(0, n) for n in self.classes.shape):
            return self
        shift = np.array([window[0].start, window[1].start], float)
        return Supervision(
            classes=self.classes[window].copy(),
            instances=self.instances[window].copy(),
            boxes=[replace(b, center=tuple(np.asarray(b.center) - shift)) for b in self.boxes],
            region=None if self.region is None else self.region[window].copy(),
            trusted=None if self.trusted is None else self.trusted[window].copy(),
        )


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
    if labels.dtype.kind in "iu":
        # the classes are 0, 1, 2 and 255: comparisons take a few ms at 2048² where np.isin
        # takes 30-70, and Train runs this on the main thread
        small = labels.astype(np.uint8)
        outside = ((small > BOUNDARY) & (small != IGNORE)) | (small != labels)
    else:  # floats: only whole class values, cast once they are known to be (NaN warns)
        outside = ~np.isin(labels, CLASS_VALUES)
        small = None
    if outside.any():
        raise ValueError(
            f"{name} contains label values {np.unique(labels[outside])[:5].tolist()} that are "
            f"not classes; paint with 0 (background), 1 (cell), 2 (boundary) or {IGNORE} "
            "(ignore)."
        )
    return labels.astype(np.uint8) if small is None else small


def _named(box: Box, k: int) -> str:
    """How a message that begins with it names box ``k``."""
    name = box.describe(k)
    return name[:1].upper() + name[1:]


def _check_boxes(shape: tuple[int, int], boxes: Sequence[Box], numbers: Sequence[int]) -> None:
    partly = []
    for k, (box, number) in enumerate(zip(boxes, numbers, strict=True)):
        if not isinstance(box, Box):
            raise TypeError(
                f"boxes[{k}] is a {type(box).__name__}, not a Box; convert shapes with "
                "boxes_from_shapes."
            )
        if box.too_small:
            h0, h1 = box.half_sizes
            raise ValueError(
                f"{_named(box, number)} is {2 * h0:g} x {2 * h1:g} pixels; a box must be at least "
                f"{MIN_BOX_SIZE:g} pixels wide and tall. Redraw it around the whole cell or "
                "delete it."
            )
        if not box.overlaps(shape):
            swapped = Box(box.center[::-1], box.half_sizes[::-1], -box.angle, box.kind)
            hint = (
                " Its numbers look like x, y: a box row is y0, x0, y1, x1 (row first), as "
                "regionprops gives it; swap the columns."
                if swapped.within(shape)
                else ""
            )
            if all(s.stop > s.start for s in box.slices(shape)):
                where = (
                    f"reaches the image of shape {shape} only outside its ellipse: the cell it "
                    "stands for lies off the image"
                )
            else:
                where = f"lies wholly outside the image of shape {shape}"
            raise ValueError(
                f"{_named(box, number)} {where}; delete it or move it onto the image.{hint}"
            )
        if not box.within(shape):
            partly.append(number)
    if partly:
        shown = ", ".join(str(k) for k in partly[:10]) + (" ..." if len(partly) > 10 else "")
        warnings.warn(
            f"{len(partly)} box(es) reach past the image border (box {shown}); they are clipped "
            f"to the image of shape {shape}.",
            UserWarning,
            stacklevel=3,
        )


def boxes_mask(shape: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    """The pixels whose centres lie inside any of ``boxes``.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    boxes : sequence of Box
        The boxes (rotated ones too).

    Returns
    -------
    numpy.ndarray
        bool, of ``shape``.
    """
    mask = np.zeros(tuple(shape), bool)
    for box in boxes:
        slices, u, v = box.local_coords(mask.shape)
        mask[slices] |= inside_box(u, v)
    return mask


def make_supervision(
    shape: Sequence[int],
    boxes: Sequence[Box] | np.ndarray,
    *,
    region: np.ndarray | None = None,
    edge_width: int = 1,
    numbers: Sequence[int] | None = None,
) -> Supervision:
    """The ellipse supervision of one image from its boxes (round-0 label).

    Each box's largest inscribed ellipse (rotated with the box) is a cell: the pixel centred
    at ``(i, j)`` is inside when ``u**2 + v**2 <= 1`` (see :meth:`Box.local_coords`). A pixel
    inside several ellipses belongs to the one with the smallest normalised distance
    ``u**2 + v**2`` (ties: the earlier box). Every instance's inner edge, which includes the
    dividing lines where the owner changes, is boundary. The box corners outside the ellipse
    are background like the rest of the image; the engine decides how to trust them. A box
    that repeats an earlier one (:func:`~napari_mutualseg.boxes.repeated_boxes`, the same cell
    boxed twice) is left out with a warning: it would get none of the cell's pixels.

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
    numbers : sequence of int, optional
        How the user counts the boxes (a Shapes layer's index, a table's row), one per box;
        messages name boxes by them. ``None`` (default): their places in ``boxes``. The
        numbers :func:`~napari_mutualseg.boxes.usable_boxes` gives for the boxes it keeps.

    Returns
    -------
    Supervision

    Raises
    ------
    ValueError
        No boxes, a box whose ellipse lies outside the image (:meth:`Box.overlaps`) or that
        is smaller than 2 pixels, an image shape that is not 2D, a region of another shape,
        an edge width below 1, or not one number per box.

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
    if np.ndim(shape) > 1:
        raise ValueError(
            f"make_supervision takes the image's shape (H, W), but was given an array of shape "
            f"{np.shape(shape)}: pass image.shape (image.plane_shape for an AxisImage)."
        )
    shape = tuple(int(s) for s in np.atleast_1d(np.asarray(shape)))
    if len(shape) != 2:
        raise ValueError(
            f"make_supervision needs a 2D image shape (H, W), got {shape}. For a stack, make "
            "one supervision per plane (boxes_by_plane groups the boxes); for RGB, pass "
            "image.shape[:2]."
        )
    if min(shape) < 1:
        raise ValueError(f"The image shape {shape} is empty.")
    boxes = boxes_from_shapes(boxes)
    if not boxes:
        raise ValueError(
            "No boxes: give at least one box around a cell (in napari, a rectangle on the "
            "boxes layer)."
        )
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
    numbers = box_numbers(numbers, len(boxes))
    h, w = shape
    _check_boxes((h, w), boxes, numbers)
    repeated = repeated_boxes(boxes)
    if repeated:
        shown = ", ".join(
            f"box {numbers[k]} repeats box {numbers[j]}" for k, j in list(repeated.items())[:5]
        )
        warnings.warn(
            f"{len(repeated)} box(es) repeat an earlier box on the same cell ({shown}); each "
            "cell is counted once.",
            UserWarning,
            stacklevel=2,
        )
    numbers = [n for k, n in enumerate(numbers) if k not in repeated]
    boxes = [b for k, b in enumerate(boxes) if k not in repeated]

    instances = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float64)
    for k, box in enumerate(boxes):
        # Per-box work on its own bounding slices keeps this linear in the boxes' area.
        sl, u, v = box.local_coords(shape)
        dist = u * u + v * v
        take = (dist <= 1.0) & (dist < best[sl])
        instances[sl][take] = k + 1
        best[sl][take] = dist[take]
    _warn_hidden(instances, boxes, numbers)

    classes = _cell_classes(instances, edge_width)
    if region is not None:
        classes[~region & (instances == 0)] = IGNORE
    return Supervision(classes=classes, instances=instances, boxes=boxes, region=region)


def _warn_hidden(instances: np.ndarray, boxes: Sequence[Box], numbers: Sequence[int]) -> None:
    """Warn of the boxes that own no pixel: each lies where another box's ellipse is deeper
    (a box inside another near its centre), so its cell has no pixel of its own."""
    # the cells' pixels only: at 4096², 0.07 s where counting every pixel's id takes 0.11
    owned = np.bincount(instances[instances > 0], minlength=len(boxes) + 1)[1:]
    hidden = np.flatnonzero(owned == 0)
    if not hidden.size:
        return
    shown = []
    for k in hidden[:5]:
        sl, u, v = boxes[k].local_coords(instances.shape)
        owner = np.bincount(instances[sl][u * u + v * v <= 1.0]).argmax() - 1
        shown.append(f"box {numbers[k]} inside box {numbers[owner]}")
    warnings.warn(
        f"{hidden.size} box(es) have no pixel in the supervision ({', '.join(shown)}): each "
        "lies where the ellipse of another box is deeper, which takes its pixels. Delete one "
        "of two boxes drawn around the same cell; paint a small cell that lies on a larger "
        "one on the supervision.",
        UserWarning,
        stacklevel=3,
    )


def _cell_classes(instances: np.ndarray, edge_width: int) -> np.ndarray:
    """Class map of instances: cell inside each, boundary on its inner edge, background around.

    Inner boundaries mark both each instance's edge against background and the pixels on
    either side of a line where two instances touch, so two cells never share a cell-class
    border.
    """
    boundary = _inner_boundaries(instances)
    if edge_width > 1:
        boundary = ndi.binary_dilation(boundary, iterations=edge_width - 1)
    boundary &= instances > 0
    classes = np.full(instances.shape, BACKGROUND, np.uint8)
    classes[instances > 0] = CELL
    classes[boundary] = BOUNDARY
    return classes


def _inner_boundaries(instances: np.ndarray, background: bool = True) -> np.ndarray:
    """The pixels of each instance with a side neighbour of another label (background too):
    ``skimage.segmentation.find_boundaries(instances, mode="inner")``, found by comparing
    neighbours along each axis in a tenth of the time of its grey dilation and erosion (a
    tenth of a second at 2048², paid by every supervision from boxes or corrections).
    Without ``background``, only neighbours of another instance count (where cells touch)."""
    edge = np.zeros(instances.shape, bool)
    for axis in range(instances.ndim):
        head = (slice(None),) * axis + (slice(1, None),)
        tail = (slice(None),) * axis + (slice(None, -1),)
        a, b = instances[head], instances[tail]
        differ = a != b if background else (a != b) & (a != 0) & (b != 0)
        edge[head] |= differ
        edge[tail] |= differ
    return edge & (instances != 0)


def supervision_from_masks(
    labels: np.ndarray,
    *,
    cells: Sequence[int] | np.ndarray | None = None,
    background: np.ndarray | None = None,
    boxes: Sequence[Box] | np.ndarray | None = None,
    rest: str = "ignore",
    edge_width: int = 1,
) -> Supervision:
    """Supervision from a corrected segmentation: trusted whole cells, boxes, and the rest.

    The trusted cells are whole masks: cell inside, boundary on their inner edge, and
    background on the :data:`TRUSTED_RING` pixels around them that belong to no other cell.
    These pixels (and ``background``) are :attr:`Supervision.trusted`: the engine keeps them
    in every round, whatever the networks predict. ``boxes`` are ordinary boxes (a cell the
    prediction missed), handled by the exchange as on a boxed image. The rest of the image is
    either ignored (``rest="ignore"``: only what the person checked is known) or trusted as
    shown (``rest="trusted"``: every cell of ``labels`` is right and the rest is background).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` integer instance labels as the person left them (0 background).
    cells : sequence of int, optional
        Ids of the cells of ``labels`` that are trusted with ``rest="ignore"`` (e.g. from
        :func:`corrected_cells`); default every cell. With ``rest="trusted"`` every cell is.
    background : numpy.ndarray, optional
        bool ``(H, W)``: further pixels known to be background (e.g. where a wrong cell was
        deleted).
    boxes : sequence of Box or array_like, optional
        Boxes around cells that have no mask (anything :func:`make_supervision` accepts).
    rest : {"ignore", "trusted"}
        What the pixels that are neither trusted nor boxed are.
    edge_width : int
        Thickness of the boundary in pixels.

    Returns
    -------
    Supervision
        ``instances`` and ``boxes`` hold the boxes only; ``trusted`` the certain pixels.

    Raises
    ------
    ValueError
        For labels that are not a 2D integer image, an unknown ``rest``, a ``background`` of
        another shape, an image with nothing trusted and no box, or a bad box.

    Examples
    --------
    >>> corrected = np.zeros((64, 64), np.int32)
    >>> corrected[10:20, 10:22] = 1             # a cell the person painted
    >>> sup = supervision_from_masks(corrected, boxes=[Box.from_corners(30, 30, 50, 52)])
    >>> int(sup.trusted.sum()), int((sup.classes == IGNORE).sum()) > 0
    (212, True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(
            f"A corrected segmentation must be a 2D integer label image, got shape "
            f"{labels.shape} and dtype {labels.dtype}; pass one plane of a Labels layer."
        )
    if rest not in REST_MODES:
        raise ValueError(f"rest must be one of {REST_MODES}, got {rest!r}.")
    labels = labels.astype(np.int64, copy=False)
    shape = labels.shape
    if background is None:
        background = np.zeros(shape, bool)
    background = np.asarray(background, bool)
    if background.shape != shape:
        raise ValueError(
            f"The background mask has shape {background.shape} but the labels are {shape}."
        )
    boxes = boxes_from_shapes(() if boxes is None else boxes)
    in_box = boxes_mask(shape, boxes)
    if rest == "trusted" or cells is None:
        masks = labels
    else:
        masks = np.where(np.isin(labels, np.asarray(cells, np.int64)), labels, 0)
    if rest == "trusted":
        trusted = ~in_box | (masks > 0)
    else:
        ring = ndi.binary_dilation(masks > 0, iterations=TRUSTED_RING) & (labels == 0)
        trusted = (masks > 0) | ((ring | background) & ~in_box)
    if not boxes and not trusted.any():
        raise ValueError(
            "Nothing to learn from: no corrected cell, no background and no box. Fix, paint or "
            "box at least one cell."
        )
    if boxes:
        region = None if rest == "trusted" else trusted | in_box
        sup = make_supervision(shape, boxes, region=region, edge_width=edge_width)
    else:
        fill = BACKGROUND if rest == "trusted" else IGNORE
        sup = Supervision(
            classes=np.full(shape, fill, np.uint8),
            instances=np.zeros(shape, np.int32),
            boxes=[],
            region=None if rest == "trusted" else trusted,
        )
    known = _cell_classes(masks, edge_width)
    sup.classes[trusted] = known[trusted]
    sup.trusted = trusted
    return sup


def corrected_cells(predicted: np.ndarray, corrected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which cells a person changed in a predicted segmentation, and what they deleted.

    A cell of ``corrected`` is unchanged when it covers exactly the pixels of one predicted
    cell (whatever its id); every other cell (painted anew, grown, trimmed, split off, merged)
    is changed. A cell the person painted over in part is changed too, and trusted as left.

    Parameters
    ----------
    predicted : numpy.ndarray
        The integer instance labels as predicted.
    corrected : numpy.ndarray
        The same labels after the person's corrections.

    Returns
    -------
    cells : numpy.ndarray
        Sorted ids (in ``corrected``) of the changed cells.
    removed : numpy.ndarray
        bool mask of pixels that were a cell and are background now (deleted cells, trimmed
        edges): background the person asserted.

    Examples
    --------
    >>> predicted = np.zeros((8, 8), np.int32)
    >>> predicted[1:3, 1:3], predicted[5:7, 5:7] = 1, 2
    >>> corrected = predicted.copy()
    >>> corrected[5:7, 5:7] = 0                 # a wrong cell deleted
    >>> corrected[1:4, 1:3] = 7                 # a cell grown, painted with another id
    >>> cells, removed = corrected_cells(predicted, corrected)
    >>> cells.tolist(), int(removed.sum())
    ([7], 4)
    """
    predicted, corrected = np.asarray(predicted), np.asarray(corrected)
    if predicted.shape != corrected.shape:
        raise ValueError(
            f"The corrected labels {corrected.shape} and the prediction {predicted.shape} "
            "differ in shape: correct the prediction of this image."
        )
    # counted per id in linear time: sorting the pairs of ids took a second at 2048²
    c, c_ids = _as_indices(corrected)
    p, p_ids = _as_indices(predicted)
    # k is unchanged when all its pixels are one predicted cell j > 0 and all of j's are k
    j_of_k, k_mixed = _partner(c, p, len(c_ids))
    _, j_mixed = _partner(p, c, len(p_ids))
    present = np.bincount(c, minlength=len(c_ids)) > 0
    unchanged = ~k_mixed & (p_ids[j_of_k] > 0) & ~j_mixed[j_of_k]
    cells = c_ids[present & (c_ids > 0) & ~unchanged]
    removed = (predicted > 0) & (corrected == 0)
    return cells, removed


def _as_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of ``labels`` as indices into the ids they hold (an index per id, counted
    with ``np.bincount``), and those ids: the ids themselves where they are small enough,
    else renumbered (negative ids, or ids far beyond the number of pixels)."""
    flat = labels.ravel()
    low, high = int(flat.min(initial=0)), int(flat.max(initial=0))
    if low < 0 or high > max(flat.size, np.iinfo(np.uint16).max):
        ids, index = np.unique(flat.astype(np.int64, copy=False), return_inverse=True)
        return index.astype(np.intp, copy=False), ids
    return flat.astype(np.intp, copy=False), np.arange(high + 1, dtype=np.int64)


def _partner(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of the ``n`` ids of ``a``: an id of ``b`` on one of its pixels, and whether
    its pixels hold other ids of ``b`` too."""
    partner = np.zeros(n, np.intp)
    partner[a] = b  # whichever pixel's id is kept, it is one of them
    mixed = np.bincount(a[b != partner[a]], minlength=n) > 0
    return partner, mixed
