"""Every kind of training data gives, through one protocol, the minibatches fit always took:
tensors and Datasets in the seeded order of each epoch (a resumed epoch goes on mid-way),
DataLoaders their own batches (a resumed epoch starts again)."""

import types

import pyro
import pytest
import torch
from test_sources import Rows
from torch.utils.data import DataLoader, TensorDataset

import pvae
from pvae.infer.distributed import Cluster
from pvae.infer.sources import read_training_data
from pvae.infer.training_sources import (
    DatasetSource,
    LoaderSource,
    TensorSource,
    training_device,
    training_source,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N, X_DIM, BATCH = 21, 4, 8


def rows():
    return torch.bernoulli(torch.full((N, X_DIM), 0.5), generator=torch.Generator().manual_seed(0))


def source_of(data, transform=None, num_data=None):
    pyro.clear_param_store()
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[3])
    settings = types.SimpleNamespace(batch_size=BATCH, transform=transform, num_data=num_data)
    data = read_training_data(data)
    device = training_device(data, None)
    return training_source(data, vae.model, vae.guide, settings, device, Cluster())


def fit_order(seed, epoch):
    """The order fit has always drawn: a function of the seed and the epoch alone."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(N, generator=generator)


def epoch_rows(source, position):
    return [batch.rows[0] for batch in source.epoch(position)]


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
def test_indexed_sources_give_the_seeded_order_of_each_epoch(kind):
    x = rows()
    source = source_of(x if kind == "tensors" else Rows(x))
    assert type(source) is (TensorSource if kind == "tensors" else DatasetSource)
    assert source.num_data == N and source.steps_per_epoch() == 3
    torch.testing.assert_close(source.first[0], x[:BATCH])
    position = source.new_position(seed=5)
    for epoch in range(2):
        order = fit_order(5, epoch)
        expected = [x[order[start : start + BATCH]] for start in range(0, N, BATCH)]
        got = [b for b in source.epoch(position)]
        assert [b.plate_size for b in got] == [N] * 3
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a.rows[0], b)
        position.finish_epoch(pvae.EpochStats(epoch + 1, 0.0, None, 0.0))


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
def test_a_resumed_epoch_goes_on_from_its_saved_position(kind):
    x = rows()
    source = source_of(x if kind == "tensors" else Rows(x))
    whole = epoch_rows(source, source.new_position(seed=1))
    position = source.new_position(seed=1)
    first = next(iter(source.epoch(position)))
    position.count(torch.tensor(1.0))
    saved = position.state_dict()
    restored = source.new_position(seed=0)
    restored.load_state_dict(saved)
    rest = epoch_rows(source, restored)
    assert torch.equal(first.rows[0], whole[0])
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(rest, whole[1:], strict=True))


def test_a_loader_gives_its_own_batches_and_restarts_a_resumed_epoch():
    x = rows()
    loader = DataLoader(TensorDataset(x), batch_size=5)
    source = source_of(loader)
    assert type(source) is LoaderSource and source.num_data == N
    assert source.steps_per_epoch() == 5
    position = source.new_position(seed=0)
    got = epoch_rows(source, position)
    assert [tuple(b.shape) for b in got] == [(5, X_DIM)] * 4 + [(1, X_DIM)]
    assert torch.equal(torch.cat(got), x)
    position.took(5)  # a saved position inside the epoch: the loader's order is its own
    assert torch.equal(torch.cat(epoch_rows(source, position)), x)


def test_sources_give_the_model_its_dtype_and_the_transform_s_output():
    x = rows()
    as_bytes = (x * 255).to(torch.uint8)
    for data in (x.double(), x.bool(), Rows(x.double())):
        assert source_of(data).first[0].dtype == torch.float32
    source = source_of(as_bytes, transform=lambda b: b.float() / 255)
    assert source.tensors[0].dtype == torch.uint8  # kept 8-bit until each minibatch
    torch.testing.assert_close(source.first[0], x[:BATCH])
    rows_to_check = source.rows_to_check
    assert rows_to_check.rows[0] is source.tensors[0] and rows_to_check.transform is not None


def test_a_loader_without_len_needs_num_data():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from rows()

    with pytest.raises(ValueError, match="pass num_data="):
        source_of(DataLoader(Stream(), batch_size=4))
    source = source_of(DataLoader(Stream(), batch_size=4), num_data=N)
    assert source.num_data == N and source.steps_per_epoch() is None
