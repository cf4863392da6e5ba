"""A checkpoint of a VAE built from a user's own registered class: named in the file, loaded
only where that class is registered (by the user's code, or passed as ``custom_parts=``)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pvae
from pvae.cli import main
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import NETWORKS
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
def user_module(tmp_path, monkeypatch, registries):
    """``user_parts`` written to tmp_path, importable here, registered under user names."""
    (tmp_path / "user_parts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_parts

    LIKELIHOODS["fixed_normal"] = user_parts.FixedNormal
    PRIORS["wide"] = user_parts.Parts.WidePrior
    yield user_parts
    sys.modules.pop("user_parts", None)


def unregister():
    """As in a fresh process that has not registered the user's parts."""
    del LIKELIHOODS["fixed_normal"], PRIORS["wide"]


def run_python(code, *paths):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )


def saved_vae(path):
    vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], likelihood="fixed_normal", prior="wide")
    pvae.save_checkpoint(path, pvae.vae_state(vae))
    return vae


def test_the_checkpoint_names_each_user_part_and_its_class(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    assert pvae.load_checkpoint(tmp_path / "c.pt")["custom_parts"] == {
        "prior": {"name": "wide", "module": "user_parts", "qualname": "Parts.WidePrior"},
        "likelihood": {"name": "fixed_normal", "module": "user_parts", "qualname": "FixedNormal"},
    }


def test_parts_registered_in_this_process_load(user_module, tmp_path):
    vae = saved_vae(tmp_path / "c.pt")
    x = torch.randn(4, 5)
    loaded = pvae.load(tmp_path / "c.pt")
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
    assert type(loaded.likelihood) is user_module.FixedNormal


@pytest.mark.parametrize("given", ["classes", "mapping"])
def test_parts_passed_as_custom_parts_load_and_stay_registered(user_module, tmp_path, given):
    vae = saved_vae(tmp_path / "c.pt")
    unregister()
    classes = [user_module.Parts.WidePrior, user_module.FixedNormal]
    if given == "mapping":
        classes = {"wide": classes[0], "fixed_normal": classes[1]}
    loaded, _ = pvae.load_vae(tmp_path / "c.pt", custom_parts=classes)
    x = torch.randn(4, 5)
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
    # Registered as LIKELIHOODS[name] = cls would: the loaded VAE saves and loads again.
    assert LIKELIHOODS["fixed_normal"] is user_module.FixedNormal
    loaded.save(tmp_path / "again.pt")
    assert pvae.load_checkpoint(tmp_path / "again.pt")["custom_parts"]["prior"]["name"] == "wide"


def test_classes_the_checkpoint_does_not_use_are_left_alone(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    unregister()
    parts = [user_module.FixedNormal, user_module.Parts.WidePrior, torch.nn.Linear]
    pvae.load(tmp_path / "c.pt", custom_parts=parts)
    assert "Linear" not in LIKELIHOODS and "Linear" not in PRIORS


def test_a_part_not_registered_here_is_named_and_not_imported(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    unregister()
    del sys.modules["user_parts"]  # and the module importable, but not imported
    message = (
        r"c.pt: its prior 'wide' is user_parts.Parts.WidePrior and its likelihood "
        r"'fixed_normal' is user_parts.FixedNormal, not registered in this process \(pvae never "
        r"imports what a file names\): if you trust them, import the module that registers "
        r"them, e.g. `import user_parts` \(on the command line: pvae --import user_parts "
        r"\.\.\.\), or pass custom_parts=\[WidePrior, FixedNormal\] to pvae.load$"
    )
    with pytest.raises(ValueError, match=message):
        pvae.load_vae(tmp_path / "c.pt")
    assert "user_parts" not in sys.modules


def test_the_command_line_imports_the_module_the_user_names(user_module, tmp_path, capsys):
    saved_vae(tmp_path / "c.pt")
    unregister()
    del sys.modules["user_parts"]
    # The user's module registers its parts when imported, as a module of one's own does.
    (tmp_path / "my_registry.py").write_text(
        "import user_parts\nfrom pvae.models.likelihoods import LIKELIHOODS\n"
        "from pvae.models.priors import PRIORS\n"
        "LIKELIHOODS['fixed_normal'] = user_parts.FixedNormal\n"
        "PRIORS['wide'] = user_parts.Parts.WidePrior\n"
    )
    out = tmp_path / "s.npz"
    sample = [
        "sample",
        str(tmp_path / "c.pt"),
        "--num-samples",
        "2",
        "--image-shape",
        "1",
        "1",
        "5",
    ]
    assert main([*sample, "--out", str(out)]) == 2
    assert "pvae --import user_parts" in capsys.readouterr().err
    assert main(["--import", "my_registry", *sample, "--out", str(out)]) == 0
    assert out.exists()
    assert main(["--import", "no_such_module", *sample, "--out", str(out)]) == 2
    assert "error: --import no_such_module: cannot import it" in capsys.readouterr().err
    sys.modules.pop("my_registry", None)


def test_another_class_registered_under_the_name_is_refused(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    LIKELIHOODS["fixed_normal"] = LIKELIHOODS["bernoulli"]
    message = (
        r"its likelihood 'fixed_normal' is user_parts.FixedNormal, but 'fixed_normal' is "
        r"registered here as pvae.models.likelihoods.BernoulliLikelihood"
    )
    with pytest.raises(ValueError, match=message):
        pvae.load_vae(tmp_path / "c.pt")


def test_another_class_given_under_the_name_is_refused_and_not_registered(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    unregister()
    other = LIKELIHOODS["gaussian"]
    with pytest.raises(ValueError, match="'fixed_normal' is given here as .*GaussianLikelihood"):
        pvae.load_vae(tmp_path / "c.pt", custom_parts={"fixed_normal": other, "wide": int})
    assert "fixed_normal" not in LIKELIHOODS and "wide" not in PRIORS


def test_a_given_class_that_clashes_with_a_registered_one_is_refused(user_module, tmp_path):
    saved_vae(tmp_path / "c.pt")
    LIKELIHOODS["fixed_normal"] = LIKELIHOODS["gaussian"]
    with pytest.raises(ValueError, match="custom_parts gives user_parts.FixedNormal .* already"):
        pvae.load_vae(tmp_path / "c.pt", custom_parts=[user_module.FixedNormal])


@pytest.mark.parametrize("given", ["FixedNormal", "class", [1]])
def test_custom_parts_must_be_classes(user_module, tmp_path, given):
    saved_vae(tmp_path / "c.pt")
    given = user_module.FixedNormal if given == "class" else given
    with pytest.raises(TypeError, match="custom_parts must"):
        pvae.load_vae(tmp_path / "c.pt", custom_parts=given)


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
    assert "this checkpoint loads only where that code registers" in done.stderr
    # This process is not that script: the class is not registered here.
    message = r"__main__.ScriptNormal, not registered .* run the code that defines and registers it"
    with pytest.raises(ValueError, match=message):
        pvae.load_vae(tmp_path / "c.pt")


def test_checkpoints_of_pvaes_own_parts_name_no_module(tmp_path):
    vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], likelihood="normal", prior="vamp")
    assert "custom_parts" not in pvae.vae_state(vae)


def test_a_network_of_ones_own_is_a_function_and_loads_passed_as_custom_parts(tmp_path, registries):
    def tiny_networks(x_dim, z_dim, image_shape, sizes):  # defined in a function: <locals>
        return NETWORKS["mlp"](x_dim, z_dim, image_shape, sizes)

    NETWORKS["tiny"] = tiny_networks
    with pytest.warns(UserWarning, match="network 'tiny' is .*<locals>.tiny_networks"):
        vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], network="tiny")
        pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(vae))
    del NETWORKS["tiny"]
    with pytest.raises(ValueError, match=r"pass custom_parts=\[tiny_networks\]"):
        pvae.load(tmp_path / "c.pt")
    assert pvae.load(tmp_path / "c.pt", custom_parts=[tiny_networks]).model_args == vae.model_args


@pytest.mark.parametrize(
    "record, message",
    [
        ({"name": "fixed_normal", "module": "os\nimport x", "qualname": "system"},
         r"module 'os\\nimport x' is not a Python name"),
        ({"name": "other", "module": "user_parts", "qualname": "FixedNormal"},
         "records the likelihood 'other', but its model_args name 'fixed_normal'"),
        ({"name": "fixed_normal", "module": "user_parts"}, "likelihood has no entry 'qualname'"),
    ],
)  # fmt: skip
def test_a_damaged_record_is_one_clear_error(user_module, tmp_path, record, message):
    vae = pvae.build_vae(5, z_dim=2, hidden_dims=[8], likelihood="fixed_normal")
    state = {**pvae.vae_state(vae), "custom_parts": {"likelihood": record}}
    path = pvae.save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(ValueError, match=message) as error:
        pvae.load_vae(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
