"""Checkpoints: plain dictionaries of tensors and numbers, written atomically, loaded safely.

A checkpoint is data, never code: :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``, and each reader checks the entries it needs
(:mod:`pvae.infer.checkpoint_entries`).
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint_entries import first_line, shown

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
    except pickle.UnpicklingError as error:
        # A whole torch.save archive, or a pickle (protocol 2+ begins with 0x80), that the
        # safe loader refused holds objects other than plain data; other bytes are damage.
        if not (zipfile.is_zipfile(path) or _first_byte(path) == b"\x80"):
            raise _unreadable(path, error) from error
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain data, which pvae never "
            "unpickles (they could run code): it is not a pvae checkpoint"
        ) from error
    except Exception as error:  # garbage bytes surface as almost any exception type
        raise _unreadable(path, error) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is a PyTorch file but not a pvae checkpoint")
    _check_version(state, path)
    return state


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(1)


def _unreadable(path: Path, error: Exception) -> ValueError:
    # torch's unpickling errors say only that its safe loader failed: no detail to add.
    detail = "" if isinstance(error, pickle.UnpicklingError) else f": {_first_sentence(error)}"
    return ValueError(
        f"{path} is not a readable pvae checkpoint (not written by torch.save, or truncated "
        f"or corrupt; {type(error).__name__}{detail}): copy or save it again"
    )


def _check_version(state: Mapping[str, Any], path: Path) -> None:
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(
            f"{path} is a damaged pvae checkpoint: its format_version is {shown(version)}, not "
            "a positive integer"
        )
    if version > FORMAT_VERSION:
        written_by = state.get("pvae_version")
        by = f" {written_by}" if isinstance(written_by, str) else ""
        raise ValueError(
            f"{path} was written by a newer pvae{by} (checkpoint format {version}; this pvae "
            f"{package_version()} reads up to {FORMAT_VERSION}): upgrade pvae "
            "(pip install -U pyro-vae)"
        )


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error's message: torch's go on with paragraphs of advice."""
    return first_line(error).split(". ")[0].rstrip(".")


def package_version() -> str:
    """The installed pvae's version, recorded in checkpoints (from the package metadata)."""
    try:
        return importlib.metadata.version("pyro-vae")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"
