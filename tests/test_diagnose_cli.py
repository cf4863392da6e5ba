"""`pvae evaluate CHECKPOINT --diagnose` and its figure, pvae.viz.plots.plot_diagnosis."""

import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from PIL import Image

import pvae
from pvae.cli import main
from pvae.viz.plots import _diagnosis_figure, plot_diagnosis

TINY = ["--z-dim", "3", "--hidden-dims", "8", "--num-samples", "25", "--batch-size", "32"]
FAST = ["--diagnose-points", "20", "--log-px", "iwae", "--local-steps", "20", "-k", "50"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of `pvae train` on 120 rows of 5 standardized features (30 held out)."""
    folder = tmp_path_factory.mktemp("diagnose")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2)) @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(120, 5))
    np.save(folder / "features.npy", ((x - x.mean(0)) / x.std(0)).astype(np.float32))
    argv = ["train", str(folder / "features.npy"), "--likelihood", "normal", "-n", "1", *TINY]
    assert main([*argv, "--out", str(folder / "run"), "--held-out-fraction", "0.25"]) == 0
    return folder / "run" / "checkpoint.pt"


def assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_diagnose_prints_the_summary_and_writes_the_figure_beside_the_checkpoint(trained, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--diagnose", *FAST, "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "20 held-out rows of features.npy" in out
    assert re.search(r"^active units: [0-3] of 3 \(threshold 0\.01\)$", out, re.MULTILINE)
    assert re.search(r"^latent\[2\] +[0-9.]+ +[0-9.]+ +(yes|no)$", out, re.MULTILINE)
    assert "I_q(x;z)" in out and "(I_q ≤ log N = 3.00)" in out  # log 20
    values = {}
    for name in ("ELBO\\(q_φ\\)", "ELBO\\(q\\*\\)", "log p\\(x\\) \\[IWAE_50, a bound\\]",
                 "inference gap", "approximation gap", "amortization gap"):  # fmt: skip
        found = re.search(rf"^{name}: (-?[0-9.]+) ± [0-9.]+ nats", out, re.MULTILINE)
        assert found, name
        values[name] = float(found.group(1))
    # the two gaps add up to the inference gap (to the printed rounding)
    total = values["approximation gap"] + values["amortization gap"]
    assert abs(total - values["inference gap"]) < 2e-3
    assert f"wrote {trained.parent / 'diagnosis.png'}" in out
    assert_png(trained.parent / "diagnosis.png")


def test_diagnose_a_fit_checkpoint_on_given_rows_into_a_given_file(tmp_path, capsys):
    vae = pvae.build_vae(6, z_dim=2, hidden_dims=[4])
    x = torch.bernoulli(torch.full((16, 6), 0.5))
    pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=8, checkpoint_path=tmp_path / "c.pt",
             checkpoint_extra=lambda: pvae.vae_state(vae), progress=False)  # fmt: skip
    np.save(tmp_path / "rows.npy", x.numpy())
    figure = tmp_path / "figure.png"
    argv = ["evaluate", str(tmp_path / "c.pt"), "--data", str(tmp_path / "rows.npy"), *FAST]
    assert main([*argv, "--diagnose", "--diagnose-plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "16 rows of" in out and "active units:" in out and "amortization gap:" in out
    assert_png(figure)
    assert not (tmp_path / "diagnosis.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--diagnose", "--diagnose-points", "0"], "--diagnose-points must be a positive integer"),
        (["--diagnose", "--local-steps", "-3"], "--local-steps must be a positive integer"),
        (["--log-px", "iwae"], "error: --log-px needs --diagnose"),
        (["--diagnose", "--method", "bdmc"], "not --method bdmc"),
    ],
)
def test_bad_diagnose_flags_are_one_clear_error(trained, capsys, flags, message):
    capsys.readouterr()
    assert main(["evaluate", str(trained), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and message in error and error.count("\n") == 1


def test_a_bad_log_px_is_refused_by_the_parser(trained, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", str(trained), "--diagnose", "--log-px", "exact"])
    assert exit.value.code == 2 and "invalid choice: 'exact'" in capsys.readouterr().err


def test_plot_diagnosis_without_gaps_draws_the_units_and_says_so(tmp_path):
    vae = pvae.build_vae(784, z_dim=3, hidden_dims=[16])
    x = torch.bernoulli(torch.full((20, 784), 0.3))
    result = pvae.diagnose(vae.model, vae.guide, x, gaps=False, num_samples=50, seed=0)
    assert result.log_px is None and result.optimal_elbo_per_datapoint is None
    units, gaps = _diagnosis_figure(result).axes
    assert len(units.patches) == 3  # one bar per latent unit
    assert f"{result.num_active} of 3 active" in units.get_title()
    assert "> 0.01" in units.get_title()
    assert any("gaps were not computed" in text.get_text() for text in gaps.texts)
    assert not gaps.patches
    path = plot_diagnosis(result, tmp_path / "units.png")
    assert path == tmp_path / "units.png"
    assert_png(path)


def test_a_hand_written_models_checkpoint_is_refused_with_the_python_route(tmp_path, capsys):
    """The command cannot rebuild code from a file (no file chooses code): it says to
    rebuild the model and call pvae.diagnose, which takes any model/guide pair."""

    def model(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    pvae.fit(model, lambda x: None, torch.randn(20, 3), num_epochs=1, progress=False,
             checkpoint_path=tmp_path / "hand.pt")  # fmt: skip
    assert main(["evaluate", str(tmp_path / "hand.pt"), "--diagnose"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "holds no VAE architecture" in error[0]
    assert "pvae.diagnose" in error[0]
