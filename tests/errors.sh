#!/usr/bin/env bash
# tests/errors.sh: golden tests of lethec's error messages.
#
# For every tests/errors/NAME.lth, `$B/lethec --check tests/errors/NAME.lth`
# (run from the repository root, so paths in messages are stable) must fail
# with a status below 128 (no crash) and write exactly NAME.expected to
# stderr. Prints "PASS errors/NAME" or "FAIL errors/NAME: why" (with a diff).
#
#   tests/errors.sh            check every golden
#   tests/errors.sh --update   rewrite every .expected from lethec's output
#                              (review the diff before committing it)
set -u
cd "$(dirname "$0")/.." || exit 2
B=${B:-build}
lethec=$B/lethec
update=0
[ "${1:-}" = --update ] && update=1

if [ ! -x "$lethec" ]; then
    echo "SKIP errors: $lethec is not built"
    exit 0
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
failed=0
for lth in tests/errors/*.lth; do
    name=errors/$(basename "$lth" .lth)
    expected=${lth%.lth}.expected
    timeout 60 "$lethec" --check "$lth" > /dev/null 2> "$tmp"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "FAIL $name: lethec accepted the file"
        failed=1
        continue
    fi
    if [ "$rc" -ge 124 ]; then
        echo "FAIL $name: lethec crashed or timed out (status $rc)"
        sed 's/^/    /' "$tmp" | head -20
        failed=1
        continue
    fi
    if [ "$update" -eq 1 ]; then
        cp "$tmp" "$expected"
        echo "PASS $name (updated)"
        continue
    fi
    if [ ! -f "$expected" ]; then
        echo "FAIL $name: no $expected (tests/errors.sh --update writes it)"
        sed 's/^/    /' "$tmp"
        failed=1
    elif cmp -s "$tmp" "$expected"; then
        echo "PASS $name"
    else
        echo "FAIL $name: stderr differs from $expected"
        diff -u "$expected" "$tmp" | sed 's/^/    /' | head -40
        failed=1
    fi
done
exit "$failed"
