"""The fast data path: packed cache (round trip, staleness, read-only data, no partial output), reading only the
panels an image uses, and inference that reads each cadence once for every fold and view."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

import seti_fastai.data.cadence as cadence_module
from seti_fastai.cli import app
from seti_fastai.config import build_config
from seti_fastai.data.cadence import CADENCE_SHAPE, ON_PANELS, KaggleData, load_cadence
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.data.pack import array_path, open_packed, pack_split, packed_sources
from seti_fastai.errors import CadenceFileError, ConfigError, DataLayoutError
from seti_fastai.evaluate.predict import predict
from seti_fastai.learn.transforms import CadenceLoader


def make_data(root: Path, n: int = 8, seed: int = 0, split: str = "train") -> list[str]:
    """A tiny data folder in the Kaggle layout: random cadences, float16 and (every third) float32."""
    rng = np.random.default_rng(seed)
    ids = [f"{seed:03x}{i:012x}" for i in range(n)]
    folder = root / ("train" if split == "train" else "test")
    for i, cadence_id in enumerate(ids):
        path = folder / cadence_id[0] / f"{cadence_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.normal(size=CADENCE_SHAPE).astype(np.float32 if i % 3 == 0 else np.float16))
    labels = "train_labels.csv" if split == "train" else "sample_submission.csv"
    pd.DataFrame({"id": ids, "target": [i % 2 for i in range(n)]}).to_csv(root / labels, index=False)
    return ids


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_pack_round_trip_equals_the_files_within_float16(tmp_path):
    root = tmp_path / "data"
    ids = make_data(root)
    index, n, written = pack_split(root, "train", tmp_path / "work")
    assert written and n == len(ids) and index == root / "packed" / "train.index.csv"
    assert array_path(index).is_file() and np.load(array_path(index), mmap_mode="r").dtype == np.float16
    cache = open_packed(root, "train", tmp_path / "work")
    kaggle = KaggleData(root)
    for i, cadence_id in enumerate(ids):
        expected = load_cadence(kaggle.cadence_path("train", cadence_id))
        got = cache.read(cadence_id)
        if i % 3:  # float16 files: exact
            np.testing.assert_array_equal(got, expected)
        else:  # float32 files: float16 rounding
            np.testing.assert_allclose(got, expected, rtol=2**-11, atol=2**-24)
        np.testing.assert_array_equal(cache.read(cadence_id, ON_PANELS), got[list(ON_PANELS)])
    assert pack_split(root, "train", tmp_path / "work")[2] is False, "an up-to-date cache is reused"


@pytest.mark.parametrize(("panels", "layout"), [("on", "stack"), ("all", "channels"), ("on", "diff")])
def test_cadence_loader_gives_the_same_images_from_the_cache(tmp_path, panels, layout):
    root = tmp_path / "data"
    ids = make_data(root)
    pack_split(root, "train", tmp_path / "work")
    paths = [str(p) for p in KaggleData(root).paths("train", ids)]
    sources = packed_sources(root, paths, tmp_path / "work")
    from_files, from_cache = (
        CadenceLoader(ImageRecipe(panels, layout)),
        CadenceLoader(ImageRecipe(panels, layout), packed=sources),
    )
    for i, path in enumerate(paths):
        a, b = from_files(path), from_cache(path)
        assert a.shape == b.shape
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0 if i % 3 else 2e-3, atol=0 if i % 3 else 2e-3)


def test_stale_or_damaged_caches_are_one_clear_error_and_pack_rebuilds(tmp_path):
    root, work = tmp_path / "data", tmp_path / "work"
    make_data(root, n=6)
    index, _, _ = pack_split(root, "train", work)
    make_data(root, n=7)  # the split gained a cadence
    with pytest.raises(DataLayoutError) as err:
        open_packed(root, "train", work)
    message = str(err.value)
    assert message.startswith(f"{index}: stale packed cache of train (1 of the split's 7 ids missing")
    assert "seti-fastai pack DATA --split train" in message and "--packed off" in message and "\n" not in message
    assert open_packed(root, "train", work, mode="off") is None
    assert pack_split(root, "train", work)[1:] == (7, True), "pack rebuilds a stale cache"
    assert len(open_packed(root, "train", work).rows) == 7

    array = array_path(index)
    with open(array, "r+b") as f:  # cut the array short
        f.truncate(array.stat().st_size // 2)
    with pytest.raises(DataLayoutError, match=r"stale packed cache of train .*array truncated"):
        open_packed(root, "train", work)
    np.save(array, np.zeros((7, 3, 273, 256), np.float16))
    with pytest.raises(DataLayoutError, match=r"array \(7, 3, 273, 256\) float16, expected \(7, 6, rows, 256\)"):
        open_packed(root, "train", work)
    array.unlink()
    with pytest.raises(DataLayoutError, match=r"train\.f16\.npy not found"):
        open_packed(root, "train", work)
    index.unlink()
    assert open_packed(root, "train", work) is None, "auto: no cache, read the files"
    with pytest.raises(DataLayoutError, match="packed cache not found; run `seti-fastai pack"):
        open_packed(root, "train", work, mode="on")


def test_pack_on_read_only_data_writes_to_the_work_folder(tmp_path, monkeypatch):
    import seti_fastai.io as io

    root, work = tmp_path / "data", tmp_path / "work"
    make_data(root)
    before = _files(root)
    real = io.os.access
    monkeypatch.setattr(io.os, "access", lambda p, m: False if Path(p).resolve() == root.resolve() else real(p, m))
    index, _, written = pack_split(root, "train", work)
    assert written and index == work / "packed" / "train.index.csv" and array_path(index).is_file()
    assert _files(root) == before, "nothing was written into the data folder"
    assert open_packed(root, "train", work).index == index


def test_a_bad_file_or_a_full_disk_leaves_no_partial_cache(tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    ids = make_data(root, n=8)
    bad = KaggleData(root).cadence_path("train", ids[5])
    array = np.zeros(CADENCE_SHAPE, np.float16)
    array[3, 7, 9] = np.nan
    np.save(bad, array)
    with pytest.raises(CadenceFileError, match=f"{bad}: 1 NaN or infinite value"):
        pack_split(root, "train", work, workers=2)
    assert not (root / "packed").exists() or _files(root / "packed") == []

    np.save(bad, np.full(CADENCE_SHAPE, 1e6, np.float32))
    with pytest.raises(CadenceFileError, match=f"{bad}: values beyond float16's range"):
        pack_split(root, "train", work)
    assert _files(root / "packed") == []

    np.save(bad, np.zeros(CADENCE_SHAPE, np.float16))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)
    with pytest.raises(DataLayoutError, match="cannot write the packed cache \\(No space left on device\\)"):
        pack_split(root, "train", work)
    assert _files(root / "packed") == []


def test_only_the_used_panels_are_read_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "abc.npy"
    array = np.random.default_rng(0).normal(size=CADENCE_SHAPE).astype(np.float16)
    array[1, 5, 5] = np.nan  # an OFF panel: not used by the ON-panel images
    np.save(path, array)
    calls = []
    real_load = np.load
    monkeypatch.setattr(
        cadence_module.np, "load", lambda *a, **k: calls.append(k.get("mmap_mode")) or real_load(*a, **k)
    )
    on = load_cadence(path, ImageRecipe("on", "stack").source_panels)
    assert calls == ["r"], "a subset of panels is read through a memory map"
    np.testing.assert_array_equal(on, array[list(ON_PANELS)].astype(np.float32))
    with pytest.raises(CadenceFileError, match=r"abc\.npy: 1 NaN or infinite value"):
        load_cadence(path, ImageRecipe("on", "diff").source_panels)  # diff uses all six panels
    assert CadenceLoader(ImageRecipe("on", "stack"))(str(path)).shape == (1, 819, 256)


def test_training_dataloaders_read_the_cache(tmp_path, monkeypatch):
    from seti_fastai.learn.datablock import get_dls

    root, out = tmp_path / "data", tmp_path / "runs"
    make_data(root, n=8)
    pack_split(root, "train", out)
    cfg = build_config(overrides=tiny_overrides(root, out, n_folds=2, pos_share=0))
    opened = []
    real = cadence_module.open_cadence
    monkeypatch.setattr(cadence_module, "open_cadence", lambda p, mmap=False: opened.append(p) or real(p, mmap))
    dls = get_dls(cfg)
    x_cache = dls.valid_ds[0][0]
    assert opened == []
    cfg.packed = "off"
    x_files = get_dls(cfg).valid_ds[0][0]
    assert opened, "--packed off reads the files"
    np.testing.assert_allclose(x_cache.numpy(), x_files.numpy(), atol=2e-3, rtol=2e-3)
    with pytest.raises(ConfigError, match="packed must be one of auto, on, off"):
        build_config(overrides=tiny_overrides(root, out, packed="sometimes"))


def test_inference_reads_each_cadence_once_for_every_fold_and_view(synth_data, trained_runs, monkeypatch):
    root, _ = synth_data
    runs = trained_runs[1]
    before = np.mean([predict([r], root, tta="flips")["target"].to_numpy() for r in runs], axis=0)
    opened = []
    real = cadence_module.open_cadence
    monkeypatch.setattr(cadence_module, "open_cadence", lambda p, mmap=False: opened.append(str(p)) or real(p, mmap))
    after = predict(runs, root, tta="flips", packed="off")["target"].to_numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    paths = [str(p) for p in KaggleData(root).paths("test", KaggleData(root).read_labels("test")["id"])]
    assert sorted(opened) == sorted(paths), "each test cadence opened exactly once for 2 folds x 2 views"


def test_predict_from_the_cache_matches_the_files_and_opens_none(synth_data, trained_runs, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(synth_data[0] / "sample_submission.csv", root)
    shutil.copytree(synth_data[0] / "test", root / "test")
    runs = trained_runs[1]
    from_files = predict(runs, root, tta="flips", packed="off")["target"].to_numpy()
    result = CliRunner().invoke(app, ["pack", str(root), "--split", "test"])  # beside the data: writable
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote 16 cadences of test to {root / 'packed' / 'test.f16.npy'}")
    again = CliRunner().invoke(app, ["pack", str(root), "--split", "all"])
    assert again.stdout.startswith("reusing "), again.output
    opened = []
    real = cadence_module.open_cadence
    monkeypatch.setattr(cadence_module, "open_cadence", lambda p, mmap=False: opened.append(p) or real(p, mmap))
    from_cache = predict(runs, root, tta="flips")["target"].to_numpy()
    assert opened == [], "the packed cache replaces the files"
    np.testing.assert_allclose(from_cache, from_files, rtol=1e-5, atol=1e-6)  # the files are float16: exact


def test_pack_command_errors_are_one_line(tmp_path):
    root = tmp_path / "data"
    make_data(root, n=3)
    for args, message in [
        (["--split", "nope"], "unknown split 'nope'; choose one of train, test, old-train, old-test or all"),
        (["--split", "test"], "sample_submission.csv: file not found"),
    ]:
        result = CliRunner().invoke(app, ["pack", str(root), *args])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
