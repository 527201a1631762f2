"""Models: a resize stage (bilinear or the learned resizing network) in front of any timm backbone.

The image arrives at full resolution (819 x 256 for the ON panels); the model itself reduces it to the training
size, so progressive resizing only changes a number and the data pipeline never changes. The current size is
part of the state dict (`_extra_state`), so `model.pth` always carries the size its weights were trained at.
"""

from __future__ import annotations

import difflib
import re
import socket
import urllib.error
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from seti_fastai.errors import ConfigError

# timm names without pretrained weights -> a variant that has them
PRETRAINED_VARIANTS = {
    "efficientnetv2_s": "tf_efficientnetv2_s or efficientnetv2_rw_s",
    "efficientnetv2_m": "tf_efficientnetv2_m or efficientnetv2_rw_m",
    "efficientnetv2_l": "tf_efficientnetv2_l",
    "efficientnetv2_xl": "tf_efficientnetv2_xl",
}


def check_arch(arch: str) -> None:
    """Raise a clear error for a name timm does not know, suggesting close names."""
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown architecture {arch!r}{hint}")


def _size_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


RESIZE_MODES = ("bilinear", "antialias", "area")


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


class SetiModel(nn.Module):
    """`resize` (`Resize` or `LearnedResizer`) then a timm `backbone`."""

    def __init__(self, backbone: nn.Module, resize: nn.Module):
        super().__init__()
        self.resize, self.backbone = resize, backbone

    @property
    def size(self) -> tuple[int, int]:
        return self.resize.size

    def set_size(self, size: int | tuple[int, int]) -> None:
        self.resize.size = _size_pair(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.resize(x))

    def get_extra_state(self) -> dict:
        return {"size": list(self.size)}

    def set_extra_state(self, state: dict) -> None:
        self.set_size(tuple(state["size"]))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else ""


_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "aiohttp")
_NETWORK_NAMES = re.compile(r"Connect|Timeout|Network|Offline|LocalEntryNotFound|Proxy|SSL|MaxRetry|RemoteDisconnected")


def is_network_error(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, means the network could not be reached.

    Builtin socket and urllib errors by type; requests, urllib3, httpx and huggingface_hub errors by module and
    name (their classes differ between versions). A 404, a full disk or a corrupt cached file are not.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
            return True
        if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):  # not a 404
            return True
        for cls in type(error).__mro__:
            if cls.__module__.split(".")[0] in _NETWORK_MODULES and _NETWORK_NAMES.search(cls.__name__):
                return True
        error = error.__cause__ or error.__context__
    return False


def create_backbone(
    arch: str,
    in_chans: int,
    n_out: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_weights: str | Path | None = None,
) -> nn.Module:
    """A timm model with `in_chans` input channels and `n_out` outputs; weights from timm's hub only if asked."""
    check_arch(arch)
    kwargs: dict = dict(in_chans=in_chans, num_classes=n_out, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_weights is not None:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise ConfigError(f"{path}: pretrained weight file not found")
        try:  # timm sums the RGB kernels of the first conv for in_chans=1 and drops a mismatched classifier
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise ConfigError(f"{path}: cannot load as {arch} weights ({str(e).splitlines()[0][:200]})") from e
    if pretrained:
        if not timm.list_pretrained(f"{arch}.*") and not timm.list_pretrained(arch):
            other = PRETRAINED_VARIANTS.get(arch, "a variant listed by timm.list_pretrained()")
            raise ConfigError(f"timm has no pretrained weights for {arch}; use {other}")
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:
            detail = f"{type(e).__name__}: {_first_line(e)}"
            if is_network_error(e):
                raise ConfigError(
                    f"could not download pretrained weights for {arch} (offline?): no network ({detail}); "
                    "use --pretrained-weights FILE"
                ) from e
            raise ConfigError(f"pretrained weights for {arch} failed to load ({detail})") from e
    return timm.create_model(arch, pretrained=False, **kwargs)


def build_model(cfg, in_chans: int) -> SetiModel:
    """The model a `TrainConfig` describes, at the first size of its schedule."""
    from seti_fastai.model.heads import n_outputs

    backbone = create_backbone(
        cfg.arch,
        in_chans,
        n_outputs(cfg.head),
        cfg.drop_rate,
        cfg.drop_path_rate,
        cfg.pretrained,
        cfg.pretrained_weights,
    )
    size = cfg.size[0]
    mode = cfg.resize_mode
    resize = LearnedResizer(in_chans, size, mode=mode) if cfg.resizer else Resize(size, mode)
    return SetiModel(backbone, resize)


def param_groups(model: SetiModel) -> list[list[nn.Parameter]]:
    """Two groups for discriminative learning rates: the backbone body; then the resizer and the classifier."""
    head = list(model.backbone.get_classifier().parameters()) + list(model.resize.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return [body, head]
