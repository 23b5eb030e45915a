#!/usr/bin/env bash
# tests/run.sh: run every test and end with one line "N passed, M failed".
# Each test prints PASS/FAIL/SKIP lines (tests/support/harness.h); a test
# program that crashes or exits non-zero without a FAIL line counts as one
# failure. Script tests are tests/*.sh other than this one.
set -u
B=${B:-build}
export B
cd "$(dirname "$0")/.." || exit 2
log=$B/tests/log
mkdir -p "$log"
passed=0 failed=0 skipped=0
per_test_timeout=${LETHE_TEST_TIMEOUT:-600}

run_one() {   # name, command...
    local name=$1; shift
    local out="$log/$name.out"
    local t0=$(date +%s.%N)
    timeout "$per_test_timeout" "$@" > "$out" 2>&1
    local rc=$?
    local t1=$(date +%s.%N)
    local p f s
    p=$(grep -c '^PASS ' "$out")
    f=$(grep -c '^FAIL ' "$out")
    s=$(grep -c '^SKIP ' "$out")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc (log: $out)" >> "$out"
        f=1
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    printf '%-28s %4d passed %3d failed %3d skipped  %6.1fs\n' "$name" "$p" "$f" "$s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
    grep -E '^(FAIL|SKIP) ' "$out" | sed 's/^/    /'
}

for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for s in tests/*.sh; do
    [ "$(basename "$s")" = run.sh ] && continue
    [ -f "$s" ] || continue
    run_one "$(basename "$s" .sh)" bash "$s"
done
[ "$skipped" -gt 0 ] && echo "($skipped skipped, each with its reason above)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
