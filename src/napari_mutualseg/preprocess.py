"""Input checks and intensity normalisation shared by training and inference.

Normalisation maps two intensity percentiles of every channel to 0 and 1. The percentiles are
computed once per image (:func:`channel_ranges`, from a strided sample of a large image, so an
image on disk or in chunks is never loaded whole for it) and applied to the whole image or to
one block of it at a time (:func:`apply_ranges`). Lazy pixels (dask) are read in this process
(:func:`read_here`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Default percentiles mapped to 0 and 1; stored with every trained model.
DEFAULT_PERCENTILES = (1.0, 99.8)

#: What to do about NaN or infinite pixels, for people in Fiji as in Python.
NAN_ADVICE = (
    "Replace them with numbers first: in Fiji, Process > Math > Remove NaNs; in Python, "
    "numpy.nan_to_num(image)."
)

#: Pixels per channel up to which the percentiles use every pixel; larger images use a strided
#: sample of about half as many.
SAMPLE_PIXELS = 4_000_000

#: Smallest image edge the networks accept.
MIN_EDGE = 8


def read_here(array: Any, dtype: Any = None) -> np.ndarray:
    """``array`` as a numpy array; a lazy (dask) one is read in this process, with dask's
    threads.

    Also where the caller made a dask ``Client`` the default (a notebook's, dask-jobqueue's):
    its workers would be sent the open file, which cannot travel ("Could not serialize object
    ..."), or read pixels that are needed here anyway. Load with it wherever the pixels may
    be lazy.

    Parameters
    ----------
    array : array_like
        numpy, dask, zarr or anything ``numpy.asarray`` takes.
    dtype : numpy.dtype, optional
        The type of the result (default: that of ``array``).

    Returns
    -------
    numpy.ndarray
    """
    if type(array).__module__.startswith("dask"):
        # per call, not dask.config.set: that is the whole process's, other threads' too
        array = array.compute(scheduler="threads")
    return np.asarray(array, dtype=dtype)


def looks_rgb(array: Any) -> bool:
    """Whether a 3D array has the shape of one RGB(A) image (H, W, 3|4) rather than a stack."""
    shape = np.shape(array)
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def _check_size(shape: tuple[int, ...], name: str) -> None:
    if len(shape) < 2 or min(shape[-2:]) < MIN_EDGE:
        raise ValueError(
            f"{name} is too small ({shape[-2:]}); it needs at least {MIN_EDGE}x{MIN_EDGE} pixels."
        )


def _check_pixels(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as float32 after the checks every image needs: size, dtype, finite values."""
    _check_size(array.shape, name)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} has a non-numeric dtype {array.dtype}.")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} is complex-valued; pass its magnitude or real part instead.")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite pixel(s). {NAN_ADVICE}")
    return array


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a 2D float32 array, or raise a ``ValueError`` that says how to fix it.

    Parameters
    ----------
    image : numpy.ndarray
        A single-channel 2D image.
    name : str
        How the image is called in error messages (a file or layer name).

    Returns
    -------
    numpy.ndarray
        The image as float32.
    """
    array = read_here(image)
    if looks_rgb(array):
        raise ValueError(
            f"{name} looks like an RGB(A) image (shape {array.shape}). Pass it as an AxisImage "
            "(napari_mutualseg.images) to use its colours as channels, or pass one channel "
            "alone (e.g. image[..., 0])."
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D image, got shape {array.shape}. For channels, z-stacks or time "
            "series say what each axis is with napari_mutualseg.images.AxisImage."
        )
    return _check_pixels(array, name)


def check_channels(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return a ``(C, H, W)`` image (a 2D image gets ``C = 1``) as float32, checked.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or channels-first ``(C, H, W)`` pixels.
    name : str
        How the image is called in error messages.

    Returns
    -------
    numpy.ndarray
        ``(C, H, W)`` float32.
    """
    array = read_here(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] < 1:
        raise ValueError(f"{name} must be (H, W) or (C, H, W), got shape {array.shape}.")
    return _check_pixels(array, name)


def channel_ranges(
    image: Any,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    name: str = "image",
    *,
    channels: Iterable[str] | None = None,
) -> np.ndarray:
    """Low and high intensity of every channel at ``percentiles``.

    Only a strided sample of about :data:`SAMPLE_PIXELS` / 2 pixels per channel is read from
    an image larger than :data:`SAMPLE_PIXELS`, so a zarr, dask or memory-mapped array is
    never loaded whole.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(C, H, W)``; anything that slices like numpy (zarr, dask).
    percentiles : tuple of float
        The two percentiles mapped to 0 and 1.
    name : str
        How the image is called in error messages.
    channels : iterable of str, optional
        How each channel is called in error messages (its name, or its index in the image
        it was picked from); by default its index in ``image``.

    Returns
    -------
    numpy.ndarray
        ``(C, 2)`` float64: low and high of each channel.

    Raises
    ------
    ValueError
        When the image is smaller than :data:`MIN_EDGE` (empty, say), or a channel is
        constant (nothing to segment) or not finite.
    """
    shape = tuple(image.shape)
    _check_size(shape, name)  # an empty image has no percentiles
    height, width = shape[-2:]
    step = 1
    if height * width > SAMPLE_PIXELS:
        step = math.ceil(math.sqrt(height * width / (SAMPLE_PIXELS / 2)))
    sample = read_here(image[..., ::step, ::step], np.float32)
    sample = sample.reshape(-1 if sample.ndim == 3 else 1, sample.shape[-2] * sample.shape[-1])
    ranges = np.empty((sample.shape[0], 2), np.float64)
    called = list(channels) if channels is not None else list(range(sample.shape[0]))
    for c, values in enumerate(sample):
        low, high = np.percentile(values, percentiles)
        if high <= low:
            low, high = float(values.min()), float(values.max())
        what = name if sample.shape[0] == 1 else f"channel {called[c]} of {name}"
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{what} contains NaN or infinite pixels. {NAN_ADVICE}")
        if high <= low:
            fix = (
                "Check that the right channel or plane was chosen."
                if sample.shape[0] == 1
                else "Leave it out of the network input (--channel, or channels= in Python)."
            )
            raise ValueError(
                f"{what} is constant (every pixel is {low:g}): there is nothing to segment. {fix}"
            )
        ranges[c] = low, high
    return ranges


def apply_ranges(block: Any, ranges: np.ndarray) -> np.ndarray:
    """Map each channel's ``ranges`` (from :func:`channel_ranges`) to 0 and 1 (float32).

    Parameters
    ----------
    block : array_like
        ``(H, W)`` (one channel) or ``(C, H, W)``: a whole image or one block of it.
    ranges : numpy.ndarray
        ``(C, 2)`` low and high per channel.

    Returns
    -------
    numpy.ndarray
        float32 of the shape of ``block``.
    """
    block = read_here(block, np.float32)
    ranges = np.asarray(ranges, np.float64).reshape(-1, 2)
    if block.ndim == 2 and ranges.shape[0] != 1:
        raise ValueError(f"A 2D block has one channel but {ranges.shape[0]} ranges were given.")
    if block.ndim == 3 and block.shape[0] != ranges.shape[0]:
        raise ValueError(f"A block of {block.shape[0]} channels needs as many ranges.")
    expand = (slice(None),) + (None,) * (block.ndim - 1) if block.ndim == 3 else (0,)
    low = ranges[:, 0].astype(np.float32)[expand]
    span = (ranges[:, 1] - ranges[:, 0]).astype(np.float32)[expand]
    return (block - low) / span


def normalize(
    image: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    name: str = "image",
) -> np.ndarray:
    """Map the ``percentiles`` of every channel of ``image`` to 0 and 1 (float32).

    Parameters
    ----------
    image : numpy.ndarray
        A 2D image, or a channels-first ``(C, H, W)`` image (each channel on its own).
    percentiles : tuple of float
        The two percentiles mapped to 0 and 1.
    name : str
        How the image is called in error messages.

    Returns
    -------
    numpy.ndarray
        float32 of the shape of ``image``.

    Raises
    ------
    ValueError
        If the image (or a channel of it) is constant: there is nothing to segment.
    """
    array = read_here(image)
    checked = check_image(array, name) if array.ndim == 2 else check_channels(array, name)
    return apply_ranges(checked, channel_ranges(checked, percentiles, name))
