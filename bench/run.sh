#!/usr/bin/env bash
# bench/run.sh: Lethe against PyTorch on ResNet-18, side by side in one
# invocation on this machine (what `make bench` runs; never part of
# `make test`).
#
#   bench/run.sh            the full table (a few minutes)
#   BENCH_STEPS=5 BENCH_WARMUP=2 bench/run.sh    more timed steps
#   BENCH_GPT2=1 bench/run.sh    then GPT-2 124M against PyTorch (bench/run_gpt2.sh)
#   BENCH_CRAFT=0 bench/run.sh   without the crafting rows (below)
#   bench/run.sh gemm            only the GEMM micro-benchmark (below; BENCH_GEMM=0: the full run without it)
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
# Crafting (issue 9): one Witches' Brew step on 32 poisons through the
# width-16 ResNet-18 on 1x28x28, the second-order gradient of 1 - cosine
# with respect to the images (bench/craft.lth, bench/bench_craft.c) against
# PyTorch's create_graph=True (bench_torch.py w16 craft), one thread per CPU
# and then one thread each in alternating rounds, with both peak RSS.
#
# Both sides run in the environment of bench/env.sh (jemalloc keeping freed
# pages and using huge pages when it is installed, OpenBLAS's threads set to
# the pass's): without it PyTorch page-faults its activations in again every
# step, which in this VM made its w64 training step 2.6x slower.
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

# The GEMM micro-benchmark (issue 12): Lethe's generated GEMMs against
# OpenBLAS's cblas_sgemm at 2048^3 and at ResNet-18's convolution and head
# shapes, on 1 and 2 threads in BENCH_GEMM_REPS alternating rounds (default
# 3): bench/bench_gemm.c on bench/gemm.lth. OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are unset for it, so OpenBLAS runs the kernel it picks
# itself (its AVX-512 one where it knows the CPU); the section names it.
gemm_section() {
    cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_gemm.c "$B/liblethe.a" -o "$OUT/bench_gemm" \
        -lopenblas -lz -lm -lpthread -ldl || return 1
    cc -std=gnu11 -O2 -Wall -march=native -pthread bench/peak.c -o "$OUT/peak" || return 1
    echo "compiling bench/gemm.lth ..." >&2
    "$B/lethec" bench/gemm.lth --emit=so -o "$OUT/gemm.so" || return 1
    local p1 p2
    p1=$("$OUT/peak" 1 | sed 's/^peak_gflops=\([0-9.]*\).*/\1/')
    p2=$("$OUT/peak" 2 | sed 's/^peak_gflops=\([0-9.]*\).*/\1/')
    echo "GEMM micro-benchmark ..." >&2
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$OUT/bench_gemm" "$OUT/gemm.so" --reps "${BENCH_GEMM_REPS:-3}" \
        --threads 1,2 --peak "1:$p1" --peak "2:$p2"
}
if [ "${1:-}" = gemm ]; then
    gemm_section | tee "$OUT/gemm.md"
    exit "${PIPESTATUS[0]}"
fi

cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_resnet.c "$B/liblethe.a" -o "$OUT/bench_resnet" \
    -lopenblas -lz -lm -lpthread -ldl || exit 1
cc -std=gnu11 -O2 -Wall -march=native -pthread bench/peak.c -o "$OUT/peak" || exit 1
echo "compiling bench/resnet18.lth ..." >&2
t0=$(date +%s)
"$B/lethec" bench/resnet18.lth --emit=so -o "$OUT/resnet18.so" || exit 1
echo "compiled in $(( $(date +%s) - t0 )) s" >&2
CRAFT=${BENCH_CRAFT:-1}
if [ "$CRAFT" != 0 ]; then
    cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_craft.c "$B/liblethe.a" -o "$OUT/bench_craft" \
        -lopenblas -lz -lm -lpthread -ldl || exit 1
    echo "compiling bench/craft.lth ..." >&2
    "$B/lethec" bench/craft.lth --emit=so -o "$OUT/craft.so" || exit 1
fi

. bench/env.sh
raw=$OUT/raw.txt
: > "$raw"
{
    echo "date $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host $(uname -n) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) CPUs"
    echo "load_before $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "inherited OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}; both sides: $BENCH_ALLOC_DESC, OPENBLAS_NUM_THREADS = the pass's threads (crafting: 1)"
    echo "steps $STEPS warmup $WARMUP"
    for t in 1 2; do echo "peak $("$OUT/peak" $t)"; done
    for cfg in w64 w16; do echo "macs $cfg $($PY bench/bench_torch.py $cfg macs nchw)"; done
} >> "$raw"

# one configuration on both sides: env name, thread count (0: one per CPU)
bench_pair() {
    local env=$1 threads=$2 cfg=$3 mode=$4 envcmd lethe=("$OUT/bench_resnet" "$OUT/resnet18.so")
    [ "$mode" = craft ] && lethe=("$OUT/bench_craft" "$OUT/craft.so")
    if [ "$env" = unset ]; then envcmd=(env -u OPENBLAS_CORETYPE); else envcmd=(env OPENBLAS_CORETYPE="$SET_VALUE"); fi
    # PyTorch's double backward (crafting) calls OpenBLAS inside its own
    # OpenMP threads: OpenBLAS threads of its own oversubscribe the CPUs
    # (2 threads: 241 ms per step, 143 ms with OPENBLAS_NUM_THREADS=1;
    # the training passes gain nothing either way). Lethe's convolutions
    # do not call OpenBLAS.
    if [ "$mode" = craft ]; then envcmd+=("${BENCH_ALLOC[@]}" OPENBLAS_NUM_THREADS=1)
    else envcmd+=("${BENCH_ALLOC[@]}" "$(bench_blas_threads "$threads")"); fi
    echo "$env threads=$threads $cfg $mode ..." >&2
    echo "run $env/$threads lethe $("${envcmd[@]}" "${lethe[@]}" ${mode}_$cfg \
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
# the crafting step in rounds at both thread counts: PyTorch's two-thread
# crafting step varied most between runs (117-197 poisons/s; RESULTS.md)
if [ "$CRAFT" != 0 ]; then
    for round in $(seq "${BENCH_ROUNDS:-2}"); do
        bench_pair set 0 w16 craft
        bench_pair set 1 w16 craft
    done
fi
echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw"
for cfg in w16 w64; do
    echo "profile $cfg ..." >&2
    env "${BENCH_ALLOC[@]}" OPENBLAS_NUM_THREADS=1 "$OUT/bench_resnet" "$OUT/resnet18.so" train_$cfg --warmup 1 --steps 2 \
        --threads 1 --profile --cpu-time \
        | sed "s/^/prof $cfg /" >> "$raw"
done

$PY bench/report.py "$raw" "$SET_VALUE" | tee "$OUT/results.md"

# one more row: the GPT-2 tokenizer's throughput on one core (bench/bench_bpe.c;
# needs the vocabulary of `make deps`, else it says it skipped)
cc -std=gnu11 -O2 -Wall -Iruntime bench/bench_bpe.c "$B/liblethe.a" -o "$OUT/bench_bpe" -lm || exit 1
"$OUT/bench_bpe" | tee -a "$OUT/results.md"

if [ "${BENCH_GEMM:-1}" != 0 ]; then
    { echo; gemm_section; } | tee -a "$OUT/results.md"
fi

# GPT-2 124M against PyTorch (bench/run_gpt2.sh: tens of minutes, so only
# with BENCH_GPT2=1; BENCH_GPT2_TINY=1 with it checks the harness on a small
# GPT-2); its report is appended
if [ -n "${BENCH_GPT2:-}" ]; then
    B=$B bash bench/run_gpt2.sh | tee -a "$OUT/results.md"
fi
