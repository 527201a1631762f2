"""The Kaggle data layer: label CSVs, paths, loading with validation, cadence -> image (the image recipe)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seti_fastai.data.cadence import (
    CADENCE_SHAPE,
    KaggleData,
    channel_medians,
    load_cadence,
    open_cadence,
    read_id_csv,
)
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.errors import CadenceFileError, DataLayoutError, LabelFileError


def test_synthetic_set_has_the_kaggle_layout(synth_data, synth_cfg):
    root, hidden = synth_data
    kaggle = KaggleData(root)
    sizes = synth_cfg.split_sizes()
    for split, id_length in [("train", 15), ("test", 15), ("old-train", 12), ("old-test", 12)]:
        ids = kaggle.read_labels(split)["id"]
        assert len(ids) == sizes[split]
        assert ids.str.len().eq(id_length).all()
        kaggle.check_files(split, ids)
        raw = np.load(kaggle.cadence_path(split, ids.iloc[0]))
        assert raw.dtype == np.float16 and raw.shape == CADENCE_SHAPE
    assert (root / "train" / "0").is_dir() and (root / "test" / "f").is_dir()
    submission = pd.read_csv(root / "sample_submission.csv")
    assert list(submission.columns) == ["id", "target"]
    hidden_labels = pd.read_csv(hidden / "test_labels.csv", dtype={"id": str})
    assert hidden_labels["id"].tolist() == submission["id"].astype(str).tolist()
    assert not (root / "test_labels.csv").exists(), "test labels must stay outside the data folder"


def test_every_panel_is_standardised(synth_data):
    root, _ = synth_data
    kaggle = KaggleData(root)
    cadence = load_cadence(kaggle.cadence_path("train", kaggle.read_labels()["id"].iloc[3]))
    assert cadence.dtype == np.float32
    np.testing.assert_allclose(cadence.mean(axis=(1, 2)), 0.0, atol=1e-2)
    np.testing.assert_allclose(cadence.std(axis=(1, 2)), 1.0, atol=1e-2)


def test_positive_share_matches_pos_rate(synth_data, synth_cfg):
    labels = KaggleData(synth_data[0]).read_labels()
    assert labels["target"].sum() == round(synth_cfg.n_train * synth_cfg.pos_rate)


@pytest.mark.parametrize(
    ("panels", "layout", "shape"),
    [
        ("on", "stack", (1, 819, 256)),
        ("all", "stack", (1, 1638, 256)),
        ("on", "channels", (3, 273, 256)),
        ("all", "channels", (6, 273, 256)),
        ("on", "diff", (1, 819, 256)),
        ("all", "diff", (1, 819, 256)),
    ],
)
def test_cadence_to_image_shapes(panels, layout, shape):
    cadence = np.random.default_rng(0).normal(size=CADENCE_SHAPE).astype(np.float16)
    image = ImageRecipe(panels, layout).to_image(cadence)
    assert image.shape == shape == ImageRecipe(panels, layout).shape
    assert image.dtype == np.float32
    if panels == "on" and layout == "stack":  # panel 2 (the second ON panel) sits in rows 273..545
        np.testing.assert_array_equal(image[0, 273:546], cadence[2].astype(np.float32))


def test_standardize_option_scales_each_panel():
    rng = np.random.default_rng(1)
    cadence = (rng.normal(size=CADENCE_SHAPE) * np.arange(1, 7)[:, None, None] + 5).astype(np.float32)
    image = ImageRecipe("all", "channels", standardize=True).to_image(cadence)
    np.testing.assert_allclose(image.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(image.std(axis=(1, 2)), 1.0, atol=1e-4)


# --- bad input: each is rejected with a message naming the file or row -------------------------------------


def _write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,target\nabc,0\n", "missing column(s) id"),
        ("id,label\nabc,0\n", "missing column(s) target"),
        ("id,target\nabc,0\nabd,1\nabc,1\n", "row 4: duplicate id abc"),
        ("id,target\nabc,0\nabd,2\n", "row 3: target 2 is not 0 or 1"),
        ("id,target\nabc,0\nabd,\n", "row 3: target nan is not 0 or 1"),
        ("id,target\nab c,0\n", "row 2: id 'ab c' is not a lower-case hexadecimal string"),
        ("id,target\n", "no rows"),
    ],
)
def test_bad_label_csv_is_rejected(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(LabelFileError) as err:
        read_id_csv(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_label_file_and_data_folder(tmp_path):
    with pytest.raises(LabelFileError, match="file not found"):
        read_id_csv(tmp_path / "nope.csv")
    with pytest.raises(DataLayoutError, match="data folder not found"):
        KaggleData(tmp_path / "missing")


def test_listed_id_without_file_is_named(tmp_path):
    kaggle = KaggleData(tmp_path)
    with pytest.raises(CadenceFileError, match=r"train/a/abc\.npy: file not found.*\(and 1 more\)"):
        kaggle.check_files("train", ["abc", "bcd"])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((6, 273, 255), np.float16), "shape (6, 273, 255), expected (6, rows, 256)"),
        (np.zeros((6, 2, 256), np.float16), "shape (6, 2, 256), expected (6, rows, 256) with 4 <= rows"),
        (np.zeros((3, 273, 256), np.float32), "shape (3, 273, 256)"),
        (np.zeros(CADENCE_SHAPE, np.float64), "dtype float64, expected float16 or float32"),
        (np.zeros(CADENCE_SHAPE, np.int16), "dtype int16"),
    ],
)
def test_bad_cadence_file_is_rejected(tmp_path, array, message):
    path = tmp_path / "abc.npy"
    np.save(path, array)
    with pytest.raises(CadenceFileError) as err:
        load_cadence(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_cadences_of_any_rows_load_and_a_split_holds_one_number_of_rows(tmp_path):
    for i, rows in enumerate([16, 16, 273]):
        path = tmp_path / "train" / "a" / f"a{i}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((6, rows, 256), np.float16))
    pd.DataFrame({"id": ["a0", "a1", "a2"], "target": [0, 1, 0]}).to_csv(tmp_path / "train_labels.csv", index=False)
    kaggle = KaggleData(tmp_path)
    assert load_cadence(kaggle.cadence_path("train", "a0")).shape == (6, 16, 256) and kaggle.rows("train") == 16
    with pytest.raises(CadenceFileError, match=r"a2\.npy: 273 rows per panel, the split's first cadence has 16"):
        kaggle.check_arrays("train", tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(tmp_path, bad):
    array = np.zeros(CADENCE_SHAPE, np.float16)
    array[4, 100, 7] = bad
    path = tmp_path / "abc.npy"
    np.save(path, array)
    with pytest.raises(CadenceFileError, match="1 NaN or infinite value"):
        load_cadence(path)


def test_unreadable_npy_is_rejected(tmp_path):
    path = _write(tmp_path, "not numpy", "abc.npy")
    with pytest.raises(CadenceFileError, match=r"not a readable \.npy array"):
        load_cadence(path)


def test_diff_layout_is_each_on_panel_minus_its_neighbouring_off_panels():
    rng = np.random.default_rng(1)
    cadence = rng.normal(size=CADENCE_SHAPE).astype(np.float32)
    image = ImageRecipe("on", "diff").to_image(cadence)[0]
    centred = cadence - np.median(cadence, axis=1, keepdims=True)  # per panel, per channel, over time
    expected = [
        centred[0] - centred[1],
        centred[2] - (centred[1] + centred[3]) / 2,
        centred[4] - (centred[3] + centred[5]) / 2,
    ]
    for k in range(3):
        np.testing.assert_allclose(image[k * 273 : (k + 1) * 273], expected[k], atol=1e-5)
    np.testing.assert_allclose(channel_medians(cadence), np.median(cadence, axis=1, keepdims=True))


def test_diff_layout_keeps_a_needle_and_cancels_what_on_and_off_share():
    cadence = np.zeros(CADENCE_SHAPE, dtype=np.float32)
    cadence[:, 100:140, 50] = 5.0  # RFI: the same short line in all six panels
    cadence[[0, 2, 4], 10:60, 200] = 3.0  # a needle: ON panels only
    cadence[[1, 3, 5], 10:60, 20] = 3.0  # a decoy: OFF panels only
    image = ImageRecipe("on", "diff").to_image(cadence)[0]
    assert np.abs(image[:, 50]).max() == 0.0
    assert image[10:60, 200].min() == 3.0
    assert image[10:60, 20].max() < 0


# --- hostile or odd input: refused before anything runs or is allocated, or read exactly ---------------------


class _Payload:
    """Unpickling this creates `marker`: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_npy_header(path, descr: str, shape: tuple, payload: bytes = b"") -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(payload)


@pytest.mark.parametrize("mmap", [False, True])
def test_object_npy_is_refused_without_unpickling(tmp_path, mmap):
    import pickle

    marker = tmp_path / "pwned"
    small = tmp_path / "small.npy"  # what np.save writes for an object array
    np.save(small, np.array([_Payload(marker), None], dtype=object), allow_pickle=True)
    right_shape = tmp_path / "right_shape.npy"  # a header claiming the cadence shape, then the pickle
    _write_npy_header(right_shape, "|O", CADENCE_SHAPE, pickle.dumps(_Payload(marker)))
    for path in (small, right_shape):
        with pytest.raises(CadenceFileError, match=f"{path.name}: (shape|dtype object)"):
            open_cadence(path, mmap=mmap)
        with pytest.raises(CadenceFileError):
            load_cadence(path)
    assert not marker.exists(), "the pickle ran"
    np.load(small, allow_pickle=True)  # the payload is live: loading it with pickles allowed runs it
    assert marker.exists()


@pytest.mark.parametrize("shape", [(6, 273, 2**40), (2**31, 2**31, 2**31), (6, 273, 256, 10**9)])
def test_huge_shape_in_header_is_refused_before_reading(tmp_path, monkeypatch, shape):
    path = tmp_path / "huge.npy"
    _write_npy_header(path, "<f4", shape, b"\0" * 64)

    def no_load(*args, **kwargs):
        raise AssertionError("np.load called: data would be read before the header was checked")

    monkeypatch.setattr(np, "load", no_load)
    for mmap in (False, True):
        with pytest.raises(CadenceFileError, match=r"huge\.npy: shape \("):
            open_cadence(path, mmap=mmap)


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        ({"descr": "<f2", "fortran_order": False, "shape": CADENCE_SHAPE}, b"\0" * 100, "not a readable .npy"),
        ({"descr": "<f8", "fortran_order": False, "shape": CADENCE_SHAPE}, b"", "dtype float64"),
    ],
)
def test_truncated_or_mistyped_npy_is_one_error(tmp_path, header, payload, message):
    path = tmp_path / "abc.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    for mmap in (False, True):
        with pytest.raises(CadenceFileError, match=message.replace(".", r"\.")):
            open_cadence(path, mmap=mmap)


def test_empty_and_version_3_npy_are_refused(tmp_path):
    empty = _write(tmp_path, "", "empty.npy")
    with pytest.raises(CadenceFileError, match=r"empty\.npy: not a readable \.npy array"):
        load_cadence(empty)
    v3 = tmp_path / "v3.npy"
    v3.write_bytes(np.lib.format.magic(3, 0) + b"\0" * 64)
    with pytest.raises(CadenceFileError, match=r"unsupported \.npy format version 3\.0"):
        load_cadence(v3)


def test_fortran_order_and_float16_cadences_load_exactly(tmp_path):
    array = np.random.default_rng(0).normal(size=CADENCE_SHAPE).astype(np.float16)
    path = tmp_path / "abc.npy"
    np.save(path, np.asfortranarray(array))
    np.testing.assert_array_equal(load_cadence(path), array.astype(np.float32))
    np.testing.assert_array_equal(open_cadence(path, mmap=True), array)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbfid,target\nabc,0\nabd,1\n",  # byte-order mark (Excel's "CSV UTF-8")
        b"id,target\r\nabc,0\r\nabd,1\r\n",  # CRLF
        b"\xef\xbb\xbf id , target \r\n abc , 0\r\nabd ,1 \r\n",  # all of it, with spaces around names and values
        b'"id","target"\n"abc","0"\n"abd","1"\n',  # quoted
    ],
)
def test_label_csv_quirks_are_read_exactly(tmp_path, raw):
    path = tmp_path / "labels.csv"
    path.write_bytes(raw)
    df = read_id_csv(path)
    assert df["id"].tolist() == ["abc", "abd"] and df["target"].tolist() == [0, 1]
    assert read_id_csv(path, require_target=False)["id"].tolist() == ["abc", "abd"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"id,target\nabc,0\nABD,1\n", "row 3: id 'ABD' is upper-case; ids and file names are lower-case"),
        (b"\xef\xbb\xbfid,target\r\nabc,0\r\n aBd ,1\r\n", "row 3: id 'aBd' is upper-case"),
        (b"id, id,target\nabc,abc,0\n", "duplicate column names id, id, target"),
        (b"id,target\nabc,0\nab\xe9,1\n", "not a readable CSV"),
        ("id,target\nabc,0\n".encode("utf-16"), "not a readable CSV"),
    ],
)
def test_label_csv_quirks_that_would_misread_are_refused(tmp_path, raw, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(raw)
    with pytest.raises(LabelFileError) as err:
        read_id_csv(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("rows", [273, 16, 1])
def test_channel_medians_are_numpys_medians_for_odd_and_even_rows(rows):
    cadence = np.random.default_rng(rows).normal(size=(6, rows, 256)).astype(np.float32)
    np.testing.assert_array_equal(channel_medians(cadence), np.median(cadence, axis=1, keepdims=True))
