"""Training: one fold (or the pre-training stage) per run directory, and lr_find.

runs/<name>/fold<k>/   config.yaml  model.pth  history.csv  oof.csv  metrics.json  [lr_find.png/json]
"""

from __future__ import annotations

import dataclasses
import errno
import os
import platform
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import pandas as pd
import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed

from seti_fastai.config import TrainConfig, load_run_config, save_config
from seti_fastai.data.cadence import image_shape
from seti_fastai.errors import ConfigError, RunDirError, first_sentence
from seti_fastai.io import atomic_write_csv, atomic_write_json
from seti_fastai.learn.callbacks import (
    AugmentationOff,
    EpochSeed,
    MixUpOr,
    ProgressiveResize,
    RestoreScaler,
    RunRecorder,
)
from seti_fastai.learn.datablock import get_dls, training_items
from seti_fastai.learn.distributed import (
    barrier,
    ddp_ctx,
    gather_predictions,
    init_distributed,
    is_main,
    rank0_first,
    world_size,
)
from seti_fastai.learn.logs import check_logs, experiment_logs
from seti_fastai.model.checkpoint import load_checkpoint, load_opt_state, load_weights
from seti_fastai.model.heads import SetiLoss, auc_metric, log_odds, roc_auc
from seti_fastai.model.models import build_model, param_groups
from seti_fastai.model.pretrained import check_arch, pretrained_name


def device_precision(cfg: TrainConfig) -> str:
    """The precision the run will use: mixed precision only on CUDA.

    auto: bf16 where the GPU computes it natively (compute capability 8.0+: A100, H100, RTX 30xx...), else fp16 with
    a gradient scaler (V100, T4: `is_bf16_supported()` alone says yes there too, through slow emulation)."""
    if not torch.cuda.is_available() or cfg.precision == "fp32":
        return "fp32"
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if cfg.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU cannot compute in bfloat16; use --precision fp16 or auto")
    return cfg.precision


def uses_channels_last(cfg: TrainConfig) -> bool:
    """`--channels-last` as given, else on CUDA only (faster with tensor cores; much slower on CPU, measured by
    bench/channels_last.py)."""
    return torch.cuda.is_available() if cfg.channels_last is None else cfg.channels_last


def is_compile_error(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) comes from torch.compile (dynamo, inductor, a backend)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


class InitResult(NamedTuple):
    """What `--init-from` loaded: the weights file, tensors loaded, tensors the model has."""

    source: str
    loaded: int
    total: int


def _check_init_run(source: Path, cfg: TrainConfig) -> None:
    """Refuse a run directory whose weights do not fit, or whose training data held this fold's validation set."""
    other = load_run_config(source)
    if other.arch != cfg.arch:
        raise ConfigError(f"--init-from {source}: trained as {other.arch}, this run is {cfg.arch}")
    if image_shape(other.panels, other.layout)[0] != image_shape(cfg.panels, cfg.layout)[0]:
        raise ConfigError(f"--init-from {source}: input channels differ (panels/layout {other.panels}/{other.layout})")
    if other.stage == "finetune" and cfg.stage == "finetune":
        if (other.n_folds, other.fold_seed) != (cfg.n_folds, cfg.fold_seed):
            raise ConfigError(
                f"--init-from {source}: fine-tuned on another fold split ({other.n_folds} folds, seed "
                f"{other.fold_seed}), so it trained on some of this run's validation cadences; start from a pretrain "
                "run"
            )
        if other.fold != cfg.fold:
            raise ConfigError(
                f"--init-from {source}: fine-tuned with fold {other.fold} held out, so it trained on this run's "
                f"validation fold {cfg.fold} (a leak); start from a pretrain run or fold {cfg.fold}'s own run"
            )


def init_from(model: torch.nn.Module, cfg: TrainConfig) -> InitResult:
    """Load the weights of `cfg.init_from` (a run directory, or a `.pth` state dict) into `model`.

    A run directory (also the folder of a weights file when it holds config.yaml) must have the same architecture
    and input channels, and be a pretrain run or a fine-tune run of the same fold. Tensors whose name or shape differ
    (a different head) are skipped; fewer than `cfg.init_min_share` of the model's tensors loaded is an error.
    """
    source = Path(cfg.init_from)
    if not 0.0 <= cfg.init_min_share <= 1.0:
        raise ConfigError(f"init_min_share must be in [0, 1]; got {cfg.init_min_share}")
    if source.is_dir():
        _check_init_run(source, cfg)
        weights = source / "model.pth"
    elif source.is_file():
        if (source.parent / "config.yaml").is_file():  # a file inside a run directory: the same checks
            _check_init_run(source.parent, cfg)
        weights = source
    else:
        raise ConfigError(f"--init-from {source}: not found (give a run directory or a .pth weights file)")
    state = load_weights(weights)
    own = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}

    def matching(prefix: str) -> dict[str, torch.Tensor]:
        pairs = ((prefix + k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
        return {k: v for k, v in pairs if k in own and own[k].shape == v.shape}

    loaded = max((matching(p) for p in ("", "backbone.")), key=len)  # a run's model.pth, or a bare timm backbone
    share = len(loaded) / max(len(own), 1)
    if share < cfg.init_min_share:
        raise ConfigError(
            f"--init-from {weights}: only {len(loaded)} of the model's {len(own)} tensors match ({share:.0%}); "
            f"check --arch and the input layout, or lower --init-min-share (now {cfg.init_min_share:g})"
        )
    model.load_state_dict(loaded, strict=False)
    model.set_size(cfg.size[0])
    return InitResult(str(weights), len(loaded), len(own))


class CadenceLearner(Learner):
    """fastai's Learner; `predict` also takes a `Path` (the DataBlock reads an item by its path string, and fastai
    matches a single item to the pipeline by type, so a `Path` would otherwise be refused)."""

    def predict(self, item, rm_type_tfms=None, with_input=False):
        return super().predict(os.fspath(item) if isinstance(item, os.PathLike) else item, rm_type_tfms, with_input)


def build_learner(cfg: TrainConfig, items: pd.DataFrame | None = None, quiet: bool = False) -> Learner:
    """The Learner of a config (its architecture already checked): DataLoaders, model, loss, ROC AUC metric, seeds,
    mixup, precision."""
    set_seed(cfg.seed)
    dls = get_dls(cfg, items)
    fetch = not (cfg.init_from or cfg.resume)  # the weights of --init-from or last.pth replace pretrained ones
    model = build_model(cfg, in_chans=image_shape(cfg.panels, cfg.layout)[0], load_pretrained=fetch)
    init_result = init_from(model, cfg) if cfg.init_from else None
    run_dir = cfg.run_dir()
    if is_main():  # the only rank that writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
    learn = CadenceLearner(
        dls, model, loss_func=SetiLoss(cfg.head, cfg.pos_weight), metrics=[auc_metric()], splitter=param_groups,
        wd=cfg.wd, path=run_dir, model_dir=".",
        cbs=[EpochSeed(cfg.seed), MixUpOr(cfg.mixup_alpha, cfg.mixup_p, cfg.mixup_label)],
    )  # fmt: skip
    precision = device_precision(cfg)
    if precision != "fp32":  # fastai's MixedPrecision: autocast, and for fp16 a GradScaler (`learn.scaler`)
        learn = learn.to_bf16() if precision == "bf16" else learn.to_fp16()
    if uses_channels_last(cfg):
        learn = learn.to_channelslast(use_amp=False)  # the model only (1-channel inputs are channels-last already)
    if cfg.compile:
        learn.model.compile()  # in place: the state dict keeps its names (no `_orig_mod.` prefix)
    if quiet:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    learn.init_result = init_result  # what --init-from loaded (None without it)
    return learn


def resolve_pretrained(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `pretrained_source` set: the timm `name.tag` the backbone is built as (and whose weights start it).

    With pretrained weights (`--pretrained` or `--pretrained-weights`): `pretrained_name(arch)`
    (`efficientnetv2_m` -> `tf_efficientnetv2_m.in21k_ft_in1k`); `--init-from` a run directory: that run's, so the
    same architecture is built; otherwise (`--no-pretrained`) none, the model is `arch`. Saved in config.yaml, so
    inference rebuilds the same model without the network.
    """
    if cfg.pretrained_source:
        base = pretrained_name(cfg.pretrained_source, required=False).split(".")[0]
        if base != cfg.arch.split(".")[0] and base != pretrained_name(cfg.arch, required=False).split(".")[0]:
            raise ConfigError(f"pretrained_source {cfg.pretrained_source} is not a variant of --arch {cfg.arch}")
        return cfg
    if cfg.init_from:
        run = Path(cfg.init_from)
        run = run if run.is_dir() else run.parent
        if (run / "config.yaml").is_file():
            return dataclasses.replace(cfg, pretrained_source=load_run_config(run).pretrained_source)
    if cfg.pretrained or cfg.pretrained_weights:
        return dataclasses.replace(cfg, pretrained_source=pretrained_name(cfg.arch, not cfg.pretrained_weights))
    return cfg


def run_state(run_dir: Path | str) -> Literal["finished", "interrupted", "new"]:
    """finished: metrics.json is there; interrupted: last.pth without metrics.json; new: neither."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return "finished"
    return "interrupted" if (run_dir / "last.pth").is_file() else "new"


def _check_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run; errors for the ambiguous cases."""
    state = run_state(run_dir)
    if resume:
        if state == "finished":
            raise RunDirError(f"{run_dir}: this run already finished; nothing to resume")
        if state == "new":
            raise RunDirError(f"{run_dir}: no interrupted run to resume (last.pth not found)")
        return load_checkpoint(run_dir / "last.pth")
    if state != "new":
        raise RunDirError(f"{run_dir}: a run is already there; use --resume, another --name, or delete it")
    return None


def _remove_partials(run_dir: Path) -> None:
    """Delete temporary files a killed run left behind (`io.atomic_path` names them `.NAME.*.partial`)."""
    if run_dir.is_dir():
        for path in run_dir.glob(".*.partial"):
            if path.is_file():
                path.unlink(missing_ok=True)


def _write_failed(run_dir: Path, error: OSError) -> RunDirError:
    """A full or read-only disk as one line; the atomic writes kept the files of the last finished epoch."""
    again = "rerun with --resume" if (run_dir / "last.pth").is_file() else "rerun"
    fix = "make it writable" if error.errno == errno.EROFS else "free space"
    return RunDirError(
        f"{run_dir}: cannot write ({error.strerror or error}); the files of the last finished epoch are intact: "
        f"{fix}, then {again}"
    )


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


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
    """Train one run (a fold, or the pre-training stage) and write its run directory; returns metrics.json.

    Under `accelerate launch` / `torchrun` every rank trains its share of each batch (DDP); only rank 0 writes, the
    others read last.pth on --resume like rank 0 and wait at barriers where rank 0 writes what they read.
    """
    cfg.validate()
    init_distributed()
    run_dir = cfg.run_dir()
    checkpoint = _check_run_dir(run_dir, cfg.resume)
    barrier()  # every rank has read the run directory before rank 0 writes to it
    if is_main():
        _remove_partials(run_dir)
    if checkpoint is not None:  # go on exactly as saved: the run's own config, this call's workers
        saved = load_run_config(run_dir)
        saved.workers, saved.resume = cfg.workers, True
        cfg = saved
    check_arch(cfg.arch)
    cfg = resolve_pretrained(cfg)
    check_logs(cfg)
    items = rank0_first(training_items, cfg)  # rank 0 makes the fold CSV if it is missing, the others read it
    learn = build_learner(cfg, items, quiet or not is_main())
    if is_main():
        save_config(cfg, run_dir / "config.yaml")
    recorder = RunRecorder(run_dir)
    start_epoch = 0
    if checkpoint is not None:
        learn.model.load_state_dict(checkpoint["model"])
        learn.create_opt()
        load_opt_state(learn.opt, checkpoint["opt"])
        start_epoch = int(checkpoint["epoch"]) + 1
        history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else pd.DataFrame()
        if len(history) < start_epoch:
            raise RunDirError(f"{run_dir}: history.csv has {len(history)} epochs, last.pth is at epoch {start_epoch}")
        recorder = RunRecorder(run_dir, checkpoint["best"], int(checkpoint["best_epoch"]), history.iloc[:start_epoch])
    fit_cbs = [ProgressiveResize(cfg.size_schedule()), recorder, *(cbs or [])]
    if checkpoint is not None and checkpoint.get("scaler"):  # fp16: the loss scale goes on where it was
        fit_cbs.append(RestoreScaler(checkpoint["scaler"]))
    if cfg.aug_off_last:
        fit_cbs.append(AugmentationOff(cfg.aug_off_last))
    lr = slice(cfg.lr * cfg.body_lr_mult, cfg.lr) if cfg.body_lr_mult != 1.0 else cfg.lr
    start = time.perf_counter()
    try:
        with ddp_ctx(learn), experiment_logs(cfg, run_dir) as log_cbs:
            fit_cbs += log_cbs
            learn.fit_one_cycle(cfg.epochs, lr, pct_start=cfg.pct_start, cbs=fit_cbs, start_epoch=start_epoch)
        seconds = time.perf_counter() - start
        if recorder.best_epoch < 0:
            raise RunDirError(f"{run_dir}: validation AUC was never finite; no model saved")
        metrics = _finish_run(cfg, learn, items, recorder, seconds)
    except OSError as e:
        if e.errno in _DISK_ERRNOS:
            raise _write_failed(run_dir, e) from e
        raise
    except Exception as e:
        if cfg.compile and is_compile_error(e):
            cause = getattr(e, "inner_exception", None) or e  # a backend's own error, inside dynamo's wrapper
            raise ConfigError(
                f"--compile failed ({type(cause).__name__}: {first_sentence(cause)}); train without --compile"
            ) from e
        raise
    return metrics


def _finish_run(
    cfg: TrainConfig, learn: Learner, items: pd.DataFrame, recorder: RunRecorder, seconds: float
) -> dict[str, Any]:
    """Reload the best weights, write oof.csv and metrics.json, drop the resume checkpoint (rank 0 writes; the
    validation fold is predicted across ranks, each cadence once)."""
    run_dir = cfg.run_dir()
    barrier()  # rank 0 has written the last model.pth
    learn.model.load_state_dict(load_weights(run_dir / "model.pth"))
    out, targets = gather_predictions(learn, learn.dls.valid)
    valid = items[items["is_valid"]]
    oof = pd.DataFrame(
        {"id": valid["id"].to_numpy(), "target": valid["target"].to_numpy(), "logit": log_odds(out).float().numpy()}
    )
    if is_main():
        atomic_write_csv(oof, run_dir / "oof.csv")
    history = pd.DataFrame(recorder.rows)
    metrics = dict(
        best_auc=recorder.best, best_epoch=recorder.best_epoch, oof_auc=roc_auc(out, targets),
        best_size=int(learn.model.size[0]), epochs=cfg.epochs, n_train=int((~items["is_valid"]).sum()),
        n_valid=int(items["is_valid"].sum()), wall_seconds=round(seconds, 1),
        train_samples_per_s=float(history["train_samples_per_s"].mean()), precision=device_precision(cfg),
        device=str(learn.dls.device), versions=_versions(),
    )  # fmt: skip
    if learn.init_result is not None:
        metrics["init_from"] = learn.init_result._asdict()
    if world_size() > 1:
        metrics["processes"] = world_size()
    if is_main():
        atomic_write_json(run_dir / "metrics.json", metrics)
        (run_dir / "last.pth").unlink(missing_ok=True)
    barrier()  # the run directory is complete when any rank returns
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# lr_find
