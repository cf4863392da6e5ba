"""Command-line flags for every setting of a run: one flag per :class:`pvae.Config` key, the
same in ``examples/mnist_svi.py`` and ``pvae train``, with the config's defaults in the help.

Flags default to "not given", so that only the flags typed override a ``--config`` file or
a resumed checkpoint's settings (:func:`given_settings`).

Example::

    >>> p = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    >>> add_setting_flags(p)
    >>> given_settings(p.parse_args(["--z-dim", "8"]))
    {'z_dim': 8}
"""

from __future__ import annotations

import argparse
from typing import Any

from pvae.config import Config, parse_yaml
from pvae.data import DATASETS
from pvae.infer.capture import COMPILE_MODES
from pvae.infer.objectives import OBJECTIVES
from pvae.infer.schedules import LR_SCHEDULES
from pvae.models.guides import GUIDES
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import ACTIVATIONS, NETWORKS
from pvae.models.priors import PRIORS

_YAML_SETTINGS = ("prior_options", "likelihood_options", "guide_options", "lr_schedule_options")


def add_setting_flags(p: argparse.ArgumentParser, data_flag: bool = True) -> None:
    """One flag per :class:`pvae.Config` key (``data_flag=False``: the data path is a
    positional argument of the command instead)."""
    defaults = Config()

    def setting(*names, help="", **kwargs):
        dest = names[0 if names[0].startswith("--") else 1].lstrip("-").replace("-", "_")
        default = getattr(defaults, dest)
        p.add_argument(*names, dest=dest, help=f"{help} (default: {default})".lstrip(), **kwargs)

    setting("-n", "--num-epochs", type=int, help="epochs in all (a resumed run's included)")
    setting("-lr", "--learning-rate", type=float)
    setting("--batch-size", type=int)
    setting("--z-dim", type=int)
    setting("--hidden-dims", "--hidden-dim", type=int, nargs="+", help="fully connected widths")
    setting("--activation", help=", ".join(ACTIVATIONS))
    setting("--network", help=", ".join(NETWORKS))
    setting("--channels", type=int, nargs="+", help="conv channels, one per stride-2 layer")
    setting("--prior", help=", ".join(PRIORS))
    setting("--likelihood", help=", ".join(LIKELIHOODS))
    setting("--guide", help=", ".join(GUIDES))
    for part in ("prior", "likelihood", "guide"):
        setting(f"--{part}-options", metavar="YAML", help=f"{part} options, e.g. '{{key: value}}'")
    setting("--beta", type=float, help="weight of the KL term (beta-VAE)")
    setting("--warmup-epochs", type=int, help="epochs of linear KL warm-up")
    setting("--conditional", action=argparse.BooleanOptionalAction, help="condition on labels")
    setting("--digit", type=int, help="the digit a conditional VAE draws in samples.png")
    setting("--adversarial", action=argparse.BooleanOptionalAction, help="adversarial AE")
    setting("--adversarial-weight", type=float, help="weight of the adversarial terms")
    setting("--discriminator-dims", type=int, nargs="+", help="discriminator widths")
    setting("--hierarchy", type=int, nargs="+", help="stochastic layers' sizes, z1 first")
    setting("--objective", help=", ".join(OBJECTIVES))
    setting("-k", "--num-particles", type=int, help="K importance samples of iwae and dreg")
    setting("--num-samples", "--iwae-samples", type=int, help="K of the final held-out IWAE bound")
    setting(
        "--patience", type=int, help="stop after this many epochs without a better held-out bound"
    )
    setting(
        "--held-out-num-samples",
        "--held-out-samples",
        type=int,
        help="K of that bound: 1 the ELBO, K > 1 IWAE_K",
    )
    setting("--lr-schedule", help=", ".join(LR_SCHEDULES))
    setting("--lr-schedule-options", metavar="YAML", help="e.g. '{step_size: 30}'")
    setting("--dataset", help=", ".join(DATASETS))
    setting("--data-dir", help="None: $PVAE_DATA_DIR or ~/.cache/pvae")
    if data_flag:
        setting("--data", help="a file or folder of your own data instead of --dataset")
    setting("--held-out-fraction", type=float, help="of --data, held out for evaluation")
    setting("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images to")
    setting("--device", help="auto (CUDA when there is a GPU), cpu, cuda")
    p.add_argument("--cuda", action="store_true", default=False, help="same as --device cuda")
    setting("--clip-norm", type=float, help="clip gradient norm")
    setting("--precision", help="float32 (exact, default), tf32 (GPU matmuls) or bfloat16")
    setting(
        "--compile",
        choices=COMPILE_MODES,
        help="the training step captured once and replayed: auto (long runs), off, capture, "
        "inductor (compiled)",
    )
    setting("--seed", type=int)
    setting("--out", help="output folder (a resumed run's own unless given)")
    setting("--tensorboard", metavar="DIR", help="also log each epoch for TensorBoard there")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings typed on the command line (YAML options parsed), by Config key."""
    keys = set(Config().to_dict())
    given = {key: value for key, value in vars(args).items() if key in keys}
    if getattr(args, "cuda", False):
        given["device"] = "cuda"
    for key in _YAML_SETTINGS:
        if key in given:
            given[key] = parse_yaml(given[key], f"--{key.replace('_', '-')}")
    return given
