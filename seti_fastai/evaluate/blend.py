"""Rank blending of score files: a model's predictions stacked with the de-Doppler reference (or other models).

Scores on different scales (probabilities, logits, de-Doppler drift sums) are made comparable by their normalised
rank; the blend is a weighted mean of ranks. With validation scores and labels, the weight of a two-input blend is
chosen on the validation cadences (the fold's out-of-fold predictions), never on the cadences it is applied to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from seti_fastai.data.cadence import read_id_csv
from seti_fastai.errors import ConfigError, LabelFileError

SCORE_COLUMNS = ("logit", "score", "target")  # oof.csv, dedoppler_<split>.csv, submission.csv


def read_scores(path: Path | str) -> pd.Series:
    """One score per id from a CSV: its `logit` column (oof.csv), else `score` (dedoppler), else `target`."""
    path = Path(path)
    df = read_id_csv(path, require_target=False)
    raw = pd.read_csv(path, dtype={"id": str})
    column = next((c for c in SCORE_COLUMNS if c in raw.columns), None)
    if column is None:
        raise LabelFileError(f"{path}: no score column (one of {', '.join(SCORE_COLUMNS)})")
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelFileError(f"{path}: row {i + 2}: {column} {raw[column].iloc[i]} is not a number")
    return pd.Series(values, index=df["id"].to_numpy(), name=str(path))


def aligned(paths: list[Path | str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the first file and an (n_files, n_ids) score matrix; every other file must hold those ids."""
    series = [read_scores(p) for p in paths]
    ids = series[0].index.to_numpy()
    for path, s in zip(paths[1:], series[1:], strict=True):
        missing = pd.Index(ids).difference(s.index)
        if len(missing):
            raise LabelFileError(f"{path}: lacks {len(missing)} id(s) of {paths[0]} (e.g. {missing[0]})")
    return ids, np.stack([s.loc[ids].to_numpy() for s in series])


def rank_blend(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of each row's normalised ranks (ties share their mean rank); in (0, 1]."""
    ranks = np.stack([rankdata(row) / len(row) for row in scores])
    return np.asarray(weights, float) @ ranks / float(np.sum(weights))


def check_weights(weights: list[float], n: int) -> np.ndarray:
    w = np.asarray(weights, float)
    if len(w) != n:
        raise ConfigError(f"--weights: {len(w)} weight(s) for {n} input(s)")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ConfigError(f"--weights must be non-negative with a positive sum; got {','.join(map(str, weights))}")
    return w


def tune_weight(valid_paths: list[Path | str], labels_path: Path | str, step: float = 0.05) -> dict:
    """The weight of the first of two inputs (the second gets 1 - w) that maximises validation AUC."""
    if len(valid_paths) != 2:
        raise ConfigError(f"tuning a blend takes two inputs; got {len(valid_paths)} (give --weights instead)")
    ids, scores = aligned(valid_paths)
    labels = read_id_csv(labels_path, require_target=True).set_index("id")["target"]
    missing = pd.Index(ids).difference(labels.index)
    if len(missing):
        raise LabelFileError(
            f"{labels_path}: no label for {len(missing)} id(s) of {valid_paths[0]} (e.g. {missing[0]})"
        )
    y = labels.loc[ids].to_numpy()
    if y.min() == y.max():
        raise LabelFileError(f"{valid_paths[0]}: its cadences hold one class only; cannot tune a blend")
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    aucs = [float(roc_auc_score(y, rank_blend(scores, np.array([w, 1 - w])))) for w in grid]
    best = int(np.argmax(aucs))
    return dict(
        weights=[float(grid[best]), float(1 - grid[best])], valid_auc=aucs[best], n=len(ids),
        input_aucs=[float(roc_auc_score(y, s)) for s in scores],
    )  # fmt: skip


def blend(paths: list[Path | str], weights: np.ndarray) -> pd.DataFrame:
    """`id, target` for the ids of the first file: the rank blend of all files' scores."""
    ids, scores = aligned(paths)
    return pd.DataFrame({"id": ids, "target": rank_blend(scores, check_weights(list(weights), len(paths)))})
