"""Metrics of scores against labels: ROC AUC with a bootstrap interval, log-loss, expected calibration error, and
the evaluation of a score file against a label file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import read_id_csv
from seti_fastai.data.tables import read_scores
from seti_fastai.errors import LabelFileError
from seti_fastai.model.heads import logit_np, sigmoid_np


def log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of log-odds `z` against 0/1 labels `y` (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def scores(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ROC AUC, log-loss and ECE of log-odds `z`."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, z)) if y.min() != y.max() else float("nan")
    return dict(auc=auc, logloss=log_loss(z, y), ece=expected_calibration_error(sigmoid_np(z), y))


def match_labels(predictions: pd.DataFrame, labels: pd.DataFrame, pred_path, label_path) -> pd.DataFrame:
    """Join on id: every predicted id must be labelled; the labels may hold more (an oof.csv against
    train_labels.csv scores its fold's cadences)."""
    extra = sorted(set(predictions["id"]) - set(labels["id"]))
    if extra:
        raise LabelFileError(
            f"{pred_path}: ids do not match {label_path}: {len(extra)} not in the labels (e.g. {extra[0]})"
        )
    return predictions[["id", "score"]].merge(labels[["id", "target"]], on="id")


def bootstrap_auc(
    y: np.ndarray, score: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """ROC AUC and a percentile bootstrap confidence interval (resampling cadences)."""
    from sklearn.metrics import roc_auc_score

    if y.min() == y.max():
        raise LabelFileError("the labels hold one class only; ROC AUC is undefined")
    auc = float(roc_auc_score(y, score))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() != y[idx].max():
            samples.append(roc_auc_score(y[idx], score[idx]))
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return auc, float(lo), float(hi)


def evaluate(pred_path: Path | str, label_path: Path | str, n_boot: int = 1000) -> dict:
    """ROC AUC with its bootstrap interval of a score file (any the toolkit writes, `read_scores`) against labels;
    log-loss and ECE too when the scores are the `target` probabilities of a prediction file (not for ranks, logits
    or the reference's SNR). The cadences scored are the file's: the labels may hold more."""
    predictions = read_scores(pred_path)
    labels = read_id_csv(label_path, require_target=True)
    joined = match_labels(predictions, labels, pred_path, label_path)
    y, score = joined["target"].to_numpy(), joined["score"].to_numpy()
    auc, lo, hi = bootstrap_auc(y, score, n_boot)
    column = predictions.attrs["column"]
    result = dict(auc=auc, ci_low=lo, ci_high=hi, n=len(joined), positives=int(y.sum()), column=column)
    if column == "target" and score.min() >= 0 and score.max() <= 1:
        z = logit_np(score)
        result.update(logloss=log_loss(z, y), ece=expected_calibration_error(score, y))
    return result
