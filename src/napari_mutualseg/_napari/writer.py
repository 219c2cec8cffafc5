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

from .layers import find_own_layer, upsert_labels
from .workers import RESULT_LAYERS

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: Delay between two layer writes: lets Qt and vispy draw in between.
_GAP_MS = 5


class LayerWriter(QObject):
    """Writes a training's results into the plugin's layers (see the module docs).

    A round that arrives before the previous one is shown replaces it: the layers never queue
    behind the engine.
    """

    def __init__(self, viewer: Callable[[], napari.Viewer | None]) -> None:
        super().__init__()
        self._viewer = viewer
        self.image: Layer | None = None
        self.applied_rounds: list[int] = []
        self.defer_hidden = False
        self._deferred: dict[str, np.ndarray] = {}
        self._watched: set[int] = set()
        self._pending: tuple[int, dict[str, np.ndarray]] | None = None
        self._steps: list[Callable[[], None]] = []
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self._next)

    @property
    def busy(self) -> bool:
        return bool(self._steps) or self._pending is not None

    def prepare(self, image: Layer, roles: list[str], then: Callable[[], None] | None = None):
        """Make the missing result layers of ``image``, one per turn, then call ``then``."""
        self.image, self._deferred = image, {}
        shape = tuple(image.data.shape)
        # after the writes still queued (the last round of a training that just ended)
        self._steps += [partial(self._ensure, role, shape) for role in roles]
        if then is not None:
            self._steps.append(then)
        self._kick()

    def show(self, round_index: int, layers: dict[str, np.ndarray]) -> None:
        """Put one round's layer data into the layers (replacing a round not shown yet)."""
        self._pending = (round_index, layers)
        self._kick()

    def finish(self) -> None:
        """Training ended: hidden layers get the newest data too."""
        self.defer_hidden = False
        if self._pending is None and self._deferred:
            self._steps += [partial(self._write, r, d) for r, d in self._deferred.items()]
            self._deferred = {}
            self._kick()

    def stop(self) -> None:
        self._steps, self._pending, self._deferred = [], None, {}
        self._timer.stop()

    def _kick(self) -> None:
        if not self._timer.isActive():
            self._timer.start(0)

    def _ensure(self, role: str, shape: tuple[int, ...]) -> None:
        existing = find_own_layer(self._viewer(), role, self.image if role == "cells" else None)
        if existing is None or tuple(existing.data.shape) != shape:
            self._write(role, np.zeros(shape, np.uint8 if RESULT_LAYERS[role][1] else np.int32))

    def _write(self, role: str, data: np.ndarray) -> None:
        viewer, image = self._viewer(), self.image
        source = image if role == "cells" else None
        existing = find_own_layer(viewer, role, source)
        if self.defer_hidden and existing is not None and not existing.visible:
            self._deferred[role] = data
            if id(existing) not in self._watched:
                self._watched.add(id(existing))
                existing.events.visible.connect(partial(self._shown, role))
            return
        active = viewer.layers.selection.active
        upsert_labels(
            viewer, role=role, name=f"{image.name} cells" if role == "cells" else role,
            data=data, like=image, source=source, classes=RESULT_LAYERS[role][1],
            visible=role == "cells",
        )  # fmt: skip
        if existing is None and active is not None:
            # Keep the user's layer active, so that drawing or painting is not interrupted.
            viewer.layers.selection.active = active

    def _shown(self, role: str, event: object) -> None:
        data = self._deferred.pop(role, None)
        if data is not None and getattr(event, "value", True):
            self._steps.append(partial(self._write, role, data))
            self._kick()

    def _next(self) -> None:
        if self._viewer() is None:
            return
        if self._pending is not None and not self._steps:
            (round_index, layers), self._pending = self._pending, None
            self._steps = [partial(self._write, role, data) for role, data in layers.items()]
            self._steps.append(partial(self.applied_rounds.append, round_index))
            if not self.defer_hidden:
                self._deferred = {}
        if self._steps:
            self._steps.pop(0)()
        if self._steps or self._pending is not None:
            self._timer.start(_GAP_MS)
