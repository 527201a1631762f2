"""Per-run calibration data: re-predict each run's validation fold as `predict` will, then fit and save each run's
`calibration.json` (the fits themselves are in `calibration.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seti_fastai.data.cadence import KaggleData, read_id_csv
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.evaluate.calibration import (
    COMBINES,
    RUN_TTAS,
    STACKS,
    fit_run,
    fit_temperature,
    write_run_calibration,
)
from seti_fastai.evaluate.calibration import combine as _combine
from seti_fastai.evaluate.metrics import scores
from seti_fastai.evaluate.predict import TrainedRun, flip_views, inference_dl, load_model, predict_views, read_run
from seti_fastai.learn.datablock import run_packed, run_partners
from seti_fastai.lock import lock_runs
from seti_fastai.model.heads import logit_np, sigmoid_np


def oof_views(
    run: TrainedRun,
    tta: str = "none",
    data: Path | str | None = None,
    bs: int = 64,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    reference: bool = False,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """A run's validation cadences (the ids and targets of its oof.csv), their log-odds (n_views, n), predicted
    with the TTA views (`none` or `flips`) `predict` uses, and with `reference` their de-Doppler reference scores
    (from the same pass over the files). `data`: the data root [default: the run's own `--data`]."""
    cfg, model = run.cfg, load_model(run)
    oof_path = run.run_dir / "oof.csv"
    if not oof_path.is_file():
        raise RunDirError(f"{run.run_dir}: oof.csv not found (not a finished run directory)")
    oof = read_id_csv(oof_path, require_target=True)
    data = cfg.data if data is None else data
    split = "old-test" if cfg.stage == "pretrain" else "train"  # where training found the validation cadences
    kaggle = KaggleData(data)
    kaggle.check_files(split, oof["id"].tolist())
    paths = [str(p) for p in kaggle.paths(split, oof["id"].tolist())]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    partners = run_partners(cfg, data)
    dl = inference_dl(run, paths, bs, workers, dev, partners, run_packed(cfg, paths, partners, data), reference)
    views = flip_views(run.aug) if tta == "flips" else [()]
    return oof[["id", "target"]], *predict_views(model, dl, views, dev, progress)


def calibrate_runs(
    run_dirs: list[Path | str],
    tta: str = "none",
    combine: str = "prob",
    data: Path | str | None = None,
    bs: int = 64,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    stack: str = "auto",
) -> dict[str, Any]:
    """Fit and save each run's `calibration.json` (T, b) on its own out-of-fold cadences, predicted with `tta` and
    `combine` as `predict` will; `stack` (auto, on, off): whether each run's calibration also takes the de-Doppler
    reference score of the cadence (`calibration.fit_run`). Files are written only once every run is fitted.
    Returns `runs` (the saved records), `ensemble`: the out-of-fold AUC, log-loss and ECE of the ensemble without
    calibration, with a pooled temperature and with per-run calibration (fitted and scored on the same cadences:
    in-sample), and `oof`: its log-odds per id (`raw`, `calibrated`) and the `reference` score (when stacking)."""
    if combine not in COMBINES:
        raise ConfigError(f"combine must be one of {', '.join(COMBINES)}; got {combine!r}")
    if tta not in RUN_TTAS:
        raise ConfigError(f"per-run calibration needs --tta none or flips; got {tta!r}")
    if stack not in STACKS:
        raise ConfigError(f"stack must be one of {', '.join(STACKS)}; got {stack!r}")
    if not run_dirs:
        raise RunDirError("no run directory given")
    with lock_runs(run_dirs, "calibrate"):  # one writer per run directory: calibration.json goes into each
        runs = [read_run(r) for r in run_dirs]
        run_dirs = [run.run_dir for run in runs]
        records, frames = [], []
        for run_dir, run in zip(run_dirs, runs, strict=True):
            oof, views, reference = oof_views(run, tta, data, bs, workers, device, progress, stack != "off")
            y = oof["target"].to_numpy(float)
            try:
                cal, record = fit_run(views, y, tta, combine, reference, stack)
            except RunDirError as e:
                raise RunDirError(f"{run_dir}: {e}") from e
            records.append(record | dict(run=str(run_dir)))
            calibrated = _combine(cal.apply(views, reference), combine)
            frames.append(oof.assign(raw=_combine(views, combine), calibrated=calibrated, reference=reference))
        for run_dir, record in zip(run_dirs, records, strict=True):
            write_run_calibration(run_dir, {k: v for k, v in record.items() if k != "run"})
        # the ensemble on out-of-fold cadences: an id predicted by several runs is combined across them, as predict does
        oof = pd.concat(frames, ignore_index=True)
        cols = ["raw", "calibrated"]
        if combine == "prob":
            oof[cols] = sigmoid_np(oof[cols].to_numpy())
        ens = oof.groupby("id", sort=False).agg(
            {"target": "first", "raw": "mean", "calibrated": "mean", "reference": "first"}
        )
        if combine == "prob":
            ens[cols] = logit_np(ens[cols].to_numpy())
        y, raw = ens["target"].to_numpy(float), ens["raw"].to_numpy(float)
        t = fit_temperature(raw, y)
        ensemble = {
            "none": scores(raw, y),
            f"pooled T={t:.3f}": scores(raw / t, y),
            "per-run": scores(ens["calibrated"].to_numpy(float), y),
        }
        oof = ens.reset_index()[["id", "target", "raw", "calibrated", "reference"]]
        return dict(runs=records, ensemble=ensemble, n=len(ens), tta=tta, combine=combine, oof=oof)
