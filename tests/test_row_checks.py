"""Every row of the data is checked against the support of the model's observed sites, in
every entry point, hand-written models included: a bad value in the last row is one clear
error naming its row and column, never a number; good data give the numbers they gave."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.infer import checks

X_DIM, Z_DIM, N = 6, 2, 1030


def encoder_guide(encoder):
    def guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return guide


def bernoulli_pair(observe=lambda x: x):
    """A hand-written Bernoulli model; ``observe`` is what it does to x before observing it."""
    decoder = torch.nn.Linear(Z_DIM, X_DIM)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=observe(x))

    return model, encoder_guide(torch.nn.Linear(X_DIM, 2 * Z_DIM))


def poisson_pair():
    decoder = torch.nn.Linear(Z_DIM, X_DIM)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(decoder(z).exp()).to_event(1), obs=x)

    return model, encoder_guide(torch.nn.Linear(X_DIM, 2 * Z_DIM))


def vae_pair():
    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8])
    return vae.model, vae.guide


def binary(n=N):
    return torch.bernoulli(torch.full((n, X_DIM), 0.3), generator=torch.Generator().manual_seed(0))


def counts(n=N):
    return torch.poisson(torch.full((n, X_DIM), 2.0), generator=torch.Generator().manual_seed(0))


MODELS = {
    # (model and guide, good data, bad value, what the message says about it)
    "hand-written Bernoulli": (bernoulli_pair, binary, 0.5, "Bernoulli needs values in"),
    "Bernoulli of 1 - x": (lambda: bernoulli_pair(lambda x: 1 - x), binary, 0.5, "Bernoulli"),
    "Poisson": (poisson_pair, counts, -1.0, "Poisson needs values in"),
    "pvae.VAE": (vae_pair, binary, 0.5, "the Bernoulli likelihood needs binary data"),
}


def run_fit(model, guide, x):
    return pvae.fit(model, guide, x, num_epochs=1, batch_size=256, seed=0, progress=False)


ENTRY_POINTS = {
    "fit": run_fit,
    "fit held_out": lambda m, g, x: pvae.fit(
        m, g, x[:8].round().abs(), held_out=x, num_epochs=1, progress=False
    ),
    "log_likelihood": lambda m, g, x: pvae.log_likelihood(m, g, x, 2, seed=0),
    "estimate_elbo": lambda m, g, x: pvae.estimate_elbo(m, g, x),
    "ais": lambda m, g, x: pvae.ais(m, g, x, 2, 1, leapfrog_steps=1, seed=0),
    "bdmc": lambda m, g, x: pvae.bdmc(m, g, x, num_steps=2, num_chains=1, seed=0),
}


@pytest.mark.parametrize("row", [16, 17, 1000, N - 1])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_bad_value_in_any_row_is_refused_with_its_row(kind, entry, row):
    make_pair, good, bad, message = MODELS[kind]
    x = good()
    x[row, 3] = bad
    where = f"row {row}" if kind == "pvae.VAE" else f"row {row}, column 3, value {bad:g}"
    with pytest.raises(ValueError, match=f"{message}.*{where}") as caught:
        ENTRY_POINTS[entry](*make_pair(), x)
    assert "\n" not in str(caught.value)


def test_the_count_and_range_of_bad_values_are_over_all_rows():
    model, guide = poisson_pair()
    x = counts()
    x[20, 1], x[900, 5] = -1.0, -7.0
    with pytest.raises(ValueError, match=r"got 2 datapoints .* row 20, column 1.*range \[-7, "):
        pvae.log_likelihood(model, guide, x, 2)


def without_row_checks(monkeypatch):
    monkeypatch.setattr(checks, "check_rows", lambda *args, **kwargs: None)


@pytest.mark.parametrize("kind", ["hand-written Bernoulli", "Bernoulli of 1 - x", "Poisson"])
def test_good_data_give_the_numbers_they_give_unchecked(kind, monkeypatch):
    """The check draws under a forked generator: seeded results are bit-identical."""
    make_pair, good, _, _ = MODELS[kind]
    x = good(40)

    def results():
        pyro.clear_param_store()
        torch.manual_seed(5)
        model, guide = make_pair()
        fitted = run_fit(model, guide, x).history[0].train_bound
        bound = pvae.log_likelihood(model, guide, x, 20, seed=1).per_datapoint
        pyro.set_rng_seed(2)  # estimate_elbo draws from the global generator
        return fitted, bound, pvae.estimate_elbo(model, guide, x), torch.randn(3)

    checked = results()
    without_row_checks(monkeypatch)
    unchecked = results()
    assert checked[0] == unchecked[0] and checked[2] == unchecked[2]
    assert torch.equal(checked[1], unchecked[1]) and torch.equal(checked[3], unchecked[3])


def test_8bit_training_data_are_checked_as_transformed_in_every_row():
    model, guide = bernoulli_pair()
    x = (binary() * 255).to(torch.uint8)
    x[N - 1, 2] = 128
    with pytest.raises(ValueError, match="data as transformed do not fit .*row 1029, column 2"):
        pvae.fit(model, guide, x, num_epochs=1, transform=lambda b: b.float() / 255)


def test_pvae_s_own_check_names_the_row_of_the_whole_data_in_a_late_transformed_chunk():
    model, guide = vae_pair()
    x = (binary(5000) * 255).to(torch.uint8)
    x[4500, 1] = 128  # in the second chunk of rows transformed for the check
    with pytest.raises(ValueError, match=r"data\[4096:5000\] as transformed: .*first at row 4500"):
        pvae.fit(model, guide, x, num_epochs=1, transform=lambda b: b.float() / 255)
