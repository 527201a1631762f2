"""Training speed: the fastai loop against a plain PyTorch loop, and the data pipeline alone.

    .venv/bin/python bench/train_speed.py                         # CPU defaults: test_efficientnet at 128
    .venv/bin/python bench/train_speed.py --arch efficientnetv2_s --size 512 --bs 32 --workers 16   # a GPU box

1. fastai vs plain: both consume the same DataLoader (same data, augmentation, batch size) and train the same
   model (same initial weights) for the same number of batches; only the training loop differs. The figure is
   samples/s of the training phase and their ratio (target: fastai >= 0.95 of plain).
2. Data pipeline: training batches drawn from the DataLoader with no model, per worker (target: >= 250 samples/s
   per worker). Items leave the pipeline at full resolution (819 x 256 for the ON panels, fewer pixels than
   512 x 512): the model resizes them on the device.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from fastai.callback.core import Callback

from seti_fastai.config import build_config
from seti_fastai.data.synth import SynthConfig, write_synthetic
from seti_fastai.learn.datablock import get_dls
from seti_fastai.learn.train import build_learner
from seti_fastai.model.heads import SetiLoss


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


def plain_pytorch_epoch(model, dl, device, lr: float) -> tuple[int, float]:
    """The reference: a bare loop over the same DataLoader and model."""
    loss_func = SetiLoss("bce").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n, start = 0, time.perf_counter()
    for x, y in dl:
        out = model(x)
        loss = loss_func(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
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
    p.add_argument("--n", type=int, default=384, help="cadences in the synthetic train set")
    p.add_argument("--arch", default="test_efficientnet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loop comparison")
    p.add_argument("--pipeline-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pipeline-batches", type=int, default=12)
    p.add_argument("--resizer", action="store_true", help="use the learned resizer")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            write_synthetic(SynthConfig(n_train=args.n, n_test=0, seed=0), data, workers=2)
        cfg = build_config(
            overrides=dict(
                data=str(data),
                out=str(Path(tmp) / "runs"),
                arch=args.arch,
                size=[args.size],
                bs=args.bs,
                workers=args.workers,
                resizer=args.resizer,
                epochs=1,
                mixup_p=0.0,
                pretrained=False,  # speed does not depend on the weights; no network
            )
        )
        learn = build_learner(cfg, quiet=True)
        start_state = copy.deepcopy(learn.model.state_dict())
        device = learn.dls.device

        # warm-up (first batches allocate memory, start workers, pick kernels), then measure each loop twice
        plain_model = copy.deepcopy(learn.model).to(device)
        plain_pytorch_epoch(plain_model, learn.dls.train, device, cfg.lr)
        timer = TrainTimer()
        learn.fit(1, cfg.lr, cbs=[timer])
        fastai_rates, plain_rates = [], []
        for _ in range(2):
            learn.model.load_state_dict(start_state)
            learn.fit(1, cfg.lr, cbs=[timer])
            fastai_rates.append(timer.n / timer.seconds)
            plain_model.load_state_dict(start_state)
            n, seconds = plain_pytorch_epoch(plain_model, learn.dls.train, device, cfg.lr)
            plain_rates.append(n / seconds)
        fastai_rate, plain_rate = max(fastai_rates), max(plain_rates)
        print(
            f"device {device}, {args.arch} at {args.size}, bs {args.bs}, {args.workers} workers, "
            f"{len(learn.dls.train_ds)} training cadences, resizer {'on' if args.resizer else 'off'}"
        )
        print(
            f"train loop: fastai {fastai_rate:.1f} samples/s, plain PyTorch {plain_rate:.1f} samples/s, "
            f"ratio {fastai_rate / plain_rate:.3f} (target >= 0.95)"
        )
        for workers in args.pipeline_workers:
            rate = pipeline_rate(cfg, workers, args.pipeline_batches)
            per = rate / max(workers, 1)
            print(f"data pipeline: {workers} worker(s) {rate:.1f} samples/s, {per:.1f} per worker (target >= 250)")


if __name__ == "__main__":
    main()
