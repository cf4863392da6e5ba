"""A checkpoint of a VAE built from a user's own registered class loads in a fresh process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pvae
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.priors import PRIORS

ROOT = Path(__file__).resolve().parents[1]

# A user's module: a likelihood (a fixed-scale Gaussian) and a prior (a wider standard
# normal), registered by the user's script, not by the module itself.
USER_MODULE = """
import pyro.distributions as dist
import torch
from torch import nn


class FixedNormal(nn.Module):
    params_per_dim = 1

    def forward(self, loc, event_dim):
        return dist.Normal(loc, 0.5).to_event(event_dim)

    def mean(self, loc, event_dim=1):
        return loc

    def check_data(self, x):
        pass


class Parts:  # a nested class: its qualified name is Parts.WidePrior
    class WidePrior(nn.Module):
        def __init__(self, z_dim):
            super().__init__()
            self.z_dim = z_dim
            self.register_buffer("scale", torch.tensor(2.0))

        def forward(self):
            return dist.Normal(torch.zeros(self.z_dim), self.scale).to_event(1)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``user_parts`` written to tmp_path, importable here, registered under user names."""
    (tmp_path / "user_parts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_parts

    monkeypatch.setitem(LIKELIHOODS, "fixed_normal", user_parts.FixedNormal)
    monkeypatch.setitem(PRIORS, "wide", user_parts.Parts.WidePrior)
    yield user_parts
    sys.modules.pop("user_parts", None)


def run_python(code, *paths):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )


def saved_vae(path):
    vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], likelihood="fixed_normal", prior="wide")
    pvae.save_checkpoint(path, pvae.vae_state(vae))
    return vae


def test_a_fresh_process_loads_a_checkpoint_of_user_parts_from_their_module(user_module, tmp_path):
    vae = saved_vae(tmp_path / "c.pt")
    state = pvae.load_checkpoint(tmp_path / "c.pt")
    assert state["custom_parts"] == {
        "prior": {"name": "wide", "module": "user_parts", "qualname": "Parts.WidePrior"},
        "likelihood": {"name": "fixed_normal", "module": "user_parts", "qualname": "FixedNormal"},
    }
    x = torch.randn(4, 5)
    torch.save(x, tmp_path / "x.pt")
    torch.save(vae.reconstruct(x), tmp_path / "expected.pt")
    # The fresh process registers nothing: load_vae imports user_parts and registers both.
    done = run_python(
        f"""
        import torch, pvae
        vae, _ = pvae.load_vae({str(tmp_path / "c.pt")!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(vae.reconstruct(x), expected)
        print(type(vae.likelihood).__qualname__, type(vae.prior).__qualname__)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FixedNormal", "Parts.WidePrior"]


def test_a_module_that_cannot_be_imported_is_named(user_module, tmp_path, monkeypatch):
    saved_vae(tmp_path / "c.pt")
    # As in a process without the module's directory on its path and nothing registered.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.delitem(sys.modules, "user_parts")
    monkeypatch.delitem(LIKELIHOODS, "fixed_normal")
    monkeypatch.delitem(PRIORS, "wide")
    message = r"its prior 'wide' is user_parts.Parts.WidePrior, but importing module 'user_parts'"
    with pytest.raises(ValueError, match=message + r" failed \(ModuleNotFoundError.*PYTHONPATH"):
        pvae.load_vae(tmp_path / "c.pt")


def test_a_class_the_module_no_longer_has_is_named(user_module, tmp_path, monkeypatch):
    saved_vae(tmp_path / "c.pt")
    monkeypatch.delattr(user_module, "FixedNormal")
    monkeypatch.delitem(LIKELIHOODS, "fixed_normal")
    with pytest.raises(ValueError, match="module 'user_parts' has no 'FixedNormal'"):
        pvae.load_vae(tmp_path / "c.pt")


def test_another_class_registered_under_the_name_is_refused(user_module, tmp_path, monkeypatch):
    saved_vae(tmp_path / "c.pt")
    monkeypatch.setitem(LIKELIHOODS, "fixed_normal", LIKELIHOODS["bernoulli"])
    with pytest.raises(ValueError, match="registered here as pvae.models.likelihoods.Bernoulli"):
        pvae.load_vae(tmp_path / "c.pt")


def test_a_class_defined_in_main_warns_at_saving_and_is_refused_elsewhere(tmp_path):
    done = run_python(
        f"""
        import pvae
        from pvae.models.real_likelihoods import NormalLikelihood

        class ScriptNormal(NormalLikelihood):  # defined in the script: __main__
            pass

        pvae.likelihoods.LIKELIHOODS["script_normal"] = ScriptNormal
        vae = pvae.build_vae(3, z_dim=2, hidden_dims=[4], likelihood="script_normal")
        pvae.save_checkpoint({str(tmp_path / "c.pt")!r}, pvae.vae_state(vae))
        pvae.load_vae({str(tmp_path / "c.pt")!r})  # where it is registered, it loads
        """
    )
    assert done.returncode == 0, done.stderr
    assert "UserWarning: the likelihood 'script_normal' is __main__.ScriptNormal" in done.stderr
    assert "move the class into a module of its own" in done.stderr
    # This process is not that script: the class cannot be found here.
    message = r"__main__.ScriptNormal, defined in a script.*move the class into a module"
    with pytest.raises(ValueError, match=message):
        pvae.load_vae(tmp_path / "c.pt")


def test_checkpoints_of_pvaes_own_parts_name_no_module(tmp_path):
    vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], likelihood="normal", prior="vamp")
    assert "custom_parts" not in pvae.vae_state(vae)
