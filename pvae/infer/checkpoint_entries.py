"""What a reader needs of a checkpoint's entries, checked in one place.

Each reader (:func:`pvae.load_vae`, ``fit(resume=...)``, ``pvae train --resume``) states the
entries it needs and their types (:func:`check_entries`, :func:`check_training_state`), and
the saved states that torch's ``load_state_dict`` would take almost blindly are compared with
the live objects first (:func:`check_training_state_fits`), so that a damaged or foreign file
is one ``ValueError`` naming the file and the entry, never a ``KeyError`` deep inside.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def check_entries(
    state: Mapping[str, Any],
    source: str,
    required: Mapping[str, Any],
    optional: Mapping[str, Any] | None = None,
    hint: str = "",
) -> None:
    """Raise one ``ValueError`` naming ``source`` and the first entry of ``state`` that is
    missing (of ``required``) or not of its type (``required`` and ``optional`` map a key to
    a type such as ``int``, ``dict[str, torch.Tensor]``, ``list[int] | None``; ``Any``
    accepts anything). ``hint`` (what to do) ends the message.

    Example::

        >>> check_entries({"epoch": 3}, "c.pt", {"epoch": int})
        >>> check_entries({"params": [1.0]}, "c.pt", {"params": dict[str, torch.Tensor]})
        Traceback (most recent call last):
        ...
        ValueError: c.pt: its entry 'params' must be a mapping of strings to tensors, got list
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} must be a mapping, got {type(state).__name__}{hint}")
    for key, annotation in {**(optional or {}), **required}.items():
        if key not in state:
            if key in required:
                raise ValueError(f"{source} has no entry {key!r}{hint}")
            continue
        if not has_type(state[key], annotation):
            raise ValueError(
                f"{source}: its entry {key!r} must be {type_name(annotation)}, got "
                f"{shown(state[key])}{hint}"
            )


# What pvae.fit needs of a checkpoint to resume from it (it writes all of these).
_RESUME = ": resume from a checkpoint that pvae.fit wrote"
_TRAINING_ENTRIES = {
    "params": dict[str, torch.Tensor],
    "optimizer": dict[str, Any],
    "training": dict[str, Any],
    "rng": dict[str, Any] | list[dict[str, Any]],
}
_OPTIONAL_TRAINING_ENTRIES = {
    "lr_scheduler": dict[str, Any] | None,
    "early_stopping": dict[str, Any],
    "epoch": int,
    "streams": dict[str, dict[str, Any]],
    "auto_compile": dict[str, Any] | None,
}
_PROGRESS_ENTRIES = {
    "seed": int,
    "epoch": int,
    "num_steps": int,
    "order": torch.Tensor | None,
    "next_start": int,
    "loss_sum": torch.Tensor | None,
    "epoch_steps": int,
}


def check_training_state(state: Mapping[str, Any], source: str) -> None:
    """Raise one ``ValueError`` naming ``source`` unless ``state`` holds, of the right types,
    what :func:`pvae.fit` needs to resume from it.

    Example::

        >>> check_training_state({"format": "pvae-checkpoint", "model": {}}, "c.pt")
        Traceback (most recent call last):
        ...
        ValueError: c.pt has no entry 'params': resume from a checkpoint that pvae.fit wrote
    """
    check_entries(state, source, _TRAINING_ENTRIES, _OPTIONAL_TRAINING_ENTRIES, _RESUME)
    check_finite(state["params"], f"{source}'s params")
    check_entries(
        state["optimizer"],
        f"{source}'s optimizer",
        {"state": dict[Any, dict[str, Any]], "param_groups": list[dict[str, Any]]},
        hint=_RESUME,
    )
    training = state["training"]
    check_entries(training, f"{source}'s training", {"history": list[dict]}, _PROGRESS_ENTRIES)
    if state.get("auto_compile") is not None:
        where = f"{source}'s auto_compile"
        check_entries(state["auto_compile"], where, {}, {"compiled": bool | None}, _RESUME)


def check_training_state_fits(
    state: Mapping[str, Any],
    source: str,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    num_data: int,
) -> None:
    """Raise one ``ValueError`` naming ``source`` unless the saved states of a checked
    ``state`` (:func:`check_training_state`) fit the run's live ``optimizer``,
    ``lr_scheduler`` and ``num_data``: torch's own ``load_state_dict`` takes almost anything,
    and training would fail later.
    """
    saved_optimizer = state["optimizer"]
    live = optimizer.state_dict()["param_groups"]
    check_like(saved_optimizer["param_groups"], live, f"{source}'s optimizer param_groups")
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    _check_optimizer_state(saved_optimizer["state"], shapes, f"{source}'s optimizer state")
    if lr_scheduler is not None and state.get("lr_scheduler") is not None:
        live, where = lr_scheduler.state_dict(), f"{source}'s lr_scheduler"
        check_like(state["lr_scheduler"], live, where)
        # A scheduler takes its state as attributes: another key would replace a method.
        extra = [key for key in state["lr_scheduler"] if key not in live]
        if extra:
            raise ValueError(
                f"{where} has the entry {shown(extra[0])}, which this run's "
                f"{type(lr_scheduler).__name__} has not: resume with the lr_schedule it was "
                "trained with"
            )
    _check_position(state["training"], num_data, f"{source}'s training")


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise one ``ValueError`` naming ``where`` and the first tensor of ``tensors`` holding a
    NaN or infinity: pvae never saves one (training stops before), so the file is damaged.

    Example::

        >>> check_finite({"w": torch.tensor([1.0, float("nan")])}, "c.pt's model")
        Traceback (most recent call last):
        ...
        ValueError: c.pt's model: 'w' holds NaN or infinite values: the file is damaged
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{where}: {name!r} holds NaN or infinite values: the file is damaged")


def check_like(saved: Any, live: Any, where: str) -> None:
    """Raise one ``ValueError`` naming ``where`` unless ``saved`` has the structure of
    ``live`` (the ``state_dict()`` of the object it is for, made here): the same keys (flags,
    booleans or None, may be missing: their owners default them), lists of the same length,
    tensors of the same shape, numbers where numbers are.

    Example::

        >>> check_like({"lr": None, "betas": (0.9, 0.999)}, {"lr": 1e-3, "betas": (0.9, 0.999)},
        ...            "c.pt's optimizer")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: c.pt's optimizer: 'lr' must be a number, got None (NoneType): resume ...
    """
    problem = _unlike(saved, live)
    if problem:
        raise ValueError(f"{where}: {problem}{_RESUME}")


def _unlike(saved: Any, live: Any, at: str = "") -> str:
    """What makes ``saved`` unlike ``live`` (``""`` when nothing does)."""
    here = f"{at!r} " if at else ""
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            return f"{here}must be a mapping, got {shown(saved)}"
        for key, value in live.items():
            if key not in saved and not isinstance(value, (bool, type(None))):
                return f"{at + '.' if at else ''}{key!r} is missing"
            if key in saved:
                problem = _unlike(saved[key], value, f"{at}.{key}" if at else str(key))
                if problem:
                    return problem
        return ""
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            return f"{here}must be a list of {len(live)}, got {shown(saved)}"
        for index, (item, template) in enumerate(zip(saved, live, strict=True)):
            problem = _unlike(item, template, f"{at}[{index}]")
            if problem:
                return problem
        return ""
    if isinstance(live, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != live.shape:
            return f"{here}must be a tensor of shape {list(live.shape)}, got {shown(saved)}"
        return ""
    expected = {bool: bool, int: int, float: float, type(None): bool | int | float | None}.get(
        type(live), type(live)
    )
    if not has_type(saved, expected):
        return f"{here}must be {type_name(expected)}, got {shown(saved)}"
    return ""


def _check_optimizer_state(saved: Mapping, shapes: list[torch.Size], where: str) -> None:
    """Each parameter's optimizer state: the same entries for all (an optimizer keeps the
    same for every parameter), tensors of its shape or scalars (a step count)."""
    keys = {frozenset(values) for values in saved.values()}
    if len(keys) > 1:
        raise ValueError(f"{where} holds other entries for some parameters than others{_RESUME}")
    for index, values in saved.items():
        if not isinstance(index, int) or not 0 <= index < len(shapes):
            raise ValueError(
                f"{where} is for parameter {shown(index)}, which the model lacks{_RESUME}"
            )
        tensors = {f"{key} of parameter {index}": v for key, v in values.items()}
        check_finite({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, where)
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                if not value.is_floating_point():
                    raise ValueError(f"{where}: {key!r} must be a float tensor{_RESUME}")
            elif isinstance(value, torch.Tensor) and value.shape != shapes[index]:
                raise ValueError(
                    f"{where}: {key!r} of parameter {index} has shape {list(value.shape)}, "
                    f"the parameter {list(shapes[index])}{_RESUME}"
                )
            elif not isinstance(value, (torch.Tensor, int, float)) or isinstance(value, bool):
                raise ValueError(f"{where}: {key!r} must be a tensor or a number{_RESUME}")


def _check_position(training: Mapping[str, Any], num_data: int, where: str) -> None:
    """The position inside an interrupted epoch: a permutation of the data and a start."""
    order = training.get("order")
    if order is None:
        return
    if order.dtype != torch.int64 or order.shape != (num_data,):
        raise ValueError(
            f"{where}: 'order' must be a permutation of the {num_data} datapoints, got a "
            f"{order.dtype} tensor of shape {list(order.shape)}: resume with the same data"
        )
    start, loss_sum = training.get("next_start", 0), training.get("loss_sum")
    if not 0 <= start <= num_data:
        raise ValueError(f"{where}: 'next_start' {start} lies outside 0..{num_data}{_RESUME}")
    if not isinstance(loss_sum, torch.Tensor) or loss_sum.dim() or not loss_sum.is_floating_point():
        raise ValueError(f"{where}: 'loss_sum' must be a float tensor of one value{_RESUME}")


@contextlib.contextmanager
def restoring(source: str, entry: str) -> Iterator[None]:
    """While an entry of a checked checkpoint is handed to its owner (an optimizer's or a
    generator's own ``load_state_dict``), the owner's complaint about its contents (of any
    type) becomes one ``ValueError`` naming ``source`` and ``entry``.

    Example::

        >>> with restoring("c.pt", "optimizer"):  # doctest: +ELLIPSIS
        ...     {}["param_groups"]
        Traceback (most recent call last):
        ...
        ValueError: c.pt: its entry 'optimizer' cannot be restored (KeyError: 'param_groups'): ...
    """
    try:
        yield
    except (
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        RuntimeError,
        ValueError,
        OverflowError,
    ) as error:
        raise ValueError(
            f"{source}: its entry {entry!r} cannot be restored ({type(error).__name__}: "
            f"{first_line(error)}): resume from a checkpoint of this model that pvae.fit wrote"
        ) from error


def first_line(error: BaseException) -> str:
    """The first line of an error's message (empty for none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def has_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the type ``annotation`` describes, contents included (an
    ``int`` is a ``float`` too, a ``bool`` is not an ``int``).

    Example::

        >>> has_type([1, 2], list[int]), has_type({"a": 1.5}, dict[str, int])
        (True, False)
    """
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, option) for option in arguments)
    if origin is list:
        return isinstance(value, list) and all(has_type(v, arguments[0]) for v in value)
    if origin is dict:
        key_type, value_type = arguments
        return isinstance(value, dict) and all(
            has_type(k, key_type) and has_type(v, value_type) for k, v in value.items()
        )
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def type_name(annotation: Any) -> str:
    """``annotation`` in words, for error messages.

    Example::

        >>> type_name(list[int] | None)
        'a list of integers or null'
    """
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(option) for option in arguments)
    if origin is list:
        return f"a list of {_plural(arguments[0])}"
    if origin is dict:
        key_type, value_type = arguments
        if value_type is Any:
            return f"a mapping with {_plural(key_type)} as keys"
        return f"a mapping of {_plural(key_type)} to {_plural(value_type)}"
    if annotation is None or annotation is type(None):
        return "null"
    return _NAMES.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
    torch.Tensor: "a tensor",
    Any: "anything",
}


def _plural(annotation: Any) -> str:
    if typing.get_origin(annotation) is not None:
        return type_name(annotation)
    return {int: "integers", float: "numbers", str: "strings", torch.Tensor: "tensors"}.get(
        annotation, "values"
    )


def shown(value: Any) -> str:
    """The type of ``value`` (and the value itself when short), for one-line error messages.

    Example::

        >>> shown("mlp"), shown(torch.zeros(2, 2))
        ("'mlp' (str)", 'Tensor')
    """
    if isinstance(value, (int, float, str, type(None))) and len(repr(value)) <= 40:
        return f"{value!r} ({type(value).__name__})"
    return type(value).__name__
