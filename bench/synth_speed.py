"""Cadences per second written by the synthetic data set writer, by number of worker processes.

.venv/bin/python bench/synth_speed.py --n 1000 --workers 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from seti_fastai.data.synth import SynthConfig, write_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="cadences in train (test adds a quarter)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--difficulty", default="realistic")
    args = parser.parse_args()
    cfg = SynthConfig(n_train=args.n, n_test=args.n // 4, difficulty=args.difficulty, seed=0)
    total = cfg.n_train + cfg.n_test
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_synthetic(cfg, Path(tmp) / "data", workers=workers)
            seconds = time.perf_counter() - start
        print(f"synth: {total} cadences, {workers} worker(s): {seconds:.1f} s, {total / seconds:.1f} cadences/s")


if __name__ == "__main__":
    main()
