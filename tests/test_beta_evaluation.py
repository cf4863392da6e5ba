"""A β-VAE (and a KL warm-up) is evaluated at β = 1 by every estimator: each gives, for the
same weights and seed, exactly the number it gives for the same VAE built with β = 1."""

import pytest
import torch

import pvae
from pvae.infer.evaluation_mode import evaluation_mode, in_evaluation


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is faster, and the CPU is shared."""


def same_vae(**variant):
    torch.manual_seed(0)
    vae = pvae.build_vae(6, z_dim=2, hidden_dims=[5], **variant)
    plain = pvae.build_vae(6, z_dim=2, hidden_dims=[5])
    plain.load_state_dict(vae.state_dict())
    return vae, plain


def seeded_elbo(vae, x):
    torch.manual_seed(0)
    return pvae.estimate_elbo(vae.model, vae.guide, x)


ESTIMATORS = {
    "log_likelihood": lambda v, x: pvae.log_likelihood(v.model, v.guide, x, 8, seed=0).mean,
    "estimate_elbo": seeded_elbo,
    "ais": lambda v, x: (
        pvae.ais(v.model, v.guide, x, num_steps=4, num_chains=2, seed=0).per_datapoint
    ),
    "bdmc": lambda v, x: pvae.bdmc(v.model, v.guide, x, num_steps=4, num_chains=2, seed=0).gap,
}


@pytest.mark.parametrize("variant", [{"beta": 4.0}, {"beta": 0.5, "warmup_epochs": 3}])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_sees_the_model_at_beta_one(estimator, variant):
    vae, plain = same_vae(**variant)
    assert vae.kl_weight != 1.0
    x = torch.bernoulli(torch.full((5, 6), 0.4), generator=torch.Generator().manual_seed(1))
    ours, theirs = ESTIMATORS[estimator](vae, x), ESTIMATORS[estimator](plain, x)
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(theirs))


def test_training_steps_still_weigh_the_kl_term():
    vae, _ = same_vae(beta=4.0)
    x = torch.ones(3, 6)
    trace = pvae.infer.plates.trace_pair(vae.model, vae.guide, x)[1]
    assert trace.nodes["latent"]["scale"] == 4.0


def test_evaluation_mode_nests_and_restores_the_global_generator():
    state = torch.get_rng_state()
    with evaluation_mode(torch.device("cpu")):
        with evaluation_mode(torch.device("cpu")):
            torch.rand(3)
        assert in_evaluation()
    assert not in_evaluation()
    assert torch.equal(state, torch.get_rng_state())
