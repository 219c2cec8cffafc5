"""Command line: ``napari-mutualseg supervise | train | predict | evaluate | demo``.

What the command promises about files: every output appears complete or not at all; an
existing file is replaced only with ``--overwrite`` (a file that another program creates
meanwhile is left alone and the result written beside it, exit status 1); every output place
is checked before any work; Ctrl-C or SIGTERM during ``train`` saves the networks of the last
completed round; ``predict`` keeps every finished image and skips it when run again
(:mod:`napari_mutualseg.batch`). Exit status: 0 done, 1 done but a result went to another name
(the warning says which) or, for ``predict``, some images failed (``run_report.csv`` says why),
2 a mistake the message explains, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .io import check_writable

# Mistakes a user can make and trouble with files; printed as one clear line, never as a
# traceback. OSError covers missing, existing, unwritable and full-disk files.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class _Fail(Exception):
    pass


class _Interrupted(KeyboardInterrupt):
    """A signal stopped the command; ``detail`` says what was kept. A KeyboardInterrupt, so
    that no ``except Exception`` in a library turns it into another error."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail


@contextlib.contextmanager
def _on_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with ``handler`` inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted(signum)


@contextlib.contextmanager
def _stop_gently(trainer: Any) -> Iterator[list[int]]:
    """While training: the first SIGINT or SIGTERM cancels ``trainer``, which stops within a
    step and keeps the networks of the last completed round; a second one stops at once.
    Yields the signals received."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise _Interrupted(signum, "stopped at once on the second signal; nothing saved")
        received.append(signum)
        trainer.cancel()
        print(
            f"\n{signal.Signals(signum).name}: stopping; the last completed round will be saved "
            "(a second Ctrl-C or SIGTERM quits without saving)",
            file=sys.stderr,
        )

    with _on_signals(handler):
        yield received


def _keep(write: Callable[[Path], Path], path: Path, overwrite: bool) -> Path:
    """``write(path)``; if another program created ``path`` meanwhile (no ``--overwrite``),
    that file is left alone and the result written beside it under a free name."""
    try:
        return write(path)
    except FileExistsError:
        if overwrite:
            raise
    n = 1
    while True:
        n += 1
        other = path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            written = write(other)
        except FileExistsError:
            continue
        warnings.warn(
            f"{path} was created by another program while this one ran and is left as it is; "
            f"this result was written to {other} instead.",
            UserWarning,
            stacklevel=2,
        )
        return written


def _load_image(path: str, args: argparse.Namespace):
    """The image of one file with its axes (from the file, or --axes); says what was read."""
    from .images import AxisImage

    image = AxisImage.from_file(path, axes=getattr(args, "axes", None))
    notes = f" ({'; '.join(image.notes)})" if image.notes else ""
    print(f"{image.describe()}{notes}", file=sys.stderr)
    return image


def _boxes_for(images: Sequence[str], tables: Sequence[str], args: argparse.Namespace) -> list:
    """Every image with the name and boxes of each of its planes (None: a plane without boxes).

    One CSV per image or one shared CSV. A stack's table is a napari Shapes CSV whose first
    axis is the plane (planes run over z within each time point); a table drawn on a
    single-plane image as a stack (e.g. a (C, Y, X) image shown without channel_axis) gives
    that plane all its boxes.
    """
    from .io import read_box_table

    loaded = [read_box_table(t) for t in tables]
    if len(tables) not in (1, len(images)):
        raise ValueError(
            f"Got {len(images)} image(s) and {len(tables)} box table(s): give one --boxes CSV per "
            "image, or one CSV with an 'image' column naming each image file."
        )
    result, used = [], set()
    for i, path in enumerate(images):
        table = loaded[i] if len(tables) == len(images) else loaded[0]
        image = _load_image(path, args)
        name = Path(path).name
        stem = name.split(".")[0]
        by_plane = all(isinstance(k, int) for k in table)
        if image.n_planes > 1 and not by_plane:
            raise ValueError(
                f"{name} has {image.n_planes} planes ({image.plane_axes}) but its box table "
                "does not say which plane a box is on: draw the boxes on the stack in napari "
                "and save the Shapes layer as .csv (its first axis is the plane)."
            )
        planes = []
        for j in range(image.n_planes):
            if image.n_planes > 1:
                boxes = table.get(j, [])
            elif by_plane:
                if len(table) > 1:
                    warnings.warn(
                        f"{name} has one plane; the boxes of table planes "
                        f"{', '.join(map(str, sorted(table)))} are all used on it.",
                        UserWarning,
                        stacklevel=2,
                    )
                boxes = [b for k in sorted(table) for b in table[k]]
            elif len(tables) == len(images) and None in table:
                boxes = table[None]
            else:
                key = name if name in table else stem
                used.add(key)
                boxes = table.get(key, [])
            if len(boxes) == 0 and image.n_planes == 1:
                raise ValueError(
                    f"No boxes for {path}: the box table has no rows for it (keys found: "
                    f"{sorted(map(str, table))}). Draw at least one box on this image."
                )
            suffix = image.plane_name(j)
            planes.append((f"{stem}_{suffix}" if suffix else stem, boxes) if boxes else None)
        result.append((image, planes))
    if len(tables) == 1:
        unused = sorted(k for k in loaded[0] if isinstance(k, str) and k not in used)
        if unused:
            warnings.warn(
                f"{tables[0]} has boxes for images that were not given ({', '.join(unused)}); "
                "they are not used. Give those images too, or check the names in the 'image' "
                "column.",
                UserWarning,
                stacklevel=2,
            )
    if not any(p for _, planes in result for p in planes):
        raise ValueError("No image has any boxes; draw at least one box around a cell.")
    return result


def _input_options(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of --channel and --rgb, where given."""
    from .images import parse_channels

    given = {}
    if getattr(args, "channel", None):
        given["channels"] = parse_channels(args.channel)
    if getattr(args, "rgb", None):
        given["rgb"] = args.rgb
    return given


# command-line option -> TrainConfig field
_OPTIONS = {
    "rounds": "rounds",
    "steps": "steps_per_round",
    "batch_size": "batch_size",
    "patch_size": "patch_size",
    "width": "width",
    "depth": "depth",
    "lr": "learning_rate",
    "seed": "seed",
}


def _config_from(args: argparse.Namespace, **fixed):
    """The recommended settings for the chosen device, with the options the user gave."""
    from .config import ExchangeSettings, TrainConfig

    given = {
        field: getattr(args, opt)
        for opt, field in _OPTIONS.items()
        if getattr(args, opt, None) is not None
    }
    if getattr(args, "exchange", None) is not None:
        given["exchange"] = ExchangeSettings(rule=args.exchange)
    return TrainConfig.recommended(args.device, **{**fixed, **given, **_input_options(args)})


def _supervision(name: str, image: np.ndarray, boxes: list, **kwargs):
    """The supervision of one image from the usable boxes; the others are named in a warning."""
    from .boxes import usable_boxes
    from .supervision import make_supervision

    try:
        kept, notes = usable_boxes(boxes, image.plane_shape)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    for note in notes:
        warnings.warn(f"{name}: {note}", UserWarning, stacklevel=2)
    return make_supervision(image.plane_shape, kept, **kwargs)


def _train(trainer, on_round=None):
    """Run the engine with a step progress bar; the last report (None if none finished)."""
    from tqdm.auto import tqdm

    print(f"Training on {trainer.device_name}", file=sys.stderr)
    report = None
    with tqdm(total=trainer.total_steps, unit="step", desc="training", leave=False) as bar:
        for report in trainer:
            bar.update(trainer.step - bar.n)
            if on_round is not None:
                bar.clear()
                on_round(report)
        bar.update(trainer.step - bar.n)
    return report


def _written(path: Path, wanted: Path) -> int:
    """Exit status of one output: 1 when it went to another name than asked."""
    return int(Path(path) != Path(wanted))


def _write_labels(path: Path, labels: np.ndarray, overwrite: bool, pixel_size=None) -> Path:
    from .io import write_labels

    def write(p: Path) -> Path:
        return write_labels(p, labels, overwrite=overwrite, pixel_size=pixel_size)

    return _keep(write, path, overwrite)


def cmd_supervise(args: argparse.Namespace) -> int:
    out = Path(args.out)
    extra = Path(args.instances_out) if args.instances_out else None
    for path in (out, extra):
        if path is not None:
            check_writable(path, args.overwrite)
    ((image, planes),) = _boxes_for([args.image], [args.boxes], args)
    if len(planes) > 1:
        raise ValueError("supervise takes a single 2D image; use train for stacks.")
    ((name, boxes),) = planes
    sup = _supervision(name, image, boxes, edge_width=args.edge_width)
    written = _write_labels(out, sup.classes, args.overwrite)
    print(
        f"Wrote {written} ({len(sup.boxes)} boxes; 0 background, 1 cell, 2 boundary, 255 ignore)"
    )
    status = _written(written, out)
    if extra is not None:
        written = _write_labels(extra, sup.instances, args.overwrite)
        print(f"Wrote {written}")
        status |= _written(written, extra)
    return status


def _resumed(args: argparse.Namespace):
    """The pair ``--resume`` names (or None) and the network size it fixes."""
    if not args.resume:
        return None, {}
    from .models import ModelPair

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


def _save_pair(pair, out: Path, overwrite: bool) -> Path:
    """Save a trained pair to ``out``. If that fails although it was checked before training
    (the disk filled up meanwhile), the pair goes to the system's temporary folder and the
    error says where: trained networks are not thrown away."""
    try:
        return _keep(lambda p: pair.save(p, overwrite=overwrite), out, overwrite)
    except OSError as err:
        try:
            rescued = _keep(pair.save, Path(tempfile.gettempdir()) / out.name, False)
        except OSError:
            raise err from None
        raise _Fail(f"{err} The trained networks were saved to {rescued} instead.") from None


def _label_paths(args: argparse.Namespace, loaded: list) -> list[Path]:
    """Where --labels-out puts each boxed plane's segmentation (checked); none without it."""
    from .io import output_paths

    if not args.labels_out:
        return []
    sources, parts = [], []
    for path, (image, planes) in zip(args.images, loaded, strict=True):
        for j, plane in enumerate(planes):
            if plane is not None:
                sources.append(path)
                parts.append(image.plane_name(j))
    paths = output_paths(sources, args.labels_out, parts=parts)
    for path in paths:
        check_writable(path, args.overwrite)
    return paths


def cmd_train(args: argparse.Namespace) -> int:
    from .training import MutualTrainer

    pair, fixed = _resumed(args)
    config = _config_from(args, **fixed)
    out = check_writable(args.out, args.overwrite)
    loaded = _boxes_for(args.images, args.boxes, args)
    label_paths = _label_paths(args, loaded)
    # one supervision per plane; planes without boxes are left out of training
    sups = [
        None if p is None else _supervision(p[0], image, p[1])
        for image, planes in loaded
        for p in planes
    ]
    trainer = MutualTrainer([image for image, _ in loaded], sups, config, pair=pair)
    check_writable(out, args.overwrite, size=trainer.pair.file_size)

    def show(r):
        print(
            f"round {r.round}/{r.rounds}  loss A {r.loss_a:.4f}  B {r.loss_b:.4f}  "
            f"labels changed {100 * r.changed:.2f}%  {r.seconds:.1f} s"
        )

    with _stop_gently(trainer) as stopped:
        report = _train(trainer, show)
        if report is None:
            detail = "before the first round finished; nothing was saved"
            if stopped:
                raise _Interrupted(stopped[0], detail)
            raise _Fail(f"Training stopped {detail}.")
        saved = _save_pair(trainer.pair, out, args.overwrite)
        done = f"round {report.round}" if stopped else "the trained pair"
        print(f"Saved {done} to {saved}")
        status = _written(saved, out)
        labels = zip(label_paths, report.instances, strict=True) if label_paths else ()
        for path, inst in labels:
            written = _write_labels(path, inst, args.overwrite)
            status |= _written(written, path)
            print(f"Wrote {written} ({int(inst.max())} cells)")
    if stopped:
        raise _Interrupted(stopped[0], f"the networks of round {report.round} are in {saved}")
    return status


def _batch_options(args: argparse.Namespace):
    from .batch import BatchOptions
    from .images import parse_channels

    return BatchOptions(
        axes=args.axes,
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


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .batch import REPORT_NAME, SUMMARY_NAME, BatchRun

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
                bar.write(result.read, file=sys.stderr)
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
    print(
        f"{len(run.jobs)} image{'s' if len(run.jobs) > 1 else ''}: {', '.join(parts)}; "
        f"{cells} cells. Tables per image beside the labels, {run.out_dir / SUMMARY_NAME}."
    )
    return 1 if counts["failed"] else 0


def _pixel_size_option(text: str):
    from .ome import PixelSize

    try:
        return PixelSize.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _format_metrics(m: dict) -> str:
    return (
        f"F1@0.5 {m['f1_50']:.3f}  AP@0.5 {m['ap_50']:.3f}  AP@0.75 {m['ap_75']:.3f}  "
        f"mAP {m['map']:.3f}  AJI {m['aji']:.3f}  Dice {m['dice']:.3f}"
    )


def _label_image(path: str) -> np.ndarray:
    """An instance label image from ``path``, or a ValueError that says why it is not one."""
    from .io import read_image

    image = np.asarray(read_image(path))
    if image.dtype == bool or np.issubdtype(image.dtype, np.integer):
        whole = True
    else:
        whole = np.issubdtype(image.dtype, np.floating) and bool(
            np.all(np.isfinite(image)) and np.all(image == np.round(image))
        )
    if not whole or image.min() < 0:
        raise ValueError(
            f"{path} ({image.dtype}, values {image.min():g} to {image.max():g}) is not a label "
            "image: evaluate compares instance labels, whole numbers from 0 (background) with "
            "one number per object, such as predict writes."
        )
    return image.astype(np.int64, copy=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate

    pred, gt = _label_image(args.pred), _label_image(args.gt)
    if pred.shape != gt.shape:
        raise ValueError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    m = evaluate(pred, gt)
    print(json.dumps(m, indent=2) if args.json else _format_metrics(m))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .io import write_text
    from .metrics import evaluate
    from .sample import load_sample
    from .supervision import boxes_from_shapes, make_supervision
    from .training import MutualTrainer

    out = Path(args.out)
    overlay_path, metrics_path, model_path = (
        out / "overlay.png",
        out / "metrics.json",
        out / "model.pt",
    )
    for p in (overlay_path, metrics_path, model_path):
        check_writable(p, args.overwrite)
    start = time.perf_counter()
    sample = load_sample()
    boxes = boxes_from_shapes(sample.boxes)
    sup = make_supervision(sample.image.shape, boxes)
    print(
        f"Sample: {sample.name}, {sample.image.shape[1]}x{sample.image.shape[0]} px, "
        f"{len(boxes)} boxes"
    )
    baseline = evaluate(sup.instances, sample.ground_truth)
    print(f"ellipse label        {_format_metrics(baseline)}")
    config = _config_from(args, rounds=4)
    trainer = MutualTrainer(sample.image, sup, config)
    check_writable(model_path, args.overwrite, size=trainer.pair.file_size)
    rounds = []

    def show(r):
        m = evaluate(r.instances[0], sample.ground_truth)
        rounds.append({"round": r.round, "seconds": r.seconds, "changed": r.changed, **m})
        print(
            f"round {r.round}/{r.rounds}  F1@0.5 {m['f1_50']:.3f}  mAP {m['map']:.3f}  "
            f"AJI {m['aji']:.3f}  (loss A {r.loss_a:.3f} B {r.loss_b:.3f}, "
            f"labels changed {100 * r.changed:.1f}%, {r.seconds:.1f} s)"
        )

    report = _train(trainer, on_round=show)
    if report is None:
        raise _Fail("Training was stopped before the first round finished.")
    draw = partial(
        _write_overlay,
        image=sample.image,
        pred=report.instances[0],
        gt=sample.ground_truth,
        overwrite=args.overwrite,
    )
    overlay = _keep(draw, overlay_path, args.overwrite)
    model = _save_pair(trainer.pair, model_path, args.overwrite)
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
    metrics = _keep(
        lambda p: write_text(p, json.dumps(summary, indent=2), overwrite=args.overwrite),
        metrics_path,
        args.overwrite,
    )
    final = rounds[-1]
    print(
        f"Final: F1@0.5 {final['f1_50']:.3f}, mAP {final['map']:.3f} after {len(rounds)} rounds "
        f"in {total:.0f} s on {trainer.device_name}"
    )
    print(f"Wrote {overlay}, {metrics} and {model}")
    return (
        _written(overlay, overlay_path)
        | _written(metrics, metrics_path)
        | _written(model, model_path)
    )


def _write_overlay(
    path: Path, image: np.ndarray, pred: np.ndarray, gt: np.ndarray, overwrite: bool
) -> Path:
    """Image in gray, predicted outlines in magenta, ground-truth outlines in green (PNG)."""
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    from .io import atomic_write
    from .preprocess import normalize

    gray = np.clip(normalize(image), 0, 1)
    rgb = np.stack([gray] * 3, axis=-1)
    rgb[find_boundaries(gt, mode="inner")] = (0.2, 1.0, 0.2)
    rgb[find_boundaries(pred, mode="inner")] = (1.0, 0.2, 1.0)
    with atomic_write(path, overwrite=overwrite) as f:
        iio.imwrite(f, (rgb * 255).astype(np.uint8), extension=".png")
    return path


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Training options; left out, each takes the value recommended for the device."""
    from .config import EXCHANGE_RULES

    p.add_argument("--rounds", type=int, help="maximum rounds")
    p.add_argument("--steps", type=int, help="steps per round per network")
    p.add_argument("--width", type=int, help="U-Net channels at the first level")
    p.add_argument("--depth", type=int, help="U-Net levels")
    p.add_argument("--batch-size", type=int, help="crops per training step")
    p.add_argument("--patch-size", type=int, help="training crop edge in pixels")
    p.add_argument("--lr", type=float, help="learning rate of round 1")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--exchange", choices=EXCHANGE_RULES, help="exchange rule")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda:0, mps"
    )


def _add_image_options(p: argparse.ArgumentParser, channels: bool = True) -> None:
    """How images are read: their axes and, for the networks, channels and RGB."""
    from .images import RGB_MODES

    p.add_argument(
        "--axes",
        help="what each axis of the images is, when the files do not say: letters from TCZYX "
        "in the stored order, e.g. CYX (channels), ZYX (z-stack), TYX (time series), TZCYX",
    )
    if not channels:
        return
    p.add_argument(
        "--channel",
        action="append",
        metavar="C",
        help="channel(s) the networks take, by index or name; repeat or comma-separate for "
        "several (default: every channel when training, the model's channels when predicting)",
    )
    p.add_argument(
        "--rgb",
        choices=RGB_MODES,
        help="RGB images as three colour channels or one gray channel (default: channels when "
        "training, the model's choice when predicting)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-mutualseg`` command."""
    from .inference import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

    parser = argparse.ArgumentParser(
        prog="napari-mutualseg",
        description="Cell segmentation from boxes: two networks that teach each other.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("supervise", help="boxes -> ellipse supervision (class map TIFF)")
    p.add_argument("image")
    p.add_argument("--boxes", required=True, help="box CSV (napari Shapes CSV or y0,x0,y1,x1)")
    p.add_argument("--out", required=True, help="class map TIFF to write")
    p.add_argument("--instances-out", help="also write the per-box instance map here")
    p.add_argument("--edge-width", type=int, default=1, help="boundary thickness in pixels")
    _add_image_options(p, channels=False)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_supervise)

    p = sub.add_parser("train", help="train the pair of networks from boxes")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "--boxes",
        nargs="+",
        required=True,
        metavar="CSV",
        help="one CSV per image, or one CSV with an 'image' column",
    )
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--labels-out", help="folder for each boxed image's final segmentation")
    p.add_argument("--resume", help="continue training this saved model")
    _add_image_options(p)
    _add_training_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment new images with a trained model")
    p.add_argument("model")
    p.add_argument(
        "images",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched with their subfolders), glob patterns "
        "('plate1/**/*.tif', quoted) or OME-Zarr stores",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for <name>_cells.tif and <name>_cells.csv per image (the inputs' "
        "folders are kept below it), summary.csv and run_report.csv",
    )
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--min-size", type=int, default=None, help="drop smaller objects (pixels)")
    _add_image_options(p)
    p.add_argument(
        "--no-link",
        action="store_true",
        help="z-stacks: keep each plane's labels apart instead of linking them into 3D objects",
    )
    p.add_argument(
        "--track",
        action="store_true",
        help="time series: give a cell the same label in every frame (by overlap)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        help="segment block by block, reading and writing one block at a time: memory then "
        "depends on the block (2048: about 1.2 GB), not on the image (default: whole images "
        "up to 4096 x 4096, blocks above)",
    )
    p.add_argument(
        "--halo",
        type=int,
        help="margin read around each block, wider than a cell (default: from the model)",
    )
    p.add_argument(
        "--out-format",
        choices=("tif", "zarr"),
        default="tif",
        help="labels as TIFF (held in memory, 4 bytes a pixel) or OME-Zarr "
        "(<name>_cells.ome.zarr, written block by block, with a pyramid)",
    )
    p.add_argument(
        "--pixel-size",
        type=_pixel_size_option,
        help="pixel size written with the labels, e.g. 0.65 or 0.5,0.65um (default: the "
        "input file's own)",
    )
    p.add_argument(
        "--disagreement-out",
        metavar="FOLDER",
        help="also write where the two networks disagree (TIFF) and the cells to check (CSV); "
        "whole images only",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="dask workers started on this machine (0: in this process; default: one per "
        "GPU, else one per two CPU cores, in this process when that is one)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing dask cluster, e.g. tcp://10.0.0.5:8786 (dask scheduler and "
        "dask worker, or dask-jobqueue); the workers must see the input and output folders",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every image again and replace its outputs (default: images whose "
        "outputs are complete are skipped)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="compare an instance label image with ground truth")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole flow on the bundled BBBC039 sample")
    p.add_argument("--out", default="demo_output", help="folder for overlay, metrics and model")
    _add_training_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo output")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-mutualseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .training import TrainingError

    def warn(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings(), _on_signals(_interrupt):
        warnings.showwarning = warn
        try:
            return args.func(args)
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            detail = getattr(err, "detail", "") or (
                "every file reported as written is complete; nothing else was written"
            )
            # on a line of its own: the signal may have cut a progress bar (or ^C) short
            print(f"\ninterrupted ({signal.Signals(signum).name}): {detail}.", file=sys.stderr)
            return 128 + signum
        except MemoryError as err:
            print(
                f"error: out of memory ({err or 'the image is too large'}); use smaller images "
                "or a smaller --tile-size.",
                file=sys.stderr,
            )
            return 2
        except (*USER_ERRORS, CheckpointError, TrainingError, _Fail) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
