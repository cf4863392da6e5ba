"""The VAE as a Pyro model/guide pair around an encoder and a decoder network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.likelihoods import BernoulliLikelihood, make_likelihood
from pvae.nets import GaussianEncoder, MLPDecoder
from pvae.priors import StandardNormalPrior, make_prior


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class VAE(nn.Module):
    """Variational autoencoder: ``model`` is p(z) p(x|z), ``guide`` is q(z|x).

    Both are ordinary Pyro functions: every datapoint sits in ``pyro.plate("data", ...)``,
    the latent site is called ``"latent"`` and the observed one ``"obs"``. The prior and the
    likelihood are modules handed in (defaults: N(0, I) and Bernoulli logits), so a new one
    plugs in without touching this code.

    Example::

        >>> vae = VAE(GaussianEncoder(784, 20), MLPDecoder(20, 784))
        >>> x = torch.bernoulli(torch.full((5, 784), 0.3))
        >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module | None = None,
        likelihood: nn.Module | None = None,
        z_dim: int | None = None,
    ):
        super().__init__()
        z_dim = z_dim if z_dim is not None else getattr(encoder, "z_dim", None)
        if prior is None and z_dim is None:
            raise ValueError("pass z_dim (or an encoder with a z_dim attribute, or a prior)")
        self.z_dim = z_dim
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
        # Registering parameter-free modules with Pyro would cost a loop per step for nothing.
        self._learned_prior = _has_parameters(self.prior)
        self._learned_likelihood = _has_parameters(self.likelihood)
        # Filled by build_vae so that checkpoints can rebuild the same architecture.
        self.model_args: dict[str, Any] = {}

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        if self._learned_prior:
            pyro.module("prior", self.prior)
        if self._learned_likelihood:
            pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", self.prior())
            pyro.sample("obs", self.likelihood(self.decoder(z), event_dim=x.dim() - 1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` saying what to do if ``x`` is outside the likelihood's support."""
        self.likelihood.check_data(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z|x)."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z), e.g. pixel probabilities for a Bernoulli likelihood."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at the posterior mean of z: the usual picture of a reconstruction."""
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """Means of p(x|z) for ``num_samples`` draws of z from the prior."""
        return self.decode(self.prior().sample((num_samples,)))


def build_vae(
    x_dim: int,
    z_dim: int = 50,
    hidden_dims: Sequence[int] = (400,),
    activation: str = "relu",
    prior: str = "standard_normal",
    likelihood: str = "bernoulli",
) -> VAE:
    """A fully connected VAE chosen by names and sizes (the arguments are kept for checkpoints).

    Example::

        >>> vae = build_vae(784, z_dim=20, hidden_dims=[400])
        >>> vae.model_args["z_dim"]
        20
    """
    vae = VAE(
        GaussianEncoder(x_dim, z_dim, hidden_dims, activation),
        MLPDecoder(z_dim, x_dim, hidden_dims, activation),
        prior=make_prior(prior, z_dim),
        likelihood=make_likelihood(likelihood),
    )
    vae.model_args = dict(
        x_dim=x_dim,
        z_dim=z_dim,
        hidden_dims=list(hidden_dims),
        activation=activation,
        prior=prior,
        likelihood=likelihood,
    )
    return vae
