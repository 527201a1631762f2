"""Breakthrough Listen observation files (filterbank `.fil`, HDF5 `.h5`) read through blimpy, and the six files of
one ABACAD cadence checked against each other.

Only headers are read when a cadence is opened; `ObservationCadence.read_channels` reads one range of channels from
the six files by index (an h5py slice, a filterbank memory map), so a scan holds one chunk in memory, never a
whole file.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seti_fastai.errors import DataLayoutError, first_sentence

N_FILES = 6  # one ABACAD cadence: ON, OFF, ON, OFF, ON, OFF
ON_FILES, OFF_FILES = (0, 2, 4), (1, 3, 5)
SUFFIXES = (".h5", ".fil")
NBITS = {8: "uint8", 16: "uint16", 32: "float32"}  # filterbank sample types


@dataclass(frozen=True)
class ObservationFile:
    """One pointing's file and the header fields a cadence must share."""

    path: Path
    source: str
    fch1: float  # MHz, the frequency of channel 0
    foff: float  # MHz per channel (negative for descending bands)
    nchans: int
    tsamp: float  # seconds per time row
    n_rows: int
    tstart: float = 0.0  # MJD of the first row
    n_ifs: int = 1
    header_bytes: int = 0  # filterbank: where the data start
    dtype: str = "float32"

    @property
    def f_low(self) -> float:
        return min(self.fch1, self.fch1 + self.foff * (self.nchans - 1))

    @property
    def f_high(self) -> float:
        return max(self.fch1, self.fch1 + self.foff * (self.nchans - 1))


def quiet_blimpy() -> None:
    """blimpy logs every file it opens or writes at INFO and WARNING; keep only its errors."""
    logging.getLogger("blimpy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="blimpy")


def read_header(path: Path | str) -> ObservationFile:
    """The header of one `.h5` / `.fil` file; a missing, foreign or truncated file is one DataLayoutError."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise DataLayoutError(f"{path}: not a filterbank (.fil) or HDF5 (.h5) observation file")
    quiet_blimpy()
    from blimpy import Waterfall

    try:
        wf = Waterfall(str(path), load_data=False)
    except NotImplementedError as e:
        raise DataLayoutError(f"{path}: not a filterbank or HDF5 observation file (blimpy cannot read it)") from e
    except (OSError, KeyError, ValueError) as e:
        raise DataLayoutError(f"{path}: cannot read its header ({str(e).splitlines()[0] if str(e) else e!r})") from e
    header, container = wf.header, wf.container
    n_rows = int(container.n_ints_in_file)
    nbits = int(header.get("nbits", 32))
    if nbits not in NBITS:
        raise DataLayoutError(f"{path}: {nbits}-bit samples; this reader takes {', '.join(map(str, NBITS))}")
    if path.suffix.lower() == ".fil":
        row_bytes = int(container.n_channels_in_file) * int(container.n_beams_in_file) * int(container._n_bytes)
        body = path.stat().st_size - int(container.idx_data)
        if n_rows == 0 or body % row_bytes:
            raise DataLayoutError(
                f"{path}: truncated ({body} data bytes, not a whole number of {row_bytes}-byte time rows)"
            )
    if n_rows == 0:
        raise DataLayoutError(f"{path}: holds no time rows")
    source = header.get("source_name", "")
    return ObservationFile(
        path=path,
        source=source.decode() if isinstance(source, bytes) else str(source),
        fch1=float(header["fch1"]),
        foff=float(header["foff"]),
        nchans=int(header["nchans"]),
        tsamp=float(header["tsamp"]),
        n_rows=n_rows,
        tstart=float(header.get("tstart", 0.0)),
        n_ifs=int(header.get("nifs", 1)),
        header_bytes=int(getattr(container, "idx_data", 0)),
        dtype=NBITS[nbits],
    )


@dataclass(frozen=True)
class ObservationCadence:
    """Six files of one ABACAD cadence whose headers agree (`open_cadence`)."""

    files: tuple[ObservationFile, ...]

    @property
    def nchans(self) -> int:
        return self.files[0].nchans

    @property
    def n_rows(self) -> int:
        return self.files[0].n_rows

    @property
    def tsamp(self) -> float:
        return self.files[0].tsamp

    @property
    def foff(self) -> float:
        return self.files[0].foff

    @property
    def gap_rows(self) -> int:
        """The slew between two pointings in time rows, from the files' start times (0 when they all start at once,
        as files written without one do)."""
        starts = np.array([f.tstart for f in self.files]) * 86400.0
        if np.ptp(starts) == 0:
            return 0
        slew = np.diff(starts).mean() - self.n_rows * self.tsamp
        return max(0, round(slew / self.tsamp))

    def frequency(self, channel: np.ndarray | int) -> np.ndarray | float:
        """MHz of a channel index (or indices)."""
        first = self.files[0]
        return first.fch1 + first.foff * np.asarray(channel, dtype=np.float64)

    def read_channels(self, start: int, stop: int) -> np.ndarray:
        """float32 (6, n_rows, stop - start): channels [start, stop) of every file, read from disk by index (HDF5:
        an h5py slice of blimpy's `data` set; filterbank: a memory map past blimpy's header), never a whole file.
        Indices, not blimpy's frequency selection, which rounds at the range's edges."""
        if not 0 <= start < stop <= self.nchans:
            raise ValueError(f"channels [{start}, {stop}) outside the band of {self.nchans}")
        out = np.empty((N_FILES, self.n_rows, stop - start), dtype=np.float32)
        for i, f in enumerate(self.files):
            try:
                out[i] = _read_channels(f, start, stop)
            except (OSError, ValueError, KeyError) as e:  # a file damaged past its header, or changed since
                raise DataLayoutError(f"{f.path}: cannot read channels {start}-{stop} ({first_sentence(e)})") from e
        return out


def _read_channels(f: ObservationFile, start: int, stop: int) -> np.ndarray:
    if f.path.suffix.lower() == ".h5":
        import h5py
        import hdf5plugin  # noqa: F401  (registers the bitshuffle filter of Breakthrough Listen's files)

        with h5py.File(f.path, "r") as h5:
            return np.asarray(h5["data"][:, 0, start:stop], dtype=np.float32)
    data = np.memmap(f.path, dtype=f.dtype, mode="r", offset=f.header_bytes, shape=(f.n_rows, f.n_ifs, f.nchans))
    return np.asarray(data[:, 0, start:stop], dtype=np.float32)


def _agree(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def open_cadence(paths: Sequence[Path | str]) -> ObservationCadence:
    """The six files of one cadence in ABACAD order, their headers read and checked: the same fch1, foff, nchans,
    tsamp and number of time rows; start times in order (where they differ at all); ON files (1st, 3rd, 5th) with
    one source name that no OFF file has (where the names tell ON from OFF at all). Every disagreement is one
    DataLayoutError naming the file and the field."""
    if len(paths) != N_FILES:
        raise DataLayoutError(
            f"a cadence is {N_FILES} files in ABACAD order (ON, OFF, ON, OFF, ON, OFF); got {len(paths)}"
        )
    files = tuple(read_header(p) for p in paths)
    first = files[0]
    for f in files[1:]:
        if not (_agree(f.fch1, first.fch1) and _agree(f.foff, first.foff) and f.nchans == first.nchans):
            if f.f_high < first.f_low or f.f_low > first.f_high:
                raise DataLayoutError(
                    f"{f.path}: {f.f_low:.6f}-{f.f_high:.6f} MHz does not overlap {first.path.name}'s "
                    f"{first.f_low:.6f}-{first.f_high:.6f} MHz"
                )
            raise DataLayoutError(
                f"{f.path}: band (fch1 {f.fch1}, foff {f.foff}, nchans {f.nchans}) differs from {first.path.name}'s "
                f"(fch1 {first.fch1}, foff {first.foff}, nchans {first.nchans})"
            )
        if not _agree(f.tsamp, first.tsamp) or f.n_rows != first.n_rows:
            raise DataLayoutError(
                f"{f.path}: {f.n_rows} time rows of {f.tsamp} s differ from {first.path.name}'s "
                f"{first.n_rows} rows of {first.tsamp} s"
            )
    on = {files[i].source for i in ON_FILES}
    off = [files[i] for i in OFF_FILES]
    if len({f.source for f in files}) > 1:  # the names say which is ON: check the order against them
        if len(on) > 1:
            raise DataLayoutError(
                f"ON files (1st, 3rd, 5th) name different sources ({', '.join(sorted(on))}): not ABACAD order?"
            )
        for f in off:
            if f.source in on:
                raise DataLayoutError(f"{f.path}: an OFF position names the ON source {f.source!r}: not ABACAD order?")
    starts = [f.tstart for f in files]
    if len(set(starts)) > 1:
        for before, f in itertools.pairwise(files):
            if f.tstart <= before.tstart:
                raise DataLayoutError(
                    f"{f.path}: starts at MJD {f.tstart} (tstart), not after {before.path.name} (MJD {before.tstart}): "
                    "not in observing order?"
                )
    return ObservationCadence(files)
