"""Peak memory of segmenting a lazy z-stack: labels held in memory against labels streamed to
OME-Zarr plane after plane (``pair.segment(stack, out=labels_zarr(...))``).

Usage::

    python benchmarks/stack_memory.py                 # 40 x 1024² and 160 x 512², about 6 min
    python benchmarks/stack_memory.py --stacks 40x1024

Each run is a fresh process, so that its peak resident memory (Linux ``VmHWM``) is its own.
The networks are a thresholding pair (bright is cell): the memory and time measured are the
pipeline's (reading, normalising, instances, linking, writing), not a U-Net's. The stacks are
written once to ``--work`` as zarr (uint8, 300 discs per plane) and read lazily through dask.
Writes ``stack_memory.json`` and ``stack_memory.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    RESULTS,
    load_average,
    load_text,
    machine,
    peak_mib,
    threshold_pair,
    write_results,
)


def _stack(path: Path, planes: int, edge: int) -> None:
    """A stack of ``planes`` planes of ``edge``², 300 discs each, written once."""
    import numpy as np
    import zarr

    if (path / ".done").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    src = zarr.open_array(
        str(path), mode="w", shape=(planes, edge, edge), chunks=(1, 512, 512), dtype="uint8"
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-10:11, -10:11]
    disc = ((yy**2 + xx**2) < 100) * np.uint8(200)
    for k in range(planes):
        plane = np.zeros((edge, edge), np.uint8)
        for cy, cx in rng.integers(20, edge - 20, (300, 2)):
            plane[cy - 10 : cy + 11, cx - 10 : cx + 11] |= disc
        src[k] = plane
    (path / ".done").touch()


def _one(stack: str, mode: str, out: str) -> dict:
    """One measurement, in this process (the child)."""
    import dask.array as da
    import zarr

    from napari_mutualseg.devices import describe_device
    from napari_mutualseg.images import AxisImage
    from napari_mutualseg.ome import labels_zarr

    pair = threshold_pair()
    data = da.from_zarr(zarr.open_array(stack, mode="r"))
    image = AxisImage(data, "ZYX", name="stack")
    before = peak_mib()
    start = time.perf_counter()
    if mode == "memory":
        pair.segment(image, blockwise=True, tile_size=256)
    else:
        shutil.rmtree(out, ignore_errors=True)
        with labels_zarr(out, image.label_shape, axes="ZYX") as labels:
            pair.segment(image, out=labels, tile_size=256)
    seconds = time.perf_counter() - start
    return {
        "peak_mib": round(peak_mib()),
        "before_mib": round(before),
        "seconds_per_plane": round(seconds / data.shape[0], 3),
        "device": describe_device(pair.device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stacks", default="40x1024,160x512", help="planes x edge, comma-separated")
    p.add_argument("--work", default="/tmp/stack_memory", help="folder for the stacks")
    p.add_argument("--out", default=str(RESULTS), help="folder for the results")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_one(*args.child)))
        return
    work = Path(args.work)
    load_start = load_average()
    rows, device = [], "no stack measured"
    for spec in args.stacks.split(","):
        planes, edge = (int(v) for v in spec.split("x"))
        stack = work / f"stack_{planes}_{edge}.zarr"
        _stack(stack, planes, edge)
        for mode in ("memory", "zarr"):
            child = [sys.executable, __file__, "--child", str(stack), mode, str(work / "o.zarr")]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            row = {"planes": planes, "edge": edge, "labels": mode}
            row |= json.loads(done.stdout.strip().splitlines()[-1])
            device = row.pop("device")
            print(row, flush=True)
            rows.append(row)
    report = {
        "machine": machine(),
        "device": device,
        "load_average": {"start": load_start, "end": load_average()},
        "rows": rows,
    }
    loads = report["load_average"]
    lines = [
        f"Lazy z-stacks segmented by a thresholding pair on {report['machine']}, {device}; "
        f"load average (1 / 5 / 15 min) {load_text(loads['start'])} at the start, "
        f"{load_text(loads['end'])} at the end.",
        "",
        "| stack | labels | peak memory (MiB) | before segmenting (MiB) | s per plane |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        where = "held in memory" if r["labels"] == "memory" else "streamed to OME-Zarr"
        lines.append(
            f"| {r['planes']} x {r['edge']}² | {where} | {r['peak_mib']} | {r['before_mib']} | "
            f"{r['seconds_per_plane']} |"
        )
    write_results(Path(args.out), "stack_memory", report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
