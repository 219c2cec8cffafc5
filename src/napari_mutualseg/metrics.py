"""Instance segmentation metrics against ground truth.

All functions take two instance label images of the same shape, 2D or 3D (a z-stack's objects
are scored as 3D objects): 0 is background and every other value is one object. Labels need not
be consecutive, and the same object id has no meaning shared between the two images.

The overlap of every (ground truth, prediction) pair is counted in one pass over the pixels; the
matching at each IoU threshold then works on that sparse list of pairs only, so evaluating all ten
thresholds costs little more than evaluating one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LabelEvidence",
    "MatchResult",
    "Overlap",
    "evaluate",
    "label_evidence",
    "match_instances",
    "mean_metrics",
    "not_instance_labels",
    "overlap_counts",
    "overlap_table",
]

#: IoU thresholds averaged by :func:`evaluate` for ``map``: 0.5, 0.55, ..., 0.95 (COCO style).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2)
)

# Most entries of a dense table of pair counts (32 MB); above it, or above the overlapping
# pixels counted, sorting their pair keys costs less memory.
_DENSE_TABLE_LIMIT = 1 << 22
# Pixels of two label images counted at a time: scoring needs a few arrays of this size besides
# the images, however large a stack is.
_CHUNK = 1 << 22


def _ratio(num: float, den: float, empty: float) -> float:
    """``num / den``, or ``empty`` when the denominator is zero (no division warnings)."""
    return float(num) / float(den) if den > 0 else float(empty)


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of predicted and ground-truth instances at one IoU threshold.

    Attributes
    ----------
    threshold : float
        IoU threshold a pair had to reach to be matched.
    tp, fp, fn : int
        Matched pairs, unmatched predictions and unmatched ground-truth objects.
    n_pred, n_gt : int
        Number of predicted and ground-truth objects.
    ious : numpy.ndarray
        IoU of each matched pair, float64, shape ``(tp,)``.
    gt_ids, pred_ids : numpy.ndarray
        Original labels of the matched pairs, same order as ``ious``.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_pred: int
    n_gt: int
    ious: np.ndarray
    gt_ids: np.ndarray
    pred_ids: np.ndarray

    # Convention for empty images: nothing predicted and nothing to find is a perfect result;
    # a score whose every count is zero otherwise falls back to 0.
    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when both images are empty."""
        return _ratio(self.tp, self.tp + self.fp, 1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when both images are empty."""
        return _ratio(self.tp, self.tp + self.fn, 1.0 if self.fp == 0 else 0.0)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 when both images are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def ap(self) -> float:
        """Average precision as in the cell-segmentation literature: TP / (TP + FP + FN)."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, 1.0)

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the matched pairs (0.0 without matches)."""
        return float(self.ious.mean()) if self.tp else 0.0


def _as_labels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label image, got dtype {x.dtype}")
    if x.size and np.issubdtype(x.dtype, np.signedinteger) and x.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return x


#: A class map's values (:data:`napari_mutualseg.supervision.CLASS_VALUES`: background, cell,
#: boundary, ignore); kept here so that scoring needs nothing of supervision.
_CLASS_VALUES = (0, 1, 2, 255)

#: Pieces one label may hold and still be taken for one object (a cell cut by the image
#: border, a stray pixel); a value in more pieces than this stands for many objects.
_PIECES_OF_ONE_OBJECT = 2


def not_instance_labels(labels: np.ndarray) -> str | None:
    """Why ``labels`` look like a class map or a mask rather than instance labels, or None.

    Instance labels give every object a number of its own. A supervision's class map (0
    background, 1 cell, 2 boundary, 255 ignore) or a binary mask (every object 1, or 255)
    gives many objects one value; scored as instances, they are a few huge objects and every
    score is meaningless. Only images holding nothing but class values are looked at (an image
    of three objects or fewer, as instances), so real label images cost one pass.

    Parameters
    ----------
    labels : numpy.ndarray
        An integer image, 2D or 3D.

    Returns
    -------
    str or None
        What the image looks like and how to make instance labels of it, for a message.
    """
    x = np.asarray(labels)
    if x.size == 0 or x.dtype.kind not in "biu" or int(x.max()) > 255:
        return None
    flat = x.reshape(-1)
    counts = sum(
        np.bincount(flat[i : i + _CHUNK].astype(np.intp), minlength=256)
        for i in range(0, flat.size, _CHUNK)
    )
    present = [v for v in np.flatnonzero(counts) if v != 0]
    if not present or set(present) - set(_CLASS_VALUES):
        return None
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(x.ndim, x.ndim)
    pieces = {int(v): int(ndi.label(x == v, structure)[1]) for v in present}
    many = [v for v, n in pieces.items() if n > _PIECES_OF_ONE_OBJECT]
    classes = {1, 2} <= set(pieces) or (255 in pieces and len(pieces) > 1)
    if classes and (many or 255 in pieces):
        return (
            f"its values {', '.join(map(str, sorted(pieces)))} are those of a class map (0 "
            "background, 1 cell, 2 boundary, 255 ignore, as supervise writes), not instance "
            "labels; score the cell labels of a segmentation (the _cells.tif files predict "
            "writes, ModelPair.segment in Python)"
        )
    if many:
        v = many[0]
        return (
            f"every object in it has the value {v} ({pieces[v]} separate objects): a mask, not "
            "instance labels; give each object a number of its own first (e.g. "
            "skimage.measure.label)"
        )
    return None


#: Pixels of an image that :func:`label_evidence` looks at: rows and columns at a stride.
_LABEL_SAMPLE = 1 << 16
#: Pairs of neighbouring non-zero pixels below which an image says nothing either way.
_LABEL_MIN_PAIRS = 64
#: Most neighbouring non-zero pixels that differ in labels: where two cells touch (BBBC039's
#: masks: at most 2.4%; touching cells 3 pixels wide: 33%). BBBC039's images: 93% and more;
#: 8-bit copies of them with a few grey levels down to 0%, which the runs tell apart.
_LABEL_MAX_DIFFER = 0.5
#: Most runs of one value per row holding it in labels, where a cell crosses a row once (a
#: bent one twice): BBBC039's masks at most 1.02. Microscope images, whose grey levels recur
#: along a row, 1.4 and more, down to 8-bit ones of four grey levels.
_LABEL_MAX_RUNS = 1.2
#: Labels whose cells have holes (a ring-shaped cell, a nucleus segmented with its nucleolus
#: left out) cross a row twice per cell: up to this many runs per row, labels still when few
#: runs are short (16 rings of 24 px with holes of 8 px: 1.30 runs, none short; 8-bit images
#: with runs below 2.5 have a third of their runs short or more).
_HOLED_MAX_RUNS = 2.0
#: Most runs of 1 or 2 pixels among the runs of labels with holes.
_HOLED_MAX_SHORT_RUNS = 0.1
#: Most runs of 1 or 2 pixels among a mask's runs: objects, not the ragged specks of one grey
#: level of a nearly empty image (BBBC039's masks at most 2%; such images 6.6% and more).
_MASK_MAX_SHORT_RUNS = 0.05


@dataclass(frozen=True)
class LabelEvidence:
    """What a sample of an image says about whether it holds labels (instance labels, a
    mask) or intensities (a microscope image), from :func:`label_evidence`.

    Attributes
    ----------
    pairs : int
        Pairs of neighbouring pixels, both non-zero, in the sample.
    differ : float
        The share of them whose values differ.
    runs : float
        Runs of one non-zero value per sampled row holding that value (1 in labels, where
        each cell crosses a row once).
    short_runs : float
        The share of those runs 1 or 2 pixels long.
    one_value : bool
        Whether the sample holds one value besides 0 (a mask).
    """

    pairs: int
    differ: float
    runs: float
    short_runs: float
    one_value: bool

    @property
    def labels(self) -> bool | None:
        """True for labels or a mask, False for intensities, None when the image holds too
        few non-zero pixels to tell (an empty image, a few specks)."""
        if self.pairs < _LABEL_MIN_PAIRS:
            return None
        if self.one_value:  # a mask, or specks of one grey level in a nearly empty image
            return self.short_runs <= _MASK_MAX_SHORT_RUNS
        if self.differ > _LABEL_MAX_DIFFER:
            return False
        return self.runs <= _LABEL_MAX_RUNS or (
            self.runs <= _HOLED_MAX_RUNS and self.short_runs <= _HOLED_MAX_SHORT_RUNS
        )

    def describe(self) -> str:
        """Why the image holds intensities or labels, in words for a message.

        Returns
        -------
        str
            For example ``"2% of its neighbouring non-zero pixels differ and each value
            recurs 1.0 times per row that holds it"``.
        """
        differ = f"{100 * self.differ:.0f}% of its neighbouring non-zero pixels differ"
        if self.one_value:
            return f"it holds one value besides 0, {100 * self.short_runs:.0f}% of it in specks"
        return f"{differ} and each value recurs {self.runs:.1f} times per row that holds it"


def label_evidence(image: np.ndarray) -> LabelEvidence:
    """Whether ``image`` holds labels or intensities, from a strided sample of it.

    Labels give each object one number: neighbouring non-zero pixels differ only where two
    objects touch, and a row crosses each object once. A microscope image's neighbours
    differ nearly everywhere, and even one of a few grey levels (dim, 8-bit) has each level
    recur along a row. Looked at: every k-th row and column of the planes (the last two
    axes), about :data:`_LABEL_SAMPLE` pixels in all, whatever the image's size.

    Parameters
    ----------
    image : numpy.ndarray
        A plane or a stack of planes, any dtype.

    Returns
    -------
    LabelEvidence
        Its ``labels``: True (labels or a mask), False (intensities) or None (too few
        non-zero pixels to tell, or one value everywhere: a blank field is neither).
    """
    a = np.asarray(image)
    if a.ndim < 2:
        a = a.reshape(1, -1)
    none = LabelEvidence(pairs=0, differ=0.0, runs=0.0, short_runs=0.0, one_value=False)
    if a.size == 0:  # no pixel to tell from
        return none
    height, width = a.shape[-2:]
    step = max(1, -(-a.size // _LABEL_SAMPLE))
    rows = a.reshape(-1, width)[::step]
    columns = a.reshape(-1, height, width)[:, :, ::step]
    first = rows.flat[0]
    if (rows == first).all() and (columns == first).all():
        return none  # one value everywhere: a blank field is no mask
    pairs = differ = 0
    for x, y in ((rows[:, 1:], rows[:, :-1]), (columns[:, 1:], columns[:, :-1])):
        both = (x != 0) & (y != 0)
        pairs += int(both.sum())
        differ += int((both & (x != y)).sum())
    nonzero = rows != 0
    starts = nonzero.copy()
    starts[:, 1:] &= rows[:, 1:] != rows[:, :-1]
    n_runs = int(starts.sum())
    ends = nonzero.copy()
    ends[:, :-1] &= rows[:, :-1] != rows[:, 1:]
    lengths = np.flatnonzero(ends) - np.flatnonzero(starts) + 1
    # the values each row holds: where a row's sorted values change
    ordered = np.sort(rows, axis=1)
    rows_values = int(
        np.count_nonzero((ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] != 0))
    )
    rows_values += int(np.count_nonzero(ordered[:, 0]))
    values = rows[nonzero]
    return LabelEvidence(
        pairs=pairs,
        differ=differ / pairs if pairs else 0.0,
        runs=n_runs / rows_values if n_runs else 0.0,
        short_runs=float(np.mean(lengths <= 2)) if n_runs else 0.0,
        one_value=bool(values.size) and values.min() == values.max(),
    )


def _object_numbers(flat: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The ids of a flat label image, and what turns a part of it into object numbers 1..n
    (0 stays background), each read :data:`_CHUNK` pixels at a time."""
    top = int(flat.max(initial=0))
    parts = range(0, flat.size, _CHUNK)
    if top <= max(4 * min(flat.size, _CHUNK), 1 << 16):
        # a lookup table, where ids are not far above the pixels: no sorting of them
        present = np.zeros(top + 1, dtype=bool)
        for start in parts:
            present[flat[start : start + _CHUNK]] = True
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, dtype=np.int32 if top < 2**31 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lambda part: lut[part]
    ids = np.unique(np.concatenate([np.unique(flat[i : i + _CHUNK]) for i in parts]))
    ids = ids[ids != 0]
    return ids, lambda part: np.where(part > 0, np.searchsorted(ids, part) + 1, 0)


@dataclass(frozen=True)
class Overlap:
    """Sparse overlap table of two label images.

    Attributes
    ----------
    gt_ids, pred_ids : numpy.ndarray
        The object ids of each image; object index ``i`` stands for ``gt_ids[i]``.
    gt_area, pred_area : numpy.ndarray
        Pixels of each object, by object index.
    pair_gt, pair_pred : numpy.ndarray
        Object indices of every overlapping (gt, pred) pair.
    inter, iou : numpy.ndarray
        Overlapping pixels and IoU of each pair.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    inter: np.ndarray
    iou: np.ndarray


def overlap_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels that every pair of overlapping objects of two label images share.

    Parameters
    ----------
    a, b : numpy.ndarray
        Integer labels of the same shape (0 = background, any ids below 2**63), e.g. two
        planes, or the values of the same pixels in two images.

    Returns
    -------
    a_ids, b_ids, pixels : numpy.ndarray
        int64: per pair of objects labelled together in at least one pixel, the object's id
        in ``a``, in ``b`` and the pixels they share; sorted by ``a``'s id, then ``b``'s.
    """
    a, b = np.ravel(a), np.ravel(b)
    both = (a > 0) & (b > 0)
    a, b = a[both], b[both]
    a_top, b_top = int(a.max(initial=0)), int(b.max(initial=0))
    if (a_top + 1) * (b_top + 1) > np.iinfo(np.int64).max:
        # ids too large to pack a pair in one int64 key (two images of ids near 2**32):
        # counted on their ranks
        a_ids, a_rank = np.unique(a, return_inverse=True)
        b_ids, b_rank = np.unique(b, return_inverse=True)
        a_at, b_at, pixels = overlap_counts(a_rank + 1, b_rank + 1)
        return a_ids[a_at - 1].astype(np.int64), b_ids[b_at - 1].astype(np.int64), pixels
    stride = b_top + 1
    # both as int64: uint64 ids with int64 ones would make float keys
    keys = a.astype(np.int64) * stride + b.astype(np.int64)
    size = (a_top + 1) * stride
    if size <= min(keys.size, _DENSE_TABLE_LIMIT):
        # a table no larger than the keys: counted without sorting them
        table = np.bincount(keys, minlength=size).reshape(-1, stride)
        a_ids, b_ids = np.nonzero(table)
        return a_ids, b_ids, table[a_ids, b_ids]
    keys, pixels = np.unique(keys, return_counts=True)
    a_ids, b_ids = np.divmod(keys, stride)
    return a_ids, b_ids, pixels.astype(np.int64)


def overlap_table(pred: np.ndarray, gt: np.ndarray) -> Overlap:
    """Every pair of overlapping objects of two label images of the same shape, in one pass.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of the same shape (0 = background, any non-negative ids).

    Returns
    -------
    Overlap
        The areas of all objects and the overlap of every overlapping pair.
    """
    pred = _as_labels(pred, "pred")
    gt = _as_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    gt_flat, pred_flat = gt.reshape(-1), pred.reshape(-1)
    gt_ids, gt_numbers = _object_numbers(gt_flat)
    pred_ids, pred_numbers = _object_numbers(pred_flat)
    gt_area = np.zeros(gt_ids.size + 1, np.int64)
    pred_area = np.zeros(pred_ids.size + 1, np.int64)
    counted = []
    for start in range(0, gt.size or 1, _CHUNK):  # one empty part of an empty image
        g = gt_numbers(gt_flat[start : start + _CHUNK])
        p = pred_numbers(pred_flat[start : start + _CHUNK])
        gt_area += np.bincount(g, minlength=gt_area.size)
        pred_area += np.bincount(p, minlength=pred_area.size)
        counted.append(overlap_counts(g, p))
    pair_gt, pair_pred, inter = (np.concatenate(column) for column in zip(*counted, strict=True))
    if len(counted) > 1:  # the counts of a pair in several parts added up
        stride = pred_ids.size + 1
        keys, where = np.unique(pair_gt * stride + pair_pred, return_inverse=True)
        inter = np.bincount(where, weights=inter).astype(np.int64)
        pair_gt, pair_pred = np.divmod(keys, stride)
    gt_area, pred_area = gt_area[1:], pred_area[1:]
    pair_gt, pair_pred = pair_gt - 1, pair_pred - 1  # numbers 1..n to object indices
    union = gt_area[pair_gt] + pred_area[pair_pred] - inter
    return Overlap(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_area=gt_area,
        pred_area=pred_area,
        pair_gt=pair_gt,
        pair_pred=pair_pred,
        inter=inter,
        iou=inter / union,
    )


def _one_to_one(g: np.ndarray, p: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Which candidate pairs (object indices ``g``, ``p`` with their ``iou``) a one-to-one
    matching keeps: the most matches, then the greatest summed IoU (StarDist's cost).

    Each group of candidates linked through shared objects is matched on its own, so that a
    tie at IoU 0.5, or a low threshold, costs an assignment the size of the group, not one of
    every object in the image (40,000 cells: 12 GB).
    """
    alone = (np.bincount(g)[g] == 1) & (np.bincount(p)[p] == 1)
    if alone.all():  # every object has at most one candidate (always so above IoU 0.5)
        return np.arange(g.size)
    rest = np.flatnonzero(~alone)
    n_g = int(g.max()) + 1
    nodes = n_g + int(p.max()) + 1
    graph = coo_matrix((np.ones(rest.size), (g[rest], n_g + p[rest])), shape=(nodes, nodes))
    group = connected_components(graph, directed=False)[1][g[rest]]
    order = np.argsort(group, kind="stable")
    kept = [np.flatnonzero(alone)]
    for pairs in np.split(rest[order], np.flatnonzero(np.diff(group[order])) + 1):
        rows, r = np.unique(g[pairs], return_inverse=True)
        cols, c = np.unique(p[pairs], return_inverse=True)
        score = np.zeros((rows.size, cols.size))
        score[r, c] = iou[pairs]
        pair = np.full(score.shape, -1)
        pair[r, c] = pairs
        # A candidate counts 1 and its IoU at most 1/(2n): all IoUs add up to less than one
        # match, so none is traded for IoU. Candidates have IoU >= threshold > 0.
        i, j = linear_sum_assignment((score > 0) + score / (2 * min(score.shape)), maximize=True)
        kept.append(pair[i, j][score[i, j] > 0])
    return np.sort(np.concatenate(kept))


def _match(ov: Overlap, threshold: float) -> MatchResult:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ok = np.flatnonzero(ov.iou >= threshold)
    ok = ok[_one_to_one(ov.pair_gt[ok], ov.pair_pred[ok], ov.iou[ok])] if ok.size else ok
    g, p, s = ov.pair_gt[ok], ov.pair_pred[ok], ov.iou[ok]
    tp = int(g.size)
    n_gt, n_pred = int(ov.gt_ids.size), int(ov.pred_ids.size)
    return MatchResult(
        threshold=threshold,
        tp=tp,
        fp=n_pred - tp,
        fn=n_gt - tp,
        n_pred=n_pred,
        n_gt=n_gt,
        ious=np.asarray(s, dtype=float),
        gt_ids=ov.gt_ids[g],
        pred_ids=ov.pred_ids[p],
    )


def match_instances(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> MatchResult:
    """Match predicted to ground-truth instances one-to-one at IoU >= ``threshold``.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of the same shape (0 = background, any non-negative ids).
    threshold : float
        Minimum IoU of a matched pair, in (0, 1].

    Returns
    -------
    MatchResult
        Counts, matched IoUs and ids; ``precision``, ``recall``, ``f1`` and
        ``ap = TP / (TP + FP + FN)`` as properties.

    Notes
    -----
    Above 0.5 every object has at most one candidate and the matching is unique. At lower
    thresholds the assignment maximises the number of matches, then their summed IoU
    (``scipy.optimize.linear_sum_assignment``), as StarDist's ``matching`` does; each group of
    objects competing for each other is assigned on its own.
    """
    return _match(overlap_table(pred, gt), threshold)


def _aji(ov: Overlap) -> float:
    """Aggregated Jaccard Index, classic variant of Kumar et al. (2017).

    Every ground-truth object G is paired with the prediction S of highest IoU with it (a
    prediction may serve several ground-truth objects); the sum of |G ∩ S| is divided by the sum
    of |G ∪ S| plus the areas of the ground-truth objects no prediction touches and of the
    predictions never chosen. Ties go to the lower prediction index.
    """
    n_g, n_p = ov.gt_ids.size, ov.pred_ids.size
    if n_g == 0 and n_p == 0:
        return 1.0
    # Best pair per ground-truth object: sort by (gt, -iou, pred) and keep each gt's first row.
    order = np.lexsort((ov.pair_pred, -ov.iou, ov.pair_gt))
    g = ov.pair_gt[order]
    first = np.ones(g.size, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    best = order[first]
    inter = int(ov.inter[best].sum())
    union = int((ov.gt_area[ov.pair_gt[best]] + ov.pred_area[ov.pair_pred[best]]).sum()) - inter
    unpaired_gt = np.ones(n_g, dtype=bool)
    unpaired_gt[ov.pair_gt[best]] = False
    unused_pred = np.ones(n_p, dtype=bool)
    unused_pred[ov.pair_pred[best]] = False
    union += int(ov.gt_area[unpaired_gt].sum()) + int(ov.pred_area[unused_pred].sum())
    return _ratio(inter, union, 1.0)


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """Score one predicted label image against its ground truth.

    A pair of objects matches at IoU >= a threshold, one-to-one (:func:`match_instances`), as
    StarDist and Cellpose count them. A 3D image is one volume, its objects 3D: score a time
    series frame by frame and average the frames' scores with :func:`mean_metrics`.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of the same shape (0 = background).
    thresholds : iterable of float
        IoU thresholds whose AP values are averaged into ``map``
        (default 0.5, 0.55, ..., 0.95).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (all at IoU 0.5), ``f1_50`` (same as ``f1``),
        ``ap_50``, ``ap_75``, ``map`` (mean AP over ``thresholds``), ``aji`` (classic Aggregated
        Jaccard Index, Kumar et al. 2017), ``dice`` (pixel Dice of the foreground), ``n_pred``
        and ``n_gt``. Two empty images score 1.0 everywhere; one empty image scores 0.0.

    Warns
    -----
    UserWarning
        When either image looks like a class map, a mask or a microscope image rather than
        instance labels (:func:`not_instance_labels`, :func:`label_evidence`): its scores
        mean nothing.
    """
    for name, labels in (("pred", pred), ("gt", gt)):
        labels = _as_labels(labels, name)
        problem = not_instance_labels(labels)
        evidence = label_evidence(labels)
        # most neighbours differ: intensities for sure (small labels of many tiny touching
        # cells differ where they touch, a fifth of their pixels at most)
        if not problem and evidence.labels is False and evidence.differ > 0.5:
            problem = (
                f"it looks like a microscope image ({evidence.describe()}), where labels give "
                "each cell one number: give the labels (what segment returns, the ground "
                "truth's mask file)"
            )
        if problem:
            # a warning, not an error: scripts score what they were given, but are told
            warnings.warn(
                f"{name} does not look like instance labels: {problem}.", UserWarning, stacklevel=2
            )
    ov = overlap_table(pred, gt)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    cache: dict[float, MatchResult] = {}

    def at(t: float) -> MatchResult:
        if t not in cache:
            cache[t] = _match(ov, t)
        return cache[t]

    m50 = at(0.5)
    fg_inter = int(ov.inter.sum())
    fg_sum = int(ov.gt_area.sum() + ov.pred_area.sum())
    return {
        "precision": m50.precision,
        "recall": m50.recall,
        "f1": m50.f1,
        "f1_50": m50.f1,
        "ap_50": m50.ap,
        "ap_75": at(0.75).ap,
        "map": float(np.mean([at(t).ap for t in thresholds])),
        "aji": _aji(ov),
        "dice": _ratio(2 * fg_inter, fg_sum, 1.0),
        "n_pred": int(ov.pred_ids.size),
        "n_gt": int(ov.gt_ids.size),
    }


def mean_metrics(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-image metric dictionaries key by key (each image weighs the same).

    Parameters
    ----------
    results : sequence of dict
        Outputs of :func:`evaluate`, all with the same keys.

    Returns
    -------
    dict
        The mean of every key, as float.
    """
    if not results:
        raise ValueError("mean_metrics needs at least one result")
    keys = list(results[0])
    for r in results[1:]:
        if set(r) != set(keys):
            raise ValueError("all results must have the same keys")
    return {k: float(np.mean([r[k] for r in results])) for k in keys}
