"""Neural networks for encoders and decoders: fully connected blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}: choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class MLP(nn.Sequential):
    """Fully connected network: ``in_dim -> hidden_dims... -> out_dim``, no activation at the end.

    Example::

        >>> net = MLP(784, [400, 400], 100, activation="tanh")
        >>> net(torch.zeros(3, 784)).shape
        torch.Size([3, 100])
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "relu"
    ):
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), _activation(activation)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class GaussianEncoder(nn.Module):
    """Maps a flat datapoint to the location and scale of a diagonal Gaussian over ``z``.

    The scale is ``softplus(raw) + min_scale``: positive, and bounded away from zero so that
    ``log q(z|x)`` cannot blow up when the encoder becomes over-confident.

    Example::

        >>> encoder = GaussianEncoder(784, 50, hidden_dims=[400])
        >>> loc, scale = encoder(torch.rand(8, 784))
        >>> loc.shape, bool((scale > 0).all())
        (torch.Size([8, 50]), True)
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        super().__init__()
        self.x_dim, self.z_dim, self.min_scale = x_dim, z_dim, min_scale
        self.net = MLP(x_dim, hidden_dims, 2 * z_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x.reshape(*x.shape[:-1], self.x_dim)).chunk(2, dim=-1)
        return loc, functional.softplus(raw_scale) + self.min_scale


class MLPDecoder(nn.Module):
    """Maps ``z`` to the parameters of the likelihood (for example Bernoulli logits) of ``x``.

    Example::

        >>> decoder = MLPDecoder(50, 784, hidden_dims=[400])
        >>> decoder(torch.zeros(8, 50)).shape
        torch.Size([8, 784])
    """

    def __init__(
        self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (400,), activation: str = "relu"
    ):
        super().__init__()
        self.z_dim, self.x_dim = z_dim, x_dim
        self.net = MLP(z_dim, hidden_dims, x_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
