"""The VAE with several stochastic layers of Burda, Grosse & Salakhutdinov (2016), §5.

Latents z1 (next to the data) .. zL (on top), all per datapoint in the ``"data"`` plate:

* model p(zL) p(z_{L-1} | zL) ... p(z1 | z2) p(x | z1), with p(zL) = N(0, I);
* guide q(z1 | x) q(z2 | z1) ... q(zL | z_{L-1}), so each latent's guide depends on the one
  drawn below it (the case :class:`pvae.objectives.DReG` handles with its dependent-latent
  surrogate).

Every conditional is a diagonal Gaussian whose location and scale an MLP gives (the scale
softplus-parameterized, as in :class:`pvae.nets.GaussianEncoder`, which computes them); x
given z1 takes any likelihood of :mod:`pvae.likelihoods`. Burda et al.'s two-layer MNIST
model is ``build_vae(784, hierarchy=[100, 50], hidden_dims=[200, 200], activation="tanh")``:
784-200-200-100 between x and z1 and 100-100-50 between z1 and z2 (the layers between z_l
and z_{l+1} are as many as ``hidden_dims`` and as wide as z_l).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.infer.param_store import register_module
from pvae.models.guides import GaussianGuide
from pvae.models.likelihoods import make_likelihood
from pvae.models.nets import GaussianEncoder, MLPDecoder
from pvae.models.priors import StandardNormalPrior
from pvae.models.vae import VAE

# build_vae settings a hierarchical VAE does not take, with the value that means "unused".
_UNSUPPORTED = {
    "network": "mlp",
    "prior": "standard_normal",
    "guide": "gaussian",
    "prior_options": {},
    "guide_options": {},
    "beta": 1.0,
    "warmup_epochs": 0,
    "num_classes": 0,
    "adversarial": False,
}


def _gaussian(net: nn.Module, inputs: torch.Tensor) -> dist.TorchDistribution:
    loc, scale = net(inputs)
    return dist.Normal(loc, scale).to_event(1)


class HierarchicalVAE(VAE):
    """A VAE with stochastic layers z1 .. zL (Burda, Grosse & Salakhutdinov, ICLR 2016, §5).

    ``guide_nets[l]`` gives q(z_{l+2} | z_{l+1}) and ``prior_nets[l]`` gives
    p(z_{l+1} | z_{l+2}), both as (location, scale) of a diagonal Gaussian; ``encoder`` gives
    q(z1 | x) and ``decoder`` the likelihood's parameters given z1. The sites are ``"z1"``
    .. ``"zL"`` and ``"obs"``; ``z_dims`` are the latent sizes from z1 up and ``z_dim`` the
    top one's (the N(0, I) prior's). What :class:`VAE` offers works on the top latent
    (``prior``, ``sample``, ``decode``, ``encode``) with the layers in between at their
    conditional means, except ``reconstruct``, which goes through z1 alone: the mean of
    p(x | z1) at the mean of q(z1 | x). No variants (labels, beta): build them with
    :class:`VAE`. Every objective but ``"meanfield"`` applies: TraceMeanField_ELBO's closed-form
    KL(q(z1 | x) || p(z1 | z2)) at a z2 drawn given z1 is not this guide's ELBO (Pyro only
    warns).

    Example::

        >>> vae = HierarchicalVAE.build(784, [100, 50], hidden_dims=[200, 200],
        ...                             activation="tanh")
        >>> x = torch.bernoulli(torch.full((5, 784), 0.3))
        >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        >>> vae.sample(3).shape
        torch.Size([3, 784])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        guide_nets: Sequence[nn.Module],
        prior_nets: Sequence[nn.Module],
        likelihood: nn.Module | None = None,
        x_shape: Sequence[int] | None = None,
    ):
        if len(guide_nets) != len(prior_nets) or not guide_nets:
            raise ValueError(
                f"a hierarchical VAE needs one guide net and one prior net per latent layer "
                f"above z1, got {len(guide_nets)} and {len(prior_nets)}"
            )
        z_dims = [encoder.z_dim, *(net.z_dim for net in guide_nets)]
        super().__init__(
            encoder,
            decoder,
            prior=StandardNormalPrior(z_dims[-1]),
            likelihood=likelihood,
            z_dim=z_dims[-1],
            guide_family=GaussianGuide(z_dims[0]),
            x_shape=x_shape,
        )
        self.z_dims = tuple(z_dims)
        self.guide_nets = nn.ModuleList(guide_nets)
        self.prior_nets = nn.ModuleList(prior_nets)

    @classmethod
    def build(
        cls,
        x_dim: int,
        z_dims: Sequence[int],
        hidden_dims: Sequence[int] = (200, 200),
        activation: str = "tanh",
        likelihood: nn.Module | None = None,
    ) -> HierarchicalVAE:
        """MLPs for latents ``z_dims`` (z1 first): ``hidden_dims`` between x and z1, as many
        layers as wide as z_l between z_l and z_{l+1}."""
        z_dims = _checked_sizes(z_dims)
        params_per_dim = likelihood.params_per_dim if likelihood is not None else 1
        hidden = list(hidden_dims)
        pairs = list(zip(z_dims[:-1], z_dims[1:], strict=True))
        return cls(
            GaussianEncoder(x_dim, z_dims[0], hidden, activation),
            MLPDecoder(z_dims[0], x_dim, hidden, activation, params_per_dim),
            [GaussianEncoder(low, high, [low] * len(hidden), activation) for low, high in pairs],
            [GaussianEncoder(high, low, [low] * len(hidden), activation) for low, high in pairs],
            likelihood=likelihood,
            x_shape=(x_dim,),
        )

    # --- the Pyro model and guide -------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._condition(x, y)  # refuses labels
        register_module("decoder", self.decoder)
        register_module("prior_nets", self.prior_nets)
        if self._learned_likelihood:
            register_module("likelihood", self.likelihood)
        top = len(self.z_dims)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z{top}", self.prior())
            for level in range(top - 1, 0, -1):
                z = pyro.sample(f"z{level}", _gaussian(self.prior_nets[level - 1], z))
            params = self._likelihood_params(z, (), x.shape[1:])
            pyro.sample("obs", self.likelihood(params, event_dim=x.dim() - 1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._condition(x, y)
        register_module("encoder", self.encoder)
        register_module("guide_nets", self.guide_nets)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z1", _gaussian(self.encoder, x))
            for level, net in enumerate(self.guide_nets, start=2):
                z = pyro.sample(f"z{level}", _gaussian(net, z))

    # --- pictures -----------------------------------------------------------------------

    def _down(self, z: torch.Tensor, draw: bool) -> torch.Tensor:
        """z1 from the top latent: each lower layer drawn from p, or at its mean."""
        for net in reversed(self.prior_nets):
            loc, scale = net(z)
            z = loc + scale * torch.randn_like(loc) if draw else loc
        return z

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Location and scale of q(z_L | z_{L-1}) with every lower latent at its mean."""
        self._condition(x, y)
        loc, scale = self.encoder(x)
        for net in self.guide_nets:
            loc, scale = net(loc)
        return loc, scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z1) for top-latent codes ``z`` [..., z_dim], z1 .. z_{L-1} at the
        means of p(z_l | z_{l+1})."""
        return super().decode(self._down(z, draw=False), y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z1) at the mean of q(z1 | x)."""
        self._condition(x, y)
        params = self._likelihood_params(self.encoder(x)[0], (), x.shape[1:])
        return self.likelihood.mean(params, event_dim=x.dim() - 1)

    @torch.no_grad()
    def sample(self, num_samples: int, y=None) -> torch.Tensor:
        """Means of p(x | z1) for ancestral draws zL ~ p(zL), ..., z1 ~ p(z1 | z2)."""
        z = self._down(self.prior().sample((num_samples,)), draw=True)
        return super().decode(z, y)


def _checked_sizes(z_dims) -> list[int]:
    sizes = list(z_dims) if isinstance(z_dims, (list, tuple)) else None
    if (
        sizes is None
        or len(sizes) < 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    ):
        raise ValueError(
            f"hierarchy must list two or more positive latent sizes, z1 first (e.g. [100, 50] "
            f"for Burda et al.'s two layers), got {z_dims!r}; for one latent layer use z_dim"
        )
    return sizes


def check_hierarchy(model_args: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` unless ``build_vae``'s arguments describe a hierarchical VAE.

    Example::

        >>> check_hierarchy({"hierarchy": [100, 50], "z_dim": 20})
        Traceback (most recent call last):
        ...
        ValueError: z_dim is the top latent's size, the last of hierarchy [100, 50]: set z_dim to 50
    """
    sizes = _checked_sizes(model_args["hierarchy"])
    if model_args.get("z_dim", sizes[-1]) != sizes[-1]:
        raise ValueError(
            f"z_dim is the top latent's size, the last of hierarchy {sizes}: set z_dim to "
            f"{sizes[-1]}"
        )
    for key, unused in _UNSUPPORTED.items():
        if model_args.get(key, unused) != unused:
            raise ValueError(
                f"a hierarchical VAE (hierarchy {sizes}) takes no {key} = "
                f"{model_args[key]!r}: it is an MLP VAE with a N(0, I) top prior and Gaussian "
                f"conditionals; drop {key}, or drop hierarchy"
            )


def build_hierarchical_vae(model_args: Mapping[str, Any]) -> HierarchicalVAE:
    """The hierarchical VAE for :func:`pvae.build_vae`'s arguments (``hierarchy`` set).

    Example::

        >>> vae = build_hierarchical_vae({"x_dim": 784, "hierarchy": [100, 50],
        ...                               "hidden_dims": [200, 200], "activation": "tanh"})
        >>> vae.z_dims
        (100, 50)
    """
    check_hierarchy(model_args)
    sizes = list(model_args["hierarchy"])
    likelihood = make_likelihood(
        model_args.get("likelihood", "bernoulli"),
        model_args["x_dim"],
        **model_args.get("likelihood_options", {}),
    )
    vae = HierarchicalVAE.build(
        model_args["x_dim"],
        sizes,
        model_args.get("hidden_dims", (200, 200)),
        model_args.get("activation", "tanh"),
        likelihood,
    )
    vae.model_args = {**model_args, "hierarchy": sizes}
    return vae
