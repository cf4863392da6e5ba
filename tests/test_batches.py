"""Minibatches from host memory: the same rows, the same training, nothing aliased."""

import pyro
import pytest
import torch

import pvae
from pvae.data import DynamicBinarization
from pvae.infer import training_sources
from pvae.infer.batches import DeviceBatches, HostBatches

pytestmark = pytest.mark.usefixtures("one_thread")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_host_batches_give_the_rows_asked_for_prefetched_or_not():
    x, y = torch.randn(50, 3), torch.arange(50)
    batches = HostBatches((x, y), torch.device("cpu"), max_rows=8)
    first, second = torch.tensor([4, 9, 1]), torch.tensor([7, 0])
    batches.prefetch(first)
    got = batches.get(first)
    batches.prefetch(second)
    batches.prefetch(torch.tensor([3]))  # refills the other buffer: `got` must not change
    torch.testing.assert_close(got, (x[first], y[first]))
    # A prefetch for other rows is ignored, not served.
    torch.testing.assert_close(batches.get(second), (x[second], y[second]))
    with pytest.raises(ValueError, match="buffers hold 8"):
        batches.get(torch.arange(9))


def test_fit_from_host_batches_trains_exactly_as_from_device_batches(monkeypatch):
    """Forcing the host path on the CPU checks its prefetch bookkeeping inside fit: the
    parameters must be bit-identical, with a last batch of another size and a transform."""
    x = torch.bernoulli(torch.full((70, 12), 0.4, dtype=torch.float64))

    def train_with(batch_source):
        monkeypatch.setattr(training_sources, "DeviceBatches", batch_source)
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pvae.build_vae(12, z_dim=2, hidden_dims=[6]).double()
        result = pvae.fit(
            vae.model,
            vae.guide,
            x,
            num_epochs=2,
            batch_size=16,
            seed=3,
            transform=DynamicBinarization(),
            held_out=x[:10],
        )
        return [p.detach().clone() for p in vae.parameters()], result.history

    on_device = train_with(DeviceBatches)
    from_host = train_with(lambda tensors: HostBatches(tensors, torch.device("cpu"), 16))
    for a, b in zip(on_device[0], from_host[0], strict=True):
        assert torch.equal(a, b)
    figures = [
        [(s.epoch, s.train_bound, s.held_out_elbo) for s in run[1]]
        for run in (on_device, from_host)
    ]
    assert figures[0] == figures[1]


def test_data_on_another_accelerator_than_the_device_is_refused():
    x = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match="streams minibatches from host memory only"):
        training_sources.training_device((x,), "cpu")


@requires_cuda
def test_host_data_train_on_the_gpu_like_gpu_data():
    x = torch.bernoulli(torch.full((96, 20), 0.3))
    runs = []
    for data in (x, x.cuda()):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8]).cuda()
        result = pvae.fit(
            vae.model,
            vae.guide,
            data,
            num_epochs=2,
            batch_size=16,
            seed=1,
            device="cuda",
            held_out=data[:32],
        )
        runs.append(([p.detach().cpu() for p in vae.parameters()], result.history[-1]))
    assert x.device.type == "cpu"
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        torch.testing.assert_close(a, b)
    assert runs[0][1].held_out_elbo == pytest.approx(runs[1][1].held_out_elbo, rel=1e-5)
