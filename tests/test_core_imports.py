"""The core must stay usable without Qt or napari (scripts, CLI, servers)."""

import pkgutil
import subprocess
import sys

import napari_mutualseg

#: Every module of the package, subpackages included, except the napari face.
CORE = ["napari_mutualseg"] + [
    m.name
    for m in pkgutil.walk_packages(napari_mutualseg.__path__, "napari_mutualseg.")
    if not m.name.startswith("napari_mutualseg._napari") and not m.name.endswith("__main__")
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
    assert "napari_mutualseg.training" in CORE and "napari_mutualseg.cli.train" in CORE
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
