"""fit's training step, captured once per input signature and replayed, checked against the
eager step (``fit(..., compile=...)``).

Each stream's objective is captured by :func:`pvae.infer.capture.capture` for each signature
it meets (the rows' shapes, dtypes and device, and the size the data plate is scaled to: the
short last minibatch is a second signature). A replay computes what the eager step computes,
from the same random numbers, as long as the Python state the capture froze (a float, a
counter) is unchanged. That is checked by running the eager step too, on the same draws (the
random generators are rewound), and comparing losses and gradients:

* at a signature's first two replays (the second catches state that changes every step),
* at each epoch's first step (state that changes by the epoch: a warm-up not held as a tensor).

A disagreement, or a capture that fails, gives one warning naming the reason, and the eager
step from then on; a check that agrees keeps the replay's numbers, so that a run and its
resumed copy make the same steps whether or not a check fell on them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

from pvae.infer.capture import CaptureFailed, capture_loss, rng_state, set_rng_state

__all__ = ["AutoChoice", "AutoDecision", "CapturedSteps", "choose_backend"]

# Agreement of a replay with the eager step: the graph as traced runs the same kernels
# (equal to rounding); inductor fuses and reorders sums (float32 rounding, ~1e-6 relative).
_TOLERANCE = {"capture": 1e-5, "inductor": 1e-4}


class CapturedSteps:
    """The losses and gradients of fit's objectives (one per stream), replayed.

    ``losses`` are the eager losses of the streams, ``loss(index, rows, plate_size)``;
    ``params`` the trained tensors, whose ``.grad`` a step sets.

    Example::

        >>> steps = CapturedSteps(run_losses, params, backend="inductor")  # doctest: +SKIP
        >>> loss = steps.step(minibatches, epoch_start=True)  # doctest: +SKIP
    """

    def __init__(self, loss: Callable, params: Sequence[torch.Tensor], backend: str, auto=None):
        # A tensor registered under two names is one input with one gradient.
        self.params = list({id(param): param for param in params}.values())
        self.loss, self.backend = loss, backend
        self.auto: AutoDecision | None = auto  # while it decides, steps run eagerly
        self.captured: dict[tuple, Callable] = {}
        self.replays: dict[tuple, int] = {}
        self.stopped: str | None = None  # why the eager step runs from now on
        self.seconds = 0.0  # spent capturing and compiling

    @property
    def active(self) -> bool:
        return self.stopped is None and self.auto is None

    def observe_eager_step(self, seconds: float) -> None:
        """An eager step's time, while ``"auto"`` decides."""
        if self.auto is None or self.stopped is not None:
            return
        decision = self.auto.observe(seconds)
        if decision is True:
            self.auto = None
        elif decision is False:
            self.auto = None
            self.stopped = "auto: the run is too short to repay compiling"

    def report(self) -> str:
        """One line on what the captured step did, for :class:`pvae.FitResult`."""
        if self.stopped is not None:
            return f"eager ({self.stopped})"
        if self.auto is not None:
            return "eager (auto: the run ended before its steps were timed)"
        return (
            f"{self.backend}: {len(self.captured)} signatures captured in {self.seconds:.1f} s, "
            f"{sum(self.replays.values())} steps replayed"
        )

    def step(self, minibatches: Sequence[tuple[int, tuple, float]], epoch_start: bool):
        """The summed loss of these (stream index, rows, plate size) minibatches, with the
        gradients set on ``params``; None where the eager step must run instead."""
        total, grads = None, None
        for index, rows, plate_size in minibatches:
            key = (index, plate_size, *((r.shape, r.dtype, r.device) for r in rows))
            result = self._replay(key, index, rows, plate_size, epoch_start)
            if result is None:
                return None
            loss, stream_grads = result
            total = loss if total is None else total + loss
            grads = (
                stream_grads
                if grads is None
                else [a + b for a, b in zip(grads, stream_grads, strict=True)]
            )
        if total is None:
            return None
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        return total

    def _replay(self, key, index, rows, plate_size, epoch_start):
        captured = self.captured.get(key)
        if captured is None:
            try:
                captured = capture_loss(
                    lambda *r: self.loss(index, r, plate_size), self.params, rows, self.backend
                )
            except CaptureFailed as error:
                if self.backend != "inductor" or "inductor could not" not in str(error):
                    return self._stop(f"the step could not be captured: {error}")
                # No C++ compiler, say: the traced graph still runs without Pyro's runtime.
                warnings.warn(f"compile: {error}; the traced step is replayed", stacklevel=6)
                self.backend = "capture"
                return self._replay(key, index, rows, plate_size, epoch_start)
            self.captured[key], self.replays[key] = captured, 0
            self.seconds += captured.captured.seconds
        count = self.replays[key]
        self.replays[key] = count + 1
        if count < 2 or epoch_start:
            # The first two replays check the gradients too; later checks the loss, which a
            # changed float or schedule changes, at a third of a step's cost.
            return self._checked(captured, index, rows, plate_size, gradients=count < 2)
        return captured(*rows)

    def _checked(self, captured: Callable, index, rows, plate_size, gradients: bool):
        """The replay, compared with the eager step on the same random numbers."""
        device = rows[0].device
        rng = rng_state(device)
        # The eager step updates buffers in place (batch-norm statistics) as the replay will.
        state = [tensor.clone() for tensor in captured.captured.state]
        with torch.enable_grad():  # as in training: a model may read it (a KL weight does)
            eager_loss = self.loss(index, rows, plate_size)
        eager_grads = self._grads(eager_loss) if gradients else None
        set_rng_state(device, rng)
        with torch.no_grad():
            for tensor, before in zip(captured.captured.state, state, strict=True):
                tensor.copy_(before)
        loss, grads = captured(*rows)
        difference = _difference(loss, grads, eager_loss.detach(), eager_grads)
        if difference <= _TOLERANCE[self.backend]:
            return loss, grads
        self._stop(
            f"the captured step's loss or gradients differ from the eager step's by "
            f"{difference:.2g} (relative): Python state that the capture froze has "
            "changed (a float or counter the model reads, a schedule not held as a tensor)"
        )
        # This step is the eager one: its draws and buffer updates are the replay's.
        return eager_loss.detach(), eager_grads or self._grads(eager_loss)

    def _grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        ]

    def _stop(self, reason: str):
        self.stopped = reason
        warnings.warn(f"compile: {reason}; training goes on with the eager step", stacklevel=6)
        return None


def _difference(loss, grads, eager_loss, eager_grads) -> float:
    """The largest relative difference of the loss and of each gradient (NaN: infinite);
    ``eager_grads`` None compares the loss alone."""
    worst = _relative(loss, eager_loss)
    if eager_grads is None:
        return worst
    for grad, eager in zip(grads, eager_grads, strict=True):
        worst = max(worst, _relative(grad, eager))
    return worst


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.detach().abs().max().item()
    difference = (value.detach() - reference.detach()).abs().max().item()
    if math.isnan(difference):
        both_nan = bool(torch.equal(value.isnan(), reference.isnan()))
        return 0.0 if both_nan else math.inf
    return difference / max(scale, 1e-30)


# "auto" times a few eager steps and compiles by inductor where the rest of the run, eager,
# would take at least AUTO_SECONDS. On the 2-core CPU (benchmarks/RESULTS.md, "Captured
# step") inductor costs 3-12 s the first time a graph is met (1-3 s from its cache) and
# cuts a step by 5-55%: a run of two minutes or more gains, and one of seconds does not.
AUTO_SECONDS = 120.0
_TIMED_STEPS = 5  # after one untimed step (its first call warms caches up)


class AutoDecision:
    """fit's ``compile="auto"``: the eager steps' time decides whether to compile.

    ``observe(seconds)`` takes the time of each eager step; after the first untimed one and
    ``_TIMED_STEPS`` timed, it says yes or no (the same on every rank: rank 0's decision).

    Example::

        >>> decision = AutoDecision(planned_steps=10_000, agree=lambda flag: flag)
        >>> [decision.observe(0.05) for _ in range(6)][-1]
        True
    """

    def __init__(self, planned_steps: int, agree: Callable[[bool], bool]):
        self.remaining, self.agree = planned_steps, agree
        self.times: list[float] = []

    def observe(self, seconds: float) -> bool | None:
        self.remaining -= 1
        self.times.append(seconds)
        if len(self.times) <= _TIMED_STEPS:
            return None
        per_step = sorted(self.times[1:])[_TIMED_STEPS // 2]  # the median: robust to a hiccup
        return self.agree(self.remaining * per_step >= AUTO_SECONDS)


class AutoChoice:
    """What ``compile="auto"`` decided (``compiled``: True, False, or None before the eager
    steps were timed), kept in fit's checkpoint (its ``auto_compile`` section): a resumed
    run takes the path the run took, without timing eager steps again, and stays bit for
    bit the run it continues.

    Example::

        >>> choice = AutoChoice()
        >>> choice.record(True), choice.state_dict()
        (True, {'compiled': True})
    """

    def __init__(self):
        self.compiled: bool | None = None

    def record(self, compiled: bool) -> bool:
        self.compiled = compiled
        return compiled

    def state_dict(self) -> dict[str, bool | None]:
        return {"compiled": self.compiled}

    def load_state_dict(self, saved) -> None:
        self.compiled = saved.get("compiled")  # checked by the checkpoint's reader


def choose_backend(mode: str, objectives: Sequence) -> str | None:
    """The capture backend of fit's ``compile`` setting (``"auto"``: inductor, decided by
    :class:`AutoDecision`), or None for the eager step.

    ``"auto"`` compiles only pvae's own estimators: Pyro's check the loss for NaN on the
    host, which capture refuses.

    Example::

        >>> choose_backend("auto", []), choose_backend("off", [])
        ('inductor', None)
    """
    if mode == "off":
        return None
    if mode == "auto" and any(type(o.elbo).__module__.startswith("pyro.") for o in objectives):
        return None
    return "inductor" if mode == "auto" else mode
