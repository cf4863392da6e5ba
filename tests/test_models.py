import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pvae
from pvae.models.nets import MLP, GaussianEncoder, MLPDecoder


def traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return guide_trace, model_trace


def test_model_and_guide_sites_have_the_documented_shapes():
    vae = pvae.build_vae(12, z_dim=3, hidden_dims=[8, 8])
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    guide_trace, model_trace = traces(vae, x)
    latent = guide_trace.nodes["latent"]
    assert latent["value"].shape == (5, 3)
    assert latent["fn"].event_shape == (3,) and latent["fn"].batch_shape == (5,)
    assert latent["fn"].has_rsample
    obs = model_trace.nodes["obs"]
    assert obs["is_observed"] and torch.equal(obs["value"], x)
    assert obs["fn"].event_shape == (12,) and obs["fn"].batch_shape == (5,)
    for site in ("latent", "obs"):
        frames = model_trace.nodes[site]["cond_indep_stack"]
        assert [frame.name for frame in frames] == ["data"]
    # Networks are registered with Pyro under the documented names.
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("encoder$$$") for n in names)
    assert any(n.startswith("decoder$$$") for n in names)


def test_guide_scale_stays_positive_for_extreme_inputs():
    encoder = GaussianEncoder(4, 2, hidden_dims=[])
    with torch.no_grad():
        encoder.net[-1].bias.fill_(-1e4)  # softplus underflows to 0 here
    _, scale = encoder(torch.zeros(3, 4))
    assert (scale >= encoder.min_scale).all()


def test_prior_and_likelihood_are_the_documented_defaults():
    vae = pvae.build_vae(6, z_dim=2)
    prior = vae.prior()
    z = torch.tensor([0.3, -1.2])
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum()
    assert torch.allclose(prior.log_prob(z), expected)
    logits = torch.tensor([[0.5, -2.0, 3.0, 0.0, 1.0, -1.0]])
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    expected = (x * torch.sigmoid(logits).log() + (1 - x) * torch.sigmoid(-logits).log()).sum()
    assert torch.allclose(vae.likelihood(logits, event_dim=1).log_prob(x), expected)


def test_vae_accepts_custom_networks_and_objects():
    encoder = GaussianEncoder(10, 4, hidden_dims=[16], activation="tanh")
    decoder = MLPDecoder(4, 10, hidden_dims=[16], activation="tanh")
    vae = pvae.VAE(encoder, decoder)
    assert vae.z_dim == 4
    x = torch.bernoulli(torch.full((3, 10), 0.5))
    assert vae.reconstruct(x).shape == (3, 10)
    samples = vae.sample(7)
    assert samples.shape == (7, 10) and ((samples >= 0) & (samples <= 1)).all()


def test_mlp_depth_and_activation_are_configurable():
    net = MLP(5, [7, 9], 3, activation="tanh")
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(5, 7), (7, 9), (9, 3)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in net) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: pvae.build_vae(4, prior="laplace"), "unknown prior 'laplace': choose one of"),
        (lambda: pvae.build_vae(4, likelihood="poisson"), "unknown likelihood 'poisson'"),
        (lambda: pvae.build_vae(4, activation="swish"), "unknown activation 'swish'"),
    ],
)
def test_unknown_names_list_the_valid_ones(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "options",
    [
        {"prior": "learned_gaussian"},
        {"prior": "mog"},
        {"prior": "vamp", "prior_options": {"num_components": 3}},
        {"prior": "flow"},
        {"likelihood": "continuous_bernoulli"},
        {"likelihood": "gaussian"},
        {"likelihood": "laplace", "likelihood_options": {"scale": 0.1}},
        {"likelihood": "discretized_logistic"},
        {"guide": "iaf"},
        {"network": "conv", "image_shape": [1, 4, 4], "channels": [2]},
        {"beta": 2.0, "warmup_epochs": 2},
        {"num_classes": 3},
        # Not the adversarial autoencoder: pyro.factor's Unit distribution calls
        # torch.as_tensor on its log-factor, which the 'meta' default device moves to meta.
    ],
    ids=lambda options: "-".join(str(v) for v in options.values())[:40],
)
def test_every_part_creates_its_tensors_on_the_data_device(options):
    """As in test_fit: with the default device 'meta', a tensor made without device= cannot
    mix with the CPU data, so training and evaluation prove each part's device discipline."""
    vae = pvae.build_vae(16, z_dim=2, hidden_dims=[8], **options)
    x = torch.randint(0, 256, (8, 16)) / 255
    if vae.model_args["likelihood"] == "bernoulli":
        x = torch.bernoulli(x)
    data = (x, torch.arange(8) % 3) if options.get("num_classes") else x
    with torch.device("meta"):
        schedules = [vae.kl_warmup]
        pvae.fit(
            vae.model, vae.guide, data, num_epochs=1, batch_size=4, held_out=data,
            epoch_schedules=schedules,
        )  # fmt: skip
        bound = pvae.log_likelihood(vae.model, vae.guide, data, 3, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
