"""Model files: one file per trained pair, written safely and read without running code.

The file is written with :func:`torch.save` and read back with ``weights_only=True``, so loading
a checkpoint never runs code from it. This module knows the file, not the networks: the pair
(:class:`napari_mutualseg.models.ModelPair`) says what goes in and builds itself from it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .io import check_writable

FORMAT = "napari-mutualseg/pair"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a readable napari-mutualseg model."""


def write_checkpoint(
    payload: dict[str, Any], path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a model's ``payload`` (tensors and plain values) to ``path``.

    The file is written next to its destination and renamed into place, so an interrupted save
    never leaves a half-written model where a good one was.

    Parameters
    ----------
    payload : dict
        What the model stores; the format marker and versions are added here.
    path : str or os.PathLike
        Destination (``.pt`` is the usual suffix).
    overwrite : bool
        Replace an existing file. Off by default: a saved model is never lost by accident.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        **payload,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`write_checkpoint` wrote, never running code from the file.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If the file is damaged or not a napari-mutualseg model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable napari-mutualseg model (damaged, truncated or another "
            f"kind of file): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a napari-mutualseg model; save models with "
            "ModelPair.save or the plugin's Save model button."
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-mutualseg ({payload.get('package_version')}); "
            "upgrade the package to read it."
        )
    return payload
