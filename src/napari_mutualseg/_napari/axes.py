"""What each axis of an image layer is, and where a box drawn on it belongs.

The axes are the layer's own axis labels when they are axis letters: the *Axes* field of the
Data panel sets them (:func:`set_layer_axes`), and so can readers and scripts
(``viewer.add_image(data, axis_labels=("c", "y", "x"))``); napari then names its sliders
after them. Otherwise the layer's shape decides where it is unambiguous: a 2D layer is ``YX``
and an RGB layer holds colours. A 3D layer without names is taken as a stack of planes
(``ZYX``, as napari shows it) and the user is told so; a layer with more axes must be named.

Results are laid out on the layer's axes without channels, so a channel axis comes first
(where napari's ``channel_axis`` puts it when it splits a file, and where the result layers
align with it): a supervision or cells layer then lines up with every channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..images import AxisImage, parse_axes
from ..ome import in_one_unit, unit_symbol

if TYPE_CHECKING:
    from napari.layers import Image, Layer


@dataclass(frozen=True)
class LayerAxes:
    """The axes of an image layer's data.

    Attributes
    ----------
    axes : str
        One letter per axis of the layer's data, in the data's order (``C`` first when
        present, ``YX`` last; an RGB layer's colours are not named here).
    shape : tuple of int
        The layer's data shape.
    rgb : bool
        The layer is RGB(A): its last axis holds colours.
    note : str
        What was assumed, for the user ("" when the axes were known).
    channel_names : tuple of str, optional
        One name per channel (or colour), from the layer's metadata where a reader put them
        (``layer.metadata["channel_names"]``), so that channels can be picked by name.
    name : str
        The layer's name, for messages about its planes.
    pixel_size : tuple, optional
        ``(sizes, unit)``: the physical size of a pixel along each spatial axis of the cells
        (``(y, x)``, or ``(z, y, x)`` for a stack) in one length unit, where it is known.
    frame_interval : float, optional
        A time series' time from one frame to the next, in seconds, where the file gave it
        (the reader puts it in ``layer.metadata["pixel_size"]["T"]``).
    """

    axes: str
    shape: tuple[int, ...]
    rgb: bool = False
    note: str = ""
    channel_names: tuple[str, ...] | None = None
    name: str = "image"
    pixel_size: tuple[tuple[float, ...], str] | None = None
    frame_interval: float | None = None

    @property
    def label_axes(self) -> str:
        """Axes of the layers that show results: the data's, without channels."""
        return self.axes.replace("C", "")

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of the layers that show results: the data's, without channels or colours."""
        sizes = self.shape[: len(self.axes)]
        return tuple(n for a, n in zip(self.axes, sizes, strict=True) if a != "C")

    @property
    def plane_axes(self) -> str:
        """The axes that number the 2D planes (time, z), in order."""
        return "".join(a for a in self.axes if a in "TZ")

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (1 for a single image)."""
        return int(np.prod(self.label_shape[:-2], dtype=int))

    @property
    def stacked(self) -> bool:
        """Whether the image has more than its 2D plane (planes are numbered)."""
        return bool(self.plane_axes)

    def _position(self, index: int) -> tuple[int, ...]:
        """The (time, z) indices of plane ``index``; () for an image of one plane."""
        if not self.stacked:
            return ()
        return tuple(int(i) for i in np.unravel_index(index, self.label_shape[:-2]))

    def where(self, index: int) -> str:
        """Plane ``index`` for people, as napari's sliders number it: ``"z-plane 3"``,
        ``"time point 2, z-plane 5"`` ("" for an image of one plane)."""
        words = {"T": "time point", "Z": "z-plane"}
        position = zip(self.plane_axes, self._position(index), strict=True)
        return ", ".join(f"{words[a]} {i}" for a, i in position)

    def image(self, data: Any) -> AxisImage:
        """The layer's data (shaped as :attr:`shape`) as an image, lazily, with what is known
        of it: channel names, pixel size and frame interval.

        It is called after the layer in the core's messages, e.g. "'nuclei' has pixels of
        2 µm", and knows its pixel size so that the core can warn of models trained on other
        pixels and record the size of the pixels they train on.
        """
        return self._image(data, self.axes + ("C" if self.rgb else ""), f"'{self.name}'")

    def plane(self, data: Any, index: int) -> AxisImage:
        """Plane ``index`` (counted over time and z) as an image with its channels and pixel
        size, lazily.

        It is called after the layer (and the plane, in a stack) in the core's messages, e.g.
        "'nuclei' (z-plane 3) is constant".
        """
        channel_first = self.axes[0] == "C"
        key = (slice(None),) * channel_first + self._position(index)
        axes = ("C" if channel_first else "") + "YX" + ("C" if self.rgb else "")
        where = self.where(index)
        name = f"'{self.name}'" + (f" ({where})" if where else "")
        return self._image(data[key], axes, name)

    def _image(self, data: Any, axes: str, name: str) -> AxisImage:
        """``data`` with ``axes`` as an image of this layer (its steps along axes that
        ``data`` lacks are left out by the image)."""
        steps: dict[str, float] = {}
        unit = None
        if self.pixel_size is not None:
            sizes, unit = self.pixel_size
            steps = dict(zip([a for a in self.axes if a in "ZYX"], sizes, strict=True))
        if self.frame_interval is not None:
            steps["T"] = self.frame_interval
        return AxisImage.from_array(
            data,
            axes,
            rgb=self.rgb,
            channel_names=self.channel_names,
            pixel_size=steps,
            unit=unit,
            name=name,
        )

    def plane_of(self, point: np.ndarray) -> int:
        """The plane a point of the layer's data coordinates lies on (rounded)."""
        if not self.stacked:
            return 0
        leading = [c for a, c in zip(self.axes[:-2], point, strict=False) if a != "C"]
        index = tuple(int(np.round(c)) for c in leading)
        if any(not 0 <= i < n for i, n in zip(index, self.label_shape[:-2], strict=True)):
            return -1
        return int(np.ravel_multi_index(index, self.label_shape[:-2]))

    def data_point(self, plane: int | None, yx: tuple[float, float]) -> tuple[float, ...]:
        """A point of plane ``plane`` in the layer's data coordinates (on channel 0)."""
        where = self._position(plane or 0)
        return (0.0,) * (self.axes[0] == "C") + tuple(float(i) for i in where) + tuple(yx)

    def describe(self) -> str:
        """The axes for people, e.g. ``"CZYX (2 channels, 12 z-planes)"``."""
        sizes = dict(zip(self.axes, self.shape, strict=False))
        words = {"C": "channels", "T": "time points", "Z": "z-planes"}
        parts = [f"{sizes[a]} {w}" for a, w in words.items() if a in sizes]
        parts += ["RGB colours"] if self.rgb else []
        return self.axes + (f" ({', '.join(parts)})" if parts else "")


def layer_axes(layer: Image, given: str = "") -> LayerAxes:
    """The axes of ``layer``: ``given`` (letters, e.g. ``"CYX"``), else the layer's own.

    Raises
    ------
    ValueError
        When the axes cannot be known or cannot be used; the message says what to set.
    """
    data = layer.data[0] if layer.multiscale else layer.data  # a pyramid: its full level
    shape = tuple(int(n) for n in data.shape)
    rgb = bool(layer.rgb)
    ndim = len(shape) - rgb
    note = ""
    if given.strip():
        axes = parse_axes(given, ndim, f"'{layer.name}'")
    elif (named := _named(layer.axis_labels[-ndim:])) is not None:
        axes = named
    elif ndim == 2:
        axes = "YX"
    elif ndim == 3:
        axes = "ZYX"
        note = (
            f"'{layer.name}' has three axes {shape} without names: it is taken as a stack of "
            "2D planes (Z, Y, X). If its first axis holds channels or time points, set Axes to "
            "CYX or TYX."
        )
    else:
        raise ValueError(
            f"'{layer.name}' has {ndim} axes {shape[:ndim]} without names: set Axes to say "
            "what each one is, e.g. CZYX (channels, z), TZYX (time, z) or TYX."
        )
    if rgb and "C" in axes:
        raise ValueError(
            f"'{layer.name}' is RGB: its colours are its channels. Leave C out of Axes."
        )
    if axes[-2:] != "YX":
        raise ValueError(f"Axes {axes} of '{layer.name}': Y and X must be the last two axes.")
    if axes.find("T") > axes.find("Z") >= 0:
        raise ValueError(
            f"Axes {axes} of '{layer.name}': time must come before z (TZYX), as the result "
            "layers are laid out."
        )
    if "C" in axes[1:]:
        raise ValueError(
            f"Axes {axes} of '{layer.name}': the channel axis must come first, so that the "
            "result layers line up with every channel. Open the file with napari-mutualseg's "
            "reader (File > Open, napari-mutualseg when napari asks), which puts its channels "
            "first, or with its channels as separate layers (napari's channel_axis), or move "
            "the axis first (numpy.moveaxis)."
        )
    names = _channel_names(layer, axes, shape, rgb)
    return LayerAxes(
        axes,
        shape,
        rgb,
        note,
        names,
        str(layer.name),
        layer_pixel_size(layer, axes),
        _frame_interval(layer) if "T" in axes else None,
    )


def _frame_interval(layer: Layer) -> float | None:
    """The frame interval in seconds the plugin's reader put in the layer's metadata."""
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    known = meta.get("pixel_size")
    step = known.get("T") if isinstance(known, dict) else None
    try:
        return float(step) if step is not None and float(step) > 0 else None
    except (TypeError, ValueError):  # metadata a script wrote: no interval
        return None


def layer_pixel_size(layer: Layer, axes: str) -> tuple[tuple[float, ...], str] | None:
    """The physical size of a pixel of ``layer`` (an image, or the cells found in one) along
    each spatial axis of its cells, and its unit, where it is known; else None.

    ``axes`` names each axis of the layer's data (e.g. ``"TZYX"``).

    Known means a length unit for every one of those axes: napari's ``units`` of the layer
    (in the unit of x where they differ, :func:`~napari_mutualseg.ome.in_one_unit`), or, for
    a layer in pixels, the unit a reader put in its metadata with a size for each axis (the
    layer's scale, as set from it).
    """
    letters = [a for a in axes if a in "ZYX"]
    where = [axes.index(a) for a in letters]
    if any(i >= len(layer.scale) for i in where):
        return None
    scale = [abs(float(layer.scale[i])) for i in where]
    units = getattr(layer, "units", None)  # napari before 0.6 has no units on layers
    units = [unit_symbol(str(units[i])) for i in where] if units else []
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    try:
        if units and all(units):
            steps = {a: (s, u) for a, s, u in zip(letters, scale, units, strict=True)}
            sizes, unit = in_one_unit(steps)
            return tuple(sizes[a] for a in letters), unit
        known = meta.get("pixel_size")
        unit = unit_symbol(meta.get("unit"))
        if unit and isinstance(known, dict) and all(a in known for a in letters):
            return tuple(scale), unit
    except ValueError:  # a unit that is not a length: the cells stay in pixels
        pass
    return None


def _channel_names(
    layer: Image, axes: str, shape: tuple[int, ...], rgb: bool
) -> tuple[str, ...] | None:
    """The names of the layer's channels (or colours) in its metadata, as the plugin's reader
    puts them; ``None`` when there are none or they do not fit, e.g. one channel of a file
    that napari split into a layer per channel keeps the names of all of them."""
    names = layer.metadata.get("channel_names") if layer.metadata else None
    if rgb:
        count = shape[-1]
    elif "C" in axes:
        count = shape[axes.index("C")]
    else:
        return None
    if not isinstance(names, (list, tuple)) or len(names) != count:
        return None
    return tuple(str(n) for n in names)


def _named(labels: Any) -> str | None:
    """The axes a layer's axis labels name (``"c"``, ``"z"``, ``"y"``, ``"x"``, ``"t"``,
    ``"time"``, ``"channel"``…), or ``None`` when they do not name them all."""
    words = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    letters = [words.get(str(label).strip().lower()) for label in labels]
    if None in letters or len(set(letters)) != len(letters):
        return None
    return "".join(letters)


def set_layer_axes(layer: Image, text: str) -> None:
    """Name the axes of ``layer`` (e.g. ``"CYX"``) in its axis labels; ``""`` forgets them.

    Raises
    ------
    ValueError
        When the letters do not fit the layer; nothing is changed then.
    """
    if text.strip():
        labels = tuple(a.lower() for a in layer_axes(layer, text).axes)
    else:
        labels = tuple(str(k - layer.ndim) for k in range(layer.ndim))  # napari's defaults
    layer.axis_labels = labels
