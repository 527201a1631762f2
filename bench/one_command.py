"""The one command (`seti-fastai run`) against the reference and the rank blend, on a realistic set with a shifted
test split, one row per seed.

    seti-fastai synth abl --n-train 2000 --n-test 1000 --difficulty realistic --seed 1 \\
        --shape-weights line=0.55,squared=0.2,sine=0.05,random_walk=0.2 \\
        --test-shape-weights sine=0.6,line=0.2,squared=0.1,random_walk=0.1
    .venv/bin/python bench/one_command.py --data abl --runs runs --seeds 42 43 --out docs/one_command.md

Each seed runs the default recipe with bench/needles.py's model (resnet18 at 256, 3 epochs, from scratch, lr 2e-3,
batch 32, fold 0 only), flags given as a user would: no background flag (auto: the command matches the data when it
has no matches.csv), flip TTA, calibration stacked with the reference where it helps. A finished fold is reused.
On the test split, scored against `<data>_hidden/test_labels.csv`: the de-Doppler reference alone, the model alone
(uncalibrated, flip TTA), the one command's submission, and the rank blend of the model and the reference (weight
chosen on fold 0's validation cadences, as `seti-fastai blend --valid` does). Log-loss and ECE only for
probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd

from seti_fastai.data.cadence import KaggleData
from seti_fastai.evaluate.blend import blend, tune_weight
from seti_fastai.evaluate.dedoppler import DedopplerConfig, score_files
from seti_fastai.evaluate.metrics import evaluate
from seti_fastai.evaluate.predict import predict, write_submission
from seti_fastai.io import atomic_write_csv, atomic_write_text
from seti_fastai.pipeline import build_recipe, run_recipe


def reference_scores(data: Path, split: str, ids: list[str], out: Path) -> Path:
    """The reference's scores of `ids` (cached in `out`)."""
    if not out.is_file():
        scores = score_files(KaggleData(data).paths(split, ids), DedopplerConfig(), workers=2)["score"].to_numpy()
        atomic_write_csv(pd.DataFrame({"id": ids, "score": scores}), out)
    return out


def seed_rows(seed: int, args: argparse.Namespace) -> list[tuple[str, dict]]:
    flags = dict(
        data=str(args.data), out=str(args.runs), name=f"auto-s{seed}", arch=args.arch, size=[args.size],
        epochs=args.epochs, bs=args.bs, lr=args.lr, workers=args.workers, seed=seed, pretrained=False, folds=[0],
    )  # fmt: skip
    recipe = build_recipe(None, flags)
    result = run_recipe(recipe, say=print, quiet=True)
    run_dir = recipe.run_dirs[0]
    labels = args.hidden / "test_labels.csv"
    kaggle = KaggleData(args.data)
    test_ids = kaggle.read_labels("test")["id"].tolist()
    ref_test = reference_scores(args.data, "test", test_ids, args.runs / "dedoppler" / "test.csv")
    plain = run_dir / "test_uncalibrated.csv"
    if not plain.is_file():
        write_submission(predict([run_dir], args.data, tta="flips", workers=args.workers), plain)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    ref_valid = reference_scores(args.data, "train", oof["id"].tolist(), args.runs / "dedoppler" / "valid_fold0.csv")
    tuned = tune_weight([run_dir / "oof.csv", ref_valid], args.data / "train_labels.csv")
    ranked = run_dir / "rank_blend_test.csv"
    atomic_write_csv(blend([plain, ref_test], tuned["weights"]), ranked)
    calibration = json.loads((run_dir / "calibration.json").read_text())
    stacked = "stacked" if calibration["stacked"] else "not stacked"
    return [
        ("de-Doppler reference", evaluate(ref_test, labels, args.n_boot)),
        ("model alone (flip TTA, uncalibrated)", evaluate(plain, labels, args.n_boot)),
        (f"rank blend with the reference (weight {tuned['weights'][0]:.2f})", evaluate(ranked, labels, args.n_boot)),
        (f"**the one command's submission** ({stacked})", evaluate(result["submission"], labels, args.n_boot)),
    ]


def table(rows: list[tuple[int, str, dict]]) -> str:
    lines = ["| seed | scores | test AUC (95 % CI) | log-loss | ECE |", "|---|---|---|---|---|"]
    for seed, label, r in rows:
        logloss = f"{r['logloss']:.3f}" if "logloss" in r else "(rank)" if r["column"] == "rank" else ""
        ece = f"{r['ece']:.3f}" if "ece" in r else ""
        lines.append(
            f"| {seed} | {label} | {r['auc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | {logloss} | {ece} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="synthetic data root (its _hidden folder beside it)")
    p.add_argument("--runs", type=Path, default=Path("runs_one_command"))
    p.add_argument("--out", type=Path, default=Path("docs/one_command.md"))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=500)
    args = p.parse_args()
    args.hidden = args.data.parent / f"{args.data.name}_hidden"
    rows = []
    for seed in args.seeds:
        rows += [(seed, label, r) for label, r in seed_rows(seed, args)]
        print(table(rows), flush=True)
        atomic_write_text(
            args.out,
            "# The one command on the realistic set\n\n"
            + (__doc__ or "").split("\n\n")[0]
            + "\n\n"
            + table(rows)
            + "\n",
        )


if __name__ == "__main__":
    main()
