"""Per-datapoint importance log-weights log p(x_n, z_nk) - log q(z_nk | x_n) from Pyro traces.

Shared by the held-out estimator (:mod:`pvae.infer.iwae`) and the importance-weighted training
objectives (:mod:`pvae.objectives`): particles are vectorized in an extra plate to the left
of the model's plates, and every site is reduced to shape [particles, datapoints].

What a per-datapoint weight can hold, and what is refused with a ``ValueError`` naming the
site: every site sits in the ``"data"`` plate over the whole batch; a plate nested inside
it is not subsampled (a subsampled plate gives an unbiased estimate of log p, not log p, and
an importance weight built from it bounds nothing); scales the model sets itself
(``poutine.scale``) are honoured by training objectives and refused where log p(x) itself is
estimated. Model latents marked ``infer={"enumerate": "parallel"}`` are summed out of each
weight exactly: log w = log Σ_c p(x, z, c) - log q(z | x). A latent y the guide enumerates is
summed inside each weight, log w = log Σ_y p(x, y, z^y) / q(z^y | x, y)
(:func:`enumerated_log_density` keeps y's dimensions for it, :func:`summed_log_weights` sums
them): the held-out estimator and the IWAE objective take it; q(y | x) is no part of it.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import site_is_subsample

from pvae.infer.plates import DATA_PLATE, MINIBATCH_SCALE, PARTICLE_PLATE, enumerated
from pvae.infer.recording import ReplaySites, SiteRecorder, record_sites


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
    frame = _data_frame_or_none(site)
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


def _data_frame_or_none(site):
    return next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)


def minibatch_scale(trace) -> float:
    """How much the ``"data"`` plate's sites are scaled up to stand for the whole dataset:
    :class:`pvae.infer.plates.ScaleDataPlate`'s factor times the plate's own subsampling (1 when
    nothing scales them)."""
    for _, site in sample_sites(trace):
        frame = _data_frame_or_none(site)
        if frame is not None:
            return site["infer"].get(MINIBATCH_SCALE, 1.0) * _subsampling(frame)
    return 1.0


def own_scale(site) -> float | torch.Tensor:
    """The scale a model sets on a site itself (``poutine.scale``), without the minibatch's."""
    return site["scale"] / (
        site["infer"].get(MINIBATCH_SCALE, 1.0) * _subsampling(data_frame(site))
    )


def _subsampling(frame) -> float:
    return frame.full_size / frame.size if frame.full_size is not None else 1.0


def _check_plates_inside_data(site) -> None:
    for frame in site["cond_indep_stack"]:
        if frame.name in (DATA_PLATE, PARTICLE_PLATE) or frame.full_size is None:
            continue
        if frame.full_size != frame.size:
            raise ValueError(
                f"site {site['name']!r} sits in plate {frame.name!r}, subsampled to "
                f"{frame.size} of {frame.full_size}: its scaled log-density estimates log p "
                "without being it, so an importance weight built from it bounds nothing. "
                "Remove subsample_size from that plate for importance-weighted objectives and "
                "log_likelihood (objective='elbo' accepts it)"
            )


def checked_scale(site, honour_scales: bool) -> float | torch.Tensor | None:
    """The site's own scale (None for none), or a clear error where log p(x) is estimated."""
    _check_plates_inside_data(site)
    scale = own_scale(site)
    unit = scale == 1.0 if not isinstance(scale, torch.Tensor) else bool((scale == 1).all())
    if unit:
        return None
    if not honour_scales:
        raise ValueError(
            f"site {site['name']!r} is scaled (poutine.scale or a similar handler): a bound "
            "on log p(x) is a bound on the model's own density, which no scale is part of. "
            "Evaluate the model without the scale"
        )
    return scale


def per_datapoint_log_prob(
    site,
    nesting: int,
    num_particles: int,
    num_data: int,
    log_prob: torch.Tensor | None = None,
    honour_scales: bool = False,
) -> torch.Tensor:
    """Log-density of a site, summed over all but particles and datapoints: [P, N].

    The minibatch scale is left out (it weighs minibatch losses, it is not part of p or q);
    the site's own scale is applied with ``honour_scales`` and refused without it.
    ``log_prob`` overrides the site's own (e.g. one computed with detached parameters).
    """
    frame = data_frame(site)
    scale = checked_scale(site, honour_scales)
    if log_prob is None:
        log_prob = site["fn"].log_prob(site["value"])
    log_p = scale_and_mask(log_prob, 1.0 if scale is None else scale, site["mask"])
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


def enumerating(model, nesting: int):
    """``model`` with its ``infer={"enumerate": "parallel"}`` sites enumerated, left of the
    particle plate. Wrap it in ``poutine.replay`` or ``poutine.condition`` from outside: the
    enumeration handler must see every site before those mark it done, or the sites that
    depend on an enumerated value lose the record of its dimension."""
    return poutine.enum(model, first_available_dim=-(nesting + 2))


def model_log_joint(
    trace,
    nesting: int,
    num_particles: int,
    num_data: int,
    honour_scales: bool = False,
    observed: bool = True,
) -> torch.Tensor:
    """log p(x, z) [particles, datapoints] of a model trace, enumerated latents summed out.

    Without enumeration this is the sum of :func:`per_datapoint_log_prob` over the sites.
    With it (a trace made under ``poutine.enum``), the sites' log-densities are contracted by
    Pyro's tensor variable elimination down to the particle and data plates: logsumexp over
    the enumerated values, sums over the other plates, each in the order the plates need.
    ``observed=False`` leaves the observed sites out: the prior log p(z), with the enumerated
    latents summed out of it (AIS's starting density).
    """
    sites = list(sample_sites(trace))
    if not any(site["infer"].get("_enumerate_dim") is not None for _, site in sites):
        total = 0.0
        for _, site in sites:
            if observed or not site["is_observed"]:
                total = total + per_datapoint_log_prob(
                    site, nesting, num_particles, num_data, honour_scales=honour_scales
                )
        return total
    _check_enumerated_sums(sites)
    if all(_local_to_datapoints(site) for _, site in sites if enumerated(site)):
        return _sum_out_per_datapoint(sites, nesting, num_particles, num_data, observed)
    if not isinstance(trace, poutine.Trace):  # sites recorded without Pyro's trace graph
        trace = _as_trace(trace)
        sites = list(sample_sites(trace))
    return _contract_enumerated(trace, sites, nesting, num_particles, num_data, observed)


def _check_enumerated_sums(sites) -> None:
    for name, site in sites:
        data_frame(site)
        if checked_scale(site, honour_scales=False) is not None:
            raise ValueError(f"site {name!r} is scaled: enumerated sums take no scales")
        if enumerated(site) and site["infer"]["enumerate"] != "parallel":
            raise ValueError(
                f"site {name!r} is enumerated sequentially: per-datapoint weights sum "
                "enumerated latents in parallel; use infer={'enumerate': 'parallel'}"
            )


def _local_to_datapoints(site) -> bool:
    """Whether an enumerated site is in no plate but the data and particle plates."""
    return all(f.name in (DATA_PLATE, PARTICLE_PLATE) for f in site["cond_indep_stack"])


def _sum_out_per_datapoint(sites, nesting, num_particles, num_data, observed) -> torch.Tensor:
    """log p(x, z) [particles, datapoints] with enumerated latents of one datapoint each
    summed out: every site's log-density summed over its plates inside the data plate, then
    logsumexp over the enumerated dimensions (left of the particle plate). Exact when no
    enumerated site sits in such an inner plate, which :func:`_local_to_datapoints` checks;
    the general case is :func:`_contract_enumerated`'s."""
    total, data_dim = 0.0, data_frame(sites[0][1]).dim
    for _, site in sites:
        if site["is_observed"] and not observed:
            continue
        log_p = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
        log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
        inner = [dim for dim in range(-nesting, 0) if dim != data_dim]
        total = total + (log_p.sum(inner, keepdim=True) if inner else log_p)
    enumeration = list(range(total.dim() - nesting - 1))
    if enumeration:
        total = torch.logsumexp(total, enumeration)
    data_axis = nesting + 1 + data_dim
    total = total.reshape(total.shape[0], total.shape[data_axis])
    return total.expand(num_particles, num_data)


def guide_enumeration_dims(sites, nesting: int) -> int:
    """How many dimensions a guide's enumerated latents take, left of the particle plate
    (0 when it enumerates none); a clear error for one a per-datapoint weight cannot sum.

    Each such latent y must be enumerated in parallel and sit in no plate but the data and
    particle plates: its values then index one term of each datapoint's weight,
    Σ_y p(x, y, z^y) / q(z^y | x, y), with no other datapoint's y in it.
    """
    dims = []
    for name, site in sites:
        if not enumerated(site):
            continue
        if site["infer"]["enumerate"] != "parallel":
            raise ValueError(
                f"guide site {name!r} is enumerated sequentially: per-datapoint weights sum "
                "enumerated latents in parallel; use infer={'enumerate': 'parallel'}"
            )
        data_frame(site)
        if not _local_to_datapoints(site):
            raise ValueError(
                f"guide site {name!r} is enumerated inside a plate nested in the data plate: "
                "log_likelihood sums a guide-enumerated latent inside each datapoint's weight "
                "only where it has one value per datapoint"
            )
        dims.append(-site["infer"]["_enumerate_dim"] - nesting - 1)
    return max(dims, default=0)


def enumerated_log_density(sites, nesting: int, kept_dims: int) -> torch.Tensor:
    """Σ of the sites' log-densities as ``[*kept, particles, datapoints]``, sizes 1 where
    nothing varies, the plates inside the data plate summed.

    ``kept_dims`` dimensions left of the particle plate (the guide's enumerated latents) are
    kept; dimensions further left (the model's own enumerated latents) are summed out by
    logsumexp, which is exact where each of those sits in no plate but the data and particle
    plates (checked). Scales are refused, as wherever log p(x) itself is estimated.
    """
    total, data_dim = 0.0, None
    width = nesting + 1 + kept_dims
    for name, site in sites:
        data_dim = data_frame(site).dim
        checked_scale(site, honour_scales=False)
        summed = enumerated(site) and site["infer"].get("_enumerate_dim") is not None
        if summed and (site["infer"]["enumerate"] != "parallel" or not _local_to_datapoints(site)):
            raise ValueError(
                f"site {name!r} is enumerated in the model in a plate nested in the data "
                "plate (or sequentially), and the guide enumerates a latent too: "
                "log_likelihood sums model-enumerated latents next to guide-enumerated "
                "ones only where each has one value per datapoint, in parallel"
            )
        log_p = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
        log_p = log_p.reshape((1,) * (width - log_p.dim()) + log_p.shape)
        inner = [dim for dim in range(-nesting, 0) if dim != data_dim]
        total = total + (log_p.sum(inner, keepdim=True) if inner else log_p)
    summed = list(range(total.dim() - width))
    if summed:
        total = torch.logsumexp(total, summed)
    return total.reshape(total.shape[: kept_dims + 1] + (total.shape[data_dim],))


def _as_trace(recorded) -> poutine.Trace:
    trace = poutine.Trace()
    for name, site in recorded.nodes.items():
        trace.add_node(name, **site)
    return trace


def _contract_enumerated(
    trace, sites, nesting, num_particles, num_data, observed=True
) -> torch.Tensor:
    trace.compute_log_prob()
    trace.pack_tensors()
    symbols = trace.plate_to_symbol
    tree: OrderedDict = OrderedDict()
    # Packing drops dimensions of size 1, so a plate of one member (a single particle or
    # datapoint) leaves the ordinals too: a sum or product over one member is the identity.
    wide = {f.name for _, site in sites for f in site["cond_indep_stack"] if f.size > 1}
    for _, site in sites:
        if site["is_observed"] and not observed:
            continue
        ordinal = frozenset(
            symbols[f.name] for f in site["cond_indep_stack"] if f.vectorized and f.name in wide
        )
        masked = packed.scale_and_mask(
            site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"]
        )
        tree.setdefault(ordinal, []).append(masked)
    terms = [term for ordinal_terms in tree.values() for term in ordinal_terms]
    sum_dims = {d for term in terms for d in term._pyro_dims} - set(symbols.values())
    particle, data = symbols[PARTICLE_PLATE], symbols[DATA_PLATE]
    target = frozenset(symbols[name] for name in (PARTICLE_PLATE, DATA_PLATE) if name in wide)
    joint = contract_to_tensor(tree, sum_dims, target_ordinal=target)
    # Packed tensors keep only the dimensions they use: put back [particles, datapoints].
    layout = {particle + data: lambda t: t, data + particle: lambda t: t.T}
    layout.update(
        {particle: lambda t: t[:, None], data: lambda t: t[None, :], "": lambda t: t.reshape(1, 1)}
    )
    return layout[joint._pyro_dims](joint).expand(num_particles, num_data)


def particle_log_weights(
    model,
    guide,
    args,
    num_particles: int,
    nesting: int,
    stop_guide_parameters: bool = False,
    honour_scales: bool = True,
    enumerate_model: bool = True,
    subtract_score: bool = True,
) -> tuple[torch.Tensor, poutine.Trace, poutine.Trace]:
    """Differentiable log-weights [num_particles, batch] and the guide's and model's sites.

    The sites are recorded without Pyro's trace graph (:mod:`pvae.infer.recording`).
    ``enumerate_model=False`` skips Pyro's enumeration handler, for a model already known to
    enumerate nothing (the handler visits every site, every step). ``subtract_score=False``
    leaves the score term in where q cannot simply be detached, for a caller that removes it
    itself (DReG's surrogate for dependent latents).

    With ``stop_guide_parameters`` the log-weight's gradient reaches the guide only through
    z: its derivative in the guide's parameters φ is ∂log w/∂z · dz/dφ, the partial in z
    taken at fixed φ, as STL and DReG need (the score term ∂log w/∂φ at fixed z is dropped).
    Where q can be evaluated with its parameters detached (one latent site of a plain
    distribution) that is what is done; otherwise the guide is run once more on the drawn
    values, detached, and its score term subtracted, which keeps the dependence of
    q(z2 | z1) on z1 that DReG needs (Tucker et al., 2019).

    Example::

        >>> log_w, _, _ = particle_log_weights(vae.model, vae.guide, (x,), 10, 1)  # doctest: +SKIP
        >>> log_w.shape  # doctest: +SKIP
        torch.Size([10, 128])
    """
    num_data = args[0].shape[0]
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        guide_trace = record_sites(guide, args)
        if any(enumerated(site) for _, site in sample_sites(guide_trace)):
            raise ValueError(
                "the guide enumerates a discrete latent: this objective draws every guide "
                "latent; train with objective='iwae' (which sums it inside each weight) or "
                "'elbo' (TraceEnum_ELBO), or enumerate it in the model instead"
            )
        enumerated_model = enumerating(model, nesting) if enumerate_model else model
        replayed = ReplaySites(guide_trace.nodes)(enumerated_model)
        model_trace = record_sites(replayed, args)
    log_w = model_log_joint(model_trace, nesting, num_particles, num_data, honour_scales)
    detachable = stop_guide_parameters and single_plain_site(guide_trace)
    for _, site in sample_sites(guide_trace):
        log_q = detach(site["fn"]).log_prob(site["value"]) if detachable else None
        log_w = log_w - per_datapoint_log_prob(
            site, nesting, num_particles, num_data, log_q, honour_scales
        )
    if stop_guide_parameters and subtract_score and not detachable:
        score = guide_log_density(
            guide, args, guide_trace, nesting, num_particles, detach_values=True
        )
        log_w = log_w + (score - score.detach())
    return log_w, guide_trace, model_trace


def guide_enumerated_log_weights(
    model, guide, args, num_particles: int, nesting: int
) -> tuple[torch.Tensor, SiteRecorder]:
    """Differentiable log-weights [num_particles, batch] of a guide that enumerates a latent
    y: log Σ_y p(x, y, z^y) / q(z^y | x, y), z^y drawn from q(z | x, y) for every value of
    y (the guide's enumerated sites are no part of the weight), and the guide's sites.

    Example::

        >>> log_w, _ = guide_enumerated_log_weights(m2.model, m2.guide, (x,), 5, 1)
        ... # doctest: +SKIP
    """
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        enumerated_guide = poutine.enum(guide, first_available_dim=-(nesting + 2))
        guide_trace = record_sites(enumerated_guide, args)
    sites = list(sample_sites(guide_trace))
    dims = guide_enumeration_dims(sites, nesting)
    drawn = [(name, site) for name, site in sites if not enumerated(site)]
    log_q = enumerated_log_density(drawn, nesting, dims)
    values = {name: site["value"] for name, site in sites if not site["is_observed"]}
    log_q = log_q.expand(*log_q.shape[:dims], num_particles, args[0].shape[0])
    return summed_log_weights(model, args, values, log_q, nesting, double=False), guide_trace


def summed_log_weights(model, batch, values, log_q, nesting: int, double=True) -> torch.Tensor:
    """log w [particles, datapoints] with the guide's enumerated y summed inside each weight:
    log Σ_y p(x, y, z^y) / q(z^y | x, y), the model replayed on y's values and the draws
    z^y, its own enumerated latents (left of y's dimensions) summed out of p as ever;
    ``log_q`` is ``[*y, particles, datapoints]``. In float64 unless ``double`` is False."""
    dims = log_q.dim() - 2
    guide_trace = poutine.Trace()
    for name, value in values.items():
        guide_trace.add_node(name, type="sample", is_observed=False, value=value, infer={})
    with pyro.plate(PARTICLE_PLATE, log_q.shape[dims], dim=-(nesting + 1)):
        enumerated_model = poutine.enum(model, first_available_dim=-(nesting + 2 + dims))
        replayed = poutine.replay(enumerated_model, trace=guide_trace)
        trace = poutine.trace(replayed).get_trace(*batch)
    log_p = enumerated_log_density(list(sample_sites(trace)), nesting, dims)
    log_p = log_p.double() if double else log_p
    return torch.logsumexp(log_p - log_q, list(range(dims)))


def guide_log_density(
    guide,
    args,
    values_trace,
    nesting: int,
    num_particles: int,
    detach_values: bool = False,
    values=None,
    honour_scales: bool = True,
) -> torch.Tensor:
    """log q [particles, datapoints] of the guide run again on given latent values; a scale
    the guide sets is applied, or refused with ``honour_scales=False``."""
    num_data = args[0].shape[0]
    if values is None:
        values = {
            name: site["value"].detach() if detach_values else site["value"]
            for name, site in sample_sites(values_trace)
            if not site["is_observed"]
        }
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        trace = record_sites(poutine.condition(guide, data=values), args)
    log_q = 0.0
    for _, site in sample_sites(trace):
        log_q = log_q + per_datapoint_log_prob(
            site, nesting, num_particles, num_data, honour_scales=honour_scales
        )
    return log_q


# Distributions whose log-density, with parameters detached, is still the density at the
# drawn value: no cache of the draw (as a TransformedDistribution keeps) cuts the path.
_PLAIN = (
    torch.distributions.Normal,
    torch.distributions.MultivariateNormal,
    torch.distributions.LowRankMultivariateNormal,
    torch.distributions.Laplace,
)


def single_plain_site(guide_trace) -> bool:
    """Whether the guide is one latent site of a plain density (no factor, no other latent):
    then q with its parameters detached, at the drawn value, is q at fixed φ."""
    sites = [site for _, site in sample_sites(guide_trace)]
    return len(sites) == 1 and not sites[0]["is_observed"] and plain_density(sites[0]["fn"])


def plain_density(fn) -> bool:
    """Whether ``detach(fn).log_prob(value)`` is q's density at the value, φ held fixed."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, _PLAIN)


def full_value(site, nesting: int, num_particles: int, num_data: int):
    """A latent value padded to all batch dimensions; returns it and its data axis."""
    frame = data_frame(site)
    value, event_dim = site["value"], site["fn"].event_dim
    value = value.reshape((1,) * (nesting + 1 + event_dim - value.dim()) + value.shape)
    data_axis = nesting + 1 + frame.dim
    shape = list(value.shape)
    shape[0], shape[data_axis] = num_particles, num_data
    return value.expand(shape), data_axis
