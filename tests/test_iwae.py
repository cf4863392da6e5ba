import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pvae.infer.iwae import _LogWeightStats, _psis_khat, log_likelihood
from pvae.infer.objectives import ScaleDataPlate
from pvae.viz.plots import plot_khat

X_DIM, Z_DIM = 3, 2


class LinearGaussian:
    """p(z) p(x|z) with p(x|z) = N(Wz + b, sigma^2 I) and a Gaussian-mixture prior on z.

    With one component of N(0, I) this is probabilistic PCA. Everything is float64, and both
    log p(x) and the posterior p(z|x) are known in closed form: per component c, x is
    N(W mu_c + b, W S_c W^T + sigma^2 I), and z|x,c is Gaussian.
    """

    def __init__(self, weights, locs, covs, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(X_DIM, Z_DIM, generator=generator, dtype=torch.float64)
        self.b = torch.randn(X_DIM, generator=generator, dtype=torch.float64)
        self.sigma = 0.5
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.locs = torch.tensor(locs, dtype=torch.float64)
        self.covs = torch.tensor(covs, dtype=torch.float64)
        # The guide's error: its means are shifted and its covariances widened.
        self.shift, self.widen = 0.0, 1.0

    def prior(self):
        if len(self.weights) == 1:
            return dist.MultivariateNormal(self.locs[0], self.covs[0])
        components = dist.MultivariateNormal(self.locs, self.covs)
        return dist.MixtureSameFamily(dist.Categorical(self.weights), components)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def _marginals(self):
        """The components of p(x): means [C, X] and covariances [C, X, X]."""
        noise = self.sigma**2 * torch.eye(X_DIM, dtype=torch.float64)
        return self.locs @ self.W.T + self.b, self.W @ self.covs @ self.W.T + noise

    def exact_log_px(self, x):
        means, covs = self._marginals()
        per_component = dist.MultivariateNormal(means, covs).log_prob(x[:, None, :])
        return torch.logsumexp(self.weights.log() + per_component, dim=-1)

    def posterior(self, x):
        """p(z|x) as a mixture over components: mixing logits [N, C], means [N, C, Z], covs."""
        precisions = torch.linalg.inv(self.covs) + self.W.T @ self.W / self.sigma**2
        covs = torch.linalg.inv(precisions)
        data_term = (x - self.b) @ self.W / self.sigma**2
        prior_term = (torch.linalg.inv(self.covs) @ self.locs[..., None]).squeeze(-1)
        means = (covs @ (data_term[:, None, :] + prior_term)[..., None]).squeeze(-1)
        marginal_means, marginal_covs = self._marginals()
        logits = self.weights.log() + dist.MultivariateNormal(
            marginal_means, marginal_covs
        ).log_prob(x[:, None, :])
        return logits, means, covs

    def guide(self, x):
        logits, means, covs = self.posterior(x)
        means, covs = means + self.shift, covs * self.widen**2
        if len(self.weights) == 1:
            q = dist.MultivariateNormal(means[:, 0], covs[0])
        else:
            components = dist.MultivariateNormal(means, covs)
            q = dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)

    def sample_data(self, num_data, seed=1):
        generator = torch.Generator().manual_seed(seed)
        c = torch.multinomial(self.weights, num_data, replacement=True, generator=generator)
        noise = torch.randn(num_data, Z_DIM, generator=generator, dtype=torch.float64)
        z = self.locs[c] + (torch.linalg.cholesky(self.covs)[c] @ noise[..., None]).squeeze(-1)
        eps = torch.randn(num_data, X_DIM, generator=generator, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * eps


PRIORS = {
    "normal": dict(weights=[1.0], locs=[[0.0, 0.0]], covs=[np.eye(2).tolist()]),
    "mixture": dict(
        weights=[0.3, 0.7],
        locs=[[-2.0, 0.0], [1.5, 1.0]],
        covs=[[[0.5, 0.1], [0.1, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]],
    ),
}


@pytest.fixture(params=sorted(PRIORS))
def linear_gaussian(request):
    return LinearGaussian(**PRIORS[request.param])


def perturbed(model: LinearGaussian) -> LinearGaussian:
    model.shift, model.widen = 0.3, 1.3
    return model


def test_exact_posterior_guide_gives_exact_log_likelihood_for_every_k(linear_gaussian):
    # With q(z|x) = p(z|x) every weight is p(x): IWAE_K, the ELBO and log p(x) coincide.
    x = linear_gaussian.sample_data(20)
    exact = linear_gaussian.exact_log_px(x)
    for k in (1, 10, 100):
        result = log_likelihood(linear_gaussian.model, linear_gaussian.guide, x, k, seed=0)
        assert result.per_datapoint.dtype == torch.float64 and result.per_datapoint.shape == (20,)
        assert torch.allclose(result.per_datapoint, exact, atol=1e-4, rtol=0)
        assert torch.allclose(result.elbo_per_datapoint, exact, atol=1e-4, rtol=0)
        assert torch.allclose(result.ess, torch.full_like(result.ess, k), rtol=1e-9)
        assert result.num_samples == k
        assert math.isclose(result.mean, exact.mean().item(), abs_tol=1e-4)


def standard_errors_apart(lower: torch.Tensor, upper: torch.Tensor) -> float:
    """How many standard errors the mean per-datapoint difference upper - lower is above 0."""
    difference = upper - lower
    return (difference.mean() / (difference.std() / math.sqrt(len(difference)))).item()


def test_bounds_tighten_towards_log_px_as_k_grows(linear_gaussian):
    model = perturbed(linear_gaussian)
    x = model.sample_data(400)
    exact = model.exact_log_px(x)
    iwae = {k: log_likelihood(model.model, model.guide, x, k, seed=k) for k in (10, 1000, 5000)}
    assert standard_errors_apart(iwae[10].elbo_per_datapoint, iwae[10].per_datapoint) > 5
    # A gap of ~0.3 nats, ~6 standard errors of the noisy IWAE_10 on 400 datapoints.
    assert standard_errors_apart(iwae[10].per_datapoint, iwae[1000].per_datapoint) > 3
    # The bound holds in expectation: IWAE_1000 is at most 3 standard errors above log p(x).
    assert standard_errors_apart(iwae[1000].per_datapoint, exact) > -3
    assert abs(iwae[5000].mean - exact.mean().item()) < 0.05


def test_same_seed_gives_same_numbers_for_any_chunk_sizes(linear_gaussian):
    model = perturbed(linear_gaussian)
    x = model.sample_data(23)
    # Chunks that split the canonical 10 x 1000 blocks, align with them, or hold everything.
    chunkings = [(None, None), (700, 7), (2100, 23), (1000, 10), (333, 4)]
    results = [
        log_likelihood(model.model, model.guide, x, 2100, particle_chunk=p, data_chunk=d, seed=5)
        for p, d in chunkings
    ]
    first = results[0]
    for result in results[1:]:
        for field in ("per_datapoint", "elbo_per_datapoint", "ess", "pareto_k"):
            assert torch.allclose(getattr(result, field), getattr(first, field), atol=1e-6, rtol=0)
    other_seed = log_likelihood(model.model, model.guide, x, 2100, seed=6)
    assert not torch.equal(other_seed.per_datapoint, first.per_datapoint)


def test_agrees_with_pyro_renyi_elbo_at_alpha_zero(linear_gaussian):
    # RenyiELBO(alpha=0) sums over datapoints the log-mean-exp over particles of log w: with a
    # data plate common to all sites its loss is -sum_n IWAE_K(x_n), our per-datapoint sum.
    x = linear_gaussian.sample_data(30)
    k, repeats = 50, 20
    renyi = pyro.infer.RenyiELBO(
        alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1
    )
    exact_total = linear_gaussian.exact_log_px(x).sum().item()
    assert math.isclose(
        -renyi.loss(linear_gaussian.model, linear_gaussian.guide, x), exact_total, abs_tol=1e-6
    )

    model = perturbed(linear_gaussian)
    ours = torch.tensor(
        [
            log_likelihood(model.model, model.guide, x, k, seed=s).per_datapoint.sum()
            for s in range(repeats)
        ]
    )
    theirs = torch.tensor([-renyi.loss(model.model, model.guide, x) for _ in range(repeats)])
    tolerance = 4 * math.sqrt((ours.var() + theirs.var()) / repeats)
    assert abs(ours.mean() - theirs.mean()) < tolerance
    # The check has teeth: the ELBO (K = 1) is far outside it.
    elbo_total = log_likelihood(model.model, model.guide, x, 1, seed=0).per_datapoint.sum()
    assert ours.mean() - elbo_total > 5 * tolerance


def test_the_minibatch_scale_is_left_out_and_a_model_scale_refused(linear_gaussian):
    model = perturbed(linear_gaussian)
    x = model.sample_data(12)
    plain = log_likelihood(model.model, model.guide, x, 40, seed=1)
    minibatch = ScaleDataPlate(60000)
    scaled = log_likelihood(minibatch(model.model), minibatch(model.guide), x, 40, seed=1)
    assert torch.allclose(scaled.per_datapoint, plain.per_datapoint, atol=1e-12, rtol=0)
    # A scale the model sets itself is not part of p(x): a bound on log p(x) refuses it.
    tempered = pyro.poutine.scale(scale=7.0)
    with pytest.raises(ValueError, match="site 'z' is scaled"):
        log_likelihood(tempered(model.model), tempered(model.guide), x, 40, seed=1)


def test_tuple_data_and_a_pvae_vae_work():
    # A float32 Bernoulli VAE, called with data as a one-element tuple.
    import pvae

    vae = pvae.build_vae(12, z_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((15, 12), 0.4))
    result = log_likelihood(vae.model, vae.guide, (x,), 64, data_chunk=4, particle_chunk=30, seed=2)
    again = log_likelihood(vae.model, vae.guide, x, 64, seed=2)
    assert torch.allclose(result.per_datapoint, again.per_datapoint, atol=1e-4, rtol=0)
    assert (result.elbo_per_datapoint <= result.per_datapoint).all()
    assert math.isclose(result.bits_per_dim, -result.mean / (12 * math.log(2)))
    assert result.summary().startswith(f"IWAE_64 {result.mean:.2f} ± ")
    # min(1 - 1/log10(64), 0.7) = 0.446
    assert "k̂ > 0.45 for" in result.summary()


def global_latent_model(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(g, 1.0), obs=x)


def global_latent_guide(x):
    pyro.sample("g", dist.Normal(0.0, 1.0))


def global_observed_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    pyro.sample("total", dist.Normal(0.0, 10.0), obs=x.sum())


def local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def test_sites_outside_the_data_plate_are_refused():
    x = torch.randn(6)
    with pytest.raises(ValueError, match="global latent 'g'"):
        log_likelihood(global_latent_model, global_latent_guide, x, 5)
    with pytest.raises(ValueError, match="observed site 'total'.*outside"):
        log_likelihood(global_observed_model, local_guide, x, 5)


def test_model_latent_without_guide_site_is_refused():
    def empty_guide(x):
        with pyro.plate("data", x.shape[0]):
            pass

    with pytest.raises(ValueError, match="model latent 'z' has no site in the guide"):
        log_likelihood(local_model, empty_guide, torch.randn(4), 5)


def pareto_log_weights(xi, shape, seed=0):
    # w = U^(-xi) has a Pareto tail with shape xi (1/xi finite moments): log w = -xi log U.
    u = np.random.default_rng(seed).uniform(size=shape)
    return -xi * np.log(u)


def test_psis_khat_recovers_the_pareto_tail_shape():
    shape = (20, 5000)
    light = _psis_khat(pareto_log_weights(0.3, shape))
    heavy = _psis_khat(pareto_log_weights(0.9, shape))
    # One row's k-hat has a spread of about 0.1; the mean over 20 rows is much tighter.
    assert abs(light.mean() - 0.3) < 0.1 and (abs(light - 0.3) < 0.3).all()
    assert heavy.mean() > 0.7
    bounded = _psis_khat(np.log(np.random.default_rng(1).uniform(size=shape)))
    assert (bounded < 0.5).all()
    assert np.isnan(_psis_khat(np.zeros((3, 10)))).all()


def test_streaming_statistics_match_the_one_shot_ones():
    log_w = torch.randn(1000, 4, dtype=torch.float64) * 30 - 1e4
    stats = _LogWeightStats(4, "cpu")
    for chunk in log_w.split(300):
        stats.update(chunk)
    assert torch.allclose(stats.log_mean_weight(), log_w.logsumexp(0) - math.log(1000))
    assert torch.allclose(stats.mean_log_weight(), log_w.mean(0))
    weights = (log_w - log_w.max(0).values).exp()
    assert torch.allclose(stats.ess(), weights.sum(0) ** 2 / (weights**2).sum(0))


def test_ess_is_k_for_equal_weights_and_one_for_a_dominating_weight():
    equal = _LogWeightStats(2, "cpu")
    dominated = _LogWeightStats(1, "cpu")
    for _ in range(3):
        equal.update(torch.full((100, 2), -7.5))
        dominated.update(torch.full((100, 1), -800.0))
    dominated.update(torch.zeros(1, 1))
    assert torch.equal(equal.ess(), torch.full((2,), 300.0, dtype=torch.float64))
    assert math.isclose(dominated.ess().item(), 1.0, abs_tol=1e-9)


def test_plot_khat_writes_a_picture(tmp_path, linear_gaussian):
    import matplotlib.image

    model = perturbed(linear_gaussian)
    result = log_likelihood(model.model, model.guide, model.sample_data(30), 200, seed=0)
    path = plot_khat(result, tmp_path / "khat.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0.01


class EnumeratedMixture(LinearGaussian):
    """The mixture prior written the Pyro way: its component c enumerated in the model, absent
    from the guide. log_likelihood sums c out of each weight: log Σ_c p(x, z, c) - log q(z|x).
    The offset b is a Pyro parameter, so that fit has something to train."""

    def __init__(self):
        super().__init__(**PRIORS["mixture"])

    def model(self, x):
        self.b = pyro.param("b", self.b)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(self.weights), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.MultivariateNormal(self.locs[c], self.covs[c]))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        self.b = pyro.param("b", self.b)
        super().guide(x)


def test_an_enumerated_mixture_prior_with_the_exact_posterior_gives_log_px_for_every_k():
    mixture = EnumeratedMixture()
    x = mixture.sample_data(20)
    exact = mixture.exact_log_px(x)
    for k in (1, 10, 100):
        result = log_likelihood(mixture.model, mixture.guide, x, k, seed=0)
        assert torch.allclose(result.per_datapoint, exact, atol=1e-4, rtol=0)
        assert torch.allclose(result.elbo_per_datapoint, exact, atol=1e-4, rtol=0)


def test_an_enumerated_mixture_prior_with_an_imperfect_guide_is_bounded_in_order():
    mixture = perturbed(EnumeratedMixture())
    x = mixture.sample_data(400)
    exact = mixture.exact_log_px(x)
    iwae = {k: log_likelihood(mixture.model, mixture.guide, x, k, seed=k) for k in (10, 1000)}
    assert standard_errors_apart(iwae[10].elbo_per_datapoint, iwae[10].per_datapoint) > 5
    assert standard_errors_apart(iwae[10].per_datapoint, iwae[1000].per_datapoint) > 3
    assert standard_errors_apart(iwae[1000].per_datapoint, exact) > -3


def test_fit_reports_the_trace_enum_elbo_of_an_enumerated_mixture_prior(one_thread):
    # With the exact posterior as guide, TraceEnum_ELBO's estimate is log p(x) for any draw of
    # z; the first (and only) step's loss is taken at the initial parameters. Trace_ELBO would
    # draw c from the prior instead and report another number.
    import pvae

    mixture = EnumeratedMixture()
    x = mixture.sample_data(30)
    exact = mixture.exact_log_px(x).mean().item()
    with pytest.warns(UserWarning, match="Found vars in model but not guide"):
        sampled_c = -pyro.infer.Trace_ELBO().loss(mixture.model, mixture.guide, x) / 30
    assert abs(sampled_c - exact) > 0.1
    result = pvae.fit(mixture.model, mixture.guide, x, num_epochs=1, batch_size=30)
    assert result.history[0].train_bound == pytest.approx(exact, abs=1e-6)
