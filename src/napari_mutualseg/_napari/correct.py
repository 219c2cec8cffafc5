"""Check and correct: where the networks disagree, fixing cells, and learning from the fixes.

After a prediction (or a training round) the two networks' disagreement says which cells a
person should look at first. :class:`Corrector` steps the camera through them, adds the two
edits napari's label tools lack (merge two cells, split one), proposes boxes from predicted
cells, and turns a corrected image into training data: the cells the person changed are
trusted whole masks, new boxes are ordinary boxes, and the rest of the image is trusted or
ignored as the person says; on a z-stack or time series plane by plane, the planes left as
predicted left out. :class:`CheckPanel` is its face in the dock widget.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QPushButton
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed
from superqt.utils import create_worker

from ..boxes import Box, boxes_from_labels, inside_box
from ..disagreement import Spot, spots_to_check
from ..supervision import (
    BACKGROUND,
    Supervision,
    boxes_mask,
    corrected_cells,
    supervision_from_masks,
)
from .axes import layer_axes
from .cells import refresh_cells
from .controller import RunController
from .layers import (
    OWNER_KEY,
    WRITTEN,
    camera,
    cells_layer,
    center_on,
    free_name,
    owner_info,
    transform_kwargs,
)
from .panels import LayerPicker, _row
from .prepare import (
    SupervisionRecord,
    TrainingItem,
    UserInputError,
    boxes_per_plane,
    check_image_layer,
)
from .runs import RunState
from .workers import WorkerFailure
from .writer import too_large_to_correct

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

    from ..training import RoundReport
    from .axes import LayerAxes

#: Canvas pixels the cell under check spans (the camera zooms to it).
_CELL_ON_SCREEN = 150
_NEXT = "Next cell to check"
_PROPOSE = "Propose boxes"
_NEEDS_CELLS = " (predict the image picked here, or train on it, first)"


class Corrector:
    """Check, correct and learn from the cells of one image at a time (``widget.correct``).

    Parameters
    ----------
    viewer : napari.Viewer
    controller : RunController
        The viewer's jobs and results.
    """

    def __init__(self, viewer: napari.Viewer, controller: RunController) -> None:
        self.viewer = viewer
        self.controller = controller
        self._visits: dict[str, int] = {}
        # a training image's spots, by image, with the round they were found in: finding them
        # takes the main thread seconds at 2048², which each press of Next cell paid again
        self._round_spots: dict[str, tuple[weakref.ref, list[tuple[int | None, Spot]]]] = {}

    # ------------------------------------------------------------------------------ finding

    def cells_layer(self, image: Image) -> Labels | None:
        """The cells of ``image`` that Next cell, Merge, Split and Propose boxes act on: of
        its cells layers (:meth:`cells_written`), the one active in the viewer, else the
        first."""
        found = self.cells_written(image)
        return found[0][0] if found else None

    def cells_written(self, image: Image) -> list[tuple[Labels, np.ndarray | None]]:
        """The cells layers of ``image`` a person may correct, each with the cells the plugin
        last wrote into it (:meth:`~.writer.LayerWriter.cells_written`: its newest cells,
        then those a person edited that it handed over to them as "(edited)"), the one
        active in the viewer first: the one the person works on."""
        found = self.controller.writer.cells_written(image)
        active = self.viewer.layers.selection.active
        active = getattr(active, "__wrapped__", active)  # napari hands plugins a proxy
        return sorted(found, key=lambda pair: pair[0] is not active)  # stable

    def spots(self, image: Image) -> list[tuple[int | None, Spot]]:
        """Cells and regions of ``image`` to check, most disputed first, with their plane."""
        found = self.known_spots(image)
        if found is None:
            report = self.controller.last_report
            found = find_spots(self.controller.round_maps(image))
            self.keep_spots(image, report, found)
        return found

    def known_spots(self, image: Image) -> list[tuple[int | None, Spot]] | None:
        """The spots of ``image`` when they are known without a search (a prediction's, or
        those found already in the newest round), else ``None``."""
        prediction = self.controller.predictions.get(str(image.unique_id))
        if prediction is not None:
            return prediction.spots
        report = self.controller.last_report
        cached = self._round_spots.get(str(image.unique_id))
        if report is not None and cached is not None and cached[0]() is report:
            return cached[1]
        return None

    def keep_spots(
        self, image: Image, report: RoundReport | None, found: list[tuple[int | None, Spot]]
    ) -> None:
        """Keep the spots of ``image`` found in the round of ``report`` (:func:`find_spots`)."""
        if report is not None:
            self._round_spots[str(image.unique_id)] = (weakref.ref(report), found)

    def next_cell(self, image: Image) -> Spot | None:
        """Show the next cell (or region) to check: camera on it, its label selected."""
        check_image_layer(image, purpose="correct")
        spots = self.spots(image)
        if not spots:
            controller = self.controller
            segmented = str(image.unique_id) in controller.predictions or controller.round_maps(
                image
            )
            self.controller.notify(
                f"Nothing to check on '{image.name}': it has no cells, and no region where "
                "the two networks disagree. Draw boxes on the cells they missed and pick them "
                "under Boxes, or train further."
                if segmented
                else f"Nothing to check on '{image.name}' yet: predict it (or train on it) first.",
                "warning",
            )
            return None
        key = str(image.unique_id)
        cells = self.cells_layer(image)
        first = self._visits.get(key, -1) + 1
        # a cell merged away or erased since is checked: its label selected would be no cell
        ks = (k % len(spots) for k in range(first, first + len(spots)))
        k = next((k for k in ks if _still_there(cells, *spots[k])), None)
        if k is None:
            self.controller.notify(
                f"Every cell to check on '{image.name}' was changed since they were found: "
                "press Add to training (or train further), and the next round says where the "
                "networks disagree now.",
                "warning",
            )
            return None
        self._visits[key] = k
        plane, spot = spots[k]
        self._show(image, plane, spot)
        what = f"Cell {spot.label}" if spot.kind == "cell" else "A region outside every cell"
        # named as napari's sliders number it: "time point 1, z-plane 4"
        where = "" if plane is None else layer_axes(image).where(plane)
        where = f" on {where}" if where else ""
        self.controller.notify(
            f"{what}{where} ({k + 1} of {len(spots)} to check): the networks disagree "
            f"{spot.score:.2f} there (0 agree, 1 opposite)."
        )
        return spot

    def _show(self, image: Image, plane: int | None, spot: Spot) -> None:
        axes = layer_axes(image)
        world = np.asarray(image.data_to_world(axes.data_point(plane, spot.centroid)), float)
        first = self.viewer.dims.ndim - image.ndim
        for k, letter in enumerate(axes.axes[:-2]):
            if letter != "C":  # the channel shown stays
                self.viewer.dims.set_point(first + k, world[k])
        center_on(self.viewer, world)
        y0, x0, y1, x1 = spot.bbox
        size = max(y1 - y0, x1 - x0, 8) * float(max(np.abs(image.scale[-2:])))
        camera(self.viewer).zoom = _CELL_ON_SCREEN / size
        cells = self.cells_layer(image)
        if cells is not None and spot.label:
            cells.selected_label = spot.label

    # ------------------------------------------------------------------------------ editing

    def merge(self, image: Image, keep: int, into: int) -> None:
        """Make cell ``into`` part of cell ``keep`` in the cells of ``image``; of a stack, on
        the plane the sliders show (:meth:`edited_part`)."""
        cells = self._editable(image, edit=True)
        part = self.edited_part(cells)
        data = np.asarray(cells.data)[part]
        on = " on the plane shown" if part else ""
        if keep == into or not (data == keep).any() or not (data == into).any():
            raise UserInputError(f"Pick two different cells of '{cells.name}'{on} to merge.")
        if not _touch(data == keep, data == into):
            # one cell of two pieces is no cell: a mis-pick (the last two labels selected,
            # Next cell's among them) more often than a wish
            raise UserInputError(
                f"Cells {keep} and {into} of '{cells.name}' do not touch{on}: merged, they "
                "would make one cell of two pieces. Pick two cells side by side (the last two "
                "picked are merged); to join cells across a gap, paint the gap with the label "
                "of one of them first."
            )
        # written as a paint stroke is, so that napari's undo (Ctrl+Z) takes it back
        cells.data_setitem(_in_part(part, np.nonzero(data == into)), keep)
        refresh_cells(cells, image, [keep, into])  # the table and its exports follow
        cells.selected_label = keep

    def split(self, image: Image, label: int) -> int:
        """Split cell ``label`` in two (where it narrows); the new cell's label. Of a stack,
        the cell on the plane the sliders show (:meth:`edited_part`)."""
        cells = self._editable(image, edit=True)
        part = self.edited_part(cells)
        data = np.asarray(cells.data)
        mask = data[part] == label
        if label == 0 or mask.sum() < 4:
            on = " on the plane shown" if part else ""
            raise UserInputError(
                f"Pick a cell of '{cells.name}'{on} to split (label {label}); a cell of "
                "fewer than 4 pixels is not split."
            )
        new = _new_label(data, cells.name)
        # the cell's box and a margin wider than peak_local_max's border: the same halves as
        # on the whole image, whose distance transform took the main thread 0.4 s at 2048²
        (box,) = ndi.find_objects(mask.astype(np.uint8))
        box = tuple(
            slice(max(b.start - 3, 0), min(b.stop + 3, n))
            for b, n in zip(box, mask.shape, strict=True)
        )
        mask = mask[box]
        distance = ndi.distance_transform_edt(mask)
        peaks = peak_local_max(distance, min_distance=2, num_peaks=2, labels=mask.astype(int))
        if len(peaks) == 2:
            markers = np.zeros(mask.shape, np.int32)
            markers[tuple(peaks.T)] = (1, 2)
            halves = watershed(-distance, markers, mask=mask)
        else:  # a convex cell: cut across its long axis, through its centre
            coords = np.argwhere(mask).astype(float)
            centred = coords - coords.mean(0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            halves = np.zeros(mask.shape, np.int32)
            halves[tuple(np.argwhere(mask).T)] = np.where(centred @ axis < 0, 1, 2)
        second = tuple(i + b.start for i, b in zip(np.nonzero(halves == 2), box, strict=True))
        cells.data_setitem(_in_part(part, second), new)  # undone with napari's undo too
        refresh_cells(cells, image, [label, new])  # the table and its exports follow
        return new

    def edited_part(self, cells: Labels) -> tuple[int, ...]:
        """The indices of the leading axes of ``cells`` that Merge and Split keep: the plane
        the sliders show, as napari's brush and fill edit it (the layer's last
        ``n_edit_dimensions`` axes; with 3, a z-stack's whole cells); () edits it all.

        A stack's cells are linked through z: edited whole, a split cut a cell between its
        planes, and the cell on the plane shown did not change.
        """
        lead = cells.ndim - min(max(cells.n_edit_dimensions, 2), cells.ndim)
        point = cells.world_to_data(self.viewer.dims.point)
        shape = cells.data.shape
        return tuple(int(np.clip(np.round(point[k]), 0, shape[k] - 1)) for k in range(lead))

    def propose_boxes(self, image: Image) -> Shapes:
        """A new Shapes layer with a box around every cell of ``image`` to fix by hand."""
        return self.add_proposed(image, boxes_layer(*self.proposal(image)))

    def proposal(self, image: Image) -> tuple[np.ndarray, dict[str, Any]]:
        """What :func:`boxes_layer` makes the proposed boxes of ``image`` from: a copy of its
        cells (the person may paint while the boxes are found) and the layer's settings."""
        cells = self._editable(image)
        data = np.array(cells.data)
        kwargs = {
            "edge_color": "yellow", "face_color": "transparent", "ndim": data.ndim,
            **transform_kwargs(image, data.ndim),
        }  # fmt: skip
        return data, kwargs

    def add_proposed(self, image: Image, layer: Shapes) -> Shapes:
        """Show the proposed boxes of ``image`` (:func:`boxes_layer`) as "<image> boxes"."""
        layer.name = free_name(self.viewer, f"{image.name} boxes")
        self.viewer.add_layer(layer)
        n = len(layer.data)
        self.controller.notify(
            f"{n} box{'es' * (n != 1)} proposed on '{layer.name}': delete the wrong ones, draw "
            "the missing ones, then train on this image with them."
            if n
            else f"No cell is predicted on '{image.name}', so no box is proposed: draw a box "
            f"around each of its cells on '{layer.name}', then train on this image with them."
        )
        return layer

    def _editable(self, image: Image | None, *, edit: bool = False) -> Labels:
        check_image_layer(image, purpose="correct")
        cells = self.cells_layer(image)
        if cells is None:
            raise UserInputError(f"'{image.name}' has no cells yet: predict it first (Predict).")
        run = self.controller.training
        trained = run is not None and self.controller.state.trains and image in run.images
        if edit and trained and owner_info(cells).get("role") == "cells":
            # the training writes this layer again every round: the edit would be lost
            raise UserInputError(
                f"'{image.name}' is being trained on: its cells are written again every "
                "round. Press Stop (or wait for the training to end), then edit them."
            )
        return cells

    # ------------------------------------------------------------------------------ learning

    def training_item(
        self, image: Image, *, rest_trusted: bool = False, boxes: Shapes | None = None
    ) -> TrainingItem:
        """The corrected ``image`` as training data (see the module docs)."""
        cells, written = self.corrected_layer(image)
        if image == self.controller.trained_image:
            raise UserInputError(
                f"'{image.name}' is trained from its boxes: correct its supervision layer "
                "instead (paint on it), then Train."
            )
        corrected = np.asarray(cells.data)
        axes = layer_axes(image)
        if axes.label_shape != corrected.shape:
            raise UserInputError(
                f"'{image.name}' changed since its cells were found (cells "
                f"{' x '.join(map(str, corrected.shape))}, image now "
                f"{' x '.join(map(str, axes.label_shape))}): "
                f"predict '{image.name}' again, correct its cells, then press Add to training."
            )
        too_large = None if written is not None else too_large_to_correct(image.name, corrected)
        if too_large:
            raise UserInputError(too_large)
        if written is None or written.shape != corrected.shape:
            raise UserInputError(
                f"Add an image that was segmented in this session: predict '{image.name}', "
                "correct its cells, then press Add to training."
            )
        drawn = {} if boxes is None else _drawn_boxes(boxes, image, axes)
        plane_shape = corrected.shape[-2:]
        now = corrected.reshape(-1, *plane_shape)
        was = written.reshape(now.shape)
        rest = "trusted" if rest_trusted else "ignore"
        # "the rest is right" speaks of a 2D image whole, of a stack's corrected planes only
        whole = rest_trusted and not axes.stacked
        earlier = self.controller.corrected.get(str(image.unique_id))
        before = {}
        if earlier is not None and earlier.record.shape == corrected.shape:
            added = earlier.record.planes or [0]
            before = dict(zip(added, earlier.record.supervisions, strict=True))
        sups: dict[int, Supervision] = {}
        for p, plane in enumerate(now):
            new_boxes = drawn.get(p, [])
            if not (new_boxes or whole) and np.array_equal(was[p], plane):
                continue  # a plane of a stack left as it was is left out
            changed, removed = corrected_cells(was[p], plane)
            if not (len(changed) or removed.any() or new_boxes or whole):
                continue  # its cells renumbered, none changed
            sup = supervision_from_masks(
                plane, cells=changed, background=removed, boxes=new_boxes, rest=rest
            )
            if p in before:
                # the plane was added before: its earlier corrections are not in the cells
                # corrected now (a new prediction, which need not show them), so they are
                # kept wherever the new corrections do not speak
                said = sup.trusted | boxes_mask(plane_shape, new_boxes)
                old_boxes = [b for b in before[p].boxes if not _meets(b, said)]
                if old_boxes:
                    sup = supervision_from_masks(
                        plane, cells=changed, background=removed,
                        boxes=[*new_boxes, *old_boxes], rest=rest,
                    )  # fmt: skip
                sup = _with_earlier(sup, before[p])
            sups[p] = sup
        if not sups:
            raise UserInputError(
                f"Nothing on '{image.name}' was corrected: fix some cells (paint, erase, "
                "merge, split), draw boxes around missed cells, or tick that the rest is right."
                if not axes.stacked
                else f"Nothing on the planes of '{image.name}' was corrected: fix some cells "
                "on a plane (paint, erase, merge, split) or draw boxes around missed cells; "
                "'the rest is right' speaks of the planes you corrected."
            )
        if axes.stacked:  # the planes added before and not corrected now stay as they were
            sups = {**{p: sup for p, sup in before.items() if p not in sups}, **sups}
        planes = sorted(sups) if axes.stacked else None
        record = SupervisionRecord(
            tuple(corrected.shape), planes, [sups[p] for p in sorted(sups)], axes=axes
        )
        return TrainingItem(image, record, [sup.classes for sup in record.supervisions])

    def corrected_layer(self, image: Image) -> tuple[Labels, np.ndarray | None]:
        """The cells layer of ``image`` whose corrections Add to training takes, with the
        cells the plugin last wrote into it (``None``: not known).

        Of its cells layers (:meth:`cells_written`), the one active in the viewer when it
        changed since it was written; else its newest cells when they did; else the topmost
        layer of its cells the person edited and the plugin handed over to them as
        "(edited)" when it wrote the image's cells again (a new prediction, a round),
        whether or not the newest cells are still there; else the layer Merge and Split act
        on (:meth:`cells_layer`), which boxes or "the rest is right" may still say something
        of.
        """
        check_image_layer(image, purpose="correct")
        found = self.cells_written(image)
        edited = (
            (layer, written)
            for layer, written in found
            if written is not None
            and written.shape == layer.data.shape
            and not np.array_equal(written, np.asarray(layer.data))
        )
        taken = next(edited, None)
        if taken is None:
            taken = self._editable(image), found[0][1]  # raises while there are no cells
        return taken

    def keep_corrections(self, image: Image) -> Labels:
        """Hand the corrected cells layer (:meth:`corrected_layer`) over to the user as
        "<image> corrections", so that training writes its new cells beside it, never over
        the person's work."""
        cells, _ = self.corrected_layer(image)
        newest, name = cells_layer(self.viewer, image), cells.name
        # in training now: no longer compared with what was written into it
        info = {k: v for k, v in owner_info(cells).items() if k != WRITTEN}
        cells.metadata[OWNER_KEY] = {**info, "role": "corrections"}
        cells.name = free_name(self.viewer, f"{image.name} corrections")
        if cells is not newest:
            self.controller.notify(
                f"The corrections in '{name}' were added to training (the newest cells of "
                f"'{image.name}' have none); they are kept as '{cells.name}'.",
                "info",
            )
        return cells


def find_spots(
    maps: list[tuple[int | None, np.ndarray, np.ndarray]],
) -> list[tuple[int | None, Spot]]:
    """The spots of a round's ``(plane, cells, disagreement)`` maps, most disputed first
    (in a worker thread: at 2048² the search takes the better part of a second)."""
    found = [(plane, spot) for plane, labels, dis in maps for spot in spots_to_check(labels, dis)]
    found.sort(key=lambda ps: -ps[1].score)
    return found


def boxes_layer(data: np.ndarray, kwargs: dict[str, Any]) -> Shapes:
    """A Shapes layer (not yet in a viewer) with a box around every cell of ``data``.

    Made in a worker thread by the panel: napari builds each rectangle's outline one at a
    time, which took the main thread 3-4 s for 4,500 cells at 2048².
    """
    from napari.layers import Shapes

    if data.ndim == 2:
        rects = [b.corners for b in boxes_from_labels(data)]
    else:
        rects = [
            np.column_stack([np.tile(np.asarray(p, float), (4, 1)), b.corners])
            for p in np.ndindex(data.shape[:-2])
            for b in boxes_from_labels(data[p])
        ]
    return Shapes(rects, shape_type="rectangle", **kwargs)


def _made(make: Callable[..., Any], *args: Any) -> Any:
    """``make(*args)`` in a worker; an error is handed back as a :class:`WorkerFailure`
    (superqt raises an exception a worker returns, and nothing listens to its errors)."""
    try:
        return make(*args)
    except Exception as err:
        return WorkerFailure(err)


def _new_label(data: np.ndarray, name: str) -> int:
    """A label no cell of ``data`` has: the next after the largest, as napari's new label is,
    else (at the end of the layer's type: 65535 for the uint16 cells layers) the smallest free
    one. Not a wider type: napari recasts wider labels for display at every later stroke
    (a fifth of a second each at 2048²), which the uint16 layers are there to spare."""
    top = int(data.max(initial=0))
    end = np.iinfo(data.dtype).max
    if top < end:
        return top + 1
    flat = data.ravel()
    # of the labels 1 to size + 1 one at least is free: the pixels cannot hold them all
    n = min(flat.size + 1, end)
    seen = np.bincount(flat[(flat > 0) & (flat <= n)].astype(np.intp), minlength=n + 1)
    free = np.flatnonzero(seen[1:] == 0)
    if not free.size:
        raise UserInputError(
            f"Every label a {data.dtype} layer can hold is taken in '{name}', none is left for "
            f"a new cell: right-click '{name}' in the layer list, Convert data type > Convert "
            "to int32, then split again."
        )
    return int(free[0]) + 1


def _still_there(cells: Labels | None, plane: int | None, spot: Spot) -> bool:
    """Whether the cell of ``spot`` still has pixels in ``cells`` where it was found (a
    region always: it is no cell). Looked at in its box alone."""
    if spot.kind != "cell" or cells is None:
        return True
    data = np.asarray(cells.data)
    lead = np.unravel_index(plane or 0, data.shape[:-2]) if data.ndim > 2 else ()
    y0, x0, y1, x1 = spot.bbox
    return bool((data[(*lead, slice(y0, y1), slice(x0, x1))] == spot.label).any())


def _in_part(part: tuple[int, ...], where: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Indices ``where`` of the plane ``part`` (:meth:`Corrector.edited_part`) as indices of
    the whole layer."""
    n = len(where[0])
    return tuple(np.full(n, i, np.intp) for i in part) + tuple(where)


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether masks ``a`` and ``b`` touch (diagonals too). Looked at in the box of both."""
    (box,) = ndi.find_objects((a | b).astype(np.uint8))
    grown = ndi.binary_dilation(a[box], structure=np.ones((3,) * a.ndim, bool))
    return bool((grown & b[box]).any())


def _drawn_boxes(boxes: Shapes, image: Image, axes: LayerAxes) -> dict[int, list[Box]]:
    """The boxes of ``boxes`` by the plane of ``image`` they were drawn on (0 for a 2D
    image), read as boxes for training are."""
    kinds = list(boxes.shape_type)
    groups = boxes_per_plane(boxes, image, axes, list(range(len(kinds))), kinds)
    return {p or 0: found for p, found in groups.items()}


def _meets(box: Box, said: np.ndarray) -> bool:
    """Whether ``box`` (drawn on an earlier correction) covers a pixel of ``said`` (what the
    new correction says: its trusted pixels and its boxes). Such a box is replaced by the new
    corrections. Looked at in the box alone: a mask of the whole image per box took a
    millisecond each at 2048²."""
    slices, u, v = box.local_coords(said.shape)
    return bool((said[slices] & inside_box(u, v)).any())


def _with_earlier(sup: Supervision, before: Supervision) -> Supervision:
    """``sup`` with the trusted pixels of an earlier correction of the same image where it
    says nothing (neither trusted nor boxed).

    A later correction wins where the two meet: an earlier trusted cell that touches the new
    trusted pixels is dropped whole (half a cell would teach a cell without its edge), its
    background ring and other earlier background stay where the new says nothing.
    """
    if before.trusted is None or not before.trusted.any():
        return sup
    now = sup.trusted if sup.trusted is not None else np.zeros(sup.classes.shape, bool)
    free = ~now & (sup.instances == 0) & ~boxes_mask(sup.classes.shape, sup.boxes)
    cells, n = ndi.label(before.trusted & (before.classes != BACKGROUND))
    if n:
        met = np.unique(cells[now & (cells > 0)])
        free &= ~np.isin(cells, met[met > 0])
    keep = before.trusted & free
    sup.classes[keep] = before.classes[keep]
    sup.trusted = now | keep
    if sup.region is not None:
        sup.region = sup.region | keep
    return sup


class CheckPanel(QGroupBox):
    """Check the cells where the networks disagree, correct them, add the image to training.

    Merge takes the last two cells picked (with napari's colour picker or by selecting their
    label) in the image's cells layer that Merge, Split, Next cell and Propose boxes act on:
    of its newest cells and those kept as "(edited)", the one active in the layer list
    (:meth:`Corrector.cells_layer`).
    """

    train_requested = Signal()
    boxes_proposed = Signal(object, object)  # image, the new Shapes layer

    def __init__(self, viewer: napari.Viewer, corrector: Corrector) -> None:
        super().__init__("Check and correct")
        self.corrector = corrector
        form = QFormLayout(self)
        self.image = LayerPicker(viewer, "Image", "The image whose cells to check and correct")
        self.boxes = LayerPicker(
            viewer, "Shapes", "Boxes drawn around cells the prediction missed", nullable=True
        )
        self.next = QPushButton(_NEXT)
        self.next.setToolTip(
            f"Go to the cell (or region) where the two networks disagree most{_NEEDS_CELLS}"
        )
        self.merge = QPushButton("Merge cells")
        self.merge.setToolTip(f"Merge the last two cells picked in the cells layer{_NEEDS_CELLS}")
        self.split = QPushButton("Split cell")
        self.split.setToolTip(f"Split the picked cell in two, where it narrows{_NEEDS_CELLS}")
        self.propose = QPushButton(_PROPOSE)
        self.propose.setToolTip(
            f"A box around every predicted cell, to fix instead of drawing{_NEEDS_CELLS}"
        )
        self.rest = QCheckBox("The rest of this image is right")
        self.rest.setToolTip(
            "Checked: every cell you did not change, and the background, are trusted too\n"
            "(of a z-stack or time series, on the planes you corrected).\n"
            "Unchecked: only what you changed (and your boxes) is learned from."
        )
        self.add = QPushButton("Add to training")
        self.add.setToolTip(
            "Learn from this image's corrections: training resumes over all images (predict "
            "the image and correct its cells first; not while a job runs)"
        )
        form.addRow("Image", self.image.native)
        form.addRow(_row(self.next, self.propose))
        form.addRow(_row(self.merge, self.split))
        form.addRow("Boxes", self.boxes.native)
        form.addRow(self.rest)
        form.addRow(self.add)
        self.picked: deque[tuple[int, int]] = deque(maxlen=2)  # (layer id, label)
        # cells layers whose picked label is followed: layer id -> (emitter, callback)
        self._followed: dict[int, tuple[Any, Any]] = {}
        self._viewer = viewer
        # what a worker searches for: (image, round) of Next cell, the image of Propose boxes
        self._searching: tuple[Image, RoundReport | None] | None = None
        self._proposing: Image | None = None
        self._busy = False  # a job runs: nothing is added to training
        viewer.layers.selection.events.active.connect(self._follow)
        # a cells layer active as the panel opens (opened again, or after the menu command)
        # is picked in without a change of the active layer; napari hands plugins a proxy of
        # it, which the picks (by the layer's id) would not know
        active = viewer.layers.selection.active
        self._follow_layer(getattr(active, "__wrapped__", active))
        # the buttons need the picked image's cells, which a prediction or a round adds
        self._watched = [(viewer.layers.events.inserted, self._show_state)]
        self._watched.append((viewer.layers.events.removed, self._show_state))
        for emitter, slot in self._watched:
            emitter.connect(slot)
        self.image.changed.connect(self._show_state)
        # bound methods: a lambda held by Qt's connection would keep a closed panel alive
        for button in (self.next, self.merge, self.split, self.propose, self.add):
            button.clicked.connect(self._clicked)
        self._show_state()

    def _clicked(self) -> None:
        if self.sender() is self.next:
            self._next()
            return
        action = {
            self.merge: self._merge,
            self.split: self._split,
            self.propose: self._propose,
            self.add: self._add,
        }.get(self.sender())
        if action is not None:
            self._do(action)

    def unwatch(self) -> None:
        """Stop following the viewer (the panel is closed)."""
        self._viewer.layers.selection.events.active.disconnect(self._follow)
        for emitter, slot in self._watched:
            emitter.disconnect(slot)
        self._watched = []
        for emitter, callback in self._followed.values():
            emitter.disconnect(callback)
        self._followed = {}
        for picker in (self.image, self.boxes):
            picker.unwatch()

    def set_busy(self, busy: bool) -> None:
        """While a job runs, nothing is added to training (it starts one)."""
        self._busy = busy
        self._show_state()

    def _show_state(self, *_: Any) -> None:
        """Enable what can be done: every button needs the picked image's cells (the plugin's
        prediction or training result, or those a person edited that it kept as "(edited)");
        what else it needs is said when it is pressed."""
        image = self.image.layer
        cells = image is not None and self.corrector.cells_layer(image) is not None
        self.next.setEnabled(cells and self._searching is None)
        self.propose.setEnabled(cells and self._proposing is None)
        self.merge.setEnabled(cells)
        self.split.setEnabled(cells)
        self.add.setEnabled(cells and not self._busy)

    def _do(self, action: Any) -> None:
        image = self.image.layer
        try:
            action(image)
        except (UserInputError, ValueError) as err:
            self.corrector.controller.notify(str(err), "error")

    def _follow(self, event: Any) -> None:
        self._follow_layer(event.value)

    def _follow_layer(self, layer: Any) -> None:
        info = owner_info(layer) if layer is not None else None
        # the plugin's cells, and those a person edited that it handed over to them
        cells = info and (info.get("role") in ("cells", "prediction") or WRITTEN in info)
        if cells and id(layer) not in self._followed:
            callback = partial(self._picked, id(layer))
            layer.events.selected_label.connect(callback)
            self._followed[id(layer)] = (layer.events.selected_label, callback)

    def _picked(self, layer_id: int, event: Any) -> None:
        label = int(event.source.selected_label)
        if label and (not self.picked or self.picked[-1] != (layer_id, label)):
            self.picked.append((layer_id, label))
        if len(self.picked) == 2 and self.picked[0][0] == self.picked[1][0]:
            self.merge.setText(f"Merge cells {self.picked[0][1]} + {self.picked[1][1]}")

    def _next(self) -> None:
        """Next cell to check; the cells of a training round are searched in a worker first
        (the better part of a second at 2048², which froze the viewer), the button saying so."""
        image, corrector = self.image.layer, self.corrector
        controller = corrector.controller
        report = controller.last_report
        if image is None or report is None or corrector.known_spots(image) is not None:
            self._do(corrector.next_cell)  # nothing to search (or said why)
            return
        maps = controller.round_maps(image)
        self.next.setEnabled(False)
        self.next.setText("Finding cells…")  # no wider than its text: the dock keeps its width
        self._searching = (image, report)
        worker = create_worker(_made, find_spots, maps, _ignore_errors=True)
        worker.returned.connect(self._spots_found)  # a bound method: gone with the panel
        worker.start()

    def _spots_found(self, found: Any) -> None:
        image, report = self._searching
        self._searching = None
        self._show_state()
        self.next.setText(_NEXT)
        if isinstance(found, WorkerFailure):
            self.corrector.controller.notify(
                f"Could not find the cells to check: {found.original}. Press Next cell to "
                "check again.",
                "error",
            )
            return
        self.corrector.keep_spots(image, report, found)
        if self.image.layer is image:  # still the image picked: shown now (or a newer
            self._next()  # round's cells searched)

    def _merge(self, image: Image) -> None:
        check_image_layer(image, purpose="correct")
        cells = self.corrector.cells_layer(image)
        ids = [
            label for layer_id, label in self.picked if cells is not None and layer_id == id(cells)
        ]
        if len(ids) != 2:
            where = "the cells layer" if cells is None else f"'{cells.name}'"
            raise UserInputError(
                f"Pick the two cells to merge in {where} first (napari's colour picker, or type "
                "their labels one after the other). To merge in another cells layer of "
                f"'{image.name}', select it in the layer list."
            )
        self.corrector.merge(image, *ids)
        self.picked.clear()
        self.merge.setText("Merge cells")

    def _split(self, image: Image) -> None:
        cells = self.corrector.cells_layer(image)
        self.corrector.split(image, int(cells.selected_label) if cells is not None else 0)

    def _propose(self, image: Image) -> None:
        data, kwargs = self.corrector.proposal(image)
        self.propose.setEnabled(False)
        self.propose.setText("Proposing…")
        self._proposing = image
        worker = create_worker(_made, boxes_layer, data, kwargs, _ignore_errors=True)
        worker.returned.connect(self._proposed)
        worker.start()

    def _proposed(self, layer: Any) -> None:
        image = self._proposing
        self._proposing = None
        self._show_state()
        self.propose.setText(_PROPOSE)
        notify = self.corrector.controller.notify
        if isinstance(layer, WorkerFailure):
            notify(
                f"Could not propose boxes: {layer.original}. Press Propose boxes again.", "error"
            )
        elif image not in self._viewer.layers:
            notify(f"'{image.name}' was closed: its proposed boxes are not shown.", "warning")
        else:
            self.boxes_proposed.emit(image, self.corrector.add_proposed(image, layer))

    def _add(self, image: Image) -> None:
        controller = self.corrector.controller
        if not controller.idle():
            return
        item = self.corrector.training_item(
            image, rest_trusted=self.rest.isChecked(), boxes=self.boxes.layer
        )
        key = str(image.unique_id)
        earlier = controller.corrected.get(key)
        controller.add_training(item)
        self.train_requested.emit()
        if controller.state is RunState.IDLE:
            # training did not start (the reason was said): the image is not added, and its
            # cells layer stays the one to correct and to add again
            if earlier is None:
                controller.corrected.pop(key, None)
            else:
                controller.add_training(earlier)
            controller.notify(
                f"The corrections of '{image.name}' were not added: training could not start. "
                "Fix what was said, then press Add to training again.",
                "error",
            )
            return
        # the new results of the image are written one event-loop turn later, beside it
        self.corrector.keep_corrections(image)
