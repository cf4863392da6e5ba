"""Sphinx configuration of pvae's documentation site (MyST markdown, notebooks by MyST-NB).

    pip install -e '.[docs]' && sphinx-build -W --keep-going -n -b html docs docs/_build/html

The tutorials (docs/tutorials/*.ipynb) run at every build, and one that fails fails the build.
"""

import importlib
import inspect
import pkgutil
import sys

from sphinx.ext.napoleon import Config as NapoleonConfig
from sphinx.ext.napoleon.docstring import GoogleDocstring

import pvae

project = "pvae"
author = "the pvae authors"
copyright = "the pvae authors"
release = version = pvae.__version__

extensions = [
    "myst_nb",  # MyST markdown pages and executed notebooks (it loads myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
# Not pages: the pictures (referenced from pages), build outputs, notebook checkpoints.
exclude_patterns = [
    "_build",
    "_templates",
    "gallery",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "conf.py",
]
templates_path = ["_templates"]

# MyST: GitHub-style anchors for headings down to ###, so that [text](page.md#a-heading)
# is checked like a page link; ```{directive} fences; $...$ stays text (shell variables).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# MyST-NB: every tutorial runs at each build, and an error in one fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# The API reference, from the docstrings (reST). Each module documents what it defines
# (not what its __all__ re-exports: that has its page where it is defined), and not the
# docstrings of torch's methods it overrides.
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False

# Nitpicky (-n) checks every cross-reference; third-party types in signatures have no pages
# here (no network for intersphinx), so those alone are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|scipy|matplotlib|arviz|yaml|tqdm|filelock)(\..*)?"),
    (
        r"py:.*",
        r"(dist|contextlib|collections\.abc|typing|pathlib|os|argparse|dataclasses|enum)\..*",
    ),
    (r"py:class", r"(Path|Tensor|Callable|Iterable|Iterator|Mapping|Sequence|Any)"),
    (r"py:class", r"dict\[str.*"),  # a dict[str, ...] annotation, cut at its comma
    (r"py:.*", r"(.*\.)?_[A-Za-z].*"),  # private names (a base class, say) have no page
]

html_theme = "furo"
html_title = f"pvae {release}"
html_static_path: list[str] = []


def _top_level_modules() -> set[str]:
    return {
        info.name
        for info in pkgutil.iter_modules(pvae.__path__, prefix="pvae.")
        if not info.name.endswith("__main__")  # importing it would run the command
    }


def _check_reference_lists_every_module(app, docname, source):
    """The API reference names its modules by hand (pvae.__main__ must not be imported):
    a new top-level module missing from it fails the build."""
    if docname != "reference/modules":
        return
    missing = sorted(m for m in _top_level_modules() if f"   {m}\n" not in source[0])
    if missing:
        from sphinx.util import logging

        logging.getLogger(__name__).warning(
            "docs/reference/modules.md does not list %s", ", ".join(missing)
        )


def _walk(obj, parts: list[str]) -> list[str] | None:
    """The documented path of ``obj.part1.part2...``: modules and classes by their own
    names (``pvae.nets`` is ``pvae.models.nets``), other attributes as reached."""
    real = [obj.__name__]
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            # A dataclass field without a default is an attribute of the instances only.
            if part in getattr(obj, "__annotations__", {}):
                return [*real, part]
            return None
        if inspect.ismodule(obj):
            real = [obj.__name__]
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            real = [obj.__module__, *obj.__qualname__.split(".")]
        else:
            real.append(part)
    return real


def _documented_name(target: str, contexts: list[tuple[str | None, str | None]]) -> str | None:
    """Where the object a docstring names is documented: ``pvae.nets.X`` (a shortcut
    module) is ``pvae.models.nets.X``, ``fit`` inside ``pvae.runs`` is what ``pvae.runs``
    imports under that name, ``pvae.VAE.save`` is ``pvae.models.vae.VAE.save``."""
    parts = target.split(".")
    starts = [(module, [*(cls.split(".") if cls else []), *parts]) for module, cls in contexts]
    # A dotted module path first (pvae.infer.ais.bdmc.bdmc: the package's attribute bdmc
    # is the function), then the public namespace (`fit` anywhere is pvae.fit).
    for cut in range(len(parts), 1, -1):
        starts.append((".".join(parts[:cut]), parts[cut:]))
    starts.append(("pvae", parts[1:] if parts[0] == "pvae" else parts))
    for module, rest in starts:
        if not module:
            continue
        try:
            obj = importlib.import_module(module)
        except ImportError:
            continue
        real = _walk(obj, rest)
        if real is not None:
            return ".".join(real)
    return None


def _defined_once(name: str) -> str | None:
    """The one pvae module that defines ``name`` (a class or function), if only one does."""
    homes = {
        f"{module.__name__}.{name}"
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("pvae.")
        and getattr(getattr(module, name, None), "__module__", None) == module_name
    }
    return homes.pop() if len(homes) == 1 else None


def _resolve_through_imports(app, env, node, contnode):
    if node.get("refdomain") != "py" or node["reftarget"].startswith("pvae.__main__"):
        return None
    module, cls = node.get("py:module"), node.get("py:class")
    name = _documented_name(node["reftarget"], [(module, cls), (module, None)])
    domain = env.get_domain("py")
    if name is None:
        # A name of a module's own in its summary line, read in its package's table.
        name = _defined_once(node["reftarget"])
    if name is None:
        return None
    found = domain.resolve_any_xref(env, node["refdoc"], app.builder, name, node, contnode)
    # A pvae object that exists but has no entry of its own (a constant without a
    # docstring) is named as code, unlinked; a name that does not exist stays a warning.
    return found[0][1] if found else contnode


def _google_sections(app, what, name, obj, options, lines):
    """Napoleon for the functions' and classes' "Args:"/"Raises:" sections only: on an
    attribute or property it would read "log p(x) − ELBO: ..." as a type."""
    if what in ("function", "method", "class", "exception") and any(
        line.strip() in ("Args:", "Raises:", "Returns:") for line in lines
    ):
        lines[:] = GoogleDocstring(lines, NapoleonConfig(), app, what, name, obj, options).lines()


def setup(app):
    app.connect("autodoc-process-docstring", _google_sections)
    app.connect("source-read", _check_reference_lists_every_module)
    app.connect("missing-reference", _resolve_through_imports)
