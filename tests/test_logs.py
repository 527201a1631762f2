"""Experiment logs (`--log csv,tensorboard,wandb`): fastai's own callbacks, written inside the run directory, by
rank 0 only, and wandb offline."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
from conftest import tiny_flags, tiny_overrides
from typer.testing import CliRunner

import seti_fastai.learn.logs as logs
import seti_fastai.learn.train as train
from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.errors import ConfigError


def test_csv_and_tensorboard_logs_hold_the_epochs(synth_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = tiny_flags(synth_data[0], tmp_path, epochs=2, log="csv,tensorboard")
    result = CliRunner().invoke(app, ["train", *flags, "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "exp" / "fold0"
    log = pd.read_csv(run / "log.csv")
    history = pd.read_csv(run / "history.csv")  # the run's own history is unchanged
    assert list(log["epoch"]) == [0, 1] and len(history) == 2
    assert {"train_loss", "valid_loss", "roc_auc"} <= set(log.columns)
    assert log["valid_loss"].tolist() == pytest.approx(history["valid_loss"].tolist(), rel=1e-4)
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    scalars = board.Tags()["scalars"]
    assert {"train_loss", "valid_loss", "roc_auc", "lr_0"} <= set(scalars)
    valid = [e.value for e in board.Scalars("valid_loss")]
    assert len(valid) == 2 and all(math.isfinite(v) for v in valid)
    assert len(board.Scalars("train_loss")) >= 2  # one point per training batch


def test_wandb_logs_offline_inside_the_run(synth_data, tmp_path):
    pytest.importorskip("wandb")
    before = os.environ.get("WANDB_MODE")
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, log="wandb"))
    train.train_fold(cfg, quiet=True)
    runs = list((cfg.run_dir() / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert os.environ.get("WANDB_MODE") == before  # the process environment is left as it was


def test_only_rank_0_logs(synth_data, tmp_path, monkeypatch):
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, log="csv,tensorboard"))
    with train.experiment_logs(cfg, tmp_path) as cbs:
        assert [type(cb).__name__ for cb in cbs] == ["CSVLogger", "TensorBoardCallback"]
    monkeypatch.setattr(logs, "rank_distrib", lambda: 1)
    with train.experiment_logs(cfg, tmp_path) as cbs:
        assert cbs == []


def test_bad_or_missing_log_is_one_line(synth_data, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="log must be a comma list of csv, tensorboard, wandb; got 'csv,mlflow'"):
        build_config(overrides={"log": "csv,mlflow"})
    monkeypatch.setattr(logs.importlib.util, "find_spec", lambda name: None)
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, log="wandb"))
    with pytest.raises(ConfigError, match="--log wandb needs the wandb package: pip install wandb"):
        train.train_fold(cfg, quiet=True)
    assert not (tmp_path / "exp").exists()
