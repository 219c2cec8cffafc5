"""The options of the ``napari-mutualseg`` command and its subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from itertools import takewhile
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from .info import cmd_info
from .labels import cmd_evaluate, cmd_supervise
from .predict import cmd_predict
from .train import DEMO_ROUNDS, cmd_demo, cmd_train

if TYPE_CHECKING:
    from ..ome import PixelSize

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


#: The box files ``supervise`` and ``train`` read (``box_tables.read_box_table``).
BOX_FILES = (
    "napari Shapes CSV, a y0,x0,y1,x1 CSV, a Fiji ROI set (.zip, .roi) or QuPath GeoJSON; "
    "rectangles and ellipses"
)

#: The model argument of ``predict`` and ``info``.
_MODEL_HELP = "model file (.pt) written by train, demo or the plugin's Save model"

#: What the command's own help ends with.
_MAIN_EPILOG = """\
a first run:
  napari-mutualseg demo      # the whole flow on the bundled sample, scored each round
  napari-mutualseg train image.tif --boxes boxes.csv --out cells.pt
  napari-mutualseg predict cells.pt plate1/ --out results/

'napari-mutualseg COMMAND --help' lists a command's options, with examples.

exit status: 0 done; 1 done, but a result went to another name (a warning says which) or some
images failed (run_report.csv says why); 2 a mistake, told in one line; 130 / 143 stopped by
Ctrl-C / SIGTERM, what was finished kept (the last line says how to go on)."""


class _Formatter(argparse.HelpFormatter):
    """Help wrapped to the terminal, except a text laid out in lines (the examples), which
    keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)


def _add_command(
    sub: Subparsers, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A command: ``summary`` in the command list, ``description`` and ``examples`` on its
    own help page."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}",
        formatter_class=_Formatter,
    )


class _Parser(argparse.ArgumentParser):
    """A mistake in the options is one line, as every other mistake: what is wrong, a
    close option name for a misspelt one, the commands that take an option given to another,
    and where the options are listed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The parsers of every command, by name (set by :func:`build_parser`).
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        #: The arguments given, for what :meth:`error` says of them.
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = self._taken_by_option(message)
        self.exit(2, f"error: {message}{hint} (see {self.prog} --help)\n")

    def _taken_by_option(self, message: str) -> str:
        """Where a missing positional argument went: an option of several values takes every
        name up to the next option (``train --boxes a.csv a.tif``: the image taken for a box
        table)."""
        required = "the following arguments are required:"
        if not message.startswith(required):
            return ""
        missing = {name.strip() for name in message.removeprefix(required).split(",")}
        positional = [
            a.metavar or a.dest
            for a in self._actions
            if not a.option_strings and (a.metavar or a.dest) in missing
        ]
        if not positional:
            return ""
        several = [o for a in self._actions if a.nargs == "+" for o in a.option_strings]
        given = getattr(self, "given", [])
        for k, arg in enumerate(given):
            # argparse takes a unique start of an option's name for it (--box)
            if len(arg) < 3 or not any(o.startswith(arg) for o in several):
                continue
            values = list(takewhile(lambda v: not v.startswith("-"), given[k + 1 :]))
            if len(values) > 1:
                return (
                    f"; {arg} took {' '.join(values)}, as it takes every name up to the next "
                    f"option: put {positional[0]} before {arg}"
                )
        return ""

    def options(self) -> list[str]:
        """The option strings this command takes."""
        return [o for a in self._actions for o in a.option_strings]

    def unknown(self, extra: list[str]) -> NoReturn:
        """Refuse the arguments this command does not take (``--chanel``, a second file)."""
        from difflib import get_close_matches

        command = self.prog.split()[-1]
        hints = []
        for given in (a.split("=")[0] for a in extra if a.startswith("--")):
            # an option of predict given to train (a script passing the same ones to both)
            takers = [
                name
                for name, p in self.commands.items()
                if p is not self and isinstance(p, _Parser) and given in p.options()
            ]
            close = get_close_matches(given, self.options(), n=1, cutoff=0.75)
            if takers:
                named = " and ".join(
                    [", ".join(takers[:-1]), takers[-1]] if takers[1:] else takers
                )
                hints.append(f"{given} is an option of {named}, not of {command}")
            elif close:
                hints.append(f"{given}: did you mean {close[0]}?")
        self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {h}" for h in hints))


def _pixel_size_option(text: str) -> PixelSize:
    from ..ome import PixelSize

    try:
        return PixelSize.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_training_options(
    p: argparse.ArgumentParser, rounds: int | None = None, resume: bool = False
) -> None:
    """Training options; left out, each takes the value recommended for the device.

    Their help shows those values: ``rounds`` is the command's own default round count (None:
    :class:`TrainConfig`'s); with ``resume``, the network size is the resumed model's.
    """
    from dataclasses import fields

    from ..config import DEVICE_SIZES, EXCHANGE_RULES, ExchangeSettings, TrainConfig

    default = {f.name: f.default for f in fields(TrainConfig)}

    def sized(name: str) -> str:
        gpu, cpu = DEVICE_SIZES["gpu"][name], DEVICE_SIZES["cpu"][name]
        return f"default: {gpu} on a GPU, {cpu} on the CPU"

    resumed = "; with --resume, the model's" if resume else ""
    later = ", and resumed training," if resume else ""
    rounds = default["rounds"] if rounds is None else rounds
    more = (
        "; with --resume, the rounds to train now, numbered on from the model's" if resume else ""
    )
    p.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"most rounds of training both networks and exchanging their labels; training "
        f"stops earlier when the labels stop changing (default: {rounds}{more})",
    )
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help=f"training steps per round per network ({sized('steps_per_round')})",
    )
    p.add_argument(
        "--width",
        type=int,
        metavar="N",
        help=f"U-Net channels at the first level (default: {default['width']}{resumed})",
    )
    p.add_argument(
        "--depth", type=int, metavar="N", help=f"U-Net levels ({sized('depth')}{resumed})"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"crops per training step ({sized('batch_size')})",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        metavar="PX",
        help=f"edge of the training crops, in pixels ({sized('patch_size')})",
    )
    p.add_argument(
        "--lr",
        type=float,
        metavar="RATE",
        help=f"learning rate of round 1; later rounds{later} take "
        f"{default['later_lr_factor']:g} of it (default: {default['learning_rate']:g})",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help=f"random seed of the networks' weights and of the crops; the same seed trains the "
        f"same networks on the CPU (default: {default['seed']})",
    )
    p.add_argument(
        "--exchange",
        choices=EXCHANGE_RULES,
        help="how one network's prediction becomes its peer's labels: confident passes on only "
        "what the peer is sure of and the box agrees with; literal is the rule as first "
        f"written, kept for comparison (default: {ExchangeSettings().rule})",
    )
    _add_device_option(p)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="where the networks run: auto (CUDA, then MPS, then CPU; the default), cpu, "
        "cuda, cuda:1 (the second GPU), mps",
    )


def _add_image_options(p: argparse.ArgumentParser, channels: bool = True) -> None:
    """How images are read: their axes and, for the networks, channels and RGB."""
    from ..images import RGB_MODES

    p.add_argument(
        "--axes",
        metavar="LETTERS",
        help="what each axis of the images is: letters from TCZYX in the stored order, e.g. CYX "
        "(channels), ZYX (z-stack), TYX (time series), TZCYX; needed for files that do not say, "
        "and it overrides what a file says",
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


def _add_supervise(sub: Subparsers) -> None:
    p = _add_command(
        sub,
        "supervise",
        "boxes -> ellipse supervision (class map TIFF)",
        "Write the ellipse labels of the boxes (0 background, 1 cell, 2 boundary, 255 ignore; of "
        "a stack, every plane, those without boxes all 255), to paint on in napari or Fiji "
        "and train from with train --supervision.",
        "  napari-mutualseg supervise image.tif --boxes boxes.csv --out supervision.tif\n"
        "  # painted on, then:\n"
        "  napari-mutualseg train image.tif --boxes boxes.csv --supervision supervision.tif "
        "--out cells.pt",
    )
    p.add_argument("image", metavar="IMAGE", help="the image the boxes were drawn on")
    p.add_argument("--boxes", required=True, metavar="FILE", help=f"the boxes: {BOX_FILES}")
    p.add_argument("--out", required=True, metavar="TIF", help="class map TIFF to write")
    p.add_argument(
        "--instances-out",
        metavar="TIF",
        help="also write the boxes' ellipses here as instance labels, one number per box",
    )
    p.add_argument(
        "--edge-width",
        type=int,
        default=1,
        metavar="PX",
        help="boundary thickness in pixels (default: %(default)s)",
    )
    _add_image_options(p, channels=False)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_supervise)


def _add_train(sub: Subparsers) -> None:
    p = _add_command(
        sub,
        "train",
        "train the pair of networks from boxes",
        "Train two networks that teach each other from the boxes drawn around cells, print "
        "each round (losses, labels changed, seconds) and save them as one model file. "
        "Ctrl-C or SIGTERM (a cluster's time limit) saves the last completed round and says "
        "the command that trains on from it.",
        "  napari-mutualseg train image.tif --boxes boxes.csv --out cells.pt\n"
        "  napari-mutualseg train a.tif b.tif --boxes a.csv b.csv --out cells.pt "
        "--labels-out segmented/\n"
        "  napari-mutualseg train two_channel.tif --boxes boxes.csv --channel 1 --out "
        "nuclei.pt\n"
        "  napari-mutualseg train stack.tif --axes ZYX --boxes stack.csv --out stack.pt\n"
        "  # a quick first try on a laptop: few rounds and steps\n"
        "  napari-mutualseg train image.tif --boxes boxes.csv --out try.pt --rounds 2 --steps 50\n"
        "  # two more rounds of a saved model, saved over it\n"
        "  napari-mutualseg train image.tif --boxes boxes.csv --resume cells.pt --out cells.pt "
        "--overwrite --rounds 2",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="the boxed images")
    p.add_argument(
        "--boxes",
        nargs="+",
        required=True,
        metavar="FILE",
        help=f"one box file per image ({BOX_FILES}), or one CSV with an 'image' column",
    )
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write")
    p.add_argument(
        "--supervision",
        nargs="+",
        metavar="TIF",
        help="one class map per image, as `supervise` writes it, after you painted on it (0 "
        "background, 1 cell, 2 boundary, 255 ignore): trained from as it is, every pixel that "
        "differs from the boxes' ellipse labels trusted; --boxes are the boxes it was made from",
    )
    p.add_argument(
        "--labels-out",
        metavar="FOLDER",
        help="also write each boxed image's segmentation after the last round here, as "
        "<name>_cells.tif (a stack's, one file per boxed plane: <name>_z004_cells.tif)",
    )
    p.add_argument(
        "--resume",
        metavar="MODEL.pt",
        help="train this saved model on, keeping its network size and channels",
    )
    _add_image_options(p)
    _add_training_options(p, resume=True)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_train)


def _add_predict(sub: Subparsers) -> None:
    from ..inference import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

    p = _add_command(
        sub,
        "predict",
        "segment new images with a trained model",
        "Segment every image with a trained model: per image its labels <name>_cells.tif and "
        "cell table <name>_cells.csv, then summary.csv and run_report.csv. Images whose "
        "results are complete are skipped, so the same command goes on after a stop "
        "(Ctrl-C, SIGTERM, a crash) or with new images in the folder.",
        "  napari-mutualseg predict cells.pt new1.tif new2.tif --out predictions/\n"
        "  napari-mutualseg predict cells.pt plate1/ 'plate2/**/*.tif' --out predictions/\n"
        "  napari-mutualseg predict cells.pt slide.tif --out predictions/ --out-format zarr "
        "--block-size 2048\n"
        "  napari-mutualseg predict stack.pt stack.tif --axes ZYX --out predictions/\n"
        "  napari-mutualseg predict stack.pt movie.tif --axes TYX --track --out predictions/\n"
        "  napari-mutualseg predict cells.pt plate1/ --out predictions/ --scheduler "
        "tcp://10.0.0.5:8786",
    )
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
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
        metavar="FOLDER",
        help="folder for <name>_cells.tif and <name>_cells.csv per image (the inputs' "
        "folders are kept below it), summary.csv and run_report.csv",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        metavar="PX",
        help="edge of the tiles the networks see at once, in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        metavar="PX",
        help="pixels neighbouring tiles share (default: %(default)s)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="drop smaller objects, in pixels (default: the model's training setting)",
    )
    _add_image_options(p)
    p.add_argument(
        "--no-link",
        action="store_true",
        help="z-stacks: keep each plane's labels apart instead of linking them into 3D objects",
    )
    p.add_argument(
        "--track",
        action="store_true",
        help="time series: give a cell the same label in every frame (by overlap; a cell "
        "missed in one frame keeps its label)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        metavar="PX",
        help="segment in square blocks of this edge in pixels, reading and writing one block at "
        "a time: memory then "
        "depends on the block (2048: about 1.2 GB), not on the image (default: whole images "
        "up to 4096 x 4096, blocks above)",
    )
    p.add_argument(
        "--halo",
        type=int,
        metavar="PX",
        help="margin read around each block, in pixels, wider than a cell (default: from the "
        "model)",
    )
    p.add_argument(
        "--out-format",
        choices=("tif", "zarr"),
        default="tif",
        help="labels as TIFF (held in memory, 4 bytes a pixel) or OME-Zarr "
        "(<name>_cells.ome.zarr, written block by block, a stack plane after plane, with a "
        "pyramid) (default: %(default)s)",
    )
    p.add_argument(
        "--pixel-size",
        type=_pixel_size_option,
        metavar="SIZE",
        help="pixel size written with the labels and used in the cell tables, e.g. 0.65, "
        "0.5,0.65um (y,x) or 2,0.65,0.65um (z,y,x: a stack's z step too) (default: the input "
        "file's own)",
    )
    p.add_argument(
        "--disagreement-out",
        metavar="FOLDER",
        help="also write where the two networks disagree (TIFF; a stack's plane by plane) and "
        "the cells to check (CSV, with the plane of each in a stack); whole planes only, not with "
        "--block-size or --out-format zarr",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="dask workers started on this machine (0: in this process; default: one per "
        "GPU, else one per two CPU cores, in this process when that is one); not with "
        "--scheduler, whose cluster has its own workers",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing dask cluster, e.g. tcp://10.0.0.5:8786 (dask scheduler and "
        "dask worker, or dask-jobqueue); the workers must see the input and output folders",
    )
    _add_device_option(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every image again and replace its outputs (default: images whose "
        "outputs are complete are skipped)",
    )
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub: Subparsers) -> None:
    p = _add_command(
        sub,
        "evaluate",
        "compare an instance label image with ground truth",
        "Score a segmentation against ground truth, both instance labels (one number per "
        "cell): F1 and average precision at IoU 0.5, AP at 0.75, mAP over IoU 0.5 to 0.95, "
        "aggregated Jaccard index and Dice.",
        "  napari-mutualseg evaluate predictions/new1_cells.tif new1_truth.tif\n"
        "  napari-mutualseg evaluate predictions/new1_cells.tif new1_truth.tif --json",
    )
    p.add_argument(
        "pred", metavar="LABELS", help="the segmentation: an instance label image (0 background)"
    )
    p.add_argument(
        "gt", metavar="TRUTH", help="the ground truth: an instance label image of the same size"
    )
    p.add_argument(
        "--axes",
        metavar="LETTERS",
        help="what each axis of both images is, for files that do not say: ZYX (a z-stack: "
        "cells scored as 3D objects) or TYX (a time series: scored frame by frame)",
    )
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_evaluate)


def _add_info(sub: Subparsers) -> None:
    p = _add_command(
        sub,
        "info",
        "what a model file holds (input, networks, training), or how an image file is read "
        "(axes, channels, pixel size)",
        "Say what a model file holds (the input it takes, its networks, how it was trained), "
        "or how every command reads an image file (axes, sizes, channel names, pixel size) "
        "and what the file leaves unsaid, before a long training or batch run.",
        "  napari-mutualseg info cells.pt\n"
        "  napari-mutualseg info stack.tif\n"
        "  napari-mutualseg info stack.tif --axes ZYX   # how it reads with these axes\n"
        "  napari-mutualseg info cells.pt --json",
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help=f"{_MODEL_HELP}, or an image file or OME-Zarr to see how it is read",
    )
    _add_image_options(p, channels=False)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_info)


def _add_demo(sub: Subparsers) -> None:
    p = _add_command(
        sub,
        "demo",
        "the whole flow on the bundled BBBC039 sample",
        "Boxes -> supervision -> mutual training -> segmentation on the bundled BBBC039 "
        "nuclei sample, scored against its ground truth each round (F1@0.5, mAP, AJI); writes "
        "an overlay, the scores and the model.",
        "  napari-mutualseg demo\n"
        "  napari-mutualseg demo --rounds 1 --steps 20   # a quick look\n"
        "  napari-mutualseg demo --device cpu --out demo_cpu/",
    )
    p.add_argument(
        "--out",
        default="demo_output",
        metavar="FOLDER",
        help="folder for overlay.png, metrics.json and model.pt (default: %(default)s)",
    )
    _add_training_options(p, rounds=DEMO_ROUNDS)
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo output")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-mutualseg`` command.

    Returns
    -------
    argparse.ArgumentParser
        Its parsed arguments name the subcommand's function as ``func``, which takes them and
        returns the exit status, and its parser as ``parser``. A mistake in the options
        exits with status 2 and one line.
    """
    parser = _Parser(
        prog="napari-mutualseg",
        description="Cell segmentation from boxes: two networks that teach each other.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_supervise, _add_train, _add_predict, _add_evaluate, _add_info, _add_demo):
        add(sub)
    for command in sub.choices.values():
        command.set_defaults(parser=command)  # whose options an unknown argument is told of
        command.commands = sub.choices
    return parser
