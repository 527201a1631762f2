"""Background matching and subtraction: shifts recovered with the right sign, backgrounds removed, needles kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from seti_fastai.cli import app
from seti_fastai.data.background import (
    MATCH_COLUMNS,
    fingerprint,
    match_cadences,
    matcher_scores,
    partner_paths,
    read_matches,
    subtract_background,
)
from seti_fastai.data.cadence import KaggleData, standardize_panels
from seti_fastai.errors import CadenceFileError, DataLayoutError

A, B, C = "a" * 15, "b" * 15, "c" * 15
OFFSET_A, OFFSET_B = 100, 160  # A and B are cut from one strip: they overlap on 196 channels at shift -60


def strip(seed: int, width: int = 600) -> np.ndarray:
    """A background strip: positive noise with a ripple across channels and a gain per panel."""
    rng = np.random.default_rng(seed)
    noise = rng.chisquare(4, size=(6, 273, width)) + 10.0
    ripple = 1 + 0.05 * np.sin(np.arange(width) / 40.0)
    return (noise * ripple * rng.uniform(0.8, 1.25, (6, 1, 1))).astype(np.float32)


def cut(background: np.ndarray, offset: int) -> np.ndarray:
    """A standardised float32 cadence cut at `offset`, as the hosts (and `synth`) made them."""
    return standardize_panels(background[:, :, offset : offset + 256].astype(np.float64)).astype(np.float32)


def write_layout(root, cadences: dict[str, dict[str, np.ndarray]]) -> KaggleData:
    """A tiny data folder in the Kaggle layout: {split: {id: cadence}}, saved as float16."""
    labels = {"train": "train_labels.csv", "test": "sample_submission.csv"}
    for split, items in cadences.items():
        for cid, cadence in items.items():
            path = root / split / cid[0] / f"{cid}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, cadence.astype(np.float16))
        pd.DataFrame({"id": list(items), "target": 0}).to_csv(root / labels[split], index=False)
    return KaggleData(root)


@pytest.fixture
def tiny(tmp_path) -> KaggleData:
    """A and C in train, B in test; A and B share a strip, C has its own."""
    one, other = strip(1), strip(2)
    cadences = {"train": {A: cut(one, OFFSET_A), C: cut(other, 50)}, "test": {B: cut(one, OFFSET_B)}}
    return write_layout(tmp_path / "data", cadences)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_fingerprint_shape_and_bad_file(tiny, tmp_path):
    fp = fingerprint(tiny.cadence_path("train", A))
    assert fp.shape == (256,) and fp.dtype == np.uint64
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((6, 273, 255), np.float16))
    with pytest.raises(CadenceFileError, match=r"bad\.npy: shape"):
        fingerprint(bad)


def test_match_recovers_shift_and_its_sign(tiny):
    matches = match_cadences(tiny, ["train", "test"])
    assert list(matches.columns) == MATCH_COLUMNS
    assert set(matches["id"]) == {A, B}, "C shares no background"
    row = matches.set_index("id").loc[A]
    assert (row["partner"], row["partner_split"], row["shift"], row["overlap"]) == (B, "test", -60, 196)
    assert row["shift"] == OFFSET_A - OFFSET_B and row["similarity"] > 0.9
    assert matches.set_index("id").loc[B, "shift"] == 60
    # the convention: channel c of id shows the same frequency as channel c + shift of partner
    a, b = np.load(tiny.cadence_path("train", A)), np.load(tiny.cadence_path("test", B))
    c = 200
    assert np.corrcoef(a[1, :, c], b[1, :, c + row["shift"]])[0, 1] > 0.99


def test_match_synthetic_set(synth_data):
    data, hidden = synth_data
    matches = match_cadences(KaggleData(data), ["train", "test", "old-train", "old-test"])
    scores = matcher_scores(matches, pd.read_csv(hidden / "meta.csv", dtype={"id": str}))
    assert scores["precision"] >= 0.99 and scores["recall"] >= 0.9, scores
    assert scores["true"] > 0


def test_matcher_scores_counts_wrong_shift():
    meta = pd.DataFrame({"id": [A, B, C], "strip": [0, 0, 1], "offset": [100, 160, 0]})
    right = pd.DataFrame({"id": [A, B], "partner": [B, A], "shift": [-60, 60]})
    assert matcher_scores(right, meta)["precision"] == 1.0 and matcher_scores(right, meta)["recall"] == 1.0
    wrong = pd.DataFrame({"id": [A, A], "partner": [B, C], "shift": [60, 0]})
    scores = matcher_scores(wrong, meta)
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0


def test_subtract_without_partner_is_unchanged():
    cadence = cut(strip(3), 0)
    out = subtract_background(cadence, [])
    assert out.dtype == np.float32 and out.shape == (6, 273, 256) and np.array_equal(out, cadence)


def test_subtract_removes_shared_background_and_keeps_needle():
    background = strip(4)
    raw = background[:, :, OFFSET_A : OFFSET_A + 256].copy()
    raw[0, :, 150:152] += 8.0  # a needle in ON panel 0, inside the overlap
    cadence = standardize_panels(raw.astype(np.float64)).astype(np.float16).astype(np.float32)
    partner = cut(background, OFFSET_B).astype(np.float16).astype(np.float32)
    shift = OFFSET_A - OFFSET_B
    out = subtract_background(cadence, [(partner, shift)])
    overlap = slice(-shift, 256)  # channel c of the cadence is channel c + shift of the partner
    assert np.abs(out[1:, :, overlap]).max() < 0.01, "the shared background is gone in every other panel"
    assert out[0, :, 150:152].mean() > 2.0 and np.abs(out[0, :, 70:140]).mean() < 0.02, "the needle stays alone"
    assert np.array_equal(out[:, :, :-shift], cadence[:, :, :-shift]), "uncovered channels pass unchanged"


def test_subtract_first_partner_wins():
    background = strip(5)
    cadence = cut(background, 200)
    near, far = cut(background, 210), cut(background, 150)
    out = subtract_background(cadence, [(near, -10), (far, 50)])
    assert np.abs(out).max() < 1e-3, "the two partners cover every channel between them"
    only_near = subtract_background(cadence, [(near, -10)])
    assert np.array_equal(out[:, :, 10:], only_near[:, :, 10:]), "channels of the first partner are left to it"


def test_partner_paths_best_first(tiny):
    matches = pd.DataFrame(
        {
            "id": [A, A, A],
            "split": "train",
            "partner": [B, C, B],
            "partner_split": ["test", "train", "test"],
            "shift": [-60, 10, 200],
            "overlap": [196, 246, 56],
            "similarity": [0.99, 0.9, 0.95],
        }
    )
    paths = partner_paths(matches, tiny, max_partners=2)
    assert paths == {A: [(str(tiny.cadence_path("train", C)), 10), (str(tiny.cadence_path("test", B)), -60)]}


def test_read_matches_round_trip_and_errors(tiny, tmp_path):
    path = tmp_path / "matches.csv"
    match_cadences(tiny, ["train", "test"]).to_csv(path, index=False)
    assert len(read_matches(path, known_ids={A, B, C})) == 2
    with pytest.raises(DataLayoutError) as e:
        read_matches(path, known_ids={A, C})
    assert str(e.value) == (
        f"{path}: row 2: unknown partner '{B}' (a matches file of other data? make this data's with `seti-fastai match "
        "DATA`)"
    )
    with pytest.raises(DataLayoutError, match=r"nowhere\.csv: file not found") as e:
        read_matches(tmp_path / "nowhere.csv")
    assert "\n" not in str(e.value)


def test_match_command(tiny, tmp_path):
    result = run("match", tiny.root, "--workers", 1)
    assert result.exit_code == 0, result.output
    written = tiny.root / "matches.csv"
    assert len(read_matches(written, {A, B, C})) == 2
    assert "2 of 3 cadences (66.7%) have at least one partner" in result.stdout
    one_line_error(run("match", tmp_path / "nowhere"), "nowhere: data folder not found")
    one_line_error(run("match", tiny.root, "--splits", "train,bogus", "--out", tmp_path / "x.csv"), "unknown split")
    np.save(tiny.cadence_path("test", B), np.zeros((6, 273, 256), np.float64))
    one_line_error(run("match", tiny.root, "--out", tmp_path / "x.csv"), f"{B}.npy: dtype float64")
    assert not (tmp_path / "x.csv").exists()
