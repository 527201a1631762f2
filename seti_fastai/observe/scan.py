"""Scanning one observed cadence: the band cut into overlapping windows, each scored by the de-Doppler reference (and
by trained models), and the windows above a threshold merged into events.

The band is read in chunks of about `chunk` channels, each with the margin its drifting paths need on both sides,
so memory is bounded by the chunk whatever the band. In a chunk the reference scores every channel at once
(`evaluate.dedoppler.best_paths`: the best path through it, by default the weakest ON file's sum minus the
strongest OFF file's, in noise units); a window's reference score is the best of its channels'. Models score each
window's six panels (`observe.window_models`). Windows that reach the threshold give one event per peak: a window
is kept where no window overlapping it scores higher.

Drifts are searched in channels per row (the reference's unit) and reported in Hz/s: one channel per row is
foff / tsamp, negative for the descending bands of Green Bank's files (channel index rises as frequency falls).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from seti_fastai.data.cadence import N_PANELS
from seti_fastai.data.drift_grid import DedopplerConfig
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.dedoppler import best_paths, max_shift, preprocess
from seti_fastai.observe.files import ObservationCadence
from seti_fastai.observe.scan_config import ScanConfig, ranking_key

WindowScorer = Callable[[torch.Tensor], np.ndarray]  # (N, 6, T, W) preprocessed windows -> probabilities (N,)
Progress = Callable[[int], None] | None  # called with the channels just scanned


@dataclass(frozen=True)
class SearchGrid:
    """A scan's settings resolved against one cadence's headers: the drift grid in channels per row, the margin its
    paths need, and what one channel per row is in Hz/s."""

    dedoppler: DedopplerConfig
    margin: int
    hz_per_s: float  # the drift of one channel per row, Hz/s

    @property
    def n_drifts(self) -> int:
        return len(self.dedoppler.drifts())


def search_grid(cadence: ObservationCadence, cfg: ScanConfig) -> SearchGrid:
    """The drift grid for `cadence`: up to `cfg.max_drift` Hz/s, in steps that move a path's ends by half a channel
    at most (the pool absorbs the rest), with the slew between files taken from their start times."""
    hz_per_s = cadence.foff * 1e6 / cadence.tsamp
    n_times, gap = cadence.n_rows, cadence.gap_rows
    t_mid = ((N_PANELS - 1) * (n_times + gap) + n_times - 1) / 2
    dd = DedopplerConfig(
        max_drift=cfg.max_drift / abs(hz_per_s), drift_step=1 / max(t_mid, 1.0), gap_rows=gap, pool=cfg.pool
    )
    margin = max_shift(dd, n_times, cfg.veto)
    if 2 * margin > cfg.chunk:
        raise ConfigError(
            f"--max-drift {cfg.max_drift} Hz/s moves a path {margin} channels: raise --chunk above {2 * margin}"
        )
    return SearchGrid(dd, margin, hz_per_s)


def window_starts(nchans: int, window: int, step: int) -> np.ndarray:
    """First channel of every window: every `step` channels, and one flush with the band's end."""
    if nchans < window:
        raise ConfigError(f"the band holds {nchans} channels, fewer than one window ({window})")
    starts = np.arange(0, nchans - window + 1, step)
    if starts[-1] + window < nchans:
        starts = np.append(starts, nchans - window)
    return starts


def read_padded(cadence: ObservationCadence, start: int, stop: int, margin: int) -> tuple[np.ndarray, int, int]:
    """Channels [start - margin, stop + margin) of the six files, as far as the band goes: (raw, pad_low, pad_high),
    the pads being how many channels past the band's edges the range asked for."""
    lo, hi = max(0, start - margin), min(cadence.nchans, stop + margin)
    return cadence.read_channels(lo, hi), lo - (start - margin), (stop + margin) - hi


def scan_windows(
    cadence: ObservationCadence,
    cfg: ScanConfig = ScanConfig(),
    models: WindowScorer | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> Iterator[pd.DataFrame]:
    """Every window of the band, a chunk at a time, in band order: start, stop (channels), channel (of the best path
    at the cadence's middle), drift_hz_s, reference and probability (NaN without models)."""
    cfg.validate()
    grid = search_grid(cadence, cfg)
    starts = window_starts(cadence.nchans, cfg.window, cfg.step)
    per_chunk = max(1, (cfg.chunk - cfg.window) // cfg.step + 1)
    for first in range(0, len(starts), per_chunk):
        chunk_starts = starts[first : first + per_chunk]
        lo, hi = int(chunk_starts[0]), int(chunk_starts[-1]) + cfg.window
        raw, pad_low, pad_high = read_padded(cadence, lo, hi, grid.margin)
        x = preprocess(torch.from_numpy(raw).to(device)[None])[0]
        x = F.pad(x, (pad_low, pad_high))  # beyond the band: no signal, no noise
        with torch.inference_mode():
            score, drift = best_paths(x, grid.dedoppler, grid.margin, cfg.contrast, cfg.veto)
        offsets = torch.as_tensor(chunk_starts - lo, device=score.device)
        cells = offsets[:, None] + torch.arange(cfg.window, device=score.device)  # (n windows, window)
        best, where = score[cells].max(1)
        channel = offsets + where
        probability = np.full(len(chunk_starts), np.nan)
        if models is not None:
            windows = x[:, :, grid.margin + cells].permute(2, 0, 1, 3)  # (n windows, 6, T, window)
            probability = models(windows)
        yield pd.DataFrame(
            {
                "start": chunk_starts,
                "stop": chunk_starts + cfg.window,
                "channel": lo + channel.cpu().numpy(),
                "drift_hz_s": (drift[channel].cpu().numpy() * grid.hz_per_s).round(6),
                "reference": best.cpu().double().numpy(),
                "probability": probability,
            }
        )
        if progress is not None:
            progress(hi - lo)


def peak_events(windows: Iterable[pd.DataFrame], key: str, threshold: float) -> pd.DataFrame:
    """The windows whose `key` reaches `threshold`, each kept only where no window overlapping it scores higher
    (the first of equals): one event per peak, however many windows see it, and a bright needle's weaker paths
    in the windows beside it are not events of their own. `n_windows` counts the windows over the threshold that
    overlap the event's (itself included)."""
    passing = [chunk[chunk[key] >= threshold] for chunk in windows]
    columns = ["start", "stop", "channel", "drift_hz_s", "reference", "probability", "n_windows"]
    table = pd.concat(passing, ignore_index=True) if passing else pd.DataFrame(columns=columns[:-1])
    start, stop = table["start"].to_numpy(), table["stop"].to_numpy()
    score = table[key].to_numpy(dtype=float)
    keep = np.ones(len(table), dtype=bool)
    count = np.ones(len(table), dtype=np.int64)
    for k in range(1, len(table)):  # neighbours k places apart, while any of them still overlap
        overlap = start[k:] < stop[:-k]
        if not overlap.any():
            break
        count[k:] += overlap
        count[:-k] += overlap
        keep[k:] &= ~(overlap & (score[:-k] >= score[k:]))  # an earlier window as good or better
        keep[:-k] &= ~(overlap & (score[k:] > score[:-k]))  # a later window better
    return table[keep].assign(n_windows=count[keep])[columns].reset_index(drop=True)


def scan_cadence(
    cadence: ObservationCadence,
    cfg: ScanConfig = ScanConfig(),
    models: WindowScorer | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> pd.DataFrame:
    """The events of one cadence, best first (by model probability with models, else by reference score), with
    their frequencies (MHz: the band's at the event's first and last channel, and the best path's at the cadence's
    middle) and the six files."""
    key = ranking_key(models is not None)
    windows = scan_windows(cadence, cfg, models, device, progress)
    events = peak_events(windows, key, cfg.threshold_for(models is not None))
    events = events.sort_values([key, "reference"], ascending=False, kind="stable").head(cfg.top_k)
    return events.assign(
        freq_start_mhz=cadence.frequency(events["start"].to_numpy()),
        freq_end_mhz=cadence.frequency(events["stop"].to_numpy() - 1),
        freq_mhz=cadence.frequency(events["channel"].to_numpy()),
        files=";".join(str(f.path) for f in cadence.files),
    ).reset_index(drop=True)
