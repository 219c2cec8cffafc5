"""Reading images and box tables, writing label images and box tables.

Two box table formats are read (CSV, first line a header):

napari Shapes CSV
    What napari writes when a Shapes layer is saved as ``.csv``: one row per vertex,
    ``index,shape-type,vertex-index,axis-0,axis-1``; shapes drawn on a stack add ``axis-2``
    and ``axis-0`` is then the plane. Only rectangles and ellipses are boxes; rotated ones
    keep their rotation.
plain table
    One row per box, columns ``y0,x0,y1,x1`` (half-open pixel ranges as in
    ``skimage.measure.regionprops(...).bbox``) and optionally ``image``, the name of the image
    file the box belongs to (several images in one table).

:func:`write_box_table` writes the plain table when every box is an axis-aligned rectangle
on whole pixels (the common case, and the easiest to edit by hand), and napari's Shapes CSV
otherwise, so that rotated boxes, ellipses and sub-pixel corners survive the round trip and
the file still opens in napari.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .boxes import BOX_TYPES, Box, boxes_by_plane, boxes_from_shapes
from .ome import PixelSize

__all__ = [
    "OutputError",
    "atomic_write",
    "check_writable",
    "output_paths",
    "read_box_table",
    "read_image",
    "write_box_table",
    "write_labels",
    "write_table",
    "write_text",
]

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES
#: Microscope formats read through the optional bioio extra.
BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")

NAPARI_2D = ("index", "shape-type", "vertex-index", "axis-0", "axis-1")
NAPARI_3D = (*NAPARI_2D, "axis-2")
PLAIN = ("y0", "x0", "y1", "x1")

_FORMATS = (
    "accepted box tables: (a) a napari Shapes CSV with header "
    "'index,shape-type,vertex-index,axis-0,axis-1' (stacks add 'axis-2'), as written by "
    "File > Save Selected Layers with a .csv name; (b) a plain table with columns "
    "'y0,x0,y1,x1' and optionally 'image' (half-open pixel ranges, one box per row)"
)

BoxKey = str | int | None


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file's pixels as stored, without interpreting its axes.

    TIFF via tifffile, PNG/JPEG/BMP/GIF via scikit-image, OME-Zarr folders via zarr, other
    microscopy formats via the optional bioio. For the meaning of the axes (channels, z,
    time), pixel size and channel names use
    :meth:`napari_mutualseg.images.AxisImage.from_file`.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    numpy.ndarray
        The pixel data as stored (2D, a stack, or colour channels last).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file is not a supported image type or cannot be read.
    """
    from .images import read_pixels

    return read_pixels(path)


# ---------------------------------------------------------------------- writing files
#
# Every file the package writes goes through :func:`atomic_write`: the data goes to a file
# in the destination's folder that has no name yet (Linux ``O_TMPFILE``; elsewhere a hidden
# ``.<name>.<pid>-<random>.part``), is flushed to the disk, and only then gets its name. So a
# destination holds its old content or the complete new one, never a part; a crash, a full
# disk or Ctrl-C leave the old file as it was; and without ``overwrite`` the name is taken
# with an exclusive link, so a file that appears meanwhile (another run) is never replaced.


class OutputError(OSError):
    """A file cannot be written; the message says why and what to do (``errno`` is kept)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _explain(err: OSError, path: Path, existed: bool = False) -> OSError:
    """``err`` as an :class:`OutputError` whose message a user can act on."""
    if isinstance(err, OutputError | FileExistsError):
        return err
    folder = path.parent
    kept = " The earlier file is unchanged." if existed else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        text = (
            f"Not enough space to write {path} (the disk or your quota is full); free some "
            f"space or choose another folder.{kept}"
        )
    elif err.errno == errno.EROFS:
        text = f"Cannot write {path}: {folder} is on a read-only disk; choose another folder."
    elif err.errno in (errno.EACCES, errno.EPERM):
        text = (
            f"Cannot write {path}: no permission to create files in {folder}; choose another "
            "folder or change its permissions."
        )
    else:
        text = f"Cannot write {path}: {err.strerror or err}.{kept}"
    return OutputError(err.errno, text)


def _destination(path: Path, overwrite: bool) -> Path:
    """The file to write for ``path``: a link is followed to its file, never a broken one."""
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if not real.exists():
            raise ValueError(
                f"{path} is a link to {real}, which does not exist; nothing is written through "
                "a broken link. Remove the link or choose another name."
            )
        path = real
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it instead.")
    if path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists; choose another path, or pass overwrite=True "
                "(--overwrite on the command line) to replace it."
            )
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file; choose a file name to write.")
    return path


def _existing_folder(folder: Path) -> Path:
    """The nearest folder of ``folder`` or its parents that exists (what a write would need)."""
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot write into {folder}: it is a file, not a folder.")
    return folder


_PROC_FD = "/proc/self/fd"

#: Free bytes a disk needs at the least before anything is written to it.
MIN_FREE = 16 * 1024


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def _open_unnamed(target: Path, mode: int) -> tuple[int, Path | None]:
    """A new empty file beside ``target``: (descriptor, its temporary name or None).

    The unnamed file (Linux ``O_TMPFILE``) vanishes with the process if it is killed before
    the file is published; elsewhere a hidden name is used and removed on every failure path.
    The mode is ``mode`` less the umask, as for any new file.
    """
    if hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD):
        try:
            return os.open(target.parent, os.O_TMPFILE | os.O_RDWR, mode), None
        except OSError:
            pass  # this file system has no unnamed files; a named one says why if it fails too
    name = _temp_name(target)
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_BINARY", 0)
    return os.open(name, flags, mode), name


def _link_unnamed(fd: int, target: Path) -> None:
    """Give the unnamed file ``fd`` the name ``target``; FileExistsError if it is taken."""
    proc = os.open(_PROC_FD, os.O_RDONLY)
    try:
        # linkat with AT_SYMLINK_FOLLOW (what follow_symlinks=True with a dir fd gives)
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _publish(fd: int | None, temp: Path | None, target: Path, overwrite: bool) -> None:
    """Give the written file (unnamed: open as ``fd``; else closed, named ``temp``) the name
    ``target``; no temporary name is left, whatever fails."""
    if temp is None and not overwrite:
        _link_unnamed(fd, target)  # exclusive: fails if the name was taken meanwhile
        return
    if temp is None:
        temp = _temp_name(target)
        _link_unnamed(fd, temp)
    try:
        if overwrite:
            os.replace(temp, target)
            return
        try:
            os.link(temp, target)  # exclusive, as above
        except OSError as err:
            if isinstance(err, FileExistsError) or os.path.lexists(target):
                raise FileExistsError(target) from None
            os.replace(temp, target)  # no hard links on this file system (FAT, some shares)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a renamed file, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Write a file that appears complete or not at all.

    Yields a binary file object; what is written to it replaces ``path`` only when the block
    ends without an error, after the data reached the disk. A link is followed to its file
    (never a broken link); missing parent folders are created. A new file gets the usual
    permissions (the umask's), a replaced file keeps its own.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    overwrite : bool
        Replace an existing file. Without it the name is taken exclusively: a file created
        under that name while this one was written is left alone and FileExistsError raised.

    Raises
    ------
    FileExistsError
        When ``path`` exists (or appears meanwhile) and ``overwrite`` is False.
    OutputError
        When the file cannot be written (full or read-only disk, no permission); the old file
        is unchanged and no temporary file is left.

    Examples
    --------
    >>> with atomic_write("table.csv") as f:
    ...     f.write(b"y0,x0,y1,x1\n")
    """
    path = Path(path)
    target = _destination(path, overwrite)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(target.stat().st_mode) if existed else 0o666
        fd, temp = _open_unnamed(target, mode)
    except OSError as err:
        raise _explain(err, path, existed) from err
    try:
        with os.fdopen(fd, "w+b") as f:
            f.raw.name = str(target)  # writers that ask for the file's name get the target's
            if existed and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # the umask applies to a new file, not to a replaced one
            yield f
            f.flush()
            os.fsync(fd)
            if temp is None:
                _publish(fd, None, target, overwrite)  # named through its open descriptor
        if temp is not None:
            _publish(None, temp, target, overwrite)  # closed first: Windows renames no open file
        _sync_folder(target.parent)
    except FileExistsError:
        raise FileExistsError(
            f"{path} was created by another program while this one was writing it; it was "
            "left as it is."
        ) from None
    except OSError as err:
        raise _explain(err, path, existed) from err
    finally:
        if temp is not None and os.path.lexists(temp):
            os.unlink(temp)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) with :func:`atomic_write`; the path written."""
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def check_writable(
    path: str | os.PathLike, overwrite: bool = False, *, size: int | None = None
) -> Path:
    """Check, before any work, that ``path`` can be written.

    Parameters
    ----------
    path : str or path-like
        The file to be written later.
    overwrite : bool
        Whether an existing file may be replaced.
    size : int, optional
        Bytes the file will take, when known: the disk must have that much free (and never
        less than :data:`MIN_FREE`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    IsADirectoryError, NotADirectoryError
        When ``path`` is a folder, or a parent of it a file.
    OutputError
        When the folder is read-only or not writable, or the disk has less than ``size`` free.
    ValueError
        When ``path`` is a broken link or not a regular file.
    """
    path = Path(path)
    target = _destination(path, overwrite)
    folder = _existing_folder(target.parent)
    try:
        fd, temp = _open_unnamed(folder / target.name, 0o600)
        os.close(fd)
        if temp is not None:
            os.unlink(temp)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise _explain(err, path) from err
    needed = max(size or 0, MIN_FREE)
    if free < needed:
        raise OutputError(
            errno.ENOSPC,
            f"Not enough space for {path}: it needs about {format_size(needed)} and {folder} has "
            f"{format_size(free)} free. Free some space or choose another folder.",
        )
    return path


def format_size(n: float) -> str:
    """A number of bytes as people read it: ``"3.1 GiB"``."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} bytes" if k == 0 else f"{n:.1f} {units[k]}"


def output_paths(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    suffix: str = "_cells.tif",
    parts: Sequence[str] | None = None,
) -> list[Path]:
    """Where the result of each input goes: one distinct file per input, never an input.

    Each result is ``out_dir / <folder> / <name><_part><suffix>``: ``<folder>`` is the input's
    folder below the common parent of all inputs (empty when they share one folder), and
    ``<name>`` the file name without its image suffix (``s.v1.tif`` gives ``s.v1``). So
    ``a/x.tif`` and ``b/x.tif`` go to ``out/a/x_cells.tif`` and ``out/b/x_cells.tif``.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Input files; a file may repeat when ``parts`` tells its pieces apart.
    out_dir : str or path-like
        The output folder.
    suffix : str
        Ending of every output name.
    parts : sequence of str, optional
        One per input: a piece of the input (e.g. ``"plane003"``) added to the name, or
        ``""`` for the whole file.

    Returns
    -------
    list of pathlib.Path
        One output path per input, in order.

    Raises
    ------
    ValueError
        When two inputs would still get the same output (``x.tif`` beside ``x.tiff``, the
        same file given twice, names differing only in case) or an output would be an input.
    """
    sources = [Path(p) for p in inputs]
    parts = [""] * len(sources) if parts is None else list(parts)
    if len(parts) != len(sources):
        raise ValueError(f"Got {len(sources)} inputs but {len(parts)} parts.")
    if not sources:
        return []
    folders = [os.path.abspath(p.parent) for p in sources]
    try:
        common = os.path.commonpath(folders)
    except ValueError:
        raise ValueError(
            "The inputs are on different drives, so their folders cannot be kept below one "
            "output folder; run them one drive at a time."
        ) from None
    out_dir = Path(out_dir)
    outputs = []
    for source, folder, part in zip(sources, folders, parts, strict=True):
        name = source.name
        if name.lower().endswith((*IMAGE_SUFFIXES, *BIOIO_SUFFIXES, ".zarr")):
            name = name[: name.rindex(".")]
            name = name.removesuffix(".ome")
        below = os.path.relpath(folder, common)
        outputs.append(out_dir / below / f"{name}{'_' + part if part else ''}{suffix}")
    seen: dict[str, Path] = {}
    inputs_at = {os.path.normcase(os.path.realpath(p)).lower(): p for p in sources}
    for source, out in zip(sources, outputs, strict=True):
        out = Path(os.path.normpath(out))
        key = os.path.normcase(os.path.abspath(out)).lower()
        if key in seen and seen[key] != source:
            raise ValueError(
                f"{seen[key]} and {source} would both be written to {out}; rename one of them "
                "(names that differ only in their suffix or in case clash)."
            )
        if key in seen:
            raise ValueError(f"{source} is given twice; give each image once.")
        seen[key] = source
        real = os.path.normcase(os.path.realpath(out)).lower()
        if real in inputs_at:
            raise ValueError(
                f"The result of {source} would be written over the input {inputs_at[real]}; "
                "choose another output folder."
            )
    return [Path(os.path.normpath(o)) for o in outputs]


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    overwrite: bool = False,
    pixel_size: PixelSize | None = None,
) -> Path:
    """Write a label or class image as a zlib-compressed TIFF, atomically.

    Parameters
    ----------
    path : str or path-like
        Target ``.tif``/``.tiff`` file; missing parent folders are created.
    labels : numpy.ndarray
        Integer (or bool) image; bool is written as uint8.
    overwrite : bool
        Replace an existing file (only once the new one is complete).
    pixel_size : PixelSize, optional
        Written as OME-TIFF physical size and as resolution tags (pixels per centimetre), so
        that Fiji, napari and Bio-Formats readers all find it.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        When the file exists and ``overwrite`` is False.
    OutputError
        When the file cannot be written (the old one is then unchanged).
    ValueError
        When the path is not a TIFF name or the labels are not an integer image.
    """
    import tifffile

    path = Path(path)
    if _suffix(path) not in TIFF_SUFFIXES:
        raise ValueError(f"Labels are written as TIFF: give {path} a .tif or .tiff suffix.")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Labels must be an integer image, got dtype {labels.dtype}; round or cast it first."
        )
    if labels.ndim < 2:
        raise ValueError(f"Labels must be at least 2D, got shape {labels.shape}.")
    calibration = {}
    if pixel_size is not None:
        calibration = {
            "ome": True,
            "resolution": pixel_size.per_centimeter(),
            "resolutionunit": "CENTIMETER",
            "metadata": {
                "PhysicalSizeX": pixel_size.x,
                "PhysicalSizeXUnit": pixel_size.symbol,
                "PhysicalSizeY": pixel_size.y,
                "PhysicalSizeYUnit": pixel_size.symbol,
            },
        }
    with atomic_write(path, overwrite=overwrite) as f:
        tifffile.imwrite(f, labels, compression="zlib", **calibration)
    return path


def write_table(
    path: str | os.PathLike, columns: Mapping[str, Sequence], *, overwrite: bool = False
) -> Path:
    """Write named columns of equal length as a CSV with a header line, atomically.

    Parameters
    ----------
    path : str or path-like
        Target ``.csv`` file; missing parent folders are created.
    columns : mapping of str to sequence
        Column name to its values, one per row.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        When the file exists and ``overwrite`` is False.
    ValueError
        When the columns differ in length.
    """
    path = Path(path)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"The columns of {path.name} differ in length: {sorted(lengths)}.")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values(), strict=True))
    return write_text(path, text.getvalue(), overwrite=overwrite)


# ---------------------------------------------------------------------- box tables


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: column {column!r} should be a number, got {text!r}."
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{path}, line {line}: column {column!r} is {text!r}, not a number.")
    return value


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (CSV) file; {_FORMATS}.") from None
    rows = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path} is empty; {_FORMATS}.")
    header = [cell.strip().lower() for cell in rows[0][1]]
    return header, rows[1:]


def read_box_table(path: str | os.PathLike) -> dict[BoxKey, list[Box]]:
    """Read boxes from a napari Shapes CSV or a plain ``y0,x0,y1,x1[,image]`` CSV.

    Parameters
    ----------
    path : str or path-like
        The CSV file (see the module docs for the two formats).

    Returns
    -------
    dict
        Boxes per key: ``None`` for a 2D table (napari 2D CSV or plain table without
        ``image`` column), the plane index (int) for a napari CSV of a stack, the image
        name (str) for a plain table with an ``image`` column. Boxes keep the file's order.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For an unknown header (the message lists the accepted formats), malformed rows or
        shapes that are not rectangles or ellipses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Box table not found: {path}")
    header, rows = _read_rows(path)
    if tuple(header) in (NAPARI_2D, NAPARI_3D):
        return _read_napari(path, header, rows)
    if set(PLAIN) <= set(header):
        extra = [c for c in header if c not in (*PLAIN, "image")]
        if extra or len(set(header)) != len(header):
            raise ValueError(
                f"{path}: unexpected or repeated columns {extra or header} in a plain box "
                f"table; {_FORMATS}."
            )
        return _read_plain(path, header, rows)
    raise ValueError(f"{path}: unknown header {','.join(header)!r}; {_FORMATS}.")


def _read_plain(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]]
) -> dict[BoxKey, list[Box]]:
    col = {name: header.index(name) for name in header}
    with_image = "image" in col
    out: dict[BoxKey, list[Box]] = {}
    if not with_image:
        out[None] = []
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(row)} values for {len(header)} columns "
                f"({','.join(header)})."
            )
        y0, x0, y1, x1 = (_number(row[col[c]], path, line, c) for c in PLAIN)
        key: BoxKey = row[col["image"]].strip() if with_image else None
        if with_image and not key:
            raise ValueError(f"{path}, line {line}: the 'image' column is empty.")
        try:
            box = Box.from_corners(y0, x0, y1, x1)
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: {err}") from None
        out.setdefault(key, []).append(box)
    return out


def _read_napari(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]]
) -> dict[BoxKey, list[Box]]:
    ndim = len(header) - 3
    shapes: dict[int, dict] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(row)} values for {len(header)} columns "
                f"({','.join(header)})."
            )
        index = _number(row[0], path, line, "index")
        vertex = _number(row[2], path, line, "vertex-index")
        kind = row[1].strip().lower()
        coords = [_number(row[3 + d], path, line, f"axis-{d}") for d in range(ndim)]
        shape = shapes.setdefault(int(index), {"kind": kind, "vertices": [], "line": line})
        if shape["kind"] != kind:
            raise ValueError(
                f"{path}, line {line}: shape {int(index)} changes type from {shape['kind']!r} "
                f"to {kind!r}."
            )
        shape["vertices"].append((vertex, coords))
    data, kinds = [], []
    for index in sorted(shapes):
        shape = shapes[index]
        if shape["kind"] not in BOX_TYPES:
            raise ValueError(
                f"{path}: shape {index} (line {shape['line']}) is a {shape['kind']!r}; only "
                "rectangles and ellipses are boxes. Delete the other shapes from the layer "
                "before saving it, or keep them on another layer."
            )
        vertices = [c for _, c in sorted(shape["vertices"], key=lambda vc: vc[0])]
        if len(vertices) != 4:
            raise ValueError(
                f"{path}: shape {index} (line {shape['line']}) has {len(vertices)} vertices; "
                "a rectangle or ellipse has 4."
            )
        data.append(np.asarray(vertices, dtype=np.float64))
        kinds.append(shape["kind"])
    try:
        if ndim == 2:
            return {None: boxes_from_shapes(data, kinds)}
        return dict(boxes_by_plane(data, kinds))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _aligned_corners(box: Box) -> tuple[int, int, int, int] | None:
    """The integer ``y0, x0, y1, x1`` of an axis-aligned rectangle on whole pixels, else None."""
    if box.kind != "rectangle":
        return None
    quarter = box.angle / (math.pi / 2)
    if abs(quarter - round(quarter)) > 1e-9:
        return None
    corners = box.pixel_range()
    rounded = tuple(round(c) for c in corners)
    if any(abs(c - r) > 1e-6 for c, r in zip(corners, rounded, strict=True)):
        return None
    return rounded  # type: ignore[return-value]


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def write_box_table(
    path: str | os.PathLike,
    boxes: Sequence[Box] | Mapping[BoxKey, Sequence[Box]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write boxes as a CSV that :func:`read_box_table` reads back.

    Axis-aligned rectangles on whole pixels are written as the plain ``y0,x0,y1,x1`` table
    (with an ``image`` column for several named images). Any rotated box, ellipse or box with
    sub-pixel corners switches the file to napari's Shapes CSV, which keeps them exactly and
    opens in napari; boxes per plane (int keys) are always written that way, with the plane as
    ``axis-0``.

    Parameters
    ----------
    path : str or path-like
        Target CSV file; missing parent folders are created.
    boxes : sequence of Box or mapping
        The boxes of one image, or boxes per key as returned by :func:`read_box_table`
        (``None``, plane ints, or image names; one kind of key per file).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        When the file exists and ``overwrite`` is False.
    ValueError
        For mixed key kinds, or rotated boxes keyed by image name (napari's format has no
        image column).
    """
    path = Path(path)
    groups: dict[BoxKey, list[Box]] = (
        {k: list(v) for k, v in boxes.items()}
        if isinstance(boxes, Mapping)
        else {None: list(boxes)}
    )
    for key, group in groups.items():
        for k, box in enumerate(group):
            if not isinstance(box, Box):
                raise TypeError(f"boxes[{key!r}][{k}] is a {type(box).__name__}, not a Box.")
    keys = list(groups)
    if keys == [None]:
        key_kind = "none"
    elif all(isinstance(k, str) for k in keys):
        key_kind = "image"
    elif all(isinstance(k, int | np.integer) and not isinstance(k, bool) for k in keys):
        key_kind = "plane"
    else:
        raise ValueError(
            f"Box table keys must be all image names, all plane indices, or just None; got {keys}."
        )
    corners = {k: [_aligned_corners(b) for b in g] for k, g in groups.items()}
    plain = key_kind != "plane" and all(c is not None for cs in corners.values() for c in cs)
    if not plain and key_kind == "image":
        raise ValueError(
            "Rotated boxes, ellipses or sub-pixel boxes cannot be written with image names: "
            "napari's Shapes CSV has no image column. Write one table per image instead."
        )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if plain:
        writer.writerow([*PLAIN, "image"] if key_kind == "image" else list(PLAIN))
        for key, cs in corners.items():
            for c in cs:
                writer.writerow([*c, key] if key_kind == "image" else list(c))
    else:
        writer.writerow(list(NAPARI_3D if key_kind == "plane" else NAPARI_2D))
        index = 0
        for key, group in groups.items():
            for box in group:
                for vertex, (y, x) in enumerate(box.corners):
                    plane = [_num(float(key))] if key_kind == "plane" else []
                    writer.writerow([index, box.kind, vertex, *plane, _num(y), _num(x)])
                index += 1
    write_text(path, text.getvalue(), overwrite=overwrite)
    return path
