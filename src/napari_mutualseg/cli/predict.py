"""``predict``: segment many images with a trained model (:mod:`napari_mutualseg.batch`)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CommandFailed
from .inputs import RGB_IDLE, check_found, images_named
from .signals import Interrupted, stop_gently

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ..batch import BatchOptions, BatchRun
    from ..jobs import ImageResult


#: Seconds of finding and checking the images after which the command says it is at it: a
#: screen of 10,000 files took 18 s before the first word (more on a network share).
_PREPARING_SECONDS = 2.0


def _say_when_slow(inputs: Sequence[str]) -> threading.Timer:
    """A timer that says, once :data:`_PREPARING_SECONDS` have passed, that the images are
    being found and checked; cancelled when that is done, so a quick run, or a mistake found
    at once, says nothing more."""
    where = inputs[0] if len(inputs) == 1 else f"{inputs[0]} and {len(inputs) - 1} more"
    note = threading.Timer(
        _PREPARING_SECONDS,
        lambda: print(
            f"Finding the images in {where} and checking them before any is segmented (a "
            "folder of thousands takes a while)...",
            file=sys.stderr,
            flush=True,
        ),
    )
    note.daemon = True
    return note


def _batch_options(args: argparse.Namespace) -> BatchOptions:
    from ..batch import BatchOptions
    from ..images import parse_axes, parse_channels

    return BatchOptions(
        # letters that fit no image are one mistake now, not a failure of every image
        axes=None if args.axes is None else parse_axes(args.axes, name="the images"),
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


def _idle_options(args: argparse.Namespace, results: Sequence[ImageResult]) -> list[str]:
    """For each option given that had nothing to act on in some images segmented now, what
    it did not do there and why: a script may pass the same options to every image, a
    person expects them to act."""
    from ..blockwise import AUTO_BLOCKWISE_PIXELS

    options = _batch_options(args)
    # (given, idle on a result, what it did not do, a hint when some of those were stacks)
    checks = [
        (
            args.track,
            lambda r: "T" not in r.axes,
            "--track did nothing for {}: no time axis, so no frames to follow cells through",
            "; if the z-planes are time points, say so with --axes, e.g. TYX",
        ),
        (
            args.no_link,
            lambda r: "Z" not in r.axes,
            "--no-link did nothing for {}: no z-planes to keep apart",
            "",
        ),
        (
            args.pixel_size is not None and args.pixel_size.z is not None,
            lambda r: "Z" not in r.axes,
            "--pixel-size gave a z step, unused for {}: no z axis (its y and x sizes are used)",
            "",
        ),
        (
            args.halo is not None and not options.by_blocks,
            lambda r: math.prod(r.shape[-2:]) <= AUTO_BLOCKWISE_PIXELS,
            "--halo did nothing for {}: segmented whole, not block by block (images up to "
            "4096 x 4096 px are, unless --block-size is given)",
            "",
        ),
        (
            args.rgb is not None,
            lambda r: not r.rgb,
            RGB_IDLE.format(rgb=args.rgb, images="{}"),
            "",
        ),
    ]
    done = [r for r in results if r.status == "done"]
    lines = []
    for given, idle, message, stack_hint in checks:
        idle_ones = [r for r in done if given and idle(r)]
        if idle_ones:
            hint = stack_hint if any("Z" in r.axes for r in idle_ones) else ""
            lines.append(
                message.format(images_named([r.job.name for r in idle_ones])) + hint + "."
            )
    return lines


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


@contextlib.contextmanager
def _say_what_is_kept(run: BatchRun) -> Iterator[None]:
    """A signal or a full disk that stops the run says which images are kept and how to go
    on."""
    from ..files import disk_full

    try:
        yield
    except KeyboardInterrupt as err:
        raise Interrupted(getattr(err, "signum", signal.SIGINT), _kept(run)) from None
    except OSError as err:
        if not disk_full(err):
            raise
        # the command again, once there is space: the run stopped at the first image it
        # could not write
        raise CommandFailed(f"{err} {_kept(run)}.") from None


def _kept(run: BatchRun) -> str:
    """Which images of a stopped run are kept, and what the same command does next."""
    from ..batch import REPORT_NAME

    counts = run.counts()
    failed = counts["failed"]
    # without overwrite, what a rerun skips: one a dask worker finished as the run ended,
    # after the run stopped waiting for it (reported as not done), with the images done
    kept = counts["done"] if run.overwrite else sum(job.complete() for job in run.jobs)
    left = len(run.jobs) - kept - failed
    report = run.out_dir / REPORT_NAME
    # failed images are no work the stop left undone: a rerun meets their problem again
    said = f"{kept} of {len(run.jobs)} images are segmented and kept"
    if failed:
        said += f", {failed} failed ({report} lists them, and why those failed)"
    else:
        said += f" ({report} lists them)"
    if left and run.overwrite:
        said += f"; the same command again segments all {len(run.jobs)} images again"
    elif left:
        again = " and tries the failed ones again" if failed else ""
        said += f"; the same command again segments the other {left}{again}, skipping those"
    elif failed:
        said += "; the same command again tries the failed ones, skipping the others"
    return said


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict``: segment every input, report each image and sum up; the exit status.

    The status is 1 when some images failed (``run_report.csv`` says why), else 0.
    """
    from tqdm.auto import tqdm

    from ..batch import REPORT_NAME, SUMMARY_NAME, BatchRun
    from ..segmenter import NO_CELLS_ADVICE

    _check_model_order(args)
    check_found([args.model], "Model file")
    # a glob pattern that matches nothing is told by the run, as it names no file to be near
    check_found([p for p in args.images if not set("*?[") & set(p)], "Input")
    options = _batch_options(args)
    note = _say_when_slow(args.images)
    note.start()
    try:
        run = BatchRun(
            args.model,
            args.images,
            args.out,
            options,
            overwrite=args.overwrite,
            workers=args.workers,
            scheduler=args.scheduler,
            device=args.device,
            disagreement_dir=args.disagreement_out,
            # said as the first image starts, not only in the last line: is the GPU used?
            on_start=lambda where: tqdm.write(f"Segmenting {where}...", file=sys.stderr),
        )
    finally:
        note.cancel()
    results = iter(run)
    kept = (
        "the images done are kept; those in progress end at their next plane or block, with "
        "nothing of them written unless they finish (a second Ctrl-C or SIGTERM quits at once)"
    )
    with (
        _say_what_is_kept(run),
        stop_gently(run.cancel, kept) as stopped,
        contextlib.closing(results),
        # drawn on a terminal only: a log file gets each image's line, not the bar's redraws
        tqdm(total=len(run.jobs), desc="images", unit="image", leave=False, disable=None) as bar,
    ):
        for k, result in enumerate(results, 1):
            bar.update()
            bar.set_postfix(failed=run.counts()["failed"], refresh=False)
            name = result.job.name
            # where the run is, for a log that has no bar
            place = f"[{k}/{len(run.jobs)}]"
            if result.status == "failed":
                bar.write(f"failed: {name}: {result.reason} {place}", file=sys.stderr)
            elif result.status == "done":
                bar.write(_with_folder(result.read, name), file=sys.stderr)
                shape = " x ".join(map(str, result.shape))
                notes = f"; {result.reason}" if result.reason else ""
                bar.write(
                    f"Wrote {result.job.labels} ({result.cells} cells, {shape}, axes "
                    f"{result.axes}, {result.seconds:.1f} s{notes}) {place}"
                )
        if stopped:
            raise Interrupted(stopped[0])  # told with what is kept, as a second signal is
    counts = run.counts()
    parts = [f"{counts['done']} segmented {run.where}".rstrip()]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped (complete from an earlier run)")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed (reasons in {run.out_dir / REPORT_NAME})")
    cells = sum(r.cells for r in run.results)
    empty = [r.job.name for r in run.results if r.status == "done" and not r.cells]
    if empty:
        where = images_named(empty)
        print(f"warning: no cells found in {where}: {NO_CELLS_ADVICE}.", file=sys.stderr)
    for line in _idle_options(args, run.results):
        print(f"warning: {line}", file=sys.stderr)
    if run.wells_note:
        print(f"note: {run.wells_note}.", file=sys.stderr)
    wells = ""
    if run.wells is not None:
        count = len(run.well_rows)
        wells = f" and per well in {run.wells} ({count} well{'s' if count > 1 else ''})"
    print(
        f"{len(run.jobs)} image{'s' if len(run.jobs) > 1 else ''}: {', '.join(parts)}; "
        f"{cells} cells. Tables per image beside the labels, {run.out_dir / SUMMARY_NAME}"
        f"{wells}."
    )
    return 1 if counts["failed"] else 0
