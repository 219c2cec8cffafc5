"""The viewer's jobs on the main thread: a training run, an image's prediction, a folder.

Each job wires one worker (:mod:`.workers`) to its viewer's
:class:`~.controller.RunController`: it starts the worker, turns what the worker yields into
progress and layers, and hands the outcome back when the worker ends. The controller decides
which job may start (one per viewer at a time) and keeps what outlives a job: the pair, the
round history, the last prediction of each image.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Qt, QTimer
from superqt.utils import GeneratorWorker, create_worker

from ..thread_warnings import thread_warnings
from .layers import show_table, upsert_layer
from .workers import (
    Layout,
    PredictionResult,
    RoundUpdate,
    TrainingJob,
    WorkerFailure,
    describe_error,
    freeze_gc,
    run_batch,
    run_prediction,
    run_training,
    unfreeze_gc,
)
from .writer import too_large_to_correct

if TYPE_CHECKING:
    import numpy as np
    from napari.layers import Image, Labels

    from ..batch import BatchRun
    from ..config import TrainConfig
    from ..files import ResultExistsError
    from ..models import ModelPair
    from ..training import MutualTrainer
    from .axes import LayerAxes
    from .controller import RunController
    from .prepare import TrainingItem

#: How often the status line follows the training steps. Any change in the panel redraws the
#: whole window (it holds an OpenGL canvas); drawn in software (no display GPU) that costs both
#: cores tens of milliseconds, which training feels: at 2 updates a second rounds took 8 % longer.
_STATUS_MS = 1000


class RunState(Enum):
    """What a viewer's controller is doing."""

    IDLE = "idle"
    STARTING = "starting"  # the result layers are being made
    TRAINING = "training"
    STOPPING = "stopping"
    PREDICTING = "predicting"
    BATCH = "segmenting a folder"

    @property
    def trains(self) -> bool:
        """Whether a training run is starting, running or stopping."""
        return self in (RunState.STARTING, RunState.TRAINING, RunState.STOPPING)


class _StoppableWorker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari cancels a window's tasks when it closes) asks
    its job to stop: a training within one step, a prediction after the plane at hand, a
    folder after the image at hand.

    The generator then ends by itself. Aborting it, as a plain worker's ``quit`` does, would
    leave it unfinished: its clean-up unrun, a folder's summary and run report unwritten.

    superqt's worker, not napari's: napari's relays the worker's warnings to its notifications
    under PyQt only (its mixin's ``__init__`` is never called under PySide, whose ``QRunnable``
    does not call on), so the core's warnings were lost; :func:`make_worker` relays them.
    """

    stop: Callable[[], None] | None = None

    def quit(self) -> None:
        if self.stop is not None:
            self.stop()

    def run(self) -> None:
        """superqt's ``WorkerBase.run``, the warnings of the job's own thread sent to
        ``warned`` (:func:`~napari_mutualseg.thread_warnings.thread_warnings`).

        superqt's swaps the process's ``warnings.showwarning`` and filters for the job's time
        (``warnings.catch_warnings``): with two viewers' jobs at once, the first job's
        warnings went to the other viewer's panel, the second's were lost once the first
        ended, and the last to end left a finished job's hook and its "always" filter on the
        process for good. A failure the worker returns (superqt's generator worker returns
        what its generator raised) is ``errored``.
        """
        self.started.emit()
        self._running = True
        try:
            with thread_warnings(self._warned):
                result = self.work()
            if isinstance(result, Exception):
                raise result
            if not self.abort_requested:
                self.returned.emit(result)
        except Exception as exc:
            self.errored.emit(exc)
        self._running = False
        self.finished.emit()
        self._finished.emit(self)

    def _warned(self, shown: warnings.WarningMessage) -> None:
        # what superqt's ``warned`` carries: ``warnings.showwarning``'s arguments
        self.warned.emit(
            (shown.message, shown.category, shown.filename, shown.lineno, shown.file, shown.line)
        )


def make_worker(
    controller: RunController, description: str, func: Callable[..., Any], *args: Any
) -> _StoppableWorker:
    """A stoppable worker for ``func(*args)``, filed as a task of the controller's own viewer.

    napari's ``create_worker`` files a worker under the *current* viewer: a job a script
    started while another viewer was current was stopped when that other viewer closed, and
    that viewer's close dialog listed it. It also keeps every worker it filed, with all it
    refers to (a training's images and models, a predicted image), until its window is gone.
    Here the task goes to the controller's viewer, under ``description``, and napari holds
    only a weak reference to the worker: closing that window still stops the job (its
    ``quit``), as does the window's destruction (:meth:`RunController.watch_window`).
    """
    worker = create_worker(func, *args, _worker_class=_StoppableWorker, _ignore_errors=True)
    # the core's warnings (an image of other pixels or channels than the training images',
    # a label image given for the image) reach the worker's signal, not the user
    worker.warned.connect(controller.relay_warning, Qt.DirectConnection)
    viewer = controller.viewer
    window = getattr(viewer, "window", None)
    register = getattr(window, "_register_task_status", None)  # napari's task list
    update = getattr(window, "_update_task_status", None)
    if register is None or update is None:  # no window (a headless viewer), or a new napari
        return worker
    from napari.utils.task_status import Status

    ref = weakref.ref(worker)

    def cancel() -> None:
        alive = ref()
        if alive is not None:
            alive.quit()

    # listed once it runs: a job stopped before it began (Stop while its layers were made)
    # would stay listed as pending, and napari would ask about it when the viewer closes
    task: list[Any] = []

    def started() -> None:
        with contextlib.suppress(Exception):  # a task list that takes other arguments
            task.append(register("napari-mutualseg", Status.BUSY, description, cancel))

    def finished() -> None:
        if task:
            with contextlib.suppress(Exception):  # a window already closed
                update(task[0], Status.COMPLETED, description)

    worker.started.connect(started)
    worker.finished.connect(finished)
    return worker


def training_status(device: str, now: int, planned: int, share: float) -> str:
    """The status line of a training run in round ``now`` of ``planned``, ``share`` of its
    steps done: once they are, the networks predict the training images, for seconds."""
    where = "predicting the training images" if share >= 1 else f"{share:.0%}"
    return f"Training on {device}: round {now} of {planned} ({where})."


class TrainingRun(QObject):
    """One training run: its worker, its rounds and how it ended.

    Parameters
    ----------
    controller : RunController
        Receives each round (:meth:`RunController.add_round`) and the end of the run.
    items : list of TrainingItem
        The training images, the one picked in the panel first.
    config : TrainConfig
        The engine's settings for this run (its ``rounds`` are the rounds to train now).
    resume : ModelPair or None
        The pair to go on training, or ``None`` to start from scratch.
    show_learning : bool
        Also lay out what A and B learn from.
    """

    def __init__(
        self,
        controller: RunController,
        items: list[TrainingItem],
        config: TrainConfig,
        resume: ModelPair | None,
        show_learning: bool,
    ) -> None:
        super().__init__()  # no Qt parent: the controller keeps only the newest job
        self.controller = controller
        images = [im for item in items for im in item.record.images(item.image.data)]
        sups = [s for item in items for s in item.record.supervisions]
        labels = [lab for item in items for lab in item.labels]

        def make_trainer() -> MutualTrainer:
            # Imported here, in the worker: the engine's first import takes 0.3 s (scipy), too
            # long for the main thread; and looked up at call time, so tests can stand in.
            from .. import training

            return training.MutualTrainer(images, sups, config, labels=labels, pair=resume)

        layouts = [Layout(it.record.shape, it.record.planes, it.record.axes) for it in items]
        pixels = [item.image.data for item in items]
        self.images: list[Image] = [item.image for item in items]
        self.job = TrainingJob(make_trainer, layouts, pixels, show_learning)
        what = f"training on '{items[0].image.name}'" + (" and more" if len(items) > 1 else "")
        self.worker = make_worker(controller, what, run_training, self.job)
        self.worker.stop = self.job.cancel
        self.worker.yielded.connect(self.on_update)
        self.worker.returned.connect(self._on_failure)
        self.worker.errored.connect(self._on_failure)  # not expected: failures are returned
        self.worker.finished.connect(self._on_finished)
        self.first_round = len(controller.history) if resume is not None else 0
        self.planned = self.first_round + config.rounds  # the round this run trains up to
        self.started = time.perf_counter()
        self.count = 0  # rounds reported
        self.error = ""
        self._frozen = False  # the garbage collector is frozen while the worker runs
        self._status = QTimer(self, interval=_STATUS_MS)
        self._status.timeout.connect(self._show_steps)

    @property
    def cancelled(self) -> bool:
        """Whether the run was asked to stop."""
        return self.job.cancelled.is_set()

    @property
    def seconds(self) -> float:
        """Seconds since the run was set up."""
        return time.perf_counter() - self.started

    def start(self) -> None:
        """Start the worker (once the result layers exist)."""
        if self.controller.closing:
            return
        if self.cancelled:  # stopped before it began
            self.job.done.set()
            self._on_finished()
            return
        self.controller.set_state(RunState.TRAINING)
        self._status.start()
        freeze_gc()
        self._frozen = True
        self.worker.start()

    def _show_steps(self) -> None:
        if self.controller.state is not RunState.TRAINING:
            return
        done, total = self.job.progress()
        if total:
            now = min(self.first_round + self.count + 1, self.planned)
            # how far the round at hand is: the run's steps of both networks (240 for 3 rounds
            # of 40 steps) matched no number the user set
            per_round = total / max(self.planned - self.first_round, 1)
            share = min(max(done - self.count * per_round, 0) / per_round, 1)
            self.controller.progress.emit(done, total)
            self.controller.message.emit(
                training_status(self.job.device_name, now, self.planned, share)
            )

    def on_update(self, update: RoundUpdate) -> None:
        """Record a round the worker reported and show it."""
        if self.controller.closing:
            return
        self.count += 1
        report = update.report
        entry = {
            "round": self.first_round + report.round,
            "loss_a": report.loss_a,
            "loss_b": report.loss_b,
            "changed": report.changed,
            "found": report.found,
            "seconds": report.seconds,
            "device": self.job.device_name or report.device,
            "converged": report.converged,
        }
        self.controller.add_round(entry, update)

    def _on_failure(self, value: Any) -> None:
        if isinstance(value, (WorkerFailure, BaseException)):
            self.error = describe_error(value, self.job.device_name)
            self.controller.fail(self.error)

    def _on_finished(self) -> None:
        self._status.stop()
        if self._frozen:
            self._frozen = False
            unfreeze_gc()
        self.controller.training_ended(self)


class _SegmentJob(QObject):
    """A job that segments with the trained pair: what its worker yields is progress, what it
    returns (or a failure) ends it."""

    state = RunState.IDLE
    _stop: threading.Event  # what stop() sets: each job makes it for its worker, before this

    def __init__(self, controller: RunController, worker: GeneratorWorker, message: str) -> None:
        super().__init__()  # no Qt parent: the controller keeps only the newest job
        self.controller = controller
        self.worker = worker
        worker.stop = self.stop
        self._outcome: Any = None
        worker.yielded.connect(self.on_progress)
        worker.returned.connect(self._keep)
        worker.errored.connect(self._errored)  # a bound method: a lambda would keep the job
        worker.finished.connect(self._on_finished)
        controller.segmenting = self  # before its state is said: the panel asks it about Stop
        controller.set_state(self.state)
        controller.notify(message)
        freeze_gc()
        worker.start()

    def _errored(self, exc: BaseException) -> None:
        self._keep(WorkerFailure(exc))

    def _keep(self, value: Any) -> None:
        if self._outcome is None:
            self._outcome = value

    def _on_finished(self) -> None:
        unfreeze_gc()
        controller, value = self.controller, self._outcome
        controller.set_state(RunState.IDLE)
        controller.progress.emit(0, 0)
        if controller.closing or controller.viewer is None:
            return
        if isinstance(value, WorkerFailure):
            error = describe_error(value, str(controller.pair.device))
            # kept before failed(): the panel's answer to it may start the next job
            controller.last_error = error
            if not self.failed(value.original):
                controller.notify(error, "error")
            return
        self.done(value)

    def failed(self, error: BaseException) -> bool:
        """Whether the job answered its own failure (else the user is told about it)."""
        return False

    def stop(self) -> None:
        """Ask the worker to end after the plane or image at hand (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether the job was asked to stop."""
        return self._stop.is_set()

    def on_progress(self, value: Any) -> None:
        """What the worker yielded."""

    def done(self, value: Any) -> None:
        """What the worker returned (``None`` when it stopped early), on the main thread."""


class PredictionRun(_SegmentJob):
    """Segment one image layer with the pair and show its cells, table and disagreement."""

    state = RunState.PREDICTING

    def __init__(
        self,
        controller: RunController,
        layer: Image,
        axes: LayerAxes,
        tile_size: int,
        track: bool = False,
    ) -> None:
        self.layer, self.data = layer, layer.data
        self.cells: Labels | None = None  # the layer its cells went into, once shown
        self._stop = threading.Event()
        worker = make_worker(
            controller, f"segmenting '{layer.name}'", run_prediction, controller.pair,
            self.data, axes, tile_size, layer.name, track, self._stop,
        )  # fmt: skip
        super().__init__(controller, worker, f"Segmenting '{layer.name}'…")

    def on_progress(self, value: tuple[int, int]) -> None:
        self.controller.progress.emit(*value)

    def done(self, value: PredictionResult | None) -> None:
        controller, layer = self.controller, self.layer
        viewer = controller.viewer
        if value is None:
            controller.notify(f"Stopped segmenting '{layer.name}': no cells were shown.")
            return
        # the cells are those of the pixels segmented: never laid over a layer that is gone
        # or now holds other pixels (another file opened into it, a script's change)
        if layer not in viewer.layers:
            controller.fail(
                f"'{layer.name}' was removed while it was segmented: its cells are not shown.",
                "warning",
            )
            return
        if layer.data is not self.data:
            controller.fail(
                f"'{layer.name}' changed while it was segmented: its cells are not shown. "
                "Predict it again.",
                "warning",
            )
            return
        controller.forget_removed_images()
        controller.predictions[str(layer.unique_id)] = value
        controller.writer.remember(layer, value.labels)
        # The box-guided result of the training image stays; prediction goes beside it.
        beside = layer == controller.trained_image
        role, name = ("prediction", f"{layer.name} cells (no boxes)") if beside else (
            "cells", f"{layer.name} cells"
        )  # fmt: skip
        out = upsert_layer(
            viewer, role=role, name=name, data=value.labels, like=layer, source=layer
        )
        show_table(out, value.table)
        self.cells = out
        # in the next turn: adding a layer takes the main thread 0.2-0.6 s at 1024² and more
        controller.writer.later(partial(self._show_disagreement, value.disagreement))
        too_large = None if beside else too_large_to_correct(layer.name, value.labels)
        if too_large:  # said now, before the person spends time correcting them
            controller.notify(too_large, "warning")
        n = int(value.labels.max()) if value.labels.size else 0
        if n:
            controller.notify(
                f"'{out.name}': {n} cells. 'Next cell to check' shows where the two networks "
                "disagree most."
            )
            if controller.no_cells:  # some planes of a stack have none
                controller.notify(controller.no_cells, "warning")
        else:  # the core's word on it is left unsaid: this one names the layer alone
            from ..segmenter import NO_CELLS_ADVICE

            controller.notify(
                f"No cells found in '{layer.name}': {NO_CELLS_ADVICE}.",
                "warning",
            )
        for note in value.notes:  # e.g. blank planes of a stack left without cells
            controller.notify(note, "warning")

    def _show_disagreement(self, disagreement: np.ndarray) -> None:
        viewer, layer = self.controller.viewer, self.layer
        if viewer is None or layer not in viewer.layers or layer.data is not self.data:
            return  # gone or changed since its cells were shown
        upsert_layer(
            viewer, role="disagreement", name=f"{layer.name} disagreement",
            data=disagreement, like=layer, source=layer, kind="image", visible=False,
        )  # fmt: skip


#: What a folder's image says when its file does not say its axes (readers.AxesUnknownError).
AXES_UNKNOWN = "whose axes the file does not say"


class FolderRun(_SegmentJob):
    """Segment and measure every image of a folder into an output folder, in this process, as
    ``napari-mutualseg predict`` does (:class:`napari_mutualseg.batch.BatchRun`)."""

    state = RunState.BATCH

    def __init__(
        self,
        controller: RunController,
        inputs: list[str],
        out_dir: str,
        tile_size: int,
        track: bool = False,
        overwrite: bool = False,
        on_conflict: Callable[[ResultExistsError], None] | None = None,
        axes: str | None = None,
        on_axes_unknown: Callable[[str], None] | None = None,
    ) -> None:
        from ..batch import BatchOptions, BatchRun

        options = BatchOptions(tile_size=tile_size, track=track, axes=axes)
        pair = controller.pair
        self.batch: BatchRun | None = None  # the run, once it is over
        self._stop = threading.Event()
        self.on_conflict, self.on_axes_unknown = on_conflict, on_axes_unknown
        worker = make_worker(
            controller,
            f"segmenting the images of {', '.join(inputs)}",
            run_batch,
            lambda: BatchRun(pair, inputs, out_dir, options, workers=0, overwrite=overwrite),
            self._stop,
        )
        super().__init__(controller, worker, f"Looking for images in {', '.join(inputs)}…")

    def failed(self, error: BaseException) -> bool:
        # results of another model, options or image in the output folder: the panel asks
        # whether to replace them (a script is told to pass overwrite=True)
        from ..files import ResultExistsError

        if isinstance(error, ResultExistsError) and self.on_conflict is not None:
            self.on_conflict(error)
            return True
        return False

    def on_progress(self, value: tuple[BatchRun, Any]) -> None:
        run, result = value
        counts = run.counts()
        done = sum(counts.values())
        self.controller.progress.emit(done, len(run.jobs))
        failed = f", {counts['failed']} failed" if counts["failed"] else ""
        last = f" (last: {result.job.name})" if result is not None else ""
        self.controller.notify(f"Folder: {done} of {len(run.jobs)} images{failed}{last}.")

    def done(self, run: BatchRun | None) -> None:
        if run is None:  # nothing returned: the worker was ended from outside
            return
        from ..batch import REPORT_NAME

        self.batch = run
        counts = run.counts()
        parts = [f"{counts['done']} segmented"]
        parts += [f"{counts[k]} {k}" for k in ("skipped", "failed", "not done") if counts[k]]
        said = (
            f"Folder {'stopped' if run.cancelled else 'done'}: {', '.join(parts)}; tables and "
            f"summary in {run.out_dir}."
        )
        if counts["failed"]:  # as the command's exit status 1: the run did not do it all
            self.controller.fail(f"{said} {REPORT_NAME} says why each image failed.", "warning")
        else:
            self.controller.notify(said, "info")
        self.controller.batch_done.emit(run)
        failed = [r.reason for r in run.results if r.status == "failed"]
        if (
            self.on_axes_unknown is not None
            and not run.cancelled  # stopped: the user asked for nothing more
            and failed
            and not counts["done"] + counts["skipped"]  # else other files said theirs
            and all(AXES_UNKNOWN in reason for reason in failed)
        ):
            # every image failed for want of its axes, which the panel can ask for
            self.on_axes_unknown(failed[0])
