"""Settings of the mutual-learning engine: what a user sets, and the exchange's research switches.

:class:`TrainConfig` holds the settings a user needs (how long to train, how big the networks
are, where to compute). How one network's prediction becomes its peer's labels is a nested
:class:`ExchangeSettings`: the rule, its thresholds and the switches the validation ablation
measured (``benchmarks/results/ablation_val.md``); their defaults are the recommended ones.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .checkpoint import ARCH_LIMITS
from .devices import select_device
from .images import RGB_MODES, parse_channels
from .inference import DEFAULT_TILE_SIZE, MIN_TILE_SIZE
from .preprocess import DEFAULT_PERCENTILES

__all__ = [
    "DEVICE_SIZES",
    "EXCHANGE_RULES",
    "PAIR_INPUT_SETTINGS",
    "ExchangeSettings",
    "TrainConfig",
]

#: How predictions become the peer's labels (see :mod:`napari_mutualseg.exchange`).
EXCHANGE_RULES = ("confident", "literal")

#: The settings that decide what a network sees: a resumed pair keeps its own unless they are
#: given (see :class:`~napari_mutualseg.training.MutualTrainer`).
PAIR_INPUT_SETTINGS = ("percentiles", "channels", "rgb")

#: Seeds go to torch and NumPy (B's is ``seed + 1``): the usual 32-bit range, which both take.
_MAX_SEED = 2**32 - 1

#: The sizes recommended for a GPU and for a CPU, where a :class:`TrainConfig` leaves them out.
#: On a CPU, smaller crops, smaller batches and a shallower network keep a round to about half
#: a minute per 520 x 696 image on two cores (the bundled sample reaches a per-box mAP above
#: 0.8 with them in four rounds).
DEVICE_SIZES = {
    "gpu": {"steps_per_round": 200, "batch_size": 8, "patch_size": 256, "depth": 4},
    "cpu": {"steps_per_round": 100, "batch_size": 4, "patch_size": 128, "depth": 3},
}

#: Whole-number settings and the least value of each (the network's size: :data:`ARCH_LIMITS`).
_COUNTS = {"rounds": 1, "steps_per_round": 1, "batch_size": 1, "patch_size": 1, "min_size": 0}


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_whole(
    obj: Any, name: str, low: int, high: int | None, problems: list[str], hint: str = ""
) -> bool:
    """Note a problem unless ``obj.name`` is a whole number in ``[low, high]``; whether it is."""
    value = getattr(obj, name)
    if _is_whole(value) and low <= value and (high is None or value <= high):
        return True
    allowed = f"of at least {low}" if high is None else f"from {low} to {high}"
    problems.append(f"{name} must be a whole number {allowed}{hint}, got {value!r}")
    return False


def _check_range(
    obj: Any,
    name: str,
    interval: str,
    problems: list[str],
    hint: str = "",
) -> None:
    """Note a problem unless ``obj.name`` is a number in ``interval``, such as ``"(0, 1]"``."""
    value = getattr(obj, name)
    low, high = (float(x) for x in interval[1:-1].split(","))
    if _is_number(value):
        above = low < value if interval[0] == "(" else low <= value
        below = value < high if interval[-1] == ")" else value <= high
        if above and below:
            return
    problems.append(f"{name} must be a number in {interval}{hint}, got {value!r}")


def _check_switch(obj: Any, name: str, problems: list[str]) -> None:
    """Note a problem unless ``obj.name`` is True or False (NumPy's, or 0 and 1, too)."""
    value = getattr(obj, name)
    if not (isinstance(value, bool | np.bool_) or (_is_whole(value) and value in (0, 1))):
        problems.append(f"{name} must be True or False, got {value!r}")


def _check_fraction(obj: Any, names: tuple[str, ...], problems: list[str]) -> None:
    for name in names:
        _check_range(obj, name, "(0, 1]", problems)


def _unknown_settings(owner: str, unknown: Iterable[str], known: list[str]) -> str:
    """Settings that ``owner`` does not have, each with the one it most likely meant."""
    parts = []
    for name in unknown:
        name = str(name)
        # a setting's first word ("steps" for steps_per_round) or a slip of the keyboard
        close = [k for k in known if k.startswith(name)] or difflib.get_close_matches(
            name, known, n=1
        )
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        if not close and owner == "TrainConfig" and name in _EXCHANGE_FIELDS:
            guess = f" (it is an exchange setting: exchange={{{name!r}: ...}})"
        parts.append(f"{name!r}{guess}")
    return f"{owner} has no setting {', '.join(parts)}; its settings are {', '.join(known)}"


def _refuse_unknown(cls: type) -> type:
    """Make a misspelled keyword of ``cls(...)`` name the setting it most likely meant,
    where the dataclass's own error says only that the keyword is unexpected."""
    init = cls.__init__
    known = [f.name for f in fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise TypeError(_unknown_settings(cls.__name__, unknown, known) + ".")
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_refuse_unknown
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
        Foreground is P(cell) + P(boundary) above this (in ``(0, 1)``).
    confidence : float
        Least top probability of a pixel that is passed on.
    min_core_fraction, leak_fraction : float
        A box falls back to its round-1 label when its object is smaller than this fraction
        of its core (in ``[0, 1]``; 0: never for being small), or covers more than this
        fraction of its box (in ``(0, 1]``; 1: never for leaking).
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
        """What is wrong with these settings.

        Returns
        -------
        list of str
            One phrase per problem, each naming the setting, its range and the value given;
            empty when the settings are valid.
        """
        problems = []
        if self.rule not in EXCHANGE_RULES:
            problems.append(
                f"exchange rule must be one of {', '.join(EXCHANGE_RULES)}, got {self.rule!r}"
            )
        if self.teacher not in ("peer", "self"):
            problems.append(f"teacher must be 'peer' or 'self', got {self.teacher!r}")
        _check_fraction(self, ("core_scale", "confidence"), problems)
        # cell and boundary together are never more probable than 1: nothing would be cell
        _check_range(self, "fg_threshold", "(0, 1)", problems)
        _check_range(self, "min_core_fraction", "[0, 1]", problems)
        _check_fraction(self, ("leak_fraction",), problems)
        _check_range(self, "ema", "[0, 1)", problems, " (0 turns it off; 0.99 is typical)")
        # B is saved like A: its width must be one the model file accepts
        if not (_is_whole(self.width_b) and self.width_b == 0):
            _check_whole(
                self, "width_b", *ARCH_LIMITS["width"], problems, " (or 0: the same as width)"
            )
        for name in _EXCHANGE_SWITCHES:
            _check_switch(self, name, problems)
        if not problems:
            # a box passes on an object of at least min_core_fraction of its core, which
            # covers pi / 4 * core_scale**2 of the box: above leak_fraction none ever could
            least = self.min_core_fraction * math.pi / 4 * self.core_scale**2
            if least > self.leak_fraction:
                problems.append(
                    f"leak_fraction {self.leak_fraction:g} is below the least object a box "
                    f"passes on ({least:.2g} of its box: min_core_fraction "
                    f"{self.min_core_fraction:g} of a core of core_scale {self.core_scale:g}), "
                    "so every box would keep its round-1 label; raise leak_fraction or lower "
                    "min_core_fraction or core_scale"
                )
        return problems

    def _plain(self) -> None:
        """Hold every setting as a plain Python value, once they are known to be valid.

        The settings go into model files, which hold no NumPy objects: a NumPy number left
        here would make a model that trains and saves but never loads again.
        """
        for name in _EXCHANGE_NUMBERS:
            setattr(self, name, float(getattr(self, name)))
        for name in _EXCHANGE_SWITCHES:
            setattr(self, name, bool(getattr(self, name)))
        self.width_b = int(self.width_b)


#: The numbers and the switches of an :class:`ExchangeSettings`.
_EXCHANGE_NUMBERS = (
    "core_scale",
    "fg_threshold",
    "confidence",
    "min_core_fraction",
    "leak_fraction",
    "ema",
)
_EXCHANGE_SWITCHES = ("ellipse_background", "agreement", "flip_labels")

#: The settings of an :class:`ExchangeSettings`.
_EXCHANGE_FIELDS = [f.name for f in fields(ExchangeSettings)]

#: Keys of an :class:`ExchangeSettings` that older model files stored flat in their settings.
_FLAT_EXCHANGE_KEYS = set(_EXCHANGE_FIELDS) - {"rule"}


@_refuse_unknown
@dataclass
class TrainConfig:
    """Settings of the mutual-learning engine; the defaults are the recommended ones.

    Attributes
    ----------
    rounds : int
        Maximum number of rounds (training stops earlier when labels stop changing).
    steps_per_round : int, optional
        Optimiser steps per network per round.
    batch_size, patch_size : int, optional
        Random crops per step and their edge in pixels (at most that of the largest training
        plane: more would be padding).
    width : int
        U-Net channels at the first level (both networks).
    depth : int, optional
        Number of U-Net levels (both networks).
    learning_rate : float
        Adam learning rate of round 1.
    later_lr_factor : float
        Learning rate of later rounds (and of resumed training) relative to round 1.
    seed : int
        Seeds weights (A uses ``seed``, B ``seed + 1``) and sampling; reproducible on the CPU.
        From 0 to 2**32 - 1.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device (a ``torch.device`` is
        held as its name).
    min_change : float
        Stop when fewer than this fraction of labelled pixels change class between rounds.
    min_size : int
        Smallest object kept in instance maps, in pixels.
    tile_size : int
        Tile edge for whole-image prediction.
    percentiles : tuple of float, optional
        Intensity percentiles mapped to 0 and 1 (in every channel), ``0 <= low < high <=
        100``; left out: ``(1, 99.8)``.
    channels : tuple of int or str, optional
        The image channels the networks take, by index or name, in order (``None``: every
        channel). Stored in the model file: prediction picks the same channels.
    rgb : {"channels", "gray"}, optional
        How RGB images become network input: their three colours as channels (the default),
        or one gray channel. Stored in the model file.
    parallel : bool
        On CUDA, train A and B at once in two threads with a CUDA stream each.
    exchange : ExchangeSettings
        How predictions become the peer's labels, and the research switches.

    Notes
    -----
    ``steps_per_round``, ``batch_size``, ``patch_size`` and ``depth`` left out are those
    recommended for ``device`` (:data:`DEVICE_SIZES`): ``TrainConfig(rounds=3)`` trains a
    CPU-sized pair on a laptop and a GPU-sized one on a GPU workstation.

    ``percentiles``, ``channels`` and ``rgb`` decide what the networks see. When training
    resumes from a pair, those left out (``None``) are the pair's, so the networks keep seeing
    what they were trained on; :attr:`unset` says which were left out. After construction
    every setting holds its value: ``TrainConfig().percentiles`` is ``(1.0, 99.8)``.
    """

    rounds: int = 5
    steps_per_round: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    width: int = 16
    depth: int | None = None
    learning_rate: float = 1e-3
    later_lr_factor: float = 0.5
    seed: int = 0
    device: str = "auto"
    min_change: float = 0.005
    min_size: int = 16
    tile_size: int = DEFAULT_TILE_SIZE
    percentiles: tuple[float, float] | None = None
    channels: tuple[int | str, ...] | None = None
    rgb: str | None = None
    parallel: bool = True
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)

    def __post_init__(self) -> None:
        problems = self._device_problems()
        unsized = [n for n in DEVICE_SIZES["gpu"] if getattr(self, n) is None]
        if unsized:
            # a device given wrongly is refused below; the sizes only need some value
            cpu = bool(problems) or select_device(self.device).type == "cpu"
            for name in unsized:
                setattr(self, name, DEVICE_SIZES["cpu" if cpu else "gpu"][name])
        self._unset = frozenset(n for n in PAIR_INPUT_SETTINGS if getattr(self, n) is None)
        if self.rgb is None:
            self.rgb = "channels"
        self.channels = parse_channels(self.channels)
        problems += self._percentile_problems()
        counted = {n: _check_whole(self, n, least, None, problems) for n, least in _COUNTS.items()}
        _check_whole(self, "tile_size", MIN_TILE_SIZE, None, problems)
        # a network larger than the model file accepts would train, then never load again
        arch = [_check_whole(self, n, *ARCH_LIMITS[n], problems) for n in ("width", "depth")]
        if all(arch) and counted["patch_size"] and self.patch_size < 2**self.depth:
            problems.append(
                f"patch_size must be at least {2**self.depth} for depth {self.depth}, got "
                f"{self.patch_size}"
            )
        _check_whole(self, "seed", 0, _MAX_SEED, problems)
        _check_range(self, "learning_rate", "(0, 1)", problems, " (1e-3 is a good start)")
        _check_fraction(self, ("later_lr_factor",), problems)
        _check_range(self, "min_change", "[0, 1]", problems, " (a fraction of the labels)")
        if self.rgb not in RGB_MODES:
            problems.append(f"rgb must be one of {', '.join(RGB_MODES)}, got {self.rgb!r}")
        _check_switch(self, "parallel", problems)
        problems += self._exchange_problems()
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")
        # plain numbers (not NumPy's) in the settings stored in model files and JSON
        for name in [*_COUNTS, "width", "depth", "tile_size", "seed"]:
            setattr(self, name, int(getattr(self, name)))
        for name in ("learning_rate", "later_lr_factor", "min_change"):
            setattr(self, name, float(getattr(self, name)))
        self.parallel = bool(self.parallel)
        self.exchange._plain()

    def _device_problems(self) -> list[str]:
        """Check that ``device`` is given as text (or a ``torch.device``) and hold it as text
        (``None`` as "auto").

        Whether this machine has it is checked where it is used: a model file's settings
        name the device it was trained on, which another machine may lack.
        """
        if self.device is None:
            self.device = "auto"
        if isinstance(self.device, str | torch.device):
            # model files hold text, not torch.device objects
            self.device = str(self.device)
            return []
        return [
            f"device must be text such as 'auto', 'cpu' or 'cuda:0' (or a torch.device), got "
            f"{self.device!r}"
        ]

    def _percentile_problems(self) -> list[str]:
        """Check ``percentiles`` (the default when left out) and store them as floats."""
        given = self.percentiles
        if given is None:
            self.percentiles = DEFAULT_PERCENTILES
            return []
        values = tuple(given) if isinstance(given, Iterable) and not isinstance(given, str) else ()
        if len(values) == 2 and all(_is_number(v) for v in values):
            self.percentiles = (float(values[0]), float(values[1]))
            if 0 <= values[0] < values[1] <= 100:
                return []
        return [
            "percentiles must be two numbers (low, high) with 0 <= low < high <= 100, got "
            f"{given!r}"
        ]

    def _exchange_problems(self) -> list[str]:
        """Check ``exchange`` (a dict of its settings becomes :class:`ExchangeSettings`)."""
        if isinstance(self.exchange, dict):
            unknown = sorted(set(self.exchange) - set(_EXCHANGE_FIELDS), key=str)
            if unknown:
                return [_unknown_settings("exchange", unknown, _EXCHANGE_FIELDS)]
            self.exchange = ExchangeSettings(**self.exchange)
        if not isinstance(self.exchange, ExchangeSettings):
            return [
                "exchange must be an ExchangeSettings (or a dict of its settings), got "
                f"{self.exchange!r}; for a rule alone give ExchangeSettings(rule=...)"
            ]
        return self.exchange.problems()

    @property
    def unset(self) -> frozenset[str]:
        """The input settings (``percentiles``, ``channels``, ``rgb``) left out, as ``None``.

        A pair that training resumes from keeps its own values for these.
        """
        return self._unset

    @classmethod
    def recommended(cls, device: str | torch.device = "auto", **overrides: Any) -> TrainConfig:
        """The recommended settings for ``device`` (:data:`DEVICE_SIZES`), with ``overrides``.

        Parameters
        ----------
        device : str or torch.device
            ``"auto"`` or an explicit device; decides which recommendation applies.
        **overrides
            Settings that replace the recommended ones.
        """
        return cls(**{"device": str(device), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (stored in model files).

        Returns
        -------
        dict
            Every setting, ``exchange`` as a dict of its own; :meth:`from_dict` reads it back.
        """
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["channels"] = None if self.channels is None else list(self.channels)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Settings from :meth:`to_dict` output, also as older versions stored them.

        Unknown keys (from newer versions, or switches since removed) are ignored.

        Parameters
        ----------
        values : dict
            Settings by name, such as a model file's (``ModelPair.settings``).

        Returns
        -------
        TrainConfig

        Raises
        ------
        ValueError
            When a known setting is out of range.
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
