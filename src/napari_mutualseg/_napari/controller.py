"""One run controller per viewer: its jobs, the trained pair and the layers they write.

The controller owns what outlives a panel: the running job (:mod:`.runs`), the trained pair
and the per-round history. A dock widget attaches to its viewer's controller, so that closing
the panel stops training without losing the pair, and a reopened panel shows it again. There
is one job per viewer at a time; :class:`RunState` says which.

Everything here runs on the main thread. Reports reach it through the worker's ``yielded``
signal with their layer data already laid out (:mod:`.workers`); the controller swaps one
layer per event-loop turn, newest round first (:mod:`.writer`), and says where training
stands at most once a second, so that the viewer keeps drawing at its own pace.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import (
    show_error,
    show_info,
    show_warning,
)
from qtpy.QtCore import QEventLoop, QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..checkpoint import CheckpointError
from ..devices import select_device
from ..stepping import out_of_memory
from .runs import FolderRun, PredictionRun, RunState, TrainingRun
from .workers import (
    LEARNING_ROLES,
    RESULT_LAYERS,
    PredictionResult,
    RoundUpdate,
    TrainingJob,
    distinct_cells,
    in_panel_words,
)
from .writer import LayerWriter

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer
    from superqt.utils import GeneratorWorker

    from ..config import TrainConfig
    from ..files import ResultExistsError
    from ..models import ModelPair
    from ..training import RoundReport
    from .axes import LayerAxes
    from .prepare import TrainingItem

_CONTROLLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _ctrl_c_calls(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Ctrl-C calls ``handler`` inside the block, where Python's own handler is in place.

    Its ``KeyboardInterrupt`` would be raised in whatever slot runs in Qt's event loop, which
    prints it and goes on: a script waiting for a job could not be interrupted. A handler of
    the script's own is left alone.
    """
    own = threading.current_thread() is threading.main_thread()
    if not own or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class TrainingRequest:
    """Everything a training run needs, read from the layers on the main thread."""

    item: TrainingItem | None  # the image picked in the panel, trained from its boxes;
    # None: the corrected images alone (a loaded model refined by corrections)
    config: TrainConfig
    show_learning: bool = False


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
    _job_warning = Signal(str, bool)  # a worker thread's warning; whether of cells not found

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
        self.last_error: str | None = None  # why the last job failed or was refused
        self.writer = LayerWriter(self._viewer)
        self.writer.on_round_shown = self._round_shown
        self.writer.notify = self.notify
        self.training: TrainingRun | None = None  # the running (or last) training
        self.segmenting: PredictionRun | FolderRun | None = None  # the running (or last)
        self.closing = False  # the viewer (or the application) is closing
        self._windows: set[int] = set()  # the windows whose closing ends the jobs
        self._told: set[str] = set()  # the warnings of the running job said so far
        self.no_cells = ""  # the running job's word on planes without cells, said at its end
        self._job_warning.connect(self._tell_warning)
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
        """What the running (or last) training shares with its worker thread."""
        return self.training.job if self.training is not None else None

    @property
    def busy(self) -> bool:
        """A job runs, or its results are still on their way into the layers."""
        return self.state is not RunState.IDLE or self.writer.busy

    @property
    def can_stop(self) -> bool:
        """Whether Stop would end a job now: one runs and was not asked to stop yet."""
        if self.state in (RunState.PREDICTING, RunState.BATCH):
            return self.segmenting is not None and not self.segmenting.stopping
        return self.state in (RunState.STARTING, RunState.TRAINING)

    @property
    def remaining(self) -> int:
        """Rounds a stopped training has left to reach what it aimed at."""
        return max(self.planned - len(self.history), 0)

    def set_state(self, state: RunState) -> None:
        """Say what the controller does now (for its jobs)."""
        if self.state is RunState.IDLE and state is not RunState.IDLE:
            self._told.clear()  # a new job: its warnings are said again
            self.no_cells = ""
            self.last_error = None
        self.state = state
        self.state_changed.emit(state)

    def notify(self, text: str, level: str = "status") -> None:
        """Tell the user: the status line always, a notification for info, warning, error."""
        self.last_message = text
        self.message.emit(text)
        {"info": show_info, "warning": show_warning, "error": show_error}.get(
            level, lambda _: None
        )(text)

    def fail(self, text: str, level: str = "error") -> None:
        """Say why the running job failed (or left its results unshown); kept in
        :attr:`last_error` for a script, which cannot read notifications."""
        self.last_error = text
        self.notify(text, level)

    def refused(self) -> None:
        """A job asked for did not start: why, said last, is the failure a script reads."""
        self.last_error = self.last_message

    def relay_warning(self, shown: tuple) -> None:
        """A warning raised in a job's worker thread (``warnings.showwarning``'s arguments,
        which the worker hands to its ``warned`` signal; connected directly, so this runs in
        that thread).

        The core's (an image of other pixels than the training images') are told in the
        panel's words, each once a job; its word on the planes without cells is kept in
        :attr:`no_cells` for the prediction to say once it is shown (an image without any
        cell is said in the prediction's own words). Warnings of other threads (napari's, on
        the main thread meanwhile) never come here: they go where they would without a job.
        """
        from ..segmenter import NoCellsWarning  # the worker has imported the engine

        no_cells = issubclass(shown[1], NoCellsWarning)
        self._job_warning.emit(in_panel_words(str(shown[0])), no_cells)

    def _tell_warning(self, text: str, no_cells: bool) -> None:
        if no_cells:
            self.no_cells = text
        # said once a job: a warning raised in a loop (superqt shows every one) says no more
        elif text not in self._told:
            self._told.add(text)
            self.notify(text, "warning")

    def set_pair(self, pair: ModelPair | None) -> None:
        """Use ``pair`` from now on (a loaded model, or ``None`` to start from scratch)."""
        self.pair = pair
        self.history = [] if pair is None else [dict(h) for h in pair.history]
        self.planned = len(self.history)
        self.pair_changed.emit()

    def reset(self) -> None:
        """Forget the pair: the next training starts from scratch."""
        if self.state is not RunState.IDLE:
            self.notify("Stop the running job before resetting the models.", "warning")
            return
        self.set_pair(None)
        self.notify("Models reset: the next Train starts from scratch.")

    # ------------------------------------------------------------------------------ training

    def idle(self) -> bool:
        """Whether a job may start; else a notification that says to wait or stop."""
        if self.state is not RunState.IDLE:
            self.notify("Busy: wait for the running job to finish, or press Stop.", "warning")
        return self.state is RunState.IDLE

    def train(self, request: TrainingRequest) -> GeneratorWorker | None:
        """Start (or resume) training in a worker; ``None`` after a notification."""
        if not self.idle():
            return None
        config, resume = request.config, self.pair
        if resume is not None and self.remaining:
            # settings left out stay left out, so that they are the resumed pair's
            unset = dict.fromkeys(config.unset)
            config = type(config).from_dict(
                {**config.to_dict(), **unset, "rounds": self.remaining}
            )
        boxed = request.item
        first_id = None if boxed is None else str(boxed.image.unique_id)
        corrected = [c for k, c in self.corrected.items() if k != first_id]
        items = corrected if boxed is None else [boxed, *corrected]
        if not items:
            self.notify("Nothing to train on: draw boxes on an image, or correct one.", "error")
            return None
        run = self.training = TrainingRun(self, items, config, resume, request.show_learning)
        self.planned = run.planned
        # the cells to check are this training's from now on: those of its rounds (none yet),
        # not the earlier run's nor the predictions the corrected images were corrected on
        self.last_report = None
        for item in corrected:
            self.predictions.pop(str(item.image.unique_id), None)
        if boxed is not None:
            self.trained_image = boxed.image
        self.set_state(RunState.STARTING)
        what = "Resuming training" if resume is not None else "Training"
        if boxed is None:
            on = f"{len(items)} corrected image(s)"
        else:
            painted = f", with the {boxed.painted} pixels you painted" if boxed.painted else ""
            more = f" and {len(items) - 1} corrected image(s)" if len(items) > 1 else ""
            on = f"'{boxed.image.name}'{more}{painted}"
        self.notify(f"{what} on {on}: preparing…")
        self.writer.defer_hidden = True
        self.prepare_layers(run.images, request.show_learning, then=run.start)
        return run.worker

    def prepare_layers(
        self, images: list[Image], show_learning: bool, then: Callable[[], None] | None = None
    ) -> None:
        """Make the result layers of the training images that are missing, one per turn."""
        roles = [r for r in RESULT_LAYERS if show_learning or r not in LEARNING_ROLES]
        self.writer.prepare(images, roles, then)

    def round_maps(self, image: Image) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
        """The newest round's (plane, instances, disagreement) of a training image."""
        report, run = self.last_report, self.training
        if report is None or run is None:
            return []
        start = 0
        for item_image, layout in zip(run.images, run.job.layouts, strict=True):
            if item_image == image:
                planes = layout.planes or [None]
                end = start + layout.count
                cells = distinct_cells(report.instances[start:end])  # as the layer has them
                maps = zip(planes, cells, report.disagreement[start:end], strict=True)
                return list(maps)
            start += layout.count
        return []

    def forget_removed_images(self) -> None:
        """Let go of the predictions (and cells written) of images no longer in the viewer.

        Each holds an image's labels and disagreement; kept for every image ever predicted,
        a day of predicting one image after another held them all. An image back in the
        viewer (undo of a removal) is predicted again to be checked.
        """
        viewer = self.viewer
        if viewer is None:
            return
        present = {str(layer.unique_id) for layer in viewer.layers}
        for cache in (self.predictions, self.writer.written):
            for key in [k for k in cache if k not in present]:
                del cache[key]

    def add_training(self, item: TrainingItem) -> None:
        """Train on ``item`` too from now on (a corrected image; it replaces an earlier one)."""
        self.corrected[str(item.image.unique_id)] = item

    def stop(self) -> None:
        """Stop training within one step (the models of the last completed round are kept),
        a folder batch after the image at hand (the finished images are kept), or a
        prediction after the plane at hand (nothing is shown)."""
        if self.state in (RunState.BATCH, RunState.PREDICTING) and self.segmenting is not None:
            self.segmenting.stop()
            self.set_state(self.state)  # the same job, asked to stop: Stop has done its part
            where = "image" if self.state is RunState.BATCH else "plane"
            self.notify(f"Stopping after the current {where}…")
            return
        if self.state in (RunState.STARTING, RunState.TRAINING) and self.job is not None:
            self.job.cancel()
            self.set_state(RunState.STOPPING)
            self.notify("Stopping after the current step…")

    def add_round(self, entry: dict[str, Any], update: RoundUpdate) -> None:
        """Keep a trained round in the history and show its layers (newest first)."""
        self.history.append(entry)
        self.last_report = update.report
        self.writer.show(entry["round"], update.layers, update.tables)
        self.round_done.emit(entry)

    def _round_shown(self) -> None:
        if self.job is not None:
            self.job.shown.set()

    def training_ended(self, run: TrainingRun) -> None:
        """Keep the pair of the last completed round and say how the run ended."""
        self.writer.finish()
        if run.job.last_good is not None:
            self.pair = run.job.last_good
            self.pair_changed.emit()
        self.set_state(RunState.IDLE)
        self.progress.emit(0, 0)
        if self.closing or run.error:
            return
        if run.cancelled and self.pair is None:
            self.notify(
                "Stopped before the first round ended: there are no models yet. Press Train to "
                "start training again."
            )
            return
        if run.cancelled:
            self.notify(
                f"Stopped after {len(self.history)} of {self.planned} rounds; the models of the "
                "last completed round are kept. Train again to go on."
            )
            return
        self.planned = len(self.history)
        early = " (labels settled early)" if self.history and self.history[-1]["converged"] else ""
        seconds = run.seconds
        per_round = seconds / max(run.count, 1)
        found = self.history[-1].get("found") if self.history else None
        after = "Predict another image or save the model."
        if found is not None and found < 0.5:  # the losses fell, yet the cells are not there
            after = (
                f"The networks found the cells of only {found:.0%} of the boxes: train on "
                "(Train), or with more Steps per round, before predicting."
            )
        # a notification too: training takes minutes, and the panel may be out of sight
        self.notify(
            f"Trained {run.count} round(s){early} in {seconds:.1f} s ({per_round:.1f} "
            f"s/round). {after}",
            "info",
        )

    # ------------------------------------------------------------------------------ predict

    def _can_segment(self, device: str | None) -> bool:
        """A trained pair, no running job, and the pair on ``device`` (moved there; None: where
        it is); else a notification that says what to do."""
        if not self.idle():  # first: while the first training runs there is no pair yet
            return False
        if self.pair is None:
            self.notify(
                "No trained model yet: train one (Train) or load one (Load model…).", "error"
            )
            return False
        # the device chosen now, not the one the pair was trained or loaded on: a user who
        # picks the CPU to free the GPU expects the CPU to segment, as the panel says
        return device is None or self._moved(self.pair, device, "segment again")

    def _moved(self, pair: ModelPair, device: str, again: str) -> bool:
        """Whether ``pair`` is now on ``device``; else a notification that says why and to
        ``again`` (what the user did) after freeing the GPU or choosing another device, and
        the pair left where it was."""
        target = device
        try:
            target = select_device(device)
            pair.to(target)  # whole where it was when the move fails
        except ValueError as err:  # a device this machine lacks
            self.notify(str(err), "error")
            return False
        except Exception as err:  # a GPU without room for the models, a CUDA error
            why = (
                "it has no room for them (out of memory)"
                if out_of_memory(err)
                else f"{type(err).__name__}: {err}"
            )
            self.notify(
                f"Could not move the models to {target}: {why}. Close other programs using "
                f"the GPU, or choose another Device (e.g. cpu), and {again}.",
                "error",
            )
            return False
        return True

    def predict(
        self,
        layer: Image,
        axes: LayerAxes,
        tile_size: int,
        *,
        track: bool = False,
        device: str | None = None,
    ) -> GeneratorWorker | None:
        """Segment ``layer`` (its ``axes`` read) with the pair in a worker, on ``device``
        (``"auto"``, ``"cpu"``...; None: where the pair is), a time series' cells tracked
        with ``track``; ``None`` after a notification."""
        if not self._can_segment(device):
            return None
        return PredictionRun(self, layer, axes, tile_size, track).worker  # self.segmenting

    def segment_folder(
        self,
        inputs: list[str],
        out_dir: str,
        tile_size: int,
        *,
        track: bool = False,
        overwrite: bool = False,
        on_conflict: Callable[[ResultExistsError], None] | None = None,
        axes: str | None = None,
        on_axes_unknown: Callable[[str], None] | None = None,
        device: str | None = None,
    ) -> GeneratorWorker | None:
        """Segment and measure every image of ``inputs`` into ``out_dir`` in a worker, as
        ``napari-mutualseg predict`` does (:class:`napari_mutualseg.batch.BatchRun`, in this
        process, on ``device``: None, where the pair is); ``batch_done`` carries the run.
        ``None`` after a notification.

        Results in ``out_dir`` that this run did not make (another model, other options)
        are replaced with ``overwrite``; otherwise they go to ``on_conflict`` (on the main
        thread, once the run has ended) or, without it, are said as an error. ``axes`` says
        what the images' axes are where their files do not; when no image could be segmented
        because no file said them, one such image's reason goes to ``on_axes_unknown``."""
        if not self._can_segment(device):
            return None
        run = FolderRun(  # self.segmenting from now on
            self,
            inputs,
            out_dir,
            tile_size,
            track,
            overwrite=overwrite,
            on_conflict=on_conflict,
            axes=axes,
            on_axes_unknown=on_axes_unknown,
        )
        return run.worker

    # ------------------------------------------------------------------------------ files

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the pair; the path written, or ``None`` after a notification."""
        if self.state is not RunState.IDLE:  # first: the first training has no pair yet
            self.notify("A job is running: stop it (or let it finish) before saving.", "warning")
            return None
        if self.pair is None:
            self.notify("No trained model to save: train one first.", "error")
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
            pair = ModelPair.load(path, device="cpu")  # read; then moved, where it may not fit
        except (OSError, CheckpointError) as err:
            self.notify(str(err), "error")
            return None
        if not self._moved(pair, device, "load the model again"):
            return None
        self.set_pair(pair)
        self.notify(
            f"Loaded {Path(path).name} ({len(pair.history)} round(s) trained; it takes "
            f"{pair.describe_input()}). Predict, or Train to continue."
        )
        return pair

    def wait(self) -> None:
        """Return once no job runs and every result is in the layers, running the event loop
        meanwhile (the viewer stays responsive).

        Ctrl-C (a notebook's interrupt) meanwhile stops the job as Stop does and, once it has
        ended, raises ``KeyboardInterrupt`` with what was kept; a second one raises it at once,
        the job still stopping.
        """
        interrupts: list[int] = []
        loop, timer = QEventLoop(), QTimer()

        def check() -> None:
            if len(interrupts) == 1 and self.can_stop:
                self.stop()
            if not self.busy or len(interrupts) > 1:
                loop.quit()

        timer.timeout.connect(check)
        timer.start(20)
        with _ctrl_c_calls(lambda signum, _frame: interrupts.append(signum)):
            while self.busy and len(interrupts) < 2:
                loop.exec()
        timer.stop()
        if interrupts:
            raise KeyboardInterrupt(self.last_message)

    # ------------------------------------------------------------------------------ closing

    @property
    def applied_rounds(self) -> list[int]:
        """Rounds whose results reached the layers, in order (coalesced rounds are left out)."""
        return self.writer.applied_rounds

    def watch_window(self, window: QObject) -> None:
        """End the jobs when ``window``, the viewer's window, is closed (and deleted).

        napari cancels the tasks of the window that was current when a job started, which is
        another viewer's when a script drives this one: that one's closing is not this
        viewer's, and this one's alone would leave the job writing into a closed viewer.
        """
        if id(window) not in self._windows:
            self._windows.add(id(window))
            window.destroyed.connect(self.viewer_closed)

    def viewer_closed(self, *_: Any) -> None:
        """The viewer closed: end the running job (without waiting) and show nothing more."""
        self.closing = True
        self.writer.stop()
        if self.job is not None:
            self.job.cancel()
        if self.segmenting is not None:
            self.segmenting.stop()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop any running job and wait up to ``timeout`` seconds for it to end."""
        self.viewer_closed()
        job = self.job
        if job is not None and self.state is not RunState.STARTING:  # a started training
            job.done.wait(timeout)
