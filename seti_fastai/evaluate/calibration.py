"""Calibration: per-run temperature + bias (before the ensemble), or one pooled temperature (after it).

Per run (the default): each run's views get `z' = z / T + b` before views and runs are combined. `T` undoes the
run's over- or under-confidence, `b` the prior shift of weighted sampling (25 % positives per batch against ~10 %
in the data shifts every log-odds by about log 3). Both are fitted on the run's own out-of-fold cadences, predicted
with the TTA views and combine rule that `predict` will use, and saved as `calibration.json` in the run directory.
Runs calibrated separately are put on one scale, so averaging them can change the ensemble's ranking.

Pooled (the former mode): one temperature fitted on the pooled `oof.csv` logits divides the ensemble's final
log-odds; it never changes a ranking. Saved as `calibration.json` beside the runs.

This module is arithmetic and files only; re-predicting the out-of-fold cadences lives in `calibrate.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit, logsumexp

from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.evaluate.metrics import expected_calibration_error, log_loss, scores
from seti_fastai.io import atomic_write_json
from seti_fastai.model.heads import logit_np, sigmoid_np

COMBINES = ("prob", "logit")
RUN_TTAS = ("none", "flips")  # fastai TTA (--tta N) mixes random augmented passes: no fixed views to calibrate
MODES = ("auto", "per-run", "pooled", "none")
FILE = "calibration.json"
BOUNDS = [(-5.0, 5.0), (-20.0, 20.0)]  # log T, b: T = e^5 ~ 148 flattens a run that ranks no better than chance


def combine(z: np.ndarray, rule: str, axis: int = 0) -> np.ndarray:
    """Mean over `axis` of probabilities (`prob`) or log-odds (`logit`); returns log-odds."""
    if rule == "logit":
        return z.mean(axis=axis)
    return logit_np(sigmoid_np(z).mean(axis=axis))


# ----------------------------------------------------------------------------------------------------------------
# fitting


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 that minimises the log-loss of z / T (one parameter, searched on log T)."""
    result = minimize_scalar(lambda log_t: log_loss(z / np.exp(log_t), y), bounds=(-5, 5), method="bounded")
    return float(np.exp(result.x))


def _views_loss(params: np.ndarray, views: np.ndarray, y: np.ndarray, rule: str) -> tuple[float, np.ndarray]:
    """Log-loss of `combine(views / T + b)` and its gradient in (log T, b); `views` is (n_views, n)."""
    log_t, b = params
    a = np.exp(-log_t)
    u = a * views + b
    if rule == "logit" or len(views) == 1:
        zc = u.mean(axis=0)
        loss = log_loss(zc, y)
        du = np.broadcast_to((expit(zc) - y) / len(views), u.shape)  # d loss / d u_v, per cadence
    else:  # log p = log mean_v sigmoid(u_v), computed in log space
        log_w, log_1w = log_expit(u), log_expit(-u)
        log_p = logsumexp(log_w, axis=0) - np.log(len(views))
        log_1p = logsumexp(log_1w, axis=0) - np.log(len(views))
        loss = float(-np.mean(y * log_p + (1 - y) * log_1p))
        share_w = np.exp(log_w - logsumexp(log_w, axis=0))  # d log p / d u_v = share_w * (1 - w_v)
        share_1w = np.exp(log_1w - logsumexp(log_1w, axis=0))  # d log(1-p) / d u_v = -share_1w * w_v
        du = -y * share_w * np.exp(log_1w) + (1 - y) * share_1w * np.exp(log_w)
    da, db = float(np.mean((du * views).sum(axis=0))), float(np.mean(du.sum(axis=0)))
    return loss, np.array([-a * da, db])


def fit_temperature_bias(views: np.ndarray, y: np.ndarray, rule: str = "prob") -> tuple[float, float]:
    """(T, b) minimising the log-loss of `combine(views / T + b, rule)` against `y`; `views` is (n_views, n) or (n,).

    Maximum likelihood with scipy's L-BFGS-B on (log T, b) and the exact gradient. With one view this is Platt
    scaling, the same fit as scikit-learn's unpenalised `LogisticRegression` on the 1-D logit (a test checks it);
    scipy is used because (1) with `--combine prob` and several views the calibrated prediction is a mean of
    sigmoids, not an affine function of one logit, so a logistic regression does not apply, and (2) searching
    log T keeps T > 0: a run that ranks below chance cannot silently have its ranking reversed."""
    views = np.atleast_2d(np.asarray(views, float))
    y = np.asarray(y, float)
    if y.min() == y.max():
        raise RunDirError("the out-of-fold cadences hold one class only; cannot calibrate")
    result = minimize(_views_loss, np.zeros(2), args=(views, y, rule), jac=True, method="L-BFGS-B", bounds=BOUNDS)
    return float(np.exp(result.x[0])), float(result.x[1])


# ----------------------------------------------------------------------------------------------------------------
# per-run calibration files


@dataclasses.dataclass(frozen=True)
class RunCalibration:
    """A run's `z' = z / T + b`, valid for the TTA views and combine rule it was fitted with."""

    temperature: float
    bias: float
    tta: str
    combine: str
    path: str = ""

    def apply(self, z: np.ndarray) -> np.ndarray:
        return z / self.temperature + self.bias


def fit_run(views: np.ndarray, y: np.ndarray, tta: str, rule: str) -> tuple[RunCalibration, dict[str, Any]]:
    """Fit one run on its out-of-fold views; returns the calibration and the record saved in `calibration.json`."""
    t, b = fit_temperature_bias(views, y, rule)
    cal = RunCalibration(t, b, tta, rule)
    before, after = scores(combine(views, rule), y), scores(combine(cal.apply(views), rule), y)
    record = dict(
        kind="per-run", temperature=t, bias=b, tta=tta, combine=rule, views=len(views), n=len(y),
        positives=int(y.sum()), flat=bool(np.log(t) > BOUNDS[0][1] - 1e-3),
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
    )  # fmt: skip
    return cal, record


def write_run_calibration(run_dir: Path | str, record: dict[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / FILE, record)


def read_run_calibration(run_dir: Path | str) -> RunCalibration:
    """The per-run calibration of `run_dir`, or one line saying how to make it."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise RunDirError(
            f"{path}: not found; run `seti-fastai calibrate` on every run first, or pass --calibration none"
        )
    try:
        d = json.loads(path.read_text())
        if d.get("kind") != "per-run":
            raise ValueError("not a per-run calibration: no kind: per-run")
        cal = RunCalibration(float(d["temperature"]), float(d["bias"]), str(d["tta"]), str(d["combine"]), str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunDirError(f"{path}: not a per-run calibration file ({e})") from e
    if not (cal.temperature > 0 and np.isfinite(cal.bias)):
        raise RunDirError(f"{path}: temperature must be positive and bias finite; got {cal.temperature}, {cal.bias}")
    return cal


def check_run_calibration(cal: RunCalibration, tta: str, rule: str) -> None:
    """A calibration holds only for the views and combine rule it was fitted with."""
    if (cal.tta, cal.combine) != (tta, rule):
        raise ConfigError(
            f"{cal.path}: fitted for --tta {cal.tta} --combine {cal.combine}, predicting with --tta {tta} "
            f"--combine {rule}; rerun `seti-fastai calibrate` with these options, or pass --calibration none"
        )


# ----------------------------------------------------------------------------------------------------------------
# pooled temperature (the former single mode)


def read_oof(run_dirs: list[Path | str]) -> pd.DataFrame:
    frames = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "oof.csv"
        if not path.is_file():
            raise RunDirError(f"{run_dir}: oof.csv not found (not a finished run directory)")
        frames.append(pd.read_csv(path, dtype={"id": str}).assign(run=str(run_dir)))
    return pd.concat(frames, ignore_index=True)


def calibration_path(run_dirs: list[Path | str]) -> Path:
    """The pooled `calibration.json` in the folder that holds the runs (the common parent of the run directories)."""
    return Path(os.path.commonpath([str(Path(r).resolve().parent) for r in run_dirs])) / FILE


def calibrate(run_dirs: list[Path | str], out: Path | str | None = None) -> dict:
    """Fit one temperature on the runs' pooled `oof.csv` log-odds; write and return the pooled `calibration.json`."""
    oof = read_oof(run_dirs)
    z, y = oof["logit"].to_numpy(float), oof["target"].to_numpy(float)
    t = fit_temperature(z, y)
    result = dict(
        kind="pooled", temperature=t, n=len(oof), runs=[str(r) for r in run_dirs],
        logloss_before=log_loss(z, y), logloss_after=log_loss(z / t, y),
        ece_before=expected_calibration_error(sigmoid_np(z), y),
        ece_after=expected_calibration_error(sigmoid_np(z / t), y),
    )  # fmt: skip
    path = Path(out) if out is not None else calibration_path(run_dirs)
    atomic_write_json(path, result)
    result["path"] = str(path)
    return result


def read_temperature(path: Path | str) -> float:
    """The temperature of a pooled calibration file (a per-run file is refused: its bias would be dropped)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if d.get("kind") == "per-run":
            raise ValueError("it is a per-run calibration; use --calibration per-run")
        t = float(d["temperature"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunDirError(f"{path}: not a calibration file ({e})") from e
    if not t > 0:
        raise RunDirError(f"{path}: temperature must be positive, got {t}")
    return t


# ----------------------------------------------------------------------------------------------------------------
# choosing the calibration of a prediction


class Resolved(NamedTuple):
    """What `predict` applies: per-run calibrations (or None) and a pooled temperature (1.0: none)."""

    mode: str
    runs: list[RunCalibration] | None
    temperature: float
    source: str

    def describe(self) -> str:
        if self.mode == "per-run":
            c = self.runs[0]
            ts = ", ".join(f"{r.temperature:.3f}/{r.bias:+.3f}" for r in self.runs)
            return f"per-run calibration (tta {c.tta}, combine {c.combine}), T/b {ts}"
        if self.mode == "pooled":
            return f"temperature {self.temperature:.3f} from {self.source}"
        return "no calibration"


NO_CALIBRATION = Resolved("none", None, 1.0, "")


def resolve_calibration(run_dirs: list[Path | str], mode: str | Path, tta: str, rule: str) -> Resolved:
    """`mode`: auto (per-run when every run has its calibration.json, else the pooled file beside the runs when
    present, else none), per-run, pooled, none, or the path of a pooled calibration file."""
    mode = str(mode)
    run_files = [Path(r) / FILE for r in run_dirs]
    if mode == "auto":
        have = [p.is_file() for p in run_files]
        if all(have):
            mode = "per-run"
        elif any(have):
            missing = run_files[have.index(False)]
            raise RunDirError(
                f"{missing}: not found, though other runs have one; calibrate every run, or pass --calibration none"
            )
        else:
            pooled = calibration_path(run_dirs)
            mode = "pooled" if pooled.is_file() else "none"
    if mode == "none":
        return NO_CALIBRATION
    if mode == "per-run":
        if tta not in RUN_TTAS:
            raise ConfigError(
                f"per-run calibration needs --tta none or flips (got {tta}); use --calibration pooled or none"
            )
        cals = [read_run_calibration(r) for r in run_dirs]
        for cal in cals:
            check_run_calibration(cal, tta, rule)
        return Resolved("per-run", cals, 1.0, ", ".join(map(str, run_files)))
    if mode == "pooled":
        path = calibration_path(run_dirs)
        if not path.is_file():
            raise RunDirError(f"{path}: not found; run `seti-fastai calibrate --pooled` on the runs first")
    else:  # the path of a pooled calibration file
        path = Path(mode)
        if not path.suffix and not path.exists():  # neither a mode nor a file: a misspelt mode
            raise ConfigError(f"calibration must be one of {', '.join(MODES)} or a calibration file; got {mode!r}")
    return Resolved("pooled", None, read_temperature(path), str(path))
