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
from seti_fastai.data.tables import read_scores
from seti_fastai.errors import ConfigError, LabelFileError


def aligned(paths: list[Path | str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the first file and an (n_files, n_ids) score matrix; every other file must hold those ids."""
    series = [read_scores(p).set_index("id")["score"].rename(str(p)) for p in paths]
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


def blend(paths: list[Path | str], weights: np.ndarray, column: str = "rank") -> pd.DataFrame:
    """`id, rank` for the ids of the first file: the rank blend of all files' scores, in (0, 1] but not a
    probability (`column="target"` for Kaggle's submission header)."""
    ids, scores = aligned(paths)
    return pd.DataFrame({"id": ids, column: rank_blend(scores, check_weights(list(weights), len(paths)))})


def choose_weights(
    n_inputs: int, weights: str | None = None, valid: list[Path] | None = None, labels: Path | None = None
) -> tuple[list[float], dict | None]:
    """The blend weights of `seti-fastai blend`: a comma list (`weights`), tuned on validation scores of the same
    inputs (`valid` with `labels`: `tune_weight`'s result comes back too), or equal."""
    if valid and weights:
        raise ConfigError("give --weights or --valid, not both")
    if valid:
        if labels is None:
            raise ConfigError("--valid needs --labels (id,target of the validation cadences)")
        if len(valid) != n_inputs:
            raise ConfigError(f"--valid: {len(valid)} file(s) for {n_inputs} input(s); give one per input, in order")
        tuned = tune_weight(valid, labels)
        return tuned["weights"], tuned
    if weights:
        try:
            return [float(w) for w in weights.split(",")], None
        except ValueError:
            raise ConfigError(f"--weights: not a comma list of numbers: {weights!r}") from None
    return [1.0] * n_inputs, None
