/* backend_cuda_render.c: one loop-IR kernel -> CUDA kernels and launches.
 *
 * The top-level statements of a kernel are cut into units, each one launch:
 *
 *   GEMM nests   a GEMM, or loops (parallel or not) holding only GEMMs with
 *                offsets known at compile time: cuBLAS calls batched along
 *                the innermost loop when the offsets advance evenly, or the
 *                generated tiled GEMM kernel (products into one C, and B
 *                read as a convolution's implicit im2col matrix);
 *   parallel     a top-level parallel loop P (iterations independent by the
 *                loop IR's contract), mapped one of three ways:
 *       collapse   P's body is LETs and a nest that spreads (cu_classify):
 *                  one thread per element of P x the nest (elementwise
 *                  kernels, im2col, transposes);
 *       block      P's body has loops that reduce or spread and they carry
 *                  most of the work: one block per iteration of P, threads
 *                  share those loops, partials combine in a block tree
 *                  (softmax, layernorm and batch-norm statistics rows);
 *       thread     otherwise one thread per iteration of P;
 *   serial       the other statements, in order: one block whose threads
 *                share what spreads or reduces (a full reduction's final
 *                combine), the rest on thread 0.
 *
 * Inside a block, statements run "uniform": every thread executes the same
 * control flow and computes the same scalar values (LETs, accumulators);
 * loops that spread or reduce are shared out; stores and other loops run
 * on thread 0. Barriers go between phases only where a write meets a later
 * read or write. If a unit would read a variable defined by another unit,
 * the whole kernel becomes one serial unit (GEMMs then run in-kernel).
 *
 * Expression DAGs become C with a `const` temporary for each node used more
 * than once in a statement. Index math is int when cu_kernel_info proved
 * every index value fits, long long otherwise.
 */
#include <math.h>
#include <string.h>

#include "backend_cuda.h"
#include "lethe_abi.h"

enum { MAX_LEVELS = MAX_RANK + 1 };

typedef struct KG {
    CuProgram *cp;
    const LProgram *p;
    const LKernel *k;
    CuKernelInfo ki;
    Sb text;
    int ind;
    const char *it;            /* index type */
    bool it32;
    /* parameters, in order of first use */
    int *param_of_buf;
    VEC(int) pbufs;
    char *written;
    bool rand;
    /* C names: per variable an alias (block partials) or NULL for vN */
    const char **alias;
    char *used;                /* per variable: read anywhere in the kernel */
    int ntemp, nflat;
    /* LB_PRIVATE buffers: one copy per block, at priv + blockIdx.x * pstride */
    int64_t *poff;             /* per buffer: offset in a copy, -1 if not private */
    int64_t pstride;
    /* block mode */
    int nt;                    /* threads of the block; 0: thread-private code */
    bool barriers;
    bool smem[5];              /* shared reduction arrays used, by DType */
    bool gemm_smem[5];         /* shared tiles of lk_gemm_tile, by DType */
    bool wrote, read;          /* since the last barrier */
    /* expressions of the statement being rendered */
    PtrMap uses, names;
} KG;

static bool is_float(DType dt) { return dt == DT_F32 || dt == DT_F64; }

static const char *ctype(KG *g, DType dt) {
    switch (dt) {
    case DT_F32: return "float";
    case DT_F64: return "double";
    case DT_I32:
    case DT_BOOL: return "int";
    case DT_I64: return g->it;
    }
    unreachable();
}

static const char *mtype(DType dt) {
    switch (dt) {
    case DT_F32: return "float";
    case DT_F64: return "double";
    case DT_I32: return "int";
    case DT_BOOL: return "unsigned char";
    case DT_I64: return "long long";
    }
    unreachable();
}

static const char *tsuffix(DType dt) {
    switch (dt) {
    case DT_F32: return "f32";
    case DT_F64: return "f64";
    case DT_I32: return "i32";
    case DT_BOOL: return "bool";
    case DT_I64: break;
    }
    unreachable();
}

static void line(KG *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(KG *g, const char *fmt, ...) {
    for (int i = 0; i < g->ind; i++)
        sb_puts(&g->text, "    ");
    va_list ap;
    va_start(ap, fmt);
    char *s = xalloc(1024);
    int n = vsnprintf(s, 1024, fmt, ap);
    va_end(ap);
    if (n >= 1024) {
        s = xalloc((size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(s, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    sb_puts(&g->text, s);
    sb_puts(&g->text, "\n");
}

/* ---------------------------------------------------------------------------
 * names and constants */

static const char *var_name(KG *g, int v) { return g->alias[v] ? g->alias[v] : xfmt("v%d", v); }

static const char *buf_name(KG *g, int b, bool write) {
    if (g->poff[b] >= 0) {
        if (write)
            g->written[b] = 1;
        return xfmt("q%d", b);
    }
    if (g->param_of_buf[b] < 0) {
        g->param_of_buf[b] = g->pbufs.len;
        vec_push(&g->pbufs, b);
    }
    if (write)
        g->written[b] = 1;
    return xfmt("p%d", g->param_of_buf[b]);
}

static const char *fconst(DType dt, double v) {
    bool f = dt == DT_F32;
    if (isnan(v))
        return f ? "__int_as_float(0x7fc00000)" : "__longlong_as_double(0x7ff8000000000000LL)";
    if (isinf(v))
        return v > 0 ? (f ? "__int_as_float(0x7f800000)" : "__longlong_as_double(0x7ff0000000000000LL)")
                     : (f ? "(-__int_as_float(0x7f800000))" : "(-__longlong_as_double(0x7ff0000000000000LL))");
    char *s = f ? xfmt("%.9g", (double)(float)v) : xfmt("%.17g", v);
    bool point = strpbrk(s, ".e") != NULL;
    return xfmt("%s%s%s%s", v < 0 || signbit(v) ? "(" : "", s, point ? "" : ".0", f ? (v < 0 || signbit(v) ? "f)" : "f")
                                                                                  : (v < 0 || signbit(v) ? ")" : ""));
}

static const char *iconst_str(KG *g, DType dt, int64_t v) {
    if (dt == DT_BOOL)
        return v ? "1" : "0";
    if (dt == DT_I32 || (dt == DT_I64 && g->it32)) {
        if (v == INT32_MIN)
            return "(-2147483647 - 1)";
        return v < 0 ? xfmt("(%lld)", (long long)v) : xfmt("%lld", (long long)v);
    }
    if (v == INT64_MIN)
        return "(-9223372036854775807LL - 1)";
    return v < 0 ? xfmt("(%lldLL)", (long long)v) : xfmt("%lldLL", (long long)v);
}

static const char *zero(KG *g, DType dt) { return is_float(dt) ? fconst(dt, 0) : iconst_str(g, dt, 0); }

/* ---------------------------------------------------------------------------
 * expressions */

static const char *fn1(DType dt, const char *f32, const char *f64, const char *a) {
    return xfmt("%s(%s)", dt == DT_F32 ? f32 : f64, a);
}

/* x ** c for the constants the CPU backend turns into multiplications */
static const char *pow_const(DType dt, const char *x, double c) {
    if (c != 1 && c != 2 && c != 3 && c != -1 && c != -2)
        return NULL;
    const char *r = x;
    for (int i = 1; i < (int)fabs(c); i++)
        r = xfmt("(%s * %s)", r, x);
    return c < 0 ? xfmt("(%s / %s)", fconst(dt, 1), r) : r;
}

/* An operand the C form of an op repeats: a name or a literal as is, else
 * a temporary (nested max / relu / sign would otherwise double in size at
 * every level). */
static const char *atom(KG *g, DType dt, const char *s) {
    bool simple = true;
    for (const char *c = s; *c && simple; c++)
        simple = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                 *c == '.' || *c == '-' || *c == '(' || *c == ')';
    if (simple && !strchr(s, '('))
        return s;
    const char *t = xfmt("t%d", g->ntemp++);
    line(g, "const %s %s = %s;", ctype(g, dt), t, s);
    return t;
}

static bool repeats_operands(Op op) {
    switch (op) {
    case OP_RELU: case OP_ABS: case OP_SIGN: case OP_GELU: case OP_POW: case OP_MAX: case OP_MIN: return true;
    default: return false;
    }
}

static const char *render_op(KG *g, const LExpr *e, const char **a) {
    DType dt = e->dtype, x = e->a[0]->dtype;
    bool f = is_float(dt);
    if (repeats_operands(e->op))
        for (int i = 0; i < op_info[e->op].arity; i++)
            a[i] = atom(g, e->a[i]->dtype, a[i]);
    switch (e->op) {
    case OP_DETACH: return a[0];
    case OP_CAST:
        if (dt == x)
            return a[0];
        if (dt == DT_BOOL)
            return xfmt("(%s != 0)", a[0]);
        if (is_float(x) && (dt == DT_I32 || (dt == DT_I64 && g->it32)))
            return xfmt("lk_f2i((double)%s)", a[0]);
        if (is_float(x) && dt == DT_I64)
            return xfmt("lk_f2l((double)%s)", a[0]);
        return xfmt("((%s)%s)", ctype(g, dt), a[0]);
    case OP_NEG:
        if (f)
            return xfmt("(-%s)", a[0]);
        return dt == DT_BOOL ? a[0] : dt == DT_I32 ? xfmt("lk_subi(0, %s)", a[0]) : xfmt("(-%s)", a[0]);
    case OP_EXP: return fn1(dt, "expf", "exp", a[0]);
    case OP_LOG: return fn1(dt, "logf", "log", a[0]);
    case OP_TANH: return fn1(dt, "tanhf", "tanh", a[0]);
    case OP_SQRT: return fn1(dt, "sqrtf", "sqrt", a[0]);
    case OP_RSQRT: return xfmt("(%s / %s)", fconst(dt, 1), fn1(dt, "sqrtf", "sqrt", a[0]));
    case OP_SIGMOID:
        return xfmt("(%s / (%s + %s))", fconst(dt, 1), fconst(dt, 1), fn1(dt, "expf", "exp", xfmt("(-%s)", a[0])));
    case OP_GELU: {
        /* the evaluation order of the CPU backend */
        const char *x3 = xfmt("((%s * %s) * %s * %s)", fconst(dt, 0.044715), a[0], a[0], a[0]);
        const char *in = xfmt("(%s * (%s + %s))", fconst(dt, 0.7978845608028654), a[0], x3);
        return xfmt("((%s * %s) * (%s + %s))", fconst(dt, 0.5), a[0], fconst(dt, 1), fn1(dt, "tanhf", "tanh", in));
    }
    case OP_RELU:
        return dt == DT_BOOL ? a[0] : xfmt("(%s > %s ? %s : %s)", a[0], zero(g, dt), a[0], zero(g, dt));
    case OP_ABS:
        if (f)
            return fn1(dt, "fabsf", "fabs", a[0]);
        return dt == DT_BOOL ? a[0] : xfmt("(%s < 0 ? lk_subi(0, %s) : %s)", a[0], a[0], a[0]);
    case OP_SIGN:
        if (dt == DT_BOOL)
            return a[0];
        if (f)
            return xfmt("(%s > 0 ? %s : %s < 0 ? %s : %s)", a[0], fconst(dt, 1), a[0], fconst(dt, -1), fconst(dt, 0));
        return xfmt("((%s > 0) - (%s < 0))", a[0], a[0]);
    case OP_NOT: return xfmt("(!%s)", a[0]);
    case OP_ADD:
    case OP_SUB:
    case OP_MUL:
    case OP_DIV:
    case OP_MOD: {
        static const char *sym[] = {[OP_ADD] = "+", [OP_SUB] = "-", [OP_MUL] = "*", [OP_DIV] = "/", [OP_MOD] = "%"};
        static const char *ifn[] = {[OP_ADD] = "lk_addi", [OP_SUB] = "lk_subi", [OP_MUL] = "lk_muli",
                                    [OP_DIV] = "lk_divi", [OP_MOD] = "lk_modi"};
        if (f && e->op == OP_MOD)
            return xfmt("%s(%s, %s)", dt == DT_F32 ? "fmodf" : "fmod", a[0], a[1]);
        if (f)
            return xfmt("(%s %s %s)", a[0], sym[e->op], a[1]);
        if (dt == DT_I32)
            return xfmt("%s(%s, %s)", ifn[e->op], a[0], a[1]);
        if (dt == DT_BOOL)   /* as 0/1 integers, then != 0 */
            return xfmt("(%s(%s, %s) != 0)", ifn[e->op], a[0], a[1]);
        /* index math: non-negative, no overflow; unsigned division is cheaper */
        if (e->op == OP_DIV || e->op == OP_MOD)
            return g->it32 ? xfmt("(int)((unsigned)%s %s (unsigned)%s)", a[0], sym[e->op], a[1])
                           : xfmt("(long long)((unsigned long long)%s %s (unsigned long long)%s)", a[0], sym[e->op], a[1]);
        return xfmt("(%s %s %s)", a[0], sym[e->op], a[1]);
    }
    case OP_POW: {
        const LExpr *c = e->a[1];
        const char *r = c->kind == LE_CONST ? pow_const(dt, a[0], c->cval) : NULL;
        return r ? r : xfmt("%s(%s, %s)", dt == DT_F32 ? "powf" : "pow", a[0], a[1]);
    }
    case OP_MAX: return xfmt("(%s > %s ? %s : %s)", a[0], a[1], a[0], a[1]);
    case OP_MIN: return xfmt("(%s < %s ? %s : %s)", a[0], a[1], a[0], a[1]);
    case OP_LT: return xfmt("(%s < %s)", a[0], a[1]);
    case OP_LE: return xfmt("(%s <= %s)", a[0], a[1]);
    case OP_GT: return xfmt("(%s > %s)", a[0], a[1]);
    case OP_GE: return xfmt("(%s >= %s)", a[0], a[1]);
    case OP_EQ: return xfmt("(%s == %s)", a[0], a[1]);
    case OP_NE: return xfmt("(%s != %s)", a[0], a[1]);
    case OP_AND: return xfmt("(%s & %s)", a[0], a[1]);
    case OP_OR: return xfmt("(%s | %s)", a[0], a[1]);
    case OP_WHERE: return xfmt("(%s ? %s : %s)", a[0], a[1], a[2]);
    default:
        internal_error(__FILE__, __LINE__, "kernel %s: op %s in a loop-IR expression", g->k->name, op_info[e->op].name);
    }
}

static void count_uses(KG *g, const LExpr *e) {
    if (!e)
        return;
    void **slot = ptrmap_slot(&g->uses, e);
    *slot = (void *)((intptr_t)*slot + 1);
    if ((intptr_t)*slot > 1)
        return;
    switch (e->kind) {
    case LE_CONST:
    case LE_VAR: return;
    case LE_LOAD: count_uses(g, e->index); count_uses(g, e->valid); return;
    case LE_RAND: count_uses(g, e->a[0]); return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            count_uses(g, e->a[i]);
        return;
    }
}

static const char *render(KG *g, const LExpr *e) {
    const char *done = *ptrmap_slot(&g->names, e);
    if (done)
        return done;
    const char *r = NULL;
    switch (e->kind) {
    case LE_CONST: r = is_float(e->dtype) ? fconst(e->dtype, e->cval) : iconst_str(g, e->dtype, e->ival); break;
    case LE_VAR: r = var_name(g, e->var); break;
    case LE_LOAD: {
        const LBuf *bf = &g->p->bufs.data[e->buf];
        if (bf->nelem == 0) {
            r = zero(g, e->dtype);   /* every index is invalid */
            break;
        }
        const char *idx = render(g, e->index);
        r = xfmt("%s[%s]", buf_name(g, e->buf, false), idx);
        if (e->dtype == DT_BOOL)
            r = xfmt("(%s != 0)", r);
        if (e->valid)
            r = xfmt("(%s ? %s : %s)", render(g, e->valid), r, zero(g, e->dtype));
        break;
    }
    case LE_RAND: {
        g->rand = true;
        const char *idx = render(g, e->a[0]);
        const char *args = xfmt("(seed, %lluULL, step, (lk_u64)%s)", (unsigned long long)e->stream, idx);
        if (e->op == OP_RAND_UNIFORM)
            r = xfmt("%s%s", e->dtype == DT_F32 ? "lk_uniform_f32" : "lk_uniform_f64", args);
        else
            r = e->dtype == DT_F32 ? xfmt("(float)lk_normal%s", args) : xfmt("lk_normal%s", args);
        break;
    }
    case LE_OP: {
        const char *a[3] = {0};
        for (int i = 0; i < op_info[e->op].arity; i++)
            a[i] = render(g, e->a[i]);
        r = render_op(g, e, a);
        break;
    }
    }
    if (e->kind != LE_CONST && e->kind != LE_VAR && (intptr_t)*ptrmap_slot(&g->uses, e) > 1) {
        const char *t = xfmt("t%d", g->ntemp++);
        line(g, "const %s %s = %s;", ctype(g, e->dtype), t, r);
        r = t;
    }
    *ptrmap_slot(&g->names, e) = (void *)r;
    return r;
}

/* Renders the expressions of one statement: shared nodes become temporaries
 * emitted before it. */
static void begin_stmt(KG *g, const LExpr *const *roots, int n) {
    memset(&g->uses, 0, sizeof g->uses);
    memset(&g->names, 0, sizeof g->names);
    for (int i = 0; i < n; i++)
        count_uses(g, roots[i]);
}

static bool has_load(const LExpr *e, PtrMap *seen) {
    if (!e)
        return false;
    void **slot = ptrmap_slot(seen, e);
    if (*slot)
        return false;
    *slot = (void *)1;
    switch (e->kind) {
    case LE_CONST:
    case LE_VAR: return false;
    case LE_LOAD: return true;
    case LE_RAND: return has_load(e->a[0], seen);
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            if (has_load(e->a[i], seen))
                return true;
        return false;
    }
    return false;
}

/* ---------------------------------------------------------------------------
 * statements on one thread */

static void gen_serial(KG *g, const LStmt *s);

static void gen_serial_body(KG *g, LStmt *const *body, int n) {
    for (int i = 0; i < n; i++)
        gen_serial(g, body[i]);
}

/* the combine of a reduction step, NaN-propagating for float max/min as the
 * CPU backend's reductions */
static const char *combine(KG *g, Op op, DType dt, const char *acc, const char *x) {
    if (dt == DT_BOOL)
        return xfmt(op == OP_MIN ? "(%s & %s)" : "(%s | %s)", acc, x);
    if (is_float(dt)) {
        if (op == OP_ADD)
            return xfmt("(%s + %s)", acc, x);
        return xfmt("lk_%snan_%s(%s, %s)", op == OP_MAX ? "max" : "min", tsuffix(dt), acc, x);
    }
    if (op == OP_ADD)
        return dt == DT_I32 ? xfmt("lk_addi(%s, %s)", acc, x) : xfmt("(%s + %s)", acc, x);
    return xfmt(op == OP_MAX ? "(%s > %s ? %s : %s)" : "(%s < %s ? %s : %s)", acc, x, acc, x);
}

static void gen_assign(KG *g, const LStmt *s) {
    const LExpr *other;
    Op op = cu_reduction_op(s, &other);
    DType dt = g->k->vars.data[s->var];
    begin_stmt(g, (const LExpr *const *)&s->value, 1);
    const char *v = var_name(g, s->var);
    if (op != OP_COUNT && is_float(dt) && op != OP_ADD)
        line(g, "%s = %s;", v, combine(g, op, dt, v, render(g, other)));
    else
        line(g, "%s = %s;", v, render(g, s->value));
}

static void gen_store(KG *g, const LStmt *s) {
    const LExpr *roots[2] = {s->index, s->value};
    begin_stmt(g, roots, 2);
    DType dt = g->p->bufs.data[s->buf].dtype;
    const char *idx = render(g, s->index), *v = render(g, s->value);
    const char *dst = xfmt("%s[%s]", buf_name(g, s->buf, true), idx);
    if (s->accumulate) {
        if (is_float(dt)) {
            line(g, "%s += %s;", dst, v);
            return;
        }
        v = dt == DT_I32 ? xfmt("lk_addi(%s, %s)", dst, v) : xfmt("((%s != 0) + %s != 0)", dst, v);
    }
    line(g, dt == DT_BOOL ? "%s = (unsigned char)%s;" : "%s = %s;", dst, v);
}

/* the (i, j) element of a GEMM: serial over k */
static void gemm_element(KG *g, const LGemm *gm, const char *a0, const char *b0, const char *c0, const char *i,
                         const char *j) {
    DType dt = g->p->bufs.data[gm->c_buf].dtype;
    const char *A = buf_name(g, gm->a_buf, false), *B = buf_name(g, gm->b_buf, false), *C = buf_name(g, gm->c_buf, true);
    line(g, "%s acc = 0;", ctype(g, dt));
    line(g, "for (%s l = 0; l < %lld; l++)", g->it, (long long)gm->k);
    const char *ai = gm->trans_a ? xfmt("l * %lld + %s", (long long)gm->lda, i) : xfmt("%s * %lld + l", i, (long long)gm->lda);
    const char *bv;
    if (gm->b_im2col)   /* op(B)[l][j] of the column matrix, lk_cv and lk_p0 declared by gen_gemm */
        bv = gm->trans_b ? xfmt("lk_col_%s(%s + %s, lk_cv, %s, lk_p0 + l)", tsuffix(dt), B, b0, j)
                         : xfmt("lk_col_%s(%s + %s, lk_cv, l, lk_p0 + %s)", tsuffix(dt), B, b0, j);
    else
        bv = xfmt("%s[%s + %s]", B, b0, gm->trans_b ? xfmt("%s * %lld + l", j, (long long)gm->ldb)
                                                    : xfmt("l * %lld + %s", (long long)gm->ldb, j));
    line(g, "    acc += %s[%s + %s] * %s;", A, a0, ai, bv);
    const char *c = xfmt("%s[%s + %s * %lld + %s]", C, c0, i, (long long)gm->ldc, j);
    if (gm->beta == 0)
        line(g, "%s = %s * acc;", c, fconst(dt, gm->alpha));
    else
        line(g, "%s = %s * acc + %s * %s;", c, fconst(dt, gm->alpha), fconst(dt, gm->beta), c);
}

/* GEMM inside a kernel: a block of 256 threads runs it tile by tile with
 * lk_gemm_tile (the prelude), a smaller block shares the outputs, a thread
 * alone computes them in turn */
static void gen_gemm(KG *g, const LGemm *gm) {
    if (gm->m == 0 || gm->n == 0)
        return;
    const LIm2col *ic = gm->b_im2col;
    const LExpr *roots[4] = {gm->a_off, gm->b_off, gm->c_off, ic ? ic->p0 : NULL};
    begin_stmt(g, roots, ic ? 4 : 3);
    line(g, "{");
    g->ind++;
    line(g, "const %s a0 = %s, b0 = %s, c0 = %s;", g->it, render(g, gm->a_off), render(g, gm->b_off), render(g, gm->c_off));
    if (ic) {
        int64_t cv[11];
        cu_conv_geometry(ic, cv);
        line(g, "const lk_conv lk_cv = {%lld, %lld, %lld, %lld, %lld, %lld, %lld, %lld, %lld, %lld, %lld};", (long long)cv[0],
             (long long)cv[1], (long long)cv[2], (long long)cv[3], (long long)cv[4], (long long)cv[5], (long long)cv[6],
             (long long)cv[7], (long long)cv[8], (long long)cv[9], (long long)cv[10]);
        line(g, "const long long lk_p0 = %s;", render(g, ic->p0));
    }
    DType dt = g->p->bufs.data[gm->c_buf].dtype;
    if (g->nt == CU_MAX_BLOCK) {
        int64_t tn = (gm->n + 63) / 64, tiles = (gm->m + 63) / 64 * tn;
        const char *A = buf_name(g, gm->a_buf, false), *B = buf_name(g, gm->b_buf, false), *C = buf_name(g, gm->c_buf, true);
        g->gemm_smem[dt] = true;
        g->barriers = true;
        line(g, "for (long long tile = 0; tile < %lldLL; tile++)", (long long)tiles);
        line(g, "    lk_gemm_tile%s_%s(%s + a0, %s + b0, %s + c0, %lldLL, %lldLL, %lldLL, %lldLL, %s, %lldLL, %d, %d, %s, %s,",
             ic ? "_col" : "", tsuffix(dt), A, B, C, (long long)gm->m, (long long)gm->n, (long long)gm->k,
             (long long)(gm->lda > 0 ? gm->lda : 1), ic ? "lk_cv, lk_p0" : xfmt("%lldLL", (long long)(gm->ldb > 0 ? gm->ldb : 1)),
             (long long)gm->ldc, gm->trans_a, gm->trans_b, fconst(dt, gm->alpha), fconst(dt, gm->beta));
        line(g, "                    tile / %lldLL * 64, tile %% %lldLL * 64, 1, 0, 0, lk_ga_%s, lk_gb_%s);", (long long)tn,
             (long long)tn, tsuffix(dt), tsuffix(dt));
        g->ind--;
        line(g, "}");
        return;
    }
    if (g->nt) {
        line(g, "for (%s f = threadIdx.x; f < %lld; f += %d) {", g->it, (long long)(gm->m * gm->n), g->nt);
        line(g, "    const %s i = f / %lld, j = f %% %lld;", g->it, (long long)gm->n, (long long)gm->n);
    } else {
        line(g, "for (%s i = 0; i < %lld; i++)", g->it, (long long)gm->m);
        line(g, "for (%s j = 0; j < %lld; j++) {", g->it, (long long)gm->n);
    }
    g->ind++;
    gemm_element(g, gm, "a0", "b0", "c0", "i", "j");
    g->ind--;
    line(g, "}");
    g->ind--;
    line(g, "}");
}

static void gen_serial(KG *g, const LStmt *s) {
    switch (s->kind) {
    case LS_FOR:
        line(g, "for (%s v%d = 0; v%d < %s; v%d++) {", g->it, s->var, s->var, iconst_str(g, DT_I64, s->extent), s->var);
        g->ind++;
        gen_serial_body(g, s->body.data, s->body.len);
        g->ind--;
        line(g, "}");
        return;
    case LS_LET:
        if (!g->used[s->var])
            return;   /* lowering may define index variables it does not need */
        begin_stmt(g, (const LExpr *const *)&s->value, 1);
        line(g, "%s %s = %s;", ctype(g, g->k->vars.data[s->var]), var_name(g, s->var), render(g, s->value));
        return;
    case LS_ASSIGN: gen_assign(g, s); return;
    case LS_STORE: gen_store(g, s); return;
    case LS_GEMM: {
        int saved = g->nt;
        g->nt = 0;
        gen_gemm(g, &s->gemm);
        g->nt = saved;
        return;
    }
    }
}

/* ---------------------------------------------------------------------------
 * flat index spaces: the loops levels[0..n) of a perfect nest as one index f,
 * decoded into the loop variables (mixed radix), then the LETs between the
 * levels and the innermost body */

static int64_t nest_total(const LStmt *const *levels, int n) {
    int64_t t = 1;
    for (int i = 0; i < n; i++)
        t *= levels[i]->extent;
    return t;
}

static void decode_levels(KG *g, const char *f, const LStmt *const *levels, int n) {
    for (int i = 0; i < n; i++) {
        if (!g->used[levels[i]->var])
            continue;
        int64_t below = nest_total(levels + i + 1, n - i - 1);
        const char *e = below == 1 ? f : xfmt("%s / %s", f, iconst_str(g, DT_I64, below));
        if (i > 0)
            e = xfmt("(%s) %% %s", e, iconst_str(g, DT_I64, levels[i]->extent));
        line(g, "const %s v%d = %s;", g->it, levels[i]->var, e);
    }
    for (int i = 0; i + 1 < n; i++)
        for (int j = 0; j < levels[i]->body.len - 1; j++)
            gen_serial(g, levels[i]->body.data[j]);
}

/* for (f = threadIdx.x; f < total; f += nt) over the nest, in block mode */
static void open_shared_loop(KG *g, const LStmt *const *levels, int n) {
    const char *f = xfmt("f%d", g->nflat++);
    int64_t total = nest_total(levels, n);
    const char *ft = total > INT32_MAX ? "long long" : g->it;
    line(g, "for (%s %s = threadIdx.x; %s < %s; %s += %d) {", ft, f, f, total > INT32_MAX ? xfmt("%lldLL", (long long)total)
         : iconst_str(g, DT_I64, total), f, g->nt);
    g->ind++;
    decode_levels(g, f, levels, n);
}

/* ---------------------------------------------------------------------------
 * block mode: uniform statements */

typedef struct Mem {
    bool reads, writes;
} Mem;

static void mem_of(const LStmt *s, Mem *m) {
    PtrMap seen = {0};
    switch (s->kind) {
    case LS_FOR:
        for (int i = 0; i < s->body.len; i++)
            mem_of(s->body.data[i], m);
        return;
    case LS_LET:
    case LS_ASSIGN: m->reads |= has_load(s->value, &seen); return;
    case LS_STORE:
        m->writes = true;
        m->reads |= s->accumulate || has_load(s->index, &seen) || has_load(s->value, &seen);
        return;
    case LS_GEMM: m->reads = m->writes = true; return;
    }
}

static void barrier(KG *g) {
    line(g, "__syncthreads();");
    g->barriers = true;
    g->wrote = g->read = false;
}

/* a phase with these accesses starts here: a barrier if it could race with
 * what ran since the last one */
static void phase(KG *g, Mem m) {
    if (g->nt > 1 && ((g->wrote && (m.reads || m.writes)) || (g->read && m.writes)))
        barrier(g);
    g->wrote |= m.writes;
    g->read |= m.reads;
}

static Mem mem_stmt(const LStmt *s) {
    Mem m = {0};
    mem_of(s, &m);
    return m;
}

static void gen_uniform(KG *g, LStmt *const *body, int n);

static void mark_defs(const LStmt *s, char *defs);

/* the assignments of a reduction nest to variables defined outside it */
typedef VEC(const LStmt *) StmtVec;

static void outer_assigns(const LStmt *s, const char *inside, StmtVec *out) {
    if (s->kind == LS_ASSIGN && !inside[s->var])
        vec_push(out, s);
    if (s->kind == LS_FOR)
        for (int i = 0; i < s->body.len; i++)
            outer_assigns(s->body.data[i], inside, out);
}

static void gen_reduce(KG *g, const LStmt *const *levels, int n) {
    char *inside = xalloc((size_t)g->k->vars.len + 1);
    mark_defs(levels[0], inside);
    StmtVec accs = {0};
    outer_assigns(levels[0], inside, &accs);
    int nouter = accs.len;
    const LStmt **outer = accs.data;
    phase(g, mem_stmt(levels[0]));
    line(g, "{");
    g->ind++;
    const char **part = xalloc(sizeof(char *) * ((size_t)nouter + 1));
    for (int i = 0; i < nouter; i++) {
        const LExpr *other;
        int v = outer[i]->var;
        DType dt = g->k->vars.data[v];
        Op op = cu_reduction_op(outer[i], &other);
        part[i] = xfmt("r%d", v);
        const char *ident = op == OP_ADD ? zero(g, dt)
                            : is_float(dt) ? fconst(dt, op == OP_MAX ? -INFINITY : INFINITY)
                            : dt == DT_BOOL ? (op == OP_MAX ? "0" : "1")
                                            : iconst_str(g, dt, op == OP_MAX ? INT32_MIN : INT32_MAX);
        line(g, "%s %s = %s;", ctype(g, dt), part[i], ident);
        g->alias[v] = part[i];
    }
    open_shared_loop(g, levels, n);
    const LStmt *last = levels[n - 1];
    gen_serial_body(g, last->body.data, last->body.len);
    g->ind--;
    line(g, "}");
    for (int i = 0; i < nouter; i++) {
        const LExpr *other;
        int v = outer[i]->var;
        DType dt = g->k->vars.data[v];
        Op op = cu_reduction_op(outer[i], &other);
        g->alias[v] = NULL;
        static const char *opn[] = {[OP_ADD] = "add", [OP_MAX] = "max", [OP_MIN] = "min"};
        if (g->nt > 1) {
            g->smem[dt] = true;
            line(g, "%s = lk_bred_%s_%s(%s, lk_s_%s);", part[i], opn[op], tsuffix(dt), part[i], tsuffix(dt));
            g->barriers = true;
        }
        line(g, "%s = %s;", var_name(g, v), combine(g, op, dt, var_name(g, v), part[i]));
    }
    g->ind--;
    line(g, "}");
    if (g->nt > 1 && nouter)
        g->wrote = g->read = false;   /* the block tree ended with a barrier */
}

static void gen_spread(KG *g, const LStmt *const *levels, int n) {
    phase(g, mem_stmt(levels[0]));
    open_shared_loop(g, levels, n);
    const LStmt *last = levels[n - 1];
    gen_serial_body(g, last->body.data, last->body.len);
    g->ind--;
    line(g, "}");
}

static void on_thread0(KG *g, const LStmt *s) {
    phase(g, mem_stmt(s));
    if (g->nt > 1) {
        line(g, "if (threadIdx.x == 0) {");
        g->ind++;
    }
    gen_serial(g, s);
    if (g->nt > 1) {
        g->ind--;
        line(g, "}");
    }
}

/* does a serial loop, run uniformly, have something to share out? */
static bool worth_uniform(KG *g, const LStmt *loop) {
    const LStmt *levels[MAX_LEVELS];
    int n;
    for (int i = 0; i < loop->body.len; i++) {
        const LStmt *s = loop->body.data[i];
        if (s->kind == LS_GEMM)
            return true;
        if (s->kind != LS_FOR)
            continue;
        if (s->parallel || cu_classify(&g->ki, s, levels, &n) != CL_SERIAL || worth_uniform(g, s))
            return true;
    }
    return false;
}

/* assigns a variable defined outside it: every thread must run it */
static bool assigns_outside(const LStmt *loop, const char *defined_inside) {
    for (int i = 0; i < loop->body.len; i++) {
        const LStmt *s = loop->body.data[i];
        if (s->kind == LS_ASSIGN && !defined_inside[s->var])
            return true;
        if (s->kind == LS_FOR && assigns_outside(s, defined_inside))
            return true;
    }
    return false;
}

static void mark_defs(const LStmt *s, char *defs) {
    if (s->kind == LS_FOR || s->kind == LS_LET)
        defs[s->var] = 1;
    if (s->kind == LS_FOR)
        for (int i = 0; i < s->body.len; i++)
            mark_defs(s->body.data[i], defs);
}

static void gen_uniform_loop(KG *g, const LStmt *s) {
    Mem m = mem_stmt(s);
    phase(g, m);
    line(g, "for (%s v%d = 0; v%d < %s; v%d++) {", g->it, s->var, s->var, iconst_str(g, DT_I64, s->extent), s->var);
    g->ind++;
    /* the previous iteration's phases must be over before this one's start */
    if (g->nt > 1 && m.writes)
        barrier(g);
    gen_uniform(g, s->body.data, s->body.len);
    g->ind--;
    line(g, "}");
    g->wrote = m.writes;
    g->read = m.reads;
}

static void gen_uniform_stmt(KG *g, const LStmt *s) {
    const LStmt *levels[MAX_LEVELS];
    int n;
    switch (s->kind) {
    case LS_LET:
    case LS_ASSIGN: {
        PtrMap seen = {0};
        Mem m = {has_load(s->value, &seen), false};
        phase(g, m);
        gen_serial(g, s);
        return;
    }
    case LS_STORE: on_thread0(g, s); return;
    case LS_GEMM: {
        Mem m = {true, true};
        phase(g, m);
        gen_gemm(g, &s->gemm);
        return;
    }
    case LS_FOR:
        break;
    }
    if (s->parallel) {
        /* independent iterations by the loop IR's contract */
        levels[0] = s;
        gen_spread(g, levels, 1);
        return;
    }
    switch (cu_classify(&g->ki, s, levels, &n)) {
    case CL_REDUCE: gen_reduce(g, levels, n); return;
    case CL_SPREAD: gen_spread(g, levels, n); return;
    case CL_SERIAL: break;
    }
    char *defs = xalloc((size_t)g->k->vars.len + 1);
    mark_defs(s, defs);
    if (assigns_outside(s, defs) || (g->nt > 1 && worth_uniform(g, s)))
        gen_uniform_loop(g, s);
    else
        on_thread0(g, s);
}

static void gen_uniform(KG *g, LStmt *const *body, int n) {
    for (int i = 0; i < n; i++)
        gen_uniform_stmt(g, body[i]);
}

/* What block mode would share out over statements run uniformly: the work
 * of shared loops and GEMMs, the rest, the widest shared index space. */
typedef struct Plan {
    double shared, alone;
    int64_t widest;
    bool gemm;
} Plan;

static void share_plan(KG *g, LStmt *const *body, int n, double scale, Plan *pl) {
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        const LStmt *levels[MAX_LEVELS];
        int depth;
        double w = cu_work(s) * scale;
        if (s->kind == LS_GEMM) {
            int64_t mn = s->gemm.m * s->gemm.n;
            pl->shared += w;
            pl->widest = mn > pl->widest ? mn : pl->widest;
            pl->gemm = true;
            continue;
        }
        if (s->kind != LS_FOR) {
            pl->alone += w;
            continue;
        }
        CuLoopClass c = s->parallel ? CL_SPREAD : cu_classify(&g->ki, s, levels, &depth);
        if (c != CL_SERIAL) {
            int64_t t = s->parallel ? s->extent : nest_total(levels, depth);
            pl->shared += w;
            pl->widest = t > pl->widest ? t : pl->widest;
        } else if (worth_uniform(g, s)) {
            share_plan(g, s->body.data, s->body.len, scale * (double)s->extent, pl);
        } else {
            pl->alone += w;
        }
    }
}

/* ---------------------------------------------------------------------------
 * private buffers: each gets an offset in one copy of the loop's scratch */

static void private_buf(KG *g, int b) {
    const LBuf *bf = &g->p->bufs.data[b];
    if (bf->kind != LB_PRIVATE || g->poff[b] >= 0)
        return;
    g->poff[b] = g->pstride;
    g->pstride += ((int64_t)bf->nelem * dtype_size(bf->dtype) + 255) / 256 * 256;
}

static void private_expr(KG *g, const LExpr *e, PtrMap *seen) {
    if (!e)
        return;
    void **slot = ptrmap_slot(seen, e);
    if (*slot)
        return;
    *slot = (void *)1;
    switch (e->kind) {
    case LE_CONST:
    case LE_VAR: return;
    case LE_LOAD:
        private_buf(g, e->buf);
        private_expr(g, e->index, seen);
        private_expr(g, e->valid, seen);
        return;
    case LE_RAND: private_expr(g, e->a[0], seen); return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            private_expr(g, e->a[i], seen);
        return;
    }
}

static void plan_private(KG *g, const LStmt *s, PtrMap *seen) {
    switch (s->kind) {
    case LS_FOR:
        for (int i = 0; i < s->body.len; i++)
            plan_private(g, s->body.data[i], seen);
        return;
    case LS_LET:
    case LS_ASSIGN: private_expr(g, s->value, seen); return;
    case LS_STORE:
        private_buf(g, s->buf);
        private_expr(g, s->index, seen);
        private_expr(g, s->value, seen);
        return;
    case LS_GEMM:
        private_buf(g, s->gemm.a_buf);
        private_buf(g, s->gemm.b_buf);
        private_buf(g, s->gemm.c_buf);
        return;
    }
}

/* the copies of the private scratch a launch of `grid` blocks needs */
static void note_private(CuEntry *ce, const KG *g, int64_t grid) {
    int64_t bytes = g->pstride * grid;
    ce->priv_bytes = bytes > ce->priv_bytes ? bytes : ce->priv_bytes;
}

static int block_threads(int64_t widest) {
    int nt = 32;
    while (nt < CU_MAX_BLOCK && nt < widest)
        nt *= 2;
    return nt;
}

/* ---------------------------------------------------------------------------
 * kernels and launches */

static void stmt_uses(const LStmt *s, char *used, PtrMap *seen);

/* the variables something needs: LETs nobody reads are dropped, and with
 * them what only they read */
static void live_stmts(LStmt *const *body, int n, const char *used, char *now, PtrMap *seen) {
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        if (s->kind == LS_FOR)
            live_stmts(s->body.data, s->body.len, used, now, seen);
        else if (s->kind != LS_LET || used[s->var])
            stmt_uses(s, now, seen);
    }
}

static void live_vars(const LKernel *k, char *used) {
    /* start from everything but LETs, then add what live LETs read */
    for (bool changed = true; changed;) {
        changed = false;
        char *now = xalloc((size_t)k->vars.len + 1);
        PtrMap seen = {0};
        live_stmts(k->body.data, k->body.len, used, now, &seen);
        for (int v = 0; v < k->vars.len; v++)
            if (now[v] && !used[v])
                used[v] = 1, changed = true;
    }
}

static KG kg_new(CuProgram *cp, const LProgram *p, const LKernel *k) {
    KG g = {.cp = cp, .p = p, .k = k};
    cu_kernel_info(&g.ki, p, k);
    g.it32 = g.ki.idx32;
    g.it = g.it32 ? "int" : "long long";
    g.param_of_buf = xalloc(sizeof(int) * ((size_t)p->bufs.len + 1));
    for (int i = 0; i < p->bufs.len; i++)
        g.param_of_buf[i] = -1;
    g.written = xalloc((size_t)p->bufs.len + 1);
    g.alias = xalloc(sizeof(char *) * ((size_t)k->vars.len + 1));
    g.poff = xalloc(sizeof(int64_t) * ((size_t)p->bufs.len + 1));
    g.used = xalloc((size_t)k->vars.len + 1);
    live_vars(k, g.used);
    for (int i = 0; i < p->bufs.len; i++)
        g.poff[i] = -1;
    g.ind = 1;
    return g;
}

/* Wraps the rendered body into a kernel and appends its launch. */
static void finish(KG *g, CuEntry *ce, const char *name, const char *what, uint32_t grid, uint32_t block) {
    Sb body = {0};
    sb_puts(&body, " {\n");
    if (g->rand)
        sb_printf(&body, "    const lk_u64 seed = p%d, step = p%d;\n", g->pbufs.len, g->pbufs.len + 1);
    int priv_param = g->pbufs.len + (g->rand ? 2 : 0);
    for (int b = 0; b < g->p->bufs.len; b++)
        if (g->poff[b] >= 0) {
            const char *t = mtype(g->p->bufs.data[b].dtype);
            sb_printf(&body, "    %s%s *__restrict__ q%d = (%s *)(p%d + (size_t)blockIdx.x * %lldu + %lldu);\n",
                      g->written[b] ? "" : "const ", t, b, t, priv_param, (long long)g->pstride, (long long)g->poff[b]);
        }
    for (int d = 0; d < 5; d++)
        if (g->smem[d])
            sb_printf(&body, "    __shared__ %s lk_s_%s[%d];\n", ctype(g, (DType)d), tsuffix((DType)d), g->nt);
    for (int d = 0; d < 5; d++)
        if (g->gemm_smem[d])
            sb_printf(&body, "    __shared__ %s lk_ga_%s[16 * 65], lk_gb_%s[16 * 65];\n", ctype(g, (DType)d),
                      tsuffix((DType)d), tsuffix((DType)d));
    sb_puts(&body, sb_str(&g->text));
    sb_puts(&body, "}\n");
    int np = priv_param + (g->pstride ? 1 : 0);
    const char **pt = xalloc(sizeof(char *) * ((size_t)np + 1));
    CuLaunch l = {.kind = LETHE_CUDA_KERNEL, .grid = grid, .block = block};
    for (int i = 0; i < g->pbufs.len; i++) {
        int b = g->pbufs.data[i];
        pt[i] = xfmt("%s%s *", g->written[b] ? "" : "const ", mtype(g->p->bufs.data[b].dtype));
        CuParam cpar = {LETHE_CUDA_PTR, b};
        vec_push(&l.params, cpar);
    }
    if (g->rand) {
        pt[g->pbufs.len] = pt[g->pbufs.len + 1] = "lk_u64";
        CuParam seed = {LETHE_CUDA_SEED, -1}, step = {LETHE_CUDA_STEP, -1};
        vec_push(&l.params, seed);
        vec_push(&l.params, step);
    }
    if (g->pstride) {
        pt[priv_param] = "unsigned char *";
        CuParam priv = {LETHE_CUDA_PTR, -1};   /* the entry's private region */
        vec_push(&l.params, priv);
    }
    l.kernel = cu_add_kernel(g->cp, name, what, pt, np, sb_str(&body), g->barriers);
    vec_push(&ce->launches, l);
}

static uint32_t grid_for(int64_t n, int block) {
    int64_t gsz = (n + block - 1) / block;
    return (uint32_t)(gsz > INT32_MAX ? INT32_MAX : gsz < 1 ? 1 : gsz);
}

/* the global thread index as `name`, returning from threads past `total` */
static void thread_index(KG *g, const char *name, int64_t total, bool used) {
    line(g, "const long long g_%s = (long long)blockIdx.x * blockDim.x + threadIdx.x;", name);
    line(g, "if (g_%s >= %lldLL)", name, (long long)total);
    line(g, "    return;");
    if (used)
        line(g, "const %s %s = (%s)g_%s;", g->it, name, g->it, name);
}

enum { CU_PRIVATE_COPIES_BYTES = 256 << 20 };   /* device memory for private scratch copies */

static void emit_parallel(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, const LStmt *P,
                          const char *name) {
    KG g = kg_new(cp, p, k);
    PtrMap seen = {0};
    plan_private(&g, P, &seen);
    const LStmt *levels[MAX_LEVELS];
    int n = 0;
    const LStmt *inner = cu_next_level(P);
    if (!g.pstride && inner && cu_classify(&g.ki, inner, levels + 1, &n) == CL_SPREAD) {
        /* collapse: one thread per element of P x the nest */
        levels[0] = P;
        n++;
        int64_t total = nest_total(levels, n);
        if (g.it32 && total > INT32_MAX) {
            g.it32 = false;
            g.it = "long long";
        }
        int block = block_threads(total);
        thread_index(&g, "f", total, true);
        decode_levels(&g, "f", levels, n);
        const LStmt *last = levels[n - 1];
        gen_serial_body(&g, last->body.data, last->body.len);
        finish(&g, ce, name, "one thread per element", grid_for(total, block), (uint32_t)block);
        return;
    }
    Plan pl = {0};
    share_plan(&g, P->body.data, P->body.len, 1, &pl);
    if (g.pstride || (pl.shared > 0 && pl.shared >= pl.alone && pl.widest >= 32)) {
        /* block mode: one block per iteration of P; private scratch (one copy
         * per block) needs it too, with fewer blocks each taking several */
        g.nt = pl.gemm ? CU_MAX_BLOCK : pl.shared > 0 ? block_threads(pl.widest) : 1;
        int64_t grid = P->extent > INT32_MAX ? INT32_MAX : P->extent;
        if (g.pstride) {
            int64_t copies = CU_PRIVATE_COPIES_BYTES / g.pstride;
            grid = grid < copies ? grid : copies > 0 ? copies : 1;
        }
        line(&g, "for (%s v%d = blockIdx.x; v%d < %s; v%d += gridDim.x) {", g.it, P->var, P->var,
             iconst_str(&g, DT_I64, P->extent), P->var);
        g.ind++;
        gen_uniform(&g, P->body.data, P->body.len);
        /* a block that runs several iterations must finish one first */
        if (P->extent > grid && (g.wrote || g.read))
            barrier(&g);
        g.ind--;
        line(&g, "}");
        note_private(ce, &g, grid);
        finish(&g, ce, name, "one block per iteration, threads share its loops", (uint32_t)grid, (uint32_t)g.nt);
        return;
    }
    int block = block_threads(P->extent);
    thread_index(&g, xfmt("v%d", P->var), P->extent, g.used[P->var]);
    gen_serial_body(&g, P->body.data, P->body.len);
    finish(&g, ce, name, "one thread per iteration", grid_for(P->extent, block), (uint32_t)block);
}

static void emit_serial(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, LStmt *const *body, int n,
                        const char *name) {
    KG g = kg_new(cp, p, k);
    PtrMap seen = {0};
    for (int i = 0; i < n; i++)
        plan_private(&g, body[i], &seen);
    note_private(ce, &g, 1);
    Plan pl = {0};
    share_plan(&g, body, n, 1, &pl);
    if (pl.shared > 0) {
        g.nt = pl.gemm ? CU_MAX_BLOCK : block_threads(pl.widest);
        gen_uniform(&g, body, n);
        finish(&g, ce, name, "one block, threads share its loops", 1, (uint32_t)g.nt);
    } else {
        gen_serial_body(&g, body, n);
        finish(&g, ce, name, "one thread", 1, 1);
    }
}

/* ---------------------------------------------------------------------------
 * GEMM nests */

typedef struct GemmInst {
    const LGemm *gm;
    int64_t off[3];
    int64_t p0;            /* im2col: the first column */
} GemmInst;

typedef VEC(GemmInst) GemmVec;

enum { MAX_GEMM_INSTANCES = 1 << 14 };

static bool only_gemms(const LProgram *p, const LStmt *s) {
    if (s->kind == LS_GEMM) {
        /* private operands live in a kernel's scratch, not at an address */
        const LGemm *gm = &s->gemm;
        return p->bufs.data[gm->a_buf].kind != LB_PRIVATE && p->bufs.data[gm->b_buf].kind != LB_PRIVATE &&
               p->bufs.data[gm->c_buf].kind != LB_PRIVATE;
    }
    /* a parallel loop's GEMMs are independent, a serial loop's run in order:
     * launched one after another, both are right */
    if (s->kind != LS_FOR)
        return false;
    for (int i = 0; i < s->body.len; i++)
        if (!only_gemms(p, s->body.data[i]))
            return false;
    return true;
}

static bool enumerate(const LStmt *s, int64_t *env, bool *known, GemmVec *out) {
    if (s->kind == LS_GEMM) {
        const LGemm *gm = &s->gemm;
        GemmInst gi = {gm, {0}};
        const LExpr *offs[3] = {gm->a_off, gm->b_off, gm->c_off};
        for (int i = 0; i < 3; i++)
            if (!cu_eval_static(offs[i], env, known, &gi.off[i]))
                return false;
        if (gm->b_im2col && !cu_eval_static(gm->b_im2col->p0, env, known, &gi.p0))
            return false;
        if (out->len >= MAX_GEMM_INSTANCES)
            return false;
        vec_push(out, gi);
        return true;
    }
    known[s->var] = true;
    for (int64_t v = 0; v < s->extent; v++) {
        env[s->var] = v;
        for (int i = 0; i < s->body.len; i++)
            if (!enumerate(s->body.data[i], env, known, out))
                return false;
    }
    known[s->var] = false;
    return true;
}

static bool gemm_instances(const LProgram *p, const LKernel *k, const LStmt *s, GemmVec *out) {
    if (!only_gemms(p, s))
        return false;
    int64_t *env = xalloc(sizeof(int64_t) * ((size_t)k->vars.len + 1));
    bool *known = xalloc((size_t)k->vars.len + 1);
    out->len = 0;
    return enumerate(s, env, known, out);
}

/* may products a and a + 1 of a run of equal GEMMs be one batched call? */
static bool batchable(const LGemm *gm, const int64_t *stride) {
    if (gm->c_buf == gm->a_buf || gm->c_buf == gm->b_buf)
        return false;
    if (stride[2] == 0)
        return gm->beta == 1;   /* the products accumulate into one C */
    int64_t footprint = (gm->m - 1) * gm->ldc + gm->n;
    return (stride[2] < 0 ? -stride[2] : stride[2]) >= footprint;
}

static void emit_gemms(CuProgram *cp, CuEntry *ce, const LProgram *p, GemmInst *in, int n) {
    for (int i = 0; i < n;) {
        const LGemm *gm = in[i].gm;
        int64_t stride[3] = {0, 0, 0};
        int j = i + 1;
        if (j < n && in[j].gm == gm) {
            for (int d = 0; d < 3; d++)
                stride[d] = in[j].off[d] - in[i].off[d];
            if (batchable(gm, stride)) {
                while (j < n && in[j].gm == gm && j - i < INT32_MAX) {
                    bool even = in[j].p0 == in[i].p0;
                    for (int d = 0; d < 3; d++)
                        even &= in[j].off[d] - in[j - 1].off[d] == stride[d];
                    if (!even)
                        break;
                    j++;
                }
            } else {
                memset(stride, 0, sizeof stride);
                j = i + 1;
            }
        }
        if (gm->m > 0 && gm->n > 0) {
            DType dt = p->bufs.data[gm->c_buf].dtype;
            CuLaunch l = {.kind = LETHE_CUDA_GEMM, .kernel = cu_gemm_kernel(cp, dt, gm->b_im2col != NULL)};
            CuGemm *cg = &l.gemm;
            cg->dtype = dt;
            cg->trans_a = gm->trans_a, cg->trans_b = gm->trans_b;
            cg->m = gm->m, cg->n = gm->n, cg->k = gm->k;
            /* cuBLAS wants leading dimensions of at least the row length */
            int64_t need_a = gm->trans_a ? gm->m : gm->k, need_b = gm->trans_b ? gm->k : gm->n;
            cg->lda = gm->lda > need_a ? gm->lda : need_a > 0 ? need_a : 1;
            cg->ldb = gm->ldb > need_b ? gm->ldb : need_b > 0 ? need_b : 1;
            cg->ldc = gm->ldc > gm->n ? gm->ldc : gm->n;
            cg->alpha = gm->alpha, cg->beta = gm->beta;
            cg->batch = j - i;
            cg->stride_a = stride[0], cg->stride_b = stride[1], cg->stride_c = stride[2];
            cg->a_buf = gm->a_buf, cg->b_buf = gm->b_buf, cg->c_buf = gm->c_buf;
            cg->a_off = in[i].off[0], cg->b_off = in[i].off[1], cg->c_off = in[i].off[2];
            cg->im2col = gm->b_im2col;
            cg->p0 = in[i].p0;
            if (cg->im2col)
                cg->ldb = 1;   /* unused */
            vec_push(&ce->launches, l);
        }
        i = j;
    }
}

/* ---------------------------------------------------------------------------
 * units */

typedef struct Unit {
    int kind;              /* 0 serial, 1 parallel loop, 2 GEMMs */
    int first, n;
} Unit;

static void mark_uses(const LExpr *e, char *used, PtrMap *seen) {
    if (!e)
        return;
    void **slot = ptrmap_slot(seen, e);
    if (*slot)
        return;
    *slot = (void *)1;
    switch (e->kind) {
    case LE_CONST: return;
    case LE_VAR: used[e->var] = 1; return;
    case LE_LOAD: mark_uses(e->index, used, seen); mark_uses(e->valid, used, seen); return;
    case LE_RAND: mark_uses(e->a[0], used, seen); return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            mark_uses(e->a[i], used, seen);
        return;
    }
}

static void stmt_uses(const LStmt *s, char *used, PtrMap *seen) {
    switch (s->kind) {
    case LS_FOR:
        for (int i = 0; i < s->body.len; i++)
            stmt_uses(s->body.data[i], used, seen);
        return;
    case LS_LET:
    case LS_ASSIGN:
        if (s->kind == LS_ASSIGN)
            used[s->var] = 1;
        mark_uses(s->value, used, seen);
        return;
    case LS_STORE: mark_uses(s->index, used, seen); mark_uses(s->value, used, seen); return;
    case LS_GEMM:
        mark_uses(s->gemm.a_off, used, seen);
        mark_uses(s->gemm.b_off, used, seen);
        mark_uses(s->gemm.c_off, used, seen);
        if (s->gemm.b_im2col)
            mark_uses(s->gemm.b_im2col->p0, used, seen);
        return;
    }
}

/* does a unit read or update a top-level variable another unit defines? */
static bool units_share_vars(const LKernel *k, const Unit *u, int nu) {
    int nv = k->vars.len + 1;
    int *owner = xalloc(sizeof(int) * (size_t)nv);
    for (int i = 0; i < nv; i++)
        owner[i] = -1;
    for (int i = 0; i < nu; i++)
        for (int j = u[i].first; j < u[i].first + u[i].n; j++)
            if (k->body.data[j]->kind == LS_LET)
                owner[k->body.data[j]->var] = i;
    for (int i = 0; i < nu; i++) {
        char *used = xalloc((size_t)nv);
        PtrMap seen = {0};
        for (int j = u[i].first; j < u[i].first + u[i].n; j++)
            stmt_uses(k->body.data[j], used, &seen);
        for (int v = 0; v < k->vars.len; v++)
            if (used[v] && owner[v] >= 0 && owner[v] != i)
                return true;
    }
    return false;
}

static void render_units(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, int entry_index);

/* A kernel marked allreduce (ALLREDUCE_MEAN, lower_opaque.c) is followed by
 * the launch that averages its buffer over the ranks on the same stream
 * (the device layer's NCCL call, runtime/nccl.c), where the CPU backend
 * calls ctx->allreduce after the kernel's body. */
void cu_render_kernel(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, int entry_index) {
    render_units(cp, ce, p, k, entry_index);
    if (!k->allreduce)
        return;
    const LBuf *bf = &p->bufs.data[k->allreduce_buf];
    CuLaunch l = {.kind = LETHE_CUDA_ALLREDUCE, .dtype = bf->dtype, .count = bf->nelem};
    CuParam buf = {LETHE_CUDA_PTR, k->allreduce_buf};
    vec_push(&l.params, buf);
    vec_push(&ce->launches, l);
}

static void render_units(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, int entry_index) {
    VEC(Unit) units = {0};
    GemmVec insts = {0};
    for (int i = 0; i < k->body.len; i++) {
        const LStmt *s = k->body.data[i];
        int kind = gemm_instances(p, k, s, &insts) ? 2 : s->kind == LS_FOR && s->parallel ? 1 : 0;
        if (kind == 1 && s->extent == 0)
            continue;
        if (kind == 0 && units.len && units.data[units.len - 1].kind == 0) {
            units.data[units.len - 1].n++;
            continue;
        }
        Unit u = {kind, i, 1};
        vec_push(&units, u);
    }
    const char *base = xfmt("e%d_%s", entry_index, k->name);
    for (char *c = (char *)base; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
            *c = '_';
    if (units_share_vars(k, units.data, units.len)) {
        emit_serial(cp, ce, p, k, k->body.data, k->body.len, base);
        return;
    }
    for (int i = 0; i < units.len; i++) {
        const Unit *u = &units.data[i];
        const char *name = units.len == 1 ? base : xfmt("%s_%d", base, i);
        LStmt *const *s = k->body.data + u->first;
        switch (u->kind) {
        case 0: emit_serial(cp, ce, p, k, s, u->n, name); break;
        case 1: emit_parallel(cp, ce, p, k, s[0], name); break;
        case 2:
            if (!gemm_instances(p, k, s[0], &insts))
                unreachable();
            emit_gemms(cp, ce, p, insts.data, insts.len);
            break;
        }
    }
}
