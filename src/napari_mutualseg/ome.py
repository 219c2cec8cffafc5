"""Physical pixel size and OME-Zarr label output.

The labels of a large image are written a chunk at a time (:func:`labels_zarr`), so that they
are never whole in memory. The pixel size, and a time series' frame interval, travel from the
input (read with the image, :class:`napari_mutualseg.images.AxisImage`) to every output
(:meth:`PixelSize.of`): OME-Zarr scale, and OME-TIFF metadata plus resolution tags
(``io.write_labels``).

OME-Zarr output follows OME-NGFF 0.4 (zarr format 2, ``/`` chunk separator, the version the
most viewers read): a multiscale group marked as a label image (``image-label``), the labels
in ``0`` and nearest-neighbour levels ``1``, ``2``, ... each half the size of the one above,
down to one chunk.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import ResultExistsError, remove_stale_temps, temp_path

__all__ = [
    "NGFF_VERSION",
    "PixelSize",
    "check_writable_zarr",
    "convert_length",
    "in_one_unit",
    "in_seconds",
    "labels_zarr",
    "unit_symbol",
]

#: The OME-NGFF version written.
NGFF_VERSION = "0.4"

#: Edge of the chunks (and of the smallest pyramid level) of OME-Zarr labels.
ZARR_CHUNK = 1024

# length units: the OME-NGFF (UDUNITS-2) name, its OME-XML symbol and its size in metres
_UNITS = {
    "picometer": ("pm", 1e-12),
    "angstrom": ("Å", 1e-10),  # electron microscopy's unit
    "nanometer": ("nm", 1e-9),
    "micrometer": ("µm", 1e-6),
    "millimeter": ("mm", 1e-3),
    "centimeter": ("cm", 1e-2),
    "meter": ("m", 1.0),
}
_ALIASES = {
    **{name: name for name in _UNITS},
    **{name + "s": name for name in _UNITS},
    **{symbol: name for name, (symbol, _) in _UNITS.items()},
    "um": "micrometer",
    "μm": "micrometer",  # Greek mu, as some files spell it
    "micron": "micrometer",
    "microns": "micrometer",
    "\\u00b5m": "micrometer",  # ImageJ's escaped spelling
    "\u212b": "angstrom",  # the Angstrom sign, which lower() turns into another letter
}


# time units: every spelling of OME-XML (UnitsTime), OME-NGFF (UDUNITS-2) and ImageJ, in seconds
_SECONDS = {
    **dict.fromkeys(("ps", "picosecond", "picoseconds"), 1e-12),
    **dict.fromkeys(("ns", "nanosecond", "nanoseconds"), 1e-9),
    **dict.fromkeys(("µs", "μs", "us", "\\u00b5s", "microsecond", "microseconds"), 1e-6),
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}


def in_seconds(value: Any, unit: Any) -> float:
    """A time step given in ``unit`` (``"ms"``, ``"min"``, ``"minute"``, ImageJ's ``"sec"``...)
    in seconds: ``in_seconds(5, "min")`` is 300.

    Raises
    ------
    ValueError
        For a unit that is not a time, or a value that is not a number.
    """
    factor = _SECONDS.get(str(unit).strip()) or _SECONDS.get(str(unit).strip().lower())
    if factor is None:
        raise ValueError(
            f"Unknown time unit {unit!r}; use one of s, ms, µs, ns, min, h or d (or their "
            "names: second, minute, ...)."
        )
    # to 12 digits, so that 100 ms is 0.1 s and not 0.10000000000000001
    return float(f"{float(value) * factor:.12g}")


def unit_symbol(unit: Any) -> str | None:
    """A length unit as people write it (``"µm"``), from any spelling; None for none or pixels.

    Raises
    ------
    ValueError
        For a unit that is not a length.
    """
    text = str(unit or "").strip()
    if text.lower() in ("", "pixel", "pixels", "px"):
        return None
    return _UNITS[_unit_name(text)][0]


def convert_length(value: float, unit: Any, to: Any) -> float:
    """``value`` in ``unit`` expressed in ``to`` (both in any spelling :func:`unit_symbol`
    takes): ``convert_length(650, "nm", "µm")`` is 0.65.

    Raises
    ------
    ValueError
        For a unit that is not a length.
    """
    factor = _UNITS[_unit_name(str(unit))][1] / _UNITS[_unit_name(str(to))][1]
    # to 12 digits, so that 650 nm is 0.65 µm and not 0.6500000000000001
    return float(f"{float(value) * factor:.12g}")


def in_one_unit(
    sizes: Mapping[str, tuple[float, str | None]],
) -> tuple[dict[str, float], str | None]:
    """Step sizes by axis (``"Z"``, ``"Y"``, ``"X"``), each with its own unit, in one unit:
    that of x (else y, else z).

    OME metadata and napari layers give every axis its own unit (x and y in nm, z in µm is
    common); an image's pixel size has one. An axis without a unit keeps its value, but a
    step of 1 without a unit is left out: it is what OME-Zarr, which must give every axis a
    scale, holds where no size is known (a stack's z step, an image without a pixel size),
    not a size of 1 µm.
    """
    # a unit-less 1 is no size: not a z step of one unit of x and y, not a pixel size
    sizes = {a: (value, own) for a, (value, own) in sizes.items() if own or float(value) != 1}
    unit = next((sizes[a][1] for a in "XYZ" if a in sizes and sizes[a][1]), None)
    scale = {
        a: convert_length(value, own, unit) if own and unit else value
        for a, (value, own) in sizes.items()
    }
    return scale, unit


def _unit_name(unit: str) -> str:
    name = _ALIASES.get(str(unit).strip().lower()) or _ALIASES.get(str(unit).strip())
    if name is None:
        raise ValueError(
            f"Unknown length unit {unit!r}; use one of {', '.join(_UNITS)} (or nm, um, mm, cm, m)."
        )
    return name


@dataclass(frozen=True, repr=False)
class PixelSize:
    """Physical size of one pixel along y and x (and of a z step, and the time between the
    frames of a time series, when known).

    Attributes
    ----------
    y, x : float
        Pixel height and width in ``unit``.
    unit : str
        A length unit, stored by its OME-NGFF name (``"micrometer"``); ``"um"``, ``"µm"``,
        ``"micron"``, ``"nm"`` and the like are accepted.
    z : float, optional
        The distance between the planes of a z-stack, in ``unit``.
    t : float, optional
        The frame interval of a time series: the time from one frame to the next, in seconds.
    """

    y: float
    x: float
    unit: str = "micrometer"
    z: float | None = None
    t: float | None = None

    def __post_init__(self) -> None:
        for axis in ("y", "x", "z", "t"):
            if axis in ("z", "t") and getattr(self, axis) is None:
                continue
            value = float(getattr(self, axis))
            if not (math.isfinite(value) and value > 0):
                what = "The frame interval" if axis == "t" else f"Pixel size along {axis}"
                raise ValueError(f"{what} must be positive, got {value}.")
            object.__setattr__(self, axis, value)
        object.__setattr__(self, "unit", _unit_name(self.unit))

    def __repr__(self) -> str:
        # without a z step or frame interval as before it had them: batch records compare
        # this text
        z = f", z={self.z!r}" if self.z is not None else ""
        t = f", t={self.t!r}" if self.t is not None else ""
        return f"PixelSize(y={self.y!r}, x={self.x!r}, unit={self.unit!r}{z}{t})"

    @property
    def symbol(self) -> str:
        """The unit as OME-XML writes it (``"µm"``)."""
        return _UNITS[self.unit][0]

    def per_centimeter(self) -> tuple[float, float]:
        """Pixels per centimetre along x and y, as TIFF resolution tags store them."""
        metres = _UNITS[self.unit][1]
        return 0.01 / (self.x * metres), 0.01 / (self.y * metres)

    @classmethod
    def of(cls, image: Any) -> PixelSize | None:
        """The pixel size an :class:`~napari_mutualseg.images.AxisImage` knows (its z step
        and frame interval too, when it has them), else None."""
        size = image.pixel_size
        if "Y" not in size or "X" not in size or not image.unit:
            return None
        return cls(size["Y"], size["X"], image.unit, size.get("Z"), size.get("T"))

    @classmethod
    def parse(cls, text: str) -> PixelSize:
        """A pixel size from text: ``"0.65"`` (square, micrometres), ``"0.5,0.65"`` (y, x),
        ``"2,0.65,0.65"`` (the z step of a stack, y, x), optionally followed by a unit
        (``"650 nm"``, ``"0.5,0.65um"``).

        Raises
        ------
        ValueError
            When the text is not one to three positive numbers and an optional unit.
        """
        number = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
        more = rf"(?:,\s*{number})?"
        match = re.fullmatch(rf"\s*{number}\s*{more}\s*{more}\s*([^\s0-9.,]*)\s*", text)
        if match is None:
            raise ValueError(
                f"Cannot read a pixel size from {text!r}: give one number (square pixels), "
                "y,x or z,y,x (with the z step of a stack), optionally with a unit, e.g. 0.65 "
                "or 0.5,0.65um or 2,0.65,0.65um or 650nm."
            )
        *numbers, unit = match.groups()
        values = [float(n) for n in numbers if n is not None]
        z = values.pop(0) if len(values) == 3 else None
        y, x = values if len(values) == 2 else values * 2
        return cls(y, x, unit or "micrometer", z)


# ---------------------------------------------------------------------- OME-Zarr output


def _multiscales(
    name: str, axes: str, levels: int, pixel_size: PixelSize | None, frame_interval: float | None
) -> dict:
    unit = {"unit": pixel_size.unit} if pixel_size is not None else {}
    if pixel_size is not None and pixel_size.t is not None:
        frame_interval = pixel_size.t
    step = {
        "T": frame_interval or 1.0,
        "Z": pixel_size.z if pixel_size is not None and pixel_size.z else 1.0,
        "Y": pixel_size.y if pixel_size is not None else 1.0,
        "X": pixel_size.x if pixel_size is not None else 1.0,
    }
    described = []
    for a in axes:
        if a == "T":  # without an interval: OME-Zarr's default scale of 1, no unit
            described.append(
                {"name": "t", "type": "time"} | ({"unit": "second"} if frame_interval else {})
            )
        else:
            z_unit = a != "Z" or (pixel_size is not None and pixel_size.z)
            described.append({"name": a.lower(), "type": "space"} | (unit if z_unit else {}))
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [step[a] * (2**k if a in "YX" else 1) for a in axes]}
            ],
        }
        for k in range(levels)
    ]
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": described,
                "datasets": datasets,
                "type": "nearest",
                "metadata": {"method": "every second pixel (along y and x) of the level above"},
            }
        ],
        "image-label": {"version": NGFF_VERSION},
    }


def _new_array(group: Any, name: str, shape: Sequence[int], chunk: int) -> Any:
    # one plane deep: a stack is written, and read back, a plane at a time
    chunks = (1,) * (len(shape) - 2) + (chunk, chunk)
    return group.create_array(
        name,
        shape=tuple(shape),
        chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
        dtype="int32",
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


def _downsample(source: Any, target: Any) -> None:
    """``target`` = every second pixel along y and x of ``source``, one target chunk at a
    time."""
    ch_y, ch_x = target.chunks[-2:]
    for lead in np.ndindex(*target.shape[:-2]):
        for y in range(0, target.shape[-2], ch_y):
            for x in range(0, target.shape[-1], ch_x):
                target[(*lead, slice(y, y + ch_y), slice(x, x + ch_x))] = source[
                    (*lead, slice(2 * y, 2 * (y + ch_y), 2), slice(2 * x, 2 * (x + ch_x), 2))
                ]


def check_writable_zarr(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a zarr target that is not named ``*.zarr`` or exists, unless ``overwrite``.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False, or is a file.
    ValueError
        When the name does not end in ``.zarr``.
    """
    path = Path(path)
    if not path.name.lower().endswith(".zarr"):
        raise ValueError(
            f"OME-Zarr output needs a name ending in .zarr (e.g. cells.ome.zarr), got {path}."
        )
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a zarr folder; choose another name.")
    if path.exists() and not overwrite:
        raise ResultExistsError(f"{path} already exists")
    return path


@contextlib.contextmanager
def labels_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    *,
    axes: str | None = None,
    pixel_size: PixelSize | None = None,
    frame_interval: float | None = None,
    name: str = "cells",
    chunk: int = ZARR_CHUNK,
    overwrite: bool = False,
) -> Iterator[Any]:
    """A zarr array to write labels into, saved as OME-Zarr labels when the block ends.

    The store is written under a temporary name in the same folder; on leaving the ``with``
    block the pyramid levels and the OME-NGFF metadata are added and it is renamed into place.
    If the block raises, the temporary store is removed and ``path`` is left as it was; one
    that a killed process of this machine left for ``path`` is removed at the start. Without
    ``overwrite``, a ``path`` that appeared meanwhile (another run's) is kept and this store
    removed.

    Parameters
    ----------
    path : str or path-like
        Target folder, ending in ``.zarr`` (``cells.ome.zarr``).
    shape : sequence of int
        The shape of the labels; without ``axes``, ``(Y, X)``: an image's leading (channel)
        axes are ignored.
    axes : str, optional
        The labels' axes, ``"YX"`` (the default), ``"ZYX"``, ``"TYX"`` or ``"TZYX"``
        (``AxisImage.label_axes``), the last ``len(axes)`` of ``shape``. A stack is stored in
        chunks one plane deep, so that it can be written and read a plane at a time.
    pixel_size : PixelSize, optional
        Written as the scale of every level (y and x doubled per level down the pyramid),
        with the z step and the frame interval (in seconds) of a stack when it has them.
    frame_interval : float, optional
        The time from one frame to the next in seconds, for labels of a time series whose
        pixel size is unknown (the pixel size's own interval comes first).
    name : str
        The multiscale's name.
    chunk : int
        Chunk edge in pixels; the pyramid stops at the first level that fits one chunk.
    overwrite : bool
        Replace an existing ``path``.

    Yields
    ------
    zarr.Array
        int32 array of ``shape`` (``(Y, X)`` without ``axes``), all 0, to write the labels
        into.

    Raises
    ------
    FileExistsError
        When ``path`` exists, or appears before the store is complete, and ``overwrite`` is
        False.
    ValueError
        When ``path`` does not end in ``.zarr``, zarr is not installed, or ``axes`` are not
        label axes of ``shape``.

    Examples
    --------
    >>> with labels_zarr("slide_cells.ome.zarr", image.shape, pixel_size=size) as out:
    ...     pair.segment(image, out=out)
    """
    import zarr

    axes = "YX" if axes is None else axes.upper()
    if axes not in ("YX", "ZYX", "TYX", "TZYX") or len(shape) < len(axes):
        raise ValueError(
            f"Label axes must be YX, ZYX, TYX or TZYX, one per axis of the labels; got {axes!r} "
            f"for shape {tuple(shape)}."
        )
    path = Path(path)
    check_writable_zarr(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, "partial")
    # unique: two stores of one target in one process (two runs in threads) stay apart
    temp = temp_path(path, "partial")
    try:
        group = zarr.open_group(str(temp), mode="w", zarr_format=2)
        shape = tuple(int(s) for s in shape[len(shape) - len(axes) :])
        level = _new_array(group, "0", shape, chunk)
        yield level
        levels = 1
        while max(level.shape[-2:]) > chunk:
            smaller_shape = [*level.shape[:-2], *(-(-s // 2) for s in level.shape[-2:])]
            smaller = _new_array(group, str(levels), smaller_shape, chunk)
            _downsample(level, smaller)
            level, levels = smaller, levels + 1
        group.attrs.update(_multiscales(name, axes, levels, pixel_size, frame_interval))
        _replace(temp, path, overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _replace(temp: Path, path: Path, overwrite: bool) -> None:
    """Rename ``temp`` to ``path``. With ``overwrite``, a folder already there is moved aside
    first, then removed; without, one there is kept."""
    if not overwrite:
        try:
            temp.rename(path)  # refused onto a store there (another run's, written meanwhile)
        except OSError:
            if path.exists():
                raise ResultExistsError(
                    f"{path} already exists (written while this one was made)"
                ) from None
            raise
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    if path.exists():
        path.rename(old)
    temp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
