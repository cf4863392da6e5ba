"""Training's plain settings, written once: the keyword arguments of :func:`pvae.fit` that a
YAML file can hold, with their defaults and rules (:class:`pvae.Config` extends them).

Example::

    >>> TrainConfig(batch_size=0).check()
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from pvae.infer.capture import compile_mode
from pvae.infer.objectives import OBJECTIVES
from pvae.infer.precision import check_precision
from pvae.infer.schedules import check_lr_schedule


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    """``num_epochs`` (in all, counting those of a resumed run), ``batch_size``,
    ``learning_rate`` (Adam), ``objective`` (see :data:`pvae.objectives.OBJECTIVES`),
    ``num_particles``, ``seed`` (None: from Pyro's global seed), ``clip_norm``,
    ``precision`` (see :mod:`pvae.precision`), ``compile`` (the captured training step:
    ``"auto"``, ``"off"``, ``"capture"`` or ``"inductor"``; see
    :mod:`pvae.infer.captured_steps`), ``patience`` (stop after this many epochs
    without a better held-out bound), ``held_out_num_samples`` (K of that bound: 1 is the ELBO,
    K > 1 IWAE_K) and ``lr_schedule`` with ``lr_schedule_options`` (see
    :func:`pvae.infer.schedules.make_lr_scheduler`)."""

    num_epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    objective: str = "elbo"
    num_particles: int = 1
    seed: int | None = None
    clip_norm: float | None = None
    precision: str = "float32"
    compile: str = "auto"
    patience: int | None = None
    held_out_num_samples: int = 1
    lr_schedule: str | None = None
    lr_schedule_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> TrainConfig:
        """Raise a one-line ``ValueError`` naming the setting that is wrong; returns ``self``."""
        for name in ("num_epochs", "batch_size", "num_particles", "held_out_num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.num_epochs < 0:
            raise ValueError(f"num_epochs must be ≥ 0, got {self.num_epochs}")
        for name in ("batch_size", "num_particles", "held_out_num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {self.seed}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"config key 'objective': unknown objective {self.objective!r}: choose one of "
                f"{', '.join(OBJECTIVES)}"
            )
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"patience must be a positive number of epochs, got {self.patience}")
        check_lr_schedule(self.lr_schedule)
        check_precision(self.precision)
        compile_mode(self.compile)  # "auto": pvae.infer.captured_steps.choose_backend
        return self


TRAIN_KEYS = tuple(field.name for field in dataclasses.fields(TrainConfig))

# Settings renamed so that one concept has one name (the glossary in pvae's API reference):
# the old names work for one more release, with a DeprecationWarning.
RENAMED = {"held_out_samples": "held_out_num_samples"}


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """The one warning for a setting given by its old name.

    Example::

        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_renamed("held_out_samples", "held_out_num_samples")
        >>> str(caught[0].message)
        'held_out_samples is now called held_out_num_samples; the old name goes in pvae 0.3'
    """
    warnings.warn(
        f"{old} is now called {new}; the old name goes in pvae 0.3",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
