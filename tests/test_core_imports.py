"""The core must stay usable without Qt or napari (scripts, CLI, servers)."""

import subprocess
import sys

CORE = [
    "napari_mutualseg",
    "napari_mutualseg.supervision",
    "napari_mutualseg.models",
    "napari_mutualseg.training",
    "napari_mutualseg.exchange",
    "napari_mutualseg.inference",
    "napari_mutualseg.metrics",
    "napari_mutualseg.io",
    "napari_mutualseg.checkpoint",
    "napari_mutualseg.preprocess",
    "napari_mutualseg.sample",
    "napari_mutualseg.synthetic",
    "napari_mutualseg.cli",
]

FORBIDDEN = (
    "napari",
    "qtpy",
    "PySide6",
    "PySide2",
    "PyQt5",
    "PyQt6",
    "magicgui",
    "superqt",
    "vispy",
)


def test_core_imports_neither_qt_nor_napari():
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"the core imported GUI modules: {out}"
