"""benchmarks/pyro_ss_vae.py: Pyro's M2 example re-implemented, its schedule, its time budget,
and pvae's held-out bounds on it (an expanded enumerated y across data blocks, an unsized
data plate: two pvae bugs this model found)."""

import importlib.util
import itertools
import math
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pvae
from pvae.infer.evaluation import seed_torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "pyro_ss_vae.py"
spec = importlib.util.spec_from_file_location("pyro_ss_vae", PATH)
example = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = example
spec.loader.exec_module(example)

TINY = {"z_dim": 4, "hidden": 16, "batch_size": 50}


def digits(num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(num, 784, generator=generator) < 0.3).float()
    return x, torch.randint(0, 10, (num,), generator=generator)


@pytest.fixture(scope="module")
def trained():
    x, y = digits(400)
    return example.train_pyro_ss_vae(x[:40], y[:40], x[40:], num_epochs=1, **TINY)


def test_the_schedule_is_run_inference_for_epoch_s():
    # 100 of 400 labelled: every int(400 / 100) = 4th batch from the second, while any remain.
    assert example.supervised_schedule(100, 300, 50) == [0, 1, 0, 0, 0, 1, 0, 0]
    # The example's run: 3,000 of 50,000 labelled, batch 200: batches 1, 17, ..., 225 of 250.
    schedule = example.supervised_schedule(3000, 47000, 200)
    assert len(schedule) == 250
    assert [i for i, labelled in enumerate(schedule) if labelled] == list(range(1, 226, 16))
    # Interval int(400 / 250) = 1: i % 1 == 1 never holds, so the example would run out.
    with pytest.raises(ValueError, match="places 0 of 5 labelled batches"):
        example.supervised_schedule(250, 150, 50)


def test_an_epoch_steps_both_losses_on_each_minibatch_as_scheduled(monkeypatch):
    calls, step = [], pyro.infer.SVI.step

    def recording_step(svi, *batch):
        calls.append((len(batch) == 2, batch[0].shape[0]))
        return step(svi, *batch)

    monkeypatch.setattr(pyro.infer.SVI, "step", recording_step)
    x, y = digits(400)
    ssvae = example.train_pyro_ss_vae(x[:100], y[:100], x[100:], num_epochs=1, **TINY)
    schedule = [False, True, False, False, False, True, False, False]
    assert calls == [(labelled, 50) for labelled in schedule for _ in range(2)]
    assert (ssvae.epochs_done, ssvae.steps_done, ssvae.supervised_steps) == (1, 8, 2)
    assert ssvae.classifier(x[:7]).shape == (7,)


def test_seconds_stop_training_after_the_step_that_crosses_them():
    x, y = digits(400)
    started = time.perf_counter()
    ssvae = example.train_pyro_ss_vae(x[:40], y[:40], x[40:], seconds=0.5, **TINY)
    assert 0.5 <= ssvae.train_seconds < 1.5  # one tiny step past the budget, on a busy machine
    assert time.perf_counter() - started < ssvae.train_seconds + 2.0
    assert ssvae.epochs_done == ssvae.steps_done // 9 and ssvae.steps_done > 0
    with pytest.raises(ValueError, match="exactly one"):
        example.train_pyro_ss_vae(x[:40], y[:40], x[40:], seconds=1, num_epochs=1)


def test_a_budget_crossed_at_an_epochs_last_step_counts_that_epoch():
    x, y = digits(400)
    ticks = itertools.count()  # a clock that reads one second more at each call
    ssvae = example.train_pyro_ss_vae(
        x[:40], y[:40], x[40:], seconds=9, clock=lambda: next(ticks), **TINY
    )
    assert (ssvae.steps_done, ssvae.epochs_done) == (9, 1)  # an epoch is 9 steps here


def test_iwae_bounds_the_elbo_of_the_published_guide(trained):
    x, _ = digits(10, seed=1)
    one = pvae.log_likelihood(trained.model, trained.guide, x, num_samples=1, seed=0)
    torch.testing.assert_close(one.per_datapoint, one.elbo_per_datapoint, rtol=0, atol=0)
    many = pvae.log_likelihood(trained.model, trained.guide, x, num_samples=50, seed=0)
    assert torch.isfinite(many.per_datapoint).all() and torch.isfinite(many.ess).all()
    # log of a mean of weights >= the mean of their logs, datapoint by datapoint (Jensen).
    assert (many.per_datapoint >= many.elbo_per_datapoint - 1e-9).all()
    # pvae's weight sums y inside: its ELBO column is >= the M2 ELBO (by KL(q(y|x) || p(y|x,z))),
    # and IWAE_K >= that column, so both bound Pyro's own objective from above.
    with pyro.validation_enabled(False):
        m2_elbo = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=10).loss(
            trained.model, trained.guide, x
        ) / len(x)
    assert math.isfinite(m2_elbo)
    assert many.mean >= many.elbo >= m2_elbo - 3 * many.standard_error
    # The unexpanded guide is the same bound with the same draws, summed in another order:
    # its tensors' shapes pick other kernels (9e-10 relative on one x86_64 CPU, under 1e-12
    # on another), where other draws (seed=1) move each datapoint by 4e-6 or more.
    trained.expand_enumeration = False
    try:
        same = pvae.log_likelihood(trained.model, trained.guide, x, num_samples=50, seed=0)
    finally:
        trained.expand_enumeration = True
    torch.testing.assert_close(same.per_datapoint, many.per_datapoint, rtol=1e-7, atol=0)


def test_iwae_of_the_published_guide_on_more_than_one_block(trained):
    x, _ = digits(30, seed=1)
    result = pvae.log_likelihood(trained.model, trained.guide, x, num_samples=5, seed=0)
    trained.expand_enumeration = False
    try:
        unexpanded = pvae.log_likelihood(trained.model, trained.guide, x, num_samples=5, seed=0)
    finally:
        trained.expand_enumeration = True
    torch.testing.assert_close(result.per_datapoint, unexpanded.per_datapoint)


def test_estimate_elbo_is_pyro_s_trace_enum_elbo(trained):
    x, _ = digits(30, seed=1)
    estimate = pvae.estimate_elbo(trained.model, trained.guide, x, seed=0)
    seed_torch(0, 0)  # the draws of estimate_elbo's first (here only) chunk
    with pyro.validation_enabled(False):
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(trained.model, trained.guide, x)
    assert estimate == pytest.approx(-loss / len(x), rel=1e-6)  # the same draws
