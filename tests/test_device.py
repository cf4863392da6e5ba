import pytest
import torch

import pvae

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_cpu_without_a_gpu_and_cpu_is_cpu():
    assert pvae.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pvae.resolve_device("auto").type == expected
    assert pvae.resolve_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available: use --device cpu"):
        pvae.resolve_device("cuda")


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pvae.resolve_device("gpu")


@requires_cuda
def test_training_and_evaluation_run_on_cuda():
    device = torch.device("cuda")
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8]).to(device)
    x = torch.bernoulli(torch.full((64, 20), 0.3, device=device))
    result = pvae.fit(
        vae.model,
        vae.guide,
        x,
        num_epochs=2,
        batch_size=16,
        held_out=x[:16],
        transform=pvae.data.DynamicBinarization(),
    )
    assert all(p.device.type == "cuda" for p in vae.parameters())
    assert result.history[-1].held_out_elbo < 0


@requires_cuda
def test_log_likelihood_of_host_data_with_networks_on_the_gpu():
    vae = pvae.build_vae(20, z_dim=3, hidden_dims=[8]).cuda()
    x = torch.bernoulli(torch.full((30, 20), 0.3))
    on_host = pvae.log_likelihood(vae.model, vae.guide, x, 50, seed=0, device="cuda")
    on_gpu = pvae.log_likelihood(vae.model, vae.guide, x.cuda(), 50, seed=0)
    torch.testing.assert_close(on_host.per_datapoint, on_gpu.per_datapoint)
