"""Priors: each trains and evaluates; mixtures and flows have the densities they claim."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn import functional

import pvae
from pvae.models.nets import GaussianEncoder
from pvae.models.priors import (
    PRIORS,
    DiagonalGaussianMixture,
    FlowPrior,
    LearnedGaussianPrior,
    MixtureOfGaussiansPrior,
    VampPrior,
    make_prior,
)

X_DIM, Z_DIM = 12, 2


# Tiny networks: one thread is faster, and immune to other processes on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def binary_data(n=64, seed=0):
    """Four binary prototypes with 10% flipped pixels: structure a VAE learns in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.bernoulli(torch.full((4, X_DIM), 0.5), generator=generator)
    probs = 0.1 + 0.8 * prototypes[torch.arange(n) % 4]
    return torch.bernoulli(probs, generator=generator)


def train_and_evaluate(vae, data, num_epochs=8, **kwargs):
    """A few epochs: finite bounds that improve, and a finite held-out IWAE bound."""
    result = pvae.fit(
        vae.model,
        vae.guide,
        data,
        num_epochs=num_epochs,
        batch_size=32,
        learning_rate=1e-2,
        seed=0,
        **kwargs,
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds), bounds
    assert bounds[-1] > bounds[0], bounds
    bound = pvae.log_likelihood(vae.model, vae.guide, data, 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
    # IWAE_K >= ELBO on average, by Jensen, for the same draws.
    assert bound.mean >= bound.elbo - 1e-6
    return bounds, bound


@pytest.mark.parametrize("name", list(PRIORS))
def test_every_prior_trains_and_gives_a_finite_iwae_bound(name):
    options = {"num_components": 8} if name == "vamp" else {}
    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[16], prior=name, prior_options=options)
    prior = vae.prior()
    assert prior.event_shape == (Z_DIM,) and prior.batch_shape == ()
    before = {n: p.detach().clone() for n, p in vae.prior.named_parameters()}
    train_and_evaluate(vae, binary_data())
    # Learnable priors learn: their parameters were registered with Pyro and moved.
    for n, p in vae.prior.named_parameters():
        assert not torch.equal(before[n], p.detach()), n


def direct_mixture_log_prob(z, logits, loc, scale):
    """log sum_k pi_k prod_d N(z_d; loc_kd, scale_kd), term by term in float64."""
    log_pi = torch.log_softmax(logits.double(), 0).tolist()
    total = 0.0
    for k in range(loc.shape[0]):
        log_component = 0.0
        for d in range(loc.shape[1]):
            m, s, v = loc[k, d].item(), scale[k, d].item(), z[d].item()
            log_component += -0.5 * ((v - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        total += math.exp(log_pi[k] + log_component)
    return math.log(total)


def test_mixture_of_gaussians_log_prob_matches_a_direct_computation():
    prior = MixtureOfGaussiansPrior(3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        prior.raw_scale.add_(torch.linspace(-1.0, 1.0, 12).reshape(4, 3))
    z = torch.tensor([[0.3, -1.2, 2.0], [-3.0, 0.0, 0.5]])
    got = prior().log_prob(z)
    scale = functional.softplus(prior.raw_scale)
    expected = [direct_mixture_log_prob(row, prior.logits, prior.loc, scale) for row in z]
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    # ... and the mixture Pyro would build, MixtureSameFamily.
    reference = dist.MixtureSameFamily(
        dist.Categorical(logits=prior.logits), dist.Normal(prior.loc, scale).to_event(1)
    )
    assert torch.allclose(got, reference.log_prob(z), atol=1e-5)


def test_mixture_log_prob_is_the_same_in_chunks_and_under_plates(monkeypatch):
    mixture = DiagonalGaussianMixture(torch.randn(5), torch.randn(5, 3), torch.rand(5, 3) + 0.1)
    z = torch.randn(4, 7, 3)  # [particles, datapoints, z_dim]
    whole = mixture.expand([7]).log_prob(z)
    monkeypatch.setattr("pvae.models.priors._MIXTURE_CHUNK", 20)  # 1 point per chunk
    assert torch.allclose(mixture.expand([7]).log_prob(z), whole)
    assert whole.shape == (4, 7)
    assert mixture.expand([7]).sample((4,)).shape == (4, 7, 3)


def test_mixture_log_prob_keeps_its_precision_near_a_narrow_component():
    # log_prob expands (z - mu)^2 / s^2 into terms of ~1e7 here that cancel: one component,
    # so the exact answer is the Gaussian's own log-density.
    loc, scale = torch.full((1, 50), 3.0), torch.full((1, 50), 1e-3)
    z = loc + 1e-3 * torch.linspace(-2.0, 2.0, 50)
    mixture = DiagonalGaussianMixture(torch.zeros(1), loc, scale)
    exact = dist.Normal(loc.double(), scale.double()).log_prob(z.double()).sum()
    assert torch.allclose(mixture.log_prob(z).double(), exact, rtol=1e-6)
    # Gradients reach the locations and scales as they do through the Gaussian's density.
    loc.requires_grad_(True)
    DiagonalGaussianMixture(torch.zeros(1), loc, scale).log_prob(z).backward()
    expected = (z - loc.detach()) / scale**2
    assert torch.allclose(loc.grad, expected, rtol=1e-4)


def test_vamp_prior_log_prob_matches_a_direct_computation():
    encoder = GaussianEncoder(X_DIM, Z_DIM, hidden_dims=[8])
    prior = VampPrior(Z_DIM, encoder, X_DIM, num_components=6)
    z = torch.tensor([[0.1, -0.4], [1.5, 2.0]])
    loc, scale = encoder(prior.pseudo_inputs.clamp(0, 1))
    expected = [
        direct_mixture_log_prob(row, torch.zeros(6), loc.detach(), scale.detach()) for row in z
    ]
    got = prior().log_prob(z)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_vamp_prior_registers_the_encoder_once_and_trains_its_pseudo_inputs():
    vae = pvae.build_vae(
        X_DIM, z_dim=Z_DIM, hidden_dims=[16], prior="vamp", prior_options={"num_components": 4}
    )
    # The encoder is no submodule of the prior: its weights appear once in the VAE's state.
    prior_keys = {k for k in vae.state_dict() if k.startswith("prior.")}
    assert prior_keys == {"prior.pseudo_inputs", "prior.logits"}  # logits: a fixed buffer
    vae.prior.initialize(binary_data())
    x = binary_data()
    pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=32)
    store = pyro.get_param_store()
    names = list(store.keys())
    assert "prior$$$pseudo_inputs" in names
    assert not any(n.startswith("prior$$$encoder") for n in names)
    # One tensor per name: the optimizer never sees a parameter twice.
    tensors = [store.get_param(n).unconstrained() for n in names]
    assert len({id(t) for t in tensors}) == len(tensors)


def test_vamp_initialize_uses_datapoints_and_checks_shapes():
    prior = VampPrior(Z_DIM, GaussianEncoder(X_DIM, Z_DIM), X_DIM, num_components=3)
    x = binary_data(10)
    prior.initialize(x)
    assert all(any(torch.equal(u, row) for row in x) for u in prior.pseudo_inputs)
    with pytest.raises(ValueError, match="at least 3 datapoints of 12 values"):
        prior.initialize(x[:2])


def test_flow_prior_is_a_normalized_density():
    torch.manual_seed(1)
    prior = FlowPrior(2, num_flows=2, hidden_dims=[8])
    with torch.no_grad():  # away from the identity it starts near
        for p in prior.parameters():
            p.add_(0.5 * torch.randn_like(p))
    grid = torch.linspace(-30, 30, 1501)  # it has heavy tails
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    step = (grid[1] - grid[0]).item()
    with torch.no_grad():
        mass = prior().log_prob(z).exp().sum().item() * step**2
    assert mass == pytest.approx(1.0, abs=2e-3)
    # Samples go through the inverse flow; scoring them inverts that again.
    samples = prior().sample((5,))
    assert samples.shape == (5, 2) and torch.isfinite(prior().log_prob(samples)).all()


def test_learned_gaussian_prior_is_the_gaussian_of_its_parameters():
    prior = LearnedGaussianPrior(2)
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([1.0, -2.0]))
        prior.raw_scale.copy_(torch.tensor([0.0, 1.0]))
    z = torch.tensor([0.5, 0.5])
    expected = dist.Normal(prior.loc, functional.softplus(prior.raw_scale)).log_prob(z).sum()
    assert torch.allclose(prior().log_prob(z), expected)
    assert prior().log_prob(torch.zeros(2)).item() == pytest.approx(
        -0.5 * (1 / math.log(2) ** 2 + 4 / math.log1p(math.e) ** 2)
        - math.log(math.log(2) * math.log1p(math.e))
        - math.log(2 * math.pi),
        abs=1e-5,
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_prior("laplace", 2), "unknown prior 'laplace': choose one of standard_"),
        (lambda: make_prior("mog", 2, components=3), "no option 'components'.*num_components"),
        (lambda: make_prior("vamp", 2), "needs the encoder"),
        (lambda: make_prior("mog", 2, num_components=0), "num_components must be ≥ 1"),
    ],
)
def test_bad_prior_choices_get_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_run_starts_pseudo_inputs_at_rows_scaled_to_the_unit_interval():
    from pvae.runs import _start_pseudo_inputs

    prior = VampPrior(Z_DIM, GaussianEncoder(X_DIM, Z_DIM, hidden_dims=[8]), X_DIM, 3)
    said = []
    _start_pseudo_inputs(prior, torch.full((3, X_DIM), 255, dtype=torch.uint8), said.append)
    assert torch.equal(prior.pseudo_inputs, torch.ones(3, X_DIM)) and not said  # 8-bit rows
    start = prior.pseudo_inputs.clone()
    _start_pseudo_inputs(prior, torch.zeros(2, X_DIM), said.append)  # fewer rows than 3
    assert torch.equal(prior.pseudo_inputs, start)
    assert said == [
        "2 training rows for 3 pseudo-inputs: they start at random (set prior_options "
        "num_components to at most the rows)"
    ]
