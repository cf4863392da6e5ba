"""Importance-weighted bounds on log p(x), per datapoint, with PSIS diagnostics.

For a datapoint x and K draws z_k ~ q(z|x), the IWAE bound (Burda, Grosse & Salakhutdinov,
"Importance Weighted Autoencoders", ICLR 2016) is

    IWAE_K(x) = log (1/K) sum_k w_k,   w_k = p(x, z_k) / q(z_k|x),

a lower bound on log p(x) in expectation that tightens as K grows; K = 1 is the ELBO. How much
to trust it is read from the weights: their effective sample size and the Pareto k-hat of
their right tail (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
Sampling", JMLR 2024); with k-hat above min(1 - 1/log10 K, 0.7) the estimate is unreliable.

It works for any Pyro model/guide pair whose per-datapoint sites sit in
``pyro.plate("data", ...)``; :func:`log_likelihood` is the entry point.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine

from pvae.infer.capture import ReplayBySignature, compile_mode
from pvae.infer.estimates import PerDatapointEstimate
from pvae.infer.evaluation import check_count, evaluating, seed_torch
from pvae.infer.log_weights import (
    data_frame,
    enumerated_log_density,
    enumerating,
    full_value,
    guide_enumeration_dims,
    model_log_joint,
    per_datapoint_log_prob,
    sample_sites,
    summed_log_weights,
)
from pvae.infer.plates import PARTICLE_PLATE, enumerated, inspect_model, trace_pair
from pvae.infer.sources import rows_on

# Random draws are made in canonical blocks of datapoints x particles, each block by its own
# guide call under its own seed, so that the numbers do not depend on the chunk sizes.
_DATA_BLOCK = 10
_PARTICLE_BLOCK = 1000
# Default latent draws per model call: a few hundred MB for an MNIST-sized decoder on the CPU.
_DRAWS_PER_CALL = {"cpu": 100_000, "cuda": 500_000}
_MAX_LOG_WEIGHTS = 50_000_000
# PSIS fits a generalized Pareto to the largest ceil(min(K/5, 3 sqrt(K))) weights, and needs
# more than 4 of them.
_PSIS_MIN_SAMPLES = 21


@dataclass(frozen=True, eq=False)
class LogLikelihood(PerDatapointEstimate):
    """Per-datapoint IWAE estimates of log p(x) (nats) and their diagnostics.

    ``per_datapoint``, ``elbo_per_datapoint``, ``pareto_k`` and ``ess`` are float64 CPU
    tensors of shape [N]. ``pareto_k`` is NaN where it is undefined (fewer than about 21
    samples, weights without a tail) or was not computed (see ``khat_note``).

    Example::

        >>> result = log_likelihood(vae.model, vae.guide, test_x)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        IWAE_5000 -86.31 ± 0.41 nats (0.1588 bits/dim), ELBO -90.12; k̂ > 0.70 for 3.1% ...
    """

    per_datapoint: torch.Tensor
    elbo_per_datapoint: torch.Tensor
    pareto_k: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    data_dim: int
    khat_note: str = ""

    @property
    def elbo(self) -> float:
        return self.elbo_per_datapoint.mean().item()

    @property
    def khat_threshold(self) -> float:
        """Above this k-hat the IWAE estimate is unreliable (Vehtari et al., 2024)."""
        if self.num_samples < 2:
            return -math.inf
        return min(1 - 1 / math.log10(self.num_samples), 0.7)

    @property
    def fraction_khat_above(self) -> float:
        """Fraction of the datapoints with a defined k-hat whose k-hat is above the threshold."""
        defined = self.pareto_k[~torch.isnan(self.pareto_k)]
        if defined.numel() == 0:
            return math.nan
        return (defined > self.khat_threshold).double().mean().item()

    def summary(self) -> str:
        """One line: the bound, its standard error, bits/dim, the ELBO and the k-hat check."""
        line = (
            f"IWAE_{self.num_samples} {self.mean:.2f} ± {self.standard_error:.2f} nats "
            f"({self.bits_per_dim:.4f} bits/dim), ELBO {self.elbo:.2f}; "
        )
        fraction = self.fraction_khat_above
        if math.isnan(fraction):
            return line + f"k̂ not available{f' ({self.khat_note})' if self.khat_note else ''}"
        return line + f"k̂ > {self.khat_threshold:.2f} for {100 * fraction:.1f}% of datapoints"


def log_likelihood(
    model,
    guide,
    data,
    num_samples: int = 5000,
    *,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    seed: int | None = None,
    max_log_weights: int = _MAX_LOG_WEIGHTS,
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    compile: bool | str = "auto",
) -> LogLikelihood:
    """IWAE_K estimate of log p(x) for every datapoint, with the ELBO, ESS and Pareto k-hat.

    ``data`` (a tensor, a numpy array, a tuple of those, a ``Dataset`` or a ``DataLoader``;
    first dimension: datapoints) is passed as ``model(*batch)`` and ``guide(*batch)``. Every
    sample site of both must sit in ``pyro.plate("data", ...)``: a global latent has no
    per-datapoint bound. The bound is on log p(x) of the model itself: ``ScaleDataPlate``'s
    minibatch scale is left out, and a scale the model sets (``poutine.scale``) or a
    subsampled plate inside the data plate is refused with a ``ValueError`` naming the site.
    Model latents marked ``infer={"enumerate": "parallel"}`` are summed out of each weight
    exactly. A discrete latent y the guide enumerates (Kingma et al.'s M2, where q(z | x, y)
    depends on y) is summed inside each weight, with one draw of z per value of y:
    w_k = Σ_y p(x, y, z_k^y) / q(z_k^y | x, y), z_k^y ~ q(z | x, y), an unbiased estimate of
    p(x) since each term's expectation is p(x, y); q(y | x) is no part of it, the guide's y
    site only gives y's values. The ELBO column is then this weight's K = 1 bound, which is
    at least the M2 ELBO (Kingma, Rezende, Mohamed & Welling, "Semi-Supervised Learning with
    Deep Generative Models", NeurIPS 2014), and ESS and k-hat are those of these weights.

    Exactly K particles are used per datapoint, evaluated ``particle_chunk`` particles x
    ``data_chunk`` datapoints at a time, and combined by a streaming logsumexp in float64.
    Draws are made per canonical block of 10 datapoints x 1000 particles, each under a seed
    derived from ``seed`` and the block, so a given ``seed`` (on a given device) yields the
    same numbers for any chunk sizes, up to float rounding of the model. Guide draws are
    held per whole block (about ``data_chunk * max(particle_chunk, 1000)`` latent draws), and
    chunks in multiples of the blocks avoid repeating guide calls. k-hat needs the K
    log-weights of a data chunk at once: it is computed when ``data_chunk * K <=
    max_log_weights`` and is NaN otherwise.

    Data, ``seed``, ``distributed``, ``device`` and ``progress`` are prepared as for every
    estimator (:mod:`pvae.infer.evaluation`): the data checked, every row, and converted to
    the model's dtype; ``seed=None`` draws the seed from torch's global generator (so
    ``pyro.set_rng_seed`` fixes it too), a given seed leaves the global generator untouched,
    and a bool (``seed=True``, accepted as 1 before) is refused; under torchrun (or
    ``distributed=True``) each process scores a contiguous share of the datapoints and every
    process gets the gathered result, the same as a single process's; ``device`` (``"auto"``,
    ``"cuda"``, ...; default: the data's device) is where model and guide run, data in host
    memory copied there a chunk at a time; ``progress`` shows a bar of the datapoints scored
    on the main process (default: at a terminal or in a notebook, not in CI).
    ``num_samples`` must be a positive integer, the chunks positive integers or None (a
    bool is refused, as for every count). ``compile`` (``"auto"``, ``"off"``, ``"capture"``,
    ``"inductor"``; True is ``"inductor"``) captures the model's part of the weights once per
    chunk shape and replays it without Pyro's runtime (:mod:`pvae.infer.capture`); ``"auto"``
    does on a GPU, where that runtime is most of a chunk's time, and not on the CPU, where a
    chunk's arithmetic dwarfs it.

    Example::

        >>> result = log_likelihood(vae.model, vae.guide, test_x, seed=0)  # doctest: +SKIP
        >>> result.mean, result.fraction_khat_above  # doctest: +SKIP
        (-86.31, 0.031)
    """
    check_count("num_samples", num_samples)
    check_count("particle_chunk", particle_chunk, optional=True)
    check_count("data_chunk", data_chunk, optional=True)
    mode = compile_mode(compile)
    frontend = {"seed": seed, "distributed": distributed, "device": device, "progress": progress}
    with evaluating(model, guide, data, **frontend) as evaluation:
        if mode == "auto":
            mode = "capture" if evaluation.device.type == "cuda" else "off"
        particle_chunk, data_chunk = _chunks(num_samples, particle_chunk, data_chunk, evaluation)
        # Each process scores a contiguous share of the datapoints, cut at draw blocks so that
        # every datapoint gets the draws it would get in a single process.
        start, end = evaluation.share(multiple=_DATA_BLOCK)
        traces = trace_pair(model, guide, *evaluation.rows(0, 2))
        nesting = inspect_model(model, guide, traces=traces)
        enumerates = any(enumerated(site) for _, site in sample_sites(traces[0]))
        with evaluation.bar(end - start, unit="datapoint") as bar:
            shard = _score_rows(
                model,
                guide,
                tuple(t[start:end] for t in evaluation.tensors),
                num_samples,
                nesting,
                evaluation.seed,
                start // _DATA_BLOCK,
                enumerates,
                particle_chunk,
                data_chunk,
                max_log_weights,
                evaluation.device,
                bar,
                None if mode == "off" else mode,
            )
    per_datapoint, elbo, ess, khat, notes = evaluation.gather(shard)
    khat_note = next((note for note in notes if note), "")
    if num_samples < _PSIS_MIN_SAMPLES:
        khat_note = f"PSIS needs K >= {_PSIS_MIN_SAMPLES}"
    return LogLikelihood(
        per_datapoint=per_datapoint,
        elbo_per_datapoint=elbo,
        pareto_k=khat,
        ess=ess,
        num_samples=num_samples,
        data_dim=evaluation.data_dim,
        khat_note=khat_note,
    )


def _chunks(num_samples, particle_chunk, data_chunk, evaluation) -> tuple[int, int]:
    """The chunk sizes, where not given: about ``_DRAWS_PER_CALL`` latent draws per call."""
    if particle_chunk is None:
        particle_chunk = min(num_samples, _PARTICLE_BLOCK)
    if data_chunk is None:
        draws_per_call = _DRAWS_PER_CALL["cuda" if evaluation.device.type == "cuda" else "cpu"]
        # Count the guide's cached blocks too: they hold whole blocks of particles.
        particles_held = max(particle_chunk, min(num_samples, _PARTICLE_BLOCK))
        data_chunk = max(1, draws_per_call // particles_held // _DATA_BLOCK) * _DATA_BLOCK
    return particle_chunk, data_chunk


def _score_rows(
    model,
    guide,
    tensors,
    num_samples,
    nesting,
    seed,
    first_block,
    enumerates,
    particle_chunk,
    data_chunk,
    max_log_weights,
    device,
    bar,
    backend=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """IWAE, ELBO, ESS and k-hat (CPU float64) of these rows; block ids start at first_block."""
    num_data = tensors[0].shape[0]
    per_datapoint, elbo, ess = (
        torch.empty(num_data, dtype=torch.float64, device="cpu") for _ in range(3)
    )
    khat = torch.full((num_data,), math.nan, dtype=torch.float64, device="cpu")
    khat_note = ""
    kind = _EnumeratedGuideDraws if enumerates else _GuideDraws
    draws = kind(guide, tensors, num_samples, nesting, seed, device, first_block)

    def model_part(batch, values, log_q):
        """log w [particles, datapoints] from the guide's draws: the model's part."""
        if enumerates:
            return summed_log_weights(model, batch, values, log_q, nesting)
        return _model_log_prob(model, batch, values, log_q.shape[0], nesting) - log_q

    if backend is not None:
        model_part = ReplayBySignature(model_part, backend, "the model's log-weights")
    for n0 in range(0, num_data, data_chunk):
        n1 = min(n0 + data_chunk, num_data)
        batch = rows_on(tensors, n0, n1, device)
        stats = _LogWeightStats(n1 - n0, device)
        keep = _PSIS_MIN_SAMPLES <= num_samples <= max_log_weights // (n1 - n0)
        kept = []
        for p0 in range(0, num_samples, particle_chunk):
            p1 = min(p0 + particle_chunk, num_samples)
            values, log_q = draws.chunk(n0, n1, p0, p1)
            log_w = model_part(batch, values, log_q)
            stats.update(log_w)
            if keep:
                kept.append(log_w.float().cpu())
        per_datapoint[n0:n1] = stats.log_mean_weight().cpu()
        elbo[n0:n1] = stats.mean_log_weight().cpu()
        ess[n0:n1] = stats.ess().cpu()
        bar.update(n1 - n0)
        if keep:
            khat[n0:n1] = torch.from_numpy(_psis_khat(torch.cat(kept).T.numpy()))
        elif num_samples >= _PSIS_MIN_SAMPLES:
            khat_note = (
                f"not computed where data_chunk x K exceeds max_log_weights="
                f"{max_log_weights}: lower data_chunk or raise max_log_weights"
            )
    return per_datapoint, elbo, ess, khat, khat_note


class _LogWeightStats:
    """Per-datapoint logsumexp, sum and ESS of log-weights fed in particle chunks [P, N].

    Float64 sums of exp(log w - running max), rescaled whenever the max grows, so that no
    chunk has to hold all K particles and nothing overflows.
    """

    def __init__(self, num_data: int, device):
        zeros = torch.zeros(num_data, dtype=torch.float64, device=device)
        self.max = torch.full_like(zeros, -math.inf)
        self.sum_exp, self.sum_exp2, self.sum = zeros, zeros.clone(), zeros.clone()
        self.count = 0

    def update(self, log_w: torch.Tensor) -> None:
        log_w = log_w.double()
        new_max = torch.maximum(self.max, log_w.max(0).values)
        # While every weight is 0 (log w = -inf) there is nothing to rescale: shift by 0.
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.max - shift)
        self.sum_exp = self.sum_exp * rescale + torch.exp(log_w - shift).sum(0)
        self.sum_exp2 = self.sum_exp2 * rescale**2 + torch.exp(2 * (log_w - shift)).sum(0)
        self.sum = self.sum + log_w.sum(0)
        self.max = new_max
        self.count += log_w.shape[0]

    def log_mean_weight(self) -> torch.Tensor:
        return self.max + torch.log(self.sum_exp) - math.log(self.count)

    def mean_log_weight(self) -> torch.Tensor:
        return self.sum / self.count

    def ess(self) -> torch.Tensor:
        """(sum w)^2 / sum w^2: K for equal weights, 1 when one weight dominates."""
        return self.sum_exp**2 / self.sum_exp2


class _GuideDraws:
    """Guide draws and log q for any chunk, made per canonical block under the block's seed."""

    def __init__(self, guide, tensors, num_samples, nesting, seed, device, first_block=0):
        self.guide, self.tensors, self.nesting, self.seed = guide, tensors, nesting, seed
        self.first_block = first_block  # global index of the first data block here
        self.num_data, self.num_samples = tensors[0].shape[0], num_samples
        self.device = device
        self.cache: dict[tuple[int, int], tuple[dict, dict, torch.Tensor]] = {}

    def chunk(self, n0: int, n1: int, p0: int, p1: int) -> tuple[dict, torch.Tensor]:
        """Latent values (name -> [p1-p0, ..., n1-n0, ...]) and log q [p1-p0, n1-n0]."""
        data_blocks = range(n0 // _DATA_BLOCK, (n1 - 1) // _DATA_BLOCK + 1)
        particle_blocks = range(p0 // _PARTICLE_BLOCK, (p1 - 1) // _PARTICLE_BLOCK + 1)
        # Keep only the blocks this chunk needs: consecutive chunks often share them.
        self.cache = {
            (i, j): self.cache[i, j] if (i, j) in self.cache else self._block(i, j)
            for i in data_blocks
            for j in particle_blocks
        }
        rows = []
        for i in data_blocks:
            pieces = []
            for j in particle_blocks:
                values, axes, log_q = self.cache[i, j]
                start = j * _PARTICLE_BLOCK
                lo, hi = max(p0 - start, 0), min(p1 - start, _PARTICLE_BLOCK)
                pieces.append(({k: v[lo:hi] for k, v in values.items()}, log_q[lo:hi]))
            values = {k: torch.cat([p[0][k] for p in pieces]) for k in pieces[0][0]}
            log_q = torch.cat([p[1] for p in pieces])
            start = i * _DATA_BLOCK
            lo, hi = max(n0 - start, 0), min(n1 - start, _DATA_BLOCK)
            values = {k: v.narrow(axes[k], lo, hi - lo) for k, v in values.items()}
            rows.append((values, log_q[:, lo:hi]))
        # A site's data axis is the same in every block.
        values = {k: torch.cat([r[0][k] for r in rows], dim=axes[k]) for k in rows[0][0]}
        return values, torch.cat([r[1] for r in rows], dim=1)

    def _block(self, i: int, j: int) -> tuple[dict, dict, torch.Tensor]:
        n0, p0 = i * _DATA_BLOCK, j * _PARTICLE_BLOCK
        n1 = min(n0 + _DATA_BLOCK, self.num_data)
        num_particles = min(_PARTICLE_BLOCK, self.num_samples - p0)
        seed_torch(self.seed, i + self.first_block, j)
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(self.nesting + 1)):
            trace = poutine.trace(self.guide).get_trace(*rows_on(self.tensors, n0, n1, self.device))
        log_q = torch.zeros(num_particles, n1 - n0, dtype=torch.float64, device=self.device)
        values, axes = {}, {}
        for name, site in sample_sites(trace):
            if enumerated(site):
                raise ValueError(
                    f"the guide enumerates {name!r}, which no guide trace before showed: "
                    "mark it infer={'enumerate': 'parallel'} on every run"
                )
            log_q += per_datapoint_log_prob(site, self.nesting, num_particles, n1 - n0).double()
            if not site["is_observed"]:
                values[name], axes[name] = full_value(site, self.nesting, num_particles, n1 - n0)
        return values, axes, log_q


class _EnumeratedGuideDraws(_GuideDraws):
    """Guide draws for a guide that enumerates a discrete latent y (Kingma et al.'s M2).

    The guide runs under Pyro's enumeration handler, as in ``TraceEnum_ELBO``: y takes all
    its values along a dimension left of the particle plate, and z ~ q(z | x, y) is drawn
    once per value of y and particle. log q is that of the drawn sites alone, [*y, particles,
    datapoints]: q(y | x) is no part of the weight (y is summed, not drawn). Blocks are held
    particles first, so that :meth:`_GuideDraws.chunk` cuts them as any other.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.enumeration_dims, self.enumerated_values = 0, {}

    def chunk(self, n0: int, n1: int, p0: int, p1: int) -> tuple[dict, torch.Tensor]:
        """Values (name -> [*y, p1-p0, ...]), y's own values, and log q [*y, p1-p0, n1-n0]."""
        values, log_q = super().chunk(n0, n1, p0, p1)
        dims = self.enumeration_dims
        values = {name: value.movedim(0, dims) for name, value in values.items()}
        log_q = log_q.movedim((0, 1), (dims, dims + 1))
        return {**values, **self.enumerated_values}, log_q

    def _block(self, i: int, j: int) -> tuple[dict, dict, torch.Tensor]:
        n0, p0 = i * _DATA_BLOCK, j * _PARTICLE_BLOCK
        n1 = min(n0 + _DATA_BLOCK, self.num_data)
        num_particles, nesting = min(_PARTICLE_BLOCK, self.num_samples - p0), self.nesting
        seed_torch(self.seed, i + self.first_block, j)
        with (
            poutine.enum(first_available_dim=-(nesting + 2)),
            pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)),
        ):
            trace = poutine.trace(self.guide).get_trace(*rows_on(self.tensors, n0, n1, self.device))
        sites = list(sample_sites(trace))
        dims = guide_enumeration_dims(sites, nesting)
        drawn = [(name, site) for name, site in sites if not enumerated(site)]
        shape, enumerated_values = [1] * dims, {}
        for name, site in sites:
            if enumerated(site):
                dim, value = site["infer"]["_enumerate_dim"], site["value"]
                batch_dims = value.dim() - site["fn"].event_dim
                shape[dims + dim + nesting + 1] = value.size(dim - site["fn"].event_dim)
                # y's support alone: a guide that expands it (config_enumerate(expand=True),
                # as Pyro's ss_vae) gives it this block's shape, which the next one lacks.
                support = [slice(None) if axis == batch_dims + dim else slice(0, 1)
                           for axis in range(batch_dims)]  # fmt: skip
                enumerated_values[name] = value[tuple(support)]
        # y's values are its support, the same in every block.
        self.enumeration_dims, self.enumerated_values = dims, enumerated_values
        log_q = enumerated_log_density(drawn, nesting, dims).double()
        log_q = log_q.expand(*shape, num_particles, n1 - n0)
        values, axes = {}, {}
        for name, site in drawn:
            if not site["is_observed"]:
                value, axes[name] = _enumerated_value(site, nesting, dims, num_particles, n1 - n0)
                values[name] = value.movedim(dims, 0)
        return values, axes, log_q.movedim((dims, dims + 1), (0, 1))


def _enumerated_value(site, nesting: int, dims: int, num_particles: int, num_data: int):
    """A drawn value [*y, particles, ..., datapoints, ...]; returns it and its data axis."""
    value, event_dim = site["value"], site["fn"].event_dim
    value = value.reshape((1,) * (dims + nesting + 1 + event_dim - value.dim()) + value.shape)
    particle_axis, data_axis = dims, dims + nesting + 1 + data_frame(site).dim
    shape = list(value.shape)
    shape[particle_axis], shape[data_axis] = num_particles, num_data
    return value.expand(shape), data_axis


def _model_log_prob(model, batch, values, num_particles: int, nesting: int) -> torch.Tensor:
    """log p(x, z) [particles, datapoints] of the model replayed on the guide's values."""
    guide_trace = poutine.Trace()
    for name, value in values.items():
        guide_trace.add_node(name, type="sample", is_observed=False, value=value, infer={})
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        replayed = poutine.replay(enumerating(model, nesting), trace=guide_trace)
        trace = poutine.trace(replayed).get_trace(*batch)
    return model_log_joint(trace, nesting, num_particles, batch[0].shape[0]).double()


def _psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat of each row of ``log_weights`` [N, K] (PSIS, Vehtari et al., 2024).

    Uses legacy ArviZ's ``psislw``, which takes log-weights with samples along the last axis.
    NaN where PSIS has no tail to fit: K < 21, or fewer than 5 distinct largest weights.

    Example::

        >>> _psis_khat(np.random.default_rng(0).normal(size=(2, 1000))).shape
        (2,)
    """
    with warnings.catch_warnings():
        # Legacy ArviZ announces its 1.0 refactor with a FutureWarning on import; nothing else.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz
    log_weights = np.array(log_weights, dtype=np.float64)
    if log_weights.shape[-1] < _PSIS_MIN_SAMPLES:
        return np.full(log_weights.shape[:-1], np.nan)
    _, khat = arviz.psislw(log_weights)
    khat = np.atleast_1d(np.asarray(khat, dtype=np.float64))
    return np.where(np.isfinite(khat), khat, np.nan)
