"""The mutual-learning engine: two networks, each learning from the other's predictions.

Round 1 trains both networks on the labels made from the boxes. After round n, network A's
prediction, combined with the box labels, becomes B's training label for round n + 1, and B's
prediction becomes A's; neither ever learns from itself. The engine is an iterator that yields
one :class:`RoundReport` per round and can be cancelled from another thread between two
training steps.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch.nn import functional as F

from .exchange import EXCHANGES, ExchangeContext, changed_fraction
from .inference import per_box_instances, predict_proba
from .models import ModelPair, UNet, build_unet, describe_device, select_device
from .preprocess import DEFAULT_PERCENTILES, as_planes, normalize
from .supervision import IGNORE, Supervision


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


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
    width_b : int
        First-level channels of network B when it should differ from A (0: same as A);
        networks of different sizes make different mistakes, which the exchange relies on.
    learning_rate : float
        Adam learning rate of round 1.
    later_lr_factor : float
        Learning rate of later rounds (and of resumed training) relative to round 1.
    ema : float
        Decay of a moving average of each network's weights (0: off). When on, the averaged
        weights (a "mean teacher") make the peer's labels, the predictions shown and the
        trained pair, while training goes on in the raw weights. Off by default: it did not
        gain in the validation ablation (``benchmarks/results/ablation_val.md``).
    seed : int
        Seeds weights (A uses ``seed``, B ``seed + 1``) and sampling; reproducible on the CPU.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device.
    exchange : str
        How predictions become the peer's labels: ``"confident"`` or ``"literal"``.
    teacher : str
        ``"peer"`` (mutual learning: A learns from B and B from A) or ``"self"`` (each network
        learns from its own prediction: self-training, kept for comparison).
    core_scale : float
        Trusted core of each ellipse, relative to its axes.
    flip_labels : bool
        Average each network's prediction over flips before it becomes its peer's labels
        (four times the prediction cost between rounds; off: no gain in the ablation).
    soft_weight : float
        Weight of a second loss that pulls each network towards its teacher's probabilities
        on the box pixels its hard labels leave ignored (deep mutual learning; 0: off, it
        blurred object edges in the ablation).
    fg_threshold, confidence : float
        Foreground threshold on P(cell) + P(boundary); least top probability passed on.
    min_core_fraction, leak_fraction : float
        Per-box fall-back to the box label when the object is tiny or fills the box.
    ellipse_background, object_edges : bool
        Whether the peer's confident background inside a box's ellipse is passed on, and
        whether each passed-on object's inner edge is labelled boundary (``"confident"``
        rule; the defaults did as well or better in the ablation).
    agreement : bool
        Mutual learning only: inside the boxes, pass on only the pixels where A and B predict
        the same class (a second opinion that self-training cannot have).
    min_change : float
        Stop when fewer than this fraction of labelled pixels change class between rounds.
    min_size : int
        Smallest object kept in instance maps, in pixels.
    tile_size : int
        Tile edge for whole-image prediction.
    percentiles : tuple of float
        Intensity percentiles mapped to 0 and 1.
    parallel : bool
        On CUDA, train A and B at once in two threads with a CUDA stream each.
    """

    rounds: int = 5
    steps_per_round: int = 200
    batch_size: int = 8
    patch_size: int = 256
    width: int = 16
    width_b: int = 0
    depth: int = 4
    learning_rate: float = 1e-3
    later_lr_factor: float = 0.5
    ema: float = 0.0
    seed: int = 0
    device: str = "auto"
    exchange: str = "confident"
    teacher: str = "peer"
    core_scale: float = 0.5
    flip_labels: bool = False
    soft_weight: float = 0.0
    fg_threshold: float = 0.5
    confidence: float = 0.6
    min_core_fraction: float = 0.5
    leak_fraction: float = 0.95
    ellipse_background: bool = True
    object_edges: bool = False
    agreement: bool = False
    min_change: float = 0.005
    min_size: int = 16
    tile_size: int = 512
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    parallel: bool = True

    def __post_init__(self) -> None:
        self.percentiles = tuple(float(p) for p in self.percentiles)
        problems = []
        for name in ("rounds", "steps_per_round", "batch_size", "width", "depth"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1")
        if self.width_b < 0:
            problems.append("width_b must be 0 (same as width) or positive")
        if self.patch_size < 2 ** (self.depth - 1) * 2:
            problems.append(f"patch_size must be at least {2**self.depth} for depth {self.depth}")
        if not (0 < self.learning_rate < 1) or not math.isfinite(self.learning_rate):
            problems.append("learning_rate must be between 0 and 1 (1e-3 is a good start)")
        if self.exchange not in EXCHANGES:
            problems.append(f"exchange must be one of {', '.join(EXCHANGES)}")
        if self.teacher not in ("peer", "self"):
            problems.append("teacher must be 'peer' or 'self'")
        for name in ("core_scale", "fg_threshold", "confidence", "later_lr_factor"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name} must be in (0, 1]")
        if not (self.soft_weight >= 0 and math.isfinite(self.soft_weight)):
            problems.append("soft_weight must be 0 (off) or positive")
        if not 0 <= self.ema < 1:
            problems.append("ema must be in [0, 1) (0 turns it off; 0.99 is typical)")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            problems.append("percentiles must be two increasing values in [0, 100]")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    @classmethod
    def recommended(cls, device: str | torch.device = "auto", **overrides) -> TrainConfig:
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

    def to_dict(self) -> dict:
        """The settings as plain Python values (stored in checkpoints)."""
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Settings from :meth:`to_dict` output; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class RoundReport:
    """What one round produced, one entry per training image in every list.

    ``classes_*`` are each network's class maps (argmax); ``instances_a``, ``instances_b``
    and ``instances`` (the ensemble of both) are read box by box (one object per box, see
    :func:`~napari_mutualseg.inference.per_box_instances`); ``labels_a`` / ``labels_b`` are
    what A / B learn from in the next round (from B's / A's prediction); ``probabilities``
    is the ensemble softmax; ``changed`` is the fraction of labelled pixels whose class
    changed since the labels of this round.
    """

    round: int
    rounds: int
    loss_a: float
    loss_b: float
    classes_a: list[np.ndarray]
    classes_b: list[np.ndarray]
    instances_a: list[np.ndarray]
    instances_b: list[np.ndarray]
    instances: list[np.ndarray]
    labels_a: list[np.ndarray]
    labels_b: list[np.ndarray]
    changed: float
    seconds: float
    device: str
    converged: bool = False
    probabilities: list[np.ndarray] = field(default_factory=list, repr=False)


class _Cancelled(Exception):
    pass


class _PatchSampler:
    """Random augmented crops of (image, label) pairs, drawn on the training device."""

    def __init__(
        self, images: list[torch.Tensor], patch: int, batch: int, seed: int, device: torch.device
    ) -> None:
        self.images = images
        self.patch = patch
        self.batch = batch
        self.device = device
        self.rng = np.random.default_rng(seed)
        areas = np.array([im.shape[0] * im.shape[1] for im in images], np.float64)
        self.weights = areas / areas.sum()
        self.labels: list[torch.Tensor] = []
        self.soft: list[torch.Tensor] | None = None

    def set_labels(self, labels: list[np.ndarray], soft: list[np.ndarray] | None = None) -> None:
        """Hard labels per image and, optionally, soft targets ``(3, H, W)`` (NaN: none)."""
        self.labels, self.soft = [], None if soft is None else []
        for i, (image, lab) in enumerate(zip(self.images, labels, strict=True)):
            h, w = image.shape
            padded = np.full((h, w), IGNORE, np.uint8)
            padded[: lab.shape[0], : lab.shape[1]] = lab
            self.labels.append(torch.from_numpy(padded).to(self.device))
            if soft is not None:
                target = np.full((3, h, w), np.nan, np.float16)
                target[:, : lab.shape[0], : lab.shape[1]] = soft[i]
                self.soft.append(torch.from_numpy(target).to(self.device))

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        p = self.patch
        xs, ys, ss = [], [], []
        for i in self.rng.choice(len(self.images), size=self.batch, p=self.weights):
            image, label = self.images[i], self.labels[i]
            y0 = int(self.rng.integers(0, image.shape[0] - p + 1))
            x0 = int(self.rng.integers(0, image.shape[1] - p + 1))
            crop = (slice(y0, y0 + p), slice(x0, x0 + p))
            x, y = image[crop], label[crop]
            s = None if self.soft is None else self.soft[i][(slice(None), *crop)]
            k = int(self.rng.integers(4))
            x, y = torch.rot90(x, k, (0, 1)), torch.rot90(y, k, (0, 1))
            s = None if s is None else torch.rot90(s, k, (1, 2))
            if self.rng.random() < 0.5:
                x, y = x.flip(1), y.flip(1)
                s = None if s is None else s.flip(2)
            gain, offset = self.rng.uniform(0.75, 1.25), self.rng.uniform(-0.1, 0.1)
            xs.append(x * gain + offset)
            ys.append(y)
            ss.append(s)
        soft = None if self.soft is None else torch.stack(ss).float()
        return torch.stack(xs)[:, None], torch.stack(ys).long(), soft


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect")
    return image


class MutualTrainer:
    """Train two networks that teach each other, one round at a time.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray
        One 2D image, a ``(P, H, W)`` stack of planes, or a list of 2D images.
    supervisions : Supervision or sequence of Supervision
        One per image (see :func:`napari_mutualseg.supervision.make_supervision`).
    config : TrainConfig, optional
        Settings; the defaults are the recommended ones.
    labels : sequence of numpy.ndarray, optional
        The supervision class maps as the user left them (painted corrections are trusted).
    pair : ModelPair, optional
        Resume from these trained networks (they are copied, never changed in place).

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
        config: TrainConfig | None = None,
        *,
        labels: Sequence[np.ndarray] | None = None,
        pair: ModelPair | None = None,
    ) -> None:
        self.config = config = config if config is not None else TrainConfig()
        planes = as_planes(images)
        if isinstance(supervisions, Supervision):
            supervisions = [supervisions]
        supervisions = list(supervisions)
        if len(supervisions) != len(planes):
            raise ValueError(
                f"Got {len(planes)} image(s) but {len(supervisions)} supervision(s): give one "
                "supervision (set of boxes) per image."
            )
        if labels is not None and len(labels) != len(planes):
            raise ValueError(f"Got {len(planes)} image(s) but {len(labels)} label map(s).")
        for i, (plane, sup) in enumerate(zip(planes, supervisions, strict=True)):
            if sup.classes.shape != plane.shape:
                raise ValueError(
                    f"Image {i} has shape {plane.shape} but its supervision has shape "
                    f"{sup.classes.shape}; make the supervision from this image's shape."
                )
        self.device = select_device(config.device)
        self.device_name = describe_device(self.device)
        self.images = [
            normalize(p, config.percentiles, f"image {i}") for i, p in enumerate(planes)
        ]
        self.contexts = [
            ExchangeContext.build(
                sup,
                None if labels is None else labels[i],
                exchange=config.exchange,
                core_scale=config.core_scale,
            )
            for i, sup in enumerate(supervisions)
        ]
        self.resumed = pair is not None
        if pair is None:
            arch = {"in_channels": 1, "n_classes": 3, "width": config.width, "depth": config.depth}
            arch_b = {**arch, "width": config.width_b or config.width}
            pair = ModelPair(
                build_unet(arch, config.seed),
                build_unet(arch_b, config.seed + 1),
                config.percentiles,
            )
        else:
            pair = pair.copy()
            pair.percentiles = config.percentiles
        pair.settings = config.to_dict()
        self._pair = pair.to(self.device)
        self._cancel = threading.Event()
        self._steps = [0, 0]
        self.total_steps = 2 * config.rounds * config.steps_per_round

    @property
    def pair(self) -> ModelPair:
        """The two networks as of the last completed round."""
        return self._pair

    @property
    def step(self) -> int:
        """Training steps done so far, both networks together (safe to read from any thread)."""
        return sum(self._steps)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop training before the next step; the networks of the last completed round are kept.

        Safe to call from any thread.
        """
        self._cancel.set()

    # -- the rounds -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[RoundReport]:
        cfg = self.config
        models = self._pair.models
        # With a moving average, the pair holds the averaged weights and training runs in copies.
        students = tuple(copy.deepcopy(m) for m in models) if cfg.ema else models
        divisor = models[0].divisor
        patch = max(divisor, cfg.patch_size // divisor * divisor)
        padded = [torch.from_numpy(_pad_to(im, patch)).to(self.device) for im in self.images]
        samplers = [
            _PatchSampler(padded, patch, cfg.batch_size, cfg.seed * 2 + k + 1000, self.device)
            for k in range(2)
        ]
        optimizers = [torch.optim.Adam(m.parameters(), lr=cfg.learning_rate) for m in students]
        soft = [None, None]
        if self.resumed:
            probas = [self._predict(m) for m in models]
            targets = self._exchange(probas)
            soft = self._soft_targets(probas, targets)
        else:
            initial = [ctx.initial for ctx in self.contexts]
            targets = [initial, initial]
        for r in range(1, cfg.rounds + 1):
            if self.cancelled:
                return
            start = time.perf_counter()
            lr = cfg.learning_rate * (cfg.later_lr_factor if (r > 1 or self.resumed) else 1.0)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            for sampler, t, st in zip(samplers, targets, soft, strict=True):
                sampler.set_labels(t, st)
            snapshot = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
            try:
                losses = self._train_round(students, optimizers, samplers, r)
            except _Cancelled:
                for m, state in zip(models, snapshot, strict=True):
                    m.load_state_dict(state)
                return
            probas = [self._predict(m) for m in models]
            new_targets = self._exchange(probas)
            changed = float(
                np.mean(
                    [
                        changed_fraction(old, new)
                        for k in range(2)
                        for old, new in zip(targets[k], new_targets[k], strict=True)
                    ]
                )
            )
            converged = r > 1 and changed < cfg.min_change
            ensemble = [(pa + pb) / 2 for pa, pb in zip(*probas, strict=True)]
            report = RoundReport(
                round=r,
                rounds=cfg.rounds,
                loss_a=losses[0],
                loss_b=losses[1],
                classes_a=[p.argmax(0).astype(np.uint8) for p in probas[0]],
                classes_b=[p.argmax(0).astype(np.uint8) for p in probas[1]],
                instances_a=self._instances(probas[0]),
                instances_b=self._instances(probas[1]),
                instances=self._instances(ensemble),
                labels_a=new_targets[0],
                labels_b=new_targets[1],
                changed=changed,
                seconds=time.perf_counter() - start,
                device=str(self.device),
                converged=converged,
                probabilities=ensemble,
            )
            self._pair.history.append(
                {
                    "round": len(self._pair.history) + 1,
                    "loss_a": report.loss_a,
                    "loss_b": report.loss_b,
                    "changed": changed,
                    "seconds": report.seconds,
                    "device": report.device,
                }
            )
            targets = new_targets
            soft = self._soft_targets(probas, targets)
            yield report
            if converged:
                return

    def _exchange(self, probas: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """A learns from B's prediction and B from A's, each combined with the box labels.

        With ``teacher="self"`` each network learns from its own prediction instead.
        """
        cfg = self.config
        kw = {
            "fg_threshold": cfg.fg_threshold,
            "confidence": cfg.confidence,
            "min_core_fraction": cfg.min_core_fraction,
            "leak_fraction": cfg.leak_fraction,
            "ellipse_background": cfg.ellipse_background,
            "object_edges": cfg.object_edges,
        }
        from_b = [ctx.combine(p, **kw) for ctx, p in zip(self.contexts, probas[1], strict=True)]
        from_a = [ctx.combine(p, **kw) for ctx, p in zip(self.contexts, probas[0], strict=True)]
        if cfg.teacher == "self":
            return [from_a, from_b]
        if cfg.agreement:
            for ctx, pa, pb, la, lb in zip(self.contexts, *probas, from_a, from_b, strict=True):
                differ = pa.argmax(0) != pb.argmax(0)
                unsure = differ & ctx.in_box & ~ctx.core & ~ctx.edited
                la[unsure] = IGNORE
                lb[unsure] = IGNORE
        return [from_b, from_a]

    def _soft_targets(
        self, probas: list[list[np.ndarray]], targets: list[list[np.ndarray]]
    ) -> list[list[np.ndarray] | None]:
        """Each network's teacher probabilities where its hard labels inside boxes are ignored."""
        if not self.config.soft_weight:
            return [None, None]
        teachers = probas if self.config.teacher == "self" else probas[::-1]
        return [
            [
                np.where(ctx.in_box & ~ctx.edited & (t == IGNORE), p, np.nan).astype(np.float16)
                for ctx, p, t in zip(self.contexts, ps, ts, strict=True)
            ]
            for ps, ts in zip(teachers, targets, strict=True)
        ]

    def _predict(self, model: UNet) -> list[np.ndarray]:
        cfg = self.config
        return [
            predict_proba([model], im, self.device, tile_size=cfg.tile_size, flips=cfg.flip_labels)
            for im in self.images
        ]

    def _instances(self, probas: list[np.ndarray]) -> list[np.ndarray]:
        """Per-box instances of every training image (one object per box, unboxed cells added)."""
        cfg = self.config
        return [
            per_box_instances(
                p,
                ctx.supervision,
                fg_threshold=cfg.fg_threshold,
                core_scale=cfg.core_scale,
                min_size=cfg.min_size,
            )
            for p, ctx in zip(probas, self.contexts, strict=True)
        ]

    @torch.no_grad()
    def _update_average(self, k: int, model: UNet) -> None:
        """Move the pair's network ``k`` towards the trained copy ``model``."""
        # The warm-up keeps the first steps from averaging in the random initial weights.
        n = self._steps[k]
        keep = min(self.config.ema, (1 + n) / (10 + n))
        average = self._pair.models[k]
        for a, m in zip(average.parameters(), model.parameters(), strict=True):
            a.lerp_(m, 1.0 - keep)
        for a, m in zip(average.buffers(), model.buffers(), strict=True):
            if a.is_floating_point():
                a.lerp_(m, 1.0 - keep)
            else:
                a.copy_(m)

    def _train_round(
        self,
        models: tuple[UNet, UNet],
        optimizers: list[torch.optim.Optimizer],
        samplers: list[_PatchSampler],
        round_index: int,
    ) -> tuple[float, float]:
        jobs = list(zip(range(2), models, optimizers, samplers, strict=True))
        if self.device.type == "cuda" and self.config.parallel:
            results: list = [None, None]
            main_stream = torch.cuda.current_stream(self.device)

            def work(k, model, opt, sampler):
                try:
                    stream = torch.cuda.Stream(self.device)
                    stream.wait_stream(main_stream)
                    with torch.cuda.stream(stream):
                        results[k] = self._train_steps(k, model, opt, sampler, round_index)
                    stream.synchronize()
                except BaseException as err:  # re-raised in the calling thread
                    results[k] = err

            threads = [threading.Thread(target=work, args=job, daemon=True) for job in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for res in results:
                if isinstance(res, BaseException):
                    raise res
            return results[0], results[1]
        losses = [self._train_steps(*job, round_index) for job in jobs]
        return losses[0], losses[1]

    def _train_steps(
        self,
        k: int,
        model: UNet,
        opt: torch.optim.Optimizer,
        sampler: _PatchSampler,
        round_index: int,
    ) -> float:
        cfg = self.config
        device = self.device
        cuda = device.type == "cuda"
        if cuda:
            model.to(memory_format=torch.channels_last)
        model.train()
        total = torch.zeros((), device=device)
        for step in range(cfg.steps_per_round):
            if self._cancel.is_set():
                raise _Cancelled
            x, y, soft = sampler.draw()
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            # autocast per step: an outer context would keep reusing the first step's cast weights
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            logits = logits.float()
            valid = (y != IGNORE).sum().clamp(min=1)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / valid
            if soft is not None:
                has = ~soft[:, 0].isnan()
                q = soft.nan_to_num()
                kl = (torch.special.xlogy(q, q) - q * F.log_softmax(logits, 1)).sum(1) * has
                loss = loss + cfg.soft_weight * kl.sum() / has.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            self._steps[k] += 1
            if cfg.ema:
                self._update_average(k, model)
            if (step + 1) % 50 == 0 and not torch.isfinite(total):
                break
        mean = float(total) / cfg.steps_per_round
        if not math.isfinite(mean):
            raise TrainingError(
                f"The loss of network {'AB'[k]} became NaN in round {round_index}. Lower the "
                "learning rate (e.g. 1e-4) or check the image for extreme values."
            )
        return mean
