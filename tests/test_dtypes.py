"""Data of any dtype users have (numpy's float64, halves, bools, 0/1 integers, 8-bit bytes with
a transform) reach the model in its floating dtype, in every entry point, and give the same
numbers as float32 data; what has no meaning as such (other integers, complex numbers,
text) is refused in one line that says what to do."""

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from test_checks import bernoulli_pair
from test_sources import X_DIM, Rows, binary_rows
from torch.utils.data import DataLoader, TensorDataset

import pvae
from pvae.cli import main


def binary(n=24, seed=0):
    return binary_rows(n, seed)


# Every form holds exactly the values of binary(): float32 results must be matched exactly.
FORMS = {
    "float64 numpy": lambda x: x.double().numpy(),
    "float64": lambda x: x.double(),
    "float16": lambda x: x.half(),
    "bfloat16": lambda x: x.bfloat16(),
    "bool": lambda x: x.bool(),
    "int64 0/1": lambda x: x.long(),
    "uint8 0/1": lambda x: x.to(torch.uint8),
    "TensorDataset float64": lambda x: TensorDataset(x.double()),
    "Dataset of float64 numpy rows": lambda x: Rows(x.double().numpy()),
    "DataLoader float64": lambda x: DataLoader(TensorDataset(x.double()), batch_size=8),
}


def vae(seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    return pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[8])


def fit_bounds(data, **options):
    model = vae()
    result = pvae.fit(
        model.model, model.guide, data, num_epochs=1, batch_size=8, seed=3, progress=False,
        **options,
    )  # fmt: skip
    return [(s.train_bound, s.held_out_elbo) for s in result.history]


def evaluated(method):
    def run(data):
        model = vae()
        pyro.set_rng_seed(1)  # estimate_elbo draws from the global generator
        return method(model, data)

    return run


ENTRY_POINTS = {
    "fit": fit_bounds,
    "fit held_out": lambda data: fit_bounds(binary(), held_out=data),
    "log_likelihood": evaluated(
        lambda m, d: pvae.log_likelihood(m.model, m.guide, d, 10, seed=0).per_datapoint
    ),
    "estimate_elbo": evaluated(lambda m, d: pvae.estimate_elbo(m.model, m.guide, d)),
    "ais": evaluated(
        lambda m, d: pvae.ais(m.model, m.guide, d, 3, 2, leapfrog_steps=2, seed=0).per_datapoint
    ),
    "bdmc": evaluated(
        lambda m, d: pvae.bdmc(m.model, m.guide, d, num_steps=2, num_chains=2, seed=0).upper
    ),
}


def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_form_gives_the_numbers_of_float32_data(entry, form):
    run = ENTRY_POINTS[entry]
    assert same(run(FORMS[form](binary())), reference(entry, form))


@functools.cache
def reference(entry, form):
    """The entry point's numbers for float32 data (every run starts from the same state)."""
    x = binary()
    if entry == "fit" and form == "DataLoader float64":
        # A DataLoader trains in its own minibatches: compare with one of float32.
        return ENTRY_POINTS[entry](DataLoader(TensorDataset(x), batch_size=8))
    return reference(entry, "float32") if form != "float32" else ENTRY_POINTS[entry](x)


def test_8bit_bytes_with_a_transform_stay_8bit_and_train_as_their_floats():
    x = binary()
    seen = []

    def scale(batch):
        seen.append(batch.dtype)
        return batch.float() / 255

    assert fit_bounds((x * 255).to(torch.uint8), transform=scale) == fit_bounds(x)
    assert set(seen) == {torch.uint8}
    # a transform's float64 output is converted too
    as_double = fit_bounds((x * 255).to(torch.uint8), transform=lambda b: b.double() / 255)
    assert as_double == fit_bounds(x)


def test_a_float64_model_keeps_float64_data_and_takes_float32_up(float64):
    x = binary()
    as_double = ENTRY_POINTS["log_likelihood"](x)
    assert as_double.dtype == torch.float64
    assert torch.equal(ENTRY_POINTS["log_likelihood"](x.float()), as_double)
    assert fit_bounds(x.float()) == fit_bounds(x)


def test_a_double_hand_written_model_gets_its_dtype_from_its_parameters():
    """Default dtype float32, networks in float64: Pyro's parameters tell the dtype."""
    model, guide = bernoulli_pair(torch.float64)
    x = binary()
    result = pvae.log_likelihood(model, guide, x, 5, seed=0)
    assert torch.equal(
        result.per_datapoint, pvae.log_likelihood(model, guide, x.bool(), 5, seed=0).per_datapoint
    )
    pvae.fit(model, guide, x, num_epochs=1, batch_size=8, progress=False)


def labelled_pair():
    """A conditional model whose labels index a table: float labels would fail."""
    table = torch.nn.Embedding(3, X_DIM)
    encoder = torch.nn.Linear(X_DIM, 2)

    def model(x, y):
        pyro.module("table", table)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            logits = table(y) + z
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x, y):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


def test_labels_stay_integers_while_the_data_are_converted():
    model, guide = labelled_pair()
    x, y = binary(), torch.arange(24) % 3
    reference = pvae.log_likelihood(model, guide, (x, y), 5, seed=0).per_datapoint
    as_numpy = (x.double().numpy(), y.numpy())
    assert torch.equal(
        pvae.log_likelihood(model, guide, as_numpy, 5, seed=0).per_datapoint, reference
    )
    pvae.fit(model, guide, (x.double(), y), held_out=as_numpy, num_epochs=1, progress=False)


REFUSED = {
    "integers 0..5": (lambda x: (x * 5).long(), "integers other than 0 and 1 .5 at row 0"),
    "complex": (lambda x: x.to(torch.complex64), "complex values"),
    "object array": (lambda x: x.numpy().astype(object), "numpy array of object values"),
    "text": (lambda x: x.numpy().astype(str), "numpy array of <U32 values"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_data_without_a_meaning_as_numbers_are_refused_in_one_line(entry, case):
    make, message = REFUSED[case]
    x = binary()
    x[0, 0] = 1.0
    with pytest.raises(ValueError, match=message) as caught:
        ENTRY_POINTS[entry](make(x))
    assert "\n" not in str(caught.value)


def test_float64_values_too_large_for_float32_are_refused():
    x = binary().double()
    x[5, 2] = 1e300
    with pytest.raises(ValueError, match=r"beyond the largest torch.float32 .* row 5, column 2"):
        ENTRY_POINTS["log_likelihood"](x)


TINY = ["--z-dim", "2", "--hidden-dims", "8", "--num-samples", "5", "--batch-size", "16"]


def test_pvae_train_and_evaluate_take_a_float64_npy(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", rng.normal(size=(40, X_DIM)))  # numpy's float64
    out = tmp_path / "run"
    argv = ["train", str(tmp_path / "feats.npy"), "--likelihood", "normal", "-n", "1"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    assert "held-out IWAE_5" in capsys.readouterr().out
    evaluate = ["evaluate", str(out / "checkpoint.pt"), "-k", "5"]
    assert main([*evaluate, "--data", str(tmp_path / "feats.npy")]) == 0
    assert "40 rows of" in capsys.readouterr().out


def test_pvae_train_takes_an_int64_table_of_0_and_1(tmp_path, capsys):
    table = (np.random.default_rng(0).random((40, X_DIM)) < 0.3).astype(np.int64)
    np.save(tmp_path / "table.npy", table)  # a Bernoulli likelihood, binarized as it is
    argv = ["train", str(tmp_path / "table.npy"), "-n", "1", *TINY, "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "held-out IWAE_5" in capsys.readouterr().out


def test_finding_the_dtype_leaves_a_seeded_fit_to_its_seed():
    """The dtype probe registers nothing: a parameter with a random start draws it from fit's
    seed, whatever the global generator held before."""
    encoder = torch.nn.Linear(X_DIM, 4)

    def model(x):
        bias = pyro.param("bias", torch.randn(X_DIM))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = bias + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def bias_after_fit(global_seed):
        pyro.clear_param_store()
        torch.manual_seed(global_seed)
        pvae.fit(model, guide, binary().double(), num_epochs=1, seed=3, progress=False)
        return pyro.param("bias").detach().clone()

    assert torch.equal(bias_after_fit(0), bias_after_fit(1))
