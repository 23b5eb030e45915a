#!/usr/bin/env bash
# The GEMM micro-benchmark of bench/run.sh (bench/bench_gemm.c on
# bench/gemm.lth) on a few small shapes, once: it must build, run every form
# (NN, NT, TN, the implicit-im2col convolution, a GEMM small enough to be
# timed in batches of calls) on 1 and 2 threads, and find Lethe's results
# equal to OpenBLAS's (bench_gemm exits 1 on a difference above 1e-3).
# Checks correctness only: the timings of a shared test machine mean nothing.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
t=$B/tests/tmp/bench_gemm.$$
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT

# a sanitizer build's runtime (make test-san) links only into a program
# built with the same sanitizers
san=()
nm "$B/liblethe.a" 2> /dev/null | grep -q __asan_ && san+=(-fsanitize=address -fno-omit-frame-pointer)
nm "$B/liblethe.a" 2> /dev/null | grep -q __ubsan_ && san+=(-fsanitize=undefined -fno-sanitize-recover=undefined)
if ! cc -std=gnu11 -O2 -Wall -Werror "${san[@]}" -Iruntime bench/bench_gemm.c "$B/liblethe.a" -o "$t/bench_gemm" \
        -lopenblas -lz -lm -lpthread -ldl 2> "$t/cc.err"; then
    echo "FAIL bench_gemm builds: $(head -5 "$t/cc.err")"
    exit 1
fi
echo "PASS bench_gemm builds"
if ! "$B/lethec" bench/gemm.lth --emit=so -o "$t/gemm.so" 2> "$t/lethec.err"; then
    echo "FAIL bench/gemm.lth compiles: $(head -5 "$t/lethec.err")"
    exit 1
fi
echo "PASS bench/gemm.lth compiles"

"$t/bench_gemm" "$t/gemm.so" --reps 1 --threads 1,2 --only w16_l4,w16_fc,w16_stem > "$t/out.md" 2> "$t/err"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "FAIL bench_gemm runs and agrees with OpenBLAS (exit $rc): $(grep -m3 -e MISMATCH -e bench_gemm "$t/out.md" "$t/err")"
else
    echo "PASS bench_gemm runs and agrees with OpenBLAS"
fi
# every selected entry on both thread counts: w16_l4's nn, nt, tn and conv,
# w16_fc's three, w16_stem's nn and conv
rows=$(grep -c '^| w16 ' "$t/out.md")
if [ "$rows" -eq 18 ] && grep -q 'openblas_get_corename' "$t/out.md" &&
        [ "$(grep -c 'geometric mean ratio' "$t/out.md")" -eq 4 ]; then
    echo "PASS bench_gemm prints every row, the kernel and the summaries"
else
    echo "FAIL bench_gemm prints every row, the kernel and the summaries ($rows rows of 18):"
    sed 's/^/    /' "$t/out.md" | head -40
fi
