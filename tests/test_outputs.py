"""Every failure on an output path is one line: a real full file system (a small tmpfs, mounted when the test may),
a parent that is a file, an output that is a folder, a long name; and the previous files stay intact."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_flags, tiny_overrides
from fastai.callback.core import Callback
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.errors import OutputError, RunDirError
from seti_fastai.io import atomic_write_text
from seti_fastai.learn.train import train_fold
from seti_fastai.model.checkpoint import load_weights


def run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, fragment: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    return lines[0]


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` (skips the test where mounting is not allowed)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill a file system to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def test_a_submission_on_a_full_disk_is_one_line_and_the_old_one_stays(trained_runs, synth_data, tmp_path):
    with small_disk(tmp_path / "disk", "256k") as disk:
        old = disk / "submission.csv"
        old.write_text("id,target\nold,0.5\n")
        fill(disk)
        line = one_line(
            run("predict", trained_runs[1][0], "--data", synth_data[0], "--out", old, "--workers", "0"),
            "cannot write (No space left on device)",
        )
        assert line.startswith(f"error: {old}:")
        assert old.read_text() == "id,target\nold,0.5\n" and not list(disk.glob(".*.partial"))


class FillAfterFirstEpoch(Callback):
    order = 70  # after RunRecorder has written epoch 0's files

    def __init__(self, folder: Path):
        self.folder = folder

    def after_epoch(self):
        if self.epoch == 0:
            fill(self.folder)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_last_epoch_stays(synth_data, tmp_path):
    with small_disk(tmp_path / "disk", "32m") as disk:
        cfg = build_config(overrides=tiny_overrides(synth_data[0], disk, epochs=3))
        with pytest.raises(RunDirError) as info:
            train_fold(cfg, quiet=True, cbs=[FillAfterFirstEpoch(disk)])
        message = str(info.value)
        assert "\n" not in message and "cannot write (No space left on device)" in message
        assert "the files of the last finished epoch are intact: free space, then rerun with --resume" in message
        run_dir = disk / "exp" / "fold0"
        assert len(pd.read_csv(run_dir / "history.csv")) == 1
        assert load_weights(run_dir / "model.pth") and not list(run_dir.glob(".*.partial"))
        (disk / "filler").unlink()  # space again: the same command with --resume finishes the run
        metrics = train_fold(
            build_config(overrides=tiny_overrides(synth_data[0], disk, epochs=3, resume=True)), quiet=True
        )
        assert metrics["epochs"] == 3 and len(pd.read_csv(run_dir / "history.csv")) == 3


def test_output_paths_that_cannot_be_written_are_one_line(trained_runs, synth_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line(run("train", *tiny_flags(synth_data[0], blocker)), f"--out {blocker} is a file, not a folder")
    predict = ["predict", trained_runs[1][0], "--data", synth_data[0], "--workers", "0", "--out"]
    one_line(run(*predict, tmp_path), "cannot write (it is a folder)")
    one_line(run(*predict, blocker / "sub.csv"), f"cannot write ({blocker} is a file, not a folder)")
    long_name = tmp_path / ("s" * 240 + ".csv")  # legal; its temporary name must fit the limit too
    assert run(*predict, long_name).exit_code == 0 and long_name.is_file()
    with pytest.raises(OutputError, match=rf"cannot write \({os.strerror(errno.ENAMETOOLONG)}\)"):
        atomic_write_text(tmp_path / ("n" * 300 + ".txt"), "too long a name")  # the file system refuses it
