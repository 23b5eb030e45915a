# bench/env.sh: the process environment both sides of every benchmark run
# in (sourced by bench/run.sh and bench/run_gpt2.sh). Measured, not assumed
# (bench/RESULTS.md, "PyTorch's allocator"): PyTorch allocates each step's
# activations, gradients and temporaries afresh, and with glibc's or
# jemalloc's default settings large blocks go back to the kernel when freed,
# so every step page-faults them in again, at ~15 us a 4 KiB page in this VM:
# ResNet-18 w64's training step 3.6 -> 1.36 s and GPT-2's 8.6 -> 1.7 s of
# CPU with jemalloc keeping freed pages and using huge pages. Lethe plans
# its memory once, so the setting changes it little; both sides get it.
#
# Defines BENCH_ALLOC (env assignments, empty without jemalloc) and
# BENCH_ALLOC_DESC (what it is, for the results' header), and
# bench_blas_threads N: OPENBLAS_NUM_THREADS for a pass of N threads (0: one
# per CPU): torch.set_num_threads does not reach Debian's OpenBLAS
# (pthreads), which otherwise runs one thread per CPU inside a "one thread"
# PyTorch.
BENCH_ALLOC=()
BENCH_ALLOC_DESC="glibc malloc (jemalloc not installed: apt-get install libjemalloc2)"
for j in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do
    if [ -f "$j" ]; then
        BENCH_ALLOC=(LD_PRELOAD="$j"
                     MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always,metadata_thp:always)
        BENCH_ALLOC_DESC="jemalloc $j with ${BENCH_ALLOC[1]}"
        break
    fi
done
bench_blas_threads() { echo "OPENBLAS_NUM_THREADS=$(( $1 > 0 ? $1 : $(nproc) ))"; }
