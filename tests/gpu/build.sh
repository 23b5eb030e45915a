#!/usr/bin/env bash
# build.sh: builds the GPU bundle on a development machine (`make gpu-bundle`)
# for tests/gpu/run.sh on a GPU host, which has CUDA, PyTorch and a shell
# but no LLVM, OpenBLAS, flex or bison: every program the checks need is
# compiled here, twice (CPU objects for --cpu=x86-64-v3, CUDA objects with
# CUBINs for --arch), and linked with the runtime and OpenBLAS into one
# binary that needs only the C library (its dlopen finds the GPU driver).
#
#   B=build GPU_ARCH=sm_90 tests/gpu/build.sh     -> $B/gpu-bundle/, $B/gpu-bundle.tar.gz
set -eu
B=${B:-build}
ARCH=${GPU_ARCH:-sm_90}
CPU=${GPU_HOST_CPU:-x86-64-v3}
cd "$(dirname "$0")/../.."
D=$B/gpu-bundle
LETHEC=$B/lethec
[ -x "$LETHEC" ] && [ -f "$B/liblethe.a" ] || { echo "build.sh: build lethec and liblethe.a first (make)" >&2; exit 2; }
rm -rf "$D" "$B/gpu-bundle.tar.gz"
mkdir -p "$D/obj"

cpu() {   # file name [flags]: the CPU object, no fast math (compared with the GPU)
    echo "  cpu   $2"
    "$LETHEC" "$1" --emit=obj -O2 --no-fast-math --cpu="$CPU" --name="$2" -I graphs ${3:-} -o "$D/obj/$2.o"
}
cuda() {  # file name [flags]: the CUDA object
    echo "  cuda  $2"
    "$LETHEC" "$1" --target=cuda --arch="$ARCH" --name="$2" -I graphs ${3:-} -o "$D/obj/$2.o"
}
echo "build.sh: compiling the programs (CUBINs for $ARCH, CPU code for $CPU)"
cpu tests/lth/ops.lth ops
cuda tests/lth/ops.lth ops_cuda --no-fast-math
cpu tests/lth/ops.lth ops64 --f64
cuda tests/lth/ops.lth ops64_cuda "--f64 --no-fast-math"
cpu tests/lth/cuda_models.lth models
cuda tests/lth/cuda_models.lth models_cuda --no-fast-math
cpu tests/gpu/programs.lth r18
cuda tests/gpu/programs.lth r18_cuda --no-fast-math
cpu tests/gpu/programs.lth r18_64 --f64
cuda tests/gpu/programs.lth r18_64_cuda "--f64 --no-fast-math"
cpu tests/lth/cuda_gpt2.lth gpt2
cuda tests/lth/cuda_gpt2.lth gpt2_cuda --no-fast-math
cuda bench/resnet18.lth bench_cuda   # as users run it: fast math on
cuda tests/gpu/gpt2_bench.lth gpt2_bench_cuda

echo "build.sh: linking lethe-gpu-test"
cc -std=gnu11 -O2 -Iruntime -o "$D/lethe-gpu-test" tests/gpu/gpu_test.c "$D"/obj/*.o "$B/liblethe.a" \
    -Wl,-Bstatic -lopenblas -Wl,-Bdynamic -static-libgcc -lm -lpthread -ldl
cp tests/gpu/run.sh tests/gpu/bench_torch_gpu.py tests/gpu/README.md bench/bench_torch.py bench/bench_torch_gpt2.py "$D/"
rm -rf "$D/obj"

libs=$(ldd "$D/lethe-gpu-test" | awk '{print $1}' | grep -v -E '^(linux-vdso|/lib64/ld-linux)' | tr '\n' ' ')
glibc=$(objdump -T "$D/lethe-gpu-test" | grep -o 'GLIBC_[0-9.]*' | sort -t. -k2 -n -u | tail -1)
tar czf "$B/gpu-bundle.tar.gz" -C "$B" gpu-bundle
size=$(du -sb "$D" | cut -f1)
echo "build.sh: $D ($((size / 1048576)) MiB; $(du -h "$B/gpu-bundle.tar.gz" | cut -f1) as $B/gpu-bundle.tar.gz)"
echo "build.sh: lethe-gpu-test needs: $libs(newest symbol $glibc)"
[ "$size" -lt $((64 * 1048576)) ] || { echo "build.sh: the bundle exceeds 64 MiB" >&2; exit 1; }
