"""Bundled sample: one BBBC039 nuclei image, its ground truth and boxes (see data/README.md)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import tifffile

__all__ = ["SAMPLE_NAME", "Sample", "load_sample"]

SAMPLE_NAME = "BBBC039 IXMtest_G13_s9"


@dataclass
class Sample:
    """A sample image with its boxes and ground truth.

    Attributes
    ----------
    name : str
        Short name (dataset and original file).
    image : numpy.ndarray
        ``(H, W)`` uint16 fluorescence image.
    boxes : numpy.ndarray
        ``(N, 4)`` int array of half-open pixel boxes ``y0, x0, y1, x1``, one per nucleus.
    ground_truth : numpy.ndarray
        ``(H, W)`` int32 instance labels (0 background).
    """

    name: str
    image: np.ndarray
    boxes: np.ndarray
    ground_truth: np.ndarray

    def __repr__(self) -> str:
        height, width = self.image.shape[-2:]
        return (
            f"Sample({self.name}: image {height} x {width} {self.image.dtype}, "
            f"{len(self.boxes)} boxes, {int(self.ground_truth.max())} cells in the ground truth)"
        )


def _read_tiff(name: str) -> np.ndarray:
    # Read bytes rather than a path: the package may be imported from a zip archive.
    return tifffile.imread(io.BytesIO((files(__package__) / "data" / name).read_bytes()))


def load_sample() -> Sample:
    """Load the bundled BBBC039 sample.

    Returns
    -------
    Sample
        Image (uint16), boxes (``(N, 4)`` int64 ``y0, x0, y1, x1`` rows) and ground truth (int32).
    """
    text = (files(__package__) / "data" / "nuclei_boxes.csv").read_text()
    boxes = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return Sample(
        name=SAMPLE_NAME,
        image=_read_tiff("nuclei_image.tif").astype(np.uint16, copy=False),
        boxes=boxes.reshape(-1, 4),
        ground_truth=_read_tiff("nuclei_masks.tif").astype(np.int32),
    )
