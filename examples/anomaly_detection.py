"""Anomaly detection with a VAE: train on every digit but one, flag the left-out one.

    python examples/anomaly_detection.py                     # MNIST offline, leaves out 0
    python examples/anomaly_detection.py --held-out-class 7 --out runs/anomaly7
    python examples/anomaly_detection.py --dataset fashion-mnist -n 20 --held-out-class 5

A VAE trained on nine of the ten classes should find images of the tenth improbable. Every
held-out image is scored three ways, higher meaning more anomalous: −IWAE_K, the importance
weighted estimate of −log p(x) (pvae.log_likelihood, K = --num-samples); −ELBO, the same
with the looser bound (the mean of the same K log-weights); and the reconstruction error
||x − E[x | z = posterior mean]||². The table gives, for each score, the AUROC for telling
the left-out class from in-distribution held-out images (1: perfect, 0.5: chance, below 0.5:
the left-out class looks *more* typical) with a 95% bootstrap interval, next to a reference
that needs no model: the number of pixels that are on. In-distribution: the held-out images
of the nine training classes (at most --num-normal); anomalies: the left-out class's
held-out images, then its training images, which the VAE never saw either (at most
--num-anomalies).

Writes into --out: anomalies.png (the most and least anomalous images by −IWAE_K, the
left-out class in red), roc.png (ROC curves of every score), scores.csv (every image's
scores) and checkpoint.pt (reuse it with --checkpoint; it records the left-out class).
"""
# test flags: -n 1 --z-dim 2 --hidden-dim 32 -k 30 --num-normal 60 --num-anomalies 40

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from _training import add_training_flags, load_small_vae, set_up, train_small_vae

import pvae
from pvae.analysis.anomaly import anomaly_scores, auroc, auroc_interval
from pvae.cli import run_script
from pvae.data import held_out_data


def main(args: argparse.Namespace) -> None:
    device, data = set_up(args)
    left_out = args.held_out_class
    classes = data.train_y.unique().tolist()
    if left_out not in classes:
        raise ValueError(f"--held-out-class must be one of {classes}, got {left_out}")
    train_x = data.train_x[data.train_y != left_out].to(device)
    test_x = held_out_data(data.test_x, "binarized")
    normal = test_x[data.test_y != left_out][: args.num_normal]
    unseen_train = held_out_data(data.train_x[data.train_y == left_out], "binarized")
    unseen = torch.cat([test_x[data.test_y == left_out], unseen_train])
    anomalies = unseen[: args.num_anomalies]
    print(
        f"{data.name} ({data.source}): training on {train_x.shape[0]} images of every class "
        f"but {left_out}; scoring {normal.shape[0]} in-distribution held-out images and "
        f"{anomalies.shape[0]} images of class {left_out}; device {device}"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        vae = load_trained(args, device)
    else:
        vae = train_small_vae(args, train_x, normal.to(device), out)
    vae.eval()

    x = torch.cat([normal, anomalies]).to(device)
    is_anomaly = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalies))]).bool()
    started = time.perf_counter()
    scores = anomaly_scores(vae, x, num_samples=args.num_samples, seed=args.seed)
    bound = scores.log_likelihood
    print(f"scored {x.shape[0]} images in {time.perf_counter() - started:.0f} s; {bound.summary()}")
    # A reference that needs no model: how many pixels are on. Likelihoods favour simple
    # images, so a score that only counts ink would do about as well where ink differs.
    table = {**scores.as_dict(), "pixels on (no model)": x.sum(1).double().cpu()}
    print_table(table, is_anomaly, left_out)

    save_extremes(x.cpu(), scores.negative_iwae, is_anomaly, out / "anomalies.png", args, data)
    save_roc(table, is_anomaly, out / "roc.png", left_out)
    with open(out / "scores.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["is_anomaly", *table])
        columns = [score.tolist() for score in table.values()]
        for row, flag in enumerate(is_anomaly.tolist()):
            writer.writerow([int(flag), *(f"{column[row]:.4f}" for column in columns)])
    print(f"wrote anomalies.png, roc.png, scores.csv to {out}")


def load_trained(args, device) -> pvae.VAE:
    """The checkpoint's VAE, refused unless it was trained without the left-out class."""

    def left_out_class_unseen(state) -> None:
        config = state.get("config", {})
        if config.get("held_out_class") != args.held_out_class:
            raise ValueError(
                f"{args.checkpoint} was not trained by this example without class "
                f"{args.held_out_class} of {args.dataset} (its config: held_out_class="
                f"{config.get('held_out_class')}, dataset={config.get('dataset')}): a VAE that "
                "saw the left-out class cannot be used to detect it"
            )

    return load_small_vae(args, device, check=left_out_class_unseen)


def print_table(scores: dict[str, torch.Tensor], is_anomaly: torch.Tensor, left_out) -> None:
    print(
        f"\nAUROC for telling class {left_out} ({int(is_anomaly.sum())} images) from "
        f"in-distribution held-out images ({int((~is_anomaly).sum())})"
    )
    header = f"{'score':<22} {'AUROC':>6}  {'95% CI':<15} {'mean in-dist':>12} {'mean anomaly':>12}"
    print(header)
    print("-" * len(header))
    for name, score in scores.items():
        low, high = auroc_interval(score, is_anomaly)
        print(
            f"{name:<22} {auroc(score, is_anomaly):6.3f}  [{low:.3f}, {high:.3f}]  "
            f"{score[~is_anomaly].mean().item():12.2f} {score[is_anomaly].mean().item():12.2f}"
        )
    print()


def save_extremes(x, score, is_anomaly, path, args, data) -> None:
    """Most and least anomalous images by −IWAE, the left-out class drawn in red."""
    count = min(args.num_show, x.shape[0] // 2)
    order = score.argsort(descending=True)
    rows = []
    for chosen in (order[:count], order.flip(0)[:count]):
        grey = x[chosen].reshape(count, *data.image_shape).expand(-1, 3, -1, -1).clone()
        red = is_anomaly[chosen]
        grey[red, 1:] *= 0.25  # keep the red channel: anomalies show red on black
        rows.append(grey)
    pvae.plots.save_image_table(
        torch.stack(rows),
        path,
        row_labels=["most", "least"],
        title=f"most and least anomalous by -IWAE_{args.num_samples} (class "
        f"{args.held_out_class} in red)",
    )


def save_roc(scores: dict[str, torch.Tensor], is_anomaly, path: Path, left_out) -> None:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.subplots()
    for name, score in scores.items():
        false_positive, true_positive, _ = roc_curve(is_anomaly.numpy(), score.numpy())
        axes.plot(
            false_positive, true_positive, label=f"{name} (AUROC {auroc(score, is_anomaly):.3f})"
        )
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("false positive rate (in-distribution flagged)")
    axes.set_ylabel(f"true positive rate (class {left_out} flagged)")
    axes.set_title(f"ROC: class {left_out} against the other classes")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--held-out-class", type=int, default=0, help="the class left out (anomaly)")
    p.add_argument(
        "-k", "--num-samples", "--iwae-samples", type=int, default=1000, help="K of the IWAE score"
    )
    p.add_argument("--num-normal", type=int, default=900, help="in-distribution images scored")
    p.add_argument("--num-anomalies", type=int, default=500, help="left-out images scored")
    p.add_argument("--num-show", type=int, default=16, help="images per row of anomalies.png")
    p.add_argument("--checkpoint", default=None, help="reuse this example's checkpoint.pt")
    add_training_flags(p, out="runs/anomaly_detection")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
