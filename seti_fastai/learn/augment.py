"""The training augmentations: one recipe, one small class per augmentation, and the two ways to apply them.

- `AugRecipe`: every probability and range, frozen, built once from the config and the run's `ImageRecipe`.
- One class per augmentation (`FreqFlip`, `ShiftScale`, `MotionBlur`, `SpecAugment`), each with its albumentations
  form (run on items in the DataLoader workers) and its torch form (run on batches on the device, `--aug-device
  gpu`), both drawn from the recipe's ranges: nothing is copied by hand between the two paths.
- `AlbumentationsTransform` (item transform) and `BatchAugment` (batch transform) apply the recipe's augmentations
  in `AUGMENTATIONS` order; both are `Switchable`, which is how `AugmentationOff` finds and stops them.

Image orientation everywhere: height = time (panels stacked), width = frequency. The seed's "vflip" flipped the
frequency axis of images drawn with frequency vertical; here that is a flip of the width. No augmentation flips time:
with `panels=all` that would move ON panels into OFF slots and change the label's meaning; for the same reason, an
augmentation that would move rows in time (shift/scale, motion blur) keeps to the frequency axis on a layout whose
columns mix ON and OFF rows (`AugRecipe.time_shift` False): that is how each one knows it preserves the label.

A new augmentation is a subclass here, registered with `@augmentation` (its place in the list is its place in the
pipeline), its probability a field of `AugRecipe` and a flag of the same name in `config.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImage

from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.learn import batch_augment as kernels
from seti_fastai.learn.transforms import InjectNeedle


class Switchable:
    """A transform or callback that `AugmentationOff` switches off for the last epochs by setting `enabled`."""

    enabled: bool = True


@dataclass(frozen=True)
class AugRecipe:
    """The probabilities (0: off) and ranges of the training augmentations, and whether they may move rows in time.

    Probabilities come from the config (`from_config`); the ranges are the seed's and live here only."""

    freq_flip_p: float = 0.0
    affine_p: float = 0.0
    motion_blur_p: float = 0.0
    spec_augment_p: float = 0.0
    shift: tuple[float, float] = (0.1, 0.05)  # largest shift, as a share of the width (frequency), height (time)
    scale: tuple[float, float] = (0.9, 1.1)  # scale range of each axis
    blur_sizes: tuple[int, int] = (3, 7)  # odd motion-blur kernel sizes
    spec_alpha: float = 0.1  # largest SpecAugment band, as a share of the axis
    time_shift: bool = True  # False where one image column mixes ON and OFF rows

    @classmethod
    def from_config(cls, cfg, image: ImageRecipe) -> AugRecipe:
        """The recipe of a `TrainConfig`: every field the config has, and `time_shift` from the image layout."""
        given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(**given, time_shift=not image.mixes_on_and_off)

    def steps(self) -> list[Augmentation]:
        """Every registered augmentation, in pipeline order, bound to this recipe (those with p 0 included)."""
        return [cls(self) for cls in AUGMENTATIONS]

    @property
    def active(self) -> bool:
        return any(step.p > 0 for step in self.steps())


class Augmentation:
    """One training augmentation of an `AugRecipe`: its probability `p`, its albumentations form and its torch form.

    `rescale`: the albumentations form runs on the image scaled to [0, 1] (albumentations' kernels clip float images
    there); consecutive augmentations that agree on it share one albumentations pipeline. One that would move rows
    in time reads `recipe.time_shift` and keeps to the frequency axis when that is False."""

    p_field: ClassVar[str]  # the AugRecipe (and config) field of its probability
    rescale: ClassVar[bool] = True

    def __init__(self, recipe: AugRecipe):
        self.recipe = recipe

    @property
    def p(self) -> float:
        return float(getattr(self.recipe, self.p_field))

    def albumentation(self, height: int, width: int) -> A.BasicTransform:
        raise NotImplementedError

    def on_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The augmentation of a share `p` of a float batch (B, C, H, W), drawn from torch's generator."""
        raise NotImplementedError


AUGMENTATIONS: list[type[Augmentation]] = []


def augmentation(cls: type[Augmentation]) -> type[Augmentation]:
    """Class decorator: append an augmentation to the pipeline (`AUGMENTATIONS`)."""
    AUGMENTATIONS.append(cls)
    return cls


@augmentation
class FreqFlip(Augmentation):
    """Flip the frequency axis (width)."""

    p_field = "freq_flip_p"

    def albumentation(self, height: int, width: int) -> A.BasicTransform:
        return A.HorizontalFlip(p=self.p)  # width is frequency

    def on_batch(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.freq_flip(x, self.p)


@augmentation
class ShiftScale(Augmentation):
    """Shift and scale each axis (no rotation), border reflected; on the time axis only where rows stay ON or OFF."""

    p_field = "affine_p"

    def albumentation(self, height: int, width: int) -> A.BasicTransform:
        (sx, sy), scale, time = self.recipe.shift, self.recipe.scale, self.recipe.time_shift
        return A.Affine(
            translate_percent={"x": (-sx, sx), "y": (-sy, sy) if time else (0.0, 0.0)},
            scale={"x": scale, "y": scale if time else (1.0, 1.0)},
            rotate=0,
            border_mode=cv2.BORDER_REFLECT_101,
            p=self.p,
        )

    def on_batch(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.shift_scale(x, self.p, self.recipe.time_shift, self.recipe.shift, self.recipe.scale)


@augmentation
class MotionBlur(Augmentation):
    """Motion blur; a centred horizontal kernel where rows must stay in place (a shifted one moves rows in time)."""

    p_field = "motion_blur_p"

    def albumentation(self, height: int, width: int) -> A.BasicTransform:
        time = self.recipe.time_shift
        return A.MotionBlur(
            blur_limit=self.recipe.blur_sizes,
            angle_range=(0, 360) if time else (0, 0),
            allow_shifted=time,
            p=self.p,
        )

    def on_batch(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.motion_blur(x, self.p, self.recipe.time_shift, self.recipe.blur_sizes)


@augmentation
class SpecAugment(Augmentation):
    """SpecAugment as in the seed: one time band and one frequency band, each up to `spec_alpha` of the axis, set to 0
    (in the data's units, not rescaled). albumentations' `XYMasking` does exactly this; counts are given as (1, 1)
    because a bare int means a range starting at 0 (STACK_NOTES.md, pitfall 4)."""

    p_field = "spec_augment_p"
    rescale = False

    def albumentation(self, height: int, width: int) -> A.BasicTransform:
        alpha = self.recipe.spec_alpha
        return A.XYMasking(
            num_masks_x=(1, 1),
            num_masks_y=(1, 1),
            mask_x_length=(0, max(1, int(alpha * width))),
            mask_y_length=(0, max(1, int(alpha * height))),
            fill=0,
            p=self.p,
        )

    def on_batch(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.spec_augment(x, self.p, self.recipe.spec_alpha)


def albumentations_pipelines(recipe: AugRecipe, height: int, width: int) -> list[tuple[A.Compose, bool]]:
    """(pipeline, rescale) per run of consecutive augmentations that agree on `rescale`; a run whose probabilities
    are all 0 is left out (a member with p 0 stays in: it still draws, so the random sequence stays the same)."""
    runs: list[list[Augmentation]] = []
    for step in recipe.steps():
        if runs and runs[-1][0].rescale == step.rescale:
            runs[-1].append(step)
        else:
            runs.append([step])
    return [
        (A.Compose([step.albumentation(height, width) for step in run]), run[0].rescale)
        for run in runs
        if max(step.p for step in run) > 0
    ]


class AlbumentationsTransform(DisplayedTransform, Switchable):
    """The recipe's augmentations on a (C, H, W) float `TensorImage` through albumentations, training split only.

    - Reseeded whenever `torch.initial_seed()` changes: fastai seeds every DataLoader worker (and `EpochSeed`
      the main process) through torch, while albumentations 2.0.8 keeps one generator per pipeline, copied
      unchanged into each worker; without this every worker would repeat the same augmentations.
    - A `rescale` pipeline works in [0, 1] space: albumentations' blur and noise kernels clip float images to
      [0, 1], which would destroy standardised spectrograms; the image is scaled there and back (a linear map).
    - One fastai transform for all pipelines: fastai's DataBlock keeps only one item transform per class.
    """

    split_idx = 0  # training set only
    order = 5

    def __init__(self, recipe: AugRecipe, height: int, width: int):
        super().__init__()
        self.recipe = recipe
        self.pipelines = albumentations_pipelines(recipe, height, width)
        self._seeded_with: int | None = None

    def _reseed(self) -> None:
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded_with:
            for pipeline, _ in self.pipelines:
                pipeline.set_random_seed(seed)
            self._seeded_with = seed

    def encodes(self, x: TensorImage) -> TensorImage:
        if not self.enabled:
            return x
        self._reseed()
        image = np.ascontiguousarray(x.numpy().transpose(1, 2, 0), dtype=np.float32)  # HWC
        for pipeline, rescale in self.pipelines:
            image = apply_pipeline(pipeline, image, rescale)
        result = type(x)(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)))
        result.__dict__.update(x.__dict__)  # a TensorCadence keeps its panels and layout
        return result


def apply_pipeline(pipeline: A.Compose, image: np.ndarray, rescale: bool) -> np.ndarray:
    """One albumentations pipeline on a float32 HWC image (scaled to [0, 1] and back when `rescale`); HWC out."""
    lo, hi = float(image.min()), float(image.max())
    scale = hi - lo if hi > lo else 1.0
    if rescale:
        image = (image - lo) / scale
    out = pipeline(image=image)["image"]
    if out.ndim == 2:
        out = out[:, :, None]
    if rescale:
        out = out * scale + lo
    return np.ascontiguousarray(out, dtype=np.float32)


class BatchAugment(DisplayedTransform, Switchable):
    """The recipe's augmentations on a batch on the device, through their torch forms; the validation split is
    untouched (`split_idx = 0`). Random numbers come from torch's generator of the batch's device, which `EpochSeed`
    seeds every epoch. Every step is linear or geometric, so the [0, 1] rescaling of the CPU path changes nothing."""

    split_idx = 0  # training set only
    order = 5

    def __init__(self, recipe: AugRecipe):
        super().__init__()
        self.recipe = recipe
        self.steps = [step for step in recipe.steps() if step.p > 0]

    def encodes(self, x: TensorImage):  # no return type: fastai would cast TensorCadence back to TensorImage
        if not self.enabled:
            return x
        out = x.as_subclass(torch.Tensor)
        for step in self.steps:
            out = step.on_batch(out)
        kept = type(x)(out)  # the input's own type (TensorCadence) and metadata, for show_batch
        kept.__dict__.update(x.__dict__)
        return kept


def train_transforms(recipe: AugRecipe, image: ImageRecipe) -> list:
    """The item transforms of the training augmentations (also fastai TTA's views): none when all are off."""
    _, height, width = image.shape
    return [AlbumentationsTransform(recipe, height, width)] if recipe.active else []


def augmentations(cfg, image: ImageRecipe, recipe: AugRecipe) -> tuple[list, list]:
    """(item_tfms, batch_tfms) of a config's training split: needle injection (not an augmentation: it changes
    labels), then the augmentations on items, or with `aug_device=gpu` on batches (the workers then only load)."""
    inject = [InjectNeedle(cfg.inject, cfg.needle_spec(), image)] if cfg.inject > 0 else []
    if cfg.aug_device != "gpu":
        return inject + train_transforms(recipe, image), []
    return inject, [BatchAugment(recipe)] if recipe.active else []
