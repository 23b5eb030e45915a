/* lethe.h: the runtime's program layer, used by the `lethe` command and by
 * any C program that runs compiled .lth code.
 *
 *   program.c  find and load a compiled program: a .so, or a .lth compiled
 *              by lethec into a cache keyed by the content of every source
 *              file it reads (so an edit anywhere recompiles, nothing else does)
 *   store.c    named tensor stores (a model's params and buffers, a rule's
 *              state) with safetensors files, and call frames that bind an
 *              entry point's arguments to stores and buffers by name
 *
 * Errors follow check.h: functions return LETHE_OK or an error status and
 * write a message naming the file and the fault into err[LETHE_ERR_LEN].
 */
#ifndef LETHE_RUNTIME_H
#define LETHE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "lethe_abi.h"

/* ---- program.c ------------------------------------------------------------------- */

typedef struct lethe_prog {
    void *handle;                /* dlopen handle */
    const lethe_program *p;
    char so_path[4096];
} lethe_prog;

/* The lethec to run: $LETHEC, else lethec beside the running executable,
 * else "lethec" on PATH. */
const char *lethe_lethec_path(void);
/* The compile cache: $LETHE_CACHE, else $XDG_CACHE_HOME/lethe, else ~/.cache/lethe. */
const char *lethe_cache_dir(void);

/* path is a .so (loaded as is) or a .lth file (compiled with `flags` into the
 * cache first, or taken from it). */
int lethe_prog_open(const char *path, const char *flags, lethe_prog *out, char *err);
void lethe_prog_close(lethe_prog *p);
/* A program linked into the executable at build time (the object lethec
 * wrote, linked beside liblethe): no compiler or loader involved. */
void lethe_prog_linked(const lethe_program *p, const char *name, lethe_prog *out);
const lethe_entry *lethe_entry_find(const lethe_program *p, const char *name);

/* ---- store.c ----------------------------------------------------------------------- */

typedef struct ts_tensor {
    char *name;
    int dtype;                   /* lethe_dtype */
    int rank;
    int64_t shape[LETHE_MAX_RANK];
    void *data;                  /* 64-byte aligned, owned */
    size_t nbytes;
} ts_tensor;

typedef struct ts_store {
    ts_tensor *t;
    int n, cap;
} ts_store;

size_t ts_dtype_size(int dtype);
ts_tensor *ts_get(const ts_store *s, const char *name);
/* The tensor `name`, created zeroed if absent; NULL (and err) if it exists
 * with another dtype or shape. */
ts_tensor *ts_put(ts_store *s, const char *name, int dtype, int rank, const int64_t *shape, char *err);
int ts_copy(ts_store *dst, const ts_store *src, char *err);      /* dst becomes a deep copy */
void ts_clear(ts_store *s);
/* Atomic safetensors file; `meta` is NULL or key/value pairs (NULL-terminated). */
int ts_save(const ts_store *s, const char *path, const char *const *meta, char *err);
int ts_load(ts_store *s, const char *path, char *err);           /* replaces the contents */
/* "[2, 3]" into buf (for messages); returns buf. */
const char *ts_shape_text(int rank, const int64_t *shape, char *buf, size_t n);
/* Sum of squared differences over the float tensors the two share. */
double ts_distance2(const ts_store *a, const ts_store *b);

/* A call frame: one pointer per argument of an entry point. PARAM and BUFFER
 * arguments point into the model store (by path), STATE into the state store
 * (by full name, created zeroed when missing), INPUT/OUTPUT/SCALAR into
 * buffers the frame owns (scalars preset to their defaults). An entry that
 * only writes a model tensor (init_model) creates it in the store. */
typedef struct lethe_frame {
    const lethe_entry *e;
    void **args;
    void *workspace;
    void **owned;                /* per argument: the frame's own buffer or NULL */
} lethe_frame;

typedef struct frame_models {    /* which store each model binding ("m", "teacher") reads */
    const char *binding;         /* NULL: any binding */
    ts_store *store;
} frame_models;

lethe_frame *frame_new(const lethe_entry *e, const frame_models *models, int nmodels, ts_store *state, char *err);
void frame_free(lethe_frame *f);
void *frame_arg(const lethe_frame *f, const char *name);        /* NULL if absent */
int frame_set_scalar(lethe_frame *f, const char *name, double v); /* LETHE_OK, or an error if not a scalar */
int frame_call(lethe_frame *f, lethe_ctx *ctx, char *err);
/* With a device in ctx (a CUDA program), copies the state tensors the device
 * holds back into their stores and forgets them: call it when a loop of
 * calls ends, before the host reads, changes or frees any state. Without a
 * device it does nothing. */
int lethe_ctx_sync(lethe_ctx *ctx, char *err);

#endif
