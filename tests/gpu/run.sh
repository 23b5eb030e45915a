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
#  2. the same ResNet-18 checks with LETHE_CUDA_TF32=1 (cuBLAS on TF32 tensor
#     cores), reported beside the FP32 ones but not failing the run: TF32 is
#     opt-in and leaves the f32 tolerances by design;
#  3. timing on the same GPU in the same run, FP32 and TF32: Lethe's ResNet-18
#     entries of bench/resnet18.lth (batch 128) and the same networks in
#     PyTorch (bench_torch_gpu.py; cuDNN autotuned, best layout); GPT-2 124M's
#     training step and evaluation at batch 8, 1024 tokens (tokens/s; Lethe's
#     tests/gpu/gpt2_bench.lth against bench_torch_gpt2.py); one CIFAR-10
#     epoch of training steps (390 batches of 128); a per-kernel profile of
#     Lethe's training steps (LETHE_CUDA_PROFILE=1, profile_*.txt);
#  4. results/RESULTS.md: the card, the versions, the counts and the tables,
#     ready for bench/RESULTS.md.
#
# Without a GPU every check is a SKIP and the timing is skipped; the script
# still exits 0. It exits 1 when an FP32 check fails.
set -u
cd "$(dirname "$0")" || exit 2
OUT=${OUT:-$PWD/results}
mkdir -p "$OUT"
export LETHE_CACHE=${LETHE_CACHE:-$PWD/cache}
ENTRIES=${ENTRIES:-"train_w64 eval_w64 gus_w64 train_w16"}
STEPS=${STEPS:-20}
EPOCH_STEPS=${EPOCH_STEPS:-390}
start=$(date +%s)
: > "$OUT/run.log"
say() { echo "$*" | tee -a "$OUT/run.log"; }
# seconds a step may take: its own cap, and what is left of 8 minutes
budget() {
    local left=$((480 - ($(date +%s) - start)))
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
timeout "$(budget 200)" ./lethe-gpu-test check > "$OUT/check.log" 2>&1
check_rc=$?
grep -E '^(PASS|FAIL|SKIP) ' "$OUT/check.log" | grep -v ' draws random numbers' | tee -a "$OUT/run.log"
grep -q -E '^(FAIL|SKIP) ' "$OUT/check.log" || [ "$check_rc" -eq 0 ] || say "FAIL gpu check: exited with status $check_rc"
passed=$(grep -c '^PASS ' "$OUT/check.log")
failed=$(grep -c '^FAIL ' "$OUT/check.log")
skipped=$(grep -c '^SKIP ' "$OUT/check.log")
[ "$check_rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1

field() {   # file entry key: the value of key on entry's line
    grep "^entry=$2 " "$1" 2>/dev/null | head -1 | tr ' ' '\n' | grep "^$3=" | cut -d= -f2 | tr -d '"'
}

tf32_line="not run"
if [ "$card" != "none" ] && [ "$skipped" -eq 0 ]; then
    say "== check with TF32: ResNet-18 w16 (reported, not gating) =="
    LETHE_CUDA_TF32=1 timeout "$(budget 60)" ./lethe-gpu-test check-r18 2e-3 2e-2 > "$OUT/check_tf32.log" 2>&1
    grep -E '^(PASS|FAIL) ' "$OUT/check_tf32.log" | tee -a "$OUT/run.log"
    tf32_line="$(grep -c '^PASS ' "$OUT/check_tf32.log") within 2e-3 (one step) / 2e-2 (three steps), $(grep -c '^FAIL ' "$OUT/check_tf32.log") outside"
fi

for mode in fp32 tf32; do
    : > "$OUT/bench_lethe_$mode.txt"
    : > "$OUT/bench_torch_$mode.txt"
done
if [ "$card" != "none" ] && [ "$skipped" -eq 0 ]; then
    for mode in fp32 tf32; do
        tf=0
        torch_flag=""
        [ $mode = tf32 ] && tf=1 && torch_flag=--tf32
        say "== timing ($mode): Lethe =="
        for e in $ENTRIES; do
            LETHE_CUDA_TF32=$tf timeout "$(budget 60)" ./lethe-gpu-test bench "$e" 3 "$STEPS" \
                >> "$OUT/bench_lethe_$mode.txt" 2>> "$OUT/run.log" || say "lethe bench $e ($mode) failed (status $?)"
        done
        cat "$OUT/bench_lethe_$mode.txt" | tee -a "$OUT/run.log"
        say "== timing ($mode): PyTorch =="
        if command -v python3 > /dev/null 2>&1; then
            timeout "$(budget 120)" python3 bench_torch_gpu.py $ENTRIES --steps "$STEPS" $torch_flag \
                > "$OUT/bench_torch_$mode.txt" 2>> "$OUT/run.log" || say "pytorch bench ($mode) failed (status $?)"
            cat "$OUT/bench_torch_$mode.txt" | tee -a "$OUT/run.log"
        else
            say "SKIP pytorch: no python3"
        fi
    done
    say "== GPT-2 124M, batch 8, 1024 tokens: Lethe and PyTorch, tokens/s =="
    : > "$OUT/bench_gpt2.txt"
    for mode in fp32 tf32; do
        tf=0
        torch_flag=""
        [ $mode = tf32 ] && tf=1 && torch_flag=--tf32
        for e in train_t1024 eval_t1024; do
            LETHE_CUDA_TF32=$tf timeout "$(budget 60)" ./lethe-gpu-test bench-gpt2 "$e" 1 3 2>> "$OUT/run.log" \
                | sed "s/^/side=lethe mode=$mode /" >> "$OUT/bench_gpt2.txt"
            command -v python3 > /dev/null 2>&1 && timeout "$(budget 60)" python3 bench_torch_gpt2.py gpt2 "$e" --device cuda \
                --batch 8 --warmup 2 --steps 5 $torch_flag 2>> "$OUT/run.log" | sed "s/^/side=torch mode=$mode /" >> "$OUT/bench_gpt2.txt"
        done
    done
    cat "$OUT/bench_gpt2.txt" | tee -a "$OUT/run.log"
    say "== one epoch ($EPOCH_STEPS training steps, train_w64) =="
    : > "$OUT/epoch.txt"
    for mode in fp32 tf32; do
        tf=0
        torch_flag=""
        [ $mode = tf32 ] && tf=1 && torch_flag=--tf32
        # a whole epoch where it takes under a minute; else 390 x the median step (marked estimated)
        med=$(field "$OUT/bench_lethe_$mode.txt" train_w64 median_ms)
        if awk -v m="${med:-0}" -v s="$EPOCH_STEPS" 'BEGIN { exit !(m > 0 && m * s < 50000) }'; then
            LETHE_CUDA_TF32=$tf timeout "$(budget 60)" ./lethe-gpu-test bench train_w64 3 "$EPOCH_STEPS" 2>> "$OUT/run.log" \
                | sed "s/^/side=lethe mode=$mode /" >> "$OUT/epoch.txt"
        elif [ -n "$med" ]; then
            awk -v m="$med" -v s="$EPOCH_STEPS" -v mode=$mode \
                'BEGIN { printf "side=lethe mode=%s entry=train_w64 total_ms=%.1f steps=%d estimated=1\n", mode, m * s, s }' \
                >> "$OUT/epoch.txt"
        fi
        command -v python3 > /dev/null 2>&1 && timeout "$(budget 60)" python3 bench_torch_gpu.py train_w64 \
            --steps "$EPOCH_STEPS" $torch_flag 2>> "$OUT/run.log" | sed "s/^/side=torch mode=$mode /" >> "$OUT/epoch.txt"
    done
    cat "$OUT/epoch.txt" | tee -a "$OUT/run.log"
    say "== profile: Lethe's training steps by kernel (LETHE_CUDA_PROFILE=1) =="
    for p in "train_w64 0" "train_w16 0" "train_w64 1"; do
        set -- $p
        LETHE_CUDA_PROFILE=1 LETHE_CUDA_TF32=$2 timeout "$(budget 30)" ./lethe-gpu-test bench "$1" 2 5 \
            > /dev/null 2> "$OUT/profile_$1_tf32_$2.txt" || say "profile $1 failed (status $?)"
        head -14 "$OUT/profile_$1_tf32_$2.txt" | tee -a "$OUT/run.log"
    done
else
    say "SKIP timing: no GPU"
fi

{
    echo "## CUDA backend on a GPU (tests/gpu/run.sh)"
    echo
    echo "- card: $card"
    echo "- $(./lethe-gpu-test info 2>/dev/null || echo 'device: none')"
    command -v python3 > /dev/null 2>&1 && python3 -c 'import torch; print("- PyTorch %s, CUDA %s, cuDNN %s" % (torch.__version__, torch.version.cuda, torch.backends.cudnn.version()))' 2>/dev/null
    echo "- checks: $passed passed, $failed failed, $skipped skipped (results/check.log)"
    echo
    echo "- TF32 checks (LETHE_CUDA_TF32=1, ResNet-18 w16 against the CPU's FP32): $tf32_line"
    for mode in fp32 tf32; do
        echo
        echo "$mode: Lethe $([ $mode = tf32 ] && echo 'LETHE_CUDA_TF32=1' || echo 'FP32 everywhere'); PyTorch TF32 $([ $mode = tf32 ] && echo on || echo off) (cuBLAS and cuDNN)"
        echo
        echo "| entry (batch 128) | Lethe ms/step | PyTorch ms/step (layout) | PyTorch / Lethe |"
        echo "|---|---:|---:|---:|"
        for e in $ENTRIES; do
            l=$(field "$OUT/bench_lethe_$mode.txt" "$e" median_ms)
            t=$(field "$OUT/bench_torch_$mode.txt" "$e" median_ms)
            lay=$(field "$OUT/bench_torch_$mode.txt" "$e" layout)
            r=$(awk -v a="$t" -v b="$l" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }')
            echo "| $e | ${l:--} | ${t:--} (${lay:--}) | $r |"
        done
    done
    echo
    echo "One CIFAR-10 epoch ($EPOCH_STEPS steps of train_w64, summed step times):"
    echo
    echo "| | Lethe s | PyTorch s | PyTorch / Lethe |"
    echo "|---|---:|---:|---:|"
    for mode in fp32 tf32; do
        l=$(grep "^side=lethe mode=$mode " "$OUT/epoch.txt" 2>/dev/null | tr ' ' '\n' | grep '^total_ms=' | cut -d= -f2)
        t=$(grep "^side=torch mode=$mode " "$OUT/epoch.txt" 2>/dev/null | tr ' ' '\n' | grep '^total_ms=' | cut -d= -f2)
        est=$(grep "^side=lethe mode=$mode " "$OUT/epoch.txt" 2>/dev/null | grep -c estimated=1)
        awk -v m="$mode" -v a="$t" -v b="$l" -v est="$est" 'BEGIN {
            lb = (b > 0) ? sprintf("%.2f%s", b / 1e3, (est > 0) ? " (est.)" : "") : "-"
            la = (a > 0) ? sprintf("%.2f", a / 1e3) : "-"
            r = (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-"
            printf "| %s | %s | %s | %s |\n", m, lb, la, r }'
    done
    echo
    echo "GPT-2 124M (tests/gpu/gpt2_bench.lth; PyTorch: bench_torch_gpt2.py, the same formulas), batch 8, 1024 tokens,"
    echo "medians of 3 steps (Lethe, after 1 warm-up) and 5 (PyTorch, after 2):"
    echo
    echo "| pass | mode | Lethe ms | Lethe tokens/s | PyTorch ms | PyTorch tokens/s | PyTorch / Lethe |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for mode in fp32 tf32; do
        for e in train_t1024 eval_t1024; do
            l=$(grep "^side=lethe mode=$mode entry=$e " "$OUT/bench_gpt2.txt" 2>/dev/null | tr ' ' '\n' | grep '^median_ms=' | cut -d= -f2)
            t=$(grep "^side=torch mode=$mode entry=$e " "$OUT/bench_gpt2.txt" 2>/dev/null | tr ' ' '\n' | grep '^median_s=' | cut -d= -f2)
            awk -v e="$e" -v m="$mode" -v l="$l" -v t="$t" 'BEGIN {
                tm = t * 1e3; tok = 8 * 1024
                printf "| %s | %s | %s | %s | %s | %s | %s |\n", e, m, (l > 0) ? sprintf("%.1f", l) : "-",
                    (l > 0) ? sprintf("%.0f", tok / (l / 1e3)) : "-", (tm > 0) ? sprintf("%.1f", tm) : "-",
                    (tm > 0) ? sprintf("%.0f", tok / t) : "-", (l > 0 && tm > 0) ? sprintf("%.2f", tm / l) : "-" }'
        done
    done
    echo
    echo "Medians of $STEPS steps after 3 warm-up steps. Lethe's step includes copying the batch"
    echo "to the GPU and the loss back; PyTorch's inputs are already on the GPU. Where Lethe's time goes:"
    echo "results/profile_*.txt (every launch waited for, so launch overhead is in each row)."
} > "$OUT/RESULTS.md"
say "== $passed passed, $failed failed, $skipped skipped; $(( $(date +%s) - start )) s; $OUT/RESULTS.md =="
[ "$failed" -eq 0 ]
