"""What the viewer costs while training: round time in napari against headless, main-thread stalls.

Usage (a display is needed; under Xvfb as in CI)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/viewer_cost.py --repeat 2
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/viewer_cost.py --rounds 1 --steps 20

Trains the bundled sample with the CPU defaults (``TrainConfig.recommended("cpu")``):
headless (the engine alone) and in a shown napari window with hands off, alternately
``--repeat`` times, then once in the window while the camera pans and zooms continuously
(60 times a second). In the window the user's steps are taken as a biologist takes them:
*Generate supervision* (which also makes the empty result layers, one per event-loop turn),
then, once its layers are there, *Train*. Each step is measured with a 10 ms timer on the
main thread: its longest gap, from the click until the step is done (for Train: until the
last round is in the layers), and the gaps over 100 ms. Also counted: how often the window
was redrawn (any change in the panel redraws the whole window: it holds an OpenGL canvas)
and how often the canvas itself. Last, Train is pressed on boxes alone (no supervision made
first) and stopped once training runs: what making the supervision and its layers on the
way costs. Writes ``results/viewer_cost.json`` and ``results/viewer_cost.md``.
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
from napari_mutualseg.files import write_text
from napari_mutualseg.sample import load_sample
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.training import MutualTrainer

RESULTS = Path(__file__).resolve().parent / "results"
HANDS_OFF = "viewer, hands off"


def headless(config: TrainConfig) -> dict:
    sample = load_sample()
    sup = make_supervision(sample.image.shape, boxes_from_shapes(sample.boxes))
    seconds = [r.seconds for r in MutualTrainer(sample.image, sup, config)]
    return {"mode": "headless", "seconds_per_round": float(np.mean(seconds)), "rounds": seconds}


class Watch:
    """The main thread's gaps (a 10 ms timer) and the window's and canvas's redraws."""

    def __init__(self, widget) -> None:
        from qtpy.QtCore import QEvent, QObject, QTimer
        from qtpy.QtWidgets import QOpenGLWidget

        class Paints(QObject):
            count = 0

            def eventFilter(self, obj, event):
                self.count += event.type() == QEvent.Type.Paint
                return False

        window = widget.window()
        self.window = Paints()  # the main window's own paints: its redraws
        window.installEventFilter(self.window)
        self.canvas = Paints()
        for canvas in window.findChildren(QOpenGLWidget):
            canvas.installEventFilter(self.canvas)
        self.ticks: list[float] = []
        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.window.count = self.canvas.count = 0
        self.timer.start()
        self.t0 = time.perf_counter()
        self.ticks = []

    def stop(self) -> dict:
        elapsed = time.perf_counter() - self.t0
        self.timer.stop()
        gaps = np.diff(np.asarray([self.t0, *self.ticks, time.perf_counter()]))
        return {
            "longest_gap_ms": float(gaps.max() * 1000),
            "gaps_over_100ms": int((gaps > 0.1).sum()),
            "window_redraws_per_s": self.window.count / elapsed,
            "canvas_paints_per_s": self.canvas.count / elapsed,
            "wall_s": elapsed,
        }


def open_window(config: TrainConfig):
    import napari

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
    settle(1.0)
    return viewer, widget, Watch(widget)


def settle(seconds: float) -> None:
    """Run the event loop for ``seconds`` (a person looking at the result)."""
    import napari

    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        napari.qt.get_qapp().processEvents()
        time.sleep(0.005)


def in_viewer(config: TrainConfig, pan_zoom: bool) -> dict:
    from qtpy.QtCore import QTimer

    viewer, widget, watch = open_window(config)
    watch.start()
    widget.generate_supervision()
    widget.wait()  # until the result layers are made
    supervision = watch.stop()
    settle(2.0)

    mover = QTimer(interval=16)
    view = camera(viewer)
    start_zoom = view.zoom
    phase = [0.0]

    def move() -> None:
        phase[0] += 0.05
        view.zoom = start_zoom * (1.2 + 0.2 * math.sin(phase[0]))
        view.center = (260 + 40 * math.sin(phase[0] / 2), 348 + 40 * math.cos(phase[0]))

    mover.timeout.connect(move)
    watch.start()
    if pan_zoom:
        mover.start()
    widget.train(block=True)
    mover.stop()
    training = watch.stop()
    history = widget.history
    result = {
        "mode": "viewer, pan and zoom" if pan_zoom else HANDS_OFF,
        "seconds_per_round": float(np.mean([h["seconds"] for h in history])),
        "rounds": [h["seconds"] for h in history],
        **training,
        "supervision": supervision,
    }
    widget.shutdown()
    viewer.close()
    return result


def train_from_boxes(config: TrainConfig) -> dict:
    """Train pressed with boxes only: the gaps until training runs (then stopped)."""
    from napari_mutualseg._napari.runs import RunState

    viewer, widget, watch = open_window(config)
    watch.start()
    widget.train()
    while widget.controller.state is RunState.STARTING:
        settle(0.01)
    start = watch.stop()
    if widget.controller.state is not RunState.TRAINING:
        raise RuntimeError(f"Training did not start: {widget.controller.last_message}")
    widget.stop()
    widget.wait()
    widget.shutdown()
    viewer.close()
    return {"mode": "viewer, Train on boxes alone (until training runs)", **start}


def with_ratios(rows: list[dict]) -> float:
    """Each window row's round time against the headless run just before it (the machine's
    own speed drifts between runs); the mean ratio of the hands-off runs."""
    base = None
    for r in rows:
        if r["mode"] == "headless":
            base = r["seconds_per_round"]
        if "seconds_per_round" in r:
            r["ratio_to_headless"] = r["seconds_per_round"] / base
    return float(np.mean([r["ratio_to_headless"] for r in rows if r["mode"] == HANDS_OFF]))


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| step | s/round | × headless | longest main-thread gap | gaps > 100 ms | "
        "window redraws/s | canvas paints/s |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(name: str, r: dict) -> str:
        s = (
            f"{r['seconds_per_round']:.1f} | {r['ratio_to_headless']:.2f}"
            if "ratio_to_headless" in r
            else "– | –"
        )
        gap = f"{r['longest_gap_ms']:.0f} ms" if "longest_gap_ms" in r else "–"
        counts = (
            f"{r['window_redraws_per_s']:.1f} | {r['canvas_paints_per_s']:.1f}"
            if "window_redraws_per_s" in r
            else "– | –"
        )
        return f"| {name} | {s} | {gap} | {r.get('gaps_over_100ms', '–')} | {counts} |"

    for r in rows:
        if "supervision" in r:
            lines.append(line(f"{r['mode']}: Generate supervision", r["supervision"]))
            lines.append(line(f"{r['mode']}: Train", r))
        else:
            lines.append(line(r["mode"], r))
    return lines


def write_results(rows: list[dict], meta: dict, out: Path) -> None:
    """``viewer_cost.json`` and ``viewer_cost.md`` in ``out``."""
    meta["hands_off_ratio"] = ratio = with_ratios(rows)
    write_text(
        out / "viewer_cost.json",
        json.dumps({"meta": meta, "rows": rows}, indent=2),
        overwrite=True,
    )
    runs = sum(r["mode"] == HANDS_OFF for r in rows)
    lines = [
        f"Bundled sample, CPU defaults ({meta['config']}), {meta['device']}, {meta['machine']}, "
        "under Xvfb. × headless: against the headless run just before; hands off, the "
        f"window's rounds take {ratio:.2f} × that on average over {runs} run(s).",
        "",
        *table(rows),
    ]
    write_text(out / "viewer_cost.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, help="steps per round (default: the CPU default)")
    p.add_argument("--repeat", type=int, default=1, help="headless / hands-off pairs")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    overrides = {"rounds": args.rounds} | ({"steps_per_round": args.steps} if args.steps else {})
    config = TrainConfig.recommended("cpu", **overrides)
    rows = []
    for _ in range(args.repeat):
        rows += [headless(config), in_viewer(config, False)]
    rows += [in_viewer(config, True), train_from_boxes(config)]
    for row in rows:
        print(json.dumps(row))
    keys = ("rounds", "steps_per_round", "width", "depth", "batch_size", "patch_size")
    meta = {
        "device": describe_device(select_device("cpu")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        "torch threads",
        "config": {k: getattr(config, k) for k in keys},
    }
    write_results(rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
