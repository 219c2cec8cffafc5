"""Menu commands: Layers > Segment > Boxes → ellipse supervision."""

from __future__ import annotations

import napari
from napari.layers import Image, Shapes
from napari.types import LayerDataTuple

from .layers import class_layer_kwargs, free_name, owner_tag, transform_kwargs
from .prepare import prepare_supervision, supervision_to_update, with_edits


def boxes_to_supervision(
    image: Image, boxes: Shapes, viewer: napari.Viewer | None = None
) -> LayerDataTuple | None:
    """Boxes → ellipse supervision: a Labels layer of the classes inside each box.

    Every cell of the image is assumed boxed: outside the boxes is background. The result can
    be corrected with napari's paint tools and trained on in the dock widget, which keeps the
    painted pixels. Run again after drawing more boxes: the supervision is made again from
    all boxes and the painted pixels are kept.

    Parameters
    ----------
    image : napari.layers.Image
        A 2D image, with channels, z or time (axes as in the dock widget), or RGB.
    boxes : napari.layers.Shapes
        Rectangles around cells.
    viewer : napari.Viewer, optional
        The viewer the result goes to; napari gives the menu command the viewer it was run
        in (which need not be the current one). Default: the current viewer.

    Returns
    -------
    napari.types.LayerDataTuple or None
        ``(classes, {"name": "<image> supervision", ...}, "labels")``, or ``None`` (after a
        notification) when the inputs cannot be used.
    """
    from napari.utils.notifications import show_error, show_warning

    if image is not None and boxes is None:
        # in this widget's words: the panel's advice names its own 'New boxes layer' button
        show_error(
            "No Shapes layer to take the boxes from: add one (File > New Layer > Shapes), "
            "draw a rectangle around each cell (shortcut R), then pick it under 'boxes'."
        )
        return None
    try:
        record = prepare_supervision(image, boxes)
    except ValueError as err:
        show_error(str(err))
        return None
    # napari updates a layer of the returned name in place: the name must be free, or the
    # plugin's own, in the viewer the result goes to
    viewer = viewer if viewer is not None else napari.current_viewer()
    existing = supervision_to_update(viewer, image, record)
    for note in record.notes:
        show_warning(note)
    if existing is not None:
        data, _ = with_edits(existing, record)
        name = existing.name  # napari updates the layer of the same name in place
    else:
        data, name = record.classes(), free_name(viewer, f"{image.name} supervision")
    meta = {
        "name": name,
        "metadata": owner_tag("supervision", image, record=record),
        **class_layer_kwargs(),
        **transform_kwargs(image, data.ndim),
    }
    return (data, meta, "labels")


# magicgui builds the menu widget from these: they must be real types, not postponed strings.
boxes_to_supervision.__annotations__ = {
    "image": Image,
    "boxes": Shapes,
    "viewer": napari.Viewer,
    "return": LayerDataTuple,
}
