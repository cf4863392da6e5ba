"""What changes from epoch to epoch in :func:`pvae.fit`: the learning rate, and whether to stop.

Learning-rate schedules are torch's (``torch.optim.lr_scheduler``), stepped once per epoch
and restored exactly on resume; early stopping watches the held-out bound (the ELBO, or
IWAE_K with fit's ``held_out_num_samples=K``).

Example::

    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> scheduler = make_lr_scheduler("step", {"step_size": 2}, optimizer, num_epochs=10)
    >>> type(scheduler).__name__
    'StepLR'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

LR_SCHEDULES = ("plateau", "cosine", "step")


def check_lr_schedule(schedule) -> None:
    if schedule is None or callable(schedule) or schedule in LR_SCHEDULES:
        return
    raise ValueError(
        f"unknown lr_schedule {schedule!r}: choose one of {', '.join(LR_SCHEDULES)}, or pass "
        "a function of the optimizer that returns a torch.optim.lr_scheduler scheduler"
    )


def make_lr_scheduler(
    schedule: str | Callable | None,
    options: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
):
    """A scheduler stepped after every epoch: ``"plateau"`` (ReduceLROnPlateau on the held-out
    bound, else the training bound; default factor 0.5, patience 5), ``"cosine"``
    (CosineAnnealingLR over ``num_epochs``), ``"step"`` (StepLR, default ``step_size`` 30,
    ``gamma`` 0.1), or ``schedule(optimizer)`` for any other; ``options`` are the keyword
    arguments of the torch class."""
    check_lr_schedule(schedule)
    if schedule is None:
        return None
    if callable(schedule):
        return schedule(optimizer)
    options = dict(options)
    try:
        if schedule == "plateau":
            options = {"mode": "max", "factor": 0.5, "patience": 5, **options}
            return lr_scheduler.ReduceLROnPlateau(optimizer, **options)
        if schedule == "cosine":
            options = {"T_max": max(num_epochs, 1), **options}
            return lr_scheduler.CosineAnnealingLR(optimizer, **options)
        options = {"step_size": 30, "gamma": 0.1, **options}
        return lr_scheduler.StepLR(optimizer, **options)
    except TypeError as error:
        raise ValueError(f"lr_schedule_options for {schedule!r}: {error}") from None


def step_lr_scheduler(scheduler, held_out_bound: float | None, train_bound: float) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(held_out_bound if held_out_bound is not None else train_bound)
    else:
        scheduler.step()


@dataclasses.dataclass
class EarlyStopping:
    """The best held-out bound so far and how many epochs have passed without improving on it.

    The bound is the ELBO (``held_out_samples`` 1) or IWAE_K (``held_out_samples`` K: fit's
    ``held_out_num_samples``), so
    that a checkpoint says which one its best epoch was chosen by.

    Example::

        >>> stopping = EarlyStopping(patience=1)
        >>> [stopping.update(epoch, bound) for epoch, bound in enumerate([-5.0, -4.0, -4.5], 1)]
        [True, True, False]
        >>> stopping.should_stop, stopping.best_epoch
        (True, 2)
    """

    patience: int | None = None
    best_bound: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    held_out_samples: int = 1

    def update(self, epoch: int, held_out_bound: float) -> bool:
        """Record an epoch's held-out bound; True when it is the best so far."""
        if held_out_bound > self.best_bound:
            self.best_bound, self.best_epoch, self.stale_epochs = held_out_bound, epoch, 0
            return True
        self.stale_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale_epochs >= self.patience

    @property
    def bound_name(self) -> str:
        return "ELBO" if self.held_out_samples == 1 else f"IWAE_{self.held_out_samples}"

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``early_stopping``."""
        return dataclasses.asdict(self)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Take back the record :meth:`state_dict` wrote; ``patience`` stays this run's."""
        restored = EarlyStopping.from_dict(saved, patience=self.patience)
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(restored, field.name))

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], **changes) -> EarlyStopping:
        """What :meth:`state_dict` wrote, checkpoints from before ``held_out_samples`` included
        (their bound was the ELBO, kept as ``best_elbo``)."""
        saved = dict(saved)
        if "best_elbo" in saved:
            saved["best_bound"] = saved.pop("best_elbo")
        return cls(**{**saved, **changes})
