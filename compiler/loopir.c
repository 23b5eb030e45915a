/* loopir.c: constructors, the verifier and the -d loops dump of the loop IR
 * (semantics in loopir.h). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "loopir.h"

static LExpr *le_new(LExprKind kind, DType dt) {
    LExpr *e = xalloc(sizeof *e);
    e->kind = kind;
    e->dtype = dt;
    return e;
}

static bool is_int_dtype(DType dt) { return dt == DT_I64 || dt == DT_I32 || dt == DT_BOOL; }

LExpr *le_const_f(DType dt, double v) {
    if (is_int_dtype(dt))
        return le_const_i(dt, (int64_t)v);
    LExpr *e = le_new(LE_CONST, dt);
    e->cval = v;
    return e;
}

LExpr *le_const_i(DType dt, int64_t v) {
    if (!is_int_dtype(dt))
        return le_const_f(dt, (double)v);
    LExpr *e = le_new(LE_CONST, dt);
    e->ival = v;
    e->cval = (double)v;
    return e;
}

LExpr *le_var(LKernel *k, int var) {
    ASSERT(var >= 0 && var < k->vars.len);
    LExpr *e = le_new(LE_VAR, k->vars.data[var]);
    e->var = var;
    return e;
}

LExpr *le_load(LProgram *p, int buf, LExpr *index, LExpr *valid) {
    ASSERT(buf >= 0 && buf < p->bufs.len);
    ASSERT(index && index->dtype == DT_I64);
    LExpr *e = le_new(LE_LOAD, p->bufs.data[buf].dtype);
    e->buf = buf;
    e->index = index;
    e->valid = valid;
    return e;
}

LExpr *le_op1(Op op, DType dt, LExpr *a) {
    ASSERT(op_info[op].arity == 1 && op_info[op].kind == OK_ELEM);
    if (op == OP_CAST && a->dtype == dt)
        return a;
    LExpr *e = le_new(LE_OP, dt);
    e->op = op;
    e->a[0] = a;
    return e;
}

static bool is_iconst(const LExpr *e, int64_t v) {
    return e->kind == LE_CONST && e->dtype == DT_I64 && e->ival == v;
}

LExpr *le_op2(Op op, DType dt, LExpr *a, LExpr *b) {
    ASSERT(op_info[op].arity == 2 && op_info[op].kind == OK_ELEM);
    /* index arithmetic is built generously by lowering; fold the trivial
     * cases here so the IR (and the dumps) stay readable */
    if (dt == DT_I64) {
        if (a->kind == LE_CONST && b->kind == LE_CONST) {
            int64_t x = a->ival, y = b->ival;
            switch (op) {
            case OP_ADD: return le_const_i(DT_I64, x + y);
            case OP_SUB: return le_const_i(DT_I64, x - y);
            case OP_MUL: return le_const_i(DT_I64, x * y);
            case OP_DIV: if (y) return le_const_i(DT_I64, x / y); break;
            case OP_MOD: if (y) return le_const_i(DT_I64, x % y); break;
            default: break;
            }
        }
        if (op == OP_ADD && is_iconst(a, 0)) return b;
        if ((op == OP_ADD || op == OP_SUB) && is_iconst(b, 0)) return a;
        if (op == OP_MUL && (is_iconst(a, 0) || is_iconst(b, 0))) return le_const_i(DT_I64, 0);
        if (op == OP_MUL && is_iconst(a, 1)) return b;
        if ((op == OP_MUL || op == OP_DIV) && is_iconst(b, 1)) return a;
        if (op == OP_MOD && is_iconst(b, 1)) return le_const_i(DT_I64, 0);
    }
    if (op == OP_AND && dt == DT_BOOL) {
        if (a->kind == LE_CONST) return a->ival ? b : a;
        if (b->kind == LE_CONST) return b->ival ? a : b;
    }
    LExpr *e = le_new(LE_OP, dt);
    e->op = op;
    e->a[0] = a;
    e->a[1] = b;
    return e;
}

LExpr *le_op3(Op op, DType dt, LExpr *a, LExpr *b, LExpr *c) {
    ASSERT(op_info[op].arity == 3 && op_info[op].kind == OK_ELEM);
    if (a->kind == LE_CONST && a->dtype == DT_BOOL)
        return a->ival ? b : c;
    LExpr *e = le_new(LE_OP, dt);
    e->op = op;
    e->a[0] = a;
    e->a[1] = b;
    e->a[2] = c;
    return e;
}

LExpr *le_rand(Op op, DType dt, uint64_t stream, LExpr *index) {
    ASSERT(op == OP_RAND_UNIFORM || op == OP_RAND_NORMAL);
    LExpr *e = le_new(LE_RAND, dt);
    e->op = op;
    e->stream = stream;
    e->a[0] = index;
    return e;
}

int lk_new_var(LKernel *k, DType dt) {
    vec_push(&k->vars, dt);
    return k->vars.len - 1;
}

static LStmt *ls_new(LStmtKind kind) {
    LStmt *s = xalloc(sizeof *s);
    s->kind = kind;
    return s;
}

LStmt *ls_for(LKernel *k, int64_t extent, bool parallel, int *var_out) {
    LStmt *s = ls_new(LS_FOR);
    s->var = lk_new_var(k, DT_I64);
    s->extent = extent;
    s->parallel = parallel;
    *var_out = s->var;
    return s;
}

LStmt *ls_let(LKernel *k, DType dt, LExpr *value, int *var_out) {
    LStmt *s = ls_new(LS_LET);
    s->var = lk_new_var(k, dt);
    s->value = value;
    *var_out = s->var;
    return s;
}

LStmt *ls_assign(int var, LExpr *value) {
    LStmt *s = ls_new(LS_ASSIGN);
    s->var = var;
    s->value = value;
    return s;
}

LStmt *ls_store(int buf, LExpr *index, LExpr *value, bool accumulate) {
    LStmt *s = ls_new(LS_STORE);
    s->buf = buf;
    s->index = index;
    s->value = value;
    s->accumulate = accumulate;
    return s;
}

LStmt *ls_gemm(const LGemm *gm) {
    LStmt *s = ls_new(LS_GEMM);
    s->gemm = *gm;
    return s;
}

LKernel *lk_new(LProgram *p, const char *name) {
    LKernel *k = xalloc(sizeof *k);
    k->name = xstrdup(name);
    vec_push(&p->kernels, k);
    return k;
}

int lp_add_buf(LProgram *p, LBuf b) {
    vec_push(&p->bufs, b);
    return p->bufs.len - 1;
}

/* ---------------------------------------------------------------------------
 * dump */

static void dump_expr(const LProgram *p, const LExpr *e, FILE *out) {
    switch (e->kind) {
    case LE_CONST:
        if (is_int_dtype(e->dtype))
            fprintf(out, "%lld", (long long)e->ival);
        else
            fprintf(out, "%.9g", e->cval);
        return;
    case LE_VAR:
        fprintf(out, "v%d", e->var);
        return;
    case LE_LOAD:
        fprintf(out, "%s[", p->bufs.data[e->buf].name ? p->bufs.data[e->buf].name : "?");
        dump_expr(p, e->index, out);
        fprintf(out, "]");
        if (e->valid) {
            fprintf(out, " if ");
            dump_expr(p, e->valid, out);
        }
        return;
    case LE_RAND:
        fprintf(out, "%s<%s>(#%llu, ", op_info[e->op].name, dtype_name(e->dtype), (unsigned long long)e->stream);
        dump_expr(p, e->a[0], out);
        fprintf(out, ")");
        return;
    case LE_OP: {
        int n = op_info[e->op].arity;
        if (e->op == OP_CAST)
            fprintf(out, "%s(", dtype_name(e->dtype));
        else
            fprintf(out, "%s(", op_info[e->op].name);
        for (int i = 0; i < n; i++) {
            if (i)
                fprintf(out, ", ");
            dump_expr(p, e->a[i], out);
        }
        fprintf(out, ")");
        return;
    }
    }
}

static void dump_stmt(const LProgram *p, const LStmt *s, int depth, FILE *out) {
    fprintf(out, "%*s", 2 * depth + 4, "");
    switch (s->kind) {
    case LS_FOR:
        fprintf(out, "for v%d in 0..%lld%s {\n", s->var, (long long)s->extent, s->parallel ? " parallel" : "");
        for (int i = 0; i < s->body.len; i++)
            dump_stmt(p, s->body.data[i], depth + 1, out);
        fprintf(out, "%*s}\n", 2 * depth + 4, "");
        return;
    case LS_LET:
    case LS_ASSIGN:
        fprintf(out, "%sv%d = ", s->kind == LS_LET ? "let " : "", s->var);
        dump_expr(p, s->value, out);
        fprintf(out, "\n");
        return;
    case LS_STORE:
        fprintf(out, "%s[", p->bufs.data[s->buf].name ? p->bufs.data[s->buf].name : "?");
        dump_expr(p, s->index, out);
        fprintf(out, "] %s ", s->accumulate ? "+=" : "=");
        dump_expr(p, s->value, out);
        fprintf(out, "\n");
        return;
    case LS_GEMM: {
        const LGemm *g = &s->gemm;
        fprintf(out, "gemm%s%s m=%lld n=%lld k=%lld alpha=%g beta=%g  %s[", g->trans_a ? " At" : "", g->trans_b ? " Bt" : "",
                (long long)g->m, (long long)g->n, (long long)g->k, g->alpha, g->beta, p->bufs.data[g->c_buf].name);
        dump_expr(p, g->c_off, out);
        fprintf(out, "] <- %s[", p->bufs.data[g->a_buf].name);
        dump_expr(p, g->a_off, out);
        fprintf(out, "] lda=%lld @ %s[", (long long)g->lda, p->bufs.data[g->b_buf].name);
        dump_expr(p, g->b_off, out);
        if (g->b_im2col) {
            const LIm2col *ic = g->b_im2col;
            fprintf(out, "] im2col(%lldx%lldx%lld, k%lldx%lld p%lldx%lld -> %lldx%lld, from ", (long long)ic->c,
                    (long long)ic->h, (long long)ic->w, (long long)ic->kh, (long long)ic->kw, (long long)ic->ph,
                    (long long)ic->pw, (long long)ic->oh, (long long)ic->w);
            dump_expr(p, ic->p0, out);
            fprintf(out, ") ldc=%lld\n", (long long)g->ldc);
            return;
        }
        fprintf(out, "] ldb=%lld ldc=%lld\n", (long long)g->ldb, (long long)g->ldc);
        return;
    }
    }
}

void loopir_dump(const LProgram *p, FILE *out) {
    fprintf(out, "loops %s: %d kernels, workspace %llu bytes\n", p->entry ? p->entry->name : "?", p->kernels.len,
            (unsigned long long)p->workspace_bytes);
    for (int i = 0; i < p->bufs.len; i++) {
        const LBuf *b = &p->bufs.data[i];
        if (b->kind == LB_ARG)
            fprintf(out, "  buf %-24s %s[%lld] arg %d\n", b->name, dtype_name(b->dtype), (long long)b->nelem, b->arg);
        else if (b->kind == LB_PRIVATE)
            fprintf(out, "  buf %-24s %s[%lld] private\n", b->name, dtype_name(b->dtype), (long long)b->nelem);
        else
            fprintf(out, "  buf %-24s %s[%lld] workspace+%llu\n", b->name, dtype_name(b->dtype), (long long)b->nelem,
                    (unsigned long long)b->offset);
    }
    for (int i = 0; i < p->kernels.len; i++) {
        const LKernel *k = p->kernels.data[i];
        fprintf(out, "  kernel %s%s%s\n", k->name, k->what ? "  # " : "", k->what ? k->what : "");
        for (int j = 0; j < k->body.len; j++)
            dump_stmt(p, k->body.data[j], 0, out);
        if (k->allreduce)
            fprintf(out, "    allreduce_mean %s\n", p->bufs.data[k->allreduce_buf].name);
    }
}

/* ---------------------------------------------------------------------------
 * verify */

typedef struct VerifyCtx {
    const LProgram *p;
    const LKernel *k;
    char *defined;     /* per variable: defined and in scope */
    /* LB_PRIVATE ownership: the top-level loop being verified (NULL at the
     * top level) and, per buffer, the loop that used it first */
    const LStmt *top_loop;
    const LStmt **owner;
} VerifyCtx;

static void verify_buf(VerifyCtx *v, int buf) {
    ASSERT(buf >= 0 && buf < v->p->bufs.len);
    if (v->p->bufs.data[buf].kind != LB_PRIVATE)
        return;
    if (!v->top_loop)
        internal_error(__FILE__, __LINE__, "kernel %s: private buffer %s used outside a loop", v->k->name,
                       v->p->bufs.data[buf].name);
    if (!v->owner[buf])
        v->owner[buf] = v->top_loop;
    else if (v->owner[buf] != v->top_loop)
        internal_error(__FILE__, __LINE__, "kernel %s: private buffer %s used by two loops", v->k->name,
                       v->p->bufs.data[buf].name);
}

static void verify_expr(VerifyCtx *v, const LExpr *e) {
    ASSERT(e);
    switch (e->kind) {
    case LE_CONST:
        return;
    case LE_VAR:
        if (e->var < 0 || e->var >= v->k->vars.len || !v->defined[e->var])
            internal_error(__FILE__, __LINE__, "kernel %s: variable v%d used outside its scope", v->k->name, e->var);
        ASSERT(e->dtype == v->k->vars.data[e->var]);
        return;
    case LE_LOAD:
        verify_buf(v, e->buf);
        ASSERT(e->dtype == v->p->bufs.data[e->buf].dtype);
        ASSERT(e->index->dtype == DT_I64);
        verify_expr(v, e->index);
        if (e->valid) {
            ASSERT(e->valid->dtype == DT_BOOL);
            verify_expr(v, e->valid);
        }
        return;
    case LE_RAND:
        ASSERT(e->a[0] && e->a[0]->dtype == DT_I64);
        verify_expr(v, e->a[0]);
        return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            verify_expr(v, e->a[i]);
        return;
    }
}

static void verify_stmts(VerifyCtx *v, LStmt *const *body, int n, bool top) {
    int first_new = -1;
    for (int i = 0; i < n; i++) {
        const LStmt *s = body[i];
        switch (s->kind) {
        case LS_FOR: {
            ASSERT(s->extent >= 0);
            if (s->parallel && !top)
                internal_error(__FILE__, __LINE__, "kernel %s: parallel loop v%d is not at the top level", v->k->name, s->var);
            ASSERT(!v->defined[s->var]);
            char *saved = NULL;
            if (s->parallel) {
                /* a parallel body sees only what it defines itself */
                saved = xalloc((size_t)v->k->vars.len);
                memcpy(saved, v->defined, (size_t)v->k->vars.len);
                memset(v->defined, 0, (size_t)v->k->vars.len);
            }
            v->defined[s->var] = 1;
            if (top)
                v->top_loop = s;
            verify_stmts(v, s->body.data, s->body.len, false);
            if (top)
                v->top_loop = NULL;
            v->defined[s->var] = 0;
            if (saved)
                memcpy(v->defined, saved, (size_t)v->k->vars.len);
            break;
        }
        case LS_LET:
            verify_expr(v, s->value);
            ASSERT(!v->defined[s->var]);
            ASSERT(s->value->dtype == v->k->vars.data[s->var]);
            v->defined[s->var] = 1;
            if (first_new < 0)
                first_new = i;
            break;
        case LS_ASSIGN:
            verify_expr(v, s->value);
            ASSERT(v->defined[s->var]);
            ASSERT(s->value->dtype == v->k->vars.data[s->var]);
            break;
        case LS_STORE:
            verify_buf(v, s->buf);
            ASSERT(s->index->dtype == DT_I64);
            ASSERT(s->value->dtype == v->p->bufs.data[s->buf].dtype);
            verify_expr(v, s->index);
            verify_expr(v, s->value);
            break;
        case LS_GEMM: {
            const LGemm *g = &s->gemm;
            verify_buf(v, g->a_buf);
            verify_buf(v, g->b_buf);
            verify_buf(v, g->c_buf);
            DType dt = v->p->bufs.data[g->c_buf].dtype;
            ASSERT(dt == DT_F32 || dt == DT_F64);
            ASSERT(v->p->bufs.data[g->a_buf].dtype == dt && v->p->bufs.data[g->b_buf].dtype == dt);
            ASSERT(g->beta == 0 || g->beta == 1);
            verify_expr(v, g->a_off);
            verify_expr(v, g->b_off);
            verify_expr(v, g->c_off);
            if (g->b_im2col) {
                const LIm2col *ic = g->b_im2col;
                ASSERT(ic->c >= 0 && ic->kh > 0 && ic->kw > 0 && 2 * ic->pw == ic->kw - 1);
                ASSERT(ic->oh == ic->h + 2 * ic->ph - ic->kh + 1);
                ASSERT((g->trans_b ? g->n : g->k) == ic->c * ic->kh * ic->kw);
                ASSERT((g->trans_b ? g->k : g->n) <= ic->oh * ic->w);
                ASSERT(ic->p0 && ic->p0->dtype == DT_I64);
                verify_expr(v, ic->p0);
            }
            break;
        }
        }
    }
    /* lets go out of scope at the end of their block */
    if (first_new >= 0)
        for (int i = first_new; i < n; i++)
            if (body[i]->kind == LS_LET)
                v->defined[body[i]->var] = 0;
}

void loopir_verify(const LProgram *p) {
    for (int i = 0; i < p->bufs.len; i++) {
        const LBuf *b = &p->bufs.data[i];
        ASSERT(b->nelem >= 0);
        if (b->kind == LB_WORKSPACE) {
            ASSERT(b->offset % 64 == 0);
            ASSERT(b->offset + (uint64_t)b->nelem * (uint64_t)dtype_size(b->dtype) <= p->workspace_bytes);
        }
    }
    const LStmt **owner = xalloc(sizeof(LStmt *) * ((size_t)p->bufs.len + 1));
    for (int i = 0; i < p->kernels.len; i++) {
        VerifyCtx v = {.p = p, .k = p->kernels.data[i], .owner = owner};
        v.defined = xalloc((size_t)v.k->vars.len + 1);
        verify_stmts(&v, v.k->body.data, v.k->body.len, true);
    }
    /* the private buffers of each loop fit LOOPIR_PRIVATE_MAX_BYTES */
    for (int i = 0; i < p->bufs.len; i++) {
        if (!owner[i])
            continue;
        int64_t bytes = 0;
        for (int j = 0; j < p->bufs.len; j++)
            if (owner[j] == owner[i])
                bytes += p->bufs.data[j].nelem * dtype_size(p->bufs.data[j].dtype);
        if (bytes > LOOPIR_PRIVATE_MAX_BYTES)
            internal_error(__FILE__, __LINE__, "private buffers of one loop take %lld bytes (at most %lld)",
                           (long long)bytes, (long long)LOOPIR_PRIVATE_MAX_BYTES);
    }
}

/* ---------------------------------------------------------------------------
 * kernel keys: equal keys, equal code up to which buffers it runs on */

typedef struct KeyBuilder {
    const LProgram *p;
    LKernelKey *key;
    int *local;                        /* per program buffer: its local number, or -1 */
    PtrMap seen;                       /* expression -> 1 + its number */
    int n;                             /* expressions numbered so far */
} KeyBuilder;

static void key_word(KeyBuilder *kb, uint64_t w) { vec_push(&kb->key->words, w); }

static void key_buf(KeyBuilder *kb, int buf) {
    if (kb->local[buf] < 0) {
        const LBuf *bf = &kb->p->bufs.data[buf];
        kb->local[buf] = kb->key->bufs.len;
        vec_push(&kb->key->bufs, buf);
        /* what code generation reads of a buffer: kind (alignment, private
         * arrays), element type and size */
        key_word(kb, 0xB0F0000000000000ull | (uint64_t)bf->kind << 8 | (uint64_t)bf->dtype);
        key_word(kb, (uint64_t)bf->nelem);
    }
    key_word(kb, (uint64_t)kb->local[buf]);
}

/* Expressions are DAGs: a node seen before is written as a back reference,
 * so the key is linear in the number of nodes and records the sharing. */
static bool key_seen(KeyBuilder *kb, const LExpr *e, int *id) {
    void **slot = ptrmap_slot(&kb->seen, e);
    if (*slot) {
        *id = (int)((intptr_t)*slot - 1);
        return true;
    }
    *id = kb->n++;
    *slot = (void *)(intptr_t)(*id + 1);
    return false;
}

static void key_expr(KeyBuilder *kb, const LExpr *e) {
    int id;
    if (!e) {
        key_word(kb, 0xE0);
        return;
    }
    if (key_seen(kb, e, &id)) {
        key_word(kb, 0xE1);
        key_word(kb, (uint64_t)id);
        return;
    }
    key_word(kb, (uint64_t)e->kind << 8 | (uint64_t)e->dtype);
    switch (e->kind) {
    case LE_CONST: {
        uint64_t bits;
        memcpy(&bits, &e->cval, sizeof bits);
        key_word(kb, bits);
        key_word(kb, (uint64_t)e->ival);
        return;
    }
    case LE_VAR: key_word(kb, (uint64_t)e->var); return;
    case LE_LOAD:
        key_buf(kb, e->buf);
        key_expr(kb, e->index);
        key_expr(kb, e->valid);
        return;
    case LE_RAND:
        key_word(kb, (uint64_t)e->op);
        key_word(kb, e->stream);
        key_expr(kb, e->a[0]);
        return;
    case LE_OP:
        key_word(kb, (uint64_t)e->op);
        for (int i = 0; i < op_info[e->op].arity; i++)
            key_expr(kb, e->a[i]);
        return;
    }
}

static void key_double(KeyBuilder *kb, double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    key_word(kb, bits);
}

static void key_stmt(KeyBuilder *kb, const LStmt *s) {
    key_word(kb, 0x5000 | (uint64_t)s->kind);
    switch (s->kind) {
    case LS_FOR:
        key_word(kb, (uint64_t)s->var);
        key_word(kb, (uint64_t)s->extent);
        key_word(kb, (uint64_t)s->parallel << 32 | (uint64_t)s->body.len);
        for (int i = 0; i < s->body.len; i++)
            key_stmt(kb, s->body.data[i]);
        return;
    case LS_LET:
    case LS_ASSIGN:
        key_word(kb, (uint64_t)s->var);
        key_expr(kb, s->value);
        return;
    case LS_STORE:
        key_word(kb, (uint64_t)s->accumulate);
        key_buf(kb, s->buf);
        key_expr(kb, s->index);
        key_expr(kb, s->value);
        return;
    case LS_GEMM: {
        const LGemm *g = &s->gemm;
        key_word(kb, (uint64_t)g->trans_a << 1 | (uint64_t)g->trans_b);
        key_word(kb, (uint64_t)g->m);
        key_word(kb, (uint64_t)g->n);
        key_word(kb, (uint64_t)g->k);
        key_double(kb, g->alpha);
        key_double(kb, g->beta);
        key_buf(kb, g->a_buf);
        key_buf(kb, g->b_buf);
        key_buf(kb, g->c_buf);
        key_expr(kb, g->a_off);
        key_expr(kb, g->b_off);
        key_expr(kb, g->c_off);
        key_word(kb, (uint64_t)g->lda);
        key_word(kb, (uint64_t)g->ldb);
        key_word(kb, (uint64_t)g->ldc);
        const LIm2col *ic = g->b_im2col;
        key_word(kb, ic != NULL);
        if (ic) {
            const int64_t f[] = {ic->c, ic->h, ic->w, ic->kh, ic->kw, ic->ph, ic->pw, ic->oh};
            for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
                key_word(kb, (uint64_t)f[i]);
            key_expr(kb, ic->p0);
        }
        return;
    }
    }
}

LKernelKey lk_key(const LProgram *p, const LKernel *k) {
    LKernelKey key = {0};
    KeyBuilder kb = {.p = p, .key = &key};
    kb.local = xalloc(sizeof(int) * ((size_t)p->bufs.len + 1));
    for (int i = 0; i < p->bufs.len; i++)
        kb.local[i] = -1;
    key_word(&kb, (uint64_t)k->vars.len);
    for (int v = 0; v < k->vars.len; v++)
        key_word(&kb, (uint64_t)k->vars.data[v]);
    key_word(&kb, (uint64_t)k->body.len);
    for (int i = 0; i < k->body.len; i++)
        key_stmt(&kb, k->body.data[i]);
    if (k->allreduce) {   /* only then: other kernels keep their keys */
        key_word(&kb, 0xa11ull);
        key_buf(&kb, k->allreduce_buf);
    }
    key.hash = hash_bytes(key.words.data, sizeof(uint64_t) * (size_t)key.words.len, 0xcbf29ce484222325ull);
    return key;
}

bool lk_key_equal(const LKernelKey *a, const LKernelKey *b) {
    return a->hash == b->hash && a->words.len == b->words.len &&
           !memcmp(a->words.data, b->words.data, sizeof(uint64_t) * (size_t)a->words.len);
}
