#!/usr/bin/env bash
# bench/run.sh: Lethe against PyTorch on ResNet-18, side by side in one
# invocation on this machine (what `make bench` runs; never part of
# `make test`).
#
#   bench/run.sh            the full table (a few minutes)
#   BENCH_STEPS=5 BENCH_WARMUP=2 bench/run.sh    more timed steps
#
# Configurations: the CIFAR ResNet-18 of graphs/models/resnet18.lth at batch
# 128, width 64 on 3x32x32 and width 16 on 1x28x28; a training step (SGD
# with momentum), the evaluation forward and the input-gradient pass of the
# Gaussian Unlearning Score (bench/resnet18.lth). Each configuration runs in
# a process of its own (bench/bench_resnet.c, bench/bench_torch.py), so that
# its peak resident memory is its own; PyTorch runs NCHW and channels_last
# and the faster counts. Everything runs twice: with OPENBLAS_CORETYPE as
# this machine's environment sets it (Haswell, PERF-ANCHORS, when the
# environment leaves it unset) and with it unset.
#
# The training steps run once more on one thread each (both sides, in
# alternating rounds), since on a busy machine the 2-thread runs mostly
# measure how each copes with a preempted thread.
#
# Prints, and writes to $B/bench/results.md: images/s of both, their ratio,
# GFLOP/s and its share of this machine's FP32 peak (bench/peak.c, FLOPs
# counted as PERF-ANCHORS does: 2 x the convolutions' and the linear layer's
# multiply-accumulates per forward, 3x forward less the stem's input
# gradient per training step, 2x forward per input-gradient pass), and each
# side's peak RSS; then a per-kernel profile of Lethe's training steps (one
# thread, CPU time).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
OUT=$B/bench
STEPS=${BENCH_STEPS:-3}
WARMUP=${BENCH_WARMUP:-1}
PY=/usr/bin/python3
SET_VALUE=${OPENBLAS_CORETYPE:-Haswell}
mkdir -p "$OUT"

cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_resnet.c "$B/liblethe.a" -o "$OUT/bench_resnet" \
    -lopenblas -lz -lm -lpthread -ldl || exit 1
cc -std=gnu11 -O2 -Wall -march=native -pthread bench/peak.c -o "$OUT/peak" || exit 1
echo "compiling bench/resnet18.lth ..." >&2
t0=$(date +%s)
"$B/lethec" bench/resnet18.lth --emit=so -o "$OUT/resnet18.so" || exit 1
echo "compiled in $(( $(date +%s) - t0 )) s" >&2

raw=$OUT/raw.txt
: > "$raw"
{
    echo "date $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host $(uname -n) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs"
    echo "load_before $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "inherited OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"
    echo "steps $STEPS warmup $WARMUP"
    for t in 1 2; do echo "peak $("$OUT/peak" $t)"; done
    for cfg in w64 w16; do echo "macs $cfg $($PY bench/bench_torch.py $cfg macs nchw)"; done
} >> "$raw"

# one configuration on both sides: env name, thread count (0: one per CPU)
bench_pair() {
    local env=$1 threads=$2 cfg=$3 mode=$4 envcmd
    if [ "$env" = unset ]; then envcmd=(env -u OPENBLAS_CORETYPE); else envcmd=(env OPENBLAS_CORETYPE="$SET_VALUE"); fi
    echo "$env threads=$threads $cfg $mode ..." >&2
    echo "run $env/$threads lethe $("${envcmd[@]}" "$OUT/bench_resnet" "$OUT/resnet18.so" ${mode}_$cfg \
        --warmup "$WARMUP" --steps "$STEPS" --threads "$threads")" >> "$raw"
    for layout in nchw cl; do
        echo "run $env/$threads torch $("${envcmd[@]}" $PY bench/bench_torch.py $cfg $mode $layout \
            --warmup "$WARMUP" --steps "$STEPS" --threads "$threads")" >> "$raw"
    done
}
for env in set unset; do
    for cfg in w64 w16; do
        for mode in train eval gus; do
            bench_pair $env 0 $cfg $mode
        done
    done
done
# the training steps on one thread each: on a busy machine the 2-thread
# runs mostly measure how each side copes with a preempted thread
# in BENCH_ROUNDS rounds (default 2), each side's best median counts: the
# machine's speed drifts by 15-30% over minutes, and alternating the sides
# gives both the same chances
for round in $(seq "${BENCH_ROUNDS:-2}"); do
    for cfg in w64 w16; do
        bench_pair set 1 $cfg train
    done
done
echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw"
for cfg in w16 w64; do
    echo "profile $cfg ..." >&2
    "$OUT/bench_resnet" "$OUT/resnet18.so" train_$cfg --warmup 1 --steps 2 --threads 1 --profile --cpu-time \
        | sed "s/^/prof $cfg /" >> "$raw"
done

$PY bench/report.py "$raw" "$SET_VALUE" | tee "$OUT/results.md"
