"""Per-cell measurements: one row per cell, as scikit-image's ``regionprops_table`` gives them.

A table is a dict of equally long 1D arrays (column name to values), which is what
``regionprops_table`` returns, what napari's ``layer.features`` and pandas take, and what
:func:`napari_mutualseg.io.write_table` writes as CSV.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential

from .preprocess import read_here

__all__ = [
    "Table",
    "join_frames",
    "measure_cells",
    "measure_planes",
    "summarize",
    "with_frame_interval",
    "with_pixel_size",
]

Table = dict[str, np.ndarray]

_SHAPE_2D = ("eccentricity", "solidity")


def _unit_suffix(unit: str) -> str:
    """A unit as it can stand in a column name: ``µm`` -> ``um``."""
    return re.sub(r"[^0-9A-Za-z]+", "", unit.replace("µ", "u").replace("μ", "u")) or "unit"


def measure_cells(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    channel_names: Sequence[str] | None = None,
    pixel_size: Sequence[float] | None = None,
    unit: str = "um",
) -> Table:
    """Measure every cell of an instance label image.

    Parameters
    ----------
    labels : numpy.ndarray
        int labels (0 background), 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` (3D cells of a stack).
    image : numpy.ndarray, optional
        The intensities, shaped like ``labels`` or with channels first ``(C, ...)``; the mean
        and maximum intensity of every cell are measured in each channel.
    channel_names : sequence of str, optional
        Names of the channels in the column names (default ``0``, ``1``, ...).
    pixel_size : sequence of float, optional
        Physical size of a pixel along each axis of ``labels`` (``(y, x)`` or ``(z, y, x)``).
        When given, area (volume in 3D) and centroid are also reported in ``unit``.
    unit : str
        The unit of ``pixel_size``.

    Returns
    -------
    Table
        Columns ``label``, ``area_px`` (``volume_px`` in 3D), ``centroid_<axis>_px``, the
        bounding box ``bbox_<axis>0_px`` / ``bbox_<axis>1_px`` (half-open), in 2D
        ``eccentricity`` and ``solidity``, with a pixel size ``area_<unit>2`` /
        ``volume_<unit>3`` and ``centroid_<axis>_<unit>``, and per channel
        ``mean_intensity_<channel>`` and ``max_intensity_<channel>``. One row per cell, in
        label order. The values are those of scikit-image's ``regionprops_table``.

    Raises
    ------
    ValueError
        When the labels are no cell ids (a mask, fractions, negative ids; whole numbers
        stored as floats are taken), or the shapes of labels, image and pixel size do not
        fit together.
    """
    labels = _cell_ids(read_here(labels))
    if labels.ndim not in (2, 3):
        raise ValueError(f"Labels must be a 2D or 3D image, got shape {labels.shape}.")
    intensity = None
    if image is not None:
        intensity = read_here(image)
        if intensity.shape == labels.shape:
            intensity = intensity[None]
        if intensity.shape[1:] != labels.shape:
            raise ValueError(
                f"The image has shape {np.shape(image)}; it must have the labels' shape "
                f"{labels.shape}, or channels first (C, {', '.join(map(str, labels.shape))})."
            )
    ids = None
    if labels.size and int(labels.max()) >= labels.size:
        # ids of another tool, far apart: measured by rank, as the sums take memory per id
        # (the cells to check do the same, disagreement.spots_to_check)
        labels, _, ids = relabel_sequential(labels)
    if labels.ndim == 3:
        planes = (
            (plane, None if intensity is None else intensity[:, z])
            for z, plane in enumerate(labels)
        )
        table = measure_planes(
            planes, channel_names=channel_names, pixel_size=pixel_size, unit=unit
        )
    else:
        sums = _Sums()
        sums.add(0, labels, intensity)
        raw = sums.columns(2)
        # the shape of each cell, its second moments and convex hull: scikit-image's own
        raw.update(regionprops_table(labels, properties=_SHAPE_2D))
        table = _table(raw, 2, sums.channels, channel_names, pixel_size, unit)
    if ids is not None:
        table["label"] = ids[table["label"]].astype(np.int64)
    return table


def _cell_ids(labels: np.ndarray) -> np.ndarray:
    """``labels`` as whole numbers, refusing what holds no cell ids: a mask, fractions,
    negative ids. The one rule of cell tables and exports."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        raise ValueError(
            "These are a mask (True/False), not labels: give each cell its own number first, "
            "e.g. skimage.measure.label(mask)."
        )
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError(
                f"Labels of {labels.dtype} hold fractions (or NaN): give a label image, one "
                "whole number per cell and 0 for the background."
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"Labels must be whole numbers, got pixels of {labels.dtype}.")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(
            f"Labels hold negative values (down to {labels.min()}): cells are numbered from 1, "
            "the background is 0."
        )
    return labels


#: Pixels of a plane whose cells are found at once: the temporaries of a whole slide scan's
#: plane would take several times its labels' memory.
_BAND_PIXELS = 1 << 22


def _cell_pixels(labels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pixels of the cells of a 2D label image, a band of rows at a time: their labels,
    rows and columns."""
    rows = max(1, _BAND_PIXELS // max(1, labels.shape[1]))
    for start in range(0, labels.shape[0], rows):
        band = labels[start : start + rows]
        yy, xx = np.nonzero(band)
        yield band[yy, xx].astype(np.intp), yy + start, xx


class _Sums:
    """What a cell table adds up over the pixels of each cell, given a plane at a time:
    pixels, coordinate sums (exact integers, for centroids), bounding boxes and per channel
    the intensity totals and maxima; indexed by label."""

    def __init__(self) -> None:
        self.count = np.zeros(1, np.int64)
        self.sums = np.zeros((3, 1), np.int64)  # z, y, x
        self.low = np.zeros((3, 1), np.int64)
        self.high = np.zeros((3, 1), np.int64)
        self.total: np.ndarray | None = None
        self.peak: np.ndarray | None = None

    @property
    def channels(self) -> int | None:
        """Channels of the intensities given (None: none given)."""
        return None if self.total is None else len(self.total)

    def _grow(self, size: int) -> None:
        """Room for labels below ``size``."""
        grow = size - self.count.size
        if grow <= 0:
            return
        self.count = np.pad(self.count, (0, grow))
        self.sums = np.pad(self.sums, ((0, 0), (0, grow)))
        self.low = np.pad(self.low, ((0, 0), (0, grow)), constant_values=np.iinfo(np.int64).max)
        self.high = np.pad(self.high, ((0, 0), (0, grow)))
        if self.total is not None:
            self.total = np.pad(self.total, ((0, 0), (0, grow)))
            self.peak = np.pad(self.peak, ((0, 0), (0, grow)), constant_values=-np.inf)

    def add(self, z: int, labels: np.ndarray, image: np.ndarray | None) -> None:
        """Add plane ``z``: its 2D labels and intensities (``(Y, X)``, ``(C, Y, X)`` or
        None, the same in every plane)."""
        if image is not None:
            image = image[None] if image.ndim == 2 else image
            if self.total is None:
                self.total = np.zeros((len(image), self.count.size))
                self.peak = np.full((len(image), self.count.size), -np.inf)
        for ids, yy, xx in _cell_pixels(labels):
            if not ids.size:
                continue
            self._grow(int(ids.max()) + 1)
            size = self.count.size
            here = np.bincount(ids, minlength=size)
            self.count += here
            self.sums[0] += here * z
            for k, coords in ((1, yy), (2, xx)):
                # float weights: bincount converts integer ones slowly; exact below 2**53
                weights = coords.astype(np.float64)
                self.sums[k] += np.bincount(ids, weights, size).astype(np.int64)
                np.minimum.at(self.low[k], ids, coords)
                np.maximum.at(self.high[k], ids, coords + 1)
            seen = here > 0
            self.low[0][seen] = np.minimum(self.low[0][seen], z)
            self.high[0][seen] = z + 1
            if image is None:
                continue
            for c, values in enumerate(image[:, yy, xx].astype(np.float64)):
                self.total[c] += np.bincount(ids, values, size)
                np.maximum.at(self.peak[c], ids, values)

    def columns(self, ndim: int) -> dict[str, np.ndarray]:
        """The cells' columns as ``regionprops_table`` names them, for ``ndim``-D cells (2:
        the y and x of plane 0 only)."""
        present = np.flatnonzero(self.count)
        present = present[present > 0]
        n = self.count[present]
        raw = {"label": present, "area": n}
        for i, k in enumerate(range(3 - ndim, 3)):
            raw[f"centroid-{i}"] = self.sums[k][present] / n
            raw[f"bbox-{i}"] = self.low[k][present]
            raw[f"bbox-{i + ndim}"] = self.high[k][present]
        for c in range(self.channels or 0):
            key = "" if self.channels == 1 else f"-{c}"
            raw[f"intensity_mean{key}"] = self.total[c][present] / n
            raw[f"intensity_max{key}"] = self.peak[c][present]
        return raw


def _table(
    raw: dict,
    ndim: int,
    channels: int | None,
    channel_names: Sequence[str] | None,
    pixel_size: Sequence[float] | None,
    unit: str,
) -> Table:
    """The cell table of ``regionprops_table``'s columns (``raw``) for ``ndim``-D labels."""
    axes = "yx" if ndim == 2 else "zyx"
    size = "area" if ndim == 2 else "volume"
    table: Table = {"label": raw["label"].astype(np.int64)}
    table[f"{size}_px"] = raw["area"].astype(np.int64)  # a pixel count
    for i, axis in enumerate(axes):
        table[f"centroid_{axis}_px"] = raw[f"centroid-{i}"]
    for i, axis in enumerate(axes):
        table[f"bbox_{axis}0_px"] = raw[f"bbox-{i}"]
        table[f"bbox_{axis}1_px"] = raw[f"bbox-{i + ndim}"]
    for name in _SHAPE_2D:
        if name in raw:
            table[name] = raw[name]
    if pixel_size is not None:
        table = with_pixel_size(table, pixel_size, unit)
    if channels is not None:
        names = [str(c) for c in range(channels)] if channel_names is None else list(channel_names)
        if len(names) != channels:
            raise ValueError(f"Got {len(names)} channel names for {channels} channels.")
        # a name that several channels share (a fluorophore imaged twice) gets each channel's
        # index: its columns overwrote one another, and the first channel was lost
        names = [f"{n}_{c}" if names.count(n) > 1 else n for c, n in enumerate(names)]
        for c, name in enumerate(names):
            key = "" if channels == 1 else f"-{c}"
            table[f"mean_intensity_{name}"] = raw[f"intensity_mean{key}"]
            table[f"max_intensity_{name}"] = raw[f"intensity_max{key}"]
    return table


def measure_planes(
    planes: Iterable[tuple[np.ndarray, np.ndarray | None]],
    *,
    channel_names: Sequence[str] | None = None,
    pixel_size: Sequence[float] | None = None,
    unit: str = "um",
) -> Table:
    """Measure the 3D cells of a z-stack given a plane at a time, as :func:`measure_cells`
    measures the stack whole, so that neither labels nor image need to be whole in memory.

    Parameters
    ----------
    planes : iterable of (numpy.ndarray, numpy.ndarray or None)
        For each z position in order, its 2D labels and its intensities (``(Y, X)`` or
        channels first ``(C, Y, X)``; None for no intensities, then in every plane).
    channel_names, pixel_size, unit
        As in :func:`measure_cells` (``pixel_size`` is ``(z, y, x)``).

    Returns
    -------
    Table
        The columns of :func:`measure_cells` for 3D labels: volume, centroid, bounding box
        and per channel the mean and maximum intensity (summed in float64).
    """
    sums = _Sums()
    for z, (labels, image) in enumerate(planes):
        sums.add(z, _cell_ids(read_here(labels)), None if image is None else read_here(image))
    return _table(sums.columns(3), 3, sums.channels, channel_names, pixel_size, unit)


def with_pixel_size(table: Table, pixel_size: Sequence[float], unit: str = "um") -> Table:
    """A cell table with its sizes and centroids in physical units too.

    Parameters
    ----------
    table : Table
        From :func:`measure_cells` (in pixels; a time series' table with its ``t`` column
        alike).
    pixel_size : sequence of float
        Physical size of a pixel along each axis of the cells: ``(y, x)`` for 2D cells,
        ``(z, y, x)`` for 3D cells (a table with ``centroid_z_px``).
    unit : str
        The unit of ``pixel_size``.

    Returns
    -------
    Table
        A new table: ``area_<unit>2`` (``volume_<unit>3`` for 3D cells) and
        ``centroid_<axis>_<unit>`` after the pixel columns and before the intensities,
        replacing any physical columns the table had.

    Raises
    ------
    ValueError
        When ``pixel_size`` does not give one positive size per axis of the cells.

    Examples
    --------
    >>> table = {"label": np.array([1]), "volume_px": np.array([10]),
    ...          "centroid_z_px": np.array([2.0]), "centroid_y_px": np.array([4.0]),
    ...          "centroid_x_px": np.array([6.0])}
    >>> out = with_pixel_size(table, (2.0, 0.5, 0.5), "µm")
    >>> float(out["volume_um3"][0]), float(out["centroid_z_um"][0])
    (5.0, 4.0)
    """
    axes = "zyx" if "centroid_z_px" in table else "yx"
    spacing = np.asarray(pixel_size, np.float64)
    if spacing.shape != (len(axes),) or not (np.isfinite(spacing) & (spacing > 0)).all():
        raise ValueError(
            f"pixel_size must give one positive size per axis of the cells ({axes}), got "
            f"{tuple(pixel_size)}."
        )
    size = "volume" if axes == "zyx" else "area"
    suffix = _unit_suffix(unit)
    physical = {f"{size}_{suffix}{len(axes)}": table[f"{size}_px"] * float(np.prod(spacing))}
    for i, axis in enumerate(axes):
        physical[f"centroid_{axis}_{suffix}"] = table[f"centroid_{axis}_px"] * spacing[i]
    # physical columns go where measure_cells puts them: before the intensities
    pixels = {
        k: v
        for k, v in table.items()
        if not k.startswith(("mean_intensity_", "max_intensity_")) and not _is_physical(k)
    }
    rest = {k: v for k, v in table.items() if k not in pixels and not _is_physical(k)}
    return {**pixels, **physical, **rest}


def join_frames(frames: Sequence[tuple[int | None, Table]]) -> Table:
    """One table of the cells of several frames of a time series: each frame's rows, with
    the frame in a first column ``t``, in the order given.

    Parameters
    ----------
    frames : sequence of (int or None, Table)
        Each frame's number and its table (from :func:`measure_cells`, same columns); a
        number of None (an image without time) adds no ``t``.

    Returns
    -------
    Table
        The rows of every frame.
    """
    tables = [
        table if t is None else {"t": np.full(len(table["label"]), t, np.int64), **table}
        for t, table in frames
    ]
    if len(tables) == 1:
        return tables[0]
    return {k: np.concatenate([table[k] for table in tables]) for k in tables[0]}


def with_frame_interval(table: Table, seconds: float) -> Table:
    """A time series' cell table with each row's time in seconds, ``time_s``, after its frame
    ``t``: frame ``t`` was taken ``t * seconds`` after the first.

    Parameters
    ----------
    table : Table
        A time series' table, with its frame in ``t`` (a row per cell and frame).
    seconds : float
        The frame interval (:attr:`napari_mutualseg.images.AxisImage.frame_interval`).

    Returns
    -------
    Table
        A new table, its ``time_s`` replaced if it had one.

    Raises
    ------
    ValueError
        When the table has no ``t`` column or ``seconds`` is not a positive number.

    Examples
    --------
    >>> table = {"t": np.array([0, 1, 2]), "label": np.array([1, 1, 1])}
    >>> with_frame_interval(table, 0.1)["time_s"].tolist()
    [0.0, 0.1, 0.2]
    """
    if "t" not in table:
        raise ValueError(
            "The table has no frame column 't': only a time series' table gets a time."
        )
    interval = float(seconds)
    if not (np.isfinite(interval) and interval > 0):
        raise ValueError(
            f"The frame interval must be a positive number of seconds, got {seconds}."
        )
    # to 12 digits, so that frame 3 at 0.1 s is 0.3 s and not 0.30000000000000004; each
    # frame once, not each of its cells
    frames, row_frame = np.unique(np.asarray(table["t"]), return_inverse=True)
    times = np.array([float(f"{v:.12g}") for v in frames * interval])[row_frame.ravel()]
    out: Table = {}
    for key, values in table.items():
        if key != "time_s":
            out[key] = values
        if key == "t":
            out["time_s"] = times.astype(np.float64)
    return out


def _is_physical(column: str) -> bool:
    """Whether ``column`` is a size or centroid in physical units (not pixels)."""
    return column.startswith(("area_", "volume_", "centroid_")) and not column.endswith("_px")


def summarize(name: str, table: Table, *, tracked: bool = True) -> dict[str, float | int | str]:
    """One summary row of an image's cell table: count, median and mean size, mean intensities.

    Parameters
    ----------
    name : str
        The image's name (first column of the summary).
    table : Table
        From :func:`measure_cells`. A time series' table (a row per cell and frame, its frame
        in ``t``, its time in ``time_s`` when known) counts its frames in ``frames``; sizes and
        intensities are over all its rows.
    tracked : bool
        Whether a time series' labels were kept from frame to frame: its cells are then
        counted by label (a tracked cell is one cell in every frame). Untracked, each frame
        numbers its cells anew, and every row is counted.
    """
    once = "t" in table and tracked
    cells = len(np.unique(table["label"])) if once else len(table["label"])
    row: dict[str, float | int | str] = {"image": name, "cells": cells}
    if "t" in table:
        row["frames"] = len(np.unique(table["t"]))
    for key, values in table.items():
        if key.startswith(("area", "volume")):
            row[f"median_{key}"] = float(np.median(values)) if len(values) else float("nan")
        elif key.startswith("mean_intensity_"):
            row[key] = float(np.mean(values)) if len(values) else float("nan")
    return row
