"""Capture a function of tensors once (a training loss and its gradient, AIS's leapfrog step,
the model's part of the IWAE weights), at the level of tensor operations, and replay it
without Pyro's runtime.

Pyro runs Python at every sample site of every step (message handlers, plates, the
distributions' constructors): where the arithmetic is cheap, that Python is most of a step.
:func:`capture` runs the function once under ``make_fx`` with fake tensors
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
tracer; make_fx and inductor are described by Ansel et al. ("PyTorch 2", ASPLOS 2024).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence

import pyro
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = [
    "BACKENDS",
    "COMPILE_MODES",
    "CaptureFailed",
    "Captured",
    "ReplayBySignature",
    "capture",
    "capture_loss",
    "compile_mode",
    "rng_state",
    "set_rng_state",
]

BACKENDS = ("capture", "inductor")

# Tracing twice finds the state a first trace met; a third is a model whose state keeps
# changing identity from call to call (a tensor rebuilt each call is no state).
_MAX_TRACES = 3


class CaptureFailed(RuntimeError):
    """The loss cannot be captured soundly; the message says why in one line."""


@dataclasses.dataclass
class Captured:
    """A captured function: ``captured(*args)`` computes what the function computed, from the
    current values of the state it reads, without running its Python.

    Example::

        >>> w = torch.ones(3)
        >>> double = capture(lambda x: 2 * w * x, (torch.arange(3.0),))
        >>> w.fill_(5.0) is w and double(torch.arange(3.0))  # w is an input, not a constant
        tensor([ 0., 10., 20.])
    """

    graph: Callable
    state: list[torch.Tensor]  # tensors the function reads that exist outside it
    seconds: float  # what tracing and compiling cost
    num_operations: int

    def __call__(self, *args):
        # Gradients the function takes are operations of the graph: no autograd record.
        with torch.no_grad():
            return self.graph(self.state, *args)


def capture(
    fn: Callable, args: tuple, backend: str = "capture", replaced: Sequence[torch.Tensor] = ()
) -> Captured:
    """Trace ``fn(*args)`` (tensors, or lists of them, in and out) into one graph.

    Every tensor that exists before the call and that ``fn`` reads (parameters, buffers, a
    weight held as a tensor) is found and becomes an input; ``replaced`` are such tensors
    that ``args[0]`` (a list of as many) stands for instead, e.g. parameters whose gradient
    ``fn`` takes in ``args[0]``. ``backend`` is ``"capture"`` (the graph as traced, replayed
    op by op) or ``"inductor"`` (compiled; on a GPU, replayed as CUDA graphs). Raises
    :class:`CaptureFailed` with the reason where ``fn`` has Python that depends on data
    values, or anything else the tracer refuses.

    Example::

        >>> step = capture(lambda x: (x.exp() + 1).sum(), (torch.zeros(2),))
        >>> step(torch.ones(2))
        tensor(7.4366)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown capture backend {backend!r}: choose one of {BACKENDS}")
    started = time.perf_counter()
    state: list[torch.Tensor] = []
    for _ in range(_MAX_TRACES):
        found: dict[int, torch.Tensor] = {}
        graph = _trace(fn, args, list(replaced), state, found)
        if not found:
            break
        state += list(found.values())
    else:
        raise CaptureFailed("it reads tensors that are new at every call but not made inside it")
    num_operations = sum(node.op == "call_function" for node in graph.graph.nodes)
    if backend == "inductor":
        graph = _compiled(graph, [state, *args])
    return Captured(graph, state, time.perf_counter() - started, num_operations)


# Compiled graphs by what they compute: AIS and log_likelihood capture the same function
# once per chunk of data, with other tensors as inputs but the same graph.
_COMPILED: dict[tuple, Callable] = {}
_MAX_COMPILED = 32
_MAX_CONSTANT_SIZE = 1024


def capture_loss(
    loss_fn: Callable[..., torch.Tensor],
    trainable: Sequence[torch.Tensor],
    data: tuple[torch.Tensor, ...],
    backend: str = "capture",
) -> Callable[..., tuple[torch.Tensor, list[torch.Tensor]]]:
    """``loss_fn(*data)`` and its gradient in the leaf tensors ``trainable`` (parameters it
    reads), captured: the result, called with data, returns the loss and the gradients from
    the trainable tensors' current values.

    Example::

        >>> w = torch.ones(3, requires_grad=True)
        >>> step = capture_loss(lambda x: (w * x).sum(), [w], (torch.arange(3.0),))
        >>> step(torch.arange(3.0))[1][0]
        tensor([0., 1., 2.])
    """
    trainable = list(trainable)

    def loss_and_grads(params, *rows):
        leaves = [param.requires_grad_() for param in params]
        with torch.enable_grad():
            loss = loss_fn(*rows)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), [
            torch.zeros_like(leaf) if grad is None else grad
            for leaf, grad in zip(leaves, grads, strict=True)
        ]

    params = [tensor.detach() for tensor in trainable]
    captured = capture(loss_and_grads, (params, *data), backend, replaced=trainable)

    def replay(*rows):
        loss, grads = captured([tensor.detach() for tensor in trainable], *rows)
        return loss, list(grads)

    replay.captured = captured
    return replay


def _trace(fn, args, replaced, state, found) -> torch.fx.GraphModule:
    """One make_fx trace with fake tensors; real tensors it meets that are not inputs are
    put in ``found`` (the caller traces again with them as inputs)."""

    def body(state_values, *inputs):
        stand_ins = {id(t): v for t, v in zip(state, state_values, strict=True)}
        if replaced:
            stand_ins.update({id(t): v for t, v in zip(replaced, inputs[0], strict=True)})
        fakes = [t for t in pytree.tree_leaves(inputs) if isinstance(t, FakeTensor)]
        with _StandIns(stand_ins, found, fakes[0].fake_mode):
            return fn(*inputs)

    try:
        with pyro.validation_enabled(False):
            return make_fx(body, tracing_mode="fake")(state, *args)
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


def _compiled(graph: torch.fx.GraphModule, example: list) -> Callable:
    """The graph compiled by inductor, with PyTorch's own random number kernels so that a
    compiled step draws what an eager one draws; on a GPU, replayed as CUDA graphs."""
    from torch._inductor import config as inductor_config

    tensors = [t.detach() for t in pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    example = pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, example)
    key = _graph_key(graph, tensors)
    if key is not None and key in _COMPILED:
        return _COMPILED[key]
    try:
        with inductor_config.patch(fallback_random=True):
            if any(t.device.type == "cuda" for t in tensors):
                compiled = torch.compile(
                    graph, mode="reduce-overhead", fullgraph=True, dynamic=False
                )
            else:
                compiled = torch._inductor.compile(graph, example)
    except Exception as error:  # noqa: BLE001 - a compiler that refuses: the plain graph runs
        reason = f"inductor could not compile the captured step: {_reason(error)}"
        raise CaptureFailed(reason) from error
    if key is not None:
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    return compiled


def _graph_key(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> tuple | None:
    """What a compiled graph depends on: its code, its inputs' layout, its constants' values
    (None: a constant too large to compare, not cached)."""
    constants = []
    attributes = {**vars(graph), **dict(graph.named_buffers()), **dict(graph.named_parameters())}
    for name, value in sorted(attributes.items()):
        if isinstance(value, torch.Tensor):
            if value.numel() > _MAX_CONSTANT_SIZE:
                return None
            constants.append((name, value.dtype, value.device, tuple(value.flatten().tolist())))
    layout = tuple((t.shape, t.stride(), t.dtype, t.device, t.requires_grad) for t in inputs)
    return graph.code, layout, tuple(constants)


def _reason(error: Exception) -> str:
    """The first line of the tracer's message, which names the operation it refused."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def rng_state(device: torch.device):
    """PyTorch's generator state, the CPU's and ``device``'s: a captured step draws from them
    as the eager one does, so a check rewinds them to compare the two on the same draws."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(device: torch.device, state) -> None:
    """Rewind to a :func:`rng_state`."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


class ReplayBySignature:
    """``fn`` captured once per signature of its arguments (their shapes, dtypes and
    devices) and replayed at the other calls. A signature's first call runs ``fn`` eagerly
    and checks the replay against it, on the same random numbers; where capture fails or
    disagrees: one warning naming ``what``, and ``fn`` eagerly from then on.

    Example::

        >>> scale = torch.full((), 2.0)
        >>> double = ReplayBySignature(lambda x: scale * x, "capture", "doubling")
        >>> [double(torch.ones(2)) for _ in range(2)][1]
        tensor([2., 2.])
    """

    def __init__(self, fn: Callable, backend: str, what: str):
        self.fn, self.backend, self.what = fn, backend, what
        self.graphs: dict[tuple, Captured] = {}
        self.eager = False

    def __call__(self, *args):
        if self.eager:
            return self.fn(*args)
        tensors = [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
        key = (pytree.tree_structure(args), *((t.shape, t.dtype, t.device) for t in tensors))
        captured = self.graphs.get(key)
        if captured is not None:
            return captured(*args)
        device = tensors[0].device
        before = rng_state(device)
        result = self.fn(*args)
        try:
            captured = capture(self.fn, args, self.backend)
        except CaptureFailed as error:
            return self._eager_from_now(f"could not be captured: {error}", result)
        after = rng_state(device)
        set_rng_state(device, before)
        replayed = captured(*args)
        set_rng_state(device, after)
        pairs = zip(pytree.tree_leaves(replayed), pytree.tree_leaves(result), strict=True)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True) for a, b in pairs):
            return self._eager_from_now("differs from the eager one", result)
        self.graphs[key] = captured
        return result

    def _eager_from_now(self, reason: str, result):
        self.eager = True
        warnings.warn(f"compile: {self.what} {reason}; it runs eagerly", stacklevel=3)
        return result


COMPILE_MODES = ("auto", "off", "capture", "inductor")


def compile_mode(compile: bool | str) -> str:
    """A ``compile=`` argument as one of :data:`COMPILE_MODES` (True is ``"inductor"``, False
    ``"off"``); anything else is one clear ``ValueError``.

    Example::

        >>> compile_mode(True)
        'inductor'
    """
    if compile is True or compile is False:
        return "inductor" if compile else "off"
    if compile not in COMPILE_MODES:
        raise ValueError(
            f"compile must be one of {', '.join(COMPILE_MODES)} (or True/False), got {compile!r}"
        )
    return compile
