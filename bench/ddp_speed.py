"""Training samples/s of one process against N DDP processes (torchrun), the same fold and flags.

    .venv/bin/python bench/ddp_speed.py                                   # CPU: 1 vs 2 processes (gloo)
    .venv/bin/python bench/ddp_speed.py --procs 8 --data data --arch efficientnetv2_s --size 512 --bs 32 --workers 8

Each run is `scripts/train.py` in a subprocess (the N-process one under `python -m torch.distributed.run
--standalone --nproc_per_node N`); the figure is `train_samples_per_s` of its metrics.json (all ranks' training
samples over the training phase's wall time, validation excluded), averaged over the epochs after the first.
--bs is per process, so N processes train N x --bs samples per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, args: argparse.Namespace, out: Path) -> dict:
    """Train one fold with `procs` processes; its metrics.json plus the per-epoch samples/s."""
    name = f"p{procs}"
    flags = [
        "--data", str(args.data), "--out", str(out), "--name", name, "--arch", args.arch, "--size", str(args.size),
        "--epochs", str(args.epochs), "--bs", str(args.bs), "--workers", str(args.workers), "--no-resizer", "--quiet",
        "--no-pretrained",
    ]  # fmt: skip
    script = str(ROOT / "scripts" / "train.py")
    launch = [sys.executable, script] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), script
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run([*launch, *flags], env=env, check=True, stdout=subprocess.DEVNULL)
    run_dir = out / name / "fold0"
    history = pd.read_csv(run_dir / "history.csv")
    steady = history["train_samples_per_s"].iloc[1:] if len(history) > 1 else history["train_samples_per_s"]
    return dict(json.loads((run_dir / "metrics.json").read_text()), steady=float(steady.mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="Kaggle-layout data (default: a synthetic set made here)")
    parser.add_argument("--n", type=int, default=400, help="cadences of the synthetic set")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--arch", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            from seti_fastai.data.synth import SynthConfig, write_synthetic

            args.data, _ = write_synthetic(SynthConfig(n_train=args.n, n_test=8, seed=0), Path(tmp) / "data")
        results = {p: run(p, args, Path(tmp) / "runs") for p in (1, args.procs)}
    one, many = results[1]["steady"], results[args.procs]["steady"]
    print(f"{args.arch} at {args.size} px, bs {args.bs} per process, {args.epochs} epochs, workers {args.workers}")
    for p, r in results.items():
        auc, seconds = r["oof_auc"], r["wall_seconds"]
        print(f"{p} process(es): {r['steady']:.1f} training samples/s, valid AUC {auc:.3f}, {seconds} s")
    print(f"speed-up {many / one:.2f}x with {args.procs} processes ({many / one / args.procs:.0%} scaling efficiency)")


if __name__ == "__main__":
    main()
