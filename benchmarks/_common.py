"""What the benchmark scripts share: a pair that thresholds, the peak memory of a process, the
machine they ran on and how busy it was, and a result's JSON and table written into place."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_mutualseg.files import write_text

if TYPE_CHECKING:
    from napari_mutualseg.models import ModelPair

RESULTS = Path(__file__).resolve().parent / "results"


def threshold_pair() -> ModelPair:
    """A pair whose networks call every pixel brighter than the middle of the range cell.

    Untrained and instant: what a benchmark then measures is the pipeline around the networks
    (reading, normalising, instances, linking, writing, the viewer), which depends on the sizes
    and the number of cells, not on a U-Net (a real one at these sizes takes minutes per image
    on two cores). The tests keep their own (``tests/helpers.py``).
    """
    import torch

    from napari_mutualseg.models import ModelPair

    class ThresholdNet(torch.nn.Module):
        divisor = 1

        def __init__(self) -> None:
            super().__init__()
            self.arch = {"in_channels": 1, "n_classes": 3}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([(0.5 - x) * 8, (x - 0.5) * 8, x * 0 - 8], dim=1)

    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4, "rgb": "gray"})


def peak_mib() -> float:
    """This process's peak resident memory in MiB (NaN where the system does not say).

    Linux's ``VmHWM``: unlike ``ru_maxrss``, which a child started by ``subprocess`` inherits
    from its parent (a parent that trained a pair raises every child's peak to its own), it
    is the process's own.
    """
    from napari_mutualseg.image_task import peak_memory

    peak = peak_memory()
    return float("nan") if peak is None else peak / 2**20


def machine() -> str:
    """The machine a result was measured on: architecture, processor and cores."""
    return f"{platform.machine()}, {_processor()}, {os.cpu_count()} cores"


def _processor() -> str:
    """The processor's name; Python's ``platform.processor()`` is empty on most Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "processor unknown"


def load_average() -> list[float] | None:
    """The machine's load average over 1, 5 and 15 minutes (None where unknown: Windows):
    on a shared machine, what the timings were measured against."""
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_text(load: list[float] | None) -> str:
    """A load average as a table's heading gives it: ``1.02 / 0.87 / 0.80``."""
    return "unknown" if load is None else " / ".join(f"{v:.2f}" for v in load)


def write_results(out: Path, name: str, report: dict[str, Any], table: str) -> None:
    """Write ``out/<name>.json`` (``report``) and ``out/<name>.md`` (``table``), each whole
    or not at all (a run stopped while writing leaves the previous result)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(report, indent=1) + "\n", overwrite=True)
    write_text(out / f"{name}.md", table.rstrip("\n") + "\n", overwrite=True)
