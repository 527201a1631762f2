"""Augmentation cost: the albumentations item pipeline (what one DataLoader worker does per cadence) against the
batch augmentations of `--aug-device gpu` on the device.

    nice -n 19 .venv/bin/python bench/aug_speed.py                 # CPU both ways
    .venv/bin/python bench/aug_speed.py --device cuda --bs 64      # a GPU box

Both apply the default recipe (frequency flip, shift/scale, motion blur, SpecAugment, each with p = 0.5) to
full-resolution ON-panel images (1 x 819 x 256). Prints samples/s of each; `--max-seconds` caps each timing loop.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from fastai.torch_core import TensorImage

from seti_fastai.config import TrainConfig
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.learn.augment import AugRecipe, BatchAugment, train_transforms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=float, default=60)
    args = p.parse_args()
    cfg = TrainConfig(background="none", layout="stack")  # the image path alone, on 1 x 819 x 256 images
    image = ImageRecipe.from_config(cfg)
    aug = AugRecipe.from_config(cfg, image)
    c, h, w = image.shape
    torch.manual_seed(0)
    images = torch.randn(args.bs, c, h, w)

    item_tfms = train_transforms(aug, image)
    start, n = time.perf_counter(), 0
    while n < args.bs * args.batches and time.perf_counter() - start < args.max_seconds:
        x = TensorImage(images[n % args.bs])
        for tfm in item_tfms:
            x = tfm(x, split_idx=0)
        n += 1
    cpu_rate = n / (time.perf_counter() - start)

    device = torch.device(args.device)
    gpu_tfm = BatchAugment(aug)
    batch = TensorImage(images.to(device))
    gpu_tfm(batch, split_idx=0)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, n = time.perf_counter(), 0
    while n < args.bs * args.batches and time.perf_counter() - start < args.max_seconds:
        gpu_tfm(batch, split_idx=0)
        n += args.bs
    sync()
    batch_rate = n / (time.perf_counter() - start)
    print(f"image {c}x{h}x{w}, bs {args.bs}")
    print(f"RESULT | augmentations, albumentations items (1 CPU worker) | {cpu_rate:.0f} samples/s")
    print(f"RESULT | augmentations, batch transform on {device.type} | {batch_rate:.0f} samples/s")


if __name__ == "__main__":
    main()
