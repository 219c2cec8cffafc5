"""The segmentation network and the trained pair of networks."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .blockwise import (
    AUTO_BLOCKWISE_PIXELS,
    DEFAULT_BLOCK_SIZE,
    default_halo,
    segment_blockwise,
)
from .devices import select_device
from .disagreement import Prediction, cell_disagreement, spots_to_check
from .inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    instances_from_proba,
    predict_disagreement,
    predict_proba,
)
from .preprocess import DEFAULT_PERCENTILES, normalize

N_CLASSES = 3  # background, cell, boundary


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain 2D U-Net with ``depth`` resolution levels and 3 output classes.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for grayscale).
    n_classes : int
        Output classes (background, cell, boundary).
    width : int
        Feature channels at the first level; doubled at every level down.
    depth : int
        Resolution levels; inputs must be divisible by ``2 ** (depth - 1)``.
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = N_CLASSES, width: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
        self.arch = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": width,
            "depth": depth,
        }
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans:
            self.down.append(_block(c_prev, c))
            c_prev = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2))
            self.merge.append(_block(2 * c, c))
            c_prev = c
        self.head = nn.Conv2d(c_prev, n_classes, 1)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.arch["depth"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_unet(arch: dict[str, int], seed: int) -> UNet:
    """A freshly initialised U-Net; ``seed`` makes the initialisation reproducible."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return UNet(**arch)
    finally:
        torch.random.set_rng_state(state)


@dataclass
class ModelPair:
    """The two trained networks, with everything needed to use them on new images.

    Attributes
    ----------
    model_a, model_b : UNet
        The two networks. Prediction averages their softmax.
    percentiles : tuple of float
        Intensity percentiles mapped to 0 and 1 before the networks see an image.
    settings : dict
        The training settings (``TrainConfig`` as a dict), kept for resuming and provenance.
    history : list of dict
        One entry per completed round (losses, changed fraction, seconds).
    device : torch.device
        Where the networks live.
    cell_size : float or None
        Largest box side seen in training, in pixels: sets the margin of block-by-block
        segmentation (None for models saved before it was recorded).
    """

    model_a: UNet
    model_b: UNet
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cell_size: float | None = None

    @property
    def models(self) -> tuple[UNet, UNet]:
        """Both networks, A first."""
        return self.model_a, self.model_b

    def to(self, device: str | torch.device) -> ModelPair:
        """Move both networks to ``device`` (in place) and return the pair."""
        self.device = select_device(device)
        self.model_a.to(self.device)
        self.model_b.to(self.device)
        return self

    def copy(self) -> ModelPair:
        """A deep copy, so that a caller's pair never changes under it."""
        return ModelPair(
            copy.deepcopy(self.model_a),
            copy.deepcopy(self.model_b),
            tuple(self.percentiles),
            dict(self.settings),
            [dict(h) for h in self.history],
            self.device,
            self.cell_size,
        )

    def predict_proba(
        self,
        image: np.ndarray,
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        name: str = "image",
    ) -> np.ndarray:
        """Ensemble class probabilities (background, cell, boundary) of ``image``.

        Parameters
        ----------
        image : numpy.ndarray
            A 2D single-channel image. The networks run tile by tile, but the result is
            whole (12 bytes a pixel): :meth:`segment` goes block by block on large images.
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        name : str
            Name used in error messages.

        Returns
        -------
        numpy.ndarray
            ``(3, H, W)`` float32 mean softmax of both networks.
        """
        x = normalize(image, self.percentiles, name)
        return predict_proba(self.models, x, self.device, tile_size=tile_size, overlap=overlap)

    def segment(
        self,
        image: Any,
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        name: str = "image",
        blockwise: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        halo: int | None = None,
        out: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Instance segmentation of ``image``: int32 labels, 0 background, 1..N cells.

        Images up to :data:`~napari_mutualseg.blockwise.AUTO_BLOCKWISE_PIXELS` (4096 x 4096)
        are segmented whole. Larger ones, or any image with ``blockwise=True`` or an ``out``
        array, go block by block (:mod:`napari_mutualseg.blockwise`): the memory then
        depends on ``block_size``, not on the image, and the cells are the same as the whole
        image's (BBBC039 test: mAP equal to the third decimal, no cell split at a block face).

        Parameters
        ----------
        image : array-like
            A 2D single-channel image; block by block also a zarr, dask or memory-mapped
            array (see :func:`napari_mutualseg.ome.open_image`), read a block at a time.
        tile_size, overlap : int
            Sliding-window tile edge and overlap of the networks, in pixels.
        min_size : int, optional
            Objects smaller than this many pixels are dropped (default: the training setting).
        name : str
            Name used in error messages.
        blockwise : bool, optional
            Force (True) or forbid (False) block-by-block segmentation; by default it is
            chosen by the image size.
        block_size : int
            Edge of a block's core in pixels.
        halo : int, optional
            Margin read around each block (default: from :attr:`cell_size`, see
            :func:`~napari_mutualseg.blockwise.default_halo`).
        out : array-like, optional
            int32 array of zeros, shaped like the image, to write the labels into (block by
            block), e.g. from :func:`napari_mutualseg.ome.labels_zarr`.
        progress : callable, optional
            ``progress(done, total)`` after each block.

        Returns
        -------
        array-like
            The labels: ``out`` when given, else a numpy array.
        """
        min_size = self._min_size(min_size)
        pixels = math.prod(image.shape[-2:]) if hasattr(image, "shape") else 0
        if blockwise is None:
            blockwise = out is not None or pixels > AUTO_BLOCKWISE_PIXELS
        if not blockwise:
            proba = self.predict_proba(image, tile_size=tile_size, overlap=overlap, name=name)
            return instances_from_proba(proba, min_size=min_size)

        def predict(block: np.ndarray) -> np.ndarray:
            return predict_proba(
                self.models, block, self.device, tile_size=tile_size, overlap=overlap
            )

        result = segment_blockwise(
            image,
            predict,
            block_size=block_size,
            halo=default_halo(self.cell_size) if halo is None else halo,
            percentiles=self.percentiles,
            min_size=min_size,
            out=out,
            progress=progress,
            name=name,
        )
        if result.cut_off:
            warnings.warn(
                f"{name}: {result.cut_off} cell(s) reached the edge of their block's margin "
                "and may be cut off; segment again with a larger halo (--halo).",
                UserWarning,
                stacklevel=2,
            )
        return result.labels

    def predict(
        self,
        image: np.ndarray,
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        name: str = "image",
    ) -> Prediction:
        """Cells of ``image``, where the two networks disagree, and which cells to check first.

        The cells are those of :meth:`segment` and the probabilities those of
        :meth:`predict_proba`, from one pass over the image.

        Parameters
        ----------
        image : numpy.ndarray
            A 2D single-channel image, predicted whole (:meth:`segment` goes block by block
            on images larger than memory).
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        min_size : int, optional
            Smallest cell and smallest region of disagreement kept, in pixels (default: the
            training setting).
        name : str
            Name used in error messages.

        Returns
        -------
        Prediction
            Probabilities, cells, the disagreement map (float16), each cell's score and the
            cells and regions to check, most disputed first.

        Examples
        --------
        >>> result = pair.predict(image)
        >>> first = result.spots[0]             # the cell (or region) to check first
        >>> first.kind, first.label, first.score, first.centroid
        """
        x = normalize(image, self.percentiles, name)
        proba, disagreement = predict_disagreement(
            self.models, x, self.device, tile_size=tile_size, overlap=overlap
        )
        min_size = self._min_size(min_size)
        labels = instances_from_proba(proba, min_size=min_size)
        disagreement = disagreement.astype(np.float16)
        return Prediction(
            probabilities=proba,
            labels=labels,
            disagreement=disagreement,
            cell_scores=cell_disagreement(labels, disagreement),
            spots=spots_to_check(labels, disagreement, min_size=min_size),
        )

    def _min_size(self, min_size: int | None) -> int:
        """The smallest cell kept: as given, else the training setting."""
        return int(self.settings.get("min_size", 16)) if min_size is None else int(min_size)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save both networks with their architecture, normalisation and settings (one file).

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is false.
        """
        payload = {
            "arch_a": dict(self.model_a.arch),
            "arch_b": dict(self.model_b.arch),
            "state_a": {k: v.detach().cpu() for k, v in self.model_a.state_dict().items()},
            "state_b": {k: v.detach().cpu() for k, v in self.model_b.state_dict().items()},
            "percentiles": [float(p) for p in self.percentiles],
            "settings": dict(self.settings),
            "history": [dict(h) for h in self.history],
            "cell_size": self.cell_size,
        }
        return checkpoint.write_checkpoint(payload, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> ModelPair:
        """Load a pair saved with :meth:`save`; never runs code from the file.

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        napari_mutualseg.checkpoint.CheckpointError
            If the file is damaged or not a napari-mutualseg model.
        """
        payload = checkpoint.read_checkpoint(path)
        try:
            models = []
            for key in ("a", "b"):
                model = UNet(**payload[f"arch_{key}"])
                model.load_state_dict(payload[f"state_{key}"])
                models.append(model)
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise checkpoint.CheckpointError(f"{path} is damaged: {err}") from err
        pair = cls(
            models[0],
            models[1],
            tuple(payload["percentiles"]),
            dict(payload.get("settings", {})),
            list(payload.get("history", [])),
            cell_size=payload.get("cell_size"),
        )
        return pair.to(select_device(device))
