"""Input checks and intensity normalisation shared by training and inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Default percentiles mapped to 0 and 1; stored with every trained model.
DEFAULT_PERCENTILES = (1.0, 99.8)

#: Pixels per plane from which intensity percentiles are estimated on large images.
PERCENTILE_SAMPLE = 2_000_000


def looks_rgb(array: np.ndarray) -> bool:
    """Whether a 3D array is one RGB(A) image (H, W, 3|4) rather than a stack of planes."""
    return array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4


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
    array = np.asarray(image)
    if looks_rgb(array):
        raise ValueError(
            f"{name} looks like an RGB(A) image (shape {array.shape}). Segmentation works on one "
            "channel: pass the nuclear or membrane channel alone (e.g. image[..., 0]) or convert "
            "the image to grayscale first."
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D image, got shape {array.shape}. For a stack of 2D planes pass "
            "the planes as a list (each with its own boxes); 3D volumes are not supported."
        )
    if min(array.shape) < 8:
        raise ValueError(f"{name} is too small ({array.shape}); it needs at least 8x8 pixels.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} has a non-numeric dtype {array.dtype}.")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} is complex-valued; pass its magnitude or real part instead.")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite pixel(s). Replace them first, e.g. with "
            "numpy.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)."
        )
    return array


def as_planes(images: np.ndarray | Sequence[np.ndarray], name: str = "images") -> list[np.ndarray]:
    """A 2D image, a (P, H, W) stack or a list of 2D images, as a list of 2D images."""
    if not isinstance(images, (list, tuple)):
        array = np.asarray(images)
        if array.ndim == 2:
            return [check_image(array, name)]
        if array.ndim == 3 and not looks_rgb(array):
            return [check_image(p, f"{name}[{i}]") for i, p in enumerate(array)]
        return [check_image(array, name)]
    if len(images) == 0:
        raise ValueError(f"{name} is empty: give at least one image.")
    return [check_image(img, f"{name}[{i}]") for i, img in enumerate(images)]


def subsample(image: Any, max_pixels: int = PERCENTILE_SAMPLE) -> np.ndarray:
    """Every ``s``-th pixel along the last two axes, ``s`` the least step keeping at most about
    ``max_pixels`` per plane; small images come back whole.

    Works on any array that slices like numpy (numpy, zarr, dask, a memory map) and reads only
    what it returns, so the intensity statistics of an image larger than memory cost one pass
    over it and a few megabytes.

    Parameters
    ----------
    image : array-like
        ``(..., Y, X)`` pixels.
    max_pixels : int
        Largest plane kept whole; larger ones are sampled on a regular grid to about half as
        many pixels.

    Returns
    -------
    numpy.ndarray
        The sample, float32, with the leading axes kept.
    """
    height, width = image.shape[-2:]
    step = 1
    if height * width > 2 * max_pixels:
        step = math.ceil(math.sqrt(height * width / max_pixels))
    return np.asarray(image[..., ::step, ::step]).astype(np.float32, copy=False)


def intensity_range(
    image: Any, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """Low and high intensity at ``percentiles`` of a 2D image (any array-like, see
    :func:`subsample`; images above 4 megapixels are sampled on a regular grid)."""
    flat = subsample(image).ravel()
    low, high = np.percentile(flat, percentiles)
    if high <= low:
        low, high = float(flat.min()), float(flat.max())
    return float(low), float(high)


def contrast_range(
    image: Any, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, name: str = "image"
) -> tuple[float, float]:
    """:func:`intensity_range`, refusing a constant image.

    Raises
    ------
    ValueError
        If the image is constant: there is nothing to segment.
    """
    low, high = intensity_range(image, percentiles)
    if high <= low:
        raise ValueError(
            f"{name} is constant (every pixel is {low:g}): there is nothing to segment. "
            "Check that the right channel or plane was chosen."
        )
    return low, high


def normalize(
    image: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    name: str = "image",
) -> np.ndarray:
    """Map the ``percentiles`` of ``image`` to 0 and 1 (float32).

    Raises
    ------
    ValueError
        If the image is constant: there is nothing to segment.
    """
    image = check_image(image, name)
    low, high = contrast_range(image, percentiles, name)
    return (image - low) / (high - low)
