"""Likelihoods p(x|z): modules that turn decoder outputs into a Pyro distribution over x.

A likelihood is an ``nn.Module`` with ``forward(params, event_dim)`` returning a distribution
whose event covers one datapoint, and ``check_data(x)`` raising a ``ValueError`` that says what
to do when ``x`` lies outside its support. Adding one = one class + one line in
``LIKELIHOODS``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli pixels parameterized by logits, for binary data.

    Logits (not probabilities) keep ``log_prob`` exact and stable: it is
    ``-binary_cross_entropy_with_logits``, never ``log(sigmoid(...))`` of a rounded value.
    Grey levels are not binary data: binarize them (``pvae.data.binarize``) so that the
    reported log-likelihood is that of a real probability mass function.

    Example::

        >>> BernoulliLikelihood()(torch.zeros(3), event_dim=1).log_prob(torch.ones(3))
        tensor(-2.0794)
    """

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        # Support checks belong to check_data, once, not to every training step.
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(event_dim)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor) -> None:
        binary = (x == 0) | (x == 1)
        if not bool(binary.all()):
            bad = x[~binary]
            raise ValueError(
                "the Bernoulli likelihood needs binary data (every value 0 or 1), but "
                f"{bad.numel()} values are not, e.g. {bad[0].item():g} (data range "
                f"[{x.min().item():g}, {x.max().item():g}]). Scale grey levels to [0, 1] and "
                "binarize them with pvae.data.binarize (or pass transform=pvae.data.binarize "
                "to fit for dynamic binarization)."
            )


LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": BernoulliLikelihood,
}


def make_likelihood(name: str) -> nn.Module:
    """Build a likelihood by name, for example ``make_likelihood("bernoulli")``."""
    try:
        return LIKELIHOODS[name]()
    except KeyError:
        raise ValueError(
            f"unknown likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}"
        ) from None
