"""benchmarks/fashion_convergence.py on synthetic IDX files: rows resume where they stopped,
finished rows are skipped, an interrupted test evaluation goes on chunk by chunk, and the
paired report is the mean ± s.e. of the per-image differences."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from test_data import make_idx_dir

import pvae

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_driver():
    if str(BENCHMARKS) not in sys.path:  # the driver imports its sibling convergence_report
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        "fashion_convergence", BENCHMARKS / "fashion_convergence.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module, sys.modules["convergence_report"]


driver, report = load_driver()


@pytest.fixture
def data_dir(tmp_path):
    make_idx_dir(tmp_path / "fashion", compress=False, n_train=40, n_test=10)
    return tmp_path / "fashion"


def run(data_dir, out, *flags, rows=("1-layer-elbo",)):
    """The driver on 30 training, 10 validation and 10 test images, IWAE_10 in chunks of 4."""
    args = driver.parser().parse_args(
        ["--data-dir", str(data_dir), "--out", str(out), "--train-size", "40"]
        + ["--validation-size", "10", "--test-size", "10", "-k", "2", "--eval-samples", "10"]
        + ["--eval-chunk", "4", "--rows", *rows, *flags]
    )
    driver.main(args)


def test_a_second_call_continues_the_row_and_a_third_skips_it(
    data_dir, tmp_path, capsys, one_thread
):
    out = tmp_path / "runs"
    run(data_dir, out, "--max-epochs", "1")
    first = pvae.load_checkpoint(out / "1-layer-elbo" / "checkpoint.pt")
    run(data_dir, out, "--max-epochs", "2")
    assert "1-layer-elbo: training from epoch 1" in capsys.readouterr().out
    resumed = pvae.load_checkpoint(out / "1-layer-elbo" / "checkpoint.pt")
    assert resumed["epoch"] == 2 and resumed["training"]["num_steps"] == 2
    assert resumed["training"]["history"][0] == first["training"]["history"][0]
    assert resumed["cpu_seconds"] > first["cpu_seconds"]
    # Resumed, not restarted: the parameters are those of two uninterrupted epochs.
    run(data_dir, tmp_path / "straight", "--max-epochs", "2")
    straight = pvae.load_checkpoint(tmp_path / "straight" / "1-layer-elbo" / "checkpoint.pt")
    assert resumed["params"].keys() == straight["params"].keys()
    assert all(torch.equal(resumed["params"][k], straight["params"][k]) for k in straight["params"])

    files = [out / "1-layer-elbo" / name for name in ("checkpoint.pt", "test_iwae10.pt")]
    written = [path.stat().st_mtime_ns for path in files]
    capsys.readouterr()
    run(data_dir, out, "--max-epochs", "2")
    assert "1-layer-elbo: finished (max epochs) and scored, skipped" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in files] == written
    result = pvae.load_checkpoint(files[1])
    assert result["best_epoch"] == resumed["early_stopping"]["best_epoch"]
    assert result["per_datapoint"].shape == (10,) and result["test_images"] == 10

    # Kept without its checkpoints (as the repository keeps finished rows): still reported
    # and skipped, and asking for more epochs is refused rather than starting it afresh.
    for name in ("checkpoint.pt", "best.pt"):
        (out / "1-layer-elbo" / name).unlink()
    run(data_dir, out, "--max-epochs", "2")
    assert "1-layer-elbo: finished (max epochs) and scored, skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="keeps only the record of a finished row"):
        run(data_dir, out, "--max-epochs", "3")


def test_an_interrupted_evaluation_keeps_its_chunks_and_gives_the_same_numbers(
    data_dir, tmp_path, monkeypatch, one_thread
):
    run(data_dir, tmp_path / "whole", "--max-epochs", "1")
    real, calls = pvae.log_likelihood, []

    def interrupted_second_call(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pvae, "log_likelihood", interrupted_second_call)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path / "cut", "--max-epochs", "1")
    run(data_dir, tmp_path / "cut", "--max-epochs", "1")
    assert calls == [0, 1, 1, 2]  # chunk 0 was kept; chunks 1 and 2 were scored after
    cut, whole = (
        pvae.load_checkpoint(p / "1-layer-elbo" / "test_iwae10.pt")
        for p in (tmp_path / "cut", tmp_path / "whole")
    )
    assert torch.equal(cut["per_datapoint"], whole["per_datapoint"])
    assert not list((tmp_path / "cut" / "1-layer-elbo").glob("*_chunks*"))


def test_the_report_pairs_rows_by_image_and_lists_unfinished_ones(
    data_dir, tmp_path, capsys, one_thread
):
    out, rows = tmp_path / "runs", ("1-layer-elbo", "1-layer-iwae-2", "2-layer-elbo")
    run(data_dir, out, "--max-epochs", "1", rows=rows)
    capsys.readouterr()
    run(data_dir, out, "--max-epochs", "1", "--report", rows=rows)
    printed = capsys.readouterr().out
    bounds = {
        name: pvae.load_checkpoint(out / name / "test_iwae10.pt")["per_datapoint"].numpy()
        for name in rows
    }
    for a, b in [("1-layer-iwae-2", "1-layer-elbo"), ("2-layer-elbo", "1-layer-elbo")]:
        d = bounds[a] - bounds[b]
        mean, se = d.mean(), d.std(ddof=1) / math.sqrt(d.size)
        computed = report.paired_difference(
            torch.from_numpy(bounds[a]), torch.from_numpy(bounds[b])
        )
        assert computed == pytest.approx((mean, se), rel=1e-12)
        assert f"| {a} − {b} | 10 | {mean:+.2f} ± {se:.2f} |" in printed
    elbo = bounds["1-layer-elbo"]
    assert f"{elbo.mean():.2f} ± {elbo.std(ddof=1) / math.sqrt(10):.2f}" in printed

    # With more epochs allowed the rows are unfinished again: no test figure is shown.
    run(data_dir, out, "--max-epochs", "3", "--report", rows=rows)
    printed = capsys.readouterr().out
    assert "| 2-layer-elbo | in progress, 0 epochs since the best | 20" in printed
    assert " | 1 | 1 | " in printed.split("| 2-layer-elbo | in progress")[1].splitlines()[0]
    assert "| 2-layer-elbo − 1-layer-elbo | - | not yet: 2-layer-elbo in progress, " in printed
    assert f"{elbo.mean():.2f} ±" not in printed


def test_the_report_goes_between_its_markers_in_the_results_file(data_dir, tmp_path, one_thread):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nbefore\n")
    flags = ("--max-epochs", "1", "--report", "--write-results", "--results-file", str(results))
    for _ in range(2):  # the second report replaces the first
        run(data_dir, tmp_path / "runs", *flags)
    text = results.read_text()
    assert text.startswith("# Results\n\nbefore\n\n<!-- fashion-convergence report -->\n")
    assert text.count("Report of ") == 1 and "| 1-layer-elbo | not started |" in text


def test_a_row_started_with_other_settings_is_not_continued(data_dir, tmp_path, one_thread):
    run(data_dir, tmp_path / "runs", "--max-epochs", "1")
    with pytest.raises(ValueError, match="training.batch_size = 100, not training.batch_size = 50"):
        run(data_dir, tmp_path / "runs", "--max-epochs", "2", "--batch-size", "50")
    with pytest.raises(ValueError, match="unknown row"):
        run(data_dir, tmp_path / "runs", rows=("1-layer-iwae-5",))


def test_rows_are_judged_by_their_own_bound_and_older_rows_go_on_by_the_elbo(
    data_dir, tmp_path, capsys, one_thread
):
    out = tmp_path / "runs"
    run(data_dir, out, "--max-epochs", "2", rows=("1-layer-iwae-2",))
    capsys.readouterr()
    run(data_dir, out, "--max-epochs", "2", "--report", rows=("1-layer-iwae-2",))
    saved = pvae.load_checkpoint(out / "1-layer-iwae-2" / "checkpoint.pt")
    assert saved["early_stopping"]["held_out_samples"] == 2
    best = max(stats["held_out_iwae"] for stats in saved["training"]["history"])
    assert saved["early_stopping"]["best_bound"] == best
    assert f"| IWAE_2 {best:.2f} |" in capsys.readouterr().out
    # A row started before the validation IWAE existed: no such key in its settings.
    run(data_dir, out, "--max-epochs", "1")
    settings = out / "1-layer-elbo" / "settings.json"
    settings.write_text(settings.read_text().replace('"held_out_samples": 1,', ""))
    assert "held_out_samples" not in settings.read_text()
    run(data_dir, out, "--max-epochs", "2")
    assert pvae.load_checkpoint(out / "1-layer-elbo" / "checkpoint.pt")["epoch"] == 2


def test_the_six_rows_and_their_comparisons():
    rows = driver.all_rows(5)
    assert [r.name for r in rows] == [
        f"{layers}-layer-{o}" for layers in (1, 2) for o in ("elbo", "iwae-5", "dreg-5")
    ]
    assert driver.pairs(rows) == [
        ("1-layer-iwae-5", "1-layer-elbo"),
        ("1-layer-dreg-5", "1-layer-elbo"),
        ("1-layer-dreg-5", "1-layer-iwae-5"),
        ("2-layer-iwae-5", "2-layer-elbo"),
        ("2-layer-dreg-5", "2-layer-elbo"),
        ("2-layer-dreg-5", "2-layer-iwae-5"),
        ("2-layer-elbo", "1-layer-elbo"),
        ("2-layer-iwae-5", "1-layer-iwae-5"),
        ("2-layer-dreg-5", "1-layer-dreg-5"),
    ]
    config = driver.row_config(rows[-1], driver.parser().parse_args([]), Path("x"))
    assert (config.hierarchy, config.objective, config.num_particles) == ([100, 50], "dreg", 5)
    assert (config.batch_size, config.learning_rate, config.patience) == (100, 1e-3, 20)
    assert config.held_out_num_samples == 5  # DReG-5's own bound, IWAE_5
    assert (
        driver.row_config(rows[0], driver.parser().parse_args([]), Path("x")).held_out_num_samples
        == 1
    )
