"""Tiled ensemble prediction and instance extraction."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .boxes import inside_box
from .disagreement import disagreement_map
from .supervision import boxes_mask

if TYPE_CHECKING:
    from .supervision import Supervision

#: Default tile edge and overlap (pixels) of whole-image prediction.
DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 64
#: Smallest tile edge accepted: smaller tiles cost far more time than they save memory.
MIN_TILE_SIZE = 32

# scipy's default structure of labelling and hole filling (4-connected), made once: rebuilt
# on each call, it cost 15% of the reading of an object per box (thousands of boxes a read)
_CROSS = ndi.generate_binary_structure(2, 1)


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise a ``ValueError`` that says what to use when tile size or overlap are unusable.

    An overlap of more than half a tile is allowed and taken as half a tile.
    """
    if not (_is_whole(tile_size) and tile_size >= MIN_TILE_SIZE):
        raise ValueError(
            f"The tile size must be a whole number of at least {MIN_TILE_SIZE} pixels, got "
            f"{tile_size!r} ({DEFAULT_TILE_SIZE} is the default; smaller tiles only make "
            "prediction slower)."
        )
    if not (_is_whole(overlap) and overlap >= 0):
        raise ValueError(
            f"The tile overlap must be a whole number of 0 or more pixels, got {overlap!r} "
            f"({DEFAULT_OVERLAP} is the default; more than half a tile counts as half)."
        )


def _is_whole(value: object) -> bool:
    """Whether ``value`` is an integer (NumPy's too), not a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _window(size: int, overlap: int) -> np.ndarray:
    """1D blending weight: flat in the middle, a raised-cosine ramp over the overlap.

    Every weight is positive (``sin**2`` keeps the smallest ones from rounding to zero), so the
    weights of the tiles over any pixel have a positive sum to divide by.
    """
    w = np.ones(size, np.float32)
    ramp = min(overlap, size // 2)
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float64) + 0.5) / ramp
        w[:ramp] = np.sin(0.5 * np.pi * t) ** 2  # = 0.5 - 0.5 * cos(pi * t)
        w[-ramp:] = w[:ramp][::-1]
    return w


def _tiling(length: int, tile: int, overlap: int, divisor: int) -> tuple[int, list[int]]:
    """Tile edge and start positions along one axis: as few tiles as fit, all the same size.

    Splitting evenly (rather than full tiles plus a sliver) means a 520-pixel axis with
    512-pixel tiles costs two ~300-pixel tiles, not two full ones. The tiles cover the axis
    padded to a multiple of ``divisor`` and start at multiples of it: a U-Net's pooling grid
    then lies on every tile as on the whole image, so a tile predicts what the whole image
    would (a tile shifted off that grid predicts other probabilities, not only at its edges).
    """
    whole = -(-length // divisor) * divisor
    if whole <= tile:
        return whole, [0]
    n = -(-(whole - overlap) // (tile - overlap))
    size = -(-(whole + (n - 1) * overlap) // n)
    size = min(-(-size // divisor) * divisor, whole)
    # Rounded to the grid, neighbours stay at most ``size`` apart: no pixel is left out.
    starts = np.round(np.linspace(0, whole - size, n) / divisor).astype(int) * divisor
    return size, starts.tolist()


def _softmax(
    model: torch.nn.Module, tiles: torch.Tensor, device: torch.device, flips: bool
) -> torch.Tensor:
    """One network's softmax of a batch of tiles (averaged over flips when ``flips``)."""
    flip_dims = [(), (2,), (3,), (2, 3)] if flips else [()]
    total = None
    for dims in flip_dims:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(tiles.flip(dims) if dims else tiles)
        p = torch.softmax(logits.float(), dim=1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(flip_dims)


def _tiled(
    models: Sequence[torch.nn.Module],
    image: np.ndarray,
    device: torch.device,
    channels: int,
    per_tile: Callable[[torch.Tensor], torch.Tensor],
    *,
    tile_size: int,
    overlap: int,
    batch_size: int,
) -> np.ndarray:
    """``per_tile`` of an image tile by tile, blended into one ``(channels, H, W)`` map.

    The image is ``(H, W)``, or ``(C, H, W)`` for networks of C input channels. Memory is
    the tile batch plus the result; images whose result does not fit are segmented block by
    block (:mod:`napari_mutualseg.blockwise`, which calls this on each block). Tiles overlap
    by ``overlap`` pixels and are blended with a raised-cosine window so that tile seams do
    not show.
    """
    divisor = max(int(getattr(m, "divisor", 1)) for m in models)
    if image.ndim == 2:
        image = image[None]
    given, height, width = image.shape
    expected = models[0].arch.get("in_channels", given)
    if given != expected:
        raise ValueError(f"The networks take {expected} channel(s); the image has {given}.")
    tile_size = max(divisor, tile_size // divisor * divisor)
    overlap = min(overlap, tile_size // 2)
    # Pad to a multiple of the divisor, which the tiles cover (see _tiling).
    tile_h, ys = _tiling(height, tile_size, overlap, divisor)
    tile_w, xs = _tiling(width, tile_size, overlap, divisor)
    pad_h, pad_w = ys[-1] + tile_h - height, xs[-1] + tile_w - width
    padded = np.pad(
        image,
        ((0, 0), (0, pad_h), (0, pad_w)),
        mode="reflect" if min(height, width) > 1 else "edge",
    )
    ph, pw = padded.shape[1:]
    weight = np.outer(
        _window(tile_h, overlap if len(ys) > 1 else 0),
        _window(tile_w, overlap if len(xs) > 1 else 0),
    )
    out = np.zeros((channels, ph, pw), np.float32)
    norm = np.zeros((ph, pw), np.float32)
    for m in models:
        m.eval()
    corners = [(y, x) for y in ys for x in xs]
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        batch = np.stack([padded[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
        xb = torch.from_numpy(batch).to(device)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        result = per_tile(xb).cpu().numpy()
        for (y, x), p in zip(chunk, result, strict=True):
            out[:, y : y + tile_h, x : x + tile_w] += p * weight
            norm[y : y + tile_h, x : x + tile_w] += weight
    # Every pixel lies in a tile and every weight is positive: the sum is never 0. At an image
    # corner it is the product of two ramp ends (below 1e-6 with the default overlap), so a
    # floor there would scale the probabilities of the corner pixels down.
    out /= norm
    return out[:, :height, :width]


@torch.no_grad()
def predict_proba(
    models: Sequence[torch.nn.Module],
    image: np.ndarray,
    device: torch.device,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    flips: bool = False,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Mean softmax of ``models`` over a normalised ``image``, tile by tile.

    Memory is the tile batch plus the ``(3, H, W)`` result (12 bytes a pixel); images whose
    result does not fit are segmented block by block (:mod:`napari_mutualseg.blockwise`,
    which calls this on each block). Tiles overlap by ``overlap`` pixels and are blended with
    a raised-cosine window so that tile seams do not show.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        Networks with a ``divisor`` attribute (input sizes must be multiples of it).
    image : numpy.ndarray
        Normalised float32 image: ``(H, W)``, or ``(C, H, W)`` for networks of C input
        channels.
    device : torch.device
        Where to run the networks.
    tile_size, overlap, batch_size : int
        Tile edge, overlap between tiles and tiles per forward pass.
    flips : bool
        Also average over the image flipped up-down, left-right and both (test-time
        augmentation: steadier probabilities at four times the cost).
    check : callable, optional
        Called before each network's pass over a batch of tiles; whatever it raises stops the
        prediction (how a cancelled training stops within one pass).

    Returns
    -------
    numpy.ndarray
        ``(n_classes, H, W)`` float32 probabilities.
    """

    def per_tile(tiles: torch.Tensor) -> torch.Tensor:
        total = None
        for m in models:
            if check is not None:
                check()
            p = _softmax(m, tiles, device, flips)
            total = p if total is None else total + p
        return total / len(models)

    n_classes = int(models[0].arch["n_classes"])
    return _tiled(
        models,
        image,
        device,
        n_classes,
        per_tile,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
    )


@torch.no_grad()
def predict_disagreement(
    models: Sequence[torch.nn.Module],
    image: np.ndarray,
    device: torch.device,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """The mean softmax of two networks and where they disagree, in one tiled pass.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        The two networks (A, B).
    image : numpy.ndarray
        Normalised float32 image, ``(H, W)`` or ``(C, H, W)``.
    device : torch.device
        Where to run the networks.
    tile_size, overlap, batch_size : int
        As in :func:`predict_proba`.

    Returns
    -------
    proba : numpy.ndarray
        ``(n_classes, H, W)`` float32 mean probabilities (as :func:`predict_proba`).
    disagreement : numpy.ndarray
        ``(H, W)`` float32 :func:`~napari_mutualseg.disagreement.disagreement_map` of the two
        networks' softmax, blended over tiles like the probabilities (0 exactly where the two
        agree).
    """
    model_a, model_b = models

    def per_tile(tiles: torch.Tensor) -> torch.Tensor:
        pa = _softmax(model_a, tiles, device, False)
        pb = _softmax(model_b, tiles, device, False)
        return torch.cat([(pa + pb) / 2, disagreement_map(pa, pb, 1)[:, None]], dim=1)

    n_classes = int(model_a.arch["n_classes"])
    out = _tiled(
        models,
        image,
        device,
        n_classes + 1,
        per_tile,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
    )
    return out[:n_classes], out[n_classes].clip(0.0, 1.0)


def _relabel_min_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    lut = np.zeros(sizes.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def instances_from_proba(
    proba: np.ndarray,
    *,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    boundary_threshold: float = 0.3,
    min_size: int = 16,
    smoothing: float = 1.0,
    h: float = 1.0,
) -> np.ndarray:
    """Cell instances from class probabilities by seeded watershed.

    The cell cores are the pixels with P(cell) > ``seed_threshold`` and P(boundary) <
    ``boundary_threshold``. One seed per cell is a regional maximum (of height at least ``h``
    pixels) of their smoothed distance to the core's edge: touching cells whose cores still
    meet at a narrow neck get a seed each, which the raw cores alone would merge. Seeds grow by
    watershed over the foreground (P(cell) + P(boundary) > ``fg_threshold``), which gives the
    boundary band back to the cells. Objects smaller than ``min_size`` pixels are dropped.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(3, H, W)`` probabilities of background, cell and boundary.
    fg_threshold, seed_threshold, boundary_threshold : float
        Probability thresholds described above.
    min_size : int
        Smallest object kept, in pixels.
    smoothing, h : float
        Gaussian sigma applied to the distance map and least height of a seed, in pixels.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 background, 1..N cells.
    """
    cell, boundary = proba[1], proba[2]
    foreground = (cell + boundary) > fg_threshold
    cores = (cell > seed_threshold) & (boundary < boundary_threshold) & foreground
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(cores), smoothing)
    markers, _ = ndi.label(_h_maxima(distance, h) & cores)
    labels = watershed(-distance, markers, mask=foreground)
    return _relabel_min_size(labels.astype(np.int32, copy=False), min_size)


def _h_maxima(distance: np.ndarray, h: float) -> np.ndarray:
    """``h_maxima(distance, h)`` on the pixels above 0, one group of them at a time.

    scikit-image's reconstruction sorts every pixel of the image, the background's too: at
    2048² it took 4.6 s, where the watershed takes 0.5 s. A group of pixels above 0 meets the
    others only through pixels of 0, so a path from outside it adds to its reconstruction no
    more than the image's highest value does across a gap of 0: that value, put in its
    window's corner two pixels off the group, gives each group's window the result the whole
    image gives it.
    """
    support = distance > 0
    if support.all():  # one group: h_maxima also answers for an h above the image's range
        return h_maxima(distance, h).astype(bool)
    eight = np.ones((3,) * distance.ndim, bool)  # h_maxima's default neighbourhood
    groups, _ = ndi.label(support, structure=eight)
    tops = np.zeros(distance.shape, bool)
    highest = distance.max()
    for label, where in enumerate(ndi.find_objects(groups), 1):
        mine = groups[where] == label
        window = np.zeros(tuple(n + 4 for n in mine.shape), distance.dtype)
        inner = tuple(slice(2, n + 2) for n in mine.shape)
        window[inner] = np.where(mine, distance[where], 0)
        window.flat[0] = highest
        tops[where] |= h_maxima(window, h)[inner].astype(bool) & mine
    return tops


def box_objects(
    proba: np.ndarray,
    supervision: Supervision,
    *,
    fg_threshold: float = 0.5,
    core_scale: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """One object per box: the foreground component that best covers the box's ellipse core.

    The foreground is where cell and boundary together are more probable than
    ``fg_threshold``. Within each box, its connected component overlapping the core of the
    box's ellipse (the ellipse shrunk to ``core_scale`` of its axes) most is kept and its holes
    filled. Where two boxes claim a pixel, the box with the smaller normalised elliptical
    distance wins.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(3, H, W)`` probabilities of background, cell and boundary.
    supervision : Supervision
        The boxes (and image shape) to read objects for.
    fg_threshold : float
        Foreground threshold.
    core_scale : float
        Core size relative to the ellipse.

    Returns
    -------
    labels : numpy.ndarray
        int32 map, ``k + 1`` for box ``k``'s object, 0 elsewhere.
    status : numpy.ndarray
        Per box: object area divided by the core area (0 when nothing overlaps the core).
    """
    foreground = (proba[1] + proba[2]) > fg_threshold
    shape = foreground.shape
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    status = np.zeros(len(supervision.boxes), np.float32)
    for k, box in enumerate(supervision.boxes):
        slices, u, v = box.local_coords(shape)
        dist = u**2 + v**2
        inside = inside_box(u, v)
        core = dist <= core_scale**2
        comps, n = ndi.label(foreground[slices] & inside, _CROSS)
        if n == 0 or not core.any():
            continue
        overlap = np.bincount(comps[core], minlength=n + 1)
        overlap[0] = 0
        if overlap.max() == 0:
            continue
        obj = ndi.binary_fill_holes(comps == overlap.argmax(), _CROSS) & inside
        status[k] = obj.sum() / core.sum()
        closer = obj & (dist < best[slices])
        labels[slices][closer] = k + 1
        best[slices][closer] = dist[closer]
    return labels, status


def per_box_instances(
    proba: np.ndarray,
    supervision: Supervision,
    *,
    fg_threshold: float = 0.5,
    core_scale: float = 0.5,
    min_size: int = 16,
    objects: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Instances of a boxed image: one object per box, plus the cells nobody boxed.

    Each box gets the predicted object that covers its ellipse core (or the ellipse itself
    when the networks found nothing there: a box promises a cell). Cells the watershed finds
    outside every box (unboxed cells in an annotated region, or beyond it) are added.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(3, H, W)`` probabilities.
    supervision : Supervision
        The boxes of this image.
    fg_threshold, core_scale : float
        Foreground threshold and ellipse core size (see :func:`box_objects`).
    min_size : int
        Smallest unboxed object kept, in pixels.
    objects : tuple of numpy.ndarray, optional
        :func:`box_objects` of ``proba`` and ``supervision`` at this ``fg_threshold`` and
        ``core_scale``, when already read (a loop over the boxes: seconds on a large image);
        they are left unchanged.

    Returns
    -------
    numpy.ndarray
        int32 labels: ``k + 1`` for box ``k``, larger ids for unboxed cells.
    """
    if objects is None:
        labels, found = box_objects(
            proba, supervision, fg_threshold=fg_threshold, core_scale=core_scale
        )
    else:
        labels, found = objects[0].copy(), objects[1]  # filled in below, not the caller's
    missing = np.isin(supervision.instances, np.flatnonzero(found == 0) + 1) & (labels == 0)
    labels[missing] = supervision.instances[missing]
    in_box = boxes_mask(labels.shape, supervision.boxes)
    free = instances_from_proba(proba, fg_threshold=fg_threshold, min_size=min_size)
    n_free = int(free.max())
    if n_free:
        area = np.bincount(free.ravel(), minlength=n_free + 1)
        boxed = np.bincount(free[in_box], minlength=n_free + 1)
        unboxed = np.flatnonzero(boxed < 0.5 * area)
        unboxed = unboxed[unboxed > 0]
        add = np.isin(free, unboxed) & (labels == 0)
        lut = np.zeros(n_free + 1, np.int32)
        lut[unboxed] = len(supervision.boxes) + np.arange(1, unboxed.size + 1, dtype=np.int32)
        labels[add] = lut[free[add]]
    return labels
