"""Per-run calibration against a pooled temperature and none, on a 4-fold synthetic ensemble.

    .venv/bin/python bench/calibration.py --work /tmp/calib_bench

Makes the set once (`seti-fastai synth WORK/data --n-train 800 --n-test 200 --seed 3`), trains 4 tiny folds once
(test_efficientnet, 64 px, bs 16, no resizer, lr 1e-2, --epochs; finished folds are skipped), then:
- per-run: `calibrate_runs` re-predicts each fold's validation cadences with --tta/--combine and fits T, b per run;
- pooled: `calibrate --pooled` (one temperature on the pooled oof.csv logits, applied after the ensemble);
and prints AUC / log-loss / ECE of the out-of-fold ensemble (each cadence predicted by the fold that did not train
on it; the calibrations are fitted on these cadences: in-sample) and of the 4-fold test ensemble (out-of-sample:
scored against the hidden test labels).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pandas as pd

from seti_fastai.evaluate.calibrate import calibrate_runs
from seti_fastai.evaluate.calibration import calibrate, resolve_calibration
from seti_fastai.evaluate.metrics import scores
from seti_fastai.evaluate.predict import predict
from seti_fastai.model.heads import logit_np


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seti_fastai.cli", *map(str, args)], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/calib_bench", help="folder for the data and the runs (reused)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--tta", default="flips")
    p.add_argument("--combine", default="prob")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--difficulty", default="realistic", help="synth --difficulty of the set (easy: the folds learn)")
    args = p.parse_args()
    work = Path(args.work)
    data, runs_dir = work / "data", work / "runs"
    if not (data / "train_labels.csv").is_file():
        cli("synth", data, "--n-train", 800, "--n-test", 200, "--seed", 3, "--difficulty", args.difficulty)
    tiny = ["--arch", "test_efficientnet", "--size", 64, "--bs", 16, "--workers", args.workers, "--no-resizer",
            "--no-pretrained"]  # fmt: skip
    cli(
        "train",
        "--all-folds",
        "--data",
        data,
        "--out",
        runs_dir,
        "--epochs",
        args.epochs,
        "--lr",
        1e-2,
        *tiny,
        "--quiet",
    )
    runs = [runs_dir / "exp" / f"fold{k}" for k in range(4)]

    result = calibrate_runs(runs, args.tta, args.combine, workers=args.workers)
    pooled_t = calibrate(runs, work / "pooled_calibration.json")["temperature"]  # what --calibration pooled applies
    print(f"per run (tta {args.tta}, combine {args.combine}; fitted on its own {result['runs'][0]['n']}-ish OOF):")
    print("| run | T | b | log-loss before | after | ECE before | after | AUC before | after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(
            f"| {Path(r['run']).name} | {r['temperature']:.3f} | {r['bias']:+.3f} | {r['logloss_before']:.4f} | "
            f"{r['logloss_after']:.4f} | {r['ece_before']:.4f} | {r['ece_after']:.4f} | {r['auc_before']:.4f} | "
            f"{r['auc_after']:.4f} |"
        )

    oof = result["oof"]
    y_oof, raw_oof = oof["target"].to_numpy(float), oof["raw"].to_numpy(float)
    labels = pd.read_csv(work / "data_hidden" / "test_labels.csv", dtype={"id": str})
    y_test = labels["target"].to_numpy(float)

    def test_scores(mode: str) -> dict[str, float]:
        resolved = resolve_calibration(runs, mode, args.tta, args.combine)
        pred = predict(
            runs, data, tta=args.tta, combine=args.combine, temperature=resolved.temperature,
            workers=args.workers, run_calibrations=resolved.runs,
        )  # fmt: skip
        joined = labels[["id"]].merge(pred, on="id")
        return scores(logit_np(joined["target"].to_numpy(float)), y_test)

    pooled_file = str(work / "pooled_calibration.json")
    rows = {
        "none": (scores(raw_oof, y_oof), test_scores("none")),
        f"pooled T={pooled_t:.3f} (oof.csv)": (scores(raw_oof / pooled_t, y_oof), test_scores(pooled_file)),
        "per-run T, b": (scores(oof["calibrated"].to_numpy(float), y_oof), test_scores("per-run")),
    }
    print(f"\nensemble of 4 folds: OOF {len(y_oof)} cadences ({int(y_oof.sum())} positives, in-sample for the fits), "
          f"test {len(y_test)} cadences ({int(y_test.sum())} positives)")  # fmt: skip
    print("| calibration | OOF AUC | OOF log-loss | OOF ECE | test AUC | test log-loss | test ECE |")
    print("|---|---|---|---|---|---|---|")
    for name, (o, t) in rows.items():
        print(
            f"| {name} | {o['auc']:.4f} | {o['logloss']:.4f} | {o['ece']:.4f} | {t['auc']:.4f} | "
            f"{t['logloss']:.4f} | {t['ece']:.4f} |"
        )
    print(f"\npositive rate: OOF {y_oof.mean():.3f}, test {y_test.mean():.3f}; "
          f"mean predicted OOF: none {np.mean(1 / (1 + np.exp(-raw_oof))):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
