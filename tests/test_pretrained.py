"""Pretrained weights: on by default, names mapped to the variant timm has, local files and cache folders, one clear
line when the network is out of reach, and inference that rebuilds the model without it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import tiny_flags, tiny_overrides
from safetensors.torch import save_file
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.config import TrainConfig, build_config, load_run_config, save_config
from seti_fastai.errors import ConfigError
from seti_fastai.evaluate.predict import load_run
from seti_fastai.learn.plan import resolve_pretrained
from seti_fastai.model.models import build_model
from seti_fastai.model.pretrained import create_backbone, pretrained_name, weights_file

NAME = "test_efficientnet.r160_in1k"  # what a pretrained test_efficientnet resolves to


def random_weights(arch: str = "test_efficientnet", seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm state dict (3 channels, 1000 classes, as published) with random values far from any init (positive
    BatchNorm variances, so the model still computes finite outputs)."""
    torch.manual_seed(seed)
    state = timm.create_model(arch, pretrained=False).state_dict()

    def draw(key: str, value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value.clone()
        return torch.rand_like(value) + 0.5 if key.endswith("running_var") else 0.1 * torch.randn_like(value)

    return {k: draw(k, v) for k, v in state.items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """The same random test_efficientnet weights as .pth, .safetensors and inside a Hugging Face cache folder."""
    root = tmp_path_factory.mktemp("weights")
    state = random_weights()
    torch.save(state, root / "w.pth")
    save_file(state, root / "w.safetensors")
    snapshot = root / "hf" / "hub" / f"models--timm--{NAME}" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    return {"pth": root / "w.pth", "safetensors": root / "w.safetensors", "hf": root / "hf", "state": state}


def test_names_resolve_to_the_variant_timm_has():
    assert pretrained_name("efficientnetv2_m") == "tf_efficientnetv2_m.in21k_ft_in1k"
    assert pretrained_name("efficientnetv2_s") == "tf_efficientnetv2_s.in21k_ft_in1k"
    assert pretrained_name("efficientnet_b6").startswith("tf_efficientnet_b6.")  # any name with a tf_ variant
    assert pretrained_name("resnet18") == "resnet18.a1_in1k"  # timm's default tag where there is no in21k_ft_in1k
    assert pretrained_name("tf_efficientnetv2_m.in1k") == "tf_efficientnetv2_m.in1k"  # an explicit tag is kept
    with pytest.raises(ConfigError, match=r"no pretrained weights tf_efficientnetv2_m\.in9k; tags of tf_"):
        pretrained_name("tf_efficientnetv2_m.in9k")
    with pytest.raises(ConfigError, match=r"no pretrained weights for efficientnet_b0_gn; .* --no-pretrained"):
        pretrained_name("efficientnet_b0_gn")


def test_the_resolved_name_is_saved_and_inference_builds_it_offline(tmp_path):
    cfg = build_config(overrides={"arch": "efficientnetv2_s", "size": "64", "resizer": False})
    assert cfg.pretrained is True and cfg.pretrained_source is None  # pretrained by default
    resolved = resolve_pretrained(cfg)
    assert resolved.pretrained_source == "tf_efficientnetv2_s.in21k_ft_in1k"
    save_config(resolved, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["pretrained_source"] == resolved.pretrained_source
    offline = dataclasses.replace(load_run_config(tmp_path), pretrained=False)  # what load_run does: no download
    model = build_model(offline, 1)
    assert model.backbone.pretrained_cfg["architecture"] == "tf_efficientnetv2_s"
    assert type(model.backbone.conv_stem).__name__ == "Conv2dSame"  # TF padding, as the weights were trained
    no_pretrained = resolve_pretrained(dataclasses.replace(cfg, pretrained=False))
    assert no_pretrained.pretrained_source is None
    assert build_model(no_pretrained, 1).backbone.pretrained_cfg["architecture"] == "efficientnetv2_s"


@pytest.mark.parametrize("kind", ["pth", "safetensors", "hf"])
def test_local_weights_load_into_the_backbone(weights, kind):
    state = weights["state"]
    torch.manual_seed(1)
    fresh = create_backbone("test_efficientnet", 3, 1).state_dict()
    torch.manual_seed(1)
    model = create_backbone("test_efficientnet", 3, 1, pretrained_weights=weights[kind]).state_dict()
    body = [k for k in model if not k.startswith("classifier.") and model[k].is_floating_point()]
    assert len(body) > 50
    for key in body:
        torch.testing.assert_close(model[key], state[key])
        assert not torch.equal(model[key], fresh[key]), key
    assert model["classifier.weight"].shape == (1, state["classifier.weight"].shape[1])  # a new 1-logit head


def test_cache_folders_find_their_weights_file(weights, tmp_path):
    hf = weights["hf"]
    assert weights_file(hf, NAME).name == "model.safetensors"
    assert weights_file(hf / "hub", NAME) == weights_file(hf, NAME)
    torch_hub = tmp_path / "checkpoints"
    torch_hub.mkdir()
    torch.save({}, torch_hub / "other-1234.pth")
    torch.save({}, torch_hub / "tf_efficientnetv2_s_21ft1k-d7dafa41.pth")  # the file of timm's download URL
    url = timm.models.get_pretrained_cfg("tf_efficientnetv2_s.in21k_ft_in1k").url
    assert weights_file(torch_hub, "tf_efficientnetv2_s.in21k_ft_in1k").name == Path(url).name
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="weights files in several folders"):
        weights_file(tmp_path, NAME)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: no weights file \(\.safetensors, \.pth"):
        weights_file(tmp_path / "empty", NAME)


def test_bad_weights_files_are_one_line_each(weights, tmp_path):
    cases = {}
    cases[tmp_path / "missing.safetensors"] = r"missing\.safetensors: pretrained weights not found"
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases[tmp_path / "junk.safetensors"] = r"junk\.safetensors: cannot read pretrained weights \(SafetensorError"
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 truncated")
    cases[tmp_path / "junk.pth"] = r"junk\.pth: cannot read pretrained weights"
    save_file(random_weights("test_resnet"), tmp_path / "resnet.safetensors")
    cases[tmp_path / "resnet.safetensors"] = r"weights of another architecture, not test_efficientnet\.r160_in1k"
    wrong = {k: v[..., :1].clone() if v.dim() == 4 else v for k, v in weights["state"].items()}  # names right
    torch.save(wrong, tmp_path / "shapes.pth")
    cases[tmp_path / "shapes.pth"] = r"another architecture, not test_efficientnet\.r160_in1k \(size mismatch for"
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            create_backbone("test_efficientnet", 1, 1, pretrained_weights=path)
        assert "\n" not in str(info.value)


def test_the_default_offline_is_one_line_naming_both_ways_out(synth_data, tmp_path, monkeypatch):
    import huggingface_hub.constants

    for var in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):  # an empty cache: nothing to fall back on
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))
    flags = [f for f in tiny_flags(synth_data[0], tmp_path) if f != "--no-pretrained"]  # the default: pretrained
    result = CliRunner().invoke(app, ["train", *flags, "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not download pretrained weights for {NAME}")
    assert "--pretrained-weights" in lines[0] and "--no-pretrained" in lines[0]
    assert not (tmp_path / "exp").exists()  # nothing written


def test_train_with_a_weights_file_says_so_and_predict_needs_neither_file_nor_network(synth_data, weights, tmp_path):
    source = tmp_path / "w.safetensors"
    source.write_bytes(weights["safetensors"].read_bytes())
    flags = tiny_flags(synth_data[0], tmp_path, pretrained_weights=str(source))
    result = CliRunner().invoke(app, ["train", *flags, "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"test_efficientnet: pretrained weights {NAME} from {source}"
    run = tmp_path / "exp" / "fold0"
    assert load_run_config(run).pretrained_source == NAME
    source.unlink()  # inference reads config.yaml + model.pth only
    cfg, model = load_run(run)
    assert cfg.pretrained_weights == str(source) and model.backbone.pretrained_cfg["tag"] == "r160_in1k"


def test_no_pretrained_keeps_the_name(synth_data, tmp_path):
    cfg = resolve_pretrained(build_config(overrides=tiny_overrides(synth_data[0], tmp_path)))
    assert cfg.pretrained is False and cfg.pretrained_source is None
    assert TrainConfig().pretrained is True


def test_init_from_takes_the_runs_architecture_and_downloads_nothing(synth_data, trained_runs, tmp_path):
    from seti_fastai.learn.train import build_learner

    fold0 = trained_runs[1][0]
    overrides = tiny_overrides(synth_data[0], tmp_path, pretrained=True, init_from=str(fold0))
    cfg = resolve_pretrained(build_config(overrides=overrides))
    assert cfg.pretrained and cfg.pretrained_source is None  # fold0 was built without pretrained weights
    learn = build_learner(cfg, quiet=True)  # a download would hit the socket block
    assert learn.init_result.loaded == learn.init_result.total


def test_weights_in_the_hub_cache_load_without_the_network(weights, tmp_path, monkeypatch):
    import huggingface_hub.constants

    model_dir = tmp_path / "hub" / f"models--timm--{NAME}"
    (model_dir / "snapshots" / "abc123").mkdir(parents=True)
    (model_dir / "refs").mkdir()
    (model_dir / "refs" / "main").write_text("abc123")
    save_file(weights["state"], model_dir / "snapshots" / "abc123" / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = create_backbone("test_efficientnet", 3, 1, pretrained=True).state_dict()  # the socket block is on
    torch.testing.assert_close(model["conv_stem.weight"], weights["state"]["conv_stem.weight"])
