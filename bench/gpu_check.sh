#!/usr/bin/env bash
# One GPU check in under 8 minutes: training speed of tf_efficientnetv2_s at 512 in the default precision against a
# plain PyTorch loop, the data pipeline per worker, inference with flip TTA, GPU against CPU augmentations, and a
# 2-process DDP run when two GPUs exist. Writes one markdown table to OUT (default bench/gpu_check.md) and prints it.
#
#   bench/gpu_check.sh [OUT.md]            # on a CUDA machine (exits with a clear message without one)
#   bench/gpu_check.sh --dry-run [OUT.md]  # the same steps at toy sizes on CPU (checks the script itself)
#
# PYTHON picks the interpreter (default: .venv/bin/python, made by scripts/setup_env.sh when missing).
# Every step has its own time cap; a step that fails or runs out of time becomes a row saying so.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
out=bench/gpu_check.md
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg (use --dry-run or an output file)" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
else
    [ -x .venv/bin/python ] || scripts/setup_env.sh || { echo "gpu_check: cannot set up .venv (offline?)" >&2; exit 2; }
    py=.venv/bin/python
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} NO_ALBUMENTATIONS_UPDATE=1

if [ "$dry" = 0 ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or use --dry-run" >&2
    exit 2
fi

if [ "$dry" = 1 ]; then  # toy sizes, CPU
    arch=test_efficientnet size=64 bs=8 workers=1 n_train=48 n_test=16 cap=240 device=cpu
    pipe_workers="1" aug_bs=4 aug_batches=2 tta_n=2
    export CUDA_VISIBLE_DEVICES=""
else
    arch=tf_efficientnetv2_s size=512 bs=32 n_train=1600 n_test=256 cap=150 device=cuda
    workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
    pipe_workers="1 $workers" aug_bs=32 aug_batches=20 tta_n=2
fi
n_gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows.md"
: > "$rows"
log="$tmp/log.txt"

row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$rows"; }

# step NAME CAP CMD...: run a bench with a time cap; its "RESULT | what | value" lines become rows
step() {
    local name=$1 cap=$2; shift 2
    echo "gpu_check: $name (cap ${cap}s)" >&2
    local start=$SECONDS
    timeout --kill-after=10 "$cap" "$@" > "$tmp/step.txt" 2>> "$log"
    local rc=$?
    cat "$tmp/step.txt" >> "$log"
    if grep -q '^RESULT |' "$tmp/step.txt"; then
        grep '^RESULT |' "$tmp/step.txt" | sed 's/^RESULT | //' | while IFS='|' read -r what value; do
            row "$(echo "$what" | xargs)" "$(echo "$value" | xargs)" "$name, $((SECONDS - start)) s"
        done
    fi
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        row "$name" "stopped at its ${cap} s cap" "see the log"
    elif [ "$rc" != 0 ]; then
        row "$name" "failed (exit $rc): $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-100 | tr '|' '/')" "see the log"
    fi
}

data="$tmp/data"
step "synthetic set" "${SYNTH_CAP:-180}" "$py" -m seti_fastai.cli synth "$data" --n-train "$n_train" --n-test "$n_test" --seed 0 \
    --workers "$(nproc)"

if [ ! -f "$data/train_labels.csv" ]; then  # nothing else can run without the data
    row "remaining steps" "skipped: the synthetic set was not made" "see the log"
    steps=0
else
    steps=1
fi

[ "$steps" = 1 ] && step "training" $((cap * 2)) "$py" bench/train_speed.py --data "$data" --arch "$arch" --size "$size" --bs "$bs" \
    --workers "$workers" --repeats 1 --pipeline-workers $pipe_workers --pipeline-batches 8 --max-seconds "$cap"

[ "$steps" = 1 ] && step "training, --aug-device gpu" "$cap" "$py" bench/train_speed.py --data "$data" --arch "$arch" --size "$size" \
    --bs "$bs" --workers "$workers" --repeats 1 --pipeline-workers --aug-device gpu --max-seconds "$cap"

# infer_speed.py prints "      plain:   123.4 samples/s, cost  1.00x plain": turned into RESULT lines
to_rows='s/^ *\(plain\|--tta [a-z0-9]*\): *\([0-9.]*\) samples\/s, cost *\([0-9.]*x\).*/RESULT | inference, \1: samples\/s (cost) | \2 (\3)/p'
export TO_ROWS=$to_rows
[ "$steps" = 1 ] && step "inference" "$cap" bash -c 'set -o pipefail; "$0" bench/infer_speed.py "$@" | sed -n "$TO_ROWS"' "$py" \
    --data "$data" --arch "$arch" --size "$size" --bs $((bs * 2)) --workers "$workers" --tta-n "$tta_n"

[ "$steps" = 1 ] && step "augmentations" 90 "$py" bench/aug_speed.py --device "$device" --bs "$aug_bs" --batches "$aug_batches" \
    --max-seconds 30

if [ "$steps" = 1 ] && [ "$n_gpus" -ge 2 ]; then
    if "$py" -c "import accelerate" 2>/dev/null; then
        ddp_start=$SECONDS
        echo "gpu_check: 2-process DDP (cap ${cap}s)" >&2
        if timeout --kill-after=10 "$cap" "$py" -m accelerate.commands.launch --num_processes 2 scripts/train.py \
            --data "$data" --out "$tmp/runs" --name ddp --arch "$arch" --size "$size" --bs "$bs" --epochs 1 \
            --workers "$workers" --no-pretrained --quiet >> "$log" 2>&1; then
            rate=$("$py" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['train_samples_per_s'], 1))" \
                "$tmp/runs/ddp/fold0/metrics.json" 2>/dev/null || echo "?")
            row "DDP, 2 processes: train samples/s (rank 0's history)" "$rate" "accelerate launch, $((SECONDS - ddp_start)) s"
        else
            row "DDP, 2 processes" "failed or not supported yet: $(tail -1 "$log" | cut -c1-100 | tr '|' '/')" "see the log"
        fi
    else
        row "DDP, 2 processes" "skipped: accelerate not installed" ""
    fi
else
    row "DDP, 2 processes" "skipped: $n_gpus GPU(s)" ""
fi

gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (dry run)')" 2>/dev/null)
mkdir -p "$(dirname "$out")"
{
    echo "# GPU check: $gpu, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$arch at $size, bs $bs, $workers workers, $n_train synthetic train cadences; $((SECONDS)) s in all$([ "$dry" = 1 ] && echo ', DRY RUN (toy sizes on CPU)')."
    echo
    echo "| measure | value | step |"
    echo "|---|---|---|"
    cat "$rows"
} > "$out.partial" && mv "$out.partial" "$out"
cp "$log" "${out%.md}.log"
cat "$out"
echo "gpu_check: table in $out, log in ${out%.md}.log" >&2
