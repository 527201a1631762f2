"""Speed, memory and accuracy of background matching (seti_fastai.data.background), with a 100k extrapolation.

.venv/bin/python bench/match_speed.py --data abl            # truth from abl_hidden/meta.csv
.venv/bin/python bench/match_speed.py --n 600                         # makes a small synthetic set first
.venv/bin/python bench/match_speed.py --data abl --simulate 100000   # also match 100k planted fingerprints

Fingerprinting reads 2 x 32 rows of every file and is linear in the number of cadences (disk-bound on real data).
Matching sorts 2 x 256 hashes per cadence (n log n) and verifies the candidates (linear in the number of true
pairs); its memory is linear: fingerprints 2 KB per cadence, plus one sorted copy per band while it runs.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from seti_fastai.data.background import (
    DEFAULT_MIN_SIMILARITY,
    cadence_index,
    fingerprints,
    match_fingerprints,
    matcher_scores,
    pairs_to_matches,
)
from seti_fastai.data.cadence import N_CHANNELS, KaggleData
from seti_fastai.data.synth import STRIP_CHANNELS, SynthConfig, write_synthetic

TARGET = 100_000


def timed_match(fps: np.ndarray, min_overlap: int, min_similarity: float) -> tuple[pd.DataFrame, float, int]:
    """(pairs, seconds, peak bytes allocated while matching)."""
    tracemalloc.start()
    start = time.perf_counter()
    pairs = match_fingerprints(fps, min_overlap, min_similarity)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return pairs, seconds, peak


def scale_nlogn(seconds: float, n: int, target: int) -> float:
    return seconds * target * np.log(target) / (n * np.log(n))


def simulated(n: int, per_strip: int, flip: float, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """`n` fingerprints cut from random strips of hashes as the synthetic set cuts cadences, with bit flips."""
    rng = np.random.default_rng(seed)
    n_strips = max(1, n // per_strip)
    strips = rng.integers(0, 2**63, size=(n_strips, STRIP_CHANNELS), dtype=np.int64).astype(np.uint64)
    meta = pd.DataFrame(
        {
            "id": [f"{i:015x}" for i in range(n)],
            "strip": rng.integers(0, n_strips, n),
            "offset": rng.integers(0, STRIP_CHANNELS - N_CHANNELS + 1, n),
        }
    )
    cols = meta["offset"].to_numpy()[:, None] + np.arange(N_CHANNELS)
    fps = strips[meta["strip"].to_numpy()[:, None], cols]
    flat = fps.reshape(-1)  # float16 rounding flips about 3 bits in 10,000
    where = rng.integers(0, flat.size, rng.binomial(flat.size * 64, flip))
    np.bitwise_xor.at(flat, where, np.uint64(1) << rng.integers(0, 64, len(where)).astype(np.uint64))
    return fps, meta


def report_data(data: Path, meta_path: Path, workers: int, min_overlap: int, min_similarity: float) -> None:
    kaggle = KaggleData(data)
    splits = [s for s in ("train", "test", "old-train", "old-test") if kaggle.has_split(s)]
    index = cadence_index(kaggle, splits)
    n = len(index)
    start = time.perf_counter()
    fps = fingerprints(index["path"].tolist(), workers=workers)
    fp_s = time.perf_counter() - start
    print(f"fingerprint: {n} cadences in {fp_s:.2f} s = {n / fp_s:.0f} cadences/s ({workers} workers)")
    pairs, match_s, peak = timed_match(fps, min_overlap, min_similarity)
    matches = pairs_to_matches(pairs, index)
    print(f"match: {match_s:.2f} s = {n / match_s:.0f} cadences/s; peak allocation {peak / 2**20:.1f} MiB")
    with_partner = matches["id"].nunique()
    print(f"{len(matches)} rows; {with_partner} of {n} cadences ({with_partner / n:.1%}) have a partner")
    meta = pd.read_csv(meta_path, dtype={"id": str})
    scores = matcher_scores(matches, meta[meta["split"].isin(splits)], min_overlap)
    print("scores: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
    per_cadence = fps[0].nbytes  # fingerprints, and one sorted band of keys while matching: 2 KB each
    fixed = max(0, peak - n * per_cadence)  # verification and hit buffers, bounded by their chunk sizes
    print(
        f"at {TARGET} cadences: fingerprinting {TARGET / (n / fp_s) / 60:.1f} min with {workers} workers (linear; "
        f"disk-bound on real data), {TARGET * per_cadence / 2**20:.0f} MiB of fingerprints (linear); matching about "
        f"{scale_nlogn(match_s, n, TARGET):.0f} s (n log n sort; an upper bound, small sets carry fixed costs), "
        f"{(TARGET * per_cadence + fixed) / 2**20:.0f} MiB beside the fingerprints (linear + chunk buffers); "
        f"--simulate {TARGET} measures it"
    )


def report_simulated(n: int, min_overlap: int, min_similarity: float) -> None:
    fps, meta = simulated(n, per_strip=6, flip=3e-4)
    pairs, seconds, peak = timed_match(fps, min_overlap, min_similarity)
    index = pd.DataFrame({"split": "train", "id": meta["id"]})
    scores = matcher_scores(pairs_to_matches(pairs, index), meta, min_overlap)
    print(
        f"simulated {n} fingerprints: match {seconds:.1f} s, peak allocation {peak / 2**20:.0f} MiB "
        f"(fingerprints {fps.nbytes / 2**20:.0f} MiB); "
        f"precision {scores['precision']:.4f}, recall {scores['recall']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="data folder (default: make a synthetic set of --n cadences)")
    parser.add_argument("--meta", type=Path, help="truth meta.csv [DATA_hidden/meta.csv]")
    parser.add_argument("--n", type=int, default=600, help="train cadences of the synthetic set (test adds a quarter)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--min-overlap", type=int, default=16)
    parser.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY)
    parser.add_argument("--simulate", type=int, default=0, help="also match this many planted fingerprints")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            cfg = SynthConfig(n_train=args.n, n_test=args.n // 4, seed=0)
            data = write_synthetic(cfg, Path(tmp) / "data", workers=2)[0]
        meta = args.meta or data.parent / f"{data.name}_hidden" / "meta.csv"
        report_data(data, meta, args.workers, args.min_overlap, args.min_similarity)
    if args.simulate:
        report_simulated(args.simulate, args.min_overlap, args.min_similarity)
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
