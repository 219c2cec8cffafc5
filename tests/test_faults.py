"""The fast part of the fault suite (``benchmarks/faults.py``): every case must end with a clear
message or do its job, with nothing lost, no traceback and no hang.

Most cases call the command in this process; the interruptions and the tile sizes that once
ran for ever run in a subprocess with a time limit. Cases that need a tmpfs mount or
``chattr +i`` are skipped, with the reason, where the machine refuses them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# tiny networks train faster on one torch thread (conftest.py)

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"
_spec = importlib.util.spec_from_file_location("bench_faults", _PATH)
faults = importlib.util.module_from_spec(_spec)
sys.modules["bench_faults"] = faults  # dataclasses look their module up
_spec.loader.exec_module(faults)

FAST = [case for case in faults.all_cases() if case.fast]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_fixtures")
    faults.build_fixtures(folder)
    before = {p.name: faults.sha(p) for p in folder.iterdir()}
    yield folder
    assert {p.name: faults.sha(p) for p in folder.iterdir()} == before, "a case changed a fixture"


@pytest.mark.parametrize("case", FAST, ids=[f"{c.group}: {c.name}" for c in FAST])
def test_fault_is_handled(case, fixtures, tmp_path):
    outcome = faults.run_case(case, fixtures, tmp_path / "case", in_process=True)
    if outcome.verdict == "skipped":
        pytest.skip(outcome.notes[0])
    err = outcome.result.err[-2000:] if outcome.result else ""
    assert outcome.verdict in ("clear", "handled"), f"{outcome.verdict}: {outcome.notes}\n{err}"


def test_every_group_has_fast_cases():
    groups = {case.group for case in faults.all_cases()}
    assert groups == {case.group for case in FAST} | {"concurrent runs"}
    assert len(FAST) >= 100
