"""Experiment logs through fastai's own callbacks, inside the run directory, written by rank 0 only:
`log.csv` (`CSVLogger`), `tensorboard/` (`TensorBoardCallback`), `wandb/` (`WandbCallback`, offline)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from seti_fastai.config import TrainConfig
from seti_fastai.errors import ConfigError


def check_logs(cfg: TrainConfig) -> None:
    """Raise one line when a `--log` needs a package that is not installed."""
    for name in cfg.log:
        if name in ("tensorboard", "wandb") and importlib.util.find_spec(name) is None:
            raise ConfigError(f"--log {name} needs the {name} package: pip install {name}")


@contextlib.contextmanager
def experiment_logs(cfg: TrainConfig, run_dir: Path) -> Iterator[list[Callback]]:
    """fastai's logging callbacks for `cfg.log`, writing inside `run_dir` on rank 0 only: `log.csv` (`CSVLogger`),
    `tensorboard/` (`TensorBoardCallback`), `wandb/` (`WandbCallback`, offline: nothing leaves the machine); the
    packages were checked by the run plan (`check_logs`)."""
    cbs: list[Callback] = []
    if rank_distrib() != 0 or not cfg.log:
        yield cbs
        return
    wandb_run = None
    if "csv" in cfg.log:
        from fastai.callback.progress import CSVLogger

        cbs.append(CSVLogger(fname="log.csv", append=cfg.resume))
    if "tensorboard" in cfg.log:
        from fastai.callback.tensorboard import TensorBoardCallback

        cbs.append(TensorBoardCallback(log_dir=run_dir / "tensorboard", trace_model=False, log_preds=False))
    mode = os.environ.get("WANDB_MODE")
    try:
        if "wandb" in cfg.log:
            # the environment variable, not only init's mode: wandb 0.31 probes its server for telemetry otherwise
            os.environ["WANDB_MODE"] = "offline"
            import wandb
            from fastai.callback.wandb import WandbCallback

            wandb_run = wandb.init(
                dir=str(run_dir), mode="offline", project=cfg.name, name=run_dir.name, config=cfg.to_dict(),
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True),
            )  # fmt: skip

            class _Wandb(WandbCallback):  # fastai's gather_args fails on this Learner; the config went to init
                def before_fit(self) -> None:
                    self.learn.gather_args = dict
                    super().before_fit()

            cbs.append(_Wandb(log_preds=False, log_model=False))
        yield cbs
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        if "wandb" in cfg.log:
            os.environ.pop("WANDB_MODE", None) if mode is None else os.environ.update(WANDB_MODE=mode)
