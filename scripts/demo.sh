#!/usr/bin/env bash
# The main job on the embedded default, on CPU in a few minutes: set up .venv, make a small synthetic data set,
# train fold 0 with a tiny model, predict the test split with flip TTA, and score it and the de-Doppler reference
# against the hidden labels.
# Outputs go to out/demo/ (override with DEMO_OUT=...). GPU users: see README for the full-size recipe.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export NO_ALBUMENTATIONS_UPDATE=1
out=${DEMO_OUT:-out/demo}
cli=.venv/bin/seti-fastai
mkdir -p "$out"
[ -d "$out/data" ] || $cli synth "$out/data" --n-train 600 --n-test 200 --difficulty easy --seed 0 \
    --preview "$out/preview.png"
$cli folds "$out/data"
rm -rf "$out/runs/demo"
$cli train --data "$out/data" --out "$out/runs" --name demo --fold 0 --arch test_efficientnet --size 256 \
    --epochs 4 --bs 32 --lr 1e-2 --no-resizer --workers 2 --no-pretrained
$cli predict "$out/runs/demo/fold0" --data "$out/data" --tta flips --out "$out/submission.csv" --workers 2
$cli dedoppler "$out/data" --split test --out "$out/dedoppler_test.csv" --workers 2
echo "test split, scored against the hidden labels (the model, then the de-Doppler reference):"
$cli evaluate "$out/submission.csv" "$out/data_hidden/test_labels.csv" --reference "$out/dedoppler_test.csv"
echo "demo: data in $out/data, run in $out/runs/demo/fold0, submission in $out/submission.csv," \
    "picture of the data in $out/preview.png"
