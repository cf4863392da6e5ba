"""Neural networks for encoders and decoders: fully connected and convolutional, by name.

An encoder maps a batch of datapoints (flat ``[..., x_dim]`` or images ``[..., C, H, W]``) and,
for a conditional VAE, a condition vector ``[..., cond_dim]`` (e.g. a one-hot label) to the
location and scale of a diagonal Gaussian over ``z``, plus a context vector when
``context_dim > 0`` (for a flow guide, see :mod:`pvae.guides`). A decoder maps ``z`` (and the
condition) to the likelihood's parameters: ``params_per_dim`` numbers per data dimension, laid
out as ``[..., params_per_dim * x_dim]`` (MLP) or ``[..., params_per_dim * C, H, W]`` (conv),
the first parameter first. :data:`NETWORKS` maps a name to a builder of both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from pvae.models.registry import ModelError

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


def _flat(x: torch.Tensor, x_dim: int) -> torch.Tensor:
    """``x`` as ``[..., x_dim]``: flat data as they are, a batch of images flattened."""
    if x.shape[-1] == x_dim:
        return x
    if x.dim() >= 2 and x[0].numel() == x_dim:
        return x.reshape(x.shape[0], x_dim)
    raise ModelError(
        f"the network takes datapoints of {x_dim} values, got a tensor of shape {tuple(x.shape)}"
    )


def _with_condition(h: torch.Tensor, cond: torch.Tensor | None, cond_dim: int) -> torch.Tensor:
    if cond_dim == 0:
        if cond is not None:
            raise ModelError("this network takes no condition: build it with cond_dim > 0")
        return h
    if cond is None or cond.shape[-1] != cond_dim:
        got = "none" if cond is None else f"shape {tuple(cond.shape)}"
        raise ModelError(f"this network needs a condition of size {cond_dim}, got {got}")
    # The condition is per datapoint; h may carry extra (particle) dimensions on the left.
    return torch.cat([h, cond.expand(*h.shape[:-1], cond_dim).to(h.dtype)], dim=-1)


def _gaussian_head(out: torch.Tensor, z_dim: int, min_scale: float, context_dim: int):
    loc, raw_scale = out[..., :z_dim], out[..., z_dim : 2 * z_dim]
    # softplus(raw) + min_scale: positive, and bounded away from zero so that log q(z|x)
    # cannot blow up when the encoder becomes over-confident.
    scale = functional.softplus(raw_scale) + min_scale
    if context_dim == 0:
        return loc, scale
    return loc, scale, out[..., 2 * z_dim :]


class GaussianEncoder(nn.Module):
    """Maps a datapoint to the location and scale of a diagonal Gaussian over ``z``.

    Images are flattened. The scale is ``softplus(raw) + min_scale``. With ``context_dim > 0``
    it also returns a context vector for a flow guide (the ``h`` of Kingma et al., 2016); with
    ``cond_dim > 0`` it takes a condition (e.g. a one-hot label) next to ``x``.

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
        context_dim: int = 0,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.x_dim, self.z_dim, self.min_scale = x_dim, z_dim, min_scale
        self.context_dim, self.cond_dim = context_dim, cond_dim
        self.net = MLP(x_dim + cond_dim, hidden_dims, 2 * z_dim + context_dim, activation)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        h = _with_condition(_flat(x, self.x_dim), cond, self.cond_dim)
        return _gaussian_head(self.net(h), self.z_dim, self.min_scale, self.context_dim)


class MLPDecoder(nn.Module):
    """Maps ``z`` to the likelihood's parameters for ``x``: ``[..., params_per_dim * x_dim]``.

    Example::

        >>> decoder = MLPDecoder(50, 784, hidden_dims=[400])
        >>> decoder(torch.zeros(8, 50)).shape
        torch.Size([8, 784])
    """

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        params_per_dim: int = 1,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.z_dim, self.x_dim, self.cond_dim = z_dim, x_dim, cond_dim
        self.x_shape = (x_dim,)
        self.net = MLP(z_dim + cond_dim, hidden_dims, params_per_dim * x_dim, activation)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_with_condition(z, cond, self.cond_dim))


def _check_image_shape(image_shape: Sequence[int], num_layers: int) -> tuple[int, int, int]:
    if len(image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in image_shape):
        raise ValueError(
            f"a convolutional network needs image_shape = (channels, height, width), got "
            f"{tuple(image_shape)}"
        )
    factor = 2**num_layers
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(
            f"a convolutional network with {num_layers} stride-2 layers needs image sides "
            f"divisible by {factor}, got {image_shape[1]}x{image_shape[2]}: use fewer channels "
            "entries (layers) or pad the images"
        )
    return tuple(image_shape)


class ConvEncoder(nn.Module):
    """Convolutional encoder for ``C x H x W`` images: stride-2 4x4 convolutions, then an MLP.

    Each entry of ``channels`` is one convolution that halves the height and width (so the
    sides must be divisible by ``2 ** len(channels)``: 28x28 and 32x32 work with two). Takes
    flat ``[..., C*H*W]`` or image ``[..., C, H, W]`` batches; returns what
    :class:`GaussianEncoder` returns.

    Example::

        >>> encoder = ConvEncoder((1, 28, 28), z_dim=16, channels=[32, 64])
        >>> loc, scale = encoder(torch.rand(8, 784))
        >>> loc.shape
        torch.Size([8, 16])
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        z_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
        min_scale: float = 1e-4,
        context_dim: int = 0,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape, len(channels))
        self.x_dim = math.prod(self.image_shape)
        self.z_dim, self.min_scale = z_dim, min_scale
        self.context_dim, self.cond_dim = context_dim, cond_dim
        layers: list[nn.Module] = []
        width = self.image_shape[0]
        for out_channels in channels:
            layers += [nn.Conv2d(width, out_channels, 4, stride=2, padding=1)]
            layers += [_activation(activation)]
            width = out_channels
        self.conv = nn.Sequential(*layers, nn.Flatten())
        factor = 2 ** len(channels)
        features = width * (self.image_shape[1] // factor) * (self.image_shape[2] // factor)
        self.head = MLP(features + cond_dim, hidden_dims, 2 * z_dim + context_dim, activation)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        images, batch = _as_images(x, self.image_shape)
        h = self.conv(images).reshape(*batch, -1)
        h = _with_condition(h, cond, self.cond_dim)
        return _gaussian_head(self.head(h), self.z_dim, self.min_scale, self.context_dim)


def _as_images(x: torch.Tensor, image_shape: tuple[int, int, int]):
    """``x`` as ``[batch, C, H, W]`` for conv2d, and its leading (batch) shape."""
    if x.dim() >= 4 and tuple(x.shape[-3:]) == image_shape:
        batch = x.shape[:-3]
    elif x.dim() >= 2 and x.shape[-1] == math.prod(image_shape):
        batch = x.shape[:-1]
    else:
        raise ValueError(
            f"the convolutional network takes images of shape {image_shape} (or flat ones of "
            f"{math.prod(image_shape)} values), got a tensor of shape {tuple(x.shape)}"
        )
    return x.reshape(-1, *image_shape), batch


class ConvDecoder(nn.Module):
    """Convolutional decoder: an MLP from ``z``, then stride-2 4x4 transposed convolutions.

    Mirrors :class:`ConvEncoder`; returns ``[..., params_per_dim * C, H, W]`` (the first
    parameter's ``C`` channels first).

    Example::

        >>> decoder = ConvDecoder(16, (1, 28, 28), channels=[32, 64], params_per_dim=2)
        >>> decoder(torch.zeros(5, 8, 16)).shape
        torch.Size([5, 8, 2, 28, 28])
    """

    def __init__(
        self,
        z_dim: int,
        image_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
        params_per_dim: int = 1,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.image_shape = self.x_shape = _check_image_shape(image_shape, len(channels))
        self.z_dim, self.cond_dim = z_dim, cond_dim
        factor = 2 ** len(channels)
        self.start = (channels[-1], self.image_shape[1] // factor, self.image_shape[2] // factor)
        self.head = nn.Sequential(
            MLP(z_dim + cond_dim, hidden_dims, math.prod(self.start), activation),
            _activation(activation),
        )
        layers: list[nn.Module] = []
        widths = [*reversed(channels), params_per_dim * self.image_shape[0]]
        for i, (width, out_channels) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i > 0:
                layers.append(_activation(activation))
            layers.append(nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(_with_condition(z, cond, self.cond_dim))
        out = self.deconv(h.reshape(-1, *self.start))
        return out.reshape(*z.shape[:-1], *out.shape[1:])


def _mlp_networks(x_dim, z_dim, image_shape, sizes: dict) -> tuple[nn.Module, nn.Module]:
    encoder = GaussianEncoder(x_dim, z_dim, **_encoder_sizes(sizes))
    decoder = MLPDecoder(z_dim, x_dim, *_decoder_sizes(sizes))
    return encoder, decoder


def _conv_networks(x_dim, z_dim, image_shape, sizes: dict) -> tuple[nn.Module, nn.Module]:
    if image_shape is None:
        raise ValueError(
            "the conv network needs image-shaped data: pass image_shape=(C, H, W) (e.g. "
            f"[1, 28, 28] for MNIST), or use network 'mlp' for data of {x_dim} features"
        )
    if math.prod(image_shape) != x_dim:
        raise ValueError(
            f"image_shape {list(image_shape)} has {math.prod(image_shape)} values per image but "
            f"x_dim is {x_dim}: they must agree"
        )
    if not sizes["channels"]:
        raise ValueError("the conv network needs at least one entry in channels, e.g. [32, 64]")
    channels = sizes["channels"]
    encoder = ConvEncoder(image_shape, z_dim, channels, **_encoder_sizes(sizes))
    decoder = ConvDecoder(z_dim, image_shape, channels, *_decoder_sizes(sizes))
    return encoder, decoder


def _encoder_sizes(sizes: dict) -> dict:
    names = ("hidden_dims", "activation", "context_dim", "cond_dim")
    return {name: sizes[name] for name in names}


def _decoder_sizes(sizes: dict) -> tuple:
    names = ("hidden_dims", "activation", "params_per_dim", "cond_dim")
    return tuple(sizes[name] for name in names)


NETWORKS = {"mlp": _mlp_networks, "conv": _conv_networks}


def make_networks(
    name: str,
    x_dim: int,
    z_dim: int,
    image_shape: Sequence[int] | None = None,
    hidden_dims: Sequence[int] = (400,),
    activation: str = "relu",
    channels: Sequence[int] = (32, 64),
    params_per_dim: int = 1,
    context_dim: int = 0,
    cond_dim: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """An encoder and a decoder by name (``"mlp"`` or ``"conv"``).

    ``hidden_dims`` and ``activation`` shape the fully connected layers (all of the MLP; the
    layers between the convolutions and ``z`` for conv); ``channels`` the convolutions.

    Example::

        >>> encoder, decoder = make_networks("conv", 784, 8, image_shape=[1, 28, 28])
        >>> decoder(torch.zeros(2, 8)).shape
        torch.Size([2, 1, 28, 28])
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: choose one of {', '.join(NETWORKS)}")
    if image_shape is not None:
        image_shape = tuple(image_shape)
    sizes = dict(
        hidden_dims=list(hidden_dims),
        activation=activation,
        channels=list(channels),
        params_per_dim=params_per_dim,
        context_dim=context_dim,
        cond_dim=cond_dim,
    )
    return NETWORKS[name](x_dim, z_dim, image_shape, sizes)
