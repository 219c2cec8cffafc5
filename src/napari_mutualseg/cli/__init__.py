"""Command line: ``napari-mutualseg supervise | train | predict | evaluate | info | demo``.

What the command promises about files: every output appears complete or not at all; an
existing file is replaced only with ``--overwrite`` (a file that another program creates
meanwhile is left alone and the result written beside it, exit status 1); every output place
is checked before any work; Ctrl-C or SIGTERM during ``train`` saves the networks of the last
completed round (``demo``: its overlay, scores and model); ``predict`` keeps every finished
image and skips it when run again (:mod:`napari_mutualseg.batch`). Exit status: 0 done, 1
done but a result went to another name (the warning says which) or, for ``predict``, some
images failed (``run_report.csv`` says why), 2 a mistake the message explains, 130/143
interrupted by SIGINT/SIGTERM, 141 (as for SIGPIPE) when the reader of the output closed it
(``info --json | head``), without a word.

The options are in :mod:`.parser`, the commands in :mod:`.labels` (``supervise``,
``evaluate``), :mod:`.train` (``train``, ``demo``), :mod:`.predict` and :mod:`.info`.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Sequence

from .errors import USER_ERRORS, CommandFailed
from .parser import build_parser
from .signals import interrupt, on_signals, report_interrupt

__all__ = ["USER_ERRORS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-mutualseg`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the command's name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (see the module docs); mistakes are printed as one line, never as a
        traceback.
    """
    # redirected to a file (a cluster job's log), stdout is written in blocks: each round's
    # line came at the end of the job, after the lines on stderr
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.parser.unknown(extra)
    from ..checkpoint import CheckpointError
    from ..files import ResultExistsError
    from ..training import TrainingError

    def warn(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings(), on_signals(interrupt):
        warnings.showwarning = warn
        try:
            status = args.func(args)
            sys.stdout.flush()  # a closed output shows here, not at exit
            return status
        except KeyboardInterrupt as err:
            return report_interrupt(err)
        except BrokenPipeError:
            return _output_closed()
        except MemoryError as err:
            print(
                f"error: out of memory ({err or 'the image is too large'}); use smaller images "
                "or a smaller --tile-size.",
                file=sys.stderr,
            )
            return 2
        except ResultExistsError as err:
            print(f"error: {err.advice('add --overwrite')}", file=sys.stderr)
            return 2
        except (*USER_ERRORS, CheckpointError, TrainingError, CommandFailed) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2


def _output_closed() -> int:
    """The reader of stdout went away: stop quietly, as a command killed by SIGPIPE does."""
    # what is still buffered must not fail again when Python flushes stdout at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + getattr(signal, "SIGPIPE", 13)  # 13 where the system has no SIGPIPE
