"""Priors p(z): modules that return a Pyro distribution with one event dimension.

A prior is an ``nn.Module`` whose ``forward()`` returns a distribution over ``z`` with
``event_shape == (z_dim,)`` and empty batch shape; the ``"data"`` plate broadcasts it over the
batch. Learnable priors keep their parameters as module parameters, which
:class:`pvae.VAE` registers with Pyro. Adding a prior = one class + one line in ``PRIORS``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.nn import functional

from pvae.models.likelihood_base import inverse_softplus
from pvae.models.registry import build

# Mixture log-densities are evaluated in chunks of at most this many (point, component,
# dimension) terms: IWAE evaluation scores ~1e5 latents at once against up to ~1e3 components.
_MIXTURE_CHUNK = 4_000_000


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


class LearnedGaussianPrior(nn.Module):
    """p(z) = N(mu, diag(sigma^2)) with learned ``mu`` and ``sigma`` (starting at N(0, I)).

    The scale is ``softplus`` of an unconstrained parameter. With a plain Gaussian guide and
    decoder this adds no expressiveness (an affine map of z can be absorbed by the networks),
    but it is the simplest learned prior and the usual baseline.

    Example::

        >>> prior = LearnedGaussianPrior(2)
        >>> prior().log_prob(torch.zeros(2))
        tensor(-1.8379, grad_fn=<SumBackward1>)
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.full((z_dim,), inverse_softplus(1.0)))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, functional.softplus(self.raw_scale)).to_event(1)


class DiagonalGaussianMixture(dist.TorchDistribution):
    """sum_k pi_k N(z; mu_k, diag(sigma_k^2)): K components shared by the whole batch.

    The same density as ``MixtureSameFamily(Categorical(logits), Normal(loc, scale)
    .to_event(1))``, but ``log_prob`` works through the points in chunks, so scoring many
    latents against many components (IWAE evaluation against a VampPrior) needs bounded
    memory. Parameters: ``logits`` [K], ``loc`` and ``scale`` [K, D]; the batch shape only
    records how the ``"data"`` plate expanded it.

    Example::

        >>> mixture = DiagonalGaussianMixture(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3))
        >>> mixture.log_prob(torch.zeros(3))
        tensor(-2.7568)
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits, loc, scale, batch_shape=(), validate_args=None):
        if logits.dim() != 1 or loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError("expected logits [K], loc and scale [K, D]")
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalGaussianMixture, _instance)
        new.logits, new.loc, new.scale = self.logits, self.loc, self.scale
        super(DiagonalGaussianMixture, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def mixture_distribution(self) -> dist.Categorical:
        return dist.Categorical(logits=self.logits)

    @property
    def component_distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            k = self.mixture_distribution.sample(shape)
            return torch.normal(self.loc[k], self.scale[k])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        num_components, z_dim = self.loc.shape
        # sum_d (z_d - mu_kd)^2 / s_kd^2 expanded into two matrix products: a [points, K]
        # result instead of a [points, K, D] one, three times faster to train a VampPrior
        # with. In float64 (MPS has none), since the expansion's terms cancel near mu_k.
        wide = torch.float32 if value.device.type == "mps" else torch.float64
        points = value.reshape(-1, z_dim).to(wide)
        scale, loc = self.scale.to(wide), self.loc.to(wide)
        precision = scale.pow(-2)
        constant = (
            torch.log_softmax(self.logits.to(wide), -1)
            - scale.log().sum(-1)
            - 0.5 * ((loc.pow(2) * precision).sum(-1) + z_dim * math.log(2 * math.pi))
        )
        step = max(1, _MIXTURE_CHUNK // (num_components * z_dim))
        log_p = [
            torch.logsumexp(
                constant - 0.5 * (chunk.pow(2) @ precision.T) + chunk @ (loc * precision).T,
                dim=-1,
            )
            for chunk in points.split(step)
        ]
        log_p = torch.cat(log_p).to(value.dtype).reshape(value.shape[:-1])
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    @property
    def mean(self) -> torch.Tensor:
        weights = torch.softmax(self.logits, -1)
        return (weights.unsqueeze(-1) * self.loc).sum(0).expand(self.batch_shape + self.event_shape)


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = sum_k pi_k N(mu_k, diag(sigma_k^2)), all learned (e.g. Dilokthanakul et al., 2016).

    Locations start as draws from N(0, I), scales at 1 and weights uniform, so components
    begin distinct and overlapping. ``num_components`` is K.

    Example::

        >>> prior = MixtureOfGaussiansPrior(2, num_components=5)
        >>> prior().event_shape, prior.loc.shape
        (torch.Size([2]), torch.Size([5, 2]))
    """

    def __init__(self, z_dim: int, num_components: int = 10):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be ≥ 1, got {num_components}")
        self.z_dim, self.num_components = z_dim, num_components
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, z_dim))
        self.raw_scale = nn.Parameter(torch.full((num_components, z_dim), inverse_softplus(1.0)))

    def forward(self) -> dist.TorchDistribution:
        return DiagonalGaussianMixture(self.logits, self.loc, functional.softplus(self.raw_scale))


class VampPrior(nn.Module):
    """VampPrior: p(z) = (1/K) sum_k q(z | u_k), with K learned pseudo-inputs u_k.

    Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018. The pseudo-inputs live in data
    space (flat, ``x_dim`` values each, kept in [0, 1] by a hard tanh as in the paper) and are
    pushed through the VAE's own encoder, so the prior follows the aggregate posterior. The
    components are the encoder's diagonal Gaussians (with a flow guide: its Gaussian base).

    The encoder is held by reference, not as a submodule: its parameters belong to the guide
    (registered with Pyro as ``"encoder"``), and registering them a second time under the
    prior's name would hand the same tensor to the optimizer twice. Only the pseudo-inputs
    are the prior's parameters. ``initialize(x)`` sets them to datapoints, a good start.

    Example::

        >>> from pvae.models.nets import GaussianEncoder
        >>> prior = VampPrior(4, GaussianEncoder(784, 4), x_dim=784, num_components=50)
        >>> prior().log_prob(torch.zeros(7, 4)).shape
        torch.Size([7])
    """

    uses_encoder = True

    def __init__(self, z_dim: int, encoder: nn.Module, x_dim: int, num_components: int = 500):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be ≥ 1, got {num_components}")
        if getattr(encoder, "cond_dim", 0):
            raise ValueError(
                "the vamp prior needs an unconditional encoder: a conditional VAE's encoder "
                "takes a label the pseudo-inputs do not have; use another prior"
            )
        self.z_dim, self.x_dim, self.num_components = z_dim, x_dim, num_components
        self._encoder = (encoder,)  # a tuple hides it from nn.Module: not a submodule
        # Uniform(0.25, 0.75) keeps every pseudo-pixel inside the hard tanh's linear range.
        self.pseudo_inputs = nn.Parameter(0.25 + 0.5 * torch.rand(num_components, x_dim))
        self.register_buffer("logits", torch.zeros(num_components))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the pseudo-inputs to K datapoints of ``x`` drawn without replacement."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[0] < self.num_components or x.shape[1] != self.x_dim:
            raise ValueError(
                f"initialize needs at least {self.num_components} datapoints of {self.x_dim} "
                f"values, got shape {tuple(x.shape)}"
            )
        chosen = torch.randperm(x.shape[0], device=x.device)[: self.num_components]
        self.pseudo_inputs.copy_(x[chosen].to(self.pseudo_inputs))

    def forward(self) -> dist.TorchDistribution:
        u = functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        loc, scale = self.encoder(u)[:2]
        return DiagonalGaussianMixture(self.logits, loc, scale)


class FlowPrior(nn.Module):
    """p(z): N(0, I) pushed through a masked autoregressive flow (MAF) of affine layers.

    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
    NeurIPS 2017; as a VAE prior, Chen et al., "Variational Lossy Autoencoder", ICLR 2017.
    Built from ``pyro.distributions.transforms.AffineAutoregressive``, inverted so that
    ``log_prob(z)`` (every training step) takes one network pass per layer while sampling
    (pictures only) takes ``z_dim``; the variable order is reversed between layers.

    Example::

        >>> prior = FlowPrior(3, num_flows=2)
        >>> prior().log_prob(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, z_dim: int, num_flows: int = 2, hidden_dims: list[int] | None = None):
        super().__init__()
        if num_flows < 1:
            raise ValueError(f"num_flows must be ≥ 1, got {num_flows}")
        self.z_dim = z_dim
        hidden_dims = list(hidden_dims) if hidden_dims is not None else [3 * z_dim + 1]
        order = torch.arange(z_dim)
        self.flows = nn.ModuleList(
            T.AffineAutoregressive(AutoRegressiveNN(z_dim, hidden_dims, permutation=order))
            for _ in range(num_flows)
        )
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def forward(self) -> dist.TorchDistribution:
        transforms = []
        for i, flow in enumerate(self.flows):
            if i > 0:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.inv)
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, transforms)


PRIORS: dict[str, type[nn.Module]] = {
    "standard_normal": StandardNormalPrior,
    "learned_gaussian": LearnedGaussianPrior,
    "mog": MixtureOfGaussiansPrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
}


def make_prior(
    name: str,
    z_dim: int,
    encoder: nn.Module | None = None,
    x_dim: int | None = None,
    **options,
) -> nn.Module:
    """Build a prior by name; ``options`` are the class's keyword arguments.

    ``encoder`` and ``x_dim`` are needed by the VampPrior only.

    Example::

        >>> make_prior("mog", 50, num_components=20).num_components
        20
    """
    required = {"z_dim": z_dim}
    if getattr(PRIORS.get(name), "uses_encoder", False):
        if encoder is None or x_dim is None:
            raise ValueError(f"prior {name!r} needs the encoder and x_dim")
        required.update(encoder=encoder, x_dim=x_dim)
    return build(PRIORS, "prior", name, required, options)
