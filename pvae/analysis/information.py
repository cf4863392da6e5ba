"""What the latents carry, per latent dimension ("unit") and in all: the parts of
:func:`pvae.analysis.diagnostics.diagnose` that read the guide's encodings.

- Active units (Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR
  2016, §5.2): unit u is active when Cov_x(E_q(z|x)[z_u]) exceeds a threshold (0.01).
- KL per unit, E_x KL(q(z_u|x) ‖ p(z_u)): in closed form where torch has one for the
  one-dimensional factors of q and p, else by Monte Carlo.
- Mutual information I_q(x; z) between the data given and the code, the estimator of He,
  Spokoyny, Neubig & Berg-Kirkpatrick ("Lagging Inference Networks and Posterior Collapse in
  Variational Autoencoders", ICLR 2019): E_x E_q(z|x)[log q(z|x) − log q(z)], with the
  aggregate posterior q(z) = (1/N) Σ_m q(z|x_m) evaluated by a logsumexp over the dataset.

A "unit" is one scalar of a latent site per datapoint: a site of event shape (d,) in the data
plate gives d units, named ``"latent[0]"``, ... (inner plates and event dimensions flattened).
Where the prior of a site depends on another latent (a hierarchical model), its KL per unit
is E_q KL(q(z_u|x, ...) ‖ p(z_u | parents)), averaged over the guide's draws of the parents.
"""

from __future__ import annotations

import math

import pyro
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from pvae.infer.evaluation import seed_torch
from pvae.infer.log_weights import (
    data_frame,
    guide_log_density,
    per_datapoint_log_prob,
    sample_sites,
)
from pvae.infer.plates import PARTICLE_PLATE
from pvae.infer.recording import record_sites

__all__ = [
    "encoding_means",
    "kl_draws",
    "latent_sites",
    "mutual_information_terms",
    "unit_kl",
    "unit_names",
]


def latent_sites(recorded) -> list[tuple[str, dict]]:
    """The (name, site) pairs of a recorded guide's latents, in order; a clear error for a
    latent the guide enumerates (its units have no encoding mean to read)."""
    sites = []
    for name, site in sample_sites(recorded):
        if site["is_observed"]:
            continue
        if site["infer"].get("enumerate"):
            raise ValueError(
                f"the guide enumerates {name!r}: diagnose reads continuous latents drawn by "
                "the guide; enumerate discrete latents in the model instead"
            )
        sites.append((name, site))
    return sites


def per_unit(tensor: torch.Tensor, site, nesting: int, num_data: int) -> torch.Tensor:
    """A site's tensor of shape ``[particles?, *plates, *event]`` as ``[particles, N, units]``: the
    data axis second, inner plates and the event flattened into units (sizes broadcast)."""
    event_dim = site["fn"].event_dim
    tensor = tensor.reshape((1,) * (nesting + 1 + event_dim - tensor.dim()) + tensor.shape)
    data_axis = nesting + 1 + data_frame(site).dim
    shape = list(tensor.shape)
    shape[data_axis] = num_data
    event = tuple(site["fn"].event_shape)
    tensor = tensor.expand(shape[: nesting + 1] + list(event) if event else shape)
    return tensor.movedim(data_axis, 1).reshape(tensor.shape[0], num_data, -1)


def unit_names(sites, nesting: int, num_data: int) -> list[str]:
    """``"name[i]"`` for each unit of each latent site (``"name"`` for a scalar site)."""
    names = []
    for name, site in sites:
        count = per_unit(site["value"], site, nesting, num_data).shape[-1]
        names += [name] if count == 1 else [f"{name}[{i}]" for i in range(count)]
    return names


def encoding_means(guide, args, nesting: int, num_samples: int, seed: tuple) -> torch.Tensor:
    """E_q(z|x)[z_u] [N, units]: each site's ``.mean`` where its distribution has one, else
    the mean of ``num_samples`` draws (a flow's q has no closed-form mean)."""
    num_data = args[0].shape[0]
    recorded = record_sites(guide, args)
    means = []
    for name, site in latent_sites(recorded):
        try:
            mean = site["fn"].mean
        except NotImplementedError:
            mean = None
        if mean is None or not torch.isfinite(mean).all():
            mean = _sampled_mean(guide, args, name, nesting, num_samples, seed)
        means.append(per_unit(mean, site, nesting, num_data)[0])
    return torch.cat(means, -1).double()


def _sampled_mean(guide, args, name, nesting, num_samples, seed) -> torch.Tensor:
    """The mean of ``num_samples`` draws of a site [N, units], about 100,000 rows a call."""
    num_data = args[0].shape[0]
    chunk, total = max(1, 100_000 // num_data), 0.0
    for index, start in enumerate(range(0, num_samples, chunk)):
        count = min(chunk, num_samples - start)
        seed_torch(*seed, index)
        with pyro.plate(PARTICLE_PLATE, count, dim=-(nesting + 1)):
            site = record_sites(guide, args).nodes[name]
        total = total + per_unit(site["value"], site, nesting, num_data).double().sum(0)
    return total / num_samples


def _factors(fn) -> torch.distributions.Distribution | None:
    """The one-dimensional factors of a distribution, one per unit: the base of an
    ``Independent``, the marginals N(μ_u, Σ_uu) of a multivariate normal; None otherwise."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, MultivariateNormal):
        return Normal(fn.loc, fn.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt())
    if hasattr(fn, "base_dist") and not isinstance(fn, Independent):
        return None  # a transformed distribution: no per-unit marginals
    return fn if fn.event_shape == () else None


def unit_kl(
    guide_site, model_site, nesting: int, num_particles: int, num_data: int, closed_form=True
):
    """KL(q(z_u|x) ‖ p(z_u)) per particle [particles, N, units] and whether it is in closed
    form; NaN where the factors of q or p are not available (a flow, a mixture prior).
    ``closed_form=False`` takes log q − log p at the draw (see :func:`kl_draws`)."""
    q, p = _factors(guide_site["fn"]), _factors(model_site["fn"])
    value = guide_site["value"]
    shape = per_unit(value, guide_site, nesting, num_data).shape
    if q is None or p is None:
        nan = torch.full(shape, math.nan, dtype=torch.float64, device=value.device)
        return nan.expand(num_particles, *shape[1:]), False
    kl = _closed_form_kl(q, p) if closed_form else None
    exact = kl is not None
    if kl is None:
        kl = q.log_prob(value) - p.log_prob(value)
    kl = per_unit(kl, guide_site, nesting, num_data)
    return kl.double().expand(num_particles, -1, -1), exact


def _closed_form_kl(q, p) -> torch.Tensor | None:
    """KL(q ‖ p) where torch has it in closed form, else None."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def mutual_information_terms(
    guide, args, nesting: int, seed: tuple, max_cells: int = 10_000_000
) -> torch.Tensor:
    """He et al.'s terms log q(z_n|x_n) − log (1/N) Σ_m q(z_n|x_m), one draw z_n ~ q(z|x_n)
    per datapoint [N]; their mean estimates I_q(x; z).

    Consistent as N grows, biased for few datapoints: the own term (m = n) makes each term
    at most log N, so the estimate falls short of an I_q near log N (few datapoints, an
    informative code), and log q(z) by a logsumexp of the others is low by Jensen's
    inequality. The error of the mean, std / sqrt(N), treats the terms as independent,
    which their shared aggregate makes them only nearly. Costs N² evaluations of q,
    ``max_cells`` at a time.
    """
    num_data = args[0].shape[0]
    seed_torch(*seed)
    with pyro.plate(PARTICLE_PLATE, 1, dim=-(nesting + 1)):
        drawn = record_sites(guide, args)
    sites = latent_sites(drawn)
    log_q_own = sum(per_datapoint_log_prob(s, nesting, 1, num_data)[0] for _, s in sites)
    units = sum(per_unit(s["value"], s, nesting, num_data).shape[-1] for _, s in sites)
    chunk = max(1, max_cells // (num_data * units))
    log_aggregate = []
    for start in range(0, num_data, chunk):
        count = min(chunk, num_data - start)
        values = {name: _as_particles(s, nesting, start, count, num_data) for name, s in sites}
        log_q = guide_log_density(
            guide, args, None, nesting, count, values=values, honour_scales=False
        )  # [count, N]: log q(z_i | x_m)
        log_aggregate.append(torch.logsumexp(log_q.double(), 1) - math.log(num_data))
    return log_q_own.double() - torch.cat(log_aggregate)


def _as_particles(site, nesting: int, start: int, count: int, num_data: int) -> torch.Tensor:
    """Draws start:start+count of a site moved onto the particle axis, one per datapoint,
    broadcast along the data axis: scored by every datapoint's q."""
    value, event_dim = site["value"], site["fn"].event_dim
    value = value.reshape((1,) * (nesting + 1 + event_dim - value.dim()) + value.shape)
    data_axis = nesting + 1 + data_frame(site).dim
    value = value.narrow(data_axis, start, count).transpose(0, data_axis)
    shape = list(value.shape)
    shape[data_axis] = num_data
    return value.detach().expand(shape)  # a flow's inverse wants the full batch shape


def kl_draws(guide_run, model_run, nesting, count, num_data):
    """Per draw: KL(q(z|x) ‖ p(z)) [P, N] (closed form per site where torch has it, else
    log q − log p at the draw), KL per unit [P, N, units], and whether all were closed form.

    A site the guide draws before others takes log q − log p at the draw: its prior may
    depend on those later latents (p(z1 | z2) with z2 ~ q(z2 | z1), a hierarchical VAE),
    drawn given the very z1 a closed form would integrate out, which is then no term of the
    ELBO (the reason TraceMeanField_ELBO is refused for such models).
    """
    total, units, exact = 0.0, [], True
    model_sites = dict(sample_sites(model_run))
    sites = latent_sites(guide_run)
    for index, (name, site) in enumerate(sites):
        prior = model_sites[name]
        closed_form = index == len(sites) - 1  # no guide latent drawn after it
        kl = _closed_form_kl(site["fn"], prior["fn"]) if closed_form else None
        if kl is not None:
            kl = per_datapoint_log_prob(site, nesting, count, num_data, log_prob=kl)
        else:
            exact = False
            kl = per_datapoint_log_prob(site, nesting, count, num_data) - per_datapoint_log_prob(
                prior, nesting, count, num_data
            )
        total = total + kl.double()
        unit, unit_exact = unit_kl(site, prior, nesting, count, num_data, closed_form)
        units.append(unit)
        exact = exact and unit_exact
    return total, torch.cat(units, -1), exact
