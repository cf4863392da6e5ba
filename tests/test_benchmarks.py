"""Each benchmark runs in a tiny mode and prints its table (no timings are asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest
from test_data import make_idx_dir

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {
    "check_cost.py": ["--tiny"],
    "ais.py": [
        "--num-data",
        "6",
        "--chains",
        "3",
        "--steps",
        "4",
        "--leapfrog",
        "2",
        "--repeats",
        "1",
        "--hidden",
        "16",
        "--data-chunk",
        "3",
        "--chain-chunk",
        "2",
        "--memory-chains",
        "2",
        "4",
        "--compile",
        "off",
        "capture",
    ],
    "train_speed.py": [
        "--num-data",
        "512",
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--batch-sizes",
        "256",
        "--hidden",
        "32",
    ],
    "capture_speed.py": [
        "--rows",
        "small",
        "gmvae",
        "--num-data",
        "256",
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--modes",
        "off",
        "capture",
    ],
    "enum_speed.py": [
        "--num-data",
        "512",
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--hidden",
        "32",
        "--components",
        "3",
    ],
    "eval_speed.py": [
        "-k",
        "40",
        "--num-data",
        "30",
        "--data-chunk",
        "20",
        "--particle-chunk",
        "30",
        "--memory-k",
        "10",
        "--repeats",
        "1",
        "--hidden",
        "32",
    ],
    "default_example.py": [
        "--tiny",
        "--budget-s",
        "0.2",
        "--train-points",
        "300",
        "--eval-points",
        "20",
        "--eval-samples",
        "30",
        "--candidates",
        "objective-iwae",
    ],
    "ss_vae_peer.py": [
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--train-points",
        "400",
        "--eval-points",
        "20",
        "--eval-samples",
        "3",
        "--z-dim",
        "4",
        "--hidden",
        "16",
        "--num-labelled",
        "20",
    ],  # fmt: skip
    "fashion_convergence.py": [
        "--train-size",
        "40",
        "--validation-size",
        "10",
        "--test-size",
        "10",
        "--max-epochs",
        "1",
        "-k",
        "2",
        "--eval-samples",
        "10",
        "--rows",
        "1-layer-elbo",
        "2-layer-elbo",
    ],
    "quality.py": [
        "--epochs",
        "1",
        "--train-points",
        "300",
        "--eval-points",
        "20",
        "--eval-samples",
        "30",
        "-k",
        "2",
    ],
    "diagnose_variants.py": [
        "--tiny",
        "--budget-s",
        "0.2",
        "--train-points",
        "300",
        "--eval-points",
        "10",
        "--ais-steps",
        "5",
        "--local-steps",
        "5",
        "--num-samples",
        "20",
        "--eval-samples",
        "30",
    ],
}


@pytest.mark.slow
def test_train_speed_runs_the_importance_weighted_variant_in_tiny_mode():
    flags = [*TINY["train_speed.py"], "-k", "3", "--host-data"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_speed.py"), *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IWAE_3" in done.stdout
    assert sum(line.startswith("| 256 |") for line in done.stdout.splitlines()) == 1


def test_every_benchmark_has_a_tiny_mode():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text()}
    assert scripts == set(TINY)


def tiny_flags(script, tmp_path):
    """The script's tiny flags; quality.py and fashion_convergence.py read synthetic
    Fashion-MNIST IDX files in tmp_path, default_example.py the offline digits (tmp_path holds
    no MNIST)."""
    if script == "default_example.py":
        return [*TINY[script], "--data-dir", str(tmp_path)]
    if script == "diagnose_variants.py":  # the offline digits too
        return [*TINY[script], "--data-dir", str(tmp_path)]
    if script == "ss_vae_peer.py":  # its default --out is the real runs' folder
        return [*TINY[script], "--data-dir", str(tmp_path), "--out", str(tmp_path / "runs")]
    if script == "fashion_convergence.py":  # its default --out is the real runs' folder
        make_idx_dir(tmp_path / "fashion-mnist", compress=False, n_train=40, n_test=10)
        return [
            *TINY[script],
            "--data-dir",
            str(tmp_path / "fashion-mnist"),
            "--out",
            str(tmp_path),
        ]
    if script != "quality.py":
        return TINY[script]
    # Its default is the real Fashion-MNIST, which a fresh machine does not have.
    make_idx_dir(tmp_path / "fashion-mnist", compress=True, n_train=300, n_test=20)
    return [*TINY[script], "--data-dir", str(tmp_path / "fashion-mnist")]


# The benchmarks are the maintainers' tools, and each tiny run is a Python process that
# loads torch and trains (3-9 s; 50 s of the README's 5-minute command in all): they run
# with the slow tests, which `.ci/run` runs too.
@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_in_tiny_mode(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *tiny_flags(script, tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table_rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) >= 2
    if script == "default_example.py":  # the offline digits, every row, the paired table
        assert "300 train, 20 held-out digits" in done.stdout
        names = ("pyro-example", "pyro-example, best epoch", "pvae-default", "objective-iwae")
        assert [line.split(" | ")[0][2:] for line in table_rows[1:5]] == list(names)
        assert "paired differences of IWAE_30" in done.stdout
    if script == "ss_vae_peer.py":  # two models, two seeds, paired
        assert [line.split(" | ")[:2] for line in table_rows[1:5]] == [
            ["| pvae", "0"], ["| pyro", "0"], ["| pvae", "1"], ["| pyro", "1"]
        ]  # fmt: skip
        assert "paired differences, pvae − pyro, over 2 seed(s)" in done.stdout
    if script == "diagnose_variants.py":  # every default row diagnosed, AIS and both gaps
        assert "300 train digits, 1000 held-out (epoch choice), the first 10 diagnosed" in (
            done.stdout
        )
        names = ["default", "standard-normal-prior", "elbo", "iwae", "two-layer"]
        assert [line.split(" | ")[0][2:] for line in table_rows[1:]] == names
        assert "| IWAE_5 | IWAE_30 | AIS log p(x) | approximation gap |" in table_rows[0]
        assert "log p(x) [AIS 5 steps, " in done.stdout
    if script == "quality.py":
        assert f"fashion-mnist ({tmp_path / 'fashion-mnist'}): 300 train, 20" in done.stdout
