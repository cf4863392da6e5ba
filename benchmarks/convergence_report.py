"""What the runs of ``benchmarks/fashion_convergence.py`` have measured so far.

Each row's folder is read as it stands (its checkpoint, its test bound if it has one):
:func:`read_row` gives its state, :func:`report_lines` a Markdown table of the rows and of the
paired differences between them, and :func:`write_section` puts that into
benchmarks/RESULTS.md between two markers, replacing an earlier report. Only what a run
measured is shown: a row still training has no test figure, a pair of rows is compared only
once both have been scored on the same test images with the same K.

Example::

    >>> state = read_row(Path("benchmarks/fashion-runs/1-layer-elbo"), patience=20,
    ...                  max_epochs=1000, eval_samples=5000)  # doctest: +SKIP
    >>> state.status, state.epochs  # doctest: +SKIP
    ('in progress', 12)
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import torch

import pvae
from pvae.infer.schedules import EarlyStopping

BEGIN = "<!-- fashion-convergence report -->"
END = "<!-- /fashion-convergence report -->"
DIVERGED = "diverged.txt"
SETTINGS = "settings.json"
# What the report needs of a finished row's checkpoint.pt, kept without its weights: the
# repository keeps this for finished rows (with settings, history and test bounds), and the
# checkpoints only for rows that still train.
TRAINING = "training.json"


def training_record(saved: dict) -> dict:
    """The parts of a checkpoint of fit that the report reads (no weights)."""
    keys = ("epoch", "early_stopping", "cpu_seconds", "wall_seconds")
    return {key: saved.get(key) for key in keys} | {
        "epoch_seconds": [stats["seconds"] for stats in saved["training"]["history"]]
    }


def write_training_record(folder: Path) -> None:
    """training.json from the row's checkpoint.pt (once the row has finished)."""
    record = training_record(pvae.load_checkpoint(folder / "checkpoint.pt"))
    (folder / TRAINING).write_text(json.dumps(record, indent=2) + "\n")


def result_name(eval_samples: int) -> str:
    """The file of a row's per-image test bounds, e.g. ``test_iwae5000.pt``."""
    return f"test_iwae{eval_samples}.pt"


@dataclasses.dataclass
class RowState:
    """A row as its folder has it. ``status``: not started, in progress, converged (no better
    validation bound for ``patience`` epochs), max epochs, or diverged; ``test``: the IWAE
    bound of the best validation epoch on the test images, once computed."""

    name: str
    status: str
    epochs: int = 0
    best_epoch: int = 0
    best_validation_bound: float | None = None
    validation_bound_name: str = "ELBO"
    stale_epochs: int = 0
    started: str = ""
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: float | None = None
    wall_seconds: float | None = None
    test: pvae.LogLikelihood | None = None
    eval_cpu_seconds: float | None = None
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.status in ("converged", "max epochs")


def read_row(folder: Path, patience: int, max_epochs: int, eval_samples: int) -> RowState:
    """The state of the row kept in ``folder``, judged by ``patience`` and ``max_epochs``."""
    name = folder.name
    if (folder / DIVERGED).exists():
        return RowState(name, "diverged", note=(folder / DIVERGED).read_text().strip())
    if (folder / "checkpoint.pt").exists():
        saved = training_record(pvae.load_checkpoint(folder / "checkpoint.pt"))
    elif (folder / TRAINING).exists():
        saved = json.loads((folder / TRAINING).read_text())
    else:
        return RowState(name, "not started")
    stopping = EarlyStopping.from_dict(saved["early_stopping"], patience=patience)
    status = "in progress"
    if saved["epoch"] >= max_epochs:
        status = "max epochs"
    elif stopping.should_stop:
        status = "converged"
    state = RowState(
        name,
        status,
        epochs=saved["epoch"],
        best_epoch=stopping.best_epoch,
        best_validation_bound=stopping.best_bound if stopping.best_epoch else None,
        validation_bound_name=stopping.bound_name,
        stale_epochs=stopping.stale_epochs,
        started=json.loads((folder / SETTINGS).read_text()).get("started", ""),
        epoch_seconds=saved["epoch_seconds"],
        cpu_seconds=saved.get("cpu_seconds"),
        wall_seconds=saved.get("wall_seconds"),
    )
    if state.finished:
        _read_test(state, folder, eval_samples)
    return state


def _read_test(state: RowState, folder: Path, eval_samples: int) -> None:
    """The test bound, if it is that of the row's best epoch on all its test images."""
    path = folder / result_name(eval_samples)
    if not path.exists():
        return
    saved = pvae.load_checkpoint(path)
    test_images = json.loads((folder / SETTINGS).read_text())["data"]["test_images"]
    if saved["best_epoch"] != state.best_epoch or saved["test_images"] != test_images:
        return  # of an earlier best epoch (the row trained on), or of other images
    state.test = bound_of(saved)
    state.eval_cpu_seconds = saved["cpu_seconds"]


def bound_of(saved: dict) -> pvae.LogLikelihood:
    """The :class:`pvae.LogLikelihood` a saved test result holds."""
    return pvae.LogLikelihood(
        per_datapoint=saved["per_datapoint"],
        elbo_per_datapoint=saved["elbo_per_datapoint"],
        pareto_k=saved["pareto_k"],
        ess=saved["ess"],
        num_samples=saved["num_samples"],
        data_dim=saved["data_dim"],
    )


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the per-image differences a − b (same images, same order).

    Example::

        >>> paired_difference(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 1.0, 1.0]))
        (1.6666666666666667, 0.6666666666666666)
    """
    d = (a.double() - b.double()).tolist()
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f}"


def _row_line(state: RowState) -> str:
    status = state.status + (f" ({state.note})" if state.note else "")
    if state.status == "in progress":
        stale = state.stale_epochs
        status += f", {stale} epoch{'' if stale == 1 else 's'} since the best"
    median = f"{statistics.median(state.epoch_seconds):.1f}" if state.epoch_seconds else "-"
    validation = "-"
    if state.best_validation_bound is not None:
        validation = f"{state.validation_bound_name} {state.best_validation_bound:.2f}"
    test, elbo, khat = "-", "-", "-"
    if state.test is not None:
        test = f"{state.test.mean:.2f} ± {state.test.standard_error:.2f}"
        elbo = f"{state.test.elbo:.2f}"
        khat = f"{100 * state.test.fraction_khat_above:.0f}%"
    started = state.started.replace("T", " ")[:16] or "-"
    cells = [state.name, status, started, str(state.epochs), str(state.best_epoch or "-"), median]
    cells += [_hours(state.cpu_seconds), _hours(state.wall_seconds), validation, test, elbo, khat]
    return "| " + " | ".join(cells + [_hours(state.eval_cpu_seconds)]) + " |"


def _pair_line(a: RowState, b: RowState) -> str:
    waiting = [s for s in (a, b) if s.test is None]
    if waiting:
        what = ", ".join(f"{s.name} {s.status}" for s in waiting)
        return f"| {a.name} − {b.name} | - | not yet: {what} |"
    if a.test.num_samples != b.test.num_samples or a.test.per_datapoint.shape != (
        b.test.per_datapoint.shape
    ):
        return f"| {a.name} − {b.name} | - | not comparable: other K or images |"
    mean, se = paired_difference(a.test.per_datapoint, b.test.per_datapoint)
    return f"| {a.name} − {b.name} | {a.test.per_datapoint.numel()} | {mean:+.2f} ± {se:.2f} |"


def report_lines(states: list[RowState], pairs: list[tuple[str, str]], eval_samples: int):
    """The Markdown table of the rows, then that of the paired differences ``pairs``
    (names a, b: a − b per test image, mean ± s.e.; positive: a is better)."""
    k = eval_samples
    lines = [
        "| row | state | started (UTC) | epochs | best epoch | median s/epoch (steps) "
        f"| train CPU h | train wall h | validation bound (best) | test IWAE_{k} ± s.e. "
        "| test ELBO | k̂ above | eval CPU h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row_line(state) for state in states),
        "",
        f"Paired differences of the per-image test IWAE_{k} bounds (a − b over the same test "
        "images; mean ± s.e. of the differences, nats; positive: a is better):",
        "",
        "| a − b | images | mean ± s.e. |",
        "|---|---|---|",
    ]
    by_name = {state.name: state for state in states}
    lines += [_pair_line(by_name[a], by_name[b]) for a, b in pairs if a in by_name and b in by_name]
    return lines


def write_section(path: Path, heading: str, lines: list[str]) -> None:
    """Put ``heading`` and ``lines`` between the report markers of ``path`` (replacing what
    was there), or append them with the markers at its end."""
    block = "\n".join([BEGIN, heading, "", *lines, END])
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
