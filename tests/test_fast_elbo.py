"""The fast ELBO equals Pyro's Trace_ELBO, loss and gradients, on the same random draws."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints

import pvae
from pvae.infer.fast_elbo import ReparameterizedELBO, supports
from pvae.infer.objectives import ScaleDataPlate
from pvae.infer.plates import trace_pair


def vae_pair():
    vae = pvae.build_vae(12, z_dim=3, hidden_dims=[8])
    return vae.model, vae.guide, torch.bernoulli(torch.full((10, 12), 0.4))


def global_latent_pair():
    """A global latent, a positive-constrained parameter, a mask, and an inner plate."""

    def model(x):
        weight = pyro.param("weight", torch.ones(4, 2))
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with poutine.mask(mask=x[:, 0] > -1.0):
                pyro.sample("x", dist.Normal(z @ weight.T, noise[..., None]).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("noise_loc", torch.tensor(0.1))
        spread = pyro.param("noise_spread", torch.tensor(0.3), constraint=constraints.positive)
        pyro.sample("noise", dist.LogNormal(loc, spread))
        projection = pyro.param("projection", 0.1 * torch.ones(2, 4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ projection.T, 0.5).to_event(1))

    return model, guide, torch.randn(10, 4)


def unconstrained_parameters():
    return {name: value.unconstrained() for name, value in pyro.get_param_store().items()}


def gradients(loss_fn, model, guide, x, num_data, seed):
    pyro.set_rng_seed(seed)
    scale = ScaleDataPlate(num_data)
    loss = loss_fn.differentiable_loss(scale(model), scale(guide), x)
    params = dict(pyro.get_param_store().named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads, strict=True))


@pytest.mark.parametrize("make_pair", [vae_pair, global_latent_pair])
@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("cached", [False, True])
def test_loss_and_gradients_equal_trace_elbo_on_the_same_draws(make_pair, num_particles, cached):
    model, guide, x = make_pair()
    guide_trace, model_trace = trace_pair(model, guide, x)
    assert supports(guide_trace, model_trace)
    fast = ReparameterizedELBO(num_particles, max_plate_nesting=1)
    if cached:
        fast.cache_parameters(unconstrained_parameters())
    reference = pyro.infer.Trace_ELBO(
        num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1
    )
    fast_loss, fast_grads = gradients(fast, model, guide, x, num_data=50, seed=3)
    loss, grads = gradients(reference, model, guide, x, num_data=50, seed=3)
    assert torch.allclose(fast_loss, loss, rtol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(fast_grads[name], grad, rtol=1e-5, atol=1e-6), name


def test_only_constrained_parameters_skip_the_cache():
    model, guide, x = global_latent_pair()
    trace_pair(model, guide, x)
    fast = ReparameterizedELBO()
    fast.cache_parameters(unconstrained_parameters())
    assert set(fast.params) == {"weight", "noise_loc", "projection"}


def test_guides_that_need_score_functions_are_not_supported():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.sigmoid(x)))

    def prior_only_guide(x):
        pass

    x = torch.randn(5)
    assert not supports(*trace_pair(model, guide, x))
    assert not supports(*trace_pair(model, prior_only_guide, x))


def test_fit_with_a_score_function_guide_still_trains_with_trace_elbo():
    probs_init = torch.full((6,), 0.5)

    def model(x):
        probs = pyro.param("probs", probs_init, constraint=constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(probs[0]))
            pyro.sample("x", dist.Normal(3 * c, 1.0), obs=x[:, 0])

    def guide(x):
        weight = pyro.param("w", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=weight * x[:, 0]))

    x = torch.cat([torch.randn(50), 3 + torch.randn(50)]).unsqueeze(-1)
    result = pvae.fit(model, guide, x, num_epochs=3, batch_size=20, learning_rate=0.05)
    assert result.history[-1].train_bound > result.history[0].train_bound - 5
