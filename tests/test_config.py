"""YAML run configurations: checked key by key, and round-tripped file -> run -> checkpoint."""

import argparse
import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pvae
from pvae.config import Config, load_config, parse_yaml, read_config_file, save_config
from pvae.infer.settings import TRAIN_KEYS, TrainConfig
from pvae.models.settings import ARCHITECTURE_KEYS, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
EXAMPLE = ROOT / "examples" / "mnist_svi.py"
TINY = ["-n", "2", "--batch-size", "500", "--hidden-dims", "32", "--num-samples", "30"]


def test_there_is_a_config_for_the_default_each_variant_and_the_iwae_paper():
    names = {path.stem for path in CONFIGS}
    assert {"default", "beta_vae", "conditional", "adversarial", "iwae_paper"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_is_valid_and_builds_its_vae(path):
    config = load_config(path)
    vae = pvae.build_vae(**config.model_args(784, (1, 28, 28)))
    assert vae.model_args["prior"] == config.prior and vae.z_dim == config.z_dim
    assert set(read_config_file(path)) <= set(config.to_dict())


def test_default_config_file_is_the_config_defaults():
    assert load_config(ROOT / "examples" / "configs" / "default.yaml") == Config()


def test_trace_elbo_is_one_setting_away_from_the_default_objective():
    # The default is DReG with K = 5; objective "elbo" alone is the one-particle Trace_ELBO,
    # which a beta-VAE and an adversarial autoencoder get without asking.
    assert (Config().objective, Config().num_particles) == ("dreg", 5)
    assert Config.from_dict({"objective": "elbo"}).num_particles == 1
    assert Config.from_dict({"objective": "iwae", "num_particles": 50}).num_particles == 50
    for variant in ({"beta": 4.0}, {"warmup_epochs": 10}, {"adversarial": True}):
        config = Config.from_dict(variant)
        assert (config.objective, config.num_particles) == ("elbo", 1), variant


def test_the_default_prior_is_a_vamp_prior_the_variants_and_one_flag_make_it_n01():
    # benchmarks/default_example.py chose 100 pseudo-inputs; a conditional VAE, a hierarchy,
    # an adversarial autoencoder, a beta-VAE, a conv network and other likelihoods get
    # N(0, I) without asking, and --prior standard_normal gives the plain VAE.
    assert (Config().prior, Config().prior_options) == ("vamp", {"num_components": 100})
    assert Config.from_dict({"prior_options": {"num_components": 7}}).prior_options == {
        "num_components": 7
    }
    variants = (
        {"conditional": True},
        {"hierarchy": [10, 50]},
        {"adversarial": True},
        {"beta": 4.0},
        {"warmup_epochs": 10},
        {"network": "conv"},
        {"likelihood": "continuous_bernoulli"},
        {"prior": "standard_normal"},
    )
    for variant in variants:
        config = Config.from_dict(variant)
        assert (config.prior, config.prior_options) == ("standard_normal", {}), variant


def test_iwae_paper_config_is_the_papers_architecture():
    config = load_config(ROOT / "examples" / "configs" / "iwae_paper.yaml")
    assert (config.hidden_dims, config.z_dim, config.activation) == ([200, 200], 50, "tanh")
    assert (config.objective, config.num_particles, config.num_samples) == ("iwae", 50, 5000)
    assert config.prior == "standard_normal"


def test_save_and_load_give_back_the_same_config(tmp_path):
    config = Config.from_dict(
        {"prior": "mog", "prior_options": {"num_components": 7}, "learning_rate": 3e-4}
    )
    assert load_config(save_config(config, tmp_path / "c.yaml")) == config
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == config.to_dict()


def test_yaml_exponents_are_numbers_and_flags_override_the_file(tmp_path):
    assert parse_yaml("learning_rate: 1e-3") == {"learning_rate": 0.001}  # YAML 1.1: a string
    path = tmp_path / "c.yaml"
    path.write_text("z_dim: 6\nlearning_rate: 1e-3\nbatch_size: 64\n")
    config = load_config(path, z_dim=3)
    assert (config.z_dim, config.learning_rate, config.batch_size) == (3, 1e-3, 64)
    assert Config.from_dict({"beta": 2}).beta == 2.0  # an integer is a fine float


@pytest.mark.parametrize(
    "values, match",
    [
        ({"z_dims": 3}, "unknown config key 'z_dims' in .* .did you mean 'z_dim'.*valid keys:"),
        ({"z_dim": "20"}, "config key 'z_dim' must be an integer, got '20' .str."),
        ({"z_dim": 2.5}, "config key 'z_dim' must be an integer"),
        ({"conditional": "yes"}, "config key 'conditional' must be true or false"),
        ({"hidden_dims": 400}, "config key 'hidden_dims' must be a list of integers"),
        ({"prior_options": [3]}, "config key 'prior_options' must be a mapping"),
        ({"clip_norm": "none"}, "config key 'clip_norm' must be a number or null"),
        ({"prior": "laplace"}, "config key 'prior': unknown prior 'laplace': choose one of"),
        ({"likelihood": "poisson"}, "config key 'likelihood': unknown likelihood 'poisson'"),
        ({"guide": "maf"}, "config key 'guide': unknown guide 'maf': choose one of gaussian"),
        ({"network": "resnet"}, "config key 'network': unknown network 'resnet'"),
        (
            {"prior": "mog", "prior_options": {"k": 3}},
            "config key 'prior_options': prior 'mog' has no option 'k' .its options: num_comp",
        ),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"beta": 4.0, "objective": "iwae"}, "objective 'iwae' ignores: use objective elbo"),
        ({"digit": 3}, "digit = 3 draws a chosen class, which needs a conditional VAE"),
        ({"conditional": True, "digit": 12}, "digit must be a class label in 0..9"),
        ({"conditional": True, "prior": "vamp"}, "prior 'vamp' pushes pseudo-inputs"),
        ({"adversarial": True, "guide": "iaf"}, "adversarial autoencoder takes no guide setting"),
        ({"adversarial": True, "objective": "stl"}, "trains with objective 'elbo', not 'stl'"),
        ({"adversarial": True, "conditional": True}, "takes no conditional setting"),
        ({"adversarial_weight": -1.0}, "adversarial_weight must be a positive number"),
    ],
)
def test_bad_configs_get_one_error_that_names_the_key(values, match):
    with pytest.raises(ValueError, match=match) as error:
        Config.from_dict(values)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("z_dim: [1, 2", r"not valid YAML at line 1, column 13: expected .,. or .\]."),
        ("- z_dim\n- 3\n", "must hold a mapping of settings"),
    ],
)
def test_unreadable_config_files_get_one_clear_error(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)
    with pytest.raises(ValueError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"PK\x03\x04\x14\x00\x00\x00", "bad.yaml is a binary file, not YAML text"),
        ("# café\nz_dim: 3\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 on line 1\)"),
        (b"z_dim: 3\nbeta: 2\nz_dim: 4\n", r"line 3, column 1: key 'z_dim' is given twice"),
        (b"a: {b: 1, b: 2}\n", "key 'b' is given twice"),
        (b"3\n", "must hold a mapping of settings .key: value., got int"),
        (b"seed: 2024-02-30\n", "bad.yaml is not valid YAML: day is out of range for month"),
        (b"z_dim: twenty\n", "bad.yaml: config key 'z_dim' must be an integer, got 'twenty'"),
        (b"z_dim: [" + b"1, " * 200 + b"1]\n", r"got \[1, 1, 1, 1, 1, 1, \.\.\.\] \(list\)"),
    ],
)
def test_damaged_and_foreign_config_files_get_one_line_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        load_config(path)
    assert "\n" not in str(error.value) and "bad.yaml" in str(error.value)


def test_config_files_in_utf16_and_with_merge_keys_are_read(tmp_path):
    (tmp_path / "utf16.yaml").write_bytes("z_dim: 3\n".encode("utf-16"))  # with a BOM
    assert load_config(tmp_path / "utf16.yaml").z_dim == 3
    (tmp_path / "merge.yaml").write_text(
        "prior_options: &mog {num_components: 3}\nguide_options:\n  <<: {num_flows: 1}\n"
        "  num_flows: 2\n"
    )  # a merge key overridden is YAML, not a key given twice
    assert read_config_file(tmp_path / "merge.yaml")["guide_options"] == {"num_flows": 2}


def test_a_conv_network_for_flat_data_is_a_contradiction():
    config = Config.from_dict({"network": "conv"})
    with pytest.raises(ValueError, match="conv network needs image-shaped data"):
        pvae.build_vae(**config.model_args(784, image_shape=None))


def run_example(*args, tmp_path):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        # One thread: faster for these tiny networks, and when other processes share the CPU.
        env={
            **os.environ,
            "CI": "1",
            "PVAE_DATA_DIR": str(tmp_path / "data"),
            "OMP_NUM_THREADS": "1",
        },
    )


def test_config_round_trips_from_file_through_the_run_to_the_checkpoint(tmp_path):
    """File -> run (flags override) -> config.yaml and checkpoint -> the same config."""
    file_values = {
        "z_dim": 6,  # overridden by --z-dim below
        "prior": "mog",
        "prior_options": {"num_components": 3},
        "likelihood": "discretized_logistic",
        "guide": "iaf",
        "guide_options": {"num_flows": 1},
        "conditional": True,
        "digit": 7,
        "beta": 2.0,
        "warmup_epochs": 2,
        "learning_rate": 2.0e-3,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(file_values))
    out = tmp_path / "out"
    done = run_example(
        "--config", str(path), *TINY, "--z-dim", "3", "--out", str(out), tmp_path=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "KL weight 2" in done.stdout and "held-out IWAE_30" in done.stdout
    expected = Config.from_dict(
        {**file_values, "z_dim": 3, "num_epochs": 2, "batch_size": 500, "hidden_dims": [32],
         "num_samples": 30, "out": str(out)}
    )  # fmt: skip
    assert load_config(out / "config.yaml") == expected
    vae, state = pvae.load_vae(out / "checkpoint.pt")
    assert state["config"] == expected.to_dict()
    assert vae.model_args == expected.model_args(784, (1, 28, 28))
    assert vae.num_classes == 10 and vae.z_dim == 3
    assert vae.sample(2, 7).shape == (2, 784)
    for picture in ("samples.png", "reconstructions.png"):
        assert (out / picture).stat().st_size > 0


def test_the_example_judges_epochs_by_the_held_out_iwae_when_asked(tmp_path):
    out = tmp_path / "out"
    done = run_example(*TINY, "--held-out-num-samples", "3", "--out", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("  IWAE_3 " in line for line in epochs)
    header = (out / "history.csv").read_text().splitlines()[0]
    assert header.endswith(",held_out_iwae")
    best = pvae.load_checkpoint(out / "best.pt")
    assert best["early_stopping"]["held_out_samples"] == 3


def test_the_example_reports_a_bad_config_file_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("hidden_dim: 32\n")
    done = run_example("--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"),
                       tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: unknown config key 'hidden_dim' in config file")
    assert "did you mean 'hidden_dims'" in last_line and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the error


def example_module():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import mnist_svi
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return mnist_svi


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digit", "3"], "needs a conditional VAE: set conditional: true"),
        (["--prior", "laplace"], "config key 'prior': unknown prior 'laplace': choose one of"),
        (["--beta", "2", "--objective", "dreg"], "objective 'dreg' ignores"),
        (["--beta", "2", "--held-out-num-samples", "5"], "which a weighted KL term"),
        (["--prior-options", "{k: 1"], "--prior-options is not valid YAML"),
        (["--prior", "mog", "--prior-options", "{k: 1}"], "prior 'mog' has no option 'k'"),
    ],
)
def test_contradicting_or_unknown_flags_are_errors_that_name_the_key(args, message):
    example = example_module()
    with pytest.raises(ValueError, match=message):
        example.effective_config(example.parser().parse_args(args))


def test_flags_map_to_config_keys():
    example = example_module()
    args = example.parser().parse_args(["--cuda", "--hidden-dim", "16", "--no-conditional"])
    config = example.effective_config(args)
    assert config.device == "cuda" and config.hidden_dims == [16] and not config.conditional
    args = example.parser().parse_args(
        ["--guide", "iaf", "--guide-options", "{num_flows: 3}", "-lr", "0.01"]
    )
    config = example.effective_config(args)
    assert config.guide_options == {"num_flows": 3} and config.learning_rate == 0.01


def _defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _field_defaults(cls) -> dict:
    return {
        field.name: field.default_factory() if callable(field.default_factory) else field.default
        for field in dataclasses.fields(cls)
    }


def test_build_vae_takes_exactly_the_model_settings_with_their_defaults():
    signature = inspect.signature(pvae.build_vae).parameters
    assert set(signature) == {field.name for field in dataclasses.fields(ModelConfig)}
    fields = _field_defaults(ModelConfig)
    for name, default in _defaults(pvae.build_vae).items():
        # build_vae takes tuples where the dataclass holds lists (YAML's sequences), and
        # None for "no options"
        if isinstance(default, tuple) or name.endswith("_options"):
            default = type(fields[name])(default or ())
        assert default == fields[name], name
    assert pvae.build_vae(4).model_args == ModelConfig(x_dim=4).to_dict()


def test_fit_takes_the_training_settings_with_their_defaults():
    fit_defaults = _defaults(pvae.fit)
    for name, default in _field_defaults(TrainConfig).items():
        given = fit_defaults[name]
        assert (given or {} if name.endswith("_options") else given) == default, name


def test_the_run_config_is_the_model_and_training_settings_plus_the_runs_own():
    keys = set(Config().to_dict())
    assert set(ARCHITECTURE_KEYS) <= keys and set(TRAIN_KEYS) <= keys
    assert keys - set(ARCHITECTURE_KEYS) - set(TRAIN_KEYS) == {
        "conditional", "num_samples", "digit", "dataset", "data_dir", "data",
        "held_out_fraction", "image_size", "device", "out", "tensorboard",
    }  # fmt: skip


def test_every_setting_has_one_example_flag_with_the_configs_default():
    example = example_module()
    actions = {a.dest: a for a in example.parser()._actions if a.dest != "help"}
    not_settings = set(example._NOT_SETTINGS)
    assert set(actions) - not_settings == set(Config().to_dict())
    for key, value in Config().to_dict().items():
        assert f"(default: {value})" in actions[key].help, key


def test_the_small_examples_share_the_configs_defaults():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import _training
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    parser = argparse.ArgumentParser()
    _training.add_training_flags(parser, out="runs/x")
    args, defaults = parser.parse_args([]), Config()
    # Not the epochs and latent size: they train a quicker VAE than mnist_svi.py's default.
    assert (args.num_epochs, args.z_dim) == (_training.SMALL_VAE_EPOCHS, _training.SMALL_VAE_Z_DIM)
    assert (args.learning_rate, args.batch_size, args.seed) == (
        defaults.learning_rate, defaults.batch_size, defaults.seed,
    )  # fmt: skip
    assert [args.hidden_dim] == defaults.hidden_dims
