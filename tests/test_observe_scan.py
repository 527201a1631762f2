"""Scanning synthetic six-file observations: the injected needle found at its frequency and drift, RFI in every file
left out, the same events whatever the chunk or the format, resumable surveys, torchrun shares and one line for
each bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.data.drift_grid import DedopplerConfig
from seti_fastai.errors import ConfigError, DataLayoutError
from seti_fastai.evaluate.dedoppler import dedoppler
from seti_fastai.observe.files import open_cadence
from seti_fastai.observe.scan import ScanConfig, scan_cadence, scan_windows, search_grid
from seti_fastai.observe.survey import read_cadence_list
from seti_fastai.observe.synthetic import CHANNEL_HZ, ROW_SECONDS, SLEW_SECONDS, Needle, write_observation
from seti_fastai.observe.turboseti import read_dat, read_event_csv

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = 4096
NEEDLE, DRIFT = Needle(1000, -0.2, snr=25), Needle(3000, 0.12, snr=20)
RFI = [Needle(2000, 0.0, snr=60), Needle(500, 0.15, snr=60)]  # in all six files: not an event
FILE_SECONDS = 16 * ROW_SECONDS + SLEW_SECONDS
MIDDLE_SECONDS = (5 * FILE_SECONDS + 16 * ROW_SECONDS) / 2  # the cadence's middle, where `channel` is measured


def channel_at_middle(n: Needle) -> float:
    return n.channel - n.drift * MIDDLE_SECONDS / CHANNEL_HZ  # the band descends: rising frequency, lower channels


@pytest.fixture(scope="module")
def observation(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    return {
        fmt: write_observation(root / fmt, [NEEDLE, DRIFT], RFI, channels=CHANNELS, fmt=fmt, seed=3)
        for fmt in ("h5", "fil")
    }


def test_the_reference_scores_sixteen_row_cadences_at_their_drift(observation):
    cadence = open_cadence(observation["h5"])
    cfg = DedopplerConfig(max_drift=2.0, drift_step=0.02, gap_rows=round(SLEW_SECONDS / ROW_SECONDS))
    start = NEEDLE.channel - 60
    needle = torch.from_numpy(cadence.read_channels(start, start + 256))[None]
    noise = torch.from_numpy(cadence.read_channels(3500, 3756))[None]
    (s_needle, drift, channel), (s_noise, _, _) = dedoppler(needle, cfg), dedoppler(noise, cfg)
    assert float(s_needle) > 5 * float(s_noise)
    assert float(drift) == pytest.approx(-NEEDLE.drift * ROW_SECONDS / CHANNEL_HZ, abs=0.05)
    assert abs(start + int(channel) - channel_at_middle(NEEDLE)) <= 3


def test_a_scan_finds_each_needle_at_its_frequency_and_drift_and_no_rfi(observation):
    cadence = open_cadence(observation["h5"])
    events = scan_cadence(cadence)
    assert len(events) == 2, events
    for n in (NEEDLE, DRIFT):
        hit = events.iloc[(events["channel"] - channel_at_middle(n)).abs().argmin()]
        assert abs(hit["channel"] - channel_at_middle(n)) <= 3
        assert hit["drift_hz_s"] == pytest.approx(n.drift, abs=0.01)
        assert hit["freq_mhz"] == pytest.approx(6000.0 - channel_at_middle(n) * CHANNEL_HZ * 1e-6, abs=5e-6)
        assert hit["freq_start_mhz"] >= hit["freq_mhz"] >= hit["freq_end_mhz"]  # a descending band
        assert hit["reference"] > 10 and np.isnan(hit["probability"])
    assert events["reference"].is_monotonic_decreasing
    assert events["files"].iloc[0].split(";") == [str(p) for p in observation["h5"]]


def test_events_do_not_depend_on_the_chunk_or_the_file_format(observation):
    wide = scan_cadence(open_cadence(observation["h5"]), ScanConfig(chunk=65536))
    narrow = scan_cadence(open_cadence(observation["fil"]), ScanConfig(chunk=1024))
    pd.testing.assert_frame_equal(wide[["channel", "drift_hz_s"]], narrow[["channel", "drift_hz_s"]], check_dtype=False)
    np.testing.assert_allclose(wide["reference"], narrow["reference"], rtol=0.1)  # the noise is estimated per chunk


def test_every_window_of_the_band_is_scored_once(observation):
    cadence = open_cadence(observation["h5"])
    windows = pd.concat(list(scan_windows(cadence, ScanConfig(chunk=1000, window=256, step=100))))
    assert windows["start"].tolist() == [*range(0, CHANNELS - 256 + 1, 100), CHANNELS - 256]
    assert ((windows["channel"] >= windows["start"]) & (windows["channel"] < windows["stop"])).all()
    grid = search_grid(cadence, ScanConfig())
    assert cadence.gap_rows == 1 and grid.hz_per_s == pytest.approx(-CHANNEL_HZ / ROW_SECONDS)


def test_a_lower_threshold_and_top_k(observation):
    cadence = open_cadence(observation["h5"])
    many = scan_cadence(cadence, ScanConfig(threshold=1.0))
    assert len(many) > 2
    best = scan_cadence(cadence, ScanConfig(threshold=1.0, top_k=1))
    assert len(best) == 1 and best["reference"].iloc[0] == many["reference"].max()


def test_scan_settings_and_band_are_checked(observation):
    cadence = open_cadence(observation["h5"])
    for cfg, message in [
        (ScanConfig(step=0), "window step must be 1..window"),
        (ScanConfig(chunk=100), "must hold at least one window"),
        (ScanConfig(max_drift=-1.0), "max drift must be"),
        (ScanConfig(max_drift=50.0, chunk=1024), "raise --chunk above"),
        (ScanConfig(window=8192), "fewer than one window"),
    ]:
        with pytest.raises(ConfigError, match=message):
            scan_cadence(cadence, cfg)


def _scan(*args):
    return CliRunner().invoke(app, ["scan", *map(str, args)])


def test_the_command_writes_events_resumes_and_refuses_other_settings(observation, tmp_path):
    out = tmp_path / "events.csv"
    result = _scan(*observation["h5"], "--out", out, "--turboseti-csv", tmp_path / "ts.csv", "--quiet")
    assert result.exit_code == 0, result.output
    events = pd.read_csv(out)
    assert len(events) == 2 and (events["cadence"] == "0_TARGET").all()
    turbo = read_event_csv(tmp_path / "ts.csv")
    assert turbo["DriftRate"].tolist() == pytest.approx(events["drift_hz_s"].tolist())
    assert (turbo["status"] == "on_table_1").all()
    again = _scan(*observation["h5"], "--out", out, "--quiet")
    assert again.exit_code == 0 and "1 cadence(s) scanned earlier" in again.output
    other = _scan(*observation["h5"], "--out", out, "--max-drift", "0.2", "--quiet")
    assert other.exit_code == 2 and "scanned earlier with other scan" in other.output


def test_bad_inputs_are_one_line_and_write_nothing(observation, tmp_path):
    out = tmp_path / "events.csv"
    listing = tmp_path / "list.csv"
    pd.DataFrame({"cadence": ["a"] * 5, "path": [str(p) for p in observation["h5"][:5]]}).to_csv(listing, index=False)
    cases = [
        ([*observation["h5"][:5]], "a cadence is 6 files in ABACAD order"),
        ([*observation["h5"], "--cadences", listing], "not both"),
        (["--cadences", listing], "cadence 'a' lists 5 files, not 6"),
        (["--cadences", tmp_path / "none.csv"], "none.csv: file not found"),
        ([*observation["h5"], "--run", tmp_path / "norun"], "norun: config.yaml not found"),
    ]
    for args, message in cases:
        result = _scan(*args, "--out", out, "--quiet")
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


def test_a_kaggle_trained_run_is_refused_unless_resampled(observation, trained_runs, tmp_path):
    run = trained_runs[1][0]
    refused = _scan(*observation["h5"], "--run", run, "--out", tmp_path / "e.csv", "--quiet")
    assert refused.exit_code == 2 and "trained on 273-row cadences, these files hold 16 rows" in refused.output
    assert not (tmp_path / "e.csv").exists()
    ok = _scan(*observation["h5"], "--run", run, "--resample", "--threshold", "0", "--out", tmp_path / "e.csv")
    assert ok.exit_code == 0, ok.output
    events = pd.read_csv(tmp_path / "e.csv")
    assert events["probability"].between(0, 1).all() and events["probability"].is_monotonic_decreasing


def test_a_cadence_list_split_over_two_torchrun_processes_equals_one_process(observation, tmp_path):
    listing = tmp_path / "list.csv"
    rows = [(name, str(p)) for name, fmt in (("obs_h5", "h5"), ("obs_fil", "fil")) for p in observation[fmt]]
    pd.DataFrame(rows, columns=["cadence", "path"]).to_csv(listing, index=False)
    assert [name for name, _ in read_cadence_list(listing)] == ["obs_h5", "obs_fil"]
    single = _scan("--cadences", listing, "--out", tmp_path / "one.csv", "--quiet")
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "seti_fastai.cli", "scan", "--cadences", str(listing), "--out", str(tmp_path / "two.csv"), "--quiet"]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    pd.testing.assert_frame_equal(one, two)
    assert set(two["cadence"]) == {"obs_h5", "obs_fil"}
    assert sorted(p.name for p in (tmp_path / "two.csv.parts").glob("*.csv")) == ["obs_fil.csv", "obs_h5.csv"]


DAT = """# -------------------------- o --------------------------
# File ID: 0_TARGET.h5
# -------------------------- o --------------------------
# Source:TARGET
# MJD: 59105.592593\tRA: 0h00m00s\tDEC: 0d00m00s
# DELTAT:  18.253611\tDELTAF(Hz):  -2.793968\tmax_drift_rate:   0.400000\tobs_length: 292.057776
# --------------------------
# Top_Hit_# \tDrift_Rate \tSNR \tUncorrected_Frequency \tCorrected_Frequency \tIndex \tfreq_start \tfreq_end \t\
SEFD \tSEFD_freq \tCoarse_Channel_Number \tFull_number_of_hits \t
# --------------------------
001\t -0.200000\t 25.123456\t 5999.997206\t 5999.997206\t1000\t 5999.997564\t 5999.996849\t0.0\t 0.000000\t0\t12\t
"""


def test_turboseti_dat_files_are_read_and_foreign_ones_refused(tmp_path):
    dat = tmp_path / "0_TARGET.dat"
    dat.write_text(DAT)
    hits = read_dat(dat)
    assert len(hits) == 1 and hits["DriftRate"].iloc[0] == pytest.approx(-0.2) and hits["ChanIndx"].iloc[0] == 1000
    assert (hits["FileID"].iloc[0], hits["Source"].iloc[0], hits["DELTAT"].iloc[0]) == (
        "0_TARGET.h5",
        "TARGET",
        18.253611,
    )
    (tmp_path / "x.dat").write_text("hello\n")
    with pytest.raises(DataLayoutError, match=r"not a turboSETI \.dat file"):
        read_dat(tmp_path / "x.dat")


TURBOSETI_PYTHON = os.environ.get("SETI_TURBOSETI_PYTHON")  # a Python with turbo_seti 2.3.2 (it needs numpy<2)


@pytest.mark.skipif(not TURBOSETI_PYTHON, reason="set SETI_TURBOSETI_PYTHON to a Python with turbo_seti installed")
def test_turboseti_finds_the_needle_the_scan_finds_and_its_dat_file_reads(observation, tmp_path):
    code = (
        "import sys; from turbo_seti.find_doppler.find_doppler import FindDoppler; "
        "FindDoppler(sys.argv[1], max_drift=0.4, snr=10, out_dir=sys.argv[2], log_level_int=40).search()"
    )
    first = observation["h5"][0]
    proc = subprocess.run([TURBOSETI_PYTHON, "-c", code, str(first), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = read_dat(tmp_path / f"{first.stem}.dat")
    channel = (6000.0 - hits["Uncorrected_Frequency"]) / (CHANNEL_HZ * 1e-6)  # ChanIndx counts within a coarse channel
    hit = hits.iloc[(channel - NEEDLE.channel).abs().argmin()]
    assert abs(channel - NEEDLE.channel).min() <= 3 and hit["DriftRate"] == pytest.approx(NEEDLE.drift, abs=0.03)
    event = scan_cadence(open_cadence(observation["h5"])).iloc[0]
    assert event["drift_hz_s"] == pytest.approx(hit["DriftRate"], abs=0.03)
