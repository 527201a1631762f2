"""Trained runs as window scorers for a scan: each window's six panels (preprocessed by the scan: channel medians
removed, unit noise) made into the image its run trained on, and the runs' probabilities averaged.

A run trained on cadences of another number of time rows sees a different needle; it is refused in one line, or,
with `resample`, each window's rows are stretched (bilinear, along time) to the run's (a Kaggle-trained run reads
273 rows; Green Bank's high-resolution files hold 16). The runs' calibrations are fitted on their own validation
cadences and are not applied here: the probabilities are the networks' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seti_fastai.data.cadence import N_CHANNELS
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.predict import TrainedRun, flip_views, load_model, read_run, views_logits


def run_rows(run: TrainedRun) -> int:
    """Time rows per panel of the cadences a run trained on."""
    return run.image.rows


class WindowModels:
    """Runs that score (N, 6, T, W) windows: `models(windows)` -> mean probability over runs and flip views (N,)."""

    def __init__(self, runs: Sequence[TrainedRun], rows: int, width: int, resample: bool, device: torch.device):
        if width != N_CHANNELS:
            raise ConfigError(f"the models read {N_CHANNELS}-channel windows; --window is {width}")
        for run in runs:
            if run_rows(run) != rows and not resample:
                raise ConfigError(
                    f"{run.run_dir}: trained on {run_rows(run)}-row cadences, these files hold {rows} rows per file; "
                    "pass --resample to stretch each window's rows to the run's"
                )
        self.runs, self.rows, self.device = list(runs), rows, device
        self.models = [load_model(run).to(device) for run in runs]

    @classmethod
    def from_dirs(
        cls, run_dirs: Sequence[Path | str], rows: int, width: int, resample: bool, device: torch.device
    ) -> WindowModels:
        return cls([read_run(d) for d in run_dirs], rows, width, resample, device)

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor, bs: int = 64) -> np.ndarray:
        probs = []
        for batch in windows.split(bs):
            per_run = [self._probability(run, model, batch) for run, model in zip(self.runs, self.models, strict=True)]
            probs.append(torch.stack(per_run).mean(0))
        return torch.cat(probs).double().numpy() if probs else np.zeros(0)

    def _probability(self, run: TrainedRun, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        rows = run_rows(run)
        if batch.shape[2] != rows:
            batch = F.interpolate(batch, size=(rows, batch.shape[3]), mode="bilinear", align_corners=False)
        images = np.stack([run.image.to_image(w) for w in batch.cpu().numpy()])
        x = torch.from_numpy(images).to(self.device)
        return torch.sigmoid(views_logits(model, x, flip_views(run.aug), self.device)).mean(0)
