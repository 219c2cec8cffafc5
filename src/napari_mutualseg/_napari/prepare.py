"""From an image layer and its boxes (and region) layers to the core's supervision.

The result, a :class:`SupervisionRecord`, says what the supervision layer was made from. It is
kept in that layer's metadata, so that the layer carries its own meaning: training can tell the
pixels the user painted from the generated ones whoever made the layer (the dock widget or the
menu command), whatever the image is called now, and after the panel was closed and reopened.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..boxes import BOX_TYPES, boxes_by_plane, boxes_from_shapes, usable_boxes
from ..supervision import IGNORE, Supervision, check_class_map, make_supervision
from .layers import (
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
        Shape of the image layer's data (2D, or a stack of planes).
    planes : list of int or None
        Planes of a stack that carry boxes, or ``None`` for a 2D image.
    supervisions : list of Supervision
        One per trained image (plane).
    boxes_key : bytes
        Fingerprint of the boxes (and region) layers used, to notice later edits.
    notes : list of str
        Things the user should know (ignored shapes, boxes outside the image).
    """

    shape: tuple[int, ...]
    planes: list[int] | None
    supervisions: list[Supervision]
    boxes_key: bytes = b""
    notes: list[str] = field(default_factory=list)

    @property
    def n_boxes(self) -> int:
        """Boxes used, over all planes."""
        return sum(len(s.boxes) for s in self.supervisions)

    def classes(self) -> np.ndarray:
        """The generated class map laid out like the image (planes without boxes: ignore)."""
        if self.planes is None:
            return self.supervisions[0].classes.copy()
        out = np.full(self.shape, IGNORE, np.uint8)
        for p, sup in zip(self.planes, self.supervisions, strict=True):
            out[p] = sup.classes
        return out

    def images(self, data: np.ndarray) -> list[np.ndarray]:
        """The trained planes of the image layer's data."""
        if self.planes is None:
            return [np.asarray(data)]
        return [np.asarray(data[p]) for p in self.planes]

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
        return self.images(data)

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


# --------------------------------------------------------------------------------------------
# checks


def check_image_layer(layer: Layer | None, *, purpose: str = "train") -> None:
    """Raise :class:`UserInputError` when ``layer`` cannot be segmented, saying what to do."""
    from napari.layers import Image

    if layer is None:
        raise UserInputError(
            "No image layer selected. Open an image (File > Open) or the sample (File > Open "
            "Sample > napari-mutualseg) and pick it in the 'Image' list."
        )
    if not isinstance(layer, Image):
        raise UserInputError(f"'{layer.name}' is not an image layer; pick an image layer.")
    if layer.rgb:
        raise UserInputError(
            f"'{layer.name}' is an RGB image; the networks work on one channel. Right-click the "
            "layer > Split RGB, then pick the nuclear (or membrane) channel."
        )
    if layer.multiscale:
        raise UserInputError(
            f"'{layer.name}' is a multiscale (pyramid) image; open the full-resolution level as "
            "an ordinary image layer first."
        )
    if layer.ndim not in (2, 3):
        raise UserInputError(
            f"'{layer.name}' has {layer.ndim} dimensions {tuple(layer.data.shape)}; the plugin "
            f"can {purpose} on a 2D image or a stack of 2D planes (3D). Take one time point or "
            "channel first (e.g. Layers > Data > Split Stack)."
        )


def _region_mask(region: Shapes, image: Image, shape: tuple[int, ...]) -> np.ndarray:
    """Rasterise the region shapes (polygons, rectangles, ellipses) in image data coordinates."""
    from napari.layers import Shapes as ShapesLayer

    verts = shapes_to_image_coords(region, image)
    kinds = list(region.shape_type)
    usable = [(v, t) for v, t in zip(verts, kinds, strict=True) if t not in ("line", "path")]
    if not usable:
        return np.zeros(shape, bool)
    tmp = ShapesLayer([v for v, _ in usable], shape_type=[t for _, t in usable])
    return np.asarray(tmp.to_masks(mask_shape=shape)).any(axis=0)


def fingerprint(image: Layer, *shapes: Shapes | None) -> bytes:
    """Changes whenever the boxes, the region or the image's placement change."""
    h = hashlib.sha1()
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


def _boxes_per_plane(
    boxes: Shapes, image: Image, keep: list[int], kinds: list[str]
) -> dict[int | None, list]:
    if boxes.ndim < image.ndim:
        raise UserInputError(
            f"The shapes layer '{boxes.name}' has {boxes.ndim} dimensions but the image "
            f"'{image.name}' has {image.ndim}: each box must know its plane. Select the image, "
            "press 'New boxes layer' (or create a Shapes layer while the stack is shown) and draw "
            "the boxes on the planes."
        )
    try:
        verts = [v for k, v in enumerate(shapes_to_image_coords(boxes, image)) if k in keep]
        if image.ndim == 2:
            return {None: boxes_from_shapes(verts, kinds)}
        return dict(boxes_by_plane(verts, kinds))
    except ValueError as err:
        raise UserInputError(f"'{boxes.name}': {err}") from None


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
        A 2D image or a stack of 2D planes.
    boxes : napari.layers.Shapes
        Rectangles (or ellipses) around cells, in any layer transform.
    region : napari.layers.Shapes, optional
        Where annotation is complete; ``None`` means every cell of the image is boxed.
    edge_width : int
        Boundary width in pixels.

    Raises
    ------
    UserInputError
        With a message that says what to change.
    """
    check_image_layer(image)
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
            f"Annotation mode 'only inside a region' needs a region: draw polygons or "
            f"rectangles on '{region.name}' around the area where every cell is boxed, or "
            "switch the mode to 'every cell is boxed'."
        )
    shape = tuple(int(s) for s in image.data.shape)
    groups = _boxes_per_plane(boxes, image, keep, kinds)
    outside = [p for p in groups if p is not None and not 0 <= p < shape[0]]
    for p in outside:
        del groups[p]
    if outside:
        notes.append(f"Boxes on {len(outside)} plane(s) outside the stack were ignored.")
    region_mask = _region_mask(region, image, shape) if region is not None else None
    planes, sups = [], []
    for p, plane_boxes in groups.items():
        where = "" if p is None else f" on plane {p}"
        plane_shape = shape if p is None else shape[1:]
        if not any(b.overlaps(plane_shape) for b in plane_boxes):
            notes.append(
                f"None of the {len(plane_boxes)} boxes{where} lies on the image '{image.name}'."
            )
            continue
        try:
            kept, plane_notes = usable_boxes(plane_boxes, plane_shape)
        except ValueError as err:
            notes.append(f"{err}{where}")
            continue
        notes += [f"{note[:-1]}{where}." for note in plane_notes]
        mask = None if region_mask is None else region_mask[() if p is None else p]
        if mask is not None and not mask.any():
            notes.append(f"Plane {p} has boxes but no region: the whole plane is annotated.")
            mask = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sup = make_supervision(plane_shape, kept, region=mask, edge_width=edge_width)
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
        planes=None if image.ndim == 2 else planes,
        supervisions=sups,
        boxes_key=fingerprint(image, boxes, region),
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# the supervision layer


def write_supervision(
    viewer: napari.Viewer, image: Image, boxes: Shapes | None, region: Shapes | None
) -> tuple[Labels, SupervisionRecord, int]:
    """Make the supervision of ``image`` from the boxes, or make it again keeping the paint.

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
    layer = find_own_layer(viewer, "supervision", image)
    if layer is None:
        name = free_name(viewer, f"{image.name} supervision")
        kw = {**class_layer_kwargs(), **transform_kwargs(image)}
        return viewer.add_labels(record.classes(), name=name, metadata=tag, **kw), record, 0
    data, kept = with_edits(layer, record)
    layer.metadata.update(tag)
    layer.data = data
    return layer, record, kept


def outdated(layer: Labels, image: Image, boxes: Shapes | None, region: Shapes | None) -> bool:
    """Whether the boxes (or region) changed since the supervision layer was made from them."""
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
    labels = record.labels(layer)
    return TrainingItem(image, record, labels, int(record.painted(layer.data).sum()))
