"""Whole experiments: segment and measure every image of a folder, plate or screen.

:class:`BatchRun` turns inputs (files, folders, glob patterns, OME-Zarr stores) into one job per
image and yields an :class:`ImageResult` as each image is finished. Each image is one task:
read, segment, write ``<name>_cells.tif`` (or ``.ome.zarr``), measure, write
``<name>_cells.csv``. The tasks run

- in this process, one after another (``workers=0``; what the napari widget uses),
- on a ``dask.distributed`` LocalCluster started for the run (one worker per GPU, or CPU
  workers sharing the cores), or
- on an existing cluster (``scheduler="tcp://host:8786"``: ``dask scheduler`` /
  ``dask worker``, or dask-jobqueue on SLURM).

The model file travels to each worker once, as a worker plugin that loads it there (checked
as :meth:`ModelPair.load` checks it); tasks carry only file names. Workers must see the input
and output folders under the same paths.

What survives real life: outputs keep the inputs' folders below DIR, so same-named files in
different folders never collide; every file is written atomically and the table last, so a
killed run leaves complete images and nothing half-written; a rerun skips images whose outputs
are complete (and measures an image whose labels were written but not its table); a bad image
is recorded as failed with its reason and the others go on. ``summary.csv`` (one row per image)
and ``run_report.csv`` (what happened to each image) are written in DIR at the end of every
run, also an interrupted one.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .inference import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, check_tiling
from .io import (
    BIOIO_SUFFIXES,
    IMAGE_SUFFIXES,
    check_writable,
    output_paths,
    write_labels,
    write_table,
)
from .measure import Table, measure_cells, summarize

if TYPE_CHECKING:
    from .images import AxisImage
    from .models import ModelPair
    from .ome import PixelSize

__all__ = [
    "REPORT_NAME",
    "SUMMARY_NAME",
    "BatchOptions",
    "BatchRun",
    "ImageJob",
    "ImageResult",
    "find_images",
    "process_image",
    "read_labels",
    "read_table",
]

#: Written in the output folder at the end of every run.
SUMMARY_NAME = "summary.csv"
REPORT_NAME = "run_report.csv"
#: Image files a folder is searched for (besides OME-Zarr stores); bioio formats included.
FOLDER_SUFFIXES = (*IMAGE_SUFFIXES, *BIOIO_SUFFIXES)
#: How results are named; a search of a folder leaves them out.
OUTPUT_SUFFIXES = ("_cells.tif", "_cells.ome.zarr", "_disagreement.tif")
_PLUGIN = "napari-mutualseg-model"

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
        Labels as TIFF or as OME-Zarr written block by block (2D images).
    pixel_size : PixelSize, optional
        Written with the labels and used for the measurements (default: each file's own).
    disagreement : bool
        Also write where the two networks disagree (``_disagreement.tif``, uint8, 255 =
        opposite) and the cells to check (``_disagreement.csv``); single-plane images only.
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

    def complete(self) -> bool:
        """Every output is there (each is written whole or not at all, the table last)."""
        return all(p.exists() for p in self.outputs)


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


# ---------------------------------------------------------------------- inputs and outputs


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        path.suffix == ".zarr" or any((path / m).exists() for m in (".zattrs", "zarr.json"))
    )


def _images_in(folder: Path) -> list[Path]:
    """Image files and OME-Zarr stores in ``folder`` and its subfolders, sorted; hidden
    entries (temporary files among them) are left out."""
    found: list[Path] = []
    for here, dirs, files in os.walk(folder):
        base = Path(here)
        visible = [d for d in sorted(dirs) if not d.startswith(".")]
        found += [base / d for d in visible if _is_zarr(base / d)]
        dirs[:] = [d for d in visible if not _is_zarr(base / d)]
        found += [
            base / name
            for name in files
            if not name.startswith(".") and name.lower().endswith(FOLDER_SUFFIXES)
        ]
    return sorted(found)


def _an_output(path: Path, out_dir: Path | None) -> bool:
    """A result of an earlier run (in the output folder, named as results are)."""
    return (
        out_dir is not None
        and path.name.endswith(OUTPUT_SUFFIXES)
        and out_dir in path.resolve().parents
    )


def find_images(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None):
    """The image files that inputs name: files, folders (searched with their subfolders)
    and glob patterns (``plate1/**/*.tif``), each image once, in the order given.

    Parameters
    ----------
    inputs : sequence of str or path-like
        What to segment.
    out_dir : str or path-like, optional
        The output folder: the results in it are not taken for inputs when a folder or a
        pattern is searched (it may be, or lie inside, an input folder).

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    FileNotFoundError
        When an input names nothing.
    ValueError
        When the inputs hold no image at all.
    """
    results = Path(out_dir).resolve() if out_dir is not None else None
    found: list[Path] = []
    for given in inputs:
        text = os.fspath(given)
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"Nothing matches {text}: no file or folder found.")
        else:
            path = Path(text)
            if not path.exists():
                raise FileNotFoundError(f"{text} not found: no such file or folder.")
            if not path.is_dir() or _is_zarr(path):
                found.append(path)  # named by the user: taken as it is
                continue
            matches = [path]
        for path in matches:
            searched = _images_in(path) if path.is_dir() and not _is_zarr(path) else [path]
            found += [p for p in searched if not _an_output(p, results)]
    seen: set[str] = set()
    unique = []
    for path in found:  # a folder and a pattern may name the same file
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    if not unique:
        raise ValueError(
            f"No images in {', '.join(map(os.fspath, inputs))}: give image files, folders "
            f"holding {', '.join(sorted({s.lstrip('.') for s in FOLDER_SUFFIXES}))} files or "
            "OME-Zarr stores, or patterns such as 'plate1/*.tif'."
        )
    return unique


def plan_jobs(
    images: Sequence[Path],
    out_dir: str | os.PathLike,
    options: BatchOptions,
    disagreement_dir: str | os.PathLike | None = None,
) -> list[ImageJob]:
    """One job per image: outputs keep the images' folders below ``out_dir``
    (:func:`napari_mutualseg.io.output_paths`), so they never collide."""
    labels = output_paths(images, out_dir, suffix=options.label_suffix)
    tables = output_paths(images, out_dir, suffix="_cells.csv")
    maps: list[Any] = [None] * len(images)
    if options.disagreement:
        folder = out_dir if disagreement_dir is None else disagreement_dir
        tifs = output_paths(images, folder, suffix="_disagreement.tif")
        csvs = output_paths(images, folder, suffix="_disagreement.csv")
        maps = list(zip(tifs, csvs, strict=True))
    common = os.path.commonpath([os.path.abspath(p.parent) for p in images])
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


def read_table(path: str | os.PathLike) -> Table:
    """A table of numbers written by :func:`napari_mutualseg.io.write_table`."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty; it is not a cell table.")
    header, body = rows[0], rows[1:]
    if any(len(row) != len(header) for row in body):
        raise ValueError(f"{path} has rows of another length than its header.")
    return {name: _numbers([r[i] for r in body]) for i, name in enumerate(header)}


def _numbers(texts: list[str]) -> np.ndarray:
    """A column of a table: int64 when every value is a whole number as written, else float."""
    try:
        return np.asarray([int(t) for t in texts], np.int64)
    except ValueError:
        return np.asarray(texts, np.float64)


# ---------------------------------------------------------------------- one image


def measure_image(labels: np.ndarray, image: AxisImage, pixel_size: PixelSize | None) -> Table:
    """Measure the cells of ``labels`` (``image.label_axes``) in every channel of ``image``.

    A time series is measured frame by frame, with the frame in a first column ``t``.
    """
    data = image.data
    names = image.channel_names
    if "C" in image.axes and names is None:
        names = tuple("RGBA"[: image.n_channels]) if image.rgb else None
    axes = image.label_axes
    spacing = None
    unit = "um"
    if pixel_size is not None:
        spacing = [pixel_size.y, pixel_size.x]
        if "Z" in axes:
            spacing = [image.pixel_size["Z"], *spacing] if "Z" in image.pixel_size else None
        unit = pixel_size.symbol
    frames = range(labels.shape[0]) if "T" in axes else [None]
    tables = []
    for t in frames:
        frame_labels = labels if t is None else labels[t]
        frame = np.asarray(data if t is None else data[t])
        table = measure_cells(
            np.asarray(frame_labels), frame, channel_names=names, pixel_size=spacing, unit=unit
        )
        if t is not None:
            table = {"t": np.full(len(table["label"]), t, np.int64), **table}
        tables.append(table)
    if len(tables) == 1:
        return tables[0]
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def _peak_memory() -> int | None:
    """Peak resident memory of this process in bytes (Linux: VmHWM, which, unlike
    ``ru_maxrss``, does not carry over the parent's peak into a spawned worker)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (ValueError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """The labels a run wrote: a TIFF, or level 0 of an OME-Zarr store."""
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        return np.asarray(zarr.open_group(str(path), mode="r")["0"])
    from .io import read_image

    return np.asarray(read_image(path))


def _segment(
    pair: ModelPair, image: AxisImage, job: ImageJob, options: BatchOptions, pixel_size, overwrite
) -> tuple[np.ndarray, list[str]]:
    """Segment one image and write its labels (and disagreement map); the labels."""
    notes: list[str] = []
    common = {
        "channels": options.channels,
        "rgb": options.rgb,
        "tile_size": options.tile_size,
        "overlap": options.overlap,
        "min_size": options.min_size,
        "name": job.name,
    }
    if job.disagreement is not None:
        if image.n_planes > 1:
            raise ValueError(
                f"{image.n_planes} planes: disagreement maps take single-plane images."
            )
        result = pair.predict(image, **common)
        labels = result.labels
    else:
        blocks = options.block_size is not None or options.out_format == "zarr"
        more = {"halo": options.halo}
        if blocks:
            from .blockwise import DEFAULT_BLOCK_SIZE

            if image.n_planes != 1:
                raise ValueError(
                    f"{image.n_planes} planes: block by block takes one 2D image per file; "
                    "leave out the block size and the zarr format for stacks."
                )
            more.update(blockwise=True, block_size=options.block_size or DEFAULT_BLOCK_SIZE)
        else:
            more.update(link=options.link, track=options.track)
        if options.out_format == "zarr":
            from .ome import labels_zarr

            with labels_zarr(
                job.labels, image.plane_shape, pixel_size=pixel_size, overwrite=overwrite
            ) as out:
                pair.segment(image, out=out, **common, **more)
            return read_labels(job.labels), notes
        labels = pair.segment(image, **common, **more)
    write_labels(job.labels, labels, overwrite=overwrite, pixel_size=pixel_size)
    if job.disagreement is not None:
        from .disagreement import spot_table

        tif, table = job.disagreement
        quantised = np.round(result.disagreement.astype(np.float32) * 255).astype(np.uint8)
        write_labels(tif, quantised, overwrite=overwrite)
        write_table(table, spot_table(result.spots), overwrite=overwrite)
        notes.append(f"{len(result.spots)} cells and regions to check")
    return labels, notes


def process_image(
    pair: ModelPair, job: ImageJob, options: BatchOptions, *, overwrite: bool = False
) -> ImageResult:
    """Segment, write, measure one image; never raises for a problem with the image.

    Labels that an earlier, interrupted run wrote (without ``overwrite``) are measured, not
    segmented again.

    Parameters
    ----------
    pair : ModelPair
        The trained networks.
    job : ImageJob
        The image and its outputs.
    options : BatchOptions
        How to read and segment it.
    overwrite : bool
        Replace existing outputs.

    Returns
    -------
    ImageResult
        ``status`` ``"done"``, or ``"failed"`` with the reason.
    """
    from .images import AxisImage
    from .ome import PixelSize

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = AxisImage.from_file(job.source, axes=options.axes)
            pixel_size = options.pixel_size or PixelSize.of(image)
            if job.labels.exists() and not overwrite:
                labels, notes = read_labels(job.labels), ["labels kept from an earlier run"]
            elif job.table.exists() and not overwrite:
                raise FileExistsError(
                    f"{job.table} exists without the labels {job.labels.name}; move it away, "
                    "or segment again with --overwrite."
                )
            else:
                labels, notes = _segment(pair, image, job, options, pixel_size, overwrite)
            table = measure_image(labels, image, pixel_size)
            write_table(job.table, table, overwrite=overwrite)  # last: marks the image complete
        except Exception as err:
            return ImageResult(
                job,
                "failed",
                seconds=time.perf_counter() - t0,
                reason=_reason(err),
                peak_memory=_peak_memory(),
            )
    notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return ImageResult(
        job,
        "done",
        cells=len(table["label"]),
        seconds=time.perf_counter() - t0,
        reason="; ".join(notes),
        summary=summarize(job.name, table),
        peak_memory=_peak_memory(),
        shape=tuple(labels.shape),
        axes=image.label_axes,
        read=image.describe() + (f" ({'; '.join(image.notes)})" if image.notes else ""),
    )


# ---------------------------------------------------------------------- dask workers


class _ModelPlugin(WorkerPlugin):
    """Loads the model once on every worker (also on workers that join later).

    Carries the model file's bytes, so that workers need not see the file; on a worker with
    GPUs, each worker of a host takes its own GPU, and CPU workers share the host's cores.
    """

    name = _PLUGIN

    def __init__(self, model: bytes, device: str, ranks: dict[str, tuple[int, int]]) -> None:
        self.model = model
        self.device = device
        self.ranks = ranks  # worker address -> (index on its host, task threads on its host)
        self.pair: ModelPair | None = None
        self.threads: int | None = None  # torch CPU threads per task

    def setup(self, worker: Any) -> None:
        import torch

        from .models import ModelPair

        rank, host_threads = self.ranks.get(worker.address, (0, worker.state.nthreads))
        device = self.device
        self.threads = None
        if device == "auto" and torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}"
        elif device in ("auto", "cpu"):
            self.threads = max(1, (os.cpu_count() or 1) // max(1, host_threads))
        with tempfile.TemporaryDirectory(dir=worker.local_directory) as folder:
            path = Path(folder) / "model.pt"
            path.write_bytes(self.model)
            self.pair = ModelPair.load(path, device=device)

    def teardown(self, worker: Any) -> None:
        self.pair = None


def _on_worker(job: ImageJob, options: BatchOptions, overwrite: bool) -> ImageResult:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[_PLUGIN]
    if plugin.threads is not None:
        import torch

        # Per calling thread (OpenMP), and dask starts workers with OMP_NUM_THREADS=1: set
        # in the thread that runs the task, the cores of the host shared among its workers.
        torch.set_num_threads(plugin.threads)
    result = process_image(plugin.pair, job, options, overwrite=overwrite)
    result.worker = worker.address
    return result


def _ranks(client: Any) -> dict[str, tuple[int, int]]:
    """Each worker's index among the workers of its host, and the task threads of that host."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    by_host: dict[str, list[str]] = {}
    for address, info in sorted(workers.items()):
        by_host.setdefault(info["host"], []).append(address)
    ranks = {}
    for addresses in by_host.values():
        threads = sum(workers[a]["nthreads"] for a in addresses)
        ranks.update({a: (i, threads) for i, a in enumerate(addresses)})
    return ranks


def default_workers() -> int:
    """Local workers for a run: one per GPU; on CPUs one per two cores (at least one)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 2)


# ---------------------------------------------------------------------- the run


@dataclass
class BatchRun:
    """A run over many images: iterate to get an :class:`ImageResult` per image.

    Complete images (from an earlier run) come first as ``"skipped"``, then one result as each
    image is finished, in any order. :meth:`cancel` (thread-safe) stops the run between
    images; the images not reached come as ``"not done"``. ``summary.csv`` and
    ``run_report.csv`` are written in ``out_dir`` when the iteration ends, however it ends.

    Parameters
    ----------
    model : str, path-like or ModelPair
        The trained pair, or its file.
    inputs : sequence of str or path-like
        Image files, folders, glob patterns, OME-Zarr stores (see :func:`find_images`).
    out_dir : str or path-like
        Output folder; the inputs' folders are kept below it.
    options : BatchOptions
        How to read and segment the images.
    overwrite : bool
        Segment every image again and replace its outputs.
    workers : int, optional
        ``0``: in this process, one image after another. ``n``: a LocalCluster of ``n``
        worker processes. Default: in this process for a single image, else
        :func:`default_workers`.
    scheduler : str, optional
        Address of an existing dask scheduler (``tcp://host:8786``) to run on instead.
    device : str
        ``"auto"`` (CUDA, MPS, CPU), or e.g. ``"cpu"`` or ``"cuda:1"``.
    disagreement_dir : str or path-like, optional
        Where disagreement maps go (with ``options.disagreement``; default ``out_dir``).

    Raises
    ------
    FileNotFoundError, ValueError
        When an input names nothing, the inputs hold no image, two images would write the
        same output, the model cannot be read, or the options do not fit the model (checked
        on the first image that opens, before any work).
    OSError
        When the output folder cannot be written.

    Examples
    --------
    >>> run = BatchRun("model.pt", ["plate1/"], "results/", BatchOptions())
    >>> for result in run:
    ...     print(result.job.name, result.status, result.cells)
    """

    model: Any
    inputs: Sequence[str | os.PathLike]
    out_dir: str | os.PathLike
    options: BatchOptions = field(default_factory=BatchOptions)
    overwrite: bool = False
    workers: int | None = None
    scheduler: str | None = None
    device: str = "auto"
    disagreement_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        images = find_images(self.inputs, self.out_dir)
        self.jobs = plan_jobs(images, self.out_dir, self.options, self.disagreement_dir)
        for path in (self.out_dir / SUMMARY_NAME, self.out_dir / REPORT_NAME):
            check_writable(path, overwrite=True)
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}.")
        self.pair = self._load(self.model)
        self._check_options()
        self.results: list[ImageResult] = []
        self._cancelled = threading.Event()
        self.where = ""

    def _load(self, model: Any) -> ModelPair:
        from .models import ModelPair

        if isinstance(model, ModelPair):
            return model
        # checked here, so that a bad file is one message, not a failure on every worker
        return ModelPair.load(model, device=self.device)

    def _check_options(self) -> None:
        """The options against the model, on the first image to do that opens: a wrong
        channel is one message now, not a failure on every image later."""
        from .images import AxisImage

        # stops at the first image to do: completeness is not checked for the whole list here
        for job in filter(self._to_do, self.jobs):
            try:
                image = AxisImage.from_file(job.source, axes=self.options.axes, lazy=True)
            except Exception:  # that image will be reported as failed; try the next one
                continue
            self.pair.network_input(
                image, channels=self.options.channels, rgb=self.options.rgb, name=job.name
            )
            return

    @property
    def todo(self) -> list[ImageJob]:
        """The jobs this run segments (all with ``overwrite``, else the incomplete ones)."""
        return list(filter(self._to_do, self.jobs))

    def _to_do(self, job: ImageJob) -> bool:
        return self.overwrite or not job.complete()

    def cancel(self) -> None:
        """Stop between images (thread-safe); finished images are kept."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[ImageResult]:
        todo = set(self.todo)
        try:
            for job in self.jobs:
                if job not in todo:
                    yield self._record(self._skipped(job))
            pending = [j for j in self.jobs if j in todo]
            workers = self.workers
            if workers is None:  # a cluster of one worker only adds its start-up
                workers = default_workers() if len(pending) > 1 else 0
                workers = 0 if workers == 1 else workers
            if self.scheduler is None and workers == 0:
                self.where = "in this process"
                results: Iterator[ImageResult] = self._here(pending)
            else:
                results = self._on_dask(pending, workers)
            for result in results:
                todo.discard(result.job)
                yield self._record(result)
        finally:
            for job in self.jobs:
                if job in todo:
                    self._record(ImageResult(job, "not done"))
            self.write_reports()

    def _record(self, result: ImageResult) -> ImageResult:
        self.results.append(result)
        return result

    def _skipped(self, job: ImageJob) -> ImageResult:
        try:
            table = read_table(job.table)
        except (OSError, ValueError) as err:
            return ImageResult(job, "failed", reason=f"{job.table}: {_reason(err)}")
        summary = summarize(job.name, table)
        return ImageResult(job, "skipped", cells=int(summary["cells"]), summary=summary)

    def _here(self, jobs: list[ImageJob]) -> Iterator[ImageResult]:
        for job in jobs:
            if self.cancelled:
                return
            yield process_image(self.pair, job, self.options, overwrite=self.overwrite)

    def _on_dask(self, jobs: list[ImageJob], workers: int) -> Iterator[ImageResult]:
        from distributed import Client, LocalCluster, as_completed

        if not jobs:
            return
        logging.getLogger("distributed").setLevel(logging.ERROR)
        cluster = None
        if self.scheduler is not None:
            client = Client(self.scheduler, timeout="30s")
            self.where = f"on the dask cluster at {self.scheduler}"
        else:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
            self.where = f"on {workers} local dask worker{'s' if workers > 1 else ''}"
        try:
            client.wait_for_workers(1, timeout=120)
            client.register_plugin(_ModelPlugin(self._model_bytes(), self.device, _ranks(client)))
            futures = client.map(
                _on_worker,
                jobs,
                options=self.options,
                overwrite=self.overwrite,
                pure=False,
                key=[f"segment-{i}-{j.name}" for i, j in enumerate(jobs)],
            )
            by_key = {f.key: job for f, job in zip(futures, jobs, strict=True)}
            for future in as_completed(futures):
                if self.cancelled:
                    client.cancel(futures)
                    return
                try:
                    yield future.result()
                except Exception as err:  # the worker died (memory, a crash): the image failed
                    yield ImageResult(by_key[future.key], "failed", reason=_reason(err))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _model_bytes(self) -> bytes:
        if isinstance(self.model, (str, os.PathLike)):
            return Path(self.model).read_bytes()
        with tempfile.TemporaryDirectory() as folder:
            return self.pair.save(Path(folder) / "model.pt").read_bytes()

    # ------------------------------------------------------------------ reports

    def counts(self) -> dict[str, int]:
        """Images by status so far."""
        counts = dict.fromkeys(("done", "skipped", "failed", "not done"), 0)
        for result in self.results:
            counts[result.status] += 1
        return counts

    def results_in_order(self) -> list[ImageResult]:
        """The results so far in the order of the inputs (they arrive as images finish)."""
        order = {job: i for i, job in enumerate(self.jobs)}
        return sorted(self.results, key=lambda r: order[r.job])

    def write_reports(self) -> tuple[Path, Path]:
        """Write ``summary.csv`` (one row per image with cells) and ``run_report.csv`` (every
        image's status and reason), in the inputs' order; both replaced at every run."""
        from .export import table_csv
        from .io import write_text

        results = self.results_in_order()
        rows = [r.summary for r in results if r.summary is not None]
        columns = list(dict.fromkeys(k for row in rows for k in row)) or ["image", "cells"]
        summary = [{k: row.get(k, "") for k in columns} for row in rows]
        text = table_csv(summary) if summary else ",".join(columns) + "\n"
        summary_path = write_text(self.out_dir / SUMMARY_NAME, text, overwrite=True)
        report = [r.report_row() for r in results]
        report_path = write_text(self.out_dir / REPORT_NAME, table_csv(report), overwrite=True)
        return summary_path, report_path
