"""Explore a VAE's latent space: samples, interpolations, traversals and the latent map.

    python examples/latent_space.py                         # trains a VAE first (MNIST offline)
    python examples/latent_space.py --checkpoint runs/mnist_svi/checkpoint.pt
    python examples/latent_space.py --z-dim 2 --out runs/latent_2d    # the decoded manifold

Prints how many latent dimensions the VAE uses (active units: the variance over held-out
images of a dimension's posterior mean is above 0.01, Burda et al., 2016). Writes into
--out: samples.png (prior samples), interpolation.png (between held-out digits of two
classes, linear and spherical, in the latent space), traversal.png (one held-out digit,
the most active dimensions varied one per row from -3 to 3), latent_map.png (z_dim 2: the
decoded manifold; larger z_dim: posterior means of the held-out digits on their first two
principal components, coloured by class) and, when it trains, checkpoint.pt.
"""
# test flags: -n 1 --batch-size 500 --z-dim 3 --hidden-dim 32

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _training import add_training_flags, load_small_vae, set_up, train_small_vae

import pvae
from pvae.analysis.latent import latent_activity
from pvae.cli import run_script
from pvae.data import held_out_data

# Pairs of classes to interpolate between (MNIST: 0-6, 1-7, 3-8, 4-9).
PAIRS = [(0, 6), (1, 7), (3, 8), (4, 9)]
ACTIVE = 0.01


def main(args: argparse.Namespace) -> None:
    device, data = set_up(args)
    held_out = held_out_data(data.test_x, "binarized").to(device)
    print(f"{data.name} ({data.source}): {held_out.shape[0]} held-out images; device {device}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        vae = load_small_vae(args, device, adversarial_ok=True)
    else:
        vae = train_small_vae(args, data.train_x.to(device), held_out, out)
    vae.eval()

    activity = latent_activity(vae.encode, held_out).cpu()
    order = activity.argsort(descending=True)
    print(
        f"active units: {int((activity > ACTIVE).sum())} of {vae.z_dim} latent dimensions "
        f"(variance of the posterior mean > {ACTIVE}); most active: "
        + ", ".join(f"z{d} ({activity[d]:.2f})" for d in order[:5].tolist())
    )
    shape = data.image_shape
    pvae.plots.save_sample_grid(vae.sample(100), out / "samples.png", shape)
    labels = data.test_y.to(device)
    pairs = [(a, b) for a, b in PAIRS if (labels == a).any() and (labels == b).any()]
    starts = torch.stack([held_out[labels == a][0] for a, _ in pairs])
    ends = torch.stack([held_out[labels == b][0] for _, b in pairs])
    pvae.plots.save_interpolations(vae, starts, ends, out / "interpolation.png", image_shape=shape)
    pvae.plots.save_traversals(
        vae,
        held_out[0],
        out / "traversal.png",
        dims=order[: args.traversal_dims],
        image_shape=shape,
    )
    pvae.plots.save_latent_map(
        vae, held_out, data.test_y, out / "latent_map.png", image_shape=shape
    )
    print(f"wrote samples, interpolation, traversal, latent_map (PNG) to {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="explore this pvae checkpoint.pt")
    p.add_argument("--traversal-dims", type=int, default=10, help="rows of traversal.png")
    add_training_flags(p, out="runs/latent_space")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
