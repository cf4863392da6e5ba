"""``fit``: stochastic variational inference for any model/guide pair with a ``"data"`` plate."""

from __future__ import annotations

import csv
import dataclasses
import math
import signal
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pvae.errors import TrainingDiverged, TrainingInterrupted
from pvae.infer import param_store
from pvae.infer.batches import DeviceBatches, HostBatches
from pvae.infer.checkpoint import (
    check_entries,
    check_training_state,
    check_training_state_fits,
    load_checkpoint,
    restoring,
    save_checkpoint,
)
from pvae.infer.checks import (
    check_data,
    check_model_data,
    check_owner,
    check_rows,
    model_dtype,
    observed_sites,
)
from pvae.infer.device import resolve_device
from pvae.infer.distributed import Cluster, connect
from pvae.infer.evaluate import elbo_of_checked_data
from pvae.infer.fast_elbo import ReparameterizedELBO
from pvae.infer.iwae import log_likelihood
from pvae.infer.objectives import ScaleDataPlate, choose_objective, inspect_model
from pvae.infer.plates import trace_pair
from pvae.infer.precision import autocast, matmul_precision
from pvae.infer.progress import progress_enabled
from pvae.infer.schedules import EarlyStopping, make_lr_scheduler, step_lr_scheduler
from pvae.infer.settings import TrainConfig
from pvae.infer.sources import (
    DatasetBatches,
    LoaderBatches,
    as_model_dtype,
    as_tensors,
    rows_on,
    training_source,
)
from pvae.infer.training_state import StopRequests, restore_parameters, rng_state, set_rng_state


@dataclasses.dataclass
class EpochStats:
    """One epoch, in nats per datapoint: the training objective's bound averaged over the
    epoch's minibatches (the ELBO, or IWAE_K for ``"iwae"``/``"dreg"``), the held-out ELBO and,
    with fit's ``held_out_samples=K`` (K > 1), the held-out IWAE_K (the ELBO is then the mean
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
    held_out_bound_name: str = "ELBO"  # or IWAE_K, with held_out_samples=K
    stopped_early: bool = False  # by patience, before num_epochs

    def history_dicts(self) -> list[dict]:
        return [dataclasses.asdict(stats) for stats in self.history]


def _check_tensors(tensors, transform) -> None:
    # Of any dtype: data the model observes as given are converted to its dtype (or refused),
    # 8-bit images and the like are fine with a transform (their transformed rows are checked).
    check_data(tensors[0], floating=False)
    if transform is not None and hasattr(transform, "check_data"):
        transform.check_data(tensors[0])
    for i, tensor in enumerate(tensors[1:], start=1):
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"data[{i}] has {tensor.shape[0]} rows but data[0] has {tensors[0].shape[0]}: "
                "every tensor in data must have one row per datapoint"
            )
        if tensor.device != tensors[0].device:
            raise ValueError(f"data[{i}] is on {tensor.device} but data[0] on {tensors[0].device}")


def _parameters(elbo, model, guide, batch) -> dict[str, torch.Tensor]:
    """The unconstrained parameters the objective trains, found by running it once.

    Entries that an earlier model left in Pyro's store under the names this model's
    ``pyro.module`` uses are pointed to this model's own tensors first (see
    :mod:`pvae.infer.param_store`): otherwise the optimizer would train tensors nobody
    computes with.
    """
    for attempt in range(2):
        with pyro.validation_enabled(True), poutine.trace(param_only=True) as capture:
            elbo.differentiable_loss(model, guide, *batch)
        stale = param_store.stale_module_parameters(capture.trace)
        if not stale:
            break
        if attempt == 1:
            raise ValueError(
                f"parameters {', '.join(stale[:3])} stay out of step with their modules: "
                "call pyro.clear_param_store() before training this model"
            )
        param_store.drop(stale)
        warnings.warn(
            f"Pyro's parameter store held {len(stale)} parameters of an earlier model under "
            f"names this model registers with pyro.module ({stale[0]}, ...): fit trains this "
            "model's own networks and the store now points to them. To start from stored "
            "values instead, load them into the modules first (module.load_state_dict)",
            stacklevel=3,
        )
    return {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}


def _check_devices(params: list[torch.Tensor], device: torch.device) -> None:
    elsewhere = {str(p.device) for p in params if p.device != device}
    if elsewhere:
        raise ValueError(
            f"training runs on {device} (the data's device unless device= is given) but some "
            f"parameters are on {', '.join(sorted(elsewhere))}: move the networks there, e.g. "
            "vae.to(device)"
        )


def _transformed(batch: tuple[torch.Tensor, ...], transform) -> tuple[torch.Tensor, ...]:
    return batch if transform is None else (transform(batch[0]),) + batch[1:]


class _CsvLog:
    """One row per epoch; a resumed run first rewrites the rows its checkpoint holds."""

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


@dataclasses.dataclass
class _Progress:
    """Where training stands: completed epochs, and the position inside the current one."""

    seed: int = 0  # of the minibatch order
    epoch: int = 0
    num_steps: int = 0
    history: list[EpochStats] = dataclasses.field(default_factory=list)
    order: torch.Tensor | None = None  # this epoch's permutation, None between epochs
    next_start: int = 0
    loss_sum: torch.Tensor | None = None
    epoch_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        state = dataclasses.asdict(self)
        state["history"] = [dataclasses.asdict(stats) for stats in self.history]
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> _Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{k: v for k, v in state.items() if k in fields})
        progress.history = [EpochStats(**stats) for stats in state["history"]]
        return progress


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
    patience: int | None = None,
    held_out_samples: int = 1,
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
    minibatch, and read on the host (``device`` says where the steps run). The first step
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
            IWAE_K with ``held_out_samples``).
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
        held_out_samples: K of the held-out bound that ``patience``, ``best.pt`` and the
            plateau schedule watch: 1 is the ELBO (one draw per datapoint); K > 1 is IWAE_K
            (:func:`pvae.log_likelihood`, every site in the data plate), the bound that
            ``"iwae"``/``"dreg"`` maximize and that Burda et al. (2016) select on. Its draws
            come from the same seed every epoch (common random numbers: epochs differ by
            their weights, not by their noise) and leave the training's random numbers alone.
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
    run = _Run(
        model,
        guide,
        training_source(data),
        _Settings(
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
            patience=patience,
            held_out_samples=held_out_samples,
            lr_schedule=lr_schedule,
            lr_schedule_options=dict(lr_schedule_options or {}),
            more_epochs=more_epochs,
            on_epoch_end=on_epoch_end,
            epoch_schedules=tuple(epoch_schedules),
            num_data=num_data,
            progress=progress,
        ),
        device,
        distributed,
    )
    held_out = as_tensors(held_out, "held_out") if held_out is not None else None
    run.prepare(held_out, optimizer)
    if isinstance(resume, (str, Path)):
        run.restore(load_checkpoint(resume), str(resume))
    else:
        run.restore(resume)
    return run.train()


@dataclasses.dataclass(kw_only=True)
class _Settings(TrainConfig):
    """fit's arguments that hold for the whole run: the plain ones, and callables and paths."""

    transform: Callable | None
    csv_path: str | Path | None
    checkpoint_path: str | Path | None
    checkpoint_extra: Callable[[], dict[str, Any]] | None
    on_epoch_end: Callable[[EpochStats], None] | None
    epoch_schedules: tuple[Any, ...]
    more_epochs: int | None
    num_data: int | None
    progress: bool | None


class _Run:
    """One call of :func:`fit`, as named steps: check and place the data, choose the
    objective and find the parameters (prepare), restore a checkpoint, then epochs of
    steps, each epoch finished by its figures and a checkpoint."""

    def __init__(self, model, guide, source, settings: _Settings, device, distributed):
        self.model, self.guide, self.settings = model, guide, settings
        settings.check()
        self.tensors = source if isinstance(source, tuple) else None
        if self.tensors is not None:
            self._place_tensors(self.tensors, device)
        else:  # a Dataset or DataLoader, read on the host as minibatches need it
            self.device = _training_device(torch.device("cpu"), device)
            self.batches, self.order_device = source, torch.device("cpu")
            self.num_data = _source_size(source, settings.num_data)
        self.loader = self.batches if isinstance(self.batches, LoaderBatches) else None
        self.cluster = connect(self.device, distributed)
        if self.cluster.active and self.tensors is None:
            raise ValueError(
                "distributed training reads in-memory data only: pass tensors (each rank "
                "takes its share of every minibatch)"
            )
        if self.cluster.active and settings.batch_size < self.cluster.world_size:
            raise ValueError(
                f"batch_size {settings.batch_size} is smaller than the "
                f"{self.cluster.world_size} processes: the global batch is split among them"
            )

    def _place_tensors(self, tensors, device) -> None:
        self.device = _training_device(tensors[0].device, device)
        _check_tensors(tensors, self.settings.transform)
        # Data the model observes as given are held in its dtype (float64 from numpy, bools,
        # 0/1 integers); with a transform they stay as they are (8-bit) until each minibatch.
        self.dtype = model_dtype(self.model, self.guide, rows_on(tensors, 0, 2, self.device))
        if self.settings.transform is None:
            tensors = self.tensors = as_model_dtype(tensors, self.dtype)
        self.num_data = tensors[0].shape[0]
        if self.device == tensors[0].device:
            self.batches = DeviceBatches(tensors)
        else:
            self.batches = HostBatches(tensors, self.device, self.settings.batch_size)
        # The minibatch order lives where the rows are gathered.
        self.order_device = self.batches.tensors[0].device

    def prepare(self, held_out, optimizer) -> None:
        """Seeds, data checks, the objective, the parameters and the optimizer."""
        for schedule in self.settings.epoch_schedules:  # the first trace below sees epoch 0
            schedule.set_epoch(0)
        settings, cluster, device = self.settings, self.cluster, self.device
        # One seed for the minibatch order, the same on every rank; the draws of each rank
        # (guide noise, binarization) come from its own seed.
        seed = settings.seed
        base_seed = seed if seed is not None else int(torch.randint(2**31, (), device="cpu"))
        base_seed = cluster.broadcast_int(base_seed, device)
        if seed is not None or cluster.active:
            pyro.set_rng_seed(base_seed + cluster.rank)
        self.state = _Progress(seed=base_seed)
        rows = self._first_rows()
        if self.tensors is None:  # a Dataset or DataLoader: its first rows tell the dtype
            self.dtype = model_dtype(self.model, self.guide, rows)
        first = self._batch(rows)
        self._check_data(first, held_out)
        with pyro.validation_enabled(True):
            traces = trace_pair(self.model, self.guide, *first)
            nesting = inspect_model(self.model, self.guide, traces=traces)
        self.elbo = choose_objective(settings.objective, settings.num_particles, nesting, traces)
        self.scale = ScaleDataPlate(self.num_data)
        self.scaled_model, self.scaled_guide = self.scale(self.model), self.scale(self.guide)
        self.params = _parameters(self.elbo, self.scaled_model, self.scaled_guide, first)
        if not self.params:
            raise ValueError(
                "the model and guide have no parameters to train: register networks with "
                "pyro.module(...) or parameters with pyro.param(...)"
            )
        _check_devices(list(self.params.values()), device)
        cluster.broadcast_(self.params.values())  # every rank starts from rank 0's weights
        if isinstance(self.elbo, ReparameterizedELBO):
            self.elbo.cache_parameters(self.params)
        if optimizer is None:
            optimizer = adam(list(self.params.values()), settings.learning_rate)
        self.optimizer = optimizer
        self.num_epochs = settings.num_epochs
        if settings.more_epochs is not None:
            self.num_epochs = settings.more_epochs
        self.lr_scheduler = make_lr_scheduler(
            settings.lr_schedule, settings.lr_schedule_options, optimizer, self.num_epochs
        )
        path = settings.checkpoint_path
        if held_out is not None and path is not None and Path(path).name == "best.pt":
            raise ValueError(
                "checkpoint_path must not be named best.pt: the best held-out epoch's "
                "checkpoint is kept under that name next to it"
            )
        if settings.patience is not None and held_out is None:
            raise ValueError("patience stops on the held-out bound: pass held_out= data too")
        if settings.held_out_samples > 1:
            self._check_held_out_iwae(self.held_out)
        self.stopping = EarlyStopping(settings.patience, held_out_samples=settings.held_out_samples)

    def _check_held_out_iwae(self, held_out) -> None:
        """Refuse before any step what IWAE_K cannot score (e.g. a global latent)."""
        if held_out is None:
            raise ValueError(
                f"held_out_samples={self.settings.held_out_samples} is the K of the held-out "
                "IWAE bound: pass held_out= data too"
            )
        two_rows = tuple(t[:2] for t in held_out)
        try:
            _held_out_iwae(self.model, self.guide, two_rows, 2, False, self.device)
        except ValueError as error:
            raise ValueError(
                f"held_out_samples={self.settings.held_out_samples} scores the held-out data "
                f"by IWAE_K, which this model has none of: {error}; or keep "
                "held_out_samples=1 (the held-out ELBO)"
            ) from None

    def _check_data(self, first, held_out) -> None:
        # Training data were checked for NaN/Inf with the arguments. The first rows' trace
        # learns the model's observed sites (with the training's draws, as ever); then every
        # row is checked as the model sees it: converted, or transformed chunk by chunk (a
        # random transform's draws under a forked generator, so training's numbers stay).
        # A Dataset or DataLoader is checked on its first minibatch (it may not fit memory).
        transform = self.settings.transform
        if self.tensors is None:
            check_data(first[0], "the first minibatch")
            check_owner(self.model, first[0])
        elif transform is None:
            check_owner(self.model, self.tensors[0])
        sites = observed_sites(self.model, self.guide, first)
        if self.tensors is None:
            check_rows(self.model, self.guide, sites, first, "data", self.device)
        else:
            check_rows(
                self.model, self.guide, sites, self.tensors, "data", self.device, transform,
                self.dtype,
            )  # fmt: skip
        self.held_out = held_out
        if held_out is not None:
            name = "held-out data"
            self.held_out = check_model_data(
                self.model, self.guide, held_out, self.device, name, min_dim=2
            )

    def _batch(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        transform = self.settings.transform
        if self.tensors is None:  # read on the host, where 0/1 integers are checked
            if transform is None:
                batch = as_model_dtype(batch, self.dtype, "a minibatch of data")
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
        batch = _transformed(batch, transform)
        # In the model's dtype after the transform (8-bit data stay 8-bit until here); a
        # no-op for data converted already.
        return (batch[0].to(self.dtype or batch[0].dtype),) + batch[1:]

    def _first_rows(self) -> tuple[torch.Tensor, ...]:
        size = self.settings.batch_size
        if self.loader is not None:
            return next(iter(self.loader.epoch()))
        if self.tensors is None:
            return self.batches.get(torch.arange(min(size, self.num_data)))
        return tuple(t[:size].to(self.device) for t in self.tensors)

    def restore(self, saved: dict | None, source: str = "the checkpoint to resume from") -> None:
        """Continue from a checkpoint of :func:`fit`: parameters, optimizer, progress, RNGs.

        ``source`` (the checkpoint's path) begins every error about its contents."""
        if saved is None:
            return
        self._check_saved(saved, source)
        saved_params = {k: v.to(self.device) for k, v in saved["params"].items()}
        try:
            restore_parameters(self.params, saved_params)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        check_training_state_fits(saved, source, self.optimizer, self.lr_scheduler, self.num_data)
        with restoring(source, "optimizer"):
            self.optimizer.load_state_dict(saved["optimizer"])
        with restoring(source, "training"):
            self.state = _Progress.from_dict(saved["training"])
            if self.state.order is not None:
                self.state.order = self.state.order.to(self.order_device)
                self.state.loss_sum = self.state.loss_sum.to(self.device)
        with restoring(source, "rng"):
            _restore_rng(saved["rng"], self.cluster, self.state)
        if self.lr_scheduler is not None and saved.get("lr_scheduler") is not None:
            with restoring(source, "lr_scheduler"):
                self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        with restoring(source, "early_stopping"):
            self.stopping = EarlyStopping.from_dict(
                saved.get("early_stopping", {}), patience=self.settings.patience
            )
        if self.stopping.held_out_samples != self.settings.held_out_samples:
            raise ValueError(
                f"the checkpoint chose its best epoch by the held-out "
                f"{self.stopping.bound_name}, and this run asks for held_out_samples="
                f"{self.settings.held_out_samples}: resume with held_out_samples="
                f"{self.stopping.held_out_samples} (--held-out-samples), or start a new run"
            )
        if self.settings.more_epochs is not None:
            self.num_epochs = self.state.epoch + self.settings.more_epochs

    def _check_saved(self, saved: dict, source: str) -> None:
        """One clear error now for what :meth:`restore` would choke on (a KeyError, a failed
        step later), naming ``source``."""
        check_training_state(saved, source)
        history_types = typing.get_type_hints(EpochStats)  # dataclasses take any value
        for stats in saved["training"]["history"]:
            check_entries(stats, f"{source}'s training history", {}, history_types)
        stopping_types = {**typing.get_type_hints(EarlyStopping), "best_elbo": float}
        stopping = saved.get("early_stopping", {})
        check_entries(stopping, f"{source}'s early_stopping", {}, stopping_types)

    def save(self, path: str | Path | None = None) -> None:
        """The checkpoint (or ``path``: the best epoch's), written by rank 0."""
        path = path or self.settings.checkpoint_path
        if path is None:
            return
        rng = self.cluster.gather_objects(rng_state())  # a collective: every rank takes part
        if self.cluster.is_main:
            extra = self.settings.checkpoint_extra
            save_checkpoint(
                path,
                {
                    **_owner_state(self.model),
                    **(extra() if extra is not None else {}),
                    "params": {name: p.detach() for name, p in self.params.items()},
                    "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": _state_of(self.lr_scheduler),
                    "early_stopping": self.stopping.to_dict(),
                    "training": self.state.to_dict(),
                    "rng": rng,
                    "epoch": self.state.epoch,
                },
            )
        self.cluster.barrier()  # no rank goes on (and may resume from it) before the file is there

    def train(self) -> FitResult:
        """Epochs until ``num_epochs`` in all (a resumed run counts those it resumed from)."""
        settings, state = self.settings, self.state
        self.started_at = state.epoch, state.num_steps  # what a divergence leaves on disk
        self.param_list = list(self.params.values())
        self.flags = torch.zeros(1, device=self.device), torch.ones(1, device=self.device)
        self.log = _CsvLog(settings.csv_path if self.cluster.is_main else None, state.history)
        self.steps_per_epoch = _steps_per_epoch(self.loader, self.num_data, settings.batch_size)
        show = settings.progress if settings.progress is not None else progress_enabled()
        self._say_if_nothing_to_do()
        remaining = max(self.num_epochs - state.epoch, 0) * (self.steps_per_epoch or 0)
        bar = tqdm(
            total=max(remaining - state.epoch_steps, 0) if self.steps_per_epoch else None,
            disable=not (show and self.cluster.is_main),
            unit="step",
            leave=False,
        )
        precision = matmul_precision(settings.precision)
        with bar, pyro.validation_enabled(False), precision, StopRequests() as stop:
            while state.epoch < self.num_epochs and not self.stopping.should_stop:
                for schedule in settings.epoch_schedules:
                    schedule.set_epoch(state.epoch)
                started = time.perf_counter()
                self._epoch_steps(bar, stop)
                self._finish_epoch(bar, time.perf_counter() - started)
        return FitResult(
            history=state.history,
            optimizer=self.optimizer,
            num_steps=state.num_steps,
            best_epoch=self.stopping.best_epoch,
            best_held_out_bound=self.stopping.best_bound if self.stopping.best_epoch else None,
            held_out_bound_name=self.stopping.bound_name,
            stopped_early=self.stopping.should_stop and state.epoch < self.num_epochs,
        )

    def _say_if_nothing_to_do(self) -> None:
        if self.state.epoch >= self.num_epochs and self.state.history:
            warnings.warn(
                f"nothing to train: the checkpoint holds {self.state.epoch} epochs and "
                f"num_epochs = {self.num_epochs} counts epochs in all; pass a larger num_epochs "
                "(-n) or more_epochs=",
                stacklevel=4,
            )
        elif self.stopping.should_stop:
            warnings.warn(
                f"nothing to train: the resumed run stopped early at epoch {self.state.epoch} "
                f"(no better held-out {self.stopping.bound_name} for "
                f"{self.stopping.stale_epochs} epochs; patience "
                f"{self.stopping.patience}); raise patience to go on",
                stacklevel=4,
            )

    def _epoch_steps(self, bar, stop: StopRequests) -> None:
        """The rest of the current epoch's steps (all of them, unless resumed mid-epoch)."""
        state, batch_size = self.state, self.settings.batch_size
        if self.loader is not None:
            return self._loader_epoch_steps(bar, stop)
        if state.order is None:
            state.order = _permutation(self.num_data, state.seed, state.epoch, self.order_device)
            state.next_start, state.epoch_steps = 0, 0
            # Losses stay on the device and are read once per epoch: no sync per step.
            state.loss_sum = torch.zeros((), device=self.device)
        while state.next_start < self.num_data:
            start = state.next_start
            global_indices = state.order[start : start + batch_size]
            upcoming = state.order[start + batch_size : start + 2 * batch_size]
            indices = self.cluster.shard(global_indices)
            batch = self._batch(self.batches.get(indices)) if indices.numel() > 0 else None
            # Scaled so that the losses of all ranks sum to the global batch's estimate.
            self.scale.num_data = self.num_data * indices.numel() / global_indices.numel()
            loss, stops = self._step(batch, stop.received is not None)
            self.batches.prefetch(self.cluster.shard(upcoming))
            state.next_start += batch_size
            self._count_step(loss, stops, bar, stop)

    def _loader_epoch_steps(self, bar, stop: StopRequests) -> None:
        """An epoch of a DataLoader's own minibatches. Its order is its own, so an epoch
        interrupted midway starts again from its beginning when resumed."""
        state = self.state
        state.order, state.next_start, state.epoch_steps = None, 0, 0
        state.loss_sum = torch.zeros((), device=self.device)
        for batch in self.loader.epoch():
            loss, stops = self._step(self._batch(batch), stop.received is not None)
            self._count_step(loss, stops, bar, stop)

    def _count_step(self, loss, stops, bar, stop: StopRequests) -> None:
        state = self.state
        state.loss_sum += loss
        state.epoch_steps += 1
        state.num_steps += 1
        bar.update()
        if _stop_now(stop, stops, self.cluster, state.num_steps):
            self.save()
            path = self.settings.checkpoint_path
            raise TrainingInterrupted(
                stop.received or signal.SIGTERM,
                state.epoch + 1,
                state.epoch_steps,
                Path(path) if path is not None else None,
            )

    def _step(self, batch, stop_requested: bool):
        """One optimizer step on this rank's share of the global minibatch (``batch``: None
        when the share is empty); returns its loss and the summed stop flag."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        if batch is not None:
            with autocast(self.settings.precision, self.device):
                loss = self.elbo.differentiable_loss(self.scaled_model, self.scaled_guide, *batch)
            loss.backward()
        no_stop, stop_flag = self.flags
        stops = self.cluster.sum_gradients(
            self.param_list, stop_flag if stop_requested else no_stop
        )
        if self.settings.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.param_list, self.settings.clip_norm)
            loss = torch.where(torch.isfinite(norm), loss.detach(), norm)  # a NaN norm shows
        self.optimizer.step()
        return loss.detach(), stops

    def _finish_epoch(self, bar, seconds: float) -> None:
        """The epoch's figures (a divergence stops here), the log, the checkpoint."""
        state = self.state
        loss_total = self.cluster.sum_(state.loss_sum.clone())
        train_bound = -loss_total.item() / (state.epoch_steps * self.num_data)
        if not math.isfinite(train_bound):
            kept = _kept_checkpoint(self.settings.checkpoint_path, state.epoch, self.started_at)
            raise TrainingDiverged(
                f"training diverged: the loss became NaN/Inf during epoch {state.epoch + 1} "
                f"(its {state.epoch_steps} steps are lost; {kept}); " + _DIVERGENCE_HINTS
            )
        held_out_elbo = held_out_iwae = None
        k = self.settings.held_out_samples
        if self.held_out is not None and k > 1:
            held_out_iwae, held_out_elbo = _held_out_iwae(
                self.model, self.guide, self.held_out, k, self.cluster.active, self.device
            )
        elif self.held_out is not None:
            held_out_elbo = _held_out_elbo(
                self.model, self.guide, self.held_out, self.cluster, self.device
            )
        state.epoch += 1
        state.order = None
        stats = EpochStats(state.epoch, train_bound, held_out_elbo, seconds, held_out_iwae)
        state.history.append(stats)
        self.log.append(stats)
        watched = held_out_iwae if k > 1 else held_out_elbo
        step_lr_scheduler(self.lr_scheduler, watched, train_bound)
        improved = watched is not None and self.stopping.update(state.epoch, watched)
        self.save()
        if improved and self.settings.checkpoint_path is not None:
            self.save(best_checkpoint_path(self.settings.checkpoint_path))
        bar.set_postfix(train_bound=f"{train_bound:.2f}")
        if self.settings.on_epoch_end is not None:  # on every rank: it may update the model
            self.settings.on_epoch_end(stats)


_FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu")


def adam(params: list[torch.Tensor], learning_rate: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel where the parameters allow it.

    One fused kernel updates every tensor at once: on this project's 2-core CPU a step for
    the benchmark's 784-400-50 VAE took about 0.3 ms against 1.1 ms for the default
    per-tensor loop, a tenth of a batch-256 training step (benchmarks/RESULTS.md). The
    update is Adam's; only the floating-point rounding differs.

    Example::

        >>> optimizer = adam([torch.zeros(3, requires_grad=True)], 1e-3)
    """
    fusable = all(p.is_floating_point() and p.device.type in _FUSED_ADAM_DEVICES for p in params)
    if fusable:
        return torch.optim.Adam(params, lr=learning_rate, fused=True)
    return torch.optim.Adam(params, lr=learning_rate, foreach=True)


def _training_device(data_device: torch.device, device) -> torch.device:
    """Where the steps run: the data's device unless ``device`` says otherwise."""
    device = data_device if device is None else resolve_device(device)
    if device != data_device and data_device.type != "cpu":
        raise ValueError(
            f"the data are on {data_device} and device is {device}: training streams "
            "minibatches from host memory only; move the data to the CPU or to the device"
        )
    return device


def _kept_checkpoint(path, epoch: int, started_at: tuple[int, int]) -> str:
    """What a divergence in epoch ``epoch + 1`` leaves, said truly: the checkpoint this call
    saved at its last epoch's end, else the one it resumed from, else none."""
    if path is None:
        return "no checkpoint_path was given, so nothing was saved"
    if epoch > started_at[0]:
        return f"the checkpoint {path} from epoch {epoch} is intact"
    if started_at[1] > 0:
        return f"nothing was written to {path}: the checkpoint resumed from is unchanged"
    return f"no checkpoint was written to {path}: the first comes at the end of epoch 1"


def best_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where fit keeps the best held-out epoch's checkpoint: ``best.pt`` next to the last."""
    return Path(checkpoint_path).with_name("best.pt")


def _owner_state(model) -> dict[str, Any]:
    """What the object ``model`` is a method of adds to checkpoints (a :class:`pvae.VAE`: its
    architecture), so that a checkpoint of its model rebuilds without being asked to."""
    state = getattr(getattr(model, "__self__", None), "checkpoint_state", None)
    return state() if callable(state) else {}


def _state_of(scheduler) -> dict | None:
    return scheduler.state_dict() if scheduler is not None else None


def _steps_per_epoch(loader: LoaderBatches | None, num_data: int, batch_size: int) -> int | None:
    if loader is None:
        return math.ceil(num_data / batch_size)
    try:
        return len(loader.loader)
    except TypeError:  # an iterable dataset: as many as it yields
        return None


def _source_size(source, num_data: int | None) -> int:
    """The number of datapoints the minibatch ELBO is scaled to (the data plate's size)."""
    if isinstance(source, DatasetBatches):
        return source.num_data
    size = num_data if num_data is not None else source.dataset_size()
    if size is None:
        raise ValueError(
            "data is a DataLoader over a dataset without len(): pass num_data= (the number "
            "of datapoints in an epoch), to which each minibatch's ELBO is scaled"
        )
    return size


def _permutation(num_data: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The minibatch order of an epoch: a function of the seed and the epoch alone.

    Drawn on the CPU from its own generator, so every rank gets the same order and the
    order does not depend on the device or on what else drew random numbers.
    """
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(num_data, generator=generator, device="cpu").to(device)


_STOP_CHECK_EVERY = 10


def _stop_now(stop: StopRequests, stops: torch.Tensor, cluster: Cluster, num_steps: int) -> bool:
    """Whether to stop after this step. Alone, as soon as a signal came; with several
    processes, all decide together from the summed flags, every few steps so that the
    check costs no host sync on the others."""
    if not cluster.active:
        return stop.received is not None
    return num_steps % _STOP_CHECK_EVERY == 0 and bool(stops.item() > 0)


def _held_out_elbo(model, guide, tensors, cluster: Cluster, device: torch.device) -> float:
    """Mean per-datapoint held-out ELBO, each rank evaluating a contiguous shard."""
    num_data = tensors[0].shape[0]
    start, end = cluster.rows(num_data)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if end > start:
        shard = tuple(t[start:end] for t in tensors)
        total += elbo_of_checked_data(model, guide, shard, 1000, 1, device) * (end - start)
    return cluster.sum_(total).item() / num_data


# The held-out IWAE's draws: the same every epoch, and apart from the training's generators.
_HELD_OUT_SEED = 20_160_000


def _held_out_iwae(model, guide, tensors, k, distributed, device) -> tuple[float, float]:
    """Mean per-datapoint held-out IWAE_K and the ELBO of the same draws."""
    bound = log_likelihood(
        model,
        guide,
        tensors,
        k,
        seed=_HELD_OUT_SEED,
        max_log_weights=0,  # no k-hat each epoch: pvae.log_likelihood gives it at the end
        distributed=distributed,
        device=device,
        progress=False,
    )
    return bound.mean, bound.elbo


def _restore_rng(saved_rng, cluster: Cluster, state: _Progress) -> None:
    """Each rank takes back its own generator states; with another number of processes
    than the checkpoint's, ranks are re-seeded and the run is no longer bit-exact."""
    per_rank = saved_rng if isinstance(saved_rng, list) else [saved_rng]
    if len(per_rank) == cluster.world_size:
        set_rng_state(per_rank[cluster.rank])
        return
    warnings.warn(
        f"the checkpoint was written by {len(per_rank)} processes and this run has "
        f"{cluster.world_size}: random draws are re-seeded, so the run is not bit-exact",
        stacklevel=3,
    )
    pyro.set_rng_seed(state.seed + 7919 * state.num_steps + cluster.rank)
