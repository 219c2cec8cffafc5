"""The errors a command reports as one line (exit status 2), never as a traceback."""

from __future__ import annotations

# OSError covers missing, existing, unwritable and full-disk files.
#: Mistakes a user can make and trouble with files.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class CommandFailed(Exception):
    """The command could not finish; the message says why and what was kept."""
