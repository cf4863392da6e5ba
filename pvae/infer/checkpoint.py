"""Checkpoints: plain dictionaries of tensors and numbers, written atomically, loaded safely."""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pvae-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write never leaves a half file.

    The bytes go to a temporary file in the same directory, are flushed to disk, then
    ``os.replace`` swaps it in, so ``path`` always holds either the old or the new checkpoint.

    Example::

        >>> save_checkpoint(tmp_path / "model.pt", {"model": vae.state_dict()})  # doctest: +SKIP
    """
    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot write checkpoint {path}: {error.strerror or error}; the previous "
            "checkpoint there, if any, is intact. Free space or choose a writable --out",
        ) from error
    finally:
        if temporary is not None and Path(temporary).exists():
            Path(temporary).unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a pvae checkpoint without unpickling code (``torch.load(weights_only=True)``).

    Example::

        >>> state = load_checkpoint("runs/mnist/checkpoint.pt")  # doctest: +SKIP
        >>> state["epoch"]  # doctest: +SKIP
        30
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # garbage bytes surface as almost any exception type
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{path} is not a readable pvae checkpoint (truncated, corrupt, or a pickle that "
            f"would run code, which pvae refuses to load): {first_line}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is a PyTorch file but not a pvae checkpoint")
    return state


def package_version() -> str:
    """The installed pvae's version, recorded in checkpoints (from the package metadata)."""
    try:
        return importlib.metadata.version("pyro-vae")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"
