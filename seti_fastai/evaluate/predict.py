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
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders, Datasets, TfmdDL
from fastai.data.transforms import ColReader
from fastai.learner import Learner

from seti_fastai.config import TrainConfig, load_run_config
from seti_fastai.data.cadence import N_TIMES, KaggleData, cadence_rows, read_id_csv
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.data.pack import PackedSources
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.evaluate.calibration import (
    COMBINES,
    NO_CALIBRATION,
    Resolved,
    RunCalibration,
    check_run_calibration,
    resolve_calibration,
)
from seti_fastai.evaluate.calibration import combine as _combine
from seti_fastai.evaluate.dedoppler import dedoppler
from seti_fastai.io import atomic_write_csv
from seti_fastai.learn.augment import AugRecipe, train_transforms
from seti_fastai.learn.datablock import loader_kwargs, resolve_background, run_packed, run_partners
from seti_fastai.learn.transforms import CadenceLoader, Partners, RawCadence
from seti_fastai.model.checkpoint import load_weights
from seti_fastai.model.heads import SetiLoss, log_odds, logit_np, sigmoid_np
from seti_fastai.model.models import SetiModel, build_model
from seti_fastai.model.pretrained import check_arch
from seti_fastai.model.resize import Resize


def check_run_dir(run_dir: Path | str) -> Path:
    """A run directory that inference can use: it must hold config.yaml and model.pth."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "model.pth"):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir}: {name} not found (not a finished run directory)")
    return run_dir


@dataclass(frozen=True)
class TrainedRun:
    """A finished run directory with its configuration and the recipes it trained with, read once."""

    run_dir: Path
    cfg: TrainConfig
    image: ImageRecipe
    aug: AugRecipe


def read_run(run_dir: Path | str) -> TrainedRun:
    """The configuration of a finished run directory and its recipes (no weights are read)."""
    run_dir = check_run_dir(run_dir)
    cfg = resolve_background(load_run_config(run_dir))  # `auto` saved by a library call, not by `train`
    check_arch(cfg.pretrained_source or cfg.arch)
    image = ImageRecipe.from_config(cfg)
    return TrainedRun(run_dir, cfg, image, AugRecipe.from_config(cfg, image))


def load_model(run: TrainedRun) -> SetiModel:
    """Rebuild a trained model from `config.yaml` + `model.pth` (no network: pretrained weights are not fetched)."""
    offline = dataclasses.replace(run.cfg, pretrained=False, pretrained_weights=None, init_from=None)
    model = build_model(offline, in_chans=run.image.in_chans)
    try:
        model.load_state_dict(load_weights(run.run_dir / "model.pth"))
    except RuntimeError as e:
        raise RunDirError(f"{run.run_dir / 'model.pth'}: does not match config.yaml ({str(e).splitlines()[0]})") from e
    return model.eval()


def load_run(run_dir: Path | str) -> tuple[TrainConfig, SetiModel]:
    """A run directory's configuration and trained model."""
    run = read_run(run_dir)
    return run.cfg, load_model(run)


def _layout_text(image: ImageRecipe) -> str:
    rows = "" if image.rows == N_TIMES else f", {image.rows} rows"
    return f"{image.panels}/{image.layout}/{image.standardize}{rows}"


def check_same_layout(runs: list[TrainedRun]) -> None:
    """Runs in one ensemble must read cadences the same way (panels, layout, standardisation, rows)."""
    first = runs[0].image.image_key
    for run in runs:
        if run.image.image_key != first:
            raise ConfigError(
                f"{run.run_dir}: image layout {_layout_text(run.image)} differs from "
                f"{runs[0].run_dir} ({_layout_text(runs[0].image)}); predict each layout separately, average the CSVs"
            )


def flip_views(aug: TrainConfig | AugRecipe) -> list[tuple[int, ...]]:
    """The flips training used, as TTA views: the plain image, and the frequency (width) flip when the run trained
    with it. Never time: training never flips time, so the model has not seen time-reversed needles."""
    return [(), (-1,)] if aug.freq_flip_p > 0 else [()]


def inference_dl(
    run: TrainedRun,
    paths: list[str],
    bs: int,
    workers: int,
    device,
    partners: Partners | None = None,
    packed: PackedSources | None = None,
    reference: bool = False,
) -> TfmdDL:
    """Un-shuffled DataLoader over cadence files (or their packed cache), carrying the run's training augmentations
    (used by fastai's TTA only when it switches the dataset to the training split). With `reference`, each batch
    also holds the six raw panels of its cadences, read in the same pass, for the de-Doppler reference."""
    items = pd.DataFrame({"path": paths})
    loader = CadenceLoader(run.image, partners, packed, keep_raw=reference)
    tfms = [[ColReader("path"), loader]] + ([[ColReader("path"), RawCadence(loader)]] if reference else [])
    dsets = Datasets(items, tfms=tfms, do_setup=False)  # setup would read a cadence
    return TfmdDL(
        dsets,
        bs=bs,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        device=device,
        after_item=train_transforms(run.aug, run.image),
        **loader_kwargs(device),
    )


def views_logits(model: torch.nn.Module, x: torch.Tensor, views: list[tuple[int, ...]], device) -> torch.Tensor:
    """Log-odds (n_views, batch) of one model on one batch, all views in one forward pass."""
    # a plain resize (any mode) commutes with flips: resize once, flip the small images (the learned resizer does not)
    resize_first = isinstance(model.resize, Resize)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if resize_first:
            x = model.resize(x)
        batch = torch.cat([x.flip(v) if v else x for v in views])
        z = log_odds(model.backbone(batch) if resize_first else model(batch)).float()
    return z.view(len(views), x.shape[0]).cpu()


class Predicted(NamedTuple):
    """What one pass over a DataLoader gives: each model's log-odds (n_views, n), and the de-Doppler reference score
    of each cadence (n,) when the DataLoader carried the raw panels (`inference_dl(reference=True)`)."""

    logits: list[np.ndarray]
    reference: np.ndarray | None


@torch.no_grad()
def predict_views_runs(
    models: list[torch.nn.Module],
    dl: TfmdDL,
    views: list[list[tuple[int, ...]]],
    device,
    progress: Callable[[int], None] | None = None,
) -> Predicted:
    """Log-odds (n_views, n) of every model: each batch is read once and goes through every model with all of its
    views (`views[i]` for `models[i]`), and through the de-Doppler reference when it holds the raw panels.
    `progress` counts cadences per model."""
    models = [m.to(device).eval() for m in models]
    out: list[list[torch.Tensor]] = [[] for _ in models]
    reference: list[torch.Tensor] = []
    for x, *raw in dl:
        x = x.to(device, non_blocking=True)
        if raw:
            reference.append(dedoppler(raw[0].to(device, non_blocking=True).as_subclass(torch.Tensor))[0].cpu())
        for model, model_views, chunks in zip(models, views, out, strict=True):
            chunks.append(views_logits(model, x, model_views, device))
            if progress is not None:
                progress(x.shape[0])
    scores = torch.cat(reference).double().numpy() if reference else None
    return Predicted([torch.cat(chunks, dim=1).numpy() for chunks in out], scores)


def predict_views(
    model: torch.nn.Module,
    dl: TfmdDL,
    views: list[tuple[int, ...]],
    device,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Log-odds (n_views, n) from one batched forward pass per batch (all views go through the model together), and
    the reference scores when `dl` carries the raw panels."""
    predicted = predict_views_runs([model], dl, [views], device, progress)
    return predicted.logits[0], predicted.reference


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


def check_tta(tta: str) -> None:
    if tta not in ("none", "flips") and not (tta.isdigit() and int(tta) >= 1):
        raise ConfigError(f"tta must be none, flips or a number of passes; got {tta!r}")


@dataclass(frozen=True)
class PredictionPlan:
    """Everything a prediction needs, checked once before any model is loaded: the runs (same image layout), the ids
    to predict (their files exist), the TTA views, the combine rule and the calibration of each run."""

    runs: tuple[TrainedRun, ...]
    data: Path
    split: str
    ids: tuple[str, ...]
    tta: str = "none"
    combine: str = "prob"
    beta: float = 0.25
    calibration: Resolved = NO_CALIBRATION
    packed: str = "auto"

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in KaggleData(self.data).paths(self.split, list(self.ids))]


def plan_prediction(
    run_dirs: list[Path | str],
    data: Path | str,
    split: str = "test",
    ids_file: Path | str | None = None,
    tta: str = "none",
    combine: str = "prob",
    beta: float = 0.25,
    calibration: str | Path | Resolved = "none",
    packed: str = "auto",
) -> PredictionPlan:
    """Check the options, the run directories, their layouts, the ids and their files, and resolve the calibration
    (`calibration`: a mode or file for `resolve_calibration`, or one already resolved)."""
    if combine not in COMBINES:
        raise ConfigError(f"combine must be one of {', '.join(COMBINES)}; got {combine!r}")
    check_tta(tta)
    if not run_dirs:
        raise RunDirError("no run directory given")
    runs = [read_run(r) for r in run_dirs]
    check_same_layout(runs)
    ids = resolve_ids(data, split, ids_file)
    rows = cadence_rows(KaggleData(data).cadence_path(split, ids[0])) if ids else runs[0].image.rows
    if rows != runs[0].image.rows:
        raise ConfigError(
            f"{runs[0].run_dir}: trained on {runs[0].image.rows}-row cadences; "
            f"the {split} cadences of {data} hold {rows} rows per panel"
        )
    if not isinstance(calibration, Resolved):
        calibration = resolve_calibration([r.run_dir for r in runs], calibration, tta, combine)
    return PredictionPlan(tuple(runs), Path(data), split, tuple(ids), tta, combine, beta, calibration, packed)


def run_prediction(
    plan: PredictionPlan,
    bs: int = 64,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """`id, target` (probability) for every id of the plan, in order, averaged over runs. Each run's views get its
    calibration `z / T + b` before views and runs are combined; a pooled temperature divides the combined log-odds."""
    models = [load_model(run) for run in plan.runs]
    paths = plan.paths
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    per_run_cal = plan.calibration.runs
    # runs that make the same image from a cadence (all do but for background settings) share one DataLoader:
    # each cadence is read once and goes through every run's model and views
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(plan.runs):
        cfg = run.cfg
        groups.setdefault((cfg.background, cfg.matches, cfg.out, cfg.max_partners), []).append(i)
    per_run: list[np.ndarray | None] = [None] * len(models)
    for members in groups.values():
        first = plan.runs[members[0]]
        partners = run_partners(first.cfg, plan.data)  # matches.csv is read once per setting, not once per fold
        sources = run_packed(first.cfg, paths, partners, plan.data, plan.packed)
        if plan.tta.isdigit():  # fastai's TTA draws each run's own augmentations: one DataLoader pass per run
            for i in members:
                run_dl = inference_dl(plan.runs[i], paths, bs, workers, dev, partners, sources)
                per_run[i] = predict_fastai_tta(
                    plan.runs[i].cfg, models[i], run_dl, int(plan.tta), plan.beta, plan.combine
                )
            continue
        stacked = per_run_cal is not None and any(per_run_cal[i].stacked for i in members)
        dl = inference_dl(first, paths, bs, workers, dev, partners, sources, reference=stacked)
        views = [flip_views(plan.runs[i].aug) if plan.tta == "flips" else [()] for i in members]
        predicted = predict_views_runs([models[i] for i in members], dl, views, dev, progress)
        for i, z in zip(members, predicted.logits, strict=True):
            if per_run_cal is not None:
                z = per_run_cal[i].apply(z, predicted.reference)
            per_run[i] = _combine(z, plan.combine)
    z = _combine(np.stack(per_run), plan.combine) / plan.calibration.temperature
    return pd.DataFrame({"id": list(plan.ids), "target": sigmoid_np(z)})


def predict(
    run_dirs: list[Path | str],
    data: Path | str,
    temperature: float = 1.0,
    run_calibrations: list[RunCalibration] | None = None,
    bs: int = 64,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> pd.DataFrame:
    """`plan_prediction` then `run_prediction`, for a calibration given as values: `run_calibrations` (one per run)
    and a pooled `temperature`. `options` are `plan_prediction`'s: `split`, `ids_file`, `tta` (none, flips, or an
    integer N: fastai TTA with N augmented passes), `combine`, `beta`, `packed` (auto reads the split's packed cache
    when there is one, on requires it, off reads the files)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive; got {temperature}")
    if run_calibrations is not None:
        if len(run_calibrations) != len(run_dirs):
            raise ConfigError(f"{len(run_calibrations)} run calibrations for {len(run_dirs)} runs")
        for cal in run_calibrations:
            check_run_calibration(cal, options.get("tta", "none"), options.get("combine", "prob"))
    mode = "none" if run_calibrations is None and temperature == 1.0 else "given"
    calibration = Resolved(mode, run_calibrations, temperature, "")
    plan = plan_prediction(run_dirs, data, calibration=calibration, **options)
    return run_prediction(plan, bs, workers, device, progress)


def write_submission(predictions: pd.DataFrame, path: Path | str) -> Path:
    """Write `id,target` atomically: either the whole file or nothing."""
    return atomic_write_csv(predictions[["id", "target"]], path)
