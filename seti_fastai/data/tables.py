"""CSV files keyed by cadence id that the toolkit writes and reads back (pseudo-labels, score files), each read and
checked in one place. Needs numpy and pandas only, so `learn/` and `evaluate/` both read through here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import KaggleData, read_id_csv, read_id_numbers
from seti_fastai.errors import LabelFileError


def read_pseudo_labels(
    path: Path | str, data: KaggleData, exclude: pd.Series | list[str] | None = None
) -> pd.DataFrame:
    """A pseudo-label CSV, checked: `id, target` with unique test ids (not train ids, not in `exclude`) and
    finite targets in [0, 1] (0/1 or soft). Errors name the file and the first bad row."""
    path = Path(path)
    labels = read_id_numbers(path, "target", lambda t: (t >= 0) & (t <= 1), "a number in [0, 1]")
    ids, target = labels["id"], labels["target"].to_numpy()
    train_ids = set(data.read_labels("train")["id"]) if data.has_split("train") else set()
    test_ids = set(data.read_labels("test")["id"])
    excluded = set(exclude if exclude is not None else [])
    for i, cadence_id in enumerate(ids):
        if cadence_id in train_ids or cadence_id in excluded:
            raise LabelFileError(
                f"{path}: row {i + 2}: id {cadence_id} is a labelled training cadence; pseudo-labels are test cadences"
            )
        if cadence_id not in test_ids:
            raise LabelFileError(f"{path}: row {i + 2}: id {cadence_id} is not in {data.labels_path('test')}")
    return pd.DataFrame({"id": ids, "target": target if (target % 1).any() else target.astype(np.int64)})


SCORE_COLUMNS = ("logit", "score", "rank", "target")  # oof.csv, dedoppler_<split>.csv, a blend, submission.csv


def read_scores(path: Path | str) -> pd.DataFrame:
    """`id, score` from any CSV the toolkit writes that scores cadences: its `logit` column (oof.csv), else `score`
    (dedoppler_<split>.csv), else `rank` (a blend), else `target` (submission.csv, pseudo-labels); the ids checked as
    `read_id_csv` checks them, every score a finite number. `attrs["column"]` names the column read."""
    path = Path(path)
    read_id_csv(path, require_target=False)  # the file and its ids: one clear error for each way they are bad
    header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns.str.strip()
    column = next((c for c in SCORE_COLUMNS if c in header), None)
    if column is None:
        raise LabelFileError(f"{path}: no score column (one of {', '.join(SCORE_COLUMNS)})")
    scores = read_id_numbers(path, column, lambda s: np.ones(len(s), bool), "a number").rename(
        columns={column: "score"}
    )
    scores.attrs["column"] = column
    return scores
