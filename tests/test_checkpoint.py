import os
import pickle

import pytest
import torch

import pvae
import pvae.cli


def trained_vae():
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8])
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    result = pvae.fit(vae.model, vae.guide, x, num_epochs=2, batch_size=16)
    return vae, result, x


def test_checkpoint_round_trip_rebuilds_the_same_vae(tmp_path):
    vae, result, x = trained_vae()
    path = pvae.save_checkpoint(
        tmp_path / "run" / "checkpoint.pt",
        pvae.vae_state(
            vae,
            optimizer=result.optimizer.state_dict(),
            epoch=2,
            history=result.history_dicts(),
            config={"z_dim": 3},
        ),
    )
    loaded, state = pvae.load_vae(path)
    assert state["epoch"] == 2 and state["config"] == {"z_dim": 3}
    assert state["history"] == result.history_dicts()
    assert state["pvae_version"] == pvae.__version__
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
    assert loaded.model_args == vae.model_args
    # Nothing but the checkpoint is left in the directory: the temporary file was renamed.
    assert os.listdir(path.parent) == ["checkpoint.pt"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = pvae.save_checkpoint(tmp_path / "c.pt", {"epoch": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        pvae.save_checkpoint(path, {"epoch": 2, "bad": Unsaveable()})
    assert pvae.load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b""), "not a readable pvae checkpoint"),
        (lambda p: p.write_text("just text"), "not a readable pvae checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps(Exploit())), "pvae never unpickles"),
        (lambda p: torch.save({"format": "pvae-checkpoint", "x": Exploit()}, p), "could run code"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not a pvae checkpoint"),
    ],
)
def test_bad_checkpoint_files_are_refused_without_running_code(
    tmp_path, monkeypatch, write, message
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(ValueError, match=message):
        pvae.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    vae, _, _ = trained_vae()
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(vae))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable pvae checkpoint"):
        pvae.load_checkpoint(path)


def test_checkpoint_whose_weights_do_not_fit_its_architecture_is_refused(tmp_path):
    vae, _, _ = trained_vae()
    state = pvae.vae_state(vae)
    state["model_args"] = {**state["model_args"], "z_dim": 5}
    path = pvae.save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(ValueError, match="does not match the architecture"):
        pvae.load_vae(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at"):
        pvae.load_checkpoint(tmp_path / "nope.pt")


def test_a_fit_checkpoint_with_the_vae_state_stores_each_weight_once(tmp_path):
    # "params" (Pyro's names) and "model" (the state dict) hold the same tensors: torch.save
    # writes a shared storage once, so the file is the weights plus Adam's two moments.
    x = torch.bernoulli(torch.full((64, 50), 0.3))
    vae = pvae.build_vae(50, z_dim=4, hidden_dims=[256])  # weights: 117 kB
    path = tmp_path / "c.pt"
    extra = lambda: pvae.vae_state(vae)  # noqa: E731
    pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=32, checkpoint_path=path,
             checkpoint_extra=extra)  # fmt: skip
    weight_bytes = sum(p.numel() * p.element_size() for p in vae.parameters())
    # Another copy of the weights would add 117 kB, more than the rest of the file.
    assert 3 * weight_bytes < path.stat().st_size < 3 * weight_bytes + 60_000


def fit_checkpoint(tmp_path):
    """A checkpoint of pvae.fit with the VAE's architecture, as a dictionary to damage."""
    vae = pvae.build_vae(6, z_dim=2, hidden_dims=[4])
    x = torch.bernoulli(torch.full((8, 6), 0.5))
    path = tmp_path / "fit.pt"
    pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=4, checkpoint_path=path,
             checkpoint_extra=lambda: pvae.vae_state(vae))  # fmt: skip
    return torch.load(path, weights_only=True), x


def resume(path, x):
    vae = pvae.build_vae(6, z_dim=2, hidden_dims=[4])
    return pvae.fit(vae.model, vae.guide, x, batch_size=4, more_epochs=1, resume=path)


DAMAGES = {
    "no params": (lambda s: s.pop("params"), "has no entry 'params': resume from"),
    "no model": (lambda s: s.pop("model"), "has no entry 'model'"),
    "params a string": (
        lambda s: s.update(params="weights"),
        r"its entry 'params' must be a mapping of strings to tensors, got 'weights' \(str\)",
    ),
    "model a string": (lambda s: s.update(model="weights"), "its entry 'model' must be a mapping"),
    "a newer format": (
        lambda s: s.update(format_version=99, pvae_version="7.0"),
        r"written by a newer pvae 7.0 \(checkpoint format 99; this pvae .* reads up to 1\): "
        "upgrade pvae",
    ),
    "no format_version": (lambda s: s.pop("format_version"), "its format_version is None"),
    "model_args a list": (lambda s: s.update(model_args=[1]), "model_args must be a mapping"),
    "z_dim a string": (
        lambda s: s["model_args"].update(z_dim="2"),
        r"model_args: its entry 'z_dim' must be an integer, got '2' \(str\)",
    ),
    "an unknown model_args key": (
        lambda s: s["model_args"].update(depth=3),
        "model_args hold 'depth', which this pvae's build_vae does not take",
    ),
    "optimizer without param_groups": (
        lambda s: s["optimizer"].pop("param_groups"),
        "optimizer has no entry 'param_groups'",
    ),
    "learning rate None": (
        lambda s: s["optimizer"]["param_groups"][0].update(lr=None),
        r"optimizer param_groups: '\[0\].lr' must be a number, got None",
    ),
    "training history of strings": (
        lambda s: s["training"].update(history=["epoch 1"]),
        "its entry 'history' must be a list of values",
    ),
    "custom_parts a string": (
        lambda s: s.update(custom_parts="os.system"),
        "custom_parts must be a mapping, got str",
    ),
}
READERS = {
    "load_vae": lambda path, x: pvae.load_vae(path),
    "fit(resume=)": resume,
    "pvae train --resume": lambda path, x: pvae.runs.resumable_checkpoint(str(path)),
}
# What each reader needs: load_vae the VAE, fit the training state, the command both.
NEEDS = {
    "load_vae": {"no model", "model a string", "model_args a list", "z_dim a string",
                 "an unknown model_args key", "custom_parts a string"},
    "fit(resume=)": {"no params", "params a string", "optimizer without param_groups",
                     "learning rate None", "training history of strings"},
}  # fmt: skip
NEEDS["pvae train --resume"] = NEEDS["fit(resume=)"] - {"learning rate None"} | {
    "model_args a list",
    "z_dim a string",
    "an unknown model_args key",
    "custom_parts a string",
}
CASES = [
    (reader, damage)
    for reader in READERS
    for damage in DAMAGES
    if damage in NEEDS[reader] or damage in ("a newer format", "no format_version")
]


@pytest.mark.parametrize("reader, damage", CASES)
def test_a_damaged_checkpoint_is_one_clear_error_naming_the_file(tmp_path, reader, damage):
    state, x = fit_checkpoint(tmp_path)
    change, message = DAMAGES[damage]
    change(state)
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message) as error:
        READERS[reader](path, x)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
