"""Image layouts and the image recipe: how a cadence (6, rows, 256) becomes the image (C, H, W) a model sees.

A layout is one object: the panels it reads, the shape it makes, whether one image column mixes ON and OFF rows
(then no augmentation may move rows in time), how it builds the image and how the image is drawn (the columns and
colour scale of `learn.show`). `LAYOUTS` is the registry; a new layout is one subclass here, registered with
`@register`. `ImageRecipe` is a run's resolved choice (panels, layout, standardisation, background, resize), built
once from the config (`ImageRecipe.from_config`) and passed down to the loader, the augmentations and the model.

Numpy only: nothing here knows about fastai or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from seti_fastai.data.cadence import (
    N_CHANNELS,
    N_PANELS,
    N_TIMES,
    OFF_PANELS,
    ON_PANELS,
    channel_medians,
    standardize_panels,
)
from seti_fastai.data.drift_map import drift_map
from seti_fastai.errors import ConfigError

PANELS = {"on": ON_PANELS, "all": tuple(range(N_PANELS))}  # --panels: which panels a layout stacks
BACKGROUNDS = ("none", "subtract")
RESIZE_MODES = ("bilinear", "antialias", "area")

Columns = list[tuple[str, list[np.ndarray]]]  # what `show` draws: (column name, its panels top to bottom)


class Layout:
    """One way to turn the panels of a cadence into an image. A subclass sets `name` and `help` and implements
    `shape` and `build`; the rest has defaults that fit a layout which keeps each panel as it is."""

    name: ClassVar[str]
    help: ClassVar[str]
    diverging: ClassVar[bool] = False  # drawn on a scale centred on 0 (a difference of panels)
    linear: ClassVar[bool] = True  # the image of cadence + needle is image + needle's image (injection relies on it)

    def source_panels(self, panels: tuple[int, ...]) -> tuple[int, ...]:
        """The cadence panels the image is built from, for the run's `panels`."""
        return panels

    def shape(self, panels: tuple[int, ...], rows: int = N_TIMES) -> tuple[int, int, int]:
        """(C, H, W) of the image of `panels` of `rows` rows each."""
        raise NotImplementedError

    def mixes_on_and_off(self, panels: tuple[int, ...]) -> bool:
        """Whether one image column holds both ON and OFF rows (a time shift would then change the label)."""
        return False

    def build(self, cadence: np.ndarray) -> np.ndarray:
        """(len(source_panels), T, F) -> the float32 image (C, H, W), C-contiguous."""
        raise NotImplementedError

    def columns(self, image: np.ndarray, panels: tuple[int, ...], rows: int = N_TIMES) -> Columns:
        """The columns `show` draws: the ON panels stacked in time beside the OFF panels."""
        cut = self.panel_rows(image, rows)
        on = [r for i, r in zip(panels, cut, strict=True) if i in ON_PANELS]
        off = [r for i, r in zip(panels, cut, strict=True) if i in OFF_PANELS]
        return [(name, group) for name, group in (("ON", on), ("OFF", off)) if group]

    def panel_rows(self, image: np.ndarray, rows: int = N_TIMES) -> list[np.ndarray]:
        """The image cut back into its (rows, F) panels, in the order they were stacked."""
        return [image[0, i * rows : (i + 1) * rows] for i in range(image.shape[1] // rows)]


LAYOUTS: dict[str, Layout] = {}


def register(cls: type[Layout]) -> type[Layout]:
    """Class decorator: add a layout to `LAYOUTS` under its `name` (the `--layout` value)."""
    LAYOUTS[cls.name] = cls()
    return cls


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}; got {name!r}")
    return LAYOUTS[name]


@register
class Stack(Layout):
    name = "stack"
    help = "panels one under the other in one channel"

    def shape(self, panels: tuple[int, ...], rows: int = N_TIMES) -> tuple[int, int, int]:
        return (1, len(panels) * rows, N_CHANNELS)

    def mixes_on_and_off(self, panels: tuple[int, ...]) -> bool:
        return any(i in ON_PANELS for i in panels) and any(i in OFF_PANELS for i in panels)

    def build(self, cadence: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(cadence.reshape(1, -1, cadence.shape[-1]))


@register
class Channels(Layout):
    name = "channels"
    help = "one panel per channel"

    def shape(self, panels: tuple[int, ...], rows: int = N_TIMES) -> tuple[int, int, int]:
        return (len(panels), rows, N_CHANNELS)

    def build(self, cadence: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(cadence)

    def panel_rows(self, image: np.ndarray, rows: int = N_TIMES) -> list[np.ndarray]:
        return list(image)


def on_minus_off(cadence: np.ndarray) -> np.ndarray:
    """(6, T, F) -> (3, T, F): each ON panel minus the mean of its neighbouring OFF panels (ABACAD: 0 - 1,
    2 - (1 + 3) / 2, 4 - (3 + 5) / 2), after removing each panel's per-channel median over time.

    The median removes the bandpass and stationary RFI; the OFF subtraction removes what ON and OFF share, so a
    needle (ON only) stays positive and an OFF-only decoy turns negative.
    """
    x = cadence - channel_medians(cadence)
    return np.stack([x[0] - x[1], x[2] - (x[1] + x[3]) / 2, x[4] - (x[3] + x[5]) / 2]).astype(np.float32)


@register
class Diff(Layout):
    name = "diff"
    help = (
        "each ON panel minus its neighbouring OFF panels (per-channel median removed), stacked (reads all six "
        "panels, ignores --panels)"
    )
    diverging = True

    def source_panels(self, panels: tuple[int, ...]) -> tuple[int, ...]:
        return PANELS["all"]

    def shape(self, panels: tuple[int, ...], rows: int = N_TIMES) -> tuple[int, int, int]:
        return (1, len(ON_PANELS) * rows, N_CHANNELS)

    def build(self, cadence: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(on_minus_off(cadence).reshape(1, -1, cadence.shape[-1]))

    def columns(self, image: np.ndarray, panels: tuple[int, ...], rows: int = N_TIMES) -> Columns:
        return [("ON - OFF", self.panel_rows(image, rows))]


def fit_rows(dmap: np.ndarray, height: int) -> np.ndarray:
    """(D, F) -> (height, F): each drift row repeated to fill the height, or, where there are more drifts than rows
    (16-row panels), each row the largest of the neighbouring drifts it holds (no peak is lost)."""
    n = len(dmap)
    if n <= height:
        return dmap[np.arange(height) * n // height]
    starts = np.flatnonzero(np.diff(np.arange(n) * height // n, prepend=-1))
    return np.maximum.reduceat(dmap, starts, axis=0)


@register
class Dedoppler(Layout):
    name = "dedoppler"
    help = (
        "channel 0 the ON panels stacked; channel 1 the de-Doppler map of ON minus OFF (drift x channel, each "
        "channel noise-whitened, drift rows fitted to the stack's height), the reference's search kept whole "
        "(reads all six panels, ignores --panels; no injection)"
    )
    linear = False

    def source_panels(self, panels: tuple[int, ...]) -> tuple[int, ...]:
        return PANELS["all"]

    def shape(self, panels: tuple[int, ...], rows: int = N_TIMES) -> tuple[int, int, int]:
        return (2, len(ON_PANELS) * rows, N_CHANNELS)

    def mixes_on_and_off(self, panels: tuple[int, ...]) -> bool:
        return True  # a time shift of the image would move the map's drift rows, not a drift

    def build(self, cadence: np.ndarray) -> np.ndarray:
        on = cadence[list(ON_PANELS)].reshape(-1, cadence.shape[-1])
        return np.ascontiguousarray(np.stack([on, fit_rows(drift_map(cadence), len(on))]), dtype=np.float32)

    def columns(self, image: np.ndarray, panels: tuple[int, ...], rows: int = N_TIMES) -> Columns:
        return [("ON", self.panel_rows(image, rows)), ("de-Doppler (drift x channel)", [image[1]])]


def _choose(name: str, value: str, options) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")


@dataclass(frozen=True)
class ImageRecipe:
    """What a run's model sees, resolved once: which panels, which layout, re-standardised or not, the background
    removed or not, and how the model resizes the image. Everything that turns a cadence into an image reads it."""

    panels: str = "on"
    layout: str = "stack"
    standardize: bool = False
    background: str = "none"
    resize_mode: str = "bilinear"
    rows: int = N_TIMES  # per panel: a property of the data (`TrainConfig.rows`, resolved from it)

    def __post_init__(self) -> None:
        _choose("panels", self.panels, PANELS)
        _choose("layout", self.layout, LAYOUTS)
        _choose("background", self.background, BACKGROUNDS)
        _choose("resize_mode", self.resize_mode, RESIZE_MODES)

    @classmethod
    def from_config(cls, cfg, background: str | None = None) -> ImageRecipe:
        """The recipe of a `TrainConfig` (or any object with these fields) whose background is resolved (not auto),
        or with `background` instead of the config's."""
        background = background or cfg.background
        if background == "auto":
            raise ConfigError(
                "background 'auto' is resolved before the image recipe is built: pass the config through "
                "seti_fastai.learn.datablock.resolve_background first"
            )
        rows = getattr(cfg, "rows", None) or N_TIMES  # None: a run saved before rows were recorded (Kaggle's)
        return cls(cfg.panels, cfg.layout, cfg.standardize, background, cfg.resize_mode, rows)

    @property
    def layout_of(self) -> Layout:
        return LAYOUTS[self.layout]

    @property
    def panel_indices(self) -> tuple[int, ...]:
        """The panels `--panels` picks (the layout may read more: `source_panels`)."""
        return PANELS[self.panels]

    @property
    def source_panels(self) -> tuple[int, ...]:
        """The panels the image is built from."""
        return self.layout_of.source_panels(self.panel_indices)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the image."""
        return self.layout_of.shape(self.panel_indices, self.rows)

    @property
    def in_chans(self) -> int:
        return self.shape[0]

    @property
    def mixes_on_and_off(self) -> bool:
        """Whether one image column holds both ON and OFF rows (augmentations then keep rows in place in time)."""
        return self.layout_of.mixes_on_and_off(self.source_panels)

    @property
    def image_key(self) -> tuple[str, str, bool, int]:
        """What makes two recipes give the same image from the same cadence (background aside)."""
        return (self.panels, self.layout, self.standardize, self.rows)

    def to_image(self, cadence: np.ndarray, standardize: bool | None = None) -> np.ndarray:
        """A (6, rows, 256) cadence, or just its `source_panels` in order, -> float32 (C, H, W).
        `standardize` overrides the recipe's (a needle drawn for injection is added as it is)."""
        source = self.source_panels
        if len(cadence) == N_PANELS and len(source) != N_PANELS:
            cadence = cadence[list(source)]
        if len(cadence) != len(source):
            raise ValueError(
                f"layout {self.layout!r} with panels={self.panels!r} needs 6 panels or its own {len(source)}; "
                f"got {len(cadence)}"
            )
        cadence = cadence.astype(np.float32, copy=False)
        if self.standardize if standardize is None else standardize:
            cadence = standardize_panels(cadence)
        return self.layout_of.build(cadence)

    def columns(self, image: np.ndarray) -> Columns:
        """What `show` draws for an image of this recipe."""
        return self.layout_of.columns(image, self.source_panels, self.rows)
