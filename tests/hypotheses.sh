#!/usr/bin/env bash
# lethe hypotheses (runtime/hypotheses.c) end to end on the tiny settings of
# tests/lth/hypotheses_small.lth (2 settings, 64 clean rows, 8 poisons):
#   - one JSON record per setting, poison-set size and seed, whose fields are
#     numbers, with H1's ordering (the poisons' shift above the random one);
#   - the table (hypotheses.md) and, with gnuplot, the plots h1_shift and
#     h2_cosine; `lethe report` on the folder draws them again;
#   - the same run twice writes the same records;
#   - a file with no setting, a bad --sizes and a size above the export's
#     poisons are refused with a message.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
t=$B/tests/tmp/hypotheses.$$
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT
export LETHE_CACHE=$t/cache
small=tests/lth/hypotheses_small.lth

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS hypotheses.$1"; else echo "FAIL hypotheses.$1: $3"; fi
}

args=(--seeds 2 --sizes 4,8 --cancel-steps 100 --target-eps 3 -t 1)
$LETHE hypotheses $small --out "$t/a" "${args[@]}" > "$t/a.out" 2>&1; rc=$?
expect run "[ $rc -eq 0 ]" "exit $rc: $(tail -3 "$t/a.out")"
lines=$(wc -l < "$t/a/hypotheses.jsonl" 2>/dev/null || echo 0)
expect records "[ $lines -eq 8 ]" "$lines records, expected 2 settings x 2 sizes x 2 seeds"
check=$(python3 - "$t/a/hypotheses.jsonl" <<'PY' 2>&1
import json, sys
bad = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    for k in ("shift_poison", "shift_random", "cos_poison", "cos_random", "shift_random_equal", "cancel_loss"):
        if not isinstance(r.get(k), (int, float)):
            bad.append(f"{r.get('setting')} {k}={r.get(k)}")
    if not r["shift_poison"] > r["shift_random"]:
        bad.append(f"{r['setting']} n={r['n_poison']} seed={r['seed']}: shift {r['shift_poison']} <= {r['shift_random']}")
print("ok" if not bad else "; ".join(bad))
PY
)
expect fields_and_h1 "[ \"$check\" = ok ]" "$check"
expect table "grep -q '| logi | 8 | 2 |' '$t/a/hypotheses.md' && grep -q '| lin | 4 | 2 |' '$t/a/hypotheses.md'" \
    "$(cat "$t/a/hypotheses.md" 2>/dev/null | head -5)"
if command -v gnuplot > /dev/null; then
    expect plots "[ -s '$t/a/plots/h1_shift.png' ] && [ -s '$t/a/plots/h2_cosine.svg' ]" "$(ls "$t/a/plots" 2>&1)"
    rm -f "$t/a/plots/h1_shift.png"
    $LETHE report "$t/a" > "$t/report.out" 2>&1; rc=$?
    expect report "[ $rc -eq 0 ] && [ -s '$t/a/plots/h1_shift.png' ]" "exit $rc: $(tail -2 "$t/report.out")"
else
    echo "SKIP hypotheses.plots: no gnuplot"
fi

$LETHE hypotheses $small --out "$t/b" "${args[@]}" --quiet --no-plots > /dev/null 2>&1
expect deterministic "cmp -s '$t/a/hypotheses.jsonl' '$t/b/hypotheses.jsonl'" "two runs wrote different records"

$LETHE hypotheses graphs/experiments/hypotheses_models.lth --out "$t/c" -t 1 > "$t/c.out" 2>&1; rc=$?
expect no_setting "[ $rc -ne 0 ] && grep -q 'exports no setting' '$t/c.out'" "exit $rc: $(tail -2 "$t/c.out")"
$LETHE hypotheses $small --out "$t/c" --sizes 4,x > "$t/c.out" 2>&1; rc=$?
expect bad_sizes "[ $rc -eq 2 ] && grep -q \"bad value '4,x' for --sizes\" '$t/c.out'" "exit $rc: $(tail -2 "$t/c.out")"
$LETHE hypotheses $small --out "$t/c" --sizes 9 --seeds 1 -t 1 > "$t/c.out" 2>&1; rc=$?
expect size_too_big "[ $rc -ne 0 ] && grep -q 'poison set of 9' '$t/c.out'" "exit $rc: $(tail -2 "$t/c.out")"
