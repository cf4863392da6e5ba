"""Per-datapoint importance log-weights log p(x_n, z_nk) - log q(z_nk | x_n) from Pyro traces.

Shared by the held-out estimator (:mod:`pvae.iwae`) and the importance-weighted training
objectives (:mod:`pvae.objectives`): particles are vectorized in an extra plate to the left
of the model's plates, and every site is reduced to shape [particles, datapoints].
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.util import site_is_subsample

from pvae.plates import DATA_PLATE

PARTICLE_PLATE = "iwae_particles"


def sample_sites(trace):
    """The (name, site) pairs of a trace that carry a density."""
    for name, site in trace.nodes.items():
        # Plates record their subsample indices, and pyro.deterministic records an observed
        # Delta: neither has a density to count.
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["infer"].get("_deterministic"):
            yield name, site


def data_frame(site):
    """The ``"data"`` plate frame of a site; a clear error for a site outside it."""
    frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
    if frame is None:
        kind = "observed site" if site["is_observed"] else "global latent"
        raise ValueError(
            f"{kind} {site['name']!r} is outside pyro.plate('data', ...): a site shared by all "
            "datapoints has no per-datapoint bound. Put it inside the data plate (one copy "
            "per datapoint), or fix a global latent beforehand (e.g. poutine.condition on a "
            "point estimate) and pass the resulting model and guide"
        )
    if frame.dim is None:
        raise ValueError("pyro.plate('data', ...) must be vectorized (used as a context manager)")
    return frame


def per_datapoint_log_prob(
    site, nesting: int, num_particles: int, num_data: int, log_prob: torch.Tensor | None = None
) -> torch.Tensor:
    """Unscaled log-density of a site, summed over all but particles and datapoints: [P, N].

    ``log_prob`` overrides the site's own (e.g. one computed with detached parameters).
    """
    frame = data_frame(site)
    if log_prob is None:
        log_prob = site["fn"].log_prob(site["value"])
    # The scale is left out on purpose: it weighs minibatch losses, it is not part of p or q.
    log_p = scale_and_mask(log_prob, mask=site["mask"])
    if log_p.dim() > nesting + 1:
        raise ValueError(f"site {site['name']!r} has more batch dimensions than its plates")
    log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
    data_axis = nesting + 1 + frame.dim
    if log_p.shape[data_axis] not in (1, num_data):
        raise ValueError(
            f"site {site['name']!r} has {log_p.shape[data_axis]} entries in the data plate for "
            f"{num_data} datapoints: a per-datapoint bound needs a plate over the whole batch "
            "it is given (no subsample_size)"
        )
    others = [a for a in range(1, nesting + 1) if a != data_axis]
    log_p = log_p.sum(others, keepdim=True) if others else log_p
    log_p = log_p.reshape(log_p.shape[0], log_p.shape[data_axis])
    return log_p.expand(num_particles, num_data)


def data_scale(trace) -> float | torch.Tensor:
    """The minibatch scale of the sites in the ``"data"`` plate (1 when nothing scales them)."""
    for _, site in sample_sites(trace):
        if any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
            return site["scale"]
    return 1.0


def particle_log_weights(
    model, guide, args, num_particles: int, nesting: int, stop_guide_parameters: bool = False
) -> tuple[torch.Tensor, poutine.Trace, poutine.Trace]:
    """Differentiable log-weights [num_particles, batch] and the guide and model traces.

    With ``stop_guide_parameters`` log q is evaluated with the guide's distribution
    parameters detached, while z keeps its reparameterized path: the gradient of log w then
    reaches the guide only through z, as STL and DReG need.

    Example::

        >>> log_w, _, _ = particle_log_weights(vae.model, vae.guide, (x,), 10, 1)  # doctest: +SKIP
        >>> log_w.shape  # doctest: +SKIP
        torch.Size([10, 128])
    """
    num_data = args[0].shape[0]
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    log_w = 0.0
    for _, site in sample_sites(model_trace):
        log_w = log_w + per_datapoint_log_prob(site, nesting, num_particles, num_data)
    for _, site in sample_sites(guide_trace):
        log_q = None
        if stop_guide_parameters:
            log_q = detach(site["fn"]).log_prob(site["value"])
        log_w = log_w - per_datapoint_log_prob(site, nesting, num_particles, num_data, log_q)
    return log_w, guide_trace, model_trace
