"""Building a part by name: one registry (a dict) per kind, one clear error per mistake.

Priors, likelihoods, guides and networks each keep a ``dict`` from name to class; a new part is
one class and one line there. :func:`build` turns a name and a dictionary of options (as they
come from a YAML file) into an instance, and says which names or options exist when one does
not.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from pvae.errors import ModelError

__all__ = ["ModelError", "build", "options_of"]


def options_of(cls: type) -> list[str]:
    """The keyword options a registered class takes (its ``__init__`` parameters, less ``self``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.name != "self" and p.kind not in variadic]


def build(
    registry: Mapping[str, type],
    kind: str,
    name: str,
    required: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
):
    """``registry[name](**required, **options)``, with errors that name the valid choices.

    ``required`` are the arguments the caller supplies (sizes, an encoder), ``options`` the
    user's; an option that the class does not take, or that the caller supplies already, is
    a ``ValueError`` that lists the options there are.

    Example::

        >>> from pvae.models.priors import PRIORS
        >>> build(PRIORS, "prior", "mog", {"z_dim": 2}, {"num_components": 3}).num_components
        3
    """
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: choose one of {', '.join(registry)}")
    cls = registry[name]
    options = dict(options or {})
    accepted = [option for option in options_of(cls) if option not in required]
    unknown = [option for option in options if option not in accepted]
    if unknown:
        offered = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"{kind} {name!r} has no option {unknown[0]!r} (its options: {offered})")
    try:
        return cls(**required, **options)
    except TypeError as error:  # e.g. a string where a number belongs
        raise ValueError(f"{kind} {name!r}: bad options {options}: {error}") from error
