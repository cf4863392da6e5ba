"""The ELBO of enumerating models equals Pyro's TraceEnum_ELBO, loss and gradients, on the
same draws; and no objective records a Pyro trace per training step where it need not."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.trace_messenger import TraceMessenger
from test_fast_elbo import gradients

import pvae
from pvae.infer.objectives import EnumeratedELBO, choose_objective
from pvae.infer.plates import trace_pair


def _mixture_parameters(components, z_dim):
    logits = pyro.param("logits", torch.linspace(-0.5, 0.5, components))
    locs = pyro.param("locs", torch.linspace(-1.0, 1.0, components * z_dim).reshape(components, -1))
    return logits, locs


def _guide(z_dim):
    def guide(x):
        weight = pyro.param("guide_weight", 0.1 * torch.ones(z_dim, x.shape[-1]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ weight.T, 0.7).to_event(1))

    return guide


def gmvae(components=3, z_dim=2):
    """c ~ Categorical, z | c ~ N(μ_c, 1), x | z ~ N(Wz, 1), c summed out per datapoint."""

    def model(x):
        logits, locs = _mixture_parameters(components, z_dim)
        weight = pyro.param("weight", torch.ones(x.shape[-1], z_dim))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(locs[c], 1.0).to_event(1))
            with poutine.mask(mask=x[:, 0] > -2.0):
                pyro.sample("x", dist.Normal(z @ weight.T, 1.0).to_event(1), obs=x)

    return model, _guide(z_dim), torch.randn(6, 4)


def chained(components=3, z_dim=2):
    """Two enumerated latents, c2 depending on c1, both per datapoint."""

    def model(x):
        logits, locs = _mixture_parameters(components, z_dim)
        transition = pyro.param("transition", torch.eye(components) + 0.1)
        with pyro.plate("data", x.shape[0]):
            c1 = pyro.sample("c1", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            c2 = pyro.sample(
                "c2", dist.Categorical(probs=transition[c1]), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(locs[c2], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    return model, _guide(z_dim), torch.randn(5, 3)


def per_pixel(components=2, z_dim=2):
    """An enumerated latent per pixel, in a plate inside the data plate: the general
    contraction (a product over pixels of sums over each pixel's component)."""

    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        weight = pyro.param("weight", torch.ones(x.shape[-1], z_dim))
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(z_dim), 1.0).to_event(1))
            with pyro.plate("pixels", x.shape[-1], dim=-1):
                c = pyro.sample(
                    "c", dist.Categorical(logits=torch.zeros(components)),
                    infer={"enumerate": "parallel"},
                )  # fmt: skip
                mean = (z @ weight.T).squeeze(-2) + locs[c]
                pyro.sample("x", dist.Normal(mean, 1.0), obs=x)

    def guide(x):
        weight = pyro.param("guide_weight", 0.1 * torch.ones(z_dim, x.shape[-1]))
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal((x @ weight.T).unsqueeze(-2), 0.7).to_event(1))

    return model, guide, torch.randn(4, 3)


@pytest.mark.parametrize("make_pair", [gmvae, chained, per_pixel])
@pytest.mark.parametrize("num_particles", [1, 4])
def test_loss_and_gradients_equal_trace_enum_elbo_on_the_same_draws(
    make_pair, num_particles, float64
):
    pyro.clear_param_store()
    model, guide, x = make_pair()
    nesting = 2 if make_pair is per_pixel else 1
    chosen = choose_objective("elbo", num_particles, nesting, trace_pair(model, guide, x))
    assert isinstance(chosen, EnumeratedELBO)
    reference = pyro.infer.TraceEnum_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=nesting,
    )
    for seed in (0, 1):  # the second call runs without the first step's enumeration check
        loss, grads = gradients(chosen, model, guide, x, num_data=30, seed=seed)
        expected, expected_grads = gradients(reference, model, guide, x, 30, seed)
        assert torch.allclose(loss, expected, rtol=1e-12)
        for name, grad in expected_grads.items():
            assert torch.allclose(grads[name], grad, rtol=1e-10, atol=1e-12), name


def subsampled_gmvae(components=3, z_dim=2):
    """The GMVAE with a data plate that subsamples 3 of the rows it is given itself."""

    def model(x):
        logits, locs = _mixture_parameters(components, z_dim)
        with pyro.plate("data", x.shape[0], subsample_size=3) as rows:
            c = pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(locs[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x[rows])

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=3) as rows:
            loc = pyro.param("guide_loc", torch.zeros(z_dim)) + x[rows]
            pyro.sample("z", dist.Normal(loc, 0.7).to_event(1))

    return model, guide, torch.randn(6, 1)


def test_a_plate_that_subsamples_keeps_trace_enum_elbo():
    pyro.clear_param_store()
    model, guide, x = subsampled_gmvae()
    chosen = choose_objective("elbo", 1, 1, trace_pair(model, guide, x))
    assert isinstance(chosen, pyro.infer.TraceEnum_ELBO)
    result = pvae.fit(model, guide, x, num_epochs=2, batch_size=6, progress=False, seed=0)
    assert all(torch.isfinite(torch.tensor(s.train_bound)) for s in result.history)


def test_a_global_latent_or_a_scaled_site_keeps_trace_enum_elbo():
    pyro.clear_param_store()
    model, guide, x = gmvae()

    def with_global(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))
        model(x)

    def guide_with_global(x):
        pyro.sample("shift", dist.Normal(pyro.param("shift_loc", torch.tensor(0.0)), 1.0))
        guide(x)

    for pair in [(with_global, guide_with_global), (poutine.scale(model, scale=0.5), guide)]:
        chosen = choose_objective("elbo", 1, 1, trace_pair(*pair, x))
        assert isinstance(chosen, pyro.infer.TraceEnum_ELBO)


def _traces_recorded_by_fit(model, guide, x, objective, num_epochs):
    entered = []
    original = TraceMessenger.__enter__

    def counting(self):
        entered.append(1)
        return original(self)

    pyro.clear_param_store()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TraceMessenger, "__enter__", counting)
        pvae.fit(
            model, guide, x, num_epochs=num_epochs, batch_size=2, objective=objective,
            num_particles=2, progress=False, seed=0,
        )  # fmt: skip
    return len(entered)


@pytest.mark.parametrize("objective", ["elbo", "iwae", "dreg", "stl"])
@pytest.mark.parametrize("make_pair", [gmvae, "vae", "hierarchical"])
def test_training_steps_record_no_pyro_trace(objective, make_pair):
    """fit traces model and guide to check them before training; a step adds none."""
    if make_pair == "vae":
        vae = pvae.build_vae(4, z_dim=2, hidden_dims=[3], likelihood="normal")
        model, guide, x = vae.model, vae.guide, torch.randn(8, 4)
    elif make_pair == "hierarchical":
        vae = pvae.build_vae(4, z_dim=2, hierarchy=[3, 2], likelihood="normal")
        model, guide, x = vae.model, vae.guide, torch.randn(8, 4)
    else:
        model, guide, x = make_pair()
        x = torch.cat([x, x])
    if make_pair is gmvae and objective == "stl":
        pytest.skip("STL is not offered for enumerating models")
    one = _traces_recorded_by_fit(model, guide, x, objective, num_epochs=1)
    three = _traces_recorded_by_fit(model, guide, x, objective, num_epochs=3)
    assert three == one
