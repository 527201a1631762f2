"""Inference speed: samples/s for plain prediction, batched flip views, and fastai TTA with N passes.

    .venv/bin/python bench/infer_speed.py                                   # CPU: a fresh test_efficientnet
    .venv/bin/python bench/infer_speed.py --run runs/exp/fold0 --data data  # a trained run

All three predict the same cadences with the same model. Target: the flip views cost less than 2.5x plain
(four views go through the model in one batch, so the data are read and decoded once).

`--folds K` (default 4) then times an ensemble of K runs with flip TTA: "before", one `predict` per fold (each fold
reads every cadence again, as `predict` did before it read each batch once), against "after", one `predict` of all
folds (each batch read once, through every fold's model and view); both from the files and from the packed cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

from seti_fastai.config import build_config, save_config
from seti_fastai.data.pack import pack_split
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.evaluate.predict import predict
from seti_fastai.model.models import build_model


def fresh_run(run_dir: Path, data: Path, arch: str, size: int, out: Path | None = None) -> Path:
    """An untrained run directory: speed does not depend on the weights."""
    import torch

    overrides = dict(
        data=str(data), arch=arch, size=[size], resizer=False, pretrained=False, background="none", layout="stack"
    )
    cfg = build_config(overrides=overrides if out is None else {**overrides, "out": str(out)})
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.save(build_model(cfg, 1).state_dict(), run_dir / "model.pth")
    return run_dir


def folds_speed(runs: list[Path], data: Path, args) -> None:
    """Seconds for K folds x flip TTA: one predict per fold (before) against one predict of all folds (after); wall
    seconds, and CPU seconds of this process (with --workers 0 that is all the work: the figure a shared machine
    does not disturb)."""
    kw = dict(tta="flips", bs=args.bs, workers=args.workers)
    for packed in ("off", "auto"):
        start, cpu = time.perf_counter(), time.process_time()
        before = np.mean([predict([r], data, packed=packed, **kw)["target"].to_numpy() for r in runs], axis=0)
        t_before, c_before = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        after = predict(runs, data, packed=packed, **kw)["target"].to_numpy()
        t_after, c_after = time.perf_counter() - start, time.process_time() - cpu
        where = "packed cache" if packed == "auto" else "files"
        print(
            f"{len(runs)} folds x flip TTA, {len(after)} cadences from the {where}: per-fold reading {t_before:.1f} s "
            f"({c_before:.1f} CPU s), read once {t_after:.1f} s ({c_after:.1f} CPU s): {t_before / t_after:.2f}x wall, "
            f"{c_before / c_after:.2f}x CPU; max |diff| {np.abs(after - before).max():.1e}"
        )


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
    p.add_argument("--folds", type=int, default=4, help="folds of the read-once comparison (0: skip it)")
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
        if args.folds:
            if args.run:  # the trained run stands for every fold (the cost does not depend on the weights)
                runs = [run] * args.folds
            else:
                runs = [
                    fresh_run(Path(tmp) / f"fold{k}", data, args.arch, args.size, Path(tmp)) for k in range(args.folds)
                ]
            pack_split(data, "test", Path(tmp), workers=2)  # beside the data when writable, else in a temporary folder
            folds_speed(runs, data, args)


if __name__ == "__main__":
    main()
