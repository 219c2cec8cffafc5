"""The segmentation network and the trained pair of networks."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .devices import select_device
from .disagreement import Prediction, cell_disagreement, spots_to_check
from .inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    check_tiling,
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
    """

    model_a: UNet
    model_b: UNet
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def models(self) -> tuple[UNet, UNet]:
        """Both networks, A first."""
        return self.model_a, self.model_b

    @property
    def file_size(self) -> int:
        """Bytes the saved file takes at most: the weights plus the file's own bookkeeping
        (about 1 KiB per tensor and 64 KiB in all, an upper bound)."""
        tensors = [t for m in self.models for t in m.state_dict().values()]
        return sum(t.numel() * t.element_size() + 1024 for t in tensors) + 65536

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
            A 2D single-channel image of any size (tiled in bounded memory).
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        name : str
            Name used in error messages.

        Returns
        -------
        numpy.ndarray
            ``(3, H, W)`` float32 mean softmax of both networks.
        """
        check_tiling(tile_size, overlap)
        x = normalize(image, self.percentiles, name)
        return predict_proba(self.models, x, self.device, tile_size=tile_size, overlap=overlap)

    def segment(
        self,
        image: np.ndarray,
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        name: str = "image",
    ) -> np.ndarray:
        """Instance segmentation of ``image``: int32 labels, 0 background, 1..N cells.

        Parameters
        ----------
        image : numpy.ndarray
            A 2D single-channel image.
        tile_size, overlap : int
            Sliding-window tile edge and overlap in pixels.
        min_size : int, optional
            Objects smaller than this many pixels are dropped (default: the training setting).
        name : str
            Name used in error messages.
        """
        min_size = self._min_size(min_size)
        proba = self.predict_proba(image, tile_size=tile_size, overlap=overlap, name=name)
        return instances_from_proba(proba, min_size=min_size)

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
            A 2D single-channel image of any size (tiled in bounded memory).
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
        check_tiling(tile_size, overlap)
        min_size = self._min_size(min_size)
        x = normalize(image, self.percentiles, name)
        proba, disagreement = predict_disagreement(
            self.models, x, self.device, tile_size=tile_size, overlap=overlap
        )
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
        min_size = int(self.settings.get("min_size", 16)) if min_size is None else int(min_size)
        if min_size < 0:
            raise ValueError(f"min_size must be 0 or more pixels, got {min_size}.")
        return min_size

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
        }
        return checkpoint.write_checkpoint(payload, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> ModelPair:
        """Load a pair saved with :meth:`save`; never runs code from the file.

        What the file describes is checked before anything is built: the architecture of
        each network (within :data:`ARCH_LIMITS`), that the stored weights have exactly the
        shapes it implies (so nothing larger than the file is ever allocated), and that they
        are finite.

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        napari_mutualseg.checkpoint.CheckpointError
            If the file is damaged, not a napari-mutualseg model, or describes networks this
            package cannot build; the message says what is wrong in one line.
        """
        payload = checkpoint.read_checkpoint(path)
        models = []
        for key in ("a", "b"):
            arch, state = payload.get(f"arch_{key}"), payload.get(f"state_{key}")
            problem = _arch_problem(arch) or _state_problem(arch, state)
            if problem:
                raise checkpoint.CheckpointError(
                    f"{path} is not a usable napari-mutualseg model: network {key.upper()} "
                    f"{problem}."
                )
            model = UNet(**arch)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise checkpoint.CheckpointError(
                    f"{path} is damaged: {str(err).splitlines()[0]}"
                ) from None
            models.append(model)
        pair = cls(
            models[0],
            models[1],
            tuple(float(p) for p in payload["percentiles"]),
            dict(payload.get("settings", {})),
            [dict(h) for h in payload.get("history", [])],
        )
        return pair.to(select_device(device))


#: What a stored architecture may be: the package's networks see one channel and predict
#: background, cell and boundary; width and depth are bounded so that a file cannot describe a
#: network far beyond any trained one.
ARCH_LIMITS = {"in_channels": (1, 1), "n_classes": (N_CLASSES, N_CLASSES), "width": (1, 256),
               "depth": (1, 8)}  # fmt: skip


def _arch_problem(arch: Any) -> str | None:
    """What is wrong with a stored architecture, or None."""
    if not isinstance(arch, dict) or set(arch) != set(ARCH_LIMITS):
        return f"has no valid architecture (expected the keys {', '.join(ARCH_LIMITS)})"
    for name, (low, high) in ARCH_LIMITS.items():
        value = arch[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            allowed = str(low) if low == high else f"a whole number from {low} to {high}"
            return f"has {name} = {value!r}; this package needs {allowed}"
    return None


def _state_problem(arch: dict[str, int], state: Any) -> str | None:
    """What is wrong with stored weights for ``arch``, or None; nothing is allocated."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "has no weights"
    with torch.device("meta"):  # the shapes the architecture implies, without memory
        expected = {k: (v.shape, v.dtype) for k, v in UNet(**arch).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        kinds = ((missing, "missing"), (extra, "unexpected"))
        counts = [f"{len(names)} {what} (first {names[0]})" for names, what in kinds if names]
        return f"has weights that do not match its architecture: {', '.join(counts)}"
    for name, (shape, dtype) in expected.items():
        stored = state[name]
        if stored.shape != shape:
            return (
                f"has {name} of shape {tuple(stored.shape)}, its architecture needs {tuple(shape)}"
            )
        if stored.is_floating_point() != dtype.is_floating_point:
            return f"has {name} of type {stored.dtype}, its architecture needs {dtype}"
    return None
