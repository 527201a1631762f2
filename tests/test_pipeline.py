"""The one command (`seti-fastai run`): recipes, every step skipped when current, a kill mid-fold resumed to the
same result; and `--background auto` resolving to subtraction."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides
from fastai.callback.core import Callback
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config, load_run_config
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.learn.train import train_fold
from seti_fastai.pipeline import build_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """A small writable set of this module's own (auto background writes matches.csv beside it)."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = SynthConfig(n_train=64, n_test=16, pos_rate=0.25, seed=5, difficulty="easy")
    return write_synthetic(cfg, root / "data", workers=2)[0]


def _fresh_copy(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("matches.csv", "folds_*.csv", "dedoppler_*"))
    return copy


def _tiny(data: Path, out: Path, **extra) -> dict:
    """A tiny recipe of two folds, two epochs each, background auto."""
    return tiny_overrides(data, out, **{"background": "auto", "epochs": 2, "folds": [0, 1], **extra})


def test_shipped_recipes_are_valid():
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert {"cpu.yaml", "default.yaml", "seed59.yaml", "winner.yaml"} <= set(names)
    for path in RECIPES.glob("*.yaml"):
        recipe = build_recipe(path, {"data": "x"})
        assert recipe.cfg.background in ("auto", "none") and recipe.pipe.tta == "flips"
    assert build_recipe(RECIPES / "cpu.yaml", {"data": "x"}).pipe.folds == [0]
    assert build_recipe(None, {"data": "x"}).cfg.background == "auto"  # the default is the strongest known


class _StopFold1(Callback):
    """Interrupt fold 1 once its first epoch (and last.pth) is written."""

    order = 70  # after RunRecorder

    def after_epoch(self):
        if self.learn.path.name == "fold1" and self.epoch == 0:
            raise KeyboardInterrupt


def test_killed_mid_fold_and_run_again_it_finishes_as_an_uninterrupted_run(own_data, tmp_path):
    data = _fresh_copy(own_data, tmp_path)
    said: list[str] = []
    straight = run_recipe(build_recipe(None, _tiny(data, tmp_path, name="straight")), say=said.append, quiet=True)
    assert any(line.startswith("--background auto: no matches.csv") for line in said)  # matched first, said so
    assert (data / "matches.csv").is_file()
    saved = load_run_config(tmp_path / "straight" / "fold0")
    assert saved.background == "subtract" and Path(saved.matches) == data / "matches.csv"

    broken = build_recipe(None, _tiny(data, tmp_path, name="broken"))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(broken, quiet=True, cbs=[_StopFold1()])
    exp = tmp_path / "broken"
    assert (exp / "fold0" / "metrics.json").is_file() and (exp / "fold1" / "last.pth").is_file()
    assert not (exp / "fold1" / "metrics.json").exists() and not (exp / "submission.csv").exists()
    fold0 = (exp / "fold0" / "model.pth").stat().st_mtime_ns
    said = []
    again = run_recipe(broken, say=said.append, quiet=True)
    assert f"{exp / 'fold0'}: finished earlier (metrics.json), skipping" in said
    assert f"{exp / 'fold1'}: interrupted earlier, resuming from last.pth" in said
    assert (exp / "fold0" / "model.pth").stat().st_mtime_ns == fold0  # not retrained
    a = pd.read_csv(straight["submission"])
    b = pd.read_csv(again["submission"])
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
    assert b["target"].between(0, 1).all() and len(b) == 16

    said = []
    run_recipe(broken, say=said.append, quiet=True)  # everything current: nothing is redone
    assert "calibrate: current (2 folds)" in said and f"predict: current {exp / 'submission.csv'}" in said
    with pytest.raises(RunDirError, match=r"fold0: finished earlier with another config.yaml.*--epochs 3 \(saved 2\)"):
        run_recipe(build_recipe(None, _tiny(data, tmp_path, name="broken", epochs=3)), quiet=True)


def test_auto_background_trains_as_explicit_subtraction(own_data, tmp_path):
    data = _fresh_copy(own_data, tmp_path)
    auto = train_fold(
        build_config(overrides=tiny_overrides(data, tmp_path, name="auto", background="auto")), quiet=True
    )
    assert (data / "matches.csv").is_file()
    explicit = tiny_overrides(data, tmp_path, name="explicit", background="subtract", matches=str(data / "matches.csv"))
    sub = train_fold(build_config(overrides=explicit), quiet=True)
    assert auto["best_auc"] == pytest.approx(sub["best_auc"])
    a, b = (pd.read_csv(tmp_path / n / "fold0" / "history.csv") for n in ("auto", "explicit"))
    cols = ["train_loss", "valid_loss", "roc_auc"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    train_fold(build_config(overrides=tiny_overrides(data, tmp_path, name="none", background="none")), quiet=True)
    plain = pd.read_csv(tmp_path / "none" / "fold0" / "history.csv")
    assert not plain[cols].equals(a[cols])  # subtraction changed what the model saw


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"arch": "test_efficientnet", "learning_rate": 0.1}, "unknown key(s) learning_rate: neither a training flag"),
        ({"epochs": "many"}, "epochs must be a number; got 'many'"),
        ({"folds": [0, 7]}, "folds: fold 7 is out of range for n_folds 4"),
        ({"stack": "yes"}, "stack must be one of auto, on, off"),
        ({"folds": "zero"}, "folds must be a list of integers"),
    ],
)
def test_bad_recipes_are_one_line_and_write_nothing(own_data, tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = _cli("run", own_data, "--recipe", path, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert message in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_and_matches_of_other_data_are_one_line(own_data, synth_data, tmp_path):
    result = _cli("run", own_data, "--recipe", tmp_path / "nope.yaml", "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "nope.yaml: recipe file not found" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    matches = other / "matches.csv"
    rows = "id,split,partner,partner_split,shift,overlap,similarity\nzz1,train,zz2,train,10,246,0.9\n"
    matches.write_text(rows)
    flags = ["--recipe", RECIPES / "cpu.yaml", "--out", tmp_path / "runs", "--matches", matches, "--quiet"]
    result = _cli("run", own_data, *flags, "--epochs", 1, "--size", 64, "--workers", 0)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "unknown id 'zz1' (a matches file of other data?" in result.stderr
    assert not (tmp_path / "runs" / "exp" / "fold0" / "model.pth").exists()
    with pytest.raises(ConfigError, match="recipe file not found"):
        build_recipe(tmp_path / "nope.yaml", {})
