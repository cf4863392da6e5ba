"""log_likelihood with a discrete latent enumerated in the guide (Kingma et al.'s M2).

The model is linear-Gaussian given the label y, so log p(x) is known in closed form:
y ~ Categorical(π), z ~ N(0, I), x | y, z ~ N(a_y + W z, σ² I), hence
p(x) = Σ_y π_y N(x; a_y, W Wᵀ + σ² I) and p(z | x, y) = N(S Wᵀ (x - a_y) / σ², S) with
S = (I + WᵀW / σ²)⁻¹. The guide enumerates y in parallel and draws z ~ q(z | x, y); the weight
w = Σ_y p(x, y, z^y) / q(z^y | x, y) is unbiased for p(x), and q(y | x) is no part of it.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae import log_likelihood
from pvae.infer.log_weights import guide_enumerated_log_weights
from pvae.infer.objectives import GuideEnumeratedIWAE, choose_objective
from pvae.infer.plates import ScaleDataPlate, trace_pair

PRIOR = [0.2, 0.5, 0.3]
SIGMA = 0.6


def _parameters():
    generator = torch.Generator().manual_seed(0)
    locs = torch.randn(3, 3, generator=generator, dtype=torch.float64) * 2
    weight = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    return locs, weight


class M2:
    """The model above; the guide's q(z | x, y) the exact posterior, or that with its mean
    shifted by ``shift`` and its scale multiplied by ``stretch``; q(y | x) arbitrary logits."""

    def __init__(self, shift=0.0, stretch=1.0, label_logits=(0.0, 0.0, 0.0)):
        self.locs, self.weight = _parameters()
        self.shift, self.stretch = shift, stretch
        self.label_logits = torch.tensor(label_logits, dtype=torch.float64)
        precision = torch.eye(2, dtype=torch.float64) + self.weight.T @ self.weight / SIGMA**2
        self.covariance = torch.linalg.inv(precision)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            probs = torch.tensor(PRIOR, dtype=x.dtype).expand(x.shape[0], 3)
            y = pyro.sample("y", dist.Categorical(probs))
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            loc = self.locs[y] + z @ self.weight.T
            pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            logits = x[:, :1] * self.label_logits
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            mean = (x - self.locs[y]) @ self.weight @ self.covariance / SIGMA**2 + self.shift
            scale_tril = self.stretch * torch.linalg.cholesky(self.covariance)
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=scale_tril))

    def exact_log_likelihood(self, x):
        covariance = self.weight @ self.weight.T + SIGMA**2 * torch.eye(3, dtype=x.dtype)
        marginal = dist.MultivariateNormal(self.locs, covariance)  # one per label
        log_prior = torch.tensor(PRIOR, dtype=x.dtype).log()
        return torch.logsumexp(marginal.log_prob(x[:, None, :]) + log_prior, -1)

    def data(self, num_data, seed=1):
        generator = torch.Generator().manual_seed(seed)
        y = torch.multinomial(torch.tensor(PRIOR), num_data, True, generator=generator)
        z = torch.randn(num_data, 2, generator=generator, dtype=torch.float64)
        noise = torch.randn(num_data, 3, generator=generator, dtype=torch.float64)
        return self.locs[y] + z @ self.weight.T + SIGMA * noise


@pytest.mark.parametrize("label_logits", [(0.0, 0.0, 0.0), (3.0, -2.0, 0.5)])
@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_the_exact_posterior_gives_log_p_x_for_every_k(float64, label_logits, num_samples):
    # Each term p(x, y, z^y) / q(z^y | x, y) is p(x, y) whatever z^y is: the bound is exact,
    # for any q(y | x), already at K = 1 (and the ELBO column with it).
    m2 = M2(label_logits=label_logits)
    x = m2.data(23)
    result = log_likelihood(m2.model, m2.guide, x, num_samples, seed=0, particle_chunk=3)
    exact = m2.exact_log_likelihood(x)
    torch.testing.assert_close(result.per_datapoint, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.elbo_per_datapoint, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.ess, torch.full_like(exact, num_samples), rtol=1e-10, atol=0)


def test_a_poorer_posterior_gives_a_bound_that_tightens_with_k(float64):
    m2 = M2(shift=0.7, stretch=1.8, label_logits=(3.0, -2.0, 0.5))
    x = m2.data(200)
    exact = m2.exact_log_likelihood(x)
    gaps = {}
    for num_samples in (1, 10, 1000):
        result = log_likelihood(m2.model, m2.guide, x, num_samples, seed=0)
        gap = exact - result.per_datapoint
        gaps[num_samples] = (gap.mean().item(), (gap.std() / math.sqrt(len(gap))).item())
    for num_samples, (mean, error) in gaps.items():
        assert mean > -3 * error, (num_samples, gaps)  # a lower bound, within MC error
    assert gaps[1][0] > gaps[10][0] + 3 * gaps[10][1] > 0
    assert gaps[10][0] > gaps[1000][0] + 3 * gaps[1000][1]
    assert gaps[1000][0] < 0.02


def test_the_draws_do_not_depend_on_the_chunks(float64):
    m2 = M2(shift=0.7, stretch=1.8)
    x = m2.data(25)
    whole = log_likelihood(m2.model, m2.guide, x, 1500, seed=3)
    chunked = log_likelihood(m2.model, m2.guide, x, 1500, seed=3, particle_chunk=700, data_chunk=7)
    torch.testing.assert_close(chunked.per_datapoint, whole.per_datapoint, rtol=1e-12, atol=0)
    assert not torch.isnan(whole.pareto_k).any()


def test_a_model_enumerated_latent_is_summed_next_to_the_guide_s(float64):
    # The mixture's prior weight π_y split over a model-enumerated coin c with p(x | y, c, z)
    # not depending on c: the model is the same, so log p(x) is unchanged.
    m2 = M2()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            probs = torch.tensor(PRIOR, dtype=x.dtype).expand(x.shape[0], 3)
            y = pyro.sample("y", dist.Categorical(probs))
            coin = torch.tensor([0.4, 0.6], dtype=x.dtype)
            pyro.sample("c", dist.Categorical(coin), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            loc = m2.locs[y] + z @ m2.weight.T
            pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)

    x = m2.data(11)
    result = log_likelihood(model, m2.guide, x, 5, seed=0)
    torch.testing.assert_close(result.per_datapoint, m2.exact_log_likelihood(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_particles", [1, 5])
def test_the_iwae_objective_with_the_exact_posterior_is_log_p_x_value_and_gradient(
    float64, num_particles
):
    # Every term of the weight is p(x, y): the loss is -(N / B) Σ log p(x) whatever the
    # draws, and so is its gradient in the model's parameters (the guide's mean moves with
    # them, which the exact gradient includes: z^y's path cancels).
    m2 = M2(label_logits=(3.0, -2.0, 0.5))
    x = m2.data(9)
    m2.locs.requires_grad_(True)
    objective = choose_objective("iwae", num_particles, 1, trace_pair(m2.model, m2.guide, x))
    assert isinstance(objective, GuideEnumeratedIWAE)
    scaled = ScaleDataPlate(36)
    loss = objective.differentiable_loss(scaled(m2.model), scaled(m2.guide), x)
    exact = -4 * m2.exact_log_likelihood(x).sum()
    torch.testing.assert_close(loss, exact, rtol=1e-12, atol=1e-10)
    (ours,) = torch.autograd.grad(loss, m2.locs)
    (wanted,) = torch.autograd.grad(exact, m2.locs)
    torch.testing.assert_close(ours, wanted, rtol=1e-9, atol=1e-10)


def test_the_iwae_objective_is_the_held_out_bound_in_expectation(float64):
    # 200 copies of each datapoint: 200 independent IWAE_4 draws of each, from the training
    # objective and from log_likelihood; the same expectation, below log p(x).
    m2 = M2(shift=0.7, stretch=1.8, label_logits=(3.0, -2.0, 0.5))
    x = m2.data(10).repeat(200, 1)
    pyro.set_rng_seed(0)
    log_w, _ = guide_enumerated_log_weights(m2.model, m2.guide, (x,), 4, 1)
    ours = torch.logsumexp(log_w, 0) - math.log(4)
    theirs = log_likelihood(m2.model, m2.guide, x, 4, seed=0).per_datapoint
    difference = (ours - theirs).mean()
    error = math.sqrt(ours.var() / len(ours) + theirs.var() / len(theirs))
    assert abs(difference) < 4 * error
    assert ours.mean() < m2.exact_log_likelihood(x).mean() - 4 * error  # a lower bound


def test_fit_trains_with_the_iwae_objective_and_stl_and_dreg_refuse(float64):
    m2 = M2()
    x = m2.data(40)
    m2.locs.requires_grad_(True)
    pyro.clear_param_store()

    def model(x):
        pyro.param("locs", m2.locs)
        m2.model(x)

    result = pvae.fit(model, m2.guide, x, objective="iwae", num_particles=3,
                      num_epochs=2, batch_size=10, progress=False)  # fmt: skip
    assert all(math.isfinite(stats.train_bound) for stats in result.history)
    for name in ("stl", "dreg"):
        with pytest.raises(ValueError, match=f"objective '{name}' has no valid form when the "
                           "guide enumerates 'y'"):  # fmt: skip
            pvae.fit(model, m2.guide, x, objective=name, num_particles=3)


def test_a_guide_enumerated_latent_in_a_nested_plate_is_refused(float64):
    # One y per feature: the weight would need a sum over every combination of them.
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", 3, dim=-1):
            y = pyro.sample("y", dist.Bernoulli(torch.tensor(0.5, dtype=x.dtype)))
            pyro.sample("x", dist.Normal(y, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", 3, dim=-1):
            pyro.sample("y", dist.Bernoulli(logits=x), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="guide site 'y' is enumerated inside a plate nested"):
        log_likelihood(model, guide, M2().data(4), 3, seed=0)
