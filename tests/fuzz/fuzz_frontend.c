/* fuzz_frontend.c: libFuzzer harness over the front end (lexer, parser) and
 * the checker. Any input must end in a Program or a located error, never a
 * crash, hang or leak; errors come back here through diag_recover.
 *
 *   make build/fuzz/fuzz_frontend && build/fuzz/fuzz_frontend tests/fuzz/corpus
 *
 * tests/unit/test_fuzz_replay.c includes this file to replay the corpus in
 * every `make test`.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "graph.h"
#include "loopir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the dump walks every node the parser built: cheap extra coverage */
    static FILE *null_out;
    if (!null_out)
        null_out = fopen("/dev/null", "w");
    jmp_buf recover;
    jmp_buf *outer = diag_recover;
    diag_recover = &recover;
    if (!setjmp(recover)) {
        SrcFile *file = srcfile_from_string("fuzz.lth", (const char *)data, size);
        Program *prog = parse_file(file);
        if (null_out)
            ast_dump(prog, null_out);
        CompUnit *cu = sema_program(prog, &(SemaOptions){0});
        /* the rest of the pipeline up to the loop IR (no LLVM: it is slow and
         * has its own fuzzers); huge graphs are skipped to keep runs fast */
        for (int i = 0; i < cu->entries.len; i++) {
            Entry *e = cu->entries.data[i];
            if (e->g->nodes.len > 4000)
                continue;
            optimize_entry(e);
            lower_entry(e, &(LowerOptions){.parallel_min_work = 1 << 15});
        }
    }
    diag_recover = outer;
    arena_reset();
    return 0;
}
