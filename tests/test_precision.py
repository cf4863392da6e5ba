"""Precision of training: float32 is exact and the default; TF32 and bfloat16 only on request."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.infer.precision import matmul_precision

pytestmark = pytest.mark.usefixtures("one_thread")
FLAGS = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)


def recording_pair(seen):
    """A VAE's model/guide that note the dtype of the decoder output and the matmul flag."""
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[16])

    def model(x):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            logits = vae.decoder(z)
            seen.append((logits.dtype, torch.backends.cuda.matmul.fp32_precision))
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    return vae, model


@pytest.mark.parametrize(
    ("precision", "dtype", "flag"),
    [
        ("float32", torch.float32, "ieee"),
        ("tf32", torch.float32, "tf32"),
        ("bfloat16", torch.bfloat16, "ieee"),
    ],
)
def test_steps_run_in_the_precision_asked_for_and_flags_are_restored(precision, dtype, flag):
    pyro.clear_param_store()
    seen = []
    vae, model = recording_pair(seen)
    before = [f.fp32_precision for f in FLAGS]
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    pvae.fit(model, vae.guide, x, num_epochs=1, batch_size=8, precision=precision)
    assert [f.fp32_precision for f in FLAGS] == before
    # The first records come from fit's tracing of the pair before training, the last from
    # its look at the objective after (pvae.infer.bound_caveat).
    steps = seen[-5:-1]
    assert steps == [(dtype, flag)] * 4


def test_bfloat16_training_tracks_float32_training():
    x = torch.bernoulli(torch.rand(8, 20).repeat(32, 1))
    bounds = {}
    for precision in ("float32", "bfloat16"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pvae.build_vae(20, z_dim=3, hidden_dims=[32])
        result = pvae.fit(
            vae.model,
            vae.guide,
            x,
            num_epochs=15,
            batch_size=32,
            seed=0,
            precision=precision,
            learning_rate=1e-2,
            held_out=x,
        )
        bounds[precision] = result.history[-1].held_out_elbo
        # The held-out ELBO is computed in float32 whatever the training precision.
        assert math.isfinite(bounds[precision])
    first = result.history[0].held_out_elbo
    assert bounds["bfloat16"] > first + 0.5 * (bounds["float32"] - first)
    assert bounds["bfloat16"] == pytest.approx(bounds["float32"], rel=0.1)


def test_matmul_precision_is_restored_after_an_error():
    before = [f.fp32_precision for f in FLAGS]
    with pytest.raises(KeyError), matmul_precision("tf32"):
        raise KeyError("boom")
    assert [f.fp32_precision for f in FLAGS] == before
