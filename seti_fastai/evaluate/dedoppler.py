"""The physics reference: an incoherent de-Doppler search, ON panels minus OFF panels along one drifting path.

Each panel loses its per-channel background (median over time) and is scaled by a robust noise estimate (MAD).
For every drift d (channels per row) and channel f, the path f + d * (t - t_mid) runs across the whole cadence,
t being the row on the cadence timeline (panel p starts at p * (273 + gap_rows)) and t_mid its middle. Each panel's
sum along the path is taken from cumulative row sums (a few terms per drift instead of 273 rows), max-pooled over
+-`pool` channels to absorb the drift quantisation, and the score is max over (d, f) of (ON sums - OFF sums),
scaled to unit noise. `channel` is where the best path is at t_mid.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from seti_fastai.data.cadence import (
    N_CHANNELS,
    N_PANELS,
    N_TIMES,
    OFF_PANELS,
    ON_PANELS,
    KaggleData,
    load_cadence,
)
from seti_fastai.data.folds import folds_name, read_folds
from seti_fastai.data.tables import read_scores
from seti_fastai.errors import ConfigError, LabelFileError
from seti_fastai.evaluate.drift_grid import DedopplerConfig
from seti_fastai.io import derived_path

MAD_TO_STD = 1.4826  # the MAD of a normal distribution times this is its standard deviation


def path_terms(cfg: DedopplerConfig, drift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, shifts, weights), each (6, K): a panel's path sum is sum_k weight * cumsum[row, f + shift].

    Rows that share one rounded channel shift form a block, whose sum is the difference of two cumulative sums.
    """
    t_mid = ((N_PANELS - 1) * (N_TIMES + cfg.gap_rows) + N_TIMES - 1) / 2
    r = np.arange(N_TIMES)
    panels = []
    for p in range(N_PANELS):
        shift = np.floor(drift * (p * (N_TIMES + cfg.gap_rows) + r - t_mid) + 0.5).astype(np.int64)
        starts = np.flatnonzero(np.diff(shift, prepend=shift[0] - 1))
        ends = np.append(starts[1:], N_TIMES)
        panels.append((np.concatenate([ends, starts]), np.tile(shift[starts], 2), np.repeat([1.0, -1.0], len(starts))))
    k = max(len(rows) for rows, _, _ in panels)
    out = np.zeros((3, N_PANELS, k))
    for p, terms in enumerate(panels):
        for i, values in enumerate(terms):
            out[i, p, : len(values)] = values
    return out[0].astype(np.int64), out[1].astype(np.int64), out[2].astype(np.float32)


@functools.lru_cache(maxsize=8)
def drift_matrix(cfg: DedopplerConfig, device: str = "cpu") -> torch.Tensor:
    """The sparse (D * 6 * F, 6 * (T + 1) * F) map from cumulative row sums to every panel's path sums."""
    f = np.arange(N_CHANNELS)
    panel = np.arange(N_PANELS)[:, None, None]
    out_rows, in_cols, values = [], [], []
    for i, drift in enumerate(cfg.drifts()):
        rows, shifts, weights = path_terms(cfg, float(drift))
        channel = shifts[..., None] + f  # (6, K, F)
        keep = (channel >= 0) & (channel < N_CHANNELS) & (weights[..., None] != 0)  # zeros outside the band
        out_rows.append(np.broadcast_to((i * N_PANELS + panel) * N_CHANNELS + f, keep.shape)[keep])
        in_cols.append((((panel * (N_TIMES + 1) + rows[..., None]) * N_CHANNELS) + channel)[keep])
        values.append(np.broadcast_to(weights[..., None], keep.shape)[keep])
    shape = (len(cfg.drifts()) * N_PANELS * N_CHANNELS, N_PANELS * (N_TIMES + 1) * N_CHANNELS)
    index = torch.from_numpy(np.stack([np.concatenate(out_rows), np.concatenate(in_cols)]))
    coo = torch.sparse_coo_tensor(index, torch.from_numpy(np.concatenate(values)), shape, check_invariants=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return coo.coalesce().to_sparse_csr().to(device)


def preprocess(x: torch.Tensor, row_median: bool = False) -> torch.Tensor:
    """(B, 6, T, F): remove each channel's median over time (and each row's median), scale each panel to unit noise.

    The noise scale is the median absolute deviation from the channel medians (robust to the signals themselves).
    """
    x = x - x.median(dim=2, keepdim=True).values
    if row_median:
        x = x - x.median(dim=3, keepdim=True).values
    mad = x[:, :, ::4].abs().flatten(2).median(-1).values * MAD_TO_STD  # every 4th row is plenty, and 4x faster
    return x / mad.clamp_min(1e-6)[..., None, None]


def drift_sums(x: torch.Tensor, cfg: DedopplerConfig) -> torch.Tensor:
    """(B, 6, T, F) preprocessed cadences -> (B, D, 6, F): each panel's sum along every drifting path."""
    b = x.shape[0]
    cum = F.pad(x.cumsum(dim=2), (0, 0, 1, 0)).reshape(b, -1)  # row 0 is the empty sum
    out = (drift_matrix(cfg, str(x.device)) @ cum.T.contiguous()).T.reshape(b, -1, N_PANELS, N_CHANNELS)
    if cfg.pool:
        out = F.max_pool1d(out.reshape(-1, 1, N_CHANNELS), 2 * cfg.pool + 1, 1, cfg.pool).reshape(out.shape)
    return out


def dedoppler(x: torch.Tensor, cfg: DedopplerConfig = DedopplerConfig()) -> tuple[torch.Tensor, ...]:
    """(B, 6, T, F) raw cadences -> (score, drift, channel), each (B,): the best ON-minus-OFF path per cadence."""
    sums = drift_sums(preprocess(x.float(), cfg.row_median), cfg)
    contrast = sums[:, :, list(ON_PANELS)].sum(2) - sums[:, :, list(OFF_PANELS)].sum(2)  # (B, D, F)
    best, index = contrast.flatten(1).max(1)
    drifts = torch.as_tensor(cfg.drifts(), dtype=torch.float32, device=x.device)
    n_chan = x.shape[-1]
    return best / math.sqrt(N_PANELS * N_TIMES), drifts[index // n_chan], index % n_chan


class _Cadences(Dataset):
    def __init__(self, paths: Sequence[Path | str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_cadence(self.paths[i]))


def resolve_device(device: str | None = None) -> torch.device:
    """`device`, or CUDA when available, else the CPU; an unknown or missing device is a ConfigError."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def score_files(
    paths: Sequence[Path | str],
    cfg: DedopplerConfig = DedopplerConfig(),
    bs: int = 32,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Score cadence files (loaded and validated in DataLoader workers): columns score, drift, channel, in order."""
    cfg.validate()
    if bs < 1 or workers < 0:
        raise ConfigError(f"batch size must be >= 1 and workers >= 0, got {bs} and {workers}")
    dev = resolve_device(device)
    dl = DataLoader(_Cadences(paths), batch_size=bs, num_workers=workers, pin_memory=dev.type == "cuda")
    parts: list[list[torch.Tensor]] = [[], [], []]
    with torch.inference_mode():
        for x in dl:
            for part, t in zip(parts, dedoppler(x.to(dev, non_blocking=True), cfg), strict=True):
                part.append(t.cpu())
            if progress is not None:
                progress(len(x))
    score, drift, channel = (torch.cat(p).numpy() if p else np.zeros(0) for p in parts)
    return pd.DataFrame({"score": score, "drift": drift.round(6), "channel": channel.astype(np.int64)})


def scores_on(path: Path | str, labels: pd.DataFrame) -> pd.DataFrame:
    """`labels` (id, target, ...) joined with the scores of `path`, which must cover every id."""
    joined = labels.merge(read_scores(path), on="id", how="left")
    missing = joined["score"].isna()
    if missing.any():
        raise LabelFileError(f"{path}: no score for {int(missing.sum())} id(s), e.g. {joined['id'][missing].iloc[0]}")
    return joined


def auc_by_fold(path: Path | str, data: Path | str, split: str = "train", work_dir: Path | str = "runs") -> dict:
    """ROC AUC of a score file against a split's labels: {auc, n, folds: {fold: auc}}; per fold when the default
    fold file exists (beside the data or in `work_dir`)."""
    from sklearn.metrics import roc_auc_score

    kaggle = KaggleData(data)
    joined = scores_on(path, kaggle.read_labels(split))
    y, s = joined["target"].to_numpy(), joined["score"].to_numpy()
    if y.min() == y.max():
        raise LabelFileError(f"{kaggle.labels_path(split)}: one class only; ROC AUC is undefined")
    result = dict(auc=float(roc_auc_score(y, s)), n=len(joined), folds={})
    fold_file = derived_path(data, folds_name(split=split), work_dir)
    if fold_file.is_file():
        merged = joined.merge(read_folds(fold_file)[["id", "fold"]], on="id")
        for fold, g in merged.groupby("fold"):
            if g["target"].nunique() == 2:
                result["folds"][int(fold)] = float(roc_auc_score(g["target"], g["score"]))
    return result


def reference_auc(path: Path | str, labels: pd.DataFrame, n_boot: int = 1000) -> dict:
    """AUC and bootstrap CI of a reference score file on the ids (and targets) of `labels`."""
    from seti_fastai.evaluate.metrics import bootstrap_auc

    joined = scores_on(path, labels[["id", "target"]])
    auc, lo, hi = bootstrap_auc(joined["target"].to_numpy(), joined["score"].to_numpy(), n_boot)
    return dict(auc=auc, ci_low=lo, ci_high=hi, n=len(joined))
