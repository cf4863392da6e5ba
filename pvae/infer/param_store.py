"""Pyro's global parameter store, kept in step with the networks a model actually runs.

``pyro.module("decoder", net)`` registers ``net``'s parameters under ``"decoder$$$..."``
unless those names are already taken, in which case the store keeps the old tensors while
``net`` goes on computing with its own (Pyro 1.9, ``update_module_params=False``): an
optimizer given the store's parameters then trains tensors nobody uses, and a second model
in a notebook silently does not learn (pyro-ppl/pyro#2912, #3209). pvae's rule: *a module's
own parameters are the ones trained*. :class:`pvae.VAE` registers its networks with
:func:`register_module`, and :func:`pvae.fit` points stale entries of hand-written models to
the modules' own tensors, with a warning.
"""

from __future__ import annotations

import pyro
import torch
from pyro.params import param_with_module_name


def register_module(name: str, module: torch.nn.Module) -> torch.nn.Module:
    """``pyro.module(name, module)``, first dropping store entries an earlier module left.

    Example::

        >>> register_module("decoder", torch.nn.Linear(2, 3))
        Linear(in_features=2, out_features=3, bias=True)
    """
    store = pyro.get_param_store()
    stale = False
    for param_name, value in module.named_parameters():
        full_name = param_with_module_name(name, param_name)
        if not stale and (full_name not in store or store[full_name] is value):
            # A module's parameters are registered together: the first tells for all.
            break
        stale = True
        if full_name in store:
            del store[full_name]
    return pyro.module(name, module)


def stale_module_parameters(param_trace) -> list[str]:
    """Names registered by ``pyro.module`` whose store entry is not the module's tensor.

    ``param_trace`` is a ``poutine.trace(param_only=True)`` trace of a model/guide run.
    """
    stale = []
    for name, site in param_trace.nodes.items():
        init = site["args"][1] if site["type"] == "param" and len(site["args"]) > 1 else None
        if isinstance(init, torch.nn.Parameter) and site["value"] is not init:
            stale.append(name)
    return stale


def drop(names: list[str]) -> None:
    """Remove these entries from the store, so that the next registration takes the module's."""
    store = pyro.get_param_store()
    for name in names:
        del store[name]
