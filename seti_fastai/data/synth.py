"""A synthetic data set in the exact Kaggle layout, made with setigen.

How a cadence is made (see data/README.md for the picture):
1. Backgrounds. A *strip* is a wide (6, 273, 1024) chi-squared noise field from `setigen.Frame.add_noise`, with a
   bandpass ripple, a gain per panel, RFI that shows in all six panels (stationary narrow lines, drifting
   lines) and broadband bursts. Each cadence is a 256-channel band cut from a strip at a random offset; several
   cadences (train, test and old alike) share a strip, so their backgrounds overlap after a shift, as in the real data.
2. Needles (positives). One `setigen` signal on the cadence's whole timeline (six panels plus the slews between
   them), so the path is continuous across panels, kept in the ON panels only (sometimes one or two of them):
   straight drifting lines, squared paths, sine ("S-shaped") paths, random-walk paths; constant or modulated
   brightness; Gaussian or box frequency profile; brightness drawn from `SynthConfig.brightness`.
3. Decoys (some negatives). The same kinds of signal present in all six panels (RFI) or in the OFF panels only.
4. With `rows` fewer than 273 (`--rows 16`: Green Bank's high-resolution product), the cadence is binned in time:
   the same signals integrated longer per row (`inject.bin_rows`).
5. Each panel is standardised to mean 0, std 1 and the cadence saved as float16 (6, rows, 256).

Everything is drawn from generators seeded by (seed, strip) and (seed, cadence), so the output depends on the
seed only, not on the number of worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import (
    MIN_ROWS,
    N_CHANNELS,
    N_PANELS,
    N_TIMES,
    OFF_PANELS,
    ON_PANELS,
    SPLITS,
    standardize_panels,
)
from seti_fastai.data.inject import (
    bin_rows,
    check_shape_weights,
    hz,
    hz_per_s,
    import_setigen,
    setigen_frame,
    timeline_signal,
)
from seti_fastai.errors import ConfigError
from seti_fastai.io import atomic_dir, atomic_write_csv, atomic_write_json

STRIP_CHANNELS = 4 * N_CHANNELS  # a strip holds 4 bands side by side; cut offsets overlap heavily

DIFFICULTY: dict[str, tuple[float, float]] = {
    # needle brightness per pixel, in units of the background noise std, drawn log-uniformly
    "easy": (1.0, 4.0),
    "realistic": (0.25, 2.0),
    "hard": (0.1, 0.8),
}


@dataclass
class SynthConfig:
    """What `write_synthetic` makes. Counts per split; the old (leaky) set only when `old` is true."""

    n_train: int = 400
    n_test: int = 100
    pos_rate: float = 0.1
    seed: int = 0
    old: bool = False
    n_old_train: int | None = None  # default: n_train
    n_old_test: int | None = None  # default: n_test
    difficulty: str = "realistic"
    brightness: tuple[float, float] | None = None  # overrides `difficulty` when given
    shape_weights: dict[str, float] = field(
        default_factory=lambda: {"line": 0.45, "squared": 0.15, "sine": 0.25, "random_walk": 0.15}
    )
    # needle shapes of the test split (default: `shape_weights`); the winners' train/test shift was S-shaped needles
    test_shape_weights: dict[str, float] | None = None
    decoy_rate: float = 0.3  # share of negatives that carry a signal in all panels or OFF panels only
    cadences_per_strip: int = 6  # mean number of cadences cut from one background strip
    rows: int = N_TIMES  # per panel; fewer than 273: the same cadences binned in time (`inject.bin_rows`)

    def validate(self) -> None:
        if self.n_train < 1 or self.n_test < 0:
            raise ConfigError(f"need n_train >= 1 and n_test >= 0, got {self.n_train} and {self.n_test}")
        if not 0.0 < self.pos_rate < 1.0:
            raise ConfigError(f"pos_rate must be in (0, 1), got {self.pos_rate}")
        if self.brightness is None and self.difficulty not in DIFFICULTY:
            raise ConfigError(f"unknown difficulty {self.difficulty!r}; choose one of {', '.join(DIFFICULTY)}")
        if self.brightness is not None and not 0 < self.brightness[0] <= self.brightness[1]:
            raise ConfigError(f"brightness range must satisfy 0 < low <= high, got {self.brightness}")
        for name in ("shape_weights", "test_shape_weights"):
            weights = getattr(self, name)
            if weights is not None:
                check_shape_weights(weights, name)
        if not MIN_ROWS <= self.rows <= N_TIMES:
            raise ConfigError(f"rows must be in {MIN_ROWS}..{N_TIMES} (bins of the 273-row cadence); got {self.rows}")
        if not 0.0 <= self.decoy_rate <= 1.0 or self.cadences_per_strip < 1:
            raise ConfigError("decoy_rate must be in [0, 1] and cadences_per_strip >= 1")

    @property
    def brightness_range(self) -> tuple[float, float]:
        return tuple(self.brightness) if self.brightness is not None else DIFFICULTY[self.difficulty]

    def split_shape_weights(self, split: str) -> dict[str, float]:
        """The needle-shape weights of one split."""
        if split == "test" and self.test_shape_weights is not None:
            return self.test_shape_weights
        return self.shape_weights

    def split_sizes(self) -> dict[str, int]:
        sizes = {"train": self.n_train, "test": self.n_test}
        if self.old:
            sizes["old-train"] = self.n_old_train if self.n_old_train is not None else self.n_train
            sizes["old-test"] = self.n_old_test if self.n_old_test is not None else self.n_test
        return sizes


def _shape_probabilities(weights: dict[str, float]) -> tuple[list[str], np.ndarray]:
    shapes = list(weights)
    p = np.array([weights[s] for s in shapes], dtype=float)
    return shapes, p / p.sum()


# ----------------------------------------------------------------------------------------------------------------
# Planning: which cadence is what, decided up front from one generator


def _hex_ids(rng: np.random.Generator, n: int, length: int, taken: set[str]) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        value = "".join("0123456789abcdef"[d] for d in rng.integers(0, 16, size=length))
        if value not in taken:
            taken.add(value)
            ids.append(value)
    return ids


def plan_cadences(cfg: SynthConfig) -> pd.DataFrame:
    """One row per cadence: split, id, target, kind, needle shape, brightness, ON panels kept, strip, offset."""
    cfg.validate()
    rng = np.random.default_rng([cfg.seed, 0])
    taken: set[str] = set()
    rows: list[dict[str, Any]] = []
    lo, hi = cfg.brightness_range
    for split, n in cfg.split_sizes().items():
        shapes, shape_p = _shape_probabilities(cfg.split_shape_weights(split))
        id_length = 12 if split.startswith("old") else 15
        n_pos = max(1, round(n * cfg.pos_rate)) if n >= 2 else 0
        targets = np.zeros(n, dtype=np.int64)
        targets[rng.choice(n, size=n_pos, replace=False)] = 1
        for cadence_id, target in zip(_hex_ids(rng, n, id_length, taken), targets, strict=True):
            if target:
                kind = "needle"
            else:
                kind = rng.choice(["decoy_all", "decoy_off"]) if rng.random() < cfg.decoy_rate else "none"
            on_panels = list(ON_PANELS)
            if kind == "needle" and rng.random() < 0.3:  # present in one or two ON panels only
                on_panels = sorted(rng.choice(ON_PANELS, size=int(rng.integers(1, 3)), replace=False).tolist())
            rows.append(
                dict(
                    split=split,
                    id=cadence_id,
                    target=int(target),
                    kind=str(kind),
                    shape=str(rng.choice(shapes, p=shape_p)) if kind != "none" else "",
                    brightness=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if kind != "none" else 0.0,
                    on_panels=" ".join(map(str, on_panels)),
                )
            )
    plan = pd.DataFrame(rows)
    n_strips = max(1, round(len(plan) / cfg.cadences_per_strip))
    plan["strip"] = rng.integers(0, n_strips, size=len(plan))
    plan["offset"] = rng.integers(0, STRIP_CHANNELS - N_CHANNELS + 1, size=len(plan))
    plan["index"] = np.arange(len(plan))
    return plan


# ----------------------------------------------------------------------------------------------------------------
# Drawing: backgrounds, signals, cadences


def _background_strip(stg, rng: np.random.Generator) -> np.ndarray:
    """A (6, 273, STRIP_CHANNELS) background in noise-std units: chi2 noise x bandpass x panel gain, plus RFI."""
    frame = setigen_frame(stg, STRIP_CHANNELS, N_PANELS * N_TIMES, rng)
    frame.add_noise(x_mean=1.0, noise_type="chi2")
    noise = (frame.data - 1.0) / frame.noise_std + 10.0  # unit std around a positive level
    strip = noise.reshape(N_PANELS, N_TIMES, STRIP_CHANNELS)
    cols = np.arange(STRIP_CHANNELS)
    bandpass = 1.0 + 0.05 * np.sin(2 * np.pi * cols / rng.uniform(150, 600) + rng.uniform(0, 2 * np.pi))
    bandpass += 0.04 * np.linspace(-1, 1, STRIP_CHANNELS) * rng.uniform(-1, 1)
    gains = rng.uniform(0.8, 1.25, size=(N_PANELS, 1, 1))
    strip = strip * bandpass * gains
    # RFI seen in all six panels: stationary narrow lines, sometimes jittering or gently drifting
    rfi = setigen_frame(stg, STRIP_CHANNELS, N_PANELS * N_TIMES, rng)
    for _ in range(int(rng.integers(0, 6))):
        f0 = rng.uniform(0, STRIP_CHANNELS)
        if rng.random() < 0.6:
            path = stg.constant_path(f_start=hz(f0), drift_rate=0.0)
        else:
            path = stg.simple_rfi_path(
                f_start=hz(f0),
                drift_rate=hz_per_s(rng.uniform(-0.01, 0.01)),
                spread=hz(rng.uniform(0.5, 2.0)),
                spread_type="uniform",
                seed=rng,
            )
        rfi.add_signal(
            path,
            stg.constant_t_profile(level=float(np.exp(rng.uniform(np.log(0.5), np.log(8))))),
            stg.gaussian_f_profile(width=hz(rng.uniform(0.8, 3.0))),
            bounding_f_range=(hz(f0 - 40), hz(f0 + 40)),
        )
    strip = strip + rfi.data.reshape(strip.shape)
    # broadband bursts: a few rows with extra power over a wide band, in any panel
    for _ in range(int(rng.integers(0, 4))):
        panel, row = int(rng.integers(0, N_PANELS)), int(rng.integers(0, N_TIMES - 3))
        a = int(rng.integers(0, STRIP_CHANNELS // 2))
        b = a + int(rng.integers(STRIP_CHANNELS // 8, STRIP_CHANNELS // 2))
        strip[panel, row : row + int(rng.integers(1, 4)), a:b] += rng.uniform(1.0, 4.0)
    return strip.astype(np.float32)


def signal_of(stg, row: pd.Series | dict, seed: int) -> np.ndarray:
    """The (6, 273, 256) needle or decoy of a planned cadence, before panel masking (zeros for kind "none")."""
    if row["kind"] == "none":
        return np.zeros((N_PANELS, N_TIMES, N_CHANNELS), dtype=np.float32)
    rng = np.random.default_rng([seed, 2, int(row["index"])])
    return timeline_signal(stg, row["shape"], float(row["brightness"]), rng)


def signal_panels(row: pd.Series | dict) -> list[int]:
    """The panels a planned cadence's signal is kept in."""
    if row["kind"] == "needle":
        return [int(p) for p in str(row["on_panels"]).split()]
    if row["kind"] == "decoy_off":
        return list(OFF_PANELS)
    if row["kind"] == "decoy_all":
        return list(range(N_PANELS))
    return []


def make_cadence(stg, strip: np.ndarray, row: pd.Series | dict, seed: int, rows: int = N_TIMES) -> np.ndarray:
    """Cut one cadence from `strip` and add its needle or decoy; returns standardised float16 (6, rows, 256), binned
    in time when `rows` is fewer than the strip's 273."""
    band = slice(int(row["offset"]), int(row["offset"]) + N_CHANNELS)
    cadence = strip[:, :, band].copy()
    keep = signal_panels(row)
    if keep:
        mask = np.zeros((N_PANELS, 1, 1), dtype=np.float32)
        mask[keep] = 1.0
        # the signal passes through the same bandpass and gain as the noise it sits on (noise level is 10)
        level = cadence.mean(axis=1, keepdims=True) / 10.0
        cadence += signal_of(stg, row, seed) * mask * level
    return standardize_panels(bin_rows(cadence, rows)).astype(np.float16)


def _write_strip(job: tuple[int, list[dict], int, str, int]) -> int:
    """Worker: make one strip and write the cadences cut from it. Returns how many were written."""
    strip_id, planned, seed, out, rows = job
    stg = import_setigen()
    strip = _background_strip(stg, np.random.default_rng([seed, 1, strip_id]))
    for row in planned:
        path = Path(out) / SPLITS[row["split"]].folder / row["id"][0] / f"{row['id']}.npy"
        np.save(path, make_cadence(stg, strip, row, seed, rows))
    return len(planned)


def iter_write(plan: pd.DataFrame, seed: int, out: Path, workers: int, rows: int = N_TIMES) -> Iterator[int]:
    """Write every planned cadence under `out`, one strip per job; yields the count written by each job."""
    for split in plan["split"].unique():
        for c in "0123456789abcdef":
            (out / SPLITS[split].folder / c).mkdir(parents=True, exist_ok=True)
    jobs = [(int(s), g.to_dict("records"), seed, str(out), rows) for s, g in plan.groupby("strip")]
    if workers <= 1:
        yield from map(_write_strip, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_write_strip, jobs)


def default_hidden_dir(out: Path | str) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}_hidden"


def output_dirs(out: Path | str, hidden: Path | str | None, overwrite: bool) -> tuple[Path, Path]:
    """(out, hidden) resolved; raises if either exists and `overwrite` is false."""
    out = Path(out)
    hidden = Path(hidden) if hidden is not None else default_hidden_dir(out)
    for path in (out, hidden):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")
    return out, hidden


def write_synthetic(
    cfg: SynthConfig,
    out: Path | str,
    hidden: Path | str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, Path]:
    """Write the data set to `out` (Kaggle layout) and its answers to `hidden` (outside the data folder).

    `hidden` gets `test_labels.csv` (the test split's true targets), `meta.csv` (how every cadence was made) and
    `synth_config.json`. Both folders appear only when complete. Returns (out, hidden).
    """
    cfg.validate()
    out, hidden = output_dirs(out, hidden, overwrite)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    plan = plan_cadences(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp_out, atomic_dir(hidden, overwrite=overwrite) as tmp_hidden:
        for n in iter_write(plan, cfg.seed, tmp_out, workers, cfg.rows):
            if progress is not None:
                progress(n)
        for split in plan["split"].unique():
            rows = plan[plan["split"] == split]
            labels = rows[["id", "target"]]
            if split == "test":
                atomic_write_csv(labels.assign(target=0.5), tmp_out / SPLITS[split].labels)
                atomic_write_csv(labels, tmp_hidden / "test_labels.csv")
            else:
                atomic_write_csv(labels, tmp_out / SPLITS[split].labels)
        atomic_write_csv(plan.drop(columns="index"), tmp_hidden / "meta.csv")
        atomic_write_json(tmp_hidden / "synth_config.json", asdict(cfg))
    return out, hidden
