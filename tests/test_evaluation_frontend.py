"""Every estimator of a trained model (log_likelihood, estimate_elbo, ais, bdmc) takes its data,
device, processes, seed and counts through one front-end (pvae.infer.evaluation), tested here
once for all four: the same data forms give the same numbers, a seed behaves the same, the same
bad argument gets the same one-line message, and the data are shared out across processes the
same way."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pvae
from pvae.infer import evaluation
from pvae.infer.distributed import Cluster
from pvae.infer.evaluation_mode import in_evaluation

X_DIM = 6
NUM_DATA = 13  # more than log_likelihood's block of 10 datapoints: two processes get rows


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is faster, and the CPU is shared."""


def tiny_vae(labelled=False):
    torch.manual_seed(0)
    return pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[5], num_classes=2 if labelled else 0)


def rows(n=NUM_DATA):
    generator = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, X_DIM), 0.4), generator=generator)
    return x, torch.arange(n) % 2


ESTIMATORS = {
    "log_likelihood": lambda m, g, data, **kw: (
        pvae.log_likelihood(m, g, data, 6, data_chunk=10, **kw).per_datapoint
    ),
    "estimate_elbo": lambda m, g, data, **kw: torch.tensor(
        pvae.estimate_elbo(m, g, data, batch_size=3, **kw)
    ),
    "ais": lambda m, g, data, **kw: (
        pvae.ais(m, g, data, 3, 2, leapfrog_steps=2, data_chunk=3, **kw).log_weights
    ),
    "bdmc": lambda m, g, data, **kw: bdmc_weights(m, g, data, **kw),
}


def bdmc_weights(model, guide, data, **options):
    bounds = pvae.bdmc(
        model, guide, data, num_steps=3, num_chains=2, leapfrog_steps=2, data_chunk=3, **options
    )
    return torch.cat([bounds.forward.log_weights, bounds.reverse_log_weights])


FORMS = {
    "tensor": lambda *columns: columns if len(columns) > 1 else columns[0],
    "numpy float64": lambda *columns: (
        tuple(np.asarray(c, dtype=np.float64) for c in columns[:1])
        + tuple(c.numpy() for c in columns[1:])
    ),
    "TensorDataset": lambda *columns: TensorDataset(*columns),
    "DataLoader": lambda *columns: DataLoader(TensorDataset(*columns), batch_size=4),
}


def scorer(estimator, labelled=False):
    """``estimator`` of a new tiny VAE, as a function of the data and options."""
    vae = tiny_vae(labelled)
    return lambda data, **options: ESTIMATORS[estimator](vae.model, vae.guide, data, **options)


def run(estimator, data, labelled=False, **options):
    return scorer(estimator, labelled)(data, **options)


@pytest.mark.parametrize("labelled", [False, True], ids=["x", "x and labels"])
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_data_form_gives_the_numbers_of_the_tensors(estimator, form, labelled):
    x, y = rows()
    columns = (x, y) if labelled else (x,)
    reference = run(estimator, columns, labelled, seed=0)
    result = run(estimator, FORMS[form](*columns), labelled, seed=0)
    assert result.dtype == reference.dtype and torch.equal(result, reference)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_a_seed_gives_the_same_numbers_and_leaves_the_global_generator_alone(estimator):
    x, _ = rows()
    score = scorer(estimator)
    state = torch.get_rng_state()
    first = score(x, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(score(x, seed=3), first)
    assert not torch.equal(score(x, seed=4), first)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_without_a_seed_one_is_drawn_from_the_global_generator(estimator):
    x, _ = rows()
    score = scorer(estimator)
    pyro.set_rng_seed(7)
    seed = int(torch.randint(2**62, ()))
    after = torch.randn(3)
    pyro.set_rng_seed(7)
    result = score(x)
    assert torch.equal(torch.randn(3), after)  # one draw: the seed
    assert torch.equal(result, score(x, seed=seed))


def test_each_estimator_runs_in_evaluation_mode():
    vae = tiny_vae()
    seen = []

    def model(x):
        seen.append(in_evaluation())
        vae.model(x)

    x, _ = rows(4)
    for estimator in ESTIMATORS.values():
        seen.clear()
        estimator(model, vae.guide, x, seed=0)
        assert seen and all(seen)
    assert not in_evaluation()


ANY_ESTIMATOR = [
    (dict(seed=True), "seed must be a non-negative integer or None, got True"),
    (dict(seed=-1), "seed must be a non-negative integer or None, got -1"),
    (dict(seed=1.5), "seed must be a non-negative integer or None, got 1.5"),
    (
        dict(data=torch.empty(0, X_DIM)),
        "data is empty: pass a tensor (or tuple of tensors) of datapoints",
    ),
    (dict(data=()), "data is empty: pass a tensor (or tuple of tensors) of datapoints"),
    (
        dict(data=(torch.zeros(4, X_DIM), torch.zeros(5))),
        "all tensors in data must have the same first (datapoint) dimension",
    ),
    (dict(data=[[0.0, 1.0]]), "data[0] must be a torch.Tensor, a numpy array"),
    (dict(device="tpu:x"), "unknown device 'tpu:x': use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (
        dict(data=torch.full((4, X_DIM), 0.5)),
        "data: the Bernoulli likelihood needs binary data (every value 0 or 1), but 24",
    ),
]
ONE_ESTIMATOR = {
    "log_likelihood": [
        (dict(num_samples=0), "num_samples must be a positive integer, got 0"),
        (dict(num_samples=True), "num_samples must be a positive integer, got True"),
        (dict(particle_chunk=0), "particle_chunk must be a positive integer or None, got 0"),
        (dict(data_chunk=True), "data_chunk must be a positive integer or None, got True"),
    ],
    "estimate_elbo": [
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(num_particles=-1), "num_particles must be a positive integer, got -1"),
    ],
    "ais": [
        (dict(num_steps=0), "num_steps must be a positive integer, got 0"),
        (dict(num_chains=True), "num_chains must be a positive integer, got True"),
        (dict(leapfrog_steps=0), "leapfrog_steps must be a positive integer, got 0"),
        (dict(adaptation_chains=-1), "adaptation_chains must be a non-negative integer, got -1"),
        (dict(chain_chunk=0), "chain_chunk must be a positive integer or None, got 0"),
        (dict(data_chunk=2.0), "data_chunk must be a positive integer or None, got 2.0"),
        (dict(schedule="cosine"), "unknown schedule 'cosine': use one of sigmoid, linear"),
        (dict(init="posterior"), "unknown init 'posterior': use 'guide' (q(z|x)) or 'prior'"),
        (dict(step_size=0.0), "step_size must be positive, got 0.0"),
        (dict(target_acceptance=1.5), "target_acceptance must lie in (0, 1), got 1.5"),
    ],
    "bdmc": [
        (dict(num_data=0), "num_data must be a positive integer or None, got 0"),
        (dict(num_steps=0), "num_steps must be a positive integer, got 0"),
        (dict(data_chunk=0), "data_chunk must be a positive integer or None, got 0"),
    ],
}
CALLS = {
    "log_likelihood": lambda vae, data, **kw: pvae.log_likelihood(
        vae.model, vae.guide, data, **{"num_samples": 3} | kw
    ),
    "estimate_elbo": lambda vae, data, **kw: pvae.estimate_elbo(vae.model, vae.guide, data, **kw),
    "ais": lambda vae, data, **kw: pvae.ais(
        vae.model, vae.guide, data, **{"num_steps": 2, "num_chains": 2} | kw
    ),
    "bdmc": lambda vae, data, **kw: pvae.bdmc(
        vae.model, vae.guide, data, **{"num_steps": 2, "num_chains": 2} | kw
    ),
}
BAD_ARGUMENTS = [
    pytest.param(estimator, arguments, message, id=f"{estimator}-{message[:40]}")
    for estimator in sorted(CALLS)
    for arguments, message in ANY_ESTIMATOR + ONE_ESTIMATOR[estimator]
]


@pytest.mark.parametrize("estimator, arguments, message", BAD_ARGUMENTS)
def test_a_bad_argument_gets_one_line_naming_it(estimator, arguments, message):
    arguments = {"data": rows(4)[0]} | arguments
    vae = tiny_vae()
    state = torch.get_rng_state()
    with pytest.raises(ValueError) as error:
        CALLS[estimator](vae, **arguments)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("estimator", sorted(CALLS))
def test_distributed_without_a_launcher_is_refused(estimator, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="distributed training needs a launcher: start"):
        CALLS[estimator](tiny_vae(), rows(4)[0], distributed=True)


class OneOfTwo(Cluster):
    """Rank ``rank`` of two processes, the other's shard given (or recorded) in ``shards``."""

    def __init__(self, rank: int, shards: list):
        super().__init__(rank, 2)
        object.__setattr__(self, "shards", shards)

    def broadcast_int(self, value, device):
        return value

    def gather_objects(self, obj):
        if self.rank == 1:
            self.shards.append(obj)
            return [obj, obj]
        return [obj, self.shards[0]]


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_two_processes_share_the_data_and_get_the_single_process_numbers(estimator, monkeypatch):
    x, _ = rows()
    alone = run(estimator, x, seed=2)
    shards = []
    for rank in (1, 0):  # the second process first: the first gathers its shard
        monkeypatch.setattr(evaluation, "connect", lambda *_, r=rank: OneOfTwo(r, shards))
        result = run(estimator, x, seed=2)
    assert len(shards) == 1 and torch.equal(result, alone)


WORKER = """
import os, sys
import torch
sys.path.insert(0, {tests!r})
from test_evaluation_frontend import ESTIMATORS, rows, scorer
from pvae.infer.distributed import disconnect

x, _ = rows()
results = {{name: scorer(name)(x, seed=2) for name in ESTIMATORS}}
torch.save(results, os.path.join({out!r}, "rank" + os.environ["RANK"] + ".pt"))
disconnect()
"""


def test_under_torchrun_every_process_gets_the_single_process_numbers(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [*launcher, "--nproc_per_node=2", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    x, _ = rows()
    for rank in (0, 1):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, result in gathered.items():
            assert torch.equal(result, run(name, x, seed=2)), (name, rank)
