"""The ELBO of a fully reparameterized guide, without building Pyro traces each step.

``Trace_ELBO`` records both programs in trace graphs, computes score-function parts it does
not need when every guide site is reparameterized, checks shapes and reads the loss back to
the host. For such guides the loss it returns and its gradient are those of

    - Σ_sites scale · log p  +  Σ_guide sites scale · log q,

which this module accumulates with one light handler while model and guide run; the
numbers are the same, as a test checks on shared draws. :func:`pvae.fit` uses it for
``objective="elbo"`` when :func:`supports` says the guide qualifies.
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pvae.infer.log_weights import sample_sites
from pvae.infer.plates import enumerated


class _Accumulate(Messenger):
    """Adds up ``scale * log_prob`` of every sample site; in the model, replays guide values."""

    def __init__(self, replay: dict[str, torch.Tensor] | None, params: dict[str, torch.Tensor]):
        super().__init__()
        self.replay, self.params = replay, params
        self.values: dict[str, torch.Tensor] = {}
        self.total = 0.0

    def _pyro_sample(self, msg) -> None:
        if self.replay is None or msg["is_observed"]:
            return
        # Like Trace_ELBO's replay: the guide's latents, and the guide's subsample indices
        # for the plates the model shares with it (a plate of the model alone draws its own).
        if not site_is_subsample(msg) or msg["name"] in self.replay:
            msg["value"] = self.replay[msg["name"]]
            msg["done"] = True

    def _pyro_param(self, msg) -> None:
        # Unconstrained parameters are their own leaves: skip the store's lookup and
        # constraint transform. Constrained ones go through Pyro as usual.
        value = self.params.get(msg["name"])
        if value is not None:
            msg["value"], msg["done"] = value, True

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        if site_is_subsample(msg):
            self.values[msg["name"]] = msg["value"]
            return
        log_prob = msg["fn"].log_prob(msg["value"])
        if log_prob.dtype in (torch.float16, torch.bfloat16):  # under autocast: sum in float32
            log_prob = log_prob.float()
        self.total = self.total + scale_and_mask(log_prob, msg["scale"], msg["mask"]).sum()
        if not msg["is_observed"]:
            self.values[msg["name"]] = msg["value"]


class ReparameterizedELBO:
    """``Trace_ELBO`` for guides whose latent sites all have ``rsample``, minus the overhead.

    Example::

        >>> loss = ReparameterizedELBO(num_particles=1, max_plate_nesting=1)
        >>> loss.differentiable_loss(vae.model, vae.guide, x)  # doctest: +SKIP
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1):
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting
        self.params: dict[str, torch.Tensor] = {}

    def cache_parameters(self, params: dict[str, torch.Tensor]) -> None:
        """Serve these unconstrained leaves directly (those with a real-valued constraint)."""
        store = pyro.get_param_store()
        self.params = {
            name: value
            for name, value in params.items()
            if store.get_param(name) is value  # identity transform: the leaf is the value
        }

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        guide_terms = _Accumulate(None, self.params)
        if self.num_particles == 1:
            with guide_terms:
                guide(*args, **kwargs)
            model_terms = _Accumulate(guide_terms.values, self.params)
            with model_terms:
                model(*args, **kwargs)
            return guide_terms.total - model_terms.total
        particles = pyro.plate(
            "num_particles_vectorized", self.num_particles, dim=-(self.max_plate_nesting + 1)
        )
        with particles, guide_terms:
            guide(*args, **kwargs)
        model_terms = _Accumulate(guide_terms.values, self.params)
        with particles, model_terms:
            model(*args, **kwargs)
        return (guide_terms.total - model_terms.total) / self.num_particles


def supports(guide_trace, model_trace) -> bool:
    """Whether the ELBO of this pair is what :class:`ReparameterizedELBO` computes, value and
    gradient: every guide site reparameterized (a guide factor with ``has_rsample=False``
    gets a score-function term from Trace_ELBO) and not enumerated, every model latent in the
    guide and none enumerated."""
    guide_latents = set()
    for name, site in sample_sites(guide_trace):
        if not site["fn"].has_rsample or enumerated(site):
            return False
        if not site["is_observed"]:
            guide_latents.add(name)
    return all(
        site["is_observed"] or name in guide_latents for name, site in sample_sites(model_trace)
    )
