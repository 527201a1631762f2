"""Stratified folds: balanced, stable across runs and row orders, reused from disk."""

from __future__ import annotations

import pandas as pd
import pytest

from seti_fastai.data.folds import check_fold, fold_summary, folds_path, load_or_make_folds, make_folds
from seti_fastai.errors import FoldError


@pytest.fixture
def labels() -> pd.DataFrame:
    ids = [f"{i:015x}" for i in range(200)]
    return pd.DataFrame({"id": ids, "target": [int(i % 10 == 0) for i in range(200)]})


def test_folds_are_stratified(labels):
    summary = fold_summary(make_folds(labels, k=4, seed=1))
    assert summary["n"].tolist() == [50, 50, 50, 50]
    assert summary["positives"].tolist() == [5, 5, 5, 5]


def test_folds_depend_on_ids_and_seed_only(labels):
    a = make_folds(labels, seed=1)
    b = make_folds(labels.sample(frac=1.0, random_state=0), seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(make_folds(labels, seed=2)["fold"])


def test_fold_file_is_written_once_and_reused(tmp_path, labels):
    folds, path, created = load_or_make_folds(labels, tmp_path, k=4, seed=5)
    assert created and path == folds_path(tmp_path, 4, 5)
    before = path.read_bytes()
    again, _, created_again = load_or_make_folds(labels.iloc[::-1], tmp_path, k=4, seed=5)
    assert not created_again and path.read_bytes() == before
    pd.testing.assert_frame_equal(folds, again)


def test_stale_fold_file_is_an_error(tmp_path, labels):
    load_or_make_folds(labels, tmp_path, seed=5)
    with pytest.raises(FoldError, match="ids or targets differ from the labels"):
        load_or_make_folds(labels.iloc[:-1], tmp_path, seed=5)


def test_fold_out_of_range_and_single_class_fold(labels):
    folds = make_folds(labels)
    check_fold(folds, 3)
    with pytest.raises(FoldError, match=r"fold 4 is out of range: the fold file has folds 0\.\.3"):
        check_fold(folds, 4)
    with pytest.raises(FoldError, match="out of range"):
        check_fold(folds, -1)
    one_class = folds.copy()
    one_class.loc[one_class["fold"] == 2, "target"] = 0
    with pytest.raises(FoldError, match="fold 2: validation set holds one class only"):
        check_fold(one_class, 2)


def test_too_few_positives_for_k(labels):
    with pytest.raises(FoldError, match="cannot make 4 stratified folds"):
        make_folds(labels.head(20), k=4)
