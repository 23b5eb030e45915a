/* test_backend.c: the LLVM backend on hand-built loop IR.
 *
 * Each test builds LPrograms with the constructors of loopir.c and a minimal
 * CompUnit (no graph), emits a shared object with llvm_emit(EMIT_SO) into
 * th_tmpdir(), dlopens it and checks results against plain C: every
 * elementwise op of ops.def in f32/f64/i32/bool, masked loads against guard
 * pages, reductions, parallel loops at 1 and 2 threads, GEMM, Philox,
 * exp/log/tanh accuracy sweeps, -O0 vs -O3, the descriptor, the other
 * output kinds and the C header. Lines starting with '#' are measurements.
 */
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "loopir.h"
#include "philox.h"
#include "threadpool.h"

/* defined by main.c in lethec; weak so that a library definition wins */
__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

/* ---------------------------------------------------------------------------
 * building programs */

static Entry *entry_new(const char *name) {
    Entry *e = xalloc(sizeof *e);
    e->name = name;
    e->kind = "fn";
    return e;
}

static LProgram *prog_new(const char *name) {
    LProgram *p = xalloc(sizeof *p);
    p->entry = entry_new(name);
    return p;
}

static int add_arg(Entry *e, const char *name, DType dt, int rank, const int64_t *dims, int kind, int access) {
    EntryArg a = {0};
    a.name = name;
    a.binding = "x";
    a.path = "";
    a.kind = kind;
    a.access = access;
    a.dtype = dt;
    a.shape = shape_make(rank, dims);
    a.scalar_default = NAN;
    a.layer = -1;
    vec_push(&e->args, a);
    return e->args.len - 1;
}

/* a rank-1 argument and its buffer */
static int arg1(LProgram *p, const char *name, DType dt, int64_t n, int access) {
    int a = add_arg((Entry *)p->entry, name, dt, 1, &n, access == LETHE_READ ? LETHE_INPUT : LETHE_OUTPUT, access);
    return lp_add_buf(p, (LBuf){.kind = LB_ARG, .arg = a, .dtype = dt, .nelem = n, .name = name});
}

static int ws_buf(LProgram *p, DType dt, int64_t n, const char *name) {
    uint64_t off = (p->workspace_bytes + 63) / 64 * 64;
    p->workspace_bytes = off + (uint64_t)n * (uint64_t)dtype_size(dt);
    return lp_add_buf(p, (LBuf){.kind = LB_WORKSPACE, .offset = off, .dtype = dt, .nelem = n, .name = name});
}

static LExpr *I(int64_t v) { return le_const_i(DT_I64, v); }
static LExpr *V(LKernel *k, int v) { return le_var(k, v); }
static LExpr *LD(LProgram *p, int b, LExpr *idx) { return le_load(p, b, idx, NULL); }
static LExpr *op2(Op op, LExpr *a, LExpr *b) { return le_op2(op, a->dtype, a, b); }
static LExpr *cmp2(Op op, LExpr *a, LExpr *b) { return le_op2(op, DT_BOOL, a, b); }
static void push(LKernel *k, LStmt *s) { vec_push(&k->body, s); }
static void push_in(LStmt *f, LStmt *s) { vec_push(&f->body, s); }

static CompUnit *unit_of(LProgram **progs, int n) {
    CompUnit *cu = xalloc(sizeof *cu);
    for (int i = 0; i < n; i++)
        vec_push(&cu->entries, (Entry *)progs[i]->entry);
    return cu;
}

/* llvm_emit with error recovery: false (and the error on stderr) on failure */
static bool emit(CompUnit *cu, LProgram **progs, int n, EmitKind kind, const char *path, const BackendOptions *o) {
    jmp_buf jb;
    diag_recover = &jb;
    if (setjmp(jb)) {
        diag_recover = NULL;
        return false;
    }
    llvm_emit(cu, progs, n, kind, path, o);
    diag_recover = NULL;
    return true;
}

static BackendOptions opts(int level) { return (BackendOptions){.opt_level = level}; }

/* emits progs as a shared object named after `tag` and loads it */
static const lethe_program *build(LProgram **progs, int n, const BackendOptions *o, const char *tag) {
    const char *so = xfmt("%s/%s.so", th_tmpdir(), tag);
    if (!emit(unit_of(progs, n), progs, n, EMIT_SO, so, o))
        return NULL;
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", so, dlerror());
        return NULL;
    }
    return dlsym(h, o && o->program_symbol ? o->program_symbol : LETHE_PROGRAM_SYMBOL);
}

static const lethe_program *build1(LProgram *p, int level, const char *tag) {
    BackendOptions o = opts(level);
    return build(&p, 1, &o, tag);
}

/* test buffers: 64-byte aligned, zeroed, freed together by release() after
 * each test (so that the sanitizer build sees no leaks) */
static void **live;
static int nlive, caplive;

static void *amalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        abort();
    memset(p, 0, n ? n : 64);
    if (nlive == caplive) {
        caplive = caplive ? 2 * caplive : 64;
        live = realloc(live, (size_t)caplive * sizeof *live);
    }
    live[nlive++] = p;
    return p;
}

static void release(void) {
    for (int i = 0; i < nlive; i++)
        free(live[i]);
    nlive = 0;
}

/* runs entry 0 of pg with its own workspace; ctx NULL = serial, seed 0 */
static int run(const lethe_program *pg, void **args, lethe_ctx *ctx) {
    lethe_ctx serial = {0};
    return pg->entries[0].fn(args, amalloc(pg->entries[0].workspace_bytes), ctx ? ctx : &serial);
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------
 * elementwise: every OK_ELEM op, per dtype */

enum { XA, XB, XP, XC, XK, XNONE };   /* operands: a, b, p (> 0), c (bool), constant */

typedef struct Case {
    Op op;
    int x[3];
    double k;      /* XK */
    DType to;      /* CAST target */
} Case;

static bool op_tested[OP_COUNT];

static LExpr *operand(LProgram *p, const int *in, int x, LExpr *i, DType dt, double k) {
    switch (x) {
    case XA: return LD(p, in[0], i);
    case XB: return LD(p, in[1], i);
    case XP: return LD(p, in[2], i);
    case XC: return LD(p, in[3], i);
    default: return le_const_f(dt, k);
    }
}

static DType result_dtype(const Case *c, DType dt) {
    if (c->op == OP_CAST)
        return c->to;
    int rule = op_info[c->op].dtype_rule;
    return rule == DR_CMP || rule == DR_BOOL ? DT_BOOL : dt;
}

static bool approx_op(Op op) {
    return op == OP_EXP || op == OP_LOG || op == OP_TANH || op == OP_SIGMOID || op == OP_GELU || op == OP_POW;
}

/* reference of an approximate op, in long double */
static long double ref_approx(Op op, long double a, long double b) {
    switch (op) {
    case OP_EXP: return expl(a);
    case OP_LOG: return logl(a);
    case OP_TANH: return tanhl(a);
    case OP_SIGMOID: return 1 / (1 + expl(-a));
    case OP_GELU: return 0.5L * a * (1 + tanhl(0.7978845608028654L * (a + 0.044715L * a * a * a)));
    case OP_POW: return powl(a, b);
    default: abort();
    }
}

/* exact ops in the precision of T, as C computes them */
#define DEF_REF(T, NAME, FMOD, SQRT)                                                                 \
    static T NAME(Op op, T a, T b, T p) {                                                            \
        switch (op) {                                                                                \
        case OP_NEG: return -a;                                                                      \
        case OP_SQRT: return SQRT(p);                                                                \
        case OP_RSQRT: return (T)1 / SQRT(p);                                                        \
        case OP_RELU: return a > 0 ? a : 0;                                                          \
        case OP_ABS: return a < 0 ? -a : a;                                                          \
        case OP_SIGN: return (T)((a > 0) - (a < 0));                                                 \
        case OP_DETACH: return a;                                                                    \
        case OP_ADD: return a + b;                                                                   \
        case OP_SUB: return a - b;                                                                   \
        case OP_MUL: return a * b;                                                                   \
        case OP_DIV: return a / b;                                                                   \
        case OP_MOD: return FMOD(a, b);                                                              \
        case OP_MAX: return a > b ? a : b;                                                           \
        case OP_MIN: return a < b ? a : b;                                                           \
        default: abort();                                                                            \
        }                                                                                            \
    }
DEF_REF(float, ref_f32, fmodf, sqrtf)
DEF_REF(double, ref_f64, fmod, sqrt)

static int64_t ref_i32(Op op, int32_t a, int32_t b) {
    switch (op) {
    case OP_NEG: return (int32_t)(0u - (uint32_t)a);
    case OP_RELU: return a > 0 ? a : 0;
    case OP_ABS: return a < 0 ? (int32_t)(0u - (uint32_t)a) : a;
    case OP_SIGN: return (a > 0) - (a < 0);
    case OP_DETACH: return a;
    case OP_ADD: return (int32_t)((uint32_t)a + (uint32_t)b);
    case OP_SUB: return (int32_t)((uint32_t)a - (uint32_t)b);
    case OP_MUL: return (int32_t)((uint32_t)a * (uint32_t)b);
    /* the backend's definitions where C's are undefined: x / 0 = x % 0 = 0,
     * INT_MIN / -1 = INT_MIN, INT_MIN % -1 = 0 */
    case OP_DIV: return b == 0 ? 0 : (a == INT32_MIN && b == -1) ? INT32_MIN : a / b;
    case OP_MOD: return b == 0 || (a == INT32_MIN && b == -1) ? 0 : a % b;
    case OP_MAX: return a > b ? a : b;
    case OP_MIN: return a < b ? a : b;
    default: abort();
    }
}

static int ref_cmp(Op op, double a, double b) {
    switch (op) {
    case OP_LT: return a < b;
    case OP_LE: return a <= b;
    case OP_GT: return a > b;
    case OP_GE: return a >= b;
    case OP_EQ: return a == b;
    case OP_NE: return a != b;
    case OP_AND: return a && b;
    case OP_OR: return a || b;
    default: abort();
    }
}

static double load_as_double(const void *buf, DType dt, int64_t i) {
    switch (dt) {
    case DT_F32: return ((const float *)buf)[i];
    case DT_F64: return ((const double *)buf)[i];
    case DT_I32: return ((const int32_t *)buf)[i];
    case DT_BOOL: return ((const uint8_t *)buf)[i];
    default: abort();
    }
}

/* expected value of case c at element i; *tol = relative tolerance */
static double expect(const Case *c, DType dt, const void *const *in, int64_t i, double *tol) {
    double a = load_as_double(in[0], dt, i), b = load_as_double(in[1], dt, i);
    double p = load_as_double(in[2], dt, i), cond = load_as_double(in[3], DT_BOOL, i);
    double x[3];
    for (int j = 0; j < 3; j++)
        x[j] = c->x[j] == XA ? a : c->x[j] == XB ? b : c->x[j] == XP ? p : c->x[j] == XC ? cond : c->k;
    *tol = 0;
    switch (op_info[c->op].dtype_rule) {
    case DR_CMP: case DR_BOOL:
        return c->op == OP_NOT ? !x[0] : ref_cmp(c->op, x[0], x[1]);
    case DR_WHERE:
        return x[0] ? x[1] : x[2];
    default: break;
    }
    if (c->op == OP_CAST) {
        if (c->to == DT_BOOL) return x[0] != 0;
        if (c->to == DT_I32) return (double)(int32_t)x[0];
        if (c->to == DT_F32) return (double)(float)x[0];
        return x[0];
    }
    if (approx_op(c->op)) {
        if (c->op == OP_POW && c->x[1] == XK && (c->k == 1 || c->k == 2 || c->k == 3 || c->k == -1 || c->k == -2)) {
            /* multiplication chains, exact in the dtype */
            if (dt == DT_F32) {
                float r = (float)x[0];
                for (int j = 1; j < (int)fabs(c->k); j++)
                    r *= (float)x[0];
                return c->k < 0 ? 1.0f / r : r;
            }
            double r = x[0];
            for (int j = 1; j < (int)fabs(c->k); j++)
                r *= x[0];
            return c->k < 0 ? 1.0 / r : r;
        }
        *tol = dt == DT_F32 ? (c->op == OP_GELU ? 1e-5 : 3.6e-7) : (c->op == OP_GELU ? 1e-13 : 1e-14);
        return (double)ref_approx(c->op, x[0], x[1]);
    }
    switch (dt) {
    case DT_F32: return ref_f32(c->op, (float)x[0], (float)x[1], (float)p);
    case DT_F64: return ref_f64(c->op, x[0], x[1], p);
    case DT_I32: return (double)ref_i32(c->op, (int32_t)x[0], (int32_t)x[1]);
    case DT_BOOL: {
        /* bool arithmetic: as 0/1 integers, then != 0 */
        int64_t r = ref_i32(c->op, (int32_t)x[0], (int32_t)x[1]);
        return r != 0;
    }
    default: abort();
    }
}

static void fill_inputs(DType dt, void **in, int64_t n, uint64_t seed) {
    int ldt = dt == DT_F32 ? LETHE_F32 : dt == DT_F64 ? LETHE_F64 : dt == DT_I32 ? LETHE_I32 : LETHE_BOOL;
    double lo = dt == DT_I32 ? -1000 : -3, hi = dt == DT_I32 ? 1000 : 3;
    th_fill(in[0], ldt, n, lo, hi, seed);
    th_fill(in[1], ldt, n, dt == DT_I32 ? -50 : lo, dt == DT_I32 ? 50 : hi, seed + 1);
    th_fill(in[2], ldt, n, dt == DT_I32 ? 1 : 0.01, dt == DT_I32 ? 100 : 5, seed + 2);
    th_fill(in[3], LETHE_BOOL, n, 0, 1, seed + 3);
    size_t sz = (size_t)dtype_size(dt);
    for (int64_t i = 0; i < n; i += 7)   /* equal pairs for == and != */
        memcpy((char *)in[1] + i * sz, (char *)in[0] + i * sz, sz);
    if (dt == DT_I32) {
        int32_t *a = in[0], *b = in[1];
        a[1] = INT32_MIN, b[1] = -1;
        b[2] = 0, b[3] = 0, a[3] = INT32_MIN;
    }
}

/* one program: a parallel loop storing every case into its own output */
static LProgram *elem_program(DType dt, const Case *cases, int ncases, int64_t n, const char *name) {
    LProgram *p = prog_new(name);
    int in[4] = {arg1(p, "a", dt, n, LETHE_READ), arg1(p, "b", dt, n, LETHE_READ), arg1(p, "p", dt, n, LETHE_READ),
                 arg1(p, "c", DT_BOOL, n, LETHE_READ)};
    LKernel *k = lk_new(p, "k0_elementwise");
    int i;
    LStmt *f = ls_for(k, n, true, &i);
    for (int j = 0; j < ncases; j++) {
        const Case *c = &cases[j];
        DType rdt = result_dtype(c, dt);
        int out = arg1(p, xfmt("o%d", j), rdt, n, LETHE_WRITE);
        LExpr *x[3] = {0};
        for (int a = 0; a < op_info[c->op].arity; a++) {
            DType odt = c->x[a] == XC ? DT_BOOL : dt;
            x[a] = operand(p, in, c->x[a], V(k, i), odt, c->k);
        }
        LExpr *e = op_info[c->op].arity == 1 ? le_op1(c->op, rdt, x[0])
                 : op_info[c->op].arity == 2 ? le_op2(c->op, rdt, x[0], x[1])
                                             : le_op3(c->op, rdt, x[0], x[1], x[2]);
        push_in(f, ls_store(out, V(k, i), e, false));
    }
    push(k, f);
    return p;
}

static int elem_cases(DType dt, Case *out) {
    int n = 0;
#define C1(o, a) out[n++] = (Case){OP_##o, {a, XNONE, XNONE}, 0, 0}
#define C2(o, a, b) out[n++] = (Case){OP_##o, {a, b, XNONE}, 0, 0}
#define CK(o, a, kv) out[n++] = (Case){OP_##o, {a, XK, XNONE}, kv, 0}
    bool fl = dt == DT_F32 || dt == DT_F64;
    if (dt != DT_BOOL) {
        C1(NEG, XA); C1(RELU, XA); C1(ABS, XA); C1(SIGN, XA); C1(DETACH, XA);
        C2(ADD, XA, XB); C2(SUB, XA, XB); C2(MUL, XA, XB); C2(DIV, XA, XB); C2(MOD, XA, XB);
        C2(MAX, XA, XB); C2(MIN, XA, XB);
    } else {
        C1(NOT, XA); C2(AND, XA, XB); C2(OR, XA, XB);
        C1(NEG, XA); C1(RELU, XA); C1(ABS, XA); C1(SIGN, XA); C1(DETACH, XA);
        C2(ADD, XA, XB); C2(SUB, XA, XB); C2(MUL, XA, XB); C2(DIV, XA, XB); C2(MOD, XA, XB);
        C2(MAX, XA, XB); C2(MIN, XA, XB);
    }
    if (fl) {
        C1(EXP, XA); C1(LOG, XP); C1(SQRT, XP); C1(RSQRT, XP); C1(TANH, XA); C1(SIGMOID, XA); C1(GELU, XA);
        C2(POW, XP, XA);
        CK(POW, XA, 2); CK(POW, XA, 3); CK(POW, XA, -1); CK(POW, XA, 4); CK(POW, XA, 5); CK(POW, XA, -3);
    }
    C2(LT, XA, XB); C2(LE, XA, XB); C2(GT, XA, XB); C2(GE, XA, XB); C2(EQ, XA, XB); C2(NE, XA, XB);
    out[n++] = (Case){OP_WHERE, {XC, XA, XB}, 0, 0};
    static const DType all[] = {DT_BOOL, DT_I32, DT_F32, DT_F64};
    for (int j = 0; j < 4; j++)
        if (all[j] != dt)
            out[n++] = (Case){OP_CAST, {XA, XNONE, XNONE}, 0, all[j]};
#undef C1
#undef C2
#undef CK
    return n;
}

static const char *case_name(const Case *c, DType dt) {
    if (c->op == OP_CAST)
        return xfmt("elem_%s_cast_%s", dtype_name(dt), dtype_name(c->to));
    if (c->x[1] == XK)
        return xfmt("elem_%s_pow_const_%g", dtype_name(dt), c->k);
    return xfmt("elem_%s_%s", dtype_name(dt), op_info[c->op].name);
}

/* runs the elementwise program of dt at opt level `level`; returns the
 * outputs (malloc'd) for the -O0/-O3 comparison */
static void **test_elementwise(DType dt, int level, bool check) {
    Case cases[64];
    int nc = elem_cases(dt, cases);
    int64_t n = 1003;   /* not a multiple of any vector width */
    LProgram *p = elem_program(dt, cases, nc, n, xfmt("elem_%s", dtype_name(dt)));
    const lethe_program *pg = build1(p, level, xfmt("elem_%s_O%d", dtype_name(dt), level));
    if (!th_check(pg != NULL, xfmt("elem_%s_O%d_build", dtype_name(dt), level), "llvm_emit failed"))
        return NULL;
    void **args = amalloc(((size_t)nc + 4) * sizeof(void *));
    for (int j = 0; j < 4; j++)
        args[j] = amalloc((size_t)n * 8);
    fill_inputs(dt, args, n, 42);
    for (int j = 0; j < nc; j++)
        args[4 + j] = amalloc((size_t)n * 8);
    run(pg, args, NULL);
    for (int j = 0; check && j < nc; j++) {
        const Case *c = &cases[j];
        DType rdt = result_dtype(c, dt);
        int bad = -1;
        double got = 0, want = 0, tol = 0;
        for (int64_t i = 0; i < n && bad < 0; i++) {
            got = load_as_double(args[4 + j], rdt, i);
            want = expect(c, dt, (const void *const *)args, i, &tol);
            if (rdt == DT_F32 && !tol)
                want = (float)want;
            bool ok = tol ? fabs(got - want) <= tol * fmax(fabs(want), c->op == OP_GELU ? 1e-2 : 1e-300)
                          : got == want && !signbit(got) == !signbit(want);
            if (!ok)
                bad = (int)i;
        }
        op_tested[c->op] = true;
        th_check(bad < 0, case_name(c, dt), "element %d: got %.17g, want %.17g (tol %g)", bad, got, want, tol);
    }
    return args;
}

/* ---------------------------------------------------------------------------
 * masked loads: out[i] = in[i - P] if P <= i < N + P else 0, with `in`
 * between two inaccessible pages */

static void test_masked_loads(void) {
    long page = sysconf(_SC_PAGESIZE);
    int64_t n = page / 4, pad = 37;
    LProgram *p = prog_new("pad");
    int in = arg1(p, "in", DT_F32, n, LETHE_READ);
    int out = arg1(p, "out", DT_F32, n + 2 * pad, LETHE_WRITE);
    LKernel *k = lk_new(p, "k0_pad");
    int i;
    LStmt *f = ls_for(k, n + 2 * pad, true, &i);
    LExpr *valid = le_op2(OP_AND, DT_BOOL, cmp2(OP_GE, V(k, i), I(pad)), cmp2(OP_LT, V(k, i), I(n + pad)));
    push_in(f, ls_store(out, V(k, i), le_load(p, in, op2(OP_SUB, V(k, i), I(pad)), valid), false));
    push(k, f);
    const lethe_program *pg = build1(p, 3, "pad");
    if (!th_check(pg != NULL, "masked_load_build", "llvm_emit failed"))
        return;
    char *mem = mmap(NULL, (size_t)page * 3, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(mem, (size_t)page, PROT_NONE);
    mprotect(mem + 2 * page, (size_t)page, PROT_NONE);
    float *x = (float *)(mem + page);
    for (int64_t j = 0; j < n; j++)
        x[j] = (float)j + 0.5f;
    float *y = amalloc((size_t)(n + 2 * pad) * 4);
    void *args[2] = {x, y};
    run(pg, args, NULL);   /* a load outside `in` would fault here */
    int bad = -1;
    for (int64_t j = 0; j < n + 2 * pad && bad < 0; j++) {
        float want = j >= pad && j < n + pad ? (float)(j - pad) + 0.5f : 0.0f;
        if (y[j] != want)
            bad = (int)j;
    }
    th_check(bad < 0, "masked_load_padding", "element %d wrong", bad);
    munmap(mem, (size_t)page * 3);
}

/* ---------------------------------------------------------------------------
 * reductions, workspace, kernel order */

enum { RR = 67, RC = 129 };

static LProgram *reduce_program(bool parallel) {
    LProgram *p = prog_new("reduce");
    int x = arg1(p, "x", DT_F32, RR * RC, LETHE_READ);
    int xi = arg1(p, "xi", DT_I32, RR * RC, LETHE_READ);
    int rowsum = arg1(p, "rowsum", DT_F32, RR, LETHE_WRITE);
    int rowmax = arg1(p, "rowmax", DT_F32, RR, LETHE_WRITE);
    int colsum = arg1(p, "colsum", DT_F32, RC, LETHE_WRITE);
    int colacc = arg1(p, "colacc", DT_F32, RC, LETHE_WRITE);
    int total = arg1(p, "total", DT_F32, 1, LETHE_WRITE);
    int rowsum_i = arg1(p, "rowsum_i", DT_I32, RR, LETHE_WRITE);
    int twice = arg1(p, "twice_plus_one", DT_F32, RR * RC, LETHE_WRITE);
    int ws = ws_buf(p, DT_F32, RR * RC, "t_ws");

    LKernel *k = lk_new(p, "k0_rows");
    int r, j, acc;
    /* rowsum[r] = sum_j x[r, j]; rowsum_i likewise in i32 */
    LStmt *f = ls_for(k, RR, parallel, &r);
    push_in(f, ls_let(k, DT_F32, le_const_f(DT_F32, 0), &acc));
    int acci;
    push_in(f, ls_let(k, DT_I32, le_const_i(DT_I32, 0), &acci));
    LStmt *g = ls_for(k, RC, false, &j);
    LExpr *idx = op2(OP_ADD, op2(OP_MUL, V(k, r), I(RC)), V(k, j));
    push_in(g, ls_assign(acc, op2(OP_ADD, V(k, acc), LD(p, x, idx))));
    push_in(g, ls_assign(acci, op2(OP_ADD, V(k, acci), LD(p, xi, idx))));
    push_in(f, g);
    push_in(f, ls_store(rowsum, V(k, r), V(k, acc), false));
    push_in(f, ls_store(rowsum_i, V(k, r), V(k, acci), false));
    push(k, f);
    /* rowmax */
    f = ls_for(k, RR, parallel, &r);
    push_in(f, ls_let(k, DT_F32, le_const_f(DT_F32, -INFINITY), &acc));
    g = ls_for(k, RC, false, &j);
    idx = op2(OP_ADD, op2(OP_MUL, V(k, r), I(RC)), V(k, j));
    push_in(g, ls_assign(acc, op2(OP_MAX, V(k, acc), LD(p, x, idx))));
    push_in(f, g);
    push_in(f, ls_store(rowmax, V(k, r), V(k, acc), false));
    push(k, f);

    /* colsum[j] = sum_r x[r, j], one column per outer iteration */
    k = lk_new(p, "k1_cols");
    f = ls_for(k, RC, parallel, &j);
    push_in(f, ls_let(k, DT_F32, le_const_f(DT_F32, 0), &acc));
    g = ls_for(k, RR, false, &r);
    push_in(g, ls_assign(acc, op2(OP_ADD, LD(p, x, op2(OP_ADD, op2(OP_MUL, V(k, r), I(RC)), V(k, j))), V(k, acc))));
    push_in(f, g);
    push_in(f, ls_store(colsum, V(k, j), V(k, acc), false));
    push(k, f);
    /* colacc: zero, then accumulate rows into it (serial, vectorized over j) */
    f = ls_for(k, RC, false, &j);
    push_in(f, ls_store(colacc, V(k, j), le_const_f(DT_F32, 0), false));
    push(k, f);
    f = ls_for(k, RR, false, &r);
    g = ls_for(k, RC, false, &j);
    push_in(g, ls_store(colacc, V(k, j), LD(p, x, op2(OP_ADD, op2(OP_MUL, V(k, r), I(RC)), V(k, j))), true));
    push_in(f, g);
    push(k, f);

    /* a top-level accumulator updated by a serial loop */
    k = lk_new(p, "k2_total");
    int t;
    push(k, ls_let(k, DT_F32, le_const_f(DT_F32, 0), &t));
    int i;
    f = ls_for(k, RR * RC, false, &i);
    push_in(f, ls_assign(t, op2(OP_ADD, V(k, t), LD(p, x, V(k, i)))));
    push(k, f);
    push(k, ls_store(total, I(0), V(k, t), false));

    /* through the workspace: kernel 3 writes it, kernel 4 reads it */
    k = lk_new(p, "k3_ws");
    f = ls_for(k, RR * RC, parallel, &i);
    push_in(f, ls_store(ws, V(k, i), op2(OP_MUL, LD(p, x, V(k, i)), le_const_f(DT_F32, 2)), false));
    push(k, f);
    k = lk_new(p, "k4_ws");
    f = ls_for(k, RR * RC, parallel, &i);
    push_in(f, ls_store(twice, V(k, i), op2(OP_ADD, LD(p, ws, V(k, i)), le_const_f(DT_F32, 1)), false));
    push(k, f);
    return p;
}

typedef struct RedBufs { float *x, *rowsum, *rowmax, *colsum, *colacc, *total, *twice; int32_t *xi, *rowsum_i; } RedBufs;

static void *reduce_args(RedBufs *rb, void **args) {
    rb->x = amalloc(RR * RC * 4);
    rb->xi = amalloc(RR * RC * 4);
    th_fill(rb->x, LETHE_F32, RR * RC, 0.1, 2.0, 7);   /* positive: sums without cancellation */
    th_fill(rb->xi, LETHE_I32, RR * RC, -100, 100, 8);
    void *bufs[] = {rb->x, rb->xi, rb->rowsum = amalloc(RR * 4), rb->rowmax = amalloc(RR * 4), rb->colsum = amalloc(RC * 4),
                    rb->colacc = amalloc(RC * 4), rb->total = amalloc(64), rb->rowsum_i = amalloc(RR * 4),
                    rb->twice = amalloc(RR * RC * 4)};
    memcpy(args, bufs, sizeof bufs);
    return args;
}

static double max_rel(const float *a, const double *b, int n) {
    double w = 0;
    for (int i = 0; i < n; i++)
        w = fmax(w, fabs(a[i] - b[i]) / fmax(fabs(b[i]), 1e-30));
    return w;
}

static void test_reductions(void) {
    const lethe_program *pg = build1(reduce_program(true), 3, "reduce");
    if (!th_check(pg != NULL, "reduce_build", "llvm_emit failed"))
        return;
    RedBufs rb;
    void *args[9];
    reduce_args(&rb, args);
    run(pg, args, NULL);
    double rs[RR], rm[RR], cs[RC], tot = 0;
    int64_t rsi[RR];
    for (int r = 0; r < RR; r++) {
        rs[r] = 0, rm[r] = -INFINITY, rsi[r] = 0;
        for (int j = 0; j < RC; j++) {
            rs[r] += rb.x[r * RC + j];
            rm[r] = fmax(rm[r], rb.x[r * RC + j]);
            rsi[r] += rb.xi[r * RC + j];
            tot += rb.x[r * RC + j];
        }
    }
    for (int j = 0; j < RC; j++) {
        cs[j] = 0;
        for (int r = 0; r < RR; r++)
            cs[j] += rb.x[r * RC + j];
    }
    th_check(max_rel(rb.rowsum, rs, RR) < 1e-5, "reduce_row_sum", "rel err %g", max_rel(rb.rowsum, rs, RR));
    th_check(max_rel(rb.rowmax, rm, RR) == 0, "reduce_row_max", "rel err %g", max_rel(rb.rowmax, rm, RR));
    th_check(max_rel(rb.colsum, cs, RC) < 1e-5, "reduce_col_sum", "rel err %g", max_rel(rb.colsum, cs, RC));
    th_check(max_rel(rb.colacc, cs, RC) < 1e-5, "reduce_col_accumulate", "rel err %g", max_rel(rb.colacc, cs, RC));
    th_check(fabs(rb.total[0] - tot) / tot < 1e-5, "reduce_total_serial_accumulator", "got %g want %g", rb.total[0], tot);
    int bad = -1;
    for (int r = 0; r < RR; r++)
        if (rb.rowsum_i[r] != rsi[r])
            bad = r;
    th_check(bad < 0, "reduce_row_sum_i32", "row %d", bad);
    bad = -1;
    for (int i = 0; i < RR * RC; i++)
        if (rb.twice[i] != rb.x[i] * 2 + 1)
            bad = i;
    th_check(bad < 0, "workspace_between_kernels", "element %d", bad);
}

/* ---------------------------------------------------------------------------
 * parallel loops: pool of 1 and 2 threads, and no pool, agree bit for bit */

static int pf_calls;
static void counting_parallel_for(lethe_ctx *ctx, lethe_task_fn fn, void *closure, int64_t n, int64_t grain) {
    pf_calls++;
    lethe_parallel_for(ctx, fn, closure, n, grain);
}

static LProgram *rand_program(int64_t n) {
    LProgram *p = prog_new("rand");
    int u32 = arg1(p, "u32", DT_F32, n, LETHE_WRITE), u64 = arg1(p, "u64", DT_F64, n, LETHE_WRITE);
    int n32 = arg1(p, "n32", DT_F32, n, LETHE_WRITE), n64 = arg1(p, "n64", DT_F64, n, LETHE_WRITE);
    ((Entry *)p->entry)->uses_rng = true;
    LKernel *k = lk_new(p, "k0_rand");
    int i;
    LStmt *f = ls_for(k, n, true, &i);
    push_in(f, ls_store(u32, V(k, i), le_rand(OP_RAND_UNIFORM, DT_F32, 7, V(k, i)), false));
    push_in(f, ls_store(u64, V(k, i), le_rand(OP_RAND_UNIFORM, DT_F64, 8, V(k, i)), false));
    push_in(f, ls_store(n32, V(k, i), le_rand(OP_RAND_NORMAL, DT_F32, 9, V(k, i)), false));
    push_in(f, ls_store(n64, V(k, i), le_rand(OP_RAND_NORMAL, DT_F64, 10, op2(OP_ADD, V(k, i), I(5))), false));
    push(k, f);
    return p;
}

static void test_parallel(void) {
    const lethe_program *red = build1(reduce_program(true), 3, "reduce_par");
    const int64_t n = 100003;
    const lethe_program *rnd = build1(rand_program(n), 3, "rand_par");
    if (!th_check(red && rnd, "parallel_build", "llvm_emit failed"))
        return;
    float *ref[9] = {0};
    double *rref[4] = {0};
    const char *names[] = {"no pool", "1 thread", "2 threads"};
    bool same = true;
    int calls_with_pool = 0;
    for (int mode = 0; mode < 3; mode++) {
        lethe_pool *pool = mode ? lethe_pool_new(mode) : NULL;
        lethe_ctx ctx;
        lethe_ctx_init(&ctx, pool, 0x1234);
        if (pool)
            ctx.parallel_for = counting_parallel_for;
        pf_calls = 0;
        RedBufs rb;
        void *args[9];
        reduce_args(&rb, args);
        run(red, args, &ctx);
        void *rargs[4];
        for (int j = 0; j < 4; j++)
            rargs[j] = amalloc((size_t)n * 8);
        run(rnd, rargs, &ctx);
        if (mode == 2)
            calls_with_pool = pf_calls;
        static const int rlen[9] = {RR * RC, RR * RC, RR, RR, RC, RC, 1, RR, RR * RC};
        for (int j = 2; j < 9; j++) {
            if (!ref[j])
                ref[j] = args[j];
            else if (memcmp(ref[j], args[j], (size_t)rlen[j] * 4))
                same = false, printf("# parallel: output %d differs with %s\n", j, names[mode]);
        }
        for (int j = 0; j < 4; j++) {
            if (!rref[j])
                rref[j] = rargs[j];
            else if (memcmp(rref[j], rargs[j], (size_t)n * (j % 2 ? 8 : 4)))
                same = false, printf("# parallel: random output %d differs with %s\n", j, names[mode]);
        }
        lethe_pool_free(pool);
    }
    th_check(same, "parallel_deterministic_1_2_threads", "results depend on the thread count");
    th_check(calls_with_pool == 6, "parallel_for_called_per_parallel_loop", "%d calls, want 6", calls_with_pool);

}

/* the pool itself: every iteration exactly once, whatever n and grain;
 * a parallel_for from inside a chunk runs serially */
typedef struct PoolJob { int *hits; lethe_ctx *ctx; bool nest; } PoolJob;

static void count_task(void *closure, int64_t b, int64_t e) {
    PoolJob *j = closure;
    for (int64_t i = b; i < e; i++)
        __atomic_fetch_add(&j->hits[i], 1, __ATOMIC_RELAXED);
}

static void nesting_task(void *closure, int64_t b, int64_t e) {
    PoolJob *j = closure;
    PoolJob inner = {j->hits + b, j->ctx, false};
    lethe_parallel_for(j->ctx, count_task, &inner, e - b, 1);
}

static void test_pool(void) {
    enum { N = 10007 };
    static int hits[N];
    bool ok = true;
    for (int threads = 1; threads <= 3; threads++) {
        lethe_pool *pool = lethe_pool_new(threads);
        lethe_ctx ctx;
        lethe_ctx_init(&ctx, pool, 0);
        ok &= pool && ctx.parallel_for == lethe_parallel_for && ctx.nthreads == threads;
        for (int rep = 0; rep < 300; rep++) {
            int64_t n = rep % 7 == 0 ? 0 : 1 + (rep * 7919) % N, grain = 1 + rep % 50;
            memset(hits, 0, sizeof hits);
            PoolJob job = {hits, &ctx, rep % 2};
            lethe_parallel_for(&ctx, rep % 2 ? nesting_task : count_task, &job, n, grain);
            for (int64_t i = 0; i < N; i++)
                ok &= hits[i] == (i < n);
        }
        lethe_pool_free(pool);
    }
    th_check(ok, "pool_every_iteration_once", "an iteration ran twice or not at all");
}

/* ---------------------------------------------------------------------------
 * GEMM: cblas with transposes, offsets, leading dimensions, alpha, beta */

static void test_gemm(DType dt, bool ta, bool tb, double beta, bool batched) {
    const int64_t M = 37, N = 29, K = 41, nb = batched ? 3 : 1;
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 5;
    const int64_t a_off = 11, b_off = 5, c_off = 7;
    const int64_t asz = (ta ? K : M) * lda, bsz = (tb ? N : K) * ldb, csz = M * ldc;
    const int64_t alen = a_off + nb * asz, blen = b_off + nb * bsz, clen = c_off + nb * csz;
    const char *name = xfmt("gemm_%s%s%s_beta%g%s", dtype_name(dt), ta ? "_At" : "", tb ? "_Bt" : "", beta, batched ? "_batched" : "");
    LProgram *p = prog_new(name);
    int A = arg1(p, "A", dt, alen, LETHE_READ), B = arg1(p, "B", dt, blen, LETHE_READ);
    int Cb = arg1(p, "C", dt, clen, LETHE_READWRITE);
    LKernel *k = lk_new(p, "k0_gemm");
    LGemm gm = {.trans_a = ta, .trans_b = tb, .m = M, .n = N, .k = K, .alpha = 0.75, .beta = beta,
                .a_buf = A, .b_buf = B, .c_buf = Cb, .lda = lda, .ldb = ldb, .ldc = ldc};
    if (batched) {
        int bv;
        LStmt *f = ls_for(k, nb, false, &bv);
        gm.a_off = op2(OP_ADD, I(a_off), op2(OP_MUL, V(k, bv), I(asz)));
        gm.b_off = op2(OP_ADD, I(b_off), op2(OP_MUL, V(k, bv), I(bsz)));
        gm.c_off = op2(OP_ADD, I(c_off), op2(OP_MUL, V(k, bv), I(csz)));
        push_in(f, ls_gemm(&gm));
        push(k, f);
    } else {
        gm.a_off = I(a_off), gm.b_off = I(b_off), gm.c_off = I(c_off);
        push(k, ls_gemm(&gm));
    }
    const lethe_program *pg = build1(p, 2, name);
    if (!th_check(pg != NULL, xfmt("%s_build", name), "llvm_emit failed"))
        return;
    int ldt = dt == DT_F32 ? LETHE_F32 : LETHE_F64;
    size_t es = (size_t)dtype_size(dt);
    void *a = amalloc((size_t)alen * es), *b = amalloc((size_t)blen * es), *c = amalloc((size_t)clen * es);
    th_fill(a, ldt, alen, -1, 1, 1);
    th_fill(b, ldt, blen, -1, 1, 2);
    th_fill(c, ldt, clen, -1, 1, 3);
    double *c0 = malloc((size_t)clen * 8);
    for (int64_t i = 0; i < clen; i++)
        c0[i] = load_as_double(c, dt, i);
    void *args[3] = {a, b, c};
    run(pg, args, NULL);
    /* error relative to the magnitude of the terms summed (cancellation
     * makes |result| a poor scale) */
    double worst = 0;
    for (int64_t bi = 0; bi < nb; bi++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0, mag = 0;
                for (int64_t q = 0; q < K; q++) {
                    double av = load_as_double(a, dt, a_off + bi * asz + (ta ? q * lda + i : i * lda + q));
                    double bv = load_as_double(b, dt, b_off + bi * bsz + (tb ? j * ldb + q : q * ldb + j));
                    s += av * bv;
                    mag += fabs(av * bv);
                }
                int64_t ci = c_off + bi * csz + i * ldc + j;
                double want = 0.75 * s + beta * c0[ci];
                mag = 0.75 * mag + fabs(beta * c0[ci]);
                worst = fmax(worst, fabs(load_as_double(c, dt, ci) - want) / mag);
            }
    /* elements outside the sub-matrices (padding, offsets) are untouched */
    bool untouched = true;
    for (int64_t ci = 0; ci < clen; ci++) {
        int64_t r = ci - c_off, in_block = r >= 0 && r < nb * csz && (r % csz) % ldc < N;
        if (!in_block)
            untouched &= load_as_double(c, dt, ci) == c0[ci];
    }
    th_check(worst < (dt == DT_F32 ? 1e-6 : 1e-14) && untouched, name, "rel err %g, padding untouched %d", worst, untouched);
    free(c0);
}

/* ---------------------------------------------------------------------------
 * Philox: bit-identical to runtime/philox.h */

static void test_rand(void) {
    const int64_t n = 4099;
    const lethe_program *pg = build1(rand_program(n), 3, "rand");
    if (!th_check(pg != NULL, "rand_build", "llvm_emit failed"))
        return;
    lethe_ctx ctx = {.seed = 0x0123456789ABCDEFull, .counter = 0x100000003ull};
    float *u32 = amalloc((size_t)n * 4), *n32 = amalloc((size_t)n * 4);
    double *u64 = amalloc((size_t)n * 8), *n64 = amalloc((size_t)n * 8);
    void *args[4] = {u32, u64, n32, n64};
    run(pg, args, &ctx);
    int bu32 = -1, bu64 = -1, bn32 = -1, bn64 = -1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t s = ctx.seed, st = ctx.counter;
        if (u32[i] != (float)philox_uniform_at(s, 7, st, (uint64_t)i, 1) && bu32 < 0) bu32 = (int)i;
        if (u64[i] != philox_uniform_at(s, 8, st, (uint64_t)i, 0) && bu64 < 0) bu64 = (int)i;
        if (n32[i] != (float)philox_normal_at(s, 9, st, (uint64_t)i) && bn32 < 0) bn32 = (int)i;
        if (n64[i] != philox_normal_at(s, 10, st, (uint64_t)i + 5) && bn64 < 0) bn64 = (int)i;
    }
    th_check(bu32 < 0, "rand_uniform_f32_bit_identical", "element %d", bu32);
    th_check(bu64 < 0, "rand_uniform_f64_bit_identical", "element %d", bu64);
    th_check(bn32 < 0, "rand_normal_f32_bit_identical", "element %d", bn32);
    th_check(bn64 < 0, "rand_normal_f64_bit_identical", "element %d", bn64);
    double m = 0, v = 0;
    for (int64_t i = 0; i < n; i++)
        m += n64[i], v += n64[i] * n64[i];
    m /= (double)n, v = v / (double)n - m * m;
    th_check(fabs(m) < 0.1 && fabs(v - 1) < 0.1, "rand_normal_moments", "mean %g var %g", m, v);
}

/* ---------------------------------------------------------------------------
 * exp / log / tanh accuracy */

static LProgram *math_program(DType dt, int64_t n) {
    LProgram *p = prog_new(xfmt("math_%s", dtype_name(dt)));
    int x = arg1(p, "x", dt, n, LETHE_READ);
    int e = arg1(p, "exp", dt, n, LETHE_WRITE), l = arg1(p, "log", dt, n, LETHE_WRITE), t = arg1(p, "tanh", dt, n, LETHE_WRITE);
    LKernel *k = lk_new(p, "k0_math");
    int i;
    LStmt *f = ls_for(k, n, true, &i);
    push_in(f, ls_store(e, V(k, i), le_op1(OP_EXP, dt, LD(p, x, V(k, i))), false));
    push_in(f, ls_store(l, V(k, i), le_op1(OP_LOG, dt, LD(p, x, V(k, i))), false));
    push_in(f, ls_store(t, V(k, i), le_op1(OP_TANH, dt, LD(p, x, V(k, i))), false));
    push(k, f);
    return p;
}

/* error of a float result in units of the float ulp at the exact value */
static double ulp_err_f32(float got, double want) {
    if (isnan(want))
        return isnan(got) ? 0 : INFINITY;
    if (fabs(want) > FLT_MAX)
        return isinf(got) && !signbit(got) == !signbit(want) ? 0 : INFINITY;
    if (isinf(got))
        return INFINITY;
    int e;
    frexp(want, &e);
    double ulp = ldexp(1, (e - 1 < -126 ? -126 : e - 1) - 23);
    return fabs(got - want) / ulp;
}

static double rel_err_f64(double got, long double want) {
    if (isnan((double)want))
        return isnan(got) ? 0 : INFINITY;
    if (fabsl(want) > DBL_MAX)
        return isinf(got) && !signbit(got) == !signbit((double)want) ? 0 : INFINITY;
    if (want == 0)
        return got == 0 ? 0 : INFINITY;
    long double w = fabsl(want) < DBL_MIN ? DBL_MIN : fabsl(want);   /* subnormals: absolute */
    return (double)(fabsl((long double)got - want) / w);
}

static void test_math_f32(void) {
    const int64_t n = 1 << 16;
    const lethe_program *pg = build1(math_program(DT_F32, n), 3, "math_f32");
    if (!th_check(pg != NULL, "math_f32_build", "llvm_emit failed"))
        return;
    float *x = amalloc(n * 4), *out[3] = {amalloc(n * 4), amalloc(n * 4), amalloc(n * 4)};
    void *args[4] = {x, out[0], out[1], out[2]};
    double worst[3] = {0}, at[3] = {0};
    /* every 257th bit pattern, both signs: 16.7 million values over the
     * whole range, subnormals and overflow included */
    uint64_t bits = 0, count = 0;
    const uint64_t stride = 257, end = 0x100000000ull;
    while (bits < end) {
        int64_t m = 0;
        for (; m < n && bits < end; m++, bits += stride) {
            uint32_t b = (uint32_t)bits;
            memcpy(&x[m], &b, 4);
        }
        run(pg, args, NULL);
        for (int64_t i = 0; i < m; i++) {
            double xv = x[i];
            if (isnan(xv))
                continue;
            double want[3] = {exp(xv), log(xv), tanh(xv)};
            for (int f = 0; f < 3; f++) {
                double e = ulp_err_f32(out[f][i], want[f]);
                if (e > worst[f])
                    worst[f] = e, at[f] = xv;
            }
        }
        count += (uint64_t)m;
    }
    static const char *names[] = {"exp", "log", "tanh"};
    for (int f = 0; f < 3; f++) {
        printf("# %s f32: max error %.3f ulp (at %.9g) over %llu inputs\n", names[f], worst[f], at[f], (unsigned long long)count);
        th_check(worst[f] <= 2.0, xfmt("math_f32_%s_accuracy", names[f]), "%.3f ulp at %.9g", worst[f], at[f]);
    }
}

static void test_math_f64(void) {
    const int64_t n = 1 << 16;
    const lethe_program *pg = build1(math_program(DT_F64, n), 3, "math_f64");
    if (!th_check(pg != NULL, "math_f64_build", "llvm_emit failed"))
        return;
    double *x = amalloc(n * 8), *out[3] = {amalloc(n * 8), amalloc(n * 8), amalloc(n * 8)};
    void *args[4] = {x, out[0], out[1], out[2]};
    double worst[3] = {0}, at[3] = {0};
    uint64_t s = 88172645463325252ull;
    for (int rep = 0; rep < 48; rep++) {
        for (int64_t i = 0; i < n; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            double u = (double)(s >> 11) * 0x1p-53;
            switch (rep % 4) {
            case 0: x[i] = -750 + 1470 * u; break;                              /* exp's range */
            case 1: x[i] = ldexp(1 + u, (int)(s % 2098) - 1074); break;         /* every binade */
            case 2: x[i] = (s & 1 ? -1 : 1) * ldexp(1 + u, (int)(s % 70) - 60); /* small and mid */ break;
            default: x[i] = (s & 1 ? -1 : 1) * 25 * u; break;                   /* tanh's range */
            }
        }
        run(pg, args, NULL);
        for (int64_t i = 0; i < n; i++) {
            long double want[3] = {expl(x[i]), logl(x[i]), tanhl(x[i])};
            for (int f = 0; f < 3; f++) {
                if (f == 1 && x[i] <= 0)
                    continue;
                double e = rel_err_f64(out[f][i], want[f]);
                if (e > worst[f])
                    worst[f] = e, at[f] = x[i];
            }
        }
    }
    static const char *names[] = {"exp", "log", "tanh"};
    for (int f = 0; f < 3; f++) {
        printf("# %s f64: max relative error %.3g (at %.17g) over %d inputs\n", names[f], worst[f], at[f], 48 * (int)n);
        th_check(worst[f] <= 1e-14, xfmt("math_f64_%s_accuracy", names[f]), "%.3g at %.17g", worst[f], at[f]);
    }
}

static void test_math_special(DType dt) {
    const int64_t n = 12;
    const lethe_program *pg = build1(math_program(dt, n), 0, xfmt("math_special_%s", dtype_name(dt)));
    if (!th_check(pg != NULL, xfmt("math_special_%s_build", dtype_name(dt)), "llvm_emit failed"))
        return;
    double xs[12] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 1.0, -1.0, 1e-310, 1e-40, 800, -800, 0.5};
    void *x = amalloc(n * 8), *o[3] = {amalloc(n * 8), amalloc(n * 8), amalloc(n * 8)};
    for (int i = 0; i < n; i++) {
        if (dt == DT_F32) ((float *)x)[i] = (float)xs[i];
        else ((double *)x)[i] = xs[i];
    }
    void *args[4] = {x, o[0], o[1], o[2]};
    run(pg, args, NULL);
    bool ok = true;
    for (int i = 0; i < n; i++) {
        double xv = load_as_double(x, dt, i);
        double want[3] = {exp(xv), log(xv), tanh(xv)};
        for (int f = 0; f < 3; f++) {
            double got = load_as_double(o[f], dt, i);
            double w = dt == DT_F32 ? (double)(float)want[f] : want[f];
            bool same = (isnan(got) && isnan(w)) || (got == w && !signbit(got) == !signbit(w)) ||
                        (isfinite(w) && w != 0 && fabs(got - w) <= 4e-7 * fabs(w));
            if (!same) {
                printf("# special %s f%d(%g) = %.17g, want %.17g\n", dtype_name(dt), f, xv, got, w);
                ok = false;
            }
        }
    }
    th_check(ok, xfmt("math_special_values_%s", dtype_name(dt)), "see the lines above");
}

/* ---------------------------------------------------------------------------
 * -O0 vs -O3, fast math */

static void test_opt_levels(void) {
    static const DType dts[] = {DT_F32, DT_F64};
    for (int d = 0; d < 2; d++) {
        Case cases[64];
        int nc = elem_cases(dts[d], cases);
        void **o0 = test_elementwise(dts[d], 0, false), **o3 = test_elementwise(dts[d], 3, false);
        if (!o0 || !o3)
            continue;
        double worst = 0;
        for (int j = 0; j < nc; j++) {
            DType rdt = result_dtype(&cases[j], dts[d]);
            for (int64_t i = 0; i < 1003; i++) {
                double a = load_as_double(o0[4 + j], rdt, i), b = load_as_double(o3[4 + j], rdt, i);
                worst = fmax(worst, fabs(a - b) / fmax(fabs(b), 1e-300));
            }
        }
        th_check(worst <= 1e-6, xfmt("O0_vs_O3_elementwise_%s", dtype_name(dts[d])), "rel diff %g", worst);
        printf("# -O0 vs -O3 elementwise %s: max relative difference %g\n", dtype_name(dts[d]), worst);
    }
    const lethe_program *p0 = build1(reduce_program(false), 0, "reduce_O0");
    const lethe_program *p3 = build1(reduce_program(true), 3, "reduce_O3");
    if (!th_check(p0 && p3, "O0_vs_O3_reduce_build", "llvm_emit failed"))
        return;
    RedBufs r0, r3;
    void *a0[9], *a3[9];
    reduce_args(&r0, a0);
    reduce_args(&r3, a3);
    run(p0, a0, NULL);
    run(p3, a3, NULL);
    static const int rlen[9] = {0, 0, RR, RR, RC, RC, 1, RR, RR * RC};
    double worst = 0;
    for (int j = 2; j < 9; j++)
        for (int i = 0; i < rlen[j]; i++) {
            double a = j == 7 ? ((int32_t *)a0[j])[i] : ((float *)a0[j])[i];
            double b = j == 7 ? ((int32_t *)a3[j])[i] : ((float *)a3[j])[i];
            double d = fabs(a - b) / fmax(fabs(b), 1e-30);
            /* output 6 sums 8643 f32 terms: -O0 adds them in order, -O3 in
             * 32 partial sums, and the two orders differ by ~sqrt(n) eps */
            if (j == 6)
                d = d > 1e-5 ? d : 0;
            if (d > 1e-6)
                printf("# O0 vs O3: output %d element %d: %.9g vs %.9g\n", j, i, a, b);
            worst = fmax(worst, d);
        }
    th_check(worst <= 1e-6, "O0_vs_O3_reductions", "rel diff %g", worst);
}

static void test_fast_math(void) {
    Case cases[64];
    int nc = elem_cases(DT_F32, cases);
    int64_t n = 1003;
    LProgram *p = elem_program(DT_F32, cases, nc, n, "elem_fast");
    BackendOptions o = opts(3);
    o.fast_math = true;
    const lethe_program *pg = build(&p, 1, &o, "elem_fast");
    void **ref = test_elementwise(DT_F32, 3, false);
    if (!th_check(pg && ref, "fast_math_build", "llvm_emit failed"))
        return;
    void **args = amalloc(((size_t)nc + 4) * sizeof(void *));
    for (int j = 0; j < 4; j++)
        args[j] = ref[j];
    for (int j = 0; j < nc; j++)
        args[4 + j] = amalloc((size_t)n * 8);
    run(pg, args, NULL);
    double worst = 0;
    for (int j = 0; j < nc; j++) {
        DType rdt = result_dtype(&cases[j], DT_F32);
        for (int64_t i = 0; i < n; i++) {
            double a = load_as_double(args[4 + j], rdt, i), b = load_as_double(ref[4 + j], rdt, i);
            worst = fmax(worst, fabs(a - b) / fmax(fabs(b), 1e-3));
        }
    }
    th_check(worst <= 1e-5, "fast_math_elementwise_f32", "rel diff %g", worst);
}

/* ---------------------------------------------------------------------------
 * the descriptor, read back field by field */

static LProgram **descriptor_programs(void) {
    LProgram **progs = xalloc(2 * sizeof *progs);
    LProgram *p = progs[0] = prog_new("train_step");
    Entry *e = (Entry *)p->entry;
    e->kind = "rule";
    e->uses_rng = true;
    int64_t d34[] = {3, 4}, d4[] = {4}, d234[] = {2, 3, 4}, d5[] = {5};
    add_arg(e, "m.w", DT_F32, 2, d34, LETHE_PARAM, LETHE_READWRITE);
    e->args.data[0].binding = "m", e->args.data[0].path = "w", e->args.data[0].layer = 0, e->args.data[0].layer_counts = 1;
    add_arg(e, "m.bn.mean", DT_F32, 1, d4, LETHE_BUFFER, LETHE_READWRITE);
    e->args.data[1].binding = "m", e->args.data[1].path = "bn.mean", e->args.data[1].layer = 1;
    add_arg(e, "v.w", DT_F64, 2, d34, LETHE_STATE, LETHE_READWRITE);
    add_arg(e, "batch.x", DT_I32, 3, d234, LETHE_INPUT, LETHE_READ);
    add_arg(e, "lr", DT_F32, 0, NULL, LETHE_SCALAR, LETHE_READ);
    e->args.data[4].scalar_default = 0.1;
    add_arg(e, "loss", DT_F32, 0, NULL, LETHE_OUTPUT, LETHE_WRITE);
    add_arg(e, "mask", DT_BOOL, 1, d5, LETHE_INPUT, LETHE_READ);
    /* loss = 2 * lr, through a workspace scalar */
    int lr = lp_add_buf(p, (LBuf){.kind = LB_ARG, .arg = 4, .dtype = DT_F32, .nelem = 1, .name = "lr"});
    int loss = lp_add_buf(p, (LBuf){.kind = LB_ARG, .arg = 5, .dtype = DT_F32, .nelem = 1, .name = "loss"});
    ws_buf(p, DT_F32, 100, "unused");
    int t = ws_buf(p, DT_F32, 1, "t");
    LKernel *k = lk_new(p, "k0");
    push(k, ls_store(t, I(0), op2(OP_MUL, LD(p, lr, I(0)), le_const_f(DT_F32, 2)), false));
    k = lk_new(p, "k1");
    push(k, ls_store(loss, I(0), LD(p, t, I(0)), false));

    p = progs[1] = prog_new("sgd.init");
    e = (Entry *)p->entry;
    e->kind = "rule_init";
    add_arg(e, "v.w", DT_F64, 2, d34, LETHE_STATE, LETHE_WRITE);
    return progs;
}

static void test_descriptor(void) {
    LProgram **progs = descriptor_programs();
    CompUnit *cu = unit_of(progs, 2);
    cu->source_hash = "0123abcd";
    cu->experiment_json = "{\"name\":\"demo\"}";
    BackendOptions o = opts(1);
    o.program_symbol = "lethe_program_foo";
    const char *so = xfmt("%s/descriptor.so", th_tmpdir());
    void *h = emit(cu, progs, 2, EMIT_SO, so, &o) ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
    const lethe_program *pg = h ? dlsym(h, "lethe_program_foo") : NULL;
    if (!th_check(pg != NULL, "descriptor_symbol", "no lethe_program_foo in %s", so))
        return;
    th_check(dlsym(h, LETHE_PROGRAM_SYMBOL) == NULL, "descriptor_only_named_symbol", "lethe_program also defined");
    th_check(pg->abi_version == LETHE_ABI_VERSION && pg->nentries == 2, "descriptor_header", "abi %u n %u",
             pg->abi_version, pg->nentries);
    th_check(pg->source_hash && !strcmp(pg->source_hash, "0123abcd"), "descriptor_source_hash", "%s", pg->source_hash);
    th_check(pg->experiment && !strcmp(pg->experiment, cu->experiment_json), "descriptor_experiment", "%s", pg->experiment);
    th_check(pg->target && !strncmp(pg->target, "cpu:", 4) && strstr(pg->target, "x86_64") && strchr(pg->target + 4, ':'),
             "descriptor_target", "%s", pg->target);
    printf("# target %s\n", pg->target);
    bool ok = true;
    for (int i = 0; i < 2; i++) {
        const Entry *e = progs[i]->entry;
        const lethe_entry *le = &pg->entries[i];
        ok &= !strcmp(le->name, e->name) && !strcmp(le->kind, e->kind) && le->nargs == e->args.len;
        ok &= le->workspace_bytes == progs[i]->workspace_bytes && le->uses_rng == (uint32_t)e->uses_rng && le->fn;
        for (int a = 0; a < e->args.len && ok; a++) {
            const EntryArg *ea = &e->args.data[a];
            const lethe_arg *la = &le->args[a];
            ok &= !strcmp(la->name, ea->name) && !strcmp(la->binding, ea->binding) && !strcmp(la->path, ea->path);
            ok &= la->kind == ea->kind && la->access == ea->access && la->rank == ea->shape.rank;
            ok &= la->dtype == (ea->dtype == DT_F32 ? LETHE_F32 : ea->dtype == DT_F64 ? LETHE_F64 : ea->dtype == DT_I32 ? LETHE_I32 : LETHE_BOOL);
            for (int d = 0; d < ea->shape.rank; d++)
                ok &= la->shape[d] == ea->shape.dim[d];
            ok &= ea->shape.rank > 0 || la->shape == NULL;
            ok &= isnan(ea->scalar_default) ? isnan(la->scalar_default) : la->scalar_default == ea->scalar_default;
            ok &= la->layer == ea->layer && la->layer_counts == ea->layer_counts;
            if (!ok)
                printf("# descriptor mismatch: entry %d arg %d\n", i, a);
        }
    }
    th_check(ok, "descriptor_fields", "see above");
    th_check(pg->entries[0].workspace_bytes == 452, "descriptor_workspace_bytes", "%llu",
             (unsigned long long)pg->entries[0].workspace_bytes);
    /* call it through the table */
    float lr = 0.25f, loss = 0;
    void *args[7] = {0};
    args[4] = &lr, args[5] = &loss;
    void *ws = amalloc(pg->entries[0].workspace_bytes);
    lethe_ctx ctx = {0};
    int rc = pg->entries[0].fn(args, ws, &ctx);
    th_check(rc == 0 && loss == 0.5f, "descriptor_call_entry", "rc %d loss %g", rc, loss);
}

/* ---------------------------------------------------------------------------
 * other outputs: .ll (vectorized?), .s, .o, -d ir, the C header, errors */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = xalloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

static void test_emit_kinds(void) {
    LProgram *p = math_program(DT_F32, 4096);
    CompUnit *cu = unit_of(&p, 1);
    BackendOptions o = opts(3);
    const char *ll = xfmt("%s/math.ll", th_tmpdir()), *s = xfmt("%s/math.s", th_tmpdir()), *obj = xfmt("%s/math.o", th_tmpdir());
    bool ok = emit(cu, &p, 1, EMIT_LL, ll, &o) && emit(cu, &p, 1, EMIT_ASM, s, &o) && emit(cu, &p, 1, EMIT_OBJ, obj, &o);
    char *lt = slurp(ll), *st = slurp(s), *ot = slurp(obj);
    th_check(ok && lt && strstr(lt, "define internal") && strstr(lt, "constant %lethe_program {"), "emit_ll", "bad .ll");
    th_check(ok && st && strstr(st, LETHE_PROGRAM_SYMBOL ":"), "emit_asm", "bad .s");
    th_check(ok && ot && !memcmp(ot, "\177ELF", 4), "emit_obj", "bad .o");
    /* exp/log/tanh inlined and vectorized: vector float math, no libm calls */
    bool vec = lt && strstr(lt, " x float>") && !strstr(lt, "@expf") && !strstr(lt, "@llvm.exp.");
    th_check(vec, "emit_ll_math_vectorized", "no vector float code, or libm calls left");
    /* the object links into a shared object by hand too */
    const char *so = xfmt("%s/math_by_hand.so", th_tmpdir());
    char *cmd = xfmt("cc -shared -o '%s' '%s' -lopenblas -lm", so, obj);
    th_check(ok && system(cmd) == 0 && dlopen(so, RTLD_NOW | RTLD_LOCAL), "emit_obj_links", "%s", cmd);

    /* reductions vectorize (reassoc on the accumulator) */
    LProgram *r = reduce_program(true);
    const char *rll = xfmt("%s/reduce.ll", th_tmpdir());
    char *rt = emit(unit_of(&r, 1), &r, 1, EMIT_LL, rll, &o) ? slurp(rll) : NULL;
    th_check(rt && strstr(rt, "vector.reduce.fadd"), "emit_ll_sum_vectorized", "no vector.reduce.fadd");
    th_check(rt && (strstr(rt, "vector.reduce.fmaximum") || strstr(rt, "llvm.maximum.v")), "emit_ll_max_vectorized",
             "no vector maximum");

    /* -d ir prints the optimized module */
    FILE *saved = dump_file;
    unsigned saved_flags = dump_flags;
    dump_file = tmpfile();
    dump_flags = DUMP_IR;
    ok = emit(cu, &p, 1, EMIT_OBJ, obj, &o);
    long len = ftell(dump_file);
    fclose(dump_file);
    dump_file = saved, dump_flags = saved_flags;
    th_check(ok && len > 1000, "dump_ir", "%ld bytes dumped", len);

    /* -O0 and a fixed CPU */
    BackendOptions o0 = opts(0);
    o0.cpu = "x86-64-v3";
    const char *v3 = xfmt("%s/math_v3.so", th_tmpdir());
    ok = emit(cu, &p, 1, EMIT_SO, v3, &o0);
    void *h = ok ? dlopen(v3, RTLD_NOW | RTLD_LOCAL) : NULL;
    const lethe_program *pg = h ? dlsym(h, LETHE_PROGRAM_SYMBOL) : NULL;
    th_check(pg && strstr(pg->target, ":x86-64-v3"), "emit_cpu_option", "target %s", pg ? pg->target : "-");
}

static void test_header(void) {
    LProgram **progs = descriptor_programs();
    CompUnit *cu = unit_of(progs, 2);
    BackendOptions o = opts(2);
    o.program_symbol = "lethe_program_foo";
    const char *dir = th_tmpdir();
    const char *h1 = xfmt("%s/prog_foo.h", dir), *h2 = xfmt("%s/prog_plain.h", dir);
    bool ok = emit(cu, progs, 2, EMIT_HEADER, h1, &o);
    emit_header(cu, NULL, 0, h2, NULL);
    const char *c = xfmt("%s/use_header.c", dir), *c2 = xfmt("%s/use_header2.c", dir);
    FILE *f = fopen(c, "w");
    fprintf(f, "#include \"prog_foo.h\"\n#include \"prog_foo.h\"\n"
               "_Static_assert(LETHE_TRAIN_STEP_ARG_M_W == 0, \"m.w\");\n"
               "_Static_assert(LETHE_TRAIN_STEP_ARG_BATCH_X == 3, \"batch.x\");\n"
               "_Static_assert(LETHE_TRAIN_STEP_ARG_MASK == 6, \"mask\");\n"
               "_Static_assert(LETHE_TRAIN_STEP_NARGS == 7, \"nargs\");\n"
               "_Static_assert(LETHE_SGD_INIT_ARG_V_W == 0, \"sgd.init\");\n"
               "_Static_assert(LETHE_TRAIN_STEP_WORKSPACE_BYTES == 452, \"workspace\");\n"
               "const lethe_program *get(void) { return &lethe_program_foo; }\n");
    fclose(f);
    f = fopen(c2, "w");
    fprintf(f, "#include \"prog_plain.h\"\n_Static_assert(LETHE_TRAIN_STEP_NARGS == 7, \"nargs\");\n"
               "const lethe_program *get(void) { return &lethe_program_main; }\n");
    fclose(f);
    char *cmd = xfmt("cc -std=c11 -Wall -Werror -fsyntax-only -Iruntime -I'%s' '%s' && "
                     "cc -std=c11 -Wall -Werror -fsyntax-only -Iruntime -I'%s' '%s'", dir, c, dir, c2);
    th_check(ok && system(cmd) == 0, "emit_header_compiles", "%s", cmd);
}

static void test_errors(void) {
    LProgram *p = math_program(DT_F32, 16);
    CompUnit *cu = unit_of(&p, 1);
    BackendOptions o = opts(1);
    printf("# the next two errors are expected:\n");
    fflush(stdout);
    th_check(!emit(cu, &p, 1, EMIT_SO, "/nonexistent-dir/x.so", &o), "error_so_unwritable", "no error reported");
    th_check(!emit(cu, &p, 1, EMIT_LL, "/nonexistent-dir/x.ll", &o), "error_ll_unwritable", "no error reported");
}

/* ---------------------------------------------------------------------------
 * measurements (printed, not checked) */

/* best of 5 runs of a one-kernel program over n elements */
static void measure_one(bool exp_kernel, int64_t n) {
    LProgram *p = prog_new(exp_kernel ? "bench_exp" : "bench_triad");
    int a = arg1(p, "a", DT_F32, n, LETHE_READ), b = arg1(p, "b", DT_F32, n, LETHE_READ);
    int c = arg1(p, "c", DT_F32, n, LETHE_READ), o = arg1(p, "o", DT_F32, n, LETHE_WRITE);
    LKernel *k = lk_new(p, "k0");
    int i;
    LStmt *f = ls_for(k, n, true, &i);
    LExpr *v = exp_kernel ? le_op1(OP_EXP, DT_F32, LD(p, a, V(k, i)))
                          : op2(OP_ADD, op2(OP_MUL, LD(p, a, V(k, i)), LD(p, b, V(k, i))), LD(p, c, V(k, i)));
    push_in(f, ls_store(o, V(k, i), v, false));
    push(k, f);
    const lethe_program *pg = build1(p, 3, p->entry->name);
    if (!pg)
        return;
    void *args[4];
    for (int j = 0; j < 4; j++)
        args[j] = amalloc((size_t)n * 4);
    th_fill(args[0], LETHE_F32, n, -5, 5, 1);
    for (int threads = 1; threads <= 2; threads++) {
        lethe_pool *pool = lethe_pool_new(threads);
        lethe_ctx ctx;
        lethe_ctx_init(&ctx, pool, 0);
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = seconds();
            run(pg, args, &ctx);
            best = fmin(best, seconds() - t0);
        }
        if (exp_kernel)
            printf("# exp f32, %d thread(s), n=%lld: %.2f ms, %.2f Gelem/s\n", threads, (long long)n, best * 1e3,
                   (double)n / best / 1e9);
        else
            printf("# triad a*b+c f32, %d thread(s), n=%lld: %.2f ms, %.1f GB/s\n", threads, (long long)n, best * 1e3,
                   16.0 * (double)n / best / 1e9);
        lethe_pool_free(pool);
    }
}

static void measure(void) {
    measure_one(false, 1 << 24);
    measure_one(true, 1 << 22);
}

int main(void) {
    static const DType dts[] = {DT_F32, DT_F64, DT_I32, DT_BOOL};
    for (int d = 0; d < 4; d++) {
        test_elementwise(dts[d], 3, true);
        release();
    }
    bool all = true;
    for (int op = 0; op < OP_COUNT; op++)
        if (op_info[op].kind == OK_ELEM && !op_tested[op]) {
            printf("# elementwise op %s not tested\n", op_info[op].name);
            all = false;
        }
    th_check(all, "elem_every_op_of_ops_def", "see above");
    void (*tests[])(void) = {test_masked_loads, test_reductions, test_parallel, test_pool, test_rand,
                             test_math_f32, test_math_f64, test_opt_levels, test_fast_math, test_descriptor,
                             test_emit_kinds, test_header, test_errors, measure};
    for (int d = 0; d < 2; d++)
        for (int t = 0; t < 4; t++) {
            test_gemm(d ? DT_F64 : DT_F32, t & 1, t >> 1, t == 1 ? 0 : 1, false);
            release();
        }
    test_gemm(DT_F32, false, true, 1, true);
    test_math_special(DT_F32);
    test_math_special(DT_F64);
    release();
    for (size_t t = 0; t < sizeof tests / sizeof *tests; t++) {
        tests[t]();
        release();
    }
    free(live);
    return th_exit();
}
