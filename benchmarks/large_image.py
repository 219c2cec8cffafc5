"""Time and peak memory of segmenting one large image with a trained pair (tiled inference).

Usage: ``python benchmarks/large_image.py [--size 4096] [--device auto] [--model model.pt]``.
Without ``--model`` an untrained pair of the default architecture is used: speed and memory do
not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.training import TrainConfig


def main() -> None:
    """Segment a synthetic ``size`` x ``size`` image and print seconds and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", help="a saved pair (default: untrained default networks)")
    parser.add_argument("--tile-size", type=int, default=512)
    args = parser.parse_args()
    device = select_device(args.device)
    if args.model:
        pair = ModelPair.load(args.model, device=device)
    else:
        cfg = TrainConfig()
        arch = {"in_channels": 1, "n_classes": 3, "width": cfg.width, "depth": cfg.depth}
        pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1)).to(device)
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (args.size, args.size)).astype(np.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    labels = pair.segment(image, tile_size=args.tile_size)
    seconds = time.perf_counter() - start
    result = {
        "size": args.size,
        "device": describe_device(device),
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "objects": int(labels.max()),
    }
    if device.type == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
