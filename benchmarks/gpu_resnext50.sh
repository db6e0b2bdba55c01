#!/usr/bin/env bash
# Train the production resnext50_32x4d U-Net on one GPU machine within a fixed time, then measure it
# with the same benchmark as the shipped CPU model, so the two can be compared figure for figure.
#
#   MINUTES=6 OUT=runs/gpu REAL=.real bash benchmarks/gpu_resnext50.sh
#
# Run from the repository root on a machine with CUDA, PyTorch and this project's packages, with
# PYTHON naming that machine's python (default python3); nothing is downloaded, so it runs offline
# (`make gpu-model AM_SYSTEM_PYTHON=1` does the same). Where segmentation-models-pytorch is missing,
# put its wheel in .whl/ and it is installed into /tmp/site. REAL is the folder of real samples
# (crop1-3, tile_a/tile_b): default .real/ in the checkout (git-ignored; copy them there for a machine
# that gets only the checkout), else ../shared/data/real. A REAL that does not exist stops the
# script before training, since the figures cannot be taken again later; SKIP_REAL=1 leaves them out.
# MINUTES bounds training (it stops after the epoch that passes it); EPOCHS x STEPS is sized so that
# an H100/H200 finishes its learning-rate schedule inside 6 minutes. Writes OUT/resnext50.pt,
# OUT/resnext50.metrics.csv/.json, OUT/train.log, OUT/quality.json and on CUDA OUT/bench.json (speed),
# and prints the figures.
# WATCHDOG_S (seconds) stops a training run that overruns MINUTES and measures what it saved.
# DEVICE=cpu with small SYNTHETIC, VALID, EPOCHS, STEPS, BATCH, CROP and QUALITY_SYNTHETIC checks the
# script itself on a machine without a GPU.
set -euo pipefail
MINUTES=${MINUTES:-6}
OUT=${OUT:-runs/gpu}
if [ -z "${REAL:-}" ]; then
    if [ -d .real ]; then REAL=.real; else REAL=../shared/data/real; fi
fi
SKIP_REAL=${SKIP_REAL:-0}
DEVICE=${DEVICE:-cuda}
SYNTHETIC=${SYNTHETIC:-2000}
EPOCHS=${EPOCHS:-24}
STEPS=${STEPS:-100}
BATCH=${BATCH:-16}
CROP=${CROP:-512}
QUALITY_SYNTHETIC=${QUALITY_SYNTHETIC:-40}
VALID=${VALID:-48}
WORKERS=${WORKERS:-$(( $(nproc) > 12 ? 12 : $(nproc) ))}
PY=${PYTHON:-python3}
# The checkout itself is importable, so a python without this project installed runs it too.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$SKIP_REAL" = 1 ]; then
    real_args=(--skip-real)
elif [ -d "$REAL" ]; then
    real_args=(--real "$REAL")
else
    echo "real samples not found at REAL=$REAL: copy them there (or to .real/), name their folder with REAL=..., or set SKIP_REAL=1 to measure without them" >&2
    exit 2
fi

if ! "$PY" -c "import segmentation_models_pytorch" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "segmentation-models-pytorch is missing and .whl/ holds no wheel" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('gpu:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
fi
mkdir -p "$OUT"

start=$(date +%s)
# A watchdog ends a training run that outlives MINUTES by more than an epoch's worth (WATCHDOG_S,
# default MINUTES + 4 minutes): it asks for every thread's stack (SIGUSR1, into the log), stops the
# run (SIGTERM, then SIGKILL), and the best checkpoint saved so far is measured anyway, since a
# lease's minutes cannot be had again.
watchdog_s=${WATCHDOG_S:-$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 240 }')}
fired="$OUT/.watchdog-fired"
rm -f "$fired"
"$PY" -m am.train --synthetic "$SYNTHETIC" --synthetic-size 512 --synthetic-valid "$VALID" --encoder resnext50_32x4d \
    --decoder-channels 256,128,64,32,16 --crop "$CROP" --batch-size "$BATCH" --epochs "$EPOCHS" \
    --steps-per-epoch "$STEPS" --lr 1e-3 --warmup-steps 100 --device "$DEVICE" --workers "$WORKERS" --seed 0 \
    --max-minutes "$MINUTES" --out "$OUT/resnext50.pt" > "$OUT/train.log" 2>&1 &
trainer=$!
(
    sleep "$watchdog_s"
    touch "$fired"
    kill -USR1 "$trainer"; sleep 2
    kill -TERM "$trainer"; sleep 30
    kill -KILL "$trainer"
) > /dev/null 2>&1 &
watchdog=$!
rc=0
wait "$trainer" || rc=$?
kill "$watchdog" 2> /dev/null || true
if [ -e "$fired" ]; then
    rm -f "$fired"
    tr '\r' '\n' < "$OUT/train.log" | tail -40 >&2
    if [ ! -f "$OUT/resnext50.pt" ]; then
        echo "training outlived the ${watchdog_s} s watchdog before any epoch saved a checkpoint; the whole log" \
             "(with every thread's stack) is $OUT/train.log" >&2
        exit 1
    fi
    echo "WARNING: training outlived the ${watchdog_s} s watchdog and was stopped (stacks in $OUT/train.log);" \
         "measuring the best checkpoint it saved" >&2
elif [ "$rc" -ne 0 ]; then
    tr '\r' '\n' < "$OUT/train.log" | tail -20 >&2
    echo "training failed; the whole log is $OUT/train.log" >&2
    exit 1
fi
echo "training wall time: $(( $(date +%s) - start )) s"
tr '\r' '\n' < "$OUT/train.log" | grep -E "INFO am.train.loop: epoch|WARNING|trained|wrote" || true
"$PY" benchmarks/model_quality.py --model "$OUT/resnext50.pt" --device "$DEVICE" --synthetic "$QUALITY_SYNTHETIC" \
    "${real_args[@]}" --json "$OUT/quality.json"
# The trained model's inference speed as a GPU worker runs it (fp16 there, compiled), so one lease
# gives both tables. am.bench needs boto3 and tenacity: on a machine without them, carry their
# wheels in .whl/ beside smp's. BENCH=0 skips it; it is on by default on CUDA only.
if [ "${BENCH:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}" = 1 ]; then
    if timeout "${BENCH_TIMEOUT_S:-300}" "$PY" -m am.bench --checkpoint "$OUT/resnext50.pt" --device "$DEVICE" \
            --precision auto --batch-size "${BENCH_BATCH:-128}" --tiles "${BENCH_TILES:-2048}" --compile auto \
            --no-loop --json > "$OUT/bench.json" 2> "$OUT/bench.log"; then
        echo "inference speed (am.bench): $(cat "$OUT/bench.json")"
    else
        tail -5 "$OUT/bench.log" >&2
        echo "WARNING: the speed benchmark failed; the figures above stand, and its log is $OUT/bench.log" >&2
    fi
fi
