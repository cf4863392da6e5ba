"""One training run of a VAE with its outputs: what ``examples/mnist_svi.py`` and
``pvae train`` do, in one place.

:func:`train_run` builds the VAE a :class:`pvae.Config` describes, trains it on
:class:`pvae.data.ImageData` (images, or any rows of features with ``image_shape=None``),
keeps the best held-out checkpoint, reports the held-out IWAE bound and writes into
``config.out``: ``config.yaml``, ``history.csv``, ``checkpoint.pt`` (and ``best.pt``),
``elbo.png``, ``khat.png`` and, for images, ``samples.png`` and ``reconstructions.png``.
Nothing is written before every check of the settings, data and model has passed, and a run
holds a lock on its folder (:func:`pvae.infer.folder_lock.folder_lock`) from its first write
to its last, so that a second run on the same folder is refused at once.
:func:`resume_settings` gives the settings of a resumed run from its checkpoint.

Example::

    >>> config = Config.from_dict({"num_epochs": 5, "out": "runs/x"})  # doctest: +SKIP
    >>> train_run(config, pvae.data.load_mnist())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyro
import torch

from pvae.analysis.diagnostics import active_units
from pvae.config import Config, read_config_file, renamed_settings, save_config
from pvae.data import ImageData, held_out_data, load_dataset, load_user_data
from pvae.data.transforms import holds_bytes
from pvae.data.user_data import read_rows
from pvae.infer.checkpoint import load_checkpoint
from pvae.infer.checkpoint_entries import check_training_state
from pvae.infer.device import resolve_device
from pvae.infer.evaluate import estimate_elbo
from pvae.infer.folder_lock import folder_lock
from pvae.infer.iwae import LogLikelihood, log_likelihood
from pvae.infer.sources import as_model_dtype
from pvae.infer.tensorboard import TensorBoardLogger
from pvae.infer.train import FitResult, best_checkpoint_path, fit
from pvae.models.factory import build_vae, checked_model_args, vae_state
from pvae.models.settings import ARCHITECTURE_KEYS, ModelConfig
from pvae.models.vae import VAE
from pvae.viz import plots

# Settings a resumed run takes from its checkpoint: those that make the model and its data.
_FIXED_ON_RESUME = (*ARCHITECTURE_KEYS, "conditional", "dataset", "data")


@dataclasses.dataclass
class RunResult:
    """What a run leaves: the VAE (best held-out epoch when kept), training and evaluation."""

    vae: VAE
    fit: FitResult
    bound: LogLikelihood | None
    out: Path


def resume_settings(checkpoint: Mapping[str, Any], path: str | Path, given: Mapping) -> dict:
    """The settings of a run resumed from ``checkpoint`` (read from ``path``): its own, with
    ``given`` (a config file's, then flags') for what may change (epochs, learning rate,
    evaluation, device, output). A given setting of the model or its data that contradicts
    the checkpoint is an error that names it; outputs go next to the checkpoint unless
    ``given`` has ``out``.

    Example::

        >>> resume_settings(torch.load("runs/a/checkpoint.pt"), "runs/a/checkpoint.pt",
        ...                 {"num_epochs": 200})["out"]  # doctest: +SKIP
        'runs/a'
    """
    saved, given = checkpoint.get("config"), renamed_settings(given, warn=True)
    try:
        saved = renamed_settings(saved or {}, warn=False) if isinstance(saved, Mapping) else saved
        saved_config = Config.from_dict(saved or {}, source=f"the settings in {path}")
    except ValueError as error:
        raise ValueError(
            f"{path} was not written by examples/mnist_svi.py or pvae train ({error}): resume "
            "it from Python with pvae.fit(..., resume=path)"
        ) from None
    if not saved:
        raise ValueError(f"{path} holds no run settings: resume it with pvae.fit(..., resume=)")
    merged = Config.from_dict({**saved_config.to_dict(), **given})
    contradicted = [
        key
        for key in _FIXED_ON_RESUME
        if key in given and getattr(merged, key) != getattr(saved_config, key)
    ]
    if contradicted:
        was = ", ".join(f"{key} = {getattr(saved_config, key)!r}" for key in contradicted)
        now = ", ".join(f"{key} = {getattr(merged, key)!r}" for key in contradicted)
        raise ValueError(
            f"{path} was trained with {was}, not {now}: a resumed run keeps the settings of "
            "its model and data; drop those settings, or start a new run"
        )
    values = merged.to_dict()
    if "out" not in given:
        values["out"] = str(Path(path).parent)
    return values


def resumable_checkpoint(path: str) -> dict:
    """The checkpoint to resume a run from, checked before anything is written: what fit
    needs, and a model whose parts are registered here (nothing the file names is imported).

    Example::

        >>> checkpoint = resumable_checkpoint("runs/mnist/checkpoint.pt")  # doctest: +SKIP
    """
    checkpoint = load_checkpoint(path)
    check_training_state(checkpoint, path)
    checked_model_args(checkpoint, path)
    return checkpoint


def run_settings(
    given: Mapping[str, Any],
    config_file: str | Path | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    resume_path: str | Path | None = None,
) -> Config:
    """A run's settings: defaults, then ``config_file``, then ``given`` (flags); when
    resuming, the checkpoint's first, of which only what may change is changed.

    Example::

        >>> run_settings({"z_dim": 8}).z_dim
        8
    """
    values = {**(read_config_file(config_file) if config_file else {}), **given}
    if checkpoint is not None:
        values = resume_settings(checkpoint, resume_path, values)
    source = None
    if config_file:
        source = f"config file {config_file}" + (" and the flags" if given else "")
    return Config.from_dict(values, source=source)


def check_resumable(checkpoint: Mapping[str, Any], vae: VAE, path: str | Path) -> None:
    """Refuse a checkpoint of another architecture, naming only the settings that differ."""
    saved = ModelConfig.from_dict(checkpoint.get("model_args") or {"x_dim": 0}).to_dict()
    differ = [key for key, value in vae.model_args.items() if saved.get(key) != value]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} there, {vae.model_args[k]!r} here" for k in differ)
        raise ValueError(f"{path} holds another model ({shown}): resume with that run's settings")


def train_run(
    config: Config,
    data: ImageData,
    resume: Mapping[str, Any] | None = None,
    resume_path: str | Path | None = None,
    say: Callable[..., None] | None = None,
) -> RunResult:
    """Train, evaluate and write the outputs of the run ``config`` describes on ``data``.

    ``data.train_x``/``test_x`` are rows of the values the likelihood models before its
    preparation (grey levels in [0, 1] for the Bernoulli one, binarized here); labels are
    used by a conditional VAE. Nothing in ``config.out`` is created or changed before the
    model, ``resume`` (a loaded checkpoint) and the data have passed every check (fit's come
    before its first write; config.yaml comes with the first checkpoint), and the run holds
    the folder's lock throughout. Under torchrun rank 0 alone reports, locks and writes.
    """
    main_process = int(os.environ.get("RANK", "0")) == 0
    say = say or (print if main_process else _silent)
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    num_classes = int(data.train_y.max()) + 1 if config.conditional else 0
    image_shape = data.image_shape
    model_args = config.model_args(data.train_x.shape[1], image_shape, num_classes)
    vae = build_vae(**model_args).to(device)
    if resume is not None:
        check_resumable(resume, vae, resume_path)
    train, held_out = _prepared(data, vae, config.conditional, device)
    say(
        f"{data.name}: {train[0].shape[0]} train / {held_out[0].shape[0]} held-out rows "
        f"from {data.source}; device {device}"
    )
    out = Path(config.out)
    with folder_lock(out):
        if resume is None and hasattr(vae.prior, "initialize"):
            _start_pseudo_inputs(vae.prior, train[0], say)
        result = _train(config, vae, train, held_out, out, resume, say)
        _keep_best(result, vae, out, say)
        bound = _evaluate(config, vae, held_out, out, say, main_process)
        if main_process:
            _pictures(config, vae, held_out, image_shape, result, out, say)
    return RunResult(vae=vae, fit=result, bound=bound, out=out)


def _silent(*args, **kwargs) -> None:
    pass


def _start_pseudo_inputs(prior, rows: torch.Tensor, say) -> None:
    """A VampPrior's pseudo-inputs start as training rows (in [0, 1], as the encoder sees
    them); with fewer rows than pseudo-inputs they keep their random start."""
    if rows.shape[0] < prior.num_components:
        say(
            f"{rows.shape[0]} training rows for {prior.num_components} pseudo-inputs: they "
            "start at random (set prior_options num_components to at most the rows)"
        )
        return
    prior.initialize(rows.float() / 255 if holds_bytes(rows) else rows.float())


def _prepared(data: ImageData, vae: VAE, conditional: bool, device) -> tuple[tuple, tuple]:
    """Training rows as they are (the likelihood's transform prepares each minibatch),
    held-out rows prepared once on the CPU (so every machine and ``pvae evaluate`` score the
    same ones), with labels for a conditional VAE."""
    train = (data.train_x.to(device),)
    x = held_out_data(data.test_x, vae.likelihood.data_form)
    # The pictures and the per-epoch report run the VAE on these rows directly.
    held_out = (as_model_dtype((x,), next(vae.parameters()).dtype, "held-out data")[0].to(device),)
    if conditional:
        train += (data.train_y.to(device),)
        held_out += (data.test_y.to(device),)
    return train, held_out


def _train(config, vae, train, held_out, out, resume, say) -> FitResult:
    bound_name = f"IWAE_{config.num_particles}" if config.objective in ("iwae", "dreg") else "ELBO"
    held_out_name = "ELBO"
    if config.adversarial:  # not an ELBO model: its figures are not bounds on log p(x)
        bound_name, held_out_name = "-loss", "log p(x|f(x))"

    logger = None  # made at the first epoch's end: nothing is written before fit's checks

    def report(stats) -> None:
        nonlocal logger
        if logger is None and config.tensorboard:
            logger = TensorBoardLogger(config.tensorboard)
        weight = f"  KL weight {vae.kl_weight:g}" if vae.kl_weight != 1 else ""
        terms = ""
        if not config.adversarial:  # the held-out ELBO's split, from draws of its own
            reconstruction, kl = vae.elbo_terms(*held_out)
            terms = f" (reconstruction {reconstruction:.2f}, KL {kl:.2f})"
            if logger is not None:
                logger.writer.add_scalar("held_out/reconstruction", reconstruction, stats.epoch)
                logger.writer.add_scalar("held_out/kl", kl, stats.epoch)
        if logger is not None:
            logger(stats)
        iwae = ""
        if stats.held_out_iwae is not None:
            iwae = f"  IWAE_{config.held_out_num_samples} {stats.held_out_iwae:9.2f}"
        units = "" if config.adversarial else _active_units(vae, held_out, stats.epoch)
        say(
            f"epoch {stats.epoch:4d}  train {bound_name} {stats.train_bound:9.2f}  "
            f"held-out {held_out_name} {stats.held_out_elbo:9.2f}{terms}{iwae}  "
            f"({stats.seconds:.1f} s){units}{weight}",
            flush=True,
        )

    transform = vae.likelihood.train_transform()
    if holds_bytes(train[0]):  # 8-bit images stay so in memory
        transform = _FromBytes(transform)
    started = time.perf_counter()
    result = fit(
        vae.model,
        vae.guide,
        train,
        **config.train_args(),
        transform=transform,
        held_out=held_out,
        csv_path=out / "history.csv",
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_extra=_state_and_config_file(vae, config, out),
        resume=resume,
        on_epoch_end=report,
        epoch_schedules=[vae.kl_warmup],
    )
    if logger is not None:
        logger.close()
    seconds = time.perf_counter() - started
    say(f"trained {result.num_steps} steps in {seconds:.0f} s; step: {result.step}")
    return result


def _active_units(vae: VAE, held_out: tuple, epoch: int) -> str:
    """``  active units k/d`` on the held-out rows; a warning when none is active once the KL
    weight is 1 (posterior collapse: the decoder ignores z)."""
    active = active_units(vae.model, vae.guide, held_out)
    if not active.any() and vae.kl_weight == 1:
        warnings.warn(
            f"posterior collapse: no latent unit is active after epoch {epoch} (Cov_x E[z|x] "
            "<= 0.01 for each, Burda et al. 2016): the decoder ignores z. Try a KL warm-up "
            "(--warmup-epochs 10), objective iwae or dreg, a smaller decoder or a lower "
            "learning rate",
            stacklevel=2,
        )
    return f"  active units {int(active.sum())}/{active.numel()}"


def _state_and_config_file(vae: VAE, config: Config, out: Path) -> Callable[[], dict]:
    """fit's ``checkpoint_extra``: the VAE's state and the run's settings. The first
    checkpoint writes config.yaml too: so config.yaml always describes the checkpoint next to
    it, and a run that fit's checks refuse leaves the folder as it was."""
    written = False

    def state() -> dict:
        nonlocal written
        if not written:
            save_config(config, out / "config.yaml")
            written = True
        return vae_state(vae, config=config.to_dict())

    return state


def _keep_best(result: FitResult, vae: VAE, out: Path, say) -> None:
    """Go on with the best held-out epoch's weights (best.pt), as early stopping promises."""
    last = result.history[-1].epoch if result.history else 0
    if result.best_epoch and result.best_epoch != last:
        best = load_checkpoint(best_checkpoint_path(out / "checkpoint.pt"))
        vae.load_state_dict(best["model"])
        say(
            f"evaluating epoch {result.best_epoch}, the best held-out "
            f"{result.held_out_bound_name} ({result.best_held_out_bound:.2f}), kept in "
            f"{out / 'best.pt'}"
        )


class _FromBytes:
    """8-bit values scaled to [0, 1] per minibatch, then the likelihood's own transform."""

    def __init__(self, then):
        self.then = then

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float() / 255
        return x if self.then is None else self.then(x)


def _evaluate(config, vae, held_out, out, say, main_process) -> LogLikelihood | None:
    if config.adversarial:
        reconstruction = estimate_elbo(vae.model, vae.guide, held_out)
        say(
            f"held-out reconstruction log-likelihood log p(x|f(x)) {reconstruction:.2f} nats "
            "(an adversarial autoencoder has no ELBO: this is not a bound on log p(x))"
        )
        return None
    started = time.perf_counter()
    bound = log_likelihood(vae.model, vae.guide, held_out, config.num_samples, seed=config.seed)
    say(f"held-out {bound.summary()} [{time.perf_counter() - started:.0f} s]")
    if main_process:
        plots.plot_khat(bound, out / "khat.png")
    return bound


def _pictures(config, vae, held_out, image_shape, result, out, say) -> None:
    plots.save_training_curves(result.history, out / "elbo.png")
    written = ["elbo"] + ([] if config.adversarial else ["khat"])
    if image_shape is not None:
        vae.eval()
        labels = None
        if config.conditional:  # rows of classes 0..9, or only the chosen one
            labels = config.digit if config.digit is not None else torch.arange(100) // 10
        plots.save_sample_grid(vae.sample(100, labels), out / "samples.png", image_shape)
        originals = tuple(t[:50] for t in held_out)
        plots.save_reconstructions(
            originals[0], vae.reconstruct(*originals), out / "reconstructions.png", image_shape
        )
        written = ["samples", "reconstructions", *written]
    say(f"wrote config.yaml, {', '.join(written)} (PNG), history.csv, checkpoint to {out}")


def load_run_data(config: Config) -> ImageData:
    """The data a run's settings name: ``config.dataset`` (MNIST, Fashion-MNIST), or
    ``config.data``, a file or folder of one's own (:func:`load_user_data`)."""
    if config.data is not None:
        if config.conditional:
            raise ValueError(
                f"a conditional VAE needs class labels, which {config.data} does not give: "
                "drop conditional, or train from Python with data=(x, labels)"
            )
        return load_user_data(config.data, config.held_out_fraction, config.seed, config.image_size)
    return load_dataset(config.dataset, config.data_dir)


def evaluation_rows(vae: VAE, path: str | Path, image_size=None) -> torch.Tensor:
    """All rows of a data file or folder, as ``vae`` scores them (flattened, 8-bit images
    scaled to [0, 1], prepared for its likelihood as held-out data are)."""
    x, info = read_rows(path, image_size)
    if holds_bytes(x):
        x = x.float() / 255
    if x.shape[1] != vae.model_args.get("x_dim", x.shape[1]):
        raise ValueError(
            f"{path} has {x.shape[1]} values per row ({info.describe()}), but the model was "
            f"trained on {vae.model_args['x_dim']}: give data of the training data's shape "
            "(--image-size resizes images)"
        )
    return held_out_data(x, vae.likelihood.data_form)
