"""The benchmark's helpers (no data set; the engine only at tiny sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from helpers import TINY
from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import TrainConfig

# tiny networks train faster on one torch thread (conftest.py)

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines.py"
_spec = importlib.util.spec_from_file_location("bench_baselines", _PATH)
baselines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baselines)
_spec = importlib.util.spec_from_file_location("bench_summarize", _PATH.with_name("summarize.py"))
summarize = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(_PATH.parent))
_spec.loader.exec_module(summarize)


def test_jitter_stays_inside_and_moves_each_side_at_most_ten_percent():
    shape = (100, 120)
    boxes = np.array([[0, 0, 20, 30], [40, 50, 70, 120], [80, 10, 100, 40], [10, 60, 15, 64]])
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = baselines.jitter_boxes(boxes, shape, rng)
        assert out.shape == boxes.shape
        assert (out >= 0).all()
        assert (out[:, [0, 2]] <= shape[0]).all() and (out[:, [1, 3]] <= shape[1]).all()
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        assert (np.abs(out - boxes) <= 0.1 * size + 1e-9).all()
    widened = baselines.widen_small_boxes(np.array([[5, 5, 6, 9], [0, 0, 1, 1]]), shape)
    assert (widened[:, 2:] - widened[:, :2] >= 2 - 1e-9).all() and (widened >= 0).all()


def test_otsu_in_boxes_finds_one_object_per_box_on_a_synthetic_scene():
    image, truth, boxes = synthetic_scene((96, 96), n_cells=6, seed=1)
    sup = make_supervision(image.shape, boxes)
    pred = baselines.otsu_in_boxes(image, sup.boxes)
    assert set(np.unique(pred)) - {0} <= set(range(1, len(boxes) + 1))
    otsu = baselines.score([pred], [truth])
    ellipse = baselines.score([sup.instances], [truth])
    # Clean, well-separated cells: thresholding recovers their true shapes.
    assert otsu["f1_50"] == 1.0
    assert otsu["map"] > ellipse["map"]
    classes = baselines.true_classes(truth)
    assert set(np.unique(classes)) == {0, 1, 2}
    assert ((classes > 0) == (truth > 0)).all()


def test_rows_have_the_documented_keys_and_make_a_table():
    truth = synthetic_scene((64, 64), n_cells=3, seed=2)[1]
    metrics = baselines.score([truth], [truth])
    rows = [
        baselines.make_row("boxed", "otsu", "cpu", "exact", metrics, 0.1, peak_ram_mb=10.0),
        baselines.make_row(
            "inductive", "mutual", "cuda:0", "jittered", metrics, 5.0, seconds_per_round=[2.5, 2.5]
        ),
    ]
    for row in rows:
        assert tuple(row)[: len(baselines.ROW_KEYS)] == baselines.ROW_KEYS
        assert row["map"] == 1.0
    table = baselines.markdown_table(rows)
    assert table.count("\n") == 4 and "| boxed | exact | otsu |" in table


def test_region_mode_leaves_a_fifth_of_the_cells_unboxed_and_outside_the_region():
    truth = synthetic_scene((128, 160), n_cells=20, seed=3)[1]
    n = len(np.unique(truth)) - 1
    boxes, region = baselines.region_boxes(truth, unboxed=0.2)
    assert len(boxes) == n - round(0.2 * n)
    # Every boxed cell lies wholly inside the region; every unboxed one wholly outside it.
    all_boxes = baselines.boxes_from_labels(truth)
    boxed = {tuple(b) for b in boxes.tolist()}
    for label, box in enumerate(all_boxes.tolist(), start=1):
        inside = region[truth == label]
        assert inside.all() if tuple(box) in boxed else not inside.any()
    sup = make_supervision(truth.shape, boxes, region=region)
    assert (sup.classes[~region] == 255).all()


def test_summary_over_seeds_gives_mean_and_spread_and_checks_targets_on_means():
    truth = synthetic_scene((64, 64), n_cells=3, seed=2)[1]
    perfect = baselines.score([truth], [truth])
    empty = baselines.score([np.zeros_like(truth)], [truth])
    runs = [
        [
            baselines.make_row(
                "inductive", "mutual", "cpu", "exact", m, 1.0, seconds_per_round=[1.0]
            ),
            baselines.make_row("inductive", "full", "cpu", "exact", perfect, 1.0),
        ]
        for m in (perfect, empty)
    ]
    rows = summarize.mean_rows(runs)
    mutual = next(r for r in rows if r["method"] == "mutual")
    assert mutual["n"] == 2 and mutual["map"] == 0.5 and mutual["map_sd"] == 0.5
    assert "| inductive | exact | mutual | 2 |" in summarize.table(rows)
    lines = summarize.target_lines(rows)
    assert any("mAP 0.500 ≥ 0.90 × full 1.000: **missed**" in line for line in lines)


def test_eval_last_reads_only_the_last_rounds_instances():
    import run

    image, _, boxes = synthetic_scene((64, 64), 5, seed=3)
    sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    trainer = run.PooledTrainer(image, sup, TrainConfig(**TINY, min_change=0.0))
    trainer.eval_last = True
    first, last = list(trainer)
    assert first.instances == [None]
    assert last.instances[0].shape == image.shape
    assert last.instances[0].max() >= 1


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", _PATH.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_read_a_processs_peak_memory_as_the_package_does(monkeypatch):
    """large_image.py read ``ru_maxrss``, which a child inherits from its parent: after the
    parent trained the pair, every child's peak (and baseline) was at least the parent's."""
    import math

    import _common
    from napari_mutualseg import image_task

    large_image = _bench_module("large_image")
    monkeypatch.setattr(image_task, "peak_memory", lambda: 3 * 2**30)
    assert _common.peak_mib() == 3 * 2**10
    assert large_image._rss_gb() == 3.0
    monkeypatch.setattr(image_task, "peak_memory", lambda: None)
    assert math.isnan(_common.peak_mib())


def test_the_benchmarks_thresholding_pair_finds_bright_cells():
    import _common

    image, cells, _ = synthetic_scene((64, 64), 4, seed=1)
    assert _common.threshold_pair().segment(image).max() == cells.max() == 4


def test_gui_responsiveness_writes_its_table_with_machine_device_and_load(tmp_path):
    import json

    import _common

    gui = _bench_module("gui_responsiveness")
    rows = [{"step": "b) Predict 4096²", "gap_ms": 120, "note": ""}]
    report, table = gui.results(
        rows,
        machine="x86_64, EPYC, 2 cores",
        device="cpu (2 threads)",
        display="xcb, OpenGL llvmpipe",
        loads=([1.5, 1.0, 0.5], None),
        seconds=61.2,
        command="python benchmarks/gui_responsiveness.py --cases b",
    )
    _common.write_results(tmp_path, "gui_responsiveness", report, table)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gui_responsiveness.json",
        "gui_responsiveness.md",
    ]
    written = json.loads((tmp_path / "gui_responsiveness.json").read_text())
    assert written["load_average"] == {"start": [1.5, 1.0, 0.5], "end": None}
    assert written["rows"] == rows and written["device"] == "cpu (2 threads)"
    text = (tmp_path / "gui_responsiveness.md").read_text()
    assert "x86_64, EPYC, 2 cores" in text and "1.50 / 1.00 / 0.50 at the start" in text
    assert "| b) Predict 4096² | 120 ms |  |" in text


def test_images_without_cells_are_left_out_of_a_split(tmp_path):
    # BBBC039's train split holds fields without cells: no box can be drawn on them, and the
    # GPU benchmark of 50 images stopped at the first ("No boxes")
    import tifffile

    import run

    for folder in ("images", "masks"):
        (tmp_path / "train" / folder).mkdir(parents=True)
    for k, cells in enumerate((1, 0, 1, 1)):
        mask = np.zeros((8, 8), np.uint16)
        mask[2:5, 2:5] = cells
        for folder in ("images", "masks"):
            tifffile.imwrite(tmp_path / "train" / folder / f"f{k}.tif", mask)
    _, masks, names = run.load_split(tmp_path, "train", 2)
    assert names == ["f0.tif", "f2.tif"] and all(m.any() for m in masks)
