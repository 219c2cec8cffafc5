"""The dock widget: boxes in, two networks trained live in a worker, cells out.

The widget adapts the core (``training``, ``models``, ``supervision``) to napari: it reads
layers on the main thread, runs the engine in a ``thread_worker`` generator and writes its
reports back into layers on the main thread, a little at a time, so the viewer never freezes.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEventLoop, QPointF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from . import training
from ._napari_utils import (
    OWNER_KEY,
    PreparedSupervision,
    UserInputError,
    check_image_layer,
    find_own_layer,
    owner_info,
    prepare_supervision,
    upsert_labels,
)
from .supervision import BACKGROUND, BOUNDARY, CELL, IGNORE

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer, Shapes

    from .models import ModelPair
    from .training import RoundReport, TrainConfig

MODE_ALL = "Every cell is boxed"
MODE_REGION = "Only inside a drawn region"
_VALID_CLASSES = np.array([BACKGROUND, CELL, BOUNDARY, IGNORE])
# Delay between two layer refreshes: lets Qt and vispy draw in between.
_REFRESH_GAP_MS = 5


# --------------------------------------------------------------------------------------------
# worker side (no Qt, no napari: runs in the worker thread)


class WorkerFailure:
    """An exception raised in a worker, handed back as the worker's return value.

    Workers never raise: superqt treats a ``RuntimeError`` escaping a generator worker (CUDA
    out of memory and NaN losses are ``RuntimeError`` subclasses) as "the worker was deleted"
    and drops it without a signal, and napari 0.9's task-status slot for ``errored`` takes the
    wrong number of arguments. A returned failure reaches the main thread reliably.
    """

    def __init__(self, original: BaseException) -> None:
        self.original = original

    def __repr__(self) -> str:
        return f"WorkerFailure({self.original!r})"


class TrainingJob:
    """What the main thread and the training thread share: the trainer and a cancel flag."""

    def __init__(self, make_trainer: Callable[[], Any]) -> None:
        self.make_trainer = make_trainer
        self.trainer: Any = None
        self.device_name: str = ""
        self.last_good: ModelPair | None = None
        self.started = False
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        """Ask the trainer to stop before its next step (thread-safe)."""
        self.cancelled.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.cancel()

    def progress(self) -> tuple[int, int]:
        """Steps done and planned (both networks together)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return int(trainer.step), int(trainer.total_steps)


def _run_training(job: TrainingJob) -> Generator[RoundReport, None, WorkerFailure | None]:
    try:
        trainer = job.make_trainer()
        job.device_name = getattr(trainer, "device_name", str(trainer.device))
        job.trainer = trainer
        if job.cancelled.is_set():
            trainer.cancel()
        for report in trainer:
            # The trainer is paused at its own yield: the copy is consistent.
            job.last_good = trainer.pair.copy()
            yield report
    except Exception as exc:
        return WorkerFailure(exc)
    finally:
        job.trainer = None
        _release_device_memory()
        job.done.set()
    return None


def _release_device_memory() -> None:
    # Without this, CUDA memory stays reserved until napari closes (a common complaint).
    # Only then: a full collection holds the GIL long enough to stall the viewer.
    try:
        import torch

        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never raise
        pass


def _run_prediction(
    pair: ModelPair, data: Any, planes: list[int] | None, tile_size: int, name: str
) -> Generator[tuple[int, int], None, np.ndarray | WorkerFailure]:
    try:
        if planes is None:
            yield 0, 1
            return pair.segment(np.asarray(data), tile_size=tile_size, name=name)
        out = np.zeros(tuple(data.shape), np.int32)
        offset = 0
        for i, p in enumerate(planes):
            yield i, len(planes)
            labels = pair.segment(np.asarray(data[p]), tile_size=tile_size, name=f"{name}[{p}]")
            # distinct ids across planes, so that each cell of the stack has its own colour
            labels[labels > 0] += offset
            offset = max(offset, int(labels.max()))
            out[p] = labels
        return out
    except Exception as exc:
        return WorkerFailure(exc)
    finally:
        _release_device_memory()


_gc_frozen = 0


def _freeze_gc() -> None:
    """Keep the objects that exist now out of Python's full garbage collections.

    A full collection scans every object of napari, Qt and torch (0.2-0.3 s) while holding
    the GIL; triggered in the worker thread, it freezes the viewer. Objects made during the
    job are still collected; everything is scanned again after :func:`_unfreeze_gc`.
    """
    global _gc_frozen
    if _gc_frozen == 0:
        gc.freeze()
    _gc_frozen += 1


def _unfreeze_gc() -> None:
    global _gc_frozen
    if _gc_frozen > 0:
        _gc_frozen -= 1
        if _gc_frozen == 0:
            gc.unfreeze()


class _TrainingWorker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari's task cancel, closing the window) stops the
    trainer within one step instead of waiting for the round to end."""

    job: TrainingJob | None = None

    def quit(self) -> None:
        if self.job is not None:
            self.job.cancel()
        # The generator ends by itself once the trainer is cancelled; aborting the worker
        # here would leave the generator unfinished and its clean-up unrun.


def _shutdown(state: _WidgetState, *_: Any) -> None:
    """Stop any running job and wait for it; never touches the (possibly deleted) widget."""
    state.closing = True
    job = state.job
    if job is not None and job.started and not job.done.is_set():
        job.cancel()
        job.done.wait(state.shutdown_timeout)


class _WidgetState:
    """Plain-Python state that outlives the widget's C++ object (used while closing)."""

    def __init__(self) -> None:
        self.closing = False
        self.job: TrainingJob | None = None
        self.shutdown_timeout = 30.0


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


def describe_error(exc: BaseException, device: str = "") -> str:
    """A user-facing message with advice for an exception raised while training or predicting."""
    original = getattr(exc, "original", exc)
    text = str(original)
    where = f" on {device}" if device else ""
    oom = type(original).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
    if oom:
        return (
            f"Out of memory{where}. Lower 'patch size' or 'batch size' (Advanced) or the tile "
            "size, close other programs using the GPU, or choose device 'cpu'. The models of the "
            "last completed round are kept."
        )
    if "nan" in text.lower() and type(original).__name__ == "TrainingError":
        return f"{text} The models of the last completed round are kept."
    if isinstance(original, (ValueError, UserInputError)):
        return text
    return f"Failed{where}: {type(original).__name__}: {text}"


# --------------------------------------------------------------------------------------------
# the loss curve


class LossPlot(QWidget):
    """A small loss-per-round curve for both networks, drawn with QPainter."""

    COLORS = (QColor(80, 160, 255), QColor(255, 150, 40))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[float, float]] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss per round: network A (blue), network B (orange)")

    def add(self, loss_a: float, loss_b: float) -> None:
        """Append one round and redraw."""
        self.losses.append((float(loss_a), float(loss_b)))
        self.update()

    def set_history(self, losses: list[tuple[float, float]]) -> None:
        """Replace all points (e.g. from a loaded model's history)."""
        self.losses = [(float(a), float(b)) for a, b in losses]
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            metrics = painter.fontMetrics()
            line = metrics.height()
            rect = self.rect().adjusted(metrics.horizontalAdvance("0.000") + 6, line, -6, -line)
            fg = self.palette().color(self.foregroundRole())
            painter.setPen(QPen(fg, 1))
            painter.drawRect(rect)
            finite = [v for pair in self.losses for v in pair if np.isfinite(v)]
            if not finite:
                painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss per round")
                return
            lo, hi = min(finite), max(finite)
            if hi - lo < 1e-12:
                lo, hi = lo - 0.5, hi + 0.5
            n = len(self.losses)
            left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            painter.drawText(0, rect.top() - line // 2, rect.left() - 4, line, right, f"{hi:.3g}")
            painter.drawText(
                0, rect.bottom() - line // 2, rect.left() - 4, line, right, f"{lo:.3g}"
            )
            painter.drawText(rect.left(), rect.bottom() + 1, rect.width(), line, left, "round 1")
            painter.drawText(rect.left(), rect.bottom() + 1, rect.width(), line, right, f"{n}")
            painter.drawText(rect.left(), 0, rect.width(), line, left, "loss")
            x = rect.right()
            for label, color in zip(("B", "A"), self.COLORS[::-1], strict=True):
                x -= metrics.horizontalAdvance(f"— {label}") + 8
                painter.setPen(QPen(color, 2))
                painter.drawText(x, 0, rect.right() - x, line, left, f"— {label}")

            def point(i: int, v: float) -> QPointF:
                px = rect.left() + (rect.width() * i / max(n - 1, 1))
                py = rect.bottom() - rect.height() * (v - lo) / (hi - lo)
                return QPointF(px, py)

            for k, color in enumerate(self.COLORS):
                painter.setPen(QPen(color, 2))
                path = QPainterPath()
                started = False
                for i, pair in enumerate(self.losses):
                    v = pair[k]
                    if not np.isfinite(v):
                        started = False
                        continue
                    p = point(i, v)
                    if started:
                        path.lineTo(p)
                    else:
                        path.moveTo(p)
                        started = True
                    painter.drawEllipse(p, 2.5, 2.5)
                painter.drawPath(path)
        finally:
            painter.end()


# --------------------------------------------------------------------------------------------
# the dock widget


class MutualSegWidget(QWidget):
    """Draw boxes, train two networks that teach each other, segment other images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the widget reads and writes.

    Attributes
    ----------
    pair : ModelPair or None
        The trained (or loaded) networks; training again resumes from them.
    worker : GeneratorWorker or None
        The running (or last) training worker.
    predict_worker : FunctionWorker or GeneratorWorker or None
        The running (or last) prediction worker.
    reports : list of RoundReport
        Every round report of this session, in order.
    applied_rounds : list of int
        Rounds whose results were written into the layers (newer reports replace older ones
        that were not yet shown).

    Examples
    --------
    >>> widget = MutualSegWidget(viewer)
    >>> viewer.window.add_dock_widget(widget)
    >>> widget.generate_supervision()
    >>> widget.train(block=True)
    >>> widget.predict(viewer.layers["other image"], block=True)
    >>> widget.save_model("cells.pt")
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.pair: ModelPair | None = None
        self.worker: GeneratorWorker | None = None
        self.predict_worker: GeneratorWorker | FunctionWorker | None = None
        self.reports: list[RoundReport] = []
        self.applied_rounds: list[int] = []
        self.prepared: dict[str, PreparedSupervision] = {}
        self._state = _WidgetState()
        self._session: dict[str, Any] | None = None
        self._pending: RoundReport | None = None
        self._steps: list[Callable[[], None]] = []
        self._pbar: progress | None = None
        self._training_finished = True
        self._predicting = False

        self._build_ui()
        _check_qt_binding()
        self._apply_timer = QTimer(self)
        self._apply_timer.setSingleShot(True)
        self._apply_timer.timeout.connect(self._apply_next)
        self._poll_timer = QTimer(self)
        self._poll_timer.setInterval(250)
        self._poll_timer.timeout.connect(self._poll_progress)

        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._refresh_layer_choices)
        layers.events.moved.connect(self._refresh_layer_choices)
        for layer in layers:
            layer.events.name.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._update_device_label()
        self._update_buttons()

        # Closing the dock or the viewer while training: stop the trainer and wait for it.
        self.destroyed.connect(partial(_shutdown, self._state))
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(partial(_shutdown, self._state))

    # ---------------------------------------------------------------------------- UI

    def _build_ui(self) -> None:
        from .models import available_devices

        layout = QVBoxLayout(self)

        data_box = QGroupBox("Data")
        form = QFormLayout(data_box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image to train on: 2D, or a stack of 2D planes")
        form.addRow("Image", self.image_combo)
        self.boxes_combo = QComboBox()
        self.boxes_combo.setToolTip("A Shapes layer with one rectangle around each cell")
        self.new_boxes_button = QPushButton("New boxes layer")
        self.new_boxes_button.setToolTip("Add a Shapes layer 'boxes' in rectangle mode")
        row = QHBoxLayout()
        row.addWidget(self.boxes_combo, 1)
        row.addWidget(self.new_boxes_button)
        form.addRow("Boxes", row)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([MODE_ALL, MODE_REGION])
        self.mode_combo.setToolTip(
            "Every cell is boxed: everything outside the boxes is background.\n"
            "Only inside a drawn region: outside the region nothing is known (ignored)."
        )
        form.addRow("Annotation", self.mode_combo)
        self.region_combo = QComboBox()
        self.new_region_button = QPushButton("New region layer")
        row = QHBoxLayout()
        row.addWidget(self.region_combo, 1)
        row.addWidget(self.new_region_button)
        form.addRow("Region", row)
        self.supervision_button = QPushButton("Generate supervision")
        self.supervision_button.setToolTip(
            "Make the ellipse labels from the boxes; correct them with the paint tools if needed"
        )
        form.addRow(self.supervision_button)
        layout.addWidget(data_box)

        train_box = QGroupBox("Training")
        form = QFormLayout(train_box)
        d = training.TrainConfig.recommended()
        self.rounds_spin = QSpinBox(minimum=1, maximum=1000, value=d.rounds)
        self.rounds_spin.setToolTip("Rounds of mutual learning (stops early when labels settle)")
        form.addRow("Rounds", self.rounds_spin)
        self.steps_spin = QSpinBox(
            minimum=1, maximum=1_000_000, value=d.steps_per_round, singleStep=50
        )
        form.addRow("Steps per round", self.steps_spin)
        self.width_spin = QSpinBox(minimum=2, maximum=256, value=d.width, singleStep=4)
        self.width_spin.setToolTip("Channels of the first U-Net level (model size)")
        form.addRow("Model width", self.width_spin)
        self.lr_spin = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=0.5, singleStep=1e-4)
        self.lr_spin.setValue(d.learning_rate)
        form.addRow("Learning rate", self.lr_spin)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=d.seed)
        form.addRow("Seed", self.seed_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        form.addRow("Device", self.device_combo)
        self.device_label = QLabel()
        self.device_label.setWordWrap(True)
        form.addRow(self.device_label)

        advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        self.depth_spin = QSpinBox(minimum=1, maximum=8, value=d.depth)
        adv_form.addRow("Model depth", self.depth_spin)
        self.patch_spin = QSpinBox(minimum=16, maximum=4096, value=d.patch_size, singleStep=32)
        self.patch_spin.setToolTip("Training crop edge in pixels; lower it when memory runs out")
        adv_form.addRow("Patch size", self.patch_spin)
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=d.batch_size)
        adv_form.addRow("Batch size", self.batch_spin)
        self.tile_spin = QSpinBox(minimum=32, maximum=8192, value=d.tile_size, singleStep=64)
        self.tile_spin.setToolTip("Tile edge for whole-image prediction; lower it for big images")
        adv_form.addRow("Tile size", self.tile_spin)
        advanced.addWidget(adv)
        form.addRow(advanced)

        self.show_labels_check = QCheckBox("Show what A and B learn from")
        self.show_labels_check.setToolTip("Add the layers 'A learns from' and 'B learns from'")
        form.addRow(self.show_labels_check)
        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.reset_button = QPushButton("Reset models")
        self.reset_button.setToolTip("Forget the trained models: the next Train starts fresh")
        row.addWidget(self.train_button)
        row.addWidget(self.stop_button)
        row.addWidget(self.reset_button)
        form.addRow(row)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        layout.addWidget(train_box)

        apply_box = QGroupBox("Model")
        form = QFormLayout(apply_box)
        self.predict_combo = QComboBox()
        self.predict_combo.setToolTip("Image layer to segment with the trained models")
        self.predict_button = QPushButton("Predict")
        row = QHBoxLayout()
        row.addWidget(self.predict_combo, 1)
        row.addWidget(self.predict_button)
        form.addRow("Segment", row)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        form.addRow(row)
        layout.addWidget(apply_box)

        self.status_label = QLabel("Draw a box around each cell, then press Train.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.new_boxes_button.clicked.connect(self.new_boxes_layer)
        self.new_region_button.clicked.connect(self.new_region_layer)
        self.mode_combo.currentTextChanged.connect(lambda _: self._update_buttons())
        self.supervision_button.clicked.connect(self.generate_supervision)
        self.device_combo.currentTextChanged.connect(lambda _: self._update_device_label())
        self.train_button.clicked.connect(lambda: self.train())
        self.stop_button.clicked.connect(self.stop)
        self.reset_button.clicked.connect(self.reset_models)
        self.predict_button.clicked.connect(lambda: self.predict())
        self.save_button.clicked.connect(self._save_clicked)
        self.load_button.clicked.connect(self._load_clicked)
        self.image_combo.currentTextChanged.connect(self._on_image_changed)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _update_device_label(self) -> None:
        from .models import describe_device, select_device

        try:
            device = describe_device(select_device(self.device_combo.currentText()))
        except ValueError as err:
            device = f"unavailable ({err})"
        self.device_label.setText(f"Device: {device}")

    def _update_buttons(self) -> None:
        busy = self.is_training or self._predicting
        for w in (
            self.supervision_button,
            self.train_button,
            self.reset_button,
            self.load_button,
            self.new_boxes_button,
        ):
            w.setEnabled(not busy)
        for w in (
            self.rounds_spin,
            self.steps_spin,
            self.width_spin,
            self.lr_spin,
            self.seed_spin,
            self.device_combo,
            self.depth_spin,
            self.patch_spin,
            self.batch_spin,
        ):
            w.setEnabled(not self.is_training)
        self.stop_button.setEnabled(self.is_training)
        has_model = self.pair is not None
        self.predict_button.setEnabled(has_model and not busy)
        self.save_button.setEnabled(has_model and not busy)
        region = self.mode_combo.currentText() == MODE_REGION
        self.region_combo.setEnabled(region)
        self.new_region_button.setEnabled(region)

    # ---------------------------------------------------------------------------- layer lists

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()

    def _refresh_layer_choices(self, *_: Any) -> None:
        from napari.layers import Image, Shapes

        if self._state.closing:
            return
        images = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image) and owner_info(layer) is None
        ]
        shapes = [layer.name for layer in self.viewer.layers if isinstance(layer, Shapes)]
        self._fill(self.image_combo, images, prefer=None)
        self._fill(self.boxes_combo, shapes, prefer="boxes")
        self._fill(self.region_combo, shapes, prefer="region")
        self._fill(self.predict_combo, images, prefer=None)

    @staticmethod
    def _fill(combo: QComboBox, names: list[str], prefer: str | None) -> None:
        current = combo.currentText()
        if [combo.itemText(i) for i in range(combo.count())] == names:
            if not current and prefer in names:
                combo.setCurrentText(prefer)
            return
        combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif prefer in names:
                combo.setCurrentText(prefer)
            elif names:
                combo.setCurrentIndex(len(names) - 1)
        finally:
            combo.blockSignals(False)
        if combo.currentText() != current:
            combo.currentTextChanged.emit(combo.currentText())

    def _layer(self, combo: QComboBox) -> Layer | None:
        return self._layer_named(combo.currentText())

    def _layer_named(self, name: str) -> Layer | None:
        # the viewer handed to plugins is a proxy without dict-like helpers
        for layer in self.viewer.layers:
            if layer.name == name:
                return layer
        return None

    def _on_image_changed(self, name: str) -> None:
        # Predict defaults to the training image until the user picks another one.
        if name and not self.predict_combo.currentText():
            self.predict_combo.setCurrentText(name)

    @property
    def image_layer(self) -> Image | None:
        """The image layer picked for training."""
        return self._layer(self.image_combo)

    @image_layer.setter
    def image_layer(self, layer: Image | str) -> None:
        self.image_combo.setCurrentText(layer if isinstance(layer, str) else layer.name)

    @property
    def boxes_layer(self) -> Shapes | None:
        """The Shapes layer holding the boxes."""
        return self._layer(self.boxes_combo)

    @boxes_layer.setter
    def boxes_layer(self, layer: Shapes | str) -> None:
        self.boxes_combo.setCurrentText(layer if isinstance(layer, str) else layer.name)

    @property
    def region_layer(self) -> Shapes | None:
        """The Shapes layer outlining the annotated region (region mode only)."""
        if self.mode_combo.currentText() != MODE_REGION:
            return None
        return self._layer(self.region_combo)

    @region_layer.setter
    def region_layer(self, layer: Shapes | str | None) -> None:
        if layer is None:
            self.mode_combo.setCurrentText(MODE_ALL)
            return
        self.mode_combo.setCurrentText(MODE_REGION)
        self.region_combo.setCurrentText(layer if isinstance(layer, str) else layer.name)

    def new_boxes_layer(self) -> Shapes:
        """Add an empty Shapes layer "boxes" in rectangle mode, on top of the image."""
        layer = self._new_shapes("boxes", edge_color="yellow")
        self.boxes_combo.setCurrentText(layer.name)
        return layer

    def new_region_layer(self) -> Shapes:
        """Add an empty Shapes layer "region" in polygon mode."""
        layer = self._new_shapes("region", edge_color="cyan", mode="add_polygon")
        self.region_combo.setCurrentText(layer.name)
        return layer

    def _new_shapes(self, name: str, edge_color: str, mode: str = "add_rectangle") -> Shapes:
        image = self.image_layer
        kw: dict[str, Any] = {}
        if image is not None:
            kw.update(ndim=image.ndim, scale=image.scale, translate=image.translate)
        layer = self.viewer.add_shapes(
            name=name,
            edge_color=edge_color,
            face_color="transparent",
            edge_width=max(1.0, float(np.mean(image.scale[-2:]))) if image is not None else 1.0,
            **kw,
        )
        layer.mode = mode
        return layer

    # ---------------------------------------------------------------------------- supervision

    def generate_supervision(self) -> Labels | None:
        """Make the ellipse supervision from the boxes and show it as "<image> supervision".

        Returns
        -------
        napari.layers.Labels or None
            The supervision layer (updated in place when it exists), or ``None`` after a
            notification when the inputs cannot be used.
        """
        image = self.image_layer
        try:
            prepared = prepare_supervision(image, self.boxes_layer, self.region_layer)
        except UserInputError as err:
            show_error(str(err))
            self._set_status(str(err))
            return None
        for note in prepared.notes:
            show_warning(note)
        self.prepared[image.name] = prepared
        layer = upsert_labels(
            self.viewer,
            role="supervision",
            source=image.name,
            name=f"{image.name} supervision",
            arrays=[prepared.classes],
            planes=None,
            like=image,
            classes=True,
        )
        n = sum(len(s.boxes) for s in prepared.supervisions)
        where = "" if prepared.planes is None else f" on {len(prepared.planes)} plane(s)"
        self._set_status(
            f"Supervision from {n} boxes{where}: green cell, yellow boundary, grey ignored. "
            "Correct it with the paint tools if needed (labels 0/1/2/255), then press Train."
        )
        return layer

    def _training_labels(
        self, layer: Labels, prepared: PreparedSupervision
    ) -> list[np.ndarray] | None:
        data = np.asarray(layer.data)
        if data.shape != prepared.classes.shape:
            show_error(
                f"'{layer.name}' has shape {data.shape} but the image has "
                f"{prepared.classes.shape}; press 'Generate supervision' again."
            )
            return None
        bad = ~np.isin(data, _VALID_CLASSES)
        if bad.any():
            values = sorted(set(np.unique(data[bad]).tolist()))[:5]
            show_error(
                f"'{layer.name}' contains label values {values} that are not classes. Paint with "
                "0 (background), 1 (cell), 2 (boundary) or 255 (ignore)."
            )
            return None
        if prepared.planes is None:
            return [data.astype(np.uint8, copy=True)]
        return [data[p].astype(np.uint8, copy=True) for p in prepared.planes]

    # ---------------------------------------------------------------------------- training

    @property
    def is_training(self) -> bool:
        """Whether a training worker is running."""
        return not self._training_finished

    def config(self) -> TrainConfig:
        """The training settings shown in the widget."""
        return training.TrainConfig(
            rounds=self.rounds_spin.value(),
            steps_per_round=self.steps_spin.value(),
            batch_size=self.batch_spin.value(),
            patch_size=self.patch_spin.value(),
            width=self.width_spin.value(),
            depth=self.depth_spin.value(),
            learning_rate=self.lr_spin.value(),
            seed=self.seed_spin.value(),
            device=self.device_combo.currentText(),
            tile_size=self.tile_spin.value(),
        )

    def train(self, *, block: bool = False) -> GeneratorWorker | None:
        """Train (or resume training) on the picked image in a worker thread.

        Uses the supervision layer as it is (with any painted corrections); makes it first
        when it does not exist.

        Parameters
        ----------
        block : bool
            Wait (keeping the viewer responsive) until training ends.

        Returns
        -------
        GeneratorWorker or None
            The worker, or ``None`` after a notification when training cannot start.
        """
        if self.is_training:
            show_warning("Training is already running; press Stop first.")
            return self.worker
        image = self.image_layer
        try:
            check_image_layer(image)
        except UserInputError as err:
            show_error(str(err))
            return None
        layer = find_own_layer(self.viewer, "supervision", image.name)
        prepared = self.prepared.get(image.name)
        if layer is None or prepared is None:
            layer = self.generate_supervision()
            if layer is None:
                return None
            prepared = self.prepared[image.name]
        elif self.boxes_layer is not None:
            from ._napari_utils import _fingerprint

            if _fingerprint(self.boxes_layer, self.region_layer) != prepared.boxes_key:
                show_warning(
                    "The boxes changed since the supervision was made; training uses the "
                    "supervision layer as it is. Press 'Generate supervision' to include them."
                )
        labels = self._training_labels(layer, prepared)
        if labels is None:
            return None
        try:
            config = self.config()
        except ValueError as err:
            show_error(str(err))
            return None
        resume = self.pair
        images, sups = prepared.images, prepared.supervisions

        def make_trainer() -> training.MutualTrainer:
            # looked up at call time, so that tests can stand in for the engine
            return training.MutualTrainer(images, sups, config, labels=labels, pair=resume)

        job = TrainingJob(make_trainer)
        self._state.job = job
        self._session = {
            "image": image,
            "name": image.name,
            "planes": prepared.planes,
            "rounds": config.rounds,
            "started": time.perf_counter(),
            "job": job,
            "count": 0,
        }
        worker = create_worker(
            _run_training, job, _worker_class=_TrainingWorker, _ignore_errors=True
        )
        worker.job = job
        worker.yielded.connect(self._on_report)
        worker.returned.connect(self._on_train_returned)
        worker.errored.connect(self._on_train_returned)  # not expected: failures are returned
        worker.finished.connect(self._on_train_finished)
        self.worker = worker
        self._training_finished = False
        self._update_buttons()
        what = "Resuming training" if resume is not None else "Training"
        self._set_status(f"{what} on '{image.name}': preparing…")
        # Adding a napari layer takes ~0.1 s on the main thread; the result layers are made
        # now, one per event-loop turn, so that no layer is ever added while training runs.
        self._pending = None
        self._steps = [
            *(partial(self._update_layer, *spec, None) for spec in self._layer_specs()),
            partial(self._start_worker, worker, config.rounds),
        ]
        self._apply_timer.start(0)
        if block:
            self._wait_until(lambda: self._training_finished)
        return worker

    def _start_worker(self, worker: GeneratorWorker, rounds: int) -> None:
        job = worker.job
        if self._state.closing or job is None:
            return
        if job.cancelled.is_set():
            # stopped before it began: nothing to run
            job.done.set()
            self._on_train_finished()
            return
        job.started = True
        self._pbar = progress(total=rounds, desc=f"napari-mutualseg: round 1 of {rounds}")
        self._poll_timer.start()
        _freeze_gc()
        worker.start()

    def stop(self) -> None:
        """Stop training within one step; the models of the last completed round are kept."""
        job = self._state.job
        if job is None or not self.is_training:
            return
        job.cancel()
        self._set_status("Stopping after the current step…")

    def reset_models(self) -> None:
        """Forget the trained models: the next training starts from scratch."""
        if self.is_training:
            show_warning("Stop training before resetting the models.")
            return
        self.pair = None
        self.loss_plot.set_history([])
        self._set_status("Models reset: the next Train starts from scratch.")
        self._update_buttons()

    @property
    def is_busy(self) -> bool:
        """Training, predicting, or results still on their way into the layers."""
        return (
            self.is_training or self._predicting or bool(self._steps) or self._pending is not None
        )

    def wait(self) -> None:
        """Return once training and prediction are done and their layers are up to date.

        The viewer stays responsive meanwhile (a local event loop runs).
        """
        self._wait_until(lambda: not self.is_busy)

    def _wait_until(self, done: Callable[[], bool]) -> None:
        # A local event loop: the caller waits, the viewer keeps drawing and handling input.
        loop = QEventLoop()
        timer = QTimer()
        timer.timeout.connect(lambda: loop.quit() if done() else None)
        timer.start(20)
        while not done():
            loop.exec()
        timer.stop()

    def _poll_progress(self) -> None:
        session, job = self._session, self._state.job
        if session is None or job is None or self._state.closing:
            return
        done, total = job.progress()
        if total:
            r = session["count"]
            self._set_status(
                f"Training on {job.device_name}: round {min(r + 1, session['rounds'])} of "
                f"{session['rounds']}, step {done} of {total}."
            )

    def _on_report(self, report: RoundReport) -> None:
        if self._state.closing or self._session is None:
            return
        self.reports.append(report)
        self._session["count"] += 1
        job = self._session["job"]
        self.device_label.setText(f"Device in use: {job.device_name or report.device}")
        self.loss_plot.add(report.loss_a, report.loss_b)
        # Newest wins: a report not yet shown is replaced, never queued behind others.
        self._pending = report
        if not self._apply_timer.isActive():
            self._apply_timer.start(0)
        pbar = self._pbar
        if pbar is not None:
            # Last: napari's progress bar processes pending events (even `finished`) on every
            # change, so it is changed once a round and after this slot's own work.
            pbar.update(1)
            nxt = min(report.round + 1, report.rounds)
            pbar.set_description(f"napari-mutualseg: round {nxt} of {report.rounds}")

    def _apply_next(self) -> None:
        if self._state.closing:
            return
        if self._pending is not None:
            report, self._pending = self._pending, None
            self._steps = self._layer_updates(report)
        if self._steps:
            self._steps.pop(0)()
        if self._steps or self._pending is not None:
            self._apply_timer.start(_REFRESH_GAP_MS)

    def _layer_specs(self) -> list[tuple[str, str | None, str, bool]]:
        """(role, source image, name, is a class map) of every layer training writes."""
        name = self._session["name"] if self._session else ""
        specs = [
            ("cells", name, f"{name} cells", False),
            ("model A", None, "model A", True),
            ("model B", None, "model B", True),
        ]
        if self.show_labels_check.isChecked():
            specs += [
                ("A learns from", None, "A learns from", True),
                ("B learns from", None, "B learns from", True),
            ]
        return specs

    def _layer_updates(self, report: RoundReport) -> list[Callable[[], None]]:
        """One callable per layer, applied one per event-loop turn."""
        arrays = {
            "cells": report.instances,
            "model A": report.classes_a,
            "model B": report.classes_b,
            "A learns from": report.labels_a,
            "B learns from": report.labels_b,
        }
        steps: list[Callable[[], None]] = [
            partial(self._update_layer, *spec, arrays[spec[0]]) for spec in self._layer_specs()
        ]

        def mark() -> None:
            self.applied_rounds.append(report.round)

        steps.append(mark)
        return steps

    def _update_layer(
        self,
        role: str,
        source: str | None,
        title: str,
        classes: bool,
        arrays: list[np.ndarray] | None,
    ) -> None:
        """Write one result into its layer; ``arrays=None`` makes an empty layer if missing."""
        session = self._session
        if session is None or self._state.closing:
            return
        image, planes = session["image"], session["planes"]
        existing = find_own_layer(self.viewer, role, source)
        if arrays is None:
            dtype = np.uint8 if classes else np.int32
            if existing is not None and tuple(existing.data.shape) == tuple(image.data.shape):
                return
            arrays, planes = [np.zeros(tuple(image.data.shape), dtype)], None
        active = self.viewer.layers.selection.active
        upsert_labels(
            self.viewer,
            role=role,
            source=source,
            name=title,
            arrays=arrays,
            planes=planes,
            like=image,
            classes=classes,
            visible=role == "cells",
        )
        if existing is None and active is not None:
            # Keep the user's layer active, so that drawing or painting is not interrupted.
            self.viewer.layers.selection.active = active

    def _on_train_returned(self, value: Any) -> None:
        if not isinstance(value, (WorkerFailure, BaseException)):
            return
        job = self._session["job"] if self._session else None
        message = describe_error(value, job.device_name if job else "")
        show_error(message)
        self._set_status(message)
        if self._session is not None:
            self._session["error"] = message

    def _on_train_finished(self) -> None:
        session = self._session
        job = session["job"] if session else None
        if job is not None and job.last_good is not None:
            self.pair = job.last_good
        self._training_finished = True
        if job is not None and job.started:
            _unfreeze_gc()
        self._poll_timer.stop()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self._state.closing or session is None:
            return
        count = session["count"]
        seconds = time.perf_counter() - session["started"]
        if session.get("error"):
            pass
        elif job is not None and job.cancelled.is_set():
            self._set_status(
                f"Stopped after {count} completed round(s); their models are kept. "
                "Train again to resume."
            )
        else:
            last = self.reports[-1] if count else None
            early = " (labels settled early)" if last is not None and last.converged else ""
            self._set_status(
                f"Trained {count} round(s){early} in {seconds:.1f} s "
                f"({seconds / max(count, 1):.1f} s/round). Predict another image or save."
            )
        self._update_buttons()

    # ---------------------------------------------------------------------------- predict

    def predict(
        self, layer: Image | str | None = None, *, block: bool = False
    ) -> GeneratorWorker | None:
        """Segment an image layer with the trained models in a worker ("<image> cells").

        Parameters
        ----------
        layer : napari.layers.Image or str, optional
            The image (default: the one picked next to Predict). A stack is segmented plane
            by plane.
        block : bool
            Wait (keeping the viewer responsive) until the labels are added.

        Returns
        -------
        GeneratorWorker or None
            The worker, or ``None`` after a notification.
        """
        if isinstance(layer, str):
            layer = self._layer_named(layer)
        elif layer is None:
            layer = self._layer(self.predict_combo)
        if self.pair is None:
            show_error("No trained model yet: train one (Train) or load one (Load model…).")
            return None
        if self.is_training or self._predicting:
            show_warning("Busy: wait for the running job to finish, or press Stop.")
            return None
        try:
            check_image_layer(layer, purpose="segment")
        except UserInputError as err:
            show_error(str(err))
            return None
        data = layer.data
        planes = None if layer.ndim == 2 else list(range(int(data.shape[0])))
        worker = create_worker(
            _run_prediction,
            self.pair,
            data,
            planes,
            self.tile_spin.value(),
            layer.name,
            _ignore_errors=True,
            _progress={"total": len(planes) if planes else 0, "desc": "napari-mutualseg: segment"},
        )
        result: dict[str, Any] = {}
        worker.returned.connect(lambda value: result.setdefault("value", value))
        worker.errored.connect(lambda exc: result.setdefault("value", WorkerFailure(exc)))
        worker.finished.connect(partial(self._on_predict_finished, layer, result))
        self.predict_worker = worker
        self._predicting = True
        self._update_buttons()
        self._set_status(f"Segmenting '{layer.name}'…")
        _freeze_gc()
        worker.start()
        if block:
            self._wait_until(lambda: not self._predicting)
        return worker

    def _on_predict_finished(self, layer: Image, result: dict) -> None:
        self._predicting = False
        _unfreeze_gc()
        if self._state.closing:
            return
        labels = result.get("value")
        if isinstance(labels, WorkerFailure):
            device = str(self.pair.device) if self.pair is not None else ""
            message = describe_error(labels, device)
            show_error(message)
            self._set_status(message)
        elif labels is not None:
            out = upsert_labels(
                self.viewer,
                role="cells",
                source=layer.name,
                name=f"{layer.name} cells",
                arrays=[labels],
                planes=None,
                like=layer,
            )
            n = int(labels.max()) if labels.size else 0
            self._set_status(f"'{out.name}': {n} cells.")
        self._update_buttons()

    # ---------------------------------------------------------------------------- save / load

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the trained pair to one file.

        Parameters
        ----------
        path : str or Path
            Destination, usually ``*.pt``.
        overwrite : bool
            Replace an existing file (the Save dialog asks the user first).

        Returns
        -------
        Path or None
            The written file, or ``None`` after a notification.
        """
        if self.pair is None:
            show_error("No trained model to save: train one first.")
            return None
        if self.is_training:
            show_warning("Training is running: stop it (or let it finish) before saving.")
            return None
        try:
            out = self.pair.save(path, overwrite=overwrite)
        except FileExistsError as err:
            show_error(f"{err}")
            return None
        except (OSError, ValueError) as err:
            show_error(f"Could not save the model: {err}")
            return None
        show_info(f"Model saved to {out}")
        self._set_status(f"Model saved to {out}")
        return out

    def load_model(self, path: str | Path) -> ModelPair | None:
        """Load a saved pair; Predict (and resumed training) use it.

        Returns
        -------
        ModelPair or None
            The loaded pair, or ``None`` after a notification.
        """
        from .models import ModelPair

        if self.is_training:
            show_warning("Training is running: stop it before loading another model.")
            return None
        try:
            pair = ModelPair.load(path, device=self.device_combo.currentText())
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            show_error(f"Could not load a model from {path}: {err}")
            return None
        self.pair = pair
        self.loss_plot.set_history([(h["loss_a"], h["loss_b"]) for h in pair.history])
        settings = pair.settings or {}
        for key, spin in (("width", self.width_spin), ("depth", self.depth_spin)):
            if key in settings:
                spin.setValue(int(settings[key]))
        self._set_status(
            f"Loaded {Path(path).name} ({len(pair.history)} round(s) trained). "
            "Predict, or Train to continue."
        )
        self._update_buttons()
        return pair

    def _save_clicked(self) -> None:
        dialog = QFileDialog(self, "Save model")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("pt")
        dialog.setNameFilters(["napari-mutualseg model (*.pt)", "All files (*)"])
        dialog.selectFile("mutualseg-model.pt")
        # The dialog asks before replacing an existing file; only then do we overwrite.
        if not dialog.exec():
            return
        files = dialog.selectedFiles()
        if files:
            self.save_model(files[0], overwrite=True)

    def _load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load model", "", "napari-mutualseg model (*.pt);;All files (*)"
        )
        if path:
            self.load_model(path)

    # ---------------------------------------------------------------------------- closing

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop training and wait up to ``timeout`` seconds for the worker to end."""
        self._state.shutdown_timeout = timeout
        _shutdown(self._state)


__all__ = ["OWNER_KEY", "LossPlot", "MutualSegWidget", "describe_error"]
