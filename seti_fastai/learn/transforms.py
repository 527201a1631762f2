"""fastai Transforms of the data path: loading a cadence as the image its `ImageRecipe` describes (with its shared
background removed), needle injection, the float target. The augmentations are in `augment.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fastai.data.transforms import CategoryMap, DisplayedTransform, ItemTransform

from seti_fastai.data.background import subtract_background
from seti_fastai.data.inject import NeedleSpec, draw_needle, import_setigen, signal_rows
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.data.pack import PackedSources, read_cadence
from seti_fastai.learn.show import TensorCadence, TensorLabel

Partners = dict[str, list[tuple[str, int]]]  # cadence id -> [(partner file, shift), ...], best first


class CadenceLoader(DisplayedTransform):
    """Path of a `.npy` cadence -> float32 `TensorImage` (C, H, W), validated on the way.

    Builds the image its `ImageRecipe` describes. Reads only the panels the image uses (`source_panels`; all six for
    a cadence whose background is subtracted), from the split's packed cache when `packed` holds one
    (`seti_fastai.data.pack`), else from the file through a memory map. With `partners` (from `matches.csv`), the
    background shared with overlapping cadences is subtracted first (`seti_fastai.data.background.
    subtract_background`); partners are read the same way (their split's cache, or their file); a cadence without a
    partner passes unchanged.
    """

    def __init__(
        self,
        recipe: ImageRecipe = ImageRecipe(),
        partners: Partners | None = None,
        packed: PackedSources | None = None,
        keep_raw: bool = False,
    ):
        super().__init__()
        self.recipe, self.partners, self.packed, self.keep_raw = recipe, partners, packed, keep_raw
        self.last_raw: tuple[str, np.ndarray] | None = None  # with `keep_raw`: (path, its six raw panels)

    def encodes(self, path) -> TensorCadence:
        found = self.partners.get(Path(path).stem, []) if self.partners else []
        if found or self.keep_raw:
            cadence = read_cadence(path, None, self.packed)
            if self.keep_raw:
                self.last_raw = (str(path), cadence)
            if found:
                cadence = subtract_background(cadence, [(read_cadence(p, None, self.packed), s) for p, s in found])
        else:
            cadence = read_cadence(path, self.recipe.source_panels, self.packed)
        image = self.recipe.to_image(cadence)
        recipe = self.recipe
        return TensorCadence(torch.from_numpy(image), cadence_panels=recipe.panels, cadence_layout=recipe.layout)


class RawCadence(DisplayedTransform):
    """Path -> the six raw panels (float32 tensor (6, 273, 256), before any background subtraction) of the cadence
    `loader` (a `CadenceLoader` with `keep_raw`) has just read for the same item, so the file is read once; the
    de-Doppler reference scores them beside the model (`evaluate.predict`). Reads the file when `loader` has not."""

    def __init__(self, loader: CadenceLoader):
        super().__init__()
        self.loader = loader

    def encodes(self, path) -> torch.Tensor:
        last = self.loader.last_raw
        raw = last[1] if last is not None and last[0] == str(path) else read_cadence(path, None, self.loader.packed)
        return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))


class InjectNeedle(ItemTransform):
    """With probability `p`, add a setigen needle to a negative training cadence's ON panels and label it 1.

    Runs on the (image, target) pair after loading, so it works for every layout: the needle is drawn as a cadence
    (6, 273, 256), zero in the OFF panels, binned to the data's rows (`inject.signal_rows`) and turned into an image
    the same way (every layout is linear in it; the per-channel median of `diff` is that of the noise, which a thin
    needle hardly moves). Brightness is in units of the panel's noise std, so it stays right after background
    subtraction, which leaves a needle as it was. Draws come from a generator reseeded from `torch.initial_seed()`,
    like `augment.AlbumentationsTransform`: reproducible from the run's seed, different in every worker and epoch.
    """

    split_idx = 0  # training set only
    order = 1  # after loading, before the augmentations

    def __init__(self, p: float, spec: NeedleSpec, recipe: ImageRecipe = ImageRecipe()):
        super().__init__()
        self.p, self.spec, self.recipe = p, spec, recipe
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
        needle = signal_rows(draw_needle(self._stg, self.spec, rng), self.recipe.rows)
        needle = self.recipe.to_image(needle, standardize=False)
        return x + torch.from_numpy(needle), torch.ones_like(y)  # keeps the image's type and metadata


class FloatTarget(DisplayedTransform):
    """0/1 label -> float32 scalar `TensorLabel`, so mixup can blend it and BCE can use it. `vocab` names the two
    classes (the loss decodes a prediction to 0 or 1) for fastai's `ClassificationInterpretation`."""

    vocab = CategoryMap(["0", "1"], sort=False)

    def encodes(self, target) -> TensorLabel:
        return TensorLabel(torch.tensor(float(target), dtype=torch.float32))


to_float_target = FloatTarget()  # the target block's type transform
