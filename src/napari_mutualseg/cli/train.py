"""``train`` and ``demo``: the pair of networks trained from boxes, round by round."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..files import check_outputs, check_writable
from .errors import CommandFailed
from .inputs import (
    RGB_IDLE,
    boxes_for,
    check_found,
    config_from,
    images_named,
    painted_supervisions,
    supervision,
)
from .labels import format_metrics
from .outputs import Outputs, write_overlay
from .signals import Interrupted, stop_gently

if TYPE_CHECKING:
    from ..images import AxisImage
    from ..models import ModelPair
    from ..training import MutualTrainer, RoundReport
    from .inputs import PlaneBoxes

#: Rounds of ``demo`` unless --rounds says otherwise.
DEMO_ROUNDS = 4


def run_rounds(
    trainer: MutualTrainer, on_round: Callable[[RoundReport], None] | None = None
) -> RoundReport | None:
    """Run the engine with a step progress bar, calling ``on_round`` after each round.

    The bar is drawn on a terminal only: redrawn in a log file (a cluster job's output) it
    would fill it with carriage returns, where the rounds' lines say the progress.

    Returns
    -------
    RoundReport or None
        The report of the last round, None if none finished.
    """
    from tqdm.auto import tqdm

    print(f"Training on {trainer.device_name}", file=sys.stderr)
    report = None
    bar = tqdm(total=trainer.total_steps, unit="step", desc="training", leave=False, disable=None)
    with bar:
        for report in trainer:
            bar.update(trainer.step - bar.n)
            if on_round is not None:
                bar.clear()
                on_round(report)
        bar.update(trainer.step - bar.n)
    return report


def _resumed(args: argparse.Namespace) -> tuple[ModelPair | None, dict[str, Any]]:
    """The pair ``--resume`` names (or None) and the network size it fixes."""
    if not args.resume:
        return None, {}
    from ..models import ModelPair

    pair = ModelPair.load(args.resume, device=args.device)
    arch = pair.model_a.arch
    for option in ("width", "depth"):
        given = getattr(args, option)
        if given is not None and given != arch[option]:
            raise ValueError(
                f"--{option} {given} does not match the model to resume ({option} "
                f"{arch[option]}): a resumed model keeps its networks. Leave --{option} out."
            )
    # resumed networks keep their size and input channels unless the command says otherwise
    kept = {k: pair.settings[k] for k in ("channels", "rgb") if k in pair.settings}
    return pair, {"width": arch["width"], "depth": arch["depth"], **kept}


def _label_paths(
    args: argparse.Namespace, loaded: list[tuple[AxisImage, list[PlaneBoxes]]]
) -> list[Path]:
    """Where --labels-out puts each boxed plane's segmentation; none without it."""
    from ..io import output_paths

    if not args.labels_out:
        return []
    sources, parts = [], []
    for path, (image, planes) in zip(args.images, loaded, strict=True):
        for j, plane in enumerate(planes):
            if plane is not None:
                sources.append(path)
                parts.append(image.plane_name(j))
    return output_paths(sources, args.labels_out, parts=parts)


def _say_boxes(loaded: list[tuple[AxisImage, list[PlaneBoxes]]]) -> None:
    """How many boxes each image gives, and on which planes of a stack: the table matched
    to it, as it was read."""
    for image, planes in loaded:
        boxed = [(j, p) for j, p in enumerate(planes) if p is not None]
        count = sum(len(p[1]) for _, p in boxed)
        where = ""
        if len(planes) > 1:
            names = [image.plane_name(j) for j, _ in boxed]
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            where = f" on {len(boxed)} of {len(planes)} planes ({shown})"
        print(f"{image.name}: {count} boxes{where}", file=sys.stderr)


def _check_each_image_once(images: list[str]) -> None:
    """An image given twice would be trained on twice, each time with its own table's boxes
    and the other's cells as background."""
    from ..files import same_file_key

    keys = [same_file_key(p) for p in images]
    for k, key in enumerate(keys):
        if key in keys[:k]:
            raise ValueError(
                f"{images[k]} is given twice (as {images[keys.index(key)]} before): give each "
                "image once, with one box table of all its boxes."
            )


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: train the pair on boxed images and save it; the exit status.

    The first Ctrl-C or SIGTERM saves the networks of the last completed round.
    """
    from ..checkpoint import check_model_name
    from ..ome import PixelSize
    from ..training import MutualTrainer

    try:
        check_model_name(args.out)  # before any training, not when the pair is saved
    except ValueError as err:
        raise ValueError(f"--out {err}") from None
    _check_each_image_once(args.images)
    check_found(args.supervision or [], "Supervision")
    check_found([args.resume] if args.resume else [], "Model file")
    pair, fixed = _resumed(args)
    config = config_from(args, **fixed)
    loaded = boxes_for(args.images, args.boxes, args)
    _say_boxes(loaded)
    # as predict tells it: otherwise the model would say its gray images were RGB made gray
    gray = [image.name for image, _ in loaded if not image.rgb]
    if args.rgb is not None and gray:
        idle = RGB_IDLE.format(rgb=args.rgb, images=images_named(gray))
        warnings.warn(f"{idle}.", UserWarning, stacklevel=2)
    label_paths = _label_paths(args, loaded)
    # the model may be saved over the one it resumes (with --overwrite); nothing else is read
    painted = args.supervision or []
    read = [*args.images, *args.boxes, *painted]
    out, *_ = check_outputs([args.out, *label_paths], read, args.overwrite)
    # one supervision per plane; planes without boxes are left out of training
    sups = [
        None if p is None else supervision(p[0], image, p[1], j)
        for image, planes in loaded
        for j, p in enumerate(planes)
    ]
    labels = painted_supervisions(painted, loaded, sups) if painted else None
    if labels is not None:
        edits = sum(
            int((lab != s.classes).sum())
            for lab, s in zip(labels, sups, strict=True)
            if s is not None
        )
        print(
            f"Training from {', '.join(painted)}: {edits:,} pixels differ from the boxes' "
            "ellipse labels and are trusted as painted.",
            file=sys.stderr,
        )
    trainer = MutualTrainer([image for image, _ in loaded], sups, config, labels=labels, pair=pair)
    check_writable(out, args.overwrite, size=trainer.pair.file_size)
    # a resumed pair's rounds go on from its history (round 3/5 after 2), as in the panel
    first = len(trainer.pair.history)

    def show(r: RoundReport) -> None:
        print(
            f"round {first + r.round}/{first + r.rounds}  loss A {r.loss_a:.4f}  "
            f"B {r.loss_b:.4f}  labels changed {100 * r.changed:.2f}%  {r.seconds:.1f} s"
        )

    outputs = Outputs(args.overwrite)
    kept = (
        "the last completed round will be saved (a second Ctrl-C or SIGTERM quits without saving)"
    )
    with stop_gently(trainer.cancel, kept) as stopped:
        report = run_rounds(trainer, show)
        if report is None:
            detail = "before the first round finished; nothing was saved"
            if stopped:
                raise Interrupted(stopped[0], detail)
            raise CommandFailed(f"Training stopped {detail}.")
        saved = outputs.pair(trainer.pair, out)
        done = f"round {first + report.round}" if stopped else "the trained pair"
        print(f"Saved {done} to {saved}")
        sizes = [PixelSize.of(image) for image, planes in loaded for p in planes if p is not None]
        labels = zip(label_paths, report.instances, sizes, strict=True) if label_paths else ()
        for path, inst, size in labels:
            written = outputs.labels(path, inst, size)
            print(f"Wrote {written} ({int(inst.max())} cells)")
    if stopped:
        kept = f"the networks of round {first + report.round} are in {saved}"
        left = report.rounds - report.round
        if left:
            # the command to run again, as a requeued cluster job needs it: the file saved is
            # the one --out names, and --rounds counts the rounds still to train
            kept += (
                f"; the same command with --resume {saved} --overwrite --rounds {left} trains "
                f"the {left} round{'s' if left > 1 else ''} left from there"
            )
        raise Interrupted(stopped[0], kept)
    return outputs.status


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: the whole flow on the bundled sample, scored each round; the exit status."""
    from ..files import write_text
    from ..metrics import evaluate
    from ..sample import load_sample
    from ..supervision import boxes_from_shapes, make_supervision
    from ..training import MutualTrainer

    out = Path(args.out)
    overlay_path, metrics_path, model_path = (
        out / "overlay.png",
        out / "metrics.json",
        out / "model.pt",
    )
    for p in (overlay_path, metrics_path, model_path):
        check_writable(p, args.overwrite)
    config = config_from(args, rounds=DEMO_ROUNDS)
    start = time.perf_counter()
    sample = load_sample()
    boxes = boxes_from_shapes(sample.boxes)
    sup = make_supervision(sample.image.shape, boxes)
    print(
        f"Sample: {sample.name}, {sample.image.shape[0]} x {sample.image.shape[1]} px, "
        f"{len(boxes)} boxes"
    )
    baseline = evaluate(sup.instances, sample.ground_truth)
    print(f"ellipse label        {format_metrics(baseline)}")
    trainer = MutualTrainer(sample.image, sup, config)
    check_writable(model_path, args.overwrite, size=trainer.pair.file_size)
    rounds = []

    def show(r: RoundReport) -> None:
        m = evaluate(r.instances[0], sample.ground_truth)
        rounds.append({"round": r.round, "seconds": r.seconds, "changed": r.changed, **m})
        print(
            f"round {r.round}/{r.rounds}  F1@0.5 {m['f1_50']:.3f}  mAP {m['map']:.3f}  "
            f"AJI {m['aji']:.3f}  (loss A {r.loss_a:.3f} B {r.loss_b:.3f}, "
            f"labels changed {100 * r.changed:.1f}%, {r.seconds:.1f} s)"
        )

    outputs = Outputs(args.overwrite)
    kept = "the last completed round will be written (a second Ctrl-C or SIGTERM quits at once)"
    # as train does: a stop keeps the rounds done, here their overlay, scores and model
    with stop_gently(trainer.cancel, kept) as stopped:
        report = run_rounds(trainer, on_round=show)
        if report is None:
            detail = "before the first round finished; nothing was written"
            if stopped:
                raise Interrupted(stopped[0], detail)
            raise CommandFailed(f"Training stopped {detail}.")
        draw = partial(
            write_overlay, image=sample.image, pred=report.instances[0], gt=sample.ground_truth
        )
        overlay = outputs.write(draw, overlay_path)
        model = outputs.pair(trainer.pair, model_path)
        total = time.perf_counter() - start
        summary = {
            "sample": sample.name,
            "device": trainer.device_name,
            "package_version": __version__,
            "settings": config.to_dict(),
            "ellipse_label": baseline,
            "rounds": rounds,
            "final": rounds[-1],
            "seconds_total": total,
        }
        write = partial(write_text, text=json.dumps(summary, indent=2))
        metrics = outputs.write(write, metrics_path)
    final = rounds[-1]
    print(
        f"Final: F1@0.5 {final['f1_50']:.3f}, mAP {final['map']:.3f} after {len(rounds)} "
        f"round{'s' if len(rounds) > 1 else ''} in {total:.0f} s on {trainer.device_name}"
    )
    print(f"Wrote {overlay}, {metrics} and {model}")
    if stopped:
        raise Interrupted(
            stopped[0],
            f"the overlay, scores and model of round {report.round} of {report.rounds} are in "
            f"{overlay.parent}",
        )
    return outputs.status
