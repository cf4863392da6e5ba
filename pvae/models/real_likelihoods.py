"""Likelihoods p(x|z) for real-valued data: Gaussian, Student-t, and Beta on (0, 1).

For continuous features (tabular columns, sensor readings), best standardized to mean 0 and
variance 1 per column first, so that the default scales and floors below are in the data's
units. The grey-level likelihoods of :mod:`pvae.models.likelihoods` (``gaussian``,
``laplace``: 8-bit images, dequantized) refuse such data; these take any finite value:

* ``normal``: a location per dimension from the decoder, a learned scale per dimension.
* ``normal_heteroscedastic``: location and scale per dimension from the decoder.
* ``student_t``: a location per dimension from the decoder, learned scale and degrees of
  freedom per dimension, for heavy-tailed data or outliers (Takahashi et al., "Student-t
  Variational Autoencoder for Robust Density Estimation", IJCAI 2018).
* ``beta``: mean and concentration per dimension from the decoder, for data in (0, 1).

Their log-likelihoods are log-densities of the data as given (in nats, with the data's
units): not comparable with the 8-bit likelihoods' log-probabilities of discrete pixels.

Every positive parameter is ``floor + softplus(raw)``. The floors are not there for
numerics alone: a density on continuous data has no upper bound when its scale may shrink
to 0, so a decoder that reproduces one datapoint exactly can send the bound to +infinity
(Mattei & Frellsen, "Leveraging the Exact Likelihood of Deep Latent Variable Models",
NeurIPS 2018). With the scale at least ``min_scale``, log p(x|z) is at most
-log(min_scale * sqrt(2 pi)) per dimension (a Student-t, at most -log(min_scale) plus a
constant), so the bound is finite and the maximum-likelihood problem well posed.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional

from pvae.models.likelihood_base import DataPreparation, inverse_softplus, split_params, value_range

__all__ = [
    "REAL_LIKELIHOODS",
    "BetaLikelihood",
    "HeteroscedasticNormalLikelihood",
    "NormalLikelihood",
    "StudentTLikelihood",
]


def _check_finite(x: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(
            f"the {name} likelihood needs finite values, but {int((~finite).sum())} are NaN or "
            "infinite: drop or impute them first"
        )


def _check_positive(value: float, what: str, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"the {name} likelihood's {what} must be a number > 0, got {value!r}")


def _bounded_below(raw: torch.Tensor, floor: float) -> torch.Tensor:
    return floor + functional.softplus(raw)


def _per_dimension(vector: torch.Tensor, loc: torch.Tensor, event_dim: int) -> torch.Tensor:
    """A learned vector of ``x_dim`` values laid out as one event of ``loc`` (flat or image)."""
    event_shape = loc.shape[loc.dim() - event_dim :]
    if vector.numel() != math.prod(event_shape):
        raise ValueError(
            f"the likelihood learns {vector.numel()} values, one per data dimension, but the "
            f"data have {math.prod(event_shape)} per datapoint: build it with that x_dim"
        )
    return vector.reshape(event_shape)


class _LearnedScale(DataPreparation, nn.Module):
    """A location per dimension from the decoder and a learned scale per dimension."""

    params_per_dim = 1
    name: str

    def __init__(self, x_dim: int, init_scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        _check_positive(min_scale, "min_scale", self.name)
        _check_positive(init_scale - min_scale, "init_scale - min_scale", self.name)
        self.min_scale = float(min_scale)
        raw = inverse_softplus(init_scale - min_scale)
        self.raw_scale = nn.Parameter(torch.full((x_dim,), raw))

    @property
    def scale(self) -> torch.Tensor:
        """The scale of each data dimension (in the data's units), at least ``min_scale``."""
        return _bounded_below(self.raw_scale, self.min_scale)

    def mean(self, loc: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return loc

    def check_data(self, x: torch.Tensor) -> None:
        _check_finite(x, self.name)


class NormalLikelihood(_LearnedScale):
    """Gaussian data dimensions: locations from the decoder, one learned scale per dimension.

    The likelihood for standardized real-valued data. ``init_scale`` is the starting scale
    (1: the spread of standardized data), ``min_scale`` its floor (see the module docstring:
    without one the bound can grow without limit on a dimension the decoder reproduces).

    Example::

        >>> likelihood = NormalLikelihood(x_dim=3)
        >>> round(likelihood(torch.zeros(3), event_dim=1).log_prob(torch.zeros(3)).item(), 4)
        -2.7568
    """

    name = "normal"

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        scale = _per_dimension(self.scale, loc, event_dim).expand(loc.shape)
        return dist.Normal(loc, scale, validate_args=False).to_event(event_dim)


class StudentTLikelihood(_LearnedScale):
    """Student-t data dimensions: locations from the decoder, learned scale and degrees of
    freedom per dimension; heavier tails than the Gaussian, so outliers cost less.

    Takahashi et al., "Student-t Variational Autoencoder for Robust Density Estimation",
    IJCAI 2018. The degrees of freedom are ``min_df + softplus(raw)``, above ``min_df`` = 2
    by default: the t has a mean only for df > 1 (``mean``, which pictures and
    reconstructions show, is then the location) and a variance only for df > 2; and as df
    falls towards 0 the density flattens into one that explains any value equally badly,
    which an optimizer can drift into early in training instead of fitting the locations.

    Example::

        >>> likelihood = StudentTLikelihood(x_dim=3)
        >>> likelihood.df  # init_df = 5
        tensor([5., 5., 5.], grad_fn=<AddBackward0>)
    """

    name = "Student-t"

    def __init__(
        self,
        x_dim: int,
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
        init_df: float = 5.0,
        min_df: float = 2.0,
    ):
        super().__init__(x_dim, init_scale, min_scale)
        _check_positive(min_df, "min_df", self.name)
        _check_positive(init_df - min_df, "init_df - min_df", self.name)
        self.min_df = float(min_df)
        self.raw_df = nn.Parameter(torch.full((x_dim,), inverse_softplus(init_df - min_df)))

    @property
    def df(self) -> torch.Tensor:
        """The degrees of freedom of each data dimension, above ``min_df``."""
        return _bounded_below(self.raw_df, self.min_df)

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        scale = _per_dimension(self.scale, loc, event_dim).expand(loc.shape)
        df = _per_dimension(self.df, loc, event_dim).expand(loc.shape)
        return dist.StudentT(df, loc, scale, validate_args=False).to_event(event_dim)


class HeteroscedasticNormalLikelihood(DataPreparation, nn.Module):
    """Gaussian data dimensions whose location and scale both come from the decoder.

    The decoder gives ``2 * D`` numbers per datapoint: the locations, then raw scales, with
    scale = ``min_scale + softplus(raw + c)``, where c makes a raw 0 mean ``init_scale``. A
    scale that depends on z lets the model say where it is unsure; it is also what makes the
    bound unbounded without a floor (Mattei & Frellsen, NeurIPS 2018: the decoder can give
    one training point a vanishing scale), so ``min_scale`` (in the data's units, 1e-3 by
    default for standardized data) caps each dimension's log-density at
    -log(min_scale * sqrt(2 pi)) ~ 5.99 nats.

    Example::

        >>> likelihood = HeteroscedasticNormalLikelihood()
        >>> params = torch.zeros(2 * 4)  # locations 0, raw scales 0
        >>> likelihood(params, event_dim=1).base_dist.scale  # init_scale
        tensor([1.0000, 1.0000, 1.0000, 1.0000])
    """

    params_per_dim = 2
    name = "heteroscedastic normal"

    def __init__(self, init_scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        _check_positive(min_scale, "min_scale", self.name)
        _check_positive(init_scale - min_scale, "init_scale - min_scale", self.name)
        self.min_scale = float(min_scale)
        # A decoder output of 0 means init_scale: the spread of standardized data at the start.
        self._shift = inverse_softplus(init_scale - min_scale)

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        loc, raw_scale = split_params(params, event_dim, 2)
        scale = _bounded_below(raw_scale + self._shift, self.min_scale)
        return dist.Normal(loc, scale, validate_args=False).to_event(event_dim)

    def mean(self, params: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return split_params(params, event_dim, 2)[0]

    def check_data(self, x: torch.Tensor) -> None:
        _check_finite(x, self.name)


class BetaLikelihood(DataPreparation, nn.Module):
    """Beta data dimensions on the open interval (0, 1): proportions, rates, fractions.

    The decoder gives ``2 * D`` numbers per datapoint: logits of the means m, then raw
    concentrations k = ``min_concentration + softplus(raw + c)`` (a raw 0 means
    ``init_concentration``), capped at ``max_concentration``; the Beta's parameters are
    a = m k and b = (1 - m) k (the mean and precision form of Ferrari & Cribari-Neto, "Beta
    Regression for Modelling Rates and Proportions", J. Appl. Stat. 2004). The cap plays the
    role of the Gaussian's scale floor: as k grows the Beta narrows to a point and its
    density on a datapoint the decoder reproduces grows without bound; with k <= 1e4 its
    standard deviation at m = 1/2, sqrt(m (1 - m) / (k + 1)), stays above 0.005.
    The mean m is kept in [1e-6, 1 - 1e-6] so that a and b stay > 0 in float32.

    Example::

        >>> likelihood = BetaLikelihood()
        >>> params = torch.zeros(2 * 3)  # means 1/2
        >>> likelihood.mean(params)
        tensor([0.5000, 0.5000, 0.5000])
    """

    params_per_dim = 2
    name = "beta"
    _mean_margin = 1e-6

    def __init__(
        self,
        init_concentration: float = 2.0,
        min_concentration: float = 1e-2,
        max_concentration: float = 1e4,
    ):
        super().__init__()
        low, high = min_concentration, max_concentration
        _check_positive(low, "min_concentration", self.name)
        _check_positive(
            init_concentration - low, "init_concentration - min_concentration", self.name
        )
        _check_positive(
            high - init_concentration, "max_concentration - init_concentration", self.name
        )
        self.min_concentration, self.max_concentration = float(low), float(high)
        # A decoder output of 0 means init_concentration: 2 with mean 1/2 is the uniform Beta(1, 1).
        self._shift = inverse_softplus(init_concentration - low)

    def _mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits).clamp(self._mean_margin, 1 - self._mean_margin)

    def forward(self, params: torch.Tensor, event_dim: int) -> dist.TorchDistribution:
        logits, raw = split_params(params, event_dim, 2)
        m = self._mean(logits)
        k = _bounded_below(raw + self._shift, self.min_concentration)
        k = k.clamp(max=self.max_concentration)
        return dist.Beta(m * k, (1 - m) * k, validate_args=False).to_event(event_dim)

    def mean(self, params: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
        return self._mean(split_params(params, event_dim, 2)[0])

    def check_data(self, x: torch.Tensor) -> None:
        _check_finite(x, self.name)
        inside = (x > 0) & (x < 1)
        if not bool(inside.all()):
            raise ValueError(
                "the beta likelihood needs data in the open interval (0, 1), but "
                f"{int((~inside).sum())} values are not (data range {value_range(x)}): squeeze "
                "data in [0, 1] inside with (x * (n - 1) + 0.5) / n for n datapoints (Smithson & "
                "Verkuilen, 2006) or eps + (1 - 2 * eps) * x with a small eps, e.g. 1e-3"
            )


REAL_LIKELIHOODS: dict[str, type[nn.Module]] = {
    "normal": NormalLikelihood,
    "normal_heteroscedastic": HeteroscedasticNormalLikelihood,
    "student_t": StudentTLikelihood,
    "beta": BetaLikelihood,
}
