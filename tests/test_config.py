"""Configuration: defaults < YAML < flags, strict checking, round trip through config.yaml."""

from __future__ import annotations

import re

import pytest

from seti_fastai.config import TrainConfig, build_config, load_run_config, save_config
from seti_fastai.errors import ConfigError


def test_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("arch: resnet18\nepochs: 7\nsize: [128, 256]\nlr: 0.01\n")
    cfg = build_config(path, {"epochs": 3, "lr": None})
    assert cfg.arch == "resnet18" and cfg.size == [128, 256] and cfg.lr == 0.01  # from YAML
    assert cfg.epochs == 3  # the flag wins
    assert cfg.bs == TrainConfig().bs  # the default stays


def test_round_trip(tmp_path):
    cfg = build_config(overrides={"arch": "test_efficientnet", "size": "64,96", "epochs": 2, "pos_share": 0})
    assert cfg.size == [64, 96] and cfg.pos_share is None
    save_config(cfg, tmp_path / "config.yaml")
    assert load_run_config(tmp_path) == cfg


def test_size_schedule_shares_epochs():
    assert TrainConfig(size=[128, 192, 256], epochs=7).size_schedule() == [128, 128, 192, 192, 256, 256, 256]
    assert TrainConfig(size=[256], epochs=2).size_schedule() == [256, 256]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("archh: resnet18\n", "unknown config field(s) archh"),
        ("epochs: many\n", "epochs must be a number"),
        ("epochs: 2.5\n", "epochs must be an integer"),
        ("resizer: maybe\n", "resizer must be true or false"),
        ("- a\n- b\n", "expected a mapping"),
        ("panels: some\n", "panels must be one of on, all"),
        ("size: [16]\n", "size must be one or more sizes of at least 32"),
        ("epochs: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_rejected(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(path)


def test_bad_flags_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="mixup_p must be in"):
        build_config(overrides={"mixup_p": 1.5})
    with pytest.raises(ConfigError, match="size schedule has 3 sizes for 2 epochs"):
        build_config(overrides={"size": "64,96,128", "epochs": 2})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": float("nan")}, "lr must be a finite number; got nan"),
        ({"wd": float("inf")}, "wd must be a finite number; got inf"),
        ({"epochs": float("nan")}, "epochs must be a finite number"),
        ({"inject_brightness": "0.5,nan"}, "inject_brightness must be a list of finite numbers"),
        ({"epochs": 0}, "epochs must be >= 1; got 0"),
        ({"n_folds": 1}, "n_folds must be >= 2; got 1"),
        ({"bs": 0}, "bs must be >= 1; got 0"),
        ({"lr": -1e-3}, "lr must be > 0; got -0.001"),
    ],
)
def test_every_number_flag_is_finite_and_messages_name_the_real_bound(overrides, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        build_config(overrides=overrides)


def test_a_config_file_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"c\.yaml: not a text file \(byte \d+ is not UTF-8\)"):
        build_config(path)
