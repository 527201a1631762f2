"""fastai's lr_find on a run's data and model: the loss curve, fastai's four suggestions, lr_find.png/json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.callback.schedule import minimum, slide, steep, valley

from seti_fastai.config import TrainConfig
from seti_fastai.errors import ConfigError, RunDirError
from seti_fastai.io import atomic_write_json, save_figure
from seti_fastai.learn.distributed import world_size
from seti_fastai.learn.plan import RunPlan, plan_run
from seti_fastai.learn.train import build_learner
from seti_fastai.lock import run_lock


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


def run_lr_find(plan: RunPlan | TrainConfig, quiet: bool = False) -> dict[str, Any]:
    """Run fastai's lr_find on the run's data and model; write lr_find.png/json in the run directory."""
    if world_size() > 1:
        raise ConfigError("lr-find runs in one process: start it with python or seti-fastai, not accelerate/torchrun")
    plan = plan if isinstance(plan, RunPlan) else plan_run(plan, fresh=False)
    run_dir = plan.run_dir
    with run_lock(run_dir, "lr-find", "--out"):
        learn = build_learner(plan, quiet=quiet)
        learn.lr_find(num_it=plan.cfg.lr_find_iters, show_plot=False, suggest_funcs=())
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


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, suggestions: dict, path: Path | str) -> Path:
    """Loss against learning rate (log scale) with fastai's suggestions marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    for (name, lr), color in zip(
        suggestions.items(), ("tab:red", "tab:green", "tab:orange", "tab:purple"), strict=False
    ):
        if lr:
            ax.axvline(lr, color=color, ls="--", lw=1, label=f"{name}: {lr:.2e}")
    ax.legend(fontsize=8)
    ax.set_title("lr_find")
    return save_figure(fig, path)
