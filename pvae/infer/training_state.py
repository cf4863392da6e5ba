"""What a checkpoint must hold to resume training bit for bit, and how signals stop training.

Everything here is made of tensors, numbers, strings, lists and dicts, so that checkpoints
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import signal
import threading
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The state of every random number generator a training run draws from."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def restore_parameters(params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Copy saved values into the live (unconstrained) parameters, in place.

    In place, so that modules registered with ``pyro.module`` keep sharing their tensors
    with Pyro's parameter store and the optimizer keeps pointing at them.
    """
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(
            "the checkpoint does not fit this model: "
            + "; ".join(
                part
                for part in (
                    f"parameters missing from it: {', '.join(missing[:5])}" if missing else "",
                    f"parameters the model lacks: {', '.join(unexpected[:5])}"
                    if unexpected
                    else "",
                )
                if part
            )
            + ". Resume with the same model, guide and configuration it was trained with"
        )
    for name, param in params.items():
        if saved[name].shape != param.shape:
            raise ValueError(
                f"the checkpoint does not fit this model: parameter {name!r} has shape "
                f"{tuple(saved[name].shape)} there and {tuple(param.shape)} here. Resume with "
                "the same configuration it was trained with"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])


class StopRequests:
    """While active, SIGINT and SIGTERM only ask training to stop after the current step.

    A second SIGINT interrupts at once (for a run that does not stop). Handlers are
    installed only in the main thread, where Python delivers signals, and are restored on
    exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
