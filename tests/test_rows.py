"""Rows per panel are a property of the data: `synth --rows 16` makes Green Bank-shaped cadences (the 273-row ones
binned in time), the reference and training take them, a run records them, and data or files of other rows are
refused in one line (or, for a scan, resampled on request)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config, load_run_config
from seti_fastai.data.cadence import KaggleData, load_cadence, standardize_panels
from seti_fastai.data.inject import bin_rows
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.dedoppler import score_files
from seti_fastai.evaluate.predict import plan_prediction
from seti_fastai.learn.train import train_fold
from seti_fastai.observe.synthetic import Needle, write_observation

EASY = dict(n_train=160, n_test=40, pos_rate=0.3, seed=5, brightness=(2.0, 6.0), decoy_rate=0.0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    return {
        rows: write_synthetic(SynthConfig(**EASY, rows=rows), root / f"r{rows}", workers=2)[0] for rows in (16, 273)
    }


@pytest.fixture(scope="module")
def run16(sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs16")
    train_fold(build_config(overrides=tiny_overrides(sets[16], out, epochs=2)), quiet=True)
    return out / "exp" / "fold0"


def test_sixteen_row_cadences_are_the_273_row_ones_binned_in_time(sets):
    ids = KaggleData(sets[16]).read_labels("train")["id"][:5]
    for i in ids:
        short = load_cadence(KaggleData(sets[16]).cadence_path("train", i))
        full = load_cadence(KaggleData(sets[273]).cadence_path("train", i))
        assert short.shape == (6, 16, 256)
        np.testing.assert_allclose(short, standardize_panels(bin_rows(full, 16)), atol=0.02)


def test_the_reference_finds_needles_in_sixteen_rows_with_its_grid_scaled(sets):
    kaggle = KaggleData(sets[16])
    labels = kaggle.read_labels("train")
    scores = score_files(kaggle.paths("train", labels["id"]))
    assert roc_auc_score(labels["target"], scores["score"]) > 0.9


def test_a_run_records_its_rows_and_other_data_are_refused(sets, run16):
    assert load_run_config(run16).rows == 16
    with pytest.raises(ConfigError, match=r"trained on 16-row cadences; the test cadences of .* hold 273 rows"):
        plan_prediction([run16], sets[273])
    with pytest.raises(ConfigError, match=r"--rows 273: the train cadences of .* hold 16 rows per panel"):
        train_fold(build_config(overrides=tiny_overrides(sets[16], run16.parent.parent / "x", rows=273)), quiet=True)


def test_a_sixteen_row_run_scans_observations_without_resampling(run16, tmp_path):
    files = write_observation(tmp_path / "obs", [Needle(500, -0.1, snr=40)], channels=1024)
    out = tmp_path / "events.csv"
    result = CliRunner().invoke(
        app, ["scan", *map(str, files), "--run", str(run16), "--threshold", "0", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    events = pd.read_csv(out)
    assert len(events) >= 1 and events["probability"].between(0, 1).all()
