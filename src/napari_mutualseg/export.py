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

from .measure import Table, _cell_ids

__all__ = ["cell_outlines", "fiji_roi_zip", "qupath_geojson", "table_csv"]


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
    labels = _cell_ids(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"Outlines are drawn on 2D labels, got shape {labels.shape}: give one plane, or "
            "a Fiji ROI set of the stack (fiji_roi_zip with axes)."
        )
    # every step of every outline is found at once, then all outlines are walked together:
    # no work per cell on the whole image, nor a Python step per pixel edge
    labels = np.ascontiguousarray(labels)  # read by flat index below
    codes = _cell_edges(labels)
    if not codes.size:
        return {}
    side = (codes & 3).astype(np.int8)
    row, col = (a.astype(np.int32) for a in np.divmod(codes >> 2, labels.shape[1]))
    ids = labels.ravel()[codes >> 2]
    succ, pred = _successors(labels, codes, row, col, ids)
    # a cell's first pixel (row by row) has a top edge: its outline starts at that corner
    tops = np.flatnonzero(side == 0)
    cells, first = np.unique(ids[tops], return_index=True)
    starts = tops[first]
    cell_of = np.full(codes.size, -1, np.int32)
    place = np.empty(codes.size, np.int32)
    lengths = np.empty(cells.size, np.int64)
    _trace(succ, np.arange(cells.size), starts, cell_of, place, lengths)
    if (cell_of < 0).any():
        # edges left over: holes, or cells in pieces, each outlined by its largest piece
        redo, restart = _largest_pieces(labels, row, col, ids, cell_of < 0, cells, starts)
        if redo.size:
            cell_of[np.isin(cell_of, redo)] = -1
            _trace(succ, redo, restart, cell_of, place, lengths)
    ends = np.cumsum(lengths)
    walked = np.flatnonzero(cell_of >= 0)
    order = np.empty(ends[-1], np.int64)
    order[ends[cell_of[walked]] - lengths[cell_of[walked]] + place[walked]] = walked
    # a corner where the outline turns: at the start of an edge along another side than the last
    turn = side[pred[order]] != side[order]
    at = order[turn]
    corners = (np.stack([col[at], row[at]], axis=1) + _START[side[at]]).astype(np.float64)
    bounds = np.concatenate([[0], np.cumsum(turn)[ends - 1]]).tolist()
    return {
        k: corners[a:b] for k, a, b in zip(cells.tolist(), bounds[:-1], bounds[1:], strict=True)
    }


# The step (row, column) along each side of a pixel, walked with the pixel on the right
# (clockwise on screen, y down): top (walked right), right (down), bottom (left), left (up).
# A side's outward normal is the step of the side before it.
_STEP = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])
# the corner (x, y) each side starts from, from its pixel's top-left corner
_START = np.array([(0, 0), (1, 0), (1, 1), (0, 1)])
# outlines still being walked when this few are left are finished one at a time: a very long
# outline then costs no numpy call per step
_FEW = 16


def _cell_edges(labels: np.ndarray) -> np.ndarray:
    """Every pixel edge of the cells with another label (or the image's border) across it,
    as ``4 * pixel + side`` (pixel row by row, side as in ``_STEP``), sorted."""
    cells = labels > 0
    differs = np.empty(labels.shape, bool)
    rest, drop = slice(1, None), slice(None, -1)
    codes = []
    for side, (here, there, border) in enumerate(
        (
            ((rest,), (drop,), (0,)),  # top: the pixel above
            ((slice(None), drop), (slice(None), rest), (slice(None), -1)),  # right
            ((drop,), (rest,), (-1,)),  # bottom
            ((slice(None), rest), (slice(None), drop), (slice(None), 0)),  # left
        )
    ):
        np.not_equal(labels[here], labels[there], out=differs[here])
        differs[border] = True
        differs &= cells
        codes.append(np.flatnonzero(differs) * 4 + side)
    codes = np.concatenate(codes)
    codes.sort()
    return codes


def _successors(
    labels: np.ndarray, codes: np.ndarray, row: np.ndarray, col: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The next and the previous edge of each edge along its cell's outline (indices into
    ``codes``), the cell on the right.

    At the end of an edge the outline turns right, onto the pixel's next side, where the pixel
    ahead is not the cell's; else it goes straight on along that pixel where the pixel ahead
    and outwards is not the cell's either; else it turns left onto that one. Two pixels of a
    cell touching only by a corner are so kept apart (4-connected pieces), and the outline
    never crosses itself (it may touch itself there).
    """
    height, width = labels.shape
    flat = labels.ravel()
    side = (codes & 3).astype(np.int8)

    def same_cell(r: np.ndarray, c: np.ndarray, where: np.ndarray) -> np.ndarray:
        where = where & (r >= 0) & (r < height) & (c >= 0) & (c < width)
        where[where] = flat[r[where] * width + c[where]] == ids[where]
        return where

    following = codes + np.where(side == 3, -3, 1)
    r, c = row + _STEP[side, 0], col + _STEP[side, 1]
    on = same_cell(r, c, np.ones(codes.size, bool))
    following[on] = (r[on] * width + c[on]) * 4 + side[on]
    r += _STEP[side - 1, 0]
    c += _STEP[side - 1, 1]
    left = same_cell(r, c, on)
    following[left] = (r[left] * width + c[left]) * 4 + ((side[left] - 1) & 3)
    del r, c, on, left, side
    # each edge follows exactly one other: sorting the followers gives each edge's predecessor
    pred = np.argsort(following)
    del following
    succ = np.empty_like(pred)
    succ[pred] = np.arange(pred.size)
    return succ, pred


def _trace(
    succ: np.ndarray,
    cells: np.ndarray,
    starts: np.ndarray,
    cell_of: np.ndarray,
    place: np.ndarray,
    lengths: np.ndarray,
) -> None:
    """Walk the outlines of ``cells`` from their ``starts`` all at once, noting each edge's
    cell (``cell_of``) and place along the outline, and each outline's length."""
    at = starts.copy()
    step = 0
    while cells.size > _FEW:
        cell_of[at] = cells
        place[at] = step
        at = succ[at]
        step += 1
        back = at == starts
        if back.any():
            lengths[cells[back]] = step
            cells, starts, at = cells[~back], starts[~back], at[~back]
    for cell, start, edge in zip(cells.tolist(), starts.tolist(), at.tolist(), strict=True):
        walk = [edge]
        while (edge := succ.item(edge)) != start:
            walk.append(edge)
        cell_of[walk] = cell
        place[walk] = np.arange(step, step + len(walk))
        lengths[cell] = step + len(walk)


def _largest_pieces(
    labels: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    ids: np.ndarray,
    left_over: np.ndarray,
    cells: np.ndarray,
    starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The cells (indices into ``cells``) whose largest 4-connected piece is not the one
    their outline was walked around, and the first edge of that piece's outline (indices into
    the edges; ``starts`` are those walked)."""
    odd = np.unique(ids[left_over])
    edges = np.flatnonzero(np.isin(ids, odd))
    edges = edges[np.argsort(ids[edges], kind="stable")]
    redo, restart = [], []
    for k, mine in zip(
        odd.tolist(), np.split(edges, np.flatnonzero(np.diff(ids[edges])) + 1), strict=True
    ):
        r0, c0 = int(row[mine].min()), int(col[mine].min())
        box = labels[r0 : int(row[mine].max()) + 1, c0 : int(col[mine].max()) + 1]
        pieces, n = ndi.label(box == k)
        if n < 2:
            continue
        # the largest piece, the first (row by row) of those as large
        piece = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        r, c = np.unravel_index(int(np.argmax(pieces == piece)), pieces.shape)
        # its first pixel's top edge: the first of the edges of that pixel
        start = mine[np.argmax((row[mine] == r0 + r) & (col[mine] == c0 + c))]
        i = int(np.searchsorted(cells, k))
        if start != starts[i]:
            redo.append(i)
            restart.append(start)
    return np.array(redo, np.int64), np.array(restart, np.int64)


def fiji_roi_zip(labels: np.ndarray, axes: str | None = None, *, channels: int = 1) -> bytes:
    """A Fiji / ImageJ ROI set (the ``.zip`` the ROI Manager opens), one polygon per cell.

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels: 2D, or a z-stack or time series of planes (``axes``).
    axes : str, optional
        The axes of ``labels`` from ``TZYX`` (``"ZYX"``, ``"TYX"``, ``"TZYX"``), needed for
        more than two. Each plane's cells then carry their place in the stack as ImageJ
        keeps that of a ROI added on the plane shown, so that Fiji shows each cell on its
        own plane only and goes there when it is clicked in the ROI Manager: in a
        hyperstack (an image with channels, or with both z and time) their z slice and time
        frame (1-based), on every channel; in a plain z-stack or time series their stack
        position (1-based). Their names tell the plane, ``z004``-style (counted from 0).
    channels : int
        The number of channels of the image the cells were found in (ImageJ's, so 1 for an
        RGB image): with channels, a stack is a hyperstack to ImageJ.

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

    labels = _cell_ids(labels)
    lead = _stack_axes(labels, axes)
    sizes = dict(zip(lead, labels.shape[:-2], strict=True))
    # ImageJ reads a plain stack's ROI by its stack position only (its z or frame is drawn on
    # every plane and not gone to), a hyperstack's by its slice and frame only (a stack
    # position counts channels there); channel 0 is every channel, as ImageJ's own composite
    hyperstack = channels > 1 or min(sizes.get("Z", 1), sizes.get("T", 1)) > 1
    planes = labels.reshape(-1, *labels.shape[-2:])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for j, plane in enumerate(planes):
            where = dict(zip(lead, np.unravel_index(j, labels.shape[:-2]), strict=True))
            tag = "".join(f"-{a.lower()}{int(i):03d}" for a, i in where.items())
            if not lead:
                place = {}
            elif hyperstack:
                place = {"z": int(where.get("Z", 0)), "t": int(where.get("T", 0))}
            else:
                place = {"position": j}
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
        # whole columns as Python numbers: a value at a time from numpy is slow for many cells
        numbers = {
            k: v.astype(np.float64).tolist() for k, v in columns.items() if v.dtype.kind in "biuf"
        }
        words = {k: v for k, v in columns.items() if k not in numbers}
        for i, label in enumerate(np.asarray(table["label"]).tolist()):
            rows[int(label)] = {k: v[i] for k, v in numbers.items()}
            texts[int(label)] = {k: str(v[i]) for k, v in words.items()}
    features = []
    for k, outline in cell_outlines(labels).items():
        ring = outline.tolist()
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
