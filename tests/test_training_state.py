"""Each part of the training state writes and reads its own checkpoint section, and the whole
round-trips: what state_dict gives, load_state_dict takes back to the same state."""

import pyro
import pytest
import torch

import pvae
from pvae.infer.captured_steps import AutoChoice
from pvae.infer.distributed import Cluster
from pvae.infer.schedules import EarlyStopping
from pvae.infer.training_state import Parameters, Position, RandomState, TrainingState

pytestmark = pytest.mark.usefixtures("one_thread")


def equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_position_round_trips_between_and_inside_epochs():
    position = Position(seed=9, device=torch.device("cpu"))
    position.start_epoch(torch.randperm(10))
    position.took(4)
    position.count(torch.tensor(3.5))
    position.finish_epoch(pvae.EpochStats(1, -2.0, -2.5, 0.1))
    position.start_epoch(torch.randperm(10))
    position.took(4)
    position.count(torch.tensor(1.5))
    restored = Position(seed=0, device=torch.device("cpu"))
    restored.load_state_dict(position.state_dict())
    assert equal(restored.state_dict(), position.state_dict())
    assert restored.history == position.history and restored.mid_epoch


def test_early_stopping_round_trips_and_keeps_this_run_s_patience():
    stopping = EarlyStopping(patience=2, held_out_samples=5)
    for epoch, bound in enumerate([-3.0, -2.0, -2.5], 1):
        stopping.update(epoch, bound)
    restored = EarlyStopping(patience=7)
    restored.load_state_dict(stopping.state_dict())
    assert restored.patience == 7 and restored.best_epoch == 2 and restored.held_out_samples == 5
    old = EarlyStopping()
    old.load_state_dict({"best_elbo": -1.0, "best_epoch": 3, "stale_epochs": 0})
    assert old.best_bound == -1.0  # checkpoints from before held_out_samples


def test_the_random_state_round_trips():
    position = Position(seed=0, device=torch.device("cpu"))
    rng = RandomState(Cluster(), position)
    saved = rng.state_dict()
    drawn = torch.rand(3)
    rng.load_state_dict(saved)
    assert torch.equal(torch.rand(3), drawn)


def small_state(seed):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    weights = {"w": torch.randn(3, requires_grad=True), "b": torch.randn(2, requires_grad=True)}
    optimizer = torch.optim.Adam(list(weights.values()), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    position = Position(seed=seed, device=torch.device("cpu"))
    return TrainingState(
        Parameters(weights, torch.device("cpu")),
        optimizer,
        scheduler,
        EarlyStopping(held_out_samples=1),
        position,
        RandomState(Cluster(), position),
        num_data=10,
        auto_compile=AutoChoice(),
    )


def test_a_training_state_round_trips_through_its_sections():
    state = small_state(0)
    loss = sum((p**2).sum() for p in state.params.tensors.values())
    loss.backward()
    state.optimizer.step()
    state.lr_scheduler.step()
    state.position.start_epoch(torch.randperm(10))
    state.position.took(4)
    state.position.count(loss.detach())
    state.early_stopping.update(1, -4.0)
    state.auto_compile.record(True)
    saved = state.state_dict()
    assert set(saved) == {
        "params",
        "optimizer",
        "lr_scheduler",
        "early_stopping",
        "training",
        "rng",
        "epoch",
        "auto_compile",
    }
    restored = small_state(1)
    restored.load_state_dict(saved, "c.pt")
    again = restored.state_dict()
    for key in ("params", "optimizer", "lr_scheduler", "early_stopping", "training", "epoch"):
        assert equal(again[key], saved[key]), key
    assert again["auto_compile"] == {"compiled": True}


def test_a_damaged_section_is_one_error_naming_the_file_and_the_section():
    saved = small_state(0).state_dict()
    saved["training"]["history"] = [{"epoch": 1, "surprise": 2}]
    with pytest.raises(ValueError, match="c.pt"):
        small_state(1).load_state_dict(saved, "c.pt")
    saved = small_state(0).state_dict()
    saved["params"]["w"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"^c.pt: the checkpoint does not fit .*'w' has shape"):
        small_state(1).load_state_dict(saved, "c.pt")
