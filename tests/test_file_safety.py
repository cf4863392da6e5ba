"""No file chooses code: a checkpoint or config that names a callable, or a module whose
import runs code, runs nothing through any of pvae's entry points (issue 27)."""

import importlib
import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

import pvae
from pvae.cli import main, run_script
from pvae.config import parse_yaml
from pvae.models.custom_parts import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]
MODULE = "pvae_test_payload_parts"  # importable from tmp_path, never imported by loading
X_DIM = 5


@pytest.fixture(scope="module")
def fit_state(tmp_path_factory):
    """A genuine checkpoint of pvae.fit (training state, VAE, run settings) to arm."""
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[8])
    path = tmp_path_factory.mktemp("fit") / "checkpoint.pt"
    x = torch.bernoulli(torch.full((8, X_DIM), 0.5))
    config = pvae.Config(num_epochs=1, z_dim=2, hidden_dims=[8], prior="standard_normal")
    extra = lambda: pvae.vae_state(vae, config=config.to_dict())  # noqa: E731
    pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=4, checkpoint_path=path,
             checkpoint_extra=extra)  # fmt: skip
    return torch.load(path, weights_only=True)


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A file that code run by a payload would create; ``MODULE`` creates it on import."""
    path = tmp_path / "code_ran"
    (tmp_path / f"{MODULE}.py").write_text(
        f"open({str(path)!r}, 'w').close()\nclass Likelihood:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop(MODULE, None)


def armed(state, marker, payload):
    """``state`` whose VAE names a part that runs code: as the old loader resolved
    ``custom_parts`` (import the module, take the attribute, call it), it would run."""
    kind, name, module, qualname, options = {
        # subprocess.Popen(args=[...]) as a likelihood: build_vae calls cls(**options).
        "popen": ("likelihood", "popen", "subprocess", "Popen", {"args": ["touch", marker]}),
        "os.system": ("prior", "system", "os", "system", {}),
        # Importing the module is enough: it writes the marker at import.
        "import": ("likelihood", "payload", MODULE, "Likelihood", {}),
        # A name of pvae's own, recorded as someone else's class.
        "pvae's name": ("likelihood", "bernoulli", "subprocess", "Popen", {}),
    }[payload]
    options = {key: [str(v) for v in value] for key, value in options.items()}
    model_args = {**state["model_args"], kind: name, f"{kind}_options": options}
    config = {**state["config"], kind: name, f"{kind}_options": options}
    record = {"name": name, "module": module, "qualname": qualname}
    return {**state, "model_args": model_args, "config": config, "custom_parts": {kind: record}}


def old_loader(state):
    """What pvae did before issue 27: import and register what custom_parts names, build."""
    for kind, record in state["custom_parts"].items():
        target = importlib.import_module(record["module"])
        for attribute in record["qualname"].split("."):
            target = getattr(target, attribute)
        REGISTRIES[kind].setdefault(record["name"], target)
    pvae.build_vae(**state["model_args"])


def ran(marker, wait=0.0):
    """Whether the payload's code ran (a spawned process may take a moment)."""
    deadline = time.monotonic() + wait
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return marker.exists()


@pytest.mark.parametrize("payload", ["popen", "import"])
def test_the_payloads_would_run_code_if_loading_imported_what_they_name(
    fit_state, marker, registries, payload
):
    # The code runs before anything fails (the part is no likelihood): any error will do.
    with pytest.raises(Exception):  # noqa: B017
        old_loader(armed(fit_state, marker, payload))
    assert ran(marker, wait=5)


def mnist_svi_resume(path, tmp_path):
    """``python examples/mnist_svi.py --resume PATH``, in this process."""
    spec = importlib.util.spec_from_file_location("mnist_svi", ROOT / "examples/mnist_svi.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parser().parse_args(["--resume", str(path), "--out", str(tmp_path / "o")])
    run_script(example.main, args)


def raises_one_line(call):
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)


def exits_with_one_line(call, capsys):
    with pytest.raises(SystemExit) as stopped:
        call()
    assert stopped.value.code == 2
    return capsys.readouterr().err


def cli(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


ENTRY_POINTS = {
    "pvae.load": lambda p, t, c: raises_one_line(lambda: pvae.load(p)),
    "pvae.load_vae": lambda p, t, c: raises_one_line(lambda: pvae.load_vae(p, "cpu")),
    "load_vae custom_parts": lambda p, t, c: raises_one_line(
        lambda: pvae.load_vae(p, custom_parts=[torch.nn.Linear])
    ),
    "pvae evaluate": lambda p, t, c: cli(["evaluate", str(p), "--no-progress"], c),
    "pvae evaluate --method ais": lambda p, t, c: cli(["evaluate", str(p), "--method", "ais"], c),
    "pvae sample": lambda p, t, c: cli(
        ["sample", str(p), "--num-samples", "2", "--out", str(t / "s.npz")], c
    ),
    "pvae train --resume": lambda p, t, c: cli(["train", "--resume", str(p)], c),
    "mnist_svi.py --resume": lambda p, t, c: exits_with_one_line(lambda: mnist_svi_resume(p, t), c),
}


# examples/mnist_svi.py builds its VAE from the run's settings, never from custom_parts: a
# record that misnames one of pvae's parts is no payload there.
CASES = [
    (entry, payload)
    for entry in ENTRY_POINTS
    for payload in ("popen", "os.system", "import", "pvae's name")
    if (entry, payload) != ("mnist_svi.py --resume", "pvae's name")
]


@pytest.mark.parametrize("entry, payload", CASES)
def test_no_entry_point_runs_what_a_checkpoint_names(
    fit_state, marker, registries, tmp_path, capsys, payload, entry
):
    path = pvae.save_checkpoint(tmp_path / "payload.pt", armed(fit_state, marker, payload))
    before = {kind: dict(registry) for kind, registry in REGISTRIES.items()}
    message = ENTRY_POINTS[entry](path, tmp_path, capsys).strip()
    assert "\n" not in message and str(path) in message
    # (examples/mnist_svi.py reads the run's settings first: their check names the part.)
    assert any(words in message for words in ("not registered", "registered here", "unknown"))
    assert MODULE not in sys.modules
    assert {kind: dict(registry) for kind, registry in REGISTRIES.items()} == before
    assert not (tmp_path / "o").exists()  # nothing written before the checkpoint is checked
    assert not ran(marker, wait=0.2 if payload == "popen" else 0)


@pytest.mark.parametrize("payload", ["popen", "import"])
def test_fit_resumes_the_callers_model_and_ignores_what_the_file_names(
    fit_state, marker, registries, tmp_path, payload
):
    # fit trains the model and guide it is given: the checkpoint's VAE is never built.
    path = pvae.save_checkpoint(tmp_path / "payload.pt", armed(fit_state, marker, payload))
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((8, X_DIM), 0.5))
    result = pvae.fit(vae.model, vae.guide, x, num_epochs=2, batch_size=4, resume=path)
    assert [stats.epoch for stats in result.history] == [1, 2]
    assert MODULE not in sys.modules
    assert not ran(marker, wait=0.2)


def test_the_expected_class_and_the_fix_are_named(fit_state, marker, registries, tmp_path):
    path = pvae.save_checkpoint(tmp_path / "p.pt", armed(fit_state, marker, "import"))
    message = raises_one_line(lambda: pvae.load(path))
    assert message == (
        f"{path}: its likelihood 'payload' is {MODULE}.Likelihood, not registered in this "
        "process (pvae never imports what a file names): if you trust it, import the module "
        f"that registers it, e.g. `import {MODULE}` (on the command line: pvae --import "
        f"{MODULE} ...), or pass custom_parts=[Likelihood] to pvae.load"
    )


YAML_PAYLOADS = [
    "likelihood_options: !!python/object/apply:os.system ['touch {marker}']",
    "likelihood_options: {{args: !!python/object/apply:os.system ['touch {marker}']}}",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "likelihood: !!python/name:subprocess.Popen",
]


@pytest.mark.parametrize("text", YAML_PAYLOADS)
def test_yaml_configs_and_option_flags_hold_plain_data_only(tmp_path, capsys, marker, text):
    text = text.format(marker=marker)
    with pytest.raises(ValueError, match="is not valid YAML"):
        parse_yaml(text)
    (tmp_path / "evil.yaml").write_text(text)
    (tmp_path / "data.npy").write_bytes(b"")
    assert "not valid YAML" in cli(["train", str(tmp_path / "data.npy"), "--config",
                                    str(tmp_path / "evil.yaml")], capsys)  # fmt: skip
    options = text.partition(": ")[2] or text
    argv = ["train", str(tmp_path / "data.npy"), "--likelihood-options", options]
    assert "error:" in cli(argv, capsys)
    assert not ran(marker, wait=0.2)


def test_options_go_to_registered_classes_only(tmp_path, capsys, marker):
    # A name that is not registered is refused before any option is looked at.
    config = f"likelihood: popen\nlikelihood_options: {{args: [touch, {marker}]}}\n"
    (tmp_path / "c.yaml").write_text(config)
    with pytest.raises(ValueError, match="unknown likelihood 'popen': choose one of bernoulli"):
        pvae.load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="unknown likelihood 'popen'"):
        pvae.build_vae(3, likelihood="popen", likelihood_options={"args": ["touch", "x"]})
    assert not ran(marker, wait=0.2)
