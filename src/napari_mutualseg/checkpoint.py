"""One file per trained pair: both networks, their architecture, normalisation and settings.

The file is written with :func:`torch.save` and read back with ``weights_only=True``, so loading
a checkpoint never runs code from it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import __version__
from .io import check_writable
from .models import ModelPair, UNet, select_device

FORMAT = "napari-mutualseg/pair"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a readable napari-mutualseg model."""


def save_pair(pair: ModelPair, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``pair`` to ``path``.

    The file is written next to its destination and renamed into place, so an interrupted save
    never leaves a half-written model where a good one was.

    Parameters
    ----------
    pair : ModelPair
        The trained networks.
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
        "arch_a": dict(pair.model_a.arch),
        "arch_b": dict(pair.model_b.arch),
        "state_a": {k: v.detach().cpu() for k, v in pair.model_a.state_dict().items()},
        "state_b": {k: v.detach().cpu() for k, v in pair.model_b.state_dict().items()},
        "percentiles": [float(p) for p in pair.percentiles],
        "settings": dict(pair.settings),
        "history": [dict(h) for h in pair.history],
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


def load_pair(path: str | os.PathLike, device: str | torch.device = "auto") -> ModelPair:
    """Read a pair written by :func:`save_pair`.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    device : str or torch.device
        Where to put the networks (``"auto"``: CUDA, then MPS, then CPU).

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
    try:
        models = []
        for key in ("a", "b"):
            model = UNet(**payload[f"arch_{key}"])
            model.load_state_dict(payload[f"state_{key}"])
            models.append(model)
        pair = ModelPair(
            models[0],
            models[1],
            tuple(payload["percentiles"]),
            dict(payload.get("settings", {})),
            list(payload.get("history", [])),
        )
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged: {err}") from err
    return pair.to(select_device(device))
