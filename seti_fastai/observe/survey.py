"""Scanning many cadences: a cadence list in, one event table out, resumable and spread over processes.

Every cadence's headers are checked before anything is scanned, so a bad file stops the survey before it writes.
Each cadence's events are written to `<out>.parts/<cadence>.csv` (atomically) as soon as it is scanned; a rerun
with the same settings skips the cadences whose part exists. Under `torchrun` (RANK / WORLD_SIZE set), rank r scans
every WORLD_SIZE-th cadence from the r-th, and rank 0 merges the parts once every rank is done.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from seti_fastai.errors import ConfigError, DataLayoutError, first_sentence
from seti_fastai.io import atomic_write_csv, atomic_write_json
from seti_fastai.learn.distributed import barrier, init_distributed, is_main, rank, world_size
from seti_fastai.observe.files import N_FILES, ObservationCadence, open_cadence
from seti_fastai.observe.scan import ScanConfig, scan_cadence
from seti_fastai.observe.scan_config import ranking_key
from seti_fastai.observe.window_models import WindowModels

EVENT_COLUMNS = [
    "cadence", "freq_mhz", "freq_start_mhz", "freq_end_mhz", "drift_hz_s", "reference", "probability",
    "channel", "start", "stop", "n_windows", "files",
]  # fmt: skip


@dataclass(frozen=True)
class Survey:
    """What one `scan` does, resolved once: the cadences (name and six files each), the settings and the runs."""

    cadences: tuple[tuple[str, tuple[Path, ...]], ...]
    out: Path
    cfg: ScanConfig
    run_dirs: tuple[Path, ...] = ()
    resample: bool = False

    @property
    def parts(self) -> Path:
        return self.out.with_name(self.out.name + ".parts")

    def settings(self) -> dict:
        """What a part depends on besides its cadence: a rerun with other settings does not mix them."""
        return dict(
            scan=dataclasses.asdict(self.cfg), runs=[str(d.resolve()) for d in self.run_dirs], resample=self.resample
        )


def read_cadence_list(path: Path | str) -> tuple[tuple[str, tuple[Path, ...]], ...]:
    """A CSV with columns `cadence,path`: six rows per cadence, in ABACAD order; relative paths are relative to the
    CSV's folder. Each bad list is one DataLayoutError naming the file (and the cadence)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except FileNotFoundError as e:
        raise DataLayoutError(f"{path}: file not found") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataLayoutError(f"{path}: not a readable CSV ({first_sentence(e)})") from e
    missing = {"cadence", "path"} - set(table.columns)
    if missing:
        raise DataLayoutError(f"{path}: needs columns cadence,path (one row per file); missing {', '.join(missing)}")
    if table[["cadence", "path"]].isna().any().any():
        raise DataLayoutError(f"{path}: empty cadence or path at row {int(table.isna().any(axis=1).argmax()) + 2}")
    cadences = []
    for name, group in table.groupby("cadence", sort=False):
        if len(group) != N_FILES:
            raise DataLayoutError(f"{path}: cadence {name!r} lists {len(group)} files, not {N_FILES} (ABACAD)")
        cadences.append((str(name), tuple(p if p.is_absolute() else path.parent / p for p in map(Path, group.path))))
    if not cadences:
        raise DataLayoutError(f"{path}: lists no cadence")
    return tuple(cadences)


def cadence_name(paths: Sequence[Path]) -> str:
    """A cadence given as six files is named after its first."""
    return Path(paths[0]).stem


def part_name(cadence: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cadence) + ".csv"


def check_parts(survey: Survey) -> None:
    """A parts folder from other settings is refused; a new one records these."""
    settings_file = survey.parts / "settings.json"
    if settings_file.is_file():
        saved = json.loads(settings_file.read_text())
        if saved != survey.settings():
            changed = sorted(k for k in survey.settings() if saved.get(k) != survey.settings()[k])
            raise ConfigError(
                f"{survey.parts}: scanned earlier with other {', '.join(changed)}; remove it or write to another --out"
            )
    elif is_main():
        survey.parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(settings_file, survey.settings())


def run_survey(
    survey: Survey,
    device: torch.device,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
    say: Callable[[str], None] = print,
) -> pd.DataFrame | None:
    """Scan this process's share of the cadences (parts written as they finish), then, on rank 0, merge every
    part into `survey.out`, best first; returns that table (None on other ranks). `progress(total)` is given the
    channels to scan and returns a counter."""
    init_distributed()
    opened = [(name, open_cadence(paths)) for name, paths in survey.cadences]
    survey.cfg.validate()
    names = [part_name(name) for name, _ in opened]
    if len(set(names)) != len(names):
        raise DataLayoutError("two cadences share one name; give each a distinct `cadence` in the list")
    models = _models(survey, opened, device)  # a run refused before anything is written
    barrier()
    check_parts(survey)
    barrier()
    mine = [(name, c) for i, (name, c) in enumerate(opened) if i % world_size() == rank()]
    todo = [(name, c) for name, c in mine if not (survey.parts / part_name(name)).is_file()]
    if len(todo) < len(mine):
        say(f"{len(mine) - len(todo)} cadence(s) scanned earlier (in {survey.parts}), skipping them")
    count = progress(sum(c.nchans for _, c in todo)) if progress else None
    for name, cadence in todo:
        events = scan_cadence(cadence, survey.cfg, models, device, count)
        atomic_write_csv(events.assign(cadence=name)[EVENT_COLUMNS], survey.parts / part_name(name))
    barrier()
    if not is_main():
        return None
    table = pd.concat([pd.read_csv(survey.parts / n) for n in names], ignore_index=True)[EVENT_COLUMNS]
    key = ranking_key(bool(survey.run_dirs))
    table = table.sort_values([key, "reference"], ascending=False, kind="stable").reset_index(drop=True)
    atomic_write_csv(table, survey.out)
    return table


def _models(survey: Survey, opened: list[tuple[str, ObservationCadence]], device: torch.device) -> WindowModels | None:
    if not survey.run_dirs:
        return None
    rows = {c.n_rows for _, c in opened}
    if len(rows) > 1:
        raise DataLayoutError(f"the cadences hold {sorted(rows)} time rows per file; scan each kind separately")
    return WindowModels.from_dirs(survey.run_dirs, rows.pop(), survey.cfg.window, survey.resample, device)
