"""Where the two networks disagree, and which cells a person should check first.

The two networks of a pair are trained to differ where the evidence is weak, so the places
where their predictions part are where a person's correction is worth most. The per-pixel
disagreement is the total variation distance between A's and B's softmax,
``0.5 * sum_c |pA_c - pB_c|``: 0 exactly where the two agree, 1 where they put all their
weight on different classes. A cell's score is the mean disagreement over the cell and a rim
of :data:`RIM` pixels around it (two networks that disagree on where a cell ends do so just
outside the smaller of their masks). Disagreement outside every cell and its rim forms
*regions*: a cell one network sees and the other does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import expand_labels, relabel_sequential

__all__ = [
    "REGION_THRESHOLD",
    "RIM",
    "Prediction",
    "Spot",
    "cell_disagreement",
    "disagreement_map",
    "spot_table",
    "spots_to_check",
]

#: Pixels around a cell that count as the cell's own when it is scored.
RIM = 2
#: Least disagreement of the pixels that make a region outside every cell.
REGION_THRESHOLD = 0.3


def disagreement_map(proba_a, proba_b, axis: int = 0):
    """Per-pixel disagreement of two softmax outputs, in ``[0, 1]``.

    The total variation distance ``0.5 * sum_c |pA_c - pB_c|`` over the class axis: exactly
    0 where the two probability vectors are equal.

    Parameters
    ----------
    proba_a, proba_b : numpy.ndarray or torch.Tensor
        Class probabilities of the same shape (``(3, H, W)``, or a batch of them).
    axis : int
        The class axis (0 for one image, 1 for a batch).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The same type as the inputs, without the class axis.

    Examples
    --------
    >>> p = np.array([[1.0], [0.0], [0.0]])
    >>> q = np.array([[0.0], [1.0], [0.0]])
    >>> disagreement_map(p, q).tolist(), disagreement_map(p, p).tolist()
    ([1.0], [0.0])
    """
    return (0.5 * abs(proba_a - proba_b).sum(axis)).clip(0.0, 1.0)


def cell_disagreement(
    labels: np.ndarray, disagreement: np.ndarray, *, rim: int = RIM
) -> np.ndarray:
    """Mean disagreement of every cell, over the cell and a rim of ``rim`` pixels around it.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 background.
    disagreement : numpy.ndarray
        Per-pixel disagreement of the same shape (:func:`disagreement_map`).
    rim : int
        Width of the rim in pixels; rims never overlap another cell
        (:func:`skimage.segmentation.expand_labels`).

    Returns
    -------
    numpy.ndarray
        float32 of length ``labels.max() + 1``: entry ``k`` is cell ``k``'s score, NaN where
        there is no cell ``k`` (always at 0).
    """
    labels, disagreement = _check(labels, disagreement)
    return _zone_means(labels, expand_labels(labels, rim) if rim > 0 else labels, disagreement)


def _zone_means(labels: np.ndarray, zones: np.ndarray, disagreement: np.ndarray) -> np.ndarray:
    """:func:`cell_disagreement` with the cells' ``zones`` (cell and rim) given."""
    top = int(labels.max(initial=0))
    scores = np.full(top + 1, np.nan, np.float32)
    ids = np.unique(labels[labels > 0])
    if ids.size:
        scores[ids] = ndi.mean(disagreement.astype(np.float32), zones, ids)
    return scores


@dataclass(frozen=True)
class Spot:
    """A place to check: a predicted cell, or a region of disagreement outside every cell.

    Attributes
    ----------
    kind : {"cell", "region"}
        What it is.
    label : int
        The cell's id in the labels (0 for a region).
    score : float
        Mean disagreement over it (a cell: with its rim).
    area : int
        Its pixels (a cell: without the rim).
    centroid : tuple of float
        ``(y, x)`` centre, in pixels.
    bbox : tuple of int
        Half-open pixel range ``(y0, x0, y1, x1)``.
    """

    kind: str
    label: int
    score: float
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]


def spots_to_check(
    labels: np.ndarray,
    disagreement: np.ndarray,
    *,
    rim: int = RIM,
    threshold: float = REGION_THRESHOLD,
    min_size: int = 16,
) -> list[Spot]:
    """Every cell and every region of disagreement, the most disputed first.

    Cells are scored by :func:`cell_disagreement`. Regions are the connected parts of the
    pixels with disagreement of at least ``threshold`` that lie outside every cell and its rim,
    of at least ``min_size`` pixels, scored by their mean disagreement.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 background (a prediction, possibly corrected; any ids).
    disagreement : numpy.ndarray
        Per-pixel disagreement of the same shape.
    rim : int
        Rim around each cell scored with it, in pixels.
    threshold : float
        Least disagreement of a region's pixels.
    min_size : int
        Smallest region kept, in pixels.

    Returns
    -------
    list of Spot
        Sorted by score, highest first (ties: cells before regions, then by position).
    """
    labels, disagreement = _check(labels, disagreement)
    ids = None
    if labels.size and int(labels.max()) >= labels.size:
        # ids far apart (another tool's, 10**9 and beyond): scored by rank, as the scores and
        # the cells' sums take memory per id (gigabytes)
        labels, _, ids = relabel_sequential(labels)
    # the zones once, for the scores and the regions: each takes a third of a second at 2048²
    zones = expand_labels(labels, rim) if rim > 0 else labels
    scores = _zone_means(labels, zones, disagreement)
    cells = _cells(labels)
    named = [c[0] for c in cells] if ids is None else ids[np.array([c[0] for c in cells])]
    spots = [
        Spot("cell", int(name), float(scores[label]), area, centroid, bbox)
        for name, (label, area, centroid, bbox) in zip(named, cells, strict=True)
    ]
    regions, _ = ndi.label((disagreement >= threshold) & (zones == 0))
    for r in regionprops(regions, intensity_image=disagreement.astype(np.float32)):
        if r.area >= min_size:
            spots.append(
                Spot("region", 0, float(r.intensity_mean), int(r.area), _centre(r), tuple(r.bbox))
            )
    return sorted(spots, key=lambda s: (-s.score, s.kind, s.bbox))


def spot_table(
    spots: list[Spot], planes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, list]:
    """Spots as table columns (one row per spot, in order), ready for a CSV.

    Parameters
    ----------
    spots : list of Spot
        As :attr:`Prediction.spots`, most disputed first.
    planes : mapping of str to sequence of int, optional
        Each spot's plane in a stack or time series, by axis: ``{"t": [...], "z": [...]}``,
        one value per spot; the table's first columns.

    Returns
    -------
    dict of str to list
        The columns of ``planes``, then ``rank`` (1 = check first), ``kind``, ``label``,
        ``score``, ``area``, ``centroid_y``, ``centroid_x`` and the half-open box
        ``y0, x0, y1, x1``.
    """
    where = {axis: [int(i) for i in values] for axis, values in (planes or {}).items()}
    if any(len(values) != len(spots) for values in where.values()):
        raise ValueError(f"{len(spots)} spots need a plane each.")
    return {
        **where,
        "rank": list(range(1, len(spots) + 1)),
        "kind": [s.kind for s in spots],
        "label": [s.label for s in spots],
        "score": [round(s.score, 4) for s in spots],
        "area": [s.area for s in spots],
        "centroid_y": [round(s.centroid[0], 2) for s in spots],
        "centroid_x": [round(s.centroid[1], 2) for s in spots],
        **{k: [s.bbox[i] for s in spots] for i, k in enumerate(("y0", "x0", "y1", "x1"))},
    }


@dataclass
class Prediction:
    """What a trained pair says about one image, and where its two networks disagree.

    Attributes
    ----------
    probabilities : numpy.ndarray or None
        ``(3, H, W)`` float32 mean softmax of both networks (background, cell, boundary);
        None for a plane segmented block by block (:meth:`ModelPair.predict_planes`).
    labels : numpy.ndarray or dask.array.Array
        ``(H, W)`` int32 cells, 0 background, 1..N (as :meth:`ModelPair.segment`); from
        :meth:`ModelPair.predict_planes` with ``out``, that plane of ``out`` (of a zarr
        ``out``, read lazily).
    disagreement : numpy.ndarray or None
        ``(H, W)`` float16 disagreement of the two networks in ``[0, 1]``
        (:func:`disagreement_map`); None for a plane segmented block by block.
    cell_scores : numpy.ndarray or None
        float32 score of every cell by its label (:func:`cell_disagreement`); None for a
        plane segmented block by block.
    spots : list of Spot
        Cells and regions to check, the most disputed first (:func:`spots_to_check`).
    """

    probabilities: np.ndarray | None = field(repr=False)
    labels: np.ndarray = field(repr=False)
    disagreement: np.ndarray | None = field(repr=False)
    cell_scores: np.ndarray | None = field(repr=False)
    spots: list[Spot] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        # what a notebook wants to see first, not the arrays
        n_cells = int(self.labels.max()) if self.labels.size else 0  # cells are 1..N
        cells = sum(s.kind == "cell" for s in self.spots)
        shape = " x ".join(map(str, self.labels.shape))
        found = f"Prediction({shape} px, {n_cells} cell{'s' * (n_cells != 1)}"
        if self.disagreement is None:
            return f"{found}; segmented block by block: no disagreement)"
        mean = float(np.mean(self.disagreement, dtype=np.float64)) if self.disagreement.size else 0
        regions = len(self.spots) - cells
        return (
            f"{found}; to check: {cells} cell{'s' * (cells != 1)}, {regions} "
            f"region{'s' * (regions != 1)}; mean disagreement {mean:.3f})"
        )


def _centre(region) -> tuple[float, float]:
    y, x = region.centroid
    return float(y), float(x)


def _cells(labels: np.ndarray) -> list[tuple[int, int, tuple[float, float], tuple]]:
    """Every cell's label, area, centroid and box, as :func:`regionprops` gives them, at once.

    One region object per cell took the main thread half a second at 2048² (4,000 cells).
    The centroids are the same floats: sums of whole pixel coordinates are exact in float64,
    divided by the area once, as regionprops's mean does. Counted a band of rows at a time,
    so that the pixels' coordinates never all exist at once.
    """
    n = int(labels.max(initial=0)) + 1
    area, cy, cx = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    rows = max(1, (1 << 20) // max(labels.shape[1], 1))
    for top in range(0, labels.shape[0], rows):
        band = labels[top : top + rows]
        y, x = np.nonzero(band > 0)
        ids = band[y, x].astype(np.intp)
        area += np.bincount(ids, minlength=n)
        cy += np.bincount(ids, weights=y + top, minlength=n)
        cx += np.bincount(ids, weights=x, minlength=n)
    return [
        (k + 1, int(area[k + 1]), (float(cy[k + 1] / area[k + 1]), float(cx[k + 1] / area[k + 1])),
         (box[0].start, box[1].start, box[0].stop, box[1].stop))
        for k, box in enumerate(ndi.find_objects(labels))
        if box is not None
    ]  # fmt: skip


def _check(labels: np.ndarray, disagreement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, disagreement = np.asarray(labels), np.asarray(disagreement)
    if labels.shape != disagreement.shape or labels.ndim != 2:
        raise ValueError(
            f"Labels {labels.shape} and disagreement {disagreement.shape} must be the same 2D "
            "shape: give the cells and the disagreement of one image (plane)."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must be integers, got {labels.dtype}.")
    return labels, disagreement
