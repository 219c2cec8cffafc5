"""The trained pair of networks: what it holds, the input it takes, and its file.

What the pair does with images (probabilities, cells, disagreement) is
:class:`~napari_mutualseg.segmenter.Segmenter`; each network is a
:class:`~napari_mutualseg.unet.UNet`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .checkpoint import ARCH_LIMITS
from .config import TrainConfig
from .devices import select_device
from .images import AxisImage, as_image, parse_channels
from .network_input import warn_if_labels
from .ome import PixelSize, convert_length
from .preprocess import DEFAULT_PERCENTILES
from .segmenter import Segmenter
from .unet import N_CLASSES, UNet, build_unet

__all__ = ["ARCH_LIMITS", "N_CLASSES", "PIXEL_SIZE_TOLERANCE", "ModelPair", "UNet", "build_unet"]

#: How much larger or smaller than the training images' an image's pixels may be before it is
#: warned of: cells a quarter wider or narrower are within the spread of sizes one image holds,
#: another objective or binning (twice or half the size) is not.
PIXEL_SIZE_TOLERANCE = 1.25


def _micrometres(image: AxisImage) -> float | None:
    """The pixel width of ``image`` in micrometres, or None when it does not say it."""
    try:
        size = PixelSize.of(image)
    except ValueError:  # a unit that is no length ("pixel"): no size
        return None
    return None if size is None else convert_length(size.x, size.unit, "micrometer")


@dataclass
class ModelPair(Segmenter):
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
    pixel_size : float, optional
        Pixel width of the training images in micrometres, when they said it (and all the
        same one, within :data:`PIXEL_SIZE_TOLERANCE`): an image of other pixels is warned
        of, its cells being another size to the networks.

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
    pixel_size: float | None = None

    def __repr__(self) -> str:
        # what the pair is, not the layers of two networks
        a, b = (m.arch for m in self.models)
        size = (
            f"width {a['width']}"
            if a["width"] == b["width"]
            else (f"width {a['width']} (A), {b['width']} (B)")
        )
        rounds = len(self.history)
        low, high = self.percentiles
        cell = "" if self.cell_size is None else f", cells up to {self.cell_size:g} px"
        if self.pixel_size is not None:
            cell += f", pixels of {self.pixel_size:g} µm"
        # the fingerprint tells apart pairs (and files) that are alike in all the rest, and
        # is the one in the batch records of what they segmented
        return (
            f"ModelPair(two U-Nets of depth {a['depth']}, {size}; input "
            f"{self.describe_input()}, scaled to percentiles {low:g}-{high:g}; "
            f"{rounds} round{'' if rounds == 1 else 's'} trained; on {self.device}{cell}; "
            f"fingerprint {self.fingerprint()})"
        )

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
        """Move both networks to ``device`` (in place).

        Parameters
        ----------
        device : str or torch.device
            ``"auto"`` (CUDA, then MPS, then the CPU) or an explicit device.

        Returns
        -------
        ModelPair
            This pair, for chaining: ``ModelPair.load(path).to("cpu")``.

        Raises
        ------
        ValueError
            When ``device`` is not available here.
        RuntimeError
            When a network does not fit on ``device`` (``torch.OutOfMemoryError``): the pair
            stays whole where it was.
        """
        target = select_device(device)
        try:
            for model in self.models:
                model.to(target)
        except BaseException:
            # one network moved, the other not: both back where the pair says they are
            for model in self.models:
                with contextlib.suppress(Exception):
                    model.to(self.device)
            raise
        self.device = target
        return self

    def copy(self) -> ModelPair:
        """A deep copy, so that a caller's pair never changes under it.

        Returns
        -------
        ModelPair
            New networks with the same weights, settings and history.
        """
        return ModelPair(
            copy.deepcopy(self.model_a),
            copy.deepcopy(self.model_b),
            tuple(self.percentiles),
            copy.deepcopy(self.settings),  # its exchange settings are a dict of their own
            copy.deepcopy(self.history),
            self.device,
            self.cell_size,
            self.channel_names,
            self.pixel_size,
        )

    @property
    def in_channels(self) -> int:
        """How many channels the networks take."""
        return int(self.model_a.arch.get("in_channels", 1))

    def describe_input(self) -> str:
        """The networks' input for people.

        Returns
        -------
        str
            For example ``"2 channels (DAPI, GFP)"``.
        """
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

        Returns
        -------
        AxisImage
            The image with the networks' channels only (a C axis always).

        Raises
        ------
        ValueError
            When the image gives another number of channels than the networks take.

        Warns
        -----
        UserWarning
            When the image looks like labels or a mask rather than intensities
            (:func:`~napari_mutualseg.network_input.warn_if_labels`); when the channels taken
            by default are named otherwise than those the networks were trained on; when its
            pixels are another size than the training images' (:attr:`pixel_size`, beyond
            :data:`PIXEL_SIZE_TOLERANCE`).
        """
        img = as_image(image, axes, name=name)
        # the caller of segment or predict (Segmenter), which call this
        warn_if_labels(img, stacklevel=3)
        rgb = rgb or self.settings.get("rgb", "channels")
        picked = channels is not None
        if picked:
            chosen = img.select(channels, rgb)
        else:
            channels = parse_channels(self.settings.get("channels"))
            known = [n.lower() for n in img.channel_names or ()]
            # a name that several of the image's channels share (GFP twice) finds none: the
            # first of them was taken, whichever the networks were trained on
            if self.channel_names and all(known.count(n.lower()) == 1 for n in self.channel_names):
                # as indices: a name may be a number ("405") that would be read as an index
                channels = tuple(known.index(n.lower()) for n in self.channel_names)
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
            if img.select(None, rgb).n_channels >= self.in_channels:
                hints.append(
                    f"pick {self.in_channels} channel(s) with --channel (channels= in Python)"
                )
            else:  # no choice of channels gives the networks theirs
                hints.append("segment it with models trained on images like this one")
            if (
                not isinstance(image, AxisImage)
                and axes is None
                and not img.rgb
                and np.ndim(image) == 3
            ):
                hints.append("if the first axis is z or time, say so with axes='ZYX' or 'TYX'")
            raise ValueError(
                f"{img.name} gives the networks {given} channel{'s' if given > 1 else ''} but "
                f"they were trained on {self.describe_input()}: {'; or '.join(hints)}."
            )
        if not picked:
            self._warn_if_renamed(chosen)
        self._warn_if_rescaled(img)
        return chosen

    def _warn_if_renamed(self, chosen: AxisImage) -> None:
        """Warn when the channels taken by default are named otherwise than the training
        channels: found by their index, or the image's only ones, they may be another stain."""
        if not (self.channel_names and chosen.channel_names):
            return
        if [n.lower() for n in chosen.channel_names] == [n.lower() for n in self.channel_names]:
            return
        warnings.warn(
            f"{chosen.name}: the networks were trained on {', '.join(self.channel_names)} and "
            f"are given {', '.join(chosen.channel_names)}; if that is not the same stain, pick "
            "the channels with --channel (channels= in Python).",
            UserWarning,
            stacklevel=4,  # the caller of segment, as warn_if_labels
        )

    def _warn_if_rescaled(self, image: AxisImage) -> None:
        """Warn when ``image``'s pixels are another size than the training images': its cells
        are then larger or smaller to the networks than any they learnt."""
        given = _micrometres(image)
        if self.pixel_size is None or given is None:
            return
        ratio = self.pixel_size / given  # how much wider, in pixels, its cells are
        if 1 / PIXEL_SIZE_TOLERANCE <= ratio <= PIXEL_SIZE_TOLERANCE:
            return
        warnings.warn(
            f"{image.name} has pixels of {given:g} µm, the networks were trained on pixels of "
            f"{self.pixel_size:g} µm: its cells are {ratio:.2g} times as wide in pixels as "
            "those they learnt, and may be split, merged or missed. Resample the image to "
            f"{self.pixel_size:g} µm pixels, or train on images like it.",
            UserWarning,
            stacklevel=4,  # the caller of segment, as warn_if_labels
        )

    def take_pixel_size(self, images: Sequence[AxisImage]) -> None:
        """Record the pixel size of the images the networks train on, with this pair's own.

        Parameters
        ----------
        images : sequence of AxisImage
            The training images. Those that do not say their pixel size leave it as it was;
            sizes that differ by more than :data:`PIXEL_SIZE_TOLERANCE` make it unknown
            (None): the networks learnt cells of several sizes.
        """
        sizes = sorted(
            size for size in [self.pixel_size, *map(_micrometres, images)] if size is not None
        )
        agree = bool(sizes) and sizes[-1] / sizes[0] <= PIXEL_SIZE_TOLERANCE
        self.pixel_size = sizes[len(sizes) // 2] if agree else None

    def fingerprint(self) -> str:
        """A digest of what decides the segmentation: both networks' weights, the intensity
        scaling, the input channels and the smallest cell kept (``min_size``). The same
        trained pair gives the same digest, in a file or in memory, on any device.

        Returns
        -------
        str
            16 hexadecimal digits.
        """
        digest = hashlib.sha256()
        for model in self.models:
            for name, tensor in model.state_dict().items():
                values = tensor.detach().cpu()
                if values.dtype == torch.bfloat16:  # NumPy has no bfloat16
                    values = values.float()
                digest.update(name.encode())
                digest.update(values.contiguous().numpy().tobytes())
        scaling = [list(map(float, self.percentiles)), self.settings.get("channels")]
        scaling += [self.settings.get("rgb"), self.channel_names]
        min_size = self._min_size(None)
        if min_size != TrainConfig.min_size:
            # only a size other than the one files without it are segmented with: the digests
            # of the others, and the batch records that hold them, stay as they were
            scaling.append(min_size)
        digest.update(json.dumps(scaling).encode())  # a tuple and its loaded list agree
        return digest.hexdigest()[:16]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save both networks with their architecture, normalisation and settings (one file).

        The file is written whole or not at all (a temporary file renamed into place), so a
        pair loaded from ``path`` may be saved over it with ``overwrite=True``.

        Parameters
        ----------
        path : str or path-like
            The model file (``.pt`` by convention).
        overwrite : bool
            Replace a file already at ``path``.

        Returns
        -------
        pathlib.Path
            Where the model was saved.

        Raises
        ------
        napari_mutualseg.files.ResultExistsError
            If ``path`` exists and ``overwrite`` is false (a ``FileExistsError``).
        napari_mutualseg.files.OutputError
            If the file cannot be written there (a folder that cannot be made or written
            to, a full disk); missing folders are made.
        ValueError
            If ``path`` is an image's or a table's name (``cells.tif``,
            :func:`~napari_mutualseg.checkpoint.check_model_name`), or the pair holds a value
            a model file cannot (its settings and history hold numbers, text, and lists and
            tables of them; NumPy numbers are saved as plain ones). Nothing is written then.
        """
        fields = {
            "percentiles": [float(p) for p in self.percentiles],
            "settings": dict(self.settings),
            "history": [dict(h) for h in self.history],
            "cell_size": self.cell_size,
            "channel_names": None if self.channel_names is None else list(self.channel_names),
            "pixel_size": self.pixel_size,
        }
        return checkpoint.write_networks(self.models, fields, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> ModelPair:
        """Load a pair saved with :meth:`save`; never runs code from the file.

        What the file describes is checked before anything is built: the architecture of
        each network (within :data:`~napari_mutualseg.checkpoint.ARCH_LIMITS`), that the
        stored weights have exactly the shapes it implies (so nothing larger than the file is
        ever allocated), and that they are finite; then that neither the weights nor the other
        values changed since the file was saved (their checksums). The file is read on the
        CPU, so a pair saved on a GPU loads on a machine without one.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save` (or the plugin's *Save model*).
        device : str or torch.device
            Where to put the networks: ``"auto"`` (CUDA, then MPS, then the CPU) or an
            explicit device.

        Returns
        -------
        ModelPair

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        napari_mutualseg.checkpoint.CheckpointError
            If the file is damaged, not a napari-mutualseg model, or describes networks this
            package cannot build; the message says what is wrong in one line.
        ValueError
            When ``device`` is not available here.
        """
        pair, _ = cls.read(path)
        return pair.to(select_device(device))

    @classmethod
    def read(cls, path: str | Path) -> tuple[ModelPair, dict[str, Any]]:
        """The pair saved at ``path`` on the CPU, checked as :meth:`load` checks it, and the
        file's fields as stored (its format and package versions among them).

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.

        Returns
        -------
        pair : ModelPair
            On the CPU.
        fields : dict
            The file's fields as stored.

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        napari_mutualseg.checkpoint.CheckpointError
            If the file is not a usable model (see :meth:`load`).
        """
        payload, (model_a, model_b) = checkpoint.read_networks(path)
        pair = cls(
            model_a,
            model_b,
            tuple(float(p) for p in payload["percentiles"]),
            dict(payload.get("settings", {})),
            [dict(h) for h in payload.get("history", [])],
            cell_size=payload.get("cell_size"),
            channel_names=(
                tuple(payload["channel_names"]) if payload.get("channel_names") else None
            ),
            pixel_size=payload.get("pixel_size"),
        )
        return pair, payload
