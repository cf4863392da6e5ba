"""Training control in fit: early stopping with the best checkpoint kept, learning-rate
schedules restored exactly on resume, more_epochs, and save/load of pvae's VAEs."""

import copy
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae

X_DIM = 6


def rows(n, seed):
    return torch.bernoulli(
        torch.full((n, X_DIM), 0.3), generator=torch.Generator().manual_seed(seed)
    )


TRAIN, HELD_OUT = rows(64, 0), rows(32, 1)


def new_vae():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return pvae.build_vae(X_DIM, 2, [8])


def weights_each_epoch(vae):
    """Epoch -> the VAE's weights after it, and the ``on_epoch_end`` that fills it in."""
    snapshots = {}
    return snapshots, lambda s: snapshots.update({s.epoch: copy.deepcopy(vae.state_dict())})


def assert_same_weights(weights, reference):
    for name, value in reference.items():
        assert torch.equal(weights[name], value), name


def assert_best_pt_holds_the_best_epoch(folder, result, snapshots):
    best = pvae.load_checkpoint(folder / "best.pt")
    assert best["epoch"] == result.best_epoch
    assert_same_weights(best["model"], snapshots[result.best_epoch])


def test_patience_stops_after_epochs_without_a_better_held_out_elbo_and_keeps_the_best(tmp_path):
    vae = new_vae()
    snapshots, snapshot = weights_each_epoch(vae)
    result = pvae.fit(
        vae.model,
        vae.guide,
        TRAIN,
        num_epochs=40,
        batch_size=16,
        learning_rate=0.05,
        held_out=HELD_OUT,
        patience=2,
        seed=0,
        checkpoint_path=tmp_path / "checkpoint.pt",
        on_epoch_end=snapshot,
    )
    elbos = [s.held_out_elbo for s in result.history]
    assert result.best_held_out_bound == max(elbos) and result.held_out_bound_name == "ELBO"
    assert result.best_epoch == elbos.index(max(elbos)) + 1
    assert result.stopped_early and len(elbos) < 40  # this seed's run stops
    assert len(elbos) - result.best_epoch == 2  # exactly patience epochs without improving
    assert_best_pt_holds_the_best_epoch(tmp_path, result, snapshots)
    assert pvae.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == len(elbos)


def test_patience_needs_held_out_data_and_best_pt_is_not_a_checkpoint_name(tmp_path):
    vae = new_vae()
    with pytest.raises(ValueError, match="patience stops on the held-out bound: pass held_out="):
        pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=1, patience=3)
    with pytest.raises(ValueError, match="must not be named best.pt"):
        pvae.fit(
            vae.model, vae.guide, TRAIN, held_out=HELD_OUT, checkpoint_path=tmp_path / "best.pt"
        )


@pytest.mark.parametrize("schedule", ["cosine", "step", "plateau"])
def test_a_resumed_run_continues_the_schedule_and_stopping_bit_for_bit(tmp_path, schedule):
    options = dict(
        batch_size=16,
        learning_rate=0.01,
        held_out=HELD_OUT,
        seed=0,
        lr_schedule=schedule,
        # the whole run's length, which the first half's schedule must know too
        lr_schedule_options={"step": {"step_size": 2}, "cosine": {"T_max": 6}}.get(schedule, {}),
        patience=10,
    )
    vae = new_vae()
    whole = pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=6, **options)
    reference = copy.deepcopy(vae.state_dict())
    vae = new_vae()
    path = tmp_path / "c.pt"
    pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=3, checkpoint_path=path, **options)
    vae = new_vae()
    resumed = pvae.fit(vae.model, vae.guide, TRAIN, resume=path, more_epochs=3, **options)
    assert [s.held_out_elbo for s in resumed.history] == [s.held_out_elbo for s in whole.history]
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]
    assert_same_weights(vae.state_dict(), reference)


def test_a_learning_rate_schedule_of_ones_own_and_a_bad_name():
    vae = new_vae()
    result = pvae.fit(
        vae.model,
        vae.guide,
        TRAIN,
        num_epochs=2,
        learning_rate=0.1,
        lr_schedule=lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.5),
    )
    assert result.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear': choose one of plateau"):
        pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=1, lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_schedule_options for 'step'"):
        pvae.fit(vae.model, vae.guide, TRAIN, lr_schedule="step", lr_schedule_options={"k": 1})


def test_resuming_with_nothing_left_to_do_says_so(tmp_path):
    vae = new_vae()
    path = tmp_path / "c.pt"
    pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=2, checkpoint_path=path)
    vae = new_vae()
    with pytest.warns(UserWarning, match="nothing to train: the checkpoint holds 2 epochs"):
        result = pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=2, resume=path)
    assert result.num_steps == 2  # one minibatch per epoch: nothing trained now


def test_a_vae_saves_and_loads_and_fits_checkpoints_rebuild_it_unasked(tmp_path):
    vae = new_vae()
    pvae.fit(vae.model, vae.guide, TRAIN, num_epochs=1, checkpoint_path=tmp_path / "c.pt")
    for path in (vae.save(tmp_path / "vae.pt"), tmp_path / "c.pt"):
        loaded = pvae.load(path)
        assert loaded.model_args == vae.model_args
        for name, value in vae.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name


def test_loading_a_hand_written_models_checkpoint_says_what_to_do_instead(tmp_path):
    def model(x):
        loc = pyro.param("loc", torch.zeros(X_DIM))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=x)

    pvae.fit(model, lambda x: None, TRAIN, num_epochs=1, checkpoint_path=tmp_path / "c.pt")
    message = r"holds no VAE architecture .*load_checkpoint\(path\)\['params'\]"
    with pytest.raises(ValueError, match=message):
        pvae.load(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="assembled from modules by hand"):
        pvae.VAE(pvae.nets.GaussianEncoder(X_DIM, 2), pvae.nets.MLPDecoder(2, X_DIM)).save(
            tmp_path / "v.pt"
        )


def test_progress_shows_in_a_notebook_and_never_in_ci(monkeypatch):
    from pvae.infer import progress

    class ZMQInteractiveShell:  # the class name a Jupyter kernel's shell has
        pass

    fake_ipython = type("IPython", (), {"get_ipython": staticmethod(ZMQInteractiveShell)})
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.delenv("CI", raising=False)
    assert progress.progress_enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.progress_enabled()


def test_the_elbos_terms_are_the_elbo_split_and_the_kl_is_the_analytic_one():
    vae = new_vae()
    x = TRAIN[:20]
    pyro.set_rng_seed(3)
    reconstruction, kl = vae.elbo_terms(x)
    pyro.set_rng_seed(3)  # the same draw z ~ q(z|x) per datapoint
    pyro_elbo = -pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, x) / x.shape[0]
    assert reconstruction - kl == pytest.approx(pyro_elbo, rel=1e-6)
    # one datapoint, many draws: the Monte Carlo KL converges to KL(N(mu, s) || N(0, 1))
    one = TRAIN[:1].expand(20000, -1)
    _, kl = vae.elbo_terms(one, batch_size=20000)
    loc, scale = vae.encoder(TRAIN[:1])
    exact = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0))
    exact = exact.sum().item()
    assert kl == pytest.approx(exact, abs=0.03)
