"""Pure helpers of the benchmark: boxes, the classical baseline, the comparison trainers, rows.

Everything here works on plain arrays and the public pieces of ``napari_mutualseg``; nothing
reads files, so the test suite can check it on synthetic scenes in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from napari_mutualseg.boxes import boxes_from_labels as label_boxes
from napari_mutualseg.inference import instances_from_proba, per_box_instances
from napari_mutualseg.metrics import evaluate, mean_metrics
from napari_mutualseg.supervision import Box, boxes_mask, supervision_from_masks
from napari_mutualseg.training import MutualTrainer

#: Keys every result row carries (more keys may follow).
ROW_KEYS = (
    "setting",
    "method",
    "device",
    "boxes",
    "f1_50",
    "ap_50",
    "ap_75",
    "map",
    "aji",
    "dice",
    "seconds",
)
#: Metric keys averaged per image and reported per method and per round.
METRIC_KEYS = ("f1_50", "ap_50", "ap_75", "map", "aji", "dice")
SETTINGS = ("boxed", "inductive")
METHODS = ("ellipse", "otsu", "round1", "self", "mutual", "full")
#: Methods that need no network and exist only where the boxes are given.
BOXED_ONLY = ("ellipse", "otsu")

# make_supervision rejects boxes thinner than this; a few ground-truth nuclei are 1 px wide.
MIN_BOX = 2.0


# ---------------------------------------------------------------------------------- boxes


def boxes_from_labels(labels: np.ndarray) -> np.ndarray:
    """Half-open bounding boxes ``y0, x0, y1, x1`` of every ground-truth instance.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 background.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float64 rows in the order of the instance ids.
    """
    rows = [box.pixel_range() for box in label_boxes(np.asarray(labels))]
    return np.asarray(rows, np.float64).reshape(-1, 4)


def jitter_boxes(
    boxes: np.ndarray,
    shape: Sequence[int],
    rng: np.random.Generator,
    fraction: float = 0.1,
) -> np.ndarray:
    """Boxes as a person would draw them: every side moved independently and at random.

    Each side moves by ``U(-fraction, fraction)`` times the box's own height (top and bottom)
    or width (left and right), then the box is clipped to the image. Coordinates stay
    fractional, as napari's rectangle tool gives them.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` half-open rows ``y0, x0, y1, x1``.
    shape : sequence of int
        Image ``(H, W)``.
    rng : numpy.random.Generator
        Source of the moves (seed it for a reproducible benchmark).
    fraction : float
        Largest move of a side relative to the box size.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float64 jittered rows, inside ``[0, H] x [0, W]``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    moved = boxes + rng.uniform(-fraction, fraction, boxes.shape) * size
    limit = np.array([shape[0], shape[1], shape[0], shape[1]], np.float64)
    return np.clip(moved, 0.0, limit)


def region_boxes(labels: np.ndarray, unboxed: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and region of the "annotated region" mode, with a share of the cells left unboxed.

    The person marks the left part of the image as the region and boxes every cell that
    reaches into it; the cells right of it stay unboxed and unlabelled. The region's right
    edge is placed so that ``unboxed`` of the cells (by count) lie wholly outside it. The
    returned region is the marked rectangle united with the boxes of the cells that reach
    into it (a person boxes a cell on the region's edge whole).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 background.
    unboxed : float
        Share of the cells left unboxed, in ``[0, 1)``.

    Returns
    -------
    boxes : numpy.ndarray
        ``(N, 4)`` half-open rows ``y0, x0, y1, x1`` of the boxed cells.
    region : numpy.ndarray
        bool ``(H, W)`` mask of the annotated region.
    """
    boxes = boxes_from_labels(labels)
    n_boxed = len(boxes) - round(unboxed * len(boxes))
    left = np.sort(boxes[:, 1])
    cut = int(left[n_boxed]) if n_boxed < len(boxes) else labels.shape[1]
    boxes = boxes[boxes[:, 1] < cut]
    region = boxes_mask(labels.shape, [Box.from_corners(*b) for b in boxes])
    region[:, :cut] = True
    return boxes, region


def widen_small_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Grow boxes thinner than 2 px about their centre so that they make a supervision.

    A handful of BBBC039 instances are a single pixel wide; dropping their boxes would leave
    cells unboxed and label them background, so they are widened instead.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` half-open rows ``y0, x0, y1, x1``.
    shape : sequence of int
        Image ``(H, W)``.

    Returns
    -------
    numpy.ndarray
        A copy with every side at least 2 px and inside the image.
    """
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    for axis, n in ((0, shape[0]), (1, shape[1])):
        lo, hi = out[:, axis], out[:, axis + 2]
        short = hi - lo < MIN_BOX
        centre = (lo + hi) / 2
        lo[short] = np.clip(centre[short] - MIN_BOX / 2, 0.0, n - MIN_BOX)
        hi[short] = lo[short] + MIN_BOX
    return out


# ------------------------------------------------------------------------------- baselines


def otsu_in_boxes(image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The classical baseline: an Otsu threshold inside each box, one object per box.

    Within each box the pixels above the box's own Otsu threshold are foreground; the largest
    connected component, holes filled, is the box's object. A box whose pixels are all equal
    gets its inscribed ellipse. Where two boxes' objects overlap, the pixel goes to the box it
    lies deepest inside (smallest normalised elliptical distance), as in the engine's own
    per-box reading.

    Parameters
    ----------
    image : numpy.ndarray
        2D image (any intensity scale; bright objects on a dark background).
    boxes : sequence of Box
        The boxes (e.g. ``Supervision.boxes``).

    Returns
    -------
    numpy.ndarray
        int32 labels, ``k + 1`` for box ``k``'s object, 0 elsewhere.
    """
    image = np.asarray(image, np.float64)
    labels = np.zeros(image.shape, np.int32)
    best = np.full(image.shape, np.inf)
    for k, box in enumerate(boxes):
        slices, u, v = box.local_coords(image.shape)
        inside = np.maximum(np.abs(u), np.abs(v)) <= 1.0
        dist = u**2 + v**2
        values = image[slices][inside]
        obj = dist <= 1.0
        if values.size and values.max() > values.min():
            comps, n = ndi.label((image[slices] > threshold_otsu(values)) & inside)
            if n:
                sizes = np.bincount(comps.ravel())
                sizes[0] = 0
                obj = ndi.binary_fill_holes(comps == sizes.argmax()) & inside
        closer = obj & (dist < best[slices])
        labels[slices][closer] = k + 1
        best[slices][closer] = dist[closer]
    return labels


def true_classes(labels: np.ndarray) -> np.ndarray:
    """The fully supervised training label: 1 cell interior, 2 instance edges, 0 background.

    The edge is each instance's inner boundary, the same one-pixel convention as the ellipse
    label's boundary class, so both kinds of supervision teach the network the same classes:
    :func:`~napari_mutualseg.supervision.supervision_from_masks` with every cell trusted.

    Parameters
    ----------
    labels : numpy.ndarray
        Ground-truth instance labels.

    Returns
    -------
    numpy.ndarray
        uint8 class map.
    """
    return supervision_from_masks(labels, rest="trusted").classes


def use_true_labels(trainer: MutualTrainer, masks: Sequence[np.ndarray]) -> MutualTrainer:
    """Make a one-round trainer learn from the true masks instead of the boxes.

    Only the round-1 label of each image changes: network, sampler, augmentation, optimiser
    and step budget stay the engine's. Train it with ``rounds=1`` (its later exchange would
    otherwise start from the boxes again).

    Parameters
    ----------
    trainer : MutualTrainer
        A fresh trainer (not yet iterated).
    masks : sequence of numpy.ndarray
        Ground-truth instances, one per training image.

    Returns
    -------
    MutualTrainer
        The same trainer, for chaining.
    """
    if len(masks) != len(trainer.contexts):
        raise ValueError(f"Got {len(masks)} masks for {len(trainer.contexts)} images.")
    for ctx, mask, window in zip(trainer.contexts, masks, trainer.windows, strict=True):
        ctx.initial = true_classes(mask[window])
    return trainer


# ------------------------------------------------------------------ reading (pool workers)
# Module-level functions so that worker processes can unpickle them.


def read_boxed(proba, supervision, fg_threshold, core_scale, min_size) -> np.ndarray:
    """One object per box from probabilities (:func:`per_box_instances`, positional args)."""
    return per_box_instances(
        proba, supervision, fg_threshold=fg_threshold, core_scale=core_scale, min_size=min_size
    )


def read_free(proba, fg_threshold, min_size) -> np.ndarray:
    """Instances without boxes (:func:`instances_from_proba`, positional args)."""
    return instances_from_proba(proba, fg_threshold=fg_threshold, min_size=min_size)


# ------------------------------------------------------------------------------- results


def score(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    """Per-image mean of every metric of :func:`napari_mutualseg.metrics.evaluate`.

    Parameters
    ----------
    preds, gts : sequence of numpy.ndarray
        Predicted and true instance labels, image by image.

    Returns
    -------
    dict
        Metric name to its mean over the images (each image weighs the same).
    """
    return mean_metrics([evaluate(p, g) for p, g in zip(preds, gts, strict=True)])


def make_row(
    setting: str,
    method: str,
    device: str,
    boxes: str,
    metrics: dict[str, float],
    seconds: float,
    **extra,
) -> dict:
    """One result row: the documented keys first, then ``extra``.

    Parameters
    ----------
    setting : {"boxed", "inductive"}
    method : {"ellipse", "otsu", "round1", "self", "mutual", "full"}
    device : str
        ``"cpu"`` or ``"cuda:N"``.
    boxes : {"exact", "jittered"}
    metrics : dict
        At least the keys of :data:`METRIC_KEYS` (e.g. the output of :func:`score`).
    seconds : float
        Wall time of the method (training, or computing the baseline), without evaluation.
    **extra
        Further fields (timing per round, memory, configuration, ...).

    Returns
    -------
    dict
        JSON-ready row.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    row = {"setting": setting, "method": method, "device": device, "boxes": boxes}
    row.update({k: round(float(metrics[k]), 4) for k in METRIC_KEYS})
    row["seconds"] = round(float(seconds), 2)
    for k in ("precision", "recall"):
        if k in metrics:
            row[k] = round(float(metrics[k]), 4)
    row.update(extra)
    return row


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a GitHub markdown table (one line per setting, method and boxes).

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`make_row`.

    Returns
    -------
    str
        The table, ending with a newline.
    """

    def fmt_mb(value) -> str:
        return "–" if value is None else f"{value:,.0f}"

    head = (
        "| setting | boxes | method | F1@0.5 | AP@0.5 | AP@0.75 | mAP | AJI | Dice "
        "| s total | s/round | peak RAM MB | peak GPU MB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    order = {m: i for i, m in enumerate(METHODS)}
    lines = []
    for r in sorted(rows, key=lambda r: (r["setting"] != "boxed", r["boxes"], order[r["method"]])):
        per_round = r.get("seconds_per_round") or []
        spr = f"{np.mean(per_round):.1f}" if per_round else "–"
        metrics = " | ".join(f"{r[k]:.3f}" for k in METRIC_KEYS)
        lines.append(
            f"| {r['setting']} | {r['boxes']} | {r['method']} | {metrics} | {r['seconds']:.1f} "
            f"| {spr} | {fmt_mb(r.get('peak_ram_mb'))} | {fmt_mb(r.get('peak_gpu_mb'))} |"
        )
    return head + "\n".join(lines) + "\n"
