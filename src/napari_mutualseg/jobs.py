"""The jobs of a batch run: which images the inputs name, where each one's results go, how
they are segmented, and what happened to each.

:func:`find_images` turns files, folders (searched with their subfolders), glob patterns and
OME-Zarr stores into a list of images, leaving out of a search the results of earlier runs
and label images (a data set's masks beside its images, said in a warning);
:func:`plan_jobs` gives each image its outputs, which keep the images' folders below the
output folder, so that same-named files in different folders never collide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .blockwise import DEFAULT_BLOCK_SIZE, check_blocks
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, check_tiling
from .io import BIOIO_SUFFIXES, IMAGE_SUFFIXES, output_paths, written_as
from .readers import is_zarr

if TYPE_CHECKING:
    from .ome import PixelSize

__all__ = [
    "FOLDER_SUFFIXES",
    "OUTPUT_SUFFIXES",
    "RECORD_SUFFIX",
    "BatchOptions",
    "ImageJob",
    "ImageResult",
    "Status",
    "find_images",
    "layout_base",
    "plan_jobs",
]

#: Image files a folder is searched for (besides OME-Zarr stores); bioio formats included.
FOLDER_SUFFIXES = (*IMAGE_SUFFIXES, *BIOIO_SUFFIXES)
#: How results are named; a search of a folder leaves them out.
OUTPUT_SUFFIXES = ("_cells.tif", "_cells.ome.zarr", "_disagreement.tif")
#: The record of what made an image's results (:meth:`ImageJob.provenance`).
RECORD_SUFFIX = "_cells.json"

Status = Literal["done", "skipped", "failed", "not done"]


@dataclass(frozen=True)
class BatchOptions:
    """How every image of a run is read and segmented (see :meth:`ModelPair.segment`).

    Attributes
    ----------
    axes : str, optional
        Axes of files that do not record them (e.g. ``"ZYX"``).
    channels : tuple, optional
        The channels the networks take (default: as trained).
    rgb : {"channels", "gray"}, optional
        How RGB pictures are taken (default: as trained).
    tile_size, overlap : int
        Sliding-window tile edge and overlap in pixels.
    min_size : int, optional
        Drop smaller objects (pixels; default: the training setting).
    link, track : bool
        Link z-planes into 3D cells; keep labels through time.
    block_size, halo : int, optional
        Segment block by block with this block edge (default: only images above 4096 x 4096).
    out_format : {"tif", "zarr"}
        Labels as TIFF or as OME-Zarr written block by block, a stack's plane after plane
        (each as soon as it is linked), so that they are never whole in memory.
    pixel_size : PixelSize, optional
        Written with the labels and used for the measurements (default: each file's own).
    disagreement : bool
        Also write where the two networks disagree (``_disagreement.tif``, uint8, 255 =
        opposite; a stack's on the planes of its labels) and the cells to check
        (``_disagreement.csv``, most disputed first; a stack's with their plane in columns
        ``t`` and ``z`` and their label in the labels file); whole planes only.
    """

    axes: str | None = None
    channels: tuple[int | str, ...] | None = None
    rgb: str | None = None
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    min_size: int | None = None
    link: bool = True
    track: bool = False
    block_size: int | None = None
    halo: int | None = None
    out_format: Literal["tif", "zarr"] = "tif"
    pixel_size: PixelSize | None = None
    disagreement: bool = False

    def __post_init__(self) -> None:
        check_tiling(self.tile_size, self.overlap)
        check_blocks(self.block_size, self.halo)
        if self.min_size is not None and self.min_size < 0:
            raise ValueError(
                f"min_size (--min-size) must be 0 or more pixels, got {self.min_size}."
            )
        if self.out_format not in ("tif", "zarr"):
            raise ValueError(f"out_format must be 'tif' or 'zarr', got {self.out_format!r}.")
        if self.disagreement and (self.block_size is not None or self.out_format == "zarr"):
            raise ValueError(
                "Disagreement maps need whole images: leave out the block size and the zarr "
                "output format."
            )

    @property
    def label_suffix(self) -> str:
        return "_cells.ome.zarr" if self.out_format == "zarr" else "_cells.tif"

    @property
    def by_blocks(self) -> bool:
        """Block by block asked for: a block size given, or labels written to OME-Zarr."""
        return self.block_size is not None or self.out_format == "zarr"

    @property
    def block_edge(self) -> int:
        """The block size, the default one when none is given."""
        return self.block_size or DEFAULT_BLOCK_SIZE


_MISSING = object()

#: What a record must share with an image found elsewhere to be that image's, moved: its
#: name below the inputs, size, modification time and first bytes.
_SAME_IMAGE = ("image", "source_bytes", "source_modified_ns", "source_head")

#: Bytes at the start of an image file whose digest its record keeps.
_HEAD_BYTES = 1 << 16


def _head_digest(path: Path) -> str | None:
    """A digest of the first bytes of an image file (None for a folder, an OME-Zarr store):
    files of the same name, size and time from two plates (extracted from archives, which
    keep times to the second) still differ there."""
    import hashlib

    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()


def _option_value(value: Any) -> str:
    """An option's value for people: ``None`` (left to the model or the image) as default,
    a pixel size (kept in records as ``PixelSize(y=..., x=..., unit=...)``) in words."""
    if value is None:
        return "default"
    size = re.fullmatch(r"PixelSize\((.*)\)", str(value))
    if size is None:
        return str(value)
    steps = dict(re.findall(r"(\w+)=('[^']*'|[^,]+)", size.group(1)))
    unit = steps.pop("unit", "").strip("'")
    interval = steps.pop("t", None)
    text = " x ".join(steps[k] for k in ("z", "y", "x") if k in steps) + f" {unit}"
    return text + (f", {interval} s a frame" if interval else "")


@dataclass(frozen=True)
class ImageJob:
    """One input image and where its results go."""

    source: Path
    labels: Path
    table: Path
    disagreement: tuple[Path, Path] | None = None
    #: How the image is called in reports: its path below the inputs' common folder.
    name: str = ""

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.labels, *(self.disagreement or ()), self.table)

    @property
    def record(self) -> Path:
        """``<name>_cells.json`` beside the table: which image, model and settings made the
        outputs, written before them."""
        return self.table.with_suffix(".json")

    def absolute(self) -> ImageJob:
        """The job with absolute paths, for a worker that may run in another folder."""
        maps = self.disagreement
        return dataclasses.replace(
            self,
            source=Path(os.path.abspath(self.source)),
            labels=Path(os.path.abspath(self.labels)),
            table=Path(os.path.abspath(self.table)),
            disagreement=None if maps is None else tuple(Path(os.path.abspath(p)) for p in maps),
        )

    def complete(self) -> bool:
        """Every output is there (each is written whole or not at all, the table last)."""
        return all(p.exists() for p in (self.record, *self.outputs))

    def has_results(self) -> bool:
        """Some output is there: a record alone stands for none (its image failed, or was
        stopped or killed before its labels were written)."""
        return any(p.exists() for p in self.outputs)

    def drop_lone_record(self) -> None:
        """Remove the record when none of the outputs is there (the image failed, or was
        stopped or killed before its labels were written): it would stand for results that
        are not. A record with outputs, complete or not, stays with them."""
        if not self.has_results():
            self.record.unlink(missing_ok=True)

    def provenance(self, model: str, options: BatchOptions) -> dict[str, Any]:
        """The record of this image's outputs: the source as it is now, the model's
        :meth:`~napari_mutualseg.models.ModelPair.fingerprint` and the options."""
        stat = os.stat(self.source)
        settings = dataclasses.asdict(options)
        if options.pixel_size is not None:
            settings["pixel_size"] = str(options.pixel_size)
        return {
            "image": self.name,
            "source": os.path.realpath(self.source),
            "source_bytes": stat.st_size,
            "source_modified_ns": stat.st_mtime_ns,
            "source_head": _head_digest(self.source),
            "model": model,
            # JSON has lists, not tuples: compared as read back
            "options": json.loads(json.dumps(settings)),
        }

    def conflict(self, expected: dict[str, Any]) -> str | None:
        """Why the files already at this job's outputs are not its results (made from
        another image, by another model, with other options, or not by this package);
        None when there are none or they are."""
        if not self.has_results():  # nothing there to be taken for this one's
            return None
        there = [p for p in (self.record, *self.outputs) if p.exists()]
        try:
            found = json.loads(self.record.read_text())
        except FileNotFoundError:
            return f"{there[0]} was not written by a run on {self.source} (no {self.record.name})"
        except (OSError, ValueError):
            return f"{self.record} is not a record of this package's results"
        if not isinstance(found, dict):
            return f"{self.record} is not a record of this package's results"
        # the same image moved (a plate copied from the microscope's computer to a server,
        # a disk mounted elsewhere): its name below the inputs, size, modification time and
        # first bytes are the record's, where another image's would not all be
        moved = expected["source_head"] is not None and all(
            found.get(k) == expected[k] for k in _SAME_IMAGE
        )
        if found.get("source") != expected["source"] and not moved:
            made = found.get("source")
            return f"{self.labels} was made from {made or 'another image'}, not {self.source}"
        if any(found.get(k) != expected[k] for k in ("source_bytes", "source_modified_ns")):
            return f"{self.source} has changed since {self.labels} was made from it"
        if found.get("model") != expected["model"]:
            return f"{self.labels} was made by another model"
        old = found.get("options")
        if old != expected["options"]:
            before = old if isinstance(old, dict) else {}
            # in words every face shares ("tile size", not tile_size or --tile-size)
            changed = [
                f"{k.replace('_', ' ')} {_option_value(before.get(k))} -> {_option_value(v)}"
                for k, v in expected["options"].items()
                if before.get(k, _MISSING) != v
            ]
            return f"{self.labels} was made with other options ({', '.join(changed)})"
        return None


@dataclass
class ImageResult:
    """What happened to one image.

    Attributes
    ----------
    job : ImageJob
        The image and its outputs.
    status : {"done", "skipped", "failed", "not done"}
        Segmented now; complete from an earlier run; failed (see ``reason``); not reached
        because the run was stopped.
    cells : int
        Cells found (0 unless done or skipped).
    seconds : float
        Time spent on the image.
    reason : str
        Why it failed, or notes (a cut-off cell, labels kept from an earlier run).
    summary : dict, optional
        The image's row of ``summary.csv``.
    peak_memory : int, optional
        Peak resident memory of the process that did the image, in bytes.
    worker : str
        Where it ran (``"local"`` or a dask worker's address).
    shape : tuple of int
        Shape of the labels written.
    axes : str
        Axes of the labels written (the image's, less C).
    read : str
        What was read: size, channels, axes, pixel size and where the axes came from.
    rgb : bool
        Whether the image is an RGB(A) picture.
    """

    job: ImageJob
    status: Status
    cells: int = 0
    seconds: float = 0.0
    reason: str = ""
    summary: dict[str, Any] | None = None
    peak_memory: int | None = None
    worker: str = "local"
    shape: tuple[int, ...] = ()
    axes: str = ""
    read: str = ""
    rgb: bool = False

    def report_row(self) -> dict[str, Any]:
        return {
            "image": self.job.name,
            "status": self.status,
            "cells": self.cells,
            "seconds": round(self.seconds, 3),
            "labels": str(self.job.labels),
            "table": str(self.job.table),
            "reason": self.reason,
        }


def _images_in(folder: Path) -> list[Path]:
    """Image files and OME-Zarr stores in ``folder`` and its subfolders, sorted; hidden
    entries (temporary files among them) are left out."""
    found: list[Path] = []
    for here, dirs, files in os.walk(folder):
        base = Path(here)
        visible = [d for d in sorted(dirs) if not d.startswith(".")]
        found += [base / d for d in visible if is_zarr(base / d)]
        dirs[:] = [d for d in visible if not is_zarr(base / d)]
        found += [
            base / name
            for name in files
            if not name.startswith(".") and name.lower().endswith(FOLDER_SUFFIXES)
        ]
    return sorted(found)


def _an_output(path: Path) -> bool:
    """A result of an earlier run: named as results are, with its record or table beside it
    (written with it), so that a user's image that happens to be called ``*_cells.tif`` is
    still an image."""
    for suffix in OUTPUT_SUFFIXES:
        if path.name.endswith(suffix):
            stem = path.name.removesuffix(suffix)
            kind = suffix.split(".")[0]  # "_cells" or "_disagreement"
            return any((path.parent / f"{stem}{kind}{end}").exists() for end in (".json", ".csv"))
    return False


#: Most pixels of an image's first plane read to tell labels from a microscope image: a
#: band of rows across its middle beyond that (a slide scan's plane is gigabytes).
_SAMPLE_PIXELS = 1 << 22


_Kind = Literal["result", "labels", "image"]


def _first_plane(path: Path) -> Any:
    """The first plane of an image file, not loaded where the reader allows (through
    :func:`~napari_mutualseg.readers.read_axis_image`)."""
    from .readers import AxesUnknownError, read_axis_image

    try:
        return read_axis_image(path, lazy=True).plane_array(0)[0]
    except AxesUnknownError as err:
        return err.data[(0,) * (err.data.ndim - 2)]


def _tiff_kind(path: Path) -> tuple[bool, Any]:
    """Whether a TIFF's header says this package wrote it as labels (as
    :func:`~napari_mutualseg.io.written_as` reads it) and, when not, its first plane if that
    is small, from one opening of the file: a search of thousands of files on a network
    share pays for each."""
    import tifffile

    from .io import label_kind

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if label_kind(str(page.software or "")) is not None:
            return True, None
        if page.imagelength * page.imagewidth > _SAMPLE_PIXELS:
            return False, None
        # samples (RGB) or a page's depth: the first
        return False, page.asarray()[tuple(slice(None) if a in "YX" else 0 for a in page.axes)]


def _kind(path: Path) -> _Kind:
    """Whether an image file found in a search is a label file this package wrote
    (``"result"``: a supervision, labels, a disagreement map), one that holds labels or a
    mask from another tool (``"labels"``: a segmentation's labels, a data set's ground
    truth, by :func:`napari_mutualseg.metrics.label_evidence` on its first plane, a band of
    rows across its middle for a large one), or an ``"image"``; an image when it cannot tell
    or the file does not open (its failure is then the image's, in its turn). Microscope
    formats (CZI, ND2, LIF) hold microscope images: they are not opened.

    Call it within :func:`_quietly`."""
    from .io import TIFF_SUFFIXES
    from .metrics import label_evidence
    from .preprocess import read_here

    if not (path.name.lower().endswith(IMAGE_SUFFIXES) or is_zarr(path)):
        return "image"
    try:
        data = None
        if path.name.lower().endswith(TIFF_SUFFIXES) and path.is_file():
            written, data = _tiff_kind(path)
            if written:
                return "result"
        elif written_as(path) is not None:
            return "result"
        if data is None:
            data = _first_plane(path)
        height, width = data.shape
        if height * width > _SAMPLE_PIXELS:
            rows = max(1, _SAMPLE_PIXELS // width)
            data = data[(height - rows) // 2 : (height + rows) // 2]
        plane = read_here(data)  # a lazy file in this process, not on a default Client
    except Exception:
        return "image"
    return "labels" if label_evidence(plane).labels else "image"


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """What reading says (tifffile logs a line per damaged strip, this thread's warnings) is
    held back while files are looked at: it is said when the image is segmented. Once for a
    search, as each holding back costs a clearing of the logging caches."""
    from .io import quiet_log
    from .thread_warnings import thread_warnings

    with thread_warnings(lambda shown: None), quiet_log("tifffile"):
        yield


def _in_store(path: Path, stores: dict[Path, bool]) -> bool:
    """A file of a zarr store's own (its metadata: ``zarr.json``), not an image: what a
    pattern over the fields of an OME-Zarr plate (``plate.zarr/*/*/*``) matches beside them
    in every well. ``stores``: whether each folder looked at is a store, asked once per
    folder (a pattern's thousands of matches on a network share share a few)."""
    if path.parent not in stores:
        stores[path.parent] = is_zarr(path.parent)
    return stores[path.parent] and path.is_file()


def _where(paths: Sequence[Path]) -> str:
    """The folders ``paths`` lie in, with how many each, for a message."""
    folders: dict[Path, int] = {}
    for path in paths:
        folders[path.parent] = folders.get(path.parent, 0) + 1
    named = [f"{os.fspath(folder) or os.curdir} ({n})" for folder, n in list(folders.items())[:3]]
    more = len(folders) - len(named)
    return ", ".join(named) + (f" and {more} more folder{'s' if more > 1 else ''}" if more else "")


def _once(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without the second naming of a file, in their order."""
    seen: set[str] = set()
    unique = []
    for path in paths:
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    return unique


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files that inputs name: files, folders (searched with their subfolders)
    and glob patterns (``plate1/**/*.tif``), each image once, in the order given.

    A search leaves out the results of earlier runs, the label files this package wrote
    (supervisions, labels: their TIFF header says so,
    :func:`napari_mutualseg.io.written_as`) and label images of other tools (a data set's
    ``masks/`` beside its ``images/``: :func:`napari_mutualseg.metrics.label_evidence` on
    their first plane), saying in a warning how many and where. A file named by the user is
    taken as it is, with a warning when it holds labels; a zarr store's own files
    (``zarr.json``, which ``plate.zarr/*/*/*`` matches in each well of an OME-Zarr plate)
    are never images.

    Parameters
    ----------
    inputs : sequence of str or path-like
        What to segment.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    FileNotFoundError
        When an input names nothing.
    ValueError
        When the inputs hold no image at all (only results of this package, only label
        images: the message says so).
    """
    found: list[Path] = []
    results: list[Path] = []  # this package's, left out of a search
    labels: list[Path] = []  # other tools' label images, left out of a search
    named_labels: list[Path] = []  # label images named by the user, segmented all the same
    stores: dict[Path, bool] = {}  # folders that are zarr stores, each asked once
    for given in inputs:
        text = os.fspath(given)
        # a file whose name holds [ ] or * is itself, not a pattern
        if glob.has_magic(text) and not os.path.exists(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"Nothing matches {text}: no file or folder found.")
        else:
            path = Path(text)
            if not path.exists():
                raise FileNotFoundError(f"{text} not found: no such file or folder.")
            if _in_store(path, stores):  # a shell's expansion of a pattern over the fields
                continue
            if not path.is_dir() or is_zarr(path):
                found.append(path)  # named by the user: taken as it is
                with _quietly():
                    if _kind(path) == "labels":
                        named_labels.append(path)
                continue
            matches = [path]
        for path in (m for m in matches if not _in_store(m, stores)):
            searched = _images_in(path) if path.is_dir() and not is_zarr(path) else [path]
            with _quietly():
                for image in searched:
                    # this package's label files (a supervision saved beside the images,
                    # results of an earlier version) are not images, nor are other tools'
                    # labels
                    kind = "result" if _an_output(image) else _kind(image)
                    {"result": results, "labels": labels, "image": found}[kind].append(image)
    # a folder and a pattern may name the same file
    unique, labels = _once(found), _once(labels)
    given = ", ".join(map(os.fspath, inputs))
    if not unique:
        if labels:
            raise ValueError(
                f"No images in {given}: it holds only label images or masks ({len(labels)} in "
                f"{_where(labels)}; each object one value, not a microscope image's pixels). "
                "Give the folder of the images themselves (e.g. images/ beside masks/), or "
                "name such files one by one to segment them all the same."
            )
        if results:
            raise ValueError(
                f"No images in {given}: it holds only napari-mutualseg results ({results[0]}"
                f"{f' and {len(results) - 1} more' if len(results) > 1 else ''}). Give the "
                "folder of the images that were segmented, not the results' folder."
            )
        raise ValueError(
            f"No images in {given}: give image files, folders holding "
            f"{', '.join(sorted({s.lstrip('.') for s in FOLDER_SUFFIXES}))} files or "
            "OME-Zarr stores, or patterns such as 'plate1/*.tif'."
        )
    if labels:
        warnings.warn(
            f"Left out {len(labels)} label image{'s' if len(labels) > 1 else ''} or mask"
            f"{'s' if len(labels) > 1 else ''} found in {_where(labels)} (e.g. "
            f"{labels[0].name}): each object is one value there, not a microscope image's "
            "pixels. Name such a file on its own to segment it all the same.",
            UserWarning,
            stacklevel=2,
        )
    if named_labels:
        one = len(named_labels) == 1
        warnings.warn(
            f"{named_labels[0]}{'' if one else f' and {len(named_labels) - 1} more'} "
            f"{'looks like a label image or mask' if one else 'look like label images or masks'}"
            ", not a microscope image (each object is one value): segmented as named, but "
            "cells are found in the images themselves.",
            UserWarning,
            stacklevel=2,
        )
    return unique


def layout_base(inputs: Sequence[str | os.PathLike]) -> Path | None:
    """The folder whose subfolders a run's outputs keep: the common parent of the inputs as
    given, a folder counting as itself, a file (or OME-Zarr store) as its folder and a glob
    pattern as the folder before its first wildcard.

    Taken from the inputs, not from the images found in them, so that the layout does not
    depend on what a folder holds: a plate folder with one well's folder so far (while the
    microscope is still acquiring) gives ``out/A01/...`` as it will once the other wells
    are there, and a rerun finds the results of the first run. None for inputs on different
    drives (Windows), which :func:`plan_jobs` refuses.
    """
    folders = []
    for given in inputs:
        text = os.fspath(given)
        if glob.has_magic(text) and not os.path.exists(text):
            parts = Path(text).parts
            fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            folder = Path(*parts[:fixed]) if fixed else Path(".")
        else:
            path = Path(text)
            folder = path if path.is_dir() and not is_zarr(path) else path.parent
        folders.append(os.path.abspath(folder))
    try:
        return Path(os.path.commonpath(folders))
    except ValueError:  # inputs on two drives: plan_jobs says so in its words
        return None


def plan_jobs(
    images: Sequence[Path],
    out_dir: str | os.PathLike,
    options: BatchOptions,
    disagreement_dir: str | os.PathLike | None = None,
    *,
    base: str | os.PathLike | None = None,
) -> list[ImageJob]:
    """One job per image: outputs keep the images' folders below ``base`` (default: the
    images' common folder; :func:`layout_base` of the inputs in a run), so they never
    collide (:func:`napari_mutualseg.io.output_paths`)."""
    common = os.path.commonpath([os.path.abspath(p.parent) for p in images])
    if base is not None:
        below = os.path.relpath(common, os.path.abspath(base))
        if below != os.curdir and not below.startswith(os.pardir):
            # output_paths keeps the folders below the images' common folder: the part of
            # it below ``base`` goes into the output folder's path
            out_dir = Path(out_dir) / below
            if disagreement_dir is not None:
                disagreement_dir = Path(disagreement_dir) / below
            common = os.path.abspath(base)
    labels = output_paths(images, out_dir, suffix=options.label_suffix)
    tables = _beside(labels, options.label_suffix, "_cells.csv")
    maps: list[Any] = [None] * len(images)
    if options.disagreement:
        folder = out_dir if disagreement_dir is None else disagreement_dir
        tifs = output_paths(images, folder, suffix="_disagreement.tif")
        csvs = _beside(tifs, "_disagreement.tif", "_disagreement.csv")
        maps = list(zip(tifs, csvs, strict=True))
    return [
        ImageJob(
            Path(source),
            label,
            table,
            pair,
            os.path.relpath(os.path.abspath(source), common),
        )
        for source, label, table, pair in zip(images, labels, tables, maps, strict=True)
    ]


def _beside(paths: list[Path], suffix: str, other: str) -> list[Path]:
    """The files beside ``paths`` (:func:`~napari_mutualseg.io.output_paths` of one suffix)
    that end in ``other`` instead: what output_paths gives for ``other``, whose checks (two
    images to one file, an image overwritten) the tables and maps pass when their labels
    do, without its cost again (0.3 s per kind for a screen of 10,000 images)."""
    return [path.with_name(path.name[: -len(suffix)] + other) for path in paths]
