"""Segmentation of an image of any size, block by block, in memory set by the block size.

The image is cut into square cores of ``block_size`` pixels. Each core is read with a margin
around it (the halo): the networks predict this window, the seeded watershed
(:func:`~napari_mutualseg.inference.instances_from_proba`) finds its cells, and the block keeps
the cells whose centroid lies in its core, each whole, also the part that reaches into a
neighbouring core. A cell cut by the face between two cores is seen whole by both blocks and
kept by exactly one, so it gets one label: never split at the face, never counted twice,
while the halo is wider than a cell (:func:`default_halo`). The pixels two kept cells both
claim (neighbouring blocks drew the line between them a pixel apart) stay with the cell
written first.

Joining the labels that touch across a face instead, as cellpose's distributed segmentation
does, merges touching cells whose dividing line runs along the face; choosing cells by their
centroid does not need the labels of two blocks to agree at the face at all
(``benchmarks/blockwise_quality.py`` measures both).

Only one window's image, probabilities and labels are in memory at a time; the labels go
into ``out``, which may be a zarr array on disk (:func:`napari_mutualseg.ome.labels_zarr`),
so that peak memory depends on the block size, not on the image size. Intensities are
normalised with the percentiles of the whole image, estimated from a regular subsample
(:func:`napari_mutualseg.preprocess.channel_ranges`), never per block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .inference import instances_from_proba
from .measure import Table, measure_cells
from .preprocess import (
    DEFAULT_PERCENTILES,
    NAN_ADVICE,
    apply_ranges,
    channel_ranges,
    read_here,
)

__all__ = [
    "AUTO_BLOCKWISE_PIXELS",
    "DEFAULT_BLOCK_SIZE",
    "Block",
    "BlockwiseResult",
    "block_grid",
    "block_labels",
    "check_blocks",
    "default_halo",
    "keep_owned_cells",
    "measure_blockwise",
    "segment_blockwise",
]

#: Edge of a block's core in pixels: a window of 2048 + 2 halos needs about 1 GB (1.13 GB peak
#: at 4096², torch and the model included, against 2.27 GB for the whole image).
DEFAULT_BLOCK_SIZE = 2048

#: ``ModelPair.segment`` goes block by block above this many pixels (4096 x 4096, which the
#: whole-image path segments in about 2.5 GB); smaller images are segmented whole as before.
AUTO_BLOCKWISE_PIXELS = 4096 * 4096

#: Halo for models that do not know their cells' size (saved before it was recorded).
FALLBACK_HALO = 128

#: Least halo: the networks' context (their receptive field is about 50 pixels wide).
MIN_HALO = 64

#: Halos and block edges are multiples of this, so that every window starts on the networks'
#: pooling grid (``UNet.divisor`` up to depth 6) as the whole image does.
ALIGN = 32

Window = tuple[slice, slice]


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def default_halo(cell_size: float | None) -> int:
    """The halo for cells whose largest side is ``cell_size`` pixels.

    Twice the largest cell, at least :data:`MIN_HALO`, rounded up to :data:`ALIGN`: a cell
    whose centroid lies in a core then lies whole in its window with room for the networks'
    context around it. Without a size (models saved by older versions) it is
    :data:`FALLBACK_HALO`.

    Parameters
    ----------
    cell_size : float or None
        Largest box side seen in training, in pixels (``ModelPair.cell_size``).
    """
    if not cell_size:
        return FALLBACK_HALO
    return _round_up(max(MIN_HALO, 2 * cell_size), ALIGN)


@dataclass(frozen=True)
class Block:
    """One block: its core and the window (core plus halo, clipped to the image) read for it.

    Attributes
    ----------
    core, window : tuple of slice
        ``(y, x)`` slices in image coordinates.
    inner : tuple of bool
        Whether the window's top, bottom, left and right edges lie inside the image (where a
        cell reaching the edge may be cut off), rather than on the image's own border.
    """

    core: Window
    window: Window
    inner: tuple[bool, bool, bool, bool]


def check_blocks(block_size: int | None, halo: int | None) -> None:
    """Refuse a block edge under :data:`ALIGN` pixels or a negative halo (None: the default).

    Raises
    ------
    ValueError
        Saying which setting is wrong and what it may be.
    """
    if block_size is not None and block_size < ALIGN:
        raise ValueError(
            f"block_size (--block-size) must be at least {ALIGN} pixels, got {block_size}; "
            f"blocks of {DEFAULT_BLOCK_SIZE} keep memory near 1 GB."
        )
    if halo is not None and halo < 0:
        raise ValueError(f"halo (--halo) must be 0 or more pixels, wider than a cell, got {halo}.")


def block_grid(shape: tuple[int, int], block_size: int, halo: int) -> list[Block]:
    """The blocks covering an image of ``shape`` (rows of blocks, top to bottom).

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` of the image.
    block_size, halo : int
        Core edge and margin in pixels, rounded up to multiples of :data:`ALIGN`.
    """
    check_blocks(block_size, halo)
    height, width = shape
    block_size, halo = _round_up(block_size, ALIGN), _round_up(halo, ALIGN)
    blocks = []
    for y0 in range(0, height, block_size):
        for x0 in range(0, width, block_size):
            y1, x1 = min(y0 + block_size, height), min(x0 + block_size, width)
            wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
            wy1, wx1 = min(y1 + halo, height), min(x1 + halo, width)
            blocks.append(
                Block(
                    (slice(y0, y1), slice(x0, x1)),
                    (slice(wy0, wy1), slice(wx0, wx1)),
                    (wy0 > 0, wy1 < height, wx0 > 0, wx1 < width),
                )
            )
    return blocks


def _check_image(image: Any, name: str) -> None:
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name} must be (Y, X) or (C, Y, X) with the channels first, got shape {shape}."
        )
    if min(shape[-2:]) < 8:
        raise ValueError(f"{name} is too small ({shape}); it needs at least 8x8 pixels.")
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {dtype}; a real-valued numeric image is needed.")


def _read(image: Any, window: Window, ranges: np.ndarray, name: str) -> np.ndarray:
    pixels = read_here(image[(..., *window)], np.float32)
    if not np.isfinite(pixels).all():
        ys, xs = window
        raise ValueError(
            f"{name} contains NaN or infinite pixels (in rows {ys.start}-{ys.stop}, columns "
            f"{xs.start}-{xs.stop}). {NAN_ADVICE}"
        )
    return apply_ranges(pixels, ranges)


def block_labels(
    image: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    halo: int = FALLBACK_HALO,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    min_size: int = 16,
    name: str = "image",
    ranges: np.ndarray | None = None,
) -> Iterator[tuple[Block, np.ndarray]]:
    """Each block with the cells found in its window, one block at a time.

    Parameters
    ----------
    image : array-like
        ``(Y, X)`` or ``(C, Y, X)`` (channels first, as the networks take them); numpy, zarr,
        dask or anything that slices like numpy. Only one window is read at a time.
    predict : callable
        Normalised float32 window (``(y, x)`` or ``(C, y, x)``) to ``(3, y, x)`` class
        probabilities (background, cell, boundary).
    block_size, halo : int
        Core edge and margin in pixels (rounded up to multiples of :data:`ALIGN`).
    percentiles : tuple of float
        Intensity percentiles of the whole image mapped to 0 and 1.
    min_size : int
        Smallest object kept, in pixels.
    name : str
        How the image is called in error messages.
    ranges : numpy.ndarray, optional
        ``(C, 2)`` intensities mapped to 0 and 1, when they are known already (those of a
        whole stack, :meth:`AxisImage.channel_ranges`); by default ``image``'s own
        ``percentiles``.

    Yields
    ------
    block : Block
        The block.
    labels : numpy.ndarray
        int32 cells of its window (window coordinates), 0 background.
    """
    _check_image(image, name)
    if ranges is None:
        ranges = channel_ranges(image, percentiles, name)
    for block in block_grid(tuple(image.shape[-2:]), block_size, halo):
        # no local names: they would keep the probabilities and labels alive while the
        # generator waits at ``yield``, and so through the next window's prediction
        yield (
            block,
            instances_from_proba(
                predict(_read(image, block.window, ranges, name)), min_size=min_size
            ),
        )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None under other C libraries and systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no C library found, or one without malloc_trim (musl)
        return None


def _release_freed_memory() -> None:
    """Give the memory freed by the last block back to the operating system (glibc only).

    Each block allocates and frees arrays and tensors of a few to a few tens of megabytes.
    glibc raises its mmap threshold to the largest block freed (up to 32 MB), so these come
    from its heaps, where fragmentation keeps the freed pages: over the 16 blocks of an
    8192² image the memory held at the start of a block grew from 0.33 to 0.97 GB, and the
    peak with it (1.46 GB). ``malloc_trim`` returns every free page of every heap, so each
    block starts from about the same footprint (0.45 to 0.50 GB there, peak 1.22 GB). Does
    nothing where the C library is not glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class BlockwiseResult:
    """What :func:`segment_blockwise` produced.

    Attributes
    ----------
    labels : array-like
        The int32 labels (``out``, or a new numpy array), 1..``objects`` cells.
    objects : int
        Cells labelled.
    blocks : int
        Blocks segmented.
    cut_off : int
        Kept cells that reached the edge of their block's window inside the image: cells
        wider than the halo allows, which may be cut off or merged with a neighbour there.
        Not 0 means: segment again with a larger ``halo``.
    """

    labels: Any
    objects: int
    blocks: int
    cut_off: int


def keep_owned_cells(block: Block, labels: np.ndarray, out: Any, next_id: int) -> tuple[int, int]:
    """Write the cells of one block whose centroid lies in its core into ``out``, whole.

    Each cell gets the next free label; pixels another block's cell already holds keep it,
    and a cell most of whose pixels are already held is left out (it is that block's cell).

    Parameters
    ----------
    block : Block
        The block.
    labels : numpy.ndarray
        int32 cells of its window (window coordinates), 0 background.
    out : array-like
        int32 ``(Y, X)`` labels of the whole image, written in place.
    next_id : int
        The first free label.

    Returns
    -------
    next_id : int
        The next free label after this block's cells.
    cut_off : int
        Kept cells that touch the window's edge inside the image (see
        :attr:`BlockwiseResult.cut_off`).
    """
    n = int(labels.max())
    if n == 0:
        return next_id, 0
    height, width = labels.shape
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    window_y, window_x = block.window
    core_y, core_x = block.core
    rows = np.broadcast_to(np.arange(height, dtype=np.float64)[:, None], labels.shape)
    cols = np.broadcast_to(np.arange(width, dtype=np.float64)[None, :], labels.shape)
    # coordinate sums in image coordinates are integers, exact in float64, so two blocks
    # that see the same cell decide the same way whatever their windows
    sum_y = np.bincount(flat, weights=rows.ravel(), minlength=n + 1) + area * window_y.start
    sum_x = np.bincount(flat, weights=cols.ravel(), minlength=n + 1) + area * window_x.start
    owned = (area * core_y.start <= sum_y) & (sum_y < area * core_y.stop)
    owned &= (area * core_x.start <= sum_x) & (sum_x < area * core_x.stop)
    owned[0] = False
    sides = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    edges = [side for side, inner in zip(sides, block.inner, strict=True) if inner]
    cut_off = int(owned[np.unique(np.concatenate(edges))].sum()) if edges else 0
    region = np.array(out[block.window])
    mine = owned[labels]
    free = region == 0
    free_area = np.bincount(labels[mine & free], minlength=n + 1)
    # a cell most of whose pixels an earlier block already labelled is that block's cell
    owned &= 2 * free_area >= area
    ids = np.flatnonzero(owned)
    lut = np.zeros(n + 1, np.int32)
    lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.int32)
    new = lut[labels]
    write = (new > 0) & free
    region[write] = new[write]
    out[block.window] = region
    return next_id + ids.size, cut_off


def segment_blockwise(
    image: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    halo: int = FALLBACK_HALO,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    min_size: int = 16,
    out: Any = None,
    progress: Callable[[int, int], None] | None = None,
    name: str = "image",
    ranges: np.ndarray | None = None,
) -> BlockwiseResult:
    """Instance segmentation of ``image`` block by block (see the module notes).

    Parameters
    ----------
    image, predict, block_size, halo, percentiles, min_size, name, ranges
        As in :func:`block_labels`.
    out : array-like, optional
        int32 ``(Y, X)`` array to write the labels into, e.g. from
        :func:`napari_mutualseg.ome.labels_zarr`; what it held is replaced. By default a
        numpy array is made.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block.

    Returns
    -------
    BlockwiseResult
        The labels and counts.
    """
    shape = tuple(image.shape[-2:])
    if out is None:
        out = np.zeros(shape, np.int32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; the image's labels need {shape}.")
    else:
        # a block keeps the labels it finds in out as earlier blocks' cells: those of an
        # image segmented into it before would stay, and push this image's cells out
        out[...] = 0
    total = len(block_grid(shape, block_size, halo))
    next_id, cut_off = 1, 0
    blocks = block_labels(
        image,
        predict,
        block_size=block_size,
        halo=halo,
        percentiles=percentiles,
        min_size=min_size,
        name=name,
        ranges=ranges,
    )
    # counted by hand: enumerate (and zip) keep their last result, and with it the labels of
    # the block before, alive through the next window's prediction
    done = 0
    for block, labels in blocks:
        next_id, cut = keep_owned_cells(block, labels, out, next_id)
        cut_off += cut
        del labels  # free before trimming, not when the next block rebinds the name
        _release_freed_memory()
        done += 1  # noqa: SIM113 (see above)
        if progress is not None:
            progress(done, total)
    return BlockwiseResult(out, next_id - 1, total, cut_off)


def measure_blockwise(
    labels: Any,
    image: Any = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    halo: int = FALLBACK_HALO,
    channel_names: Sequence[str] | None = None,
    pixel_size: Sequence[float] | None = None,
    unit: str = "um",
) -> Table:
    """:func:`~napari_mutualseg.measure.measure_cells` of a 2D label image read one block at
    a time, so that memory is that of a block, not of the image (an OME-Zarr written block by
    block stays on the disk).

    Each cell is measured in the window of the block that holds its centroid, as
    :func:`segment_blockwise` keeps it: whole when it is no wider than the halo.

    Parameters
    ----------
    labels : array-like
        ``(Y, X)`` labels, e.g. a zarr array; read a window at a time.
    image : array-like, optional
        ``(C, Y, X)`` intensities (e.g. :meth:`AxisImage.plane_array`), read likewise.
    block_size, halo : int
        Core edge and margin in pixels (:func:`block_grid`).
    channel_names, pixel_size, unit
        As :func:`~napari_mutualseg.measure.measure_cells`.

    Returns
    -------
    Table
        The columns of :func:`~napari_mutualseg.measure.measure_cells`, in image coordinates,
        one row per cell in label order.
    """
    spacing = (1.0, 1.0) if pixel_size is None else tuple(map(float, pixel_size))
    tables = []
    for block in block_grid(tuple(labels.shape), block_size, halo):
        pixels = None if image is None else read_here(image[(slice(None), *block.window)])
        table = measure_cells(
            read_here(labels[block.window]),
            pixels,
            channel_names=channel_names,
            pixel_size=pixel_size,
            unit=unit,
        )
        area = table["area_px"]
        keep = np.ones(len(area), bool)
        for axis, core, window, size in zip("yx", block.core, block.window, spacing, strict=True):
            # the cell's coordinate sum, a whole number: the owner is decided exactly, as
            # keep_owned_cells decides it
            total = np.rint(table[f"centroid_{axis}_px"] * area) + area * window.start
            keep &= (area * core.start <= total) & (total < area * core.stop)
            for key in list(table):  # window coordinates to image coordinates
                if key.startswith(f"centroid_{axis}_"):
                    table[key] = table[key] + window.start * (1 if key.endswith("_px") else size)
                elif key.startswith(f"bbox_{axis}"):
                    table[key] = table[key] + window.start
        tables.append({key: values[keep] for key, values in table.items()})
    merged = {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}
    order = np.argsort(merged["label"], kind="stable")
    return {key: values[order] for key, values in merged.items()}
