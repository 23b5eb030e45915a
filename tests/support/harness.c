/* harness.c: see harness.h */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "safetensors.h"

int th_failures;

void th_pass(const char *name) { printf("PASS %s\n", name); fflush(stdout); }

void th_fail(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    th_failures++;
}

void th_skip(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("SKIP %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

bool th_check(bool cond, const char *name, const char *fmt, ...) {
    if (cond) {
        th_pass(name);
        return true;
    }
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    th_failures++;
    return false;
}

int th_exit(void) { return th_failures ? 1 : 0; }

const char *th_tmpdir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *b = getenv("B") ? getenv("B") : "build";
        snprintf(dir, sizeof dir, "%s/tests/tmp/%d", b, (int)getpid());
        char cmd[600];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "harness: cannot create %s\n", dir);
            exit(2);
        }
    }
    return dir;
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

/* $LETHEC, else $B/lethec, else the lethec of the build folder this test
 * binary lives in (B/tests/test_x -> B/lethec: a test run by hand from
 * build-x/ uses build-x's compiler), else build/lethec. */
static const char *lethec_path(void) {
    const char *p = getenv("LETHEC");
    if (p)
        return p;
    static char buf[4096];
    if (getenv("B")) {
        snprintf(buf, sizeof buf, "%s/lethec", getenv("B"));
        return buf;
    }
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 16);
    if (n > 0) {
        buf[n] = 0;
        char *slash = strrchr(buf, '/');
        if (slash && slash - buf >= 6 && !strncmp(slash - 6, "/tests", 6)) {
            strcpy(slash - 6, "/lethec");
            if (access(buf, X_OK) == 0)
                return buf;
        }
    }
    return "build/lethec";
}

int th_run_lethec(const char *args, char **out) {
    char log[600], cmd[4096 + 4096 + 640];
    static int counter;
    snprintf(log, sizeof log, "%s/lethec_%d.log", th_tmpdir(), counter++);
    snprintf(cmd, sizeof cmd, "%s %s > '%s' 2>&1", lethec_path(), args, log);
    int rc = system(cmd);
    if (out)
        *out = read_all(log);
    unlink(log);
    if (rc == -1)
        return -1;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

const lethe_program *th_compile_file(const char *lth_path, const char *flags, char **err) {
    static int counter;
    char so[600], args[2048];
    const char *base = strrchr(lth_path, '/') ? strrchr(lth_path, '/') + 1 : lth_path;
    snprintf(so, sizeof so, "%s/%s.%d.so", th_tmpdir(), base, counter++);
    snprintf(args, sizeof args, "'%s' --emit=so -o '%s' %s", lth_path, so, flags ? flags : "");
    char *out = NULL;
    int rc = th_run_lethec(args, &out);
    if (rc != 0) {
        if (err)
            *err = out;
        else {
            fprintf(stderr, "%s", out);
            free(out);
        }
        return NULL;
    }
    free(out);
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        if (err)
            *err = strdup(dlerror());
        return NULL;
    }
    const lethe_program *p = dlsym(h, LETHE_PROGRAM_SYMBOL);
    if (!p && err)
        *err = strdup("no lethe_program symbol in the shared object");
    if (p && p->abi_version != LETHE_ABI_VERSION) {
        if (err)
            *err = strdup("ABI version mismatch");
        return NULL;
    }
    return p;
}

const lethe_program *th_compile_source(const char *name, const char *source, const char *flags, char **err) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s.lth", th_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        if (err)
            *err = strdup(strerror(errno));
        return NULL;
    }
    fputs(source, f);
    fclose(f);
    return th_compile_file(path, flags, err);
}

const lethe_entry *th_entry(const lethe_program *p, const char *name) {
    for (uint32_t i = 0; p && i < p->nentries; i++)
        if (!strcmp(p->entries[i].name, name))
            return &p->entries[i];
    return NULL;
}

int th_arg(const lethe_entry *e, const char *name) {
    for (int i = 0; e && i < e->nargs; i++)
        if (!strcmp(e->args[i].name, name))
            return i;
    return -1;
}

int64_t th_arg_numel(const lethe_arg *a) {
    int64_t n = 1;
    for (int i = 0; i < a->rank; i++)
        n *= a->shape[i];
    return n;
}

size_t th_dtype_size(int dtype) {
    switch (dtype) {
    case LETHE_BOOL: return 1;
    case LETHE_I32: return 4;
    case LETHE_F32: return 4;
    case LETHE_F64: return 8;
    }
    return 0;
}

static void *aligned_zeroed(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) {
        fprintf(stderr, "harness: out of memory\n");
        exit(2);
    }
    memset(p, 0, n ? n : 64);
    return p;
}

th_frame *th_frame_new(const lethe_entry *e) {
    th_frame *f = calloc(1, sizeof *f);
    f->entry = e;
    f->args = calloc((size_t)e->nargs + 1, sizeof(void *));
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        f->args[i] = aligned_zeroed((size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
        if (a->kind == LETHE_SCALAR && !isnan(a->scalar_default)) {
            if (a->dtype == LETHE_F32) *(float *)f->args[i] = (float)a->scalar_default;
            if (a->dtype == LETHE_F64) *(double *)f->args[i] = a->scalar_default;
            if (a->dtype == LETHE_I32) *(int32_t *)f->args[i] = (int32_t)a->scalar_default;
        }
    }
    f->workspace = aligned_zeroed(e->workspace_bytes);
    return f;
}

void th_frame_free(th_frame *f) {
    if (!f)
        return;
    for (int i = 0; i < f->entry->nargs; i++)
        free(f->args[i]);
    free(f->args);
    free(f->workspace);
    free(f);
}

int th_call(th_frame *f, lethe_ctx *ctx) {
    lethe_ctx serial = {0};
    return f->entry->fn(f->args, f->workspace, ctx ? ctx : &serial);
}

static void *arg_ptr(th_frame *f, const char *arg, int dtype) {
    int i = th_arg(f->entry, arg);
    if (i < 0) {
        fprintf(stderr, "harness: entry %s has no argument %s\n", f->entry->name, arg);
        exit(2);
    }
    if (f->entry->args[i].dtype != dtype) {
        fprintf(stderr, "harness: argument %s of %s has dtype %d, not %d\n", arg, f->entry->name,
                f->entry->args[i].dtype, dtype);
        exit(2);
    }
    return f->args[i];
}
double *th_f64(th_frame *f, const char *arg) { return arg_ptr(f, arg, LETHE_F64); }
float *th_f32(th_frame *f, const char *arg) { return arg_ptr(f, arg, LETHE_F32); }
int32_t *th_i32(th_frame *f, const char *arg) { return arg_ptr(f, arg, LETHE_I32); }

static bool ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

void th_fill_args(th_frame *f, unsigned kinds, int classes, uint64_t *seed) {
    const lethe_entry *e = f->entry;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        double lo = -1, hi = 1;
        if (a->kind == LETHE_SCALAR || a->kind == LETHE_OUTPUT || !(kinds & (1u << a->kind)))
            continue;
        if (a->dtype == LETHE_I32)
            lo = 0, hi = classes;
        else if (ends_with(a->name, "gamma"))
            lo = 0.6, hi = 1.4;
        else if (ends_with(a->name, "beta") || ends_with(a->name, ".b") || ends_with(a->name, "mean"))
            lo = -0.3, hi = 0.3;
        else if (ends_with(a->name, "var"))
            lo = 0.5, hi = 1.5;
        else if (a->kind == LETHE_PARAM)
            lo = -0.6, hi = 0.6;
        th_fill(f->args[i], a->dtype, th_arg_numel(a), lo, hi, (*seed)++);
    }
}

void th_worst_add(th_worst *w, double err, const char *what) {
    if (!(err <= w->err)) {
        w->err = err;
        snprintf(w->what, sizeof w->what, "%.199s", what);
    }
}

double *th_ref_f64(const st_file *f, const char *what, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        printf("# %s: no tensor %s in the reference\n", what, name);
        return NULL;
    }
    *n = st_numel(t);
    double *v = malloc((size_t)(*n + 1) * sizeof *v);
    char err[LETHE_ERR_LEN];
    if (st_read_as(t, ST_F64, v, *n, err)) {
        printf("# %s\n", err);
        free(v);
        return NULL;
    }
    return v;
}

void th_copy_model(th_frame *dst, const th_frame *src, const char *binding) {
    const lethe_entry *de = dst->entry, *se = src->entry;
    for (int i = 0; i < de->nargs; i++) {
        const lethe_arg *d = &de->args[i];
        if (d->kind != LETHE_PARAM && d->kind != LETHE_BUFFER)
            continue;
        for (int j = 0; j < se->nargs; j++) {
            const lethe_arg *a = &se->args[j];
            int of_model = binding ? !strcmp(a->binding, binding) : (a->access & LETHE_WRITE) != 0;
            if ((a->kind == LETHE_PARAM || a->kind == LETHE_BUFFER) && of_model && !strcmp(a->path, d->path))
                memcpy(dst->args[i], src->args[j], (size_t)th_arg_numel(d) * th_dtype_size(d->dtype));
        }
    }
}

int th_copy_by_name(th_frame *to, const th_frame *from, unsigned kinds) {
    int missing = 0;
    for (int i = 0; i < to->entry->nargs; i++) {
        const lethe_arg *a = &to->entry->args[i];
        if (!(kinds & (1u << a->kind)))
            continue;
        int j = th_arg(from->entry, a->name);
        if (j < 0 || from->entry->args[j].dtype != a->dtype || th_arg_numel(&from->entry->args[j]) != th_arg_numel(a)) {
            missing++;
            continue;
        }
        memcpy(to->args[i], from->args[j], (size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
    }
    return missing;
}

double th_fd_err(const double *g, const double *fd, int64_t n, int64_t *at) {
    double mx = 0, worst = 0;
    for (int64_t j = 0; j < n; j++)
        mx = fmax(mx, fabs(fd[j]));
    double floor = mx > 0 ? 0.1 * mx : 1e-6;
    *at = 0;
    for (int64_t j = 0; j < n; j++) {
        double e = fabs(g[j] - fd[j]) / fmax(fabs(fd[j]), floor);
        if (!(e <= worst)) {
            worst = e;
            *at = j;
        }
    }
    return worst;
}

void th_fill(void *buf, int dtype, int64_t n, double lo, double hi, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        double u = (double)(s >> 11) * 0x1p-53;
        double v = lo + (hi - lo) * u;
        if (dtype != LETHE_I32 && fabs(v) < 1e-3 * (hi - lo))
            v = v < 0 ? v - 1e-2 * (hi - lo) : v + 1e-2 * (hi - lo);  /* never (almost) zero */
        switch (dtype) {
        case LETHE_F32: ((float *)buf)[i] = (float)v; break;
        case LETHE_F64: ((double *)buf)[i] = v; break;
        case LETHE_I32: ((int32_t *)buf)[i] = (int32_t)floor(v); break;
        case LETHE_BOOL: ((uint8_t *)buf)[i] = v > (lo + hi) / 2; break;
        }
    }
}

double th_max_rel_err(const void *a, const void *b, int dtype, int64_t n, double floor) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double x, y;
        switch (dtype) {
        case LETHE_F32: x = ((const float *)a)[i]; y = ((const float *)b)[i]; break;
        case LETHE_F64: x = ((const double *)a)[i]; y = ((const double *)b)[i]; break;
        case LETHE_I32: x = ((const int32_t *)a)[i]; y = ((const int32_t *)b)[i]; break;
        default: x = ((const uint8_t *)a)[i]; y = ((const uint8_t *)b)[i]; break;
        }
        double d = fabs(x - y) / fmax(fabs(y), floor);
        if (isnan(x) != isnan(y) || (isnan(d) && !isnan(x)))
            return INFINITY;
        if (d > worst)
            worst = d;
    }
    return worst;
}
