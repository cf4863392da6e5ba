"""Real-valued likelihoods: normalized, equal to scipy's densities, bounded, strict about their
data, trainable through build_vae, and rebuilt exactly from checkpoints."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import pvae
from pvae.models.likelihoods import LIKELIHOODS, make_likelihood
from pvae.models.real_likelihoods import (
    REAL_LIKELIHOODS,
    BetaLikelihood,
    HeteroscedasticNormalLikelihood,
    NormalLikelihood,
    StudentTLikelihood,
)

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM = 6


def softplus(raw):
    return np.logaddexp(0.0, raw)


def expit(logits):
    return 1 / (1 + np.exp(-logits))


def with_raw(likelihood, name, values):
    """Set a learned per-dimension raw parameter (float64) to ``values``."""
    likelihood.double()
    with torch.no_grad():
        getattr(likelihood, name).copy_(torch.as_tensor(values, dtype=torch.float64))
    return likelihood


# Each case: a likelihood with D dimensions, its decoder output for one datapoint, and the
# per-dimension scipy density it must be, from an independent computation of its parameters.
RAW = np.array([-3.0, 0.0, 2.5])  # small, unit-ish and large scales or concentrations
LOC = np.array([-1.5, 0.2, 4.0])


def normal_case():
    likelihood = with_raw(NormalLikelihood(x_dim=3), "raw_scale", RAW)
    scale = 1e-3 + softplus(RAW)
    return likelihood, LOC, [stats.norm(LOC[d], scale[d]) for d in range(3)]


def heteroscedastic_case():
    likelihood = HeteroscedasticNormalLikelihood(init_scale=1.0, min_scale=1e-3)
    scale = 1e-3 + softplus(RAW + likelihood._shift)
    return likelihood, np.concatenate([LOC, RAW]), [stats.norm(LOC[d], scale[d]) for d in range(3)]


def student_t_case():
    likelihood = with_raw(StudentTLikelihood(x_dim=3), "raw_scale", RAW)
    with_raw(likelihood, "raw_df", np.array([-4.0, 0.0, 3.0]))  # df near 2, 2.7 and 5
    scale, df = 1e-3 + softplus(RAW), 2.0 + softplus(np.array([-4.0, 0.0, 3.0]))
    return likelihood, LOC, [stats.t(df[d], LOC[d], scale[d]) for d in range(3)]


def beta_case():
    likelihood = BetaLikelihood()
    logits = np.array([-2.0, 0.0, 1.0])
    m, k = expit(logits), 1e-2 + softplus(RAW + likelihood._shift)
    frozen = [stats.beta(m[d] * k[d], (1 - m[d]) * k[d]) for d in range(3)]
    return likelihood, np.concatenate([logits, RAW]), frozen


CASES = {
    "normal": normal_case,
    "normal_heteroscedastic": heteroscedastic_case,
    "student_t": student_t_case,
    "beta": beta_case,
}


def test_every_real_likelihood_is_registered_and_tested():
    assert set(CASES) == set(REAL_LIKELIHOODS) and set(REAL_LIKELIHOODS) <= set(LIKELIHOODS)


def one_dimension(likelihood, params, d):
    """The density of dimension d alone, as a function of a float (others held at 0.5)."""
    params = torch.as_tensor(params, dtype=torch.float64)

    def density(value):
        x = torch.full((3,), 0.5, dtype=torch.float64)
        x[d] = value
        per_dim = likelihood(params, event_dim=1).base_dist.log_prob(x)
        return math.exp(per_dim[d].item())

    return density


@pytest.mark.parametrize("name", list(CASES))
def test_each_dimension_integrates_to_one(name):
    likelihood, params, frozen = CASES[name]()
    for d in range(3):
        density = one_dimension(likelihood, params, d)
        if name == "beta":  # (0, 1); the poles of a < 1 or b < 1 are integrable
            pieces = [(0, frozen[d].median()), (frozen[d].median(), 1)]
        else:  # split at the location: quad then finds narrow peaks
            pieces = [(-math.inf, LOC[d]), (LOC[d], math.inf)]
        total = sum(integrate.quad(density, a, b, limit=200)[0] for a, b in pieces)
        assert total == pytest.approx(1.0, abs=1e-6), (name, d)


@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_is_scipys_density_summed_over_dimensions(name):
    likelihood, params, frozen = CASES[name]()
    rng = np.random.default_rng(0)
    if name == "beta":
        x = rng.uniform(0.001, 0.999, size=(50, 3))
    else:
        x = LOC + rng.standard_normal((50, 3)) * 3
    expected = sum(frozen[d].logpdf(x[:, d]) for d in range(3))
    params = torch.as_tensor(params, dtype=torch.float64).expand(50, -1)
    got = likelihood(params, event_dim=1).log_prob(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_mean_is_the_distributions_mean(name):
    likelihood, params, frozen = CASES[name]()
    mean = likelihood.mean(torch.as_tensor(params, dtype=torch.float64), event_dim=1)
    np.testing.assert_allclose(mean.numpy(), [f.mean() for f in frozen], rtol=1e-10)


def test_the_floors_bound_each_dimensions_log_density():
    # Raw parameters far below their floors: the scale is min_scale, not 0, and the bound
    # of a datapoint reproduced exactly is -log(min_scale sqrt(2 pi)) per dimension.
    at_loc = torch.zeros(1, 3, dtype=torch.float64)
    normal = with_raw(NormalLikelihood(3, min_scale=0.01), "raw_scale", [-1e4] * 3)
    peak = -3 * math.log(0.01 * math.sqrt(2 * math.pi))
    assert normal(at_loc, event_dim=1).log_prob(at_loc).item() == pytest.approx(peak, rel=1e-12)
    hetero = HeteroscedasticNormalLikelihood(min_scale=0.01).double()
    params = torch.cat([at_loc, torch.full((1, 3), -1e4, dtype=torch.float64)], dim=1)
    assert hetero(params, event_dim=1).log_prob(at_loc).item() == pytest.approx(peak, rel=1e-12)
    t = with_raw(StudentTLikelihood(3, min_df=2.0), "raw_df", [-1e4] * 3)
    assert torch.equal(t.df, torch.full((3,), 2.0, dtype=torch.float64))
    # The Beta's concentration is capped: a = b = 5000 at the most, so its density at 1/2.
    beta = BetaLikelihood(max_concentration=1e4)
    params = torch.tensor([[0.0, 0.0, 0.0, 1e4, 1e4, 1e4]], dtype=torch.float64)
    half = torch.full((1, 3), 0.5, dtype=torch.float64)
    expected = 3 * stats.beta(5000, 5000).logpdf(0.5)
    assert beta(params, event_dim=1).log_prob(half).item() == pytest.approx(expected, rel=1e-10)


def test_a_learned_vector_fits_image_shaped_data_and_refuses_the_wrong_size():
    loc = torch.randn(5, 3, 2, 2)
    normal = NormalLikelihood(x_dim=12)
    assert normal(loc, event_dim=3).log_prob(loc).shape == (5,)
    with pytest.raises(ValueError, match="learns 12 values.*data have 6 per datapoint"):
        normal(torch.zeros(5, 6), event_dim=1)


def one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_data_are_refused_by_every_real_likelihood(name, bad):
    x = torch.full((2, 3), 0.5)
    x[1, 2] = bad
    one_line_error(lambda: make_likelihood(name, x_dim=3).check_data(x), "finite.*impute")


@pytest.mark.parametrize("edge", [0.0, 1.0, -0.2, 1.5])
def test_beta_refuses_data_outside_the_open_interval_and_its_advice_works(edge):
    x = torch.tensor([[0.3, edge], [0.5, 0.7]])
    message = r"open interval \(0, 1\).*1 values are not.*\(x \* \(n - 1\) \+ 0.5\) / n"
    one_line_error(lambda: BetaLikelihood().check_data(x), message)
    vae = pvae.build_vae(2, 2, [4], likelihood="beta")
    one_line_error(lambda: pvae.fit(vae.model, vae.guide, x, num_epochs=1), message)
    if 0 <= edge <= 1:  # the advice, taken, gives data the Beta accepts
        n = x.shape[0]
        BetaLikelihood().check_data((x * (n - 1) + 0.5) / n)
        BetaLikelihood().check_data(1e-3 + (1 - 2e-3) * x)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "discretized_logistic"])
def test_grey_level_likelihoods_point_real_valued_data_to_the_normal(name):
    standardized = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    one_line_error(lambda: make_likelihood(name).check_data(standardized), "likelihood 'normal'")
    inside = standardized.sigmoid()  # in [0, 1], not 8-bit levels
    one_line_error(lambda: make_likelihood(name).check_data(inside), "likelihood 'normal'")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_likelihood("normal"), "learns one value per data dimension: pass x_dim"),
        (
            lambda: pvae.build_vae(3, 2, likelihood="normal", likelihood_options={"x_dim": 4}),
            "likelihood_options hold x_dim: the likelihood is given build_vae's x_dim",
        ),
        (lambda: make_likelihood("normal", x_dim=3, min_scale=0.0), "min_scale must be a number"),
        (lambda: make_likelihood("student_t", x_dim=3, init_df=1.0), "init_df - min_df"),
        (lambda: make_likelihood("beta", max_concentration=1.0), "max_concentration - init"),
    ],
)
def test_bad_real_likelihood_choices_get_one_clear_error(call, match):
    one_line_error(call, match)


def standardized_data(n=96, seed=0):
    """Two clusters in 6 dimensions, standardized per column."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, X_DIM, generator=generator) * 2
    x = centres[torch.arange(n) % 2] + 0.3 * torch.randn(n, X_DIM, generator=generator)
    return (x - x.mean(0)) / x.std(0)


def data_for(name):
    x = standardized_data()
    return torch.sigmoid(x) if name == "beta" else x  # the Beta's data in (0, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_build_vae_trains_on_real_valued_data_and_log_likelihood_evaluates_it(name, tmp_path):
    vae = pvae.build_vae(x_dim=X_DIM, z_dim=2, hidden_dims=[16], likelihood=name)
    x = data_for(name)
    before = {k: v.clone() for k, v in vae.likelihood.state_dict().items()}
    result = pvae.fit(
        vae.model, vae.guide, x, num_epochs=8, batch_size=32, learning_rate=1e-2, seed=0
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds) and bounds[-1] > bounds[0], bounds
    # Learned likelihood parameters were registered with Pyro and trained.
    assert all(not torch.equal(v, vae.likelihood.state_dict()[k]) for k, v in before.items())
    bound = pvae.log_likelihood(vae.model, vae.guide, x, 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
    assert vae.reconstruct(x[:3]).shape == (3, X_DIM)
    # The checkpoint rebuilds the same likelihood, learned parameters included.
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(vae))
    loaded, _ = pvae.load_vae(path)
    assert type(loaded.likelihood) is type(vae.likelihood)
    for key, value in vae.likelihood.state_dict().items():
        assert torch.equal(loaded.likelihood.state_dict()[key], value)
    again = pvae.log_likelihood(loaded.model, loaded.guide, x, 20, seed=0)
    assert torch.equal(again.per_datapoint, bound.per_datapoint)


@pytest.mark.parametrize("name", ["normal", "normal_heteroscedastic"])
def test_a_conv_vae_takes_the_real_valued_likelihoods(name):
    vae = pvae.build_vae(
        16, 2, network="conv", image_shape=[1, 4, 4], channels=[4], likelihood=name
    )
    x = torch.randn(5, 16)
    bound = pvae.log_likelihood(vae.model, vae.guide, x, 4, seed=0)
    assert bound.per_datapoint.shape == (5,) and torch.isfinite(bound.per_datapoint).all()
