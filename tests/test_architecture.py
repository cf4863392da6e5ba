"""The layers hold: `lint-imports` passes on pvae and fails on an import against them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail("lint-imports is missing: install the dev extras (pip install -e '.[dev]')")
    # The copy under test comes first on the path, ahead of the installed pvae.
    environment = {"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, imported",
    [
        ("plates", "pvae.models.nets"),  # the core knows no model zoo
        ("iwae", "pvae.infer.training_state"),  # estimators know no training
    ],
)
def test_an_import_against_the_architecture_breaks_a_contract(tmp_path, module, imported):
    shutil.copytree(ROOT / "pvae", tmp_path / "pvae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    source = tmp_path / "pvae" / "infer" / f"{module}.py"
    source.write_text(source.read_text() + f"\nimport {imported}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"pvae.infer.{module} -> {imported}" in done.stdout


def test_the_flat_layouts_import_paths_work_for_one_release_with_a_warning():
    import importlib
    import sys

    import pvae

    for name in ("nets", "likelihoods", "priors", "guides", "variants", "objectives", "plots"):
        sys.modules.pop(f"pvae.{name}", None)
        with pytest.warns(DeprecationWarning, match=f"import pvae.{name} is deprecated"):
            assert importlib.import_module(f"pvae.{name}") is getattr(pvae, name)
    sys.modules.pop("pvae.likelihoods")
    with pytest.warns(DeprecationWarning, match="import pvae.models.likelihoods"):
        from pvae.likelihoods import LIKELIHOODS  # as user code written for the flat layout

    assert "bernoulli" in LIKELIHOODS
