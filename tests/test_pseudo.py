"""Pseudo-labels: test cadences join the training split of every fold (never validation), hard and soft targets
reach the batches and the loss, bad files and bad choices end in one line, rounds repeat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_flags, tiny_overrides
from fastai.torch_core import set_seed
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.errors import ConfigError, LabelFileError
from seti_fastai.evaluate.pseudo import Selection
from seti_fastai.learn.datablock import get_dls, sample_weights, training_items
from seti_fastai.model.heads import SetiLoss


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def split_ids(data) -> list[str]:
    return pd.read_csv(data / "sample_submission.csv", dtype={"id": str})["id"].tolist()


def write_pseudo(path, ids, targets) -> str:
    pd.DataFrame({"id": ids, "target": targets}).to_csv(path, index=False)
    return str(path)


def cfg_for(data, out, **extra):
    return build_config(overrides=tiny_overrides(data, out, **extra))


def test_pseudo_ids_join_the_training_split_of_every_fold_never_validation(synth_data, tmp_path):
    data = synth_data[0]
    ids = split_ids(data)[:10]
    pseudo = write_pseudo(tmp_path / "p.csv", ids, [1, 0] * 5)
    for fold in range(4):
        plain = training_items(cfg_for(data, tmp_path, fold=fold))
        items = training_items(cfg_for(data, tmp_path, fold=fold, pseudo=pseudo))
        assert len(items) == len(plain) + len(ids)
        valid = items[items["is_valid"]]
        assert set(valid["id"]) == set(plain.loc[plain["is_valid"], "id"]) and not set(valid["id"]) & set(ids)
        added = items[items["id"].isin(ids)]
        assert len(added) == len(ids) and not added["is_valid"].any()
        assert all("/test/" in p for p in added["path"]) and added["target"].tolist() == [1, 0] * 5
    old = training_items(cfg_for(data, tmp_path, stage="pretrain", pseudo=pseudo))  # the pretrain stage too
    assert not old.loc[old["id"].isin(ids), "is_valid"].any() and old["id"].isin(ids).sum() == len(ids)


@pytest.mark.parametrize("soft", [False, True])
def test_hard_and_soft_labels_reach_the_batches(synth_data, tmp_path, soft):
    data = synth_data[0]
    ids = split_ids(data)
    positive = [i % 3 == 0 for i in range(len(ids))]
    targets = [0.93 if p else 0.04 for p in positive] if soft else [int(p) for p in positive]
    cfg = cfg_for(data, tmp_path, pseudo=write_pseudo(tmp_path / "p.csv", ids, targets), pos_share=0.5)
    items = training_items(cfg)
    items = items[items["is_valid"] | items["id"].isin(ids)]  # train on the pseudo-labels only
    set_seed(0)
    dls = get_dls(cfg, items)
    seen = torch.cat([y for _ in range(8) for _, y in dls.train]).numpy()
    assert set(np.round(seen, 4)) == set(np.round(np.float32(targets), 4))  # the file's targets, unchanged
    assert (seen >= 0.5).mean() == pytest.approx(0.5, abs=0.15)  # the sampler counts a soft 0.93 as positive
    out = torch.tensor([[0.3], [-1.2]])
    y = torch.tensor([0.93, 0.04])
    loss = SetiLoss("bce")(out, y)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(out.view(-1), y))  # soft targets in the loss


def test_sample_weights_round_soft_targets():
    w = sample_weights(np.array([0.93, 0.07, 0.04, 1.0]), 0.5)
    np.testing.assert_allclose(w, [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(sample_weights(np.array([1, 0, 0, 0]), 0.5), [0.5, 1 / 6, 1 / 6, 1 / 6])


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ("train", "is a labelled training cadence"),
        ("unknown", "is not in"),
        ("duplicate", "duplicate id"),
        ("nan", "is not a number in [0, 1]"),
        ("above", "target 1.5 is not a number in [0, 1]"),
        ("negative", "target -0.1 is not a number in [0, 1]"),
        ("no_target", "missing column(s) target"),
    ],
)
def test_bad_pseudo_files_are_one_clear_error(synth_data, tmp_path, rows, fragment):
    data = synth_data[0]
    ids = split_ids(data)[:3]
    train_id = pd.read_csv(data / "train_labels.csv", dtype={"id": str})["id"].iloc[0]
    df = pd.DataFrame({"id": ids, "target": [1.0, 0.0, 0.5]})
    if rows == "train":
        df.loc[1, "id"] = train_id
    elif rows == "unknown":
        df.loc[1, "id"] = "0" * 15
    elif rows == "duplicate":
        df.loc[1, "id"] = ids[0]
    elif rows in ("nan", "above", "negative"):
        df.loc[1, "target"] = {"nan": np.nan, "above": 1.5, "negative": -0.1}[rows]
    else:
        df = df.drop(columns="target")
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    with pytest.raises(LabelFileError, match="row 3" if rows != "no_target" else "p.csv"):
        training_items(cfg_for(data, tmp_path, pseudo=str(path)))
    result = run("train", *tiny_flags(data, tmp_path / "runs", pseudo=path))
    one_line_error(result, str(path), fragment)
    assert not (tmp_path / "runs" / "exp" / "fold0" / "model.pth").exists()


def test_selection_by_thresholds_and_top_k():
    pred = pd.DataFrame({"id": list("abcdef"), "target": [0.95, 0.5, 0.02, 0.91, 0.2, 0.08]})
    hard = Selection().validate().select(pred)
    assert hard["id"].tolist() == ["a", "c", "d", "f"] and hard["target"].tolist() == [1, 0, 1, 0]
    soft = Selection(0.9, 0.05, soft=True).validate().select(pred, round_=2)
    assert soft["id"].tolist() == ["a", "c", "d"] and soft["target"].tolist() == [0.95, 0.02, 0.91]
    assert (soft["round"] == 2).all()
    top = Selection(top_k_pos=1, top_k_neg=2).validate().select(pred)
    assert top["id"].tolist() == ["a", "c", "f"] and top["target"].tolist() == [1, 0, 0]
    with pytest.raises(ConfigError, match="no test cadence is confident"):
        Selection(0.99, 0.01).validate().select(pred)
    with pytest.raises(ConfigError, match="exceed the 6 test cadences"):
        Selection(top_k_pos=4, top_k_neg=3).validate().select(pred)


def test_pseudo_label_command_rounds_and_errors(synth_data, trained_runs, tmp_path):
    data = synth_data[0]
    exp, runs = trained_runs
    out = tmp_path / "pseudo.csv"
    # the tiny runs are unsure: the 4 most and 4 least probable test cadences
    result = run(
        "pseudo-label", *runs, "--data", data, "--out", out, "--top-k-pos", 4, "--top-k-neg", 4, "--workers", 0
    )
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(out, dtype={"id": str})
    assert list(labels.columns) == ["id", "target", "prob", "round"] and len(labels) == 8
    assert set(labels["id"]) <= set(split_ids(data)) and labels["target"].sum() == 4 and (labels["round"] == 1).all()
    assert labels.loc[labels["target"] == 1, "prob"].min() >= labels.loc[labels["target"] == 0, "prob"].max()
    # round 2: a run trained with the pseudo-labels (soft ones) labels the test split again
    soft = tmp_path / "soft.csv"
    assert (
        run("pseudo-label", *runs, "--data", data, "--out", soft, "--top-k-pos", 3, "--soft", "--workers", 0).exit_code
        == 0
    )
    result = run("train", *tiny_flags(data, tmp_path / "r2", pseudo=soft))
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.csv"
    result = run(
        "pseudo-label", tmp_path / "r2" / "exp" / "fold0", "--data", data, "--out", again, "--top-k-neg", 2,
        "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(again)["round"] == 2).all()
    # user errors: one line, no file
    bad = tmp_path / "bad.csv"
    one_line_error(run("pseudo-label", *runs, "--data", data, "--out", bad, "--pos-threshold", 1.5), "pos_threshold")
    one_line_error(
        run("pseudo-label", *runs, "--data", data, "--out", bad, "--pos-threshold", 0.2, "--neg-threshold", 0.3),
        "must be below",
    )
    one_line_error(
        run("pseudo-label", *runs, "--data", data, "--out", bad, "--pos-threshold", 0.9, "--top-k-pos", 3), "not both"
    )
    one_line_error(
        run("pseudo-label", *runs, "--data", data, "--out", bad, "--pos-threshold", 1.0, "--neg-threshold", 0.0,
            "--workers", 0),
        "no test cadence is confident",
    )  # fmt: skip
    one_line_error(run("pseudo-label", exp / "fold9", "--data", data, "--out", bad), "fold9", "not found")
    assert not bad.exists()
