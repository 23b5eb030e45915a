/* harness.h: what every C test uses.
 *
 * Output protocol (tests/run.sh counts these lines):
 *     PASS <name>
 *     FAIL <name>: <why>
 *     SKIP <name>: <why>
 * A test binary that exits non-zero or crashes counts as one more failure.
 *
 * Compiled programs are produced by the real lethec of the build folder (or
 * $LETHEC) as shared objects and loaded with dlopen, so tests exercise the
 * output contract of runtime/lethe_abi.h exactly as a user's program would.
 */
#ifndef LETHE_TEST_HARNESS_H
#define LETHE_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lethe_abi.h"

extern int th_failures;

void th_pass(const char *name);
void th_fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void th_skip(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* PASS if cond, else FAIL with the formatted reason; returns cond */
bool th_check(bool cond, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int th_exit(void);   /* return from main: 0 if nothing failed */

/* Directory for temporary files of this test binary (created on first use). */
const char *th_tmpdir(void);

/* Compile a .lth file (or source text) with build/lethec to a shared object and
 * load it. `flags` is extra lethec flags ("" or e.g. "-O0 --f64"). On a compile
 * error returns NULL and, if err is non-NULL, stores lethec's stderr in *err
 * (malloc'd). */
const lethe_program *th_compile_file(const char *lth_path, const char *flags, char **err);
const lethe_program *th_compile_source(const char *name, const char *source, const char *flags, char **err);
/* Run lethec with arbitrary arguments; returns its exit status and stores
 * stdout+stderr in *out (malloc'd) if non-NULL. */
int th_run_lethec(const char *args, char **out);

const lethe_entry *th_entry(const lethe_program *p, const char *name);   /* NULL if absent */
int th_arg(const lethe_entry *e, const char *name);                      /* -1 if absent */
int64_t th_arg_numel(const lethe_arg *a);
size_t th_dtype_size(int dtype);

/* A call frame: one buffer per argument (64-byte aligned, zeroed; scalars
 * preset to their defaults) and a workspace. */
typedef struct th_frame {
    const lethe_entry *entry;
    void **args;
    void *workspace;
} th_frame;
th_frame *th_frame_new(const lethe_entry *e);
void th_frame_free(th_frame *f);
int th_call(th_frame *f, lethe_ctx *ctx);   /* ctx may be NULL: serial, seed 0 */
double *th_f64(th_frame *f, const char *arg);
float *th_f32(th_frame *f, const char *arg);
int32_t *th_i32(th_frame *f, const char *arg);

/* Deterministic data: uniform in [lo, hi) from a small xorshift stream, with
 * no exact zeros. Works for f32/f64/i32 (i32: integers in [lo, hi)). */
void th_fill(void *buf, int dtype, int64_t n, double lo, double hi, uint64_t seed);
/* Fill every tensor argument of f whose kind is in `kinds` (a mask of
 * 1u << LETHE_*) at a scale that keeps a network's activations O(1):
 * labels (i32) in [0, classes), batch-norm gamma in [0.6, 1.4), beta, biases
 * and running means in [-0.3, 0.3), running variances in [0.5, 1.5),
 * parameters in [-0.6, 0.6), everything else in [-1, 1); each tensor from
 * seed *seed, which is advanced. */
void th_fill_args(th_frame *f, unsigned kinds, int classes, uint64_t *seed);
/* Copy every argument of `to` whose kind is in `kinds` from the argument of
 * `from` with the same name, dtype and size; returns how many it could not
 * find there. */
int th_copy_by_name(th_frame *to, const th_frame *from, unsigned kinds);
/* The worst error of a gradient g against finite differences fd: |g - fd|
 * relative to |fd|, with a floor of a tenth of the largest |fd| (so that
 * entries near 0 are judged against the gradient's scale); *at is where. */
double th_fd_err(const double *g, const double *fd, int64_t n, int64_t *at);
/* Copy a model's parameters and buffers from src into every parameter and
 * buffer of dst with the same leaf path (all of dst's models: a frozen
 * original gets them too). The model in src is the one bound to `binding`
 * ("m"), or with binding NULL the one src writes (a rule's or init_model's). */
void th_copy_model(th_frame *dst, const th_frame *src, const char *binding);
/* The reference tensor `name` of a safetensors file as f64 (malloc'd, one
 * spare element), its element count in *n; NULL, with a "# " line naming
 * `what` (the file), if it is absent or unreadable. */
struct st_file;
double *th_ref_f64(const struct st_file *f, const char *what, const char *name, int64_t *n);
/* The worst error of a check over its tensors (NaN counts as worst), where,
 * and how many tensors were missing. */
typedef struct th_worst {
    double err;
    char what[200];
    int missing;
} th_worst;
void th_worst_add(th_worst *w, double err, const char *what);
#define TH_INPUT_KINDS (~(1u << LETHE_SCALAR | 1u << LETHE_OUTPUT))
/* max |a-b| / max(|b|, floor) over n elements of a dtype */
double th_max_rel_err(const void *a, const void *b, int dtype, int64_t n, double floor);

#endif
