"""The mutual-learning engine: two networks, each learning from the other's predictions.

Round 1 trains both networks on the labels made from the boxes. After round n, network A's
prediction, combined with the box labels, becomes B's training label for round n + 1, and B's
prediction becomes A's; neither ever learns from itself. The engine is an iterator that yields
one :class:`RoundReport` per round and can be cancelled from another thread: it stops before
the next training step or prediction pass, keeps the networks of the last reported round, and
reports nothing more.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from .checkpoint import ARCH_LIMITS
from .config import ExchangeSettings, TrainConfig
from .devices import describe_device, select_device
from .disagreement import disagreement_map
from .exchange import (
    ExchangeContext,
    changed_fraction,
    exchange_labels,
    found_fraction,
    top_class,
)
from .images import as_images, parse_channels
from .inference import per_box_instances, predict_proba
from .models import ModelPair
from .network_input import network_planes, warn_if_labels
from .stepping import (
    Cancelled,
    CudaStreams,
    NetworkTrainer,
    PatchSampler,
    TrainingError,
    guard_memory,
    train_round,
)
from .supervision import BACKGROUND, IGNORE, Supervision, check_class_map
from .unet import N_CLASSES, UNet, build_unet

T = TypeVar("T")

#: Planes from this many pixels on are predicted between rounds only where they are labelled
#: (:attr:`MutualTrainer.windows`); a smaller plane's whole prediction takes a few seconds.
WINDOW_MIN_PIXELS = 2048 * 2048

__all__ = ["ExchangeSettings", "MutualTrainer", "RoundReport", "TrainConfig", "TrainingError"]


@dataclass
class RoundReport:
    """What one round produced, one entry per training image in every list.

    ``round`` counts the rounds of this run, 1 to ``rounds``; a resumed pair's history goes
    on from its saved rounds (round 1 of a run resumed after 2 is the pair's third).
    ``classes_*`` are each network's class maps (argmax); ``instances``, the cells of the
    ensemble of both, are read box by box (one object per box, see
    :func:`~napari_mutualseg.inference.per_box_instances`); ``labels_a`` / ``labels_b`` are
    what A / B learn from in the next round (from B's / A's prediction); ``probabilities``
    is the ensemble softmax and ``disagreement`` where A and B disagree (float16 in
    ``[0, 1]``, see :func:`~napari_mutualseg.disagreement.disagreement_map`); ``changed`` is
    the fraction of labelled pixels whose class changed since the labels of this round (the
    pixels of all images counted together, the mean of A's and B's labels);
    ``found`` the fraction of boxes in which the ensemble found its cell (a round only counts
    as converged when most boxes have theirs).

    Every array covers its whole image. Where a large image is annotated in part (a region,
    or corrected cells with the rest ignored) the networks predict between rounds only the
    labelled part and a margin around it (:attr:`MutualTrainer.windows`): outside it, the
    class maps, instances, probabilities and disagreement are 0 and the labels ignore (255),
    except in the round that ends training (the last, or one that converged), which is
    predicted whole.
    """

    round: int
    rounds: int
    loss_a: float
    loss_b: float
    classes_a: list[np.ndarray]
    classes_b: list[np.ndarray]
    instances: list[np.ndarray]
    labels_a: list[np.ndarray]
    labels_b: list[np.ndarray]
    changed: float
    seconds: float
    device: str
    converged: bool = False
    found: float = 1.0
    probabilities: list[np.ndarray] = field(default_factory=list, repr=False)
    disagreement: list[np.ndarray] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        # the numbers of the round and the planes' shapes, not megabytes of printed maps
        shapes = ", ".join(f"{h} x {w}" for h, w in (c.shape[-2:] for c in self.classes_a))
        return (
            f"RoundReport(round={self.round}, rounds={self.rounds}, loss_a={self.loss_a:.4g}, "
            f"loss_b={self.loss_b:.4g}, changed={self.changed:.4g}, found={self.found:.4g}, "
            f"converged={self.converged}, seconds={self.seconds:.3g}, device={self.device!r}, "
            f"planes=[{shapes}])"
        )


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """A ``(C, H, W)`` image padded (mirrored) to at least ``size`` x ``size``."""
    pad_h, pad_w = max(size - image.shape[-2], 0), max(size - image.shape[-1], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return image


def _training_window(
    sup: Supervision, labels: np.ndarray | None, margin: int
) -> tuple[slice, slice]:
    """The part of a plane the networks predict between rounds.

    A plane of at least :data:`WINDOW_MIN_PIXELS` annotated in part (a region, corrected
    cells with the rest ignored) gives its labelled pixels and ``margin`` of context: the
    exchange changes no label outside them, and predicting a large plane whole every round
    would take most of the round. A smaller plane, or a window that spares less than a
    quarter of the plane, is the whole plane.
    """
    height, width = sup.classes.shape
    whole = slice(0, height), slice(0, width)
    if height * width < WINDOW_MIN_PIXELS:
        return whole
    rows, cols = sup.labelled_window(labels, margin)
    area = (rows.stop - rows.start) * (cols.stop - cols.start)
    return whole if area > 0.75 * height * width else (rows, cols)


def _resumed_config(config: TrainConfig, pair: ModelPair) -> TrainConfig:
    """``config`` with the pair's input settings where it leaves them unset, and the size of
    its networks (a resumed pair keeps its networks).

    Raises
    ------
    ValueError
        When ``config`` gives percentiles other than those the networks were trained with.
    """
    trained = tuple(float(p) for p in pair.percentiles)
    if "percentiles" not in config.unset and config.percentiles != trained:
        raise ValueError(
            f"The networks to resume were trained on images scaled to their {trained[0]:g} and "
            f"{trained[1]:g} percentiles, but percentiles={config.percentiles} was given: "
            "resumed networks must see their input scaled as in training. Leave percentiles "
            "out (the pair's are then used), or train new networks."
        )
    kept: dict[str, Any] = {"percentiles": trained}
    if "channels" in config.unset:
        kept["channels"] = parse_channels(pair.settings.get("channels"))
    if "rgb" in config.unset:
        kept["rgb"] = pair.settings.get("rgb") or "channels"
    width, width_b = pair.model_a.arch["width"], pair.model_b.arch["width"]
    kept["width"], kept["depth"] = width, pair.model_a.arch["depth"]
    kept["exchange"] = dataclasses.replace(
        config.exchange, width_b=0 if width_b == width else width_b
    )
    return dataclasses.replace(config, **kept)


def _supervision_list(supervisions: Any) -> list[Supervision | None]:
    """The supervisions as a list, refusing what is none (boxes, a class map) with the fix."""
    if isinstance(supervisions, np.ndarray) or hasattr(supervisions, "columns"):
        items = [supervisions]
    else:
        items = list(supervisions)
    for k, sup in enumerate(items):
        if sup is not None and not isinstance(sup, Supervision):
            raise TypeError(
                f"Supervision {k} is of type {type(sup).__name__}, not a Supervision: make "
                "one from the boxes with make_supervision(image.shape, boxes); a class map you "
                "edited goes in labels=[...] beside it."
            )
    return items


def _starting_pair(pair: ModelPair | None, in_channels: int, config: TrainConfig) -> ModelPair:
    """The networks a run starts from: new ones, or a copy of ``pair`` to resume."""
    if pair is None:
        most = ARCH_LIMITS["in_channels"][1]
        if in_channels > most:
            # the model file takes at most this many: such networks would never load again
            raise ValueError(
                f"The images give the networks {in_channels} channels, more than the {most} "
                "they can take: pick the channels to learn from (--channel, or channels= in "
                "Python)."
            )
        arch = {
            "in_channels": in_channels,
            "n_classes": N_CLASSES,
            "width": config.width,
            "depth": config.depth,
        }
        arch_b = {**arch, "width": config.exchange.width_b or config.width}
        return ModelPair(
            build_unet(arch, config.seed), build_unet(arch_b, config.seed + 1), config.percentiles
        )
    if pair.in_channels != in_channels:
        # no choice of channels gives an image more than it has
        fix = (
            "pick the channels they were trained on (--channel, or channels= in Python)"
            if in_channels > pair.in_channels
            else "train new networks on images like these (without the model to resume)"
        )
        raise ValueError(
            f"The networks to resume take {pair.describe_input()} but the images give "
            f"{in_channels}: {fix}."
        )
    return pair.copy()


class MutualTrainer:
    """Train two networks that teach each other, one round at a time.

    Parameters
    ----------
    images : array_like, AxisImage or sequence of them
        One 2D image, a ``(P, H, W)`` stack of planes, an 8-bit RGB(A) picture, an
        :class:`~napari_mutualseg.images.AxisImage` (each of its planes), or a list of 2D
        images, channels-first ``(C, H, W)`` images and ``AxisImage`` s. The channels the
        networks learn from are ``config.channels`` (every channel when unset).
    supervisions : Supervision or sequence of Supervision
        One per plane (see :func:`napari_mutualseg.supervision.make_supervision`), in the
        order of the images and their planes; ``None`` leaves a plane without boxes out
        (a z-stack boxed on some planes trains on those, normalised like the whole stack).
    config : TrainConfig or dict, optional
        Settings (a dict: those of a :class:`TrainConfig`); the defaults are the recommended
        ones. Resuming from ``pair``, the input
        settings it leaves unset (``percentiles``, ``channels``, ``rgb``) are the pair's; the
        resulting settings are :attr:`config`.
    labels : sequence of numpy.ndarray, optional
        The supervision class maps as the user left them (painted corrections are trusted),
        one per supervision (any value where the supervision is ``None``).
    pair : ModelPair, optional
        Resume from these trained networks (they are copied, never changed in place).

    Attributes
    ----------
    windows : list of tuple of slice
        ``(rows, cols)`` of each supervised plane that the networks predict between rounds
        (training patches come from the whole plane): the whole plane, or, where a plane of
        at least :data:`WINDOW_MIN_PIXELS` is annotated in part (a region, corrected cells
        with the rest ignored), its labelled pixels and half a patch of context around them
        when that spares at least a quarter of the plane.
    plane_shapes : list of tuple of int
        The ``(H, W)`` of each supervised plane, the shape of every report array.
    total_steps : int
        Training steps of both networks over every round: with :attr:`step`, the progress
        within a round, which another thread may show (a round takes seconds to minutes).

    Raises
    ------
    TypeError
        When a supervision is no :class:`~napari_mutualseg.supervision.Supervision` (boxes
        or a class map given in its place), or ``config`` is neither settings nor a dict.
    ValueError
        When the images, supervisions or labels do not fit together, or do not fit ``pair``
        (another number of channels, other percentiles).

    Warns
    -----
    UserWarning
        When an image looks like labels or a mask rather than intensities, or the labels
        have no background.

    Notes
    -----
    Training prints nothing: each round is one report of the iteration, which the caller
    shows (``print(report)``; ``tqdm(trainer, total=config.rounds)`` for a bar).

    Examples
    --------
    >>> trainer = MutualTrainer(image, make_supervision(image.shape, boxes))
    >>> for report in trainer:
    ...     print(report.round, report.loss_a, report.loss_b)
    >>> trainer.pair.save("cells.pt")
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        supervisions: Supervision | Sequence[Supervision],
        config: TrainConfig | dict[str, Any] | None = None,
        *,
        labels: Sequence[np.ndarray] | None = None,
        pair: ModelPair | None = None,
    ) -> None:
        if config is None or isinstance(config, dict):
            # settings as a dict ({"rounds": 3}), as a notebook keeps them
            config = TrainConfig(**(config or {}))
        if not isinstance(config, TrainConfig):
            raise TypeError(
                f"The settings must be a TrainConfig or a dict of its settings, got {config!r}: "
                "give, for example, TrainConfig(rounds=3) or {'rounds': 3}."
            )
        # a device this machine lacks is refused before the images are read and normalised
        self.device = select_device(config.device)
        self.device_name = describe_device(self.device)
        images = as_images(images)
        for image in images:
            warn_if_labels(image, stacklevel=2)
        unset = config.unset
        if pair is not None:
            config = _resumed_config(config, pair)
        self.config = config
        # channels the caller gave are taken as given; the pair's as prediction finds them
        # (by name where the image names its channels, whatever their order)
        selection = config.channels
        pairs_own = pair is not None and "channels" in unset
        if pairs_own:
            try:
                images = [pair.network_input(im, rgb=config.rgb, name=im.name) for im in images]
                selection = None
            except ValueError:
                pass  # images that do not fit the networks are refused below, in training's words
        n_planes = sum(image.n_planes for image in images)
        if isinstance(supervisions, Supervision):
            supervisions = [supervisions]
        supervisions = _supervision_list(supervisions)
        if len(supervisions) != n_planes:
            stack = ""
            if len(images) == 1 and images[0].n_planes > 1:
                stack = (
                    f" The image is a stack of {n_planes} planes ({images[0].axes}), as a plain "
                    "3D array is read: give one supervision per plane, or, if its first axis "
                    "holds channels, pass AxisImage.from_array(image, 'CYX')."
                )
            raise ValueError(
                f"Got {n_planes} image(s) but {len(supervisions)} supervision(s): give one "
                f"supervision (set of boxes) per image, or None for a plane without boxes.{stack}"
            )
        if labels is not None and len(labels) != n_planes:
            raise ValueError(f"Got {n_planes} image(s) but {len(labels)} label map(s).")
        keep = [sup is not None for sup in supervisions]
        if not any(keep):
            raise ValueError("No image has a supervision: draw boxes on at least one plane.")
        # supervisions and labels that do not fit are refused before the images are normalised
        shapes = [image.plane_shape for image in images for _ in range(image.n_planes)]
        shapes = [shape for shape, k in zip(shapes, keep, strict=True) if k]
        supervisions = [sup for sup in supervisions if sup is not None]
        for i, (shape, sup) in enumerate(zip(shapes, supervisions, strict=True)):
            if sup.classes.shape != shape:
                raise ValueError(
                    f"Image {i} has shape {shape} but its supervision has shape "
                    f"{sup.classes.shape}; make the supervision from this image's shape."
                )
        if labels is not None:
            labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
            labels = [
                check_class_map(lab, sup.classes.shape, "The edited supervision")
                for lab, sup in zip(labels, supervisions, strict=True)
            ]
        planes, channel_names = network_planes(
            images,
            channels=selection,
            rgb=config.rgb,
            percentiles=config.percentiles,
            keep=keep,
        )
        self.plane_shapes = [sup.classes.shape for sup in supervisions]
        self.windows = [
            _training_window(sup, None if labels is None else labels[i], config.patch_size // 2)
            for i, sup in enumerate(supervisions)
        ]
        windows = self.windows
        # patches still come from the whole plane: on BBBC039 with a quarter of each image
        # annotated, windowed patches lowered mAP on held-out images from 0.76 to 0.54-0.68
        self._windowed = [
            np.ascontiguousarray(p[:, r, c]) for p, (r, c) in zip(planes, windows, strict=True)
        ]
        if all(w.shape == p.shape for w, p in zip(self._windowed, planes, strict=True)):
            self._windowed = planes
        self._supervisions = supervisions
        supervisions = [sup.crop(w) for sup, w in zip(supervisions, windows, strict=True)]
        if labels is not None:
            labels = [lab[w] for lab, w in zip(labels, windows, strict=True)]
        self.images = planes
        exchange = config.exchange
        self.contexts = [
            ExchangeContext.build(
                sup,
                None if labels is None else labels[i],
                rule=exchange.rule,
                core_scale=exchange.core_scale,
            )
            for i, sup in enumerate(supervisions)
        ]
        if not any((ctx.initial == BACKGROUND).any() for ctx in self.contexts):
            warnings.warn(
                "The training labels have no background pixel (the boxes, or the annotated "
                "region, cover every image): the networks cannot learn where cells end and "
                "will call everything cell. Draw the region larger than the boxes, or paint "
                "some background (0) into the supervision.",
                UserWarning,
                stacklevel=2,
            )
        self.resumed = pair is not None
        pair = _starting_pair(pair, planes[0].shape[0], config)
        pair.take_pixel_size(images)
        if channel_names is not None or not pairs_own:
            pair.channel_names = channel_names
        pair.settings = config.to_dict()
        sides = [2 * max(box.extent) for sup in supervisions for box in sup.boxes]
        pair.cell_size = max([pair.cell_size or 0.0, *sides]) or None
        self._pair = pair.to(self.device)
        self._first_round = len(pair.history)
        self._cancel = threading.Event()
        self._started = False
        self._trainers: list[NetworkTrainer] = []
        self.total_steps = 2 * config.rounds * config.steps_per_round

    def __repr__(self) -> str:
        shapes = ", ".join(f"{h} x {w}" for h, w in self.plane_shapes)
        done = len(self._pair.history) - self._first_round
        n = len(self.plane_shapes)
        return (
            f"MutualTrainer({n} plane{'s' if n > 1 else ''} ({shapes}), {done} of up to "
            f"{self.config.rounds} rounds done, on {self.device_name}"
            f"{', cancelled' if self.cancelled else ''})"
        )

    @property
    def pair(self) -> ModelPair:
        """The two networks as of the last completed round (a round cancelled or failed,
        for example by a NaN loss, is dropped)."""
        return self._pair

    @property
    def step(self) -> int:
        """Training steps done so far, both networks together (safe to read from any thread)."""
        return sum(t.steps for t in self._trainers)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop before the next training step or prediction pass (within about a second).

        The networks of the last reported round are kept in :attr:`pair` (the round under way
        is dropped, with its history entry) and no report follows. Safe to call from any
        thread; the CLI's Ctrl-C and the widget's Stop both come here.
        """
        self._cancel.set()

    def _check(self) -> None:
        """Raise :class:`Cancelled` once :meth:`cancel` was called (between work units)."""
        if self._cancel.is_set():
            raise Cancelled

    # -- the rounds -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[RoundReport]:
        if self._started:
            # a second run would start over from the boxes' labels and report round 1 again
            raise RuntimeError(
                "This trainer has already trained; a trainer runs once. To train on, make a "
                "new one from its networks: MutualTrainer(images, supervisions, config, "
                "pair=trainer.pair)."
            )
        self._started = True
        return self._rounds()

    def _rounds(self) -> Iterator[RoundReport]:
        cfg = self.config
        models = self._pair.models
        divisor = models[0].divisor
        # a crop larger than every plane would be mostly padding, which the loss ignores
        largest = max(max(im.shape[-2:]) for im in self.images)
        patch = min(cfg.patch_size, -(-largest // divisor) * divisor)
        patch = max(divisor, patch // divisor * divisor)
        padded = [torch.from_numpy(_pad_to(im, patch)).to(self.device) for im in self.images]
        ema = cfg.exchange.ema
        # a resumed pair draws crops other than those of the rounds it has trained already
        seeds = [cfg.seed * 2 + k + 1000 for k in range(2)]
        if self.resumed:
            seeds = [[seed, self._first_round] for seed in seeds]
        self._trainers = [
            NetworkTrainer(
                "AB"[k],
                # With a moving average, the pair holds the averaged weights (what is shown,
                # exchanged and saved) and training runs in a copy.
                copy.deepcopy(m) if ema else m,
                PatchSampler(padded, patch, cfg.batch_size, seeds[k], self.device),
                cfg.learning_rate,
                self.device,
                average=m if ema else None,
                ema=ema,
            )
            for k, m in enumerate(models)
        ]
        streams = self._streams()
        if self.resumed:
            try:
                targets = self._guarded(
                    lambda: self._exchange([self._predict(m) for m in models]),
                    "predicting the training images with the networks to resume",
                )
            except Cancelled:
                return
        else:
            initial = [ctx.initial for ctx in self.contexts]
            targets = [initial, initial]
        for r in range(1, cfg.rounds + 1):
            if self.cancelled:
                return
            snapshot = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
            try:
                report, targets = self._round(r, targets, streams)
            except BaseException as err:
                # cancelled or failed (a NaN loss, out of memory): the pair stays as of the
                # last completed round, as :attr:`pair` promises
                for m, state in zip(models, snapshot, strict=True):
                    m.load_state_dict(state)
                if isinstance(err, Cancelled):
                    return
                raise
            self._pair.history.append(
                {
                    "round": len(self._pair.history) + 1,
                    "loss_a": report.loss_a,
                    "loss_b": report.loss_b,
                    "changed": report.changed,
                    "found": report.found,
                    "converged": report.converged,
                    "seconds": report.seconds,
                    "device": report.device,
                }
            )
            yield report
            if report.converged:
                return

    def _round(
        self, r: int, targets: list[list[np.ndarray]], streams: CudaStreams | None
    ) -> tuple[RoundReport, list[list[np.ndarray]]]:
        """Train round ``r`` on ``targets`` (A's, B's) and exchange: the round's report, and
        A's and B's labels for the next round (in the training windows).

        Raises
        ------
        Cancelled
            When the trainer is cancelled before the round is complete.
        TrainingError
            When a loss became NaN, or memory ran out in training or in the prediction and
            exchange after it.
        """
        cfg = self.config
        start = time.perf_counter()
        lr = cfg.learning_rate * (cfg.later_lr_factor if (r > 1 or self.resumed) else 1.0)
        for trainer, t in zip(self._trainers, targets, strict=True):
            trainer.set_learning_rate(lr)
            trainer.sampler.set_labels(self._on_planes(t, IGNORE))
        losses = train_round(self._trainers, cfg.steps_per_round, self._cancel, r, streams)
        return self._guarded(
            lambda: self._report(r, targets, losses, start),
            f"predicting the training images after round {r}",
        )

    def _report(
        self, r: int, targets: list[list[np.ndarray]], losses: list[float], start: float
    ) -> tuple[RoundReport, list[list[np.ndarray]]]:
        """Predict, exchange and report round ``r``, trained on ``targets`` from ``start``;
        the next round's labels with it."""
        cfg = self.config
        models = self._pair.models
        # the last round is reported on the whole planes, the others on the windows
        probas = [self._predict(m, whole=r == cfg.rounds) for m in models]
        new_targets = self._exchange([self._in_windows(p) for p in probas])
        # each network's labels over all images together, then the mean of A and B
        changed = float(np.mean([changed_fraction(targets[k], new_targets[k]) for k in range(2)]))
        ensemble = [(pa + pb) / 2 for pa, pb in zip(*probas, strict=True)]
        windows = self._in_windows(ensemble)
        found, objects = self._found(windows)
        # labels that stop changing because the networks find nothing have not converged;
        # round 1 of a new pair changes the boxes' labels, a resumed pair's its own
        compared = r > 1 or self.resumed
        converged = compared and changed < cfg.min_change and found >= 0.5
        if converged and r < cfg.rounds and self._windowed is not self.images:
            # the round ends training, so its report covers the whole planes: the windowed
            # ones are predicted again, whole (the others are whole already)
            probas = [self._widened(m, p) for m, p in zip(models, probas, strict=True)]
            ensemble = [(pa + pb) / 2 for pa, pb in zip(*probas, strict=True)]
        # found's box objects serve the instances where those read the same prediction: the
        # windows, not the whole of a plane predicted in part (the last or a converged round)
        objects = [
            o if e.shape == w.shape else None
            for o, e, w in zip(objects, ensemble, windows, strict=True)
        ]
        whole = self._on_planes
        report = RoundReport(
            round=r,
            rounds=cfg.rounds,
            loss_a=losses[0],
            loss_b=losses[1],
            classes_a=whole([top_class(p) for p in probas[0]]),
            classes_b=whole([top_class(p) for p in probas[1]]),
            instances=self._instances(ensemble, objects),
            labels_a=whole(new_targets[0], IGNORE),
            labels_b=whole(new_targets[1], IGNORE),
            changed=changed,
            device=str(self.device),
            converged=converged,
            found=found,
            probabilities=whole(ensemble),
            disagreement=whole(
                [
                    disagreement_map(pa, pb).astype(np.float16)
                    for pa, pb in zip(*probas, strict=True)
                ]
            ),
            seconds=time.perf_counter() - start,  # last: the round's whole work
        )
        self._check()  # cancelled during the round's last pass: no report
        return report, new_targets

    def _on_planes(self, arrays: list[np.ndarray], fill: int = 0) -> list[np.ndarray]:
        """Arrays of the windows laid out on their whole planes, ``fill`` around (arrays of
        whole planes as they are)."""
        out = []
        for a, (rows, cols), shape in zip(arrays, self.windows, self.plane_shapes, strict=True):
            if a.shape[-2:] != shape:
                # zeros are left to the system to supply: a large plane costs the pixels of
                # its window, not a write of the whole plane per array and round
                size = (*a.shape[:-2], *shape)
                full = np.zeros(size, a.dtype) if fill == 0 else np.full(size, fill, a.dtype)
                full[..., rows, cols] = a
                a = full
            out.append(a)
        return out

    def _guarded(self, work: Callable[[], T], doing: str) -> T:
        """``work()`` (a prediction over the training images), running out of memory while
        ``doing`` it a :class:`TrainingError` that says to lower the tile size."""
        tile = self.config.tile_size
        return guard_memory(
            work, self.device, f"{doing} (tiles of {tile} x {tile} pixels)", "Lower the tile size"
        )

    def _streams(self) -> CudaStreams | None:
        """On CUDA (with ``parallel``) A and B train at once, each on its own stream."""
        if self.device.type == "cuda" and self.config.parallel:
            return CudaStreams(self.device)
        return None

    def _exchange(self, probas: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """A's and B's next labels (:func:`~napari_mutualseg.exchange.exchange_labels`)."""
        return exchange_labels(self.contexts, probas, self.config.exchange, check=self._check)

    def _in_windows(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Arrays of whole planes cut to their windows (arrays of windows as they are)."""
        return [
            a[..., rows, cols] if a.shape[-2:] == shape else a
            for a, (rows, cols), shape in zip(arrays, self.windows, self.plane_shapes, strict=True)
        ]

    def _predict(self, model: UNet, whole: bool = False) -> list[np.ndarray]:
        """``model``'s probabilities on the windows, or on the whole planes."""
        return [self._proba(model, im) for im in (self.images if whole else self._windowed)]

    def _widened(self, model: UNet, probas: list[np.ndarray]) -> list[np.ndarray]:
        """``model``'s ``probas`` on the windows, those of a part of a plane predicted again
        on the whole plane."""
        return [
            p if p.shape[-2:] == im.shape[-2:] else self._proba(model, im)
            for p, im in zip(probas, self.images, strict=True)
        ]

    def _proba(self, model: UNet, image: np.ndarray) -> np.ndarray:
        """``model``'s probabilities on one ``(C, H, W)`` plane (or window)."""
        cfg = self.config
        return predict_proba(
            [model],
            image,
            self.device,
            tile_size=cfg.tile_size,
            flips=cfg.exchange.flip_labels,
            check=self._check,
        )

    def _supervisions_of(self, probas: list[np.ndarray]) -> list[Supervision]:
        """The supervision each of ``probas`` is read with: its plane's, or its window's."""
        return [
            sup if p.shape[-2:] == sup.classes.shape else ctx.supervision
            for p, sup, ctx in zip(probas, self._supervisions, self.contexts, strict=True)
        ]

    def _instances(
        self,
        probas: list[np.ndarray],
        objects: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> list[np.ndarray]:
        """Per-box instances of every training plane (one object per box, unboxed cells
        added), on the whole plane; ``objects``, where given, are each plane's box objects of
        ``probas`` already read (:meth:`_found`)."""
        cfg = self.config
        if objects is None:
            objects = [None] * len(probas)
        return self._on_planes(
            [
                self._checked(
                    per_box_instances,
                    p,
                    sup,
                    fg_threshold=cfg.exchange.fg_threshold,
                    core_scale=cfg.exchange.core_scale,
                    min_size=cfg.min_size,
                    objects=o,
                )
                for p, sup, o in zip(probas, self._supervisions_of(probas), objects, strict=True)
            ]
        )

    def _checked(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(*args, **kwargs)`` unless the trainer was cancelled: one image at a time."""
        self._check()
        return work(*args, **kwargs)

    def _found(
        self, probas: list[np.ndarray]
    ) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        """Fraction of all boxes whose object the ensemble found (1 when there are no boxes)
        in ``probas`` of the windows, and each window's box objects, which the instances
        take too (a loop over the boxes: seconds on a large plane)."""
        settings = self.config.exchange
        objects = [
            self._checked(ctx.objects, p, settings)
            for p, ctx in zip(probas, self.contexts, strict=True)
        ]
        return found_fraction(probas, self.contexts, settings, objects=objects), objects
