"""Model files: one file per trained pair, written safely and read without running code.

The file is written with :func:`torch.save` through :func:`napari_mutualseg.files.atomic_write`
(complete or not at all) and read back with ``weights_only=True``, so loading a checkpoint
never runs code from it. What a file describes is checked before anything is built from it:
the format and its version, the normalisation, settings and history, and that every stored
tensor is finite. :func:`read_networks` also checks each network's stored architecture
(within :data:`ARCH_LIMITS`) against its stored weights before it builds the network.
Checksums of the tensors and of the plain values, written with them, find a file damaged
after saving (a bad copy, a failing disk), which PyTorch's reader of the zip container lets
through. The pair
(:class:`napari_mutualseg.models.ModelPair`) says what else goes in the file and builds itself
from the networks and those fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import reprlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .box_tables import GEOJSON_SUFFIXES, ROI_SUFFIXES
from .files import atomic_write
from .io import image_stem, is_image_name
from .thread_warnings import thread_warnings
from .unet import N_CLASSES, UNet

FORMAT = "napari-mutualseg/pair"
#: Releases read files of their format version and older, refuse newer ones, and ignore the
#: fields they do not know. A new field that only informs (the pixel size) keeps the version;
#: one without which the model would be used wrongly raises it, so that the releases before it
#: refuse the file and say to upgrade.
FORMAT_VERSION = 1

#: Settings the package reads back from a file, and the least value each may have.
_INT_SETTINGS = {"min_size": 0, "width": 1, "depth": 1}

#: What a stored architecture may be: the package's networks predict background, cell and
#: boundary; channels, width and depth are bounded so that a file cannot describe a network
#: far beyond any trained one.
ARCH_LIMITS = {"in_channels": (1, 64), "n_classes": (N_CLASSES, N_CLASSES), "width": (1, 256),
               "depth": (1, 8)}  # fmt: skip


class CheckpointError(ValueError):
    """The file is not a readable napari-mutualseg model; the message says what is wrong."""


def write_checkpoint(
    payload: dict[str, Any], path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a model's ``payload`` (tensors and plain values) to ``path``.

    The file appears complete or not at all (:func:`~napari_mutualseg.files.atomic_write`): an
    interrupted save, a full disk or a crash never leave a half-written model where a good one
    was, nor a temporary file.

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

    Raises
    ------
    FileExistsError
        When ``path`` exists (or another program creates it meanwhile) and ``overwrite`` is
        False.
    napari_mutualseg.files.OutputError
        When the file cannot be written (full or read-only disk, no permission).
    ValueError
        When ``path`` is an image's or a table's name (:func:`check_model_name`), or the
        payload holds a value a model file cannot (anything but tensors, numbers, text, lists
        and tables of them; NumPy numbers and arrays are stored as plain ones). Nothing is
        written then.
    """
    check_model_name(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        **_plain(payload, ""),
    }
    payload[_CHECKSUM] = _checksum(payload)
    payload[_FIELDS_CHECKSUM] = _fields_checksum(payload)
    with atomic_write(path, overwrite=overwrite) as f:
        try:
            torch.save(payload, f)
        except RuntimeError as err:
            # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise
    return Path(path)


def check_model_name(path: str | os.PathLike) -> None:
    """Refuse to name a model file as an image or a table: info, predict's folder search
    and napari would take it for one, and saved over one with ``overwrite`` it would replace
    it.

    Parameters
    ----------
    path : str or os.PathLike
        Where a model is to be saved.

    Raises
    ------
    ValueError
        For an image's name (``cells.tif``, ``plate.ome.zarr``) or a table's (``.csv``, a
        Fiji ROI set, QuPath's GeoJSON), with the ``.pt`` name to give instead.
    """
    if is_image_name(path) or Path(path).suffix.lower() in _TABLE_SUFFIXES:
        stem = image_stem(path) if is_image_name(path) else Path(path).stem
        name = stem if stem.lower().endswith(".pt") else f"{stem}.pt"
        raise ValueError(
            f"{path} is the name of an image or a table, which a model file must not have (it "
            f"would be taken for one, or replace one): save the model as "
            f"{Path(path).with_name(name)}. Nothing was written."
        )


#: Tables of cells and boxes (box tables as Fiji and QuPath save them too).
_TABLE_SUFFIXES = (".csv", *ROI_SUFFIXES, *GEOJSON_SUFFIXES)


def _plain(value: Any, name: str) -> Any:
    """``value`` as a model file holds it, NumPy numbers and arrays as plain Python values.

    The file is read back with ``weights_only``, which refuses every other object: written
    as it is, a NumPy number in the history or a path in the settings made a file that saved
    (over a good one, with ``overwrite``) but never loaded.
    """
    if isinstance(value, torch.Tensor) or type(value) in (bool, int, float, str, type(None)):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {
            _plain(k, name): _plain(v, f"{name}[{k!r}]" if name else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [_plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise ValueError(
        f"the model's {name} is a {type(value).__name__} ({reprlib.repr(value)}), which a "
        "model file cannot hold (it holds numbers, text, and lists and tables of them): "
        "store it as text or a number. Nothing was written."
    )


def write_networks(
    networks: Sequence[UNet],
    fields: dict[str, Any],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write networks A and B (architecture and weights) and a pair's other ``fields``.

    Parameters
    ----------
    networks : sequence of UNet
        Networks A and B; their weights are stored from the CPU, wherever they live.
    fields : dict
        The pair's plain values (normalisation, settings, history...).
    path : str or os.PathLike
        Destination.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError, napari_mutualseg.files.OutputError
        As :func:`write_checkpoint`.
    """
    model_a, model_b = networks
    payload = {
        "arch_a": dict(model_a.arch),
        "arch_b": dict(model_b.arch),
        "state_a": {k: v.detach().cpu() for k, v in model_a.state_dict().items()},
        "state_b": {k: v.detach().cpu() for k, v in model_b.state_dict().items()},
        **fields,
    }
    return write_checkpoint(payload, path, overwrite=overwrite)


def _unsafe_content(err: Exception) -> str:
    """What a refused file held, from torch's message (whose advice is left out)."""
    found = re.search(r"\bGLOBAL\s+(\S+)", str(err))
    what = f" ({found.group(1)})" if found else ""
    # a pair given to torch.save whole: the file is this package's, written the wrong way
    ours = found is not None and found.group(1).startswith("napari_mutualseg.")
    how = "; save a pair with pair.save(path), which writes a model file" if ours else ""
    return (
        f"it holds Python objects{what} besides tensors and plain values, which a model file "
        f"never does; it was refused without running anything from it{how}"
    )


def _names_code(text: str) -> bool:
    """Whether torch's refusal names something a model file never holds (a function or a
    class to import); its other refusals (an unknown opcode, a tensor called as a function)
    come from bytes damaged in the pickle."""
    # "Unsupported global: GLOBAL builtins.exec", or "unsupported GLOBAL posix.system whose
    # module posix is blocked": the pickle's GLOBAL opcode naming what it would import
    return re.search(r"\bGLOBAL\s+\S", text) is not None


#: How files start: a model file is a zip archive (or, from old PyTorch, a pickle that begins
#: with its magic number, pickled with protocol 2); any other pickle is no PyTorch file, and
#: an image given where a model is asked for is named as what it is.
_PICKLED = (b"PK\x03\x04", b"\x80")
_OLD_TORCH = b"\x80\x02\x8a\n"
_IMAGE_MAGIC = {
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"II+\x00": "a TIFF image",
    b"MM\x00+": "a TIFF image",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
}


def _other_zip(path: Path) -> str:
    """The first names in a whole zip archive that is no PyTorch file (a Fiji ROI set given
    where a model is asked for), or ``""``: a model's archive holds ``data.pkl``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return ""  # not a whole zip: a damaged model, or no zip at all
    # a model whose names were damaged still has its tensors under data/ and its version
    if not names or any(n.endswith(("data.pkl", "/version", "/byteorder")) or "/data/" in n
                        for n in names):  # fmt: skip
        return ""
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`write_checkpoint` wrote, never running code from the file.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Returns
    -------
    dict
        The payload, its plain fields checked (see the module docs).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If the file is damaged, not a napari-mutualseg model, or describes something this
        package cannot use; the message is one line that says what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a napari-mutualseg model file (.pt).")
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    head = _head(path)
    kind = next((kind for magic, kind in _IMAGE_MAGIC.items() if head.startswith(magic)), "")
    if kind:
        raise CheckpointError(f"{path} is {kind}, not a napari-mutualseg model file (.pt).")
    try:
        # torch's notes on pickle protocols, not for users (another thread's are still shown)
        with thread_warnings(lambda shown: None):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's refusal advises loading the file unsafely: that advice is never passed on,
        # and neither are the zip reader's and unpickler's internals (a damaged file's message
        # ended in "(KeyError: 105)" or "internal miniz error"), which tell a user nothing
        text = str(err)
        refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text
        if refused and head.startswith(_PICKLED) and _names_code(text):
            reason = _unsafe_content(err)
        elif not head:
            reason = "the file is empty (0 bytes)"
        elif head.startswith(b"\x80") and not head.startswith(_OLD_TORCH):
            # pickle.dump(pair, f): torch refuses its first opcode as it refuses damaged bytes
            reason = (
                "it is a Python pickle (written by pickle.dump or joblib), not a model file, "
                "and was refused without running anything from it; save a pair with "
                "pair.save(path), which writes a model file"
            )
        elif names := _other_zip(path):
            reason = f"it is a zip archive of other files ({names}), not a model"
        elif head.startswith(_PICKLED):
            reason = (
                "the file is damaged or incomplete (a broken copy or download, or a save that "
                "did not finish); copy it again from where it was saved, or train the model "
                "again"
            )
        else:
            reason = (
                "another kind of file, or a damaged one; give a file written by the panel's "
                "Save model…, pair.save(path) or napari-mutualseg train --out"
            )
        raise CheckpointError(
            f"{path} is not a readable napari-mutualseg model: {reason}."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a napari-mutualseg model; save models with "
            "ModelPair.save or the plugin's Save model button."
        )
    problem = _problem(payload)
    if problem:
        raise CheckpointError(f"{path} is not a usable napari-mutualseg model: {problem}.")
    return payload


def read_networks(path: str | os.PathLike) -> tuple[dict[str, Any], tuple[UNet, UNet]]:
    """Read what :func:`write_networks` wrote and build its networks, never running code.

    Besides what :func:`read_checkpoint` checks, the architecture of each network must be
    within :data:`ARCH_LIMITS` and the stored weights must have exactly the shapes it implies
    (so nothing larger than the file is ever allocated) before a network is built, and the
    weights must match the checksum written with them.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Returns
    -------
    payload : dict
        The file's fields, as :func:`read_checkpoint` returns them.
    networks : tuple of UNet
        Networks A and B with the stored weights, on the CPU.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    CheckpointError
        If the file is damaged, not a napari-mutualseg model, or describes networks this
        package cannot build; the message says what is wrong in one line.
    """
    payload = read_checkpoint(path)
    archs = [payload.get("arch_a"), payload.get("arch_b")]
    if all(isinstance(a, dict) for a in archs) and len({a.get("in_channels") for a in archs}) > 1:
        raise CheckpointError(
            f"{path} is not a usable napari-mutualseg model: its networks A and B take "
            "different numbers of channels."
        )
    networks = []
    for key in ("a", "b"):
        arch, state = payload.get(f"arch_{key}"), payload.get(f"state_{key}")
        problem = _arch_problem(arch) or _state_problem(arch, state)
        if problem:
            raise CheckpointError(
                f"{path} is not a usable napari-mutualseg model: network {key.upper()} {problem}."
            )
        network = UNet(**arch)
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path} is damaged: {str(err).splitlines()[0]}") from None
        networks.append(network)
    # last, so that a file edited by hand is told what it lacks; files of older versions have
    # no checksums, or that of the weights alone
    for key, checksum, what in (
        (_CHECKSUM, _checksum, "weights"),
        (_FIELDS_CHECKSUM, _fields_checksum, "normalisation, settings or history"),
    ):
        if key in payload and payload[key] != checksum(payload):
            raise CheckpointError(
                f"{path} is damaged: its {what} changed after it was saved (they no longer "
                "match the checksum saved with them). Copy the file again from where it was "
                "saved, or train the model again."
            )
    return payload, (networks[0], networks[1])


def _problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a payload's plain fields and tensors, or None."""
    version = payload.get("format_version")
    if not _is_int(version) or version < 1:
        return f"its format_version is {version!r}, not a positive whole number"
    if version > FORMAT_VERSION:
        written = payload.get("package_version")
        release = f"{written}, " if isinstance(written, str) else ""
        return (
            f"it was written by a newer napari-mutualseg ({release}model format {version}) "
            f"than this one ({__version__}, which reads format {FORMAT_VERSION} and older); "
            "upgrade it (pip install --upgrade napari-mutualseg) to use the model"
        )
    percentiles = payload.get("percentiles")
    if (
        not isinstance(percentiles, list | tuple)
        or len(percentiles) != 2
        or not all(_is_number(p) for p in percentiles)
        or not 0 <= percentiles[0] < percentiles[1] <= 100
    ):
        return (
            f"its normalisation percentiles {percentiles!r} are not two increasing numbers "
            "in [0, 100]"
        )
    settings = payload.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        return "its settings are not a table of named values"
    for key, least in _INT_SETTINGS.items():
        if key in settings and not (_is_int(settings[key]) and settings[key] >= least):
            return f"its setting {key} is {settings[key]!r}, not a whole number >= {least}"
    history = payload.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "its training history is not a list of rounds"
    for key, what in (("cell_size", "cell size"), ("pixel_size", "pixel size")):
        value = payload.get(key)
        if value is not None and not (_is_number(value) and value > 0):
            return f"its {what} {value!r} is not a positive number"
    names = payload.get("channel_names")
    if names is not None and not (
        isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)
    ):
        return "its channel names are not a list of names"
    for name, tensor in _tensors(payload):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return (
                f"{_tensor_place(name)} holds NaN or infinite values, so the file is damaged "
                "or was saved from a training run that diverged; use an earlier copy of the "
                "model or train again"
            )
    return None


def _tensor_place(name: str) -> str:
    """A stored tensor's place in words: network A's tensor head.weight."""
    for key, network in (("state_a", "network A"), ("state_b", "network B")):
        prefix = f"[{key!r}]["
        if name.startswith(prefix):
            tensor = name[len(prefix) : -1].strip("'")
            return f"{network}'s tensor {tensor}"
    return f"the stored value {name}"


def _arch_problem(arch: Any) -> str | None:
    """What is wrong with a stored architecture, or None."""
    if not isinstance(arch, dict) or set(arch) != set(ARCH_LIMITS):
        return f"has no valid architecture (expected the keys {', '.join(ARCH_LIMITS)})"
    for name, (low, high) in ARCH_LIMITS.items():
        value = arch[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            allowed = str(low) if low == high else f"a whole number from {low} to {high}"
            return f"has {name} = {value!r}; this package needs {allowed}"
    return None


def _state_problem(arch: dict[str, int], state: Any) -> str | None:
    """What is wrong with stored weights for ``arch``, or None; nothing is allocated."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "has no weights"
    with torch.device("meta"):  # the shapes the architecture implies, without memory
        expected = {k: (v.shape, v.dtype) for k, v in UNet(**arch).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        kinds = ((missing, "missing"), (extra, "unexpected"))
        counts = [f"{len(names)} {what} (first {names[0]})" for names, what in kinds if names]
        return f"has weights that do not match its architecture: {', '.join(counts)}"
    for name, (shape, dtype) in expected.items():
        stored = state[name]
        if stored.shape != shape:
            return (
                f"has {name} of shape {tuple(stored.shape)}, its architecture needs {tuple(shape)}"
            )
        if stored.is_floating_point() != dtype.is_floating_point:
            return f"has {name} of type {stored.dtype}, its architecture needs {dtype}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: The payload keys of the checksums of the tensors and of the plain values.
_CHECKSUM = "tensors_sha256"
_FIELDS_CHECKSUM = "fields_sha256"


def _checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of every tensor in ``payload``: where it is, its type, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in _tensors(payload):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {values.dtype} {tuple(tensor.shape)}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fields_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of the plain values in ``payload`` in their stored order, as JSON (whose text
    of a number or a name is the same in every Python); the values holding tensors are the
    other checksum's."""
    plain = {
        key: value
        for key, value in payload.items()
        if key not in (_CHECKSUM, _FIELDS_CHECKSUM) and not _tensors(value)
    }
    return hashlib.sha256(json.dumps(plain, skipkeys=True).encode()).hexdigest()


def _tensors(value: Any, name: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts and lists, with where it is."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _tensors(v, f"{name}[{k!r}]")]
    if isinstance(value, list | tuple):
        return [t for i, v in enumerate(value) for t in _tensors(v, f"{name}[{i}]")]
    return []
