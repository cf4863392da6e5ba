"""Build the API reference (HTML, from the docstrings) with pdoc: every module of pvae.

    python docs/build_api.py docs/api      # then open docs/api/index.html

Warnings fail the build (a docstring pdoc cannot render, a module that does not import),
so CI (.ci/run) catches a broken reference.
"""

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc

import pvae


def modules() -> list[str]:
    found = [
        info.name
        for info in pkgutil.walk_packages(pvae.__path__, prefix="pvae.")
        if not info.name.endswith("__main__")  # running it would run the command
    ]
    return ["pvae", *sorted(found)]


def main(out: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Every module is named, so that those a package's __all__ leaves out get a page too;
        # pdoc then meets some twice, which is all this warning says.
        warnings.filterwarnings("ignore", message="The module specification")
        pdoc.pdoc(*modules(), output_directory=Path(out))
    print(f"wrote the API reference of {len(modules())} modules to {out}/index.html")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/api")
