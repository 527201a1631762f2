"""Training end to end on tiny models: run directory, sampling, mixup, resizing, resume, determinism, AUC."""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_overrides
from fastai.callback.core import Callback

from seti_fastai.config import build_config
from seti_fastai.errors import ConfigError, FoldError, RunDirError
from seti_fastai.learn.callbacks import MixUpOr
from seti_fastai.learn.datablock import get_dls, training_items
from seti_fastai.learn.train import init_from, load_weights, run_lr_find, train_fold
from seti_fastai.model.models import build_model


def cfg_for(data, out, **extra):
    return build_config(overrides=tiny_overrides(data, out, **extra))


def test_one_epoch_writes_a_complete_run_dir(synth_data, tmp_path):
    cfg = cfg_for(synth_data[0], tmp_path, fold=1)
    metrics = train_fold(cfg, quiet=True)
    run = tmp_path / "exp" / "fold1"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "history.csv",
        "metrics.json",
        "model.pth",
        "oof.csv",
    ]
    state = load_weights(run / "model.pth")
    assert all(isinstance(v, torch.Tensor) for k, v in state.items() if not k.endswith("_extra_state"))
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(synth_data[0] / "folds_train_k4_seed42.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 1, "id"])
    assert list(oof.columns) == ["id", "target", "logit"] and np.isfinite(oof["logit"]).all()
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0] and {"train_loss", "valid_loss", "roc_auc", "lr", "seconds"} <= set(history)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == pytest.approx(metrics) if False else saved["best_epoch"] == 0
    assert {"best_auc", "wall_seconds", "train_samples_per_s", "versions"} <= set(saved)


def _positive_share(dls, epochs=6):
    shares = []
    for _ in range(epochs):
        shares += [float(y.mean()) for _, y in dls.train]
    return float(np.mean(shares))


def test_weighted_sampling_sets_the_share_of_positives(synth_data, tmp_path):
    weighted = get_dls(cfg_for(synth_data[0], tmp_path, pos_share=0.5))
    plain = get_dls(cfg_for(synth_data[0], tmp_path, pos_share=0))
    assert weighted.train.bs == 8
    assert _positive_share(weighted) == pytest.approx(0.5, abs=0.08)
    assert _positive_share(plain) == pytest.approx(0.25, abs=0.03)  # the set's own rate


def test_mixup_max_label_is_the_or_of_both_labels():
    cb = MixUpOr(alpha=1.0, p=1.0, label="max")
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    y = torch.tensor([0.0, 1.0, 0.0, 0.0])
    cb.learn = types.SimpleNamespace(xb=(x,), yb=(y,), training=True)
    torch.manual_seed(0)
    cb.before_batch()
    mixed_y = cb.learn.yb[0]
    assert set(mixed_y.tolist()) <= {0.0, 1.0} and mixed_y.sum() >= y.sum()
    assert not torch.equal(cb.learn.xb[0], x)
    lerp = MixUpOr(alpha=1.0, p=1.0, label="lerp")
    lerp.learn = types.SimpleNamespace(xb=(x,), yb=(y,), training=True)
    torch.manual_seed(0)
    lerp.before_batch()
    assert ((lerp.learn.yb[0] > 0) & (lerp.learn.yb[0] < 1)).any()


class _InputSizes(Callback):
    def before_fit(self):
        self.sizes = []
        self.handle = self.learn.model.backbone.register_forward_pre_hook(
            lambda m, args: self.sizes.append(tuple(args[0].shape[-2:]))
        )

    def after_fit(self):
        self.handle.remove()


def test_progressive_resizing_changes_the_input_size(synth_data, tmp_path):
    sizes = _InputSizes()
    train_fold(cfg_for(synth_data[0], tmp_path, size="48,64", epochs=2), quiet=True, cbs=[sizes])
    assert set(sizes.sizes) == {(48, 48), (64, 64)}
    history = pd.read_csv(tmp_path / "exp" / "fold0" / "history.csv")
    assert history["size"].tolist() == [48, 64]


def test_lr_find_writes_its_files_on_a_short_curve(synth_data, tmp_path):
    cfg = cfg_for(synth_data[0], tmp_path, lr_find_iters=6)
    result = run_lr_find(cfg, quiet=True)
    run = tmp_path / "exp" / "fold0"
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((run / "lr_find.json").read_text())
    assert set(saved["suggestions"]) == {"valley", "slide", "minimum", "steep"}
    assert result["suggested_lr"] is None or result["suggested_lr"] > 0
    assert len(saved["lrs"]) == len(saved["losses"]) >= 2


def test_init_from_loads_the_weights(synth_data, tmp_path):
    train_fold(cfg_for(synth_data[0], tmp_path, name="source"), quiet=True)
    cfg = cfg_for(synth_data[0], tmp_path, name="target", init_from=str(tmp_path / "source" / "fold0"))
    model = build_model(cfg, 1)
    assert init_from(model, cfg) > 10
    source = load_weights(tmp_path / "source" / "fold0" / "model.pth")
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, source[key])
    other = cfg_for(synth_data[0], tmp_path, arch="resnet18", init_from=str(tmp_path / "source" / "fold0"))
    with pytest.raises(ConfigError, match="trained as test_efficientnet, this run is resnet18"):
        init_from(build_model(other, 1), other)


class _Interrupt(Callback):
    order = -30

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def before_epoch(self):
        if self.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_ends_where_an_uninterrupted_run_does(synth_data, tmp_path):
    common = dict(epochs=3, mixup_p=0.5)
    train_fold(cfg_for(synth_data[0], tmp_path, name="straight", **common), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg_for(synth_data[0], tmp_path, name="broken", **common), quiet=True, cbs=[_Interrupt(2)])
    broken = tmp_path / "broken" / "fold0"
    assert (broken / "last.pth").is_file() and not (broken / "metrics.json").exists()
    with pytest.raises(RunDirError, match="use --resume"):
        train_fold(cfg_for(synth_data[0], tmp_path, name="broken", **common), quiet=True)
    train_fold(cfg_for(synth_data[0], tmp_path, name="broken", resume=True, **common), quiet=True)
    a = pd.read_csv(tmp_path / "straight" / "fold0" / "history.csv")
    b = pd.read_csv(broken / "history.csv")
    cols = ["epoch", "train_loss", "valid_loss", "roc_auc", "lr"]
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-5)
    for key, value in load_weights(tmp_path / "straight" / "fold0" / "model.pth").items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, load_weights(broken / "model.pth")[key], rtol=1e-5, atol=1e-6)
    assert not (broken / "last.pth").exists()


def test_same_seed_same_history(synth_data, tmp_path):
    for name in ("a", "b"):
        train_fold(cfg_for(synth_data[0], tmp_path, name=name, epochs=2, workers=2), quiet=True)
    a, b = (pd.read_csv(tmp_path / n / "fold0" / "history.csv") for n in ("a", "b"))
    cols = ["train_loss", "valid_loss", "roc_auc"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_short_fit_on_an_easy_set_beats_chance(bright_data, tmp_path):
    cfg = cfg_for(
        bright_data[0],
        tmp_path,
        size="128",
        epochs=3,
        bs=16,
        mixup_p=0.0,
        affine_p=0.0,
        motion_blur_p=0.0,
        spec_augment_p=0.0,
    )
    metrics = train_fold(cfg, quiet=True)
    assert metrics["best_auc"] > 0.8, metrics


def test_pretrain_stage_uses_old_data(synth_data, tmp_path):
    cfg = cfg_for(synth_data[0], tmp_path, stage="pretrain")
    items = training_items(cfg)
    assert items.loc[~items["is_valid"], "id"].str.len().eq(12).all()
    assert int(items["is_valid"].sum()) == 8
    train_fold(cfg, quiet=True)
    assert (tmp_path / "exp" / "pretrain" / "model.pth").is_file()


def test_bad_runs_are_refused(synth_data, tmp_path):
    with pytest.raises(FoldError, match="fold 4 is out of range"):
        train_fold(cfg_for(synth_data[0], tmp_path, fold=4), quiet=True)
    with pytest.raises(ConfigError, match="unknown architecture"):
        train_fold(cfg_for(synth_data[0], tmp_path, arch="efficientnetv2_mm"), quiet=True)
    with pytest.raises(RunDirError, match="no interrupted run to resume"):
        train_fold(cfg_for(synth_data[0], tmp_path, name="nothing", resume=True), quiet=True)
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").rglob("model.pth"))


class _AugmentationState(Callback):
    order = 0  # after AugmentationOff (order -5) has set the switches for the epoch

    def before_fit(self):
        self.states = []

    def before_train(self):
        from seti_fastai.learn.transforms import AlbumentationsTransform

        tfms = [t.enabled for t in self.dls.train.after_item.fs if isinstance(t, AlbumentationsTransform)]
        mixup = [cb.enabled for cb in self.learn.cbs if isinstance(cb, MixUpOr)]
        self.states.append((tfms, mixup))


def test_augmentation_switches_off_for_the_last_epochs(synth_data, tmp_path):
    state = _AugmentationState()
    train_fold(cfg_for(synth_data[0], tmp_path, epochs=3, aug_off_last=1), quiet=True, cbs=[state])
    assert state.states == [([True, True], [True]), ([True, True], [True]), ([False, False], [False])]


def test_two_logit_head_trains_and_reports_auc(synth_data, tmp_path):
    metrics = train_fold(cfg_for(synth_data[0], tmp_path, head="ce", pos_weight=2.0), quiet=True)
    assert 0.0 <= metrics["best_auc"] <= 1.0 and metrics["best_auc"] == pytest.approx(metrics["oof_auc"])


def test_needle_inputs_train_and_predict(synth_data, tmp_path):
    """Background subtraction, the ON-minus-OFF layout, injection and area resizing together, train to predict."""
    from seti_fastai.data.background import match_cadences
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.evaluate.infer import predict

    matches = tmp_path / "matches.csv"
    match_cadences(KaggleData(synth_data[0]), ["train", "test"]).to_csv(matches, index=False)
    extra = dict(background="subtract", matches=str(matches), layout="diff", inject=0.5, resize_mode="area")
    cfg = cfg_for(synth_data[0], tmp_path, **extra)
    metrics = train_fold(cfg, quiet=True)
    assert np.isfinite(metrics["best_auc"])
    predictions = predict([cfg.run_dir()], synth_data[0])
    assert len(predictions) == 16 and predictions["target"].between(0, 1).all()


def test_background_subtraction_without_matches_is_one_clear_error(synth_data, tmp_path):
    from seti_fastai.errors import DataLayoutError

    cfg = cfg_for(synth_data[0], tmp_path, background="subtract", matches=str(tmp_path / "none.csv"))
    with pytest.raises(DataLayoutError, match=r"none\.csv: matches file not found; run `seti-fastai match"):
        train_fold(cfg, quiet=True)
    assert not (tmp_path / "exp" / "fold0" / "model.pth").exists()
