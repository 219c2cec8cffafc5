"""Writing files safely: each appears complete or not at all, and never replaces another.

Every file the package writes goes through :func:`atomic_write`: the data goes to a file in
the destination's folder that has no name yet (Linux ``O_TMPFILE``; elsewhere a hidden
``.<name>.<host>.<pid>-<random>.part``, see :func:`temp_path`), is flushed to the disk, and
only then gets its name. So a destination holds its old content or the complete new one,
never a part; a crash, a full disk or Ctrl-C leave the old file as it was (a killed process's
part file is removed by the next write into that folder on the same machine); and without
``overwrite`` the name is taken with an exclusive link, so a file that appears meanwhile
(another run) is never replaced. :func:`check_writable` checks a destination before the work
that fills it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MIN_FREE",
    "OutputError",
    "ResultExistsError",
    "atomic_write",
    "check_outputs",
    "check_writable",
    "disk_full",
    "format_size",
    "remove_stale_temps",
    "same_file_key",
    "same_file_keys",
    "temp_path",
    "write_text",
]


class OutputError(OSError):
    """A file cannot be written; the message says why and what to do (``errno`` is kept)."""

    def __str__(self) -> str:
        return str(self.strerror)


class ResultExistsError(FileExistsError):
    """A result is already there and replacing it was not asked for.

    ``str()`` gives the Python remedy (``overwrite=True``); the command line and the panel
    word their own with :meth:`advice`.

    Parameters
    ----------
    reason : str
        What is there, e.g. ``"cells.tif already exists"``.
    remedy : str
        What to do instead of replacing it.
    what : str
        What replacing would replace ("it", "these results").
    """

    def __init__(
        self, reason: str, *, remedy: str = "choose another path", what: str = "it"
    ) -> None:
        super().__init__(errno.EEXIST, reason)
        self.reason, self.remedy, self.what = reason, remedy, what

    def advice(self, how: str) -> str:
        """The message with ``how`` as the way to replace (e.g. ``"add --overwrite"``)."""
        return f"{self.reason}; {self.remedy}, or {how} to replace {self.what}."

    def __str__(self) -> str:
        return self.advice("pass overwrite=True")


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full: no file after it can be
    written there either.

    Parameters
    ----------
    err : BaseException
        An error raised while writing.

    Returns
    -------
    bool
    """
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _explain(err: OSError, path: Path, existed: bool = False) -> OSError:
    """``err`` as an :class:`OutputError` whose message a user can act on."""
    if isinstance(err, OutputError | FileExistsError):
        return err
    folder = path.parent
    kept = " The earlier file is unchanged." if existed else ""
    if disk_full(err):
        text = (
            f"Not enough space to write {path} (the disk or your quota is full); free some "
            f"space or choose another folder.{kept}"
        )
    elif err.errno == errno.EROFS:
        text = f"Cannot write {path}: {folder} is on a read-only disk; choose another folder."
    elif err.errno in (errno.EACCES, errno.EPERM):
        text = (
            f"Cannot write {path}: no permission to create files in {folder}; choose another "
            "folder or change its permissions."
        )
    else:
        text = f"Cannot write {path}: {err.strerror or err}.{kept}"
    return OutputError(err.errno, text)


def _destination(given: str | os.PathLike, overwrite: bool) -> Path:
    """The file to write for ``given``: a link is followed to its file, never a broken one."""
    path = Path(given)
    if os.fspath(given).endswith(("/", os.sep)) and not path.is_dir():
        # Path drops the separator: "models/" would be written as a file named models
        raise IsADirectoryError(f"{given} names a folder; give a file name inside it instead.")
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if not real.exists():
            raise ValueError(
                f"{path} is a link to {real}, which does not exist; nothing is written through "
                "a broken link. Remove the link or choose another name."
            )
        path = real
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it instead.")
    if path.exists():
        if not overwrite:
            raise ResultExistsError(f"{path} already exists")
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file; choose a file name to write.")
    return path


def _existing_folder(folder: Path) -> Path:
    """The nearest folder of ``folder`` or its parents that exists (what a write would need)."""
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot write into {folder}: it is a file, not a folder.")
    return folder


_PROC_FD = "/proc/self/fd"

#: Free bytes a disk needs at the least before anything is written to it.
MIN_FREE = 16 * 1024


def temp_path(target: Path, suffix: str, *, unique: bool = True) -> Path:
    """A hidden name beside ``target`` for this process's unfinished copy of it.

    ``.<name>.<host>.<pid>[-<random>].<suffix>``: the host and process let
    :func:`remove_stale_temps` tell what a killed process left from what a live one, on this
    machine or another sharing the folder, is writing.

    Parameters
    ----------
    target : pathlib.Path
        The file or folder it will become.
    suffix : str
        What kind of temporary it is (``part``, ``partial``).
    unique : bool
        Add a random part, for several at once in one process.
    """
    token = f"-{secrets.token_hex(4)}" if unique else ""
    return target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}{token}.{suffix}")


def remove_stale_temps(folder: Path, suffix: str) -> None:
    """Remove the temporaries (:func:`temp_path`) in ``folder`` that processes of this
    machine left when they were killed; those of running processes and of other machines
    are left alone."""
    import psutil

    host = f".{socket.gethostname()}"
    for temp in Path(folder).glob(f".*.{suffix}"):
        owner, _, pid = temp.name[: -len(suffix) - 1].rpartition(".")
        pid = pid.partition("-")[0]
        if owner.endswith(host) and pid.isdigit() and not psutil.pid_exists(int(pid)):
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    temp.unlink()


#: Folders whose killed processes' part files this process has removed (once per folder: a
#: batch writes thousands of files into one, and a listing of a network share is slow).
_CLEANED: set[Path] = set()
_CLEANING = threading.Lock()


def _temp_name(target: Path) -> Path:
    folder = target.parent.absolute()
    with _CLEANING:
        if folder not in _CLEANED:
            _CLEANED.add(folder)
            remove_stale_temps(folder, "part")
    return temp_path(target, "part")


def _open_unnamed(target: Path, mode: int) -> tuple[int, Path | None]:
    """A new empty file beside ``target``: (descriptor, its temporary name or None).

    The unnamed file (Linux ``O_TMPFILE``) vanishes with the process if it is killed before
    the file is published; elsewhere a hidden name is used and removed on every failure path.
    The mode is ``mode`` less the umask, as for any new file.
    """
    if hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD):
        try:
            return os.open(target.parent, os.O_TMPFILE | os.O_RDWR, mode), None
        except OSError:
            pass  # this file system has no unnamed files; a named one says why if it fails too
    name = _temp_name(target)
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_BINARY", 0)
    return os.open(name, flags, mode), name


def _link_unnamed(fd: int, target: Path) -> None:
    """Give the unnamed file ``fd`` the name ``target``; FileExistsError if it is taken."""
    proc = os.open(_PROC_FD, os.O_RDONLY)
    try:
        # linkat with AT_SYMLINK_FOLLOW (what follow_symlinks=True with a dir fd gives)
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _publish(fd: int | None, temp: Path | None, target: Path, overwrite: bool) -> None:
    """Give the written file (unnamed: open as ``fd``; else closed, named ``temp``) the name
    ``target``; no temporary name is left, whatever fails."""
    if temp is None and not overwrite:
        _link_unnamed(fd, target)  # exclusive: fails if the name was taken meanwhile
        return
    if temp is None:
        temp = _temp_name(target)
        _link_unnamed(fd, temp)
    try:
        if overwrite:
            os.replace(temp, target)
            return
        try:
            os.link(temp, target)  # exclusive, as above
        except OSError as err:
            if isinstance(err, FileExistsError) or os.path.lexists(target):
                raise FileExistsError(target) from None
            os.replace(temp, target)  # no hard links on this file system (FAT, some shares)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a renamed file, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Write a file that appears complete or not at all.

    Yields a binary file object; what is written to it replaces ``path`` only when the block
    ends without an error, after the data reached the disk. A link is followed to its file
    (never a broken link); missing parent folders are created. A new file gets the usual
    permissions (the umask's), a replaced file keeps its own.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    overwrite : bool
        Replace an existing file. Without it the name is taken exclusively: a file created
        under that name while this one was written is left alone and FileExistsError raised.

    Raises
    ------
    FileExistsError
        When ``path`` exists (or appears meanwhile) and ``overwrite`` is False.
    IsADirectoryError, NotADirectoryError
        When ``path`` is (or names, ending in a separator) a folder, or a parent of it is a
        file.
    OutputError
        When the file cannot be written (full or read-only disk, no permission); the old file
        is unchanged and no temporary file is left.

    Examples
    --------
    >>> with atomic_write("table.csv") as f:
    ...     _ = f.write(b"y0,x0,y1,x1\\n")
    """
    target = _destination(path, overwrite)
    path = Path(path)
    _existing_folder(target.parent)  # a file where a folder of the path should be
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(target.stat().st_mode) if existed else 0o666
        fd, temp = _open_unnamed(target, mode)
    except OSError as err:
        raise _explain(err, path, existed) from err
    try:
        with os.fdopen(fd, "w+b") as f:
            f.raw.name = str(target)  # writers that ask for the file's name get the target's
            if existed and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # the umask applies to a new file, not to a replaced one
            yield f
            f.flush()
            os.fsync(fd)
            if temp is None:
                _publish(fd, None, target, overwrite)  # named through its open descriptor
        if temp is not None:
            _publish(None, temp, target, overwrite)  # closed first: Windows renames no open file
        _sync_folder(target.parent)
    except FileExistsError:
        raise FileExistsError(
            f"{path} was created by another program while this one was writing it; it was "
            "left as it is."
        ) from None
    except OSError as err:
        raise _explain(err, path, existed) from err
    finally:
        if temp is not None and os.path.lexists(temp):
            os.unlink(temp)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) with :func:`atomic_write`; the path written."""
    with atomic_write(path, overwrite=overwrite) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def check_writable(
    path: str | os.PathLike, overwrite: bool = False, *, size: int | None = None
) -> Path:
    """Check, before any work, that ``path`` can be written.

    Parameters
    ----------
    path : str or path-like
        The file to be written later.
    overwrite : bool
        Whether an existing file may be replaced.
    size : int, optional
        Bytes the file will take, when known: the disk must have that much free (and never
        less than :data:`MIN_FREE`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    IsADirectoryError, NotADirectoryError
        When ``path`` is a folder, or a parent of it a file.
    OutputError
        When the folder is read-only or not writable, or the disk has less than ``size`` free.
    ValueError
        When ``path`` is a broken link or not a regular file.
    """
    target = _destination(path, overwrite)
    path = Path(path)
    folder = _existing_folder(target.parent)
    try:
        fd, temp = _open_unnamed(folder / target.name, 0o600)
        os.close(fd)
        if temp is not None:
            os.unlink(temp)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise _explain(err, path) from err
    needed = max(size or 0, MIN_FREE)
    if free < needed:
        raise OutputError(
            errno.ENOSPC,
            f"Not enough space for {path}: it needs about {format_size(needed)} and {folder} has "
            f"{format_size(free)} free. Free some space or choose another folder.",
        )
    return path


def same_file_key(path: str | os.PathLike) -> str:
    """One key per place on the disk (links resolved; case folded, for case-blind disks)."""
    return os.path.normcase(os.path.realpath(path)).lower()


def same_file_keys(paths: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`same_file_key` of each path, each folder resolved once.

    A plate's 10,000 images lie in a few folders; resolving every folder of every path again
    (a system call each, slow on a network disk) took seconds.

    Parameters
    ----------
    paths : sequence of str or path-like
        Files, which need not exist.

    Returns
    -------
    list of str
        One key per path, in order.
    """
    folder_keys: dict[str, str] = {}
    keys = []
    for path in map(os.fspath, paths):
        folder, name = os.path.split(path)
        # a link, or a name that is no file ('..', a trailing separator), is resolved whole
        if name in ("", ".", "..") or os.path.islink(path):
            keys.append(same_file_key(path))
            continue
        if folder not in folder_keys:
            folder_keys[folder] = same_file_key(folder)  # '' is the working folder
        keys.append(os.path.join(folder_keys[folder], os.path.normcase(name).lower()))
    return keys


def check_outputs(
    outputs: Sequence[str | os.PathLike],
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Check, before any work, every file a command will write: each can be written
    (:func:`check_writable`), no two share a name, and none is an input, even with
    ``overwrite``.

    Parameters
    ----------
    outputs : sequence of str or path-like
        The files to be written.
    inputs : sequence of str or path-like
        The files the work reads (images, box tables, a model to resume).
    overwrite : bool
        Whether an existing output may be replaced.

    Returns
    -------
    list of pathlib.Path
        ``outputs``.

    Raises
    ------
    ValueError
        When two outputs are one file, or an output is an input.
    FileExistsError, OSError
        As :func:`check_writable`.
    """
    reads = {same_file_key(p): Path(p) for p in inputs}
    seen: dict[str, Path] = {}
    for out in map(Path, outputs):
        key = same_file_key(out)
        if key in reads:
            raise ValueError(
                f"{out} is an input ({reads[key]}); writing there would destroy it. Choose "
                "another output name."
            )
        if key in seen:
            raise ValueError(
                f"Two results would be written to {out}; give each output its own name."
            )
        seen[key] = out
        check_writable(out, overwrite)
    return [Path(p) for p in outputs]


def format_size(n: float) -> str:
    """A number of bytes as people read it: ``"3.1 GiB"``."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} bytes" if k == 0 else f"{n:.1f} {units[k]}"
