"""`pvae train` on a user's own files, with what the example writes, early stopping, resume
without repeating flags, and `pvae evaluate --data`; `python -m pvae` and `pvae --version`."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pvae
from pvae.cli import main

TINY = ["--z-dim", "2", "--hidden-dims", "8", "--num-samples", "25", "--batch-size", "32"]


def standardized_features(path, n=120, dim=5):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, dim)) + 0.3 * rng.normal(size=(n, dim))
    x = (x - x.mean(0)) / x.std(0)
    header = ",".join(f"feature_{i}" for i in range(dim))
    np.savetxt(path, x, delimiter=",", header=header, comments="")
    return x


def png_folder(folder, n=30, side=12):
    rng = np.random.default_rng(1)
    for i in range(n):
        (folder / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((side, side)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(pixels).save(folder / f"class_{i % 2}" / f"{i:03d}.png")


def test_a_csv_of_standardized_features_trains_with_a_real_valued_likelihood(tmp_path, capsys):
    standardized_features(tmp_path / "features.csv")
    out = tmp_path / "run"
    argv = ["train", str(tmp_path / "features.csv"), "--likelihood", "normal", "-n", "3"]
    assert main([*argv, *TINY, "--out", str(out), "--held-out-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "90 train / 30 held-out rows" in printed and "held-out IWAE_25" in printed
    files = {p.name for p in out.iterdir()}
    assert {"config.yaml", "history.csv", "checkpoint.pt", "best.pt", "elbo.png"} <= files
    assert "samples.png" not in files  # not images
    vae = pvae.load(out / "best.pt")
    assert vae.model_args["likelihood"] == "normal" and vae.model_args["x_dim"] == 5
    # the saved model scores new rows of the same kind
    standardized_features(tmp_path / "new.csv", n=40)
    assert (
        main(["evaluate", str(out / "best.pt"), "-k", "25", "--data", str(tmp_path / "new.csv")])
        == 0
    )
    assert "40 rows of" in capsys.readouterr().out


def test_a_folder_of_png_images_trains_stops_early_and_resumes_without_flags(tmp_path, capsys):
    png_folder(tmp_path / "images")
    out = tmp_path / "run"
    argv = ["train", str(tmp_path / "images"), "-n", "2", *TINY, "--out", str(out)]
    assert main(argv) == 0
    assert {"samples.png", "reconstructions.png", "best.pt"} <= {p.name for p in out.iterdir()}
    assert pvae.load(out / "checkpoint.pt").model_args["image_shape"] == [1, 12, 12]
    capsys.readouterr()
    # resume: the checkpoint's settings and folder; only -n given
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "-n", "4"]) == 0
    assert pvae.load_checkpoint(out / "checkpoint.pt")["epoch"] == 4
    assert "epoch    3" in capsys.readouterr().out
    # a model setting that contradicts the checkpoint is named, and only it
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--z-dim", "3", "-n", "5"]) == 2
    error = capsys.readouterr().err
    assert "trained with z_dim = 2, not z_dim = 3" in error and "hidden_dims" not in error
    # nothing left to do is said, not done silently
    with pytest.warns(UserWarning, match="nothing to train: the checkpoint holds 4 epochs"):
        assert main(["train", "--resume", str(out / "checkpoint.pt"), "-n", "4"]) == 0


def test_a_numpy_file_trains_and_patience_keeps_the_best_epoch(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", (rng.random((80, 6)) < 0.3).astype(np.float32))
    out = tmp_path / "run"
    argv = ["train", str(tmp_path / "x.npy"), "-n", "30", *TINY, "--out", str(out)]
    assert main([*argv, "--patience", "2", "-lr", "0.05"]) == 0
    history = pvae.load_checkpoint(out / "checkpoint.pt")["training"]["history"]
    best = pvae.load_checkpoint(out / "best.pt")
    elbos = [row["held_out_elbo"] for row in history]
    assert best["epoch"] == elbos.index(max(elbos)) + 1
    assert len(history) < 30 and len(history) - best["epoch"] == 2


def test_a_failed_resume_writes_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    bad = tmp_path / "run" / "checkpoint.pt"
    torch.save({"model_args": {"x_dim": 4}}, bad)  # no run settings
    assert main(["train", "--resume", str(bad), "-n", "3"]) == 2
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]


def test_a_nan_in_the_data_is_named_at_the_files_line_and_column(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n" + "0,1\n" * 20 + "1,NaN\n")
    assert main(["train", str(tmp_path / "x.csv"), "--out", str(tmp_path / "run")]) == 2
    assert "x.csv, line 22, column 'b': 'NaN' is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_without_data_says_what_it_needs(capsys):
    assert main(["train", "-n", "1"]) == 2
    assert "pvae train needs DATA" in capsys.readouterr().err


def test_python_dash_m_pvae_and_the_version():
    done = subprocess.run(
        [sys.executable, "-m", "pvae", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"pvae {pvae.__version__}"


def test_tensorboard_gets_every_epochs_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", (rng.random((40, 6)) < 0.3).astype(np.float32))
    argv = ["train", str(tmp_path / "x.npy"), "-n", "3", *TINY, "--out", str(tmp_path / "run")]
    assert main([*argv, "--tensorboard", str(tmp_path / "tb")]) == 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    history = pvae.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["training"]["history"]
    logged = [event.value for event in events.Scalars("held_out/elbo")]
    assert logged == pytest.approx([row["held_out_elbo"] for row in history])
    assert {"train/bound", "held_out/reconstruction", "held_out/kl"} <= set(
        events.Tags()["scalars"]
    )


def test_every_epoch_reports_the_active_units_and_a_collapse_is_a_warning(tmp_path, capsys):
    standardized_features(tmp_path / "features.csv")
    argv = ["train", str(tmp_path / "features.csv"), "--likelihood", "normal", "-n", "2"]
    assert main([*argv, *TINY, "--out", str(tmp_path / "run")]) == 0
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("active units " in line and "/2" in line for line in epochs)


def test_no_active_unit_after_the_warm_up_warns_of_posterior_collapse(monkeypatch, tmp_path):
    standardized_features(tmp_path / "features.csv")
    monkeypatch.setattr(
        pvae.runs, "active_units", lambda model, guide, data: torch.zeros(2, dtype=torch.bool)
    )
    argv = ["train", str(tmp_path / "features.csv"), "--likelihood", "normal", "-n", "1"]
    with pytest.warns(UserWarning, match="posterior collapse: no latent unit is active after "
                      "epoch 1.*--warmup-epochs"):  # fmt: skip
        assert main([*argv, *TINY, "--out", str(tmp_path / "run")]) == 0
