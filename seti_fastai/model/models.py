"""Models: a resize stage (bilinear or the learned resizing network) in front of any timm backbone.

The image arrives at full resolution (819 x 256 for the ON panels); the model itself reduces it to the training
size, so progressive resizing only changes a number and the data pipeline never changes. The current size is
part of the state dict (`_extra_state`), so `model.pth` always carries the size its weights were trained at.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from seti_fastai.errors import ConfigError
from seti_fastai.model.pretrained import (
    OFFLINE_HINT,
    _first_line,
    _from_hub,
    _load_file,
    is_network_error,
    pretrained_name,
    weights_file,
)
from seti_fastai.model.resize import LearnedResizer, Resize, _size_pair


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


def create_backbone(
    arch: str,
    in_chans: int,
    n_out: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_weights: str | Path | None = None,
    pretrained_source: str | None = None,
) -> nn.Module:
    """A timm model with `in_chans` input channels and `n_out` outputs.

    With `pretrained` or `pretrained_weights` the model built is `pretrained_source` (default: `pretrained_name(arch)`)
    and starts from the weights of the file, else of timm's hub (or its cache); without either it is
    `pretrained_source` (the architecture a pretrained run was built as) or `arch`, with random weights. The name is
    checked where it comes in (the run plan, `read_run`): an unknown one here is timm's own error.
    """
    kwargs: dict = dict(in_chans=in_chans, num_classes=n_out, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_weights is not None or pretrained:
        name = pretrained_source or pretrained_name(arch, required=pretrained_weights is None)
    else:
        name = pretrained_source or arch
    if pretrained_weights is not None:
        return _load_file(name, weights_file(pretrained_weights, name), kwargs)
    if pretrained:
        try:
            return _from_hub(name, kwargs)
        except Exception as e:
            detail = f"{type(e).__name__}: {_first_line(e)}"
            if is_network_error(e):
                offline = f"could not download pretrained weights for {name} (offline?): no network ({detail})"
                raise ConfigError(f"{offline}; {OFFLINE_HINT}") from e
            raise ConfigError(f"pretrained weights for {name} failed to load ({detail})") from e
    return timm.create_model(name, pretrained=False, **kwargs)


def build_model(cfg, in_chans: int, load_pretrained: bool = True) -> SetiModel:
    """The model a `TrainConfig` describes, at the first size of its schedule. The backbone is built as
    `cfg.pretrained_source` when set; `load_pretrained=False` skips the weights (they come from elsewhere)."""
    from seti_fastai.model.heads import n_outputs

    fetch = load_pretrained and cfg.pretrained
    backbone = create_backbone(
        cfg.arch,
        in_chans,
        n_outputs(cfg.head),
        cfg.drop_rate,
        cfg.drop_path_rate,
        fetch,
        cfg.pretrained_weights if load_pretrained else None,
        getattr(cfg, "pretrained_source", None),
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
