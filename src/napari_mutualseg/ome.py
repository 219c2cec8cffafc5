"""Physical pixel size, images read window by window, and OME-Zarr label output.

Large images are read a window at a time (:func:`open_image`) and their labels written a
chunk at a time (:func:`labels_zarr`), so that neither is ever whole in memory. The pixel size
travels from the input (:func:`read_pixel_size`: OME-TIFF, ImageJ TIFF, TIFF resolution tags
in centimetres, OME-Zarr) to every output: OME-Zarr scale, and OME-TIFF metadata plus
resolution tags (``io.write_labels``).

OME-Zarr output follows OME-NGFF 0.4 (zarr format 2, ``/`` chunk separator, the version the
most viewers read): a multiscale group marked as a label image (``image-label``), the labels
in ``0`` and nearest-neighbour levels ``1``, ``2``, ... each half the size of the one above,
down to one chunk. Writing OME-Zarr, and reading compressed TIFFs a window at a time, needs
the ``zarr`` package (``pip install "napari-mutualseg[zarr]"``, Python 3.11+).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

__all__ = [
    "NGFF_VERSION",
    "PixelSize",
    "check_writable_zarr",
    "labels_zarr",
    "open_image",
    "read_pixel_size",
]

#: The OME-NGFF version written.
NGFF_VERSION = "0.4"

#: Edge of the chunks (and of the smallest pyramid level) of OME-Zarr labels.
ZARR_CHUNK = 1024

# length units: the OME-NGFF (UDUNITS-2) name, its OME-XML symbol and its size in metres
_UNITS = {
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
}

_NO_ZARR = (
    "needs the zarr package: pip install 'napari-mutualseg[zarr]' (zarr 3, Python 3.11 or newer)"
)


def _unit_name(unit: str) -> str:
    name = _ALIASES.get(str(unit).strip().lower()) or _ALIASES.get(str(unit).strip())
    if name is None:
        raise ValueError(
            f"Unknown length unit {unit!r}; use one of {', '.join(_UNITS)} (or nm, um, mm, cm, m)."
        )
    return name


@dataclass(frozen=True)
class PixelSize:
    """Physical size of one pixel along y and x.

    Attributes
    ----------
    y, x : float
        Pixel height and width in ``unit``.
    unit : str
        A length unit, stored by its OME-NGFF name (``"micrometer"``); ``"um"``, ``"µm"``,
        ``"micron"``, ``"nm"`` and the like are accepted.
    """

    y: float
    x: float
    unit: str = "micrometer"

    def __post_init__(self) -> None:
        for axis in ("y", "x"):
            value = float(getattr(self, axis))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Pixel size along {axis} must be positive, got {value}.")
            object.__setattr__(self, axis, value)
        object.__setattr__(self, "unit", _unit_name(self.unit))

    @property
    def symbol(self) -> str:
        """The unit as OME-XML writes it (``"µm"``)."""
        return _UNITS[self.unit][0]

    def per_centimeter(self) -> tuple[float, float]:
        """Pixels per centimetre along x and y, as TIFF resolution tags store them."""
        metres = _UNITS[self.unit][1]
        return 0.01 / (self.x * metres), 0.01 / (self.y * metres)

    @classmethod
    def parse(cls, text: str) -> PixelSize:
        """A pixel size from text: ``"0.65"`` (square, micrometres), ``"0.5,0.65"`` (y, x),
        optionally followed by a unit (``"650 nm"``, ``"0.5,0.65um"``).

        Raises
        ------
        ValueError
            When the text is not one or two positive numbers and an optional unit.
        """
        number = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
        match = re.fullmatch(rf"\s*{number}\s*(?:,\s*{number})?\s*([^\s0-9.,]*)\s*", text)
        if match is None:
            raise ValueError(
                f"Cannot read a pixel size from {text!r}: give one number (square pixels) or "
                "y,x, optionally with a unit, e.g. 0.65 or 0.5,0.65um or 650nm."
            )
        y, x, unit = match.groups()
        return cls(float(y), float(x or y), unit or "micrometer")


# ---------------------------------------------------------------------- reading


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix.lower() == ".zarr"
        or any((path / f).exists() for f in (".zgroup", ".zarray", "zarr.json"))
    )


def _multiscale_level0(group: Any) -> tuple[Any, dict]:
    """The full-resolution array of an OME-Zarr multiscale group and its multiscale entry."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError(f"{group.store} is a zarr group without OME-NGFF multiscales metadata.")
    entry = multiscales[0]
    return group[entry["datasets"][0]["path"]], entry


def _zarr_pixel_size(path: Path) -> PixelSize | None:
    try:
        import zarr
    except ImportError:
        return None
    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "groups"):
        return None
    _, entry = _multiscale_level0(node)
    axes = [a if isinstance(a, dict) else {"name": a} for a in entry.get("axes", [])]
    scale = None
    for transform in entry["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = transform["scale"]
    if scale is None or len(axes) != len(scale):
        return None
    found = {a["name"]: (s, a.get("unit")) for a, s in zip(axes, scale, strict=True)}
    if "y" not in found or "x" not in found or not found["x"][1]:
        return None
    return PixelSize(found["y"][0], found["x"][0], found["x"][1])


def _ome_tiff_pixel_size(xml: str) -> PixelSize | None:
    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    x = float(pixels.attrib["PhysicalSizeX"])
    y = float(pixels.attrib.get("PhysicalSizeY", x))
    return PixelSize(y, x, pixels.attrib.get("PhysicalSizeXUnit", "µm"))


def _inverse(resolution: float) -> float:
    """Pixel size from pixels per unit, to the 6 digits a TIFF rational keeps."""
    return float(f"{1 / resolution:.6g}")


def _tiff_pixel_size(path: Path) -> PixelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _ome_tiff_pixel_size(tif.ome_metadata)
            if found is not None:
                return found
        page = tif.pages.first
        x_res, y_res = page.get_resolution()
        if not (x_res > 0 and y_res > 0):
            return None
        if tif.is_imagej:
            unit = (tif.imagej_metadata or {}).get("unit")
            if unit and unit.lower() not in ("pixel", "pixels", "inch", ""):
                return PixelSize(_inverse(y_res), _inverse(x_res), unit)
            return None
        # inches are left out on purpose: 72, 96 or 300 dpi are display defaults, not optics
        if page.resolutionunit == tifffile.RESUNIT.CENTIMETER:
            return PixelSize(_inverse(y_res / 1e4), _inverse(x_res / 1e4), "micrometer")
    return None


def read_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    """The pixel size an image file records, or None where it records none.

    Read from OME-TIFF metadata, ImageJ TIFF calibration, TIFF resolution tags in centimetres
    (resolution in inches is ignored: it is a printing default, not a pixel size) and the
    OME-Zarr scale of the full-resolution level.

    Parameters
    ----------
    path : str or path-like
        A TIFF file or an OME-Zarr folder.
    """
    path = Path(path)
    if _is_zarr(path):
        return _zarr_pixel_size(path)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        return _tiff_pixel_size(path)
    return None


class _TiffWindows:
    """A TIFF read one window at a time, the file opened for that read only.

    Uncompressed TIFFs are read through a memory map: one kept open would keep every page it
    ever touched in the process's resident memory. Compressed or tiled ones are read through
    tifffile's zarr store, which decodes only the strips or tiles under the window.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            mapped = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed, tiled or scattered: not one block of bytes
            self.offset = None
            with tifffile.TiffFile(path) as tif:
                self.shape, self.dtype = tuple(tif.series[0].shape), tif.series[0].dtype
        else:
            self.offset, self.shape, self.dtype = int(mapped.offset), mapped.shape, mapped.dtype
            del mapped

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.offset is not None:
            mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
            try:
                return np.array(mapped[key])
            finally:
                del mapped
        import tifffile
        import zarr

        with tifffile.imread(self.path, aszarr=True) as store:
            node = zarr.open(store, mode="r")
            return np.asarray((node["0"] if hasattr(node, "groups") else node)[key])


def open_image(path: str | os.PathLike) -> Any:
    """An image as an array that reads only the windows sliced from it.

    TIFFs are opened for each window read and closed again: uncompressed ones through a memory
    map, compressed or tiled ones through zarr (whole, when zarr is not installed). OME-Zarr
    gives its full-resolution level. Other files (PNG, JPEG, ...) are read whole.

    Parameters
    ----------
    path : str or path-like
        The image file or OME-Zarr folder.

    Returns
    -------
    array-like
        Has ``shape``, ``dtype``, ``ndim`` and numpy slicing.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        When the file cannot be read as an image.
    """
    from .io import read_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image file not found: {path}")
    if _is_zarr(path):
        try:
            import zarr
        except ImportError:
            raise ValueError(f"Reading {path} {_NO_ZARR}.") from None
        node = zarr.open(str(path), mode="r")
        return _multiscale_level0(node)[0] if hasattr(node, "groups") else node
    if path.suffix.lower() not in (".tif", ".tiff"):
        return read_image(path)
    reader = _TiffWindows(path)
    if reader.offset is None and importlib.util.find_spec("zarr") is None:
        return read_image(path)
    return reader


# ---------------------------------------------------------------------- OME-Zarr output


def _multiscales(name: str, levels: int, pixel_size: PixelSize | None) -> dict:
    unit = {"unit": pixel_size.unit} if pixel_size is not None else {}
    base = (pixel_size.y, pixel_size.x) if pixel_size is not None else (1.0, 1.0)
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [base[0] * 2**k, base[1] * 2**k]}
            ],
        }
        for k in range(levels)
    ]
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": [{"name": a, "type": "space", **unit} for a in ("y", "x")],
                "datasets": datasets,
                "type": "nearest",
                "metadata": {"method": "every second pixel of the level above"},
            }
        ],
        "image-label": {"version": NGFF_VERSION},
    }


def _new_array(group: Any, name: str, shape: Sequence[int], chunks: Sequence[int]) -> Any:
    return group.create_array(
        name,
        shape=tuple(shape),
        chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
        dtype="int32",
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


def _downsample(source: Any, target: Any) -> None:
    """``target`` = every second pixel of ``source``, one target chunk at a time."""
    ch_y, ch_x = target.chunks
    for y in range(0, target.shape[0], ch_y):
        for x in range(0, target.shape[1], ch_x):
            target[y : y + ch_y, x : x + ch_x] = source[
                2 * y : 2 * (y + ch_y) : 2, 2 * x : 2 * (x + ch_x) : 2
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
        raise FileExistsError(
            f"{path} already exists; choose another path, or pass overwrite=True "
            "(--overwrite on the command line) to replace it."
        )
    return path


@contextlib.contextmanager
def labels_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    *,
    pixel_size: PixelSize | None = None,
    name: str = "cells",
    chunk: int = ZARR_CHUNK,
    overwrite: bool = False,
) -> Iterator[Any]:
    """A zarr array to write labels into, saved as OME-Zarr labels when the block ends.

    The store is written under a temporary name in the same folder; on leaving the ``with``
    block the pyramid levels and the OME-NGFF metadata are added and it is renamed into place.
    If the block raises, the temporary store is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        Target folder, ending in ``.zarr`` (``cells.ome.zarr``).
    shape : sequence of int
        ``(Y, X)`` of the labels; an image's leading (channel) axes are ignored.
    pixel_size : PixelSize, optional
        Written as the scale of every level (doubled per level down the pyramid).
    name : str
        The multiscale's name.
    chunk : int
        Chunk edge in pixels; the pyramid stops at the first level that fits one chunk.
    overwrite : bool
        Replace an existing ``path``.

    Yields
    ------
    zarr.Array
        int32 ``(Y, X)`` array, all 0, to write the labels into.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    ValueError
        When ``path`` does not end in ``.zarr`` or zarr is not installed.

    Examples
    --------
    >>> with labels_zarr("slide_cells.ome.zarr", image.shape, pixel_size=size) as out:
    ...     pair.segment(image, out=out)
    """
    try:
        import zarr
    except ImportError:
        raise ValueError(f"Writing OME-Zarr {_NO_ZARR}.") from None
    path = Path(path)
    check_writable_zarr(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        group = zarr.open_group(str(temp), mode="w", zarr_format=2)
        shape = tuple(int(s) for s in shape[-2:])
        level = _new_array(group, "0", shape, (chunk, chunk))
        yield level
        levels = 1
        while max(level.shape) > chunk:
            smaller = _new_array(
                group, str(levels), [-(-s // 2) for s in level.shape], (chunk, chunk)
            )
            _downsample(level, smaller)
            level, levels = smaller, levels + 1
        group.attrs.update(_multiscales(name, levels, pixel_size))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _replace(temp, path)


def _replace(temp: Path, path: Path) -> None:
    """Rename ``temp`` to ``path``; a folder already there is moved aside first, then removed."""
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    if path.exists():
        path.rename(old)
    temp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
