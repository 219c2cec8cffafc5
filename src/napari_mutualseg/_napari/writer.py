"""Results into layers at the viewer's pace: one layer per event-loop turn, newest round first.

Adding a napari layer costs the main thread about 0.2 s (its visuals and controls), and
every change of a Labels layer's data costs a canvas redraw, even of a hidden layer (under a
software renderer 50-100 ms). So the result layers are made before training starts, one per
turn; during training only the visible ones are rewritten each round, and a hidden one gets
the newest data when the user shows it or when training ends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ..measure import Table
from .axes import layer_axes
from .layers import (
    OWNER_KEY,
    WRITTEN,
    cells_layer,
    edited,
    find_own_layer,
    owner_info,
    show_table,
    upsert_layer,
)
from .workers import PER_IMAGE, RESULT_LAYERS

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: Delay between two layer writes: lets Qt and vispy draw in between.
_GAP_MS = 5

#: The largest cells of a stack or time series kept as written (:meth:`LayerWriter.remember`),
#: in bytes: 512 MiB, 64 planes of 2048² in uint16 labels. The copy doubles the memory of a
#: prediction's cells; a larger stack's corrections cannot be added to training (a 2D image's
#: always can).
KEPT_STACK_BYTES = 512 * 2**20


class LayerWriter(QObject):
    """Writes a training's results into the plugin's layers (see the module docs).

    A round that arrives before the previous one is shown replaces it: the layers never queue
    behind the engine.
    """

    def __init__(self, viewer: Callable[[], napari.Viewer | None]) -> None:
        super().__init__()
        self._viewer = viewer
        self.images: list[Layer] = []
        self.applied_rounds: list[int] = []
        self.on_round_shown: Callable[[], None] | None = None  # called once a round is drawn
        self.notify: Callable[[str, str], None] | None = None  # (text, level) for the user
        self._gone: set[str] = set()  # images removed from the viewer, the user told
        # the cells the plugin last wrote for each image (by layer id): what a person corrects
        self.written: dict[str, np.ndarray] = {}
        self.defer_hidden = False
        # the newest data of each hidden layer (by the layer's id): its role and image
        self._deferred: dict[int, tuple[str, Layer, np.ndarray]] = {}
        self._watched: set[int] = set()
        # a round not shown yet: its index, its layers' data and its tables, each with its
        # image (bound when the round arrived: a training started since has other images)
        self._pending: (
            tuple[int, list[tuple[str, Layer, np.ndarray]], list[tuple[Layer, Table]]] | None
        ) = None
        self._steps: list[Callable[[], None]] = []
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self._next)

    @property
    def busy(self) -> bool:
        return bool(self._steps) or self._pending is not None

    def prepare(
        self, images: list[Layer], roles: list[str], then: Callable[[], None] | None = None
    ) -> None:
        """Make the missing result layers of the training ``images``, one per turn, then call
        ``then``; the first image gets every role, the others those of :data:`PER_IMAGE`."""
        viewer = self._viewer()
        self.images, self._deferred = list(images), {}
        # a corrected image closed since it was added trains on unseen: nothing to warn about
        self._gone = {
            str(image.unique_id)
            for image in images
            if viewer is not None and image not in viewer.layers
        }
        # after the writes still queued (the last round of a training that just ended)
        self._steps += [
            partial(self._ensure, role, image)
            for part, image in enumerate(images)
            for role in roles
            if part == 0 or role in PER_IMAGE
        ]
        if then is not None:
            self._steps.append(then)
        self._kick()

    def show(
        self,
        round_index: int,
        layers: list[tuple[str, int, np.ndarray]],
        tables: dict[int, Table] | None = None,
    ) -> None:
        """Put one round's layer data into the layers (replacing a round not shown yet), with
        the measurements of each training image's cells."""
        images = self.images
        self._pending = (
            round_index,
            [(role, images[part], data) for role, part, data in layers],
            [(images[part], table) for part, table in (tables or {}).items()],
        )
        self._kick()

    def later(self, step: Callable[[], None]) -> None:
        """Run ``step`` in an event-loop turn of its own, after the writes queued: two layers
        added in one turn freeze the viewer for both."""
        self._steps.append(step)
        self._kick()

    def finish(self) -> None:
        """Training ended: hidden layers get the newest data too."""
        self.defer_hidden = False
        if self._pending is None and self._deferred:
            self._steps += [
                partial(self._write, *deferred) for deferred in self._deferred.values()
            ]
            self._deferred = {}
            self._kick()

    def stop(self) -> None:
        self._steps, self._pending, self._deferred = [], None, {}
        self._timer.stop()

    def _kick(self) -> None:
        if not self._timer.isActive():
            self._timer.start(0)

    def _ensure(self, role: str, image: Layer) -> None:
        if not self._in_viewer(image):
            return
        shape = layer_axes(image).label_shape
        existing = find_own_layer(self._viewer(), role, image if role in PER_IMAGE else None)
        if existing is None or tuple(existing.data.shape) != shape:
            kind = RESULT_LAYERS[role][1]
            dtype = {"labels": np.uint16, "classes": np.uint8, "image": np.float16}[kind]
            self._write(role, image, np.zeros(shape, dtype))

    def remember(self, image: Layer, cells: np.ndarray) -> None:
        """Keep the cells about to be written for ``image`` as :attr:`written`: a copy, as
        napari's paint, fill and erase tools change the layer's own array in place. A stack's
        only up to :data:`KEPT_STACK_BYTES`: the copy doubles the memory of its cells.

        The cells layer of ``image`` a person edited is handed over to them by the write that
        follows (:func:`~.layers.upsert_layer`): it takes the cells it was written with along
        in its tag (:data:`~.layers.WRITTEN`), so that its edits can still be added to
        training (:meth:`cells_written`).
        """
        key = str(image.unique_id)
        before = self.written.pop(key, None)
        viewer = self._viewer()
        layer = None if before is None or viewer is None else cells_layer(viewer, image)
        if layer is not None and edited(layer):
            layer.metadata[OWNER_KEY] = {**owner_info(layer), WRITTEN: before}
        if isinstance(cells, np.ndarray) and keeps_copy(cells):
            self.written[key] = _copy(cells)

    def cells_written(self, image: Layer) -> list[tuple[Layer, np.ndarray | None]]:
        """The plugin's cells of ``image`` (:func:`~.layers.cells_layer`), if any, then those a
        person edited that it handed over to them (topmost first), each with the cells last
        written into it (``None``: not known, as of a stack too large to keep them,
        :func:`keeps_copy`)."""
        viewer = self._viewer()
        if viewer is None:
            return []
        key = str(image.unique_id)
        cells = cells_layer(viewer, image)
        found = []
        if cells is not None:
            found.append((cells, owner_info(cells).get(WRITTEN, self.written.get(key))))
        for layer in reversed(viewer.layers):
            info = owner_info(layer) or {}
            if layer is not cells and info.get("source_id") == key and WRITTEN in info:
                found.append((layer, info[WRITTEN]))
        return found

    def _in_viewer(self, image: Layer) -> bool:
        """Whether ``image`` is still in the viewer; the first time it is not, the user is told
        that its results are no longer shown (a result layer is never made for an image the
        person removed, nor in a viewer whose layers were cleared as it closed)."""
        viewer = self._viewer()
        if viewer is not None and image in viewer.layers:
            return True
        key = str(image.unique_id)
        if viewer is not None and key not in self._gone and self.notify is not None:
            self.notify(
                f"'{image.name}' is no longer in the viewer: its training results are not "
                "shown. Training goes on; press Stop to end it.",
                "warning",
            )
        self._gone.add(key)
        return False

    def _write(self, role: str, image: Layer, data: np.ndarray) -> None:
        viewer = self._viewer()
        if not self._in_viewer(image):
            return
        source = image if role in PER_IMAGE else None
        existing = find_own_layer(viewer, role, source)
        if self.defer_hidden and existing is not None and not existing.visible:
            self._deferred[id(existing)] = (role, image, data)
            if id(existing) not in self._watched:
                self._watched.add(id(existing))
                existing.events.visible.connect(partial(self._shown, id(existing)))
            return
        if role == "cells":
            self.remember(image, data)
        active = viewer.layers.selection.active
        upsert_layer(
            viewer, role=role, name=f"{image.name} {role}" if source is not None else role,
            data=data, like=image, source=source, kind=RESULT_LAYERS[role][1],
            visible=role == "cells",
        )  # fmt: skip
        if active is not None and viewer.layers.selection.active is not active:
            # A layer was added (or one the user edited handed over to them): keep the
            # user's layer active, so that drawing or painting is not interrupted.
            viewer.layers.selection.active = active

    def _round_shown(self, round_index: int) -> None:
        self.applied_rounds.append(round_index)
        if self.on_round_shown is not None:
            # after this turn's drawing: a zero timer runs once the paint events are handled
            QTimer.singleShot(0, self.on_round_shown)

    def _measured(self, image: Layer, table: Table) -> None:
        if not self._in_viewer(image):
            return
        layer = find_own_layer(self._viewer(), "cells", image)
        if layer is not None:
            show_table(layer, table)

    def _shown(self, layer_id: int, event: object) -> None:
        deferred = self._deferred.pop(layer_id, None)
        if deferred is not None and getattr(event, "value", True):
            self._steps.append(partial(self._write, *deferred))
            self._kick()

    def _next(self) -> None:
        if self._viewer() is None:
            return
        if self._pending is not None and not self._steps:
            (round_index, layers, tables), self._pending = self._pending, None
            self._steps = [partial(self._write, *layer) for layer in layers]
            self._steps += [partial(self._measured, image, t) for image, t in tables]
            self._steps.append(partial(self._round_shown, round_index))
            if not self.defer_hidden:
                self._deferred = {}
        if self._steps:
            step = self._steps.pop(0)
            try:
                step()
            except Exception as err:  # a layer napari refused: said, and the job goes on
                if self.notify is not None:
                    self.notify(f"A result could not be shown: {err}", "error")
        if self._steps or self._pending is not None:
            self._timer.start(_GAP_MS)


def keeps_copy(cells: np.ndarray) -> bool:
    """Whether a copy of ``cells`` is kept as written (:meth:`LayerWriter.remember`), which
    telling a person's corrections needs: a 2D image's always, a stack's or a time series'
    up to :data:`KEPT_STACK_BYTES`."""
    return cells.ndim == 2 or cells.nbytes <= KEPT_STACK_BYTES


def too_large_to_correct(name: str, cells: np.ndarray) -> str | None:
    """Why corrections of ``cells``, the cells of image ``name``, cannot be added to training
    (no copy of them is kept, :func:`keeps_copy`) and what to do instead; ``None`` when they
    can be."""
    if keeps_copy(cells):
        return None
    return (
        f"The cells of '{name}' ({cells.nbytes / 2**20:.0f} MiB) are too large to tell your "
        f"corrections from the prediction (up to {KEPT_STACK_BYTES // 2**20} MiB are kept): "
        "they cannot be added to training. Draw boxes on the cells of a few of its planes "
        "and train on it instead, or open a few of its planes (or a crop of them) as an "
        "image of their own, e.g. saved from Fiji with Image > Duplicate, and predict and "
        "correct that."
    )


def _copy(cells: np.ndarray) -> np.ndarray:
    """A copy of ``cells`` whose planes without cells are left to the system to supply, as
    a training round's untrained planes are (:meth:`~.workers.Layout.place`): copied, they
    took a 400 MiB stack's memory and a second of the main thread every round."""
    if cells.ndim == 2:
        return cells.copy()
    out = np.zeros(cells.shape, cells.dtype)
    for index in np.ndindex(cells.shape[:-2]):
        if cells[index].any():
            out[index] = cells[index]
    return out
