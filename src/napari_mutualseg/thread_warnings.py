"""The warnings one thread raises, kept apart from the other threads'.

``warnings.catch_warnings`` swaps the process's warning hook and filters, whatever thread
raises: a folder run in napari's worker thread noted the main thread's warnings as an
image's, images done at once in the threads of a dask worker took each other's, two viewers'
jobs told each other's, and the last block to end could leave the process's warnings going
into a finished one's list. :func:`thread_warnings` sends a thread's own to a receiver and
leaves every other thread's where they went.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

#: This thread's receiver, while it has one.
_local = threading.local()
_hook_lock = threading.Lock()
_blocks = 0  # running, in all threads: the last to end puts the process's hook back


class _ByThread:
    """A ``warnings.showwarning`` that hands a warning to its thread's receiver, and shows
    those of threads without one as the hook it replaced did."""

    def __init__(self, previous: Callable[..., Any]) -> None:
        self.previous = previous

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        receive = getattr(_local, "receive", None)
        if receive is None:
            self.previous(message, category, filename, lineno, file, line)
        else:
            receive(warnings.WarningMessage(message, category, filename, lineno, file, line))


def _installed(hook: Any) -> bool:
    """Whether ``hook`` is a :class:`_ByThread` or passes warnings on to one."""
    while hook is not None and not isinstance(hook, _ByThread):
        hook = getattr(hook, "previous", None)
    return hook is not None


@contextlib.contextmanager
def thread_warnings(receive: Callable[[warnings.WarningMessage], None]) -> Iterator[None]:
    """Hand the warnings this thread raises while the block runs to ``receive``, not shown.

    Other threads' warnings go where they went before. Blocks nest: an inner block's receiver
    takes the thread's warnings until it ends. The process's warning filters still decide
    which warnings are raised. Once no block runs, the process's hook is the one before.

    Parameters
    ----------
    receive : callable
        Called with each warning (a ``warnings.WarningMessage``), in this thread.
    """
    global _blocks
    with _hook_lock:
        # put back in place when a catch_warnings block elsewhere restored the one before
        if not _installed(warnings.showwarning):
            warnings.showwarning = _ByThread(warnings.showwarning)
        _blocks += 1
        # Python shows a warning once per place and words: a change of the filters forgets
        # which were shown (this one, at the end, changes no warning's action), so that a
        # block receives a warning an earlier one had in the same words
        warnings.simplefilter("default", append=True)
    outer = getattr(_local, "receive", None)
    _local.receive = receive
    try:
        yield
    finally:
        _local.receive = outer
        with _hook_lock:
            _blocks -= 1
            if not _blocks and isinstance(warnings.showwarning, _ByThread):
                warnings.showwarning = warnings.showwarning.previous
