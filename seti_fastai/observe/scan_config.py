"""A scan's settings (`ScanConfig`): the drift range, the windows and chunks, which windows become events. No torch,
so the command line reads its defaults from here quickly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from seti_fastai.errors import ConfigError

# reference scores (noise units) that give about one false event per MHz on bench/scan.py's synthetic cadence
REFERENCE_THRESHOLDS = {"min": 4.0, "sum": 10.0}
PROBABILITY_THRESHOLD = 0.5


def ranking_key(with_models: bool) -> str:
    """The event column events are ranked and thresholded by: the models' probability, else the reference score."""
    return "probability" if with_models else "reference"


@dataclass(frozen=True)
class ScanConfig:
    """How a band is searched and which windows become events."""

    max_drift: float = field(  # about a 256-channel window across the half hour of a Green Bank cadence
        default=0.4, metadata={"help": "largest drift searched, Hz/s (both signs)"}
    )
    window: int = field(default=256, metadata={"help": "channels per window (the models' image width)"})
    step: int = field(default=128, metadata={"help": "channels between the starts of two windows"})
    chunk: int = field(default=65536, metadata={"help": "channels read at once (memory is bounded by it)"})
    contrast: str = field(
        default="min",
        metadata={"help": "a path's score: min (weakest ON file minus strongest OFF) or sum (ON minus OFF sums)"},
    )
    veto: int = field(
        default=3, metadata={"help": "min contrast: channels either side of a path where OFF files veto it"}
    )
    pool: int = field(default=1, metadata={"help": "max-pool half-width (channels) of each file's path sum"})
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "events reach this model probability (with runs; default 0.5) or reference score (4; sum: 10)"
        },
    )
    top_k: int | None = field(default=None, metadata={"help": "keep the best K events of each cadence"})

    def validate(self) -> None:
        if not (math.isfinite(self.max_drift) and self.max_drift >= 0):
            raise ConfigError(f"max drift must be a finite number of Hz/s >= 0, got {self.max_drift}")
        if not 1 <= self.step <= self.window:
            raise ConfigError(f"window step must be 1..window ({self.window}), got {self.step}")
        if self.chunk < self.window:
            raise ConfigError(f"chunk ({self.chunk} channels) must hold at least one window ({self.window})")
        if self.contrast not in ("min", "sum"):
            raise ConfigError(f"contrast must be min or sum; got {self.contrast!r}")
        if self.veto < 0 or self.pool < 0 or (self.top_k is not None and self.top_k < 1):
            raise ConfigError(f"veto and pool must be >= 0 and top-k >= 1, got {self.veto}, {self.pool}, {self.top_k}")

    def threshold_for(self, with_models: bool) -> float:
        if self.threshold is not None:
            return self.threshold
        return PROBABILITY_THRESHOLD if with_models else REFERENCE_THRESHOLDS[self.contrast]
