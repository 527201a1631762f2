#!/usr/bin/env bash
# The main job on the embedded default: set up .venv, make a small synthetic data set, make its folds,
# and save a picture of it. Outputs go to out/demo/ (override with DEMO_OUT=...).
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
echo "demo: data in $out/data, hidden test labels in $out/data_hidden, picture in $out/preview.png"
