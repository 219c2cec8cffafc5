"""Fault suite: what napari-mutualseg does with bad inputs, broken or malicious model files,
full and read-only disks, interruptions, same-name inputs and runs that race each other.

    python benchmarks/faults.py                 # every case, then the table (results/faults.md)
    python benchmarks/faults.py --fast          # the cases the test suite runs
    python benchmarks/faults.py --group models --verbose

Each case runs the ``napari-mutualseg`` command in a subprocess with a time limit (or, for the
engine and the writers, a short Python script), then checks what happened to the files. It
gets one verdict, the worst that applies:

- **hang**: it did not end within its time limit;
- **data loss**: a file that was there before changed or vanished, a result that was reported
  is missing or unreadable, finished work was not kept, or a temporary file was left behind;
- **traceback**: a Python traceback instead of a message;
- **unclear or wrong**: a mistake accepted without a word, an error message without the words
  that say what is wrong, buried under log lines, or a check that came only after the work;
- **clear**: refused with a message of one line that says what is wrong;
- **handled**: did the right thing (for cases that are no mistake, e.g. same-name inputs).

Cases that need what a machine may refuse (mounting a small tmpfs, ``chattr +i``) are skipped
with the reason. ``tests/test_faults.py`` runs the fast cases in the test process itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

TINY = "--rounds 1 --steps 2 --width 4 --depth 2 --patch-size 32 --batch-size 2 --device cpu"
#: Training long enough to be interrupted after its first round.
LONG = TINY.replace("--rounds 1 --steps 2", "--rounds 50 --steps 4")
VERDICTS = ("handled", "clear", "unclear or wrong", "traceback", "data loss", "hang", "skipped")
TRACEBACK = "Traceback (most recent call last)"
#: Lines of an error report (besides warnings and progress bars) still read as one message.
MAX_MESSAGE_LINES = 2


# --------------------------------------------------------------------------- running things


@dataclass
class Result:
    """What a case's run returned."""

    rc: int | None
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    peak_mb: float | None = None  # the subprocess's peak memory (resident)


class Skip(Exception):
    """The machine does not allow this case; the message says why."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: The command, run so that it also reports its peak memory (to the file FAULTS_PEAK names).
CLI = [
    sys.executable,
    "-c",
    """
import os, sys
from napari_mutualseg.cli import main
from napari_mutualseg.image_task import peak_memory  # its own, not this suite's (ru_maxrss)
try:
    code = main(sys.argv[1:])
finally:
    with open(os.environ["FAULTS_PEAK"], "w") as f:
        f.write(str(peak_memory() or ""))  # bytes
sys.exit(code)
""",
]


class Job:
    """A subprocess whose output is collected while it runs (so it can be watched)."""

    def __init__(self, argv: Sequence, cwd: Path) -> None:
        self.start = time.perf_counter()
        fd, self.peak = tempfile.mkstemp(suffix=".peak")
        os.close(fd)
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env={**_env(), "FAULTS_PEAK": self.peak},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(s, b), daemon=True)
            for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for chunk in iter(lambda: stream.read(1), ""):
            into.append(chunk)

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def wait_for(self, marker: str, timeout: float) -> bool:
        """Wait until ``marker`` appears in the output; False if the run ended or timed out."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if marker in self.text():
                return True
            if self.proc.poll() is not None:
                return marker in self.text()
            time.sleep(0.05)
        return False

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def finish(self, timeout: float) -> Result:
        timed_out = False
        try:
            rc = self.proc.wait(timeout=max(timeout - (time.perf_counter() - self.start), 1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            timed_out = True
        for t in self._threads:
            t.join(5)
        peak = Path(self.peak).read_text().strip()
        os.unlink(self.peak)
        return Result(
            rc,
            "".join(self.out),
            "".join(self.err),
            time.perf_counter() - self.start,
            timed_out,
            int(peak) / 2**20 if peak else None,
        )


def run_cli(argv: Sequence[str], cwd: Path, *, timeout: float, in_process: bool) -> Result:
    """``napari-mutualseg ARGV`` in a subprocess, or called in this process (no time limit)."""
    argv = [str(a) for a in argv]
    if not in_process:
        return Job([*CLI, *argv], cwd).finish(timeout)
    from napari_mutualseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            traceback.print_exc()
            rc = 1
    return Result(rc, out.getvalue(), err.getvalue(), time.perf_counter() - start)


def run_python(code: str, cwd: Path, *, timeout: float) -> Result:
    """A Python snippet in a subprocess with this checkout's package on the path."""
    return Job([sys.executable, "-c", code], cwd).finish(timeout)


# --------------------------------------------------------------------------- the case's world


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Ctx:
    """A case's folder, the shared fixtures, and what must survive the case unchanged."""

    fx: Path
    work: Path
    in_process: bool = False
    protected: dict[Path, str] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def protect(self, path: Path) -> Path:
        """Remember ``path``'s content: the case fails with data loss if it changes."""
        self.protected[Path(path)] = sha(path)
        return Path(path)

    def copy(self, name: str, to: Path | None = None) -> Path:
        """A fixture copied into the case's folder (or to ``to``)."""
        target = Path(to) if to is not None else self.work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.fx / name, target)
        return target

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
        return path

    def cli(self, argv: Sequence, timeout: float = 120, *, spawn: bool = False) -> Result:
        return run_cli(argv, self.work, timeout=timeout, in_process=self.in_process and not spawn)

    # -- disks the machine may refuse -----------------------------------------------------

    def tmpfs(self, name: str, size: str = "1m") -> Path:
        """A small tmpfs mounted at ``work/name`` (unmounted after the case)."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise Skip("mounting a tmpfs needs root")
        path = self.work / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise Skip(f"this machine refuses a tmpfs mount ({done.stderr.strip()})")
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        return path

    def read_only(self, path: Path) -> None:
        """Remount the tmpfs at ``path`` read-only."""
        done = subprocess.run(
            ["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True
        )
        if done.returncode:
            raise Skip(f"cannot remount read-only ({done.stderr.strip()})")

    def fill(self, path: Path, leave: int = 0) -> None:
        """Fill the disk of ``path`` until at most ``leave`` bytes are free."""
        free = shutil.disk_usage(path).free - leave
        with open(path / "filler", "wb") as f, contextlib.suppress(OSError):
            while free > 0:
                n = min(free, 1 << 16)
                f.write(b"\0" * n)
                f.flush()
                free -= n

    def immutable(self, path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode:
            raise Skip(f"chattr +i is not possible here ({done.stderr.strip()})")
        self.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


# --------------------------------------------------------------------------- checks


def loads_model(path: Path) -> str | None:
    """Why ``path`` is not a loadable model, or None."""
    from napari_mutualseg.models import ModelPair

    try:
        ModelPair.load(path, device="cpu")
    except Exception as err:
        return f"{path.name} does not load: {err}"
    return None


def reads_labels(path: Path) -> str | None:
    """Why ``path`` is not a readable label TIFF, or None."""
    import tifffile

    try:
        labels = tifffile.imread(path)
    except Exception as err:
        return f"{path.name} is not a readable TIFF: {err}"
    if labels.ndim < 2 or labels.size == 0:
        return f"{path.name} has shape {labels.shape}"
    return None


def leftovers(folder: Path) -> list[str]:
    """Temporary files left behind in ``folder`` (recursively)."""
    return [
        f"temporary file left: {p.relative_to(folder)}"
        for p in folder.rglob("*")
        if p.name.endswith((".part", ".tmp")) or p.name.startswith(".")
    ]


def message_lines(err: str) -> list[str]:
    """The lines of an error report that are not progress bars, warnings, usage text, where
    the work runs (``Training on cpu``, ``Segmenting in this process on cpu``) or what the
    tool says it read (``cells.tif: 64 x 80 px, axes YX``, ``cells.tif: 5 boxes``)."""
    lines = []
    for raw in err.splitlines():
        line = raw.split("\r")[-1]
        said = ("warning:", "Training on", "Segmenting ", "usage:", " ")
        if not line.strip() or line.startswith(said):
            continue  # argparse's usage goes on in indented lines
        if re.match(r"\S+: (\d+ x \d+ px|\d+ boxes)\b", line):
            continue
        line = line.strip()
        if "step/s" in line or "s/step" in line or "image/s" in line or "|" in line:
            continue
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One fault. ``run`` makes the files and runs it; ``check`` lists what was lost."""

    group: str
    name: str
    run: Callable[[Ctx], Result]
    expect: str = "error"  # "error": refused with a message; "ok": does its job
    says: tuple[str, ...] = ()
    check: Callable[[Ctx, Result], list[str]] | None = None
    wrong: Callable[[Ctx, Result], list[str]] | None = None
    ok_codes: tuple[int, ...] = (0,)
    fast: bool = True


@dataclass
class Outcome:
    case: Case
    verdict: str
    result: Result | None
    notes: list[str]

    @property
    def detail(self) -> str:
        """The run's last word: its message, or what a script printed."""
        if self.result is None:
            return ""
        lines = message_lines(self.result.err) or self.result.out.strip().splitlines()
        return lines[-1] if lines else ""


def judge(case: Case, ctx: Ctx, result: Result) -> Outcome:
    """The worst verdict that applies (see the module docs)."""
    notes: list[str] = []
    if result.timed_out:
        return Outcome(case, "hang", result, [f"still running after {result.seconds:.0f} s"])
    lost = [f"{p.name} changed or vanished" for p, h in ctx.protected.items() if _hash(p) != h]
    lost += leftovers(ctx.work)
    if case.check is not None:
        lost += case.check(ctx, result)
    if lost:
        return Outcome(case, "data loss", result, lost)
    if TRACEBACK in result.err:
        return Outcome(case, "traceback", result, [result.err.strip().splitlines()[-1]])
    if case.wrong is not None:
        notes += case.wrong(ctx, result)
    if case.expect == "ok":
        if result.rc not in case.ok_codes:
            notes.append(f"exit status {result.rc}: {' / '.join(message_lines(result.err))}")
        return Outcome(case, "unclear or wrong" if notes else "handled", result, notes)
    lines = message_lines(result.err)
    if result.rc == 0:
        notes.append("accepted without an error")
    elif not lines:
        notes.append(f"no message (exit status {result.rc})")
    else:
        if len(lines) > MAX_MESSAGE_LINES:
            notes.append(f"{len(lines)} lines of output before the message")
        missing = [w for w in case.says if w.lower() not in result.err.lower()]
        if missing:
            notes.append(f"message lacks {missing}: {lines[-1]}")
    return Outcome(case, "unclear or wrong" if notes else "clear", result, notes)


def _hash(path: Path) -> str | None:
    try:
        return sha(path)
    except OSError:
        return None


def cli(template: str, *, timeout: float = 120, spawn: bool = False, **makers) -> Callable:
    """A run of the command with the arguments of ``template``: ``{fx}`` is the fixtures'
    folder, ``{work}`` the case's own, ``{tiny}`` tiny training settings, and every keyword
    the value its function makes in the case's folder (made in the order given)."""

    def run(c: Ctx) -> Result:
        made = {k: make(c) for k, make in makers.items()}
        argv = template.format(fx=c.fx, work=c.work, tiny=TINY, long=LONG, **made).split()
        return c.cli(argv, timeout, spawn=spawn)

    return run


def error(group: str, name: str, run: Callable[[Ctx], Result], *says: str, **kw) -> Case:
    """A mistake: it must be refused with a message that has every word of ``says``."""
    return Case(group, name, run, "error", says, **kw)


def ok(group: str, name: str, run: Callable[[Ctx], Result], **kw) -> Case:
    """No mistake: it must do its job (and lose nothing)."""
    return Case(group, name, run, "ok", **kw)


def _before_work(ctx: Ctx, result: Result) -> list[str]:
    """A problem with an output place must be found before any training."""
    return ["found only after training"] if "round 1/" in result.out else []


# -- fixtures ------------------------------------------------------------------------------


def build_fixtures(fx: Path) -> None:
    """Small images, box tables, a label image and a trained model shared by all cases."""
    import tifffile
    import torch

    from napari_mutualseg.io import write_box_table
    from napari_mutualseg.supervision import Box, make_supervision
    from napari_mutualseg.synthetic import synthetic_scene
    from napari_mutualseg.training import MutualTrainer, TrainConfig

    fx.mkdir(parents=True, exist_ok=True)
    image, gt, boxes = synthetic_scene((64, 80), 5, seed=2)
    pixels = (image * 1000).astype(np.uint16)
    tifffile.imwrite(fx / "cells.tif", pixels)
    tifffile.imwrite(fx / "other.tif", pixels[::-1, :72].copy())  # its results differ in shape
    tifffile.imwrite(fx / "stack.tif", np.stack([pixels, pixels[::-1]]), metadata={"axes": "ZYX"})
    tifffile.imwrite(fx / "gt.tif", gt.astype(np.uint16))
    tifffile.imwrite(fx / "rgb.tif", np.stack([pixels] * 3, axis=-1), photometric="rgb")
    rows = [Box.from_corners(*b) for b in boxes]
    write_box_table(fx / "boxes.csv", rows)
    write_box_table(fx / "stack_boxes.csv", {0: rows, 1: rows})
    write_box_table(fx / "named.csv", {"cells.tif": rows, "ghost.tif": rows[:1]})
    cfg = TrainConfig(
        rounds=1, steps_per_round=2, width=4, depth=2, patch_size=32, batch_size=2, device="cpu"
    )
    trainer = MutualTrainer(image, make_supervision(image.shape, rows), cfg)
    list(trainer)
    trainer.pair.save(fx / "model.pt")
    torch.save({"weights": torch.zeros(3)}, fx / "foreign.pt")


# -- bad images ----------------------------------------------------------------------------


def _tiff_with_dims(c: Ctx, height: int, width: int) -> Path:
    """A valid small TIFF whose header then declares ``height`` x ``width`` pixels."""
    import struct

    import tifffile

    path = c.work / f"dims{height}.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), metadata=None)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for tag, value in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", 1)):
            fmt = "<H" if tags[tag].dtype == 3 else "<I"
            offset = tags[tag].valueoffset
            data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def _damaged_tiff(c: Ctx, how: str) -> Path:
    """A compressed, tiled TIFF with damaged tiles, cut in half, or garbage after its header."""
    import tifffile

    rng = np.random.default_rng(0)
    path = c.work / f"{how}.tif"
    pixels = rng.integers(0, 1000, (256, 256)).astype(np.uint16)
    tifffile.imwrite(path, pixels, compression="zlib", tile=(64, 64))
    data = bytearray(path.read_bytes())
    if how == "tiles":
        data[200:2000] = rng.integers(0, 256, 1800).astype(np.uint8).tobytes()
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[8:] = rng.integers(0, 256, len(data) - 8).astype(np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _tif(array: np.ndarray, name: str) -> Callable[[Ctx], Path]:
    def make(c: Ctx) -> Path:
        import tifffile

        tifffile.imwrite(c.work / name, array)
        return c.work / name

    return make


def _folder(c: Ctx) -> Path:
    (c.work / "dir.tif").mkdir()
    return c.work / "dir.tif"


_PIXELS = np.random.default_rng(1).integers(0, 1000, (64, 80)).astype(np.uint16)
_NAN = _PIXELS.astype(np.float32)
_NAN[3, 3] = np.nan
_NOT_AN_IMAGE = "predict supervise"
_NO_CONTENT = "predict"  # supervise makes labels from the boxes: the pixels do not matter

# fmt: off
#: (name, the commands it is tried with, how the file is made, words the message must have)
BAD_IMAGES = [
    ("missing file", _NOT_AN_IMAGE, lambda c: c.work / "missing.tif", ("not found",)),
    ("a folder", _NOT_AN_IMAGE, _folder, ("folder",)),
    ("empty file", _NOT_AN_IMAGE, lambda c: c.write("empty.tif", b""), ("empty",)),
    ("text named .tif", _NOT_AN_IMAGE, lambda c: c.write("t.tif", "hello"), ("cannot read",)),
    ("unsupported suffix", _NOT_AN_IMAGE, lambda c: c.write("i.xyz", "x"), ("unsupported",)),
    ("empty PNG", _NOT_AN_IMAGE, lambda c: c.write("empty.png", b""), ("empty",)),
    ("damaged tiles", _NOT_AN_IMAGE, lambda c: _damaged_tiff(c, "tiles"), ("cannot read",)),
    ("truncated TIFF", _NOT_AN_IMAGE, lambda c: _damaged_tiff(c, "truncated"), ("read",)),
    ("garbage TIFF", _NOT_AN_IMAGE, lambda c: _damaged_tiff(c, "junk"), ("cannot read",)),
    ("declares 40960x40960", _NOT_AN_IMAGE, lambda c: _tiff_with_dims(c, 40960, 40960),
     ("declares", "40960x40960")),
    ("declares 0 rows", _NOT_AN_IMAGE, lambda c: _tiff_with_dims(c, 0, 64), ("dims0",)),
    ("RGB to a one-channel model", _NO_CONTENT, lambda c: c.fx / "rgb.tif", ("RGB",)),
    ("4D, axes unknown", _NOT_AN_IMAGE, _tif(np.zeros((2, 2, 32, 32), np.uint16), "4d.tif"),
     ("axes",)),
    ("3x3 pixels", _NO_CONTENT, _tif(_PIXELS[:3, :3].copy(), "tiny.tif"), ("too small",)),
    ("1 row", _NO_CONTENT, _tif(_PIXELS[:1].copy(), "row.tif"), ("too small",)),
    ("complex", _NO_CONTENT, _tif(_PIXELS.astype(np.complex64), "cx.tif"), ("complex",)),
    ("NaN pixel", _NO_CONTENT, _tif(_NAN, "nan.tif"), ("NaN",)),
    ("constant", _NO_CONTENT, _tif(np.full((64, 80), 7, np.uint16), "flat.tif"), ("constant",)),
]
# fmt: on

_COMMANDS = {
    "predict": "predict {fx}/model.pt {image} --out {work}/p --device cpu",
    "supervise": "supervise {image} --boxes {fx}/boxes.csv --out {work}/s.tif",
}


def _planes_merged_said(c: Ctx, result: Result) -> list[str]:
    return [] if "one plane" in result.err else ["the table's planes were merged without a word"]


def _image_cases() -> list[Case]:
    group = "bad images"
    cases = [
        error(group, f"{command}: {name}", cli(_COMMANDS[command], image=make), *says)
        for name, commands, make, says in BAD_IMAGES
        for command in commands.split()
    ]
    train = "train {image} --boxes {boxes} --out {work}/m.pt {tiny}"
    flat = _tif(np.full((64, 80), 7, np.uint16), "flat.tif")
    stack, cells = (lambda c: c.fx / "stack.tif"), (lambda c: c.fx / "cells.tif")
    table, per_plane = (lambda c: c.fx / "boxes.csv"), (lambda c: c.fx / "stack_boxes.csv")
    evaluate = "evaluate {image} {fx}/gt.tif"
    return [
        *cases,
        error(group, "train: constant image", cli(train, image=flat, boxes=table), "constant"),
        error(
            group,
            "train: a stack with a 2D box table",
            cli(train, image=stack, boxes=table),
            "2 planes",
            "which plane",
        ),
        ok(
            group,
            "train: a 2D image with boxes per plane",
            cli(train, image=cells, boxes=per_plane),
            wrong=_planes_merged_said,
        ),
        error(
            group,
            "evaluate: a float image",
            cli(evaluate, image=_tif(_NAN, "f.tif")),
            "not a label image",
        ),
        error(
            group,
            "evaluate: negative labels",
            cli(evaluate, image=_tif(-np.ones((64, 80), np.int32), "n.tif")),
            "not a label image",
        ),
        error(
            group,
            "evaluate: shapes differ",
            cli(evaluate, image=_tif(np.zeros((10, 10), np.uint16), "s.tif")),
            "at that image's size",
        ),
    ]


# -- bad box tables ------------------------------------------------------------------------

NAPARI = "index,shape-type,vertex-index,axis-0,axis-1\n"
PLAIN = "y0,x0,y1,x1\n"
# fmt: off
BAD_TABLES = [
    ("empty", "", ("empty",)),
    ("header only", PLAIN, ("box",)),
    ("unknown header", "a,b,c\n1,2,3\n", ("unknown header",)),
    ("not a number", PLAIN + "1,2,x,4\n", ("number",)),
    ("NaN corner", PLAIN + "1,2,nan,40\n", ("nan",)),
    ("infinite corner", PLAIN + "1,2,inf,40\n", ("inf",)),
    ("reversed box", PLAIN + "30,30,10,10\n", ("line 2",)),
    ("zero-size box", PLAIN + "10,10,10,10\n", ("box",)),
    ("box outside the image", PLAIN + "500,500,520,530\n", ("outside",)),
    ("missing values", PLAIN + "1,2,3\n", ("3 values",)),
    ("repeated columns", "y0,x0,y1,x1,y0\n1,2,30,40,1\n", ("repeated",)),
    ("empty image column", "y0,x0,y1,x1,image\n1,2,30,40,\n", ("empty",)),
    ("binary file", bytes(range(256)) * 4, ("not a text",)),
    ("polygon", NAPARI + "".join(f"0,polygon,{v},{v},{2 * v}\n" for v in range(4)), ("polygon",)),
    ("three vertices", NAPARI + "".join(f"0,rectangle,{v},{v},{2 * v}\n" for v in range(3)),
     ("3 vertices",)),
    ("shape changes type", NAPARI + "0,rectangle,0,1,1\n0,ellipse,1,1,9\n", ("changes type",)),
]
# fmt: on


def _ghost_warned(c: Ctx, result: Result) -> list[str]:
    return [] if "ghost.tif" in result.err else ["boxes of an image not given went unmentioned"]


def _table_cases() -> list[Case]:
    group = "bad box tables"
    supervise = "supervise {fx}/cells.tif --boxes {table} --out {work}/s.tif"
    cases = [
        error(
            group,
            f"supervise: {name}",
            cli(supervise, table=lambda c, text=text: c.write("t.csv", text)),
            *says,
        )
        for name, text, says in BAD_TABLES
    ]
    train = "train {images} --boxes {tables} --out {work}/m.pt {tiny}"

    def files(*names: str) -> Callable[[Ctx], str]:
        return lambda c: " ".join(str(c.fx / n) for n in names)

    return [
        *cases,
        error(
            group, "a missing table", cli(supervise, table=lambda c: c.work / "no.csv"), "no.csv"
        ),
        error(group, "an image as the table", cli(supervise, table=files("gt.tif")), "gt.tif"),
        ok(
            group,
            "train: rows naming an image not given",
            cli(train, images=files("cells.tif"), tables=files("named.csv")),
            wrong=_ghost_warned,
        ),
        error(
            group,
            "train: no rows for the image",
            cli(train, images=files("other.tif"), tables=files("named.csv")),
            "no boxes for",
        ),
        error(
            group,
            "train: 2 images, 3 tables",
            cli(
                train,
                images=files("cells.tif", "other.tif"),
                tables=files("boxes.csv", "boxes.csv", "boxes.csv"),
            ),
            "3 box table",
        ),
    ]


# -- settings ------------------------------------------------------------------------------

PREDICT = "predict {fx}/model.pt {fx}/cells.tif --out {work}/p --device cpu "
TRAIN = "train {fx}/cells.tif --boxes {fx}/boxes.csv --out {work}/m.pt {tiny} "
SUPERVISE = "supervise {fx}/cells.tif --boxes {fx}/boxes.csv --out {work}/s.tif "
# fmt: off
SETTINGS = [
    (PREDICT, "--tile-size 0", ("tile size",)),
    (PREDICT, "--tile-size -5", ("tile size",)),
    (PREDICT, "--tile-size 8", ("at least 32",)),
    (PREDICT, "--overlap -1", ("overlap",)),
    (PREDICT, "--min-size -3", ("min-size",)),
    (PREDICT, "--tile-size abc", ("invalid int",)),
    (PREDICT, "--device banana", ("banana",)),
    (TRAIN, "--rounds 0", ("rounds",)),
    (TRAIN, "--steps -1", ("steps",)),
    (TRAIN, "--width 0", ("width",)),
    (TRAIN, "--depth 0", ("depth",)),
    (TRAIN, "--batch-size 0", ("--batch-size",)),
    (TRAIN, "--patch-size 2", ("--patch-size",)),
    (TRAIN, "--lr 0", ("--lr",)),
    (TRAIN, "--lr nan", ("--lr",)),
    (TRAIN, "--lr 5", ("--lr",)),
    (TRAIN, "--resume {fx}/model.pt --width 8", ("--width 8", "resume")),
    (TRAIN, "--resume {work}/none.pt", ("none.pt",)),
    (SUPERVISE, "--edge-width 0", ("--edge-width",)),
]
# fmt: on


def _setting_cases() -> list[Case]:
    # --tile-size 0 once meant endless 4-pixel tiles: it runs apart, with a time limit
    return [
        error(
            "settings",
            f"{base.split()[0]} {extra.format(fx='MODEL', work='.')}",
            cli(base + extra, timeout=60, spawn=extra == "--tile-size 0"),
            *says,
            wrong=_before_work,
        )
        for base, extra, says in SETTINGS
    ]


# -- model files ---------------------------------------------------------------------------


class _Reduce:
    """An object whose unpickling calls ``func(*args)``: what a malicious file holds."""

    def __init__(self, func: Callable, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _model(change: Callable[[dict, Ctx], None]) -> Callable[[Ctx], Path]:
    """The fixture model with its payload changed in place by ``change``."""

    def make(c: Ctx) -> Path:
        import torch

        payload = torch.load(c.fx / "model.pt", weights_only=True)
        change(payload, c)
        torch.save(payload, c.work / "bad.pt")
        return c.work / "bad.pt"

    return make


def _at(payload: dict, key: str) -> tuple[dict, str]:
    """The table and key that ``key`` names: ``"a"`` is ``payload["a"]``, ``"a.b.c"`` is
    ``payload["a"]["b.c"]`` (weight names have dots)."""
    outer, _, inner = key.partition(".")
    return (payload[outer], inner) if inner else (payload, outer)


def _set(key: str, value: object) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        table, name = _at(payload, key)
        table[name] = value

    return change


def _drop(key: str) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        table, name = _at(payload, key)
        del table[name]

    return change


def _arch(**values: int) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        payload["arch_a"].update(values)

    return change


def _both_channels(n: int) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        payload["arch_a"]["in_channels"] = payload["arch_b"]["in_channels"] = n

    return change


def _weights(value: float) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        payload["state_a"]["head.weight"][...] = value

    return change


def _reshape(payload: dict, c: Ctx) -> None:
    payload["state_a"]["head.weight"] = payload["state_a"]["head.weight"].reshape(-1)


def _evil(kind: str) -> Callable[[dict, Ctx], None]:
    def change(payload: dict, c: Ctx) -> None:
        marker = c.work / "RAN"
        code = f"open({str(marker)!r}, 'w').write('ran')"
        calls = {
            "exec": (exec, code),
            "eval": (eval, f"{code} and 0"),
            "os.system": (os.system, f"touch {marker}"),
            "subprocess": (subprocess.call, ["touch", str(marker)]),
        }
        payload["settings"] = {"x": _Reduce(*calls[kind])}

    return change


def _plain_pickle(c: Ctx) -> Path:
    """The old torch format, a plain pickle, that runs code when unpickled."""
    path = c.work / "pickle.pt"
    path.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {c.work / 'RAN'}")))
    return path


# fmt: off
BAD_MODELS = [
    ("missing", lambda c: c.work / "no.pt", ("no.pt",)),
    ("empty", lambda c: c.write("e.pt", b""), ("not a readable",)),
    ("text", lambda c: c.write("t.pt", "hello"), ("not a readable",)),
    ("truncated", lambda c: c.write("c.pt", (c.fx / "model.pt").read_bytes()[:300]),
     ("not a readable",)),
    ("random bytes", lambda c: c.write("r.pt", os.urandom(4096)), ("not a readable",)),
    ("another PyTorch file", lambda c: c.fx / "foreign.pt", ("not a napari-mutualseg",)),
    ("an image", lambda c: c.fx / "cells.tif", ("is a TIFF image, not a napari-mutualseg",)),
    ("format_version a string", _model(_set("format_version", "1")), ("format_version",)),
    ("format_version 99", _model(_set("format_version", 99)), ("newer",)),
    ("format_version missing", _model(_drop("format_version")), ("format_version",)),
    ("one class", _model(_set("arch_a.n_classes", 1)), ("n_classes",)),
    ("1000 input channels", _model(_both_channels(1000)), ("in_channels",)),
    ("A and B take different channels", _model(_set("arch_b.in_channels", 2)),
     ("different numbers of channels",)),
    ("both take 2 channels, weights for 1", _model(_both_channels(2)), ("shape",)),
    ("cell size negative", _model(_set("cell_size", -3.0)), ("cell size",)),
    ("channel names numbers", _model(_set("channel_names", [1, 2])), ("channel names",)),
    ("width a string", _model(_set("arch_a.width", "4")), ("width",)),
    ("width True", _model(_set("arch_a.width", True)), ("width",)),
    ("width 10^6", _model(_set("arch_a.width", 10**6)), ("width",)),
    ("depth 0", _model(_set("arch_a.depth", 0)), ("depth",)),
    # networks of 1.9 GB and 119 GB described in a file of 37 KB
    ("huge network (1.9 GB)", _model(_arch(width=128, depth=6)), ("do not match",)),
    ("huge network (119 GB, the largest allowed)", _model(_arch(width=256, depth=8)),
     ("do not match",)),
    ("wider network, same depth", _model(_set("arch_a.width", 256)), ("shape",)),
    ("architecture missing", _model(_drop("arch_a")), ("architecture",)),
    ("unknown architecture key", _model(_set("arch_a.kernel", 3)), ("architecture",)),
    ("weights missing", _model(_drop("state_b")), ("no weights",)),
    ("a weight missing", _model(_drop("state_a.head.bias")), ("missing",)),
    ("a weight's shape", _model(_reshape), ("shape",)),
    ("NaN weights", _model(_weights(float("nan"))), ("NaN",)),
    ("infinite weights", _model(_weights(float("inf"))), ("infinite",)),
    ("percentiles reversed", _model(_set("percentiles", [99.0, 1.0])), ("percentiles",)),
    ("percentiles a string", _model(_set("percentiles", "1,99")), ("percentiles",)),
    ("settings a list", _model(_set("settings", [1, 2])), ("settings",)),
    ("min_size a string", _model(_set("settings.min_size", "16")), ("min_size",)),
    ("history a string", _model(_set("history", "x")), ("history",)),
    ("malicious: exec", _model(_evil("exec")), ("refused",)),
    ("malicious: eval", _model(_evil("eval")), ("refused",)),
    ("malicious: os.system", _model(_evil("os.system")), ("refused",)),
    ("malicious: subprocess", _model(_evil("subprocess")), ("refused",)),
    ("malicious: plain pickle", _plain_pickle, ("not a readable",)),
]
# fmt: on


def _safe_load(c: Ctx, result: Result) -> list[str]:
    """Nothing from the file ran."""
    return ["code from the file ran"] if (c.work / "RAN").exists() else []


def _no_unsafe_advice(c: Ctx, result: Result) -> list[str]:
    return ["the message advises loading unsafely"] if "weights_only" in result.err else []


def _small_peak(c: Ctx, result: Result) -> list[str]:
    """Refusing a file must not allocate what it describes (a bare run peaks near 0.5 GB)."""
    notes = _no_unsafe_advice(c, result)
    if result.peak_mb is not None and result.peak_mb > 1000:
        notes.append(f"peak memory {result.peak_mb:.0f} MB while refusing the file")
    return notes


def _model_cases() -> list[Case]:
    # the huge network runs in its own process, where its peak memory is measured
    predict = "predict {model} {fx}/cells.tif --out {work}/p --device cpu"
    return [
        error(
            "model files",
            name,
            cli(predict, timeout=60, spawn="huge" in name, model=make),
            *says,
            check=_safe_load,
            wrong=_small_peak,
        )
        for name, make, says in BAD_MODELS
    ]


# -- output places -------------------------------------------------------------------------


def _read_only(c: Ctx) -> Path:
    disk = c.tmpfs("ro")
    (disk / "old").mkdir()
    c.read_only(disk)
    return disk


def _full(c: Ctx) -> Path:
    disk = c.tmpfs("full", "256k")
    c.fill(disk)
    return disk


def _full_with_result(c: Ctx) -> Path:
    disk = c.tmpfs("full", "256k")
    c.protect(c.copy("gt.tif", disk / "p" / "cells_cells.tif"))
    c.fill(disk)
    return disk


def _locked(c: Ctx) -> Path:
    folder = c.work / "locked"
    folder.mkdir()
    c.immutable(folder)
    return folder


def _link(target: Callable[[Ctx], Path]) -> Callable[[Ctx], Path]:
    def make(c: Ctx) -> Path:
        (c.work / "link.pt").symlink_to(target(c))
        return c.work / "link.pt"

    return make


def _pipe(c: Ctx) -> Path:
    os.mkfifo(c.work / "pipe.tif")
    return c.work / "pipe.tif"


def _protected(name: str, to: str) -> Callable[[Ctx], Path]:
    """The fixture ``name`` copied to ``work/to``, which must survive unchanged."""
    return lambda c: c.protect(c.copy(name, c.work / to))


def _loads(path: str) -> Callable[[Ctx, Result], list[str]]:
    def check(c: Ctx, result: Result) -> list[str]:
        problem = loads_model(c.work / path)
        return [problem] if problem else []

    return check


def _link_kept(c: Ctx, result: Result) -> list[str]:
    problems = [p for p in [loads_model(c.work / "real.pt")] if p]
    return problems + ([] if (c.work / "link.pt").is_symlink() else ["the link was replaced"])


# fmt: off
PLACES = [
    ("train --out on a read-only disk", TRAIN.replace("{work}/m.pt", "{disk}/m.pt"),
     {"disk": _read_only}, ("read-only",)),
    ("train --labels-out on a read-only disk", TRAIN + "--labels-out {disk}/old",
     {"disk": _read_only}, ("read-only",)),
    ("predict --out on a read-only disk", PREDICT.replace("{work}/p", "{disk}/p"),
     {"disk": _read_only}, ("read-only",)),
    ("predict --disagreement-out on a read-only disk", PREDICT + "--disagreement-out {disk}/d",
     {"disk": _read_only}, ("read-only",)),
    ("supervise --out on a read-only disk",
     SUPERVISE.replace("{work}", "{disk}"), {"disk": _read_only},
     ("read-only",)),
    ("demo --out on a read-only disk", "demo --out {disk}/d --rounds 1 --steps 1",
     {"disk": _read_only}, ("read-only",)),
    ("train --out on a full disk", TRAIN.replace("{work}/m.pt", "{disk}/m.pt"), {"disk": _full},
     ("space",)),
    ("predict --out on a full disk", PREDICT.replace("{work}/p", "{disk}/p"), {"disk": _full},
     ("space",)),
    ("predict --overwrite of a result on a full disk",
     PREDICT.replace("{work}/p", "{disk}/p") + "--overwrite", {"disk": _full_with_result},
     ("space",)),
    ("train --out in a folder that cannot change (chattr +i)",
     TRAIN.replace("{work}/m.pt", "{locked}/m.pt"), {"locked": _locked}, ("permission",)),
    ("train --out a folder", TRAIN.replace("{work}/m.pt", "{work}"), {}, ("folder",)),
    ("predict --out below a file", PREDICT.replace("{work}/p", "{file}/p"),
     {"file": lambda c: c.write("file", "x")}, ("not a folder",)),
    ("train --out a broken link", TRAIN.replace("{work}/m.pt", "{link}"),
     {"link": _link(lambda c: c.work / "nowhere" / "m.pt")}, ("broken link",)),
    ("train --out a link to an existing model", TRAIN.replace("{work}/m.pt", "{link}"),
     {"link": _link(_protected("model.pt", "real.pt"))}, ("already exists",)),
    ("supervise --out a pipe, --overwrite",
     "supervise {fx}/cells.tif --boxes {fx}/boxes.csv --out {pipe} --overwrite", {"pipe": _pipe},
     ("not a regular file",)),
    ("supervise --out an existing file",
     "supervise {fx}/cells.tif --boxes {fx}/boxes.csv --out {old}",
     {"old": _protected("gt.tif", "old.tif")}, ("already exists",)),
    ("train --labels-out onto an existing result", TRAIN + "--labels-out {work}/l",
     {"old": _protected("gt.tif", "l/cells_cells.tif")}, ("already exists",)),
]
# fmt: on


def _place_cases() -> list[Case]:
    group = "output places"
    return [
        error(group, name, cli(template, **makers), *says, wrong=_before_work)
        for name, template, makers, says in PLACES
    ] + [
        ok(
            group,
            "train --out a link to a model, --overwrite",
            cli(
                TRAIN.replace("{work}/m.pt", "{link}") + "--overwrite",
                link=_link(lambda c: c.copy("model.pt", c.work / "real.pt")),
            ),
            check=_link_kept,
        ),
        error(
            group,
            "predict onto a label file it did not write: refused before work, the file kept",
            cli(PREDICT, old=_protected("gt.tif", "p/cells_cells.tif")),
            "was not written by a run",
            "--overwrite",
            wrong=_before_work,
        ),
        ok(
            group,
            "train --out in folders that do not exist yet",
            cli(TRAIN.replace("{work}/m.pt", "{work}/a/b/m.pt")),
            check=_loads("a/b/m.pt"),
        ),
        ok(
            group,
            "write_labels over a file, the disk full midway (API)",
            lambda c: _write_on_full_disk(c, "labels"),
        ),
        ok(
            group,
            "ModelPair.save over a file, the disk full midway (API)",
            lambda c: _write_on_full_disk(c, "model"),
        ),
        ok(
            group, "new files get the umask's permissions, replaced ones keep theirs (API)", _modes
        ),
    ]


def _write_on_full_disk(c: Ctx, what: str) -> Result:
    """Replace a file with one too big for the space left: an error, the old file intact."""
    from napari_mutualseg.io import OutputError, write_labels
    from napari_mutualseg.models import ModelPair, build_unet

    disk = c.tmpfs("full", "2m")
    if what == "labels":
        target = c.protect(c.copy("gt.tif", disk / "cells.tif"))
        big = np.random.default_rng(0).integers(0, 2**31, (1024, 1024), dtype=np.int32)

        def write() -> None:
            write_labels(target, big, overwrite=True)
    else:
        target = c.protect(c.copy("model.pt", disk / "m.pt"))
        arch = {"in_channels": 1, "n_classes": 3, "width": 16, "depth": 4}
        pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1))

        def write() -> None:
            pair.save(target, overwrite=True)

    c.fill(disk, leave=64 * 1024)
    try:
        write()
    except OutputError as err:
        return Result(0, "", f"refused: {err}")
    return Result(1, "", "written although the disk was full")


def _modes(c: Ctx) -> Result:
    from napari_mutualseg.io import write_text

    old = os.umask(0o027)
    try:
        made = write_text(c.work / "new.txt", "x")
        existing = c.write("old.txt", "x")
        existing.chmod(0o604)
        write_text(existing, "y", overwrite=True)
    finally:
        os.umask(old)
    modes = (made.stat().st_mode & 0o777, existing.stat().st_mode & 0o777)
    return Result(0 if modes == (0o640, 0o604) else 1, "", f"modes {modes[0]:o}, {modes[1]:o}")


# -- same-name inputs ----------------------------------------------------------------------


def _inputs(*names: str) -> Callable[[Ctx], str]:
    """Images copied to ``work/in/NAME`` (the fixture alternates, so that results differ)."""

    def make(c: Ctx) -> str:
        fixtures = ["cells.tif", "other.tif"]
        paths = [c.copy(fixtures[k % 2], c.work / "in" / n) for k, n in enumerate(names)]
        return " ".join(map(str, paths))

    return make


def _distinct(*names: str, differ: bool = True) -> Callable[[Ctx, Result], list[str]]:
    """Each output exists and reads, and (``differ``: inputs of different shapes) no input's
    result replaced another's."""

    def check(c: Ctx, result: Result) -> list[str]:
        paths = [c.work / n for n in names]
        problems = [
            reads_labels(p) if p.exists() else f"{n} missing"
            for p, n in zip(paths, names, strict=True)
        ]
        problems = [p for p in problems if p]
        if differ and not problems and len({sha(p) for p in paths}) < len(paths):
            problems.append("two inputs gave one and the same result")
        return problems

    return check


def _same_name_cases() -> list[Case]:
    group = "same-name inputs"
    predict = "predict {fx}/model.pt {images} --out {work}/p --device cpu"
    return [
        ok(
            group,
            "predict a/x.tif b/x.tif",
            cli(predict, images=_inputs("a/x.tif", "b/x.tif")),
            check=_distinct("p/a/x_cells.tif", "p/b/x_cells.tif"),
        ),
        ok(
            group,
            "predict a/x.tif b/x.tif --disagreement-out",
            cli(predict + " --disagreement-out {work}/d", images=_inputs("a/x.tif", "b/x.tif")),
            check=_distinct("d/a/x_disagreement.tif", "d/b/x_disagreement.tif"),
        ),
        ok(
            group,
            "predict s.v1.tif s.v2.tif",
            cli(predict, images=_inputs("s.v1.tif", "s.v2.tif")),
            check=_distinct("p/s.v1_cells.tif", "p/s.v2_cells.tif"),
        ),
        ok(
            group,
            "predict a stack: one (Z, Y, X) result",
            cli(predict, images=lambda c: c.fx / "stack.tif"),
            check=_distinct("p/stack_cells.tif"),
        ),
        ok(
            group,
            "train --labels-out on a stack: one result per boxed plane",
            cli(
                "train {fx}/stack.tif --boxes {fx}/stack_boxes.csv --out {work}/m.pt "
                "--labels-out {work}/l {tiny}"
            ),
            check=_distinct("l/stack_z000_cells.tif", "l/stack_z001_cells.tif", differ=False),
        ),
        ok(
            group,
            "train --labels-out with a/x.tif b/x.tif",
            cli(
                "train {images} --boxes {fx}/boxes.csv {fx}/boxes.csv --out {work}/m.pt "
                "--labels-out {work}/l {tiny}",
                images=_inputs("a/x.tif", "b/x.tif"),
            ),
            check=_distinct("l/a/x_cells.tif", "l/b/x_cells.tif"),
        ),
        error(
            group,
            "predict x.tif x.tiff",
            cli(predict, images=_inputs("x.tif", "x.tiff")),
            "both be written",
        ),
        error(
            group,
            "predict X.tif x.tif",
            cli(predict, images=_inputs("X.tif", "x.tif")),
            "both be written",
        ),
        ok(
            group,
            "predict the same file twice: segmented once",
            cli(predict, images=lambda c: f"{c.fx}/cells.tif {c.fx}/cells.tif"),
            check=_distinct("p/cells_cells.tif"),
        ),
        error(
            group,
            "predict x.tif x.ome.tif",
            cli(predict, images=_inputs("x.tif", "x.ome.tif")),
            "both be written",
        ),
        error(
            group,
            "predict into the inputs' folder, --overwrite",
            cli(
                "predict {fx}/model.pt {a} {b} --out {work}/in --overwrite --device cpu",
                a=_protected("cells.tif", "in/x.tif"),
                b=_protected("other.tif", "in/x_cells.tif"),
            ),
            "over the input",
        ),
    ]


# -- interruptions -------------------------------------------------------------------------


def _train_interrupted(signals: Sequence[int], marker: str) -> Callable[[Ctx], Result]:
    """Train for long; send ``signals`` (0.3 s apart) once ``marker`` is printed."""

    def run(c: Ctx) -> Result:
        argv = TRAIN.replace("{tiny}", "{long}") + "--labels-out {work}/l"
        job = Job(CLI + argv.format(fx=c.fx, work=c.work, long=LONG).split(), c.work)
        if job.wait_for(marker, 120):
            for s in signals:
                job.signal(s)
                time.sleep(0.3)
        return job.finish(120)

    return run


def _round_kept(c: Ctx, result: Result) -> list[str]:
    """The model of the last completed round, and its labels, were saved."""
    from napari_mutualseg.models import ModelPair

    problem = loads_model(c.work / "m.pt")
    if problem:
        return [f"finished work lost: {problem}"]
    rounds = len(ModelPair.load(c.work / "m.pt", device="cpu").history)
    if not rounds:
        return ["the saved model has no completed round"]
    said = re.search(r"the networks of round (\d+)", result.err)
    if said and int(said.group(1)) != rounds:
        return [f"the message says round {said.group(1)}, the saved model holds {rounds}"]
    return [p for p in [reads_labels(c.work / "l" / "cells_cells.tif")] if p]


def _nothing_saved(c: Ctx, result: Result) -> list[str]:
    return ["a model without a completed round was saved"] if (c.work / "m.pt").exists() else []


def _predict_interrupted(signum: int) -> Callable[[Ctx], Result]:
    """Predict 12 images; send ``signum`` once the third is written."""

    def run(c: Ctx) -> Result:
        images = [c.copy("cells.tif", c.work / "in" / f"i{k:02d}.tif") for k in range(12)]
        job = Job(
            [
                *CLI,
                "predict",
                c.fx / "model.pt",
                *images,
                "--out",
                c.work / "p",
                "--device",
                "cpu",
                "--tile-size",
                "32",
            ],
            c.work,
        )
        if job.wait_for("i02_cells.tif", 120):
            job.signal(signum)
        return job.finish(120)

    return run


def _reported_results_read(c: Ctx, result: Result) -> list[str]:
    """Every result reported as written reads, and nothing else was written."""
    written = [line.split()[1] for line in result.out.splitlines() if line.startswith("Wrote ")]
    problems = [p for p in (reads_labels(Path(w)) for w in written) if p]
    on_disk = sorted((c.work / "p").glob("*.tif"))
    if len(on_disk) != len(written):
        problems.append(f"{len(on_disk)} results on the disk, {len(written)} reported")
    return problems


SAVE_LOOP = """
import sys, numpy as np
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.io import write_labels
target, what = sys.argv[1], sys.argv[2]
arch = {"in_channels": 1, "n_classes": 3, "width": 32, "depth": 4}
pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1))
labels = np.random.default_rng(0).integers(0, 2**31, (2048, 2048), dtype=np.int32)
print("ready", flush=True)
while True:
    if what == "model":
        pair.save(target, overwrite=True)
    else:
        write_labels(target, labels, overwrite=True)
"""


def _killed_while_saving(what: str, kills: int = 6) -> Callable[[Ctx], Result]:
    """kill -9, at random moments, a process that saves over one file again and again: the
    file must stay whole and nothing else may appear beside it."""

    def run(c: Ctx) -> Result:
        folder = c.work / "saves"
        target = c.copy("model.pt" if what == "model" else "gt.tif", folder / f"x.{what}")
        rng = random.Random(0)
        problems, start = [], time.perf_counter()
        for _ in range(kills):
            job = Job([sys.executable, "-c", SAVE_LOOP, target, what], c.work)
            if not job.wait_for("ready", 120):
                return job.finish(5)
            time.sleep(rng.uniform(0.2, 1.5))
            job.signal(signal.SIGKILL)
            job.finish(10)
            problem = loads_model(target) if what == "model" else reads_labels(target)
            problems += [problem] if problem else []
            problems += [f"beside it: {p.name}" for p in folder.iterdir() if p != target]
        text = "; ".join(problems) or f"killed {kills} times, the file was whole each time"
        return Result(1 if problems else 0, "", text, time.perf_counter() - start)

    return run


CANCEL = """
import json, threading, time
from napari_mutualseg.supervision import Box, make_supervision
from napari_mutualseg.synthetic import synthetic_scene
from napari_mutualseg.training import MutualTrainer, TrainConfig
image, gt, boxes = synthetic_scene((2048, 2048), 400, seed=0)
sup = make_supervision(image.shape, [Box.from_corners(*b) for b in boxes])
cfg = TrainConfig(rounds=3, steps_per_round=2, width=8, depth=3, patch_size=64, batch_size=2,
                  device="cpu")
trainer = MutualTrainer(image, sup, cfg)
reports, done = [], threading.Event()
def run():
    for r in trainer:
        reports.append(r.round)
    done.set()
threading.Thread(target=run, daemon=True).start()
while trainer.step < 4:  # round 1 trained: now it predicts and exchanges
    time.sleep(0.01)
time.sleep(1.0)
asked = time.perf_counter()
trainer.cancel()
done.wait(300)
print(json.dumps({"stop_seconds": time.perf_counter() - asked, "reports": len(reports),
                  "history": len(trainer.pair.history)}))
"""


def _cancel_wrong(c: Ctx, result: Result) -> list[str]:
    try:
        got = json.loads(result.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ["no measurement"]
    notes = []
    if got["stop_seconds"] > 1.5:
        notes.append(f"stopped {got['stop_seconds']:.1f} s after cancel()")
    if got["reports"] or got["history"]:
        notes.append("a round was reported after cancel()")
    return notes


def _interruption_cases() -> list[Case]:
    group = "interruptions"
    sigint, sigterm = [signal.SIGINT], [signal.SIGTERM]
    return [
        error(
            group,
            "train: SIGINT after round 1",
            _train_interrupted(sigint, "round 1/"),
            # a fast machine may finish round 2 before the signal lands
            "the networks of round",
            "m.pt",
            check=_round_kept,
        ),
        error(
            group,
            "train: SIGTERM after round 1",
            _train_interrupted(sigterm, "round 1/"),
            # a fast machine may finish round 2 before the signal lands
            "the networks of round",
            "m.pt",
            check=_round_kept,
        ),
        error(
            group,
            "train: SIGINT before round 1 ends",
            _train_interrupted(sigint, "Training on"),
            "nothing was saved",
            check=_nothing_saved,
            fast=False,
        ),
        error(
            group,
            "train: SIGINT twice after round 1",
            _train_interrupted(sigint * 2, "round 1/"),
            "interrupted",
            fast=False,
        ),
        error(
            group,
            "predict: SIGINT after 3 of 12 images",
            _predict_interrupted(*sigint),
            "interrupted",
            check=_reported_results_read,
            fast=False,
        ),
        error(
            group,
            "predict: SIGTERM after 3 of 12 images",
            _predict_interrupted(*sigterm),
            "interrupted",
            check=_reported_results_read,
            fast=False,
        ),
        ok(
            group,
            "kill -9 while saving a model over another",
            _killed_while_saving("model"),
            fast=False,
        ),
        ok(
            group,
            "kill -9 while writing a label TIFF over another",
            _killed_while_saving("labels"),
            fast=False,
        ),
        ok(
            group,
            "cancel() while predicting between rounds (2048x2048)",
            lambda c: run_python(CANCEL, c.work, timeout=300),
            wrong=_cancel_wrong,
            fast=False,
        ),
    ]


# -- concurrent runs -----------------------------------------------------------------------


def _together(argvs: Sequence[Sequence], c: Ctx, timeout: float = 240) -> Result:
    """Start every command at once; their outputs joined, the highest exit status."""
    jobs = [Job([*CLI, *argv], c.work) for argv in argvs]
    results = [job.finish(timeout) for job in jobs]
    return Result(
        max(r.rc if r.rc is not None else 1 for r in results),
        "".join(r.out for r in results),
        "".join(r.err for r in results),
        max(r.seconds for r in results),
        any(r.timed_out for r in results),
    )


def _two_trainings(c: Ctx) -> Result:
    argv = TRAIN.format(fx=c.fx, work=c.work, tiny=TINY).split()
    return _together(
        [[*argv, "--seed", "1", "--steps", "6"], [*argv, "--seed", "2", "--steps", "6"]], c
    )


def _both_kept(c: Ctx, result: Result) -> list[str]:
    from napari_mutualseg.models import ModelPair

    saved = sorted(c.work.glob("m*.pt"))
    problems = [p for p in map(loads_model, saved) if p]
    if problems:
        return problems
    seeds = sorted(ModelPair.load(s, device="cpu").settings["seed"] for s in saved)
    return [] if seeds == [1, 2] else [f"models kept: seeds {seeds} of [1, 2]"]


def _appears_meanwhile(c: Ctx) -> Result:
    """Another program creates the model file while training runs."""
    argv = TRAIN.replace("{tiny}", "{long}") + "--rounds 3"
    job = Job(CLI + argv.format(fx=c.fx, work=c.work, long=LONG).split(), c.work)
    if job.wait_for("round 1/", 120):
        c.protect(c.write("m.pt", "made by another program"))
    return job.finish(240)


def _two_predictions(c: Ctx) -> Result:
    a, b = _inputs("a/x.tif", "b/x.tif")(c).split()
    out = ["--out", c.work / "p", "--device", "cpu"]
    return _together(
        [["predict", c.fx / "model.pt", a, *out], ["predict", c.fx / "model.pt", b, *out]], c
    )


def _no_result_replaced(c: Ctx, result: Result) -> list[str]:
    written = [
        Path(line.split()[1]) for line in result.out.splitlines() if line.startswith("Wrote ")
    ]
    problems = [p for p in map(reads_labels, written) if p]
    if not problems and len({sha(w) for w in written}) != len(written):
        problems.append("a reported result was replaced by the other run's")
    return problems


def _concurrent_cases() -> list[Case]:
    group = "concurrent runs"
    return [
        ok(
            group,
            "two trainings, one --out, no --overwrite",
            _two_trainings,
            ok_codes=(1,),
            check=_both_kept,
            fast=False,
        ),
        ok(
            group,
            "--out created by another program during training",
            _appears_meanwhile,
            ok_codes=(1,),
            check=_loads("m-2.pt"),
            fast=False,
        ),
        ok(
            group,
            "two predictions of same-name images into one folder",
            _two_predictions,
            ok_codes=(0, 1, 2),
            check=_no_result_replaced,
            fast=False,
        ),
    ]


def all_cases() -> list[Case]:
    """Every case, in groups."""
    return [
        *_image_cases(),
        *_table_cases(),
        *_setting_cases(),
        *_model_cases(),
        *_place_cases(),
        *_same_name_cases(),
        *_interruption_cases(),
        *_concurrent_cases(),
    ]


# --------------------------------------------------------------------------- the run


def run_case(case: Case, fx: Path, work: Path, *, in_process: bool = False) -> Outcome:
    """Run one case in its own folder ``work`` and judge it."""
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(fx, work, in_process)
    try:
        result = case.run(ctx)
        return judge(case, ctx, result)
    except Skip as skip:
        return Outcome(case, "skipped", None, [str(skip)])
    finally:
        ctx.close()


def table(outcomes: Sequence[Outcome]) -> str:
    """The counts per group as a Markdown table."""
    groups = list(dict.fromkeys(o.case.group for o in outcomes))
    head = "| group | tried | " + " | ".join(VERDICTS) + " |"
    rows = [head, "|" + "---|" * (len(VERDICTS) + 2)]
    for group in [*groups, "all"]:
        chosen = [o for o in outcomes if group in ("all", o.case.group)]
        counts = [sum(o.verdict == v for o in chosen) for v in VERDICTS]
        name = f"**{group}**" if group == "all" else group
        rows.append(f"| {name} | {len(chosen)} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="only the cases the tests run")
    parser.add_argument("--group", help="only this group (e.g. 'model files')")
    parser.add_argument("--verbose", action="store_true", help="print every case's verdict")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results"),
        help="folder for faults.md and faults.json",
    )
    args = parser.parse_args(argv)
    cases = [
        c
        for c in all_cases()
        if (not args.fast or c.fast) and (not args.group or args.group in c.group)
    ]
    outcomes = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        fx = Path(tmp) / "fixtures"
        build_fixtures(fx)
        before = {p: sha(p) for p in fx.iterdir()}
        for k, case in enumerate(cases):
            outcome = run_case(case, fx, Path(tmp) / f"case{k:03d}")
            outcomes.append(outcome)
            if args.verbose or outcome.verdict not in ("clear", "handled"):
                note = "; ".join(outcome.notes) or outcome.detail
                print(f"[{outcome.verdict}] {case.group}: {case.name}: {note}", flush=True)
        changed = [p.name for p, h in before.items() if _hash(p) != h]
        if changed:
            print(f"fixtures changed by the cases: {changed}")
    minutes = (time.perf_counter() - start) / 60
    text = table(outcomes)
    print(f"\n{len(outcomes)} cases in {minutes:.1f} min\n\n{text}")
    out = Path(args.out)
    if not args.fast and not args.group:
        from napari_mutualseg.files import write_text

        write_text(out / "faults.md", f"{text}\n", overwrite=True)
        write_text(
            out / "faults.json",
            json.dumps(
                [
                    {
                        "group": o.case.group,
                        "case": o.case.name,
                        "verdict": o.verdict,
                        "exit_status": o.result.rc if o.result else None,
                        "notes": o.notes,
                        "detail": o.detail,
                        "seconds": round(o.result.seconds, 2) if o.result else None,
                        "peak_mb": round(o.result.peak_mb)
                        if o.result and o.result.peak_mb
                        else None,
                    }
                    for o in outcomes
                ],
                indent=1,
            ),
            overwrite=True,
        )
    bad = sum(o.verdict in ("traceback", "data loss", "hang") for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
