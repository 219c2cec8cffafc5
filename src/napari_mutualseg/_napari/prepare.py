"""From an image layer and its boxes (and region) layers to the core's supervision.

The result, a :class:`SupervisionRecord`, says what the supervision layer was made from. It is
kept in that layer's metadata, so that the layer carries its own meaning: training can tell the
pixels the user painted from the generated ones whoever made the layer (the dock widget or the
menu command), whatever the image is called now, and after the panel was closed and reopened.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..boxes import BOX_TYPES, boxes_from_shapes, shapes_by_plane, usable_boxes
from ..images import AxisImage
from ..supervision import CELL, IGNORE, Supervision, check_class_map, make_supervision
from ..thread_warnings import thread_warnings
from .axes import LayerAxes, layer_axes
from .layers import (
    OWNER_KEY,
    claim,
    class_layer_kwargs,
    find_own_layer,
    free_name,
    owner_info,
    owner_tag,
    shapes_to_image_coords,
    transform_kwargs,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer, Shapes


class UserInputError(ValueError):
    """Something the user picked or drew cannot be used; the message says what to do."""


@dataclass
class SupervisionRecord:
    """What a supervision layer was generated from.

    Attributes
    ----------
    shape : tuple of int
        Shape of the supervision: the image layer's data without its channels.
    planes : list of int or None
        Planes (counted over time and z) that carry boxes, in order, or ``None`` for an
        image of one plane.
    supervisions : list of Supervision
        One per trained plane.
    boxes_key : bytes
        Fingerprint of the boxes (and region) layers used, to notice later edits.
    notes : list of str
        Things the user should know (ignored shapes, boxes outside the image, assumed axes).
    axes : LayerAxes, optional
        What each axis of the image layer is (``None``: a 2D image of one channel).
    """

    shape: tuple[int, ...]
    planes: list[int] | None
    supervisions: list[Supervision]
    boxes_key: bytes = b""
    notes: list[str] = field(default_factory=list)
    axes: LayerAxes | None = None

    @property
    def n_boxes(self) -> int:
        """Boxes used, over all planes."""
        return sum(len(s.boxes) for s in self.supervisions)

    def classes(self) -> np.ndarray:
        """The generated class map laid out like the image (planes without boxes: ignore)."""
        if self.planes is None:
            return self.supervisions[0].classes.copy()
        out = np.full(self.shape, IGNORE, np.uint8)
        flat = out.reshape((-1, *self.shape[-2:]))
        for p, sup in zip(self.planes, self.supervisions, strict=True):
            flat[p] = sup.classes
        return out

    def images(self, data: Any) -> list[AxisImage]:
        """The trained planes of the image layer's data, with their channels."""
        axes = self.axes or LayerAxes("YX", tuple(data.shape))
        return [axes.plane(data, p) for p in self.planes or [0]]

    def labels(self, layer: Labels) -> list[np.ndarray]:
        """The supervision as the user left it, one class map per trained plane.

        Raises
        ------
        UserInputError
            When the layer was reshaped or holds values that are not classes.
        """
        data = np.asarray(layer.data)
        try:
            data = check_class_map(data, self.shape, f"'{layer.name}'")
        except ValueError as err:
            raise UserInputError(str(err)) from None
        if self.planes is None:
            return [data]
        flat = data.reshape((-1, *self.shape[-2:]))
        return [flat[p] for p in self.planes]

    def summary(self, kept: int = 0) -> str:
        """What was made, for the status line (``kept``: painted pixels carried over)."""
        where = "" if self.planes is None else f" on {len(self.planes)} plane(s)"
        if self.axes is not None and self.axes.axes != "YX":
            where += f" of {self.axes.describe()}"
        painted = f", keeping the {kept} pixels you painted" if kept else ""
        return (
            f"Supervision from {self.n_boxes} boxes{where}{painted}: green cell, yellow "
            "boundary, grey ignored. Paint to correct it (labels 0/1/2/255), then press Train."
        )

    def painted(self, data: np.ndarray) -> np.ndarray:
        """Where ``data`` (the layer's labels) differs from the generated supervision."""
        data = np.asarray(data)
        if data.shape != self.shape:
            return np.zeros(data.shape, bool)
        return data != self.classes()


def record_of(layer: Labels) -> SupervisionRecord | None:
    """The record a supervision layer carries, if the plugin made it."""
    info = owner_info(layer)
    record = info.get("record") if info else None
    return record if isinstance(record, SupervisionRecord) else None


def with_edits(layer: Labels, new: SupervisionRecord) -> tuple[np.ndarray, int]:
    """``new``'s class map with the pixels the user painted on ``layer`` kept.

    Returns
    -------
    data : numpy.ndarray
        The class map for the layer.
    kept : int
        Painted pixels carried over.
    """
    old = record_of(layer)
    current = np.asarray(layer.data)
    data = new.classes()
    if old is None or current.shape != data.shape:
        return data, 0
    painted = old.painted(current)
    data[painted] = current[painted]
    return data, int(painted.sum())


def paint_from(data: np.ndarray, earlier: Labels, record: SupervisionRecord) -> int:
    """Carry the pixels painted on ``earlier`` (a supervision saved and opened again, which
    lost what it was made from) into ``data``, the class map ``record`` generates (not yet
    painted on); the pixels taken.

    A pixel counts as painted where ``earlier`` differs from what the boxes give now, except
    in the ellipse of a box that has no cell pixel in ``earlier``: such a box was drawn after
    it was saved, and its ellipse is kept (``record`` notes how many).

    Raises
    ------
    UserInputError
        When ``earlier`` has another shape than the image or values that are not classes.
    """
    try:
        given = check_class_map(np.asarray(earlier.data), record.shape, f"'{earlier.name}'")
    except ValueError as err:
        raise UserInputError(str(err)) from None
    painted = given != data
    flat_given = given.reshape((-1, *record.shape[-2:]))
    flat_painted = painted.reshape(flat_given.shape)
    drawn_since = 0
    for plane, sup in zip(record.planes or [0], record.supervisions, strict=True):
        n = len(sup.boxes)
        with_cell = np.bincount(sup.instances[flat_given[plane] == CELL], minlength=n + 1)
        new = np.flatnonzero(with_cell[1:] == 0) + 1
        flat_painted[plane][np.isin(sup.instances, new)] = False
        drawn_since += len(new)
    if drawn_since:
        record.notes.append(
            f"{drawn_since} box(es) have no cell in '{earlier.name}' (drawn after it was "
            "saved?): they get their ellipse."
        )
    data[painted] = given[painted]
    return int(painted.sum())


# --------------------------------------------------------------------------------------------
# checks


def check_image_layer(layer: Layer | None, *, purpose: str = "train") -> LayerAxes:
    """The axes of ``layer`` (:mod:`.axes`); :class:`UserInputError` when it cannot be used,
    saying what to do."""
    from napari.layers import Image

    if layer is None:
        where = {"segment": "in the list next to Predict", "correct": "under Check and correct"}
        pick = where.get(purpose, "in the 'Image' list")
        raise UserInputError(
            "No image layer selected. Open an image (File > Open) or the sample (File > Open "
            f"Sample > napari-mutualseg) and pick it {pick}."
        )
    if not isinstance(layer, Image):
        raise UserInputError(f"'{layer.name}' is not an image layer; pick an image layer.")
    if layer.multiscale:
        raise UserInputError(
            f"'{layer.name}' is a multiscale (pyramid) image; open the full-resolution level as "
            f"an ordinary image layer to {purpose} on it, or segment the file with "
            "'Segment a folder…' (block by block, any size)."
        )
    try:
        return layer_axes(layer)
    except ValueError as err:
        raise UserInputError(str(err)) from None


def _plane_coords(verts: list[np.ndarray], axes: LayerAxes) -> list[np.ndarray]:
    """Vertices in image data coordinates as (plane, y, x), the plane counted over time and z
    (channels dropped), or as (y, x) for an image of one plane."""
    if not axes.stacked:
        return [v[:, -2:] for v in verts]
    coords = []
    for k, v in enumerate(verts):
        planes = [axes.plane_of(p) for p in v]
        if min(planes) < 0:
            raise ValueError(
                f"Shape {k} lies beyond the planes of the image, {axes.describe()}: draw it "
                "on one of the image's planes, with the image shown."
            )
        coords.append(np.array([[plane, *p[-2:]] for plane, p in zip(planes, v, strict=True)]))
    return coords


#: Shapes that outline a region (a path counts when its ends meet: :func:`_closed`).
REGION_TYPES = ("polygon", "rectangle", "ellipse")


def _closed(verts: np.ndarray) -> np.ndarray | None:
    """A path drawn around an area, as a polygon: its ends meet (within a tenth of its size,
    at least 2 pixels: a hand-drawn outline rarely ends on its first vertex); else ``None``."""
    yx = verts[:, -2:]
    if len(verts) > 2 and np.allclose(yx[0], yx[-1]):
        verts, yx = verts[:-1], yx[:-1]
    if len(verts) < 3:
        return None
    size = float(np.linalg.norm(yx.max(axis=0) - yx.min(axis=0)))
    gap = float(np.linalg.norm(yx[-1] - yx[0]))
    return verts if gap <= max(2.0, size / 10) else None


def _region_mask(region: Shapes, image: Image, axes: LayerAxes) -> tuple[np.ndarray, int]:
    """Rasterise the region shapes (polygons, rectangles, ellipses, closed paths) on every
    plane, as ``(planes, Y, X)`` (or ``(Y, X)``: a region drawn in 2D holds for every plane),
    and count the shapes that outline no area (lines, open paths)."""
    from napari.layers import Shapes as ShapesLayer

    per_plane = axes.stacked and region.ndim >= len(axes.label_shape)
    plane = axes.label_shape[-2:]
    shape = (axes.n_planes, *plane) if per_plane else plane
    verts = shapes_to_image_coords(region, image)
    verts = _plane_coords(verts, axes) if per_plane else [v[:, -2:] for v in verts]
    usable = []
    for v, kind in zip(verts, region.shape_type, strict=True):
        if kind == "path" and (outline := _closed(v)) is not None:
            usable.append((outline, "polygon"))
        elif kind in REGION_TYPES:
            usable.append((v, kind))
    ignored = len(verts) - len(usable)
    if not usable:
        return np.zeros(shape, bool), ignored
    tmp = ShapesLayer([v for v, _ in usable], shape_type=[t for _, t in usable])
    return np.asarray(tmp.to_masks(mask_shape=shape)).any(axis=0), ignored


def fingerprint(image: Layer, *shapes: Shapes | None) -> bytes:
    """Changes whenever the boxes, the region, the image's placement, its axes, units or its
    shape change (other pixels put into the layer: the supervision must be made for them; the
    units give its pixel size)."""
    units = tuple(map(str, getattr(image, "units", ())))  # napari before 0.6 has none
    h = hashlib.sha1(repr((tuple(image.axis_labels), tuple(image.data.shape), units)).encode())
    for layer in (image, *shapes):
        if layer is None:
            h.update(b"none")
            continue
        if layer is not image:
            for verts in layer.data:
                h.update(np.ascontiguousarray(verts, dtype=np.float64).tobytes())
            h.update(repr(list(layer.shape_type)).encode())
        h.update(np.asarray(layer.affine.affine_matrix, float).tobytes())
        h.update(np.asarray(layer.scale, float).tobytes())
        h.update(np.asarray(layer.translate, float).tobytes())
    return h.digest()


def boxes_per_plane(
    boxes: Shapes, image: Image, axes: LayerAxes, keep: list[int], kinds: list[str]
) -> dict[int | None, list]:
    """The shapes ``keep`` of ``boxes`` (of ``kinds``) as boxes of ``image``, by the plane
    they were drawn on (``None``: a 2D image's), for boxed training and corrections alike.

    Raises
    ------
    UserInputError
        When the layer has no plane axes for a stack, or a shape is no box.
    """
    groups = numbered_boxes_per_plane(boxes, image, axes, keep, kinds)
    return {p: found for p, (found, _) in groups.items()}


def numbered_boxes_per_plane(
    boxes: Shapes, image: Image, axes: LayerAxes, keep: list[int], kinds: list[str]
) -> dict[int | None, tuple[list, list[int]]]:
    """As :func:`boxes_per_plane`, with the index of each box's shape in ``boxes``: how the
    user counts them, for messages to name them.

    Raises
    ------
    UserInputError
        As :func:`boxes_per_plane`.
    """
    if boxes.ndim < len(axes.label_shape):
        raise UserInputError(
            f"The shapes layer '{boxes.name}' has {boxes.ndim} dimensions but the image "
            f"'{image.name}' has {len(axes.label_shape)} besides its channels "
            f"({axes.describe()}): each box must know its plane. Select the image, press 'New "
            "boxes layer' (or create a Shapes layer while the stack is shown) and draw the boxes "
            "on the planes."
        )
    try:
        verts = [v for k, v in enumerate(shapes_to_image_coords(boxes, image)) if k in keep]
        # a box whose vertices lie on different planes is refused there, before its corners
        groups = shapes_by_plane(_plane_coords(verts, axes), kinds) if axes.stacked else None
        drawn = boxes_from_shapes([v[:, -2:] for v in verts], kinds)
    except ValueError as err:
        raise UserInputError(f"'{boxes.name}': {err}") from None
    if groups is None:
        return {None: (drawn, list(keep))}
    return {p: ([drawn[i] for i in ks], [keep[i] for i in ks]) for p, ks in groups.items()}


def prepare_supervision(
    image: Image,
    boxes: Shapes | None,
    region: Shapes | None = None,
    *,
    edge_width: int = 1,
) -> SupervisionRecord:
    """Make the core's supervision from napari layers.

    Parameters
    ----------
    image : napari.layers.Image
        A 2D image, with channels, z, time (see :mod:`.axes`), or RGB.
    boxes : napari.layers.Shapes
        Rectangles (or ellipses) around cells, in any layer transform; on a stack or time
        series each on the plane it was drawn on.
    region : napari.layers.Shapes, optional
        Where annotation is complete; ``None`` means every cell of the image is boxed.
    edge_width : int
        Boundary width in pixels.

    Raises
    ------
    UserInputError
        With a message that says what to change.
    """
    layout = check_image_layer(image)
    if boxes is None:
        raise UserInputError(
            "No boxes layer selected. Press 'New boxes layer' and draw a rectangle around each "
            "cell (or pick an existing Shapes layer)."
        )
    keep = [k for k, kind in enumerate(boxes.shape_type) if kind in BOX_TYPES]
    kinds = [boxes.shape_type[k] for k in keep]
    notes = []
    skipped = sorted({kind for kind in boxes.shape_type if kind not in BOX_TYPES})
    if skipped:
        notes.append(
            f"{len(boxes.shape_type) - len(keep)} shape(s) of '{boxes.name}' are not "
            f"rectangles or ellipses ({', '.join(skipped)}) and were ignored."
        )
    if not keep:
        raise UserInputError(
            f"'{boxes.name}' has no rectangles: draw a rectangle around each cell (rectangle "
            "tool, shortcut R)."
        )
    if region is not None and len(region.data) == 0:
        raise UserInputError(
            # the panel's words (panels.MODE_REGION, MODE_ALL), which the user looks for
            "Annotation 'Only inside a drawn region' needs a region: draw a polygon, "
            f"rectangle or ellipse on '{region.name}' around the area where every cell is "
            "boxed, or set Annotation to 'Every cell is boxed'."
        )
    if layout.note:
        notes.append(layout.note)
    shape = layout.label_shape
    groups = numbered_boxes_per_plane(boxes, image, layout, keep, kinds)
    outside = [p for p in groups if p is not None and not 0 <= p < layout.n_planes]
    for p in outside:
        del groups[p]
    if outside:
        notes.append(f"Boxes on {len(outside)} plane(s) outside the stack were ignored.")
    region_mask = None
    if region is not None:
        region_mask, ignored = _region_mask(region, image, layout)
        if ignored:
            notes.append(
                f"{ignored} shape(s) of '{region.name}' outline no area (lines, or paths whose "
                "ends do not meet) and were ignored: a region is a polygon, rectangle or "
                "ellipse."
            )
        if not region_mask.any():
            raise UserInputError(
                f"No shape of '{region.name}' outlines an area of '{image.name}': draw a "
                "polygon, rectangle or ellipse around the area where every cell is boxed (a "
                "path counts when it ends where it began), or set Annotation to 'Every cell "
                "is boxed'."
            )
    planes, sups = [], []
    for p, (plane_boxes, shape_numbers) in sorted(groups.items(), key=lambda item: item[0] or 0):
        where = "" if p is None else f" on plane {p}"
        plane_shape = shape[-2:]
        if not any(b.overlaps(plane_shape) for b in plane_boxes):
            notes.append(
                f"None of the {len(plane_boxes)} boxes{where} lies on the image '{image.name}'."
            )
            continue
        try:
            # named by their shapes' index in the layer, as the user counts them
            kept, plane_notes, numbers = usable_boxes(plane_boxes, plane_shape, shape_numbers)
        except ValueError as err:
            notes.append(f"{err}{where}")
            continue
        notes += [f"{note[:-1]}{where}." for note in plane_notes]
        mask = region_mask
        if mask is not None and mask.ndim == 3:
            mask = mask[p]
        if mask is not None and not mask.any():
            notes.append(
                f"The boxes on {layout.where(p)} have no region around them: every cell of "
                "that plane counts as boxed."
            )
            mask = None
        caught: list[warnings.WarningMessage] = []
        with thread_warnings(caught.append):  # a job's, meanwhile, are not this plane's
            sup = make_supervision(
                plane_shape, kept, region=mask, edge_width=edge_width, numbers=numbers
            )
        notes += [f"{str(w.message)[:1].upper()}{str(w.message)[1:]}" for w in caught]
        planes.append(p)
        sups.append(sup)
    if not sups:
        raise UserInputError(
            f"No box of '{boxes.name}' can be used on '{image.name}'. {' '.join(notes)} Boxes "
            "and image meet in world coordinates: if the boxes were drawn over the image, check "
            "both layers' scale and translate (layer.scale, layer.translate)."
        )
    return SupervisionRecord(
        shape=shape,
        planes=planes if layout.stacked else None,
        supervisions=sups,
        boxes_key=fingerprint(image, boxes, region),
        notes=notes,
        axes=layout,
    )


# --------------------------------------------------------------------------------------------
# the supervision layer


def write_supervision(
    viewer: napari.Viewer,
    image: Image,
    boxes: Shapes | None,
    region: Shapes | None,
    earlier: Labels | None = None,
) -> tuple[Labels, SupervisionRecord, int]:
    """Make the supervision of ``image`` from the boxes, or make it again keeping the paint.

    A painted supervision that no longer fits (the image's axes were changed) is left to the
    user, untouched, and a new one is made. The pixels painted on ``earlier``, a supervision
    saved and opened again, are carried over as well (:func:`paint_from`); that layer is left
    as it is.

    Returns
    -------
    layer : napari.layers.Labels
        "<image> supervision", the plugin's layer for ``image`` (added when missing).
    record : SupervisionRecord
        What it was made from (also in the layer's metadata).
    kept : int
        Pixels the user had painted, carried over.

    Raises
    ------
    UserInputError
        When the inputs cannot be used.
    """
    record = prepare_supervision(image, boxes, region)
    tag = owner_tag("supervision", image, record=record)
    layer = supervision_to_update(viewer, image, record)
    generated = record.classes()
    data = generated.copy()
    kept = 0 if earlier is None else paint_from(data, earlier, record)
    if layer is not None:  # what was painted on the layer itself wins: it is newer
        edited, painted = with_edits(layer, record)
        mine = edited != generated
        data[mine] = edited[mine]
        kept += painted
    if layer is None:
        name = free_name(viewer, f"{image.name} supervision")
        kw = {**class_layer_kwargs(), **transform_kwargs(image, data.ndim)}
        return claim(viewer.add_labels(data, name=name, metadata=tag, **kw)), record, kept
    layer.metadata.update(tag)
    claim(layer)  # the new tag names no layer yet
    layer.data = data
    return layer, record, kept


def supervision_to_update(
    viewer: napari.Viewer | None, image: Image, record: SupervisionRecord
) -> Labels | None:
    """The plugin's supervision layer of ``image`` that ``record`` may be written into, or
    ``None`` when a new layer must be made.

    A supervision the user painted on that no longer fits (the image's axes were changed)
    is handed over to the user untouched (no longer the plugin's), and ``record`` notes so:
    writing into it would lose the paint, as nothing painted can be carried to another shape.
    """
    layer = find_own_layer(viewer, "supervision", image) if viewer is not None else None
    old = record_of(layer) if layer is not None else None
    if old is not None and old.shape != record.shape and old.painted(layer.data).any():
        del layer.metadata[OWNER_KEY]
        record.notes.append(f"'{layer.name}' no longer fits the image's axes; it is kept as is.")
        return None
    return layer


def outdated(layer: Labels, image: Image, boxes: Shapes | None, region: Shapes | None) -> bool:
    """Whether the boxes (or region, or the image's axes) changed since the supervision layer
    was made from them."""
    record = record_of(layer)
    return (
        record is not None
        and boxes is not None
        and (record.boxes_key != fingerprint(image, boxes, region))
    )


def adopt(
    layer: Labels, image: Image, boxes: Shapes | None, region: Shapes | None
) -> SupervisionRecord:
    """The record of a supervision layer, described from the boxes if the layer lost it.

    A layer made by an older version, or whose metadata was lost, is used as it is: every
    pixel that differs from what the boxes give counts as painted.

    Raises
    ------
    UserInputError
        When the record must be made from boxes that cannot be used.
    """
    record = record_of(layer)
    if record is None:
        record = prepare_supervision(image, boxes, region)
        layer.metadata.update(owner_tag("supervision", image, record=record))
        claim(layer)
    return record


@dataclass
class TrainingItem:
    """One image of the training set: its layer, its supervision and the labels to learn."""

    image: Image
    record: SupervisionRecord
    labels: list[np.ndarray]
    painted: int = 0  # supervision pixels the user painted (trusted in every round)


def training_item(
    layer: Labels, image: Image, boxes: Shapes | None, region: Shapes | None
) -> TrainingItem:
    """The image and its supervision layer, as painted, ready to train on.

    Raises
    ------
    ValueError
        When the supervision cannot be used (:class:`UserInputError` for the inputs, a
        class-map error for painted values the networks cannot learn).
    """
    record = adopt(layer, image, boxes, region)
    if record.axes is not None and record.axes.name != image.name:
        # the engine's messages call the planes after the layer as it is named now
        record = replace(record, axes=replace(record.axes, name=image.name))
    labels = record.labels(layer)
    return TrainingItem(image, record, labels, int(record.painted(layer.data).sum()))
