"""Likelihoods: normalized, equal to their formulas, strict about their data, and trainable."""

import itertools
import math

import mpmath
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.models.continuous_bernoulli import StableContinuousBernoulli
from pvae.models.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    BinaryBernoulli,
    ContinuousBernoulliLikelihood,
    Dequantized,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    make_likelihood,
)
from pvae.models.real_likelihoods import REAL_LIKELIHOODS

X_DIM = 12
LEVELS = torch.arange(256, dtype=torch.float64) / 255


# Tiny networks: one thread is faster, and immune to other processes on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def grey_data(n=64, seed=0):
    """8-bit grey levels k/255 around four prototypes."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, X_DIM, generator=generator)
    noise = 0.05 * torch.randn(n, X_DIM, generator=generator)
    x = (prototypes[torch.arange(n) % 4] + noise).clamp(0, 1)
    return (x * 255).round() / 255


def data_for(name):
    x = grey_data()
    return (
        torch.bernoulli(x, generator=torch.Generator().manual_seed(1)) if name == "bernoulli" else x
    )


# Real-valued likelihoods take other data: tests/test_real_likelihoods.py trains them.
@pytest.mark.parametrize("name", [name for name in LIKELIHOODS if name not in REAL_LIKELIHOODS])
def test_every_likelihood_trains_and_gives_a_finite_iwae_bound(name):
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[16], likelihood=name)
    x = data_for(name)
    result = pvae.fit(
        vae.model, vae.guide, x, num_epochs=8, batch_size=32, learning_rate=1e-2, seed=0
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds) and bounds[-1] > bounds[0], bounds
    bound = pvae.log_likelihood(vae.model, vae.guide, x, 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
    means = vae.reconstruct(x[:3])
    assert means.shape == (3, X_DIM) and bool(((means >= 0) & (means <= 1)).all())


def test_bernoulli_sums_to_one_over_all_binary_vectors():
    logits = torch.tensor([0.3, -2.0, 4.0], dtype=torch.float64)
    d = BernoulliLikelihood()(logits, event_dim=1)
    points = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    assert d.log_prob(points).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_binary_bernoulli_is_bernoulli_log_pmf_and_its_gradient():
    logits = torch.tensor([-80.0, -20.0, -3.0, 0.0, 0.5, 3.0, 20.0, 80.0], dtype=torch.float64)
    logits = logits.repeat(2, 1).requires_grad_()
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64).expand(2, 8)
    fast = BinaryBernoulli(logits=logits).log_prob(x)
    # Exact log-pmf, computed so that no large numbers cancel: log sigmoid(±logit).
    exact = torch.where(
        x == 1, -torch.nn.functional.softplus(-logits), -torch.nn.functional.softplus(logits)
    )
    torch.testing.assert_close(fast, exact, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        fast, dist.Bernoulli(logits=logits).log_prob(x), rtol=1e-6, atol=1e-9
    )
    (grad,) = torch.autograd.grad(fast.sum(), logits)
    torch.testing.assert_close(grad, x - torch.sigmoid(logits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "logit", [-100.0, -40.0, -30.0, -3.0, -0.001, 0.0, 0.002, 1.0, 3.0, 8.0, 40.0, 100.0]
)
def test_continuous_bernoulli_integrates_to_one_on_the_unit_interval(logit, dtype):
    # Simpson's rule on 20,001 points; near logit 0 the normalizing constant switches to a
    # Taylor series, which must stay normalized too; at |logit| >= 16 torch's stops being.
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    d = ContinuousBernoulliLikelihood()(torch.tensor([logit], dtype=dtype), event_dim=1)
    density = d.log_prob(x.to(dtype).unsqueeze(-1)).double().exp()
    weights = torch.ones_like(x)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    mass = (weights * density).sum().item() * (x[1] - x[0]).item() / 3
    # In float32, log Z(100) ~ 95 is off by a rounding (~6e-6), and so is every density.
    assert mass == pytest.approx(1.0, abs=1e-6 if dtype == torch.float64 else 1e-5)


def test_continuous_bernoulli_is_the_papers_formula():
    # p(x|lam) = C(lam) lam^x (1-lam)^(1-x), C(lam) = 2 artanh(1-2 lam) / (1-2 lam).
    lam = torch.tensor([0.1, 0.3, 0.8], dtype=torch.float64)
    x = torch.tensor([0.0, 0.7, 0.25], dtype=torch.float64)
    constant = 2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)
    expected = (constant.log() + x * lam.log() + (1 - x) * (1 - lam).log()).sum()
    logits = torch.logit(lam)
    got = ContinuousBernoulliLikelihood()(logits, event_dim=1).log_prob(x)
    assert got.item() == pytest.approx(expected.item(), abs=1e-10)
    mean = ContinuousBernoulliLikelihood().mean(logits)
    expected_mean = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
    assert torch.allclose(mean, expected_mean)


# Logits from a saturated background (-100) to a saturated foreground (+100), including 0, both
# sides of the switches between series and closed forms (0.35 in float64, 1.5 in float32), and
# where torch's clamped normalizer breaks (|logits| > 16).
CB_LOGITS = sorted(
    {0.0}
    | {
        sign * m
        for sign in (-1, 1)
        for m in (1e-4, 1e-3, 1e-2, 0.1, 0.34, 0.36, 0.5, 1, 1.49, 1.51, 2, 5, 16, 20, 40, 80, 100)
    }
    | {float(v) for v in torch.linspace(-100, 100, 161)}
)
# Largest relative errors against mpmath: 1.4e-7 (float32) and 3e-16 (float64) for log C; the
# tolerances leave room for other CPUs' exp and log.
CB_RTOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def cb_exact(quantity, logits, *extra):
    """A continuous Bernoulli quantity at each logit (and extra argument), to 40 digits."""

    def log_z(e):  # log int_0^1 exp(e x) dx
        return mpmath.log(mpmath.expm1(e) / e) if e else mpmath.mpf(0)

    def mean(e):
        return 1 / (1 - mpmath.exp(-e)) - 1 / e if e else mpmath.mpf(1) / 2

    formulas = {
        "log_normalizer": lambda e: mpmath.log(e / mpmath.tanh(e / 2)) if e else mpmath.log(2),
        "d_log_normalizer": lambda e: 1 / e - 1 / mpmath.sinh(e) if e else mpmath.mpf(0),
        "log_z": log_z,
        "mean": mean,
        "variance": lambda e: 1 / e**2 - 1 / (4 * mpmath.sinh(e / 2) ** 2) if e else 1 / 12,
        "entropy": lambda e: log_z(e) - e * mean(e),
        "icdf": lambda e, u: mpmath.log1p(u * mpmath.expm1(e)) / e if e else u,
    }
    with mpmath.workdps(40):
        exact = [float(formulas[quantity](*map(mpmath.mpf, (e, *extra)))) for e in logits.tolist()]
    return torch.tensor(exact, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_normalizer_mean_and_entropy_are_exact_at_any_logit(dtype):
    logits = torch.tensor(CB_LOGITS, dtype=dtype)
    d = StableContinuousBernoulli(logits)
    rtol = CB_RTOL[dtype]
    for quantity, got in [
        ("log_normalizer", d.log_normalizer),
        ("log_z", -d.log_prob(torch.zeros_like(logits))),
        ("mean", d.mean),
        ("variance", d.variance),
        ("entropy", d.entropy()),
    ]:
        # The variance and the entropy cancel more in the closed forms, next to the series.
        tol = rtol * (10 if quantity in ("variance", "entropy") else 1)
        exact = cb_exact(quantity, logits.double())
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exact, rtol=tol, atol=0, msg=quantity)
    # The likelihood's mean is the distribution's.
    torch.testing.assert_close(ContinuousBernoulliLikelihood().mean(logits), d.mean)


def test_continuous_bernoulli_log_prob_is_right_at_saturated_logits():
    # The figures: torch's clamped normalizer gives 2.769 for all three.
    logits = torch.tensor([-20.0, -40.0, -80.0])
    for dtype in (torch.float32, torch.float64):
        d = ContinuousBernoulliLikelihood()(logits.to(dtype), event_dim=0)
        got = d.log_prob(torch.zeros(3, dtype=dtype))
        torch.testing.assert_close(
            got.double(),
            torch.tensor([2.996, 3.689, 4.382], dtype=torch.float64),
            rtol=0,
            atol=1e-3,
        )
    # x log lambda + (1 - x) log(1 - lambda) + log C, also where sigmoid saturates.
    logits = torch.tensor(CB_LOGITS, dtype=torch.float64)
    x = torch.rand(
        3, len(CB_LOGITS), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    exact = (
        x * torch.nn.functional.logsigmoid(logits)
        + (1 - x) * torch.nn.functional.logsigmoid(-logits)
        + cb_exact("log_normalizer", logits)
    )
    got = StableContinuousBernoulli(logits).log_prob(x)
    torch.testing.assert_close(got, exact, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_gradients_are_finite_and_exact_at_any_logit(dtype):
    logits = torch.tensor(CB_LOGITS, dtype=dtype, requires_grad=True)
    d = StableContinuousBernoulli(logits)
    (d_log_c,) = torch.autograd.grad(d.log_normalizer.sum(), logits)
    x = torch.rand(len(CB_LOGITS), dtype=dtype, generator=torch.Generator().manual_seed(0))
    (d_log_prob,) = torch.autograd.grad(d.log_prob(x).sum(), logits)
    assert torch.isfinite(d_log_c).all() and torch.isfinite(d_log_prob).all()
    rtol, eps = CB_RTOL[dtype], torch.finfo(dtype).eps
    exact = logits.detach().double()
    torch.testing.assert_close(
        d_log_c.double(), cb_exact("d_log_normalizer", exact), rtol=rtol, atol=eps
    )
    # d log p(x) / d logits = x - mean: a few roundings of x, whatever the logit.
    torch.testing.assert_close(
        d_log_prob.double(), x.double() - cb_exact("mean", exact), rtol=0, atol=4 * eps
    )
    # ... and autograd of the paper's closed form in float64, where that is well-conditioned
    # (near 0 it is 0/0; beyond 5 or so, 1 - lambda rounds away most of its digits).
    moderate = (exact.abs() > 0.1) & (exact.abs() <= 5)
    eta = exact[moderate].requires_grad_()
    lam = torch.sigmoid(eta)
    (d_closed,) = torch.autograd.grad(
        torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)).sum(), eta
    )
    torch.testing.assert_close(d_log_c[moderate].double(), d_closed, rtol=max(rtol, 1e-9), atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_quantiles_are_exact_in_the_unit_interval(dtype):
    logits = torch.tensor(CB_LOGITS, dtype=dtype, requires_grad=True)
    d = StableContinuousBernoulli(logits)
    eps = torch.finfo(dtype).eps
    for u in (0.0, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.999, 1 - eps / 2):
        level = torch.full_like(logits, u)
        x = d.icdf(level)
        (grad,) = torch.autograd.grad(x.sum(), logits)
        assert bool(((x >= 0) & (x <= 1)).all()) and torch.isfinite(grad).all(), u
        exact = cb_exact("icdf", logits.detach().double(), float(level[0]))
        torch.testing.assert_close(x.double(), exact, rtol=0, atol=4 * eps, msg=f"u = {u}")
        # The CDF undoes it, up to x's rounding times the density there.
        x = x.detach()
        slack = 8 * eps * (1 + d.log_prob(x).exp().detach())
        assert bool(((d.cdf(x) - level).abs() <= slack).all()), u


@pytest.mark.parametrize("logit", [-100.0, -40.0, -1e-3, 0.0, 3.0, 40.0, 100.0])
def test_continuous_bernoulli_samples_have_the_exact_mean_in_float32(logit):
    d = ContinuousBernoulliLikelihood()(torch.full((4,), logit), event_dim=1)
    assert d.event_shape == (4,) and d.batch_shape == ()
    torch.manual_seed(0)
    x = d.rsample((50_000,))
    assert x.shape == (50_000, 4) and x.dtype == torch.float32
    assert bool(((x >= 0) & (x <= 1)).all())
    logits = torch.full((1,), logit, dtype=torch.float64)
    mean, variance = cb_exact("mean", logits).item(), cb_exact("variance", logits).item()
    # Five standard errors of the sample mean.
    assert x.double().mean().item() == pytest.approx(mean, abs=5 * math.sqrt(variance / x.numel()))
    assert x.double().var().item() == pytest.approx(variance, rel=0.05)


def test_stable_continuous_bernoulli_is_a_pyro_distribution():
    logits = torch.tensor([-40.0, 0.0, 2.0], requires_grad=True)
    d = StableContinuousBernoulli(logits)
    assert torch.equal(d.probs, torch.sigmoid(logits))
    wide = d.expand((5, 3))
    assert wide.batch_shape == (5, 3) and wide.sample().shape == (5, 3)
    torch.testing.assert_close(wide.mean, d.mean.expand(5, 3))
    x = d.to_event(1).rsample((2,))
    assert x.shape == (2, 3) and d.to_event(1).log_prob(x).shape == (2,)
    (grad,) = torch.autograd.grad(x.sum(), logits)  # reparameterized
    assert torch.isfinite(grad).all() and bool((grad > 0).all())
    assert not d.sample().requires_grad
    with pytest.raises(ValueError):
        StableContinuousBernoulli(logits, validate_args=True).log_prob(torch.full((3,), 1.5))


@pytest.mark.parametrize(
    "loc, scale", [(0.5, 0.1), (0.0, 0.02), (1.3, 0.5), (-2.0, 0.01), (0.37, 1e-4), (0.6, 30.0)]
)
def test_discretized_logistic_sums_to_one_over_the_256_levels(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale))
    assert d.log_prob(LEVELS).exp().sum().item() == pytest.approx(1.0, abs=1e-10)


def test_discretized_logistic_two_pixels_sum_to_one_over_all_65536_images():
    likelihood = DiscretizedLogisticLikelihood()
    params = torch.tensor([0.2, 0.9, -2.0, -3.5], dtype=torch.float64)  # locs, log-scales
    images = torch.cartesian_prod(LEVELS, LEVELS)
    total = likelihood(params, event_dim=1).log_prob(images).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-10)


def test_discretized_logistic_is_the_difference_of_logistic_cdfs():
    loc, scale = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale)
    for k in (0, 1, 100, 254, 255):
        x = k / 255
        upper = 1.0 if k == 255 else torch.sigmoid((x + 1 / 510 - loc) / scale).item()
        lower = 0.0 if k == 0 else torch.sigmoid((x - 1 / 510 - loc) / scale).item()
        assert d.log_prob(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(
            math.log(upper - lower), rel=1e-9
        )


def test_discretized_logistic_takes_locations_then_log_scales_for_images_too():
    likelihood = DiscretizedLogisticLikelihood()
    params = torch.randn(5, 2 * 3, 4, 4)  # [batch, 2 * C, H, W]
    d = likelihood(params, event_dim=3)
    assert d.batch_shape == (5,) and d.event_shape == (3, 4, 4)
    assert torch.equal(d.base_dist.loc, params[:, :3])
    assert torch.allclose(d.base_dist.scale, params[:, 3:].clamp(min=-7).exp())
    assert torch.equal(likelihood.mean(params, event_dim=3), params[:, :3].clamp(0, 1))


@pytest.mark.parametrize("family", [dist.Normal, dist.Laplace])
def test_dequantized_density_integrates_to_the_mass_in_the_unit_interval(family):
    base = family(torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64))
    d = Dequantized(base)
    v = torch.linspace(0, 256, 256 * 200 + 1, dtype=torch.float64)
    density = d.log_density(v).exp()
    mass = torch.trapezoid(density, v).item()
    assert mass == pytest.approx((base.cdf(torch.tensor(1.0)) - base.cdf(torch.tensor(0.0))).item())


def test_dequantized_log_prob_averages_to_the_bin_probability_and_bounds_its_log():
    base = dist.Normal(
        torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64)
    )
    d = Dequantized(base)
    torch.manual_seed(0)
    x = LEVELS[120:136].repeat(20000, 1)  # 16 levels near the mode, 20,000 draws of u each
    log_p = d.log_prob(x)
    k = torch.arange(120, 136, dtype=torch.float64)
    exact = base.cdf((k + 1) / 256) - base.cdf(k / 256)  # P(k), the mass of bin k
    estimate = log_p.exp().mean(0)
    assert torch.allclose(estimate, exact, rtol=0.02, atol=1e-4)
    assert bool((log_p.mean(0) <= exact.log() + 1e-9).all())  # Jensen


def test_dequantized_uniform_density_gives_the_discrete_uniform_log_probability():
    # D log 256 is what makes a density on [0, 1)^D a bound on 8-bit pixel probabilities.
    uniform = dist.Uniform(torch.zeros(784), torch.ones(784))
    x = torch.randint(0, 256, (784,)) / 255
    log_p = Dequantized(uniform).to_event(1).log_prob(x)
    assert log_p.item() == pytest.approx(-784 * math.log(256), rel=1e-6)


@pytest.mark.parametrize("likelihood", [GaussianLikelihood(), LaplaceLikelihood(scale=0.2)])
def test_dequantized_likelihoods_are_their_formula_at_the_drawn_noise(likelihood):
    loc = torch.rand(3, 5)
    x = torch.randint(0, 256, (3, 5)) / 255
    torch.manual_seed(7)
    got = likelihood(loc, event_dim=1).log_prob(x)
    torch.manual_seed(7)
    u = torch.rand(3, 5)
    family = dist.Normal if isinstance(likelihood, GaussianLikelihood) else dist.Laplace
    y = ((x * 255).round() + u) / 256
    expected = family(loc, likelihood.scale).log_prob(y).sum(-1) - 5 * math.log(256)
    assert torch.allclose(got, expected)


def test_gaussian_scale_is_learned_or_fixed():
    assert [n for n, _ in GaussianLikelihood().named_parameters()] == ["raw_scale"]
    fixed = GaussianLikelihood(scale=0.05)
    assert list(fixed.parameters()) == [] and fixed.scale.item() == pytest.approx(0.05)
    vae = pvae.build_vae(X_DIM, 2, [8], likelihood="gaussian")
    before = vae.likelihood.scale.item()
    pvae.fit(vae.model, vae.guide, grey_data(), num_epochs=2, batch_size=32, learning_rate=1e-2)
    assert vae.likelihood.scale.item() != before  # registered with Pyro, trained


def one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "name, x, match",
    [
        ("bernoulli", torch.full((2, 3), 0.5), "needs binary data.*binarize"),
        ("continuous_bernoulli", torch.full((2, 3), 255.0), r"in \[0, 1\].*divide 8-bit"),
        ("continuous_bernoulli", torch.full((2, 3), -0.1), r"in \[0, 1\]"),
        ("gaussian", torch.full((2, 3), 0.5), r"8-bit grey levels x = k / 255.*round\(\)"),
        ("laplace", torch.full((2, 3), 2.0), r"in \[0, 1\]"),
        ("discretized_logistic", torch.full((2, 3), 0.1234), "8-bit grey levels"),
    ],
)
def test_data_outside_the_support_get_one_clear_error(name, x, match):
    one_line_error(lambda: make_likelihood(name).check_data(x), match)
    # ... also through fit, before any step.
    vae = pvae.build_vae(3, 2, [4], likelihood=name)
    one_line_error(lambda: pvae.fit(vae.model, vae.guide, x, num_epochs=1), match)


def test_8bit_likelihoods_accept_the_loaders_grey_levels():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, -1).float() / 255
    for name in ("gaussian", "laplace", "discretized_logistic", "continuous_bernoulli"):
        make_likelihood(name).check_data(x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_likelihood("poisson"), "unknown likelihood 'poisson': choose one of bern"),
        (lambda: make_likelihood("gaussian", sigma=0.1), "no option 'sigma' .its options: scale"),
        (lambda: make_likelihood("bernoulli", scale=0.1), "no option 'scale' .its options: none"),
        (lambda: make_likelihood("laplace", scale=-1.0), "scale must be > 0"),
    ],
)
def test_bad_likelihood_choices_get_one_clear_error(call, match):
    one_line_error(call, match)
