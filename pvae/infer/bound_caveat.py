"""Whether the figure :func:`pvae.fit` reports as the training bound is a bound on log p(x).

The training objective is the ELBO (or IWAE_K) of the model as written; a model can make it
something else the Pyro way: ``pyro.factor`` terms (M2's classification term) or sites it
weighs with ``poutine.scale`` (a beta-VAE's KL weight, a KL warm-up). Those objectives train
fine, but their value is no longer a bound on log p(x), and a reader of the figures must
know: :func:`objective_caveat` says why, from one trace of every stream's first rows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pvae.infer.evaluation_mode import forked_rng
from pvae.infer.log_weights import sample_sites
from pvae.infer.plates import trace_pair


def objective_caveat(model, guide, batches, device) -> str | None:
    """None when the objective of ``model``/``guide`` on ``batches`` (one tuple of tensors
    per stream) is a bound on log p(x); else a sentence that says why it is not. The draws
    leave the training's generators alone; gradients stay on, as in training (a model may
    weigh its sites only then, as :class:`pvae.VAE`'s beta).

    Example::

        >>> objective_caveat(m2.model, m2.guide, [(x_l, y_l), (x_u,)], "cpu")  # doctest: +SKIP
        "not a bound on log p(x): the model adds pyro.factor terms ('classification')"
    """
    factors, scaled = [], []
    with forked_rng(device), pyro.validation_enabled(False):
        for rows in batches:
            for trace in trace_pair(model, guide, *rows):
                for name, site in sample_sites(trace):
                    if isinstance(site["fn"], dist.Unit) and name not in factors:
                        factors.append(name)
                    elif _weighted(site) and name not in scaled:
                        scaled.append(name)
    reasons = []
    if factors:
        reasons.append(f"the model adds pyro.factor terms ({_names(factors)})")
    if scaled:
        reasons.append(f"it weighs the sites {_names(scaled)} (poutine.scale, e.g. a KL weight)")
    if not reasons:
        return None
    return "not a bound on log p(x): " + "; ".join(reasons)


def _weighted(site) -> bool:
    """Whether the model or guide scales the site itself (not a plate's subsampling)."""
    scale = site["scale"]
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None:
            scale = scale / (frame.full_size / frame.size)
    if isinstance(scale, torch.Tensor):
        return not bool((scale == 1).all())
    return scale != 1.0


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names[:4]) + (", ..." if len(names) > 4 else "")
