"""``fit``: stochastic variational inference for any model/guide pair with a ``"data"`` plate.

This module is the loop: epochs of steps on a run that :func:`pvae.infer.run_setup.build_run`
builds complete (data source, objective, training state, checkpoints, held-out bound), each
epoch finished by its figures, the log and a checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pvae.errors import TrainingDiverged, TrainingInterrupted
from pvae.infer.bound_caveat import objective_caveat
from pvae.infer.capture import compile_mode
from pvae.infer.fit_result import CsvLog, EpochStats, FitResult
from pvae.infer.folder_lock import folder_lock
from pvae.infer.precision import autocast, matmul_precision
from pvae.infer.progress import progress_enabled
from pvae.infer.run_checkpoints import best_checkpoint_path
from pvae.infer.run_setup import FitSettings, Run, adam, build_run
from pvae.infer.schedules import step_lr_scheduler
from pvae.infer.settings import warn_renamed
from pvae.infer.signal_stop import SignalStop
from pvae.infer.training_sources import Minibatch

__all__ = ["EpochStats", "FitResult", "adam", "best_checkpoint_path", "fit"]

_DIVERGENCE_HINTS = (
    "likely causes: a learning rate too high (try a 3-10x smaller one), a decoder scale or "
    "variance collapsing to 0, extreme input values; gradient clipping (clip_norm, "
    "--clip-norm) often helps"
)


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
    clip_norm: float | None = None,
    csv_path: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    resume: str | Path | dict | None = None,
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    precision: str = "float32",
    compile: bool | str = "auto",
    patience: int | None = None,
    held_out_num_samples: int = 1,
    held_out_samples: int | None = None,
    lr_schedule: str | Callable | None = None,
    lr_schedule_options: dict[str, Any] | None = None,
    more_epochs: int | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    epoch_schedules: Sequence[Any] = (),
    num_data: int | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train ``model``/``guide`` by SVI with Adam on minibatches of ``data``.

    Any Pyro model/guide pair works, a hand-written one too, provided that the per-datapoint
    sites sit in ``pyro.plate("data", batch_size)``: the minibatch ELBO is then scaled to the
    full dataset (global sites, outside the plate, count once). ``data`` is a tensor, a
    numpy array or a tuple of those (e.g. images and labels) with one row per datapoint,
    passed to ``model(*batch)``; minibatches are slices of it on its own device, where the
    networks must be too. ``transform`` is applied to the first tensor of each minibatch (e.g.
    :class:`pvae.data.DynamicBinarization`, or ``lambda b: b.float() / 255`` for 8-bit images
    kept 8-bit in memory; every transformed row is checked once before training). The first
    tensor reaches the model in its floating dtype (float64 numpy arrays, halves, booleans
    and 0/1 integers are converted; a transform's output per minibatch; labels stay
    integers; :func:`pvae.infer.sources.as_model_dtype`), and every row of tensor data and
    ``held_out`` is checked against the support of the model's observed sites. ``data``
    may also be a map-style ``torch.utils.data.Dataset`` (e.g. ``ImageFolder`` with a
    transform; its items are read as minibatches need them, in fit's own order, so resuming
    stays exact) or a ``DataLoader`` (its own batches, order and workers; iterable datasets
    larger than memory too; ``num_data`` is the dataset's size, from ``len()`` unless given;
    an epoch interrupted midway restarts when resumed); these are checked on their first
    minibatch, and read on the host (``device`` says where the steps run). ``data`` may
    also be a dict of named streams, e.g. ``{"labelled": (x_l, y_l), "unlabelled": x_u}``,
    each any of these forms or a :class:`pvae.Stream` with its own ``batch_size`` and
    ``transform``: each step takes one minibatch of every stream and calls model and guide
    once per stream, each stream's data plate scaled to its size and global sites counted
    once a step; an epoch is one pass over the stream with the most minibatches (the first
    of equals), the others cycle in seeded orders (:mod:`pvae.infer.training_streams`).
    Terms that are not part of the bound (M2's classification term) go in the model as
    ``pyro.factor``; the result's ``train_bound_caveat`` then says that the training figure
    is no bound. The first step
    runs with Pyro's validation on; if ``model`` is a method of an object with
    ``check_data`` (as :class:`pvae.VAE`), the data are checked against the likelihood's
    support before it. Entries an earlier model
    left in Pyro's global parameter store under the ``pyro.module`` names of this one are
    pointed to this model's own networks, with a warning (:mod:`pvae.infer.param_store`).

    Args:
        objective: ``"elbo"`` (Trace_ELBO), ``"meanfield"`` (TraceMeanField_ELBO,
            analytic KL where available), ``"stl"`` (ELBO, sticking-the-landing
            gradients), ``"iwae"`` (importance-weighted bound with K = ``num_particles``) or
            ``"dreg"`` (the same bound, doubly reparameterized gradients). The last three
            need every site in the data plate; the reported train figure is then the
            objective's own bound.
        held_out: data evaluated after each epoch (mean per-datapoint ELBO, nats; and
            IWAE_K with ``held_out_num_samples``), or a dict of named streams (the mean over
            all their datapoints).
        clip_norm: clip the gradients' total norm to this value each step.
        csv_path: file that gets one row per epoch.
        checkpoint_path: written atomically after every epoch, and when SIGINT/SIGTERM
            stops training after the current step (:class:`TrainingInterrupted`). It holds
            the parameters, optimizer, random number generators and progress, plus
            ``checkpoint_extra()`` (e.g. ``pvae.vae_state(vae)``).
        resume: a checkpoint (path or loaded dict) of the same model to continue from, up
            to ``num_epochs`` epochs in all: on the CPU the result is bit for bit that of an
            uninterrupted run. With several processes every rank reads it: keep it on a
            file system they all see.
        distributed: train data-parallel with ``torch.distributed`` (None: when launched by
            torchrun with several processes). Each process takes a contiguous share of
            every global minibatch of ``batch_size``; gradients are summed across processes
            each step, so all keep the same parameters. Only rank 0 writes the CSV and the
            checkpoint; ``on_epoch_end`` runs on every rank (print from rank 0 only).
        device: where the steps run (default: the data's device). Data in host memory with
            ``device="cuda"`` stay there, for data larger than the GPU's memory: every
            minibatch is gathered into pinned memory and copied without blocking, the next
            one while the current step computes (:class:`pvae.batches.HostBatches`);
            ``held_out`` is copied in chunks.
        precision: ``"float32"`` (exact, the default), ``"tf32"`` (TensorFloat-32 matrix
            products on GPUs that have it) or ``"bfloat16"`` (model and guide under
            ``torch.autocast``); see :mod:`pvae.precision`.
        patience: stop when the held-out bound has not improved for this many epochs
            (needs ``held_out``). With ``held_out`` and ``checkpoint_path``, the best epoch's
            checkpoint is kept as ``best.pt`` next to the last one.
        held_out_num_samples: K of the held-out bound that ``patience``, ``best.pt`` and the
            plateau schedule watch: 1 is the ELBO (one draw per datapoint); K > 1 is IWAE_K
            (:func:`pvae.log_likelihood`, every site in the data plate), the bound that
            ``"iwae"``/``"dreg"`` maximize and that Burda et al. (2016) select on. Its draws
            come from the same seed every epoch (common random numbers: epochs differ by
            their weights, not by their noise) and leave the training's random numbers alone.
            ``held_out_samples`` is its old name (deprecated).
        lr_schedule: ``"plateau"``, ``"cosine"``, ``"step"`` or a function of the optimizer
            returning a ``torch.optim.lr_scheduler`` scheduler, stepped after each epoch and
            checkpointed; ``lr_schedule_options`` are its keyword arguments
            (:func:`pvae.infer.schedules.make_lr_scheduler`).
        more_epochs: train this many epochs more than the resumed checkpoint holds (instead
            of ``num_epochs``, which counts epochs in all).
        on_epoch_end: called with each epoch's :class:`EpochStats`.
        num_data: the number of datapoints of a ``DataLoader`` whose dataset has no
            ``len()`` (the data plate is scaled to it).
        epoch_schedules: objects with ``set_epoch(completed_epochs)``, called before each
            epoch (a resumed one too, from the checkpoint's epoch): hyperparameters that
            change with the epoch, e.g. a beta-VAE's ``vae.kl_warmup``.

    Raises:
        ValueError: bad data or arguments, before any step.
        TrainingDiverged: the loss became NaN/Inf (checked once per epoch, so no step waits
            for the host); the checkpoint of the last good epoch, if one was saved, is left
            intact, and the message says which.

    Example::

        >>> import pvae
        >>> vae = pvae.build_vae(784, z_dim=20)
        >>> result = pvae.fit(vae.model, vae.guide, train_x, num_epochs=5,
        ...                   transform=pvae.data.DynamicBinarization())  # doctest: +SKIP
        >>> result.history[-1].train_bound  # doctest: +SKIP
        -105.3
    """
    settings = FitSettings(
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        objective=objective,
        num_particles=num_particles,
        transform=transform,
        seed=seed,
        clip_norm=clip_norm,
        csv_path=csv_path,
        checkpoint_path=checkpoint_path,
        checkpoint_extra=checkpoint_extra,
        precision=precision,
        compile=compile_mode(compile),
        patience=patience,
        held_out_num_samples=_renamed_held_out_k(held_out_samples, held_out_num_samples),
        lr_schedule=lr_schedule,
        lr_schedule_options=dict(lr_schedule_options or {}),
        more_epochs=more_epochs,
        on_epoch_end=on_epoch_end,
        epoch_schedules=tuple(epoch_schedules),
        num_data=num_data,
        progress=progress,
    )
    # Two runs never write into one folder: a second is refused at once, naming the first.
    lock = folder_lock(Path(checkpoint_path).parent, "checkpoint_path") if checkpoint_path else None
    with lock or contextlib.nullcontext():
        run = build_run(
            model, guide, data, settings, held_out=held_out, optimizer=optimizer, resume=resume,
            device=device, distributed=distributed,
        )  # fmt: skip
        return _Loop(run).train()


def _renamed_held_out_k(old: int | None, new: int) -> int:
    """fit's ``held_out_samples``, the old name of ``held_out_num_samples``."""
    if old is None:
        return new
    warn_renamed("held_out_samples", "held_out_num_samples", stacklevel=4)
    if new != 1 and new != old:
        raise ValueError(
            f"held_out_num_samples={new} and held_out_samples={old} (its old name) disagree: "
            "give held_out_num_samples only"
        )
    return old


class _Loop:
    """Epochs of steps on a complete :class:`Run`, until ``num_epochs`` in all (a resumed
    run counts those it resumed from) or early stopping."""

    def __init__(self, run: Run):
        self.run, self.position = run, run.state.position
        self.started_at = self.position.epoch, self.position.num_steps  # what a divergence leaves
        self.params = list(run.state.params.tensors.values())
        # A step's stop flag, summed over the ranks with the gradients: 1 where a signal came.
        self.stop_flags = torch.zeros(1, device=run.device), torch.ones(1, device=run.device)
        path = run.settings.csv_path if run.cluster.is_main else None
        self.log = CsvLog(path, self.position.history)

    def train(self) -> FitResult:
        run, position, early_stopping = self.run, self.position, self.run.state.early_stopping
        _say_if_nothing_to_do(run)
        bar, precision = _progress_bar(run), matmul_precision(run.settings.precision)
        with bar, pyro.validation_enabled(False), precision, SignalStop() as stop_requests:
            while position.epoch < run.num_epochs and not early_stopping.should_stop:
                for schedule in run.settings.epoch_schedules:
                    schedule.set_epoch(position.epoch)
                started = time.perf_counter()
                for minibatch in run.source.epoch(position):
                    loss, flags = self._step(minibatch, stop_requests.received is not None)
                    self._count_step(loss, flags, bar, stop_requests)
                self._finish_epoch(bar, time.perf_counter() - started)
        return FitResult(
            history=position.history,
            optimizer=run.state.optimizer,
            num_steps=position.num_steps,
            best_epoch=early_stopping.best_epoch,
            best_held_out_bound=early_stopping.best_bound if early_stopping.best_epoch else None,
            held_out_bound_name=early_stopping.bound_name,
            stopped_early=early_stopping.should_stop and position.epoch < run.num_epochs,
            train_bound_caveat=objective_caveat(
                run.model, run.guide, [part.first for part in run.source.parts], run.device
            ),
            step=run.captured.report() if run.captured is not None else "eager",
        )

    def _step(self, minibatches: tuple[Minibatch, ...], stop_requested: bool):
        """One optimizer step on this rank's share of the global minibatch of every stream;
        returns its loss and the stop flags summed over the ranks."""
        run, optimizer = self.run, self.run.state.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss = self._captured_step(minibatches)
        if loss is None:
            started = time.perf_counter()
            loss = self._eager_step(minibatches)
            if run.captured is not None and run.captured.auto is not None:
                if run.device.type == "cuda":  # the step's time, not its launch's
                    torch.cuda.synchronize(run.device)
                run.captured.observe_eager_step(time.perf_counter() - started)
        flag = self.stop_flags[stop_requested]
        flags = run.cluster.sum_gradients(self.params, flag)
        if run.settings.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, run.settings.clip_norm)
            loss = torch.where(torch.isfinite(norm), loss.detach(), norm)  # a NaN norm shows
        optimizer.step()
        return loss.detach(), flags

    def _eager_step(self, minibatches: tuple[Minibatch, ...]) -> torch.Tensor:
        run = self.run
        loss = torch.zeros((), device=run.device)
        with autocast(run.settings.precision, run.device):
            losses = [
                objective.loss(minibatch.rows, minibatch.plate_size)
                for objective, minibatch in zip(run.objectives, minibatches, strict=True)
                if minibatch.rows is not None
            ]
        if losses:
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            loss.backward()
        return loss

    def _captured_step(self, minibatches: tuple[Minibatch, ...]) -> torch.Tensor | None:
        """The replayed step (gradients set), or None where the eager one must run."""
        captured = self.run.captured
        if captured is None or not captured.active:
            return None
        given = [
            (index, minibatch.rows, minibatch.plate_size)
            for index, minibatch in enumerate(minibatches)
            if minibatch.rows is not None
        ]
        with autocast(self.run.settings.precision, self.run.device):
            return captured.step(given, epoch_start=self.position.epoch_steps == 0)

    def _count_step(self, loss, flags, bar, stop_requests: SignalStop) -> None:
        self.position.count(loss)
        bar.update()
        if stop_requests.agreed(flags, self.run.cluster, self.position.num_steps):
            self.run.checkpoints.save(self.run.state)
            path = self.run.settings.checkpoint_path
            raise TrainingInterrupted(
                stop_requests.signal,
                self.position.epoch + 1,
                self.position.epoch_steps,
                Path(path) if path is not None else None,
            )

    def _finish_epoch(self, bar, seconds: float) -> None:
        """The epoch's figures (a divergence stops here), the log, the checkpoints."""
        run, position = self.run, self.position
        train_bound = self._train_bound()
        held_out_elbo, held_out_iwae = (
            (None, None) if run.held_out is None else run.held_out.evaluate()
        )
        stats = EpochStats(position.epoch + 1, train_bound, held_out_elbo, seconds, held_out_iwae)
        position.finish_epoch(stats)
        self.log.append(stats)
        watched = held_out_iwae if held_out_iwae is not None else held_out_elbo
        step_lr_scheduler(run.state.lr_scheduler, watched, train_bound)
        improved = watched is not None and run.state.early_stopping.update(position.epoch, watched)
        run.checkpoints.save(run.state)
        if improved:
            run.checkpoints.save(run.state, best=True)
        bar.set_postfix(train_bound=f"{train_bound:.2f}")
        if run.settings.on_epoch_end is not None:  # on every rank: it may update the model
            run.settings.on_epoch_end(stats)

    def _train_bound(self) -> float:
        """The epoch's mean bound per datapoint, over all ranks; NaN/Inf stops training."""
        position = self.position
        loss_total = self.run.cluster.sum_(position.loss_sum.clone())
        train_bound = -loss_total.item() / (position.epoch_steps * self.run.source.num_data)
        if not math.isfinite(train_bound):
            kept = self.run.checkpoints.what_survives(position.epoch, self.started_at)
            raise TrainingDiverged(
                f"training diverged: the loss became NaN/Inf during epoch {position.epoch + 1} "
                f"(its {position.epoch_steps} steps are lost; {kept}); " + _DIVERGENCE_HINTS
            )
        return train_bound


def _progress_bar(run: Run) -> tqdm:
    """Steps left, shown at a terminal or in a notebook (fit's ``progress``) by rank 0."""
    settings, position = run.settings, run.state.position
    show = settings.progress if settings.progress is not None else progress_enabled()
    steps_per_epoch = run.source.steps_per_epoch()
    remaining = max(run.num_epochs - position.epoch, 0) * (steps_per_epoch or 0)
    return tqdm(
        total=max(remaining - position.epoch_steps, 0) if steps_per_epoch else None,
        disable=not (show and run.cluster.is_main),
        unit="step",
        leave=False,
    )


def _say_if_nothing_to_do(run: Run) -> None:
    position, early_stopping = run.state.position, run.state.early_stopping
    if position.epoch >= run.num_epochs and position.history:
        warnings.warn(
            f"nothing to train: the checkpoint holds {position.epoch} epochs and "
            f"num_epochs = {run.num_epochs} counts epochs in all; pass a larger num_epochs "
            "(-n) or more_epochs=",
            stacklevel=4,
        )
    elif early_stopping.should_stop:
        warnings.warn(
            f"nothing to train: the resumed run stopped early at epoch {position.epoch} "
            f"(no better held-out {early_stopping.bound_name} for "
            f"{early_stopping.stale_epochs} epochs; patience "
            f"{early_stopping.patience}); raise patience to go on",
            stacklevel=4,
        )
