"""Training steps and the two-thread round, run on the CPU with the stream calls stood in."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from napari_mutualseg import stepping
from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.models import build_unet
from napari_mutualseg.stepping import (
    Cancelled,
    CudaStreams,
    NetworkTrainer,
    PatchSampler,
    TrainingError,
    train_round,
)
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import MutualTrainer, TrainConfig

# tiny networks train faster on one torch thread (conftest.py)

CPU = torch.device("cpu")
ARCH = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}


class FakeStream:
    def __init__(self, log):
        self.log = log

    def wait_stream(self, other):
        self.log.append(("wait", threading.current_thread().name, other))

    def synchronize(self):
        self.log.append(("sync", threading.current_thread().name, None))


class FakeStreams:
    """Records the stream calls of the two-thread path, as the CUDA ones would be made."""

    def __init__(self):
        self.log = []

    def current(self):
        return "main stream"

    def stream(self, index):
        self.log.append(("stream", threading.current_thread().name, index))
        return FakeStream(self.log)

    @contextlib.contextmanager
    def use(self, stream):
        self.log.append(("use", threading.current_thread().name, None))
        yield


def _trainers(image=None, seed=0):
    image = (
        np.random.default_rng(0).random((48, 48)).astype(np.float32) if image is None else image
    )
    labels = (image > 0.5).astype(np.uint8)
    out = []
    for k in range(2):
        sampler = PatchSampler([torch.from_numpy(image)], 32, 2, seed + k, CPU)
        sampler.set_labels([labels])
        out.append(NetworkTrainer("AB"[k], build_unet(ARCH, seed + k), sampler, 1e-3, CPU))
    return out


def test_two_threads_train_each_network_on_its_own_stream():
    streams = FakeStreams()
    parallel = train_round(_trainers(), 5, threading.Event(), 1, streams)
    sequential = train_round(_trainers(), 5, threading.Event(), 1)
    # the networks are independent: the same losses whether they train at once or in turn
    np.testing.assert_allclose(parallel, sequential, rtol=1e-5)
    assert all(np.isfinite(parallel))
    threads = {name for kind, name, _ in streams.log if kind == "use"}
    assert threads == {"network A", "network B"}
    # each network has its own stream, which first waits for the work queued on the main
    # stream and is synchronised before the thread ends
    for name, index in (("network A", 0), ("network B", 1)):
        kinds = [(kind, other) for kind, who, other in streams.log if who == name]
        assert kinds == [("stream", index), ("wait", "main stream"), ("use", None), ("sync", None)]


def test_a_cancel_stops_both_threads_within_a_step():
    cancel = threading.Event()
    cancel.set()
    trainers = _trainers()
    with pytest.raises(Cancelled):
        train_round(trainers, 1000, cancel, 1, FakeStreams())
    assert [t.steps for t in trainers] == [0, 0]


def test_a_cancel_still_synchronises_both_streams():
    # the engine restores the weights next: no queued step may write into them afterwards
    cancel = threading.Event()
    cancel.set()
    streams = FakeStreams()
    with pytest.raises(Cancelled):
        train_round(_trainers(), 1000, cancel, 1, streams)
    synced = {name for kind, name, _ in streams.log if kind == "sync"}
    assert synced == {"network A", "network B"}


def test_a_failure_in_one_thread_reaches_the_caller():
    image = np.full((48, 48), np.nan, np.float32)
    with pytest.raises(TrainingError, match="NaN in round 3"):
        train_round(_trainers(image), 2, threading.Event(), 3, FakeStreams())


class OutOfMemorySampler(PatchSampler):
    """Runs out of memory at its third batch, as a too-large batch does on a GPU."""

    def draw(self):
        self.drawn = getattr(self, "drawn", 0) + 1
        if self.drawn == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return super().draw()


class AfterASampler(PatchSampler):
    """Draws its third batch only once network A's thread has ended: however the threads
    are scheduled, A has failed by then."""

    def draw(self):
        self.drawn = getattr(self, "drawn", 0) + 1
        if self.drawn == 3:
            for thread in threading.enumerate():
                if thread.name == "network A":
                    thread.join(60)
        return super().draw()


@pytest.mark.parametrize("streams", [None, FakeStreams()], ids=["in turn", "two threads"])
def test_out_of_memory_ends_the_round_with_a_clear_message(streams):
    trainers = _trainers()
    trainers[0].sampler.__class__ = OutOfMemorySampler
    trainers[1].sampler.__class__ = AfterASampler
    with pytest.raises(TrainingError, match=r"Out of memory on cpu in round 2 .*batch size"):
        train_round(trainers, 1000, threading.Event(), 2, streams)
    # the failing network stopped at once, and the other one before its next step
    assert trainers[0].steps == 2
    assert trainers[1].steps <= 3


class FailingSampler(PatchSampler):
    """Raises ``error`` at its third batch."""

    error: BaseException

    def draw(self):
        self.drawn = getattr(self, "drawn", 0) + 1
        if self.drawn == 3:
            raise self.error
        return super().draw()


def _failing_at_step_3(error):
    trainers = _trainers()
    trainers[0].sampler.__class__ = FailingSampler
    trainers[0].sampler.error = error
    return trainers


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 85899345920 bytes. Error code 12"
        ),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations)"),
    ],
    ids=["cpu", "mps"],
)
def test_running_out_of_cpu_or_mps_memory_ends_the_round_with_a_clear_message(error, monkeypatch):
    released = []
    monkeypatch.setattr(stepping, "release_cached_memory", lambda: released.append(True))
    with pytest.raises(TrainingError, match=r"Out of memory on cpu in round 2 .*batch size"):
        train_round(_failing_at_step_3(error), 1000, threading.Event(), 2)
    assert released == [True]  # the GPU's cached memory is given back, as after a CUDA one


def test_other_runtime_errors_are_not_taken_for_running_out_of_memory():
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        train_round(_failing_at_step_3(error), 1000, threading.Event(), 2)
    assert raised.value is error


def test_each_network_keeps_its_cuda_stream_across_rounds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: object())
    streams = CudaStreams(torch.device("cuda", 0))
    assert streams.stream(0) is streams.stream(0)
    assert streams.stream(0) is not streams.stream(1)


def test_the_engine_runs_its_rounds_through_the_two_thread_path(monkeypatch):
    image, _, boxes = synthetic_scene((64, 64), 5, seed=3)
    sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    cfg = TrainConfig(
        rounds=2, steps_per_round=4, batch_size=2, patch_size=32, width=4, depth=2, device="cpu"
    )
    sequential = list(MutualTrainer(image, sup, cfg))
    streams = FakeStreams()
    monkeypatch.setattr(MutualTrainer, "_streams", lambda self: streams)
    parallel = list(MutualTrainer(image, sup, cfg))
    assert [r.round for r in parallel] == [1, 2]
    assert {name for kind, name, _ in streams.log if kind == "use"} == {"network A", "network B"}
    for p, s in zip(parallel, sequential, strict=True):
        np.testing.assert_allclose([p.loss_a, p.loss_b], [s.loss_a, s.loss_b], rtol=1e-5)
        np.testing.assert_array_equal(p.instances[0], s.instances[0])


def test_networks_built_at_once_in_threads_keep_their_seeds():
    """torch's generator is the process's: concurrent builds must not draw each other's."""
    arch = {"in_channels": 1, "n_classes": 3, "width": 8, "depth": 2}
    expected = {s: build_unet(arch, s).state_dict() for s in range(4)}
    wrong = []

    def build(seed):
        for _ in range(10):
            got = build_unet(arch, seed).state_dict()
            wrong.extend(seed for k, v in got.items() if not torch.equal(v, expected[seed][k]))

    threads = [threading.Thread(target=build, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
