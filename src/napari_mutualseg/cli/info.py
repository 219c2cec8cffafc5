"""``info``: what a model file holds, for the person about to use it or pass it on, and how an
image file is read (its axes, channels, pixel size and frame interval), before it is trained on
or segmented."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .inputs import check_found


def model_card(path: str) -> dict[str, Any]:
    """What the model file at ``path`` says about itself, as plain values.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    napari_mutualseg.checkpoint.CheckpointError
        If it is not a usable model (the message says why).
    """
    from ..blockwise import default_halo
    from ..config import TrainConfig
    from ..models import ModelPair

    pair, payload = ModelPair.read(path)
    history = pair.history
    settings = pair.settings
    return {
        "file": str(path),
        "package_version": payload.get("package_version"),
        "format_version": payload.get("format_version"),
        "fingerprint": pair.fingerprint(),
        "input": pair.describe_input(),
        "channels": settings.get("channels"),
        "channel_names": None if pair.channel_names is None else list(pair.channel_names),
        "rgb": settings.get("rgb"),
        "percentiles": list(pair.percentiles),
        "networks": {
            name: {
                **{k: model.arch[k] for k in ("width", "depth", "in_channels")},
                "parameters": sum(p.numel() for p in model.parameters()),
            }
            for name, model in (("a", pair.model_a), ("b", pair.model_b))
        },
        "rounds_trained": len(history),
        "trained_on": sorted({str(h["device"]) for h in history if "device" in h}),
        "training_seconds": round(sum(float(h.get("seconds", 0)) for h in history), 1),
        "last_losses": (
            None if not history else [history[-1].get("loss_a"), history[-1].get("loss_b")]
        ),
        "cell_size": pair.cell_size,
        "pixel_size": pair.pixel_size,
        "halo": default_halo(pair.cell_size),
        # what segmenting keeps unless told otherwise, and part of the fingerprint
        "min_size": int(settings.get("min_size", TrainConfig.min_size)),
        "settings": settings,
    }


def _text(card: dict[str, Any]) -> str:
    from ..blockwise import AUTO_BLOCKWISE_PIXELS

    nets = card["networks"]
    s = card["settings"]
    shapes = [
        f"width {net['width']} and depth {net['depth']}, {net['parameters']:,} parameters"
        for net in nets.values()
    ]
    same = shapes[0] == shapes[1]
    written = card["package_version"]
    written = f"version {written}" if written else "an unrecorded release"
    lines = [
        f"{card['file']}: napari-mutualseg model (written by {written}, format "
        f"{card['format_version']})",
        f"input: {card['input']}; intensities scaled between percentiles "
        f"{card['percentiles'][0]:g} and {card['percentiles'][1]:g} of each image",
        f"networks: A and B, U-Nets of {shapes[0]} each"
        if same
        else f"networks: A, a U-Net of {shapes[0]}; B, a U-Net of {shapes[1]}",
    ]
    if card["rounds_trained"]:
        loss_a, loss_b = card["last_losses"]
        where = ", ".join(card["trained_on"]) or "an unrecorded device"
        lines.append(
            f"trained: {card['rounds_trained']} round(s) on {where}, "
            f"{card['training_seconds']:g} s; last losses A {loss_a:.4f}, B {loss_b:.4f}"
        )
    else:
        lines.append("trained: no round recorded")
    keys = ("rounds", "steps_per_round", "batch_size", "patch_size", "learning_rate", "seed")
    given = [f"{k} {s[k]}" for k in keys if k in s]
    exchange = s.get("exchange")
    if isinstance(exchange, dict) and "rule" in exchange:
        given.append(f"exchange {exchange['rule']}")
    lines.append(f"settings: {', '.join(given)}")
    if card["cell_size"]:
        side = math.isqrt(AUTO_BLOCKWISE_PIXELS)
        lines.append(
            f"cells: up to {card['cell_size']:g} px across in training; images above {side} x "
            f"{side} px (or with --block-size) are segmented block by block with a margin of "
            f"{card['halo']} px"
        )
    if card["pixel_size"]:
        lines.append(
            f"pixels: {card['pixel_size']:g} µm in training; images of other pixels are warned of"
        )
    lines.append(
        f"smallest cell kept: {card['min_size']} px (unless predict is given another with "
        "--min-size)"
    )
    lines.append(f"fingerprint: {card['fingerprint']} (in the record of every result it makes)")
    return "\n".join(lines)


def image_card(path: str, axes: str | None = None) -> dict[str, Any]:
    """How the image file at ``path`` is read, as plain values: what every command and the
    plugin take from it (axes, sizes, channels, pixel size in ``unit``, a time series' frame
    interval in seconds) and the notes on what the file did not say.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file cannot be read, or its axes are not known and ``axes`` is not given.
    """
    import numpy as np

    from ..images import AxisImage
    from ..io import written_as

    image = AxisImage.from_file(path, axes=axes)
    return {
        "file": str(path),
        # labels, a supervision or a disagreement map this package wrote: no image to segment
        "written_as": written_as(path),
        "axes": image.axes,
        "sizes": {a: int(n) for a, n in zip(image.axes, image.data.shape, strict=True)},
        "dtype": str(image.data.dtype),
        "channel_names": None if image.channel_names is None else list(image.channel_names),
        "rgb": image.rgb,
        "pixel_size": {a: v for a, v in image.pixel_size.items() if a in "ZYX"},
        "unit": image.unit,
        "frame_interval_s": image.frame_interval,
        "read_lazily": not isinstance(image.data, np.ndarray),
        "notes": list(image.notes),
        "description": image.describe(),
    }


def _image_text(card: dict[str, Any]) -> str:
    from ..io import LABEL_KIND_WORDS

    how = "read plane by plane" if card["read_lazily"] else "read whole"
    lines = [card["description"], f"pixels: {card['dtype']}, {how}"]
    if card["written_as"]:
        lines.append(
            f"holds: {LABEL_KIND_WORDS[card['written_as']]}, not a microscope image, as its file "
            "says (predict leaves it out of the folders it searches)"
        )
    if not card["pixel_size"]:
        lines.append(
            "pixel size: none in the file (tables are in pixels; predict --pixel-size gives one)"
        )
    if "T" in card["axes"] and card["frame_interval_s"] is None:
        lines.append("frame interval: none in the file (tables give each cell's frame, t)")
    lines += [f"note: {note}" for note in card["notes"]]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``info``: print what a model file holds, or how an image file is read; the exit
    status."""
    from ..io import is_image_name

    check_found([args.file], "Image file" if is_image_name(args.file) else "Model file")
    if is_image_name(args.file):
        card = image_card(args.file, args.axes)
        text = _image_text(card)
    else:
        card = model_card(args.file)
        text = _text(card)
        if args.axes is not None:
            print(
                f"warning: --axes {args.axes} did nothing: {args.file} is a model, which "
                "takes the axes of each image it segments (give --axes to predict).",
                file=sys.stderr,
            )
    print(json.dumps(card, indent=2) if args.json else text)
    return 0
