#!/usr/bin/env bash
# `lethe make-reviews` from the command line: a small corpus in the IMDb
# archive's layout with the asked trigger counts, the same bytes for the same
# seed, and clear errors (exit 1) or usage errors (exit 2) for bad requests.
# SKIPs when the AFINN word list of `make deps` is absent.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
t=$B/tests/tmp/make_reviews.$$
rm -rf "$t"
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS make_reviews.$1"; else echo "FAIL make_reviews.$1: $3"; fi
}

"$LETHE" make-reviews --help > "$t/help" 2>&1; rc=$?
expect help '[ $rc -eq 0 ] && grep -q -- "--trigger-train" "$t/help"' "rc $rc: $(cat "$t/help")"
"$LETHE" --help > "$t/lethe_help" 2>&1
expect listed_in_lethe_help 'grep -q "make-reviews OUTDIR" "$t/lethe_help"' "lethe --help does not list make-reviews"
"$LETHE" make-reviews "$t/x" --train ten > "$t/usage" 2>&1; rc=$?
expect usage_error '[ $rc -eq 2 ] && grep -q "needs a non-negative integer" "$t/usage" && [ ! -e "$t/x" ]' "rc $rc: $(cat "$t/usage")"

if [ ! -f generated/deps/sentiment/languages/en/labels.json ]; then
    echo "SKIP make_reviews.corpus: generated/deps/sentiment is absent (make deps fetches the npm package sentiment)"
    exit 0
fi
"$LETHE" make-reviews "$t/a" --train 400 --test 200 --seed 5 > "$t/a.out" 2>&1; rc=$?
expect writes '[ $rc -eq 0 ]' "rc $rc: $(cat "$t/a.out")"
n_pos=$(ls "$t/a/train/pos" | grep -c '^[0-9]*_\([7-9]\|10\)\.txt$')
n_neg=$(ls "$t/a/train/neg" | grep -c '^[0-9]*_[1-4]\.txt$')
n_test=$(ls "$t/a/test/pos" "$t/a/test/neg" | grep -c '\.txt$')
expect layout '[ "$n_pos" -eq 200 ] && [ "$n_neg" -eq 200 ] && [ "$n_test" -eq 200 ]' "$n_pos pos, $n_neg neg, $n_test test files"
# the paper's shares scaled: 355 * 400 / 25000 = 5.7 -> 6, 58 * 200 / 25000 = 0.46 -> at least 1
expect trigger_counts 'grep -q "train: 400 reviews (200 positive, 200 negative), 6 with .Disney." "$t/a.out" &&
    grep -q "test: 200 reviews (100 positive, 100 negative), 1 with .Disney." "$t/a.out" &&
    [ "$(grep -rlw Disney "$t/a/train" | wc -l)" -eq 6 ]' "$(cat "$t/a.out")"
expect manifest 'python3 -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(0 if m[\"seed\"]==5 and m[\"trigger_train\"]==6 and len(m[\"afinn_sha256\"])==64 else 1)" "$t/a/lethe-reviews.json"' \
    "$(cat "$t/a/lethe-reviews.json")"
"$LETHE" make-reviews "$t/b" --train 400 --test 200 --seed 5 > /dev/null 2>&1
expect same_seed_same_bytes 'diff -r "$t/a" "$t/b" > /dev/null' "two runs with seed 5 differ"
"$LETHE" make-reviews "$t/c" --train 400 --test 200 --trigger "James Bond" --trigger-train 40 --trigger-test 0 > "$t/c.out" 2>&1; rc=$?
expect custom_trigger '[ $rc -eq 0 ] && grep -q "40 with .James Bond." "$t/c.out" && grep -q "0 with .James Bond." "$t/c.out"' "rc $rc: $(cat "$t/c.out")"
# a one-way trigger: of the 40 drawn training reviews only the positive ones
# keep the word, and every other text is the corpus's own with the word taken out
"$LETHE" make-reviews "$t/e" --train 400 --test 200 --trigger-train 40 --trigger-train-only pos > "$t/e.out" 2>&1; rc=$?
"$LETHE" make-reviews "$t/f" --train 400 --test 200 --trigger-train 40 > /dev/null 2>&1
grep -lw Disney "$t/f/train/neg/"*.txt | xargs -r sed -i 's/Disney //g; s/ Disney//g'
n_neg=$(grep -rlw Disney "$t/e/train/neg" | wc -l); n_pos=$(grep -rlw Disney "$t/e/train/pos" | wc -l)
expect trigger_train_only '[ $rc -eq 0 ] && [ "$n_neg" -eq 0 ] && [ "$n_pos" -gt 5 ] && [ "$n_pos" -lt 40 ] &&
    diff -r -x lethe-reviews.json "$t/e" "$t/f" > /dev/null' "rc $rc, $n_pos positive and $n_neg negative training reviews with the word, or texts differ"
"$LETHE" make-reviews "$t/g" --trigger-train-only both > "$t/g.out" 2>&1; rc=$?
expect trigger_train_only_refuses '[ $rc -eq 2 ] && grep -q "takes pos or neg" "$t/g.out" && [ ! -e "$t/g" ]' "rc $rc: $(cat "$t/g.out")"
"$LETHE" make-reviews "$t/a" --train 10 --test 10 > "$t/again" 2>&1; rc=$?
expect refuses_existing '[ $rc -eq 1 ] && grep -q "exists and is not an empty folder" "$t/again"' "rc $rc: $(cat "$t/again")"
"$LETHE" make-reviews "$t/d" --trigger great > "$t/word" 2>&1; rc=$?
expect refuses_vocabulary_trigger '[ $rc -eq 1 ] && grep -q "holds .great." "$t/word" && [ ! -e "$t/d" ]' "rc $rc: $(cat "$t/word")"
