"""Distributed data parallel (DDP) training under `accelerate launch` or `torchrun`, on one or several machines.

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK; without them (one process) every helper here is a no-op, so
single-process runs neither import accelerate nor wait anywhere.

- `init_distributed`: join the process group (nccl on CUDA, gloo on CPU) through accelerate's `PartialState`.
- `rank`, `world_size`, `is_main`, `barrier`, `rank0_first`: who writes, and waiting for it.
- `ddp_ctx`: fastai's `DistributedTrainer` (DDP model, `DistributedDL` loaders) for the duration of a fit.
- `gather_predictions`: every item of a DataLoader predicted exactly once across ranks, in its order.
- `unwrap_model`, `unwrap_dl`: the plain model and DataLoader inside DDP / `DistributedDL`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from fastai.torch_core import num_distrib, rank_distrib, to_detach

T = TypeVar("T")


def world_size() -> int:
    """Processes in this run (1 without a launcher)."""
    return max(num_distrib(), 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return rank_distrib()


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the only process that writes the run directory and prints."""
    return rank() == 0


def init_distributed() -> None:
    """Join the process group when launched as several processes: nccl on CUDA (one GPU per local rank), gloo on
    CPU. Does nothing in a single process, or when the group already exists."""
    if not is_distributed() or (dist.is_available() and dist.is_initialized()):
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed() and dist.is_initialized():
        dist.barrier()


def rank0_first(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func(*args, **kwargs)` on rank 0 first (it may write a derived file), then on the other ranks (they read it)."""
    if not is_distributed():
        return func(*args, **kwargs)
    result = func(*args, **kwargs) if is_main() else None
    barrier()
    if not is_main():
        result = func(*args, **kwargs)
    barrier()
    return result  # type: ignore[return-value]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def unwrap_dl(dl: Any) -> Any:
    """The DataLoader inside fastai's `DistributedDL` (which stores it as `.dl`), or `dl` itself."""
    inner = vars(dl).get("dl")
    return inner if inner is not None else dl


def _device() -> torch.device:
    """Where collectives run: the local GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over ranks (the values themselves in a single process)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def _local_to_detach(b: Any, cpu: bool = True, gather: bool = True) -> Any:
    """`to_detach` without fastai's all-gather: shards of different lengths are gathered by `gather_predictions`."""
    return to_detach(b, cpu, gather=False)


def gather_predictions(learn: Any, dl: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs and targets of every item of the un-shuffled `dl`, in its order, each exactly once.

    Each rank predicts the items rank, rank + world_size, ... (no padding, unlike `DistributedDL`); the shards travel
    with their indices and are put back in order on every rank. In a single process: `learn.get_preds(dl=dl)`.
    Call it outside `ddp_ctx` (the model unwrapped), on every rank.
    """
    if not is_distributed():
        return learn.get_preds(dl=dl, act=lambda o: o)
    mine = list(range(rank(), len(dl.dataset), world_size()))
    shard = dl.new(get_idxs=partial(list, mine), n=len(mine), shuffle=False, drop_last=False)  # picklable
    shard.to_detach = _local_to_detach  # get_preds and the metrics would otherwise all-gather uneven shards
    out, targets = learn.get_preds(dl=shard, act=lambda o: o, reorder=False) if mine else (None, None)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (mine, out, targets))
    idx = torch.tensor([i for part in parts for i in part[0]])
    order = torch.argsort(idx)
    if not torch.equal(idx[order], torch.arange(len(dl.dataset))):
        raise RuntimeError("gather_predictions: the shards do not cover the DataLoader exactly once")
    outs = torch.cat([p[1] for p in parts if p[1] is not None])
    tgts = torch.cat([p[2] for p in parts if p[2] is not None])
    return outs[order], tgts[order]


def _distributed_classes() -> tuple[type, type]:
    """fastai's `DistributedDL` and `DistributedTrainer`, with the index broadcast on the CPU under gloo (fastai's
    `_broadcast` moves the indices to CUDA, which gloo on a CPU machine cannot)."""
    from fastai.distributed import DistributedDL, DistributedTrainer

    class SetiDistributedDL(DistributedDL):
        def _broadcast(self, t: list[int], rank: int) -> list[int]:
            if not dist.is_initialized():
                return list(t)
            tensor = torch.tensor(t, dtype=torch.long, device=_device())
            dist.broadcast(tensor, rank)
            return tensor.cpu().tolist()

    class SetiDistributedTrainer(DistributedTrainer):
        def _wrap_dl(self, dl: Any) -> Any:
            if isinstance(dl, DistributedDL):
                return dl
            return SetiDistributedDL(dl, device=self.learn.model.device)

    return SetiDistributedDL, SetiDistributedTrainer


def distributed_dl(dl: Any, rank: int | None = None, world_size: int | None = None) -> Any:
    """fastai's `DistributedDL` over `dl` (rank 0's index draw, broadcast, sliced per rank; gloo-safe)."""
    return _distributed_classes()[0](dl, rank=rank, world_size=world_size)


@contextmanager
def ddp_ctx(learn: Any) -> Iterator[Any]:
    """fastai's `distrib_ctx` with the gloo-safe loaders: DDP model and `DistributedDL` loaders during a fit.

    SyncBatchNorm on CUDA only (it has no CPU kernel); fastai's own MixedPrecision callback keeps mixed precision
    (accelerate's is off, so `accelerate launch --mixed_precision` does not scale the loss twice).
    """
    if not is_distributed():
        yield learn
        return
    init_distributed()
    cuda = torch.cuda.is_available()
    trainer = _distributed_classes()[1](sync_bn=cuda, cpu=not cuda, mixed_precision="no")
    learn.add_cb(trainer)
    try:
        yield learn
    finally:
        learn.remove_cb(trainer)
