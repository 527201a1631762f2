"""Training: one fold (or the pre-training stage) per run directory, from its `RunPlan` (`plan.py`).

runs/<name>/fold<k>/   config.yaml  model.pth  history.csv  oof.csv  metrics.json  [lr_find.png/json]
"""

from __future__ import annotations

import errno
import json
import os
import platform
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import pandas as pd
import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed

from seti_fastai.config import TrainConfig, load_run_config, resume_conflicts, save_config
from seti_fastai.errors import ConfigError, OutputError, RunDirError, first_sentence
from seti_fastai.io import atomic_write_csv, atomic_write_json, output_error
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
    is_main,
    rank0_first,
    world_size,
)
from seti_fastai.learn.logs import experiment_logs
from seti_fastai.learn.plan import RunPlan, fold_configs, init_source, lock_run, plan_run
from seti_fastai.model.checkpoint import InitResult, load_matching, load_opt_state, load_weights
from seti_fastai.model.heads import SetiLoss, auc_metric, log_odds, roc_auc
from seti_fastai.model.models import build_model, param_groups
from seti_fastai.model.pretrained import describe_pretrained


def is_compile_error(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) comes from torch.compile (dynamo, inductor, a backend)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


class CadenceLearner(Learner):
    """fastai's Learner; `predict` also takes a `Path` (the DataBlock reads an item by its path string, and fastai
    matches a single item to the pipeline by type, so a `Path` would otherwise be refused)."""

    def predict(self, item, rm_type_tfms=None, with_input=False):
        return super().predict(os.fspath(item) if isinstance(item, os.PathLike) else item, rm_type_tfms, with_input)


def build_learner(plan: RunPlan | TrainConfig, items: pd.DataFrame | None = None, quiet: bool = False) -> Learner:
    """The Learner of a run plan (a config is planned first, as for lr-find): DataLoaders, model, loss, ROC AUC
    metric, seeds, mixup, precision, memory format, and the weights of `--init-from`."""
    plan = plan if isinstance(plan, RunPlan) else plan_run(plan, fresh=False)
    cfg = plan.cfg
    set_seed(cfg.seed)
    dls = get_dls(cfg, items, image=plan.image, aug=plan.aug)
    fetch = not (cfg.init_from or cfg.resume)  # the weights of --init-from or last.pth replace pretrained ones
    model = build_model(cfg, in_chans=plan.image.in_chans, load_pretrained=fetch)
    init_result = None
    if plan.init_weights is not None:
        init_result = load_matching(model, plan.init_weights, cfg.init_min_share)
        model.set_size(cfg.size[0])
    if is_main():  # the only rank that writes the run directory
        try:
            plan.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a Learner built alone (a notebook): no lock checked the folder first
            raise output_error(plan.run_dir, e) from e
    learn = CadenceLearner(
        dls, model, loss_func=SetiLoss(cfg.head, cfg.pos_weight), metrics=[auc_metric()], splitter=param_groups,
        wd=cfg.wd, path=plan.run_dir, model_dir=".",
        cbs=[EpochSeed(cfg.seed), MixUpOr(cfg.mixup_alpha, cfg.mixup_p, cfg.mixup_label)],
    )  # fmt: skip
    if plan.precision != "fp32":  # fastai's MixedPrecision: autocast, and for fp16 a GradScaler (`learn.scaler`)
        learn = learn.to_bf16() if plan.precision == "bf16" else learn.to_fp16()
    if plan.channels_last:
        learn = learn.to_channelslast(use_amp=False)  # the model only (1-channel inputs are channels-last already)
    if cfg.compile:
        learn.model.compile()  # in place: the state dict keeps its names (no `_orig_mod.` prefix)
    if quiet:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    learn.init_result = init_result  # what --init-from loaded (None without it)
    return learn


def init_from(model: torch.nn.Module, cfg: TrainConfig) -> InitResult:
    """Load the weights of `cfg.init_from` into `model`, checked as a run plan checks them (`init_source`): tensors
    whose name or shape differ are skipped; fewer than `cfg.init_min_share` of the model's is an error."""
    result = load_matching(model, init_source(cfg), cfg.init_min_share)
    model.set_size(cfg.size[0])
    return result


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
    """Lock the run directory, plan and train one run of a validated config (see `train_run`); returns
    metrics.json."""
    with lock_run(cfg, "train"):
        return train_run(plan_run(cfg), quiet, cbs)


def train_folds(
    cfg: TrainConfig,
    given: Collection[str] | None = None,
    all_folds: bool = False,
    folds: Collection[int] | None = None,
    say: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
    cbs: list | None = None,
    refuse_changed: bool = False,
) -> list[dict[str, Any]]:
    """The runs of one `train` command (`fold_configs`), each under its lock: with `all_folds` (`folds`: only these)
    a finished fold is skipped and an interrupted one resumed, so a restart goes on where the last one stopped.
    `given`: the fields the user set (a resumed run refuses others that differ, `plan_run`). `say` reports each step
    in one line. A finished fold whose saved config.yaml differs in a field of `given` is skipped with a line naming
    the differences, or with `refuse_changed` refused in one line (`seti-fastai run`: a submission is its recipe's).
    Returns the metrics of every run, finished earlier or now."""
    done, described = [], False
    for run_cfg, state in fold_configs(cfg, all_folds):
        run_dir = run_cfg.run_dir()
        if folds is not None and run_cfg.fold not in folds:
            continue
        if all_folds and state == "finished":
            conflicts = resume_conflicts(load_run_config(run_dir), run_cfg, given)
            if conflicts and refuse_changed:
                raise RunDirError(
                    f"{run_dir}: finished earlier with another config.yaml, which these flags contradict: "
                    f"{', '.join(conflicts)}; use another --name, or delete the run to train it again"
                )
            kept = f" with its saved config.yaml, not {', '.join(conflicts)}" if conflicts else ""
            say(f"{run_dir}: finished earlier (metrics.json){kept}, skipping")
            done.append(json.loads((run_dir / "metrics.json").read_text()))
            continue
        if all_folds and state == "interrupted":
            say(f"{run_dir}: interrupted earlier, resuming from last.pth")
        with lock_run(run_cfg, "train") as lock:  # one writer per run directory
            if lock.took_over:
                say(f"{run_dir}: took over the lock of {lock.took_over}, which is no longer running")
            plan = plan_run(run_cfg, given=given, strict=not all_folds, say=say)  # pretrained name, background
            if plan.ignored:
                say(f"{run_dir}: goes on with its saved config.yaml, not {', '.join(plan.ignored)}")
            if plan.checkpoint is not None and not all_folds:
                epoch = plan.checkpoint["epoch"]
                say(f"{run_dir}: resuming from last.pth after epoch {epoch} with its saved config.yaml")
            if not described and (line := describe_pretrained(plan.cfg)):
                say(line)
            described = True
            metrics = train_run(plan, quiet=quiet, cbs=cbs)
            if "init_from" in metrics:
                init = metrics["init_from"]
                say(f"{run_dir}: started from {init['source']}: {init['loaded']} of {init['total']} tensors loaded")
        say(
            f"{run_dir}: best validation AUC {metrics['best_auc']:.4f} at epoch {metrics['best_epoch']}, "
            f"{metrics['train_samples_per_s']:.0f} samples/s, {metrics['wall_seconds']:.0f} s"
        )
        done.append(metrics)
    return done


def train_run(plan: RunPlan, quiet: bool = False, cbs: list | None = None) -> dict[str, Any]:
    """Train one run (a fold, or the pre-training stage) and write its run directory; returns metrics.json.

    Under `accelerate launch` / `torchrun` every rank trains its share of each batch (DDP); only rank 0 writes, the
    others read last.pth on --resume like rank 0 and wait at barriers where rank 0 writes what they read.
    """
    cfg, run_dir, checkpoint = plan.cfg, plan.run_dir, plan.checkpoint
    barrier()  # every rank has read the run directory before rank 0 writes to it
    if is_main():
        _remove_partials(run_dir)
    items = rank0_first(training_items, cfg)  # rank 0 makes the fold CSV if it is missing, the others read it
    learn = build_learner(plan, items, quiet or not is_main())
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
        metrics = _finish_run(plan, learn, items, recorder, seconds)
    except OSError as e:  # an OutputError of the atomic writes (torch.save's writer errors included), or the disk
        if e.errno in _DISK_ERRNOS or isinstance(e, OutputError):
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
    plan: RunPlan, learn: Learner, items: pd.DataFrame, recorder: RunRecorder, seconds: float
) -> dict[str, Any]:
    """Reload the best weights, write oof.csv and metrics.json, drop the resume checkpoint (rank 0 writes; the
    validation fold is predicted across ranks, each cadence once)."""
    cfg, run_dir = plan.cfg, plan.run_dir
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
        train_samples_per_s=float(history["train_samples_per_s"].mean()), precision=plan.precision,
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
