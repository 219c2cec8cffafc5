"""Benchmark box-supervised mutual learning on BBBC039 against its baselines and the ceiling.

Usage::

    python benchmarks/run.py                                   # reduced config, CPU, all boxes
    python benchmarks/run.py --config full --device cuda       # the full config on a GPU
    python benchmarks/run.py --max-images 2 --rounds 2 --steps 5 --out /tmp/bench   # smoke run

Two settings: ``boxed`` segments the boxed training images themselves (one object per box),
``inductive`` segments the images of the evaluation split with no boxes. Six methods: the
ellipse labels, Otsu inside each box, one round on the box labels, self-training, mutual
learning and the same networks trained on the true masks. See ``benchmarks/README.md``.

Writes ``<out>/<config>_<device>_<boxes>.json`` (a list of result rows) and a markdown table
``.md``, both again after every finished method, and the per-round plot ``_rounds.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict
from itertools import repeat
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.files import write_text
from napari_mutualseg.inference import predict_proba
from napari_mutualseg.preprocess import normalize
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.training import ExchangeSettings, MutualTrainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import (
    BOXED_ONLY,
    METHODS,
    METRIC_KEYS,
    boxes_from_labels,
    jitter_boxes,
    make_row,
    markdown_table,
    otsu_in_boxes,
    read_boxed,
    read_free,
    region_boxes,
    score,
    use_true_labels,
    widen_small_boxes,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bbbc039"

#: The two configurations. ``reduced`` fits 20 minutes on 2 CPU cores; ``full`` is the
#: reference recipe of the method notes (one GPU). ``tile_size=704`` predicts a whole 520 x 696
#: BBBC039 image as one tile (no overlap to compute twice): prediction on every image after
#: every round is a large share of the CPU budget.
CONFIGS = {
    "reduced": {
        "n_train": 8,
        "n_eval": 8,
        "train": {
            "width": 16,
            "depth": 3,
            "batch_size": 4,
            "patch_size": 128,
            "rounds": 3,
            "steps_per_round": 80,
            "tile_size": 704,
        },
    },
    "full": {
        "n_train": 50,
        "n_eval": 50,
        "train": {
            "width": 32,
            "depth": 4,
            "batch_size": 16,
            "patch_size": 256,
            "rounds": 5,
            "steps_per_round": 300,
            "tile_size": 704,
        },
    },
}
JITTER_SEED = 4
#: Share of the cells left unboxed in the ``region`` boxes mode.
UNBOXED = 0.2


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays free for the final table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def load_split(root: Path, split: str, limit: int) -> tuple[list, list, list[str]]:
    """The first ``limit`` images and instance masks of one split with cells, in file-name
    order. A few BBBC039 fields hold no cell (three of the train split): no box can be drawn
    on them, and their scores would be 0 or 1 whatever was segmented."""
    folder = root / split / "images"
    names, masks, empty = [], [], []
    for name in sorted(p.name for p in folder.glob("*.tif")):
        if len(names) == limit:
            break
        mask = tifffile.imread(root / split / "masks" / name).astype(np.int32)
        if not mask.any():
            empty.append(name)
            continue
        names.append(name)
        masks.append(mask)
    if not names:
        raise SystemExit(f"No images in {folder}; pass --data PATH to the BBBC039 folder.")
    if empty:
        log(f"{split}: left out {len(empty)} image(s) without cells: {', '.join(empty)}")
    images = [tifffile.imread(folder / n) for n in names]
    return images, masks, names


def supervisions(masks: list[np.ndarray], mode: str, seed: int) -> list:
    """Ellipse supervision of every image from its ground-truth boxes.

    ``exact``: every cell's bounding box; ``jittered``: each side moved by up to 10 % of the
    box size; ``region``: the "annotated region" mode with 20 % of the cells left unboxed
    outside the region (:func:`baselines.region_boxes`).
    """
    rng = np.random.default_rng(seed)
    out = []
    for mask in masks:
        region = None
        if mode == "region":
            boxes, region = region_boxes(mask, UNBOXED)
        else:
            boxes = boxes_from_labels(mask)
        if mode == "jittered":
            boxes = jitter_boxes(boxes, mask.shape, rng)
        boxes = widen_small_boxes(boxes, mask.shape)
        out.append(make_supervision(mask.shape, boxes, region=region))
    return out


# ---------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak resident memory (sampled) and peak CUDA memory of the enclosed block, in MB."""

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device = device
        self.interval = interval
        self.peak_ram_mb = 0.0
        self.peak_gpu_mb: float | None = None
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, AttributeError):
            # No /proc (macOS): the process-wide peak is the best available bound.
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_ram_mb = max(self.peak_ram_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_ram_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_ram_mb = round(max(self.peak_ram_mb, self._rss_mb()), 1)
        if self.device.type == "cuda":
            self.peak_gpu_mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


# ------------------------------------------------------------------------ trained methods


def _serial_map(fn, *iterables) -> list:
    # strict=False: the constant arguments come as endless itertools.repeat streams.
    return [fn(*args) for args in zip(*iterables, strict=False)]


class _Pooled:
    """Reads the engine's per-round instance maps in worker processes when a pool is given,
    and each network's own (:meth:`network_instances`), which the engine does not read.

    The per-box reading (a watershed per image) is CPU work that a GPU run would otherwise
    wait on, image after image; with ``eval_last`` only the last round's maps are read.
    """

    pool: Executor | None = None
    eval_last = False

    def _predict(self, model, whole=False):
        probas = super()._predict(model, whole)
        # each network's prediction of the round, for network_instances
        self._network_probas = {**getattr(self, "_network_probas", {}), id(model): probas}
        return probas

    def network_instances(self) -> list[list[np.ndarray]]:
        """Per-box instances of A's and of B's prediction of the last round, as the engine
        reads the ensemble's (``report.instances``)."""
        probas = self._network_probas
        return [self._read_boxed(probas[id(model)]) for model in self.pair.models]

    def _instances(self, probas, objects=None):
        cfg = self.config
        if self.eval_last and cfg.min_change == 0 and len(self.pair.history) + 1 < cfg.rounds:
            # --eval-last scores only the last round (and no round ends the run early)
            return [None] * len(probas)
        return self._read_boxed(probas, objects)

    def _read_boxed(self, probas, objects=None):
        if self.pool is None:
            return super()._instances(probas, objects)
        # the pool's workers read each plane's box objects again, in parallel
        cfg = self.config
        sups = self._supervisions_of(probas)
        ex = cfg.exchange
        args = (repeat(ex.fg_threshold), repeat(ex.core_scale), repeat(cfg.min_size))
        return self._on_planes(list(self.pool.map(read_boxed, probas, sups, *args, chunksize=4)))


class PooledTrainer(_Pooled, MutualTrainer):
    """The engine as it is (every trained method: mutual, self, round 1 and the ceiling)."""


def evaluate_inductive(models, images, masks, device, cfg, pool) -> dict[str, dict]:
    """Metrics of model A, model B and their ensemble on unboxed images (whole-image watershed)."""
    pa = [predict_proba([models[0]], im, device, tile_size=cfg.tile_size) for im in images]
    pb = [predict_proba([models[1]], im, device, tile_size=cfg.tile_size) for im in images]
    ens = [(a + b) / 2 for a, b in zip(pa, pb, strict=True)]
    mapper = pool.map if pool is not None else _serial_map
    out = {}
    for name, probas in (("a", pa), ("b", pb), ("ensemble", ens)):
        fg = cfg.exchange.fg_threshold
        inst = list(mapper(read_free, probas, repeat(fg), repeat(cfg.min_size)))
        out[name] = score(inst, masks)
    return out


def run_trained(method, ctx, sups, mode) -> dict:
    """Train one method's pair of networks and score it round by round in both settings."""
    cfg_kw = dict(ctx["train_kw"])
    rounds, steps = cfg_kw["rounds"], cfg_kw["steps_per_round"]
    if method in ("round1", "full"):
        # Same step budget: every round's steps spent in one round.
        cfg_kw.update(rounds=1, steps_per_round=rounds * steps)
    cfg = TrainConfig.from_dict({**cfg_kw, "teacher": "self" if method == "self" else "peer"})
    device = ctx["device"]
    per_round = {"boxed": [], "inductive": []}
    seconds_per_round = []
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        trainer = PooledTrainer(ctx["train_images"], sups, cfg)
        trainer.pool = ctx["pool"]
        trainer.eval_last = ctx["eval_last"]
        if method == "full":
            use_true_labels(trainer, ctx["train_masks"])
        setup = time.perf_counter() - start
        final = None
        for report in trainer:
            seconds_per_round.append(round(report.seconds, 2))
            last = report.round == report.rounds or report.converged
            if ctx["eval_last"] and not last:
                log(f"  {method} round {report.round}: {report.seconds:.1f} s")
                continue
            common = {"round": report.round, "seconds": round(report.seconds, 2)}
            instances_a, instances_b = trainer.network_instances()
            for model, inst in (
                ("a", instances_a),
                ("b", instances_b),
                ("ensemble", report.instances),
            ):
                m = score(inst, ctx["train_masks"])
                per_round["boxed"].append({**common, "model": model, **_short(m)})
            ind = evaluate_inductive(
                trainer.pair.models,
                ctx["eval_images"],
                ctx["eval_masks"],
                device,
                cfg,
                ctx["pool"],
            )
            for model, m in ind.items():
                per_round["inductive"].append({**common, "model": model, **_short(m)})
            log(
                f"  {method} round {report.round}: {report.seconds:.1f} s, changed "
                f"{report.changed:.3f}, boxed mAP {per_round['boxed'][-1]['map']:.3f}, "
                f"inductive mAP {ind['ensemble']['map']:.3f}"
            )
            final = {
                "boxed": score(report.instances, ctx["train_masks"]),
                "inductive": ind["ensemble"],
                "probabilities": report.probabilities if method == "full" else None,
            }
    return {
        "final": final,
        "per_round": per_round,
        "seconds": setup + sum(seconds_per_round),
        "seconds_per_round": seconds_per_round,
        "peak_ram_mb": mem.peak_ram_mb,
        "peak_gpu_mb": mem.peak_gpu_mb,
        "steps_per_network": cfg.rounds * cfg.steps_per_round,
        "rounds": cfg.rounds,
        "boxes_used": mode,
    }


def _short(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 4) for k in METRIC_KEYS}


# --------------------------------------------------------------------------------- plot


def plot_rounds(rows: list[dict], path: Path, title: str) -> None:
    """Each metric per round for A, B and the ensemble of self and mutual, with references."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = sorted({(r["boxes"], r["setting"]) for r in rows if r.get("per_round")})
    if not panels:
        return
    fig, axes = plt.subplots(
        len(panels), len(METRIC_KEYS), figsize=(3.2 * len(METRIC_KEYS), 2.8 * len(panels)),
        squeeze=False,
    )  # fmt: skip
    colours = {"mutual": "tab:red", "self": "tab:blue"}
    styles = {"a": ":", "b": "--", "ensemble": "-"}
    refs = {"full": "black", "round1": "tab:gray", "otsu": "tab:green", "ellipse": "tab:olive"}
    for i, (boxes, setting) in enumerate(panels):
        here = [r for r in rows if r["boxes"] == boxes and r["setting"] == setting]
        for j, key in enumerate(METRIC_KEYS):
            ax = axes[i, j]
            for r in here:
                if r["method"] in colours:
                    for model, style in styles.items():
                        pts = [p for p in r["per_round"] if p["model"] == model]
                        ax.plot(
                            [p["round"] for p in pts],
                            [p[key] for p in pts],
                            style,
                            marker="o",
                            ms=3,
                            color=colours[r["method"]],
                            label=f"{r['method']} {model}",
                        )
                elif r["method"] in refs:
                    ax.axhline(r[key], color=refs[r["method"]], lw=0.8, label=r["method"])
            ax.set_title(f"{setting}, {boxes}: {key}", fontsize=9)
            ax.set_xlabel("round", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's targets, each stated as met or missed with the figures."""

    def get(setting, method, boxes, key):
        for r in rows:
            if (r["setting"], r["method"], r["boxes"]) == (setting, method, boxes):
                return r[key]
        return None

    lines = []
    for boxes in sorted({r["boxes"] for r in rows}):
        checks = []
        mf, ff = (get("inductive", k, boxes, "f1_50") for k in ("mutual", "full"))
        mm, fm = (get("inductive", k, boxes, "map") for k in ("mutual", "full"))
        if None not in (mf, ff):
            checks.append((f"new images F1@0.5 {mf:.3f} ≥ 0.95 × full {ff:.3f}", mf >= 0.95 * ff))
        if None not in (mm, fm):
            checks.append((f"new images mAP {mm:.3f} ≥ 0.90 × full {fm:.3f}", mm >= 0.90 * fm))
        for base in ("ellipse", "otsu"):
            for key in ("map", "aji"):
                a, b = get("boxed", "mutual", boxes, key), get("boxed", base, boxes, key)
                if None not in (a, b):
                    checks.append((f"boxed {key} mutual {a:.3f} > {base} {b:.3f}", a > b))
        for setting in ("boxed", "inductive"):
            m, s, r1 = (get(setting, k, boxes, "map") for k in ("mutual", "self", "round1"))
            if None not in (m, s, r1):
                checks.append(
                    (f"{setting} mAP mutual {m:.3f} > self {s:.3f} > round1 {r1:.3f}", m > s > r1)
                )
        for text, ok in checks:
            lines.append(f"- {boxes} boxes: {text}: **{'met' if ok else 'missed'}**")
    return lines


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docs)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BBBC039 folder")
    p.add_argument("--config", choices=sorted(CONFIGS), default="reduced")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--boxes",
        choices=("exact", "jittered", "region", "both", "all"),
        default="all",
        help="both: exact and jittered; all: exact, jittered and region",
    )
    p.add_argument(
        "--split-eval",
        choices=("val", "test"),
        default="test",
        help="split of the inductive setting: tune on val, report on test",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--max-images", type=int, help="cap on training and evaluation images")
    p.add_argument("--rounds", type=int, help="override the config's rounds (quick runs)")
    p.add_argument("--steps", type=int, help="override the config's steps per round")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        help="processes for the watershed reading (default 1 on CPU, up to 8 with CUDA)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="engine settings for an ablation, e.g. exchange=literal later_lr_factor=1",
    )
    p.add_argument(
        "--eval-last",
        action="store_true",
        help="score the last round only (no per-round curves; on a GPU the per-round scoring "
        "of 50 + 50 images costs about as much as the training)",
    )
    p.add_argument("--tag", help="suffix of the output file names (ablations)")
    p.add_argument("--json-only", action="store_true", help="write the JSON only (ablations)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and write its JSON, markdown table and per-round plot."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    device_name = describe_device(device)
    conf = CONFIGS[args.config]
    train_kw = dict(conf["train"], seed=args.seed, device=str(device), min_change=0.0)
    # min_change=0: every method spends its whole step budget (no early stop on converged labels).
    if args.rounds:
        train_kw["rounds"] = args.rounds
    if args.steps:
        train_kw["steps_per_round"] = args.steps
    # TrainConfig settings, or ExchangeSettings ones by their own name (exchange=RULE: the rule)
    defaults = {**asdict(ExchangeSettings()), **TrainConfig().to_dict()}
    defaults["exchange"] = ExchangeSettings().rule
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"--set {item}: TrainConfig has no setting {key!r}")
        kind = type(defaults[key])
        train_kw[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    n_train, n_eval = conf["n_train"], conf["n_eval"]
    if args.max_images:
        n_train, n_eval = min(n_train, args.max_images), min(n_eval, args.max_images)
    custom = bool(args.max_images or args.rounds or args.steps)
    workers = args.workers or (1 if device.type == "cpu" else min(8, (os.cpu_count() or 2) // 2))
    pool = None
    if workers > 1:
        # spawn: forked children of a process that initialised CUDA are unsafe.
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    log(f"{args.config} config on {device_name}; data {args.data}")
    train_raw, train_masks, _ = load_split(args.data, "train", n_train)
    eval_raw, eval_masks, _ = load_split(args.data, args.split_eval, n_eval)
    # what was loaded, which a folder with fewer images with cells than asked holds
    n_train, n_eval = len(train_raw), len(eval_raw)
    percentiles = TrainConfig().percentiles
    ctx = {
        "device": device,
        "train_kw": train_kw,
        "pool": pool,
        "train_images": train_raw,
        "train_masks": train_masks,
        "eval_images": [normalize(im, percentiles) for im in eval_raw],
        "eval_masks": eval_masks,
        "eval_last": args.eval_last,
    }
    modes = {"both": ["exact", "jittered"], "all": ["exact", "jittered", "region"]}.get(
        args.boxes, [args.boxes]
    )
    dev = str(device)
    extra_common = {
        "device_name": device_name,
        "config": args.config,
        "eval_split": args.split_eval,
        "n_train": n_train,
        "n_eval": n_eval,
        "width": train_kw["width"],
        "depth": train_kw["depth"],
        "batch_size": train_kw["batch_size"],
        "patch_size": train_kw["patch_size"],
        "torch": torch.__version__,
    }
    rows: list[dict] = []
    full_cache: dict | None = None
    t_all = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.config}_{device.type}_{args.boxes}" + ("_custom" if custom else "")
    if args.tag:
        stem += f"_{args.tag}"
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    plot = args.out / f"{stem}_rounds.png"
    n_runs = len(modes) * len(args.methods)

    def save() -> None:
        """The rows so far (a run stopped by a time limit keeps every finished method)."""
        write_text(args.out / f"{stem}.json", json.dumps(rows, indent=1) + "\n", overwrite=True)
        if args.json_only:
            return
        total = time.perf_counter() - t_all
        steps = train_kw["rounds"] * train_kw["steps_per_round"]
        done = len({(r["boxes"], r["method"]) for r in rows})
        partial = f" **Partial: {done} of {n_runs} runs finished.**" if done < n_runs else ""
        md = [
            f"**BBBC039, `{args.config}` config, {device_name}** — {n_train} train images "
            f"(boxed setting), {n_eval} `{args.split_eval}` images (inductive setting); U-Net "
            f"width {train_kw['width']}, depth {train_kw['depth']}, batch "
            f"{train_kw['batch_size']} × {train_kw['patch_size']}², {train_kw['rounds']} rounds "
            f"× {train_kw['steps_per_round']} = {steps} steps per network; total "
            f"{total / 60:.1f} min (torch {torch.__version__}, Python "
            f"{platform.python_version()}). Metrics are per-image means; mAP over IoU "
            f"0.5…0.95; AJI is the classic (Kumar et al. 2017) variant.{partial}",
            "",
            f"`{command.strip()}`",
            "",
            markdown_table(rows) if rows else "(no run finished yet)",
            *target_lines(rows),
            "",
            *([] if args.eval_last else [f"![per-round metrics]({plot.name})", ""]),
        ]
        write_text(args.out / f"{stem}.md", "\n".join(md), overwrite=True)

    for mode in modes:
        log(f"boxes: {mode}")
        sups = supervisions(train_masks, mode, JITTER_SEED + args.seed)
        for method in args.methods:
            save()
            if method in BOXED_ONLY:
                with PeakMemory(device) as mem:
                    start = time.perf_counter()
                    if method == "ellipse":
                        preds = [s.instances for s in sups]
                    else:
                        pairs = zip(train_raw, sups, strict=True)
                        preds = [otsu_in_boxes(im, s.boxes) for im, s in pairs]
                    seconds = time.perf_counter() - start
                m = score(preds, train_masks)
                rows.append(
                    make_row(
                        "boxed",
                        method,
                        dev,
                        mode,
                        m,
                        seconds,
                        peak_ram_mb=mem.peak_ram_mb,
                        peak_gpu_mb=mem.peak_gpu_mb,
                        **extra_common,
                    )
                )
                log(f"  {method}: boxed mAP {m['map']:.3f} AJI {m['aji']:.3f}")
                continue
            if method == "full" and full_cache is not None:
                # Training on the true masks does not see the boxes: reuse the trained pair and
                # only read the boxed images with this run's boxes.
                res = dict(full_cache)
                cfg = TrainConfig.from_dict(train_kw)
                ex = cfg.exchange
                inst = [
                    read_boxed(p, s, ex.fg_threshold, ex.core_scale, cfg.min_size)
                    for p, s in zip(res["final"]["probabilities"], sups, strict=True)
                ]
                res["final"] = dict(res["final"], boxed=score(inst, train_masks))
                res["per_round"] = {"boxed": [], "inductive": res["per_round"]["inductive"]}
                res["reused_training_from"] = full_cache["boxes_used"]
            else:
                log(f"  training {method}")
                res = run_trained(method, ctx, sups, mode)
                if method == "full":
                    full_cache = res
            for setting in ("boxed", "inductive"):
                rows.append(
                    make_row(
                        setting,
                        method,
                        dev,
                        mode,
                        res["final"][setting],
                        res["seconds"],
                        seconds_per_round=res["seconds_per_round"],
                        rounds=res["rounds"],
                        steps_per_network=res["steps_per_network"],
                        peak_ram_mb=res["peak_ram_mb"],
                        peak_gpu_mb=res["peak_gpu_mb"],
                        per_round=res["per_round"][setting],
                        **(
                            {"reused_training_from": res["reused_training_from"]}
                            if "reused_training_from" in res
                            else {}
                        ),
                        **extra_common,
                    )
                )
    total = time.perf_counter() - t_all
    if pool is not None:
        pool.shutdown()
    save()
    if args.json_only:
        log(f"done in {total:.0f} s: {args.out / stem}.json")
        return rows
    if not args.eval_last:
        title = f"BBBC039, {args.config} config, {device_name}: per-round metrics"
        plot_rounds(rows, plot, title)
    print(markdown_table(rows))
    print("\n".join(target_lines(rows)))
    log(f"done in {total:.0f} s: {args.out / stem}.json / .md")
    return rows


if __name__ == "__main__":
    main()
