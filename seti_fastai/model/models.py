"""Models: a resize stage (bilinear or the learned resizing network) in front of any timm backbone.

The image arrives at full resolution (819 x 256 for the ON panels); the model itself reduces it to the training
size, so progressive resizing only changes a number and the data pipeline never changes. The current size is
part of the state dict (`_extra_state`), so `model.pth` always carries the size its weights were trained at.
"""

from __future__ import annotations

import torch
from torch import nn

from seti_fastai.model.pretrained import create_backbone
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
