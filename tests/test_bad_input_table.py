"""docs/bad_input.md: every case of tests/test_bad_input.py with the message a user reads.

Made by ``python tests/test_bad_input_table.py > docs/bad_input.md``; the suite checks that
the page is the table the code gives now, so a message changed in the code cannot leave the
documentation behind. Paths of the test's temporary folder are shown as ``TMP``.
"""

import sys
from pathlib import Path

import pyro
import pytest
from test_bad_input import CASES

TABLE = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
HEADER = """# Bad input and what pvae says

Made by `python tests/test_bad_input_table.py > docs/bad_input.md`; the suite checks that
this page is the table the code gives now. Every bad input gets one error, one line, that
says what is wrong and what to do; nothing is trained or written before it. `TMP` stands for
the folder the case's files were in. A `pvae` command prints the same message after
`error: ` and exits with status 2.

| input | error | message |
|---|---|---|
"""


def message_of(case: str, tmp_path: Path, monkeypatch) -> tuple[str, str]:
    """The exception type and message that ``case`` raises, paths shown as ``TMP``."""
    call, error_type, _ = CASES[case]
    pyro.clear_param_store()
    with monkeypatch.context() as patch, pytest.raises(error_type) as raised:
        call(tmp_path, patch)
    return error_type.__name__, str(raised.value).replace(str(tmp_path), "TMP")


def bad_input_table(rows: dict[str, tuple[str, str]]) -> str:
    lines = [f"| {case} | `{name}` | {_cell(message)} |" for case, (name, message) in rows.items()]
    return HEADER + "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def all_messages(tmp_factory, monkeypatch) -> dict[str, tuple[str, str]]:
    return {case: message_of(case, tmp_factory(case), monkeypatch) for case in sorted(CASES)}


def test_the_documented_table_is_the_suite_s(tmp_path_factory, monkeypatch, one_thread):
    rows = all_messages(lambda case: tmp_path_factory.mktemp("case"), monkeypatch)
    assert TABLE.read_text() == bad_input_table(rows)


if __name__ == "__main__":
    import tempfile

    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as root:

        def folder(case: str) -> Path:
            path = Path(root) / f"case{len(list(Path(root).iterdir()))}"
            path.mkdir()
            return path

        sys.stdout.write(bad_input_table(all_messages(folder, patch)))
