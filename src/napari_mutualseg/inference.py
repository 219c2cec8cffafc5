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

from .disagreement import disagreement_map
from .supervision import _BoxFrames, boxes_mask

if TYPE_CHECKING:
    from .supervision import Supervision

#: Default tile edge and overlap (pixels) of whole-image prediction.
DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 64
#: Smallest tile edge accepted: smaller tiles cost far more time than they save memory.
MIN_TILE_SIZE = 32


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
    markers, _ = ndi.label(h_maxima(distance, h) & cores)
    labels = watershed(-distance, markers, mask=foreground)
    return _relabel_min_size(labels.astype(np.int32, copy=False), min_size)


def box_objects(
    foreground: np.ndarray, supervision: Supervision, *, core_scale: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One object per box: the foreground component that best covers the box's ellipse core.

    Within each box, the connected component of ``foreground`` overlapping the core of the
    box's ellipse (the ellipse shrunk to ``core_scale`` of its axes) most is kept and its holes
    filled. Where two boxes claim a pixel, the box with the smaller normalised elliptical
    distance wins.

    Parameters
    ----------
    foreground : numpy.ndarray
        Boolean ``(H, W)`` foreground mask.
    supervision : Supervision
        The boxes (and image shape) to read objects for.
    core_scale : float
        Core size relative to the ellipse.

    Returns
    -------
    labels : numpy.ndarray
        int32 map, ``k + 1`` for box ``k``'s object, 0 elsewhere.
    status : numpy.ndarray
        Per box: object area divided by the core area (0 when nothing overlaps the core).
    """
    shape = foreground.shape
    boxes = supervision.boxes
    status = np.zeros(len(boxes), np.float32)
    best = np.full(shape, np.inf, np.float32)
    claims = np.full(shape, _UNCLAIMED, np.uint32)
    if boxes:
        frames = _BoxFrames(shape, boxes)
        heights, widths = frames.y1 - frames.y0, frames.x1 - frames.x0
        order = np.flatnonzero((heights > 0) & (widths > 0))
        order = order[np.lexsort((widths[order], frames.aligned[order]))]
        flat_foreground = foreground.reshape(-1)
        start = 0
        while start < order.size:
            # Boxes of about one width, their crops one above the other in a canvas of
            # _STRIP_PIXELS or so, read at once.
            first = order[start]
            width = widths[first] * 5 // 4 + 4
            rest = order[start:]
            fits = np.cumsum(heights[rest] + 1) * (width + 1) <= _STRIP_PIXELS
            alike = (widths[rest] <= width) & (frames.aligned[rest] == frames.aligned[first])
            take = alike & fits  # both hold for a run of boxes from the first on
            strip = rest[: max(take.size if take.all() else int(take.argmin()), 1)]
            pixels, owners, dist = _strip_objects(
                flat_foreground, shape[1], frames, strip, core_scale**2, status
            )
            _claim(best.reshape(-1), claims.reshape(-1), pixels, owners, dist)
            start += strip.size
    del best  # its memory back before the claims are read out
    return _claimed_labels(claims), status


#: Canvas pixels :func:`box_objects` reads at once (about 40 bytes each, 5 MB): few enough to
#: stay in the cache, whatever the number and size of the boxes.
_STRIP_PIXELS = 1 << 17
#: A claim of a pixel at the best distance: ``_LATER - k`` for box ``k`` when the box takes it
#: from an earlier box at that distance, else ``_LATER + 1 + k``; the least one holds.
_LATER = 2**31 - 1
_UNCLAIMED = np.iinfo(np.uint32).max


def _strip_objects(
    flat_foreground: np.ndarray,
    image_width: int,
    frames: _BoxFrames,
    strip: np.ndarray,
    core2: float,
    status: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`box_objects` of the boxes ``strip``, all at once: their crops one above the other
    in a canvas, a gap row below each and a gap column right of it, so that no component or
    hole reaches from one crop into another and each crop's are what it alone would have.

    Sets ``status`` of the boxes and returns the object pixels (flat image indices), the box
    of each and its distance ``u**2 + v**2`` (float64) from that box's centre.
    """
    heights = frames.y1[strip] - frames.y0[strip]
    widths = frames.x1[strip] - frames.x0[strip]
    row_box = np.repeat(np.arange(strip.size), heights + 1)
    row_in = np.arange(row_box.size) - np.repeat(np.cumsum(heights + 1) - heights - 1, heights + 1)
    real = row_in < heights[row_box]
    owner = strip[row_box]
    image_row = frames.y0[owner] + row_in
    cols = np.arange(widths.max() + 1)
    dy = image_row.astype(np.float64) - frames.cy[owner]
    if frames.aligned[strip[0]]:
        # v is a box's along its columns: computed once a box and copied to its rows
        dx = (frames.x0[strip][:, None] + cols).astype(np.float64) - frames.cx[strip][:, None]
        v = dx / frames.h1[strip][:, None]
        off = cols >= widths[:, None]
        v2 = v * v
        v2[off] = np.inf
        u = dy / frames.h0[owner]
        dist = np.where(real, u * u, np.inf)[:, None] + v2[row_box]
        inside = ((np.abs(u) <= 1.0) & real)[:, None] & ((np.abs(v) <= 1.0) & ~off)[row_box]
        core = dist <= core2
    else:
        on = cols < np.where(real, widths[row_box], 0)[:, None]
        dx = (frames.x0[owner][:, None] + cols).astype(np.float64) - frames.cx[owner][:, None]
        c, s, dy = frames.cos[owner][:, None], frames.sin[owner][:, None], dy[:, None]
        u = (dy * c + dx * s) / frames.h0[owner][:, None]
        v = (dx * c - dy * s) / frames.h1[owner][:, None]
        dist = u * u + v * v
        inside = (np.maximum(np.abs(u), np.abs(v)) <= 1.0) & on
        core = (dist <= core2) & on
    pixels = (image_row * image_width + frames.x0[owner])[:, None] + cols
    comps, n = ndi.label(np.take(flat_foreground, pixels, mode="clip") & inside)
    core_rows = core.sum(axis=1)
    on_core = comps[core]
    overlap = np.bincount(on_core, minlength=n + 1)
    overlap[0] = 0
    comp_box = np.zeros(n + 1, np.intp)
    comp_box[on_core] = np.repeat(row_box, core_rows)
    most = np.zeros(strip.size, np.intp)
    np.maximum.at(most, comp_box, overlap)
    best = np.flatnonzero((overlap > 0) & (overlap == most[comp_box]))
    # of equal overlaps the first component, as argmax takes it: a crop's components are
    # numbered in its raster order on the canvas as on the image
    best_box = comp_box[best]
    by_box = np.lexsort((best, best_box))
    best, best_box = best[by_box], best_box[by_box]
    lead = np.r_[True, best_box[1:] != best_box[:-1]] if best.size else np.zeros(0, bool)
    chosen = np.zeros(n + 1, bool)
    chosen[best[lead]] = True
    found = best_box[lead]
    if not found.size:
        return pixels[:0, 0], owner[:0], dist[:0, 0]
    obj = _fill_holes(chosen[comps]) & inside
    obj_rows = obj.sum(axis=1)
    obj_area = np.bincount(row_box, weights=obj_rows, minlength=strip.size)
    core_area = np.bincount(row_box, weights=core_rows, minlength=strip.size)
    status[strip[found]] = obj_area[found] / core_area[found]
    return pixels[obj], np.repeat(owner, obj_rows), dist[obj]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``, by labelling the gaps (a quarter of its time)."""
    gaps, _ = ndi.label(~mask)
    outside = np.zeros(int(gaps.max()) + 1, bool)
    for edge in (gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]):
        outside[edge] = True
    outside[0] = False
    return ~outside[gaps]


def _claim(
    best: np.ndarray, claims: np.ndarray, pixels: np.ndarray, owners: np.ndarray, dist: np.ndarray
) -> None:
    """Boxes claim their objects' pixels as if one after the other, each taking a pixel when
    its distance is below the best so far (float32). That leaves a pixel to the first box of
    least float32 distance, or to the last box at that distance whose float64 distance is
    below it (it rounded up): to the least claim at the least distance, whatever the order of
    the claims."""
    near = dist.astype(np.float32)
    before = best[pixels]
    np.minimum.at(best, pixels, near)
    now = best[pixels]
    claims[pixels[now < before]] = _UNCLAIMED  # a nearer box: earlier claims are void
    claim = np.where(dist < now, _LATER - owners, _LATER + 1 + owners).astype(np.uint32)
    claim[near != now] = _UNCLAIMED
    np.minimum.at(claims, pixels, claim)


def _claimed_labels(claims: np.ndarray) -> np.ndarray:
    """:func:`_claim`'s claims as int32 labels, ``k + 1`` for box ``k`` and 0 unclaimed, in
    place."""
    flat = claims.reshape(-1)
    step = 1 << 16  # a part at a time, in the cache
    for i in range(0, flat.size, step):
        part = flat[i : i + step].astype(np.int64)
        label = np.where(part <= _LATER, _LATER + 1 - part, part - _LATER)
        label[part == _UNCLAIMED] = 0
        flat[i : i + step] = label
    return claims.view(np.int32)


def per_box_instances(
    proba: np.ndarray,
    supervision: Supervision,
    *,
    fg_threshold: float = 0.5,
    core_scale: float = 0.5,
    min_size: int = 16,
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

    Returns
    -------
    numpy.ndarray
        int32 labels: ``k + 1`` for box ``k``, larger ids for unboxed cells.
    """
    foreground = (proba[1] + proba[2]) > fg_threshold
    labels, found = box_objects(foreground, supervision, core_scale=core_scale)
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
