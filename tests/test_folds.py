"""Stratified folds: balanced, stable across runs and row orders, reused from disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from seti_fastai.data.folds import (
    check_fold,
    fold_summary,
    folds_name,
    folds_path,
    load_or_make_folds,
    make_folds,
)
from seti_fastai.errors import FoldError
from seti_fastai.io import atomic_dir


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


# --- where the fold file goes, and with what mode -----------------------------------------------------------


def _read_only(monkeypatch, folder):
    """Make `folder` look read-only to `derived_path` (root may write anywhere; test_readonly.py mounts for real)."""
    import seti_fastai.io as io

    real = os.access
    monkeypatch.setattr(io.os, "access", lambda p, mode: False if Path(p) == Path(folder) else real(p, mode))


def test_fold_file_goes_to_the_work_folder_when_the_data_are_read_only(tmp_path, labels, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    _read_only(monkeypatch, data)
    folds, path, created = load_or_make_folds(labels, data, seed=5, work_dir=work)
    assert created and path == work / folds_name(seed=5) and not list(data.iterdir())
    again, path_again, created_again = load_or_make_folds(labels, data, seed=5, work_dir=work)
    assert not created_again and path_again == path
    pd.testing.assert_frame_equal(folds, again)


def test_a_fold_file_beside_the_data_is_found_first(tmp_path, labels):
    data, work = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    _, beside, _ = load_or_make_folds(labels, data, seed=5, work_dir=work)
    assert beside == folds_path(data, seed=5) and not work.exists()
    work.mkdir()
    (work / beside.name).write_text("id,target,fold\n")  # a stale copy in the work folder is not read
    _, found, created = load_or_make_folds(labels, data, seed=5, work_dir=work)
    assert found == beside and not created


def test_unwritable_work_folder_is_one_error(tmp_path, labels, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the work folder should be")
    _read_only(monkeypatch, data)
    with pytest.raises(FoldError, match=r"cannot write the fold file .*choose a writable work folder"):
        load_or_make_folds(labels, data, seed=5, work_dir=blocker / "sub")
    assert blocker.read_text().startswith("a file") and not list(data.iterdir())


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_usual_permissions(tmp_path, labels, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        _, path, _ = load_or_make_folds(labels, tmp_path, seed=5)
        with atomic_dir(tmp_path / "made") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == dir_mode
    assert not list(tmp_path.glob(".*partial")), "no temporary file is left behind"
