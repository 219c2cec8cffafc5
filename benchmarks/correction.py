"""Correct and retrain with a simulated person: which cells are worth a person's touch?

Usage::

    python benchmarks/correction.py --split-eval val    # choices: on val
    python benchmarks/correction.py                     # the result: test, once
    python benchmarks/correction.py --split-eval val --steps 2 --k 5 --pool 2 --n-eval 2 \\
        --train-steps 10 --out /tmp/correction          # a rehearsal in about 3 minutes

The person starts with boxes around every cell of the first ``--start`` BBBC039 training
images; the pair is trained on them (the ``reduced`` configuration of ``run.py``). The next
``--pool`` training images are new images. Each step, the person touches about ``--k`` cells
on them, then training resumes from the current pair over every training image together
(``--step-rounds`` rounds of ``--step-steps`` steps), and the pair segments the evaluation
images. Strategies:

``guided``
    The person checks the cells and regions where A and B disagree most
    (``Prediction.spots``, over all new images) and fixes what is wrong there.
``random``
    The person checks cells picked at random (any true cell of the new images) and fixes
    what is wrong there.
``boxes``
    The person boxes every cell of one more new image (the ordinary flow).
``retrain``
    No new annotation: training only resumes (the control: what more steps alone give).

A fix is what the widget offers: a wrong cell (IoU with the true cell below ``--ok-iou``, or
missing) is painted with its true mask, a predicted cell with no true cell under it is
deleted; each counts as one touched cell. A checked cell that is right is left alone (it is
not trusted: the widget trusts only what was changed) and counted as *looked at*. The
corrected image becomes training data with ``supervision_from_masks(rest="ignore")``: the
fixed cells are trusted whole masks, deleted pixels trusted background, the rest ignored.

References, trained from scratch on the ``--start + --pool`` images: ``boxes_all``, mutual
learning on boxes around every cell (the ``mutual`` row of ``run.py``, exact boxes), and
``full``, the same networks on the true masks (the ceiling).

Writes ``<out>/correction_<split>_<device>[_<tag>].json`` (every step of every strategy),
``.md`` (tables and the target) and ``.png`` (mAP against touched cells).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.disagreement import REGION_THRESHOLD, RIM, Spot
from napari_mutualseg.files import write_text
from napari_mutualseg.models import ModelPair
from napari_mutualseg.preprocess import normalize
from napari_mutualseg.supervision import supervision_from_masks
from napari_mutualseg.training import MutualTrainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import METRIC_KEYS
from run import (
    CONFIGS,
    DEFAULT_DATA,
    JITTER_SEED,
    REPO,
    evaluate_inductive,
    load_split,
    log,
    run_trained,
    supervisions,
)

STRATEGIES = ("guided", "random", "boxes", "retrain")
#: A region's true cells: those with at least this share of their area in it (else the one
#: that overlaps it most).
REGION_SHARE = 0.25
#: A cell spot's true cells: those with at least this share of their area in the predicted cell.
CELL_SHARE = 0.5


# ------------------------------------------------------------------ the simulated person


@dataclass
class Corrections:
    """What the person did on one new image: true cells painted, background asserted."""

    truth: np.ndarray
    fixed: set[int] = field(default_factory=set)
    cleared: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.cleared is None:
            self.cleared = np.zeros(self.truth.shape, bool)

    @property
    def touched(self) -> bool:
        return bool(self.fixed) or bool(self.cleared.any())

    def fix(self, cell: int, predicted: np.ndarray) -> None:
        """Paint true cell ``cell`` over the prediction; what its predicted cells held beyond
        any true cell is erased (background)."""
        self.fixed.add(int(cell))
        under = np.unique(predicted[self.truth == cell])
        self.delete(np.isin(predicted, under[under > 0]))

    def delete(self, mask: np.ndarray) -> None:
        """Assert background where ``mask`` holds no true cell."""
        self.cleared |= mask & (self.truth == 0)

    def supervision(self, predicted: np.ndarray):
        """The image as training data: fixed cells trusted whole, the rest ignored.

        The labels handed over are the person's layer: the fixed cells painted over the
        prediction, deleted pixels empty (so the background ring around a fixed cell never
        covers a predicted neighbour).
        """
        offset = int(predicted.max()) + 1
        painted = np.isin(self.truth, list(self.fixed))
        layer = np.where(painted, self.truth + offset, np.where(self.cleared, 0, predicted))
        cells = [c + offset for c in self.fixed]
        return supervision_from_masks(
            layer, cells=cells, background=self.cleared & ~painted, rest="ignore"
        )


def best_iou(truth: np.ndarray, cell: int, predicted: np.ndarray) -> float:
    """IoU of true cell ``cell`` with the predicted cell that overlaps it most (0 if none)."""
    inside = truth == cell
    under = predicted[inside]
    under = under[under > 0]
    if under.size == 0:
        return 0.0
    best = np.bincount(under).argmax()
    inter = int((under == best).sum())
    return inter / float(inside.sum() + (predicted == best).sum() - inter)


def cells_at(truth: np.ndarray, where: np.ndarray, share: float) -> list[int]:
    """True cells with at least ``share`` of their area in ``where`` (else the most overlapped)."""
    hits = truth[where]
    hits = hits[hits > 0]
    if hits.size == 0:
        return []
    count = np.bincount(hits)
    area = np.bincount(truth.ravel(), minlength=count.size)[: count.size]
    chosen = np.flatnonzero((count > 0) & (count >= share * np.maximum(area, 1)))
    return chosen.tolist() if chosen.size else [int(count.argmax())]


def spot_mask(spot: Spot, predicted: np.ndarray, disagreement: np.ndarray) -> np.ndarray:
    """The pixels of a spot: its predicted cell, or its region's pixels inside its box."""
    if spot.kind == "cell":
        return predicted == spot.label
    from skimage.segmentation import expand_labels

    y0, x0, y1, x1 = spot.bbox
    mask = np.zeros(predicted.shape, bool)
    outside = expand_labels(predicted[y0:y1, x0:x1], RIM) == 0
    mask[y0:y1, x0:x1] = (disagreement[y0:y1, x0:x1] >= REGION_THRESHOLD) & outside
    return mask


def check(
    work: Corrections, cells: list[int], predicted: np.ndarray, ok_iou: float
) -> tuple[int, int]:
    """The person checks ``cells`` (true ids) on one image: (touched, looked at)."""
    todo = [c for c in cells if c not in work.fixed]
    wrong = [c for c in todo if best_iou(work.truth, c, predicted) < ok_iou]
    for c in wrong:
        work.fix(c, predicted)
    return len(wrong), len(todo) - len(wrong)


def guided_step(works, predictions, k: int, ok_iou: float) -> tuple[int, int]:
    """Check the most disputed spots over every new image until ``k`` cells are touched."""
    queue = sorted(
        ((s.score, i, n) for i, p in enumerate(predictions) for n, s in enumerate(p.spots)),
        key=lambda t: -t[0],
    )
    touched = looked = 0
    for _, i, n in queue:
        if touched >= k:
            break
        work, pred = works[i], predictions[i]
        spot = pred.spots[n]
        where = spot_mask(spot, pred.labels, pred.disagreement)
        share = CELL_SHARE if spot.kind == "cell" else REGION_SHARE
        cells = cells_at(work.truth, where, share)
        if not cells:
            if not (where & ~work.cleared & (work.truth == 0)).any():
                continue
            work.delete(where)  # nothing there: a false cell deleted, or a region cleared
            touched += 1
            continue
        t, lk = check(work, cells, pred.labels, ok_iou)
        touched, looked = touched + t, looked + lk
    return touched, looked


def random_step(works, predictions, k: int, ok_iou: float, rng) -> tuple[int, int]:
    """Check true cells picked at random over every new image until ``k`` cells are touched."""
    pool = [
        (i, int(c))
        for i, w in enumerate(works)
        for c in np.unique(w.truth[w.truth > 0])
        if int(c) not in w.fixed
    ]
    touched = looked = 0
    for j in rng.permutation(len(pool)):
        if touched >= k:
            break
        i, c = pool[j]
        t, lk = check(works[i], [c], predictions[i].labels, ok_iou)
        touched, looked = touched + t, looked + lk
    return touched, looked


# ------------------------------------------------------------------------------- the run


def _short(metrics: dict) -> dict:
    return {key: round(float(metrics[key]), 4) for key in METRIC_KEYS}


def train(images, sups, kw: dict, pair: ModelPair | None) -> ModelPair:
    """Train (or resume) the pair; the pair of the last round."""
    trainer = MutualTrainer(images, sups, TrainConfig.from_dict(kw), pair=pair)
    for _ in trainer:
        pass
    return trainer.pair


def run_strategy(name: str, ctx: dict, args: argparse.Namespace) -> list[dict]:
    """Every step of one strategy, from the shared start pair: touched cells and eval metrics."""
    start_n = ctx["start_cells"]
    points = [{"step": 0, "touched": start_n, "looked": 0, **ctx["start_metrics"]}]
    pair = ctx["start_pair"]
    rng = np.random.default_rng(args.seed + 100)
    works = [Corrections(m) for m in ctx["pool_masks"]]
    boxed = 0
    touched_total, looked_total = start_n, 0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        predictions = []
        if name in ("guided", "random"):
            predictions = [pair.predict(im, tile_size=ctx["tile"]) for im in ctx["pool_images"]]
        if name == "guided":
            touched, looked = guided_step(works, predictions, args.k, args.ok_iou)
        elif name == "random":
            touched, looked = random_step(works, predictions, args.k, args.ok_iou, rng)
        elif name == "boxes":
            if boxed == len(works):
                break
            touched, looked = int(len(np.unique(works[boxed].truth)) - 1), 0
            boxed += 1
        else:
            touched, looked = 0, 0
        images, sups = list(ctx["start_images"]), list(ctx["start_sups"])
        if name == "boxes":
            images += ctx["pool_images"][:boxed]
            sups += ctx["pool_boxes"][:boxed]
        elif predictions:
            for w, im, p in zip(works, ctx["pool_images"], predictions, strict=True):
                if w.touched:
                    images.append(im)
                    sups.append(w.supervision(p.labels))
        kw = dict(ctx["step_kw"], seed=args.seed * 1000 + step)
        pair = train(images, sups, kw, pair)
        seconds = time.perf_counter() - t0
        metrics = _eval(pair, ctx)
        touched_total += touched
        looked_total += looked
        points.append(
            {
                "step": step,
                "touched": touched_total,
                "looked": looked_total,
                "touched_this_step": touched,
                "training_images": len(images),
                "seconds": round(seconds, 1),
                **metrics,
            }
        )
        log(
            f"  {name} step {step}: touched {touched_total} (+{touched}, looked at {looked}), "
            f"{len(images)} training images, mAP {metrics['map']:.3f}, {seconds:.0f} s"
        )
    return points


def _eval(pair: ModelPair, ctx: dict) -> dict:
    res = evaluate_inductive(
        pair.models, ctx["eval_norm"], ctx["eval_masks"], ctx["device"], ctx["cfg"], None
    )
    return _short(res["ensemble"])


def first_reaching(points: list[dict], level: float) -> dict | None:
    """The first step whose mAP reaches ``level``."""
    return next((p for p in points if p["map"] >= level), None)


def summary_lines(result: dict) -> list[str]:
    """The target, met or missed, and how the curves compare."""
    refs, curves = result["references"], result["strategies"]
    n_all = result["cells_all"]
    ref = refs.get("boxes_all", {}).get("map")
    lines = []
    if ref is not None and "guided" in curves:
        hit = first_reaching(curves["guided"], ref)
        half = n_all / 2
        if hit is None:
            best = max(curves["guided"], key=lambda p: p["map"])
            lines.append(
                f"- guided correction reaches mAP ≥ {ref:.3f} (every cell of {result['n_all']} "
                f"images boxed, {n_all} cells) with ≤ {half:.0f} touched cells: **missed**; "
                f"it reaches {best['map']:.3f} at {best['touched']} touched cells"
            )
        else:
            ok = hit["touched"] <= half
            lines.append(
                f"- guided correction reaches mAP ≥ {ref:.3f} (every cell of {result['n_all']} "
                f"images boxed, {n_all} cells) at {hit['touched']} touched cells "
                f"(≤ {half:.0f}): **{'met' if ok else 'missed'}**"
            )
    for name, pts in curves.items():
        last = pts[-1]
        lines.append(
            f"- {name}: mAP {pts[0]['map']:.3f} → {last['map']:.3f} at {last['touched']} touched "
            f"cells ({last.get('looked', 0)} more looked at and left alone)"
        )
    return lines


def plot(result: dict, path: Path) -> None:
    """mAP on the evaluation images against the cells a person touched."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    colours = {"guided": "tab:red", "random": "tab:blue", "boxes": "tab:green"}
    colours["retrain"] = "tab:gray"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, pts in result["strategies"].items():
        ax.plot(
            [p["touched"] for p in pts],
            [p["map"] for p in pts],
            marker="o",
            ms=3,
            color=colours[name],
            label=name,
        )
    styles = {"boxes_all": ("--", "black"), "full": (":", "black")}
    for name, ref in result["references"].items():
        style, colour = styles[name]
        what = "boxes" if name == "boxes_all" else "true masks"
        ax.axhline(
            ref["map"],
            ls=style,
            color=colour,
            lw=1,
            label=f"{what}, all {result['n_all']} images ({result['cells_all']} cells)",
        )
    ax.axvline(result["cells_all"] / 2, color="tab:orange", lw=0.8, label="half those cells")
    ax.set_xlabel("cells a person touched (boxed, painted, deleted)")
    ax.set_ylabel(f"mAP on {result['n_eval']} {result['split_eval']} images")
    ax.set_title(
        f"BBBC039, K = {result['k']} cells per step, {result['device_name']}", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict, command: str, plot_name: str) -> str:
    """The tables of every step and the target lines."""
    lines = [
        f"**Correct and retrain on BBBC039, {result['device_name']}**: boxes on {result['start']} "
        f"train images ({result['start_cells']} cells), {result['pool']} new train images, "
        f"K = {result['k']} cells per step, {result['step_rounds']} round(s) × "
        f"{result['step_steps']} steps per step, scored on {result['n_eval']} "
        f"`{result['split_eval']}` images (ensemble, no boxes); seed {result['seed']}; total "
        f"{result['seconds'] / 60:.1f} min (torch {result['torch']}, Python "
        f"{platform.python_version()}).",
        "",
        f"`{command}`",
        "",
        "| strategy | step | touched | looked at | training images | F1@0.5 | AP@0.75 | mAP | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pts in result["strategies"].items():
        for p in pts:
            lines.append(
                f"| {name} | {p['step']} | {p['touched']} | {p.get('looked', 0)} | "
                f"{p.get('training_images', result['start'])} | {p['f1_50']:.3f} | "
                f"{p['ap_75']:.3f} | {p['map']:.3f} | {p.get('seconds', 0):.0f} |"
            )
    for name, ref in result["references"].items():
        lines.append(
            f"| {name} (from scratch) | – | {result['cells_all']} | – | {result['n_all']} | "
            f"{ref['f1_50']:.3f} | {ref['ap_75']:.3f} | {ref['map']:.3f} | "
            f"{ref['seconds']:.0f} |"
        )
    lines += ["", *summary_lines(result), "", f"![mAP against touched cells]({plot_name})", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docs)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BBBC039 folder")
    p.add_argument("--split-eval", choices=("val", "test"), default="test")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--start", type=int, default=2, help="boxed images the person starts with")
    p.add_argument("--pool", type=int, default=6, help="new training images to correct")
    p.add_argument("--k", type=int, default=20, help="cells touched per step")
    p.add_argument("--steps", type=int, default=10, help="correction steps per strategy")
    p.add_argument("--n-eval", type=int, default=8, help="evaluation images")
    p.add_argument("--step-rounds", type=int, default=1, help="rounds of training per step")
    p.add_argument("--step-steps", type=int, default=80, help="steps per round in a step")
    p.add_argument("--train-steps", type=int, help="override every steps-per-round (rehearsals)")
    p.add_argument("--ok-iou", type=float, default=0.8, help="a checked cell this good is left")
    p.add_argument("--no-references", action="store_true", help="skip boxes_all and full")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", help="suffix of the output file names")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run every strategy and the references; write JSON, markdown and the plot."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    device_name = describe_device(device)
    base = dict(CONFIGS["reduced"]["train"], seed=args.seed, device=str(device), min_change=0.0)
    step_kw = dict(base, rounds=args.step_rounds, steps_per_round=args.step_steps)
    if args.train_steps:
        base["steps_per_round"] = step_kw["steps_per_round"] = args.train_steps
    n_all = args.start + args.pool
    log(f"correction benchmark on {device_name}: {args.start} boxed + {args.pool} new images")
    images, masks, _ = load_split(args.data, "train", n_all)
    eval_raw, eval_masks, _ = load_split(args.data, args.split_eval, args.n_eval)
    cfg = TrainConfig.from_dict(base)
    boxes_all = supervisions(masks, "exact", JITTER_SEED + args.seed)
    t_all = time.perf_counter()
    ctx = {
        "device": device,
        "cfg": cfg,
        "tile": cfg.tile_size,
        "step_kw": step_kw,
        "start_images": images[: args.start],
        "start_sups": boxes_all[: args.start],
        "pool_images": images[args.start :],
        "pool_masks": masks[args.start :],
        "pool_boxes": boxes_all[args.start :],
        "eval_norm": [normalize(im, cfg.percentiles) for im in eval_raw],
        "eval_masks": eval_masks,
        "start_cells": sum(len(s.boxes) for s in boxes_all[: args.start]),
    }
    log(f"start: training on {args.start} boxed images ({ctx['start_cells']} cells)")
    ctx["start_pair"] = train(ctx["start_images"], ctx["start_sups"], base, None)
    ctx["start_metrics"] = _eval(ctx["start_pair"], ctx)
    log(f"start: mAP {ctx['start_metrics']['map']:.3f}")
    result = {
        "device": str(device),
        "device_name": device_name,
        "split_eval": args.split_eval,
        "n_eval": args.n_eval,
        "start": args.start,
        "pool": args.pool,
        "n_all": n_all,
        "k": args.k,
        "ok_iou": args.ok_iou,
        "step_rounds": args.step_rounds,
        "step_steps": step_kw["steps_per_round"],
        "train": base,
        "seed": args.seed,
        "torch": torch.__version__,
        "start_cells": ctx["start_cells"],
        "cells_all": sum(len(s.boxes) for s in boxes_all),
        "strategies": {},
        "references": {},
    }
    for name in args.strategies:
        log(f"strategy {name}")
        result["strategies"][name] = run_strategy(name, ctx, args)
    if not args.no_references:
        ref_ctx = {
            "device": device,
            "train_kw": base,
            "pool": None,
            "train_images": images,
            "train_masks": masks,
            "eval_images": ctx["eval_norm"],
            "eval_masks": eval_masks,
            "eval_last": True,  # only the final round is reported
        }
        for method, key in (("mutual", "boxes_all"), ("full", "full")):
            log(f"reference {key}: {method} on all {n_all} images from scratch")
            res = run_trained(method, ref_ctx, boxes_all, "exact")
            result["references"][key] = {
                **_short(res["final"]["inductive"]),
                "seconds": round(res["seconds"], 1),
            }
            log(f"  {key}: mAP {result['references'][key]['map']:.3f}")
    result["seconds"] = time.perf_counter() - t_all

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"correction_{args.split_eval}_{device.type}" + (f"_{args.tag}" if args.tag else "")
    write_text(args.out / f"{stem}.json", json.dumps(result, indent=1) + "\n", overwrite=True)
    plot(result, args.out / f"{stem}.png")
    command = "python benchmarks/correction.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = markdown(result, command.strip(), f"{stem}.png")
    write_text(args.out / f"{stem}.md", md, overwrite=True)
    print(md)
    log(f"done in {result['seconds'] / 60:.1f} min: {args.out / stem}.json / .md / .png")
    return result


if __name__ == "__main__":
    main()
