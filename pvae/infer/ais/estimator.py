"""Annealed importance sampling of log p(x) per datapoint, with HMC transitions.

For each datapoint x, AIS (Neal, "Annealed importance sampling", Statistics and Computing
2001) moves chains through targets γ_0 = π_0, γ_1, ..., γ_T ∝ p(z | x) (see
:mod:`pvae.infer.ais.potential`), each by one HMC transition, accumulating in float64

    log w = Σ_t log γ_t(z_{t-1}) - log γ_{t-1}(z_{t-1}),

whose exponential is an unbiased estimate of p(x): log mean_k w_k is a stochastic lower bound
that tends to log p(x) as T grows (Wu, Burda, Salakhutdinov & Grosse, "On the quantitative
analysis of decoder-based generative models", ICLR 2017). :func:`ais` is the entry point.

Step sizes and unbiasedness: AIS stays unbiased for any sequence of γ_t-invariant kernels
fixed in advance, but not for kernels tuned on the chains being weighted (a step size set from
a chain's own acceptances depends on its state). So each data chunk first runs a few
*adaptation chains* through the same targets, whose step sizes follow their acceptance
probability of the previous step toward the target rate, as in Wu et al.; the estimating
chains then replay that schedule of step sizes. Given the adaptation chains, which are
independent of them, the estimating chains run AIS with a fixed sequence of kernels, and
exp(log w) is unbiased exactly. The adaptation chains cost ``adaptation_chains / num_chains``
more; their weights are not used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from pvae.infer.ais.hmc import (
    AdaptiveStepSize,
    ChainState,
    StepSizeSchedule,
    hmc_transition,
    leapfrog_step,
)
from pvae.infer.ais.latents import LatentLayout
from pvae.infer.ais.potential import Potential
from pvae.infer.ais.schedule import annealing_schedule
from pvae.infer.capture import ReplayBySignature, compile_mode
from pvae.infer.estimates import PerDatapointEstimate
from pvae.infer.evaluation import check_count, evaluating, seed_torch
from pvae.infer.log_weights import full_value, sample_sites
from pvae.infer.plates import PARTICLE_PLATE, enumerated, inspect_model, trace_pair

INITS = ("guide", "prior")
# Chains x datapoints per model call by default: a few hundred MB for an MNIST-sized decoder.
_ROWS_PER_CALL = {"cpu": 4096, "cuda": 65536}
_MAX_CHAIN_CHUNK = 64


@dataclass(frozen=True, eq=False)
class AnnealedLogLikelihood(PerDatapointEstimate):
    """Per-datapoint AIS estimates of log p(x) (nats) and the chains' diagnostics.

    ``per_datapoint`` [N] is log mean_k w_k over the chains, ``log_weights`` [N, chains] the
    chains' log-weights, ``acceptance`` [N] the estimating chains' mean acceptance
    probability, ``step_size`` [N] the step size of the last transition; all float64, CPU.

    Example::

        >>> result = ais(vae.model, vae.guide, test_x[:100], num_steps=1000)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        AIS 1000 steps, 16 chains from the guide: -86.02 ± 0.41 nats (0.1583 bits/dim); ...
    """

    per_datapoint: torch.Tensor
    log_weights: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    num_steps: int
    init: str
    data_dim: int

    @classmethod
    def of_chains(cls, log_weights, acceptance, step_size, num_steps, init, data_dim):
        """The estimate of chains with these log-weights [N, chains]: log mean_k w_k."""
        per_datapoint = log_mean_weight(log_weights)
        return cls(per_datapoint, log_weights, acceptance, step_size, num_steps, init, data_dim)

    @property
    def num_chains(self) -> int:
        return self.log_weights.shape[1]

    @property
    def ess(self) -> torch.Tensor:
        """(Σ w)² / Σ w² over each datapoint's chains: the chain count for equal weights."""
        return torch.exp(
            2 * torch.logsumexp(self.log_weights, 1) - torch.logsumexp(2 * self.log_weights, 1)
        )

    def summary(self) -> str:
        """One line: the estimate, its standard error, bits/dim, chain ESS and acceptance."""
        return (
            f"AIS {self.num_steps} steps, {self.num_chains} chains from the {self.init}: "
            f"{self.mean:.2f} ± {self.standard_error:.2f} nats ({self.bits_per_dim:.4f} "
            f"bits/dim); chain ESS {self.ess.median().item():.1f} of {self.num_chains} "
            f"(median), acceptance {self.acceptance.mean().item():.2f}"
        )


@dataclass(frozen=True)
class Settings:
    """How :func:`ais` anneals, checked; ``betas`` holds the schedule."""

    betas: torch.Tensor
    num_chains: int
    init: str
    leapfrog_steps: int
    step_size: float
    target_acceptance: float
    adaptation_chains: int
    chain_chunk: int
    seed: int = 0  # set when the evaluation is prepared

    @property
    def num_steps(self) -> int:
        return self.betas.numel() - 1


@dataclass(frozen=True)
class Problem:
    """A model and guide as AIS sees them: plate nesting, the latents HMC moves, supports."""

    model: object
    guide: object
    nesting: int
    supports: dict
    enumerate: bool
    backend: str | None = None  # how the potential is captured (ais's compile); None: eager


def ais(
    model,
    guide,
    data,
    num_steps: int = 1000,
    num_chains: int = 16,
    *,
    schedule: str = "sigmoid",
    init: str = "guide",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    adaptation_chains: int = 2,
    chain_chunk: int | None = None,
    data_chunk: int | None = None,
    seed: int | None = None,
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    compile: bool | str = "auto",
) -> AnnealedLogLikelihood:
    """AIS estimate of log p(x) for every datapoint, with HMC transitions (Wu et al., 2017).

    Takes any model/guide pair :func:`pvae.log_likelihood` accepts (``data`` in its forms: a tensor,
    numpy array or tuple of those passed as ``model(*batch)``, a ``Dataset`` or ``DataLoader``;
    checked, every row, and converted to the model's dtype; every site in ``pyro.plate("data",
    ...)``; enumerated discrete model latents summed out exactly), with continuous latents: HMC
    moves them in their unconstrained space (``biject_to`` of the model's supports). ``num_steps``
    annealing steps (``schedule`` ``"sigmoid"`` or ``"linear"``) from the guide q(z|x)
    (``init="guide"``) or the prior (``init="prior"``) to the posterior, each with one HMC
    transition of ``leapfrog_steps`` leapfrog steps, for ``num_chains`` chains per datapoint. Step
    sizes start at ``step_size`` and are adapted per datapoint toward ``target_acceptance`` on
    ``adaptation_chains`` separate chains, so that the estimate stays unbiased (module docstring;
    ``adaptation_chains=0`` keeps ``step_size`` fixed).

    Work is done ``data_chunk`` datapoints x ``chain_chunk`` chains at a time (memory is set by
    the chunk); a given ``seed`` gives the same numbers for the same chunk sizes. Data,
    ``seed``, ``distributed``, ``device`` and ``progress`` are prepared as for every estimator
    (:mod:`pvae.infer.evaluation`), as :func:`pvae.log_likelihood` takes them: a given seed
    leaves the global generator untouched, ``None`` draws it from there, a bool is refused;
    ``device`` where model and guide run, data copied there a chunk at a time; under torchrun
    each process scores its share of the data chunks and all get the whole result;
    ``progress`` (None: at a terminal) shows a bar on the main process only. ``compile``
    (``"auto"``, ``"off"``, ``"capture"``, ``"inductor"``; True is ``"inductor"``) captures
    the potential and its gradient once per chunk of chains and replays it at every
    leapfrog step without Pyro's runtime (:func:`potential_backend`). Counts
    (``num_steps``, ``num_chains``, ``leapfrog_steps``, the chunks; ``adaptation_chains`` may
    be 0) are refused alike when not integers, bools included.

    Example::

        >>> result = ais(vae.model, vae.guide, test_x[:100], seed=0)  # doctest: +SKIP
        >>> result.mean, result.acceptance.mean()  # doctest: +SKIP
        (-85.91, tensor(0.66, dtype=torch.float64))
    """
    settings = make_settings(
        num_steps, num_chains, schedule, init, leapfrog_steps, step_size, target_acceptance,
        adaptation_chains, chain_chunk,
    )  # fmt: skip
    check_count("data_chunk", data_chunk, optional=True)
    frontend = {"seed": seed, "distributed": distributed, "device": device, "progress": progress}
    with evaluating(model, guide, data, **frontend) as evaluation:
        settings = dataclasses.replace(settings, seed=evaluation.seed)
        data_chunk = default_data_chunk(data_chunk, settings, evaluation.device)
        # Each process takes whole data chunks, so that every chunk gets the draws of one
        # process.
        start, end = evaluation.share(multiple=data_chunk)
        problem = inspect_latents(model, guide, evaluation.rows(0, 2))
        problem = dataclasses.replace(problem, backend=potential_backend(compile, settings))
        shard = _score_rows(problem, settings, evaluation, start, end, data_chunk)
    log_w, acceptance, step = evaluation.gather(shard)
    return AnnealedLogLikelihood.of_chains(
        log_w, acceptance, step, num_steps, init, evaluation.data_dim
    )


def log_mean_weight(log_weights: torch.Tensor) -> torch.Tensor:
    """log mean_k exp(log_weights[:, k]) per row [N]."""
    return torch.logsumexp(log_weights, 1) - math.log(log_weights.shape[1])


def _score_rows(problem, settings, evaluation, start, end, data_chunk):
    """Log-weights [n, chains], acceptance [n] and last step sizes [n] of rows start:end."""
    chunks = range(start, end, data_chunk)
    groups = -(-settings.num_chains // settings.chain_chunk) + bool(settings.adaptation_chains)
    bar = evaluation.bar(len(chunks) * groups * settings.num_steps, desc="AIS", unit="step",
                      leave=False)  # fmt: skip
    parts = []
    with bar:
        for n0 in chunks:
            batch = evaluation.rows(n0, min(n0 + data_chunk, end))
            parts.append(score_chunk(problem, settings, batch, n0, bar.update))
    if not parts:  # more processes than data chunks
        empty = torch.zeros(0, dtype=torch.float64, device="cpu")
        return empty.reshape(0, settings.num_chains), empty, empty
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def score_chunk(problem, settings, batch, chunk_id, tick=None, reverse_from=None):
    """AIS on one data chunk: log-weights [n, chains], acceptance [n], last step sizes [n] (CPU
    float64), and the step-size schedule [transitions, n] the chains ran.

    ``reverse_from`` (latent values with chains' axis of size 1, and a schedule) runs the
    path backwards from them instead, for :func:`pvae.infer.ais.bdmc.bdmc`.
    """
    betas = settings.betas
    if reverse_from is None:
        sizes = _adapted_step_sizes(problem, settings, batch, chunk_id, tick)
    else:
        values, sizes = reverse_from
        betas, sizes = betas.flip(0), sizes.flip(0)
    log_w, acceptance = [], 0.0
    for g0 in range(0, settings.num_chains, settings.chain_chunk):
        chains = min(settings.chain_chunk, settings.num_chains - g0)
        seed_torch(settings.seed, chunk_id, g0, reverse_from is not None)
        given = None if reverse_from is None else values
        state, potential = start_chains(problem, batch, chains, settings.init, given)
        group_w, group_acceptance = anneal(
            potential, state, betas, StepSizeSchedule(sizes), settings.leapfrog_steps, tick,
            problem.backend,
        )  # fmt: skip
        log_w.append(group_w.T.cpu())
        acceptance = acceptance + group_acceptance.cpu() * chains
    last = sizes[-1] if sizes.shape[0] else torch.full((batch[0].shape[0],), settings.step_size)
    return torch.cat(log_w, 1), acceptance / settings.num_chains, last.double().cpu(), sizes


def _adapted_step_sizes(problem, settings, batch, chunk_id, tick) -> torch.Tensor:
    """The step sizes [transitions, n] the adaptation chains arrive at, step by step."""
    num_data = batch[0].shape[0]
    initial = torch.full(
        (num_data,), settings.step_size, dtype=torch.float64, device=batch[0].device
    )
    if not settings.adaptation_chains:
        return initial.expand(settings.num_steps - 1, num_data)
    seed_torch(settings.seed, chunk_id, -1, False)
    state, potential = start_chains(problem, batch, settings.adaptation_chains, settings.init)
    adaptive = AdaptiveStepSize(initial, settings.target_acceptance)
    anneal(
        potential, state, settings.betas, adaptive, settings.leapfrog_steps, tick, problem.backend
    )
    return adaptive.schedule()


def anneal(potential, state: ChainState, betas, step_sizes, leapfrog_steps, tick=None,
           backend=None):  # fmt: skip
    """Run chains from ``state`` along ``betas``: log-weights [chains, n] in float64 and the
    mean acceptance probability [n] of their transitions (NaN with none). ``backend``
    captures the leapfrog step at its first call and replays it after: Pyro's runtime runs
    once per group of chains, the momentum and accept draws stay eager (a trace of whole
    transitions would grow with ``leapfrog_steps``)."""
    log_w = torch.zeros(state.ends.end.shape, dtype=torch.float64, device=state.u.device)
    accepted = torch.zeros(log_w.shape[1], dtype=torch.float64, device=log_w.device)
    num_steps = betas.numel() - 1
    betas = betas.to(state.u.device)  # β enters the captured leapfrog step as a tensor
    leapfrog = None
    if backend is not None:
        step = functools.partial(leapfrog_step, potential)
        leapfrog = ReplayBySignature(step, backend, "AIS's leapfrog step")
    for t in range(1, num_steps + 1):
        increment = (state.ends.end - state.ends.start).double()
        log_w += (betas[t] - betas[t - 1]) * increment
        # The last transition would only move chains whose weights are already complete.
        if t < num_steps:
            size = step_sizes.current(t - 1)
            state, acceptance = hmc_transition(
                potential, state, betas[t], size, leapfrog_steps, leapfrog
            )
            step_sizes.update(acceptance)
            accepted += acceptance.double().mean(0)
        if tick is not None:
            tick(1)
    return log_w, accepted / (num_steps - 1) if num_steps > 1 else accepted * math.nan


def start_chains(problem: Problem, batch, num_chains: int, init: str, given=None):
    """Chains' first state and their potential on ``batch``: latents drawn from the guide
    (or the prior: the model run forward), or the ``given`` values broadcast to the chains."""
    nesting, num_data = problem.nesting, batch[0].shape[0]
    with pyro.plate(PARTICLE_PLATE, num_chains, dim=-(nesting + 1)):
        guide_trace = poutine.trace(problem.guide).get_trace(*batch)
        source = guide_trace
        if init == "prior" and given is None:
            source = poutine.trace(problem.model).get_trace(*batch)
    values, axes = {}, {}
    for name in problem.supports:
        site = source.nodes[name]
        values[name], axes[name] = full_value(site, nesting, num_chains, num_data)
        if given is not None:
            values[name] = given[name].expand(values[name].shape)
    layout = LatentLayout(values, axes, problem.supports, nesting)
    potential = Potential(
        problem.model, problem.guide, batch, layout, nesting, init, guide_trace, problem.enumerate
    )
    u = layout.flatten(values)
    return ChainState(u, potential(u)), potential


def inspect_latents(model, guide, rows) -> Problem:
    """The model's continuous latents that HMC moves and their supports, or a clear error."""
    nesting = inspect_model(model, guide, *rows)
    guide_trace, model_trace = trace_pair(model, guide, *rows)
    supports, enumerates = {}, False
    for name, site in sample_sites(model_trace):
        if site["is_observed"]:
            continue
        if enumerated(site):
            enumerates = True
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"model latent {name!r} is discrete: AIS moves latents by HMC, which needs "
                "continuous ones. Sum it out exactly with "
                f"pyro.sample({name!r}, ..., infer={{'enumerate': 'parallel'}}) in the model"
            )
        supports[name] = site["fn"].support
    for name, site in sample_sites(guide_trace):
        if enumerated(site):
            raise ValueError(
                f"the guide enumerates {name!r}: AIS draws every guide latent; enumerate it "
                "in the model instead (summed out of the targets exactly)"
            )
        if name not in supports and not site["is_observed"]:
            raise ValueError(
                f"guide site {name!r} is not a continuous latent of the model: AIS anneals "
                "q(z|x) into p(z|x) over the model's latents, so the guide may draw only those"
            )
    return Problem(model, guide, nesting, supports, enumerates)


def make_settings(
    num_steps, num_chains, schedule, init, leapfrog_steps, step_size, target_acceptance,
    adaptation_chains, chain_chunk,
) -> Settings:  # fmt: skip
    """Check :func:`ais`'s settings; one clear ``ValueError`` for a bad one. The seed is set
    when the evaluation is prepared (:func:`pvae.infer.evaluation.evaluating`)."""
    check_count("num_chains", num_chains)
    check_count("leapfrog_steps", leapfrog_steps)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use 'guide' (q(z|x)) or 'prior' (p(z))")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance!r}")
    check_count("adaptation_chains", adaptation_chains, minimum=0)
    check_count("chain_chunk", chain_chunk, optional=True)
    return Settings(
        annealing_schedule(num_steps, schedule), num_chains, init, leapfrog_steps, step_size,
        target_acceptance, adaptation_chains, chain_chunk or min(num_chains, _MAX_CHAIN_CHUNK),
    )  # fmt: skip


# "auto" compiles the leapfrog step by inductor where a group of chains makes at least this
# many leapfrog steps: on the 2-core CPU, 784-400-50 VAE, 50 digits x 16 chains x 200 steps x
# 10 leapfrog steps, AIS ran at 0.89x the hand-written reference eagerly, 0.94x replaying
# the traced step and 1.14x compiled, compiling included (benchmarks/RESULTS.md, "AIS").
AUTO_LEAPFROG_STEPS = 5_000


def potential_backend(compile: bool | str, settings: Settings) -> str | None:
    """The capture backend of ``compile`` for the potential, None for the eager one.

    Example::

        >>> settings = make_settings(1000, 16, "sigmoid", "guide", 10, 0.05, 0.65, 2, None)
        >>> potential_backend("auto", settings)
        'inductor'
    """
    mode = compile_mode(compile)
    if mode == "auto":
        calls = settings.num_steps * settings.leapfrog_steps
        return "inductor" if calls >= AUTO_LEAPFROG_STEPS else None
    return None if mode == "off" else mode


def default_data_chunk(data_chunk: int | None, settings: Settings, device) -> int:
    """``data_chunk``, or about ``_ROWS_PER_CALL`` chains x datapoints per model call."""
    rows = _ROWS_PER_CALL["cuda" if device.type == "cuda" else "cpu"]
    return data_chunk or max(1, rows // settings.chain_chunk)
