"""GPU-ready training options checked on CPU: precision choice (mocked device), fp16 scaler state across --resume,
channels-last, and torch.compile (real on CPU when a C compiler is present)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import tiny_overrides
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision

import seti_fastai.learn.plan as plan_mod
from seti_fastai.config import build_config
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.errors import ConfigError
from seti_fastai.learn.plan import device_precision, run_state, uses_channels_last
from seti_fastai.learn.train import build_learner, train_fold
from seti_fastai.model.checkpoint import load_checkpoint, load_weights
from seti_fastai.model.models import build_model


def cfg_for(data, out, **extra):
    return build_config(overrides=tiny_overrides(data, out, **extra))


def fake_gpu(monkeypatch, major: int) -> list[dict]:
    """Pretend a CUDA GPU of compute capability `major`.x is present; bf16 below 8 only by emulation."""
    calls: list[dict] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append({"including_emulation": including_emulation})
        return major >= 8 or including_emulation  # torch: emulated bf16 counts unless including_emulation=False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


@pytest.mark.parametrize(("major", "expected"), [(9, "bf16"), (8, "bf16"), (7, "fp16"), (6, "fp16")])
def test_auto_precision_is_bf16_only_where_native(monkeypatch, tmp_path, major, expected):
    calls = fake_gpu(monkeypatch, major)
    assert device_precision(cfg_for("data", tmp_path, precision="auto")) == expected
    assert calls and all(c["including_emulation"] is False for c in calls)
    assert device_precision(cfg_for("data", tmp_path, precision="fp32")) == "fp32"
    assert device_precision(cfg_for("data", tmp_path, precision="fp16")) == "fp16"


def test_bf16_asked_of_a_gpu_without_it_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert device_precision(cfg_for("data", tmp_path)) == "fp16"
    with pytest.raises(ConfigError, match=r"^--precision bf16: this GPU cannot compute in bfloat16"):
        device_precision(cfg_for("data", tmp_path, precision="bf16"))


def test_no_cuda_means_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for precision in ("auto", "bf16", "fp16", "fp32"):
        assert device_precision(cfg_for("data", tmp_path, precision=precision)) == "fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_learner_gets_the_matching_mixed_precision(monkeypatch, synth_data, tmp_path, precision):
    monkeypatch.setattr(plan_mod, "device_precision", lambda cfg: precision)
    learn = build_learner(cfg_for(synth_data[0], tmp_path), quiet=True)
    amp = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    if precision == "fp32":
        assert amp == []
    else:
        assert len(amp) == 1 and amp[0].amp_mode == AMPMode(precision)
    assert not any(isinstance(cb, ChannelsLast) for cb in learn.cbs)  # auto: CUDA only, and this is a CPU
    forced = build_learner(cfg_for(synth_data[0], tmp_path, channels_last=True), quiet=True)
    assert sum(isinstance(cb, ChannelsLast) for cb in forced.cbs) == 1


def test_channels_last_auto_means_cuda_only(monkeypatch, tmp_path):
    for cuda in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert uses_channels_last(cfg_for("data", tmp_path)) is cuda
        assert uses_channels_last(cfg_for("data", tmp_path, channels_last=True)) is True
        assert uses_channels_last(cfg_for("data", tmp_path, channels_last=False)) is False


class FakeScaler(Callback):
    """Stands in for fastai's fp16 MixedPrecision on CPU: a CPU GradScaler in `learn.scaler` (made fresh in
    before_fit, as fastai does) whose scale halves after every epoch; records the scale each epoch starts with."""

    order = 10

    def __init__(self):
        self.seen: list[float] = []

    def before_fit(self):
        self.learn.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def before_train(self):  # not called for the epochs a resumed run skips
        self.seen.append(self.learn.scaler.get_scale())

    def after_train(self):  # before RunRecorder's after_epoch writes last.pth
        scaler = self.learn.scaler
        scaler.scale(torch.ones(()))  # makes the scale tensor, as a real step would
        scaler.update(new_scale=scaler.get_scale() / 2)


class Interrupt(Callback):
    order = -30

    def before_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt


def test_scaler_state_round_trips_through_last_pth(synth_data, tmp_path):
    cfg = dict(epochs=2, name="amp")
    first = FakeScaler()
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg_for(synth_data[0], tmp_path, **cfg), quiet=True, cbs=[first, Interrupt()])
    checkpoint = load_checkpoint(tmp_path / "amp" / "fold0" / "last.pth")  # weights_only=True reads it
    assert checkpoint["scaler"]["scale"] == 512.0 and first.seen == [1024.0]
    resumed = FakeScaler()
    train_fold(cfg_for(synth_data[0], tmp_path, resume=True, **cfg), quiet=True, cbs=[resumed])
    assert resumed.seen == [512.0]  # epoch 1 goes on from the saved scale, not a fresh 1024


def test_a_checkpoint_without_scaler_state_resumes(synth_data, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg_for(synth_data[0], tmp_path, epochs=2), quiet=True, cbs=[Interrupt()])
    assert "scaler" not in load_checkpoint(tmp_path / "exp" / "fold0" / "last.pth")  # fp32: nothing to save
    fresh = FakeScaler()  # an fp16 run resumed from such an (older) checkpoint starts with a fresh scale
    metrics = train_fold(cfg_for(synth_data[0], tmp_path, epochs=2, resume=True), quiet=True, cbs=[fresh])
    assert fresh.seen == [1024.0] and metrics["epochs"] == 2


def check_compiled_run(data, out) -> None:
    cfg = cfg_for(data, out, compile=True, mixup_p=0.0)
    torch._dynamo.reset()
    metrics = train_fold(cfg, quiet=True)
    torch._dynamo.reset()
    state = load_weights(out / "exp" / "fold0" / "model.pth")
    assert not any("_orig_mod" in k for k in state) and 0.0 <= metrics["oof_auc"] <= 1.0
    in_chans = ImageRecipe.from_config(cfg).in_chans
    build_model(cfg, in_chans).load_state_dict(state)  # strict: inference loads it as any other run


def test_compile_traces_the_model_and_saves_plain_names(monkeypatch, synth_data, tmp_path):
    """Dynamo traces forward and backward (aot_eager backend: no C++ build), a fold trains, names stay plain."""
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_(self, backend="aot_eager"))
    check_compiled_run(synth_data[0], tmp_path)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler for inductor")
@pytest.mark.skipif(
    not os.environ.get("SETI_TEST_COMPILE"),
    reason="inductor builds C++ kernels: minutes on a small CPU; set SETI_TEST_COMPILE=1 to run",
)
def test_compile_with_inductor_trains_on_cpu(synth_data, tmp_path):
    check_compiled_run(synth_data[0], tmp_path)


def test_compile_failure_is_one_clear_error(monkeypatch, synth_data, tmp_path):
    compile_ = torch.nn.Module.compile

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler found\nsecond line")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_(self, backend=broken_backend))
    torch._dynamo.reset()
    with pytest.raises(ConfigError, match=r"^--compile failed \(.*no C compiler found.*\); train without --compile$"):
        train_fold(cfg_for(synth_data[0], tmp_path, compile=True), quiet=True)
    torch._dynamo.reset()
    assert run_state(tmp_path / "exp" / "fold0") == "new"  # no checkpoint: the same command without --compile runs
