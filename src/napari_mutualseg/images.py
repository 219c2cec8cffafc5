"""Images with named axes: what every axis of a file, an array or a layer means.

An :class:`AxisImage` is pixel data with its axes named by letters from :data:`AXES`: ``T``
(time), ``C`` (channel), ``Z``, ``Y`` and ``X``, always in that order, plus what is known about
it (channel names, pixel size, a time series' frame interval, whether the channels are the
colours of an RGB image). The data stay what they were: a numpy array, or a lazy dask array
for chunked and large files, which are read plane by plane (or block by block) and never loaded
whole, in this process (also beside a dask ``Client`` made the default).

The axes come from the file's own metadata (ImageJ and OME-TIFF, OME-Zarr, and CZI, ND2, LIF
and more through the optional ``bioio`` package; read in :mod:`napari_mutualseg.readers`), or
from the caller (``axes="CZYX"``; ``--axes`` on the command line). An array whose meaning is
not known is never guessed: a 3D array without axes is refused with a message that asks for
them, except for the one unambiguous case, 8-bit pixels with 3 or 4 values last (an RGB(A)
picture), which is taken as RGB with a warning that says so.

Everything that segments works on 2D planes: one per time point and z position, each as a
``(C, Y, X)`` array (:meth:`AxisImage.plane`). :meth:`AxisImage.select` picks the channels
that are the networks' input, and turns an RGB image into three channels or one gray channel
(:mod:`napari_mutualseg.network_input`, which also makes the normalised planes training takes).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .preprocess import (
    DEFAULT_PERCENTILES,
    MIN_EDGE,
    SAMPLE_PIXELS,
    channel_ranges,
    looks_rgb,
    read_here,
)

__all__ = [
    "AXES",
    "GRAY_WEIGHTS",
    "RGB_MODES",
    "AxisImage",
    "as_image",
    "as_images",
    "parse_axes",
    "parse_channels",
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

#: What an error says when the axes of an image are not known and were not given.
ASK_AXES = (
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

    Parameters
    ----------
    values : str, int or sequence of int or str, optional
        The channels as given.

    Returns
    -------
    tuple or None
        Channel indices (int) and names (str), in the order given.
    """
    if values is None:
        return None
    if isinstance(values, (str, int, float, np.number)):
        values = [values]
    out: list[int | str] = []
    for value in values:
        if isinstance(value, (bool, np.bool_, float, np.floating)):
            # True or 1.5 read as the channel named "True" or "1.5" was refused as no name
            raise ValueError(
                f"Channels are given by index (a whole number from 0) or by name, got {value!r}."
            )
        if isinstance(value, (int, np.integer)):
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
        The pixels (numpy, or dask for lazily read files; a zarr array is read through
        dask), axes in :data:`AXES` order.
    axes : str
        One letter per axis of ``data``, a subsequence of ``"TCZYX"`` ending in ``"YX"``.
    channel_names : tuple of str, optional
        One name per channel, when the file names them.
    pixel_size : dict
        Physical size of a step along ``"Z"``, ``"Y"``, ``"X"``, and along ``"T"`` the frame
        interval in seconds, when known.
    unit : str, optional
        Unit of the spatial pixel sizes (``"µm"``), when known.
    rgb : bool
        The channels are the colours of an RGB(A) picture.
    name : str
        How the image is called in messages (the file name).
    notes : tuple of str
        Where the axes came from and what was assumed, for people.
    source_channels : tuple of int, optional
        Of picked channels (:meth:`select`), each one's index in the image it was picked
        from: what messages call it by where the channels have no names.
    """

    data: Any
    axes: str
    channel_names: tuple[str, ...] | None = None
    pixel_size: Mapping[str, float] = field(default_factory=dict)
    unit: str | None = None
    rgb: bool = False
    name: str = "image"
    notes: tuple[str, ...] = ()
    source_channels: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        # what describe says, not the pixels
        kind = "dask" if type(self.data).__module__.startswith("dask") else "numpy"
        return f"AxisImage({self.describe()}; {self.dtype} {kind} pixels)"

    def __post_init__(self) -> None:
        # a zarr array indexes neither with None nor with arrays: read it through dask
        object.__setattr__(self, "data", _as_array(self.data))
        axes = parse_axes(self.axes, len(self.data.shape), self.name)
        if axes != "".join(a for a in AXES if a in axes):
            raise ValueError(
                f"AxisImage axes must follow the order {AXES}, got {axes}; build it with "
                "AxisImage.from_array, which reorders."
            )
        object.__setattr__(self, "axes", axes)
        self._one_per_channel("channel_names", str, "channel name(s)")
        if self.rgb and "C" not in axes:
            raise ValueError(f"{self.name}: an RGB image needs a C axis for its colours.")
        sizes = {k.upper(): float(v) for k, v in dict(self.pixel_size).items()}
        object.__setattr__(self, "pixel_size", {k: v for k, v in sizes.items() if k in axes})
        object.__setattr__(self, "notes", tuple(self.notes))
        self._one_per_channel("source_channels", int, "source channel(s)")

    def _one_per_channel(self, field: str, kind: type, what: str) -> None:
        """Check that ``field`` (optional) gives one value per channel, kept as a tuple of
        ``kind``."""
        given = getattr(self, field)
        if given is None:
            return
        values = tuple(kind(v) for v in given)
        if len(values) != self.n_channels:
            raise ValueError(
                f"{self.name} has {self.n_channels} channel(s) but {len(values)} {what} were "
                "given."
            )
        object.__setattr__(self, field, values)

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
            Step sizes by axis letter, e.g. ``{"Y": 0.3, "X": 0.3}``; ``"T"``, a time series'
            frame interval, in seconds.
        unit : str, optional
            Unit of the spatial step sizes.
        rgb : bool, optional
            The channel axis holds colours. Left out: true for an 8-bit array whose last axis is
            C with 3 or 4 values.
        name : str
            How the image is called in messages.
        """
        data = _as_array(data)
        notes: tuple[str, ...] = ()
        if axes is None:
            axes, notes = _default_axes(data, name)
        else:
            axes = parse_axes(axes, len(data.shape), name)
        if rgb is None:
            rgb = axes.endswith("C") and rgb_like(data)
        data, axes = _canonical(data, axes)
        return cls(
            data,
            axes,
            tuple(channel_names) if channel_names is not None else None,
            dict(pixel_size or {}),
            unit,
            bool(rgb),
            name,
            notes,
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, axes: str | None = None, *, lazy: bool | None = None
    ) -> AxisImage:
        """Read an image file (or OME-Zarr folder) with the meaning of its axes.

        Axes, channel names, pixel size and a time series' frame interval come from the file's
        metadata: ImageJ and OME-TIFF (tifffile), OME-Zarr (zarr), and CZI, ND2, LIF and other
        formats through ``bioio`` when installed (``pip install "napari-mutualseg[bioio]"``).
        Axes of length 1 that the file does not name, and single time points or z positions,
        are dropped. Files larger than :data:`~napari_mutualseg.readers.LAZY_BYTES` and every
        zarr store are opened lazily (read a chunk at a time).

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
            When the file cannot be read, or its axes are unknown and not given
            (:class:`~napari_mutualseg.readers.AxesUnknownError`, which holds the pixels).
        """
        # the readers build on this module, so they are imported when first needed
        from .readers import read_axis_image

        return read_axis_image(path, axes, lazy=lazy)

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
    def frame_interval(self) -> float | None:
        """The time from one frame of a time series to the next, in seconds, when known."""
        return self.pixel_size.get("T")

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
        """Time point and z position of plane ``index`` (planes run over Z within each T).

        Parameters
        ----------
        index : int
            The plane, from 0 to ``n_planes - 1`` (z within each time point).

        Returns
        -------
        dict of str to int
            ``{"T": t, "Z": z}``, those of the two the image has (empty for one plane).

        Raises
        ------
        IndexError
            For a plane the image does not have.
        """
        if not 0 <= index < self.n_planes:
            raise IndexError(f"{self.name} has {self.n_planes} plane(s); there is no {index}.")
        sizes = [self.sizes[a] for a in self.plane_axes]
        if not sizes:
            return {}
        position = np.unravel_index(index, sizes)
        return {a: int(i) for a, i in zip(self.plane_axes, position, strict=True)}

    def plane_name(self, index: int) -> str:
        """The name of plane ``index`` in file names.

        Parameters
        ----------
        index : int
            The plane, from 0 to ``n_planes - 1`` (z within each time point).

        Returns
        -------
        str
            ``"t002_z013"``-style (empty for a single plane).
        """
        pos = self.plane_position(index)
        return "_".join(f"{a.lower()}{int(i):03d}" for a, i in pos.items())

    def plane_array(self, index: int = 0) -> Any:
        """Plane ``index`` as a ``(C, Y, X)`` array, not loaded: a numpy view or a dask array.

        This is what block-by-block prediction reads from.

        Parameters
        ----------
        index : int
            The plane, from 0 to ``n_planes - 1`` (z within each time point).

        Returns
        -------
        array_like
            ``(C, Y, X)``, one channel for an image without a C axis.
        """
        pos = self.plane_position(index)
        key = tuple(int(pos[a]) if a in pos else slice(None) for a in self.axes)
        plane = self.data[key]
        return plane if "C" in self.axes else plane[None]

    def plane(self, index: int = 0) -> np.ndarray:
        """Plane ``index`` as a ``(C, Y, X)`` numpy array (loaded; lazy pixels are read in this
        process, :func:`~napari_mutualseg.preprocess.read_here`).

        Parameters
        ----------
        index : int
            The plane, from 0 to ``n_planes - 1`` (z within each time point).

        Returns
        -------
        numpy.ndarray
            ``(C, Y, X)``, one channel for an image without a C axis.
        """
        return read_here(self.plane_array(index))

    def channel_ranges(self, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
        """Low and high intensity of every channel over the whole image, for normalisation.

        One pair per channel for all planes together, so that the empty planes at the top
        and bottom of a z-stack are not stretched into noise. Read from at most
        :data:`SAMPLE_PLANES` planes and, on large images, a strided sample of them
        (:func:`napari_mutualseg.preprocess.channel_ranges`); lazy data are never loaded
        whole.

        Parameters
        ----------
        percentiles : tuple of float
            The low and high percentiles, from 0 to 100.

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
            [read_here(self.plane_array(int(j))[:, ::step, ::step]) for j in picks], axis=1
        )
        names = self.channel_names or self.source_channels
        return channel_ranges(
            sample, percentiles, self.name, channels=None if names is None else map(str, names)
        )

    def describe(self, *, notes: bool = False) -> str:
        """One line for people: name, plane size, channels, planes, axes, pixel size and
        frame interval.

        Parameters
        ----------
        notes : bool
            Add where the axes came from and what was assumed or chosen.

        Returns
        -------
        str
            For example ``"cells.tif: 520 x 696 px, 2 channels (DAPI, GFP), axes CYX"``.
        """
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
        if self.frame_interval is not None:
            parts.append(f"frame interval {self.frame_interval:g} s")
        said = f" ({'; '.join(self.notes)})" if notes and self.notes else ""
        return ", ".join(parts) + said

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
        from .network_input import select_channels

        return select_channels(self, channels, rgb)


# ---------------------------------------------------------------------- arrays


def rgb_like(data: Any) -> bool:
    """The one layout taken without axes: 8-bit pixels, (H, W, 3|4)."""
    return looks_rgb(data) and np.dtype(data.dtype) == np.uint8


def _default_axes(data: Any, name: str) -> tuple[str, tuple[str, ...]]:
    """The axes of an array given without them, and a note when they were assumed.

    A 2D array is one plane and 8-bit ``(H, W, 3|4)`` pixels are an RGB(A) picture; any other
    array is refused, as its axes would be a guess.
    """
    shape = tuple(data.shape)
    if len(shape) == 2:
        return "YX", ()
    if rgb_like(data):
        note = (
            f"{name}: shape {shape} of 8-bit pixels taken as one RGB"
            f"{'A' if shape[-1] == 4 else ''} picture (give axes to say otherwise)"
        )
        # stacklevel: the warning points at the caller of AxisImage.from_array
        warnings.warn(note, UserWarning, stacklevel=3)
        return "YXC", (note,)
    raise ValueError(f"{name} has shape {shape} and no axes were given: {ASK_AXES}.")


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


# ---------------------------------------------------------------------- network input


def _check_last_axis(array: Any, name: str) -> None:
    """Refuse a 3D array whose last axis is too short to be x: channels (or planes) last.

    Read as a stack or as channels first, its planes would be a few pixels wide, which no
    network segments; what that axis is cannot be told, so the caller says.
    """
    shape = tuple(array.shape)
    if shape[-1] < MIN_EDGE <= min(shape[:2]):
        raise ValueError(
            f"{name} has shape {shape}: its last axis ({shape[-1]}) is too short to be x, so it "
            f"holds channels or planes. Say which with axes='YXC' (channels, e.g. "
            "AxisImage.from_array(image, 'YXC')) or axes='YXZ' (planes)."
        )


def _unloaded(data: Any) -> Any:
    """``data`` as it is when it is an array (numpy, dask, zarr: a lazy one stays unread, to
    be read a plane at a time in this process), else as a numpy array (a list of lists)."""
    return data if hasattr(data, "shape") and hasattr(data, "dtype") else np.asarray(data)


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

    Returns
    -------
    AxisImage

    Raises
    ------
    ValueError
        When the axes of ``data`` cannot be told without ``axes``: more than three, RGB
        shapes of other than 8-bit pixels, or a last axis too short to be x (channels or
        planes last).
    """
    if isinstance(data, AxisImage):
        return data
    if axes is not None:
        return AxisImage.from_array(data, axes, name=name)
    array = _unloaded(data)
    if array.ndim == 2:
        return AxisImage.from_array(array, "YX", name=name)
    if array.ndim == 3 and looks_rgb(array):
        if not rgb_like(array):
            raise ValueError(
                f"{name} looks like an RGB(A) image (shape {tuple(array.shape)}) but its pixels "
                f"are {array.dtype}, not 8-bit: say so with axes='YXC' (for training, "
                "AxisImage.from_array(image, 'YXC')) to use its colours as channels, or pass "
                "one channel alone (e.g. image[..., 0])."
            )
        return AxisImage.from_array(array, "YXC", rgb=True, name=name)
    if array.ndim == 3:
        _check_last_axis(array, name)
        return AxisImage.from_array(array, "CYX", name=name)
    raise ValueError(f"{name} has shape {tuple(array.shape)}: {ASK_AXES}.")


def as_images(images: Any, name: str = "images") -> list[AxisImage]:
    """Training input as a list of images, each with one or more planes.

    Parameters
    ----------
    images : array_like, AxisImage or sequence of them
        See :func:`napari_mutualseg.network_input.network_planes`.
    name : str
        How the images are called in messages.

    Returns
    -------
    list of AxisImage
        One per image; a bare 3D array is one stack of planes (``ZYX``).

    Raises
    ------
    ValueError
        When there is no image, or the axes of one cannot be told (see :func:`as_image`).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is empty: give at least one image.")
        return [as_image(x, name=f"{name}[{i}]") for i, x in enumerate(images)]
    if not isinstance(images, AxisImage):
        array = _unloaded(images)
        if array.ndim == 3 and not looks_rgb(array):
            _check_last_axis(array, name)
            # a bare 3D array is a stack of planes, each trained with its own boxes
            return [AxisImage.from_array(array, "ZYX", name=name)]
    return [as_image(images, name=name)]
