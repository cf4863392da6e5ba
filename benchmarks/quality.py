"""Held-out IWAE_5000 of the IWAE paper's one-stochastic-layer VAE trained with each objective.

The architecture of Burda et al. (2016), section 5: 784-200-200-50 (encoder and decoder), tanh,
Bernoulli likelihood, dynamic binarization of the training images, Adam. Every objective gets
the same budget (epochs, batch size, learning rate, seed); the held-out bound is IWAE_K with
K = 5000 on held-out images binarized once with pvae's fixed seed.

    python benchmarks/quality.py                      # Fashion-MNIST, offline
    python benchmarks/quality.py --data-dir DIR       # Fashion-MNIST IDX files in DIR
    python benchmarks/quality.py --dataset mnist --epochs 50 --eval-points 10000

Paper figures for orientation (MNIST, 3280 epochs, K = 5000): VAE 86.76, IWAE-50 84.78 nats.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

import pvae
from pvae.data import DynamicBinarization, held_out_data, load_dataset
from pvae.models.nets import GaussianEncoder, MLPDecoder

PAPER_HIDDEN = [200, 200]


def train_and_evaluate(objective: str, data, held_out, args) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    x_dim = data.train_x.shape[1]
    vae = pvae.VAE(
        GaussianEncoder(x_dim, args.z_dim, PAPER_HIDDEN, "tanh"),
        MLPDecoder(args.z_dim, x_dim, PAPER_HIDDEN, "tanh"),
    )
    particles = 1 if objective == "elbo" else args.k
    started = time.perf_counter()
    result = pvae.fit(
        vae.model,
        vae.guide,
        data.train_x,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        objective=objective,
        num_particles=particles,
        transform=DynamicBinarization(),
        seed=args.seed,
    )
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bound = pvae.log_likelihood(vae.model, vae.guide, held_out, args.eval_samples, seed=0)
    return {
        "objective": objective if objective == "elbo" else f"{objective}-{args.k}",
        "train bound": result.history[-1].train_bound,
        f"IWAE_{args.eval_samples}": bound.mean,
        "s.e.": bound.standard_error,
        "ELBO": bound.elbo,
        "k̂ above": bound.fraction_khat_above,
        "train s": train_seconds,
        "eval s": time.perf_counter() - started,
    }


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    if args.train_points:
        data.train_x = data.train_x[: args.train_points]
    held_out = held_out_data(data.test_x[: args.eval_points], "binarized")
    print(
        f"{data.name} ({data.source}): {data.train_x.shape[0]} train, {held_out.shape[0]} "
        f"held-out; 784-200-200-{args.z_dim} tanh, {args.epochs} epochs, batch "
        f"{args.batch_size}, lr {args.learning_rate}, seed {args.seed}"
    )
    rows = [train_and_evaluate(objective, data, held_out, args) for objective in args.objectives]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        cells[header.index("k̂ above")] = f"{100 * row['k̂ above']:.0f}%"
        print("| " + " | ".join(cells) + " |")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument(
        "--data-dir",
        default=None,
        help="fashion-mnist default: $PVAE_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist; "
        "mnist default: $PVAE_DATA_DIR or ~/.cache/pvae",
    )
    p.add_argument("--objectives", nargs="+", default=["elbo", "iwae", "dreg"])
    p.add_argument("-k", type=int, default=5, help="K of the iwae and dreg objectives")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--train-points", type=int, default=None, help="default: all")
    p.add_argument("--eval-points", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
