"""The de-Doppler map (numpy) and the `dedoppler` input layout: the same path sums as the torch reference, a needle
found at its drift and channel, an OFF-only decoy negative, an emptied channel not blown up, and injection
refused for the non-linear layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seti_fastai.config import build_config
from seti_fastai.data.cadence import N_CHANNELS, N_PANELS, N_TIMES, ON_PANELS
from seti_fastai.data.drift_grid import DedopplerConfig
from seti_fastai.data.drift_map import MAD_TO_STD, NOISE_FLOOR, drift_map, path_sum_matrix, whiten_by_channel
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.dedoppler import dedoppler, drift_matrix
from seti_fastai.learn.augment import AugRecipe


def _cadence(rows: int = N_TIMES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N_PANELS, rows, N_CHANNELS)).astype(np.float32)


def _add_line(cadence: np.ndarray, panels, channel: float, drift: float, level: float, gap: int = 12) -> None:
    """A straight drifting line centred on `channel` at the cadence's middle row (the reference's timeline)."""
    rows = cadence.shape[1]
    t_mid = ((N_PANELS - 1) * (rows + gap) + rows - 1) / 2
    for p in panels:
        for r in range(rows):
            f = int(np.floor(channel + drift * (p * (rows + gap) + r - t_mid) + 0.5))
            if 0 <= f < cadence.shape[2]:
                cadence[p, r, f] += level


def test_path_sums_are_sums_along_each_rounded_path_for_numpy_and_torch():
    cfg = DedopplerConfig(max_drift=0.5, drift_step=0.25, gap_rows=2)
    rows, chans = 16, 32
    x = np.random.default_rng(0).normal(size=(N_PANELS, rows, chans)).astype(np.float32)
    t_mid = ((N_PANELS - 1) * (rows + cfg.gap_rows) + rows - 1) / 2
    expected = np.zeros((len(cfg.drifts()), N_PANELS, chans), np.float32)
    for d, drift in enumerate(cfg.drifts()):
        for p in range(N_PANELS):
            for r in range(rows):
                shift = int(np.floor(drift * (p * (rows + cfg.gap_rows) + r - t_mid) + 0.5))
                for f in range(chans):
                    if 0 <= f + shift < chans:
                        expected[d, p, f] += x[p, r, f + shift]
    cum = np.concatenate([np.zeros((N_PANELS, 1, chans), np.float32), x.cumsum(axis=1)], axis=1).reshape(-1)
    ours = (path_sum_matrix(cfg, rows, chans) @ cum).reshape(expected.shape)
    torch_sums = (drift_matrix(cfg, "cpu", rows, chans) @ torch.from_numpy(cum)).numpy().reshape(expected.shape)
    assert np.allclose(ours, expected, atol=1e-4) and np.allclose(torch_sums, expected, atol=1e-4)


@pytest.mark.parametrize("rows", [N_TIMES, 16])
def test_a_needle_peaks_at_its_drift_and_channel(rows):
    cfg = DedopplerConfig().for_rows(rows)
    drift = cfg.drifts()[-8]  # on the grid, positive
    cadence = _cadence(rows)
    _add_line(cadence, ON_PANELS, 128, drift, 1.5, cfg.gap_rows)
    dmap = drift_map(cadence)
    assert dmap.shape == (len(cfg.drifts()), N_CHANNELS) and dmap.dtype == np.float32
    d, f = np.unravel_index(dmap.argmax(), dmap.shape)
    assert abs(cfg.drifts()[d] - drift) <= 2 * cfg.drift_step and abs(f - 128) <= cfg.pool
    score = float(dedoppler(torch.from_numpy(cadence[None]))[0][0])
    assert dmap.max() == pytest.approx(score, rel=0.1)  # one noise scale per channel or per panel: about the same


def test_an_off_only_line_is_negative_and_an_emptied_channel_is_not_blown_up():
    cadence = _cadence(seed=1)
    _add_line(cadence, (1, 3, 5), 60, 0.02, 2.0)  # drifting: a line still in one channel is the median's
    dmap = drift_map(cadence)
    assert dmap[:, 50:70].min() < -5 and dmap.max() < 6
    emptied = cadence * 1e-4  # what a partner's subtraction leaves where it overlaps every channel
    assert np.abs(drift_map(emptied)).max() < 0.05  # each channel's scale floored at a tenth of the data's noise


def test_the_layout_stacks_the_on_panels_beside_the_map():
    recipe = ImageRecipe("on", "dedoppler", rows=16)
    cadence = _cadence(16, seed=2)
    image = recipe.to_image(cadence)
    assert image.shape == recipe.shape == (2, 3 * 16, N_CHANNELS) and image.dtype == np.float32
    assert np.array_equal(image[0], cadence[list(ON_PANELS)].reshape(-1, N_CHANNELS))
    dmap = drift_map(cadence)  # 61 drifts into 48 rows: each row the largest of the drifts it holds
    assert np.array_equal(image[1].max(0), dmap.max(0)) and np.array_equal(image[1][0], dmap[:2].max(0))
    tall = ImageRecipe("on", "dedoppler").to_image(_cadence(seed=3))
    assert set(map(tuple, tall[1])) == set(map(tuple, drift_map(_cadence(seed=3))))  # 61 drifts stretched to 819
    assert recipe.source_panels == tuple(range(N_PANELS)) and recipe.mixes_on_and_off
    cfg = build_config(overrides=dict(layout="dedoppler", background="subtract"))
    assert AugRecipe.from_config(cfg, ImageRecipe.from_config(cfg)).time_shift is False
    with pytest.raises(ConfigError, match="--inject adds a needle's image to the cadence's: layout 'dedoppler'"):
        build_config(overrides=dict(layout="dedoppler", inject=0.2))
    with pytest.raises(ValueError, match="six panels"):
        drift_map(cadence[:3])


def test_whitening_removes_each_channels_median_and_scales_its_noise_with_a_floor():
    rng = np.random.default_rng(3)
    scale = np.full(N_CHANNELS, 2.0, np.float32)
    scale[7] = 1e-3  # a channel a partner has all but emptied
    cadence = (rng.normal(size=(N_PANELS, 64, N_CHANNELS)) * scale + 5.0).astype(np.float32)
    x = whiten_by_channel(cadence).transpose(0, 2, 1)  # back to (6, T, F)
    centred = cadence - np.median(cadence, axis=1, keepdims=True)
    noise = np.median(np.abs(centred), axis=1, keepdims=True) * MAD_TO_STD
    np.testing.assert_allclose(x, centred / np.maximum(noise, NOISE_FLOOR), rtol=1e-5, atol=1e-6)
    assert abs(np.median(np.abs(x[:, :, 100])) * MAD_TO_STD - 1.0) < 1e-4  # full noise: unit scale
    assert np.abs(x[:, :, 7]).max() < 0.1  # the emptied channel is scaled by the floor, not blown up
