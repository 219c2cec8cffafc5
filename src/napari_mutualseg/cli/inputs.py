"""What the commands read: images with their axes, box tables matched to each image and
plane, the supervision of a plane, and the training settings of the options given."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ..boxes import Box
    from ..config import TrainConfig
    from ..images import AxisImage
    from ..supervision import Supervision

    #: A plane's name and boxes, or None for a plane without boxes.
    PlaneBoxes = tuple[str, list[Box]] | None

#: How far apart (0 to 1) the pixels inside the boxes' ellipses and around them must be for
#: the boxes to sit on the image's cells, and how many of each are compared.
_MIN_APART = 0.35
_SAMPLE = 100_000
#: The least share of the pixels inside the boxes' ellipses that a painted class map keeps
#: as cell or boundary (see :func:`_check_painted_on_boxes`).
_MIN_PAINTED_KEPT = 0.5
#: The warning for --rgb given for images that are not RGB pictures (``rgb``: the option's
#: value, ``images``: :func:`images_named`).
RGB_IDLE = "--rgb {rgb} did nothing for {images}: not an RGB picture"

# command-line option -> TrainConfig field
_OPTIONS = {
    "rounds": "rounds",
    "steps": "steps_per_round",
    "batch_size": "batch_size",
    "patch_size": "patch_size",
    "width": "width",
    "depth": "depth",
    "lr": "learning_rate",
    "seed": "seed",
}


def check_found(paths: Iterable[str], what: str) -> None:
    """Refuse a path that names nothing, with the names in its folder that are close to it:
    a typo is the likely reason.

    Parameters
    ----------
    paths : iterable of str
        Files or folders the command reads.
    what : str
        What they are, as the message names them ("Box table").

    Raises
    ------
    FileNotFoundError
        For the first path that does not exist.
    """
    from difflib import get_close_matches

    for path in paths:
        p = Path(path)
        if p.exists():
            continue
        folder = p.parent
        if not folder.is_dir():
            hint = f" (there is no folder {folder})"
        else:
            # A06.TIF for A06.tif is as likely a slip as A6.tif
            names = {c.name.lower(): c.name for c in folder.iterdir()}
            key = p.name.lower()
            close = [key] if key in names else get_close_matches(key, names, 2, 0.75)
            named = " or ".join(str(p.with_name(names[c])) for c in close)
            hint = f" (did you mean {named}?)" if close else ""
        raise FileNotFoundError(f"{what} not found: {path}{hint}.")


def images_named(names: Sequence[str]) -> str:
    """Some images, as a line names them: the one, or how many and the first."""
    return names[0] if len(names) == 1 else f"{len(names)} images ({names[0]}, ...)"


def load_image(path: str, args: argparse.Namespace) -> AxisImage:
    """The image of one file with its axes (from the file, or --axes); says what was read."""
    from ..images import AxisImage

    check_found([path], "Image file")
    image = AxisImage.from_file(path, axes=getattr(args, "axes", None))
    print(image.describe(notes=True), file=sys.stderr)
    return image


def boxes_for(
    images: Sequence[str], tables: Sequence[str], args: argparse.Namespace
) -> list[tuple[AxisImage, list[PlaneBoxes]]]:
    """Every image with the name and boxes of each of its planes.

    One CSV per image or one shared CSV. A stack's table is a napari Shapes CSV whose first
    axis is the plane (planes run over z within each time point), after the channel when it
    was drawn on the image with its channels
    (:func:`~napari_mutualseg.box_tables.table_planes`); a table drawn on a single-plane
    image as a stack (e.g. a (C, Y, X) image shown without channel_axis) gives that plane all
    its boxes.

    Parameters
    ----------
    images : sequence of str
        The image files.
    tables : sequence of str
        One box CSV per image, or one CSV with an ``image`` column.
    args : argparse.Namespace
        The command's options (``--axes``).

    Returns
    -------
    list of (AxisImage, list)
        Each image with one entry per plane: ``(name, boxes)``, or None for a plane without
        boxes.

    Raises
    ------
    ValueError
        When the tables do not fit the images, or no image has any boxes.
    """
    from ..box_tables import read_box_table, table_planes

    check_found(tables, "Box table")
    for table in tables:
        if Path(table).is_dir():
            raise ValueError(
                f"--boxes {table} is a folder, not a box table: give the box file of each "
                "image (a napari Shapes CSV, a y0,x0,y1,x1 CSV, a Fiji RoiSet.zip or .roi, or "
                "QuPath GeoJSON)."
            )
    # QuPath writes no plane for objects on the first one: a stack's boxes all there say so
    loaded = [read_box_table(t, first_plane=True) for t in tables]
    if len(tables) not in (1, len(images)):
        raise ValueError(
            f"Got {len(images)} image(s) and {len(tables)} box table(s): give one --boxes CSV per "
            "image, or one CSV with an 'image' column naming each image file."
        )
    if len(tables) < len(images) and not any(isinstance(k, str) for k in loaded[0]):
        raise ValueError(
            f"{tables[0]} has no 'image' column, so it cannot say which of the {len(images)} "
            "images a box is on: give one --boxes CSV per image (in the order of the images), "
            "or add an 'image' column naming each box's image file."
        )
    result: list[tuple[AxisImage, list[PlaneBoxes]]] = []
    used: dict[str, str] = {}  # a key of the 'image' column: the image it went to
    for i, path in enumerate(images):
        table = loaded[i] if len(tables) == len(images) else loaded[0]
        image = load_image(path, args)
        name = Path(path).name
        table = table_planes(table, image, name)
        by_plane = all(isinstance(k, int) for k in table)
        if image.n_planes > 1 and not by_plane:
            raise ValueError(
                f"{name} has {image.n_planes} planes ({image.plane_axes}) but its box table "
                "does not say which plane a box is on: draw the boxes on the stack in napari "
                "and save the Shapes layer as .csv (its first axis is the plane), or in Fiji "
                "by adding each ROI with its slice shown (the ROI Manager's Add; Properties... "
                "sets a ROI's Position), or in QuPath on the stack itself."
            )
        beyond = sorted(k for k in table if isinstance(k, int) and k >= image.n_planes)
        if image.n_planes > 1 and beyond:
            raise ValueError(
                f"{name} has {image.n_planes} planes (0 to {image.n_planes - 1}) but its box "
                f"table has boxes on plane {', '.join(map(str, beyond))}: check --axes, or "
                "that the table was drawn on this stack."
            )
        planes = []
        for j in range(image.n_planes):
            if image.n_planes > 1:
                boxes = table.get(j, [])
            elif by_plane:
                if len(table) > 1:
                    warnings.warn(
                        f"{name} has one plane; the boxes of table planes "
                        f"{', '.join(map(str, sorted(table)))} are all used on it.",
                        UserWarning,
                        stacklevel=2,
                    )
                boxes = [b for k in sorted(table) for b in table[k]]
            elif len(tables) == len(images) and None in table:
                boxes = table[None]
            else:
                key = _table_key(table, path)
                if key in table and used.setdefault(key, path) != path:
                    raise ValueError(
                        f"{used[key]} and {path} both match '{key}' in the 'image' column of "
                        f"{tables[0]}: name each by its path there (plate1/x.tif), or give "
                        "one box table per image (--boxes a.csv b.csv)."
                    )
                boxes = table.get(key, [])
            if len(boxes) == 0 and image.n_planes == 1:
                named = sorted(str(k) for k in table if k is not None)
                found = f" (it has boxes for {', '.join(named)})" if named else ""
                cased = [k for k in named if k.lower() in (name.lower(), _stem(name).lower())]
                if cased:
                    raise ValueError(
                        f"No boxes for {path}: its box table names '{cased[0]}', which differs "
                        f"in upper and lower case; write it as the file is named, {name}."
                    )
                raise ValueError(
                    f"No boxes for {path}: the box table has no rows for it{found}. Draw at "
                    "least one box on this image."
                )
            # how messages name the plane: stack.tif z004
            suffix = image.plane_name(j)
            planes.append((f"{name} {suffix}" if suffix else name, boxes) if boxes else None)
        result.append((image, planes))
    if len(tables) == 1:
        unused = sorted(k for k in loaded[0] if isinstance(k, str) and k not in used)
        if unused:
            warnings.warn(
                f"{tables[0]} has boxes for images that were not given ({', '.join(unused)}); "
                "they are not used. Give those images too, or check the names in the 'image' "
                "column.",
                UserWarning,
                stacklevel=2,
            )
    if not any(p for _, planes in result for p in planes):
        raise ValueError("No image has any boxes; draw at least one box around a cell.")
    return result


def _table_key(table: dict, path: str) -> str:
    """The key of a shared table's ``image`` column that names the image at ``path``: its
    file name, its name without extensions, or a path that ends like the image's (``plate1/
    a.tif``, or absolute); the stem when none does."""
    name = Path(path).name
    stem = _stem(name)
    if name in table or stem in table:
        return name if name in table else stem
    image_parts = Path(path).resolve().parts
    for key in table:
        if not isinstance(key, str) or "/" not in key.replace("\\", "/"):
            continue
        key_path = Path(key.replace("\\", "/"))
        parts = key_path.resolve().parts if key_path.is_absolute() else key_path.parts
        if image_parts[-len(parts) :] == parts:
            return key
    return stem


def _stem(name: str) -> str:
    """A file name without its extensions (``x`` of ``x.ome.tif``), as tables may name it."""
    return name.split(".")[0]


def supervision(
    name: str, image: AxisImage, boxes: list[Box], plane: int = 0, **kwargs: Any
) -> Supervision:
    """The supervision of ``plane`` from its usable boxes; the others are named in a warning,
    as are boxes that do not sit on cells (:func:`_check_boxes_on_cells`)."""
    from ..boxes import usable_boxes
    from ..supervision import make_supervision
    from ..thread_warnings import thread_warnings

    _check_box_places(name, boxes, image.plane_shape)
    try:
        kept, notes, numbers = usable_boxes(boxes, image.plane_shape)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    for note in notes:
        warnings.warn(f"{name}: {note}", UserWarning, stacklevel=2)
    caught: list[warnings.WarningMessage] = []
    with thread_warnings(caught.append):  # said with the plane they are about, as the notes
        # named by their place among the plane's boxes, as _check_box_places names them
        sup = make_supervision(image.plane_shape, kept, numbers=numbers, **kwargs)
    for said in caught:
        warnings.warn(f"{name}: {said.message}", said.category, stacklevel=2)
    _check_boxes_on_cells(name, image.plane(plane), sup.classes)
    return sup


def _check_boxes_on_cells(name: str, pixels: np.ndarray, classes: np.ndarray) -> None:
    """Warn when the boxes' cells are neither brighter nor darker than the rest of the image.

    Measured as ``|2 AUC - 1|`` of the pixels inside the boxes' ellipses against those
    around (0: alike, 1: every one brighter, or darker): on BBBC039 at least 0.75 with each
    image's own boxes, at most 0.19 with another image's. The table of another field of a
    plate, tables given in another order, or boxes in µm fit the image's size but not its
    cells.
    """
    import numpy as np
    from scipy.stats import rankdata

    inside, around = classes == 1, classes == 0
    if not inside.any() or not around.any():
        return
    apart = 0.0
    for channel in pixels:
        # a sample of each is enough to rank them, also on a whole slide
        ins, out = (v[:: max(1, v.size // _SAMPLE)] for v in (channel[inside], channel[around]))
        u = rankdata(np.concatenate([ins, out]))[: ins.size].sum() - ins.size * (ins.size + 1) / 2
        apart = max(apart, abs(2 * u / (ins.size * out.size) - 1))
    if apart < _MIN_APART:
        warnings.warn(
            f"{name}: the boxed cells are no brighter or darker than the rest of the image: "
            "is the box table this image's (one per image, in the order of the images), in "
            "pixels (not µm)? Ignore this for cells as bright as their background (phase "
            "contrast).",
            UserWarning,
            stacklevel=3,
        )


def _check_box_places(name: str, boxes: list[Box], shape: tuple[int, ...]) -> None:
    """Refuse a table whose boxes do not fit the image: x and y swapped, or most boxes off it.

    A box drawn in napari may stray off the image, and is left out with a warning; a table
    with most of its boxes off the image, or that fits only with x and y swapped, was made
    for another image or in other coordinates, and training on the rest would learn from the
    wrong places.
    """
    from ..boxes import Box, off_image

    sized = [b for b in boxes if not b.too_small]  # left out anyway, wherever they are
    outside = off_image(boxes, shape)
    if not outside:
        return
    where = f"{name}: {len(outside)} of {len(sized)} boxes lie outside the image"
    where += (
        f" ({shape[0]} x {shape[1]} px; the first is {boxes[outside[0]].describe(outside[0])})"
    )
    stray = len(outside) == 1 and len(sized) > 1  # one box drawn off the image, most likely
    swapped = all(
        b.angle == 0 and Box(b.center[::-1], b.half_sizes[::-1]).overlaps(shape) for b in sized
    )
    if swapped and not stray:
        raise ValueError(
            f"{where}, and all would lie on it with x and y swapped: the table gives columns "
            "(x) where rows (y) belong. Name its columns in the order they hold (y0,x0,y1,x1: "
            "rows first; x0,y0,x1,y1 is read as such)."
        )
    if 2 * len(outside) > len(sized):
        raise ValueError(
            f"{where}: the table was made for another image or in other units. Give the box "
            "table of this image, in its pixel coordinates."
        )


def painted_supervisions(
    paths: list[str],
    loaded: list[tuple[AxisImage, list[PlaneBoxes]]],
    sups: Sequence[Supervision | None],
) -> list[np.ndarray | None]:
    """The class maps of ``--supervision``, one per plane of the images, as the engine's
    ``labels``: each file holds its image's labels shape (a stack: every plane) and keeps
    the cells of its boxes (``sups``, one per plane), as a map painted on is (see
    :func:`_check_painted_on_boxes`)."""
    from ..io import LABEL_KIND_WORDS, read_image, written_as
    from ..supervision import check_class_map

    for path in paths:
        kind = written_as(path)
        # cells numbered 1 and 2 would pass as classes: cell 2 learnt as boundary
        if kind in ("labels", "disagreement"):
            raise ValueError(
                f"{path} holds {LABEL_KIND_WORDS[kind]} written by napari-mutualseg, not a "
                "supervision (class map): give the file that supervise wrote (0 background, "
                "1 cell, 2 boundary, 255 ignore), painted on as you like."
            )
    if len(paths) != len(loaded):
        raise ValueError(
            f"--supervision got {len(paths)} file(s) for {len(loaded)} image(s): give one "
            "class map per image, in the order of the images."
        )
    labels: list[np.ndarray | None] = []
    for path, (image, planes) in zip(paths, loaded, strict=True):
        data = check_class_map(read_image(path), image.label_shape, path)
        flat = data.reshape(-1, *image.plane_shape)
        for j, plane in enumerate(planes):
            sup = sups[len(labels)]
            labels.append(None if plane is None else flat[j])
            if plane is not None and sup is not None:
                _check_painted_on_boxes(path, plane[0], flat[j], sup.classes)
    return labels


def _check_painted_on_boxes(
    path: str, name: str, painted: np.ndarray, classes: np.ndarray
) -> None:
    """Refuse a painted class map that has lost most cells of its image's boxes.

    Painting keeps the boxes' cells: outlines corrected to the true cells keep 88-91% of the
    pixels inside the boxes' ellipses as cell or boundary (BBBC039), where the map of
    another image of the same size keeps 13-27% (those of the cells that happen to lie
    there). Every pixel that differs is trusted as painted, so the map of another image,
    given in the wrong order, would teach the networks that image's cells.
    """
    import numpy as np

    from ..supervision import BOUNDARY, CELL, IGNORE

    inside = (classes == CELL) & (painted != IGNORE)
    if not inside.any():
        return
    kept = float(np.isin(painted[inside], (CELL, BOUNDARY)).mean())
    if kept < _MIN_PAINTED_KEPT:
        raise ValueError(
            f"{path} marks as cells only {100 * kept:.0f}% of the pixels inside the boxes' "
            f"ellipses of {name}: it is the supervision of another image (give one "
            "--supervision per image, in the order of the images), or was made from other "
            "boxes (run supervise with these boxes, then paint on its map again)."
        )


def _input_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields of --channel and --rgb, where given."""
    from ..images import parse_channels

    given: dict[str, Any] = {}
    if getattr(args, "channel", None):
        given["channels"] = parse_channels(args.channel)
    if getattr(args, "rgb", None):
        given["rgb"] = args.rgb
    return given


def config_from(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The recommended settings for the chosen device, with the options the user gave.

    Parameters
    ----------
    args : argparse.Namespace
        The command's options; those left out keep the recommended value.
    **fixed
        Settings the command fixes (a resumed model's size, the demo's rounds); an option the
        user gave wins over them.

    Returns
    -------
    TrainConfig

    Raises
    ------
    ValueError
        For a device this machine does not have, or a setting out of its range.
    """
    from ..config import ExchangeSettings, TrainConfig
    from ..devices import select_device

    # a mistyped or absent device told now, not after every image was read
    select_device(args.device)
    given: dict[str, Any] = {
        field: getattr(args, opt)
        for opt, field in _OPTIONS.items()
        if getattr(args, opt, None) is not None
    }
    if getattr(args, "exchange", None) is not None:
        given["exchange"] = ExchangeSettings(rule=args.exchange)
    try:
        return TrainConfig.recommended(args.device, **{**fixed, **given, **_input_options(args)})
    except ValueError as err:
        # the settings' problems named as the options the user typed (--steps, not
        # steps_per_round)
        text = str(err)
        for option, field in _OPTIONS.items():
            text = re.sub(rf"\b{field} must", f"--{option.replace('_', '-')} must", text)
        raise ValueError(text) from None
