"""Channels-last against contiguous memory format: training steps/s of the default backbones, fp32.

    nice -n 19 .venv/bin/python bench/channels_last.py     # resnet18 + tf_efficientnetv2_s, 256 and 512
    nice -n 19 .venv/bin/python bench/channels_last.py --arch resnet18 --size 256 --steps 3 --device cuda

Each configuration trains the same model (same initial weights) on the same random batch for `--steps` timed steps
after one warm-up step, alternating the two formats `--repeats` times; the best time of each counts. Forward +
backward + SGD step, which is what training does. `--max-seconds` caps the whole run (what is measured so far is
printed).
"""

from __future__ import annotations

import argparse
import copy
import time

import timm
import torch


def step_time(model: torch.nn.Module, x: torch.Tensor, steps: int, channels_last: bool) -> float:
    """Seconds per training step (forward, backward, SGD step) after one warm-up step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()

    def one() -> None:
        loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["resnet18", "tf_efficientnetv2_s"])
    p.add_argument("--size", type=int, nargs="+", default=[256, 512])
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=float, default=1800)
    args = p.parse_args()
    deadline = time.perf_counter() + args.max_seconds
    device = torch.device(args.device)
    print(f"device {device}, bs {args.bs}, fp32, {args.steps} timed steps, best of {args.repeats}, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print("| arch | size | contiguous s/step | channels_last s/step | speed-up |")
    print("|---|---|---|---|---|")
    for arch in args.arch:
        base = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=1).to(device)
        for size in args.size:
            torch.manual_seed(0)
            x = torch.randn(args.bs, 1, size, size, device=device)
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.repeats):
                for cl in (False, True):
                    if time.perf_counter() > deadline:
                        break
                    best[cl] = min(best[cl], step_time(copy.deepcopy(base), x, args.steps, cl))
            speed_up = best[False] / best[True]
            print(f"| {arch} | {size} | {best[False]:.3f} | {best[True]:.3f} | {speed_up:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
