"""Layers in, layers out: coordinate mapping and the layers this plugin owns.

Runs on the main thread (it reads and writes napari layers) and holds no core logic. A layer
the plugin made carries a tag in its metadata (:data:`OWNER_KEY`) with its role, the image
it belongs to (by the image layer's ``unique_id``, so that the link survives renames) and the
layer's own ``unique_id``. A layer without the tag is the user's and is never changed; so is
a layer whose tag names another layer: napari copies the metadata into a duplicated layer
(Layers > Duplicate Layer), and the copy is the person's, not the plugin's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..supervision import BACKGROUND, BOUNDARY, CELL, IGNORE

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer

    from ..measure import Table

#: ``layer.metadata`` key marking the layers this plugin created (value: a dict with the role).
OWNER_KEY = "napari-mutualseg"
#: Key in the tag: the ``unique_id`` of the layer the tag was made for.
LAYER_ID = "layer_id"
#: Key in the tag of cells a person edited and the plugin handed over to them: the cells the
#: plugin last wrote into the layer, which tell the person's edits (kept with the layer, so
#: that they go when it goes).
WRITTEN = "written"

#: Class colours (RGBA): background faint so the image stays visible, ignore grey.
CLASS_COLORS: dict[int | None, tuple[float, float, float, float]] = {
    None: (1.0, 0.0, 1.0, 1.0),  # any other value: magenta, so stray paint stands out
    BACKGROUND: (0.15, 0.25, 0.9, 0.25),
    CELL: (0.1, 0.9, 0.2, 1.0),
    BOUNDARY: (1.0, 0.8, 0.0, 1.0),
    IGNORE: (0.55, 0.55, 0.55, 0.6),
}


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


def shapes_to_image_coords(shapes: Layer, image: Layer) -> list[np.ndarray]:
    """The vertices of every shape, mapped into the image layer's data coordinates.

    The mapping goes through world coordinates, so boxes drawn on a layer with another scale,
    translation or rotation land on the right pixels. The caller checks that the shapes layer
    has the image's dimensions, or all but its channel axis (which then reads as channel 0).
    """
    lin_s, off_s = _affine(shapes)
    lin_i, off_i = _affine(image)
    if np.linalg.matrix_rank(lin_i) < image.ndim:
        raise ValueError(f"The image layer '{image.name}' has a degenerate transform.")
    inv_i = np.linalg.inv(lin_i)
    out = []
    for verts in shapes.data:
        world = np.asarray(verts, dtype=float) @ lin_s.T + off_s
        # napari aligns layers of different dimensionality on their trailing axes
        world = world[:, -image.ndim :]
        missing = image.ndim - world.shape[1]
        if missing > 0:
            world = np.hstack([np.tile(off_i[:missing], (len(world), 1)), world])
        out.append((world - off_i) @ inv_i.T)
    return out


def transform_kwargs(layer: Layer, ndim: int | None = None) -> dict[str, Any]:
    """Layer kwargs that put a new layer exactly on top of ``layer``, or of its trailing
    ``ndim`` axes (a result without the image's channel axis), in the same units."""
    units = {}
    if hasattr(layer, "units"):  # napari before 0.6 has no units on layers
        units["units"] = tuple(map(str, layer.units))[-(ndim or layer.ndim) :]
    if ndim is None or ndim == layer.ndim:
        return {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "rotate": np.asarray(layer.rotate),
            "shear": np.asarray(layer.shear),
            "affine": np.asarray(layer.affine.affine_matrix),
            **units,
        }
    linear, origin = _affine(layer)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = linear[-ndim:, -ndim:]
    affine[:ndim, ndim] = origin[-ndim:]
    return {"affine": affine, **units}


# --------------------------------------------------------------------------------------------
# layers the plugin owns


def owner_tag(role: str, source: Layer | None, **extra: Any) -> dict[str, Any]:
    """The metadata entry that marks a layer as the plugin's ``role`` for image ``source``.

    The layer does not exist yet, so the tag names no layer: :func:`claim` binds it to the
    layer once it is made (else the first look at the layer does, see :func:`owner_info`).
    """
    return {
        OWNER_KEY: {
            "role": role,
            "source_id": None if source is None else str(source.unique_id),
            **extra,
        }
    }


def claim(layer: Layer) -> Layer:
    """Bind the plugin's tag on ``layer`` (just made from :func:`owner_tag`) to this layer.

    A new dict replaces the tag: napari's duplicate shares the tag's dict with the copy (it
    copies ``metadata`` shallowly), so changing it in place would bind the copy as well.
    """
    info = layer.metadata.get(OWNER_KEY) if isinstance(layer.metadata, dict) else None
    if isinstance(info, dict) and info.get(LAYER_ID) is None:
        layer.metadata[OWNER_KEY] = {**info, LAYER_ID: str(layer.unique_id)}
    return layer


def owner_info(layer: Layer) -> dict | None:
    """The plugin's marker on ``layer``, or ``None`` for a layer the user made.

    The marker counts only on the layer it was made for: one naming another layer was copied
    with the metadata (a duplicated layer, or one from another session) and is the user's. A
    marker that names no layer yet (a layer napari made from the plugin's layer data, as the
    Layers > Segment menu returns it) is bound to the first layer seen carrying it, unless
    napari made that layer from another one (its ``source.parent``): that is a copy.
    """
    info = layer.metadata.get(OWNER_KEY) if isinstance(layer.metadata, dict) else None
    if not isinstance(info, dict):
        return None
    layer_id = info.get(LAYER_ID)
    if layer_id is None:
        if getattr(getattr(layer, "source", None), "parent", None) is not None:
            return None
        return claim(layer).metadata[OWNER_KEY]
    return info if layer_id == str(layer.unique_id) else None


def find_own_layer(viewer: napari.Viewer, role: str, source: Layer | None = None) -> Layer | None:
    """The layer this plugin created for ``role`` (and image ``source``), if it still exists."""
    source_id = None if source is None else str(source.unique_id)
    for layer in viewer.layers:
        info = owner_info(layer)
        if info and info.get("role") == role and info.get("source_id") == source_id:
            return layer
    return None


def cells_layer(viewer: napari.Viewer, image: Layer) -> Labels | None:
    """The plugin's cells of ``image``: its prediction (beside the cells of the image trained
    from boxes), or its cells."""
    return find_own_layer(viewer, "prediction", image) or find_own_layer(viewer, "cells", image)


def camera(viewer: napari.Viewer) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on)."""
    return getattr(viewer, "scene", viewer).camera


def center_on(viewer: napari.Viewer, world: Any) -> None:
    """Centre the camera on the point ``world`` (world coordinates of a layer's axes) along
    the axes the canvas shows: y and x, and z too in a 3D view, which would otherwise turn
    about a point at the volume's edge rather than the cell."""
    shown = min(viewer.dims.ndisplay, len(world))
    cam = camera(viewer)
    centre = [float(c) for c in cam.center]
    centre[-shown:] = [float(c) for c in world[-shown:]]
    cam.center = tuple(centre)


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


def class_layer_kwargs() -> dict[str, Any]:
    """How a class map is shown: class colours, see-through."""
    return {"colormap": class_colormap(), "opacity": 0.6}


def upsert_layer(
    viewer: napari.Viewer,
    *,
    role: str,
    name: str,
    data: np.ndarray,
    like: Layer,
    source: Layer | None = None,
    kind: str = "labels",
    **kwargs: Any,
) -> Layer:
    """Update the plugin's own layer for ``role`` in place, or add it if missing.

    A user layer with the same name is never touched: the new layer gets a free name. Nor is
    what a person painted on the plugin's layer (or merged, split): that layer is handed over
    to them as "<name> (edited)" and the new data goes into a new layer, with a warning.

    Parameters
    ----------
    viewer : napari.Viewer
    role : str
        What the layer shows (stored in ``layer.metadata``).
    name : str
        Name for a new layer.
    data : numpy.ndarray
        The data, shaped like ``like``'s data (without its channel axis).
    like : napari.layers.Layer
        The image layer whose transform the new layer follows.
    source : napari.layers.Layer, optional
        The image the layer belongs to (``None``: shared by every image, e.g. "model A").
    kind : {"labels", "classes", "image"}
        Instances (random colours), a class map (class colours) or a map of values in
        ``[0, 1]`` (an image layer over the others).
    **kwargs
        Extra arguments for a new layer.
    """
    layer = find_own_layer(viewer, role, source)
    if layer is not None and edited(layer):
        _hand_over(viewer, layer, name)
        layer = None
    if layer is not None:
        reshaped = tuple(layer.data.shape) != tuple(data.shape)
        layer.data = data
        # the strokes in a Labels layer's undo history were painted on the result replaced:
        # undone now, they would paste pieces of it into the new one (napari keeps them, and
        # has no public way to forget them)
        forget = getattr(layer, "_reset_history", None)
        if forget is not None:
            forget()
        if reshaped:
            for key, value in transform_kwargs(like, data.ndim).items():
                setattr(layer, key, value)
        return layer
    kw: dict[str, Any] = {**transform_kwargs(like, data.ndim), **kwargs}
    meta = owner_tag(role, source)
    name = free_name(viewer, name)
    active = viewer.layers.selection.active
    if kind == "image":
        kw = {"colormap": "magma", "contrast_limits": (0, 1), "blending": "additive", **kw}
        layer = claim(viewer.add_image(data, name=name, metadata=meta, **kw))
    else:
        if kind == "classes":
            kw = {**class_layer_kwargs(), **kw}
        layer = claim(viewer.add_labels(data, name=name, metadata=meta, **kw))
    if not layer.visible and active is not None:
        # napari selects a layer it adds: a hidden one would take the selection from the
        # layer shown (a prediction's cells, with their table), for painting unseen
        viewer.layers.selection.active = active
    return layer


def edited(layer: Layer) -> bool:
    """Whether a person changed ``layer`` since the plugin last wrote it: every write forgets
    a Labels layer's undo history (:func:`upsert_layer`), so a stroke in it is theirs (napari
    has no public way to ask)."""
    return bool(getattr(layer, "_undo_history", None))


def _hand_over(viewer: napari.Viewer, layer: Layer, name: str) -> None:
    """Give the person the plugin's ``layer`` they edited, renamed, so that nothing writes
    into it again; the plugin's next layer takes ``name``."""
    from napari.utils.notifications import show_warning

    old, kept = layer.name, free_name(viewer, f"{layer.name} (edited)")
    # still tagged with its image, so that its cells are measured in it (and its edits told
    # from the cells last written into it, WRITTEN), but in no role the plugin writes (as the
    # corrections added to training are kept)
    layer.metadata[OWNER_KEY] = {**owner_info(layer), "role": "corrections"}
    layer.name = kept
    show_warning(
        f"'{old}' holds your edits, so it is kept as '{kept}'; the new result is in "
        f"'{free_name(viewer, name)}'."
    )


def show_table(layer: Labels, table: Table) -> None:
    """Give ``layer`` the measurements as its features (hover shows them per cell)."""
    layer.features = {"index": table["label"], **table}
