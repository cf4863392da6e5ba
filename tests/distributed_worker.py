"""Run by tests/test_distributed.py under torchrun (and in one process for the reference).

Trains a deterministic linear model (a Delta guide, so no random draws) and a VAE with
pvae.fit, evaluates log_likelihood, and writes what each rank got to OUT/rank{r}.pt.
"""

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.distributed

import pvae

X_DIM, Z_DIM = 6, 2


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(50, X_DIM, generator=generator, dtype=torch.float64)


def model(x):
    weight = pyro.param("weight", lambda: 0.1 * torch.ones(X_DIM, Z_DIM, dtype=torch.float64))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ weight.T, 1.0).to_event(1), obs=x)


def guide(x):
    projection = pyro.param(
        "projection", lambda: 0.1 * torch.ones(Z_DIM, X_DIM, dtype=torch.float64)
    )
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Delta(x @ projection.T).to_event(1))


def main(out: Path) -> None:
    results = {}
    x = data()
    # Deterministic: parameters must match one process with the same global batch.
    fit = pvae.fit(model, guide, x, num_epochs=3, batch_size=16, learning_rate=0.05, seed=3)
    results["linear"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    results["linear_history"] = [vars(s) | {"seconds": 0} for s in fit.history]
    # The captured step: each rank captures its share's step; gradients are summed after it.
    pyro.clear_param_store()
    pvae.fit(model, guide, x, num_epochs=3, batch_size=16, learning_rate=0.05, seed=3,
             compile="capture")  # fmt: skip
    results["captured"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    # Two named streams of their own batch sizes: each rank takes its share of both.
    pyro.clear_param_store()
    streams = {"a": pvae.Stream(x[:30], batch_size=8), "b": x[30:]}
    pvae.fit(model, guide, streams, num_epochs=2, batch_size=6, learning_rate=0.05, seed=3)
    results["streams"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    # The importance-weighted objective, and a resume mid-way, give the same parameters too.
    pyro.clear_param_store()
    pvae.fit(
        model,
        guide,
        x,
        num_epochs=2,
        batch_size=16,
        objective="dreg",
        num_particles=3,
        learning_rate=0.05,
        seed=3,
        checkpoint_path=out / "dreg.pt",
    )
    pyro.clear_param_store()
    pvae.fit(
        model,
        guide,
        x,
        num_epochs=3,
        batch_size=16,
        objective="dreg",
        num_particles=3,
        learning_rate=0.05,
        resume=out / "dreg.pt",
    )
    results["dreg_resumed"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()
    # A VAE with noise and dynamic binarization: ranks stay in sync; rank 0 writes files.
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8])
    binary = (data() > 0).float()
    pvae.fit(
        vae.model,
        vae.guide,
        binary,
        num_epochs=2,
        batch_size=10,
        seed=4,
        held_out=binary[:20],
        checkpoint_path=out / "checkpoint.pt",
        csv_path=out / "history.csv",
    )
    results["vae"] = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    bound = pvae.log_likelihood(vae.model, vae.guide, binary, 200, seed=5, data_chunk=20)
    results["iwae"] = bound.per_datapoint
    results["iwae_ess"] = bound.ess
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]))
    finally:
        pvae.infer.distributed.disconnect()
