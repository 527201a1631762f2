"""Test AUC with and without one round of pseudo-labels, and adversarial AUC with and without a needle-shape shift.

nice -n 19 .venv/bin/python bench/pseudo_label.py --work /tmp/pl --seeds 42 43

Runs the `seti-fastai` commands it prints (tiny model, fold 0, CPU): for each seed, a plain run -> predict test ->
`pseudo-label` -> a run with `--pseudo` -> predict test; both scored with `evaluate` against the hidden labels.
Then `adversarial` on a set without and with `--test-shape-weights`. Data sets are made once under --work.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

CLI = [sys.executable, "-m", "seti_fastai.cli"]


def sh(*args: object) -> str:
    cmd = [str(a) for a in args]
    print("$ seti-fastai " + " ".join(cmd), flush=True)
    done = subprocess.run(CLI + cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout


def auc(text: str) -> float:
    return float(re.search(r"AUC (\d\.\d+)", text).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pl"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", default="128")
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--top-k", type=int, nargs=2, default=[40, 300], help="top-k positives and negatives")
    parser.add_argument("--skip-adversarial", action="store_true")
    args = parser.parse_args()
    w = args.work
    data, hidden = w / "d5", w / "d5_hidden"
    if not data.exists():
        sh("synth", data, "--n-train", 600, "--n-test", 600, "--seed", 5, "--difficulty", args.difficulty)
    labels = hidden / "test_labels.csv"
    tiny = ["--arch", "test_efficientnet", "--size", args.size, "--epochs", args.epochs, "--bs", 32, "--workers", 2,
            "--no-resizer", "--no-pretrained", "--lr", "3e-3", "--fold", 0, "--quiet"]  # fmt: skip
    rows = []
    for seed in args.seeds:
        runs = w / f"runs_s{seed}"
        base = runs / "plain" / "fold0"
        if not (base / "metrics.json").is_file():
            sh("train", "--data", data, "--out", runs, "--name", "plain", "--seed", seed, *tiny)
        sh("predict", base, "--data", data, "--out", runs / "plain.csv", "--tta", "flips", "--workers", 2)
        before = auc(sh("evaluate", runs / "plain.csv", labels, "--n-boot", 200))
        pseudo = runs / "pseudo.csv"
        k_pos, k_neg = args.top_k
        print(sh("pseudo-label", base, "--data", data, "--out", pseudo, "--top-k-pos", k_pos, "--top-k-neg", k_neg,
                 "--tta", "flips", "--workers", 2).strip())  # fmt: skip
        pl = runs / "pl" / "fold0"
        if not (pl / "metrics.json").is_file():
            sh("train", "--data", data, "--out", runs, "--name", "pl", "--seed", seed, "--pseudo", pseudo, *tiny)
        sh("predict", pl, "--data", data, "--out", runs / "pl.csv", "--tta", "flips", "--workers", 2)
        after = auc(sh("evaluate", runs / "pl.csv", labels, "--n-boot", 200))
        chosen = pd.read_csv(pseudo, dtype={"id": str}).merge(pd.read_csv(labels, dtype={"id": str}), on="id")
        right = float((chosen["target_x"] == chosen["target_y"]).mean())
        rows.append((seed, before, after, len(chosen), right))
        print(f"seed {seed}: test AUC plain {before:.4f}, with one pseudo-label round {after:.4f}", flush=True)
    print("| seed | plain | + pseudo | gain | pseudo-labels | right |")
    for seed, before, after, n, right in rows:
        print(f"| {seed} | {before:.4f} | {after:.4f} | {after - before:+.4f} | {n} | {right:.1%} |")
    if args.skip_adversarial:
        return
    for name, shift in (("d5r", []), ("d5s", ["--test-shape-weights", "sine=1"])):
        if not (w / name).exists():
            sh("synth", w / name, "--n-train", 600, "--n-test", 600, "--seed", 5, *shift)
        out = sh("adversarial", w / name, "--out", w / f"adv_{name}", "--workers", 2, "--n-boot", 300)
        print(f"{name} {' '.join(shift) or '(no shift)'}: {out.splitlines()[0]}", flush=True)


if __name__ == "__main__":
    main()
