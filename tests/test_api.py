"""The Python API as a notebook uses it: what its objects print, and the inputs it takes."""

import pytest

from helpers import TINY, disc_image
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.training import MutualTrainer, TrainConfig


@pytest.fixture(scope="module")
def trained():
    image, boxes = disc_image()
    trainer = MutualTrainer(
        image,
        make_supervision(image.shape, boxes),
        TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1}),
    )
    return trainer, list(trainer)


def test_reports_trainer_and_pair_print_what_they_are_in_a_line(trained):
    trainer, reports = trained
    report = repr(reports[-1])
    assert report.startswith("RoundReport(round=1, rounds=1, loss_a=")
    assert "planes=[64 x 64]" in report and "array" not in report
    assert repr(trainer).startswith("MutualTrainer(1 plane (64 x 64), 1 of up to 1 rounds done")
    pair = repr(trainer.pair)
    assert pair.startswith("ModelPair(two U-Nets of depth 2, width 4; input 1 channel")
    assert "1 round trained; on cpu" in pair and "Conv2d" not in pair
