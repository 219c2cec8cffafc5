"""Synthetic fluorescence-like scenes with known instances, for tests and quick experiments."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops


def _rounded_rect(h: int, w: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    dy = np.maximum(np.abs(yy - (h - 1) / 2) - ((h - 1) / 2 - radius), 0)
    dx = np.maximum(np.abs(xx - (w - 1) / 2) - ((w - 1) / 2 - radius), 0)
    return dy**2 + dx**2 <= radius**2


def _bean(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    u, v = (yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)
    body = u**2 + v**2 <= 1.0
    notch = (u - 1.05) ** 2 / 0.35 + v**2 / 0.12 <= 1.0
    return body & ~notch


def _render(
    labels: np.ndarray, n: int, rng: np.random.Generator, noise: float, blur: Any
) -> np.ndarray:
    """Cells of random brightness on a dim background, blurred, with Gaussian noise."""
    brightness = np.concatenate([[0.1], rng.uniform(0.7, 1.3, n)])
    image = ndi.gaussian_filter(brightness[labels], blur)
    return (image + rng.normal(0, noise, labels.shape)).astype(np.float32)


def synthetic_scene(
    shape: tuple[int, int] = (128, 128),
    n_cells: int = 10,
    *,
    kind: str = "rounded",
    size: tuple[int, int] = (14, 26),
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A blurred, noisy image of non-elliptical cells with its ground truth and boxes.

    Parameters
    ----------
    shape : tuple of int
        Image height and width.
    n_cells : int
        Cells to try to place (fewer when the image is full).
    kind : {"rounded", "bean"}
        Rounded rectangles or bean-shaped cells: shapes an ellipse does not fit.
    size : tuple of int
        Smallest and largest cell side in pixels.
    noise : float
        Standard deviation of the Gaussian noise (cells are about 1.0, background 0.1).
    seed : int
        Random seed.

    Returns
    -------
    image : numpy.ndarray
        float32 image.
    labels : numpy.ndarray
        int32 ground-truth instances.
    boxes : numpy.ndarray
        ``(N, 4)`` rows ``y0, x0, y1, x1`` (half-open bounding boxes of the instances).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    n = 0
    for _ in range(n_cells * 20):
        if n == n_cells:
            break
        h, w = (int(s) for s in rng.integers(size[0], size[1] + 1, 2))
        mask = _rounded_rect(h, w, min(h, w) / 4) if kind == "rounded" else _bean(h, w)
        if rng.random() < 0.5:
            mask = mask.T
        mh, mw = mask.shape
        y, x = int(rng.integers(1, shape[0] - mh - 1)), int(rng.integers(1, shape[1] - mw - 1))
        window = labels[y : y + mh, x : x + mw]
        grown = ndi.binary_dilation(mask, iterations=1)
        if (window[grown] > 0).any():
            continue
        n += 1
        window[mask] = n
    image = _render(labels, n, rng, noise, 1.0)
    boxes = np.array([r.bbox for r in regionprops(labels)], np.int64).reshape(-1, 4)
    return image, labels, boxes


def synthetic_volume(
    shape: tuple[int, int, int] = (16, 96, 96),
    n_cells: int = 8,
    *,
    radius: tuple[float, float] = (6.0, 11.0),
    z_scale: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A blurred, noisy z-stack of ellipsoidal cells with its 3D ground truth.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)``.
    n_cells : int
        Cells to try to place (fewer when the volume is full); cells never touch.
    radius : tuple of float
        Smallest and largest cell radius in the y-x plane, in pixels.
    z_scale : float
        Planes per pixel along z: the z radius is ``radius * z_scale`` planes (z steps are
        usually coarser than pixels).
    noise : float
        Standard deviation of the Gaussian noise (cells are about 1.0, background 0.1).
    seed : int
        Random seed.

    Returns
    -------
    image : numpy.ndarray
        float32 ``(Z, Y, X)``.
    labels : numpy.ndarray
        int32 3D ground-truth instances (one label per cell through z).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    n = 0
    for _ in range(n_cells * 20):
        if n == n_cells:
            break
        r = rng.uniform(*radius, size=2)
        rz = min(max(r.mean() * z_scale, 1.0), shape[0] / 2)
        centre = [rng.uniform(rz, shape[0] - rz)] + [
            rng.uniform(r[k] + 1, shape[k + 1] - r[k] - 1) for k in range(2)
        ]
        inside = (
            ((zz - centre[0]) / rz) ** 2
            + ((yy - centre[1]) / r[0]) ** 2
            + ((xx - centre[2]) / r[1]) ** 2
        ) <= 1.0
        if not inside.any() or (ndi.binary_dilation(inside, iterations=2) & (labels > 0)).any():
            continue
        n += 1
        labels[inside] = n
    return _render(labels, n, rng, noise, (0.5, 1.0, 1.0)), labels
