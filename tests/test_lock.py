"""One writer per run directory: two trainings into one run (only one runs), a lock held elsewhere refused in one
line naming its holder, a stale lock taken over with a line saying so, calibrate and lr-find refused on a held run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_flags, tiny_overrides
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.errors import RunDirError
from seti_fastai.learn.train import train_fold
from seti_fastai.lock import LOCK_NAME, run_lock

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["seconds", "train_samples_per_s"]


def test_two_trainings_into_one_run_at_once_one_runs_and_the_other_is_refused(synth_data, tmp_path):
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), *tiny_flags(synth_data[0], tmp_path, epochs=2)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([*args, "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused
    assert "in use by pid" in lines[0] or "a run is already there" in lines[0]
    run = tmp_path / "exp" / "fold0"
    train_fold(build_config(overrides=tiny_overrides(synth_data[0], tmp_path, epochs=2, name="alone")), quiet=True)
    alone = tmp_path / "alone" / "fold0"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in alone.iterdir())  # no lock, no partials
    pd.testing.assert_frame_equal(
        pd.read_csv(run / "history.csv").drop(columns=TIMING), pd.read_csv(alone / "history.csv").drop(columns=TIMING)
    )
    pd.testing.assert_frame_equal(pd.read_csv(run / "oof.csv"), pd.read_csv(alone / "oof.csv"))


def _lock_file(run: Path, **record) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "started": "then", "command": "train", **record}))
    return path


def test_a_live_or_foreign_lock_is_refused_in_one_line_naming_its_holder(synth_data, tmp_path):
    run = tmp_path / "exp" / "fold0"
    _lock_file(run, pid=os.getpid())  # this very process: alive
    result = CliRunner().invoke(app, ["train", *tiny_flags(synth_data[0], tmp_path)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"{run}: in use by pid {os.getpid()} on {socket.gethostname()} (train, since then)" in result.stderr
    _lock_file(run, pid=1, host="another-machine")  # cannot be checked from here
    with pytest.raises(RunDirError, match=f"in use by pid 1 on another-machine .* delete {run / LOCK_NAME}"):
        train_fold(build_config(overrides=tiny_overrides(synth_data[0], tmp_path)), quiet=True)
    for command in (["calibrate", run], ["lr-find", *tiny_flags(synth_data[0], tmp_path), "--lr-find-iters", "4"]):
        refused = CliRunner().invoke(app, [str(a) for a in command])
        assert refused.exit_code == 2 and "in use by pid 1 on another-machine" in refused.stderr, refused.output
    assert not (run / "config.yaml").exists()


def test_a_stale_lock_is_taken_over_with_a_line_saying_so(synth_data, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # a process that has ended: its pid is free
    run = tmp_path / "exp" / "fold0"
    _lock_file(run, pid=pid)
    result = CliRunner().invoke(app, ["train", *tiny_flags(synth_data[0], tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{run}: took over the lock of pid {pid} on {socket.gethostname()}" in result.stdout
    assert not (run / LOCK_NAME).exists() and (run / "metrics.json").is_file()
    with run_lock(run, "test") as lock:  # free again; the lock goes when the block ends, also on an error
        assert lock.took_over is None and lock.path.is_file()
    with pytest.raises(ZeroDivisionError), run_lock(run, "test"):
        raise ZeroDivisionError
    assert not (run / LOCK_NAME).exists()
