/* backend_cuda_analysis.c: what the CUDA renderer must know about a kernel
 * before it maps loops onto threads.
 *
 *  - Value ranges of the I64 index expressions: when every one fits in a
 *    32-bit int the kernel does its index math in int, which the GPU does
 *    in one instruction (64-bit multiplies and divisions are emulated).
 *  - Whether a serial loop may be spread over the threads of a block
 *    (cu_classify). The loop IR only promises independence for parallel
 *    top-level loops; inside them the renderer proves it itself:
 *      CL_REDUCE  the loop only folds values into accumulators defined
 *                 outside it with + max min (reordered like the CPU
 *                 backend's vectorized reductions), so threads can take
 *                 iterations and combine their partials in a block tree;
 *      CL_SPREAD  every store index is an affine function of the loop
 *                 variables that is one-to-one on the iteration box (mixed
 *                 radix: each coefficient exceeds the span of the smaller
 *                 ones), and a buffer the loop writes is only read at the
 *                 element the same iteration writes.
 *    Anything else stays on one thread. The checks are conservative: a
 *    refusal costs speed, never correctness.
 */
#include <string.h>

#include "backend_cuda.h"

/* ---------------------------------------------------------------------------
 * ranges */

typedef struct Range {
    bool known;
    int64_t lo, hi;
} Range;

static Range rng(__int128 lo, __int128 hi) {
    Range r = {false, 0, 0};
    if (lo < INT64_MIN || hi > INT64_MAX)
        return r;
    r.known = true;
    r.lo = (int64_t)lo;
    r.hi = (int64_t)hi;
    return r;
}

typedef struct RangeCtx {
    CuKernelInfo *ki;
    PtrMap memo;
    bool fits;             /* every I64 value seen fits in int */
} RangeCtx;

static Range range_expr(RangeCtx *rc, const LExpr *e);

static Range range_op(RangeCtx *rc, const LExpr *e) {
    Range a = e->a[0] ? range_expr(rc, e->a[0]) : rng(0, 0), b = e->a[1] ? range_expr(rc, e->a[1]) : rng(0, 0);
    Range c = e->a[2] ? range_expr(rc, e->a[2]) : rng(0, 0);
    Range none = {false, 0, 0};
    if (e->dtype != DT_I64)
        return none;
    switch (e->op) {
    case OP_ADD: return a.known && b.known ? rng((__int128)a.lo + b.lo, (__int128)a.hi + b.hi) : none;
    case OP_SUB: return a.known && b.known ? rng((__int128)a.lo - b.hi, (__int128)a.hi - b.lo) : none;
    case OP_MUL: {
        if (!a.known || !b.known)
            return none;
        __int128 p[4] = {(__int128)a.lo * b.lo, (__int128)a.lo * b.hi, (__int128)a.hi * b.lo, (__int128)a.hi * b.hi};
        __int128 lo = p[0], hi = p[0];
        for (int i = 1; i < 4; i++) {
            lo = p[i] < lo ? p[i] : lo;
            hi = p[i] > hi ? p[i] : hi;
        }
        return rng(lo, hi);
    }
    case OP_DIV:
        /* index division: non-negative operands (loopir.h) */
        if (!a.known || !b.known || a.lo < 0 || b.lo <= 0)
            return none;
        return rng(a.lo / b.hi, a.hi / b.lo);
    case OP_MOD:
        if (!a.known || !b.known || a.lo < 0 || b.lo <= 0)
            return none;
        return rng(0, a.hi < b.hi - 1 ? a.hi : b.hi - 1);
    case OP_WHERE:
        return b.known && c.known ? rng(b.lo < c.lo ? b.lo : c.lo, b.hi > c.hi ? b.hi : c.hi) : none;
    case OP_MAX: return a.known && b.known ? rng(a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi) : none;
    case OP_MIN: return a.known && b.known ? rng(a.lo < b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi) : none;
    case OP_NEG: return a.known ? rng(-(__int128)a.hi, -(__int128)a.lo) : none;
    case OP_CAST:
        switch (e->a[0]->dtype) {
        case DT_BOOL: return rng(0, 1);
        case DT_I32: return rng(INT32_MIN, INT32_MAX);
        default: return none;
        }
    default: return none;
    }
}

static Range range_expr(RangeCtx *rc, const LExpr *e) {
    Range *seen = *ptrmap_slot(&rc->memo, e);
    if (seen)
        return *seen;
    Range r = {false, 0, 0};
    switch (e->kind) {
    case LE_CONST: r = rng(e->ival, e->ival); break;
    case LE_VAR: {
        const CuVarInfo *vi = &rc->ki->var[e->var];
        if (vi->lo <= vi->hi)
            r = rng(vi->lo, vi->hi);
        break;
    }
    case LE_LOAD:
        range_expr(rc, e->index);
        if (e->valid)
            range_expr(rc, e->valid);
        break;
    case LE_RAND: range_expr(rc, e->a[0]); break;
    case LE_OP: r = range_op(rc, e); break;
    }
    if (e->dtype == DT_I64 && (!r.known || r.lo < INT32_MIN || r.hi > INT32_MAX))
        rc->fits = false;
    Range *keep = xalloc(sizeof *keep);
    *keep = r;
    *ptrmap_slot(&rc->memo, e) = keep;   /* the recursion may have moved the slot */
    return r;
}

static void info_stmts(RangeCtx *rc, LStmt *const *body, int n) {
    CuKernelInfo *ki = rc->ki;
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        switch (s->kind) {
        case LS_FOR:
            ki->var[s->var].def = s;
            ki->var[s->var].lo = 0;
            ki->var[s->var].hi = s->extent - 1;
            if (s->extent > INT32_MAX)
                rc->fits = false;
            info_stmts(rc, s->body.data, s->body.len);
            break;
        case LS_LET: {
            ki->var[s->var].def = s;
            Range r = range_expr(rc, s->value);
            ki->var[s->var].lo = r.known ? r.lo : 1;
            ki->var[s->var].hi = r.known ? r.hi : 0;
            break;
        }
        case LS_ASSIGN:
            range_expr(rc, s->value);
            if (ki->k->vars.data[s->var] == DT_I64) {
                /* an index variable updated in a loop: no bound */
                ki->var[s->var].lo = 1;
                ki->var[s->var].hi = 0;
                rc->fits = false;
            }
            break;
        case LS_STORE:
            range_expr(rc, s->index);
            range_expr(rc, s->value);
            break;
        case LS_GEMM: {
            const LGemm *gm = &s->gemm;
            range_expr(rc, gm->a_off);
            range_expr(rc, gm->b_off);
            range_expr(rc, gm->c_off);
            if (gm->b_im2col)
                range_expr(rc, gm->b_im2col->p0);
            /* the in-kernel GEMM of the fallback path indexes up to these */
            int64_t span[3] = {gm->m * (gm->lda > gm->k ? gm->lda : gm->k), gm->k * (gm->ldb > gm->n ? gm->ldb : gm->n),
                               gm->m * gm->ldc};
            for (int j = 0; j < 3; j++)
                if (span[j] > INT32_MAX / 2)
                    rc->fits = false;
            break;
        }
        }
    }
}

void cu_kernel_info(CuKernelInfo *ki, const LProgram *p, const LKernel *k) {
    memset(ki, 0, sizeof *ki);
    ki->p = p;
    ki->k = k;
    ki->var = xalloc(sizeof(CuVarInfo) * ((size_t)k->vars.len + 1));
    for (int v = 0; v < k->vars.len; v++)
        ki->var[v].lo = 1;   /* unknown until defined */
    RangeCtx rc = {.ki = ki, .fits = true};
    info_stmts(&rc, k->body.data, k->body.len);
    /* buffers larger than an int can index need 64-bit index math too */
    for (int b = 0; b < p->bufs.len; b++)
        if (p->bufs.data[b].nelem > INT32_MAX)
            rc.fits = false;
    ki->idx32 = rc.fits;
}

/* ---------------------------------------------------------------------------
 * small predicates */

Op cu_reduction_op(const LStmt *s, const LExpr **other) {
    const LExpr *e = s->value;
    if (s->kind != LS_ASSIGN || e->kind != LE_OP || (e->op != OP_ADD && e->op != OP_MAX && e->op != OP_MIN))
        return OP_COUNT;
    bool acc0 = e->a[0]->kind == LE_VAR && e->a[0]->var == s->var;
    bool acc1 = e->a[1]->kind == LE_VAR && e->a[1]->var == s->var;
    if (acc0 == acc1)
        return OP_COUNT;
    *other = acc0 ? e->a[1] : e->a[0];
    return e->op;
}

double cu_work(const LStmt *s) {
    if (s->kind == LS_GEMM)
        return 2.0 * (double)s->gemm.m * (double)s->gemm.n * (double)s->gemm.k;
    if (s->kind != LS_FOR)
        return 1;
    double w = 0;
    for (int i = 0; i < s->body.len; i++)
        w += cu_work(s->body.data[i]);
    return w * (double)s->extent;
}

bool cu_expr_equal(const LExpr *a, const LExpr *b) {
    if (a == b)
        return true;
    if (!a || !b || a->kind != b->kind || a->dtype != b->dtype)
        return false;
    switch (a->kind) {
    case LE_CONST: return a->ival == b->ival && (a->cval == b->cval || (a->cval != a->cval && b->cval != b->cval));
    case LE_VAR: return a->var == b->var;
    case LE_LOAD: return a->buf == b->buf && cu_expr_equal(a->index, b->index) && cu_expr_equal(a->valid, b->valid);
    case LE_RAND: return a->op == b->op && a->stream == b->stream && cu_expr_equal(a->a[0], b->a[0]);
    case LE_OP:
        if (a->op != b->op)
            return false;
        for (int i = 0; i < op_info[a->op].arity; i++)
            if (!cu_expr_equal(a->a[i], b->a[i]))
                return false;
        return true;
    }
    return false;
}

bool cu_eval_static(const LExpr *e, const int64_t *env, const bool *known, int64_t *out) {
    int64_t a = 0, b = 0, c = 0;
    switch (e->kind) {
    case LE_CONST:
        if (e->dtype == DT_F32 || e->dtype == DT_F64)
            return false;
        *out = e->ival;
        return true;
    case LE_VAR:
        if (!known[e->var])
            return false;
        *out = env[e->var];
        return true;
    case LE_LOAD:
    case LE_RAND:
        return false;
    case LE_OP:
        break;
    }
    int ar = op_info[e->op].arity;
    if (!cu_eval_static(e->a[0], env, known, &a) || (ar > 1 && !cu_eval_static(e->a[1], env, known, &b)) ||
        (ar > 2 && !cu_eval_static(e->a[2], env, known, &c)))
        return false;
    switch (e->op) {
    case OP_ADD: *out = a + b; return true;
    case OP_SUB: *out = a - b; return true;
    case OP_MUL: *out = a * b; return true;
    case OP_DIV: if (!b) return false; *out = a / b; return true;
    case OP_MOD: if (!b) return false; *out = a % b; return true;
    case OP_LT: *out = a < b; return true;
    case OP_LE: *out = a <= b; return true;
    case OP_GT: *out = a > b; return true;
    case OP_GE: *out = a >= b; return true;
    case OP_EQ: *out = a == b; return true;
    case OP_NE: *out = a != b; return true;
    case OP_AND: *out = a && b; return true;
    case OP_OR: *out = a || b; return true;
    case OP_WHERE: *out = a ? b : c; return true;
    case OP_CAST: *out = e->dtype == DT_BOOL ? a != 0 : e->dtype == DT_I32 ? (int32_t)a : a; return true;
    default: return false;
    }
}

/* ---------------------------------------------------------------------------
 * classification of serial loops */

typedef struct Facts {
    const CuKernelInfo *ki;
    char *inside;          /* per variable: defined in the subtree */
    char *loopvar;         /* per variable: a loop variable of the subtree */
    VEC(const LStmt *) stores, assigns, gemms;
    VEC(const LExpr *) loads;
    PtrMap seen;
} Facts;

static void facts_expr(Facts *f, const LExpr *e) {
    if (!e)
        return;
    void **slot = ptrmap_slot(&f->seen, e);
    if (*slot)
        return;
    *slot = (void *)1;
    switch (e->kind) {
    case LE_CONST:
    case LE_VAR: return;
    case LE_LOAD:
        vec_push(&f->loads, e);
        facts_expr(f, e->index);
        facts_expr(f, e->valid);
        return;
    case LE_RAND: facts_expr(f, e->a[0]); return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            facts_expr(f, e->a[i]);
        return;
    }
}

static void facts_stmt(Facts *f, const LStmt *s) {
    switch (s->kind) {
    case LS_FOR:
        f->inside[s->var] = f->loopvar[s->var] = 1;
        for (int i = 0; i < s->body.len; i++)
            facts_stmt(f, s->body.data[i]);
        return;
    case LS_LET:
        f->inside[s->var] = 1;
        facts_expr(f, s->value);
        return;
    case LS_ASSIGN:
        vec_push(&f->assigns, s);
        facts_expr(f, s->value);
        return;
    case LS_STORE:
        vec_push(&f->stores, s);
        facts_expr(f, s->index);
        facts_expr(f, s->value);
        return;
    case LS_GEMM:
        vec_push(&f->gemms, s);
        return;
    }
}

static Facts facts_of(const CuKernelInfo *ki, const LStmt *loop) {
    Facts f = {.ki = ki};
    int nv = ki->k->vars.len + 1;
    f.inside = xalloc((size_t)nv);
    f.loopvar = xalloc((size_t)nv);
    facts_stmt(&f, loop);
    return f;
}

/* number of references to variable v in e (each DAG node once) */
static int var_refs(const LExpr *e, int v, PtrMap *seen) {
    if (!e)
        return 0;
    void **slot = ptrmap_slot(seen, e);
    if (*slot)
        return 0;
    *slot = (void *)1;
    switch (e->kind) {
    case LE_CONST: return 0;
    case LE_VAR: return e->var == v;
    case LE_LOAD: return var_refs(e->index, v, seen) + var_refs(e->valid, v, seen);
    case LE_RAND: return var_refs(e->a[0], v, seen);
    case LE_OP: {
        int n = 0;
        for (int i = 0; i < op_info[e->op].arity; i++)
            n += var_refs(e->a[i], v, seen);
        return n;
    }
    }
    return 0;
}

static int stmt_var_refs(const LStmt *s, int v, PtrMap *seen) {
    switch (s->kind) {
    case LS_FOR: {
        int n = 0;
        for (int i = 0; i < s->body.len; i++)
            n += stmt_var_refs(s->body.data[i], v, seen);
        return n;
    }
    case LS_LET:
    case LS_ASSIGN: return var_refs(s->value, v, seen);
    case LS_STORE: return var_refs(s->index, v, seen) + var_refs(s->value, v, seen);
    case LS_GEMM:
        return var_refs(s->gemm.a_off, v, seen) + var_refs(s->gemm.b_off, v, seen) + var_refs(s->gemm.c_off, v, seen) +
               (s->gemm.b_im2col ? var_refs(s->gemm.b_im2col->p0, v, seen) : 0);
    }
    return 0;
}

static bool is_reduction(const Facts *f, const LStmt *loop) {
    if (f->stores.len || f->gemms.len)
        return false;
    for (int i = 0; i < f->assigns.len; i++) {
        const LStmt *s = f->assigns.data[i];
        if (f->inside[s->var])
            continue;   /* a reduction local to one iteration */
        const LExpr *other;
        DType dt = f->ki->k->vars.data[s->var];
        if (cu_reduction_op(s, &other) == OP_COUNT || dt == DT_I64)
            return false;
        /* the accumulator appears once in the loop: as its own operand */
        PtrMap seen = {0};
        if (stmt_var_refs(loop, s->var, &seen) != 1)
            return false;
        for (int j = 0; j < f->assigns.len; j++)
            if (j != i && f->assigns.data[j]->var == s->var)
                return false;
    }
    return true;
}

/* affine form over the varying variables (loop variables of the subtree);
 * terms of variables that are the same in every iteration are dropped */
enum { MAX_TERMS = 16 };
typedef struct Aff {
    bool ok;
    int n;
    int var[MAX_TERMS];
    int64_t coef[MAX_TERMS];
} Aff;

static Aff aff_fail(void) {
    Aff a = {0};
    return a;
}

static Aff aff_const(void) {
    Aff a = {0};
    a.ok = true;
    return a;
}

static Aff aff_add(Aff a, Aff b, int64_t sb) {
    if (!a.ok || !b.ok)
        return aff_fail();
    for (int i = 0; i < b.n; i++) {
        int j = 0;
        while (j < a.n && a.var[j] != b.var[i])
            j++;
        if (j == a.n) {
            if (a.n == MAX_TERMS)
                return aff_fail();
            a.var[a.n] = b.var[i];
            a.coef[a.n++] = 0;
        }
        a.coef[j] += sb * b.coef[i];
    }
    return a;
}

static Aff aff_scale(Aff a, int64_t c) {
    for (int i = 0; i < a.n; i++)
        a.coef[i] *= c;
    return a;
}

typedef struct AffCtx {
    const Facts *f;
    PtrMap memo;
} AffCtx;

static Aff affine(AffCtx *ac, const LExpr *e) {
    Aff *seen = *ptrmap_slot(&ac->memo, e);
    if (seen)
        return *seen;
    Aff r = aff_const();
    switch (e->kind) {
    case LE_CONST: break;
    case LE_VAR:
        if (ac->f->loopvar[e->var]) {
            r.n = 1;
            r.var[0] = e->var;
            r.coef[0] = 1;
        } else if (ac->f->inside[e->var]) {
            const LStmt *def = ac->f->ki->var[e->var].def;
            r = def && def->kind == LS_LET ? affine(ac, def->value) : aff_fail();
        }
        break;
    case LE_LOAD: {
        Aff i = affine(ac, e->index), v = e->valid ? affine(ac, e->valid) : aff_const();
        r = i.ok && v.ok && i.n == 0 && v.n == 0 ? aff_const() : aff_fail();
        break;
    }
    case LE_RAND: {
        Aff i = affine(ac, e->a[0]);
        r = i.ok && i.n == 0 ? aff_const() : aff_fail();
        break;
    }
    case LE_OP: {
        Aff a[3] = {aff_const(), aff_const(), aff_const()};
        int ar = op_info[e->op].arity;
        bool varying = false;
        bool ok = true;
        for (int i = 0; i < ar; i++) {
            a[i] = affine(ac, e->a[i]);
            ok &= a[i].ok;
            varying |= a[i].n > 0;
        }
        if (!ok)
            r = aff_fail();
        else if (!varying)
            break;   /* the same value in every iteration */
        else if (e->dtype == DT_I64 && (e->op == OP_ADD || e->op == OP_SUB))
            r = aff_add(a[0], a[1], e->op == OP_ADD ? 1 : -1);
        else if (e->dtype == DT_I64 && e->op == OP_MUL && e->a[1]->kind == LE_CONST)
            r = aff_scale(a[0], e->a[1]->ival);
        else if (e->dtype == DT_I64 && e->op == OP_MUL && e->a[0]->kind == LE_CONST)
            r = aff_scale(a[1], e->a[0]->ival);
        else
            r = aff_fail();
        break;
    }
    }
    Aff *keep = xalloc(sizeof *keep);
    *keep = r;
    *ptrmap_slot(&ac->memo, e) = keep;   /* the recursion may have moved the slot */
    return r;
}

/* one-to-one on the box of its variables' extents (mixed radix) */
static bool aff_injective(const Facts *f, Aff a) {
    int64_t c[MAX_TERMS], ext[MAX_TERMS];
    int n = 0;
    for (int i = 0; i < a.n; i++) {
        if (!a.coef[i])
            continue;
        c[n] = a.coef[i] < 0 ? -a.coef[i] : a.coef[i];
        ext[n++] = f->ki->var[a.var[i]].hi + 1;
    }
    for (int i = 1; i < n; i++)   /* insertion sort by coefficient */
        for (int j = i; j > 0 && c[j] < c[j - 1]; j--) {
            int64_t t = c[j]; c[j] = c[j - 1]; c[j - 1] = t;
            t = ext[j]; ext[j] = ext[j - 1]; ext[j - 1] = t;
        }
    __int128 span = 0;
    for (int i = 0; i < n; i++) {
        if ((__int128)c[i] <= span)
            return false;
        span += (__int128)c[i] * (ext[i] - 1);
    }
    return true;
}

static bool aff_has(Aff a, int var) {
    for (int i = 0; i < a.n; i++)
        if (a.var[i] == var && a.coef[i])
            return true;
    return false;
}

/* CL_SPREAD with the loop variables levels[0..depth) taking distinct
 * values per thread */
static bool is_spread(const Facts *f, const LStmt *const *levels, int depth) {
    if (f->gemms.len)
        return false;
    for (int i = 0; i < f->assigns.len; i++)
        if (!f->inside[f->assigns.data[i]->var])
            return false;
    AffCtx ac = {.f = f};
    for (int i = 0; i < f->stores.len; i++) {
        const LStmt *s = f->stores.data[i];
        Aff a = affine(&ac, s->index);
        if (!a.ok || !aff_injective(f, a))
            return false;
        for (int d = 0; d < depth; d++)
            if (!aff_has(a, levels[d]->var))
                return false;
        /* every other store to the buffer, and every load of it, at the
         * same element */
        for (int j = 0; j < f->stores.len; j++)
            if (f->stores.data[j]->buf == s->buf && !cu_expr_equal(f->stores.data[j]->index, s->index))
                return false;
        for (int j = 0; j < f->loads.len; j++)
            if (f->loads.data[j]->buf == s->buf && !cu_expr_equal(f->loads.data[j]->index, s->index))
                return false;
    }
    return true;
}

const LStmt *cu_next_level(const LStmt *loop) {
    const LStmt *inner = NULL;
    for (int i = 0; i < loop->body.len; i++) {
        const LStmt *s = loop->body.data[i];
        if (s->kind == LS_LET && !inner)
            continue;
        if (s->kind == LS_FOR && !s->parallel && !inner && i == loop->body.len - 1) {
            inner = s;
            continue;
        }
        return NULL;
    }
    return inner;
}

CuLoopClass cu_classify(const CuKernelInfo *ki, const LStmt *loop, const LStmt **levels, int *n) {
    *n = 0;
    if (loop->kind != LS_FOR || loop->extent == 0)
        return CL_SERIAL;
    Facts f = facts_of(ki, loop);
    int depth = 1;
    levels[0] = loop;
    for (const LStmt *s = cu_next_level(loop); s && depth < MAX_RANK; s = cu_next_level(s))
        levels[depth++] = s;
    if (is_reduction(&f, loop)) {
        *n = depth;
        return CL_REDUCE;
    }
    /* the deepest prefix of the nest whose every variable moves every store */
    for (int d = depth; d >= 1; d--)
        if (is_spread(&f, levels, d)) {
            *n = d;
            return CL_SPREAD;
        }
    return CL_SERIAL;
}
