/* lower_rows.c: a GEMM and its row-wise consumers as one kernel
 * (fuse_rows.c decides which).
 *
 * For X = A @ B of shape [..., M, N], computed in blocks of R rows:
 *
 *   parallel for (batch..., blk) over [..., M / R]:
 *     P[R x N] = A[batch][blk*R .. blk*R + R, :] @ B[batch]     (LS_GEMM, private P)
 *     for each consumer, in order:
 *       elementwise:  for i < R, j < N: dst[row, j] = f(..., P[i*N + j], ...)
 *       reductions:   for i < R: acc = init; for j < N: acc op= f(...); dst[row] = acc
 *
 * with row = the global row (batch..., blk*R + i). A consumer evaluates its
 * inlined tree as lower.c does, at the full index (batch..., blk*R + i, j),
 * except that X is loaded from P (KCtx.rows_src); results of earlier
 * consumers are read from their buffers, within the row this iteration
 * wrote. R is the largest divisor of M up to ROWS_MAX whose rows take at
 * most ROWS_BLOCK_BYTES, so a block stays in L2 between the GEMM writing it
 * and the consumers reading it (a consumer's second pass, the exp after the
 * max, finds it there), and a GEMM of 128 rows packs its B
 * (backend_llvm_gemm.c's PACK_MIN_M): in blocks of 64 rows, q @ k^T at
 * T = 128 ran as dot products along the head size, and a small GPT-2's step
 * measured slower than with the unfused GEMM. Attention at T = 1024 takes
 * 128 rows of 4 KiB.
 */
#include <math.h>
#include <string.h>

#include "lower_int.h"

enum { ROWS_MAX = 128 };
static const int64_t ROWS_BLOCK_BYTES = (int64_t)512 << 10;

int64_t rows_block(int64_t m, int64_t n, DType dt) {
    int64_t row = n * dtype_size(dt);
    if (m <= 0 || row <= 0 || row > ROWS_BLOCK_BYTES)
        return 0;
    int64_t cap = ROWS_BLOCK_BYTES / row < ROWS_MAX ? ROWS_BLOCK_BYTES / row : ROWS_MAX;
    for (int64_t r = cap < m ? cap : m; r >= 1; r--)
        if (m % r == 0)
            return r;
    return 1;
}

/* What one iteration shares with every consumer. */
typedef struct RowsCtx {
    Lower *L;
    LKernel *k;
    const Node *x;
    int r, scratch;
    int64_t rows, n;       /* rows R per block, N per row */
    LExpr *idx[MAX_RANK];  /* batch indices, then the block's first row */
    LExpr *row0;           /* global row of the block's first row */
    Block body;            /* the iteration's body */
} RowsCtx;

/* The consumer's value tree at row i (local), column j. */
static void point(RowsCtx *rc, KCtx *kc, LExpr *i, LExpr *j) {
    for (int d = 0; d < rc->r - 2; d++)
        kc->idx[d] = rc->idx[d];
    kc->idx[rc->r - 2] = iadd(rc->idx[rc->r - 2], i);
    kc->idx[rc->r - 1] = j;
    kc->rows_at = iadd(imul(i, rc->n), j);
}

static void count_uses(KCtx *kc, const FKernel *c) {
    kc->counting = true;
    for (int i = 0; i < c->roots.len; i++) {
        kc->root = c->roots.data[i];
        kc->roots_done = i;
        lower_eval(kc, c->kind == KK_REDUCE ? kc->root->in[0] : kc->root, 0);
    }
    kc->counting = false;
    kc->reshape_top = false;
    kc->perm = NULL;
    kc->roots_done = 0;
}

static double consumer(RowsCtx *rc, FKernel *c) {
    Lower *L = rc->L;
    LKernel *k = rc->k;
    KCtx kc;
    kctx_init(&kc, L, c, k, KROOT(c));
    kc.rows_src = rc->x;
    kc.rows_buf = rc->scratch;
    count_uses(&kc, c);
    int nr = c->roots.len;
    LExpr *i, *j;
    Block rowb = open_loop(rc->body, rc->rows, &i);
    LExpr *row = let_i64(rowb, iadd(rc->row0, i));
    if (c->kind == KK_ELEM) {
        Block colb = open_loop(rowb, rc->n, &j);
        point(rc, &kc, i, j);
        kc.body = colb;
        kc.rootval = xalloc(sizeof(LExpr *) * (size_t)nr);
        lower_root_values(&kc, k, c->roots.data, nr, colb);
        LExpr *at = iadd(imul(row, rc->n), j);
        for (int t = 0; t < nr; t++)
            blk_push(colb, ls_store(lower_buf_of(L, c->roots.data[t]), at, kc.rootval[t], false));
        return (double)shape_numel(rc->x->shape) * (double)(kc.ops + nr);
    }
    int *acc = xalloc(sizeof(int) * (size_t)nr);
    for (int t = 0; t < nr; t++) {
        const Node *rd = c->roots.data[t];
        blk_push(rowb, ls_let(k, rd->dtype, reduce_init(rd->op, rd->dtype), &acc[t]));
    }
    Block colb = open_loop(rowb, rc->n, &j);
    point(rc, &kc, i, j);
    kc.body = colb;
    LExpr **v = xalloc(sizeof(LExpr *) * (size_t)nr);
    for (int t = 0; t < nr; t++) {
        kc.root = c->roots.data[t];
        v[t] = lower_eval(&kc, kc.root->in[0], 0);
    }
    for (int t = 0; t < nr; t++) {
        const Node *rd = c->roots.data[t];
        blk_push(colb, ls_assign(acc[t], reduce_combine(rd->op, rd->dtype, le_var(k, acc[t]), v[t])));
    }
    for (int t = 0; t < nr; t++)
        blk_push(rowb, ls_store(lower_buf_of(L, c->roots.data[t]), row, le_var(k, acc[t]), false));
    return (double)shape_numel(rc->x->shape) * (double)(kc.ops + nr);
}

void lower_rows(Lower *L, FKernel *fk, LKernel *k) {
    const Node *x = KROOT(fk);
    int r = x->shape.rank, nb = r - 2;
    int64_t M = x->shape.dim[r - 2], N = x->shape.dim[r - 1], K = x->in[0]->shape.dim[r - 1];
    int64_t R = rows_block(M, N, x->dtype);
    ASSERT(R > 0 && M % R == 0 && K > 0);
    IdxMap ma, mb;
    LGemm g = {0};
    need_buffer(L, x->in[0], &ma, &g.a_buf);
    need_buffer(L, x->in[1], &mb, &g.b_buf);
    if (!map_matrix(&ma, &g.trans_a, &g.lda) || !map_matrix(&mb, &g.trans_b, &g.ldb))
        internal_error(__FILE__, __LINE__, "lower: matmul %%%d operands are not matrices", x->id);
    RowsCtx rc = {.L = L, .k = k, .x = x, .r = r, .rows = R, .n = N};
    rc.scratch = lower_private(L, xfmt("t%d_rows", x->id), x->dtype, R * N);
    int64_t outer[MAX_RANK];
    memcpy(outer, x->shape.dim, sizeof(int64_t) * (size_t)nb);
    outer[nb] = M / R;
    double gemm_flops = 2.0 * (double)shape_numel(x->shape) * (double)K;
    LExpr *lin;
    rc.body = nest_outer(blk_top(k), outer, nb + 1, gemm_flops, &L->opt, rc.idx, &lin);
    rc.idx[nb] = let_i64(rc.body, imul(rc.idx[nb], R));
    rc.row0 = let_i64(rc.body, imul(lin, R));
    g.m = R;
    g.n = N;
    g.k = K;
    g.alpha = 1;
    g.beta = 0;
    g.c_buf = rc.scratch;
    g.ldc = N;
    g.a_off = iadd(gemm_off(&ma, rc.idx, nb), le_op2(OP_MUL, DT_I64, rc.idx[nb], iconst(ma.stride[r - 2])));
    g.b_off = gemm_off(&mb, rc.idx, nb);
    g.c_off = iconst(0);
    blk_push(rc.body, ls_gemm(&g));
    k->flops = gemm_flops;
    for (int c = 0; c < fk->rows.len; c++)
        k->flops += consumer(&rc, fk->rows.data[c]);
}
