"""Does the toolkit find needles? Test AUC of the de-Doppler reference and of the recipe with each input-side idea.

    seti-fastai synth abl --n-train 2000 --n-test 1000 --difficulty realistic --seed 1 \\
        --shape-weights line=0.55,squared=0.2,sine=0.05,random_walk=0.2 \\
        --test-shape-weights sine=0.6,line=0.2,squared=0.1,random_walk=0.1
    seti-fastai match abl
    .venv/bin/python bench/needles.py --data abl --runs runs_needles --out docs/needles.md --seeds 42 43

Every row trains fold 0 of the same set (resnet18 at 256, 3 epochs, from scratch) and predicts the test split, whose
needle shapes differ from train's, with flip TTA; the test AUC is scored against `<data>_hidden/test_labels.csv`.
Finished rows are reused (delete a row's run folder to redo it), so the table can grow over several sessions;
it is rewritten after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd

from seti_fastai.config import TrainConfig, build_config
from seti_fastai.data.cadence import KaggleData
from seti_fastai.data.drift_map import drift_map
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.evaluate.blend import blend, tune_weight
from seti_fastai.evaluate.dedoppler import DedopplerConfig, score_files
from seti_fastai.evaluate.metrics import evaluate
from seti_fastai.evaluate.predict import predict, write_submission
from seti_fastai.io import atomic_write_csv, atomic_write_json, atomic_write_text
from seti_fastai.learn.datablock import load_partners
from seti_fastai.learn.train import train_fold
from seti_fastai.learn.transforms import CadenceLoader

# every row is over the former default recipe: the ON panels stacked, no background subtraction (today's defaults
# are `--layout dedoppler --background auto`)
BASE = dict(background="none", layout="stack")
ROWS: dict[str, tuple[str, dict]] = {  # run name -> (table label, config fields over BASE and the defaults)
    "default": ("former default recipe (`--background none`)", {}),
    "subtract": ("+ background subtraction (`--background subtract`)", dict(background="subtract")),
    "diff": ("+ ON-minus-OFF input (`--layout diff`)", dict(layout="diff")),
    "inject": ("+ injected needles (`--inject 0.3`)", dict(inject=0.3)),
    "antialias": ("+ antialiased resize (`--resize-mode antialias`)", dict(resize_mode="antialias")),
    "area": ("+ area resize (`--resize-mode area`)", dict(resize_mode="area")),
    "ddmap": (
        "+ subtraction and the de-Doppler map input (`--background subtract --layout dedoppler`)",
        dict(background="subtract", layout="dedoppler"),
    ),
    "ddmap-raw": (
        "+ the de-Doppler map input, no subtraction (`--background none --layout dedoppler`)",
        dict(layout="dedoppler"),
    ),
    "subdiff": (
        "+ subtraction and ON-minus-OFF (`--background subtract --layout diff`)",
        dict(background="subtract", layout="diff"),
    ),
}


def _number(value: str) -> str | float:
    try:
        return float(value)
    except ValueError:
        return value


def test_auc(scores_csv: Path, hidden: Path) -> dict:
    return evaluate(scores_csv, hidden / "test_labels.csv", n_boot=500)


def dedoppler_row(data: Path, hidden: Path, runs: Path) -> dict:
    out = runs / "dedoppler" / "test.csv"
    if not out.is_file():
        kaggle = KaggleData(data)
        ids = kaggle.read_labels("test")["id"].tolist()
        start = time.perf_counter()
        scores = score_files(kaggle.paths("test", ids), DedopplerConfig(), workers=2)["score"].to_numpy()
        seconds = time.perf_counter() - start
        atomic_write_csv(pd.DataFrame({"id": ids, "target": scores}), out)
        atomic_write_json(out.with_suffix(".json"), dict(seconds=seconds))
    seconds = json.loads(out.with_suffix(".json").read_text())["seconds"]
    return dict(valid=float("nan"), seconds=seconds, **test_auc(out, hidden))


def subtracted_reference_row(data: Path, hidden: Path, runs: Path) -> dict:
    """The reference's search on background-subtracted cadences: the maximum of `--layout dedoppler`'s map
    (each channel whitened, so the channels a partner empties do not drown the rest), no training."""
    out = runs / "dedoppler" / "test_subtracted.csv"
    if not out.is_file():
        kaggle = KaggleData(data)
        ids = kaggle.read_labels("test")["id"].tolist()
        partners = load_partners(data, None, runs, TrainConfig().max_partners)
        six_panels = CadenceLoader(ImageRecipe("all", "channels", background="subtract"), partners)  # as training
        start = time.perf_counter()
        scores = [float(drift_map(six_panels(path).numpy()).max()) for path in kaggle.paths("test", ids)]
        atomic_write_csv(pd.DataFrame({"id": ids, "target": scores}), out)
        atomic_write_json(out.with_suffix(".json"), dict(seconds=time.perf_counter() - start))
    seconds = json.loads(out.with_suffix(".json").read_text())["seconds"]
    return dict(valid=float("nan"), seconds=seconds, **test_auc(out, hidden))


def dedoppler_scores(data: Path, split: str, ids: list[str], out: Path) -> Path:
    """The reference's scores of `ids` (cached in `out`)."""
    if not out.is_file():
        scores = score_files(KaggleData(data).paths(split, ids), DedopplerConfig(), workers=2)["score"].to_numpy()
        atomic_write_csv(pd.DataFrame({"id": ids, "score": scores}), out)
    return out


def stacked_row(name: str, seed: int, args: argparse.Namespace) -> dict:
    """A finished row's model stacked with the reference: rank blend, weight tuned on fold 0's validation cadences."""
    run_dir = args.runs / f"{name}-s{seed}" / "fold0"
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    valid_ref = dedoppler_scores(args.data, "train", oof["id"].tolist(), args.runs / "dedoppler" / "valid_fold0.csv")
    tuned = tune_weight([run_dir / "oof.csv", valid_ref], args.data / "train_labels.csv")
    out = run_dir / "stacked_test.csv"
    atomic_write_csv(blend([run_dir / "test.csv", args.runs / "dedoppler" / "test.csv"], tuned["weights"]), out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return dict(valid=tuned["valid_auc"], seconds=metrics["wall_seconds"], **test_auc(out, args.hidden))


def model_row(name: str, extra: dict, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.runs / f"{name}-s{seed}" / "fold0"
    test_csv = run_dir / "test.csv"
    if not (run_dir / "metrics.json").is_file():  # an interrupted row goes on from its last finished epoch
        cfg = build_config(
            overrides=dict(
                data=str(args.data), out=str(args.runs), name=f"{name}-s{seed}", fold=0, arch=args.arch,
                size=[args.size], epochs=args.epochs, bs=args.bs, lr=args.lr, workers=args.workers, seed=seed,
                pretrained=False, resume=(run_dir / "last.pth").is_file(), **{**BASE, **extra},
            )
        )  # fmt: skip
        train_fold(cfg, quiet=True)
    if not test_csv.is_file():
        write_submission(predict([run_dir], args.data, tta="flips", workers=args.workers), test_csv)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return dict(valid=metrics["best_auc"], seconds=metrics["wall_seconds"], **test_auc(test_csv, args.hidden))


def table(results: list[tuple[str, int | None, dict]]) -> str:
    lines = [
        "| setup | seed | valid AUC (fold 0) | test AUC (95 % CI) | train seconds |",
        "|---|---|---|---|---|",
    ]
    for label, seed, r in results:
        valid = "" if r["valid"] != r["valid"] else f"{r['valid']:.3f}"
        lines.append(
            f"| {label} | {seed if seed is not None else ''} | {valid} | "
            f"{r['auc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="synthetic data root (its _hidden folder beside it)")
    p.add_argument("--runs", type=Path, default=Path("runs_needles"))
    p.add_argument("--out", type=Path, default=Path("docs/needles.md"))
    p.add_argument("--rows", nargs="*", choices=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--combo", action="append", default=[], help="extra row: field=value,... of config fields")
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument(
        "--stack", nargs="*", default=[], help="rows (run names) also stacked with the reference (`seti-fastai blend`)"
    )
    p.add_argument(
        "--subtracted-reference", action="store_true", help="add the reference on background-subtracted cadences"
    )
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    args.hidden = args.data.parent / f"{args.data.name}_hidden"

    rows = {k: v for k, v in ROWS.items() if not args.rows or k in args.rows}
    for combo in args.combo:
        fields = dict(kv.split("=", 1) for kv in combo.split(","))
        name = "combo-" + "-".join(f"{k}={v}" for k, v in sorted(fields.items())).replace("_", "")
        rows[name] = (f"combined: `{combo}`", {k: _number(v) for k, v in fields.items()})
    results = [("de-Doppler reference (no training)", None, dedoppler_row(args.data, args.hidden, args.runs))]
    if args.subtracted_reference:
        label = "de-Doppler reference on subtracted cadences (no training)"
        results.append((label, None, subtracted_reference_row(args.data, args.hidden, args.runs)))
    print(table(results), flush=True)
    for seed in args.seeds:
        for name, (label, extra) in rows.items():
            results.append((label, seed, model_row(name, extra, seed, args)))
            if name in args.stack:
                results.append((f"{label}, stacked with the reference", seed, stacked_row(name, seed, args)))
            print("\n".join(table(results).splitlines()[-1 - (name in args.stack) :]), flush=True)
            atomic_write_text(args.out, table(results) + "\n")


if __name__ == "__main__":
    main()
