"""The GPU check: the two-thread training path proven on CUDA and measured against bare PyTorch.

One call on a GPU machine (``bash benchmarks/gpu_check.sh``, see ``benchmarks/README.md``,
"GPU check") runs these parts, most important first, each only while the time budget holds it:

1. ``env``: the device, the versions, the packages the core needs.
2. ``correctness``: A and B in two threads with a CUDA stream each against one after the other
   on the bundled sample (finite losses, the same quality); a cancel stops within one step;
   running out of memory ends training with a clear message and gives the memory back; a pair
   trained on CUDA loads and predicts on the CPU and back.
3. ``speed``: the engine's step against a bare PyTorch loop training the same U-Net on one
   fixed batch; a round of A and B in two threads against one after the other; boxes ->
   segmentation of the bundled sample with the GPU defaults; whole-image prediction of a
   4096 x 4096 image; GPU memory per network.
4. ``profile``: torch.profiler tables of the engine (one network, two threads) and the bare loop.
5. ``bench``: ``benchmarks/run.py``'s full configuration (mutual, self, round 1, the true-mask
   ceiling; exact and jittered boxes) on the staged data, as large as the time left allows
   (the images and steps it ran are in its rows), or exactly as ``--bench-*`` says.

``gpu_check.json`` is rewritten after every part, so a call stopped by its time limit keeps
what finished; ``gpu_profile.txt`` holds the profiler tables and the benchmark writes its own
JSON and table beside them. ``--smoke`` rehearses every part on the CPU at tiny sizes, the
two-thread path with the stream calls stood in for; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import gc
import importlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

import napari_mutualseg.training as training
from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.devices import describe_device, release_cached_memory, select_device
from napari_mutualseg.exchange import ExchangeContext
from napari_mutualseg.files import write_text
from napari_mutualseg.inference import predict_proba
from napari_mutualseg.metrics import evaluate
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.preprocess import normalize
from napari_mutualseg.sample import load_sample
from napari_mutualseg.stepping import (
    CudaStreams,
    NetworkTrainer,
    PatchSampler,
    TrainingError,
    train_round,
)
from napari_mutualseg.supervision import IGNORE, make_supervision
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import MutualTrainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]
PARTS = ("env", "correctness", "speed", "profile", "bench")
#: What each part needs at least (seconds on an H100); a part is skipped when less is left.
PART_NEEDS = {"env": 5, "correctness": 45, "speed": 90, "profile": 15, "bench": 100}
#: The targets of the check, on the GPU defaults (width 16, depth 4, batch 8 x 256²).
TARGETS = {"engine_vs_bare": 1.25, "threads_vs_sequential": 0.75, "sample_seconds": 30.0}
#: The benchmark sizes tried in turn, largest first: (images per split, steps per round).
#: (50, 300) is the reference recipe of benchmarks/README.md.
BENCH_LADDER = ((50, 300), (50, 150), (30, 100), (20, 100), (20, 60), (10, 60), (10, 30))
BENCH_METHODS = ("mutual", "self", "round1", "full")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the real sizes, or tiny ones for the CPU rehearsal."""

    defaults: dict  # the engine's GPU defaults
    full: dict  # the benchmark's full configuration
    quality_rounds: int
    quality_steps: int
    warmup: int
    timed: int
    reps: int
    round_steps: int
    round_steps_full: int
    large: int
    profile_steps: int
    sample_overrides: dict


GPU_SIZES = Sizes(
    defaults={"width": 16, "depth": 4, "batch_size": 8, "patch_size": 256},
    full={"width": 32, "depth": 4, "batch_size": 16, "patch_size": 256},
    quality_rounds=2,
    quality_steps=100,
    warmup=10,
    timed=40,
    reps=3,
    round_steps=100,
    round_steps_full=30,
    large=4096,
    profile_steps=10,
    sample_overrides={},
)
SMOKE_SIZES = Sizes(
    defaults={"width": 4, "depth": 2, "batch_size": 2, "patch_size": 64},
    full={"width": 8, "depth": 2, "batch_size": 2, "patch_size": 64},
    quality_rounds=2,
    quality_steps=3,
    warmup=1,
    timed=3,
    reps=1,
    round_steps=3,
    round_steps_full=2,
    large=512,
    profile_steps=2,
    sample_overrides={
        "rounds": 2,
        "steps_per_round": 3,
        "width": 4,
        "depth": 2,
        "batch_size": 2,
        "patch_size": 64,
    },
)


# ------------------------------------------------------------------------------- plumbing


class Check:
    """The run's state: device, sizes, time budget, results and the log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.device = select_device(args.device)
        self.cuda = self.device.type == "cuda"
        self.sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
        self.out = args.out
        self.results: dict[str, Any] = {
            "script": "benchmarks/gpu_check.py",
            "argv": sys.argv[1:],
            "smoke": args.smoke,
            "device": describe_device(self.device),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": args.budget,
            "targets": [],
            "skipped": [],
            "errors": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.budget - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.results["skipped"].append({"what": what, "why": why})
        self.log(f"SKIP {what}: {why}")

    def fits(self, what: str, need: float) -> bool:
        if self.left() < need:
            self.skip(what, f"{self.left():.0f} s of the budget left, needs about {need:.0f} s")
            return False
        return True

    def target(self, what: str, value: float | None, limit: float, *, at_most: bool = True):
        # a rehearsal's timings mean nothing: never report a target as met or missed
        if value is None or self.args.smoke:
            met = None
        else:
            met = value <= limit if at_most else value >= limit
        self.results["targets"].append(
            {
                "what": what,
                "value": value,
                "target": f"{'≤' if at_most else '≥'} {limit}",
                "met": met,
            }
        )

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        write_text(
            self.out / "gpu_check.json", json.dumps(self.results, indent=1) + "\n", overwrite=True
        )

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn) -> float:
        """Wall seconds of ``fn`` with the device drained before and after."""
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t

    def memory(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        return {
            "allocated_mb": mb(torch.cuda.memory_allocated(self.device)),
            "reserved_mb": mb(torch.cuda.memory_reserved(self.device)),
        }

    def streams(self):
        """CUDA streams on a GPU; on the CPU stand-ins, so the two-thread path still runs."""
        return CudaStreams(self.device) if self.cuda else PassStreams()


class _NoStream:
    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


class PassStreams:
    """The stream calls of the two-thread path as no-ops (the CPU rehearsal)."""

    def current(self) -> None:
        return None

    def stream(self, index: int) -> _NoStream:
        return _NoStream()

    def use(self, stream: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class RecordingStreams:
    """Passes the stream calls on and notes which threads used a stream, and which indices."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.threads: set[str] = set()
        self.indices: set[int] = set()

    def current(self) -> Any:
        return self.inner.current()

    def stream(self, index: int) -> Any:
        self.indices.add(index)
        return self.inner.stream(index)

    def use(self, stream: Any) -> contextlib.AbstractContextManager:
        self.threads.add(threading.current_thread().name)
        return self.inner.use(stream)


@contextlib.contextmanager
def replaced(owner: Any, name: str, value: Any):
    """``owner.name`` set to ``value`` inside the block."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def mb(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def sample_setup():
    """The bundled sample: normalised image, supervision, its round-1 labels and ground truth."""
    sample = load_sample()
    sup = make_supervision(sample.image.shape, boxes_from_shapes(sample.boxes))
    labels = ExchangeContext.build(sup, None).initial
    image = normalize(sample.image, TrainConfig().percentiles)
    return sample, sup, image, labels


def arch_of(size: dict) -> dict:
    return {"in_channels": 1, "n_classes": 3, "width": size["width"], "depth": size["depth"]}


def network(check: Check, size: dict, image: np.ndarray, labels: np.ndarray, seed: int):
    """One network as the engine trains it: its U-Net, its sampler over the sample, Adam."""
    sampler = PatchSampler(
        [torch.from_numpy(image).to(check.device)],
        size["patch_size"],
        size["batch_size"],
        seed + 1000,
        check.device,
    )
    sampler.set_labels([labels])
    model = build_unet(arch_of(size), seed).to(check.device)
    return NetworkTrainer("AB"[seed % 2], model, sampler, 1e-3, check.device)


def per_box_map(report, gt: np.ndarray) -> dict[str, float]:
    m = evaluate(report.instances[0], gt)
    return {"map": round(float(m["map"]), 4), "f1_50": round(float(m["f1_50"]), 4)}


# ------------------------------------------------------------------------------------ env


def part_env(check: Check) -> None:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if check.cuda else None,
        "cpu_count": os.cpu_count(),
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "packages": {},
    }
    for name in ("numpy", "scipy", "skimage", "tifffile", "tqdm", "pytest", "matplotlib"):
        try:
            env["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            env["packages"][name] = None
    # the core must run without napari and Qt
    env["core_imported_napari_or_qt"] = sorted(
        m for m in ("napari", "qtpy", "PySide6", "PyQt5") if m in sys.modules
    )
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        env["gpu"] = {
            "name": props.name,
            "total_memory_gb": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
        query = (
            "name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used"
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            env["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            env["nvidia_smi"] = f"not available: {err}"
    check.results["env"] = env
    check.log(f"device {check.results['device']}; torch {torch.__version__}")
    check.log(
        f"packages {env['packages']}; napari/Qt imported: {env['core_imported_napari_or_qt']}"
    )
    if "nvidia_smi" in env:
        check.log(f"nvidia-smi: {env['nvidia_smi']}")


# ---------------------------------------------------------------------------- correctness


def part_correctness(check: Check) -> None:
    out: dict[str, Any] = {}
    check.results["correctness"] = out
    sample, sup, _, _ = sample_setup()
    s = check.sizes
    cfg = TrainConfig(
        **s.defaults,
        rounds=s.quality_rounds,
        steps_per_round=s.quality_steps,
        min_change=0.0,
        device=str(check.device),
    )
    ellipse_map = float(evaluate(sup.instances, sample.ground_truth)["map"])

    # 1. two threads with a stream each against one after the other
    recorder: list[RecordingStreams] = []
    engine_choice = MutualTrainer._streams

    def recording(self):
        inner = engine_choice(self)
        if inner is None and not check.cuda:
            inner = PassStreams()  # the CPU rehearsal runs the two-thread path too
        recorder.append(RecordingStreams(inner) if inner is not None else None)
        return recorder[-1]

    with replaced(MutualTrainer, "_streams", recording):
        t = time.perf_counter()
        par_trainer = MutualTrainer(sample.image, sup, cfg)
        parallel = list(par_trainer)
        t_par = time.perf_counter() - t
    t = time.perf_counter()
    sequential = list(MutualTrainer(sample.image, sup, dataclasses.replace(cfg, parallel=False)))
    t_seq = time.perf_counter() - t
    rec = recorder[0]
    losses = [[r.loss_a, r.loss_b] for r in parallel]
    q_par, q_seq = (
        per_box_map(parallel[-1], sample.ground_truth),
        per_box_map(sequential[-1], sample.ground_truth),
    )
    threads = sorted(rec.threads) if rec is not None else []
    ok = (
        all(math.isfinite(v) for pair in losses for v in pair)
        and threads == ["network A", "network B"]
        and abs(q_par["map"] - q_seq["map"]) <= 0.05
        and (check.args.smoke or q_par["map"] > ellipse_map)
    )
    out["two_threads"] = {
        "ok": ok,
        "threads_on_streams": threads,
        "stream_indices": sorted(rec.indices) if rec is not None else [],
        "losses_parallel": [[round(v, 4) for v in p] for p in losses],
        "losses_sequential": [[round(r.loss_a, 4), round(r.loss_b, 4)] for r in sequential],
        "per_box_parallel": q_par,
        "per_box_sequential": q_seq,
        "ellipse_label_map": round(ellipse_map, 4),
        "seconds_parallel": round(t_par, 2),
        "seconds_sequential": round(t_seq, 2),
        "rule": "finite losses; both networks on their own stream; |mAP parallel - mAP "
        "sequential| <= 0.05; mAP above the ellipse labels' own",
    }
    check.log(
        f"two threads: {'ok' if ok else 'FAILED'}; streams used by {threads}; per-box mAP "
        f"parallel {q_par['map']:.3f} / sequential {q_seq['map']:.3f} (ellipse label "
        f"{ellipse_map:.3f}); {t_par:.1f} s / {t_seq:.1f} s"
    )
    check.save()

    # 2. a cancel stops within one step, and the weights of the last completed round stay
    out["cancel"] = cancel_check(check, sample, sup, cfg)
    check.save()

    # 3. out of memory: a clear message, and the memory given back
    out["out_of_memory"] = oom_check(check, sup, sample)
    check.save()

    # 4. a pair trained on CUDA loads and predicts on the CPU, and back
    out["cross_device"] = cross_device_check(check, par_trainer.pair, sample)
    check.save()


def cancel_check(check: Check, sample, sup, cfg: TrainConfig) -> dict:
    """Cancel a long round from another thread after about 20 steps of each network."""
    trainer = MutualTrainer(
        sample.image, sup, dataclasses.replace(cfg, rounds=1, steps_per_round=100_000)
    )
    before = {k: v.detach().cpu().clone() for k, v in trainer.pair.model_a.state_dict().items()}
    done: list = []
    runner = threading.Thread(target=lambda: done.extend(trainer), daemon=True)
    runner.start()
    wait_until = time.perf_counter() + 120
    while trainer.step < 40 and runner.is_alive() and time.perf_counter() < wait_until:
        time.sleep(0.001)
    at = trainer.step
    t = time.perf_counter()
    trainer.cancel()
    runner.join(60)
    stop_s = time.perf_counter() - t
    after = trainer.step
    after_state = trainer.pair.model_a.state_dict()
    restored = all(torch.equal(before[k], after_state[k].detach().cpu()) for k in before)
    ok = not runner.is_alive() and after - at <= 2 and not done and restored
    check.log(
        f"cancel: {'ok' if ok else 'FAILED'}; {after - at} step(s) after cancel, stopped in "
        f"{stop_s * 1000:.0f} ms, weights restored: {restored}"
    )
    return {
        "ok": ok,
        "steps_at_cancel": at,
        "steps_after": after,
        "seconds_to_stop": round(stop_s, 3),
        "weights_restored": restored,
        "rule": "at most one more step per network after cancel(); no round reported; the "
        "weights of the last completed round (here: the initial ones) restored",
    }


class _OutOfMemoryDraw(PatchSampler):
    """The CPU rehearsal's stand-in: raises what a too-large batch raises on a GPU."""

    def draw(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (rehearsal stand-in)")


def oom_check(check: Check, sup, sample) -> dict:
    """Train a batch too large for the card through the engine (plain cudaMalloc requests).

    The rehearsal on the CPU runs the same code with the error raised by a stand-in sampler.
    """
    dev = check.device
    gc.collect()
    if check.cuda:
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(dev).total_memory
        width, patch = 128, 1024
    else:
        total, width, patch = 2**20, 4, 64
    base = check.memory()
    # the first convolution's bf16 output alone is 1.25 x the card: one request that cannot fit
    batch = math.ceil(1.25 * total / (width * patch * patch * 2))
    image, _, boxes = synthetic_scene((patch, patch), 30 if check.cuda else 3, seed=1)
    big_sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    cfg = TrainConfig(
        width=width,
        depth=2,
        batch_size=batch,
        patch_size=patch,
        rounds=1,
        steps_per_round=2,
        min_change=0.0,
        device=str(dev),
    )
    trainer = MutualTrainer(image, big_sup, cfg)
    message, kind = None, None
    t = time.perf_counter()
    stand_in = (
        contextlib.nullcontext()
        if check.cuda
        else replaced(training, "PatchSampler", _OutOfMemoryDraw)
    )
    try:
        with stand_in:
            list(trainer)
    except TrainingError as err:
        message, kind = str(err), "TrainingError"
    except Exception as err:  # reported, not raised: the check must go on
        message, kind = f"{type(err).__name__}: {err}"[:500], type(err).__name__
    seconds = time.perf_counter() - t
    after_error = check.memory()
    del trainer
    gc.collect()
    after_del = check.memory()
    # the card still trains afterwards
    small = TrainConfig(
        **check.sizes.defaults, rounds=1, steps_per_round=5, min_change=0.0, device=str(dev)
    )
    after_loss = list(MutualTrainer(sample.image, sup, small))[-1].loss_a
    ok = (
        kind == "TrainingError"
        and "Out of memory" in (message or "")
        and after_error.get("reserved_mb", 0) - base.get("reserved_mb", 0) < 512
        and after_del.get("allocated_mb", 0) - base.get("allocated_mb", 0) < 64
        and math.isfinite(after_loss)
    )
    check.log(
        f"out of memory: {'ok' if ok else 'FAILED'}; batch {batch} x {patch}²; {kind}: "
        f"{message!r}; memory before {base}, after the error {after_error}, after del "
        f"{after_del}; trains afterwards: loss {after_loss:.3f}"
    )
    return {
        "ok": ok,
        "batch": batch,
        "patch": patch,
        "width": width,
        "error_type": kind,
        "message": message,
        "seconds": round(seconds, 2),
        "memory_before": base,
        "memory_after_error": after_error,
        "memory_after_del": after_del,
        "trains_afterwards_loss": round(after_loss, 4),
        "rule": "TrainingError naming out of memory and what to change; reserved memory back "
        "within 512 MB of before; allocated back within 64 MB once the trainer is gone; the "
        "card trains again",
    }


def cross_device_check(check: Check, pair: ModelPair, sample) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = pair.save(Path(tmp) / "pair.pt")
        on_cpu = ModelPair.load(path, device="cpu")
        back = ModelPair.load(path, device=check.device)
    p_dev = pair.predict_proba(sample.image)
    p_cpu = on_cpu.predict_proba(sample.image)
    p_back = back.predict_proba(sample.image)
    agree_cpu = float((p_dev.argmax(0) == p_cpu.argmax(0)).mean())
    agree_back = float((p_dev.argmax(0) == p_back.argmax(0)).mean())
    diff_cpu = float(np.abs(p_dev - p_cpu).mean())
    diff_back = float(np.abs(p_dev - p_back).mean())
    m_cpu = evaluate(on_cpu.segment(sample.image), sample.ground_truth)["map"]
    m_dev = evaluate(pair.segment(sample.image), sample.ground_truth)["map"]
    ok = (
        on_cpu.device.type == "cpu"
        and agree_cpu >= 0.99
        and agree_back >= 0.999
        and abs(m_cpu - m_dev) <= 0.02
    )
    check.log(
        f"cross-device: {'ok' if ok else 'FAILED'}; class agreement CPU {agree_cpu:.4f} "
        f"(mean |dp| {diff_cpu:.4f}), reloaded on {check.device} {agree_back:.5f}; whole-image "
        f"mAP CPU {m_cpu:.3f} / {check.device} {m_dev:.3f}"
    )
    return {
        "ok": ok,
        "class_agreement_cpu": round(agree_cpu, 5),
        "mean_abs_proba_diff_cpu": round(diff_cpu, 5),
        "class_agreement_reloaded": round(agree_back, 6),
        "mean_abs_proba_diff_reloaded": round(diff_back, 6),
        "map_cpu": round(float(m_cpu), 4),
        "map_device": round(float(m_dev), 4),
        "rule": "classes agree on >= 99 % of pixels on the CPU (bf16 against float32) and "
        ">= 99.9 % reloaded on the device; whole-image mAP within 0.02",
    }


# ---------------------------------------------------------------------------------- speed


def part_speed(check: Check) -> None:
    out: dict[str, Any] = {}
    check.results["speed"] = out
    sample, sup, image, labels = sample_setup()
    s = check.sizes
    for name, size, steps in (
        ("defaults", s.defaults, s.round_steps),
        ("full", s.full, s.round_steps_full),
    ):
        need = 15 if name == "defaults" else 35
        if not check.fits(f"speed {name}", need):
            continue
        res = {"size": size}
        out[name] = res
        res["step"] = step_against_bare(
            check, size, image, labels, cudnn_autotune=name == "defaults"
        )
        check.save()
        res["round"] = threads_against_sequential(check, size, image, labels, steps)
        check.save()
        if name == "defaults":
            check.target(
                "engine step / bare PyTorch step, width 16, batch 8 x 256²",
                res["step"]["engine_over_bare"],
                TARGETS["engine_vs_bare"],
            )
            check.target(
                "A and B in two threads / one after the other, one round",
                res["round"]["threads_over_sequential"],
                TARGETS["threads_vs_sequential"],
            )
            if check.fits("sample end to end", 40):
                out["sample"] = sample_end_to_end(check, sample, sup)
                check.target(
                    "bundled sample, boxes -> segmentation, GPU defaults (s)",
                    out["sample"]["seconds"],
                    TARGETS["sample_seconds"],
                )
                check.save()
    if check.fits("whole-image prediction", 25):
        out["large_image"] = large_image(check)
    check.save()


def step_against_bare(
    check: Check, size: dict, image: np.ndarray, labels: np.ndarray, *, cudnn_autotune: bool
) -> dict:
    """Seconds per step: the engine (its sampler, per step) against bare PyTorch (one batch)."""
    s, dev = check.sizes, check.device
    engine_s, peak, draw, (x, y) = engine_steps(check, size, image, labels)

    def bare_seconds() -> list[float]:
        model = build_unet(arch_of(size), 0).to(dev)
        xb = x
        if check.cuda:
            model = model.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()

        def steps(n: int) -> None:
            for _ in range(n):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=check.cuda):
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        steps(s.warmup)
        return [check.timed(lambda: steps(s.timed)) / s.timed for _ in range(s.reps)]

    bare = bare_seconds()
    res = {
        "engine_ms": round(1000 * median(engine_s), 3),
        "bare_ms": round(1000 * median(bare), 3),
        "engine_over_bare": round(median(engine_s) / median(bare), 3),
        "sampler_draw_ms": round(1000 * draw, 3),
        "engine_runs_ms": [round(1000 * v, 3) for v in engine_s],
        "bare_runs_ms": [round(1000 * v, 3) for v in bare],
        "peak_mb_per_network": peak,
        "steps_timed": s.timed,
        "reps": s.reps,
    }
    if cudnn_autotune and check.cuda:
        # what cuDNN's autotuning would gain (the engine leaves it off)
        with replaced(torch.backends.cudnn, "benchmark", True):
            res["bare_cudnn_benchmark_ms"] = round(1000 * median(bare_seconds()), 3)
    check.log(
        f"step w{size['width']} b{size['batch_size']}: engine {res['engine_ms']:.2f} ms, bare "
        f"{res['bare_ms']:.2f} ms ({res['engine_over_bare']:.2f}x), sampler alone "
        f"{res['sampler_draw_ms']:.2f} ms, peak {peak} MB per network"
        + (
            f", bare with cudnn.benchmark {res['bare_cudnn_benchmark_ms']:.2f} ms"
            if "bare_cudnn_benchmark_ms" in res
            else ""
        )
    )
    return res


def engine_steps(check: Check, size: dict, image: np.ndarray, labels: np.ndarray):
    """Seconds per engine step (per repetition), peak MB of the network, seconds per draw of
    its sampler alone, and one batch of that sampler."""
    s, dev = check.sizes, check.device
    cancel = threading.Event()
    gc.collect()
    if check.cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
    trainer = network(check, size, image, labels, 0)
    trainer.train(s.warmup, cancel, 1)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    engine_s = [
        check.timed(lambda: trainer.train(s.timed, cancel, 1)) / s.timed for _ in range(s.reps)
    ]
    peak = mb(torch.cuda.max_memory_allocated(dev) - base) if check.cuda else None
    sampler = trainer.sampler
    draw = check.timed(lambda: [sampler.draw() for _ in range(s.timed)]) / s.timed
    return engine_s, peak, draw, sampler.draw()


def threads_against_sequential(
    check: Check, size: dict, image: np.ndarray, labels: np.ndarray, steps: int
) -> dict:
    """One round of A and B: two threads with a stream each, against one after the other."""
    s, dev = check.sizes, check.device
    cancel = threading.Event()
    trainers = [network(check, size, image, labels, k) for k in (0, 1)]
    streams = check.streams()
    train_round(trainers, s.warmup, cancel, 1, streams)
    train_round(trainers, s.warmup, cancel, 1, None)
    if check.cuda:
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    seq, par = [], []
    for _ in range(s.reps):
        seq.append(check.timed(lambda: train_round(trainers, steps, cancel, 1, None)))
        par.append(check.timed(lambda: train_round(trainers, steps, cancel, 1, streams)))
    res = {
        "steps": steps,
        "sequential_s": round(median(seq), 3),
        "threads_s": round(median(par), 3),
        "threads_over_sequential": round(median(par) / median(seq), 3),
        "pair_step_ms_threads": round(1000 * median(par) / steps, 3),
        "sequential_runs_s": [round(v, 3) for v in seq],
        "threads_runs_s": [round(v, 3) for v in par],
        "peak_mb_both_networks_beyond_weights": (
            mb(torch.cuda.max_memory_allocated(dev) - base) if check.cuda else None
        ),
        "reserved_mb": check.memory().get("reserved_mb"),
    }
    check.log(
        f"round w{size['width']} b{size['batch_size']} x {steps} steps: two threads "
        f"{res['threads_s']:.2f} s, one after the other {res['sequential_s']:.2f} s "
        f"({res['threads_over_sequential']:.2f}x)"
    )
    return res


class TimedTrainer(MutualTrainer):
    """The engine, with the seconds of its per-round host work added up by kind."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def _clock(self, what: str):
        t = time.perf_counter()
        yield
        self.spent[what] += time.perf_counter() - t

    def _predict(self, model, whole=False):
        with self._clock("predict"):
            return super()._predict(model, whole)

    def _exchange(self, probas):
        with self._clock("exchange"):
            return super()._exchange(probas)

    def _instances(self, probas, objects=None):
        with self._clock("instances"):
            return super()._instances(probas, objects)

    def _found(self, probas):
        with self._clock("found"):
            return super()._found(probas)


def sample_end_to_end(check: Check, sample, sup) -> dict:
    """Boxes -> segmentation of the bundled sample with the GPU defaults (warm process)."""
    training_s: list[float] = []

    def timed_round(*args, **kwargs):
        t = time.perf_counter()
        try:
            return train_round(*args, **kwargs)
        finally:
            training_s.append(time.perf_counter() - t)

    with replaced(training, "train_round", timed_round):
        t = time.perf_counter()
        supervision = make_supervision(sample.image.shape, boxes_from_shapes(sample.boxes))
        cfg = TrainConfig.recommended(check.device, **check.sizes.sample_overrides)
        trainer = TimedTrainer(sample.image, supervision, cfg)
        reports = list(trainer)
        cells = reports[-1].instances[0]
        seconds = time.perf_counter() - t
    m = evaluate(cells, sample.ground_truth)
    rounds = len(reports)
    host = [r.seconds - tr for r, tr in zip(reports, training_s, strict=False)]
    res = {
        "seconds": round(seconds, 2),
        "rounds": rounds,
        "steps_per_round": cfg.steps_per_round,
        "config": {k: getattr(cfg, k) for k in ("width", "depth", "batch_size", "patch_size")},
        "training_s_per_round": [round(v, 2) for v in training_s],
        "host_s_per_round": [round(v, 2) for v in host],
        "host_s_by_kind": {k: round(v / max(rounds, 1), 3) for k, v in trainer.spent.items()},
        "map": round(float(m["map"]), 4),
        "f1_50": round(float(m["f1_50"]), 4),
        "note": "warm process: CUDA and its kernels loaded by the parts before",
    }
    check.log(
        f"sample end to end: {seconds:.1f} s, {rounds} rounds of {cfg.steps_per_round} steps, "
        f"training {sum(training_s):.1f} s, per-round host work {res['host_s_by_kind']} s; "
        f"per-box mAP {m['map']:.3f}, F1 {m['f1_50']:.3f}"
    )
    return res


def large_image(check: Check) -> dict:
    """Whole-image prediction throughput of the default pair (untrained: the weights do not
    change the speed; the watershed's share is in the sample's per-round host work)."""
    dev, n = check.device, check.sizes.large
    arch = arch_of(check.sizes.defaults)
    models = ModelPair(build_unet(arch, 0), build_unet(arch, 1)).to(dev).models
    rng = np.random.default_rng(0)
    image = normalize(rng.normal(100, 10, (n, n)).astype(np.float32), (1.0, 99.8))
    predict_proba(models, image[: n // 4, : n // 4], dev)
    res: dict[str, Any] = {"size": n}
    proba: dict[int, np.ndarray] = {}
    for tile in (512, 1024):
        if check.cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        seconds = check.timed(
            lambda t=tile: proba.__setitem__(t, predict_proba(models, image, dev, tile_size=t))
        )
        res[f"tile_{tile}"] = {
            "seconds": round(seconds, 3),
            "mpx_per_s": round(n * n / 1e6 / seconds, 2),
            "peak_gpu_mb": mb(torch.cuda.max_memory_allocated(dev)) if check.cuda else None,
        }
    check.log(
        f"prediction {n}²: {res['tile_512']['mpx_per_s']:.1f} MPx/s with 512 tiles "
        f"({res['tile_512']['seconds']:.2f} s), {res['tile_1024']['mpx_per_s']:.1f} with 1024"
    )
    return res


# -------------------------------------------------------------------------------- profile


def part_profile(check: Check) -> None:
    from torch.profiler import ProfilerActivity, profile

    _, _, image, labels = sample_setup()
    size, n = check.sizes.defaults, check.sizes.profile_steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if check.cuda else [])
    sort = "cuda_time_total" if check.cuda else "cpu_time_total"
    cancel = threading.Event()
    trainers = [network(check, size, image, labels, k) for k in (0, 1)]
    streams = check.streams()
    train_round(trainers, check.sizes.warmup, cancel, 1, streams)
    x, y = trainers[0].sampler.draw()
    model = trainers[0].model

    def bare() -> None:
        opt = trainers[0].optimizer
        xb = x.contiguous(memory_format=torch.channels_last) if check.cuda else x
        for _ in range(n):
            with torch.autocast(check.device.type, dtype=torch.bfloat16, enabled=check.cuda):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    runs = {
        "engine, one network": lambda: trainers[0].train(n, cancel, 1),
        "engine, two threads": lambda: train_round(trainers, n, cancel, 1, streams),
        "bare loop, one network": bare,
    }
    text, summary = [], {}
    for name, fn in runs.items():
        check.sync()
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            fn()
            check.sync()
            wall = time.perf_counter() - t
        events = prof.key_averages()
        kernels = [
            e
            for e in events
            if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False)
        ]
        device_us = sum(e.self_device_time_total for e in kernels)
        summary[name] = {
            "wall_ms_per_step": round(1000 * wall / n, 3),
            # summed over kernels: two streams that overlap can exceed the wall time
            "kernel_ms_per_step": round(device_us / 1000 / n, 3) if check.cuda else None,
            "device_ops_per_step": round(sum(e.count for e in kernels) / n, 1),
            # operators of the calling thread only (not those of the two training threads)
            "host_cpu_ms_per_step": round(
                sum(e.self_cpu_time_total for e in events) / 1000 / n, 3
            ),
        }
        text += [
            f"==== {name}: {n} steps, {summary[name]}",
            events.table(sort_by=sort, row_limit=30),
        ]
        check.log(f"profile {name}: {summary[name]}")
    write_text(check.out / "gpu_profile.txt", "\n".join(text) + "\n", overwrite=True)
    check.results["profile"] = {"size": size, "steps": n, "runs": summary}


# ---------------------------------------------------------------------------------- bench


def bench_seconds(check: Check, n: int, steps: int, modes: list[str], methods: list[str]) -> float:
    """Predicted seconds of a benchmark run, from this call's step and host-work figures."""
    speed = check.results.get("speed", {})
    pair_s = speed.get("full", {}).get("round", {}).get("pair_step_ms_threads", 60.0) / 1000
    host = speed.get("sample", {}).get("host_s_by_kind", {})
    # per image and round, in the benchmark's process: both predictions, the exchange, the
    # found-check; the three per-box readings only in the last round, in the worker pool
    serial = host.get("predict", 0.05) + host.get("exchange", 0.1) + host.get("found", 0.03)
    pooled = host.get("instances", 1.0) / max(1.0, 0.6 * bench_workers()) + 0.02
    # the scoring: predictions of the new images, their watershed and every metric
    scoring = host.get("predict", 0.05) + pooled + 0.05
    rounds = 5
    total = 40.0  # start, CUDA, data, the worker pool
    trained_full = False
    for _mode in modes:
        for method in methods:
            if method == "full" and trained_full:
                continue
            trained_full = trained_full or method == "full"
            n_rounds = rounds if method in ("mutual", "self") else 1
            total += rounds * steps * pair_s + n * (n_rounds * serial + pooled + scoring)
    return total


def bench_workers() -> int:
    return max(1, min(12, (os.cpu_count() or 2) - 2))


def part_bench(check: Check) -> None:
    args = check.args
    data = args.data
    if not (data / "train" / "images").is_dir() or not (data / "test" / "images").is_dir():
        check.skip(
            "bench",
            f"no staged data in {data} (run benchmarks/stage_gpu_data.sh first and carry "
            ".bench_data)",
        )
        return
    modes = ["exact", "jittered"] if args.bench_boxes == "both" else [args.bench_boxes]
    methods = list(args.bench_methods)
    margin = 20.0
    if args.smoke:
        n, steps, predicted = 1, 2, None
    elif args.bench_images and args.bench_steps:
        n, steps = args.bench_images, args.bench_steps
        predicted = bench_seconds(check, n, steps, modes, methods)
    else:
        for n, steps in BENCH_LADDER:
            predicted = bench_seconds(check, n, steps, modes, methods)
            if predicted <= check.left() - margin:
                break
        else:
            check.skip("bench", f"even {n} images x {steps} steps would take {predicted:.0f} s")
            return
    recipe = {m: bench_seconds(check, 50, 300, [m], list(BENCH_METHODS)) for m in modes}
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "run.py"),
        "--config",
        "reduced" if args.smoke else "full",
        "--device",
        check.device.type,
        "--boxes",
        args.bench_boxes,
        "--data",
        str(data),
        "--methods",
        *methods,
        "--eval-last",
        "--workers",
        "2" if args.smoke else str(bench_workers()),
        "--out",
        str(check.out),
    ]
    tag = "" if methods == list(BENCH_METHODS) else "-".join(methods)
    if args.bench_seed:
        tag += f"{'-' if tag else ''}seed{args.bench_seed}"
        cmd += ["--seed", str(args.bench_seed)]
    if tag:
        cmd += ["--tag", tag]
    if args.smoke:
        cmd += ["--max-images", "1", "--rounds", "2", "--steps", "2", "--threads", "1", "--set"]
        cmd += [f"{k}={v}" for k, v in check.sizes.defaults.items()]
    else:
        cmd += [] if n == 50 else ["--max-images", str(n)]
        cmd += [] if steps == 300 else ["--steps", str(steps)]
    timeout = max(10.0, check.left() - 5)
    res: dict[str, Any] = {
        "images": n,
        "steps_per_round": steps,
        "boxes": args.bench_boxes,
        "methods": methods,
        "predicted_s": None if predicted is None else round(predicted),
        "recipe_predicted_s_per_boxes": {k: round(v) for k, v in recipe.items()},
        "command": " ".join(cmd[1:]),
        "timeout_s": round(timeout),
    }
    check.results["bench"] = res
    check.save()
    check.log(
        f"bench: {n} images, {steps} steps per round, boxes {args.bench_boxes}, predicted "
        f"{res['predicted_s']} s, {timeout:.0f} s left; the reference recipe would take about "
        f"{res['recipe_predicted_s_per_boxes']} s per box mode"
    )
    release_cached_memory()  # the benchmark's process gets the card's memory
    t = time.perf_counter()
    # its own process group, so that a time limit ends its worker processes too
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        res["returncode"] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        res["returncode"] = "stopped at the time limit"
    res["seconds"] = round(time.perf_counter() - t, 1)
    custom = args.smoke or n != 50 or steps != 300
    stem = f"{'reduced' if args.smoke else 'full'}_{check.device.type}_{args.bench_boxes}"
    path = check.out / f"{stem}{'_custom' if custom else ''}{f'_{tag}' if tag else ''}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    res["json"] = path.name
    res["runs_finished"] = sorted({f"{r['boxes']} {r['method']}" for r in rows})
    res["map"] = {
        f"{r['setting']} {r['boxes']} {r['method']}": r["map"] for r in rows if "map" in r
    }
    check.log(
        f"bench: {res['returncode']} after {res['seconds']:.0f} s; finished "
        f"{len(res['runs_finished'])} runs: {res['map']}"
    )


# ----------------------------------------------------------------------------------- main


def summary(check: Check) -> str:
    lines = [f"GPU check on {check.results['device']} ({check.elapsed():.0f} s)"]
    corr = check.results.get("correctness", {})
    for name in ("two_threads", "cancel", "out_of_memory", "cross_device"):
        if name in corr:
            lines.append(f"  {name:<28} {'ok' if corr[name]['ok'] else 'FAILED'}")
    for t in check.results["targets"]:
        state = {True: "met", False: "MISSED", None: "–"}[t["met"]]
        lines.append(f"  {t['what'][:60]:<60} {t['value']} (target {t['target']}): {state}")
    for part, err in check.results["errors"].items():
        lines.append(f"  ERROR in {part}: {err.splitlines()[-1]}")
    for s in check.results["skipped"]:
        lines.append(f"  skipped {s['what']}: {s['why']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole check")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: rehearse on the CPU")
    p.add_argument("--data", type=Path, default=REPO / ".bench_data", help="staged BBBC039")
    p.add_argument("--bench-boxes", choices=("exact", "jittered", "both"), default="both")
    p.add_argument("--bench-methods", nargs="+", choices=BENCH_METHODS, default=BENCH_METHODS)
    p.add_argument("--bench-images", type=int, help="with --bench-steps: this size, no sizing")
    p.add_argument("--bench-steps", type=int, help="steps per round of the benchmark")
    p.add_argument("--bench-seed", type=int, default=0, help="the benchmark's seed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the parts in order within the budget; 0 when every check that ran passed."""
    args = parse_args(argv)
    check = Check(args)
    if not check.cuda and not args.smoke:
        print(
            f"No CUDA device here ({check.results['device']}): this check is for a GPU. "
            "Pass --smoke to rehearse it on the CPU at tiny sizes.",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(1)  # a shared CPU: keep the rehearsal's threads from contending
    # a hang (a deadlock between the two threads, say) still leaves every thread's stack in the log
    faulthandler.dump_traceback_later(args.budget + 30, exit=False)
    parts = {
        "env": part_env,
        "correctness": part_correctness,
        "speed": part_speed,
        "profile": part_profile,
        "bench": part_bench,
    }
    for name in PARTS:
        if name not in args.parts:
            continue
        if not check.fits(name, 1 if args.smoke else PART_NEEDS[name]):
            continue
        check.log(f"---- {name}")
        try:
            parts[name](check)
        except Exception:  # one broken part must not cost the others
            check.results["errors"][name] = traceback.format_exc()
            check.log(f"ERROR in {name}:\n{traceback.format_exc()}")
        check.save()
    faulthandler.cancel_dump_traceback_later()
    check.results["finished"] = True
    check.save()
    print(summary(check), flush=True)
    corr = check.results.get("correctness", {})
    failed = check.results["errors"] or any(not v.get("ok", True) for v in corr.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
