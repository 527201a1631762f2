"""The training augmentations as one fastai batch transform, run on the device (`--aug-device gpu`).

The same recipe as the albumentations path of `transforms.py` (`recipe_pipeline`, then `spec_augment_pipeline`),
drawn per sample with the same probabilities and ranges, so the DataLoader workers only load:

- frequency flip (width) with `freq_flip_p`;
- shift/scale with `affine_p`: shift U(-0.1, 0.1) of the width (whole pixels, truncated, as albumentations does),
  scale U(0.9, 1.1) about the image centre, independently on the time axis where `time_shift` allows it, no
  rotation; bilinear, border reflected without repeating the edge pixel (`BORDER_REFLECT_101`);
- motion blur with `motion_blur_p`: albumentations' line kernel (odd size 3..7, angle, direction bias, random shift
  when `time_shift`; a centred horizontal line otherwise), normalised, reflected border;
- SpecAugment with `spec_augment_p`: one frequency band and one time band, each of a length drawn from
  0..int(alpha * axis) and a position drawn so that it fits, set to 0.

Images arrive as float batches (B, C, H, W) in the units of the data: every step is linear or geometric, so the
[0, 1] rescaling of the CPU path (needed there for albumentations' clipping) changes nothing here. Random numbers
come from torch's generator of the batch's device, which `EpochSeed` seeds every epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImage

from seti_fastai.learn.transforms import AlbumentationsTransform, mixes_on_and_off, training_item_transforms

MAX_BLUR = 7  # largest motion-blur kernel (albumentations' blur_limit=(3, 7))


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _chosen(n: int, p: float, device: torch.device) -> torch.Tensor:
    """Indices of the samples a step with probability `p` applies to."""
    return torch.nonzero(torch.rand(n, device=device) < p).flatten()


def freq_flip(x: torch.Tensor, p: float) -> torch.Tensor:
    """Flip the frequency axis (width) of a share `p` of the samples."""
    flip = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def affine_params(n: int, height: int, width: int, time_shift: bool, device: torch.device) -> torch.Tensor:
    """(n, 4) shift x, shift y (pixels), scale x, scale y, drawn as `A.Affine` of `recipe_pipeline` draws them."""
    tx = torch.trunc(_uniform(n, -0.1, 0.1, device) * width)
    ty = torch.trunc(_uniform(n, -0.05, 0.05, device) * height) if time_shift else torch.zeros(n, device=device)
    sx = _uniform(n, 0.9, 1.1, device)
    sy = _uniform(n, 0.9, 1.1, device) if time_shift else torch.ones(n, device=device)
    return torch.stack([tx, ty, sx, sy], dim=1)


def warp(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Shift and scale each image about its centre: output pixel p shows input pixel (p - c - t) / s + c."""
    n, _, h, w = x.shape
    tx, ty, sx, sy = params.to(x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = 1 / sx, -tx * 2 / max(w - 1, 1) / sx  # align_corners=True: pixel centres
    theta[:, 1, 1], theta[:, 1, 2] = 1 / sy, -ty * 2 / max(h - 1, 1) / sy
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def shift_scale(x: torch.Tensor, p: float, time_shift: bool) -> torch.Tensor:
    idx = _chosen(x.shape[0], p, x.device)
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = warp(x[idx], affine_params(len(idx), x.shape[2], x.shape[3], time_shift, x.device))
    return x


def motion_kernels(n: int, time_shift: bool, device: torch.device) -> torch.Tensor:
    """(n, 7, 7) normalised motion-blur kernels, built as albumentations' `create_motion_kernel` builds them (a
    k x k kernel, k odd in 3..7, centred in the 7 x 7)."""
    k = (3 + 2 * torch.randint(0, 3, (n,), device=device)).float()
    angle = _uniform(n, 0.0, 360.0, device) if time_shift else torch.zeros(n, device=device)
    direction = _uniform(n, -1.0, 1.0, device)
    half = torch.div(k, 2, rounding_mode="floor")  # line_length and the centre of the k x k kernel
    t_start = torch.where(direction > 0, -half * (1 - direction), -half)
    t_end = torch.where(direction < 0, half * (1 - direction.abs()), half)
    i = torch.arange(MAX_BLUR, device=device).float()
    valid = i[None] < k[:, None]
    t = t_start[:, None] + (t_end - t_start)[:, None] * i[None] / (k[:, None] - 1)
    rad = torch.deg2rad(angle)
    xs, ys = half[:, None] + torch.cos(rad)[:, None] * t, half[:, None] + torch.sin(rad)[:, None] * t
    if time_shift:  # allow_shifted
        xs = xs + (_uniform(n, -1.0, 1.0, device) * half / 2)[:, None]
        ys = ys + (_uniform(n, -1.0, 1.0, device) * half / 2)[:, None]
    top = k[:, None] - 1
    xs = torch.minimum(torch.round(xs).clamp_min(0), top)
    ys = torch.minimum(torch.round(ys).clamp_min(0), top)
    offset = ((MAX_BLUR - k) / 2)[:, None]
    flat = ((ys + offset) * MAX_BLUR + xs + offset).long()
    flat = torch.where(valid, flat, flat[:, :1])  # unused points repeat the first one
    kernel = torch.zeros(n, MAX_BLUR * MAX_BLUR, device=device).scatter_(1, flat, 1.0)
    return (kernel / kernel.sum(1, keepdim=True)).view(n, MAX_BLUR, MAX_BLUR)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate each image (all its channels) with its own kernel, border reflected (cv2.filter2D's default)."""
    n, c, h, w = x.shape
    r = MAX_BLUR // 2
    padded = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def motion_blur(x: torch.Tensor, p: float, time_shift: bool) -> torch.Tensor:
    idx = _chosen(x.shape[0], p, x.device)
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = blur(x[idx], motion_kernels(len(idx), time_shift, x.device))
    return x


def band_params(n: int, size: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, length) of one band per sample: length in 0..max(1, int(alpha * size)), start in 0..size - length."""
    longest = max(1, int(alpha * size))
    length = torch.randint(0, longest + 1, (n,), device=device)
    start = torch.floor(torch.rand(n, device=device) * (size - length + 1)).long()
    return start, length


def spec_augment(x: torch.Tensor, p: float, alpha: float) -> torch.Tensor:
    """Zero one frequency band (columns) and one time band (rows) of a share `p` of the samples."""
    n, _, h, w = x.shape
    apply = (torch.rand(n, device=x.device) < p).view(n, 1, 1, 1)
    fx, lx = band_params(n, w, alpha, x.device)
    fy, ly = band_params(n, h, alpha, x.device)
    cols, rows = torch.arange(w, device=x.device), torch.arange(h, device=x.device)
    in_x = (cols[None] >= fx[:, None]) & (cols[None] < (fx + lx)[:, None])
    in_y = (rows[None] >= fy[:, None]) & (rows[None] < (fy + ly)[:, None])
    masked = (in_x[:, None, None, :] | in_y[:, None, :, None]) & apply
    return x.masked_fill(masked, 0.0)


class BatchAugment(DisplayedTransform):
    """The training augmentations on a batch on the device; the validation split is untouched (`split_idx = 0`).
    `enabled` switches it off (the `AugmentationOff` callback does so for the last epochs)."""

    split_idx = 0  # training set only
    order = 5

    def __init__(
        self,
        freq_flip_p: float = 0.5,
        affine_p: float = 0.5,
        motion_blur_p: float = 0.5,
        spec_augment_p: float = 0.5,
        spec_alpha: float = 0.1,
        time_shift: bool = True,
    ):
        super().__init__()
        self.freq_flip_p, self.affine_p, self.motion_blur_p = freq_flip_p, affine_p, motion_blur_p
        self.spec_augment_p, self.spec_alpha, self.time_shift = spec_augment_p, spec_alpha, time_shift
        self.enabled = True

    def encodes(self, x: TensorImage):  # no return type: fastai would cast TensorCadence back to TensorImage
        if not self.enabled:
            return x
        out = x.as_subclass(torch.Tensor)
        if self.freq_flip_p > 0:
            out = freq_flip(out, self.freq_flip_p)
        if self.affine_p > 0:
            out = shift_scale(out, self.affine_p, self.time_shift)
        if self.motion_blur_p > 0:
            out = motion_blur(out, self.motion_blur_p, self.time_shift)
        if self.spec_augment_p > 0:
            out = spec_augment(out, self.spec_augment_p, self.spec_alpha)
        kept = type(x)(out)  # the input's own type (TensorCadence) and metadata, for show_batch
        kept.__dict__.update(x.__dict__)
        return kept


def batch_augment(cfg) -> BatchAugment | None:
    """The `BatchAugment` of a config (None when every augmentation probability is 0)."""
    ps = (cfg.freq_flip_p, cfg.affine_p, cfg.motion_blur_p, cfg.spec_augment_p)
    if max(ps) <= 0:
        return None
    return BatchAugment(*ps, cfg.spec_alpha, time_shift=not mixes_on_and_off(cfg.panels, cfg.layout))


def augmentations(cfg, image_hw: tuple[int, int]) -> tuple[list, list]:
    """(item_tfms, batch_tfms) of a config's training split: with `aug_device=gpu` the items keep only what is not
    an augmentation (needle injection) and the augmentations run on batches."""
    items = training_item_transforms(cfg, image_hw)
    if getattr(cfg, "aug_device", "cpu") != "gpu":
        return items, []
    batch = batch_augment(cfg)
    return [t for t in items if not isinstance(t, AlbumentationsTransform)], [] if batch is None else [batch]
