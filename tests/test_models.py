"""Models: any timm name, the resize stage, the learned resizer, size in the state dict, clear errors."""

from __future__ import annotations

import pytest
import torch

from seti_fastai.config import build_config
from seti_fastai.errors import ConfigError
from seti_fastai.model.heads import SetiLoss, log_odds, roc_auc
from seti_fastai.model.models import build_model, param_groups
from seti_fastai.model.pretrained import check_arch, create_backbone
from seti_fastai.model.resize import RESIZE_MODES, LearnedResizer, resize_image

OFFLINE = {"pretrained": False}  # random weights: no test reaches the network


@pytest.mark.parametrize(("head", "n_out"), [("bce", 1), ("ce", 2)])
@pytest.mark.parametrize("resizer", [True, False])
def test_model_output_shape(head, n_out, resizer):
    cfg = build_config(
        overrides={"arch": "test_efficientnet", "head": head, "resizer": resizer, "size": "64", **OFFLINE}
    )
    model = build_model(cfg, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 819, 256)).shape == (2, n_out)


def test_resize_modes_let_every_row_count():
    x = torch.zeros(1, 1, 819, 256)
    channels = torch.arange(256)
    x[0, 0, channels * 3 + 1, channels] = 1.0  # a steep needle: one lit row per channel
    lost = {m: int((resize_image(x, (256, 256), m)[0, 0].max(0).values == 0).sum()) for m in RESIZE_MODES}
    assert lost["area"] == lost["antialias"] == 0
    assert lost["bilinear"] > 50, "819 -> 256 bilinear reads 2 rows of every 3.2 and drops the rest"
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(x, (64, 64), "nearest")


@pytest.mark.parametrize("resizer", [True, False])
def test_resize_mode_reaches_the_model(resizer):
    cfg = build_config(
        overrides={"arch": "test_efficientnet", "size": "64", "resizer": resizer, "resize_mode": "area", **OFFLINE}
    )
    model = build_model(cfg, 1)
    assert model.resize.mode == "area" and model(torch.randn(2, 1, 819, 256)).shape == (2, 1)


def test_learned_resizer_outputs_the_training_size():
    resizer = LearnedResizer(in_chans=3, size=(96, 64))
    assert resizer(torch.randn(2, 3, 273, 256)).shape == (2, 3, 96, 64)


def test_size_travels_with_the_weights():
    cfg = build_config(overrides={"arch": "test_efficientnet", "size": "64", **OFFLINE})
    model = build_model(cfg, 1)
    model.set_size(96)
    fresh = build_model(cfg, 1)
    fresh.load_state_dict(model.state_dict())
    assert fresh.size == (96, 96)


def test_param_groups_split_body_from_head():
    model = build_model(build_config(overrides={"arch": "test_efficientnet", "size": "64", **OFFLINE}), 1)
    body, head = param_groups(model)
    assert len(body) + len(head) == len(list(model.parameters()))
    assert any(p is model.backbone.get_classifier().weight for p in head)


def test_unknown_architecture_suggests_names():
    with pytest.raises(ConfigError, match=r"unknown architecture 'efficientnetv2_mm'; did you mean .*efficientnetv2_m"):
        check_arch("efficientnetv2_mm")


def test_local_pretrained_weights_load_without_network(tmp_path):
    source = create_backbone("test_efficientnet", 3, 1000)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_backbone("test_efficientnet", 1, 1, pretrained_weights=tmp_path / "w.pth")
    # timm sums the RGB kernels of the first conv for one input channel
    first = next(n for n, p in model.named_parameters() if p.dim() == 4)
    expected = source.state_dict()[first].sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.state_dict()[first], expected)
    with pytest.raises(ConfigError, match=r"missing\.pth: pretrained weights not found"):
        create_backbone("test_efficientnet", 1, 1, pretrained_weights=tmp_path / "missing.pth")


def test_heads_agree_on_auc_and_loss_is_finite():
    target = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])
    one = torch.tensor([[-2.0], [1.0], [0.5], [3.0], [-1.0]])
    two = torch.cat([torch.zeros_like(one), one], dim=1)
    torch.testing.assert_close(log_odds(two), one[:, 0])
    assert roc_auc(one, target) == roc_auc(two, target) == pytest.approx(1.0)
    for head, out in (("bce", one), ("ce", two)):
        assert torch.isfinite(SetiLoss(head, pos_weight=2.0)(out, target))
    assert roc_auc(one, torch.zeros(5)) != roc_auc(one, torch.zeros(5))  # NaN for one class


def test_pretrained_offline_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network in tests
    with pytest.raises(ConfigError, match=r"could not download pretrained weights for resnet18\.a1_in1k \(offline\?\)"):
        create_backbone("resnet18", 1, 1, pretrained=True)
