"""Where :func:`pvae.fit` keeps its checkpoints, and the checkpoint a run resumes from.

A checkpoint is the training state's sections
(:class:`~pvae.infer.training_state.TrainingState`) plus what the model's owner adds (a
:class:`pvae.VAE`: its architecture) and ``checkpoint_extra()``, written atomically by
rank 0 after every epoch and when a signal stops training; the best held-out epoch's is
kept as ``best.pt`` next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvae.infer.checkpoint import load_checkpoint, save_checkpoint
from pvae.infer.distributed import Cluster
from pvae.infer.training_state import TrainingState


def best_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where fit keeps the best held-out epoch's checkpoint: ``best.pt`` next to the last."""
    return Path(checkpoint_path).with_name("best.pt")


def resumed_from(resume: str | Path | dict | None) -> tuple[dict | None, str]:
    """The checkpoint to resume from (None: a new run) and the name its errors begin with."""
    if isinstance(resume, (str, Path)):
        return load_checkpoint(resume), str(resume)
    return resume, "the checkpoint to resume from"


class CheckpointWriter:
    """Writes a run's checkpoints to ``path`` (None: none), ``best.pt`` too when the run
    has held-out data (``keeps_best``).

    Example::

        >>> CheckpointWriter("runs/best.pt", None, print, Cluster(), keeps_best=True)
        Traceback (most recent call last):
        ...
        ValueError: checkpoint_path must not be named best.pt: the best held-out epoch's ...
    """

    def __init__(
        self, path, extra: Callable[[], dict] | None, model, cluster: Cluster, keeps_best: bool
    ):
        if keeps_best and path is not None and Path(path).name == "best.pt":
            raise ValueError(
                "checkpoint_path must not be named best.pt: the best held-out epoch's "
                "checkpoint is kept under that name next to it"
            )
        self.path, self.extra, self.model, self.cluster = path, extra, model, cluster

    def save(self, state: TrainingState, best: bool = False) -> None:
        """The last checkpoint (or, ``best``, the best epoch's), written by rank 0."""
        if self.path is None:
            return
        sections = state.state_dict()  # a collective: every rank takes part
        if self.cluster.is_main:
            extra = self.extra() if self.extra is not None else {}
            path = best_checkpoint_path(self.path) if best else self.path
            save_checkpoint(path, {**_owner_state(self.model), **extra, **sections})
        self.cluster.barrier()  # no rank goes on (and may resume from it) before the file is there

    def what_survives(self, epoch: int, started_at: tuple[int, int]) -> str:
        """What a divergence in epoch ``epoch + 1`` leaves, said truly: the checkpoint this
        call saved at its last epoch's end, else the one it resumed from, else none
        (``started_at``: the epoch and step the call began at)."""
        if self.path is None:
            return "no checkpoint_path was given, so nothing was saved"
        if epoch > started_at[0]:
            return f"the checkpoint {self.path} from epoch {epoch} is intact"
        if started_at[1] > 0:
            return f"nothing was written to {self.path}: the checkpoint resumed from is unchanged"
        return f"no checkpoint was written to {self.path}: the first comes at the end of epoch 1"


def _owner_state(model) -> dict[str, Any]:
    """What the object ``model`` is a method of adds to checkpoints (a :class:`pvae.VAE`: its
    architecture), so that a checkpoint of its model rebuilds without being asked to."""
    state = getattr(getattr(model, "__self__", None), "checkpoint_state", None)
    return state() if callable(state) else {}
