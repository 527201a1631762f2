"""Resize stages in front of the backbone: a plain resize (`Resize`) or the learned resizing network
(`LearnedResizer`). Both hold their target size, so progressive resizing only changes a number."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seti_fastai.data.layouts import RESIZE_MODES


def _size_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def resize_image(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, C, H, W) batch. `bilinear` samples 2 rows of every 3.2 when 819 rows become 256 (a thin
    needle can fall between them); `antialias` (bilinear with a widened kernel) and `area` (mean of each cell)
    let every row count."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    if mode in ("bilinear", "antialias"):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=mode == "antialias")
    raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")


class Resize(nn.Module):
    """Resize to `size` (no parameters) with `resize_image`'s `mode`."""

    def __init__(self, size: int | tuple[int, int], mode: str = "bilinear"):
        super().__init__()
        self.size, self.mode = _size_pair(size), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_image(x, self.size, self.mode)


class _ResBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n, n, 3, padding=1, bias=False), nn.BatchNorm2d(n), nn.LeakyReLU(0.2),
            nn.Conv2d(n, n, 3, padding=1, bias=False), nn.BatchNorm2d(n),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LearnedResizer(nn.Module):
    """The resizing network of Talebi & Milanfar (2021): bilinear resize plus a learned residual.

    Convolutions see the full-resolution image, their features are resized bilinearly, refined by residual blocks
    at the target size and added to the plain bilinear resize of the input, so at initialisation it is close to
    bilinear and training can only add detail the backbone finds useful.
    """

    def __init__(
        self, in_chans: int, size: int | tuple[int, int], n_filters: int = 16, n_blocks: int = 1, mode: str = "bilinear"
    ):
        super().__init__()
        self.size, self.mode = _size_pair(size), mode
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, n_filters, 7, padding=3), nn.LeakyReLU(0.2),
            nn.Conv2d(n_filters, n_filters, 1), nn.LeakyReLU(0.2), nn.BatchNorm2d(n_filters),
        )  # fmt: skip
        self.blocks = nn.Sequential(*[_ResBlock(n_filters) for _ in range(n_blocks)])
        self.merge = nn.Sequential(nn.Conv2d(n_filters, n_filters, 3, padding=1, bias=False), nn.BatchNorm2d(n_filters))
        self.out = nn.Conv2d(n_filters, in_chans, 7, padding=3)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return resize_image(x, self.size, self.mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self._resize(self.stem(x))
        refined = self.merge(self.blocks(features)) + features
        return self._resize(x) + self.out(refined)
