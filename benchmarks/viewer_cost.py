"""What the viewer costs while training: round time in napari against headless, main-thread stalls.

Usage (a display is needed; under Xvfb as in CI)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/viewer_cost.py
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/viewer_cost.py --rounds 1 --steps 20

Trains the bundled sample with the CPU defaults (``TrainConfig.recommended("cpu")``) three
ways, in this order: headless (the engine alone), in a shown napari window with hands off,
and in the window while the camera pans and zooms continuously (60 times a second). For each
it reports the engine's seconds per round and, in the viewer, the longest gap of a 10 ms timer
on the main thread from the moment Train is pressed until the last round is in the layers
(Train start and layer writes included), and how often the canvas repainted. Writes
``results/viewer_cost.json`` and ``results/viewer_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_mutualseg._napari.layers import camera
from napari_mutualseg.boxes import boxes_from_shapes
from napari_mutualseg.config import TrainConfig
from napari_mutualseg.devices import describe_device, select_device
from napari_mutualseg.sample import load_sample
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.training import MutualTrainer

RESULTS = Path(__file__).resolve().parent / "results"


def headless(config: TrainConfig) -> dict:
    sample = load_sample()
    sup = make_supervision(sample.image.shape, boxes_from_shapes(sample.boxes))
    seconds = [r.seconds for r in MutualTrainer(sample.image, sup, config)]
    return {"mode": "headless", "seconds_per_round": float(np.mean(seconds)), "rounds": seconds}


def in_viewer(config: TrainConfig, pan_zoom: bool) -> dict:
    import napari
    from qtpy.QtCore import QEvent, QObject, QTimer
    from qtpy.QtWidgets import QOpenGLWidget

    viewer = napari.Viewer(title="napari-mutualseg")
    viewer.window.resize(1500, 900)
    viewer.window._qt_window.show()
    viewer.open_sample("napari-mutualseg", "bbbc039")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", "Mutual segmentation")
    widget.settings.update(
        rounds=config.rounds,
        steps_per_round=config.steps_per_round,
        width=config.width,
        depth=config.depth,
        batch_size=config.batch_size,
        patch_size=config.patch_size,
        device=config.device,
    )
    widget.generate_supervision()

    class Paints(QObject):
        count = 0

        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                self.count += 1
            return False

    paints = Paints()
    for canvas in widget.window().findChildren(QOpenGLWidget):
        canvas.installEventFilter(paints)
    wait_until = time.perf_counter() + 1.0
    while time.perf_counter() < wait_until:  # let the window settle
        napari.qt.get_qapp().processEvents()

    ticks: list[float] = []
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    mover = QTimer(interval=16)
    view = camera(viewer)
    start_zoom = view.zoom
    phase = [0.0]

    def move() -> None:
        phase[0] += 0.05
        view.zoom = start_zoom * (1.2 + 0.2 * math.sin(phase[0]))
        view.center = (260 + 40 * math.sin(phase[0] / 2), 348 + 40 * math.cos(phase[0]))

    mover.timeout.connect(move)
    timer.start()
    if pan_zoom:
        mover.start()
    paints.count = 0
    t0 = time.perf_counter()
    widget.train(block=True)
    elapsed = time.perf_counter() - t0
    timer.stop()
    mover.stop()
    gaps = np.diff(np.asarray([t0, *ticks]))
    history = widget.history
    result = {
        "mode": "viewer, pan and zoom" if pan_zoom else "viewer, hands off",
        "seconds_per_round": float(np.mean([h["seconds"] for h in history])),
        "rounds": [h["seconds"] for h in history],
        "longest_gap_ms": float(gaps.max() * 1000),
        "gaps_over_100ms": int((gaps > 0.1).sum()),
        "canvas_paints_per_s": paints.count / elapsed,
        "wall_s": elapsed,
    }
    widget.shutdown()
    viewer.close()
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, help="steps per round (default: the CPU default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    overrides = {"rounds": args.rounds} | ({"steps_per_round": args.steps} if args.steps else {})
    config = TrainConfig.recommended("cpu", **overrides)
    device = describe_device(select_device("cpu"))
    rows = [headless(config), in_viewer(config, False), in_viewer(config, True)]
    base = rows[0]["seconds_per_round"]
    for row in rows:
        row["ratio_to_headless"] = row["seconds_per_round"] / base
        print(json.dumps(row))
    keys = ("rounds", "steps_per_round", "width", "depth", "batch_size", "patch_size")
    meta = {
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        "torch threads",
        "config": {k: getattr(config, k) for k in keys},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "viewer_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"Bundled sample, CPU defaults ({meta['config']}), {device}, under Xvfb.",
        "",
        "| mode | s/round | × headless | longest main-thread gap | gaps > 100 ms | paints/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = f"{r['longest_gap_ms']:.0f} ms" if "longest_gap_ms" in r else "–"
        over = str(r.get("gaps_over_100ms", "–"))
        paints = f"{r['canvas_paints_per_s']:.1f}" if "canvas_paints_per_s" in r else "–"
        lines.append(
            f"| {r['mode']} | {r['seconds_per_round']:.1f} | {r['ratio_to_headless']:.2f} | "
            f"{gap} | {over} | {paints} |"
        )
    (args.out / "viewer_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
