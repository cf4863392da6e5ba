"""Training objectives: Pyro's ELBOs and importance-weighted bounds, by name."""

from __future__ import annotations

import math

import pyro
import pyro.infer
import torch
from pyro import poutine

from pvae.infer.fast_elbo import ReparameterizedELBO
from pvae.infer.fast_elbo import supports as supports_fast_elbo
from pvae.infer.log_weights import (
    checked_scale,
    data_frame,
    enumerating,
    guide_enumerated_log_weights,
    guide_log_density,
    minibatch_scale,
    model_log_joint,
    particle_log_weights,
    sample_sites,
    single_plain_site,
)
from pvae.infer.plates import (
    DATA_PLATE,
    PARTICLE_PLATE,
    ScaleDataPlate,
    enumerated,
    inspect_model,
)
from pvae.infer.recording import record_sites

__all__ = ["DATA_PLATE", "ScaleDataPlate", "choose_objective", "inspect_model", "make_objective"]


class _ParticleObjective:
    """Base of the objectives computed from per-datapoint log-weights [particles, batch].

    They need every site inside the ``"data"`` plate and reparameterized guide latents. The
    minibatch scale (``num_data / batch_size`` under :func:`pvae.fit`) multiplies the sum of
    the per-datapoint bounds, outside any logsumexp: scaling inside it, as Pyro's
    ``RenyiELBO`` does, changes the bound itself. Scales the model sets on its own sites
    (``poutine.scale``) weigh their log-densities inside each log-weight; model latents
    marked for parallel enumeration are summed out of it.
    """

    stop_guide_parameters = False
    subtract_score = True

    def __init__(self, num_particles: int, max_plate_nesting: int):
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting
        # Whether the model enumerates: found on the first call (its structure is fixed).
        self.enumerates: bool | None = None

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        log_w, guide_trace, model_trace = particle_log_weights(
            model,
            guide,
            args,
            self.num_particles,
            self.max_plate_nesting,
            self.stop_guide_parameters,
            enumerate_model=self.enumerates is not False,
            subtract_score=self.subtract_score,
        )
        if self.enumerates is None:
            self.enumerates = any(enumerated(site) for _, site in sample_sites(model_trace))
        _check_reparameterized(guide_trace, type(self).__name__)
        per_datapoint = self._per_datapoint(log_w, guide_trace, model, guide, args)
        return -minibatch_scale(model_trace) * per_datapoint.sum()

    def loss(self, model, guide, *args) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args).item()


class IWAE(_ParticleObjective):
    """Importance-weighted bound, log (1/K) Σ_k w_k per datapoint (Burda et al., 2016).

    Its plain reparameterized gradient; the guide's gradient gets noisier as K grows
    (Rainforth et al., 2018), which :class:`DReG` fixes.

    Example::

        >>> loss = IWAE(num_particles=5, max_plate_nesting=1)
        >>> loss.differentiable_loss(vae.model, vae.guide, x)  # doctest: +SKIP
    """

    def _per_datapoint(self, log_w, guide_trace, model, guide, args):
        return torch.logsumexp(log_w, 0) - math.log(self.num_particles)


class GuideEnumeratedIWAE(IWAE):
    """The IWAE bound of a guide that enumerates a discrete latent y (Kingma et al.'s M2):
    log (1/K) Σ_k Σ_y p(x, y, z_k^y) / q(z_k^y | x, y), with z_k^y ~ q(z | x, y) for every y,
    its plain reparameterized gradient.

    Σ_y p(x, y, z^y) / q(z^y | x, y) is an unbiased estimate of p(x) with y summed exactly,
    so q(y | x) is no part of the bound and gets no gradient from it: for M2 the
    classification term (a ``pyro.factor``) is what trains it. STL and DReG have no such
    form (their dropped terms are not zero-mean once y is summed inside the logarithm).

    Example::

        >>> loss = GuideEnumeratedIWAE(num_particles=5, max_plate_nesting=1)
        >>> loss.differentiable_loss(m2.model, m2.guide, x)  # doctest: +SKIP
    """

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        log_w, guide_trace = guide_enumerated_log_weights(
            model, guide, args, self.num_particles, self.max_plate_nesting
        )
        _check_reparameterized(guide_trace, type(self).__name__)
        per_datapoint = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return -minibatch_scale(guide_trace) * per_datapoint.sum()


class DReG(IWAE):
    """The IWAE bound with doubly reparameterized guide gradients (Tucker et al., 2019).

    The guide's gradient is Σ_k w̃_k² ∂log w_k/∂z_k dz_k/dφ, the partial in z_k taken at
    fixed φ (w̃ the normalized weights): unbiased for the IWAE gradient, without the score
    term whose variance grows with K. The model's gradient is IWAE's, Σ_k w̃_k ∇θ log w_k.
    One backward pass gives both: the surrogate Σ_k w̃_k log w_k (w̃ held fixed) passes w̃_k
    to the latents, and one more factor w̃_k is applied on the way from log w_k to z_k only,
    never along the guide's own path from z2 back to z1 (where a hook on every latent would
    apply it twice). For a guide of one latent site that is a hook on z_k; for guides whose
    latents depend on each other, model and guide are evaluated on a copy of the draws that
    scales its gradient by w̃_k, and the score term is removed with a run on detached draws.
    """

    stop_guide_parameters = True
    # For dependent latents the surrogate removes the score term itself, and only log_w's
    # value is used: particle_log_weights need not run the guide once more for it.
    subtract_score = False

    def _per_datapoint(self, log_w, guide_trace, model, guide, args):
        weights = torch.softmax(log_w, 0).detach()
        bound = torch.logsumexp(log_w.detach(), 0) - math.log(self.num_particles)
        if not single_plain_site(guide_trace):
            surrogate = self._dependent_surrogate(weights, guide_trace, model, guide, args)
            return bound + (surrogate - surrogate.detach())
        ((_, site),) = sample_sites(guide_trace)
        if site["value"].requires_grad:
            site["value"].register_hook(_multiply_by(self._weights_like(site, weights)))
        surrogate = (weights * log_w).sum(0)
        return bound + (surrogate - surrogate.detach())

    def _dependent_surrogate(self, weights, guide_trace, model, guide, args):
        """Σ_k w̃_k log w_k(z̃_k) + Σ_k w̃_k log q(sg(z_k)), z̃ the draws with gradients times w̃."""
        values = {
            name: _ScaleGradient.apply(site["value"], self._weights_like(site, weights))
            for name, site in sample_sites(guide_trace)
            if not site["is_observed"]
        }
        num_data = args[0].shape[0]
        nesting = self.max_plate_nesting
        with pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-(nesting + 1)):
            enumerated_model = enumerating(model, nesting) if self.enumerates else model
            conditioned = poutine.condition(enumerated_model, data=values)
            model_trace = record_sites(conditioned, args)
        log_p = model_log_joint(model_trace, nesting, self.num_particles, num_data, True)
        log_q = guide_log_density(guide, args, None, nesting, self.num_particles, values=values)
        score = guide_log_density(
            guide, args, guide_trace, nesting, self.num_particles, detach_values=True
        )
        return (weights * (log_p - log_q + score)).sum(0)

    def _weights_like(self, site, weights):
        value, event_dim = site["value"], site["fn"].event_dim
        batch_dims = value.dim() - event_dim
        if batch_dims != self.max_plate_nesting + 1:
            raise ValueError(
                f"guide site {site['name']!r} is not expanded over the particle and data "
                "plates: DReG needs one latent per particle and datapoint"
            )
        shape = [1] * value.dim()
        shape[0] = weights.shape[0]
        shape[batch_dims + data_frame(site).dim] = weights.shape[1]
        return weights.reshape(shape)


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``factor`` on the way back."""

    @staticmethod
    def forward(ctx, value, factor):
        ctx.save_for_backward(factor)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def _multiply_by(factor: torch.Tensor):
    return lambda grad: grad * factor


class StickingTheLanding(_ParticleObjective):
    """The ELBO with the "sticking the landing" guide gradient (Roeder et al., 2017).

    log q is evaluated with its parameters held fixed, which drops the score term: still
    unbiased, and of zero variance when q equals the exact posterior.
    """

    stop_guide_parameters = True

    def _per_datapoint(self, log_w, guide_trace, model, guide, args):
        return log_w.mean(0)


class EnumeratedELBO(_ParticleObjective):
    """``TraceEnum_ELBO`` for a model that enumerates and a reparameterized guide, from
    per-datapoint log-weights: E_q[log Σ_c p(x, z, c) − log q(z | x)], the model's
    enumerated latents c summed out of each weight (one light record of the sites a step,
    no trace graph, no general contraction where each c belongs to one datapoint).

    :func:`choose_objective` takes it where its numbers are TraceEnum_ELBO's (a test compares
    losses and gradients on shared draws): every site in the ``"data"`` plate, none scaled by
    the model, no enumeration in the guide.

    Example::

        >>> loss = EnumeratedELBO(num_particles=1, max_plate_nesting=1)
        >>> loss.differentiable_loss(gmvae.model, gmvae.guide, x)  # doctest: +SKIP
    """

    def __init__(self, num_particles: int, max_plate_nesting: int):
        super().__init__(num_particles, max_plate_nesting)
        self.enumerates = True

    def _per_datapoint(self, log_w, guide_trace, model, guide, args):
        return log_w.mean(0)


PYRO_OBJECTIVES = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
}
PARTICLE_OBJECTIVES = {"stl": StickingTheLanding, "iwae": IWAE, "dreg": DReG}
OBJECTIVES = [*PYRO_OBJECTIVES, *PARTICLE_OBJECTIVES]


def choose_objective(name: str, num_particles: int, nesting: int, traces: tuple):
    """The objective :func:`pvae.fit` trains with, for a model/guide of this structure.

    ``traces`` are the (guide, model) traces of :func:`pvae.infer.plates.trace_pair`. Discrete
    latents marked ``infer={"enumerate": "parallel"}`` are summed out exactly: ``"elbo"``
    becomes Pyro's ``TraceEnum_ELBO`` (model or guide enumeration), the importance-weighted
    objectives sum model-side ones out of each log-weight (and so does ``"elbo"``, by
    :class:`EnumeratedELBO`, where every site is a per-datapoint term); what has no valid
    bound is refused. ``"elbo"`` with every guide latent reparameterized takes
    :class:`pvae.infer.fast_elbo.ReparameterizedELBO`, Trace_ELBO's estimator without its overhead.

    Example::

        >>> choose_objective("elbo", 1, 1, trace_pair(model, guide, x))  # doctest: +SKIP
    """
    guide_trace, model_trace = traces
    in_guide = [n for n, s in sample_sites(guide_trace) if enumerated(s)]
    in_model = [n for n, s in sample_sites(model_trace) if enumerated(s) and n not in in_guide]
    if in_guide or in_model:
        names = ", ".join(repr(n) for n in in_guide + in_model)
        if name == "elbo" and not in_guide and _per_datapoint_sites(traces):
            return EnumeratedELBO(num_particles, nesting)  # TraceEnum_ELBO's numbers, faster
        if name == "elbo":
            return pyro.infer.TraceEnum_ELBO(
                num_particles=num_particles,
                vectorize_particles=num_particles > 1,
                max_plate_nesting=nesting,
            )
        if name == "meanfield":
            raise ValueError(
                f"objective 'meanfield' has no analytic KL for enumerated sites ({names}): "
                "use objective='elbo', which sums them out exactly (TraceEnum_ELBO)"
            )
        if in_guide and name == "iwae":
            return GuideEnumeratedIWAE(num_particles, nesting)
        if in_guide:
            raise ValueError(
                f"objective {name!r} has no valid form when the guide enumerates {names}: "
                "summed inside each weight, the terms it drops are no longer zero-mean. Use "
                "objective='iwae' (y summed inside each weight) or 'elbo' (TraceEnum_ELBO), "
                "or enumerate it in the model instead"
            )
    if name == "meanfield":
        _check_reparameterized(guide_trace, "'meanfield' (TraceMeanField_ELBO)")
    objective = make_objective(name, num_particles, nesting)
    if name == "elbo" and supports_fast_elbo(guide_trace, model_trace):
        return ReparameterizedELBO(num_particles, nesting)  # same numbers, less overhead
    return objective


def _per_datapoint_sites(traces) -> bool:
    """Whether every site of model and guide is a per-datapoint term of a log-weight: in the
    ``"data"`` plate over the rows it is given (the plate subsamples nothing itself), not
    scaled by the model, no inner plate subsampled, and every guide site reparameterized."""
    guide_trace, _ = traces
    if any(not site["fn"].has_rsample for _, site in sample_sites(guide_trace)):
        return False
    try:
        for trace in traces:
            for _, site in sample_sites(trace):
                frame = data_frame(site)
                if frame.full_size is not None and frame.full_size != frame.size:
                    return False
                if checked_scale(site, honour_scales=False) is not None:
                    return False
    except ValueError:
        return False
    return True


def _check_reparameterized(guide_trace, objective: str) -> None:
    for name, site in sample_sites(guide_trace):
        if not site["fn"].has_rsample and not enumerated(site):
            raise ValueError(
                f"guide site {name!r} is not reparameterized ({type(site['fn']).__name__}): "
                f"objective {objective} needs rsample at every guide site; use objective='elbo'"
            )


def make_objective(name: str, num_particles: int = 1, max_plate_nesting: int | None = None):
    """The objective for a name, with ``differentiable_loss(model, guide, *args)``.

    ``"elbo"`` (Pyro's Trace_ELBO), ``"meanfield"`` (TraceMeanField_ELBO, analytic KL),
    ``"stl"`` (ELBO with sticking-the-landing gradients), ``"iwae"`` (importance-weighted
    bound with K = ``num_particles``), ``"dreg"`` (the IWAE bound with doubly
    reparameterized gradients). Particles are vectorized in an extra outer plate, left of
    ``max_plate_nesting`` batch dimensions (see :func:`inspect_model`; Pyro's ELBOs guess it
    when not given).

    Example::

        >>> make_objective("iwae", num_particles=5, max_plate_nesting=1).num_particles
        5
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    if name in PARTICLE_OBJECTIVES:
        if max_plate_nesting is None:
            raise ValueError(f"objective {name!r} needs max_plate_nesting (see inspect_model)")
        return PARTICLE_OBJECTIVES[name](num_particles, max_plate_nesting)
    if name not in PYRO_OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
    return PYRO_OBJECTIVES[name](
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=nesting,
    )
