#!/usr/bin/env bash
# lethec's command line: --help, --version, every --emit kind, -O levels,
# --cpu, every -d dump, --deps, and clear errors for bad usage.
# Prints PASS/FAIL lines.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
L=$B/lethec
t=$B/tests/tmp/cli.$$
mkdir -p "$t"
trap 'rm -rf "$t"' EXIT
src=tests/lth/cli_small.lth

expect() {   # name, condition (shell), detail
    if eval "$2"; then echo "PASS cli.$1"; else echo "FAIL cli.$1: $3"; fi
}

$L --help > "$t/help" 2>&1; expect help '[ $? -eq 0 ] && grep -q -- "--emit" "$t/help"' "no usage text"
$L --version > "$t/ver" 2>&1; expect version '[ $? -eq 0 ] && grep -q "^lethec " "$t/ver"' "$(cat "$t/ver")"
$L "$src" --emit=obj,so,ll,asm,header -o "$t/p.o" 2> "$t/emit.err"
expect emit_all '[ -s "$t/p.o" ] && [ -s "$t/p.so" ] && [ -s "$t/p.ll" ] && [ -s "$t/p.s" ] && [ -s "$t/p.h" ]' "$(ls "$t"; cat "$t/emit.err")"
expect emit_ll_is_ir 'grep -q "^define" "$t/p.ll"' "no functions in the .ll"
expect header_compiles 'cc -std=c11 -Wall -Werror -fsyntax-only -Iruntime -include "$t/p.h" -x c /dev/null' "the header does not compile"
for o in 0 1 2 3; do
    $L "$src" -O$o -o "$t/o$o.o" 2> "$t/o$o.err"
    expect "O$o" '[ -s "$t/o$o.o" ]' "$(cat "$t/o$o.err")"
done
$L "$src" --cpu=x86-64-v3 -o "$t/cpu.o" 2> "$t/cpu.err"
expect cpu_override '[ -s "$t/cpu.o" ]' "$(cat "$t/cpu.err")"
for d in ast shapes grad opt fusion memory loops ir; do
    $L "$src" -O0 -d $d -o "$t/d.o" 2> "$t/d_$d" > /dev/null
    expect "dump_$d" '[ -s "$t/d_$d" ]' "nothing dumped for -d $d"
done
expect dump_shapes_has_entries 'grep -q "^entry mlp_step" "$t/d_shapes"' "no entry in -d shapes"
expect dump_memory_has_plan 'grep -qi "workspace\|offset" "$t/d_memory"' "no plan in -d memory"
$L "$src" --deps > "$t/deps" 2>&1
expect deps '[ $? -eq 0 ] && grep -q "models/mlp.lth" "$t/deps" && grep -q "train/sgd.lth" "$t/deps"' "$(cat "$t/deps")"
$L "$src" --emit=pdf -o "$t/x" > "$t/bad1" 2>&1; rc=$?
expect bad_emit '[ $rc -eq 2 ] && grep -q "unknown --emit kind" "$t/bad1"' "rc $rc: $(cat "$t/bad1")"
$L --frobnicate > "$t/bad2" 2>&1; rc=$?
expect bad_option '[ $rc -eq 2 ] && grep -q "unknown option" "$t/bad2"' "rc $rc: $(cat "$t/bad2")"
$L no/such/file.lth > "$t/bad3" 2>&1; rc=$?
expect missing_input '[ $rc -eq 1 ] && grep -q "cannot read" "$t/bad3"' "rc $rc: $(cat "$t/bad3")"
$L "$src" -o /no/such/dir/x.o > "$t/bad4" 2>&1; rc=$?
expect unwritable_output '[ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "error" "$t/bad4"' "rc $rc: $(cat "$t/bad4")"
# equal kernels of two entries become one function (loopir.h's lk_key)
$L tests/lth/cli_twins.lth -O0 --emit=ll -o "$t/twins.ll" 2> "$t/twins.err"
na=$(grep -c '^define hidden void @lethe_program_main\.step_a\.k[0-9a-z_]*(ptr' "$t/twins.ll")
nb=$(grep -c '^define hidden void @lethe_program_main\.step_b\.k[0-9a-z_]*(ptr' "$t/twins.ll")
expect kernels_shared '[ "$na" -gt 5 ] && [ "$nb" -eq 0 ]' "step_a defines $na kernel functions, step_b $nb (expected none: equal kernels): $(cat "$t/twins.err")"
