"""Parts users register themselves, and how a checkpoint names them without choosing code.

A user's likelihood (prior, guide, network) is one class and one line in the registry, e.g.
``pvae.likelihoods.LIKELIHOODS["mine"] = MyLikelihood``; that line runs in the user's
process, and a checkpoint holds names, not code (it is loaded with ``weights_only=True``).
A file may only *name* parts that the loading process has registered: pvae's own, those the
user's code registered, and those passed to :func:`pvae.load` as ``custom_parts=``. Nothing
is imported or called because a file names it, so a checkpoint cannot run code.

:func:`record_custom_parts` writes down, for every part of a VAE that pvae does not ship,
the class it is (module and qualified name); :func:`check_custom_parts` uses that record at
loading to say which class a checkpoint expects where its name is not registered, and to
refuse a different class registered under that name. A class defined in ``__main__`` (a
script, a notebook) or inside a function is registered again only by running that code:
saving one warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pvae.infer.checkpoint_entries import check_entries, shown
from pvae.models.guides import GUIDES
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import NETWORKS
from pvae.models.priors import PRIORS

__all__ = ["CustomParts", "check_custom_parts", "record_custom_parts"]

# model_args key -> the registry its name is looked up in.
REGISTRIES: dict[str, dict[str, Any]] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "guide": GUIDES,
    "network": NETWORKS,
}
# What users pass as ``custom_parts=``: classes (a network: its function), or names mapped
# to them.
CustomParts = Mapping[str, Callable] | Iterable[Callable]
_RECORD = {"name": str, "module": str, "qualname": str}


def _ships_with_pvae(module: str) -> bool:
    return module == "pvae" or module.startswith("pvae.")


def _only_here(module: str, qualname: str) -> bool:
    """A class that only the code that defined it (a script, a notebook, a function) makes."""
    return module == "__main__" or "<locals>" in qualname


def _where(record: Mapping[str, str]) -> str:
    return f"{record['module']}.{record['qualname']}"


def _is(cls: type, record: Mapping[str, str]) -> bool:
    """Whether ``cls`` is the class ``record`` names (a script's class by its name alone:
    the same script may run as ``__main__`` or be imported)."""
    if _only_here(record["module"], record["qualname"]):
        return cls.__qualname__ == record["qualname"]
    return (cls.__module__, cls.__qualname__) == (record["module"], record["qualname"])


def record_custom_parts(model_args: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{kind: {"name", "module", "qualname"}}`` for each part of ``model_args`` that a user
    registered (not one of pvae's own); warns where the class is defined in a script, a
    notebook or a function.

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
        if _only_here(module, qualname):
            warnings.warn(
                f"the {kind} {name!r} is {module}.{qualname}, defined in a script, a notebook "
                f"or a function: this checkpoint loads only where that code registers "
                f"{name!r} again; to load it anywhere, move the class into a module of its "
                "own (e.g. my_parts.py) and import it from there",
                stacklevel=3,
            )
    return records


def check_custom_parts(
    model_args: Mapping[str, Any],
    records: Any,
    source: str = "checkpoint",
    custom_parts: CustomParts | None = None,
) -> None:
    """Register ``custom_parts`` under the names ``model_args`` gives them, then check that
    every part ``model_args`` names is registered here, as the class ``records`` (what
    :func:`record_custom_parts` wrote, from the file) says; imports nothing.

    ``custom_parts`` are classes (matched to the checkpoint's parts by module and qualified
    name) or a mapping of names to classes; they stay registered, as
    ``LIKELIHOODS[name] = cls`` would. ``source`` (e.g. the checkpoint's path) begins every
    error message.

    Example::

        >>> check_custom_parts({"likelihood": "bernoulli"}, {})  # pvae's own: nothing to do
    """
    records = _checked_records(records, model_args, source)
    _register(_given(custom_parts, model_args, records), source, records)
    missing = []
    for kind, registry in REGISTRIES.items():
        name = model_args.get(kind)
        if not isinstance(name, str):
            continue  # not a name: the model_args' own check says so
        record = records.get(kind)
        if name in registry and record is not None and not _is(registry[name], record):
            raise ValueError(_other_class(kind, name, record, registry[name], source))
        if name not in registry and record is None:  # a file without a record: a name only
            raise ValueError(
                f"{source}: its {kind} {name!r} is not registered in this process (registered: "
                f"{', '.join(registry)}): register the class under that name before loading"
            )
        if name not in registry:
            missing.append((kind, record))
    if missing:
        raise ValueError(_unregistered(missing, source))


def _checked_records(records: Any, model_args: Mapping[str, Any], source: str) -> dict:
    """The file's ``custom_parts`` entry, refused unless it is what :func:`record_custom_parts`
    writes (a record is only ever read, as text)."""
    if records is None:
        return {}
    where = f"{source}'s custom_parts"
    check_entries(records, where, {}, {kind: dict[str, Any] for kind in REGISTRIES})
    for kind, record in records.items():
        if kind not in REGISTRIES:
            raise ValueError(f"{where} names an unknown kind of part {shown(kind)}")
        check_entries(record, f"{where} {kind}", _RECORD)
        for key in ("module", "qualname"):  # shown in messages: plain dotted names only
            if not all(p.isidentifier() or p == "<locals>" for p in record[key].split(".")):
                raise ValueError(f"{where} {kind}: {key} {record[key]!r} is not a Python name")
        if record["name"] != model_args.get(kind):
            raise ValueError(
                f"{where} records the {kind} {record['name']!r}, but its model_args name "
                f"{shown(model_args.get(kind))}: the file is damaged"
            )
    return dict(records)


def _given(
    custom_parts: CustomParts | None, model_args: Mapping[str, Any], records: Mapping
) -> dict[str, tuple[str, type]]:
    """``{kind: (name, cls)}`` for the classes of ``custom_parts`` that the checkpoint uses;
    the others are left alone (one list of a user's parts serves every checkpoint)."""
    if custom_parts is None:
        return {}
    if isinstance(custom_parts, Mapping):
        pairs = list(custom_parts.items())
    elif (
        callable(custom_parts)
        or not isinstance(custom_parts, Iterable)
        or isinstance(custom_parts, (str, bytes))
    ):
        raise TypeError(
            "custom_parts must be a list of classes or a mapping of names to classes, got "
            f"{repr(custom_parts)[:80]}"
        )
    else:
        pairs = [(None, cls) for cls in custom_parts]
    given = {}
    for name, cls in pairs:
        if not callable(cls) or not hasattr(cls, "__qualname__"):  # networks are functions
            raise TypeError(f"custom_parts must hold classes, got {cls!r}")
        for kind in REGISTRIES:
            record = records.get(kind)
            if name is not None and model_args.get(kind) == name:
                given[kind] = (name, cls)
            elif name is None and record is not None and _is(cls, record):
                given[kind] = (record["name"], cls)
    return given


def _register(given: Mapping[str, tuple[str, type]], source: str, records: Mapping) -> None:
    """Register the given classes, after checking them all (a refused load registers none)."""
    for kind, (name, cls) in given.items():
        registered = REGISTRIES[kind].get(name, cls)
        if kind in records and not _is(cls, records[kind]):
            raise ValueError(_other_class(kind, name, records[kind], cls, source, "given"))
        if registered is not cls:
            raise ValueError(
                f"{source}: custom_parts gives {cls.__module__}.{cls.__qualname__} as the "
                f"{kind} {name!r}, which is registered here as {registered.__module__}."
                f"{registered.__qualname__} already: give the class registered under that name"
            )
    for kind, (name, cls) in given.items():
        REGISTRIES[kind][name] = cls


def _unregistered(missing: list[tuple[str, Mapping[str, str]]], source: str) -> str:
    """One line for the parts of a checkpoint that are not registered here: which classes it
    expects, and how to register them."""
    parts = " and ".join(f"its {kind} {r['name']!r} is {_where(r)}" for kind, r in missing)
    them = "them" if len(missing) > 1 else "it"
    classes = ", ".join(r["qualname"].split(".")[-1] for _, r in missing)
    modules = [r["module"] for _, r in missing if not _only_here(r["module"], r["qualname"])]
    if modules:
        how = f"if you trust {them}, import the module that registers {them}, e.g. `import "
        how += f"{modules[0]}` (on the command line: pvae --import {modules[0]} ...)"
    else:
        how = f"run the code that defines and registers {them}"
    return (
        f"{source}: {parts}, not registered in this process (pvae never imports what a file "
        f"names): {how}, or pass custom_parts=[{classes}] to pvae.load"
    )


def _other_class(kind, name, record, cls: type, source: str, how: str = "registered") -> str:
    fix = "pass that class" if how == "given" else "register that class under the name"
    return (
        f"{source}: its {kind} {name!r} is {_where(record)}, but {name!r} is {how} here as "
        f"{cls.__module__}.{cls.__qualname__}: {fix}"
    )
