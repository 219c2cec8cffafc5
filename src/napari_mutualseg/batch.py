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
different folders never collide; every file is written atomically, a record of what makes the
results first (``<name>_cells.json``: source, model fingerprint, options) and the table last,
so a killed run leaves complete images and nothing half-written; a rerun skips images whose
outputs are complete (and measures an image whose labels were written but not its table),
after checking that the files there are its own results, not another image's, model's or
user's; a bad image is recorded as failed with its reason and the others go on. On dask, the
workers are checked before any image: their versions of this package, torch and numpy, and
that they see the first image and can write in DIR.
``summary.csv`` (one row per image with results in DIR) and ``run_report.csv`` (what this run
did to each image) are written in DIR at the end of every run, also an interrupted one, and
``wells.csv`` (the same images per well of a plate) when every image's name says its well
(:func:`well_table`).

The parts live beside this module: :mod:`napari_mutualseg.jobs` finds the images and plans
their outputs, :mod:`napari_mutualseg.image_task` does one image, and
:mod:`napari_mutualseg.cluster` runs them on dask; what a script needs is importable from here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cluster
from .cluster import (
    WorkerUnfitError,
    check_scheduler,
    dask_client,
    default_workers,
    submit_jobs,
    wait_for_a_worker,
)
from .devices import describe_device
from .files import ResultExistsError, disk_full
from .image_task import (
    error_reason,
    measure_image,
    process_image,
    read_labels,
    read_table,
)
from .io import check_writable
from .jobs import (
    RECORD_SUFFIX,
    BatchOptions,
    ImageJob,
    ImageResult,
    Status,
    find_images,
    layout_base,
    plan_jobs,
)
from .measure import summarize

if TYPE_CHECKING:
    from .models import ModelPair

__all__ = [
    "REPORT_NAME",
    "SUMMARY_NAME",
    "WELLS_NAME",
    "BatchOptions",
    "BatchRun",
    "ImageJob",
    "ImageResult",
    "find_images",
    "measure_image",
    "plan_jobs",
    "process_image",
    "read_labels",
    "read_table",
    "well_table",
]

#: Written in the output folder at the end of every run.
SUMMARY_NAME = "summary.csv"
REPORT_NAME = "run_report.csv"
#: Written beside them when the images' names say their plate's wells.
WELLS_NAME = "wells.csv"
#: Images the options are checked on before any work: the run is refused only when none fits.
_CHECKED_IMAGES = 3
#: Seconds a stopped run on dask waits for the images in progress: each stops between two
#: planes or blocks, and an image of one plane or block finishes (a batch system kills the
#: job some time after its SIGTERM: SLURM's KillWait is 30 s by default).
STOP_SECONDS = 10.0


@dataclass
class BatchRun:
    """A run over many images: iterate to get an :class:`ImageResult` per image.

    Complete images (from an earlier run) come first as ``"skipped"``, then one result as each
    image is finished, in any order; iterated again, it runs again (:attr:`results` and the
    reports are the new pass's). :meth:`cancel` (thread-safe) stops the run: images in
    progress are left between two planes or blocks, with nothing of them written, and they
    and the images not reached come as ``"not done"``; an image of one plane or block in
    progress finishes, and comes as ``"done"`` as the others (on dask, when it ends within
    :data:`STOP_SECONDS`; later, it comes as ``"not done"``, and its results are kept
    should its worker finish it as the run ends). ``summary.csv`` and
    ``run_report.csv`` (and ``wells.csv`` for a plate, :attr:`wells`) are written in
    ``out_dir`` when the iteration ends, however it ends.

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
        :func:`default_workers`. Not with ``scheduler``.
    scheduler : str, optional
        Address of an existing dask scheduler (``tcp://host:8786``) to run on instead, on
        the workers it has (and those that join it).
    device : str
        ``"auto"`` (CUDA, MPS, CPU), or e.g. ``"cpu"`` or ``"cuda:1"``.
    disagreement_dir : str or path-like, optional
        Where disagreement maps go (with ``options.disagreement``; default ``out_dir``).
    on_start : callable, optional
        Called with :attr:`where` (``"in this process on cuda:0 (...)"``, ``"on 4 local dask
        workers"``) once it is known, before the first image is segmented, in the thread
        that iterates: a long run's log says where it segments from the start. Not called
        when every image is complete already.

    Raises
    ------
    FileNotFoundError, ValueError
        When an input names nothing, the inputs hold no image, two images would write the
        same output, the model cannot be read, or the options do not fit the model (checked
        on the first images that open, before any work: refused when none of them fits).
    OSError
        When the output folder (or that of the disagreement maps) cannot be written, or no
        dask scheduler answers at ``scheduler``
        (:func:`~napari_mutualseg.cluster.check_scheduler`).

    Iterating raises :class:`~napari_mutualseg.cluster.WorkerVersionError` (a ValueError)
    when the dask workers run other versions of this package, torch or numpy, and
    :class:`~napari_mutualseg.cluster.WorkerLoadError` (an OSError) when the model does not
    load on one of them, before any image is started. A worker that joins later with other
    versions, or on which the model does not load, segments none of the run's images: it hands
    each back at once, and it goes to the other workers as a thread of theirs comes free (never
    to it again); a warning names the worker and says what to do. It raises an OSError when
    the disk (or quota) of the results fills up: the run stops there, as every image after
    would be segmented only to fail the same way; those not finished are not done, and a
    rerun once there is space segments them.

    Examples
    --------
    In a script, under ``if __name__ == "__main__":``: local dask workers start by importing
    the script again.

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
    on_start: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        images = find_images(self.inputs)
        self.jobs = plan_jobs(
            images,
            self.out_dir,
            self.options,
            self.disagreement_dir,
            base=layout_base(self.inputs),
        )
        for path in (self.out_dir / SUMMARY_NAME, self.out_dir / REPORT_NAME):
            _check_report_place(path)
        # the maps may go elsewhere (disagreement_dir): a folder they cannot go to would fail
        # every image, each after its segmentation
        maps = {path.parent: path for job in self.jobs for path in job.disagreement or ()}
        for path in maps.values():
            check_writable(path, overwrite=True)
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers (--workers) must be 0 or more, got {self.workers}.")
        if self.workers is not None and self.scheduler is not None:
            # a user who asks for both expects n workers on the cluster: say who decides that
            raise ValueError(
                "workers (--workers) starts dask workers on this machine, scheduler "
                "(--scheduler) runs on the cluster's own workers: give one of them (more "
                "workers on a cluster: start them there with dask worker, or scale it)."
            )
        if self.scheduler is not None:
            check_scheduler(self.scheduler)  # a wrong address is refused before any work
        self.pair = self._load(self.model)
        self.fingerprint = self.pair.fingerprint()
        if not self.overwrite:
            self._check_earlier_results()
        self._check_options()
        self.results: list[ImageResult] = []
        self._cancelled = threading.Event()
        self.where = ""
        #: ``wells.csv`` once written and its rows (:func:`well_table`), and why none was
        #: when the image names are mixed.
        self.wells: Path | None = None
        self.well_rows: list[dict[str, Any]] = []
        self.wells_note = ""

    def _load(self, model: Any) -> ModelPair:
        from .models import ModelPair

        if isinstance(model, ModelPair):
            return model
        # checked here, so that a bad file is one message, not a failure on every worker
        return ModelPair.load(model, device=self.device)

    def _check_earlier_results(self) -> None:
        """Files at the outputs' places must be this run's own earlier results (same image,
        model and options), never another image's or the user's: a rerun then skips them.

        Only images with results are looked at: the record of an image reads the start of its
        file, which a screen of thousands on a network share would pay for before any work."""
        conflicts = [
            reason
            for job in self.jobs
            if job.has_results()
            and (reason := job.conflict(job.provenance(self.fingerprint, self.options)))
        ]
        if conflicts:
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise ResultExistsError(
                f"{conflicts[0]}{more}",
                remedy="choose another output folder",
                what="these results",
            )

    def _check_options(self) -> None:
        """The options against the model and the files, on the first images to do that
        open: a wrong channel, or axes that do not fit (ZYX for planes), is one message now,
        not a failure on every image later.

        Refused when none of the first :data:`_CHECKED_IMAGES` fits; one image that
        does not fit (an overview among a plate's fields) is reported failed in its turn, and
        the others are segmented. Not checked when images of the run are complete already:
        their records say that this model and these options made them.
        """
        from .images import AxisImage

        if not all(map(self._to_do, self.jobs)):
            return
        first: ValueError | None = None
        checked = 0
        # stops at the first image that fits: completeness is not checked for the whole list
        for job in filter(self._to_do, self.jobs):
            try:
                image = AxisImage.from_file(job.source, axes=self.options.axes, lazy=True)
            except ValueError as err:
                # axes given that do not fit (ZYX for a plane) may be every image's mistake;
                # a file that does not open at all is that image's failure, in its turn
                if not (self.options.axes and self._opens(job)):
                    continue
                problem = err
            except Exception:
                continue
            else:
                try:
                    self.pair.network_input(
                        image, channels=self.options.channels, rgb=self.options.rgb, name=job.name
                    )
                    return
                except ValueError as err:
                    problem = err
            first = first or problem
            checked += 1
            if checked == _CHECKED_IMAGES:
                break
        if first is not None:
            raise first

    @staticmethod
    def _opens(job: ImageJob) -> bool:
        """Whether ``job``'s image opens without the run's axes (its own, or none known):
        then the axes given are what does not fit it, not the file."""
        from .images import AxisImage
        from .readers import AxesUnknownError

        try:
            AxisImage.from_file(job.source, lazy=True)
        except AxesUnknownError:
            return True
        except Exception:
            return False
        return True

    @property
    def todo(self) -> list[ImageJob]:
        """The jobs this run segments (all with ``overwrite``, else the incomplete ones)."""
        return list(filter(self._to_do, self.jobs))

    def _to_do(self, job: ImageJob) -> bool:
        return self.overwrite or not job.complete()

    def cancel(self) -> None:
        """Stop the run (thread-safe): images in progress are left between two planes or
        blocks, with nothing of them written (an image of one plane or block finishes);
        finished images are kept."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[ImageResult]:
        # each pass is a run of its own, its reports of its results only: a second one
        # skips what the first finished, and would count those twice
        self.results = []
        todo = set(self.todo)
        results: Generator[ImageResult, None, None] | None = None
        try:
            for job in self.jobs:
                if job not in todo:
                    yield self._record(self._from_disk(job, "skipped"))
            if self.cancelled:  # while the complete images were told: nothing is started
                return
            pending = [j for j in self.jobs if j in todo]
            workers = self.workers
            if workers is None:  # a cluster of one worker only adds its start-up
                workers = default_workers() if len(pending) > 1 else 0
                workers = 0 if workers == 1 else workers
            if pending:  # a worker without an image only loads torch and the model
                workers = min(workers, len(pending))
            if self.scheduler is None and workers == 0:
                self.where = f"in this process on {describe_device(self.pair.device)}"
                if pending:
                    self._started()
                results = self._here(pending)
            else:
                results = self._on_dask(pending, workers)
            for result in results:
                todo.discard(result.job)
                yield self._record(result)
        finally:
            if results is not None:  # its cluster closed, before the images left are told
                results.close()
            for job in self.jobs:
                if job in todo:
                    self._record(self._left(job))
            self.write_reports()

    def _started(self) -> None:
        if self.on_start is not None:
            self.on_start(self.where)

    def _left(self, job: ImageJob, in_progress: bool = False) -> ImageResult:
        """The result of an image the run did not finish when it stopped: not done.

        ``in_progress``: an image that had not ended :data:`STOP_SECONDS` after the stop. Its
        worker may still finish it as the run ends (local workers have a few seconds to end
        their task as they close; a cluster that outlives the run finishes an image of one
        plane or block): not done all the same, as it was never given as done, but its
        complete results are kept, with their row in the summary. With ``overwrite``, the
        results of an image not reached are an earlier run's, their row kept in the summary
        (the folder holds them). On this machine, where the run's workers are gone by now,
        the record of an image left without any result is removed.
        """
        if not job.complete():
            if self.scheduler is None:
                # its worker (this process, or a local one, closed with the run) is gone: a
                # record it wrote as the image started stands for nothing
                job.drop_lone_record()
            reason = ""
            if in_progress:
                reason = (
                    f"not finished {STOP_SECONDS:g} s after the run was stopped: left "
                    "unfinished, a rerun segments it"
                )
            return ImageResult(job, "not done", reason=reason)
        result = self._from_disk(job, "not done")
        if result.status != "not done":
            return result
        if in_progress or not self.overwrite:  # incomplete at the start: finished now
            result.reason = (
                "finished as the run ended, after it stopped waiting for it: its results are "
                "kept" + ("" if self.overwrite else ", and a rerun skips it")
            )
        else:
            result.reason = (
                "stopped before it was segmented again: its results are an earlier run's"
            )
        return result

    def _record(self, result: ImageResult) -> ImageResult:
        self.results.append(result)
        return result

    def _from_disk(self, job: ImageJob, status: Status) -> ImageResult:
        """The result of a complete image, read from its table."""
        try:
            table = read_table(job.table)
        except (OSError, ValueError) as err:
            return ImageResult(job, "failed", reason=f"{job.table}: {error_reason(err)}")
        summary = summarize(job.name, table, tracked=self.options.track)
        return ImageResult(job, status, cells=int(summary["cells"]), summary=summary)

    def _here(self, jobs: list[ImageJob]) -> Generator[ImageResult, None, None]:
        for job in jobs:
            if self.cancelled:
                return
            yield process_image(
                self.pair,
                job,
                self.options,
                overwrite=self.overwrite,
                fingerprint=self.fingerprint,
                stop=self._cancelled.is_set,  # a large image is left between planes or blocks
            )

    def _on_dask(self, jobs: list[ImageJob], workers: int) -> Generator[ImageResult, None, None]:
        from distributed import as_completed

        if not jobs:
            return
        sent = [job.absolute() for job in jobs]  # workers may run in other folders
        late: list[ImageJob] = []  # in progress when a stop's wait ended
        # the reports go there at the end anyway; made now, so that the workers can be
        # asked whether they see it
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            try:
                client, where = stack.enter_context(dask_client(self.scheduler, workers))
            except Exception:
                # Ctrl-C or SIGTERM reaches the whole process group: local workers starting
                # then die of it ('Nanny failed to start'), before they are told to leave it
                # to this process. The run was stopped, not failed: its images are not done.
                if self.cancelled:
                    return
                raise
            # a cluster whose workers are still queued (a batch system's) is waited for
            # until the run is stopped
            if not wait_for_a_worker(client, self._cancelled.is_set):
                return
            self.where = where
            self._started()  # before the images go to the workers
            submitted = stack.enter_context(
                submit_jobs(
                    client,
                    sent,
                    self.options,
                    overwrite=self.overwrite,
                    model=self._model_bytes(),
                    device=self.device,
                    fingerprint=self.fingerprint,
                    visible=[sent[0].source, os.path.abspath(self.out_dir)],
                    writable=[os.path.abspath(self.out_dir)],
                )
            )
            futures = submitted.futures
            # the first images: those held back (a small run) are sent as threads come free
            by_key = {f.key: job for f, job in zip(futures, jobs[: len(futures)], strict=True)}
            absolute = dict(zip(jobs, sent, strict=True))  # an image sent later goes as sent
            pending = as_completed(futures, loop=client.loop)  # not the default client
            # the workers whose versions were checked (submit_jobs checks them at the start)
            seen = set(client.scheduler_info(n_workers=-1)["workers"])
            problem: str | None = None
            unfit: dict[str, str] = {}  # workers that joined and cannot segment the images
            workers_gone = _Absence(client, unfit)
            # images held back and images handed back, sent as threads of the workers (but
            # those that cannot segment them) come free
            waiting = collections.deque(jobs[len(futures) :])
            while not pending.is_empty() or waiting:
                # a stop is seen while images are in progress, not when the next one ends
                if self._cancelled.wait(0 if pending.has_ready() else 0.2):
                    late = yield from self._stopped(submitted, by_key)
                    break
                for again, job in _send_again(
                    submitted, waiting, unfit, pending.count(), absolute
                ):
                    by_key[again.key] = job
                    pending.add(again)
                if not pending.has_ready():
                    workers_gone.check(pending.count() + len(waiting))
                for future in pending.next_batch(block=False):
                    job = by_key.pop(future.key)
                    try:
                        result = dataclasses.replace(future.result(), job=job)
                    except WorkerUnfitError as err:
                        if err.worker not in unfit:
                            unfit[err.worker] = err.problem
                            warnings.warn(
                                f"{err.problem} Its images of this run go to the other workers.",
                                UserWarning,
                                stacklevel=2,
                            )
                        if submitted.threads(avoid=unfit):
                            waiting.append(job)
                            continue
                        result = ImageResult(job, "failed", reason=err.problem, worker=err.worker)
                    except Exception as err:  # a worker died (memory, a crash), or runs
                        # another version (one that joined since the start)
                        if disk_full(err):  # the run stops, as in this process
                            raise
                        problem = self._recheck(client, seen) or problem
                        local = workers if self.scheduler is None else None
                        reason = _task_failure(err, local) + (f"; {problem}" if problem else "")
                        job.drop_lone_record()  # written as the image started, on its worker
                        result = ImageResult(job, "failed", reason=reason)
                    yield result
        # told once the cluster is closed: its local workers may finish them as they close
        for job in late:
            yield self._left(job, in_progress=True)

    @staticmethod
    def _stopped(
        submitted: Any, by_key: dict[str, ImageJob]
    ) -> Generator[ImageResult, None, list[ImageJob]]:
        """The results of the images finished or in progress as the run stops, each as it
        ends (within :data:`STOP_SECONDS` of the stop): an image of one plane or block
        finishes and is kept, so it is told and counted as the others are. Returns the
        images that did not end in time (or whose worker died), for :meth:`_left` once the
        cluster is closed: their worker may still write them until then."""
        deadline = time.monotonic() + STOP_SECONDS
        late = []
        for future in submitted.stop(by_key):
            try:
                result = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # not ended in time, or its worker died
                late.append(by_key[future.key])
                continue
            yield dataclasses.replace(result, job=by_key[future.key])
        return late

    @staticmethod
    def _recheck(client: Any, seen: set[str]) -> str | None:
        """The versions of the workers that joined since the last check, when a task failed:
        a worker of another version fails in its own code. Asked once per set of workers."""
        from .cluster import version_problem

        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        if workers <= seen:
            return None
        seen.update(workers)
        return version_problem(client)

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
        """Write ``summary.csv`` and ``run_report.csv`` in ``out_dir``, and ``wells.csv``
        when the images' names say their wells (:func:`well_table`).

        ``summary.csv`` has one row per image whose results are in ``out_dir``: this run's in
        the inputs' order, then those of earlier runs into the same folder (a second plate
        adds to the first). ``run_report.csv`` says what this run did to each image.
        ``wells.csv`` sums up the same images per well: :attr:`wells` is its path (None when
        none is written, and :attr:`wells_note` says why when the names are mixed).
        """
        from .export import table_csv
        from .io import write_text

        results = self.results_in_order()
        rows = [r.summary for r in results if r.summary is not None] + self._earlier_rows()
        columns = list(dict.fromkeys(k for row in rows for k in row)) or ["image", "cells"]
        summary = [{k: row.get(k, "") for k in columns} for row in rows]
        text = table_csv(summary) if summary else ",".join(columns) + "\n"
        summary_path = write_text(self.out_dir / SUMMARY_NAME, text, overwrite=True)
        report = [r.report_row() for r in results]
        report_path = write_text(self.out_dir / REPORT_NAME, table_csv(report), overwrite=True)
        self._write_wells(rows)
        return summary_path, report_path

    def _write_wells(self, rows: list[dict[str, Any]]) -> None:
        """``wells.csv`` from the summary's ``rows``; an earlier run's is removed when these
        images say no wells, so that it never sums up other images than the summary."""
        from .export import table_csv
        from .io import write_text

        path = self.out_dir / WELLS_NAME
        self.well_rows, self.wells_note = well_table(rows)
        self.wells = None
        # a plate map of the user's (plate,well,treatment) is left alone
        if path.exists() and not _ours(path, "plate,well,row,column,images,cells"):
            if self.well_rows:
                self.wells_note = (
                    f"{path} is not a {WELLS_NAME} of an earlier run: no well table written "
                    "(move it away to get one)"
                )
            return
        if self.well_rows:
            self.wells = write_text(path, table_csv(self.well_rows), overwrite=True)
        else:
            path.unlink(missing_ok=True)

    def _earlier_rows(self) -> list[dict[str, Any]]:
        """Summary rows of the complete images in ``out_dir`` that this run did not plan."""
        ours = {os.path.realpath(job.record) for job in self.jobs}
        rows = []
        for record in sorted(self.out_dir.rglob(f"*{RECORD_SUFFIX}")):
            table = record.with_suffix(".csv")
            if os.path.realpath(record) in ours or not table.exists():
                continue
            try:
                found = json.loads(record.read_text())
                tracked = found["options"]["track"]
                rows.append(summarize(found["image"], read_table(table), tracked=tracked))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a result of this package: not summed up
        return rows


class _Absence:
    """Notices a cluster left without workers (their jobs' time is up, they were stopped):
    the run would wait for them for ever, saying nothing."""

    #: Seconds between two looks at the number of workers.
    LOOK_SECONDS = 5.0

    def __init__(self, client: Any, unfit: dict[str, str]) -> None:
        self.client = client
        self.unfit = unfit  # workers left out of the run, which count as none
        self.since: float | None = None
        self.next_look = time.monotonic() + self.LOOK_SECONDS

    def check(self, left: int) -> None:
        """Raise TimeoutError once the cluster has had no worker for
        :data:`~napari_mutualseg.cluster.WORKER_SECONDS`; ``left``: images not done."""
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + self.LOOK_SECONDS
        if self.unfit:  # every worker's address, only once some are left out
            workers = set(self.client.scheduler_info(n_workers=-1)["workers"]) - set(self.unfit)
        else:
            workers = self.client.scheduler_info(n_workers=0)["n_workers"]
        if workers:
            self.since = None
            return
        self.since = self.since or now
        if now - self.since >= cluster.WORKER_SECONDS:
            address = self.client.scheduler.address
            raise TimeoutError(
                f"The dask cluster at {address} has had no worker"
                f"{' that can segment the images' if self.unfit else ''} for "
                f"{cluster.WORKER_SECONDS} s, with {left} image{'s' if left > 1 else ''} not "
                f"done: start workers (dask worker {address}) or scale the cluster, then run "
                "again; the finished images are kept."
            )


def _send_again(
    submitted: Any,
    waiting: collections.deque[ImageJob],
    unfit: dict[str, str],
    in_flight: int,
    absolute: dict[ImageJob, ImageJob],
) -> list[tuple[Any, ImageJob]]:
    """Send the first images of ``waiting`` (held back at the start of a small run, or
    handed back by workers that cannot segment them), one per thread of the other workers
    that the run's ``in_flight`` images leave free; (future, job) of each sent, taken off
    ``waiting``.

    Sent at once, such an image is not held back by the scheduler as a large run's images
    are: it goes to a busy worker's queue, and counts a death of that worker (its image out
    of memory) as its own, failed after four.
    """
    sent: list[tuple[Any, ImageJob]] = []
    free = submitted.threads(avoid=unfit) - in_flight if waiting else 0
    while waiting and free > len(sent):
        again = submitted.send(absolute[waiting[0]], avoid=unfit)
        if again is None:  # no other worker now: once one joins
            break
        sent.append((again, waiting.popleft()))
    return sent


def _task_failure(err: BaseException, local: int | None = None) -> str:
    """Why an image's task failed on dask, for the report: dask's KilledWorker in the
    words of a person who has to do something about it. ``local``: the number of local
    workers, which share this machine's memory in equal parts (dask's memory limit per
    worker, past which its nanny ends it) and whose logs are not shown."""
    from dask.utils import format_bytes
    from distributed.scheduler import KilledWorker

    if not isinstance(err, KilledWorker):
        return error_reason(err)
    tries = getattr(err, "allowed_failures", 0) + 1
    if local is None:
        return (
            f"the dask worker segmenting it died, {tries} times (out of "
            "memory, most often; the workers' logs say why): give the workers more memory, "
            "or segment it block by block (--block-size)"
        )
    limit = getattr(getattr(err, "last_worker", None), "memory_limit", None)
    size = f", {format_bytes(limit)}" if limit else ""
    if local == 1:
        return (
            f"the local dask worker segmenting it died, {tries} times (out of memory, most "
            f"often: it has this machine's memory{size}): segment it block by block "
            "(--block-size), or on a machine with more memory"
        )
    return (
        f"the local dask worker segmenting it died, {tries} times (out of memory, most "
        f"often: each of the {local} local workers has 1/{local} of this machine's memory"
        f"{size}): segment it with fewer workers (--workers 1 gives one all of it), or "
        "block by block (--block-size)"
    )


def _ours(path: Path, start: str) -> bool:
    """Whether the table at ``path`` begins as this package's does (its first column)."""
    with open(path, newline="") as f:
        return f.readline().startswith(start)


def _check_report_place(path: Path) -> None:
    """The summary and the report are replaced at every run, so an existing file must be one
    an earlier run wrote (its first column ``image``), never a file of the user's."""
    check_writable(path, overwrite=True)
    if path.exists() and not _ours(path, "image,"):
        raise FileExistsError(
            f"{path} exists and is not a {path.name} of an earlier run; move it away or "
            "choose another output folder."
        )


# ---------------------------------------------------------------------------- plates

#: A plate's row: A to P (384 wells), AA to AF (1536).
_ROW = r"(A[A-F]|[A-P])"
#: How image names say their well, read on the file's name: Opera and Operetta (Harmony:
#: ``r02c03f01p01-ch1sk1fk1fl1.tiff``, row and column numbers), and the well as a word of
#: its own, first or after ``_`` (``B03_f1.tif``; MetaXpress and ImageXpress:
#: ``Plate1_B03_s1_w1.tif``).
_NAME_WELLS = (
    re.compile(r"^r(\d{2})c(\d{2})f\d+p\d+-ch\d+"),
    re.compile(rf"(?:^|_){_ROW}(\d{{1,2}})(?=[_.])"),
)
#: A folder per well (``B03/field1.tif``), when the file names say none.
_FOLDER_WELL = re.compile(rf"{_ROW}(\d{{1,2}})")
#: An OME-Zarr plate's well: a folder per row, and in it one per column (``B/3/0``: the
#: field ``0`` of well B03, as ``plate.zarr/*/*/*`` names it).
_ZARR_WELL = (re.compile(_ROW), re.compile(r"\d{1,2}"))
#: What a file's name says besides its field, where each channel, plane or time point of a
#: field is a file of its own: MetaXpress's wavelength (``_w2``), Harmony's plane, channel
#: and time point (``p01-ch2sk1``), Incucyte's time since the start (``A7_1_01d04h00m``).
_BESIDES_FIELD = re.compile(r"_w\d+|p\d+-ch\d+sk\d+|_\d+d\d+h\d+m")


def _row_letters(row: int) -> str:
    """1 -> A, 16 -> P, 27 -> AA."""
    return chr(64 + row) if row <= 26 else "A" + chr(64 + row - 26)


def _row_number(letters: str) -> int:
    return ord(letters[-1]) - 64 + (26 if len(letters) == 2 else 0)


def _wells_in_name(name: str) -> set[tuple[str, int, int]]:
    """(plate, row, column) of each well ``name``'s file name says; the plate is what comes
    before the well: the folder, and a name's first words (``Plate1`` of
    ``Plate1_B03_s1_w1.tif``)."""
    folder, _, file = name.rpartition("/")
    found = set()
    for pattern in _NAME_WELLS:
        for match in pattern.finditer(file):
            row, column = match.groups()
            number = int(row) if row.isdigit() else _row_number(row)
            prefix = file[: match.start()]
            found.add(("/".join(filter(None, (folder, prefix))), number, int(column)))
    return found


def _wells_in_folders(name: str) -> set[tuple[str, int, int]]:
    """(plate, row, column) of each folder of ``name`` named as a well, and of each pair
    of folders that are an OME-Zarr plate's row and column; the plate is the folders above
    it."""
    folders = name.split("/")[:-1]
    found = set()
    for i, folder in enumerate(folders):
        if match := _FOLDER_WELL.fullmatch(folder):
            row, column = match.groups()
            found.add(("/".join(folders[:i]), _row_number(row), int(column)))
        elif folders[i + 1 : i + 2] and all(
            p.fullmatch(f) for p, f in zip(_ZARR_WELL, folders[i : i + 2], strict=True)
        ):
            found.add(("/".join(folders[:i]), _row_number(folder), int(folders[i + 1])))
    return found


def well_table(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``summary.csv``'s rows summed up per well of a plate, when the names of ALL its images
    say their well in one of the ways microscopes name them; never a guess.

    The well is read from the file's name (Opera / Operetta ``r02c03f01p01-ch1...``, a word
    of its own such as ``B03_f1.tif`` or MetaXpress's ``Plate1_B03_s1_w1.tif``), else from a
    folder named as a well (``B03/field1.tif``) or an OME-Zarr plate's folders of its row
    and column (``plate.zarr/B/3/0``). No table when some names say no well or
    two, or when the files of one well are different channels, planes or time points of its
    fields (``_w1``, ``_w2``; ``p01-ch1sk1``, ``p02-ch1sk1``), whose cells would be counted
    once in each.

    Parameters
    ----------
    rows : sequence of dict
        ``summary.csv``'s rows (:func:`~napari_mutualseg.measure.summarize`), the image's
        name (``/`` between folders) in ``image``.

    Returns
    -------
    list of dict
        One row per well, by plate, row and column: ``plate`` (the folders and the first
        words of the name before the well; empty for one plate's images at the top),
        ``well`` (``B03``), ``row`` (``B``), ``column`` (``3``), ``images``, ``cells`` (their
        sum); each ``mean_intensity_*`` the mean over the well's cells (the images' means
        weighted by their cells), each ``median_*`` (area, volume) the median of the
        images' medians, as a per-cell median cannot be made from them. Empty when the names
        do not say the wells.
    str
        Why there is no table when some names say a well and others none or more than one;
        empty otherwise.
    """
    if not rows:
        return [], ""
    names = [str(row["image"]).replace(os.sep, "/") for row in rows]
    found = [_wells_in_name(n) for n in names]
    if not any(found):  # the files do not say it: a folder per well, or no plate at all
        found = [_wells_in_folders(n) for n in names]
        if not any(found):
            return [], ""
    unclear = [(n, len(wells)) for n, wells in zip(names, found, strict=True) if len(wells) != 1]
    if unclear:
        name, count = unclear[0]
        more = f" (and {len(unclear) - 1} more)" if len(unclear) > 1 else ""
        says = "more than one well" if count else "no well"
        return [], (
            f"no {WELLS_NAME}: {name}{more} says {says}, "
            "where the other image names say one; name every image with its well (e.g. "
            "B03_f1.tif) to get a table per well"
        )
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    besides: dict[tuple[str, int, int], set[tuple[str, ...]]] = {}
    for name, (well,), row in zip(names, found, rows, strict=True):
        groups.setdefault(well, []).append(row)
        file = name.rpartition("/")[2]
        besides.setdefault(well, set()).add(tuple(_BESIDES_FIELD.findall(file)))
    if (mixed := next((w for w, b in besides.items() if len(b) > 1), None)) is not None:
        well = f"{_row_letters(mixed[1])}{mixed[2]:02d}"
        return [], (
            f"no {WELLS_NAME}: the images of well {well} are different channels, planes or "
            "time points of its fields, whose cells would be counted once in each; segment "
            "one file of each field (e.g. '*_w1*.tif', '*p01-ch1sk1*.tiff', "
            "'*_00d00h00m*.tif') to get a table per well"
        )
    return [_well_row(w, groups[w]) for w in sorted(groups)], ""


def _well_row(well: tuple[str, int, int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One well's row of :func:`well_table`."""
    plate, row, column = well
    cells = [int(r.get("cells") or 0) for r in rows]
    out: dict[str, Any] = {
        "plate": plate,
        "well": f"{_row_letters(row)}{column:02d}",
        "row": _row_letters(row),
        "column": column,
        "images": len(rows),
        "cells": sum(cells),
    }
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [_number(r.get(key)) for r in rows]
        if key.startswith("median_"):
            known = [v for v in values if not math.isnan(v)]
            out[key] = float(statistics.median(known)) if known else float("nan")
        elif key.startswith("mean_intensity_"):
            weighted = [
                (v, n) for v, n in zip(values, cells, strict=True) if n and not math.isnan(v)
            ]
            total = sum(n for _, n in weighted)
            out[key] = sum(v * n for v, n in weighted) / total if total else float("nan")
    return out


def _number(value: Any) -> float:
    """A summary value as a number; NaN for an empty cell (a column another image lacks)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
