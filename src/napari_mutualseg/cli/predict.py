"""``predict``: segment many images with a trained model (:mod:`napari_mutualseg.batch`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..batch import BatchOptions


def _batch_options(args: argparse.Namespace) -> BatchOptions:
    from ..batch import BatchOptions
    from ..images import parse_axes, parse_channels

    return BatchOptions(
        # letters that fit no image are one mistake now, not a failure of every image
        axes=parse_axes(args.axes, name="the images") if args.axes else None,
        channels=parse_channels(args.channel),
        rgb=args.rgb,
        tile_size=args.tile_size,
        overlap=args.overlap,
        min_size=args.min_size,
        link=not args.no_link,
        track=args.track,
        block_size=args.block_size,
        halo=args.halo,
        out_format=args.out_format,
        pixel_size=args.pixel_size,
        disagreement=bool(args.disagreement_out),
    )


def _with_folder(read: str, name: str) -> str:
    """What was read of an image, named by its path below the inputs' folder (a plate's
    wells all hold an ``f1.tif``), not by its file name alone."""
    own = f"{name.replace(os.sep, '/').rsplit('/', 1)[-1]}: "
    return f"{name}: {read.removeprefix(own)}" if read.startswith(own) else read


def _check_model_order(args: argparse.Namespace) -> None:
    """A model file among the inputs: the model and an image swapped, or a second model."""
    models = [p for p in args.images if Path(p).suffix.lower() == ".pt"]
    if not models:
        return
    if Path(args.model).suffix.lower() != ".pt":
        raise ValueError(
            f"{args.model} is given as the model and {models[0]} as an image: the model comes "
            f"first (napari-mutualseg predict {models[0]} IMAGE ... --out FOLDER)."
        )
    raise ValueError(
        f"{models[0]} is a model given among the images: predict takes one model, first; "
        "run it once per model, each with its own --out folder."
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict``: segment every input, report each image and sum up; the exit status.

    The status is 1 when some images failed (``run_report.csv`` says why), else 0.
    """
    from tqdm.auto import tqdm

    from ..batch import REPORT_NAME, SUMMARY_NAME, BatchRun
    from ..files import check_writable
    from ..segmenter import NO_CELLS_ADVICE

    _check_model_order(args)
    run = BatchRun(
        args.model,
        args.images,
        args.out,
        _batch_options(args),
        overwrite=args.overwrite,
        workers=args.workers,
        scheduler=args.scheduler,
        device=args.device,
        disagreement_dir=args.disagreement_out,
    )
    # the disagreement maps' folders, checked before any image as the labels' folder is
    folders = {path.parent: path for job in run.jobs for path in job.disagreement or ()}
    for path in folders.values():
        check_writable(path, overwrite=True)
    results = iter(run)
    with (
        contextlib.closing(results),
        tqdm(total=len(run.jobs), desc="images", unit="image", leave=False) as bar,
    ):
        for result in results:
            bar.update()
            bar.set_postfix(failed=run.counts()["failed"], refresh=False)
            name = result.job.name
            if result.status == "failed":
                bar.write(f"failed: {name}: {result.reason}", file=sys.stderr)
            elif result.status == "done":
                bar.write(_with_folder(result.read, name), file=sys.stderr)
                shape = " x ".join(map(str, result.shape))
                notes = f"; {result.reason}" if result.reason else ""
                bar.write(
                    f"Wrote {result.job.labels} ({result.cells} cells, {shape}, axes "
                    f"{result.axes}{notes})"
                )
    counts = run.counts()
    parts = [f"{counts['done']} segmented {run.where}".rstrip()]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped (complete from an earlier run)")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed (reasons in {run.out_dir / REPORT_NAME})")
    cells = sum(r.cells for r in run.results)
    empty = [r.job.name for r in run.results if r.status == "done" and not r.cells]
    if empty:
        where = empty[0] if len(empty) == 1 else f"{len(empty)} images ({empty[0]}, ...)"
        print(f"warning: no cells found in {where}: {NO_CELLS_ADVICE}.", file=sys.stderr)
    print(
        f"{len(run.jobs)} image{'s' if len(run.jobs) > 1 else ''}: {', '.join(parts)}; "
        f"{cells} cells. Tables per image beside the labels, {run.out_dir / SUMMARY_NAME}."
    )
    return 1 if counts["failed"] else 0
