"""The augmentation recipe: one frozen object both paths read, built from the config; `Switchable` is what the last
epochs switch off; a new augmentation is one class (shown here by registering one in a test)."""

from __future__ import annotations

import dataclasses

import albumentations as A
import pytest
import torch
from fastai.torch_core import TensorImage

from seti_fastai.config import build_config
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.learn.augment import (
    AUGMENTATIONS,
    AlbumentationsTransform,
    Augmentation,
    AugRecipe,
    BatchAugment,
    Switchable,
    augmentation,
)
from seti_fastai.learn.callbacks import AugmentationOff, MixUpOr


def test_recipe_takes_the_config_probabilities_and_keeps_the_seed_ranges():
    cfg = build_config(overrides=dict(freq_flip_p=0.3, affine_p=0.0, spec_alpha=0.2, panels="all", background="none"))
    recipe = AugRecipe.from_config(cfg, ImageRecipe.from_config(cfg))
    assert (recipe.freq_flip_p, recipe.affine_p, recipe.motion_blur_p, recipe.spec_augment_p) == (0.3, 0.0, 0.5, 0.5)
    assert (recipe.spec_alpha, recipe.shift, recipe.scale, recipe.blur_sizes) == (0.2, (0.1, 0.05), (0.9, 1.1), (3, 7))
    assert recipe.time_shift is False  # six panels stacked in time: rows stay in place
    assert [type(s).__name__ for s in recipe.steps()] == ["FreqFlip", "ShiftScale", "MotionBlur", "SpecAugment"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.affine_p = 1.0


@dataclasses.dataclass(frozen=True)
class NoisyRecipe(AugRecipe):
    noise_p: float = 0.0


class Noise(Augmentation):
    """An augmentation made in a test: Gaussian noise of 5 % of the image's range."""

    p_field = "noise_p"

    def albumentation(self, height, width):
        return A.GaussNoise(std_range=(0.05, 0.05), p=self.p)

    def on_batch(self, x):
        chosen = (torch.rand(x.shape[0], device=x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(chosen, x + 0.05 * (x.amax() - x.amin()) * torch.randn_like(x), x)


@pytest.fixture
def noise_augmentation():
    augmentation(Noise)
    yield Noise
    AUGMENTATIONS.remove(Noise)


def test_a_new_augmentation_is_one_registered_class_on_both_paths(noise_augmentation):
    recipe = NoisyRecipe(noise_p=1.0)  # every other probability 0
    x = TensorImage(torch.randn(1, 48, 32))
    torch.manual_seed(0)
    cpu, gpu = AlbumentationsTransform(recipe, 48, 32), BatchAugment(recipe)
    assert [type(a).__name__ for pipeline, _ in cpu.pipelines for a in pipeline.transforms][-1] == "GaussNoise"
    noisy_cpu, noisy_gpu = cpu(x, split_idx=0), gpu(x[None], split_idx=0)[0]
    for noisy in (noisy_cpu, noisy_gpu):
        assert noisy.shape == x.shape and 0.02 < float((noisy - x).std() / (x.max() - x.min())) < 0.1
    for tfm in (cpu, gpu):  # what AugmentationOff finds and switches: anything Switchable
        assert isinstance(tfm, Switchable)
        tfm.enabled = False
    assert torch.equal(cpu(x, split_idx=0), x) and torch.equal(gpu(x[None], split_idx=0)[0], x)


def test_augmentation_off_switches_every_switchable_transform_and_mixup(synth_data, tmp_path):
    from conftest import tiny_overrides

    from seti_fastai.learn.train import build_learner

    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, aug_device="gpu", inject=0.2, layout="stack"))
    learn = build_learner(cfg, quiet=True)
    off = AugmentationOff(last=1)
    off.learn = learn
    learn.epoch, learn.n_epoch = 1, 2  # the last epoch
    off.before_epoch()
    switchable = [t for t in [*learn.dls.train.after_item.fs, *learn.dls.train.after_batch.fs] if
                  isinstance(t, Switchable)]  # fmt: skip
    mixup = [cb for cb in learn.cbs if isinstance(cb, MixUpOr)]
    assert switchable and mixup and not any(t.enabled for t in [*switchable, *mixup])
    learn.epoch = 0
    off.before_epoch()
    assert all(t.enabled for t in [*switchable, *mixup])
