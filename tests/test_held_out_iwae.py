"""fit's held-out IWAE_K (held_out_num_samples=K): the number is pvae.log_likelihood's on the
epoch's weights, it chooses best.pt and stops training, it leaves the training's random
numbers alone, resumes exactly, and what it cannot score is refused before any step."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_training_control import (
    TRAIN,
    X_DIM,
    assert_best_pt_holds_the_best_epoch,
    assert_same_weights,
    new_vae,
    rows,
    weights_each_epoch,
)

import pvae
from pvae.infer.schedules import EarlyStopping

K = 4
HELD_OUT = rows(40, 1)
OPTIONS = dict(batch_size=16, learning_rate=0.05, seed=0, objective="iwae", num_particles=K)


def fit_judged_by_iwae(vae, k=K, **options):
    """IWAE-K training on TRAIN, judged by the held-out IWAE_k on HELD_OUT."""
    options = {**OPTIONS, "held_out": HELD_OUT, "held_out_num_samples": k, **options}
    return pvae.fit(vae.model, vae.guide, TRAIN, **options)


def test_the_held_out_iwae_is_log_likelihoods_on_each_epochs_weights():
    vae = new_vae()
    expected = []

    def score(stats):
        bound = pvae.log_likelihood(
            vae.model, vae.guide, HELD_OUT, K, seed=pvae.infer.held_out.HELD_OUT_SEED
        )
        expected.append((stats.held_out_iwae, stats.held_out_elbo, bound.mean, bound.elbo))

    fit_judged_by_iwae(vae, num_epochs=3, on_epoch_end=score)
    for iwae, elbo, reference_iwae, reference_elbo in expected:
        assert iwae == reference_iwae and elbo == reference_elbo
        assert iwae > elbo  # K draws: IWAE_K above their mean log-weight


def test_best_pt_and_patience_follow_the_held_out_iwae(tmp_path):
    vae = new_vae()
    snapshots, snapshot = weights_each_epoch(vae)
    result = fit_judged_by_iwae(
        vae,
        num_epochs=60,
        patience=3,
        checkpoint_path=tmp_path / "checkpoint.pt",
        on_epoch_end=snapshot,
    )
    bounds = [s.held_out_iwae for s in result.history]
    assert result.held_out_bound_name == f"IWAE_{K}"
    assert result.best_held_out_bound == max(bounds)
    assert result.best_epoch == bounds.index(max(bounds)) + 1
    assert result.stopped_early and len(bounds) - result.best_epoch == 3
    assert_best_pt_holds_the_best_epoch(tmp_path, result, snapshots)


def test_the_held_out_iwae_draws_nothing_from_the_training_generators():
    # Were its draws taken from the global generators, twice as many particles would shift
    # every later minibatch's noise and so the weights.
    weights = []
    for k in (K, 2 * K):
        vae = new_vae()
        fit_judged_by_iwae(vae, k, num_epochs=3)
        weights.append(copy.deepcopy(vae.state_dict()))
    assert_same_weights(weights[1], weights[0])


def test_a_resumed_run_goes_on_bit_for_bit_and_refuses_another_bound(tmp_path):
    vae = new_vae()
    whole = fit_judged_by_iwae(vae, num_epochs=4, patience=20)
    reference = copy.deepcopy(vae.state_dict())
    path = tmp_path / "c.pt"
    fit_judged_by_iwae(new_vae(), num_epochs=2, patience=20, checkpoint_path=path)
    vae = new_vae()
    resumed = fit_judged_by_iwae(vae, num_epochs=4, patience=20, resume=path)
    assert [s.held_out_iwae for s in resumed.history] == [s.held_out_iwae for s in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    assert_same_weights(vae.state_dict(), reference)
    with pytest.raises(ValueError, match=f"by the held-out IWAE_{K}, and this run asks for "):
        fit_judged_by_iwae(new_vae(), 1, num_epochs=4, patience=20, resume=path)


def test_a_checkpoint_from_before_the_held_out_iwae_reads_as_chosen_by_the_elbo():
    stopping = EarlyStopping.from_dict(
        {"patience": 5, "best_elbo": -3.5, "best_epoch": 7, "stale_epochs": 2}, patience=9
    )
    assert (stopping.best_bound, stopping.best_epoch, stopping.patience) == (-3.5, 7, 9)
    assert stopping.bound_name == "ELBO"


def test_what_the_held_out_iwae_cannot_score_is_refused_before_any_step():
    vae = new_vae()
    with pytest.raises(ValueError, match="held_out_num_samples=4 is the K of the held-out IWAE"):
        pvae.fit(vae.model, vae.guide, TRAIN, held_out_num_samples=K)
    with pytest.raises(ValueError, match="held_out_num_samples must be a positive integer"):
        pvae.fit(vae.model, vae.guide, TRAIN, held_out=HELD_OUT, held_out_num_samples=0)

    def model(x):  # a global latent: no per-datapoint bound
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).expand([X_DIM]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    steps = []
    with pytest.raises(
        ValueError, match="by IWAE_K, which this model has none of: global latent .loc."
    ):
        pvae.fit(
            model,
            guide,
            TRAIN,
            held_out=HELD_OUT,
            held_out_num_samples=K,
            on_epoch_end=steps.append,
        )
    assert steps == []
