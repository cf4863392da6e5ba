"""Gradient estimators against exact answers on a linear-Gaussian model.

p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) and q(z|x) = N(Ax + c, diag(s²)): the ELBO is
closed-form, so autograd of it gives the exact gradient that STL and the K = 1 IWAE must
match on average; for K > 1 DReG must match the plain IWAE estimator on average.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.infer.objectives import ScaleDataPlate, make_objective

X_DIM, Z_DIM, NOISE = 3, 2, 0.7
NAMES = ["W", "b", "A", "c", "log_s"]


def initial_values():
    generator = torch.Generator().manual_seed(0)

    def normal(*shape, scale=0.5):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "W": normal(X_DIM, Z_DIM, scale=1.0),
        "b": normal(X_DIM),
        "A": normal(Z_DIM, X_DIM),
        "c": normal(Z_DIM),
        "log_s": normal(Z_DIM) - 0.5,
    }


def model(x):
    W = pyro.param("W", lambda: initial_values()["W"])
    b = pyro.param("b", lambda: initial_values()["b"])
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, NOISE).to_event(1), obs=x)


def guide(x):
    A = pyro.param("A", lambda: initial_values()["A"])
    c = pyro.param("c", lambda: initial_values()["c"])
    log_s = pyro.param("log_s", lambda: initial_values()["log_s"])
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ A.T + c, log_s.exp()).to_event(1))


def data():
    return torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.4]], dtype=torch.float64)


def exact_elbo_gradient(x):
    p = {k: v.clone().requires_grad_() for k, v in initial_values().items()}
    m, s2 = x @ p["A"].T + p["c"], (2 * p["log_s"]).exp().expand(x.shape[0], -1)
    residual = x - m @ p["W"].T - p["b"]
    trace = (p["W"] ** 2 @ s2.T).T.sum(-1)  # tr(W diag(s²) Wᵀ)
    expected_log_lik = -0.5 * X_DIM * math.log(2 * math.pi * NOISE**2) - (
        (residual**2).sum(-1) + trace
    ) / (2 * NOISE**2)
    kl = 0.5 * (s2 + m**2 - 1 - s2.log()).sum(-1)
    (expected_log_lik - kl).sum().backward()
    return {k: p[k].grad for k in NAMES}


def estimated_gradient(objective, num_particles, x, copies=500, runs=20):
    """Mean and standard error of -∇loss over runs, each averaging `copies` independent draws."""
    loss_fn = make_objective(objective, num_particles, max_plate_nesting=1)
    repeated = x.repeat(copies, 1)
    draws = []
    for _ in range(runs):
        pyro.clear_param_store()
        loss = loss_fn.differentiable_loss(model, guide, repeated) / copies
        params = [pyro.param(name).unconstrained() for name in NAMES]
        grads = torch.autograd.grad(-loss, params)
        draws.append(torch.cat([g.flatten() for g in grads]))
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(runs)


def flat(grads):
    return torch.cat([grads[k].flatten() for k in NAMES])


@pytest.mark.parametrize("objective, num_particles", [("stl", 1), ("iwae", 1), ("dreg", 1)])
def test_single_particle_gradients_match_autograd_of_the_exact_elbo(objective, num_particles):
    x = data()
    mean, standard_error = estimated_gradient(objective, num_particles, x)
    exact = flat(exact_elbo_gradient(x))
    assert torch.all((mean - exact).abs() < 4 * standard_error + 1e-3 * exact.abs().max())


def test_dreg_gradient_matches_the_plain_iwae_gradient_on_average():
    x = data()
    dreg_mean, dreg_se = estimated_gradient("dreg", 10, x)
    iwae_mean, iwae_se = estimated_gradient("iwae", 10, x)
    tolerance = 4 * torch.sqrt(dreg_se**2 + iwae_se**2) + 1e-6
    assert torch.all((dreg_mean - iwae_mean).abs() < tolerance)
    # And DReG's guide gradients are the less noisy ones (the point of it): measured here,
    # the total variance of the guide's gradient is about 3x smaller at K = 10.
    guide_part = slice(X_DIM * Z_DIM + X_DIM, None)
    assert dreg_se[guide_part].square().sum() < 0.6 * iwae_se[guide_part].square().sum()


def test_stl_gradient_vanishes_for_the_guide_at_the_exact_posterior():
    """At q = p(z|x), STL's guide gradient is exactly zero for every draw (Roeder et al.)."""
    x = data()[:1]
    b = initial_values()["b"]
    # A diagonal posterior is needed for the diagonal guide: make W's columns orthogonal.
    W = torch.linalg.qr(initial_values()["W"])[0] * 1.3
    covariance = torch.linalg.inv(torch.eye(Z_DIM, dtype=torch.float64) + W.T @ W / NOISE**2)
    A = covariance @ W.T / NOISE**2
    pyro.param("W", W), pyro.param("b", b)
    pyro.param("A", A), pyro.param("c", -A @ b)
    pyro.param("log_s", 0.5 * torch.diag(covariance).log())
    loss = make_objective("stl", 7, max_plate_nesting=1).differentiable_loss(model, guide, x)
    grads = torch.autograd.grad(loss, [pyro.param(n).unconstrained() for n in ("A", "c", "log_s")])
    assert all(g.abs().max() < 1e-10 for g in grads)


@pytest.mark.parametrize("objective", ["stl", "iwae", "dreg"])
def test_minibatch_scale_multiplies_the_per_datapoint_bounds_from_outside(objective):
    x = data()
    loss_fn = make_objective(objective, 5, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    unscaled = loss_fn.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(1)
    scaled = loss_fn.differentiable_loss(ScaleDataPlate(50)(model), ScaleDataPlate(50)(guide), x)
    assert torch.allclose(scaled, unscaled * 25)


def test_iwae_bound_grows_with_k_and_is_the_elbo_at_k_equal_one():
    x = data()
    pyro.set_rng_seed(2)
    elbo = -make_objective("stl", 4000, max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(2)
    iwae_1 = -make_objective("iwae", 1, max_plate_nesting=1).loss(model, guide, x.repeat(4000, 1))
    iwae_50 = -make_objective("iwae", 50, max_plate_nesting=1).loss(model, guide, x.repeat(80, 1))
    assert abs(iwae_1 / 4000 - elbo / 1) < 0.05 * abs(elbo)
    assert iwae_50 / 80 > elbo + 0.1


@pytest.mark.parametrize("objective", ["stl", "iwae", "dreg"])
def test_fit_trains_with_importance_weighted_objectives(objective):
    x = torch.bernoulli(torch.full((64, 20), 0.3))
    vae = pvae.build_vae(20, z_dim=2, hidden_dims=[8])
    result = pvae.fit(
        vae.model,
        vae.guide,
        x,
        num_epochs=3,
        batch_size=32,
        objective=objective,
        num_particles=5,
        learning_rate=1e-2,
    )
    elbos = [s.train_bound for s in result.history]
    assert all(math.isfinite(v) for v in elbos) and elbos[-1] > elbos[0]


def test_importance_weighted_objectives_refuse_global_latents():
    def global_model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale), obs=x[:, 0])

    def global_guide(x):
        pyro.sample("scale", dist.LogNormal(pyro.param("loc", torch.tensor(0.0)), 0.1))

    with pytest.raises(ValueError, match="global latent 'scale'"):
        pvae.fit(global_model, global_guide, torch.randn(8, 1), objective="iwae", num_particles=3)
