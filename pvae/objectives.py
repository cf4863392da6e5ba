"""Training objectives: Pyro's ELBOs and importance-weighted bounds, by name."""

from __future__ import annotations

import math

import pyro.infer
import torch

from pvae.log_weights import data_frame, data_scale, particle_log_weights, sample_sites
from pvae.plates import DATA_PLATE, ScaleDataPlate, inspect_model

__all__ = ["DATA_PLATE", "ScaleDataPlate", "inspect_model", "make_objective"]


class _ParticleObjective:
    """Base of the objectives computed from per-datapoint log-weights [particles, batch].

    They need every site inside the ``"data"`` plate and reparameterized guide latents. The
    minibatch scale (``num_data / batch_size`` under :func:`pvae.fit`) multiplies the sum of
    the per-datapoint bounds, outside any logsumexp: scaling inside it, as Pyro's
    ``RenyiELBO`` does, changes the bound itself.
    """

    stop_guide_parameters = False

    def __init__(self, num_particles: int, max_plate_nesting: int):
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        log_w, guide_trace, model_trace = particle_log_weights(
            model,
            guide,
            args,
            self.num_particles,
            self.max_plate_nesting,
            self.stop_guide_parameters,
        )
        for name, site in sample_sites(guide_trace):
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} is not reparameterized ({type(site['fn']).__name__}): "
                    f"the {type(self).__name__} gradient needs rsample; use objective='elbo'"
                )
        return -data_scale(model_trace) * self._per_datapoint(log_w, guide_trace).sum()

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

    def _per_datapoint(self, log_w, guide_trace):
        return torch.logsumexp(log_w, 0) - math.log(self.num_particles)


class DReG(IWAE):
    """The IWAE bound with doubly reparameterized guide gradients (Tucker et al., 2019).

    The guide's gradient is Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ with log q's parameters held
    fixed (w̃ the normalized weights): unbiased for the IWAE gradient, without the score
    term whose variance grows with K. The model's gradient is IWAE's, Σ_k w̃_k ∇θ log w_k.
    One backward pass gives both: the surrogate Σ_k w̃_k log w_k (w̃ held fixed) passes w̃_k
    to each z_k, and a hook on z_k multiplies that by w̃_k once more.
    """

    stop_guide_parameters = True

    def _per_datapoint(self, log_w, guide_trace):
        weights = torch.softmax(log_w, 0).detach()
        for _, site in sample_sites(guide_trace):
            if site["value"].requires_grad:
                site["value"].register_hook(_multiply_by(self._weights_like(site, weights)))
        surrogate = (weights * log_w).sum(0)
        bound = torch.logsumexp(log_w.detach(), 0) - math.log(self.num_particles)
        return bound + (surrogate - surrogate.detach())

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


def _multiply_by(factor: torch.Tensor):
    return lambda grad: grad * factor


class StickingTheLanding(_ParticleObjective):
    """The ELBO with the "sticking the landing" guide gradient (Roeder et al., 2017).

    log q is evaluated with its parameters held fixed, which drops the score term: still
    unbiased, and of zero variance when q equals the exact posterior.
    """

    stop_guide_parameters = True

    def _per_datapoint(self, log_w, guide_trace):
        return log_w.mean(0)


PYRO_OBJECTIVES = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
}
PARTICLE_OBJECTIVES = {"stl": StickingTheLanding, "iwae": IWAE, "dreg": DReG}
OBJECTIVES = [*PYRO_OBJECTIVES, *PARTICLE_OBJECTIVES]


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
