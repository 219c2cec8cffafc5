"""Take docs/screenshot.png: the bundled sample in napari, mid-training, widget docked.

Run under a display (or Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py   # CPU: minutes
    python docs/make_screenshot.py --device cuda:0 --steps 200
    # the correction step only, with a saved pair: a new image predicted, its disagreement
    # shown, the camera on the first cell to check (docs/correction.png)
    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshot.py --size 1900 1000 \
        --model pair.pt --correction docs/correction.png \
        --new-image ../shared/data/bbbc039/test/images/IXMtest_A02_s1_w1051DAA7C-....tif

It also prints what it measured: seconds per round and the longest time the main thread
(the event loop) went without running a 10 ms timer while the networks trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshot.png"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--patch", type=int, default=128, help="patch size")
    parser.add_argument("--shot-after", type=int, default=2, help="round to take the shot at")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 900), metavar=("W", "H"))
    parser.add_argument("--correction", type=Path, help="also take the correction shot here")
    parser.add_argument("--new-image", type=Path, help="the image predicted for that shot")
    parser.add_argument("--model", type=Path, help="a saved pair: only the correction shot")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer

    from napari_mutualseg._napari import widget as widget_module

    # the docs picture shows the product, not this machine's Qt-binding warning
    widget_module._binding_checked = True
    viewer = napari.Viewer(title="napari-mutualseg")
    viewer.window.resize(*args.size)
    viewer.open_sample("napari-mutualseg", "bbbc039")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", "Mutual segmentation")
    widget.settings.update(
        rounds=args.rounds,
        steps_per_round=args.steps,
        batch_size=args.batch,
        patch_size=args.patch,
        device=args.device,
        show_learning=False,
    )
    viewer.layers["boxes"].opacity = 0.6
    if args.model is not None:
        widget.load_model(args.model)
        correction_shot(viewer, widget, args.new_image, args.correction)
        viewer.close()
        return

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

    shot: dict[str, float] = {}
    started: list[float] = []

    def maybe_shoot() -> None:
        if shot or len(widget.controller.applied_rounds) < args.shot_after:
            return
        # the shot is taken while the next round trains
        shot["t"] = time.perf_counter()
        viewer.layers["nuclei supervision"].visible = False
        viewer.layers["nuclei cells"].opacity = 0.6
        viewer.layers.selection.active = viewer.layers["nuclei cells"]
        image = viewer.screenshot(canvas_only=False, flash=False)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from skimage.io import imsave

        imsave(args.out, image, check_contrast=False)
        print(f"screenshot ({image.shape[1]}x{image.shape[0]}) -> {args.out}")

    poll = QTimer()
    poll.setInterval(100)
    poll.timeout.connect(maybe_shoot)
    poll.start()

    widget.generate_supervision()
    t0 = time.perf_counter()
    worker = widget.train()
    worker.started.connect(lambda: started.append(time.perf_counter()))
    widget.wait()
    poll.stop()
    timer.stop()
    reports = widget.history
    t = np.asarray(ticks)
    t = t[t >= started[0]]
    gaps, begins = np.diff(t), t[:-1]
    shot_gap = 0.0
    if shot:
        # the screenshot itself blocks the event loop; it is not part of training
        during = (begins >= shot["t"] - 0.05) & (begins <= shot["t"] + 2)
        shot_gap = float(gaps[during].max()) if during.any() else 0.0
        gaps = gaps[~during]
    print(
        f"{len(reports)} rounds on {reports[-1]['device'] if reports else '?'}: "
        f"{np.mean([r['seconds'] for r in reports]):.2f} s/round in the engine, "
        f"{(time.perf_counter() - t0) / max(len(reports), 1):.2f} s/round wall; "
        f"longest main-thread gap while training {gaps.max() * 1000:.0f} ms "
        f"(the screenshot itself: {shot_gap * 1000:.0f} ms)"
    )
    if args.correction is not None:
        correction_shot(viewer, widget, args.new_image, args.correction)
    viewer.close()


def correction_shot(viewer, widget, path: Path, out: Path) -> None:
    """Predict a new image, show where A and B disagree, go to the first cell to check."""
    import tifffile
    from skimage.io import imsave

    from napari_mutualseg._napari.layers import camera

    for layer in viewer.layers:
        layer.visible = False
    name = "_".join(path.stem.split("_")[:3])  # IXMtest_A02_s1
    image = viewer.add_image(tifffile.imread(path), name=name, colormap="gray")
    widget.predict(image, block=True)
    cells = viewer.layers[f"{name} cells"]
    cells.contour = 2
    disagreement = viewer.layers[f"{name} disagreement"]
    disagreement.visible, disagreement.colormap, disagreement.opacity = True, "magma", 0.5
    disagreement.blending = "additive"
    spot = widget.correct.next_cell(image)
    camera(viewer).zoom /= 3  # the cell to check with the cells around it
    viewer.layers.selection.active = cells
    shot = viewer.screenshot(canvas_only=False, flash=False)
    imsave(out, shot, check_contrast=False)
    print(
        f"correction screenshot ({shot.shape[1]}x{shot.shape[0]}) -> {out}; first cell to "
        f"check: label {spot.label if spot else '-'} (score {spot.score if spot else 0:.2f})"
    )


if __name__ == "__main__":
    main()
