"""Training speed of an enumerated Gaussian-mixture VAE: pvae.fit against hand-written PyTorch.

The model is a VAE whose prior is a mixture of C Gaussians with a discrete component c,
written in Pyro with ``infer={"enumerate": "parallel"}`` on c so that it is summed out
exactly; the guide is q(z|x) alone. pvae.fit trains it by the ELBO (c summed out of the
model). The reference writes the same objective directly in PyTorch:

    log p(x|z) + logsumexp_c [log π_c + log N(z; μ_c, σ_c)] − log q(z|x),

with the same networks, initial weights, data and fused Adam, side by side in one process.
Printed: samples/s after a warm-up epoch, best of ``--repeats`` interleaved runs, and the
ratio pvae/reference.

    python benchmarks/enum_speed.py                       # 10 components, batch 256
    python benchmarks/enum_speed.py --components 10 --batch-sizes 100 256 1024
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from common import digits, machine, networks, samples_per_second
from torch import nn
from torch.nn import functional
from train_speed import hand_written_pair

import pvae


class MixturePrior(nn.Module):
    """π (logits), μ and log σ of C diagonal Gaussian components, same initial values each call."""

    def __init__(self, components: int, z_dim: int, seed: int = 1):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, z_dim, generator=generator))
        self.log_scales = nn.Parameter(torch.zeros(components, z_dim))

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log Σ_c π_c N(z; μ_c, σ_c) for z [..., z_dim], written out."""
        log_pi = torch.log_softmax(self.logits, -1)
        components = torch.distributions.Normal(self.locs, self.log_scales.exp())
        log_n = components.log_prob(z.unsqueeze(-2)).sum(-1)  # [..., C]
        return torch.logsumexp(log_pi + log_n, -1)


def enumerated_pair(encoder, decoder, prior: MixturePrior):
    """The Pyro model/guide: c ~ Categorical(π) enumerated, z ~ N(μ_c, σ_c), x ~ Bernoulli."""

    def model(x):
        pyro.module("decoder", decoder)
        pyro.module("prior", prior)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", dist.Categorical(logits=prior.logits), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(prior.locs[c], prior.log_scales[c].exp()).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    _, guide = hand_written_pair(encoder, decoder, prior.locs.shape[-1])  # q(z|x) alone
    return model, guide


def hand_written(data, batch_size, encoder, decoder, prior):
    """One epoch per call of the same ELBO in PyTorch, with fused Adam."""
    parameters = [*encoder.parameters(), *decoder.parameters(), *prior.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=True)
    num_data = data.shape[0]

    def epoch():
        order = torch.randperm(num_data, device=data.device)
        for start in range(0, num_data, batch_size):
            x = data[order[start : start + batch_size]]
            loc, scale = encoder(x)
            q = torch.distributions.Normal(loc, scale)
            z = q.rsample()
            log_lik = -functional.binary_cross_entropy_with_logits(
                decoder(z), x, reduction="none"
            ).sum(-1)
            elbo = log_lik + prior.log_density(z) - q.log_prob(z).sum(-1)
            loss = -(num_data / x.shape[0]) * elbo.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def pvae_speed(data, batch_size, model, guide, epochs) -> float:
    marks = []
    pvae.fit(
        model,
        guide,
        data,
        num_epochs=epochs + 1,
        batch_size=batch_size,
        progress=False,
        on_epoch_end=lambda stats: marks.append(time.perf_counter()),
    )
    return epochs * data.shape[0] / (marks[-1] - marks[0])


def main(args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = digits(args.num_data, device)
    print(
        f"enumerated GMVAE training speed, samples/s ({machine()}; ELBO, {args.components} "
        f"components; {args.num_data} digits, 784-{args.hidden}-{args.z_dim} MLP, "
        f"{args.epochs} timed epochs after 1 warm-up, best of {args.repeats})"
    )
    print("| batch | PyTorch logsumexp, fused Adam | pvae.fit, enumerated | pvae/PyTorch |")
    print("|---|---|---|---|")
    for batch_size in args.batch_sizes:
        speeds: dict[str, list[float]] = {"torch": [], "pvae": []}
        for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            epoch = hand_written(
                data, batch_size, encoder, decoder, MixturePrior(args.components, args.z_dim)
            )
            speeds["torch"].append(samples_per_second(epoch, args.num_data, device, args.epochs))
            pyro.clear_param_store()
            encoder, decoder = networks(args.z_dim, args.hidden, device)
            model, guide = enumerated_pair(
                encoder, decoder, MixturePrior(args.components, args.z_dim)
            )
            speeds["pvae"].append(pvae_speed(data, batch_size, model, guide, args.epochs))
        best = {name: max(values) for name, values in speeds.items()}
        print(
            f"| {batch_size} | {best['torch']:.0f} | {best['pvae']:.0f} | "
            f"{best['pvae'] / best['torch']:.2f} |",
            flush=True,
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--num-data", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--threads", type=int, default=None)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
