"""Fashion-MNIST trained to convergence, then IWAE_5000 on the test set and paired comparisons.

Six rows (issue 17): one stochastic layer, Burda, Grosse & Salakhutdinov's (2016) 784-200-200-50
tanh VAE (benchmarks/quality.py's), and two, their latents 100 and 50 with deterministic layers
200-200 and 100-100 (:mod:`pvae.models.hierarchical`); each trained on the ELBO, IWAE-K and
DReG-K (K = 5; Tucker et al. 2019): Bernoulli, dynamic binarization, Adam 1e-3, batch 100,
seed 0. The last 5,000 of the 60,000 training images are the validation set and the model
trains on the other 55,000; a row is judged on the validation set by the bound it trains on
(the ELBO rows by the ELBO, the IWAE-K and DReG-K rows by IWAE_K, as Burda et al. select),
stops when that has not improved for ``--patience`` epochs, or at ``--max-epochs``, and
keeps its best validation epoch (best.pt).
That epoch is then scored by IWAE_K (K = ``--eval-samples``) on all 10,000 test images; the
validation and test images are binarized once with pvae's fixed held-out seed. The test
images are scored in chunks of ``--eval-chunk`` (chunk i with seed i, the same for every row),
each saved when done.

Each row lives in ``--out/ROW`` (default: benchmarks/fashion-runs/ROW, in the repository):
settings.json, history.csv, checkpoint.pt (every epoch), best.pt, training.json (once the
row has finished: what the report needs of its checkpoint) and test_iwae5000.pt (per-image
bounds, ELBO, k̂, ESS and the time taken). The repository keeps a finished row without its
two checkpoints (5 MB each); a row still training keeps them, to go on. Running the
same command again continues every unfinished row from its checkpoint (on the CPU bit for bit
as if uninterrupted) and skips finished ones; rows run one after another (``--rows`` picks
them), and the report follows. Nothing depends on wall-clock limits: pausing the process
(``kill -STOP``/``-CONT``) lengthens the wall times it records, not the CPU times.

    python benchmarks/fashion_convergence.py --threads 1        # start, or continue, all rows
    python benchmarks/fashion_convergence.py --rows 2-layer-dreg-5
    python benchmarks/fashion_convergence.py --report --write-results   # table into RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyro
import torch
from convergence_report import (
    DIVERGED,
    SETTINGS,
    bound_of,
    read_row,
    report_lines,
    result_name,
    write_section,
    write_training_record,
)

import pvae
from pvae.cli import run_script
from pvae.data import held_out_data, load_fashion_mnist, train_transform

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# In the repository: the rows outlive a machine (each session may get a new one), and the
# scored per-image bounds behind the paired comparisons are there to be checked.
RUNS = Path(__file__).resolve().parent / "fashion-runs"
OBJECTIVES = ("elbo", "iwae", "dreg")
# Keys of settings.json that a resumed row must share with the run that started it.
_FIXED = ("model_args", "training", "data")


@dataclasses.dataclass(frozen=True)
class Row:
    """One stochastic layer or two, trained on one objective with K particles."""

    layers: int
    objective: str
    k: int

    @property
    def particles(self) -> int:
        return 1 if self.objective == "elbo" else self.k

    @property
    def name(self) -> str:
        suffix = "" if self.objective == "elbo" else f"-{self.k}"
        return f"{self.layers}-layer-{self.objective}{suffix}"


def all_rows(k: int) -> list[Row]:
    """The six rows, one-layer ones first.

    Example::

        >>> [row.name for row in all_rows(5)][:3]
        ['1-layer-elbo', '1-layer-iwae-5', '1-layer-dreg-5']
    """
    return [Row(layers, objective, k) for layers in (1, 2) for objective in OBJECTIVES]


def pairs(rows: list[Row]) -> list[tuple[str, str]]:
    """The comparisons: between objectives within each architecture, then two layers
    against one for each objective."""
    named = {(row.layers, row.objective): row.name for row in rows}
    within = [("iwae", "elbo"), ("dreg", "elbo"), ("dreg", "iwae")]
    found = [
        (named[layers, a], named[layers, b])
        for layers in (1, 2)
        for a, b in within
        if (layers, a) in named and (layers, b) in named
    ]
    return found + [
        (named[2, o], named[1, o]) for o in OBJECTIVES if (2, o) in named and (1, o) in named
    ]


@dataclasses.dataclass
class Splits:
    """Training images (grey levels), validation and test images (binarized once)."""

    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    source: str
    image_shape: tuple


def load_splits(args: argparse.Namespace) -> Splits:
    data = load_fashion_mnist(args.data_dir)
    images = data.train_x[: args.train_size]
    if not 0 < args.validation_size < images.shape[0]:
        raise ValueError(
            f"--validation-size {args.validation_size} must leave training images out of the "
            f"{images.shape[0]}: give a number between 1 and {images.shape[0] - 1}"
        )
    cut = images.shape[0] - args.validation_size
    return Splits(
        train=images[:cut],
        validation=held_out_data(images[cut:], "binarized"),
        test=held_out_data(data.test_x[: args.test_size], "binarized"),
        source=data.source,
        image_shape=tuple(data.image_shape),
    )


def row_config(row: Row, args: argparse.Namespace, folder: Path) -> pvae.Config:
    return pvae.Config.from_dict(
        {
            "z_dim": 50,
            "hidden_dims": [200, 200],
            "activation": "tanh",
            "prior": "standard_normal",  # Burda et al.'s, not the example's VampPrior
            "hierarchy": [100, 50] if row.layers == 2 else None,
            "likelihood": "bernoulli",
            "objective": row.objective,
            "num_particles": row.particles,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "num_epochs": args.max_epochs,
            "patience": args.patience,
            "held_out_num_samples": row.particles,  # the row's own bound: ELBO or IWAE_K
            "seed": args.seed,
            "num_samples": args.eval_samples,
            "dataset": "fashion-mnist",
            "device": "cpu",
            "out": str(folder),
        },
        source=f"row {row.name}",
    )


def check_settings(folder: Path, config: pvae.Config, vae: pvae.VAE, splits: Splits) -> None:
    """Write the row's settings.json when it starts; refuse to continue a row that was
    started with another model, training or data."""
    current = {
        "model_args": vae.model_args,
        "training": {
            # settings.json's name, from before held_out_num_samples: rows on disk keep it
            "held_out_samples" if key == "held_out_num_samples" else key: getattr(config, key)
            for key in ("objective", "num_particles", "held_out_num_samples", "batch_size")
        }
        | {key: getattr(config, key) for key in ("learning_rate", "seed")},
        "data": {
            "source": splits.source,
            "train_images": splits.train.shape[0],
            "validation_images": splits.validation.shape[0],
            "test_images": splits.test.shape[0],
        },
    }
    current = json.loads(json.dumps(current))  # as it reads back (tuples become lists)
    path = folder / SETTINGS
    if not path.exists():
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {**current, "started": started, "command": " ".join(sys.argv)}
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    # Rows started before the validation IWAE existed were all judged by the ELBO.
    saved.setdefault("training", {}).setdefault("held_out_samples", 1)
    differ = [
        (f"{part}.{key}", value, saved.get(part, {}).get(key))
        for part in _FIXED
        for key, value in current[part].items()
        if saved.get(part, {}).get(key) != value
    ]
    if differ:
        was = ", ".join(f"{key} = {old!r}" for key, _, old in differ)
        now = ", ".join(f"{key} = {new!r}" for key, new, _ in differ)
        raise ValueError(
            f"{folder} holds a row started with {was}, not {now}: rerun with the flags that "
            "started it, or choose another --out"
        )


class Clock:
    """A row's training time across sessions: this process's CPU seconds (which a pause by
    SIGSTOP or a wait for a busy core does not count) and wall seconds, added to those that
    its checkpoint holds."""

    def __init__(self, saved: dict | None):
        saved = saved or {}
        self.cpu, self.wall = saved.get("cpu_seconds", 0.0), saved.get("wall_seconds", 0.0)
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()

    def totals(self) -> dict[str, float]:
        return {
            "cpu_seconds": self.cpu + time.process_time() - self.cpu_start,
            "wall_seconds": self.wall + time.perf_counter() - self.wall_start,
        }


def train_row(row: Row, config: pvae.Config, vae: pvae.VAE, splits: Splits, folder: Path):
    """Train (or go on training) the row with :func:`pvae.fit`, which keeps best.pt."""
    checkpoint = folder / "checkpoint.pt"
    resume = pvae.load_checkpoint(checkpoint) if checkpoint.exists() else None
    clock = Clock(resume)
    bound = "ELBO" if row.objective == "elbo" else f"IWAE_{row.k}"

    def say_epoch(stats: pvae.EpochStats) -> None:
        iwae = "" if stats.held_out_iwae is None else f", {bound} {stats.held_out_iwae:9.2f}"
        print(
            f"{row.name}  epoch {stats.epoch:4d}  train {bound} {stats.train_bound:9.2f}  "
            f"validation ELBO {stats.held_out_elbo:9.2f}{iwae}  ({stats.seconds:.1f} s, load "
            f"{os.getloadavg()[0]:.2f})",
            flush=True,
        )

    try:
        pvae.fit(
            vae.model,
            vae.guide,
            splits.train,
            **config.train_args(),
            transform=train_transform(vae.likelihood.data_form),
            held_out=splits.validation,
            csv_path=folder / "history.csv",
            checkpoint_path=checkpoint,
            checkpoint_extra=lambda: pvae.vae_state(vae, config=config.to_dict(), **clock.totals()),
            resume=resume,
            on_epoch_end=say_epoch,
            progress=False,
        )
    except pvae.TrainingDiverged as error:  # the other rows still run; this one is skipped
        (folder / DIVERGED).write_text(f"{error}\n")
        print(f"{row.name}: {error}", flush=True)


def evaluate_row(row: Row, folder: Path, test: torch.Tensor, args, best_epoch: int) -> None:
    """IWAE_K of best.pt on every test image, chunk by chunk (each chunk saved as it is
    done, so an interrupted evaluation goes on where it stopped), then one result file."""
    pyro.clear_param_store()
    vae, best = pvae.load_vae(folder / "best.pt")
    k, epoch = args.eval_samples, best["epoch"]
    if epoch != best_epoch:  # fit writes checkpoint.pt, then best.pt: a kill in between
        raise ValueError(
            f"{folder / 'best.pt'} holds epoch {epoch}, but checkpoint.pt says the best "
            f"validation epoch was {best_epoch}, whose weights were not kept: score best.pt "
            "by hand, or train the row again in another --out"
        )
    parts = folder / f"test_iwae{k}_epoch{epoch}_chunks{args.eval_chunk}"
    print(f"{row.name}: IWAE_{k} of epoch {epoch} on {test.shape[0]} test images", flush=True)
    chunks = [
        _scored_chunk(vae, test, start, index, parts, args)
        for index, start in enumerate(range(0, test.shape[0], args.eval_chunk))
    ]
    result = {
        name: torch.cat([chunk[name] for chunk in chunks])
        for name in ("per_datapoint", "elbo_per_datapoint", "pareto_k", "ess")
    }
    result |= {
        "num_samples": k,
        "data_dim": test.shape[1],
        "best_epoch": epoch,
        "test_images": test.shape[0],
        "eval_chunk": args.eval_chunk,
        "seconds": sum(chunk["seconds"] for chunk in chunks),
        "cpu_seconds": sum(chunk["cpu_seconds"] for chunk in chunks),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    pvae.save_checkpoint(folder / result_name(k), result)
    shutil.rmtree(parts)
    summary = bound_of(result).summary()
    print(f"{row.name}: test {summary} [{result['seconds']:.0f} s]", flush=True)


def _scored_chunk(vae, test, start, index, parts: Path, args) -> dict:
    path = parts / f"{index:05d}.pt"
    if path.exists():
        return pvae.load_checkpoint(path)
    rows = test[start : start + args.eval_chunk]
    cpu, wall = time.process_time(), time.perf_counter()
    bound = pvae.log_likelihood(
        vae.model,
        vae.guide,
        rows,
        args.eval_samples,
        seed=index,
        data_chunk=args.eval_data_chunk,
        progress=False,
    )
    chunk = {
        "per_datapoint": bound.per_datapoint,
        "elbo_per_datapoint": bound.elbo_per_datapoint,
        "pareto_k": bound.pareto_k,
        "ess": bound.ess,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }
    pvae.save_checkpoint(path, chunk)
    print(f"  images {start}-{start + rows.shape[0]}: {chunk['seconds']:.0f} s", flush=True)
    return chunk


def run_row(row: Row, splits: Splits, args: argparse.Namespace) -> None:
    """Train the row until it is finished, then score it; a finished row is skipped."""
    folder = Path(args.out) / row.name
    config = row_config(row, args, folder)
    pyro.clear_param_store()  # the rows' networks share pyro.module names
    pyro.set_rng_seed(config.seed)
    vae = pvae.build_vae(**config.model_args(splits.train.shape[1], splits.image_shape))
    check_settings(folder, config, vae, splits)
    state = _state(folder, args)
    if state.status == "in progress" and not (folder / "checkpoint.pt").exists():
        raise ValueError(
            f"{folder} keeps only the record of a finished row (its checkpoints were not "
            f"kept), and --patience {args.patience} / --max-epochs {args.max_epochs} ask for "
            "more epochs: train the row again into another --out"
        )
    if state.status == "in progress" or state.status == "not started":
        print(f"{row.name}: training from epoch {state.epochs} into {folder}", flush=True)
        train_row(row, config, vae, splits, folder)
        state = _state(folder, args)
    if not state.finished:
        print(f"{row.name}: {state.status}, not scored", flush=True)
        return
    if (folder / "checkpoint.pt").exists():
        write_training_record(folder)
    if state.test is None:
        evaluate_row(row, folder, splits.test, args, state.best_epoch)
    else:
        print(f"{row.name}: finished ({state.status}) and scored, skipped", flush=True)


def _state(folder: Path, args):
    return read_row(folder, args.patience, args.max_epochs, args.eval_samples)


def report(rows: list[Row], args: argparse.Namespace) -> None:
    states = [_state(Path(args.out) / row.name, args) for row in rows]
    lines = report_lines(states, pairs(rows), args.eval_samples)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    heading = (
        f"Report of {now} (`python benchmarks/fashion_convergence.py --report` on "
        f"{_shown(Path(args.out))}; patience {args.patience}, at most {args.max_epochs} "
        "epochs):"
    )
    print("\n".join([heading, "", *lines]))
    if args.write_results:
        write_section(Path(args.results_file), heading, lines)
        print(f"wrote the report into {args.results_file}")


def _shown(folder: Path) -> str:
    """The folder as the report names it: relative to the repository when inside it."""
    root, resolved = RUNS.parent.parent, folder.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(folder)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for row in all_rows(args.k) if args.rows is None or row.name in args.rows]
    unknown = set(args.rows or ()) - {row.name for row in all_rows(args.k)}
    if unknown:
        names = ", ".join(row.name for row in all_rows(args.k))
        raise ValueError(f"unknown row(s) {', '.join(sorted(unknown))}: choose from {names}")
    if not args.report:
        splits = load_splits(args)
        print(
            f"Fashion-MNIST ({splits.source}): {splits.train.shape[0]} train, "
            f"{splits.validation.shape[0]} validation, {splits.test.shape[0]} test images; "
            f"{torch.get_num_threads()} thread(s); rows {', '.join(r.name for r in rows)}",
            flush=True,
        )
        for row in rows:
            run_row(row, splits, args)
    report(rows, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(RUNS), help="a folder per row under it")
    p.add_argument("--rows", nargs="+", default=None, help="row names (default: all six)")
    p.add_argument("--data-dir", default=None, help="default: $PVAE_FASHION_MNIST_DIR or Debian's")
    p.add_argument("-k", type=int, default=5, help="K of the iwae and dreg objectives")
    p.add_argument("--patience", type=int, default=20, help="epochs without a better one")
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=None, help="first N training images")
    p.add_argument("--validation-size", type=int, default=5000, help="the last N of those")
    p.add_argument("--test-size", type=int, default=None, help="first N test images")
    p.add_argument("--eval-samples", type=int, default=5000, help="K of the test bound")
    p.add_argument("--eval-chunk", type=int, default=500, help="test images per saved chunk")
    p.add_argument("--eval-data-chunk", type=int, default=20, help="images per model call")
    p.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: default)")
    p.add_argument("--report", action="store_true", help="print the table, train nothing")
    p.add_argument("--write-results", action="store_true", help="and put it into RESULTS.md")
    p.add_argument("--results-file", default=str(RESULTS))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
