"""What the anomaly, imputation and latent-space examples share: their set-up and flags, and
the small Bernoulli VAE they train or load."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

import pvae
from pvae.data import DynamicBinarization, load_dataset

# The small VAE these examples train, quicker than mnist_svi.py's default (the times and
# figures of docs/guide/trained_vae.md are for it): 784-400-20, 100 epochs of Trace_ELBO.
SMALL_VAE_EPOCHS, SMALL_VAE_Z_DIM = 100, 20


def set_up(args) -> tuple[torch.device, pvae.data.ImageData]:
    """Device, CPU threads, seeds and a fresh parameter store; returns the device and data.

    Example::

        >>> device, data = set_up(parser().parse_args())  # doctest: +SKIP
    """
    device = pvae.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    return device, load_dataset(args.dataset, args.data_dir)


def load_small_vae(args, device, adversarial_ok: bool = False, check=None) -> pvae.VAE:
    """``args.checkpoint``'s VAE, refused unless it is an unconditional Bernoulli model trained
    on ``args.dataset`` (and, unless ``adversarial_ok``, a VAE with a likelihood bound rather
    than an adversarial autoencoder); ``check(checkpoint)`` may refuse it too.

    Example::

        >>> vae = load_small_vae(args, "cpu")  # doctest: +SKIP
    """
    vae, state = pvae.load_vae(args.checkpoint, device)
    trained_on = state.get("config", {}).get("dataset", args.dataset)
    if trained_on != args.dataset:
        raise ValueError(f"{args.checkpoint} was trained on {trained_on}, not {args.dataset}")
    model_args = vae.model_args
    if (
        model_args.get("likelihood", "bernoulli") != "bernoulli"
        or model_args.get("num_classes")
        or (model_args.get("adversarial") and not adversarial_ok)
    ):
        raise ValueError(
            f"{args.checkpoint}: this example needs an unconditional Bernoulli VAE (not a "
            "conditional VAE, nor an adversarial autoencoder, which has no likelihood bound)"
        )
    if check is not None:
        check(state)
    print(f"loaded {args.checkpoint} (epoch {state.get('epoch', '?')})")
    return vae


def train_small_vae(args, train_x, held_out, out: Path) -> pvae.VAE:
    """Train a 784-``hidden_dim``-``z_dim`` VAE on ``train_x`` (grey levels, binarized afresh
    every epoch), printing one line per epoch; ``out/checkpoint.pt`` keeps it with ``args``.

    Example::

        >>> vae = train_small_vae(args, data.train_x, held_out, Path("runs/x"))  # doctest: +SKIP
    """
    vae = pvae.build_vae(
        x_dim=train_x.shape[1], z_dim=args.z_dim, hidden_dims=[args.hidden_dim]
    ).to(train_x.device)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def report(stats: pvae.EpochStats) -> None:
        print(
            f"epoch {stats.epoch:4d}  train ELBO {stats.train_bound:9.2f}  "
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
        transform=DynamicBinarization(),
        held_out=held_out,
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_extra=lambda: pvae.vae_state(vae, config=config),
        on_epoch_end=report,
    )
    seconds = time.perf_counter() - started
    print(f"trained {result.num_steps} steps in {seconds:.0f} s; step: {result.step}")
    return vae


def add_training_flags(p: argparse.ArgumentParser, out: str) -> None:
    """The flags of training, data, device and output that these examples share.

    Example::

        >>> add_training_flags(argparse.ArgumentParser(), out="runs/x")  # doctest: +SKIP
    """
    defaults = pvae.Config()  # the settings' one source: the same defaults as mnist_svi.py
    # except the epochs and latent size: these examples need a quick VAE (SMALL_VAE_*).
    p.add_argument("-n", "--num-epochs", type=int, default=SMALL_VAE_EPOCHS)
    p.add_argument("-lr", "--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--z-dim", type=int, default=SMALL_VAE_Z_DIM)
    p.add_argument("--hidden-dim", type=int, default=defaults.hidden_dims[0])
    p.add_argument("--dataset", choices=list(pvae.data.DATASETS), default=defaults.dataset)
    p.add_argument("--data-dir", default=None, help="default: $PVAE_DATA_DIR or ~/.cache/pvae")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch CPU threads (0: PyTorch's default); 1, the default, is fastest for these "
        "small networks when other processes share the cores",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=out)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
