#!/usr/bin/env bash
# End to end: Gaussian poisoning on a slice of Fashion-MNIST with a compiled
# MLP (tests/lth/e2e_gaussian.lth), two seeds, every method of the runtime.
#   - the poisoned model that was not unlearned is detected: TPR at FPR 0.01
#     well above 0.01 and clearly above the retrained model's;
#   - the retrained model's scores look like N(0, 1): mean within 3 standard
#     errors of 0;
#   - the same seed gives bit-identical models and identical records;
#   - a run killed mid-way (at a record, between a model and its record, at a
#     random moment) and started again redoes nothing, loses nothing and
#     leaves no partial file, and ends with the same results;
#   - the stages run one at a time (poison, train, unlearn, eval) give what
#     the whole run gave.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_gaussian.lth
. tests/support/e2e.sh
e2e_setup e2e
e2e_fmnist e2e

run() {   # dir, extra args...
    local dir=$1; shift
    "$LETHE" run "$exp" --out "$dir" --quiet --no-plots $fallback "$@" > "$dir.log" 2>&1
}

check() {   # name, python condition over the records of a run folder (r[method] = list over seeds)
    local name=$1 dir=$2 cond=$3
    python3 - "$dir" "$cond" "$name" <<'PY'
import json, sys
dir, cond, name = sys.argv[1:4]
r = {}
for line in open(dir + "/results.jsonl"):
    rec = json.loads(line)
    r.setdefault(rec["method"], []).append(rec)
tpr = lambda m: [x["tpr_at_fpr"]["two_sided_empirical"]["tpr"] for x in r[m]]
gus = lambda m: [x["gus"] for x in r[m]]
se = lambda m: [x["gus_se"] for x in r[m]]
try:
    ok = eval(cond)
except Exception as e:
    print(f"FAIL {name}: {cond}: {e!r}")
    sys.exit(0)
summary = {m: dict(tpr=[round(t, 3) for t in tpr(m)], gus=[round(g, 3) for g in gus(m)]) for m in r}
print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {cond} is false; {summary}"))
PY
}

# 1. a full run
if run "$work/a"; then
    echo "PASS e2e.run"
else
    echo "FAIL e2e.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi
check e2e.records "$work/a" 'all(len(r[m]) == 2 for m in ["original", "retrain", "gd", "ngd", "ga", "neggrad_plus", "cfk", "euk", "scrub", "ssd"])'
check e2e.original_detected "$work/a" 'min(tpr("original")) > 0.1'
check e2e.original_above_retrain "$work/a" 'min(tpr("original")) > max(tpr("retrain")) + 0.08'
check e2e.retrain_null "$work/a" 'all(abs(g) < 3 * s for g, s in zip(gus("retrain"), se("retrain")))'
check e2e.original_score_negative "$work/a" 'all(g < -3 * s for g, s in zip(gus("original"), se("original")))'
check e2e.budget_respected "$work/a" 'all(abs(x["budget_used"] - 0.1) < 0.01 for m in ["gd", "ngd", "ga", "neggrad_plus", "cfk", "euk", "scrub"] for x in r[m])'
"$LETHE" report "$work/a" > "$work/report.log" 2>&1 && grep -q "^| original" "$work/report.log" &&
    ls "$work/a/plots/roc.png" "$work/a/plots/acc_vs_tpr.svg" "$work/a/plots/acc_vs_gus.png" > /dev/null 2>&1
if [ $? -eq 0 ]; then echo "PASS e2e.report"; else echo "FAIL e2e.report: no table or plots"; sed 's/^/    /' "$work/report.log"; fi

# 2. determinism: the same seeds again, bit for bit
same_records() {   # dir1 dir2: the records agree but for timings and paths
    python3 tests/support/same_records.py equal "$1" "$2"
}
run "$work/b"
models_same=yes
for f in "$work"/a/seed*/*.safetensors; do
    cmp -s "$f" "$work/b/${f#$work/a/}" || { models_same="no: ${f#$work/a/}"; break; }
done
verdict=$(same_records "$work/a" "$work/b")
[ "$models_same" = yes ] && [ "$verdict" = ok ] && echo "PASS e2e.deterministic" ||
    echo "FAIL e2e.deterministic: models identical: $models_same; records: $verdict"

# 3. killed and started again: at a precise point (after the 3rd record) ...
LETHE_KILL_AFTER_RECORDS=3 run "$work/c" 2>/dev/null
status=$?
n_before=$(ls "$work/c/records" | grep -c '\.json$')
snapshot=$(cd "$work/c" && find records seed* -type f | xargs md5sum | sort)
run "$work/c"
after=$(cd "$work/c" && find records seed* -type f | xargs md5sum | sort)
kept=$(comm -23 <(echo "$snapshot") <(echo "$after") | wc -l)
partial=$(find "$work/c" -name '.*tmp*' | wc -l)
verdict=$(same_records "$work/a" "$work/c")
if [ $status -ge 128 ] && [ "$n_before" -eq 3 ] && [ "$kept" -eq 0 ] && [ "$partial" -eq 0 ] && [ "$verdict" = ok ]; then
    echo "PASS e2e.resume_after_kill"
else
    echo "FAIL e2e.resume_after_kill: exit $status, $n_before records at the kill, $kept files changed by the rerun, $partial temp files, records: $verdict"
fi

# ... between a stage's model and its record (the model saved, the record
# not yet written): the rerun evaluates the saved models and writes the same
# records, final training loss included
cp -r "$work/a" "$work/e"
rm -f "$work"/e/records/original_*_seed0.json "$work"/e/records/retrain_*_seed0.json "$work"/e/records/gd_*_seed1.json
run "$work/e"
verdict=$(same_records "$work/a" "$work/e")
[ "$verdict" = ok ] && echo "PASS e2e.resume_between_model_and_record" ||
    echo "FAIL e2e.resume_between_model_and_record: records: $verdict"

# ... and at a random moment (SIGKILL from outside while a stage is running)
"$LETHE" run "$exp" --out "$work/d" --quiet --no-plots $fallback > "$work/d.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    [ "$(ls "$work/d/records" 2>/dev/null | grep -c '\.json$')" -ge 1 ] && break
    sleep 0.05
done
sleep 0.3
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; true
ok=yes
for f in "$work"/d/records/*.json; do python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$f" 2>/dev/null || ok="no: $f"; done
run "$work/d" && [ "$(same_records "$work/a" "$work/d")" = ok ] && [ "$ok" = yes ] &&
    echo "PASS e2e.resume_after_random_kill" || echo "FAIL e2e.resume_after_random_kill: records valid: $ok; $(same_records "$work/a" "$work/d")"

# 4. the stages one at a time (lethe poison / train / unlearn / eval) give
# what `lethe run` gave for the same seed
stage() {   # command, extra args...
    local cmd=$1; shift
    "$LETHE" "$cmd" "$exp" --out "$work/s" --seed 0 --quiet $fallback "$@"
}
stage poison > "$work/s_poison.log" 2>&1 && cmp -s "$work/a/seed0/poison.json" "$work/s/seed0/poison.json" &&
    echo "PASS e2e.stage_poison" || echo "FAIL e2e.stage_poison: $(cat "$work/s_poison.log")"
stage train > "$work/s_train.log" 2>&1 && cmp -s "$work/a/seed0/original.safetensors" "$work/s/seed0/original.safetensors" &&
    echo "PASS e2e.stage_train" || echo "FAIL e2e.stage_train: not the model of lethe run: $(cat "$work/s_train.log")"
stage unlearn --method gd --budget 10% > "$work/s_unlearn.log" 2>&1 &&
    cmp -s "$work/a/seed0/gd_b10.safetensors" "$work/s/seed0/gd_b10.safetensors" &&
    python3 - "$work/a/records/gd_b10_seed0.json" "$work/s/records/gd_b10_seed0.json" <<'PY' && echo "PASS e2e.stage_unlearn" || echo "FAIL e2e.stage_unlearn: $(cat "$work/s_unlearn.log")"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
keys = ["accuracy", "gus", "tpr_at_fpr", "budget_used", "param_shift", "steps"]
bad = [k for k in keys if a.get(k) != b.get(k)]
print("differ:", bad) if bad else None
sys.exit(1 if bad else 0)
PY
before=$(stat -c %Y.%s "$work/s/seed0/gd_b10.safetensors" "$work/s/records/gd_b10_seed0.json" 2>&1)
stage unlearn --method gd --budget 10% > "$work/s_again.log" 2>&1 && grep -q "exists: nothing to do" "$work/s_again.log" &&
    [ "$before" = "$(stat -c %Y.%s "$work/s/seed0/gd_b10.safetensors" "$work/s/records/gd_b10_seed0.json" 2>&1)" ] &&
    echo "PASS e2e.stage_unlearn_done_is_skipped" || echo "FAIL e2e.stage_unlearn_done_is_skipped: $(cat "$work/s_again.log")"
stage eval --model "$work/s/seed0/gd_b10.safetensors" > "$work/s_eval.log" 2> "$work/s_eval.err" &&
    python3 - "$work/a/records/gd_b10_seed0.json" "$work/s_eval.log" <<'PY' && echo "PASS e2e.stage_eval" || echo "FAIL e2e.stage_eval: $(cat "$work/s_eval.log" "$work/s_eval.err")"
import json, sys
rec, out = json.load(open(sys.argv[1])), json.loads(open(sys.argv[2]).read())
sys.exit(0 if abs(rec["accuracy"] - out["accuracy"]) < 1e-6 and abs(rec["gus"] - out["gus"]) < 1e-6 else 1)
PY
stage unlearn > "$work/s_bad.log" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "needs --method" "$work/s_bad.log" && echo "PASS e2e.stage_unlearn_needs_method" ||
    echo "FAIL e2e.stage_unlearn_needs_method: rc $rc: $(cat "$work/s_bad.log")"
