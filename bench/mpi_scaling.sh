#!/usr/bin/env bash
# bench/mpi_scaling.sh: data-parallel training throughput, one process
# against `mpirun -np N` (docs/design.md, "Data-parallel training"). Never
# part of `make test`.
#
#   bench/mpi_scaling.sh [EXP.lth] [N...]     default: the demo's ResNet-18
#                                             (width 16, Fashion-MNIST) and N = 2
#   BENCH_EPOCHS=2 bench/mpi_scaling.sh       more epochs per run (default 1)
#
# Each configuration trains seed 0 of the experiment from fresh weights into
# a folder of its own; the figure is training samples per second from the
# stage's own clock (seed0/original.train.json "seconds": the steps only, not
# the compilation or MPI's start-up). The one-process run gets N threads, each
# of the N ranks one thread, so both use the same cores. Prints one Markdown
# row per configuration. On a shared machine set OMPI_MCA_mpi_yield_when_idle=1:
# Open MPI's ranks otherwise spin while they wait in the all-reduce.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
exp=${1:-graphs/experiments/gaussian_fmnist_demo.lth}
shift $(($# > 0 ? 1 : 0))
ranks=("${@:-2}")
epochs=${BENCH_EPOCHS:-1}
work=$B/bench/mpi.$$
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
export LETHE_CACHE=${LETHE_CACHE:-$work/cache}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
command -v mpirun > /dev/null || { echo "mpirun is missing (Debian package openmpi-bin)" >&2; exit 1; }

# samples/s of a finished run folder: epochs x (n / batch) x batch / seconds
rate() {
    python3 - "$1/seed0/original.train.json" "$2" <<'PY'
import json, sys
seconds = json.load(open(sys.argv[1]))["seconds"]
print("%.1f" % (float(sys.argv[2]) / seconds), "%.2f" % seconds)
PY
}

# samples per epoch: the whole batches of the plan's training slice (drop_last)
per_epoch=$("$B/lethe" info "$exp" 2> /dev/null | python3 -c '
import json, re, sys
p = json.loads(re.search(r"^experiment: (.*)$", sys.stdin.read(), re.M).group(1))
n = p["data"]["spec"].get("kwargs", {}).get("n")
if n is None:
    sys.exit("the experiment does not name its training size: set BENCH_SAMPLES")
print(n // p["batch"] * p["batch"])') || [ -n "${BENCH_SAMPLES:-}" ] || exit 1
echo "| experiment | processes | threads each | epochs | samples/s | seconds |"
echo "|---|---|---|---|---|---|"
for n in "${ranks[@]}"; do
    "$B/lethe" train "$exp" --seed 0 --epochs "$epochs" --threads "$n" --quiet --out "$work/one$n" > /dev/null || exit 1
    mpirun --oversubscribe -np "$n" "$B/lethe" train "$exp" --seed 0 --epochs "$epochs" --threads 1 --quiet \
        --out "$work/mpi$n" > /dev/null || exit 1
    for run in one mpi; do
        read -r r s < <(rate "$work/$run$n" "${BENCH_SAMPLES:-$((per_epoch * epochs))}")
        printf '| %s | %s | %s | %s | %s | %s |\n' "$(basename "$exp" .lth)" "$([ $run = one ] && echo 1 || echo "$n (mpirun)")" \
            "$([ $run = one ] && echo "$n" || echo 1)" "$epochs" "$r" "$s"
    done
done
