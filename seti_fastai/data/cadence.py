"""The Kaggle data layout: label CSVs, id -> file, loading and validating a cadence (images: `layouts.py`).

Knows nothing about fastai or torch: everything here is numpy and pandas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from seti_fastai.errors import CadenceFileError, DataLayoutError, LabelFileError

N_PANELS, N_TIMES, N_CHANNELS = 6, 273, 256  # N_TIMES: the Kaggle cadences' rows per panel
CADENCE_SHAPE = (N_PANELS, N_TIMES, N_CHANNELS)
MIN_ROWS, MAX_ROWS = 4, 4096  # rows per panel are a property of the data: 273 on Kaggle, 16 in Green Bank's files
ON_PANELS = (0, 2, 4)  # ABACAD: the target star is observed in panels 0, 2 and 4
OFF_PANELS = (1, 3, 5)
ALLOWED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

SplitName = Literal["train", "test", "old-train", "old-test"]

_HEX_ID = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class SplitLayout:
    """Where one split's id list and cadence files live, relative to the data root."""

    labels: str
    folder: str
    has_labels: bool


SPLITS: dict[str, SplitLayout] = {
    "train": SplitLayout("train_labels.csv", "train", True),
    "test": SplitLayout("sample_submission.csv", "test", False),
    "old-train": SplitLayout("old_leaky_data/train_labels_old.csv", "old_leaky_data/train_old", True),
    "old-test": SplitLayout("old_leaky_data/test_labels_old.csv", "old_leaky_data/test_old", True),
}


def split_layout(split: str) -> SplitLayout:
    """The layout of a split by name, or a clear error naming the valid ones."""
    if split not in SPLITS:
        raise DataLayoutError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS[split]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_id_csv(path: Path | str, require_target: bool = True) -> pd.DataFrame:
    """Read and validate a CSV with an `id` column (and a 0/1 `target` column when required).

    Returns a frame with `id` (str) and, when present, `target` (int64), in file order. A byte-order mark, CRLF line
    ends and spaces around names and ids are read as if absent; an upper-case id is refused (file names are
    lower-case), naming its row.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype={"id": str}, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LabelFileError(f"{path}: not a readable CSV ({_first_line(e)})") from e
    df.columns = [str(c).strip() for c in df.columns]
    if df.columns.duplicated().any():
        raise LabelFileError(f"{path}: duplicate column names {', '.join(map(str, df.columns))}")
    if "id" in df.columns:
        df["id"] = df["id"].str.strip()
    needed = ["id", "target"] if require_target else ["id"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise LabelFileError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")
    if len(df) == 0:
        raise LabelFileError(f"{path}: no rows")
    ids = df["id"]
    for i, value in enumerate(ids):
        if isinstance(value, str) and value != value.lower() and _HEX_ID.match(value.lower()):
            raise LabelFileError(f"{path}: row {i + 2}: id {value!r} is upper-case; ids and file names are lower-case")
        if not isinstance(value, str) or not _HEX_ID.match(value):
            raise LabelFileError(f"{path}: row {i + 2}: id {value!r} is not a lower-case hexadecimal string")
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise LabelFileError(f"{path}: row {i + 2}: duplicate id {ids.iloc[i]}")
    if not require_target:
        return df[["id"]].reset_index(drop=True)
    target = pd.to_numeric(df["target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelFileError(f"{path}: row {i + 2}: target {df['target'].iloc[i]} is not 0 or 1")
    df["target"] = target.astype(np.int64)
    columns = ["id", "target"]
    return df[columns].reset_index(drop=True)


def read_id_numbers(
    path: Path | str, column: str, accept: Callable[[np.ndarray], np.ndarray], requirement: str
) -> pd.DataFrame:
    """`id` (checked as `read_id_csv` does) and the numeric `column` (float64) of a CSV, every value finite and
    accepted by `accept`; otherwise one error naming the row ("row 3: weight 0.0 is not a positive number")."""
    path = Path(path)
    ids = read_id_csv(path, require_target=False)["id"]
    raw = pd.read_csv(path, dtype={"id": str}, encoding="utf-8-sig")
    raw.columns = [str(c).strip() for c in raw.columns]
    if column not in raw.columns:
        raise LabelFileError(f"{path}: missing column(s) {column}; found {', '.join(map(str, raw.columns))}")
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy(float)
    finite = np.isfinite(values)
    bad = ~finite
    bad[finite] = ~accept(values[finite])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelFileError(f"{path}: row {i + 2}: {column} {raw[column].iloc[i]} is not {requirement}")
    return pd.DataFrame({"id": ids, column: values})


@dataclass(frozen=True)
class KaggleData:
    """A data root in the Kaggle layout (see data/README.md)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not self.root.is_dir():
            raise DataLayoutError(f"{self.root}: data folder not found")

    def labels_path(self, split: str) -> Path:
        return self.root / split_layout(split).labels

    def has_split(self, split: str) -> bool:
        return self.labels_path(split).is_file()

    def read_labels(self, split: str = "train") -> pd.DataFrame:
        """The split's id list, validated; with `target` for labelled splits."""
        return read_id_csv(self.labels_path(split), require_target=split_layout(split).has_labels)

    def cadence_path(self, split: str, cadence_id: str) -> Path:
        return self.root / split_layout(split).folder / cadence_id[0] / f"{cadence_id}.npy"

    def paths(self, split: str, ids: list[str] | pd.Series) -> list[Path]:
        return [self.cadence_path(split, i) for i in ids]

    def rows(self, split: str = "train") -> int:
        """Rows per panel of the split's cadences, from its first listed file (`check_arrays` checks every file)."""
        ids = self.read_labels(split)["id"]
        if not len(ids):
            raise LabelFileError(f"{self.labels_path(split)}: lists no cadence")
        self.check_files(split, ids[:1])
        return cadence_rows(self.cadence_path(split, ids.iloc[0]))

    def check_arrays(self, split: str, report_dir: Path | str, progress: Callable[[int], None] | None = None) -> None:
        """Load every cadence of `split` (shape, dtype, NaN/inf); when any is bad, list them all in
        `report_dir/bad_arrays_<split>.csv` and raise one error that counts them and names the first three."""
        from seti_fastai.io import atomic_write_csv

        paths = self.paths(split, self.read_labels(split)["id"])
        bad: list[tuple[str, str]] = []
        rows = None
        for path in paths:
            try:
                n = load_cadence(path).shape[1]
                rows = n if rows is None else rows
                if n != rows:
                    raise CadenceFileError(f"{path}: {n} rows per panel, the split's first cadence has {rows}")
            except CadenceFileError as e:
                bad.append((str(path), _first_line(e).removeprefix(f"{path}: ")))
            if progress is not None:
                progress(1)
        if not bad:
            return
        report = Path(report_dir) / f"bad_arrays_{split}.csv"
        try:
            where = f"all listed in {atomic_write_csv(pd.DataFrame(bad, columns=['path', 'reason']), report)}"
        except OSError as e:
            where = f"no list written ({report}: {e.strerror or e})"
        first = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise CadenceFileError(f"{len(bad)} of {len(paths)} cadence files are bad, {where}; first: {first}")

    def reads(self, path: Path | str) -> str | None:
        """What `path` is to this data folder when it is one of its inputs (a label CSV, a cadence file, matches.csv,
        a fold file, a packed cache), else None: writing over it would change the data."""
        path = Path(path).resolve()
        root = self.root.resolve()
        for split, layout in SPLITS.items():
            if path == root / layout.labels:
                return f"the {split} labels"
            if (root / layout.folder) in path.parents:
                return f"a {split} cadence file"
        if path.parent == root and (path.name == "matches.csv" or path.name.startswith("folds_")):
            return "a file training reads"
        if root / "packed" in path.parents:
            return "the packed cache"
        return None

    def check_not_input(self, path: Path | str, flag: str = "--out", force: bool = False) -> None:
        """Refuse `path` as an output when it is an input of this data folder, unless `force`."""
        what = None if force else self.reads(path)
        if what is not None:
            raise DataLayoutError(
                f"{flag} {path}: that is {what} of {self.root}; write elsewhere, or pass --overwrite-input"
            )

    def check_files(self, split: str, ids: list[str] | pd.Series) -> None:
        """Raise one error naming the first missing file (and how many are missing) of `ids`."""
        missing = [p for p in self.paths(split, ids) if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CadenceFileError(f"{missing[0]}: file not found, listed in {self.labels_path(split)}{more}")


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an open `.npy` file, reading no data; ValueError, OSError, EOFError,
    SyntaxError or TypeError for a file that is not a readable `.npy` array."""
    version = np.lib.format.read_magic(f)
    if version not in _NPY_HEADERS:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    shape, _, dtype = _NPY_HEADERS[version](f)
    return tuple(shape), dtype


SHAPE_TEXT = f"({N_PANELS}, rows, {N_CHANNELS}) with {MIN_ROWS} <= rows <= {MAX_ROWS} (Kaggle's: {CADENCE_SHAPE})"


def is_cadence_shape(shape: Sequence[int]) -> bool:
    """Six panels of 256 channels and any number of rows in [MIN_ROWS, MAX_ROWS]."""
    shape = tuple(shape)
    return len(shape) == 3 and shape[0] == N_PANELS and shape[2] == N_CHANNELS and MIN_ROWS <= shape[1] <= MAX_ROWS


def cadence_rows(path: Path | str) -> int:
    """Rows per panel of one cadence file, from its header alone (checked as `open_cadence` checks it)."""
    path = Path(path)
    if not path.is_file():
        raise CadenceFileError(f"{path}: file not found")
    with open(path, "rb") as f:
        return int(_check_npy_header(f, path)[1])


def _check_npy_header(f, path: Path) -> tuple[int, ...]:
    """Check shape and dtype from a `.npy` header before any data are read (an object array is never unpickled and
    a header claiming a huge shape allocates nothing); the shape."""
    try:
        shape, dtype = read_npy_header(f)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise CadenceFileError(f"{path}: not a readable .npy array ({_first_line(e)})") from e
    if not is_cadence_shape(shape):
        raise CadenceFileError(f"{path}: shape {tuple(shape)}, expected {SHAPE_TEXT}")
    if dtype not in ALLOWED_DTYPES:
        raise CadenceFileError(f"{path}: dtype {dtype}, expected float16 or float32")
    return tuple(shape)


def open_cadence(path: Path | str, mmap: bool = False) -> np.ndarray:
    """Open one cadence file (memory-mapped when `mmap`) and check its shape (6, rows, 256) and dtype (float16 or
    float32) from the header first; values are not read, so finiteness is the caller's check on what it uses."""
    path = Path(path)
    if not path.is_file():
        raise CadenceFileError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, path)
            if mmap:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                f.seek(0)
                arr = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CadenceFileError(f"{path}: not a readable .npy array ({_first_line(e)})") from e
    if not is_cadence_shape(arr.shape) or arr.dtype not in ALLOWED_DTYPES:  # the file changed since its header
        raise CadenceFileError(f"{path}: shape {arr.shape} dtype {arr.dtype}, expected {SHAPE_TEXT} float16/32")
    return arr


def check_finite(arr: np.ndarray, where: str) -> np.ndarray:
    """Raise `CadenceFileError` naming `where` when `arr` (float32) holds a NaN or an infinity; return `arr`."""
    if not np.isfinite(arr).all():  # on float32: numpy's float16 isfinite is ~15x slower (a hot path)
        bad = int((~np.isfinite(arr)).sum())
        raise CadenceFileError(f"{where}: {bad} NaN or infinite value(s)")
    return arr


def load_cadence(path: Path | str, panels: Sequence[int] | None = None) -> np.ndarray:
    """Load one cadence file and validate it: shape (6, rows, 256), float16/float32, all finite.

    Returns float32 (albumentations' OpenCV kernels reject float16). With `panels` (indices, e.g. an image recipe's
    `source_panels`) only those panels are read, through a memory map, and checked for finiteness: shape
    (len(panels), rows, 256).
    """
    subset = panels is not None and tuple(panels) != tuple(range(N_PANELS))
    arr = open_cadence(path, mmap=subset)
    if subset:
        try:
            arr = np.asarray(arr[list(panels)])  # a copy of these panels only: the rest of the file is never read
        except (ValueError, OSError) as e:
            raise CadenceFileError(f"{path}: not a readable .npy array ({_first_line(e)})") from e
    return check_finite(arr.astype(np.float32, copy=False), str(path))


def standardize_panels(cadence: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Scale each panel to mean 0, std 1 (what the hosts did to every snippet)."""
    mean = cadence.mean(axis=(-2, -1), keepdims=True)
    std = cadence.std(axis=(-2, -1), keepdims=True)
    return (cadence - mean) / (std + eps)


def time_medians(panels_by_channel: np.ndarray) -> np.ndarray:
    """Median of the last axis of a C-contiguous float32 (P, F, T) array (channels, each over time), shape (P, F):
    one `np.partition` at the middle row (partitioning at two rows at once costs four times one); for an even number
    of rows the lower middle is the largest value below it. The same values as `np.median(axis=-1)`."""
    n = panels_by_channel.shape[-1]
    parted = np.partition(panels_by_channel, n // 2, axis=-1)
    upper = parted[..., n // 2]
    return upper if n % 2 else (parted[..., : n // 2].max(-1) + upper) / 2


def channel_medians(cadence: np.ndarray) -> np.ndarray:
    """Median over time of every panel's channels, shape (P, 1, F), the same values as `np.median(axis=1)` about 2.6
    times as fast on a (6, 273, 256) cadence (`time_medians` on a transposed copy)."""
    x = np.ascontiguousarray(cadence.transpose(0, 2, 1), dtype=np.float32)
    return time_medians(x)[:, None, :]
