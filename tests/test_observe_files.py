"""Six-file observations (setigen-written .h5 / .fil) read by channel range, and one line for each bad cadence."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from seti_fastai.errors import DataLayoutError
from seti_fastai.observe.files import ON_FILES, open_cadence, read_header
from seti_fastai.observe.synthetic import CHANNEL_HZ, ROW_SECONDS, SLEW_SECONDS, Needle, write_observation

CHANNELS, NEEDLE, DRIFT, RFI = 1024, 300, -0.2, 700


@pytest.fixture(scope="module")
def cadences(tmp_path_factory):
    root = tmp_path_factory.mktemp("observation")
    return {
        fmt: write_observation(
            root / fmt, [Needle(NEEDLE, DRIFT, snr=200)], [Needle(RFI, 0.0, snr=50)], channels=CHANNELS, fmt=fmt
        )
        for fmt in ("h5", "fil")
    }


def test_a_channel_range_holds_the_needle_in_on_files_only_and_rfi_in_all(cadences):
    cadence = open_cadence(cadences["h5"])
    assert (cadence.nchans, cadence.n_rows) == (CHANNELS, 16)
    assert [f.source for f in cadence.files] == ["TARGET", "OFF1", "TARGET", "OFF2", "TARGET", "OFF3"]
    x = cadence.read_channels(200, 456)
    assert x.shape == (6, 16, 256) and x.dtype == np.float32
    file_seconds = 16 * ROW_SECONDS + SLEW_SECONDS
    for i in range(6):
        expected = NEEDLE - DRIFT * (i * file_seconds + np.arange(16) * ROW_SECONDS) / CHANNEL_HZ - 200
        at_path = x[i, np.arange(16), np.round(expected).astype(int)]
        if i in ON_FILES:
            assert np.abs(x[i].argmax(1) - expected).max() <= 2
        else:
            assert at_path.mean() < np.percentile(x[i], 99)  # nothing there in the OFF files
    rfi = cadence.read_channels(RFI - 8, RFI + 8)
    assert (rfi.mean(1).argmax(1) == 8).all()
    assert cadence.frequency(0) == pytest.approx(6000.0) and cadence.frequency(1) < cadence.frequency(0)


def test_filterbank_and_hdf5_files_of_one_cadence_read_the_same(cadences):
    h5, fil = open_cadence(cadences["h5"]), open_cadence(cadences["fil"])
    np.testing.assert_allclose(h5.read_channels(100, 400), fil.read_channels(100, 400), rtol=1e-6)


def _copy(paths, tmp_path):
    out = []
    for p in paths:
        shutil.copy(p, tmp_path / p.name)
        out.append(tmp_path / p.name)
    return out


def test_each_bad_cadence_is_one_line_naming_the_file(cadences, tmp_path):
    good = _copy(cadences["h5"], tmp_path)
    far = write_observation(tmp_path / "far", channels=CHANNELS, fch1_mhz=7000.0)
    near = write_observation(tmp_path / "near", channels=CHANNELS, fch1_mhz=5999.999)
    short = write_observation(tmp_path / "short", channels=CHANNELS, rows=8)
    text = tmp_path / "notes.h5"
    text.write_text("not an observation")
    truncated = tmp_path / "cut.fil"
    truncated.write_bytes(cadences["fil"][1].read_bytes()[:-100])
    cases = [
        (good[:5], "a cadence is 6 files in ABACAD order"),
        ([good[0], far[1], *good[2:]], "does not overlap"),
        ([good[0], near[1], *good[2:]], "band (fch1 5999.999"),
        ([good[0], short[1], *good[2:]], "8 time rows of"),
        ([good[0], text, *good[2:]], "notes.h5: not a filterbank or HDF5 observation file"),
        ([good[0], truncated, *good[2:]], "cut.fil: truncated"),
        ([good[1], good[0], *good[2:]], "ON files (1st, 3rd, 5th) name different sources"),
        ([good[0], good[1], good[4], good[3], good[2], good[5]], "3_OFF2.h5: starts at MJD"),
        ([good[0], tmp_path / "missing.h5", *good[2:]], "missing.h5: file not found"),
        ([good[0], tmp_path / "x.npy", *good[2:]], "x.npy: not a filterbank (.fil) or HDF5 (.h5)"),
    ]
    (tmp_path / "x.npy").write_bytes(b"")
    for paths, message in cases:
        with pytest.raises(DataLayoutError) as e:
            open_cadence(paths)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_an_off_file_naming_the_on_source_is_refused(cadences, tmp_path):
    paths = write_observation(tmp_path / "c", channels=CHANNELS)
    on = write_observation(tmp_path / "d", channels=CHANNELS)
    with pytest.raises(DataLayoutError, match="an OFF position names the ON source 'TARGET'"):
        open_cadence([paths[0], paths[1], paths[2], on[0], paths[4], paths[5]])
    assert read_header(paths[3]).source == "OFF2"


def test_a_file_damaged_past_its_header_is_one_line_when_its_channels_are_read(cadences, tmp_path):
    paths = _copy(cadences["h5"], tmp_path)
    cadence = open_cadence(paths)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # the header (at the start) survives, the data do not
    with pytest.raises(DataLayoutError, match=r"2_TARGET\.h5: cannot read channels 0-1024"):
        cadence.read_channels(0, 1024)
