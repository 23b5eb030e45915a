/* lower_opaque.c: hand-written lowerings of the OPAQUE ops.
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
 * CONV2D  y[n, co, p, q] = sum_{ci,i,j} w[co, ci, i, j] * x[n, ci, p*sh+i-ph, q*sw+j-pw]
 *   im2col: col[g, (ci*kh+i)*kw+j, p*OW+q] = x[n0+g, ci, p*sh+i-ph, q*sw+j-pw]
 *   (0 outside x), then per image y[n] (Co x P) = w (Co x CK) @ col[g] (CK x P),
 *   CK = Ci*kh*kw, P = OH*OW. The images are processed in chunks of G so the
 *   column buffer stays under lower_conv_workspace_bytes (64 MiB); each chunk
 *   is a parallel im2col loop over (g, ci, i, j) rows followed by G GEMMs, as
 *   top-level statements (a parallel loop cannot sit inside a chunk loop).
 *   Chunks bound memory and keep the columns warm in cache. A 1x1 stride-1 unpadded
 *   convolution reads x directly as the GEMM operand.
 *
 * CONV2D_BWD_INPUT  dx[n, ci, h, w] = sum over (co, i, j, p, q) with
 *   p*sh+i-ph = h, q*sw+j-pw = w of w[co, ci, i, j] * dy[n, co, p, q]
 *   colg[g] (CK x P) = w^T (CK x Co) @ dy[n] (Co x P), then col2im: each
 *   (image, ci) plane of dx is zeroed and every column entry added to its
 *   pixel (entries that fall in the padding are dropped). Windows overlap, so
 *   the parallel loop runs over planes, which cannot collide.
 *
 * CONV2D_BWD_WEIGHT  dw[co, ci, i, j] = sum_{n,p,q} dy[n, co, p, q] * x[n, ci, p*sh+i-ph, q*sw+j-pw]
 *   dw (Co x CK) is zeroed, then per image dw += dy[n] (Co x P) @ col[g]^T
 *   (P x CK), the columns built by the same chunked im2col as CONV2D.
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

int64_t lower_conv_tile_bytes = (int64_t)256 << 10;

static LExpr *lt(LExpr *a, LExpr *b) { return le_op2(OP_LT, DT_BOOL, a, b); }
static LExpr *le(LExpr *a, LExpr *b) { return le_op2(OP_LE, DT_BOOL, a, b); }
static LExpr *isub(LExpr *a, int64_t b) { return le_op2(OP_SUB, DT_I64, a, iconst(b)); }
static LExpr *idiv(LExpr *a, int64_t b) { return le_op2(OP_DIV, DT_I64, a, iconst(b)); }
static LExpr *imod(LExpr *a, int64_t b) { return le_op2(OP_MOD, DT_I64, a, iconst(b)); }
static LExpr *isel(LExpr *c, LExpr *a, LExpr *b) { return le_op3(OP_WHERE, DT_I64, c, a, b); }

/* 0 <= e < bound, testing only the sides that can fail given e's range */
static LExpr *in_range(LExpr *e, int64_t emin, int64_t emax, int64_t bound) {
    LExpr *v = NULL;
    if (emin < 0)
        v = band(v, le(iconst(0), e));
    if (emax >= bound)
        v = band(v, lt(e, iconst(bound)));
    return v;
}

static LExpr *let_i64(Block b, LExpr *e) {
    if (e->kind == LE_CONST || e->kind == LE_VAR)
        return e;
    int v;
    blk_push(b, ls_let(b.k, DT_I64, e, &v));
    return le_var(b.k, v);
}

/* A top-level loop over independent items, parallel when the kernel's work
 * reaches parallel_min_work (no loop for extent 1: *var is then 0). */
static Block blk_open_loop(LKernel *k, int64_t extent, double work, const LowerOptions *opt, LExpr **var) {
    LExpr *idx[1], *lin;
    Block b = nest_outer(blk_top(k), &extent, 1, work, opt, idx, &lin);
    *var = idx[0];
    return b;
}

/* A serial loop (no loop for extent 1: *var is then 0). */
static Block open_loop(Block b, int64_t extent, LExpr **var) {
    LExpr *idx[1];
    Block r = nest_serial(b, &extent, 1, idx, NULL);
    *var = idx[0];
    return r;
}

/* A materialized operand seen through its views: its buffer and the map of
 * the operand's index space into it. false if it rests on a CONST, IOTA or
 * RAND instead of a buffer. */
static bool operand_buffer(Lower *L, const Node *n, IdxMap *m, int *buf) {
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

static void need_buffer(Lower *L, const Node *n, IdxMap *m, int *buf) {
    if (!operand_buffer(L, n, m, buf))
        internal_error(__FILE__, __LINE__, "lower: GEMM operand %%%d is not in a buffer", n->id);
}

/* Evaluate operand n (views of a buffer or a cheap leaf) at idx, in block b,
 * with an extra validity. */
static LExpr *read_at(KCtx *kc, Block b, const Node *n, LExpr **idx, int rank, LExpr *valid) {
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

static LExpr *gemm_off(const IdxMap *m, LExpr *const *bidx, int nb) {
    LExpr *e = iconst(m->offset);
    for (int d = 0; d < nb; d++)
        if (m->dim[d] != 1 && m->stride[d])
            e = iadd(e, imul(bidx[d], m->stride[d]));
    return e;
}

static void zero_fill(Lower *L, LKernel *k, int buf, int64_t from, int64_t n) {
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
 * convolutions */

typedef struct Conv {
    int64_t N, Ci, H, W, Co, OH, OW, kh, kw, sh, sw, ph, pw, CK, P;
} Conv;

static Conv conv_geom(const Node *n) {
    Conv c;
    const Attr *a = &n->attr;
    c.kh = a->kh, c.kw = a->kw, c.sh = a->sh, c.sw = a->sw, c.ph = a->ph, c.pw = a->pw;
    const Shape *x, *y;
    switch (n->op) {
    case OP_CONV2D: x = &n->in[0]->shape, y = &n->shape; break;
    case OP_CONV2D_BWD_INPUT: x = &n->shape, y = &n->in[0]->shape; break;
    default: x = &n->in[0]->shape, y = &n->in[1]->shape; break;
    }
    c.N = x->dim[0], c.Ci = x->dim[1], c.H = x->dim[2], c.W = x->dim[3];
    c.Co = y->dim[1], c.OH = y->dim[2], c.OW = y->dim[3];
    c.CK = c.Ci * c.kh * c.kw;
    c.P = c.OH * c.OW;
    return c;
}

static bool conv_is_pointwise(const Conv *c) {
    return c->kh == 1 && c->kw == 1 && c->sh == 1 && c->sw == 1 && c->ph == 0 && c->pw == 0;
}

static int64_t divisor_upto(int64_t n, int64_t cap) {
    for (int64_t d = cap < n ? cap : n; d > 1; d--)
        if (n % d == 0)
            return d;
    return 1;
}

/* A tile of the column matrix: RT consecutive output rows of the batch
 * (global row gr = n * OH + oh; either R | OH rows of one image or G | N whole
 * images), PT = RT * OW columns, and Cb input channels, i.e. KC = Cb kh kw
 * rows. A tile lives in an LB_PRIVATE buffer of lower_conv_tile_bytes at
 * most, so the GEMMs that read it find it in L2 (the whole column matrix of a
 * ResNet layer is 58-300 MB at batch 128, measured 2-3x slower through
 * memory, bench/RESULTS.md). */
typedef struct Tile {
    int64_t RT, PT, Cb, KC, nK, ntiles;
} Tile;

static Tile conv_tile(const Conv *c, DType dt, int64_t cols) {
    Tile t;
    int64_t esz = dtype_size(dt), budget = lower_conv_tile_bytes / esz;
    if (c->P >= cols || c->P == 0)
        t.RT = divisor_upto(c->OH, c->OW ? cols / c->OW : 1);
    else
        t.RT = divisor_upto(c->N, cols / c->P) * c->OH;
    /* the columns of one input channel must fit: fewer rows if not */
    while (t.RT > 1 && t.RT * c->OW * c->kh * c->kw > budget) {
        int64_t r = t.RT > c->OH ? divisor_upto(t.RT / c->OH, t.RT / c->OH - 1) * c->OH : divisor_upto(t.RT, t.RT - 1);
        t.RT = r < t.RT ? r : 1;
    }
    t.PT = t.RT * c->OW;
    int64_t per = t.PT * c->kh * c->kw;
    t.Cb = divisor_upto(c->Ci, per ? budget / per : c->Ci);
    if (t.Cb * per * esz > LOOPIR_PRIVATE_MAX_BYTES)
        error_noloc("a convolution with %lld-pixel output rows (kernel %lldx%lld) needs %lld bytes of columns per "
                    "channel, more than the %lld a tile may hold\n---> HINT: split the image into narrower strips",
                    (long long)c->OW, (long long)c->kh, (long long)c->kw, (long long)(per * esz),
                    (long long)LOOPIR_PRIVATE_MAX_BYTES);
    t.KC = t.Cb * c->kh * c->kw;
    t.nK = c->Ci / t.Cb;
    t.ntiles = c->OH ? c->N * c->OH / t.RT : 0;
    return t;
}

/* 0 <= q*sw + j - pw < W exactly for q in [*lo, *hi) */
static void valid_cols(const Conv *c, int64_t j, int64_t *lo, int64_t *hi) {
    int64_t a = c->pw - j, b = c->W - 1 + c->pw - j;   /* a <= q*sw <= b */
    *lo = a <= 0 ? 0 : (a + c->sw - 1) / c->sw;
    *hi = b < 0 ? 0 : b / c->sw + 1;
    if (*hi > c->OW)
        *hi = c->OW;
    if (*lo > *hi)
        *lo = *hi;
}

/* The image and row of global output row gr. */
static void row_of(Block b, const Conv *c, LExpr *gr, LExpr **n, LExpr **oh) {
    *n = c->OH == 1 ? gr : let_i64(b, idiv(gr, c->OH));
    *oh = c->OH == 1 ? iconst(0) : let_i64(b, imod(gr, c->OH));
}

/* The input row h = oh*sh + i - ph of tap row i, clamped into [0, H), and
 * whether it really is inside (NULL: always). Reading the clamped row and
 * masking the value keeps the inner loop's addresses consecutive, which a
 * predicated load would not (LLVM then gathers). */
static LExpr *tap_row(Block b, const Conv *c, LExpr *oh, int64_t i, LExpr **valid) {
    LExpr *h = let_i64(b, isub(iadd(imul(oh, c->sh), iconst(i)), c->ph));
    *valid = in_range(h, -c->ph + i, (c->OH - 1) * c->sh + i - c->ph, c->H);
    if (!*valid)
        return h;
    LExpr *lo = lt(h, iconst(0)), *hi = lt(h, iconst(c->H));
    return let_i64(b, isel(lo, iconst(0), isel(hi, h, iconst(c->H - 1))));
}

/* col[r * PT + lr * OW + q] = x[n, ci0 + cl, oh*sh + i - ph, q*sw + j - pw]
 * (0 outside x) for the rows r = (cl*kh + i)*kw + j of one K block and the
 * tile's rows lr from global row gr0: one loop nest per tap (i, j), with the
 * columns that fall into the padding stored as zeros by loops of their own,
 * so that the copy loop is branch-free and contiguous for stride 1. */
static void im2col_tile(KCtx *kc, Block b, const Conv *c, const Tile *t, const Node *x, int col, LExpr *gr0, LExpr *ci0) {
    DType dt = x->dtype;
    LExpr *cl;
    Block bc = open_loop(b, t->Cb, &cl);
    LExpr *ci = let_i64(bc, iadd(ci0, cl));
    for (int64_t i = 0; i < c->kh; i++)
        for (int64_t j = 0; j < c->kw; j++) {
            LExpr *lr, *n, *oh, *hv, *q;
            Block br = open_loop(bc, t->RT, &lr);
            row_of(br, c, iadd(gr0, lr), &n, &oh);
            LExpr *h = tap_row(br, c, oh, i, &hv);
            LExpr *base = let_i64(br, iadd(imul(iadd(imul(cl, c->kh * c->kw), iconst(i * c->kw + j)), t->PT), imul(lr, c->OW)));
            int64_t lo, hi;
            valid_cols(c, j, &lo, &hi);
            int64_t zr[2][2] = {{0, lo}, {hi, c->OW}};
            for (int z = 0; z < 2; z++)
                if (zr[z][1] > zr[z][0]) {
                    int64_t ext = zr[z][1] - zr[z][0];
                    Block bz = open_loop(br, ext, &q);
                    blk_push(bz, ls_store(col, iadd(base, iadd(q, iconst(zr[z][0]))), le_const_f(dt, 0), false));
                }
            if (hi <= lo)
                continue;
            Block bq = open_loop(br, hi - lo, &q);
            LExpr *qq = iadd(q, iconst(lo));
            LExpr *xi[4] = {n, ci, h, iadd(imul(qq, c->sw), iconst(j - c->pw))};
            LExpr *v = read_at(kc, bq, x, xi, 4, NULL);
            if (hv)
                v = le_op3(OP_WHERE, dt, hv, v, le_const_f(dt, 0));
            blk_push(bq, ls_store(col, iadd(base, qq), v, false));
        }
}

/* y = conv(x, w) with w [Co, CK] contiguous at buffer wbuf + woff and y
 * [N, Co, P] in ybuf: a parallel loop over tiles; each builds its columns
 * K block by K block and multiplies them into y, beta 0 for the first
 * block and 1 after. Tiles of whole images take one GEMM per image. Also
 * the input gradient of a stride-1 convolution, as a convolution of dy with
 * the flipped weights. */
static void conv_forward(Lower *L, KCtx *kc, const Conv *c, const Node *x, int wbuf, int64_t woff, int ybuf,
                         const char *name) {
    LKernel *k = kc->k;
    DType dt = x->dtype;
    Tile t = conv_tile(c, dt, 256);
    int col = lower_private(L, xfmt("%s_col", name), dt, t.KC * t.PT);
    LExpr *it;
    Block bi = blk_open_loop(k, t.ntiles, (double)(c->N * c->Co * c->P * c->CK), &L->opt, &it);
    LExpr *gr0 = let_i64(bi, imul(it, t.RT));
    bool images = t.RT > c->OH;
    LExpr *coff = NULL;
    if (!images) {
        LExpr *n, *oh0;
        row_of(bi, c, gr0, &n, &oh0);
        coff = let_i64(bi, iadd(imul(n, c->Co * c->P), imul(oh0, c->OW)));
    }
    for (int blk = 0; blk < 2 && blk < t.nK; blk++) {
        /* block 0, then a loop over blocks 1..nK-1 */
        LExpr *cb = iconst(0);
        Block bb = bi;
        if (blk == 1 && t.nK > 2)
            bb = open_loop(bi, t.nK - 1, &cb);
        if (blk == 1)
            cb = let_i64(bb, iadd(cb, iconst(1)));
        im2col_tile(kc, bb, c, &t, x, col, gr0, imul(cb, t.Cb));
        LGemm g = {0};
        g.alpha = 1, g.beta = blk;
        g.m = c->Co, g.k = t.KC, g.ldc = c->P;
        g.a_buf = wbuf, g.lda = c->CK, g.a_off = iadd(iconst(woff), imul(cb, t.KC));
        g.b_buf = col, g.ldb = t.PT;
        g.c_buf = ybuf;
        if (!images) {
            g.n = t.PT, g.b_off = iconst(0), g.c_off = coff;
            blk_push(bb, ls_gemm(&g));
        } else {
            LExpr *gi;
            Block bg = open_loop(bb, t.RT / c->OH, &gi);
            g.n = c->P, g.b_off = imul(gi, c->P);
            g.c_off = imul(iadd(imul(it, t.RT / c->OH), gi), c->Co * c->P);
            blk_push(bg, ls_gemm(&g));
        }
    }
}

static void lower_conv2d(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int y = lower_buf_of(L, n);
    IdxMap mw, mx;
    int wbuf, xbuf;
    need_buffer(L, n->in[1], &mw, &wbuf);
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    if (shape_numel(n->shape) == 0)
        return;
    if (c.CK == 0) {
        zero_fill(L, k, y, 0, shape_numel(n->shape));
        return;
    }
    if (conv_is_pointwise(&c) && operand_buffer(L, n->in[0], &mx, &xbuf) && map_contig_from(&mx, 1)) {
        /* the input images are the column matrices: one GEMM per image */
        LExpr *img;
        Block b = blk_open_loop(k, c.N, (double)k->flops, &L->opt, &img);
        LGemm g = {0};
        g.alpha = 1, g.beta = 0;
        g.m = c.Co, g.n = c.P, g.k = c.CK, g.ldc = c.P;
        g.a_buf = wbuf, g.lda = c.CK, g.a_off = iconst(mw.offset);
        g.b_buf = xbuf, g.ldb = c.P, g.b_off = iadd(iconst(mx.offset), imul(img, mx.stride[0]));
        g.c_buf = y, g.c_off = imul(img, c.Co * c.P);
        blk_push(b, ls_gemm(&g));
        return;
    }
    conv_forward(L, kc, &c, n->in[0], wbuf, mw.offset, y, xfmt("t%d", n->id));
}

/* dw (Co x CK) = sum over images of dy[n] (Co x P) @ col[n]^T (P x CK): a
 * parallel loop over blocks of dw (K blocks of columns, times row blocks of
 * Co when there are few K blocks), each zeroing its block and adding the
 * products of every tile, an NT GEMM whose K is the tile's pixels. Tiles of
 * whole images read dy through a channel-major copy dyt [Co, N*P], so that
 * their pixels are one row per channel. */
static void lower_conv2d_bwd_weight(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int dw = lower_buf_of(L, n);
    IdxMap mdy, mx;
    int dybuf, xbuf;
    need_buffer(L, n->in[1], &mdy, &dybuf);
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    if (shape_numel(n->shape) == 0)
        return;
    if (c.P == 0 || c.N == 0) {
        zero_fill(L, k, dw, 0, shape_numel(n->shape));
        return;
    }
    bool direct = conv_is_pointwise(&c) && operand_buffer(L, n->in[0], &mx, &xbuf) && map_contig_from(&mx, 1);
    Tile t = conv_tile(&c, dt, 1024);
    if (direct) {
        t.RT = c.OH, t.PT = c.P, t.ntiles = c.N;
        t.Cb = divisor_upto(c.Ci, c.Ci >= 8 ? c.Ci / 8 : 1);
        t.KC = t.Cb, t.nK = c.Ci / t.Cb;
    }
    bool images = t.RT > c.OH;
    int dyt = dybuf;
    int64_t dyt_off = mdy.offset, dyt_ld = c.P, NP = c.N * c.P;
    if (images) {
        /* dyt[co, n*P + p] = dy[n, co, p] */
        dyt = lower_scratch(L, xfmt("t%d_dyt", n->id), dt, c.Co * NP);
        int64_t rows[2] = {c.N, c.Co};
        LExpr *ri[2], *rl, *p;
        Block b = nest_outer(blk_top(k), rows, 2, (double)(c.Co * NP), &L->opt, ri, &rl);
        Block bp = open_loop(b, c.P, &p);
        LExpr *src = iadd(iadd(iconst(mdy.offset), imul(ri[0], mdy.stride[0])), iadd(imul(ri[1], c.P), p));
        blk_push(bp, ls_store(dyt, iadd(iadd(imul(ri[1], NP), imul(ri[0], c.P)), p), le_load(L->p, dybuf, src, NULL), false));
        dyt_off = 0, dyt_ld = NP;
    }
    /* rows of dw per item: all of Co, or blocks when K blocks alone give
     * fewer than 8 items for the pool to balance */
    int64_t MB = c.Co;
    if (t.nK < 8)
        MB = c.Co / divisor_upto(c.Co, (8 + t.nK - 1) / t.nK);
    int64_t nMB = c.Co / MB;
    int col = direct ? -1 : lower_private(L, xfmt("t%d_col", n->id), dt, t.KC * t.PT);
    LExpr *it;
    Block bi = blk_open_loop(k, t.nK * nMB, (double)k->flops, &L->opt, &it);
    LExpr *cb = nMB == 1 ? it : let_i64(bi, idiv(it, nMB));
    LExpr *mb = nMB == 1 ? iconst(0) : let_i64(bi, imod(it, nMB));
    LExpr *dwoff = let_i64(bi, iadd(imul(mb, MB * c.CK), imul(cb, t.KC)));
    LExpr *zr, *zc;
    Block bz = open_loop(open_loop(bi, MB, &zr), t.KC, &zc);
    blk_push(bz, ls_store(dw, iadd(dwoff, iadd(imul(zr, c.CK), zc)), le_const_f(dt, 0), false));
    LExpr *ti;
    Block bt = open_loop(bi, t.ntiles, &ti);
    LExpr *gr0 = let_i64(bt, imul(ti, t.RT));
    LGemm g = {0};
    g.alpha = 1, g.beta = 1;
    g.m = MB, g.n = t.KC, g.k = t.PT;
    g.trans_b = true;
    g.c_buf = dw, g.ldc = c.CK, g.c_off = dwoff;
    g.a_buf = dyt, g.lda = dyt_ld;
    if (images) {
        g.a_off = iadd(imul(mb, MB * NP), imul(ti, t.PT));
    } else {
        LExpr *img, *oh0;
        row_of(bt, &c, gr0, &img, &oh0);
        g.a_off = iadd(iadd(iconst(dyt_off), imul(img, mdy.stride[0])), iadd(imul(mb, MB * c.P), imul(oh0, c.OW)));
    }
    if (direct) {
        /* x[n] is the column matrix: rows ci, columns p */
        g.b_buf = xbuf, g.ldb = c.P;
        g.b_off = iadd(iadd(iconst(mx.offset), imul(ti, mx.stride[0])), imul(cb, t.KC * c.P));
    } else {
        im2col_tile(kc, bt, &c, &t, n->in[0], col, gr0, imul(cb, t.Cb));
        g.b_buf = col, g.ldb = t.PT, g.b_off = iconst(0);
    }
    blk_push(bt, ls_gemm(&g));
}

/* dx for stride 1 with 0 <= pad < kernel: a convolution of dy with the
 * weights flipped and transposed, wf[ci, co, i, j] = w[co, ci, kh-1-i,
 * kw-1-j], padded by kernel - 1 - pad; no scatter. */
static void conv_bwd_input_flipped(Lower *L, KCtx *kc, const Node *n, const Conv *c, int wbuf, int64_t woff, int dx) {
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int64_t kk = c->kh * c->kw;
    int wf = lower_scratch(L, xfmt("t%d_wflip", n->id), dt, c->Ci * c->Co * kk);
    int64_t dims[4] = {c->Ci, c->Co, c->kh, c->kw};
    LExpr *wi[4], *wl;
    Block b = nest_outer(blk_top(k), dims, 4, (double)(c->Ci * c->Co * kk), &L->opt, wi, &wl);
    LExpr *fi = le_op2(OP_SUB, DT_I64, iconst(c->kh - 1), wi[2]), *fj = le_op2(OP_SUB, DT_I64, iconst(c->kw - 1), wi[3]);
    LExpr *src = iadd(iconst(woff), iadd(imul(iadd(imul(wi[1], c->Ci), wi[0]), kk), iadd(imul(fi, c->kw), fj)));
    blk_push(b, ls_store(wf, wl, le_load(L->p, wbuf, src, NULL), false));
    Conv f = *c;
    f.Ci = c->Co, f.H = c->OH, f.W = c->OW;
    f.Co = c->Ci, f.OH = c->H, f.OW = c->W;
    f.ph = c->kh - 1 - c->ph, f.pw = c->kw - 1 - c->pw;
    f.CK = f.Ci * kk;
    f.P = f.OH * f.OW;
    conv_forward(L, kc, &f, n->in[0], wf, 0, dx, xfmt("t%d", n->id));
}

/* dx in general: per image (a parallel loop; an image's dx belongs to its
 * iteration alone), zero dx[n], then per tile of rows and K block the
 * columns colg (KC x PT) = w^T (KC x Co) @ dy[n] (Co x PT) are added to
 * their pixels (col2im; entries in the padding add 0 to a clamped pixel). */
static void lower_conv2d_bwd_input(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int dx = lower_buf_of(L, n);
    IdxMap mdy, mw;
    int dybuf, wbuf;
    need_buffer(L, n->in[0], &mdy, &dybuf);
    need_buffer(L, n->in[1], &mw, &wbuf);
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    if (shape_numel(n->shape) == 0)
        return;
    if (c.Co == 0 || c.P == 0) {
        zero_fill(L, k, dx, 0, shape_numel(n->shape));
        return;
    }
    LGemm g = {0};
    g.alpha = 1;
    g.trans_a = true, g.a_buf = wbuf, g.lda = c.CK;
    g.b_buf = dybuf, g.ldb = c.P;
    g.k = c.Co;
    if (conv_is_pointwise(&c)) {
        LExpr *img;
        Block b = blk_open_loop(k, c.N, (double)k->flops, &L->opt, &img);
        g.m = c.CK, g.n = c.P, g.a_off = iconst(mw.offset);
        g.b_off = iadd(iconst(mdy.offset), imul(img, mdy.stride[0]));
        g.c_buf = dx, g.ldc = c.P, g.c_off = imul(img, c.Ci * c.P);
        blk_push(b, ls_gemm(&g));
        return;
    }
    if (c.sh == 1 && c.sw == 1 && c.ph >= 0 && c.ph < c.kh && c.pw >= 0 && c.pw < c.kw) {
        conv_bwd_input_flipped(L, kc, n, &c, wbuf, mw.offset, dx);
        return;
    }
    Tile t = conv_tile(&c, dt, 256);
    if (t.RT > c.OH)
        t.RT = c.OH, t.PT = c.P;
    int64_t HW = c.H * c.W, tiles = c.OH / t.RT;
    int col = lower_private(L, xfmt("t%d_col", n->id), dt, t.KC * t.PT);
    LExpr *img;
    Block bi = blk_open_loop(k, c.N, (double)k->flops, &L->opt, &img);
    LExpr *base = let_i64(bi, imul(img, c.Ci * HW));
    LExpr *z;
    Block bz = open_loop(bi, c.Ci * HW, &z);
    blk_push(bz, ls_store(dx, iadd(base, z), le_const_f(dt, 0), false));
    LExpr *ti, *cb;
    Block bt = open_loop(open_loop(bi, tiles, &ti), t.nK, &cb);
    LExpr *oh0 = let_i64(bt, imul(ti, t.RT));
    g.m = t.KC, g.n = t.PT, g.beta = 0;
    g.a_off = iadd(iconst(mw.offset), imul(cb, t.KC));
    g.b_off = iadd(iadd(iconst(mdy.offset), imul(img, mdy.stride[0])), imul(oh0, c.OW));
    g.c_buf = col, g.ldc = t.PT, g.c_off = iconst(0);
    blk_push(bt, ls_gemm(&g));
    /* col2im of the tile: row r = (cl*kh + i)*kw + j, columns lr*OW + q */
    LExpr *cl;
    Block bc = open_loop(bt, t.Cb, &cl);
    LExpr *plane = let_i64(bc, iadd(base, imul(iadd(imul(cb, t.Cb), cl), HW)));
    for (int64_t i = 0; i < c.kh; i++)
        for (int64_t j = 0; j < c.kw; j++) {
            int64_t lo, hi;
            valid_cols(&c, j, &lo, &hi);
            if (hi <= lo)
                continue;
            LExpr *lr, *hv, *q;
            Block br = open_loop(bc, t.RT, &lr);
            LExpr *h = tap_row(br, &c, iadd(oh0, lr), i, &hv);
            LExpr *crow = let_i64(br, iadd(imul(iadd(imul(cl, c.kh * c.kw), iconst(i * c.kw + j)), t.PT), imul(lr, c.OW)));
            LExpr *drow = let_i64(br, iadd(plane, imul(h, c.W)));
            Block bq = open_loop(br, hi - lo, &q);
            LExpr *qq = iadd(q, iconst(lo));
            LExpr *v = le_load(L->p, col, iadd(crow, qq), NULL);
            if (hv)
                v = le_op3(OP_WHERE, dt, hv, v, le_const_f(dt, 0));
            blk_push(bq, ls_store(dx, iadd(drow, iadd(imul(qq, c.sw), iconst(j - c.pw))), v, true));
        }
}

/* ----------------------------------------------------------------------------
 * GATHER, SCATTER_ADD, FOLD */

/* An index read from idx (i32) clamped into [0, dim). */
static LExpr *clamped(Block b, LExpr *v, int64_t dim) {
    LExpr *e = let_i64(b, le_op1(OP_CAST, DT_I64, v));
    e = isel(lt(e, iconst(0)), iconst(0), isel(lt(e, iconst(dim)), e, iconst(dim - 1)));
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
    LExpr *nonneg = le(iconst(0), t);
    LExpr *tc = let_i64(b, isel(nonneg, t, iconst(0)));
    LExpr *p = stride == 1 ? tc : let_i64(b, idiv(tc, stride));
    LExpr *v = band(nonneg, lt(p, iconst(out)));
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
    default: internal_error(__FILE__, __LINE__, "lower: no lowering for %s", op_info[n->op].name);
    }
}
