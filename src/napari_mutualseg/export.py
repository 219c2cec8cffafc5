"""Cells for the next tool: outlines as Fiji ROI sets and QuPath GeoJSON, tables as CSV.

The functions here make the files' contents; :mod:`napari_mutualseg.files` writes them (safely).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
from scipy import ndimage as ndi

from .measure import Table

__all__ = ["cell_outlines", "fiji_roi_zip", "qupath_geojson", "table_csv"]


def _label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` as whole numbers, refusing what holds no cell ids: a mask, fractions,
    negative ids."""
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


def cell_outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """The outline of every cell of a 2D label image.

    Parameters
    ----------
    labels : numpy.ndarray
        2D instance labels: one whole number per cell (any size: ids need not follow one
        another), 0 the background.

    Returns
    -------
    dict of int to numpy.ndarray
        Label to an ``(N, 2)`` array of ``(x, y)`` vertices along the outer edge of the
        cell's pixels, a corner wherever the edge turns (the first vertex is not repeated),
        in the pixel-edge coordinates of ImageJ and QuPath: pixel ``(i, j)`` covers
        ``[j, j + 1) x [i, i + 1)``, where napari centres it on ``(i, j)``. The polygon
        encloses exactly the cell's pixels, so its area is the cell's pixel count. Holes are
        not traced; a cell in several pieces (touching at most by a corner) is outlined by
        its largest piece.

    Raises
    ------
    ValueError
        For labels that are not 2D, a mask, fractions or negative numbers.
    """
    labels = _label_array(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"Outlines are drawn on 2D labels, got shape {labels.shape}: give one plane, or "
            "a Fiji ROI set of the stack (fiji_roi_zip with axes)."
        )
    ids, dense = None, labels
    if labels.size and int(labels.max()) > max(4 * labels.size, 1 << 16):
        # find_objects takes room for every id up to the largest: number the cells 1..n
        ids, dense = np.unique(labels, return_inverse=True)
        dense = dense.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
        ids = ids[1:] if ids[0] == 0 else ids
    out = {}
    for index, sl in enumerate(ndi.find_objects(dense), start=1):
        if sl is None:
            continue
        k = index if ids is None else int(ids[index - 1])
        pieces, n = ndi.label(dense[sl] == index)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mask = pieces == 1 + int(np.argmax(sizes))
        else:
            mask = pieces > 0
        outline = _pixel_edges(mask)
        out[k] = outline + np.array([sl[1].start, sl[0].start], dtype=np.float64)
    return out


def _pixel_edges(mask: np.ndarray) -> np.ndarray:
    """The outer boundary of a 4-connected region of ``mask`` along its pixels' edges.

    ``(x, y)`` corners, clockwise on screen (y down) from the top-left corner of the
    region's first pixel, the region on the right of every step.
    """
    inside = np.pad(mask, 1)
    steps: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # each pixel edge with the outside across it, directed to keep the pixel on its right
    for (dy, dx), (start, end) in (
        ((-1, 0), ((0, 0), (1, 0))),  # top edge, walked right
        ((0, 1), ((1, 0), (1, 1))),  # right edge, walked down
        ((1, 0), ((1, 1), (0, 1))),  # bottom edge, walked left
        ((0, -1), ((0, 1), (0, 0))),  # left edge, walked up
    ):
        outside = ~np.roll(inside, (-dy, -dx), axis=(0, 1))
        for r, c in zip(*np.nonzero(inside & outside), strict=True):
            steps.setdefault((c + start[0], r + start[1]), []).append(
                (end[0] - start[0], end[1] - start[1])
            )
    r0, c0 = (int(i[0]) for i in np.nonzero(inside))
    first = (c0, r0)
    corners = [first]
    here, step = first, (1, 0)
    while True:
        here = (here[0] + step[0], here[1] + step[1])
        if here == first:
            break
        ways = steps[here]
        # where two pixels of the region touch only by this corner, turn right: pieces stay
        # apart (4-connected) and the outline never crosses itself (it may touch itself here)
        right = (-step[1], step[0])
        turn = right if len(ways) > 1 and right in ways else ways[0]
        if turn != step:
            corners.append(here)
        step = turn
    # -1: the margin added above
    return np.asarray(corners, dtype=np.float64) - 1


def fiji_roi_zip(labels: np.ndarray, axes: str | None = None) -> bytes:
    """A Fiji / ImageJ ROI set (the ``.zip`` the ROI Manager opens), one polygon per cell.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels: 2D, or a z-stack or time series of planes (``axes``).
    axes : str, optional
        The axes of ``labels`` from ``TZYX`` (``"ZYX"``, ``"TYX"``, ``"TZYX"``), needed for
        more than two. Each plane's cells then carry their place in the stack: ImageJ's stack
        position (1-based, planes over z within each time point) and their z slice and time
        frame, and ``z004``-style plane names.

    Returns
    -------
    bytes
        The ``.zip`` file's contents: one ``cell-00012.roi`` (``cell-00012-z004.roi`` in a
        stack) per cell and plane, named by the cell's label.

    Raises
    ------
    ValueError
        For labels of more than two axes without ``axes``, or that hold no cell ids (see
        :func:`cell_outlines`).
    """
    from roifile import ImagejRoi

    labels = _label_array(labels)
    lead = _stack_axes(labels, axes)
    planes = labels.reshape(-1, *labels.shape[-2:])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for j, plane in enumerate(planes):
            where = dict(zip(lead, np.unravel_index(j, labels.shape[:-2]), strict=True))
            tag = "".join(f"-{a.lower()}{int(i):03d}" for a, i in where.items())
            place = {"position": j} if lead else {}
            place.update({a.lower(): int(i) for a, i in where.items()})
            for k, outline in cell_outlines(plane).items():
                # whole-pixel corners: an integer polygon, as ImageJ's own traced outlines
                roi = ImagejRoi.frompoints(
                    np.round(outline).astype(np.int32),
                    name=f"cell {k}{tag.replace('-', ' ')}",
                    **place,
                )
                archive.writestr(f"cell-{k:05d}{tag}.roi", roi.tobytes())
    return buffer.getvalue()


def _stack_axes(labels: np.ndarray, axes: str | None) -> str:
    """The axes of ``labels`` before ``YX`` (``""`` for 2D), checked."""
    letters = "YX" if axes is None and labels.ndim == 2 else str(axes or "").upper()
    if (
        len(letters) != labels.ndim
        or not letters.endswith("YX")
        or len(set(letters)) != len(letters)
        or set(letters[:-2]) - set("TZ")
    ):
        raise ValueError(
            f"Labels of shape {labels.shape} need their axes from T, Z, Y and X, one per axis "
            "and ending in YX (e.g. axes='ZYX' for a z-stack)."
        )
    return letters[:-2]


def qupath_geojson(labels: np.ndarray, table: Table | None = None) -> str:
    """QuPath detections as GeoJSON: one polygon per cell, its measurements attached.

    Parameters
    ----------
    labels : numpy.ndarray
        2D instance labels.
    table : Table, optional
        Measurements (with a ``label`` column) to attach to each cell: numbers (and yes/no
        columns, as 1 and 0) as its QuPath measurements, other columns (a class a person or
        another tool gave) as its metadata, text QuPath keeps beside them. A pandas DataFrame
        does as well.

    Returns
    -------
    str
        A GeoJSON ``FeatureCollection`` of detections, one per cell (QuPath: *File > Import
        objects*, or drag the file onto the image).

    Raises
    ------
    ValueError
        For labels that are not 2D or hold no cell ids (see :func:`cell_outlines`).
    """
    rows: dict[int, dict[str, float]] = {}
    texts: dict[int, dict[str, str]] = {}
    if table is not None:
        columns = {k: np.asarray(v) for k, v in table.items() if k != "label"}
        numeric = {k for k, v in columns.items() if v.dtype.kind in "biuf"}
        for i, label in enumerate(table["label"]):
            rows[int(label)] = {k: float(columns[k][i]) for k in columns if k in numeric}
            texts[int(label)] = {k: str(columns[k][i]) for k in columns if k not in numeric}
    features = []
    for k, outline in cell_outlines(labels).items():
        ring = [[float(x), float(y)] for x, y in outline]
        features.append(
            {
                "type": "Feature",
                "id": f"cell-{k}",
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                "properties": {
                    "objectType": "detection",
                    "name": f"cell {k}",
                    "measurements": rows.get(k, {}),
                    **({"metadata": texts[k]} if texts.get(k) else {}),
                },
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features})


def table_csv(table: Table | list[dict]) -> str:
    """A table as CSV text.

    Parameters
    ----------
    table : Table or list of dict
        Columns (a :data:`~napari_mutualseg.measure.Table`, such as
        :func:`~napari_mutualseg.measure.measure_cells` gives, or a pandas DataFrame), or rows
        (a column for every key of any row, empty where a row has none).

    Returns
    -------
    str
        A header line, then one line per row.
    """
    if not isinstance(table, list):
        # a DataFrame's items are its columns, as a dict's
        table = {str(k): np.asarray(v) for k, v in table.items()}
    rows = (
        table
        if isinstance(table, list)
        else [
            dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)
        ]
    )
    # rows of images measured differently (another unit, 3D) have columns of their own
    columns = list(dict.fromkeys(k for row in rows for k in row)) if rows else list(table)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()})
    return text.getvalue()
