"""Variants of the VAE: the beta-VAE (KL weight with warm-up) and the conditional VAE."""

import math

import pyro
import pytest
import torch
from pyro import poutine

import pvae

X_DIM = 8


# Tiny networks: one thread is faster, and immune to other processes on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def labelled_data(n=64, seed=0):
    """Two classes, each a binary prototype with 5% flipped pixels."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0], [0.0, 1, 0, 1, 0, 1, 0, 1]])
    y = torch.arange(n) % 2
    x = torch.bernoulli(0.05 + 0.9 * prototypes[y], generator=generator)
    return x, y


def twins(**kwargs):
    """A beta-VAE and a plain VAE with the same weights."""
    torch.manual_seed(0)
    weighted = pvae.build_vae(X_DIM, 2, [8], **kwargs)
    plain = pvae.build_vae(X_DIM, 2, [8])
    plain.load_state_dict(weighted.state_dict())
    return weighted, plain


def elbo_loss(vae, x, seed=0):
    pyro.set_rng_seed(seed)
    return pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)


def test_beta_weights_the_kl_term_of_the_training_loss_exactly():
    beta_vae, vae = twins(beta=4.0)
    x, _ = labelled_data(16)
    # Same seed, same z: the losses differ by (beta - 1) (log q(z|x) - log p(z)).
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    kl = (
        guide_trace.nodes["latent"]["fn"].log_prob(guide_trace.nodes["latent"]["value"]).sum()
        - model_trace.nodes["latent"]["fn"].log_prob(guide_trace.nodes["latent"]["value"]).sum()
    )
    difference = elbo_loss(beta_vae, x) - elbo_loss(vae, x)
    assert difference.item() == pytest.approx(3.0 * kl.item(), rel=1e-5)
    # The scale sits on the latent site of model and guide, and nowhere else.
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(beta_vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(beta_vae.model, trace=guide_trace)).get_trace(x)
    assert guide_trace.nodes["latent"]["scale"] == 4.0 == model_trace.nodes["latent"]["scale"]
    assert model_trace.nodes["obs"]["scale"] == 1.0


def test_held_out_bounds_of_a_beta_vae_are_those_of_the_model_itself():
    beta_vae, vae = twins(beta=0.25, warmup_epochs=3)
    x, _ = labelled_data(40)
    for evaluate in (
        lambda m: pvae.estimate_elbo(m.model, m.guide, x),
        lambda m: pvae.log_likelihood(m.model, m.guide, x, 30, seed=0).mean,
    ):
        pyro.set_rng_seed(1)
        weighted = evaluate(beta_vae)
        pyro.set_rng_seed(1)
        assert weighted == evaluate(vae)


def test_warm_up_rises_linearly_to_beta_as_fit_reports_epochs():
    vae = pvae.build_vae(X_DIM, 2, [8], beta=2.0, warmup_epochs=4)
    weights = []

    def record(stats):
        weights.append(vae.kl_weight)  # the weight the epoch just trained with

    x, _ = labelled_data(32)
    result = pvae.fit(
        vae.model,
        vae.guide,
        x,
        num_epochs=6,
        batch_size=16,
        on_epoch_end=record,
        epoch_schedules=[vae.kl_warmup],
    )
    assert weights == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert all(math.isfinite(s.train_bound) for s in result.history)
    vae.completed_epochs = 1  # resuming after one epoch
    assert vae.kl_weight == 1.0


def test_a_warm_up_that_nothing_advances_is_refused_and_resuming_restores_it(tmp_path):
    x, _ = labelled_data(32)
    vae = pvae.build_vae(X_DIM, 2, [8], beta=2.0, warmup_epochs=4)
    with pytest.raises(ValueError, match="pass epoch_schedules=.vae.kl_warmup. to pvae.fit"):
        pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=16)
    path = tmp_path / "c.pt"
    train = dict(batch_size=16, checkpoint_path=path, epoch_schedules=[vae.kl_warmup])
    pvae.fit(vae.model, vae.guide, x, num_epochs=2, **train)
    pyro.clear_param_store()
    resumed = pvae.build_vae(X_DIM, 2, [8], beta=2.0, warmup_epochs=4)
    weights = []
    pvae.fit(
        resumed.model,
        resumed.guide,
        x,
        num_epochs=4,
        resume=path,
        on_epoch_end=lambda stats: weights.append(resumed.kl_weight),
        **{**train, "epoch_schedules": [resumed.kl_warmup]},
    )
    assert weights == [1.5, 2.0]  # epochs 3 and 4 of the warm-up, not its start again


def test_beta_with_an_importance_weighted_objective_is_refused():
    vae = pvae.build_vae(X_DIM, 2, [8], beta=4.0)
    x, _ = labelled_data(16)
    with pytest.raises(ValueError, match="only the ELBO objectives honour"):
        pvae.fit(vae.model, vae.guide, x, num_epochs=1, objective="iwae", num_particles=3)
    with pytest.raises(ValueError, match="beta must be a positive number"):
        pvae.build_vae(X_DIM, beta=0.0)


def test_conditional_vae_learns_to_draw_the_class_it_is_given():
    x, y = labelled_data(128)
    vae = pvae.build_vae(X_DIM, 2, [16], num_classes=2)
    result = pvae.fit(
        vae.model, vae.guide, (x, y), num_epochs=25, batch_size=32, learning_rate=2e-2, seed=0
    )
    assert result.history[-1].train_bound > result.history[0].train_bound
    bound = pvae.log_likelihood(vae.model, vae.guide, (x, y), 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
    pyro.set_rng_seed(0)
    for digit, prototype in enumerate(([1.0, 1, 1, 1, 0, 0, 0, 0], [0.0, 1, 0, 1, 0, 1, 0, 1])):
        drawn = vae.sample(200, digit).mean(0)
        assert torch.allclose(drawn, 0.05 + 0.9 * torch.tensor(prototype), atol=0.15), drawn
    # A label of the wrong class explains a datapoint worse.
    swapped = pvae.log_likelihood(vae.model, vae.guide, (x, 1 - y), 20, seed=0)
    assert swapped.mean < bound.mean - 1.0


def test_conditional_vae_feeds_the_label_to_encoder_and_decoder():
    vae = pvae.build_vae(X_DIM, 2, [8], num_classes=3)
    assert vae.encoder.cond_dim == 3 and vae.decoder.cond_dim == 3
    x, _ = labelled_data(4)
    y = torch.tensor([0, 1, 2, 1])
    guide_trace = poutine.trace(vae.guide).get_trace(x, y)
    z = guide_trace.nodes["latent"]["value"]
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    one_hot = torch.eye(3)[y]
    expected_logits = vae.decoder.net(torch.cat([z, one_hot], -1))
    assert torch.allclose(model_trace.nodes["obs"]["fn"].base_dist.logits, expected_logits)
    assert torch.allclose(
        guide_trace.nodes["latent"]["fn"].base_dist.loc,
        vae.encoder.net(torch.cat([x, one_hot], -1))[:, :2],
    )
    assert vae.sample(6).shape == (6, X_DIM)  # classes 0, 1, 2, 0, 1, 2
    assert vae.reconstruct(x, y).shape == (4, X_DIM)


def test_conditional_decode_takes_codes_of_any_batch_shape():
    vae = pvae.build_vae(X_DIM, 2, [8], num_classes=3)
    z = torch.randn(4, 5, 2)
    labels = torch.tensor([0, 2, 1, 1, 0]).expand(4, 5)
    grid = vae.decode(z, labels)
    assert grid.shape == (4, 5, X_DIM)
    for row in range(4):
        torch.testing.assert_close(grid[row], vae.decode(z[row], labels[row]))
    torch.testing.assert_close(vae.decode(z, 2), vae.decode(z, torch.full((4, 5), 2)))
    assert vae.decode(z).shape == (4, 5, X_DIM)  # every class in turn


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda v, x, y: v.model(x), "needs labels: pass data=.x, y."),
        (lambda v, x, y: v.model(x, y.float()), "integer tensor"),
        (lambda v, x, y: v.model(x, y + 2), r"labels must lie in 0..2, got values in \[2, 3\]"),
        (lambda v, x, y: v.model(x, y[:2]), "shape .num_datapoints."),
        (lambda v, x, y: v.sample(2, 5), "labels must lie in 0..2"),
        (
            lambda v, x, y: pvae.build_vae(X_DIM, 2).model(x, y),
            "not conditional and takes no labels",
        ),
        (
            lambda v, x, y: pvae.build_vae(X_DIM, 2, prior="vamp", num_classes=3),
            "prior 'vamp' pushes pseudo-inputs through the encoder",
        ),
    ],
)
def test_bad_labels_get_one_clear_error(call, match):
    vae = pvae.build_vae(X_DIM, 2, [8], num_classes=3)
    x, y = labelled_data(4)
    with pytest.raises(ValueError, match=match) as error:
        call(vae, x, y)
    assert "\n" not in str(error.value)  # no trace shapes appended by Pyro


def test_variants_survive_a_checkpoint(tmp_path):
    vae = pvae.build_vae(X_DIM, 2, [8], num_classes=2, beta=3.0, warmup_epochs=2, guide="iaf")
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(vae))
    loaded, state = pvae.load_vae(path)
    assert loaded.model_args == vae.model_args and loaded.num_classes == 2
    assert loaded.beta == 3.0 and loaded.warmup_epochs == 2
    x, y = labelled_data(4)
    pyro.set_rng_seed(0)
    expected = pvae.estimate_elbo(vae.model, vae.guide, (x, y))
    pyro.set_rng_seed(0)
    assert pvae.estimate_elbo(loaded.model, loaded.guide, (x, y)) == expected


# --- the adversarial autoencoder ----------------------------------------------------------


def bce(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits.squeeze(-1), torch.full(logits.shape[:-1], float(target)), reduction="none"
    )


def aae_terms(aae, x, seed):
    """The loss of the AdversarialAutoencoder docstring, term by term, by hand."""
    pyro.set_rng_seed(seed)
    codes = aae.encoder(x)[0]
    prior_draws = aae.prior().sample((x.shape[0],))
    logits = aae.decoder(codes)
    reconstruction = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    d = aae.discriminator
    w = aae.adversarial_weight
    discriminator_loss = w * (bce(d(prior_draws), 1) + bce(d(codes.detach()), 0)).sum()
    encoder_loss = w * bce(d(codes), 1).sum()
    return reconstruction.sum(), discriminator_loss, encoder_loss


def test_adversarial_autoencoder_loss_and_gradients_are_the_documented_ones():
    aae = pvae.build_vae(X_DIM, 2, [8], adversarial=True, adversarial_weight=0.7)
    assert type(aae).__name__ == "AdversarialAutoencoder"
    x, _ = labelled_data(16)
    loss = elbo_loss(aae, x, seed=3)
    reconstruction, discriminator_loss, encoder_loss = aae_terms(aae, x, seed=3)
    # float32 sums in another order: float32's tolerance.
    assert loss.item() == pytest.approx(
        (-reconstruction + discriminator_loss + encoder_loss).item(), rel=1e-5
    )
    # The discriminator learns only from its own terms, the encoder only from fooling it.
    params = {
        "discriminator": list(aae.discriminator.parameters()),
        "encoder": list(aae.encoder.parameters()),
        "decoder": list(aae.decoder.parameters()),
    }
    everything = [p for group in params.values() for p in group]
    got = torch.autograd.grad(elbo_loss(aae, x, seed=3), everything, allow_unused=True)
    reconstruction, discriminator_loss, encoder_loss = aae_terms(aae, x, seed=3)
    expected = {
        "discriminator": torch.autograd.grad(discriminator_loss, params["discriminator"]),
        "encoder": torch.autograd.grad(
            -reconstruction + encoder_loss, params["encoder"], retain_graph=True
        ),
        "decoder": torch.autograd.grad(-reconstruction, params["decoder"]),
    }
    flat_expected = [g for group in expected.values() for g in group]
    for g, e in zip(got, flat_expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)


def test_adversarial_autoencoder_evaluates_to_its_reconstruction_log_likelihood():
    aae = pvae.build_vae(X_DIM, 2, [8], adversarial=True)
    x, _ = labelled_data(20)
    with torch.no_grad():
        expected = aae_terms(aae, x, seed=0)[0].item() / 20
    # The bounds sum float32 terms in float64, expected in float32: float32's tolerance.
    assert pvae.estimate_elbo(aae.model, aae.guide, x) == pytest.approx(expected, rel=1e-5)
    bound = pvae.log_likelihood(aae.model, aae.guide, x, 5, seed=0)
    assert bound.mean == pytest.approx(expected, rel=1e-5)  # every particle is f(x)


def test_adversarial_autoencoder_pulls_its_codes_towards_the_prior():
    x, _ = labelled_data(128)
    codes = {}
    for weight in (1e-4, 1.0):
        pyro.clear_param_store()
        sizes = dict(z_dim=1, hidden_dims=[16], discriminator_dims=[16])
        aae = pvae.build_vae(X_DIM, adversarial=True, adversarial_weight=weight, **sizes)
        with torch.no_grad():  # start far from the prior: codes around 5
            aae.encoder.net[-1].bias[0] += 5.0
        pvae.fit(aae.model, aae.guide, x, num_epochs=40, batch_size=32, learning_rate=1e-2, seed=0)
        codes[weight] = aae.encode(x)[0].squeeze(-1)
    # Almost no adversarial term: a plain autoencoder, whose codes spread far (std ~5).
    assert codes[1e-4].std() > 3.0
    # The discriminator's pull: codes with about the prior's mean 0 and scale 1.
    assert codes[1.0].mean().abs() < 0.3 and 0.5 < codes[1.0].std() < 1.5
    assert aae.sample(4).shape == (4, X_DIM)


def test_adversarial_autoencoder_survives_a_checkpoint(tmp_path):
    aae = pvae.build_vae(X_DIM, 2, [8], adversarial=True, discriminator_dims=[5])
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(aae))
    loaded, _ = pvae.load_vae(path)
    assert type(loaded) is type(aae) and loaded.model_args == aae.model_args
    assert torch.equal(loaded.discriminator[0].weight, aae.discriminator[0].weight)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"guide": "iaf"}, "takes no guide setting .its encoder is deterministic."),
        ({"beta": 2.0}, "takes no beta setting"),
        ({"num_classes": 3}, "takes no conditional setting"),
        ({"adversarial_weight": 0.0}, "adversarial_weight must be a positive number"),
    ],
)
def test_adversarial_autoencoder_refuses_what_it_has_not(options, match):
    with pytest.raises(ValueError, match=match):
        pvae.build_vae(X_DIM, 2, adversarial=True, **options)


def test_adversarial_autoencoder_refuses_importance_weighted_training():
    aae = pvae.build_vae(X_DIM, 2, [8], adversarial=True)
    x, _ = labelled_data(16)
    with pytest.raises(ValueError, match="with objective 'elbo'") as error:
        pvae.fit(aae.model, aae.guide, x, num_epochs=1, objective="dreg", num_particles=2)
    assert "\n" not in str(error.value)
