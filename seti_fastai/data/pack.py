"""The packed cache: every cadence of a split in one memory-mapped float16 file, found by id through an index.

    <where>/packed/<split>.f16.npy      float16, shape (n, 6, rows, 256): row r holds one cadence, all six panels
    <where>/packed/<split>.index.csv    id,row

`<where>` is the data folder when it is writable, otherwise the work folder (`io.derived_path`), as for fold files.
A cache is written atomically: both files go to temporary names first; the array is renamed into place, then the
index, so the index is the mark of a finished cache (an array without its index is no cache). Reading a cadence
slices its row, and only the panels the image uses, out of the memory map: one open file instead of one per cadence,
no `.npy` header to parse per item. Kaggle's files are float16, so their cache is exact; a float32 file is rounded.

Opening a cache checks that it belongs to the split as it is now: the index holds exactly the split's ids, its rows
number the array's, and the array's shape and dtype are right. A cache that fails is stale: one error says to pack
again. (A cadence file rewritten in place with the same id is not noticed: Kaggle's files do not change.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import (
    N_CHANNELS,
    N_PANELS,
    SPLITS,
    KaggleData,
    cadence_rows,
    check_finite,
    is_cadence_shape,
    load_cadence,
    read_npy_header,
)
from seti_fastai.errors import CadenceFileError, DataLayoutError
from seti_fastai.io import atomic_path, derived_path

PACKED_DIR = "packed"
PACKED_MODES = ("auto", "on", "off")
FLOAT16_MAX = float(np.finfo(np.float16).max)
PACK_CHUNK = 64  # cadences read ahead by the threads at a time

PackedMode = Literal["auto", "on", "off"]


def index_path(data: Path | str, split: str, work_dir: Path | str = "runs", chosen: bool = False) -> Path:
    """Where a split's index is (beside the data, else in `work_dir`), or where a new one goes (`derived_path`)."""
    return derived_path(data, f"{PACKED_DIR}/{split}.index.csv", work_dir, chosen)


def array_path(index: Path) -> Path:
    """The array file of an index file (they live side by side)."""
    return index.with_name(index.name.removesuffix(".index.csv") + ".f16.npy")


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as f:
            shape, dtype = read_npy_header(f)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise DataLayoutError(f"{path}: not a readable packed cache ({str(e).strip().splitlines()[0]})") from e
    return shape, dtype


class PackedCache:
    """One split's packed cache, checked against the split's ids. Picklable: a DataLoader worker opens its own
    memory map on first use (a pickled memory map would copy the whole array)."""

    def __init__(self, index: Path, split: str, ids: Sequence[str], folder: Path):
        self.index, self.array_file, self.split, self.folder = Path(index), array_path(Path(index)), split, folder
        self.rows = self._check(ids)
        self._array: np.ndarray | None = None

    def _stale(self, why: str) -> DataLayoutError:
        return DataLayoutError(
            f"{self.index}: stale packed cache of {self.split} ({why}); run `seti-fastai pack DATA --split "
            f"{self.split}` again, or pass --packed off"
        )

    def _check(self, ids: Sequence[str]) -> dict[str, int]:
        if not self.array_file.is_file():
            raise self._stale(f"{self.array_file.name} not found")
        try:
            index = pd.read_csv(self.index, dtype={"id": str})
            rows = dict(zip(index["id"], index["row"].astype(np.int64), strict=True))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, ValueError, TypeError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise self._stale(f"unreadable index: {why}") from e
        shape, dtype = _read_header(self.array_file)
        if len(shape) != 4 or shape[0] != len(index) or not is_cadence_shape(shape[1:]) or dtype != np.float16:
            raise self._stale(f"array {shape} {dtype}, expected ({len(index)}, 6, rows, 256) float16")
        if len(rows) != len(index) or sorted(rows.values()) != list(range(len(index))):
            raise self._stale("index rows are not 0..n-1 once each")
        missing, extra = set(ids) - rows.keys(), rows.keys() - set(ids)
        if missing or extra:
            raise self._stale(f"{len(missing)} of the split's {len(ids)} ids missing, {len(extra)} not in the split")
        size = self.array_file.stat().st_size
        if size < int(np.prod(shape)) * 2:
            raise self._stale(f"array truncated ({size} bytes)")
        return rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_file, mmap_mode="r", allow_pickle=False)
        return self._array

    def __contains__(self, cadence_id: str) -> bool:
        return cadence_id in self.rows

    def read(self, cadence_id: str, panels: Sequence[int] | None = None) -> np.ndarray:
        """float32 (len(panels) or 6, rows, 256) of one cadence, only these panels read, checked finite."""
        row = self.rows[cadence_id]
        part = self.array[row] if panels is None else self.array[row, list(panels)]
        return check_finite(np.asarray(part, dtype=np.float32), f"{self.array_file}: row {row} (id {cadence_id})")


def open_packed(
    data: Path | str, split: str, work_dir: Path | str = "runs", mode: PackedMode = "auto"
) -> PackedCache | None:
    """A split's checked cache; None when `mode` is off, or auto and there is none. A stale cache is an error
    (auto too: silently reading the files instead would hide it); `mode="on"` also errs when there is none."""
    if mode not in PACKED_MODES:
        raise DataLayoutError(f"packed must be one of {', '.join(PACKED_MODES)}; got {mode!r}")
    if mode == "off":
        return None
    kaggle = KaggleData(data)
    index = index_path(kaggle.root, split, work_dir)
    if not index.is_file():
        if mode == "on":
            raise DataLayoutError(
                f"{index}: packed cache not found; run `seti-fastai pack {kaggle.root} --split {split}`"
            )
        return None
    ids = kaggle.read_labels(split)["id"].tolist()
    return PackedCache(index, split, ids, kaggle.root / SPLITS[split].folder)


def folder_key(path: Path | str) -> str:
    """The key of a cadence file's split folder (`<root>/<split folder>`, absolute), for `PackedSources`."""
    return os.path.abspath(Path(path).parent.parent)


PackedSources = dict[str, PackedCache]  # folder_key -> cache


def packed_sources(
    data: Path | str, paths: Sequence[str | Path], work_dir: Path | str = "runs", mode: PackedMode = "auto"
) -> PackedSources | None:
    """The checked caches of every split whose files appear in `paths` (None when there are none)."""
    if mode not in PACKED_MODES:
        raise DataLayoutError(f"packed must be one of {', '.join(PACKED_MODES)}; got {mode!r}")
    if mode == "off":
        return None
    kaggle = KaggleData(data)
    wanted = {folder_key(p) for p in paths}
    sources: PackedSources = {}
    for split, layout in SPLITS.items():
        key = os.path.abspath(kaggle.root / layout.folder)
        if key in wanted and kaggle.has_split(split):
            cache = open_packed(kaggle.root, split, work_dir, mode)
            if cache is not None:
                sources[key] = cache
    return sources or None


def read_cadence(path: Path | str, panels: Sequence[int] | None = None, sources: PackedSources | None = None):
    """A cadence (float32, `panels` only) from its split's packed cache when there is one, else from its file."""
    if sources:
        cache = sources.get(folder_key(path))
        cadence_id = Path(path).stem
        if cache is not None and cadence_id in cache:
            return cache.read(cadence_id, panels)
    return load_cadence(path, panels)


# ----------------------------------------------------------------------------------------------------------------
# writing


def _to_float16(path: Path) -> np.ndarray:
    cadence = load_cadence(path)
    if np.abs(cadence).max() > FLOAT16_MAX:
        raise CadenceFileError(f"{path}: values beyond float16's range ({FLOAT16_MAX:g}) cannot be packed")
    return cadence.astype(np.float16)


def pack_split(
    data: Path | str,
    split: str,
    work_dir: Path | str = "runs",
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
    chosen: bool = False,
) -> tuple[Path, int, bool]:
    """Write (or reuse) the packed cache of `split`: (index path, cadences, whether it was written); in `work_dir`
    when the user `chosen` it, else beside the data when writable (`derived_path`).

    Every file is loaded and validated as training would (shape, dtype, finiteness); the first bad one stops the
    pack with its name and nothing is left behind. `workers` threads read files ahead (reading releases the GIL).
    """
    kaggle = KaggleData(data)
    ids = kaggle.read_labels(split)["id"].tolist()
    kaggle.check_files(split, ids)
    index = index_path(kaggle.root, split, work_dir, chosen)
    if index.is_file():
        try:
            PackedCache(index, split, ids, kaggle.root / SPLITS[split].folder)
            return index, len(ids), False
        except DataLayoutError:
            pass  # stale: rebuilt below
    array = array_path(index)
    paths = kaggle.paths(split, ids)
    try:
        with atomic_path(index) as tmp_index, atomic_path(array) as tmp_array:
            shape = (len(ids), N_PANELS, cadence_rows(paths[0]), N_CHANNELS)  # check_arrays: one shape per split
            out = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.float16, shape=shape)
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for start in range(0, len(paths), PACK_CHUNK):  # a chunk at a time: bounded memory
                    for row, cadence in enumerate(pool.map(_to_float16, paths[start : start + PACK_CHUNK]), start):
                        if cadence.shape != shape[1:]:
                            raise CadenceFileError(
                                f"{paths[row]}: shape {cadence.shape}, the split's first cadence has {shape[1:]}"
                            )
                        out[row] = cadence
                    if progress is not None:
                        progress(min(PACK_CHUNK, len(paths) - start))
            out.flush()
            del out
            pd.DataFrame({"id": ids, "row": np.arange(len(ids))}).to_csv(tmp_index, index=False)
            index.unlink(missing_ok=True)  # the index goes last: between the two renames there is no cache
    except OSError as e:
        raise DataLayoutError(
            f"{array}: cannot write the packed cache ({e.strerror or e}); free space or choose a writable --out"
        ) from e
    return index, len(ids), True


def packable_splits(data: Path | str, split: str) -> list[str]:
    """`split` itself, or every split present for "all"."""
    kaggle = KaggleData(data)
    if split == "all":
        present = [s for s in SPLITS if kaggle.has_split(s)]
        if not present:
            raise DataLayoutError(f"{kaggle.root}: no split to pack")
        return present
    if split not in SPLITS:
        raise DataLayoutError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
    return [split]
