"""Likelihoods p(x|z): modules that turn decoder outputs into a Pyro distribution over x.

A likelihood is an ``nn.Module`` with ``forward(params, event_dim)`` returning a distribution
whose event covers one datapoint, ``mean(params, event_dim)`` (what pictures show),
``check_data(x)`` raising a one-line ``ValueError`` that says what to do when ``x`` lies
outside its support, and ``params_per_dim``: how many decoder outputs it takes per data
dimension (split along the first event dimension: ``[..., 2 * D]`` or ``[..., 2 * C, H, W]``),
plus ``train_transform()`` and ``held_out_data(x)``, which say how to prepare grey-level
images for it (the Bernoulli likelihood binarizes them; the others take them as they are).
Adding one = one class + one line in ``LIKELIHOODS``.

Data convention: data are floats. Binary data are 0/1 (``bernoulli``); grey levels are in
[0, 1] (``continuous_bernoulli``, a density on [0, 1]^D); 8-bit images are ``x = k / 255``
with ``k`` in 0..255, as :mod:`pvae.data` loads them (``gaussian``, ``laplace``,
``discretized_logistic``). For 8-bit data the reported log-likelihood is that of the
discrete pixels k, so it can be compared across these three and with published
"nats"/"bits per dim" figures:

* ``discretized_logistic`` is a probability mass function over the 256 levels.
* ``gaussian`` and ``laplace`` are densities used on uniformly dequantized data (Theis, van
  den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016): every
  evaluation draws ``u ~ U[0, 1)^D`` and scores ``v = k + u`` under the density of ``v`` on
  [0, 256)^D, which is the density of ``y = v / 256`` in [0, 1)^D minus ``D log 256``.
  Since P(k) = integral over u of p(k + u), Jensen gives E_u log p(k + u) <= log P(k): the
  ELBO and the IWAE bound (u is one more latent with proposal U[0, 1)^D) stay lower bounds on
  the log-probability of the discrete data. The draw of u makes ``log_prob`` random: with a
  given seed :func:`pvae.log_likelihood` still repeats its figures, but for these two they
  also shift slightly with its chunk sizes, which change the order of the draws.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional

from pvae.models.continuous_bernoulli import StableContinuousBernoulli
from pvae.models.likelihood_base import DataPreparation, inverse_softplus, split_params, value_range
from pvae.models.real_likelihoods import REAL_LIKELIHOODS
from pvae.models.registry import build, options_of

NUM_LEVELS = 256  # 8-bit data: k in 0..255, x = k / 255
_REAL_VALUED_HINT = (
    "for real-valued data (e.g. standardized features) use likelihood 'normal' (or "
    "'normal_heteroscedastic', 'student_t'; 'beta' for data in (0, 1))"
)


def _check_unit_interval(x: torch.Tensor, name: str) -> None:
    if bool(((x < 0) | (x > 1)).any()):
        raise ValueError(
            f"the {name} likelihood needs data in [0, 1], got values in {value_range(x)}: "
            f"divide 8-bit images by 255 (x.float() / 255); {_REAL_VALUED_HINT}"
        )


def _check_8bit(x: torch.Tensor, name: str) -> None:
    _check_unit_interval(x, name)
    levels = x * (NUM_LEVELS - 1)
    off = (levels - levels.round()).abs() > 1e-3
    if bool(off.any()):
        bad = x[off][0].item()
        raise ValueError(
            f"the {name} likelihood needs 8-bit grey levels x = k / 255 (k = 0..255), but "
            f"{int(off.sum())} values are not, e.g. {bad:g}: quantize with "
            "(x * 255).round() / 255, or use the continuous_bernoulli likelihood for "
            f"continuous data in [0, 1]; {_REAL_VALUED_HINT}"
        )


class BinaryBernoulli(dist.Bernoulli):
    """``Bernoulli(logits=...)`` whose ``log_prob`` takes one pass over the pixels.

    On binary x, log p(x) = log sigmoid((2x - 1) · logits): the value of
    ``-binary_cross_entropy_with_logits`` (more accurate where ``|logits|`` is large, as it
    never subtracts two large numbers), without BCE's extra passes and the negation of the
    full-size result, which cost about a third of an IWAE evaluation of an MNIST decoder
    on the CPU. Only for 0/1 data, as :meth:`BernoulliLikelihood.check_data` ensures.

    Example::

        >>> BinaryBernoulli(logits=torch.zeros(2)).log_prob(torch.tensor([0.0, 1.0]))
        tensor([-0.6931, -0.6931])
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return functional.logsigmoid((2 * value - 1) * self.logits)


class BernoulliLikelihood(DataPreparation, nn.Module):
    """Independent Bernoulli pixels parameterized by logits, for binary data.

    Logits (not probabilities) keep ``log_prob`` exact and stable: it is
    ``-binary_cross_entropy_with_logits``, never ``log(sigmoid(...))`` of a rounded value.
    Grey levels are not binary data: binarize them (``pvae.data.binarize``) so that the
    reported log-likelihood is that of a real probability mass function.

    Example::

        >>> BernoulliLikelihood()(torch.zeros(3), event_dim=1).log_prob(torch.ones(3))
        tensor(-2.0794)
    """

    params_per_dim = 1
    # Grey levels re-binarized every training minibatch (Burda et al., 2016), held-out ones
    # once with pvae's fixed seed.
    data_form = "binarized"

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        # Support checks belong to check_data, once, not to every training step.
        return BinaryBernoulli(logits=logits, validate_args=False).to_event(event_dim)

    def mean(self, logits: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return torch.sigmoid(logits)

    def check_data(self, x: torch.Tensor) -> None:
        binary = (x == 0) | (x == 1)
        if not bool(binary.all()):
            bad = x[~binary]
            raise ValueError(
                "the Bernoulli likelihood needs binary data (every value 0 or 1), but "
                f"{bad.numel()} values are not, e.g. {bad[0].item():g} (data range "
                f"{value_range(x)}). Scale grey levels to [0, 1] and "
                "binarize them with pvae.data.binarize (or pass transform=pvae.data.binarize "
                "to fit for dynamic binarization)."
            )


class ContinuousBernoulliLikelihood(DataPreparation, nn.Module):
    """Continuous Bernoulli pixels on [0, 1], with their normalizing constant.

    Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a pervasive error in
    variational autoencoders", NeurIPS 2019: :class:`StableContinuousBernoulli`, parameterized
    by logits and normalized at any logit (torch's version is not beyond ``|logits|`` ~ 16 in
    float32, which saturated background pixels reach). A density on [0, 1]^D for grey levels
    used as they are; its log-likelihood is not comparable with that of binarized or 8-bit
    discrete data. ``mean`` is the distribution's mean, not ``sigmoid(logits)`` (the paper's
    point).

    Example::

        >>> likelihood = ContinuousBernoulliLikelihood()
        >>> likelihood(torch.zeros(3), event_dim=1).log_prob(torch.full((3,), 0.2))
        tensor(0.)
    """

    params_per_dim = 1

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        return StableContinuousBernoulli(logits, validate_args=False).to_event(event_dim)

    def mean(self, logits: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return StableContinuousBernoulli(logits).mean

    def check_data(self, x: torch.Tensor) -> None:
        _check_unit_interval(x, "continuous Bernoulli")


class Dequantized(dist.TorchDistribution):
    """A continuous density for ``y`` in [0, 1) used on 8-bit data ``x = k / 255``.

    ``log_prob(x)`` draws ``u ~ U[0, 1)`` per element and returns
    ``base.log_prob((k + u) / 256) - log 256``: the log-density of ``k + u`` on [0, 256), whose
    expectation over u is a lower bound on log P(k) (see the module docstring). ``base`` is
    elementwise (empty event shape); so is this distribution, which ``.to_event`` sums.

    Example::

        >>> d = Dequantized(dist.Uniform(torch.tensor(0.0), torch.tensor(1.0)))
        >>> round(d.log_prob(torch.tensor(0.5)).item(), 4)  # log(1/256): uniform over 256 bins
        -5.5452
    """

    arg_constraints = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, base: dist.TorchDistribution, validate_args=None):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Dequantized, _instance)
        new.base = self.base.expand(batch_shape)
        super(Dequantized, new).__init__(new.base.batch_shape, torch.Size(), validate_args=False)
        return new

    def log_density(self, v: torch.Tensor) -> torch.Tensor:
        """Log-density of ``v = k + u`` on [0, 256): deterministic, for checks."""
        return self.base.log_prob(v / NUM_LEVELS) - math.log(NUM_LEVELS)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        k = (x * (NUM_LEVELS - 1)).round()
        shape = torch.broadcast_shapes(x.shape, self.batch_shape)
        u = torch.rand(shape, dtype=x.dtype, device=x.device)
        return self.log_density(k + u)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            v = self.base.sample(torch.Size(sample_shape)) * NUM_LEVELS
            return v.floor().clamp(0, NUM_LEVELS - 1) / (NUM_LEVELS - 1)


class _DequantizedLikelihood(DataPreparation, nn.Module):
    """Shared by the Gaussian and the Laplace likelihoods: a location per pixel from the
    decoder, one scale for all pixels (learned, or fixed when ``scale`` is given)."""

    params_per_dim = 1
    family: type[dist.TorchDistribution]
    name: str

    def __init__(self, scale: float | None = None):
        super().__init__()
        if scale is None:
            # One learned scale for all pixels, as in the sigma-VAE (Rybkin, Daniilidis &
            # Levine, ICML 2021); dequantization noise keeps it from collapsing to 0.
            self.raw_scale = nn.Parameter(torch.tensor(inverse_softplus(0.1)))
        else:
            if not scale > 0:
                raise ValueError(f"the {self.name} likelihood's scale must be > 0, got {scale}")
            self.register_buffer("raw_scale", torch.tensor(inverse_softplus(scale)))

    @property
    def scale(self) -> torch.Tensor:
        return functional.softplus(self.raw_scale)

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        base = self.family(loc, self.scale.expand(loc.shape), validate_args=False)
        return Dequantized(base, validate_args=False).to_event(event_dim)

    def mean(self, loc: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return loc.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        _check_8bit(x, self.name)


class GaussianLikelihood(_DequantizedLikelihood):
    """Gaussian pixels on dequantized 8-bit data; ``scale=None`` learns one shared scale.

    ``scale`` is in units of the data in [0, 1]. The reported log-likelihood is that of the
    discrete data (a lower bound on it): see :class:`Dequantized` and the module docstring.

    Example::

        >>> likelihood = GaussianLikelihood(scale=0.1)
        >>> likelihood(torch.full((4,), 0.5), event_dim=1).log_prob(torch.full((4,), 0.5)).shape
        torch.Size([])
    """

    family = dist.Normal
    name = "Gaussian"


class LaplaceLikelihood(_DequantizedLikelihood):
    """Laplace pixels on dequantized 8-bit data; ``scale=None`` learns one shared scale.

    Heavier tails than the Gaussian: the L1 reconstruction error. Same data convention and
    reported log-likelihood as :class:`GaussianLikelihood`.

    Example::

        >>> LaplaceLikelihood().scale.item() == GaussianLikelihood().scale.item()
        True
    """

    family = dist.Laplace
    name = "Laplace"


class DiscretizedLogistic(dist.TorchDistribution):
    """Logistic density integrated over the 256 bins of 8-bit data ``x = k / 255``: a pmf.

    P(k) = F(k/255 + 1/510) - F(k/255 - 1/510) with F the logistic CDF of ``loc`` and
    ``scale``; the first and last bins extend to -inf and +inf (Salimans, Karpathy, Chen &
    Kingma, "PixelCNN++", ICLR 2017; Kingma et al., "Improved Variational Inference with
    Inverse Autoregressive Flow", NeurIPS 2016). Elementwise; computed as
    log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)) for the bin edges b < a, which is
    exact and never subtracts two nearly equal CDF values.

    Example::

        >>> d = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1))
        >>> levels = torch.arange(256) / 255
        >>> round(d.log_prob(levels).exp().sum().item(), 5)
        1.0
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(torch.Size(batch_shape), validate_args=False)
        return new

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        half_bin = 0.5 / (NUM_LEVELS - 1)
        centred = x - self.loc
        upper = (centred + half_bin) / self.scale  # a: the CDF argument at the upper edge
        lower = (centred - half_bin) / self.scale  # b
        # The edge bins reach to -inf (k = 0) and +inf (k = 255); then the terms of the
        # formula that belong to the missing edge are log sigmoid(inf) = log(1 - 0) = 0.
        infinity = torch.tensor(math.inf, dtype=upper.dtype, device=upper.device)
        upper = torch.where(x > 1 - half_bin, infinity, upper)
        lower = torch.where(x < half_bin, -infinity, lower)
        return (
            functional.logsigmoid(upper)
            + functional.logsigmoid(-lower)
            + torch.log(-torch.expm1(lower - upper))
        )

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(
                1e-6, 1 - 1e-6
            )
            y = self.loc + self.scale * (u.log() - (-u).log1p())
            return (y * (NUM_LEVELS - 1)).round().clamp(0, NUM_LEVELS - 1) / (NUM_LEVELS - 1)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)


class DiscretizedLogisticLikelihood(DataPreparation, nn.Module):
    """Discretized logistic pixels for 8-bit data: a location and a log-scale per pixel.

    The decoder gives ``2 * D`` numbers per datapoint (locations first); the log-scale is
    clamped below at -7, as in PixelCNN++. ``log_prob`` is the exact log-probability of the
    discrete pixels (see :class:`DiscretizedLogistic`).

    Example::

        >>> likelihood = DiscretizedLogisticLikelihood()
        >>> params = torch.zeros(2 * 5)  # locations 0, log-scales 0
        >>> likelihood(params, event_dim=1).log_prob(torch.zeros(5)).shape
        torch.Size([])
    """

    params_per_dim = 2
    min_log_scale = -7.0

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        loc, log_scale = split_params(params, event_dim, 2)
        scale = log_scale.clamp(min=self.min_log_scale).exp()
        return DiscretizedLogistic(loc, scale, validate_args=False).to_event(event_dim)

    def mean(self, params: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return split_params(params, event_dim, 2)[0].clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        _check_8bit(x, "discretized logistic")


LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "laplace": LaplaceLikelihood,
    "discretized_logistic": DiscretizedLogisticLikelihood,
    **REAL_LIKELIHOODS,  # normal, normal_heteroscedastic, student_t, beta
}


def make_likelihood(name: str, x_dim: int | None = None, **options) -> nn.Module:
    """Build a likelihood by name; ``options`` are the class's keyword arguments.

    A likelihood whose class takes ``x_dim`` (one learned value per data dimension, as
    ``normal``) is given the data dimension ``x_dim``, which :func:`pvae.build_vae` passes.

    Example::

        >>> make_likelihood("gaussian", scale=0.1).scale
        tensor(0.1000)
        >>> make_likelihood("normal", x_dim=3).scale.shape
        torch.Size([3])
    """
    required = {}
    if name in LIKELIHOODS and "x_dim" in options_of(LIKELIHOODS[name]):
        if x_dim is None:
            raise ValueError(f"likelihood {name!r} learns one value per data dimension: pass x_dim")
        required["x_dim"] = x_dim
    return build(LIKELIHOODS, "likelihood", name, required, options)
