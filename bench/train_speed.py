"""Training speed: the project's default training pipeline against the plain PyTorch + timm loop a user would write.

    nice -n 19 .venv/bin/python bench/train_speed.py                  # CPU: test_efficientnet at 128, 2 workers
    .venv/bin/python bench/train_speed.py --arch tf_efficientnetv2_s --size 512 --bs 32 --workers 8   # a GPU box

1. project vs plain, in one run, on the same synthetic data, same backbone (random weights), batch, input size,
   workers and optimiser (Adam, decoupled weight decay 0.01):
   - project: `build_learner` of the default config (fastai DataBlock, albumentations recipe + SpecAugment in the
     workers, or on the device with `--aug-device gpu`; weighted sampling of 25% positives; mixup on half the
     batches; the model resizes the 819 x 256 image to --size; one-cycle schedule; metrics, history, checkpoints);
   - plain: a `Dataset` that loads the .npy, stacks the ON panels, resizes to --size (cv2) and flips the frequency
     axis half the time, a shuffling `DataLoader`, the timm model and a bare loop.
   The figure is samples/s of the training phase of an epoch (validation is not timed), best of `--repeats`
   epochs after a warm-up epoch, and their ratio (target: project >= 0.9 of plain). The learned resizer is off
   (`--resizer` turns it on): with it the project trains a bigger model than the plain loop.
2. Data pipeline: training batches drawn from the project's DataLoader with no model, per worker.
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
import numpy as np
import timm
import torch
from fastai.callback.core import Callback

from seti_fastai.config import build_config
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.learn.datablock import get_dls, training_items
from seti_fastai.learn.plan import device_precision
from seti_fastai.learn.train import build_learner


class TrainTimer(Callback):
    """Wall time and samples of the training phase only (no validation)."""

    order = 99

    def before_train(self):
        self.n, self.start = 0, time.perf_counter()

    def after_batch(self):
        if self.training:
            self.n += self.xb[0].shape[0]

    def after_train(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


class PlainDataset(torch.utils.data.Dataset):
    """What a user writes: load the .npy, stack the ON panels, resize, flip the frequency axis half the time."""

    def __init__(self, paths: list[str], targets: np.ndarray, size: int, train: bool = True):
        self.paths, self.targets, self.size, self.train = paths, targets.astype(np.float32), size, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = np.load(self.paths[i])[[0, 2, 4]].astype(np.float32).reshape(-1, 256)  # (819, 256)
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.train and np.random.rand() < 0.5:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image))[None], torch.tensor(self.targets[i])


def plain_epoch(model, dl, device, opt, precision: str, scaler) -> tuple[int, float]:
    """The reference loop: forward (autocast in the project's mixed precision), BCE, backward, step."""
    loss_func = torch.nn.BCEWithLogitsLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()
    n, start = 0, time.perf_counter()
    for x, y in dl:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_func(model(x).squeeze(1).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        n += x.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n, time.perf_counter() - start


def pipeline_rate(cfg, workers: int, n_batches: int) -> float:
    cfg = copy.copy(cfg)
    cfg.workers = workers
    dl = get_dls(cfg, device=torch.device("cpu")).train
    it = iter(dl)
    next(it)  # worker start-up is not throughput
    n, start = 0, time.perf_counter()
    for _ in range(n_batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(dl)
            x, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data root (default: a synthetic set made in a temporary folder)")
    p.add_argument("--n", type=int, default=320, help="cadences in the synthetic train set")
    p.add_argument("--arch", default="test_efficientnet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loops")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs of each loop (after one warm-up epoch)")
    p.add_argument("--aug-device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--resizer", action="store_true", help="the project's learned resizer (a bigger model)")
    p.add_argument("--pipeline-workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--pipeline-batches", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=1800, help="stop timing epochs after this long")
    args = p.parse_args()
    deadline = time.perf_counter() + args.max_seconds

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            write_synthetic(SynthConfig(n_train=args.n, n_test=0, seed=0), data, workers=2)
        cfg = build_config(
            overrides=dict(
                data=str(data), out=str(Path(tmp) / "runs"), arch=args.arch, size=[args.size], bs=args.bs,
                workers=args.workers, resizer=args.resizer, epochs=1, aug_device=args.aug_device,
                pretrained=False,  # speed does not depend on the weights; no network
                background="none", layout="stack",  # the plain reference's image: raw ON panels stacked
            )
        )  # fmt: skip
        items = training_items(cfg)
        learn = build_learner(cfg, items, quiet=True)
        device = learn.dls.device
        train = items[~items["is_valid"]]
        plain_ds = PlainDataset(train["path"].tolist(), train["target"].to_numpy(), args.size)
        plain_dl = torch.utils.data.DataLoader(
            plain_ds, batch_size=args.bs, shuffle=True, drop_last=True, num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        torch.manual_seed(cfg.seed)
        plain_model = timm.create_model(args.arch, in_chans=1, num_classes=1, drop_rate=cfg.drop_rate).to(device)
        if device.type == "cuda":
            plain_model = plain_model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(plain_model.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
        precision = device_precision(cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        timer = TrainTimer()
        project_rates, plain_rates = [], []
        for i in range(args.repeats + 1):  # the first epoch of each warms up (workers, allocator, kernels)
            if i and time.perf_counter() > deadline:
                break
            learn.fit_one_cycle(1, cfg.lr, cbs=[timer])
            n, seconds = plain_epoch(plain_model, plain_dl, device, opt, precision, scaler)
            if i:
                project_rates.append(timer.n / timer.seconds)
                plain_rates.append(n / seconds)
        project, plain = max(project_rates), max(plain_rates)
        print(
            f"device {device}, {args.arch} at {args.size}, bs {args.bs}, {args.workers} workers, {len(train)} training "
            f"cadences, aug on {args.aug_device}, resizer {'on' if args.resizer else 'off'}, precision {precision}"
        )
        print(
            f"train: project {project:.1f} samples/s, plain PyTorch + timm {plain:.1f} samples/s, "
            f"ratio {project / plain:.3f} (target >= 0.9); epochs {[round(r, 1) for r in project_rates]} vs "
            f"{[round(r, 1) for r in plain_rates]}"
        )
        what = f"{args.arch} at {args.size}, {precision}, aug on {args.aug_device}"
        print(f"RESULT | train samples/s, project ({what}) | {project:.1f}")
        print(f"RESULT | train samples/s, plain PyTorch + timm loop | {plain:.1f}")
        print(f"RESULT | ratio project / plain (target >= 0.9) | {project / plain:.3f}")
        for workers in args.pipeline_workers:
            rate = pipeline_rate(cfg, workers, args.pipeline_batches)
            per = rate / max(workers, 1)
            print(f"data pipeline: {workers} worker(s) {rate:.1f} samples/s, {per:.1f} per worker")
            print(f"RESULT | data pipeline, {workers} worker(s), samples/s per worker | {per:.1f}")


if __name__ == "__main__":
    main()
