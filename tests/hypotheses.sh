#!/usr/bin/env bash
# lethe hypotheses (runtime/hypotheses.c) end to end on the tiny settings of
# tests/lth/hypotheses_small.lth (2 settings, 64 clean rows, 8 poisons):
#   - one JSON record per setting, poison-set size and seed, whose fields are
#     numbers, with H1's ordering (the poisons' shift above the random one);
#   - the table (hypotheses.md) and, with gnuplot, the plots h1_shift and
#     h2_cosine; `lethe report` on the folder draws them again;
#   - the same run twice writes the same records;
#   - a file with no setting, a bad --sizes and a size above the export's
#     poisons are refused with a message;
#   - on a trained network's features (tests/lth/hypotheses_features_small.lth:
#     a tiny network, one epoch on 256 synthetic images): the checkpoint and
#     the records (their source the network), H1's ordering, the checkpoint
#     read back by a second run (no training) and by --features-from into
#     another folder (the same numbers); a missing, a broken and another
#     model's checkpoint, and --features-from for a file without a network,
#     refused with a message.
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

# ---- a trained network's features ----
feat=tests/lth/hypotheses_features_small.lth
$LETHE hypotheses $feat --out "$t/f" "${args[@]}" > "$t/f.out" 2> "$t/f.err"; rc=$?
expect features_run "[ $rc -eq 0 ] && [ -s '$t/f/seed0/original.safetensors' ] && grep -q 'train seed 0' '$t/f.err'" \
    "exit $rc: $(tail -3 "$t/f.err")"
check=$(python3 - "$t/f/hypotheses.jsonl" <<'PY' 2>&1
import json, sys
bad, n = [], 0
for line in open(sys.argv[1]):
    r, n = json.loads(line), n + 1
    src = r.get("source")
    if not isinstance(src, dict) or src.get("network") != "hypotheses_features_small" or \
            not src.get("checkpoint", "").endswith("seed0/original.safetensors") or \
            not 0.5 < src.get("test_accuracy", 0) <= 1:
        bad.append(f"source {src}")
    if r["features"] != 8 or r["n_clean"] != 64:
        bad.append(f"{r['features']} features, {r['n_clean']} rows")
    # H1 by a wide margin for logistic regression (30 times here), at all for linear
    if not r["shift_poison"] > (2 if r["setting"] == "logi" else 1) * r["shift_random"]:
        bad.append(f"{r['setting']} n={r['n_poison']} seed={r['seed']}: shift {r['shift_poison']} vs {r['shift_random']}")
print("ok" if not bad and n == 8 else f"{n} records; " + "; ".join(bad))
PY
)
expect features_records_h1 "[ \"$check\" = ok ]" "$check"
$LETHE hypotheses $feat --out "$t/f" "${args[@]}" --quiet --no-plots > /dev/null 2> "$t/f2.err"; rc=$?
expect features_reuse "[ $rc -eq 0 ] && ! grep -q 'train seed' '$t/f2.err'" "exit $rc, trained again: $(tail -2 "$t/f2.err")"
$LETHE hypotheses $feat --out "$t/g" "${args[@]}" --quiet --no-plots --features-from "$t/f/seed0/original.safetensors" \
    > /dev/null 2> "$t/g.err"; rc=$?
same=$(python3 - "$t/f/hypotheses.jsonl" "$t/g/hypotheses.jsonl" <<'PY' 2>&1
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
for r in a + b:
    r.pop("source", None)
print("ok" if a == b and a else f"{len(a)} and {len(b)} records differ")
PY
)
expect features_from "[ $rc -eq 0 ] && [ ! -e '$t/g/seed0/original.safetensors' ] && [ \"$same\" = ok ]" "exit $rc: $same $(tail -2 "$t/g.err")"
# the feature stage opens a run (OUT/records, OUT/seed0) but leaves no empty folder behind
expect features_no_empty_dirs "[ ! -e '$t/g/records' ] && [ ! -e '$t/g/seed0' ] && [ ! -e '$t/f/records' ]" "$(ls "$t/g" "$t/f")"

$LETHE hypotheses $feat --out "$t/h" --features-from "$t/nothing.safetensors" --quiet > "$t/h.out" 2>&1; rc=$?
expect features_from_missing "[ $rc -ne 0 ] && grep -q \"network's checkpoint\" '$t/h.out'" "exit $rc: $(tail -2 "$t/h.out")"
printf 'not a checkpoint' > "$t/broken.safetensors"
$LETHE hypotheses $feat --out "$t/h" --features-from "$t/broken.safetensors" --quiet > "$t/h.out" 2>&1; rc=$?
expect features_from_broken "[ $rc -ne 0 ] && grep -q \"network's checkpoint\" '$t/h.out'" "exit $rc: $(tail -2 "$t/h.out")"
python3 - "$t/other.safetensors" <<'PY'
import json, struct, sys
head = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + struct.pack("<2f", 1, 2))
PY
$LETHE hypotheses $feat --out "$t/h" --features-from "$t/other.safetensors" --quiet > "$t/h.out" 2>&1; rc=$?
expect features_from_other_model "[ $rc -ne 0 ] && grep -q 'is the checkpoint from another model' '$t/h.out'" \
    "exit $rc: $(tail -2 "$t/h.out")"
$LETHE hypotheses $small --out "$t/h" --features-from "$t/f/seed0/original.safetensors" > "$t/h.out" 2>&1; rc=$?
expect features_from_no_network "[ $rc -ne 0 ] && grep -q 'no experiment names the network' '$t/h.out'" \
    "exit $rc: $(tail -2 "$t/h.out")"
