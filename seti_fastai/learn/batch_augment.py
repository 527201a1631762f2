"""The torch forms of the training augmentations, on a batch on the device (`--aug-device gpu`): pure functions that
`augment.py`'s augmentation classes call with their recipe's probabilities and ranges. Each draws per sample as its
albumentations form (the CPU path) does:

- frequency flip (width);
- shift/scale: a shift U(-s, s) of the axis (whole pixels, truncated, as albumentations does), a scale drawn from the
  recipe's range about the image centre, independently on the time axis where `time_shift` allows it, no rotation;
  bilinear, border reflected without repeating the edge pixel (`BORDER_REFLECT_101`);
- motion blur: albumentations' line kernel (odd size in the recipe's range, angle, direction bias, random shift
  when `time_shift`; a centred horizontal line otherwise), normalised, reflected border;
- SpecAugment: one frequency band and one time band, each of a length drawn from 0..int(alpha * axis) and a
  position drawn so that it fits, set to 0.

Images arrive as float batches (B, C, H, W) in the units of the data. Random numbers come from torch's generator of
the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _chosen(n: int, p: float, device: torch.device) -> torch.Tensor:
    """Indices of the samples a step with probability `p` applies to."""
    return torch.nonzero(torch.rand(n, device=device) < p).flatten()


def freq_flip(x: torch.Tensor, p: float) -> torch.Tensor:
    """Flip the frequency axis (width) of a share `p` of the samples."""
    flip = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def affine_params(
    n: int,
    height: int,
    width: int,
    time_shift: bool,
    device: torch.device,
    shift: tuple[float, float],
    scale: tuple[float, float],
) -> torch.Tensor:
    """(n, 4) shift x, shift y (pixels), scale x, scale y, drawn as `A.Affine` draws them: shifts up to `shift`
    (shares of width, height), scales in `scale`."""
    (sx_max, sy_max), (lo, hi) = shift, scale
    tx = torch.trunc(_uniform(n, -sx_max, sx_max, device) * width)
    ty = torch.trunc(_uniform(n, -sy_max, sy_max, device) * height) if time_shift else torch.zeros(n, device=device)
    sx = _uniform(n, lo, hi, device)
    sy = _uniform(n, lo, hi, device) if time_shift else torch.ones(n, device=device)
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


def shift_scale(
    x: torch.Tensor, p: float, time_shift: bool, shift: tuple[float, float], scale: tuple[float, float]
) -> torch.Tensor:
    idx = _chosen(x.shape[0], p, x.device)
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = warp(x[idx], affine_params(len(idx), x.shape[2], x.shape[3], time_shift, x.device, shift, scale))
    return x


def motion_kernels(n: int, time_shift: bool, device: torch.device, sizes: tuple[int, int]) -> torch.Tensor:
    """(n, K, K) normalised motion-blur kernels, K the largest of the odd `sizes`, built as albumentations'
    `create_motion_kernel` builds them (a k x k kernel, k odd in `sizes`, centred in the K x K)."""
    smallest, largest = sizes
    k = (smallest + 2 * torch.randint(0, (largest - smallest) // 2 + 1, (n,), device=device)).float()
    angle = _uniform(n, 0.0, 360.0, device) if time_shift else torch.zeros(n, device=device)
    direction = _uniform(n, -1.0, 1.0, device)
    half = torch.div(k, 2, rounding_mode="floor")  # line_length and the centre of the k x k kernel
    t_start = torch.where(direction > 0, -half * (1 - direction), -half)
    t_end = torch.where(direction < 0, half * (1 - direction.abs()), half)
    i = torch.arange(largest, device=device).float()
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
    offset = ((largest - k) / 2)[:, None]
    flat = ((ys + offset) * largest + xs + offset).long()
    flat = torch.where(valid, flat, flat[:, :1])  # unused points repeat the first one
    kernel = torch.zeros(n, largest * largest, device=device).scatter_(1, flat, 1.0)
    return (kernel / kernel.sum(1, keepdim=True)).view(n, largest, largest)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate each image (all its channels) with its own kernel, border reflected (cv2.filter2D's default)."""
    n, c, h, w = x.shape
    r = kernels.shape[-1] // 2
    padded = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def motion_blur(x: torch.Tensor, p: float, time_shift: bool, sizes: tuple[int, int]) -> torch.Tensor:
    idx = _chosen(x.shape[0], p, x.device)
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = blur(x[idx], motion_kernels(len(idx), time_shift, x.device, sizes))
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
