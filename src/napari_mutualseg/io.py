"""Reading images, naming outputs, writing label images and tables.

Files are written safely by :mod:`napari_mutualseg.files` (complete or not at all) and box
tables read and written by :mod:`napari_mutualseg.box_tables`; their functions are at hand
here too, so that this one module serves a script's reading and writing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .box_tables import NAPARI_2D, NAPARI_3D, PLAIN, BoxKey, read_box_table, write_box_table
from .files import (
    MIN_FREE,
    OutputError,
    atomic_write,
    check_writable,
    format_size,
    same_file_keys,
    write_text,
)
from .ome import PixelSize

__all__ = [
    "BIOIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LABEL_KINDS",
    "LABEL_KIND_WORDS",
    "MIN_FREE",
    "NAPARI_2D",
    "NAPARI_3D",
    "OTHER_IMAGE_SUFFIXES",
    "PLAIN",
    "TIFF_SUFFIXES",
    "BoxKey",
    "OutputError",
    "atomic_write",
    "check_writable",
    "format_size",
    "image_stem",
    "is_image_name",
    "label_kind",
    "output_paths",
    "read_box_table",
    "read_image",
    "write_box_table",
    "write_labels",
    "write_table",
    "write_text",
    "written_as",
]

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_IMAGE_SUFFIXES
#: Microscope formats read through the optional bioio extra.
BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")

#: What a label TIFF written by :func:`write_labels` holds: instance labels (a segmentation),
#: a supervision (class map: 0 background, 1 cell, 2 boundary, 255 ignore) or a disagreement
#: map. The kind is written in the file's TIFF ``Software`` tag as ``napari-mutualseg <kind>``,
#: which survives copies and renames and which :func:`written_as` reads back, so that these
#: files are not taken for images (a supervision saved into a folder of images).
LABEL_KINDS = ("labels", "supervision", "disagreement")
#: Each kind of :data:`LABEL_KINDS` in a message's words.
LABEL_KIND_WORDS = {
    "labels": "cell labels",
    "supervision": "a supervision (class map)",
    "disagreement": "a disagreement map",
}
_SOFTWARE = "napari-mutualseg"


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file's pixels as stored, without interpreting its axes.

    TIFF via tifffile, PNG/JPEG/BMP/GIF via scikit-image, OME-Zarr folders via zarr, other
    microscopy formats via the optional bioio. For the meaning of the axes (channels, z,
    time), pixel size and channel names use
    :meth:`napari_mutualseg.images.AxisImage.from_file`.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    numpy.ndarray
        The pixel data as stored (2D, a stack, or colour channels last).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file is not a supported image type or cannot be read.
    """
    from .readers import read_pixels

    return read_pixels(path)


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as an image this package reads.

    Parameters
    ----------
    path : str or path-like
        A file or folder name.

    Returns
    -------
    bool
        True for a TIFF, a picture, a bioio format or an OME-Zarr store (``a.zarr/`` too).
    """
    return Path(path).name.lower().endswith((*IMAGE_SUFFIXES, *BIOIO_SUFFIXES, ".zarr"))


def image_stem(path: str | os.PathLike) -> str:
    """An image file's name without its image suffix.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    str
        ``a`` for ``dir/a.ome.tif``, ``a.zarr`` or ``A.OME.TIF``; another name as it is.
    """
    name = Path(path).name
    if is_image_name(name):
        name = name[: name.rindex(".")]
        # microscopes and Windows write A.OME.TIF as often as a.ome.tif
        if name.lower().endswith(".ome"):
            name = name[: -len(".ome")]
    return name


def output_paths(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    suffix: str = "_cells.tif",
    parts: Sequence[str] | None = None,
) -> list[Path]:
    """Where the result of each input goes: one distinct file per input, never an input.

    Each result is ``out_dir / <folder> / <name><_part><suffix>``: ``<folder>`` is the input's
    folder below the common parent of all inputs (empty when they share one folder), and
    ``<name>`` the file name without its image suffix (``s.v1.tif`` gives ``s.v1``). So
    ``a/x.tif`` and ``b/x.tif`` go to ``out/a/x_cells.tif`` and ``out/b/x_cells.tif``.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Input files; a file may repeat when ``parts`` tells its pieces apart.
    out_dir : str or path-like
        The output folder.
    suffix : str
        Ending of every output name.
    parts : sequence of str, optional
        One per input: a piece of the input (e.g. ``"plane003"``) added to the name, or
        ``""`` for the whole file.

    Returns
    -------
    list of pathlib.Path
        One output path per input, in order.

    Raises
    ------
    ValueError
        When two inputs would still get the same output (``x.tif`` beside ``x.tiff``, the
        same file given twice, names differing only in case), an output would be an input or
        lie inside an input folder (an OME-Zarr image).
    """
    sources = [Path(p) for p in inputs]
    parts = [""] * len(sources) if parts is None else list(parts)
    if len(parts) != len(sources):
        raise ValueError(f"Got {len(sources)} inputs but {len(parts)} parts.")
    if not sources:
        return []
    # strings, not Paths: each Path made of 100,000 inputs costs a parse of the whole path
    names = [os.fspath(p) for p in sources]
    folders = [os.path.abspath(os.path.dirname(p)) for p in names]
    try:
        common = os.path.commonpath(folders)
    except ValueError:
        raise ValueError(
            "The inputs are on different drives, so their folders cannot be kept below one "
            "output folder; run them one drive at a time."
        ) from None
    below = {folder: os.path.relpath(folder, common) for folder in set(folders)}
    outputs = [
        os.path.normpath(
            os.path.join(
                out_dir,
                below[folder],
                f"{image_stem(os.path.basename(name))}{'_' + part if part else ''}{suffix}",
            )
        )
        for name, folder, part in zip(names, folders, parts, strict=True)
    ]
    seen: dict[str, Path] = {}
    inputs_at = dict(zip(same_file_keys(names), sources, strict=True))
    for source, out, real in zip(sources, outputs, same_file_keys(outputs), strict=True):
        key = os.path.normcase(os.path.abspath(out)).lower()
        if key in seen and seen[key] != source:
            raise ValueError(
                f"{seen[key]} and {source} would both be written to {out}; rename one of them "
                "(names that differ only in their suffix or in case clash)."
            )
        if key in seen:
            raise ValueError(f"{source} is given twice; give each image once.")
        seen[key] = source
        if real in inputs_at:
            raise ValueError(
                f"The result of {source} would be written over the input {inputs_at[real]}; "
                "choose another output folder."
            )
    # an image that is a folder (OME-Zarr) gets no foreign files in it
    stores = {os.path.realpath(p): p for p in sources if p.is_dir()}
    for out in outputs if stores else ():
        for parent in Path(os.path.realpath(out)).parents:
            if str(parent) in stores:
                raise ValueError(
                    f"Results would be written inside the image {stores[str(parent)]} (an "
                    "OME-Zarr folder); choose an output folder outside it."
                )
    return [Path(o) for o in outputs]


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    overwrite: bool = False,
    pixel_size: PixelSize | None = None,
    axes: str | None = None,
    kind: str = "labels",
    frame_interval: float | None = None,
) -> Path:
    """Write a label or class image as a zlib-compressed TIFF, atomically.

    A 2D image, and one whose ``axes`` are given, is written as OME-TIFF when there is
    something to say (a pixel size, axes beyond ``YX``), so that it opens as the stack or
    time series it is. Labels of more than two axes without ``axes`` get no OME metadata:
    it would call their first axis channels.

    Parameters
    ----------
    path : str or path-like
        Target ``.tif``/``.tiff`` file; missing parent folders are created.
    labels : numpy.ndarray
        Integer (or bool) image; bool is written as uint8, 64-bit integers as 32-bit (int32,
        or uint32 for labels above 2**31 - 1).
    overwrite : bool
        Replace an existing file (only once the new one is complete).
    pixel_size : PixelSize, optional
        Written as OME-TIFF physical size (with the z step of a z-stack, and the frame
        interval of a time series as its ``TimeIncrement``) and as resolution tags (pixels per
        centimetre), so that Fiji, napari and Bio-Formats readers all find it.
    axes : str, optional
        One letter per axis of ``labels`` from ``TZYX`` (``AxisImage.label_axes``), e.g.
        ``"ZYX"``; a 2D image is ``"YX"``.
    kind : {"labels", "supervision", "disagreement"}
        What the file holds (:data:`LABEL_KINDS`), written in its TIFF ``Software`` tag and
        read back by :func:`written_as`: a supervision is a class map (0 background, 1 cell,
        2 boundary, 255 ignore), not instance labels.
    frame_interval : float, optional
        The time from one frame to the next in seconds, for labels of a time series whose
        pixel size is unknown (the pixel size's own interval comes first).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        When the file exists and ``overwrite`` is False.
    OutputError
        When the file cannot be written (the old one is then unchanged).
    ValueError
        When the path is not a TIFF name or the labels are not an integer image.
    """
    import tifffile

    if kind not in LABEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(LABEL_KINDS)}, not {kind!r}.")
    path = Path(path)
    if _suffix(path) not in TIFF_SUFFIXES:
        raise ValueError(f"Labels are written as TIFF: give {path} a .tif or .tiff suffix.")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Labels must be an integer image, got dtype {labels.dtype}; round or cast it first."
        )
    if labels.ndim < 2:
        raise ValueError(f"Labels must be at least 2D, got shape {labels.shape}.")
    labels = _to_32_bits(labels, path.name)
    axes = _label_axes(axes, labels.ndim, path.name)
    options: dict = {}
    metadata: dict = {}
    if pixel_size is not None:
        options.update(resolution=pixel_size.per_centimeter(), resolutionunit="CENTIMETER")
        for letter in "XY" + ("Z" if axes and "Z" in axes and pixel_size.z else ""):
            metadata[f"PhysicalSize{letter}"] = getattr(pixel_size, letter.lower())
            metadata[f"PhysicalSize{letter}Unit"] = pixel_size.symbol
        frame_interval = pixel_size.t or frame_interval
    if axes and "T" in axes and frame_interval:
        metadata.update(TimeIncrement=float(frame_interval), TimeIncrementUnit="s")
    if axes and (metadata or len(axes) > 2):
        options.update(ome=True, metadata={"axes": axes, **metadata})
    with atomic_write(path, overwrite=overwrite) as f:
        # minisblack: tifffile takes a (3, H, W) or (H, W, 3) array for RGB colours otherwise
        tifffile.imwrite(
            f,
            labels,
            compression="zlib",
            photometric="minisblack",
            software=f"{_SOFTWARE} {kind}",
            **options,
        )
    return path


def written_as(path: str | os.PathLike) -> str | None:
    """What a label file holds: a TIFF written by :func:`write_labels` (from its header
    alone), or an OME-Zarr label image (:func:`napari_mutualseg.ome.labels_zarr`'s, or any
    marked ``image-label`` as OME-NGFF has it).

    Parameters
    ----------
    path : str or path-like
        Any file or folder.

    Returns
    -------
    str or None
        One of :data:`LABEL_KINDS` (``"supervision"``: a class map), or None for anything
        else: an image, a TIFF saved again by another program, a file that cannot be read.
        Never raises.
    """
    path = Path(path)
    if path.is_dir():
        return "labels" if _ngff_label_image(path) else None
    if _suffix(path) not in TIFF_SUFFIXES or not path.is_file():
        return None
    try:
        import tifffile

        with quiet_log("tifffile"), tifffile.TiffFile(path) as tif:
            software = str(tif.pages[0].software or "")
    except Exception:  # unreadable: not this package's, and reading it as an image says why
        return None
    return label_kind(software)


def label_kind(software: str) -> str | None:
    """The kind of label file a TIFF ``Software`` tag says :func:`write_labels` wrote.

    Parameters
    ----------
    software : str
        The tag of the file's first page (empty when it has none).

    Returns
    -------
    str or None
        One of :data:`LABEL_KINDS`, or None for a tag this package did not write.
    """
    name, _, kind = software.partition(" ")
    return kind if name == _SOFTWARE and kind in LABEL_KINDS else None


@contextlib.contextmanager
def quiet_log(logger: str) -> Iterator[None]:
    """Hold back a library's log lines (tifffile logs one per damaged strip or tile): the
    error raised when the image is read says what is wrong in one line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _ngff_label_image(folder: Path) -> bool:
    """Whether a zarr folder's own metadata (zarr 2 ``.zattrs``, zarr 3 ``zarr.json``) mark
    it as an OME-NGFF label image; read as JSON, without opening the store."""
    import json

    for name in (".zattrs", "zarr.json"):
        try:
            attrs = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(attrs, dict):
            continue
        attrs = attrs.get("attributes", attrs)  # zarr 3 keeps them in 'attributes'
        ome = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
        if isinstance(ome, dict) and "image-label" in ome:
            return True
    return False


def _to_32_bits(labels: np.ndarray, name: str) -> np.ndarray:
    """64-bit labels (numpy's default integer) as int32, or uint32 above 2**31 - 1.

    Fiji, QuPath and Bio-Formats read no 64-bit integer TIFF, and OME metadata has no such
    pixel type.
    """
    if labels.dtype.itemsize < 8 or labels.size == 0:
        return labels
    low, high = int(labels.min()), int(labels.max())
    for dtype in (np.int32, np.uint32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return labels.astype(dtype)
    raise ValueError(
        f"The labels for {name} range from {low} to {high}, beyond the 32 bits TIFF readers "
        "take; number them from 1 (skimage.segmentation.relabel_sequential) first."
    )


def _label_axes(axes: str | None, ndim: int, name: str) -> str | None:
    """The axes of a label image: those given (checked), ``YX`` for 2D, else unknown."""
    if axes is None:
        return "YX" if ndim == 2 else None
    letters = str(axes).strip().upper()
    if (
        len(letters) != ndim
        or not letters.endswith("YX")
        or len(set(letters)) != len(letters)
        or set(letters) - set("TZYX")
    ):
        raise ValueError(
            f"Axes {axes!r} for the labels {name} of {ndim} axes: give one letter per axis from "
            "T, Z, Y and X (labels have no channels), ending in YX, e.g. ZYX."
        )
    return letters


def write_table(
    path: str | os.PathLike, columns: Mapping[str, Sequence], *, overwrite: bool = False
) -> Path:
    """Write named columns of equal length as a CSV with a header line, atomically.

    Parameters
    ----------
    path : str or path-like
        Target ``.csv`` file; missing parent folders are created.
    columns : mapping of str to sequence
        Column name to its values, one per row.
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
        When the columns differ in length.
    """
    path = Path(path)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"The columns of {path.name} differ in length: {sorted(lengths)}.")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values(), strict=True))
    return write_text(path, text.getvalue(), overwrite=overwrite)
