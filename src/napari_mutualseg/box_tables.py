"""Box tables: the CSV files that hold the boxes drawn around cells, read and written.

Four formats are read: two CSV tables (first line a header; separated by commas, or by
semicolons with decimal commas or by tabs, as spreadsheets save them; UTF-8, or UTF-16 as
Excel's *Unicode Text*), Fiji's ROIs and QuPath's GeoJSON:

napari Shapes CSV
    What napari writes when a Shapes layer is saved as ``.csv``: one row per vertex,
    ``index,shape-type,vertex-index,axis-0,axis-1``; shapes drawn on a stack add ``axis-2``
    and ``axis-0`` is then the plane; shapes drawn on a time series of stacks add ``axis-3``
    and ``axis-0``, ``axis-1`` are then the time point and the plane (a layer of more axes
    gives one more leading coordinate per axis). Only rectangles and ellipses are boxes;
    rotated ones keep their rotation.
plain table
    One row per box, columns ``y0,x0,y1,x1`` (half-open pixel ranges as in
    ``skimage.measure.regionprops(...).bbox``) and optionally ``image``, the name of the image
    file the box belongs to (several images in one table). A table of
    ``skimage.measure.regionprops_table(labels, properties=[..., "bbox"])`` of a 2D image,
    saved with pandas' ``to_csv``, is one too: its ``bbox-0`` to ``bbox-3`` are ``y0,x0,y1,x1``
    and its other columns (label, area, the index) are left out. So is the index that pandas'
    ``to_csv`` writes first, a column without a name, in a plain table.
Fiji ROI set
    What Fiji's ROI Manager saves (*More > Save...*: ``RoiSet.zip``, or one ``.roi``):
    rectangles and ovals, rotated rectangles and ellipses are boxes, on the plane they were
    drawn on (their z and time position; a plain stack's index, which counts the image's
    channels first, as ImageJ's does), whichever channel was shown. A ROI that Fiji shows on
    every slice or frame of a stack (its position none, or 0 for z or time) has no plane of
    its own and is refused there. Other ROIs (polygons, freehand, lines, points) are refused
    with their name.
QuPath GeoJSON
    What QuPath writes with *File > Export objects as GeoJSON* (``.geojson`` or ``.json``):
    its rectangles and ellipses are boxes (half-open pixel ranges, as QuPath's pixel-edge
    coordinates are), on the plane they were drawn on (their z and time point, as Fiji's).
    Other shapes (polygons, brush strokes, points, lines) are refused with their name.

:func:`write_box_table` writes the plain table when every box is an axis-aligned rectangle
on whole pixels (the common case, and the easiest to edit by hand), and napari's Shapes CSV
otherwise, so that rotated boxes, ellipses and sub-pixel corners survive the round trip and
the file still opens in napari.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .boxes import BOX_TYPES, Box, box_columns, boxes_by_plane, boxes_from_shapes
from .files import write_text

if TYPE_CHECKING:
    from .images import AxisImage

__all__ = ["BoxKey", "BoxTable", "read_box_table", "table_planes", "write_box_table"]

NAPARI_2D = ("index", "shape-type", "vertex-index", "axis-0", "axis-1")
NAPARI_3D = (*NAPARI_2D, "axis-2")
NAPARI_4D = (*NAPARI_3D, "axis-3")
PLAIN = ("y0", "x0", "y1", "x1")

_FORMATS = (
    "accepted box tables: (a) a napari Shapes CSV with header "
    "'index,shape-type,vertex-index,axis-0,axis-1' (stacks add 'axis-2', time series of "
    "stacks 'axis-3'), as written by "
    "File > Save Selected Layers with a .csv name; (b) a plain table with columns "
    "'y0,x0,y1,x1' and optionally 'image' (half-open pixel ranges, one box per row), or "
    "scikit-image's regionprops table with 'bbox-0' to 'bbox-3'; (c) a "
    "Fiji ROI set (.zip) or ROI (.roi) of rectangles and ellipses; (d) QuPath GeoJSON of "
    "rectangles and ellipses"
)

#: Suffixes of Fiji's ROI files: a ROI Manager's set, or one ROI.
ROI_SUFFIXES = (".zip", ".roi")
#: Suffixes of GeoJSON files (QuPath's export).
GEOJSON_SUFFIXES = (".geojson", ".json")

#: Fiji's Results table of ROIs measured with 'Bounding rectangle' (calibrated units).
_FIJI_RESULTS = {"bx", "by", "width", "height"}

BoxKey = str | int | tuple[int, ...] | None

#: How to give Fiji's ROIs a plane each.
_GIVE_PLANES = (
    "in Fiji, give each its plane (ROI Manager: select it, Properties..., Position; c,z,t on "
    "a hyperstack) or delete it, and save the ROIs again."
)

#: QuPath's objects that are never a cell's box, by their 'objectType'.
_QUPATH_NO_CELLS = {"tmaCore": "TMA core", "tma_core": "TMA core", "tile": "tile"}


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        if _decimal_point(text) != text:
            raise ValueError(
                f"{path}, line {line}: column {column!r} is {text!r}, a number with a comma "
                "(a decimal comma, or one between thousands) in a table whose columns are "
                "separated by commas too: save the numbers plainly (a decimal point, no "
                "thousands separator), or a decimal comma with semicolons between the columns."
            ) from None
        raise ValueError(
            f"{path}, line {line}: column {column!r} should be a number, got {text!r}."
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{path}, line {line}: column {column!r} is {text!r}, not a number.")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    raw = path.read_bytes()
    # Excel's 'Unicode Text' is UTF-16, said by its first bytes
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if not utf16 and b"\0" in raw:
        raise ValueError(f"{path} is not a text (CSV) file; {_FORMATS}.")
    try:
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not saved as UTF-8 text (byte {err.start + 1} is "
            f"0x{raw[err.start]:02X}, a letter of another encoding such as Windows'): save it "
            "again as UTF-8 (Excel: Save As, 'CSV UTF-8 (Comma delimited)'; LibreOffice: "
            "character set 'Unicode (UTF-8)')."
        ) from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    # spreadsheets set to a decimal comma save their CSV with semicolons (and may write
    # decimal commas in the first line too); others save tabs
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = [(reader.line_num, row) for row in reader]
    rows = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path} is empty; {_FORMATS}.")
    header = [cell.strip().lower() for cell in rows[0][1]]
    rows = rows[1:]
    # the empty columns a spreadsheet leaves after the last one ("y0,x0,y1,x1,,")
    while (
        header
        and not header[-1]
        and all(not "".join(r[len(header) - 1 :]).strip() for _, r in rows)
    ):
        header.pop()
    rows = [(n, _trim(r, len(header))) for n, r in rows]
    if delimiter == ";":
        rows = [(n, [_decimal_point(c) for c in r]) for n, r in rows]
    return header, rows


def _trim(row: list[str], width: int) -> list[str]:
    """``row`` without the empty cells past the table's last column."""
    while len(row) > width and not row[-1].strip():
        row = row[:-1]
    return row


def _decimal_point(cell: str) -> str:
    """``"3,5"`` (a decimal comma) as ``"3.5"``."""
    text = cell.strip()
    if text.count(",") == 1 and text.replace(",", "", 1).lstrip("+-").isdigit():
        return text.replace(",", ".")
    return cell


def _is_napari(header: list[str]) -> bool:
    """A napari Shapes CSV header, of a layer of any number of axes (2 or more): a layer on
    a multichannel time series has five."""
    axes = header[3:]
    return (
        tuple(header[:3]) == NAPARI_2D[:3]
        and len(axes) >= 2
        and axes == [f"axis-{d}" for d in range(len(axes))]
    )


def read_box_table(path: str | os.PathLike, *, first_plane: bool = False) -> BoxTable:
    """Read boxes from a napari Shapes CSV, a plain ``y0,x0,y1,x1[,image]`` CSV, Fiji ROIs
    or QuPath GeoJSON.

    Parameters
    ----------
    path : str or path-like
        The CSV file, Fiji ROI set (``.zip``) or ROI (``.roi``), or QuPath GeoJSON; see the
        module docs.
    first_plane : bool
        Key QuPath objects that are all on the first plane by plane 0, not None: QuPath
        writes no plane for them, so they are on the first plane of a stack, not on any. A
        2D image takes a table keyed 0 as one keyed None.

    Returns
    -------
    BoxTable
        A dict of boxes per key: ``None`` for a 2D table (napari 2D CSV or plain table without
        ``image`` column, Fiji ROIs without a position, QuPath objects all on the first
        plane, unless ``first_plane``), the plane index (int) for a napari CSV of a stack
        (and Fiji ROIs with a slice, z or time position, a stack index taken as of an image
        of one channel, as the image's channels are not known here; QuPath objects of the
        first time point), ``(t, z)`` for
        one of a time series of stacks (a tuple of every leading coordinate of a layer of
        more axes; Fiji ROIs and QuPath objects of a later time point), the image name (str)
        for a plain table with an ``image`` column. Boxes keep the file's order. Its
        ``origin`` says which of these the file was, and so what a tuple key means; of Fiji
        ROIs, its ``positions`` keep ImageJ's, which :func:`table_planes` reads with the
        image's channels and sizes.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For an unknown header (the message lists the accepted formats), malformed rows or
        shapes that are not rectangles or ellipses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Box table not found: {path}")
    boxes, origin, positions = _read(path, first_plane)
    return BoxTable(boxes, name=path.name, origin=origin, positions=positions)


class BoxTable(dict):
    """Boxes per key, as :func:`read_box_table` gives them (a dict).

    A key it does not hold (``table[None]`` of a stack's table) raises a ``KeyError`` that
    names the keys it has and what they are, where a plain dict names only the key.

    Parameters
    ----------
    boxes : mapping
        Boxes per key.
    name : str
        How the table is called in messages (its file name).
    origin : str
        What wrote it: ``"napari"`` (a Shapes layer: a tuple key holds the layer's leading
        coordinates, a channel axis among them where the layer has one), ``"fiji"`` or
        ``"qupath"`` (a tuple key is ``(t, z)``, whatever channels the image has),
        ``"table"`` (a plain or regionprops table), or ``""`` when not known.
    positions : sequence of (tuple, Box), optional
        Of Fiji ROIs, each box with ImageJ's position of its ROI, ``(z, t, index)`` (each from
        1, 0 for none: a hyperstack's z slice and frame, or else a plain stack's index, which
        counts channels too), in the file's order. The keys hold what the position says
        without the image (one channel; a ROI on every slice or frame on its first);
        :func:`table_planes` places each box from its position on the image itself.
    """

    def __init__(
        self,
        boxes: Mapping[BoxKey, list[Box]],
        name: str = "The box table",
        origin: str = "",
        positions: Sequence[tuple[tuple[int, int, int], Box]] = (),
    ) -> None:
        super().__init__(boxes)
        self.name = name
        self.origin = origin
        self.positions = tuple(positions)

    def __missing__(self, key: BoxKey) -> list[Box]:
        keys = list(self)
        if not keys:
            raise KeyError(f"{self.name} holds no boxes.")
        shown = ", ".join(map(repr, keys[:8])) + (" ..." if len(keys) > 8 else "")
        if all(isinstance(k, str) for k in keys):
            what = "boxes per image file (its 'image' column)"
        elif any(k is not None for k in keys):
            what = "boxes per plane of a stack ((t, z) in a time series)"
        else:
            what = "the boxes of one 2D image"
        raise KeyError(
            f"{self.name} has no boxes under {key!r}: it holds {what}, under {shown}; "
            f"take table[{keys[0]!r}]."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # dict's own pickling would not pass the name, origin and positions to __init__
        return (BoxTable, (dict(self), self.name, self.origin, self.positions))


def _read(path: Path, first_plane: bool) -> tuple[dict[BoxKey, list[Box]], str, list]:
    """The boxes of the table at ``path``, what wrote it and the positions of Fiji's ROIs, by
    its format (see :func:`read_box_table`)."""
    if path.suffix.lower() in ROI_SUFFIXES:
        boxes, positions = _read_rois(path)
        return boxes, "fiji", positions
    if path.suffix.lower() in GEOJSON_SUFFIXES or _starts_like_json(path):
        return _read_geojson(path, first_plane), "qupath", []
    header, rows = _read_rows(path)
    if _is_napari(header):
        return _read_napari(path, header, rows), "napari", []
    if set(PLAIN) <= set(header):
        # pandas' to_csv writes the index first, a column without a name, left out as a
        # regionprops table's is
        named = header[1:] if header[0] == "" else header
        extra = [c for c in named if c not in (*PLAIN, "image")]
        if extra or len(set(named)) != len(named):
            raise ValueError(
                f"{path}: unexpected or repeated columns {extra or named} in a plain box "
                f"table; {_FORMATS}."
            )
        return _read_plain(path, header, rows), "table", []
    bbox = box_columns(header, str(path))
    if bbox is not None:
        # a regionprops table: its label, area and other measurements (its 'image' too, the
        # cell's mask, no file name) are left out
        named = {column: plain for column, plain in zip(bbox, PLAIN, strict=True)}
        return _read_plain(path, [named.get(c, "") for c in header], rows), "table", []
    if set(header) >= _FIJI_RESULTS:
        raise ValueError(
            f"{path} is a Fiji Results table: its BX, BY, Width and Height are in the image's "
            "calibrated units (such as µm), not pixels. Save the ROIs themselves instead (ROI "
            "Manager: More > Save...) and give that .zip."
        )
    # a long first line (a whole file on one line) is shown in part
    said = ",".join(header)
    said = said if len(said) <= 120 else said[:120] + "..."
    if all(_is_number(_decimal_point(cell)) for cell in header if cell):
        raise ValueError(
            f"{path} has no header: its first line holds numbers "
            f"({', '.join(map(repr, header[:8]))}), not column names. Add a first line "
            "that names the columns in their order, 'y0,x0,y1,x1' or 'x0,y0,x1,y1' (half-open "
            "pixel ranges); which number is x and which is y is not guessed."
        )
    raise ValueError(f"{path}: unknown header {said!r}; {_FORMATS}.")


def _read_plain(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]]
) -> dict[BoxKey, list[Box]]:
    col = {name: header.index(name) for name in header}
    with_image = "image" in col
    out: dict[BoxKey, list[Box]] = {}
    if not with_image:
        out[None] = []
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(row)} values for {len(header)} columns "
                f"({','.join(header)})."
            )
        y0, x0, y1, x1 = (_number(row[col[c]], path, line, c) for c in PLAIN)
        key: BoxKey = row[col["image"]].strip() if with_image else None
        if with_image and not key:
            raise ValueError(f"{path}, line {line}: the 'image' column is empty.")
        try:
            box = Box.from_corners(y0, x0, y1, x1)
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: {err}") from None
        out.setdefault(key, []).append(box)
    return out


def _read_napari(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]]
) -> dict[BoxKey, list[Box]]:
    ndim = len(header) - 3
    shapes: dict[int, dict] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {line}: {len(row)} values for {len(header)} columns "
                f"({','.join(header)})."
            )
        index = _number(row[0], path, line, "index")
        vertex = _number(row[2], path, line, "vertex-index")
        kind = row[1].strip().lower()
        coords = [_number(row[3 + d], path, line, f"axis-{d}") for d in range(ndim)]
        shape = shapes.setdefault(int(index), {"kind": kind, "vertices": [], "line": line})
        if shape["kind"] != kind:
            raise ValueError(
                f"{path}, line {line}: shape {int(index)} changes type from {shape['kind']!r} "
                f"to {kind!r}."
            )
        shape["vertices"].append((vertex, coords))
    data, kinds = [], []
    for index in sorted(shapes):
        shape = shapes[index]
        if shape["kind"] not in BOX_TYPES:
            raise ValueError(
                f"{path}: shape {index} (line {shape['line']}) is a {shape['kind']!r}; only "
                "rectangles and ellipses are boxes. Delete the other shapes from the layer "
                "before saving it, or keep them on another layer."
            )
        vertices = [c for _, c in sorted(shape["vertices"], key=lambda vc: vc[0])]
        if len(vertices) != 4:
            raise ValueError(
                f"{path}: shape {index} (line {shape['line']}) has {len(vertices)} vertices; "
                "a rectangle or ellipse has 4."
            )
        data.append(np.asarray(vertices, dtype=np.float64))
        kinds.append(shape["kind"])
    try:
        if ndim == 2:
            return {None: boxes_from_shapes(data, kinds)}
        return dict(boxes_by_plane(data, kinds))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _box_kind(roi: Any, turned: dict[Any, str]) -> str | None:
    """The kind of box a Fiji ROI is ("rectangle" or "ellipse"; ``turned``: the subtypes of
    ImageJ's rotated ones), or None where it is no box."""
    import roifile

    if roi.roitype == roifile.ROI_TYPE.FREEHAND and roi.subtype in turned:
        kind = turned[roi.subtype]
    else:
        kind = {roifile.ROI_TYPE.RECT: "rectangle", roifile.ROI_TYPE.OVAL: "ellipse"}.get(
            roi.roitype
        )
    # a text or an image overlay and a composite shape are stored as rectangles too
    plain = roi.subtype in (0, -1) or roi.subtype in turned
    return kind if plain and not roi.shape_roi_size else None


def _read_rois(path: Path) -> tuple[dict[BoxKey, list[Box]], list]:
    """Fiji's rectangles and ellipses (rotated or not) as boxes, by the plane they were
    drawn on without the image (:func:`_roi_key`), and each with its ROI's position."""
    import roifile

    try:
        rois = roifile.roiread(path)
    except Exception:  # a zip of other files, a damaged ROI: what it is not, and what is read
        raise ValueError(
            f"{path} is not a Fiji ROI {'set' if path.suffix.lower() == '.zip' else 'file'}, "
            f"or a damaged one; {_FORMATS}."
        ) from None
    rois = rois if isinstance(rois, list) else [rois]
    if not rois:
        raise ValueError(f"{path} holds no ROI; draw rectangles in Fiji's ROI Manager first.")
    # ImageJ's rotated rectangles and ellipses are freehand ROIs of their own subtype
    turned = {
        roifile.ROI_SUBTYPE.ROTATED_RECT: "rectangle",
        roifile.ROI_SUBTYPE.ELLIPSE: "ellipse",
    }
    out: dict[BoxKey, list[Box]] = {}
    positions = []
    kinds = [_box_kind(roi, turned) for roi in rois]
    for k, (roi, kind) in enumerate(zip(rois, kinds, strict=True)):
        name = f"ROI {k + 1}" + (f" ({roi.name!r})" if roi.name else "")
        if kind is None:
            what = getattr(roi.subtype, "name", "") if roi.subtype not in (0, -1) else ""
            what = what or ("composite" if roi.shape_roi_size else roi.roitype.name)
            fix = (
                "Delete the other ROIs from the ROI Manager before saving, or save them to "
                "another file."
                if any(kinds)
                else f"None of its {len(rois)} ROIs is: these are outlines (as napari-mutualseg "
                "exports cells, or Fiji's Analyze Particles adds them), not boxes drawn around "
                "cells. Open the cells' label image to see them, or draw a rectangle around "
                "each cell."
            )
            raise ValueError(
                f"{path}: {name} is a {what.lower().replace('_', ' ')}; only rectangles and "
                f"ellipses (ovals) are boxes. {fix}"
            )
        try:
            if roi.subtype in turned:
                box = _turned_box(roi.coordinates(), kind)
            elif roi.subpixelrect:
                # ImageJ reads a rectangle at sub-pixel resolution at its float bounds; its
                # whole-pixel ones are only rounded
                box = Box.from_corners(
                    roi.yd, roi.xd, roi.yd + roi.heightd, roi.xd + roi.widthd, kind
                )
            else:
                box = Box.from_corners(roi.top, roi.left, roi.bottom, roi.right, kind)
        except ValueError as err:
            raise ValueError(f"{path}: {name}: {err}") from None
        position = _roi_position(roi)
        positions.append((position, box))
        out.setdefault(_roi_key(position), []).append(box)
    if None in out and len(out) > 1:
        raise ValueError(
            f"{path}: {len(out[None])} ROI(s) have no slice position while others have one "
            f"(Fiji shows them on every slice); {_GIVE_PLANES}"
        )
    return out, positions


def _turned_box(outline: np.ndarray, kind: str) -> Box:
    """The box of ImageJ's rotated rectangle (its 4 corners) or ellipse (its outline, whose
    every quarter of points starts at the end of an axis), ``(x, y)`` pixel edges."""
    points = np.asarray(outline, np.float64)[:, ::-1] - 0.5  # napari's (y, x)
    if len(points) > 4 and np.allclose(points[0], points[-1]):
        points = points[:-1]  # a rotated rectangle made by a macro closes on its first corner
    n = len(points)
    if kind == "ellipse":
        if n < 4 or n % 4:
            raise ValueError(
                f"the ellipse has {n} outline points, not a multiple of 4 as ImageJ draws them; "
                "draw it again in Fiji, or draw an oval."
            )
        centre = (points[0] + points[n // 2]) / 2
        long, short = points[0] - centre, points[n // 4] - centre
        points = centre + np.array(
            [long + short, long - short, -long - short, -long + short], np.float64
        )
    return Box.from_vertices(points, kind)


def _starts_like_json(path: Path) -> bool:
    """Whether a file's first character opens a JSON object or array (GeoJSON named .txt)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read(64).lstrip()[:1] in ("{", "[")
    except (OSError, UnicodeDecodeError):
        return False


def _read_geojson(path: Path, first_plane: bool = False) -> dict[BoxKey, list[Box]]:
    """QuPath's rectangles and ellipses as boxes, by the plane they were drawn on: its
    objects exported as GeoJSON (a FeatureCollection or a list of features), axis-aligned
    four-cornered polygons (or ellipses' polygons) in pixel-edge coordinates; all on the
    first plane: keyed None, or 0 with ``first_plane``."""
    import json

    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{path} is not valid GeoJSON{where}; {_FORMATS}.") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise ValueError(f"{path} holds no GeoJSON features; {_FORMATS}.")
    if not features:
        raise ValueError(f"{path} holds no objects; draw rectangles in QuPath first.")
    boxes = []
    for k, feature in enumerate(features):
        props = feature.get("properties") or {}
        name = f"object {k + 1}" + (f" ({props['name']!r})" if props.get("name") else "")
        geometry = feature.get("geometry") or {}
        # a TMA core is an ellipse and a tile a rectangle, neither drawn around a cell
        other = _QUPATH_NO_CELLS.get(str(props.get("objectType", props.get("object_type"))))
        if other:
            raise ValueError(
                f"{path}: {name} is a QuPath {other}, not a box drawn around a cell. Export "
                "the boxes alone (select them, then File > Export objects as GeoJSON > "
                "Selected objects)."
            )
        corners = _rectangle(geometry)
        if corners is None:
            kind = geometry.get("type")
            n = len(_ring(geometry) or ()) - 1
            what = (
                "has no geometry"
                if not kind
                else f"is a polygon of {n} corners"
                if kind == "Polygon" and n > 0
                else f"is a {kind}"
            )
            raise ValueError(
                f"{path}: {name} {what}; only rectangles and ellipses are boxes. Export "
                "them alone (select them, then File > Export objects as GeoJSON > Selected "
                "objects)."
            )
        (x0, y0), (x1, y1) = corners
        # QuPath writes an ellipse as a polygon marked 'isEllipse', and reads it back as the
        # ellipse of the polygon's bounds
        kind = "ellipse" if geometry.get("isEllipse") is True else "rectangle"
        try:
            box = Box.from_corners(y0, x0, y1, x1, kind)
        except ValueError as err:
            raise ValueError(f"{path}: {name}: {err}") from None
        boxes.append((_qupath_plane(geometry, path, name), box))
    if not first_plane and all(plane == (0, 0) for plane, _ in boxes):
        return {None: [box for _, box in boxes]}
    out: dict[BoxKey, list[Box]] = {}
    for (t, z), box in boxes:
        # as Fiji's ROIs: the first time point's planes by number, later ones as (t, z)
        out.setdefault((t, z) if t > 0 else z, []).append(box)
    return out


def _qupath_plane(geometry: Mapping, path: Path, name: str) -> tuple[int, int]:
    """``(t, z)`` of a QuPath object, from 0: QuPath writes ``"plane": {"c", "z", "t"}`` in
    the geometry of an object off the first plane, and no plane on the first."""
    plane = geometry.get("plane") or {}
    where = (plane.get("t", 0), plane.get("z", 0)) if isinstance(plane, dict) else (None,)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in where):
        raise ValueError(
            f"{path}: {name} has plane {plane!r}; QuPath writes a plane as "
            '{"c": -1, "z": 0, "t": 0}, z and t whole numbers from 0. Export the objects from '
            "QuPath again."
        )
    return where  # type: ignore[return-value]


def _ring(geometry: Mapping) -> list | None:
    """The outer ring of a GeoJSON polygon, or None."""
    coords = geometry.get("coordinates")
    if geometry.get("type") != "Polygon" or not isinstance(coords, list) or not coords:
        return None
    ring = coords[0]
    return ring if isinstance(ring, list) else None


def _rectangle(geometry: Mapping) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``((x0, y0), (x1, y1))`` of an axis-aligned rectangle polygon or the bounds of a
    QuPath ellipse, else None."""
    ring = _ring(geometry)
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        return None
    if geometry.get("isEllipse") is True and len(points) > 2:
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return (float(x0), float(y0)), (float(x1), float(y1))
    if len(points) > 1 and (points[0] == points[-1]).all():
        points = points[:-1]  # the ring closes on its first corner
    xs, ys = np.unique(points[:, 0]), np.unique(points[:, 1])
    if len(points) != 4 or len(xs) != 2 or len(ys) != 2:
        return None
    # each corner once: four corners on two x and two y values are the rectangle's
    if len({(float(x), float(y)) for x, y in points}) != 4:
        return None
    return (float(xs[0]), float(ys[0])), (float(xs[1]), float(ys[1]))


def _roi_position(roi: object) -> tuple[int, int, int]:
    """ImageJ's position of a Fiji ROI, ``(z, t, index)``, each from 1 (0 for none).

    A hyperstack's ROI has its channel, z and time positions, which replace its stack index
    (ImageJ's ``RoiDecoder``); the channel does not matter to a box. A plain stack's ROI (a
    z-stack, a time series, or the channels of a 2D image: ImageJ's hyperstacks have two of
    these) has its index in the stack (``position``), channels counted first."""
    c, z, t = (int(p) for p in (roi.c_position, roi.z_position, roi.t_position))  # type: ignore[attr-defined]
    if c > 0 or z > 0 or t > 0:
        return (z, t, 0)
    return (0, 0, max(int(roi.position), 0))  # type: ignore[attr-defined]


def _roi_key(position: tuple[int, int, int]) -> BoxKey:
    """The plane a Fiji ROI at ``position`` (:func:`_roi_position`) is on without its image:
    a plane number, ``(t, z)``, or None for none.

    On the first time point the z position is the plane number, in a z-stack and in a time
    series of stacks alike; a later time point is ``(t, z)`` (``(t, 0)`` in a time series
    without z). A stack index is taken as a plane number, as of an image of one channel."""
    z, t, index = position
    if index:
        return index - 1
    if t > 1:
        return (t - 1, max(z, 1) - 1)
    if t > 0 or z > 0:
        return max(z, 1) - 1
    return None


def _aligned_corners(box: Box) -> tuple[int, int, int, int] | None:
    """The integer ``y0, x0, y1, x1`` of an axis-aligned rectangle on whole pixels, else None."""
    if box.kind != "rectangle":
        return None
    quarter = box.angle / (math.pi / 2)
    if abs(quarter - round(quarter)) > 1e-9:
        return None
    corners = box.pixel_range()
    rounded = tuple(round(c) for c in corners)
    if any(abs(c - r) > 1e-6 for c, r in zip(corners, rounded, strict=True)):
        return None
    return rounded  # type: ignore[return-value]


def _is_index(key: object) -> bool:
    return isinstance(key, int | np.integer) and not isinstance(key, bool)


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _box_groups(boxes: Any) -> dict[BoxKey, list[Box]]:
    """Boxes per key from what :func:`write_box_table` takes."""
    # a table of one image's boxes: rows, a DataFrame, a dict of its columns
    columns = isinstance(boxes, Mapping) and box_columns([str(k) for k in boxes]) is not None
    if columns or not isinstance(boxes, Mapping):
        return {None: boxes_from_shapes(boxes)}
    return {key: boxes_from_shapes(group) for key, group in boxes.items()}


def write_box_table(
    path: str | os.PathLike,
    boxes: Sequence[Box] | Mapping[BoxKey, Sequence[Box]] | Any,
    *,
    overwrite: bool = False,
) -> Path:
    """Write boxes as a CSV that :func:`read_box_table` reads back.

    Axis-aligned rectangles on whole pixels are written as the plain ``y0,x0,y1,x1`` table
    (with an ``image`` column for several named images). Any rotated box, ellipse or box with
    sub-pixel corners switches the file to napari's Shapes CSV, which keeps them exactly and
    opens in napari; boxes per plane (int keys) are always written that way, with the plane as
    ``axis-0`` (and per tuple of a napari layer's leading coordinates with those first).

    Fiji's and QuPath's boxes on planes are written as the plane numbers of the image they
    were drawn on, ``table_planes(table, image)``: their positions (a Fiji stack index that
    counts channels, a ROI on every slice, a time point without z) mean a plane only on the
    image, and a napari layer's leading coordinates would read back otherwise (``(t, 0)`` as
    channel t of a time series with channels).

    Parameters
    ----------
    path : str or path-like
        Target CSV file; missing parent folders are created.
    boxes : sequence of Box, array_like, pandas.DataFrame or mapping
        The boxes of one image (as :class:`Box` es, or anything
        :func:`~napari_mutualseg.boxes.boxes_from_shapes` takes: ``y0, x0, y1, x1`` rows, napari
        rectangles, a DataFrame or ``regionprops_table`` of them), or such boxes per key as
        returned by :func:`read_box_table` or :func:`table_planes` (``None``, plane ints,
        tuples of leading coordinates, or image names; one kind of key per file).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        When the file exists and ``overwrite`` is False.
    ValueError
        For mixed key kinds, rotated boxes keyed by image name (napari's format has no
        image column), or Fiji's or QuPath's boxes on planes not yet made the image's.
    """
    path = Path(path)
    origin = getattr(boxes, "origin", "")
    if origin in ("fiji", "qupath") and any(key is not None for key in boxes):
        raise ValueError(
            f"{boxes.name} holds boxes on planes as {'Fiji' if origin == 'fiji' else 'QuPath'} "
            "counts them, which only the image they were drawn on turns into its plane "
            "numbers: write box_tables.table_planes(table, image) instead."
        )
    groups = _box_groups(boxes)
    keys = list(groups)
    if keys == [None]:
        key_kind = "none"
    elif all(isinstance(k, str) for k in keys):
        key_kind = "image"
    elif all(_is_index(k) for k in keys):
        key_kind = "plane"
    elif all(
        isinstance(k, tuple) and k and len(k) == len(keys[0]) and all(map(_is_index, k))
        for k in keys
    ):
        key_kind = "position"  # (t, z), ... of a time series of stacks
    else:
        raise ValueError(
            "Box table keys must be all image names, all plane indices, all (t, z)-like tuples "
            f"of one length, or just None; got {keys}."
        )
    stacked = key_kind in ("plane", "position")
    corners = {k: [_aligned_corners(b) for b in g] for k, g in groups.items()}
    plain = not stacked and all(c is not None for cs in corners.values() for c in cs)
    if not plain and key_kind == "image":
        raise ValueError(
            "Rotated boxes, ellipses or sub-pixel boxes cannot be written with image names: "
            "napari's Shapes CSV has no image column. Write one table per image instead."
        )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if plain:
        writer.writerow([*PLAIN, "image"] if key_kind == "image" else list(PLAIN))
        for key, cs in corners.items():
            for c in cs:
                writer.writerow([*c, key] if key_kind == "image" else list(c))
    else:
        lead = len(keys[0]) if key_kind == "position" else int(key_kind == "plane")
        writer.writerow([*NAPARI_2D[:3], *(f"axis-{d}" for d in range(lead + 2))])
        index = 0
        for key, group in groups.items():
            where = [] if not stacked else list(key) if key_kind == "position" else [key]
            for box in group:
                for vertex, (y, x) in enumerate(box.corners):
                    plane = [_num(float(c)) for c in where]
                    writer.writerow([index, box.kind, vertex, *plane, _num(y), _num(x)])
                index += 1
    write_text(path, text.getvalue(), overwrite=overwrite)
    return path


def table_planes(table: Mapping, image: AxisImage, name: str = "The image") -> dict:
    """A box table's keys as the plane numbers of ``image`` (z within each time point).

    A table drawn on a time series of stacks (napari's leading coordinates, Fiji's or
    QuPath's ``(t, z)``) has its keys made plane numbers; a table drawn on an image with
    channels, opened in napari with its channel axis first (as this package's reader does),
    has the channel first in its keys: a box belongs to its plane whichever channel was
    shown. Fiji's ROIs are placed from their positions as ImageJ shows them on ``image``: a
    plain stack's index counts the image's channels first (a 2D image's channels are a
    stack to ImageJ, RGB colours are not), and a ROI Fiji shows on several planes (no
    position, or none along z or time where the image has several) is refused, as no plane
    of its own can be chosen for it. Other tables are returned as they are.

    Parameters
    ----------
    table : mapping
        Boxes by key, as :func:`read_box_table` gives them (a :class:`BoxTable` says what
        wrote it, which decides how a ``(t, z)`` key is read).
    image : AxisImage
        The image the boxes were drawn on.
    name : str
        How the image is called in messages.

    Returns
    -------
    dict
        Boxes by plane number (keys other than tuples as they were).

    Raises
    ------
    ValueError
        When a key names a plane the image does not have, or a Fiji ROI lies on several.
    """
    if getattr(table, "positions", ()):
        return _fiji_planes(table, image, name)  # type: ignore[arg-type]
    sizes = [image.sizes[a] for a in image.plane_axes]
    keys = list(table)
    # Fiji's and QuPath's (t, z) hold no channel; a napari layer's leading coordinates do
    positions = getattr(table, "origin", "") in ("fiji", "qupath")
    plain_t = image.plane_axes == "T" and (positions or "C" not in image.axes or image.rgb)
    if plain_t and any(isinstance(k, tuple) for k in keys) and all(map(_t_of_no_z, keys)):
        # Fiji ROIs of a time series without z: (t, 0) on later time points, as a time series
        # of stacks gives them; the first time point's are plane numbers already
        flat: dict = {}
        for key, boxes in table.items():
            flat.setdefault(key[0] if isinstance(key, tuple) else key, []).extend(boxes)
        return flat
    channel_first = not positions and "C" in image.axes and not image.rgb and sizes and keys
    if channel_first and all(isinstance(k, tuple) and len(k) == len(sizes) + 1 for k in keys):
        by_plane: dict = {}
        for key, boxes in table.items():
            by_plane.setdefault(key[1:] if len(key) > 2 else key[1], []).extend(boxes)
        table = by_plane
    if not any(isinstance(k, tuple) for k in table):
        return table
    flat: dict = {}
    for key, boxes in table.items():
        if isinstance(key, int):
            # Fiji ROIs of the first time point beside later ones: their plane number (z
            # within time point 0) is the flat one already
            flat.setdefault(key, []).extend(boxes)
            continue
        if len(key) != len(sizes) or any(not 0 <= i < n for i, n in zip(key, sizes, strict=True)):
            raise _no_plane(image, name, key)
        flat.setdefault(int(np.ravel_multi_index(key, sizes)), []).extend(boxes)
    return flat


def _no_plane(image: AxisImage, name: str, key: tuple) -> ValueError:
    """The error of boxes at ``key`` (of the image's plane axes) that ``image`` lacks."""
    sizes = [image.sizes[a] for a in image.plane_axes]
    return ValueError(
        f"{name} has {' x '.join(map(str, sizes)) or 'no'} planes "
        f"({image.plane_axes or 'one plane'}) but its box table has boxes at "
        f"{key}: check the image's axes (--axes, or Axes in the panel), or that the "
        "table was drawn on this image."
    )


def _fiji_planes(table: BoxTable, image: AxisImage, name: str) -> dict:
    """The boxes of Fiji's ROIs by plane number of ``image``, each from its ROI's position as
    ImageJ shows it there (see :func:`table_planes`)."""
    # ImageJ's stack index counts channels first; an RGB image's colours are no channels to it
    channels = 1 if image.rgb else image.n_channels
    nz, nt = (image.sizes.get(a, 1) for a in "ZT")
    if image.n_planes == 1 and not any(any(p) for p, _ in table.positions):
        return {None: [box for _, box in table.positions]}
    flat: dict = {}
    spread: list[tuple[int, list[str]]] = []  # ROIs Fiji shows on several planes
    for k, ((z, t, index), box) in enumerate(table.positions, 1):
        if index:
            plane = (index - 1) // channels
        else:
            spans = [
                what for what, at, n in (("slice", z, nz), ("frame", t, nt)) if not at and n > 1
            ]
            if spans:
                spread.append((k, spans))
                continue
            if z > nz and nt > 1:
                # past the last slice of a frame: a plane number would name the next frame's
                raise _no_plane(image, name, (t - 1, z - 1))
            plane = (max(t, 1) - 1) * nz + max(z, 1) - 1
        flat.setdefault(plane, []).append(box)
    if spread:
        numbers = ", ".join(str(k) for k, _ in spread[:8]) + (" ..." if len(spread) > 8 else "")
        every = " and ".join(sorted({what for _, whats in spread for what in whats}))
        one = len(spread) == 1
        raise ValueError(
            f"{table.name}: ROI {numbers} ({len(spread)} of {len(table.positions)}) "
            f"{'has' if one else 'have'} no {every.replace(' and ', ' or ')} of "
            f"{'its' if one else 'their'} own: Fiji shows {'it' if one else 'each'} on every "
            f"{every} of {name}, but a box belongs to the one plane its cell was drawn on; "
            f"{_GIVE_PLANES} ROIs drawn on a 2D image, such as a projection, go with that image."
        )
    return flat


def _t_of_no_z(key: object) -> bool:
    """A ``(t, 0)`` key (a Fiji ROI on a later time point) or a plain plane number."""
    return isinstance(key, int) or (isinstance(key, tuple) and len(key) == 2 and key[1] == 0)
