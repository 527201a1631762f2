"""Stratified k-fold assignment, written once to a CSV (beside the data, or in the work folder when the data are
read-only) and reused so folds never change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from seti_fastai.data.cadence import read_id_csv
from seti_fastai.errors import FoldError
from seti_fastai.io import atomic_write_csv, derived_path

DEFAULT_K = 4
DEFAULT_SEED = 42


def folds_name(k: int = DEFAULT_K, seed: int = DEFAULT_SEED, split: str = "train") -> str:
    """`folds_<split>_k<k>_seed<seed>.csv`: one file per choice, so two choices never overwrite each other."""
    return f"folds_{split}_k{k}_seed{seed}.csv"


def folds_path(root: Path | str, k: int = DEFAULT_K, seed: int = DEFAULT_SEED, split: str = "train") -> Path:
    """`<root>/folds_<split>_k<k>_seed<seed>.csv`, the fold file beside the data."""
    return Path(root) / folds_name(k, seed, split)


def make_folds(labels: pd.DataFrame, k: int = DEFAULT_K, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Assign each id a fold 0..k-1, stratified by target.

    The ids are sorted first, so the assignment depends on the set of ids and the seed only, not on row order.
    """
    if k < 2:
        raise FoldError(f"k must be at least 2, got {k}")
    counts = labels["target"].value_counts()
    if counts.min() < k or len(counts) < 2:
        raise FoldError(f"cannot make {k} stratified folds: class counts are {counts.to_dict()}")
    df = labels[["id", "target"]].sort_values("id", kind="stable").reset_index(drop=True)
    df["fold"] = -1
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(df)), df["target"].to_numpy())):
        df.loc[valid_idx, "fold"] = fold
    return df


def read_folds(path: Path | str, k: int | None = None) -> pd.DataFrame:
    """Read and validate a fold CSV (`id,target,fold`)."""
    df = read_id_csv(path, require_target=True)
    raw = pd.read_csv(path, dtype={"id": str})
    raw.columns = [str(c).strip() for c in raw.columns]
    if "fold" not in raw.columns:
        raise FoldError(f"{path}: missing column fold")
    fold = pd.to_numeric(raw["fold"], errors="coerce")
    upper = k if k is not None else int(fold.max()) + 1
    bad = ~fold.isin(range(upper))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise FoldError(f"{path}: row {i + 2}: fold {raw['fold'].iloc[i]!r} is not in 0..{upper - 1}")
    df["fold"] = fold.astype(np.int64)
    return df


def load_or_make_folds(
    labels: pd.DataFrame,
    root: Path | str,
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
    split: str = "train",
    work_dir: Path | str = "runs",
    chosen: bool = False,
) -> tuple[pd.DataFrame, Path, bool]:
    """Reuse the fold CSV for (k, seed) if it exists (beside the data, else in `work_dir`), else make and write it
    (beside the data when that folder is writable, else into `work_dir`; into `work_dir` when the user `chosen` it).

    Returns (folds, path, created). An existing file that no longer matches the labels is an error, not silently
    rewritten: delete it to re-split on purpose.
    """
    path = derived_path(root, folds_name(k, seed, split), work_dir, chosen)
    if path.is_file():
        folds = read_folds(path, k)
        merged = labels.merge(folds, on="id", how="outer", suffixes=("", "_folds"), indicator=True)
        if (merged["_merge"] != "both").any() or (merged["target"] != merged["target_folds"]).any():
            raise FoldError(f"{path}: ids or targets differ from the labels; delete it to make new folds")
        return folds, path, False
    folds = make_folds(labels, k, seed)
    try:
        atomic_write_csv(folds, path)
    except OSError as e:
        raise FoldError(f"{path}: cannot write the fold file ({e.strerror or e}); choose a writable work folder") from e
    return folds, path, True


def fold_summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold: number of cadences, positives, and the share of positives."""
    g = folds.groupby("fold")["target"]
    return pd.DataFrame({"n": g.size(), "positives": g.sum(), "pos_rate": g.mean().round(4)})


def check_fold(folds: pd.DataFrame, fold: int) -> None:
    """Raise if `fold` is out of range or its validation part holds one class only (AUC undefined)."""
    k = int(folds["fold"].max()) + 1
    if not 0 <= fold < k:
        raise FoldError(f"fold {fold} is out of range: the fold file has folds 0..{k - 1}")
    classes = folds.loc[folds["fold"] == fold, "target"].nunique()
    if classes < 2:
        raise FoldError(f"fold {fold}: validation set holds one class only, so ROC AUC is undefined")
