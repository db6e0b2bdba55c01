#!/usr/bin/env bash
# One time-boxed GPU session, two models trained side by side on the same GPU and measured with the
# same benchmark as the shipped CPU model, so all of them can be compared figure for figure:
# - resnext50: the production resnext50_32x4d U-Net from scratch (the issue's GPU path);
# - compact: the shipped CPU model's architecture, fine-tuned from its weights with the GPU's budget
#   (512 px crops, batch 16, thousands of steps: many times what a fine-tune gets on a 2-core CPU), to
#   see whether the compact model is held back by its training budget or by its size. Its fp16
#   checkpoint is small enough to ship, should it measure better. COMPACT=0 leaves it out;
#   COMPACT_INIT=none trains it from scratch.
# The shipped model is measured on the same machine too (SHIPPED=0 skips it), and a table of the three
# is printed last (benchmarks/compare_quality.py).
#
#   MINUTES=4 OUT=runs/gpu REAL=.real bash benchmarks/gpu_train.sh
#   MINUTES=4 OUT=/tmp/gpu-run RESULTS=$OUT DEADLINE_S=570 ... bash benchmarks/gpu_train.sh  # a lease (gpu_prep.py)
#
# Run from the repository root on a machine with CUDA, PyTorch and this project's packages, with
# PYTHON naming that machine's python (default python3); nothing is downloaded, so it runs offline
# (`make gpu-model AM_SYSTEM_PYTHON=1` does the same). Where segmentation-models-pytorch is missing,
# put its wheel in WHEELS (default .whl/, which `make gpu-prep` fills) and it is installed into
# /tmp/site. REAL is the folder of real samples (crop1-3, tile_a/tile_b): default .real/ in the
# checkout (git-ignored; copy them there for a machine that gets only the checkout), else
# ../shared/data/real. A REAL that does not exist stops the
# script before training, since the figures cannot be taken again later; SKIP_REAL=1 leaves them out.
# MINUTES (may be fractional) bounds each training run (it stops after the epoch that passes it), and
# sizes the runs' schedules: EPOCHS (default 4 per minute) x STEPS (100) for resnext50 and
# COMPACT_EPOCHS (default 20 per 6 minutes) x COMPACT_STEPS (200) for compact, so that an H100/H200
# finishes both learning-rate schedules inside MINUTES; EPOCHS and COMPACT_EPOCHS set them outright.
# Writes, per run NAME: OUT/NAME.pt, OUT/NAME.resume (its resume state), OUT/NAME.metrics.csv/.json,
# OUT/NAME.train.log, OUT/NAME.quality.json/.log; OUT/shipped.quality.json/.log, OUT/comparison.md,
# and on CUDA OUT/bench.json and OUT/bench.log (resnext50's speed).
# WATCHDOG_S (seconds, default MINUTES + 150 s) stops a training run that overruns MINUTES and
# measures what it saved.
# DEADLINE_S (seconds from the script's start; unset: none) is the time the whole script has: each
# run's watchdog fires early enough to leave 150 s for measuring and 70 s for the bench (at least 60 s
# after its start all the same), and the bench runs only if 60 s are left before DEADLINE_S - 10,
# within what is left (its timeout: BENCH_TIMEOUT_S, default 300, or less).
# RESULTS (a folder; unset: none) receives, when the script ends after training started (failed or
# not), what a device call's few returned files can hold: compact.pt (if at most 16 MiB),
# comparison.md, bench.json (if not empty) and results.tgz, every .json, .csv, .log and .md file of
# OUT (not previous/, no checkpoint or resume state); should results.tgz pass 16 MiB, the quality
# JSONs instead. At most 7 files, each at most 16 MiB.
# DEVICE=cpu with small SYNTHETIC, VALID, EPOCHS, STEPS, BATCH, CROP and QUALITY_SYNTHETIC checks the
# script itself on a machine without a GPU.
set -euo pipefail
script_start=$(date +%s)
MINUTES=${MINUTES:-6}
OUT=${OUT:-runs/gpu}
RESULTS=${RESULTS:-}
DEADLINE_S=${DEADLINE_S:-}
if [ -z "${REAL:-}" ]; then
    if [ -d .real ]; then REAL=.real; else REAL=../shared/data/real; fi
fi
SKIP_REAL=${SKIP_REAL:-0}
WHEELS=${WHEELS:-.whl}
DEVICE=${DEVICE:-cuda}
SYNTHETIC=${SYNTHETIC:-2000}
# awk: MINUTES may be fractional; rounded down, at least 1.
EPOCHS=${EPOCHS:-$(awk -v m="$MINUTES" 'BEGIN { e = int(4 * m); print (e < 1 ? 1 : e) }')}
STEPS=${STEPS:-100}
BATCH=${BATCH:-16}
CROP=${CROP:-512}
QUALITY_SYNTHETIC=${QUALITY_SYNTHETIC:-40}
VALID=${VALID:-48}
COMPACT=${COMPACT:-1}
COMPACT_INIT=${COMPACT_INIT:-am/models/default.pt}
COMPACT_EPOCHS=${COMPACT_EPOCHS:-$(awk -v m="$MINUTES" 'BEGIN { e = int(20 * m / 6); print (e < 1 ? 1 : e) }')}
COMPACT_STEPS=${COMPACT_STEPS:-200}
COMPACT_LR=${COMPACT_LR:-3e-4}
COMPACT_LABELS=${COMPACT_LABELS:-margin}
SHIPPED=${SHIPPED:-1}
BENCH=${BENCH:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-300}
if ! [[ $DEADLINE_S =~ ^[0-9]*$ && $BENCH_TIMEOUT_S =~ ^[0-9]+$ ]]; then
    echo "DEADLINE_S=$DEADLINE_S and BENCH_TIMEOUT_S=$BENCH_TIMEOUT_S must be whole seconds (DEADLINE_S may be empty: no deadline)" >&2
    exit 2
fi
WORKERS=${WORKERS:-$(( $(nproc) > 14 ? 14 : $(nproc) ))}
# Both runs render their images and cut their crops on CPU processes; resnext50, the slower to train,
# gets the larger share.
if [ "$COMPACT" = 1 ] && [ "$WORKERS" -gt 1 ]; then
    COMPACT_WORKERS=${COMPACT_WORKERS:-$(( WORKERS * 3 / 7 > 0 ? WORKERS * 3 / 7 : 1 ))}
    RESNEXT_WORKERS=$(( WORKERS - COMPACT_WORKERS ))
else
    COMPACT_WORKERS=${COMPACT_WORKERS:-$WORKERS}
    RESNEXT_WORKERS=$WORKERS
fi
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
if [ "$COMPACT" = 1 ] && [ "$COMPACT_INIT" != none ] && [ ! -f "$COMPACT_INIT" ]; then
    echo "COMPACT_INIT=$COMPACT_INIT is not a checkpoint: name one, COMPACT_INIT=none to train the compact model from scratch, or COMPACT=0 to leave it out" >&2
    exit 2
fi

if ! "$PY" -c "import segmentation_models_pytorch" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "segmentation-models-pytorch is missing and WHEELS=$WHEELS holds no wheel: put them there (make gpu-prep) or name their folder with WHEELS=..." >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('gpu:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
fi
mkdir -p "$OUT"
# Figures of an earlier session must not pass for this one's, should this one not get as far.
rm -f "$OUT/comparison.md" "$OUT/bench.json" "$OUT/bench.log"

# What comes back from a device call is few files, each small: RESULTS gets this session's results in
# at most 7 of them, however the script ends from here on (a failed run, an error, a watchdog).
RESULT_MAX_BYTES=$(( 16 * 1024 * 1024 ))
pack_results() {  # copies OUT's results (see the top) into RESULTS; says what it packed
    local packed=() file kept=()
    mkdir -p "$RESULTS" || return 1
    rm -f "$RESULTS"/{compact.pt,comparison.md,bench.json,results.tgz} "$RESULTS"/*.quality.json
    if [ -f "$OUT/compact.pt" ]; then
        if [ "$(stat -c %s "$OUT/compact.pt")" -le "$RESULT_MAX_BYTES" ]; then
            cp "$OUT/compact.pt" "$RESULTS/" && packed+=(compact.pt)
        else
            echo "results: compact.pt is over 16 MiB, left out of $RESULTS" >&2
        fi
    fi
    [ -f "$OUT/comparison.md" ] && cp "$OUT/comparison.md" "$RESULTS/" && packed+=(comparison.md)
    [ -s "$OUT/bench.json" ] && cp "$OUT/bench.json" "$RESULTS/" && packed+=(bench.json)
    # This session's files only (an earlier session's are older than the script), no lock, checkpoint
    # or resume state, nothing of previous/.
    mapfile -t kept < <(cd "$OUT" && find . -maxdepth 1 -type f -newermt "@$(( script_start - 1 ))" \
        \( -name '*.json' -o -name '*.csv' -o -name '*.log' -o -name '*.md' \) ! -name '.*' -printf '%f\n' | sort)
    if [ "${#kept[@]}" -gt 0 ] && tar -czf "$RESULTS/results.tgz" -C "$OUT" -- "${kept[@]}"; then
        if [ "$(stat -c %s "$RESULTS/results.tgz")" -le "$RESULT_MAX_BYTES" ]; then
            packed+=("results.tgz (${kept[*]})")
        else
            rm -f "$RESULTS/results.tgz"
            echo "results: results.tgz of ${kept[*]} is over 16 MiB, left out; $RESULTS gets the quality figures instead" >&2
            for file in "$OUT"/*.quality.json; do
                [ -f "$file" ] && cp "$file" "$RESULTS/" && packed+=("${file##*/}")
            done
        fi
    fi
    echo "results: packed into $RESULTS: ${packed[*]:-nothing}"
}
on_exit() {  # keeps the script's exit status, whatever packing does
    local rc=$?
    set +e
    trap - EXIT
    pack_results
    exit "$rc"
}
if [ -n "$RESULTS" ]; then
    mkdir -p "$RESULTS"
    if [ "$(realpath "$RESULTS")" = "$(realpath "$OUT")" ]; then
        echo "RESULTS=$RESULTS is OUT: name another folder for the results to come back in" >&2
        exit 2
    fi
    trap on_exit EXIT
fi

elapsed() { echo $(( $(date +%s) - script_start )); }
# Under DEADLINE_S: what measuring all the models takes, and the least time the bench runs in (60 s
# and 10 s to spare), are kept from the training runs.
MEASURE_RESERVE_S=150
BENCH_RESERVE_S=$([ "$BENCH" = 1 ] && echo 70 || echo 0)

# A watchdog ends a training run that outlives MINUTES by more than an epoch's worth (WATCHDOG_S,
# default MINUTES + 150 s; under DEADLINE_S, early enough to leave the time above, but not before
# 60 s): it asks for every thread's stack (SIGUSR1, into the run's log), stops the run (SIGTERM, then
# SIGKILL), and the best checkpoint saved so far is measured anyway, since a lease's minutes cannot be
# had again.
watchdog_s=${WATCHDOG_S:-$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 150 }')}
declare -A trainer watchdog watchdog_after

set_aside() {  # NAME: moves an earlier session's outputs of run NAME to OUT/previous/
    local name=$1 file moved=()
    for file in "$OUT/$name".{pt,metrics.csv,metrics.json,resume,train.log,quality.json,quality.log}; do
        [ -e "$file" ] || continue
        mkdir -p "$OUT/previous"
        mv -f "$file" "$OUT/previous/"
        moved+=("${file##*/}")
    done
    if [ "${#moved[@]}" -gt 0 ]; then
        echo "$name: moved an earlier session's ${moved[*]} to $OUT/previous/ (this run starts afresh)"
    fi
}

start_training() {  # NAME, then am.train's options: starts the run and its watchdog in the background
    local name=$1; shift
    rm -f "$OUT/.$name.watchdog-fired"
    set_aside "$name"
    "$PY" -m am.train "$@" --device "$DEVICE" --max-minutes "$MINUTES" --out "$OUT/$name.pt" \
        > "$OUT/$name.train.log" 2>&1 &
    local pid=$!
    trainer[$name]=$pid
    local after=$watchdog_s
    if [ -n "$DEADLINE_S" ]; then
        local cap=$(( DEADLINE_S - $(elapsed) - MEASURE_RESERVE_S - BENCH_RESERVE_S ))
        cap=$(( cap > 60 ? cap : 60 ))
        [ "$cap" -ge "$after" ] || after=$cap
        [ "$after" = "$watchdog_s" ] || echo "$name: watchdog at $after s, to leave measuring" \
            "${MEASURE_RESERVE_S} s and the bench ${BENCH_RESERVE_S} s before DEADLINE_S=$DEADLINE_S"
    fi
    watchdog_after[$name]=$after
    # The watchdog sleeps in the background and waits for it, so that the sleep goes with the watchdog
    # when the run ends in time, rather than outliving the script.
    (
        trap 'kill "$sleeper" 2> /dev/null; exit 0' TERM
        nap() { sleep "$1" & sleeper=$!; wait "$sleeper"; }
        nap "$after"
        touch "$OUT/.$name.watchdog-fired"
        kill -USR1 "$pid"; nap 2
        kill -TERM "$pid"; nap 30
        kill -KILL "$pid"
    ) > /dev/null 2>&1 &
    watchdog[$name]=$!
}

finish_training() {  # NAME: waits for the run; succeeds when it left a checkpoint to measure
    local name=$1 rc=0 log="$OUT/$1.train.log"
    wait "${trainer[$name]}" || rc=$?
    kill "${watchdog[$name]}" 2> /dev/null || true
    if [ -e "$OUT/.$name.watchdog-fired" ]; then
        rm -f "$OUT/.$name.watchdog-fired"
        tr '\r' '\n' < "$log" | tail -40 >&2
        if [ ! -f "$OUT/$name.pt" ]; then
            echo "$name: training outlived the ${watchdog_after[$name]} s watchdog before any epoch saved a checkpoint," \
                 "so there is nothing of this run to measure; the whole log (with every thread's stack) is $log" >&2
            return 1
        fi
        echo "WARNING: $name: training outlived the ${watchdog_after[$name]} s watchdog and was stopped (stacks in $log);" \
             "measuring the best checkpoint it saved" >&2
    elif [ "$rc" -ne 0 ]; then
        tr '\r' '\n' < "$log" | tail -20 >&2
        echo "$name: training failed; the whole log is $log" >&2
        return 1
    elif [ ! -f "$OUT/$name.pt" ]; then
        tr '\r' '\n' < "$log" | tail -20 >&2
        echo "$name: training ended without saving a checkpoint, so there is nothing of this run to measure;" \
             "the whole log is $log" >&2
        return 1
    fi
    echo "$name: training wall time $(( $(date +%s) - start )) s"
    tr '\r' '\n' < "$log" | grep -E "INFO am.train.loop: epoch|WARNING|trained|wrote" || true
}

start=$(date +%s)
runs=(resnext50)
start_training resnext50 --synthetic "$SYNTHETIC" --synthetic-size 512 --synthetic-valid "$VALID" \
    --encoder resnext50_32x4d --decoder-channels 256,128,64,32,16 --crop "$CROP" --batch-size "$BATCH" \
    --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --lr 1e-3 --warmup-steps 100 --workers "$RESNEXT_WORKERS" --seed 0
if [ "$COMPACT" = 1 ]; then
    runs+=(compact)
    init_args=()
    [ "$COMPACT_INIT" = none ] || init_args=(--init "$COMPACT_INIT")
    # Other images than resnext50's (seed 301), with three times the out-of-focus blobs and the
    # labels (COMPACT_LABELS) of the last runs of `make model`; validated on the generator's own mix.
    start_training compact "${init_args[@]}" --synthetic "$SYNTHETIC" --synthetic-size 512 \
        --synthetic-valid "$VALID" --synthetic-seed 301 --synthetic-blobs 3 --synthetic-labels "$COMPACT_LABELS" \
        --crop "$CROP" --batch-size "$BATCH" \
        --epochs "$COMPACT_EPOCHS" --steps-per-epoch "$COMPACT_STEPS" --lr "$COMPACT_LR" --warmup-steps 200 \
        --workers "$COMPACT_WORKERS" --seed 30
fi
failed=0
measured=()
for name in "${runs[@]}"; do
    if finish_training "$name"; then measured+=("$name"); else failed=1; fi
done

# Every model is measured in fp32, the shipped model's own figures being fp32 ones, all at once: the
# GPU does the model and each measurement post-processes its masks on CPU threads of its own (4, or
# all a smaller machine has: model_quality.py refuses more threads than CPUs).
MEASURE_THREADS=$(( $(nproc) < 4 ? $(nproc) : 4 ))
measure() {  # NAME CHECKPOINT
    "$PY" benchmarks/model_quality.py --model "$2" --device "$DEVICE" --precision fp32 --threads "$MEASURE_THREADS" \
        --synthetic "$QUALITY_SYNTHETIC" "${real_args[@]}" --json "$OUT/$1.quality.json" > "$OUT/$1.quality.log" 2>&1
}
declare -A measuring
[ "$SHIPPED" = 1 ] && measured=(shipped "${measured[@]}")
for name in "${measured[@]}"; do
    checkpoint="$OUT/$name.pt"
    [ "$name" = shipped ] && checkpoint=am/models/default.pt
    measure "$name" "$checkpoint" &
    measuring[$name]=$!
done
compared=()
for name in "${measured[@]}"; do
    if wait "${measuring[$name]}"; then
        echo "== $name"; cat "$OUT/$name.quality.log"
        compared+=("$name=$OUT/$name.quality.json")
    else
        cat "$OUT/$name.quality.log" >&2
        echo "$name: measuring failed; its log is $OUT/$name.quality.log" >&2
        failed=1
    fi
done
if [ "${#compared[@]}" -gt 0 ]; then
    "$PY" benchmarks/compare_quality.py "${compared[@]}" | tee "$OUT/comparison.md"
fi

# The production model's inference speed as a GPU worker runs it (fp16 there, compiled), so one
# session gives both tables. am.bench needs boto3 and tenacity: on a machine without them, carry their
# wheels in WHEELS beside smp's. BENCH=0 skips it; it is on by default on CUDA only. It runs within
# BENCH_TIMEOUT_S (under DEADLINE_S, what is left less 10 s, and not at all with under 60 s); torch.compile
# gets all but 60 s of that (at least 40 s), past which the model is measured uncompiled, so that the
# timeout does not stop the bench while it compiles.
if [ -f "$OUT/resnext50.pt" ] && [ "$BENCH" = 1 ]; then
    bench_s=$BENCH_TIMEOUT_S left=
    if [ -n "$DEADLINE_S" ]; then
        left=$(( DEADLINE_S - $(elapsed) - 10 ))
        [ "$left" -ge "$bench_s" ] || bench_s=$left
    fi
    if [ -n "$left" ] && [ "$left" -lt 60 ]; then
        echo "WARNING: the speed benchmark skipped for lack of time: $left s left before DEADLINE_S=$DEADLINE_S" \
             "(10 s kept to spare), under the 60 s it needs; the figures above stand" >&2
    elif timeout -k 5 "$bench_s" "$PY" -m am.bench --checkpoint "$OUT/resnext50.pt" --device "$DEVICE" \
            --precision auto --batch-size "${BENCH_BATCH:-128}" --tiles "${BENCH_TILES:-2048}" --compile auto \
            --compile-budget "$(( bench_s > 100 ? bench_s - 60 : 40 ))" \
            --no-loop --json > "$OUT/bench.json" 2> "$OUT/bench.log"; then
        echo "inference speed (am.bench): $(cat "$OUT/bench.json")"
    else
        bench_rc=$?
        # The redirection made bench.json before am.bench ran: what it left is no figure.
        rm -f "$OUT/bench.json"
        tail -5 "$OUT/bench.log" >&2
        reason="failed (exit status $bench_rc)"
        [ "$bench_rc" -ne 124 ] && [ "$bench_rc" -ne 137 ] || reason="was stopped after its ${bench_s} s timeout"
        echo "WARNING: the speed benchmark $reason, so there is no bench.json; the figures above stand," \
             "and its log is $OUT/bench.log" >&2
    fi
fi
exit "$failed"
