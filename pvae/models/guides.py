"""Guide families q(z|x): modules that turn the encoder's outputs into a distribution over z.

The encoder gives a location, a scale and, when the family asks for one (``context_dim >
0``), a context vector per datapoint; the family returns a distribution with event shape
``(z_dim,)`` and one batch dimension per datapoint, reparameterized so that every objective
works. :class:`pvae.VAE` samples its ``"latent"`` site from it. Adding a family = one class
+ one line in ``GUIDES``.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from pvae.models.registry import ModelError, build


class GaussianGuide(nn.Module):
    """q(z|x) = N(loc(x), diag(scale(x)^2)): the mean-field Gaussian of Kingma & Welling (2014).

    Example::

        >>> q = GaussianGuide(2)(torch.zeros(5, 2), torch.ones(5, 2))
        >>> q.batch_shape, q.event_shape
        (torch.Size([5]), torch.Size([2]))
    """

    context_dim = 0

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, loc, scale, context=None) -> dist.TorchDistribution:
        return dist.Normal(loc, scale).to_event(1)

    def point(self, loc, scale, context=None) -> torch.Tensor:
        """A representative z for pictures (reconstructions): the mean."""
        return loc


class IAFGuide(nn.Module):
    """q(z|x): the encoder's Gaussian followed by inverse autoregressive flow (IAF) layers.

    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improved Variational Inference
    with Inverse Autoregressive Flow", NeurIPS 2016. Each layer is Pyro's
    ``ConditionalAffineAutoregressive`` in its numerically stable form,
    z' = sigma * z + (1 - sigma) * m with (m, sigma) from a MADE network of z and the
    encoder's context h (``context_dim`` values; 0 gives one flow shared by all datapoints);
    the variable order is reversed between layers. Sampling and scoring a sample take one
    network pass per layer; scoring another value (as the STL and DReG objectives do, on
    detached copies) inverts the flow in ``z_dim`` passes.

    Example::

        >>> guide = IAFGuide(3, num_flows=2, context_dim=4)
        >>> q = guide(torch.zeros(5, 3), torch.ones(5, 3), torch.zeros(5, 4))
        >>> q.rsample().shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        z_dim: int,
        num_flows: int = 2,
        hidden_dims: list[int] | None = None,
        context_dim: int | None = None,
    ):
        super().__init__()
        if num_flows < 1:
            raise ValueError(f"num_flows must be ≥ 1, got {num_flows}")
        self.z_dim = z_dim
        self.context_dim = z_dim if context_dim is None else context_dim
        hidden_dims = list(hidden_dims) if hidden_dims is not None else [4 * z_dim]
        order = torch.arange(z_dim)
        if self.context_dim > 0:
            self.flows = nn.ModuleList(
                T.ConditionalAffineAutoregressive(
                    ConditionalAutoRegressiveNN(
                        z_dim, self.context_dim, hidden_dims, permutation=order
                    ),
                    stable=True,
                )
                for _ in range(num_flows)
            )
        else:
            self.flows = nn.ModuleList(
                T.AffineAutoregressive(
                    AutoRegressiveNN(z_dim, hidden_dims, permutation=order), stable=True
                )
                for _ in range(num_flows)
            )
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def _transforms(self, context) -> list:
        transforms = []
        for i, flow in enumerate(self.flows):
            if i > 0:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.condition(context) if self.context_dim > 0 else flow)
        return transforms

    def _check_context(self, context) -> None:
        if self.context_dim > 0 and (context is None or context.shape[-1] != self.context_dim):
            raise ModelError(
                f"the IAF guide needs a context of {self.context_dim} values from the "
                "encoder: build the encoder with context_dim equal to the guide's"
            )

    def forward(self, loc, scale, context=None) -> dist.TorchDistribution:
        self._check_context(context)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, self._transforms(context))

    def point(self, loc, scale, context=None) -> torch.Tensor:
        """The flow applied to the Gaussian's mean: a representative z for pictures."""
        self._check_context(context)
        z = loc
        for transform in self._transforms(context):
            z = transform(z)
        return z


GUIDES: dict[str, type[nn.Module]] = {
    "gaussian": GaussianGuide,
    "iaf": IAFGuide,
}


def make_guide(name: str, z_dim: int, **options) -> nn.Module:
    """Build a guide family by name; ``options`` are the class's keyword arguments.

    Example::

        >>> make_guide("iaf", 8, num_flows=3).context_dim
        8
    """
    return build(GUIDES, "guide", name, {"z_dim": z_dim}, options)
