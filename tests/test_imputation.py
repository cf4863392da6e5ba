import inspect
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pvae
from pvae.analysis.imputation import (
    fill_missing,
    impute_importance,
    impute_nuts,
    masked_guide,
    masked_model,
)

# A linear-Gaussian "VAE" whose posterior is known in closed form: z ~ N(0, I_2),
# x = W z + b + N(0, sigma^2 I_6), in the layout of pvae.VAE (sites "latent" and "obs").
W = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.8, -0.3], [0.2, 0.9], [-1.0, 0.4], [0.3, 0.3]])
B = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5, -0.1])
SIGMA = 0.5


def linear_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("latent", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("obs", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def broad_guide(x):  # ignores x: a proposal wider than the prior
    with pyro.plate("data", x.shape[0]):
        pyro.sample("latent", dist.Normal(torch.zeros(2), 1.5).to_event(1))


def exact_posterior(x, observed):
    """E[x | x_obs] and log p(x_obs) of the linear-Gaussian model, per datapoint."""
    means, evidences = [], []
    for row, seen in zip(x, observed, strict=True):
        w, residual = W[seen], row[seen] - B[seen]
        precision = torch.eye(2) + w.T @ w / SIGMA**2
        z_mean = torch.linalg.solve(precision, w.T @ residual / SIGMA**2)
        means.append(torch.where(seen, row, W @ z_mean + B))
        covariance = w @ w.T + SIGMA**2 * torch.eye(int(seen.sum()))
        evidence = dist.MultivariateNormal(B[seen], covariance).log_prob(row[seen])
        evidences.append(evidence)
    return torch.stack(means), torch.stack(evidences)


def data_and_mask():
    torch.manual_seed(1)
    x = torch.randn(3, 2) @ W.T + B + SIGMA * torch.randn(3, 6)
    observed = torch.tensor(
        [[True, True, True, False, False, False], [False, True, False, True, False, True]] * 2
    )[:3]
    return x, observed


def test_importance_sampling_matches_the_closed_form_posterior():
    x, observed = data_and_mask()
    mean, log_evidence = exact_posterior(x, observed)
    x_nan = torch.where(observed, x, torch.full_like(x, math.nan))  # hidden values unread
    result = impute_importance(
        linear_model, broad_guide, x_nan, observed, fill=0.0, num_particles=20000, seed=0
    )
    torch.testing.assert_close(result.mean, mean, atol=0.03, rtol=0)
    # log of a mean of 20,000 weights with ESS ~2,000: standard error ~0.02 nats.
    torch.testing.assert_close(result.log_evidence, log_evidence.double(), atol=0.07, rtol=0)
    assert result.samples.shape == (8, 3, 6) and result.latents["latent"].shape == (8, 3, 2)
    assert torch.equal(result.samples[:, observed], x[observed].expand(8, -1))
    assert ((result.ess > 1000) & (result.ess <= 20000)).all()
    # A given seed gives the same draws; the global random state is left alone.
    state = torch.get_rng_state()
    again = impute_importance(
        linear_model, broad_guide, x_nan, observed, fill=0.0, num_particles=20000, seed=0
    )
    assert torch.equal(again.mean, result.mean) and torch.equal(torch.get_rng_state(), state)


def test_nuts_matches_the_closed_form_posterior():
    x, observed = data_and_mask()
    mean, _ = exact_posterior(x, observed)
    result, mcmc = impute_nuts(
        linear_model,
        broad_guide,
        x,
        observed,
        fill=0.0,
        num_samples=400,
        warmup_steps=200,
        seed=0,
    )
    # Posterior sd of a hidden pixel is about 0.5-1; 400 draws: standard error below 0.06.
    torch.testing.assert_close(result.mean, mean, atol=0.15, rtol=0)
    assert result.samples.shape == (400, 3, 6)
    assert torch.equal(result.samples[:, observed], x[observed].expand(400, -1))
    assert mcmc.diagnostics()["latent"]["n_eff"].min() > 50


def test_masked_model_scores_only_observed_pixels_and_ignores_hidden_values():
    vae = pvae.build_vae(8, z_dim=2, hidden_dims=[4])
    x = torch.bernoulli(torch.full((3, 8), 0.5))
    observed = torch.rand(3, 8) > 0.4
    observed[:, 0] = True
    z = torch.randn(3, 2, requires_grad=True)
    conditioned = poutine.condition(masked_model(vae.model), data={"latent": z})
    x_nan = torch.where(observed, x, torch.full_like(x, math.nan))
    trace = poutine.trace(conditioned).get_trace(x_nan, observed)
    log_p = trace.nodes["obs"]["fn"].log_prob(trace.nodes["obs"]["value"])
    expected = (dist.Bernoulli(logits=vae.decoder(z)).log_prob(x) * observed).sum(-1)
    torch.testing.assert_close(log_p, expected)
    log_p.sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.skipif(
    "beta" not in inspect.signature(pvae.build_vae).parameters, reason="no beta-VAE here"
)
def test_masked_model_is_the_model_itself_whatever_the_training_weights():
    vae = pvae.build_vae(8, z_dim=2, hidden_dims=[4], beta=4.0)
    x = torch.bernoulli(torch.full((3, 8), 0.5))
    observed = torch.ones_like(x, dtype=torch.bool)
    with torch.enable_grad():  # where the beta-VAE scales its latent site
        trace = poutine.trace(masked_model(vae.model)).get_trace(x, observed)
    assert all(site["scale"] == 1.0 for site in trace.nodes.values() if site["type"] == "sample")


def test_masked_guide_sees_the_fill_at_hidden_pixels():
    seen = []
    x, observed = torch.ones(2, 3), torch.tensor([[True, False, True], [False, True, True]])
    masked_guide(lambda filled: seen.append(filled), fill=torch.tensor([0.1, 0.2, 0.3]))(
        x, observed
    )
    torch.testing.assert_close(seen[0], torch.tensor([[1.0, 0.2, 1.0], [0.1, 1.0, 1.0]]))
    torch.testing.assert_close(fill_missing(x, observed, 0.5), torch.where(observed, 1.0, 0.5))


def test_vae_imputation_keeps_observed_pixels_and_gives_probabilities():
    vae = pvae.build_vae(12, z_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    observed = torch.zeros_like(x, dtype=torch.bool)
    observed[:, :6] = True
    result = impute_importance(vae.model, vae.guide, x, observed, fill=0.5, num_particles=30)
    assert torch.equal(result.mean[observed], x[observed])
    assert ((result.mean >= 0) & (result.mean <= 1)).all()
    chain, _ = impute_nuts(
        vae.model, vae.guide, x, observed, fill=0.5, num_samples=3, warmup_steps=3
    )
    assert chain.samples.shape == (3, 4, 12) and torch.equal(chain.mean[observed], x[observed])
    # The networks are trainable again afterwards, and NUTS left their gradients alone.
    assert all(p.requires_grad and p.grad is None for p in vae.parameters())


@pytest.mark.parametrize(
    "observed, message",
    [
        (torch.ones(2, 6), "boolean tensor"),
        (torch.ones(2, 5, dtype=torch.bool), "observed has shape"),
        (torch.tensor([[True] * 6, [False] * 6]), "at least one observed pixel"),
    ],
)
def test_bad_masks_are_refused(observed, message):
    with pytest.raises(ValueError, match=message):
        impute_importance(linear_model, broad_guide, torch.zeros(2, 6), observed, fill=0.0)
