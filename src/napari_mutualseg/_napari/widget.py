"""The dock widget: boxes in, two networks trained live in a worker, cells out.

The widget composes the panels (:mod:`.panels`) around the training settings
(:mod:`.settings`) and its viewer's run controller (:mod:`.controller`), and turns the user's
clicks (or a script's calls) into the controller's jobs. Closing the panel stops training; the
trained pair stays with the viewer, and a reopened panel shows it again.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Layer
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QInputDialog,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .cells import CellsPanel, FolderSummary
from .controller import RunController, TrainingRequest
from .correct import CheckPanel, Corrector
from .layers import find_own_layer, owner_info
from .panels import DataPanel, ModelPanel, PanelsView, StatusLine, TrainingPanel
from .prepare import (
    UserInputError,
    check_image_layer,
    outdated,
    training_item,
    write_supervision,
)
from .settings import TrainingSettings, preferred_settings

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes
    from superqt.utils import GeneratorWorker

    from ..batch import BatchRun
    from ..config import TrainConfig
    from ..files import ResultExistsError
    from ..models import ModelPair
    from ..training import RoundReport


def _forward(panel: str, prop: property) -> property:
    """A panel's property, offered by the widget to scripts (same name, same docs)."""
    return property(
        lambda self: prop.fget(getattr(self, panel)),
        lambda self, value: prop.fset(getattr(self, panel), value),
        doc=prop.__doc__,
    )


class _PanelScroll(QScrollArea):
    """The panels' scroll area, as wide as the panels need beside its scroll bar.

    A scroll area's size hint leaves the bar out, and is not asked again when the panels
    grow (a layer picked, a longer name): the dock opened narrower than the panels, their
    right-hand buttons behind a sideways scroll bar. Panels that grow (a button's text while
    a job runs) widen the dock at once, before a sideways bar could show.
    """

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        width = self.widget().minimumSizeHint().width() + self._beside()
        return QSize(max(hint.width(), width), hint.height())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        width = self.widget().sizeHint().width() + self._beside()
        return QSize(max(hint.width(), self.minimumSizeHint().width(), width), hint.height())

    def _beside(self) -> int:
        """The width beside the panels: the bar, and the frame a style may draw around them."""
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def showEvent(self, event: QEvent) -> None:
        super().showEvent(event)
        if not getattr(self, "_opened", False):
            self._opened = True
            # napari sizes its dock before its style sheet's larger font reaches the panels,
            # which then opened with fields under their names: widened once, laid out
            timer = QTimer(self)  # gone with the panels, when closed before it fires
            timer.setSingleShot(True)
            timer.timeout.connect(self._open_wide)
            timer.start(0)

    def _open_wide(self) -> None:
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        wider = self.sizeHint().width() - self.width()
        if isinstance(window, QMainWindow) and wider > 0:
            window.resizeDocks([dock], [dock.width() + wider], Qt.Orientation.Horizontal)

    def eventFilter(self, watched: Any, event: QEvent) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the panels' new size reaches the dock
            if self.widget().minimumSizeHint().width() > self.viewport().width():
                # ...now, before the scroll bars are set: a sideways bar showed until the
                # window laid the dock out again, a second later while training
                parent = self.parentWidget()
                while parent is not None:
                    if parent.layout() is not None:
                        parent.layout().activate()
                    parent = parent.parentWidget()
        return super().eventFilter(watched, event)


class MutualSegWidget(QWidget):
    """Draw boxes, train two networks that teach each other, segment other images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the widget reads and writes.

    Attributes
    ----------
    settings : TrainingSettings
        The training settings shown in the panel; set them from scripts.
    controller : RunController
        The viewer's jobs, trained pair and round history (shared by its panels).
    status : QLabel
        The status line under the panels: what runs, how far, and what to do next.
    progress : QProgressBar
        How far the running job is, above the status line (hidden while none runs).

    Examples
    --------
    >>> widget = MutualSegWidget(viewer)
    >>> viewer.window.add_dock_widget(widget)
    >>> widget.settings.rounds = 3
    >>> widget.generate_supervision()
    >>> pair = widget.train(block=True)
    >>> assert pair is not None, widget.last_error
    >>> cells = widget.predict(viewer.layers["other image"], block=True)
    >>> widget.save_model("cells.pt")
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.settings = TrainingSettings(preferred_settings())
        self.controller = RunController.for_viewer(napari_viewer)
        if self.controller.pair is not None:
            # a reopened panel goes on with the viewer's pair: its size and channels (as Load)
            self.settings.take_model(self.controller.pair.settings)
        self.data = DataPanel(napari_viewer)
        self.training = TrainingPanel(self.settings)
        self.model = ModelPanel(napari_viewer)
        self.correct = Corrector(napari_viewer, self.controller)
        self.check = CheckPanel(napari_viewer, self.correct)
        self.cells = CellsPanel(napari_viewer, self.controller.notify)
        self.summary: FolderSummary | None = None  # of the last folder segmented
        self._summaries: dict[str, Any] = {}  # the dock of each results folder's summary
        self.footer = StatusLine(
            "Draw a box around each cell of an image (New boxes layer), then press Train. Or "
            "Load model… to segment with one trained before."
        )
        self.status = self.footer.text
        self.progress = self.footer.progress
        self._docked = False
        self._closed = False
        self._build()
        self._connect()
        _check_qt_binding()

    def _build(self) -> None:
        inner = QWidget()
        column = QVBoxLayout(inner)
        for part in (self.data, self.training, self.model, self.check, self.cells):
            column.addWidget(part)
        column.addStretch(1)
        # A scroll area: the panel fits a laptop screen however tall its content grows. The
        # status line stays under it, in sight: what runs, on which device and round, and what
        # to do next.
        scroll = _PanelScroll()
        scroll.setWidget(inner)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.footer)
        self.setMinimumHeight(200)

    def _connect(self) -> None:
        d, t, m, c = self.data, self.training, self.model, self.controller
        d.generate.clicked.connect(self.generate_supervision)
        # Bound methods, never lambdas, for Qt signals: a lambda is kept by the C++ connection,
        # out of the garbage collector's sight, and kept a closed panel alive with it.
        t.train.clicked.connect(self._train_clicked)
        t.stop.clicked.connect(self.stop)
        t.reset.clicked.connect(self.reset_models)
        m.predict.clicked.connect(self._predict_clicked)
        m.save_requested.connect(self._save_agreed)
        m.load_requested.connect(self.load_model)
        m.folder_requested.connect(self._segment_folder_asked)
        self.check.train_requested.connect(self._train_clicked)
        self.check.boxes_proposed.connect(self._use_proposed_boxes)
        self.settings.changed.connect(self._on_setting)
        self._view = PanelsView(c, self.settings, (d, t, m, self.check), self.footer, self)
        c.batch_done.connect(self._show_summary)

    def _train_clicked(self) -> None:
        self.train()

    def _predict_clicked(self) -> None:
        self.predict()

    def _save_agreed(self, path: str) -> None:
        self.save_model(path, overwrite=True)  # the dialog asked before replacing a file

    def _on_setting(self, name: str, value: Any) -> None:
        if name == "show_learning" and self.controller.job is not None:
            self.controller.job.show_learning = bool(value)

    def _use_proposed_boxes(self, image: Image, boxes: Shapes) -> None:
        # proposed boxes make a new training image: pick both for the Data panel
        self.data.image_layer, self.data.boxes_layer = image, boxes

    # ------------------------------------------------------------------------------ layers

    image_layer = _forward("data", DataPanel.image_layer)
    image_axes = _forward("data", DataPanel.image_axes)
    boxes_layer = _forward("data", DataPanel.boxes_layer)
    region_layer = _forward("data", DataPanel.region_layer)
    earlier_supervision = _forward("data", DataPanel.earlier_supervision)

    def new_boxes_layer(self) -> Shapes:
        """Add an empty Shapes layer "boxes" in rectangle mode, on top of the image."""
        return self.data.new_boxes_layer()

    def new_region_layer(self) -> Shapes:
        """Add an empty Shapes layer "region" in polygon mode."""
        return self.data.new_region_layer()

    # ------------------------------------------------------------------------------ supervision

    def generate_supervision(self) -> Labels | None:
        """Make the ellipse supervision from the boxes and show it as "<image> supervision".

        Made again, it keeps every pixel the user painted on it. Refused while a job runs
        (as the button is): the result layers it prepares are the ones a training writes.

        Returns
        -------
        napari.layers.Labels or None
            The supervision layer, or ``None`` after a notification.
        """
        if not self.controller.idle():
            return None
        image, earlier = self.image_layer, self.earlier_supervision
        try:
            layer, record, kept = write_supervision(
                self.viewer, image, self.boxes_layer, self.data.picked_region(), earlier
            )
        except UserInputError as err:
            self.controller.notify(str(err), "error")
            return None
        self.earlier_supervision = None  # its paint is in the layer now; taken once
        for note in record.notes:
            show_warning(note)
        # the result layers too, now: adding layers while training would stall the viewer
        self.controller.prepare_layers([image], self.settings.show_learning)
        self.controller.notify(record.summary(kept))
        return layer

    # ------------------------------------------------------------------------------ training

    @property
    def pair(self) -> ModelPair | None:
        """The trained (or loaded) networks; training again resumes from them."""
        return self.controller.pair

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per trained round (losses, changed labels, seconds, device)."""
        return self.controller.history

    @property
    def last_report(self) -> RoundReport | None:
        """The newest round's full report (class maps, instances, labels)."""
        return self.controller.last_report

    @property
    def last_error(self) -> str | None:
        """Why the last ``train``, ``predict`` or ``segment_folder`` did not work, as the panel
        said it; ``None`` once its job ended well or was stopped (Stop, Ctrl-C), and while it
        runs.

        A job a script started and did not wait for (the call returned its worker) failed
        when this is set once it ended (a NaN loss, out of memory, an image that cannot be
        read); with ``block=True`` the call returned ``None``. A folder whose images did not
        all segment failed too (``run_report.csv`` says why each did), though its
        ``block=True`` call returns the run, whose results say which. A call refused before
        its job started (no trained model, no such layer, another job running) returns
        ``None`` and says why here too.
        """
        return self.controller.last_error

    @property
    def is_training(self) -> bool:
        """Whether a training job is starting, running or stopping."""
        return self.controller.state.trains

    @property
    def is_busy(self) -> bool:
        """A job runs, or its results are still on their way into the layers."""
        return self.controller.busy

    def config(self) -> TrainConfig:
        """The engine's settings as the panel shows them."""
        return self.settings.to_config()

    def train(self, *, block: bool = False) -> GeneratorWorker | ModelPair | None:
        """Train (or resume training) on the picked image in a worker thread.

        Uses the supervision layer with every pixel the user painted on it. It is made first
        when missing, and made again (keeping the painted pixels) when the boxes changed.
        Images added by *Check and correct* train along; with no image or boxes picked, the
        trained (or loaded) pair goes on with those corrected images alone.

        Parameters
        ----------
        block : bool
            Wait (keeping the viewer responsive) until training ends and its results are in
            the layers.

        Returns
        -------
        GeneratorWorker, ModelPair or None
            Without ``block``, the worker. With ``block``, the trained pair (:attr:`pair`),
            also of a training stopped after a round; ``None`` when it failed
            (:attr:`last_error` says why; :attr:`pair` keeps the pair of its last good
            round) or was stopped before its first round ended.
            ``None`` after a notification when training cannot start (:attr:`last_error`
            says why).
        """
        worker = self._start_training()
        return self._started(worker, block, lambda: None if self.last_error else self.pair)

    def _start_training(self) -> Any:
        notify = self.controller.notify
        if not self.controller.idle():
            return None
        image = self.image_layer
        config, show = self.settings.to_config, self.settings.show_learning
        unboxed = image is None or self.boxes_layer is None
        if unboxed and self.controller.corrected and self.controller.pair is not None:
            # a loaded (or trained) pair refined by the corrected images alone
            return self.controller.train(TrainingRequest(None, config(), show))
        try:
            check_image_layer(image)
            boxes, region = self.boxes_layer, self.data.picked_region()
        except UserInputError as err:
            notify(str(err), "error")
            return None
        layer = find_own_layer(self.viewer, "supervision", image)
        if layer is None or outdated(layer, image, boxes, region):
            layer = self.generate_supervision()  # keeps what the user painted
            if layer is None:
                return None
        try:
            item = training_item(layer, image, boxes, region)
            request = TrainingRequest(item, config(), show)
        except ValueError as err:
            notify(str(err), "error")
            return None
        return self.controller.train(request)

    def stop(self) -> None:
        """Stop the running job: training within one step (the models of the last completed
        round are kept), a prediction after the plane at hand (nothing is shown), a folder
        after the image at hand (the images done are kept)."""
        self.controller.stop()

    def reset_models(self) -> None:
        """Forget the trained models: the next training starts from scratch."""
        self.controller.reset()

    def _started(self, worker: Any, block: bool, made: Callable[[], Any]) -> Any:
        """A job was asked for: if it started, it ends when the viewer's window closes; its
        worker, or with ``block`` what it ``made`` once it has ended. If not, ``None``, and
        why (said last) is :attr:`last_error`."""
        if worker is None:
            self.controller.refused()
            return None
        window = self.window()
        if isinstance(window, QMainWindow):  # docked in the viewer
            self.controller.watch_window(window)
        if not block:
            return worker
        self.wait()
        return made()

    def wait(self) -> None:
        """Return once every job is done and its results are in the layers (the viewer stays
        responsive meanwhile); ``block=True`` waits so.

        Ctrl-C (a notebook's interrupt) meanwhile stops the job as Stop does and raises
        ``KeyboardInterrupt`` once it has ended, saying what was kept.
        """
        self.controller.wait()

    # ------------------------------------------------------------------------------ predict

    def predict(
        self, layer: Image | str | None = None, *, block: bool = False
    ) -> GeneratorWorker | Labels | None:
        """Segment an image layer with the trained models in a worker ("<image> cells").

        On the training image itself the result goes beside the box-guided one, as
        "<image> cells (no boxes)".

        Parameters
        ----------
        layer : napari.layers.Image or str, optional
            The image (default: the one picked next to Predict). A stack or time series is
            segmented plane by plane, read one plane at a time, with the channels the
            networks were trained on.
        block : bool
            Wait (keeping the viewer responsive) until the labels are added.

        Returns
        -------
        GeneratorWorker, napari.layers.Labels or None
            Without ``block``, the worker. With ``block``, the cells layer made, its cell
            measurements in its ``features``; ``None`` when none was shown: the prediction
            failed, or its image was removed or changed meanwhile (:attr:`last_error` says
            why), or it was stopped. ``None`` after a notification when it cannot start
            (:attr:`last_error` says why).
        """
        worker = self._start_prediction(layer)
        run = self.controller.segmenting  # the prediction just started, where one did
        return self._started(worker, block, lambda: run.cells)

    def _start_prediction(self, layer: Image | str | None) -> Any:
        if isinstance(layer, str):
            name, layer = layer, next((x for x in self.viewer.layers if x.name == layer), None)
            if layer is None:
                names = ", ".join(f"'{x.name}'" for x in self.viewer.layers) or "none"
                self.controller.notify(
                    f"There is no layer named '{name}' to segment; the layers are: {names}.",
                    "error",
                )
                return None
        elif layer is None:
            layer = self.model.target.layer
        elif not isinstance(layer, Layer):  # pixels, not a layer: no layer to put cells beside
            self.controller.notify(
                "predict takes an image layer of this viewer or its name (it was given a "
                f"{type(layer).__name__}): add the image first (layer = viewer.add_image(data, "
                "name=...)) and pass that layer.",
                "error",
            )
            return None
        if layer is not None and layer not in self.viewer.layers:
            # its cells would have nowhere to go (a script's layer of another viewer, or one
            # removed since)
            self.controller.notify(
                f"'{layer.name}' is not in this panel's viewer: add it to this viewer, or "
                "segment it from the panel of the viewer that holds it.",
                "error",
            )
            return None
        try:
            axes = check_image_layer(layer, purpose="segment")
        except UserInputError as err:
            self.controller.notify(str(err), "error")
            return None
        if axes.note:
            show_warning(axes.note)
        worker = self.controller.predict(
            layer,
            axes,
            self.settings.tile_size,
            track=self.settings.track,
            device=self.settings.device,
        )
        if worker is not None and owner_info(layer) is None:
            # the image segmented is the one whose cells are checked next
            self.check.image.layer = layer
        return worker

    def segment_folder(
        self,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        axes: str | None = None,
        block: bool = False,
    ) -> GeneratorWorker | BatchRun | None:
        """Segment and measure every image of a folder in the background, as the command
        ``napari-mutualseg predict MODEL FOLDER --out OUT`` does: ``<name>_cells.tif`` and
        ``<name>_cells.csv`` per image, ``summary.csv`` and ``run_report.csv``; images already
        done are skipped. Stop ends it after the image at hand; the summary opens when done.

        Parameters
        ----------
        images : str, path or iterable of them
            Folders (searched with their subfolders), image files or glob patterns (a list,
            a tuple, ``Path.glob``'s paths).
        out_dir : str or path
            Folder for the results.
        overwrite : bool
            Segment every image again, replacing results already in ``out_dir`` (those of
            another model or other options among them: without it, they are refused, with
            an error notification).
        axes : str, optional
            What each axis of the images is (``"ZYX"``, ``"TYX"``, ``"CYX"``...) where their
            files do not say (the panel asks when no image could be segmented without them).
        block : bool
            Wait (keeping the viewer responsive) until the run is over.

        Returns
        -------
        GeneratorWorker, BatchRun or None
            Without ``block``, the worker. With ``block``, the run once it is over (stopped
            too), its ``results`` one per image (done, skipped, failed with its reason, not
            done); some failed when :attr:`last_error` says so. ``None`` when the run itself
            failed (no such folder, results of another model in ``out_dir``:
            :attr:`last_error` says why). ``None`` after a notification when it cannot start
            (:attr:`last_error` says why).
        """
        return self._segment_folder(images, out_dir, overwrite=overwrite, axes=axes, block=block)

    def _segment_folder(
        self,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        axes: str | None = None,
        block: bool = False,
        ask: bool = False,
    ) -> Any:
        one = isinstance(images, (str, os.PathLike))
        inputs = [str(p) for p in ([images] if one else images)]
        controller, on_conflict, on_axes_unknown = self.controller, None, None
        if ask:  # weakly: the run outlives a closed panel, which then asks nothing
            this = weakref.ref(self)

            def on_conflict(err: ResultExistsError) -> None:
                widget = this()
                if widget is None or widget._closed:
                    how = "segment the folder again from the panel and answer Replace"
                    controller.notify(err.advice(how), "error")
                else:
                    widget._replace_results(inputs, out_dir, err, axes)

            def on_axes_unknown(reason: str) -> None:
                widget = this()
                if widget is not None and not widget._closed:
                    widget._ask_axes(inputs, out_dir, reason)

        worker = controller.segment_folder(
            inputs,
            str(out_dir),
            self.settings.tile_size,
            track=self.settings.track,
            overwrite=overwrite,
            on_conflict=on_conflict,
            axes=axes,
            on_axes_unknown=on_axes_unknown,
            device=self.settings.device,
        )
        run = controller.segmenting  # the run just started, where one did
        return self._started(worker, block, lambda: run.batch)

    def _segment_folder_asked(self, images: str, out_dir: str) -> None:
        # the panel's button: results in the way are the user's to replace, asked in a dialog
        self._segment_folder(images, out_dir, ask=True)

    def _replace_results(
        self, inputs: list[str], out_dir: str | Path, err: Any, axes: str | None = None
    ) -> None:
        """Ask whether to replace the results in the way; segment again, replacing them, on
        yes."""
        if self._confirm_replace(err):
            self._segment_folder(inputs, out_dir, overwrite=True, axes=axes, ask=True)
        else:
            self.controller.notify(
                f"{err.reason}; nothing was segmented and those results are kept. "
                f"To segment this folder, {err.remedy}.",
                "warning",
            )

    def _ask_axes(self, inputs: list[str], out_dir: str | Path, reason: str) -> None:
        """No image of the folder says its axes: ask for them, and segment the folder again
        with them (the advice of the reason, ``--axes``, is the command line's)."""
        said = reason.split(": say what each axis is")[0]
        text, ok = QInputDialog.getText(
            self,
            "Axes of the images",
            f"{said}.\n\nWhat is each axis of these images? For example ZYX (z-stacks), TYX "
            "(time series), CYX (channels), CZYX or TZYX:",
        )
        if ok and text.strip():
            self._segment_folder(inputs, out_dir, axes=text.strip().upper(), ask=True)

    def _confirm_replace(self, err: Any) -> bool:
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Results already there",
            f"{err.reason}.\n\nReplace {err.what} with this model's, segmenting every image "
            f"again? Cancel keeps them: then {err.remedy}.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.button(QMessageBox.StandardButton.Yes).setText("Replace")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _show_summary(self, run: Any) -> None:
        # one summary per results folder: a run again (after Stop, with other images) replaces
        # the earlier one, which would otherwise stay docked beside it, out of date
        key = str(Path(run.out_dir).absolute())
        earlier = self._summaries.pop(key, None)
        if earlier is not None:
            with contextlib.suppress(LookupError, RuntimeError):  # closed by the user already
                self.viewer.window.remove_dock_widget(earlier)
        self.summary = FolderSummary(self.viewer, run, self.controller.notify)
        self._summaries[key] = self.viewer.window.add_dock_widget(
            self.summary, name=f"Summary of {Path(run.out_dir).name}", area="right"
        )

    # ------------------------------------------------------------------------------ save / load

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the trained pair to one file, never replacing one unless ``overwrite``; the
        path written, or ``None`` after a notification."""
        return self.controller.save(path, overwrite=overwrite)

    def load_model(self, path: str | Path) -> ModelPair | None:
        """Load a saved pair for Predict (and resumed training); ``None`` after a notification."""
        pair = self.controller.load(path, device=self.settings.device)
        if pair is not None:
            self.settings.take_model(pair.settings)
        return pair

    # ------------------------------------------------------------------------------ closing

    def event(self, event: QEvent) -> bool:
        # napari's close button takes the widget out of its dock (parent None), it does not
        # delete it: that is when the panel is closed.
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self.close_panel()
        return super().event(event)

    def close_panel(self) -> None:
        """Stop training and let go of the viewer; the trained pair stays with the viewer."""
        self._closed = True
        self.controller.stop()
        self._view.unfollow()
        self.controller.batch_done.disconnect(self._show_summary)
        for picker in (*self.data.pickers, self.model.target):
            picker.unwatch()
        self.check.unwatch()
        self.cells.unwatch()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop training and wait up to ``timeout`` seconds for the worker to end."""
        self.controller.shutdown(timeout)


_binding_checked = False


def _check_qt_binding() -> None:
    """Warn once about a Qt binding known to crash long sessions."""
    global _binding_checked
    if _binding_checked:
        return
    _binding_checked = True
    import sys

    try:
        import PySide6
    except ImportError:
        return
    if PySide6.__version__.startswith("6.12.") and sys.version_info < (3, 12):
        # 6.12.0 drops a reference to None/True on every call that returns them; only Python
        # 3.12+ (immortal None/True) survives it: napari aborts after minutes of training.
        show_warning(
            f"PySide6 {PySide6.__version__} on Python {sys.version_info.major}."
            f"{sys.version_info.minor} crashes napari in long sessions. Install PySide6 6.11 "
            "(pip install 'PySide6<6.12') or use Python 3.12 or newer."
        )


__all__ = ["MutualSegWidget"]
