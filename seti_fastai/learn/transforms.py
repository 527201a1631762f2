"""fastai Transforms: loading a cadence as an image (with its shared background removed), needle injection, the
albumentations recipe, SpecAugment.

Image orientation everywhere: height = time (panels stacked), width = frequency. The seed's "vflip" flipped the
frequency axis of images drawn with frequency vertical; here that is `A.HorizontalFlip`. A time flip is not
used for training: with `panels=all` it would move ON panels into OFF slots and change the label's meaning.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.data.transforms import CategoryMap, DisplayedTransform, ItemTransform
from fastai.torch_core import TensorImage

from seti_fastai.data.background import subtract_background
from seti_fastai.data.cadence import Layout, Panels, cadence_to_image, used_panels
from seti_fastai.data.inject import NeedleSpec, draw_needle, import_setigen
from seti_fastai.data.pack import PackedSources, read_cadence
from seti_fastai.learn.show import TensorCadence, TensorLabel

Partners = dict[str, list[tuple[str, int]]]  # cadence id -> [(partner file, shift), ...], best first


class CadenceLoader(DisplayedTransform):
    """Path of a `.npy` cadence -> float32 `TensorImage` (C, H, W), validated on the way.

    Reads only the panels the image uses (`used_panels`: all six for `layout="diff"` and for a cadence whose
    background is subtracted), from the split's packed cache when `packed` holds one (`seti_fastai.data.pack`), else
    from the file through a memory map. With `partners` (from `matches.csv`), the background shared with overlapping
    cadences is subtracted first (`seti_fastai.data.background.subtract_background`); partners are read the same way
    (their split's cache, or their file); a cadence without a partner passes unchanged.
    """

    def __init__(
        self,
        panels: Panels = "on",
        layout: Layout = "stack",
        standardize: bool = False,
        partners: Partners | None = None,
        packed: PackedSources | None = None,
    ):
        super().__init__()
        self.panels, self.layout, self.standardize, self.partners = panels, layout, standardize, partners
        self.packed = packed

    def encodes(self, path) -> TensorCadence:
        found = self.partners.get(Path(path).stem, []) if self.partners else []
        if found:
            cadence = read_cadence(path, None, self.packed)
            cadence = subtract_background(cadence, [(read_cadence(p, None, self.packed), s) for p, s in found])
        else:
            cadence = read_cadence(path, used_panels(self.panels, self.layout), self.packed)
        image = cadence_to_image(cadence, self.panels, self.layout, self.standardize)
        return TensorCadence(torch.from_numpy(image), cadence_panels=self.panels, cadence_layout=self.layout)


class InjectNeedle(ItemTransform):
    """With probability `p`, add a setigen needle to a negative training cadence's ON panels and label it 1.

    Runs on the (image, target) pair after loading, so it works for every layout: the needle is drawn as a cadence
    (6, 273, 256), zero in the OFF panels, and turned into an image the same way (every layout is linear in it; the
    per-channel median of `diff` is that of the noise, which a thin needle hardly moves). Brightness is in units of
    the panel's noise std, so it stays right after background subtraction, which leaves a needle as it was. Draws
    come from a generator reseeded from `torch.initial_seed()`, like `AlbumentationsTransform`: reproducible from
    the run's seed, different in every worker and epoch.
    """

    split_idx = 0  # training set only
    order = 1  # after loading, before the augmentations

    def __init__(self, p: float, spec: NeedleSpec, panels: Panels = "on", layout: Layout = "stack"):
        super().__init__()
        self.p, self.spec, self.panels, self.layout = p, spec, panels, layout
        self._seeded_with: int | None = None
        self._rng = np.random.default_rng(0)
        self._stg = None

    def _generator(self) -> np.random.Generator:
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded_with:
            self._rng, self._seeded_with = np.random.default_rng([seed, 0x5E71]), seed
        return self._rng

    def encodes(self, sample):  # no annotation: fastcore would dispatch on it and skip tuples
        x, y = sample
        rng = self._generator()
        if float(y) != 0.0 or rng.random() >= self.p:
            return sample
        if self._stg is None:
            self._stg = import_setigen()
        needle = cadence_to_image(draw_needle(self._stg, self.spec, rng), self.panels, self.layout)
        return x + torch.from_numpy(needle), torch.ones_like(y)  # keeps the image's type and metadata


class FloatTarget(DisplayedTransform):
    """0/1 label -> float32 scalar `TensorLabel`, so mixup can blend it and BCE can use it. `vocab` names the two
    classes (the loss decodes a prediction to 0 or 1) for fastai's `ClassificationInterpretation`."""

    vocab = CategoryMap(["0", "1"], sort=False)

    def encodes(self, target) -> TensorLabel:
        return TensorLabel(torch.tensor(float(target), dtype=torch.float32))


to_float_target = FloatTarget()  # the target block's type transform


class AlbumentationsTransform(DisplayedTransform):
    """Apply an albumentations pipeline to a (C, H, W) float `TensorImage`, on the training split only.

    - Reseeded whenever `torch.initial_seed()` changes: fastai seeds every DataLoader worker (and `EpochSeed`
      the main process) through torch, while albumentations 2.0.8 keeps one generator per pipeline, copied
      unchanged into each worker; without this every worker would repeat the same augmentations.
    - Works in [0, 1] space: albumentations' blur and noise kernels clip float images to [0, 1], which would
      destroy standardised spectrograms; the image is scaled there and back (a linear map, so nothing is lost).
    - `enabled` switches it off (the `AugmentationOff` callback does so for the last epochs).
    """

    split_idx = 0  # training set only

    def __init__(self, pipeline: A.BasicTransform, rescale: bool = True, order: int = 5):
        super().__init__(order=order)
        self.pipeline, self.rescale, self.enabled = pipeline, rescale, True
        self._seeded_with: int | None = None

    def _reseed(self) -> None:
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded_with:
            self.pipeline.set_random_seed(seed)
            self._seeded_with = seed

    def encodes(self, x: TensorImage) -> TensorImage:
        if not self.enabled:
            return x
        self._reseed()
        image = np.ascontiguousarray(x.numpy().transpose(1, 2, 0), dtype=np.float32)  # HWC
        lo, hi = float(image.min()), float(image.max())
        scale = hi - lo if hi > lo else 1.0
        if self.rescale:
            image = (image - lo) / scale
        out = self.pipeline(image=image)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        if self.rescale:
            out = out * scale + lo
        result = type(x)(torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)))
        result.__dict__.update(x.__dict__)  # a TensorCadence keeps its panels and layout
        return result


def recipe_pipeline(
    freq_flip_p: float = 0.5, affine_p: float = 0.5, motion_blur_p: float = 0.5, time_shift: bool = True
) -> A.Compose:
    """The seed's augmentations: frequency flip, shift/scale (no rotation), motion blur; each with its own p.

    `time_shift=False` keeps the shift/scale and the motion blur off the time axis (height): for an image whose rows
    mix ON and OFF panels, a time shift would slide OFF rows into ON slots (and a blur smear them across a panel
    boundary) and change what the label means.
    """
    time_range = (-0.05, 0.05) if time_shift else (0.0, 0.0)
    time_scale = (0.9, 1.1) if time_shift else (1.0, 1.0)
    return A.Compose(
        [
            A.HorizontalFlip(p=freq_flip_p),  # width is frequency
            A.Affine(
                translate_percent={"x": (-0.1, 0.1), "y": time_range},
                scale={"x": (0.9, 1.1), "y": time_scale},
                rotate=0,
                border_mode=cv2.BORDER_REFLECT_101,
                p=affine_p,
            ),
            A.MotionBlur(  # time-locked: a horizontal kernel, centred (a shifted one would move rows in time)
                blur_limit=(3, 7),
                angle_range=(0, 360) if time_shift else (0, 0),
                allow_shifted=time_shift,
                p=motion_blur_p,
            ),
        ]
    )


def spec_augment_pipeline(height: int, width: int, alpha: float = 0.1, p: float = 0.5) -> A.Compose:
    """SpecAugment as in the seed: one time band and one frequency band, each up to `alpha` of the axis, set to 0.

    albumentations' `XYMasking` does exactly this; counts are given as (1, 1) because a bare int means a range
    starting at 0 (STACK_NOTES.md, pitfall 4).
    """
    return A.Compose(
        [
            A.XYMasking(
                num_masks_x=(1, 1),
                num_masks_y=(1, 1),
                mask_x_length=(0, max(1, int(alpha * width))),
                mask_y_length=(0, max(1, int(alpha * height))),
                fill=0,
                p=p,
            )
        ]
    )


class SpecAugment(AlbumentationsTransform):
    """SpecAugment on the training split, after the recipe. Its own class because fastai's DataBlock keeps only
    one item transform per class: a second `AlbumentationsTransform` would be dropped silently."""

    def __init__(self, height: int, width: int, alpha: float = 0.1, p: float = 0.5):
        super().__init__(spec_augment_pipeline(height, width, alpha, p), rescale=False, order=6)


def mixes_on_and_off(panels: Panels, layout: Layout) -> bool:
    """Whether one image column holds both ON and OFF panels (all six panels stacked along time)."""
    return layout == "stack" and panels == "all"


def train_transforms(cfg, image_hw: tuple[int, int]) -> list:
    """The training augmentations of a config: the recipe pipeline, then SpecAugment (also fastai TTA's views).

    The recipe shifts and scales time only where that keeps ON rows ON (`mixes_on_and_off`). Needle injection is
    not an augmentation (it changes labels): the DataBlock adds it (`training_item_transforms`)."""
    tfms: list = []
    if max(cfg.freq_flip_p, cfg.affine_p, cfg.motion_blur_p) > 0:
        time_shift = not mixes_on_and_off(cfg.panels, cfg.layout)
        pipeline = recipe_pipeline(cfg.freq_flip_p, cfg.affine_p, cfg.motion_blur_p, time_shift)
        tfms.append(AlbumentationsTransform(pipeline, order=5))
    if cfg.spec_augment_p > 0:
        tfms.append(SpecAugment(*image_hw, cfg.spec_alpha, cfg.spec_augment_p))
    return tfms


def training_item_transforms(cfg, image_hw: tuple[int, int]) -> list:
    """Everything the training split adds to a loaded (image, label) pair: needle injection, then the augmentations."""
    inject = [InjectNeedle(cfg.inject, cfg.needle_spec(), cfg.panels, cfg.layout)] if cfg.inject > 0 else []
    return inject + train_transforms(cfg, image_hw)
