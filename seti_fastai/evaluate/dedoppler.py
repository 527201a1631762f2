"""The physics reference: an incoherent de-Doppler search, ON panels minus OFF panels along one drifting path.

Each panel loses its per-channel background (median over time) and is scaled by a robust noise estimate (MAD).
For every drift d (channels per row) and channel f, the path f + d * (t - t_mid) runs across the whole cadence,
t being the row on the cadence timeline (panel p of T rows starts at p * (T + gap_rows); T is 273 for Kaggle
cadences, 16 for Green Bank's high-resolution files) and t_mid its middle. Each panel's sum along the path is taken
from cumulative row sums (a few terms per drift instead of T rows), max-pooled over +-`pool` channels to absorb the
drift quantisation, and the score is max over (d, f) of (ON sums - OFF sums), scaled to unit noise. `channel` is
where the best path is at t_mid.

`dedoppler` scores a batch of 256-channel cadences through one sparse matrix product; `best_paths` scores every
channel of a long stretch of band (`seti_fastai.observe.scan`) with shifted slices, the matrix being too large there.
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
from seti_fastai.data.drift_grid import DedopplerConfig
from seti_fastai.data.drift_map import MAD_TO_STD, path_sum_matrix
from seti_fastai.data.folds import folds_name, read_folds
from seti_fastai.data.tables import read_scores
from seti_fastai.errors import ConfigError, LabelFileError
from seti_fastai.io import derived_path


@functools.lru_cache(maxsize=8)
def drift_matrix(
    cfg: DedopplerConfig, device: str = "cpu", n_times: int = N_TIMES, n_chan: int = N_CHANNELS
) -> torch.Tensor:
    """`data.drift_map.path_sum_matrix` (cumulative row sums to every panel's path sums, for panels of T =
    `n_times` rows and F = `n_chan` channels) as a torch sparse CSR tensor on `device`."""
    m = path_sum_matrix(cfg, n_times, n_chan)
    parts = (m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(*map(torch.from_numpy, parts), m.shape).to(device)


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
    """(B, 6, T, F) preprocessed cadences (any T and F) -> (B, D, 6, F): each panel's sum along every drifting
    path."""
    b, _, n_times, n_chan = x.shape
    cum = F.pad(x.cumsum(dim=2), (0, 0, 1, 0)).reshape(b, -1)  # row 0 is the empty sum
    out = (drift_matrix(cfg, str(x.device), n_times, n_chan) @ cum.T.contiguous()).T.reshape(b, -1, N_PANELS, n_chan)
    if cfg.pool:
        out = F.max_pool1d(out.reshape(-1, 1, n_chan), 2 * cfg.pool + 1, 1, cfg.pool).reshape(out.shape)
    return out


def dedoppler(x: torch.Tensor, cfg: DedopplerConfig | None = None) -> tuple[torch.Tensor, ...]:
    """(B, 6, T, F) raw cadences (any T and F) -> (score, drift, channel), each (B,): the best ON-minus-OFF path
    per cadence, the score in units of its noise. Without `cfg`, the default grid for T rows
    (`DedopplerConfig.for_rows`)."""
    cfg = cfg if cfg is not None else DedopplerConfig().for_rows(x.shape[2])
    sums = drift_sums(preprocess(x.float(), cfg.row_median), cfg)
    contrast = sums[:, :, list(ON_PANELS)].sum(2) - sums[:, :, list(OFF_PANELS)].sum(2)  # (B, D, F)
    best, index = contrast.flatten(1).max(1)
    drifts = torch.as_tensor(cfg.drifts(), dtype=torch.float32, device=x.device)
    n_chan = x.shape[-1]
    return best / math.sqrt(N_PANELS * x.shape[2]), drifts[index // n_chan], index % n_chan


def _panel_offsets(cfg: DedopplerConfig, n_times: int) -> np.ndarray:
    """Rows from the cadence's middle to the middle of each panel, on the cadence timeline."""
    t_mid = ((N_PANELS - 1) * (n_times + cfg.gap_rows) + n_times - 1) / 2
    return np.arange(N_PANELS) * (n_times + cfg.gap_rows) + (n_times - 1) / 2 - t_mid


def max_shift(cfg: DedopplerConfig, n_times: int, veto: int = 0) -> int:
    """The farthest (channels) a path of `best_paths` strays from its channel at the cadence's middle, pooling
    included: the margin a stretch of band needs on both sides."""
    reach = np.abs(_panel_offsets(cfg, n_times)).max() + (n_times - 1) / 2
    return math.floor(cfg.max_drift * reach + 0.5) + max(cfg.pool, veto) + 1


CONTRASTS = ("min", "sum")


def best_paths(
    x: torch.Tensor, cfg: DedopplerConfig, margin: int, contrast: str = "min", veto: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(6, T, margin + F + margin) preprocessed panels of a stretch of band -> (score, drift), each (F,): for each of
    the F central channels, the best path through it at the cadence's middle and its drift (channels per row).
    `margin` >= `max_shift(cfg, T, veto)` keeps every path inside `x`. A path scores, in units of its noise,
    - `min`: the weakest ON file's sum minus the strongest OFF file's, the ON sums max-pooled over +-`pool`
      channels and the OFF sums over +-`veto` (a signal in every ON file and near the path in no OFF file, as
      turboSETI's event filter asks: a bright line crossing the path in one file, or RFI in all six, is no event);
    - `sum`: the ON sums minus the OFF sums (`dedoppler`'s, more sensitive to faint needles, fooled by such lines).

    Row r of panel p lies at round(d * (offset_p + r - middle)) channels from the path's channel at the cadence's
    middle; each panel's sum for one pattern of shifts (relative to its own middle) serves every drift that rounds
    to the same pattern (neighbouring drifts: the grid is walked in order), and each drift costs six slices."""
    n_times, width = x.shape[1], x.shape[2]
    n_chan = width - 2 * margin
    if contrast not in CONTRASTS:
        raise ConfigError(f"contrast must be one of {', '.join(CONTRASTS)}; got {contrast!r}")
    if margin < max_shift(cfg, n_times, veto) or n_chan < 1:
        need = max_shift(cfg, n_times, veto)
        raise ValueError(f"a margin of {margin} channels is narrower than the paths' {need}")
    within = math.floor(cfg.max_drift * (n_times - 1) / 2 + 0.5) + 1
    padded = F.pad(x, (within, within))
    rows = np.arange(n_times) - (n_times - 1) / 2
    offsets = _panel_offsets(cfg, n_times)
    pools = [cfg.pool if p in ON_PANELS or contrast == "sum" else max(cfg.pool, veto) for p in range(N_PANELS)]
    on, off = list(ON_PANELS), list(OFF_PANELS)
    best = torch.full((n_chan,), -math.inf, device=x.device)
    best_drift = torch.zeros(n_chan, device=x.device)
    patterns: list[np.ndarray | None] = [None] * N_PANELS
    panel_sums = torch.zeros(N_PANELS, width, device=x.device)
    for drift in cfg.drifts():
        centres = np.floor(drift * offsets + 0.5).astype(np.int64)
        for p in range(N_PANELS):
            pattern = np.floor(drift * (offsets[p] + rows) + 0.5).astype(np.int64) - centres[p]
            if patterns[p] is None or not np.array_equal(pattern, patterns[p]):
                patterns[p] = pattern
                total = torch.zeros(width, device=x.device)
                for r, shift in enumerate(pattern):
                    total += padded[p, r, within + shift : within + shift + width]
                if pools[p]:
                    total = F.max_pool1d(total[None, None], 2 * pools[p] + 1, 1, pools[p])[0, 0]
                panel_sums[p] = total
        sums = torch.stack([panel_sums[p, margin + d : margin + d + n_chan] for p, d in enumerate(centres)])
        if contrast == "min":
            score = sums[on].min(0).values - sums[off].max(0).values
        else:
            score = (sums[on].sum(0) - sums[off].sum(0)) / math.sqrt(N_PANELS)
        better = score > best
        best = torch.where(better, score, best)
        best_drift = torch.where(better, torch.tensor(float(drift), device=x.device), best_drift)
    return best / math.sqrt(n_times), best_drift


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
    cfg: DedopplerConfig | None = None,
    bs: int = 32,
    workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Score cadence files (loaded and validated in DataLoader workers): columns score, drift, channel, in order.
    Without `cfg`, the default grid for the files' rows."""
    if cfg is not None:
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
