"""The setigen synthetic data set: determinism, needles in ON panels only, overlapping backgrounds."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from seti_fastai.data.cadence import N_CHANNELS, OFF_PANELS, KaggleData, load_cadence
from seti_fastai.data.inject import parse_shape_weights
from seti_fastai.data.synth import (
    SynthConfig,
    import_setigen,
    plan_cadences,
    signal_of,
    write_synthetic,
)
from seti_fastai.errors import ConfigError


def _meta(hidden) -> pd.DataFrame:
    meta = pd.read_csv(hidden / "meta.csv", dtype={"id": str, "on_panels": str})
    meta["index"] = np.arange(len(meta))
    return meta


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    cfg = SynthConfig(n_train=12, n_test=4, pos_rate=0.25, seed=3)
    a, _ = write_synthetic(cfg, tmp_path / "a", workers=1)
    b, _ = write_synthetic(cfg, tmp_path / "b", workers=2)
    c, _ = write_synthetic(SynthConfig(n_train=12, n_test=4, pos_rate=0.25, seed=4), tmp_path / "c", workers=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_needles_sit_in_on_panels_only(synth_data, synth_cfg):
    root, hidden = synth_data
    meta = _meta(hidden)
    kaggle, stg = KaggleData(root), import_setigen()
    needles = meta[(meta["kind"] == "needle") & (meta["split"] == "train")]
    assert len(needles) >= 10
    for row in needles.to_dict("records"):
        cadence = load_cadence(kaggle.cadence_path("train", row["id"]))
        signal = signal_of(stg, row, synth_cfg.seed)
        on = [int(p) for p in row["on_panels"].split()]
        # the same path, read in the panels where the needle is kept and in the OFF panels
        path_on = np.mean([cadence[p][signal[p] > 0.5 * signal[p].max()].mean() for p in on])
        path_off = np.mean([cadence[p][signal[p] > 0.5 * signal[p].max()].mean() for p in OFF_PANELS])
        assert path_on > path_off + 0.5, (row["id"], path_on, path_off)


def test_decoys_off_show_in_off_panels(synth_data, synth_cfg):
    root, hidden = synth_data
    meta = _meta(hidden)
    decoys = meta[(meta["kind"] == "decoy_off") & meta["split"].isin(["train", "test"])].head(5)
    stg = import_setigen()
    for row in decoys.to_dict("records"):
        cadence = load_cadence(KaggleData(root).cadence_path(row["split"], row["id"]))
        signal = signal_of(stg, row, synth_cfg.seed)
        off = np.mean([cadence[p][signal[p] > 0.5 * signal[p].max()].mean() for p in OFF_PANELS])
        assert off > 0.3
    assert (meta.loc[meta["kind"].str.startswith("decoy"), "target"] == 0).all()


def test_backgrounds_overlap_after_a_shift(synth_data):
    """Plain negatives cut from the same strip match column for column after the offset shift; others do not."""
    root, hidden = synth_data
    meta = _meta(hidden)
    plain = meta[meta["kind"] == "none"].to_dict("records")
    kaggle = KaggleData(root)

    def columns(row, lo, hi):
        return load_cadence(kaggle.cadence_path(row["split"], row["id"]))[1][:, lo:hi]  # an OFF panel

    same, different = [], []
    for i, a in enumerate(plain):
        for b in plain[i + 1 :]:
            shift = int(b["offset"] - a["offset"])
            if not 0 <= shift <= N_CHANNELS - 64:
                continue
            x, y = columns(a, shift, N_CHANNELS).ravel(), columns(b, 0, N_CHANNELS - shift).ravel()
            (same if a["strip"] == b["strip"] else different).append(np.corrcoef(x, y)[0, 1])
    assert len(same) >= 3 and len(different) >= 3
    assert min(same) > 0.9, same
    assert max(different) < 0.3, different
    # train and test share backgrounds, as in the real data
    by_strip = meta.groupby("strip")["split"].agg(set)
    assert any({"train", "test"} <= s for s in by_strip)


def test_difficulty_sets_the_brightness_range():
    easy = plan_cadences(SynthConfig(n_train=200, n_test=0, difficulty="easy"))
    hard = plan_cadences(SynthConfig(n_train=200, n_test=0, difficulty="hard"))
    assert easy.loc[easy["kind"] == "needle", "brightness"].min() >= 1.0
    assert hard.loc[hard["kind"] == "needle", "brightness"].max() <= 0.8


def test_all_needle_shapes_are_drawn():
    plan = plan_cadences(SynthConfig(n_train=400, n_test=0, pos_rate=0.5))
    assert set(plan.loc[plan["kind"] == "needle", "shape"]) == {"line", "squared", "sine", "random_walk"}
    assert (plan.loc[plan["kind"] == "needle", "on_panels"] != "0 2 4").any(), "some needles skip an ON panel"


def test_test_split_can_hold_shapes_train_lacks():
    cfg = SynthConfig(
        n_train=400, n_test=400, pos_rate=0.5, shape_weights={"line": 1.0}, test_shape_weights={"sine": 1.0}
    )
    plan = plan_cadences(cfg)
    needles = plan[plan["kind"] == "needle"]
    assert set(needles.loc[needles["split"] == "train", "shape"]) == {"line"}
    assert set(needles.loc[needles["split"] == "test", "shape"]) == {"sine"}


def test_shape_weights_parse_and_reject_bad_text():
    assert parse_shape_weights("sine=0.6, line=0.4") == {"sine": 0.6, "line": 0.4}
    for bad in ("sine", "sine=x", "spiral=1", "sine=0", "sine=-1,line=2"):
        with pytest.raises(ConfigError):
            parse_shape_weights(bad)


@pytest.mark.parametrize(
    "cfg",
    [
        SynthConfig(test_shape_weights={"line": 0.0}),
        SynthConfig(pos_rate=0.0),
        SynthConfig(difficulty="insane"),
        SynthConfig(brightness=(2.0, 1.0)),
        SynthConfig(shape_weights={"spiral": 1.0}),
        SynthConfig(n_train=0),
    ],
)
def test_bad_synth_config_is_rejected(cfg):
    with pytest.raises(ConfigError):
        cfg.validate()


def test_existing_output_is_not_overwritten(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        write_synthetic(SynthConfig(n_train=4, n_test=0, pos_rate=0.5), tmp_path / "d")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "d_hidden").exists()
