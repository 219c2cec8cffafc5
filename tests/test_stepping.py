"""Training steps and the two-thread round, run on the CPU with the stream calls stood in."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.models import build_unet
from napari_mutualseg.stepping import (
    Cancelled,
    NetworkTrainer,
    PatchSampler,
    TrainingError,
    train_round,
)
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import MutualTrainer, TrainConfig

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

    def new(self):
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
    # each stream first waits for the work queued on the main stream, and is synchronised
    for name in threads:
        kinds = [(kind, other) for kind, who, other in streams.log if who == name]
        assert kinds == [("wait", "main stream"), ("use", None), ("sync", None)]


def test_a_cancel_stops_both_threads_within_a_step():
    cancel = threading.Event()
    cancel.set()
    trainers = _trainers()
    with pytest.raises(Cancelled):
        train_round(trainers, 1000, cancel, 1, FakeStreams())
    assert [t.steps for t in trainers] == [0, 0]


def test_a_failure_in_one_thread_reaches_the_caller():
    image = np.full((48, 48), np.nan, np.float32)
    with pytest.raises(TrainingError, match="NaN in round 3"):
        train_round(_trainers(image), 2, threading.Event(), 3, FakeStreams())


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
