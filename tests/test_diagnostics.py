"""pvae.analysis.diagnostics against closed forms: a linear-Gaussian model, whose posterior,
log p(x) and the ELBO of any Gaussian guide are known exactly."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pvae
from pvae.analysis.diagnostics import Diagnosis, diagnose

# float64 throughout: closed forms compare to MC estimates, not to float32 rounding.
pytestmark = pytest.mark.usefixtures("float64")

D, SIGMA = 3, 0.5
W = torch.tensor([[1.0, 0.8], [0.6, 1.0], [0.3, -0.4]], dtype=torch.float64)
B = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)


def linear_model(w, b=None, sigma=SIGMA):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ² I)."""
    b = torch.zeros(w.shape[0]) if b is None else b

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(w.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, sigma).to_event(1), obs=x)

    return model


def linear_guide(a, c, scale):
    """q(z|x) = N(Ax + c, diag(scale²)): a linear encoder of known output."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ a.T + c, scale).to_event(1))

    return guide


def posterior(x, w=W, b=B, sigma=SIGMA):
    """The exact posterior's mean [N, d] and precision Λ = I + WᵀW / σ²."""
    precision = torch.eye(w.shape[1]) + w.T @ w / sigma**2
    mean = torch.linalg.solve(precision, (w.T @ (x - b).T) / sigma**2).T
    return mean, precision


def exact_log_px(x, w=W, b=B, sigma=SIGMA):
    covariance = w @ w.T + sigma**2 * torch.eye(w.shape[0])
    return dist.MultivariateNormal(b, covariance).log_prob(x)


def gaussian_elbo(x, mean, variance, w=W, b=B, sigma=SIGMA):
    """ELBO of q = N(mean, diag(variance)) in the linear-Gaussian model, in closed form."""
    residual = x - mean @ w.T - b
    likelihood = -0.5 * D * math.log(2 * math.pi * sigma**2) - (
        (residual**2).sum(-1) + (variance * (w**2).sum(0)).sum(-1)
    ) / (2 * sigma**2)
    prior = -0.5 * mean.shape[-1] * math.log(2 * math.pi) - 0.5 * (
        (mean**2).sum(-1) + variance.sum(-1)
    )
    entropy = 0.5 * torch.log(2 * math.pi * math.e * variance).sum(-1)
    return likelihood + prior + entropy


def simulate(num_data, w=W, b=B, sigma=SIGMA):
    z = torch.randn(num_data, w.shape[1])
    return z @ w.T + b + sigma * torch.randn(num_data, w.shape[0])


def within_error(estimate, exact, se, slack=0.005):
    """Each datapoint within 4 MC errors, and the mean within 4 errors of the mean."""
    error = estimate - exact
    return bool((error.abs() < 4 * se + slack).all()) and bool(
        error.mean().abs() < 4 * se.square().sum().sqrt() / se.numel() + slack
    )


def test_gaps_match_closed_forms_for_a_diagonal_guide():
    x = simulate(12)
    a, c, scale = 0.5 * torch.ones(2, D), torch.tensor([0.2, -0.1]), torch.tensor([0.7, 0.4])
    result = diagnose(
        linear_model(W, B), linear_guide(a, c, scale), x, log_px=exact_log_px(x),
        num_samples=4000, local_steps=300, local_lr=0.05, seed=0,
    )  # fmt: skip
    # The best diagonal q* of a Gaussian posterior: its mean, variances 1 / Λ_ii; the gaps
    # are differences of closed-form ELBOs (and log p(x)), the estimates Monte Carlo.
    mean, precision = posterior(x)
    best = gaussian_elbo(x, mean, 1 / precision.diagonal().expand_as(mean))
    encoder = gaussian_elbo(x, x @ a.T + c, (scale**2).expand_as(mean))
    approximation = exact_log_px(x) - best
    assert within_error(result.approximation_gap, approximation, result.optimal_elbo_se)
    assert within_error(result.amortization_gap, best - encoder, result.amortization_gap_se)
    assert within_error(result.elbo_per_datapoint, encoder, result.elbo_se)
    assert approximation.min() > 0.1  # a diagonal q misses the posterior's correlation
    assert result.amortization_gap.min() > 0.5  # and this encoder is off everywhere
    assert torch.allclose(result.inference_gap, result.approximation_gap + result.amortization_gap)


def test_exact_guide_has_no_gaps():
    x = simulate(6)
    mean, precision = posterior(x)
    scale_tril = torch.linalg.cholesky(torch.linalg.inv(precision))
    gain = torch.linalg.solve(precision, W.T) / SIGMA**2

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal((x - B) @ gain.T, scale_tril=scale_tril))

    result = diagnose(
        linear_model(W, B), exact_guide, x, log_px=exact_log_px(x), num_samples=200,
        local_steps=100, seed=0,
    )  # fmt: skip
    # q_φ is the posterior: every log-weight is log p(x), exactly.
    assert result.inference_gap.abs().max() < 1e-10
    # q* is fitted by Adam, whose steps jitter near the optimum by about the learning rate:
    # it stays there up to that, and its gap is 0 within its MC error.
    gap = result.approximation_gap
    assert (gap.abs() < 4 * result.optimal_elbo_se + 1e-9).all() and gap.abs().max() < 1e-3
    assert torch.allclose(result.amortization_gap, -gap)
    # Per-unit KL of a full-covariance q reads its marginals, in closed form.
    assert result.kl_closed_form is False  # MVN q against an Independent prior: Monte Carlo
    marginal = dist.Normal(mean, torch.linalg.inv(precision).diagonal().sqrt())
    expected = torch.distributions.kl_divergence(marginal, dist.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(result.kl_per_unit, expected)


def test_ignored_units_are_inactive_with_zero_kl():
    w = torch.cat([W, torch.zeros(D, 2)], 1)  # the decoder ignores z_2 and z_3
    a = torch.cat([0.5 * torch.ones(2, D), torch.zeros(2, D)])
    scale = torch.tensor([0.4, 0.5, 1.0, 1.0])  # ... and the encoder leaves them at the prior
    x = simulate(50, w)
    result = diagnose(
        linear_model(w, B), linear_guide(a, torch.zeros(4), scale), x, gaps=False,
        num_samples=10, seed=0,
    )  # fmt: skip
    assert result.active.tolist() == [True, True, False, False]
    assert result.num_active == 2
    assert result.unit_names == ("z[0]", "z[1]", "z[2]", "z[3]")
    assert result.kl_closed_form
    assert result.kl_per_unit[2:].tolist() == [0.0, 0.0]
    assert (result.kl_per_unit[:2] > 0.1).all()
    expected = torch.distributions.kl_divergence(
        dist.Normal(x @ a.T, scale), dist.Normal(0.0, 1.0)
    ).sum(-1)
    assert torch.allclose(result.kl_per_datapoint, expected)
    assert result.kl_se.abs().max() < 1e-12
    assert result.elbo_per_datapoint is None and result.approximation_gap is None


def test_mutual_information_matches_its_closed_form():
    # x ~ N(0, Σ_x), q(z|x) = N(Ax, S): q(z) = N(0, AΣ_xAᵀ + S), I = ½ log det(AΣ_xAᵀ+S)/det S.
    covariance_x = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    a = torch.tensor([[0.8, 0.0, 0.3], [0.0, -0.6, 0.5]])
    scale = torch.tensor([0.6, 0.8])
    x = dist.MultivariateNormal(torch.zeros(D), covariance_x).sample((3000,))
    result = diagnose(
        linear_model(W), linear_guide(a, torch.zeros(2), scale), x, gaps=False,
        num_samples=2, seed=0,
    )  # fmt: skip
    aggregate = a @ covariance_x @ a.T + torch.diag(scale**2)
    expected = 0.5 * (torch.logdet(aggregate) - torch.logdet(torch.diag(scale**2))).item()
    # He et al.'s estimator is biased low for finite N (log q(z) by a logsumexp over N):
    # at N = 3000 and I ≈ 0.7 nats the bias is far below its standard error.
    assert result.mutual_information == pytest.approx(
        expected, abs=3 * result.mutual_information_se + 0.01
    )
    assert result.mutual_information < math.log(x.shape[0])
    marginal = torch.distributions.kl_divergence(
        dist.MultivariateNormal(torch.zeros(2), aggregate),
        dist.MultivariateNormal(torch.zeros(2), torch.eye(2)),
    ).item()
    assert result.marginal_kl == pytest.approx(
        marginal, abs=3 * result.mutual_information_se + 0.05
    )
    assert result.kl == pytest.approx(result.mutual_information + result.marginal_kl)


def test_mutual_information_estimate_is_at_most_log_n():
    # A nearly deterministic encoder carries ~8 nats; 20 datapoints can show at most log 20.
    x = simulate(20)
    a, scale = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.full((2,), 0.01)
    result = diagnose(
        linear_model(W), linear_guide(a, torch.zeros(2), scale), x, gaps=False,
        num_samples=2, seed=0,
    )  # fmt: skip
    assert (result.mutual_information_terms <= math.log(20) + 1e-12).all()
    assert result.mutual_information == pytest.approx(math.log(20), abs=0.05)


def test_model_without_data_plate_is_refused():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))
        pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(2), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))

    with pytest.raises(ValueError, match="pyro.plate\\('data'"):
        diagnose(model, guide, torch.zeros(4, D), gaps=False)


def test_unsupported_family_is_refused_for_gaps_only():
    vae = pvae.build_vae(x_dim=6, z_dim=2, hidden_dims=[8], guide="iaf")
    x = torch.bernoulli(torch.full((8, 6), 0.4))
    with pytest.raises(ValueError, match="TransformedDistribution.*gaps=False"):
        diagnose(vae.model, vae.guide, x, log_px=torch.zeros(8))
    result = diagnose(vae.model, vae.guide, x, gaps=False, num_samples=20, seed=0)
    assert result.encoding_variance.shape == (2,)  # means of draws: a flow has no .mean
    assert torch.isnan(result.kl_per_unit).all() and not result.kl_closed_form
    assert torch.isfinite(result.kl_per_datapoint).all()


def test_bad_log_px_is_refused():
    model, guide = linear_model(W), linear_guide(torch.zeros(2, D), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="log_px must be"):
        diagnose(model, guide, torch.zeros(4, D), log_px="exact")
    with pytest.raises(ValueError, match="one log p\\(x\\) per datapoint"):
        diagnose(model, guide, torch.zeros(4, D), log_px=torch.zeros(3), local_steps=1,
                 num_samples=2)  # fmt: skip


def test_pvae_vae_end_to_end_with_iwae():
    vae = pvae.build_vae(x_dim=6, z_dim=3, hidden_dims=[8])
    x = torch.bernoulli(torch.full((10, 6), 0.4))
    result = diagnose(
        vae.model, vae.guide, x, log_px="iwae", iwae_samples=50, num_samples=20,
        local_steps=5, seed=0,
    )  # fmt: skip
    assert isinstance(result, Diagnosis)
    assert result.unit_names == ("latent[0]", "latent[1]", "latent[2]")
    for values in (result.approximation_gap, result.amortization_gap, result.kl_per_datapoint):
        assert values.shape == (10,) and torch.isfinite(values).all()
    assert result.kl_closed_form
    assert "IWAE_50" in result.log_px_source
    text = result.summary()
    assert "active units" in text and "amortization gap" in text and "latent[2]" in text


def test_ais_path_runs():
    x = simulate(3)
    guide = linear_guide(0.3 * torch.ones(2, D), torch.zeros(2), torch.ones(2))
    result = diagnose(
        linear_model(W, B), guide, x, ais_steps=3, ais_chains=2, num_samples=10,
        local_steps=3, seed=0,
    )  # fmt: skip
    assert result.log_px_source.startswith("AIS")
    assert result.log_px.shape == (3,) and torch.isfinite(result.approximation_gap).all()


def test_seed_gives_the_same_numbers():
    x = simulate(5)
    guide = linear_guide(0.3 * torch.ones(2, D), torch.zeros(2), torch.ones(2))
    runs = [
        diagnose(linear_model(W, B), guide, x, log_px=exact_log_px(x), num_samples=10,
                 local_steps=5, seed=3)
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(runs[0].optimal_elbo_per_datapoint, runs[1].optimal_elbo_per_datapoint)
    assert torch.equal(runs[0].mutual_information_terms, runs[1].mutual_information_terms)


def test_hierarchical_vae_runs_with_one_member_per_site():
    vae = pvae.build_vae(x_dim=6, z_dim=2, hidden_dims=[8], hierarchy=[3, 2])
    x = torch.bernoulli(torch.full((10, 6), 0.4))
    result = diagnose(
        vae.model, vae.guide, x, log_px="iwae", iwae_samples=20, num_samples=10,
        local_steps=5, seed=0,
    )  # fmt: skip
    assert result.unit_names == ("z1[0]", "z1[1]", "z1[2]", "z2[0]", "z2[1]")
    assert torch.isfinite(result.kl_per_unit).all()
    assert torch.allclose(result.inference_gap, result.approximation_gap + result.amortization_gap)


def test_active_units_alone_are_diagnoses_and_leave_the_random_numbers_alone():
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pvae.build_vae(6, z_dim=3, hidden_dims=[5])
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    state = torch.get_rng_state()
    active = pvae.active_units(vae.model, vae.guide, x, threshold=1e-4)
    assert torch.equal(state, torch.get_rng_state())
    found = pvae.diagnose(vae.model, vae.guide, x, gaps=False, active_threshold=1e-4, seed=0)
    assert torch.equal(active, found.active) and active.dtype == torch.bool


def test_a_hierarchical_vaes_kl_is_the_elbos_kl_term():
    # p(z2) p(z1 | z2), q(z1 | x) q(z2 | z1): z2 is drawn given z1, so KL(q(z1|x) ‖ p(z1|z2))
    # in closed form is no term of the ELBO; E_q[log q(z|x) − log p(z)] is.
    pyro.clear_param_store()
    torch.manual_seed(2)
    vae = pvae.build_vae(x_dim=6, z_dim=2, hidden_dims=[8], hierarchy=[3, 2])
    x = torch.bernoulli(torch.full((20, 6), 0.4))
    result = diagnose(vae.model, vae.guide, x, gaps=False, num_samples=2000, seed=0)
    with torch.no_grad(), pyro.plate("particles", 4000, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(vae.model, guide_trace)).get_trace(x)
    log_ratio = sum(
        guide_trace.nodes[name]["fn"].log_prob(guide_trace.nodes[name]["value"])
        - model_trace.nodes[name]["fn"].log_prob(model_trace.nodes[name]["value"])
        for name in ("z1", "z2")
    ).double()  # [particles, N]
    expected, error = log_ratio.mean(), log_ratio.mean(1).std() / math.sqrt(4000)
    assert not result.kl_closed_form
    assert abs(result.kl - expected) < 4 * error + 4 * result.kl_se.mean() / math.sqrt(20)
    assert torch.allclose(result.kl_per_unit.sum(), result.kl_per_datapoint.mean(), atol=0.05)
