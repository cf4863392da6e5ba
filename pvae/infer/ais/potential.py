"""The ends of AIS's path of targets, log π_0(z) and log p(x, z), as functions of u.

AIS anneals along the geometric path log γ_β = (1 - β) log π_0 + β log p(x, z), where π_0 is
the guide q(z|x) (``init="guide"``) or the prior p(z) (``init="prior"``, Wu et al. 2017: then
γ_β = p(z) p(x|z)^β). Both ends are evaluated, with their gradients in the unconstrained
latents u, once per leapfrog step; the target at any β and the weight increments
(β_t - β_{t-1}) (log p(x, z) - log π_0(z)) follow from them without another model call.
Enumerated discrete latents of the model are summed out of both ends.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import torch
from pyro import poutine

from pvae.infer.ais.latents import LatentLayout
from pvae.infer.log_weights import (
    enumerating,
    guide_log_density,
    model_log_joint,
    per_datapoint_log_prob,
    single_plain_site,
)
from pvae.infer.plates import PARTICLE_PLATE


class Ends(NamedTuple):
    """log π_0 + log|J| and log p(x, z) + log|J| [chains, datapoints], and their u-gradients."""

    start: torch.Tensor
    end: torch.Tensor
    grad_start: torch.Tensor
    grad_end: torch.Tensor

    def log_target(self, beta: float) -> torch.Tensor:
        # (1 - β) + β = 1: the Jacobian, in both ends, counts once.
        return (1 - beta) * self.start + beta * self.end

    def grad_target(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.grad_start + beta * self.grad_end


class Potential:
    """Evaluates :class:`Ends` at u [chains, datapoints, D] for one chunk of data.

    ``guide_trace`` is a trace of the guide on ``batch`` in the chains' plate: with
    ``init="guide"`` a guide of one plain latent site (a Normal, say) is scored through its
    distribution there, whose parameters do not depend on z; any other guide runs again on
    every u.
    """

    def __init__(self, model, guide, batch, layout: LatentLayout, nesting, init, guide_trace,
                 enumerate_model=True):  # fmt: skip
        self.model, self.guide, self.batch = model, guide, batch
        self.layout, self.nesting, self.init = layout, nesting, init
        self.guide_trace = guide_trace
        self.plain_guide = single_plain_site(guide_trace)
        # Pyro's enumeration handler visits every site on every call: only where it is needed.
        self.enumerate = enumerate_model

    def __call__(self, u: torch.Tensor) -> Ends:
        num_chains, num_data = u.shape[0], u.shape[1]
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            values, log_det = self.layout.unflatten(u)
            trace = self._model_trace(values, num_chains)
            end = model_log_joint(trace, self.nesting, num_chains, num_data)
            if self.init == "prior":
                start = model_log_joint(trace, self.nesting, num_chains, num_data, observed=False)
            else:
                start = self._log_q(values, num_chains, num_data)
            start, end = start + log_det, end + log_det
            grad_end = _gradient(end, u, retain_graph=True)
            grad_start = _gradient(start, u, retain_graph=False)
        return Ends(start.detach(), end.detach(), grad_start, grad_end)

    def _model_trace(self, values: dict, num_chains: int):
        given = poutine.Trace()
        for name, value in values.items():
            given.add_node(name, type="sample", is_observed=False, value=value, infer={})
        model = enumerating(self.model, self.nesting) if self.enumerate else self.model
        with pyro.plate(PARTICLE_PLATE, num_chains, dim=-(self.nesting + 1)):
            return poutine.trace(poutine.replay(model, trace=given)).get_trace(*self.batch)

    def _log_q(self, values: dict, num_chains: int, num_data: int) -> torch.Tensor:
        if not self.plain_guide:
            return guide_log_density(
                self.guide, self.batch, None, self.nesting, num_chains, values=values,
                honour_scales=False,
            )  # fmt: skip
        name, site = next(
            (n, s)
            for n, s in self.guide_trace.nodes.items()
            if n in values and s["type"] == "sample"
        )
        log_q = site["fn"].log_prob(values[name])
        return per_datapoint_log_prob(site, self.nesting, num_chains, num_data, log_q)


def _gradient(total: torch.Tensor, u: torch.Tensor, retain_graph: bool) -> torch.Tensor:
    (grad,) = torch.autograd.grad(total.sum(), u, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(u) if grad is None else grad
