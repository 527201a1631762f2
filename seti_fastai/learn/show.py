"""The cadence tensor types (`TensorCadence`, `TensorLabel`) and fastai's show idioms for them: `dls.show_batch()`,
`learn.show_results()`, `Interpretation.plot_top_losses()`.

A cadence is drawn as the synthetic-set preview draws it (`seti_fastai.evaluate.plots.plot_cadences`), in the
columns its layout gives (`data.layouts`): the ON panels stacked in time beside the OFF panels, viridis on the
standardised scale [-2.5, 4], a white line between panels; a diverging layout (`diff`: ON minus OFF) in a map centred
on 0. One axis per cadence, so fastai's grids and titles work
unchanged: the title holds the label (and for results the prediction, green when right, red when wrong).

The `@dispatch` functions below extend fastai's own `show_batch`, `show_results` and `plot_top_losses` (plum
dispatch, as in `fastai.vision`) for `TensorCadence` inputs and `TensorLabel` targets; importing `seti_fastai.learn`
registers them. No `from __future__ import annotations` here: plum reads the annotations.

Import order matters: plum 2.9 ranks `Any` as comparable both ways with every type, so between fastai's untyped
fallbacks (`show_batch(x, y, samples)`, `plot_top_losses(x, y, *args)`) and a typed method the one registered last
wins. The fastai modules that define the fallbacks are imported first, so the methods here always come after them.
"""

import math

import fastai.data.core  # (fastai's fallback show_batch / show_results, registered before ours)
import fastai.interpret  # noqa: F401  (fastai's fallback plot_top_losses, registered before ours)
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.torch_core import TensorBase, TensorImage, show_title
from fastai.vision.data import get_grid
from plum import dispatch  # fastai's dispatcher (fastai.imports)

from seti_fastai.data.cadence import N_TIMES
from seti_fastai.data.layouts import Columns, ImageRecipe, get_layout

CMAP, VMIN, VMAX = "viridis", -2.5, 4.0  # evaluate/plots.plot_cadences: standardised panels
DIFF_CMAP, DIFF_LIM = "RdBu_r", 4.0  # a diverging layout (ON - OFF): a needle red, an OFF-only signal blue
GAP = 24  # pixels between two columns
CELL_HEIGHT = 4.6  # inches per cadence in a grid


class TensorCadence(TensorImage):
    """A cadence image (C, H, W) that shows itself as the preview does: the ON panels stacked in time beside the OFF
    panels (`show_cadence`). `cadence_panels` and `cadence_layout` ride along as fastai
    metadata (set by `CadenceLoader`); without them the layout is read from the shape. Otherwise a `TensorImage`."""

    def show(self, ctx=None, **kwargs):
        panels, layout = getattr(self, "cadence_panels", None), getattr(self, "cadence_layout", None)
        return show_cadence(self, ctx=ctx, panels=panels, layout=layout, **kwargs)


class TensorLabel(TensorBase):
    """A float label in [0, 1] (mixup blends it, BCE takes it) that shows itself as a title: `label 1`."""

    def show(self, ctx=None, prefix: str = "label", **kwargs):
        return show_title(f"{prefix} {float(self):g}", ctx=ctx, **kwargs)


def cadence_columns(image: np.ndarray, panels: str | None = None, layout: str | None = None) -> Columns:
    """The columns to draw for a (C, H, W) image: (name, its 273-row panels top to bottom), as its layout draws them
    (`Layout.columns`: ON beside OFF; `diff`: one "ON - OFF" column). Without `layout` it is read from the shape (one
    channel of stacked panels: `stack`; 273-row channels: `channels`), without `panels` from the panel count (six:
    `all`, else `on`). A shape no layout makes: one column per channel."""
    c, h, _ = image.shape
    if layout is None:
        layout = "stack" if c == 1 and h % N_TIMES == 0 else "channels" if h == N_TIMES else None
    if layout is not None:
        n = h // N_TIMES if layout == "stack" else c
        recipe = ImageRecipe(panels or ("all" if n == 6 else "on"), layout)
        if recipe.shape[:2] == image.shape[:2]:
            return recipe.columns(image)
    return [(f"ch {k}" if c > 1 else "image", [image[k]]) for k in range(c)]


def _as_array(image) -> np.ndarray:
    """A (C, H, W) float32 array of a tensor or array image (a 2-D one gets one channel)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    return image[None] if image.ndim == 2 else image


def show_cadence(
    image,
    ctx=None,
    title: str | None = None,
    panels: str | None = None,
    layout: str | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    **kwargs,
):
    """Draw one cadence image on `ctx` (a matplotlib axis; a new figure when None) and return the axis.

    Columns (`cadence_columns`) side by side, named on the x axis; white lines between panels. `kwargs` go to
    `imshow`."""
    image = _as_array(image)
    columns = cadence_columns(image, panels, layout)
    if ctx is None:
        _, ctx = plt.subplots(figsize=figsize or (1.3 * len(columns) + 0.6, CELL_HEIGHT))
    width = columns[0][1][0].shape[1]
    height = max(sum(r.shape[0] for r in rows) for _, rows in columns)
    canvas = np.full((height, len(columns) * (width + GAP) - GAP), np.nan, dtype=np.float32)
    diff = layout is not None and get_layout(layout).diverging
    colormap = matplotlib.colormaps[cmap or (DIFF_CMAP if diff else CMAP)].with_extremes(bad="white")
    centres, names = [], []
    for j, (name, rows) in enumerate(columns):
        x0 = j * (width + GAP)
        column = np.concatenate(rows, axis=0)
        canvas[: column.shape[0], x0 : x0 + width] = column
        edges = np.cumsum([r.shape[0] for r in rows])[:-1]
        if len(edges):
            ctx.hlines(edges - 0.5, x0 - 0.5, x0 + width - 0.5, color="white", lw=0.6)
        centres.append(x0 + width / 2 - 0.5)
        names.append(name)
    ctx.imshow(
        canvas,
        aspect="auto",
        cmap=colormap,
        vmin=vmin if vmin is not None else (-DIFF_LIM if diff else VMIN),
        vmax=vmax if vmax is not None else (DIFF_LIM if diff else VMAX),
        interpolation="nearest",
        **kwargs,
    )
    ctx.set_xticks(centres, names, fontsize=8)
    ctx.set_yticks([])
    ctx.tick_params(length=0)
    for spine in ctx.spines.values():
        spine.set_visible(False)
    if title is not None:
        ctx.set_title(title, fontsize=9)
    return ctx


def _grid(n: int, nrows, ncols, figsize, image, title: str | None = None):
    """fastai's `get_grid`, with cells shaped for a tall cadence of this image's columns."""
    if figsize is None:
        if nrows:
            ncols = ncols or math.ceil(n / nrows)
        elif ncols:
            nrows = math.ceil(n / ncols)
        else:
            nrows = int(math.sqrt(n))
            ncols = math.ceil(n / nrows)
        meta = getattr(image, "cadence_panels", None), getattr(image, "cadence_layout", None)
        k = len(cadence_columns(_as_array(image), *meta))
        figsize = (ncols * (1.3 * k + 1.0), nrows * CELL_HEIGHT + (0.4 if title else 0.0))
    return get_grid(n, nrows=nrows, ncols=ncols, figsize=figsize, title=title)


def _value(t) -> float:
    """A label, prediction or probability as one number (the positive class's probability for 2 columns)."""
    return float(torch.as_tensor(t).reshape(-1)[-1])


def _verdict(label: float, pred: float) -> str:
    return "green" if (label >= 0.5) == (pred >= 0.5) else "red"


@dispatch
def show_batch(x: TensorCadence, y, samples, ctxs=None, max_n: int = 9, nrows=None, ncols=None, figsize=None, **kwargs):
    """`dls.show_batch()`: each cadence with its label (or alone, for a test DataLoader) as title."""
    n = min(len(samples), max_n)
    if ctxs is None:
        ctxs = _grid(n, nrows, ncols, figsize, samples[0][0])
    for sample, ax, _ in zip(samples, ctxs, range(n), strict=False):
        sample[0].show(ctx=ax, **kwargs)
        for part in sample[1:]:
            part.show(ctx=ax)
    return ctxs


@dispatch
def show_results(
    x: TensorCadence,
    y: TensorLabel,
    samples,
    outs,
    ctxs=None,
    max_n: int = 9,
    nrows=None,
    ncols=None,
    figsize=None,
    **kwargs,
):
    """`learn.show_results()`: each cadence titled `label 1 / pred 0`, green when right, red when wrong."""
    n = min(len(samples), max_n)
    if ctxs is None:
        ctxs = _grid(n, nrows, ncols, figsize, samples[0][0])
    for (image, label, *_), out, ax, _ in zip(samples, outs, ctxs, range(n), strict=False):
        image.show(ctx=ax, **kwargs)
        truth, pred = _value(label), _value(out[0])
        ax.set_title(f"label {truth:g} / pred {pred:g}", color=_verdict(truth, pred), fontsize=9)
    return ctxs


@dispatch
def plot_top_losses(
    x: TensorCadence, y: TensorLabel, samples, outs, raws, losses, nrows=None, ncols=None, figsize=None, **kwargs
):
    """`Interpretation.plot_top_losses(k)`: each cadence titled with label, predicted class, probability and loss."""
    axs = _grid(len(samples), nrows, ncols, figsize, samples[0][0], title="label / prediction, probability / loss")
    for ax, sample, out, raw, loss in zip(axs, samples, outs, raws, losses, strict=False):
        sample[0].show(ctx=ax, **kwargs)
        truth, pred = _value(sample[1]), _value(out[0])
        ax.set_title(
            f"label {truth:g} / pred {pred:g}\np {_value(raw):.2f} / loss {float(loss):.2f}",
            color=_verdict(truth, pred),
            fontsize=9,
        )
    return axs
