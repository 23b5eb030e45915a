#!/usr/bin/env bash
# `lethe report` on hand-written results.jsonl files (no training): the
# table, and the plots as a newcomer reads them:
#   - the attack-success bar chart is drawn when the records carry
#     attack_success (one bar per method at the largest budget) and is not
#     when they do not (a picture left by an earlier report is removed);
#   - a plot whose fields no record has (ROC, GUS) is skipped, not an error,
#     and so is a table column (no empty Gaussian columns for an attack);
#   - every method has its own style (colour and dash type on the ROC, colour
#     and point type in the scatters, colour on the bars), the original is
#     marked, names are printed literally (neggrad_plus, not a subscript);
#   - a missing gnuplot gives a note and the tables; bad lines are skipped.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
t=$B/tests/tmp/report.$$
rm -rf "$t"
mkdir -p "$t"
trap '[ -n "${KEEP:-}" ] || rm -rf "$t"' EXIT

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS report.$1"; else echo "FAIL report.$1: $3"; fi
}

# records(dir, kind): kind "attack" (accuracy + attack_success only) or
# "gaussian" (accuracy, GUS, TPR, ROC); 11 methods, 3 seeds, budgets 5% and 10%
records() {
    python3 - "$1" "$2" <<'PY'
import json, math, os, sys
out, kind = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
methods = ["original", "retrain", "gd", "ngd", "ga", "neggrad_plus", "cfk", "euk", "scrub", "ssd", "my_rule"]
with open(out + "/results.jsonl", "w") as f:
    for mi, m in enumerate(methods):
        budgets = [None] if m in ("original", "retrain") else [0.05, 0.1]
        for b in budgets:
            for seed in range(3):
                rec = {"experiment": "handwritten_" + kind, "method": m, "seed": seed,
                       "accuracy": 0.8 - 0.01 * mi + 0.002 * seed}
                if b is not None:
                    rec["budget"] = b
                if kind == "attack":
                    # the original flipped on every seed, retrain on none, methods in between
                    rec["attack_success"] = 1.0 if m == "original" else 0.0 if m == "retrain" else [1, 0, 1][seed] * (mi % 2)
                    rec["attack_measure"] = "target classified as the adversarial class"
                else:
                    s = 0 if m == "retrain" else 0.3 + 0.01 * mi
                    rec["gus"] = -1.4 * (s > 0) + 0.01 * seed
                    rec["tpr_at_fpr"] = {"negative_empirical": {"tpr": s, "fpr": 0.01}, "two_sided_empirical": {"tpr": s, "fpr": 0.01}}
                    fprs = [10 ** (-3 + 3 * k / 40) for k in range(41)]
                    rec["roc"] = [[x, min(1.0, x + s * (1 - x))] for x in fprs]
                f.write(json.dumps(rec) + "\n")
    if kind == "attack":
        f.write("{not json\n")
PY
}

if ! command -v gnuplot > /dev/null 2>&1; then
    echo "SKIP report.plots: gnuplot is not installed (make deps installs gnuplot-nox)"
    have_gnuplot=no
else
    have_gnuplot=yes
fi

# 1. an attack experiment's records
records "$t/a" attack
"$LETHE" report "$t/a" > "$t/a.out" 2> "$t/a.err"; rc=$?
expect attack_runs '[ $rc -eq 0 ]' "rc $rc: $(cat "$t/a.err")"
expect attack_table_column 'grep -q "^| method .* | attack success |$" "$t/a/table.md" && grep -q "^| original | - | 3 | .* | 1.000 ± 0.000 |$" "$t/a/table.md" && grep -q "^| ngd | 10% | 3 | .* | 0.667 ± 0.577 |$" "$t/a/table.md"' \
    "$(cat "$t/a/table.md")"
expect attack_table_no_empty_columns 'head -1 "$t/a/table.md" | grep -q "^| method | budget | seeds | test acc % | attack success |$" && ! grep -q "TPR at FPR" "$t/a.out"' \
    "$(head -1 "$t/a/table.md")"
expect attack_csv_columns 'head -1 "$t/a/table.csv" | grep -q ",attack_success_mean,attack_success_std$"' "$(head -1 "$t/a/table.csv")"
expect bad_line_skipped 'grep -q "1 unreadable lines" "$t/a.err"' "$(cat "$t/a.err")"
if [ $have_gnuplot = yes ]; then
    p=$t/a/plots
    expect attack_chart_drawn '[ -s "$p/attack_success.png" ] && [ -s "$p/attack_success.svg" ]' "$(ls "$p"; cat "$p/gnuplot.log" 2>/dev/null)"
    expect gaussian_plots_skipped_without_fields '[ ! -e "$p/roc.png" ] && [ ! -e "$p/acc_vs_gus.png" ] && [ ! -e "$p/acc_vs_tpr.png" ]' "$(ls "$p")"
    # one bar per method at the largest budget (original, retrain, 9 methods), each its own colour
    bars=$(grep -c "'attack.dat' index [0-9]* using 1:2 with boxes" "$p/plots.gp")
    colours=$(grep -o "with boxes .* lc rgb '#[0-9a-f]*' notitle" "$p/plots.gp" | sed "s/.*lc rgb '\(#[0-9a-f]*\)'.*/\1/" | sort -u | wc -l)
    expect attack_one_bar_per_method '[ "$bars" -eq 22 ] && [ "$colours" -eq 11 ]' "$bars bar elements (2 terminals x 11 expected), $colours colours"
    expect names_literal 'grep -q ">neggrad_plus<" "$p/attack_success.svg" && grep -q ">my_rule<" "$p/attack_success.svg" && ! grep -q "<tspan" "$p/attack_success.svg"' \
        "neggrad_plus or my_rule not printed as written in the SVG"
    expect every_terminal_noenhanced '[ "$(grep -c "^set terminal" "$p/plots.gp")" -eq "$(grep -c "^set terminal .* noenhanced$" "$p/plots.gp")" ]' \
        "$(grep "^set terminal" "$p/plots.gp")"
    expect measure_is_the_axis 'grep -q "target classified as the adversarial class" "$p/attack_success.svg"' "the attack_measure field is not the axis label"
    expect no_scratch_left '[ -z "$(ls -A "$t/a" | grep "^\.plots")" ]' "$(ls -A "$t/a")"
    # a share (every value in [0, 1]) keeps 0 and 1 on the axis; a measure
    # that is no share (an accuracy drop in points, some negative) gets the
    # range its bars need, below zero included
    hi=$(sed -n 's/^set yrange \[0:\([0-9.e]*\)\]$/\1/p' "$p/plots.gp" | head -1)
    expect attack_share_axis 'awk -v hi="$hi" "BEGIN { exit !(hi >= 1.1) }"' "$(grep "^set yrange" "$p/plots.gp")"
    # ngd's 0.667 +/- 0.577 is a share: its error bar is cut at 1 (columns: x, mean, bar low, bar high)
    expect attack_share_bars_in_range 'awk "NF == 4 && (\$3 < 0 || \$4 > 1) { bad = 1 } NF == 4 { n++ } END { exit bad || !n }" "$p/attack.dat"' \
        "$(cat "$p/attack.dat" 2>/dev/null)"
    mkdir -p "$t/d"
    python3 - "$t/a/results.jsonl" "$t/d/results.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for l in open(sys.argv[1]):
        if l.startswith("{\""):
            r = json.loads(l)
            r["attack_success"] = [6.0, -3.0, 1.5][r["seed"]]
            r["attack_measure"] = "test accuracy drop against the clean model (% points)"
            f.write(json.dumps(r) + "\n")
PY
    "$LETHE" report "$t/d" > "$t/d.out" 2>&1
    lo=$(sed -n 's/^set yrange \[\([-0-9.e]*\):\([-0-9.e]*\)\]$/\1/p' "$t/d/plots/plots.gp" | head -1)
    hi=$(sed -n 's/^set yrange \[\([-0-9.e]*\):\([-0-9.e]*\)\]$/\2/p' "$t/d/plots/plots.gp" | head -1)
    expect attack_points_axis '[ -s "$t/d/plots/attack_success.png" ] && awk -v lo="$lo" -v hi="$hi" "BEGIN { exit !(lo < -3 && hi > 6) }"' \
        "yrange [$lo:$hi], expected below the lowest bar's error bar and above the highest's"
fi

# 2. the same folder without the attack fields: no column, no bar chart,
# and the earlier report's bar chart is gone
python3 - "$t/a/results.jsonl" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{\"")]
recs = [json.loads(l) for l in lines]
for r in recs:
    r.pop("attack_success"); r.pop("attack_measure")
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in recs))
PY
"$LETHE" report "$t/a" > "$t/a2.out" 2>&1; rc=$?
expect without_attack_runs '[ $rc -eq 0 ]' "rc $rc: $(cat "$t/a2.out")"
expect without_attack_no_column '! grep -q "attack" "$t/a/table.md" "$t/a/table.csv"' "$(head -1 "$t/a/table.md")"
if [ $have_gnuplot = yes ]; then
    expect without_attack_no_chart '[ ! -e "$t/a/plots/attack_success.png" ] && [ ! -e "$t/a/plots/attack_success.svg" ]' "$(ls "$t/a/plots")"
fi

# 3. a Gaussian experiment's records: ROC and both scatters
records "$t/g" gaussian
"$LETHE" report "$t/g" > "$t/g.out" 2>&1; rc=$?
expect gaussian_runs '[ $rc -eq 0 ]' "rc $rc: $(cat "$t/g.out")"
if [ $have_gnuplot = yes ]; then
    p=$t/g/plots
    expect gaussian_plots_drawn 'for f in roc acc_vs_tpr acc_vs_gus; do [ -s "$p/$f.png" ] && [ -s "$p/$f.svg" ] || exit 1; done; [ ! -e "$p/attack_success.png" ]' \
        "$(ls "$p"; cat "$p/gnuplot.log")"
    # the ROC: one curve per method, no two with the same colour and dash type
    roc=$(grep -m1 -A20 "set output 'roc.png'" "$p/plots.gp" | grep -o "'roc.dat' index [0-9]* with lines lw [0-9.]* dt [0-9]* lc rgb '#[0-9a-f]*'" | awk '{print $9, $12}')
    expect roc_styles_distinct '[ "$(echo "$roc" | wc -l)" -eq 11 ] && [ "$(echo "$roc" | sort -u | wc -l)" -eq 11 ]' "$roc"
    # the scatters: one point style per method, the original an open diamond with guides through it
    pts=$(grep -m1 -A20 "set output 'acc_vs_tpr.png'" "$p/plots.gp" | grep -o "with xyerrorbars pt [0-9]* ps [0-9.]* lw [0-9.]* lc rgb '#[0-9a-f]*' title" | awk '{print $4, $11}')
    expect scatter_styles_distinct '[ "$(echo "$pts" | wc -l)" -eq 10 ] && [ "$(echo "$pts" | sort -u | wc -l)" -eq 10 ]' "$pts"
    expect original_marked 'grep -q "keyentry with points pt 12 .* title .original (poisoned)." "$p/plots.gp" && [ "$(grep -c "^set arrow" "$p/plots.gp")" -eq 8 ]' \
        "no key entry or guides for the original"
    expect svg_names_literal 'grep -q ">neggrad_plus<" "$p/roc.svg" && grep -q ">neggrad_plus<" "$p/acc_vs_gus.svg"' "neggrad_plus not printed as written"
fi

# 4. no gnuplot on the PATH: a note, the tables, exit 0
mkdir -p "$t/nopath"
PATH=$t/nopath "$(realpath "$LETHE")" report "$t/g" > "$t/n.out" 2>&1; rc=$?
expect without_gnuplot_note '[ $rc -eq 0 ] && grep -q "gnuplot is not installed" "$t/n.out" && [ -s "$t/g/table.md" ]' "rc $rc: $(cat "$t/n.out")"

# 5. an empty folder: a clear error
mkdir -p "$t/empty"
"$LETHE" report "$t/empty" > "$t/e.out" 2>&1; rc=$?
expect empty_folder_error '[ $rc -eq 1 ] && grep -q "holds no records" "$t/e.out"' "rc $rc: $(cat "$t/e.out")"
