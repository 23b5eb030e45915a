/* lower.c: fused kernels -> loop IR (lower_entry is the entry point).
 *
 * A kernel's value is built by lower_eval(): ELEM nodes become LE_OP trees,
 * VIEW nodes push themselves on a stack of pending views, and at a leaf the
 * stack is composed into one index map (lower_view.c), which becomes an
 * LE_LOAD with a `valid` predicate (buffers), an LE_RAND at the leaf's own
 * row-major element index (RAND), an index expression (IOTA) or a constant.
 * A node evaluated twice at the same index (same view stack) is a LET.
 *
 * Loop shapes, chosen for LLVM's vectorizer and the 2-core thread pool:
 *  - The root's index space is first simplified: size-1 dims go, and adjacent
 *    dims merge when every leaf's map (and the store) is linear across them,
 *    so a contiguous [B, T, C] elementwise kernel is one flat loop.
 *  - Elementwise: one outer loop over the flattened leading dims, parallel
 *    when the kernel has at least LowerOptions.parallel_min_work scalar ops,
 *    indices recovered with div/mod once per row, and an inner serial loop
 *    over the last (contiguous) dim holding the body. A leaf read across
 *    that dim (a transpose) gets T x T tiles instead (tile_transposed). A
 *    kernel with several roots (fused sibling updates) computes every root
 *    into a LET before the first store.
 *  - Reductions whose last dim is reduced ("rows": softmax, layernorm,
 *    logsumexp): the kept dims are the outer loop, the reduced dims nested
 *    serial loops with the last one innermost, a LET accumulator, one store.
 *    A kernel of sibling reductions (fusion.c) has an accumulator and a
 *    store per reduction in the same loops.
 *    A full reduction of a large tensor is split: a parallel loop writes
 *    partials of the first reduced dim into a scratch buffer, a serial loop
 *    combines them.
 *  - Reductions whose last dim is kept ("columns": sum over the batch, BN
 *    statistics over N of [N, C]): the outer loop runs over the kept dims
 *    before the trailing kept block, the output row is initialised, then the
 *    reduced dims run serially around an inner loop along the contiguous kept
 *    block that accumulates into the output. With no outer kept dim, the
 *    kept block is tiled so that the tiles can run in parallel.
 */
#include <math.h>
#include <string.h>

#include "lower_int.h"
#include "stage_time.h"

enum { ROLE_KEPT, ROLE_RED, ROLE_PART };

LExpr *iconst(int64_t v) { return le_const_i(DT_I64, v); }
LExpr *iadd(LExpr *a, LExpr *b) { return le_op2(OP_ADD, DT_I64, a, b); }
LExpr *imul(LExpr *a, int64_t b) { return le_op2(OP_MUL, DT_I64, a, iconst(b)); }

LExpr *band(LExpr *a, LExpr *b) {
    if (!a)
        return b;
    if (!b)
        return a;
    return le_op2(OP_AND, DT_BOOL, a, b);
}

static LExpr *zero_of(DType dt) { return le_const_f(dt, 0); }

static LExpr *where0(LExpr *valid, LExpr *v) {
    if (!valid)
        return v;
    return le_op3(OP_WHERE, v->dtype, valid, v, zero_of(v->dtype));
}

static int64_t prod(const int64_t *d, int n) {
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        p *= d[i];
    return p;
}

/* ----------------------------------------------------------------------------
 * buffers */

static int fbuf_lbuf(Lower *L, FBuf *b) {
    if (b->lbuf >= 0)
        return b->lbuf;
    LBuf lb = {0};
    if (b->arg >= 0) {
        /* one LBuf per argument, shared by every FBuf naming it */
        for (int i = 0; i < L->p->bufs.len; i++)
            if (L->p->bufs.data[i].kind == LB_ARG && L->p->bufs.data[i].arg == b->arg)
                return b->lbuf = i;
        const EntryArg *a = &L->f->e->args.data[b->arg];
        lb.kind = LB_ARG;
        lb.arg = b->arg;
        lb.dtype = a->dtype;
        lb.nelem = shape_numel(a->shape);
        lb.name = a->name ? a->name : xfmt("arg%d", b->arg);
    } else {
        lb.kind = LB_WORKSPACE;
        lb.dtype = b->node->dtype;
        lb.nelem = shape_numel(b->node->shape);
        lb.name = xfmt("t%d", b->node->id);
    }
    b->lbuf = lp_add_buf(L->p, lb);
    return b->lbuf;
}

int lower_buf_of(Lower *L, const Node *n) {
    FBuf *b = L->f->home[n->id];
    ASSERT(b);
    return fbuf_lbuf(L, b);
}

int lower_scratch(Lower *L, const char *name, DType dt, int64_t nelem) {
    LBuf lb = {0};
    lb.kind = LB_WORKSPACE;
    lb.dtype = dt;
    lb.nelem = nelem;
    lb.name = name;
    return lp_add_buf(L->p, lb);
}

int lower_private(Lower *L, const char *name, DType dt, int64_t nelem) {
    int b = lower_scratch(L, name, dt, nelem);
    L->p->bufs.data[b].kind = LB_PRIVATE;
    return b;
}

/* ----------------------------------------------------------------------------
 * loop helpers */

Block blk_top(LKernel *k) {
    Block b = {k, NULL};
    return b;
}

void blk_push(Block b, LStmt *s) {
    if (b.loop)
        vec_push(&b.loop->body, s);
    else
        vec_push(&b.k->body, s);
}

static Block blk_open(Block b, int64_t extent, bool parallel, LExpr **var) {
    int v;
    LStmt *loop = ls_for(b.k, extent, parallel, &v);
    blk_push(b, loop);
    *var = le_var(b.k, v);
    Block inner = {b.k, loop};
    return inner;
}

Block nest_outer(Block b, const int64_t *dims, int n, double work, const LowerOptions *opt, LExpr **idx, LExpr **lin) {
    if (n == 0) {
        *lin = iconst(0);
        return b;
    }
    int64_t ext = prod(dims, n);
    LExpr *o;
    Block inner = blk_open(b, ext, ext >= 2 && work >= (double)opt->parallel_min_work, &o);
    *lin = o;
    for (int d = 0; d < n; d++) {
        if (dims[d] == 1) {
            idx[d] = iconst(0);
            continue;
        }
        if (n == 1) {
            idx[d] = o;
            continue;
        }
        int64_t below = prod(dims + d + 1, n - d - 1);
        LExpr *e = below == 1 ? o : le_op2(OP_DIV, DT_I64, o, iconst(below));
        if (d > 0)
            e = le_op2(OP_MOD, DT_I64, e, iconst(dims[d]));
        int var;
        blk_push(inner, ls_let(b.k, DT_I64, e, &var));
        idx[d] = le_var(b.k, var);
    }
    return inner;
}

Block nest_serial(Block b, const int64_t *dims, int n, LExpr **idx, LExpr **lin) {
    LExpr *l = iconst(0);
    for (int d = 0; d < n; d++) {
        if (dims[d] == 1)
            idx[d] = iconst(0);
        else
            b = blk_open(b, dims[d], false, &idx[d]);
        l = iadd(imul(l, dims[d]), idx[d]);
    }
    if (lin)
        *lin = l;
    return b;
}

LExpr *ilt(LExpr *a, LExpr *b) { return le_op2(OP_LT, DT_BOOL, a, b); }
LExpr *ile(LExpr *a, LExpr *b) { return le_op2(OP_LE, DT_BOOL, a, b); }
LExpr *isub(LExpr *a, int64_t b) { return le_op2(OP_SUB, DT_I64, a, iconst(b)); }
LExpr *idiv(LExpr *a, int64_t b) { return le_op2(OP_DIV, DT_I64, a, iconst(b)); }
LExpr *imod(LExpr *a, int64_t b) { return le_op2(OP_MOD, DT_I64, a, iconst(b)); }
LExpr *isel(LExpr *c, LExpr *a, LExpr *b) { return le_op3(OP_WHERE, DT_I64, c, a, b); }

/* 0 <= e < bound, testing only the sides that can fail given e's range */
LExpr *in_range(LExpr *e, int64_t emin, int64_t emax, int64_t bound) {
    LExpr *v = NULL;
    if (emin < 0)
        v = band(v, ile(iconst(0), e));
    if (emax >= bound)
        v = band(v, ilt(e, iconst(bound)));
    return v;
}

LExpr *let_i64(Block b, LExpr *e) {
    if (e->kind == LE_CONST || e->kind == LE_VAR)
        return e;
    int v;
    blk_push(b, ls_let(b.k, DT_I64, e, &v));
    return le_var(b.k, v);
}

Block blk_open_loop(LKernel *k, int64_t extent, double work, const LowerOptions *opt, LExpr **var) {
    LExpr *idx[1], *lin;
    Block b = nest_outer(blk_top(k), &extent, 1, work, opt, idx, &lin);
    *var = idx[0];
    return b;
}

Block open_loop(Block b, int64_t extent, LExpr **var) {
    LExpr *idx[1];
    Block r = nest_serial(b, &extent, 1, idx, NULL);
    *var = idx[0];
    return r;
}

/* ----------------------------------------------------------------------------
 * expressions */

void kctx_init(KCtx *kc, Lower *L, FKernel *fk, LKernel *k, const Node *root) {
    memset(kc, 0, sizeof *kc);
    kc->L = L;
    kc->fk = fk;
    kc->k = k;
    kc->root = root;
    kctx_reset_memo(kc);
}

void kctx_reset_memo(KCtx *kc) {
    kc->memo_cap = 64;
    kc->memo_len = 0;
    kc->memo = xalloc(sizeof(MemoEnt) * (size_t)kc->memo_cap);
    for (int i = 0; i < kc->memo_cap; i++)
        kc->memo[i].node = -1;
}

static unsigned memo_hash(int node, int stack) {
    return (unsigned)(((uint64_t)(uint32_t)node * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)stack * 0xFF51AFD7ED558CCDull) >> 32);
}

static MemoEnt *memo_get(KCtx *kc, int node, int stack) {
    if (2 * (kc->memo_len + 1) > kc->memo_cap) {
        MemoEnt *old = kc->memo;
        int ocap = kc->memo_cap;
        kc->memo_cap *= 2;
        kc->memo = xalloc(sizeof(MemoEnt) * (size_t)kc->memo_cap);
        for (int i = 0; i < kc->memo_cap; i++)
            kc->memo[i].node = -1;
        for (int i = 0; i < ocap; i++) {
            if (old[i].node < 0)
                continue;
            unsigned h = memo_hash(old[i].node, old[i].stack) & (unsigned)(kc->memo_cap - 1);
            while (kc->memo[h].node >= 0)
                h = (h + 1) & (unsigned)(kc->memo_cap - 1);
            kc->memo[h] = old[i];
        }
    }
    unsigned h = memo_hash(node, stack) & (unsigned)(kc->memo_cap - 1);
    while (kc->memo[h].node >= 0) {
        if (kc->memo[h].node == node && kc->memo[h].stack == stack)
            return &kc->memo[h];
        h = (h + 1) & (unsigned)(kc->memo_cap - 1);
    }
    kc->memo[h].node = node;
    kc->memo[h].stack = stack;
    kc->memo_len++;
    return &kc->memo[h];
}

/* A value used more than once at this index becomes a LET. */
static LExpr *share(KCtx *kc, MemoEnt *me, LExpr *v) {
    if (me->uses > 1 && v->kind != LE_CONST && v->kind != LE_VAR) {
        int var;
        blk_push(kc->body, ls_let(kc->k, v->dtype, v, &var));
        v = le_var(kc->k, var);
    }
    me->val = v;
    return v;
}

static LExpr *eval_leaf(KCtx *kc, const Node *n, int stack, bool buffer) {
    Lower *L = kc->L;
    IdxMap m;
    LeafForm form;
    const Node *failed = NULL;
    if (!leaf_compose(&L->vs, stack, n, buffer, &m, &form, &failed))
        internal_error(__FILE__, __LINE__, "lower: %s %%%d does not compose with %s %%%d (fusion should have split it)",
                       op_info[n->op].name, n->id, op_info[failed->op].name, failed->id);
    if (kc->counting) {
        vec_push(&kc->maps, m);
        return NULL;
    }
    if (n == kc->rows_src) {
        if (!map_is_identity(&m))
            internal_error(__FILE__, __LINE__, "lower: %s reads its rows of %%%d elsewhere", kc->k->name, n->id);
        return le_load(L->p, kc->rows_buf, kc->rows_at, NULL);
    }
    if (kc->reshape_top && !map_reshape(&m, kc->idim, kc->irank))
        internal_error(__FILE__, __LINE__, "lower: the iteration space of kernel %s does not fit %%%d", kc->k->name, n->id);
    if (kc->perm)
        map_permute(&m, kc->perm);
    LExpr *valid = band(map_valid(&m, kc->idx), kc->extra_valid);
    LExpr *lin = map_index(&m, kc->idx);
    switch (form) {
    case LEAF_BUFFER: return le_load(L->p, lower_buf_of(L, n), lin, valid);
    case LEAF_RAND: return where0(valid, le_rand(n->op, n->dtype, n->attr.stream, lin));
    case LEAF_IOTA: return where0(valid, le_op1(OP_CAST, n->dtype, lin));
    case LEAF_IOTA_LIN: {
        int ax = n->attr.axis;
        int64_t below = prod(n->shape.dim + ax + 1, n->shape.rank - ax - 1);
        LExpr *e = below == 1 ? lin : le_op2(OP_DIV, DT_I64, lin, iconst(below));
        if (prod(n->shape.dim, ax) != 1)
            e = le_op2(OP_MOD, DT_I64, e, iconst(n->shape.dim[ax]));
        return where0(valid, le_op1(OP_CAST, n->dtype, e));
    }
    case LEAF_CONST: return where0(valid, le_const_f(n->dtype, n->attr.value));
    }
    unreachable();
}

static LExpr *build_elem(const Node *n, LExpr **a) {
    switch (n->op) {
    case OP_DETACH: return a[0];
    case OP_CAST: return le_op1(OP_CAST, n->dtype, a[0]);
    default: break;
    }
    switch (op_info[n->op].arity) {
    case 1: return le_op1(n->op, n->dtype, a[0]);
    case 2: return le_op2(n->op, n->dtype, a[0], a[1]);
    case 3: return le_op3(n->op, n->dtype, a[0], a[1], a[2]);
    }
    unreachable();
}

/* An earlier root of this kernel, read at the element being computed
 * (fusion.c only fuses siblings that read each other that way). */
static LExpr *root_value(KCtx *kc, int j, int stack) {
    IdxMap m;
    LeafForm form;
    const Node *n = kc->fk->roots.data[j];
    if (!leaf_compose(&kc->L->vs, stack, n, true, &m, &form, NULL) || !map_is_identity(&m))
        internal_error(__FILE__, __LINE__, "lower: %s reads its root %%%d at another element", kc->k->name, n->id);
    return kc->counting ? NULL : kc->rootval[j];
}

LExpr *lower_eval(KCtx *kc, const Node *n, int stack) {
    Fusion *f = kc->L->f;
    bool buffer = n != kc->root && f->mat[n->id];
    if (!buffer && op_info[n->op].kind == OK_VIEW)
        return lower_eval(kc, n->in[0], vstack_push(&kc->L->vs, stack, n));
    MemoEnt *me = memo_get(kc, n->id, stack);
    if (kc->counting) {
        if (me->uses++)
            return NULL;
    } else if (me->val) {
        return me->val;
    }
    if (buffer) {
        for (int j = 0; j < kc->roots_done; j++)
            if (kc->fk->roots.data[j] == n)
                return root_value(kc, j, stack);
    }
    if (buffer || fusion_is_cheap_leaf(n)) {
        LExpr *v = eval_leaf(kc, n, stack, buffer);
        return kc->counting ? NULL : share(kc, me, v);
    }
    if (op_info[n->op].kind != OK_ELEM)
        internal_error(__FILE__, __LINE__, "lower: %s %%%d is neither inlinable nor materialized", op_info[n->op].name, n->id);
    LExpr *a[3] = {0};
    for (int i = 0; i < n->nin; i++)
        a[i] = lower_eval(kc, n->in[i], stack);
    if (kc->counting) {
        if (n->op != OP_DETACH && n->op != OP_CAST)
            kc->ops++;
        return NULL;
    }
    return share(kc, me, build_elem(n, a));
}

/* ----------------------------------------------------------------------------
 * iteration spaces */

/* Drop size-1 dims of dims[0..r) and merge neighbours of equal role whose
 * every map is linear across them. Returns the new rank. */
static int merge_dims(const int64_t *dims, int r, const int *roles, const IdxMap *maps, int nmaps, int64_t *out,
                      int *oroles) {
    int keep[MAX_RANK], n = 0;
    bool empty = false;
    for (int d = 0; d < r; d++) {
        empty |= dims[d] == 0;
        if (dims[d] != 1)
            keep[n++] = d;
    }
    int rank = 0, prev = -1;
    for (int i = 0; i < n; i++) {
        int d = keep[i];
        bool merge = prev >= 0 && !empty && roles[prev] == roles[d];
        for (int m = 0; merge && m < nmaps; m++) {
            const IdxMap *mp = &maps[m];
            if (mp->stride[prev] != mp->stride[d] * dims[d])
                merge = false;
            for (int c = 0; merge && c < mp->ncons; c++)
                if (mp->cons[c].coef[prev] != mp->cons[c].coef[d] * dims[d])
                    merge = false;
        }
        if (merge) {
            out[rank - 1] *= dims[d];
        } else {
            out[rank] = dims[d];
            oroles[rank] = roles[d];
            rank++;
        }
        prev = d;
    }
    return rank;
}

static void set_space(KCtx *kc, const int64_t *dims, int rank) {
    kc->counting = false;
    kc->reshape_top = true;
    kc->irank = rank;
    memcpy(kc->idim, dims, sizeof(int64_t) * (size_t)rank);
}

static double work_of(const KCtx *kc, int64_t numel) { return (double)numel * (double)(kc->ops + 1); }

LExpr *reduce_init(Op op, DType dt) {
    bool fl = dt == DT_F32 || dt == DT_F64;
    switch (op) {
    case OP_SUM: return zero_of(dt);
    case OP_RMAX:
    case OP_RLSE:
        return fl ? le_const_f(dt, -INFINITY) : le_const_i(dt, dt == DT_BOOL ? 0 : dt == DT_I32 ? INT32_MIN : INT64_MIN);
    case OP_RMIN:
        return fl ? le_const_f(dt, INFINITY) : le_const_i(dt, dt == DT_BOOL ? 1 : dt == DT_I32 ? INT32_MAX : INT64_MAX);
    default: unreachable();
    }
}

/* logsumexp of two partial results (the column and split forms; the row form
 * takes two passes instead, see row_accumulate): max + log(1 + exp(min - max)),
 * with -inf for two empty parts rather than the NaN of -inf - -inf */
static LExpr *lse_pair(DType dt, LExpr *a, LExpr *b) {
    LExpr *hi = le_op2(OP_MAX, dt, a, b), *lo = le_op2(OP_MIN, dt, a, b);
    LExpr *gap = le_op1(OP_EXP, dt, le_op2(OP_SUB, dt, lo, hi));
    LExpr *r = le_op2(OP_ADD, dt, hi, le_op1(OP_LOG, dt, le_op2(OP_ADD, dt, le_const_f(dt, 1), gap)));
    return le_op3(OP_WHERE, dt, le_op2(OP_EQ, DT_BOOL, hi, le_const_f(dt, -INFINITY)), hi, r);
}

LExpr *reduce_combine(Op op, DType dt, LExpr *acc, LExpr *v) {
    if (op == OP_RLSE)
        return lse_pair(dt, acc, v);
    if (dt == DT_BOOL)
        return le_op2(op == OP_RMIN ? OP_AND : OP_OR, dt, acc, v);
    return le_op2(op == OP_SUM ? OP_ADD : op == OP_RMAX ? OP_MAX : OP_MIN, dt, acc, v);
}

/* ----------------------------------------------------------------------------
 * elementwise and copy kernels */

/* A leaf read across the store's contiguous dim (a transpose) touches a new
 * cache line per element; LLVM cannot fix that. Tile the last dim and the
 * leaf's contiguous dim j by T x T: the loops become [..., j/T, ..., i/T]
 * (flattened, parallel) around j%T and i%T, so both the leaf's lines and the
 * store's lines are reused within a tile. Returns 1 and rewrites dims (the
 * split iteration space) and perm (its loop order), or 0. */
static int tile_transposed(const KCtx *kc, int64_t *dims, int *rank, int *perm) {
    int r = *rank;
    if (r < 2 || r + 2 > MAX_RANK)
        return 0;
    int j = -1;
    for (int i = 0; i + 1 < kc->maps.len && j < 0; i++) {
        IdxMap m = kc->maps.data[i];
        if (!map_reshape(&m, dims, r))
            return 0;
        if (m.stride[r - 1] == 1 || m.stride[r - 1] == -1 || m.stride[r - 1] == 0)
            continue;
        for (int d = r - 2; d >= 0 && j < 0; d--)
            if (m.stride[d] == 1 || m.stride[d] == -1)
                j = d;
    }
    if (j < 0)
        return 0;
    static const int64_t tiles[] = {32, 16, 8};
    int64_t t = 0;
    for (int i = 0; i < 3 && !t; i++)
        if (dims[j] % tiles[i] == 0 && dims[r - 1] % tiles[i] == 0 && dims[j] >= 2 * tiles[i] &&
            dims[r - 1] >= 2 * tiles[i])
            t = tiles[i];
    if (!t)
        return 0;
    /* split: [.., j/T, T, .., i/T, T] (positions j, j+1 and r, r+1) */
    int64_t nd[MAX_RANK];
    int n = 0;
    for (int d = 0; d < r; d++) {
        if (d == j || d == r - 1) {
            nd[n++] = dims[d] / t;
            nd[n++] = t;
        } else {
            nd[n++] = dims[d];
        }
    }
    /* loop order: everything but the two tile dims, then j%T, then i%T */
    int m = 0;
    for (int d = 0; d < n; d++)
        if (d != j + 1 && d != n - 1)
            perm[m++] = d;
    perm[m++] = j + 1;
    perm[m++] = n - 1;
    memcpy(dims, nd, sizeof(int64_t) * (size_t)n);
    *rank = n;
    return 1;
}

/* One loop nest for every root (several for fused sibling updates): each
 * root's value is a LET, the stores come after all of them, so every load
 * of an iteration precedes its stores (an update may read the old value of
 * a buffer a sibling overwrites). */

/* The values of a kernel's roots at the current point of body, into
 * kc->rootval (allocated for them): each becomes a let when there are
 * several, so that the stores after them read each value once. */
void lower_root_values(KCtx *kc, LKernel *k, Node *const *roots, int nr, Block body) {
    for (int i = 0; i < nr; i++) {
        kc->root = roots[i];
        kc->roots_done = i;
        LExpr *v = lower_eval(kc, kc->root, 0);
        if (nr > 1 && v->kind != LE_CONST && v->kind != LE_VAR) {
            int var;
            blk_push(body, ls_let(k, v->dtype, v, &var));
            v = le_var(k, var);
        }
        kc->rootval[i] = v;
    }
}
static void lower_elem(Lower *L, FKernel *fk, LKernel *k) {
    int nr = fk->roots.len;
    Shape s = KROOT(fk)->shape;
    int *dst = xalloc(sizeof(int) * (size_t)nr);
    for (int i = 0; i < nr; i++) {
        const Node *root = fk->roots.data[i];
        dst[i] = fbuf_lbuf(L, fk->dsts.data[i]);
        ASSERT(shape_eq(root->shape, s));
        ASSERT(L->p->bufs.data[dst[i]].dtype == root->dtype && L->p->bufs.data[dst[i]].nelem == shape_numel(s));
    }
    if (shape_numel(s) == 0)
        return;
    KCtx kc;
    kctx_init(&kc, L, fk, k, KROOT(fk));
    kc.counting = true;
    kc.rootval = xalloc(sizeof(LExpr *) * (size_t)nr);
    for (int i = 0; i < nr; i++) {
        kc.root = fk->roots.data[i];
        kc.roots_done = i;
        lower_eval(&kc, kc.root, 0);
    }
    IdxMap st = map_contig(s);
    vec_push(&kc.maps, st);
    int roles[MAX_RANK] = {0}, iroles[MAX_RANK];
    int64_t idim[MAX_RANK];
    int r = merge_dims(s.dim, s.rank, roles, kc.maps.data, kc.maps.len, idim, iroles);
    double work = (double)shape_numel(s) * (double)(kc.ops + nr);
    k->flops = work;
    int perm[MAX_RANK];
    int64_t ldim[MAX_RANK];
    int tiled = tile_transposed(&kc, idim, &r, perm);
    set_space(&kc, idim, r);
    LExpr *lin;
    Block body;
    if (tiled) {
        /* loops in the permuted order; the store is no longer row-major in
         * loop order, so its index comes from its own map */
        kc.perm = perm;
        for (int d = 0; d < r; d++)
            ldim[d] = idim[perm[d]];
        LExpr *lo;
        body = nest_outer(blk_top(k), ldim, r - 2, work, &L->opt, kc.idx, &lo);
        body = nest_serial(body, ldim + r - 2, 2, kc.idx + r - 2, NULL);
        IdxMap sm = map_contig(s);
        if (!map_reshape(&sm, idim, r))
            internal_error(__FILE__, __LINE__, "lower: tiles of %s do not fit its store", k->name);
        map_permute(&sm, perm);
        lin = map_index(&sm, kc.idx);
    } else if (r <= 1) {
        body = nest_outer(blk_top(k), idim, r, work, &L->opt, kc.idx, &lin);
    } else {
        LExpr *lo, *li;
        body = nest_outer(blk_top(k), idim, r - 1, work, &L->opt, kc.idx, &lo);
        body = nest_serial(body, idim + r - 1, 1, kc.idx + r - 1, &li);
        lin = iadd(imul(lo, idim[r - 1]), li);
    }
    kc.body = body;
    lower_root_values(&kc, k, fk->roots.data, nr, body);
    for (int i = 0; i < nr; i++)
        blk_push(body, ls_store(dst[i], lin, kc.rootval[i], false));
}

static void lower_copy(Lower *L, FKernel *fk, LKernel *k) {
    FBuf *src = fk->src ? fk->src : L->f->home[KROOT(fk)->id];
    int s = fbuf_lbuf(L, src), d = fbuf_lbuf(L, KDST(fk));
    ASSERT(s != d);
    const LBuf *sb = &L->p->bufs.data[s];
    ASSERT(sb->dtype == L->p->bufs.data[d].dtype && sb->nelem == L->p->bufs.data[d].nelem);
    int64_t n = sb->nelem;
    if (!n)
        return;
    LExpr *idx[1], *lin;
    Block body = nest_outer(blk_top(k), &n, 1, (double)n, &L->opt, idx, &lin);
    blk_push(body, ls_store(d, lin, le_load(L->p, s, lin, NULL), false));
    k->flops = (double)n;
}

/* ----------------------------------------------------------------------------
 * reductions */

/* Positions of the dims of one role, in order. */
static int dims_of(const int *roles, int r, int role, int *pos) {
    int n = 0;
    for (int d = 0; d < r; d++)
        if (roles[d] == role)
            pos[n++] = d;
    return n;
}

static void gather_dims(const int64_t *idim, const int *pos, int n, int64_t *out) {
    for (int i = 0; i < n; i++)
        out[i] = idim[pos[i]];
}

static void scatter_idx(KCtx *kc, const int *pos, int n, LExpr **idx) {
    for (int i = 0; i < n; i++)
        kc->idx[pos[i]] = idx[i];
}

static int64_t largest_divisor_upto(int64_t n, int64_t cap) {
    for (int64_t d = cap < n ? cap : n; d >= 2; d--)
        if (n % d == 0)
            return d;
    return 1;
}

/* The reductions of one kernel: several when fusion.c put sibling
 * reductions of one input shape together, so that their common inputs are
 * read once (a batch norm's backward pass sums dy, dy*x_hat, ... per
 * channel). */
typedef struct Red {
    const Node *root, *x;   /* the reduction and its input */
    Op op;
    DType dt;
    int dst;
} Red;

/* Evaluate reduction i's input at kc->idx (its own root for the buffer
 * test of lower_eval; shared values are LETs across the reductions). */
static LExpr *red_value(KCtx *kc, const Red *rd) {
    kc->root = rd->root;
    return lower_eval(kc, rd->x, 0);
}

/* acc = init; serial loops over the reduced dims; acc = acc op value. The
 * LETs of the values go inside the innermost loop. Writes the accumulator
 * variables to acc[0..nr). */
static void row_accumulate(KCtx *kc, Block body, const int *roles, const Red *rd, int nr, int *acc) {
    int pos[MAX_RANK + 1];
    int64_t dims[MAX_RANK + 1] = {0};
    LExpr *idx[MAX_RANK + 1];
    int n = dims_of(roles, kc->irank, ROLE_RED, pos);
    gather_dims(kc->idim, pos, n, dims);
    bool any_lse = false;
    for (int i = 0; i < nr; i++) {
        blk_push(body, ls_let(kc->k, rd[i].dt, reduce_init(rd[i].op, rd[i].dt), &acc[i]));
        any_lse |= rd[i].op == OP_RLSE;
    }
    Block inner = nest_serial(body, dims, n, idx, NULL);
    scatter_idx(kc, pos, n, idx);
    kc->body = inner;
    LExpr **v = xalloc(sizeof(LExpr *) * (size_t)nr);
    for (int i = 0; i < nr; i++)
        v[i] = red_value(kc, &rd[i]);
    /* a logsumexp row takes its max in this pass */
    for (int i = 0; i < nr; i++) {
        Op op = rd[i].op == OP_RLSE ? OP_RMAX : rd[i].op;
        blk_push(inner, ls_assign(acc[i], reduce_combine(op, rd[i].dt, le_var(kc->k, acc[i]), v[i])));
    }
    if (!any_lse)
        return;
    /* and the sum of exp(x - max) in a second pass over the same row, which
     * is still in cache: one exp per element and no [.., V] buffer of exp
     * (the pairwise combine would take an exp and a log per element). The
     * values are evaluated again, so the first pass's LETs are forgotten. An
     * all -inf row shifts by 0, giving -inf rather than NaN. */
    int *shift = xalloc(sizeof(int) * (size_t)nr), *sum = xalloc(sizeof(int) * (size_t)nr);
    for (int i = 0; i < nr; i++) {
        if (rd[i].op != OP_RLSE)
            continue;
        DType dt = rd[i].dt;
        LExpr *m = le_var(kc->k, acc[i]);
        LExpr *empty = le_op2(OP_EQ, DT_BOOL, m, le_const_f(dt, -INFINITY));
        blk_push(body, ls_let(kc->k, dt, le_op3(OP_WHERE, dt, empty, le_const_f(dt, 0), m), &shift[i]));
        blk_push(body, ls_let(kc->k, dt, le_const_f(dt, 0), &sum[i]));
    }
    kctx_reset_memo(kc);
    inner = nest_serial(body, dims, n, idx, NULL);
    scatter_idx(kc, pos, n, idx);
    kc->body = inner;
    for (int i = 0; i < nr; i++) {
        if (rd[i].op != OP_RLSE)
            continue;
        DType dt = rd[i].dt;
        LExpr *e = le_op1(OP_EXP, dt, le_op2(OP_SUB, dt, red_value(kc, &rd[i]), le_var(kc->k, shift[i])));
        blk_push(inner, ls_assign(sum[i], le_op2(OP_ADD, dt, le_var(kc->k, sum[i]), e)));
    }
    for (int i = 0; i < nr; i++)
        if (rd[i].op == OP_RLSE) {
            DType dt = rd[i].dt;
            LExpr *lse = le_op2(OP_ADD, dt, le_var(kc->k, shift[i]), le_op1(OP_LOG, dt, le_var(kc->k, sum[i])));
            blk_push(body, ls_let(kc->k, dt, lse, &acc[i]));
        }
}

/* A full reduction, split: dim 0 of the iteration space is cut into
 * [parts, e0 / parts]; a parallel loop reduces each part into a scratch
 * buffer, then one serial loop combines the parts. */
static void reduce_split(KCtx *kc, int *roles, int64_t parts, const Red *rd) {
    Lower *L = kc->L;
    LKernel *k = kc->k;
    Op op = rd->op;
    DType dt = rd->dt;
    int dst = rd->dst;
    int part = lower_scratch(L, xfmt("t%d_part", rd->root->id), dt, parts);
    LExpr *b;
    Block loop = blk_open(blk_top(k), parts, true, &b);
    kc->idx[0] = b;
    int acc;
    row_accumulate(kc, loop, roles, rd, 1, &acc);
    blk_push(loop, ls_store(part, b, le_var(k, acc), false));
    int acc2;
    blk_push(blk_top(k), ls_let(k, dt, reduce_init(op, dt), &acc2));
    LExpr *w;
    Block fold = blk_open(blk_top(k), parts, false, &w);
    LExpr *pv = le_load(L->p, part, w, NULL);
    blk_push(fold, ls_assign(acc2, reduce_combine(op, dt, le_var(k, acc2), pv)));
    blk_push(blk_top(k), ls_store(dst, iconst(0), le_var(k, acc2), false));
}

/* Columns: outer kept dims O (ROLE_KEPT), reduced dims R, the trailing kept
 * block T (marked ROLE_PART here) starting at t0. */
static void reduce_columns(KCtx *kc, int *roles, int t0, double work, const Red *rd, int nr) {
    Lower *L = kc->L;
    LKernel *k = kc->k;
    int r = kc->irank;
    int pos[MAX_RANK + 1];
    int64_t dims[MAX_RANK + 1];
    LExpr *idx[MAX_RANK + 1], *tidx[MAX_RANK + 1], *linO, *linT;
    int nO = dims_of(roles, r, ROLE_KEPT, pos);
    gather_dims(kc->idim, pos, nO, dims);
    Block body = nest_outer(blk_top(k), dims, nO, work, &L->opt, idx, &linO);
    scatter_idx(kc, pos, nO, idx);
    int nT = r - t0;
    int64_t eT = prod(kc->idim + t0, nT);
    Block ib = nest_serial(body, kc->idim + t0, nT, tidx, &linT);
    for (int i = 0; i < nr; i++)
        blk_push(ib, ls_store(rd[i].dst, iadd(imul(linO, eT), linT), reduce_init(rd[i].op, rd[i].dt), false));
    int nR = dims_of(roles, r, ROLE_RED, pos);
    gather_dims(kc->idim, pos, nR, dims);
    Block rb = nest_serial(body, dims, nR, idx, NULL);
    scatter_idx(kc, pos, nR, idx);
    Block tb = nest_serial(rb, kc->idim + t0, nT, tidx, &linT);
    for (int d = 0; d < nT; d++)
        kc->idx[t0 + d] = tidx[d];
    kc->body = tb;
    LExpr *di = iadd(imul(linO, eT), linT);
    LExpr **v = xalloc(sizeof(LExpr *) * (size_t)nr);
    for (int i = 0; i < nr; i++)
        v[i] = red_value(kc, &rd[i]);
    for (int i = 0; i < nr; i++) {
        if (rd[i].op == OP_SUM && rd[i].dt != DT_BOOL)
            blk_push(tb, ls_store(rd[i].dst, di, v[i], true));
        else
            blk_push(tb, ls_store(rd[i].dst, di,
                                  reduce_combine(rd[i].op, rd[i].dt, le_load(L->p, rd[i].dst, di, NULL), v[i]), false));
    }
}

/* [N, C, P] reduced over N and P with rows P of one cache line at most (a
 * batch norm's per-channel sums over a deep layer's small images): the row
 * form would visit a channel's N rows one line each, a page apart, waiting
 * on each (ResNet-18's 4x4 layer at batch 128: 0.55 ms per sum of 1 MB, one
 * thread; 0.09 ms this way). Instead a parallel loop over blocks of channels
 * walks the images in memory order, each (n, c) row summed in a register and
 * combined into dst[c]. Rows of 49 floats (7x7) were not faster this way. */
static void reduce_short_rows(KCtx *kc, const int *roles, double work, const Red *rd, int nr) {
    Lower *L = kc->L;
    LKernel *k = kc->k;
    int64_t N = kc->idim[0], C = kc->idim[1];
    int64_t CB = C / largest_divisor_upto(C, 8);
    LExpr *cb, *cl, *n, *c;
    Block body = blk_open_loop(k, C / CB, work, &L->opt, &cb);
    Block bz = open_loop(body, CB, &cl);
    c = iadd(imul(cb, CB), cl);
    for (int i = 0; i < nr; i++)
        blk_push(bz, ls_store(rd[i].dst, c, reduce_init(rd[i].op, rd[i].dt), false));
    Block bn = open_loop(body, N, &n);
    Block bc = open_loop(bn, CB, &cl);
    c = let_i64(bc, iadd(imul(cb, CB), cl));
    kc->idx[0] = n;
    kc->idx[1] = c;
    /* only P is reduced inside the row */
    int row_roles[3] = {ROLE_PART, roles[1], roles[2]};
    int *acc = xalloc(sizeof(int) * (size_t)nr);
    row_accumulate(kc, bc, row_roles, rd, nr, acc);
    for (int i = 0; i < nr; i++)
        blk_push(bc, ls_store(rd[i].dst, c,
                              reduce_combine(rd[i].op, rd[i].dt, le_load(L->p, rd[i].dst, c, NULL), le_var(k, acc[i])),
                              false));
}

static void insert_dim(int64_t *idim, int *roles, int *r, int at, int64_t outer, int outer_role, int64_t inner) {
    memmove(idim + at + 1, idim + at, sizeof(int64_t) * (size_t)(*r - at));
    memmove(roles + at + 1, roles + at, sizeof(int) * (size_t)(*r - at));
    idim[at] = outer;
    roles[at] = outer_role;
    idim[at + 1] = inner;
    (*r)++;
}

/* Rows (innermost loop over the last reduced dim, a register accumulator)
 * when the last dim is reduced, or when the inputs are contiguous along the
 * last reduced dim but not along the last kept one (a reduction of a
 * transposed view); columns otherwise. The store (the last map) does not
 * vote: the row form stores once per output element. */
static bool row_form(const KCtx *kc, const int64_t *idim, const int *roles, int r) {
    if (roles[r - 1] == ROLE_RED)
        return true;
    int lr = -1, lk = -1, cr = 0, ck = 0;
    for (int d = 0; d < r; d++)
        *(roles[d] == ROLE_RED ? &lr : &lk) = d;
    for (int i = 0; i + 1 < kc->maps.len; i++) {
        IdxMap m = kc->maps.data[i];
        if (!map_reshape(&m, idim, r))
            internal_error(__FILE__, __LINE__, "lower: merged dims do not fit a map of %s", kc->k->name);
        cr += m.stride[lr] == 1 || m.stride[lr] == -1;
        ck += m.stride[lk] == 1 || m.stride[lk] == -1;
    }
    return cr > ck;
}

static void lower_reduce(Lower *L, FKernel *fk, LKernel *k) {
    int nr = fk->roots.len;
    const Node *root = KROOT(fk);
    Shape s = root->in[0]->shape;
    Red *rd = xalloc(sizeof(Red) * (size_t)nr);
    for (int i = 0; i < nr; i++) {
        const Node *n = fk->roots.data[i];
        ASSERT(shape_eq(n->in[0]->shape, s) && n->attr.axes == root->attr.axes);
        rd[i] = (Red){n, n->in[0], n->op, n->dtype, fbuf_lbuf(L, fk->dsts.data[i])};
    }
    if (shape_numel(root->shape) == 0)
        return;
    KCtx kc;
    kctx_init(&kc, L, fk, k, root);
    kc.counting = true;
    for (int i = 0; i < nr; i++)
        red_value(&kc, &rd[i]);
    /* the store, seen from the input's index space: reduced dims stride 0 */
    IdxMap st = map_contig(root->shape);
    int roles[MAX_RANK];
    for (int d = 0; d < s.rank; d++) {
        st.dim[d] = s.dim[d];
        roles[d] = (root->attr.axes >> d & 1) && s.dim[d] != 1 ? ROLE_RED : ROLE_KEPT;
    }
    vec_push(&kc.maps, st);
    int iroles[MAX_RANK + 1], pos[MAX_RANK + 1];
    int64_t idim[MAX_RANK + 1], dims[MAX_RANK + 1];
    LExpr *idx[MAX_RANK + 1], *lin;
    int r = merge_dims(s.dim, s.rank, roles, kc.maps.data, kc.maps.len, idim, iroles);
    double work = work_of(&kc, shape_numel(s));
    k->flops = work;
    bool big = work >= (double)L->opt.parallel_min_work;

    if (dims_of(iroles, r, ROLE_RED, pos) == 0) {
        /* every reduced dim has size 1: a copy */
        set_space(&kc, idim, r);
        Block body = nest_outer(blk_top(k), idim, r, work, &L->opt, kc.idx, &lin);
        kc.body = body;
        LExpr **v = xalloc(sizeof(LExpr *) * (size_t)nr);
        for (int i = 0; i < nr; i++)
            v[i] = red_value(&kc, &rd[i]);
        for (int i = 0; i < nr; i++)
            blk_push(body, ls_store(rd[i].dst, lin, v[i], false));
        return;
    }
    if (row_form(&kc, idim, iroles, r)) {
        int nkept = dims_of(iroles, r, ROLE_KEPT, pos);
        int64_t parts = nkept ? 1 : largest_divisor_upto(idim[0], 64);
        if (nkept == 0 && nr == 1 && big && parts >= 2 && r < MAX_RANK) {
            int64_t e0 = idim[0];
            iroles[0] = ROLE_RED;
            insert_dim(idim, iroles, &r, 0, parts, ROLE_PART, e0 / parts);
            set_space(&kc, idim, r);
            reduce_split(&kc, iroles, parts, rd);
            return;
        }
        bool short_rows = r == 3 && iroles[0] == ROLE_RED && iroles[1] == ROLE_KEPT && iroles[2] == ROLE_RED &&
                          idim[0] > 1 && idim[2] * dtype_size(root->in[0]->dtype) <= 64;
        for (int i = 0; i < nr; i++)
            short_rows &= rd[i].op != OP_RLSE;
        set_space(&kc, idim, r);
        if (short_rows) {
            reduce_short_rows(&kc, iroles, work, rd, nr);
            return;
        }
        gather_dims(idim, pos, nkept, dims);
        Block body = nest_outer(blk_top(k), dims, nkept, work, &L->opt, idx, &lin);
        scatter_idx(&kc, pos, nkept, idx);
        int *acc = xalloc(sizeof(int) * (size_t)nr);
        row_accumulate(&kc, body, iroles, rd, nr, acc);
        for (int i = 0; i < nr; i++)
            blk_push(body, ls_store(rd[i].dst, lin, le_var(k, acc[i]), false));
        return;
    }
    int t0 = r;
    while (t0 > 0 && iroles[t0 - 1] == ROLE_KEPT)
        t0--;
    for (int d = t0; d < r; d++)
        iroles[d] = ROLE_PART;
    if (dims_of(iroles, r, ROLE_KEPT, pos) == 0 && big && r < MAX_RANK) {
        /* nothing outside the contiguous block to run in parallel: tile it */
        static const int64_t tiles[] = {512, 256, 128, 64, 32, 16, 8};
        for (int i = 0; i < (int)(sizeof tiles / sizeof *tiles); i++) {
            int64_t t = tiles[i], n0 = idim[t0];
            if (n0 % t == 0 && n0 / t >= 2) {
                insert_dim(idim, iroles, &r, t0, n0 / t, ROLE_KEPT, t);
                t0++;
                break;
            }
        }
    }
    set_space(&kc, idim, r);
    reduce_columns(&kc, iroles, t0, work, rd, nr);
}

/* ----------------------------------------------------------------------------
 * the entry point */

static const char *kernel_what(const FKernel *fk) {
    size_t cap = 256, len = 0;
    char *s = xalloc(cap);
    for (int i = 0; i < fk->nodes.len && len + 64 < cap; i++) {
        const Node *n = fk->nodes.data[i];
        len += (size_t)snprintf(s + len, cap - len, "%s%%%d %s", i == 0 ? "" : i == 1 ? " <- " : ", ", n->id,
                                op_info[n->op].name);
    }
    if (fk->kind == KK_COPY)
        snprintf(s + len, cap - len, " (copy)");
    return s;
}

LProgram *lower_entry(const Entry *e, const LowerOptions *opt) {
    Lower L;
    memset(&L, 0, sizeof L);
    if (opt)
        L.opt = *opt;
    if (L.opt.parallel_min_work <= 0)
        L.opt.parallel_min_work = 32768;
    vstacks_init(&L.vs);
    stage_push(ST_FUSION);
    L.f = fusion_run(e);
    if (!L.opt.top_gemms)
        fuse_rows(L.f);
    stage_pop();
    stage_push(ST_MEMPLAN);
    memplan_homes(L.f);
    stage_pop();
    FILE *dump = dump_file ? dump_file : stderr;
    if (dump_flags & DUMP_FUSION)
        fusion_dump(L.f, dump);
    L.p = xalloc(sizeof(LProgram));
    L.p->entry = e;
    for (int i = 0; i < L.f->kernels.len; i++) {
        FKernel *fk = L.f->kernels.data[i];
        const char *what = fk->kind == KK_COPY                          ? "copy"
                           : fk->kind == KK_REDUCE && fk->roots.len > 1 ? "reductions"
                           : fk->roots.len > 1 && KDST(fk)->arg >= 0    ? "update"
                           : fk->rows.len                               ? "matmul_rows"
                                                                        : op_info[KROOT(fk)->op].name;
        LKernel *k = lk_new(L.p, xfmt("k%d_%s", i, what));
        k->what = kernel_what(fk);
        switch (fk->kind) {
        case KK_ELEM: lower_elem(&L, fk, k); break;
        case KK_REDUCE: lower_reduce(&L, fk, k); break;
        case KK_OPAQUE:
            if (fk->rows.len)
                lower_rows(&L, fk, k);
            else
                lower_opaque(&L, fk, k);
            break;
        case KK_COPY: lower_copy(&L, fk, k); break;
        }
    }
    stage_push(ST_MEMPLAN);
    memplan_offsets(L.p, (dump_flags & DUMP_MEMORY) ? dump : NULL);
    stage_pop();
    loopir_verify(L.p);
    return L.p;
}
