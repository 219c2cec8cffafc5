"""The dock widget's panels: data, training, model. Each owns its controls and nothing else.

A panel shows its viewer's run controller (:class:`PanelsView`) and emits what the user asked for;
the widget (:mod:`.widget`) decides what happens. Layer pickers are magicgui combo boxes
holding the layers themselves, so a renamed layer stays picked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox
from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from ..config import TrainConfig
from ..devices import describe_device, select_device
from .axes import layer_axes, set_layer_axes
from .layers import free_name, owner_info
from .loss_plot import LossPlot
from .prepare import UserInputError
from .runs import RunState
from .settings import SettingsForm, TrainingSettings, label_tooltips, wrapping_form

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

    from .controller import RunController
    from .correct import CheckPanel

MODE_ALL = "Every cell is boxed"
MODE_REGION = "Only inside a drawn region"


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for k, w in enumerate(widgets):
        row.addWidget(w, 1 if k == 0 else 0)
    return row


def _opened_boxes(layer: Any) -> bool:
    """Whether napari opened ``layer`` with this plugin's reader, from a file of boxes drawn
    in Fiji or QuPath (the only Shapes layers it reads). napari names the reader in the
    layer's ``source``, which it does not give a copy: a layer the user duplicated is theirs."""
    reader = getattr(getattr(layer, "source", None), "reader_plugin", None)
    return reader == "napari-mutualseg"  # the name in napari.yaml


class _MiddleCut(QObject):
    """Shows a combo box's text cut in the middle where it does not fit, and whole in its
    tooltip, over the box's own description.

    Qt cuts it at the right, where a file's name says which well and field it is: two
    images of one plate looked alike.
    """

    def __init__(self, combo: QComboBox) -> None:
        super().__init__(combo)
        combo.installEventFilter(self)

    @staticmethod
    def shown(combo: QComboBox) -> str:
        """The text as the box shows it."""
        option = QStyleOptionComboBox()
        combo.initStyleOption(option)
        field = combo.style().subControlRect(
            QStyle.ComplexControl.CC_ComboBox,
            option,
            QStyle.SubControl.SC_ComboBoxEditField,
            combo,
        )
        metrics = combo.fontMetrics()
        return metrics.elidedText(option.currentText, Qt.TextElideMode.ElideMiddle, field.width())

    def eventFilter(self, combo: Any, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            # QComboBox.paintEvent, with the text cut in the middle
            painter = QStylePainter(combo)
            painter.setPen(combo.palette().color(combo.foregroundRole()))
            option = QStyleOptionComboBox()
            combo.initStyleOption(option)
            painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
            option.currentText = self.shown(combo)
            painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)
            painter.end()
            return True
        if event.type() == QEvent.Type.ToolTip and combo.currentText():
            # the picked layer's whole name, then what the box is for
            text = f"{combo.currentText()}\n\n{combo.toolTip()}"
            QToolTip.showText(event.globalPos(), text, combo)
            return True
        return False


class LayerPicker(ComboBox):
    """A combo box of the viewer's layers of one kind (the layers themselves are the values).

    It follows the layer list (added, removed, moved and renamed layers) until
    :meth:`unwatch`; with ``pick_new``, a layer added to the viewer becomes the picked one
    (given a function, a layer for which it is true).
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        kind: str,
        tooltip: str,
        exclude: Any = None,
        pick_new: bool | Callable[[Any], bool] = False,
        nullable: bool = False,
    ) -> None:
        self._viewer, self._kind, self._exclude, self._pick_new = viewer, kind, exclude, pick_new
        super().__init__(choices=self._layers, nullable=nullable, tooltip=tooltip)
        # a long layer name (a file's, often) is cut in the box rather than widening the panel
        # past its dock, its buttons pushed out of sight; the list and the tooltip show it whole
        self.native.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.native.setMinimumContentsLength(6)
        _MiddleCut(self.native)
        events = viewer.layers.events
        self._watched = [(events.inserted, self._inserted), (events.removed, self._refresh)]
        self._watched.append((events.moved, self._refresh))
        self._watched += [(layer.events.name, self._refresh) for layer in viewer.layers]
        for emitter, slot in self._watched:
            emitter.connect(slot)

    def _layers(self, _: Any = None) -> list[tuple[str, Any]]:
        from napari import layers

        kind = getattr(layers, self._kind)
        skip = self._exclude() if self._exclude is not None else None
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, kind) and owner_info(layer) is None and layer != skip
        ]

    def _refresh(self, *_: Any) -> None:
        had = self.layer
        with self.changed.blocked():
            self.reset_choices()
            # Qt's combo box knows its items by their text: a renamed layer's item is made
            # anew, and the pick would fall to the first layer of the list. (== and not `is`:
            # napari hands a plugin proxies of its layers, which compare as their layers.)
            if any(value == had for _, value in self._layers()):
                self.value = had
        if self.layer != had:  # said once (the last one gone: the combo box is silent)
            self.changed.emit(self.layer)

    def _inserted(self, event: Any) -> None:
        layer = event.value
        layer.events.name.connect(self._refresh)
        self._watched.append((layer.events.name, self._refresh))
        self.reset_choices()
        pick = self._pick_new(layer) if callable(self._pick_new) else self._pick_new
        if pick and any(value == layer for _, value in self._layers()):
            self.value = layer

    def unwatch(self) -> None:
        """Stop following the layer list (the panel is closed)."""
        for emitter, slot in self._watched:
            emitter.disconnect(slot)
        self._watched = []

    @property
    def shown_name(self) -> str:
        """The picked layer's name as the box shows it: cut in the middle where it does not
        fit (its tooltip shows it whole)."""
        return _MiddleCut.shown(self.native)

    @property
    def layer(self) -> Any:
        """The picked layer, or ``None``."""
        return self.value if self.choices else None

    @layer.setter
    def layer(self, layer: Any) -> None:
        self.reset_choices()
        if isinstance(layer, str):
            names = dict(self._layers())
            if layer not in names:
                raise ValueError(f"There is no {self._kind.lower()} layer named {layer!r}.")
            layer = names[layer]
        elif not any(value == layer for _, value in self._layers()):
            raise ValueError(
                f"{getattr(layer, 'name', layer)!r} cannot be picked: it is not among the "
                f"{self._kind} layers of this panel's viewer (the plugin's results are not "
                "offered)."
            )
        self.value = layer


class DataPanel(QGroupBox):
    """The image, its boxes, the annotation mode and the supervision button."""

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__("Data")
        self.viewer = viewer
        form = wrapping_form(self)
        self.image = LayerPicker(
            viewer, "Image", "The image to train on: 2D, with channels, z or time, or RGB"
        )
        self.axes = QLineEdit()
        self.axes.setToolTip(
            "What each axis of the image is, e.g. CYX (channels), ZYX (z-stack), TYX (time), "
            "CZYX. Stored in the layer's axis labels; empty: as the layer says"
        )
        # boxes just opened from Fiji or QuPath are the ones to train on; a Shapes layer the
        # user adds (a region, notes) leaves the pick as it is
        self.boxes = LayerPicker(
            viewer, "Shapes", "A Shapes layer with a rectangle per cell", pick_new=_opened_boxes
        )
        self.region = LayerPicker(
            viewer, "Shapes", "Where every cell is boxed", exclude=lambda: self.boxes.layer
        )
        self.mode = ComboBox(
            choices=[MODE_ALL, MODE_REGION],
            tooltip="Every cell is boxed: everything outside the boxes is background.\n"
            "Only inside a drawn region: outside the region nothing is known (ignored).",
        )
        self.new_boxes = QPushButton("New boxes layer")
        self.new_boxes.setToolTip("Add a Shapes layer 'boxes' in rectangle mode")
        self.new_region = QPushButton("New region layer")
        self.new_region.setToolTip(
            "Add a Shapes layer 'region' in polygon mode: outline the area where every cell is "
            f"boxed (with Annotation '{MODE_REGION}')"
        )
        self.earlier = LayerPicker(
            viewer,
            "Labels",
            "A supervision you painted and saved earlier, opened as a labels layer: Generate "
            "supervision keeps what you painted on it (the layer itself is not changed)",
            nullable=True,
        )
        self.earlier.value = None
        self.generate = QPushButton("Generate supervision")
        self.generate.setToolTip(
            "Make the ellipse labels from the boxes; paint on them to correct them. Pixels you "
            "painted are kept when the supervision is made again."
        )
        form.addRow("Image", self.image.native)
        form.addRow("Axes", self.axes)
        form.addRow("Boxes", _row(self.boxes.native, self.new_boxes))
        form.addRow("Annotation", self.mode.native)
        form.addRow("Region", _row(self.region.native, self.new_region))
        form.addRow("Reuse paint", self.earlier.native)
        form.addRow(self.generate)
        label_tooltips(form)
        self.axes.editingFinished.connect(self._axes_entered)
        self.image.changed.connect(lambda _: self.show_axes())
        self.new_boxes.clicked.connect(self.new_boxes_layer)
        self.new_region.clicked.connect(self.new_region_layer)
        self.boxes.changed.connect(lambda _: self.region.reset_choices())
        self._busy = False  # a job runs: Generate supervision waits for it
        self.mode.changed.connect(lambda _: self.set_busy(self._busy))
        self.set_busy(False)
        self.show_axes()

    def new_shapes(self, name: str, color: str, mode: str) -> Any:
        """Add an empty Shapes layer on top of the picked image, in drawing ``mode``."""
        image = self.image.layer
        kw: dict[str, Any] = {"edge_width": 1.0}
        if image is not None:
            kw.update(ndim=image.ndim, scale=image.scale, translate=image.translate)
            kw["units"] = image.units  # boxes in the image's units: napari's scale bar keeps them
            kw["edge_width"] = max(1.0, float(sum(image.scale[-2:]) / 2))
        viewer = self.viewer
        layer = viewer.add_shapes(
            name=free_name(viewer, name), edge_color=color, face_color="transparent", **kw
        )
        layer.mode = mode
        return layer

    @property
    def image_layer(self) -> Image | None:
        """The image layer picked for training (a layer or its name when set)."""
        return self.image.layer

    @image_layer.setter
    def image_layer(self, layer: Image | str) -> None:
        self.image.layer = layer

    @property
    def image_axes(self) -> str:
        """The picked image's axes, e.g. ``"CYX"`` (set them as letters; ``""`` forgets them).

        They are kept in the layer's axis labels. A 3D image without them counts as a stack
        of planes (``ZYX``), and the user is told so; ``""`` while no image is picked or its
        axes are still to be set (an unnamed 4D image).
        """
        layer = self.image.layer
        try:
            return "" if layer is None else layer_axes(layer).axes
        except ValueError:  # axes it cannot do without
            return ""

    @image_axes.setter
    def image_axes(self, text: str) -> None:
        layer = self.image.layer
        if layer is None:
            raise ValueError("Pick an image first.")
        set_layer_axes(layer, text)
        self.show_axes()

    def show_axes(self) -> None:
        """Show what the picked image's axes are (or are taken to be)."""
        layer, text, hint = self.image.layer, "", "pick an image"
        if layer is not None:
            try:
                axes = layer_axes(layer)
                text, hint = ("", f"{axes.axes} (assumed)") if axes.note else (axes.axes, "")
            except ValueError:
                hint = "needed, e.g. CZYX"
        self.axes.setText(text)
        self.axes.setPlaceholderText(hint)

    def _named_axes(self) -> str:
        """The axes the picked image's labels name; "" while they are unknown or only assumed
        (an unnamed 3D image), so that typing them names them."""
        layer = self.image.layer
        try:
            axes = layer_axes(layer)
        except ValueError:
            return ""
        return "" if axes.note else axes.axes

    def _axes_entered(self) -> None:
        if self.image.layer is None or self.axes.text().strip() == self._named_axes():
            return
        try:
            self.image_axes = self.axes.text()
        except ValueError as err:
            show_error(str(err))
            self.show_axes()

    @property
    def boxes_layer(self) -> Shapes | None:
        """The Shapes layer holding the boxes (a layer or its name when set)."""
        return self.boxes.layer

    @boxes_layer.setter
    def boxes_layer(self, layer: Shapes | str) -> None:
        self.boxes.layer = layer

    @property
    def earlier_supervision(self) -> Labels | None:
        """A supervision painted earlier (saved, then opened as a labels layer) whose paint
        the next supervision keeps; ``None`` (the default) for none. Used once."""
        return self.earlier.layer

    @earlier_supervision.setter
    def earlier_supervision(self, layer: Labels | str | None) -> None:
        if layer is None:
            self.earlier.value = None
        else:
            self.earlier.layer = layer

    @property
    def region_layer(self) -> Shapes | None:
        """The Shapes layer outlining the annotated region; ``None`` when every cell is boxed
        (or no region layer is picked yet)."""
        return self.region.layer if self.region_mode else None

    def picked_region(self) -> Shapes | None:
        """The region to make the supervision with; ``None`` when every cell is boxed.

        Raises
        ------
        UserInputError
            In the mode *Only inside a drawn region* without a region layer: nothing says
            where the cells are all boxed, and taking the whole image would make every
            unboxed cell background.
        """
        if self.region_mode and self.region.layer is None:
            raise UserInputError(
                f"Annotation '{MODE_REGION}' needs a region: press 'New region layer' and "
                "draw a polygon, rectangle or ellipse around the area where every cell is "
                "boxed (or pick a Shapes layer under 'Region'), or set Annotation to "
                f"'{MODE_ALL}'."
            )
        return self.region_layer

    @region_layer.setter
    def region_layer(self, layer: Shapes | str | None) -> None:
        self.mode.value = MODE_ALL if layer is None else MODE_REGION
        if layer is not None:
            self.region.layer = layer

    def new_boxes_layer(self) -> Shapes:
        """Add an empty Shapes layer "boxes" in rectangle mode, on top of the image; pick it."""
        self.boxes_layer = layer = self.new_shapes("boxes", "yellow", "add_rectangle")
        return layer

    def new_region_layer(self) -> Shapes:
        """Add an empty Shapes layer "region" in polygon mode; pick it."""
        self.region_layer = layer = self.new_shapes("region", "cyan", "add_polygon")
        return layer

    @property
    def pickers(self) -> tuple[LayerPicker, ...]:
        return (self.image, self.boxes, self.region, self.earlier)

    @property
    def region_mode(self) -> bool:
        return self.mode.value == MODE_REGION

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        for w in (self.generate, self.new_boxes):
            w.setEnabled(not busy)
        self.region.enabled = self.region_mode
        self.new_region.setEnabled(self.region_mode)


class TrainingPanel(QGroupBox):
    """The settings, Train / Stop / Reset and the loss curve."""

    def __init__(self, settings: TrainingSettings) -> None:
        super().__init__("Training")
        form = wrapping_form(self)
        self.form = SettingsForm(settings)
        form.addRow(self.form)
        self.device = QLabel()
        self.device.setWordWrap(True)
        form.addRow(self.device)
        self.train = QPushButton("Train")
        self.train.setToolTip(
            "Train both networks on the picked image's boxes, in the background; after a "
            "training, Train goes on from the trained models"
        )
        self.stop = QPushButton("Stop")
        self.stop.setToolTip(
            "Stop the running job: training after the current step (the models of the last "
            "completed round are kept), Predict after the current plane, a folder after the "
            "current image"
        )
        self.reset = QPushButton("Reset models")
        self.reset.setToolTip("Forget the trained models: the next Train starts fresh")
        form.addRow(_row(self.train, self.stop, self.reset))
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        # what the losses do not say: whether the cells are found and the labels settle
        self.round_note = QLabel()
        self.round_note.setWordWrap(True)
        form.addRow(self.round_note)
        self.set_state(training=False, busy=False, has_model=False)

    def set_state(
        self, *, training: bool, busy: bool, has_model: bool, stoppable: bool = False
    ) -> None:
        self.form.set_training(training)
        self.train.setEnabled(not busy)
        self.stop.setEnabled(stoppable)
        self.reset.setEnabled(has_model and not busy)


class ModelPanel(QGroupBox):
    """Segment another image; save and load the trained pair."""

    save_requested = Signal(str)  # a path the user agreed to write (and replace)
    load_requested = Signal(str)
    folder_requested = Signal(str, str)  # a folder of images, the folder for the results

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__("Model")
        form = wrapping_form(self)
        # a newly opened image is the likeliest one to segment next
        self.target = LayerPicker(
            viewer, "Image", "The image to segment with the trained models", pick_new=True
        )
        self.predict = QPushButton("Predict")
        self.predict.setToolTip(
            "Segment the picked image with the trained models (train or load a model, and "
            "open an image, first)"
        )
        self._can_segment = False  # a model and no running job
        self.target.changed.connect(lambda _: self._show_predict())
        self.save = QPushButton("Save model…")
        self.save.setToolTip("Save both trained networks, with their settings, to one .pt file")
        self.load = QPushButton("Load model…")
        self.load.setToolTip("Load a model saved earlier: Predict with it, or Train it further")
        self.folder = QPushButton("Segment a folder…")
        self.folder.setToolTip(
            "Segment and measure every image of a folder (and its subfolders) in the "
            "background: labels and a cell table per image, and a summary"
        )
        form.addRow("Segment", _row(self.target.native, self.predict))
        form.addRow(self.folder)
        form.addRow(_row(self.save, self.load))
        label_tooltips(form)
        self.save.clicked.connect(self._ask_save)
        self.load.clicked.connect(self._ask_load)
        self.folder.clicked.connect(self._ask_folder)

    def set_state(self, *, busy: bool, has_model: bool) -> None:
        self._can_segment = has_model and not busy
        self._show_predict()
        self.folder.setEnabled(has_model and not busy)
        self.save.setEnabled(has_model and not busy)
        self.load.setEnabled(not busy)

    def _show_predict(self) -> None:
        # Predict needs an image to segment as well
        self.predict.setEnabled(self._can_segment and self.target.layer is not None)

    def _ask_save(self) -> None:
        dialog = QFileDialog(self, "Save model")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("pt")
        dialog.setNameFilters(["napari-mutualseg model (*.pt)", "All files (*)"])
        dialog.selectFile("mutualseg-model.pt")
        # The dialog asks before replacing an existing file: the path is agreed on.
        if dialog.exec() and dialog.selectedFiles():
            self.save_requested.emit(dialog.selectedFiles()[0])

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load model", "", "napari-mutualseg model (*.pt);;All files (*)"
        )
        if path:
            self.load_requested.emit(path)

    def _ask_folder(self) -> None:
        images = QFileDialog.getExistingDirectory(self, "Folder of images to segment")
        if not images:
            return
        out = QFileDialog.getExistingDirectory(
            self, "Folder for the results (labels, tables, summary)", images
        )
        if out:
            self.folder_requested.emit(images, out)


class StatusLine(QWidget):
    """What runs now, how far it is and what to do next: under the scrolling panels, so that
    it stays in sight however far they are scrolled."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        # its room is kept while no job runs: the panel does not jump when one starts
        policy = self.progress.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.progress.setSizePolicy(policy)
        self.progress.hide()
        self.left = QLabel()
        policy = self.left.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.left.setSizePolicy(policy)
        self.left.hide()
        self.text = QLabel(text)
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # a long path that cannot wrap is cut, rather than widening the dock past the screen
        policy = self.text.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
        self.text.setSizePolicy(policy)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(9, 4, 9, 6)
        bar = QHBoxLayout()
        bar.addWidget(self.progress, 1)
        bar.addWidget(self.left)
        layout.addLayout(bar)
        layout.addWidget(self.text)

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def set_time_left(self, text: str) -> None:
        """Say how long the running job has left (``""``: not known)."""
        self.left.setText(text)

    def set_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.left.setVisible(busy)


def time_left(seconds: float) -> str:
    """How long a job has left, as a person says it: rounded up, in seconds, minutes or hours."""
    if seconds < 55:
        return f"about {5 * math.ceil(max(seconds, 1) / 5)} s left"
    if seconds < 60 * 60:
        return f"about {math.ceil(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


def round_note(entry: dict[str, Any], found: float | None) -> str:
    """The latest round in words: the share of boxes whose cell was found (when known) and of
    the labels that changed, beside what ends training early."""
    cells = "" if found is None else f"cells found in {found:.0%} of the boxes; "
    text = f"Round {entry['round']}: {cells}{entry['changed']:.1%} of the labels changed"
    if entry.get("converged"):
        return f"{text}: the labels have settled."
    return (
        f"{text} (training ends early once under {TrainConfig.min_change:.1%}, with most "
        "cells found)."
    )


class PanelsView(QObject):
    """Keeps the panels showing what a controller does and the device: the one a job uses, or
    the one the settings pick for the next.

    A child of the dock widget: deleted with it, so the controller (which outlives the panel)
    never calls into deleted controls.
    """

    def __init__(
        self,
        controller: RunController,
        settings: TrainingSettings,
        panels: tuple[DataPanel, TrainingPanel, ModelPanel, CheckPanel],
        status: StatusLine,
        parent: QWidget,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.settings = settings
        self.data, self.training, self.model, self.check = panels
        self.status = status
        self._pace: tuple[float, int] | None = None  # when the job's progress first passed 0
        self._noted: dict[str, Any] | None = None  # the history entry the round note tells
        self._links = [
            (controller.state_changed, self.show_state),
            (controller.message, status.text.setText),
            (controller.progress, self._show_progress),
            (controller.round_done, self._add_round),
            (controller.pair_changed, self.show_pair),
            (settings.changed, self._setting_changed),
        ]
        for signal, slot in self._links:
            signal.connect(slot)
        if controller.last_message:
            status.text.setText(controller.last_message)
        self.show_pair()

    def show_state(self, *_: Any) -> None:
        """Enable what can be done now."""
        controller = self.controller
        state, has_model = controller.state, controller.pair is not None
        busy = state is not RunState.IDLE
        trains = state.trains
        self.data.set_busy(busy)
        self.training.set_state(
            training=trains, busy=busy, has_model=has_model, stoppable=controller.can_stop
        )
        self.model.set_state(busy=busy, has_model=has_model)
        self.check.set_busy(busy)
        self.status.set_busy(busy)
        if not controller.can_stop:  # no job, or one stopping: no time left to tell
            self._pace = None
            self.status.set_time_left("")
        self._show_device()

    def _show_progress(self, done: int, total: int) -> None:
        self.status.set_progress(done, total)
        if self.controller.can_stop:
            self.status.set_time_left(self._time_left(done, total))
        self._show_device()

    def _time_left(self, done: int, total: int) -> str:
        """The time left at the pace since the job's progress first passed 0 (the set-up
        before it, a network built or a model moved to the GPU, would make it look slow)."""
        now = time.perf_counter()
        if done <= 0 or self._pace is None or done < self._pace[1]:
            self._pace = (now, done) if done > 0 else None
            return ""
        since, first = self._pace
        if done == first:  # no pace yet (or still the one step: the text shown stays)
            return self.status.left.text()
        return time_left((now - since) / (done - first) * max(total - done, 0))

    def _show_device(self) -> None:
        """The device line: the one in use while a job runs, else the one the settings pick."""
        controller = self.controller
        state, job, pair = controller.state, controller.job, controller.pair
        if state in (RunState.TRAINING, RunState.STOPPING):
            # the worker names the device once its trainer is built, after the run has started
            if job is None or not job.device_name:
                return
            text = f"Device in use: {job.device_name}"
        elif state in (RunState.PREDICTING, RunState.BATCH) and pair is not None:
            # the pair, moved to the device the settings picked when the job started
            text = f"Device in use: {describe_device(pair.device)}"
        else:
            try:
                text = f"Device: {describe_device(select_device(self.settings.device))}"
            except ValueError as err:
                text = f"Device: unavailable ({err})"
        self.training.device.setText(text)

    def _setting_changed(self, name: str, _value: Any) -> None:
        if name == "device":
            self._show_device()

    def show_pair(self) -> None:
        """The loss curve of the pair's rounds."""
        history = self.controller.history
        self.training.loss_plot.set_history([(h["loss_a"], h["loss_b"]) for h in history])
        # a round reported in this session keeps its note: its report said the cells found
        if not history:
            self.training.round_note.setText("")
        elif history[-1] is not self._noted:
            self.training.round_note.setText(round_note(history[-1], history[-1].get("found")))
        self.show_state()

    def _add_round(self, entry: dict[str, Any]) -> None:
        self.training.loss_plot.add(entry["loss_a"], entry["loss_b"])
        report = self.controller.last_report
        found = entry.get("found", None if report is None else report.found)
        self.training.round_note.setText(round_note(entry, found))
        self._noted = entry

    def unfollow(self) -> None:
        """Stop following (the panel is closed; the controller lives on)."""
        for signal, slot in self._links:
            signal.disconnect(slot)
