"""Every tutorial notebook in docs/tutorials runs from top to bottom without an error, as the
documentation build runs it: a fresh kernel, a working directory of its own, and no data but
what pip installs (the suite's CI hides machine-local data directories)."""

import json
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_the_tutorials_are_found():
    names = {path.stem for path in NOTEBOOKS}
    assert {"mnist_vae", "own_data", "own_model", "evaluating"} <= names
    index = (TUTORIALS / "index.md").read_text()
    for name in names:
        assert name in index, f"docs/tutorials/index.md does not list {name}"


def test_the_tutorials_are_stored_without_outputs():
    # The documentation build executes them: stored outputs would be stale or duplicated.
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        assert notebook["metadata"]["kernelspec"]["name"] == "python3", path.name
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"], path.name
                assert cell["execution_count"] is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_tutorial_runs(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    # The kernel inherits the environment: the notebooks' temporary files land in tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors
