"""Open image files in napari with their axes (the reader contribution).

A file is read as the command line and the Python API read it
(:meth:`napari_mutualseg.images.AxisImage.from_file`): axes, channel names and pixel size
from its metadata (ImageJ and OME-TIFF, OME-Zarr, CZI / ND2 / LIF with the ``bioio`` extra),
large files lazily. The layer gets the axes as its axis labels (which the dock widget reads
and napari names its sliders after), the channel axis first, the pixel size as its scale. A
time series' frame interval is in the layer's metadata (``pixel_size["T"]``, in seconds) and
in what is said on opening; its time axis keeps a step of one frame.
A file whose axes are not written in it opens as stored, and a warning says to set its axes;
what was read, and what the file left unsaid (a pixel size left out), is said on opening.
Label files this package wrote (cells, a supervision) open as Labels layers, a supervision
in its class colours, so that its paint can be reused or a result checked.

Boxes drawn in Fiji (a ROI Manager's ``RoiSet.zip`` or one ``.roi``) or QuPath (*Export
objects as GeoJSON*, ``.geojson`` or ``.json``), and CSV box tables (napari's Shapes CSV
of rectangles and ellipses, ``y0,x0,y1,x1`` and regionprops tables), open as a Shapes
layer the dock widget takes as its boxes, read by
:func:`~napari_mutualseg.box_tables.read_box_table`: each box on its plane of the image
open in the viewer (the selected image, else the top one), with that image's pixel size,
as the command line lays them on an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..box_tables import GEOJSON_SUFFIXES
from ..io import BIOIO_SUFFIXES, TIFF_SUFFIXES, image_stem, written_as
from ..readers import AxesUnknownError, is_zarr

if TYPE_CHECKING:
    from napari.layers import Image

    from ..box_tables import BoxKey
    from ..boxes import Box
    from ..images import AxisImage
    from .axes import LayerAxes

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader of ``path`` when it is a TIFF, an OME-Zarr store or a bioio format."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if p.suffix.lower() in (*TIFF_SUFFIXES, *BIOIO_SUFFIXES) or is_zarr(p):
        return read_layers
    return None


def get_box_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader of ``path`` when it holds boxes drawn in Fiji (a ``.roi``, or a ``.zip``
    of ROIs: a ROI Manager's set) or QuPath (``.geojson`` or ``.json`` of QuPath's
    objects), or a CSV box table of one image; ``None`` for any other zip, JSON or CSV,
    which other readers open."""
    if isinstance(path, list):
        return None
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".roi" or (suffix == ".zip" and _roi_set(p)):
        return read_boxes
    if suffix in GEOJSON_SUFFIXES and _qupath_objects(p):
        return read_boxes
    if suffix == ".csv" and _box_table(p):
        return read_boxes
    return None


def _roi_set(path: Path) -> bool:
    """Whether ``path`` is a zip of ImageJ ROIs, as the ROI Manager saves them."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names) and all(n.lower().endswith(".roi") for n in names)


def _qupath_objects(path: Path) -> bool:
    """Whether ``path`` holds QuPath's objects: GeoJSON features, each with the
    ``objectType`` QuPath writes in its properties (``object_type`` in older releases)."""
    import json

    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if isinstance(data, dict):
        data = data.get("features") if data.get("type") == "FeatureCollection" else [data]
    return (
        isinstance(data, list)
        and bool(data)
        and all(
            isinstance(f, dict)
            and isinstance(f.get("properties"), dict)
            and bool({"objectType", "object_type"} & set(f["properties"]))
            for f in data
        )
    )


def _box_table(path: Path) -> bool:
    """Whether ``path`` is a CSV table of one image's boxes that
    :func:`~napari_mutualseg.box_tables.read_box_table` reads: napari's Shapes CSV of
    rectangles and ellipses (napari's own reader opens it in pixels, off an image with a
    pixel size), a ``y0,x0,y1,x1`` or regionprops table. A table of several images' boxes
    (an ``image`` column) is left out: which of them belong to the image open is not
    known."""
    from ..box_tables import read_box_table

    try:
        table = read_box_table(path)
    except (OSError, ValueError):
        return False
    return not any(isinstance(key, str) for key in table)


def read_boxes(path: str) -> list[LayerData]:
    """The boxes of a Fiji ROI set, QuPath GeoJSON or box table as one Shapes layer, on the
    planes of the image open in the viewer (see :func:`box_layer`); what was done, in a
    notification. A file of other shapes (polygons, freehand, points) is refused with their
    names."""
    from napari.utils.notifications import show_info

    image = _viewer_image()
    layer = box_layer(path, image)
    show_info(layer[1]["metadata"]["note"])
    return [layer]


def _viewer_image() -> Image | None:
    """The image the boxes are laid on: of the current viewer's images (not the plugin's
    own maps), the selected one, else the top one; None without any. napari gives a reader
    no viewer, and boxes are opened onto the image they were drawn on."""
    import napari
    from napari.layers import Image

    from .layers import owner_info

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    images = [x for x in viewer.layers if isinstance(x, Image) and owner_info(x) is None]
    active = viewer.layers.selection.active
    return active if active in images else (images[-1] if images else None)


def box_layer(path: str | os.PathLike, image: Image | None = None) -> LayerData:
    """The boxes of ``path``, a Fiji ROI set or ROI, QuPath GeoJSON or CSV box table (read
    by :func:`~napari_mutualseg.box_tables.read_box_table`), as a Shapes layer over
    ``image``.

    Each box is a rectangle or ellipse (rotated ones too) on its plane: the layer has the
    image's axes without its channels (``(t, z, y, x)`` of a time series of stacks), as the
    result layers do, so the boxes show whichever channel is shown, and it takes the image's
    scale and place, so the boxes lie on the pixels they were drawn on. Without an image,
    the layer is in pixels, its leading coordinates those of the table (a plane, or ``(t, z)``).

    Parameters
    ----------
    path : str or path-like
        The box file.
    image : napari.layers.Image, optional
        The image the boxes were drawn on.

    Returns
    -------
    tuple
        ``(data, kwargs, "shapes")``; ``kwargs["metadata"]["note"]`` says where the boxes went.

    Raises
    ------
    ValueError
        When the file holds other shapes, or its planes do not fit the image.
    """
    from ..box_tables import read_box_table
    from .layers import transform_kwargs

    p = Path(path)
    kwargs: dict[str, Any] = {
        "name": p.name,
        "edge_color": "yellow",
        "face_color": "transparent",
        "edge_width": 1.5,
    }
    if image is None:
        table = read_box_table(p)
        placed = [(_table_position(key), box) for key, boxes in table.items() for box in boxes]
        # ImageJ's stack index counts the image's channels, which only the image says
        counted = any(index for (_, _, index), _ in table.positions)
        unknown = ", so their stack positions are read as of an image without channels"
        note = (
            f"{p.name}: {len(placed)} boxes in pixels; no image was open"
            f"{unknown if counted else ''}. Open the image first, then the boxes, to lay them "
            "on its planes and pixel size."
        )
    else:
        placed, where = _image_positions(p, image)
        ndim = len(where.label_shape) if where.stacked else 2
        kwargs.update(transform_kwargs(image, ndim))
        planes = len({lead for lead, _ in placed})
        on = f"{planes} plane(s) of " if where.stacked else ""
        note = f"{p.name}: {len(placed)} boxes on {on}'{image.name}' ({where.describe()})."
    # a layer's shapes share its leading axes: fewer leading coordinates come first as 0
    lead = max((len(lead) for lead, _ in placed), default=0)
    data = [
        np.column_stack([np.tile((0.0,) * (lead - len(at)) + at, (4, 1)), box.corners])
        for at, box in placed
    ]
    kwargs["shape_type"] = [box.kind for _, box in placed]
    kwargs["ndim"] = lead + 2
    kwargs["metadata"] = {"source": str(p), "note": note}
    return data, kwargs, "shapes"


def _table_position(key: BoxKey) -> tuple[float, ...]:
    """The leading coordinates of a Fiji or QuPath table's key: none for a 2D image's, the
    plane, or ``(t, z)``."""
    if key is None:
        return ()
    return tuple(float(k) for k in (key if isinstance(key, tuple) else (key,)))


def _image_positions(
    path: Path, image: Image
) -> tuple[list[tuple[tuple[float, ...], Box]], LayerAxes]:
    """Each box of ``path`` with its plane's leading coordinates in ``image``'s axes
    without channels, planes matched by ``table_planes`` (a Fiji time series
    without z: its ``(t, 0)`` is time point t; a Fiji ROI on every slice of a stack is
    refused there); and those axes."""
    from ..box_tables import read_box_table, table_planes
    from ..images import AxisImage
    from .axes import layer_axes

    try:
        where = layer_axes(image)
    except ValueError as err:
        raise ValueError(f"{err} Then open {path.name} again.") from None
    # QuPath writes no plane for objects on the first: on a stack, they lie there
    table = read_box_table(path, first_plane=where.stacked)
    data = image.data[0] if image.multiscale else image.data
    pixels = AxisImage.from_array(data, where.axes + "C" * where.rgb, rgb=where.rgb)
    flat = table_planes(table, pixels, f"'{image.name}'")
    placed = []
    for plane, boxes in flat.items():
        if plane is not None and not 0 <= plane < where.n_planes:
            raise ValueError(
                f"{path.name} has boxes on plane {plane}, but '{image.name}' has "
                f"{where.n_planes} ({where.describe()}): select the image the boxes were "
                "drawn on, then open them again."
            )
        # the plane's position without the channel, where the result layers put it
        at = where.data_point(plane, (0.0, 0.0))[int(where.axes[0] == "C") : -2]
        placed += [(at, box) for box in boxes]
    return placed, where


def read_layers(path: str) -> list[LayerData]:
    """One image layer of the file, its axes in its axis labels and its pixel size as scale;
    what was read, with the notes on what the file did not say, in a notification."""
    from napari.utils.notifications import show_info, show_warning

    from ..images import AxisImage

    name = image_stem(path)
    try:
        image = AxisImage.from_file(path)
    except AxesUnknownError as err:
        # as stored, for the user to name in the dock widget (a file that cannot be read at
        # all raises: napari says why); said in the panel's words, not the command line's
        shape = tuple(err.data.shape)
        show_warning(
            f"{Path(path).name} does not say what its {len(shape)} axes {shape} are: it is "
            "open as stored. In the Mutual segmentation panel, pick it under Image and set "
            "Axes, one letter per axis: ZYX (a z-stack), CYX (channels), TYX (a time "
            "series), CZYX or TZYX."
        )
        return [(err.data, {"name": name}, "image")]
    if image.notes:
        # as the command line says it: where the axes came from, a pixel size left out
        show_info(image.describe(notes=True))
    layer = image_layer(image, name)
    kind = written_as(path)
    if kind in ("labels", "supervision"):
        from .layers import class_layer_kwargs

        data, kwargs, _ = layer
        del kwargs["rgb"]
        if kind == "supervision":
            kwargs.update(class_layer_kwargs())
        return [(data, kwargs, "labels")]
    return [layer]


def image_layer(image: AxisImage, name: str) -> LayerData:
    """``image`` as a layer: its axes as axis labels (the channel axis first, RGB colours
    last) and its pixel size as scale, as the reader opens a file."""
    data, axes = image.data, image.axes
    named = axes.replace("C", "")  # the axes napari labels: RGB colours are not one of them
    if "C" in axes:
        # colours last (napari's RGB), other channels first (where results line up)
        data = np.moveaxis(data, axes.index("C"), -1 if image.rgb else 0)
        named = named if image.rgb else "C" + named
    meta = {
        "channel_names": image.channel_names,
        "pixel_size": dict(image.pixel_size),
        "unit": image.unit,
        "notes": list(image.notes),
    }
    kwargs = {
        "name": name,
        "rgb": image.rgb,
        "axis_labels": tuple(a.lower() for a in named),
        # a step of one frame along T: time points are counted, as box tables and results
        # count them
        "scale": tuple(1.0 if a == "T" else float(image.pixel_size.get(a, 1.0)) for a in named),
        "metadata": meta,
        **_units(image, named),
    }
    return data, kwargs, "image"


def _units(image: AxisImage, named: str) -> dict[str, Any]:
    """The layer's units: the file's length unit on the axes whose pixel size it gives, so
    that napari's scale bar and cursor read in µm; none when napari does not know the unit."""
    import pint  # napari's own units library, with its registry

    sized = [a for a in named if a in "ZYX" and a in image.pixel_size]
    if not image.unit or not sized:
        return {}
    try:
        pint.get_application_registry().Unit(image.unit)
    except Exception:  # pint's errors for a name it does not know have no common base
        return {}
    return {"units": tuple(image.unit if a in sized else "pixel" for a in named)}
