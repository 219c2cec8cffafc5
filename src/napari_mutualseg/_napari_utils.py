"""napari adapters: layers in, core inputs out; core results back into layers.

Everything here runs on the main thread (it reads and writes napari layers) and holds no core
logic: it maps coordinates, checks what the user picked and names the layers the plugin owns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Shapes
from napari.types import LayerDataTuple

from .supervision import BACKGROUND, BOUNDARY, CELL, IGNORE, Supervision, boxes_from_shapes
from .supervision import make_supervision as _make_supervision

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer

#: ``layer.metadata`` key marking the layers this plugin created (value: a dict with the role).
OWNER_KEY = "napari-mutualseg"

#: Shape types that describe one cell each.
BOX_TYPES = ("rectangle", "ellipse")

#: Boxes smaller than this (pixels) are accidental clicks rather than cells.
MIN_BOX_SIZE = 2.0

#: Class colours (RGBA): background faint so the image stays visible, ignore grey.
CLASS_COLORS: dict[int | None, tuple[float, float, float, float]] = {
    None: (1.0, 0.0, 1.0, 1.0),  # any other value: magenta, so stray paint stands out
    BACKGROUND: (0.15, 0.25, 0.9, 0.25),
    CELL: (0.1, 0.9, 0.2, 1.0),
    BOUNDARY: (1.0, 0.8, 0.0, 1.0),
    IGNORE: (0.55, 0.55, 0.55, 0.6),
}

CLASS_NAMES = {BACKGROUND: "background", CELL: "cell", BOUNDARY: "boundary", IGNORE: "ignore"}


class UserInputError(ValueError):
    """Something the user picked or drew cannot be used; the message says what to do."""


@dataclass
class PreparedSupervision:
    """The core inputs made from an image layer and its boxes (and region) layers.

    Attributes
    ----------
    image_name : str
        Name of the image layer (at the time of preparation).
    planes : list of int or None
        Planes of a stack that carry boxes, or ``None`` for a 2D image.
    images : list of numpy.ndarray
        One 2D image per trained plane.
    supervisions : list of Supervision
        One per image.
    classes : numpy.ndarray
        The supervision classes laid out like the image layer (2D, or a stack with every
        plane without boxes set to ignore).
    notes : list of str
        Things the user should know (ignored shapes, boxes outside the image).
    boxes_key : bytes
        Fingerprint of the boxes used, to notice later edits.
    """

    image_name: str
    planes: list[int] | None
    images: list[np.ndarray]
    supervisions: list[Supervision]
    classes: np.ndarray
    notes: list[str] = field(default_factory=list)
    boxes_key: bytes = b""


# --------------------------------------------------------------------------------------------
# coordinates


def _affine(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Linear part and offset of the layer's data -> world transform (public API only)."""
    nd = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(nd)), dtype=float)
    linear = np.empty((nd, nd))
    for i in range(nd):
        e = np.zeros(nd)
        e[i] = 1.0
        linear[:, i] = np.asarray(layer.data_to_world(e), dtype=float) - origin
    return linear, origin


def shapes_to_image_coords(shapes: Shapes, image: Layer) -> list[np.ndarray]:
    """The vertices of every shape, mapped into the image layer's data coordinates.

    The mapping goes through world coordinates, so boxes drawn on a layer with another scale,
    translation or rotation land on the right pixels.
    """
    if shapes.ndim < image.ndim:
        raise UserInputError(
            f"The shapes layer '{shapes.name}' has {shapes.ndim} dimensions but the image "
            f"'{image.name}' has {image.ndim}: each box must know its plane. Select the image, "
            "press 'New boxes layer' (or create a Shapes layer while the stack is shown) and draw "
            "the boxes on the planes."
        )
    lin_s, off_s = _affine(shapes)
    lin_i, off_i = _affine(image)
    if np.linalg.matrix_rank(lin_i) < image.ndim:
        raise UserInputError(f"The image layer '{image.name}' has a degenerate transform.")
    inv_i = np.linalg.inv(lin_i)
    out = []
    for verts in shapes.data:
        world = np.asarray(verts, dtype=float) @ lin_s.T + off_s
        # napari aligns layers of different dimensionality on their trailing axes
        world = world[:, -image.ndim :]
        out.append((world - off_i) @ inv_i.T)
    return out


def _plain_transform_kwargs(layer: Layer) -> dict[str, Any]:
    """Layer kwargs that put a new layer exactly on top of ``layer``."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }


# --------------------------------------------------------------------------------------------
# checks


def check_image_layer(layer: Layer | None, *, purpose: str = "train") -> None:
    """Raise :class:`UserInputError` when ``layer`` cannot be segmented, saying what to do."""
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


def _plane_of(verts: np.ndarray, k: int, name: str) -> int:
    planes = verts[:, 0]
    plane = int(np.round(planes.mean()))
    if np.ptp(planes) > 0.5:
        raise UserInputError(
            f"Shape {k} of '{name}' spans several planes: it was drawn in a 3D view or across "
            "the stack. The plugin trains plane by plane on 2D boxes: switch to the 2D view "
            "(ndisplay 2) with the planes as the sliced axis and draw the boxes on the planes."
        )
    return plane


def _box_kinds(shapes: Shapes) -> tuple[list[int], list[str], list[str]]:
    """Indices and kinds of usable shapes; kinds of the unusable ones."""
    keep, kinds, skipped = [], [], []
    for k, kind in enumerate(shapes.shape_type):
        if kind in BOX_TYPES:
            keep.append(k)
            kinds.append(kind)
        else:
            skipped.append(kind)
    return keep, kinds, skipped


def _region_masks(region: Shapes, image: Image, shape: tuple[int, ...]) -> np.ndarray:
    """Rasterise the region shapes (polygons, rectangles, ellipses) in image data coordinates."""
    from napari.layers import Shapes as ShapesLayer

    verts = shapes_to_image_coords(region, image)
    kinds = list(region.shape_type)
    usable = [(v, t) for v, t in zip(verts, kinds, strict=True) if t not in ("line", "path")]
    if not usable:
        return np.zeros(shape, bool)
    tmp = ShapesLayer([v for v, _ in usable], shape_type=[t for _, t in usable])
    masks = tmp.to_masks(mask_shape=shape)
    return np.asarray(masks).any(axis=0)


def _fingerprint(*layers: Layer | None) -> bytes:
    import hashlib

    h = hashlib.sha1()
    for layer in layers:
        if layer is None:
            h.update(b"none")
            continue
        for verts in layer.data:
            h.update(np.ascontiguousarray(verts, dtype=np.float64).tobytes())
        h.update(repr(list(layer.shape_type)).encode())
        h.update(np.asarray(layer.scale, float).tobytes())
        h.update(np.asarray(layer.translate, float).tobytes())
    return h.digest()


def prepare_supervision(
    image: Image,
    boxes: Shapes | None,
    region: Shapes | None = None,
    *,
    edge_width: int = 1,
) -> PreparedSupervision:
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

    Returns
    -------
    PreparedSupervision

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
    keep, kinds, skipped = _box_kinds(boxes)
    notes = []
    if skipped:
        notes.append(
            f"{len(skipped)} shape(s) of '{boxes.name}' are not rectangles or ellipses "
            f"({', '.join(sorted(set(skipped)))}) and were ignored."
        )
    if not keep:
        raise UserInputError(
            f"'{boxes.name}' has no rectangles: draw a rectangle around each cell (rectangle "
            "tool, shortcut R)."
        )
    data = np.asarray(image.data) if not hasattr(image.data, "compute") else image.data
    shape = tuple(int(s) for s in data.shape)
    all_verts = shapes_to_image_coords(boxes, image)
    verts = [all_verts[k] for k in keep]

    if region is not None and len(region.data) == 0:
        raise UserInputError(
            f"Annotation mode 'only inside a region' needs a region: draw polygons or "
            f"rectangles on '{region.name}' around the area where every cell is boxed, or "
            "switch the mode to 'every cell is boxed'."
        )
    region_mask = _region_masks(region, image, shape) if region is not None else None

    if image.ndim == 2:
        groups: dict[int | None, list[int]] = {None: list(range(len(verts)))}
    else:
        groups = {}
        for k, v in enumerate(verts):
            plane = _plane_of(v, keep[k], boxes.name)
            groups.setdefault(plane, []).append(k)
        outside = [p for p in groups if not 0 <= p < shape[0]]
        for p in outside:
            del groups[p]
        if outside:
            notes.append(f"Boxes on {len(outside)} plane(s) outside the stack were ignored.")

    images, sups, used_planes = [], [], []
    n_used = n_total = n_tiny = 0
    for p in [None] if image.ndim == 2 else sorted(groups):
        idx = groups[p]
        plane_verts = [verts[k] if p is None else verts[k][:, 1:] for k in idx]
        plane_shape = shape if p is None else shape[1:]
        where = "" if p is None else f" on plane {p}"
        try:
            plane_boxes = boxes_from_shapes(plane_verts, [kinds[k] for k in idx])
        except ValueError as err:
            raise UserInputError(f"'{boxes.name}'{where}: {err}") from None
        n_total += len(plane_boxes)
        tiny = [b for b in plane_boxes if 2 * min(b.half_sizes) < MIN_BOX_SIZE]
        if tiny:
            notes.append(
                f"{len(tiny)} box(es){where} smaller than {MIN_BOX_SIZE:g} pixels (a click "
                "without dragging?) were ignored."
            )
        inside = [
            b
            for b in plane_boxes
            if 2 * min(b.half_sizes) >= MIN_BOX_SIZE and _overlaps(b, plane_shape)
        ]
        n_used += len(inside)
        n_tiny += len(tiny)
        if not inside:
            continue
        mask = None
        if region_mask is not None:
            mask = region_mask if p is None else region_mask[p]
            if not mask.any():
                notes.append(
                    f"Plane {p} has boxes but no region: its whole plane is treated as annotated."
                )
                mask = None
        images.append(np.asarray(data if p is None else data[p]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sup = _make_supervision(plane_shape, inside, region=mask, edge_width=edge_width)
            except ValueError as err:
                raise UserInputError(f"'{boxes.name}'{where}: {err}") from None
        notes.extend(f"{str(w.message)[:1].upper()}{str(w.message)[1:]}" for w in caught)
        sups.append(sup)
        used_planes.append(p)
    if n_used == 0 and n_tiny == n_total:
        raise UserInputError(
            f"Every box of '{boxes.name}' is smaller than {MIN_BOX_SIZE:g} pixels: drag the "
            "rectangle tool around each whole cell."
        )
    if n_used == 0:
        raise UserInputError(
            f"None of the {n_total} boxes of '{boxes.name}' lies on the image '{image.name}'. "
            "The two layers do not overlap in world coordinates: check their scale and "
            "translate (layer.scale, layer.translate), or draw the boxes over the image."
        )
    n_outside = n_total - n_used - n_tiny
    if n_outside:
        notes.append(f"{n_outside} of {n_total} boxes lie outside the image and were ignored.")
    planes: list[int] | None = None if image.ndim == 2 else used_planes
    if planes is None:
        classes = sups[0].classes.astype(np.uint8, copy=True)
    else:
        classes = np.full(shape, IGNORE, np.uint8)
        for p, sup in zip(planes, sups, strict=True):
            classes[p] = sup.classes
    return PreparedSupervision(
        image_name=image.name,
        planes=planes,
        images=images,
        supervisions=sups,
        classes=classes,
        notes=notes,
        boxes_key=_fingerprint(boxes, region),
    )


def _overlaps(box: Any, shape: tuple[int, ...]) -> bool:
    sl = box.slices(shape)
    return all(s.stop > s.start for s in sl)


# --------------------------------------------------------------------------------------------
# layers the plugin owns


def owner_info(layer: Layer) -> dict | None:
    """The plugin's marker on ``layer``, or ``None`` for a layer the user made."""
    info = layer.metadata.get(OWNER_KEY) if isinstance(layer.metadata, dict) else None
    return info if isinstance(info, dict) else None


def find_own_layer(viewer: napari.Viewer, role: str, source: str | None = None) -> Layer | None:
    """The layer this plugin created for ``role`` (and ``source`` image), if it still exists."""
    for layer in viewer.layers:
        info = owner_info(layer)
        if info and info.get("role") == role and info.get("source") == source:
            return layer
    return None


def free_name(viewer: napari.Viewer | None, name: str) -> str:
    """``name``, or ``name [2]``, ``[3]``... when a layer already uses it."""
    if viewer is None:
        return name
    taken = {layer.name for layer in viewer.layers}
    if name not in taken:
        return name
    k = 2
    while f"{name} [{k}]" in taken:
        k += 1
    return f"{name} [{k}]"


def class_colormap() -> Any:
    """napari colormap for class maps (background, cell, boundary, ignore)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=dict(CLASS_COLORS))


def upsert_labels(
    viewer: napari.Viewer,
    *,
    role: str,
    name: str,
    arrays: list[np.ndarray],
    planes: list[int] | None,
    like: Layer,
    source: str | None = None,
    classes: bool = False,
    **kwargs: Any,
) -> Labels:
    """Update the plugin's own Labels layer for ``role`` in place, or add it if missing.

    A user layer with the same name is never touched: the new layer gets a free name.

    Parameters
    ----------
    viewer : napari.Viewer
    role, source : str
        What the layer shows and for which image (stored in ``layer.metadata``).
    name : str
        Name for a new layer.
    arrays : list of numpy.ndarray
        One 2D array, or one per plane in ``planes``.
    planes : list of int or None
        Planes of a stack shaped like ``like`` that ``arrays`` fill (others: ignore / 0).
    like : napari.layers.Layer
        The image layer whose shape and transform the labels follow.
    classes : bool
        Class map (class colours) rather than instances (random colours).
    **kwargs
        Extra ``add_labels`` arguments for a new layer.
    """
    layer = find_own_layer(viewer, role, source)
    if planes is None:
        data = arrays[0]
    else:
        full_shape = tuple(int(s) for s in like.data.shape)
        dtype = arrays[0].dtype
        same = layer is not None and tuple(layer.data.shape) == full_shape
        if same and layer.data.dtype == dtype:
            data = np.asarray(layer.data)
        else:
            data = np.full(full_shape, IGNORE if classes else 0, dtype=dtype)
        for p, array in zip(planes, arrays, strict=True):
            data[p] = array
    if layer is not None:
        reshaped = tuple(layer.data.shape) != tuple(data.shape)
        layer.data = data
        if reshaped:
            for key, value in _plain_transform_kwargs(like).items():
                setattr(layer, key, value)
        return layer
    meta = {OWNER_KEY: {"role": role, "source": source}}
    kw: dict[str, Any] = dict(_plain_transform_kwargs(like))
    kw.update(kwargs)
    if classes:
        kw.setdefault("colormap", class_colormap())
        kw.setdefault("opacity", 0.6)
    return viewer.add_labels(data, name=free_name(viewer, name), metadata=meta, **kw)


# --------------------------------------------------------------------------------------------
# menu command


def boxes_to_supervision(image: Image, boxes: Shapes) -> LayerDataTuple:
    """Boxes → ellipse supervision: a Labels layer of the classes inside each box.

    Every cell of the image is assumed boxed: outside the boxes is background. The result can
    be corrected with napari's paint tools and used by the dock widget for training.

    Parameters
    ----------
    image : napari.layers.Image
        A 2D image or a stack of 2D planes.
    boxes : napari.layers.Shapes
        Rectangles around cells.

    Returns
    -------
    napari.types.LayerDataTuple
        ``(classes, {"name": "<image> supervision", ...}, "labels")``, or ``None`` (after a
        notification) when the inputs cannot be used.
    """
    import napari
    from napari.utils.notifications import show_error, show_warning

    try:
        prepared = prepare_supervision(image, boxes)
    except (UserInputError, ValueError) as err:
        show_error(str(err))
        return None
    for note in prepared.notes:
        show_warning(note)
    viewer = napari.current_viewer()
    name = f"{image.name} supervision"
    if viewer is not None and name in viewer.layers:
        info = owner_info(viewer.layers[name])
        if not (info and info.get("role") == "supervision" and info.get("source") == image.name):
            # napari updates a layer of the same name in place: never a user's layer
            name = free_name(viewer, name)
    meta = {
        "name": name,
        "colormap": class_colormap(),
        "opacity": 0.6,
        "metadata": {OWNER_KEY: {"role": "supervision", "source": image.name}},
        **_plain_transform_kwargs(image),
    }
    return (prepared.classes, meta, "labels")


# magicgui builds the menu widget from these: they must be real types, not postponed strings.
boxes_to_supervision.__annotations__ = {"image": Image, "boxes": Shapes, "return": LayerDataTuple}
