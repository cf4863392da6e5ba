"""Capture a differentiable loss once, at the level of tensor operations, and replay it
without Pyro's runtime.

Pyro runs Python at every sample site of every step (message handlers, plates, the
distributions' constructors): where the arithmetic is cheap, that Python is most of a step.
:func:`capture` runs a loss function once under ``make_fx`` with fake tensors
(``torch.fx.experimental.proxy_tensor``; no arithmetic is done) and records what reaches
PyTorch's dispatcher, the backward pass of ``torch.autograd.grad`` included: a graph of
tensor operations whose inputs are the state tensors (the parameters, module buffers, a KL
weight held as a tensor) and the step's data, whose outputs are the loss and the gradients,
and whose random draws happen inside it at every replay, from PyTorch's generator, as
eagerly. The graph is then replayed as it is (``"capture"``), compiled by inductor
(``"inductor"``, fused C++ loops on the CPU), or compiled and replayed as CUDA graphs on a GPU.

Soundness: fake tensors have no values, so Python that branches on data (``bool()``,
``.item()``, a validation check) makes capture fail with :class:`CaptureFailed` instead of
being frozen. Tensors that exist before the call (the state) are found while tracing and
become inputs, so their current values, and their in-place updates (batch-norm statistics),
are those of the replay. What capture cannot see is Python state that is not a tensor: a
float that changes between calls is frozen into the graph. :mod:`pvae.infer.captured_steps`
checks the replay against the eager loss to catch it.

The approach is Pyro's ``JitTrace_ELBO`` (a trace of the loss, 2018) on PyTorch's present
tracer; see also Paszke et al. and Ansel et al. ("PyTorch 2", ASPLOS 2024) for make_fx and
inductor.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import pyro
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode

__all__ = ["BACKENDS", "CaptureFailed", "Captured", "capture"]

BACKENDS = ("capture", "inductor")

# Tracing twice finds the state a first trace met; a third is a model whose state keeps
# changing identity from call to call (a tensor rebuilt each call is no state).
_MAX_TRACES = 3


class CaptureFailed(RuntimeError):
    """The loss cannot be captured soundly; the message says why in one line."""


@dataclasses.dataclass
class Captured:
    """A captured loss: ``captured(*data)`` returns the loss and the gradients of the
    trainable tensors, computed by the graph from the state's current values.

    Example::

        >>> w = torch.ones(3, requires_grad=True)
        >>> step = capture(lambda x: (w * x).sum(), [w], (torch.arange(3.0),))
        >>> step(torch.arange(3.0))[1][0]
        tensor([0., 1., 2.])
    """

    graph: Callable
    trainable: list[torch.Tensor]
    state: list[torch.Tensor]  # other tensors the loss reads (buffers, schedules)
    seconds: float  # what tracing and compiling cost
    num_operations: int

    def __call__(self, *data: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs = [tensor.detach() for tensor in self.trainable]
        loss, grads = self.graph(inputs, self.state, list(data))
        return loss, list(grads)


def capture(
    loss_fn: Callable[..., torch.Tensor],
    trainable: Sequence[torch.Tensor],
    data: tuple[torch.Tensor, ...],
    backend: str = "capture",
) -> Captured:
    """Trace ``loss_fn(*data)`` and its gradient in ``trainable`` into one graph.

    ``trainable`` are leaf tensors the loss reads (``pyro.param``'s unconstrained values,
    modules' parameters); every other tensor that exists before the call and that the loss
    reads is found and becomes an input too. ``backend`` is ``"capture"`` (the graph as
    traced, replayed op by op) or ``"inductor"`` (compiled; on a GPU, replayed as CUDA
    graphs). Raises :class:`CaptureFailed` with the reason where the loss has Python that
    depends on data values, or anything else the tracer refuses.

    Example::

        >>> w = torch.ones(2, requires_grad=True)
        >>> step = capture(lambda x: (w * x).sum() ** 2, [w], (torch.ones(2),))
        >>> step(torch.ones(2))[0]
        tensor(4., grad_fn=<PowBackward0>)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown capture backend {backend!r}: choose one of {BACKENDS}")
    started = time.perf_counter()
    trainable = list(trainable)
    state: list[torch.Tensor] = []
    for _ in range(_MAX_TRACES):
        found: dict[int, torch.Tensor] = {}
        graph = _trace(loss_fn, trainable, state, data, found)
        if not found:
            break
        state += list(found.values())
    else:
        raise CaptureFailed(
            "the loss reads tensors that are new at every call but were not made inside it"
        )
    num_operations = sum(node.op == "call_function" for node in graph.graph.nodes)
    if backend == "inductor":
        graph = _compiled(graph, trainable, state, data)
    return Captured(graph, trainable, state, time.perf_counter() - started, num_operations)


def _trace(loss_fn, trainable, state, data, found) -> torch.fx.GraphModule:
    """One make_fx trace with fake tensors; real tensors it meets that are not inputs are
    put in ``found`` (the caller traces again with them as inputs)."""

    def loss_and_grads(params, state_values, rows):
        leaves = [param.requires_grad_() for param in params]
        stand_ins = {
            id(t): v for t, v in zip(trainable + state, leaves + state_values, strict=True)
        }
        fake_mode = next(t.fake_mode for t in [*rows, *leaves] if isinstance(t, FakeTensor))
        with _StandIns(stand_ins, found, fake_mode), torch.enable_grad():
            loss = loss_fn(*rows)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), [
            torch.zeros_like(leaf) if grad is None else grad
            for leaf, grad in zip(leaves, grads, strict=True)
        ]

    params = [tensor.detach() for tensor in trainable]
    try:
        with pyro.validation_enabled(False):
            return make_fx(loss_and_grads, tracing_mode="fake")(params, state, list(data))
    except CaptureFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any refusal of the tracer means: run eagerly
        raise CaptureFailed(_reason(error)) from error


class _StandIns(TorchFunctionMode):
    """Swaps each state tensor for its traced stand-in as torch functions are called, and
    notes the real tensors that are not stand-ins (state the trace had not been given)."""

    def __init__(self, stand_ins: dict, found: dict[int, torch.Tensor], fake_mode):
        super().__init__()
        self.stand_ins, self.found, self.fake_mode = stand_ins, found, fake_mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args = tuple(self._swap(arg) for arg in args)
        kwargs = {key: self._swap(value) for key, value in (kwargs or {}).items()}
        return func(*args, **kwargs)

    def _swap(self, value):
        if isinstance(value, torch.Tensor):
            stand_in = self.stand_ins.get(id(value))
            if stand_in is not None:
                return stand_in
            if not _is_traced(value):
                # Noted, and replaced by a fake copy: no operation of this trace runs on
                # (or updates) the real tensor.
                self.found.setdefault(id(value), value)
                stand_in = self.stand_ins[id(value)] = self.fake_mode.from_tensor(value)
                return stand_in
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self._swap(item) for item in value)
        return value


def _is_traced(tensor: torch.Tensor) -> bool:
    # Tensors of the trace itself are fake; a real one is state from outside the call.
    return isinstance(tensor, FakeTensor) or type(tensor).__name__ == "FunctionalTensor"


def _compiled(graph: torch.fx.GraphModule, trainable, state, data) -> Callable:
    """The graph compiled by inductor, with PyTorch's own random number kernels so that a
    compiled step draws what an eager one draws; on a GPU, replayed as CUDA graphs."""
    from torch._inductor import config as inductor_config

    device = data[0].device if data else trainable[0].device
    example = ([t.detach() for t in trainable], list(state), list(data))
    try:
        with inductor_config.patch(fallback_random=True):
            if device.type == "cuda":
                return torch.compile(graph, mode="reduce-overhead", fullgraph=True, dynamic=False)
            return torch._inductor.compile(graph, list(example))
    except Exception as error:  # noqa: BLE001 - a compiler that refuses: the plain graph runs
        reason = f"inductor could not compile the captured step: {_reason(error)}"
        raise CaptureFailed(reason) from error


def _reason(error: Exception) -> str:
    """The first line of the tracer's message, which names the operation it refused."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
