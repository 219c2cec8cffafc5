"""Two-channel images: BBBC039 nuclei beside a distracting second channel.

Usage::

    python benchmarks/channels.py       # reduced configuration: about 8 minutes on 2 CPU cores
    python benchmarks/channels.py --max-images 2 --rounds 1 --steps 5 --out /tmp/channels

Every image of the benchmark (the reduced configuration of ``run.py``: the first 8 train and
the first 8 test images, exact boxes) becomes a two-channel ImageJ TIFF, ``(C, Y, X)``:
channel 0 is a distractor, the nuclei of the next image of the same split flipped left to
right (nuclei where there are none, of the same brightness and texture), channel 1 the nuclei
themselves. The files are read back with their axes (``AxisImage.from_file``) and trained with
mutual learning in four ways:

- ``single``: the nuclei images alone, as ``run.py`` does (the single-channel figures);
- ``right``: the two-channel files, network input channel 1 (``channels=[1]``);
- ``both``: the two-channel files, both channels as input (the networks must learn from the
  boxes which channel holds the nuclei);
- ``wrong``: the two-channel files, channel 0 only (what a split into "planes" trains on half
  of the time).

Each is scored on the boxed training images (one object per box) and on the test images
segmented with ``ModelPair.segment`` (the same channels, found again from the model file).
Writes ``<out>/channels.json`` and ``<out>/channels.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.files import write_text
from napari_mutualseg.images import AxisImage
from napari_mutualseg.models import ModelPair
from napari_mutualseg.training import MutualTrainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import METRIC_KEYS, score
from run import CONFIGS, DEFAULT_DATA, REPO, PeakMemory, load_split, log, supervisions

VARIANTS = {"single": None, "right": [1], "both": None, "wrong": [0]}


def two_channel_files(images: list[np.ndarray], folder: Path, stem: str) -> list[Path]:
    """ImageJ (C, Y, X) files: the next image's nuclei flipped (channel 0), the nuclei (1)."""
    paths = []
    for k, image in enumerate(images):
        distractor = images[(k + 1) % len(images)][:, ::-1]
        if distractor.shape != image.shape:
            distractor = np.resize(distractor, image.shape)
        path = folder / f"{stem}_{k:02d}.tif"
        tifffile.imwrite(
            path, np.stack([distractor, image]), imagej=True, metadata={"axes": "CYX"}
        )
        paths.append(path)
    return paths


def run_variant(name, train, test, train_masks, test_masks, sups, train_kw, folder) -> dict:
    """Train one variant, save and reload its model, score it boxed and on new images."""
    cfg = TrainConfig(**train_kw, channels=VARIANTS[name])
    device = select_device(cfg.device)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        trainer = MutualTrainer(train, sups, cfg)
        report = None
        for report in trainer:
            log(f"  {name} round {report.round}: {report.seconds:.1f} s")
        seconds = time.perf_counter() - start
        boxed = score(report.instances, train_masks)
        model = trainer.pair.save(folder / f"{name}.pt", overwrite=True)
        pair = ModelPair.load(model, device=device)
        preds = [pair.segment(image, tile_size=cfg.tile_size) for image in test]
        new = score(preds, test_masks)
    log(f"  {name}: boxed mAP {boxed['map']:.3f}, new images mAP {new['map']:.3f}")
    return {
        "variant": name,
        "channels": cfg.channels,
        "in_channels": pair.in_channels,
        "boxed": {k: round(float(boxed[k]), 4) for k in METRIC_KEYS},
        "new_images": {k: round(float(new[k]), 4) for k in METRIC_KEYS},
        "train_seconds": round(seconds, 1),
        "peak_ram_mb": mem.peak_ram_mb,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--max-images", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    conf = CONFIGS["reduced"]
    train_kw = dict(conf["train"], seed=args.seed, device=str(device), min_change=0.0)
    if args.rounds:
        train_kw["rounds"] = args.rounds
    if args.steps:
        train_kw["steps_per_round"] = args.steps
    n = min(conf["n_train"], args.max_images or conf["n_train"])
    train_raw, train_masks, _ = load_split(args.data, "train", n)
    test_raw, test_masks, _ = load_split(args.data, "test", n)
    sups = supervisions(train_masks, "exact", 0)
    log(f"{n} train and {n} test images on {describe_device(device)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "train": [AxisImage.from_file(f) for f in two_channel_files(train_raw, folder, "tr")],
            "test": [AxisImage.from_file(f) for f in two_channel_files(test_raw, folder, "te")],
        }
        for name in args.variants:
            single = name == "single"
            train = train_raw if single else files["train"]
            test = test_raw if single else files["test"]
            rows.append(
                run_variant(name, train, test, train_masks, test_masks, sups, train_kw, folder)
            )
    custom = "_custom" if (args.max_images or args.rounds or args.steps) else ""
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": describe_device(device),
        "n_train": n,
        "n_test": n,
        "settings": {k: v for k, v in train_kw.items() if k != "device"},
        "torch": torch.__version__,
    }
    write_text(
        args.out / f"channels{custom}.json",
        json.dumps({**meta, "rows": rows}, indent=2),
        overwrite=True,
    )
    lines = [
        f"BBBC039, reduced configuration ({n} boxed train images, {n} test images, "
        f"{train_kw['rounds']} x {train_kw['steps_per_round']} steps), {meta['device']}.",
        "",
        "| input | channels in | boxed mAP | boxed AJI | new-image F1@0.5 | new-image mAP "
        "| new-image AJI | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, m = r["boxed"], r["new_images"]
        lines.append(
            f"| {r['variant']} | {r['in_channels']} | {b['map']:.3f} | {b['aji']:.3f} "
            f"| {m['f1_50']:.3f} | {m['map']:.3f} | {m['aji']:.3f} | {r['train_seconds']} |"
        )
    write_text(args.out / f"channels{custom}.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
