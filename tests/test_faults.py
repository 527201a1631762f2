"""Faults a long run meets: a killed process, a write cut short, a full disk, a weights file that would run code,
and the network (blocked for every test by conftest's `no_network`)."""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_flags, tiny_overrides
from fastai.callback.core import Callback
from network_guard import NetworkBlockedError
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config, save_config
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.learn.callbacks import RunRecorder
from seti_fastai.learn.plan import run_state
from seti_fastai.learn.train import train_fold
from seti_fastai.model.checkpoint import load_checkpoint, load_weights
from seti_fastai.model.models import build_model
from seti_fastai.model.pretrained import create_backbone, is_network_error

ROOT = Path(__file__).resolve().parents[1]
FAULT = dict(epochs=2, mixup_p=0.5, affine_p=0.0, motion_blur_p=0.0)  # flips, SpecAugment, mixup: still random


def same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same history (losses, AUC, lr) and the same best weights."""
    cols = ["epoch", "train_loss", "valid_loss", "roc_auc", "lr"]
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    pd.testing.assert_frame_equal(ha[cols], hb[cols], rtol=1e-5)
    wa, wb = load_weights(a / "model.pth"), load_weights(b / "model.pth")
    assert wa.keys() == wb.keys()
    for key, value in wa.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, wb[key], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# (a) SIGKILL in the middle of an epoch, then --resume

# The killed process is the real CLI; it only pauses after two training batches of epoch 1 and says so with a
# marker file, so the kill lands mid-epoch without guessing at timing.
PAUSE_MID_EPOCH = """
import pathlib, sys, time
from seti_fastai.learn.callbacks import RunRecorder
marker = pathlib.Path(sys.argv.pop(1))
after_batch = RunRecorder.after_batch
def pause(self):
    after_batch(self)
    if self.training and self.epoch == 1 and self.iter == 1:
        marker.touch()
        time.sleep(600)  # wait to be killed
RunRecorder.after_batch = pause
from seti_fastai.cli import main
sys.argv[0] = "seti-fastai"
main()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(synth_data, tmp_path):
    data = synth_data[0]
    train_fold(build_config(overrides=tiny_overrides(data, tmp_path, name="straight", **FAULT)), quiet=True)
    args = ["train", *tiny_flags(data, tmp_path, name="killed", **FAULT), "--quiet"]
    marker = tmp_path / "mid-epoch"
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_MID_EPOCH, str(marker), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the kill: {proc.communicate()}"
            assert time.monotonic() < deadline, "no mid-epoch marker"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "killed" / "fold0"
    assert len(pd.read_csv(run / "history.csv")) == 1 and not (run / "metrics.json").exists()
    assert load_checkpoint(run / "last.pth")["epoch"] == 0
    (run / ".last.pth.killed.partial").write_bytes(b"half")  # what a kill during a checkpoint write leaves
    resumed = CliRunner().invoke(app, [*args, "--resume"])  # the same command plus --resume
    assert resumed.exit_code == 0, resumed.output
    assert f"{run}: best validation AUC" in resumed.output
    same_run(tmp_path / "straight" / "fold0", run)
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "history.csv",
        "metrics.json",
        "model.pth",
        "oof.csv",
    ]


# ----------------------------------------------------------------------------------------------------------------
# (b) killed while writing a checkpoint; (c) the disk fills up


class _ForceBest(Callback):
    """Make every epoch a new best, so that model.pth is written each epoch."""

    order = RunRecorder.order - 1

    def after_epoch(self):
        for cb in self.learn.cbs:
            if isinstance(cb, RunRecorder):
                cb.best = float("-inf")


def _failing_save(monkeypatch, target: str, error: BaseException, seen: dict) -> None:
    """torch.save that, on the second write of `target`, writes half the bytes and raises `error`."""
    real_save = torch.save
    writes = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if not Path(f).name.startswith(f".{target}."):
            return real_save(obj, f, *args, **kwargs)
        writes["n"] += 1
        if writes["n"] < 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        run = Path(f).parent
        seen.update({name: (run / name).read_bytes() for name in ("model.pth", "last.pth")})
        raise error

    monkeypatch.setattr(torch, "save", save)


def _intact(run: Path, seen: dict) -> None:
    """The files written before the fault are byte for byte what they were, loadable, and nothing half-written."""
    assert seen, "the fault never fired"
    for name, content in seen.items():
        assert (run / name).read_bytes() == content, name
    assert load_checkpoint(run / "last.pth")["epoch"] == 0
    load_weights(run / "model.pth")
    assert not list(run.glob(".*partial"))


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(synth_data, tmp_path, monkeypatch):
    seen: dict = {}
    _failing_save(monkeypatch, "model.pth", KeyboardInterrupt(), seen)  # the full-disk test below cuts last.pth
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, **FAULT))
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, quiet=True, cbs=[_ForceBest()])
    _intact(tmp_path / "exp" / "fold0", seen)


def test_a_full_disk_is_one_line_and_loses_nothing(synth_data, tmp_path, monkeypatch):
    seen: dict = {}
    _failing_save(monkeypatch, "last.pth", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), seen)
    args = ["train", *tiny_flags(synth_data[0], tmp_path, **FAULT), "--quiet"]
    result = CliRunner().invoke(app, args)
    run = tmp_path / "exp" / "fold0"
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {run}: cannot write (No space left on device); the files of the last finished epoch are intact: "
        "free space, then rerun with --resume"
    )
    _intact(run, seen)
    assert run_state(run) == "interrupted"  # --resume (or --all-folds) goes on from epoch 0 (resuming: test above)


# ----------------------------------------------------------------------------------------------------------------
# (d) weights files: one honest error per way a file can be bad


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def fake_run(data, run: Path) -> Path:
    """A run directory with config.yaml and an untrained model.pth (no training needed to test loading)."""
    cfg = build_config(overrides=tiny_overrides(data, run.parent))
    save_config(cfg, run / "config.yaml")
    torch.save(build_model(cfg, 1).state_dict(), run / "model.pth")
    return run


def test_a_weights_file_that_would_run_code_is_refused_everywhere(synth_data, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"weight": _RunsCode(marker)}, evil)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))  # a plain pickle, not torch's zip format
    for path in (evil, legacy):
        with pytest.raises(RunDirError, match=r"refused: it would run code \(it calls (io|builtins)\.open\)"):
            load_weights(path)
    newer = tmp_path / "protocol5.pth"
    newer.write_bytes(pickle.dumps(_RunsCode(marker), protocol=5))  # the safe loader stops before the call
    with pytest.raises(RunDirError, match=r"refused: the safe loader cannot read it \(Unsupported operand"):
        load_weights(newer)
    run = tmp_path / "evil_run"  # a run directory whose model.pth was swapped
    run.mkdir()
    fake_run(synth_data[0], run)
    (run / "model.pth").write_bytes(evil.read_bytes())
    for source in (evil, run):
        result = CliRunner().invoke(app, ["train", *tiny_flags(synth_data[0], tmp_path, init_from=str(source))])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert "refused: it would run code" in result.output
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_bad_weights_files_say_what_is_wrong(synth_data, tmp_path):
    run = fake_run(synth_data[0], tmp_path / "run")
    good = (run / "model.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    torch.save({"model": {"w": torch.ones(2)}, "opt": {}, "epoch": 0}, tmp_path / "last.pth")
    cases = {
        "missing.pth": "file not found",
        "half.pth": r"truncated or corrupt \(PytorchStreamReader failed reading zip archive",
        "empty.pth": r"truncated or corrupt \(EOFError\)",
        "list.pth": "not a state dict of tensors; it holds list",
        "last.pth": r"not a state dict of tensors; it holds a resume checkpoint \(use model\.pth\)",
    }
    for name, message in cases.items():
        with pytest.raises(RunDirError, match=message):
            load_weights(tmp_path / name)
    with pytest.raises(RunDirError, match="not a resume checkpoint"):
        load_checkpoint(run / "model.pth")


# ----------------------------------------------------------------------------------------------------------------
# the network


def test_no_test_reaches_the_network():
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("example.com", 80), timeout=1)
    with socket.socket() as s, pytest.raises(NetworkBlockedError):
        s.connect(("203.0.113.7", 80))  # a literal address: no name lookup, still refused
    server = socket.create_server(("127.0.0.1", 0))  # loopback (local servers, IPC) still works
    with server, socket.create_connection(server.getsockname(), timeout=1):
        pass


def test_no_network_is_said_only_for_network_errors(monkeypatch):
    import urllib.error

    import huggingface_hub.constants
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"for resnet18\.a1_in1k \(offline\?\): no network \(LocalEntryNotFoundError"):
        create_backbone("resnet18", 1, 1, pretrained=True)  # the real hub client, offline

    def fails_with(error: BaseException):
        def create_model(*args, **kwargs):
            raise error

        monkeypatch.setattr(timm, "create_model", create_model)

    try:
        raise NetworkBlockedError("refused")
    except NetworkBlockedError as cause:
        wrapped = LocalEntryNotFoundError("cannot find the requested files in the local cache")
        wrapped.__cause__ = cause
    assert is_network_error(wrapped) and is_network_error(socket.gaierror(-2, "Name or service not known"))
    http_404 = urllib.error.HTTPError("https://hf.co/x", 404, "Not Found", None, None)  # type: ignore[arg-type]
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    assert not is_network_error(http_404) and not is_network_error(disk_full)
    fails_with(disk_full)
    with pytest.raises(ConfigError, match=r"resnet18\.a1_in1k failed to load \(OSError: \[Errno 28\] No space") as info:
        create_backbone("resnet18", 1, 1, pretrained=True)
    assert "no network" not in str(info.value) and "offline" not in str(info.value)
    fails_with(RuntimeError("PytorchStreamReader failed reading zip archive"))  # a corrupt cached file
    with pytest.raises(ConfigError, match=r"failed to load \(RuntimeError: PytorchStreamReader"):
        create_backbone("resnet18", 1, 1, pretrained=True)
