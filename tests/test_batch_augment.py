"""`--aug-device gpu`: the batch augmentations draw what the albumentations path draws (compared in distribution on
CPU tensors), leave validation batches alone, and replace the item augmentations in the DataBlock."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from scipy.stats import ks_2samp

from seti_fastai.config import build_config
from seti_fastai.learn.augment import AlbumentationsTransform, AugRecipe, BatchAugment, albumentations_pipelines
from seti_fastai.learn.datablock import get_dls
from seti_fastai.learn.transforms import InjectNeedle

H, W, N = 40, 56, 300  # not square: an axis mix-up shows


def recipe(flip=0.0, affine=0.0, blur=0.0, spec=0.0, **extra) -> AugRecipe:
    return AugRecipe(freq_flip_p=flip, affine_p=affine, motion_blur_p=blur, spec_augment_p=spec, **extra)


def device_batch(aug: AugRecipe, images: np.ndarray) -> np.ndarray:
    """The recipe's torch forms (the device path) on a batch."""
    out = torch.from_numpy(images)
    for step in aug.steps():
        if step.p > 0:
            out = step.on_batch(out)
    return out.numpy()


def albumentations_batch(aug: AugRecipe, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """The recipe's albumentations forms (the CPU path, without its [0, 1] rescaling) on each (C, H, W) image."""
    ((pipeline, _),) = albumentations_pipelines(aug, *images.shape[2:])
    pipeline.set_random_seed(seed)
    out = [pipeline(image=np.ascontiguousarray(im.transpose(1, 2, 0)))["image"] for im in images]
    return np.stack([o[:, :, None] if o.ndim == 2 else o for o in out]).transpose(0, 3, 1, 2)


def ramps(n: int) -> np.ndarray:
    """Channel 0 holds each pixel's column index, channel 1 its row index."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.repeat(np.stack([cols, rows])[None], n, axis=0)


def same_distribution(a, b, what: str) -> None:
    result = ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    assert result.pvalue > 1e-3, f"{what}: KS p = {result.pvalue:.2g}, means {np.mean(a):.3f} vs {np.mean(b):.3f}"


def close_shares(a: float, b: float, n: int) -> None:
    assert abs(a - b) < 4 * np.sqrt(0.25 / n) * np.sqrt(2), (a, b)


def test_frequency_flip_share_matches():
    torch.manual_seed(0)
    images = ramps(N)
    gpu = device_batch(recipe(flip=0.5), images)
    cpu = albumentations_batch(recipe(flip=0.5), images)
    flipped = [float((out[:, 0, 0, 0] == W - 1).mean()) for out in (gpu, cpu)]
    close_shares(*flipped, N)
    assert abs(flipped[0] - 0.5) < 0.12
    assert (gpu[:, 1] == images[:, 1]).all()  # rows (time) never move


def affine_estimates(out: np.ndarray) -> np.ndarray:
    """(n, 4) shift x, shift y, scale x, scale y read back from warped ramps (centre rows and columns only)."""
    est = []
    cx, cy = (W - 1) / 2, (H - 1) / 2
    xs, ys = np.arange(W)[W // 4 : -W // 4], np.arange(H)[H // 4 : -H // 4]
    for im in out:
        slope_x, icpt_x = np.polyfit(xs, im[0, H // 2, xs], 1)  # source column = (x - cx - tx) / sx + cx
        slope_y, icpt_y = np.polyfit(ys, im[1, ys, W // 2], 1)
        sx, sy = 1 / slope_x, 1 / slope_y
        tx = -(icpt_x + slope_x * cx - cx) * sx
        ty = -(icpt_y + slope_y * cy - cy) * sy
        est.append((tx, ty, sx, sy))
    return np.array(est)


def whole(shifts: np.ndarray) -> np.ndarray:
    """Shifts are whole pixels in both paths: round away the interpolation noise (OpenCV's is 1/32 pixel)."""
    assert (np.abs(shifts - np.round(shifts)) < 0.05).all()
    return np.round(shifts)


@pytest.mark.parametrize("time_shift", [True, False])
def test_shift_scale_magnitudes_match(time_shift):
    torch.manual_seed(1)
    images = ramps(N)
    gpu = affine_estimates(device_batch(recipe(affine=1.0, time_shift=time_shift), images))
    cpu = affine_estimates(albumentations_batch(recipe(affine=1.0, time_shift=time_shift), images))
    for j, name in enumerate(("shift x", "shift y", "scale x", "scale y")):
        if time_shift or j in (0, 2):
            a, b = (whole(gpu[:, j]), whole(cpu[:, j])) if j < 2 else (gpu[:, j], cpu[:, j])
            same_distribution(a, b, name)
    assert np.abs(gpu[:, 0]).max() <= 0.1 * W + 0.01 and np.abs(gpu[:, 2] - 1).max() <= 0.1 + 1e-3
    assert (np.abs(gpu[:, 0] - np.round(gpu[:, 0])) < 0.01).all()  # whole pixels, as albumentations shifts
    if not time_shift:
        np.testing.assert_allclose(gpu[:, 1], 0, atol=1e-3)
        np.testing.assert_allclose(gpu[:, 3], 1, atol=1e-4)
    share = float((device_batch(recipe(affine=0.5, time_shift=time_shift), images) != images).any(3).any(2)
                  .any(1).mean())  # fmt: skip
    assert abs(share - 0.5) < 0.12


def kernel_stats(out: np.ndarray) -> np.ndarray:
    """Taps, row spread and column spread of the kernel each blurred impulse shows."""
    stats = []
    for im in out[:, 0]:
        rows, cols = np.nonzero(im > 1e-6)
        stats.append((len(rows), rows.max() - rows.min(), cols.max() - cols.min(), (im * np.arange(im.shape[1])).sum()))
    return np.array(stats, dtype=float)


@pytest.mark.parametrize("time_shift", [True, False])
def test_motion_blur_kernels_match(time_shift):
    torch.manual_seed(2)
    impulses = np.zeros((N, 1, 21, 21), np.float32)
    impulses[:, 0, 10, 10] = 1.0
    gpu = device_batch(recipe(blur=1.0, time_shift=time_shift), impulses)
    cpu = albumentations_batch(recipe(blur=1.0, time_shift=time_shift), impulses)
    np.testing.assert_allclose(gpu.sum((1, 2, 3)), 1.0, rtol=1e-5)  # a kernel that keeps the mean
    g, c = kernel_stats(gpu), kernel_stats(cpu)
    for j, name in enumerate(("taps", "time spread", "frequency spread", "frequency centroid")):
        same_distribution(g[:, j], c[:, j], name)
    if not time_shift:
        assert (g[:, 1] == 0).all() and g[:, 0].max() == 7  # 1-D frequency kernels (direction bias shortens some)


@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_spec_augment_bands_match(alpha):
    torch.manual_seed(3)
    ones = np.ones((N, 1, H, W), np.float32)
    gpu = device_batch(recipe(spec=1.0, spec_alpha=alpha), ones)
    cpu = albumentations_batch(recipe(spec=1.0, spec_alpha=alpha), ones)
    for axis, size, name in ((2, W, "frequency"), (3, H, "time")):  # all-zero columns / rows
        bands = []
        for out in (gpu, cpu):
            zero = (out[:, 0] == 0).all(axis=axis - 1)
            widths = zero.sum(1)
            starts = np.where(widths > 0, zero.argmax(1), -1)
            bands.append((widths, starts))
            assert widths.max() <= max(1, int(alpha * size))
        same_distribution(bands[0][0], bands[1][0], f"{name} band width")
        same_distribution(bands[0][1][bands[0][0] > 0], bands[1][1][bands[1][0] > 0], f"{name} band start")
    half = device_batch(recipe(spec=0.5, spec_alpha=alpha), ones)
    close_shares(float((half == 0).any((1, 2, 3)).mean()), 0.5 * (1 - 1 / (int(alpha * W) + 1) / (int(alpha * H) + 1)),
                 N)  # fmt: skip


def test_gpu_path_moves_augmentations_to_batches_and_spares_validation(synth_data, tmp_path):
    common = tiny_overrides(synth_data[0], tmp_path, inject=0.3, layout="stack")  # injection needs a linear layout
    gpu = get_dls(build_config(overrides={**common, "aug_device": "gpu"}))
    cpu = get_dls(build_config(overrides=common))
    assert not any(isinstance(t, AlbumentationsTransform) for t in gpu.train.after_item.fs)
    assert any(isinstance(t, InjectNeedle) for t in gpu.train.after_item.fs)  # needles are labels, not augmentation
    assert sum(isinstance(t, BatchAugment) for t in gpu.train.after_batch.fs) == 1
    assert not any(isinstance(t, BatchAugment) for t in cpu.train.after_batch.fs)
    xv, yv = gpu.valid.one_batch()
    xc, yc = cpu.valid.one_batch()
    assert torch.equal(xv, xc) and torch.equal(yv, yc)  # validation: the same plain batches
    assert torch.equal(gpu.valid.after_batch(xv.clone()), xv)
    xt, _ = gpu.train.one_batch()  # also sets the training split on its batch pipeline
    assert xt.shape[1:] == xv.shape[1:]
    torch.manual_seed(0)
    augmented = gpu.train.after_batch(xv.clone())
    assert augmented.shape == xv.shape and augmented.dtype == torch.float32 and not torch.equal(augmented, xv)
    augment = next(t for t in gpu.train.after_batch.fs if isinstance(t, BatchAugment))
    augment.enabled = False  # what AugmentationOff does for the last epochs
    assert torch.equal(gpu.train.after_batch(xv.clone()), xv)


def test_batch_augment_keeps_the_cadence_type_for_show_batch():
    from seti_fastai.learn.show import TensorCadence

    x = TensorCadence(torch.randn(4, 1, 64, 32), cadence_panels="on", cadence_layout="diff")
    augment = BatchAugment(recipe(flip=1.0))
    augment.split_idx = None  # apply outside a DataLoader
    y = augment(x)
    assert type(y) is TensorCadence and y.cadence_layout == "diff" and y.cadence_panels == "on"
    assert torch.equal(y.as_subclass(torch.Tensor), x.as_subclass(torch.Tensor).flip(-1))
