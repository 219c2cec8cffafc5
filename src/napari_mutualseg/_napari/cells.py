"""The cells table: measurements of a cells layer, a click away from the cell, and its exports.

A Labels layer's measurements live in ``layer.features`` (one row per cell, its ``index``
column the cell's label, as napari shows them on hover). :class:`CellsPanel` shows the
features of the active Labels layer, measures them when missing, goes to a cell when its row
is clicked, and exports the table (CSV), the outlines as a Fiji ROI set and as QuPath
GeoJSON; the npe2 writers below are the same exports from File > Save Selected Layers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableView,
)
from superqt.utils import create_worker

from .. import files
from ..blockwise import AUTO_BLOCKWISE_PIXELS
from ..export import fiji_roi_zip, qupath_geojson, table_csv
from ..measure import Table, join_frames, measure_cells, with_pixel_size
from .axes import layer_axes, layer_pixel_size
from .layers import OWNER_KEY, center_on, show_table
from .panels import _row
from .workers import WorkerFailure, in_panel_words, in_units, measure

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer

    from ..batch import BatchRun

#: The exports: name -> (file filter, suffix).
EXPORTS = {
    "table": ("CSV table (*.csv)", ".csv"),
    "fiji": ("Fiji ROI set (*.zip)", ".zip"),
    "qupath": ("QuPath GeoJSON (*.geojson)", ".geojson"),
}
#: Largest cells layer the panel measures again by itself after an edit (2048², a few tenths
#: of a second on the main thread); a larger one is measured when Measure is pressed.
_AUTO_MEASURE_PIXELS = 2048 * 2048
#: Quiet time after an edit before the table is checked: one check per burst of edits.
_RECHECK_MS = 300


def measure_layer(layer: Labels, image: Layer | None = None) -> Table:
    """Measure the cells of ``layer``.

    With its ``image``, the cells are measured as a prediction measures them: on the image's
    axes (a time series frame by frame, a z-stack as 3D cells, RGB and channel images in every
    channel), and in physical units too where the image's pixel size is known
    (:attr:`~.axes.LayerAxes.pixel_size`). Without one, the layer is a plane or a stack of 3D
    cells, or a time series where its table says so (a ``t`` column: measured frame by frame
    again), measured in the layer's units where its scale has length units.

    Raises
    ------
    ValueError
        When the cells cannot be measured (the message says why and what to do).
    """
    labels = np.asarray(layer.data)
    if image is not None:
        axes = layer_axes(image)
        if labels.shape != axes.label_shape:
            raise ValueError(
                f"'{layer.name}' {labels.shape} no longer fits its image '{image.name}' "
                f"({axes.describe()}, cells {axes.label_shape}): predict '{image.name}' again "
                "to measure its cells."
            )
        return measure(labels, image.data, axes)
    # a time series' table stays one (a row per cell and frame), its image closed or not:
    # its frames measured as the z-planes of 3D cells would merge a cell across time
    timed = "t" in layer.features and labels.ndim in (3, 4)
    axes = "T" * timed + "ZYX"[max(0, 3 - labels.ndim + timed) :]
    frames = [(t, labels[t]) for t in range(labels.shape[0])] if timed else [(None, labels)]
    table = join_frames([(t, measure_cells(frame)) for t, frame in frames])
    pixel_size = layer_pixel_size(layer, axes) if len(axes) == labels.ndim else None
    return table if pixel_size is None else with_pixel_size(table, *pixel_size)


def _cell_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels present in ``labels`` (0 left out), ascending, and their pixel counts."""
    flat = np.asarray(labels).ravel()
    if not flat.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(flat.max())
    if flat.min() >= 0 and top < max(flat.size, 1 << 16):
        # counting is linear; its array of counts is no larger than the labels. Counted a
        # part at a time: the labels widened to intp at once (288 MB at 6000²) took longer
        # than the counting, on the main thread of File > Save.
        counts = np.zeros(top + 1, np.intp)
        for start in range(0, flat.size, 1 << 22):
            part = flat[start : start + (1 << 22)].astype(np.intp, copy=False)
            counts += np.bincount(part, minlength=top + 1)
        ids = np.flatnonzero(counts)
        sizes = counts[ids]
    else:
        ids, sizes = np.unique(flat, return_counts=True)
    cells = ids != 0
    return ids[cells].astype(np.int64), sizes[cells].astype(np.int64)


def table_is_current(layer: Labels) -> bool:
    """Whether ``layer.features`` are the measurements of the layer's cells as they are now.

    Every cell painted, erased, merged or split since the table was made changes the cells
    present or their pixel counts, which one pass over the labels compares with the table's
    ``label`` and ``area_px`` / ``volume_px`` columns (a time series has a row per cell and
    frame: its sizes add up). A layer without a table has no current one.
    """
    features = layer.features
    if "label" not in features or not len(features):
        return False
    ids, counts = _cell_sizes(layer.data)
    rows = np.asarray(features["label"]).astype(np.int64)
    labels, row_cell = np.unique(rows, return_inverse=True)
    if not np.array_equal(labels, ids):
        return False
    size = next((c for c in ("area_px", "volume_px") if c in features), None)
    if size is None:
        return True
    sizes = np.asarray(features[size], float)
    return np.array_equal(np.bincount(row_cell, weights=sizes, minlength=len(labels)), counts)


def cell_table(layer: Labels, image: Layer | None = None) -> Table:
    """The layer's measurements: its features when they are current, measured now otherwise
    (the cells changed since, or were never measured)."""
    return _features(layer) if table_is_current(layer) else measure_layer(layer, image)


def _features(layer: Labels) -> Table:
    """The layer's features as a table (napari's ``index`` column left out)."""
    return {k: np.asarray(v) for k, v in layer.features.items() if k != "index"}


def refresh_table(layer: Labels, image: Layer | None = None) -> Table:
    """Measure the layer's cells again when they changed since its table was made, and keep
    the new table in its features; the current table.

    Raises
    ------
    ValueError
        When the cells cannot be measured (the message says why and what to do).
    """
    if table_is_current(layer):
        return _features(layer)
    table = measure_layer(layer, image)
    show_table(layer, table)
    return table


def refresh_cells(layer: Labels, image: Layer | None, changed: Sequence[int]) -> Table:
    """:func:`refresh_table` after an edit of the cells ``changed`` alone (a merge, a split):
    their rows measured again in the window they cover, the others kept.

    Measuring every cell again took the main thread seconds at real sizes (16 s for the 4000
    cells of a 2048² image), for every merge and split. A layer that is not 2D, or whose
    other cells do not match their rows (changed since they were measured), is measured whole.

    Raises
    ------
    ValueError
        When the cells cannot be measured (the message says why and what to do).
    """
    data = np.asarray(layer.data)
    old = _features(layer)
    if data.ndim != 2 or "label" not in old or not len(old["label"]):
        return refresh_table(layer, image)
    ids = np.unique(np.asarray(changed, np.int64))
    inside = np.isin(data, ids)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    keep = ~np.isin(np.asarray(old["label"], np.int64), ids)
    table = {k: v[keep] for k, v in old.items()}
    if rows.size:
        (y0, y1), (x0, x1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
        window = np.where(inside[y0:y1, x0:x1], data[y0:y1, x0:x1], 0)
        part = _measure_window(layer, image, window, (y0, x0), data.shape)
        if part is None or list(part) != list(old):
            return refresh_table(layer, image)
        table = {k: np.concatenate([table[k], part[k]]) for k in old}
        order = np.argsort(table["label"], kind="stable")  # rows in label order
        table = {k: v[order] for k, v in table.items()}
    show_table(layer, table)
    if not table_is_current(layer):  # other cells changed as well: all measured again
        return refresh_table(layer, image)
    return table


def _measure_window(
    layer: Labels,
    image: Layer | None,
    window: np.ndarray,
    origin: tuple[int, int],
    shape: tuple[int, ...],
) -> Table | None:
    """The cells of ``window`` (of a 2D cells layer of ``shape``, at ``origin``) measured as
    :func:`measure_layer` measures the whole layer; None where it would measure otherwise."""
    (y0, y1), (x0, x1) = ((o, o + n) for o, n in zip(origin, window.shape, strict=True))
    units: Callable[[Table], Table] | None = None
    if image is None:
        table = measure_cells(window)
        pixel_size = layer_pixel_size(layer, "YX")
        if pixel_size is not None:
            units = partial(_with_size, pixel_size=pixel_size)
    else:
        axes = layer_axes(image)
        if tuple(shape) != axes.label_shape or axes.axes[-2:] != "YX":
            return None
        units = partial(in_units, axes=axes)
        if np.prod(shape, dtype=float) > AUTO_BLOCKWISE_PIXELS:  # shapes only, as whole
            table = measure_cells(window)
        else:
            crop = (slice(None),) * (len(axes.axes) - 2) + (slice(y0, y1), slice(x0, x1))
            bare = replace(axes, shape=window.shape, pixel_size=None, frame_interval=None)
            table = measure(window, image.data[crop], bare)
    for axis, offset in (("y", y0), ("x", x0)):
        for column in (f"centroid_{axis}_px", f"bbox_{axis}0_px", f"bbox_{axis}1_px"):
            table[column] = table[column] + offset
    return table if units is None else units(table)


def _with_size(table: Table, pixel_size: tuple[tuple[float, ...], str]) -> Table:
    return with_pixel_size(table, *pixel_size)


def _open_viewers() -> list[napari.Viewer]:
    """Every open viewer, the current one first.

    napari keeps its viewers in ``Viewer._instances`` (what ``Viewer.close_all`` closes) and
    offers no public list: an npe2 writer is given no viewer, and the current one is not
    the one holding the image where there are two, or none from a script.
    """
    import napari

    viewers = [napari.current_viewer(), *getattr(napari.Viewer, "_instances", ())]
    return [v for v in dict.fromkeys(viewers) if v is not None]


def image_of(viewer: napari.Viewer | None, layer: Layer) -> Layer | None:
    """The image ``layer``'s cells were found in, while it is in ``viewer``.

    Read from the plugin's tag even where the layer is no longer the plugin's (a copy the
    user made): the image is only read, to measure the cells in its intensities.
    """
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    info = meta.get(OWNER_KEY)
    source = info.get("source_id") if isinstance(info, dict) else None
    if viewer is None or source is None:
        return None
    return next((x for x in viewer.layers if str(x.unique_id) == source), None)


def export(
    kind: str,
    path: str,
    layer: Labels,
    table: Table | None,
    *,
    overwrite: bool,
    image: Layer | None = None,
) -> str:
    """Write one export of a cells layer (atomically); the path written.

    A z-stack's or time series' cells go to Fiji with their planes, which the axes of their
    ``image`` name; QuPath takes 2D cells only.

    Raises
    ------
    ValueError
        When the layer has no cells (every format alike: an empty table, ROI set or
        GeoJSON is most often the wrong layer picked, and Fiji refuses an empty ROI set),
        or when the format cannot hold them.
    """
    return export_writer(kind, path, layer, table, image=image)(overwrite)


def export_writer(
    kind: str,
    path: str,
    layer: Labels,
    table: Table | None,
    *,
    image: Layer | None = None,
    snapshot: bool = False,
) -> Callable[[bool], str]:
    """What :func:`export` writes, checked now and written when called (with ``overwrite``),
    touching no layer then: in a worker thread, as the panel writes, a Fiji ROI set or GeoJSON
    of tens of thousands of cells takes seconds.

    With ``snapshot``, the cells are copied: napari paints into the layer's own array, which
    the person may do while the file is written.

    Raises
    ------
    ValueError
        As :func:`export`, when nothing can be written.
    """
    labels = np.asarray(layer.data)
    if not labels.any():
        raise ValueError(
            f"'{layer.name}' has no cells (every pixel is 0), so there is nothing to export; "
            "select the layer that holds the cells."
        )
    if kind == "table":
        return lambda overwrite: str(files.write_text(path, table_csv(table), overwrite=overwrite))
    axes, channels = None, 1
    if labels.ndim != 2 and kind == "fiji" and image is not None:
        found = layer_axes(image)
        axes = found.label_axes if len(found.label_axes) == labels.ndim else None
        # an RGB image's colours are no channels to ImageJ (nor in its axes)
        channels = found.shape[found.axes.index("C")] if "C" in found.axes else 1
    if labels.ndim != 2 and axes is None:
        what = (
            "a Fiji ROI set of a stack's cells needs the image they were found in, open in "
            "the viewer (its axes name the planes)"
            if kind == "fiji"
            else "QuPath GeoJSON takes 2D cells only"
        )
        raise ValueError(
            f"'{layer.name}' is {labels.ndim}D: {what}; export the table, or one plane at a time."
        )
    if snapshot:
        labels = labels.copy()

    def write(overwrite: bool) -> str:
        with files.atomic_write(path, overwrite=overwrite) as f:
            if kind == "fiji":
                f.write(fiji_roi_zip(labels, axes, channels=channels))
            else:
                f.write(qupath_geojson(labels, table).encode())
        return str(path)

    return write


# -- npe2 writers (File > Save Selected Layers…): napari asks before replacing a file ---------


def _writer(kind: str):
    def write(path: str, data: Any, meta: dict) -> list[str]:
        from napari.layers import Labels
        from napari.utils.notifications import show_error

        layer = Labels(
            data,
            name=meta.get("name"),  # messages name the layer, not "data"
            features=meta.get("features"),
            scale=meta.get("scale"),
            units=meta.get("units"),  # cells measured again are measured in µm too
            metadata=meta.get("metadata"),
        )
        # napari's Save dialog passes the name as typed ('x cells' for the layer of that
        # name); napari's own writers add their suffix, and so does this one, replacing
        # nothing under the new name, which napari did not ask about
        suffix = EXPORTS[kind][1]
        asked = Path(path).suffix.lower() == suffix
        path = path if asked else path + suffix
        try:
            # cells changed since they were measured are measured again, in their image if
            # open in any viewer (its layer's id is unique to this napari); a ROI set holds
            # outlines only
            found = (image_of(viewer, layer) for viewer in _open_viewers())
            image = next((image for image in found if image is not None), None)
            table = None if kind == "fiji" else cell_table(layer, image)
            return [export(kind, path, layer, table, overwrite=asked, image=image)]
        except files.ResultExistsError:
            show_error(
                f"{path} was not written: a file of that name exists, and napari asked about "
                f"the name without {suffix}. Save again and pick that file to replace it."
            )
            return []
        except (OSError, ValueError) as err:
            # napari takes a ValueError from a writer for "no plugin can write this" and says
            # only that: napari 0.9.2 napari/plugins/_npe2.py write_layers, lines 94-95
            # (`except ValueError: return [], ''`), then napari/plugins/io.py save_layers,
            # lines 120-122 ("No data written! A plugin could not be found…"). So the reason
            # is shown here and nothing written is returned (napari then says the plugin
            # wrote nothing). An OSError (a folder's name, no space) would reach napari as a
            # traceback. This can go once napari reports a writer's own errors.
            show_error(f"{path} was not written: {err}")
            return []

    write.__doc__ = f"Write a Labels layer's cells as {EXPORTS[kind][0]}."
    return write


write_table = _writer("table")
write_fiji_rois = _writer("fiji")
write_qupath_geojson = _writer("qupath")


# -- the panel ----------------------------------------------------------------------------------


class _TableModel(QAbstractTableModel):
    """A read-only Qt view of a :data:`~napari_mutualseg.measure.Table` (columns of arrays)."""

    def __init__(self) -> None:
        super().__init__()
        self.table: Table = {}

    def set_table(self, table: Table) -> None:
        self.beginResetModel()
        self.table = table
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 (Qt's API)
        return len(next(iter(self.table.values()), ()))

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(self.table)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        value = list(self.table.values())[index.column()][index.row()]
        return f"{value:.4g}" if isinstance(value, float | np.floating) else str(value)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return list(self.table)[section]
        return None


class CellsPanel(QGroupBox):
    """The measurements of the active Labels layer; a row goes to its cell."""

    def __init__(self, viewer: napari.Viewer, notify: Any) -> None:
        super().__init__("Cells")
        self.viewer = viewer
        self.notify = notify
        self.layer: Labels | None = None
        self._stale = False  # the cells changed since the table shown, which was kept
        self._recheck = QTimer(self, singleShot=True, interval=_RECHECK_MS)
        self._recheck.timeout.connect(self._check)
        form = QFormLayout(self)
        self.title = QLabel("Select a cells layer to see its cells.")
        self.title.setWordWrap(True)
        self.model = _TableModel()
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setMinimumHeight(120)
        self.view.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.measure = QPushButton("Measure")
        self.measure.setToolTip("Measure the cells of the active layer in its image")
        self.buttons: dict[str, QPushButton] = {}
        for kind, label, tip in (
            ("table", "Save table…", "Save the table of the active cells layer as a CSV file, "
             "a row per cell"),
            ("fiji", "Fiji ROIs…", "Save the outlines of the active layer's cells as a Fiji "
             "ROI set (.zip) for the ROI Manager; a stack's cells keep their planes"),
            ("qupath", "QuPath GeoJSON…", "Save the outlines of the active layer's 2D cells, "
             "with their measurements, as QuPath GeoJSON (File > Import objects)"),
        ):  # fmt: skip
            self.buttons[kind] = QPushButton(label)
            self.buttons[kind].setToolTip(
                f"{tip}. Cells changed since the table was made are measured again first"
            )
        form.addRow(self.title)
        form.addRow(self.view)
        # two buttons a row: four in one held the dock open sideways below 420 px
        table, fiji, qupath = self.buttons.values()
        form.addRow(_row(self.measure, table))
        form.addRow(_row(fiji, qupath))
        self.measure.clicked.connect(self.measure_active)
        # bound methods: a lambda held by Qt's connection would keep a closed panel alive
        for button in self.buttons.values():
            button.clicked.connect(self._export_clicked)
        self.view.clicked.connect(self._go_to_row)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._on_active()

    def unwatch(self) -> None:
        """Stop following the viewer (the panel is closed)."""
        self.viewer.layers.selection.events.active.disconnect(self._on_active)
        self._follow(None)

    def _on_active(self, *_: Any) -> None:
        from napari.layers import Labels

        layer = self.viewer.layers.selection.active
        self._follow(layer if isinstance(layer, Labels) else None)

    def _edit_events(self, layer: Labels) -> list[Any]:
        # painting and erasing (paint), a script or merge/split (data), undo and redo: napari
        # emits no edit event for those, only the redraw's set_data; the title names the layer
        events = layer.events
        return [events.features, events.name, events.paint, events.data, events.set_data]

    def _follow(self, layer: Labels | None) -> None:
        if self.layer is not None:
            for emitter in self._edit_events(self.layer):
                emitter.disconnect(self._changed)
        self.layer = layer
        self._stale = False
        if layer is not None:
            for emitter in self._edit_events(layer):
                emitter.connect(self._changed)
        self._refresh()
        self._check()

    def _changed(self, event: Any) -> None:
        if event.type in ("features", "name"):
            self._refresh()
        else:  # once the person stops editing (a stroke emits one event, a fill several)
            self._recheck.start()

    def _check(self) -> None:
        """Measure the followed layer again when its cells changed since its table was made.

        A table only: a layer never measured waits for Measure. Measuring runs here, on the
        main thread, so a layer above :data:`_AUTO_MEASURE_PIXELS` is left to Measure and the
        exports, which measure a changed layer before they write.
        """
        layer = self.layer
        if layer is None or "label" not in layer.features or not len(layer.features):
            return
        if np.prod(layer.data.shape, dtype=float) > _AUTO_MEASURE_PIXELS:
            return
        stale = not table_is_current(layer)
        if stale:
            try:
                show_table(layer, measure_layer(layer, image_of(self.viewer, layer)))
                stale = False
            except ValueError:  # said when the person presses Measure
                pass
        if stale != self._stale:
            self._stale = stale
            self._refresh()

    def _refresh(self, *_: Any) -> None:
        layer = self.layer
        self.model.set_table({} if layer is None else _features(layer))
        n = self.model.rowCount()
        self.title.setText(
            "Select a cells layer to see its cells." if layer is None else
            f"'{layer.name}': press Measure." if not n else
            f"'{layer.name}': {n} cells when last measured; its cells changed since: press "
            "Measure." if self._stale else f"'{layer.name}': {n} cells."
        )  # fmt: skip
        for button in (self.measure, *self.buttons.values()):
            button.setEnabled(layer is not None)

    def measure_active(self) -> Table | None:
        """Measure the active cells layer in its image (intensities per channel)."""
        if self.layer is None:
            return None
        try:
            table = measure_layer(self.layer, image_of(self.viewer, self.layer))
        except ValueError as err:
            self.notify(str(err), "error")
            return None
        self._stale = False
        show_table(self.layer, table)
        return table

    def _go_to_row(self, index: QModelIndex) -> None:
        table, layer, row = self.model.table, self.layer, index.row()
        if layer is None:
            return
        # the cell's place in the layer's data: its frame (a time series' table has a row per
        # cell and frame), its z, its centre
        point = [float(table["t"][row])] if "t" in table else []
        point += [
            float(table[f"centroid_{a}_px"][row]) for a in "zyx" if f"centroid_{a}_px" in table
        ]
        point = point[-layer.ndim :]
        unnamed = layer.ndim - len(point)  # leading axes the table does not name stay as shown
        world = np.asarray(layer.data_to_world([0.0] * unnamed + point), float)
        first = self.viewer.dims.ndim - layer.ndim
        for k in range(unnamed, layer.ndim - 2):
            if first + k not in self.viewer.dims.displayed:
                self.viewer.dims.set_point(first + k, world[k])
        center_on(self.viewer, world)
        layer.selected_label = int(table["label"][row])

    def _export_clicked(self) -> None:
        kind = next((k for k, b in self.buttons.items() if b is self.sender()), None)
        if kind is not None:
            self._ask_export(kind)

    def _ask_export(self, kind: str) -> None:
        layer = self.layer
        if layer is None:
            return
        label, suffix = EXPORTS[kind]
        # a folder run's layers are named by their image's path below the plate ('a/x.tif')
        stem = re.sub(r'[\\/:*?"<>|]+', "_", layer.name)
        path, _ = QFileDialog.getSaveFileName(self, label, f"{stem}{suffix}", label)
        if not path:
            return
        try:
            # the table shown is the one written: measured again if the cells changed
            image = image_of(self.viewer, layer)
            table = refresh_table(layer, image)
            write = export_writer(kind, path, layer, table, image=image, snapshot=True)
        except (OSError, ValueError) as err:
            self.notify(f"Could not export: {err}", "error")
            return
        # written in a worker: the outlines of tens of thousands of cells take seconds, and
        # the viewer stays usable meanwhile; the dialog asked before replacing a file
        worker = create_worker(_written, write, _ignore_errors=True)
        worker.returned.connect(partial(_tell_written, self.notify))
        worker.start()


def _written(write: Callable[[bool], str]) -> str | WorkerFailure:
    """Run an export's ``write`` (in a worker); the path written, or the error (wrapped:
    superqt raises an exception a worker returns, and nothing listens to its errors)."""
    try:
        return write(True)
    except Exception as err:
        return WorkerFailure(err)


def _tell_written(notify: Any, outcome: str | WorkerFailure) -> None:
    if isinstance(outcome, WorkerFailure):
        notify(f"Could not export: {outcome.original}", "error")
    else:
        notify(f"Wrote {outcome}", "info")


class FolderSummary(QGroupBox):
    """What a folder batch did, one row per image; a click opens the image and its cells."""

    def __init__(self, viewer: napari.Viewer, run: BatchRun, notify: Any) -> None:
        from ..batch import REPORT_NAME, SUMMARY_NAME

        super().__init__(f"Summary: {run.out_dir}")
        self.viewer = viewer
        self.notify = notify
        self.results = run.results_in_order()
        self.axes = run.options.axes  # the axes the run was told, for files that do not say
        rows = [
            {
                "image": r.job.name,
                "status": r.status,
                **{k: v for k, v in (r.summary or {}).items() if k != "image"},
                "reason": in_panel_words(r.reason),
            }
            for r in self.results
        ]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        self.model = _TableModel()
        self.model.set_table(
            {c: np.asarray([row.get(c, "") for row in rows], dtype=object) for c in columns}
        )
        layout = QFormLayout(self)
        counts = run.counts()
        files = f"{SUMMARY_NAME} and {REPORT_NAME}"
        if run.wells is not None:
            wells = len(run.well_rows)
            files = f"{SUMMARY_NAME}, {REPORT_NAME} and {run.wells.name} ({wells} well"
            files += f"{'s' if wells > 1 else ''})"
        # why a plate whose names are mixed has no table per well
        note = f" {run.wells_note[0].upper()}{run.wells_note[1:]}." if run.wells_note else ""
        layout.addRow(
            QLabel(
                ", ".join(f"{n} {k}" for k, n in counts.items() if n)
                + f". Click an image to open it with its cells; {files} are in the results "
                f"folder.{note}"
            )
        )
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.view.clicked.connect(self._row_clicked)
        layout.addRow(self.view)

    def _row_clicked(self, index: QModelIndex) -> None:
        self.open(index.row())

    def open(self, row: int) -> Labels | None:
        """Add the image of ``row`` and its cells (with their table) to the viewer."""
        from ..image_task import read_labels, read_table
        from ..images import AxisImage
        from .reader import image_layer

        result = self.results[row]
        job = result.job
        if result.status not in ("done", "skipped"):
            reason = in_panel_words(result.reason)
            self.notify(f"{job.name}: {result.status}. {reason}".strip(), "warning")
            return None
        try:
            image = AxisImage.from_file(job.source, axes=self.axes, lazy=True)
            labels = read_labels(job.labels)
            table = read_table(job.table)
        except (OSError, ValueError) as err:
            self.notify(f"Could not open {job.name}: {err}", "error")
            return None
        # as File > Open shows it: axes and pixel size, so that it lines up with other images
        data, kwargs, _ = image_layer(image, job.name)
        self.viewer.add_image(data, **kwargs)
        place = {k: kwargs[k][-labels.ndim :] for k in ("scale", "units") if k in kwargs}
        layer = self.viewer.add_labels(labels, name=f"{job.name} cells", **place)
        show_table(layer, table)
        return layer
