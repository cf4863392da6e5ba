"""Every tensor pvae scores is checked as training data are: a clear error, never a number."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae

X_DIM, Z_DIM = 6, 2


def bernoulli_pair(dtype=torch.float32):
    """A hand-written Bernoulli model (networks in ``dtype``): its distributions, not pvae,
    know their support."""
    decoder = torch.nn.Linear(Z_DIM, X_DIM).to(dtype)
    encoder = torch.nn.Linear(X_DIM, 2 * Z_DIM).to(dtype)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


def binary(n=20):
    return torch.bernoulli(torch.full((n, X_DIM), 0.3))


def with_nan():
    x = binary()
    x[3, 2] = float("nan")
    return x


def with_late_nan():
    # Past the rows traced for the support check: every row is checked for NaN/Inf.
    x = binary()
    x[17, 0] = float("inf")
    return x


def bytes_():
    return binary() * 255


BAD_DATA = {
    "NaN": (with_nan, r"1 NaN/Inf values \(first at index \(3, 2\)\)"),
    "Inf in a late row": (with_late_nan, r"1 NaN/Inf values \(first at index \(17, 0\)\)"),
    "0-255": (bytes_, r"site 'x' of the model: Bernoulli needs values in .*range \[0, 255\]"),
    "grey levels": (lambda: binary() * 0.5, r"site 'x' of the model: Bernoulli needs"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_log_likelihood_and_estimate_elbo_refuse_data_outside_the_model(case):
    make, message = BAD_DATA[case]
    model, guide = bernoulli_pair()
    with pytest.raises(ValueError, match=message):
        pvae.log_likelihood(model, guide, make(), num_samples=10)
    with pytest.raises(ValueError, match=message):
        pvae.estimate_elbo(model, guide, make())
    # Good data get a number.
    assert pvae.log_likelihood(model, guide, binary(), num_samples=10).mean < 0


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_fit_refuses_held_out_data_outside_the_model(case, tmp_path):
    make, message = BAD_DATA[case]
    model, guide = bernoulli_pair()
    with pytest.raises(ValueError, match=message.replace("site", "held-out data do not fit site")):
        pvae.fit(model, guide, binary(), held_out=make(), num_epochs=1, checkpoint_path=None)


def test_fit_refuses_grey_held_out_data_for_pvae_s_bernoulli_vae():
    # The case: a "held-out ELBO" of grey levels is no log-likelihood at all.
    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8])
    with pytest.raises(ValueError, match="held-out data"):
        pvae.fit(vae.model, vae.guide, binary(), held_out=binary() * 0.5, num_epochs=1)


def test_log_likelihood_runs_pvae_s_likelihood_check_on_every_row():
    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8])
    x = binary(40)
    x[35, 1] = 0.5  # one grey pixel, far past the first rows
    with pytest.raises(ValueError, match="data: the Bernoulli likelihood needs binary data"):
        pvae.log_likelihood(vae.model, vae.guide, x, num_samples=5)
