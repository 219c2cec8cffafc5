"""Correct and retrain: where A and B disagree, corrections as training data, proposed boxes."""

import csv

import numpy as np
import pytest
import tifffile
import torch

from helpers import TINY as HELPER_TINY
from napari_mutualseg.boxes import Box, boxes_from_labels
from napari_mutualseg.cli import main
from napari_mutualseg.disagreement import (
    cell_disagreement,
    disagreement_map,
    spots_to_check,
)
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.supervision import (
    BACKGROUND,
    BOUNDARY,
    CELL,
    IGNORE,
    boxes_mask,
    corrected_cells,
    make_supervision,
    supervision_from_masks,
)
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import MutualTrainer, TrainConfig

TINY = {**HELPER_TINY, "min_change": 0.0}
ARCH = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}


@pytest.fixture(scope="module")
def scene():
    image, truth, boxes = synthetic_scene((64, 64), 5, seed=3)
    return image, truth, boxes


def _pair(seed_a, seed_b):
    return ModelPair(build_unet(ARCH, seed_a), build_unet(ARCH, seed_b))


# ---------------------------------------------------------------- disagreement


def test_disagreement_is_zero_where_the_softmaxes_agree_and_one_where_they_part():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(20, 30)).transpose(2, 0, 1).astype(np.float32)
    assert (disagreement_map(p, p) == 0).all()
    q = p.copy()
    q[:, :5] = np.roll(q[:, :5], 1, axis=0)
    d = disagreement_map(p, q)
    assert d.shape == (20, 30) and (d >= 0).all() and (d <= 1).all()
    assert (d[5:] == 0).all() and (d[:5] > 0).all()
    one_hot = np.eye(3, dtype=np.float32)[:, :, None]  # three pixels, one class each
    assert disagreement_map(one_hot, np.roll(one_hot, 1, axis=0)).ravel().tolist() == [1, 1, 1]
    # the same formula on a batch of tensors, class axis 1
    t = torch.from_numpy(np.stack([p, q]))
    np.testing.assert_allclose(disagreement_map(t[:1], t[1:], 1)[0].numpy(), d, atol=1e-6)


def test_prediction_of_identical_networks_has_no_disagreement(scene):
    image = scene[0]
    same = _pair(0, 0).predict(image, tile_size=32, overlap=8)
    assert same.disagreement.shape == image.shape and same.disagreement.dtype == np.float16
    assert (same.disagreement == 0).all()
    assert all(s.score == 0 for s in same.spots)


def test_prediction_of_different_networks_matches_segment_and_ranks_its_cells(scene):
    image = scene[0]
    pair = _pair(0, 1)
    result = pair.predict(image, tile_size=32, overlap=8, min_size=1)
    assert result.disagreement.max() > 0
    assert float(result.disagreement.min()) >= 0 and float(result.disagreement.max()) <= 1
    np.testing.assert_allclose(
        result.probabilities, pair.predict_proba(image, tile_size=32, overlap=8), atol=1e-5
    )
    np.testing.assert_array_equal(
        result.labels, pair.segment(image, tile_size=32, overlap=8, min_size=1)
    )
    assert result.cell_scores.shape == (int(result.labels.max()) + 1,)
    scores = [s.score for s in result.spots]
    assert scores == sorted(scores, reverse=True)


def test_cells_and_regions_are_ranked_by_their_disagreement():
    labels = np.zeros((60, 60), np.int32)
    labels[5:15, 5:15] = 1
    labels[30:40, 5:15] = 4  # ids need not be consecutive
    disagreement = np.zeros((60, 60), np.float32)
    disagreement[30:40, 5:15] = 0.8  # A and B part on cell 4
    disagreement[5:15, 5:15] = 0.1
    disagreement[40:50, 40:50] = 0.9  # a cell only one network sees
    scores = cell_disagreement(labels, disagreement)
    assert scores.shape == (5,) and np.isnan(scores[[0, 2, 3]]).all()
    # the rim (pixels within 2 of the cell, none disputed) dilutes each cell's mean
    assert scores[4] == pytest.approx(0.8 * 100 / (14 * 14 - 4 * 3), rel=1e-5)
    spots = spots_to_check(labels, disagreement)
    assert [(s.kind, s.label) for s in spots] == [("region", 0), ("cell", 4), ("cell", 1)]
    region = spots[0]
    assert region.bbox == (40, 40, 50, 50) and region.area == 100
    assert region.centroid == pytest.approx((44.5, 44.5)) and region.score == pytest.approx(0.9)
    assert spots[1].bbox == (30, 5, 40, 15)


def test_cells_to_check_keep_ids_far_apart():
    """Ids of another tool (10**9): the scores and sums per id took 24 GB."""
    labels = np.zeros((40, 40), np.int64)
    labels[5:15, 5:15], labels[25:35, 5:15] = 1, 2
    disagreement = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    near = spots_to_check(labels, disagreement)
    far = spots_to_check(np.where(labels == 2, 10**9, labels), disagreement)
    assert [s.label for s in far] == [{0: 0, 1: 1, 2: 10**9}[s.label] for s in near]
    assert [(s.score, s.area, s.centroid, s.bbox) for s in far] == [
        (s.score, s.area, s.centroid, s.bbox) for s in near
    ]


# ---------------------------------------------------------------- propose boxes


def test_proposed_boxes_match_the_predicted_cells_exactly(scene):
    truth = scene[1]
    labels = np.where(truth > 0, truth + 10, 0)  # any ids
    boxes = boxes_from_labels(labels)
    ids = np.unique(labels[labels > 0])
    assert len(boxes) == len(ids)
    for box, k in zip(boxes, ids, strict=True):
        ys, xs = np.nonzero(labels == k)
        assert box.pixel_range() == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        # the box holds its cell: every pixel of it lies inside the box
        assert boxes_mask(labels.shape, [box])[labels == k].all()
    sup = make_supervision(labels.shape, boxes)
    assert sup.instances.max() == len(ids)
    assert boxes_from_labels(np.zeros((8, 8), np.int32)) == []
    with pytest.raises(ValueError, match="integer"):
        boxes_from_labels(np.zeros((8, 8), np.float32))


# ---------------------------------------------------------------- corrections


def test_corrected_cells_are_the_changed_ones():
    predicted = np.zeros((20, 20), np.int32)
    predicted[1:5, 1:5] = 1
    predicted[1:5, 10:14] = 2
    predicted[10:14, 1:5] = 3
    predicted[10:14, 10:18] = 4
    corrected = predicted.copy()
    corrected[corrected == 1] = 9  # same cell, another id: unchanged
    corrected[1:5, 10:14] = 0  # deleted
    corrected[14:16, 1:5] = 3  # grown
    corrected[10:14, 14:18] = 5  # split off cell 4
    corrected[17:19, 17:19] = 6  # painted anew
    cells, removed = corrected_cells(predicted, corrected)
    assert cells.tolist() == [3, 4, 5, 6]
    np.testing.assert_array_equal(removed, (predicted == 2))
    unchanged, nothing = corrected_cells(predicted, predicted)
    assert unchanged.size == 0 and not nothing.any()


def _changed_by_sorting(predicted, corrected):
    """``corrected_cells`` as it was first written: the pairs of ids sorted and counted."""
    c, p = corrected.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    some = (c > 0) | (p > 0)
    pairs = np.unique(np.stack([c[some], p[some]]), axis=1)
    ks, k_count = np.unique(pairs[0], return_counts=True)
    js, j_count = np.unique(pairs[1], return_counts=True)
    alone = np.isin(pairs[0], ks[k_count == 1])
    one_k, partner = pairs[0][alone], pairs[1][alone]
    unchanged = one_k[(partner > 0) & np.isin(partner, js[j_count == 1])]
    return np.setdiff1d(np.unique(c[c > 0]), unchanged)


def test_corrected_cells_are_counted_without_sorting_and_found_as_by_sorting(monkeypatch):
    """Sorting every pixel's pair of ids took a second of the main thread at 2048² each time
    a corrected image was added to training; ids that fit are counted instead."""
    _, truth, _ = synthetic_scene((96, 96), 12, seed=4)
    predicted = np.where(truth > 0, truth + 20, 0).astype(np.uint16)
    ids = np.unique(predicted[predicted > 0])
    corrected = predicted.copy()
    corrected[predicted == ids[0]] = 0  # deleted
    corrected[predicted == ids[1]] = 90  # relabelled, unchanged
    corrected[predicted == ids[2]] = ids[3]  # merged
    ys, xs = np.nonzero(predicted == ids[4])
    corrected[ys.min() : ys.min() + 3, xs.min() : xs.max() + 1] = 91  # split off
    corrected[ys.max(), xs.min() : xs.max() + 1] = 0  # trimmed
    corrected[0:3, 0:40] = 92  # painted anew
    corrected[predicted == ids[5]] = 7  # relabelled into an id the prediction leaves free
    corrected[60:63, 0:40] = np.where(predicted[60:63, 0:40] > 0, predicted[60:63, 0:40], 93)
    cases = [(predicted, corrected), (predicted, predicted), (predicted, corrected * 0)]
    with monkeypatch.context() as patch:
        patch.setattr(np, "unique", lambda *a, **k: pytest.fail("the ids were sorted"))
        found = [corrected_cells(p, c) for p, c in cases]
    for (p, c), (cells, removed) in zip(cases, found, strict=True):
        np.testing.assert_array_equal(cells, _changed_by_sorting(p, c))
        np.testing.assert_array_equal(removed, (p > 0) & (c == 0))
    changed = set(found[0][0].tolist())
    assert {ids[3], ids[4], 91, 92} <= changed and not {90, 7} & changed
    assert found[1][0].size == 0 and found[2][0].size == 0 and found[2][1].any()
    # ids that do not fit a count (huge, negative) are renumbered first: the same answer
    rng = np.random.default_rng(1)
    for _ in range(30):
        p = rng.integers(0, 4, (6, 7)) * rng.choice([1, -1, 2**40], (6, 7))
        c = np.where(rng.random((6, 7)) < 0.8, p, rng.integers(-1, 5, (6, 7)))
        np.testing.assert_array_equal(corrected_cells(p, c)[0], _changed_by_sorting(p, c))


def test_cell_classes_find_the_boundaries_skimage_finds_without_its_grey_morphology(
    monkeypatch,
):
    """skimage's find_boundaries took a tenth of a second per supervision at 2048² (its grey
    dilation and erosion): neighbours compared along each axis give the same pixels."""
    from skimage.segmentation import find_boundaries

    from napari_mutualseg import supervision

    rng = np.random.default_rng(2)
    images = [synthetic_scene((48, 48), 6, seed=1)[1], np.zeros((3, 4), int)]
    images += [rng.integers(0, 4, (rng.integers(1, 9), rng.integers(1, 9))) for _ in range(40)]
    with monkeypatch.context() as patch:
        patch.setattr(supervision.ndi, "grey_dilation", lambda *a, **k: pytest.fail("grey"))
        found = [supervision._cell_classes(labels, 1) for labels in images]
    for labels, classes in zip(images, found, strict=True):
        edge = find_boundaries(labels, mode="inner") & (labels > 0)
        np.testing.assert_array_equal(classes == BOUNDARY, edge)
        np.testing.assert_array_equal(classes == CELL, (labels > 0) & ~edge)


def test_masks_make_trusted_cells_with_a_background_ring_and_ignore_the_rest():
    labels = np.zeros((48, 48), np.int32)
    labels[10:20, 10:20] = 1
    labels[10:20, 20:30] = 2  # touches cell 1 but is not trusted
    gone = np.zeros_like(labels, bool)
    gone[40:44, 40:44] = True
    box = Box.from_corners(30, 4, 40, 16)
    sup = supervision_from_masks(labels, cells=[1], background=gone, boxes=[box])
    c = sup.classes
    assert (c[11:19, 11:19] == CELL).all() and (c[10, 10:20] == BOUNDARY).all()
    assert (c[19, 10:20] == BOUNDARY).all() and (c[10:20, 19] == BOUNDARY).all()
    assert (c[8:10, 12] == BACKGROUND).all() and c[7, 12] == IGNORE  # a 2-pixel ring
    assert (c[12:18, 21:29] == IGNORE).all()  # the untrusted neighbour stays unknown
    assert (c[gone] == BACKGROUND).all() and sup.trusted[gone].all()
    assert sup.trusted[labels == 1].all() and not sup.trusted[labels == 2].any()
    assert len(sup.boxes) == 1 and c[34, 9] == CELL and not sup.trusted[34, 9]
    assert c[2, 40] == IGNORE
    # the box as a row, or a table's columns, or no boxes said as None: the same
    rows = supervision_from_masks(labels, cells=[1], background=gone, boxes=[[30, 4, 40, 16]])
    table = {"y0": [30], "x0": [4], "y1": [40], "x1": [16]}
    columns = supervision_from_masks(labels, cells=[1], background=gone, boxes=table)
    np.testing.assert_array_equal(rows.classes, c)
    np.testing.assert_array_equal(columns.classes, c)
    unboxed = supervision_from_masks(labels, cells=[1], boxes=None)
    assert not unboxed.boxes and unboxed.classes[34, 9] == IGNORE
    whole = supervision_from_masks(labels, rest="trusted")
    np.testing.assert_array_equal(
        whole.classes == CELL, np.isin(labels, [1, 2]) & (whole.classes != BOUNDARY)
    )
    assert whole.trusted.all() and (whole.classes[labels == 0] == BACKGROUND).all()
    with pytest.raises(ValueError, match="Nothing to learn"):
        supervision_from_masks(np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="rest"):
        supervision_from_masks(labels, rest="maybe")


def test_corrected_masks_stay_trusted_in_every_round_when_training_resumes(scene):
    image, _, boxes = scene
    boxed = make_supervision(image.shape, boxes)
    first = MutualTrainer(image, boxed, TrainConfig(**{**TINY, "rounds": 1}))
    list(first)
    # a new image: two of its cells corrected, one missed cell boxed, the rest ignored
    new_image, new_truth, new_boxes = synthetic_scene((64, 64), 5, seed=7)
    fixed = np.unique(new_truth[new_truth > 0])[:2]
    missed = Box.from_corners(*new_boxes[-1])
    sup = supervision_from_masks(new_truth, cells=fixed, boxes=[missed])
    trusted = sup.trusted
    assert (
        trusted.any()
        and (sup.classes[~trusted & ~boxes_mask(image.shape, [missed])] == IGNORE).all()
    )
    trainer = MutualTrainer([image, new_image], [boxed, sup], TrainConfig(**TINY), pair=first.pair)
    reports = list(trainer)
    assert len(reports) == 2 and len(trainer.pair.history) == 3
    for report in reports:
        for labels in (report.labels_a[1], report.labels_b[1]):
            np.testing.assert_array_equal(labels[trusted], sup.classes[trusted])
        assert len(report.disagreement) == 2
        assert report.disagreement[1].dtype == np.float16
        assert report.disagreement[1].shape == new_image.shape


def test_an_image_of_masks_alone_trains(scene):
    image, truth, _ = scene
    sup = supervision_from_masks(truth, rest="trusted")
    assert sup.boxes == []
    report = list(MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1})))[-1]
    assert report.found == 1.0  # no boxes, nothing missing
    np.testing.assert_array_equal(report.labels_a[0], sup.classes)


# ---------------------------------------------------------------- command line


def test_predict_writes_the_disagreement_map_and_the_cells_to_check(scene, tmp_path, capsys):
    image = (scene[0] * 1000).astype(np.uint16)
    pair = _pair(0, 1)
    with torch.no_grad():
        pair.model_a.head.bias.copy_(torch.tensor([0.0, 9.0, 0.0]))  # A: cell everywhere
    model = pair.save(tmp_path / "pair.pt")
    spots = pair.predict(image).spots
    assert len(spots) == 1
    img = tmp_path / "new.tif"
    tifffile.imwrite(img, image)
    out, maps = tmp_path / "pred", tmp_path / "maps"
    argv = ["predict", model, img, "--out", out, "--disagreement-out", maps, "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    tif = tifffile.imread(maps / "new_disagreement.tif")
    assert tif.dtype == np.uint8 and tif.shape == image.shape and tif.max() > 0
    with open(maps / "new_disagreement.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0])[:4] == ["rank", "kind", "label", "score"]
    assert (rows[0]["rank"], rows[0]["kind"], rows[0]["label"]) == ("1", "cell", "1")
    assert float(rows[0]["score"]) == pytest.approx(spots[0].score, abs=1e-4)
    # a complete image is never done again without --overwrite
    before = (maps / "new_disagreement.csv").stat().st_mtime_ns
    assert main([str(a) for a in argv]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert (maps / "new_disagreement.csv").stat().st_mtime_ns == before
