"""Pictures people would rather look at than logs. Everything renders off-screen (Agg) to a PNG file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from seti_fastai.data.cadence import OFF_PANELS, ON_PANELS
from seti_fastai.io import save_figure


def plot_cadences(cadences: Sequence[np.ndarray], titles: Sequence[str], path: Path | str) -> Path:
    """One column pair per cadence: the ON panels (0, 2, 4) stacked in time, then the OFF panels (1, 3, 5)."""
    n = len(cadences)
    fig, axes = plt.subplots(1, 2 * n, figsize=(1.6 * 2 * n, 6.5), squeeze=False)
    for i, (cadence, title) in enumerate(zip(cadences, titles, strict=True)):
        for j, (panels, name) in enumerate(((ON_PANELS, "ON"), (OFF_PANELS, "OFF"))):
            ax = axes[0, 2 * i + j]
            image = np.concatenate([cadence[p].astype(np.float32) for p in panels], axis=0)
            ax.imshow(image, aspect="auto", cmap="viridis", vmin=-2.5, vmax=4.0, interpolation="nearest")
            for k in (1, 2):
                ax.axhline(k * cadence.shape[1] - 0.5, color="white", lw=0.6)
            ax.set_title(f"{title}\n{name}" if j == 0 else name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("ON panels (target star) beside OFF panels; a needle shows in ON only", fontsize=9)
    return save_figure(fig, path)


def preview_synthetic(data: Path | str, hidden: Path | str, path: Path | str, n: int = 4) -> Path:
    """Plot the first `n` positives and `n` negatives (decoys first) of a synthetic train split."""
    import pandas as pd

    from seti_fastai.data.cadence import KaggleData, load_cadence

    meta = pd.read_csv(Path(hidden) / "meta.csv", dtype={"id": str, "on_panels": str})
    train = meta[meta["split"] == "train"]
    negatives = train[train["target"] == 0].sort_values("kind", key=lambda k: k == "none", kind="stable")
    rows = pd.concat([train[train["target"] == 1].head(n), negatives.head(n)])
    kaggle = KaggleData(data)
    cadences = [load_cadence(kaggle.cadence_path("train", i)) for i in rows["id"]]
    titles = [
        f"{r.kind} {r.shape}\nb={r.brightness:.2f}" if r.kind != "none" else "plain negative" for r in rows.itertuples()
    ]
    return plot_cadences(cadences, titles, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path | str) -> Path:
    """ROC curves, one per name: (0/1 labels, scores)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=2 if name == "out-of-fold" else 1, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("ROC")
    return save_figure(fig, path)


def plot_reliability(y: np.ndarray, probabilities: dict[str, np.ndarray], path: Path | str, bins: int = 10) -> Path:
    """Observed share of positives against predicted probability, in equal-width bins."""
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for name, p in probabilities.items():
        index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        filled = [b for b in range(bins) if (index == b).any()]
        ax.plot([p[index == b].mean() for b in filled], [y[index == b].mean() for b in filled], "o-", label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share of positives")
    ax.legend(fontsize=8)
    ax.set_title("reliability (out-of-fold)")
    return save_figure(fig, path)


def plot_histories(histories: dict, path: Path | str) -> Path:
    """Per run: train/valid loss and validation AUC by epoch (left), learning rate (right)."""
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        line = ax.plot(h["epoch"], h["train_loss"], label=f"{name} train loss")[0]
        ax.plot(h["epoch"], h["valid_loss"], ls="--", color=line.get_color(), label=f"{name} valid loss")
        ax.plot(h["epoch"], h["roc_auc"], ls=":", color=line.get_color(), label=f"{name} valid AUC")
        ax_lr.plot(h["epoch"], h["lr"], color=line.get_color(), label=name)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    ax.set_title("loss and AUC")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate at the end of each epoch")
    ax_lr.legend(fontsize=7)
    return save_figure(fig, path)
