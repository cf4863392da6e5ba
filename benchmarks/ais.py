"""Speed and memory of pvae.ais against a hand-written HMC-AIS in plain PyTorch.

Both anneal the same 784-400-50 MLP VAE (Bernoulli likelihood, N(0, I) prior, diagonal
Gaussian guide) on the same binarized digits from the guide to the posterior, on the same
sigmoidal schedule, with the same HMC (identity mass, fixed leapfrog count) and the same
step-size adaptation on separate adaptation chains. Speed: datapoint-chain-steps per second
of the estimating chains, the two interleaved in one process. Peak memory: each num_chains in
a fresh process, at a fixed chunk of chains and datapoints.

    python benchmarks/ais.py                   # 100 digits x 16 chains x 100 steps; memory table
    python benchmarks/ais.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time

import pyro
import torch
from common import digits, machine, networks, synchronize
from eval_speed import peak_rss_mb
from torch.nn import functional

import pvae
from pvae.infer.ais import annealing_schedule
from pvae.infer.capture import BACKENDS

# The adaptation rule of pvae.infer.ais.hmc, written again: log ε += 0.5 (acceptance - target).
_RATE = 0.5


class ReferenceAIS:
    """HMC-AIS for this VAE written directly: what pvae.ais computes, without Pyro."""

    def __init__(self, encoder, decoder, x, args):
        self.decoder, self.x, self.args = decoder, x, args
        self.loc, self.scale = encoder(x)
        self.betas = annealing_schedule(args.steps).tolist()

    def ends(self, z):
        """log q + its gradient and log p(x, z) + its gradient at z [C, N, Z]."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            logits = self.decoder(z)
            log_lik = -functional.binary_cross_entropy_with_logits(
                logits, self.x.expand(z.shape[0], -1, -1), reduction="none"
            ).sum(-1)
            end = log_lik - 0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            start = torch.distributions.Normal(self.loc, self.scale).log_prob(z).sum(-1)
            (grad_end,) = torch.autograd.grad(end.sum(), z)
            (grad_start,) = torch.autograd.grad(start.sum(), z)
        return start.detach(), end.detach(), grad_start, grad_end

    def run(self, num_chains, sizes=None):
        """Log-weights [C, N]; with ``sizes=None``, adapt and return the sizes used instead."""
        z = self.loc + self.scale * torch.randn(num_chains, *self.loc.shape, device=self.x.device)
        state = (z, *self.ends(z))
        log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
        log_size = torch.full((z.shape[1],), math.log(self.args.step_size), device=z.device)
        used = []
        for t in range(1, len(self.betas)):
            beta, last = self.betas[t], self.betas[t - 1]
            log_w += (beta - last) * (state[2] - state[1]).double()
            if t == len(self.betas) - 1:
                break
            size = log_size.exp() if sizes is None else sizes[t - 1]
            used.append(size)
            state, acceptance = self.transition(state, beta, size)
            log_size = log_size + _RATE * (acceptance.mean(0) - self.args.target)
        return log_w if sizes is not None else torch.stack(used)

    def transition(self, state, beta, size):
        z, start, end, g_start, g_end = state
        eps = size[None, :, None]
        p = torch.randn_like(z)
        energy = -((1 - beta) * start + beta * end) + 0.5 * p.square().sum(-1)
        new = state
        p = p + 0.5 * eps * ((1 - beta) * g_start + beta * g_end)
        for step in range(self.args.leapfrog):
            moved = new[0] + eps * p
            new = (moved, *self.ends(moved))
            half = 0.5 if step == self.args.leapfrog - 1 else 1.0
            p = p + half * eps * ((1 - beta) * new[3] + beta * new[4])
        proposed = -((1 - beta) * new[1] + beta * new[2]) + 0.5 * p.square().sum(-1)
        log_accept = torch.nan_to_num((energy - proposed).clamp(max=0), nan=-math.inf)
        accept = torch.rand_like(log_accept).log() < log_accept
        kept = []
        for old, proposal in zip(state, new, strict=True):
            mask = accept if proposal.dim() == 2 else accept[..., None]
            kept.append(torch.where(mask, proposal, old))
        return tuple(kept), log_accept.exp()


@torch.no_grad()
def reference_ais(encoder, decoder, x, args) -> torch.Tensor:
    """Per-datapoint AIS estimates [N], adaptation chains first, then the estimating chains."""
    reference = ReferenceAIS(encoder, decoder, x, args)
    sizes = reference.run(args.adaptation_chains)
    log_w = reference.run(args.chains, sizes)
    return torch.logsumexp(log_w, 0) - math.log(args.chains)


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def run_pvae(vae, x, args, chain_chunk=None, data_chunk=None, compile="off"):
    return pvae.ais(
        vae.model, vae.guide, x, args.steps, args.chains, leapfrog_steps=args.leapfrog,
        step_size=args.step_size, target_acceptance=args.target,
        adaptation_chains=args.adaptation_chains, chain_chunk=chain_chunk,
        data_chunk=data_chunk, compile=compile,
    )  # fmt: skip


def speed(args, device) -> None:
    """pvae.ais with each ``--compile`` mode and the reference, interleaved, best of repeats."""
    x = digits(args.num_data, device)
    encoder, decoder = networks(args.z_dim, args.hidden, device)
    vae = pvae.VAE(encoder, decoder)
    seconds = {mode: [] for mode in [*args.compile, "torch"]}
    for _ in range(args.repeats):
        for mode in args.compile:
            pyro.clear_param_store()
            t, result = timed(lambda: run_pvae(vae, x, args, compile=mode))  # noqa: B023
            synchronize(device)
            seconds[mode].append(t)
        t, reference = timed(lambda: reference_ais(encoder, decoder, x, args))
        synchronize(device)
        seconds["torch"].append(t)
    work = args.num_data * args.chains * args.steps
    rates = {name: work / min(times) for name, times in seconds.items()}
    print(
        f"AIS, datapoint-chain-steps/s ({machine()}; {args.num_data} digits, {args.chains} "
        f"chains + {args.adaptation_chains} adaptation chains, {args.steps} steps x "
        f"{args.leapfrog} leapfrog steps; capture's cost included)"
    )
    modes = " | ".join(f"pvae ais, compile={mode} (/reference)" for mode in args.compile)
    print(f"| {modes} | PyTorch reference | mean AIS pvae | reference |")
    print("|---|" + "---|" * (len(args.compile) + 2))
    cells = " | ".join(f"{rates[m]:.0f} ({rates[m] / rates['torch']:.2f}×)" for m in args.compile)
    print(f"| {cells} | {rates['torch']:.0f} | {result.mean:.2f} | {reference.mean().item():.2f} |")
    # Different random draws: the two agree within Monte Carlo error, not exactly.
    difference = abs(result.mean - reference.mean().item())
    assert difference < 5 * result.standard_error + 1.0, difference


def peak_memory_mb(args, device, num_chains) -> float:
    """Peak memory of pvae.ais above what the process held before it (CPU: RSS)."""
    x = torch.bernoulli(torch.full((args.num_data, 784), 0.3)).to(device)
    encoder, decoder = networks(args.z_dim, args.hidden, device)
    vae = pvae.VAE(encoder, decoder)
    args.chains = num_chains
    before = peak_rss_mb()
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device) / 2**20
    run_pvae(vae, x, args, chain_chunk=args.chain_chunk, data_chunk=args.data_chunk)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - before
    return peak_rss_mb() - before


def memory(args) -> None:
    print(
        f"peak memory, MB (chunks {args.data_chunk} digits x {args.chain_chunk} chains, "
        f"{args.num_data} digits, {args.memory_steps} steps)"
    )
    print("| chains | peak above the process's memory before the call |")
    print("|---|---|")
    for num_chains in args.memory_chains:
        command = [sys.executable, __file__, "--measure-memory", str(num_chains)]
        command += ["--device", args.device, "--num-data", str(args.num_data)]
        command += ["--data-chunk", str(args.data_chunk), "--chain-chunk", str(args.chain_chunk)]
        command += ["--steps", str(args.memory_steps), "--hidden", str(args.hidden)]
        command += ["--leapfrog", str(args.leapfrog)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        print(f"| {num_chains} | {float(done.stdout.strip().splitlines()[-1]):.0f} |", flush=True)


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
    p.add_argument("--num-data", type=int, default=100)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--target", type=float, default=0.65)
    p.add_argument("--adaptation-chains", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--compile", nargs="+", default=["off", *BACKENDS], choices=["off", *BACKENDS],
        help="pvae.ais's compile modes to time",
    )  # fmt: skip
    p.add_argument("--data-chunk", type=int, default=50)
    p.add_argument("--chain-chunk", type=int, default=16)
    p.add_argument("--memory-chains", type=int, nargs="*", default=[16, 64, 256])
    p.add_argument("--memory-steps", type=int, default=5)
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
