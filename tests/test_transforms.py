"""Transforms: the albumentations applier (no clipping, reseeded per worker), SpecAugment, the cadence loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.torch_core import TensorImage
from torch.utils.data import DataLoader, Dataset

from seti_fastai.data.cadence import KaggleData
from seti_fastai.data.inject import NeedleSpec
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.learn.augment import AlbumentationsTransform, AugRecipe, albumentations_pipelines
from seti_fastai.learn.transforms import CadenceLoader, InjectNeedle


def recipe(flip: float = 0.0, affine: float = 0.0, blur: float = 0.0, spec: float = 0.0, **extra) -> AugRecipe:
    return AugRecipe(freq_flip_p=flip, affine_p=affine, motion_blur_p=blur, spec_augment_p=spec, **extra)


def cpu_augment(aug: AugRecipe, h: int = 96, w: int = 64) -> AlbumentationsTransform:
    return AlbumentationsTransform(aug, h, w)


def _image(c: int = 1, h: int = 96, w: int = 64, seed: int = 0) -> TensorImage:
    return TensorImage(torch.from_numpy(np.random.default_rng(seed).normal(size=(c, h, w)).astype(np.float32)))


@pytest.mark.parametrize("channels", [1, 3, 6])
def test_recipe_keeps_shape_dtype_and_range(channels):
    tfm = cpu_augment(recipe(1.0, 1.0, 1.0))
    x = _image(channels) * 0.1
    x[:, :48] += 3.0  # a bright half and a dark half: blur keeps them, clipping to [0, 1] would not
    x[:, 48:] -= 3.0
    y = tfm(x, split_idx=0)
    assert isinstance(y, TensorImage) and y.shape == x.shape and y.dtype == torch.float32
    assert y.max() > 2.5 and y.min() < -2.5
    assert not torch.equal(x, y)
    raw = albumentations_pipelines(recipe(1.0, 1.0, 1.0), 96, 64)[0][0](image=x.numpy().transpose(1, 2, 0).copy())[
        "image"
    ]
    assert raw.max() <= 1.0, "albumentations clips floats to [0, 1]; the wrapper exists to avoid that"


def test_augmentations_apply_to_training_split_only():
    tfm = cpu_augment(recipe(1.0, 1.0, 1.0))
    x = _image()
    assert torch.equal(tfm(x, split_idx=1), x)
    tfm.enabled = False
    assert torch.equal(tfm(x, split_idx=0), x)


def test_spec_augment_zeroes_one_time_band_and_one_frequency_band():
    x = _image(1, 200, 100) + 10.0  # no natural zeros
    tfm = cpu_augment(recipe(spec=1.0, spec_alpha=0.2), 200, 100)
    zeros = [(tfm(x, split_idx=0)[0] == 0) for _ in range(20)]
    rows = [int(z.all(dim=1).sum()) for z in zeros]
    cols = [int(z.all(dim=0).sum()) for z in zeros]
    assert max(rows) > 0 and max(cols) > 0
    assert max(rows) <= 40 and max(cols) <= 20  # at most alpha of each axis


class _SameImage(Dataset):
    def __init__(self, tfm, n=8):
        self.tfm, self.n, self.x = tfm, n, _image()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.tfm(self.x, split_idx=0)


def test_workers_and_epochs_draw_different_augmentations():
    tfm = cpu_augment(recipe(0.5, 1.0, 0.5))
    loader = DataLoader(_SameImage(tfm), batch_size=1, num_workers=2, shuffle=False)
    torch.manual_seed(0)
    epoch1 = [b[0] for b in loader]  # items alternate between worker 0 and worker 1
    epoch2 = [b[0] for b in loader]
    assert not torch.equal(epoch1[0], epoch1[1]), "worker 0 and worker 1 repeated the same augmentation"
    assert not torch.equal(epoch1[0], epoch2[0]), "epoch 2 repeated epoch 1"


def test_same_torch_seed_gives_same_augmentation():
    tfm = cpu_augment(recipe(0.5, 1.0, 0.5))
    x = _image()
    torch.manual_seed(3)
    a = tfm(x, split_idx=0)
    torch.manual_seed(4)
    tfm(x, split_idx=0)
    torch.manual_seed(3)
    assert torch.equal(tfm(x, split_idx=0), a)


def test_cadence_loader_makes_float32_image(synth_data):
    kaggle = KaggleData(synth_data[0])
    path = kaggle.cadence_path("train", kaggle.read_labels()["id"].iloc[0])
    image = CadenceLoader(ImageRecipe("all", "channels"))(path)
    assert isinstance(image, TensorImage) and image.shape == (6, 273, 256) and image.dtype == torch.float32
    assert CadenceLoader(ImageRecipe("on", "stack"))(path).shape == (1, 819, 256)


def test_datablock_keeps_every_training_augmentation(synth_data, tmp_path):
    """fastai's DataBlock keeps one item transform per class: one transform applies the whole recipe, SpecAugment
    (not rescaled) in a pipeline of its own after the other three."""
    from seti_fastai.config import build_config
    from seti_fastai.learn.datablock import get_dls

    before = set(synth_data[0].glob("folds_*.csv"))
    try:
        dls = get_dls(build_config(overrides=dict(data=str(synth_data[0]), out=str(tmp_path), workers=0, bs=4)))
    finally:  # the shared data set stays as made: later tests copy it and expect no fold file
        for path in set(synth_data[0].glob("folds_*.csv")) - before:
            path.unlink()
    (tfm,) = [t for t in dls.train.after_item.fs if isinstance(t, AlbumentationsTransform)]
    kinds = [[type(a).__name__ for a in pipeline.transforms] for pipeline, _ in tfm.pipelines]
    assert kinds == [["HorizontalFlip", "Affine", "MotionBlur"], ["XYMasking"]]
    assert [rescale for _, rescale in tfm.pipelines] == [True, False]


def _injected(p: float, targets: list[float], seed: int = 0):
    torch.manual_seed(seed)
    tfm = InjectNeedle(p, NeedleSpec(brightness=(1.0, 2.0)), ImageRecipe("all", "channels"))
    x = _image(6, 273, 256)
    return x, [tfm((x, torch.tensor(t)), split_idx=0) for t in targets]


def test_injection_turns_negatives_into_positives_at_the_requested_rate():
    x, out = _injected(0.4, [0.0] * 150)
    changed = [not torch.equal(img, x) for img, _ in out]
    labels = [float(y) for _, y in out]
    assert changed == [y == 1.0 for y in labels], "a cadence changes exactly when it becomes a positive"
    assert 0.25 < np.mean(labels) < 0.55, np.mean(labels)
    for img, y in out:
        if y == 1.0:
            assert torch.equal(img[[1, 3, 5]], x[[1, 3, 5]]), "OFF panels stay untouched"
            assert (img - x)[[0, 2, 4]].max() > 0.5, "the needle shows in the ON panels"


def test_injection_leaves_positives_validation_and_p0_alone():
    x, out = _injected(1.0, [1.0] * 5)
    assert all(torch.equal(img, x) and float(y) == 1.0 for img, y in out)
    tfm = InjectNeedle(1.0, NeedleSpec(), ImageRecipe("all", "channels"))
    img, y = tfm((x, torch.tensor(0.0)), split_idx=1)
    assert torch.equal(img, x) and float(y) == 0.0
    _, out = _injected(0.0, [0.0] * 20)
    assert all(float(y) == 0.0 for _, y in out)


def test_injection_is_reproducible_from_the_seed():
    a = _injected(0.5, [0.0] * 10, seed=3)[1]
    b = _injected(0.5, [0.0] * 10, seed=3)[1]
    c = _injected(0.5, [0.0] * 10, seed=4)[1]
    assert all(torch.equal(i, j) for (i, _), (j, _) in zip(a, b, strict=True))
    assert not all(torch.equal(i, j) for (i, _), (j, _) in zip(a, c, strict=True))


# --- label-preserving augmentation for every --panels/--layout ------------------------------------------------

LAYOUTS = [
    ("on", "stack"), ("all", "stack"), ("on", "channels"), ("all", "channels"), ("on", "diff"), ("on", "dedoppler")
]  # fmt: skip
TIME_LOCKED = {("all", "stack"), ("on", "dedoppler")}  # rows mix ON and OFF, or are drifts


def _recipe_only(panels: str, layout: str, **extra) -> tuple[AlbumentationsTransform, TensorImage]:
    """The run's recipe transform with every shift/scale drawn, and a (C, H, W) image whose rows hold their index."""
    from seti_fastai.config import build_config
    from seti_fastai.learn.augment import train_transforms

    values = dict(
        panels=panels,
        layout=layout,
        background="none",
        affine_p=1.0,
        freq_flip_p=1.0,
        motion_blur_p=0.0,
        spec_augment_p=0.0,
    )
    cfg = build_config(overrides={**values, **extra})
    image = ImageRecipe.from_config(cfg)
    c, h, w = image.shape
    (tfm,) = train_transforms(AugRecipe.from_config(cfg, image), image)
    rows = torch.arange(h, dtype=torch.float32)[None, :, None].expand(c, h, w)
    return tfm, TensorImage(rows.contiguous())


@pytest.mark.parametrize(("panels", "layout"), LAYOUTS)
def test_shift_scale_moves_time_only_where_rows_stay_on_or_off(panels, layout):
    """Six panels stacked in time mix ON and OFF rows: a time shift would slide OFF rows into ON slots. There the
    recipe keeps every row in place (it still shifts and scales frequency); elsewhere it shifts time as before."""
    tfm, x = _recipe_only(panels, layout)
    torch.manual_seed(0)
    moved = [float((tfm(x, split_idx=0) - x).abs().max()) for _ in range(12)]
    if (panels, layout) in TIME_LOCKED:
        assert max(moved) < 1e-3, "a row left its panel"
    else:
        assert max(moved) > 1.0, "time shift/scale should still be drawn for this layout"


def test_time_locked_recipe_still_shifts_frequency():
    tfm, _ = _recipe_only("all", "stack", freq_flip_p=0.0)
    x = TensorImage(torch.arange(256, dtype=torch.float32)[None, None, :].expand(1, 1638, 256).contiguous())
    torch.manual_seed(0)
    assert max(float((tfm(x, split_idx=0) - x).abs().max()) for _ in range(6)) > 1.0


def test_time_locked_motion_blur_stays_within_its_row():
    """Panel 0 (ON) ends at row 272 and panel 1 (OFF) starts at 273: the blur must not carry one into the other."""
    tfm, _ = _recipe_only("all", "stack", affine_p=0.0, freq_flip_p=0.0, motion_blur_p=1.0)
    x = torch.zeros(1, 1638, 256)
    x[0, 272, 100:140] = 1.0
    torch.manual_seed(0)
    for _ in range(8):
        y = tfm(TensorImage(x.clone()), split_idx=0)
        assert y[0, 272].sum() > 0 and float(y[0, torch.arange(1638) != 272].abs().max()) < 1e-6


@pytest.mark.parametrize(("panels", "layout"), LAYOUTS)
def test_flip_tta_uses_only_the_flips_training_used(panels, layout):
    """Training flips frequency (`A.HorizontalFlip`, width) and never time, so TTA flips width only."""
    from seti_fastai.config import build_config
    from seti_fastai.evaluate.predict import flip_views

    cfg = build_config(overrides=dict(panels=panels, layout=layout))
    pipelines = albumentations_pipelines(recipe(0.5, 0.5, 0.5, 0.5), 819, 256)
    flips = [type(t).__name__ for pipeline, _ in pipelines for t in pipeline.transforms if "Flip" in type(t).__name__]
    assert flips == ["HorizontalFlip"]
    assert flip_views(cfg) == [(), (-1,)]
    assert flip_views(build_config(overrides=dict(panels=panels, layout=layout, freq_flip_p=0.0))) == [()]
