"""Rank blending: the reference stacked with a model, weights tuned on validation only, one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.data.tables import read_scores
from seti_fastai.evaluate.blend import blend, rank_blend, tune_weight


def complementary(n: int = 400, seed: int = 0) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two detectors that each see a different half of the positives (plus noise)."""
    rng = np.random.default_rng(seed)
    ids = pd.Series([f"c{i:04d}" for i in range(n)])
    y = (rng.random(n) < 0.2).astype(int)
    half = rng.random(n) < 0.5
    a = rng.normal(size=n) + 3.0 * (y & half)
    b = rng.normal(size=n) + 3.0 * (y & ~half)
    return ids, y, a, b


def write(path, ids, column: str, values) -> str:
    pd.DataFrame({"id": ids, column: values}).to_csv(path, index=False)
    return str(path)


def test_rank_blend_is_the_weighted_mean_of_normalised_ranks():
    scores = np.array([[0.1, 0.9, 0.5], [30.0, 10.0, 20.0]])
    out = rank_blend(scores, np.array([3.0, 1.0]))
    expected = (3 * np.array([1, 3, 2]) / 3 + np.array([3, 1, 2]) / 3) / 4
    np.testing.assert_allclose(out, expected)


def test_score_column_follows_the_file_kind(tmp_path):
    ids = ["a", "b"]
    pd.DataFrame({"id": ids, "target": [1, 0], "logit": [-2.0, 3.0]}).to_csv(tmp_path / "oof.csv", index=False)
    pd.DataFrame({"id": ids, "score": [5.0, 6.0], "drift": [0.1, 0.0]}).to_csv(tmp_path / "dd.csv", index=False)
    assert read_scores(tmp_path / "oof.csv")["score"].tolist() == [-2.0, 3.0]  # the logit, not the label
    assert read_scores(tmp_path / "dd.csv")["score"].tolist() == [5.0, 6.0]


def test_blend_of_complementary_detectors_beats_each(tmp_path):
    ids, y, a, b = complementary()
    out = blend([write(tmp_path / "a.csv", ids, "target", a), write(tmp_path / "b.csv", ids, "score", b)], [1, 1])
    assert out["id"].tolist() == ids.tolist()
    assert roc_auc_score(y, out["rank"]) > max(roc_auc_score(y, a), roc_auc_score(y, b)) + 0.03


def test_tuned_weight_favours_the_informative_input(tmp_path):
    ids, y, a, _ = complementary(seed=1)
    noise = np.random.default_rng(2).normal(size=len(ids))
    labels = write(tmp_path / "labels.csv", ids, "target", y)
    r = tune_weight(
        [write(tmp_path / "a.csv", ids, "logit", a), write(tmp_path / "n.csv", ids, "score", noise)], labels
    )
    assert r["weights"][0] >= 0.8
    assert r["valid_auc"] >= r["input_aucs"][0] - 1e-9


def test_cli_tunes_on_valid_and_applies_to_test(tmp_path):
    ids, y, a, b = complementary(seed=3)
    v, t = slice(0, 200), slice(200, None)
    labels = write(tmp_path / "labels.csv", ids[v], "target", y[v])
    args = [
        "blend",
        write(tmp_path / "ta.csv", ids[t], "target", a[t]),
        write(tmp_path / "tb.csv", ids[t], "score", b[t]),
    ]
    args += ["--valid", write(tmp_path / "va.csv", ids[v], "logit", a[v])]
    args += ["--valid", write(tmp_path / "vb.csv", ids[v], "score", b[v]), "--labels", labels]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "blend.csv")])
    assert result.exit_code == 0, result.output
    assert "validation AUC" in result.output
    out = pd.read_csv(tmp_path / "blend.csv")
    assert roc_auc_score(y[t], out["rank"]) > max(roc_auc_score(y[t], a[t]), roc_auc_score(y[t], b[t]))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_id", "lacks 1 id(s)"),
        ("weights_count", "1 weight(s) for 2 input(s)"),
        ("weights_text", "not a comma list of numbers"),
        ("valid_count", "1 file(s) for 2 input(s)"),
        ("valid_no_labels", "--valid needs --labels"),
        ("no_score", "no score column"),
    ],
)
def test_bad_inputs_end_in_one_line_and_no_output(tmp_path, case, message):
    ids, y, a, b = complementary(n=40)
    first = write(tmp_path / "a.csv", ids, "target", a)
    second = write(
        tmp_path / "b.csv", ids[1:] if case == "missing_id" else ids, "score", b[1:] if case == "missing_id" else b
    )
    if case == "no_score":
        pd.DataFrame({"id": ids, "value": b}).to_csv(second, index=False)
    extra = {
        "weights_count": ["--weights", "1"],
        "weights_text": ["--weights", "1,x"],
        "valid_count": ["--valid", first, "--labels", write(tmp_path / "l.csv", ids, "target", y)],
        "valid_no_labels": ["--valid", first, "--valid", second],
    }.get(case, [])
    out = tmp_path / "blend.csv"
    result = CliRunner().invoke(app, ["blend", first, second, "--out", str(out), *extra])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_a_blend_is_a_rank_file_that_evaluate_scores_without_log_loss(tmp_path):
    from seti_fastai.evaluate.metrics import evaluate

    rng = np.random.default_rng(3)
    ids = [f"{i:015x}" for i in range(200)]
    y = (rng.random(200) < 0.3).astype(int)
    a = write(tmp_path / "a.csv", ids, "target", 1 / (1 + np.exp(-(2 * y + rng.normal(0, 1, 200)))))
    b = write(tmp_path / "b.csv", ids, "score", 3 * y + rng.normal(0, 2, 200))
    labels = write(tmp_path / "labels.csv", ids, "target", y)
    blended = tmp_path / "blend.csv"
    blend([a, b], [1, 1]).to_csv(blended, index=False)
    result = evaluate(blended, labels, n_boot=10)
    assert result["column"] == "rank" and "logloss" not in result and "ece" not in result
    assert {"logloss", "ece"} <= set(evaluate(a, labels, n_boot=10))  # a prediction's probabilities
    assert "logloss" not in evaluate(b, labels, n_boot=10)  # the reference's SNR
    assert list(blend([a, b], [1, 1], "target").columns) == ["id", "target"]  # --kaggle
