"""A training run of :func:`pvae.fit`, built complete from fit's arguments: :func:`build_run`.

In order: the settings are checked; the data become a training source on the training
device (:mod:`pvae.infer.training_sources`) and every row, or a stream's first minibatch,
is checked for the model; seeds are set; the objective is chosen from the first
minibatch's trace, which also finds the parameters; the optimizer, learning-rate schedule
and early stopping make the training state, restored from a checkpoint when one is given.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine

from pvae.infer import checks, param_store
from pvae.infer.captured_steps import AutoChoice, AutoDecision, CapturedSteps, choose_backend
from pvae.infer.checks import check_owner, observed_sites
from pvae.infer.distributed import Cluster, connect
from pvae.infer.fast_elbo import ReparameterizedELBO
from pvae.infer.fit_result import EpochStats
from pvae.infer.held_out import HeldOutBound, HeldOutStreams
from pvae.infer.objectives import ScaleDataPlate, choose_objective, inspect_model
from pvae.infer.plates import trace_pair
from pvae.infer.run_checkpoints import CheckpointWriter, resumed_from
from pvae.infer.schedules import EarlyStopping, make_lr_scheduler
from pvae.infer.settings import TrainConfig
from pvae.infer.sources import as_tensors
from pvae.infer.training_state import Parameters, RandomState, TrainingState
from pvae.infer.training_streams import (
    Stream,
    Streams,
    is_streams,
    named_errors,
    read_streams,
    streams_device,
    training_streams,
)


@dataclasses.dataclass(kw_only=True)
class FitSettings(TrainConfig):
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


class ScaledObjective:
    """The training objective of the model and guide on one data stream, with the data
    plate scaled from a minibatch to the stream (:class:`pvae.infer.objectives.ScaleDataPlate`)
    and the sites outside it weighed by ``others`` (1 / the number of streams)."""

    def __init__(self, elbo, model, guide, num_data: int, others: float = 1.0):
        self.elbo, self.scale = elbo, ScaleDataPlate(num_data, others)
        self.model, self.guide = self.scale(model), self.scale(guide)

    def loss(self, rows, plate_size: float) -> torch.Tensor:
        """The differentiable loss of ``rows``, scaled as a share of ``plate_size`` rows."""
        self.scale.num_data, self.scale.rows = plate_size, rows[0].shape[0]
        return self.elbo.differentiable_loss(self.model, self.guide, *rows)


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything one call of :func:`pvae.fit` trains with, complete."""

    model: Callable
    guide: Callable
    settings: FitSettings
    cluster: Cluster
    device: torch.device
    source: Streams
    held_out: HeldOutBound | HeldOutStreams | None
    objectives: tuple[ScaledObjective, ...]  # one per stream
    state: TrainingState
    num_epochs: int  # in all, those of the resumed checkpoint included
    checkpoints: CheckpointWriter
    captured: CapturedSteps | None  # the replayed step (fit's compile), None: eager


def build_run(
    model, guide, data, settings: FitSettings, *, held_out, optimizer, resume, device, distributed
) -> Run:
    """The run of fit's arguments, restored from ``resume`` (a path, a loaded checkpoint or
    None); ``ValueError`` for anything wrong, before any step."""
    settings.check()
    streams = read_streams(data)
    device = streams_device(streams, device)
    cluster = connect(device, distributed)
    _check_batch_size(settings.batch_size, cluster)
    held_out_tensors = _held_out_tensors(held_out, settings)
    for schedule in settings.epoch_schedules:  # the first trace below sees epoch 0
        schedule.set_epoch(0)
    seed = _seed(settings.seed, cluster, device)
    source = training_streams(streams, model, guide, settings, device, cluster)
    held_out = _check_data(model, guide, source, held_out_tensors, settings, cluster)
    objectives = _objectives(model, guide, source, settings)
    params = _trained_parameters(objectives, source, cluster, device)
    state = _training_state(params, source, settings, optimizer, seed, cluster)
    checkpoints = CheckpointWriter(
        settings.checkpoint_path, settings.checkpoint_extra, model, cluster, held_out is not None
    )
    saved, name = resumed_from(resume)
    if saved is not None:
        state.load_state_dict(saved, name)
    num_epochs = settings.num_epochs
    if settings.more_epochs is not None:
        num_epochs = state.position.epoch + settings.more_epochs
    captured = _captured_steps(
        settings, objectives, state, source, num_epochs, cluster, source.device
    )
    return Run(
        model, guide, settings, cluster, device, source, held_out, objectives, state,
        num_epochs, checkpoints, captured,
    )  # fmt: skip


def _captured_steps(settings, objectives, state, source, num_epochs, cluster, device):
    """The captured step that ``compile`` asks for; ``"auto"`` decides on the steps planned
    and the eager steps' time (:class:`pvae.infer.captured_steps.AutoDecision`), or takes
    the decision of the run it resumes."""
    backend = choose_backend(settings.compile, objectives)
    if backend is None:
        return None

    def loss(index: int, rows, plate_size: float) -> torch.Tensor:
        return objectives[index].loss(rows, plate_size)

    auto, choice = None, state.auto_compile
    if settings.compile == "auto" and choice.compiled is None:
        steps_per_epoch = source.steps_per_epoch()
        if steps_per_epoch is None:  # a DataLoader of unknown length: no plan to weigh
            return None
        planned = max(num_epochs - state.position.epoch, 0) * steps_per_epoch
        auto = AutoDecision(
            planned, lambda flag: choice.record(bool(cluster.broadcast_int(int(flag), device)))
        )
    steps = CapturedSteps(loss, list(state.params.tensors.values()), backend, auto)
    if settings.compile == "auto" and choice.compiled is False:
        steps.stopped = "auto: the run it resumes found it too short to repay compiling"
    return steps


def _check_batch_size(batch_size: int, cluster: Cluster) -> None:
    if cluster.active and batch_size < cluster.world_size:
        raise ValueError(
            f"batch_size {batch_size} is smaller than the "
            f"{cluster.world_size} processes: the global batch is split among them"
        )


def _held_out_tensors(held_out, settings: FitSettings):
    """``held_out`` as tensors, or a dict of them for named streams (None: none), refused
    where settings watch it and it is none."""
    if held_out is None and settings.patience is not None:
        raise ValueError("patience stops on the held-out bound: pass held_out= data too")
    if held_out is None and settings.held_out_num_samples > 1:
        raise ValueError(
            f"held_out_num_samples={settings.held_out_num_samples} is the K of the held-out "
            "IWAE bound: pass held_out= data too"
        )
    if held_out is None:
        return None
    if not is_streams(held_out):
        return as_tensors(held_out, "held_out")
    if not held_out:
        raise ValueError("held_out is an empty dict: give at least one named stream of data")
    return {
        name: as_tensors(data.data if isinstance(data, Stream) else data, f"held_out[{name!r}]")
        for name, data in held_out.items()
    }


def _seed(seed: int | None, cluster: Cluster, device: torch.device) -> int:
    """One seed for the minibatch order, the same on every rank; the draws of each rank
    (guide noise, binarization) come from its own seed."""
    base_seed = seed if seed is not None else int(torch.randint(2**31, (), device="cpu"))
    base_seed = cluster.broadcast_int(base_seed, device)
    if seed is not None or cluster.active:
        pyro.set_rng_seed(base_seed + cluster.rank)
    return base_seed


def _check_data(model, guide, source: Streams, held_out, settings, cluster):
    """The training rows of every stream as the model sees them, then the held-out data
    (returned as their :class:`HeldOutBound`, or None)."""
    # The first rows' trace learns the model's observed sites (with the training's draws, as
    # ever); then the rows are checked as the model sees them: converted, or transformed
    # chunk by chunk (a random transform's draws under a forked generator, so training's
    # numbers stay).
    for index, part in enumerate(source.parts):
        if part.owner_rows is not None:
            check_owner(model, part.owner_rows, source.where(index))
        sites = observed_sites(model, guide, part.first)
        rows = part.rows_to_check
        checks.check_rows(
            model, guide, sites, rows.rows, source.where(index), part.device, rows.transform,
            rows.dtype,
        )  # fmt: skip
    if held_out is None:
        return None
    samples = settings.held_out_num_samples
    if isinstance(held_out, dict):
        return HeldOutStreams(model, guide, held_out, samples, cluster, source.device)
    return HeldOutBound(model, guide, held_out, samples, cluster, source.device)


def _objectives(model, guide, source: Streams, settings) -> tuple[ScaledObjective, ...]:
    """Each stream's objective, chosen from its first minibatch's trace (a labelled stream
    may take the fast ELBO, an unlabelled one TraceEnum_ELBO)."""
    objectives = []
    for index, part in enumerate(source.parts):
        with pyro.validation_enabled(True):
            traces = trace_pair(model, guide, *part.first)
            nesting = inspect_model(model, guide, traces=traces)
        with named_errors(source.named(index)):
            elbo = choose_objective(settings.objective, settings.num_particles, nesting, traces)
        others = 1.0 / len(source.parts)
        objectives.append(ScaledObjective(elbo, model, guide, part.num_data, others))
    return tuple(objectives)


def _trained_parameters(objectives, source: Streams, cluster: Cluster, device):
    """The parameters of every stream's objective (the union: a stream may leave a network
    out), broadcast from rank 0."""
    params: dict[str, torch.Tensor] = {}
    for objective, part in zip(objectives, source.parts, strict=True):
        params.update(_parameters(objective.elbo, objective.model, objective.guide, part.first))
    if not params:
        raise ValueError(
            "the model and guide have no parameters to train: register networks with "
            "pyro.module(...) or parameters with pyro.param(...)"
        )
    _check_devices(list(params.values()), device)
    cluster.broadcast_(params.values())  # every rank starts from rank 0's weights
    for objective in objectives:
        if isinstance(objective.elbo, ReparameterizedELBO):
            objective.elbo.cache_parameters(params)
    return params


def _training_state(
    params, source: Streams, settings: FitSettings, optimizer, seed, cluster
) -> TrainingState:
    if optimizer is None:
        optimizer = adam(list(params.values()), settings.learning_rate)
    planned = settings.num_epochs if settings.more_epochs is None else settings.more_epochs
    lr_scheduler = make_lr_scheduler(
        settings.lr_schedule, settings.lr_schedule_options, optimizer, planned
    )
    stopping = EarlyStopping(settings.patience, held_out_samples=settings.held_out_num_samples)
    position = source.new_position(seed)
    return TrainingState(
        Parameters(params, source.device),
        optimizer,
        lr_scheduler,
        stopping,
        position,
        RandomState(cluster, position),
        source.lead_size,
        source,
        AutoChoice() if settings.compile == "auto" else None,
    )


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
            stacklevel=5,
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
