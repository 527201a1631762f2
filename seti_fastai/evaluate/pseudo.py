"""Pseudo-labels: predict the test split with trained runs, keep the confident cadences, train again with them.

`pseudo-label` writes `id,target,prob,round` (hard 0/1 targets, or the probability itself with `soft`); training
with `--pseudo FILE` adds those test cadences to the training split of every fold, never to its validation.
Rounds repeat: runs trained with `--pseudo` can label the test split again (`round` goes up by one).

The reader of the pseudo-label file, `read_pseudo_labels`, is in `seti_fastai.data.tables` (the DataBlock reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from seti_fastai.config import load_run_config
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.predict import PredictionPlan, run_prediction

DEFAULT_POS, DEFAULT_NEG = 0.9, 0.1


@dataclass
class Selection:
    """Which test cadences become pseudo-labels: by probability thresholds, or the top k of each class."""

    pos_threshold: float | None = None
    neg_threshold: float | None = None
    top_k_pos: int | None = None
    top_k_neg: int | None = None
    soft: bool = False

    def validate(self) -> Selection:
        """Raise `ConfigError` for a bad or mixed choice; fill the defaults (0.9 / 0.1, or k = 0); return self."""
        thresholds = self.pos_threshold is not None or self.neg_threshold is not None
        top_k = self.top_k_pos is not None or self.top_k_neg is not None
        if thresholds and top_k:
            raise ConfigError(
                "choose thresholds (--pos-threshold/--neg-threshold) or --top-k-pos/--top-k-neg, not both"
            )
        if top_k:
            self.top_k_pos, self.top_k_neg = self.top_k_pos or 0, self.top_k_neg or 0
            if self.top_k_pos < 0 or self.top_k_neg < 0 or self.top_k_pos + self.top_k_neg == 0:
                raise ConfigError(
                    f"top-k counts must be >= 0 and not both 0; got --top-k-pos {self.top_k_pos} "
                    f"--top-k-neg {self.top_k_neg}"
                )
            return self
        pos = DEFAULT_POS if self.pos_threshold is None else self.pos_threshold
        neg = DEFAULT_NEG if self.neg_threshold is None else self.neg_threshold
        for name, value in (("pos_threshold", pos), ("neg_threshold", neg)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]; got {value}")
        if not neg < pos:
            raise ConfigError(f"neg_threshold {neg} must be below pos_threshold {pos} (a cadence would be both)")
        self.pos_threshold, self.neg_threshold = pos, neg
        return self

    def select(self, predictions: pd.DataFrame, round_: int = 1) -> pd.DataFrame:
        """`id, target, prob, round` for the confident rows of `predictions` (`id, target` = probability), in order.

        Thresholds: positive if prob >= pos_threshold, negative if prob <= neg_threshold. Top k: the k most and the
        k least probable cadences (an error when the two would overlap).
        """
        prob = predictions["target"].to_numpy(float)
        n = len(prob)
        if self.top_k_pos is not None:
            if self.top_k_pos + self.top_k_neg > n:
                raise ConfigError(
                    f"--top-k-pos {self.top_k_pos} + --top-k-neg {self.top_k_neg} exceed the {n} test cadences"
                )
            order = np.argsort(-prob, kind="stable")
            pos = np.zeros(n, dtype=bool)
            neg = np.zeros(n, dtype=bool)
            pos[order[: self.top_k_pos]] = True
            neg[order[n - self.top_k_neg :] if self.top_k_neg else []] = True
        else:
            pos, neg = prob >= self.pos_threshold, prob <= self.neg_threshold
        keep = pos | neg
        if not keep.any():
            what = (
                f"prob >= {self.pos_threshold} or <= {self.neg_threshold}"
                if self.top_k_pos is None
                else "the top-k choice"
            )
            raise ConfigError(
                f"no test cadence is confident enough ({what}; probabilities span {prob.min():.3f}-{prob.max():.3f})"
            )
        target = prob[keep] if self.soft else pos[keep].astype(np.int64)
        return pd.DataFrame(
            {"id": predictions["id"].to_numpy()[keep], "target": target, "prob": prob[keep], "round": round_}
        )


def next_round(run_dirs: list[Path | str]) -> int:
    """1 + the highest `round` of the pseudo-label files the runs trained with (1 for runs trained without)."""
    rounds = [0]
    for run_dir in run_dirs:
        pseudo = load_run_config(run_dir).pseudo
        if pseudo and Path(pseudo).is_file():
            df = pd.read_csv(pseudo, usecols=lambda c: c.strip() == "round")
            rounds.append(int(df.iloc[:, 0].max()) if len(df.columns) and len(df) else 1)
    return max(rounds) + 1


def pseudo_label(plan: PredictionPlan, selection: Selection, **run_options) -> pd.DataFrame:
    """Predict the test split as `plan` says (fold mean, each run calibrated first; `run_options` are
    `run_prediction`'s: bs, workers, device, progress) and keep the confident cadences of a validated `selection`:
    `id, target, prob, round`."""
    predictions = run_prediction(plan, **run_options)
    return selection.select(predictions, next_round([run.run_dir for run in plan.runs]))
