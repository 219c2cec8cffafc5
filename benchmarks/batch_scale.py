"""Whole-experiment throughput: all 200 BBBC039 images end to end, on one machine and a cluster.

Usage::

    python benchmarks/batch_scale.py --model pair.pt          # every mode, all 200 images
    python benchmarks/batch_scale.py --max-images 8           # a quick rehearsal
    python benchmarks/batch_scale.py --model pair.pt --modes local1   # one mode again

Each mode runs ``napari_mutualseg.batch.BatchRun`` (what ``napari-mutualseg predict`` runs)
from the start of the run to the last summary row, into a fresh output folder:

- ``in this process``: one image after another (``--workers 0``);
- ``1 local worker`` and ``2 local workers``: a dask LocalCluster started by the run;
- ``cluster, 2 workers``: a real multi-process cluster started here beforehand
  (``dask scheduler`` and two ``dask worker --nthreads 1`` processes on 127.0.0.1), the run
  sent to it with ``--scheduler``;

then a rerun of the first mode on its finished folder (every image skipped). Reported: wall
time (cluster start included), images per second, the steady rate after the first image, the
peak resident memory of each worker process, and where the time of one image goes (networks
against reading, post-processing, measuring and writing, measured in this process). Without
``--model`` a pair is trained first with the reduced CPU configuration (about 20 minutes on 2
cores). Writes ``batch_scale.json`` and ``batch_scale.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mutualseg.batch import BatchOptions, BatchRun, plan_jobs, process_image
from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.files import write_text
from napari_mutualseg.models import ModelPair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DEFAULT_DATA, log

#: Images a screen of the size people run (for the estimate on paper).
SCREEN = 100_000
#: The modes: key -> (label, where the run goes; None: the cluster started here).
MODES = {
    "process": ("in this process", {"workers": 0}),
    "local1": ("1 local worker", {"workers": 1}),
    "local2": ("2 local workers", {"workers": 2}),
    "cluster2": ("cluster, 2 workers", None),
}


def _images(data: Path, limit: int | None) -> list[Path]:
    found = sorted(data.glob("*/images/*.tif"))
    return found[:limit] if limit else found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalDaskCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, as a person starts them."""

    def __init__(self, workers: int, folder: Path) -> None:
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        dask = Path(sys.executable).parent / "dask"
        port = self.address.rsplit(":", 1)[1]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.processes = [
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                **quiet,
            )
        ]
        join = [dask, "worker", self.address, "--nthreads", "1", "--no-dashboard"]
        for k in range(workers):
            local = ["--local-directory", str(folder / f"worker{k}")]
            self.processes.append(subprocess.Popen([*join, *local], **quiet))
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(timeout=60)


def run_mode(name: str, model: Path, images, out: Path, options, **where) -> dict:
    """One run into ``out``: its figures."""
    start = time.perf_counter()
    run = BatchRun(model, images, out, options, **where)
    times, peaks = [], {}
    for result in run:
        times.append(time.perf_counter() - start)
        if result.status == "failed":
            log(f"{name}: {result.job.name} failed: {result.reason}")
        if result.peak_memory:
            peaks[result.worker] = max(peaks.get(result.worker, 0), result.peak_memory)
    wall = time.perf_counter() - start
    counts = run.counts()
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")
    row = {
        "mode": name,
        "where": run.where,
        "images": len(run.jobs),
        **counts,
        "cells": sum(r.cells for r in run.results),
        "wall_s": wall,
        "images_per_s": len(run.jobs) / wall,
        "steady_images_per_s": steady,
        "first_result_s": times[0] if times else float("nan"),
        "peak_mb_per_worker": [round(p / 2**20) for _, p in sorted(peaks.items())],
    }
    log(
        f"{name}: {wall:.1f} s, {row['images_per_s']:.2f} images/s (steady {steady:.2f}), "
        f"{counts}, peak MB {row['peak_mb_per_worker']}"
    )
    return row


def time_split(pair: ModelPair, images: list[Path], options, folder: Path) -> dict:
    """Seconds per image: the whole task, and the networks' part of it (on a few images)."""
    from napari_mutualseg.images import AxisImage

    network, whole = [], []
    for k, path in enumerate(images):
        image = AxisImage.from_file(path)
        t0 = time.perf_counter()
        pair.predict_proba(image, tile_size=options.tile_size, overlap=options.overlap)
        network.append(time.perf_counter() - t0)
        (job,) = plan_jobs([path], folder / f"split{k}", options)
        t0 = time.perf_counter()
        process_image(pair, job, options)
        whole.append(time.perf_counter() - t0)
    return {"image_s": float(np.median(whole)), "network_s": float(np.median(network))}


def markdown(result: dict) -> str:
    rows = result["modes"]
    base = rows[0]["images_per_s"]
    lines = [
        f"{rows[0]['images']} BBBC039 images (520 x 696), {result['device']}, "
        f"{result['cpus']} CPU cores, model width {result['width']} depth {result['depth']}.",
        "",
        "| mode | wall s | images/s | × in-process | steady images/s | peak MB per worker |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        peaks = ", ".join(map(str, r["peak_mb_per_worker"])) or "–"
        lines.append(
            f"| {r['mode']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | "
            f"{r['images_per_s'] / base:.2f} | {r['steady_images_per_s']:.2f} | {peaks} |"
        )
    rerun = result["rerun"]
    split = result["split"]
    lines += [
        "",
        f"Rerun on the finished folder: {rerun['skipped']} of {rerun['images']} images skipped "
        f"in {rerun['wall_s']:.1f} s.",
        f"One image: {split['image_s']:.2f} s in all, of which the networks "
        f"{split['network_s']:.2f} s ({100 * split['network_s'] / split['image_s']:.0f} %); "
        "the rest is reading, watershed, measuring and writing, on the CPU.",
        "",
        f"On paper, {SCREEN:,} images: {result['screen_cpu_h']:.1f} h at the best rate here; "
        f"with N GPU workers the networks' part shrinks and about "
        f"{split['image_s'] - split['network_s']:.2f} s of CPU work per image remains, so "
        f"{SCREEN:,} images take at least {result['screen_cpu_rest_h']:.1f} h / N "
        "(one CPU core per GPU worker).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, help="load the pair from here, or train and save")
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="run only these modes, keeping the others from the earlier result",
    )
    args = parser.parse_args(argv)
    if args.model is None or not args.model.exists():
        from blockwise_quality import train_pair

        pair = train_pair(args.data, 0)
        args.model = args.model or Path(tempfile.gettempdir()) / "batch_scale_pair.pt"
        pair.save(args.model, overwrite=True)
    pair = ModelPair.load(args.model, device="auto")
    images = _images(args.data, args.max_images)
    options = BatchOptions()
    stem = f"batch_scale{'_' + args.tag if args.tag else ''}"
    earlier = args.out / f"{stem}.json"
    # a partial run (--modes) replaces its modes in the earlier result and keeps the rest
    result = json.loads(earlier.read_text()) if args.modes != list(MODES) else {}
    by_name = {m["mode"]: m for m in result.get("modes", [])}
    work = Path(tempfile.mkdtemp(prefix="batch_scale_"))
    try:
        for key in args.modes:
            label, where = MODES[key]
            if where is not None:
                by_name[label] = run_mode(label, args.model, images, work / key, options, **where)
                continue
            cluster = LocalDaskCluster(2, work)
            try:
                address = cluster.address
                by_name[label] = run_mode(
                    label, args.model, images, work / key, options, scheduler=address
                )
            finally:
                cluster.close()
        if "process" in args.modes:
            process = MODES["process"]
            result["rerun"] = run_mode("rerun", args.model, images, work / "process", options,
                                       **process[1])  # fmt: skip
            result["split"] = time_split(pair, images[:5], options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    modes = [by_name[label] for label, _ in MODES.values() if label in by_name]
    cells = {m["cells"] for m in modes}
    if len(cells) != 1:
        log(f"warning: the modes found different cell counts: {cells}")
    best = max(m["images_per_s"] for m in modes)
    split = result["split"]
    result.update(
        device=describe_device(select_device("auto")),
        cpus=os.cpu_count(),
        python=platform.python_version(),
        width=pair.model_a.arch["width"],
        depth=pair.model_a.arch["depth"],
        modes=modes,
        same_cells_every_mode=len(cells) == 1,
        screen_cpu_h=SCREEN / best / 3600,
        screen_cpu_rest_h=SCREEN * (split["image_s"] - split["network_s"]) / 3600,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / f"{stem}.json", json.dumps(result, indent=2), overwrite=True)
    write_text(args.out / f"{stem}.md", markdown(result), overwrite=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
