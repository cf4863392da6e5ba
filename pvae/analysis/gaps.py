"""The best member q* of a guide's family for each datapoint, for the inference-gap split.

Cremer, Li & Duvenaud ("Inference Suboptimality in Variational Autoencoders", ICML 2018)
split the gap log p(x) − ELBO(q_φ) at q*, the member of the guide's family with the highest
ELBO for that x: the approximation gap log p(x) − ELBO(q*) is the family's fault, the
amortization gap ELBO(q*) − ELBO(q_φ) the encoder's. Here q* is found generically: the guide
runs once; each latent site's distribution gives local parameters (one set per datapoint,
started at the encoder's output), and :class:`LocalGuide` runs the guide again with every
latent drawn from the same family under those parameters instead. All datapoints are
optimized at once, each by its own ELBO (their sum: the gradients stay independent, and Adam
scales each parameter on its own), with sticking-the-landing gradients (Roeder, Wu &
Duvenaud, NeurIPS 2017), whose variance vanishes as q* reaches an exact posterior.

Families: the diagonal normal (``Normal``, any ``to_event``) and the full-covariance
``MultivariateNormal``; others are refused by name. A guide of several latent sites gets
one local member per site, drawn independently: where q_φ makes one site depend on another's
draw (a hierarchical guide), q* is the mean-field product over the sites, a family of its
own, and the split is relative to it.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, MultivariateNormal, Normal

from pvae.infer.evaluation import seed_torch
from pvae.infer.log_weights import particle_log_weights, sample_sites
from pvae.infer.recording import record_sites

__all__ = ["LocalGuide", "SUPPORTED_FAMILIES", "check_family", "optimize", "weight_chunks"]

SUPPORTED_FAMILIES = "Normal (diagonal, any .to_event) and MultivariateNormal"


def _unwrap(fn) -> tuple[torch.distributions.Distribution, int]:
    """The base of nested ``Independent`` wrappers and how many batch dims they reinterpret."""
    reinterpreted = 0
    while isinstance(fn, Independent):
        reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, reinterpreted


def check_family(name: str, fn) -> None:
    """A one-line ``ValueError`` for a guide distribution whose family q* cannot be fitted in."""
    base, _ = _unwrap(fn)
    if not isinstance(base, (Normal, MultivariateNormal)):
        raise ValueError(
            f"the guide draws {name!r} from {type(base).__name__}: the approximation/amortization "
            f"split optimizes q* in the guide's own family, supported for {SUPPORTED_FAMILIES}; "
            "pass gaps=False to diagnose the rest"
        )


class _LocalSite:
    """Unconstrained leaf parameters of one site's family: (loc, log scale) of a normal,
    (loc, lower-triangular factor with log diagonal) of a multivariate normal."""

    def __init__(self, name: str, fn):
        check_family(name, fn)
        base, self.reinterpreted = _unwrap(fn)
        self.full = isinstance(base, MultivariateNormal)
        loc = base.loc.detach().clone()
        if self.full:
            tril = base.scale_tril.detach()
            raw = tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())
        else:
            raw = base.scale.detach().log().expand_as(loc)
        self.params = [loc.requires_grad_(), raw.clone().requires_grad_()]

    def distribution(self):
        loc, raw = self.params
        if self.full:
            tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
            fn = dist.MultivariateNormal(loc, scale_tril=tril)
        else:
            fn = dist.Normal(loc, raw.exp())
        return fn.to_event(self.reinterpreted) if self.reinterpreted else fn


class LocalGuide(Messenger):
    """The guide with each latent drawn from its own family under local parameters.

    Built from one run of ``guide(*args)`` (no particle plate): its parameters start at the
    guide's distributions there, one set per datapoint. Use :meth:`guide` as a Pyro guide for
    the same ``args``: plates and site names stay the guide's own.

    Example::

        >>> local = LocalGuide(vae.guide, (x,))  # doctest: +SKIP
        >>> loss = pyro.infer.Trace_ELBO().loss(vae.model, local.guide, x)  # doctest: +SKIP
    """

    def __init__(self, guide, args):
        super().__init__()
        self.original = guide
        recorded = record_sites(guide, args)
        self.sites = {
            name: _LocalSite(name, site["fn"])
            for name, site in sample_sites(recorded)
            if not site["is_observed"]
        }

    def parameters(self) -> list[torch.Tensor]:
        return [p for site in self.sites.values() for p in site.params]

    def guide(self, *args, **kwargs):
        with self:
            return self.original(*args, **kwargs)

    def _pyro_sample(self, msg) -> None:
        # Runs after the guide's own plates broadcast the site, before any outer plate does.
        local = self.sites.get(msg["name"])
        if local is None or msg["is_observed"]:
            return
        fn = local.distribution()
        msg["fn"] = fn.expand(torch.broadcast_shapes(fn.batch_shape, msg["fn"].batch_shape))


def optimize(model, local: LocalGuide, args, nesting, steps, lr, num_particles, seed) -> None:
    """Fit the local parameters: Adam on −Σ_n ELBO_n (STL gradients, ``num_particles``
    draws per step), the step size annealed from ``lr`` to 0 on a cosine."""
    params = local.parameters()
    optimizer = torch.optim.Adam(params, lr=lr)
    seed_torch(*seed)
    with torch.enable_grad():
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            log_w, _, _ = particle_log_weights(
                model, local.guide, args, num_particles, nesting,
                stop_guide_parameters=True, honour_scales=False,
            )  # fmt: skip
            loss = -log_w.mean(0).sum()
            for param, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
                param.grad = grad
            optimizer.step()
    for param in params:
        param.requires_grad_(False)


def weight_chunks(model, guide, args, nesting, num_samples, particle_chunk, seed):
    """Log-weights [particles, N] (float64) with the guide's and model's recorded sites, in
    chunks of ``particle_chunk``, chunk j drawn under ``seed + (j,)``: two guides of the same
    family get the same standard-normal draws (common random numbers)."""
    for index, start in enumerate(range(0, num_samples, particle_chunk)):
        count = min(particle_chunk, num_samples - start)
        seed_torch(*seed, index)
        with pyro.validation_enabled(False):
            log_w, guide_run, model_run = particle_log_weights(
                model, guide, args, count, nesting, honour_scales=False
            )
        yield log_w.double(), guide_run, model_run
