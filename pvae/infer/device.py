"""Choosing the device that data, networks and every tensor pvae creates live on."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` into a device.

    ``"auto"`` (or ``None``) picks CUDA when a GPU is visible and the CPU otherwise.
    Asking for CUDA on a machine without one is an error, not a silent fallback. Under
    torchrun, a bare ``"cuda"`` means this process's GPU, ``cuda:$LOCAL_RANK``.

    Example::

        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but no CUDA GPU is available: "
            "use --device cpu (or 'auto' to pick the GPU only when there is one)"
        )
    if resolved.type == "cuda" and resolved.index is None and "LOCAL_RANK" in os.environ:
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return resolved
