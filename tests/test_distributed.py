"""Distributed training (DDP): the weighted draw split across ranks, and a real 2-process gloo run via torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_flags
from fastai.callback.data import WeightedDL

from seti_fastai.learn.callbacks import rank_seed
from seti_fastai.learn.datablock import sample_weights
from seti_fastai.learn.distributed import distributed_dl, rank0_first, unwrap_dl, unwrap_model

ROOT = Path(__file__).resolve().parents[1]


def _weighted_dl(n: int, pos_rate: float, pos_share: float, bs: int = 32) -> tuple[WeightedDL, np.ndarray]:
    targets = (np.random.default_rng(0).random(n) < pos_rate).astype(int)
    dl = WeightedDL(dataset=list(range(n)), bs=bs, wgts=sample_weights(targets, pos_share), shuffle=True)
    return dl, targets


def _rank_draws(dl: WeightedDL, seed: int, world: int) -> list[list[np.ndarray]]:
    """The batches each rank of `world` draws in an epoch seeded with `seed` (rank 0's draw is the one broadcast)."""
    draws = []
    for r in range(world):
        np.random.seed(seed)
        draws.append([b.numpy() for b in distributed_dl(dl, rank=r, world_size=world)])
    return draws


def _flat(batches: list[np.ndarray]) -> list[int]:
    return np.concatenate(batches).tolist()


def test_weighted_draw_is_split_across_ranks_with_its_positive_share():
    dl, targets = _weighted_dl(4096, pos_rate=0.1, pos_share=0.5)
    np.random.seed(3)
    full = dl.get_idxs()  # one process, same seed
    draws = _rank_draws(dl, seed=3, world=2)
    assert [len(_flat(d)) for d in draws] == [2048, 2048]
    assert _flat(draws[0]) + _flat(draws[1]) == full  # disjoint slices of one draw: no batch is seen twice
    for batches in draws:
        shares = [targets[b].mean() for b in batches]
        assert len(shares) == 64 and abs(np.mean(shares) - 0.5) < 0.03  # the share holds on every rank, not 0.1
    again = _rank_draws(dl, seed=3, world=2)
    assert all(_flat(a) == _flat(b) for a, b in zip(again, draws, strict=True))  # reproducible from the seed
    assert _flat(_rank_draws(dl, seed=4, world=2)[0]) != _flat(draws[0])


def test_distributed_dl_pads_to_equal_shards():
    dl, _ = _weighted_dl(13, pos_rate=0.3, pos_share=0.5, bs=4)
    draws = _rank_draws(dl, seed=0, world=2)
    assert [len(_flat(d)) for d in draws] == [7, 7]  # fastai pads: the valid fold needs `gather_predictions`


def test_single_process_helpers_are_no_ops():
    model = torch.nn.Linear(2, 1)
    assert unwrap_model(model) is model
    assert unwrap_dl(model) is model
    assert rank0_first(lambda a, b: a + b, 1, b=2) == 3


def test_rank_seeds_keep_rank_zero_and_differ_elsewhere():
    seeds = [rank_seed(12345, r) for r in range(8)]
    assert seeds[0] == 12345 and len(set(seeds)) == 8  # rank 0 is a single process; augmentations differ per rank


LAUNCHER = """
import os, sys
from pathlib import Path

log = Path(os.environ["WRITE_LOG"] + "." + os.environ["RANK"])
watched = os.environ["WATCH_DIR"]
_replace = os.replace

def logged_replace(src, dst, *args, **kwargs):  # every atomic write of seti_fastai ends in os.replace
    if str(dst).startswith(watched):
        with log.open("a") as f:
            f.write(str(dst) + "\\n")
    return _replace(src, dst, *args, **kwargs)

os.replace = logged_replace
from seti_fastai.cli import run_command

run_command("train")
"""


@pytest.fixture(scope="module")
def ddp_run(synth_data, tmp_path_factory):
    """One tiny fold trained by 2 CPU processes (gloo) under torchrun; every file rename logged per rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    launcher = tmp / "launch_train.py"
    launcher.write_text(LAUNCHER)
    out = tmp / "runs"
    flags = tiny_flags(synth_data[0], out, n_folds=5, fold=1)  # 5 folds: an odd validation fold (13 cadences)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "WRITE_LOG": str(tmp / "writes"),
        "WATCH_DIR": str(out),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher)]
    proc = subprocess.run([*cmd, *flags, "--quiet"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "exp" / "fold1", tmp, proc.stdout


def test_ddp_run_writes_once_from_rank_zero(ddp_run):
    run_dir, tmp, stdout = ddp_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml", "history.csv", "metrics.json", "model.pth", "oof.csv"
    ]  # fmt: skip
    assert not (tmp / "writes.1").exists()  # rank 1 wrote nothing
    writes = [Path(p).name for p in (tmp / "writes.0").read_text().split()]
    for name in ("config.yaml", "history.csv", "model.pth", "last.pth", "oof.csv", "metrics.json"):
        assert writes.count(name) == 1, (name, writes)  # 1 epoch: each file once
    assert stdout.count("best validation AUC") == 1  # rank 0 prints
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert len(pd.read_csv(run_dir / "history.csv")) == 1


def test_ddp_oof_covers_the_fold_once_and_matches_one_process(ddp_run):
    from seti_fastai.config import load_run_config
    from seti_fastai.learn.datablock import training_items
    from seti_fastai.learn.train import build_learner
    from seti_fastai.model.checkpoint import load_weights
    from seti_fastai.model.heads import log_odds, roc_auc

    run_dir = ddp_run[0]
    cfg = load_run_config(run_dir)
    items = training_items(cfg)
    valid = items[items["is_valid"]]
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(valid) % 2 == 1  # the distributed sampler had to pad
    assert oof["id"].is_unique and list(oof["id"]) == list(valid["id"])
    assert list(oof["target"]) == list(valid["target"])

    learn = build_learner(cfg, items, quiet=True)  # one process: the saved weights on the whole fold
    learn.model.load_state_dict(load_weights(run_dir / "model.pth"))
    out, targets = learn.get_preds(dl=learn.dls.valid, act=lambda o: o)
    auc = roc_auc(out, targets)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    assert metrics["oof_auc"] == pytest.approx(auc, abs=1e-6)
    assert history["roc_auc"].iloc[0] == pytest.approx(auc, abs=1e-6)  # the epoch's AUC is the whole fold's
    np.testing.assert_allclose(oof["logit"], log_odds(out).float().numpy(), rtol=1e-4, atol=1e-4)
