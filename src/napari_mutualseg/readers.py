"""Reading image files with their axes and metadata.

One reader per kind of file: TIFF (ImageJ and OME metadata) through tifffile, PNG, JPEG and
other pictures through scikit-image, OME-Zarr through zarr, and CZI, ND2, LIF and more through
the optional ``bioio`` package. Each gives the stored array, its axes ('?' where the file does
not say), channel names, pixel size and a time series' frame interval (in seconds, as the
step of ``T``); :func:`read_axis_image` makes an
:class:`~napari_mutualseg.images.AxisImage` of them, or of the axes the caller gives. Large
TIFFs and every zarr store are opened lazily, a chunk at a time.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .files import format_size
from .images import ASK_AXES, AXES, PLANE_AXES, AxisImage, parse_axes, rgb_like
from .io import BIOIO_SUFFIXES, OTHER_IMAGE_SUFFIXES, TIFF_SUFFIXES, quiet_log
from .ome import in_one_unit, in_seconds, unit_symbol
from .preprocess import read_here

__all__ = ["LAZY_BYTES", "AxesUnknownError", "is_zarr", "read_axis_image", "read_pixels"]

#: Files up to this size are read into memory; larger ones are opened lazily (chunk by chunk).
LAZY_BYTES = 256 * 2**20


class AxesUnknownError(ValueError):
    """The file was read, but it does not say what its axes are and none were given.

    Attributes
    ----------
    data : array-like
        The pixels as stored (lazy for a large file), for a caller that shows them as they are.
    """

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.data = data


def read_axis_image(
    path: str | os.PathLike, axes: str | None = None, *, lazy: bool | None = None
) -> AxisImage:
    """An image file (or OME-Zarr folder) with the meaning of its axes.

    What :meth:`AxisImage.from_file <napari_mutualseg.images.AxisImage.from_file>` does: see
    there for the formats read and what is taken from their metadata.

    Parameters
    ----------
    path : str or path-like
        The image file or OME-Zarr folder.
    axes : str, optional
        One letter per axis of the stored array (overrides the file's metadata).
    lazy : bool, optional
        Open a TIFF lazily (True) or read it whole (False); by default by its size.

    Returns
    -------
    AxisImage
        The pixels, their axes in ``TCZYX`` order without single time points or z positions,
        and notes of where the axes came from.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    AxesUnknownError
        When the file's axes are unknown and not given (a ``ValueError``).
    ValueError
        When the file cannot be read.
    """
    path = Path(path)
    raw = _open(path, lazy)
    data, letters = raw.data, raw.axes
    notes = list(raw.notes)
    # one level of an OME-Zarr image was called "0" or "1" in every message
    name = f"{path.parent.name}/{path.name}" if is_zarr(path.parent) else path.name
    if axes is not None:
        given = parse_axes(axes, None, name)
        if len(given) != data.ndim:
            data, letters = _drop_single(data, letters, "?")
        axes = parse_axes(given, data.ndim, name)
        if "?" in letters:
            notes.append(f"axes {axes} as given, where the file says none")
        elif axes != letters:
            # the file's reading of its axes is overruled: its note would say the opposite
            notes = [n for n in notes if not n.startswith(f"axes {letters} from ")]
            notes.append(f"axes {axes} as given, not {letters} as the file says")
        same_c = "C" in axes and "C" in letters and axes.index("C") == letters.index("C")
        image = AxisImage.from_array(
            data,
            axes,
            channel_names=raw.channel_names if same_c else None,
            pixel_size=raw.pixel_size,
            unit=raw.unit,
            rgb=raw.rgb if axes == letters else None,
            name=name,
        )
    else:
        data, letters = _drop_single(data, letters, "?")
        if "?" in letters:
            if not (letters[:-1] == "YX" and rgb_like(data)):
                raise AxesUnknownError(
                    f"{name} holds an array of shape {tuple(data.shape)} whose axes the "
                    f"file does not say ({_named(letters)}): {ASK_AXES}; "
                    f"{data.ndim} letters for this file.",
                    raw.data,
                )
            letters = letters[:-1] + "C"
            note = "8-bit pixels with 3 or 4 values last taken as one RGB(A) picture"
            # stacklevel: the warning points at the caller of AxisImage.from_file
            warnings.warn(f"{name}: {note}", UserWarning, stacklevel=3)
            notes.append(note)
            raw = replace(raw, rgb=True)
        image = AxisImage.from_array(
            data,
            letters,
            channel_names=raw.channel_names,
            pixel_size=raw.pixel_size,
            unit=raw.unit,
            rgb=raw.rgb,
            name=name,
        )
    data, letters = _drop_single(image.data, image.axes, PLANE_AXES)
    if "T" not in letters:
        # a frame interval is nothing to an image without time (its step is dropped with T)
        notes = [n for n in notes if not n.startswith(_INTERVAL_NOTE)]
    return replace(image, data=data, axes=letters, notes=tuple(notes) + image.notes)


def _named(letters: str) -> str:
    """What a file names of its axes, for people: the reader's codes for the rest ('Q',
    'I', '?') mean nothing to them."""
    known = [a for a in letters if a != "?"]
    if not known:
        return "it names none"
    return f"it names only {' and '.join(known) if len(known) < 3 else ', '.join(known)}"


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an image file as stored, loaded (:func:`napari_mutualseg.io.read_image`)."""
    return read_here(_open(Path(path)).data)


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr store (a folder named ``.zarr`` or holding zarr metadata)."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup", ".zarray"))
    )


class _CodecMissing(ValueError):
    """A TIFF's compression needs a package that is not installed (the message says which)."""


class _Damaged(ValueError):
    """A TIFF holds less than its header declares, or no image at all (the message says so)."""


@dataclass(frozen=True)
class _Raw:
    """What a reader found: the stored array, its axes ('?' where unknown) and metadata."""

    data: Any
    axes: str
    channel_names: tuple[str, ...] | None = None
    pixel_size: dict[str, float] = field(default_factory=dict)  # T in seconds
    unit: str | None = None
    rgb: bool = False
    notes: tuple[str, ...] = ()


def _drop_single(data: Any, axes: str, letters: str) -> tuple[Any, str]:
    """``data`` and its ``axes`` without the axes of length 1 named by one of ``letters``."""
    drop = tuple(k for k, a in enumerate(axes) if a in letters and data.shape[k] == 1)
    if not drop:
        return data, axes
    return data.squeeze(axis=drop), "".join(a for k, a in enumerate(axes) if k not in drop)


def _open(path: Path, lazy: bool | None = None) -> _Raw:
    """Read ``path`` with the reader its type needs; the one place that picks a reader."""
    if not path.exists():
        raise FileNotFoundError(f"Image file not found: {path}")
    if is_zarr(path):
        return _read_zarr(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file.")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES:
        return _read_bioio(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file (0 bytes), not an image.")
    try:
        with quiet_log("tifffile"):
            raw = _read_tiff(path, lazy) if suffix in TIFF_SUFFIXES else _read_picture(path)
    except (_CodecMissing, _Damaged):
        raise  # says what to install, or what is wrong with the file
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"Cannot read {path} as an image ({type(err).__name__}: {reason})."
        ) from err
    if 0 in raw.data.shape:
        raise ValueError(f"{path} holds no pixels (shape {tuple(raw.data.shape)}).")
    return _sizes_that_are_sizes(raw)


def _sizes_that_are_sizes(raw: _Raw) -> _Raw:
    """``raw`` without the step sizes that are none (0, negative, NaN: what some software
    writes when it does not know), with a note: they would stop every use of the pixel size."""
    bad = {a: v for a, v in raw.pixel_size.items() if not (np.isfinite(v) and v > 0)}
    if not bad:
        return raw
    sizes = {a: v for a, v in raw.pixel_size.items() if a not in bad}
    said = ", ".join(f"{a} {v:g}" for a, v in bad.items())
    # the note reaches the command line, the napari panel and scripts: each setting named
    note = (
        f"the file's pixel size {said} is no size and is left out (set one with --pixel-size "
        "on the command line or pixel_size= in Python)"
    )
    unit = raw.unit if any(a in sizes for a in "ZYX") else None
    return replace(raw, pixel_size=sizes, unit=unit, notes=(*raw.notes, note))


def _check_tiff_data(path: Path, page: Any) -> None:
    """Refuse, before reading, an uncompressed TIFF whose strips hold fewer bytes than its
    header declares (a damaged header that would have a huge image allocated)."""
    try:
        shape, dtype = tuple(page.shape), page.dtype
        stored = sum(page.databytecounts)
        needed = int(np.prod(shape, dtype=np.float64)) * page.bitspersample // 8
        raw = page.compression == 1
    except Exception:
        return  # unreadable: reading it says why
    if raw and stored < needed:
        raise _Damaged(
            f"{path} declares a {'x'.join(map(str, shape))} {dtype} image ({format_size(needed)}) "
            f"but holds only {format_size(stored)} of pixel data: the file is damaged or "
            "truncated."
        )


#: Why a TIFF may be cut short, and what to do, for the messages of :func:`_check_complete`.
_CUT_SHORT = "a copy or transfer that stopped, or a file still being written: copy it again"


def _check_complete(path: Path, tif: Any, series: Any) -> None:
    """Refuse a TIFF cut short: its pixel data reach past its end, or its ImageJ metadata
    count more planes than it holds (tifffile then reads its first plane alone, and a
    z-stack would be segmented as one plane without a word)."""
    try:
        page = series.pages[0]
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)]
        if series.dataoffset is not None:  # contiguous: every plane's data in one run
            ends.append(series.dataoffset + series.nbytes)
        plane = page.imagelength * page.imagewidth * page.samplesperpixel
        held = int(np.prod(series.shape)) // max(1, plane)
        declared = int((tif.imagej_metadata or {}).get("images", 1)) if tif.is_imagej else 1
        size = tif.filehandle.size
    except Exception:
        return  # unreadable: reading it says why
    if max(ends, default=0) > size:
        raise _Damaged(
            f"Cannot read {path}: it is cut short or damaged, holding {format_size(size)} where "
            f"its pixel data reach {format_size(max(ends))} ({_CUT_SHORT})."
        )
    if declared > held:
        raise _Damaged(
            f"Cannot read {path}: it is cut short, its ImageJ metadata counting {declared} "
            f"planes where it holds {held} ({_CUT_SHORT})."
        )


#: How each face takes a pixel size that a file lacks or gets wrong.
_GIVE_PIXEL_SIZE = (
    "give the pixel size with --pixel-size on the command line or pixel_size= in Python"
)


def _lengths(
    sizes: Mapping[str, tuple[Any, Any]],
) -> tuple[dict[str, float], str | None, tuple[str, ...]]:
    """Step sizes by axis as the file gives them, each with the unit it names (None: none),
    in one unit (:func:`~napari_mutualseg.ome.in_one_unit`), and notes of those left out.

    A size that is no number (``"0,65"``), in pixels, or in a unit that is no length this
    package knows, is left out and said: taken in the unit of the other axes, it would be wrong
    by orders of magnitude, and it is no reason not to open the image. So is a step without a
    unit beside axes that name theirs (an OME-Zarr z step of 2 beside y and x in µm): its unit
    would be a guess. A unit-less step of 1 is no size (:func:`~napari_mutualseg.ome.in_one_unit`).
    """
    known, unknown = {}, {}
    for axis, (value, unit) in sizes.items():
        try:
            number, symbol = float(value), unit_symbol(unit)
        except ValueError:
            number = symbol = None
        # a unit named but no length: pixels (unit_symbol's None)
        if number is None or (symbol is None and str(unit or "").strip()):
            shown = f"{value:g}" if isinstance(value, float | int) else value
            unknown[axis] = f"{axis} {shown} {unit or ''}".rstrip()
        else:
            known[axis] = (number, symbol)
    named = [a for a in "XYZ" if a in known and known[a][1]]
    unitless = [a for a, (number, symbol) in known.items() if named and not symbol and number != 1]
    notes = []
    if unitless:
        steps = ", ".join(f"{a} {known.pop(a)[0]:g}" for a in unitless)
        notes.append(
            f"the file's pixel size {steps} has no unit where {' and '.join(named[::-1])} "
            f"{'has' if len(named) == 1 else 'have'} one, and is left out rather than taken in "
            f"{known[named[0]][1]}: {_GIVE_PIXEL_SIZE}"
        )
    scale, unit = in_one_unit(known)
    if unknown:
        notes.append(
            f"the file's pixel size {', '.join(unknown.values())} is no length this package "
            f"can read and is left out: {_GIVE_PIXEL_SIZE}"
        )
    return scale, unit, tuple(notes)


#: How a note on a frame interval left out begins.
_INTERVAL_NOTE = "the file's frame interval"


def _frame_interval(value: Any, unit: Any) -> tuple[dict[str, float], tuple[str, ...]]:
    """A time series' frame interval as the file states it (a value and its time unit), as
    ``{"T": seconds}``; none, and a note, for one that is no time step (0, negative, no number,
    a unit that is no time): tables then give frames only, which is no reason not to open the
    image."""
    try:
        seconds = in_seconds(value, unit)
    except (TypeError, ValueError):
        seconds = math.nan
    if math.isfinite(seconds) and seconds > 0:
        return {"T": seconds}, ()
    shown = f"{value:g}" if isinstance(value, float | int) else str(value)
    note = (
        f"{_INTERVAL_NOTE}, {shown} {unit or '(no unit)'}, is no time step and is "
        "left out: cell tables give each cell's frame (t) but no time"
    )
    return {}, (note,)


def _tiff_interval(tif: Any) -> tuple[dict[str, float], tuple[str, ...]]:
    """The frame interval of an OME-TIFF (``Pixels/@TimeIncrement`` in
    ``TimeIncrementUnit``, OME's default the second, else its planes' ``DeltaT``) or an
    ImageJ TIFF (``finterval`` in ``tunit``, ImageJ's default the second), and notes (see
    :func:`_frame_interval`)."""
    if tif.is_ome:
        pixels = _ome_pixels(tif.ome_metadata)
        if pixels is None:
            return {}, ()
        if pixels.get("TimeIncrement") is None:
            return _delta_t_interval(pixels)
        return _frame_interval(pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s"))
    meta = tif.imagej_metadata or {}
    if meta.get("finterval") is None:
        return {}, ()
    return _frame_interval(meta["finterval"], meta.get("tunit", "sec"))


#: Most a step between two frames' DeltaT may differ from their mean step, as a share of it,
#: for the mean to be the frame interval: a camera's timing varies by a few percent, while a
#: pause in an acquisition (or a second phase at another rate) is a step many times the others.
_DELTA_T_SPREAD = 0.2


def _delta_t_interval(pixels: ET.Element) -> tuple[dict[str, float], tuple[str, ...]]:
    """The frame interval from the ``DeltaT`` of OME planes (what Bio-Formats, Micro-Manager
    and microscope software write where they give no ``TimeIncrement``): the mean step between
    the first planes (z 0, channel 0) of the time points; none, and a note, when the steps are
    too uneven for one interval to give each frame's time."""
    times = {}
    for plane in pixels:
        if not plane.tag.endswith("}Plane") or plane.get("DeltaT") is None:
            continue
        if plane.get("TheZ", "0") != "0" or plane.get("TheC", "0") != "0":
            continue
        with contextlib.suppress(ValueError):
            delta = in_seconds(plane.get("DeltaT"), plane.get("DeltaTUnit", "s"))
            times[int(plane.get("TheT", "0"))] = delta
    if len(times) < 2:
        return {}, ()
    frames = sorted(times)
    at = np.asarray([times[t] for t in frames])
    steps = np.diff(at) / np.diff(frames)
    mean = (at[-1] - at[0]) / (frames[-1] - frames[0])
    if mean > 0 and np.abs(steps - mean).max() <= _DELTA_T_SPREAD * mean:
        return _frame_interval(float(f"{mean:.12g}"), "s")
    note = (
        f"{_INTERVAL_NOTE} varies (its planes' DeltaT are {steps.min():g} to {steps.max():g} s "
        "apart) and is left out: cell tables give each cell's frame (t) but no time"
    )
    return {}, (note,)


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


def _guessed_rgb(tif: Any, page: Any, tifffile: Any) -> bool:
    """Whether a TIFF's RGB tag may be tifffile's guess rather than the writer's word.

    ``tifffile.imwrite(path, array)`` without ``photometric`` tags 3 or 4 planes of any array
    (a 3-plane z-stack, a 4-channel fluorescence image) as RGB in separate planes, and 3 or 4
    values last of other than 8 or 16 bits as RGB: what its deprecation warning says it will
    stop doing. Such a file, tifffile-shaped without axes, is the same byte for byte as one
    written with ``photometric="rgb"``, so its samples are no known colours.
    """
    shaped = tif.is_shaped and not (tif.shaped_metadata or [{}])[0].get("axes")
    separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    return shaped and (separate or page.dtype.char not in "BH")


def _read_tiff(path: Path, lazy: bool | None = None) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _Damaged(
                f"{path} holds no image: it is a TIFF file without pages (saved empty, or cut "
                "short by a copy that stopped): save or copy the image again."
            )
        series = tif.series[0]
        others = len(tif.series) - 1
        page = series.pages[0]
        # in the one opening of the file: a folder of thousands of TIFFs on a network share
        # pays for each
        _check_tiff_data(path, page)
        _check_complete(path, tif, series)
        _check_codec(path, page, tifffile)
        # the photometric tag says that the samples are colours, whatever their bit depth
        # (16-bit RGB from brightfield and slide cameras), unless it is tifffile's guess
        rgb = (
            "S" in series.axes
            and int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
            and series.shape[series.axes.index("S")] in (3, 4)
            and not _guessed_rgb(tif, page, tifffile)
        )
        letters = _tiff_letters(series, rgb)
        names, scale, unit, source = None, {}, None, None
        size_notes: tuple[str, ...] = ()
        if tif.is_ome:
            names, scale, unit, size_notes = _ome_xml(tif.ome_metadata)
            source = "OME metadata"
            if names and len(names) != (series.shape[letters.index("C")] if "C" in letters else 1):
                # one OME channel of RGB samples (brightfield, H&E) names no colour
                names = None
        elif tif.is_imagej:
            scale, unit, size_notes = _imagej_scale(tif.imagej_metadata or {}, page, tifffile)
            source = "ImageJ metadata"
            channels = series.shape[letters.index("C")] if "C" in letters else 0
            names = _imagej_channel_names(tif.imagej_metadata or {}, channels)
        elif tif.is_shaped and (tif.shaped_metadata or [{}])[0].get("axes"):
            source = "file's metadata"
        elif "S" in series.axes and rgb:
            source = "RGB photometric tag"
        if not scale and not size_notes:
            scale, unit, size_notes = _resolution_scale(page, tifffile) or ({}, unit, ())
        # whatever the axes: Fiji keeps many a movie as a stack of slices, named T by --axes
        interval, time_notes = _tiff_interval(tif)
        scale, size_notes = {**scale, **interval}, size_notes + time_notes
        big = series.size * series.dtype.itemsize > LAZY_BYTES if lazy is None else lazy
        if not big:
            data = series.asarray()
    if big:
        data = _lazy_tiff(path, series.axes)
    notes = (f"axes {letters} from the {source}",) if source and "?" not in letters else ()
    notes += size_notes
    if others:
        # several images in one file (positions, wells, a slide's label and overview): only
        # the first is read, which is said, never silent
        note = (
            f"the file holds {others + 1} images; the first "
            f"({series.axes} {'x'.join(map(str, series.shape))}) is read: save each image to "
            "a file of its own to segment the others"
        )
        warnings.warn(f"{path.name}: {note}", UserWarning, stacklevel=4)
        notes += (note,)
    return _Raw(data, letters, names, scale, unit, rgb, notes)


def _check_codec(path: Path, page: Any, tifffile: Any) -> None:
    """Refuse, before any pixel is read (a lazy read would fail later, in the middle of the
    work), a TIFF compressed with a codec that tifffile takes from ``imagecodecs``."""
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        name = getattr(page.compression, "name", str(page.compression))
        raise _CodecMissing(
            f"{path.name} is {name}-compressed, which is read with the imagecodecs package: "
            "pip install imagecodecs (or save the image uncompressed or zlib-compressed)."
        ) from None


#: Rows and columns of a chunk of a lazy TIFF mapped from the file (:func:`_lazy_tiff`).
_MAPPED_CHUNK = 1024


def _lazy_tiff(path: Path, axes: str) -> Any:
    """A large TIFF as a dask array read chunk by chunk: its first series (the one whose
    metadata were read) at full resolution.

    Uncompressed pixels stored in one run (tifffile's and ImageJ's default, one strip per
    plane) are mapped from the file, in chunks of :data:`_MAPPED_CHUNK` rows and columns:
    tifffile's zarr store reads a strip whole, so a window of a 6000² plane read all of it.
    Compressed and tiled files are read through that store, a strip or tile at a time.
    ``axes`` are tifffile's letters of the series.
    """
    import dask.array as da
    import tifffile
    import zarr

    if "Y" in axes and "X" in axes:
        try:
            mapped = tifffile.memmap(path, series=0, level=0, mode="r")
        except (ValueError, OSError):  # compressed, planes apart, or a disk without mmap
            pass
        else:
            return _mapped_dask(mapped, axes)
    try:
        # level 0: the store of a pyramid (slide scans, SubIFDs) is otherwise a zarr group
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        return da.from_zarr(zarr.open(store, mode="r"))
    except Exception as err:  # the store needs a zarr that matches tifffile
        warnings.warn(
            f"{path.name} is read whole into memory: zarr {zarr.__version__} cannot open it "
            f"chunk by chunk ({type(err).__name__}: {err}).",
            UserWarning,
            stacklevel=3,
        )
        return tifffile.imread(path)


def _mapped_dask(mapped: np.memmap, axes: str) -> Any:
    """The pixels ``tifffile.memmap`` mapped as a dask array of chunks of
    :data:`_MAPPED_CHUNK` rows and columns, one plane and all of a pixel's samples each."""
    import dask.array as da

    after_x = axes.index("X") + 1
    chunks = tuple(
        _MAPPED_CHUNK if a in "YX" else (n if k >= after_x else 1)
        for k, (a, n) in enumerate(zip(axes, mapped.shape, strict=True))
    )
    run = _MappedRun(str(mapped.filename), mapped.dtype, mapped.offset, mapped.shape)
    meta = np.empty((0,) * run.ndim, run.dtype)
    # a new name at each opening: one made of the path would have napari's dask cache give
    # the pixels of a file since replaced
    return da.from_array(run, chunks=chunks, meta=meta, name=False)


@dataclass(frozen=True)
class _MappedRun:
    """Pixels stored in one uncompressed run of a file (where ``tifffile.memmap`` found
    them), each window read by mapping the file anew: a copy in this machine's byte order
    (ImageJ writes big-endian), that keeps no file open and sends a dask worker where the
    pixels lie, not the pixels. No ``copy`` method: ``dask.array.from_array`` copies an array
    that has one, which would read a mapped file whole."""

    path: str
    stored: np.dtype
    offset: int
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.stored.newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        mapped = np.memmap(self.path, self.stored, "r", self.offset, self.shape)
        return np.array(mapped[key], dtype=self.dtype)


def _ome_xml(
    xml: str | None,
) -> tuple[tuple[str, ...] | None, dict[str, float], str | None, tuple[str, ...]]:
    """Channel names, pixel size, unit and notes (see :func:`_lengths`) from OME-XML."""
    pixels = _ome_pixels(xml)
    if pixels is None:
        return None, {}, None, ()
    sizes = {}
    for letter in "ZYX":
        value = pixels.get(f"PhysicalSize{letter}")
        if value is not None:
            # OME's default unit is the micrometre; each axis may have its own
            sizes[letter] = (value, pixels.get(f"PhysicalSize{letter}Unit", "µm"))
    scale, unit, notes = _lengths(sizes)
    channels = [e for e in pixels if e.tag.endswith("}Channel")]
    names = tuple(e.get("Name", "") for e in channels)
    return (names if names and all(names) else None), scale, unit, notes


def _ome_pixels(xml: str | None) -> ET.Element | None:
    """The ``Pixels`` element of the first image of OME-XML, if any."""
    if not xml:
        return None
    return next((e for e in ET.fromstring(xml).iter() if e.tag.endswith("}Pixels")), None)


def _imagej_channel_names(meta: Mapping[str, Any], channels: int) -> tuple[str, ...] | None:
    """Channel names from ImageJ slice labels, when they name channels rather than planes.

    Fiji stores a named channel as the label of each of its planes, in CZT order (channel
    fastest); labels that differ within a channel describe planes and name nothing.
    """
    labels = meta.get("Labels")
    if channels < 2 or not isinstance(labels, list | tuple) or len(labels) % channels:
        return None
    labels = [str(label).strip() for label in labels]
    names = tuple(labels[:channels])
    consistent = all(label == names[i % channels] for i, label in enumerate(labels))
    if not consistent or not all(names) or len(set(names)) != channels:
        return None
    return names


def _imagej_scale(
    meta: Mapping[str, Any], page: Any, tifffile: Any
) -> tuple[dict[str, float], str | None, tuple[str, ...]]:
    """Pixel size from ImageJ's resolution tags, ``unit`` and ``spacing`` (when a unit is
    set; ``yunit`` and ``zunit`` where y or z have another), and notes (see :func:`_lengths`)."""
    unit = meta.get("unit")
    if str(unit or "").strip().lower() in ("inch", "inches", "in"):
        # ImageJ's unit for a file's dots per inch (72 for a screenshot): read as such
        scale, _, notes = _resolution_scale(page, tifffile, inches=True) or ({}, None, ())
        if scale and meta.get("spacing"):
            scale["Z"] = float(f"{float(meta['spacing']) * 25400:.6g}")
        return scale, "µm" if scale else None, notes
    with contextlib.suppress(ValueError):  # a unit that is no length: _lengths says so
        if unit_symbol(unit) is None:
            return {}, None, ()
    units = {"X": unit, "Y": meta.get("yunit", unit), "Z": meta.get("zunit", unit)}
    sizes = {}
    for letter, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in page.tags:
            num, den = page.tags[tag].value
            if num:
                sizes[letter] = (den / num, units[letter])
    if meta.get("spacing"):
        sizes["Z"] = (meta["spacing"], units["Z"])
    return _lengths(sizes)


#: Resolutions (dots per inch) that software writes when it knows no pixel size: screen
#: settings (72, 96) and print or scan settings (150 to 1200). No microscope's pixel is one of
#: these round sizes (352.8, 264.6, ... 21.2 µm), while screenshots and exports from drawing
#: and office software carry them everywhere. A flatbed scan at 600 dpi is a true size, but it
#: cannot be told from the print setting: it is left out and the note says how to give it.
_DEFAULT_DPI = (72, 96, 150, 200, 300, 600, 1200)


def _resolution_scale(
    page: Any, tifffile: Any, inches: bool = False
) -> tuple[dict[str, float], str | None, tuple[str, ...]] | None:
    """Pixel size in µm, its unit and notes from TIFF resolution tags in centimetres or
    inches (``inches``: whatever the tags say); a screen or print default
    (:data:`_DEFAULT_DPI`) is no size, which a note says. None without a usable resolution."""
    centimetre = not inches and page.resolutionunit == tifffile.RESUNIT.CENTIMETER
    if not (centimetre or inches or page.resolutionunit == tifffile.RESUNIT.INCH):
        return None
    x_res, y_res = page.get_resolution()
    if not (x_res > 0 and y_res > 0):
        return None
    unit_um = 1e4 if centimetre else 25400.0
    for res in (x_res, y_res):
        dpi = res * 2.54 if centimetre else res
        # within 0.1%: 72 dpi converted from PNG's pixels per metre is 72.009
        default = next((d for d in _DEFAULT_DPI if abs(dpi - d) <= 1e-3 * d), None)
        if default is not None:
            said = f"{res:.4g} pixels per cm or {default} dpi" if centimetre else f"{default} dpi"
            note = f"the file's resolution, {said}, is a screen or print setting and no pixel size"
            return {}, None, (f"{note}: {_GIVE_PIXEL_SIZE}",)
    # to the 6 digits a TIFF rational keeps
    size = {"Y": float(f"{unit_um / y_res:.6g}"), "X": float(f"{unit_um / x_res:.6g}")}
    return size, "µm", ()


def _read_picture(path: Path) -> _Raw:
    import skimage.io

    data = np.asarray(skimage.io.imread(path))
    # A picture's last axis is its colours, and a leading one the frames of an animation.
    letters = {2: "YX", 3: "YXC", 4: "TYXC"}.get(data.ndim, "?" * data.ndim)
    notes: tuple[str, ...] = ()
    if letters.endswith("C") and data.shape[-1] == 2:
        # gray and alpha: transparency is no channel to learn from (as an RGBA's alpha)
        data, letters = data[..., 0], letters[:-1]
        notes = ("gray picture: its alpha (transparency) is left out",)
    rgb = "C" in letters and data.shape[-1] in (3, 4)
    return _Raw(data, letters, rgb=rgb, notes=notes)


def _read_zarr(path: Path, level: int = 0) -> _Raw:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise ValueError(f"Cannot read {path} as zarr ({type(err).__name__}: {err}).") from err
    if not hasattr(node, "attrs") or hasattr(node, "shape"):
        # one level of an OME-Zarr image (x.ome.zarr/0): its metadata are in the folder above
        of_image = _level_of(path)
        if of_image is not None:
            return _read_zarr(path.parent, of_image)
        data = da.from_zarr(node)
        return _Raw(data, "?" * data.ndim)
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales and ("plate" in ome or "well" in ome):
        raise ValueError(_collection_message(path, node, ome))
    if not multiscales:
        raise ValueError(
            f"{path.name} is a zarr group without OME-Zarr 'multiscales' metadata; give the "
            "path of the array inside it, with its axes (--axes on the command line or axes= "
            "in Python)."
        )
    ms = multiscales[0]
    names = [a if isinstance(a, str) else a.get("name", "") for a in ms.get("axes", [])]
    types = [None if isinstance(a, str) else a.get("type") for a in ms.get("axes", [])]
    letters = "".join(
        "C" if t == "channel" else (n.upper() if n.upper() in AXES else "?")
        for n, t in zip(names, types, strict=True)
    )
    dataset = ms["datasets"][level]
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
    pixel_size, unit, size_notes = {}, None, ()
    if scale is not None:
        units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
        units += [None] * (len(letters) - len(units))
        space = {
            a: (float(v), u) for a, v, u in zip(letters, scale, units, strict=True) if a in "ZYX"
        }
        pixel_size, unit, size_notes = _lengths(space)
        if "T" in letters:
            step, own = scale[letters.index("T")], units[letters.index("T")]
            # a scale of 1 without a unit is OME-Zarr's default: no interval stated
            if own or step != 1:
                interval, time_notes = _frame_interval(step, own)
                pixel_size.update(interval)
                size_notes += time_notes
    omero = ome.get("omero", attrs.get("omero", {})) or {}
    labels = tuple(str(c.get("label", "")) for c in omero.get("channels", []))
    channel_names = labels if labels and all(labels) and "C" in letters else None
    if channel_names and len(channel_names) != data.shape[letters.index("C")]:
        channel_names = None
    levels = len(ms["datasets"])
    notes = [f"axes {letters} from the OME-Zarr metadata", *size_notes]
    if level:
        notes.append(f"level {level} of {levels}, not the full resolution (level 0)")
    elif levels > 1:
        notes.append(f"full resolution, level 0 of {levels}")
    return _Raw(
        data,
        letters,
        channel_names,
        pixel_size,
        unit,
        False,
        tuple(notes),
    )


def _level_of(path: Path) -> int | None:
    """Which level of the OME-Zarr image in the folder above the array ``path`` is, if any."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path.parent), mode="r").attrs)
        datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
        return [str(d["path"]) for d in datasets].index(path.name)
    except Exception:  # no OME-Zarr image above: the array alone, its axes to be given
        return None


def _collection_message(path: Path, node: Any, ome: Mapping[str, Any]) -> str:
    """What to give instead of an OME-Zarr plate or well: the paths of its images."""
    if "plate" in ome:
        wells = [str(w.get("path", "")) for w in ome["plate"].get("wells", [])]
        kind, pattern = f"plate of {len(wells)} well(s)", "*/*/*"
    else:
        wells, kind, pattern = [""], "well", "*"
    fields = []
    for well in wells:
        try:
            attrs = dict(node[well].attrs) if well else dict(node.attrs)
        except Exception:  # a well listed but missing: the others are named
            continue
        images = attrs.get("ome", attrs).get("well", {}).get("images", [])
        fields += [path / well / str(i.get("path", "")) for i in images]
    example = f", e.g. {fields[0]}" if fields else ""
    return (
        f"{path.name} is an OME-Zarr {kind}, not one image: give its field images{example}, "
        f"or all of them as the pattern '{path / pattern}'."
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
        interval = _bioio_interval(image) if "T" in order else None
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
            data, order = data.squeeze(axis=c), order[:c] + order[c + 1 :]
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
    time_notes: tuple[str, ...] = ()
    if interval is not None:
        time, time_notes = _frame_interval(interval, "s")
        scale.update(time)
    channel_names = (
        names
        if names and "C" in letters and len(names) == data.shape[letters.index("C")]
        else None
    )
    return _Raw(
        data,
        letters,
        channel_names,
        scale,
        "µm" if scale else None,
        rgb,
        (f"axes {letters} from bioio", *time_notes),
    )


def _bioio_interval(image: Any) -> float | None:
    """The frame interval in seconds that bioio reads from the file, where it gives one as a
    duration (``BioImage.time_interval``, a ``timedelta``): a bare number names no unit."""
    try:
        interval = image.time_interval
        return float(interval.total_seconds()) if interval is not None else None
    except Exception:  # an older bioio, or a reader that finds none: no interval
        return None


# ---------------------------------------------------------------------- network input
