"""Peak memory and time of segmenting large images, whole-image against block by block.

Usage::

    python benchmarks/large_image.py --model pair.pt              # 2048², 4096², 8192², 16384²
    python benchmarks/large_image.py --model pair.pt --sizes 2048 4096   # a rehearsal

Each image is a synthetic nuclei-like uint16 scan (bright touching nuclei of 7 to 16 pixels
radius on a dim background, blurred and noisy, about 400 per 1024² tile) written as a tiled,
compressed TIFF, as slide scanners write them; it is made once per size in ``--work``, tile by
tile. Every (size, path) runs in its own process, so that each peak resident memory
(Linux's ``VmHWM``, which a child does not inherit from its parent as it does ``ru_maxrss``)
is its own:

- ``whole``: the image read into memory and segmented at once (``ModelPair.segment`` with
  ``blockwise=False``, the only path before block-by-block segmentation), labels in memory;
- ``blocks``: the image read a block at a time from the TIFF and the labels written a block at
  a time to OME-Zarr (``ModelPair.segment`` with ``out=``, :func:`napari_mutualseg.ome.
  labels_zarr`), pyramid included.

The whole-image path runs only up to ``--whole-max`` pixels a side (it needs about 150 bytes a
pixel: 10 GB at 8192², 40 GB at 16384²); above, the table gives what it would need from the
bytes per pixel measured at the largest size it ran. Seconds are wall time of the
segmentation (reading and writing included) with ``--threads`` torch threads; only run the
timing on an otherwise idle machine. Writes ``large_image.json``, ``large_image.md`` and the
memory-against-size plot ``large_image.png`` to ``--out``.

Where ``--model`` (default ``<work>/pair.pt``) does not exist yet, the pair is trained first on
BBBC039 (``blockwise_quality.train_pair``: the reduced CPU configuration, about 2 minutes on
2 idle cores) and saved there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import peak_mib
from napari_mutualseg.files import write_text

HERE = Path(__file__).resolve().parent
#: Edge of the synthetic image's tiles (and of its TIFF tiles).
TILE = 1024
#: Nuclei per pixel (BBBC039 has about 150 on 520 x 696).
DENSITY = 4e-4
TARGET_GB = 2.0


# ------------------------------------------------------------------------ the test image


def _nuclei(ty: int, tx: int, seed: int) -> np.ndarray:
    """Rows ``cy, cx, radius, brightness`` of the nuclei centred in tile ``(ty, tx)``."""
    rng = np.random.default_rng([seed, ty + 1, tx + 1])  # neighbours of the first row: -1
    n = rng.poisson(DENSITY * TILE * TILE)
    return np.column_stack(
        [
            ty * TILE + rng.uniform(0, TILE, n),
            tx * TILE + rng.uniform(0, TILE, n),
            rng.uniform(7, 16, n),
            rng.uniform(0.5, 1.5, n),
        ]
    )


def render_tile(ty: int, tx: int, seed: int = 0, margin: int = 32) -> np.ndarray:
    """One ``TILE``² tile of the scan; nuclei of the neighbouring tiles reach into it."""
    from scipy import ndimage as ndi

    nuclei = np.concatenate(
        [_nuclei(ty + dy, tx + dx, seed) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    y0, x0, size = ty * TILE - margin, tx * TILE - margin, TILE + 2 * margin
    iy, ix = np.floor(nuclei[:, 0] - y0).astype(int), np.floor(nuclei[:, 1] - x0).astype(int)
    inside = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    nuclei, iy, ix = nuclei[inside], iy[inside], ix[inside]
    owner = np.full((size, size), -1, np.int64)
    owner[iy, ix] = np.arange(len(nuclei))
    distance, (ny, nx) = ndi.distance_transform_edt(owner < 0, return_indices=True)
    nearest = owner[ny, nx]
    radius, brightness = nuclei[nearest, 2], nuclei[nearest, 3]
    body = np.clip(1 - (distance / radius) ** 2, 0, None) ** 0.3 * (distance <= radius)
    image = ndi.gaussian_filter(0.08 + 0.9 * brightness * body, 1.5)[
        margin:-margin, margin:-margin
    ]
    image += np.random.default_rng([seed, ty, tx, 1]).normal(0, 0.02, image.shape)
    return np.clip(150 + 1000 * image, 0, 65535).astype(np.uint16)


def make_image(path: Path, size: int, seed: int = 0) -> None:
    """Write a ``size``² scan as a tiled, zlib-compressed TIFF, tile by tile."""
    import tifffile

    n = size // TILE
    tiles = (render_tile(ty, tx, seed) for ty in range(n) for tx in range(n))
    temp = path.with_name(path.name + ".partial")
    tifffile.imwrite(
        temp, tiles, shape=(size, size), dtype=np.uint16, tile=(TILE, TILE), compression="zlib"
    )
    temp.rename(path)


# ------------------------------------------------------------------------ one measurement


def _rss_gb() -> float:
    return peak_mib() / 2**10


def run_child(args: argparse.Namespace) -> dict:
    """Segment one image one way in this process; the result row."""
    import tifffile
    import torch

    from napari_mutualseg.devices import describe_device
    from napari_mutualseg.images import AxisImage
    from napari_mutualseg.models import ModelPair
    from napari_mutualseg.ome import labels_zarr

    torch.set_num_threads(args.threads)
    pair = ModelPair.load(args.model, device="cpu")
    source = Path(args.image)
    base_gb = _rss_gb()
    start = time.perf_counter()
    if args.mode == "whole":
        image = tifffile.imread(source)
        objects = int(pair.segment(image, blockwise=False).max())
    else:
        image = AxisImage.from_file(source, lazy=True)  # read a chunk at a time
        target = Path(args.work) / f"{source.stem}_cells.ome.zarr"
        with labels_zarr(target, image.plane_shape, overwrite=True) as out:
            pair.segment(image, out=out, block_size=args.block_size)
    seconds, peak_gb = time.perf_counter() - start, _rss_gb()
    if args.mode == "blocks":  # labels are 1..N: N is the largest, read a strip at a time
        import zarr

        labels = zarr.open_group(str(target), mode="r")["0"]
        objects = max(int(labels[y : y + TILE].max()) for y in range(0, labels.shape[0], TILE))
    return {
        "size": image.shape[-1],
        "mode": args.mode,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak_gb, 3),
        "baseline_rss_gb": round(base_gb, 3),
        "objects": objects,
        "block_size": args.block_size if args.mode == "blocks" else None,
        "threads": args.threads,
        "device": describe_device(torch.device("cpu")),
    }


# ------------------------------------------------------------------------ the whole run


def _measure(args: argparse.Namespace, size: int, mode: str, image: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--image",
        str(image),
        "--model",
        str(args.model),
        "--work",
        str(args.work),
        "--threads",
        str(args.threads),
        "--block-size",
        str(args.block_size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"size": size, "mode": mode, "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    """Peak memory against image size, both paths, with the whole path's projection."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("whole", "o-"), ("blocks", "s-")):
        measured = [r for r in rows if r["mode"] == mode and "peak_rss_gb" in r]
        ax.plot(
            [r["size"] for r in measured],
            [r["peak_rss_gb"] for r in measured],
            style,
            label=f"{mode} (measured)",
        )
    projected = [r for r in rows if r["mode"] == "whole" and "projected_gb" in r]
    if projected:
        last = [r for r in rows if r["mode"] == "whole" and "peak_rss_gb" in r][-1:]
        ax.plot(
            [r["size"] for r in last + projected],
            [r["peak_rss_gb"] for r in last] + [r["projected_gb"] for r in projected],
            "o--",
            color="C0",
            alpha=0.6,
            label="whole (projected)",
        )
    ax.axhline(TARGET_GB, color="grey", lw=0.8, ls=":", label=f"{TARGET_GB:g} GB target")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([0.5, 1, 2, 5, 10, 20, 50])
    sizes = sorted({r["size"] for r in rows})
    ax.set_xticks(sizes, [f"{s}²" for s in sizes])
    ax.set_xlabel("image size (pixels)")
    ax.set_ylabel("peak resident memory (GB)")
    ax.set_title("Segmenting one uint16 image, 2 CPU threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], meta: dict) -> str:
    """The result table with the configuration."""
    lines = [
        "| size | path | peak RSS (GB) | seconds | seconds per megapixel | objects |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        pixels = r["size"] ** 2 / 1e6
        if "peak_rss_gb" in r:
            lines.append(
                f"| {r['size']}² | {r['mode']} | {r['peak_rss_gb']:.2f} | {r['seconds']:.0f} | "
                f"{r['seconds'] / pixels:.2f} | {r['objects']} |"
            )
        elif "projected_gb" in r:
            lines.append(
                f"| {r['size']}² | {r['mode']} | not run: needs ≈ {r['projected_gb']:.0f} | – | – "
                "| – |"
            )
        else:
            lines.append(f"| {r['size']}² | {r['mode']} | failed: {r['failed']} | – | – | – |")
    bpp = meta.get("whole_bytes_per_pixel")
    note = (
        f"The whole-image path needs {bpp:.0f} bytes a pixel above its baseline (measured at "
        f"{meta['whole_bpp_at']}²); the projection for larger sizes is baseline + that × pixels."
        if bpp
        else ""
    )
    return (
        f"**Large images: peak memory and time, whole-image vs block by block** — "
        f"{meta['device']}, {meta['threads']} torch threads, blocks of {meta['block_size']} "
        f"px; model {meta['model']}. Input: a synthetic nuclei-like uint16 scan as a tiled "
        "zlib TIFF; block-by-block output: OME-Zarr with pyramid.\n\n"
        + "\n".join(lines)
        + f"\n\n{note}\n\nCommand: `{meta['command']}`\n"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every (size, path) in its own process; write JSON, markdown and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--modes", nargs="+", default=["whole", "blocks"])
    parser.add_argument("--whole-max", type=int, default=4096, help="largest side run whole")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--model", type=Path, help="a saved pair; trained and saved if missing")
    parser.add_argument("--data", type=Path, help="BBBC039 folder, to train without --model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/napari-mutualseg-large"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="", help="suffix of the output names")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return []
    args.work.mkdir(parents=True, exist_ok=True)
    args.model = args.model or args.work / "pair.pt"
    if not args.model.exists():
        sys.path.insert(0, str(HERE))
        from blockwise_quality import train_pair
        from run import DEFAULT_DATA

        train_pair(args.data or DEFAULT_DATA, 0).save(args.model)
    rows: list[dict] = []
    for size in args.sizes:
        image = args.work / f"scan_{size}.tif"
        if not image.exists():
            print(f"making {image}", file=sys.stderr, flush=True)
            make_image(image, size)
        for mode in args.modes:
            if mode == "whole" and size > args.whole_max:
                rows.append({"size": size, "mode": mode, "skipped": True})
                continue
            print(f"{size}² {mode}", file=sys.stderr, flush=True)
            rows.append(_measure(args, size, mode, image))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {
        "threads": args.threads,
        "block_size": args.block_size,
        "model": args.model.name,
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "command": "python benchmarks/large_image.py " + " ".join(argv or sys.argv[1:]),
    }
    whole = [r for r in rows if r["mode"] == "whole" and "peak_rss_gb" in r]
    if whole:
        last = max(whole, key=lambda r: r["size"])
        bpp = (last["peak_rss_gb"] - last["baseline_rss_gb"]) * 2**30 / last["size"] ** 2
        meta.update(whole_bytes_per_pixel=bpp, whole_bpp_at=last["size"])
        for r in rows:
            if r.get("skipped"):
                r["projected_gb"] = last["baseline_rss_gb"] + bpp * r["size"] ** 2 / 2**30
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"large_image{args.tag}"
    write_text(
        stem.with_suffix(".json"),
        json.dumps({"meta": meta, "rows": rows}, indent=2),
        overwrite=True,
    )
    table = markdown(rows, meta)
    write_text(stem.with_suffix(".md"), table, overwrite=True)
    plot(rows, stem.with_suffix(".png"))
    print(table)
    return rows


if __name__ == "__main__":
    main()
