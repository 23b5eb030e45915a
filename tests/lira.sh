#!/usr/bin/env bash
# The offline LiRA membership test in a run (runtime/run_lira.c), on the
# end-to-end test's MLP (tests/lth/e2e_lira.lth, 4 shadow models):
#   - every record carries it (TPR at FPR 0.01 and 0.001, AUC, ROC), the
#     shadow models are saved;
#   - it finds the poisoned model's members (the forget set, noisy as
#     trained) far more often than the retrained model's, which never saw
#     them: AUC well above 0.5 for the original, near 0.5 for retrain;
#   - `lethe report` on the run's records: LiRA columns (TPR at FPR 0.01 and
#     0.001) and the ROC plot roc_lira with one curve per model;
#   - a second run reads the shadows back and writes the same records;
#   - a bad shadow count is a compile-time error at its line and column.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_lira.lth
. tests/support/e2e.sh
e2e_setup lira
e2e_fmnist lira

if "$LETHE" run "$exp" --out "$work/a" --quiet --no-plots $fallback > "$work/a.log" 2>&1; then
    echo "PASS lira.run"
else
    echo "FAIL lira.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi

check() {   # name, python condition over the records (r[method] = the seed's record)
    python3 - "$work/a" "$2" "$1" <<'PY'
import json, sys
d, cond, name = sys.argv[1:4]
r = {}
for line in open(d + "/results.jsonl"):
    rec = json.loads(line)
    r[rec["method"]] = rec
L = lambda m: r[m]["lira"]
try:
    ok = eval(cond)
except Exception as e:
    print(f"FAIL {name}: {cond}: {e!r}")
    sys.exit(0)
summary = {m: {k: r[m]["lira"][k] for k in ("auc",)} | {"tpr01": r[m]["lira"]["fpr_0.01"]["tpr"]} for m in r if "lira" in r[m]}
print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {cond} is false; {summary}"))
PY
}
check lira.in_every_record 'all("lira" in r[m] and L(m)["shadows"] == 4 and len(L(m)["roc"]) == 41 for m in ("original", "retrain", "gd"))'
check lira.rates_in_range 'all(0 <= L(m)[k]["tpr"] <= 1 and L(m)[k]["fpr"] <= float(k[4:]) + 1e-9 for m in r for k in ("fpr_0.01", "fpr_0.001"))'
check lira.original_members_found 'L("original")["auc"] > 0.75 and L("original")["fpr_0.01"]["tpr"] > 0.1'
check lira.retrain_near_chance 'abs(L("retrain")["auc"] - 0.5) < 0.15 and L("retrain")["fpr_0.01"]["tpr"] < 0.1'
check lira.original_above_retrain 'L("original")["fpr_0.01"]["tpr"] > L("retrain")["fpr_0.01"]["tpr"] + 0.1'
if ls "$work"/a/seed0/shadow{0,1,2,3}.safetensors > /dev/null 2>&1; then
    echo "PASS lira.shadows_saved"
else
    echo "FAIL lira.shadows_saved: $(ls "$work/a/seed0")"
fi

# the report of the run's records: a LiRA column at both rates, the ROC
# plot with the original, retrain and the method (one curve each)
"$LETHE" report "$work/a" > "$work/report.log" 2>&1; rc=$?
head=$(head -1 "$work/a/table.md" 2>/dev/null)
if [ $rc -eq 0 ] && echo "$head" | grep -q "| LiRA TPR@1% | LiRA TPR@0.1% |" &&
   grep -q "^| original | - | 1 | .* | [0-9.]* ± 0.000 | [0-9.]* ± 0.000 |" "$work/a/table.md" &&
   head -1 "$work/a/table.csv" | grep -q ",lira_tpr01_mean,lira_tpr01_std,lira_tpr001_mean,lira_tpr001_std" &&
   ! echo "$head" | grep -q "zlib"; then
    echo "PASS lira.report_columns"
else
    echo "FAIL lira.report_columns: rc $rc: $head $(cat "$work/report.log")"
fi
if ! command -v gnuplot > /dev/null 2>&1; then
    echo "SKIP lira.report_roc: gnuplot is not installed"
elif [ -s "$work/a/plots/roc_lira.png" ] && [ -s "$work/a/plots/roc_lira.svg" ] &&
     [ "$(grep -A12 "set output 'roc_lira.png'" "$work/a/plots/plots.gp" | grep -c "'roc_lira.dat' index")" -eq 3 ] &&
     grep -q "4 shadow models" "$work/a/plots/roc_lira.svg" && [ ! -e "$work/a/plots/roc_text_loss.png" ]; then
    echo "PASS lira.report_roc"
else
    echo "FAIL lira.report_roc: $(ls "$work/a/plots" 2>&1) $(cat "$work/a/plots/gnuplot.log" 2>/dev/null)"
fi

# the shadows read back: a fresh output folder with them copied in gives the same records
mkdir -p "$work/b/seed0"
cp "$work"/a/seed0/shadow*.safetensors "$work/b/seed0/"
touch -d '2000-01-01' "$work"/b/seed0/shadow*.safetensors
"$LETHE" run "$exp" --out "$work/b" --quiet --no-plots $fallback > "$work/b.log" 2>&1
if cmp -s <(python3 -c 'import json,sys; [print(json.dumps(json.loads(l)["lira"], sort_keys=True)) for l in open(sys.argv[1])]' "$work/a/results.jsonl") \
          <(python3 -c 'import json,sys; [print(json.dumps(json.loads(l)["lira"], sort_keys=True)) for l in open(sys.argv[1])]' "$work/b/results.jsonl") &&
   [ "$(stat -c %Y "$work/b/seed0/shadow0.safetensors")" = "$(date -d '2000-01-01' +%s)" ]; then
    echo "PASS lira.shadows_read_back"
else
    echo "FAIL lira.shadows_read_back: the second run's LiRA results differ or it trained the shadows again"
fi

# a bad shadow count: file:line:col
sed 's/lira(shadows = 4)/lira(shadows = 1)/' "$exp" > "$work/bad.lth"
if ! $B/lethec --check -I graphs "$work/bad.lth" > "$work/bad.log" 2>&1 && grep -q "bad.lth:15:[0-9]*: .*shadows must be between 2 and 256" "$work/bad.log"; then
    echo "PASS lira.bad_shadow_count"
else
    echo "FAIL lira.bad_shadow_count: $(cat "$work/bad.log")"
fi
