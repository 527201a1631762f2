"""The de-Doppler map of one cadence as an image (numpy, for the `dedoppler` input layout).

The same incoherent search as the reference (`evaluate.dedoppler`): each panel's sum along every drifting path
of `DedopplerConfig`'s grid, max-pooled over +-`pool` channels, ON sums minus OFF sums, in units of the noise. The
reference keeps only the maximum over (drift, channel); this keeps the whole (drift, channel) map for a network.

Noise is scaled per channel, not per panel: after background subtraction the channels a partner cadence overlaps
hold little but the needle, the others hold the full noise, and one scale per panel would either drown the first or
blow up the second. A channel's scale is its robust noise (MAD) floored at `NOISE_FLOOR`, a tenth of the noise
of a cadence in Kaggle's units (std about 1, as the synthetic set's), so an all-but-empty channel cannot turn a
residual into a detection. A floor relative to the subtracted cadence itself fails: where partners overlap every
channel there is no full-noise channel left to measure (test AUC of the map's maximum on the realistic set: 0.894
with this floor, 0.795 with a tenth of the 95th-percentile channel noise, 0.742 with one scale per panel). On raw
cadences every channel has about the same noise and this is the reference's scaling.

Numpy and scipy only: it runs in the data loader's workers, one cadence at a time.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse as sp

from seti_fastai.data.cadence import N_PANELS, OFF_PANELS, ON_PANELS, time_medians
from seti_fastai.data.drift_grid import DedopplerConfig, path_terms

MAD_TO_STD = 1.4826  # the MAD of a normal distribution times this is its standard deviation
NOISE_FLOOR = 0.1  # the least noise scale of a channel, in the data's units (Kaggle's: noise std about 1)


@functools.lru_cache(maxsize=8)
def path_sum_matrix(cfg: DedopplerConfig, n_times: int, n_chan: int) -> sp.csr_matrix:
    """The sparse (D * 6 * F, 6 * (T + 1) * F) map from a cadence's cumulative row sums (row 0 the empty sum) to
    every panel's sum along every path; terms that leave the band are dropped (zeros outside it)."""
    f = np.arange(n_chan)
    panel = np.arange(N_PANELS)[:, None, None]
    rows, cols, values = [], [], []
    for i, drift in enumerate(cfg.drifts()):
        term_rows, shifts, weights = path_terms(cfg, float(drift), n_times)
        channel = shifts[..., None] + f  # (6, K, F)
        keep = (channel >= 0) & (channel < n_chan) & (weights[..., None] != 0)
        rows.append(np.broadcast_to((i * N_PANELS + panel) * n_chan + f, keep.shape)[keep])
        cols.append(((panel * (n_times + 1) + term_rows[..., None]) * n_chan + channel)[keep])
        values.append(np.broadcast_to(weights[..., None], keep.shape)[keep])
    shape = (len(cfg.drifts()) * N_PANELS * n_chan, N_PANELS * (n_times + 1) * n_chan)
    matrix = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
    matrix.sum_duplicates()
    return matrix


def whiten_by_channel(cadence: np.ndarray) -> np.ndarray:
    """(6, T, F) -> float32 (6, F, T), C-contiguous: each channel's median over time removed, each channel scaled
    to unit noise (floored). Channel by channel in one transposed copy: the medians and the running sums over time
    then read contiguous memory."""
    x = np.ascontiguousarray(cadence.transpose(0, 2, 1), dtype=np.float32)
    x -= time_medians(x)[..., None]
    noise = time_medians(np.abs(x)) * MAD_TO_STD  # (6, F)
    x /= np.maximum(noise, NOISE_FLOOR)[..., None]
    return x


def _max_pool(x: np.ndarray, half: int) -> np.ndarray:
    """Max over +-`half` channels (last axis), the band's edges left out (as padding them with -inf would)."""
    out = x.copy()
    for shift in range(1, half + 1):
        np.maximum(out[..., shift:], x[..., :-shift], out=out[..., shift:])
        np.maximum(out[..., :-shift], x[..., shift:], out=out[..., :-shift])
    return out


def drift_map(cadence: np.ndarray, cfg: DedopplerConfig | None = None) -> np.ndarray:
    """(6, T, F) cadence -> float32 (D, F): ON-minus-OFF sums along every drift (rows, the grid's order) ending at
    every channel's path centre, in units of the noise. Without `cfg`, the default grid for T rows."""
    n_panels, n_times, n_chan = cadence.shape
    if n_panels != N_PANELS:
        raise ValueError(f"the de-Doppler map needs the six panels of a cadence; got {n_panels}")
    cfg = cfg if cfg is not None else DedopplerConfig().for_rows(n_times)
    by_channel = np.zeros((N_PANELS, n_chan, n_times + 1), np.float32)  # time 0: the empty sum
    np.cumsum(whiten_by_channel(cadence), axis=-1, out=by_channel[..., 1:])
    cum = np.ascontiguousarray(by_channel.transpose(0, 2, 1))  # (6, T + 1, F), the matrix's order
    sums = (path_sum_matrix(cfg, n_times, n_chan) @ cum.reshape(-1)).reshape(-1, N_PANELS, n_chan)
    sums = _max_pool(sums, cfg.pool)
    contrast = sums[:, list(ON_PANELS)].sum(1) - sums[:, list(OFF_PANELS)].sum(1)
    return (contrast / math.sqrt(N_PANELS * n_times)).astype(np.float32)
