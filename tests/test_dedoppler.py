"""The de-Doppler reference: it finds a drifting needle in ON panels, not in OFF panels; its commands fail cleanly."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import TINY, one_line_error, run

from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.dedoppler import DedopplerConfig, dedoppler, drift_sums

T, GAP = 273, 12


def needle(drift: float, f_mid: float, panels: tuple[int, ...], brightness: float = 0.6) -> np.ndarray:
    """A straight line on the cadence timeline (slews included), drawn in `panels` only."""
    x = np.zeros((6, T, 256), np.float32)
    t_mid = (5 * (T + GAP) + T - 1) / 2
    for p in panels:
        rows = np.arange(T)
        channels = np.rint(f_mid + drift * (p * (T + GAP) + rows - t_mid)).astype(int)
        ok = (channels >= 0) & (channels < 256)
        x[p, rows[ok], channels[ok]] = brightness
    return x


def test_finds_the_needle_and_ranks_it_above_decoy_and_noise():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 6, T, 256)).astype(np.float32)
    signal = [np.zeros((6, T, 256), np.float32), needle(0.05, 100, (0, 2, 4)), needle(0.05, 100, (1, 3, 5))]
    score, drift, channel = dedoppler(torch.from_numpy(noise + np.stack(signal)))
    assert score[1] > 2 * score[0] and score[1] > 2 * score[2], score
    assert abs(drift[1].item() - 0.05) <= 0.004 and abs(channel[1].item() - 100) <= 2


def test_drift_sums_match_a_plain_loop():
    cfg = DedopplerConfig(pool=0, max_drift=0.02, drift_step=0.01)
    x = torch.randn(1, 6, T, 256)
    sums = drift_sums(x, cfg)
    for i, d in enumerate(cfg.drifts()):
        t_mid = (5 * (T + GAP) + T - 1) / 2
        for p in (0, 5):
            shift = np.floor(d * (p * (T + GAP) + np.arange(T) - t_mid) + 0.5).astype(int)
            for f in (0, 128, 255):
                c = f + shift
                ok = (c >= 0) & (c < 256)
                expected = x[0, p].numpy()[np.arange(T)[ok], c[ok]].sum()
                assert abs(sums[0, i, p, f].item() - expected) < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [(dict(drift_step=0.0), "drift step must be > 0"), (dict(max_drift=-0.1), "max drift must be")],
)
def test_empty_drift_grid_is_one_clear_error(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DedopplerConfig(**kwargs).validate()


@pytest.fixture
def train_copy(synth_data, tmp_path):
    """The synthetic train split alone, in a writable folder."""
    root = tmp_path / "data"
    shutil.copytree(synth_data[0] / "train", root / "train")
    shutil.copy(synth_data[0] / "train_labels.csv", root)
    return root


def test_cli_errors_leave_no_output(synth_data, tmp_path):
    out = tmp_path / "scores.csv"
    one_line_error(run("dedoppler", tmp_path / "nowhere", "--out", out), "nowhere: data folder not found")
    one_line_error(run("dedoppler", synth_data[0], "--drift-step", 0, "--out", out), "drift step must be > 0")
    assert not out.exists() and not list(tmp_path.glob(".scores*"))


def test_cli_train_writes_scores_auc_and_report_column(train_copy, tmp_path):
    runs = tmp_path / "runs"
    assert run("train", "--data", train_copy, "--out", runs, *TINY).exit_code == 0  # also writes the fold file
    result = run("dedoppler", train_copy, "--workers", 0, "--bs", 16)
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(train_copy / "dedoppler_train.csv", dtype={"id": str})  # beside the (writable) data
    assert list(scores.columns) == ["id", "score", "drift", "channel"] and len(scores) == 64
    assert "cadences/s" in result.stdout and "AUC " in result.stdout and "fold 3 " in result.stdout
    result = run("report", runs / "exp")
    assert result.exit_code == 0, result.output
    assert "de-Doppler AUC |" in result.stdout and "de-Doppler reference" in result.stdout


def test_evaluate_reference_line(synth_data, tmp_path):
    root, hidden = synth_data
    scores = tmp_path / "dd_test.csv"
    assert run("dedoppler", root, "--split", "test", "--out", scores, "--workers", 0).exit_code == 0
    labels = pd.read_csv(hidden / "test_labels.csv", dtype={"id": str})
    labels.assign(target=np.linspace(0, 1, len(labels))).to_csv(tmp_path / "pred.csv", index=False)
    result = run("evaluate", tmp_path / "pred.csv", hidden / "test_labels.csv", "--reference", scores, "--n-boot", 50)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith(f"reference {scores}: AUC ")
    (tmp_path / "short.csv").write_text("id,score\nabc,1.0\n")
    one_line_error(
        run("evaluate", tmp_path / "pred.csv", hidden / "test_labels.csv", "--reference", tmp_path / "short.csv"),
        "no score for",
    )
