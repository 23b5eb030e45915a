#!/usr/bin/env bash
# Every file of the .lth library checks (parse, names, and for experiments the
# instantiation of every entry point), and the rule examples in
# docs/unlearning.md compile. Prints PASS/FAIL lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
tmp=$B/tests/tmp/graphs.$$
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for f in $(find graphs -name '*.lth' | sort); do
    if out=$("$B/lethec" --check "$f" 2>&1); then
        echo "PASS graphs/${f#graphs/}"
    else
        echo "FAIL graphs/${f#graphs/}: $(echo "$out" | head -3 | tr '\n' ' ')"
    fi
done
# the docs' rule examples, exported on a small MLP
awk '/^```/{inside=!inside; next} inside && /^rule /{grab=1} grab{print} grab && /^}/{grab=0; print ""}' docs/unlearning.md > "$tmp/rules.lth"
n=$(grep -c '^rule ' "$tmp/rules.lth")
{
    echo 'import "models/mlp.lth"'
    echo 'import "losses/classification.lth"'
    cat "$tmp/rules.lth"
    grep '^rule ' "$tmp/rules.lth" | sed 's/^rule \([a-z_0-9]*\).*/export \1_step = \1(MLP(16, 8, 3), data(x = f32[4, 16], y = i32[4]))/'
} > "$tmp/doc_rules.lth"
if [ "$n" -ge 1 ] && out=$("$B/lethec" "$tmp/doc_rules.lth" --emit=obj -O0 -o "$tmp/doc_rules.o" 2>&1); then
    echo "PASS docs/unlearning.md: $n example rules compile"
else
    echo "FAIL docs/unlearning.md: example rules ($n found) do not compile: $(echo "$out" | head -3 | tr '\n' ' ')"
fi
# the language reference's examples: every declaration but the experiment
# (which needs the model library; graphs/experiments/ compile that syntax)
awk '/^experiment /{skip=1} skip && /^}/{skip=0; next} !skip' tests/lth/language_examples.lth > "$tmp/examples.lth"
if out=$("$B/lethec" --check "$tmp/examples.lth" 2>&1); then
    echo "PASS docs/language.md: the examples check"
else
    echo "FAIL docs/language.md: the examples do not check: $(echo "$out" | head -3 | tr '\n' ' ')"
fi
