"""Training: one fold (or the pre-training stage) per run directory, and lr_find.

runs/<name>/fold<k>/   config.yaml  model.pth  history.csv  oof.csv  metrics.json  [lr_find.png/json]
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.learner import Learner
from fastai.torch_core import set_seed

from seti_fastai.config import TrainConfig, load_run_config, save_config
from seti_fastai.data.cadence import image_shape
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.io import atomic_write_csv, atomic_write_json
from seti_fastai.learn.callbacks import (
    AugmentationOff,
    EpochSeed,
    MixUpOr,
    ProgressiveResize,
    RunRecorder,
    load_opt_state,
)
from seti_fastai.learn.datablock import get_dls, training_items
from seti_fastai.model.heads import SetiLoss, auc_metric, log_odds, roc_auc
from seti_fastai.model.models import build_model, check_arch, param_groups


def device_precision(cfg: TrainConfig) -> str:
    """The precision the run will use: mixed precision only on CUDA."""
    if not torch.cuda.is_available() or cfg.precision == "fp32":
        return "fp32"
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cfg.precision


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """A plain state dict, loaded with `weights_only=True`: a file that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: the file is not plain tensors
        raise RunDirError(f"{path}: refused, not a plain weights file ({str(e).splitlines()[0][:160]})") from e


def init_from(model: torch.nn.Module, cfg: TrainConfig) -> int:
    """Load `model.pth` of the run directory `cfg.init_from` into `model`; returns the number of tensors loaded.

    The architecture and image layout must match; tensors whose shape differs (a different head) are skipped.
    """
    source = Path(cfg.init_from)
    other = load_run_config(source)
    if other.arch != cfg.arch:
        raise ConfigError(f"--init-from {source}: trained as {other.arch}, this run is {cfg.arch}")
    if image_shape(other.panels, other.layout)[0] != image_shape(cfg.panels, cfg.layout)[0]:
        raise ConfigError(f"--init-from {source}: input channels differ (panels/layout {other.panels}/{other.layout})")
    state = load_weights(source / "model.pth")
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and getattr(own[k], "shape", None) == getattr(v, "shape", 0)}
    model.load_state_dict(matching, strict=False)
    model.set_size(cfg.size[0])
    return len(matching)


def build_learner(cfg: TrainConfig, items: pd.DataFrame | None = None, quiet: bool = False) -> Learner:
    """The Learner of a config: DataLoaders, model, loss, ROC AUC metric, seeds, mixup, precision."""
    check_arch(cfg.arch)
    set_seed(cfg.seed)
    dls = get_dls(cfg, items)
    model = build_model(cfg, in_chans=image_shape(cfg.panels, cfg.layout)[0])
    if cfg.init_from:
        init_from(model, cfg)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    learn = Learner(
        dls, model, loss_func=SetiLoss(cfg.head, cfg.pos_weight), metrics=[auc_metric()], splitter=param_groups,
        wd=cfg.wd, path=run_dir, model_dir=".",
        cbs=[EpochSeed(cfg.seed), MixUpOr(cfg.mixup_alpha, cfg.mixup_p, cfg.mixup_label)],
    )  # fmt: skip
    precision = device_precision(cfg)
    if precision != "fp32":
        learn = learn.to_bf16() if precision == "bf16" else learn.to_fp16()
        learn = learn.to_channelslast()
    if quiet:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    return learn


def _check_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run; errors for the ambiguous cases."""
    last = run_dir / "last.pth"
    if resume:
        if (run_dir / "metrics.json").is_file():
            raise RunDirError(f"{run_dir}: this run already finished; nothing to resume")
        if not last.is_file():
            raise RunDirError(f"{run_dir}: no interrupted run to resume (last.pth not found)")
        return load_weights(last)
    if (run_dir / "metrics.json").is_file() or last.is_file():
        raise RunDirError(f"{run_dir}: a run is already there; use --resume, another --name, or delete it")
    return None


def _versions() -> dict[str, str]:
    import albumentations
    import fastai
    import timm

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        fastai=fastai.__version__,
        timm=timm.__version__,
        albumentations=albumentations.__version__,
    )


def train_fold(cfg: TrainConfig, quiet: bool = False, cbs: list | None = None) -> dict[str, Any]:
    """Train one run (a fold, or the pre-training stage) and write its run directory; returns metrics.json."""
    cfg.validate()
    run_dir = cfg.run_dir()
    checkpoint = _check_run_dir(run_dir, cfg.resume)
    if checkpoint is not None:  # go on exactly as saved: the run's own config, this call's workers
        saved = load_run_config(run_dir)
        saved.workers, saved.resume = cfg.workers, True
        cfg = saved
    check_arch(cfg.arch)
    items = training_items(cfg)
    learn = build_learner(cfg, items, quiet)
    save_config(cfg, run_dir / "config.yaml")
    recorder = RunRecorder(run_dir)
    start_epoch = 0
    if checkpoint is not None:
        learn.model.load_state_dict(checkpoint["model"])
        learn.create_opt()
        load_opt_state(learn.opt, checkpoint["opt"])
        start_epoch = int(checkpoint["epoch"]) + 1
        history = pd.read_csv(run_dir / "history.csv").iloc[:start_epoch]
        recorder = RunRecorder(run_dir, checkpoint["best"], int(checkpoint["best_epoch"]), history)
    fit_cbs = [ProgressiveResize(cfg.size_schedule()), recorder, *(cbs or [])]
    if cfg.aug_off_last:
        fit_cbs.append(AugmentationOff(cfg.aug_off_last))
    lr = slice(cfg.lr * cfg.body_lr_mult, cfg.lr) if cfg.body_lr_mult != 1.0 else cfg.lr
    start = time.perf_counter()
    learn.fit_one_cycle(cfg.epochs, lr, pct_start=cfg.pct_start, cbs=fit_cbs, start_epoch=start_epoch)
    seconds = time.perf_counter() - start
    if recorder.best_epoch < 0:
        raise RunDirError(f"{run_dir}: validation AUC was never finite; no model saved")
    return _finish_run(cfg, learn, items, recorder, seconds)


def _finish_run(
    cfg: TrainConfig, learn: Learner, items: pd.DataFrame, recorder: RunRecorder, seconds: float
) -> dict[str, Any]:
    """Reload the best weights, write oof.csv and metrics.json, drop the resume checkpoint."""
    run_dir = cfg.run_dir()
    learn.model.load_state_dict(load_weights(run_dir / "model.pth"))
    out, targets = learn.get_preds(dl=learn.dls.valid, act=lambda o: o)
    valid = items[items["is_valid"]]
    oof = pd.DataFrame(
        {"id": valid["id"].to_numpy(), "target": valid["target"].to_numpy(), "logit": log_odds(out).float().numpy()}
    )
    atomic_write_csv(oof, run_dir / "oof.csv")
    history = pd.DataFrame(recorder.rows)
    metrics = dict(
        best_auc=recorder.best, best_epoch=recorder.best_epoch, oof_auc=roc_auc(out, targets),
        best_size=int(learn.model.size[0]), epochs=cfg.epochs, n_train=int((~items["is_valid"]).sum()),
        n_valid=int(items["is_valid"].sum()), wall_seconds=round(seconds, 1),
        train_samples_per_s=float(history["train_samples_per_s"].mean()), precision=device_precision(cfg),
        device=str(learn.dls.device), versions=_versions(),
    )  # fmt: skip
    atomic_write_json(run_dir / "metrics.json", metrics)
    (run_dir / "last.pth").unlink(missing_ok=True)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# lr_find


def _suggestions(lrs: np.ndarray, losses: np.ndarray) -> dict[str, float | None]:
    """fastai's four suggestions, each computed on its own so a short curve loses only those that need more points."""
    out: dict[str, float | None] = {}
    for name, func in (("valley", valley), ("slide", slide), ("minimum", minimum), ("steep", steep)):
        try:
            value, _ = func(torch.tensor(lrs), torch.tensor(losses), num_it=len(lrs))
            out[name] = float(value) if value is not None and math.isfinite(float(value)) else None
        except (IndexError, ValueError, RuntimeError):
            out[name] = None
    return out


def run_lr_find(cfg: TrainConfig, quiet: bool = False) -> dict[str, Any]:
    """Run fastai's lr_find on the run's data and model; write lr_find.png/json in the run directory."""
    from seti_fastai.evaluate.plots import plot_lr_find

    cfg.validate()
    run_dir = cfg.run_dir()
    learn = build_learner(cfg, quiet=quiet)
    learn.lr_find(num_it=cfg.lr_find_iters, show_plot=False, suggest_funcs=())
    lrs = np.array(learn.recorder.lrs, dtype=float)
    losses = np.array([float(v) for v in learn.recorder.losses], dtype=float)
    if len(lrs) < 2:
        raise RunDirError("lr_find recorded fewer than 2 points; raise --lr-find-iters")
    suggestions = _suggestions(lrs, losses)
    chosen = next((suggestions[k] for k in ("valley", "slide", "minimum", "steep") if suggestions[k]), None)
    result = dict(suggestions=suggestions, suggested_lr=chosen, lrs=lrs.tolist(), losses=losses.tolist())
    atomic_write_json(run_dir / "lr_find.json", result)
    plot_lr_find(lrs, losses, suggestions, run_dir / "lr_find.png")
    return result
