"""Learner callbacks that fastai lacks, each small and with one job.

- `EpochSeed`: reseeds every generator at the start of each epoch, so a resumed run repeats an uninterrupted one.
- `MixUpOr`: mixup with a per-batch probability and the OR (max) label rule of the top teams.
- `ProgressiveResize`: the model input size of each epoch.
- `AugmentationOff`: no augmentation and no mixup for the last k epochs.
- `RunRecorder`: writes the run directory (history.csv, model.pth, last.pth) after each finished epoch.
- `RestoreScaler`: on `--resume`, gives fp16's gradient scaler the state saved in last.pth.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from seti_fastai.io import atomic_write_csv
from seti_fastai.learn.augment import Switchable
from seti_fastai.learn.distributed import all_reduce_sum, is_main, rank, unwrap_dl, unwrap_model
from seti_fastai.model.checkpoint import save_resume, save_weights


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % 2**31


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank: the seed itself on rank 0 (a single process), distinct on the others."""
    return (seed + rank * 104_729) % 2**31


class EpochSeed(Callback):
    """Set python, numpy and torch seeds (and the training DataLoader's shuffler) from (seed, epoch).

    Under DDP each rank gets its own seed (augmentations, mixup, worker seeds differ); the shuffler, whose draw rank 0
    broadcasts, keeps the seed of a single process.
    """

    order = -20  # before everything that draws random numbers

    def __init__(self, seed: int):
        self.seed = seed

    def before_epoch(self) -> None:
        s = epoch_seed(self.seed, self.epoch)
        set_seed(rank_seed(s, rank()))
        self.dls.train.rng = random.Random(s)
        unwrap_dl(self.dls.train).rng = random.Random(s)  # the DataLoader inside DDP's `DistributedDL`


class MixUpOr(Callback, Switchable):
    """Mixup on a share `p` of training batches: x = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha).

    The label is `max(y, y[perm])` (a needle in either image makes a needle) or the weighted mean (`lerp`).
    fastai's `MixUp` mixes the loss only for integer targets; here targets are float and mixed directly.
    """

    run_valid = False
    order = 10

    def __init__(self, alpha: float = 1.0, p: float = 0.5, label: str = "max"):
        if label not in ("max", "lerp"):
            raise ValueError(f"label must be 'max' or 'lerp', got {label!r}")
        self.alpha, self.p, self.label = alpha, p, label

    def before_batch(self) -> None:
        if not self.enabled or self.p <= 0 or torch.rand(()).item() >= self.p:
            return
        x, y = self.xb[0], self.yb[0]
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0],)).to(x.device)
        perm = torch.randperm(x.shape[0], device=x.device)
        lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        mixed_x = x * lam_x + x[perm] * (1 - lam_x)
        mixed_y = torch.maximum(y, y[perm]) if self.label == "max" else y * lam + y[perm] * (1 - lam)
        self.learn.xb, self.learn.yb = (mixed_x,), (mixed_y,)


class ProgressiveResize(Callback):
    """Set the model's input size for each epoch from a schedule (one size per epoch)."""

    order = -5

    def __init__(self, sizes: list[int]):
        self.sizes = sizes

    def before_epoch(self) -> None:
        size = self.sizes[min(self.epoch, len(self.sizes) - 1)]
        unwrap_model(self.learn.model).set_size(size)


class AugmentationOff(Callback):
    """Switch the training augmentations (and mixup) off for the last `last` epochs: every `Switchable` transform of
    the training DataLoader and every `Switchable` callback."""

    order = -5

    def __init__(self, last: int):
        self.last = last

    def before_epoch(self) -> None:
        on = self.epoch < self.n_epoch - self.last
        train_dl = unwrap_dl(self.dls.train)
        for switchable in [*train_dl.after_item.fs, *train_dl.after_batch.fs, *self.learn.cbs]:
            if isinstance(switchable, Switchable):
                switchable.enabled = on


class RunRecorder(Callback):
    """After each finished epoch: append to history.csv, save model.pth when validation AUC improves, and save
    last.pth (model, optimizer, epoch, best) so an interrupted run can go on with `--resume`.

    Epochs skipped on resume (fastai's `SkipToEpoch`) are not recorded again. Under DDP the train loss and samples/s
    are summed over ranks, the AUC is that of the whole fold (fastai's `DistributedDL` drops its padding when it
    gathers), and only rank 0 writes.
    """

    order = 65  # after Recorder has the epoch's metrics, after SkipToEpoch decides

    def __init__(
        self, run_dir: Path, best: float = -math.inf, best_epoch: int = -1, history: pd.DataFrame | None = None
    ):
        self.run_dir, self.best, self.best_epoch = Path(run_dir), best, best_epoch
        self.rows = [] if history is None else history.to_dict("records")
        self._trained = False

    def before_epoch(self) -> None:
        self._trained, self._start = False, time.perf_counter()

    def before_train(self) -> None:
        self._trained, self._train_start = True, time.perf_counter()
        self._n_train, self._loss_sum = 0, 0.0

    def after_train(self) -> None:
        self._train_seconds = time.perf_counter() - self._train_start

    def after_batch(self) -> None:
        if self.training:
            n = self.xb[0].shape[0]
            self._n_train += n
            self._loss_sum = self._loss_sum + self.loss.detach().float() * n  # no per-batch GPU sync

    def after_epoch(self) -> None:
        if not self._trained:
            return
        names = self.recorder.metric_names[1:-1]  # drop "epoch" and "time"
        values = dict(zip(names, self.recorder.log[1 : 1 + len(names)], strict=True))
        seconds = time.perf_counter() - self._start
        auc = float(values.get("roc_auc", float("nan")))
        n_train, loss_sum = all_reduce_sum([self._n_train, float(self._loss_sum)])  # all ranks' samples
        model = unwrap_model(self.learn.model)
        row = dict(
            epoch=self.epoch,
            train_loss=loss_sum / max(n_train, 1),  # the epoch's mean, not fastai's smoothed loss
            valid_loss=float(values["valid_loss"]),
            roc_auc=auc,
            lr=float(self.opt.hypers[-1]["lr"]),
            size=model.size[0],
            seconds=round(seconds, 2),
            train_samples_per_s=round(n_train / self._train_seconds, 2),
        )
        self.rows.append(row)
        improved = not math.isnan(auc) and auc > self.best
        if improved:
            self.best, self.best_epoch = auc, self.epoch
        if not is_main():
            return
        atomic_write_csv(pd.DataFrame(self.rows), self.run_dir / "history.csv")
        if improved:
            save_weights(model, self.run_dir / "model.pth")
        scaler = getattr(self.learn, "scaler", None)  # fastai's MixedPrecision (fp16) holds a GradScaler there
        save_resume(self.run_dir / "last.pth", model, self.opt, self.epoch, self.best, self.best_epoch, scaler)


class RestoreScaler(Callback):
    """Load a saved `GradScaler` state (loss scale, growth tracker) into `learn.scaler` once fastai's
    `MixedPrecision` has made it (its `before_fit` makes a fresh one each fit). Does nothing without a scaler."""

    order = 11  # after MixedPrecision (10)

    def __init__(self, state: dict):
        self.state = state

    def before_fit(self) -> None:
        scaler = getattr(self.learn, "scaler", None)
        if scaler is not None and scaler.is_enabled() and self.state:
            scaler.load_state_dict(self.state)
