"""The captured training step (fit's ``compile``) against hand-written eager PyTorch.

Each row trains one VAE side by side in one process, interleaved, best of ``--repeats``:
the same bound written by hand in PyTorch with fused Adam (the reference), and ``pvae.fit``
on a hand-written Pyro model/guide and on a ``build_vae`` model, each eager
(``compile="off"``), with the step as traced (``"capture"``) and compiled by inductor
(``"inductor"``). Speeds are samples/s after a warm-up epoch (which takes the capture),
so each epoch's check against the eager step is counted, and capture's cost is reported
apart. Rows (``--rows``):

    small     784-16-4, batch 64, ELBO (the step is nearly all host overhead)
    mnist256  784-400-50, batch 256, ELBO (Pyro's VAE example)
    mnist1024 784-400-50, batch 1024, ELBO
    iwae5     784-400-50, batch 100, IWAE_5
    gmvae     784-400-50, batch 256, ELBO of a 10-component mixture prior, enumerated
    default   the default example's VAE and objective (pvae.Config(): VampPrior, DReG-5),
              pvae.fit eager against compiled (no hand-written reference)

    python benchmarks/capture_speed.py                          # every row, 2 threads
    python benchmarks/capture_speed.py --rows small --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pyro
import torch
from common import digits, machine, networks, samples_per_second
from enum_speed import MixturePrior, enumerated_pair
from enum_speed import hand_written as gmvae_reference
from train_speed import hand_written_pair, pytorch_reference

import pvae
from pvae.infer.capture import BACKENDS

# Every compile setting but "auto", which chooses one of these.
MODES = ("off", *BACKENDS)


@dataclasses.dataclass(frozen=True)
class Row:
    hidden: int
    z_dim: int
    batch_size: int
    num_particles: int = 1
    components: int = 0  # > 0: the enumerated mixture-prior VAE


ROWS = {
    "small": Row(16, 4, 64),
    "mnist256": Row(400, 50, 256),
    "mnist1024": Row(400, 50, 1024),
    "iwae5": Row(400, 50, 100, num_particles=5),
    "gmvae": Row(400, 50, 256, components=10),
    "default": None,
}


def reference(row: Row, data):
    encoder, decoder = networks(row.z_dim, row.hidden, data.device)
    if row.components:
        prior = MixturePrior(row.components, row.z_dim)
        return gmvae_reference(data, row.batch_size, encoder, decoder, prior)
    return pytorch_reference(data, row.batch_size, encoder, decoder, True, row.num_particles)


def pyro_pair(row: Row, kind: str, device):
    """The model/guide pvae trains: written by hand, or built by ``build_vae``."""
    pyro.clear_param_store()
    if kind == "build_vae":
        # build_vae's mixture prior has a closed-form density: no enumeration to sum out.
        prior = "mog" if row.components else "standard_normal"
        options = {"num_components": row.components} if row.components else {}
        torch.manual_seed(0)
        vae = pvae.build_vae(
            784, z_dim=row.z_dim, hidden_dims=[row.hidden], prior=prior, prior_options=options
        ).to(device)
        return vae.model, vae.guide
    encoder, decoder = networks(row.z_dim, row.hidden, device)
    if row.components:
        return enumerated_pair(encoder, decoder, MixturePrior(row.components, row.z_dim))
    return hand_written_pair(encoder, decoder, row.z_dim)


def pvae_speed(row: Row, data, kind: str, mode: str, epochs: int) -> tuple[float, str]:
    """samples/s of fit after its first epoch, and how its steps ran."""
    model, guide = pyro_pair(row, kind, data.device)
    marks = []
    result = pvae.fit(
        model,
        guide,
        data,
        num_epochs=epochs + 1,
        batch_size=row.batch_size,
        objective="iwae" if row.num_particles > 1 else "elbo",
        num_particles=row.num_particles,
        compile=mode,
        progress=False,
        seed=0,
        on_epoch_end=lambda stats: marks.append(time.perf_counter()),
    )
    return epochs * data.shape[0] / (marks[-1] - marks[0]), result.step


def default_example_speed(data, args, modes) -> None:
    """The default example's model and objective, eager and captured, interleaved."""
    config = pvae.Config()
    speeds: dict[str, list[float]] = {}
    steps = {}
    for _ in range(args.repeats):
        for mode in modes:
            pyro.clear_param_store()
            torch.manual_seed(0)
            vae = pvae.build_vae(**config.model_args(784)).to(data.device)
            marks = []
            result = pvae.fit(
                vae.model, vae.guide, data, num_epochs=args.epochs + 1,
                batch_size=config.batch_size, objective=config.objective,
                num_particles=config.num_particles, compile=mode, progress=False, seed=0,
                on_epoch_end=lambda stats: marks.append(time.perf_counter()),  # noqa: B023
            )  # fmt: skip
            speeds.setdefault(mode, []).append(args.epochs * data.shape[0] / (marks[-1] - marks[0]))
            steps.setdefault(mode, result.step)  # the first run: capture not yet cached
    best = {mode: max(values) for mode, values in speeds.items()}
    cells = [f"{best[m]:.0f} ({best[m] / best[modes[0]]:.2f}× {modes[0]})" for m in modes]
    print("| default | pvae.Config() | — | " + " | ".join(cells) + " |")
    for mode in modes[1:]:
        print(f"  default, {mode}: {steps[mode]}")


def main(args: argparse.Namespace) -> None:
    device = pvae.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = digits(args.num_data, device)
    print(
        f"captured training step, samples/s ({machine()}; {args.num_data} digits, "
        f"{args.epochs} timed epochs after 1 warm-up, best of {args.repeats})"
    )
    modes = args.modes
    print("| row | model | hand-written, fused Adam | " + " | ".join(modes) + " |")
    print("|---|---|---|" + "---|" * len(modes))
    for name in args.rows:
        row = ROWS[name]
        if row is None:
            default_example_speed(data, args, modes)
            continue
        speeds: dict[str, list[float]] = {}
        steps: dict[str, str] = {}
        for _ in range(args.repeats):  # interleaved, so that machine noise hits all alike
            epoch = reference(row, data)
            speed = samples_per_second(epoch, args.num_data, device, args.epochs)
            speeds.setdefault("reference", []).append(speed)
            for kind in args.models:
                for mode in modes:
                    speed, how = pvae_speed(row, data, kind, mode, args.epochs)
                    steps.setdefault((kind, mode), how)  # the first run: capture not yet cached
                    speeds.setdefault(f"{kind} {mode}", []).append(speed)
        best = {key: max(values) for key, values in speeds.items()}
        for kind in args.models:
            cells = [
                f"{best[f'{kind} {mode}']:.0f} ({best[f'{kind} {mode}'] / best['reference']:.2f}×)"
                for mode in modes
            ]
            print(f"| {name} | {kind} | {best['reference']:.0f} | " + " | ".join(cells) + " |")
        for (kind, mode), how in steps.items():
            if mode != "off":
                print(f"  {name}, {kind}, {mode}: {how}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--models", nargs="+", default=["hand-written", "build_vae"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-data", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    p.add_argument("--threads", type=int, default=None)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
