"""The de-Doppler search's settings (`DedopplerConfig`): the drift grid and how panels are combined. Numpy only, so
the command line reads its defaults from here without importing torch; `path_terms`, the blocks of rows a drifting
path crosses, which the torch search (`evaluate.dedoppler`) and the de-Doppler input layout both sum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from seti_fastai.data.cadence import N_CHANNELS, N_PANELS, N_TIMES
from seti_fastai.errors import ConfigError

MAX_TERMS = 100_000_000  # nonzeros of the sparse drift map (about 12 bytes each)


@dataclass(frozen=True)
class DedopplerConfig:
    """The drift grid (channels per row, both signs) and how panels are combined."""

    max_drift: float = field(  # the synthetic needles drift up to 0.12 channels per row
        default=0.12, metadata={"help": "largest drift searched, channels per row (both signs)"}
    )
    drift_step: float = field(  # half a step of error smears a path by 0.5 channel over a panel, 1.7 over the cadence
        default=0.004, metadata={"help": "step of the drift grid, channels per row"}
    )
    gap_rows: int = field(  # the synthetic set's SLEW_ROWS; 0 scores the same within noise
        default=12, metadata={"help": "rows of slew between panels along the drifting path"}
    )
    pool: int = field(  # absorbs the drift quantisation and bends of curved needles
        default=3, metadata={"help": "max-pool half-width (channels) of each panel's drift sum"}
    )
    row_median: bool = field(  # broadband bursts: no measurable gain
        default=False, metadata={"help": "also remove each row's median"}
    )

    def validate(self) -> None:
        if not (math.isfinite(self.max_drift) and self.max_drift >= 0):
            raise ConfigError(f"max drift must be a finite number >= 0, got {self.max_drift}")
        if not (math.isfinite(self.drift_step) and self.drift_step > 0):
            raise ConfigError(f"drift step must be > 0, got {self.drift_step}: the drift grid would be empty")
        if self.max_drift / self.drift_step > 1e5 or self.size() > MAX_TERMS:
            n = math.floor(self.max_drift / self.drift_step) * 2 + 1
            raise ConfigError(
                f"drift grid too large ({n} drifts up to {self.max_drift}): raise the step or lower the max"
            )
        if self.gap_rows < 0 or self.pool < 0:
            raise ConfigError(f"gap rows and pool must be >= 0, got {self.gap_rows} and {self.pool}")

    def for_rows(self, rows: int) -> DedopplerConfig:
        """This grid (set for Kaggle's 273-row panels) for panels of `rows` rows binned from them: each row lasts
        273 / rows times longer, so the same drifts move that many more channels per row and the slew is fewer
        rows."""
        if rows == N_TIMES:
            return self
        longer = N_TIMES / rows
        return replace(
            self,
            max_drift=self.max_drift * longer,
            drift_step=self.drift_step * longer,
            gap_rows=round(self.gap_rows / longer),
        )

    def drifts(self) -> np.ndarray:
        """The drift grid: -n*step .. n*step with n*step <= max_drift (always holds 0 once valid)."""
        n = math.floor(self.max_drift / self.drift_step + 1e-9)
        return np.arange(-n, n + 1) * self.drift_step

    def size(self) -> int:
        """About how many nonzeros the drift map holds: two per block of rows that share a shift, per channel."""
        blocks = np.minimum(N_TIMES, np.abs(self.drifts()) * N_TIMES + 1)
        return int(2 * N_PANELS * N_CHANNELS * blocks.sum())


def path_terms(cfg: DedopplerConfig, drift: float, n_times: int = N_TIMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, shifts, weights), each (6, K): a panel's path sum is sum_k weight * cumsum[row, f + shift], for panels
    of `n_times` rows.

    Rows that share one rounded channel shift form a block, whose sum is the difference of two cumulative sums.
    """
    t_mid = ((N_PANELS - 1) * (n_times + cfg.gap_rows) + n_times - 1) / 2
    r = np.arange(n_times)
    panels = []
    for p in range(N_PANELS):
        shift = np.floor(drift * (p * (n_times + cfg.gap_rows) + r - t_mid) + 0.5).astype(np.int64)
        starts = np.flatnonzero(np.diff(shift, prepend=shift[0] - 1))
        ends = np.append(starts[1:], n_times)
        panels.append((np.concatenate([ends, starts]), np.tile(shift[starts], 2), np.repeat([1.0, -1.0], len(starts))))
    k = max(len(rows) for rows, _, _ in panels)
    out = np.zeros((3, N_PANELS, k))
    for p, terms in enumerate(panels):
        for i, values in enumerate(terms):
            out[i, p, : len(values)] = values
    return out[0].astype(np.int64), out[1].astype(np.int64), out[2].astype(np.float32)
