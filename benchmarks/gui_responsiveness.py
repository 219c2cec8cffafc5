"""Does the viewer freeze? The napari main thread's longest gap at the sizes biologists use.

Usage (a display is needed; under Xvfb as in CI)::

    xvfb-run -a .venv/bin/python benchmarks/gui_responsiveness.py
    xvfb-run -a .venv/bin/python benchmarks/gui_responsiveness.py --cases b,d --profile d

A 10 ms timer on the main thread records when the event loop turns (``time.perf_counter``);
the longest gap between two turns is the freeze a person feels (a gap over ~100 ms is seen).
Each step is taken through the panel's public surface, as the tests take it, in a shown
``napari.Viewer()`` and measured from the click until its results are in the layers:

a) training on a 2048² image with 60 boxes (the bundled sample's network sizes, a few steps
   per round): Generate supervision, then Train (each round's layers: cells, A, B,
   disagreement, the cells table);
b) predicting a 4096² image and a 6000² one (block by block);
c) predicting a 30 x 1024² z-stack and a 40-frame 1024² time series tracked, in memory and
   lazy (dask);
d) the cells panel showing the tables of b) and c) (tens of thousands of cells), and the
   table, Fiji ROI and QuPath exports of File > Save Selected Layers;
e) the folder run on 10 images of 1024²;
f) the correction tools on a)'s results: next cell to check, merge, split, add to training.

Prediction (b-e) uses a pair that thresholds the image (bright is cell): what the main
thread does depends on the sizes and the number of cells, not on the networks, and a real
pair at these sizes takes minutes per image on two cores. The images are tiles of a
synthetic scene of about a thousand cells per 1024².

``--profile CASES`` (e.g. ``bd``) runs cProfile on the main thread during those cases and
prints where its time went (napari's drawing appears under vispy and Qt's paint events).

Writes ``gui_responsiveness.json`` and ``gui_responsiveness.md`` to ``--out`` after every case
(a run stopped halfway keeps the cases it finished), with the machine, the device, the display
and OpenGL renderer, and the machine's load average at the start and the end: on a shared
machine the gaps grow with the load. A run of other cases, rounds or steps than the default,
or profiled, writes ``gui_responsiveness_custom.*`` instead.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import (
    RESULTS,
    load_average,
    load_text,
    machine,
    threshold_pair,
    write_results,
)
from napari_mutualseg.boxes import rectangle_vertices
from napari_mutualseg.config import TrainConfig
from napari_mutualseg.devices import describe_device
from napari_mutualseg.synthetic import synthetic_scene

CASES = "abcdef"
DEFAULTS = {"cases": ",".join(CASES), "rounds": 2, "steps": 5}


class Watch:
    """The main thread's gaps: a 10 ms timer's ticks."""

    def __init__(self, profile: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.profiler = cProfile.Profile() if profile else None

    def measure(self, action: Callable[[], object], done: Callable[[], bool]) -> float:
        """The longest gap (ms) from ``action`` until ``done()`` and the loop settled."""
        self.ticks = []
        self.timer.start()
        t0 = time.perf_counter()
        if self.profiler is not None:
            self.profiler.enable()
        action()
        while not done():
            settle(0.01)
        settle(0.5)  # what the last results cost to draw
        if self.profiler is not None:
            self.profiler.disable()
        self.timer.stop()
        gaps = np.diff([t0, *self.ticks, time.perf_counter()])
        return float(gaps.max() * 1000)


def settle(seconds: float) -> None:
    """Run the event loop for ``seconds``."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()  # napari's get_qapp looks up its icons at every call
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        app.processEvents()
        time.sleep(0.002)


def scene(size: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """An image of ``size`` (planes, y, x) tiled from 1024² scenes of ~1000 cells."""
    tiles = [synthetic_scene((1024, 1024), 1100, seed=seed + k)[0] for k in range(3)]
    *planes, h, w = size
    n = int(np.prod(planes, dtype=int))
    out = np.empty((n, h, w), np.float32)
    for p in range(n):
        tile = np.roll(tiles[p % 3], 37 * p, axis=1)  # cells move from plane to plane
        reps = (-(-h // 1024), -(-w // 1024))
        out[p] = np.tile(tile, reps)[:h, :w]
    return out.reshape(size)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import napari

        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.load_start = load_average()
        self.started = time.perf_counter()
        self.viewer = napari.Viewer(title="gui responsiveness")
        self.viewer.window.resize(1500, 900)
        self.viewer.window._qt_window.show()
        _, self.widget = self.viewer.window.add_plugin_dock_widget(
            "napari-mutualseg", "Mutual segmentation"
        )
        self.tmp = Path(tempfile.mkdtemp(prefix="gui_responsiveness_"))
        settle(1.0)
        self.display = self._display()

    def _display(self) -> str:
        """Qt's platform and the canvas's OpenGL renderer: a software one (llvmpipe under
        Xvfb) draws on the cores that the work runs on."""
        from qtpy.QtWidgets import QApplication
        from vispy.gloo import gl

        canvas = self.viewer.window._qt_viewer.canvas._scene_canvas
        canvas.set_current()
        renderer = gl.glGetParameter(gl.GL_RENDERER)
        return f"{QApplication.instance().platformName()}, OpenGL {renderer}"

    def run(
        self,
        case: str,
        name: str,
        action: Callable[[], object],
        note: str = "",
        done: Callable[[], bool] | None = None,
    ) -> None:
        watch = Watch(profile=case in (self.args.profile or ""))
        widget = self.widget
        gap = watch.measure(action, done or (lambda: not widget.is_busy))
        self.rows.append({"step": f"{case}) {name}", "gap_ms": round(gap), "note": note})
        print(f"{case}) {name}: {gap:.0f} ms {note}", flush=True)
        if watch.profiler is not None:
            out = io.StringIO()
            stats = pstats.Stats(watch.profiler, stream=out).sort_stats("cumulative")
            stats.print_stats(30)
            print(out.getvalue())

    def threshold_pair(self) -> None:
        self.widget.controller.set_pair(threshold_pair())

    def fresh(self) -> None:
        self.viewer.layers.clear()
        settle(0.3)

    # -- the cases --------------------------------------------------------------------------

    def a(self) -> None:
        viewer, widget = self.viewer, self.widget
        image, _, boxes = synthetic_scene((2048, 2048), 4000, seed=1)
        layer = viewer.add_image(image, name="train2048")
        shapes = widget.new_boxes_layer()
        shapes.add_rectangles(rectangle_vertices(boxes[:60]))
        widget.image_layer, widget.boxes_layer = layer, shapes
        config = TrainConfig.recommended("cpu")
        widget.settings.update(
            rounds=self.args.rounds, steps_per_round=self.args.steps, width=config.width,
            depth=config.depth, batch_size=config.batch_size, patch_size=config.patch_size,
            device="cpu",
        )  # fmt: skip
        settle(0.5)
        self.run("a", "Generate supervision, 2048², 60 boxes", widget.generate_supervision)
        self.run("a", f"Train, 2048², {self.args.rounds} rounds", widget.train)

    def b(self) -> None:
        self.threshold_pair()
        for size in (4096, 6000):
            layer = self.viewer.add_image(scene((size, size)), name=f"b{size}")
            settle(0.3)
            self.run("b", f"Predict {size}²", lambda layer=layer: self.widget.predict(layer))
            self._cells(f"b{size} cells")

    def c(self) -> None:
        import dask.array as da

        self.threshold_pair()
        stack = scene((30, 1024, 1024))
        movie = scene((40, 1024, 1024), seed=3)
        for name, data, labels, track in (
            ("zstack", stack, "zyx", False),
            ("movie", movie, "tyx", True),
            ("lazy zstack", da.from_array(stack, chunks=(1, 1024, 1024)), "zyx", False),
            ("lazy movie", da.from_array(movie, chunks=(1, 1024, 1024)), "tyx", True),
        ):
            layer = self.viewer.add_image(data, name=name, axis_labels=tuple(labels))
            self.widget.settings.update(track=track)
            settle(0.3)
            what = f"Predict {name} {data.shape[0]} x 1024²" + (", tracked" if track else "")
            self.run("c", what, lambda layer=layer: self.widget.predict(layer))
            if not name.startswith("lazy"):
                self._cells(f"{name} cells")
        self.widget.settings.update(track=False)

    def _cells(self, name: str) -> None:
        """Keep a cells layer of b) and c) for d)."""
        self.cells = getattr(self, "cells", [])
        self.cells.append(name)

    def d(self) -> None:
        import napari

        viewer = self.viewer
        for name in getattr(self, "cells", []):
            layer = viewer.layers[name]
            n = len(layer.features)
            viewer.layers.selection.active = viewer.layers[0]
            settle(0.2)

            def select(layer=layer) -> None:
                viewer.layers.selection.active = layer

            self.run("d", f"cells panel shows {name}", select, f"{n} rows")
            kinds = [("csv", "table"), ("zip", "Fiji ROIs")]
            if layer.ndim == 2:
                kinds.append(("geojson", "QuPath"))
            for suffix, what in kinds:
                path = self.tmp / f"{name.replace(' ', '_')}.{suffix}"

                def save(path=path, layer=layer) -> None:
                    napari.save_layers(str(path), [layer], plugin="napari-mutualseg")

                self.run("d", f"File > Save {what}, {name}", save)
            if layer.ndim == 2:  # the panel's button, its dialog answered
                from qtpy.QtWidgets import QFileDialog

                path = self.tmp / f"panel_{name.replace(' ', '_')}.zip"
                QFileDialog.getSaveFileName = lambda *a, path=path, **k: (str(path), "")
                button = self.widget.cells.buttons["fiji"]
                self.run("d", f"Cells panel, Fiji ROIs…, {name}", button.click, "", path.exists)

    def e(self) -> None:
        import tifffile

        self.threshold_pair()
        folder = self.tmp / "folder"
        folder.mkdir()
        for k in range(10):
            tifffile.imwrite(folder / f"img{k:02d}.tif", scene((1024, 1024), seed=k))
        out = self.tmp / "folder_out"
        self.run(
            "e", "Segment a folder, 10 x 1024²", lambda: self.widget.segment_folder(folder, out)
        )

    def f(self) -> None:
        viewer, widget = self.viewer, self.widget
        if "train2048" not in viewer.layers:
            print("f) needs a): skipped")
            return
        image = viewer.layers["train2048"]
        widget.check.image.layer = image
        for press in ("first", "second"):  # the button, which searches in a worker
            self.run(
                "f",
                f"Next cell to check, {press} press (training image)",
                widget.check.next.click,
                "",
                widget.check.next.isEnabled,
            )
        # a second 2048² image predicted with the trained pair: what a person corrects and adds
        other = viewer.add_image(synthetic_scene((2048, 2048), 4000, seed=2)[0], name="other2048")
        settle(0.3)
        self.run("f", "Predict 2048² (trained pair)", lambda: widget.predict(other))
        cells = viewer.layers["other2048 cells"]
        ids = np.unique(np.asarray(cells.data))
        ids = ids[ids > 0]
        print(f"   {len(ids)} cells on other2048")
        if len(ids) < 3:  # a pair trained a few steps may find none: thresholded instead
            print("   too few to correct: the cells of a thresholding pair are corrected")
            trained = widget.pair
            self.threshold_pair()
            self.run("f", "Predict 2048² (thresholding pair)", lambda: widget.predict(other))
            widget.controller.set_pair(trained)  # the pair Add to training goes on training
            cells = viewer.layers["other2048 cells"]
            ids = np.unique(np.asarray(cells.data))
            ids = ids[ids > 0]
        viewer.layers.selection.active = cells
        settle(0.5)
        self.run(
            "f", "Next cell to check (predicted image)", lambda: widget.correct.next_cell(other)
        )
        self.run(
            "f", "Merge two cells", lambda: widget.correct.merge(other, int(ids[0]), int(ids[1]))
        )
        self.run("f", "Split a cell", lambda: widget.correct.split(other, int(ids[2])))
        widget.check.image.layer = other

        def add() -> None:
            widget.check._do(widget.check._add)

        self.run("f", f"Add to training (trains {self.args.rounds} rounds)", add)
        self.run(
            "f",
            "Propose boxes, 2048² (predicted cells)",
            widget.check.propose.click,
            "",
            widget.check.propose.isEnabled,
        )

    def report(self, argv: list[str]) -> tuple[dict[str, Any], str]:
        """The report of the cases run so far and its table."""
        return results(
            self.rows,
            machine=machine(),
            device=describe_device(torch.device("cpu")),  # a) sets it; the pairs are there
            display=self.display,
            loads=(self.load_start, load_average()),
            seconds=time.perf_counter() - self.started,
            command=" ".join(["python benchmarks/gui_responsiveness.py", *argv]),
        )


def results(
    rows: list[dict[str, Any]],
    *,
    machine: str,
    device: str,
    display: str,
    loads: tuple[list[float] | None, list[float] | None],
    seconds: float,
    command: str,
) -> tuple[dict[str, Any], str]:
    """The JSON report of ``rows`` and its markdown table, headed by where and how they were
    measured (``loads``: the load average at the start and now)."""
    report = {
        "machine": machine,
        "device": device,
        "display": display,
        "load_average": {"start": loads[0], "end": loads[1]},
        "seconds": round(seconds),
        "command": command,
        "rows": rows,
    }
    lines = [
        f"**The main thread's longest gap per step** — {machine}; device {device}; display "
        f"{display}; load average (1 / 5 / 15 min) {load_text(loads[0])} at the start, "
        f"{load_text(loads[1])} at the end; {seconds:.0f} s in all (`{command}`).",
        "",
        "| step | longest main-thread gap | |",
        "|---|---|---|",
    ]
    lines += [f"| {r['step']} | {r['gap_ms']} ms | {r['note']} |" for r in rows]
    return report, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULTS["cases"], help="e.g. a,f or b,d")
    p.add_argument("--rounds", type=int, default=DEFAULTS["rounds"], help="rounds in a) and f)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="steps per round, a), f)")
    p.add_argument("--profile", help="cProfile the main thread in these cases, e.g. bd")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    custom = args.profile or any(getattr(args, k) != v for k, v in DEFAULTS.items())
    name = "gui_responsiveness" + ("_custom" if custom else "")
    bench = Bench(args)
    for case in args.cases.split(","):
        getattr(bench, case.strip())()
        report, table = bench.report(argv)
        write_results(args.out, name, report, table)
    print(f"\n{table}")
    bench.widget.shutdown()
    bench.viewer.close()


if __name__ == "__main__":
    main()
