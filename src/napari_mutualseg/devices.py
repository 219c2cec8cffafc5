"""Where to compute: CUDA, then Apple MPS, then the CPU, and how to name the device to a user."""

from __future__ import annotations

import gc

import torch

__all__ = ["available_devices", "describe_device", "release_cached_memory", "select_device"]


def available_devices() -> list[str]:
    """Devices this machine can train on, ``"auto"`` first.

    Returns
    -------
    list of str
        For example ``["auto", "cuda:0", "cpu"]``.
    """
    devices = ["auto"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """Pick the device to compute on: CUDA, then Apple MPS, then the CPU.

    Parameters
    ----------
    preference : str or torch.device
        ``"auto"`` (default) or an explicit device such as ``"cpu"``, ``"cuda:1"`` or ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If an explicit device is not available here.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as err:
        raise ValueError(
            f"Unknown device {preference!r}; choose one of {', '.join(available_devices())}."
        ) from err
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if str(device) not in available_devices():
        raise ValueError(
            f"Device {preference!r} is not available on this machine; choose one of "
            f"{', '.join(available_devices())}."
        )
    return device


def describe_device(device: torch.device) -> str:
    """The device's name for people.

    Parameters
    ----------
    device : torch.device
        A device, as :func:`select_device` gives.

    Returns
    -------
    str
        For example ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"mps (Apple GPU)"`` or
        ``"cpu (8 threads)"``.
    """
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def release_cached_memory() -> None:
    """Give the GPU memory PyTorch keeps cached back to the driver (after a job or an error).

    Only on CUDA: the full garbage collection it needs (tensors held by reference cycles, such
    as an exception's traceback) holds the GIL for a moment.
    """
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
