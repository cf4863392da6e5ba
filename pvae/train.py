"""``fit``: stochastic variational inference for any model/guide pair with a ``"data"`` plate."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pvae.data import check_data
from pvae.evaluate import _as_tuple, estimate_elbo
from pvae.objectives import ScaleDataPlate, inspect_model, make_objective


@dataclasses.dataclass
class EpochStats:
    """One epoch, in nats per datapoint: the training objective's bound averaged over the
    epoch's minibatches (the ELBO, or IWAE_K for ``"iwae"``/``"dreg"``) and the held-out ELBO."""

    epoch: int
    train_bound: float
    held_out_elbo: float | None
    seconds: float


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the optimizer (for checkpoints)."""

    history: list[EpochStats]
    optimizer: torch.optim.Optimizer
    num_steps: int

    def history_dicts(self) -> list[dict]:
        return [dataclasses.asdict(stats) for stats in self.history]


def progress_enabled() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not into a file or pipe."""
    return sys.stdout.isatty() and not os.environ.get("CI")


def _check_arguments(tensors, num_epochs, batch_size, learning_rate) -> None:
    for name, value in [("num_epochs", num_epochs), ("batch_size", batch_size)]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_epochs < 0:
        raise ValueError(f"num_epochs must be ≥ 0, got {num_epochs}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    check_data(tensors[0])
    for i, tensor in enumerate(tensors[1:], start=1):
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"data[{i}] has {tensor.shape[0]} rows but data[0] has {tensors[0].shape[0]}: "
                "every tensor in data must have one row per datapoint"
            )
        if tensor.device != tensors[0].device:
            raise ValueError(f"data[{i}] is on {tensor.device} but data[0] on {tensors[0].device}")


def _check_support(model, transform, x: torch.Tensor, first_x: torch.Tensor) -> None:
    """Check the data against the likelihood's support, if the model's owner says how.

    With a transform (e.g. dynamic binarization), the model sees transformed batches: the
    transform checks its own input, and the first transformed batch stands for the rest.
    """
    owner_check = getattr(getattr(model, "__self__", None), "check_data", None)
    if owner_check is not None:
        owner_check(x if transform is None else first_x)


def _check_devices(params: list[torch.Tensor], device: torch.device) -> None:
    elsewhere = {str(p.device) for p in params if p.device != device}
    if elsewhere:
        raise ValueError(
            f"the data are on {device} but some parameters are on {', '.join(sorted(elsewhere))}: "
            "move the networks and the data to one device, e.g. vae.to(device) and x.to(device)"
        )


def _transformed(batch: tuple[torch.Tensor, ...], transform) -> tuple[torch.Tensor, ...]:
    return batch if transform is None else (transform(batch[0]),) + batch[1:]


class _CsvLog:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as stream:
                csv.writer(stream).writerow([f.name for f in dataclasses.fields(EpochStats)])

    def append(self, stats: EpochStats) -> None:
        if self.path is not None:
            with self.path.open("a", newline="") as stream:
                csv.writer(stream).writerow(dataclasses.astuple(stats))


def fit(
    model: Callable,
    guide: Callable,
    data,
    *,
    num_epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    objective: str = "elbo",
    num_particles: int = 1,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    held_out=None,
    seed: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    csv_path: str | Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train ``model``/``guide`` by SVI with Adam on minibatches of ``data``.

    Any Pyro model/guide pair works, a hand-written one too, provided that the per-datapoint
    sites sit in ``pyro.plate("data", batch_size)``: the minibatch ELBO is then scaled to the
    full dataset (global sites, outside the plate, count once). ``data`` is a tensor or a
    tuple of tensors (e.g. images and labels) with one row per datapoint, passed to
    ``model(*batch)``; minibatches are slices of it on its own device, where the networks
    must be too. ``transform`` is applied to the first tensor of each minibatch (e.g.
    :class:`pvae.data.DynamicBinarization`). The first step runs with Pyro's validation on;
    if ``model`` is a method of an object with ``check_data`` (as :class:`pvae.VAE`), the
    data are checked against the likelihood's support before it. Pyro's global parameter
    store is used as usual: call ``pyro.clear_param_store()`` before training a fresh model
    whose parameter names an earlier one already used.

    Args:
        objective: ``"elbo"`` (Trace_ELBO), ``"meanfield"`` (TraceMeanField_ELBO,
            analytic KL where available), ``"stl"`` (ELBO, sticking-the-landing
            gradients), ``"iwae"`` (importance-weighted bound with K = ``num_particles``) or
            ``"dreg"`` (the same bound, doubly reparameterized gradients). The last three
            need every site in the data plate; the reported train figure is then the
            objective's own bound.
        held_out: data evaluated after each epoch (mean per-datapoint ELBO, nats).
        csv_path: file that gets one row per epoch.
        on_epoch_end: called with each epoch's :class:`EpochStats`.

    Example::

        >>> vae = pvae.build_vae(784, z_dim=20)
        >>> result = pvae.fit(vae.model, vae.guide, train_x, num_epochs=5,
        ...                   transform=pvae.data.DynamicBinarization())  # doctest: +SKIP
        >>> result.history[-1].train_bound  # doctest: +SKIP
        -105.3
    """
    tensors = _as_tuple(data)
    _check_arguments(tensors, num_epochs, batch_size, learning_rate)
    held_out_tensors = _as_tuple(held_out) if held_out is not None else None
    if held_out_tensors is not None:
        check_data(held_out_tensors[0], name="held-out data")
    if transform is not None and hasattr(transform, "check_data"):
        transform.check_data(tensors[0])
    if seed is not None:
        pyro.set_rng_seed(seed)

    num_data = tensors[0].shape[0]
    device = tensors[0].device
    first = _transformed(tuple(t[:batch_size] for t in tensors), transform)
    _check_support(model, transform, tensors[0], first[0])
    with pyro.validation_enabled(True):
        nesting = inspect_model(model, guide, *first)
    elbo = make_objective(objective, num_particles, nesting)
    scaled_model, scaled_guide = ScaleDataPlate(num_data)(model), ScaleDataPlate(num_data)(guide)
    steps_per_epoch = math.ceil(num_data / batch_size)

    def minibatch(indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _transformed(tuple(t[indices] for t in tensors), transform)

    def step(batch) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(scaled_model, scaled_guide, *batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if optimizer is None:
        with pyro.validation_enabled(True), poutine.trace(param_only=True) as capture:
            elbo.differentiable_loss(scaled_model, scaled_guide, *first)
        params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        if not params:
            raise ValueError(
                "the model and guide have no parameters to train: register networks with "
                "pyro.module(...) or parameters with pyro.param(...)"
            )
        _check_devices(params, device)
        optimizer = torch.optim.Adam(params, lr=learning_rate, foreach=True)

    log = _CsvLog(csv_path)
    history: list[EpochStats] = []
    show = progress_enabled() if progress is None else progress
    bar = tqdm(total=num_epochs * steps_per_epoch, disable=not show, unit="step", leave=False)
    num_steps = 0
    with bar, pyro.validation_enabled(False):
        for epoch in range(1, num_epochs + 1):
            started = time.perf_counter()
            # Losses stay on the device and are read once per epoch: no host sync per step.
            epoch_loss = torch.zeros((), device=device)
            order = torch.randperm(num_data, device=device)
            for start in range(0, num_data, batch_size):
                epoch_loss += step(minibatch(order[start : start + batch_size]))
                bar.update()
            num_steps += steps_per_epoch
            train_bound = -epoch_loss.item() / (steps_per_epoch * num_data)
            held_out_elbo = None
            if held_out_tensors is not None:
                held_out_elbo = estimate_elbo(model, guide, held_out_tensors)
            stats = EpochStats(epoch, train_bound, held_out_elbo, time.perf_counter() - started)
            history.append(stats)
            log.append(stats)
            bar.set_postfix(train_bound=f"{train_bound:.2f}")
            if on_epoch_end is not None:
                on_epoch_end(stats)
    return FitResult(history=history, optimizer=optimizer, num_steps=num_steps)
