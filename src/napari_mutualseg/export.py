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
from skimage.measure import find_contours

from .measure import Table

__all__ = ["cell_outlines", "fiji_roi_zip", "qupath_geojson", "table_csv"]


def cell_outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """The outline of every cell of a 2D label image.

    Returns
    -------
    dict of int to numpy.ndarray
        Label to an ``(N, 2)`` array of ``(x, y)`` vertices along the outer edge of the
        cell's pixels (holes are not traced; the first vertex is not repeated), in the
        pixel-edge coordinates of ImageJ and QuPath: pixel ``(i, j)`` covers
        ``[j, j + 1) x [i, i + 1)``, where napari centres it on ``(i, j)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Outlines are drawn on 2D labels, got shape {labels.shape}.")
    out = {}
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        # a one-pixel margin closes contours at the crop's border
        mask = np.pad(labels[sl] == k, 1)
        contours = find_contours(mask.astype(np.float32), 0.5)
        longest = max(contours, key=len)[:-1]
        # the contour runs between pixel centres: -1 for the margin, +0.5 to pixel edges
        y0, x0 = sl[0].start - 0.5, sl[1].start - 0.5
        out[k] = np.column_stack([longest[:, 1] + x0, longest[:, 0] + y0])
    return out


def fiji_roi_zip(labels: np.ndarray) -> bytes:
    """A Fiji / ImageJ ROI set (the ``.zip`` the ROI Manager opens), one polygon per cell."""
    from roifile import ImagejRoi

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for k, outline in cell_outlines(labels).items():
            roi = ImagejRoi.frompoints(outline, name=f"cell {k}")
            archive.writestr(f"cell-{k:05d}.roi", roi.tobytes())
    return buffer.getvalue()


def qupath_geojson(labels: np.ndarray, table: Table | None = None) -> str:
    """QuPath detections as GeoJSON: one polygon per cell, its measurements attached.

    Parameters
    ----------
    labels : numpy.ndarray
        2D instance labels.
    table : Table, optional
        Measurements (with a ``label`` column) to attach to each cell.
    """
    rows = {}
    if table is not None:
        keys = [k for k in table if k != "label"]
        for i, label in enumerate(table["label"]):
            rows[int(label)] = {k: float(table[k][i]) for k in keys}
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
                },
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features})


def table_csv(table: Table | list[dict]) -> str:
    """A table as CSV text: columns of a :data:`~napari_mutualseg.measure.Table`, or rows."""
    rows = (
        table
        if isinstance(table, list)
        else [
            dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)
        ]
    )
    columns = list(rows[0]) if rows else list(table)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()})
    return text.getvalue()
