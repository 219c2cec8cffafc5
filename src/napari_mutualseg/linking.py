"""3D objects from a segmented z-stack, and labels kept from frame to frame of a time series.

Every 2D plane is segmented on its own. :func:`link_slices` then gives an object the label of
the object it overlaps in the slice before: plane to plane along z (3D objects), frame to frame
along time (tracking by overlap). Two objects are linked when their overlap covers at least
``min_overlap`` of the smaller one, one-to-one and best overlap first, so the shrinking
cross-section at a cell's top and bottom stays with its cell (IoU would cut it off as an object
of its own), while two neighbouring cells, which overlap little, are never merged.
:func:`link_labels` applies it to a label image by its axes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from .metrics import overlap_counts

__all__ = [
    "LINK_MIN_OVERLAP",
    "SliceLinker",
    "StackLinker",
    "link_labels",
    "link_slices",
    "separate_planes",
]

#: Least share of the smaller of two objects in consecutive slices that must overlap the other
#: for both to become one (``benchmarks/volume.py`` measures it).
LINK_MIN_OVERLAP = 0.5


def _planes(labels: np.ndarray) -> np.ndarray:
    """``labels`` as a stack of 2D planes (a view): what is worked on a plane at a time, so
    that no temporary is larger than a plane (a 3D frame's would be a z-stack each)."""
    return labels.reshape((-1, *labels.shape[-2:]))


def _ids(labels: np.ndarray) -> np.ndarray:
    """The object ids (not 0) in ``labels``, sorted."""
    top = max((int(plane.max()) for plane in _planes(labels)), default=0)
    if top < labels.size:  # ids no more than pixels (a segmentation's): counted, not sorted
        ids = np.flatnonzero(_areas(labels, top + 1))
    else:
        ids = np.unique(np.concatenate([np.unique(plane) for plane in _planes(labels)]))
    return ids[ids > 0]


def _areas(labels: np.ndarray, size: int) -> np.ndarray:
    """Pixels of each id below ``size`` in ``labels``."""
    area = np.zeros(size, np.int64)
    for plane in _planes(labels):
        area += np.bincount(plane.ravel(), minlength=size)[:size]
    return area


class _Kept:
    """A slice kept for the slices after it: whole while it is the newest, then only the
    pixels of its objects that no later slice has (those a slice may continue after a gap),
    as their flat positions and ids."""

    def __init__(self, labels: np.ndarray, ids: np.ndarray) -> None:
        self.labels: np.ndarray | None = labels
        self.ids = ids
        self._where = self._values = np.zeros(0, np.int64)

    def prune(self, later: np.ndarray) -> None:
        """Forget the objects of ids ``later`` (a later slice has them)."""
        self.ids = np.setdiff1d(self.ids, later, assume_unique=True)
        if self.labels is None:
            keep = np.isin(self._values, self.ids)
            self._where, self._values = self._where[keep], self._values[keep]
            return
        planes = _planes(self.labels)
        where = [np.flatnonzero(np.isin(plane, self.ids)) for plane in planes]
        position = np.int32 if self.labels.size < 2**31 else np.int64
        kept = sum(w.size for w in where)
        if kept * (np.dtype(position).itemsize + self.labels.itemsize) >= self.labels.nbytes:
            return  # most of it stays (after an empty slice): whole is smaller
        self._where = np.concatenate(
            [(w + k * planes[0].size).astype(position) for k, w in enumerate(where)]
        )
        self._values = np.concatenate(
            [plane.ravel()[w] for plane, w in zip(planes, where, strict=True)]
        )
        self.labels = None

    def pairs(self, current: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The labels of this slice and of ``current`` at the same pixels, a plane at a time
        (of a pruned slice, at the pixels it kept)."""
        if self.labels is None:
            yield self._values, current.reshape(-1)[self._where]
            return
        yield from zip(_planes(self.labels), _planes(current), strict=True)

    def areas(self, size: int) -> np.ndarray:
        """Pixels of each id below ``size``."""
        if self.labels is not None:
            return _areas(self.labels, size)
        return np.bincount(self._values, minlength=size)[:size]


def _links(
    current: np.ndarray,
    previous: _Kept,
    min_overlap: float,
    current_ids: np.ndarray | None = None,
    previous_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (current id, previous id) that are one object, best overlap first, one-to-one;
    among ``current_ids`` and ``previous_ids`` only, when given."""
    # pairs in the order of the previous id, then the current one: ties are broken so
    stride = int(current.max(initial=0)) + 1
    keys, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for prev, cur in previous.pairs(current):
        p, c, shared = overlap_counts(prev, cur)
        keys.append(p * stride + c)
        counts.append(shared)
    keys, where = np.unique(np.concatenate(keys), return_inverse=True)
    inter = np.bincount(where.ravel(), weights=np.concatenate(counts)).astype(np.int64)
    prev, cur = np.divmod(keys, stride)
    keep = np.ones(keys.size, bool)
    if current_ids is not None:
        keep &= np.isin(cur, current_ids)
    if previous_ids is not None:
        keep &= np.isin(prev, previous_ids)
    cur, prev, inter = cur[keep], prev[keep], inter[keep]
    if not cur.size:
        return cur, prev
    size = int(max(cur.max(), prev.max())) + 1
    smaller = np.minimum(_areas(current, size)[cur], previous.areas(size)[prev])
    share = inter / smaller
    ok = np.flatnonzero(share >= min_overlap)
    order = ok[np.lexsort((-inter[ok], -share[ok]))]
    taken_cur, taken_prev, linked_cur, linked_prev = set(), set(), [], []
    for k in order:
        c, p = int(cur[k]), int(prev[k])
        if c not in taken_cur and p not in taken_prev:
            taken_cur.add(c)
            taken_prev.add(p)
            linked_cur.append(c)
            linked_prev.append(p)
    return np.asarray(linked_cur, np.int64), np.asarray(linked_prev, np.int64)


class SliceLinker:
    """Link slices given one at a time, as :func:`link_slices` links them all.

    Each slice (a plane, a frame, or a 3D frame) is relabelled as soon as it is given, from
    the slices before it: only the last ``max_gap + 1`` are kept, so that the slices of a
    stack larger than memory can be linked and written one after another: the last slice
    whole, of those before it (with ``max_gap``) only the objects no later slice has, which
    are all a slice after a gap can continue. A 3D frame is compared with the frames before
    it a plane at a time, so that linking needs little memory beyond what it keeps.

    Parameters
    ----------
    min_overlap, max_gap
        See :func:`link_slices`.
    dtype : numpy dtype
        Integer type of the relabelled slices.
    """

    def __init__(
        self,
        *,
        min_overlap: float = LINK_MIN_OVERLAP,
        max_gap: int = 0,
        dtype: Any = np.int32,
    ) -> None:
        if not 0 < min_overlap <= 1:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}.")
        if max_gap < 0:
            raise ValueError(f"max_gap must be 0 or more slices, got {max_gap}.")
        self.min_overlap = min_overlap
        self.max_gap = max_gap
        self.dtype = np.dtype(dtype)
        self.next_id = 1
        # newest last; slice k - back is _recent[-back]
        self._recent: deque[_Kept] = deque(maxlen=max_gap + 1)

    def __call__(self, current: np.ndarray) -> np.ndarray:
        """``current`` relabelled: ids of the objects it continues, new ids for the others."""
        current = np.asarray(current)
        present = _ids(current)
        if present.size and present[-1] >= current.size:
            # ids of another tool, far apart: linked by rank, as tables here go up to the id
            current = np.where(current > 0, np.searchsorted(present, current) + 1, 0)
            present = np.arange(1, present.size + 1)
        lut = np.zeros(int(present.max(initial=0)) + 1, self.dtype)
        recent = self._recent
        if recent and present.size:
            cur, prev = _links(current, recent[-1], self.min_overlap)
            lut[cur] = prev
            for back in range(2, len(recent) + 1):
                left = present[lut[present] == 0]
                if not left.size:
                    break
                # objects of slice k - back that are in no slice since (all it keeps), nor
                # linked just now
                ended = np.setdiff1d(recent[-back].ids, lut)
                if not ended.size:
                    continue
                cur, prev = _links(current, recent[-back], self.min_overlap, left, ended)
                lut[cur] = prev
        new = present[lut[present] == 0]
        if self.next_id + new.size - 1 > np.iinfo(self.dtype).max:
            raise ValueError(
                f"More than {np.iinfo(self.dtype).max} objects: too many for {self.dtype} "
                "labels; segment the stack in parts."
            )
        lut[new] = np.arange(self.next_id, self.next_id + new.size)
        self.next_id += new.size
        out = lut[current]
        ids = np.unique(lut[present])
        for kept in recent if recent.maxlen > 1 else ():
            kept.prune(ids)  # what a gap may continue: the objects this slice does not have
        recent.append(_Kept(out, ids))
        return out


def link_slices(
    labels: np.ndarray, *, min_overlap: float = LINK_MIN_OVERLAP, max_gap: int = 0
) -> np.ndarray:
    """Relabel consecutive slices along axis 0 so that overlapping objects share a label.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, ``(N, ...)``: N slices (planes or frames), each labelled on its own
        (0 is background; ids need not be consecutive).
    min_overlap : float
        Least share, in (0, 1], of the smaller of two objects in consecutive slices that must
        overlap the other for both to become one object.
    max_gap : int
        Slices an object may be missing from and keep its label: an object of a slice that
        continues none of the slice before takes the label of an object that ended at most
        ``max_gap`` slices earlier, where they overlap as above (a cell the segmentation
        missed in one frame of a time series stays one track).

    Returns
    -------
    numpy.ndarray
        int32 (int64 beyond 2**31 - 1 objects) labels of the same shape, 1..N over the whole
        array in the order objects first appear.

    See Also
    --------
    SliceLinker : the same, one slice at a time.
    """
    labels = np.asarray(labels)
    if labels.ndim < 3:
        raise ValueError(f"labels must be slices of 2D labels or more, got shape {labels.shape}.")
    total = sum(_ids(s).size for s in labels)
    linker = SliceLinker(
        min_overlap=min_overlap, max_gap=max_gap, dtype=np.int32 if total < 2**31 else np.int64
    )
    out = np.zeros(labels.shape, linker.dtype)
    for k, current in enumerate(labels):
        out[k] = linker(current)
    return out


def link_labels(
    labels: np.ndarray,
    axes: str,
    *,
    link: bool = True,
    track: bool = False,
    min_overlap: float = LINK_MIN_OVERLAP,
    max_gap: int = 1,
) -> np.ndarray:
    """Link the planes of a label image into 3D objects and, optionally, track them in time.

    Parameters
    ----------
    labels : numpy.ndarray
        Per-plane labels with axes ``axes``.
    axes : str
        The label image's axes: ``"YX"``, ``"ZYX"``, ``"TYX"`` or ``"TZYX"``.
    link : bool
        Give a cell one label through z (3D objects); without it each plane's objects keep
        labels of their own, unique in the stack (:func:`separate_planes`), so that no two
        planes' cells are counted or measured as one.
    track : bool
        Give a cell (or a 3D object) one label from frame to frame.
    min_overlap : float
        See :func:`link_slices`.
    max_gap : int
        Planes along z, and frames of a tracked cell, that an object may be missing from and
        keep its label (see :func:`link_slices`): a cell the segmentation missed in one plane,
        or merged there with a cell it touches, stays one 3D object, as in time one track.

    Returns
    -------
    numpy.ndarray
        The linked labels (``labels`` itself when there is nothing to link).
    """
    axes = _check_axes(axes, np.ndim(labels), np.shape(labels))
    if "Z" in axes:
        join = (
            partial(link_slices, min_overlap=min_overlap, max_gap=max_gap)
            if link
            else separate_planes
        )
        labels = np.stack([join(frame) for frame in labels]) if "T" in axes else join(labels)
    if track and "T" in axes:
        labels = link_slices(labels, min_overlap=min_overlap, max_gap=max_gap)
    return labels


class StackLinker:
    """:func:`link_labels` one plane at a time, for labels written as they are made.

    Planes are given in the order of the label image (z within each time point); each comes
    back relabelled as soon as its labels are final: at once, except in a time series of
    z-stacks that is tracked, where tracking links whole 3D frames: there at the end of its
    time point. What it keeps is the last plane and, of the ``max_gap`` planes before it,
    the cells no later plane has (with ``track``, also the z-stack in progress, the last
    frame and, of the ``max_gap`` frames before it, the cells no later frame has), never the
    stack.

    Parameters
    ----------
    axes : str
        The label image's axes: ``"YX"``, ``"ZYX"``, ``"TYX"`` or ``"TZYX"``.
    shape : sequence of int
        The label image's shape.
    link, track, min_overlap, max_gap
        See :func:`link_labels`.

    Examples
    --------
    >>> linker = StackLinker("ZYX", stack.shape)  # doctest: +SKIP
    >>> for k, plane in enumerate(stack):  # doctest: +SKIP
    ...     for index, final in linker.add(plane):
    ...         out[index] = final
    """

    def __init__(
        self,
        axes: str,
        shape: Sequence[int],
        *,
        link: bool = True,
        track: bool = False,
        min_overlap: float = LINK_MIN_OVERLAP,
        max_gap: int = 1,
    ) -> None:
        axes = _check_axes(axes, len(shape), shape)
        self._n_z = int(shape[axes.index("Z")]) if "Z" in axes else 0
        self._link = link
        self._min_overlap = min_overlap
        self._max_gap = max_gap
        self._track = (
            SliceLinker(min_overlap=min_overlap, max_gap=max_gap)
            if track and "T" in axes
            else None
        )
        # the z-stack in progress, tracked as a whole at its end
        self._frame = np.zeros(shape[-3:], np.int32) if self._track and self._n_z else None
        self._z = 0
        self._z_link: SliceLinker | None = None
        self._offset = 0
        self._done = 0

    def add(self, plane: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Give the next plane's own labels; the planes now final, as (plane index, labels)."""
        frame = np.asarray(plane)
        if self._n_z:
            z = self._done % self._n_z if self._track is None else self._z
            if z == 0:  # a new z-stack
                self._z_link = SliceLinker(min_overlap=self._min_overlap, max_gap=self._max_gap)
                self._offset = 0
            if self._link:
                frame = self._z_link(frame)
            else:  # as separate_planes
                frame = np.where(frame > 0, frame.astype(np.int32) + self._offset, 0)
                self._offset = max(self._offset, int(frame.max(initial=0)))
            if self._track is not None:  # tracking links whole z-stacks: kept to its end
                self._frame[z] = frame
                self._z = (z + 1) % self._n_z
                if self._z:
                    return []
                frame = self._track(self._frame)
        elif self._track is not None:
            frame = self._track(frame)
        frame = frame.reshape((-1, *frame.shape[-2:]))
        first, self._done = self._done, self._done + len(frame)
        return list(enumerate(frame, first))


def _check_axes(axes: str, ndim: int, shape: Sequence[int]) -> str:
    axes = axes.upper()
    if axes not in ("YX", "ZYX", "TYX", "TZYX") or len(axes) != ndim:
        raise ValueError(
            f"Label axes must be YX, ZYX, TYX or TZYX, one per axis of the labels; got {axes!r} "
            f"for shape {tuple(shape)}."
        )
    return axes


def separate_planes(labels: np.ndarray) -> np.ndarray:
    """Per-plane labels (each plane numbered from 1) made unique over the stack: every
    plane's objects on their own, plane 0's first."""
    out = np.array(labels, dtype=np.promote_types(labels.dtype, np.int32))  # room for all
    offset = 0
    for plane in out:
        plane[plane > 0] += offset
        offset = max(offset, int(plane.max()))
    return out
