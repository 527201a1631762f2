"""Adversarial validation: AUC near 0.5 when train and test come from one distribution, well above when the test
split differs in a way its statistics can see; the weights and the test-like fold are usable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.data.cadence import load_cadence
from seti_fastai.data.folds import read_folds
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.evaluate.adversarial import FEATURES, WEIGHT_CLIP, adversarial_validation, cadence_features
from seti_fastai.learn.datablock import training_items


def kaggle_folder(root: Path, train: list[tuple[Path, str, int]], test: list[tuple[Path, str]]) -> Path:
    """A data folder in the Kaggle layout whose files are links to other sets' cadences: train (file, id, target),
    test (file, id)."""
    for split, rows in (("train", train), ("test", test)):
        for path, cadence_id, *_ in rows:
            (root / split / cadence_id[0]).mkdir(parents=True, exist_ok=True)
            os.symlink(path, root / split / cadence_id[0] / f"{cadence_id}.npy")
    pd.DataFrame([(i, t) for _, i, t in train], columns=["id", "target"]).to_csv(root / "train_labels.csv", index=False)
    pd.DataFrame({"id": [i for _, i in test], "target": 0.5}).to_csv(root / "sample_submission.csv", index=False)
    return root


def train_rows(data: Path) -> list[tuple[Path, str, int]]:
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    return [
        (data / "train" / i[0] / f"{i}.npy", i, int(t)) for i, t in zip(labels["id"], labels["target"], strict=True)
    ]


@pytest.fixture(scope="module")
def halves(bright_data, tmp_path_factory) -> Path:
    """No shift: the 240 train cadences of `bright_data` split at random into a train and a test half."""
    rows = train_rows(bright_data[0])
    order = np.random.default_rng(0).permutation(len(rows))
    train = [rows[i] for i in order[:120]]
    test = [rows[i][:2] for i in order[120:]]
    return kaggle_folder(tmp_path_factory.mktemp("halves") / "data", train, test)


@pytest.fixture(scope="module")
def shifted(bright_data, tmp_path_factory) -> Path:
    """A shift the statistics can see: test cadences from a set where every negative carries a decoy (a signal in
    all six panels or the OFF panels only) and every needle is a sine path, against train cadences (the first half
    of `bright_data`) with no decoys and mostly straight needles, at the same needle brightness."""
    other = write_synthetic(
        SynthConfig(
            n_train=1, n_test=120, pos_rate=0.3, seed=3, brightness=(3.0, 8.0), decoy_rate=1.0,
            test_shape_weights={"sine": 1.0},
        ),
        tmp_path_factory.mktemp("other") / "data",
        workers=2,
    )[0]  # fmt: skip
    test_ids = pd.read_csv(other / "sample_submission.csv", dtype={"id": str})["id"]
    test = [(other / "test" / i[0] / f"{i}.npy", i) for i in test_ids]
    return kaggle_folder(tmp_path_factory.mktemp("shifted") / "data", train_rows(bright_data[0])[:120], test)


def test_features_of_one_cadence(bright_data):
    path = next((bright_data[0] / "train").rglob("*.npy"))
    f = cadence_features(load_cadence(path))
    assert f.shape == (len(FEATURES),) and np.isfinite(f).all()
    assert f[FEATURES.index("p0_std")] == pytest.approx(1.0, abs=0.01)  # the panels are standardised


def test_no_shift_gives_auc_near_chance(halves, tmp_path):
    r = adversarial_validation(halves, tmp_path / "adv", n_boot=100)
    assert r["auc"] < 0.62 and r["ci_low"] < 0.55, r


def test_a_visible_shift_is_found_and_gives_a_test_like_fold(shifted, tmp_path):
    out = tmp_path / "adv"
    r = adversarial_validation(shifted, out, valid_share=0.25, weights=True, n_boot=100)
    assert r["auc"] > 0.7 and r["ci_low"] > 0.6, r
    assert json.loads((out / "adversarial.json").read_text())["auc"] == pytest.approx(r["auc"])
    oof = pd.read_csv(out / "adversarial_oof.csv", dtype={"id": str})
    assert len(oof) == 240 and oof["p_test"].is_monotonic_decreasing
    assert oof.loc[oof["split"] == "test", "p_test"].mean() > oof.loc[oof["split"] == "train", "p_test"].mean()
    # weights: one per train cadence, clipped, larger for the more test-like
    w = pd.read_csv(out / "adversarial_weights.csv", dtype={"id": str})
    assert len(w) == 120 and w["weight"].between(*WEIGHT_CLIP).all()
    assert np.corrcoef(w["p_test"], w["weight"])[0, 1] > 0.5
    # the test-like fold: a quarter of each class, the most test-like, readable as a 2-fold file by training
    folds = read_folds(out / "adversarial_folds.csv", k=2)
    merged = folds.merge(w, on="id")
    for _, g in merged.groupby("target"):
        assert (g["fold"] == 0).sum() == round(len(g) * 0.25)
        assert g.loc[g["fold"] == 0, "p_test"].min() >= g.loc[g["fold"] == 1, "p_test"].max()
    work = tmp_path / "runs"
    work.mkdir()
    (work / "folds_train_k2_seed777.csv").write_text((out / "adversarial_folds.csv").read_text())
    cfg = build_config(overrides=tiny_overrides(shifted, work, n_folds=2, fold_seed=777, fold=0))
    items = training_items(cfg)
    assert set(items.loc[items["is_valid"], "id"]) == set(folds.loc[folds["fold"] == 0, "id"])


def test_adversarial_command_and_its_errors(halves, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["adversarial", str(halves), "--out", str(tmp_path / "a"), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert "adversarial AUC" in result.stdout and "most test-like train cadences" in result.stdout
    for args, fragment in (
        (["--valid-share", "1.5"], "valid_share must be in (0, 1)"),
        (["--n-splits", "1"], "n_splits must be at least 2"),
    ):
        result = runner.invoke(app, ["adversarial", str(halves), "--out", str(tmp_path / "b"), *args])
        assert result.exit_code == 2 and fragment in result.stderr, result.output
    result = runner.invoke(app, ["adversarial", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "data folder not found" in result.stderr
    assert not (tmp_path / "b").exists()
