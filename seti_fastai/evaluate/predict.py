"""Prediction: run directories -> (TTA) -> per-run calibration -> fold ensemble -> (pooled temperature) -> submission.

Only `config.yaml` and `model.pth` are read from a run directory, and the weights with `weights_only=True`:
a run directory from someone else cannot run code on this machine.

Probabilities flow as log-odds `z`: each view (or TTA pass) and each run gives one `z` per cadence; views and runs
are combined as a mean of probabilities (`combine="prob"`, fastai's TTA rule, the default) or of log-odds
(`combine="logit"`). Per-run calibration (`calibration.py`) maps each run's views to `z / T + b` before they are
combined; a pooled temperature divides the final log-odds instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders, Datasets, TfmdDL
from fastai.data.transforms import ColReader
from fastai.learner import Learner

from seti_fastai.config import TrainConfig, load_run_config
from seti_fastai.data.cadence import KaggleData, image_shape, read_id_csv
from seti_fastai.data.pack import PackedSources
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.evaluate.calibration import COMBINES, RunCalibration, check_run_calibration
from seti_fastai.evaluate.calibration import combine as _combine
from seti_fastai.io import atomic_write_csv
from seti_fastai.learn.datablock import loader_kwargs, run_packed, run_partners
from seti_fastai.learn.transforms import CadenceLoader, Partners, train_transforms
from seti_fastai.model.checkpoint import load_weights
from seti_fastai.model.heads import SetiLoss, log_odds, logit_np, sigmoid_np
from seti_fastai.model.models import SetiModel, build_model
from seti_fastai.model.resize import Resize


def check_run_dir(run_dir: Path | str) -> Path:
    """A run directory that inference can use: it must hold config.yaml and model.pth."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "model.pth"):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir}: {name} not found (not a finished run directory)")
    return run_dir


def load_run(run_dir: Path | str) -> tuple[TrainConfig, SetiModel]:
    """Rebuild a trained model from `config.yaml` + `model.pth` (no network: pretrained weights are not fetched)."""
    run_dir = check_run_dir(run_dir)
    cfg = load_run_config(run_dir)
    offline = dataclasses.replace(cfg, pretrained=False, pretrained_weights=None, init_from=None)
    model = build_model(offline, in_chans=image_shape(cfg.panels, cfg.layout)[0])
    try:
        model.load_state_dict(load_weights(run_dir / "model.pth"))
    except RuntimeError as e:
        raise RunDirError(f"{run_dir / 'model.pth'}: does not match config.yaml ({str(e).splitlines()[0]})") from e
    return cfg, model.eval()


def _layout(cfg: TrainConfig) -> tuple[str, str, bool]:
    return (cfg.panels, cfg.layout, cfg.standardize)


def check_same_layout(run_dirs: list[Path], cfgs: list[TrainConfig]) -> None:
    """Runs in one ensemble must read cadences the same way (panels, layout, standardisation)."""
    first = _layout(cfgs[0])
    for run_dir, cfg in zip(run_dirs, cfgs, strict=True):
        if _layout(cfg) != first:
            raise ConfigError(
                f"{run_dir}: image layout {'/'.join(map(str, _layout(cfg)))} differs from {run_dirs[0]} "
                f"({'/'.join(map(str, first))}); predict each layout separately and average the CSVs"
            )


def flip_views(cfg: TrainConfig) -> list[tuple[int, ...]]:
    """The flips training used, as TTA views: the plain image, and the frequency (width) flip when the run trained
    with it. Never time: training never flips time, so the model has not seen time-reversed needles."""
    return [(), (-1,)] if cfg.freq_flip_p > 0 else [()]


def inference_dl(
    cfg: TrainConfig,
    paths: list[str],
    bs: int,
    workers: int,
    device,
    partners: Partners | None = None,
    packed: PackedSources | None = None,
) -> TfmdDL:
    """Un-shuffled DataLoader over cadence files (or their packed cache), carrying the run's training augmentations
    (used by fastai's TTA only when it switches the dataset to the training split)."""
    _, h, w = image_shape(cfg.panels, cfg.layout)
    items = pd.DataFrame({"path": paths})
    loader = CadenceLoader(cfg.panels, cfg.layout, cfg.standardize, partners, packed)
    dsets = Datasets(items, tfms=[[ColReader("path"), loader]], do_setup=False)  # setup would read a cadence
    return TfmdDL(
        dsets,
        bs=bs,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        device=device,
        after_item=train_transforms(cfg, (h, w)),
        **loader_kwargs(device),
    )


def _views_logits(model: torch.nn.Module, x: torch.Tensor, views: list[tuple[int, ...]], device) -> torch.Tensor:
    """Log-odds (n_views, batch) of one model on one batch, all views in one forward pass."""
    # a plain resize (any mode) commutes with flips: resize once, flip the small images (the learned resizer does not)
    resize_first = isinstance(model.resize, Resize)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if resize_first:
            x = model.resize(x)
        batch = torch.cat([x.flip(v) if v else x for v in views])
        z = log_odds(model.backbone(batch) if resize_first else model(batch)).float()
    return z.view(len(views), x.shape[0]).cpu()


@torch.no_grad()
def predict_views_runs(
    models: list[torch.nn.Module],
    dl: TfmdDL,
    views: list[list[tuple[int, ...]]],
    device,
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Log-odds (n_views, n) of every model: each batch is read once and goes through every model with all of its
    views (`views[i]` for `models[i]`). `progress` counts cadences per model."""
    models = [m.to(device).eval() for m in models]
    out: list[list[torch.Tensor]] = [[] for _ in models]
    for (x,) in dl:
        x = x.to(device, non_blocking=True)
        for model, model_views, chunks in zip(models, views, out, strict=True):
            chunks.append(_views_logits(model, x, model_views, device))
            if progress is not None:
                progress(x.shape[0])
    return [torch.cat(chunks, dim=1).numpy() for chunks in out]


def predict_views(
    model: torch.nn.Module,
    dl: TfmdDL,
    views: list[tuple[int, ...]],
    device,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Log-odds (n_views, n) from one batched forward pass per batch: all views go through the model together."""
    return predict_views_runs([model], dl, [views], device, progress)[0]


def predict_fastai_tta(
    cfg: TrainConfig, model: torch.nn.Module, dl: TfmdDL, n: int, beta: float, combine: str
) -> np.ndarray:
    """fastai's `Learner.tta`: mean of `n` passes with the training augmentations, blended with the plain
    prediction with weight `beta`; returns log-odds (n_cadences,)."""
    learn = Learner(DataLoaders(dl, dl, device=dl.device), model, loss_func=SetiLoss(cfg.head))
    learn.remove_cbs(list(learn.cbs[1:]))  # keep TrainEvalCallback only: no progress bars, no recorder
    if combine == "logit":
        learn.loss_func.activation = log_odds  # average log-odds instead of probabilities
    preds, _ = learn.tta(dl=dl, n=n, beta=beta)
    preds = preds.float().numpy()
    return preds if combine == "logit" else logit_np(preds)


def resolve_ids(data: Path | str, split: str = "test", ids_file: Path | str | None = None) -> list[str]:
    """The ids to predict, in order: from `--ids FILE` (an `id` column), else the split's label CSV."""
    kaggle = KaggleData(data)
    if ids_file is not None:
        ids = read_id_csv(ids_file, require_target=False)["id"].tolist()
    else:
        ids = kaggle.read_labels(split)["id"].tolist()
    kaggle.check_files(split, ids)
    return ids


def check_inputs(
    run_dirs: list[Path | str],
    data: Path | str,
    split: str,
    ids_file: Path | str | None,
    tta: str,
    combine: str,
    temperature: float,
) -> tuple[list[Path], list[str]]:
    """Every check `predict` makes before it loads a model: options, run directories, layouts, ids and files.
    Returns (run directories, ids to predict)."""
    if combine not in COMBINES:
        raise ConfigError(f"combine must be one of {', '.join(COMBINES)}; got {combine!r}")
    if tta not in ("none", "flips") and not (tta.isdigit() and int(tta) >= 1):
        raise ConfigError(f"tta must be none, flips or a number of passes; got {tta!r}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive; got {temperature}")
    if not run_dirs:
        raise RunDirError("no run directory given")
    run_dirs = [check_run_dir(r) for r in run_dirs]
    check_same_layout(run_dirs, [load_run_config(r) for r in run_dirs])
    return run_dirs, resolve_ids(data, split, ids_file)


def predict(
    run_dirs: list[Path | str],
    data: Path | str,
    split: str = "test",
    ids_file: Path | str | None = None,
    tta: str = "none",
    combine: str = "prob",
    beta: float = 0.25,
    temperature: float = 1.0,
    bs: int = 64,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    run_calibrations: list[RunCalibration] | None = None,
    packed: str = "auto",
) -> pd.DataFrame:
    """`id, target` (probability) for every id, in order, averaged over runs. `tta`: none, flips, or an integer N
    (fastai TTA with N augmented passes). `run_calibrations` (one per run, `resolve_calibration`): each run's views
    become `z / T + b` before views and runs are combined; `temperature` divides the combined log-odds. `packed`:
    auto reads the split's packed cache when there is one (beside the data or in the first run's `out` folder), on
    requires it, off reads the files."""
    run_dirs, ids = check_inputs(run_dirs, data, split, ids_file, tta, combine, temperature)
    if run_calibrations is not None:
        if len(run_calibrations) != len(run_dirs):
            raise ConfigError(f"{len(run_calibrations)} run calibrations for {len(run_dirs)} runs")
        for cal in run_calibrations:
            check_run_calibration(cal, tta, combine)
    loaded = [load_run(r) for r in run_dirs]
    paths = [str(p) for p in KaggleData(data).paths(split, ids)]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # runs that make the same image from a cadence (all do but for background settings) share one DataLoader:
    # each cadence is read once and goes through every run's model and views
    groups: dict[tuple, list[int]] = {}
    for i, (cfg, _) in enumerate(loaded):
        groups.setdefault((cfg.background, cfg.matches, cfg.out, cfg.max_partners), []).append(i)
    per_run: list[np.ndarray | None] = [None] * len(loaded)
    for members in groups.values():
        cfg = loaded[members[0]][0]
        partners = run_partners(cfg, data)  # matches.csv is read once per setting, not once per fold
        sources = run_packed(cfg, paths, partners, data, packed)
        if tta.isdigit():  # fastai's TTA draws each run's own augmentations: one DataLoader pass per run
            for i in members:
                run_dl = inference_dl(loaded[i][0], paths, bs, workers, dev, partners, sources)
                per_run[i] = predict_fastai_tta(loaded[i][0], loaded[i][1], run_dl, int(tta), beta, combine)
            continue
        dl = inference_dl(cfg, paths, bs, workers, dev, partners, sources)
        views = [flip_views(loaded[i][0]) if tta == "flips" else [()] for i in members]
        zs = predict_views_runs([loaded[i][1] for i in members], dl, views, dev, progress)
        for i, z in zip(members, zs, strict=True):
            if run_calibrations is not None:
                z = run_calibrations[i].apply(z)
            per_run[i] = _combine(z, combine)
    z = _combine(np.stack(per_run), combine) / temperature
    return pd.DataFrame({"id": ids, "target": sigmoid_np(z)})


def write_submission(predictions: pd.DataFrame, path: Path | str) -> Path:
    """Write `id,target` atomically: either the whole file or nothing."""
    return atomic_write_csv(predictions[["id", "target"]], path)
