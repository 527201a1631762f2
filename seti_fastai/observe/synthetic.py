"""Synthetic six-file ABACAD observations written by setigen, for tests and recall measurements: chi-squared noise,
narrowband needles that drift across the whole cadence in the ON files only, and RFI (drifting or not) in all six.

The defaults follow Green Bank's high-resolution product: 2.79 Hz channels, 16 rows of 18.25 s per 5-minute file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seti_fastai.observe.files import N_FILES, ON_FILES, quiet_blimpy

CHANNEL_HZ = 2.7939677238464355  # Green Bank high-resolution channel width
ROW_SECONDS = 18.253611008  # one integration
SLEW_SECONDS = 15.0  # between two pointings of a cadence
START_UNIX = 1.6e9  # when the first file starts (2020-09-13), so that files are the same on every run


@dataclass(frozen=True)
class Needle:
    """A drifting narrowband signal: its channel when the cadence starts (channel 0 is fch1, the band's top, as in
    the files), drift (Hz/s; positive rises in frequency, to lower channels) and setigen's SNR of one file."""

    channel: int
    drift: float
    snr: float = 30.0


def write_observation(
    out_dir: Path | str,
    needles: Sequence[Needle] = (),
    rfi: Sequence[Needle] = (),
    channels: int = 4096,
    rows: int = 16,
    fch1_mhz: float = 6000.0,
    fmt: str = "h5",
    seed: int = 0,
    target: str = "TARGET",
) -> list[Path]:
    """Write one cadence as six files `out_dir/<i>_<source>.<fmt>` (ON named `target`, OFFs `OFF1..OFF3`); the band
    descends from `fch1_mhz` as in Green Bank's files. Returns the paths in ABACAD order."""
    import setigen as stg
    from astropy import units as u

    quiet_blimpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    file_seconds = rows * ROW_SECONDS + SLEW_SECONDS
    paths = []
    for i in range(N_FILES):
        frame = stg.Frame(
            fchans=channels, tchans=rows, df=CHANNEL_HZ * u.Hz, dt=ROW_SECONDS * u.s, fch1=fch1_mhz * u.MHz,
            ascending=False, seed=int(rng.integers(2**31)), t_start=START_UNIX + i * file_seconds,
        )  # fmt: skip
        frame.add_noise(x_mean=10, noise_type="chi2")
        for n in [*rfi, *(needles if i in ON_FILES else ())]:
            _add_line(frame, fch1_mhz, n.channel, n.drift, i * file_seconds, n.snr)
        source = target if i in ON_FILES else f"OFF{i // 2 + 1}"
        frame.source_name = source
        path = out_dir / f"{i}_{source}.{fmt}"
        (frame.save_h5 if fmt == "h5" else frame.save_fil)(str(path))
        paths.append(path)
    return paths


def _add_line(frame, fch1_mhz: float, channel: int, drift: float, t0: float, snr: float) -> None:
    """A needle at file channel `channel` when the cadence starts, drifting `drift` Hz/s, seen from `t0` s on;
    computed over the channels it crosses only (setigen's bounding range), so wide bands stay cheap."""
    import setigen as stg
    from astropy import units as u

    f_start = fch1_mhz * 1e6 - channel * CHANNEL_HZ + drift * t0
    f_end = f_start + drift * frame.tchans * frame.dt
    margin = 16 * CHANNEL_HZ
    frame.add_signal(
        stg.constant_path(f_start=f_start * u.Hz, drift_rate=drift * u.Hz / u.s),
        stg.constant_t_profile(level=frame.get_intensity(snr=snr)),
        stg.gaussian_f_profile(width=2 * CHANNEL_HZ * u.Hz),
        stg.constant_bp_profile(level=1),
        bounding_f_range=(min(f_start, f_end) - margin, max(f_start, f_end) + margin),
    )
