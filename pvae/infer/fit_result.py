"""What :func:`pvae.fit` reports: each epoch's figures, the result, and the CSV log of epochs."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import torch


@dataclasses.dataclass
class EpochStats:
    """One epoch, in nats per datapoint: the training objective's bound averaged over the
    epoch's minibatches (the ELBO, or IWAE_K for ``"iwae"``/``"dreg"``), the held-out ELBO and,
    with fit's ``held_out_num_samples=K`` (K > 1), the held-out IWAE_K (the ELBO is then the mean
    log-weight of the same K draws)."""

    epoch: int
    train_bound: float
    held_out_elbo: float | None
    seconds: float
    held_out_iwae: float | None = None


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the optimizer (for checkpoints)."""

    history: list[EpochStats]
    optimizer: torch.optim.Optimizer
    num_steps: int
    best_epoch: int = 0  # the epoch of the best held-out bound (0: no held-out data)
    best_held_out_bound: float | None = None
    held_out_bound_name: str = "ELBO"  # or IWAE_K, with held_out_num_samples=K
    stopped_early: bool = False  # by patience, before num_epochs
    # Why the training figure is not a bound on log p(x) (pyro.factor terms, sites the model
    # weighs; pvae.infer.bound_caveat), as the model stood in the last epoch; None: it is one.
    train_bound_caveat: str | None = None
    # How the steps ran: "eager", or the captured step's backend and what capturing cost
    # (fit's compile; pvae.infer.captured_steps).
    step: str = "eager"

    def history_dicts(self) -> list[dict]:
        return [dataclasses.asdict(stats) for stats in self.history]


class CsvLog:
    """One row per epoch; a resumed run first rewrites the rows its checkpoint holds.

    ``path`` None writes nothing (no CSV asked for, or a rank other than 0).
    """

    def __init__(self, path: str | Path | None, history: list[EpochStats]):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow([f.name for f in dataclasses.fields(EpochStats)])
                writer.writerows(dataclasses.astuple(stats) for stats in history)

    def append(self, stats: EpochStats) -> None:
        if self.path is not None:
            with self.path.open("a", newline="") as stream:
                csv.writer(stream).writerow(dataclasses.astuple(stats))
