#!/usr/bin/env bash
# `lethe audit` (runtime/audit.c) on models trained by PyTorch:
#   - `lethe poison --export` writes the seed's poisoned training data, its
#     mask matching poison.json;
#   - a ResNet-18 trained by PyTorch on that data (torchvision names, F16) is
#     "detected", one trained on the retain set only (kuangliu names under
#     "module.") is "not detected"; both load through their name maps with the
#     test accuracy PyTorch measured on the same weights (a wrong map would
#     not reproduce it); the JSON records say the same;
#   - refusals: a name map that does not fit (every missing and extra tensor
#     listed), a mis-shaped tensor, an unknown map, the poison set of another seed, of other data,
#     an old folder without the key, a seed that disagrees with the folder;
#   - an attack's poison.safetensors: the audit's verdict is its target, a
#     file of another seed is refused, one without the key read with a note.
# The models come from tests/reference/make_audit_models.py (PyTorch takes a
# minute to train them, so they are committed; see tests/reference/README.md).
# Prints PASS/FAIL/SKIP lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
exp=tests/lth/audit_fmnist.lth
ref=tests/reference
t=$B/tests/tmp/audit.$$
rm -rf "$t"
mkdir -p "$t"
export LETHE_CACHE=$t/cache
trap 'rm -rf "$t"' EXIT

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "SKIP audit: the Debian package dataset-fashion-mnist is missing (the reference models were trained on it)"
    exit 0
fi

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS audit.$1"; else echo "FAIL audit.$1: $3"; fi
}

"$LETHE" poison "$exp" --seed 0 --out "$t/out" --export "$t/data.safetensors" --quiet > "$t/poison.log" 2>&1
expect poison_export '[ $? -eq 0 ] && [ -s "$t/data.safetensors" ] && [ -s "$t/out/seed0/poison.json" ]' "$(cat "$t/poison.log")"

# the export: shapes, labels, and the mask is poison.json's set
python3 - "$t/data.safetensors" "$t/out/seed0/poison.json" > "$t/export.check" 2>&1 <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    data = f.read()
p = json.load(open(sys.argv[2]))
def arr(name, size, fmt):
    b, e = h[name]["data_offsets"]
    return struct.unpack(f"<{(e - b) // size}{fmt}", data[b:e])
ids, mask, y = arr("train.id", 4, "i"), arr("train.poison", 1, "?"), arr("train.y", 4, "i")
ok = (h["train.x"]["shape"] == [500, 1, 28, 28] and h["test.x"]["shape"] == [500, 1, 28, 28]
      and sorted(i for i, m in zip(ids, mask) if m) == sorted(p["ids"]) and len(p["ids"]) == 50
      and set(y) <= set(range(10)) and h["__metadata__"]["poison_key"] == p["key"])
print("ok" if ok else f"shapes {h['train.x']['shape']}, {sum(mask)} masked, poison.json {len(p['ids'])}")
PY
expect export_matches_poison_set 'grep -qx ok "$t/export.check"' "$(cat "$t/export.check")"

audit() {   # label, model, name map, extra args...
    local label=$1 model=$2 map=$3; shift 3
    "$LETHE" audit "$exp" --model "$model" --name-map "$map" --poisons "$t/out/seed0" --quiet "$@" \
        > "$t/$label.out" 2> "$t/$label.err"
}

# the record's verdict and accuracy against the file's metadata (PyTorch's accuracy on the same F16 weights)
record_check() {   # record, model, want detected (True/False)
    python3 - "$@" <<'PY'
import json, struct, sys
rec = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
torch_acc = float(meta["test_accuracy"])
if meta["poison_key"] != rec["poison_key"]:
    print("the model was trained on another poison set: regenerate it (tests/reference/README.md)")
    sys.exit(0)
ok = (str(rec["detected"]) == sys.argv[3] and abs(rec["accuracy"] - torch_acc) <= 0.002 and rec["n_poison"] == 50
      and (rec["p_one_sided"] < 0.01) == rec["detected"] and "tpr_at_fpr" in rec and "loss_mia" in rec)
print("ok" if ok else f"detected {rec['detected']}, accuracy {rec['accuracy']} (torch {torch_acc}), p {rec['p_one_sided']}")
PY
}

poisoned=$ref/audit_poisoned_torchvision.safetensors
clean=$ref/audit_clean_kuangliu.safetensors
audit poisoned "$poisoned" torchvision
expect poisoned_detected '[ $? -eq 0 ] && grep -q "^verdict: poisons detected: the model still carries them" "$t/poisoned.out"' \
    "$(cat "$t/poisoned.out" "$t/poisoned.err")"
rec=$t/out/audits/audit_poisoned_torchvision_seed0.json
r=$(record_check "$rec" "$poisoned" True 2>&1)
expect poisoned_record '[ "$r" = ok ]' "$r"

audit clean "$clean" kuangliu --record "$t/clean.json"
expect clean_not_detected '[ $? -eq 0 ] && grep -q "^verdict: not detected" "$t/clean.out"' "$(cat "$t/clean.out" "$t/clean.err")"
r=$(record_check "$t/clean.json" "$clean" False 2>&1)
expect clean_record '[ "$r" = ok ]' "$r"

# a name map that does not fit: every missing and extra tensor, named
audit wrong_map "$poisoned" kuangliu
rc=$?
expect wrong_map_listed '[ $rc -ne 0 ] && grep -q "no tensor for layer2.0.skip.w \[16, 8, 1, 1\] (layer2.0.shortcut.0.weight in the file)" "$t/wrong_map.err" &&
    grep -q "no tensor for fc.w \[10, 64\] (linear.weight in the file)" "$t/wrong_map.err" &&
    grep -q "tensor layer4.0.downsample.1.running_var \[64\] is not in the model" "$t/wrong_map.err" &&
    grep -q "34 tensors missing, mis-shaped or extra" "$t/wrong_map.err"' "rc $rc: $(cat "$t/wrong_map.err")"
audit lethe_map "$poisoned" lethe
rc=$?
expect lethe_map_hint '[ $rc -ne 0 ] && grep -q "no tensor for stem.w \[8, 1, 3, 3\]" "$t/lethe_map.err" && grep -q "HINT: a PyTorch state dict" "$t/lethe_map.err"' \
    "rc $rc: $(cat "$t/lethe_map.err")"
# a mis-shaped head: fc.weight's bytes relabelled [20, 32]
python3 - "$poisoned" "$t/misshaped.safetensors" <<'PY'
import sys
b = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(b.replace(b'"fc.weight":{"dtype":"F16","shape":[10,64]', b'"fc.weight":{"dtype":"F16","shape":[20,32]', 1))
PY
audit misshaped "$t/misshaped.safetensors" torchvision
rc=$?
expect misshaped_listed '[ $rc -ne 0 ] && grep -q "tensor fc.weight is \[20, 32\] in the file, \[10, 64\] in the model" "$t/misshaped.err" &&
    grep -q "1 tensor missing, mis-shaped or extra" "$t/misshaped.err"' "rc $rc: $(cat "$t/misshaped.err")"
audit bad_map "$poisoned" timm
rc=$?
expect unknown_map '[ $rc -ne 0 ] && grep -q "unknown name map .timm." "$t/bad_map.err"' "rc $rc: $(cat "$t/bad_map.err")"

# poison sets that are not this experiment's seed 0 (or 1)
mkdir -p "$t/other/seed1"
cp "$t/out/seed0/poison.json" "$t/other/seed1/poison.json"
"$LETHE" audit "$exp" --model "$poisoned" --name-map torchvision --poisons "$t/other/seed1" > "$t/seed.out" 2> "$t/seed.err"
rc=$?
expect other_seed_refused '[ $rc -ne 0 ] && grep -q "is the poison set of seed 0, not 1" "$t/seed.err"' "rc $rc: $(cat "$t/seed.err")"
sed 's/"seed":0/"seed":1/' "$t/out/seed0/poison.json" > "$t/other/seed1/poison.json"
"$LETHE" audit "$exp" --model "$poisoned" --name-map torchvision --poisons "$t/other/seed1" > "$t/key.out" 2> "$t/key.err"
rc=$?
expect relabelled_seed_refused '[ $rc -ne 0 ] && grep -q "the poison set of another experiment, seed or data" "$t/key.err"' \
    "rc $rc: $(cat "$t/key.err")"
"$LETHE" poison "$exp" --seed 0 --out "$t/sliced" --train-limit 400 --quiet > /dev/null 2>&1
"$LETHE" audit "$exp" --model "$poisoned" --name-map torchvision --poisons "$t/sliced/seed0" > "$t/data.out" 2> "$t/data.err"
rc=$?
expect other_data_refused '[ $rc -ne 0 ] && grep -q "the poison set of another experiment, seed or data" "$t/data.err"' \
    "rc $rc: $(cat "$t/data.err")"
mkdir -p "$t/old/seed0"
sed 's/"key":"[0-9a-f]*",//' "$t/out/seed0/poison.json" > "$t/old/seed0/poison.json"
"$LETHE" audit "$exp" --model "$poisoned" --name-map torchvision --poisons "$t/old/seed0" > "$t/old.out" 2> "$t/old.err"
rc=$?
expect old_folder_message '[ $rc -ne 0 ] && grep -q "written by an older lethe, without the key" "$t/old.err" && grep -q "HINT: run .lethe poison." "$t/old.err"' \
    "rc $rc: $(cat "$t/old.err")"
"$LETHE" audit "$exp" --model "$poisoned" --name-map torchvision --poisons "$t/out/seed0" --seed 1 > "$t/arg.out" 2> "$t/arg.err"
rc=$?
expect seed_disagrees '[ $rc -ne 0 ] && grep -q -- "--seed 1 but --poisons .* is seed 0" "$t/arg.err"' "rc $rc: $(cat "$t/arg.err")"

# an attack's crafted poisons (poison.safetensors) carry the key too; its audit's verdict is the target
ax=tests/lth/e2e_witches_brew.lth
a=$t/attack
"$LETHE" poison "$ax" --seed 0 --out "$a" --quiet > "$t/attack.log" 2>&1 &&
    "$LETHE" train "$ax" --seed 0 --out "$a" --quiet >> "$t/attack.log" 2>&1 &&
    "$LETHE" audit "$ax" --model "$a/seed0/original.safetensors" --poisons "$a/seed0" --quiet > "$t/attack.out" 2>> "$t/attack.log"
rc=$?
expect attack_verdict '[ $rc -eq 0 ] && grep -q "^verdict: the poisons \(still\|do not\) work: target test sample" "$t/attack.out" &&
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(not isinstance(r[\"detected\"], bool) or \"target_pred\" not in r)" "$a/audits/original_seed0.json"' \
    "rc $rc: $(cat "$t/attack.log" "$t/attack.out")"
mkdir -p "$a/seed1"
cp "$a/seed0/poison.safetensors" "$a/seed1/"
"$LETHE" poison "$ax" --seed 1 --out "$a" --quiet > "$t/attack1.log" 2>&1
rc=$?
expect attack_other_seed_refused '[ $rc -ne 0 ] && grep -q "seed1/poison.safetensors: the poison set of another experiment, seed or data" "$t/attack1.log"' \
    "rc $rc: $(cat "$t/attack1.log")"
# a file from before the key: read with a note (its ids are still checked)
python3 - "$a/seed0/poison.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
del h["__metadata__"]["poison_key"]
hb = json.dumps(h, separators=(",", ":")).encode()
hb += b" " * ((8 - len(hb) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PY
"$LETHE" poison "$ax" --seed 0 --out "$a" > "$t/attack0.log" 2>&1
rc=$?
expect attack_old_file_note '[ $rc -eq 0 ] && grep -q "written by an older lethe without the experiment.s key: only its sample ids are checked" "$t/attack0.log"' \
    "rc $rc: $(cat "$t/attack0.log")"
