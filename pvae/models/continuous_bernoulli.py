"""The continuous Bernoulli distribution, normalized and accurate at any logit.

Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a pervasive error in variational
autoencoders", NeurIPS 2019. ``torch.distributions.ContinuousBernoulli`` clamps its probability
at the dtype's eps, which breaks the normalizer beyond ``|logits|`` ~ 16 in float32.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions.utils import broadcast_all
from torch.nn import functional

# The continuous Bernoulli with natural parameter eta (the logit) has density
# p(x) = exp(eta x - log Z(eta)) on [0, 1], with log Z(eta) = log((e^eta - 1) / eta): the paper's
# C(lambda) lambda^x (1 - lambda)^(1 - x) for lambda = sigmoid(eta), since
# log C(eta) = softplus(eta) - log Z(eta) = log(eta / tanh(eta / 2)). Near eta = 0 every closed
# form is 0/0 or cancels, so the functions below switch to Taylor series in eta for small
# |eta| (_cb_series_below); beyond, they use forms in a = |eta| built on expm1(-a), which
# neither overflow nor lose precision, however large |eta| is.

# log Z(eta) = eta / 2 + h(eta), h(eta) = log(sinh(eta / 2) / (eta / 2)), whose series is
# sum_k B_2k eta^2k / (2k (2k)!) (B_2k: Bernoulli numbers) and converges for |eta| < 2 pi.
_BERNOULLI_NUMBERS = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730)
_H = tuple(b / (2 * k * math.factorial(2 * k)) for k, b in enumerate(_BERNOULLI_NUMBERS, 1))
_H_PRIME = tuple(2 * k * c for k, c in enumerate(_H, 1))  # h'(eta) / eta, in powers of eta^2
_H_SECOND = tuple(2 * k * (2 * k - 1) * c for k, c in enumerate(_H, 1))  # h''(eta)
_H_ENTROPY = tuple((1 - 2 * k) * c for k, c in enumerate(_H, 1))  # h - eta h', over eta^2


def _cb_series_below(dtype: torch.dtype) -> float:
    # Where the six-term series' first omitted term (~|eta|^13 / 7e10 in the mean) meets the
    # rounding of the closed forms, which cancel (~eps / |eta| in the mean, ~eps / eta^2 in
    # the variance and the entropy): both stay within a few roundings on either side.
    return 0.35 if dtype == torch.float64 else 1.5


def _polynomial(z: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    result = coefficients[-1] * z + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        result = result * z + c
    return result


def _cb_sample_series_below(dtype: torch.dtype) -> float:
    # The sampler's and the CDF's series stop at eta^4; the gradient of the first omitted term
    # (up to eta^4 / 576) equals the rounding of the closed form's gradient (~eps / |eta|)
    # about here: 0.13 in float32, 0.0023 in float64.
    return (300 * torch.finfo(dtype).eps) ** 0.2


def _cb_branches(logits: torch.Tensor, below: float):
    """(series?, eta for the series, |eta| for the closed form): each branch only sees
    arguments where it is finite, so that ``torch.where`` never meets 0 * inf in backward."""
    a = logits.abs()
    series = a < below
    return series, torch.where(series, logits, 0.0), torch.where(series, 1.0, a)


def _cb_log_partition(logits: torch.Tensor) -> torch.Tensor:
    """log Z(eta) = log int_0^1 exp(eta x) dx = log(expm1(eta) / eta)."""
    series, eta, a = _cb_branches(logits, _cb_series_below(logits.dtype))
    z = eta * eta
    near_zero = 0.5 * eta + z * _polynomial(z, _H)
    # expm1(eta) overflows for eta > 88 in float32: factor out exp(max(eta, 0)).
    far = functional.relu(logits) + torch.log(-torch.expm1(-a) / a)
    return torch.where(series, near_zero, far)


def _cb_log_constant(logits: torch.Tensor) -> torch.Tensor:
    """log C(eta) = log(eta / tanh(eta / 2)), the paper's log-normalizing constant (>= log 2)."""
    series, eta, a = _cb_branches(logits, _cb_series_below(logits.dtype))
    z = eta * eta
    # log C = log 2 + log cosh(eta / 2) - h(eta): log cosh keeps the gradient (~eta / 6)
    # accurate, where the series of log C itself would need many more terms (radius pi).
    near_zero = math.log(2) + torch.log(torch.cosh(0.5 * eta)) - z * _polynomial(z, _H)
    far = functional.softplus(-a) - torch.log(-torch.expm1(-a) / a)
    return torch.where(series, near_zero, far)


def _cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """d log Z / d eta = 1 / (1 - exp(-eta)) - 1 / eta."""
    series, eta, a = _cb_branches(logits, _cb_series_below(logits.dtype))
    near_zero = 0.5 + eta * _polynomial(eta * eta, _H_PRIME)
    # The mean at logit -a, 1 / a - 1 / expm1(a), with no overflow (nor inf * 0 in backward);
    # at +a it is 1 minus that (x -> 1 - x).
    low = 1 / a + torch.exp(-a) / torch.expm1(-a)
    return torch.where(series, near_zero, torch.where(logits > 0, 1 - low, low))


def _cb_variance(logits: torch.Tensor) -> torch.Tensor:
    """d^2 log Z / d eta^2 = 1 / eta^2 - 1 / (4 sinh(eta / 2)^2)."""
    series, eta, a = _cb_branches(logits, _cb_series_below(logits.dtype))
    near_zero = _polynomial(eta * eta, _H_SECOND)
    far = 1 / (a * a) - torch.exp(-a) / torch.expm1(-a).square()
    return torch.where(series, near_zero, far)


def _cb_entropy(logits: torch.Tensor) -> torch.Tensor:
    """log Z - eta * mean, even in eta: computed from |eta| (no eta - eta at large logits)."""
    series, eta, a = _cb_branches(logits, _cb_series_below(logits.dtype))
    z = eta * eta
    near_zero = z * _polynomial(z, _H_ENTROPY)
    e = torch.expm1(-a)
    far = torch.log(-e / a) + 1 + a * (1 + e) / e
    return torch.where(series, near_zero, far)


def _cb_icdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The x with P(X <= x) = u: x = log1p(u expm1(eta)) / eta."""
    series, eta, a = _cb_branches(logits, _cb_sample_series_below(logits.dtype))
    # Series: sum_n kappa_n(u) eta^(n-1) / n!, kappa_n the cumulants of a Bernoulli(u) (the
    # numerator is its cumulant generating function): u, w, w(1-2u), w(1-6w), w(1-2u)(1-12w).
    w = u * (1 - u)
    skew = 1 - 2 * u
    near_zero = u + eta * w * (
        1 / 2 + eta * (skew / 6 + eta * ((1 - 6 * w) / 24 + eta * skew * (1 - 12 * w) / 120))
    )
    # At logit -a the quantile of level v is -log(1 + v expm1(-a)) / a; at +a it is 1 minus
    # that of level 1 - u (x -> 1 - x). Where the log's argument falls below 1/2 (v near 1, a
    # large), rounding v expm1(-a) would swamp it: there it is (1 - v) + v e^-a, a sum, with
    # 1 - v exact (v > 1/2) and in logs so that e^-a cannot underflow.
    mirrored = logits > 0
    v = torch.where(mirrored, 1 - u, u)
    v_bar = torch.where(mirrored, u, 1 - u)
    shift = v * torch.expm1(-a)
    direct = shift > -0.5
    log_direct = torch.log1p(torch.where(direct, shift, 0.0))
    log_sum = torch.logaddexp(torch.log(v_bar), torch.log(v) - a)
    q = -torch.where(direct, log_direct, log_sum) / a
    far = torch.where(mirrored, 1 - q, q)
    return torch.where(series, near_zero, far).clamp(0, 1)


def _cb_cdf(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """P(X <= x) = expm1(eta x) / expm1(eta)."""
    series, eta, a = _cb_branches(logits, _cb_sample_series_below(logits.dtype))
    w = x * (1 - x)
    skew = 1 - 2 * x
    near_zero = x - eta * w * (
        1 / 2 - eta * (skew / 12 + eta * (w / 24 - eta * skew * (1 + 3 * w) / 720))
    )
    mirrored = logits > 0
    level = torch.where(mirrored, 1 - x, x)
    low = torch.expm1(-a * level) / torch.expm1(-a)
    far = torch.where(mirrored, 1 - low, low)
    return torch.where(series, near_zero, far).clamp(0, 1)


class StableContinuousBernoulli(dist.TorchDistribution):
    """Continuous Bernoulli on [0, 1] with logits, normalized for every logit.

    Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a pervasive error in
    variational autoencoders", NeurIPS 2019: p(x | lambda) = C(lambda) lambda^x
    (1 - lambda)^(1 - x) with lambda = sigmoid(logits) and
    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = logits / tanh(logits / 2).
    ``torch.distributions.ContinuousBernoulli`` clamps lambda at the dtype's eps, so in float32
    its density stops being normalized beyond ``|logits|`` ~ 16 (it integrates to 0.40 at -40,
    and its samples there average 0.063 instead of 0.025), which is where saturated
    background pixels drive a decoder. Here ``log_prob``, ``log_normalizer``, ``mean``,
    ``variance``, ``entropy``, ``cdf``, ``icdf`` and ``rsample`` hold to about 1e-6 (float32)
    and 1e-13 (float64) for any finite logits, with finite gradients: Taylor series near
    logit 0, forms in ``|logits|`` that neither overflow nor cancel elsewhere.

    Example::

        >>> d = StableContinuousBernoulli(logits=torch.tensor([-40.0, 0.0]))
        >>> d.log_prob(torch.zeros(2))  # log 40 - log(1 - e^-40) and log 1
        tensor([3.6889, 0.0000])
        >>> d.log_normalizer  # log C: log 40 and log 2
        tensor([3.6889, 0.6931])
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, logits, validate_args=None):
        (self.logits,) = broadcast_all(logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StableContinuousBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape)
        super(StableContinuousBernoulli, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        """lambda = sigmoid(logits): the paper's parameter, not the mean."""
        return torch.sigmoid(self.logits)

    @property
    def log_normalizer(self) -> torch.Tensor:
        """log C(lambda), the log of the paper's normalizing constant."""
        return _cb_log_constant(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return _cb_mean(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        return _cb_variance(self.logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # x log lambda + (1 - x) log(1 - lambda) + log C = x logits - log Z, without the
        # softplus(logits) that the two terms share and cancel.
        return value * self.logits - _cb_log_partition(self.logits)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return _cb_cdf(logits, value.clamp(0, 1))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = broadcast_all(self.logits, value)
        return _cb_icdf(logits, value)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return _cb_icdf(self.logits.expand(shape), u)

    def entropy(self) -> torch.Tensor:
        return _cb_entropy(self.logits)
