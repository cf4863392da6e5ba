"""Data imputation with a VAE: complete held-out digits from part of their pixels.

    python examples/imputation.py                      # MNIST offline, top half and random 50%
    python examples/imputation.py --mask top --checkpoint runs/mnist_svi/checkpoint.pt

Each held-out digit is seen only in part: its top half (--mask top), or a random 50% of its
pixels (--mask random), or both in turn (--mask both, the default). The model p(z) p(x|z)
scores only the observed pixels (pvae.imputation.masked_model: the likelihood of every
hidden pixel is masked out), and the posterior p(z | x_obs) is reached two ways:

* self-normalized importance sampling with the VAE's guide as proposal (K = --num-particles
  draws per image). The guide was trained on whole images, so it needs a value for every
  pixel: the hidden ones are set to the mean training image (the per-pixel mean of the grey
  levels, which says nothing about this digit). The weights p(z) p(x_obs|z) / q(z|x_filled)
  correct for that choice; their effective sample size (ESS) says how well it worked.
* NUTS in the latent space (Pyro's NUTS, one chain over the latents of all images at once,
  --nuts-warmup adaptation steps, then --nuts-samples draws), started at the guide's mean.

The hidden pixels are then completed by the posterior mean E[x_hid | x_obs] and by single
posterior draws E[x_hid | z]. The table gives the error on the hidden pixels against the
binary truth (mean squared error of the predicted probability, the Brier score, and the
fraction of pixels on the wrong side of 0.5), as mean ± standard error over images, for
both and for three references: the mean training image, the nearest training image (on
the observed pixels), and the guide alone (the decoder at the guide's mean for the filled
image, what a plain autoencoder would do).

Writes into --out: imputation.png (a few digits: original, observed part with the hidden
pixels in blue, each completion), imputation.csv (the table) and, when it trains,
checkpoint.pt (reuse it with --checkpoint).
"""
# test flags: -n 1 --batch-size 500 --num-images 4 -k 20 --nuts-warmup 5 --nuts-samples 5

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from _training import add_training_flags, load_small_vae, set_up, train_small_vae

import pvae
from pvae.analysis.imputation import fill_missing, impute_importance, impute_nuts
from pvae.cli import run_script
from pvae.data import held_out_data

MASKS = {"top": "top half", "random": "random 50%"}
HIDDEN_COLOUR = torch.tensor([0.15, 0.3, 0.8])


def main(args: argparse.Namespace) -> None:
    device, data = set_up(args)
    x = held_out_data(data.test_x, "binarized")[: args.num_images].to(device)
    train_x = data.train_x.to(device)
    # The guide's input at hidden pixels: the mean training image (documented above).
    fill = train_x.mean(0)
    print(
        f"{data.name} ({data.source}): completing {x.shape[0]} held-out images; "
        f"{train_x.shape[0]} training images; device {device}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae = (
        load_small_vae(args, device) if args.checkpoint else train_small_vae(args, train_x, x, out)
    )
    vae.eval()

    masks = list(MASKS) if args.mask == "both" else [args.mask]
    rows, table = [], []
    for mask in masks:
        observed = make_mask(mask, x, data.image_shape, args.seed)
        completions = complete(vae, x, observed, fill, train_x, args)
        table += report(mask, x, observed, completions)
        rows.append(picture_rows(x, observed, completions, args.num_show, data.image_shape))
    labels = [MASKS[m] for m, r in zip(masks, rows, strict=True) for _ in range(r.shape[0])]
    pvae.plots.save_image_table(
        torch.cat(rows),
        out / "imputation.png",
        row_labels=labels,
        column_labels=[
            "original",
            "observed",
            "mean\nimage",
            "nearest\nimage",
            "guide\nalone",
            "IS\nmean",
            "IS\ndraw",
            "IS\ndraw",
            "NUTS\nmean",
            "NUTS\ndraw",
            "NUTS\ndraw",
        ],
        image_shape=data.image_shape,
    )
    with open(out / "imputation.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["mask", "method", "mse", "mse_se", "error_rate", "error_rate_se"])
        writer.writerows(table)
    print(f"wrote imputation.png, imputation.csv to {out}")


def make_mask(kind: str, x: torch.Tensor, image_shape, seed: int) -> torch.Tensor:
    """True where a pixel is observed: the top rows of the image, or a random half."""
    if kind == "top":
        height, width = image_shape[-2:]
        rows = torch.arange(height, device=x.device) < height // 2
        return rows[:, None].expand(height, width).reshape(1, -1).expand_as(x).clone()
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(x.shape, generator=generator) < 0.5).to(x.device)


def nearest_neighbour(x, observed, train_x, chunk: int = 256) -> torch.Tensor:
    """The training image closest to each image on its observed pixels (squared distance)."""
    picked = []
    for start in range(0, x.shape[0], chunk):
        xs, seen = x[start : start + chunk], observed[start : start + chunk].to(x.dtype)
        # sum_j m_j (x_j - t_j)^2 for every training image t, as three matrix products.
        distance = (seen * xs**2).sum(1, keepdim=True) - 2 * (seen * xs) @ train_x.T
        distance = distance + seen @ (train_x**2).T
        picked.append(train_x[distance.argmin(1)])
    return torch.cat(picked)


def complete(vae, x, observed, fill, train_x, args) -> dict[str, torch.Tensor]:
    """Every completion method: name -> [N, D] (or [S, N, D] for posterior draws)."""

    def keep(guess):
        return torch.where(observed, x, guess)

    completions = {
        "mean training image": keep(fill.expand_as(x)),
        "nearest training image": keep(nearest_neighbour(x, observed, train_x)),
        "guide alone": keep(vae.reconstruct(fill_missing(x, observed, fill))),
    }
    started = time.perf_counter()
    sampled = impute_importance(
        vae.model,
        vae.guide,
        x,
        observed,
        fill=fill,
        num_particles=args.num_particles,
        num_draws=2,
        seed=args.seed,
    )
    ess = sampled.ess.cpu()
    print(
        f"  importance sampling, K={args.num_particles}: {time.perf_counter() - started:.0f} s; "
        f"ESS median {ess.median():.1f} (quartiles {ess.quantile(0.25):.1f}, "
        f"{ess.quantile(0.75):.1f}); log p(x_obs) ≥ {sampled.log_evidence.mean():.2f} nats"
    )
    completions[f"importance sampling, K={args.num_particles}: mean"] = sampled.mean
    completions["importance sampling: one draw"] = sampled.samples
    started = time.perf_counter()
    chain, mcmc = impute_nuts(
        vae.model,
        vae.guide,
        x,
        observed,
        fill=fill,
        num_samples=args.nuts_samples,
        warmup_steps=args.nuts_warmup,
        max_tree_depth=args.nuts_max_depth,
        seed=args.seed,
    )
    diagnostics = mcmc.diagnostics()
    # Pyro's estimator can go negative for very short chains: read it as no information.
    n_eff = diagnostics["latent"]["n_eff"].flatten().nan_to_num(0.0).clamp(min=0)
    divergences = sum(len(v) for v in diagnostics["divergences"].values())
    print(
        f"  NUTS, {args.nuts_warmup} + {args.nuts_samples} steps on {x.shape[0]} x "
        f"{vae.z_dim} latents: {time.perf_counter() - started:.0f} s; step size "
        f"{mcmc.kernel.step_size:.3f}; effective draws per latent coordinate: median "
        f"{n_eff.median():.0f}, 5% quantile {n_eff.quantile(0.05):.0f}; "
        f"{divergences} divergences"
    )
    completions[f"NUTS, {args.nuts_samples} draws: mean"] = chain.mean
    completions["NUTS: one draw"] = chain.samples
    return completions


def hidden_errors(guess, x, observed) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image squared error and 0.5-threshold error rate over the hidden pixels."""
    hidden = (~observed).to(x.dtype)
    count = hidden.sum(-1)
    squared = (((guess - x) ** 2) * hidden).sum(-1) / count
    wrong = (((guess > 0.5).to(x.dtype) != x).to(x.dtype) * hidden).sum(-1) / count
    return squared, wrong


def standard_error(values: torch.Tensor) -> float:
    return (values.std() / math.sqrt(values.numel())).item() if values.numel() > 1 else math.nan


def report(mask, x, observed, completions) -> list[tuple]:
    hidden = int((~observed).sum(-1).float().mean())
    print(f"\n{MASKS[mask]} observed, {hidden} hidden pixels per image; error on hidden pixels:")
    header = f"{'method':<40} {'squared error (Brier)':>22} {'wrong side of 0.5':>20}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, guess in completions.items():
        if guess.dim() == 3:  # posterior draws: the error of one draw, averaged over draws
            errors = [hidden_errors(draw, x, observed) for draw in guess]
            squared = torch.stack([e[0] for e in errors]).mean(0)
            wrong = torch.stack([e[1] for e in errors]).mean(0)
        else:
            squared, wrong = hidden_errors(guess, x, observed)
        print(
            f"{name:<40} {squared.mean():13.4f} ± {standard_error(squared):.4f} "
            f"{wrong.mean():11.4f} ± {standard_error(wrong):.4f}"
        )
        rows.append(
            (
                mask,
                name,
                squared.mean().item(),
                standard_error(squared),
                wrong.mean().item(),
                standard_error(wrong),
            )
        )
    print()
    return rows


def picture_rows(x, observed, completions, count, image_shape) -> torch.Tensor:
    """[count, columns, 3, H, W]: original, observed (hidden pixels blue), completions."""
    count = min(count, x.shape[0])

    def rgb(images):
        return images[:count].reshape(count, *image_shape).expand(-1, 3, -1, -1).cpu()

    seen = observed[:count].reshape(count, *image_shape).expand(-1, 3, -1, -1).cpu()
    shown = torch.where(seen, rgb(x), HIDDEN_COLOUR.view(1, 3, 1, 1).expand_as(seen))
    columns = [rgb(x), shown]
    for guess in completions.values():
        if guess.dim() == 3:
            columns += [rgb(guess[0]), rgb(guess[1])]
        else:
            columns.append(rgb(guess))
    return torch.stack(columns, dim=1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mask", choices=[*MASKS, "both"], default="both")
    p.add_argument("--num-images", type=int, default=100, help="held-out images to complete")
    p.add_argument("-k", "--num-particles", type=int, default=1000, help="K of importance sampling")
    p.add_argument("--nuts-warmup", type=int, default=100)
    p.add_argument("--nuts-samples", type=int, default=100)
    p.add_argument("--nuts-max-depth", type=int, default=6, help="at most 2^depth steps/draw")
    p.add_argument("--num-show", type=int, default=4, help="digits per mask in imputation.png")
    p.add_argument("--checkpoint", default=None, help="reuse a pvae checkpoint.pt")
    add_training_flags(p, out="runs/imputation")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
