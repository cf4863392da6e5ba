"""Checkpoints, exact resume, interrupts and divergence."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.data import DynamicBinarization

ROOT = Path(__file__).resolve().parents[1]


def toy_data():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(96, 20, generator=generator), torch.rand(24, 20, generator=generator)


def train(num_epochs, transform=None, init_seed=7, **kwargs):
    """A fresh VAE trained on the toy data with dynamic binarization."""
    pyro.clear_param_store()
    pyro.set_rng_seed(init_seed)
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[16])
    train_x, held_out = toy_data()
    result = pvae.fit(
        vae.model,
        vae.guide,
        train_x,
        num_epochs=num_epochs,
        batch_size=20,
        transform=transform or DynamicBinarization(),
        held_out=pvae.data.binarize(held_out, seed=0),
        **kwargs,
    )
    return vae, result


def same_run(vae_a, result_a, vae_b, result_b):
    assert [vars(s) | {"seconds": 0} for s in result_a.history] == [
        vars(s) | {"seconds": 0} for s in result_b.history
    ]
    for (name, a), (_, b) in zip(
        vae_a.state_dict().items(), vae_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert result_a.num_steps == result_b.num_steps


def test_resume_after_an_epoch_is_bit_exact(tmp_path):
    vae_full, full = train(4, seed=7)
    path = tmp_path / "c.pt"
    train(2, seed=7, checkpoint_path=path)
    assert pvae.load_checkpoint(path)["epoch"] == 2
    # Other initial weights and random state: resume restores both.
    vae_resumed, resumed = train(4, init_seed=123, resume=path, csv_path=tmp_path / "h.csv")
    same_run(vae_full, full, vae_resumed, resumed)
    assert len((tmp_path / "h.csv").read_text().splitlines()) == 5  # header + 4 epochs


class InterruptAt:
    """A binarizing transform that sends this process a signal before a given batch."""

    def __init__(self, batch_number, signum=signal.SIGINT):
        self.calls, self.batch_number, self.signum = 0, batch_number, signum

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.batch_number:
            os.kill(os.getpid(), self.signum)
        return torch.bernoulli(x)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_saves_and_resume_is_bit_exact(tmp_path, signum):
    vae_full, full = train(3, seed=7)
    path = tmp_path / "c.pt"
    # Calls 1 and 2 are fit's checks (the first batch, then every row); call 10 is step 3 of
    # epoch 2 (5 steps per epoch).
    with pytest.raises(pvae.TrainingInterrupted) as stopped:
        train(3, seed=7, checkpoint_path=path, transform=InterruptAt(10, signum))
    assert (stopped.value.epoch, stopped.value.step, stopped.value.checkpoint) == (2, 3, path)
    assert signal.Signals(signum).name in str(stopped.value)
    assert signal.getsignal(signum) is not None  # handlers restored
    state = pvae.load_checkpoint(path)
    assert state["epoch"] == 1 and state["training"]["epoch_steps"] == 3
    vae_resumed, resumed = train(3, init_seed=123, resume=path)
    same_run(vae_full, full, vae_resumed, resumed)


class NanAfter:
    def __init__(self, batch_number):
        self.calls, self.batch_number = 0, batch_number

    def __call__(self, x):
        self.calls += 1
        return torch.full_like(x, float("nan")) if self.calls >= self.batch_number else x.round()


def test_divergence_names_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(pvae.TrainingDiverged, match="during epoch 2 .*learning rate"):
        train(5, checkpoint_path=path, transform=NanAfter(9))
    state = pvae.load_checkpoint(path)
    assert state["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in state["params"].values())


def test_gradient_clipping_bounds_the_update(tmp_path):
    _, result = train(2, clip_norm=1.0)
    assert result.history[-1].train_bound > -1e6


def test_a_full_disk_is_one_clear_error_and_the_old_checkpoint_survives(tmp_path, monkeypatch):
    path = pvae.save_checkpoint(tmp_path / "c.pt", {"epoch": 1})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match="cannot write checkpoint .*No space left.*intact"):
        pvae.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert pvae.load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_resume_into_another_architecture_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    train(1, checkpoint_path=path)
    pyro.clear_param_store()
    vae = pvae.build_vae(20, z_dim=4, hidden_dims=[16])
    with pytest.raises(ValueError, match="does not fit this model: parameter .* has shape"):
        pvae.fit(vae.model, vae.guide, toy_data()[0].round(), num_epochs=2, resume=path)


# The example's default compiles its step (inductor loads in 10-20 s): with the slow tests.
@pytest.mark.parametrize("compile", ["off", pytest.param("auto", marks=pytest.mark.slow)])
def test_ctrl_c_during_the_example_leaves_a_loadable_checkpoint(tmp_path, compile):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "mnist_svi.py"),
            "-n",
            "1000",
            "--z-dim",
            "4",
            "--hidden-dim",
            "32",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            "--compile",
            compile,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
    )
    deadline = time.monotonic() + 300  # generous: a loaded machine starts Python slowly
    while not (out / "checkpoint.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after the first epoch"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr
    last_line = stderr.strip().splitlines()[-1]
    assert "SIGINT received: stopped at epoch" in last_line and "--resume" in last_line
    vae, state = pvae.load_vae(out / "checkpoint.pt")
    assert state["epoch"] >= 1 and vae.sample(2).shape == (2, 784)


def train_mixture_prior(num_epochs, objective, init_seed=7, **kwargs):
    """A hand-written VAE whose mixture prior's component is enumerated in the model."""
    pyro.clear_param_store()
    pyro.set_rng_seed(init_seed)
    encoder = pvae.nets.GaussianEncoder(x_dim=20, z_dim=2, hidden_dims=[8])
    decoder = pvae.nets.MLPDecoder(z_dim=2, x_dim=20, hidden_dims=[8])

    def model(x):
        pyro.module("decoder", decoder)
        locs = pyro.param("locs", torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        with pyro.plate("data", x.shape[0]):
            weights = torch.full((2,), 0.5)
            c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(locs[c], 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))

    train_x = pvae.data.binarize(toy_data()[0], seed=0)
    num_particles = 3 if objective != "elbo" else 1
    result = pvae.fit(model, guide, train_x, num_epochs=num_epochs, batch_size=20,
                      objective=objective, num_particles=num_particles, **kwargs)  # fmt: skip
    return {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}, result


@pytest.mark.parametrize("objective", ["elbo", "iwae", "dreg"])
def test_an_enumerating_model_trains_checkpoints_and_resumes_bit_exact(tmp_path, objective):
    full_params, full = train_mixture_prior(3, objective)
    path = tmp_path / "c.pt"
    train_mixture_prior(1, objective, checkpoint_path=path)
    resumed_params, resumed = train_mixture_prior(3, objective, init_seed=123, resume=path)
    assert [s.train_bound for s in full.history] == [s.train_bound for s in resumed.history]
    assert full.history[-1].train_bound > full.history[0].train_bound
    assert full_params.keys() == resumed_params.keys() and "locs" in full_params
    for name, value in full_params.items():
        assert torch.equal(value, resumed_params[name]), name
