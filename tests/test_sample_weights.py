"""--sample-weights: training cadences drawn in proportion to a per-id weight (adversarial_weights.csv), within the
share of positives --pos-share sets; bad weight files end in one line before the run directory exists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_flags, tiny_overrides
from fastai.torch_core import set_seed
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.errors import LabelFileError
from seti_fastai.learn.datablock import get_dls, read_sample_weights, sample_weights, training_items


def cfg_for(data, out, **extra):
    return build_config(overrides=tiny_overrides(data, out, **extra))


def test_importance_weighs_within_each_class_and_keeps_the_positive_share():
    targets = np.array([1, 1, 0, 0, 0])
    w = sample_weights(targets, 0.5, np.array([3.0, 1.0, 1.0, 1.0, 2.0]))
    np.testing.assert_allclose(w, [0.375, 0.125, 0.125, 0.125, 0.25])
    np.testing.assert_allclose(
        sample_weights(targets, None, np.array([3.0, 1.0, 1.0, 1.0, 2.0])), np.array([3, 1, 1, 1, 2]) / 8
    )
    np.testing.assert_allclose(sample_weights(targets, 0.5), [0.25, 0.25, 1 / 6, 1 / 6, 1 / 6])


@pytest.mark.parametrize("pos_share", [0.5, 0])
def test_the_weighted_draw_follows_the_file(synth_data, tmp_path, pos_share):
    data = synth_data[0]
    items = training_items(cfg_for(data, tmp_path))
    train = items[~items["is_valid"]].reset_index(drop=True)
    heavy = train.loc[train["target"] == 0, "id"].iloc[0]
    light = train.loc[train["target"] == 0, "id"].iloc[1]
    path = tmp_path / "w.csv"
    pd.DataFrame({"id": [heavy, light], "weight": [20.0, 0.1]}).to_csv(path, index=False)  # the others weigh 1
    dls = get_dls(cfg_for(data, tmp_path, sample_weights=str(path), pos_share=pos_share))
    wgts = pd.Series(dls.train.wgts, index=dls.train.items["id"].to_numpy())
    negatives = wgts[dls.train.items["target"].to_numpy() == 0]
    ones = negatives.drop([heavy, light])
    assert negatives[heavy] == pytest.approx(20 * ones.iloc[0]) and negatives[light] == pytest.approx(
        0.1 * ones.iloc[0]
    )
    if pos_share:
        assert 1 - negatives.sum() == pytest.approx(pos_share)  # the positives keep --pos-share
    set_seed(0)
    drawn = pd.Series(np.concatenate([dls.train.items["id"].to_numpy()[dls.train.get_idxs()] for _ in range(20)]))
    counts = drawn.value_counts()
    assert counts.get(heavy, 0) > 5 * counts[ones.index].mean()


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "file not found"),
        ("no_weight", "missing column(s) weight"),
        ("zero", "weight 0.0 is not a positive number"),
        ("nan", "is not a positive number"),
        ("unknown", "is not a training cadence of this run"),
        ("duplicate", "duplicate id"),
    ],
)
def test_bad_weight_files_are_one_clear_error(synth_data, tmp_path, case, fragment):
    data = synth_data[0]
    ids = pd.read_csv(data / "train_labels.csv", dtype={"id": str})["id"].iloc[:3].tolist()
    df = pd.DataFrame({"id": ids, "weight": [1.0, 2.0, 0.5]})
    if case == "no_weight":
        df = df.drop(columns="weight")
    elif case in ("zero", "nan"):
        df.loc[1, "weight"] = {"zero": 0.0, "nan": np.nan}[case]
    elif case == "unknown":
        df.loc[1, "id"] = "0" * 15
    elif case == "duplicate":
        df.loc[1, "id"] = ids[0]
    path = tmp_path / "w.csv"
    if case != "missing":
        df.to_csv(path, index=False)
    with pytest.raises(LabelFileError, match=r"w\.csv"):
        read_sample_weights(path, pd.Series(ids))
    result = CliRunner().invoke(app, ["train", *tiny_flags(data, tmp_path / "runs", sample_weights=path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0] and fragment in lines[0]
    assert not (tmp_path / "runs" / "exp" / "fold0").exists()
