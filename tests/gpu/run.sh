#!/usr/bin/env bash
# run.sh: the CUDA backend's checks on a GPU host, in one go (a few minutes;
# every step is cut off so that the whole stays under 8): unpack the bundle that `make gpu-bundle` built on a development
# machine (tests/gpu/README.md) and run
#
#     ./run.sh                       results in ./results (OUT=... to move them)
#
#  1. lethe-gpu-test check: every entry of every program the bundle carries
#     (each op in f32 and f64, small networks and rules, ResNet-18 w16
#     training, evaluation and GUS passes) on the CPU backend and on the GPU,
#     compared; PASS / FAIL / SKIP lines as in `make test`;
#  2. timing on the same GPU in the same run: Lethe's ResNet-18 entries of
#     bench/resnet18.lth (batch 128) and the same networks in PyTorch
#     (bench_torch_gpu.py; FP32, TF32 off, cuDNN autotuned, best layout);
#  3. results/RESULTS.md: the card, the versions, the counts and the table,
#     ready for bench/RESULTS.md.
#
# Without a GPU every check is a SKIP and the timing is skipped; the script
# still exits 0. It exits 1 when a check fails.
set -u
cd "$(dirname "$0")" || exit 2
OUT=${OUT:-$PWD/results}
mkdir -p "$OUT"
export LETHE_CACHE=${LETHE_CACHE:-$PWD/cache}
ENTRIES=${ENTRIES:-"train_w64 eval_w64 gus_w64 train_w16"}
STEPS=${STEPS:-20}
start=$(date +%s)
: > "$OUT/run.log"
say() { echo "$*" | tee -a "$OUT/run.log"; }
# seconds a step may take: its own cap, and what is left of 7.5 minutes
budget() {
    local left=$((450 - ($(date +%s) - start)))
    [ "$left" -lt "$1" ] && echo "$((left > 1 ? left : 1))" || echo "$1"
}

card="none"
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
fi
say "card: $card"
say "host: $(uname -srm), $(nproc) CPUs"
./lethe-gpu-test info 2>&1 | tee -a "$OUT/run.log"

say "== check: every entry, CPU backend against the GPU =="
timeout "$(budget 240)" ./lethe-gpu-test check > "$OUT/check.log" 2>&1
check_rc=$?
grep -E '^(PASS|FAIL|SKIP) ' "$OUT/check.log" | grep -v ' draws random numbers' | tee -a "$OUT/run.log"
grep -q -E '^(FAIL|SKIP) ' "$OUT/check.log" || [ "$check_rc" -eq 0 ] || say "FAIL gpu check: exited with status $check_rc"
passed=$(grep -c '^PASS ' "$OUT/check.log")
failed=$(grep -c '^FAIL ' "$OUT/check.log")
skipped=$(grep -c '^SKIP ' "$OUT/check.log")
[ "$check_rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1

: > "$OUT/bench_lethe.txt"
: > "$OUT/bench_torch.txt"
if [ "$card" != "none" ] && [ "$skipped" -eq 0 ]; then
    say "== timing: Lethe =="
    for e in $ENTRIES; do
        timeout "$(budget 60)" ./lethe-gpu-test bench "$e" 3 "$STEPS" >> "$OUT/bench_lethe.txt" 2>> "$OUT/run.log" \
            || say "lethe bench $e failed (status $?)"
    done
    cat "$OUT/bench_lethe.txt" | tee -a "$OUT/run.log"
    say "== timing: PyTorch =="
    if command -v python3 > /dev/null 2>&1; then
        timeout "$(budget 150)" python3 bench_torch_gpu.py $ENTRIES --steps "$STEPS" > "$OUT/bench_torch.txt" 2>> "$OUT/run.log" \
            || say "pytorch bench failed (status $?)"
        cat "$OUT/bench_torch.txt" | tee -a "$OUT/run.log"
    else
        say "SKIP pytorch: no python3"
    fi
else
    say "SKIP timing: no GPU"
fi

field() {   # file entry key: the value of key on entry's line
    grep "^entry=$2 " "$1" 2>/dev/null | head -1 | tr ' ' '\n' | grep "^$3=" | cut -d= -f2 | tr -d '"'
}
{
    echo "## CUDA backend on a GPU (tests/gpu/run.sh)"
    echo
    echo "- card: $card"
    echo "- $(./lethe-gpu-test info 2>/dev/null || echo 'device: none')"
    command -v python3 > /dev/null 2>&1 && python3 -c 'import torch; print("- PyTorch %s, CUDA %s, cuDNN %s" % (torch.__version__, torch.version.cuda, torch.backends.cudnn.version()))' 2>/dev/null
    echo "- checks: $passed passed, $failed failed, $skipped skipped (results/check.log)"
    echo
    echo "| entry (batch 128) | Lethe ms/step | PyTorch ms/step (layout) | PyTorch / Lethe |"
    echo "|---|---:|---:|---:|"
    for e in $ENTRIES; do
        l=$(field "$OUT/bench_lethe.txt" "$e" median_ms)
        t=$(field "$OUT/bench_torch.txt" "$e" median_ms)
        lay=$(field "$OUT/bench_torch.txt" "$e" layout)
        r=$(awk -v a="$t" -v b="$l" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }')
        echo "| $e | ${l:--} | ${t:--} (${lay:--}) | $r |"
    done
    echo
    echo "Medians of $STEPS steps after 3 warm-up steps, FP32 on both sides. Lethe's step includes copying the batch"
    echo "to the GPU and the loss back; PyTorch's inputs are already on the GPU."
} > "$OUT/RESULTS.md"
say "== $passed passed, $failed failed, $skipped skipped; $(( $(date +%s) - start )) s; $OUT/RESULTS.md =="
[ "$failed" -eq 0 ]
