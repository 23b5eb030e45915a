/* backend_cuda.c: loop IR -> CUDA program (cuda_emit, the entry point).
 *
 *   1. every kernel of every entry is rendered (backend_cuda_render.c) into
 *      CUDA kernels and an ordered launch list per entry; kernels with the
 *      same text are kept once;
 *   2. the kernels are cut into modules of CU_KERNELS_PER_MODULE, each the
 *      prelude plus its kernels, so NVRTC compiles them on all cores;
 *   3. where libnvrtc loads, each module is compiled to a CUBIN for --arch
 *      (a compile error is a renderer bug: the module's source is saved and
 *      named in the message); without NVRTC the program carries the source
 *      only and the runtime compiles it on first use;
 *   4. backend_cuda_host.c writes the host object: the program table of
 *      lethe_abi.h whose entry functions forward to ctx->device, the
 *      sources, CUBINs and launch lists as constant data.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "device_cuda.h"
#include "fsutil.h"
#include "lethe_abi.h"

/* ---------------------------------------------------------------------------
 * text */

static void sb_grow(Sb *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->s = xrealloc(b->s, b->cap, cap);
    b->cap = cap;
}

void sb_puts(Sb *b, const char *s) {
    size_t n = strlen(s);
    sb_grow(b, n);
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

void sb_printf(Sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

const char *sb_str(Sb *b) { return b->s ? b->s : ""; }

/* ---------------------------------------------------------------------------
 * kernels */

int cu_push_kernel(CuProgram *cp, const char *name, const char *text, bool barriers) {
    CuKernel k = {.name = name, .text = text, .module = -1, .barriers = barriers};
    vec_push(&cp->kernels, k);
    return cp->kernels.len - 1;
}

static int *dedup_find(CuProgram *cp, const char *key) {
    if (2 * (cp->dedup_len + 1) > cp->dedup_cap) {
        const char **ok = cp->dedup_key;
        int *ov = cp->dedup_val, oc = cp->dedup_cap;
        cp->dedup_cap = oc ? 2 * oc : 256;
        cp->dedup_key = xalloc(sizeof(char *) * (size_t)cp->dedup_cap);
        cp->dedup_val = xalloc(sizeof(int) * (size_t)cp->dedup_cap);
        cp->dedup_len = 0;
        for (int i = 0; i < oc; i++)
            if (ok[i])
                *dedup_find(cp, ok[i]) = ov[i];
    }
    unsigned h = (unsigned)hash_bytes(key, strlen(key), 0xcbf29ce484222325ull) & (unsigned)(cp->dedup_cap - 1);
    while (cp->dedup_key[h] && strcmp(cp->dedup_key[h], key))
        h = (h + 1) & (unsigned)(cp->dedup_cap - 1);
    if (!cp->dedup_key[h]) {
        cp->dedup_key[h] = key;
        cp->dedup_val[h] = -1;
        cp->dedup_len++;
    }
    return &cp->dedup_val[h];
}

int cu_add_kernel(CuProgram *cp, const char *name, const char *comment, const char *const *ptypes, int nparams,
                  const char *body, bool barriers) {
    Sb params = {0};
    for (int i = 0; i < nparams; i++) {
        bool ptr = ptypes[i][strlen(ptypes[i]) - 1] == '*';
        sb_printf(&params, "%s%s%sp%d", i ? ", " : "", ptypes[i], ptr ? "__restrict__ " : " ", i);
    }
    const char *sig = sb_str(&params);
    int *slot = dedup_find(cp, xfmt("(%s)%s", sig, body));
    if (*slot >= 0)
        return *slot;
    Sb t = {0};
    sb_printf(&t, "/* %s: %s */\nLK_KERNEL void %s(%s)%s", name, comment, name, sig, body);
    /* the host shim calls kernels through one signature */
    sb_printf(&t, "#ifdef LETHE_HOST_SHIM\nstatic void %s__thunk(void *const *a) {\n    %s(", name, name);
    for (int i = 0; i < nparams; i++)
        sb_printf(&t, "%s*(%s%s*)a[%d]", i ? ", " : "", ptypes[i], ptypes[i][strlen(ptypes[i]) - 1] == '*' ? "const " : " const ",
                  i);
    sb_printf(&t, ");\n}\nLK_SHIM_ENTRY(%s, %d)\n#endif\n\n", name, barriers ? 1 : 0);
    *slot = cu_push_kernel(cp, name, sb_str(&t), barriers);
    return *slot;
}

void cu_conv_geometry(const LIm2col *ic, int64_t g[11]) {
    /* the loop IR's implicit im2col is a stride-1 convolution that keeps the
     * width (loopir.h); the kernels take the general geometry */
    int64_t v[11] = {ic->c, ic->h, ic->w, ic->kh, ic->kw, 1, 1, ic->ph, ic->pw, ic->oh, ic->w};
    memcpy(g, v, sizeof v);
}

/* ---------------------------------------------------------------------------
 * modules and NVRTC */

static void build_modules(CuProgram *cp) {
    int nk = cp->kernels.len;
    int nm = nk ? (nk + CU_KERNELS_PER_MODULE - 1) / CU_KERNELS_PER_MODULE : 0;
    for (int m = 0; m < nm; m++) {
        Sb src = {0};
        sb_puts(&src, cu_prelude_text());
        for (int i = m * CU_KERNELS_PER_MODULE; i < nk && i < (m + 1) * CU_KERNELS_PER_MODULE; i++) {
            sb_puts(&src, cp->kernels.data[i].text);
            cp->kernels.data[i].module = m;
        }
        CuModule mod = {.source = sb_str(&src)};
        char hex[65];
        fs_sha256_hex(mod.source, strlen(mod.source), hex);
        mod.hash = xstrdup(hex);
        vec_push(&cp->modules, mod);
    }
}

typedef struct Job {
    lethe_nvrtc *nv;
    CuProgram *cp;
    int next, failed;          /* next module to take; first failure, -1 */
    char *log;                 /* NVRTC's log of the failure (malloc'd) */
    char err[LETHE_ERR_LEN];
    uint8_t **cubin;
    size_t *size;
    pthread_mutex_t mu;
} Job;

static void *compile_worker(void *arg) {
    Job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int m = j->failed >= 0 || j->next >= j->cp->modules.len ? -1 : j->next++;
        pthread_mutex_unlock(&j->mu);
        if (m < 0)
            return NULL;
        char err[LETHE_ERR_LEN], *log = NULL;
        int rc = lethe_nvrtc_compile(j->nv, j->cp->modules.data[m].source, xfmt("lethe_module_%d.cu", m),
                                     j->cp->options.data, j->cp->options.len, &j->cubin[m], &j->size[m], &log, err);
        pthread_mutex_lock(&j->mu);
        if (rc && j->failed < 0) {
            j->failed = m;
            j->log = log;
            log = NULL;
            snprintf(j->err, sizeof j->err, "%s", err);
        }
        pthread_mutex_unlock(&j->mu);
        free(log);
    }
}

/* The module's source with line numbers, in a file the user can open. */
static const char *save_source(const char *src, int m) {
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *path = xfmt("%s/lethec-cuda-%d-module%d.cu", dir, (int)getpid(), m);
    char err[LETHE_ERR_LEN];
    return fs_write_atomic(path, src, strlen(src), err) ? "(could not be saved)" : path;
}

static void compile_modules(CuProgram *cp) {
    char err[LETHE_ERR_LEN];
    lethe_nvrtc *nv = lethe_nvrtc_open(err);
    if (!nv) {
        fprintf(stderr, "lethec: note: %s; the CUDA program carries its source only and is compiled on first use\n", err);
        return;
    }
    int n = cp->modules.len;
    Job j = {.nv = nv, .cp = cp, .failed = -1};
    j.cubin = xalloc(sizeof(uint8_t *) * ((size_t)n + 1));
    j.size = xalloc(sizeof(size_t) * ((size_t)n + 1));
    pthread_mutex_init(&j.mu, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nthreads = cores < 1 ? 1 : cores > 64 ? 64 : (int)cores;
    nthreads = nthreads < n ? nthreads : n;
    pthread_t *th = xalloc(sizeof(pthread_t) * ((size_t)nthreads + 1));
    int started = 0;
    for (int i = 0; i < nthreads; i++)
        started += pthread_create(&th[started], NULL, compile_worker, &j) == 0;
    if (!started)
        compile_worker(&j);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&j.mu);
    int major, minor;
    lethe_nvrtc_version(nv, &major, &minor);
    lethe_nvrtc_close(nv);
    if (j.failed >= 0) {
        const char *path = save_source(cp->modules.data[j.failed].source, j.failed);
        char *log = xstrdup(j.log ? j.log : "");
        free(j.log);
        for (int i = 0; i < n; i++)
            free(j.cubin[i]);
        error_noloc("NVRTC %d.%d cannot compile CUDA module %d: %s\n%s---> HINT: the module's source is %s; a "
                    "generated kernel that does not compile is a bug in lethec's CUDA renderer",
                    major, minor, j.failed, j.err, log, path);
    }
    for (int i = 0; i < n; i++) {
        /* the CUBIN goes into the arena, where the rest of the program lives */
        uint8_t *c = xalloc(j.size[i] + 1);
        memcpy(c, j.cubin[i], j.size[i]);
        free(j.cubin[i]);
        cp->modules.data[i].cubin = c;
        cp->modules.data[i].cubin_size = j.size[i];
    }
}

static void add_options(CuProgram *cp) {
    vec_push(&cp->options, xfmt("--gpu-architecture=%s", cp->arch));
    vec_push(&cp->options, "--std=c++17");
    /* without fast math, no contraction either: the CPU backend does not
     * fuse multiplies and adds then, and the parity tests compare the two */
    vec_push(&cp->options, cp->opt->fast_math ? "--use_fast_math" : "--fmad=false");
    if (cp->opt->nvrtc_flags)
        for (char *t = strtok(xstrdup(cp->opt->nvrtc_flags), " \t"); t; t = strtok(NULL, " \t"))
            vec_push(&cp->options, t);
}

static bool valid_arch(const char *a) {
    if (strncmp(a, "sm_", 3) || !a[3])
        return false;
    for (const char *c = a + 3; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c == 'a' && !c[1])))
            return false;
    return true;
}

void cuda_emit(const CompUnit *cu, LProgram **progs, int nprogs, EmitKind kind, const char *out_path,
               const BackendOptions *opt) {
    if (kind == EMIT_HEADER) {
        emit_header(cu, progs, nprogs, out_path, opt->program_symbol ? opt->program_symbol : LETHE_PROGRAM_SYMBOL);
        return;
    }
    CuProgram cp = {.opt = opt, .arch = opt->cuda_arch ? opt->cuda_arch : "sm_90", .gemm_kernel = {-1, -1, -1, -1}};
    if (!valid_arch(cp.arch))
        error_noloc("--arch=%s is not a real GPU architecture\n---> HINT: write sm_ and the compute capability, e.g. "
                    "--arch=sm_90 for an H100 (NVRTC makes a CUBIN only for real architectures)", cp.arch);
    for (int i = 0; i < nprogs; i++) {
        loopir_verify(progs[i]);
        CuEntry ce = {.p = progs[i]};
        for (int k = 0; k < progs[i]->kernels.len; k++)
            cu_render_kernel(&cp, &ce, progs[i], progs[i]->kernels.data[k], i);
        vec_push(&cp.entries, ce);
    }
    add_options(&cp);
    build_modules(&cp);
    if (kind == EMIT_CU) {
        Sb all = {0};
        sb_printf(&all, "/* CUDA program of %d entries, %d kernels in %d modules, for %s.\n * NVRTC options:", nprogs,
                  cp.kernels.len, cp.modules.len, cp.arch);
        for (int i = 0; i < cp.options.len; i++)
            sb_printf(&all, " %s", cp.options.data[i]);
        sb_puts(&all, " */\n");
        for (int m = 0; m < cp.modules.len; m++)
            sb_printf(&all, "\n/* ======== module %d ======== */\n%s", m, cp.modules.data[m].source);
        char err[LETHE_ERR_LEN];
        if (fs_write_atomic(out_path, all.s ? all.s : "", all.len, err))
            error_noloc("%s", err);
        return;
    }
    compile_modules(&cp);
    cu_emit_host(cu, progs, nprogs, &cp, kind, out_path);
}
