"""A run's folder: nothing in it is written before every check has passed, and a lock keeps
a second run out of it while the first runs, but not after the first was killed."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from filelock import FileLock

import pvae
from pvae.cli import main
from pvae.infer.folder_lock import LOCK_FILE, LOCK_INFO_FILE, folder_lock

TINY = ["--z-dim", "2", "--hidden-dims", "8", "--num-samples", "5", "--batch-size", "20"]


def binary_rows(path, n=40, dim=6):
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((n, dim)) < 0.3).astype(np.float32))
    return str(path)


def files_of(folder):
    """Every file's bytes and modification time, but the lock file's (which the OS locks)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.name != LOCK_FILE
    }


@pytest.fixture
def finished_run(tmp_path):
    """A folder of a finished one-epoch run of `pvae train`, and its data."""
    data = binary_rows(tmp_path / "x.npy")
    out = tmp_path / "run"
    assert main(["train", data, "-n", "1", *TINY, "--out", str(out)]) == 0
    return out, data


def refused_runs(tmp_path, out, data):
    """Runs that are refused: bad data (at load, at fit's checks), a bad config file,
    resume flags that contradict the checkpoint (found by the settings, and by fit)."""
    (tmp_path / "nan.csv").write_text("a,b\n1,0\n0,nan\n1,1\n")
    (tmp_path / "bad.yaml").write_text("z_dim: 3\nz_dim: 4\n")
    checkpoint = str(out / "checkpoint.pt")
    return {
        "NaN in the data": ["train", str(tmp_path / "nan.csv"), *TINY, "--out", str(out)],
        "data fit refuses": ["train", data, "--likelihood", "beta", *TINY, "--out", str(out)],
        "bad config file": ["train", data, "--config", str(tmp_path / "bad.yaml"), "--out",
                            str(out)],
        "resume, other model": ["train", "--resume", checkpoint, "--z-dim", "3", "-n", "2"],
        "resume, other held-out K": ["train", "--resume", checkpoint, "--held-out-num-samples", "3",
                                     "-n", "2"],
    }  # fmt: skip


def test_a_refused_run_changes_no_file_of_the_run_in_its_folder(finished_run, tmp_path, capsys):
    out, data = finished_run
    before = files_of(out)
    assert {"config.yaml", "history.csv", "checkpoint.pt"} <= set(before)
    assert LOCK_INFO_FILE not in before  # who held the lock goes with the lock
    for case, argv in refused_runs(tmp_path, out, data).items():
        assert main(argv) == 2, case
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and "\n" not in error, (case, error)
        assert files_of(out) == before, case


def test_a_folder_made_for_a_run_that_fit_refuses_is_not_left_behind(tmp_path, capsys):
    data = binary_rows(tmp_path / "x.npy")  # 0s and 1s: outside the beta's (0, 1)
    out = tmp_path / "new" / "run"
    assert main(["train", data, "--likelihood", "beta", *TINY, "--out", str(out)]) == 2
    assert "the beta likelihood needs data in the open interval" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_locked_by_another_process_is_refused_and_this_ones_lock_is_reentrant(
    tmp_path, capsys
):
    data = binary_rows(tmp_path / "x.npy")
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / LOCK_FILE, timeout=0):  # as another process holds it
        assert main(["train", data, "-n", "1", *TINY, "--out", str(out)]) == 2
        assert f"{out} is in use by another run (its details are not known)" in (
            capsys.readouterr().err
        )
    with folder_lock(out), folder_lock(out):  # a script locks, then train_run
        assert (out / LOCK_INFO_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_file_as_the_output_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    refused = pytest.raises(ValueError, match="out is a file, not a folder: give --out a folder")
    with refused, folder_lock(tmp_path / "out"):
        pass


HOLDER = """
import sys, time
from pvae.infer.folder_lock import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_is_refused_at_once_naming_the_first_and_a_killed_ones_lock_is_no_lock(
    finished_run, capsys
):
    out, _ = finished_run
    before = files_of(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        resume = ["train", "--resume", str(out / "checkpoint.pt"), "-n", "2"]
        assert main(resume) == 2
        printed = capsys.readouterr()
        assert printed.out == ""  # at once: before the data are loaded
        assert f"error: {out} is in use by another run (python, pid {holder.pid} on " in printed.err
        assert "started 20" in printed.err and "wait for it to end, or give another --out" in (
            printed.err
        )
        assert {k: v for k, v in files_of(out).items() if k != LOCK_INFO_FILE} == before
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the lock file and its info stay
        holder.wait(timeout=30)
        assert (out / LOCK_FILE).exists() and (out / LOCK_INFO_FILE).exists()
        assert main(resume) == 0
        assert "epoch    2" in capsys.readouterr().out
        assert not (out / LOCK_INFO_FILE).exists()
    finally:
        holder.kill()
        holder.stdout.close()


def test_fit_from_python_locks_its_checkpoint_folder_too(tmp_path):
    vae = pvae.build_vae(6, z_dim=2, hidden_dims=[4])
    x = torch.bernoulli(torch.full((8, 6), 0.5), generator=torch.Generator().manual_seed(0))
    out = tmp_path / "fit"
    out.mkdir()
    options = dict(num_epochs=1, batch_size=4, checkpoint_path=out / "checkpoint.pt")
    refused = pytest.raises(ValueError, match="in use by another run .* another checkpoint_path")
    with FileLock(out / LOCK_FILE, timeout=0), refused:  # as another process holds it
        pvae.fit(vae.model, vae.guide, x, **options)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    with folder_lock(out):  # this process's own lock (a script's, train_run's): fit goes on
        pvae.fit(vae.model, vae.guide, x, **options)
    assert (out / "checkpoint.pt").exists() and not (out / LOCK_INFO_FILE).exists()
