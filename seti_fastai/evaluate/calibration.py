"""Calibration: per-run temperature + bias (before the ensemble), or one pooled temperature (after it).

Per run (the default): each run's views get `z' = z / T + b` before views and runs are combined. `T` undoes the
run's over- or under-confidence, `b` the prior shift of weighted sampling (25 % positives per batch against ~10 %
in the data shifts every log-odds by about log 3). Both are fitted on the run's own out-of-fold cadences, predicted
with the TTA views and combine rule that `predict` will use, and saved as `calibration.json` in the run directory.
Runs calibrated separately are put on one scale, so averaging them can change the ensemble's ranking.

Stacked with the reference (`--stack auto`, the default; on, off): the same fit also takes `log(1 + s)` of each
cadence's de-Doppler score `s`: `z' = z / T + b + w log(1 + s)`, `w >= 0`. The two detectors miss different needles
(docs/needles.md), so the stacked probability ranks better than either and stays calibrated. `auto` stacks a run
where that lowers its cross-validated out-of-fold log-loss by `STACK_MIN_GAIN`.

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
# b, w when stacked: w of the reference feature >= 0 (a higher score never lowers the probability); w * feature of
# noise alone is w * ~1.3, which b offsets, hence b's wider range
STACK_BOUNDS = [BOUNDS[0], (-100.0, 100.0), (0.0, 50.0)]
STACKS = ("auto", "on", "off")  # calibrate --stack: auto stacks when it lowers the cross-validated OOF log-loss
STACK_MIN_GAIN = 0.01  # ... by at least 1 %: a feature of pure noise lowers it by up to ~0.1 % by chance (measured)


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


def reference_feature(score: np.ndarray) -> np.ndarray:
    """What stacking adds to a run's log-odds from the de-Doppler reference score (unit-noise SNR of the best path):
    log(1 + max(score, 0)). A logarithm, because the SNR of bright needles runs into the hundreds while the
    evidence it adds levels off; negative scores (OFF brighter than ON) all say "no needle" alike."""
    return np.log1p(np.maximum(np.asarray(score, float), 0.0))


def _views_loss(
    params: np.ndarray, views: np.ndarray, y: np.ndarray, rule: str, feature: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Log-loss of `combine(views / T + b [+ w * feature])` and its gradient in (log T, b[, w]); `views` is
    (n_views, n), `feature` (n,)."""
    log_t, b = params[:2]
    a = np.exp(-log_t)
    u = a * views + b
    if feature is not None:
        u = u + params[2] * feature
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
    if feature is None:
        return loss, np.array([-a * da, db])
    return loss, np.array([-a * da, db, float(np.mean(du.sum(axis=0) * feature))])


def _check_two_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise RunDirError("the out-of-fold cadences hold one class only; cannot calibrate")


def fit_temperature_bias(views: np.ndarray, y: np.ndarray, rule: str = "prob") -> tuple[float, float]:
    """(T, b) minimising the log-loss of `combine(views / T + b, rule)` against `y`; `views` is (n_views, n) or (n,).

    Maximum likelihood with scipy's L-BFGS-B on (log T, b) and the exact gradient. With one view this is Platt
    scaling, the same fit as scikit-learn's unpenalised `LogisticRegression` on the 1-D logit (a test checks it);
    scipy is used because (1) with `--combine prob` and several views the calibrated prediction is a mean of
    sigmoids, not an affine function of one logit, so a logistic regression does not apply, and (2) searching
    log T keeps T > 0: a run that ranks below chance cannot silently have its ranking reversed."""
    views = np.atleast_2d(np.asarray(views, float))
    y = np.asarray(y, float)
    _check_two_classes(y)
    result = minimize(_views_loss, np.zeros(2), args=(views, y, rule), jac=True, method="L-BFGS-B", bounds=BOUNDS)
    return float(np.exp(result.x[0])), float(result.x[1])


def fit_stacked(
    views: np.ndarray, feature: np.ndarray, y: np.ndarray, rule: str = "prob"
) -> tuple[float, float, float]:
    """(T, b, w) minimising the log-loss of `combine(views / T + b + w * feature, rule)`: the per-run calibration
    with the reference's evidence added to every view. With one view, an unpenalised logistic regression on
    (logit, feature) (a test checks it against scikit-learn's); fitted as `fit_temperature_bias` is, for its reasons.
    """
    views = np.atleast_2d(np.asarray(views, float))
    y, feature = np.asarray(y, float), np.asarray(feature, float)
    _check_two_classes(y)
    result = minimize(
        _views_loss, np.zeros(3), args=(views, y, rule, feature), jac=True, method="L-BFGS-B", bounds=STACK_BOUNDS
    )
    return float(np.exp(result.x[0])), float(result.x[1]), float(result.x[2])


def cross_validated_logloss(
    views: np.ndarray, y: np.ndarray, rule: str, feature: np.ndarray | None = None, k: int = 5, seed: int = 0
) -> float:
    """Log-loss of the per-run calibration (with `feature`: stacked) fitted on k-1 parts of the out-of-fold cadences
    and scored on the held-out part, over k stratified parts: what choosing between the two may compare."""
    from sklearn.model_selection import StratifiedKFold

    views, y = np.atleast_2d(np.asarray(views, float)), np.asarray(y, float)
    k = int(min(k, y.sum(), len(y) - y.sum()))
    if k < 2:
        raise RunDirError("too few positives or negatives among the out-of-fold cadences to compare calibrations")
    held = np.zeros(len(y))
    for fit, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(views.T, y):
        if feature is None:
            t, b = fit_temperature_bias(views[:, fit], y[fit], rule)
            held[test] = combine(views[:, test] / t + b, rule)
        else:
            t, b, w = fit_stacked(views[:, fit], feature[fit], y[fit], rule)
            held[test] = combine(views[:, test] / t + b + w * feature[test], rule)
    return log_loss(held, y)


# ----------------------------------------------------------------------------------------------------------------
# per-run calibration files


@dataclasses.dataclass(frozen=True)
class RunCalibration:
    """A run's `z' = z / T + b (+ w * reference_feature(score) when stacked with the de-Doppler reference)`, valid
    for the TTA views and combine rule it was fitted with."""

    temperature: float
    bias: float
    tta: str
    combine: str
    path: str = ""
    reference_weight: float = 0.0  # w; stacked when `stacked`
    stacked: bool = False

    def apply(self, z: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """Calibrated log-odds of views `z` (n_views, n) or (n,); a stacked calibration needs the cadences'
        de-Doppler `reference` scores (n,)."""
        out = z / self.temperature + self.bias
        if not self.stacked:
            return out
        if reference is None:
            raise ValueError("a stacked calibration needs the de-Doppler reference scores")
        return out + self.reference_weight * reference_feature(reference)


def fit_run(
    views: np.ndarray, y: np.ndarray, tta: str, rule: str, reference: np.ndarray | None = None, stack: str = "off"
) -> tuple[RunCalibration, dict[str, Any]]:
    """Fit one run on its out-of-fold views; returns the calibration and the record saved in `calibration.json`.
    `stack` (with the cadences' de-Doppler `reference` scores): on stacks the reference into the calibration; auto
    stacks when that lowers the cross-validated out-of-fold log-loss by `STACK_MIN_GAIN` (both figures go into the
    record)."""
    if stack not in STACKS:
        raise ConfigError(f"stack must be one of {', '.join(STACKS)}; got {stack!r}")
    extra: dict[str, Any] = {}
    stacked = stack != "off"
    if stacked:
        if reference is None:
            raise ValueError("stacking needs the de-Doppler reference scores")
        feature = reference_feature(reference)
        if stack == "auto":
            plain_cv = cross_validated_logloss(views, y, rule)
            stacked_cv = cross_validated_logloss(views, y, rule, feature)
            stacked = stacked_cv < plain_cv * (1 - STACK_MIN_GAIN)
            extra = dict(cv_logloss_plain=plain_cv, cv_logloss_stacked=stacked_cv)
    if stacked:
        t, b, w = fit_stacked(views, feature, y, rule)
    else:
        (t, b), w = fit_temperature_bias(views, y, rule), 0.0
    cal = RunCalibration(t, b, tta, rule, reference_weight=w, stacked=stacked)
    before, after = scores(combine(views, rule), y), scores(combine(cal.apply(views, reference), rule), y)
    record = dict(
        kind="per-run", temperature=t, bias=b, tta=tta, combine=rule, stack=stack, stacked=stacked,
        reference_weight=w,
        views=len(views), n=len(y), positives=int(y.sum()), flat=bool(np.log(t) > BOUNDS[0][1] - 1e-3),
        **extra,
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
        cal = RunCalibration(
            float(d["temperature"]), float(d["bias"]), str(d["tta"]), str(d["combine"]), str(path),
            float(d.get("reference_weight", 0.0)), bool(d.get("stacked", False)),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunDirError(f"{path}: not a per-run calibration file ({e})") from e
    if not (cal.temperature > 0 and np.isfinite(cal.bias) and np.isfinite(cal.reference_weight)):
        raise RunDirError(
            f"{path}: temperature must be positive, bias and reference_weight finite; got {cal.temperature}, "
            f"{cal.bias}, {cal.reference_weight}"
        )
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

    @property
    def stacked(self) -> bool:
        """Whether some run's calibration needs the de-Doppler reference scores of the cadences it predicts."""
        return any(r.stacked for r in self.runs or [])

    def describe(self) -> str:
        if self.mode == "per-run":
            c = self.runs[0]
            ts = ", ".join(f"{r.temperature:.3f}/{r.bias:+.3f}" for r in self.runs)
            stacked = ", stacked with the de-Doppler reference" if self.stacked else ""
            return f"per-run calibration (tta {c.tta}, combine {c.combine}{stacked}), T/b {ts}"
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
