"""The two-stochastic-layer VAE of Burda et al. (2016): built by name, trained by every
objective, its objectives equal to the references on shared draws, its log-likelihood equal
to quadrature, and round-tripped through checkpoints."""

import math

import pyro
import pytest
import torch
from test_conformance import gradients, nesting_of, parameters, particle_reference
from torch import nn

import pvae
from pvae.infer.objectives import ScaleDataPlate, choose_objective
from pvae.infer.plates import trace_pair
from pvae.models.hierarchical import HierarchicalVAE
from pvae.models.nets import ACTIVATIONS

TRAINING_OBJECTIVES = ["elbo", "iwae", "dreg", "stl"]


def widths(net: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in net.modules() if
            isinstance(layer, nn.Linear)]  # fmt: skip


def tiny_data(n=16, x_dim=12, seed=0) -> torch.Tensor:
    """Two binary prototypes with 10% of their pixels flipped: something to learn."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.tensor([[1.0, 0.0] * (x_dim // 2), [0.0, 1.0] * (x_dim // 2)])
    x = prototypes[torch.arange(n) % 2]
    flips = torch.rand(x.shape, generator=generator) < 0.1
    return torch.where(flips, 1 - x, x)


def tiny_vae(x_dim=12, z_dims=(3, 2)) -> HierarchicalVAE:
    return pvae.build_vae(x_dim, z_dims[-1], [16], "tanh", hierarchy=list(z_dims))


def test_build_vae_hierarchy_is_burda_et_al_s_two_layer_architecture():
    vae = pvae.build_vae(784, 50, [200, 200], "tanh", hierarchy=[100, 50])
    assert isinstance(vae, HierarchicalVAE) and vae.z_dims == (100, 50) and vae.z_dim == 50
    assert widths(vae.encoder) == [(784, 200), (200, 200), (200, 2 * 100)]  # q(z1|x)
    assert widths(vae.guide_nets) == [(100, 100), (100, 100), (100, 2 * 50)]  # q(z2|z1)
    assert widths(vae.prior_nets) == [(50, 100), (100, 100), (100, 2 * 100)]  # p(z1|z2)
    assert widths(vae.decoder) == [(100, 200), (200, 200), (200, 784)]  # p(x|z1)
    activations = {type(m) for m in vae.modules() if isinstance(m, tuple(ACTIVATIONS.values()))}
    assert activations == {nn.Tanh}
    guide_trace, model_trace = trace_pair(vae.model, vae.guide, torch.zeros(3, 784))
    sites = [name for name, site in model_trace.nodes.items() if site["type"] == "sample"]
    assert sites == ["data", "z2", "z1", "obs"]
    assert guide_trace.nodes["z2"]["fn"].base_dist.loc.shape == (3, 50)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"hierarchy": [100]}, "two or more positive latent sizes"),
        ({"hierarchy": [100, 0]}, "two or more positive latent sizes"),
        ({"hierarchy": [100, 50], "z_dim": 20}, "set z_dim to 50"),
        ({"hierarchy": [8, 4], "z_dim": 4, "prior": "mog"}, "takes no prior"),
        ({"hierarchy": [8, 4], "z_dim": 4, "num_classes": 10}, "takes no num_classes"),
        ({"hierarchy": [8, 4], "z_dim": 4, "beta": 2.0}, "takes no beta"),
    ],
)
def test_contradictory_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        pvae.build_vae(784, **settings)
    config = {"conditional": True} if "num_classes" in settings else {}
    config.update({k: v for k, v in settings.items() if k != "num_classes"})
    with pytest.raises(ValueError, match=message):
        pvae.Config.from_dict(config)


def test_a_config_refuses_the_mean_field_elbo_which_is_not_this_guide_s():
    with pytest.raises(ValueError, match="'meanfield' is not the ELBO of a hierarchical VAE"):
        pvae.Config.from_dict({"hierarchy": [8, 4], "z_dim": 4, "objective": "meanfield"})


@pytest.mark.parametrize("objective", TRAINING_OBJECTIVES)
def test_trains_with_every_objective_and_the_bound_rises(objective, one_thread):
    x = tiny_data()
    vae = tiny_vae()
    result = pvae.fit(
        vae.model,
        vae.guide,
        x,
        num_epochs=40,
        batch_size=16,
        learning_rate=1e-2,
        objective=objective,
        num_particles=1 if objective == "elbo" else 4,
        seed=0,
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds)
    first, last = sum(bounds[:5]) / 5, sum(bounds[-5:]) / 5
    # 12 pixels at probability 1/2 each are -8.3 nats; the prototypes cost far less.
    assert last > first + 1.0, bounds


@pytest.mark.parametrize("objective", TRAINING_OBJECTIVES)
def test_objectives_and_gradients_equal_the_references_on_shared_draws(objective, float64):
    # The references of tests/test_conformance.py: Pyro's Trace_ELBO for elbo, the IWAE, STL
    # and DReG formulas written out for the others. For DReG, z2's guide depends on z1: the
    # partial derivative in z keeps q(z2|z1)'s dependence on z1 (Tucker et al., 2019).
    torch.manual_seed(1)
    vae = tiny_vae(x_dim=5, z_dims=(3, 2))
    x = tiny_data(n=3, x_dim=6)[:, :5].double()
    nesting = nesting_of(vae, x)
    scale = ScaleDataPlate(10 * x.shape[0])  # test_conformance's MINIBATCH of 10
    model, guide = scale(vae.model), scale(vae.guide)
    num_particles = 1 if objective == "elbo" else 4  # test_conformance's K
    with pyro.validation_enabled(True):
        ours = choose_objective(objective, num_particles, nesting, trace_pair(model, guide, x))
    ours.differentiable_loss(model, guide, x)  # registers the networks' parameters
    params = parameters()
    pyro.set_rng_seed(7)
    loss = ours.differentiable_loss(model, guide, x)
    grads = gradients(loss, params)
    if objective == "elbo":
        pyro.set_rng_seed(7)
        expected_loss = pyro.infer.Trace_ELBO(max_plate_nesting=nesting).differentiable_loss(
            model, guide, x
        )
        expected_grads = gradients(expected_loss, params)
    else:
        expected_loss, expected_grads = particle_reference(
            objective, vae, x, params, nesting, seed=7
        )
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-10)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-8, atol=1e-10, msg=name)
    guide_grads = [g for n, g in grads.items() if n.startswith("guide_nets")]
    assert guide_grads and all(bool(g.abs().sum() > 0) for g in guide_grads)


def exact_log_likelihood(vae: HierarchicalVAE, x: torch.Tensor, points: int = 1601):
    """log p(x) = log ∫∫ N(z2; 0, 1) N(z1; m(z2), s(z2)²) p(x | z1) dz1 dz2 for 1-d latents,
    by the trapezoidal rule on [-10, 10]² (the integrand is smooth and negligible outside)."""
    grid = torch.linspace(-10, 10, points, dtype=torch.float64)
    weights = torch.full_like(grid, float(grid[1] - grid[0]))
    weights[[0, -1]] /= 2
    log_w = weights.log()
    with torch.no_grad():
        loc, scale = vae.prior_nets[0](grid[:, None])  # p(z1 | z2) for z2 on the grid
        log_p_z2 = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
        log_p_z1 = torch.distributions.Normal(loc, scale).log_prob(grid[None, :])  # [z2, z1]
        logits = vae.decoder(grid[:, None])  # p(x | z1) for z1 on the grid: [z1, D]
        log_p_x = -nn.functional.binary_cross_entropy_with_logits(
            logits[:, None, :].expand(-1, x.shape[0], -1),
            x[None].expand(points, -1, -1),
            reduction="none",
        ).sum(-1)  # [z1, N]
    inner = torch.logsumexp((log_w + log_p_z1)[:, :, None] + log_p_x[None], dim=1)  # [z2, N]
    return torch.logsumexp((log_w + log_p_z2)[:, None] + inner, dim=0)


def test_log_likelihood_converges_to_the_quadrature_of_log_p_x(float64):
    torch.manual_seed(0)
    vae = tiny_vae(x_dim=4, z_dims=(1, 1))
    every_x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 4)
    exact = exact_log_likelihood(vae, every_x)
    # The quadrature is right: p sums to 1 over the 16 binary images.
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    x, copies = every_x[[0, 5, 15]], 100
    ours = pvae.log_likelihood(vae.model, vae.guide, x.repeat(copies, 1), 200, seed=0)
    estimates = ours.per_datapoint.reshape(copies, 3)
    standard_error = estimates.std(0) / math.sqrt(copies)
    assert bool((standard_error > 0).all())
    # IWAE_200 is below log p(x) in expectation, by far less than its spread here.
    assert bool(((estimates.mean(0) - exact[[0, 5, 15]]).abs() < 5 * standard_error).all())


def assert_same_weights(first: nn.Module, second: nn.Module) -> None:
    pairs = zip(first.state_dict().items(), second.state_dict().items(), strict=True)
    for (name, a), (other, b) in pairs:
        assert name == other and torch.equal(a, b), name


def test_checkpoints_round_trip_and_training_resumes_bit_exact(tmp_path, one_thread):
    x = tiny_data()
    vae = tiny_vae()
    settings = dict(batch_size=8, objective="dreg", num_particles=3, seed=0)
    path = tmp_path / "checkpoint.pt"
    pvae.fit(
        vae.model,
        vae.guide,
        x,
        num_epochs=2,
        checkpoint_path=path,
        checkpoint_extra=lambda: pvae.vae_state(vae),
        **settings,
    )
    loaded, state = pvae.load_vae(path)
    assert isinstance(loaded, HierarchicalVAE) and loaded.model_args == vae.model_args
    assert_same_weights(vae, loaded)
    ours = pvae.log_likelihood(vae.model, vae.guide, x, 50, seed=3).per_datapoint
    theirs = pvae.log_likelihood(loaded.model, loaded.guide, x, 50, seed=3).per_datapoint
    assert torch.equal(ours, theirs)

    pyro.clear_param_store()
    torch.manual_seed(0)  # the first model's start
    uninterrupted = tiny_vae()
    pvae.fit(uninterrupted.model, uninterrupted.guide, x, num_epochs=4, **settings)
    pyro.clear_param_store()
    resumed, _ = pvae.load_vae(path)
    pvae.fit(resumed.model, resumed.guide, x, num_epochs=4, resume=path, **settings)
    assert_same_weights(uninterrupted, resumed)


def test_generation_and_reconstruction(one_thread):
    x = tiny_data(n=32)
    vae = tiny_vae()
    pvae.fit(vae.model, vae.guide, x, num_epochs=60, batch_size=32, learning_rate=2e-2, seed=0)
    reconstructions = vae.reconstruct(x)
    assert reconstructions.shape == x.shape
    assert bool(((reconstructions > 0) & (reconstructions < 1)).all())
    # The reconstruction is p(x|z1)'s mean at q(z1|x)'s: closer to each image than to its
    # opposite prototype.
    error = (reconstructions - x).abs().mean()
    assert error < (reconstructions - (1 - x)).abs().mean() / 2
    torch.manual_seed(5)
    samples = vae.sample(200)
    torch.manual_seed(5)
    assert torch.equal(samples, vae.sample(200)) and samples.shape == (200, 12)
    # Ancestral draws look like the two prototypes: the even pixels agree or disagree together.
    even, odd = samples[:, 0::2].mean(1), samples[:, 1::2].mean(1)
    assert (even - odd).abs().mean() > 0.5
    codes = torch.zeros(4, vae.z_dim)
    assert vae.decode(codes).shape == (4, 12)
    loc, scale = vae.encode(x)
    assert loc.shape == (32, 2) and bool((scale > 0).all())


def test_labels_are_refused_with_a_clear_message():
    vae = tiny_vae()
    with pytest.raises(pvae.ModelError, match="not conditional"):
        vae.model(tiny_data(), torch.zeros(16, dtype=torch.long))
