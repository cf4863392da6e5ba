"""The "Your own data" page's Python block (docs/guide/own_data.md, once the README's) runs as
written, on a features.npy it expects."""

import os
import re
from pathlib import Path

import numpy as np

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "own_data.md"


def own_data_block() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    return block


def test_the_own_data_pages_code_trains_saves_and_evaluates(tmp_path, capsys, one_thread):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2)) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(1000, 6))
    np.save(tmp_path / "features.npy", (x - x.mean(0)) / x.std(0))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(own_data_block(), str(PAGE), "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "best.pt").exists()
    iwae = float(re.search(r"IWAE_1000 (-?[\d.]+)", printed).group(1))
    assert -9.0 < iwae < -3.0  # six standardized features of a 2-d linear-Gaussian model
