"""Boxes drawn around cells: geometry, the pixel convention and every rule a box must meet.

Coordinates follow napari: pixel ``(i, j)`` is centred at ``(i, j)``; a plain box row
``y0, x0, y1, x1`` is a half-open pixel range whose corners lie at ``(y0 - 0.5, x0 - 0.5)``
and ``(y1 - 0.5, x1 - 0.5)``. :meth:`Box.from_corners` and :meth:`Box.pixel_range` are the
only places that convert between the two.

The rules live here once, for the Python API, the command line and the napari widget alike:
which shapes are boxes (:data:`BOX_TYPES`), how small a box may be (:data:`MIN_BOX_SIZE`),
how a box on a stack finds its plane (:func:`boxes_by_plane`), when a box repeats another
(:func:`repeated_boxes`) and which boxes of a drawing can be used on an image
(:func:`usable_boxes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import regionprops

__all__ = [
    "BOX_COLUMNS",
    "BOX_TYPES",
    "MIN_BOX_SIZE",
    "PLANE_TOLERANCE",
    "REGION_MIN_BOXES",
    "Box",
    "box_numbers",
    "boxes_by_plane",
    "boxes_from_labels",
    "boxes_from_shapes",
    "inside_box",
    "off_image",
    "rectangle_vertices",
    "region_boxes",
    "repeated_boxes",
    "shapes_by_plane",
    "usable_boxes",
]

#: napari shape types that can stand for a cell's box.
BOX_TYPES = ("rectangle", "ellipse")

#: The columns of a table of boxes, ``y0, x0, y1, x1`` in this order: a plain box table's, and
#: those of scikit-image's ``regionprops_table(labels, properties=["bbox"])`` of a 2D image.
BOX_COLUMNS = (("y0", "x0", "y1", "x1"), ("bbox-0", "bbox-1", "bbox-2", "bbox-3"))

#: Boxes narrower than this (pixels) have no interior once the edge is drawn: a click
#: without a drag, not a cell.
MIN_BOX_SIZE = 2.0

#: How far (in planes) the vertices of one box may spread along the stack axis: float noise
#: of layer transforms, never a box drawn across planes in a 3D view.
PLANE_TOLERANCE = 1e-3

# Slack for coordinates that should be exact but went through float arithmetic
# (napari rotations, vertex averaging).
_EPS = 1e-6

#: A box that wholly holds this many other boxes is a region drawn around cells (a QuPath
#: parent annotation, an area marked on the boxes layer), not a cell: of the 23,615 nuclei of
#: BBBC039, none holds more than 4 others, with exact or jittered boxes.
REGION_MIN_BOXES = 5


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


@dataclass(frozen=True)
class Box:
    """A (possibly rotated) rectangle and its largest inscribed ellipse.

    Parameters
    ----------
    center : tuple of float
        ``(y, x)`` centre in napari data coordinates (pixel ``(i, j)`` is centred at ``(i, j)``).
    half_sizes : tuple of float
        Half extents along the box's own axes (first, second). For ``angle == 0`` the first
        axis is the image's y axis, so ``half_sizes == (half height, half width)``.
    angle : float
        Radians: rotation of the box's first axis away from the image y axis (towards +x).
    kind : {"rectangle", "ellipse"}
        What the user drew: a rectangle around the cell, or a napari ellipse shape (then the
        box is the ellipse's bounding rectangle and its inscribed ellipse is the shape itself).
    """

    center: tuple[float, float]
    half_sizes: tuple[float, float]
    angle: float = 0.0
    kind: str = "rectangle"

    def __post_init__(self) -> None:
        center = tuple(float(c) for c in self.center)
        half = tuple(float(h) for h in self.half_sizes)
        if len(center) != 2 or len(half) != 2:
            raise ValueError(
                f"A Box needs a 2D centre and two half sizes, got center={self.center!r}, "
                f"half_sizes={self.half_sizes!r}."
            )
        values = (*center, *half, float(self.angle))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"Box coordinates must be finite numbers, got {values}.")
        if min(half) < 0:
            raise ValueError(f"Box half sizes must not be negative, got {half}.")
        if self.kind not in BOX_TYPES:
            raise ValueError(f"Box kind must be one of {BOX_TYPES}, got {self.kind!r}.")
        # Normalise to plain floats so that boxes compare and hash by value.
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "half_sizes", half)
        object.__setattr__(self, "angle", float(self.angle))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_corners(
        cls, y0: float, x0: float, y1: float, x1: float, kind: str = "rectangle"
    ) -> Box:
        """The box of a half-open pixel range: rows ``y0 .. y1 - 1``, columns ``x0 .. x1 - 1``.

        Parameters
        ----------
        y0, x0, y1, x1 : float
            Bounding box as in ``skimage.measure.regionprops(...).bbox``.
        kind : {"rectangle", "ellipse"}
            See :class:`Box`.

        Returns
        -------
        Box
            Axis-aligned box (``angle == 0``).
        """
        y0, x0, y1, x1 = (float(c) for c in (y0, x0, y1, x1))
        if y1 < y0 or x1 < x0:
            raise ValueError(
                f"y0, x0, y1, x1 = {_fmt((y0, x0, y1, x1))} is inverted: y1 must be >= y0 "
                "and x1 >= x0 (rows y0..y1-1, columns x0..x1-1). Boxes as x, y, width, "
                "height (COCO's) are y, x, y + height, x + width."
            )
        # Pixel k spans k - 0.5 .. k + 0.5, so the range's centre is half a pixel up-left.
        center = ((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5)
        return cls(center, ((y1 - y0) / 2, (x1 - x0) / 2), 0.0, kind)

    @classmethod
    def from_vertices(cls, vertices: Any, kind: str = "rectangle") -> Box:
        """The box of a napari rectangle (or ellipse) shape: its 4 ``(y, x)`` vertices.

        The vertices may come in any order and the rectangle may be rotated. The first axis
        is the edge direction closest to the image y axis, so ``angle`` lies in
        ``(-pi/4, pi/4]`` and an axis-aligned rectangle gets ``angle == 0``.

        Parameters
        ----------
        vertices : array_like
            ``(4, 2)`` corners in napari data coordinates.
        kind : {"rectangle", "ellipse"}
            See :class:`Box`.

        Returns
        -------
        Box

        Raises
        ------
        ValueError
            When the vertices are not 4 points in 2D or do not form a rectangle.
        """
        v = np.asarray(vertices, dtype=np.float64)
        if v.shape != (4, 2):
            raise ValueError(
                f"A box needs 4 vertices (y, x), got an array of shape {v.shape}. Draw boxes "
                "with napari's rectangle tool."
            )
        if not np.isfinite(v).all():
            raise ValueError(f"Box vertices must be finite numbers, got {v.tolist()}.")
        p0 = v[0]
        dist = np.linalg.norm(v[1:] - p0, axis=1)
        opposite = 1 + int(np.argmax(dist))
        a, b = (v[i] for i in range(1, 4) if i != opposite)
        diag = float(dist.max())
        tol = 1e-3 * diag + _EPS
        # A parallelogram's diagonals bisect each other; a rectangle's are also equally long.
        bisect = np.linalg.norm((p0 + v[opposite]) - (a + b)) / 2
        equal = abs(np.linalg.norm(v[opposite] - p0) - np.linalg.norm(a - b))
        if bisect > tol or equal > tol:
            raise ValueError(
                f"The vertices {np.round(v, 3).tolist()} do not form a rectangle (a "
                f"non-rectangular quadrilateral); draw boxes with napari's rectangle tool."
            )
        center = v.mean(axis=0)
        edges = [a - p0, b - p0]
        # The angle of each edge folded into (-pi/2, pi/2]; the first axis is the edge nearer y.
        angles = []
        for e in edges:
            t = math.atan2(e[1], e[0])
            if t <= -math.pi / 2:
                t += math.pi
            elif t > math.pi / 2:
                t -= math.pi
            angles.append(t)
        first = 0 if _closer_to_y(angles[0], angles[1]) else 1
        angle = angles[first]
        if np.linalg.norm(edges[first]) < _EPS:
            angle = 0.0
        half = (
            float(np.linalg.norm(edges[first])) / 2,
            float(np.linalg.norm(edges[1 - first])) / 2,
        )
        # Edge lengths below float noise: an axis-aligned degenerate box.
        if abs(angle) < 1e-9:
            angle = 0.0
        return cls((float(center[0]), float(center[1])), half, angle, kind)

    # ------------------------------------------------------------------ geometry

    @property
    def corners(self) -> np.ndarray:
        """``(4, 2)`` corner vertices in napari coordinates, in order around the box."""
        d0, d1 = self._axes()
        c = np.asarray(self.center)
        h0, h1 = self.half_sizes
        signs = ((-1, -1), (-1, 1), (1, 1), (1, -1))
        return np.array([c + s0 * h0 * d0 + s1 * h1 * d1 for s0, s1 in signs])

    @property
    def extent(self) -> tuple[float, float]:
        """Half extents of the box's axis-aligned bounding rectangle ``(y, x)``."""
        c, s = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        h0, h1 = self.half_sizes
        return (c * h0 + s * h1, s * h0 + c * h1)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounding rectangle ``(ymin, xmin, ymax, xmax)`` in napari coordinates."""
        ey, ex = self.extent
        cy, cx = self.center
        return (cy - ey, cx - ex, cy + ey, cx + ex)

    def pixel_range(self) -> tuple[float, float, float, float]:
        """The bounding rectangle as a half-open pixel range.

        The inverse of :meth:`from_corners` for axis-aligned boxes.

        Returns
        -------
        tuple of float
            ``y0, x0, y1, x1``.
        """
        ymin, xmin, ymax, xmax = self.bounds
        return (ymin + 0.5, xmin + 0.5, ymax + 0.5, xmax + 0.5)

    def describe(self, k: int) -> str:
        """How messages name this box.

        Parameters
        ----------
        k : int
            The box's index.

        Returns
        -------
        str
            ``box k`` with its pixel range, or its centre, size and angle if rotated.
        """
        if self.angle == 0.0:
            return f"box {k} (y0, x0, y1, x1 = {_fmt(self.pixel_range())})"
        return (
            f"box {k} (centre {_fmt(self.center)}, size {_fmt(2 * h for h in self.half_sizes)}, "
            f"angle {math.degrees(self.angle):g} degrees)"
        )

    def repeats(self, other: Box) -> bool:
        """Whether this box covers the same pixels as ``other``: the same cell drawn twice.

        Corners within half a pixel of each other count as the same box (a copy, a table row
        given twice), whichever shape drew them: a rectangle's inscribed ellipse is the same
        as an ellipse drawn in it. The later of two such boxes would get none of the cell's
        pixels.

        Parameters
        ----------
        other : Box
            Another box on the same plane.

        Returns
        -------
        bool
        """
        gaps = np.abs(self.corners[:, None] - other.corners[None]).max(axis=2)
        # Each corner close to some corner of the other box: the same rectangle, whatever
        # corner each drawing started from.
        return bool((gaps.min(axis=1) < 0.5).all() and (gaps.min(axis=0) < 0.5).all())

    @property
    def too_small(self) -> bool:
        """Whether the box is narrower than :data:`MIN_BOX_SIZE` along either axis."""
        return 2 * min(self.half_sizes) < MIN_BOX_SIZE - _EPS

    def overlaps(self, shape: Sequence[int]) -> bool:
        """Whether the box's cell lies on an image, at least in part: a pixel centre of the
        image lies in its ellipse.

        A box that reaches the image only outside its ellipse (a corner) stands for a cell off
        the image.

        Parameters
        ----------
        shape : tuple of int
            Image shape ``(H, W)``.

        Returns
        -------
        bool
        """
        if not all(s.stop > s.start for s in self.slices(shape)):
            return False
        if self.within(shape):
            # the ellipse of a box of MIN_BOX_SIZE holds the disc of radius 1 about its centre,
            # which holds a pixel centre, itself in the box
            return True
        _, u, v = self.local_coords(shape)
        return bool((u * u + v * v <= 1.0).any())

    def within(self, shape: Sequence[int]) -> bool:
        """Whether the whole box lies on an image (nothing to clip).

        Parameters
        ----------
        shape : tuple of int
            Image shape ``(H, W)``.

        Returns
        -------
        bool
        """
        ymin, xmin, ymax, xmax = self.pixel_range()
        return min(ymin, xmin) >= -_EPS and ymax <= shape[0] + _EPS and xmax <= shape[1] + _EPS

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([c, s]), np.array([-s, c])

    def slices(self, shape: Sequence[int]) -> tuple[slice, slice]:
        """Bounding slices of the pixels whose centres lie in the box, clipped to ``shape``.

        Parameters
        ----------
        shape : tuple of int
            Image shape ``(H, W)``.

        Returns
        -------
        tuple of slice
            Empty slices (``start == stop``) when the box lies outside the image.
        """
        ymin, xmin, ymax, xmax = self.bounds
        out = []
        for lo, hi, n in ((ymin, ymax, shape[0]), (xmin, xmax, shape[1])):
            start = min(max(math.ceil(lo - _EPS), 0), int(n))
            stop = max(min(math.floor(hi + _EPS) + 1, int(n)), start)
            out.append(slice(start, stop))
        return out[0], out[1]

    def local_coords(
        self, shape: Sequence[int]
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Normalised box coordinates of the pixel centres in :meth:`slices`.

        Parameters
        ----------
        shape : tuple of int
            Image shape ``(H, W)``.

        Returns
        -------
        slices : tuple of slice
            As :meth:`slices`.
        u, v : numpy.ndarray
            float64 arrays of the slices' shape: the coordinates along the box's first and
            second axes divided by the half sizes. The box is ``max(|u|, |v|) <= 1``, its
            ellipse ``u**2 + v**2 <= 1`` and the ellipse's core at scale ``s`` is
            ``u**2 + v**2 <= s**2``.
        """
        sl = self.slices(shape)
        dy = np.arange(sl[0].start, sl[0].stop, dtype=np.float64)[:, None] - self.center[0]
        dx = np.arange(sl[1].start, sl[1].stop, dtype=np.float64)[None, :] - self.center[1]
        # A degenerate axis would divide by zero; such boxes are rejected by make_supervision.
        h0, h1 = (max(h, 1e-12) for h in self.half_sizes)
        if self.angle == 0.0:
            # cos 0 and sin 0 are exactly 1 and 0, so the rotation below leaves dy and dx as
            # they are, to the last bit: only the division is done, a third of the time of
            # this function that every box's mask, ellipse and object is read through (16,384
            # boxes at 4096², several times a training round)
            size = (dy.size, dx.size)
            return sl, np.divide(dy, h0, out=np.empty(size)), np.divide(dx, h1, out=np.empty(size))
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (dy * c + dx * s) / h0
        v = (dx * c - dy * s) / h1
        return sl, u, v


def inside_box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The pixels inside their box, from its coordinates (:meth:`Box.local_coords`).

    Parameters
    ----------
    u, v : numpy.ndarray
        A box's normalised coordinates of its pixels.

    Returns
    -------
    numpy.ndarray
        bool: ``max(|u|, |v|) <= 1``.
    """
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _closer_to_y(t0: float, t1: float) -> bool:
    """Whether an edge at angle t0 (folded to (-pi/2, pi/2]) is nearer the y axis than t1.

    Ties (45 degrees) go to the positive angle, so that the angle lies in (-pi/4, pi/4].
    """
    a0, a1 = abs(t0), abs(t1)
    if abs(a0 - a1) > 1e-9:
        return a0 < a1
    return t0 >= t1


# ---------------------------------------------------------------------- napari shapes


def _shape_types(shape_types: str | Sequence[str] | None, n: int) -> list[str]:
    if shape_types is None:
        return ["rectangle"] * n
    if isinstance(shape_types, str):
        return [shape_types] * n
    types = [str(t) for t in shape_types]
    if len(types) != n:
        raise ValueError(f"Got {n} shapes but {len(types)} shape types; give one type per shape.")
    return types


def _check_type(kind: str, k: int) -> None:
    if kind not in BOX_TYPES:
        raise ValueError(
            f"Shape {k} is a {kind!r}: only rectangles and ellipses are boxes. Remove it from "
            "the boxes layer (draw polygons, paths and lines on another layer) or redraw it "
            "with the rectangle tool."
        )


def boxes_from_shapes(data: Any, shape_types: str | Sequence[str] | None = None) -> list[Box]:
    """Boxes from napari Shapes data or from a table of ``y0, x0, y1, x1`` rows.

    The one conversion of boxes in any form: the API, the box tables and the widget use it.

    Parameters
    ----------
    data : list of Box or array_like, array_like, pandas.DataFrame or dict
        :class:`Box` es (returned as they are); a napari Shapes layer's ``data`` (one
        ``(4, 2)`` vertex array per shape, any vertex order, possibly rotated); an ``(N, 4)``
        array of half-open pixel boxes ``y0, x0, y1, x1``; or a table of them (a DataFrame
        or a dict of columns) with the columns ``y0, x0, y1, x1`` or those of
        ``skimage.measure.regionprops_table(labels, properties=["bbox"])``, ``bbox-0`` to
        ``bbox-3``; other columns are left out.
    shape_types : str or sequence of str, optional
        The layer's ``shape_type`` (one per shape, or one for all); default all rectangles.
        Only ``"rectangle"`` and ``"ellipse"`` are boxes. Ignored for an ``(N, 4)`` table.

    Returns
    -------
    list of Box

    Raises
    ------
    ValueError
        For shapes that are not rectangles or ellipses, shapes that are not 2D, or vertices
        that do not form a rectangle.

    Examples
    --------
    >>> boxes_from_shapes(np.array([[10, 20, 30, 40]]))[0].center
    (19.5, 29.5)
    """
    if isinstance(data, Mapping) or hasattr(data, "columns"):
        return _boxes_from_rows(_table_rows(data))
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 4:
        return _boxes_from_rows(data)
    if isinstance(data, np.ndarray) and data.shape == (4, 2):
        data = [data]
    items = list(data)
    if all(isinstance(item, Box) for item in items):
        return items
    if all(np.ndim(item) == 1 and np.size(item) == 4 for item in items):
        return _boxes_from_rows(np.asarray(items, dtype=np.float64))
    types = _shape_types(shape_types, len(items))
    boxes = []
    for k, (verts, kind) in enumerate(zip(items, types, strict=True)):
        _check_type(kind, k)
        try:
            v = np.asarray(verts, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"Shape {k} is {verts!r}, not a box: give Box es, y0, x0, y1, x1 rows or "
                "napari rectangles (4 (y, x) vertices each)."
            ) from None
        if v.ndim == 2 and v.shape[1] == 3:
            raise ValueError(
                f"Shape {k} has 3D vertices {v.shape}: shapes drawn on a stack carry their "
                "plane; use boxes_by_plane to split them by plane."
            )
        if v.shape != (4, 2):
            raise ValueError(
                f"Shape {k} ({kind}) has vertices of shape {v.shape}; a box needs 4 vertices "
                "(y, x)."
            )
        try:
            boxes.append(Box.from_vertices(v, kind=kind))
        except ValueError as err:
            raise ValueError(f"Shape {k}: {err}") from None
    return boxes


def box_columns(names: Sequence[str], where: str = "The table") -> tuple[str, ...] | None:
    """The columns of ``names`` that hold ``y0, x0, y1, x1`` (:data:`BOX_COLUMNS`), or None.

    Parameters
    ----------
    names : sequence of str
        A table's column names (any case).
    where : str
        How the table is called in messages.

    Returns
    -------
    tuple of str or None
        The four columns in the order ``y0, x0, y1, x1``, as :data:`BOX_COLUMNS` spells them.

    Raises
    ------
    ValueError
        For a regionprops table of a 3D image (``bbox-0`` to ``bbox-5``): its boxes are
        boxes in z too, which this package does not take; ``where`` names it.
    """
    names = [str(n).strip().lower() for n in names]
    for wanted in BOX_COLUMNS:
        if set(wanted) <= set(names):
            if wanted[0] == "bbox-0" and "bbox-4" in names:
                raise ValueError(
                    f"{where} is a regionprops table of a 3D image (bbox-0 to bbox-5: z0, y0, "
                    "x0, z1, y1, x1), but boxes are drawn on single planes: measure each plane "
                    "on its own (regionprops_table(labels[z], properties=['bbox']))."
                )
            return wanted
    return None


def _table_rows(table: Any) -> np.ndarray:
    """The ``(N, 4)`` rows ``y0, x0, y1, x1`` of a pandas DataFrame or a dict of columns."""
    columns = table.columns if hasattr(table, "columns") else table.keys()
    names = [str(c) for c in columns]
    if names == ["0", "1", "2", "3"]:  # a DataFrame of an (N, 4) array, its columns unnamed
        return np.asarray(table, dtype=np.float64).reshape(-1, 4)
    wanted = box_columns(names)
    if wanted is None:
        raise ValueError(
            f"A table of boxes needs the columns y0, x0, y1, x1 (half-open pixel ranges) or "
            f"scikit-image's bbox-0 to bbox-3 (regionprops_table(labels, properties=['bbox'])); "
            f"this one has {', '.join(names) or 'none'}. Rename its columns to y0, x0, y1, x1."
        )
    found = {n.strip().lower(): c for n, c in zip(names, columns, strict=True)}
    return np.column_stack(
        [np.asarray(table[found[w]], dtype=np.float64).reshape(-1) for w in wanted]
    ).reshape(-1, 4)


def _boxes_from_rows(rows: np.ndarray) -> list[Box]:
    rows = np.asarray(rows, dtype=np.float64)
    boxes = []
    for k, row in enumerate(rows):
        try:
            boxes.append(Box.from_corners(*row))
        except ValueError as err:
            raise ValueError(f"Box {k}: {err}") from None
    return boxes


def boxes_by_plane(
    data: Any, shape_types: str | Sequence[str] | None = None
) -> dict[Any, list[Box]]:
    """Boxes drawn on the planes of a stack, grouped by plane.

    Parameters
    ----------
    data : list of array_like
        napari Shapes data of a 3D layer: one ``(4, 3)`` vertex array per shape, column 0 the
        plane index (the same for all vertices of one shape). A layer of more dimensions
        (e.g. ``(t, z, y, x)`` vertices) is grouped by its leading coordinates.
    shape_types : str or sequence of str, optional
        As in :func:`boxes_from_shapes`.

    Returns
    -------
    dict of int (or tuple of int) to list of Box
        Boxes per plane (per ``(t, z)``, ... with more leading axes), planes in increasing
        order, boxes in the order drawn.

    Raises
    ------
    ValueError
        As :func:`shapes_by_plane`.
    """
    items = list(data)
    types = _shape_types(shape_types, len(items))
    return {
        plane: boxes_from_shapes(
            [np.asarray(items[k], dtype=np.float64)[:, -2:] for k in ks], [types[k] for k in ks]
        )
        for plane, ks in shapes_by_plane(items, types).items()
    }


def shapes_by_plane(
    data: Any, shape_types: str | Sequence[str] | None = None
) -> dict[Any, list[int]]:
    """Which shapes of a stack were drawn on each plane: :func:`boxes_by_plane`, by the
    shapes' indices in ``data`` (how messages name them to the user).

    Parameters
    ----------
    data : list of array_like
        napari Shapes data of a 3D layer or more, as :func:`boxes_by_plane` takes it.
    shape_types : str or sequence of str, optional
        As in :func:`boxes_from_shapes`.

    Returns
    -------
    dict of int (or tuple of int) to list of int
        The indices of the shapes on each plane (``(t, z)``, ... with more leading axes),
        planes in increasing order, shapes in the order drawn.

    Raises
    ------
    ValueError
        For shapes that are not 3D or more, shapes spanning several planes or lying between
        planes or before the first, or non-box shapes.
    """
    items = list(data)
    types = _shape_types(shape_types, len(items))
    grouped: dict[Any, list[int]] = {}
    for k, (verts, kind) in enumerate(zip(items, types, strict=True)):
        _check_type(kind, k)
        v = np.asarray(verts, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] < 3:
            raise ValueError(
                f"Shape {k} has vertices of shape {v.shape}; shapes on a stack need (plane, y, "
                "x) vertices. Draw the boxes while the stack is shown in 2D, one plane at a time."
            )
        leading = v[:, :-2]
        if not np.isfinite(leading).all() or np.ptp(leading, axis=0).max() > PLANE_TOLERANCE:
            spans = np.unique(np.round(leading, 3), axis=0)
            spans = spans[:, 0] if spans.shape[1] == 1 else spans
            raise ValueError(
                f"Shape {k} spans planes {spans.tolist()}: "
                "a box must lie on one plane. Draw the boxes in the 2D view (not the 3D view), "
                "one plane at a time."
            )
        at = leading.mean(axis=0)
        if np.abs(at - np.round(at)).max() > PLANE_TOLERANCE or np.round(at).min() < 0:
            position = [float(f"{c:.4g}") for c in at]
            raise ValueError(
                f"Shape {k} lies at {'plane' if len(at) == 1 else 'position'} "
                f"{position[0] if len(at) == 1 else position}, which is no plane of a stack "
                "(planes are 0, 1, 2, ...): the boxes were drawn on a Shapes layer whose scale "
                "or translate differs from the image's. Draw them on a Shapes layer made with "
                "the image open (New shapes layer), or give it the image's scale."
            )
        where = tuple(int(c) for c in np.round(at))
        grouped.setdefault(where[0] if len(where) == 1 else where, []).append(k)
    return dict(sorted(grouped.items()))


def boxes_from_labels(labels: Any) -> list[Box]:
    """The bounding box of every cell of an instance label image, in the order of the ids.

    Each box is the half-open pixel range of ``skimage.measure.regionprops(...).bbox``, so it
    holds its cell exactly: a person proposed these boxes only fixes the wrong ones.

    Parameters
    ----------
    labels : array_like
        ``(H, W)`` integer instance labels, 0 background.

    Returns
    -------
    list of Box
        One axis-aligned rectangle per cell, by increasing id; ``[box.corners for box in
        boxes]`` are napari rectangles.

    Examples
    --------
    >>> labels = np.zeros((8, 8), np.int32)
    >>> labels[2:5, 1:4] = 3
    >>> boxes_from_labels(labels)[0].pixel_range()
    (2.0, 1.0, 5.0, 4.0)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Boxes come from a 2D integer label image, got shape {labels.shape} and dtype "
            f"{labels.dtype}; pass one plane of the cells."
        )
    return [Box.from_corners(*r.bbox) for r in regionprops(labels)]


def rectangle_vertices(rows: Any) -> list[np.ndarray]:
    """napari rectangles from half-open pixel rows ``y0, x0, y1, x1``.

    Parameters
    ----------
    rows : array_like
        ``(N, 4)`` rows ``y0, x0, y1, x1`` (one row may be given flat).

    Returns
    -------
    list of numpy.ndarray
        One ``(4, 2)`` array of ``(y, x)`` vertices per row, for a Shapes layer's ``data``.

    Examples
    --------
    >>> rectangle_vertices([[10, 20, 30, 40]])[0][0].tolist()
    [9.5, 19.5]
    """
    return [box.corners for box in _boxes_from_rows(np.asarray(rows, np.float64).reshape(-1, 4))]


def repeated_boxes(boxes: Sequence[Box]) -> dict[int, int]:
    """Which boxes repeat an earlier one (:meth:`Box.repeats`): the same cell boxed twice.

    Parameters
    ----------
    boxes : sequence of Box
        The boxes of one image plane.

    Returns
    -------
    dict of int to int
        The index of each repeat and the index of the earlier box it repeats.
    """
    # Repeats have centres within half a pixel: only boxes in neighbouring cells of a
    # one-pixel grid are compared, so a plate of thousands of boxes stays linear.
    grid: dict[tuple[int, int], list[int]] = {}
    found: dict[int, int] = {}
    for k, box in enumerate(boxes):
        cy, cx = (math.floor(c) for c in box.center)
        near = (
            j for dy in (-1, 0, 1) for dx in (-1, 0, 1) for j in grid.get((cy + dy, cx + dx), ())
        )
        first = next((j for j in sorted(near) if box.repeats(boxes[j])), None)
        if first is None:
            grid.setdefault((cy, cx), []).append(k)
        else:
            found[k] = first
    return found


def region_boxes(boxes: Sequence[Box]) -> dict[int, int]:
    """Which boxes are regions drawn around cells rather than cells: each wholly holds
    :data:`REGION_MIN_BOXES` or more of the other boxes (by their axis-aligned bounds).

    Parameters
    ----------
    boxes : sequence of Box
        The boxes of one image plane.

    Returns
    -------
    dict of int to int
        The index of each such box and how many boxes it holds.
    """
    if len(boxes) <= REGION_MIN_BOXES:
        return {}
    bounds = np.array([b.bounds for b in boxes])
    lo, hi = bounds[:, :2] - _EPS, bounds[:, 2:] + _EPS
    # The boxes a box holds begin between its top and its bottom: a run of the boxes sorted
    # by their tops, so each box is compared with the boxes of its rows only, not with all
    # of them (16,384 boxes of a 4096² plate: a minute all against all).
    order = np.argsort(bounds[:, 0], kind="stable")
    tops = bounds[order, 0]
    first = np.searchsorted(tops, lo[:, 0], side="left")
    runs = np.searchsorted(tops, hi[:, 0], side="right") - first
    found: dict[int, int] = {}
    # 512 boxes against the boxes of their rows at a time: bounded memory for any drawing
    for start in range(0, len(boxes), 512):
        ks = np.arange(start, min(start + 512, len(boxes)))
        k = np.repeat(ks, runs[ks])
        # the place of each pair in its box's run, added to where the run begins
        step = np.arange(k.size) - np.repeat(np.cumsum(runs[ks]) - runs[ks], runs[ks])
        near = bounds[order[first[k] + step]]
        holds = (near[:, 1] >= lo[k, 1]) & (near[:, 2:] <= hi[k]).all(axis=1)
        counts = np.bincount(k[holds] - start, minlength=ks.size) - 1  # each box holds itself
        for i in np.flatnonzero(counts >= REGION_MIN_BOXES):
            found[start + int(i)] = int(counts[i])
    return found


def off_image(boxes: Sequence[Box], shape: Sequence[int]) -> list[int]:
    """The boxes whose cell lies off an image (:meth:`Box.overlaps`): :func:`usable_boxes`
    leaves them out, and the command line refuses a table of mostly such boxes.

    Parameters
    ----------
    boxes : sequence of Box
        The boxes.
    shape : tuple of int
        Image shape ``(H, W)``.

    Returns
    -------
    list of int
        Their indices, of the boxes not :attr:`Box.too_small` (left out wherever they are).
    """
    return [k for k, b in enumerate(boxes) if not b.too_small and not b.overlaps(shape)]


def box_numbers(numbers: Sequence[int] | None, count: int) -> list[int]:
    """How the user counts ``count`` boxes (a Shapes layer's index, a table's row), by which
    messages name them: ``numbers``, or their places when ``None``.

    Raises
    ------
    ValueError
        When ``numbers`` does not hold one number per box.
    """
    numbers = list(range(count) if numbers is None else numbers)
    if len(numbers) != count:
        raise ValueError(
            f"numbers has {len(numbers)} entries for {count} boxes: give one per box."
        )
    return numbers


def usable_boxes(
    boxes: Sequence[Box], shape: Sequence[int], numbers: Sequence[int] | None = None
) -> tuple[list[Box], list[str], list[int]]:
    """The boxes of a drawing that can stand for cells of an image of ``shape``.

    Boxes smaller than :data:`MIN_BOX_SIZE` (a click without a drag), boxes whose cell lies
    outside the image (:meth:`Box.overlaps`), boxes that repeat an earlier one
    (:meth:`Box.repeats`) and boxes around many others (:func:`region_boxes`) are left out,
    each kind with a note that says so; the rest keep their order.

    Parameters
    ----------
    boxes : sequence of Box
        The boxes as drawn (or read from a table).
    shape : tuple of int
        ``(H, W)`` of the image they belong to.
    numbers : sequence of int, optional
        How the user counts the boxes (a Shapes layer's index, a table's row), one per box;
        the notes name boxes by them. ``None``: their places in ``boxes``.

    Returns
    -------
    kept : list of Box
        Boxes to use.
    notes : list of str
        One sentence per kind of box left out.
    kept_numbers : list of int
        The numbers of the boxes kept, for
        :func:`~napari_mutualseg.supervision.make_supervision` to name them as the user does.

    Raises
    ------
    ValueError
        When no box is left, with a message that says why.
    """
    boxes = list(boxes)
    numbers = box_numbers(numbers, len(boxes))
    tiny = [b for b in boxes if b.too_small]
    off = set(off_image(boxes, shape))
    outside = sorted(off)
    # places in ``boxes``, narrowed kind by kind
    kept = [k for k, b in enumerate(boxes) if not b.too_small and k not in off]
    repeated = repeated_boxes([boxes[k] for k in kept])
    kept = [k for i, k in enumerate(kept) if i not in repeated]
    regions = {kept[i]: n for i, n in region_boxes([boxes[k] for k in kept]).items()}
    region_notes = [
        f"{boxes[k].describe(numbers[k])} holds {n} other boxes: taken for a region around "
        "cells, not a cell, and ignored (an annotation around the boxed area, in QuPath or on "
        "the boxes layer); to mark where every cell is boxed, draw the region on its own layer "
        "in the plugin (Annotation mode 'only inside a region')."
        for k, n in regions.items()
    ]
    kept = [k for k in kept if k not in regions]
    if not boxes:
        raise ValueError("No boxes: draw at least one rectangle around a cell.")
    if not kept and not outside:
        raise ValueError(
            f"Every box is smaller than {MIN_BOX_SIZE:g} pixels: drag the rectangle tool around "
            "each whole cell."
        )
    if not kept:
        first = outside[0]
        raise ValueError(
            f"None of the {len(boxes)} boxes lies on the image of shape {tuple(shape)}: they are "
            f"all outside it (the first is {boxes[first].describe(numbers[first])}). Check that "
            "the boxes belong to this image and use its pixel coordinates."
        )
    notes = []
    if tiny:
        notes.append(
            f"{len(tiny)} box(es) smaller than {MIN_BOX_SIZE:g} pixels (a click without "
            "dragging?) were ignored."
        )
    if outside:
        notes.append(
            f"{len(outside)} of {len(boxes)} boxes lie outside the image and were ignored."
        )
    if repeated:
        notes.append(
            f"{len(repeated)} box(es) repeat another box on the same cell and were counted once."
        )
    return [boxes[k] for k in kept], notes + region_notes, [numbers[k] for k in kept]
