"""What a checkpoint must hold to resume training bit for bit, part by part.

:class:`TrainingState` is the dict of its parts' dicts, PyTorch's habit: the parameters,
the optimizer, the learning-rate schedule, early stopping, the :class:`Position` (where
training stands) and the random number generators each write (``state_dict``) and read
(``load_state_dict``) their own section of the checkpoint, so that saving and restoring
cannot drift apart. Every section is made of tensors, numbers, strings, lists and dicts, so
that checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import typing
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import torch

from pvae.infer.checkpoint_entries import (
    check_entries,
    check_training_state,
    check_training_state_fits,
    restoring,
)
from pvae.infer.distributed import Cluster
from pvae.infer.fit_result import EpochStats
from pvae.infer.schedules import EarlyStopping


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


class Parameters:
    """The unconstrained parameters a run trains, by name: the checkpoint's ``params``."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device):
        self.tensors, self.device = tensors, device

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.tensors.items()}

    def load_state_dict(self, saved: Mapping[str, torch.Tensor]) -> None:
        restore_parameters(self.tensors, {k: v.to(self.device) for k, v in saved.items()})


class Position:
    """Where training stands: completed epochs and steps, their history, and the place
    inside the current epoch (its minibatch order, the next minibatch's start, the loss so
    far); the checkpoint's ``training``.

    ``device`` holds the epoch's summed loss, ``order_device`` its order (where the rows
    are gathered).

    Example::

        >>> position = Position(seed=3, device=torch.device("cpu"))
        >>> position.start_epoch(torch.tensor([1, 0]))
        >>> position.count(torch.tensor(2.0)); position.took(2)
        >>> position.state_dict()["next_start"], position.num_steps
        (2, 1)
    """

    def __init__(self, seed: int, device: torch.device, order_device: torch.device | None = None):
        self.device = device
        self.order_device = order_device or device
        self._set(seed=seed)

    def _set(
        self,
        seed=0,
        epoch=0,
        num_steps=0,
        history=(),
        order=None,
        next_start=0,
        loss_sum=None,
        epoch_steps=0,
    ) -> None:
        """The whole position at once: the fields of the checkpoint's ``training``, those
        missing from it at their start values."""
        self.seed = seed  # of the minibatch order
        self.epoch, self.num_steps = epoch, num_steps
        self.history: list[EpochStats] = list(history)
        self.order: torch.Tensor | None = order  # this epoch's permutation, None between epochs
        self.next_start, self.loss_sum, self.epoch_steps = next_start, loss_sum, epoch_steps

    def start_epoch(self, order: torch.Tensor | None) -> None:
        """Begin the current epoch with minibatch ``order`` (None: a source with its own)."""
        self.order, self.next_start, self.epoch_steps = order, 0, 0
        # Losses stay on the device and are read once per epoch: no sync per step.
        self.loss_sum = torch.zeros((), device=self.device)

    def took(self, batch_size: int) -> None:
        """The next minibatch of the order starts ``batch_size`` rows further."""
        self.next_start += batch_size

    def count(self, loss: torch.Tensor) -> None:
        """A step was taken, with this loss."""
        self.loss_sum += loss
        self.epoch_steps += 1
        self.num_steps += 1

    def finish_epoch(self, stats: EpochStats) -> None:
        self.epoch, self.order = self.epoch + 1, None
        self.history.append(stats)

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in _POSITION_FIELDS}
        return {**state, "history": [dataclasses.asdict(stats) for stats in self.history]}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        history = [EpochStats(**stats) for stats in saved["history"]]
        known = {k: v for k, v in saved.items() if k in _POSITION_FIELDS and k != "history"}
        self._set(**known, history=history)
        if self.order is not None:
            self.order = self.order.to(self.order_device)
            self.loss_sum = self.loss_sum.to(self.device)


_POSITION_FIELDS = tuple(inspect.signature(Position._set).parameters)[1:]


class RandomState:
    """Every rank's random number generators: the checkpoint's ``rng``, one entry per rank.

    Restored with another number of processes than the checkpoint's, ranks are re-seeded
    from ``position`` (restored before) and the run is no longer bit-exact.
    """

    def __init__(self, cluster: Cluster, position: Position):
        self.cluster, self.position = cluster, position

    def state_dict(self) -> list[dict[str, Any]]:
        return self.cluster.gather_objects(rng_state())  # a collective: every rank takes part

    def load_state_dict(self, saved) -> None:
        per_rank = saved if isinstance(saved, list) else [saved]
        cluster = self.cluster
        if len(per_rank) == cluster.world_size:
            set_rng_state(per_rank[cluster.rank])
            return
        warnings.warn(
            f"the checkpoint was written by {len(per_rank)} processes and this run has "
            f"{cluster.world_size}: random draws are re-seeded, so the run is not bit-exact",
            stacklevel=5,
        )
        pyro.set_rng_seed(self.position.seed + 7919 * self.position.num_steps + cluster.rank)


class TrainingState:
    """Everything training changes, as parts that each own a section of the checkpoint.

    ``lr_scheduler`` may be None (no schedule: its section is None). ``num_data`` is what
    a saved mid-epoch order must be a permutation of (the lead stream's size). ``streams``,
    when given, keeps the place of fit's data streams that do not lead (the checkpoint's
    ``streams``, absent for plain data). ``auto_compile``, when given, keeps what
    ``compile="auto"`` decided (:class:`pvae.infer.captured_steps.AutoChoice`).
    """

    def __init__(
        self,
        params: Parameters,
        optimizer,
        lr_scheduler,
        early_stopping,
        position: Position,
        rng: RandomState,
        num_data: int,
        streams=None,
        auto_compile=None,
    ):
        self.params, self.optimizer, self.lr_scheduler = params, optimizer, lr_scheduler
        self.early_stopping, self.position, self.rng = early_stopping, position, rng
        self.num_data, self.streams, self.auto_compile = num_data, streams, auto_compile

    def _parts(self) -> dict[str, Any]:
        """The checkpoint's sections and their owners, in the order they are restored (the
        position before the generators, which may be re-seeded from it)."""
        return {
            "params": self.params,
            "optimizer": self.optimizer,
            "training": self.position,
            "rng": self.rng,
            "lr_scheduler": self.lr_scheduler,
            "early_stopping": self.early_stopping,
            "auto_compile": self.auto_compile,
        }

    def state_dict(self) -> dict[str, Any]:
        """The sections; with several processes, every rank must call it (the generators)."""
        parts = self._parts().items()
        state = {key: None if part is None else part.state_dict() for key, part in parts}
        streams = None if self.streams is None else self.streams.state_dict()
        return {**state, "epoch": self.position.epoch, **({"streams": streams} if streams else {})}

    def load_state_dict(self, saved: Mapping[str, Any], source: str) -> None:
        """Take back what :meth:`state_dict` wrote; any damage is one ``ValueError`` that
        begins with ``source`` (the checkpoint's path)."""
        _check_saved(saved, source)
        try:
            self.params.load_state_dict(saved["params"])
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        check_training_state_fits(saved, source, self.optimizer, self.lr_scheduler, self.num_data)
        held_out_samples = self.early_stopping.held_out_samples
        for key, part in self._parts().items():
            section = saved.get(key, {})  # early_stopping: absent from old checkpoints
            if key != "params" and part is not None and section is not None:
                with restoring(source, key):
                    part.load_state_dict(section)
        if self.streams is not None:
            self.streams.load_state_dict(saved.get("streams"), source)
        if self.early_stopping.held_out_samples != held_out_samples:
            raise ValueError(
                f"the checkpoint chose its best epoch by the held-out "
                f"{self.early_stopping.bound_name}, and this run asks for held_out_num_samples="
                f"{held_out_samples}: resume with held_out_num_samples="
                f"{self.early_stopping.held_out_samples} (--held-out-num-samples), or start a "
                "new run"
            )


def _check_saved(saved: Mapping[str, Any], source: str) -> None:
    """One clear error now for what restoring would choke on (a KeyError, a failed step
    later), naming ``source``."""
    check_training_state(saved, source)
    history_types = typing.get_type_hints(EpochStats)  # dataclasses take any value
    for stats in saved["training"]["history"]:
        check_entries(stats, f"{source}'s training history", {}, history_types)
    stopping_types = {**typing.get_type_hints(EarlyStopping), "best_elbo": float}
    stopping = saved.get("early_stopping", {})
    check_entries(stopping, f"{source}'s early_stopping", {}, stopping_types)
