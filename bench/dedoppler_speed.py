"""Cadences per second of the de-Doppler reference search (loading and validating included), by DataLoader workers.

.venv/bin/python bench/dedoppler_speed.py --n 256 --workers 0 2 [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from seti_fastai.data.cadence import KaggleData
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.evaluate.dedoppler import DedopplerConfig, score_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="synthetic train cadences to score")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda [default: cuda when available]")
    args = parser.parse_args()
    cfg = DedopplerConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root, _ = write_synthetic(SynthConfig(n_train=args.n, n_test=2, seed=0), Path(tmp) / "data", workers=2)
        kaggle = KaggleData(root)
        paths = kaggle.paths("train", kaggle.read_labels("train")["id"])
        score_files(paths[: args.bs], cfg, args.bs, 0, args.device)  # warm-up: builds the drift map once
        for workers in args.workers:
            start = time.perf_counter()
            score_files(paths, cfg, args.bs, workers, args.device)
            seconds = time.perf_counter() - start
            print(
                f"dedoppler: {len(paths)} cadences, {len(cfg.drifts())} drifts, {workers} worker(s): "
                f"{seconds:.1f} s, {len(paths) / seconds:.1f} cadences/s"
            )


if __name__ == "__main__":
    main()
