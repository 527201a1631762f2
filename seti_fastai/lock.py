"""One writer per run directory: a lock file made atomically (`O_CREAT | O_EXCL`) when a command starts writing a
run (train, --resume, lr-find, calibrate), holding who holds it, and removed when it ends.

A second command on a locked run is refused in one line that names the holder. A lock whose process is gone (same
host, no such pid: a SIGKILL, a machine that rebooted) is taken over, and the command says so. A lock held from
another host cannot be checked from here: it is refused, with the file to delete when that process is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seti_fastai.errors import RunDirError
from seti_fastai.io import check_folder, output_error

LOCK_NAME = ".lock"


@dataclass(frozen=True)
class RunLock:
    """A held lock: its file, and the stale holder it replaced (None when the run was free)."""

    path: Path
    took_over: str | None = None


def _holder(path: Path) -> dict | None:
    """The lock file's record, or None when it is unreadable (its writer was killed before it wrote it)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(holder: dict | None) -> str:
    if holder is None:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, since {holder.get('started')})"


def _is_gone(holder: dict | None) -> bool:
    """Whether the holder's process has ended: it ran on this host and its pid is free."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextlib.contextmanager
def run_lock(run_dir: Path | str, command: str, flag: str = "run directory") -> Iterator[RunLock]:
    """Hold `run_dir`'s lock for the block (the folder is made if needed; `flag` names where it came from in an
    error); `RunDirError` when another live process holds it. The lock is removed at the end, also when the block
    fails."""
    run_dir = check_folder(run_dir, flag)
    path = run_dir / LOCK_NAME
    record = dict(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=f"{command} ({' '.join(sys.argv[1:])[:200]})" if sys.argv[1:] else command,
    )
    took_over = None
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # removed again if left empty
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = _holder(path)
                if took_over is not None or not _is_gone(holder):
                    raise RunDirError(
                        f"{run_dir}: in use by {describe(holder)}; wait for it to end, or delete {path} if that "
                        "process is gone"
                    ) from None
                took_over = describe(holder)
                path.unlink(missing_ok=True)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
    except OSError as e:
        raise output_error(path, e) from e
    try:
        yield RunLock(path, took_over)
    finally:
        if _holder(path) == record:  # still ours
            path.unlink(missing_ok=True)
        for folder in made:  # a command refused before it wrote anything leaves no empty run directory
            try:
                folder.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def lock_runs(run_dirs: list[Path | str], command: str) -> Iterator[list[RunLock]]:
    """Hold the locks of several run directories for the block, taken in one order (so two such commands cannot
    each wait on the other's)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_lock(d, command)) for d in sorted({Path(r).resolve() for r in run_dirs})]
