#!/usr/bin/env bash
# Data-parallel training on the CUDA path (runtime/nccl.c, docs/cuda.md
# "Several GPUs"), without a GPU: the mock CUDA driver (tests/cuda_mock.c,
# LETHE_MOCK_GPUS=2 GPUs) runs the generated kernels on the host and the
# mock NCCL (tests/nccl_mock.c) reduces the device buffers of the ranks
# through files. On tests/lth/e2e_gaussian.lth (an MLP, batch 50, one epoch):
#   - lethec --target=cuda --world=2 compiles (one LETHE_CUDA_ALLREDUCE
#     launch per gradient); --world=1 writes the same bytes as no flag;
#   - `mpirun -np 2 lethe train --device=cuda` (each rank on the GPU of its
#     local rank, 25 samples of every batch, NCCL's average of the
#     gradients) leaves the model of one process at batch 50 within float
#     tolerance; both ranks issue the same all-reduces in the same order
#     (one per gradient tensor per step); rank 0 alone writes;
#   - clear errors: NCCL missing, NCCL older than 2.10, fewer GPUs than ranks.
# What this does not test: a real NCCL on real GPUs (no multi-GPU machine).
# SKIP with the reason where mpirun is missing or cannot start two processes.
# Prints PASS/FAIL/SKIP lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
root=$PWD
LETHE=$root/$B/lethe
LETHEC=$root/$B/lethec
exp=$root/tests/lth/e2e_gaussian.lth
work=$root/$B/tests/tmp/mpi_cuda.$$
rm -rf "$work"
mkdir -p "$work/mock"
trap 'rm -rf "$work"' EXIT

pass() { echo "PASS mpi_cuda.$1"; }
fail() { echo "FAIL mpi_cuda.$1: $2"; }

for lib in libcudamock.so libncclmock.so; do
    if [ ! -f "$root/$B/tests/$lib" ]; then
        fail build "$B/tests/$lib is missing (make B=$B $B/tests/$lib)"
        exit 0
    fi
done
export LETHE_CACHE=$work/cache LETHE_MOCK_DIR=$work/mock LETHE_MOCK_SHIM=$root/tests/cuda_shim.h LETHE_CUBLAS=none
export LETHE_LIBCUDA=$root/$B/tests/libcudamock.so LETHE_NVRTC=$root/$B/tests/libcudamock.so
export LETHE_NCCL=$root/$B/tests/libncclmock.so LETHE_MOCK_GPUS=2

# --- compiling (needs no MPI) -------------------------------------------------
# (the mock NVRTC's "CUBINs" name their temporary files: the byte comparison
# is of programs compiled without NVRTC, whose kernels the device compiles)
LETHE_NVRTC=$work/none.so "$LETHEC" "$exp" --target=cuda --emit=so -o "$work/n0.so" 2> /dev/null &&
    LETHE_NVRTC=$work/none.so "$LETHEC" "$exp" --target=cuda --world=1 --emit=so -o "$work/n1.so" 2> /dev/null &&
    "$LETHEC" "$exp" --target=cuda --emit=so -o "$work/c0.so" &&
    "$LETHEC" "$exp" --target=cuda --world=2 --emit=so -o "$work/c2.so" -d loops --dump-to="$work/c2.loops"
if [ $? -ne 0 ]; then
    fail compile "lethec --target=cuda failed"
    exit 0
fi
reduced=$(grep -c allreduce_mean "$work/c2.loops")
if cmp -s "$work/n0.so" "$work/n1.so" && [ "$reduced" -gt 0 ]; then
    pass "compile (--world=2: $reduced all-reduced gradients over the experiment's rules; --world=1 unchanged)"
else
    fail compile "--world=1 and no flag differ, or no all-reduce kernel ($reduced)"
fi

if ! command -v mpirun > /dev/null; then
    echo "SKIP mpi_cuda.parity: mpirun is missing (Debian package openmpi-bin, in make deps)"
    exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
vars=(ASAN_OPTIONS LETHE_CACHE LETHE_MOCK_DIR LETHE_MOCK_SHIM LETHE_CUBLAS LETHE_LIBCUDA LETHE_NVRTC LETHE_NCCL LETHE_MOCK_GPUS)
mpi() { mpirun --oversubscribe $(printf -- '-x %s ' "${vars[@]}") -np 2 "$@"; }
if ! pre=$(mpi true 2>&1); then
    echo "SKIP mpi_cuda.parity: mpirun cannot start 2 processes here: $(echo "$pre" | grep -v '^-*$' | head -2 | tr '\n' ' ')"
    exit 0
fi
opts=(--device=cuda --seed 0 --epochs 1 --threads 1 --quiet --synthetic-fallback)

# --- errors, before any work ---------------------------------------------------
check_error() {   # name, expected message, then the environment to change
    local name=$1 want=$2
    shift 2
    out=$(env "$@" mpirun --oversubscribe $(printf -- '-x %s ' "${vars[@]}" LETHE_MOCK_NCCL_VERSION) -np 2 \
        "$LETHE" train "$work/c2.so" "${opts[@]}" --out "$work/$name" 2>&1)
    if [ $? -ne 0 ] && grep -qF "$want" <<<"$out" && [ ! -e "$work/$name" ]; then
        pass "$name"
    else
        fail "$name" "$(grep -v '^-*$' <<<"$out" | head -4 | tr '\n' ' ')"
    fi
}
export LETHE_MOCK_NCCL_VERSION=22304
check_error nccl_missing "data-parallel CUDA runs need NCCL, and $work/none.so cannot be loaded" LETHE_NCCL="$work/none.so"
check_error nccl_too_old "is NCCL 2.9.9; data-parallel runs need 2.10 or later" LETHE_MOCK_NCCL_VERSION=20909
# (rank 1 finds no GPU 1, rank 0 finds 1 GPU for 2 ranks: whichever stops first)
check_error fewer_gpus "one GPU per rank" LETHE_MOCK_GPUS=1

# --- parity: 2 ranks at 25 + 25 equal one process at 50 ----------------------
"$LETHE" train "$work/c0.so" "${opts[@]}" --out "$work/one" > /dev/null 2> "$work/one.err" ||
    fail parity "one process: $(tail -3 "$work/one.err")"
LETHE_MOCK_NCCL_LOG=$work/calls mpirun --oversubscribe $(printf -- '-x %s ' "${vars[@]}" LETHE_MOCK_NCCL_LOG) -np 2 \
    "$LETHE" train "$work/c2.so" "${opts[@]}" --out "$work/two" > "$work/two.out" 2> "$work/two.err" ||
    fail parity "mpirun -np 2: $(grep -v '^-*$' "$work/two.err" | tail -5 | tr '\n' ' ')"
if [ -f "$work/one/seed0/original.safetensors" ] && [ -f "$work/two/seed0/original.safetensors" ]; then
    res=$(python3 "$root/tests/support/compare_models.py" "$work/one/seed0" "$work/two/seed0")
    if [[ $res == ok* ]]; then pass "parity ($res)"; else fail parity "$res"; fi
    # one call per gradient tensor (4: two layers' weights and biases) per step
    calls=$(wc -l < "$work/calls.0")
    if cmp -s "$work/calls.0" "$work/calls.1" && [ "$calls" -ge 40 ] && [ $((calls % 4)) -eq 0 ] &&
        ! grep -qv ' f32 avg$' "$work/calls.0"; then
        pass "same_collectives (both ranks: $calls ncclAllReduce calls, ncclAvg, in the same order)"
    else
        fail same_collectives "$calls calls on rank 0, $(wc -l < "$work/calls.1") on rank 1: $(diff "$work/calls.0" "$work/calls.1" | head -3)"
    fi
    extra=$(find "$work/two" -name '.*' -o -name '*tmp*' | head -3)
    printed=$(grep -c original.safetensors "$work/two.out")
    if [ -z "$extra" ] && [ "$printed" -eq 1 ]; then
        pass rank0_writes
    else
        fail rank0_writes "left over: '$extra'; the model's path printed $printed times"
    fi
fi
