"""The ``pvae`` command (also ``python -m pvae``).

pvae train DATA [--likelihood L] [-n EPOCHS] [--patience P] [--out DIR]   # your own data
pvae evaluate CHECKPOINT [-k K] [--data DATA]   # held-out IWAE_K bound with k-hat check
pvae evaluate CHECKPOINT --method ais --ais-steps T --chains C   # AIS estimate of log p(x)
pvae evaluate CHECKPOINT --method bdmc --ais-steps T --chains C  # BDMC gap on simulated data
pvae evaluate CHECKPOINT --diagnose [--log-px iwae]   # active units, KL split, inference gaps
pvae sample CHECKPOINT --num-samples N --out FILE.npz [--label L]   # synthetic data

Flags mean one thing in every command: ``-n`` epochs, ``-k`` importance samples K.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import traceback
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvae.analysis.diagnostics import diagnose
from pvae.config import Config
from pvae.data import held_out_data, load_dataset, load_user_data
from pvae.flags import add_setting_flags, given_settings
from pvae.infer.ais import ais, bdmc
from pvae.infer.capture import COMPILE_MODES
from pvae.infer.checkpoint import package_version
from pvae.infer.checkpoint_entries import check_entries
from pvae.infer.device import resolve_device
from pvae.infer.distributed import disconnect
from pvae.infer.folder_lock import folder_lock
from pvae.infer.iwae import log_likelihood
from pvae.models.factory import load_vae
from pvae.runs import (
    evaluation_rows,
    load_run_data,
    resumable_checkpoint,
    run_settings,
    train_run,
)
from pvae.viz.plots import plot_diagnosis, plot_khat, save_sample_grid

# Prior draws decoded per batch by `pvae sample`: bounds memory for any --num-samples.
_SAMPLE_BATCH = 10_000
_GRID_SIZE = 100
# The settings of a checkpoint's config that choose its held-out data.
_DATA_KEYS = ("data", "held_out_fraction", "seed", "image_size", "dataset", "data_dir")
# The --diagnose flags and their defaults (None in the parser: given without --diagnose is
# refused).
_DIAGNOSE_DEFAULTS = {"diagnose_points": 1000, "log_px": "ais", "local_steps": 1000}


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> None:
    """Held-out IWAE_K of a checkpoint's VAE on the held-out set of its dataset."""
    _check_diagnose_flags(args)
    device = resolve_device(args.device)
    vae, state = load_vae(args.checkpoint, device)
    if state["model_args"].get("adversarial"):
        raise ValueError(
            f"{args.checkpoint} holds an adversarial autoencoder, which has no likelihood bound "
            "to evaluate: it is not an ELBO model (its example reports a reconstruction "
            "log-likelihood instead)"
        )
    held_out, what = _evaluation_data(args, vae, state)
    if args.num_datapoints is not None:
        held_out = tuple(t[: args.num_datapoints] for t in held_out)
    if args.diagnose:
        held_out = tuple(t[: args.diagnose_points] for t in held_out)
    print(
        f"{args.checkpoint}: epoch {state.get('epoch', '?')}; {held_out[0].shape[0]} {what}; "
        f"device {device}"
    )
    vae.eval()
    started = time.perf_counter()
    if args.diagnose:
        _diagnose(args, vae, tuple(t.to(device) for t in held_out), device, started)
        return
    if args.method != "iwae":
        summary = _evaluate_annealed(args, vae, tuple(t.to(device) for t in held_out))
        print(f"{summary} [{time.perf_counter() - started:.0f} s]")
        return
    result = log_likelihood(
        vae.model,
        vae.guide,
        tuple(t.to(device) for t in held_out),
        args.num_samples,
        particle_chunk=args.particle_chunk,
        data_chunk=args.data_chunk,
        seed=args.seed,
        progress=None if args.progress else False,
        compile=args.compile,
    )
    print(f"{result.summary()} [{time.perf_counter() - started:.0f} s]")
    if args.khat_plot:
        print(f"wrote {plot_khat(result, args.khat_plot)}")


def _check_diagnose_flags(args: argparse.Namespace) -> None:
    """Fill in the --diagnose flags' defaults; refuse them without --diagnose, or bad values."""
    given = [k for k in (*_DIAGNOSE_DEFAULTS, "diagnose_plot") if getattr(args, k) is not None]
    if not args.diagnose:
        if given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            raise ValueError(f"{flags} {'needs' if len(given) == 1 else 'need'} --diagnose")
        return
    for key, default in _DIAGNOSE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for key in ("diagnose_points", "local_steps"):
        if getattr(args, key) < 1:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} must be a positive integer, got {getattr(args, key)}")
    if args.method != "iwae":
        raise ValueError(
            f"--diagnose estimates log p(x) by --log-px (ais or iwae), not --method "
            f"{args.method}: pass --log-px {'ais' if args.method == 'ais' else 'iwae'} instead"
        )
    if args.khat_plot:
        raise ValueError("--khat-plot needs the plain IWAE evaluation: drop --diagnose")


def _diagnose(args: argparse.Namespace, vae, held_out, device, started: float) -> None:
    """pvae.diagnose on the held-out rows: print its summary and write its figure."""
    options = {"data_chunk": args.data_chunk} if args.data_chunk is not None else {}
    path = Path(args.diagnose_plot or Path(args.checkpoint).parent / "diagnosis.png")
    path.parent.mkdir(parents=True, exist_ok=True)  # before the work, as pvae sample's --out
    result = diagnose(
        vae.model,
        vae.guide,
        held_out,
        log_px=args.log_px,
        local_steps=args.local_steps,
        ais_steps=args.ais_steps,
        ais_chains=args.chains,
        iwae_samples=args.num_samples,
        seed=args.seed,
        device=device,
        progress=None if args.progress else False,
        **options,
    )
    print(f"{result.summary()} [{time.perf_counter() - started:.0f} s]")
    print(f"wrote {plot_diagnosis(result, path)}")


def _evaluate_annealed(args: argparse.Namespace, vae, held_out) -> str:
    """AIS on the held-out data, or BDMC on as many datapoints simulated from the model."""
    options = dict(num_steps=args.ais_steps, num_chains=args.chains, data_chunk=args.data_chunk)
    options.update(seed=args.seed, progress=None if args.progress else False)
    options.update(compile=args.compile)
    if args.method == "ais":
        return ais(vae.model, vae.guide, held_out, **options).summary()
    return bdmc(vae.model, vae.guide, held_out, **options).summary()


def _evaluation_data(args, vae, state) -> tuple[tuple, str]:
    """--data's rows, else the held-out set of the checkpoint's dataset or own data."""
    check_entries(state, args.checkpoint, {}, {"config": dict[str, Any]})
    config = state.get("config", {})
    hints = typing.get_type_hints(Config)
    check_entries(config, f"{args.checkpoint}'s config", {}, {k: hints[k] for k in _DATA_KEYS})
    if args.data is not None:
        if getattr(vae, "num_classes", 0):
            raise ValueError("--data has no labels, which this conditional VAE needs")
        return (evaluation_rows(vae, args.data, config.get("image_size")),), f"rows of {args.data}"
    if config.get("data"):  # trained by pvae train: its own held-out rows
        data = load_user_data(
            config["data"],
            config.get("held_out_fraction", 0.1),
            config.get("seed", 0),
            config.get("image_size"),
        )
    else:
        dataset = args.dataset or config.get("dataset", "mnist")
        data = load_dataset(dataset, args.data_dir or config.get("data_dir"))
    held_out = held_out_data(data.test_x, vae.likelihood.data_form)
    held_out = (held_out, data.test_y) if getattr(vae, "num_classes", 0) else (held_out,)
    return held_out, f"held-out rows of {data.name} from {data.source}"


def train(args: argparse.Namespace) -> None:
    """Train a VAE on a file or folder of one's own data (the example's outputs)."""
    checkpoint = resumable_checkpoint(args.resume) if args.resume else None
    given = given_settings(args)
    given.pop("data", None)  # the positional DATA, given or not
    if args.data is not None:
        given["data"] = str(Path(args.data).resolve())  # so that resuming works from anywhere
    elif checkpoint is None:
        raise ValueError("pvae train needs DATA (a file or folder), or --resume CHECKPOINT")
    if checkpoint is None:
        given.setdefault("out", "runs/pvae_train")
    config = run_settings(given, args.config, checkpoint, args.resume)
    with folder_lock(config.out):  # before the data load: a second run stops at once
        train_run(config, load_run_data(config), resume=checkpoint, resume_path=args.resume)


@torch.no_grad()
def sample(args: argparse.Namespace) -> None:
    """Draw ``--num-samples`` images from a checkpoint's VAE into an .npz file and a PNG grid."""
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be a positive integer, got {args.num_samples}")
    device = resolve_device(args.device)
    vae, state = load_vae(args.checkpoint, device)
    num_classes = getattr(vae, "num_classes", 0)
    if args.label is not None and not num_classes:
        raise ValueError(
            f"{args.checkpoint} holds an unconditional VAE (no num_classes in its model_args): "
            "--label needs a conditional VAE, e.g. one trained by examples/mnist_svi.py "
            "--conditional"
        )
    if args.label is not None and not 0 <= args.label < num_classes:
        raise ValueError(f"--label must lie in 0..{num_classes - 1}, got {args.label}")
    image_shape = _image_shape(vae, args.image_shape)
    out = Path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)

    vae.eval()
    torch.manual_seed(args.seed)
    labels = None
    if num_classes:  # the given class, or every class in turn
        labels = torch.arange(args.num_samples, device=device) % num_classes
        if args.label is not None:
            labels = torch.full_like(labels, args.label)
    batches = []
    for start in range(0, args.num_samples, _SAMPLE_BATCH):
        count = min(_SAMPLE_BATCH, args.num_samples - start)
        chosen = () if labels is None else (labels[start : start + count],)
        batches.append(vae.sample(count, *chosen).reshape(count, *image_shape).float().cpu())
    images = torch.cat(batches)
    arrays = {"images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez_compressed(out, **arrays)
    grid = save_sample_grid(images[:_GRID_SIZE], out.with_suffix(".png"), image_shape)
    kind = f"class {args.label}" if args.label is not None else "every class in turn"
    print(
        f"wrote {args.num_samples} samples of {args.checkpoint} (epoch {state.get('epoch', '?')}"
        f"{', ' + kind if num_classes else ''}) to {out}: 'images' "
        f"{list(images.shape)} float32, the means of p(x|z) for z from the prior"
        f"{', and labels' if labels is not None else ''}; the first "
        f"{min(args.num_samples, _GRID_SIZE)} as a grid in {grid}"
    )


def _image_shape(vae, given) -> tuple[int, ...]:
    """The checkpoint's image shape, else one channel of a square image of x_dim pixels."""
    x_dim = vae.model_args.get("x_dim")
    if given:
        shape = tuple(given)
    elif vae.model_args.get("image_shape"):
        shape = tuple(vae.model_args["image_shape"])
    elif x_dim and math.isqrt(x_dim) ** 2 == x_dim:
        shape = (1, math.isqrt(x_dim), math.isqrt(x_dim))
    else:
        raise ValueError(
            f"cannot tell the image shape of {x_dim} values per sample: pass --image-shape C H W"
        )
    if x_dim and math.prod(shape) != x_dim:
        raise ValueError(f"--image-shape {list(shape)} does not hold the model's {x_dim} values")
    return shape


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pvae", description="Variational autoencoders in Pyro.")
    p.add_argument("--version", action="version", version=f"pvae {package_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE first: the module of your own that registers your priors, "
        "likelihoods, guides or networks (a checkpoint only names them); repeatable",
    )  # fmt: skip
    commands = p.add_subparsers(dest="command", required=True)
    _train_command(commands)
    _evaluate_command(commands)
    _sample_command(commands)
    return p


def _train_command(commands) -> None:
    t = commands.add_parser(
        "train",
        help="train a VAE on a file or folder of your own data",
        description="Train a VAE on DATA: .npy, .npz, .csv (numeric columns), .pt, or a folder "
        "of images (grey or RGB; --image-size resizes). --held-out-fraction of the rows is "
        "held out; --patience stops early and best.pt keeps the best held-out epoch. Writes "
        "config.yaml, history.csv, checkpoint.pt, best.pt, elbo.png, khat.png (and samples and "
        "reconstructions for images) into --out, once every check has passed, and locks it "
        "while it runs (a second run on it is refused). For standardized real-valued features use "
        "--likelihood normal (or student_t); for values in (0, 1), beta.",
        argument_default=argparse.SUPPRESS,
    )
    t.add_argument("data", nargs="?", default=None, help="file or folder of training data")
    t.add_argument("--config", default=None, help="YAML file of settings; flags override it")
    add_setting_flags(t, data_flag=False)
    t.add_argument("--resume", default=None, help="continue from this checkpoint, its settings")
    t.set_defaults(run=train)


def _evaluate_command(commands) -> None:
    e = commands.add_parser(
        "evaluate",
        help="held-out IWAE bound, AIS estimate or BDMC gap of a checkpoint",
        description="iwae: the IWAE_K bound with PSIS k-hat; ais: annealed importance sampling "
        "with HMC (--ais-steps, --chains), closer to log p(x); bdmc: lower and upper bounds on "
        "data simulated from the model, whose gap says how many AIS steps it needs.",
    )
    e.add_argument("checkpoint")
    e.add_argument("--method", choices=["iwae", "ais", "bdmc"], default="iwae")
    e.add_argument(
        "-k", "--iwae-samples", "--num-samples", dest="num_samples", type=int, default=5000,
        help="K importance samples of iwae (default 5000)",
    )  # fmt: skip
    e.add_argument("--ais-steps", type=int, default=1000, help="annealing steps (default 1000)")
    e.add_argument("--chains", type=int, default=16, help="AIS chains per datapoint (16)")
    e.add_argument("--data", default=None, help="score these rows (a file or folder) instead")
    e.add_argument("--dataset", default=None, help="default: the checkpoint's")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--num-datapoints", type=int, default=None, help="default: all held-out")
    e.add_argument("--particle-chunk", type=int, default=None)
    e.add_argument("--data-chunk", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--compile", choices=COMPILE_MODES, default="auto",
        help="replay the model's evaluation without Pyro's runtime: auto (AIS's leapfrog "
        "steps; log_likelihood on a GPU), off, capture, inductor (default: auto)",
    )  # fmt: skip
    e.add_argument("--khat-plot", default=None, help="write a PNG of k-hat per datapoint")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    d = e.add_argument_group(
        "diagnosis (--diagnose)",
        "pvae.diagnose on the first --diagnose-points held-out rows: active units, KL per unit, "
        "I_q(x;z) and the inference gap split into amortization and approximation gaps; prints "
        "the table and writes a figure (default: diagnosis.png beside the checkpoint). log p(x) "
        "by --log-px: ais (--ais-steps, --chains) or iwae (-k samples).",
    )
    d.add_argument("--diagnose", action="store_true", help="diagnose instead of --method")
    d.add_argument(
        "--diagnose-points", type=int, default=None, metavar="N",
        help="diagnose the first N held-out rows (default 1000; mutual information costs N², "
        "q* is fitted per row)",
    )  # fmt: skip
    d.add_argument(
        "--log-px",
        choices=["ais", "iwae"],
        default=None,
        help="how to estimate log p(x) (default ais)",
    )
    d.add_argument(
        "--local-steps",
        type=int,
        default=None,
        metavar="STEPS",
        help="Adam steps fitting q* to each row (default 1000; 200 left the default "
        "example's amortization gap 1.2 nats short)",
    )
    d.add_argument(
        "--diagnose-plot", default=None, metavar="PNG",
        help="where to write the figure (default: diagnosis.png beside the checkpoint)",
    )  # fmt: skip
    e.set_defaults(run=evaluate)


def _sample_command(commands) -> None:
    s = commands.add_parser(
        "sample",
        help="synthetic data: N samples of a checkpoint's VAE as .npz and a PNG grid",
        description="Draw z from the prior and write the means of p(x|z) (for a Bernoulli "
        "VAE, pixel probabilities: binarize them with numpy.random.binomial(1, images) for "
        "binary data) as 'images' [N, C, H, W] into FILE.npz, and the first 100 as a grid "
        "into FILE.png. A conditional VAE draws class --label, or every class in turn, and "
        "also writes 'labels'.",
    )
    s.add_argument("checkpoint")
    s.add_argument("--num-samples", type=int, required=True, help="how many to draw")
    s.add_argument("--out", required=True, help="FILE.npz (and FILE.png)")
    s.add_argument("--label", type=int, default=None, help="class to draw (conditional VAE)")
    s.add_argument("--image-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"))
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=sample)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_script(main, arguments, resume_flag: str | None = None) -> None:
    """Run an example's ``main(arguments)`` the way every pvae script reports problems.

    Warnings print as one line; bad input (ValueError, OSError) and divergence print one
    ``error:`` line (the traceback too with ``--debug``) and exit 2 or 3; an interrupt prints
    where the checkpoint went (and ``resume_flag`` to continue) and exits 128 + the signal.

    Example::

        >>> run_script(main, parser().parse_args(), resume_flag="--resume")  # doctest: +SKIP
    """
    from pvae.errors import TrainingDiverged, TrainingInterrupted

    warnings.formatwarning = _one_line_warning
    try:
        main(arguments)
    except TrainingInterrupted as stopped:
        hint = f" (continue with {resume_flag} {stopped.checkpoint})" if resume_flag else ""
        print(f"{stopped}{hint}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except (ValueError, OSError, TrainingDiverged) as error:
        if getattr(arguments, "debug", False):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3 if isinstance(error, TrainingDiverged) else 2)
    finally:
        disconnect()


def import_user_modules(names: list[str]) -> None:
    """Import the modules ``--import`` names, from the current folder too (as ``python -m``
    does): the user chooses this code on the command line, never a file pvae reads.

    Example::

        >>> import_user_modules(["json"])
    """
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(
                f"--import {name}: cannot import it ({error}): run pvae in the folder that "
                "holds it, or put that folder on PYTHONPATH"
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.run

    def run(arguments) -> None:
        import_user_modules(arguments.imports)
        command(arguments)

    try:
        run_script(run, args, resume_flag="--resume" if command is train else None)
    except SystemExit as exit:
        return exit.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
