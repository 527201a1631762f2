"""The DataBlock: which cadences train and validate a run, weighted sampling, and test DataLoaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from fastai.callback.data import WeightedDL  # noqa: F401  (patches DataBlock.weighted_dataloaders)
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import ColReader, ColSplitter

from seti_fastai.config import TrainConfig
from seti_fastai.data.cadence import KaggleData, read_id_numbers
from seti_fastai.data.folds import check_fold, load_or_make_folds
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.data.pack import PackedSources, packed_sources
from seti_fastai.errors import ConfigError, DataLayoutError, LabelFileError
from seti_fastai.io import derived_path
from seti_fastai.learn.augment import AugRecipe, augmentations
from seti_fastai.learn.transforms import CadenceLoader, Partners, to_float_target


def _with_paths(kaggle: KaggleData, split: str, df: pd.DataFrame) -> pd.DataFrame:
    kaggle.check_files(split, df["id"])
    return df.assign(path=[str(p) for p in kaggle.paths(split, df["id"])])


def training_items(cfg: TrainConfig) -> pd.DataFrame:
    """`id, target, path, is_valid` for the run's stage.

    finetune: train/ with the validation fold from the fold CSV (made once, then reused; beside the data, or in the
    runs folder `cfg.out` when the data are read-only);
    pretrain: all of old_leaky_data/train_old for training, test_old (labelled) for validation.
    With `cfg.pseudo`, the pseudo-labelled test cadences join the training split (see `with_pseudo`).
    """
    kaggle = KaggleData(cfg.data)
    if cfg.stage == "pretrain":
        for split in ("old-train", "old-test"):
            if not kaggle.has_split(split):
                raise DataLayoutError(f"{kaggle.labels_path(split)}: file not found (pretraining needs old_leaky_data)")
        train = _with_paths(kaggle, "old-train", kaggle.read_labels("old-train")).assign(is_valid=False)
        valid = _with_paths(kaggle, "old-test", kaggle.read_labels("old-test")).assign(is_valid=True)
        return with_pseudo(cfg, kaggle, pd.concat([train, valid], ignore_index=True))
    labels = kaggle.read_labels("train")
    folds, _, _ = load_or_make_folds(labels, kaggle.root, k=cfg.n_folds, seed=cfg.fold_seed, work_dir=cfg.out)
    check_fold(folds, cfg.fold)
    items = _with_paths(kaggle, "train", folds)
    return with_pseudo(cfg, kaggle, items.assign(is_valid=items["fold"] == cfg.fold).drop(columns="fold"))


def with_pseudo(cfg: TrainConfig, kaggle: KaggleData, items: pd.DataFrame) -> pd.DataFrame:
    """`items` plus the pseudo-labelled test cadences of `cfg.pseudo`, all in the training split (is_valid False),
    their targets 0/1 or soft. A pseudo id that is a train id, or already among `items`, is an error."""
    if not cfg.pseudo:
        return items
    from seti_fastai.data.tables import read_pseudo_labels

    pseudo = read_pseudo_labels(cfg.pseudo, kaggle, exclude=items["id"])
    return pd.concat([items, _with_paths(kaggle, "test", pseudo).assign(is_valid=False)], ignore_index=True)


def sample_weights(targets: np.ndarray, pos_share: float | None, importance: np.ndarray | None = None) -> np.ndarray:
    """Per-item weights of the weighted draw: within each class in proportion to `importance` (default: equal), the
    classes scaled so that a draw is positive with probability `pos_share` (a soft target counts as positive from
    0.5 up). `pos_share=None` leaves the classes their share of the importance."""
    positive = np.asarray(targets, dtype=float) >= 0.5
    weight = np.ones(len(positive)) if importance is None else np.asarray(importance, dtype=float)
    if pos_share is None or positive.all() or not positive.any():
        return weight / weight.sum()
    return np.where(
        positive, pos_share * weight / weight[positive].sum(), (1 - pos_share) * weight / weight[~positive].sum()
    )


def read_sample_weights(path: Path | str, ids: pd.Series) -> np.ndarray:
    """The `weight` of each of `ids` from a CSV `id, weight` (e.g. `adversarial_weights.csv` of `seti-fastai
    adversarial --weights`); ids the file does not list weigh 1. Errors name the file and the first bad row: a
    weight that is not a positive number, an id that is not one of `ids`, and `read_id_csv`'s checks of the ids."""
    path = Path(path)
    listed = read_id_numbers(path, "weight", lambda w: w > 0, "a positive number")
    known = set(ids)
    for i, cadence_id in enumerate(listed["id"]):
        if cadence_id not in known:
            raise LabelFileError(f"{path}: row {i + 2}: id {cadence_id} is not a training cadence of this run")
    by_id = dict(zip(listed["id"], listed["weight"], strict=True))
    return np.array([by_id.get(cadence_id, 1.0) for cadence_id in ids])


def load_partners(data: Path | str, matches: Path | str | None, work_dir: Path | str, max_partners: int) -> Partners:
    """Cadence id -> its best overlapping partners' files and shifts, from `matches.csv` (found beside the data or
    in `work_dir` unless given), checked against the ids of every split present."""
    from seti_fastai.data.background import partner_paths, read_matches
    from seti_fastai.data.cadence import SPLITS

    kaggle = KaggleData(data)
    path = Path(matches) if matches else derived_path(kaggle.root, "matches.csv", work_dir)
    if not path.is_file():
        raise DataLayoutError(
            f"{path}: matches file not found; run `seti-fastai match {kaggle.root}` first or pass --matches"
        )
    known = {i for split in SPLITS if kaggle.has_split(split) for i in kaggle.read_labels(split)["id"]}
    return partner_paths(read_matches(path, known), kaggle, max_partners)


def resolve_background(cfg: TrainConfig, say: Callable[[str], None] | None = None) -> TrainConfig:
    """`cfg` with `--background auto` resolved: subtract, with `matches` set to the data's matches.csv (found beside
    the data or in `--out`, else made first by `data.background.find_or_match`, which says so through `say`). The
    resolved values are what config.yaml records, so prediction subtracts as training did."""
    if cfg.background != "auto":
        return cfg
    from seti_fastai.data.background import find_or_match

    matches = cfg.matches or str(find_or_match(cfg.data, cfg.out, say, workers=min(4, cfg.workers)))
    return dataclasses.replace(cfg, background="subtract", matches=matches)


def resolve_rows(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `rows` found from the data (the first cadence of the split it trains on); a given `--rows` the data
    contradict is a ConfigError. config.yaml records it: prediction and scanning check their data against it."""
    split = "old-train" if cfg.stage == "pretrain" else "train"
    found = KaggleData(cfg.data).rows(split)
    if cfg.rows is not None and cfg.rows != found:
        raise ConfigError(f"--rows {cfg.rows}: the {split} cadences of {cfg.data} hold {found} rows per panel")
    return dataclasses.replace(cfg, rows=found)


def same_data(a: Path | str, b: Path | str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def run_partners(
    cfg: TrainConfig, data: Path | str | None = None, say: Callable[[str], None] | None = None
) -> Partners | None:
    """The partners a run's background subtraction uses on `data` (default: its training data), or None. On other
    data than the run's, that data's own matches.csv (found, or made first as `--background auto` does)."""
    cfg = resolve_background(cfg, say)
    if cfg.background != "subtract":
        return None
    if data is not None and not same_data(data, cfg.data):
        from seti_fastai.data.background import find_or_match

        return load_partners(data, find_or_match(data, cfg.out, say), cfg.out, cfg.max_partners)
    return load_partners(cfg.data, cfg.matches, cfg.out, cfg.max_partners)


def run_packed(
    cfg: TrainConfig, paths, partners: Partners | None = None, data=None, mode: str | None = None
) -> PackedSources | None:
    """The packed caches (`mode`, default `cfg.packed`) of the splits that `paths` and their partners come from,
    looked for beside `data` (default `cfg.data`) and in `cfg.out`; None when there are none."""
    partner_files = [p for found in (partners or {}).values() for p, _ in found]
    return packed_sources(data or cfg.data, [*paths, *partner_files], cfg.out, mode or cfg.packed)


def loader_kwargs(device=None) -> dict:
    """DataLoader options of the fast data path: pinned memory for a CUDA device. OpenCV goes single-threaded here,
    in the parent, so forked workers inherit it: N workers do not each start a thread per core (bench/data_speed.py),
    and no worker calls `cv2.setNumThreads` after a fork (that can deadlock on the pool's lock held at fork time)."""
    cv2.setNumThreads(1)
    dev = torch.device(device) if device is not None else None
    cuda = torch.cuda.is_available() and (dev is None or dev.type == "cuda")
    return dict(pin_memory=cuda)


def data_block(
    cfg: TrainConfig,
    image: ImageRecipe,
    aug: AugRecipe,
    partners: Partners | None = None,
    packed: PackedSources | None = None,
) -> DataBlock:
    item_tfms, batch_tfms = augmentations(cfg, image, aug)  # --aug-device gpu: augmentations move to batch_tfms
    return DataBlock(
        blocks=(TransformBlock(type_tfms=CadenceLoader(image, partners, packed)),
                TransformBlock(type_tfms=to_float_target)),
        get_x=ColReader("path"),
        get_y=ColReader("target"),
        splitter=ColSplitter("is_valid"),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )  # fmt: skip


def get_dls(
    cfg: TrainConfig,
    items: pd.DataFrame | None = None,
    bs: int | None = None,
    device=None,
    image: ImageRecipe | None = None,
    aug: AugRecipe | None = None,
) -> DataLoaders:
    """Train/valid DataLoaders. With `cfg.pos_share`, training batches are drawn with replacement so that the
    minority class makes up about that share of each batch; with `cfg.sample_weights`, each cadence within its class
    in proportion to its weight. `image` and `aug`: the run's resolved recipes (a `RunPlan` passes its own), else
    resolved here from `cfg`."""
    cfg = resolve_background(cfg)  # a RunPlan's config is resolved already
    items = training_items(cfg) if items is None else items
    image = image or ImageRecipe.from_config(cfg)
    aug = aug or AugRecipe.from_config(cfg, image)
    partners = run_partners(cfg)
    block = data_block(cfg, image, aug, partners, run_packed(cfg, items["path"], partners))
    kwargs = dict(bs=bs or cfg.bs, num_workers=cfg.workers, device=device, **loader_kwargs(device))
    importance = read_sample_weights(cfg.sample_weights, items["id"]) if cfg.sample_weights else None
    if cfg.pos_share is None and importance is None:
        return block.dataloaders(items, **kwargs)
    train = ~items["is_valid"].to_numpy(bool)  # fastai draws from the training split only: normalise over it
    weights = np.zeros(len(items))
    weights[train] = sample_weights(
        items["target"].to_numpy()[train], cfg.pos_share, None if importance is None else importance[train]
    )
    return block.weighted_dataloaders(items, weights, **kwargs)


def test_dl(dls: DataLoaders, paths: list[str], bs: int | None = None, num_workers: int | None = None) -> TfmdDL:
    """An unlabelled, un-augmented DataLoader over cadence files, in the given order."""
    items = pd.DataFrame({"path": [str(p) for p in paths]})
    kwargs = {} if num_workers is None else {"num_workers": num_workers}
    return dls.test_dl(items, bs=bs or dls.valid.bs, **kwargs)
