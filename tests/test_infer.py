"""Inference: submissions, fold ensembling, flip TTA, fastai TTA, temperature scaling, evaluation, safety."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seti_fastai.data.cadence import KaggleData, load_cadence
from seti_fastai.errors import ConfigError, LabelFileError, RunDirError
from seti_fastai.evaluate.calibration import calibrate, fit_temperature
from seti_fastai.evaluate.metrics import bootstrap_auc, evaluate, expected_calibration_error, log_loss
from seti_fastai.evaluate.predict import load_run, predict, read_run, write_submission
from seti_fastai.model.checkpoint import load_weights
from seti_fastai.model.heads import log_odds, sigmoid_np


def test_submission_has_the_sample_ids_in_order(synth_data, trained_runs, tmp_path):
    root, _ = synth_data
    predictions = predict(trained_runs[1], root)
    write_submission(predictions, tmp_path / "submission.csv")
    submission = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    sample = pd.read_csv(root / "sample_submission.csv", dtype={"id": str})
    assert submission["id"].tolist() == sample["id"].tolist()
    assert submission["target"].between(0, 1).all() and list(submission.columns) == ["id", "target"]


def test_ensemble_is_the_mean_of_single_folds(synth_data, trained_runs):
    root, _ = synth_data
    a, b = (predict([run], root)["target"].to_numpy() for run in trained_runs[1])
    both = predict(trained_runs[1], root)["target"].to_numpy()
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, atol=1e-6)
    z = predict(trained_runs[1], root, combine="logit")["target"].to_numpy()
    za, zb = np.log(a / (1 - a)), np.log(b / (1 - b))
    np.testing.assert_allclose(z, sigmoid_np((za + zb) / 2), rtol=1e-4, atol=1e-5)


def test_flip_tta_is_the_mean_of_explicitly_flipped_predictions(synth_data, trained_runs):
    root, _ = synth_data
    run = trained_runs[1][0]
    _, model = load_run(run)
    kaggle = KaggleData(root)
    ids = kaggle.read_labels("test")["id"].tolist()
    image = read_run(run).image  # the run's own image recipe
    x = torch.stack([torch.from_numpy(image.to_image(load_cadence(kaggle.cadence_path("test", i)))) for i in ids])
    with torch.no_grad():
        views = [x, x.flip(-1)]  # the frequency flip training used; training never flips time
        expected = np.mean([torch.sigmoid(log_odds(model(v))).numpy() for v in views], axis=0)
    got = predict([run], root, tta="flips")["target"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fastai_tta_blends_augmented_and_plain(synth_data, trained_runs):
    root, _ = synth_data
    run = trained_runs[1][0]
    plain = predict([run], root)["target"].to_numpy()
    only_plain = predict([run], root, tta="2", beta=1.0)["target"].to_numpy()
    np.testing.assert_allclose(only_plain, plain, rtol=1e-4, atol=1e-5)
    augmented = predict([run], root, tta="3", beta=0.0)["target"].to_numpy()
    assert not np.allclose(augmented, plain) and ((augmented > 0) & (augmented < 1)).all()


def test_temperature_lowers_the_log_loss_of_overconfident_logits():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(float)
    z = (y * 2 - 1) * 0.8 + rng.normal(0, 1, 2000)  # calibrated-ish log-odds ...
    z_hot = 4 * z  # ... made overconfident
    t = fit_temperature(z_hot, y)
    assert 2.5 < t < 6
    assert log_loss(z_hot / t, y) < log_loss(z_hot, y) - 0.1
    assert expected_calibration_error(sigmoid_np(z_hot / t), y) < expected_calibration_error(sigmoid_np(z_hot), y)


def test_calibrate_writes_beside_the_runs_and_predict_applies_it(synth_data, trained_runs, tmp_path):
    root, _ = synth_data
    result = calibrate(trained_runs[1], tmp_path / "calibration.json")
    assert result["logloss_after"] <= result["logloss_before"] + 1e-9
    t = result["temperature"]
    plain = predict(trained_runs[1], root)["target"].to_numpy()
    scaled = predict(trained_runs[1], root, temperature=t)["target"].to_numpy()
    np.testing.assert_allclose(scaled, sigmoid_np(np.log(plain / (1 - plain)) / t), rtol=1e-4, atol=1e-6)


def test_evaluate_auc_and_interval(synth_data, trained_runs, tmp_path):
    root, hidden = synth_data
    write_submission(predict(trained_runs[1], root), tmp_path / "sub.csv")
    result = evaluate(tmp_path / "sub.csv", hidden / "test_labels.csv", n_boot=200)
    assert 0 <= result["ci_low"] <= result["auc"] <= result["ci_high"] <= 1 and result["n"] == 16
    y = np.array([0, 0, 1, 1, 0, 1] * 20)
    auc, lo, hi = bootstrap_auc(y, y + 0.1, n=100)
    assert auc == lo == hi == 1.0


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_that_runs_code_is_refused(trained_runs, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pth"
    torch.save({"weights": _RunsCode(marker)}, evil)
    with pytest.raises(RunDirError, match="refused: it would run code"):
        load_weights(evil)
    assert not marker.exists(), "unpickling ran code"


def test_bad_run_directories(synth_data, trained_runs, tmp_path):
    root, _ = synth_data
    with pytest.raises(RunDirError, match=r"model\.pth not found"):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text((trained_runs[1][0] / "config.yaml").read_text())
        predict([tmp_path / "run"], root)
    with pytest.raises(RunDirError, match=r"config\.yaml not found"):
        predict([tmp_path], root)
    other = tmp_path / "other"
    other.mkdir()
    text = (trained_runs[1][0] / "config.yaml").read_text()
    (other / "config.yaml").write_text(text.replace("arch: test_efficientnet", "arch: resnet18"))
    (other / "model.pth").write_bytes((trained_runs[1][0] / "model.pth").read_bytes())
    with pytest.raises(RunDirError, match=r"model\.pth: does not match config\.yaml"):
        predict([trained_runs[1][0], other], root)


def test_mixed_layouts_are_refused(synth_data, trained_runs, tmp_path):
    from conftest import tiny_overrides

    from seti_fastai.config import build_config
    from seti_fastai.learn.train import train_fold

    train_fold(
        build_config(overrides=tiny_overrides(synth_data[0], tmp_path, panels="all", layout="stack")), quiet=True
    )
    with pytest.raises(ConfigError, match=r"image layout all/stack/False differs from .* \(on/dedoppler/False\)"):
        predict([trained_runs[1][0], tmp_path / "exp" / "fold0"], synth_data[0])


def test_ids_without_files_and_mismatched_predictions(synth_data, trained_runs, tmp_path):
    root, hidden = synth_data
    (tmp_path / "ids.csv").write_text("id\nabcdef012345678\n")
    with pytest.raises(Exception, match=r"abcdef012345678\.npy: file not found"):
        predict(trained_runs[1], root, ids_file=tmp_path / "ids.csv")
    labels = pd.read_csv(hidden / "test_labels.csv", dtype={"id": str})
    labels.iloc[:-1].assign(target=0.5).to_csv(tmp_path / "short.csv", index=False)
    assert evaluate(tmp_path / "short.csv", hidden / "test_labels.csv", n_boot=10)["n"] == len(labels) - 1
    pd.concat([labels, labels.iloc[:1].assign(id="0123456789abcde")]).to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(LabelFileError, match=r"ids do not match .*: 1 not in the labels \(e.g. 0123456789abcde\)"):
        evaluate(tmp_path / "long.csv", hidden / "test_labels.csv")
