"""Data pipeline speed per worker: the training item pipeline from the packed cache against per-file reads.

    .venv/bin/python bench/data_speed.py                  # a synthetic set made (and packed) in a temporary folder
    .venv/bin/python bench/data_speed.py --data data      # a real data folder (packed into a temporary work folder)

The training pipeline of the default recipe at a 512 x 512 model input: load (ON panels, 819 x 256 full resolution;
the model resizes on the device), the albumentations recipe, SpecAugment, collation; no model. Measured with
workers=0, one process doing what one DataLoader worker does, with the thread limits a worker gets
(`torch.set_num_threads(1)` from fastai, `cv2.setNumThreads(1)` from `loader_kwargs`, inherited by forked workers),
so the figure is per worker (target: >= 250 samples/s from the cache). Also printed: loading alone (cache vs files),
the same pipeline with the default thread counts, and the time to an epoch's first batch with 2 workers,
`persistent_workers` on and off.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import torch

from seti_fastai.config import TrainConfig, build_config
from seti_fastai.data.cadence import KaggleData
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.data.pack import pack_split, packed_sources, read_cadence
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.learn.datablock import get_dls


def pipeline_rate(cfg, n_batches: int, repeats: int = 3) -> tuple[float, float]:
    """Best of `repeats` runs: samples per wall second and per CPU second of this process (the figure that holds on
    a shared machine) of training batches drawn from the DataLoader, no model."""
    dl = get_dls(cfg, device=torch.device("cpu")).train
    rates = []
    for _ in range(repeats):
        it = iter(dl)
        next(it)  # start-up is not throughput
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        for _ in range(n_batches):
            try:
                x, _ = next(it)
            except StopIteration:
                it = iter(dl)
                x, _ = next(it)
            n += x.shape[0]
        rates.append((n / (time.perf_counter() - start), n / (time.process_time() - cpu)))
    return max(r[0] for r in rates), max(r[1] for r in rates)


def load_rate(paths: list[str], panels, sources) -> tuple[float, float]:
    """Cadences per wall second and per CPU second, loading only."""
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        read_cadence(path, panels, sources)
    return len(paths) / (time.perf_counter() - start), len(paths) / (time.process_time() - cpu)


def first_batch_seconds(cfg, persistent: bool, epochs: int = 3) -> list[float]:
    """Seconds to the first batch of each epoch with `cfg.workers` workers."""
    dls = get_dls(cfg, device=torch.device("cpu"))
    dl = dls.train.new(persistent_workers=persistent) if persistent else dls.train
    out = []
    for _ in range(epochs):
        start = time.perf_counter()
        for i, _ in enumerate(dl):
            if i == 0:
                out.append(time.perf_counter() - start)
            if i == 2:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data root (default: a synthetic set made in a temporary folder)")
    p.add_argument("--n", type=int, default=384, help="cadences in the synthetic train set")
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="model input (the pipeline itself works at full resolution)")
    p.add_argument("--layout", default=TrainConfig.layout, help="input layout (--layout; default the training default)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            write_synthetic(SynthConfig(n_train=args.n, n_test=0, seed=0), data, workers=2)
        work = Path(tmp) / "runs"
        start = time.perf_counter()
        index, n, _ = pack_split(data, "train", work, workers=2)
        print(f"pack train: {n} cadences in {time.perf_counter() - start:.1f} s -> {index.parent}")
        base = build_config(
            overrides=dict(
                data=str(data),
                out=str(work),
                size=[args.size],
                bs=args.bs,
                workers=0,
                epochs=1,
                background="none",
                layout=args.layout,
            )
        )
        kaggle = KaggleData(data)
        paths = [str(p) for p in kaggle.paths("train", kaggle.read_labels("train")["id"])]
        sources = packed_sources(data, paths, work)
        panels = ImageRecipe.from_config(base).source_panels
        print(
            f"{len(paths)} cadences, panels {base.panels}, layout {base.layout}, bs {args.bs}, model input {args.size}"
        )

        torch.set_num_threads(1)  # what a DataLoader worker runs with
        cv2.setNumThreads(1)
        for _ in range(2):  # the second pass is the one with a warm page cache
            cache, files = load_rate(paths, panels, sources), load_rate(paths, panels, None)
        full = load_rate(paths, None, None)
        print(
            f"loading only, cadences/s (wall | per CPU second): cache {cache[0]:.0f} | {cache[1]:.0f}, "
            f"files {files[0]:.0f} | {files[1]:.0f}; files read whole (before) {full[0]:.0f} | {full[1]:.0f}"
        )
        rates = {}
        for mode in ("auto", "off"):
            cfg = copy.copy(base)
            cfg.packed = mode
            rates[mode] = pipeline_rate(cfg, args.batches)
        print(
            f"training item pipeline, 1 worker, samples/s (wall | per CPU second): cache {rates['auto'][0]:.0f} | "
            f"{rates['auto'][1]:.0f}, files {rates['off'][0]:.0f} | {rates['off'][1]:.0f}; "
            "target >= 250 per worker from the cache"
        )

        torch.set_num_threads(os.cpu_count() or 1)  # the defaults, as in the main process
        cv2.setNumThreads(-1)
        default = pipeline_rate(base, args.batches)
        print(
            f"same from the cache with default threads (torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}): "
            f"{default[0]:.0f} | {default[1]:.0f} samples/s"
        )

        cfg = copy.copy(base)
        cfg.workers, cfg.pos_share = 2, None  # plain shuffling: WeightedDL.new() would drop the weights
        for persistent in (False, True):
            seconds = first_batch_seconds(cfg, persistent)
            shown = ", ".join(f"{s:.2f}" for s in seconds)
            print(f"2 workers, persistent_workers={persistent}: first batch of each epoch after {shown} s")


if __name__ == "__main__":
    main()
