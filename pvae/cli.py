"""The ``pvae`` command.

pvae evaluate CHECKPOINT --num-samples K        # held-out IWAE_K bound with k-hat check
pvae evaluate CHECKPOINT --method ais --ais-steps T --chains C   # AIS estimate of log p(x)
pvae evaluate CHECKPOINT --method bdmc --ais-steps T --chains C  # BDMC gap on simulated data
pvae sample CHECKPOINT --num-samples N --out FILE.npz [--label L]   # synthetic data
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from pvae.data import HELD_OUT_SEED, binarize, load_dataset
from pvae.infer.ais import ais, bdmc
from pvae.infer.device import resolve_device
from pvae.infer.distributed import disconnect
from pvae.infer.iwae import log_likelihood
from pvae.models.factory import load_vae
from pvae.viz.plots import plot_khat, save_sample_grid

# Prior draws decoded per batch by `pvae sample`: bounds memory for any --num-samples.
_SAMPLE_BATCH = 10_000
_GRID_SIZE = 100


def evaluate(args: argparse.Namespace) -> None:
    """Held-out IWAE_K of a checkpoint's VAE on the held-out set of its dataset."""
    device = resolve_device(args.device)
    vae, state = load_vae(args.checkpoint, device)
    if state["model_args"].get("adversarial"):
        raise ValueError(
            f"{args.checkpoint} holds an adversarial autoencoder, which has no likelihood bound "
            "to evaluate: it is not an ELBO model (its example reports a reconstruction "
            "log-likelihood instead)"
        )
    config = state.get("config", {})
    dataset = args.dataset or config.get("dataset", "mnist")
    data = load_dataset(dataset, args.data_dir or config.get("data_dir"))
    # As the likelihood scores them: binarized once with pvae's fixed seed for a Bernoulli one.
    prepare = getattr(vae.likelihood, "held_out_data", None)
    held_out = prepare(data.test_x) if prepare else binarize(data.test_x, seed=HELD_OUT_SEED)
    held_out = (held_out, data.test_y) if getattr(vae, "num_classes", 0) else (held_out,)
    if args.num_datapoints is not None:
        held_out = tuple(t[: args.num_datapoints] for t in held_out)
    print(
        f"{args.checkpoint}: epoch {state.get('epoch', '?')}; {held_out[0].shape[0]} held-out "
        f"{data.name} images from {data.source}; device {device}"
    )
    vae.eval()
    started = time.perf_counter()
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
    )
    print(f"{result.summary()} [{time.perf_counter() - started:.0f} s]")
    if args.khat_plot:
        print(f"wrote {plot_khat(result, args.khat_plot)}")


def _evaluate_annealed(args: argparse.Namespace, vae, held_out) -> str:
    """AIS on the held-out data, or BDMC on as many datapoints simulated from the model."""
    options = dict(num_steps=args.ais_steps, num_chains=args.chains, data_chunk=args.data_chunk)
    options.update(seed=args.seed, progress=sys.stderr.isatty())
    if args.method == "ais":
        return ais(vae.model, vae.guide, held_out, **options).summary()
    return bdmc(vae.model, vae.guide, held_out, **options).summary()


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
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = p.add_subparsers(dest="command", required=True)
    e = commands.add_parser(
        "evaluate",
        help="held-out IWAE bound, AIS estimate or BDMC gap of a checkpoint",
        description="iwae: the IWAE_K bound with PSIS k-hat; ais: annealed importance sampling "
        "with HMC (--ais-steps, --chains), closer to log p(x); bdmc: lower and upper bounds on "
        "data simulated from the model, whose gap says how many AIS steps it needs.",
    )
    e.add_argument("checkpoint")
    e.add_argument("--method", choices=["iwae", "ais", "bdmc"], default="iwae")
    e.add_argument("--ais-steps", type=int, default=1000, help="annealing steps (default 1000)")
    e.add_argument("--chains", type=int, default=16, help="AIS chains per datapoint (16)")
    e.add_argument("-k", "--num-samples", type=int, default=5000, help="K (default 5000)")
    e.add_argument("--dataset", default=None, help="default: the checkpoint's")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--num-datapoints", type=int, default=None, help="default: all held-out")
    e.add_argument("--particle-chunk", type=int, default=None)
    e.add_argument("--data-chunk", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--khat-plot", default=None, help="write a PNG of k-hat per datapoint")
    e.set_defaults(run=evaluate)
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
    s.add_argument("-n", "--num-samples", type=int, required=True)
    s.add_argument("--out", required=True, help="FILE.npz (and FILE.png)")
    s.add_argument("--label", type=int, default=None, help="class to draw (conditional VAE)")
    s.add_argument("--image-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"))
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=sample)
    return p


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        with torch.no_grad():
            args.run(args)
    except (ValueError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
