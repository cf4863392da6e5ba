"""A lock on a run's folder, so that two runs never write into one.

The lock is the operating system's on ``FOLDER/.pvae.lock`` (``filelock``): it ends with its
process, even a killed one, so the file's existence means nothing and a crashed run resumes
as it is; ``FOLDER/.pvae.lock.info`` says who holds it, for the refusal's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = ["LOCK_FILE", "LOCK_INFO_FILE", "folder_lock"]

LOCK_FILE = ".pvae.lock"
LOCK_INFO_FILE = ".pvae.lock.info"
_HELD_FOLDERS: set[Path] = set()  # the run folders this process holds the lock of


@contextlib.contextmanager
def folder_lock(out: str | Path, give_another: str = "--out") -> Iterator[Path]:
    """Hold the lock on the run folder ``out`` (made if missing), or refuse at once, naming
    the run that holds it (and saying to give another ``give_another``). A folder this call
    made is removed again if the run wrote nothing into it. A process that
    holds the lock already goes on holding it (scripts lock before they load their data, so
    that a second run stops at once; :func:`pvae.runs.train_run` and :func:`pvae.fit` lock
    again); under torchrun rank 0 alone locks, as it alone writes.

    Example::

        >>> with folder_lock("runs/a"):  # doctest: +SKIP
        ...     with folder_lock("runs/a"):
        ...         pass
        Traceback (most recent call last):
        ...
        ValueError: runs/a is in use by another run (pvae train, pid 1234 on host, started ...
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: give --out a folder for the run")
    held = out.resolve()
    if held in _HELD_FOLDERS or int(os.environ.get("RANK", "0")) != 0:
        yield out
        return
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"{out} is in use by another run ({_lock_holder(out)}): wait for it to end, or "
            f"give another {give_another}"
        ) from None
    info = out / LOCK_INFO_FILE
    _HELD_FOLDERS.add(held)
    try:
        info.write_text(json.dumps(_this_process()))
        yield out
    finally:
        _HELD_FOLDERS.discard(held)
        info.unlink(missing_ok=True)
        lock.release()
        if made and all(p.name == LOCK_FILE for p in out.iterdir()):
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()


def _this_process() -> dict[str, Any]:
    script = Path(sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else "python")
    program = script.parent.name if script.name == "__main__.py" else script.name  # python -m
    if program == "pvae" and len(sys.argv) > 1:
        program = f"pvae {sys.argv[1]}"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "program": program,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": started,
    }


def _lock_holder(out: Path) -> str:
    try:
        held = json.loads((out / LOCK_INFO_FILE).read_text())
        return f"{held['program']}, pid {held['pid']} on {held['host']}, started {held['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by another version
        return "its details are not known"
