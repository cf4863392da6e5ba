"""Progress bars for a person watching: at a terminal or in a notebook, never in CI or files."""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    """True at a terminal or in a Jupyter notebook, unless ``$CI`` is set.

    Example::

        >>> import os; os.environ["CI"] = "true"; progress_enabled()  # doctest: +SKIP
        False
    """
    if os.environ.get("CI"):
        return False
    return sys.stdout.isatty() or _in_notebook()


def _in_notebook() -> bool:
    # A Jupyter kernel's shell; plain IPython at a terminal is covered by isatty.
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"
