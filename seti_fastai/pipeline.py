"""The one command: a recipe and a data folder in, a calibrated `submission.csv` and a report out.

`run_recipe` chains the steps a practitioner would type one by one, each skipped when its output is current:

1. folds       the stratified fold CSV (made once, then reused)
2. match       `--background auto`: the data's matches.csv (found, or made first)
3. train       every fold of the recipe: a finished fold is skipped, an interrupted one resumed from last.pth
4. calibrate   each fold's calibration.json on its own out-of-fold cadences (stacked with the de-Doppler reference
               where that helps), current when it is newer than the fold's weights and fitted with these options
5. predict     OUT/NAME/submission.csv, current when newer than every fold's weights and calibration
6. report      OUT/NAME/report/

A recipe is a YAML file of training flags (any `TrainConfig` field) and the pipeline's own keys (`PipelineConfig`).
Killed at any point and run again, it finishes without redoing finished work: each step writes atomically, and a
fold resumes from its last finished epoch, which reproduces an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seti_fastai.config import TrainConfig, config_from, read_mapping
from seti_fastai.errors import ConfigError

Say = Callable[[str], None]


@dataclass(frozen=True)
class PipelineConfig:
    """The keys of a recipe that are not training flags: which folds, and how the folds are predicted."""

    folds: list[int] | None = field(
        default=None, metadata={"help": "folds to train and ensemble, a comma list [default: all n_folds]"}
    )
    tta: str = field(default="flips", metadata={"help": "none or flips: the TTA views of calibration and prediction"})
    combine: str = field(default="prob", metadata={"help": "prob or logit: how views and folds are averaged"})
    stack: str = field(
        default="auto",
        metadata={
            "help": "stack each fold with the de-Doppler reference: auto (where it helps on validation), on, off"
        },
    )

    def validate(self, n_folds: int) -> PipelineConfig:
        from seti_fastai.evaluate.calibration import COMBINES, RUN_TTAS, STACKS

        for name, options in (("tta", RUN_TTAS), ("combine", COMBINES), ("stack", STACKS)):
            if getattr(self, name) not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}; got {getattr(self, name)!r}")
        if self.folds is not None:
            if not self.folds:
                raise ConfigError("folds must name at least one fold")
            bad = [f for f in self.folds if not 0 <= f < n_folds]
            if bad:
                raise ConfigError(
                    f"folds: fold {bad[0]} is out of range for n_folds {n_folds} (folds 0..{n_folds - 1})"
                )
        return self

    def fold_list(self, n_folds: int) -> list[int]:
        return list(self.folds) if self.folds is not None else list(range(n_folds))


PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def _pipeline_value(source: str, name: str, value: Any) -> Any:
    if name == "folds":
        if value is None:
            return None
        items = value if isinstance(value, list) else str(value).split(",")
        try:
            folds = [int(v) for v in items]
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: folds must be a list of integers; got {value!r}") from None
        if any(isinstance(v, bool) or (isinstance(v, float) and v != int(v)) for v in items):
            raise ConfigError(f"{source}: folds must be a list of integers; got {value!r}")
        return sorted(set(folds))
    if name == "stack" and isinstance(value, bool):  # YAML 1.1 reads a bare on / off as true / false
        return "on" if value else "off"
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string; got {value!r}")
    return value


def split_recipe(values: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training fields, pipeline fields) of a recipe's mapping; an unknown key is one line naming it."""
    unknown = sorted(set(values) - TRAIN_KEYS - PIPELINE_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}: neither a training flag nor one of "
            f"{', '.join(sorted(PIPELINE_KEYS))}"
        )
    train = {k: v for k, v in values.items() if k in TRAIN_KEYS}
    pipe = {k: _pipeline_value(source, k, v) for k, v in values.items() if k in PIPELINE_KEYS}
    return train, pipe


def read_recipe(path: Path | str) -> dict[str, Any]:
    """The mapping of a recipe file (YAML), not yet checked against the fields."""
    return read_mapping(path, "recipe", " (the shipped ones are in recipes/)")


@dataclass(frozen=True)
class Recipe:
    """A recipe resolved once: the training config every fold starts from, the fields the user set (a resumed fold
    refuses flags that differ from its saved config), and the pipeline's own options."""

    cfg: TrainConfig
    given: dict[str, Any]
    pipe: PipelineConfig

    @property
    def exp_dir(self) -> Path:
        return Path(self.cfg.out) / self.cfg.name

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(self.cfg.out) / self.cfg.name / f"fold{k}" for k in self.pipe.fold_list(self.cfg.n_folds)]

    @property
    def submission(self) -> Path:
        return self.exp_dir / "submission.csv"


def build_recipe(path: Path | str | None, overrides: dict[str, Any]) -> Recipe:
    """Recipe file < `overrides` (None values mean "not given"; training flags or pipeline keys), checked."""
    values = read_recipe(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    source = str(path) if path is not None else "recipe"
    train, pipe = split_recipe(values, source)
    try:
        cfg = config_from(train)
        options = PipelineConfig(**pipe).validate(cfg.n_folds)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    if cfg.stage != "finetune":
        raise ConfigError(f"{source}: a recipe trains the folds of the finetune stage; got stage {cfg.stage}")
    return Recipe(cfg, train, options)


# ----------------------------------------------------------------------------------------------------------------
# the steps


def _newer(path: Path, than: list[Path]) -> bool:
    """`path` exists and is at least as new as every file of `than`."""
    if not path.is_file():
        return False
    mtime = path.stat().st_mtime_ns
    return all(mtime >= p.stat().st_mtime_ns for p in than if p.is_file())


def calibration_current(run_dir: Path, pipe: PipelineConfig) -> bool:
    """The fold's calibration.json was fitted after its weights, with these TTA views, combine rule and stacking."""
    path = run_dir / "calibration.json"
    if not _newer(path, [run_dir / "model.pth"]):
        return False
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (saved.get("tta"), saved.get("combine"), saved.get("stack")) == (pipe.tta, pipe.combine, pipe.stack)


def run_recipe(recipe: Recipe, say: Say = lambda _: None, progress: Callable[[str, int], Any] | None = None,
               quiet: bool = False, cbs: list | None = None) -> dict[str, Any]:  # fmt: skip
    """Run every step of `recipe` that is not current (module docstring); returns what each step gave: `folds`
    (the fold CSV), `matches`, `train` (each fold's metrics), `calibration` (its records, or None when current),
    `submission`, `report`. `progress(step, total)` makes a progress bar (a callable taking counts), or None."""
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.data.folds import load_or_make_folds
    from seti_fastai.evaluate.calibrate import calibrate_runs
    from seti_fastai.evaluate.predict import plan_prediction, run_prediction, write_submission
    from seti_fastai.evaluate.report import write_report
    from seti_fastai.learn.datablock import resolve_background
    from seti_fastai.learn.train import train_folds

    cfg, pipe = recipe.cfg, recipe.pipe
    kaggle = KaggleData(cfg.data)  # a missing data folder or label file fails here, before any step
    labels = kaggle.read_labels("train")
    kaggle.check_not_input(recipe.submission)
    out: dict[str, Any] = {}
    _, path, created = load_or_make_folds(labels, kaggle.root, cfg.n_folds, cfg.fold_seed, work_dir=cfg.out)
    say(f"folds: {'wrote' if created else 'current'} {path}")
    out["folds"] = path
    resolved = resolve_background(cfg, say)  # matches once here, not in every fold
    if resolved.background == "subtract":
        say(f"background: subtracted with {resolved.matches}")
        out["matches"] = resolved.matches
    if cfg.background == "auto":  # every fold resolves auto to the same file; the flag stays what the user gave
        given = dict(recipe.given, background="subtract", matches=resolved.matches)
        cfg = config_from(given)
    else:
        given = recipe.given
    folds = pipe.fold_list(cfg.n_folds)
    out["train"] = train_folds(
        cfg, given, all_folds=True, folds=folds, say=say, quiet=quiet, cbs=cbs, refuse_changed=True
    )
    run_dirs = recipe.run_dirs
    if all(calibration_current(r, pipe) for r in run_dirs):
        say(f"calibrate: current ({len(run_dirs)} folds)")
        out["calibration"] = None
    else:
        bar = progress("calibrate", 0) if progress else None
        result = calibrate_runs(run_dirs, pipe.tta, pipe.combine, stack=pipe.stack, workers=cfg.workers,
                                progress=bar.update if bar is not None else None)  # fmt: skip
        if bar is not None:
            bar.close()
        out["calibration"] = result
        for rec in result["runs"]:
            stacked = f", stacked (reference weight {rec['reference_weight']:.3f})" if rec["stacked"] else ""
            say(f"calibrate: {rec['run']}: T {rec['temperature']:.3f}, b {rec['bias']:+.3f}{stacked}")
    inputs = [p for r in run_dirs for p in (r / "model.pth", r / "calibration.json")]
    if _newer(recipe.submission, inputs):
        say(f"predict: current {recipe.submission}")
    else:
        plan = plan_prediction(run_dirs, cfg.data, "test", tta=pipe.tta, combine=pipe.combine, calibration="per-run")
        bar = progress("predict", len(plan.ids) * len(plan.runs)) if progress else None
        predictions = run_prediction(plan, workers=cfg.workers, progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        write_submission(predictions, recipe.submission)
        say(f"predict: wrote {len(predictions)} calibrated probabilities to {recipe.submission}")
    out["submission"] = recipe.submission
    report, table = write_report(recipe.exp_dir)
    say(f"report: {report}")
    out["report"], out["table"] = report, table
    return out


def recipe_help() -> list[tuple[str, type, str]]:
    """(name, type, help) of each pipeline key, for the command line."""
    hints = typing.get_type_hints(PipelineConfig)
    return [(f.name, hints[f.name], f.metadata["help"]) for f in dataclasses.fields(PipelineConfig)]
