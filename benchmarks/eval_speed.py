"""Speed and memory of pvae.log_likelihood against a hand-written PyTorch IWAE estimator.

Both score the same 784-400-50 MLP VAE on the same binarized digits with K importance
samples per digit, in the same chunks (data_chunk digits x particle_chunk particles, float64
streaming logsumexp). Speed: side by side in one process. Peak memory: each K in a fresh
process (the CPU's peak resident set size only grows), so the figures are comparable.

    python benchmarks/eval_speed.py                      # K=1000 on 1000 digits; memory table
    python benchmarks/eval_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time

import pyro
import torch
from common import digits, machine, networks, synchronize
from torch.nn import functional

import pvae


@torch.no_grad()
def reference_iwae(encoder, decoder, x, num_samples, particle_chunk, data_chunk):
    """IWAE_K per datapoint, written directly: what log_likelihood computes for this VAE."""
    standard = torch.distributions.Normal(torch.zeros((), device=x.device), 1.0)
    result = []
    for start in range(0, x.shape[0], data_chunk):
        batch = x[start : start + data_chunk]
        loc, scale = encoder(batch)
        running_max = torch.full((batch.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        running_sum = torch.zeros(batch.shape[0], dtype=torch.float64, device=x.device)
        for p0 in range(0, num_samples, particle_chunk):
            particles = min(particle_chunk, num_samples - p0)
            z = loc + scale * torch.randn(particles, *loc.shape, device=x.device)
            log_lik = -functional.binary_cross_entropy_with_logits(
                decoder(z), batch.expand(particles, -1, -1), reduction="none"
            ).sum(-1)
            log_w = log_lik + standard.log_prob(z).sum(-1)
            log_w = (log_w - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)).double()
            new_max = torch.maximum(running_max, log_w.max(0).values)
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                log_w - new_max
            ).sum(0)
            running_max = new_max
        result.append(running_max + running_sum.log() - math.log(num_samples))
    return torch.cat(result)


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def speed(args, device) -> None:
    x = digits(args.num_data, device)
    encoder, decoder = networks(args.z_dim, args.hidden, device)
    vae = pvae.VAE(encoder, decoder)
    chunks = dict(particle_chunk=args.particle_chunk, data_chunk=args.data_chunk)
    seconds = {"pvae": [], "torch": []}
    for _ in range(args.repeats):
        pyro.clear_param_store()
        t, result = timed(lambda: pvae.log_likelihood(vae.model, vae.guide, x, args.k, **chunks))
        synchronize(device)
        seconds["pvae"].append(t)
        t, reference = timed(lambda: reference_iwae(encoder, decoder, x, args.k, **chunks))
        synchronize(device)
        seconds["torch"].append(t)
    pvae_rate = args.k * args.num_data / min(seconds["pvae"])
    torch_rate = args.k * args.num_data / min(seconds["torch"])
    difference = abs(result.mean - reference.mean().item())
    print(
        f"IWAE evaluation, datapoint-particles/s ({machine()}; K={args.k}, "
        f"{args.num_data} digits, chunks {args.data_chunk} x {args.particle_chunk})"
    )
    print(
        "| pvae log_likelihood | PyTorch reference | pvae/reference | mean IWAE pvae | reference |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {pvae_rate:.0f} | {torch_rate:.0f} | {pvae_rate / torch_rate:.2f} | "
        f"{result.mean:.2f} | {reference.mean().item():.2f} |"
    )
    # Different random draws: the two agree within Monte Carlo error, not exactly.
    assert difference < 5 * result.standard_error + 0.5, difference


def peak_rss_mb() -> float:
    """This process's peak resident set size. Linux's VmHWM starts afresh at exec, while
    ``ru_maxrss`` carries the parent's peak over into the child (which hid every figure
    when the speed run before had used more)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(args, device, num_samples) -> float:
    """Peak memory of log_likelihood above what the process held before it (CPU: RSS)."""
    # Random binary images: memory does not depend on pixel values, and loading the real
    # digits (a CSV parse) would set the process's peak by itself.
    x = torch.bernoulli(torch.full((args.num_data, 784), 0.3)).to(device)
    encoder, decoder = networks(args.z_dim, args.hidden, device)
    vae = pvae.VAE(encoder, decoder)
    before = peak_rss_mb()
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device) / 2**20
    pvae.log_likelihood(
        vae.model,
        vae.guide,
        x,
        num_samples,
        particle_chunk=args.particle_chunk,
        data_chunk=args.data_chunk,
    )
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - before
    return peak_rss_mb() - before


def memory(args) -> None:
    print(
        f"peak memory, MB (chunks {args.data_chunk} x {args.particle_chunk}, "
        f"{args.num_data} digits)"
    )
    print("| K | peak above the process's memory before the call |")
    print("|---|---|")
    for num_samples in args.memory_k:
        command = [sys.executable, __file__, "--measure-memory", str(num_samples)]
        command += ["--device", args.device, "--num-data", str(args.num_data)]
        command += [
            "--data-chunk",
            str(args.data_chunk),
            "--particle-chunk",
            str(args.particle_chunk),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        print(f"| {num_samples} | {float(done.stdout.strip().splitlines()[-1]):.0f} |", flush=True)


def main(args: argparse.Namespace) -> None:
    device = pvae.resolve_device(args.device)
    if args.measure_memory:
        print(peak_memory_mb(args, device, args.measure_memory))
        return
    speed(args, device)
    memory(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("-k", type=int, default=1000)
    p.add_argument("--num-data", type=int, default=1000)
    p.add_argument("--data-chunk", type=int, default=100)
    p.add_argument("--particle-chunk", type=int, default=1000)
    p.add_argument("--memory-k", type=int, nargs="*", default=[100, 1000, 5000])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
