"""`seti-fastai report RUNS_DIR`: what an experiment's folds did, as a markdown page with pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from seti_fastai.config import load_run_config
from seti_fastai.errors import LabelFileError, RunDirError
from seti_fastai.evaluate.calibration import read_oof, read_temperature
from seti_fastai.evaluate.dedoppler import scores_on
from seti_fastai.evaluate.metrics import expected_calibration_error
from seti_fastai.evaluate.plots import plot_histories, plot_reliability, plot_roc
from seti_fastai.io import atomic_write_text, derived_path
from seti_fastai.model.heads import sigmoid_np


def find_runs(runs_dir: Path | str) -> list[Path]:
    """Finished run directories (with metrics.json) directly under `runs_dir`, folds first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunDirError(f"{runs_dir}: folder not found")
    runs = sorted(p.parent for p in runs_dir.glob("*/metrics.json"))
    if not runs:
        raise RunDirError(f"{runs_dir}: no finished run (no */metrics.json)")
    return sorted(runs, key=lambda p: (not p.name.startswith("fold"), p.name))


def fold_table(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        rows.append(
            dict(
                run=run.name,
                best_auc=round(m["best_auc"], 4),
                best_epoch=m["best_epoch"],
                n_valid=m["n_valid"],
                samples_per_s=round(m["train_samples_per_s"], 1),
                minutes=round(m["wall_seconds"] / 60, 1),
            )
        )
    return pd.DataFrame(rows)


def dedoppler_aucs(folds: list[Path], oof: pd.DataFrame) -> tuple[dict[str, float], str] | None:
    """De-Doppler reference AUC on each fold's out-of-fold ids and pooled, when `dedoppler_train.csv` exists.

    Returns (AUC by run name, summary line), or None when there is no score file for these runs' data.
    """
    cfg = load_run_config(folds[0])
    path = derived_path(cfg.data, "dedoppler_train.csv", cfg.out)
    if cfg.stage != "finetune" or not path.is_file():
        return None
    try:
        joined = scores_on(path, oof[["id", "target", "run"]])
    except LabelFileError as e:
        return {}, f"de-Doppler reference skipped: {e}"
    by_run = {
        Path(run).name: float(roc_auc_score(g["target"], g["score"]))
        for run, g in joined.groupby("run", sort=False)
        if g["target"].nunique() == 2
    }
    pooled = float(roc_auc_score(joined["target"], joined["score"]))
    return by_run, f"de-Doppler reference ({path}) AUC over the same cadences: **{pooled:.4f}**"


def write_report(runs_dir: Path | str) -> tuple[Path, str]:
    """Write `<runs_dir>/report/` (report.md, roc.png, reliability.png, history.png); return (path, table)."""
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir)
    out = runs_dir / "report"
    table = fold_table(runs)
    folds = [r for r in runs if r.name.startswith("fold")] or runs
    oof = read_oof(folds)
    y, z = oof["target"].to_numpy(float), oof["logit"].to_numpy(float)
    header = "| run | best AUC | best epoch | valid cadences | train samples/s | minutes |"
    rule = "|---|---|---|---|---|---|"
    rows = [
        f"| {r.run} | {r.best_auc} | {r.best_epoch} | {r.n_valid} | {r.samples_per_s} | {r.minutes} |"
        for r in table.itertuples()
    ]
    reference = dedoppler_aucs(folds, oof)
    if reference and reference[0]:
        header, rule = header + " de-Doppler AUC |", rule + "---|"
        rows = [
            f"{row} {reference[0][run]:.4f} |" if run in reference[0] else f"{row}  |"
            for row, run in zip(rows, table["run"], strict=True)
        ]
    lines = [header, rule, *rows]
    curves = {
        r.name: (g["target"].to_numpy(), g["logit"].to_numpy())
        for r, (_, g) in zip(folds, oof.groupby("run", sort=False), strict=True)
    }
    summary = [f"Out-of-fold AUC over {len(oof)} cadences: **{roc_auc_score(y, z):.4f}**"]
    if reference:
        summary.append(reference[1])
    probabilities = {"raw": sigmoid_np(z)}
    calibration = runs_dir / "calibration.json"
    if calibration.is_file():
        t = read_temperature(calibration)
        probabilities[f"temperature {t:.2f}"] = sigmoid_np(z / t)
    for name, p in probabilities.items():
        summary.append(f"expected calibration error ({name}): {expected_calibration_error(p, y):.4f}")
    curves["out-of-fold"] = (y, z)
    plot_roc(curves, out / "roc.png")
    plot_reliability(y, probabilities, out / "reliability.png")
    plot_histories({r.name: pd.read_csv(r / "history.csv") for r in runs}, out / "history.png")
    text = "\n".join(
        [
            f"# Report: {runs_dir}",
            "",
            *lines,
            "",
            *[f"- {s}" for s in summary],
            "",
            "![ROC](roc.png) ![reliability](reliability.png)",
            "",
            "![history](history.png)",
            "",
        ]
    )
    path = atomic_write_text(out / "report.md", text)
    table_text = "\n".join([*lines, "", *summary])
    return path, table_text
