"""Pictures people would rather look at than logs. Everything renders off-screen (Agg) to a PNG file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from seti_fastai.cadence import OFF_PANELS, ON_PANELS
from seti_fastai.io import atomic_path


def save_figure(fig: plt.Figure, path: Path | str, dpi: int = 110) -> Path:
    """Save `fig` atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


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

    from seti_fastai.cadence import KaggleData, load_cadence

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


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, suggestions: dict, path: Path | str) -> Path:
    """Loss against learning rate (log scale) with fastai's suggestions marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    for (name, lr), color in zip(
        suggestions.items(), ("tab:red", "tab:green", "tab:orange", "tab:purple"), strict=False
    ):
        if lr:
            ax.axvline(lr, color=color, ls="--", lw=1, label=f"{name}: {lr:.2e}")
    ax.legend(fontsize=8)
    ax.set_title("lr_find")
    return save_figure(fig, path)
