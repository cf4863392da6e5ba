import os
import pickle

import pytest
import torch

import pvae


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
        (lambda p: p.write_bytes(pickle.dumps(Exploit())), "not a readable pvae checkpoint"),
        (lambda p: torch.save({"format": "pvae-checkpoint", "x": Exploit()}, p), "would run code"),
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
