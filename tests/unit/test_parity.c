/* test_parity.c: ResNet-18 compiled by lethec against PyTorch.
 *
 * tests/reference/<config>.safetensors hold what the kuangliu/pytorch-cifar
 * ResNet-18 computes in float64 under torch (written by
 * tests/reference/make_reference.py, which defines the formulas; README.md
 * there says how to regenerate). Nothing of the model is stored: parameters,
 * buffers, the input batch and the labels come from closed-form formulas that
 * this file implements too, checked first against per-tensor sums stored in
 * the reference ("formula": a failure there is this file's or the script's
 * fault, not the compiler's).
 *
 * Programs: tests/lth/parity.lth (width 16, 1x28x28, batch 8: Fashion-MNIST)
 * and tests/lth/parity_w64.lth (width 64, 3x32x32, batch 4: CIFAR-10),
 * compiled in parallel (lethec spends ~25 s per program in LLVM -O3) as
 *   f32  the default (-O3, fast math), as the experiments run: both;
 *   f64  --f64 -O0, the same graphs in double precision: w16 (w64 too under
 *        LETHE_TEST_LONG=1, `make test-long`).
 * Entries run on a 2-thread lethe_pool. Checks, per configuration and mode:
 *
 *   logits, loss   train mode (batch statistics) at the initial state: the
 *                  probe fn's, and the loss the step reports
 *   grad_x         d loss / d input batch (the probe fn)
 *   grads          d loss / d p for every parameter: the step, run once with
 *                  lr = 0 and wd = 0 from v = 0, leaves v = the gradient
 *   eval_logits    eval mode (running statistics) at the initial state
 *   sgd ...        3 steps of graphs/train/sgd.lth with the reference's lr,
 *                  momentum and wd from init_state: each step's loss, the
 *                  change p3 - p0 of every parameter, the running statistics
 *                  after the steps, eval-mode logits after the steps
 *   sgd algebra    at each of those steps, against the step's own gradient
 *                  at the point it started from (the lr = 0, wd = 0 run from
 *                  the same p and buffers): v' = momentum v + g + wd p and
 *                  p' = p - lr v' elementwise, the same running statistics
 *                  and loss; exact up to a few roundings, so it holds however
 *                  far the f32 trajectory drifts from the reference's
 *
 * Error of a tensor: max_i |lethe_i - ref_i| / max_i |ref_i|, the max taken
 * over the whole reference tensor (llm.c's measure); a check reports its
 * worst tensor. Parameter-sized tensors are stored as samples at formula
 * positions plus the L2 norm and max-abs of the whole tensor; their error is
 * the larger of the sample error and | ||lethe|| - ||ref|| | / ||ref||.
 *
 * Tolerances. f32: 1e-4 on forward values at the initial state (logits,
 * loss, eval logits), 1e-3 on gradients. A ReLU whose input lies within f32
 * rounding of 0 flips its gradient mask and moves a batch-norm gradient of a
 * small batch by ~1e-3; make_reference.py picks the input batch so that every
 * ReLU input of that pass is at least 1e-6 of its layer's rms away from 0.
 * The 3-step trajectory cannot be kept clear of kinks that way (every step is
 * a new pass; with other input batches torch's own f32 run drifted from its
 * f64 one by up to 5e-2 after 3 steps), so in f32 the trajectory is checked
 * against TOL_STEPS_F32, a bound against gross errors only, and the update
 * itself by "sgd algebra" (1e-6). f64: 1e-6 on everything, the trajectory
 * included (the references are stored in f32: their rounding, 6e-8, is the
 * floor); this is the check of the update semantics against torch (momentum,
 * weight decay, running statistics with the unbiased variance, eps), 1e-12 on
 * the algebra.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "safetensors.h"
#include "threadpool.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

static const double TOL_STEPS_F32 = 1e-1;

typedef struct Config {
    const char *name;   /* reference file stem */
    const char *lth;    /* program */
    const char *pfx;    /* entry prefix */
    int f64;            /* 1: also in f64; 2: also in f64 under LETHE_TEST_LONG */
} Config;

/* The f64 run checks semantics, which do not depend on the width: w64's
 * (12 s at -O0) runs with `make test-long` only. */
static const Config configs[] = {
    {"resnet18_w16_c1_28", "tests/lth/parity.lth", "w16", 1},
    {"resnet18_w64_c3_32", "tests/lth/parity_w64.lth", "w64", 2},
};
enum { NCFG = sizeof configs / sizeof configs[0] };

typedef struct Mode {
    const char *tag;
    const char *flags;   /* lethec flags */
    double tol_fwd, tol_grad, tol_steps, tol_alg;
} Mode;

static const Mode modes[] = {
    {"f32", "", 1e-4, 1e-3, TOL_STEPS_F32, 1e-6},
    {"f64", "--f64 -O0", 1e-6, 1e-6, 1e-6, 1e-12},
};
enum { NMODE = sizeof modes / sizeof modes[0] };

/* ------------------------------------------------------------------ formulas
 * (tests/reference/make_reference.py has the same, with the definitions) */

static uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static uint32_t fnv1a32(const char *s) {
    uint32_t h = 0x811c9dc5u;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 0x01000193u;
    }
    return h;
}

static uint32_t key_of(const char *name) { return lowbias32(fnv1a32(name)); }

/* an odd multiple of 2^-24 in (-1, 1) */
static double unit_s(uint32_t key, uint32_t i) {
    uint32_t h = lowbias32(lowbias32(i) ^ key);
    return (double)(2 * (int64_t)(h >> 8) + 1 - ((int64_t)1 << 24)) * 0x1p-24;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* value i of the tensor at `path`, rounded to f32 (the formula's values are
 * f32 numbers; an f64 program gets them exactly) */
static void fill_tensor(const char *path, int rank, const int64_t *shape, int64_t n, int dtype, void *dst) {
    uint32_t k = key_of(path);
    double scale = 0.1, offset = 0;
    if (ends_with(path, ".gamma"))
        scale = 0.25, offset = 1;
    else if (ends_with(path, ".var"))
        scale = 0.5, offset = 1;
    else if (ends_with(path, ".beta") || ends_with(path, ".mean"))
        scale = 0.1;
    else if (rank >= 2)
        scale = sqrt(3.0 / (double)(n / shape[0]));
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(offset + scale * unit_s(k, (uint32_t)i));
        if (dtype == LETHE_F64)
            ((double *)dst)[i] = v;
        else
            ((float *)dst)[i] = v;
    }
}

/* sample positions of a tensor of n elements; returns how many (n if n <= kmax) */
static int64_t positions(const char *path, int64_t n, int64_t kmax, int64_t *pos) {
    if (n <= kmax) {
        for (int64_t i = 0; i < n; i++)
            pos[i] = i;
        return n;
    }
    uint32_t k2 = lowbias32(key_of(path) ^ 0x9e3779b9u);
    for (int64_t j = 0; j < kmax; j++) {
        int64_t lo = j * n / kmax, hi = (j + 1) * n / kmax;
        pos[j] = lo + (int64_t)(lowbias32((uint32_t)j ^ k2) % (uint32_t)(hi - lo));
    }
    return kmax;
}

/* ------------------------------------------------------------------ tensors */

typedef struct Tensor {
    const char *path;   /* "stem.w" (params, buffers) or the state's full name "v.stem.w" */
    int kind, dtype, rank;
    const int64_t *shape;
    int64_t n;
    void *data;
} Tensor;

typedef struct Model {
    int n;
    Tensor *t;
} Model;

static void *alloc64(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64)) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

static Tensor *find(Model *m, const char *path) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].path, path))
            return &m->t[i];
    return NULL;
}

/* the params and buffers (want_kind LETHE_PARAM) or the rule state
 * (LETHE_STATE) that an entry declares */
static void model_from_entry(Model *m, const lethe_entry *e, int want_kind) {
    m->n = 0;
    m->t = calloc((size_t)e->nargs + 1, sizeof *m->t);
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        int kind = a->kind == LETHE_BUFFER ? LETHE_PARAM : a->kind;
        if (kind != want_kind)
            continue;
        Tensor *t = &m->t[m->n++];
        t->path = want_kind == LETHE_STATE ? a->name : a->path;
        t->kind = a->kind;
        t->dtype = a->dtype;
        t->rank = a->rank;
        t->shape = a->shape;
        t->n = th_arg_numel(a);
        t->data = alloc64((size_t)t->n * th_dtype_size(a->dtype));
    }
}

static void model_free(Model *m) {
    for (int i = 0; i < m->n; i++)
        free(m->t[i].data);
    free(m->t);
}

/* dst and src come from the same entry */
static void model_copy(Model *dst, const Model *src) {
    for (int i = 0; i < src->n; i++)
        memcpy(dst->t[i].data, src->t[i].data, (size_t)src->t[i].n * th_dtype_size(src->t[i].dtype));
}

static void model_zero(Model *m) {
    for (int i = 0; i < m->n; i++)
        memset(m->t[i].data, 0, (size_t)m->t[i].n * th_dtype_size(m->t[i].dtype));
}

static void model_fill(Model *m) {
    for (int i = 0; i < m->n; i++)
        fill_tensor(m->t[i].path, m->t[i].rank, m->t[i].shape, m->t[i].n, m->t[i].dtype, m->t[i].data);
}

/* ------------------------------------------------------------------ calls */

typedef struct Run {
    Model *model, *state;
    float *x32;
    double *x64;
    int32_t *y;
    double lr, momentum, wd;
    lethe_ctx *ctx;
} Run;

typedef struct Call {
    const lethe_entry *e;
    void **args;
    char *owned;   /* 1 where args[i] was allocated here */
} Call;

typedef struct View {
    const void *p;
    int dtype;
} View;

static void call_free(Call *c) {
    for (int i = 0; c->args && i < c->e->nargs; i++)
        if (c->owned[i])
            free(c->args[i]);
    free(c->args);
    free(c->owned);
    memset(c, 0, sizeof *c);
}

static View out_of(Call *c, const char *name) {
    int i = th_arg(c->e, name);
    if (i < 0 || c->e->args[i].kind != LETHE_OUTPUT) {
        fprintf(stderr, "entry %s has no output %s\n", c->e->name, name);
        exit(2);
    }
    return (View){c->args[i], c->e->args[i].dtype};
}

/* calls e on the run's tensors; 0 on success, else prints why */
static int call(Call *c, const lethe_entry *e, Run *r) {
    c->e = e;
    c->args = calloc((size_t)e->nargs + 1, sizeof(void *));
    c->owned = calloc((size_t)e->nargs + 1, 1);
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        Tensor *t = NULL;
        switch (a->kind) {
        case LETHE_PARAM:
        case LETHE_BUFFER: t = find(r->model, a->path); break;
        case LETHE_STATE: t = find(r->state, a->name); break;
        case LETHE_INPUT:
            if (ends_with(a->name, "x") && a->dtype == LETHE_F32)
                c->args[i] = r->x32;
            else if (ends_with(a->name, "x") && a->dtype == LETHE_F64)
                c->args[i] = r->x64;
            else if (ends_with(a->name, "y") && a->dtype == LETHE_I32)
                c->args[i] = r->y;
            break;
        case LETHE_SCALAR: {
            double v = !strcmp(a->name, "lr") ? r->lr : !strcmp(a->name, "momentum") ? r->momentum
                     : !strcmp(a->name, "wd") ? r->wd : NAN;
            if (isnan(v) || (a->dtype != LETHE_F32 && a->dtype != LETHE_F64)) {
                printf("# %s: unexpected scalar %s\n", e->name, a->name);
                return 1;
            }
            c->args[i] = alloc64(8);
            c->owned[i] = 1;
            if (a->dtype == LETHE_F64)
                *(double *)c->args[i] = v;
            else
                *(float *)c->args[i] = (float)v;
            break;
        }
        case LETHE_OUTPUT:
            c->args[i] = alloc64((size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
            c->owned[i] = 1;
            break;
        }
        if (a->kind == LETHE_PARAM || a->kind == LETHE_BUFFER || a->kind == LETHE_STATE) {
            if (!t || t->n != th_arg_numel(a) || t->dtype != a->dtype) {
                printf("# %s: no tensor for argument %s\n", e->name, a->name);
                return 1;
            }
            c->args[i] = t->data;
        }
        if (!c->args[i]) {
            printf("# %s: cannot bind argument %s\n", e->name, a->name);
            return 1;
        }
    }
    void *ws = alloc64((size_t)e->workspace_bytes);
    int rc = e->fn(c->args, ws, r->ctx);
    free(ws);
    if (rc)
        printf("# %s returned %d\n", e->name, rc);
    return rc;
}

/* ------------------------------------------------------------------ comparisons */

typedef struct Ref {
    st_file *f;
    const char *name;
} Ref;

static void report(const char *cfg, const char *check, th_worst *w, double tol) {
    char name[400];
    if (w->missing) {
        th_fail(cfg, "%s: reference or output missing (see above)", check);
        return;
    }
    snprintf(name, sizeof name, "%s %s: max rel err %.2e%s%s (tol %.0e)", cfg, check, w->err, w->what[0] ? " at " : "",
             w->what, tol);
    if (w->err <= tol)
        th_pass(name);
    else
        th_fail(name, "above tolerance");
}

/* a whole tensor: lethe a[n] against the reference `name` */
static void cmp_full(Ref *r, const char *name, View a, int64_t n, th_worst *w, const char *what) {
    int64_t m;
    double *b = th_ref_f64(r->f, r->name, name, &m);
    if (!b || m != n) {
        if (b)
            printf("# %s: %s has %lld elements, lethe %lld\n", r->name, name, (long long)m, (long long)n);
        w->missing = 1;
        free(b);
        return;
    }
    double d = 0, amax = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(lethe_elem_f64(a.p, a.dtype, i) - b[i]);
        d = isnan(e) || e > d ? e : d;
        amax = fmax(amax, fabs(b[i]));
    }
    th_worst_add(w, d / fmax(amax, 1e-30), what);
    free(b);
}

/* a parameter-sized tensor: lethe values t - base (base may be NULL) against
 * the samples "<kind>/<path>" and the norm and max-abs in stats/<path> at
 * [inorm, inorm + 1] */
static void cmp_sampled(Ref *r, const char *kind, const char *path, const Tensor *t, const Tensor *base,
                        int64_t kmax, int inorm, th_worst *w) {
    char name[256];
    snprintf(name, sizeof name, "%s/%s", kind, path);
    int64_t m = 0, ns = 0;
    double *b = th_ref_f64(r->f, r->name, name, &m);
    snprintf(name, sizeof name, "stats/%s", path);
    double *st = th_ref_f64(r->f, r->name, name, &ns);
    int64_t *pos = malloc((size_t)(kmax < t->n ? kmax : t->n) * sizeof *pos + 8);
    int64_t k = positions(path, t->n, kmax, pos);
    if (!b || !st || m != k || ns < inorm + 2) {
        printf("# %s: %s/%s: %lld samples, want %lld\n", r->name, kind, path, (long long)m, (long long)k);
        w->missing = 1;
        free(b), free(st), free(pos);
        return;
    }
#define VAL(i) (lethe_elem_f64(t->data, t->dtype, i) - (base ? lethe_elem_f64(base->data, base->dtype, i) : 0))
    double d = 0, ss = 0;
    for (int64_t j = 0; j < k; j++) {
        double e = fabs(VAL(pos[j]) - b[j]);
        d = isnan(e) || e > d ? e : d;
    }
    for (int64_t i = 0; i < t->n; i++)
        ss += VAL(i) * VAL(i);
#undef VAL
    double norm = st[inorm], amax = st[inorm + 1];
    double e1 = d / fmax(amax, 1e-30), e2 = fabs(sqrt(ss) - norm) / fmax(norm, 1e-30);
    char what[200];
    snprintf(what, sizeof what, "%.150s%s", path, e2 > e1 ? " (norm)" : "");
    th_worst_add(w, isnan(e2) || e2 > e1 ? e2 : e1, what);
    free(b), free(st), free(pos);
}

static void cmp_scalar(Ref *r, const char *name, int64_t idx, double a, th_worst *w, const char *what) {
    int64_t m;
    double *b = th_ref_f64(r->f, r->name, name, &m);
    if (!b || idx >= m) {
        w->missing = 1;
        free(b);
        return;
    }
    th_worst_add(w, fabs(a - b[idx]) / fmax(fabs(b[idx]), 1e-30), what);
    free(b);
}

/* sum and sum of squares of n values against stats entry [sum, sumsq] */
static void cmp_stats(Ref *r, const char *name, View a, int64_t n, th_worst *w, const char *what) {
    int64_t ns;
    double *st = th_ref_f64(r->f, r->name, name, &ns), s = 0, ss = 0;
    if (!st || ns < 2) {
        w->missing = 1;
        free(st);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double v = lethe_elem_f64(a.p, a.dtype, i);
        s += v, ss += v * v;
    }
    th_worst_add(w, fmax(fabs(s - st[0]) / fmax(fabs(st[0]), 1), fabs(ss - st[1]) / fmax(st[1], 1e-30)), what);
    free(st);
}

/* ------------------------------------------------------------------ one configuration */

static long meta_int(Ref *r, const char *key) {
    const char *v = st_meta_get(r->f, key);
    return v ? strtol(v, NULL, 10) : -1;
}
static double meta_num(Ref *r, const char *key) {
    const char *v = st_meta_get(r->f, key);
    return v ? strtod(v, NULL) : NAN;
}

/* the params and buffers the reference lists against the step's */
static int check_names(Ref *r, Model *m) {
    const char *lists[2] = {st_meta_get(r->f, "params"), st_meta_get(r->f, "buffers")};
    int count = 0, bad = 0;
    for (int l = 0; l < 2; l++) {
        if (!lists[l])
            return 1;
        char *s = strdup(lists[l]), *save = NULL;
        for (char *p = strtok_r(s, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            Tensor *t = find(m, p);
            if (!t || (t->kind == LETHE_BUFFER) != (l == 1)) {
                printf("# %s: %s %s is not in the compiled model\n", r->name, l ? "buffer" : "param", p);
                bad = 1;
            }
            count++;
        }
        free(s);
    }
    if (count != m->n) {
        printf("# %s: the reference has %d params and buffers, the compiled model %d\n", r->name, count, m->n);
        bad = 1;
    }
    return bad;
}

static void run_config(const Config *cfg, const Mode *mode, const lethe_program *prog, lethe_ctx *ctx) {
    char C[64], path[512], err[LETHE_ERR_LEN], en[3][64], cname[128];
    snprintf(C, sizeof C, "%s %s", cfg->pfx, mode->tag);
    snprintf(path, sizeof path, "tests/reference/%s.safetensors", cfg->name);
    Ref ref = {.name = cfg->name};
    if (st_load(path, 16u << 20, &ref.f, err)) {
        th_fail(C, "reference: %s", err);
        return;
    }
    const char *fmt = st_meta_get(ref.f, "format");
    long batch = meta_int(&ref, "batch"), channels = meta_int(&ref, "channels"), hw = meta_int(&ref, "height");
    long classes = meta_int(&ref, "classes"), steps = meta_int(&ref, "steps"), kmax = meta_int(&ref, "samples");
    long seed = meta_int(&ref, "seed");
    if (!fmt || strcmp(fmt, "lethe-parity-1") || batch < 1 || channels < 1 || hw < 1 || classes < 1 || steps < 1 ||
        kmax < 1 || seed < 0) {
        th_fail(C, "reference %s: unknown format or missing metadata", path);
        st_free(ref.f);
        return;
    }
    snprintf(en[0], sizeof en[0], "%s_step", cfg->pfx);
    snprintf(en[1], sizeof en[1], "%s_probe", cfg->pfx);
    snprintf(en[2], sizeof en[2], "%s_eval", cfg->pfx);
    const lethe_entry *step = th_entry(prog, en[0]), *probe = th_entry(prog, en[1]), *eval = th_entry(prog, en[2]);
    snprintf(path, sizeof path, "%s_step.init_state", cfg->pfx);
    const lethe_entry *init_state = th_entry(prog, path);
    if (!step || !probe || !eval || !init_state) {
        th_fail(C, "program lacks an entry (%s, %s, %s, %s.init_state)", en[0], en[1], en[2], en[0]);
        st_free(ref.f);
        return;
    }
    Model model, state, p0;
    model_from_entry(&model, step, LETHE_PARAM);
    model_from_entry(&p0, step, LETHE_PARAM);
    model_from_entry(&state, step, LETHE_STATE);
    int64_t nx = batch * channels * hw * hw;
    Run run = {.model = &model, .state = &state, .ctx = ctx};
    run.x32 = alloc64((size_t)nx * sizeof(float));
    run.x64 = alloc64((size_t)nx * sizeof(double));
    run.y = alloc64((size_t)batch * sizeof(int32_t));
    {
        char xname[64];
        snprintf(xname, sizeof xname, "input.x.%ld", seed);
        uint32_t kx = key_of(xname), ky = key_of("input.y");
        for (int64_t i = 0; i < nx; i++)
            run.x64[i] = run.x32[i] = (float)unit_s(kx, (uint32_t)i);
        for (int64_t i = 0; i < batch; i++)
            run.y[i] = (int32_t)(lowbias32(lowbias32((uint32_t)i) ^ ky) % (uint32_t)classes);
    }
    Call c = {0};

    /* formula: names, shapes, initial values and the batch agree with the reference */
    {
        th_worst w = {0};
        snprintf(cname, sizeof cname, "%s formula", C);
        model_fill(&model);
        model_fill(&p0);
        if (check_names(&ref, &model))
            w.missing = 1;
        for (int i = 0; i < model.n && !w.missing; i++) {
            char sn[256];
            snprintf(sn, sizeof sn, "stats/%s", model.t[i].path);
            cmp_stats(&ref, sn, (View){model.t[i].data, model.t[i].dtype}, model.t[i].n, &w, model.t[i].path);
        }
        if (!w.missing) {
            cmp_stats(&ref, "stats/input.x", (View){run.x64, LETHE_F64}, nx, &w, "input.x");
            cmp_stats(&ref, "stats/input.y", (View){run.y, LETHE_I32}, batch, &w, "input.y");
        }
        if (w.missing)
            th_fail(cname, "the compiled model's params and buffers differ from the reference's (see above)");
        else if (w.err > 1e-9)
            th_fail(cname, "initial values differ from the reference's by %.2e at %s: this file and "
                    "make_reference.py disagree on the formulas", w.err, w.what);
        else
            th_pass(cname);
        if (w.missing || w.err > 1e-9)
            goto out;
    }

    /* train-mode forward and input gradient; the step with lr = 0, wd = 0 from
     * v = 0 for the gradients */
    {
        th_worst wl = {0}, wloss = {0}, wx = {0}, wg = {0};
        if (call(&c, probe, &run)) {
            th_fail(C, "%s failed", probe->name);
            goto out;
        }
        View lv = out_of(&c, "out.1");
        cmp_full(&ref, "logits", out_of(&c, "out.0"), batch * classes, &wl, "logits");
        cmp_scalar(&ref, "loss", 0, lethe_elem_f64(lv.p, lv.dtype, 0), &wloss, "probe");
        cmp_full(&ref, "grad_x", out_of(&c, "out.2"), nx, &wx, "grad_x");
        call_free(&c);

        for (int i = 0; i < state.n; i++)
            memset(state.t[i].data, 0, (size_t)state.t[i].n * th_dtype_size(state.t[i].dtype));
        run.lr = 0, run.momentum = 0.9, run.wd = 0;
        if (call(&c, step, &run)) {
            th_fail(C, "%s failed", step->name);
            goto out;
        }
        lv = out_of(&c, "loss");
        cmp_scalar(&ref, "loss", 0, lethe_elem_f64(lv.p, lv.dtype, 0), &wloss, "step");
        call_free(&c);
        for (int i = 0; i < model.n; i++) {
            Tensor *t = &model.t[i];
            if (t->kind != LETHE_PARAM)
                continue;
            char vn[256];
            snprintf(vn, sizeof vn, "v.%s", t->path);
            Tensor *v = find(&state, vn);
            if (!v) {
                printf("# no momentum state %s\n", vn);
                wg.missing = 1;
                continue;
            }
            cmp_sampled(&ref, "grad", t->path, v, NULL, kmax, 2, &wg);
        }
        snprintf(cname, sizeof cname, "%s logits", C);
        report(cname, "train mode", &wl, mode->tol_fwd);
        snprintf(cname, sizeof cname, "%s loss", C);
        report(cname, "probe and step", &wloss, mode->tol_fwd);
        snprintf(cname, sizeof cname, "%s grad_x", C);
        report(cname, "input gradient", &wx, mode->tol_grad);
        snprintf(cname, sizeof cname, "%s grads", C);
        report(cname, "every parameter", &wg, mode->tol_grad);
    }

    /* eval-mode logits at the initial state */
    {
        th_worst w = {0};
        model_fill(&model);
        if (call(&c, eval, &run))
            w.missing = 1;
        else
            cmp_full(&ref, "eval_logits", out_of(&c, "out"), batch * classes, &w, "eval_logits");
        call_free(&c);
        snprintf(cname, sizeof cname, "%s eval_logits", C);
        report(cname, "running statistics", &w, mode->tol_fwd);
    }

    /* SGD with momentum; and, at every step, the step's algebra against its
     * own gradient: from (p, v, buffers) before the step, the same step with
     * lr = 0, wd = 0 from v = 0 gives g (in v) and the buffers after the step,
     * and then v' = momentum v + g + wd p, p' = p - lr v' must hold to a few
     * roundings (relative to the tensor's max), whatever the trajectory. */
    {
        th_worst wloss = {0}, wd = {0}, wb = {0}, we = {0}, walg = {0};
        Model prev, prevv, gm, gs;
        model_from_entry(&prev, step, LETHE_PARAM);
        model_from_entry(&prevv, step, LETHE_STATE);
        model_from_entry(&gm, step, LETHE_PARAM);
        model_from_entry(&gs, step, LETHE_STATE);
        Run grun = run;
        grun.model = &gm, grun.state = &gs, grun.lr = 0, grun.momentum = 0.9, grun.wd = 0;
        model_fill(&model);
        if (call(&c, init_state, &run)) {
            th_fail(C, "%s failed", init_state->name);
            goto out;
        }
        call_free(&c);
        run.lr = meta_num(&ref, "lr");
        run.momentum = meta_num(&ref, "momentum");
        run.wd = meta_num(&ref, "wd");
        int failed = 0;
        for (long s = 0; s < steps && !failed; s++) {
            model_copy(&prev, &model);
            model_copy(&prevv, &state);
            model_copy(&gm, &model);
            model_zero(&gs);
            if (call(&c, step, &run)) {
                failed = 1;
                break;
            }
            char what[300];
            View lv = out_of(&c, "loss");
            double loss = lethe_elem_f64(lv.p, lv.dtype, 0);
            snprintf(what, sizeof what, "step %ld", s + 1);
            cmp_scalar(&ref, "step_loss", s, loss, &wloss, what);
            call_free(&c);
            if (call(&c, step, &grun)) {
                failed = 1;
                break;
            }
            lv = out_of(&c, "loss");
            snprintf(what, sizeof what, "step %ld loss", s + 1);
            th_worst_add(&walg, fabs(lethe_elem_f64(lv.p, lv.dtype, 0) - loss) / fabs(loss), what);
            call_free(&c);
            for (int i = 0; i < model.n; i++) {
                Tensor *t = &model.t[i], *tp = &prev.t[i], *tg = &gm.t[i];
                double d = 0, amax = 0, dv = 0, vmax = 0;
                if (t->kind == LETHE_BUFFER) {   /* the same batch statistics */
                    for (int64_t j = 0; j < t->n; j++) {
                        double a = lethe_elem_f64(t->data, t->dtype, j);
                        d = fmax(d, fabs(a - lethe_elem_f64(tg->data, tg->dtype, j)));
                        amax = fmax(amax, fabs(a));
                    }
                    snprintf(what, sizeof what, "step %ld %.200s", s + 1, t->path);
                    th_worst_add(&walg, d / fmax(amax, 1e-30), what);
                    continue;
                }
                char vn[256];
                snprintf(vn, sizeof vn, "v.%s", t->path);
                Tensor *v = find(&state, vn), *vp = find(&prevv, vn), *g = find(&gs, vn);
                if (!v || !vp || !g) {
                    walg.missing = 1;
                    continue;
                }
                for (int64_t j = 0; j < t->n; j++) {
                    double vj = lethe_elem_f64(v->data, v->dtype, j), pj = lethe_elem_f64(tp->data, tp->dtype, j);
                    double want_v = run.momentum * lethe_elem_f64(vp->data, vp->dtype, j) + lethe_elem_f64(g->data, g->dtype, j) + run.wd * pj;
                    double a = lethe_elem_f64(t->data, t->dtype, j);
                    dv = fmax(dv, fabs(vj - want_v));
                    vmax = fmax(vmax, fabs(vj));
                    d = fmax(d, fabs(a - (pj - run.lr * vj)));
                    amax = fmax(amax, fabs(a));
                }
                snprintf(what, sizeof what, "step %ld %.200s (v)", s + 1, t->path);
                th_worst_add(&walg, dv / fmax(vmax, 1e-30), what);
                snprintf(what, sizeof what, "step %ld %.200s (p)", s + 1, t->path);
                th_worst_add(&walg, d / fmax(amax, 1e-30), what);
            }
        }
        model_free(&prev);
        model_free(&prevv);
        model_free(&gm);
        model_free(&gs);
        if (failed) {
            th_fail(C, "%s failed", step->name);
            goto out;
        }
        for (int i = 0; i < model.n; i++) {
            Tensor *t = &model.t[i];
            char bn[256];
            if (t->kind == LETHE_PARAM)
                cmp_sampled(&ref, "delta", t->path, t, find(&p0, t->path), kmax, 4, &wd);
            else {
                snprintf(bn, sizeof bn, "buffer/%s", t->path);
                cmp_full(&ref, bn, (View){t->data, t->dtype}, t->n, &wb, t->path);
            }
        }
        if (call(&c, eval, &run))
            we.missing = 1;
        else
            cmp_full(&ref, "eval_logits_after", out_of(&c, "out"), batch * classes, &we, "eval_logits_after");
        call_free(&c);
        char check[64];
        snprintf(check, sizeof check, "%ld steps", steps);
        snprintf(cname, sizeof cname, "%s sgd algebra", C);
        report(cname, "v' = momentum v + g + wd p, p' = p - lr v' at each step", &walg, mode->tol_alg);
        snprintf(cname, sizeof cname, "%s sgd loss", C);
        report(cname, check, &wloss, mode->tol_steps);
        snprintf(cname, sizeof cname, "%s sgd params", C);
        report(cname, "p - p0 after the steps", &wd, mode->tol_steps);
        snprintf(cname, sizeof cname, "%s sgd buffers", C);
        report(cname, "running statistics after the steps", &wb, mode->tol_steps);
        snprintf(cname, sizeof cname, "%s sgd eval_logits", C);
        report(cname, "after the steps", &we, mode->tol_steps);
    }
out:
    if (c.e)
        call_free(&c);
    model_free(&model);
    model_free(&p0);
    model_free(&state);
    free(run.x32);
    free(run.x64);
    free(run.y);
    st_free(ref.f);
}

/* ------------------------------------------------------------------ compile */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int wanted(int i, int m) {
    if (strcmp(modes[m].tag, "f64"))
        return 1;
    const char *lg = getenv("LETHE_TEST_LONG");
    return configs[i].f64 == 1 || (configs[i].f64 == 2 && lg && *lg && strcmp(lg, "0"));
}

/* compiles every (configuration, mode) program with lethec, all at once */
static void compile_all(const lethe_program *progs[NCFG][NMODE]) {
    const char *b = getenv("B") ? getenv("B") : "build";
    char lethec[512], cmd[8192] = "", so[NCFG][NMODE][600], log[NCFG][NMODE][600], rcf[NCFG][NMODE][600];
    if (getenv("LETHEC"))
        snprintf(lethec, sizeof lethec, "%s", getenv("LETHEC"));
    else
        snprintf(lethec, sizeof lethec, "%s/lethec", b);
    for (int i = 0; i < NCFG; i++)
        for (int m = 0; m < NMODE; m++) {
            if (!wanted(i, m))
                continue;
            const char *dir = th_tmpdir(), *p = configs[i].pfx, *t = modes[m].tag;
            snprintf(so[i][m], sizeof so[i][m], "%s/%s_%s.so", dir, p, t);
            snprintf(log[i][m], sizeof log[i][m], "%s/%s_%s.log", dir, p, t);
            snprintf(rcf[i][m], sizeof rcf[i][m], "%s/%s_%s.rc", dir, p, t);
            size_t l = strlen(cmd);
            snprintf(cmd + l, sizeof cmd - l, "( '%s' '%s' --emit=so -o '%s' %s > '%s' 2>&1; echo $? > '%s' ) & ",
                     lethec, configs[i].lth, so[i][m], modes[m].flags, log[i][m], rcf[i][m]);
        }
    strncat(cmd, "wait", sizeof cmd - strlen(cmd) - 1);
    double t0 = now();
    if (system(cmd) == -1)
        perror("system");
    printf("# lethec: all programs in parallel, %.1f s\n", now() - t0);
    for (int i = 0; i < NCFG; i++)
        for (int m = 0; m < NMODE; m++) {
            char C[64];
            snprintf(C, sizeof C, "%s %s", configs[i].pfx, modes[m].tag);
            progs[i][m] = NULL;
            if (!wanted(i, m)) {
                printf("# %s: not run (LETHE_TEST_LONG=1 runs it)\n", C);
                continue;
            }
            FILE *f = fopen(rcf[i][m], "r");
            int rc = -1;
            if (f) {
                if (fscanf(f, "%d", &rc) != 1)
                    rc = -1;
                fclose(f);
            }
            if (rc != 0) {
                char line[512];
                FILE *lf = fopen(log[i][m], "r");
                while (lf && fgets(line, sizeof line, lf))
                    printf("# %s", line);
                if (lf)
                    fclose(lf);
                th_fail(C, "lethec %s %s failed (status %d)", configs[i].lth, modes[m].flags, rc);
                continue;
            }
            void *h = dlopen(so[i][m], RTLD_NOW | RTLD_LOCAL);
            const lethe_program *p = h ? dlsym(h, LETHE_PROGRAM_SYMBOL) : NULL;
            if (!p || p->abi_version != LETHE_ABI_VERSION) {
                th_fail(C, "cannot load %s: %s", so[i][m], !h ? dlerror() : !p ? "no program" : "ABI version mismatch");
                continue;
            }
            progs[i][m] = p;
        }
}

int main(void) {
    const lethe_program *progs[NCFG][NMODE];
    compile_all(progs);
    lethe_pool *pool = lethe_pool_new(2);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 1);
    for (int i = 0; i < NCFG; i++)
        for (int m = 0; m < NMODE; m++) {
            if (!progs[i][m])
                continue;
            double t0 = now();
            run_config(&configs[i], &modes[m], progs[i][m], &ctx);
            printf("# %s %s ran in %.1f s\n", configs[i].name, modes[m].tag, now() - t0);
        }
    lethe_pool_free(pool);
    return th_exit();
}
