"""How a command writes its files.

Every file appears complete or not at all; a file that another program creates meanwhile is
left alone and the result written beside it (the exit status then becomes 1); trained networks
that cannot be saved where asked go to the system's temporary folder instead.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CommandFailed

if TYPE_CHECKING:
    from ..models import ModelPair
    from ..ome import PixelSize

#: ``write(path, overwrite=...)``: writes one file and returns the path written.
Writer = Callable[..., Path]


def keep(write: Writer, path: Path, overwrite: bool) -> Path:
    """Write one file, without replacing a file that another program created meanwhile.

    Parameters
    ----------
    write : callable
        ``write(path, overwrite=overwrite)`` writes the file and returns its path; it raises
        FileExistsError when the file exists and may not be replaced.
    path : Path
        Where the file should go.
    overwrite : bool
        Whether an existing file is replaced (``--overwrite``).

    Returns
    -------
    Path
        The file written: ``path``, or ``<stem>-<n><suffix>`` beside it when ``path`` appeared
        while the command ran (a warning says so).
    """
    try:
        return write(path, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise
    n = 1
    while True:
        n += 1
        other = path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            written = write(other, overwrite=overwrite)
        except FileExistsError:
            continue
        warnings.warn(
            f"{path} was created by another program while this one ran and is left as it is; "
            f"this result was written to {other} instead.",
            UserWarning,
            stacklevel=2,
        )
        return written


class Outputs:
    """The files one command writes, each with :func:`keep`.

    Parameters
    ----------
    overwrite : bool
        Whether existing files are replaced (``--overwrite``).

    Attributes
    ----------
    status : int
        The command's exit status so far: 1 once a file went to another name than asked.
    """

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.status = 0

    def write(self, write: Writer, path: Path) -> Path:
        """``write`` one file to ``path`` (see :func:`keep`); the path written."""
        written = keep(write, path, self.overwrite)
        self.status |= int(Path(written) != Path(path))
        return written

    def labels(
        self,
        path: Path,
        labels: np.ndarray,
        pixel_size: PixelSize | None = None,
        axes: str | None = None,
        kind: str = "labels",
    ) -> Path:
        """Write a label or class image as TIFF, with the pixel size of its image when known
        and, for a stack, its axes (``ZYX``, ``TYX``...); ``kind`` says what it holds
        (:data:`napari_mutualseg.io.LABEL_KINDS`). The path written."""
        from ..io import write_labels

        write = partial(write_labels, labels=labels, pixel_size=pixel_size, axes=axes, kind=kind)
        return self.write(write, path)

    def pair(self, pair: ModelPair, path: Path) -> Path:
        """Save a trained pair; the path written.

        If that fails although ``path`` was checked before training (the disk filled up
        meanwhile), the pair goes to the system's temporary folder and the error says where:
        trained networks are not thrown away.
        """
        try:
            return self.write(pair.save, path)
        except OSError as err:
            try:
                rescued = keep(pair.save, Path(tempfile.gettempdir()) / path.name, False)
            except OSError:
                raise err from None
            raise CommandFailed(
                f"{err} The trained networks were saved to {rescued} instead."
            ) from None


def write_overlay(
    path: Path, *, image: np.ndarray, pred: np.ndarray, gt: np.ndarray, overwrite: bool
) -> Path:
    """Image in gray, predicted outlines in magenta, ground-truth outlines in green (PNG)."""
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    from ..files import atomic_write
    from ..preprocess import normalize

    gray = np.clip(normalize(image), 0, 1)
    rgb = np.stack([gray] * 3, axis=-1)
    rgb[find_boundaries(gt, mode="inner")] = (0.2, 1.0, 0.2)
    rgb[find_boundaries(pred, mode="inner")] = (1.0, 0.2, 1.0)
    with atomic_write(path, overwrite=overwrite) as f:
        iio.imwrite(f, (rgb * 255).astype(np.uint8), extension=".png")
    return path
