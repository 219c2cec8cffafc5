"""``supervise`` and ``evaluate``: the commands that make or compare label images, without
networks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..files import check_outputs
from .inputs import boxes_for, check_found, supervision
from .outputs import Outputs


def cmd_supervise(args: argparse.Namespace) -> int:
    """``supervise``: the ellipse supervision of one image's boxes; the exit status.

    A stack's class map holds all its planes, as ``train --supervision`` takes it; planes
    without boxes are ignored (255) there, as training leaves them out.
    """
    from ..ome import PixelSize
    from ..supervision import IGNORE

    if args.edge_width < 1:  # named as the option, before any file is read
        raise ValueError(f"--edge-width must be at least 1 pixel, got {args.edge_width}.")
    out = Path(args.out)
    extra = Path(args.instances_out) if args.instances_out else None
    check_outputs(
        [p for p in (out, extra) if p is not None], [args.image, args.boxes], args.overwrite
    )
    ((image, planes),) = boxes_for([args.image], [args.boxes], args)
    classes = np.full((len(planes), *image.plane_shape), IGNORE, np.uint8)
    instances = np.zeros(classes.shape, np.int32)
    n_boxes = 0
    for j, plane in enumerate(planes):
        if plane is not None:
            name, boxes = plane
            sup = supervision(name, image, boxes, j, edge_width=args.edge_width)
            classes[j], instances[j] = sup.classes, sup.instances
            n_boxes += len(sup.boxes)
    boxed = sum(p is not None for p in planes)
    where = "" if len(planes) == 1 else f" on {boxed} of {len(planes)} planes"
    outputs = Outputs(args.overwrite)
    size, axes = PixelSize.of(image), image.label_axes
    # marked as a supervision, so that a search of its folder for images leaves it out and
    # evaluate refuses it as instance labels
    written = outputs.labels(out, classes.reshape(image.label_shape), size, axes, "supervision")
    print(
        f"Wrote {written} ({n_boxes} boxes{where}; 0 background, 1 cell, 2 boundary, 255 ignore)"
    )
    if extra is not None:
        print(f"Wrote {outputs.labels(extra, instances.reshape(image.label_shape), size, axes)}")
    return outputs.status


def format_metrics(m: dict[str, float]) -> str:
    """The main scores of :func:`napari_mutualseg.metrics.evaluate` on one line."""
    return (
        f"F1@0.5 {m['f1_50']:.3f}  AP@0.5 {m['ap_50']:.3f}  AP@0.75 {m['ap_75']:.3f}  "
        f"mAP {m['map']:.3f}  AJI {m['aji']:.3f}  Dice {m['dice']:.3f}"
    )


def _label_image(path: str, axes: str | None) -> tuple[np.ndarray, str | None]:
    """An instance label image from ``path`` and its axes (None where the file does not say
    and ``axes`` is not given), or a ValueError that says why it is not one."""
    from ..io import LABEL_KIND_WORDS, written_as
    from ..measure import _cell_ids
    from ..metrics import not_instance_labels
    from ..readers import AxesUnknownError, read_axis_image

    kind = written_as(path)
    if kind in ("supervision", "disagreement"):
        raise ValueError(
            f"{path} is {LABEL_KIND_WORDS[kind]} written by napari-mutualseg, not instance "
            "labels: evaluate compares instance labels, such as predict and train "
            "--labels-out write."
        )
    try:
        read = read_axis_image(path, axes, lazy=False)
        image, letters = np.asarray(read.data), read.axes
    except AxesUnknownError as unknown:
        image, letters = np.asarray(unknown.data), None
    while image.ndim > 2 and image.shape[0] == 1:
        image = image[0]  # a plane saved as a stack of one, (1, H, W), is that plane
    if image.ndim == 2:
        letters = "YX"
    if letters is not None and "C" in letters:
        raise ValueError(
            f"{path} has channels (axes {letters}): evaluate compares instance labels, one "
            "number per object and no channels, such as predict writes."
        )
    try:
        image = _cell_ids(image)
    except ValueError as err:
        raise ValueError(
            f"{path} is not a label image: {err} evaluate compares instance labels, such as "
            "predict writes."
        ) from None
    # scores of a class map or a mask mean nothing: refused, where Python only warns
    problem = not_instance_labels(image)
    if problem:
        raise ValueError(f"{path} is not an instance label image: {problem}.")
    return image, letters


def _common_axes(paths: list[str], axes: list[str | None], ndim: int) -> str:
    """The axes both label images are scored by: what the files say (or ``--axes``)."""
    known = {a for a in axes if a is not None}
    if len(known) > 1:
        said = "; ".join(f"{p}: {a}" for p, a in zip(paths, axes, strict=True))
        raise ValueError(
            f"The two label images have other axes ({said}): give the ground truth of the "
            "same z-stack or time series, or --axes with one letter per axis of both."
        )
    if not known:
        raise ValueError(
            f"{paths[0]} and {paths[1]} do not say what their {ndim} axes are: give --axes "
            "ZYX to score a z-stack's cells as 3D objects, or --axes TYX to score a time "
            "series frame by frame."
        )
    return known.pop()


def _check_not_intensities(path: str, image: np.ndarray) -> None:
    """Refuse a microscope image given where labels belong (the image, not its cells), by
    the rule that leaves such files out of a folder given to predict
    (:func:`napari_mutualseg.metrics.label_evidence`)."""
    from ..metrics import label_evidence

    evidence = label_evidence(image)
    if evidence.labels is False:
        raise ValueError(
            f"{path} looks like a microscope image, not labels: {evidence.describe()}, where "
            "a label image gives each cell one number. Give the labels instead: the "
            "_cells.tif that predict writes, or the ground truth's mask file."
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: print the scores of a label image against ground truth; the exit status.

    A z-stack's cells are scored as 3D objects; a time series is scored frame by frame and
    the frames' scores averaged, as its cells are numbered anew or tracked from frame to
    frame.
    """
    from ..metrics import evaluate, mean_metrics

    paths = [args.pred, args.gt]
    check_found(paths, "Label image")
    (pred, pred_axes), (gt, gt_axes) = (_label_image(p, args.axes) for p in paths)
    # after both are read, so that a missing file is named first
    _check_not_intensities(args.pred, pred)
    _check_not_intensities(args.gt, gt)
    if pred.shape != gt.shape:
        sizes = [" x ".join(map(str, image.shape)) for image in (pred, gt)]
        raise ValueError(
            f"{args.pred} is {sizes[0]} px but its ground truth {args.gt} is {sizes[1]} px: "
            "give the ground truth of the image that was segmented, at that image's size."
        )
    axes = _common_axes(paths, [pred_axes, gt_axes], pred.ndim)
    if "T" in axes:  # T comes first (TZYX)
        m = mean_metrics([evaluate(p, g) for p, g in zip(pred, gt, strict=True)])
        m["frames"] = len(pred)
        line = f"{format_metrics(m)}  (mean of {len(pred)} frames)"
    else:
        m = evaluate(pred, gt)
        line = format_metrics(m)
    print(json.dumps(m, indent=2) if args.json else line)
    return 0
