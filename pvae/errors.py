"""pvae's exceptions: one place, imported by every layer."""

from __future__ import annotations

import signal
from pathlib import Path


class ModelError(ValueError):
    """A ``ValueError`` raised while a model or guide runs, that stays one line.

    Pyro's tracer re-raises a ``ValueError`` from inside a model with the trace's shapes
    appended to its message; for errors about the user's data or settings those shapes are
    noise, so this class keeps the first line only.
    """

    def __init__(self, message: str = ""):
        super().__init__(str(message).split("\n")[0])


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped :func:`fit` after a step; the checkpoint (if any) is saved."""

    def __init__(self, signum: int, epoch: int, step: int, checkpoint: Path | None):
        self.signum, self.epoch, self.step, self.checkpoint = signum, epoch, step, checkpoint
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint_path given"
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped at epoch {epoch}, step {step}; {where}")


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite."""
