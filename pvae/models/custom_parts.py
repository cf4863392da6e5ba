"""Parts users register themselves, named in checkpoints so that a fresh process finds them.

A user's likelihood (prior, guide, network) is one class and one line in the registry, e.g.
``pvae.likelihoods.LIKELIHOODS["mine"] = MyLikelihood``; but that line runs in the user's
process only, and a checkpoint holds names, not code (it is loaded with
``weights_only=True``). So :func:`record_custom_parts` writes down, for every part of a VAE
that pvae does not ship, where its class lives (module and qualified name), and
:func:`import_custom_parts` imports that module when the checkpoint is loaded and registers
the class under its name if the import did not. A class defined in ``__main__`` (a script, a
notebook) or inside a function cannot be imported by another process: saving one warns, and
loading it where it is not registered says to move it into an importable module.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

from pvae.models.guides import GUIDES
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import NETWORKS
from pvae.models.priors import PRIORS

__all__ = ["import_custom_parts", "record_custom_parts"]

# model_args key -> the registry its name is looked up in.
REGISTRIES: dict[str, dict[str, Any]] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "guide": GUIDES,
    "network": NETWORKS,
}
_MOVE_IT = (
    "move the class into a module of its own (e.g. my_parts.py) that registers it, import it "
    "from there, and save again"
)


def _ships_with_pvae(module: str) -> bool:
    return module == "pvae" or module.startswith("pvae.")


def _importable(module: str, qualname: str) -> bool:
    return module != "__main__" and "<locals>" not in qualname


def _where(record: Mapping[str, str]) -> str:
    return f"{record['module']}.{record['qualname']}"


def record_custom_parts(model_args: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{kind: {"name", "module", "qualname"}}`` for each part of ``model_args`` that a user
    registered (not one of pvae's own); warns where the class cannot be imported elsewhere.

    Example::

        >>> record_custom_parts({"prior": "standard_normal", "likelihood": "bernoulli"})
        {}
    """
    records = {}
    for kind, registry in REGISTRIES.items():
        name = model_args.get(kind)
        if name not in registry:
            continue
        part = registry[name]
        module, qualname = part.__module__, part.__qualname__
        if _ships_with_pvae(module):
            continue
        records[kind] = {"name": name, "module": module, "qualname": qualname}
        if not _importable(module, qualname):
            warnings.warn(
                f"the {kind} {name!r} is {module}.{qualname}, which another process cannot "
                f"import: this checkpoint loads only where {name!r} is registered again; "
                f"{_MOVE_IT}",
                stacklevel=3,
            )
    return records


def _resolve(record: Mapping[str, str], kind: str, source: str):
    module_name = record["module"]
    try:
        target = importlib.import_module(module_name)
    except Exception as error:  # any failure of the user's module at import
        raise ValueError(
            f"{source}: its {kind} {record['name']!r} is {_where(record)}, but importing "
            f"module {module_name!r} failed ({type(error).__name__}: {error}): put the "
            "directory that holds it on PYTHONPATH (or install it), then load again"
        ) from error
    for attribute in record["qualname"].split("."):
        if not hasattr(target, attribute):
            raise ValueError(
                f"{source}: its {kind} {record['name']!r} is {_where(record)}, but module "
                f"{module_name!r} has no {record['qualname']!r} (renamed or moved?)"
            )
        target = getattr(target, attribute)
    return target


def import_custom_parts(records: Mapping[str, Mapping[str, str]], source: str = "checkpoint"):
    """Import and register the parts that :func:`record_custom_parts` recorded.

    ``source`` (e.g. the checkpoint's path) begins every error message.

    Example::

        >>> import_custom_parts({})  # a checkpoint of pvae's own parts: nothing to import
    """
    for kind, record in records.items():
        registry, name = REGISTRIES[kind], record["name"]
        registered = registry.get(name)
        if not _importable(record["module"], record["qualname"]):
            if registered is not None and registered.__qualname__ == record["qualname"]:
                continue  # registered again in this process, as the warning at saving said
            raise ValueError(
                f"{source}: its {kind} {name!r} is {_where(record)}, defined in a script, a "
                f"notebook or a function, which cannot be imported here: {_MOVE_IT} (or "
                f"register {name!r} before loading)"
            )
        part = _resolve(record, kind, source)
        registered = registry.get(name)  # the import may have registered it
        if registered is None:
            registry[name] = part
        elif registered is not part:
            raise ValueError(
                f"{source}: its {kind} {name!r} is {_where(record)}, but {name!r} is "
                f"registered here as {registered.__module__}.{registered.__qualname__}: "
                "register the checkpoint's class under that name"
            )
