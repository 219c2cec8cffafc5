"""``supervise`` and ``evaluate``: the commands that make or compare label images, without
networks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..files import check_outputs
from .inputs import boxes_for, supervision
from .outputs import Outputs


def cmd_supervise(args: argparse.Namespace) -> int:
    """``supervise``: the ellipse supervision of one image's boxes; the exit status."""
    from ..ome import PixelSize

    out = Path(args.out)
    extra = Path(args.instances_out) if args.instances_out else None
    check_outputs(
        [p for p in (out, extra) if p is not None], [args.image, args.boxes], args.overwrite
    )
    ((image, planes),) = boxes_for([args.image], [args.boxes], args)
    if len(planes) > 1:
        raise ValueError("supervise takes a single 2D image; use train for stacks.")
    ((name, boxes),) = planes
    sup = supervision(name, image, boxes, edge_width=args.edge_width)
    outputs = Outputs(args.overwrite)
    size = PixelSize.of(image)
    written = outputs.labels(out, sup.classes, size)
    print(
        f"Wrote {written} ({len(sup.boxes)} boxes; 0 background, 1 cell, 2 boundary, 255 ignore)"
    )
    if extra is not None:
        print(f"Wrote {outputs.labels(extra, sup.instances, size)}")
    return outputs.status


def format_metrics(m: dict[str, float]) -> str:
    """The main scores of :func:`napari_mutualseg.metrics.evaluate` on one line."""
    return (
        f"F1@0.5 {m['f1_50']:.3f}  AP@0.5 {m['ap_50']:.3f}  AP@0.75 {m['ap_75']:.3f}  "
        f"mAP {m['map']:.3f}  AJI {m['aji']:.3f}  Dice {m['dice']:.3f}"
    )


def _label_image(path: str) -> np.ndarray:
    """An instance label image from ``path``, or a ValueError that says why it is not one."""
    from ..io import read_image

    image = np.asarray(read_image(path))
    if image.dtype == bool or np.issubdtype(image.dtype, np.integer):
        whole = True
    else:
        whole = np.issubdtype(image.dtype, np.floating) and bool(
            np.all(np.isfinite(image)) and np.all(image == np.round(image))
        )
    if not whole or image.min() < 0:
        raise ValueError(
            f"{path} ({image.dtype}, values {image.min():g} to {image.max():g}) is not a label "
            "image: evaluate compares instance labels, whole numbers from 0 (background) with "
            "one number per object, such as predict writes."
        )
    return image.astype(np.int64, copy=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: print the scores of a label image against ground truth; the exit status."""
    from ..metrics import evaluate

    pred, gt = _label_image(args.pred), _label_image(args.gt)
    if pred.shape != gt.shape:
        raise ValueError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    m = evaluate(pred, gt)
    print(json.dumps(m, indent=2) if args.json else format_metrics(m))
    return 0
