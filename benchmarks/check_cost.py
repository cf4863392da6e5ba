"""What checking every row of the data costs, against the IWAE evaluation it guards.

Before scoring, pvae.log_likelihood (and fit, estimate_elbo, ais, bdmc) checks every row:
NaN/Inf, the model's dtype, the model owner's check, and the support of each observed site
(pvae.infer.checks). Side by side in one process, on the same binarized digits and the
default MNIST VAE (pvae.build_vae(784)): the whole check as log_likelihood runs it (a site
that observes the data as given is checked on the tensor itself), the check with the model
run on every chunk of rows (what a model that transforms its data before observing it costs),
and one IWAE_K pass of pvae.log_likelihood; the ratios are the checks' share of the pass.

    python benchmarks/check_cost.py                      # K=1000 on 1000 digits
    python benchmarks/check_cost.py --tiny               # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pyro
import torch
from common import digits, machine, synchronize

import pvae
from pvae.infer import checks


def best_seconds(function, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def check_with_model_runs(vae, x, device) -> None:
    """The support check as for a model that transforms x: the model run on every chunk."""
    sites = checks.observed_sites(vae.model, vae.guide, (x[:16],))
    sites = [dataclasses.replace(site, source=None) for site in sites]
    checks.check_rows(vae.model, vae.guide, sites, (x,), "data", device)


def main(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = digits(args.num_data, device)
    vae = pvae.build_vae(784).to(device)
    vae.eval()
    pyro.clear_param_store()
    seconds = {
        "whole check, as log_likelihood runs it": best_seconds(
            lambda: checks.check_model_data(vae.model, vae.guide, (x,), device),
            args.repeats,
            device,
        ),
        "support check with the model run on every chunk": best_seconds(
            lambda: check_with_model_runs(vae, x, device), args.repeats, device
        ),
    }
    iwae = best_seconds(
        lambda: pvae.log_likelihood(vae.model, vae.guide, x, args.k, seed=0, progress=False),
        args.iwae_repeats,
        device,
    )
    print(
        f"Cost of checking every row ({machine()}; {args.num_data} binarized digits, "
        f"pvae.build_vae(784), best of {args.repeats} / {args.iwae_repeats}):\n"
    )
    print(f"| what | seconds | share of an IWAE_{args.k} pass |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.4f} | {100 * value / iwae:.3f}% |")
    print(f"| pvae.log_likelihood IWAE_{args.k} (check included) | {iwae:.2f} | 100% |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-data", type=int, default=1000)
    parser.add_argument("-k", type=int, default=1000, help="IWAE samples per datapoint")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each check")
    parser.add_argument("--iwae-repeats", type=int, default=1, help="timings of the IWAE pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a few digits, K=10: a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_data, args.k, args.repeats = 50, 10, 1
    return args


if __name__ == "__main__":
    main(parse_args())
