"""Why a bound is what it is: active units, KL per unit, mutual information, inference gaps.

:func:`diagnose` takes any Pyro model/guide pair whose per-datapoint sites sit in
``pyro.plate("data", ...)``, as :func:`pvae.log_likelihood` does, and reports

- which latent units are active (Burda, Grosse & Salakhutdinov, ICLR 2016, §5.2);
- the KL term per unit and in all, split by Hoffman & Johnson's ELBO surgery ("ELBO
  surgery: yet another way to carve up the variational evidence lower bound", NIPS 2016
  workshop on approximate inference), E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),
  with the mutual information estimated as He et al. (ICLR 2019) do
  (:mod:`pvae.analysis.information`);
- the inference gap log p(x) − ELBO(q_φ) split into the approximation and amortization gaps
  of Cremer, Li & Duvenaud (ICML 2018) (:mod:`pvae.analysis.gaps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pvae.analysis.draws import score_chunk
from pvae.analysis.gaps import LocalGuide, check_family, optimize
from pvae.analysis.information import (
    encoding_means,
    latent_sites,
    mutual_information_terms,
    unit_names,
)
from pvae.infer.ais import ais
from pvae.infer.evaluation import check_count, evaluating
from pvae.infer.iwae import log_likelihood
from pvae.infer.log_weights import sample_sites
from pvae.infer.plates import enumerated, inspect_model, trace_pair
from pvae.infer.recording import record_sites

__all__ = ["Diagnosis", "active_units", "diagnose"]

LOG_PX_SOURCES = ("ais", "iwae")


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints and its standard error (std / sqrt(N), as log_likelihood's)."""
    n = values.numel()
    return values.mean().item(), values.std().item() / math.sqrt(n) if n > 1 else math.nan


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """What :func:`diagnose` found. Per-unit tensors are [units] (``unit_names``), per-datapoint
    ones [N], all float64 on the CPU; the gap fields are None when gaps were not computed.

    ``encoding_variance``: Cov_x(E_q[z_u|x]) per unit; ``kl_per_unit``: E_x KL(q(z_u|x) ‖
    p(z_u)) (NaN where q or p has no per-unit factors, e.g. a flow), its Monte Carlo error
    ``kl_per_unit_se`` (0 in closed form); ``kl_per_datapoint``: KL(q(z|x) ‖ p(z)) and its MC
    error ``kl_se``; ``mutual_information_terms``: He et al.'s terms, whose mean estimates
    I_q(x; z); ``elbo_per_datapoint`` (q_φ), ``optimal_elbo_per_datapoint`` (q*) and their MC
    errors, ``amortization_gap_se`` (common random numbers); ``log_px`` and how it was had;
    ``kl_closed_form``: whether every KL, per unit and in all, was. The gaps' per-datapoint
    errors are Monte Carlo only: the approximation gap's leaves out log p(x)'s own error (AIS,
    IWAE). :meth:`summary` gives means ± their standard error over the datapoints, as
    :func:`pvae.log_likelihood`'s summary does.

    Example::

        >>> result = diagnose(vae.model, vae.guide, test_x[:100], ais_steps=100)  # doctest: +SKIP
        >>> result.num_active, round(result.amortization_gap.mean().item(), 2)  # doctest: +SKIP
        (50, 7.94)
    """

    unit_names: tuple[str, ...]
    encoding_variance: torch.Tensor
    active_threshold: float
    kl_per_unit: torch.Tensor
    kl_per_unit_se: torch.Tensor
    kl_closed_form: bool
    kl_per_datapoint: torch.Tensor
    kl_se: torch.Tensor
    mutual_information_terms: torch.Tensor
    elbo_per_datapoint: torch.Tensor | None = None
    elbo_se: torch.Tensor | None = None
    optimal_elbo_per_datapoint: torch.Tensor | None = None
    optimal_elbo_se: torch.Tensor | None = None
    amortization_gap_se: torch.Tensor | None = None
    log_px: torch.Tensor | None = None
    log_px_source: str = ""
    num_samples: int = 0
    local_steps: int = 0

    @property
    def active(self) -> torch.Tensor:
        """Whether each unit is active: Cov_x(E_q[z_u|x]) > ``active_threshold``."""
        return self.encoding_variance > self.active_threshold

    @property
    def num_active(self) -> int:
        return int(self.active.sum())

    @property
    def kl(self) -> float:
        """E_x KL(q(z|x) ‖ p(z)) over the data given (nats)."""
        return self.kl_per_datapoint.mean().item()

    @property
    def mutual_information(self) -> float:
        """I_q(x; z) by He et al.'s estimator: at most log N, biased for small N (nats)."""
        return self.mutual_information_terms.mean().item()

    @property
    def mutual_information_se(self) -> float:
        return _mean_se(self.mutual_information_terms)[1]

    @property
    def marginal_kl(self) -> float:
        """KL(q(z) ‖ p(z)) of the aggregate posterior = E_x KL − I_q(x; z) (ELBO surgery)."""
        return self.kl - self.mutual_information

    @property
    def approximation_gap(self) -> torch.Tensor | None:
        """log p(x) − ELBO(q*) per datapoint: what the guide's family cannot reach."""
        if self.log_px is None or self.optimal_elbo_per_datapoint is None:
            return None
        return self.log_px - self.optimal_elbo_per_datapoint

    @property
    def amortization_gap(self) -> torch.Tensor | None:
        """ELBO(q*) − ELBO(q_φ) per datapoint: what the encoder leaves on the table."""
        if self.optimal_elbo_per_datapoint is None:
            return None
        return self.optimal_elbo_per_datapoint - self.elbo_per_datapoint

    @property
    def inference_gap(self) -> torch.Tensor | None:
        """log p(x) − ELBO(q_φ) per datapoint: the sum of the two gaps."""
        return None if self.log_px is None else self.log_px - self.elbo_per_datapoint

    def summary(self) -> str:
        """A text table: units, KL split, and the gaps (mean ± standard error over data)."""
        width = max(len("unit"), *(len(n) for n in self.unit_names))
        lines = [f"{'unit':<{width}}  {'Cov_x E[z|x]':>12}  {'KL':>8}  active"]
        for name, variance, kl, on in zip(
            self.unit_names, self.encoding_variance.tolist(), self.kl_per_unit.tolist(),
            self.active.tolist(), strict=True,
        ):  # fmt: skip
            lines.append(f"{name:<{width}}  {variance:12.4f}  {kl:8.3f}  {'yes' if on else 'no'}")
        lines.append(
            f"active units: {self.num_active} of {len(self.unit_names)} "
            f"(threshold {self.active_threshold:g})"
        )
        mi, mi_se = self.mutual_information, self.mutual_information_se
        lines.append(
            f"E_x KL(q(z|x)‖p(z)) {self.kl:.3f} = I_q(x;z) {mi:.3f} ± {mi_se:.3f} "
            f"+ KL(q(z)‖p(z)) {self.marginal_kl:.3f}  "
            f"(I_q ≤ log N = {math.log(self.kl_per_datapoint.numel()):.2f})"
        )
        if mi > math.log(self.kl_per_datapoint.numel()) - 0.05:
            lines.append(
                "  I_q(x;z) sits at the estimator's ceiling log N: the codes tell these "
                "datapoints apart; diagnose more of them for its value (and the marginal KL's)"
            )
        rows = (
            ("ELBO(q_φ)", self.elbo_per_datapoint),
            ("ELBO(q*)", self.optimal_elbo_per_datapoint),
            (f"log p(x) [{self.log_px_source}]", self.log_px),
            ("inference gap", self.inference_gap),
            ("approximation gap", self.approximation_gap),
            ("amortization gap", self.amortization_gap),
        )
        for label, values in rows:
            if values is not None:
                mean, se = _mean_se(values)
                lines.append(f"{label}: {mean:.3f} ± {se:.3f} nats")
        return "\n".join(lines)


def diagnose(
    model,
    guide,
    data,
    *,
    active_threshold: float = 0.01,
    num_samples: int = 1000,
    gaps: bool = True,
    log_px: torch.Tensor | str = "ais",
    local_steps: int = 1000,
    local_lr: float = 0.01,
    local_particles: int = 8,
    ais_steps: int = 1000,
    ais_chains: int = 16,
    iwae_samples: int = 5000,
    data_chunk: int = 1000,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> Diagnosis:
    """Active units, KL per unit, mutual information and the inference gaps of a model/guide.

    ``data`` as for :func:`pvae.log_likelihood` (sites in ``pyro.plate("data", ...)``; a
    model without it is refused). E_q[z|x] is the guide distribution's ``.mean`` where it has
    one, else the mean of ``num_samples`` draws; unit u is active when its variance over the
    data exceeds ``active_threshold`` (Burda et al., 2016). KLs are in closed form where torch
    has them, per unit for factorized q and p, else Monte Carlo over ``num_samples`` draws.
    I_q(x; z) is He et al.'s (2019) estimator over the data given (q(z) their aggregate
    posterior): at most log N, biased for small N; it costs N² guide densities.

    With ``gaps``, ELBO(q_φ) and ELBO(q*) per datapoint from ``num_samples`` draws each, with
    common random numbers; q* is fitted per datapoint, from the encoder's output, by
    ``local_steps`` Adam steps (rate ``local_lr``, ``local_particles`` draws) in the guide's
    family (diagonal or full normal; others are refused: pass ``gaps=False``). log p(x) is
    ``log_px``: a tensor [N] of known values, ``"ais"`` (:func:`pvae.ais`, ``ais_steps``,
    ``ais_chains``) or ``"iwae"`` (IWAE with ``iwae_samples``: a lower bound, so the
    approximation gap is one too). ``data_chunk`` rows are optimized at once. ``seed``,
    ``device`` and ``progress`` as for every estimator (:mod:`pvae.infer.evaluation`); one
    process.

    Example::

        >>> result = diagnose(vae.model, vae.guide, test_x[:100], ais_steps=100)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        unit        Cov_x E[z|x]        KL  active
        ...
        active units: 50 of 50 (threshold 0.01)
        ...
        ELBO(q_φ): -102.765 ± 2.956 nats
        ELBO(q*): -94.821 ± 2.638 nats
        log p(x) [AIS 100 steps, 16 chains]: -91.613 ± 2.584 nats
        inference gap: 11.152 ± 0.498 nats
        approximation gap: 3.208 ± 0.090 nats
        amortization gap: 7.944 ± 0.435 nats

    (the default example's checkpoint, the first 100 held-out digits: docs/guide/diagnostics.md)
    """
    _check_arguments(
        num_samples, local_steps, local_particles, data_chunk, log_px, gaps, active_threshold
    )
    frontend = {"seed": seed, "device": device, "progress": progress, "distributed": False}
    with evaluating(model, guide, data, **frontend) as evaluation:
        first = evaluation.rows(0, 2)
        traces = trace_pair(model, guide, *first)
        nesting = inspect_model(model, guide, traces=traces)
        _check_latents(traces)
        sites = latent_sites(record_sites(guide, first))
        if gaps:
            for name, site in sites:
                check_family(name, site["fn"])
            if isinstance(log_px, torch.Tensor):
                log_px = _given_log_px(log_px, evaluation.num_data)
        settings = (num_samples, local_steps, local_lr, local_particles, gaps)
        found = _diagnose_rows(model, guide, evaluation, nesting, settings, data_chunk)
        names = unit_names(sites, nesting, first[0].shape[0])
    fields = {"log_px": None, "log_px_source": ""}
    if gaps and isinstance(log_px, torch.Tensor):
        fields = {"log_px": log_px, "log_px_source": "given"}
    elif gaps:
        fields = _log_px(model, guide, evaluation, log_px, ais_steps, ais_chains, iwae_samples)
    return Diagnosis(
        unit_names=tuple(names), active_threshold=float(active_threshold),
        num_samples=num_samples, local_steps=local_steps if gaps else 0, **found, **fields,
    )  # fmt: skip


def active_units(
    model, guide, data, *, threshold: float = 0.01, num_samples: int = 100, seed: int = 0
) -> torch.Tensor:
    """Which latent units are active, Cov_x(E_q(z|x)[z_u]) > ``threshold`` (Burda et al.,
    2016, §5.2), as a boolean tensor [units]: the cheap part of :func:`diagnose`, one guide
    pass over ``data`` (``num_samples`` draws a datapoint where q has no ``.mean``), for a
    check after every epoch. The training's random numbers are left alone.

    Example::

        >>> active_units(vae.model, vae.guide, test_x[:1000]).sum()  # doctest: +SKIP
        tensor(17)
    """
    with evaluating(model, guide, data, seed=seed, progress=False, distributed=False) as run:
        rows = run.rows(0, run.num_data)
        nesting = inspect_model(model, guide, traces=trace_pair(model, guide, *run.rows(0, 2)))
        means = encoding_means(guide, rows, nesting, num_samples, (run.seed, 1))
    return (means.var(0) > threshold).cpu()


def _check_arguments(
    num_samples, local_steps, local_particles, data_chunk, log_px, gaps, active_threshold
):
    counts = {"num_samples": num_samples, "local_steps": local_steps,
              "local_particles": local_particles, "data_chunk": data_chunk}  # fmt: skip
    for name, value in counts.items():
        check_count(name, value)
    if isinstance(active_threshold, bool) or not isinstance(active_threshold, (int, float)):
        raise ValueError(f"active_threshold must be a number, got {active_threshold!r}")
    if gaps and not isinstance(log_px, torch.Tensor) and log_px not in LOG_PX_SOURCES:
        raise ValueError(
            f"log_px must be a tensor of per-datapoint log p(x) or one of {LOG_PX_SOURCES}, "
            f"got {log_px!r}"
        )


def _check_latents(traces) -> None:
    """One line for what the KL split cannot read: model-enumerated latents, guide latents
    the model lacks."""
    guide_trace, model_trace = traces
    for name, site in sample_sites(model_trace):
        if enumerated(site):
            raise ValueError(
                f"the model enumerates {name!r}: diagnose splits the KL of latents the guide "
                "draws; use pvae.log_likelihood for models with enumerated latents"
            )
    for name, site in sample_sites(guide_trace):
        if not site["is_observed"] and name not in model_trace.nodes:
            raise ValueError(f"guide latent {name!r} has no site in the model: sample it there")


def _diagnose_rows(model, guide, evaluation, nesting, settings, data_chunk) -> dict:
    """Every per-datapoint and per-unit field of a :class:`Diagnosis` but log p(x)."""
    num_samples, steps, lr, particles, gaps = settings
    seed, num_data = evaluation.seed, evaluation.num_data
    all_rows = evaluation.rows(0, num_data)
    means = encoding_means(guide, all_rows, nesting, num_samples, (seed, 1))
    mi_terms = mutual_information_terms(guide, all_rows, nesting, (seed, 2))
    parts = []
    with evaluation.bar(num_data, unit="datapoint") as bar:
        for index, start in enumerate(range(0, num_data, data_chunk)):
            batch = evaluation.rows(start, min(start + data_chunk, num_data))
            local = None
            if gaps:
                local = LocalGuide(guide, batch)
                optimize(model, local, batch, nesting, steps, lr, particles, (seed, 3, index))
            parts.append(score_chunk(model, guide, local, batch, nesting, num_samples,
                                      (seed, 4, index)))  # fmt: skip
            bar.update(batch[0].shape[0])
    found = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "unit"}
    unit_sum, unit_sq, closed = (sum(p["unit"][i] for p in parts) for i in range(3))
    found["kl_per_unit"] = unit_sum / num_data
    found["kl_per_unit_se"] = unit_sq.clamp(min=0).sqrt() / num_data
    found["kl_closed_form"] = bool(closed == len(parts))
    found["encoding_variance"] = means.var(0, unbiased=False).cpu()  # 0 for one datapoint
    found["mutual_information_terms"] = mi_terms.cpu()
    return found


def _given_log_px(log_px: torch.Tensor, num_data: int) -> torch.Tensor:
    """The caller's log p(x), one per datapoint, as CPU float64: checked before any work."""
    if log_px.shape != (num_data,):
        raise ValueError(
            f"log_px has shape {tuple(log_px.shape)}: pass one log p(x) per datapoint, "
            f"shape ({num_data},)"
        )
    return log_px.detach().double().cpu()


def _log_px(model, guide, evaluation, log_px, ais_steps, ais_chains, iwae_samples) -> dict:
    """log p(x) [N] (CPU float64) by AIS or IWAE on the checked data, and how it was had."""
    data, seed, device = evaluation.tensors, evaluation.seed, evaluation.device
    if log_px == "ais":
        result = ais(model, guide, data, num_steps=ais_steps, num_chains=ais_chains, seed=seed,
                     device=device, distributed=False, progress=evaluation.progress)  # fmt: skip
        source = f"AIS {ais_steps} steps, {ais_chains} chains"
        return {"log_px": result.per_datapoint, "log_px_source": source}
    result = log_likelihood(model, guide, data, num_samples=iwae_samples, seed=seed,
                            device=device, distributed=False, progress=False)  # fmt: skip
    return {"log_px": result.per_datapoint, "log_px_source": f"IWAE_{iwae_samples}, a bound"}
