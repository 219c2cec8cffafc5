"""The simulated person of ``benchmarks/correction.py`` on a hand-made scene (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_mutualseg.disagreement import Prediction, cell_disagreement, spots_to_check
from napari_mutualseg.supervision import CELL, IGNORE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import correction


def _scene():
    truth = np.zeros((64, 64), np.int32)
    truth[4:14, 4:14] = 1  # predicted right
    truth[4:14, 40:50] = 2  # predicted far too small
    truth[40:50, 4:14] = 3  # missed, one network sees it
    predicted = np.zeros_like(truth)
    predicted[4:14, 4:14] = 1
    predicted[7:10, 43:46] = 2
    predicted[40:50, 40:50] = 3  # no cell there
    disagreement = np.zeros(truth.shape, np.float32)
    disagreement[40:50, 4:14] = 0.9
    disagreement[4:14, 40:50] = 0.7
    disagreement[40:50, 40:50] = 0.5
    disagreement[4:14, 4:14] = 0.2
    pred = Prediction(
        probabilities=np.zeros((3, 64, 64), np.float32),
        labels=predicted,
        disagreement=disagreement,
        cell_scores=cell_disagreement(predicted, disagreement),
        spots=spots_to_check(predicted, disagreement),
    )
    return truth, pred


def test_guided_person_fixes_the_most_disputed_cells_first_and_leaves_right_ones():
    truth, pred = _scene()
    work = correction.Corrections(truth)
    touched, looked = correction.guided_step([work], [pred], 2, ok_iou=0.8)
    assert (touched, looked) == (2, 0) and work.fixed == {2, 3}
    # what the small predicted cell 2 held beyond the true cell is nothing: no background
    assert not work.cleared.any()
    touched, looked = correction.guided_step([work], [pred], 5, ok_iou=0.8)
    assert (touched, looked) == (1, 1)  # the false cell deleted, the right cell looked at
    assert work.cleared[40:50, 40:50].all() and work.fixed == {2, 3}
    sup = work.supervision(pred.labels)
    assert (sup.classes[6:12, 42:48] == CELL).all() and (sup.classes[42:48, 6:12] == CELL).all()
    assert sup.trusted[truth == 2].all() and sup.trusted[40:50, 40:50].all()
    assert (sup.classes[6:12, 6:12] == IGNORE).all()  # left alone: not trusted


def test_random_person_checks_true_cells_until_k_are_touched():
    truth, pred = _scene()
    work = correction.Corrections(truth)
    rng = np.random.default_rng(0)
    touched, looked = correction.random_step([work], [pred], 5, 0.8, rng)
    assert (touched, looked) == (2, 1) and work.fixed == {2, 3}
    assert correction.best_iou(truth, 1, pred.labels) == 1.0
    assert correction.best_iou(truth, 2, pred.labels) == 9 / 100
