"""Needles drawn with setigen: the one signal generator of the synthetic set and of on-the-fly injection.

A signal is drawn on the cadence's whole timeline (six panels plus the slews between them), so its path continues
across panels as a real drifting signal would, then cut into the six (273, 256) panels; cadences of fewer rows
(`bin_rows`) are the same signal integrated longer per row. Units: the noise standard
deviation of a standardised panel (about 1). Numpy only; no fastai, no files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from seti_fastai.data.cadence import N_CHANNELS, N_PANELS, N_TIMES, ON_PANELS
from seti_fastai.errors import ConfigError

SLEW_ROWS = 12  # rows of time between two panels while the telescope slews; needles keep drifting through them
TIMELINE_ROWS = N_PANELS * N_TIMES + (N_PANELS - 1) * SLEW_ROWS
NEEDLE_SHAPES = ("line", "squared", "sine", "random_walk")
# setigen's default resolution is Breakthrough Listen's high-resolution product; only its ratio df/dt matters here.
DF_HZ, DT_S = 2.7939677238464355, 18.253611008


def bin_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """(..., 273, F) -> (..., rows, F): consecutive rows averaged in bins of 273 // rows (the remainder dropped), as
    a longer integration per row would give. The noise std falls by sqrt(bin) while a signal keeps its level, so a
    signal in units of the 273-row noise std is sqrt(bin) times brighter in units of the binned one."""
    if not 1 <= rows <= N_TIMES:
        raise ConfigError(f"rows must be in 1..{N_TIMES} (bins of the 273-row cadence); got {rows}")
    if rows == N_TIMES:
        return x
    size = N_TIMES // rows
    kept = x[..., : rows * size, :]
    return kept.reshape(*x.shape[:-2], rows, size, x.shape[-1]).mean(axis=-2, dtype=np.float32)


def signal_rows(signal: np.ndarray, rows: int) -> np.ndarray:
    """A 273-row signal in noise-std units as the same signal in `rows` rows, in the binned noise's units."""
    return signal if rows == N_TIMES else bin_rows(signal, rows) * np.float32(np.sqrt(N_TIMES // rows))


def check_shape_weights(weights: dict[str, float], name: str = "shape weights") -> None:
    """Raise unless `weights` maps known needle shapes to non-negative weights with a positive sum."""
    unknown = sorted(set(weights) - set(NEEDLE_SHAPES))
    if unknown:
        raise ConfigError(
            f"{name}: unknown needle shape(s) {', '.join(unknown)}; choose from {', '.join(NEEDLE_SHAPES)}"
        )
    if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"{name}: weights must be >= 0 with a positive sum; got {weights}")


def parse_shape_weights(text: str, name: str = "shape weights") -> dict[str, float]:
    """`"sine=0.6,line=0.4"` -> {"sine": 0.6, "line": 0.4}, checked."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            weights[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{name}: expected shape=weight pairs like sine=0.6,line=0.4; got {part!r}")
    check_shape_weights(weights, name)
    return weights


def import_setigen():
    """Import setigen quietly (blimpy warns about pkg_resources at import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import setigen

    return setigen


def setigen_frame(stg, fchans: int, tchans: int, rng: np.random.Generator):
    """An empty setigen Frame at this module's resolution, drawing from `rng`."""
    from astropy import units as u

    return stg.Frame(
        fchans=fchans,
        tchans=tchans,
        df=DF_HZ * u.Hz,
        dt=DT_S * u.s,
        fch1=0 * u.Hz,
        ascending=True,
        seed=rng,
        t_start=0.0,
    )


def hz(channels: float) -> float:
    return channels * DF_HZ


def hz_per_s(channels_per_row: float) -> float:
    return channels_per_row * DF_HZ / DT_S


def signal_path(stg, shape: str, f0: float, drift: float, rng: np.random.Generator):
    """A setigen path function, `f0` in channels and `drift` in channels per row."""
    if shape == "line":
        return stg.constant_path(f_start=hz(f0), drift_rate=hz_per_s(drift))
    if shape == "squared":
        # setigen's squared path: f0 + drift * t^2 / 2; scale so the bend spans a few dozen channels
        curvature = rng.choice([-1, 1]) * rng.uniform(20, 80) * 2 / TIMELINE_ROWS**2
        return stg.squared_path(f_start=hz(f0), drift_rate=hz_per_s(curvature) / DT_S)
    if shape == "sine":
        return stg.sine_path(
            f_start=hz(f0),
            drift_rate=hz_per_s(drift),
            period=rng.uniform(0.3, 1.2) * TIMELINE_ROWS * DT_S,
            amplitude=hz(rng.uniform(5, 30)),
        )
    if shape == "random_walk":
        return stg.simple_rfi_path(
            f_start=hz(f0),
            drift_rate=hz_per_s(drift),
            spread=hz(rng.uniform(0.3, 1.0)),
            spread_type="normal",
            rfi_type="random_walk",
            seed=rng,
        )
    raise ValueError(f"unknown needle shape {shape!r}")


def timeline_signal(
    stg,
    shape: str,
    brightness: float,
    rng: np.random.Generator,
    max_drift: float = 0.12,
    width: tuple[float, float] = (1.0, 4.0),
) -> np.ndarray:
    """A (6, 273, 256) float32 signal in noise-std units on every panel (masking panels is the caller's job).

    Drift is drawn uniformly in [-max_drift, max_drift] channels per row (0.12 crosses about 200 channels over the
    cadence), the width in channels uniformly from `width`; Gaussian (70 %) or box frequency profile; constant
    (60 %) or sine-modulated brightness.
    """
    frame = setigen_frame(stg, N_CHANNELS, TIMELINE_ROWS, rng)
    drift = rng.choice([-1, 1]) * rng.uniform(0.0, max_drift)
    f_mid = rng.uniform(0.2, 0.8) * N_CHANNELS  # where the signal is half-way through the cadence
    f0 = f_mid if shape == "squared" else f_mid - drift * TIMELINE_ROWS / 2
    w = rng.uniform(*width)
    f_profile = stg.gaussian_f_profile(width=hz(w)) if rng.random() < 0.7 else stg.box_f_profile(width=hz(w))
    if rng.random() < 0.6:
        t_profile = stg.constant_t_profile(level=brightness)
    else:  # brightness modulated by a slow sine, never negative
        t_profile = stg.sine_t_profile(
            period=rng.uniform(0.1, 0.5) * TIMELINE_ROWS * DT_S,
            phase=rng.uniform(0, TIMELINE_ROWS * DT_S),
            amplitude=0.5 * brightness,
            level=brightness,
        )
    frame.add_signal(signal_path(stg, shape, f0, drift, rng), t_profile, f_profile, stg.constant_bp_profile(level=1))
    starts = [p * (N_TIMES + SLEW_ROWS) for p in range(N_PANELS)]
    return np.stack([frame.data[s : s + N_TIMES] for s in starts]).astype(np.float32)


@dataclass(frozen=True)
class NeedleSpec:
    """The needles `draw_needle` makes: shape mix, brightness range (log-uniform, noise-std units), drift, width,
    and the share kept in one or two ON panels only (the rest in all three)."""

    shape_weights: dict[str, float] = field(
        default_factory=lambda: {"line": 0.25, "squared": 0.25, "sine": 0.25, "random_walk": 0.25}
    )
    brightness: tuple[float, float] = (0.25, 2.0)
    max_drift: float = 0.12
    width: tuple[float, float] = (1.0, 4.0)
    partial_p: float = 0.3

    def validate(self) -> NeedleSpec:
        check_shape_weights(self.shape_weights, "needle shapes")
        lo, hi = self.brightness
        if not 0 < lo <= hi:
            raise ConfigError(f"needle brightness range must satisfy 0 < low <= high; got {self.brightness}")
        if not self.max_drift >= 0 or not 0 < self.width[0] <= self.width[1] or not 0 <= self.partial_p <= 1:
            raise ConfigError("needle drift must be >= 0, width 0 < low <= high, partial share in [0, 1]")
        return self


def draw_needle(stg, spec: NeedleSpec, rng: np.random.Generator) -> np.ndarray:
    """One needle as a (6, 273, 256) float32 array: zero in the OFF panels and in any ON panel it skips."""
    shapes = list(spec.shape_weights)
    p = np.array([spec.shape_weights[s] for s in shapes], dtype=float)
    shape = str(rng.choice(shapes, p=p / p.sum()))
    lo, hi = spec.brightness
    brightness = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    keep = list(ON_PANELS)
    if rng.random() < spec.partial_p:
        keep = sorted(rng.choice(ON_PANELS, size=int(rng.integers(1, 3)), replace=False).tolist())
    signal = timeline_signal(stg, shape, brightness, rng, spec.max_drift, spec.width)
    mask = np.zeros((N_PANELS, 1, 1), dtype=np.float32)
    mask[keep] = 1.0
    return signal * mask
