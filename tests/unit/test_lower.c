/* test_lower.c: fusion, lowering and memory planning.
 *
 * Each case builds an entry with the g_* builders, lowers it, runs the loop
 * IR through the interpreter (tests/support/loopinterp.c, which also checks
 * bounds, buffer overlap within kernels and the independence of parallel
 * iterations) and compares every written argument with the reference
 * evaluator. Every program's memory plan is then checked exhaustively: any
 * two workspace buffers used by overlapping kernel ranges must not share a
 * byte. Cases run twice where it matters: with a huge parallel threshold
 * (serial loops) and with a tiny one (every loop that may be parallel is,
 * so the race checker sees the parallel shapes).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "harness.h"
#include "loopinterp.h"
#include "loopir.h"
#include "lower_int.h"
#include "refeval.h"

enum { MAXARGS = 32 };
static const uint64_t SEED = 0x1234567887654321ull, COUNTER = 7;
static const int64_t SERIAL = (int64_t)1 << 40, PARALLEL = 1;
static Loc L0;

static Shape S(int rank, ...) {
    va_list ap;
    va_start(ap, rank);
    Shape s = {0};
    s.rank = rank;
    for (int i = 0; i < rank; i++)
        s.dim[i] = va_arg(ap, int);
    va_end(ap);
    return s;
}

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}

/* ----------------------------------------------------------------------------
 * test entries */

typedef struct TG {
    Graph *g;
    Entry e;
    double *vals[MAXARGS];
} TG;

static void tg_init(TG *t, const char *name) {
    memset(t, 0, sizeof *t);
    t->g = graph_new();
    t->e.name = name;
    t->e.kind = "fn";
    t->e.g = t->g;
}

static void tg_free(TG *t) {
    for (int i = 0; i < t->e.args.len; i++)
        free(t->vals[i]);
}

static int tg_arg(TG *t, const char *name, int kind, DType dt, Shape s, double lo, double hi) {
    int a = t->e.args.len;
    ASSERT(a < MAXARGS);
    int access = kind == LETHE_OUTPUT ? LETHE_WRITE : kind == LETHE_INPUT || kind == LETHE_SCALAR ? LETHE_READ : LETHE_READWRITE;
    EntryArg ea = {.name = name, .binding = name, .path = "", .kind = kind, .access = access, .dtype = dt, .shape = s,
                   .scalar_default = NAN, .layer = -1};
    vec_push(&t->e.args, ea);
    int64_t n = shape_numel(s);
    t->vals[a] = calloc((size_t)n + 1, sizeof(double));
    for (int64_t i = 0; i < n && kind != LETHE_OUTPUT; i++) {
        double v = lo + (hi - lo) * urand();
        switch (dt) {
        case DT_F32: v = (double)(float)v; break;
        case DT_I32:
        case DT_I64: v = floor(v); break;
        case DT_BOOL: v = v > 0.5 * (lo + hi); break;
        default: break;
        }
        t->vals[a][i] = v;
    }
    return a;
}

static Node *tg_in(TG *t, const char *name, DType dt, Shape s, double lo, double hi) {
    int a = tg_arg(t, name, LETHE_INPUT, dt, s, lo, hi);
    Node *n = g_input(t->g, a, dt, s, name, L0);
    t->e.args.data[a].in = n;
    return n;
}

/* An argument updated in place (PARAM, BUFFER, STATE); tg_set gives its new value. */
static Node *tg_state(TG *t, const char *name, int kind, DType dt, Shape s, int *arg) {
    int a = tg_arg(t, name, kind, dt, s, -1, 1);
    Node *n = g_input(t->g, a, dt, s, name, L0);
    t->e.args.data[a].in = n;
    *arg = a;
    return n;
}

static void tg_set(TG *t, int arg, Node *n) { t->e.args.data[arg].out = n; }

static void tg_out(TG *t, const char *name, Node *n) {
    int a = tg_arg(t, name, LETHE_OUTPUT, n->dtype, n->shape, 0, 0);
    t->e.args.data[a].out = n;
}

/* ----------------------------------------------------------------------------
 * loop IR inspection */

static void scan_e(const LExpr *e, int *first, int *last, int k) {
    if (!e)
        return;
    if (e->kind == LE_LOAD) {
        if (first[e->buf] < 0)
            first[e->buf] = k;
        last[e->buf] = k;
        scan_e(e->index, first, last, k);
        scan_e(e->valid, first, last, k);
    }
    for (int i = 0; i < 3; i++)
        scan_e(e->a[i], first, last, k);
}

static void use_buf(int b, int *first, int *last, int k) {
    if (first[b] < 0)
        first[b] = k;
    last[b] = k;
}

static void scan_s(LStmt *const *s, int n, int *first, int *last, int k) {
    for (int i = 0; i < n; i++) {
        switch (s[i]->kind) {
        case LS_FOR: scan_s(s[i]->body.data, s[i]->body.len, first, last, k); break;
        case LS_LET:
        case LS_ASSIGN: scan_e(s[i]->value, first, last, k); break;
        case LS_STORE:
            use_buf(s[i]->buf, first, last, k);
            scan_e(s[i]->index, first, last, k);
            scan_e(s[i]->value, first, last, k);
            break;
        case LS_GEMM:
            use_buf(s[i]->gemm.a_buf, first, last, k);
            use_buf(s[i]->gemm.b_buf, first, last, k);
            use_buf(s[i]->gemm.c_buf, first, last, k);
            break;
        }
    }
}

static uint64_t buf_bytes(const LBuf *b) { return (uint64_t)b->nelem * (uint64_t)dtype_size(b->dtype); }

/* Every pair of workspace buffers whose kernel ranges overlap must be
 * disjoint in memory; offsets are 64-byte aligned and inside the workspace. */
static bool plan_ok(const LProgram *p, char *why, size_t n) {
    int nb = p->bufs.len;
    int *first = malloc(sizeof(int) * (size_t)(nb + 1)), *last = malloc(sizeof(int) * (size_t)(nb + 1));
    for (int i = 0; i < nb; i++)
        first[i] = last[i] = -1;
    for (int k = 0; k < p->kernels.len; k++)
        scan_s(p->kernels.data[k]->body.data, p->kernels.data[k]->body.len, first, last, k);
    bool ok = true;
    for (int a = 0; a < nb && ok; a++) {
        const LBuf *x = &p->bufs.data[a];
        if (x->kind != LB_WORKSPACE)
            continue;
        if (x->offset % 64 || x->offset + buf_bytes(x) > p->workspace_bytes) {
            snprintf(why, n, "%s at %llu is misaligned or outside the workspace", x->name, (unsigned long long)x->offset);
            ok = false;
        }
        for (int b = a + 1; b < nb && ok; b++) {
            const LBuf *y = &p->bufs.data[b];
            if (y->kind != LB_WORKSPACE || first[a] < 0 || first[b] < 0)
                continue;
            bool live = first[a] <= last[b] && first[b] <= last[a];
            bool apart = x->offset + buf_bytes(x) <= y->offset || y->offset + buf_bytes(y) <= x->offset;
            if (live && !apart) {
                snprintf(why, n, "%s [k%d,k%d] and %s [k%d,k%d] overlap in memory", x->name, first[a], last[a], y->name,
                         first[b], last[b]);
                ok = false;
            }
        }
    }
    free(first);
    free(last);
    return ok;
}

static uint64_t workspace_sum(const LProgram *p) {
    uint64_t s = 0;
    for (int i = 0; i < p->bufs.len; i++)
        if (p->bufs.data[i].kind == LB_WORKSPACE)
            s += (buf_bytes(&p->bufs.data[i]) + 63) / 64 * 64;
    return s;
}

static int count_kernels(const LProgram *p, const char *suffix) {
    int n = 0;
    size_t ls = strlen(suffix);
    for (int i = 0; i < p->kernels.len; i++) {
        size_t ln = strlen(p->kernels.data[i]->name);
        n += ln >= ls && !strcmp(p->kernels.data[i]->name + ln - ls, suffix);
    }
    return n;
}

static int count_in(LStmt *const *s, int n, LStmtKind kind, bool parallel_only) {
    int c = 0;
    for (int i = 0; i < n; i++) {
        c += s[i]->kind == kind && (!parallel_only || s[i]->parallel);
        if (s[i]->kind == LS_FOR)
            c += count_in(s[i]->body.data, s[i]->body.len, kind, parallel_only);
    }
    return c;
}

static int count_stmts(const LProgram *p, LStmtKind kind, bool parallel_only) {
    int c = 0;
    for (int i = 0; i < p->kernels.len; i++)
        c += count_in(p->kernels.data[i]->body.data, p->kernels.data[i]->body.len, kind, parallel_only);
    return c;
}

static int im2col_in(LStmt *const *s, int n) {
    int c = 0;
    for (int i = 0; i < n; i++) {
        c += s[i]->kind == LS_GEMM && s[i]->gemm.b_im2col;
        if (s[i]->kind == LS_FOR)
            c += im2col_in(s[i]->body.data, s[i]->body.len);
    }
    return c;
}

/* GEMM statements that read B as an implicit im2col operand */
static int count_im2col(const LProgram *p) {
    int c = 0;
    for (int i = 0; i < p->kernels.len; i++)
        c += im2col_in(p->kernels.data[i]->body.data, p->kernels.data[i]->body.len);
    return c;
}

static int depth_of(LStmt *const *s, int n) {
    int d = 0;
    for (int i = 0; i < n; i++)
        if (s[i]->kind == LS_FOR) {
            int x = 1 + depth_of(s[i]->body.data, s[i]->body.len);
            d = x > d ? x : d;
        }
    return d;
}

static int kernel_depth(const LProgram *p, int k) { return depth_of(p->kernels.data[k]->body.data, p->kernels.data[k]->body.len); }

static int count_bufs(const LProgram *p, LBufKind kind, const char *suffix) {
    int n = 0;
    size_t ls = strlen(suffix);
    for (int i = 0; i < p->bufs.len; i++) {
        const LBuf *b = &p->bufs.data[i];
        size_t ln = strlen(b->name);
        n += b->kind == kind && ln >= ls && !strcmp(b->name + ln - ls, suffix);
    }
    return n;
}

static int count_workspace(const LProgram *p, const char *suffix) { return count_bufs(p, LB_WORKSPACE, suffix); }

/* ----------------------------------------------------------------------------
 * running */

static double get(const void *buf, DType dt, int64_t i) {
    switch (dt) {
    case DT_BOOL: return ((const unsigned char *)buf)[i];
    case DT_I32: return ((const int32_t *)buf)[i];
    case DT_I64: return (double)((const int64_t *)buf)[i];
    case DT_F32: return ((const float *)buf)[i];
    case DT_F64: return ((const double *)buf)[i];
    }
    return 0;
}

static void put(void *buf, DType dt, int64_t i, double v) {
    switch (dt) {
    case DT_BOOL: ((unsigned char *)buf)[i] = v != 0; break;
    case DT_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case DT_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case DT_F32: ((float *)buf)[i] = (float)v; break;
    case DT_F64: ((double *)buf)[i] = v; break;
    }
}

static double tol_for(DType dt) { return dt == DT_F32 ? 2e-5 : dt == DT_F64 ? 1e-10 : 0; }

/* Lower e with the given parallel threshold, interpret, compare every
 * written argument with refeval, check the plan. Returns the program, or
 * NULL on a failure (already reported). */
static bool top_gemms;   /* lower with LowerOptions.top_gemms (the CUDA form) */

static LProgram *run_case(TG *t, const char *name, int64_t min_work) {
    LowerOptions o = {min_work, top_gemms};
    LProgram *p = lower_entry(&t->e, &o);
    if (getenv("LETHE_TEST_DUMP")) {
        printf("== %s\n", name);
        loopir_dump(p, stdout);
    }
    int na = t->e.args.len;
    void *bufs[MAXARGS] = {0};
    for (int a = 0; a < na; a++) {
        const EntryArg *ea = &t->e.args.data[a];
        int64_t n = shape_numel(ea->shape);
        bufs[a] = malloc((size_t)n * (size_t)dtype_size(ea->dtype) + 8);
        memset(bufs[a], 0xff, (size_t)n * (size_t)dtype_size(ea->dtype) + 8);   /* NaN for outputs not written */
        if (ea->kind != LETHE_OUTPUT)
            for (int64_t i = 0; i < n; i++)
                put(bufs[a], ea->dtype, i, t->vals[a][i]);
    }
    size_t wsb = (size_t)((p->workspace_bytes + 63) / 64 * 64 + 64);
    void *ws = aligned_alloc(64, wsb);
    memset(ws, 0xff, wsb);
    char err[512];
    int rc = loopinterp_run(p, bufs, ws, SEED, COUNTER, err, sizeof err);
    bool ok = true;
    if (rc) {
        th_fail(name, "interpreter: %s", err);
        loopir_dump(p, stdout);
        ok = false;
    }
    double **ref = refeval(&t->e, t->vals, SEED, COUNTER);
    for (int a = 0; a < na && ok; a++) {
        const EntryArg *ea = &t->e.args.data[a];
        if (!ea->out)
            continue;
        const double *want = refeval_out(&t->e, ref, a);
        int64_t n = shape_numel(ea->shape);
        double tol = tol_for(ea->dtype), worst = 0;
        int64_t at = -1;
        for (int64_t i = 0; i < n; i++) {
            double g = get(bufs[a], ea->dtype, i), w = want[i];
            double d = (isnan(g) && isnan(w)) || g == w ? 0 : fabs(g - w) / fmax(fabs(w), 1.0);
            if (isnan(d) || d > worst) {
                worst = isnan(d) ? INFINITY : d;
                at = i;
            }
        }
        if (worst > tol) {
            th_fail(name, "argument %s[%lld] = %.9g, reference %.9g (error %.3g)", ea->name, (long long)at,
                    get(bufs[a], ea->dtype, at), want[at], worst);
            loopir_dump(p, stdout);
            ok = false;
        }
    }
    refeval_free(ref);
    char why[256];
    if (ok && !plan_ok(p, why, sizeof why)) {
        th_fail(name, "memory plan: %s", why);
        ok = false;
    }
    for (int a = 0; a < na; a++)
        free(bufs[a]);
    free(ws);
    if (!ok)
        return NULL;
    th_pass(name);
    return p;
}

/* Serial and parallel lowerings of one entry. */
static LProgram *run_both(TG *t, const char *name) {
    LProgram *p = run_case(t, xfmt("%s (serial)", name), SERIAL);
    run_case(t, xfmt("%s (parallel)", name), PARALLEL);
    return p;
}

static Node *add(Graph *g, Node *a, Node *b) { return g_binary(g, OP_ADD, a, b, L0); }
static Node *mul(Graph *g, Node *a, Node *b) { return g_binary(g, OP_MUL, a, b, L0); }
static Node *sub(Graph *g, Node *a, Node *b) { return g_binary(g, OP_SUB, a, b, L0); }
static Node *sc(Graph *g, double v) { return g_scalar(g, v, DT_F32, L0); }
static Node *un(Graph *g, Op op, Node *x) { return g_unary(g, op, x, L0); }
static Node *red(Graph *g, Op op, Node *x, uint32_t axes) { return g_reduce(g, op, x, axes, true, L0); }

/* ----------------------------------------------------------------------------
 * cases */

static void test_elementwise(void) {
    TG t;
    tg_init(&t, "elementwise");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(3, 4, 1, 5), -2, 2);
    Node *y = tg_in(&t, "y", DT_F32, S(2, 3, 1), -2, 2);
    Node *i = tg_in(&t, "i", DT_I32, S(1, 5), -5, 5);
    Node *e = add(g, mul(g, un(g, OP_EXP, x), y), sc(g, 1));            /* [4, 3, 5] */
    Node *c = g_where(g, g_binary(g, OP_GT, x, sc(g, 0), L0), e, un(g, OP_NEG, e), L0);
    tg_out(&t, "o1", add(g, g_cast(g, i, DT_F32, L0), c));
    tg_out(&t, "o2", g_binary(g, OP_GT, x, sc(g, 0.5), L0));
    Node *i2 = g_binary(g, OP_ADD, g_binary(g, OP_MUL, i, i, L0), g_binary(g, OP_MOD, i, g_scalar(g, 3, DT_I32, L0), L0), L0);
    tg_out(&t, "o3", g_binary(g, OP_DIV, i2, g_scalar(g, 2, DT_I32, L0), L0));
    Node *ax = add(g, un(g, OP_ABS, x), sc(g, 0.5));
    Node *u = add(g, add(g, un(g, OP_TANH, x), un(g, OP_SIGMOID, x)), add(g, un(g, OP_GELU, x), un(g, OP_RELU, x)));
    u = add(g, u, add(g, un(g, OP_SQRT, ax), un(g, OP_RSQRT, ax)));
    u = add(g, u, add(g, un(g, OP_LOG, ax), g_binary(g, OP_POW, ax, sc(g, 1.5), L0)));
    u = add(g, u, add(g, g_binary(g, OP_MAX, x, sc(g, 0.3), L0), g_binary(g, OP_MIN, x, sc(g, -0.3), L0)));
    u = add(g, u, mul(g, un(g, OP_SIGN, x), g_binary(g, OP_DIV, x, ax, L0)));
    tg_out(&t, "o4", u);
    LProgram *p = run_both(&t, "elementwise chain with broadcasting");
    /* o2 and o4 both read x where they write: one loop with two stores */
    if (p)
        th_check(p->kernels.len == 3 && count_kernels(p, "_update") == 1,
                 "elementwise: one kernel per output shape (shared values are LETs)", "%d kernels", p->kernels.len);
    tg_free(&t);
}

static void test_loop_shapes(void) {
    TG t;
    tg_init(&t, "loops");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(3, 8, 16, 32), -1, 1);
    Node *y = tg_in(&t, "y", DT_F32, S(3, 8, 16, 32), -1, 1);
    Node *z = tg_in(&t, "z", DT_F32, S(3, 8, 32, 16), -1, 1);
    tg_out(&t, "flat", add(g, x, mul(g, y, sc(g, 3))));
    tg_out(&t, "tr", add(g, x, g_permute(g, z, (int[]){0, 2, 1}, L0)));
    LProgram *p = run_both(&t, "loop shapes");
    if (p) {
        th_check(kernel_depth(p, 0) == 1, "loops: a contiguous elementwise kernel is one flat loop", "depth %d",
                 kernel_depth(p, 0));
        th_check(kernel_depth(p, 1) == 3, "loops: a transposed operand is read in tiles (outer, tile rows, tile columns)",
                 "depth %d", kernel_depth(p, 1));
        th_check(count_stmts(p, LS_FOR, true) == 0, "loops: below the threshold nothing is parallel", "%d parallel",
                 count_stmts(p, LS_FOR, true));
    }
    LowerOptions o = {1000};
    p = lower_entry(&t.e, &o);
    th_check(count_stmts(p, LS_FOR, true) == 2, "loops: above the threshold the outer loops are parallel", "%d parallel",
             count_stmts(p, LS_FOR, true));
    tg_free(&t);
}

static void test_views(void) {
    TG t;
    tg_init(&t, "views");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(3, 4, 6, 8), -1, 1);
    Node *x4 = tg_in(&t, "x4", DT_F64, S(4, 2, 3, 5, 6), -1, 1);
    tg_out(&t, "permute", g_permute(g, x, (int[]){2, 0, 1}, L0));
    tg_out(&t, "slice", g_slice(g, x, (int64_t[]){1, 0, 1}, (int64_t[]){2, 3, 3}, (int64_t[]){2, 2, 3}, L0));
    Node *pd = g_pad(g, x, (int64_t[]){1, 0, 2}, (int64_t[]){0, 2, 1}, L0);
    tg_out(&t, "pad", mul(g, pd, sc(g, 2)));
    Node *one = g_slice(g, x, (int64_t[]){0, 2, 0}, (int64_t[]){4, 1, 8}, NULL, L0);
    tg_out(&t, "expand", add(g, g_expand(g, one, S(3, 4, 6, 8), L0), x));
    tg_out(&t, "split", add(g, g_reshape(g, x, S(4, 2, 2, 6, 8), L0), sc(g, 1)));
    tg_out(&t, "merge", add(g, g_reshape(g, x, S(2, 24, 8), L0), sc(g, 1)));
    Node *tr = g_permute(g, x, (int[]){0, 2, 1}, L0);
    tg_out(&t, "bad_reshape", add(g, g_reshape(g, tr, S(2, 4, 48), L0), sc(g, 1)));
    tg_out(&t, "unfold", mul(g, g_unfold(g, x4, 3, 2, 2, 1, 1, 0, L0), g_scalar(g, 3, DT_F64, L0)));
    Node *back = g_slice(g, pd, (int64_t[]){1, 0, 2}, (int64_t[]){4, 6, 8}, NULL, L0);
    tg_out(&t, "pad_slice", add(g, back, sc(g, 1)));
    Node *ps = g_permute(g, g_pad(g, g_slice(g, x, (int64_t[]){0, 1, 0}, (int64_t[]){4, 5, 4}, (int64_t[]){1, 1, 2}, L0),
                                  (int64_t[]){0, 1, 1}, (int64_t[]){2, 0, 1}, L0),
                         (int[]){1, 2, 0}, L0);
    tg_out(&t, "chain", add(g, ps, sc(g, 1)));
    Node *pr = g_pad(g, x, (int64_t[]){0, 0, 1}, (int64_t[]){0, 0, 1}, L0);   /* [4, 6, 10] */
    tg_out(&t, "pad_split", add(g, g_reshape(g, pr, S(4, 4, 6, 2, 5), L0), sc(g, 1)));
    tg_out(&t, "pad_merge", add(g, g_reshape(g, pr, S(2, 4, 60), L0), sc(g, 1)));
    Node *io = g_iota(g, DT_I32, S(2, 5, 7), 1, L0);
    tg_out(&t, "iota_flat", g_reshape(g, g_binary(g, OP_MUL, io, g_scalar(g, 2, DT_I32, L0), L0), S(1, 35), L0));
    tg_out(&t, "iota_expand", g_cast(g, g_expand(g, g_iota(g, DT_I32, S(2, 1, 7), 1, L0), S(2, 5, 7), L0), DT_F32, L0));
    tg_out(&t, "const_pad", g_pad(g, g_const(g, 3, DT_F32, S(2, 2, 3), L0), (int64_t[]){1, 0}, (int64_t[]){0, 2}, L0));
    tg_out(&t, "fill", g_const(g, 2.5, DT_F64, S(2, 3, 4), L0));
    tg_out(&t, "passthrough", x);
    run_both(&t, "views: permute, strided slice, pad, expand, reshape, unfold, iota, const");
    tg_free(&t);
}

static void test_reductions(void) {
    TG t;
    tg_init(&t, "reduce");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(3, 6, 10, 12), -1, 1);
    Node *xi = tg_in(&t, "xi", DT_I32, S(2, 5, 9), -50, 50);
    Node *big = tg_in(&t, "big", DT_F64, S(2, 64, 50), -1, 1);
    Node *col = tg_in(&t, "col", DT_F32, S(2, 10, 256), -1, 1);
    tg_out(&t, "lead", red(g, OP_SUM, x, 1));
    tg_out(&t, "trail", red(g, OP_SUM, x, 4));
    tg_out(&t, "middle", red(g, OP_SUM, x, 2));
    tg_out(&t, "outer_inner", red(g, OP_SUM, x, 5));
    tg_out(&t, "lead2", red(g, OP_RMIN, x, 3));
    tg_out(&t, "max_mid", red(g, OP_RMAX, mul(g, x, x), 2));
    tg_out(&t, "all", g_reduce(g, OP_SUM, x, 7, false, L0));
    tg_out(&t, "prologue", red(g, OP_SUM, add(g, mul(g, x, x), sc(g, 1)), 4));
    tg_out(&t, "of_view", red(g, OP_SUM, g_permute(g, x, (int[]){2, 0, 1}, L0), 1));
    tg_out(&t, "of_pad", red(g, OP_RMAX, g_pad(g, x, (int64_t[]){1, 0, 1}, (int64_t[]){0, 0, 1}, L0), 4));
    tg_out(&t, "int_sum", red(g, OP_SUM, xi, 2));
    tg_out(&t, "int_max", red(g, OP_RMAX, xi, 1));
    tg_out(&t, "split_full", g_reduce(g, OP_SUM, big, 3, false, L0));
    tg_out(&t, "split_max", g_reduce(g, OP_RMAX, big, 3, false, L0));
    tg_out(&t, "col_tiles", red(g, OP_SUM, col, 1));
    tg_out(&t, "col_tiles_max", red(g, OP_RMAX, col, 1));
    /* per-channel sums over [N, C, short rows] (lower.c's reduce_short_rows):
     * a sum, a max, an integer sum, and sibling sums with a prologue */
    Node *bn = tg_in(&t, "bn", DT_F32, S(4, 5, 12, 3, 4), -1, 1);
    Node *bni = tg_in(&t, "bni", DT_I32, S(4, 5, 12, 3, 4), -50, 50);
    tg_out(&t, "short_sum", red(g, OP_SUM, bn, 13));
    tg_out(&t, "short_max", red(g, OP_RMAX, bn, 13));
    tg_out(&t, "short_int", red(g, OP_SUM, bni, 13));
    tg_out(&t, "short_sib_a", red(g, OP_SUM, mul(g, bn, sc(g, 2)), 13));
    tg_out(&t, "short_sib_b", red(g, OP_SUM, mul(g, bn, bn), 13));
    /* logsumexp: rows (two passes over a fused prologue, and beside a sum of
     * the same input in one kernel), columns (pairwise combine) and split */
    tg_out(&t, "lse_rows", red(g, OP_RLSE, mul(g, x, sc(g, 3)), 4));
    tg_out(&t, "lse_sib", red(g, OP_SUM, mul(g, x, sc(g, 3)), 4));
    tg_out(&t, "lse_cols", red(g, OP_RLSE, col, 1));
    tg_out(&t, "lse_split", g_reduce(g, OP_RLSE, big, 3, false, L0));
    LProgram *p = run_both(&t, "reductions over leading, trailing, middle and all axes");
    if (p)
        th_check(count_workspace(p, "_part") == 0, "reductions: no split below the threshold", "%d splits",
                 count_workspace(p, "_part"));
    LowerOptions o = {PARALLEL};
    p = lower_entry(&t.e, &o);
    th_check(count_workspace(p, "_part") == 4, "reductions: large full reductions are split", "%d splits",
             count_workspace(p, "_part"));
    tg_free(&t);
}

/* softmax, logsumexp and layernorm over the last axis, as builtins expand them */
static void test_softmax(void) {
    TG t;
    tg_init(&t, "softmax");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(2, 5, 9), -3, 3);
    Node *gm = tg_in(&t, "gamma", DT_F32, S(1, 9), 0.5, 1.5);
    Node *bt = tg_in(&t, "beta", DT_F32, S(1, 9), -1, 1);
    Node *m = red(g, OP_RMAX, x, 2);
    Node *e = un(g, OP_EXP, sub(g, x, m));
    Node *s = red(g, OP_SUM, e, 2);
    tg_out(&t, "softmax", g_binary(g, OP_DIV, e, s, L0));
    tg_out(&t, "lse", add(g, un(g, OP_LOG, s), m));
    Node *mean = mul(g, red(g, OP_SUM, x, 2), sc(g, 1.0 / 9));
    Node *d = sub(g, x, mean);
    Node *var = mul(g, red(g, OP_SUM, mul(g, d, d), 2), sc(g, 1.0 / 9));
    tg_out(&t, "layernorm", add(g, mul(g, mul(g, d, un(g, OP_RSQRT, add(g, var, sc(g, 1e-5)))), gm), bt));
    run_both(&t, "softmax, logsumexp and layernorm chains");
    tg_free(&t);
}

static void test_matmul(void) {
    TG t;
    tg_init(&t, "matmul");
    Graph *g = t.g;
    Node *a = tg_in(&t, "a", DT_F32, S(2, 5, 7), -1, 1);
    Node *b = tg_in(&t, "b", DT_F32, S(2, 7, 3), -1, 1);
    Node *ba = tg_in(&t, "ba", DT_F64, S(4, 2, 3, 4, 5), -1, 1);
    Node *bb = tg_in(&t, "bb", DT_F64, S(4, 2, 3, 5, 6), -1, 1);
    Node *bbt = tg_in(&t, "bbt", DT_F64, S(4, 2, 3, 6, 5), -1, 1);
    Node *at = tg_in(&t, "at", DT_F32, S(2, 7, 5), -1, 1);
    Node *bt = tg_in(&t, "bt", DT_F32, S(2, 3, 7), -1, 1);
    Node *x = tg_in(&t, "x", DT_F32, S(3, 2, 3, 4), -1, 1);
    Node *w = tg_in(&t, "w", DT_F32, S(2, 4, 5), -1, 1);
    Node *v = tg_in(&t, "v", DT_F32, S(1, 4), -1, 1);
    Node *r = tg_in(&t, "r", DT_F32, S(2, 1, 7), -1, 1);
    tg_out(&t, "plain", g_matmul(g, a, b, L0));
    tg_out(&t, "batched", g_matmul(g, ba, bb, L0));
    tg_out(&t, "trans_a", g_matmul(g, g_permute(g, at, (int[]){1, 0}, L0), b, L0));
    tg_out(&t, "trans_b", g_matmul(g, a, g_permute(g, bt, (int[]){1, 0}, L0), L0));
    Node *sl = g_slice(g, bbt, (int64_t[]){0, 1, 1, 0}, (int64_t[]){2, 2, 4, 5}, NULL, L0);   /* [2, 2, 4, 5] */
    Node *bs = g_slice(g, ba, (int64_t[]){0, 1, 0, 0}, (int64_t[]){2, 2, 4, 5}, NULL, L0);
    tg_out(&t, "trans_batched", g_matmul(g, bs, g_permute(g, sl, (int[]){0, 1, 3, 2}, L0), L0));
    tg_out(&t, "linear", g_matmul(g, x, w, L0));
    Node *x1 = tg_in(&t, "x1", DT_F32, S(3, 3, 1, 4), -1, 1);
    tg_out(&t, "linear_m1", g_matmul(g, x1, w, L0));
    tg_out(&t, "vec", g_matmul(g, v, w, L0));
    tg_out(&t, "elem_operand", g_matmul(g, un(g, OP_EXP, a), b, L0));
    tg_out(&t, "bcast_rows", g_matmul(g, g_expand(g, r, S(2, 5, 7), L0), b, L0));
    LProgram *p = run_both(&t, "matmul: plain, batched, transposed views, linear, vector, fused operand");
    if (p) {
        /* the linear layer folds its batch into M: one GEMM at the top level */
        int top = 0;
        for (int k = 0; k < p->kernels.len; k++)
            if (p->kernels.data[k]->body.len == 1 && p->kernels.data[k]->body.data[0]->kind == LS_GEMM &&
                p->kernels.data[k]->body.data[0]->gemm.m == 6)
                top++;
        th_check(top == 1, "matmul: x[2,3,4] @ w[4,5] is one 6x4x5 GEMM", "%d such kernels", top);
        int m1 = 0;
        for (int k = 0; k < p->kernels.len; k++)
            m1 += p->kernels.data[k]->body.len == 1 && p->kernels.data[k]->body.data[0]->kind == LS_GEMM &&
                  p->kernels.data[k]->body.data[0]->gemm.m == 3 && p->kernels.data[k]->body.data[0]->gemm.k == 4;
        th_check(m1 == 1, "matmul: x[3,1,4] @ w[4,5] is one 3x4x5 GEMM", "%d such kernels", m1);
        int tr = 0;
        for (int k = 0; k < p->kernels.len; k++) {
            LStmt *s = p->kernels.data[k]->body.data[0];
            while (s->kind == LS_FOR)
                s = s->body.data[0];
            tr += s->kind == LS_GEMM && (s->gemm.trans_a || s->gemm.trans_b);
        }
        th_check(tr == 3, "matmul: transposed views become trans flags, not copies", "%d transposed GEMMs", tr);
    }
    tg_free(&t);
}

static void conv_case(DType dt, bool chunk, const char *name) {
    TG t;
    tg_init(&t, "conv");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", dt, S(4, 3, 3, 7, 6), -1, 1);
    Node *w = tg_in(&t, "w", dt, S(4, 4, 3, 3, 2), -1, 1);
    Node *dy = tg_in(&t, "dy", dt, S(4, 3, 4, 4, 4), -1, 1);
    Node *x1 = tg_in(&t, "x1", dt, S(4, 2, 3, 5, 5), -1, 1);
    Node *w1 = tg_in(&t, "w1", dt, S(4, 6, 3, 1, 1), -1, 1);
    Node *dy1 = tg_in(&t, "dy1", dt, S(4, 2, 6, 5, 5), -1, 1);
    /* x [3,3,7,6], w [4,3,3,2], stride 2, pad 1 -> [3,4,4,4] */
    tg_out(&t, "y", g_conv2d(g, x, w, 2, 2, 1, 1, L0));
    tg_out(&t, "dx", g_conv2d_bwd_input(g, dy, w, x->shape, 2, 2, 1, 1, L0));
    tg_out(&t, "dw", g_conv2d_bwd_weight(g, x, dy, 3, 2, 2, 2, 1, 1, L0));
    Node *xp = g_pad(g, x, (int64_t[]){0, 0, 1, 1}, (int64_t[]){0, 0, 1, 1}, L0);
    tg_out(&t, "y_of_pad", g_conv2d(g, xp, w, 2, 2, 0, 0, L0));
    tg_out(&t, "y_relu", g_conv2d(g, un(g, OP_RELU, x), w, 2, 2, 1, 1, L0));
    Node *wt = tg_in(&t, "wt", dt, S(4, 3, 4, 3, 2), -1, 1);
    tg_out(&t, "y_wview", g_conv2d(g, x, g_permute(g, wt, (int[]){1, 0, 2, 3}, L0), 2, 2, 1, 1, L0));
    tg_out(&t, "y1", g_conv2d(g, x1, w1, 1, 1, 0, 0, L0));
    tg_out(&t, "dx1", g_conv2d_bwd_input(g, dy1, w1, x1->shape, 1, 1, 0, 0, L0));
    tg_out(&t, "dw1", g_conv2d_bwd_weight(g, x1, dy1, 1, 1, 1, 1, 0, 0, L0));
    /* stride 1 keeping the width: GEMMs read the images in place (im2col
     * operands), 24x24 so that the weight gradient does too; a 3x5 kernel
     * without row padding */
    Node *xs = tg_in(&t, "xs", dt, S(4, 2, 3, 24, 24), -1, 1);
    Node *ws = tg_in(&t, "ws", dt, S(4, 4, 3, 3, 3), -1, 1);
    Node *dys = tg_in(&t, "dys", dt, S(4, 2, 4, 24, 24), -1, 1);
    tg_out(&t, "ys", g_conv2d(g, xs, ws, 1, 1, 1, 1, L0));
    tg_out(&t, "dxs", g_conv2d_bwd_input(g, dys, ws, xs->shape, 1, 1, 1, 1, L0));
    tg_out(&t, "dws", g_conv2d_bwd_weight(g, xs, dys, 3, 3, 1, 1, 1, 1, L0));
    Node *xr = tg_in(&t, "xr", dt, S(4, 2, 2, 9, 10), -1, 1);
    Node *wr = tg_in(&t, "wr", dt, S(4, 3, 2, 3, 5), -1, 1);
    Node *dyr = tg_in(&t, "dyr", dt, S(4, 2, 3, 7, 10), -1, 1);
    tg_out(&t, "yr", g_conv2d(g, xr, wr, 1, 1, 0, 2, L0));
    tg_out(&t, "dxr", g_conv2d_bwd_input(g, dyr, wr, xr->shape, 1, 1, 0, 2, L0));
    tg_out(&t, "dwr", g_conv2d_bwd_weight(g, xr, dyr, 3, 5, 1, 1, 0, 2, L0));
    int64_t saved = lower_conv_tile_bytes, saved_chunk = lower_conv_chunk_bytes;
    if (chunk)
        lower_conv_tile_bytes = lower_conv_chunk_bytes = 1;
    top_gemms = true;
    LProgram *tp = run_both(&t, xfmt("%s, top-level GEMMs", name));
    top_gemms = false;
    if (tp)
        th_check(count_bufs(tp, LB_PRIVATE, "") == 0 && count_im2col(tp) == 0 && count_workspace(tp, "_col") == 12 &&
                     (!chunk || count_stmts(tp, LS_GEMM, false) >= 6 * 3 + 6 * 2),
                 xfmt("%s: top-level GEMMs over workspace columns%s", name, chunk ? ", one chunk per image" : ""),
                 "%d private buffers, %d im2col GEMMs, %d column buffers, %d GEMMs", count_bufs(tp, LB_PRIVATE, ""),
                 count_im2col(tp), count_workspace(tp, "_col"), count_stmts(tp, LS_GEMM, false));
    LProgram *p = run_both(&t, name);
    if (p && !chunk) {
        int tiles = count_bufs(p, LB_PRIVATE, "_col"), direct = count_im2col(p);
        th_check(tiles == 7 && direct == 5 && count_bufs(p, LB_WORKSPACE, "_col") == 0,
                 xfmt("%s: stride-1 columns are read in place, strided ones built in private tiles, none for 1x1", name),
                 "%d im2col GEMMs, %d private column buffers", direct, tiles);
    }
    if (p && chunk)
        th_check(count_stmts(p, LS_GEMM, false) >= 3 * 4, xfmt("%s: one-channel K blocks of one-row tiles", name),
                 "%d GEMMs", count_stmts(p, LS_GEMM, false));
    lower_conv_tile_bytes = saved;
    lower_conv_chunk_bytes = saved_chunk;
    tg_free(&t);
}

static void test_gather_scatter(void) {
    TG t;
    tg_init(&t, "gather");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(2, 10, 6), -1, 1);
    Node *idx = tg_in(&t, "idx", DT_I32, S(2, 3, 4), -2, 12);   /* some out of range: clamped */
    Node *xa = tg_in(&t, "xa", DT_F32, S(2, 4, 7), -1, 1);
    Node *ia = tg_in(&t, "ia", DT_I32, S(2, 4, 3), 0, 7);
    Node *x3 = tg_in(&t, "x3", DT_F64, S(3, 3, 5, 2), -1, 1);
    Node *i3 = tg_in(&t, "i3", DT_I32, S(1, 4), 0, 5);
    Node *upd = tg_in(&t, "upd", DT_F32, S(3, 3, 4, 6), -1, 1);
    Node *upd32 = tg_in(&t, "upd32", DT_F32, S(3, 3, 4, 32), -1, 1);
    Node *ua = tg_in(&t, "ua", DT_F32, S(2, 4, 3), -1, 1);
    tg_out(&t, "embed", g_gather(g, x, idx, 0, 0, L0));
    tg_out(&t, "along", g_gather(g, xa, ia, 1, 1, L0));
    tg_out(&t, "middle", g_gather(g, x3, i3, 1, 0, L0));
    tg_out(&t, "of_view", g_gather(g, g_permute(g, xa, (int[]){1, 0}, L0), g_slice(g, ia, (int64_t[]){0, 0}, (int64_t[]){3, 2}, NULL, L0), 0, 0, L0));
    tg_out(&t, "scatter", g_scatter_add(g, idx, upd, S(2, 10, 6), 0, 0, L0));
    tg_out(&t, "scatter_tiles", g_scatter_add(g, idx, upd32, S(2, 10, 32), 0, 0, L0));
    tg_out(&t, "scatter_along", g_scatter_add(g, ia, ua, S(2, 4, 7), 1, 1, L0));
    tg_out(&t, "scatter_elem", g_scatter_add(g, ia, un(g, OP_EXP, ua), S(2, 4, 7), 1, 1, L0));
    run_both(&t, "gather and scatter_add (clamped indices, collisions)");
    tg_free(&t);
}

static void test_fold(void) {
    TG t;
    tg_init(&t, "fold");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F64, S(4, 2, 3, 7, 6), -1, 1);
    Node *cols = tg_in(&t, "cols", DT_F32, S(6, 2, 3, 4, 4, 3, 3), -1, 1);   /* 7x6, k3x3, s2x1, p1x0 */
    tg_out(&t, "fold", g_fold(g, cols, S(4, 2, 3, 7, 6), 3, 3, 2, 1, 1, 0, L0));
    tg_out(&t, "fold_unfold", g_fold(g, g_unfold(g, x, 3, 2, 2, 2, 1, 1, L0), x->shape, 3, 2, 2, 2, 1, 1, L0));
    run_both(&t, "fold: gather form, strided and padded");
    tg_free(&t);
}

static void test_rand(void) {
    TG t;
    tg_init(&t, "rand");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(2, 5, 7), -1, 1);
    tg_out(&t, "uniform", add(g, x, g_rand(g, OP_RAND_UNIFORM, DT_F32, S(2, 5, 7), 3, L0)));
    Node *n = g_rand(g, OP_RAND_NORMAL, DT_F64, S(2, 7, 5), 9, L0);
    tg_out(&t, "normal_t", add(g, g_permute(g, n, (int[]){1, 0}, L0), g_scalar(g, 1, DT_F64, L0)));
    Node *u = g_rand(g, OP_RAND_UNIFORM, DT_F64, S(2, 10, 10), 4, L0);
    tg_out(&t, "strided", g_slice(g, u, (int64_t[]){1, 0}, (int64_t[]){4, 5}, (int64_t[]){2, 2}, L0));
    tg_out(&t, "padded", g_pad(g, g_rand(g, OP_RAND_NORMAL, DT_F32, S(2, 3, 3), 5, L0), (int64_t[]){1, 1}, (int64_t[]){1, 0}, L0));
    tg_out(&t, "raw", g_rand(g, OP_RAND_UNIFORM, DT_F32, S(1, 33), 6, L0));
    run_both(&t, "rand: own element index through views");
    tg_free(&t);
}

/* SGD and momentum: every state written in place, no workspace at all */
static void test_state_in_place(void) {
    TG t;
    tg_init(&t, "sgd");
    Graph *g = t.g;
    int aw, av, aw2;
    Node *w = tg_state(&t, "w", LETHE_PARAM, DT_F32, S(2, 16, 8), &aw);
    Node *gr = tg_in(&t, "g", DT_F32, S(2, 16, 8), -1, 1);
    int al = tg_arg(&t, "lr", LETHE_SCALAR, DT_F32, S(0), 0.05, 0.1);
    Node *lr = g_input(g, al, DT_F32, S(0), "lr", L0);
    t.e.args.data[al].in = lr;
    tg_set(&t, aw, sub(g, w, mul(g, lr, gr)));
    Node *v = tg_state(&t, "v", LETHE_STATE, DT_F32, S(2, 16, 8), &av);
    Node *w2 = tg_state(&t, "w2", LETHE_PARAM, DT_F32, S(2, 16, 8), &aw2);
    Node *vn = add(g, mul(g, v, sc(g, 0.9)), gr);
    tg_set(&t, av, vn);
    tg_set(&t, aw2, sub(g, w2, mul(g, lr, vn)));
    LProgram *p = run_both(&t, "state: sgd and momentum updated in place");
    if (p)
        th_check(count_kernels(p, "_copy") == 0 && p->workspace_bytes == 0, "state: in-place updates need no copies",
                 "%d copies, workspace %llu", count_kernels(p, "_copy"), (unsigned long long)p->workspace_bytes);
    tg_free(&t);
}

/* Updates that read each other's old values (v' = mu v + g, w' = w - lr v:
 * the rule language's simultaneous assignment), and Adam, whose parameter
 * update reads the new moments: each becomes one loop with several stores,
 * still in place. */
static void test_sibling_updates(void) {
    TG t;
    tg_init(&t, "siblings");
    Graph *g = t.g;
    int av, aw, am, as, ap;
    Node *gr = tg_in(&t, "g", DT_F32, S(2, 12, 10), -1, 1);
    Node *v = tg_state(&t, "v", LETHE_STATE, DT_F32, S(2, 12, 10), &av);
    Node *w = tg_state(&t, "w", LETHE_PARAM, DT_F32, S(2, 12, 10), &aw);
    tg_set(&t, av, add(g, mul(g, v, sc(g, 0.9)), add(g, gr, mul(g, w, sc(g, 1e-3)))));
    tg_set(&t, aw, sub(g, w, mul(g, v, sc(g, 0.1))));
    Node *m = tg_state(&t, "m", LETHE_STATE, DT_F32, S(2, 12, 10), &am);
    Node *s2 = tg_state(&t, "s", LETHE_STATE, DT_F32, S(2, 12, 10), &as);
    Node *p = tg_state(&t, "p", LETHE_PARAM, DT_F32, S(2, 12, 10), &ap);
    Node *mn = add(g, mul(g, m, sc(g, 0.9)), mul(g, gr, sc(g, 0.1)));
    Node *sn = add(g, mul(g, s2, sc(g, 0.999)), mul(g, mul(g, gr, gr), sc(g, 0.001)));
    tg_set(&t, am, mn);
    tg_set(&t, as, sn);
    Node *step = g_binary(g, OP_DIV, mn, add(g, un(g, OP_SQRT, un(g, OP_ABS, sn)), sc(g, 1e-8)), L0);
    tg_set(&t, ap, sub(g, mul(g, p, sc(g, 0.99)), mul(g, step, sc(g, 1e-3))));
    LProgram *pr = run_both(&t, "state: sibling updates fused");
    if (pr)
        th_check(pr->kernels.len == 1 && count_kernels(pr, "_copy") == 0 && pr->workspace_bytes == 0,
                 "siblings: momentum and adam (sharing g) are one in-place loop", "%d kernels, %d copies, workspace %llu",
                 pr->kernels.len, count_kernels(pr, "_copy"), (unsigned long long)pr->workspace_bytes);
    tg_free(&t);
}

static void test_state_hazards(void) {
    TG t;
    tg_init(&t, "hazard");
    Graph *g = t.g;
    int aw, at, aa, ab, am, ar;
    /* the old value is read by a kernel that also needs the new one */
    Node *w = tg_state(&t, "w", LETHE_PARAM, DT_F32, S(2, 6, 5), &aw);
    Node *gr = tg_in(&t, "g", DT_F32, S(2, 6, 5), -1, 1);
    Node *wn = sub(g, w, gr);
    tg_set(&t, aw, wn);
    Node *d = sub(g, wn, w);
    tg_out(&t, "moved", g_reduce(g, OP_SUM, mul(g, d, d), 3, false, L0));
    /* the writer reads the old value at another element */
    Node *tw = tg_state(&t, "t", LETHE_STATE, DT_F32, S(2, 5, 5), &at);
    tg_set(&t, at, mul(g, g_permute(g, tw, (int[]){1, 0}, L0), sc(g, 2)));
    /* a swap */
    Node *a = tg_state(&t, "a", LETHE_STATE, DT_F64, S(2, 4, 3), &aa);
    Node *b = tg_state(&t, "b", LETHE_STATE, DT_F64, S(2, 4, 3), &ab);
    tg_set(&t, aa, b);
    tg_set(&t, ab, a);
    /* an opaque writer reading the old value */
    Node *m = tg_state(&t, "m", LETHE_STATE, DT_F32, S(2, 4, 4), &am);
    tg_set(&t, am, g_matmul(g, m, m, L0));
    /* a reduction writer: running mean of a batch statistic */
    Node *rm = tg_state(&t, "rm", LETHE_BUFFER, DT_F32, S(2, 1, 5), &ar);
    tg_set(&t, ar, add(g, mul(g, rm, sc(g, 0.9)), mul(g, red(g, OP_SUM, g_slice(g, gr, (int64_t[]){0, 0}, (int64_t[]){6, 5}, NULL, L0), 1), sc(g, 0.1))));
    LProgram *p = run_both(&t, "state: hazards (old value read after the update, transposed, swap, matmul)");
    if (p)
        /* w, t, m and one side of the swap go through a temporary; the swap
         * itself is two copies; rm reads its old value in place */
        th_check(count_kernels(p, "_copy") == 6, "hazards: four updates go through a temporary and a copy", "%d copies",
                 count_kernels(p, "_copy"));
    tg_free(&t);

    /* a reader of the old value that the graph lists after the update but
     * that does not depend on it: the scheduler runs it first */
    tg_init(&t, "reorder");
    g = t.g;
    w = tg_state(&t, "w", LETHE_PARAM, DT_F32, S(2, 6, 5), &aw);
    gr = tg_in(&t, "g", DT_F32, S(2, 6, 5), -1, 1);
    Node *x = tg_in(&t, "x", DT_F32, S(2, 6, 5), -1, 1);
    tg_set(&t, aw, sub(g, w, gr));
    tg_out(&t, "loss", g_reduce(g, OP_SUM, mul(g, w, x), 3, false, L0));
    p = run_both(&t, "state: a reader of the old value is scheduled before the update");
    if (p)
        th_check(count_kernels(p, "_copy") == 0, "reorder: no copy needed", "%d copies", count_kernels(p, "_copy"));
    tg_free(&t);
}

/* Four rounds of softmax over rows: each round's temporaries die quickly,
 * so the workspace reuses them. */
static void test_memory_reuse(void) {
    TG t;
    tg_init(&t, "reuse");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(2, 32, 64), -2, 2);
    for (int r = 0; r < 4; r++) {
        Node *m = red(g, OP_RMAX, x, 2);
        Node *e = un(g, OP_EXP, sub(g, x, m));
        x = mul(g, g_binary(g, OP_DIV, e, red(g, OP_SUM, e, 2), L0), sc(g, 10));
    }
    tg_out(&t, "y", x);
    LProgram *p = run_both(&t, "memory: chained softmax");
    if (p)
        th_check(p->workspace_bytes < workspace_sum(p) / 2, "memory: buffers are reused",
                 "workspace %llu of %llu bytes", (unsigned long long)p->workspace_bytes,
                 (unsigned long long)workspace_sum(p));
    tg_free(&t);
}

static void test_edge_cases(void) {
    TG t;
    tg_init(&t, "edges");
    Graph *g = t.g;
    Node *z = tg_in(&t, "z", DT_F32, S(2, 0, 5), -1, 1);
    Node *s = tg_in(&t, "s", DT_F64, S(0), -1, 1);
    Node *x = tg_in(&t, "x", DT_F32, S(2, 4, 6), -1, 1);
    Node *b = tg_in(&t, "b", DT_F32, S(2, 6, 3), -1, 1);
    Node *ix = tg_in(&t, "ix", DT_I32, S(1, 5), 0, 5);
    Node *bl = tg_in(&t, "bl", DT_BOOL, S(2, 3, 4), 0, 1);
    tg_out(&t, "empty_sum", red(g, OP_SUM, z, 1));
    tg_out(&t, "empty_elem", add(g, z, sc(g, 1)));
    tg_out(&t, "scalar", mul(g, s, g_scalar(g, 2, DT_F64, L0)));
    tg_out(&t, "scalar_bcast", add(g, x, g_cast(g, s, DT_F32, L0)));
    Node *twice = un(g, OP_EXP, x);
    tg_out(&t, "twice1", twice);
    tg_out(&t, "twice2", twice);
    Node *p = x;
    for (int i = 0; i < 20; i++)
        p = g_pad(g, p, (int64_t[]){i % 2, 1 - i % 2}, (int64_t[]){1 - i % 2, i % 2}, L0);
    tg_out(&t, "pads", add(g, p, sc(g, 1)));
    tg_out(&t, "rand_matmul", g_matmul(g, g_rand(g, OP_RAND_NORMAL, DT_F32, S(2, 5, 6), 11, L0), b, L0));
    tg_out(&t, "const_matmul", g_matmul(g, g_const(g, 0.5, DT_F32, S(2, 5, 6), L0), b, L0));
    Node *xc = g_rand(g, OP_RAND_UNIFORM, DT_F32, S(4, 1, 2, 5, 5), 12, L0);
    Node *wc = tg_in(&t, "wc", DT_F32, S(4, 3, 2, 3, 3), -1, 1);
    tg_out(&t, "rand_conv", g_conv2d(g, xc, wc, 1, 1, 1, 1, L0));
    Node *ix1 = g_binary(g, OP_ADD, ix, g_scalar(g, 1, DT_I32, L0), L0);
    tg_out(&t, "computed_index", g_gather(g, g_reshape(g, x, S(2, 6, 4), L0), ix1, 0, 0, L0));
    tg_out(&t, "bool_any", red(g, OP_RMAX, bl, 2));
    tg_out(&t, "bool_all", red(g, OP_RMIN, bl, 1));
    tg_out(&t, "bool_count", red(g, OP_SUM, bl, 3));
    run_both(&t, "edges: empty tensors, scalars, shared outputs, long pad chains, leaf operands");
    tg_free(&t);

    /* a max over an empty axis is the identity, -inf (refeval leaves 0:
     * checked here directly) */
    tg_init(&t, "empty_max");
    z = tg_in(&t, "z", DT_F32, S(2, 0, 3), -1, 1);
    tg_out(&t, "m", red(t.g, OP_RMAX, z, 1));
    LProgram *pr = lower_entry(&t.e, NULL);
    float zb[1], mb[3] = {0, 0, 0};
    void *args[2] = {zb, mb};
    char err[256];
    int rc = loopinterp_run(pr, args, NULL, 0, 0, err, sizeof err);
    th_check(!rc && isinf(mb[0]) && mb[0] < 0 && isinf(mb[2]), "edges: max over an empty axis is -inf", "rc %d (%s), %g",
             rc, err, mb[0]);
    tg_free(&t);
}

static void test_dumps(void) {
    TG t;
    tg_init(&t, "dumps");
    Graph *g = t.g;
    Node *x = tg_in(&t, "x", DT_F32, S(2, 4, 8), -1, 1);
    Node *e = un(g, OP_EXP, x);
    tg_out(&t, "y", g_binary(g, OP_DIV, e, red(g, OP_SUM, e, 2), L0));
    FILE *f = tmpfile();
    unsigned saved = dump_flags;
    FILE *saved_file = dump_file;
    dump_flags = DUMP_FUSION | DUMP_MEMORY;
    dump_file = f;
    lower_entry(&t.e, NULL);
    dump_flags = saved;
    dump_file = saved_file;
    char buf[4096] = {0};
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    th_check(strstr(buf, "fusion dumps: 3 kernels") && strstr(buf, "reduce") && strstr(buf, "memory dumps:"),
             "dumps: -d fusion and -d memory", "got:\n%s", buf);
    tg_free(&t);
}

int main(void) {
    test_elementwise();
    test_loop_shapes();
    test_views();
    test_reductions();
    test_softmax();
    test_matmul();
    conv_case(DT_F32, false, "conv2d and gradients, stride 2, padding, 1x1");
    conv_case(DT_F64, true, "conv2d and gradients in f64, chunked im2col");
    test_gather_scatter();
    test_fold();
    test_rand();
    test_state_in_place();
    test_sibling_updates();
    test_state_hazards();
    test_memory_reuse();
    test_edge_cases();
    test_dumps();
    return th_exit();
}
