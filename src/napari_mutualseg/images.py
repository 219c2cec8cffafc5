"""Images with named axes: what every axis of a file, an array or a layer means.

An :class:`AxisImage` is pixel data with its axes named by letters from :data:`AXES`: ``T``
(time), ``C`` (channel), ``Z``, ``Y`` and ``X``, always in that order, plus what is known about
it (channel names, pixel size, whether the channels are the colours of an RGB image). The data
stay what they were: a numpy array, or a lazy dask array for chunked and large files, which are
read plane by plane (or block by block) and never loaded whole.

The axes come from the file's own metadata (ImageJ and OME-TIFF through tifffile, OME-Zarr,
and CZI, ND2, LIF and more through the optional ``bioio`` package), or from the caller
(``axes="CZYX"``; ``--axes`` on the command line). An array whose meaning is not known is never
guessed: a 3D array without axes is refused with a message that asks for them, except for the
one unambiguous case, 8-bit pixels with 3 or 4 values last (an RGB(A) picture), which is taken
as RGB with a warning that says so.

Everything that segments works on 2D planes: one per time point and z position, each as a
``(C, Y, X)`` array (:meth:`AxisImage.plane`). :meth:`AxisImage.select` picks the channels
that are the networks' input, and turns an RGB image into three channels or one gray channel.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .io import OTHER_IMAGE_SUFFIXES, TIFF_SUFFIXES, format_size
from .ome import unit_symbol
from .preprocess import (
    DEFAULT_PERCENTILES,
    SAMPLE_PIXELS,
    apply_ranges,
    channel_ranges,
    check_channels,
    looks_rgb,
)

__all__ = [
    "AXES",
    "GRAY_WEIGHTS",
    "RGB_MODES",
    "AxisImage",
    "as_image",
    "as_images",
    "network_planes",
    "parse_axes",
    "parse_channels",
    "read_pixels",
]

#: Axis letters, in the order an :class:`AxisImage` keeps them.
AXES = "TCZYX"

#: Axes whose every index is one 2D plane of its own.
PLANE_AXES = "TZ"

#: How an RGB image becomes network input: its three colours as channels, or one gray channel.
RGB_MODES = ("channels", "gray")

#: Weights of R, G and B in the gray value (ITU-R BT.709 luma, as ``skimage.color.rgb2gray``).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)

#: Planes read (evenly spaced) for the intensity percentiles of a stack or time series.
SAMPLE_PLANES = 32

#: Files up to this size are read into memory; larger ones are opened lazily (chunk by chunk).
LAZY_BYTES = 256 * 2**20

#: Formats read through the optional ``bioio`` package (with the reader for the format).
BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")

_ASK = (
    "say what each axis is with --axes on the command line or axes= in Python, e.g. CYX "
    "(channels), ZYX (a z-stack), TYX (a time series), CZYX or TZYX"
)


def parse_axes(axes: str, ndim: int | None = None, name: str = "image") -> str:
    """Check an axes string (letters from :data:`AXES`, any order and case) and return it.

    Parameters
    ----------
    axes : str
        One letter per array axis, e.g. ``"CYX"`` or ``"zcyx"``.
    ndim : int, optional
        The number of axes the array has.
    name : str
        How the image is called in error messages.

    Returns
    -------
    str
        The letters in upper case, in the order given.
    """
    letters = str(axes).strip().upper()
    bad = sorted(set(letters) - set(AXES))
    if bad or len(set(letters)) != len(letters) or not {"Y", "X"} <= set(letters):
        raise ValueError(
            f"Axes {axes!r} for {name}: use each of the letters T (time), C (channel), Z, Y and "
            "X at most once, Y and X always, one letter per axis of the array (e.g. CYX)."
        )
    if ndim is not None and len(letters) != ndim:
        raise ValueError(
            f"Axes {axes!r} name {len(letters)} axes but {name} has {ndim}: give one letter per "
            "axis."
        )
    return letters


def parse_channels(values: Any) -> tuple[int | str, ...] | None:
    """Channels as the user gave them: indices, names, or comma-separated text of either.

    ``None`` or an empty selection means every channel. ``"0,2"``, ``["0", "2"]``, ``[0, 2]``
    and ``"DAPI,GFP"`` are all understood; digits are indices, anything else is a name.

    Returns
    -------
    tuple or None
        Channel indices (int) and names (str), in the order given.
    """
    if values is None:
        return None
    if isinstance(values, (str, int, np.integer)):
        values = [values]
    out: list[int | str] = []
    for value in values:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            out.append(int(value))
            continue
        for part in str(value).split(","):
            part = part.strip()
            if part:
                out.append(int(part) if part.isdigit() else part)
    return tuple(out) or None


def _canonical(data: Any, axes: str) -> tuple[Any, str]:
    """``data`` transposed (a view, or lazily) so that its axes follow :data:`AXES`."""
    order = sorted(range(len(axes)), key=lambda i: AXES.index(axes[i]))
    if order == list(range(len(axes))):
        return data, axes
    return data.transpose(order), "".join(axes[i] for i in order)


def _take(data: Any, axis: int, index: Any) -> Any:
    key = (slice(None),) * axis + (index,)
    return data[key]


@dataclass(frozen=True)
class AxisImage:
    """Pixel data and what its axes mean.

    Build one with :meth:`from_file` or :meth:`from_array`; the fields are checked.

    Attributes
    ----------
    data : array_like
        The pixels (numpy, or dask for lazily read files), axes in :data:`AXES` order.
    axes : str
        One letter per axis of ``data``, a subsequence of ``"TCZYX"`` ending in ``"YX"``.
    channel_names : tuple of str, optional
        One name per channel, when the file names them.
    pixel_size : dict
        Physical size of a step along ``"Z"``, ``"Y"``, ``"X"`` (and ``"T"``), when known.
    unit : str, optional
        Unit of the spatial pixel sizes (``"µm"``), when known.
    rgb : bool
        The channels are the colours of an RGB(A) picture.
    name : str
        How the image is called in messages (the file name).
    notes : tuple of str
        Where the axes came from and what was assumed, for people.
    """

    data: Any
    axes: str
    channel_names: tuple[str, ...] | None = None
    pixel_size: Mapping[str, float] = field(default_factory=dict)
    unit: str | None = None
    rgb: bool = False
    name: str = "image"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        axes = parse_axes(self.axes, len(self.data.shape), self.name)
        if axes != "".join(a for a in AXES if a in axes):
            raise ValueError(
                f"AxisImage axes must follow the order {AXES}, got {axes}; build it with "
                "AxisImage.from_array, which reorders."
            )
        object.__setattr__(self, "axes", axes)
        if self.channel_names is not None:
            names = tuple(str(n) for n in self.channel_names)
            if len(names) != self.n_channels:
                raise ValueError(
                    f"{self.name} has {self.n_channels} channel(s) but {len(names)} channel "
                    "name(s) were given."
                )
            object.__setattr__(self, "channel_names", names)
        if self.rgb and "C" not in axes:
            raise ValueError(f"{self.name}: an RGB image needs a C axis for its colours.")
        sizes = {k.upper(): float(v) for k, v in dict(self.pixel_size).items()}
        object.__setattr__(self, "pixel_size", {k: v for k, v in sizes.items() if k in axes})
        object.__setattr__(self, "notes", tuple(self.notes))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_array(
        cls,
        data: Any,
        axes: str | None = None,
        *,
        channel_names: Sequence[str] | None = None,
        pixel_size: Mapping[str, float] | None = None,
        unit: str | None = None,
        rgb: bool | None = None,
        name: str = "image",
    ) -> AxisImage:
        """An image from an array and the meaning of its axes.

        Parameters
        ----------
        data : array_like
            numpy, dask or zarr array (a zarr array is wrapped lazily in dask).
        axes : str, optional
            One letter per axis from ``TCZYX``, in the array's order (e.g. ``"ZCYX"``). Left
            out, a 2D array is ``"YX"`` and an 8-bit ``(H, W, 3|4)`` array is RGB(A) (with a
            warning that says so); anything else raises a ``ValueError`` asking for ``axes``.
        channel_names : sequence of str, optional
            One name per channel.
        pixel_size : mapping, optional
            Step sizes by axis letter, e.g. ``{"Y": 0.3, "X": 0.3}``.
        unit : str, optional
            Unit of the spatial step sizes.
        rgb : bool, optional
            The channel axis holds colours. Left out: true for an 8-bit array whose last axis is
            C with 3 or 4 values.
        name : str
            How the image is called in messages.
        """
        data = _as_array(data)
        shape = tuple(data.shape)
        notes: list[str] = []
        if axes is None:
            if len(shape) == 2:
                axes = "YX"
            elif _rgb_like(data):
                axes = "YXC"
                note = (
                    f"{name}: shape {shape} of 8-bit pixels taken as one RGB"
                    f"{'A' if shape[-1] == 4 else ''} picture (give axes to say otherwise)"
                )
                warnings.warn(note, UserWarning, stacklevel=2)
                notes.append(note)
            else:
                raise ValueError(f"{name} has shape {shape} and no axes were given: {_ASK}.")
        else:
            axes = parse_axes(axes, len(shape), name)
        if rgb is None:
            rgb = axes.endswith("C") and _rgb_like(data)
        data, axes = _canonical(data, axes)
        return cls(
            data,
            axes,
            tuple(channel_names) if channel_names is not None else None,
            dict(pixel_size or {}),
            unit,
            bool(rgb),
            name,
            tuple(notes),
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, axes: str | None = None, *, lazy: bool | None = None
    ) -> AxisImage:
        """Read an image file (or OME-Zarr folder) with the meaning of its axes.

        Axes, channel names and pixel size come from the file's metadata: ImageJ and OME-TIFF
        (tifffile), OME-Zarr (zarr), and CZI, ND2, LIF and other formats through ``bioio`` when
        installed (``pip install "napari-mutualseg[bioio]"``). Axes of length 1 that the file
        does not name, and single time points or z positions, are dropped. Files larger than
        :data:`LAZY_BYTES` and every zarr store are opened lazily (read a chunk at a time).

        Parameters
        ----------
        path : str or path-like
            TIFF, PNG, JPEG, BMP, GIF, an OME-Zarr folder, or a bioio format.
        axes : str, optional
            One letter per axis of the stored array (overrides the file's metadata). Needed when
            the file does not say, e.g. for a 3D TIFF written without metadata.
        lazy : bool, optional
            Open a TIFF lazily (True) or read it whole (False); by default by its size.

        Raises
        ------
        FileNotFoundError
            When there is no such file.
        ValueError
            When the file cannot be read, or its axes are unknown and not given.
        """
        path = Path(path)
        raw = _open(path, lazy)
        data, letters = raw.data, raw.axes
        notes = list(raw.notes)
        if axes is not None:
            given = parse_axes(axes, None, path.name)
            if len(given) != data.ndim:
                data, letters = _drop_unknown_singletons(data, letters)
            axes = parse_axes(given, data.ndim, path.name)
            if axes != letters:
                notes.append(f"axes {axes} as given (the file says {raw.file_axes})")
            same_c = "C" in axes and "C" in letters and axes.index("C") == letters.index("C")
            image = cls.from_array(
                data,
                axes,
                channel_names=raw.channel_names if same_c else None,
                pixel_size=raw.pixel_size,
                unit=raw.unit,
                rgb=raw.rgb if axes == letters else None,
                name=path.name,
            )
        else:
            data, letters = _drop_unknown_singletons(data, letters)
            if "?" in letters:
                if not (letters[:-1] == "YX" and _rgb_like(data)):
                    raise ValueError(
                        f"{path.name} holds an array of shape {tuple(data.shape)} whose axes the "
                        f"file does not say (read as {raw.file_axes!r}): {_ASK}."
                    )
                letters = letters[:-1] + "C"
                note = "8-bit pixels with 3 or 4 values last taken as one RGB(A) picture"
                warnings.warn(f"{path.name}: {note}", UserWarning, stacklevel=2)
                notes.append(note)
                raw = replace(raw, rgb=True)
            image = cls.from_array(
                data,
                letters,
                channel_names=raw.channel_names,
                pixel_size=raw.pixel_size,
                unit=raw.unit,
                rgb=raw.rgb,
                name=path.name,
            )
        image = image._without_single_planes()
        return replace(image, notes=tuple(notes) + image.notes)

    def _without_single_planes(self) -> AxisImage:
        """The image without time or z axes of length 1."""
        image = self
        for letter in PLANE_AXES:
            if letter in image.axes and image.sizes[letter] == 1:
                k = image.axes.index(letter)
                image = replace(
                    image, data=_take(image.data, k, 0), axes=image.axes.replace(letter, "")
                )
        return image

    # ------------------------------------------------------------------ what it is

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """The pixel type."""
        return np.dtype(self.data.dtype)

    @property
    def sizes(self) -> dict[str, int]:
        """Length of every axis by letter."""
        return dict(zip(self.axes, self.shape, strict=True))

    @property
    def n_channels(self) -> int:
        """Number of channels (1 without a C axis)."""
        return self.sizes.get("C", 1)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(Y, X)``: the shape of one 2D plane."""
        return self.sizes["Y"], self.sizes["X"]

    @property
    def plane_axes(self) -> str:
        """The axes that index planes: ``"T"``, ``"Z"``, ``"TZ"`` or ``""``."""
        return "".join(a for a in PLANE_AXES if a in self.axes)

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (time points times z positions)."""
        return math.prod(self.sizes[a] for a in self.plane_axes)

    @property
    def label_axes(self) -> str:
        """Axes of this image's label image: every axis but C."""
        return self.axes.replace("C", "")

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of this image's label image."""
        return tuple(self.sizes[a] for a in self.label_axes)

    def plane_position(self, index: int) -> dict[str, int]:
        """Time point and z position of plane ``index`` (planes run over Z within each T)."""
        if not 0 <= index < self.n_planes:
            raise IndexError(f"{self.name} has {self.n_planes} plane(s); there is no {index}.")
        sizes = [self.sizes[a] for a in self.plane_axes]
        if not sizes:
            return {}
        position = np.unravel_index(index, sizes)
        return {a: int(i) for a, i in zip(self.plane_axes, position, strict=True)}

    def plane_name(self, index: int) -> str:
        """``"t002_z013"``-style name of plane ``index`` (empty for a single plane)."""
        pos = self.plane_position(index)
        return "_".join(f"{a.lower()}{int(i):03d}" for a, i in pos.items())

    def plane_array(self, index: int = 0) -> Any:
        """Plane ``index`` as a ``(C, Y, X)`` array, not loaded: a numpy view or a dask array.

        This is what block-by-block prediction reads from.
        """
        pos = self.plane_position(index)
        key = tuple(int(pos[a]) if a in pos else slice(None) for a in self.axes)
        plane = self.data[key]
        return plane if "C" in self.axes else plane[None]

    def plane(self, index: int = 0) -> np.ndarray:
        """Plane ``index`` as a ``(C, Y, X)`` numpy array (loaded)."""
        return np.asarray(self.plane_array(index))

    def channel_ranges(self, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
        """Low and high intensity of every channel over the whole image, for normalisation.

        One pair per channel for all planes together, so that the empty planes at the top
        and bottom of a z-stack are not stretched into noise. Read from at most
        :data:`SAMPLE_PLANES` planes and, on large images, a strided sample of them
        (:func:`napari_mutualseg.preprocess.channel_ranges`); lazy data are never loaded
        whole.

        Returns
        -------
        numpy.ndarray
            ``(C, 2)``; apply with :func:`napari_mutualseg.preprocess.apply_ranges`.
        """
        n = self.n_planes
        picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_PLANES)).round().astype(int))
        height, width = self.plane_shape
        total = picks.size * height * width
        step = 1
        if total > SAMPLE_PIXELS:
            step = math.ceil(math.sqrt(total / (SAMPLE_PIXELS / 2)))
        sample = np.concatenate(
            [np.asarray(self.plane_array(int(j))[:, ::step, ::step]) for j in picks], axis=1
        )
        return channel_ranges(sample, percentiles, self.name)

    def describe(self) -> str:
        """One line for people: name, channels, plane size, planes, axes and pixel size."""
        parts = [f"{self.name}: {self.plane_shape[0]} x {self.plane_shape[1]} px"]
        if "C" in self.axes:
            n = self.n_channels
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            kind = "RGB colours" if self.rgb else f"channel{'s' if n > 1 else ''}"
            parts.append(f"{n} {kind}{names}")
        for letter, word in (("Z", "z-planes"), ("T", "time points")):
            if letter in self.axes:
                parts.append(f"{self.sizes[letter]} {word}")
        parts.append(f"axes {self.axes}")
        spatial = [f"{a} {self.pixel_size[a]:g}" for a in "ZYX" if a in self.pixel_size]
        if spatial:
            parts.append(f"pixel size {', '.join(spatial)} {self.unit or ''}".rstrip())
        return ", ".join(parts)

    # ------------------------------------------------------------------ channels

    def channel_index(self, channel: int | str) -> int:
        """Index of one channel given by index or by name (names ignore case)."""
        n = self.n_channels
        if isinstance(channel, str) and channel.strip().isdigit():
            channel = int(channel)
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not 0 <= channel < n:
                raise ValueError(
                    f"{self.name} has {n} channel(s) (0 to {n - 1}); there is no channel "
                    f"{channel}."
                )
            return int(channel)
        if not self.channel_names:
            raise ValueError(
                f"{self.name} does not name its channels, so channel {channel!r} cannot be "
                f"found: give its index (0 to {n - 1}) instead."
            )
        lowered = [c.lower() for c in self.channel_names]
        if str(channel).lower() not in lowered:
            raise ValueError(
                f"{self.name} has no channel {channel!r}; its channels are "
                f"{', '.join(self.channel_names)} (or give an index 0 to {n - 1})."
            )
        return lowered.index(str(channel).lower())

    def select(
        self, channels: Sequence[int | str] | None = None, rgb: str = "channels"
    ) -> AxisImage:
        """The network input: the chosen channels, an RGB image as colours or gray.

        The result always has a C axis. The selection is lazy for lazy data.

        Parameters
        ----------
        channels : sequence of int or str, optional
            Channel indices or names, in the order the networks see them; every channel when
            left out (the colours of an RGB(A) image without alpha).
        rgb : {"channels", "gray"}
            An RGB image's colours as three channels, or one gray channel (luma,
            :data:`GRAY_WEIGHTS`). Has no effect on other images.

        Returns
        -------
        AxisImage
            The selected channels, with their names and a note of what was chosen.
        """
        if rgb not in RGB_MODES:
            raise ValueError(f"rgb must be one of {', '.join(RGB_MODES)}, got {rgb!r}.")
        channels = parse_channels(channels)
        image = self
        if "C" not in image.axes:
            k = sum(a in image.axes for a in "T")
            data = image.data[(slice(None),) * k + (None,)]
            image = replace(image, data=data, axes=image.axes[:k] + "C" + image.axes[k:])
        c = image.axes.index("C")
        if image.rgb and rgb == "gray":
            if channels is not None:
                raise ValueError(
                    f"{self.name}: gray conversion makes one channel of the colours; leave the "
                    "channels unset, or keep the colours as channels to pick some."
                )
            weights = np.asarray(GRAY_WEIGHTS, np.float32).reshape(
                (3,) + (1,) * (image.data.ndim - c - 1)
            )
            colours = _take(image.data, c, slice(0, 3))
            gray = (colours * weights).sum(axis=c, keepdims=True).astype(np.float32)
            note = "RGB converted to one gray channel"
            return replace(
                image, data=gray, channel_names=("gray",), rgb=False, notes=(*image.notes, note)
            )
        notes = list(image.notes)
        if channels is None:
            if not (image.rgb and image.n_channels == 4):
                return image
            indices = [0, 1, 2]
            notes.append("RGBA: the alpha channel is left out")
        else:
            indices = [image.channel_index(ch) for ch in channels]
            if len(set(indices)) != len(indices):
                raise ValueError(f"{self.name}: channels {list(channels)} name one channel twice.")
        if indices == list(range(image.n_channels)):
            return replace(image, notes=tuple(notes))
        names = tuple(image.channel_names[i] for i in indices) if image.channel_names else None
        chosen = ", ".join(names) if names else ", ".join(map(str, indices))
        if channels is not None:
            notes.append(f"network input: channel(s) {chosen}")
        return replace(
            image,
            data=_take(image.data, c, indices),
            channel_names=names,
            notes=tuple(notes),
        )


# ---------------------------------------------------------------------- arrays


def _rgb_like(data: Any) -> bool:
    """The one layout taken without axes: 8-bit pixels, (H, W, 3|4)."""
    return looks_rgb(data) and np.dtype(data.dtype) == np.uint8


def _as_array(data: Any) -> Any:
    """numpy and dask arrays as they are; zarr (and other chunked arrays) wrapped in dask."""
    if isinstance(data, np.ndarray) or type(data).__module__.startswith("dask"):
        return data
    if hasattr(data, "chunks") and hasattr(data, "shape") and hasattr(data, "dtype"):
        import dask.array as da

        return (
            da.from_zarr(data) if type(data).__module__.startswith("zarr") else da.from_array(data)
        )
    return np.asarray(data)


# ---------------------------------------------------------------------- files


@dataclass(frozen=True)
class _Raw:
    """What a reader found: the stored array, its axes ('?' where unknown) and metadata."""

    data: Any
    axes: str
    file_axes: str
    channel_names: tuple[str, ...] | None = None
    pixel_size: dict[str, float] = field(default_factory=dict)
    unit: str | None = None
    rgb: bool = False
    notes: tuple[str, ...] = ()


def _drop_unknown_singletons(data: Any, axes: str) -> tuple[Any, str]:
    for k in reversed(range(len(axes))):
        if axes[k] == "?" and data.shape[k] == 1:
            data = _take(data, k, 0)
            axes = axes[:k] + axes[k + 1 :]
    return data, axes


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup", ".zarray"))
    )


def _open(path: Path, lazy: bool | None = None) -> _Raw:
    """Read ``path`` with the reader its type needs; the one place that picks a reader."""
    if not path.exists():
        raise FileNotFoundError(f"Image file not found: {path}")
    if _is_zarr(path):
        return _read_zarr(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file.")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES:
        return _read_bioio(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file (0 bytes), not an image.")
    if suffix in TIFF_SUFFIXES:
        _check_tiff_data(path)
    try:
        with _quiet("tifffile"):
            raw = _read_tiff(path, lazy) if suffix in TIFF_SUFFIXES else _read_picture(path)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"Cannot read {path} as an image ({type(err).__name__}: {reason})."
        ) from err
    if 0 in raw.data.shape:
        raise ValueError(f"{path} holds no pixels (shape {tuple(raw.data.shape)}).")
    return raw


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hold back a library's log lines (tifffile logs one per damaged strip or tile): the
    error raised says what is wrong in one line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_tiff_data(path: Path) -> None:
    """Refuse, before reading, an uncompressed TIFF whose strips hold fewer bytes than its
    header declares (a damaged header that would have a huge image allocated)."""
    import tifffile

    try:
        with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
            page = tif.series[0].pages[0]
            shape, dtype = tuple(page.shape), page.dtype
            stored = sum(page.databytecounts)
            needed = int(np.prod(shape, dtype=np.float64)) * page.bitspersample // 8
            raw = page.compression == 1
    except Exception:
        return  # unreadable: reading it says why
    if raw and stored < needed:
        raise ValueError(
            f"{path} declares a {'x'.join(map(str, shape))} {dtype} image ({format_size(needed)}) "
            f"but holds only {format_size(stored)} of pixel data: the file is damaged or "
            "truncated."
        )


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an image file as stored, loaded (:func:`napari_mutualseg.io.read_image`)."""
    return np.asarray(_open(Path(path)).data)


def _unit(text: Any) -> str | None:
    """A length unit as ``"µm"``; None for none, pixels, or what is not a length."""
    try:
        return unit_symbol(text)
    except ValueError:
        return None


def _tiff_letters(series: Any, rgb: bool) -> str:
    """tifffile's axis codes as ours: S is the colours of RGB, unknown codes become '?'."""
    letters = []
    for code in series.axes:
        if code == "S":
            letters.append("C" if rgb else "?")
        elif code in AXES:
            letters.append(code)
        else:
            letters.append("?")
    return "".join(letters)


def _read_tiff(path: Path, lazy: bool | None = None) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.pages[0]
        rgb = (
            "S" in series.axes
            and int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
            and series.dtype == np.uint8
            and series.shape[series.axes.index("S")] in (3, 4)
        )
        letters = _tiff_letters(series, rgb)
        names, scale, unit, source = None, {}, None, None
        if tif.is_ome:
            names, scale, unit = _ome_xml(tif.ome_metadata)
            source = "OME metadata"
        elif tif.is_imagej:
            scale, unit = _imagej_scale(tif.imagej_metadata or {}, page)
            source = "ImageJ metadata"
        elif tif.is_shaped and (tif.shaped_metadata or [{}])[0].get("axes"):
            source = "file's metadata"
        elif "S" in series.axes and rgb:
            source = "RGB photometric tag"
        if not scale:
            scale, unit = _resolution_scale(page, tifffile) or ({}, unit)
        big = series.size * series.dtype.itemsize > LAZY_BYTES if lazy is None else lazy
        if not big:
            data = series.asarray()
    if big:
        data = _lazy_tiff(path)
    notes = (f"axes {letters} from the {source}",) if source and "?" not in letters else ()
    return _Raw(data, letters, series.axes, names, scale, unit, rgb, notes)


def _lazy_tiff(path: Path) -> Any:
    """A large TIFF as a dask array read chunk by chunk through tifffile's zarr store."""
    import dask.array as da
    import tifffile
    import zarr

    try:
        return da.from_zarr(zarr.open(tifffile.imread(path, aszarr=True), mode="r"))
    except Exception as err:  # the store needs a zarr that matches tifffile
        warnings.warn(
            f"{path.name} is read whole into memory: zarr {zarr.__version__} cannot open it "
            f"chunk by chunk ({type(err).__name__}: {err}).",
            UserWarning,
            stacklevel=3,
        )
        return tifffile.imread(path)


def _ome_xml(xml: str | None) -> tuple[tuple[str, ...] | None, dict[str, float], str | None]:
    """Channel names, pixel size and unit from OME-XML."""
    if not xml:
        return None, {}, None
    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None, {}, None
    scale, unit = {}, None
    for letter in "ZYX":
        value = pixels.get(f"PhysicalSize{letter}")
        if value is not None:
            scale[letter] = float(value)
            unit = unit or _unit(pixels.get(f"PhysicalSize{letter}Unit", "µm"))
    channels = [e for e in pixels if e.tag.endswith("}Channel")]
    names = tuple(e.get("Name", "") for e in channels)
    return (names if names and all(names) else None), scale, unit


def _imagej_scale(meta: Mapping[str, Any], page: Any) -> tuple[dict[str, float], str | None]:
    """Pixel size from ImageJ's resolution tags, ``unit`` and ``spacing`` (when a unit is set)."""
    unit = _unit(meta.get("unit"))
    if not unit or unit == "pixel":
        return {}, None
    scale = {}
    for letter, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in page.tags:
            num, den = page.tags[tag].value
            if num:
                scale[letter] = den / num
    if meta.get("spacing"):
        scale["Z"] = float(meta["spacing"])
    return scale, unit


def _resolution_scale(page: Any, tifffile: Any) -> tuple[dict[str, float], str] | None:
    """Pixel size from plain TIFF resolution tags in centimetres (inches are left out: 72, 96
    or 300 dpi are display and print defaults, not optics)."""
    if page.resolutionunit != tifffile.RESUNIT.CENTIMETER:
        return None
    x_res, y_res = page.get_resolution()
    if not (x_res > 0 and y_res > 0):
        return None
    # to the 6 digits a TIFF rational keeps
    return {"Y": float(f"{1e4 / y_res:.6g}"), "X": float(f"{1e4 / x_res:.6g}")}, "µm"


def _read_picture(path: Path) -> _Raw:
    import skimage.io

    data = np.asarray(skimage.io.imread(path))
    # A picture's last axis is its colours, and a leading one the frames of an animation.
    letters = {2: "YX", 3: "YXC", 4: "TYXC"}.get(data.ndim, "?" * data.ndim)
    rgb = "C" in letters and data.shape[-1] in (3, 4)
    return _Raw(data, letters, letters, rgb=rgb)


def _read_zarr(path: Path) -> _Raw:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise ValueError(f"Cannot read {path} as zarr ({type(err).__name__}: {err}).") from err
    if not hasattr(node, "attrs") or hasattr(node, "shape"):
        data = da.from_zarr(node)
        return _Raw(data, "?" * data.ndim, "?" * data.ndim)
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise ValueError(
            f"{path.name} is a zarr group without OME-Zarr 'multiscales' metadata; give the "
            "path of the array inside it (and --axes)."
        )
    ms = multiscales[0]
    names = [a if isinstance(a, str) else a.get("name", "") for a in ms.get("axes", [])]
    types = [None if isinstance(a, str) else a.get("type") for a in ms.get("axes", [])]
    letters = "".join(
        "C" if t == "channel" else (n.upper() if n.upper() in AXES else "?")
        for n, t in zip(names, types, strict=True)
    )
    dataset = ms["datasets"][0]
    data = da.from_zarr(node[dataset["path"]])
    if len(letters) != data.ndim:
        letters = "?" * data.ndim
    scale = None
    for transforms in (
        dataset.get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) == data.ndim:
                scale = np.asarray(t["scale"], float) * (1 if scale is None else scale)
    pixel_size = {}
    if scale is not None:
        pixel_size = {a: float(v) for a, v in zip(letters, scale, strict=True) if a in "TZYX"}
    units = [
        a.get("unit")
        for a in ms.get("axes", [])
        if isinstance(a, dict) and a.get("type") == "space"
    ]
    omero = ome.get("omero", attrs.get("omero", {})) or {}
    labels = tuple(str(c.get("label", "")) for c in omero.get("channels", []))
    channel_names = labels if labels and all(labels) and "C" in letters else None
    if channel_names and len(channel_names) != data.shape[letters.index("C")]:
        channel_names = None
    levels = len(ms["datasets"])
    notes = [f"axes {letters} from the OME-Zarr metadata"]
    if levels > 1:
        notes.append(f"full resolution, level 0 of {levels}")
    return _Raw(
        data,
        letters,
        letters,
        channel_names,
        pixel_size,
        _unit(units[0] if units else None),
        False,
        tuple(notes),
    )


def _read_bioio(path: Path) -> _Raw:
    suffix = path.suffix.lower() or "(no suffix)"
    known = ", ".join((*TIFF_SUFFIXES, *OTHER_IMAGE_SUFFIXES, ".zarr"))
    try:
        from bioio import BioImage
    except ImportError:
        if suffix in BIOIO_SUFFIXES:
            raise ValueError(
                f"Cannot read {path}: {suffix} files are read through bioio, which is not "
                "installed: pip install 'napari-mutualseg[bioio]'."
            ) from None
        raise ValueError(
            f"Cannot read {path}: unsupported file type {suffix!r}; supported: {known}, and "
            f"{', '.join(BIOIO_SUFFIXES)} and more with pip install 'napari-mutualseg[bioio]'."
        ) from None
    try:
        image = BioImage(path)
        order = str(image.dims.order).upper()
        data = image.dask_data
        names = tuple(str(n) for n in (image.channel_names or ()))
        sizes = image.physical_pixel_sizes
    except Exception as err:
        raise ValueError(
            f"Cannot read {path}: unsupported file type {suffix!r}, or its bioio reader (e.g. "
            f"bioio-czi, bioio-nd2, bioio-lif) is not installed ({type(err).__name__}: {err})."
        ) from err
    rgb = False
    if "S" in order:
        s = order.index("S")
        c = order.index("C") if "C" in order else None
        if c is not None and data.shape[c] != 1:
            raise ValueError(f"{path.name}: several channels of RGB colours are not supported.")
        if c is not None:
            data, order = _take(data, c, 0), order[:c] + order[c + 1 :]
            s = order.index("S")
        order = order[:s] + "C" + order[s + 1 :]
        rgb = data.shape[s] in (3, 4)
        names = ()
    letters = "".join(a if a in AXES else "?" for a in order)
    scale = {
        a: float(v)
        for a, v in zip("ZYX", (sizes.Z, sizes.Y, sizes.X), strict=True)
        if v is not None
    }
    channel_names = (
        names
        if names and "C" in letters and len(names) == data.shape[letters.index("C")]
        else None
    )
    return _Raw(
        data,
        letters,
        order,
        channel_names,
        scale,
        "µm" if scale else None,
        rgb,
        (f"axes {letters} from bioio",),
    )


# ---------------------------------------------------------------------- network input


def as_image(data: Any, axes: str | None = None, *, name: str = "image") -> AxisImage:
    """An :class:`AxisImage` of ``data``, for the Python API's plain arrays.

    Parameters
    ----------
    data : array_like or AxisImage
        An :class:`AxisImage` is returned as it is. Without ``axes``, a 2D array is one plane
        (``YX``), an 8-bit ``(H, W, 3|4)`` array an RGB(A) picture, and any other 3D array a
        channels-first ``(C, H, W)`` image.
    axes : str, optional
        One letter per axis of ``data`` (see :meth:`AxisImage.from_array`).
    name : str
        How the image is called in messages.
    """
    if isinstance(data, AxisImage):
        return data
    if axes is not None:
        return AxisImage.from_array(data, axes, name=name)
    array = data if hasattr(data, "shape") and hasattr(data, "dtype") else np.asarray(data)
    if array.ndim == 2:
        return AxisImage.from_array(array, "YX", name=name)
    if array.ndim == 3 and looks_rgb(array):
        if not _rgb_like(array):
            raise ValueError(
                f"{name} looks like an RGB(A) image (shape {tuple(array.shape)}) but its pixels "
                f"are {array.dtype}, not 8-bit: say so with axes='YXC' to use its colours as "
                "channels, or pass one channel alone (e.g. image[..., 0])."
            )
        return AxisImage.from_array(array, "YXC", rgb=True, name=name)
    if array.ndim == 3:
        return AxisImage.from_array(array, "CYX", name=name)
    raise ValueError(f"{name} has shape {tuple(array.shape)}: {_ASK}.")


def as_images(images: Any, name: str = "images") -> list[AxisImage]:
    """Training input as a list of images, each with one or more planes.

    Parameters
    ----------
    images : array_like, AxisImage or sequence of them
        See :func:`network_planes`.
    name : str
        How the images are called in messages.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is empty: give at least one image.")
        return [as_image(x, name=f"{name}[{i}]") for i, x in enumerate(images)]
    if not isinstance(images, AxisImage):
        array = np.asarray(images)
        if array.ndim == 3 and not looks_rgb(array):
            # a bare 3D array is a stack of planes, each trained with its own boxes
            return [AxisImage.from_array(array, "ZYX", name=name)]
    return [as_image(images, name=name)]


def network_planes(
    images: Any,
    *,
    channels: Sequence[int | str] | None = None,
    rgb: str = "channels",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    keep: Sequence[bool] | None = None,
    name: str = "images",
) -> tuple[list[np.ndarray], tuple[str, ...] | None]:
    """The 2D planes of ``images`` as checked, normalised ``(C, H, W)`` network input.

    Parameters
    ----------
    images : array_like, AxisImage or sequence of them
        One 2D image; a ``(P, H, W)`` array (a stack of P planes); an 8-bit ``(H, W, 3|4)``
        RGB(A) image; an :class:`AxisImage` (each of its planes); or a list of 2D images,
        channels-first ``(C, H, W)`` images and :class:`AxisImage` s.
    channels : sequence of int or str, optional
        The channels to keep (see :meth:`AxisImage.select`); every channel when left out.
    rgb : {"channels", "gray"}
        How RGB images are taken.
    percentiles : tuple of float
        Mapped to 0 and 1 in every channel, over all planes of each image
        (:meth:`AxisImage.channel_ranges`), so a plane of a stack is normalised as it will be
        when the whole stack is segmented.
    keep : sequence of bool, optional
        One flag per plane of all images in order: only those planes are read (every plane
        when left out).
    name : str
        How the images are called in messages.

    Returns
    -------
    planes : list of numpy.ndarray
        ``(C, H, W)`` float32 of the kept planes, every one with the same number of channels.
    channel_names : tuple of str or None
        The names of the input channels, when every image names them alike.
    """
    items = as_images(images, name)
    total = sum(image.n_planes for image in items)
    keep = [True] * total if keep is None else [bool(k) for k in keep]
    if len(keep) != total:
        raise ValueError(f"{name} have {total} plane(s) but {len(keep)} were marked to keep.")
    planes: list[np.ndarray] = []
    names: set[tuple[str, ...] | None] = set()
    start = 0
    for image in items:
        wanted = [j for j in range(image.n_planes) if keep[start + j]]
        start += image.n_planes
        if not wanted:
            continue
        chosen = image.select(channels, rgb)
        names.add(chosen.channel_names)
        loaded = [
            check_channels(chosen.plane(j), f"{chosen.name} {chosen.plane_name(j)}".rstrip())
            for j in wanted
        ]
        ranges = chosen.channel_ranges(percentiles)
        planes += [apply_ranges(plane, ranges) for plane in loaded]
    counts = sorted({p.shape[0] for p in planes})
    if len(counts) > 1:
        raise ValueError(
            f"The images give different numbers of channels ({', '.join(map(str, counts))}): "
            "pick the same channels in every image (--channel, or channels= in Python)."
        )
    return planes, (names.pop() if len(names) == 1 else None)
