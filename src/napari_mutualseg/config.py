"""Settings of the mutual-learning engine: what a user sets, and the exchange's research switches.

:class:`TrainConfig` holds the settings a user needs (how long to train, how big the networks
are, where to compute). How one network's prediction becomes its peer's labels is a nested
:class:`ExchangeSettings`: the rule, its thresholds and the switches the validation ablation
measured (``benchmarks/results/ablation_val.md``); their defaults are the recommended ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .devices import select_device
from .images import RGB_MODES, parse_channels
from .inference import DEFAULT_TILE_SIZE, MIN_TILE_SIZE
from .preprocess import DEFAULT_PERCENTILES

__all__ = ["EXCHANGE_RULES", "ExchangeSettings", "TrainConfig"]

#: How predictions become the peer's labels (see :mod:`napari_mutualseg.exchange`).
EXCHANGE_RULES = ("confident", "literal")


def _check_fraction(obj: Any, names: tuple[str, ...], problems: list[str]) -> None:
    for name in names:
        if not 0 < getattr(obj, name) <= 1:
            problems.append(f"{name} must be in (0, 1]")


@dataclass
class ExchangeSettings:
    """How a network's prediction becomes its peer's next training labels.

    Attributes
    ----------
    rule : {"confident", "literal"}
        ``"confident"`` passes on only what the peer is sure of and the box agrees with;
        ``"literal"`` is the rule as first written (kept for comparison).
    teacher : {"peer", "self"}
        ``"peer"`` is mutual learning (A learns from B and B from A); ``"self"`` makes each
        network learn from its own prediction (self-training, for comparison).
    core_scale : float
        Trusted core of each ellipse, relative to its axes.
    fg_threshold : float
        Foreground is P(cell) + P(boundary) above this.
    confidence : float
        Least top probability of a pixel that is passed on.
    min_core_fraction, leak_fraction : float
        A box falls back to its round-1 label when its object is smaller than this fraction
        of its core, or covers more than this fraction of its box.
    ellipse_background : bool
        Pass on the peer's confident background inside a box's ellipse.
    agreement : bool
        Mutual learning only: inside the boxes, pass on only the pixels where A and B predict
        the same class.
    flip_labels : bool
        Average each prediction over flips before it becomes labels (four times the cost).
    ema : float
        Decay of a moving average of each network's weights (0: off). When on, the averaged
        weights make the peer's labels, the predictions shown and the trained pair.
    width_b : int
        First-level channels of network B when it should differ from A (0: the same).

    Notes
    -----
    The switches after ``leak_fraction`` are off by default: none gained beyond seed-to-seed
    noise in the ablation. Soft targets and object edges as boundary, which lost clearly
    (new-image mAP -0.19 and -0.09), were removed.
    """

    rule: str = "confident"
    teacher: str = "peer"
    core_scale: float = 0.5
    fg_threshold: float = 0.5
    confidence: float = 0.6
    min_core_fraction: float = 0.5
    leak_fraction: float = 0.95
    ellipse_background: bool = True
    agreement: bool = False
    flip_labels: bool = False
    ema: float = 0.0
    width_b: int = 0

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when they are valid)."""
        problems = []
        if self.rule not in EXCHANGE_RULES:
            problems.append(f"exchange rule must be one of {', '.join(EXCHANGE_RULES)}")
        if self.teacher not in ("peer", "self"):
            problems.append("teacher must be 'peer' or 'self'")
        _check_fraction(self, ("core_scale", "fg_threshold", "confidence"), problems)
        if not 0 <= self.ema < 1:
            problems.append("ema must be in [0, 1) (0 turns it off; 0.99 is typical)")
        if self.width_b < 0:
            problems.append("width_b must be 0 (same as width) or positive")
        return problems


#: Keys of an :class:`ExchangeSettings` that older model files stored flat in their settings.
_FLAT_EXCHANGE_KEYS = {f.name for f in fields(ExchangeSettings)} - {"rule"}


@dataclass
class TrainConfig:
    """Settings of the mutual-learning engine; the defaults are the recommended ones.

    Attributes
    ----------
    rounds : int
        Maximum number of rounds (training stops earlier when labels stop changing).
    steps_per_round : int
        Optimiser steps per network per round.
    batch_size, patch_size : int
        Random crops per step and their edge in pixels.
    width, depth : int
        U-Net channels at the first level and number of levels (both networks).
    learning_rate : float
        Adam learning rate of round 1.
    later_lr_factor : float
        Learning rate of later rounds (and of resumed training) relative to round 1.
    seed : int
        Seeds weights (A uses ``seed``, B ``seed + 1``) and sampling; reproducible on the CPU.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device.
    min_change : float
        Stop when fewer than this fraction of labelled pixels change class between rounds.
    min_size : int
        Smallest object kept in instance maps, in pixels.
    tile_size : int
        Tile edge for whole-image prediction.
    percentiles : tuple of float
        Intensity percentiles mapped to 0 and 1 (in every channel).
    channels : tuple of int or str, optional
        The image channels the networks take, by index or name, in order (``None``: every
        channel). Stored in the model file: prediction picks the same channels.
    rgb : {"channels", "gray"}
        How RGB images become network input: their three colours as channels, or one gray
        channel. Stored in the model file.
    parallel : bool
        On CUDA, train A and B at once in two threads with a CUDA stream each.
    exchange : ExchangeSettings
        How predictions become the peer's labels, and the research switches.
    """

    rounds: int = 5
    steps_per_round: int = 200
    batch_size: int = 8
    patch_size: int = 256
    width: int = 16
    depth: int = 4
    learning_rate: float = 1e-3
    later_lr_factor: float = 0.5
    seed: int = 0
    device: str = "auto"
    min_change: float = 0.005
    min_size: int = 16
    tile_size: int = DEFAULT_TILE_SIZE
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    channels: tuple[int | str, ...] | None = None
    rgb: str = "channels"
    parallel: bool = True
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)

    def __post_init__(self) -> None:
        self.percentiles = tuple(float(p) for p in self.percentiles)
        self.channels = parse_channels(self.channels)
        if isinstance(self.exchange, dict):
            self.exchange = ExchangeSettings(**self.exchange)
        problems = []
        for name in ("rounds", "steps_per_round", "batch_size", "width", "depth"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1")
        if self.tile_size < MIN_TILE_SIZE:
            problems.append(f"tile_size must be at least {MIN_TILE_SIZE}")
        if self.min_size < 0:
            problems.append("min_size must be 0 or more")
        if self.patch_size < 2 ** (self.depth - 1) * 2:
            problems.append(f"patch_size must be at least {2**self.depth} for depth {self.depth}")
        if not (0 < self.learning_rate < 1) or not math.isfinite(self.learning_rate):
            problems.append("learning_rate must be between 0 and 1 (1e-3 is a good start)")
        _check_fraction(self, ("later_lr_factor",), problems)
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append("percentiles must be two increasing values in [0, 100]")
        if self.rgb not in RGB_MODES:
            problems.append(f"rgb must be one of {', '.join(RGB_MODES)}")
        problems += self.exchange.problems()
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    @classmethod
    def recommended(cls, device: str | torch.device = "auto", **overrides: Any) -> TrainConfig:
        """The recommended settings for ``device``.

        On a GPU these are the class defaults. On a CPU, smaller crops, smaller batches and a
        shallower network keep a round to about half a minute per 520 x 696 image on two cores
        (the bundled sample reaches a per-box mAP above 0.8 with them in four rounds).

        Parameters
        ----------
        device : str or torch.device
            ``"auto"`` or an explicit device; decides which recommendation applies.
        **overrides
            Settings that replace the recommended ones.
        """
        light = {"batch_size": 4, "patch_size": 128, "depth": 3, "steps_per_round": 100}
        base = light if select_device(device).type == "cpu" else {}
        return cls(**{**base, "device": str(device), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (stored in model files)."""
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["channels"] = None if self.channels is None else list(self.channels)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Settings from :meth:`to_dict` output, also as older versions stored them.

        Unknown keys (from newer versions, or switches since removed) are ignored.
        """
        values = dict(values)
        exchange = values.get("exchange", {})
        if not isinstance(exchange, dict):
            exchange = {"rule": exchange}
        # older files stored the rule by name and its settings flat beside it
        exchange = {**{k: values[k] for k in _FLAT_EXCHANGE_KEYS if k in values}, **exchange}
        known_exchange = {f.name for f in fields(ExchangeSettings)}
        values["exchange"] = {k: v for k, v in exchange.items() if k in known_exchange}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
