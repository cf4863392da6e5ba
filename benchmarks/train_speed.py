"""Training speed of pvae.fit against hand-written PyTorch and Pyro's example style.

All four train the same 784-400-50 MLP VAE (Bernoulli logits, single-sample ELBO, Adam, lr
1e-3) on the same binarized digits, side by side in one process, and report samples/s after
a warm-up epoch, with ratios to the hand-written PyTorch reference.

    python benchmarks/train_speed.py                       # CPU, batches 256 and 1024
    python benchmarks/train_speed.py --device cuda --num-data 60000
    python benchmarks/train_speed.py --device cuda --num-data 60000 --host-data
    python benchmarks/train_speed.py -k 5 --batch-sizes 100     # the IWAE bound, K = 5
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch
from common import digits, machine, networks, samples_per_second
from torch.nn import functional

import pvae


def pytorch_reference(data, batch_size, encoder, decoder, fused=None, num_particles=1):
    """The same bound written directly in PyTorch: one epoch per call.

    The ELBO, or with ``num_particles`` K > 1 the IWAE bound log (1/K) Σ_k w_k. ``fused=True``
    gives Adam the fused kernel that pvae.fit uses, to separate the cost of the interface
    from that of the optimizer.
    """
    parameters = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=fused)
    num_data = data.shape[0]
    standard = torch.distributions.Normal(
        torch.zeros((), device=data.device), torch.ones((), device=data.device)
    )

    def epoch():
        order = torch.randperm(num_data, device=data.device)
        for start in range(0, num_data, batch_size):
            x = data[order[start : start + batch_size]]
            loc, scale = encoder(x)
            z = loc + scale * torch.randn((num_particles, *loc.shape), device=loc.device)
            log_lik = -functional.binary_cross_entropy_with_logits(
                decoder(z), x.expand(num_particles, -1, -1), reduction="none"
            ).sum(-1)
            log_prior = standard.log_prob(z).sum(-1)
            log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
            log_w = log_lik + log_prior - log_q
            if num_particles == 1:
                bound = log_w[0]
            else:
                bound = torch.logsumexp(log_w, 0) - math.log(num_particles)
            loss = -(num_data / x.shape[0]) * bound.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def pyro_example_style(data, batch_size, encoder, decoder, num_particles=1):
    """Pyro's VAE example as published: SVI.step per DataLoader batch, pyro.optim.Adam;
    with K > 1 particles Pyro's IWAE bound, ``RenyiELBO(alpha=0)``."""
    pyro.clear_param_store()
    vae = pvae.VAE(encoder, decoder)
    loss = pyro.infer.Trace_ELBO()
    if num_particles > 1:
        loss = pyro.infer.RenyiELBO(
            alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
        )
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data), batch_size=batch_size, shuffle=True
    )

    def epoch():
        for (x,) in loader:
            svi.step(x)

    return epoch


def hand_written_pair(encoder, decoder, z_dim):
    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))

    return model, guide


def pvae_fit(data, batch_size, model, guide, epochs, device, num_particles=1):
    """samples/s of pvae.fit over ``epochs`` epochs after its first (warm-up) epoch."""
    marks = []
    pvae.fit(
        model,
        guide,
        data,
        num_epochs=epochs + 1,
        batch_size=batch_size,
        objective="iwae" if num_particles > 1 else "elbo",
        num_particles=num_particles,
        device=device,
        progress=False,
        on_epoch_end=lambda stats: marks.append(time.perf_counter()),
    )
    return epochs * data.shape[0] / (marks[-1] - marks[0])


def main(args: argparse.Namespace) -> None:
    device = pvae.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = digits(args.num_data, device)
    # --host-data: pvae streams minibatches from pinned host memory to the device.
    pvae_data = data.cpu() if args.host_data else data
    k = args.num_particles
    bound = f"IWAE_{k}, Pyro's RenyiELBO(alpha=0) for (c)" if k > 1 else "ELBO"
    print(
        f"training speed, samples/s ({machine()}; {bound}; {args.num_data} digits, "
        f"784-{args.hidden}-{args.z_dim} MLP, {args.epochs} timed epochs after 1 warm-up)"
    )
    print(
        "| batch | PyTorch (a) | PyTorch, fused Adam (a') | pvae VAE | pvae hand-written "
        "| Pyro example (c) | VAE/(a) | hand-written/(a) | VAE/(a') | hand-written/(a') "
        "| VAE/(c) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        speeds = {}
        for _ in range(args.repeats):  # interleaved, so that machine noise hits all alike
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            epoch = pytorch_reference(data, batch_size, encoder, decoder, None, k)
            speeds.setdefault("torch", []).append(
                samples_per_second(epoch, args.num_data, device, args.epochs)
            )
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            epoch = pytorch_reference(data, batch_size, encoder, decoder, True, k)
            speeds.setdefault("fused", []).append(
                samples_per_second(epoch, args.num_data, device, args.epochs)
            )
            pyro.clear_param_store()
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            vae = pvae.VAE(encoder, decoder)
            speeds.setdefault("vae", []).append(
                pvae_fit(pvae_data, batch_size, vae.model, vae.guide, args.epochs, device, k)
            )
            pyro.clear_param_store()
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            model, guide = hand_written_pair(encoder, decoder, args.z_dim)
            speeds.setdefault("hand", []).append(
                pvae_fit(pvae_data, batch_size, model, guide, args.epochs, device, k)
            )
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            epoch = pyro_example_style(data, batch_size, encoder, decoder, k)
            speeds.setdefault("pyro", []).append(
                samples_per_second(epoch, args.num_data, device, args.epochs)
            )
        best = {name: max(values) for name, values in speeds.items()}
        ratios = [
            best[pvae_row] / best[reference]
            for reference in ("torch", "fused")
            for pvae_row in ("vae", "hand")
        ]
        figures = [best[name] for name in ("torch", "fused", "vae", "hand", "pyro")]
        print(
            f"| {batch_size} | "
            + " | ".join(f"{speed:.0f}" for speed in figures)
            + " | "
            + " | ".join(f"{ratio:.2f}" for ratio in ratios)
            + f" | {best['vae'] / best['pyro']:.2f} |",
            flush=True,
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--num-data", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="best of this many runs each")
    p.add_argument(
        "--host-data",
        action="store_true",
        help="pvae keeps the data in host memory and copies each minibatch (with --device cuda)",
    )
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "-k", "--num-particles", type=int, default=1, help="K > 1: train the IWAE bound instead"
    )
    return p


if __name__ == "__main__":
    main(parser().parse_args())
