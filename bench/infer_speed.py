"""Inference speed: samples/s for plain prediction, batched flip views, and fastai TTA with N passes.

    .venv/bin/python bench/infer_speed.py                                   # CPU: a fresh test_efficientnet
    .venv/bin/python bench/infer_speed.py --run runs/exp/fold0 --data data  # a trained run

All three predict the same cadences with the same model. Target: the flip views cost less than 2.5x plain
(four views go through the model in one batch, so the data are read and decoded once).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from seti_fastai.config import build_config, save_config
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.evaluate.infer import predict
from seti_fastai.model.models import build_model


def fresh_run(run_dir: Path, data: Path, arch: str, size: int) -> Path:
    """An untrained run directory: speed does not depend on the weights."""
    import torch

    cfg = build_config(overrides=dict(data=str(data), arch=arch, size=[size], resizer=False, pretrained=False))
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.save(build_model(cfg, 1).state_dict(), run_dir / "model.pth")
    return run_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained run directory (default: a fresh model)")
    p.add_argument("--data", help="data root (default: a synthetic set made in a temporary folder)")
    p.add_argument("--n", type=int, default=256, help="test cadences of the synthetic set")
    p.add_argument("--arch", default="test_efficientnet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tta-n", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            write_synthetic(SynthConfig(n_train=8, n_test=args.n, seed=0), data, workers=2)
        run = Path(args.run) if args.run else fresh_run(Path(tmp) / "run", data, args.arch, args.size)
        predict([run], data, bs=args.bs, workers=args.workers)  # warm-up
        rates = {}
        for mode in ("none", "flips", str(args.tta_n)):
            start = time.perf_counter()
            n = len(predict([run], data, tta=mode, bs=args.bs, workers=args.workers))
            rates[mode] = n / (time.perf_counter() - start)
        plain = rates["none"]
        print(f"{run}: {n} cadences, bs {args.bs}, {args.workers} workers")
        for mode, rate in rates.items():
            label = {"none": "plain", "flips": "--tta flips"}.get(mode, f"--tta {mode}")
            print(f"{label:>12}: {rate:7.1f} samples/s, cost {plain / rate:5.2f}x plain")
        print(f"flip views cost {plain / rates['flips']:.2f}x plain (target < 2.5)")


if __name__ == "__main__":
    main()
