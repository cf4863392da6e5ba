"""Priors p(z): modules that return a Pyro distribution with one event dimension.

A prior is an ``nn.Module`` whose ``forward()`` returns a distribution over ``z`` with
``event_shape == (z_dim,)`` and empty batch shape; the ``"data"`` plate broadcasts it over the
batch. Learnable priors keep their parameters as module parameters, which
:class:`pvae.VAE` registers with Pyro. Adding a prior = one class + one line in ``PRIORS``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I).

    The zeros and ones are buffers, so ``.to(device)`` moves them with the model and no
    tensor is created on the fly in the training loop.

    Example::

        >>> StandardNormalPrior(2)().log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


PRIORS: dict[str, type[nn.Module]] = {
    "standard_normal": StandardNormalPrior,
}


def make_prior(name: str, z_dim: int) -> nn.Module:
    """Build a prior by name, for example ``make_prior("standard_normal", 50)``."""
    try:
        return PRIORS[name](z_dim)
    except KeyError:
        raise ValueError(f"unknown prior {name!r}: choose one of {', '.join(PRIORS)}") from None
