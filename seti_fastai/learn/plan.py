"""The run plan: everything one training run (a fold, or the pre-training stage) needs, resolved and checked once
at the edge and then passed down, as timm resolves its data config once.

`plan_run(cfg)` reads the run directory's state (fresh, or the interrupted run to resume, whose saved config then
wins), checks the architecture and resolves the pretrained weights' name, checks the loggers and the `--init-from`
source, and resolves the image and augmentation recipes, the precision and the memory format. Nothing it checked is
checked again on the way down.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from seti_fastai.config import TrainConfig, load_run_config, resume_conflicts
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.learn.augment import AugRecipe
from seti_fastai.learn.datablock import resolve_background, resolve_rows
from seti_fastai.learn.distributed import init_distributed, is_main
from seti_fastai.learn.logs import check_logs
from seti_fastai.lock import LOCK_NAME, RunLock, run_lock
from seti_fastai.model.checkpoint import load_checkpoint
from seti_fastai.model.pretrained import check_arch, pretrained_name


@dataclass(frozen=True)
class RunPlan:
    """One training run, resolved: the configuration saved as config.yaml, where it goes, what the model sees, how
    it trains, and what it starts from."""

    cfg: TrainConfig
    run_dir: Path
    image: ImageRecipe
    aug: AugRecipe
    precision: str  # fp32, bf16 or fp16
    channels_last: bool
    checkpoint: dict[str, Any] | None = None  # last.pth of the interrupted run this one resumes
    init_weights: Path | None = None  # the weights file of --init-from
    ignored: tuple[str, ...] = ()  # flags a resumed run did not take (`plan_run(strict=False)`)


def plan_run(
    cfg: TrainConfig,
    fresh: bool = True,
    given: Collection[str] | None = None,
    strict: bool = True,
    say: Callable[[str], None] | None = None,
) -> RunPlan:
    """The plan of a validated config (`build_config` validates). `fresh`: the run directory must be new, or hold
    the interrupted run `--resume` asks for (training); False for a Learner alone (lr-find, notebooks). A resumed run
    goes on exactly as saved (this call's `workers` aside): a field of `given` (the ones the user set; all when None)
    that differs from the saved config is refused, listed in one line, or with `strict=False` (`--all-folds` resuming
    a fold on its own) left out and listed in the plan's `ignored`. `--background auto` is resolved here (the matcher
    runs first when the data has no matches.csv, announced through `say`)."""
    init_distributed()
    run_dir = cfg.run_dir()  # checked as a folder by its lock (`lock_run`), which every writer takes first
    checkpoint = check_run_dir(run_dir, cfg.resume) if fresh else None
    conflicts: list[str] = []
    if checkpoint is not None:
        saved = load_run_config(run_dir)
        conflicts = resume_conflicts(saved, cfg, given)
        if conflicts and strict:
            raise RunDirError(
                f"{run_dir}: --resume goes on with the run's saved config.yaml, and these flags differ from it: "
                f"{', '.join(conflicts)}; drop them, or start a new run with another --name"
            )
        saved.workers, saved.resume = cfg.workers, True
        cfg = saved
    cfg = resolve_rows(resolve_background(resolve_pretrained(cfg), say))
    check_logs(cfg)
    init_weights = init_source(cfg) if cfg.init_from else None
    image = ImageRecipe.from_config(cfg)
    aug = AugRecipe.from_config(cfg, image)
    precision, channels_last = device_precision(cfg), uses_channels_last(cfg)
    return RunPlan(cfg, run_dir, image, aug, precision, channels_last, checkpoint, init_weights, tuple(conflicts))


def lock_run(cfg: TrainConfig, command: str) -> contextlib.AbstractContextManager[RunLock]:
    """The run directory's lock (`seti_fastai.lock`), held by rank 0 only: under DDP the ranks share one run."""
    if not is_main():
        return contextlib.nullcontext(RunLock(cfg.run_dir() / LOCK_NAME))
    return run_lock(cfg.run_dir(), command, "--out")


def fold_configs(cfg: TrainConfig, all_folds: bool) -> Iterator[tuple[TrainConfig, str]]:
    """The runs of one `train` command, each with its run directory's state (`run_state`): with `all_folds` every
    fold, set to resume an interrupted one (a finished one is the caller's to skip); else the run `cfg` describes."""
    if all_folds and cfg.stage != "finetune":
        raise ConfigError("--all-folds trains the folds of the finetune stage; --stage pretrain is one run")
    for fold in range(cfg.n_folds) if all_folds else [cfg.fold]:
        run_cfg = dataclasses.replace(cfg, fold=fold)
        state = run_state(run_cfg.run_dir())
        if all_folds:
            run_cfg.resume = state == "interrupted"
        yield run_cfg, state


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
            check_arch(cfg.arch)
            return dataclasses.replace(cfg, pretrained_source=load_run_config(run).pretrained_source)
    if cfg.pretrained or cfg.pretrained_weights:  # pretrained_name checks the architecture
        return dataclasses.replace(cfg, pretrained_source=pretrained_name(cfg.arch, not cfg.pretrained_weights))
    check_arch(cfg.arch)
    return cfg


def run_state(run_dir: Path | str) -> Literal["finished", "interrupted", "new"]:
    """finished: metrics.json is there; interrupted: last.pth without metrics.json; new: neither."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return "finished"
    return "interrupted" if (run_dir / "last.pth").is_file() else "new"


def check_run_dir(run_dir: Path, resume: bool) -> dict | None:
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


def _check_init_run(source: Path, cfg: TrainConfig) -> None:
    """Refuse a run directory whose weights do not fit, or whose training data held this fold's validation set."""
    other = load_run_config(source)
    if other.arch != cfg.arch:
        raise ConfigError(f"--init-from {source}: trained as {other.arch}, this run is {cfg.arch}")
    if ImageRecipe.from_config(other).in_chans != ImageRecipe.from_config(cfg).in_chans:
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


def init_source(cfg: TrainConfig) -> Path:
    """The weights file of `cfg.init_from` (a run directory, or a `.pth` state dict), checked: a run directory (also
    the folder of a weights file when it holds config.yaml) must have the same architecture and input channels, and
    be a pretrain run or a fine-tune run of the same fold."""
    source = Path(cfg.init_from)
    if source.is_dir():
        _check_init_run(source, cfg)
        return source / "model.pth"
    if source.is_file():
        if (source.parent / "config.yaml").is_file():  # a file inside a run directory: the same checks
            _check_init_run(source.parent, cfg)
        return source
    raise ConfigError(f"--init-from {source}: not found (give a run directory or a .pth weights file)")
