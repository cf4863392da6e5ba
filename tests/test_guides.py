"""Guide families: the Gaussian and the IAF train under every objective; the IAF density is
normalized and scores its own samples the same way with and without its cache."""

import copy
import math

import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.models.guides import GUIDES, GaussianGuide, IAFGuide, make_guide
from pvae.models.nets import GaussianEncoder, MLPDecoder

X_DIM = 12


# Tiny networks: one thread is faster, and immune to other processes on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def binary_data(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.bernoulli(torch.full((4, X_DIM), 0.5), generator=generator)
    return torch.bernoulli(0.1 + 0.8 * prototypes[torch.arange(n) % 4], generator=generator)


@pytest.mark.parametrize("name", list(GUIDES))
def test_every_guide_trains_and_gives_a_finite_iwae_bound(name):
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[16], guide=name)
    x = binary_data()
    result = pvae.fit(
        vae.model, vae.guide, x, num_epochs=8, batch_size=32, learning_rate=1e-2, seed=0
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds) and bounds[-1] > bounds[0], bounds
    bound = pvae.log_likelihood(vae.model, vae.guide, x, 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all() and bound.mean >= bound.elbo - 1e-6
    assert vae.reconstruct(x[:3]).shape == (3, X_DIM)


@pytest.mark.parametrize("objective", ["meanfield", "stl", "iwae", "dreg"])
def test_the_iaf_guide_works_with_every_objective(objective):
    vae = pvae.build_vae(X_DIM, z_dim=3, hidden_dims=[16], guide="iaf")
    particles = 1 if objective in ("meanfield", "stl") else 4
    result = pvae.fit(
        vae.model,
        vae.guide,
        binary_data(32),
        num_epochs=1,
        batch_size=16,
        objective=objective,
        num_particles=particles,
    )
    assert math.isfinite(result.history[0].train_bound)


def perturbed_iaf(z_dim=2, context_dim=3):
    torch.manual_seed(3)
    guide = IAFGuide(z_dim, num_flows=2, hidden_dims=[8], context_dim=context_dim)
    with torch.no_grad():  # away from the identity it starts near
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return guide


def test_iaf_density_is_normalized():
    guide = perturbed_iaf()
    q = guide(torch.tensor([0.5, -0.3]), torch.tensor([0.7, 1.2]), torch.tensor([1.0, -1.0, 0.5]))
    grid = torch.linspace(-12, 12, 1201)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():  # arbitrary points: the flow is inverted, z_dim passes per layer
        mass = q.log_prob(z).exp().sum().item() * (grid[1] - grid[0]).item() ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_iaf_scores_its_samples_alike_from_the_cache_and_by_inversion():
    guide = perturbed_iaf()
    loc, scale, context = torch.randn(6, 2), torch.rand(6, 2) + 0.5, torch.randn(6, 3)
    q = guide(loc, scale, context)
    z = q.rsample()
    cached = q.log_prob(z)  # one pass per layer, through the values cached while sampling
    inverted = q.log_prob(z.clone())  # a new tensor: no cache hit, the flow is inverted
    assert torch.allclose(cached, inverted, atol=1e-5)
    # Change of variables by hand: the base density minus the log-determinants.
    detached = copy.deepcopy(guide)
    base = dist.Normal(loc, scale).to_event(1)
    eps = base.sample()
    transforms = detached._transforms(context)
    value, log_det = eps, 0.0
    for transform in transforms:
        new = transform(value)
        log_det = log_det + transform.log_abs_det_jacobian(value, new)
        value = new
    expected = base.log_prob(eps) - log_det
    q = detached(loc, scale, context)
    assert torch.allclose(q.log_prob(value.clone()), expected, atol=1e-5)


def test_gaussian_guide_is_the_encoders_normal():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    q = GaussianGuide(3)(loc, scale)
    z = torch.randn(4, 3)
    assert torch.allclose(q.log_prob(z), dist.Normal(loc, scale).log_prob(z).sum(-1))
    assert torch.equal(GaussianGuide(3).point(loc, scale), loc)


def test_an_iaf_without_context_is_one_flow_for_all_datapoints():
    vae = pvae.build_vae(X_DIM, 2, [8], guide="iaf", guide_options={"context_dim": 0})
    assert vae.encoder.context_dim == 0 and len(vae.encoder(binary_data(3))) == 2
    pvae.fit(vae.model, vae.guide, binary_data(32), num_epochs=1, batch_size=16)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_guide("maf", 2), "unknown guide 'maf': choose one of gaussian, iaf"),
        (lambda: make_guide("iaf", 2, flows=3), "no option 'flows' .its options: num_flows"),
        (lambda: make_guide("iaf", 2, num_flows=0), "num_flows must be ≥ 1"),
        (
            lambda: pvae.VAE(GaussianEncoder(4, 2), MLPDecoder(2, 4), guide_family=IAFGuide(2)),
            "needs a context of 2 values but the encoder gives 0: build the encoder with "
            "context_dim=2",
        ),
        (lambda: pvae.build_vae(4, 2, guide="iaf", guide_options={"hidden_dims": [1]}), "Hidden"),
    ],
)
def test_bad_guide_choices_get_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
