"""A read-only data root (a Kaggle input folder): folds, training and prediction work, and write nothing into it.

The data are a copy of the tiny synthetic set, bind-mounted read-only (`mount --bind`, then `remount,bind,ro`):
`os.access` is True for root on a chmod-555 folder, so only a real read-only file system shows the fault. Where
mounting is not permitted (not root), the test falls back to monkeypatching `os.access` to answer "not writable"
for the copy; the check that nothing was written into the data then does the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

from seti_fastai.cli import app


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def read_only_data(synth_data, tmp_path, monkeypatch, request) -> tuple[Path, Path]:
    """(read-only view of a copy of the synthetic set, the copy itself)."""
    src, view = tmp_path / "src", tmp_path / "ro"
    shutil.copytree(synth_data[0], src, ignore=shutil.ignore_patterns("folds_*.csv"))  # as made, no fold file
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True).returncode == 0:
        request.addfinalizer(lambda: subprocess.run(["umount", str(view)], check=True))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        with pytest.raises(OSError, match="Read-only file system"):
            (view / "probe").write_text("x")
        return view, src
    import seti_fastai.io as io  # fallback: no mount permitted here

    real = os.access
    monkeypatch.setattr(io.os, "access", lambda p, m: False if Path(p).resolve() == src.resolve() else real(p, m))
    return src, src


def test_folds_train_and_predict_on_read_only_data(read_only_data, tmp_path):
    from seti_fastai.config import build_config
    from seti_fastai.learn.train import train_fold

    view, src = read_only_data
    before = _snapshot(src)
    work = tmp_path / "runs"
    runner = CliRunner()

    result = runner.invoke(app, ["folds", str(view), "--work-dir", str(work)])
    fold_file = work / "folds_train_k4_seed42.csv"
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {fold_file}") and fold_file.is_file()
    assert runner.invoke(app, ["folds", str(view), "--work-dir", str(work)]).stdout.startswith(f"reusing {fold_file}")
    written = fold_file.read_bytes()

    metrics = train_fold(build_config(overrides=tiny_overrides(view, work, fold=0)), quiet=True)
    assert 0.0 <= metrics["best_auc"] <= 1.0 and (work / "exp" / "fold0" / "model.pth").is_file()
    assert fold_file.read_bytes() == written, "training reuses the fold file of the work folder"

    sub = tmp_path / "submission.csv"
    args = ["predict", str(work / "exp" / "fold0"), "--data", str(view), "--out", str(sub), "--workers", "0"]
    result = runner.invoke(app, [*args, "--tta", "flips"])
    assert result.exit_code == 0, result.output
    assert len(sub.read_text().splitlines()) == 1 + 16

    assert _snapshot(src) == before, "nothing was written into the data folder"
    assert sorted(p.name for p in work.iterdir()) == ["exp", fold_file.name]
