"""The training settings, declared once: the form, the checks and the scripting surface.

Each setting is one row of :data:`SETTINGS` (name, label, range, tooltip); its default comes
from :meth:`TrainConfig.recommended` for this machine, or from the user's own starting value
in napari's Preferences (:func:`preferred_settings`; the manifest declares those, and a test
holds them to these rows). :class:`TrainingSettings` holds the values (``widget.settings`` in
scripts) and :class:`SettingsForm` shows them, both ways bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from napari.utils.notifications import show_error, show_warning
from psygnal import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from ..config import TrainConfig
from ..devices import available_devices
from ..images import RGB_MODES, parse_channels


@dataclass(frozen=True)
class Setting:
    """One training setting as the widget shows it.

    ``kind`` is ``int``, ``float`` (with ``decimals``), ``bool`` or ``str``: a choice among
    ``choices()`` or, without choices, free text; ``name`` is the :class:`TrainConfig` field it
    sets, unless ``view_only``.
    """

    name: str
    label: str
    tooltip: str
    kind: type = int
    minimum: float = 0
    maximum: float = 0
    step: float = 1
    decimals: int = 0
    advanced: bool = False
    view_only: bool = False
    choices: Callable[[], Sequence[str]] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("rounds", "Rounds", "Rounds of mutual learning: in each, both networks train, then "
            "each learns from the other's cells. It stops early when those no longer change",
            minimum=1, maximum=1000),
    Setting("steps_per_round", "Steps per round", "Training steps of each network in a round: "
            "more steps learn more, and each round takes longer",
            minimum=1, maximum=1_000_000, step=50),
    Setting("width", "Model width", "Size of the networks (channels of the first U-Net "
            "level): wider learns more, trains slower and needs more memory",
            minimum=2, maximum=256, step=4),
    Setting("learning_rate", "Learning rate", "How fast the networks learn at first (Adam's "
            "learning rate); lower it when the loss curve jumps up and down",
            kind=float, minimum=1e-6, maximum=0.5, step=1e-4, decimals=6),
    Setting("seed", "Seed", "Start of the random numbers: the same seed, settings and boxes "
            "train the same networks again on the CPU",
            minimum=0, maximum=2**31 - 1),
    Setting("device", "Device", "auto: CUDA, then Apple MPS, then the CPU", kind=str,
            choices=available_devices),
    Setting("channels", "Channels", "The image channels the networks take, by index or name, "
            "comma-separated (e.g. 0 or DAPI,GFP); empty: every channel. Stored in the model "
            "file", kind=str),
    Setting("rgb", "RGB images as", "channels: the three colours as input; gray: one gray "
            "channel. Stored in the model file", kind=str, choices=lambda: RGB_MODES,
            advanced=True),
    Setting("depth", "Model depth", "U-Net levels: more levels see more around each pixel "
            "(for large cells), fewer train faster", minimum=1, maximum=8, advanced=True),
    Setting("patch_size", "Patch size", "Edge in pixels of the image crops the networks train "
            "on; keep it larger than a cell, lower it when memory runs out", minimum=16,
            maximum=4096, step=32, advanced=True),
    Setting("batch_size", "Batch size", "Image crops per training step; lower it when memory "
            "runs out", minimum=1, maximum=256, advanced=True),
    Setting("tile_size", "Tile size", "Edge in pixels of the tiles an image is segmented in; "
            "lower it when memory runs out on big images", minimum=32, maximum=8192, step=64,
            advanced=True),
    Setting("show_learning", "Show what A and B learn from", "Add the layers 'A learns from' "
            "and 'B learns from'", kind=bool, view_only=True),
    Setting("track", "Track cells in time series", "Predict and Segment a folder: a cell "
            "keeps its label from frame to frame (by overlap, also across one frame where it "
            "was missed)", kind=bool, view_only=True),
)  # fmt: skip

_BY_NAME = {s.name: s for s in SETTINGS}

#: The manifest's ``configurations`` entry with the user's starting settings (napari's
#: Preferences, page napari-mutualseg); there 0 and "auto" mean "recommended for the device".
PREFERENCES = "starting_settings"


def preferred_settings() -> dict[str, Any]:
    """The starting settings the user chose in napari's Preferences, by setting name.

    Only the values the user set are returned (not 0 or "auto"); ``{}`` where this napari
    has no plugin preferences or the plugin is not registered. A value the panel cannot take
    (a device this machine lacks, a patch size below the least) is left out with a warning
    that says which, so that the panel still opens.
    """
    try:
        from napari.settings import get_plugin_settings

        chosen = getattr(get_plugin_settings("napari-mutualseg"), PREFERENCES).model_dump()
    except (ImportError, KeyError, AttributeError):  # napari before plugin preferences
        return {}
    values, refused = {}, []
    for name, value in chosen.items():
        recommended = value == "auto" or (value == 0 and not isinstance(value, bool))
        if recommended or name not in _BY_NAME:
            continue
        if name == "device":  # "cuda" in Preferences: this machine's first CUDA device
            value = next((d for d in available_devices() if d.startswith(f"{value}:")), value)
        try:
            values[name] = _checked(_BY_NAME[name], value)
        except ValueError as err:
            refused.append(str(err))
    if refused:
        show_warning(
            "Some of your starting settings (Preferences › napari-mutualseg) do not apply "
            f"here; the recommended ones are used instead: {' '.join(refused)}"
        )
    return values


class TrainingSettings:
    """The training settings shown in the widget; read and set them from scripts.

    Examples
    --------
    >>> widget.settings.rounds = 3
    >>> widget.settings.update(steps_per_round=50, device="cpu")
    >>> widget.settings.to_config()
    """

    changed = Signal(str, object)

    def __init__(self, preferred: Mapping[str, Any] | None = None) -> None:
        """Start from the recommended settings for the device, with ``preferred`` values
        (by setting name, e.g. :func:`preferred_settings`) in place of them."""
        preferred = dict(preferred or {})
        recommended = TrainConfig.recommended(preferred.get("device", "auto"))
        values = {s.name: getattr(recommended, s.name, False) for s in SETTINGS}
        values["channels"] = _channels_text(recommended.channels)
        object.__setattr__(self, "_values", values)
        self.update(**preferred)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"There is no setting {name!r}.") from None

    def __setattr__(self, name: str, value: Any) -> None:
        value = _checked(_setting(name), value)
        if value != self._values[name]:
            self._values[name] = value
            self.changed.emit(name, value)

    def __repr__(self) -> str:
        return "TrainingSettings(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def update(self, **values: Any) -> None:
        """Set several settings at once; none of them when one is wrong (a script's half-made
        change would train with settings nobody chose)."""
        for name, value in values.items():
            _checked(_setting(name), value)
        for name, value in values.items():
            setattr(self, name, value)

    def take_model(self, stored: dict[str, Any]) -> None:
        """Follow a loaded model's settings that resumed training must keep: its networks'
        size and the channels it takes."""
        for name in ("width", "depth", "channels", "rgb"):
            # a model that takes every channel stores None for its channels
            if name in stored and (stored[name] is not None or name == "channels"):
                setattr(self, name, stored[name])

    def as_dict(self) -> dict[str, Any]:
        """The values, by name."""
        return dict(self._values)

    def to_config(self) -> TrainConfig:
        """The engine's settings: the recommended ones for the device, with these values."""
        given = {s.name: self._values[s.name] for s in SETTINGS if not s.view_only}
        given["channels"] = parse_channels(given["channels"])
        return TrainConfig.recommended(given.pop("device"), **given)


def wrapping_form(parent: QWidget) -> QFormLayout:
    """A form layout on ``parent`` that fits a narrow dock: a row whose field does not fit
    beside its name goes under it, instead of holding the dock open sideways."""
    form = QFormLayout(parent)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    return form


def label_tooltips(form: QFormLayout) -> None:
    """Give the name of each row of ``form`` the tooltip of its field (of the first control of
    a row of several): the name is where the eye rests."""
    label_role, field_role = QFormLayout.ItemRole.LabelRole, QFormLayout.ItemRole.FieldRole
    for row in range(form.rowCount()):
        label, field = form.itemAt(row, label_role), form.itemAt(row, field_role)
        if label is None or label.widget() is None or field is None:
            continue
        control = field.widget() or field.layout().itemAt(0).widget()
        label.widget().setToolTip(control.toolTip())


def _channels_text(channels: Any) -> str:
    """Channels as the form shows them: ``"0, DAPI"``; ``""`` for every channel."""
    chosen = parse_channels(channels)
    return "" if chosen is None else ", ".join(map(str, chosen))


def _setting(name: str) -> Setting:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttributeError(
            f"There is no setting {name!r}; the settings are {', '.join(_BY_NAME)}."
        ) from None


def _checked(setting: Setting, value: Any) -> Any:
    if setting.choices is not None:
        choices = list(setting.choices())
        if value not in choices:
            raise ValueError(f"{setting.name} must be one of {', '.join(choices)}, got {value!r}.")
        return value
    if setting.kind is str:  # free text: the channels are the one such setting
        try:
            return _channels_text(value)
        except ValueError as err:  # the core's rule (parse_channels), in the setting's name
            raise ValueError(f"{setting.name}: {err}") from None
    if setting.kind is bool:
        if not isinstance(value, bool) and value not in (0, 1):  # bool("no") would be True
            raise ValueError(f"{setting.name} must be True or False, got {value!r}.")
        return bool(value)
    whole = "whole " if setting.kind is int else ""
    try:
        number = setting.kind(value)
        # int(2.7) would be 2: a script's fraction is a mistake to say, not to round away, and
        # so is True, which Python counts as 1
        fits = (
            not isinstance(value, bool)
            and float(value) == number
            and setting.minimum <= number <= setting.maximum
        )
    except (TypeError, ValueError):
        fits = False
    if not fits:
        low, high = setting.kind(setting.minimum), setting.kind(setting.maximum)
        raise ValueError(
            f"{setting.name} must be a {whole}number between {low} and {high}, got {value!r}."
        )
    return number


class SettingsForm(QWidget):
    """The settings as a form (the advanced ones folded away), bound both ways."""

    def __init__(self, settings: TrainingSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.editors: dict[str, QWidget] = {}
        form = wrapping_form(self)
        form.setContentsMargins(0, 0, 0, 0)
        advanced = QCollapsible("Advanced")
        advanced.toggleButton().setToolTip(
            "More settings: how RGB images are read, the model's depth, and the sizes to "
            "lower when memory runs out"
        )
        inner = QWidget()
        advanced_form = wrapping_form(inner)
        for setting in SETTINGS:
            editor = self._editor(setting)
            editor.setToolTip(setting.tooltip)
            self.editors[setting.name] = editor
            target = advanced_form if setting.advanced else form
            if setting.kind is bool:
                target.addRow(editor)
            else:
                target.addRow(setting.label, editor)
        for target in (form, advanced_form):
            label_tooltips(target)
        advanced.addWidget(inner)
        form.addRow(advanced)
        settings.changed.connect(self._show)

    def _editor(self, setting: Setting) -> QWidget:
        value = getattr(self.settings, setting.name)
        name = setting.name
        if setting.kind is bool:
            editor = QCheckBox(setting.label)
            editor.setChecked(value)
            editor.toggled.connect(self._edited)
        elif setting.choices is not None:
            editor = QComboBox()
            editor.addItems(list(setting.choices()))
            editor.setCurrentText(value)
            editor.currentTextChanged.connect(self._edited)
        elif setting.kind is str:
            editor = QLineEdit(value)
            editor.setPlaceholderText("every channel")
            editor.editingFinished.connect(self._text_edited)
        else:
            editor = (
                QDoubleSpinBox(decimals=setting.decimals)
                if setting.kind is float
                else (QSpinBox())
            )
            editor.setRange(setting.kind(setting.minimum), setting.kind(setting.maximum))
            editor.setSingleStep(setting.kind(setting.step))
            editor.setValue(value)
            editor.valueChanged.connect(self._edited)
        # Bound methods, never lambdas: Qt's connection keeps a lambda (and the form, the
        # panel around it) alive out of the garbage collector's sight; the editor's object
        # name says which setting it edits.
        editor.setObjectName(name)
        return editor

    def _edited(self, value: Any) -> None:
        name = self.sender().objectName()
        if name in self.editors:
            setattr(self.settings, name, value)

    def _text_edited(self) -> None:
        editor = self.sender()
        if editor.objectName() in self.editors:
            self._set_text(editor.objectName(), editor)

    def _set_text(self, name: str, editor: QLineEdit) -> None:
        try:
            setattr(self.settings, name, editor.text())
        except ValueError as err:
            show_error(str(err))
            editor.setText(getattr(self.settings, name))

    def _show(self, name: str, value: Any) -> None:
        editor = self.editors[name]
        editor.blockSignals(True)
        try:
            if isinstance(editor, QCheckBox):
                editor.setChecked(value)
            elif isinstance(editor, QComboBox):
                editor.setCurrentText(value)
            elif isinstance(editor, QLineEdit):
                editor.setText(value)
            else:
                editor.setValue(value)
        finally:
            editor.blockSignals(False)

    def set_training(self, training: bool) -> None:
        """Freeze the settings the running training depends on."""
        for setting in SETTINGS:
            if not setting.view_only:
                self.editors[setting.name].setEnabled(not training)
