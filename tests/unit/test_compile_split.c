/* test_compile_split.c: lethec's parallel compilation
 * (compiler/backend_llvm_split.c). A program whose kernels are split over
 * several LLVM modules must compute the same bits as the one-module build,
 * and its object must not depend on the number of threads. The machine
 * code of the tasks and GEMMs is compared function by function in
 * tests/compile_split.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "harness.h"

static const char *const program = "tests/lth/train.lth";   /* an MLP and a CNN: GEMMs, convolutions, tasks */

static size_t arg_bytes(const lethe_arg *a) { return (size_t)th_arg_numel(a) * th_dtype_size(a->dtype); }

/* every entry of `split` called on the same inputs as the same entry of
 * `one`: every argument (outputs, updated parameters) equal bit for bit */
static void compare_programs(const lethe_program *one, const lethe_program *split, const char *what) {
    for (uint32_t i = 0; i < one->nentries; i++) {
        const lethe_entry *e1 = &one->entries[i], *e2 = th_entry(split, e1->name);
        char name[200];
        snprintf(name, sizeof name, "split.%s.%s", what, e1->name);
        if (!th_check(e2 && e2->nargs == e1->nargs, name, "the split build has no entry %s with %d arguments", e1->name,
                      e1->nargs))
            continue;
        th_frame *f1 = th_frame_new(e1), *f2 = th_frame_new(e2);
        for (int a = 0; a < e1->nargs; a++) {
            const lethe_arg *arg = &e1->args[a];
            if (arg->kind == LETHE_SCALAR || arg->dtype == LETHE_BOOL)
                continue;   /* scalars keep their defaults */
            bool label = arg->dtype == LETHE_I32;
            th_fill(f1->args[a], arg->dtype, th_arg_numel(arg), label ? 0 : -1, label ? 4 : 1, 1000 + (uint64_t)a);
            memcpy(f2->args[a], f1->args[a], arg_bytes(arg));
        }
        int rc1 = th_call(f1, NULL), rc2 = th_call(f2, NULL);
        const char *differs = NULL;
        for (int a = 0; a < e1->nargs && !differs; a++)
            if (memcmp(f1->args[a], f2->args[a], arg_bytes(&e1->args[a])))
                differs = e1->args[a].name;
        th_check(rc1 == 0 && rc2 == 0 && !differs, name, "status %d and %d; argument %s differs", rc1, rc2,
                 differs ? differs : "(none)");
        th_frame_free(f1);
        th_frame_free(f2);
    }
}

/* the object of `flags_a` and of `flags_b` are the same bytes */
static void same_object(const char *name, const char *flags_a, const char *flags_b) {
    char args[2048], pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/%s.a.o", th_tmpdir(), name);
    snprintf(pb, sizeof pb, "%s/%s.b.o", th_tmpdir(), name);
    snprintf(args, sizeof args, "%s --emit=obj -o '%s' %s", program, pa, flags_a);
    int rca = th_run_lethec(args, NULL);
    snprintf(args, sizeof args, "%s --emit=obj -o '%s' %s", program, pb, flags_b);
    int rcb = th_run_lethec(args, NULL);
    size_t na = 0, nb = 0;
    uint8_t *a = NULL, *b = NULL;
    char err[LETHE_ERR_LEN];
    fs_read_file(pa, SIZE_MAX, &a, &na, err);
    fs_read_file(pb, SIZE_MAX, &b, &nb, err);
    th_check(rca == 0 && rcb == 0 && a && b && na == nb && !memcmp(a, b, na), name,
             "lethec exited %d and %d; objects of %zu and %zu bytes%s", rca, rcb, na, nb,
             a && b && na == nb ? " that differ" : "");
    free(a);
    free(b);
}

int main(void) {
    char *err = NULL;
    const lethe_program *one = th_compile_file(program, "--split-modules=1", &err);
    if (!one) {
        th_fail("split.compile_one_module", "%s", err ? err : "?");
        return th_exit();
    }
    const lethe_program *split = th_compile_file(program, "-j 2", &err);
    if (th_check(split != NULL, "split.compile_default", "%s", err ? err : "?"))
        compare_programs(one, split, "default");
    /* more modules than kernels of some entries, and one thread */
    const lethe_program *many = th_compile_file(program, "--split-modules=40 -j 1", &err);
    if (th_check(many != NULL, "split.compile_40_modules", "%s", err ? err : "?"))
        compare_programs(one, many, "40");

    same_object("split.object_independent_of_threads", "-j 1", "-j 2");
    same_object("split.object_deterministic", "-j 2", "-j 2 --split-modules=8");

    char *out = NULL;
    char args[600];
    snprintf(args, sizeof args, "%s --split-modules=0 -o /dev/null", program);
    int rc = th_run_lethec(args, &out);
    th_check(rc == 2 && out && strstr(out, "--split-modules wants a number"), "split.bad_count",
             "exit %d: %s", rc, out ? out : "");
    free(out);
    snprintf(args, sizeof args, "%s -j -o /dev/null", program);
    rc = th_run_lethec(args, &out);
    th_check(rc == 2, "split.bad_jobs", "exit %d: %s", rc, out ? out : "");
    free(out);
    return th_exit();
}
