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
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import BIOIO_SUFFIXES, TIFF_SUFFIXES, image_stem, written_as
from ..readers import AxesUnknownError, is_zarr

if TYPE_CHECKING:
    from ..images import AxisImage

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader of ``path`` when it is a TIFF, an OME-Zarr store or a bioio format."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if p.suffix.lower() in (*TIFF_SUFFIXES, *BIOIO_SUFFIXES) or is_zarr(p):
        return read_layers
    return None


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
        # all raises: napari says why)
        show_warning(f"{Path(path).name}: {err} In the dock widget, set Axes instead.")
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
