#!/usr/bin/env bash
# End to end: the poison stage of an attack objective (Witches' Brew,
# tests/lth/e2e_witches_brew.lth: a small CNN on a synthetic 8 x 8 set), in
# seconds.
#   - the poisoned model (original) gives the target's adversarial class a
#     higher probability than the clean model (same data and recipe, no
#     perturbations), on every seed, and several times higher on average;
#   - the same seed gives bit-identical poisons (safetensors with their ids)
#     and models;
#   - a run killed at a poison-batch boundary and started again ends with the
#     same poisons as an uninterrupted run;
#   - `lethe poison` (the stage alone) writes the same poisons;
#   - every record carries attack_success (targeted: the target flipped, 1 or
#     0; added points: the test accuracy drop against the clean model, in
#     percentage points) and
#     `lethe report` draws its bar chart and column;
#   - Gradient Canceling (tests/lth/e2e_gradient_canceling.lth, a linear
#     classifier) adds its points with their ids, and they cost the victim
#     test accuracy on each of three seeds;
#   - bad plans are refused before any work: a budget larger than the class,
#     a target outside the test set, an objective whose `over` is no input.
# Prints PASS/FAIL lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_witches_brew.lth
. tests/support/e2e.sh
e2e_setup e2e_attacks

run() {   # dir, experiment, extra args...
    local dir=$1 file=$2; shift 2
    "$LETHE" run "$file" --out "$dir" --quiet --no-plots --methods retrain "$@" > "$dir.log" 2>&1
}

# 1. the attack's effect over three seeds: the poisoned model against the
# clean surrogate (the same data and recipe, without the perturbations)
if run "$work/a" "$exp" --seeds 3; then
    for s in 0 1 2; do
        for m in clean original; do
            "$LETHE" eval "$exp" --seed $s --out "$work/a" --model "$work/a/seed$s/$m.safetensors" --quiet
        done
    done > "$work/a.eval" 2>> "$work/a.log"
    python3 - "$work/a.eval" <<'PY'
import json, math, sys
p = [json.loads(l)["target_adv_prob"] for l in open(sys.argv[1])]
ratios = [p[i + 1] / p[i] for i in range(0, len(p), 2)]
geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if len(ratios) == 3 else 0
ok = len(ratios) == 3 and all(x > 1 for x in ratios) and geo > 2
print(("PASS" if ok else "FAIL") + f" e2e_attacks.witches_brew_effect (p(adv | target): poisoned / clean = "
      f"{', '.join(f'{x:.3g}' for x in ratios)}; geometric mean {geo:.3g})")
PY
else
    echo "FAIL e2e_attacks.witches_brew_effect: lethe run failed"; sed 's/^/    /' "$work/a.log" | tail -20
fi

# 1b. the records carry the attack's success (target flipped: 1 or 0) and
# `lethe report` draws it: the bar chart and the table's column, without the
# Gaussian columns no record fills
if "$LETHE" report "$work/a" > "$work/a.report" 2>&1; then
    python3 - "$work/a" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1] + "/results.jsonl")]
ok = len(recs) == 6 and all(r["attack_success"] == (1 if r["target"]["target_flipped"] else 0) and
                            r["attack_measure"].startswith("target classified") for r in recs)
print(("PASS" if ok else "FAIL") + " e2e_attacks.records_attack_success (" +
      ", ".join(f"{r['method']} seed {r['seed']}: {r['attack_success']:g}" for r in recs) + ")")
PY
    head -1 "$work/a/table.md" > "$work/a.head"
    if grep -q "| attack success |$" "$work/a.head" && ! grep -q "GUS\|TPR" "$work/a.head" &&
       { ! command -v gnuplot > /dev/null 2>&1 || [ -s "$work/a/plots/attack_success.png" ]; }; then
        echo "PASS e2e_attacks.report_attack_chart"
    else
        echo "FAIL e2e_attacks.report_attack_chart: $(cat "$work/a.head"; ls "$work/a/plots" 2>&1)"
    fi
else
    echo "FAIL e2e_attacks.report_attack_chart: lethe report failed"; sed 's/^/    /' "$work/a.report" | tail -10
fi

# 2. determinism: the same seed again
if run "$work/b" "$exp" --seeds 1 && cmp -s "$work/a/seed0/poison.safetensors" "$work/b/seed0/poison.safetensors" &&
   cmp -s "$work/a/seed0/original.safetensors" "$work/b/seed0/original.safetensors"; then
    echo "PASS e2e_attacks.bit_identical"
else
    echo "FAIL e2e_attacks.bit_identical: seed 0's poisons or poisoned model differ between two runs"
fi

# 3. killed after three poison batches, then resumed
(LETHE_KILL_AFTER_POISON_BATCHES=3 run "$work/c" "$exp" --seeds 1) 2> /dev/null
killed=$?
if [ "$killed" -ne 0 ] && [ ! -e "$work/c/seed0/poison.safetensors" ] && run "$work/c" "$exp" --seeds 1 &&
   cmp -s "$work/a/seed0/poison.safetensors" "$work/c/seed0/poison.safetensors"; then
    echo "PASS e2e_attacks.resume_after_kill (killed with status $killed, resumed to the same poisons)"
else
    echo "FAIL e2e_attacks.resume_after_kill: status $killed, then the resumed poisons differ or the run failed"
    sed 's/^/    /' "$work/c.log" | tail -10
fi

# 4. the poison stage alone
if "$LETHE" poison "$exp" --seed 0 --out "$work/d" --quiet > "$work/d.log" 2>&1 &&
   grep -q 'poison.safetensors' "$work/d.log" && cmp -s "$work/a/seed0/poison.safetensors" "$work/d/seed0/poison.safetensors"; then
    echo "PASS e2e_attacks.poison_stage"
else
    echo "FAIL e2e_attacks.poison_stage"; sed 's/^/    /' "$work/d.log" | tail -10
fi

# 5. Gradient Canceling with a GradPC surrogate: added points (mechanics, on
# seed 0) and their effect (the victim's test accuracy against the clean
# model's, seeds 0-2)
gc=tests/lth/e2e_gradient_canceling.lth
if run "$work/g" "$gc" --seeds 3 && run "$work/h" "$gc" --seeds 1 &&
   cmp -s "$work/g/seed0/poison.safetensors" "$work/h/seed0/poison.safetensors"; then
    python3 - "$work/g" <<'PY'
import json, struct, sys
d = sys.argv[1]
recs = [json.loads(l) for l in open(d + "/results.jsonl")]
by = {(r["method"], r["seed"]): r for r in recs}
raw = open(d + "/seed0/poison.safetensors", "rb").read()
head = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
o = by[("original", 0)]
k = o["attack"]["n_poison"]
# the success measure: the accuracy the added points cost against the clean model
drop_ok = all(abs(r["attack_success"] - 100 * (r["clean_accuracy"] - r["accuracy"])) < 1e-9 and
              r["attack_measure"].startswith("test accuracy drop") for r in recs)
ok = drop_ok and k == 40 and o["n_train"] == 440 and o["n_poison"] == 40 and head["delta"]["shape"] == [40, 1, 8, 8] and head["ids"]["shape"] == [40]
print(("PASS" if ok else "FAIL") + f" e2e_attacks.gradient_canceling_adds_points ({k} added to 400, n_train {o['n_train']}, "
      f"accuracy {o['accuracy']:.3f} against retrain's {by[('retrain', 0)]['accuracy']:.3f}, clean {o['clean_accuracy']:.3f})")
# the effect: every seed's victim loses accuracy to the added points (9-25
# points when written; retrain, on the clean set, loses none)
drops = [by[("original", s)]["attack_success"] for s in range(3)]
ok = all(x >= 2 for x in drops) and sum(drops) / 3 >= 5 and all(by[("retrain", s)]["attack_success"] == 0 for s in range(3))
print(("PASS" if ok else "FAIL") + " e2e_attacks.gradient_canceling_effect (test accuracy drop against the clean model, "
      f"seeds 0-2: {', '.join(f'{x:.1f}' for x in drops)} points)")
PY
else
    echo "FAIL e2e_attacks.gradient_canceling_adds_points: the runs failed or differ"; sed 's/^/    /' "$work/g.log" | tail -10
    echo "FAIL e2e_attacks.gradient_canceling_effect: the runs failed or differ"
fi

# 6. bad plans: clear errors before any work
bad() {   # name, sed expression, expected message (grep -E)
    local name=$1 expr=$2 want=$3
    sed "$expr" "$exp" > "$work/$name.lth"
    "$LETHE" run "$work/$name.lth" --out "$work/$name" --quiet --no-plots > "$work/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && grep -Eq "$want" "$work/$name.log" && [ ! -e "$work/$name/seed0/clean.safetensors" ]; then
        echo "PASS e2e_attacks.refuses_$name"
    else
        echo "FAIL e2e_attacks.refuses_$name: status $rc, expected /$want/ before any training"; sed 's/^/    /' "$work/$name.log" | tail -6
    fi
}
bad budget_over_class 's/budget = 10%/budget = 60%/' 'class [0-9]+ has [0-9]+ samples'
bad target_outside 's/batch = 10,/batch = 10, target = 100,/' 'target 100 is outside the test set'
bad zero_budget 's/budget = 10%/budget = 0/' 'poison budget is a share of the training set'
exit 0
