"""The observation scan against turboSETI: recall of injected needles at a fixed rate of false events, throughput
and peak memory, on a synthetic six-file Green Bank cadence (setigen, 16 rows of 18.25 s per file, 2.79 Hz channels).

    .venv/bin/python bench/scan.py                                     # the reference (min and sum contrasts)
    .venv/bin/python bench/scan.py --run runs/x/fold0 --resample       # and a trained run on every window
    .venv/bin/python bench/scan.py --turboseti /path/to/venv/bin/python --out docs/scan.md

Needles drift (|drift| 0.02-0.35 Hz/s, per-file SNR log-uniform 4-40) in the ON files only; RFI (half at zero
drift, half drifting, SNR 10-100) is in all six. An event finds a needle when its best path is within 8 channels of
the needle's at the cadence's middle (turboSETI: its first ON hit within 8 channels of the needle's start). Each
method's events are ranked by its own score; recall is read where its false events per MHz first exceed each rate.

turboSETI (optional: `--turboseti` names a Python with turbo_seti 2.3.2, which needs numpy<2) runs FindDoppler on
each file (--max-drift, SNR 4) and find_event_pipeline (filter threshold 3: in every ON file, no OFF file).

Throughput and memory are timed in a fresh process per setting (scan only, the reference): channels per second and
the peak resident memory, for two band widths (cost linear in the band) and two chunk sizes (memory bounded by it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MATCH_CHANNELS = 8

TURBOSETI = r"""
import os, sys, time
from turbo_seti.find_doppler.find_doppler import FindDoppler
from turbo_seti.find_event.find_event_pipeline import find_event_pipeline
out, max_drift, snr, files = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
t = time.perf_counter()
dats = []
for f in files:
    FindDoppler(f, max_drift=max_drift, snr=snr, out_dir=out, log_level_int=40).search()
    dats.append(os.path.join(out, os.path.basename(f).rsplit(".", 1)[0] + ".dat"))
seconds = time.perf_counter() - t
for name, lines in (("dats.lst", dats), ("h5s.lst", files)):
    open(os.path.join(out, name), "w").write("\n".join(lines) + "\n")
find_event_pipeline(os.path.join(out, "dats.lst"), os.path.join(out, "h5s.lst"), filter_threshold=3,
                    number_in_cadence=6, csv_name=os.path.join(out, "events.csv"))
print("SECONDS", seconds)
"""

TIMED = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from seti_fastai.observe.files import open_cadence
from seti_fastai.observe.scan import ScanConfig, scan_cadence
cadence = open_cadence(sys.argv[3:])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
scan_cadence(cadence, ScanConfig(chunk=int(sys.argv[2])))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(seconds=seconds, channels=cadence.nchans, base_mib=base / 1024, peak_mib=peak / 1024)))
"""


def injections(channels: int, n_needles: int, n_rfi: int, seed: int):
    """Needles and RFI in distinct 4096-channel slots, so that no two overlap."""
    from seti_fastai.observe.synthetic import Needle

    rng = np.random.default_rng(seed)
    slots = rng.choice(channels // 4096, n_needles + n_rfi, replace=False)
    at = slots * 4096 + 2048 + rng.integers(-1000, 1000, len(slots))
    drift = rng.uniform(0.02, 0.35, len(slots)) * rng.choice([-1, 1], len(slots))
    drift[n_needles : n_needles + n_rfi // 2] = 0.0  # half the RFI does not drift
    snr = np.exp(rng.uniform(np.log(4), np.log(40), len(slots)))
    snr[n_needles:] = np.exp(rng.uniform(np.log(10), np.log(100), n_rfi))
    made = [Needle(int(c), float(round(d, 4)), float(s)) for c, d, s in zip(at, drift, snr, strict=True)]
    return made[:n_needles], made[n_needles:]


def write_cadence(work: Path, channels: int, n_needles: int, n_rfi: int, seed: int):
    from seti_fastai.observe.synthetic import write_observation

    needles, rfi = injections(channels, n_needles, n_rfi, seed)
    folder = work / f"obs_{channels}_{n_needles}_{n_rfi}_{seed}"
    if not (folder / "5_OFF3.h5").is_file():
        write_observation(folder, needles, rfi, channels=channels, seed=seed)
    return sorted(folder.glob("*.h5")), needles


def middle_channel(n, n_rows: int = 16) -> float:
    from seti_fastai.observe.synthetic import CHANNEL_HZ, ROW_SECONDS, SLEW_SECONDS

    middle = (5 * (n_rows * ROW_SECONDS + SLEW_SECONDS) + n_rows * ROW_SECONDS) / 2
    return n.channel - n.drift * middle / CHANNEL_HZ


def recall_at_rates(found: list[int | None], scores: np.ndarray, n: int, band_mhz: float, rates) -> dict:
    """`found[i]`: the needle event i finds (None: a false event). {rate: (recall, threshold)} where false events
    per MHz would first exceed the rate, the events taken best first (the threshold: the last score kept)."""
    order = np.argsort(-scores, kind="stable")
    seen: set[int] = set()
    false, out = 0, {}
    kept = {r: (0.0, np.inf) for r in rates}
    for i in order:
        if found[i] is None:
            false += 1
            for r in rates:
                if r not in out and false / band_mhz > r:
                    out[r] = kept[r]
        else:
            seen.add(found[i])
        for r in rates:
            if r not in out:
                kept[r] = (len(seen) / n, float(scores[i]))
    return {r: out.get(r, kept[r]) for r in rates}


def match(channels: np.ndarray, needles, at) -> list[int | None]:
    targets = np.array([at(n) for n in needles])
    out = []
    for c in channels:
        d = np.abs(targets - c)
        out.append(int(d.argmin()) if d.min() <= MATCH_CHANNELS else None)
    return out


def scan_all_windows(files, contrast: str, runs, resample: bool):
    from seti_fastai.observe.files import open_cadence
    from seti_fastai.observe.scan import ScanConfig, peak_events, scan_windows

    cadence = open_cadence(files)
    cfg = ScanConfig(contrast=contrast)
    models = None
    if runs:
        import torch

        from seti_fastai.observe.window_models import WindowModels

        models = WindowModels.from_dirs(runs, cadence.n_rows, cfg.window, resample, torch.device("cpu"))
    start = time.perf_counter()
    windows = list(scan_windows(cadence, cfg, models))
    seconds = time.perf_counter() - start
    key = "probability" if models else "reference"
    events = peak_events(windows, key, -np.inf)
    return events, key, seconds


def timed(files: list[Path], chunk: int, threads: int) -> dict:
    """One scan (the reference) in a fresh process: seconds and peak resident memory."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", TIMED, str(threads), str(chunk), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_turboseti(
    python: str, files: list[Path], work: Path, max_drift: float, snr: float
) -> tuple[pd.DataFrame, float]:
    from seti_fastai.observe.turboseti import read_event_csv

    out = Path(tempfile.mkdtemp(dir=work, prefix=f"turboseti_snr{snr:g}_"))
    cmd = [python, "-c", TURBOSETI, str(out), str(max_drift), str(snr), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"turboSETI failed: {proc.stderr[-2000:]}")
    seconds = float(proc.stdout.split("SECONDS")[-1].split()[0])
    events_csv = out / "events.csv"
    events = read_event_csv(events_csv) if events_csv.is_file() else pd.DataFrame(columns=["Hit_ID", "SNR", "status"])
    return events, seconds


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=2**20)
    parser.add_argument("--needles", type=int, default=64)
    parser.add_argument("--rfi", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "seti_scan_bench")
    parser.add_argument("--run", type=Path, action="append", default=[])
    parser.add_argument("--resample", action="store_true")
    parser.add_argument("--turboseti", help="a Python with turbo_seti installed")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 5.0], help="false events per MHz")
    parser.add_argument("--turboseti-snr", type=float, nargs="+", default=[6.0, 8.0, 10.0, 15.0, 25.0])
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput and memory table")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from seti_fastai.observe.files import open_cadence, quiet_blimpy
    from seti_fastai.observe.scan_config import REFERENCE_THRESHOLDS

    quiet_blimpy()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    files, needles = write_cadence(args.work, args.channels, args.needles, args.rfi, args.seed)
    print(f"cadence: {files[0].parent} ({time.perf_counter() - start:.0f} s)", flush=True)
    cadence = open_cadence(files)
    band_mhz = cadence.nchans * abs(cadence.foff)
    rows, lines = [], []

    def add(method: str, found, scores, seconds: float, default_threshold: float | None) -> None:
        found_at = recall_at_rates(found, np.asarray(scores, dtype=float), len(needles), band_mhz, args.rates)
        row = {"method": method}
        row.update({f"recall at {r:g} false/MHz (threshold)": f"{v:.3f} ({t:.3g})" for r, (v, t) in found_at.items()})
        if default_threshold is not None:
            keep = np.asarray(scores, dtype=float) >= default_threshold
            hits = {f for f, k in zip(found, keep, strict=True) if k and f is not None}
            false = sum(1 for f, k in zip(found, keep, strict=True) if k and f is None)
            row["at its default threshold: recall / false per MHz"] = f"{len(hits) / len(needles):.3f} / "
            row["at its default threshold: recall / false per MHz"] += f"{false / band_mhz:.1f}"
        row["search s"] = f"{seconds:.1f}"
        row["channels/s"] = f"{cadence.nchans / seconds:,.0f}"
        rows.append(row)
        print(row, flush=True)

    for contrast in ("min", "sum"):
        events, key, seconds = scan_all_windows(files, contrast, [], False)
        found = match(events["channel"], needles, middle_channel)
        add(f"reference ({contrast})", found, events[key], seconds, REFERENCE_THRESHOLDS[contrast])
    if args.run:
        events, key, seconds = scan_all_windows(files, "min", args.run, args.resample)
        found = match(events["channel"], needles, middle_channel)
        add(f"model ({', '.join(p.name for p in args.run)})", found, events[key], seconds, 0.5)
    if args.turboseti:
        # turboSETI's search threshold decides which hits exist, and so which ON hits an OFF hit vetoes: one search
        # per SNR; its recall at a rate is the best of the searches within it
        settings = []
        for snr in args.turboseti_snr:
            events, seconds = run_turboseti(args.turboseti, files, args.work, 0.4, snr)
            first = events[events["status"] == "on_table_1"]
            start_channel = ((cadence.files[0].fch1 - first["Freq"].astype(float)) / abs(cadence.foff)).to_numpy()
            found = match(start_channel, needles, lambda n: n.channel)
            recall = len({f for f in found if f is not None}) / len(needles)
            false = sum(f is None for f in found) / band_mhz
            settings.append((snr, recall, false, seconds))
            print(f"turboSETI SNR {snr:g}: recall {recall:.3f}, false {false:.1f}/MHz, {seconds:.1f} s", flush=True)
        row = {"method": "turboSETI 2.3.2 (FindDoppler + find_event, filter 3)"}
        for r in args.rates:
            within = [s for s in settings if s[2] <= r]
            best = max(within, key=lambda s: s[1]) if within else None
            row[f"recall at {r:g} false/MHz (threshold)"] = f"{best[1]:.3f} (SNR {best[0]:g})" if best else "0 (-)"
        at10 = next((s for s in settings if s[0] == 10.0), None)
        if at10:
            row["at its default threshold: recall / false per MHz"] = f"{at10[1]:.3f} / {at10[2]:.1f}"
        row["search s"] = f"{np.mean([s[3] for s in settings]):.1f}"
        row["channels/s"] = f"{cadence.nchans / np.mean([s[3] for s in settings]):,.0f}"
        rows.append(row)
    table = markdown(rows)
    lines += [
        f"Recall of {len(needles)} injected needles ({args.rfi} RFI lines in all six files), {cadence.nchans:,} "
        f"channels ({band_mhz:.2f} MHz), {cadence.n_rows} rows per file, seed {args.seed}:",
        "",
        table,
        "",
    ]
    speed = []
    small = (args.work, args.channels // 4, args.needles // 4, args.rfi // 4, args.seed)
    small_files = None if args.no_speed else write_cadence(*small)[0]
    settings = [
        ("band / 4", small_files, 65536, 1),
        ("band", files, 65536, 1),
        ("band, chunk / 4", files, 16384, 1),
        ("band, all cores", files, 65536, os.cpu_count() or 1),
    ]
    for label, chosen, chunk, threads in [] if args.no_speed else settings:
        t = timed(chosen, chunk, threads)
        speed.append(
            {
                "setting": label,
                "channels": f"{t['channels']:,}",
                "chunk": chunk,
                "threads": threads,
                "seconds": f"{t['seconds']:.1f}",
                "channels/s": f"{t['channels'] / t['seconds']:,.0f}",
                "peak MiB above the opened cadence": f"{t['peak_mib'] - t['base_mib']:.0f}",
            }
        )
        print(speed[-1], flush=True)
    if speed:
        lines += ["Throughput and peak memory of the scan (the reference, one process each; the libraries and the",
                  "opened headers take about 0.7 GiB before it starts):", "", markdown(speed), ""]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
