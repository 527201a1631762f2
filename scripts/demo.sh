#!/usr/bin/env bash
# The main job on the embedded default, on CPU in a few minutes: set up .venv, make a small synthetic data set, and
# run the one command with the small CPU recipe (recipes/cpu.yaml): folds, background matching, fold 0 trained with
# a tiny model, calibration stacked with the de-Doppler reference, flip-TTA prediction of the test split and the
# report. Then score the submission and the de-Doppler reference alone against the hidden labels.
# Outputs go to out/demo/ (override with DEMO_OUT=...). GPU users: see README for the full-size recipes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export NO_ALBUMENTATIONS_UPDATE=1
out=${DEMO_OUT:-out/demo}
cli=.venv/bin/seti-fastai
mkdir -p "$out"
[ -d "$out/data" ] || $cli synth "$out/data" --n-train 600 --n-test 200 --difficulty easy --seed 0 \
    --preview "$out/preview.png"
rm -rf "$out/runs/demo"
$cli run "$out/data" --recipe recipes/cpu.yaml --out "$out/runs" --name demo
$cli dedoppler "$out/data" --split test --out "$out/dedoppler_test.csv" --workers 2
echo "test split, scored against the hidden labels (the submission, then the de-Doppler reference alone):"
$cli evaluate "$out/runs/demo/submission.csv" "$out/data_hidden/test_labels.csv" --reference "$out/dedoppler_test.csv"
echo "demo: data in $out/data, run in $out/runs/demo/fold0, submission in $out/runs/demo/submission.csv," \
    "report in $out/runs/demo/report/report.md, picture of the data in $out/preview.png"
