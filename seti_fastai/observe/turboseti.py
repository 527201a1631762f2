"""turboSETI's files, read and written so that its search and this one can be compared on the same cadence.

- `read_dat`: the hits of one turboSETI `.dat` file (what `turboSETI file.h5` or `FindDoppler.search` writes).
- `read_event_csv`: the events of `find_event_pipeline`'s CSV.
- `to_event_csv`: a scan's events in the columns of `find_event_pipeline`'s CSV (`scan --turboseti-csv`).

turboSETI itself is not a dependency (turbo_seti 2.3.2 needs numpy<2); these read and write its text formats only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from seti_fastai.errors import DataLayoutError

DAT_COLUMNS = [
    "TopHitNum", "DriftRate", "SNR", "Uncorrected_Frequency", "Corrected_Frequency", "ChanIndx",
    "FreqStart", "FreqEnd", "SEFD", "SEFD_freq", "CoarseChanNum", "FullNumHitsInRange",
]  # fmt: skip
EVENT_CSV_COLUMNS = [
    "TopHitNum", "DriftRate", "SNR", "Freq", "ChanIndx", "FreqStart", "FreqEnd", "CoarseChanNum",
    "FullNumHitsInRange", "FileID", "Source", "MJD", "RA", "DEC", "DELTAT", "DELTAF", "max_drift_rate",
    "obs_length", "Hit_ID", "status", "in_n_ons", "RFI_in_range",
]  # fmt: skip


def _header_value(line: str, field: int = 0) -> str:
    return line.strip().split("\t")[field].split(":", 1)[-1].strip()


def read_dat(path: Path | str) -> pd.DataFrame:
    """The hits of a turboSETI `.dat` file (columns `DAT_COLUMNS`, plus FileID, Source, MJD, DELTAT and DELTAF
    from its header); a file without that header is one DataLayoutError."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: file not found")
    lines = path.read_text().splitlines()
    if len(lines) < 9 or "File ID" not in lines[1] or "DELTAT" not in lines[5]:
        raise DataLayoutError(f"{path}: not a turboSETI .dat file (its nine header lines are missing)")
    rows = [re.split(r"\s+", line.strip()) for line in lines[9:] if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(DAT_COLUMNS)), None)
    if bad is not None:
        raise DataLayoutError(f"{path}: line {bad + 10} holds {len(rows[bad])} fields, not {len(DAT_COLUMNS)}")
    hits = pd.DataFrame(rows, columns=DAT_COLUMNS).apply(pd.to_numeric)
    return hits.assign(
        FileID=_header_value(lines[1]),
        Source=_header_value(lines[3]),
        MJD=float(_header_value(lines[4])),
        DELTAT=float(_header_value(lines[5], 0)),
        DELTAF=float(_header_value(lines[5], 1)),
    )


def read_event_csv(path: Path | str) -> pd.DataFrame:
    """The events of a `find_event_pipeline` CSV (or of `to_event_csv`): its columns, the index column dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: file not found")
    table = pd.read_csv(path, index_col=0)
    missing = {"DriftRate", "SNR", "Freq", "Hit_ID"} - set(table.columns)
    if missing:
        raise DataLayoutError(f"{path}: not a turboSETI event CSV (no {', '.join(sorted(missing))} column)")
    return table


def to_event_csv(events: pd.DataFrame, cadence_files: dict[str, list[str]]) -> pd.DataFrame:
    """A scan's events (`observe.survey.EVENT_COLUMNS`) as `find_event_pipeline` rows: one per event, standing
    for its hit in the first ON file (status on_table_1, in_n_ons 3, RFI_in_range 0), SNR the reference score,
    Freq the best path's frequency at the cadence's middle. `cadence_files` maps each cadence to its files."""
    rows = []
    for i, e in enumerate(events.itertuples(index=False)):
        first = Path(cadence_files[e.cadence][0])
        rows.append(
            dict(
                TopHitNum=i + 1,
                DriftRate=e.drift_hz_s,
                SNR=e.reference,
                Freq=e.freq_mhz,
                ChanIndx=e.channel,
                FreqStart=e.freq_start_mhz,
                FreqEnd=e.freq_end_mhz,
                CoarseChanNum=0,
                FullNumHitsInRange=e.n_windows,
                FileID=first.name,
                Source=e.cadence,
                MJD="",
                RA="",
                DEC="",
                DELTAT="",
                DELTAF="",
                max_drift_rate="",
                obs_length="",
                Hit_ID=f"{e.cadence}_{i}",
                status="on_table_1",
                in_n_ons=3,
                RFI_in_range=0,
            )
        )
    return pd.DataFrame(rows, columns=EVENT_CSV_COLUMNS)
