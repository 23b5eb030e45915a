#!/usr/bin/env bash
# bench/run_gpt2.sh: Lethe against PyTorch on GPT-2 124M, side by side in one
# invocation (bench/run.sh runs it last with BENCH_GPT2=1; never part of
# `make test`).
#
#   BENCH_GPT2=1 make bench                    ResNet-18, then this
#   B=build bench/run_gpt2.sh                  this alone (tens of minutes on 2 cores)
#   BENCH_GPT2_TINY=1 bench/run_gpt2.sh        a small GPT-2, 1 step: checks the harness in seconds
#
# The passes (bench/gpt2.lth, bench/bench_torch_gpt2.py, batch 4): an AdamW
# training step at T = 64 and T = 128, the evaluation forward (the LM loss)
# and the gradient with respect to the input embeddings at T = 128. Each runs
# in a process of its own (bench/bench_resnet.c times any entry point), so
# its peak resident memory is its own. Every pass runs on 2 threads (one per
# CPU); the training steps once more on one thread each, in BENCH_ROUNDS
# alternating rounds (each side's best median counts). Then a per-kernel
# profile of Lethe's training step at T = 64 (one thread, CPU time).
#
# Both sides run in bench/env.sh's environment (jemalloc keeping freed
# pages, huge pages, OPENBLAS_NUM_THREADS = the pass's threads: PyTorch's
# best, measured, bench_torch_gpt2.py's head comment has the table), with
# OMP_WAIT_POLICY=PASSIVE and OPENBLAS_CORETYPE unset (OpenBLAS's AVX-512
# kernel), as PERF-ANCHORS found.
# BENCH_WARMUP (default 2) untimed steps come first on both sides: PyTorch's
# AdamW allocates its state in the first step.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
OUT=$B/bench
PY=/usr/bin/python3
if [ -n "${BENCH_GPT2_TINY:-}" ]; then
    CFG=tiny SRC=bench/gpt2_tiny.lth STEPS=1 WARMUP=0 ROUNDS=1
else
    CFG=gpt2 SRC=bench/gpt2.lth STEPS=${BENCH_STEPS:-3} WARMUP=${BENCH_WARMUP:-2} ROUNDS=${BENCH_ROUNDS:-2}
fi
mkdir -p "$OUT"

cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_resnet.c "$B/liblethe.a" -o "$OUT/bench_resnet" \
    -lopenblas -lz -lm -lpthread -ldl || exit 1
cc -std=gnu11 -O2 -Wall -march=native -pthread bench/peak.c -o "$OUT/peak" || exit 1
echo "compiling $SRC ..." >&2
t0=$(date +%s)
"$B/lethec" "$SRC" --emit=so -o "$OUT/gpt2_$CFG.so" || exit 1
echo "compiled in $(( $(date +%s) - t0 )) s" >&2

. bench/env.sh
tuned=(env -u OPENBLAS_CORETYPE OMP_WAIT_POLICY=PASSIVE "${BENCH_ALLOC[@]}")

raw=$OUT/gpt2_raw.txt
: > "$raw"
{
    echo "date $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host $(uname -n) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs"
    echo "load_before $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "config $CFG steps $STEPS warmup $WARMUP rounds $ROUNDS"
    echo "settings OPENBLAS_CORETYPE unset, OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS = the pass's threads, $BENCH_ALLOC_DESC"
    for t in 1 2; do echo "peak $("$OUT/peak" $t)"; done
} >> "$raw"

# one pass on both sides: thread count (0: one per CPU), entry
bench_pair() {
    local threads=$1 entry=$2
    local blas=("$(bench_blas_threads "$threads")")
    echo "threads=$threads $entry ..." >&2
    echo "run $threads lethe $("${tuned[@]}" "${blas[@]}" "$OUT/bench_resnet" "$OUT/gpt2_$CFG.so" "$entry" \
        --warmup "$WARMUP" --steps "$STEPS" --threads "$threads")" >> "$raw"
    echo "run $threads torch $("${tuned[@]}" "${blas[@]}" $PY bench/bench_torch_gpt2.py "$CFG" "$entry" \
        --warmup "$WARMUP" --steps "$STEPS" --threads "$threads")" >> "$raw"
}
for entry in train_t64 train_t128 eval_t128 embgrad_t128; do
    bench_pair 0 "$entry"
done
for round in $(seq "$ROUNDS"); do
    for entry in train_t64 train_t128; do
        bench_pair 1 "$entry"
    done
done
echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw"
echo "profile train_t64 ..." >&2
"${tuned[@]}" OPENBLAS_NUM_THREADS=1 "$OUT/bench_resnet" "$OUT/gpt2_$CFG.so" train_t64 --warmup "$WARMUP" --steps "$STEPS" --threads 1 \
    --profile --cpu-time | sed "s/^/prof /" >> "$raw"

$PY bench/report_gpt2.py "$raw" | tee "$OUT/gpt2.md"
