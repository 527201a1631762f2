"""The command line: each user error ends in one line on stderr and exit code 2; outputs are complete or absent."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from seti_fastai.cli import app


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    # a progress bar may have started before the error was found; apart from it, stderr is the one error line
    lines = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def data_copy(synth_data, tmp_path):
    """A private copy of the session's data set, without the files other tests derived beside it (folds, caches)."""
    root = tmp_path / "data"
    derived = shutil.ignore_patterns("folds_*.csv", "matches.csv", "dedoppler_*.csv", "packed")
    shutil.copytree(synth_data[0], root, ignore=derived)
    return root


def test_synth_and_folds_commands(tmp_path):
    out = tmp_path / "set"
    result = run(
        "synth",
        out,
        "--n-train",
        40,
        "--n-test",
        8,
        "--pos-rate",
        0.2,
        "--workers",
        1,
        "--preview",
        tmp_path / "preview.png",
    )
    assert result.exit_code == 0, result.output
    assert (out / "train_labels.csv").is_file() and (tmp_path / "set_hidden" / "test_labels.csv").is_file()
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("folds", out)
    assert result.exit_code == 0 and "wrote" in result.stdout and "pos_rate" in result.stdout
    assert run("folds", out).stdout.startswith("reusing")
    one_line_error(run("synth", out), "already exists")


def test_folds_missing_data_folder(tmp_path):
    one_line_error(run("folds", tmp_path / "nowhere"), "nowhere: data folder not found")


def test_folds_listed_id_without_file(data_copy):
    victim = next((data_copy / "train").rglob("*.npy"))
    victim.unlink()
    one_line_error(run("folds", data_copy), f"{victim}: file not found")
    assert not list(data_copy.glob("folds_*.csv")), "no fold file is written when a file is missing"


@pytest.mark.parametrize(
    ("csv", "fragment"),
    [
        ("id,label\n", "missing column(s) target"),
        ("id,target\naa,0\naa,1\n", "row 3: duplicate id aa"),
        ("id,target\naa,0\nbb,3\n", "row 3: target 3 is not 0 or 1"),
    ],
)
def test_folds_bad_label_csv(data_copy, csv, fragment):
    (data_copy / "train_labels.csv").write_text(csv)
    one_line_error(run("folds", data_copy), "train_labels.csv", fragment)


def test_synth_bad_option(tmp_path):
    one_line_error(run("synth", tmp_path / "x", "--difficulty", "insane"), "unknown difficulty 'insane'")
    one_line_error(run("synth", tmp_path / "x", "--pos-rate", 1.5), "pos_rate must be in (0, 1)")
    assert not (tmp_path / "x").exists()


def test_bad_array_is_named(data_copy):
    from seti_fastai.data.cadence import KaggleData, load_cadence
    from seti_fastai.errors import CadenceFileError

    path = next((data_copy / "train").rglob("*.npy"))
    np.save(path, np.zeros((6, 273, 256), np.float64))
    with pytest.raises(CadenceFileError, match="dtype float64"):
        load_cadence(KaggleData(data_copy).cadence_path("train", path.stem))


def test_folds_check_arrays_reports_every_bad_file(data_copy, tmp_path):
    import pandas as pd

    for stale in data_copy.glob("folds_*.csv"):  # left in the shared set by a test that trained on it
        stale.unlink()
    victims = sorted((data_copy / "train").rglob("*.npy"))[:3]
    np.save(victims[0], np.zeros((6, 273, 255), np.float16))  # wrong shape
    victims[1].write_bytes(victims[1].read_bytes()[:1000])  # truncated
    nan = np.load(victims[2])
    nan[1, 2, 3] = np.nan
    np.save(victims[2], nan)
    work = tmp_path / "work"
    result = run("folds", data_copy, "--check-arrays", "--work-dir", work)
    report = work / "bad_arrays_train.csv"
    one_line_error(result, "3 of 64 cadence files are bad", f"all listed in {report}", "first: ", str(victims[0]))
    bad = pd.read_csv(report)
    assert sorted(bad["path"]) == sorted(map(str, victims))
    reasons = " | ".join(bad["reason"])
    assert "shape (6, 273, 255)" in reasons and "not a readable .npy" in reasons and "1 NaN" in reasons
    assert not list(data_copy.glob("folds_*.csv")) and not list(work.glob("folds_*.csv"))
    assert not list(work.glob(".*partial"))


def test_folds_check_arrays_on_good_files_is_the_usual_output(data_copy, tmp_path):
    for stale in data_copy.glob("folds_*.csv"):
        stale.unlink()
    result = run("folds", data_copy, "--check-arrays")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {data_copy / 'folds_train_k4_seed42.csv'}") and "pos_rate" in result.stdout


def test_an_explicit_work_dir_or_out_wins_over_beside_the_data(data_copy, tmp_path):
    """The data folder is writable, but the user named a folder: the fold file and the packed cache go there, and
    training with that folder as --out finds them."""
    for stale in data_copy.glob("folds_*.csv"):
        stale.unlink()
    work = tmp_path / "work"
    assert run("folds", data_copy, "--work-dir", work).stdout.startswith(f"wrote {work / 'folds_train_k4_seed42.csv'}")
    assert run("pack", data_copy, "--split", "test", "--out", work).exit_code == 0
    assert (work / "packed" / "test.f16.npy").is_file() and not (data_copy / "packed").exists()
    assert not list(data_copy.glob("folds_*.csv"))
    again = run("folds", data_copy, "--work-dir", work)
    assert again.stdout.startswith(f"reusing {work / 'folds_train_k4_seed42.csv'}")


def test_an_output_over_an_input_of_the_data_folder_is_refused(data_copy, tmp_path):
    labels = data_copy / "train_labels.csv"
    before = labels.read_bytes()
    for args in (["predict", tmp_path / "no-run", "--data", data_copy, "--out", labels],
                 ["dedoppler", data_copy, "--split", "test", "--out", data_copy / "sample_submission.csv"],
                 ["match", data_copy, "--out", data_copy / "folds_train_k4_seed42.csv"]):  # fmt: skip
        one_line_error(run(*args), "that is", "--overwrite-input")
    assert labels.read_bytes() == before


# --- training commands -----------------------------------------------------------------------------------------

TINY = [
    "--arch",
    "test_efficientnet",
    "--size",
    "64",
    "--epochs",
    "1",
    "--bs",
    "8",
    "--workers",
    "0",
    "--no-resizer",
    "--no-pretrained",
    "--quiet",
]


def test_train_command_writes_a_run(synth_data, tmp_path):
    result = run("train", "--data", synth_data[0], "--out", tmp_path, *TINY)
    assert result.exit_code == 0, result.output
    assert "best validation AUC" in result.stdout and (tmp_path / "exp" / "fold0" / "metrics.json").is_file()


def test_train_flags_override_the_yaml(synth_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 5\nname: fromyaml\nmixup_p: 0.0\n")
    result = run("train", "--config", config, "--data", synth_data[0], "--out", tmp_path, *TINY)
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "fromyaml" / "fold0" / "config.yaml").read_text()
    assert "epochs: 1\n" in saved and "mixup_p: 0.0\n" in saved


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--arch", "efficientnetv2_mm"], "unknown architecture 'efficientnetv2_mm'; did you mean"),
        (["--fold", "7"], "fold 7 is out of range: the fold file has folds 0..3"),
        (["--panels", "some"], "panels must be one of on, all"),
        (["--size", "64,x"], "size must be a list of integers"),
        (["--lr", "nan"], "lr must be a finite number; got nan"),
        (["--epochs", "0"], "epochs must be >= 1; got 0"),
        (["--n-folds", "1"], "n_folds must be >= 2; got 1"),
    ],
)
def test_train_bad_flags(synth_data, tmp_path, args, fragment):
    one_line_error(run("train", "--data", synth_data[0], "--out", tmp_path, *TINY, *args), fragment)
    assert not list(tmp_path.rglob("model.pth"))


def test_train_missing_data(tmp_path):
    one_line_error(run("train", "--data", tmp_path / "nowhere", "--out", tmp_path, *TINY), "data folder not found")


def test_train_single_class_fold(data_copy, tmp_path):
    import pandas as pd

    assert run("folds", data_copy).exit_code == 0
    path = data_copy / "folds_train_k4_seed42.csv"
    folds = pd.read_csv(path, dtype={"id": str})
    folds.loc[(folds["fold"] == 1) & (folds["target"] == 1), "fold"] = 0  # fold 1 keeps negatives only
    folds.to_csv(path, index=False)
    one_line_error(
        run("train", "--data", data_copy, "--out", tmp_path, *TINY, "--fold", 1),
        "fold 1: validation set holds one class only",
    )


def test_train_init_from_other_architecture(synth_data, tmp_path):
    assert run("train", "--data", synth_data[0], "--out", tmp_path, "--name", "src", *TINY).exit_code == 0
    result = run(
        "train",
        "--data",
        synth_data[0],
        "--out",
        tmp_path,
        *TINY,
        "--arch",
        "resnet18",
        "--init-from",
        tmp_path / "src" / "fold0",
    )
    one_line_error(result, "trained as test_efficientnet, this run is resnet18")


def test_scripts_train_py_is_the_same_command(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    proc = subprocess.run(
        [sys.executable, script, "--arch", "efficientnetv2_mm", "--data", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown architecture 'efficientnetv2_mm'")


# --- inference commands ----------------------------------------------------------------------------------------


def test_predict_calibrate_evaluate_report(synth_data, trained_runs, tmp_path):
    root, hidden = synth_data
    exp, runs = trained_runs
    sub = tmp_path / "submission.csv"
    result = run("predict", *runs, "--data", root, "--out", sub, "--tta", "flips", "--workers", 0)
    assert result.exit_code == 0, result.output
    assert sub.is_file() and "wrote 16 predictions from 2 run(s)" in result.stdout
    result = run("evaluate", sub, hidden / "test_labels.csv", "--n-boot", 100)
    assert result.exit_code == 0 and result.stdout.startswith("AUC ")
    result = run("calibrate", *runs, "--pooled", "--out", tmp_path / "calibration.json")
    assert result.exit_code == 0 and "temperature" in result.stdout
    result = run(
        "predict",
        *runs,
        "--data",
        root,
        "--out",
        tmp_path / "s2.csv",
        "--calibration",
        tmp_path / "calibration.json",
        "--workers",
        0,
    )
    assert result.exit_code == 0 and result.stdout.startswith("temperature")
    result = run("report", exp)
    assert result.exit_code == 0, result.output
    assert "Out-of-fold AUC" in result.stdout
    for name in ("report.md", "roc.png", "reliability.png", "history.png"):
        assert (exp / "report" / name).is_file()


def test_predict_errors_leave_no_submission(synth_data, trained_runs, tmp_path):
    root, _ = synth_data
    sub = tmp_path / "submission.csv"
    one_line_error(run("predict", tmp_path, "--data", root, "--out", sub), "config.yaml not found")
    victim = next((root / "test").rglob("*.npy"))
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "test" / victim.parent.name / victim.name).unlink()
    one_line_error(run("predict", *trained_runs[1], "--data", data, "--out", sub), f"{victim.name}: file not found")
    one_line_error(
        run("predict", *trained_runs[1], "--data", root, "--out", sub, "--tta", "many"),
        "tta must be none, flips or a number",
    )
    assert not sub.exists() and not list(tmp_path.glob(".submission*"))


def test_evaluate_mismatched_ids(synth_data, tmp_path):
    _, hidden = synth_data
    (tmp_path / "p.csv").write_text("id,target\nabc,0.5\n")
    one_line_error(run("evaluate", tmp_path / "p.csv", hidden / "test_labels.csv"), "ids do not match")
    (tmp_path / "q.csv").write_text("id,value\nabc,0.5\n")
    one_line_error(run("evaluate", tmp_path / "q.csv", hidden / "test_labels.csv"), "no score column")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_array_during_training_is_one_line(data_copy, tmp_path, workers):
    victim = next((data_copy / "train").rglob("*.npy"))
    bad = np.zeros((6, 273, 256), np.float16)
    bad[0, 0, 0] = np.nan
    np.save(victim, bad)
    result = run("folds", data_copy, "--check-arrays", "--work-dir", tmp_path / "work")
    one_line_error(result, "1 of", f"{victim}: 1 NaN or infinite value(s)")
    args = [*TINY, "--workers", workers, "--epochs", 1, "--pos-share", 0]
    result = run("train", "--data", data_copy, "--out", tmp_path, *args)
    one_line_error(result, f"{victim}: 1 NaN or infinite value(s)")


def test_train_all_folds(synth_data, tmp_path):
    result = run("train", "--data", synth_data[0], "--out", tmp_path, "--all-folds", *TINY)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("best validation AUC") == 4
    assert sorted(p.parent.name for p in (tmp_path / "exp").glob("*/metrics.json")) == [f"fold{k}" for k in range(4)]
