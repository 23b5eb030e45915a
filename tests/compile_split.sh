#!/usr/bin/env bash
# lethec's parallel compilation (compiler/backend_llvm_split.c): the kernels,
# tasks and GEMMs of a program split over several LLVM modules must be the
# same machine code, function by function, as in the one-module build. Only
# the entry functions (the glue that calls the kernels) may differ. Prints
# PASS/FAIL lines; test_compile_split.c checks the results bit for bit.
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
L=$B/lethec
t=$B/tests/tmp/compile_split.$$
mkdir -p "$t"
trap "rm -rf \"$t\"" EXIT

# One line per function: its name and its instructions without addresses;
# a call's target is the symbol its relocation names (cross-module calls)
# or objdump's <symbol> (calls within one module); constant-pool labels
# drop the function's number in its module (.LCPI<fn>_<i>), RIP-relative
# distances are dropped (a linked object has no relocations for them), and
# alignment padding is skipped. Works on objects and shared objects.
functions() {
    objdump -d -r --no-show-raw-insn "$1" | awk '
        function flush_insn() { if (insn != "") body = body ";" insn; insn = "" }
        function flush() { flush_insn(); if (fn != "") print fn "\t" body; body = "" }
        /^[0-9a-f]+ <.*>:$/ { flush(); fn = $2; gsub(/[<>:]/, "", fn); next }
        fn == "" { next }
        /^\t+[0-9a-f]+: R_X86_64_/ {
            # the target of a relocated operand is the relocation symbol,
            # not the <symbol> objdump guesses from the zero in the code
            sym = $3; sub(/[-+]0x[0-9a-f]+$/, "", sym); sub(/^\.LCPI[0-9]+_/, ".LCPI_", sym)
            sub(/<[^>]*>/, "", insn)
            insn = insn " @" sym; next
        }
        /^ +[0-9a-f]+:\t/ {
            flush_insn()
            sub(/^ +[0-9a-f]+:\t/, ""); sub(/ *#.*$/, "")
            if ($0 ~ /nop|^xchg +%ax,%ax$/) next   # padding: depends on where the function starts
            gsub(/[0-9a-f]+ <[^>+]*\+0x[0-9a-f]+>/, "<here>")   # jumps inside a function
            gsub(/[0-9a-f]+ </, "<")
            gsub(/-?0x[0-9a-f]+\(%rip\)/, "(%rip)")   # linked: distances to constants
            gsub(/[ \t]+/, " ")
            insn = $0
        }
        END { flush() }' | sort
}

check_program() {   # name, .lth, extra flags
    local name=$1 src=$2
    shift 2
    if ! $L "$src" --split-modules=1 -o "$t/$name.one.o" "$@" 2> "$t/err" ||
       ! $L "$src" --split-modules=5 -o "$t/$name.split.o" "$@" 2>> "$t/err"; then
        echo "FAIL compile_split.$name: lethec failed: $(head -c 600 "$t/err")"
        return
    fi
    functions "$t/$name.one.o" > "$t/$name.one"
    functions "$t/$name.split.o" > "$t/$name.split"
    # entry functions: lethe_program_main.ENTRY, no kernel (.kN_) in the name
    # kernels (ENTRY.kN_...), their tasks and loops, GEMMs and helpers (lethe.*)
    local kern='$1 ~ /\.k[0-9]+_|^lethe\./'
    awk -F'\t' "$kern" "$t/$name.one" > "$t/$name.one.k"
    awk -F'\t' "$kern" "$t/$name.split" > "$t/$name.split.k"
    comm -23 "$t/$name.one.k" "$t/$name.split.k" | cut -f1 > "$t/$name.diff"
    local nfn ndiff
    nfn=$(wc -l < "$t/$name.one.k")
    ndiff=$(wc -l < "$t/$name.diff")
    if [ "$nfn" -gt 10 ] && [ "$ndiff" -eq 0 ] && [ "$(wc -l < "$t/$name.split.k")" -eq "$nfn" ]; then
        echo "PASS compile_split.$name ($nfn kernel, task and GEMM functions the same)"
    else
        echo "FAIL compile_split.$name: $ndiff of $nfn functions differ ($(wc -l < "$t/$name.split.k") in the split build), e.g. $(head -3 "$t/$name.diff" | tr '\n' ' ')"
    fi
}

check_program train tests/lth/train.lth
check_program parity tests/lth/parity.lth
