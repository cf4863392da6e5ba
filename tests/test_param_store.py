"""A second model in the same Python session trains, as a notebook runs one after another.

Pyro's parameter store is global: ``pyro.module("decoder", net)`` with a name an earlier model
registered keeps the earlier tensors (pyro-ppl/pyro#2912, #3209), so an optimizer given the
store's parameters would train tensors the new networks never use.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae

X_DIM, Z_DIM = 12, 2


def binary_data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    probs = 0.05 + 0.9 * torch.randint(2, (4, X_DIM), generator=generator)
    rows = torch.randint(4, (240,), generator=generator)
    return torch.bernoulli(probs[rows], generator=generator)


def hand_written_pair():
    """The shape of "Your own model" (docs/guide/own_model.md, the README): module names
    every such model uses."""
    encoder = pvae.nets.GaussianEncoder(x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=[16])
    decoder = pvae.nets.MLPDecoder(z_dim=Z_DIM, x_dim=X_DIM, hidden_dims=[16])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))

    return model, guide, decoder


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return all(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def test_a_second_hand_written_model_with_the_same_module_names_trains(one_thread):
    x = binary_data()
    first_model, first_guide, _ = hand_written_pair()
    pvae.fit(first_model, first_guide, x, num_epochs=2, batch_size=40, learning_rate=0.03)
    model, guide, decoder = hand_written_pair()
    before, untrained = snapshot(decoder), pvae.estimate_elbo(model, guide, x)
    with pytest.warns(UserWarning, match=r"parameters of an earlier model .*\$\$\$"):
        result = pvae.fit(model, guide, x, num_epochs=4, batch_size=40, learning_rate=0.03)
    assert changed(before, decoder)
    assert pvae.estimate_elbo(model, guide, x) > untrained + 1.0
    assert result.history[-1].train_bound > result.history[0].train_bound
    # The store now holds the second model's own tensors.
    store = pyro.get_param_store()
    assert all(store[f"decoder$$${n}"] is p for n, p in decoder.named_parameters())


def test_build_vae_twice_in_one_session_trains_both_without_a_warning(one_thread, recwarn):
    x = binary_data()
    bounds = []
    for _ in range(2):
        vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[16])
        before, untrained = snapshot(vae.decoder), pvae.estimate_elbo(vae.model, vae.guide, x)
        pvae.fit(vae.model, vae.guide, x, num_epochs=4, batch_size=40, learning_rate=0.03)
        assert changed(before, vae.decoder)
        bounds.append(pvae.estimate_elbo(vae.model, vae.guide, x))
        assert bounds[-1] > untrained + 1.0
    assert not [w for w in recwarn if "earlier model" in str(w.message)]
    # Same data, same architecture: the second learns as the first did.
    assert bounds[1] == pytest.approx(bounds[0], abs=1.0)
