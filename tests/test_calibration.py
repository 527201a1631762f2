"""Per-run calibration (temperature + bias before the ensemble), the pooled temperature, and their errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from seti_fastai.data.cadence import KaggleData, load_cadence
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.evaluate.calibrate import calibrate_runs
from seti_fastai.evaluate.calibration import (
    RunCalibration,
    combine,
    fit_run,
    fit_temperature,
    fit_temperature_bias,
    read_run_calibration,
    resolve_calibration,
)
from seti_fastai.evaluate.metrics import expected_calibration_error, log_loss
from seti_fastai.evaluate.predict import load_run, predict, read_run
from seti_fastai.model.heads import log_odds, sigmoid_np


def _scores(n: int, pos_rate: float, rng: np.random.Generator, prior: float | None = None):
    """Labels and their exact posterior log-odds under `prior` [default: the true rate] for a Gaussian score."""
    y = (rng.random(n) < pos_rate).astype(float)
    x = rng.normal(0, 1, n) + np.where(y == 1, 0.75, -0.75)
    prior = pos_rate if prior is None else prior
    return y, np.log(prior / (1 - prior)) + 1.5 * x  # log-likelihood ratio of N(+-0.75, 1) is 1.5 x


def _two_runs(n: int, rng: np.random.Generator):
    """Two runs predicting the same cadences, trained with weighted sampling (log-odds shifted by log 3): run A
    otherwise calibrated, run B 6x too sharp. Their errors are mostly shared, as for folds of one data set; with
    independent errors the mean of two calibrated runs is under-confident (see README)."""
    y = (rng.random(n) < 0.2).astype(float)
    x = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.1, n)  # the evidence both runs see
    z_a = np.log(0.25) + 1.2 * (x + rng.normal(0, 0.5, n)) + np.log(3)
    z_b = 6.0 * (np.log(0.25) + 1.2 * (x + rng.normal(0, 0.5, n))) + np.log(3)
    return y, np.stack([z_a[None], z_b[None]])  # (runs, views, n)


def test_per_run_calibration_changes_the_ensemble_ranking_and_lowers_loss():
    rng = np.random.default_rng(0)
    y_fit, fit = _two_runs(4000, rng)  # each run's out-of-fold cadences
    y, test = _two_runs(4000, rng)  # new cadences, predicted by both runs
    cals = [fit_run(fit[r], y_fit, "none", "prob")[0] for r in range(2)]
    assert cals[1].temperature > 3 * cals[0].temperature  # the sharp run is cooled much more
    raw = combine(np.stack([combine(test[r], "prob") for r in range(2)]), "prob")
    calibrated = combine(np.stack([combine(cals[r].apply(test[r]), "prob") for r in range(2)]), "prob")
    auc_raw, auc_cal = roc_auc_score(y, raw), roc_auc_score(y, calibrated)
    assert abs(auc_cal - auc_raw) > 1e-3, "per-run calibration did not change the ranking"
    assert log_loss(calibrated, y) < log_loss(raw, y) - 0.01
    assert expected_calibration_error(sigmoid_np(calibrated), y) < expected_calibration_error(sigmoid_np(raw), y)
    # a pooled temperature after the ensemble never changes the ranking
    t = fit_temperature(combine(np.stack([combine(fit[r], "prob") for r in range(2)]), "prob"), y_fit)
    assert roc_auc_score(y, raw / t) == pytest.approx(auc_raw, abs=1e-12)


def test_bias_undoes_the_prior_shift_of_weighted_sampling():
    rng = np.random.default_rng(1)
    rate, share = 0.1, 0.25  # positives in the data, positives per weighted training batch
    y, z = _scores(20000, rate, rng, prior=share)  # a model trained at 25 % positives: shifted by log 3
    t, b = fit_temperature_bias(z, y)
    shift = np.log(share / (1 - share)) - np.log(rate / (1 - rate))
    assert sigmoid_np(z).mean() > y.mean() + 0.05  # uncalibrated: far too many positives predicted
    assert abs(sigmoid_np(z / t + b).mean() - y.mean()) < 2e-3
    assert t == pytest.approx(1.0, abs=0.1) and b == pytest.approx(-shift, abs=0.2)


def test_one_view_fit_is_unpenalised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    y, z = _scores(5000, 0.3, rng)
    z = 3 * z + 1  # too sharp, shifted
    t, b = fit_temperature_bias(z, y, "prob")
    lr = LogisticRegression(C=np.inf).fit(z[:, None], y)
    assert 1 / t == pytest.approx(lr.coef_[0, 0], rel=2e-3) and b == pytest.approx(lr.intercept_[0], abs=5e-3)
    assert fit_temperature_bias(z, y, "logit") == pytest.approx((t, b), rel=1e-6)


def test_fit_refuses_one_class():
    with pytest.raises(RunDirError, match="one class only"):
        fit_temperature_bias(np.ones(10), np.zeros(10))


@pytest.fixture
def run_copies(trained_runs, tmp_path):
    """Copies of the two session runs, so calibration files never leak into other tests."""
    copies = []
    for run in trained_runs[1]:
        copies.append(tmp_path / "exp" / run.name)
        shutil.copytree(run, copies[-1])
    return copies


def test_predict_applies_each_runs_own_calibration(synth_data, run_copies):
    root, _ = synth_data
    result = calibrate_runs(run_copies, tta="flips", combine="prob", stack="off")
    for run, record in zip(run_copies, result["runs"], strict=True):
        saved = json.loads((run / "calibration.json").read_text())
        assert saved["tta"] == "flips" and saved["combine"] == "prob" and saved["n"] == 16 and saved["views"] == 2
        assert (
            saved["logloss_after"] <= saved["logloss_before"] + 1e-9 and saved["temperature"] == record["temperature"]
        )
    assert set(result["ensemble"]) == {"none", "per-run"} | {k for k in result["ensemble"] if k.startswith("pooled")}
    resolved = resolve_calibration(run_copies, "auto", "flips", "prob")
    assert resolved.mode == "per-run" and resolved.runs[0] != resolved.runs[1]
    got = predict(run_copies, root, tta="flips", run_calibrations=resolved.runs)["target"].to_numpy()

    kaggle = KaggleData(root)
    ids = kaggle.read_labels("test")["id"].tolist()
    image = read_run(run_copies[0]).image  # the runs' own image recipe
    x = torch.stack([torch.from_numpy(image.to_image(load_cadence(kaggle.cadence_path("test", i)))) for i in ids])
    per_run = []
    for run in run_copies:
        _, model = load_run(run)
        cal = read_run_calibration(run)
        with torch.no_grad():
            z = np.stack([log_odds(model(v)).numpy() for v in (x, x.flip(-1))])
        per_run.append(sigmoid_np(z / cal.temperature + cal.bias).mean(axis=0))  # calibrate each view, then average
    np.testing.assert_allclose(got, np.mean(per_run, axis=0), rtol=1e-4, atol=1e-6)
    plain = predict(run_copies, root, tta="flips")["target"].to_numpy()
    assert not np.allclose(got, plain, atol=1e-4)


def test_calibration_errors(synth_data, run_copies):
    root, _ = synth_data
    with pytest.raises(RunDirError, match=r"fold0/calibration\.json: not found; run `seti-fastai calibrate`"):
        resolve_calibration(run_copies, "per-run", "none", "prob")
    assert resolve_calibration(run_copies, "auto", "none", "prob").mode == "none"
    calibrate_runs(run_copies[1:], tta="flips", combine="prob")
    with pytest.raises(RunDirError, match=r"fold0/calibration\.json: not found, though other runs have one"):
        resolve_calibration(run_copies, "auto", "flips", "prob")
    with pytest.raises(ConfigError, match=r"fitted for --tta flips --combine prob, predicting with --tta none"):
        resolve_calibration(run_copies[1:], "auto", "none", "prob")
    with pytest.raises(ConfigError, match=r"fitted for --tta flips --combine prob, predicting with --tta flips --co"):
        resolve_calibration(run_copies[1:], "per-run", "flips", "logit")
    with pytest.raises(ConfigError, match="per-run calibration needs --tta none or flips"):
        resolve_calibration(run_copies[1:], "per-run", "4", "prob")
    with pytest.raises(ConfigError, match="per-run calibration needs --tta none or flips"):
        calibrate_runs(run_copies, tta="4")
    with pytest.raises(ConfigError, match=r"fitted for --tta flips"):  # the library checks too
        predict(run_copies[1:], root, run_calibrations=[read_run_calibration(run_copies[1])])
    with pytest.raises(RunDirError, match="it is a per-run calibration"):
        resolve_calibration(run_copies[1:], str(run_copies[1] / "calibration.json"), "flips", "prob")
    with pytest.raises(ConfigError, match="calibration must be one of auto, per-run, pooled, none"):
        resolve_calibration(run_copies, "perrun", "none", "prob")
    (run_copies[0] / "calibration.json").write_text('{"kind": "per-run", "temperature": -1, "bias": 0}')
    with pytest.raises(RunDirError, match="not a per-run calibration file"):
        read_run_calibration(run_copies[0])
    assert RunCalibration(2.0, -1.0, "none", "prob").apply(np.array([4.0])) == pytest.approx([1.0])


def _cli(*args):
    from typer.testing import CliRunner

    from seti_fastai.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_calibrate_then_predict_commands(synth_data, run_copies, tmp_path):
    root, _ = synth_data
    sub = tmp_path / "sub.csv"
    result = _cli("predict", *run_copies, "--data", root, "--out", sub, "--calibration", "per-run", "--workers", 0)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "calibration.json: not found" in result.stderr
    result = _cli("calibrate", *run_copies, "--tta", "flips", "--workers", 0)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(", b ") == 2 and "ensemble out-of-fold (32 cadences, tta flips" in result.stdout
    assert all(name in result.stdout for name in ("  none ", "  pooled T=", "  per-run "))
    result = _cli("predict", *run_copies, "--data", root, "--out", sub, "--tta", "flips", "--workers", 0)
    assert result.exit_code == 0 and result.stdout.startswith("per-run calibration (tta flips, combine prob")
    result = _cli("predict", *run_copies, "--data", root, "--out", tmp_path / "s2.csv", "--workers", 0)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "fitted for --tta flips" in result.stderr
    assert not (tmp_path / "s2.csv").exists()
    result = _cli(
        "predict", *run_copies, "--data", root, "--out", tmp_path / "s3.csv", "--no-calibration", "--workers", 0
    )
    assert result.exit_code == 0 and "per-run" not in result.stdout
    result = _cli("calibrate", *run_copies, "--out", tmp_path / "c.json")
    assert result.exit_code == 2 and "--out applies to --pooled" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# stacking with the de-Doppler reference


def _stack_case(n: int, rng: np.random.Generator, informative: bool):
    """Labels, a run's log-odds that see half of the evidence, and reference scores that see the other half (or
    nothing, when not `informative`)."""
    y = (rng.random(n) < 0.2).astype(float)
    z = 1.2 * (rng.normal(0, 1, n) + 1.0 * y) - 1.0
    snr = 2.5 + np.abs(rng.normal(0, 0.5, n)) + (np.exp(rng.normal(0.0, 0.7, n)) * y if informative else 0.0)
    return y, z, snr


def test_stacked_fit_with_one_view_is_a_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from seti_fastai.evaluate.calibration import fit_stacked, reference_feature

    y, z, snr = _stack_case(3000, np.random.default_rng(0), informative=True)
    t, b, w = fit_stacked(z, reference_feature(snr), y)
    lr = LogisticRegression(C=np.inf, max_iter=1000).fit(np.c_[z, reference_feature(snr)], y)
    assert 1 / t == pytest.approx(lr.coef_[0, 0], rel=5e-3) and w == pytest.approx(lr.coef_[0, 1], rel=5e-3)
    assert b == pytest.approx(lr.intercept_[0], rel=5e-3)


def test_stack_auto_stacks_an_informative_reference_and_not_a_useless_one():
    rng = np.random.default_rng(1)
    y, z, snr = _stack_case(2000, rng, informative=True)
    cal, record = fit_run(z[None], y, "none", "prob", snr, "auto")
    assert cal.stacked and record["stacked"] and cal.reference_weight > 0.5
    assert record["cv_logloss_stacked"] < record["cv_logloss_plain"]
    assert roc_auc_score(y, cal.apply(z[None], snr)[0]) > roc_auc_score(y, z) + 0.03
    y, z, snr = _stack_case(2000, rng, informative=False)
    cal, record = fit_run(z[None], y, "none", "prob", snr, "auto")
    assert not cal.stacked and cal.reference_weight == 0.0
    assert record["cv_logloss_stacked"] > record["cv_logloss_plain"] * 0.99
    with pytest.raises(ConfigError, match="stack must be one of auto, on, off"):
        fit_run(z[None], y, "none", "prob", snr, "yes")


def test_predict_with_a_stacked_calibration_adds_the_reference_of_the_same_cadences(synth_data, run_copies):
    from seti_fastai.evaluate.calibration import reference_feature
    from seti_fastai.evaluate.dedoppler import score_files

    root, _ = synth_data
    result = calibrate_runs(run_copies, tta="none", stack="on")
    assert all(r["stacked"] for r in result["runs"])
    oof = result["oof"]
    assert oof["reference"].notna().all() and len(oof) == 32
    resolved = resolve_calibration(run_copies, "auto", "none", "prob")
    assert resolved.stacked and "stacked with the de-Doppler reference" in resolved.describe()
    got = predict(run_copies, root, run_calibrations=resolved.runs)["target"].to_numpy()

    kaggle = KaggleData(root)
    paths = kaggle.paths("test", kaggle.read_labels("test")["id"].tolist())
    feature = reference_feature(score_files(paths)["score"].to_numpy())  # the reference, read separately
    image = read_run(run_copies[0]).image  # the runs' own image recipe
    x = torch.stack([torch.from_numpy(image.to_image(load_cadence(p))) for p in paths])
    per_run = []
    for run in run_copies:
        _, model = load_run(run)
        cal = read_run_calibration(run)
        saved = json.loads((run / "calibration.json").read_text())
        assert cal.stacked and cal.reference_weight == pytest.approx(saved["reference_weight"])
        with torch.no_grad():
            z = log_odds(model(x)).numpy()
        per_run.append(sigmoid_np(z / cal.temperature + cal.bias + cal.reference_weight * feature))
    np.testing.assert_allclose(got, np.mean(per_run, axis=0), rtol=1e-4, atol=1e-6)
