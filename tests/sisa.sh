#!/usr/bin/env bash
# End to end: SISA exact unlearning (runtime/sisa.h) as a method of an
# experiment (tests/lth/e2e_sisa.lth: an MLP on a slice of Fashion-MNIST that
# memorises its Gaussian poisons; 5 shards of 4 slices).
#   - the run writes a checkpoint per shard and slice, the ensemble before
#     unlearning, and a sisa record per budget that says it went over budget
#     (its retraining's steps, as unlearned.json counts them);
#   - the poisoned ensemble (before unlearning) is detected by the Gaussian
#     test, the unlearned one is not, like the retrained model;
#   - an ensemble of copies of one model evaluates as that model (the
#     aggregation's plumbing: logits, loss and input gradient);
#   - a run whose retraining was stopped part way ends with the same records.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_sisa.lth
. tests/support/e2e.sh
e2e_setup sisa
e2e_fmnist sisa

if "$LETHE" run "$exp" --out "$work/a" --quiet --no-plots $fallback > "$work/a.log" 2>&1; then
    echo "PASS sisa.run"
else
    echo "FAIL sisa.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi
ck=$work/a/seed0/sisa/s5_r4
n=$(ls "$ck"/shard*_slice*.safetensors 2> /dev/null | wc -l)
if [ "$n" -eq 20 ] && [ -f "$ck/ensemble.safetensors" ] && [ -f "$ck/unlearned.json" ]; then
    echo "PASS sisa.checkpoints"
else
    echo "FAIL sisa.checkpoints: $n of 20 checkpoints in $ck, or no ensemble.safetensors / unlearned.json"
fi

evaluate() {   # model file -> its JSON line
    "$LETHE" eval "$exp" --out "$work/a" --seed 0 --model "$1" $fallback 2> /dev/null | tail -1
}
evaluate "$ck/ensemble.safetensors" > "$work/poisoned.json"

python3 - "$work/a" "$work/poisoned.json" <<'PY'
import json, sys
d, poisoned = sys.argv[1:3]
r = {}
for line in open(d + "/results.jsonl"):
    rec = json.loads(line)
    r[(rec["method"], rec["budget"])] = rec
un = json.load(open(d + "/seed0/sisa/s5_r4/unlearned.json"))
def check(name, ok, why):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why))
sisa = [r[k] for k in r if k[0] == "sisa"]
tpr = lambda x: x["tpr_at_fpr"]["two_sided_empirical"]["tpr"]
check("sisa.records", len(sisa) == 2 and all(x["steps"] == un["steps"] for x in sisa),
      f"{len(sisa)} sisa records (2 budgets), steps {[x['steps'] for x in sisa]} vs unlearned.json {un['steps']}")
full = 1000 * 20
check("sisa.compute", all(abs(x["budget_used"] - x["steps"] * 50 / full) < 1e-9 and
                          x["over_budget"] == (x["budget_used"] > x["budget"]) for x in sisa) and
      all(x["over_budget"] for x in sisa) and un["retrained"] == 5,
      f"budget_used {[x['budget_used'] for x in sisa]}, over_budget {[x['over_budget'] for x in sisa]}, {un}")
p = json.loads(open(poisoned).read())
check("sisa.poisoned_detected", p["tpr_at_fpr_0.01"] > 0.1 and p["gus"] < -3 * p["gus_se"],
      f"the ensemble before unlearning: {p}")
s, rt = r[("sisa", 0.1)], r[("retrain", None)]
check("sisa.unlearned_not_detected", tpr(s) <= tpr(rt) + 0.03 and abs(s["gus"]) < 3 * s["gus_se"],
      f"sisa TPR {tpr(s)} GUS {s['gus']} ± {s['gus_se']}, retrain TPR {tpr(rt)}")
check("sisa.accuracy", s["accuracy"] > 0.6, f"the unlearned ensemble's accuracy is {s['accuracy']}")
PY

# an ensemble of three copies of the original model is that model
python3 - "$work/a/seed0/original.safetensors" "$work/copies.safetensors" <<'PY'
import json, struct, sys
src, dst = sys.argv[1:3]
raw = open(src, "rb").read()
hn = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + hn])
data = raw[8 + hn:]
out, blobs, off = {}, [], 0
for s in range(3):
    for name, t in head.items():
        if name == "__metadata__":
            continue
        b = data[t["data_offsets"][0]:t["data_offsets"][1]]
        out[f"shard{s}/{name}"] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
out["sisa.shards"] = {"dtype": "I32", "shape": [1], "data_offsets": [off, off + 4]}
blobs.append(struct.pack("<i", 3))
h = json.dumps(out).encode()
h += b" " * (-len(h) % 8)
open(dst, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
evaluate "$work/a/seed0/original.safetensors" > "$work/one.json"
evaluate "$work/copies.safetensors" > "$work/copies.json"
python3 - "$work/one.json" "$work/copies.json" <<'PY'
import json, sys
a, b = (json.loads(open(f).read()) for f in sys.argv[1:3])
# the loss test's threshold sits among losses of ~1e-6 (memorised poisons), where
# the ensemble's loss (computed in double from the logits) and the model's
# (in float) round differently: one or two samples may cross it
ok = a["accuracy"] == b["accuracy"] and abs(a["test_loss"] - b["test_loss"]) < 1e-5 and abs(a["gus"] - b["gus"]) < 1e-4 \
    and a["tpr_at_fpr_0.01"] == b["tpr_at_fpr_0.01"] and abs(a["loss_mia_tpr"] - b["loss_mia_tpr"]) <= 0.03
print("PASS sisa.copies_are_the_model" if ok else f"FAIL sisa.copies_are_the_model: one model {a}, three copies {b}")
PY

# a retraining stopped part way (two shards' last checkpoints and the records
# gone) resumes from the checkpoints and ends with the same records
rm -f "$work"/a/records/sisa_* "$ck"/unlearned.json "$ck"/unlearned/shard0_slice4.safetensors "$ck"/unlearned/shard3_slice4.safetensors
cp "$work/a/results.jsonl" "$work/before.jsonl"
if "$LETHE" run "$exp" --out "$work/a" --quiet --no-plots $fallback > "$work/b.log" 2>&1; then
    python3 - "$work/before.jsonl" "$work/a/results.jsonl" <<'PY'
import json, sys
def load(f):
    return {(r["method"], r["budget"]): r for r in map(json.loads, open(f))}
a, b = load(sys.argv[1]), load(sys.argv[2])
keys = ["accuracy", "test_loss", "gus", "gus_se", "steps", "samples", "budget_used", "over_budget", "tpr_at_fpr", "loss_mia"]
bad = [(k, f) for k in a if k[0] == "sisa" for f in keys if a[k][f] != b[k][f]]
print("PASS sisa.resume" if not bad else f"FAIL sisa.resume: {bad}")
PY
else
    echo "FAIL sisa.resume: the second run failed:"; sed 's/^/    /' "$work/b.log"
fi
