"""Adversarial validation: can a classifier tell train cadences from test cadences?

Cheap per-cadence statistics (per panel: moments, quantiles, tails, column and row energy; per cadence: the ON
minus OFF column means) feed scikit-learn's `HistGradientBoostingClassifier`; stratified k-fold gives every cadence
an out-of-fold probability of being a test cadence. ROC AUC near 0.5: the splits look alike to these statistics
(a shift they cannot see, such as needle shapes at a low positive rate, stays invisible). Well above 0.5: they
differ, and the most test-like train cadences make a validation split closer to the test set.

OUT/adversarial.json        AUC, bootstrap CI, counts, the features that separate the splits most
OUT/adversarial_oof.csv     id, split, target (train), p_test for every cadence, most test-like first
OUT/adversarial_folds.csv   id, target, fold of train: fold 0 = the most test-like share of each class
OUT/adversarial_weights.csv with weights: id, p_test, weight (the density ratio test/train, clipped)
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import OFF_PANELS, ON_PANELS, KaggleData, load_cadence
from seti_fastai.errors import ConfigError, DataLayoutError
from seti_fastai.io import atomic_write_csv, atomic_write_json

PANEL_STATS = ("mean", "std", "min", "q01", "q50", "q99", "max", "skew", "kurtosis", "col_energy", "row_energy")
CADENCE_STATS = ("onoff_max", "onoff_min", "onoff_std", "on_col_energy", "off_col_energy")
FEATURES = tuple(f"p{p}_{s}" for p in range(6) for s in PANEL_STATS) + CADENCE_STATS
WEIGHT_CLIP = (0.1, 10.0)
TEST_LIKE_SEED = 777  # the fold seed under which adversarial_folds.csv is used as a 2-fold split


def cadence_features(cadence: np.ndarray) -> np.ndarray:
    """The statistics `FEATURES` of one (6, 273, 256) cadence, float64.

    Per panel: mean, std, min, 1/50/99 % quantiles, max, skewness, kurtosis (tails), the std of the column means
    (drift-free power: stationary lines) and of the row means (broadband bursts). Per cadence: max, min and std over
    channels of the ON-minus-OFF column means, and the column energy of the ON and OFF panels together.
    """
    x = cadence.astype(np.float32, copy=False).reshape(6, -1)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True) + 1e-6
    z = (x - mean) / std
    z2 = z * z  # products, not z**3 / z**4: float32 pow is 50x slower
    q = np.quantile(x, [0.01, 0.5, 0.99], axis=1)
    cols = cadence.mean(axis=1)  # (6, 256)
    rows = cadence.mean(axis=2)  # (6, 273)
    per_panel = np.stack(
        [
            mean[:, 0], std[:, 0], x.min(axis=1), q[0], q[1], q[2], x.max(axis=1),
            (z2 * z).mean(axis=1), (z2 * z2).mean(axis=1), cols.std(axis=1), rows.std(axis=1),
        ],
        axis=1,
    )  # fmt: skip
    onoff = cols[list(ON_PANELS)].mean(axis=0) - cols[list(OFF_PANELS)].mean(axis=0)
    per_cadence = [
        onoff.max(), onoff.min(), onoff.std(), cols[list(ON_PANELS)].mean(axis=0).std(),
        cols[list(OFF_PANELS)].mean(axis=0).std(),
    ]  # fmt: skip
    return np.concatenate([per_panel.ravel(), per_cadence]).astype(np.float64)


def _features_of(paths: list[str]) -> np.ndarray:
    return np.stack([cadence_features(load_cadence(p)) for p in paths])


def split_features(
    paths: list[Path], workers: int = 0, progress: Callable[[int], None] | None = None, chunk: int = 64
) -> np.ndarray:
    """(n, len(FEATURES)) statistics of the cadence files, in order; `workers` processes (0: this one)."""
    chunks = [[str(p) for p in paths[i : i + chunk]] for i in range(0, len(paths), chunk)]
    out = []
    if workers <= 1:
        results = map(_features_of, chunks)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_features_of, chunks)
    try:
        for block in results:
            out.append(block)
            if progress is not None:
                progress(len(block))
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    return np.concatenate(out) if out else np.zeros((0, len(FEATURES)))


def classifier(seed: int = 0):
    """The train-vs-test classifier: small gradient-boosted trees (scikit-learn)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=10, l2_regularization=1.0,
        early_stopping=False, random_state=seed,
    )  # fmt: skip


def check_options(n_splits: int, valid_share: float) -> None:
    if n_splits < 2:
        raise ConfigError(f"n_splits must be at least 2; got {n_splits}")
    if not 0.0 < valid_share < 1.0:
        raise ConfigError(f"valid_share must be in (0, 1); got {valid_share}")


def adversarial_scores(
    x: np.ndarray, is_test: np.ndarray, n_splits: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Out-of-fold P(test) of every row (stratified k-fold), and the features ranked by permutation importance
    (drop of ROC AUC when shuffled) on the first held-out fold."""
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(is_test.astype(int), minlength=2)
    if counts.min() < n_splits:
        raise DataLayoutError(f"need at least {n_splits} train and test cadences each; got {counts[0]} and {counts[1]}")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    p = cross_val_predict(classifier(seed), x, is_test, cv=cv, method="predict_proba")[:, 1]
    fit_idx, held_idx = next(cv.split(x, is_test))
    model = classifier(seed).fit(x[fit_idx], is_test[fit_idx])
    imp = permutation_importance(
        model, x[held_idx], is_test[held_idx], scoring="roc_auc", n_repeats=3, random_state=seed
    )
    ranked = sorted(zip(FEATURES, imp.importances_mean.tolist(), strict=True), key=lambda t: -t[1])
    return p, ranked


def density_weights(p_test: np.ndarray, n_train: int, n_test: int) -> np.ndarray:
    """Importance weights of train cadences: p / (1 - p) * n_train / n_test (the density ratio test/train the
    classifier estimates, corrected for the split sizes), clipped to `WEIGHT_CLIP`."""
    p = np.clip(p_test, 1e-6, 1 - 1e-6)
    return np.clip(p / (1 - p) * n_train / n_test, *WEIGHT_CLIP)


def test_like_folds(train: pd.DataFrame, valid_share: float) -> pd.DataFrame:
    """`id, target, fold` of train: fold 0 holds the `valid_share` most test-like cadences of each class, fold 1 the
    rest (a 2-fold file `training_items` can read; see the README)."""
    fold = np.ones(len(train), dtype=np.int64)
    for _, group in train.groupby("target"):
        n = max(1, round(len(group) * valid_share))
        fold[train.index.get_indexer(group.nlargest(n, "p_test").index)] = 0
    return pd.DataFrame({"id": train["id"], "target": train["target"], "fold": fold})


def adversarial_validation(
    data: Path | str,
    out: Path | str,
    n_splits: int = 5,
    seed: int = 0,
    valid_share: float = 0.25,
    weights: bool = False,
    n_boot: int = 1000,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train-vs-test classification of `data`; writes the files listed in the module docstring to `out` and returns
    the summary (also `adversarial.json`) with `most_test_like`, the train rows sorted by P(test)."""
    from seti_fastai.evaluate.metrics import bootstrap_auc

    check_options(n_splits, valid_share)
    kaggle = KaggleData(data)
    train = kaggle.read_labels("train")
    test = kaggle.read_labels("test")[["id"]]
    for split, df in (("train", train), ("test", test)):
        kaggle.check_files(split, df["id"])
    x = np.concatenate(
        [split_features(kaggle.paths(s, df["id"]), workers, progress) for s, df in (("train", train), ("test", test))]
    )
    is_test = np.r_[np.zeros(len(train), dtype=np.int64), np.ones(len(test), dtype=np.int64)]
    p, ranked = adversarial_scores(x, is_test, n_splits, seed)
    auc, lo, hi = bootstrap_auc(is_test, p, n_boot, seed)
    train = train.assign(p_test=p[: len(train)])
    oof = pd.concat(
        [train.assign(split="train"), test.assign(split="test", target=pd.NA, p_test=p[len(train) :])],
        ignore_index=True,
    )[["id", "split", "target", "p_test"]].sort_values("p_test", ascending=False, kind="stable")
    out = Path(out)
    atomic_write_csv(oof, out / "adversarial_oof.csv")
    atomic_write_csv(test_like_folds(train, valid_share), out / "adversarial_folds.csv")
    if weights:
        w = density_weights(train["p_test"].to_numpy(), len(train), len(test))
        atomic_write_csv(train[["id", "p_test"]].assign(weight=w), out / "adversarial_weights.csv")
    summary = dict(
        auc=auc, ci_low=lo, ci_high=hi, n_train=len(train), n_test=len(test), n_splits=n_splits, seed=seed,
        features=len(FEATURES), top_features=[dict(feature=f, auc_drop=round(v, 4)) for f, v in ranked[:8]],
    )  # fmt: skip
    atomic_write_json(out / "adversarial.json", summary)
    return dict(summary, most_test_like=train.sort_values("p_test", ascending=False, kind="stable"))
