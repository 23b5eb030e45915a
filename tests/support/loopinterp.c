/* loopinterp.c: the loop IR interpreter (see loopinterp.h). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loopinterp.h"
#include "philox.h"

typedef struct Val {
    double f;
    int64_t i;
} Val;

/* Per-buffer shadow state for the parallel-loop independence check. */
typedef struct Shadow {
    uint32_t *wep, *rep;   /* epoch of the last write / read */
    int64_t *wit, *rit;    /* iteration of it; rit -2: read by several */
} Shadow;

typedef struct Interp {
    const LProgram *p;
    void *const *args;
    char *ws;
    uint64_t seed, counter;
    const LKernel *k;
    Val *vars;
    char *err;
    size_t errlen;
    jmp_buf fail;
    Shadow *sh;
    uint32_t epoch;     /* current parallel loop, 0 = none */
    int64_t iter;       /* its current iteration */
    /* LB_PRIVATE buffers: own storage, and per element the top-level
     * iteration that last wrote it (a read must find the current one) */
    char **priv;
    uint64_t **priv_w;
    uint64_t top_iter;  /* iterations of top-level loops, counted from 1 */
} Interp;

static bool is_float(DType t) { return t == DT_F32 || t == DT_F64; }

static uint64_t top_iters;   /* Interp.top_iter values, unique over all runs */

static __attribute__((__noreturn__, format(printf, 2, 3))) void fail(Interp *in, const char *fmt, ...) {
    int n = snprintf(in->err, in->errlen, "%s: ", in->k ? in->k->name : "program");
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < in->errlen)
        vsnprintf(in->err + n, in->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    longjmp(in->fail, 1);
}

static char *buf_base(Interp *in, int b) {
    const LBuf *lb = &in->p->bufs.data[b];
    if (lb->kind == LB_PRIVATE) {
        if (!in->priv[b]) {
            in->priv[b] = calloc((size_t)lb->nelem + 1, (size_t)dtype_size(lb->dtype));
            in->priv_w[b] = calloc((size_t)lb->nelem + 1, sizeof(uint64_t));
        }
        return in->priv[b];
    }
    return lb->kind == LB_ARG ? (char *)in->args[lb->arg] : in->ws + lb->offset;
}

/* A private element is read only after this iteration of its loop wrote it. */
static void track_private(Interp *in, int b, int64_t i, bool write) {
    if (write) {
        in->priv_w[b][i] = in->top_iter;
        return;
    }
    if (in->priv_w[b][i] != in->top_iter || !in->top_iter)
        fail(in, "reads private %s[%lld] before this iteration wrote it", in->p->bufs.data[b].name, (long long)i);
}

static void check_index(Interp *in, int b, int64_t i, const char *what) {
    const LBuf *lb = &in->p->bufs.data[b];
    if (i < 0 || i >= lb->nelem)
        fail(in, "%s of %s[%lld] out of bounds (%lld elements)", what, lb->name, (long long)i, (long long)lb->nelem);
}

static Shadow *shadow(Interp *in, int b) {
    Shadow *s = &in->sh[b];
    if (!s->wep) {
        size_t n = (size_t)in->p->bufs.data[b].nelem + 1;
        s->wep = calloc(n, sizeof(uint32_t));
        s->rep = calloc(n, sizeof(uint32_t));
        s->wit = calloc(n, sizeof(int64_t));
        s->rit = calloc(n, sizeof(int64_t));
    }
    return s;
}

static void track(Interp *in, int b, int64_t i, bool write) {
    if (in->p->bufs.data[b].kind == LB_PRIVATE) {
        track_private(in, b, i, write);
        return;
    }
    if (!in->epoch)
        return;
    Shadow *s = shadow(in, b);
    const char *name = in->p->bufs.data[b].name;
    if (s->wep[i] == in->epoch && s->wit[i] != in->iter)
        fail(in, "parallel iterations %lld and %lld both touch %s[%lld] (one writes it)", (long long)s->wit[i],
             (long long)in->iter, name, (long long)i);
    if (write) {
        if (s->rep[i] == in->epoch && s->rit[i] != in->iter)
            fail(in, "parallel iteration %lld writes %s[%lld], read by another iteration", (long long)in->iter, name,
                 (long long)i);
        s->wep[i] = in->epoch;
        s->wit[i] = in->iter;
    } else if (s->rep[i] != in->epoch) {
        s->rep[i] = in->epoch;
        s->rit[i] = in->iter;
    } else if (s->rit[i] != in->iter) {
        s->rit[i] = -2;
    }
}

static Val mem_read(Interp *in, int b, int64_t i) {
    check_index(in, b, i, "load");
    char *base = buf_base(in, b);
    track(in, b, i, false);
    Val v = {0, 0};
    switch (in->p->bufs.data[b].dtype) {
    case DT_BOOL: v.i = ((unsigned char *)base)[i] != 0; break;
    case DT_I32: v.i = ((int32_t *)base)[i]; break;
    case DT_I64: v.i = ((int64_t *)base)[i]; break;
    case DT_F32: v.f = ((float *)base)[i]; break;
    case DT_F64: v.f = ((double *)base)[i]; break;
    }
    return v;
}

static void mem_write(Interp *in, int b, int64_t i, Val v) {
    check_index(in, b, i, "store");
    char *base = buf_base(in, b);
    track(in, b, i, true);
    switch (in->p->bufs.data[b].dtype) {
    case DT_BOOL: ((unsigned char *)base)[i] = v.i != 0; break;
    case DT_I32: ((int32_t *)base)[i] = (int32_t)v.i; break;
    case DT_I64: ((int64_t *)base)[i] = v.i; break;
    case DT_F32: ((float *)base)[i] = (float)v.f; break;
    case DT_F64: ((double *)base)[i] = v.f; break;
    }
}

static Val vf(double f) {
    Val v = {f, 0};
    return v;
}

static Val vi(int64_t i) {
    Val v = {(double)i, i};
    return v;
}

static Val cast_to(Val a, DType from, DType to) {
    if (is_float(to)) {
        double f = is_float(from) ? a.f : (double)a.i;
        return vf(to == DT_F32 ? (double)(float)f : f);
    }
    if (to == DT_BOOL)
        return vi(is_float(from) ? a.f != 0 : a.i != 0);
    if (is_float(from))
        return vi(isfinite(a.f) ? (int64_t)trunc(a.f) : 0);
    return vi(to == DT_I32 ? (int32_t)a.i : a.i);
}

static Val eval(Interp *in, const LExpr *e);

static Val eval_op(Interp *in, const LExpr *e) {
    DType dt = e->dtype;
    DType od = e->a[0]->dtype;   /* operand dtype (WHERE: of the branches) */
    Val a = eval(in, e->a[0]);
    if (e->op == OP_WHERE) {
        Val t = eval(in, e->a[1]), f = eval(in, e->a[2]);
        return a.i ? t : f;
    }
    if (op_info[e->op].arity == 1) {
        double x = a.f;
        switch (e->op) {
        case OP_CAST: return cast_to(a, od, dt);
        case OP_DETACH: return a;
        case OP_NOT: return vi(!a.i);
        case OP_NEG: return is_float(dt) ? vf(-x) : vi(-a.i);
        case OP_ABS: return is_float(dt) ? vf(fabs(x)) : vi(a.i < 0 ? -a.i : a.i);
        case OP_SIGN: return is_float(dt) ? vf((x > 0) - (x < 0)) : vi((a.i > 0) - (a.i < 0));
        case OP_RELU: return is_float(dt) ? vf(x > 0 ? x : 0) : vi(a.i > 0 ? a.i : 0);
        case OP_EXP: return vf(exp(x));
        case OP_LOG: return vf(log(x));
        case OP_SQRT: return vf(sqrt(x));
        case OP_RSQRT: return vf(1 / sqrt(x));
        case OP_TANH: return vf(tanh(x));
        case OP_SIGMOID: return vf(1 / (1 + exp(-x)));
        case OP_GELU: return vf(0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
        default: fail(in, "unary op %s", op_info[e->op].name);
        }
    }
    Val b = eval(in, e->a[1]);
    if (is_float(od)) {
        double x = a.f, y = b.f;
        switch (e->op) {
        case OP_ADD: return vf(x + y);
        case OP_SUB: return vf(x - y);
        case OP_MUL: return vf(x * y);
        case OP_DIV: return vf(x / y);
        case OP_MOD: return vf(fmod(x, y));
        case OP_POW: return vf(pow(x, y));
        case OP_MAX: return vf(x > y ? x : y);
        case OP_MIN: return vf(x < y ? x : y);
        case OP_LT: return vi(x < y);
        case OP_LE: return vi(x <= y);
        case OP_GT: return vi(x > y);
        case OP_GE: return vi(x >= y);
        case OP_EQ: return vi(x == y);
        case OP_NE: return vi(x != y);
        default: fail(in, "float op %s", op_info[e->op].name);
        }
    }
    int64_t x = a.i, y = b.i;
    switch (e->op) {
    case OP_ADD: return vi(x + y);
    case OP_SUB: return vi(x - y);
    case OP_MUL: return vi(x * y);
    case OP_DIV:
        if (dt == DT_I64 && (y == 0 || x < 0 || y < 0))
            fail(in, "index division %lld / %lld (must be non-negative and non-zero)", (long long)x, (long long)y);
        return vi(y ? x / y : 0);
    case OP_MOD:
        if (dt == DT_I64 && (y == 0 || x < 0 || y < 0))
            fail(in, "index remainder %lld %% %lld (must be non-negative and non-zero)", (long long)x, (long long)y);
        return vi(y ? x % y : 0);
    case OP_MAX: return vi(x > y ? x : y);
    case OP_MIN: return vi(x < y ? x : y);
    case OP_LT: return vi(x < y);
    case OP_LE: return vi(x <= y);
    case OP_GT: return vi(x > y);
    case OP_GE: return vi(x >= y);
    case OP_EQ: return vi(x == y);
    case OP_NE: return vi(x != y);
    case OP_AND: return vi(x && y);
    case OP_OR: return vi(x || y);
    default: fail(in, "integer op %s", op_info[e->op].name);
    }
}

static Val eval(Interp *in, const LExpr *e) {
    switch (e->kind) {
    case LE_CONST: return is_float(e->dtype) ? vf(e->cval) : vi(e->ival);
    case LE_VAR: return in->vars[e->var];
    case LE_LOAD:
        if (e->valid && !eval(in, e->valid).i)
            return vi(0);
        return mem_read(in, e->buf, eval(in, e->index).i);
    case LE_RAND: {
        uint64_t i = (uint64_t)eval(in, e->a[0]).i;
        double v = e->op == OP_RAND_UNIFORM ? philox_uniform_at(in->seed, e->stream, in->counter, i, e->dtype == DT_F32)
                                            : philox_normal_at(in->seed, e->stream, in->counter, i);
        return vf(e->dtype == DT_F32 ? (double)(float)v : v);
    }
    case LE_OP: return eval_op(in, e);
    }
    fail(in, "bad expression kind %d", (int)e->kind);
}

/* op(B)[l][j] of a GEMM whose B is the column matrix of a convolution */
static double im2col_at(Interp *in, const LGemm *g, int64_t bo, int64_t p0, int64_t l, int64_t j) {
    const LIm2col *ic = g->b_im2col;
    int64_t r = g->trans_b ? j : l, q = p0 + (g->trans_b ? l : j);
    if (q < 0 || q >= ic->oh * ic->w)
        fail(in, "im2col column %lld outside the %lldx%lld output", (long long)q, (long long)ic->oh, (long long)ic->w);
    int64_t ci = r / (ic->kh * ic->kw), i = r / ic->kw % ic->kh, jj = r % ic->kw;
    int64_t hh = q / ic->w + i - ic->ph, ww = q % ic->w + jj - ic->pw;
    if (hh < 0 || hh >= ic->h || ww < 0 || ww >= ic->w)
        return 0;
    return mem_read(in, g->b_buf, bo + (ci * ic->h + hh) * ic->w + ww).f;
}

static void gemm(Interp *in, const LGemm *g) {
    int64_t ao = eval(in, g->a_off).i, bo = eval(in, g->b_off).i, co = eval(in, g->c_off).i;
    int64_t p0 = g->b_im2col ? eval(in, g->b_im2col->p0).i : 0;
    for (int64_t i = 0; i < g->m; i++)
        for (int64_t j = 0; j < g->n; j++) {
            double acc = 0;
            for (int64_t l = 0; l < g->k; l++) {
                int64_t ai = ao + (g->trans_a ? l * g->lda + i : i * g->lda + l);
                double b;
                if (g->b_im2col) {
                    b = im2col_at(in, g, bo, p0, l, j);
                } else {
                    int64_t bi = bo + (g->trans_b ? j * g->ldb + l : l * g->ldb + j);
                    b = mem_read(in, g->b_buf, bi).f;
                }
                acc += mem_read(in, g->a_buf, ai).f * b;
            }
            int64_t ci = co + i * g->ldc + j;
            double c = g->beta != 0 ? g->beta * mem_read(in, g->c_buf, ci).f : 0;
            mem_write(in, g->c_buf, ci, vf(g->alpha * acc + c));
        }
}

static void exec(Interp *in, LStmt *const *body, int n, bool top) {
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        switch (s->kind) {
        case LS_FOR:
            if (s->parallel) {
                if (in->epoch)
                    fail(in, "nested parallel loop v%d", s->var);
                static uint32_t epochs;
                in->epoch = ++epochs;
            }
            for (int64_t v = 0; v < s->extent; v++) {
                in->vars[s->var] = vi(v);
                if (s->parallel)
                    in->iter = v;
                if (top)
                    in->top_iter = ++top_iters;   /* a fresh private scratch */
                exec(in, s->body.data, s->body.len, false);
            }
            if (top)
                in->top_iter = 0;
            if (s->parallel)
                in->epoch = 0;
            break;
        case LS_LET:
        case LS_ASSIGN: in->vars[s->var] = eval(in, s->value); break;
        case LS_STORE: {
            int64_t idx = eval(in, s->index).i;
            Val v = eval(in, s->value);
            if (s->accumulate) {
                Val old = mem_read(in, s->buf, idx);
                if (is_float(in->p->bufs.data[s->buf].dtype))
                    v.f += old.f;
                else
                    v.i += old.i;
            }
            mem_write(in, s->buf, idx, v);
            break;
        }
        case LS_GEMM: gemm(in, &s->gemm); break;
        }
    }
}

static void mark_used(const LExpr *e, char *used) {
    if (!e)
        return;
    if (e->kind == LE_LOAD) {
        used[e->buf] = 1;
        mark_used(e->index, used);
        mark_used(e->valid, used);
    }
    for (int i = 0; i < 3; i++)
        mark_used(e->a[i], used);
}

static void mark_stmts(LStmt *const *body, int n, char *used) {
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        switch (s->kind) {
        case LS_FOR: mark_stmts(s->body.data, s->body.len, used); break;
        case LS_LET:
        case LS_ASSIGN: mark_used(s->value, used); break;
        case LS_STORE:
            used[s->buf] = 1;
            mark_used(s->index, used);
            mark_used(s->value, used);
            break;
        case LS_GEMM: used[s->gemm.a_buf] = used[s->gemm.b_buf] = used[s->gemm.c_buf] = 1; break;
        }
    }
}

/* Distinct buffers of one kernel must not share bytes (backends mark them
 * noalias). */
static void check_overlap(Interp *in) {
    int nb = in->p->bufs.len;
    char *used = calloc((size_t)nb + 1, 1);
    mark_stmts(in->k->body.data, in->k->body.len, used);
    for (int a = 0; a < nb; a++)
        for (int b = a + 1; b < nb && used[a]; b++) {
            if (!used[b])
                continue;
            const LBuf *x = &in->p->bufs.data[a], *y = &in->p->bufs.data[b];
            bool clash;
            if (x->kind != y->kind || x->kind == LB_PRIVATE) {
                clash = false;
            } else if (x->kind == LB_ARG) {
                clash = x->arg == y->arg;
            } else {
                uint64_t xe = x->offset + (uint64_t)x->nelem * (uint64_t)dtype_size(x->dtype);
                uint64_t ye = y->offset + (uint64_t)y->nelem * (uint64_t)dtype_size(y->dtype);
                clash = x->nelem && y->nelem && x->offset < ye && y->offset < xe;
            }
            if (clash) {
                free(used);
                fail(in, "buffers %s and %s overlap", x->name, y->name);
            }
        }
    free(used);
}

int loopinterp_run(const LProgram *p, void *const *args, void *workspace, uint64_t seed, uint64_t counter, char *err,
                   size_t errlen) {
    Interp in;
    memset(&in, 0, sizeof in);
    in.p = p;
    in.args = args;
    in.ws = workspace;
    in.seed = seed;
    in.counter = counter;
    in.err = err;
    in.errlen = errlen;
    in.sh = calloc((size_t)p->bufs.len + 1, sizeof(Shadow));
    in.priv = calloc((size_t)p->bufs.len + 1, sizeof(char *));
    in.priv_w = calloc((size_t)p->bufs.len + 1, sizeof(uint64_t *));
    int rc = 0;
    if (setjmp(in.fail)) {
        rc = -1;
    } else {
        for (int i = 0; i < p->bufs.len; i++) {
            const LBuf *b = &p->bufs.data[i];
            if (b->kind == LB_WORKSPACE &&
                b->offset + (uint64_t)b->nelem * (uint64_t)dtype_size(b->dtype) > p->workspace_bytes)
                fail(&in, "buffer %s lies outside the workspace", b->name);
            if (b->kind == LB_ARG && !args[b->arg])
                fail(&in, "argument %d of buffer %s is missing", b->arg, b->name);
        }
        for (int i = 0; i < p->kernels.len; i++) {
            in.k = p->kernels.data[i];
            check_overlap(&in);
            free(in.vars);
            in.vars = calloc((size_t)in.k->vars.len + 1, sizeof(Val));
            exec(&in, in.k->body.data, in.k->body.len, true);
        }
    }
    free(in.vars);
    for (int i = 0; i < p->bufs.len; i++) {
        free(in.sh[i].wep);
        free(in.sh[i].rep);
        free(in.sh[i].wit);
        free(in.sh[i].rit);
        free(in.priv[i]);
        free(in.priv_w[i]);
    }
    free(in.sh);
    free(in.priv);
    free(in.priv_w);
    if (!rc && errlen)
        err[0] = 0;
    return rc;
}
