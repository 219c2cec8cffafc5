import dataclasses
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.measure import regionprops

from napari_mutualseg import exchange, training
from napari_mutualseg.checkpoint import ARCH_LIMITS
from napari_mutualseg.exchange import ExchangeContext, exchange_labels, found_fraction
from napari_mutualseg.images import AxisImage
from napari_mutualseg.inference import predict_proba
from napari_mutualseg.metrics import evaluate
from napari_mutualseg.supervision import (
    BOUNDARY,
    CELL,
    IGNORE,
    Box,
    boxes_from_shapes,
    boxes_mask,
    make_supervision,
)
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import ExchangeSettings, MutualTrainer, TrainConfig, TrainingError

# tiny networks train faster on one torch thread (conftest.py)

TINY = {
    "rounds": 2,
    "steps_per_round": 4,
    "batch_size": 2,
    "patch_size": 32,
    "width": 4,
    "depth": 2,
    "device": "cpu",
    "min_change": 0.0,
}


@pytest.fixture(scope="module")
def scene():
    image, gt, boxes = synthetic_scene((64, 64), 5, seed=3)
    return image, gt, make_supervision(image.shape, boxes_from_shapes(boxes))


def test_reports_one_per_round_with_everything(scene):
    image, _, sup = scene
    trainer = MutualTrainer([image, image[::-1].copy()], [sup, _flip(sup)], TrainConfig(**TINY))
    reports = list(trainer)
    assert [r.round for r in reports] == [1, 2]
    for r in reports:
        assert r.rounds == 2 and r.device == "cpu" and r.seconds > 0
        assert np.isfinite([r.loss_a, r.loss_b]).all()
        for name in ("classes_a", "classes_b", "instances"):
            maps = getattr(r, name)
            assert len(maps) == 2 and maps[0].shape == image.shape
        assert set(np.unique(r.labels_a[0])) <= {0, CELL, BOUNDARY, IGNORE}
        assert 0.0 <= r.changed <= 1.0
    assert trainer.step == trainer.total_steps == 2 * 2 * 4
    # the history saved with the model says what each report said of its round's cells
    assert [(h["found"], h["converged"]) for h in trainer.pair.history] == [
        (r.found, r.converged) for r in reports
    ]


def test_a_rounds_seconds_count_all_its_work(scene, monkeypatch):
    # a clock that moves only while A and B's disagreement is mapped, the report's last part
    image, _, sup = scene
    clock, disagreement_map = [0.0], training.disagreement_map

    def slow_disagreement(pa, pb):
        clock[0] += 10.0
        return disagreement_map(pa, pb)

    monkeypatch.setattr(training, "disagreement_map", slow_disagreement)
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1})
    (report,) = MutualTrainer(image, sup, cfg)
    assert report.seconds == 10.0


def _flip(sup):
    return make_supervision(
        sup.classes.shape,
        [
            b.__class__(
                (sup.classes.shape[0] - 1 - b.center[0], b.center[1]), b.half_sizes, -b.angle
            )
            for b in sup.boxes
        ],
    )


def test_each_network_learns_from_the_other(scene):
    """A's next labels come from B's prediction and B's from A's, never from themselves."""
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 25, "width": 8})
    trainer = MutualTrainer(image, sup, cfg)
    report = next(iter(trainer))
    ctx: ExchangeContext = trainer.contexts[0]
    x = trainer.images[0]
    cpu = torch.device("cpu")
    from_a = ctx.combine(predict_proba([trainer.pair.model_a], x, cpu), ExchangeSettings())
    from_b = ctx.combine(predict_proba([trainer.pair.model_b], x, cpu), ExchangeSettings())
    assert not np.array_equal(from_a, from_b), "the two networks should disagree somewhere"
    np.testing.assert_array_equal(report.labels_a[0], from_b)
    np.testing.assert_array_equal(report.labels_b[0], from_a)


def test_reproducible_on_cpu_and_models_differ(scene):
    image, _, sup = scene
    runs = [list(MutualTrainer(image, sup, TrainConfig(**TINY))) for _ in range(2)]
    assert runs[0][-1].loss_a == runs[1][-1].loss_a
    np.testing.assert_array_equal(runs[0][-1].labels_b[0], runs[1][-1].labels_b[0])
    assert runs[0][-1].loss_a != runs[0][-1].loss_b  # different initialisation


def test_cancel_stops_within_a_step_and_keeps_last_round(scene):
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 3, "steps_per_round": 5})
    trainer = MutualTrainer(image, sup, cfg)
    reports, states = [], []
    reached, cancelled, at_cancel = threading.Event(), threading.Event(), []
    forwards = []

    def cancel_in_round_2(module, inputs, output):
        # A's third step of round 2 waits here while another thread cancels: no timing
        forwards.append(module.training)
        if forwards.count(True) == 5 + 3:
            at_cancel.append(trainer.step)
            reached.set()
            cancelled.wait(60)

    trainer.pair.model_a.register_forward_hook(cancel_in_round_2)

    def run():
        for r in trainer:
            reports.append(r)
            states.append({k: v.clone() for k, v in trainer.pair.model_a.state_dict().items()})

    thread = threading.Thread(target=run)
    thread.start()
    assert reached.wait(60)
    trainer.cancel()
    cancelled.set()
    thread.join(60)
    assert not thread.is_alive()
    assert at_cancel == [5 + 5 + 2]
    assert trainer.step == at_cancel[0] + 1  # the step under way, and no other
    assert len(reports) == 1
    for k, v in trainer.pair.model_a.state_dict().items():
        torch.testing.assert_close(v, states[-1][k])


def test_resume_continues_from_a_pair(scene):
    image, _, sup = scene
    first = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}))
    list(first)
    before = {k: v.clone() for k, v in first.pair.model_a.state_dict().items()}
    resumed = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=first.pair)
    report = next(iter(resumed))
    assert report.round == 1 and len(resumed.pair.history) == 2
    # the pair handed in is left untouched
    for k, v in first.pair.model_a.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_a_resumed_pair_trains_on_other_crops_than_in_its_first_rounds(scene):
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1})

    def crops(trainer):
        seen = []

        def record(module, inputs, output):
            if module.training:
                seen.append(inputs[0].clone())

        trainer.pair.model_a.register_forward_hook(record)
        list(trainer)
        return seen[0]

    first = MutualTrainer(image, sup, cfg)
    drawn = crops(first)
    resumed = [crops(MutualTrainer(image, sup, cfg, pair=first.pair)) for _ in range(2)]
    assert not torch.equal(resumed[0], drawn)
    assert torch.equal(resumed[0], resumed[1])  # and the same ones again: reproducible


def test_user_edits_are_trusted(scene):
    image, _, sup = scene
    edited = sup.classes.copy()
    edited[:4, :4] = CELL  # the user painted a cell where the boxes said background
    ctx = ExchangeContext.build(sup, edited)
    assert (ctx.initial[:4, :4] == CELL).all()
    proba = np.zeros((3, *image.shape), np.float32)
    proba[0] = 1.0  # a peer that sees only background
    assert (ctx.combine(proba, ExchangeSettings())[:4, :4] == CELL).all()


def test_confident_exchange_ignores_unsure_pixels_and_keeps_objects_in_their_box(scene):
    image, _, sup = scene
    ctx = ExchangeContext.build(sup)
    proba = np.full((3, *image.shape), 1 / 3, np.float32)  # a peer unsure everywhere
    label = ctx.combine(proba, ExchangeSettings())
    inside_not_core = ctx.in_box & ~ctx.core
    assert (label[inside_not_core & (ctx.initial == IGNORE)] == IGNORE).all()
    # a peer that calls the whole image cell: objects must still stop at their boxes
    proba = np.zeros_like(proba)
    proba[1] = 1.0
    label = ctx.combine(proba, ExchangeSettings())
    assert ((label == CELL) & ~ctx.in_box).sum() == 0


def test_bad_inputs_are_refused_clearly(scene):
    image, _, sup = scene
    with pytest.raises(ValueError, match="one supervision"):
        MutualTrainer([image, image], [sup], TrainConfig(**TINY))
    with pytest.raises(ValueError, match="constant"):
        MutualTrainer(np.ones_like(image), sup, TrainConfig(**TINY))
    bad = image.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN .*in Fiji, Process > Math > Remove NaNs"):
        MutualTrainer(bad, sup, TrainConfig(**TINY))
    with pytest.raises(ValueError, match="RGB"):
        MutualTrainer(np.stack([image] * 3, -1), sup, TrainConfig(**TINY))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=5.0)
    with pytest.raises(ValueError, match="shape"):
        MutualTrainer(image[:40], sup, TrainConfig(**TINY))


@pytest.mark.parametrize("settings", ["fast", TrainConfig], ids=["text", "the class"])
def test_settings_of_another_kind_are_refused_saying_how_to_give_them(scene, settings):
    image, _, sup = scene
    with pytest.raises(TypeError, match=r"must be a TrainConfig .* TrainConfig\(rounds=3\)"):
        MutualTrainer(image, sup, settings)


@pytest.mark.slow
def test_mutual_rounds_beat_round_one_on_non_elliptical_cells():
    """Bean-shaped cells: the ellipse prior is wrong, the exchange must recover the shape."""
    image, gt, boxes = synthetic_scene((96, 96), 8, kind="bean", size=(18, 30), seed=1)
    sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    cfg = TrainConfig(
        rounds=4,
        steps_per_round=60,
        batch_size=4,
        patch_size=64,
        width=8,
        depth=3,
        device="cpu",
        min_change=0.0,
        seed=0,
    )
    scores = [evaluate(r.instances[0], gt) for r in MutualTrainer(image, sup, cfg)]
    ellipse = evaluate(sup.instances, gt)
    print([round(s["map"], 3) for s in scores], round(ellipse["map"], 3))
    assert scores[-1]["map"] > scores[0]["map"] + 0.05
    assert scores[-1]["map"] > ellipse["map"]


def test_recommended_settings_follow_the_device():
    cpu = TrainConfig.recommended("cpu")
    assert (cpu.batch_size, cpu.patch_size, cpu.depth) == (4, 128, 3)
    assert cpu.device == "cpu"
    assert TrainConfig.recommended("cpu", rounds=2, depth=4).depth == 4
    assert TrainConfig.from_dict(cpu.to_dict()) == cpu


def test_settings_stored_flat_by_older_versions_still_load():
    # as model files of 0.1.0 stored them: the exchange rule by name, its switches beside it,
    # and switches since removed
    old = {
        **TrainConfig().to_dict(),
        "exchange": "literal",
        "confidence": 0.8,
        "width_b": 8,
        "soft_weight": 0.0,
        "object_edges": False,
    }
    cfg = TrainConfig.from_dict(old)
    assert cfg.exchange == ExchangeSettings(rule="literal", confidence=0.8, width_b=8)
    assert cfg.rounds == TrainConfig().rounds


def test_network_b_can_be_wider_and_survives_a_checkpoint(scene, tmp_path):
    image, _, sup = scene
    trainer = MutualTrainer(
        image, sup, TrainConfig(**{**TINY, "rounds": 1}, exchange=ExchangeSettings(width_b=6))
    )
    list(trainer)
    assert trainer.pair.model_a.arch["width"] == 4 and trainer.pair.model_b.arch["width"] == 6
    loaded = trainer.pair.save(tmp_path / "pair.pt")
    from napari_mutualseg.models import ModelPair

    again = ModelPair.load(loaded, device="cpu")
    assert again.model_b.arch["width"] == 6
    # the largest box side, which sets the margin of block-by-block segmentation
    assert again.cell_size == max(2 * max(box.extent) for box in sup.boxes)
    np.testing.assert_allclose(
        again.predict_proba(image), trainer.pair.predict_proba(image), atol=1e-5
    )


def test_moving_average_is_the_pair_and_trails_the_trained_weights(scene):
    image, _, sup = scene
    cfg = TrainConfig(
        **{**TINY, "rounds": 1, "steps_per_round": 2, "exchange": ExchangeSettings(ema=0.9)}
    )
    plain = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 2}))
    averaged = MutualTrainer(image, sup, cfg)
    start = [p.detach().clone() for p in averaged.pair.model_a.parameters()]
    report = next(iter(averaged))
    next(iter(plain))
    # Same raw training (same seed), but the pair holds weights between the start and the end.
    for s, a, p in zip(
        start, averaged.pair.model_a.parameters(), plain.pair.model_a.parameters(), strict=True
    ):
        assert not torch.equal(a, p)
        assert not torch.equal(a, s)
    shown = predict_proba([averaged.pair.model_a], averaged.images[0], torch.device("cpu"))
    np.testing.assert_array_equal(report.classes_a[0], shown.argmax(0))
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(exchange=ExchangeSettings(ema=1.0))


def test_flipped_predictions_are_flip_consistent():
    torch.manual_seed(0)
    from napari_mutualseg.models import build_unet

    net = build_unet({"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}, 0)
    image = np.random.default_rng(0).random((40, 56), dtype=np.float32)
    cpu = torch.device("cpu")
    p = predict_proba([net], image, cpu, flips=True)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    for axes in ((0,), (1,), (0, 1)):
        q = predict_proba([net], np.flip(image, axes).copy(), cpu, flips=True)
        np.testing.assert_allclose(np.flip(q, [a + 1 for a in axes]), p, atol=1e-5)
    assert not np.allclose(predict_proba([net], image, cpu), p, atol=1e-4)


def test_outside_the_annotated_region_stays_unlabelled_in_every_round(scene):
    """Unboxed cells outside the region must never be taught as background."""
    image, _, sup = scene
    region = np.zeros(image.shape, bool)
    region[:, :40] = True
    boxes = [b for b in sup.boxes if b.center[1] + b.half_sizes[1] < 40]
    assert 0 < len(boxes) < len(sup.boxes)
    region |= boxes_mask(image.shape, boxes)
    partial = make_supervision(image.shape, boxes, region=region)
    trainer = MutualTrainer(image, partial, TrainConfig(**TINY))
    assert (trainer.contexts[0].initial[~region] == IGNORE).all()
    for report in trainer:
        for labels in (report.labels_a[0], report.labels_b[0]):
            assert (labels[~region] == IGNORE).all()


def test_a_large_plane_annotated_in_part_is_predicted_between_rounds_where_labelled(
    monkeypatch,
):
    """Rounds before the last predict the labelled pixels and a margin; the last round the
    whole plane; reports and the patches' labels keep the plane's shape."""
    monkeypatch.setattr(training, "WINDOW_MIN_PIXELS", 0)
    image, _, shapes = synthetic_scene((160, 160), 12, seed=5)
    boxes = [b for b in boxes_from_shapes(shapes) if max(b.center) < 50]
    assert boxes
    region = np.zeros(image.shape, bool)
    region[:50, :50] = True
    region |= boxes_mask(image.shape, boxes)
    partial = make_supervision(image.shape, boxes, region=region)
    painted = partial.classes.copy()
    painted[120:124, 10:14] = 0  # background painted outside the region is a label too
    trainer = MutualTrainer(image, partial, TrainConfig(**TINY), labels=[painted])
    rows, cols = trainer.windows[0]
    margin = TINY["patch_size"] // 2
    known = (partial.classes != IGNORE) | (painted != IGNORE)
    assert rows.start == 0 and rows.stop == 124 + margin
    assert cols.start == 0 and cols.stop == min(np.flatnonzero(known.any(0))[-1] + 1 + margin, 160)
    outside = np.ones(image.shape, bool)
    outside[rows, cols] = False
    assert outside.any()
    reports = list(trainer)
    assert [r.round for r in reports] == [1, 2]
    for report in reports:
        predicted = report.probabilities[0].sum(0)
        if report.round < report.rounds:
            assert not predicted[outside].any() and not report.disagreement[0][outside].any()
            assert (
                not report.classes_a[0][outside].any() and not report.instances[0][outside].any()
            )
        np.testing.assert_allclose(predicted[~outside], 1.0, atol=1e-3)
        for labels in (report.labels_a[0], report.labels_b[0]):
            assert labels.shape == image.shape and (labels[outside] == IGNORE).all()
            assert (labels[120:124, 10:14] == 0).all()
    np.testing.assert_allclose(reports[-1].probabilities[0].sum(0), 1.0, atol=1e-3)
    for net in trainer._trainers:  # patches are drawn from the whole plane
        learnt = net.sampler.labels[0].numpy()
        assert learnt.shape == image.shape and (learnt[outside] == IGNORE).all()
        assert (learnt[120:124, 10:14] == 0).all() and (learnt[rows, cols] != IGNORE).any()
    fully_boxed = MutualTrainer(image, make_supervision(image.shape, boxes), TrainConfig(**TINY))
    assert fully_boxed.windows[0] == (slice(0, 160), slice(0, 160))
    monkeypatch.undo()
    small = MutualTrainer(image, partial, TrainConfig(**TINY))
    assert small.windows[0] == (slice(0, 160), slice(0, 160))


def test_a_round_that_converges_predicts_again_only_the_planes_predicted_in_part(
    scene, monkeypatch
):
    """The round that ends training is reported on whole planes: a windowed plane is
    predicted again whole, a plane predicted whole already is not predicted twice."""
    monkeypatch.setattr(training, "WINDOW_MIN_PIXELS", 100 * 100)
    monkeypatch.setattr(training, "found_fraction", lambda *args, **kwargs: 1.0)
    predicted = []

    def counting(models, image, *args, **kwargs):
        predicted.append(image.shape[-2:])
        return predict_proba(models, image, *args, **kwargs)

    monkeypatch.setattr(training, "predict_proba", counting)
    large, _, shapes = synthetic_scene((160, 160), 12, seed=5)
    boxes = [b for b in boxes_from_shapes(shapes) if max(b.center) < 50]
    region = np.zeros(large.shape, bool)
    region[:50, :50] = True
    partial = make_supervision(large.shape, boxes, region=region | boxes_mask(large.shape, boxes))
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 3, "steps_per_round": 1, "min_change": 1.0})
    trainer = MutualTrainer([large, image], [partial, sup], cfg)
    window = trainer._windowed[0].shape[-2:]
    assert window != large.shape
    reports = list(trainer)
    assert [r.converged for r in reports] == [False, True]
    # two rounds, two networks: each plane (or window) twice a round, the window's plane once
    assert sorted(predicted) == sorted([window] * 4 + [image.shape] * 4 + [large.shape] * 2)
    for probabilities in reports[-1].probabilities:
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-3)


@pytest.mark.parametrize("ending", ["last", "converged"])
def test_found_and_the_instances_share_the_ensembles_box_objects_where_they_read_alike(
    scene, ending, monkeypatch
):
    """The ensemble's object in each box, read for found, serves the instances where they
    read the same prediction (a window, a plane predicted whole), not where a plane predicted
    in part is predicted whole (the last or a converged round): the reports are those of
    reading the objects afresh."""
    monkeypatch.setattr(training, "WINDOW_MIN_PIXELS", 100 * 100)
    seen: dict[int, float] = {}

    def blurred(models, image, *args, **kwargs):
        # a prediction with context, so that a window's differs from its plane's at its edges,
        # and A's from B's
        shift = seen.setdefault(id(models[0]), 0.1 * len(seen))
        cell = 1 / (1 + np.exp(-8 * (ndi.gaussian_filter(image[0], 2) - 0.5 - shift)))
        return np.stack([1 - cell, cell, np.zeros_like(cell)]).astype(np.float32)

    monkeypatch.setattr(training, "predict_proba", blurred)
    large, _, shapes = synthetic_scene((160, 160), 12, seed=4)
    boxes = [b for b in boxes_from_shapes(shapes) if min(b.center) > 100]
    region = np.zeros(large.shape, bool)
    region[90:, 90:] = True  # its window does not start at the plane's corner
    partial = make_supervision(large.shape, boxes, region=region | boxes_mask(large.shape, boxes))
    image, _, sup = scene
    last = ending == "last"
    cfg = TrainConfig(
        **{
            **TINY,
            "rounds": 2 if last else 3,
            "steps_per_round": 1,
            "min_change": 0 if last else 1,
        }
    )
    per_box_instances, shared = training.per_box_instances, []

    def recorded(proba, supervision, *, objects=None, **kwargs):
        shared.append(objects is not None)
        return per_box_instances(proba, supervision, objects=objects, **kwargs)

    def fresh(proba, supervision, *, objects=None, **kwargs):
        return per_box_instances(proba, supervision, **kwargs)

    monkeypatch.setattr(training, "per_box_instances", recorded)
    read_once = list(MutualTrainer([large, image], [partial, sup], cfg))
    # the large plane's window and the small plane, then the large plane whole and the small
    assert shared == [True, True, False, True]
    monkeypatch.setattr(training, "per_box_instances", fresh)
    seen.clear()
    read_afresh = list(MutualTrainer([large, image], [partial, sup], cfg))
    assert [r.converged for r in read_once] == [False, not last]
    for once, afresh in zip(read_once, read_afresh, strict=True):
        assert (once.found, once.converged) == (afresh.found, afresh.converged)
        assert once.found > 0.5
        for name in ("instances", "labels_a", "labels_b"):
            for a, b in zip(getattr(once, name), getattr(afresh, name), strict=True):
                np.testing.assert_array_equal(a, b)


def test_a_cropped_supervision_is_the_supervision_of_the_cropped_image(scene):
    """Boxes move with the crop: the ellipses land on the same pixels."""
    *_, sup = scene
    window = (slice(7, 60), slice(12, 64))
    cropped = sup.crop(window)
    with pytest.warns(UserWarning, match="reach past the image border"):
        remade = make_supervision((53, 52), cropped.boxes)
    inside = [b for b, c in zip(sup.boxes, cropped.boxes, strict=True) if c.within((53, 52))]
    assert inside
    np.testing.assert_array_equal(cropped.classes, sup.classes[window])
    for box in inside:
        k = sup.boxes.index(box) + 1
        np.testing.assert_array_equal(
            remade.instances == k, sup.instances[window] == k, err_msg=f"box {k}"
        )


def test_agreement_leaves_pixels_where_the_networks_disagree_ignored(scene):
    image, _, sup = scene
    trainer = MutualTrainer(
        image, sup, TrainConfig(**TINY, exchange=ExchangeSettings(agreement=True))
    )
    ctx = trainer.contexts[0]
    pa = np.zeros((3, *image.shape), np.float32)
    pa[0] = 1.0
    pa[1][ctx.core] = 1.0
    pa[0][ctx.core] = 0.0
    pb = pa.copy()
    disagree = ctx.in_box & ~ctx.core
    pb[:, disagree] = 0.0
    pb[1, disagree] = 1.0  # B calls the rest of every box cell, A calls it background
    for labels in exchange_labels(trainer.contexts, [[pa], [pb]], trainer.config.exchange):
        assert (labels[0][disagree] == IGNORE).all()
        assert (labels[0][ctx.core] == CELL).all()
        assert (labels[0][~ctx.in_box] == 0).all()


def test_cancel_during_the_prediction_between_rounds_stops_it_and_reports_nothing(scene):
    image, _, sup = scene
    trainer = MutualTrainer(image, sup, TrainConfig(**TINY))
    before = {k: v.clone() for k, v in trainer.pair.model_a.state_dict().items()}
    predicted_by_b = []

    def cancel_in_prediction(module, inputs, output):
        if not module.training:  # round 1 is trained: this is the prediction before exchange
            trainer.cancel()

    trainer.pair.model_a.register_forward_hook(cancel_in_prediction)
    trainer.pair.model_b.register_forward_hook(
        lambda module, inputs, output: predicted_by_b.append(not module.training)
    )
    assert list(trainer) == []
    assert not any(predicted_by_b)  # stopped before B's prediction pass
    assert trainer.pair.history == []
    for k, v in trainer.pair.model_a.state_dict().items():  # the round under way is dropped
        torch.testing.assert_close(v, before[k])


def test_a_resumed_pair_whose_labels_no_longer_change_stops_after_its_first_round(
    scene, monkeypatch
):
    # round 1 of a resumed pair compares its labels with those of the pair's own prediction,
    # not with the boxes' labels: it may end training as any later round does
    image, gt, sup = scene
    right = np.stack([gt == 0, gt > 0, np.zeros_like(gt, bool)]).astype(np.float32)
    monkeypatch.setattr(training, "predict_proba", lambda *args, **kwargs: right)
    cfg = TrainConfig(**{**TINY, "rounds": 3, "steps_per_round": 1, "min_change": 0.005})
    first = MutualTrainer(image, sup, dataclasses.replace(cfg, rounds=1))
    assert not next(iter(first)).converged  # from the boxes' labels: not comparable
    reports = list(MutualTrainer(image, sup, cfg, pair=first.pair))
    assert [(r.round, r.changed, r.converged) for r in reports] == [(1, 0.0, True)]


def _not_normalised(*args, **kwargs):
    raise AssertionError("the images were normalised for training that is refused")


def test_a_device_this_machine_lacks_is_refused_before_the_images_are_read(scene, monkeypatch):
    image, _, sup = scene
    monkeypatch.setattr(training, "network_planes", _not_normalised)
    with pytest.raises(ValueError, match=r"Unknown device 'gpu'; choose one of auto, .*cpu"):
        MutualTrainer(image, sup, TrainConfig(**{**TINY, "device": "gpu"}))


def test_supervisions_and_labels_that_do_not_fit_are_refused_before_the_images_are_read(
    scene, monkeypatch
):
    image, _, sup = scene
    monkeypatch.setattr(training, "network_planes", _not_normalised)
    with pytest.raises(ValueError, match=r"Image 1 has shape \(40, 64\) but its supervision"):
        MutualTrainer([image, image[:40].copy()], [sup, sup], TrainConfig(**TINY))
    with pytest.raises(ValueError, match=r"The edited supervision"):
        MutualTrainer(image, sup, TrainConfig(**TINY), labels=[sup.classes[:40]])


def test_crops_larger_than_every_plane_are_taken_at_the_largest_planes_size(scene):
    # a 256 px crop of a 64 px plane is 15/16 padding: sixteen times the work for nothing
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1, "patch_size": 256})
    small = make_supervision((40, 48), [Box.from_corners(5, 5, 20, 20)])
    trainer = MutualTrainer([image, image[:40, :48].copy()], [sup, small], cfg)
    crops = []

    def crop_size(module, inputs, output):
        if module.training:
            crops.append(inputs[0].shape[-2:])

    trainer.pair.model_a.register_forward_hook(crop_size)
    list(trainer)
    assert crops == [(64, 64)]


def test_a_resumed_pair_records_its_own_network_size(scene):
    image, _, sup = scene
    first = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}))
    list(first)
    resumed = MutualTrainer(image, sup, TrainConfig(**{**TINY, "width": 8}), pair=first.pair)
    assert resumed.pair.settings["width"] == 4


@pytest.mark.parametrize("width_b", [0, 16])
def test_a_resumed_pair_records_the_width_of_its_own_network_b(scene, width_b):
    image, _, sup = scene
    cfg = TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1})
    first = MutualTrainer(image, sup, dataclasses.replace(cfg, exchange={"width_b": 8}))
    assert first.pair.settings["exchange"]["width_b"] == 8
    again = dataclasses.replace(cfg, exchange=ExchangeSettings(width_b=width_b))
    resumed = MutualTrainer(image, sup, again, pair=first.pair)
    assert resumed.pair.model_b.arch["width"] == 8
    assert resumed.pair.settings["exchange"]["width_b"] == 8
    # the settings say A's width, and B's where it differs
    wide = MutualTrainer(image, sup, dataclasses.replace(cfg, width=8), pair=resumed.pair)
    assert wide.pair.settings["width"] == 4
    assert wide.pair.settings["exchange"]["width_b"] == 8


def test_images_with_more_channels_than_a_network_takes_are_refused(scene):
    image, _, sup = scene
    most = ARCH_LIMITS["in_channels"][1]
    many = np.stack([image * (1 + k) for k in range(most + 1)])
    with pytest.raises(ValueError, match=rf"{most + 1} channels, more than the {most}"):
        MutualTrainer([many], sup, TrainConfig(**TINY))


@pytest.fixture(scope="module")
def narrow_pair(scene):
    """A pair trained on images scaled to their 5th and 95th percentiles."""
    image, _, sup = scene
    trainer = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}, percentiles=(5, 95)))
    list(trainer)
    return trainer.pair


def test_a_resumed_pair_keeps_its_percentiles(scene, narrow_pair):
    image, _, sup = scene
    resumed = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=narrow_pair)
    next(iter(resumed))
    assert resumed.pair.percentiles == (5.0, 95.0)
    assert resumed.pair.settings["percentiles"] == [5.0, 95.0]


def test_resuming_with_other_percentiles_is_refused(scene, narrow_pair):
    image, _, sup = scene
    config = TrainConfig(**TINY, percentiles=(1, 99.8))
    with pytest.raises(ValueError, match=r"trained on images scaled to their 5 and 95 perc"):
        MutualTrainer(image, sup, config, pair=narrow_pair)


def test_a_resumed_pair_keeps_its_channels(scene):
    image, _, sup = scene
    stack = np.stack([image[::-1].copy(), image])
    first = MutualTrainer([stack], sup, TrainConfig(**{**TINY, "rounds": 1}, channels=[1]))
    list(first)
    resumed = MutualTrainer([stack], sup, TrainConfig(**{**TINY, "rounds": 1}), pair=first.pair)
    next(iter(resumed))
    assert resumed.config.channels == (1,) and resumed.pair.settings["channels"] == [1]


def test_a_resumed_pair_keeps_its_rgb_mode(scene):
    image, _, sup = scene
    picture = np.repeat((image / image.max() * 255).astype(np.uint8)[..., None], 3, axis=-1)
    first = MutualTrainer(picture, sup, TrainConfig(**{**TINY, "rounds": 1}, rgb="gray"))
    list(first)
    resumed = MutualTrainer(picture, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=first.pair)
    assert resumed.config.rgb == "gray" and resumed.pair.settings["rgb"] == "gray"


def test_a_pair_of_one_named_channel_resumes_on_an_image_of_that_channel_alone(scene):
    image, _, sup = scene
    named = AxisImage.from_array(np.stack([image[::-1], image]), "CYX", channel_names=["m", "n"])
    first = MutualTrainer(named, sup, TrainConfig(**{**TINY, "rounds": 1}, channels=["n"]))
    list(first)
    resumed = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=first.pair)
    next(iter(resumed))
    # the choice stays recorded: prediction still finds the channel by name in named images
    assert resumed.pair.settings["channels"] == ["n"]


def test_a_resumed_pair_finds_its_channel_by_name_in_an_image_of_another_order(scene):
    """Resuming takes the channel the pair learnt, as prediction finds it, and keeps its name."""
    image, _, sup = scene
    noise = np.random.default_rng(0).random(image.shape).astype(np.float32)
    named = AxisImage.from_array(np.stack([noise, image]), "CYX", channel_names=["DAPI", "GFP"])
    first = MutualTrainer(named, sup, TrainConfig(**{**TINY, "rounds": 1}, channels=["GFP"]))
    list(first)
    swapped = AxisImage.from_array(np.stack([image, noise]), "CYX", channel_names=["GFP", "DAPI"])
    resumed = MutualTrainer(swapped, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=first.pair)
    np.testing.assert_array_equal(resumed.images[0], first.images[0])  # GFP, not DAPI
    assert resumed.pair.channel_names == ("GFP",)
    # an image that names no channel leaves the pair's names as they were
    again = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}), pair=resumed.pair)
    assert again.pair.channel_names == ("GFP",)


def test_a_resumed_trainer_says_the_network_size_it_trains(scene):
    image, _, sup = scene
    first = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1}))
    config = TrainConfig(**{**TINY, "width": 8, "depth": 3}, exchange={"width_b": 6})
    resumed = MutualTrainer(image, sup, config, pair=first.pair)
    assert (resumed.config.width, resumed.config.depth) == (4, 2)
    assert resumed.config.exchange.width_b == 0


def test_a_trainer_runs_once(scene):
    """A second run would train again from the boxes' labels and report round 1 again."""
    image, _, sup = scene
    trainer = MutualTrainer(image, sup, TrainConfig(**{**TINY, "steps_per_round": 1}))
    assert len(list(trainer)) == 2
    with pytest.raises(RuntimeError, match=r"already trained.*pair=trainer\.pair"):
        iter(trainer)
    assert len(trainer.pair.history) == 2


CPU_OUT_OF_MEMORY = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 80000000000 bytes. Error code 12 (Cannot allocate memory)"
)


def test_out_of_memory_in_the_prediction_between_rounds_says_to_lower_the_tile_size(
    scene, monkeypatch
):
    image, _, sup = scene

    def predict_out_of_memory(*args, **kwargs):
        raise CPU_OUT_OF_MEMORY

    monkeypatch.setattr(training, "predict_proba", predict_out_of_memory)
    trainer = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}))
    with pytest.raises(
        TrainingError, match=r"Out of memory on cpu predicting .* after round 1 .* tile size"
    ):
        list(trainer)


def test_a_failed_round_leaves_the_pair_as_of_the_last_completed_round(scene, monkeypatch):
    image, _, sup = scene
    trainer = MutualTrainer(image, sup, TrainConfig(**{**TINY, "rounds": 1}))
    before = {k: v.clone() for k, v in trainer.pair.model_a.state_dict().items()}
    trained = []

    def train_then_fail(trainers, *args, **kwargs):
        real_train_round(trainers, *args, **kwargs)
        trained.append({k: v.clone() for k, v in trainers[0].model.state_dict().items()})
        raise TrainingError("The loss of network B became NaN in round 1.")

    real_train_round = training.train_round
    monkeypatch.setattr(training, "train_round", train_then_fail)
    with pytest.raises(TrainingError, match="NaN"):
        list(trainer)
    assert any(not torch.equal(v, before[k]) for k, v in trained[0].items())
    for k, v in trainer.pair.model_a.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_networks_that_call_every_box_foreground_have_not_converged(scene, monkeypatch):
    # Early networks often call everything foreground: every box then leaks, falls back to
    # its round-1 label and the labels stop changing. That is not convergence.
    image, _, sup = scene

    def everything_foreground(model, *args, **kwargs):
        p = np.zeros((3, *image.shape), np.float32)
        p[1] = 1.0
        return p

    monkeypatch.setattr(training, "predict_proba", everything_foreground)
    cfg = TrainConfig(**{**TINY, "rounds": 3, "steps_per_round": 1, "min_change": 0.005})
    reports = list(MutualTrainer(image, sup, cfg))
    assert [r.round for r in reports] == [1, 2, 3]
    assert all(r.changed == 0.0 and r.found == 0.0 and not r.converged for r in reports)


def test_found_counts_the_boxes_whose_object_is_passed_on(scene):
    _, gt, sup = scene
    ctx = ExchangeContext.build(sup)
    settings = ExchangeSettings()
    right = np.stack([gt == 0, gt > 0, np.zeros_like(gt, bool)]).astype(np.float32)
    leaking = np.stack([right[2], right[0] + right[1], right[2]])
    nothing = np.stack([right[0] + right[1], right[2], right[2]])
    assert found_fraction([right], [ctx], settings) == 1.0
    assert found_fraction([leaking], [ctx], settings) == 0.0
    assert found_fraction([nothing], [ctx], settings) == 0.0


def test_the_exchange_reads_each_box_on_the_image_once_for_all_rounds(scene, monkeypatch):
    # 16,384 boxes at 4096²: each pass over the boxes' geometry costs about half a second, and
    # the context made three before the first round and one more a round for boxes that fall
    # back to their round-1 label
    _, gt, sup = scene
    calls = []
    local_coords = Box.local_coords
    monkeypatch.setattr(
        Box, "local_coords", lambda box, shape: calls.append(box) or local_coords(box, shape)
    )
    ctx = ExchangeContext.build(sup)
    assert calls == sup.boxes
    # a peer that found nothing: every box falls back
    nothing = (np.zeros(gt.shape, np.int32), np.zeros(len(sup.boxes), np.float32))
    monkeypatch.setattr(exchange, "box_objects", lambda *args, **kwargs: nothing)
    proba = np.stack([gt == 0, gt > 0, np.zeros_like(gt, bool)]).astype(np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(ctx.combine(proba, ExchangeSettings()), ctx.initial)
    assert found_fraction([proba], [ctx], ExchangeSettings()) == 0.0
    assert calls == sup.boxes


@pytest.mark.filterwarnings("ignore:.*past the image border")
@pytest.mark.parametrize("corners", [(10, 10, 30, 30), (-10, 10, 10, 30), (-10, -10, 10, 10)])
def test_a_box_past_the_image_border_leaks_like_a_whole_one(corners):
    # A peer that calls everything cell: each box's object fills the box, which is a leak, and
    # the box keeps its round-1 label, also where the box reaches past the image border.
    ctx = ExchangeContext.build(make_supervision((48, 48), [Box.from_corners(*corners)]))
    everything_cell = np.zeros((3, 48, 48), np.float32)
    everything_cell[1] = 1.0
    settings = ExchangeSettings()
    np.testing.assert_array_equal(ctx.combine(everything_cell, settings), ctx.initial)
    assert found_fraction([everything_cell], [ctx], settings) == 0.0


def test_overlapping_boxes_all_called_cell_have_found_no_cell():
    # Overlapping boxes share their pixels out among their objects: a peer that calls the
    # whole image cell gives each box only its share, which leaks in no box alone, and
    # training stopped as converged on it. The group of boxes is all object: none found.
    shape = (48, 96)
    boxes = [Box.from_corners(8, 8 + 12 * i, 40, 40 + 12 * i) for i in range(4)]
    ctx = ExchangeContext.build(make_supervision(shape, boxes))
    everything_cell = np.zeros((3, *shape), np.float32)
    everything_cell[1] = 1.0
    settings = ExchangeSettings()
    np.testing.assert_array_equal(ctx.combine(everything_cell, settings), ctx.initial)
    assert found_fraction([everything_cell], [ctx], settings) == 0.0


def test_touching_cells_in_overlapping_boxes_are_found():
    # Two touching round cells: their boxes overlap, and the cells leave the corners of the
    # boxes' union background, so a right prediction is passed on for both.
    gt = np.zeros((48, 64), np.int32)
    for k, centre in enumerate([(24, 20), (24, 40)], start=1):
        gt[disk(centre, 12, shape=gt.shape)] = k
    boxes = [Box.from_corners(*r.bbox) for r in regionprops(gt)]
    assert boxes[0].pixel_range()[3] > boxes[1].pixel_range()[1]  # the boxes overlap
    ctx = ExchangeContext.build(make_supervision(gt.shape, boxes))
    right = np.stack([gt == 0, gt > 0, np.zeros_like(gt, bool)]).astype(np.float32)
    assert found_fraction([right], [ctx], ExchangeSettings()) == 1.0


def test_labels_without_any_background_are_warned_about(scene):
    image, _, sup = scene
    whole = make_supervision(image.shape, [Box.from_corners(0, 0, *image.shape)])
    with pytest.warns(UserWarning, match="no background pixel .* paint some background"):
        MutualTrainer(image, whole, TrainConfig(**TINY))
    painted = whole.classes.copy()
    painted[:2] = 0  # painted background is background
    for labels, supervision in (([painted], whole), (None, sup)):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "The training labels have no background")
            MutualTrainer(image, supervision, TrainConfig(**TINY), labels=labels)


def test_changed_counts_the_labelled_pixels_of_all_images_together(scene, monkeypatch):
    # A boxed image whose labels change, and a small one with a few known pixels that never
    # change (a corrected image): the small one must not halve the changed fraction.
    image, _, sup = scene
    small = np.full((16, 16), IGNORE, np.uint8)
    small[:2] = 0
    trainer = MutualTrainer(
        [image, image[:16, :16].copy()],
        [sup, sup.__class__(small, np.zeros((16, 16), np.int32), [])],
        TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1}),
        labels=[sup.classes, small],
    )
    initial = [ctx.initial for ctx in trainer.contexts]
    changed = initial[0].copy()
    labelled = np.flatnonzero(changed != IGNORE)
    changed.flat[labelled[:100]] = np.where(changed.flat[labelled[:100]] == CELL, 0, CELL)

    def exchange(*args, **kwargs):
        return [[changed, initial[1]], [initial[0], initial[1]]]

    monkeypatch.setattr(training, "exchange_labels", exchange)
    report = next(iter(trainer))
    a = 100 / (labelled.size + 32)  # A's labels: 100 of all labelled pixels; B's: none
    assert report.changed == pytest.approx(a / 2)


def _touching_scene(seed: int) -> tuple[np.ndarray, list[Box], np.ndarray]:
    """Touching cells (nearest of a few seeds) with holes and background, some at the image
    edge, their boxes (overlapping), and a peer's prediction with ties and unsure pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :56]
    seeds = rng.integers(0, (48, 56), (7, 2))
    gt = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    gt = (gt + 1).astype(np.int32)
    gt[rng.random(gt.shape) < 0.08] = 0  # holes
    gt[:, :6] = 0
    boxes = [Box.from_corners(*r.bbox) for r in regionprops(gt)]
    proba = np.stack([gt == 0, gt > 0, exchange.touching_lines(gt)]).astype(np.float32)
    noisy = rng.random(gt.shape) < 0.3  # a quarter's steps: equal classes are common
    proba[:, noisy] = rng.integers(0, 4, (3, int(noisy.sum())))
    proba /= np.maximum(proba.sum(0), 1)
    return gt, boxes, proba


@pytest.mark.parametrize("rule", ["confident", "literal"])
def test_the_exchange_finds_its_edges_and_top_classes_without_grey_morphology_or_argmax(
    rule, monkeypatch
):
    """Object edges were found by grey dilation and erosion (skimage's find_boundaries for
    the literal rule) and the top class by argmax's int64 map: a tenth of a second each at
    2048². Neighbours compared along each axis and a uint8 top class give the same labels."""
    from skimage.segmentation import find_boundaries

    def grey_touching(labels):
        lab = labels.astype(np.int32)
        cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
        higher = exchange.ndi.grey_dilation(lab, footprint=cross) > lab
        big = np.where(lab == 0, np.iinfo(np.int32).max, lab)
        lower = exchange.ndi.grey_erosion(big, footprint=cross) < lab
        return (lab > 0) & (higher | lower)

    settings = ExchangeSettings(rule=rule, agreement=True)
    scenes = [_touching_scene(seed) for seed in range(3)]
    contexts = [
        ExchangeContext.build(make_supervision(gt.shape, boxes), rule=rule)
        for gt, boxes, _ in scenes
    ]
    probas = [[p for *_, p in scenes], [np.flip(p, 2).copy() for *_, p in scenes]]
    with monkeypatch.context() as patch:
        patch.setattr(exchange, "touching_lines", grey_touching)
        patch.setattr(exchange, "_inner_boundaries", lambda o: find_boundaries(o, mode="inner"))
        patch.setattr(exchange, "top_class", lambda p: p.argmax(0))
        expected = exchange_labels(contexts, probas, settings)
        lines = [grey_touching(gt) for gt, *_ in scenes]
    fail = lambda *a, **k: pytest.fail("grey morphology")  # noqa: E731
    monkeypatch.setattr(exchange.ndi, "grey_dilation", fail)
    monkeypatch.setattr(exchange.ndi, "grey_erosion", fail)
    found = exchange_labels(contexts, probas, settings)
    for want, got in zip(expected, found, strict=True):
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)
    for (gt, *_), line in zip(scenes, lines, strict=True):
        np.testing.assert_array_equal(exchange.touching_lines(gt), line)


def test_top_class_is_argmax_as_uint8_with_its_ties_and_nans():
    rng = np.random.default_rng(0)
    for _ in range(50):
        proba = rng.integers(0, 3, (rng.integers(1, 5), 5, 6)).astype(np.float32) / 2
        proba[rng.random(proba.shape) < 0.15] = np.nan
        proba[rng.random(proba.shape) < 0.1] = np.inf
        top = exchange.top_class(proba)
        assert top.dtype == np.uint8
        np.testing.assert_array_equal(top, proba.argmax(0))


def test_changed_fraction_counts_a_change_where_either_map_is_labelled():
    before = np.array([[IGNORE, IGNORE, CELL, CELL], [0, BOUNDARY, IGNORE, 0]], np.uint8)
    after = np.array([[IGNORE, CELL, CELL, 0], [IGNORE, BOUNDARY, IGNORE, 0]], np.uint8)
    # labelled: 6 pixels (two ignored in both); changed: IGNORE->CELL, CELL->0, 0->IGNORE
    assert exchange.changed_fraction(before, after) == 3 / 6
    assert exchange.changed_fraction([before, after], [after, after]) == 3 / (6 + 5)


def test_resuming_on_images_with_other_channel_counts_says_what_can_help(scene):
    from napari_mutualseg.models import ModelPair
    from napari_mutualseg.unet import build_unet

    image, _, sup = scene
    arch = {"in_channels": 2, "n_classes": 3, "width": 4, "depth": 2}
    pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1), (1.0, 99.8))
    # an image with fewer channels: no choice of channels helps
    with pytest.raises(ValueError, match="take 2 channels but the images give 1: train new"):
        MutualTrainer(image, sup, TrainConfig(**TINY), pair=pair)
    three = AxisImage.from_array(np.stack([image] * 3), "CYX")
    with pytest.raises(ValueError, match="give 3: pick the channels they were trained on"):
        MutualTrainer(three, sup, TrainConfig(**TINY), pair=pair)
