/* backend_llvm.c: loop IR -> LLVM IR -> object, shared object, .ll or .s.
 *
 * Layout of the generated code, per program (one entry point):
 *
 *   i32 @<sym>.<entry>(ptr args, ptr workspace, ptr ctx)      internal, optnone
 *       per kernel a closure = alloca [n + 1 x ptr]: [0] = ctx, [1 + j] =
 *       base of the kernel's j-th buffer in the order of its key (args[arg]
 *       or workspace + offset); calls every kernel in order (timing each
 *       when the kernel profile is on, backend_llvm_abi.c); returns 0.
 *   void @<entry>.<kernel>(ptr closure)                 hidden, noinline
 *       one function per distinct kernel key (loopir.h's lk_key) in the
 *       whole module: equal layers, and the forward and backward passes
 *       that several entries share, are compiled once (a ResNet-18
 *       experiment's entries have mostly equal kernels, and LLVM's time
 *       grows with the code). It runs the kernel's top-level statements in order. Scalar statements
 *       and GEMMs run here; each top-level loop becomes an inner function:
 *   void @<kernel>.loopJ(ptr noalias b..., ptr ctx, i64 begin, i64 end,
 *                        ptr noalias slot...)          internal, alwaysinline
 *       one pointer per buffer the loop touches, noalias (distinct LBufs
 *       never overlap, loopir.h), so the vectorizer needs no overlap checks;
 *       serial loops also get pointers to the scalars of the kernel they read
 *       or update (reductions into a top-level accumulator). LB_PRIVATE
 *       buffers are 64-byte aligned arrays on its stack, one per call, i.e.
 *       per thread and chunk of iterations.
 *   void @<kernel>.taskJ(ptr closure, i64 begin, i64 end)  internal, noinline
 *       for a parallel loop: loads the pointers from the closure and calls
 *       the inner function on [begin, end); handed to ctx->parallel_for, or
 *       called directly on [0, n) when ctx->parallel_for is NULL. noinline so
 *       that the direct call does not duplicate the loop body.
 *
 * The closure lives on the entry's stack, so concurrent calls are safe.
 * Variables defined by LS_LET live in allocas (promoted by SROA); loop
 * variables are phis. GEMMs are generated code (backend_llvm_gemm.c), split
 * over ctx->parallel_for outside parallel loops, on the calling thread
 * inside them; only f32/f64 with both operands transposed call BLAS. The
 * descriptor tables and the kernel profile are in backend_llvm_abi.c, the
 * math and Philox helpers in llvm_math.c.
 */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "backend_llvm.h"
#include "lethe_abi.h"
#include "stage_time.h"

extern char **environ;

/* ---------------------------------------------------------------------------
 * shared helpers */

LLVMTypeRef ll_type(LL *ll, DType dt) {
    switch (dt) {
    case DT_BOOL: return ll->t_i1;
    case DT_I32: return ll->t_i32;
    case DT_F32: return ll->t_f32;
    case DT_F64: return ll->t_f64;
    case DT_I64: return ll->t_i64;
    }
    unreachable();
}

/* bool is one byte in memory, i1 in registers */
static LLVMTypeRef mem_type(LL *ll, DType dt) { return dt == DT_BOOL ? ll->t_i8 : ll_type(ll, dt); }

static bool is_float(DType dt) { return dt == DT_F32 || dt == DT_F64; }

static LLVMValueRef call_intrinsic_n(LL *ll, LLVMBuilderRef b, const char *name, LLVMTypeRef *tys, int ntys,
                                     LLVMValueRef *args, int nargs) {
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    if (!id)
        internal_error(__FILE__, __LINE__, "unknown LLVM intrinsic %s", name);
    LLVMValueRef fn = LLVMGetIntrinsicDeclaration(ll->mod, id, tys, (size_t)ntys);
    LLVMTypeRef fty = LLVMIntrinsicGetType(ll->ctx, id, tys, (size_t)ntys);
    return LLVMBuildCall2(b, fty, fn, args, (unsigned)nargs, "");
}

LLVMValueRef ll_call_intrinsic(LL *ll, LLVMBuilderRef b, const char *name, LLVMTypeRef overload, LLVMValueRef *args,
                               int nargs) {
    return call_intrinsic_n(ll, b, name, &overload, 1, args, nargs);
}

static unsigned attr_index(int param) { return param < 0 ? (unsigned)LLVMAttributeFunctionIndex : (unsigned)param + 1; }

void ll_param_attr(LL *ll, LLVMValueRef fn, int param, const char *attr, uint64_t val) {
    unsigned kind = LLVMGetEnumAttributeKindForName(attr, strlen(attr));
    if (!kind)
        internal_error(__FILE__, __LINE__, "unknown LLVM attribute %s", attr);
    LLVMAddAttributeAtIndex(fn, attr_index(param), LLVMCreateEnumAttribute(ll->ctx, kind, val));
}

void ll_fn_attr(LL *ll, LLVMValueRef fn, const char *attr) { ll_param_attr(ll, fn, -1, attr, 0); }

LLVMValueRef ll_new_function(LL *ll, const char *name, LLVMTypeRef fnty, bool internal) {
    LLVMValueRef fn = LLVMAddFunction(ll->mod, name, fnty);
    if (internal)
        LLVMSetLinkage(fn, LLVMInternalLinkage);
    ll_fn_attr(ll, fn, "nounwind");
    /* per-function target attributes make the .ll self-contained (llc, opt)
     * and let the inliner see that callers and callees agree */
    LLVMAddTargetDependentFunctionAttr(fn, "target-cpu", ll->cpu);
    if (ll->features[0])
        LLVMAddTargetDependentFunctionAttr(fn, "target-features", ll->features);
    LLVMAddTargetDependentFunctionAttr(fn, "no-trapping-math", "true");
    return fn;
}

static LLVMValueRef i64c(LL *ll, int64_t v) { return LLVMConstInt(ll->t_i64, (unsigned long long)v, 1); }
static LLVMValueRef i32c(LL *ll, int64_t v) { return LLVMConstInt(ll->t_i32, (unsigned long long)v, 1); }

/* field `off` bytes into a struct behind `base` */
static LLVMValueRef byte_gep(LL *ll, LLVMBuilderRef b, LLVMValueRef base, uint64_t off) {
    if (!off)
        return base;
    LLVMValueRef idx = i64c(ll, (int64_t)off);
    return LLVMBuildInBoundsGEP2(b, ll->t_i8, base, &idx, 1, "");
}

/* ---------------------------------------------------------------------------
 * what a statement touches */

typedef struct Uses {
    char *buf;      /* per program buffer */
    char *used;     /* per variable: read or assigned */
    char *def;      /* per variable: defined inside */
    bool rand;
    PtrMap seen;    /* expressions are DAGs (lowering shares index subtrees):
                     * visit each node once, or a chain of shared subtrees
                     * costs exponential time */
} Uses;

static Uses uses_new(const LProgram *p, const LKernel *k) {
    Uses u = {0};
    u.buf = xalloc((size_t)p->bufs.len + 1);
    u.used = xalloc((size_t)k->vars.len + 1);
    u.def = xalloc((size_t)k->vars.len + 1);
    return u;
}

/* true the first time e is seen */
static bool first_visit(Uses *u, const LExpr *e) {
    void **slot = ptrmap_slot(&u->seen, e);
    if (*slot)
        return false;
    *slot = (void *)1;
    return true;
}

static void uses_expr(Uses *u, const LExpr *e) {
    if (!e || !first_visit(u, e))
        return;
    switch (e->kind) {
    case LE_CONST: return;
    case LE_VAR: u->used[e->var] = 1; return;
    case LE_LOAD:
        u->buf[e->buf] = 1;
        uses_expr(u, e->index);
        uses_expr(u, e->valid);
        return;
    case LE_RAND: u->rand = true; uses_expr(u, e->a[0]); return;
    case LE_OP:
        for (int i = 0; i < op_info[e->op].arity; i++)
            uses_expr(u, e->a[i]);
        return;
    }
}

static void uses_stmt(Uses *u, const LStmt *s) {
    switch (s->kind) {
    case LS_FOR:
        u->def[s->var] = 1;
        for (int i = 0; i < s->body.len; i++)
            uses_stmt(u, s->body.data[i]);
        return;
    case LS_LET: u->def[s->var] = 1; uses_expr(u, s->value); return;
    case LS_ASSIGN: u->used[s->var] = 1; uses_expr(u, s->value); return;
    case LS_STORE: u->buf[s->buf] = 1; uses_expr(u, s->index); uses_expr(u, s->value); return;
    case LS_GEMM:
        u->buf[s->gemm.a_buf] = u->buf[s->gemm.b_buf] = u->buf[s->gemm.c_buf] = 1;
        uses_expr(u, s->gemm.a_off);
        uses_expr(u, s->gemm.b_off);
        uses_expr(u, s->gemm.c_off);
        if (s->gemm.b_im2col)
            uses_expr(u, s->gemm.b_im2col->p0);
        return;
    }
}

/* rough scalar work of one execution of a statement, for the grain size */
static double stmt_work(const LStmt *s) {
    if (s->kind == LS_GEMM)
        return 2.0 * (double)s->gemm.m * (double)s->gemm.n * (double)s->gemm.k;
    if (s->kind != LS_FOR)
        return 1;
    double w = 0;
    for (int i = 0; i < s->body.len; i++)
        w += stmt_work(s->body.data[i]);
    return w * (double)s->extent;
}

/* ---------------------------------------------------------------------------
 * kernel code generation */

typedef struct Memo { const LExpr *key; LLVMValueRef val; unsigned stamp; } Memo;

typedef struct KG {
    LL *ll;
    LLVMBuilderRef b;
    const LProgram *p;
    const LKernel *k;
    LLVMValueRef fn;
    LLVMBasicBlockRef entry;   /* allocas go here */
    LLVMValueRef *buf;         /* per buffer: its base pointer in fn, NULL if not passed */
    LLVMValueRef *slot;        /* per variable: the memory of a LET variable */
    LLVMValueRef *ival;        /* per variable: the phi of a loop variable */
    LLVMValueRef ctx, seed, step;
    bool in_parallel;          /* generating the body of a parallel loop */
    /* expression DAGs share subtrees; one statement's code is straight-line,
     * so values are reused within a statement (stamp = statement) */
    Memo *memo;
    unsigned memo_cap, memo_len, stamp;
} KG;

static const LLVMFastMathFlags FAST = LLVMFastMathAllowReassoc | LLVMFastMathNoSignedZeros |
                                      LLVMFastMathAllowReciprocal | LLVMFastMathAllowContract |
                                      LLVMFastMathApproxFunc;

static LLVMValueRef fmf(KG *g, LLVMValueRef v, LLVMFastMathFlags extra) {
    LLVMFastMathFlags f = (g->ll->opt->fast_math ? FAST : 0) | extra;
    /* operations on constants fold to constants, which carry no flags */
    if (f && LLVMIsAInstruction(v) && LLVMCanValueUseFastMathFlags(v))
        LLVMSetFastMathFlags(v, LLVMGetFastMathFlags(v) | f);
    return v;
}

static LLVMValueRef *memo_find(KG *g, const LExpr *e) {
    if (g->memo_len * 2 >= g->memo_cap) {
        unsigned old = g->memo_cap, cap = old ? 2 * old : 256;
        Memo *m = g->memo;
        g->memo = xalloc(cap * sizeof *m);
        g->memo_cap = cap;
        g->memo_len = 0;
        for (unsigned i = 0; i < old; i++)
            if (m[i].key && m[i].stamp == g->stamp)
                *memo_find(g, m[i].key) = m[i].val;
    }
    unsigned h = (unsigned)(((uintptr_t)e >> 4) * 2654435761u) & (g->memo_cap - 1);
    while (g->memo[h].key && g->memo[h].stamp == g->stamp && g->memo[h].key != e)
        h = (h + 1) & (g->memo_cap - 1);
    Memo *m = &g->memo[h];
    if (m->key != e || m->stamp != g->stamp) {
        m->key = e;
        m->val = NULL;
        m->stamp = g->stamp;
        g->memo_len++;
    }
    return &m->val;
}

static void next_stmt(KG *g) {
    g->stamp++;
    g->memo_len = 0;
}

static LLVMValueRef get_slot(KG *g, int var) {
    if (!g->slot[var]) {
        /* allocas at the top of the entry block, where SROA promotes them */
        LLVMBuilderRef b = LLVMCreateBuilderInContext(g->ll->ctx);
        LLVMValueRef first = LLVMGetFirstInstruction(g->entry);
        if (first)
            LLVMPositionBuilderBefore(b, first);
        else
            LLVMPositionBuilderAtEnd(b, g->entry);
        g->slot[var] = LLVMBuildAlloca(b, ll_type(g->ll, g->k->vars.data[var]), xfmt("v%d", var));
        LLVMDisposeBuilder(b);
    }
    return g->slot[var];
}

static unsigned elem_align(const LBuf *bf) {
    /* args are only promised 4-byte alignment (lethe_abi.h), the workspace
     * and its 64-byte aligned offsets more */
    unsigned size = (unsigned)dtype_size(bf->dtype);
    unsigned base = bf->kind == LB_ARG ? 4 : 64;
    return size < base ? size : base;
}

static LLVMValueRef gen_expr(KG *g, const LExpr *e);

static LLVMValueRef elem_ptr(KG *g, int buf, LLVMValueRef idx) {
    LLVMValueRef base = g->buf[buf];
    if (!base)
        internal_error(__FILE__, __LINE__, "kernel %s: buffer %d not passed to its function", g->k->name, buf);
    return LLVMBuildInBoundsGEP2(g->b, mem_type(g->ll, g->p->bufs.data[buf].dtype), base, &idx, 1, "");
}

static LLVMValueRef zero_of(LL *ll, DType dt) {
    return is_float(dt) ? LLVMConstReal(ll_type(ll, dt), 0) : LLVMConstInt(ll_type(ll, dt), 0, 0);
}

static LLVMValueRef gen_load(KG *g, const LExpr *e) {
    LL *ll = g->ll;
    const LBuf *bf = &g->p->bufs.data[e->buf];
    if (bf->nelem == 0)
        return zero_of(ll, e->dtype);   /* nothing to read: every index is invalid */
    LLVMValueRef idx = gen_expr(g, e->index), valid = NULL;
    if (e->valid) {
        /* never touch memory for an invalid index: load element 0 instead and
         * discard it, which keeps the loop free of branches */
        valid = gen_expr(g, e->valid);
        idx = LLVMBuildSelect(g->b, valid, idx, i64c(ll, 0), "");
    }
    LLVMValueRef v = LLVMBuildLoad2(g->b, mem_type(ll, bf->dtype), elem_ptr(g, e->buf, idx), "");
    LLVMSetAlignment(v, elem_align(bf));
    if (bf->dtype == DT_BOOL)
        v = LLVMBuildICmp(g->b, LLVMIntNE, v, LLVMConstInt(ll->t_i8, 0, 0), "");
    if (valid)
        v = LLVMBuildSelect(g->b, valid, v, zero_of(ll, e->dtype), "");
    return v;
}

static LLVMValueRef gen_cast(KG *g, LLVMValueRef v, DType from, DType to) {
    LL *ll = g->ll;
    LLVMBuilderRef b = g->b;
    LLVMTypeRef t = ll_type(ll, to);
    if (from == to)
        return v;
    if (to == DT_BOOL)   /* != 0, so NaN is true as in C */
        return is_float(from) ? LLVMBuildFCmp(b, LLVMRealUNE, v, zero_of(ll, from), "")
                              : LLVMBuildICmp(b, LLVMIntNE, v, zero_of(ll, from), "");
    if (from == DT_BOOL)
        return is_float(to) ? LLVMBuildUIToFP(b, v, t, "") : LLVMBuildZExt(b, v, t, "");
    if (is_float(from) && is_float(to))
        return to == DT_F64 ? LLVMBuildFPExt(b, v, t, "") : LLVMBuildFPTrunc(b, v, t, "");
    if (is_float(from)) {
        /* truncates like C, but saturates instead of being undefined out of range */
        LLVMTypeRef tys[2] = {t, ll_type(ll, from)};
        return call_intrinsic_n(ll, b, "llvm.fptosi.sat", tys, 2, &v, 1);
    }
    if (is_float(to))
        return LLVMBuildSIToFP(b, v, t, "");
    return to == DT_I64 ? LLVMBuildSExt(b, v, t, "") : LLVMBuildTrunc(b, v, t, "");
}

static LLVMValueRef fconst(KG *g, DType dt, double v) { return LLVMConstReal(ll_type(g->ll, dt), v); }

/* Integer arithmetic. I64 is index math: non-negative, no overflow, so nsw
 * and unsigned division. I32 is user data: wrapping, and a zero divisor (or
 * INT_MIN / -1) gives 0 instead of trapping. */
static LLVMValueRef int_arith(KG *g, Op op, DType dt, LLVMValueRef a, LLVMValueRef b) {
    LLVMBuilderRef B = g->b;
    LLVMValueRef r;
    switch (op) {
    case OP_ADD: r = LLVMBuildAdd(B, a, b, ""); break;
    case OP_SUB: r = LLVMBuildSub(B, a, b, ""); break;
    case OP_MUL: r = LLVMBuildMul(B, a, b, ""); break;
    case OP_DIV:
    case OP_MOD:
        if (dt == DT_I64)
            return op == OP_DIV ? LLVMBuildUDiv(B, a, b, "") : LLVMBuildURem(B, a, b, "");
        else {
            LLVMTypeRef t = LLVMTypeOf(a);
            LLVMValueRef zero = LLVMConstInt(t, 0, 0), one = LLVMConstInt(t, 1, 0);
            LLVMValueRef bz = LLVMBuildICmp(B, LLVMIntEQ, b, zero, "");
            LLVMValueRef ovf = LLVMBuildAnd(B, LLVMBuildICmp(B, LLVMIntEQ, a, LLVMConstInt(t, 1ull << 31, 0), ""),
                                            LLVMBuildICmp(B, LLVMIntEQ, b, LLVMConstAllOnes(t), ""), "");
            LLVMValueRef safe = LLVMBuildSelect(B, LLVMBuildOr(B, bz, ovf, ""), one, b, "");
            r = op == OP_DIV ? LLVMBuildSDiv(B, a, safe, "") : LLVMBuildSRem(B, a, safe, "");
            r = LLVMBuildSelect(B, ovf, op == OP_DIV ? a : zero, r, "");
            return LLVMBuildSelect(B, bz, zero, r, "");
        }
    default: unreachable();
    }
    if (dt == DT_I64 && LLVMIsAInstruction(r))
        LLVMSetNSW(r, 1);
    return r;
}

static LLVMValueRef float_arith(KG *g, Op op, LLVMValueRef a, LLVMValueRef b) {
    switch (op) {
    case OP_ADD: return fmf(g, LLVMBuildFAdd(g->b, a, b, ""), 0);
    case OP_SUB: return fmf(g, LLVMBuildFSub(g->b, a, b, ""), 0);
    case OP_MUL: return fmf(g, LLVMBuildFMul(g->b, a, b, ""), 0);
    case OP_DIV: return fmf(g, LLVMBuildFDiv(g->b, a, b, ""), 0);
    case OP_MOD: return fmf(g, LLVMBuildFRem(g->b, a, b, ""), 0);   /* fmod: truncated, like C */
    default: unreachable();
    }
}

/* op(a[, b]) for a (bool, int or float) dtype `dt` of the operands */
static LLVMValueRef arith(KG *g, Op op, DType dt, LLVMValueRef a, LLVMValueRef b) {
    if (is_float(dt))
        return float_arith(g, op, a, b);
    if (dt != DT_BOOL)
        return int_arith(g, op, dt, a, b);
    /* bool arithmetic: as 0/1 integers, then != 0 */
    LLVMValueRef r = int_arith(g, op, DT_I32, LLVMBuildZExt(g->b, a, g->ll->t_i32, ""), LLVMBuildZExt(g->b, b, g->ll->t_i32, ""));
    return LLVMBuildICmp(g->b, LLVMIntNE, r, i32c(g->ll, 0), "");
}

static LLVMValueRef compare(KG *g, Op op, DType dt, LLVMValueRef a, LLVMValueRef b) {
    /* floats: ordered, except != which is true for NaN (C); bool compares
     * as unsigned so that false < true */
    static const LLVMRealPredicate fp[] = {[OP_LT] = LLVMRealOLT, [OP_LE] = LLVMRealOLE, [OP_GT] = LLVMRealOGT,
                                           [OP_GE] = LLVMRealOGE, [OP_EQ] = LLVMRealOEQ, [OP_NE] = LLVMRealUNE};
    static const LLVMIntPredicate sp[] = {[OP_LT] = LLVMIntSLT, [OP_LE] = LLVMIntSLE, [OP_GT] = LLVMIntSGT,
                                          [OP_GE] = LLVMIntSGE, [OP_EQ] = LLVMIntEQ, [OP_NE] = LLVMIntNE};
    static const LLVMIntPredicate up[] = {[OP_LT] = LLVMIntULT, [OP_LE] = LLVMIntULE, [OP_GT] = LLVMIntUGT,
                                          [OP_GE] = LLVMIntUGE, [OP_EQ] = LLVMIntEQ, [OP_NE] = LLVMIntNE};
    if (is_float(dt))
        return LLVMBuildFCmp(g->b, fp[op], a, b, "");
    return LLVMBuildICmp(g->b, dt == DT_BOOL ? up[op] : sp[op], a, b, "");
}

/* x ** c for the integer constants worth a multiplication chain */
static LLVMValueRef pow_const(KG *g, DType dt, LLVMValueRef x, double c) {
    if (c != 1 && c != 2 && c != 3 && c != -1 && c != -2)
        return NULL;
    double n = fabs(c);
    LLVMValueRef r = x;
    for (int i = 1; i < (int)n; i++)
        r = float_arith(g, OP_MUL, r, x);
    return c < 0 ? float_arith(g, OP_DIV, fconst(g, dt, 1), r) : r;
}

static LLVMValueRef gen_op(KG *g, const LExpr *e, LLVMValueRef *v) {
    LL *ll = g->ll;
    LLVMBuilderRef b = g->b;
    DType dt = e->dtype;
    DType x = e->a[0]->dtype;   /* operand dtype */
    switch (e->op) {
    case OP_DETACH: return v[0];
    case OP_CAST: return gen_cast(g, v[0], x, dt);
    case OP_NEG:
        if (is_float(dt))
            return fmf(g, LLVMBuildFNeg(b, v[0], ""), 0);
        return dt == DT_BOOL ? v[0] : int_arith(g, OP_SUB, dt, zero_of(ll, dt), v[0]);
    case OP_EXP: return llm_call(ll, b, LM_EXP, dt, v[0], NULL);
    case OP_LOG: return llm_call(ll, b, LM_LOG, dt, v[0], NULL);
    case OP_TANH: return llm_call(ll, b, LM_TANH, dt, v[0], NULL);
    case OP_SQRT: return fmf(g, ll_call_intrinsic(ll, b, "llvm.sqrt", ll_type(ll, dt), v, 1), 0);
    case OP_RSQRT:
        return float_arith(g, OP_DIV, fconst(g, dt, 1), fmf(g, ll_call_intrinsic(ll, b, "llvm.sqrt", ll_type(ll, dt), v, 1), 0));
    case OP_SIGMOID: {
        LLVMValueRef ex = llm_call(ll, b, LM_EXP, dt, fmf(g, LLVMBuildFNeg(b, v[0], ""), 0), NULL);
        return float_arith(g, OP_DIV, fconst(g, dt, 1), float_arith(g, OP_ADD, fconst(g, dt, 1), ex));
    }
    case OP_GELU: {
        /* 0.5 x (1 + tanh(0.7978845608028654 (x + 0.044715 x^3))), in the
         * evaluation order of the C template in ops.def */
        LLVMValueRef x3 = float_arith(g, OP_MUL, float_arith(g, OP_MUL, float_arith(g, OP_MUL, fconst(g, dt, 0.044715), v[0]), v[0]), v[0]);
        LLVMValueRef in = float_arith(g, OP_MUL, fconst(g, dt, 0.7978845608028654), float_arith(g, OP_ADD, v[0], x3));
        LLVMValueRef t = float_arith(g, OP_ADD, fconst(g, dt, 1), llm_call(ll, b, LM_TANH, dt, in, NULL));
        return float_arith(g, OP_MUL, float_arith(g, OP_MUL, fconst(g, dt, 0.5), v[0]), t);
    }
    case OP_RELU:
        if (dt == DT_BOOL)
            return v[0];
        return LLVMBuildSelect(b, compare(g, OP_GT, dt, v[0], zero_of(ll, dt)), v[0], zero_of(ll, dt), "");
    case OP_ABS:
        if (is_float(dt))
            return ll_call_intrinsic(ll, b, "llvm.fabs", ll_type(ll, dt), v, 1);
        if (dt == DT_BOOL)
            return v[0];
        return LLVMBuildSelect(b, compare(g, OP_LT, dt, v[0], zero_of(ll, dt)), int_arith(g, OP_SUB, dt, zero_of(ll, dt), v[0]), v[0], "");
    case OP_SIGN: {
        if (dt == DT_BOOL)
            return v[0];
        LLVMValueRef one = is_float(dt) ? fconst(g, dt, 1) : LLVMConstInt(ll_type(ll, dt), 1, 0);
        LLVMValueRef mone = is_float(dt) ? fconst(g, dt, -1) : LLVMConstAllOnes(ll_type(ll, dt));
        LLVMValueRef z = zero_of(ll, dt);
        LLVMValueRef r = LLVMBuildSelect(b, compare(g, OP_LT, dt, v[0], z), mone, z, "");
        return LLVMBuildSelect(b, compare(g, OP_GT, dt, v[0], z), one, r, "");
    }
    case OP_NOT: return LLVMBuildNot(b, v[0], "");
    case OP_ADD: case OP_SUB: case OP_MUL: case OP_DIV: case OP_MOD:
        return arith(g, e->op, dt, v[0], v[1]);
    case OP_POW: {
        const LExpr *c = e->a[1];
        LLVMValueRef r = c->kind == LE_CONST ? pow_const(g, dt, v[0], c->cval) : NULL;
        return r ? r : llm_call(ll, b, LM_POW, dt, v[0], v[1]);
    }
    case OP_MAX: return LLVMBuildSelect(b, compare(g, OP_GT, dt, v[0], v[1]), v[0], v[1], "");
    case OP_MIN: return LLVMBuildSelect(b, compare(g, OP_LT, dt, v[0], v[1]), v[0], v[1], "");
    case OP_LT: case OP_LE: case OP_GT: case OP_GE: case OP_EQ: case OP_NE:
        return compare(g, e->op, x, v[0], v[1]);
    case OP_AND: return LLVMBuildAnd(b, v[0], v[1], "");
    case OP_OR: return LLVMBuildOr(b, v[0], v[1], "");
    case OP_WHERE: return LLVMBuildSelect(b, v[0], v[1], v[2], "");
    default:
        internal_error(__FILE__, __LINE__, "kernel %s: op %s in a loop-IR expression", g->k->name, op_info[e->op].name);
    }
}

static LLVMValueRef gen_expr(KG *g, const LExpr *e) {
    LLVMValueRef *m = memo_find(g, e);
    if (*m)
        return *m;
    LL *ll = g->ll;
    LLVMValueRef r = NULL;
    switch (e->kind) {
    case LE_CONST:
        r = is_float(e->dtype) ? fconst(g, e->dtype, e->cval) : LLVMConstInt(ll_type(ll, e->dtype), (unsigned long long)e->ival, 1);
        break;
    case LE_VAR:
        if (g->ival[e->var])
            r = g->ival[e->var];
        else if (g->slot[e->var])
            r = LLVMBuildLoad2(g->b, ll_type(ll, e->dtype), g->slot[e->var], "");
        else
            internal_error(__FILE__, __LINE__, "kernel %s: v%d used before its definition", g->k->name, e->var);
        break;
    case LE_LOAD: r = gen_load(g, e); break;
    case LE_RAND: {
        LLVMValueRef idx = gen_expr(g, e->a[0]);
        r = llm_rand(ll, g->b, e->op, e->dtype, g->seed, e->stream, g->step, idx);
        break;
    }
    case LE_OP: {
        LLVMValueRef v[3] = {0};
        for (int i = 0; i < op_info[e->op].arity; i++)
            v[i] = gen_expr(g, e->a[i]);
        r = gen_op(g, e, v);
        break;
    }
    }
    /* memo_find may have grown the table meanwhile */
    *memo_find(g, e) = r;
    return r;
}

/* ---------------------------------------------------------------------------
 * statements */

typedef struct Loop { LLVMValueRef iv; LLVMBasicBlockRef body, exit, pre; LLVMValueRef end; } Loop;

/* for iv in [begin, end): emits the guard and the header, leaves the builder
 * in the body; loop_close() adds the increment and the back edge */
static LLVMValueRef loop_open(KG *g, Loop *L, LLVMValueRef begin, LLVMValueRef end) {
    LL *ll = g->ll;
    L->pre = LLVMGetInsertBlock(g->b);
    L->body = LLVMAppendBasicBlockInContext(ll->ctx, g->fn, "loop");
    L->exit = LLVMAppendBasicBlockInContext(ll->ctx, g->fn, "after");
    L->end = end;
    bool known = LLVMIsAConstantInt(begin) && LLVMIsAConstantInt(end) &&
                 LLVMConstIntGetSExtValue(begin) < LLVMConstIntGetSExtValue(end);
    if (known)
        LLVMBuildBr(g->b, L->body);
    else
        LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, begin, end, ""), L->body, L->exit);
    LLVMPositionBuilderAtEnd(g->b, L->body);
    L->iv = LLVMBuildPhi(g->b, ll->t_i64, "i");
    LLVMAddIncoming(L->iv, &begin, &L->pre, 1);
    return L->iv;
}

static void loop_close(KG *g, Loop *L) {
    LLVMValueRef next = LLVMBuildNSWAdd(g->b, L->iv, i64c(g->ll, 1), "");
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(g->b);
    LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, next, L->end, ""), L->body, L->exit);
    LLVMAddIncoming(L->iv, &next, &latch, 1);
    LLVMPositionBuilderAtEnd(g->b, L->exit);
}

static void gen_stmt(KG *g, const LStmt *s);

static void gen_loop(KG *g, int var, LLVMValueRef begin, LLVMValueRef end, LStmt *const *body, int n) {
    Loop L;
    g->ival[var] = loop_open(g, &L, begin, end);
    for (int i = 0; i < n; i++)
        gen_stmt(g, body[i]);
    loop_close(g, &L);
    g->ival[var] = NULL;
}

/* acc = acc (+ | max | min) x: the reduction patterns the vectorizer must
 * be allowed to reorder (reassoc), or that it only widens as the
 * NaN-propagating llvm.maximum/minimum (no nnan flag needed) */
static LLVMValueRef gen_assign_value(KG *g, const LStmt *s) {
    const LExpr *e = s->value;
    if (e->kind != LE_OP || !is_float(e->dtype) || (e->op != OP_ADD && e->op != OP_MAX && e->op != OP_MIN))
        return gen_expr(g, e);
    bool acc0 = e->a[0]->kind == LE_VAR && e->a[0]->var == s->var;
    bool acc1 = e->a[1]->kind == LE_VAR && e->a[1]->var == s->var;
    if (!acc0 && !acc1)
        return gen_expr(g, e);
    LLVMValueRef a = gen_expr(g, e->a[0]), b = gen_expr(g, e->a[1]);
    if (e->op == OP_ADD)
        return fmf(g, LLVMBuildFAdd(g->b, a, b, ""), LLVMFastMathAllowReassoc | LLVMFastMathAllowContract);
    LLVMValueRef args[2] = {a, b};
    return ll_call_intrinsic(g->ll, g->b, e->op == OP_MAX ? "llvm.maximum" : "llvm.minimum", ll_type(g->ll, e->dtype), args, 2);
}

static void gen_gemm(KG *g, const LGemm *gm) {
    LL *ll = g->ll;
    DType dt = g->p->bufs.data[gm->c_buf].dtype;
    if (gm->m == 0 || gm->n == 0)
        return;
    /* OpenBLAS rejects (and only prints about) leading dimensions below the
     * row length; for k = 0 any positive one is fine (C = beta C) */
    int64_t need_a = gm->k ? (gm->trans_a ? gm->m : gm->k) : 1, need_b = gm->k ? (gm->trans_b ? gm->k : gm->n) : 1;
    if (gm->b_im2col)
        need_b = 0;   /* not a strided matrix */
    if (gm->lda < need_a || gm->ldb < need_b || gm->ldc < gm->n)
        internal_error(__FILE__, __LINE__, "kernel %s: GEMM leading dimensions %lld %lld %lld too small", g->k->name,
                       (long long)gm->lda, (long long)gm->ldb, (long long)gm->ldc);
    ASSERT(llg_supported(gm, dt) || !gm->b_im2col);
    if (llg_supported(gm, dt)) {
        /* inside a parallel loop the GEMM is one iteration's work */
        llg_emit(ll, g->b, gm, dt, elem_ptr(g, gm->a_buf, gen_expr(g, gm->a_off)), elem_ptr(g, gm->b_buf, gen_expr(g, gm->b_off)),
                 elem_ptr(g, gm->c_buf, gen_expr(g, gm->c_off)), gm->b_im2col ? gen_expr(g, gm->b_im2col->p0) : NULL,
                 g->in_parallel ? NULL : g->ctx);
        return;
    }
    const char *name = dt == DT_F32 ? "cblas_sgemm" : "cblas_dgemm";
    LLVMTypeRef ft = ll_type(ll, dt);
    LLVMTypeRef pt[14] = {ll->t_i32, ll->t_i32, ll->t_i32, ll->t_i32, ll->t_i32, ll->t_i32, ft,
                          ll->t_ptr, ll->t_i32, ll->t_ptr, ll->t_i32, ft, ll->t_ptr, ll->t_i32};
    LLVMTypeRef fty = LLVMFunctionType(ll->t_void, pt, 14, 0);
    LLVMValueRef fn = LLVMGetNamedFunction(ll->mod, name);
    if (!fn) {
        fn = LLVMAddFunction(ll->mod, name, fty);
        ll_fn_attr(ll, fn, "nounwind");
    }
    enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };   /* CBLAS enums */
    LLVMValueRef args[14] = {
        i32c(ll, ROW_MAJOR), i32c(ll, gm->trans_a ? TRANS : NO_TRANS), i32c(ll, gm->trans_b ? TRANS : NO_TRANS),
        i32c(ll, gm->m), i32c(ll, gm->n), i32c(ll, gm->k), LLVMConstReal(ft, gm->alpha),
        elem_ptr(g, gm->a_buf, gen_expr(g, gm->a_off)), i32c(ll, gm->lda > 0 ? gm->lda : 1),
        elem_ptr(g, gm->b_buf, gen_expr(g, gm->b_off)), i32c(ll, gm->ldb > 0 ? gm->ldb : 1),
        LLVMConstReal(ft, gm->beta), elem_ptr(g, gm->c_buf, gen_expr(g, gm->c_off)), i32c(ll, gm->ldc > 0 ? gm->ldc : 1),
    };
    LLVMBuildCall2(g->b, fty, fn, args, 14, "");
}

static void gen_stmt(KG *g, const LStmt *s) {
    LL *ll = g->ll;
    next_stmt(g);
    switch (s->kind) {
    case LS_FOR:
        gen_loop(g, s->var, i64c(ll, 0), i64c(ll, s->extent), s->body.data, s->body.len);
        return;
    case LS_LET:
        LLVMBuildStore(g->b, gen_expr(g, s->value), get_slot(g, s->var));
        return;
    case LS_ASSIGN:
        if (!g->slot[s->var])
            internal_error(__FILE__, __LINE__, "kernel %s: assignment to v%d before its let", g->k->name, s->var);
        LLVMBuildStore(g->b, gen_assign_value(g, s), g->slot[s->var]);
        return;
    case LS_STORE: {
        const LBuf *bf = &g->p->bufs.data[s->buf];
        LLVMValueRef ptr = elem_ptr(g, s->buf, gen_expr(g, s->index));
        LLVMValueRef v = gen_expr(g, s->value);
        if (s->accumulate) {
            LLVMValueRef old = LLVMBuildLoad2(g->b, mem_type(ll, bf->dtype), ptr, "");
            LLVMSetAlignment(old, elem_align(bf));
            if (bf->dtype == DT_BOOL)
                old = LLVMBuildICmp(g->b, LLVMIntNE, old, LLVMConstInt(ll->t_i8, 0, 0), "");
            v = arith(g, OP_ADD, bf->dtype, old, v);
        }
        if (bf->dtype == DT_BOOL)
            v = LLVMBuildZExt(g->b, v, ll->t_i8, "");
        LLVMSetAlignment(LLVMBuildStore(g->b, v, ptr), elem_align(bf));
        return;
    }
    case LS_GEMM:
        gen_gemm(g, &s->gemm);
        return;
    }
}

/* ---------------------------------------------------------------------------
 * functions of a kernel */

static KG kg_new(LL *ll, const LProgram *p, const LKernel *k, LLVMValueRef fn) {
    KG g = {.ll = ll, .p = p, .k = k, .fn = fn};
    g.buf = xalloc(sizeof(LLVMValueRef) * ((size_t)p->bufs.len + 1));
    g.slot = xalloc(sizeof(LLVMValueRef) * ((size_t)k->vars.len + 1));
    g.ival = xalloc(sizeof(LLVMValueRef) * ((size_t)k->vars.len + 1));
    g.entry = LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry");
    g.b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(g.b, g.entry);
    return g;
}

static void load_rand_state(KG *g) {
    LL *ll = g->ll;
    g->seed = LLVMBuildLoad2(g->b, ll->t_i64, byte_gep(ll, g->b, g->ctx, offsetof(lethe_ctx, seed)), "seed");
    g->step = LLVMBuildLoad2(g->b, ll->t_i64, byte_gep(ll, g->b, g->ctx, offsetof(lethe_ctx, counter)), "step");
}

static const char *sanitize(const char *s) {
    char *r = xstrdup(s);
    for (char *c = r; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.'))
            *c = '_';
    return r;
}

/* Is buffer i a parameter of the functions of a statement with uses u?
 * Private buffers are not: they are arrays of the loop function. */
static bool passed(const LProgram *p, const Uses *u, int i) { return u->buf[i] && p->bufs.data[i].kind != LB_PRIVATE; }

/* The inner function of top-level loop `s` (see the top of the file). */
static LLVMValueRef gen_loop_fn(LL *ll, const LProgram *p, const LKernel *k, const LStmt *s, const char *name,
                                const Uses *u, bool serial) {
    int nb = 0, nv = 0;
    for (int i = 0; i < p->bufs.len; i++)
        nb += passed(p, u, i);
    for (int v = 0; serial && v < k->vars.len; v++)
        nv += u->used[v] && !u->def[v];
    int np = nb + 3 + nv;
    LLVMTypeRef *pt = xalloc(sizeof(LLVMTypeRef) * (size_t)np);
    for (int i = 0; i < np; i++)
        pt[i] = ll->t_ptr;
    pt[nb + 1] = pt[nb + 2] = ll->t_i64;
    LLVMValueRef fn = ll_new_function(ll, name, LLVMFunctionType(ll->t_void, pt, (unsigned)np, 0), true);
    ll_fn_attr(ll, fn, "alwaysinline");
    KG g = kg_new(ll, p, k, fn);
    g.in_parallel = !serial;
    int pi = 0;
    for (int i = 0; i < p->bufs.len; i++) {
        if (!u->buf[i])
            continue;
        const LBuf *bf = &p->bufs.data[i];
        if (bf->kind == LB_PRIVATE) {
            /* one copy per call, i.e. per chunk of iterations and thread
             * (loopir.h); alwaysinline puts it in the entry block of the
             * task or kernel function, a static stack slot */
            LLVMTypeRef at = LLVMArrayType2(mem_type(ll, bf->dtype), (uint64_t)(bf->nelem ? bf->nelem : 1));
            g.buf[i] = LLVMBuildAlloca(g.b, at, bf->name ? bf->name : "private");
            LLVMSetAlignment(g.buf[i], 64);
            continue;
        }
        g.buf[i] = LLVMGetParam(fn, (unsigned)pi);
        LLVMSetValueName2(g.buf[i], bf->name ? bf->name : "buf", strlen(bf->name ? bf->name : "buf"));
        ll_param_attr(ll, fn, pi, "noalias", 0);
        ll_param_attr(ll, fn, pi, "nocapture", 0);
        ll_param_attr(ll, fn, pi, "align", bf->kind == LB_WORKSPACE ? 64 : elem_align(bf));
        if (bf->nelem > 0)
            ll_param_attr(ll, fn, pi, "dereferenceable", (uint64_t)bf->nelem * (uint64_t)dtype_size(bf->dtype));
        pi++;
    }
    g.ctx = LLVMGetParam(fn, (unsigned)nb);
    ll_param_attr(ll, fn, nb, "noalias", 0);
    ll_param_attr(ll, fn, nb, "nocapture", 0);
    ll_param_attr(ll, fn, nb, "readonly", 0);
    for (int v = 0, vi = nb + 3; serial && v < k->vars.len; v++)
        if (u->used[v] && !u->def[v]) {
            g.slot[v] = LLVMGetParam(fn, (unsigned)vi);
            ll_param_attr(ll, fn, vi, "noalias", 0);
            ll_param_attr(ll, fn, vi, "nocapture", 0);
            vi++;
        }
    if (u->rand)
        load_rand_state(&g);
    gen_loop(&g, s->var, LLVMGetParam(fn, (unsigned)nb + 1), LLVMGetParam(fn, (unsigned)nb + 2), s->body.data, s->body.len);
    LLVMBuildRetVoid(g.b);
    LLVMDisposeBuilder(g.b);
    return fn;
}

/* pointer i of a kernel's closure: 0 = ctx, then its buffers (gen_program) */
static LLVMValueRef closure_ptr(LL *ll, LLVMBuilderRef b, LLVMValueRef closure, int i) {
    LLVMValueRef idx = i64c(ll, i);
    LLVMValueRef p = LLVMBuildInBoundsGEP2(b, ll->t_ptr, closure, &idx, 1, "");
    return LLVMBuildLoad2(b, ll->t_ptr, p, "");
}

static LLVMValueRef gen_task(LL *ll, const LProgram *p, LLVMValueRef inner, const Uses *u, const int *slot,
                             const char *name) {
    LLVMTypeRef pt[3] = {ll->t_ptr, ll->t_i64, ll->t_i64};
    LLVMValueRef fn = ll_new_function(ll, name, LLVMFunctionType(ll->t_void, pt, 3, 0), true);
    ll_fn_attr(ll, fn, "noinline");
    LLVMBuilderRef b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry"));
    LLVMValueRef clo = LLVMGetParam(fn, 0);
    LLVMValueRef *args = xalloc(sizeof(LLVMValueRef) * ((size_t)p->bufs.len + 3));
    int n = 0;
    for (int i = 0; i < p->bufs.len; i++)
        if (passed(p, u, i))
            args[n++] = closure_ptr(ll, b, clo, slot[i]);
    args[n++] = closure_ptr(ll, b, clo, 0);
    args[n++] = LLVMGetParam(fn, 1);
    args[n++] = LLVMGetParam(fn, 2);
    LLVMBuildCall2(b, LLVMGlobalGetValueType(inner), inner, args, (unsigned)n, "");
    LLVMBuildRetVoid(b);
    LLVMDisposeBuilder(b);
    return fn;
}

/* void lethe.parallel(ctx, task, closure, n, grain): through the pool when
 * the caller installed one, else the whole range on this thread */
LLVMValueRef ll_parallel_helper(LL *ll) {
    LLVMValueRef fn = LLVMGetNamedFunction(ll->mod, "lethe.parallel");
    if (fn)
        return fn;
    LLVMTypeRef pt[5] = {ll->t_ptr, ll->t_ptr, ll->t_ptr, ll->t_i64, ll->t_i64};
    fn = ll_new_function(ll, "lethe.parallel", LLVMFunctionType(ll->t_void, pt, 5, 0), true);
    LLVMBuilderRef b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry");
    LLVMBasicBlockRef direct = LLVMAppendBasicBlockInContext(ll->ctx, fn, "direct");
    LLVMBasicBlockRef pool = LLVMAppendBasicBlockInContext(ll->ctx, fn, "pool");
    LLVMValueRef ctx = LLVMGetParam(fn, 0), task = LLVMGetParam(fn, 1), clo = LLVMGetParam(fn, 2);
    LLVMValueRef n = LLVMGetParam(fn, 3), grain = LLVMGetParam(fn, 4);
    LLVMPositionBuilderAtEnd(b, entry);
    LLVMValueRef pf = LLVMBuildLoad2(b, ll->t_ptr, byte_gep(ll, b, ctx, offsetof(lethe_ctx, parallel_for)), "");
    LLVMBuildCondBr(b, LLVMBuildIsNull(b, pf, ""), direct, pool);
    LLVMTypeRef tt[3] = {ll->t_ptr, ll->t_i64, ll->t_i64};
    LLVMPositionBuilderAtEnd(b, direct);
    LLVMValueRef targs[3] = {clo, i64c(ll, 0), n};
    LLVMBuildCall2(b, LLVMFunctionType(ll->t_void, tt, 3, 0), task, targs, 3, "");
    LLVMBuildRetVoid(b);
    LLVMPositionBuilderAtEnd(b, pool);
    LLVMValueRef pargs[5] = {ctx, task, clo, n, grain};
    LLVMBuildCall2(b, LLVMFunctionType(ll->t_void, pt, 5, 0), pf, pargs, 5, "");
    LLVMBuildRetVoid(b);
    LLVMDisposeBuilder(b);
    return fn;
}

/* if (ctx->allreduce) ctx->allreduce(ctx, data, nelem, dtype): the mean of
 * the buffer over data-parallel ranks, in place (loopir.h, LKernel). */
static void gen_allreduce(LL *ll, KG *g, const LBuf *bf, LLVMValueRef data) {
    LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(g->b));
    LLVMBasicBlockRef call = LLVMAppendBasicBlockInContext(ll->ctx, fn, "allreduce");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(ll->ctx, fn, "allreduce.done");
    LLVMValueRef hook = LLVMBuildLoad2(g->b, ll->t_ptr, byte_gep(ll, g->b, g->ctx, offsetof(lethe_ctx, allreduce)), "");
    LLVMBuildCondBr(g->b, LLVMBuildIsNull(g->b, hook, ""), done, call);
    LLVMPositionBuilderAtEnd(g->b, call);
    LLVMTypeRef pt[4] = {ll->t_ptr, ll->t_ptr, ll->t_i64, ll->t_i32};
    int32_t dt = bf->dtype == DT_F64 ? LETHE_F64 : LETHE_F32;
    LLVMValueRef args[4] = {g->ctx, data, i64c(ll, bf->nelem), i32c(ll, dt)};
    LLVMBuildCall2(g->b, LLVMFunctionType(ll->t_void, pt, 4, 0), hook, args, 4, "");
    LLVMBuildBr(g->b, done);
    LLVMPositionBuilderAtEnd(g->b, done);
}

/* The function of kernel k; its closure holds ctx and, at slot[i], the base
 * of each buffer i it passes on. */
static LLVMValueRef gen_kernel(LL *ll, const LProgram *p, const LKernel *k, const int *slot, const char *prefix) {
    const char *kname = xfmt("%s.%s", prefix, sanitize(k->name));
    LLVMTypeRef pt = ll->t_ptr;
    /* a hidden global, never inlined: the same machine code whether the
     * kernel shares the entries' module or has a partition of its own
     * (backend_llvm_split.c), since LLVM can neither inline it nor rewrite
     * its signature; the work is in its tasks and GEMMs, a call per kernel
     * and step is noise */
    LLVMValueRef fn = ll_new_function(ll, kname, LLVMFunctionType(ll->t_void, &pt, 1, 0), false);
    LLVMSetVisibility(fn, LLVMHiddenVisibility);
    ll_fn_attr(ll, fn, "noinline");
    KG g = kg_new(ll, p, k, fn);
    LLVMValueRef clo = LLVMGetParam(fn, 0);
    Uses all = uses_new(p, k);
    for (int i = 0; i < k->body.len; i++)
        uses_stmt(&all, k->body.data[i]);
    g.ctx = closure_ptr(ll, g.b, clo, 0);
    for (int i = 0; i < p->bufs.len; i++)
        if (passed(p, &all, i))
            g.buf[i] = closure_ptr(ll, g.b, clo, slot[i]);
    bool top_rand = false;
    for (int i = 0; i < k->body.len; i++)
        if (k->body.data[i]->kind != LS_FOR) {
            Uses u = uses_new(p, k);
            uses_stmt(&u, k->body.data[i]);
            top_rand |= u.rand;
        }
    if (top_rand)
        load_rand_state(&g);
    for (int i = 0; i < k->body.len; i++) {
        const LStmt *s = k->body.data[i];
        if (s->kind != LS_FOR) {
            gen_stmt(&g, s);
            continue;
        }
        if (s->extent == 0)
            continue;
        Uses u = uses_new(p, k);
        uses_stmt(&u, s);
        if (s->parallel) {
            LLVMValueRef inner = gen_loop_fn(ll, p, k, s, xfmt("%s.loop%d", kname, i), &u, false);
            LLVMValueRef task = gen_task(ll, p, inner, &u, slot, xfmt("%s.task%d", kname, i));
            double per_iter = stmt_work(s) / (double)s->extent;
            int64_t grain = per_iter >= 4096 ? 1 : (int64_t)(4096 / per_iter);
            LLVMValueRef args[5] = {g.ctx, task, clo, i64c(ll, s->extent), i64c(ll, grain)};
            LLVMValueRef helper = ll_parallel_helper(ll);
            LLVMBuildCall2(g.b, LLVMGlobalGetValueType(helper), helper, args, 5, "");
        } else {
            LLVMValueRef inner = gen_loop_fn(ll, p, k, s, xfmt("%s.loop%d", kname, i), &u, true);
            LLVMValueRef *args = xalloc(sizeof(LLVMValueRef) * ((size_t)p->bufs.len + (size_t)k->vars.len + 3));
            int n = 0;
            for (int b = 0; b < p->bufs.len; b++)
                if (passed(p, &u, b))
                    args[n++] = g.buf[b];
            args[n++] = g.ctx;
            args[n++] = i64c(ll, 0);
            args[n++] = i64c(ll, s->extent);
            for (int v = 0; v < k->vars.len; v++)
                if (u.used[v] && !u.def[v]) {
                    if (!g.slot[v])
                        internal_error(__FILE__, __LINE__, "kernel %s: loop reads v%d before its let", k->name, v);
                    args[n++] = g.slot[v];
                }
            LLVMBuildCall2(g.b, LLVMGlobalGetValueType(inner), inner, args, (unsigned)n, "");
        }
    }
    if (k->allreduce)
        gen_allreduce(ll, &g, &p->bufs.data[k->allreduce_buf], g.buf[k->allreduce_buf]);
    LLVMBuildRetVoid(g.b);
    LLVMDisposeBuilder(g.b);
    return fn;
}

/* The function of kernel k of p (in whichever module defines it): one
 * already emitted for a kernel with the same key (another layer or
 * program), else a new one. Sets slot[i] to the
 * closure slot of each program buffer i the kernel's closure holds (0: none)
 * and *key_out to the kernel's key. */
static LLVMValueRef kernel_fn(LL *ll, const LProgram *p, const LKernel *k, const char *prefix, int *slot,
                              LKernelKey *key_out) {
    LKernelKey key = lk_key(p, k);
    memset(slot, 0, sizeof(int) * (size_t)p->bufs.len);
    int n = 0;
    for (int j = 0; j < key.bufs.len; j++)
        if (p->bufs.data[key.bufs.data[j]].kind != LB_PRIVATE)
            slot[key.bufs.data[j]] = 1 + n++;
    *key_out = key;
    for (int i = 0; i < ll->kernel_keys.len; i++)
        if (lk_key_equal(&ll->kernel_keys.data[i], &key))
            return ll->kernel_fns.data[i];
    LL *dest = ll->split ? llsplit_pick(ll, p, k) : ll;
    LLVMValueRef fn = gen_kernel(dest, p, k, slot, prefix);
    if (dest != ll)
        llsplit_export(ll, dest, fn, LLVMFunctionType(ll->t_void, &ll->t_ptr, 1, 0));
    vec_push(&ll->kernel_keys, key);
    vec_push(&ll->kernel_fns, fn);
    return fn;
}

/* i32 entry(ptr args, ptr workspace, ptr ctx) of one program, built in
 * top's module or (split) in a partition; returns it in top's module */
static LLVMValueRef gen_program(LL *top, const LProgram *p, int index, const char *symbol) {
    LL *ll = top->split ? llsplit_pick(top, p, NULL) : top;
    const char *prefix = xfmt("%s.%s", symbol, sanitize(p->entry->name));
    LLVMTypeRef pt[3] = {ll->t_ptr, ll->t_ptr, ll->t_ptr};
    LLVMValueRef fn = ll_new_function(ll, prefix, LLVMFunctionType(ll->t_i32, pt, 3, 0), true);
    /* The entry is glue: straight-line closure stores and a call per kernel,
     * run once per call of the entry. Optimising it bought nothing at run
     * time but cost a fifth of lethec's time on a ResNet-18 experiment (the
     * SLP vectorizer and DSE over hundreds of stores and calls in one
     * function; bench/RESULTS.md "Compile time"), so it is left as built. */
    ll_fn_attr(ll, fn, "noinline");
    ll_fn_attr(ll, fn, "optnone");
    LLVMValueRef *kfn = xalloc(sizeof(LLVMValueRef) * ((size_t)p->kernels.len + 1));
    LLVMValueRef *clo = xalloc(sizeof(LLVMValueRef) * ((size_t)p->kernels.len + 1));
    int *slot = xalloc(sizeof(int) * ((size_t)p->bufs.len + 1));
    LLVMBuilderRef b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry"));
    LLVMValueRef args = LLVMGetParam(fn, 0), ws = LLVMGetParam(fn, 1), ctx = LLVMGetParam(fn, 2);
    LLVMValueRef *base = xalloc(sizeof(LLVMValueRef) * ((size_t)p->bufs.len + 1));
    for (int i = 0; i < p->bufs.len; i++) {
        const LBuf *bf = &p->bufs.data[i];
        if (bf->kind == LB_ARG) {
            ASSERT(bf->arg >= 0 && bf->arg < p->entry->args.len);
            base[i] = closure_ptr(ll, b, args, bf->arg);
        } else if (bf->kind == LB_WORKSPACE) {
            base[i] = byte_gep(ll, b, ws, bf->offset);
        }
    }
    /* one closure per kernel call: ctx, then the kernel's buffers in the
     * order of its key, so that equal kernels share one function */
    for (int i = 0; i < p->kernels.len; i++) {
        LKernelKey key;
        kfn[i] = ll_function_in(ll, kernel_fn(top, p, p->kernels.data[i], prefix, slot, &key),
                                LLVMFunctionType(ll->t_void, &ll->t_ptr, 1, 0));
        int n = 0;
        for (int j = 0; j < key.bufs.len; j++)
            n += p->bufs.data[key.bufs.data[j]].kind != LB_PRIVATE;
        clo[i] = LLVMBuildArrayAlloca(b, ll->t_ptr, i64c(ll, n + 1), "closure");
        LLVMBuildStore(b, ctx, clo[i]);
        for (int j = 0; j < key.bufs.len; j++) {
            int bi = key.bufs.data[j];
            if (!slot[bi])
                continue;
            LLVMValueRef idx = i64c(ll, slot[bi]);
            LLVMBuildStore(b, base[bi], LLVMBuildInBoundsGEP2(b, ll->t_ptr, clo[i], &idx, 1, ""));
        }
    }
    ll_profile_calls(top, ll, b, index, kfn, p->kernels.len, clo);
    LLVMBuildRet(b, i32c(ll, 0));
    LLVMDisposeBuilder(b);
    if (ll != top)
        fn = llsplit_export(top, ll, fn, LLVMFunctionType(top->t_i32, (LLVMTypeRef[]){top->t_ptr, top->t_ptr, top->t_ptr}, 3, 0));
    return fn;
}

/* User-facing limits, checked before any LLVM object exists so that the
 * error needs no cleanup. */
static void check_stmt_limits(const LKernel *k, const LStmt *s) {
    if (s->kind == LS_FOR)
        for (int i = 0; i < s->body.len; i++)
            check_stmt_limits(k, s->body.data[i]);
    if (s->kind != LS_GEMM)
        return;
    const LGemm *gm = &s->gemm;
    if (gm->m > INT32_MAX || gm->n > INT32_MAX || gm->k > INT32_MAX || gm->lda > INT32_MAX || gm->ldb > INT32_MAX ||
        gm->ldc > INT32_MAX)
        error_noloc("kernel %s: a %lldx%lldx%lld matrix product is too large for OpenBLAS's 32-bit interface\n"
                    "---> HINT: split the batch or the layer into smaller matrices",
                    k->name, (long long)gm->m, (long long)gm->n, (long long)gm->k);
}

/* ---------------------------------------------------------------------------
 * target, passes, output */

/* LLVM reports codegen problems through the context's diagnostic handler;
 * the errors are kept and reported once the LLVM objects are gone. */
static void diag_handler(LLVMDiagnosticInfoRef di, void *arg) {
    char **errs = arg;
    if (LLVMGetDiagInfoSeverity(di) != LLVMDSError)
        return;
    /* malloc, not the arena: partition modules are code-generated on worker
     * threads (backend_llvm_split.c); each context has its own *errs */
    char *msg = LLVMGetDiagInfoDescription(di), *joined = NULL;
    if (asprintf(&joined, "%s%s%s", *errs ? *errs : "", *errs ? "; " : "", msg) < 0)
        joined = NULL;
    free(*errs);
    *errs = joined;
    LLVMDisposeMessage(msg);
}

void ll_dispose(LL *ll) {
    if (ll->mod)
        LLVMDisposeModule(ll->mod);
    if (ll->td)
        LLVMDisposeTargetData(ll->td);
    if (ll->tm)
        LLVMDisposeTargetMachine(ll->tm);
    if (ll->ctx)
        LLVMContextDispose(ll->ctx);
    if (ll->triple)
        LLVMDisposeMessage(ll->triple);
    if (ll->cpu)
        LLVMDisposeMessage(ll->cpu);
    if (ll->features)
        LLVMDisposeMessage(ll->features);
    memset(ll, 0, sizeof *ll);
}

bool ll_init(LL *ll, const BackendOptions *opt, const char *module_name, char **errs, char **err) {
    static bool initialized;
    if (!initialized) {
        LLVMInitializeNativeTarget();
        LLVMInitializeNativeAsmPrinter();
        initialized = true;
    }
    ll->opt = opt;
    ll->triple = LLVMGetDefaultTargetTriple();
    /* LLVM-owned copies, so that every string in LL is freed one way */
    ll->cpu = opt->cpu ? LLVMCreateMessage(opt->cpu) : LLVMGetHostCPUName();
    ll->features = opt->features ? LLVMCreateMessage(opt->features)
                   : opt->cpu    ? LLVMCreateMessage("")
                                 : LLVMGetHostCPUFeatures();
    LLVMTargetRef target;
    char *msg = NULL;
    if (LLVMGetTargetFromTriple(ll->triple, &target, &msg)) {
        *err = xfmt("no LLVM target for %s: %s", ll->triple, msg);
        LLVMDisposeMessage(msg);
        return false;
    }
    static const LLVMCodeGenOptLevel levels[] = {LLVMCodeGenLevelNone, LLVMCodeGenLevelLess, LLVMCodeGenLevelDefault,
                                                 LLVMCodeGenLevelAggressive};
    ll->tm = LLVMCreateTargetMachine(target, ll->triple, ll->cpu, ll->features, levels[opt->opt_level], LLVMRelocPIC,
                                     LLVMCodeModelDefault);
    if (!ll->tm) {
        *err = xfmt("cannot create an LLVM target machine for %s, cpu %s", ll->triple, ll->cpu);
        return false;
    }
    ll->ctx = LLVMContextCreate();
    LLVMContextSetDiagnosticHandler(ll->ctx, diag_handler, errs);
    ll->mod = LLVMModuleCreateWithNameInContext(module_name, ll->ctx);
    LLVMSetTarget(ll->mod, ll->triple);
    ll->td = LLVMCreateTargetDataLayout(ll->tm);
    LLVMSetModuleDataLayout(ll->mod, ll->td);
    ll->t_void = LLVMVoidTypeInContext(ll->ctx);
    ll->t_i1 = LLVMInt1TypeInContext(ll->ctx);
    ll->t_i8 = LLVMInt8TypeInContext(ll->ctx);
    ll->t_i32 = LLVMInt32TypeInContext(ll->ctx);
    ll->t_i64 = LLVMInt64TypeInContext(ll->ctx);
    ll->t_f32 = LLVMFloatTypeInContext(ll->ctx);
    ll->t_f64 = LLVMDoubleTypeInContext(ll->ctx);
    ll->t_ptr = LLVMPointerTypeInContext(ll->ctx, 0);
    return true;
}

char *ll_run_passes(LL *ll) {
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    /* SLP vectorization is off in LLVMCreatePassBuilderOptions' defaults
     * (unlike opt and clang at -O2+) */
    LLVMPassBuilderOptionsSetLoopVectorization(po, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(po, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(po, 1);
    LLVMPassBuilderOptionsSetLoopInterleaving(po, 1);
    char pipeline[32];
    snprintf(pipeline, sizeof pipeline, "default<O%d>", ll->opt->opt_level);
    LLVMErrorRef e = LLVMRunPasses(ll->mod, pipeline, ll->tm, po);
    LLVMDisposePassBuilderOptions(po);
    if (!e)
        return NULL;
    char *m = LLVMGetErrorMessage(e), *why = NULL;
    if (asprintf(&why, "LLVM pass pipeline %s failed: %s", pipeline, m) < 0)
        why = NULL;
    LLVMDisposeErrorMessage(m);
    return why ? why : strdup("LLVM pass pipeline failed");
}

/* the object in memory, then ll_link_objects (`cc -shared`) */
static char *emit_so(LL *ll, const char *out_path, char **hint) {
    char *msg = NULL;
    LLVMMemoryBufferRef mb;
    stage_push(ST_CODEGEN);
    LLVMBool failed = LLVMTargetMachineEmitToMemoryBuffer(ll->tm, ll->mod, LLVMObjectFile, &msg, &mb);
    stage_pop();
    if (failed) {
        char *err = xfmt("cannot generate code: %s", msg);
        LLVMDisposeMessage(msg);
        return err;
    }
    char *err = ll_link_objects(&mb, 1, EMIT_SO, out_path, hint);
    LLVMDisposeMemoryBuffer(mb);
    return err;
}

char *ll_emit_output(LL *ll, EmitKind kind, const char *out_path, char **hint) {
    char *msg = NULL, *err = NULL;
    switch (kind) {
    case EMIT_LL:
        if (LLVMPrintModuleToFile(ll->mod, out_path, &msg))
            err = xfmt("cannot write %s: %s", out_path, msg);
        break;
    case EMIT_OBJ:
    case EMIT_ASM: {
        char *path = xstrdup(out_path);
        stage_push(ST_CODEGEN);
        if (LLVMTargetMachineEmitToFile(ll->tm, ll->mod, path, kind == EMIT_OBJ ? LLVMObjectFile : LLVMAssemblyFile, &msg))
            err = xfmt("cannot write %s: %s", out_path, msg);
        stage_pop();
        break;
    }
    case EMIT_SO:
        return emit_so(ll, out_path, hint);
    case EMIT_HEADER:
    case EMIT_CU:
        unreachable();
    }
    if (msg)
        LLVMDisposeMessage(msg);
    return err;
}

void ll_verify(LL *ll) {
    char *msg = NULL;
    stage_push(ST_IR_VERIFY);
    LLVMBool broken = LLVMVerifyModule(ll->mod, LLVMReturnStatusAction, &msg);
    stage_pop();
    if (broken) {
        fprintf(stderr, "%s", msg);
        LLVMDumpModule(ll->mod);
        internal_error(__FILE__, __LINE__, "the generated LLVM module does not verify: %s", msg);
    }
    LLVMDisposeMessage(msg);
}

void llvm_emit(const CompUnit *cu, LProgram **progs, int nprogs, EmitKind kind, const char *out_path,
               const BackendOptions *opt_in) {
    BackendOptions opt = {.opt_level = 3};
    if (opt_in)
        opt = *opt_in;
    if (opt.opt_level < 0 || opt.opt_level > 3)
        error_noloc("optimization level %d is out of range (0 to 3)", opt.opt_level);
    const char *symbol = opt.program_symbol ? opt.program_symbol : LETHE_PROGRAM_SYMBOL;
    if (kind == EMIT_HEADER) {
        emit_header(cu, progs, nprogs, out_path, symbol);
        return;
    }
    for (int i = 0; i < nprogs; i++) {
        loopir_verify(progs[i]);
        for (int k = 0; k < progs[i]->kernels.len; k++)
            for (int j = 0; j < progs[i]->kernels.data[k]->body.len; j++)
                check_stmt_limits(progs[i]->kernels.data[k], progs[i]->kernels.data[k]->body.data[j]);
    }

    /* kernels in partition modules compiled in parallel, unless the output
     * is one module's text or the IR dump wants the whole module */
    int nsplit = opt.split_modules > 0 ? opt.split_modules : LL_DEFAULT_SPLIT;
    if ((kind != EMIT_OBJ && kind != EMIT_SO) || (dump_flags & DUMP_IR))
        nsplit = 1;
    LL ll = {0};
    char *diag_errs = NULL, *err = NULL, *hint = NULL;
    if (!ll_init(&ll, &opt, "lethe", &diag_errs, &err) || (nsplit > 1 && !llsplit_begin(&ll, nsplit, &err))) {
        ll_dispose(&ll);
        error_noloc("%s", err);
    }
    LLVMValueRef *entry_fns = xalloc(sizeof(LLVMValueRef) * ((size_t)nprogs + 1));
    stage_push(ST_IR_BUILD);
    ll_profile_begin(&ll, symbol);
    for (int i = 0; i < nprogs; i++)
        entry_fns[i] = gen_program(&ll, progs[i], i, sanitize(symbol));
    ll_profile_end(&ll, progs, nprogs);
    ll_emit_descriptor(&ll, cu, progs, nprogs, entry_fns, symbol);
    stage_pop();

    ll_verify(&ll);
    if (ll.split) {
        err = llsplit_finish(&ll, opt.jobs, kind, out_path, &hint);
    } else {
        stage_push(ST_LLVM_OPT);
        err = ll_run_passes(&ll);
        stage_pop();
        if (err)
            internal_error(__FILE__, __LINE__, "%s", err);
        if (dump_flags & DUMP_IR) {
            char *ir = LLVMPrintModuleToString(ll.mod);
            fputs(ir, dump_file ? dump_file : stderr);
            LLVMDisposeMessage(ir);
        }
        err = ll_emit_output(&ll, kind, out_path, &hint);
    }
    if (!err && diag_errs)
        err = xfmt("LLVM: %s", diag_errs);
    free(diag_errs);
    ll_dispose(&ll);
    if (err) {
        if (hint)
            error_noloc("%s\n---> HINT: %s", err, hint);
        error_noloc("%s", err);
    }
}
