"""examples/iwae_paper.py: Burda et al.'s schedule, and its resumption across stages."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from pvae.data import ImageData

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"


def load_script():
    spec = importlib.util.spec_from_file_location("iwae_paper", ROOT / "examples" / "iwae_paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paper = load_script()


def test_the_schedule_is_3_to_the_i_epochs_at_a_rate_falling_tenfold_in_seven_stages():
    stages = paper.schedule(1e-3)
    ends = [end for end, _ in stages]
    lengths = [end - start for end, start in zip(ends, [0, *ends[:-1]], strict=True)]
    assert lengths == [3**i for i in range(8)] and stages[-1][0] == 3280
    for i, (_, rate) in enumerate(stages):
        assert rate == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
    assert stages[-1][1] == pytest.approx(1e-3 * 10 ** (-1), rel=1e-12)


def test_stage_adam_takes_the_moments_from_a_checkpoint_but_keeps_its_own_rate():
    weight = torch.zeros(3, requires_grad=True)
    before = paper.StageAdam([weight], 1e-3)
    weight.grad = torch.ones(3)
    before.step()
    after = paper.StageAdam([weight], 1e-4)
    after.load_state_dict(before.state_dict())
    group = after.param_groups[0]
    assert (group["lr"], group["eps"], group["betas"]) == (1e-4, 1e-4, (0.9, 0.999))
    assert torch.equal(after.state[weight]["exp_avg"], before.state[weight]["exp_avg"])


def synthetic_digits(name, data_dir):
    """40 train and 10 test "images" of random grey levels (no file, no download)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(50, 784, generator=generator)
    labels = torch.zeros(50, dtype=torch.long)
    return ImageData(x[:40], labels[:40], x[40:], labels[40:], name="synthetic", source="test")


@pytest.fixture
def tiny_config(tmp_path, monkeypatch):
    """The two-layer configuration, shrunk, on synthetic data: the schedule and resumption
    are what is tested."""
    monkeypatch.setattr(paper, "load_dataset", synthetic_digits)
    values = yaml.safe_load((CONFIGS / "iwae_paper_two_layer.yaml").read_text())
    values.update(hierarchy=[4, 2], z_dim=2, hidden_dims=[16], num_particles=3)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run(config, out, *flags):
    args = paper.parser().parse_args(
        ["--config", str(config), "--out", str(out), "--train-size", "40", "--test-size", "10"]
        + ["--num-samples", "5", "--device", "cpu", *flags]
    )
    paper.main(args)
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_a_run_resumed_across_a_stage_boundary_is_the_uninterrupted_run(tmp_path, tiny_config):
    # Epochs 1 | 2-4 | 5 are stages 0, 1 and 2; the second run stops inside stage 1.
    straight = run(tiny_config, tmp_path / "straight", "--max-epochs", "5")
    stopped = run(tiny_config, tmp_path / "resumed", "--max-epochs", "2")
    assert stopped["epoch"] == 2
    assert stopped["optimizer"]["param_groups"][0]["lr"] == paper.schedule(1e-3)[1][1]
    resumed = run(
        tiny_config,
        tmp_path / "resumed",
        "--max-epochs",
        "5",
        "--resume",
        str(tmp_path / "resumed" / "checkpoint.pt"),
    )
    assert resumed["epoch"] == straight["epoch"] == 5
    group = resumed["optimizer"]["param_groups"][0]
    assert (group["lr"], group["eps"]) == (paper.schedule(1e-3)[2][1], 1e-4)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    results = [
        json.loads((tmp_path / d / "result.json").read_text()) for d in ("straight", "resumed")
    ]
    assert results[0]["log_likelihood"] == results[1]["log_likelihood"]
    assert math.isfinite(results[0]["log_likelihood"])
    assert [
        row.split(",")[0] for row in (tmp_path / "resumed" / "history.csv").read_text().split()
    ][1:] == ["1", "2", "3", "4", "5"]


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_config):
    run(tiny_config, tmp_path / "a", "--max-epochs", "1")
    values = yaml.safe_load(tiny_config.read_text())
    values["objective"] = "dreg"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match="trained with objective = 'iwae'"):
        run(
            other,
            tmp_path / "b",
            "--max-epochs",
            "2",
            "--resume",
            str(tmp_path / "a" / "checkpoint.pt"),
        )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("iwae_paper*.yaml")), ids=lambda p: p.stem)
def test_the_paper_s_configs_hold_its_settings(path):
    config = paper.load_config(path)
    assert (config.hidden_dims, config.activation, config.z_dim) == ([200, 200], "tanh", 50)
    assert (config.batch_size, config.learning_rate, config.num_epochs) == (20, 1e-3, 3280)
    assert (config.likelihood, config.num_samples, config.dataset) == ("bernoulli", 5000, "mnist")
    layers = len(config.hierarchy) if config.hierarchy else 1
    assert (config.objective, config.num_particles, layers) in paper.PUBLISHED
