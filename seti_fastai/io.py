"""Atomic file writes: write to a temporary name beside the target, then rename, so no half-written output remains."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from seti_fastai.errors import OutputError, first_sentence


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once: there is no other way to read it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_NAME_KEEP = 100  # characters of the target's name kept in a temporary name: it always fits the 255 limit
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "basic_ios::clear", "file write failed")


def output_error(path: Path, error: BaseException) -> OutputError:
    """The one-line `PATH: cannot write (REASON)` of a failed write: an `OSError` by its reason (a full disk, a
    read-only file system, a name the file system refuses, a parent that is a file), or `torch.save`'s zip writer
    failing (a `RuntimeError`; on a full disk it says so)."""
    if isinstance(error, OutputError):
        return error
    if isinstance(error, OSError):
        if isinstance(error, FileExistsError | NotADirectoryError) and (blocker := _file_in_the_way(path)):
            return OutputError(path, f"{blocker} is a file, not a folder", error.errno)
        if isinstance(error, IsADirectoryError) or (error.errno == errno.EISDIR):
            return OutputError(path, "it is a folder", error.errno)
        return OutputError(path, error.strerror or first_sentence(error), error.errno)
    folder = next((p for p in path.parents if p.is_dir()), Path("."))
    if shutil.disk_usage(folder).free < 1 << 20:
        return OutputError(path, os.strerror(errno.ENOSPC), errno.ENOSPC)
    return OutputError(path, f"the write failed: {first_sentence(error)}")


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of `path` that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def is_write_failure(error: BaseException) -> bool:
    """An error a write raises: any `OSError`, or the `RuntimeError` of `torch.save`'s zip writer."""
    return isinstance(error, OSError) or (
        isinstance(error, RuntimeError) and any(marker in str(error) for marker in _TORCH_WRITER)
    )


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds, delete it otherwise.

    The file gets the mode a plain `open` would give it (0o666 less the umask), not mkstemp's private 0o600. Every
    way the write can fail (here or in the block) is one `OutputError` naming `path`; the temporary name keeps at most
    `TEMP_NAME_KEEP` characters of the target's, so it fits wherever the target's name does.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:TEMP_NAME_KEEP]}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except Exception as e:
        if is_write_failure(e):
            raise output_error(path, e) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def check_folder(path: Path | str, flag: str) -> Path:
    """`path` as a folder outputs can go into: refused in one line when it, or a parent, is a file."""
    path = Path(path)
    if (blocker := _file_in_the_way(path / "x")) is not None:
        raise OutputError(path, f"{flag} {blocker} is a file, not a folder")
    return path


def atomic_write(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(df: pd.DataFrame, path: Path | str) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


@contextlib.contextmanager
def atomic_dir(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds (with mode 0o777 less
    the umask, not mkdtemp's 0o700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path}: already exists")
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def derived_path(data_root: Path | str, name: str, work_dir: Path | str = "runs", chosen: bool = False) -> Path:
    """Where a file derived from a data folder (fold CSV, matches.csv, de-Doppler scores, packed caches) lives.

    An existing copy is found beside the data first, then in `work_dir`; a new one goes beside the data when that
    folder is writable (Kaggle input folders are not), else into `work_dir`. `chosen`: the user named `work_dir`
    (`--work-dir`, `pack --out`), so it wins: found there first, and a new file goes there.
    """
    beside, work = Path(data_root) / name, Path(work_dir) / name
    for path in (work, beside) if chosen else (beside, work):
        if path.is_file():
            return path
    return work if chosen or not os.access(data_root, os.W_OK) else beside


def save_figure(fig, path: Path | str, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
