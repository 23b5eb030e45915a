# tests/support/e2e.sh: what the end-to-end scripts start with. Source it
# from the repository root, after `set -u` and the `cd` there:
#     . tests/support/e2e.sh
#     e2e_setup NAME     a fresh folder $work ($B/tests/tmp/NAME.PID), removed
#                        at exit unless KEEP=1, with $LETHE_CACHE inside it
#     e2e_fmnist NAME    $fallback: empty, or --synthetic-fallback with a SKIP
#                        line when the Debian package dataset-fashion-mnist
#                        is missing (the test then runs on a synthetic set of
#                        the same shape)
B=${B:-build}
LETHE=${LETHE:-$B/lethe}   # a script that needs an absolute path sets it first

e2e_setup() {
    work=$B/tests/tmp/$1.$$
    rm -rf "$work"
    mkdir -p "$work"
    export LETHE_CACHE=$work/cache
    trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
}

e2e_fmnist() {
    fallback=""
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        echo "SKIP $1.fashion_mnist: the Debian package dataset-fashion-mnist is missing; the test runs on a synthetic set of the same shape"
        fallback=--synthetic-fallback
    fi
}
