"""3D objects from boxes on a few planes: a synthetic z-stack with known 3D cells.

Usage::

    python benchmarks/volume.py                   # about 3 minutes on 2 CPU cores
    python benchmarks/volume.py --steps 10 --out /tmp/volume    # a smoke run

A pair is trained from boxes drawn on every fourth plane of one synthetic stack (the bounding
boxes of the true cross-sections there), then segments other stacks whole: every plane on its
own, the planes linked into 3D objects (:func:`napari_mutualseg.linking.link_labels`). The 3D
labels are scored against the true 3D cells with :func:`napari_mutualseg.metrics.evaluate`
(matching 3D objects by their 3D IoU), beside:

- the same planes not linked (each plane's objects counted as objects of their own), which is
  what a stack segmented plane by plane gives, and linked without bridging a missing plane;
- the mean 2D score of the planes (how good the segmentation is before any linking);
- the true cross-sections linked (how much the linking alone loses);
- linking by IoU instead of by the share of the smaller object, at several thresholds.

Writes ``<out>/volume.json`` and ``<out>/volume.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.measure import label, regionprops

from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.files import write_text
from napari_mutualseg.images import AxisImage
from napari_mutualseg.linking import link_labels, link_slices, separate_planes
from napari_mutualseg.metrics import evaluate, match_instances, mean_metrics
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.synthetic import synthetic_volume
from napari_mutualseg.training import MutualTrainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "segmented planes, linked (the default)"
KEYS = ("f1_50", "ap_50", "ap_75", "map", "aji", "n_pred", "n_gt")
SHAPE = (24, 160, 160)
N_CELLS = 24
BOXED_EVERY = 4
TRAIN = {
    "width": 16,
    "depth": 3,
    "batch_size": 4,
    "patch_size": 64,
    "rounds": 3,
    "steps_per_round": 60,
    "tile_size": 160,
    "min_change": 0.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def boxes_on(truth_plane: np.ndarray) -> np.ndarray:
    """Bounding boxes of the true cross-sections of one plane (at least 3 px wide)."""
    rows = [r.bbox for r in regionprops(truth_plane)]
    return np.array([b for b in rows if min(b[2] - b[0], b[3] - b[1]) >= 3]).reshape(-1, 4)


def link_by_iou(labels: np.ndarray, min_iou: float) -> np.ndarray:
    """The alternative criterion: one-to-one matching of consecutive planes at IoU >= min_iou."""
    out = np.zeros(labels.shape, np.int64)
    next_id = 1
    for k, plane in enumerate(labels):
        lut = np.zeros(int(plane.max()) + 1, np.int64)
        if k:
            m = match_instances(plane, out[k - 1], threshold=min_iou)
            lut[m.pred_ids] = m.gt_ids
        ids = np.unique(plane)
        new = ids[(ids > 0) & (lut[ids] == 0)]
        lut[new] = np.arange(next_id, next_id + new.size)
        next_id += new.size
        out[k] = lut[plane]
    return out


def short(m: dict) -> dict:
    return {k: round(float(m[k]), 4) for k in KEYS}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, help="override steps per round (smoke runs)")
    p.add_argument("--test-stacks", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    cfg = TrainConfig(**{**TRAIN, "device": str(device), "seed": args.seed})
    if args.steps:
        cfg.steps_per_round = args.steps

    volume, truth = synthetic_volume(SHAPE, N_CELLS, seed=100 + args.seed)
    stack = AxisImage.from_array(volume, "ZYX", name="train stack")
    boxed = list(range(BOXED_EVERY // 2, SHAPE[0], BOXED_EVERY))
    # one supervision per plane, None where nothing is boxed
    sups = [
        make_supervision(SHAPE[1:], boxes_on(truth[z])) if z in boxed else None
        for z in range(SHAPE[0])
    ]
    n_boxes = sum(len(s.boxes) for s in sups if s is not None)
    log(f"training on {len(boxed)} of {SHAPE[0]} planes, {n_boxes} boxes, on {device}")
    start = time.perf_counter()
    trainer = MutualTrainer(stack, sups, cfg)
    for report in trainer:
        log(f"  round {report.round}: {report.seconds:.1f} s")
    train_seconds = time.perf_counter() - start
    pair = trainer.pair

    rows: dict[str, list[dict]] = {}

    def add(name: str, pred: np.ndarray, gt: np.ndarray) -> None:
        rows.setdefault(name, []).append(evaluate(pred, gt))

    seconds = []
    for k in range(args.test_stacks):
        volume, truth = synthetic_volume(SHAPE, N_CELLS, seed=200 + k)
        start = time.perf_counter()
        per_plane = pair.segment(volume, axes="ZYX", link=False)
        linked = link_labels(per_plane, "ZYX")
        seconds.append(time.perf_counter() - start)
        add(DEFAULT, linked, truth)
        add("segmented planes, not linked", separate_planes(per_plane), truth)
        add("segmented planes, linked without gaps (max_gap=0)", link_slices(per_plane), truth)
        with_cells = [z for z in range(SHAPE[0]) if truth[z].any()]
        rows.setdefault("segmented planes, 2D score of each plane with cells", []).append(
            mean_metrics([evaluate(per_plane[z], truth[z]) for z in with_cells])
        )
        true_planes = np.stack([label(t > 0) for t in truth])
        add("true cross-sections, linked", link_labels(true_planes, "ZYX"), truth)
        for share in (0.25, 0.75):
            relinked = link_labels(per_plane, "ZYX", min_overlap=share)
            add(f"segmented planes, linked at overlap share {share}", relinked, truth)
        for iou in (0.25, 0.5):
            add(f"segmented planes, linked at IoU {iou}", link_by_iou(per_plane, iou), truth)
        add("true cross-sections, linked at IoU 0.25", link_by_iou(true_planes, 0.25), truth)
        log(f"  test stack {k}: mAP {rows[DEFAULT][-1]['map']:.3f}")
    summary = {name: short(mean_metrics(ms)) for name, ms in rows.items()}
    result = {
        "device": describe_device(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "shape": SHAPE,
        "cells_per_stack": N_CELLS,
        "boxed_planes": boxed,
        "boxes": n_boxes,
        "settings": cfg.to_dict(),
        "train_seconds": round(train_seconds, 1),
        "segment_seconds_per_stack": round(float(np.mean(seconds)), 1),
        "test_stacks": args.test_stacks,
        "results": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    custom = "_custom" if args.steps else ""
    write_text(args.out / f"volume{custom}.json", json.dumps(result, indent=2), overwrite=True)
    lines = [
        f"Synthetic z-stacks {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]}, {N_CELLS} ellipsoidal cells "
        f"each; trained on boxes of planes {boxed} of one stack ({n_boxes} boxes), scored on "
        f"{args.test_stacks} other stacks (mean). {result['device']}, training "
        f"{result['train_seconds']} s, segmenting "
        f"{result['segment_seconds_per_stack']} s a stack.",
        "",
        "| labels | F1@0.5 | AP@0.5 | AP@0.75 | mAP | AJI | objects (true) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {name} | {m['f1_50']:.3f} | {m['ap_50']:.3f} | {m['ap_75']:.3f} | {m['map']:.3f} "
            f"| {m['aji']:.3f} | {m['n_pred']:.1f} ({m['n_gt']:.1f}) |"
        )
    write_text(args.out / f"volume{custom}.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
