"""`seti-fastai report RUNS_DIR`: what an experiment's folds did, as a markdown page with pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from seti_fastai.errors import RunDirError
from seti_fastai.evaluate.infer import expected_calibration_error, read_oof, read_temperature
from seti_fastai.evaluate.plots import plot_histories, plot_reliability, plot_roc
from seti_fastai.io import atomic_write_text
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


def write_report(runs_dir: Path | str) -> tuple[Path, str]:
    """Write `<runs_dir>/report/` (report.md, roc.png, reliability.png, history.png); return (path, table)."""
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir)
    out = runs_dir / "report"
    table = fold_table(runs)
    folds = [r for r in runs if r.name.startswith("fold")] or runs
    oof = read_oof(folds)
    y, z = oof["target"].to_numpy(float), oof["logit"].to_numpy(float)
    lines = [
        "| run | best AUC | best epoch | valid cadences | train samples/s | minutes |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.run} | {r.best_auc} | {r.best_epoch} | {r.n_valid} | {r.samples_per_s} | {r.minutes} |"
        for r in table.itertuples()
    ]
    curves = {
        r.name: (g["target"].to_numpy(), g["logit"].to_numpy())
        for r, (_, g) in zip(folds, oof.groupby("run", sort=False), strict=True)
    }
    summary = [f"Out-of-fold AUC over {len(oof)} cadences: **{roc_auc_score(y, z):.4f}**"]
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
