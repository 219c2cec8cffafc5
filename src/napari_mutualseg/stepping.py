"""Training steps: one network's crops, optimiser and loss, and a round of both networks.

A round trains network A and network B for the same number of steps. On a CUDA GPU they train
at once, in two threads with a CUDA stream each (the GPU overlaps their kernels); elsewhere one
after the other. The stream calls go through a small object (:class:`CudaStreams`) so that the
two-thread path also runs, and is tested, on a CPU. Running out of memory (on the GPU, or on the
CPU) ends the round with a :class:`TrainingError` that says what to change, once the memory of
the failed step is freed.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from .devices import release_cached_memory
from .supervision import IGNORE
from .unet import UNet


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


class Cancelled(Exception):
    """Raised inside a round when the trainer was cancelled between two steps."""


T = TypeVar("T")

#: What PyTorch's CPU and MPS allocators say when they fail: unlike CUDA's, their error is a
#: plain RuntimeError, known only by its message.
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation, on any device.

    CUDA raises :class:`torch.cuda.OutOfMemoryError`, NumPy and Python :class:`MemoryError`;
    the CPU and MPS allocators raise a :class:`RuntimeError` that says so in its message.
    """
    if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    if isinstance(err, TrainingError) or not isinstance(err, RuntimeError):
        return False  # a TrainingError may itself say "Out of memory"
    message = str(err).lower()
    return any(words in message for words in _OUT_OF_MEMORY_MESSAGES)


def guard_memory(work: Callable[[], T], device: torch.device, doing: str, advice: str) -> T:
    """``work()``, with running out of memory (:func:`out_of_memory`) while ``doing`` it as a
    :class:`TrainingError` on ``device`` that gives ``advice`` (what to lower) and, on a GPU,
    the other ways out. The GPU memory that PyTorch keeps cached is given back first.

    Raises
    ------
    TrainingError
        When the device (or the computer) runs out of memory.
    """
    try:
        return work()
    except Exception as err:
        if not out_of_memory(err):
            raise
    # Raised here, out of the handler: leaving it drops the traceback, whose frames hold the
    # failed work's tensors, so that their memory can be given back.
    release_cached_memory()
    gpu = device.type != "cpu"
    raise TrainingError(
        f"Out of memory on {device} {doing}. {advice}"
        + (", close other programs that use the GPU, or train on the CPU." if gpu else ".")
    )


class StopFlag(Protocol):
    """What a training loop checks before every step (a :class:`threading.Event` is one)."""

    def is_set(self) -> bool: ...


class _AnySet:
    """Set as soon as one of its flags is: the user's cancel, or the other network's failure."""

    def __init__(self, *flags: StopFlag) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


class PatchSampler:
    """Random augmented crops of (image, label) pairs, drawn on the training device.

    Images are ``(C, H, W)`` tensors (a 2D one is taken as one channel); every crop, rotation
    and flip moves all channels together. ``seed`` is a number or a sequence of them, as
    :func:`numpy.random.default_rng` takes it.
    """

    def __init__(
        self,
        images: list[torch.Tensor],
        patch: int,
        batch: int,
        seed: int | Sequence[int],
        device: torch.device,
    ) -> None:
        self.images = [im[None] if im.ndim == 2 else im for im in images]
        self.patch = patch
        self.batch = batch
        self.device = device
        self.rng = np.random.default_rng(seed)
        areas = np.array([im.shape[-2] * im.shape[-1] for im in self.images], np.float64)
        self.weights = areas / areas.sum()
        self.labels: list[torch.Tensor] = []

    def set_labels(self, labels: list[np.ndarray]) -> None:
        """The label map of every image (padded like the images, with ignore)."""
        self.labels = []
        for image, lab in zip(self.images, labels, strict=True):
            padded = np.full(tuple(image.shape[-2:]), IGNORE, np.uint8)
            padded[: lab.shape[0], : lab.shape[1]] = lab
            self.labels.append(torch.from_numpy(padded).to(self.device))

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: crops, 90-degree rotations, flips and intensity jitter."""
        p = self.patch
        xs, ys = [], []
        for i in self.rng.choice(len(self.images), size=self.batch, p=self.weights):
            image, label = self.images[i], self.labels[i]
            y0 = int(self.rng.integers(0, image.shape[-2] - p + 1))
            x0 = int(self.rng.integers(0, image.shape[-1] - p + 1))
            x, y = image[:, y0 : y0 + p, x0 : x0 + p], label[y0 : y0 + p, x0 : x0 + p]
            k = int(self.rng.integers(4))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if self.rng.random() < 0.5:
                x, y = x.flip(2), y.flip(1)
            gain, offset = self.rng.uniform(0.75, 1.25), self.rng.uniform(-0.1, 0.1)
            xs.append(x * gain + offset)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys).long()


class NetworkTrainer:
    """One network's training: its optimiser, its sampler and its step count.

    Parameters
    ----------
    name : str
        "A" or "B", for messages.
    model : UNet
        The network that learns.
    sampler : PatchSampler
        Its crops.
    learning_rate : float
        Adam's learning rate (changed per round with :meth:`set_learning_rate`).
    device : torch.device
        Where it trains; bf16 autocast and channels-last on CUDA.
    average : UNet, optional
        A moving average of ``model`` (mean teacher), updated after every step with ``ema``.
    ema : float
        Decay of the moving average.
    """

    def __init__(
        self,
        name: str,
        model: UNet,
        sampler: PatchSampler,
        learning_rate: float,
        device: torch.device,
        *,
        average: UNet | None = None,
        ema: float = 0.0,
    ) -> None:
        self.name = name
        self.model = model
        self.sampler = sampler
        self.device = device
        self.average = average
        self.ema = ema
        self.optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        self.steps = 0

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train(self, n_steps: int, cancel: StopFlag, round_index: int) -> float:
        """Train ``n_steps`` steps; the mean loss.

        Raises
        ------
        Cancelled
            When ``cancel`` is set (checked before every step).
        TrainingError
            When the loss is not finite.
        """
        cuda = self.device.type == "cuda"
        model = self.model
        if cuda:
            model.to(memory_format=torch.channels_last)
        model.train()
        total = torch.zeros((), device=self.device)
        for step in range(n_steps):
            if cancel.is_set():
                raise Cancelled
            x, y = self.sampler.draw()
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            # autocast per step: an outer context would keep reusing the first step's cast weights
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            logits = logits.float()
            valid = (y != IGNORE).sum().clamp(min=1)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / valid
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
            self.steps += 1
            if self.average is not None:
                self._update_average()
            if (step + 1) % 50 == 0 and not torch.isfinite(total):
                break
        mean = float(total) / n_steps
        if not math.isfinite(mean):
            raise TrainingError(
                f"The loss of network {self.name} became NaN in round {round_index}. Lower the "
                "learning rate (e.g. 1e-4) or check the image for extreme values."
            )
        return mean

    @torch.no_grad()
    def _update_average(self) -> None:
        # The warm-up keeps the first steps from averaging in the random initial weights.
        n = self.steps
        keep = min(self.ema, (1 + n) / (10 + n))
        for a, m in zip(self.average.parameters(), self.model.parameters(), strict=True):
            a.lerp_(m, 1.0 - keep)
        for a, m in zip(self.average.buffers(), self.model.buffers(), strict=True):
            if a.is_floating_point():
                a.lerp_(m, 1.0 - keep)
            else:
                a.copy_(m)


class Streams(Protocol):
    """The stream calls of the two-thread path."""

    def current(self) -> Any: ...

    def stream(self, index: int) -> Any: ...

    def use(self, stream: Any) -> contextlib.AbstractContextManager: ...


class CudaStreams:
    """:class:`Streams` on a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._made: dict[int, torch.cuda.Stream] = {}

    def current(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def stream(self, index: int) -> torch.cuda.Stream:
        """The stream of network ``index``, made once and kept for every later round.

        The allocator caches freed memory per stream: a new stream each round could not reuse
        the previous round's blocks and would reserve the working memory of a round again.
        """
        if index not in self._made:
            self._made[index] = torch.cuda.Stream(self.device)
        return self._made[index]

    def use(self, stream: torch.cuda.Stream) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream)


def train_round(
    trainers: Sequence[NetworkTrainer],
    n_steps: int,
    cancel: threading.Event,
    round_index: int,
    streams: Streams | None = None,
) -> list[float]:
    """Train every network ``n_steps`` steps; their mean losses, in order.

    With ``streams`` each network trains in its own thread on its own stream, which waits for
    the work queued so far on the current stream and is synchronised before the thread ends
    (also after a cancel or an error, so no queued step writes into the weights afterwards).
    An error in either thread (a cancel, a NaN loss, running out of memory) stops the other
    network before its next step and is raised here once both threads are done.

    Raises
    ------
    Cancelled
        When ``cancel`` was set.
    TrainingError
        When a loss became NaN, or the device ran out of memory (:func:`out_of_memory`; its
        cached memory is given back first).
    """
    first = trainers[0]
    patch = first.sampler.patch

    def train() -> list[float]:
        if streams is None:
            return [t.train(n_steps, cancel, round_index) for t in trainers]
        return _train_in_threads(trainers, n_steps, cancel, round_index, streams)

    return guard_memory(
        train,
        first.device,
        f"in round {round_index} (batches of {first.sampler.batch} crops of {patch} x {patch} "
        "pixels)",
        "Lower the batch size or the patch size",
    )


def _train_in_threads(
    trainers: Sequence[NetworkTrainer],
    n_steps: int,
    cancel: threading.Event,
    round_index: int,
    streams: Streams,
) -> list[float]:
    results: list[Any] = [None] * len(trainers)
    failed = threading.Event()
    stop = _AnySet(cancel, failed)
    main = streams.current()

    def work(k: int, trainer: NetworkTrainer) -> None:
        try:
            stream = streams.stream(k)
            stream.wait_stream(main)
            try:
                with streams.use(stream):
                    results[k] = trainer.train(n_steps, stop, round_index)
            finally:
                stream.synchronize()
        except BaseException as err:  # re-raised in the calling thread
            results[k] = err
            failed.set()

    threads = [
        threading.Thread(target=work, args=(k, t), daemon=True, name=f"network {t.name}")
        for k, t in enumerate(trainers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [res for res in results if isinstance(res, BaseException)]
    # the failure itself, not the Cancelled it caused in the other thread
    errors.sort(key=lambda err: isinstance(err, Cancelled))
    if errors:
        raise errors[0]
    return results
