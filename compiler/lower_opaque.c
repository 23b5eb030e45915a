/* lower_opaque.c: hand-written lowerings of the OPAQUE ops (convolutions in
 * lower_conv.c), and the operand helpers they share.
 *
 * Operands arrive materialized (fusion.c): GEMM operands as a buffer plus a
 * strided map, operands read by loop nests as views of a buffer (or
 * CONST/IOTA/RAND), read through lower_eval at an index vector built here.
 *
 * MATMUL  out[b, m, n] = sum_k a[b, m, k] * b[b, k, n]
 *   One LS_GEMM per batch index in a serial loop (the GEMM itself is
 *   threaded). Trailing batch dims along which b does not move (stride 0,
 *   e.g. x[B, T, C] @ W[C, N]) fold into M when a's rows continue evenly
 *   across them, so a linear layer is a single (B*T) x C x N GEMM.
 *
 * CONV2D, CONV2D_BWD_INPUT, CONV2D_BWD_WEIGHT: lower_conv.c.
 *
 * GATHER  out[pre, mid, post] = x[pre, clamp(idx[pre[:bd], mid]), post]
 *   An elementwise loop over out with an indirect index; indices are clamped
 *   into [0, dim) as graph.h specifies.
 *
 * SCATTER_ADD  out = 0; out[pre, clamp(idx[pre[:bd], mid]), post] += upd[pre, mid, post]
 *   Zero-fill, then accumulate. Distinct pre (and post) indices never write
 *   the same element, so the parallel loop runs over pre, or over tiles of
 *   the first post dim when pre is trivial; mid (which can collide) is a
 *   serial loop inside.
 *
 * FOLD  out[n, c, h, w] = sum_{i,j} cols[n, c, p, q, i, j] over the (p, q)
 *   with p*sh+i-ph = h and q*sw+j-pw = w: the gather form (p = (h+ph-i)/sh
 *   when divisible and in range), parallel over output rows (n, c, h) with
 *   an inner loop along w that accumulates into the row.
 */
#include <string.h>

#include "lower_int.h"

/* A materialized operand seen through its views: its buffer and the map of
 * the operand's index space into it. false if it rests on a CONST, IOTA or
 * RAND instead of a buffer. */
bool operand_buffer(Lower *L, const Node *n, IdxMap *m, int *buf) {
    int stack = 0;
    while (!L->f->mat[n->id] && op_info[n->op].kind == OK_VIEW) {
        stack = vstack_push(&L->vs, stack, n);
        n = n->in[0];
    }
    if (!L->f->mat[n->id])
        return false;
    LeafForm form;
    const Node *failed = NULL;
    if (!leaf_compose(&L->vs, stack, n, true, m, &form, &failed))
        internal_error(__FILE__, __LINE__, "lower: operand %%%d does not compose", n->id);
    *buf = lower_buf_of(L, n);
    return true;
}

void need_buffer(Lower *L, const Node *n, IdxMap *m, int *buf) {
    if (!operand_buffer(L, n, m, buf))
        internal_error(__FILE__, __LINE__, "lower: GEMM operand %%%d is not in a buffer", n->id);
}

/* Evaluate operand n (views of a buffer or a cheap leaf) at idx, in block b,
 * with an extra validity. */
LExpr *read_at(KCtx *kc, Block b, const Node *n, LExpr **idx, int rank, LExpr *valid) {
    kctx_reset_memo(kc);
    kc->counting = false;
    kc->reshape_top = false;
    kc->body = b;
    for (int d = 0; d < rank; d++)
        kc->idx[d] = idx[d];
    kc->extra_valid = valid;
    LExpr *v = lower_eval(kc, n, 0);
    kc->extra_valid = NULL;
    return v;
}

LExpr *gemm_off(const IdxMap *m, LExpr *const *bidx, int nb) {
    LExpr *e = iconst(m->offset);
    for (int d = 0; d < nb; d++)
        if (m->dim[d] != 1 && m->stride[d])
            e = iadd(e, imul(bidx[d], m->stride[d]));
    return e;
}

void zero_fill(Lower *L, LKernel *k, int buf, int64_t from, int64_t n) {
    if (n <= 0)
        return;
    LExpr *idx[1], *lin;
    Block b = nest_outer(blk_top(k), &n, 1, (double)n, &L->opt, idx, &lin);
    blk_push(b, ls_store(buf, iadd(lin, iconst(from)), le_const_f(L->p->bufs.data[buf].dtype, 0), false));
}

/* ----------------------------------------------------------------------------
 * MATMUL */

static void lower_matmul(Lower *L, FKernel *fk, LKernel *k) {
    const Node *n = KROOT(fk);
    int r = n->shape.rank, nb = r - 2;
    int64_t M = n->shape.dim[r - 2], N = n->shape.dim[r - 1], K = n->in[0]->shape.dim[r - 1];
    int c = lower_buf_of(L, n);
    if (shape_numel(n->shape) == 0)
        return;
    if (K == 0) {
        zero_fill(L, k, c, 0, shape_numel(n->shape));
        return;
    }
    IdxMap ma, mb;
    int abuf, bbuf;
    need_buffer(L, n->in[0], &ma, &abuf);
    need_buffer(L, n->in[1], &mb, &bbuf);
    LGemm g = {0};
    if (!map_matrix(&ma, &g.trans_a, &g.lda) || !map_matrix(&mb, &g.trans_b, &g.ldb))
        internal_error(__FILE__, __LINE__, "lower: matmul %%%d operands are not matrices", n->id);
    /* fold trailing batch dims into M */
    int64_t rows = M, rs = ma.stride[r - 2];
    while (nb > 0 && !g.trans_a) {
        int d = nb - 1;
        int64_t bd = n->shape.dim[d];
        if (bd != 1) {
            if (mb.stride[d] != 0)
                break;
            if (rows == 1 ? ma.stride[d] < K : ma.stride[d] != rows * rs)
                break;
            if (rows == 1)
                rs = ma.stride[d];
        }
        rows *= bd;
        nb--;
    }
    if (rows != M)
        g.lda = rows == 1 ? g.lda : rs;
    g.m = rows;
    g.n = N;
    g.k = K;
    g.alpha = 1;
    g.beta = 0;
    g.a_buf = abuf, g.b_buf = bbuf, g.c_buf = c;
    g.ldc = N;
    LExpr *bidx[MAX_RANK], *lin;
    Block b = nest_serial(blk_top(k), n->shape.dim, nb, bidx, &lin);
    g.a_off = gemm_off(&ma, bidx, nb);
    g.b_off = gemm_off(&mb, bidx, nb);
    g.c_off = imul(lin, rows * N);
    blk_push(b, ls_gemm(&g));
    k->flops = 2.0 * (double)shape_numel(n->shape) * (double)K;
}

/* ----------------------------------------------------------------------------
 * GATHER, SCATTER_ADD, FOLD */

/* An index read from idx (i32) clamped into [0, dim). */
static LExpr *clamped(Block b, LExpr *v, int64_t dim) {
    LExpr *e = let_i64(b, le_op1(OP_CAST, DT_I64, v));
    e = isel(ilt(e, iconst(0)), iconst(0), isel(ilt(e, iconst(dim)), e, iconst(dim - 1)));
    return let_i64(b, e);
}

static void lower_gather(Lower *L, KCtx *kc, const Node *n) {
    const Node *x = n->in[0], *ix = n->in[1];
    int axis = n->attr.axis, bd = n->attr.batch_dims;
    int ri = ix->shape.rank, ro = n->shape.rank, rx = x->shape.rank;
    int dst = lower_buf_of(L, n);
    int64_t total = shape_numel(n->shape);
    if (total == 0)
        return;
    LExpr *o[MAX_RANK], *lo, *li;
    Block b;
    if (ro <= 1) {
        b = nest_outer(blk_top(kc->k), n->shape.dim, ro, (double)total, &L->opt, o, &lo);
        li = NULL;
    } else {
        b = nest_outer(blk_top(kc->k), n->shape.dim, ro - 1, (double)total, &L->opt, o, &lo);
        b = nest_serial(b, n->shape.dim + ro - 1, 1, o + ro - 1, &li);
    }
    LExpr *lin = li ? iadd(imul(lo, n->shape.dim[ro - 1]), li) : lo;
    LExpr *iv[MAX_RANK], *xv[MAX_RANK];
    for (int d = 0; d < bd; d++)
        iv[d] = o[d];
    for (int d = bd; d < ri; d++)
        iv[d] = o[axis + d - bd];
    LExpr *g = clamped(b, read_at(kc, b, ix, iv, ri, NULL), x->shape.dim[axis]);
    for (int d = 0; d < axis; d++)
        xv[d] = o[d];
    xv[axis] = g;
    for (int d = axis + 1; d < rx; d++)
        xv[d] = o[d - axis - 1 + axis + ri - bd];
    blk_push(b, ls_store(dst, lin, read_at(kc, b, x, xv, rx, NULL), false));
    kc->k->flops = (double)total;
}

/* ALLREDUCE_MEAN: a copy of x into the kernel's buffer, which the runtime's
 * ctx->allreduce then averages over the ranks in place (a no-op copy in one
 * process). */
static void lower_allreduce_mean(Lower *L, KCtx *kc, const Node *n) {
    int r = n->shape.rank;
    int dst = lower_buf_of(L, n);
    int64_t total = shape_numel(n->shape);
    if (total == 0)
        return;
    LExpr *o[MAX_RANK], *lo;
    Block b = nest_outer(blk_top(kc->k), n->shape.dim, r, (double)total, &L->opt, o, &lo);
    blk_push(b, ls_store(dst, lo, read_at(kc, b, n->in[0], o, r, NULL), false));
    ASSERT(L->p->bufs.data[dst].nelem == total);   /* the hook reduces the whole buffer */
    kc->k->flops = (double)total;
    kc->k->allreduce = true;
    kc->k->allreduce_buf = dst;
}

static void lower_scatter_add(Lower *L, KCtx *kc, const Node *n) {
    const Node *ix = n->in[0], *upd = n->in[1];
    int axis = n->attr.axis, bd = n->attr.batch_dims;
    int ri = ix->shape.rank, ru = upd->shape.rank;
    int dst = lower_buf_of(L, n);
    LKernel *k = kc->k;
    zero_fill(L, k, dst, 0, shape_numel(n->shape));
    int64_t total = shape_numel(upd->shape);
    if (total == 0 || shape_numel(n->shape) == 0)
        return;
    k->flops = (double)total;
    /* u = (pre[0..axis), mid[ri-bd], post) */
    int nm = ri - bd, npost = ru - axis - nm;
    const int64_t *ud = upd->shape.dim;
    int64_t outer[MAX_RANK + 1], epre = 1;
    int nout = 0;
    for (int d = 0; d < axis; d++)
        outer[nout++] = ud[d], epre *= ud[d];
    int64_t post[MAX_RANK + 1], tile = 0;
    for (int d = 0; d < npost; d++)
        post[d] = ud[axis + nm + d];
    bool big = (double)total >= (double)L->opt.parallel_min_work;
    if (epre < 2 && big && npost > 0) {
        static const int64_t tiles[] = {256, 128, 64, 32, 16, 8};
        for (int i = 0; i < (int)(sizeof tiles / sizeof *tiles) && !tile; i++)
            if (post[0] % tiles[i] == 0 && post[0] / tiles[i] >= 2)
                tile = tiles[i];
        if (tile) {
            outer[nout++] = post[0] / tile;
            post[0] = tile;
        }
    }
    LExpr *oi[MAX_RANK + 1], *ol, *mi[MAX_RANK], *pi[MAX_RANK + 1], *pl;
    Block b = nest_outer(blk_top(k), outer, nout, (double)total, &L->opt, oi, &ol);
    b = nest_serial(b, ud + axis, nm, mi, NULL);
    b = nest_serial(b, post, npost, pi, &pl);
    LExpr *u[MAX_RANK];
    for (int d = 0; d < axis; d++)
        u[d] = oi[d];
    for (int d = 0; d < nm; d++)
        u[axis + d] = mi[d];
    for (int d = 0; d < npost; d++)
        u[axis + nm + d] = pi[d];
    if (tile)
        u[axis + nm] = iadd(imul(oi[axis], tile), pi[0]);
    LExpr *iv[MAX_RANK];
    for (int d = 0; d < bd; d++)
        iv[d] = u[d];
    for (int d = bd; d < ri; d++)
        iv[d] = u[axis + d - bd];
    const Shape *os = &n->shape;
    LExpr *g = clamped(b, read_at(kc, b, ix, iv, ri, NULL), os->dim[axis]);
    /* out index (pre, g, post), row-major in out */
    LExpr *oidx[MAX_RANK];
    for (int d = 0; d < axis; d++)
        oidx[d] = u[d];
    oidx[axis] = g;
    for (int d = 0; d < npost; d++)
        oidx[axis + 1 + d] = u[axis + nm + d];
    IdxMap om = map_contig(*os);
    LExpr *v = read_at(kc, b, upd, u, ru, NULL);
    blk_push(b, ls_store(dst, map_index(&om, oidx), v, true));
}

/* p = (h + ph - i) / sh when h + ph - i >= 0 divides evenly and p < OH */
static LExpr *fold_src(Block b, LExpr *h, LExpr *i, int64_t pad, int64_t stride, int64_t out, LExpr **valid) {
    LExpr *t = let_i64(b, le_op2(OP_SUB, DT_I64, iadd(h, iconst(pad)), i));
    LExpr *nonneg = ile(iconst(0), t);
    LExpr *tc = let_i64(b, isel(nonneg, t, iconst(0)));
    LExpr *p = stride == 1 ? tc : let_i64(b, idiv(tc, stride));
    LExpr *v = band(nonneg, ilt(p, iconst(out)));
    if (stride != 1)
        v = band(v, le_op2(OP_EQ, DT_BOOL, imod(tc, stride), iconst(0)));
    *valid = v;
    return p;
}

static void lower_fold(Lower *L, KCtx *kc, const Node *n) {
    const Node *cols = n->in[0];
    const Attr *a = &n->attr;
    int64_t N = n->shape.dim[0], C = n->shape.dim[1], H = n->shape.dim[2], W = n->shape.dim[3];
    int64_t OH = cols->shape.dim[2], OW = cols->shape.dim[3];
    int dst = lower_buf_of(L, n);
    LKernel *k = kc->k;
    if (shape_numel(n->shape) == 0)
        return;
    double work = (double)shape_numel(cols->shape);
    k->flops = work;
    int64_t rows[3] = {N, C, H};
    LExpr *ri[3], *rl;
    Block b = nest_outer(blk_top(k), rows, 3, work, &L->opt, ri, &rl);
    LExpr *w0;
    Block bz = open_loop(b, W, &w0);
    blk_push(bz, ls_store(dst, iadd(imul(rl, W), w0), le_const_f(n->dtype, 0), false));
    if (cols->shape.dim[4] == 0 || cols->shape.dim[5] == 0 || OH == 0 || OW == 0)
        return;
    LExpr *i, *j, *w, *vh, *vw;
    Block bi = open_loop(b, a->kh, &i);
    LExpr *p = fold_src(bi, ri[2], i, a->ph, a->sh, OH, &vh);
    Block bj = open_loop(bi, a->kw, &j);
    Block bw = open_loop(bj, W, &w);
    LExpr *q = fold_src(bw, w, j, a->pw, a->sw, OW, &vw);
    LExpr *ci[6] = {ri[0], ri[1], p, q, i, j};
    LExpr *v = read_at(kc, bw, cols, ci, 6, band(vh, vw));
    blk_push(bw, ls_store(dst, iadd(imul(rl, W), w), v, true));
}

void lower_opaque(Lower *L, FKernel *fk, LKernel *k) {
    const Node *n = KROOT(fk);
    ASSERT(L->f->home[n->id] == KDST(fk));
    KCtx kc;
    kctx_init(&kc, L, fk, k, n);
    switch (n->op) {
    case OP_MATMUL: lower_matmul(L, fk, k); break;
    case OP_CONV2D: lower_conv2d(L, &kc, n); break;
    case OP_CONV2D_BWD_INPUT: lower_conv2d_bwd_input(L, &kc, n); break;
    case OP_CONV2D_BWD_WEIGHT: lower_conv2d_bwd_weight(L, &kc, n); break;
    case OP_GATHER: lower_gather(L, &kc, n); break;
    case OP_SCATTER_ADD: lower_scatter_add(L, &kc, n); break;
    case OP_FOLD: lower_fold(L, &kc, n); break;
    case OP_ALLREDUCE_MEAN: lower_allreduce_mean(L, &kc, n); break;
    default: internal_error(__FILE__, __LINE__, "lower: no lowering for %s", op_info[n->op].name);
    }
}
