"""Ctrl-C and SIGTERM: the command stops with one line that says what was kept.

Outside training and segmenting a signal stops the command at once (:func:`interrupt`); during
them the first one lets the work end its step (:func:`stop_gently`): training keeps the last
completed round, segmenting the images already done and nothing of the ones in progress.
Either way the exit status is 128 plus the signal's number.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A signal stopped the command; ``detail`` says what was kept.

    A KeyboardInterrupt, so that no ``except Exception`` in a library turns it into another
    error.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail


@contextlib.contextmanager
def on_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with ``handler`` inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupt(signum: int, frame: Any) -> None:
    """Signal handler that stops the command at once."""
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_gently(cancel: Callable[[], None], kept: str) -> Iterator[list[int]]:
    """While training or segmenting: the first SIGINT or SIGTERM calls ``cancel``.

    The engine (``MutualTrainer.cancel``) or the run (``BatchRun.cancel``) then stops within
    a step, keeping what ``kept`` says; a second signal stops at once.

    Parameters
    ----------
    cancel : callable
        Asks the work to stop; called from the signal handler.
    kept : str
        What stopping keeps and what a second signal does, for the line printed on the
        first signal.

    Yields
    ------
    list of int
        The signals received so far.
    """
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise Interrupted(signum, "stopped at once on the second signal; nothing saved")
        received.append(signum)
        cancel()
        print(f"{_new_line()}{signal.Signals(signum).name}: stopping; {kept}", file=sys.stderr)

    with on_signals(handler):
        yield received


def report_interrupt(err: KeyboardInterrupt) -> int:
    """Say on stderr that the command was interrupted and what was kept.

    Parameters
    ----------
    err : KeyboardInterrupt
        A plain Ctrl-C, or an :class:`Interrupted` that names its signal and what was kept.

    Returns
    -------
    int
        The exit status, 128 plus the signal's number.
    """
    signum = getattr(err, "signum", signal.SIGINT)
    detail = getattr(err, "detail", "") or (
        "every file reported as written is complete, and no file is left half written"
    )
    print(f"{_new_line()}interrupted ({signal.Signals(signum).name}): {detail}.", file=sys.stderr)
    return 128 + signum


def _new_line() -> str:
    """What starts a line about a signal: on a terminal the signal may have cut a progress
    bar (or ^C) short; a log file has neither, and gets no empty line."""
    return "\n" if sys.stderr.isatty() else ""
