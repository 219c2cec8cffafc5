import time

import numpy as np
import pytest

from napari_mutualseg import metrics
from napari_mutualseg.metrics import evaluate, match_instances, mean_metrics

KEYS = {"precision", "recall", "f1", "f1_50", "ap_50", "ap_75", "map", "aji", "dice"}


def strip(*runs, width=14):
    """A 1 x width label row; each run is (label, first column, last column + 1)."""
    out = np.zeros((1, width), dtype=np.int32)
    for label, a, b in runs:
        out[0, a:b] = label
    return out


def test_shifted_squares_iou_one_third():
    gt = np.zeros((4, 5), dtype=np.uint16)
    pred = np.zeros((4, 5), dtype=np.int32)
    gt[0:2, 0:2] = 1
    pred[0:2, 1:3] = 1  # shares one column: intersection 2, union 6
    m = match_instances(pred, gt, threshold=0.5)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert m.precision == m.recall == m.f1 == m.ap == 0.0
    m = match_instances(pred, gt, threshold=0.3)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert m.ious.tolist() == [pytest.approx(1 / 3)]
    assert m.gt_ids.tolist() == [1] and m.pred_ids.tolist() == [1]
    assert m.ap == m.f1 == 1.0
    r = evaluate(pred, gt)
    assert r["dice"] == pytest.approx(0.5)  # 2 * 2 / (4 + 4)
    assert r["aji"] == pytest.approx(1 / 3)  # one pair: 2 / 6
    assert r["map"] == 0.0 and r["n_pred"] == r["n_gt"] == 1


# Three ground-truth objects on one row (columns):
#   G1 = 0..3 (4 px), G2 = 4..7 (4 px), G3 = 10..11 (2 px)
#   P1 = 0..5 (6 px), P2 = 6..7 (2 px), P3 = 12..13 (2 px)
# IoU: G1-P1 = 4/6, G2-P1 = 2/8, G2-P2 = 2/4, G3 touches nothing, P3 touches nothing.
# Matching at 0.5: G1-P1, G2-P2 -> TP 2, FP 1 (P3), FN 1 (G3): P = R = F1 = 2/3, AP = 2/4.
# Matching at 0.75: nothing -> AP 0.
# AJI: G1 -> P1 (I 4, U 6), G2 -> P2 (I 2, U 4), G3 unmatched (U += 2), P3 unused (U += 2):
#   (4 + 2) / (6 + 4 + 2 + 2) = 6 / 14 = 3 / 7.
# Dice: foreground 10 px each, overlapping on columns 0..7 -> 2 * 8 / 20 = 0.8.
GT3 = strip((1, 0, 4), (2, 4, 8), (3, 10, 12))
PRED3 = strip((1, 0, 6), (2, 6, 8), (3, 12, 14))


def test_three_object_case_by_hand():
    m = match_instances(PRED3, GT3)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert sorted(m.ious.tolist()) == [pytest.approx(0.5), pytest.approx(4 / 6)]
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.ap == pytest.approx(0.5)
    r = evaluate(PRED3, GT3)
    assert set(r) == KEYS | {"n_pred", "n_gt"}
    assert r["aji"] == pytest.approx(3 / 7)
    assert r["dice"] == pytest.approx(0.8)
    assert r["ap_50"] == pytest.approx(0.5) and r["ap_75"] == 0.0
    # AP: 2/4 at t = 0.5; 1/5 at 0.55, 0.6, 0.65 (only G1-P1 = 0.667: TP 1, FP 2, FN 2); then 0.
    assert r["map"] == pytest.approx((0.5 + 3 * 0.2) / 10)
    assert r["f1"] == r["f1_50"] == pytest.approx(2 / 3)


def test_aji_classic_reuses_a_prediction():
    # One prediction over two ground-truth halves: both pick it, I = 2 + 2, U = 4 + 4.
    gt = strip((1, 0, 2), (2, 2, 4), width=4)
    pred = strip((1, 0, 4), width=4)
    assert evaluate(pred, gt)["aji"] == pytest.approx(0.5)


def test_assignment_maximises_matches_below_one_half():
    # G1 = 0..5, G2 = 6..9; P1 = 2..7, P2 = 0..1.
    # IoU: G1-P1 = 4/8, G2-P1 = 2/8, G1-P2 = 2/6. Greedy (best first) would take G1-P1 and
    # leave G2 alone; the optimal assignment at 0.25 matches G1-P2 and G2-P1.
    gt = strip((1, 0, 6), (2, 6, 10), width=10)
    pred = strip((1, 2, 8), (2, 0, 2), width=10)
    m = match_instances(pred, gt, threshold=0.25)
    assert m.tp == 2
    assert dict(zip(m.gt_ids.tolist(), m.pred_ids.tolist(), strict=True)) == {1: 2, 2: 1}
    assert sorted(m.ious.tolist()) == [pytest.approx(0.25), pytest.approx(1 / 3)]
    assert match_instances(pred, gt, threshold=0.5).tp == 1


def test_tie_at_one_half_counts_one_match():
    gt = strip((1, 0, 2), (2, 2, 4), width=4)
    pred = strip((7, 0, 4), width=4)
    m = match_instances(pred, gt, threshold=0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_a_tie_is_matched_alone_not_with_every_object_of_the_image(monkeypatch):
    """One tie at IoU 0.5 among many matched cells: its own 2 x 1 assignment, where one of
    every candidate of the image took 23 s and 2.5 GB for 10,000 cells."""
    from scipy.optimize import linear_sum_assignment

    sizes = []

    def recorded(score, **kwargs):
        sizes.append(score.shape)
        return linear_sum_assignment(score, **kwargs)

    monkeypatch.setattr(metrics, "linear_sum_assignment", recorded)
    gt = np.kron(np.arange(1, 101).reshape(10, 10), np.ones((3, 3), int))
    pred = gt.copy()
    gt[:3, :3] = pred[:3, :3] = 0
    gt[0, :2] = [500, 501]  # two 1-pixel cells, predicted as one: IoU 0.5 with each
    pred[0, :2] = 900
    m = match_instances(pred, gt)
    assert (m.tp, m.fp, m.fn) == (100, 0, 1)
    assert sizes == [(2, 1)]


def random_labels(rng, shape=(64, 80), n=25):
    out = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(3, 9, size=2)
        out[y : y + h, x : x + w] = k
    return out


def relabel(labels, ids):
    lut = np.zeros(labels.max() + 1, dtype=np.int64)
    lut[1:] = ids
    return lut[labels]


@pytest.mark.parametrize("big", [False, True])
def test_non_consecutive_and_permuted_ids(big):
    rng = np.random.default_rng(0)
    gt = random_labels(rng)
    pred = np.roll(random_labels(np.random.default_rng(0)), 1, axis=1)
    pred[10:20, 10:20] = 99  # an extra object
    ref = evaluate(pred, gt)
    n_gt, n_pred = gt.max(), pred.max()
    scale = 2**40 if big else 1000  # huge ids go through np.unique instead of a lookup table
    gt2 = relabel(gt, rng.permutation(n_gt) * scale + 7)
    pred2 = relabel(pred, rng.permutation(n_pred) * 3 + 5)
    got = evaluate(pred2, gt2)
    assert got == pytest.approx(ref)
    assert 0 < ref["ap_50"] < 1


def test_swapping_pred_and_gt_swaps_precision_and_recall():
    rng = np.random.default_rng(1)
    a = random_labels(rng)
    b = np.roll(random_labels(rng), 1, axis=0)
    ab, ba = evaluate(a, b), evaluate(b, a)
    assert ab["precision"] == pytest.approx(ba["recall"])
    assert ab["recall"] == pytest.approx(ba["precision"])
    for k in ("f1", "ap_50", "map", "dice"):
        assert ab[k] == pytest.approx(ba[k])


def test_dense_and_sparse_tables_agree(monkeypatch):
    rng = np.random.default_rng(2)
    gt = random_labels(rng)
    pred = np.roll(random_labels(rng), 2, axis=1)
    ref = evaluate(pred, gt)
    monkeypatch.setattr(metrics, "_DENSE_TABLE_LIMIT", 0)
    assert evaluate(pred, gt) == pytest.approx(ref)


def test_a_stack_is_scored_part_by_part_in_the_memory_of_a_few_parts(monkeypatch):
    """Scoring held 46 bytes a voxel besides the two stacks (two 1 GB stacks: 12 GB more)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    gt = np.stack([random_labels(rng, (128, 128), 40) for _ in range(64)])
    pred = np.roll(gt, 1, axis=2) * 3
    whole = evaluate(pred, gt)
    monkeypatch.setattr(metrics, "_CHUNK", 2048)
    tracemalloc.start()
    try:
        parts = evaluate(pred, gt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parts == pytest.approx(whole)
    assert peak < 2 * gt.size, f"{peak / gt.size:.1f} bytes a voxel"


def test_overlap_counts_are_each_pairs_shared_pixels_with_a_table_or_sorted_keys(monkeypatch):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 5, (12, 16)) * 1000  # ids far apart, as linked labels are
    b = rng.integers(0, 7, (12, 16))
    pairs = [(i, j) for i in range(1000, 5000, 1000) for j in range(1, 7)]
    expected = [(i, j, int(np.sum((a == i) & (b == j)))) for i, j in pairs]
    expected = [pair for pair in expected if pair[2]]
    for limit in (metrics._DENSE_TABLE_LIMIT, 0):  # a table for small ids, else sorted keys
        monkeypatch.setattr(metrics, "_DENSE_TABLE_LIMIT", limit)
        counted = metrics.overlap_counts(a, b)
        assert [tuple(map(int, pair)) for pair in zip(*counted, strict=True)] == expected
        assert all(x.dtype == np.int64 for x in counted)
    small = a // 1000  # ids 1..4: counted in a table
    assert metrics.overlap_counts(small, b)[2].sum() == np.sum((small > 0) & (b > 0))


def test_overlap_counts_of_uint64_ids_and_ids_near_2_to_the_32():
    """uint64 labels made float keys (and float ids, which linking cannot index with); two
    images of ids near 2**32 overflowed the int64 key of a pair."""
    a = np.array([[3, 3, 2**32 - 2, 0]], np.uint64)
    b = np.array([[2**32 - 1, 2**32 - 1, 5, 5]], np.uint32)
    for x, y in ((a, b.astype(np.uint64)), (a.astype(np.uint32), b)):
        counted = metrics.overlap_counts(x, y)
        assert [c.tolist() for c in counted] == [[3, 2**32 - 2], [2**32 - 1, 5], [2, 1]]
        assert all(c.dtype == np.int64 for c in counted)


def test_identical_images_are_perfect():
    gt = random_labels(np.random.default_rng(3))
    r = evaluate(gt.copy(), gt)
    for k in KEYS:
        assert r[k] == 1.0, k
    assert r["n_pred"] == r["n_gt"] == len(np.unique(gt)) - 1


@pytest.mark.filterwarnings("error")
def test_empty_images():
    empty = np.zeros((5, 6), dtype=np.uint16)
    one = empty.copy()
    one[1:3, 1:3] = 4
    both = evaluate(empty, empty)
    assert all(both[k] == 1.0 for k in KEYS)
    assert both["n_pred"] == both["n_gt"] == 0
    for pred, gt in ((empty, one), (one, empty)):
        r = evaluate(pred, gt)
        assert all(r[k] == 0.0 for k in KEYS), r
        m = match_instances(pred, gt)
        assert m.precision == m.recall == m.f1 == m.ap == 0.0
    m = match_instances(empty, empty)
    assert (m.tp, m.fp, m.fn) == (0, 0, 0) and m.ap == 1.0


def test_bool_input_and_errors():
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True
    assert evaluate(gt, gt)["ap_50"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate(gt, gt[:3])
    with pytest.raises(TypeError):
        evaluate(gt.astype(float), gt)
    with pytest.raises(ValueError, match="negative"):
        evaluate(-gt.astype(int), gt)
    with pytest.raises(ValueError, match="threshold"):
        match_instances(gt, gt, threshold=0.0)


def test_mean_metrics():
    a = {"f1": 1.0, "aji": 0.5, "n_gt": 2}
    b = {"f1": 0.0, "aji": 0.25, "n_gt": 4}
    assert mean_metrics([a, b]) == {"f1": 0.5, "aji": 0.375, "n_gt": 3.0}
    with pytest.raises(ValueError):
        mean_metrics([])
    with pytest.raises(ValueError):
        mean_metrics([a, {"f1": 1.0}])


def test_fast_on_full_size_image():
    # ~220 objects on a 520 x 696 image, predictions shifted by a pixel, some merged or missing.
    gt = np.zeros((520, 696), dtype=np.uint16)
    k = 0
    for y in range(5, 505, 25):
        for x in range(5, 690, 62):
            k += 1
            gt[y : y + 20, x : x + 18 + (k % 5)] = k
    pred = np.roll(gt, 1, axis=1).astype(np.int32) * 3
    pred[::50] = 0
    assert k >= 200
    evaluate(pred, gt)  # warm up
    best = min(_timed(evaluate, pred, gt) for _ in range(3))
    assert best < 0.25, f"evaluate took {best:.3f} s"


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _reference(pred, gt, thresholds):
    """Every score from its definition: an IoU matrix of every pair, one-to-one matching that
    maximises the matches at IoU >= t, and AJI as Kumar et al. (2017)."""
    from scipy.optimize import linear_sum_assignment

    gt_ids = [i for i in np.unique(gt) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(gt_ids), len(pred_ids)))
    for a, g in enumerate(gt_ids):
        for b, p in enumerate(pred_ids):
            iou[a, b] = ((gt == g) & (pred == p)).sum() / ((gt == g) | (pred == p)).sum()

    def counts(t):
        allowed = (iou >= t).astype(float)
        tp = int(allowed[linear_sum_assignment(-allowed)].sum()) if iou.size else 0
        return tp, len(pred_ids) - tp, len(gt_ids) - tp

    def ap(t):
        tp, fp, fn = counts(t)
        return tp / (tp + fp + fn) if tp + fp + fn else 1.0

    tp, fp, fn = counts(0.5)
    inter = union = 0
    used = set()
    for a, g in enumerate(gt_ids):
        if not pred_ids or iou[a].max() == 0:
            union += (gt == g).sum()
            continue
        b = int(np.argmax(iou[a]))
        used.add(b)
        inter += ((gt == g) & (pred == pred_ids[b])).sum()
        union += ((gt == g) | (pred == pred_ids[b])).sum()
    union += sum((pred == p).sum() for b, p in enumerate(pred_ids) if b not in used)
    both = (pred > 0).sum() + (gt > 0).sum()
    return {
        "precision": tp / (tp + fp) if tp + fp else float(fn == 0),
        "recall": tp / (tp + fn) if tp + fn else float(fp == 0),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "ap_50": ap(0.5),
        "ap_75": ap(0.75),
        "map": float(np.mean([ap(t) for t in thresholds])),
        "aji": inter / union if union else 1.0,
        "dice": 2 * ((pred > 0) & (gt > 0)).sum() / both if both else 1.0,
        "n_pred": len(pred_ids),
        "n_gt": len(gt_ids),
    }


def _boxes(rng, shape, n, most):
    """Up to ``n`` overlapping random boxes with random non-consecutive ids below ``most``."""
    out = np.zeros(shape, np.int64)
    for label in rng.choice(np.arange(1, most), size=n, replace=False):
        start = [int(rng.integers(0, s)) for s in shape]
        stop = [c + int(rng.integers(1, s // 2 + 2)) for c, s in zip(start, shape, strict=True)]
        out[tuple(map(slice, start, stop))] = label
    return out


def test_every_score_agrees_with_its_definition_on_random_labels():
    rng = np.random.default_rng(7)
    for case in range(120):
        shape = tuple(rng.integers(3, 14, size=2 if case % 3 else 3))
        gt = _boxes(rng, shape, rng.integers(0, 6), rng.choice([7, 10**6]))
        pred = gt if case % 5 == 0 else _boxes(rng, shape, rng.integers(0, 6), 1000)
        pred = np.where(rng.random(shape) < 0.1, 0, pred).astype(rng.choice([np.uint16, np.int32]))
        got = evaluate(pred, gt)
        for key, value in _reference(pred, gt, metrics.DEFAULT_THRESHOLDS).items():
            assert got[key] == pytest.approx(value), (case, key)
        # below 0.5 an object may have several candidates: the most matches still
        low = match_instances(pred, gt, threshold=0.2).ap
        assert low == pytest.approx(_reference(pred, gt, (0.2,))["map"]), case


def test_class_maps_and_masks_are_not_taken_for_instance_labels():
    from napari_mutualseg.metrics import not_instance_labels
    from napari_mutualseg.supervision import make_supervision

    truth = np.zeros((40, 60), np.int32)
    for k, x in enumerate(range(2, 58, 12)):
        truth[5:15, x : x + 8] = k + 1
    boxes = np.array([(5, x, 15, x + 8) for x in range(2, 58, 12)])
    classes = make_supervision(truth.shape, boxes).classes
    assert "class map" in not_instance_labels(classes)
    assert "a mask" in not_instance_labels((truth > 0).astype(np.uint8))
    assert "a mask" in not_instance_labels((truth > 0) * 255)
    assert not_instance_labels(truth) is None
    two = np.where(truth > 2, 0, truth)  # two objects, labels 1 and 2: instances
    assert not_instance_labels(two) is None
    assert not_instance_labels(np.zeros((8, 8), np.uint8)) is None
    with pytest.warns(UserWarning, match="gt does not look like instance labels.*class map"):
        evaluate(truth, classes)


def test_labels_and_masks_are_told_from_microscope_images_dim_ones_included():
    from skimage.draw import disk

    from napari_mutualseg.metrics import label_evidence
    from napari_mutualseg.synthetic import synthetic_scene

    image, truth, _ = synthetic_scene((128, 128), 12, seed=3)
    assert label_evidence(truth).labels is True
    assert label_evidence((truth > 0).astype(np.uint8) * 255).labels is True  # a mask
    assert label_evidence(truth > 0).labels is True
    assert label_evidence(np.ones((64, 64), np.uint8)).labels is None  # a blank field
    tiny = (np.arange(64)[:, None] // 3) * 100 + np.arange(64)[None] // 3 + 1
    assert label_evidence(tiny).labels is True  # touching cells 3 pixels wide
    rings = np.zeros((128, 128), np.int32)  # cells with holes: a row crosses each twice
    for k, (y, x) in enumerate(np.ndindex(4, 4)):
        rings[disk((16 + 32 * y, 16 + 32 * x), 12)] = k + 1
        rings[disk((16 + 32 * y, 16 + 32 * x), 4)] = 0
    assert label_evidence(rings).labels is True
    assert label_evidence(image).labels is False
    assert label_evidence((image * 4000).astype(np.uint16)).labels is False
    # dim 8-bit pictures with a background of exact zeros and a few grey levels: a row
    # crosses each level many times, where it crosses each cell once
    for gain in (40, 8, 4, 1.5):
        dim = np.clip(np.round((image - 0.2) * gain), 0, 255).astype(np.uint8)
        assert label_evidence(dim).labels is False, gain
    rng = np.random.default_rng(0)
    assert label_evidence(rng.poisson(0.5, (64, 64)).astype(np.uint8)).labels is False
    # one grey level in specks is a nearly empty image, not a mask
    specks = (rng.random((64, 64)) < 0.3).astype(np.uint8)
    assert label_evidence(specks).labels is False
    assert label_evidence(np.zeros((32, 32), np.uint16)).labels is None
    assert label_evidence(np.zeros((0, 0))).labels is None  # no pixel: it cannot tell
    # a stack is looked at plane by plane, whatever its size
    assert label_evidence(np.stack([truth] * 3)).labels is True
    assert "differ" in label_evidence(image).describe()


def test_evaluate_refuses_a_dim_8_bit_image_given_for_labels(tmp_path, capsys):
    """Its few grey levels made most neighbours equal: scored as labels of thousands of
    'cells'."""
    import tifffile

    from napari_mutualseg.cli import main
    from napari_mutualseg.synthetic import synthetic_scene

    image, truth, _ = synthetic_scene((96, 96), 8, seed=1)
    dim = np.clip(np.round((image - 0.2) * 4), 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    tifffile.imwrite(tmp_path / "gt.tif", truth.astype(np.uint16))
    assert main(["evaluate", str(tmp_path / "dim.tif"), str(tmp_path / "gt.tif")]) == 2
    err = capsys.readouterr().err
    assert "dim.tif looks like a microscope image, not labels" in err and "per row" in err
    assert main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif")]) == 0


def test_a_microscope_image_scored_as_labels_is_warned_of():
    from napari_mutualseg.sample import load_sample

    sample = load_sample()
    with pytest.warns(
        UserWarning, match="pred does not look like instance labels: it looks like a microscope"
    ):
        scores = evaluate(sample.image, sample.ground_truth)
    assert scores["f1"] == 0.0
