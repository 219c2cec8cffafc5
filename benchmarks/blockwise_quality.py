"""Block-by-block segmentation against whole-image segmentation on BBBC039 test.

Usage::

    python benchmarks/blockwise_quality.py                    # train once, 50 test images
    python benchmarks/blockwise_quality.py --model pair.pt    # reuse (or save) the pair there
    python benchmarks/blockwise_quality.py --max-images 3     # a quick rehearsal

A pair is trained once with the reduced CPU configuration of ``run.py`` (8 train images,
exact boxes, 3 rounds x 80 steps), then every test image is segmented

- ``whole``: the whole image at once, as ``ModelPair.segment`` does up to 4096 x 4096;
- ``blocks``: block by block (``ModelPair.segment(blockwise=True)``, the networks run on each
  block's window), with small blocks so that many cells cross block faces;

and, on the whole image's own probabilities (so that only the joining of blocks differs),

- ``centroid``: each block keeps the cells whose centroid lies in its core (the package's
  rule, :func:`napari_mutualseg.blockwise.keep_owned_cells`), for several halos;
- ``faces``: each block keeps its core's labels and labels touching across a face are joined
  (cellpose's distributed segmentation, labels shrunk by 2 pixels along the face first).

Each is scored against the ground truth (mAP and the rest) and counted for what blocks can do
wrong: whole-image objects crossing a face that are split or changed, labels joining two
whole-image objects, and ground-truth cells crossing a face that are split. Writes
``blockwise_quality.json`` and ``blockwise_quality.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_mutualseg.blockwise import block_grid, default_halo, keep_owned_cells
from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.files import write_text
from napari_mutualseg.inference import DEFAULT_TILE_SIZE, instances_from_proba
from napari_mutualseg.metrics import evaluate, match_instances, mean_metrics
from napari_mutualseg.models import ModelPair
from napari_mutualseg.training import MutualTrainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONFIGS, DEFAULT_DATA, load_split, log, supervisions

#: Least share of an object another label must cover to count as a piece of it.
PIECE = 0.1


def train_pair(data: Path, seed: int) -> ModelPair:
    """The reduced CPU configuration of ``run.py`` on its 8 train images, exact boxes."""
    config = CONFIGS["reduced"]
    images, masks, _ = load_split(data, "train", config["n_train"])
    cfg = TrainConfig(**config["train"], min_change=0.0, device="cpu", seed=seed)
    trainer = MutualTrainer(images, supervisions(masks, "exact", seed), cfg)
    for report in trainer:
        log(f"round {report.round}/{report.rounds}: {report.seconds:.0f} s")
    return trainer.pair


def centroid_join(proba: np.ndarray, block: int, halo: int, min_size: int) -> np.ndarray:
    """Blocks on given probabilities, each keeping the cells whose centroid is in its core."""
    out = np.zeros(proba.shape[1:], np.int32)
    next_id = 1
    for b in block_grid(out.shape, block, halo):
        labels = instances_from_proba(proba[(slice(None), *b.window)], min_size=min_size)
        next_id, _ = keep_owned_cells(b, labels, out, next_id)
    return out


def _shrunk(line: np.ndarray, margin: int = 2) -> np.ndarray:
    """A face line with every label run shortened by ``margin`` pixels at each end."""
    change = np.zeros(line.size, bool)
    change[1:] |= line[1:] != line[:-1]
    change[:-1] |= line[1:] != line[:-1]
    near = ndi.binary_dilation(change, iterations=margin)
    return np.where(near, 0, line)


def faces_join(proba: np.ndarray, block: int, halo: int, min_size: int) -> np.ndarray:
    """Blocks on given probabilities, each keeping its core; labels joined across faces."""
    height, width = proba.shape[1:]
    out = np.zeros((height, width), np.int32)
    next_id = 1
    for b in block_grid((height, width), block, halo):
        labels = instances_from_proba(proba[(slice(None), *b.window)], min_size=min_size)
        (wy, wx), (cy, cx) = (s.start for s in b.window), b.core
        core = labels[cy.start - wy : cy.stop - wy, cx.start - wx : cx.stop - wx]
        ids = np.unique(core[core > 0])
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[ids] = np.arange(next_id, next_id + ids.size)
        out[b.core] = lut[core]
        next_id += ids.size
    pairs = []
    for y in range(block, height, block):
        pairs.append((_shrunk(out[y - 1]), _shrunk(out[y])))
    for x in range(block, width, block):
        pairs.append((_shrunk(out[:, x - 1]), _shrunk(out[:, x])))
    a = np.concatenate([p[0] for p in pairs] or [np.zeros(0, np.int32)])
    b = np.concatenate([p[1] for p in pairs] or [np.zeros(0, np.int32)])
    touch = (a > 0) & (b > 0)
    graph = coo_matrix((np.ones(touch.sum()), (a[touch], b[touch])), shape=(next_id, next_id))
    _, component = connected_components(graph, directed=False)
    used = np.unique(out[out > 0])
    lut = np.zeros(next_id, np.int32)
    _, first = np.unique(component[used], return_inverse=True)
    lut[used] = first + 1
    return lut[out]


def _crosses_face(labels: np.ndarray, block: int) -> np.ndarray:
    """Per label (index = label), whether it has pixels in two blocks."""
    crosses = np.zeros(int(labels.max()) + 1, bool)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None:
            crosses[k] = any(s.start // block != (s.stop - 1) // block for s in sl)
    return crosses


def _pieces(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per ``ref`` object: how many ``pred`` labels each cover at least PIECE of it."""
    inside = ref > 0
    pairs, counts = np.unique(np.stack([ref[inside], pred[inside]]), axis=1, return_counts=True)
    area = np.bincount(ref[inside], minlength=int(ref.max()) + 1)
    big = (pairs[1] > 0) & (counts >= PIECE * area[pairs[0]])
    return np.bincount(pairs[0][big], minlength=area.size)


def face_errors(pred: np.ndarray, whole: np.ndarray, gt: np.ndarray, block: int) -> dict:
    """What the blocks changed, against the whole-image labels and the ground truth."""
    whole_crossing = _crosses_face(whole, block)
    pred_crossing = _crosses_face(pred, block)
    gt_crossing = _crosses_face(gt, block)
    kept = match_instances(pred, whole, 0.9)
    return {
        "whole_objects_crossing_faces": int(whole_crossing.sum()),
        "split_at_faces": int(((_pieces(whole, pred) > 1) & whole_crossing).sum()),
        "joined_at_faces": int(((_pieces(pred, whole) > 1) & pred_crossing).sum()),
        "changed_at_faces": int((~np.isin(np.flatnonzero(whole_crossing), kept.gt_ids)).sum()),
        "unchanged_iou90": kept.tp / max(int(whole.max()), 1),
        "gt_crossing_faces": int(gt_crossing.sum()),
        "gt_split_at_faces": int(((_pieces(gt, pred) > 1) & gt_crossing).sum()),
    }


def summarise(name: str, preds: list, wholes: list, gts: list, block: int, **extra) -> dict:
    """One result row: mean metrics against the truth and summed face errors."""
    metrics = mean_metrics([evaluate(p, g) for p, g in zip(preds, gts, strict=True)])
    errors = [face_errors(p, w, g, block) for p, w, g in zip(preds, wholes, gts, strict=True)]
    summed = {k: float(sum(e[k] for e in errors)) for k in errors[0]}
    summed["unchanged_iou90"] = float(np.mean([e["unchanged_iou90"] for e in errors]))
    return {"method": name, **extra, **metrics, **summed}


def markdown(rows: list[dict], meta: dict) -> str:
    """The result table with the configuration."""
    head = (
        "| method | halo | mAP | Δ mAP vs whole | F1@0.5 | AJI | objects crossing faces | "
        "split at a face | joined at a face | changed at a face (IoU < 0.9) | "
        "unchanged objects | GT cells crossing faces | GT cells split at a face |"
    )
    lines = [head, "|" + "---|" * 13]
    base = next(r["map"] for r in rows if r["method"] == "whole")
    for r in rows:
        lines.append(
            f"| {r['method']} | {r.get('halo', '–')} | {r['map']:.4f} | {r['map'] - base:+.4f} | "
            f"{r['f1_50']:.4f} | {r['aji']:.4f} | {r['whole_objects_crossing_faces']:.0f} | "
            f"{r['split_at_faces']:.0f} | {r['joined_at_faces']:.0f} | "
            f"{r['changed_at_faces']:.0f} | {100 * r['unchanged_iou90']:.1f}% | "
            f"{r['gt_crossing_faces']:.0f} | {r['gt_split_at_faces']:.0f} |"
        )
    return (
        f"**Block-by-block vs whole-image segmentation, BBBC039 {meta['split']}** — "
        f"{meta['images']} images, blocks of {meta['block']} px (faces every {meta['block']} "
        f"px), default halo {meta['default_halo']} px (cell size {meta['cell_size']:.0f} px), "
        f"network tiles of {meta['tile_size']} px; pair trained with the reduced CPU "
        f"configuration on 8 train images; {meta['device']}, {meta['seconds']:.0f} s.\n\n"
        + "\n".join(lines)
        + "\n\n`whole` and `blocks` run the networks (blocks: on each block's window); "
        "`centroid` and `faces` join blocks cut from the whole image's probabilities, so they "
        "differ from `whole` only by the joining. Counts are summed over the images; "
        "*split*: a whole-image object crossing a face whose pixels went to two or more "
        f"labels (each at least {PIECE:.0%} of it); *joined*: a label crossing a face that "
        "covers two or more whole-image objects; *changed*: a whole-image object crossing a "
        "face with no label of IoU ≥ 0.9.\n\n"
        f"Command: `{meta['command']}`\n"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Train (or load) a pair, segment the test images every way, write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=50)
    parser.add_argument("--block", type=int, default=256, help="block core edge in pixels")
    parser.add_argument("--halos", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--model", type=Path, help="load the pair from here, or train and save")
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.model is not None and args.model.exists():
        pair = ModelPair.load(args.model, device="cpu")
    else:
        pair = train_pair(args.data, args.seed)
        if args.model is not None:
            pair.save(args.model)
    halo = default_halo(pair.cell_size)
    min_size = int(pair.settings.get("min_size", 16))
    images, gts, _ = load_split(args.data, args.split, args.max_images)
    wholes, blocks, joined = [], [], {}
    for i, image in enumerate(images):
        proba = pair.predict_proba(image, tile_size=args.tile_size)
        wholes.append(instances_from_proba(proba, min_size=min_size))
        blocks.append(
            pair.segment(
                image, blockwise=True, block_size=args.block, halo=halo, tile_size=args.tile_size
            )
        )
        for h in sorted({*args.halos, halo}):
            joined.setdefault(("centroid", h), []).append(
                centroid_join(proba, args.block, h, min_size)
            )
        joined.setdefault(("faces", halo), []).append(
            faces_join(proba, args.block, halo, min_size)
        )
        log(f"image {i + 1}/{len(images)}")
    rows = [
        summarise("whole", wholes, wholes, gts, args.block),
        summarise("blocks", blocks, wholes, gts, args.block, halo=halo),
    ]
    rows += [
        summarise(name, preds, wholes, gts, args.block, halo=h)
        for (name, h), preds in joined.items()
    ]
    meta = {
        "split": args.split,
        "images": len(images),
        "block": args.block,
        "default_halo": halo,
        "cell_size": pair.cell_size or 0.0,
        "tile_size": args.tile_size,
        "device": f"{describe_device(select_device('cpu'))} on {os.cpu_count()} cores "
        f"({platform.machine()})",
        "seconds": time.perf_counter() - start,
        "command": "python benchmarks/blockwise_quality.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if len(images) == 50 else f"_{len(images)}img"
    write_text(
        args.out / f"blockwise_quality{suffix}.json",
        json.dumps({"meta": meta, "rows": rows}, indent=2),
        overwrite=True,
    )
    table = markdown(rows, meta)
    write_text(args.out / f"blockwise_quality{suffix}.md", table, overwrite=True)
    print(table)
    return rows


if __name__ == "__main__":
    main()
