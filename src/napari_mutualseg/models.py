"""The segmentation network and the trained pair of networks."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
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
from .images import AxisImage, as_image, parse_channels
from .inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    check_tiling,
    instances_from_proba,
    predict_disagreement,
    predict_proba,
)
from .linking import LINK_MIN_OVERLAP, link_labels
from .preprocess import DEFAULT_PERCENTILES, apply_ranges, check_channels

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
    channel_names : tuple of str, optional
        Names of the input channels the networks were trained on, when the images named them;
        prediction then finds them by name.

    Notes
    -----
    Which channels are the input, and how RGB images were taken, are the ``channels`` and
    ``rgb`` training settings (:class:`~napari_mutualseg.config.TrainConfig`); prediction uses
    the same unless told otherwise. Model files from before channels were recorded take one.
    """

    model_a: UNet
    model_b: UNet
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cell_size: float | None = None
    channel_names: tuple[str, ...] | None = None

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
            self.cell_size,
            self.channel_names,
        )

    @property
    def in_channels(self) -> int:
        """How many channels the networks take."""
        return int(self.model_a.arch.get("in_channels", 1))

    def describe_input(self) -> str:
        """The networks' input for people, e.g. ``"2 channels (DAPI, GFP)"``."""
        n = self.in_channels
        text = f"{n} channel{'s' if n > 1 else ''}"
        chosen = parse_channels(self.settings.get("channels"))
        if self.channel_names:
            text += f" ({', '.join(self.channel_names)})"
        elif chosen is not None:
            text += f" (channel {', '.join(map(str, chosen))} of the training images)"
        if self.settings.get("rgb") == "gray":
            text += ", RGB converted to gray"
        return text

    def network_input(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        name: str = "image",
    ) -> AxisImage:
        """``image`` with the channels the networks take, checked against them.

        Parameters
        ----------
        image : array_like or AxisImage
            See :meth:`segment`.
        channels : sequence of int or str, optional
            Channels to use, by index or name. Left out: the training channels, found by name
            when both the model and the image name them, else by their index; an image with
            just as many channels as the networks take, which cannot be searched for them
            (e.g. a single-channel image), is used as it is.
        rgb : {"channels", "gray"}, optional
            How an RGB image is taken (default: as in training).
        axes : str, optional
            The axes of a plain array (e.g. ``"ZYX"``).
        name : str
            How the image is called in messages.

        Raises
        ------
        ValueError
            When the image gives another number of channels than the networks take.
        """
        img = as_image(image, axes, name=name)
        rgb = rgb or self.settings.get("rgb", "channels")
        if channels is not None:
            chosen = img.select(channels, rgb)
        else:
            channels = parse_channels(self.settings.get("channels"))
            known = [n.lower() for n in img.channel_names or ()]
            if self.channel_names and all(n.lower() in known for n in self.channel_names):
                channels = self.channel_names
            try:
                chosen = img.select(channels, rgb)
            except ValueError:
                # an image of just the channels the networks take (say, the nuclei alone)
                if img.select(None, rgb).n_channels != self.in_channels:
                    raise
                chosen = img.select(None, rgb)
        if chosen.n_channels != self.in_channels:
            given = chosen.n_channels
            hints = []
            if img.rgb and self.in_channels == 1:
                hints.append("convert RGB to gray with --rgb gray (rgb='gray')")
            hints.append(
                f"pick {self.in_channels} channel(s) with --channel (channels= in Python)"
            )
            if not isinstance(image, AxisImage) and axes is None and np.ndim(image) == 3:
                hints.append("if the first axis is z or time, say so with axes='ZYX' or 'TYX'")
            raise ValueError(
                f"{img.name} gives the networks {given} channel{'s' if given > 1 else ''} but "
                f"they were trained on {self.describe_input()}: {'; or '.join(hints)}."
            )
        return chosen

    def predict_proba(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        name: str = "image",
    ) -> np.ndarray:
        """Ensemble class probabilities (background, cell, boundary) of one 2D plane.

        Parameters
        ----------
        image : array_like or AxisImage
            One plane: a 2D image, a channels-first ``(C, H, W)`` image, an 8-bit RGB(A)
            picture, or an :class:`AxisImage` of one plane. The networks run tile by tile,
            but the result is whole (12 bytes a pixel): :meth:`segment` goes block by block
            on large images.
        channels, rgb, axes
            See :meth:`network_input`.
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
        chosen = self._one_plane(image, channels, rgb, axes, name, "predict_proba")
        ranges = chosen.channel_ranges(self.percentiles)
        return self._plane_proba(chosen, 0, ranges, tile_size, overlap)

    def _one_plane(self, image, channels, rgb, axes, name: str, method: str) -> AxisImage:
        """The network input of a one-plane image; stacks are for :meth:`segment`."""
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        if chosen.n_planes != 1:
            raise ValueError(
                f"{chosen.name} has {chosen.n_planes} planes; {method} takes one (segment "
                "takes stacks and time series)."
            )
        return chosen

    def _plane_input(self, image: AxisImage, index: int, ranges: np.ndarray) -> np.ndarray:
        """Plane ``index`` checked and normalised with the image's ``ranges``."""
        name = f"{image.name} {image.plane_name(index)}".rstrip()
        return apply_ranges(check_channels(image.plane(index), name), ranges)

    def _plane_proba(
        self, image: AxisImage, index: int, ranges: np.ndarray, tile_size: int, overlap: int
    ) -> np.ndarray:
        x = self._plane_input(image, index, ranges)
        return predict_proba(self.models, x, self.device, tile_size=tile_size, overlap=overlap)

    def segment(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
        tile_size: int = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        min_size: int | None = None,
        link: bool = True,
        track: bool = False,
        min_overlap: float = LINK_MIN_OVERLAP,
        name: str = "image",
        blockwise: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        halo: int | None = None,
        out: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Instance segmentation: int32 labels, 0 background, 1..N cells.

        Every 2D plane (each z position of each time point) is segmented, normalised with the
        intensity percentiles of the whole image (:meth:`AxisImage.channel_ranges`); the
        planes of a z-stack are linked into 3D objects and, with ``track``, the frames of a
        time series keep their labels (:func:`napari_mutualseg.linking.link_labels`).

        Images up to :data:`~napari_mutualseg.blockwise.AUTO_BLOCKWISE_PIXELS` (4096 x 4096)
        are segmented whole. Larger ones, or any image with ``blockwise=True`` or an ``out``
        array, go block by block (:mod:`napari_mutualseg.blockwise`): the memory then
        depends on ``block_size``, not on the image, and the cells are the same as the whole
        image's (BBBC039 test: mAP equal to the third decimal, no cell split at a block face).

        Parameters
        ----------
        image : array_like or AxisImage
            A 2D image; a channels-first ``(C, H, W)`` image; an 8-bit RGB(A) picture; a plain
            array with ``axes``; or an :class:`AxisImage` (any of ``TCZYX``), also a lazy one
            (zarr, dask), read a block at a time when segmented block by block.
        channels : sequence of int or str, optional
            The channels to use (default: the ones the networks were trained on).
        rgb : {"channels", "gray"}, optional
            How an RGB image is taken (default: as in training).
        axes : str, optional
            The axes of a plain array, e.g. ``"ZYX"`` or ``"TCYX"``.
        tile_size, overlap : int
            Sliding-window tile edge and overlap of the networks, in pixels.
        min_size : int, optional
            Objects smaller than this many pixels are dropped (default: the training setting).
        link : bool
            Link the planes of a z-stack into 3D objects (one label per cell through z).
        track : bool
            Keep a cell's label from frame to frame of a time series (by overlap).
        min_overlap : float
            Least overlap for linking and tracking, as a share of the smaller object
            (:func:`napari_mutualseg.linking.link_slices`).
        name : str
            Name used in error messages.
        blockwise : bool, optional
            Force (True) or forbid (False) block-by-block segmentation of a single plane; by
            default it is chosen by the plane's size.
        block_size : int
            Edge of a block's core in pixels.
        halo : int, optional
            Margin read around each block (default: from :attr:`cell_size`, see
            :func:`~napari_mutualseg.blockwise.default_halo`).
        out : array-like, optional
            int32 array of zeros, shaped like the plane, to write the labels into (block by
            block), e.g. from :func:`napari_mutualseg.ome.labels_zarr`.
        progress : callable, optional
            ``progress(done, total)`` after each plane (block by block: after each block).

        Returns
        -------
        array-like
            Labels with the image's axes less C (``image.label_axes``): ``(H, W)`` for one
            plane, ``(Z, H, W)`` for a z-stack, ``(T, [Z,] H, W)`` for a time series; ``out``
            when given.
        """
        check_tiling(tile_size, overlap)
        chosen = self.network_input(image, channels=channels, rgb=rgb, axes=axes, name=name)
        min_size = self._min_size(min_size)
        if blockwise is None:
            blockwise = out is not None or math.prod(chosen.plane_shape) > AUTO_BLOCKWISE_PIXELS
        if blockwise:
            if chosen.n_planes != 1:
                raise ValueError(
                    f"{chosen.name} has {chosen.n_planes} planes; block by block takes one "
                    "plane at a time (segment each plane, or a stack of smaller planes whole)."
                )
            return self._segment_blocks(
                chosen, tile_size, overlap, min_size, block_size, halo, out, progress
            )
        ranges = chosen.channel_ranges(self.percentiles)
        labels = np.zeros(chosen.label_shape, np.int32)
        for index in range(chosen.n_planes):
            proba = self._plane_proba(chosen, index, ranges, tile_size, overlap)
            position = chosen.plane_position(index)
            key = tuple(
                int(position[a]) if a in position else slice(None) for a in chosen.label_axes
            )
            labels[key] = instances_from_proba(proba, min_size=min_size)
            if progress is not None:
                progress(index + 1, chosen.n_planes)
        return link_labels(
            labels, chosen.label_axes, link=link, track=track, min_overlap=min_overlap
        )

    def _segment_blocks(
        self, image: AxisImage, tile_size, overlap, min_size, block_size, halo, out, progress
    ) -> Any:
        """One plane, block by block (:mod:`napari_mutualseg.blockwise`)."""

        def predict(block: np.ndarray) -> np.ndarray:
            return predict_proba(
                self.models, block, self.device, tile_size=tile_size, overlap=overlap
            )

        result = segment_blockwise(
            image.plane_array(0),
            predict,
            block_size=block_size,
            halo=default_halo(self.cell_size) if halo is None else halo,
            percentiles=self.percentiles,
            min_size=min_size,
            out=out,
            progress=progress,
            name=image.name,
        )
        if result.cut_off:
            warnings.warn(
                f"{image.name}: {result.cut_off} cell(s) reached the edge of their block's "
                "margin and may be cut off; segment again with a larger halo (--halo).",
                UserWarning,
                stacklevel=3,
            )
        return result.labels

    def predict(
        self,
        image: Any,
        *,
        channels: Sequence[int | str] | None = None,
        rgb: str | None = None,
        axes: str | None = None,
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
        image : array_like or AxisImage
            One plane, as in :meth:`predict_proba`, predicted whole (:meth:`segment` goes
            block by block on images larger than memory).
        channels, rgb, axes
            See :meth:`network_input`.
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
        chosen = self._one_plane(image, channels, rgb, axes, name, "predict")
        x = self._plane_input(chosen, 0, chosen.channel_ranges(self.percentiles))
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
            "cell_size": self.cell_size,
            "channel_names": None if self.channel_names is None else list(self.channel_names),
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
        archs = [payload.get("arch_a"), payload.get("arch_b")]
        if (
            all(isinstance(a, dict) for a in archs)
            and len({a.get("in_channels") for a in archs}) > 1
        ):
            raise checkpoint.CheckpointError(
                f"{path} is not a usable napari-mutualseg model: its networks A and B take "
                "different numbers of channels."
            )
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
            cell_size=payload.get("cell_size"),
            channel_names=(
                tuple(payload["channel_names"]) if payload.get("channel_names") else None
            ),
        )
        return pair.to(select_device(device))


#: What a stored architecture may be: the package's networks predict background, cell and
#: boundary; channels, width and depth are bounded so that a file cannot describe a network
#: far beyond any trained one.
ARCH_LIMITS = {"in_channels": (1, 64), "n_classes": (N_CLASSES, N_CLASSES), "width": (1, 256),
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
