"""The README's "Your own data" Python block runs as written, on a features.npy it expects."""

import os
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def own_data_block() -> str:
    section = README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


def test_the_readmes_own_data_code_trains_saves_and_evaluates(tmp_path, capsys, one_thread):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2)) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(1000, 6))
    np.save(tmp_path / "features.npy", (x - x.mean(0)) / x.std(0))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(own_data_block(), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "best.pt").exists()
    iwae = float(re.search(r"IWAE_1000 (-?[\d.]+)", printed).group(1))
    assert -9.0 < iwae < -3.0  # six standardized features of a 2-d linear-Gaussian model
