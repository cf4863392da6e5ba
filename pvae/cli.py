"""The ``pvae`` command: ``pvae evaluate CHECKPOINT --num-samples K``."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings

import torch

from pvae.checkpoint import load_vae
from pvae.data import HELD_OUT_SEED, binarize, load_dataset
from pvae.device import resolve_device
from pvae.iwae import log_likelihood, plot_khat


def evaluate(args: argparse.Namespace) -> None:
    """Held-out IWAE_K of a checkpoint's VAE on the held-out set of its dataset."""
    device = resolve_device(args.device)
    vae, state = load_vae(args.checkpoint, device)
    config = state.get("config", {})
    dataset = args.dataset or config.get("dataset", "mnist")
    data = load_dataset(dataset, args.data_dir or config.get("data_dir"))
    held_out = binarize(data.test_x, seed=HELD_OUT_SEED)
    if args.num_datapoints is not None:
        held_out = held_out[: args.num_datapoints]
    print(
        f"{args.checkpoint}: epoch {state.get('epoch', '?')}; {held_out.shape[0]} held-out "
        f"{data.name} images from {data.source}; device {device}"
    )
    vae.eval()
    started = time.perf_counter()
    result = log_likelihood(
        vae.model,
        vae.guide,
        held_out.to(device),
        args.num_samples,
        particle_chunk=args.particle_chunk,
        data_chunk=args.data_chunk,
        seed=args.seed,
    )
    print(f"{result.summary()} [{time.perf_counter() - started:.0f} s]")
    if args.khat_plot:
        print(f"wrote {plot_khat(result, args.khat_plot)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pvae", description="Variational autoencoders in Pyro.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = p.add_subparsers(dest="command", required=True)
    e = commands.add_parser("evaluate", help="held-out IWAE bound of a checkpoint")
    e.add_argument("checkpoint")
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
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
