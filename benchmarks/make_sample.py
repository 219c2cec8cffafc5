"""Rebuild the bundled sample (image, instance mask, boxes) from a BBBC039 copy.

Usage::

    python benchmarks/make_sample.py /path/to/bbbc039 [--name IXMtest_G13_s9]

``/path/to/bbbc039`` holds ``{train,val,test}/{images,masks}/NAME.tif``; ``--name`` is a prefix of
one file name. The files are written to ``src/napari_mutualseg/data/``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import tifffile
from skimage.measure import regionprops

DATA = Path(__file__).resolve().parents[1] / "src" / "napari_mutualseg" / "data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="BBBC039 folder with train/images, train/masks")
    parser.add_argument("--name", default="IXMtest_G13_s9", help="prefix of the image file name")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)

    matches = sorted((args.dataset / args.split / "images").glob(f"{args.name}*.tif"))
    if len(matches) != 1:
        raise SystemExit(f"expected one image matching {args.name!r}, found {len(matches)}")
    image_path = matches[0]
    image = tifffile.imread(image_path)
    mask = tifffile.imread(image_path.parent.parent / "masks" / image_path.name)
    if image.dtype != np.uint16 or mask.shape != image.shape:
        raise SystemExit("expected a uint16 image and a mask of the same shape")

    args.out.mkdir(parents=True, exist_ok=True)
    # zlib only (no predictor): tifffile decodes it without the optional imagecodecs package.
    tifffile.imwrite(args.out / "nuclei_image.tif", image, compression="zlib")
    tifffile.imwrite(args.out / "nuclei_masks.tif", mask.astype(np.uint16), compression="zlib")
    props = regionprops(mask.astype(np.int32))
    with open(args.out / "nuclei_boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["y0", "x0", "y1", "x1"])
        writer.writerows([list(p.bbox) for p in props])
    print(f"{image_path.name}: {image.shape} {len(props)} nuclei -> {args.out}")


if __name__ == "__main__":
    main()
