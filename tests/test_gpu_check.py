"""The prepared GPU check (``benchmarks/gpu_check.sh``) rehearsed on the CPU, as CI can run it.

A GPU is lent only some of the time, for one call: a part of the script that a change in the
package broke must fail here, not in that call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_mutualseg.synthetic import synthetic_scene

# tiny networks train faster on one torch thread (conftest.py)

REPO = Path(__file__).resolve().parents[1]


def _stage(root: Path) -> None:
    """A BBBC039-like staged folder: one uint16 image and its instance mask per split."""
    for k, split in enumerate(("train", "test")):
        image, truth, _ = synthetic_scene((128, 128), 8, seed=k)
        for sub, data in (("images", (image * 4000).astype(np.uint16)), ("masks", truth)):
            (root / split / sub).mkdir(parents=True)
            tifffile.imwrite(root / split / sub / "a.tif", data)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One rehearsal of every part; its results, log and return code."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    _stage(tmp / "data")
    out = tmp / "out"
    script = REPO / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(
        [
            "bash",
            str(script),
            "--smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--data",
            str(tmp / "data"),
        ],
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads((out / "gpu_check.json").read_text())
    return proc, results, out


def test_every_part_runs_and_passes(smoke):
    proc, results, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results["finished"] and results["smoke"]
    assert results["errors"] == {} and results["skipped"] == []
    assert results["env"]["core_imported_napari_or_qt"] == []
    assert (out / "gpu_check.log").read_text().rstrip().splitlines()[-1].startswith("  ")


def test_correctness_checks_pass_with_two_threads_on_streams(smoke):
    _, results, _ = smoke
    corr = results["correctness"]
    assert {name: corr[name]["ok"] for name in corr} == {
        "two_threads": True,
        "cancel": True,
        "out_of_memory": True,
        "cross_device": True,
    }
    assert corr["two_threads"]["threads_on_streams"] == ["network A", "network B"]
    assert corr["two_threads"]["stream_indices"] == [0, 1]
    assert "Out of memory" in corr["out_of_memory"]["message"]


def test_speed_and_profile_report_every_figure_and_judge_no_target(smoke):
    _, results, out = smoke
    speed = results["speed"]
    for size in ("defaults", "full"):
        assert speed[size]["step"]["engine_over_bare"] > 0
        assert speed[size]["round"]["threads_over_sequential"] > 0
    assert speed["sample"]["rounds"] >= 1 and speed["large_image"]["tile_512"]["mpx_per_s"] > 0
    # the engine's per-round host work, timed through the methods the check wraps
    assert set(speed["sample"]["host_s_by_kind"]) == {"predict", "exchange", "instances", "found"}
    # a rehearsal's timings mean nothing: no target is reported met or missed
    assert [t["met"] for t in results["targets"]] == [None, None, None]
    assert set(results["profile"]["runs"]) == {
        "engine, one network",
        "engine, two threads",
        "bare loop, one network",
    }
    assert (out / "gpu_profile.txt").stat().st_size > 0


def test_benchmark_runs_every_method_with_both_box_modes(smoke):
    _, results, out = smoke
    bench = results["bench"]
    assert bench["returncode"] == 0
    assert bench["runs_finished"] == sorted(
        f"{boxes} {method}"
        for boxes in ("exact", "jittered")
        for method in ("mutual", "self", "round1", "full")
    )
    rows = json.loads((out / bench["json"]).read_text())
    assert {r["setting"] for r in rows} == {"boxed", "inductive"}
    assert all(r["device"].startswith("cpu") for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device here would run the check")
def test_without_a_gpu_the_check_says_to_rehearse(tmp_path, capsys, monkeypatch):
    # in this process: the script's own start is rehearsed above, by the smoke run
    spec = importlib.util.spec_from_file_location(
        "gpu_check", REPO / "benchmarks" / "gpu_check.py"
    )
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No CUDA device here" in err and "--smoke" in err
    assert not any(tmp_path.iterdir())
