"""Shared fixtures: small synthetic data sets made once per test session with a fixed seed."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
from network_guard import patches

from seti_fastai.data.synth import SynthConfig, write_synthetic

SEED = 7


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Block every non-local connection and name lookup for the whole test session."""
    with pytest.MonkeyPatch.context() as mp:
        for owner, name, replacement in patches("tests"):
            mp.setattr(owner, name, replacement)
        yield


@pytest.fixture(scope="session")
def synth_cfg() -> SynthConfig:
    return SynthConfig(
        n_train=64, n_test=16, pos_rate=0.25, seed=SEED, old=True, n_old_train=24, n_old_test=8, difficulty="easy"
    )


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory, synth_cfg):
    """(data root, hidden folder) of a small synthetic set with the old data; read-only for tests."""
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic(synth_cfg, root / "data", workers=2)


@pytest.fixture(scope="session")
def bright_data(tmp_path_factory):
    """A small set with bright needles and no decoys: a tiny model must learn it in seconds."""
    root = tmp_path_factory.mktemp("bright")
    cfg = SynthConfig(n_train=240, n_test=40, pos_rate=0.3, seed=11, brightness=(3.0, 8.0), decoy_rate=0.0)
    return write_synthetic(cfg, root / "data", workers=2)


def tiny_overrides(data, out, **extra):
    """Config overrides for a fast CPU run: tiny model, small input, no workers, no pretrained weights (no network)."""
    values = dict(
        data=str(data),
        out=str(out),
        arch="test_efficientnet",
        size="64",
        epochs=1,
        bs=8,
        workers=0,
        resizer=False,
        lr=1e-2,
        pretrained=False,
        background="none",  # auto would write matches.csv into the shared data sets; tests/test_background.py runs it
    )
    values.update(extra)
    return values


def tiny_flags(data, out, **extra) -> list[str]:
    """`tiny_overrides` as command-line flags."""
    flags = []
    for key, value in tiny_overrides(data, out, **extra).items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


@pytest.fixture(scope="session")
def trained_runs(synth_data, tmp_path_factory):
    """Two tiny trained folds of `synth_data` (experiment folder, [fold0, fold1])."""
    from seti_fastai.config import build_config
    from seti_fastai.learn.train import train_fold

    out = tmp_path_factory.mktemp("runs")
    for fold in (0, 1):
        train_fold(build_config(overrides=tiny_overrides(synth_data[0], out, fold=fold)), quiet=True)
    return out / "exp", [out / "exp" / "fold0", out / "exp" / "fold1"]
