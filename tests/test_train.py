"""Training end to end on tiny models: run directory, sampling, mixup, resizing, resume, determinism, AUC."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_flags, tiny_overrides
from fastai.callback.core import Callback
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import build_config, load_run_config
from seti_fastai.data.cadence import load_cadence
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.errors import ConfigError, FoldError, RunDirError
from seti_fastai.learn.callbacks import MixUpOr
from seti_fastai.learn.datablock import get_dls, training_items
from seti_fastai.learn.lr_find import run_lr_find
from seti_fastai.learn.train import init_from, train_fold
from seti_fastai.model.checkpoint import load_checkpoint, load_weights
from seti_fastai.model.heads import log_odds
from seti_fastai.model.models import build_model


def model_for(cfg):
    """The untrained model of a config, with the input channels of its image recipe."""
    return build_model(cfg, ImageRecipe.from_config(cfg).in_chans)


def cfg_for(data, out, **extra):
    return build_config(overrides=tiny_overrides(data, out, **extra))


def model_logits(run_dir, paths) -> np.ndarray:
    """The log-odds of a run's model.pth for each cadence file, one file at a time, outside any DataLoader."""
    cfg = load_run_config(run_dir)
    model = build_model(cfg, ImageRecipe(cfg.panels, cfg.layout).to_image(load_cadence(paths[0])).shape[0])
    model.load_state_dict(load_weights(run_dir / "model.pth"))
    model.eval()
    with torch.no_grad():
        out = [
            model(torch.from_numpy(ImageRecipe(cfg.panels, cfg.layout).to_image(load_cadence(p)))[None]) for p in paths
        ]
    return log_odds(torch.cat(out)).numpy()


def check_oof_rows(data, run_dir, fold) -> pd.DataFrame:
    """oof.csv holds every id of the fold once, each with its own target and the model's logit for its file."""
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(data / "folds_train_k4_seed42.csv", dtype={"id": str}).set_index("id")
    assert oof["id"].is_unique and set(oof["id"]) == set(folds.index[folds["fold"] == fold])
    assert (oof["target"].to_numpy() == folds.loc[oof["id"], "target"].to_numpy()).all()
    paths = [data / "train" / i[0] / f"{i}.npy" for i in oof["id"]]
    np.testing.assert_allclose(oof["logit"].to_numpy(), model_logits(run_dir, paths), rtol=1e-4, atol=1e-4)
    return oof


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
    oof = check_oof_rows(synth_data[0], run, fold=1)
    assert list(oof.columns) == ["id", "target", "logit"] and oof["logit"].nunique() > 1
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0] and {"train_loss", "valid_loss", "roc_auc", "lr", "seconds"} <= set(history)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics, default=str))  # what train_fold returned is what it saved
    assert saved["best_epoch"] == 0 and saved["best_auc"] == pytest.approx(history["roc_auc"].iloc[0])
    assert saved["n_valid"] == len(oof) and "init_from" not in saved
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


def _mix(label: str, y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a batch whose image i is the one-hot vector e_i; read back (lam, perm) from the mixed images."""
    import types

    n = len(y)
    x = torch.eye(n).view(n, 1, 1, n)
    cb = MixUpOr(alpha=1.0, p=1.0, label=label)
    cb.learn = types.SimpleNamespace(xb=(x,), yb=(y,), training=True)
    torch.manual_seed(seed)
    cb.before_batch()
    mixed = cb.learn.xb[0].view(n, n)
    lam = mixed.diagonal().clone()  # x_i = lam_i e_i + (1 - lam_i) e_perm(i): weight on e_i (1 when perm(i) = i)
    off = mixed - torch.diag(mixed.diagonal())
    perm = torch.where(off.amax(1) > 0, off.argmax(1), torch.arange(n))
    torch.testing.assert_close(mixed, lam[:, None] * torch.eye(n) + (1 - lam[:, None]) * torch.eye(n)[perm])
    return cb.learn.yb[0], lam, perm


def test_mixup_labels_follow_the_permutation_that_mixed_the_images():
    y = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    mixed_y, _, perm = _mix("max", y)
    assert not torch.equal(perm, torch.arange(len(y))) and not torch.equal(mixed_y, y)  # something was mixed
    torch.testing.assert_close(mixed_y, torch.maximum(y, y[perm]))  # the OR label, with the images' partner
    mixed_y, lam, perm = _mix("lerp", y)
    torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y[perm])


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
    assert len(saved["lrs"]) == len(saved["losses"]) >= 2
    lrs, losses = np.array(saved["lrs"]), np.array(saved["losses"])
    assert saved["suggestions"]["minimum"] == pytest.approx(lrs[losses.argmin()] / 10)  # fastai's rule, on the curve
    order = ("valley", "slide", "minimum", "steep")
    chosen = next((saved["suggestions"][k] for k in order if saved["suggestions"][k]), None)
    assert chosen is not None, "no suggestion at all"
    assert result["suggested_lr"] == saved["suggested_lr"] == chosen and lrs.min() / 10 <= chosen <= lrs.max()


def test_init_from_loads_the_weights(synth_data, trained_runs, tmp_path):
    fold0 = trained_runs[1][0]
    cfg = cfg_for(synth_data[0], tmp_path, name="target", init_from=str(fold0))
    model = model_for(cfg)
    result = init_from(model, cfg)
    n_tensors = sum(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    assert (result.source, result.loaded, result.total) == (str(fold0 / "model.pth"), n_tensors, n_tensors)
    source = load_weights(fold0 / "model.pth")
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, source[key])
    other = cfg_for(synth_data[0], tmp_path, arch="resnet18", init_from=str(fold0))
    with pytest.raises(ConfigError, match="trained as test_efficientnet, this run is resnet18"):
        init_from(model_for(other), other)


def test_init_from_refuses_another_folds_fine_tune_run(synth_data, trained_runs, tmp_path):
    fold0 = trained_runs[1][0]
    for source in (fold0, fold0 / "model.pth"):  # the run, or its weights file: the run's config decides
        leak = cfg_for(synth_data[0], tmp_path, fold=1, init_from=str(source))
        with pytest.raises(ConfigError, match=r"fine-tuned with fold 0 held out, .* validation fold 1 \(a leak\)"):
            init_from(model_for(leak), leak)
    split = cfg_for(synth_data[0], tmp_path, fold=0, n_folds=5, init_from=str(fold0))
    with pytest.raises(ConfigError, match="fine-tuned on another fold split"):
        init_from(model_for(split), split)


def test_init_from_a_weights_file_reports_the_share_loaded(synth_data, trained_runs, tmp_path):
    state = load_weights(trained_runs[1][0] / "model.pth")
    keys = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    torch.save({k: state[k] for k in keys[: len(keys) // 3]}, tmp_path / "third.pth")  # not in a run directory
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "timm.pth")  # a bare timm state dict
    cfg = cfg_for(synth_data[0], tmp_path, fold=2, init_from=str(tmp_path / "timm.pth"))
    result = init_from(model_for(cfg), cfg)
    assert result.loaded == len([k for k in keys if k.startswith("backbone.")]) and result.total == len(keys)
    cfg = cfg_for(synth_data[0], tmp_path, fold=2, init_from=str(tmp_path / "third.pth"))
    with pytest.raises(ConfigError, match=rf"only {len(keys) // 3} of the model's {len(keys)} tensors match \(33%\)"):
        init_from(model_for(cfg), cfg)
    cfg = cfg_for(synth_data[0], tmp_path, fold=2, init_from=str(tmp_path / "third.pth"), init_min_share=0.3)
    assert init_from(model_for(cfg), cfg).loaded == len(keys) // 3
    cfg = cfg_for(synth_data[0], tmp_path, init_from=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not found"):
        init_from(model_for(cfg), cfg)


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
    pretrain = tmp_path / "exp" / "pretrain"
    assert (pretrain / "model.pth").is_file()
    args = ["train", *tiny_flags(synth_data[0], tmp_path, fold=3, init_from=str(pretrain)), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    n = sum(isinstance(v, torch.Tensor) for v in load_weights(pretrain / "model.pth").values())
    assert f"started from {pretrain / 'model.pth'}: {n} of {n} tensors loaded" in result.output
    saved = json.loads((tmp_path / "exp" / "fold3" / "metrics.json").read_text())
    assert saved["init_from"] == {"source": str(pretrain / "model.pth"), "loaded": n, "total": n}


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
        from seti_fastai.learn.augment import AlbumentationsTransform

        tfms = [t.enabled for t in self.dls.train.after_item.fs if isinstance(t, AlbumentationsTransform)]
        mixup = [cb.enabled for cb in self.learn.cbs if isinstance(cb, MixUpOr)]
        self.states.append((tfms, mixup))


def test_augmentation_switches_off_for_the_last_epochs(synth_data, tmp_path):
    state = _AugmentationState()
    train_fold(cfg_for(synth_data[0], tmp_path, epochs=3, aug_off_last=1), quiet=True, cbs=[state])
    assert state.states == [([True], [True]), ([True], [True]), ([False], [False])]  # one transform, all pipelines


def test_two_logit_head_trains_and_reports_auc(synth_data, tmp_path):
    from sklearn.metrics import roc_auc_score

    metrics = train_fold(cfg_for(synth_data[0], tmp_path, head="ce", pos_weight=2.0), quiet=True)
    run = tmp_path / "exp" / "fold0"
    assert load_weights(run / "model.pth")["backbone.classifier.weight"].shape[0] == 2
    oof = check_oof_rows(synth_data[0], run, fold=0)  # logit = z1 - z0 of the model, row by row
    assert metrics["oof_auc"] == pytest.approx(roc_auc_score(oof["target"], oof["logit"]))
    history = pd.read_csv(run / "history.csv")
    assert metrics["best_auc"] == pytest.approx(history["roc_auc"].max()) == pytest.approx(metrics["oof_auc"])


def test_needle_inputs_train_and_predict(synth_data, tmp_path):
    """Background subtraction, the ON-minus-OFF layout, injection and area resizing together, train to predict."""
    from seti_fastai.data.background import match_cadences
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.evaluate.predict import predict

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


class _StopAfterFirstEpoch(Callback):
    """Interrupt a run once its first epoch (and last.pth) is written."""

    order = 70  # after RunRecorder

    def after_epoch(self):
        raise KeyboardInterrupt


def test_all_folds_skips_finished_resumes_interrupted_and_starts_missing(synth_data, tmp_path):
    data = synth_data[0]
    train_fold(cfg_for(data, tmp_path, fold=0), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg_for(data, tmp_path, fold=1, epochs=2), quiet=True, cbs=[_StopAfterFirstEpoch()])
    exp = tmp_path / "exp"
    assert load_checkpoint(exp / "fold1" / "last.pth")["epoch"] == 0
    finished = (exp / "fold0" / "model.pth").read_bytes()
    single = CliRunner().invoke(app, ["train", *tiny_flags(data, tmp_path, fold=0), "--quiet"])
    assert single.exit_code == 2 and "fold0: a run is already there; use --resume" in single.output
    result = CliRunner().invoke(app, ["train", *tiny_flags(data, tmp_path), "--all-folds", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{exp / 'fold0'}: finished earlier (metrics.json), skipping"
    assert lines[1] == f"{exp / 'fold1'}: interrupted earlier, resuming from last.pth"
    assert lines[2] == f"{exp / 'fold1'}: goes on with its saved config.yaml, not --epochs 1 (saved 2)"
    assert [line.split(":")[0] for line in lines[3:]] == [str(exp / f"fold{k}") for k in (1, 2, 3)]
    assert (exp / "fold0" / "model.pth").read_bytes() == finished
    assert pd.read_csv(exp / "fold1" / "history.csv")["epoch"].tolist() == [0, 1]  # its own 2 epochs, resumed
    for k in (1, 2, 3):
        assert (exp / f"fold{k}" / "metrics.json").is_file() and not (exp / f"fold{k}" / "last.pth").exists()
    again = CliRunner().invoke(app, ["train", *tiny_flags(data, tmp_path), "--all-folds", "--resume", "--quiet"])
    assert again.exit_code == 0 and again.output.count("skipping") == 4, again.output
    assert f"{exp / 'fold1'}: finished earlier (metrics.json) with its saved config.yaml, not --epochs 1 (saved 2)" in (
        again.output
    )
    pretrain = CliRunner().invoke(app, ["train", *tiny_flags(data, tmp_path, stage="pretrain"), "--all-folds"])
    assert pretrain.exit_code == 2 and "--all-folds trains the folds of the finetune stage" in pretrain.output


def test_resume_refuses_flags_that_differ_from_the_saved_run(synth_data, tmp_path):
    from conftest import tiny_flags
    from typer.testing import CliRunner

    from seti_fastai.cli import app

    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg_for(synth_data[0], tmp_path, epochs=2), quiet=True, cbs=[_Interrupt(1)])
    flags = tiny_flags(synth_data[0], tmp_path, epochs=2)
    changed = [f if f not in ("2", "0.01") else {"2": "3", "0.01": "0.5"}[f] for f in flags]
    result = CliRunner().invoke(app, ["train", *map(str, changed), "--resume", "--quiet"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "differ from it: --epochs 3 (saved 2), --lr 0.5 (saved 0.01)" in result.stderr
    with pytest.raises(RunDirError, match=r"--mixup-p 0.0 \(saved 0.5\)"):  # a library call compares every field
        train_fold(cfg_for(synth_data[0], tmp_path, epochs=2, mixup_p=0.0, resume=True), quiet=True)
    ok = CliRunner().invoke(app, ["train", *map(str, flags), "--workers", "0", "--resume", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "resuming from last.pth after epoch 0" in ok.stdout
    assert len(pd.read_csv(tmp_path / "exp" / "fold0" / "history.csv")) == 2
