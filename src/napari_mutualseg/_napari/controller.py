"""One run controller per viewer: the jobs, the trained pair and the layers they write.

The controller owns what outlives a panel: the worker of the running job, the trained pair
and the per-round history. A dock widget attaches to its viewer's controller, so that closing
the panel stops training without losing the pair, and a reopened panel shows it again. There
is one job per viewer at a time; :class:`RunState` says which.

Everything here runs on the main thread. Reports reach it through the worker's ``yielded``
signal with their layer data already laid out (:mod:`.workers`); the controller swaps one
layer per event-loop turn, newest round first (:mod:`.writer`), and says where training
stands at most twice a second, so that the viewer keeps drawing at its own pace.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEventLoop, QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..checkpoint import CheckpointError
from .cells import show_table
from .layers import upsert_layer
from .workers import (
    LEARNING_ROLES,
    RESULT_LAYERS,
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
from .writer import LayerWriter

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer

    from ..config import TrainConfig
    from ..models import ModelPair
    from ..training import MutualTrainer, RoundReport
    from .prepare import SupervisionRecord

#: How often the status line follows the training steps.
_STATUS_MS = 500

_CONTROLLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RunState(Enum):
    """What the controller is doing."""

    IDLE = "idle"
    STARTING = "starting"  # the result layers are being made
    TRAINING = "training"
    STOPPING = "stopping"
    PREDICTING = "predicting"
    BATCH = "segmenting a folder"


@dataclass
class TrainingItem:
    """One image of the training set: its layer, its supervision and the labels to learn."""

    image: Image
    record: SupervisionRecord
    labels: list[np.ndarray]


@dataclass
class TrainingRequest:
    """Everything a training run needs, read from the layers on the main thread."""

    item: TrainingItem  # the image picked in the panel, trained from its boxes
    config: TrainConfig
    show_learning: bool = False
    painted: int = 0  # supervision pixels the user painted (trusted in every round)


@dataclass
class _Session:
    images: list[Image]  # the training images, the one picked in the panel first
    job: TrainingJob
    worker: GeneratorWorker
    first_round: int  # rounds the pair had before this run
    planned: int  # the round this run trains up to
    started: float = field(default_factory=time.perf_counter)
    count: int = 0
    error: str = ""
    frozen: bool = False  # the garbage collector is frozen while the worker runs


class _TrainingWorker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari's task cancel, closing the window) stops the
    trainer within one step instead of waiting for the round to end."""

    job: TrainingJob | None = None

    def quit(self) -> None:
        if self.job is not None:
            self.job.cancel()
        # The generator ends by itself once the trainer is cancelled; aborting the worker
        # here would leave the generator unfinished and its clean-up unrun.


class RunController(QObject):
    """Runs training and prediction for one viewer; see the module docs.

    Use :meth:`for_viewer` rather than the constructor, so that every panel of a viewer
    shares one controller.
    """

    state_changed = Signal(object)  # RunState
    message = Signal(str)  # the latest thing the user should read
    progress = Signal(int, int)  # done, total (0, 0: no job)
    round_done = Signal(object)  # the history entry of each finished round
    pair_changed = Signal()
    batch_done = Signal(object)  # the finished (or stopped) BatchRun

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.state = RunState.IDLE
        self.pair: ModelPair | None = None
        self.history: list[dict[str, Any]] = []
        self.planned = 0  # the round the last training aimed at
        self.trained_image: Layer | None = None
        self.last_report: RoundReport | None = None
        self.corrected: dict[str, TrainingItem] = {}  # images added to training, by layer id
        self.predictions: dict[str, PredictionResult] = {}  # the last one of each image
        self.last_message = ""
        self.writer = LayerWriter(self._viewer)
        self.writer.on_round_shown = self._round_shown
        self._session: _Session | None = None
        self._batch_stop = threading.Event()
        self._closing = False
        self._status_timer = QTimer(self, interval=_STATUS_MS)
        self._status_timer.timeout.connect(self._show_steps)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    @classmethod
    def for_viewer(cls, viewer: napari.Viewer) -> RunController:
        """The controller of ``viewer`` (made on first use)."""
        viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy
        controller = _CONTROLLERS.get(viewer)
        if controller is None:
            controller = _CONTROLLERS[viewer] = cls(viewer)
        return controller

    # ------------------------------------------------------------------------------ state

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    @property
    def job(self) -> TrainingJob | None:
        """The running (or last) training job."""
        return self._session.job if self._session is not None else None

    @property
    def busy(self) -> bool:
        """A job runs, or its results are still on their way into the layers."""
        return self.state is not RunState.IDLE or self.writer.busy

    @property
    def remaining(self) -> int:
        """Rounds a stopped training has left to reach what it aimed at."""
        return max(self.planned - len(self.history), 0)

    def _set_state(self, state: RunState) -> None:
        self.state = state
        self.state_changed.emit(state)

    def notify(self, text: str, level: str = "status") -> None:
        """Tell the user: the status line always, a notification for info, warning, error."""
        self.last_message = text
        self.message.emit(text)
        {"info": show_info, "warning": show_warning, "error": show_error}.get(
            level, lambda _: None
        )(text)

    def set_pair(self, pair: ModelPair | None) -> None:
        """Use ``pair`` from now on (a loaded model, or ``None`` to start from scratch)."""
        self.pair = pair
        self.history = [] if pair is None else [dict(h) for h in pair.history]
        self.planned = len(self.history)
        self.pair_changed.emit()

    # ------------------------------------------------------------------------------ training

    def train(self, request: TrainingRequest) -> GeneratorWorker | None:
        """Start (or resume) training in a worker; ``None`` after a notification."""
        if self.state is not RunState.IDLE:
            self.notify("Busy: wait for the running job to finish, or press Stop.", "warning")
            return None
        config, resume = request.config, self.pair
        if resume is not None and self.remaining:
            config = type(config).from_dict({**config.to_dict(), "rounds": self.remaining})
        first_id = str(request.item.image.unique_id)
        items = [request.item, *(c for k, c in self.corrected.items() if k != first_id)]
        images = [im for item in items for im in item.record.images(item.image.data)]
        sups = [s for item in items for s in item.record.supervisions]
        labels = [lab for item in items for lab in item.labels]

        def make_trainer() -> MutualTrainer:
            # Imported here, in the worker: the engine's first import takes 0.3 s (scipy), too
            # long for the main thread; and looked up at call time, so tests can stand in.
            from .. import training

            return training.MutualTrainer(images, sups, config, labels=labels, pair=resume)

        layouts = [Layout(item.record.shape, item.record.planes) for item in items]
        pixels = [item.image.data for item in items]
        job = TrainingJob(make_trainer, layouts, pixels, request.show_learning)
        worker = create_worker(
            run_training, job, _worker_class=_TrainingWorker, _ignore_errors=True
        )
        worker.job = job
        worker.yielded.connect(self._on_update)
        worker.returned.connect(self._on_failure)
        worker.errored.connect(self._on_failure)  # not expected: failures are returned
        worker.finished.connect(self._on_training_finished)
        first = len(self.history) if resume is not None else 0
        image = request.item.image
        self._session = _Session(
            [i.image for i in items], job, worker, first, first + config.rounds
        )
        self.planned = first + config.rounds
        self.trained_image = image
        self._set_state(RunState.STARTING)
        what = "Resuming training" if resume is not None else "Training"
        painted = f", with the {request.painted} pixels you painted" if request.painted else ""
        more = f" and {len(items) - 1} corrected image(s)" if len(items) > 1 else ""
        self.notify(f"{what} on '{image.name}'{more}{painted}: preparing…")
        self.writer.defer_hidden = True
        self.prepare_layers([i.image for i in items], request.show_learning, then=self._start)
        return worker

    def prepare_layers(
        self, images: list[Image], show_learning: bool, then: Callable[[], None] | None = None
    ) -> None:
        """Make the result layers of the training images that are missing, one per turn."""
        roles = [r for r in RESULT_LAYERS if show_learning or r not in LEARNING_ROLES]
        self.writer.prepare(images, roles, then)

    def round_maps(self, image: Image) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
        """The newest round's (plane, instances, disagreement) of a training image."""
        report, session = self.last_report, self._session
        if report is None or session is None:
            return []
        start = 0
        for item_image, layout in zip(session.images, session.job.layouts, strict=True):
            if item_image == image:
                planes = layout.planes or [None]
                end = start + layout.count
                maps = zip(
                    planes, report.instances[start:end], report.disagreement[start:end],
                    strict=True,
                )  # fmt: skip
                return list(maps)
            start += layout.count
        return []

    def add_training(self, item: TrainingItem) -> None:
        """Train on ``item`` too from now on (a corrected image; it replaces an earlier one)."""
        self.corrected[str(item.image.unique_id)] = item

    def stop(self) -> None:
        """Stop training within one step (the models of the last completed round are kept),
        or a folder batch after the image at hand (the finished images are kept)."""
        if self.state is RunState.BATCH:
            self._batch_stop.set()
            self.notify("Stopping after the current image…")
            return
        if self.state in (RunState.STARTING, RunState.TRAINING) and self.job is not None:
            self.job.cancel()
            self._set_state(RunState.STOPPING)
            self.notify("Stopping after the current step…")

    def _start(self) -> None:
        session = self._session
        if session is None or self._closing:
            return
        if session.job.cancelled.is_set():  # stopped before it began
            session.job.done.set()
            self._on_training_finished()
            return
        self._set_state(RunState.TRAINING)
        self._status_timer.start()
        freeze_gc()
        session.frozen = True
        session.worker.start()

    def _show_steps(self) -> None:
        session = self._session
        if session is None or self.state is not RunState.TRAINING:
            return
        done, total = session.job.progress()
        if total:
            now = min(session.first_round + session.count + 1, session.planned)
            self.progress.emit(done, total)
            self.message.emit(
                f"Training on {session.job.device_name}: round {now} of {session.planned}, "
                f"step {done} of {total}."
            )

    def _on_update(self, update: RoundUpdate) -> None:
        session = self._session
        if session is None or self._closing:
            return
        session.count += 1
        report = update.report
        entry = {
            "round": session.first_round + report.round,
            "loss_a": report.loss_a,
            "loss_b": report.loss_b,
            "changed": report.changed,
            "seconds": report.seconds,
            "device": session.job.device_name or report.device,
            "converged": report.converged,
        }
        self.history.append(entry)
        self.last_report = report
        self.writer.show(entry["round"], update.layers, update.tables)
        self.round_done.emit(entry)

    def _round_shown(self) -> None:
        if self.job is not None:
            self.job.shown.set()

    def _on_failure(self, value: Any) -> None:
        if not isinstance(value, (WorkerFailure, BaseException)) or self._session is None:
            return
        self._session.error = describe_error(value, self._session.job.device_name)
        self.notify(self._session.error, "error")

    def _on_training_finished(self) -> None:
        session = self._session
        self._status_timer.stop()
        self.writer.finish()
        if session is None:
            return
        if session.job.last_good is not None:
            self.pair = session.job.last_good
            self.pair_changed.emit()
        if session.frozen:
            session.frozen = False
            unfreeze_gc()
        self._set_state(RunState.IDLE)
        self.progress.emit(0, 0)
        if self._closing or session.error:
            return
        seconds = time.perf_counter() - session.started
        if session.job.cancelled.is_set():
            self.notify(
                f"Stopped after {len(self.history)} of {self.planned} rounds; the models of the "
                "last completed round are kept. Train again to go on."
            )
            return
        self.planned = len(self.history)
        early = " (labels settled early)" if self.history and self.history[-1]["converged"] else ""
        per_round = seconds / max(session.count, 1)
        self.notify(
            f"Trained {session.count} round(s){early} in {seconds:.1f} s ({per_round:.1f} "
            "s/round). Predict another image or save the model."
        )

    # ------------------------------------------------------------------------------ predict

    def _can_segment(self) -> bool:
        """A trained pair and no running job; else a notification that says what to do."""
        if self.pair is None:
            self.notify(
                "No trained model yet: train one (Train) or load one (Load model…).", "error"
            )
            return False
        if self.state is not RunState.IDLE:
            self.notify("Busy: wait for the running job to finish, or press Stop.", "warning")
            return False
        return True

    def predict(self, layer: Image, tile_size: int) -> GeneratorWorker | None:
        """Segment ``layer`` with the pair in a worker; ``None`` after a notification."""
        if not self._can_segment():
            return None
        data = layer.data
        planes = None if layer.ndim == 2 else list(range(int(data.shape[0])))
        worker = create_worker(
            run_prediction, self.pair, data, planes, tile_size, layer.name, _ignore_errors=True
        )
        result: dict[str, Any] = {}
        worker.yielded.connect(lambda done_total: self.progress.emit(*done_total))
        worker.returned.connect(lambda value: result.setdefault("value", value))
        worker.errored.connect(lambda exc: result.setdefault("value", WorkerFailure(exc)))
        worker.finished.connect(partial(self._on_predict_finished, layer, result))
        self._set_state(RunState.PREDICTING)
        self.notify(f"Segmenting '{layer.name}'…")
        freeze_gc()
        worker.start()
        return worker

    def _on_predict_finished(self, layer: Image, result: dict) -> None:
        unfreeze_gc()
        self._set_state(RunState.IDLE)
        self.progress.emit(0, 0)
        value = result.get("value")
        if self._closing or self.viewer is None or value is None:
            return
        if isinstance(value, WorkerFailure):
            self.notify(describe_error(value, str(self.pair.device)), "error")
            return
        self.predictions[str(layer.unique_id)] = value
        self.writer.written[str(layer.unique_id)] = value.labels
        # The box-guided result of the training image stays; prediction goes beside it.
        beside = layer == self.trained_image
        role, name = ("prediction", f"{layer.name} cells (no boxes)") if beside else (
            "cells", f"{layer.name} cells"
        )  # fmt: skip
        out = upsert_layer(
            self.viewer, role=role, name=name, data=value.labels, like=layer, source=layer
        )
        show_table(out, value.table)
        upsert_layer(
            self.viewer, role="disagreement", name=f"{layer.name} disagreement",
            data=value.disagreement, like=layer, source=layer, kind="image", visible=False,
        )  # fmt: skip
        n = int(value.labels.max()) if value.labels.size else 0
        if n:
            self.notify(
                f"'{out.name}': {n} cells. 'Next cell to check' shows where the two networks "
                "disagree most."
            )
        else:
            self.notify(
                f"No cells found in '{layer.name}'. The networks may need more training (more "
                "rounds or steps per round), or this image differs from the training images "
                "(other stain, magnification or contrast).",
                "warning",
            )

    # ------------------------------------------------------------------------------ folders

    def segment_folder(
        self, inputs: list[str], out_dir: str, tile_size: int
    ) -> GeneratorWorker | None:
        """Segment and measure every image of ``inputs`` into ``out_dir`` in a worker, as
        ``napari-mutualseg predict`` does (:class:`napari_mutualseg.batch.BatchRun`, in this
        process); ``batch_done`` carries the run. ``None`` after a notification."""
        from ..batch import BatchOptions, BatchRun

        if not self._can_segment():
            return None
        pair, options = self.pair, BatchOptions(tile_size=tile_size)
        self._batch_stop.clear()
        worker = create_worker(
            run_batch,
            lambda: BatchRun(pair, inputs, out_dir, options, workers=0),
            self._batch_stop,
            _ignore_errors=True,
        )
        outcome: dict[str, Any] = {}
        worker.yielded.connect(self._on_batch_image)
        worker.returned.connect(lambda value: outcome.setdefault("value", value))
        worker.errored.connect(lambda exc: outcome.setdefault("value", WorkerFailure(exc)))
        worker.finished.connect(partial(self._on_batch_finished, outcome))
        self._set_state(RunState.BATCH)
        self.notify(f"Looking for images in {', '.join(inputs)}…")
        worker.start()
        return worker

    def _on_batch_image(self, update: tuple[Any, Any]) -> None:
        run, result = update
        counts = run.counts()
        done = sum(counts.values())
        self.progress.emit(done, len(run.jobs))
        failed = f", {counts['failed']} failed" if counts["failed"] else ""
        last = f" (last: {result.job.name})" if result is not None else ""
        self.notify(f"Folder: {done} of {len(run.jobs)} images{failed}{last}.")

    def _on_batch_finished(self, outcome: dict) -> None:
        self._set_state(RunState.IDLE)
        self.progress.emit(0, 0)
        run = outcome.get("value")
        if self._closing or run is None:
            return
        if isinstance(run, WorkerFailure):
            self.notify(describe_error(run, str(self.pair.device)), "error")
            return
        counts = run.counts()
        parts = [f"{counts['done']} segmented"]
        parts += [f"{counts[k]} {k}" for k in ("skipped", "failed", "not done") if counts[k]]
        self.notify(
            f"Folder {'stopped' if run.cancelled else 'done'}: {', '.join(parts)}; tables and "
            f"summary in {run.out_dir}.",
            "warning" if counts["failed"] else "info",
        )
        self.batch_done.emit(run)

    # ------------------------------------------------------------------------------ files

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the pair; the path written, or ``None`` after a notification."""
        if self.pair is None:
            self.notify("No trained model to save: train one first.", "error")
            return None
        if self.state is not RunState.IDLE:
            self.notify("A job is running: stop it (or let it finish) before saving.", "warning")
            return None
        try:
            out = self.pair.save(path, overwrite=overwrite)
        except (OSError, ValueError) as err:
            self.notify(f"Could not save the model: {err}", "error")
            return None
        self.notify(f"Model saved to {out}", "info")
        return out

    def load(self, path: str | Path, device: str = "auto") -> ModelPair | None:
        """Load a pair and use it from now on; ``None`` after a notification."""
        from ..models import ModelPair

        if self.state is not RunState.IDLE:
            self.notify("A job is running: stop it before loading a model.", "warning")
            return None
        try:
            pair = ModelPair.load(path, device=device)
        except (OSError, CheckpointError) as err:
            self.notify(str(err), "error")
            return None
        self.set_pair(pair)
        self.notify(
            f"Loaded {Path(path).name} ({len(pair.history)} round(s) trained). "
            "Predict, or Train to continue."
        )
        return pair

    def wait(self) -> None:
        """Return once no job runs and every result is in the layers, running the event loop
        meanwhile (the viewer stays responsive)."""
        loop, timer = QEventLoop(), QTimer()
        timer.timeout.connect(lambda: loop.quit() if not self.busy else None)
        timer.start(20)
        while self.busy:
            loop.exec()
        timer.stop()

    # ------------------------------------------------------------------------------ closing

    @property
    def applied_rounds(self) -> list[int]:
        """Rounds whose results reached the layers, in order (coalesced rounds are left out)."""
        return self.writer.applied_rounds

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop any running job and wait up to ``timeout`` seconds for it to end."""
        self._closing = True
        self.writer.stop()
        job = self.job
        if job is not None and not job.done.is_set() and self.state is not RunState.STARTING:
            job.cancel()
            job.done.wait(timeout)
