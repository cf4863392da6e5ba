"""Bidirectional Monte Carlo: AIS's lower bound and reverse AIS's upper bound on simulated data.

On data simulated from the model, (x, z) ~ p(z) p(x|z), the latent z is an exact draw from
p(z | x). Reverse AIS started there, through the same targets from γ_T to γ_0, gives weights
whose mean estimates 1/p(x) without bias, so -log mean_k w_k is a stochastic *upper* bound on
log p(x), while forward AIS gives a stochastic lower bound (Grosse, Ghahramani & Adams,
"Sandwiching the marginal likelihood using bidirectional Monte Carlo", 2015; Wu et al.,
2017). Their gap bounds the error of forward AIS on data like these; it shrinks as the number
of steps grows, which tells how many steps a model needs. The reverse chains replay the
forward run's step sizes backwards: those depend on x and the forward chains only, not on the
exact z, so the reverse kernels are fixed in advance, as the upper bound needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from pyro import poutine

from pvae.infer.ais.estimator import (
    AnnealedLogLikelihood,
    default_data_chunk,
    inspect_latents,
    log_mean_weight,
    make_settings,
    potential_backend,
    score_chunk,
)
from pvae.infer.evaluation import check_count, evaluating, seed_torch
from pvae.infer.log_weights import full_value, sample_sites


@dataclass(frozen=True, eq=False)
class BidirectionalBounds:
    """Per-datapoint stochastic lower (forward AIS) and upper (reverse AIS) bounds on log p(x)
    of simulated data, in nats; ``data`` the simulated tensors, ``forward`` the forward run.

    Example::

        >>> bounds = bdmc(vae.model, vae.guide, test_x[:100], num_steps=1000)  # doctest: +SKIP
        >>> print(bounds.summary())  # doctest: +SKIP
        BDMC 1000 steps on 100 simulated datapoints: lower -92.31, upper -91.85; gap 0.46 ...
    """

    lower: torch.Tensor
    upper: torch.Tensor
    reverse_log_weights: torch.Tensor
    forward: AnnealedLogLikelihood
    data: tuple[torch.Tensor, ...]

    @property
    def gap(self) -> torch.Tensor:
        """upper - lower per datapoint: how far forward AIS may be from log p(x) at most."""
        return self.upper - self.lower

    @property
    def mean_gap(self) -> float:
        return self.gap.mean().item()

    def summary(self) -> str:
        return (
            f"BDMC {self.forward.num_steps} steps, {self.forward.num_chains} chains on "
            f"{self.lower.numel()} simulated datapoints: lower {self.lower.mean().item():.2f}, "
            f"upper {self.upper.mean().item():.2f}; gap {self.mean_gap:.2f} nats (max "
            f"{self.gap.max().item():.2f}), acceptance {self.forward.acceptance.mean().item():.2f}"
        )


def bdmc(
    model,
    guide,
    data,
    num_data: int | None = None,
    num_steps: int = 1000,
    num_chains: int = 4,
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
) -> BidirectionalBounds:
    """Sandwich log p(x) on ``num_data`` datapoints simulated from the model (Grosse et al.).

    ``data`` (in any form :func:`pvae.infer.ais.ais` takes; checked, every row, and converted
    to the model's dtype as there) are real rows that the
    simulation starts from: the model is run on them with its observed site sampled instead of
    observed (``poutine.uncondition``), so only their shape counts, and any other tensors
    (the labels of a conditional model) are kept; rows are cycled up to ``num_data`` (default:
    as many as given). The model must observe ``data[0]`` itself, in one site (``obs=x``),
    as pvae's VAEs do; other models are refused. Then forward AIS on the simulated x gives
    ``lower``, reverse AIS from the simulated z gives ``upper``; the other arguments are
    :func:`pvae.infer.ais.ais`'s, ``seed``, ``distributed``, ``device`` and ``progress``
    included (:mod:`pvae.infer.evaluation`). Under torchrun (or ``distributed=True``, new)
    every process simulates all the data from the same seed, sandwiches its share of the
    data chunks, and all get the whole result, the single process's; ``num_data`` must be a
    positive integer or None (a bool is refused, as for every count).

    Example::

        >>> bounds = bdmc(vae.model, vae.guide, test_x[:100], seed=0)  # doctest: +SKIP
        >>> bounds.mean_gap  # doctest: +SKIP
        0.81
    """
    settings = make_settings(
        num_steps, num_chains, schedule, init, leapfrog_steps, step_size, target_acceptance,
        adaptation_chains, chain_chunk,
    )  # fmt: skip
    check_count("num_data", num_data, optional=True)
    check_count("data_chunk", data_chunk, optional=True)
    frontend = {"seed": seed, "distributed": distributed, "device": device, "progress": progress}
    with evaluating(model, guide, data, **frontend) as evaluation:
        settings = dataclasses.replace(settings, seed=evaluation.seed)
        data_chunk = default_data_chunk(data_chunk, settings, evaluation.device)
        problem = inspect_latents(model, guide, evaluation.rows(0, 2))
        problem = dataclasses.replace(problem, backend=potential_backend(compile, settings))
        num_data = evaluation.num_data if num_data is None else num_data
        rows = torch.arange(num_data) % evaluation.num_data
        template = tuple(t[rows].to(evaluation.device) for t in evaluation.tensors)
        # Every process simulates all the data from the same seed, and sandwiches its share.
        seed_torch(settings.seed, -2, 0, 0)
        simulated, latents = _simulate(problem, template)
        start, end = evaluation.cluster.rows(num_data, multiple=data_chunk)
        shard = _sandwich_rows(problem, settings, evaluation, simulated, latents, start, end,
                               data_chunk)  # fmt: skip
    log_w, acceptance, last, reverse_w = evaluation.gather(shard)
    forward = AnnealedLogLikelihood.of_chains(
        log_w, acceptance, last, num_steps, init, evaluation.data_dim
    )
    upper = -log_mean_weight(reverse_w)
    simulated = tuple(t.cpu() for t in simulated)
    return BidirectionalBounds(forward.per_datapoint, upper, reverse_w, forward, simulated)


def _sandwich_rows(problem, settings, evaluation, simulated, latents, start, end, data_chunk):
    """Forward log-weights, acceptance, last step sizes and reverse log-weights of the
    simulated rows start:end, chunk by chunk."""
    chunks = range(start, end, data_chunk)
    groups = 2 * -(-settings.num_chains // settings.chain_chunk) + bool(settings.adaptation_chains)
    bar = evaluation.bar(len(chunks) * settings.num_steps * groups, desc="BDMC", unit="step",
                         leave=False)  # fmt: skip
    with bar:
        parts = [_sandwich(problem, settings, simulated, latents, n0, data_chunk, bar.update)
                 for n0 in chunks]  # fmt: skip
    if not parts:  # more processes than data chunks
        empty = torch.zeros(0, dtype=torch.float64, device="cpu")
        weights = empty.reshape(0, settings.num_chains)
        return weights, empty, empty, weights
    return tuple(torch.cat([part[i] for part in parts]) for i in range(4))


def _sandwich(problem, settings, simulated, latents, n0, data_chunk, tick):
    """Forward AIS (log-weights, acceptance, last sizes) and reverse log-weights of a chunk."""
    n1 = min(n0 + data_chunk, simulated[0].shape[0])
    batch = tuple(t[n0:n1] for t in simulated)
    log_w, acceptance, last, sizes = score_chunk(problem, settings, batch, n0, tick)
    given = {name: value.narrow(axis, n0, n1 - n0) for name, (value, axis) in latents.items()}
    reverse_w, _, _, _ = score_chunk(
        problem, settings, batch, n0, tick, reverse_from=(given, sizes)
    )
    return log_w, acceptance, last, reverse_w


def _simulate(problem, template):
    """(x, z) drawn from the model: the simulated data tensors and each latent's value
    [1, ..., datapoints, ...] with its data axis."""
    x = template[0]
    observed = [
        (name, site)
        for name, site in sample_sites(poutine.trace(problem.model).get_trace(*template))
        if site["is_observed"]
    ]
    if len(observed) != 1 or not _observes(observed[0][1]["value"], x):
        names = ", ".join(repr(name) for name, _ in observed) or "none"
        raise ValueError(
            "bdmc simulates data by sampling the model's observed site in place of data[0], "
            f"so the model must observe data[0] itself in exactly one site (obs=x); its "
            f"observed sites: {names}. Simulate (x, z) yourself and run pvae.ais on x instead"
        )
    trace = poutine.trace(poutine.uncondition(problem.model)).get_trace(*template)
    name = observed[0][0]
    simulated = (trace.nodes[name]["value"].reshape(x.shape).to(x.dtype),) + template[1:]
    num_data = x.shape[0]
    latents = {
        name: full_value(trace.nodes[name], problem.nesting, 1, num_data)
        for name in problem.supports
    }
    return simulated, latents


def _observes(value: torch.Tensor, x: torch.Tensor) -> bool:
    return value.numel() == x.numel() and torch.equal(value.reshape(x.shape).to(x.dtype), x)
