"""Data-parallel training with 2 gloo processes equals one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pvae.infer.distributed import Cluster

WORKER = Path(__file__).with_name("distributed_worker.py")


def run_worker(out, processes):
    out.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = launcher + [f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [*command, *([] if processes > 1 else [sys.executable]), str(WORKER), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return run_worker(root / "single", 1)[0], run_worker(root / "two", 2), root


def test_two_processes_train_the_same_parameters_as_one(runs):
    single, (rank0, rank1), _ = runs
    for name, value in single["linear"].items():
        assert torch.equal(rank0["linear"][name], rank1["linear"][name]), name
        assert torch.allclose(rank0["linear"][name], value, rtol=1e-9, atol=1e-12), name
    for epoch_single, epoch_two in zip(
        single["linear_history"], rank0["linear_history"], strict=True
    ):
        assert epoch_two["held_out_elbo"] is epoch_single["held_out_elbo"] is None
        assert epoch_two["train_bound"] == pytest.approx(epoch_single["train_bound"], rel=1e-9)


def test_the_captured_step_trains_as_the_eager_one_on_one_process_and_on_two(runs):
    single, (rank0, rank1), _ = runs
    for name, value in single["linear"].items():
        assert torch.equal(single["captured"][name], value), name
        assert torch.equal(rank0["captured"][name], rank1["captured"][name]), name
        assert torch.allclose(rank0["captured"][name], value, rtol=1e-9, atol=1e-12), name


def test_named_streams_train_the_same_parameters_on_two_processes_as_on_one(runs):
    single, (rank0, rank1), _ = runs
    for name, value in single["streams"].items():
        assert torch.equal(rank0["streams"][name], rank1["streams"][name]), name
        assert torch.allclose(rank0["streams"][name], value, rtol=1e-9, atol=1e-12), name


def test_importance_weighted_training_resumed_midway_matches_one_process(runs):
    single, (rank0, rank1), _ = runs
    for name, value in single["dreg_resumed"].items():
        assert torch.equal(rank0["dreg_resumed"][name], rank1["dreg_resumed"][name]), name
        assert torch.allclose(rank0["dreg_resumed"][name], value, rtol=1e-9, atol=1e-12), name


def test_ranks_stay_identical_while_training_a_vae(runs):
    _, (rank0, rank1), _ = runs
    for name, value in rank0["vae"].items():
        assert torch.equal(value, rank1["vae"][name]), name


def test_gathered_evaluation_equals_the_single_process_one_on_the_same_weights(runs, tmp_path):
    _, (rank0, rank1), _ = runs
    assert torch.equal(rank0["iwae"], rank1["iwae"])  # every rank gets the whole result
    assert rank0["iwae"].shape == (50,)
    # One process, the trained weights of the two-process run, the same seed and K.
    from distributed_worker import X_DIM, Z_DIM, data

    import pvae

    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8])
    vae.load_state_dict(rank0["vae"])
    binary = (data() > 0).float()
    alone = pvae.log_likelihood(vae.model, vae.guide, binary, 200, seed=5, data_chunk=20)
    assert torch.allclose(alone.per_datapoint, rank0["iwae"], rtol=0, atol=1e-5)
    assert torch.allclose(alone.ess, rank0["iwae_ess"], rtol=1e-5)


def test_only_rank_zero_writes_files(runs):
    _, _, root = runs
    written = sorted(p.name for p in (root / "two").iterdir())
    expected = ["best.pt", "checkpoint.pt", "dreg.pt", "history.csv", "rank0.pt", "rank1.pt"]
    # best.pt: the best held-out epoch, by rank 0 too; .pvae.lock: rank 0's lock on the folder
    # (the OS's lock is gone with the run; the empty file stays, as filelock leaves it)
    assert written == [".pvae.lock", *expected]
    state = torch.load(root / "two" / "checkpoint.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's generators, for an exact resume


@pytest.mark.parametrize("rows, world", [(50, 2), (10, 3), (7, 1), (95, 4), (1000, 3)])
def test_row_shares_are_contiguous_block_aligned_and_cover_everything(rows, world):
    shares = [Cluster(rank, world).rows(rows, multiple=10) for rank in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == rows
    for (_, end), (start, _) in zip(shares, shares[1:], strict=False):
        assert end == start and start % 10 == 0
    sizes = [end - start for start, end in shares]
    assert max(sizes) - min(sizes) <= 10 or rows < 10 * world


def test_the_readme_launch_line_runs_the_example_on_two_cpu_processes(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "out"
    flags = ["-n", "1", "--batch-size", "500", "--z-dim", "4", "--hidden-dim", "32"]
    done = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "examples/mnist_svi.py",
            "--device",
            "cpu",
            *flags,
            "--num-samples",
            "20",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=WORKER.parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PVAE_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Rank 0 alone reports: one line per epoch, one bound.
    assert done.stdout.count("epoch    1") == 1 and done.stdout.count("IWAE_20") == 1
    assert (out / "checkpoint.pt").exists() and (out / "samples.png").exists()
