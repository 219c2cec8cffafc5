"""Time between rounds when a large image is annotated in part: the labelled window against
the whole plane.

Usage::

    python benchmarks/annotated_window.py                  # timing, about 2 minutes
    python benchmarks/annotated_window.py --quality        # and held-out quality (slow)

The image is a 4 x 3 mosaic of BBBC039 training images (2080 x 2088 pixels) whose top-left
tile is the annotated region, every nucleus of it boxed (its ground-truth boxes). Training
predicts between rounds only the labelled part and half a patch around it
(:attr:`napari_mutualseg.training.MutualTrainer.windows`); ``whole`` forces the whole plane,
as before windows. The timing runs 3 rounds of one training step each, so that a round's
seconds are its prediction, exchange and report, alternating the two modes twice; the last
round is predicted whole in both modes and counted apart. With
``--quality`` both modes also train 3 rounds of the CPU defaults (seed 0) and segment the
first 4 validation images. Writes ``annotated_window.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import tifffile
from skimage.measure import regionprops

from napari_mutualseg import training
from napari_mutualseg.files import write_text
from napari_mutualseg.metrics import evaluate
from napari_mutualseg.supervision import Box, boxes_mask, make_supervision
from napari_mutualseg.training import MutualTrainer, TrainConfig

HERE = Path(__file__).resolve().parent
WINDOW = training._training_window


def _whole(sup, labels, margin):
    return slice(0, sup.classes.shape[0]), slice(0, sup.classes.shape[1])


def mosaic(data: Path) -> tuple[np.ndarray, object]:
    """The mosaic and its supervision (top-left tile boxed, the region)."""
    names = sorted((data / "train" / "images").iterdir())[:12]
    tiles = [tifffile.imread(p) for p in names]
    image = np.block([[tiles[3 * r + c] for c in range(3)] for r in range(4)])
    truth = tifffile.imread(data / "train" / "masks" / names[0].name)
    boxes = [Box.from_corners(*r.bbox) for r in regionprops(truth)]
    region = np.zeros(image.shape, bool)
    region[: truth.shape[0], : truth.shape[1]] = True
    region |= boxes_mask(image.shape, boxes)
    return image, make_supervision(image.shape, boxes, region=region)


def train(image, sup, whole: bool, **settings) -> MutualTrainer:
    """A trainer with windows (or the whole plane), iterated to the end."""
    training._training_window = _whole if whole else WINDOW
    try:
        trainer = MutualTrainer(image, sup, TrainConfig(device="cpu", seed=0, **settings))
        trainer.seconds = [round(r.seconds, 2) for r in trainer]
    finally:
        training._training_window = WINDOW
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/bbbc039")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    image, sup = mosaic(args.data)
    result: dict = {
        "image": list(image.shape),
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "modes": {"window": {}, "whole": {}},
    }
    for _ in range(2):
        for mode in ("window", "whole"):
            trainer = train(image, sup, mode == "whole", rounds=3, steps_per_round=1, min_change=0)
            entry = result["modes"][mode]
            entry.setdefault("round_s", []).extend(trainer.seconds[:-1])
            entry.setdefault("last_round_s", []).append(trainer.seconds[-1])
            entry["window"] = [[s.start, s.stop] for s in trainer.windows[0]]
            print(mode, entry["round_s"], flush=True)
    for entry in result["modes"].values():
        entry["median_round_s"] = float(np.median(entry["round_s"]))
    if args.quality:
        val = sorted((args.data / "val" / "images").iterdir())[:4]
        for mode in ("window", "whole"):
            pair = train(image, sup, mode == "whole", rounds=3).pair
            scores = [
                evaluate(
                    pair.segment(tifffile.imread(p)),
                    tifffile.imread(p.parent.parent / "masks" / p.name),
                )
                for p in val
            ]
            result["modes"][mode]["val_map"] = float(np.mean([s["map"] for s in scores]))
            print(mode, result["modes"][mode], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(
        args.out / "annotated_window.json", json.dumps(result, indent=1) + "\n", overwrite=True
    )
    rows = []
    for mode, e in result["modes"].items():
        (y0, y1), (x0, x1) = e["window"]
        rows.append(
            f"| {mode} | {y1 - y0} x {x1 - x0} | {e['median_round_s']:.1f} "
            f"| {np.median(e['last_round_s']):.1f} "
            f"| {e.get('val_map', float('nan')):.3f} |"
        )
    table = "\n".join(
        [
            f"# Between rounds on a {image.shape[0]} x {image.shape[1]} image, one tile annotated",
            "",
            f"CPU: {result['cpu']}. Median seconds of a round of one training step (prediction,",
            "exchange, report) before the last, and of the last (predicted whole in both modes);",
            "held-out mAP with --quality (nan: not run).",
            "",
            "| mode | predicted | s / round | s last round | val mAP |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    write_text(args.out / "annotated_window.md", table + "\n", overwrite=True)
    print(table)


if __name__ == "__main__":
    main()
