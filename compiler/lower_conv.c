/* lower_conv.c: CONV2D, CONV2D_BWD_INPUT and CONV2D_BWD_WEIGHT as GEMMs.
 *
 * Notation: x [N, Ci, H, W], w [Co, Ci, kh, kw], y [N, Co, OH, OW], P = OH*OW,
 * CK = Ci*kh*kw; the column matrix of image n is COL[n] (CK x P) with
 * COL[n][(ci*kh+i)*kw+j][p*OW+q] = x[n, ci, p*sh+i-ph, q*sw+j-pw] (0 outside),
 * so that y[n] = w @ COL[n], dx[n] = col2im(w^T @ dy[n]) and
 * dw = sum_n dy[n] @ COL[n]^T.
 *
 * For the LLVM backend (the default) a convolution is a parallel loop over
 * items (images, pixel tiles or blocks of dw) whose GEMMs run inside the
 * iteration, so nothing is materialized beyond what fits in L2:
 *  - stride 1 keeping the width (3x3 pad 1, ResNet's convolutions): the
 *    GEMMs read COL in place as an im2col operand (loopir.h); the input
 *    gradient is the forward convolution of dy with the flipped weights;
 *  - otherwise each item builds tiles of COL (256 KiB) in an LB_PRIVATE
 *    buffer, and the strided input gradient adds w^T @ dy tiles back into
 *    its image (col2im);
 *  - dw is summed by items that own blocks of it, or for a small dw in a
 *    few partial copies added up in a fixed order afterwards: the same at
 *    every thread count;
 *  - small images (deep layers) multiply tiles of several images at once
 *    into a channel-major copy of y, copied into y at the end.
 * Measured on the ResNet-18 of bench/ (RESULTS.md): from 5-20 GFLOP/s with
 * per-image OpenBLAS calls to 60-130 GFLOP/s per core (peak 170).
 *
 * LowerOptions.top_gemms (backends that launch GEMMs from the host, CUDA)
 * keeps every GEMM at the top level of its kernel over workspace buffers:
 * COL of a chunk of images (lower_conv_chunk_bytes) built by a parallel
 * loop, then one GEMM per image.
 */
#include <string.h>

#include "lower_int.h"

int64_t lower_conv_tile_bytes = (int64_t)256 << 10;
int64_t lower_conv_chunk_bytes = (int64_t)64 << 20;

/* ----------------------------------------------------------------------------
 * geometry */

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

/* ----------------------------------------------------------------------------
 * columns in the workspace, GEMMs at the top level (LowerOptions.top_gemms)
 *
 * COL of a chunk of G images (at most lower_conv_chunk_bytes) is built by a
 * parallel loop over (g, ci, i, j) rows, then G GEMMs run, as top-level
 * statements. A 1x1 stride-1 unpadded convolution reads x directly. The
 * input gradient's columns are added back per (image, channel) plane, which
 * windows cannot cross. */

static int64_t conv_chunk(const Conv *c, DType dt) {
    int64_t per = c->CK * c->P * dtype_size(dt);
    int64_t g = per ? lower_conv_chunk_bytes / per : c->N;
    if (g < 1)
        g = 1;
    return g < c->N ? g : c->N;
}

/* col[g, (ci*kh+i)*kw+j, p*OW+q] = x[n0+g, ci, p*sh+i-ph, q*sw+j-pw] for the
 * G images from n0: a parallel loop over (g, ci, i, j) rows. */
static void im2col_ws(KCtx *kc, const Conv *c, const Node *x, int col, int64_t n0, int64_t G) {
    LKernel *k = kc->k;
    int64_t rows[4] = {G, c->Ci, c->kh, c->kw};
    LExpr *ri[4], *rl;
    double work = (double)(G * c->CK * c->P);
    Block b = nest_outer(blk_top(k), rows, 4, work, &kc->L->opt, ri, &rl);
    LExpr *p, *q;
    Block bp = open_loop(b, c->OH, &p);
    LExpr *h = let_i64(bp, isub(iadd(imul(p, c->sh), ri[2]), c->ph));
    LExpr *vh = in_range(h, -c->ph, (c->OH - 1) * c->sh + c->kh - 1 - c->ph, c->H);
    Block bq = open_loop(bp, c->OW, &q);
    LExpr *w = isub(iadd(imul(q, c->sw), ri[3]), c->pw);
    LExpr *vw = in_range(w, -c->pw, (c->OW - 1) * c->sw + c->kw - 1 - c->pw, c->W);
    LExpr *xi[4] = {iadd(ri[0], iconst(n0)), ri[1], h, w};
    LExpr *v = read_at(kc, bq, x, xi, 4, band(vh, vw));
    LExpr *dst = iadd(imul(rl, c->P), iadd(imul(p, c->OW), q));
    blk_push(bq, ls_store(col, dst, v, false));
}

/* What every convolution kernel does before its GEMMs: count its flops,
 * and settle an empty output (nothing) or an empty sum (sum_len == 0:
 * zeros into out). False when that was all. */
static bool conv_prologue(Lower *L, KCtx *kc, const Node *n, const Conv *c, int out, int64_t sum_len) {
    kc->k->flops = 2.0 * (double)(c->N * c->Co * c->P * c->CK);
    int64_t numel = shape_numel(n->shape);
    if (numel && !sum_len)
        zero_fill(L, kc->k, out, 0, numel);
    return numel && sum_len;
}

static void conv2d_ws(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int y = lower_buf_of(L, n);
    IdxMap mw, mx;
    int wbuf, xbuf;
    need_buffer(L, n->in[1], &mw, &wbuf);
    LGemm g = {0};
    g.alpha = 1, g.beta = 0, g.c_buf = y;
    g.m = c.Co, g.n = c.P, g.k = c.CK, g.ldc = c.P;
    g.a_buf = wbuf, g.lda = c.CK, g.a_off = iconst(mw.offset);
    if (!conv_prologue(L, kc, n, &c, y, c.CK))
        return;
    if (conv_is_pointwise(&c) && operand_buffer(L, n->in[0], &mx, &xbuf) && map_contig_from(&mx, 1)) {
        LExpr *img;
        Block b = open_loop(blk_top(k), c.N, &img);
        g.b_buf = xbuf, g.ldb = c.P;
        g.b_off = iadd(iconst(mx.offset), imul(img, mx.stride[0]));
        g.c_off = imul(img, c.Co * c.P);
        blk_push(b, ls_gemm(&g));
        return;
    }
    int64_t G = conv_chunk(&c, n->dtype);
    int col = lower_scratch(L, xfmt("t%d_col", n->id), n->dtype, G * c.CK * c.P);
    g.b_buf = col, g.ldb = c.P;
    for (int64_t n0 = 0; n0 < c.N; n0 += G) {
        int64_t cnt = c.N - n0 < G ? c.N - n0 : G;
        im2col_ws(kc, &c, n->in[0], col, n0, cnt);
        LExpr *gi;
        Block b = open_loop(blk_top(k), cnt, &gi);
        g.b_off = imul(gi, c.CK * c.P);
        g.c_off = imul(iadd(gi, iconst(n0)), c.Co * c.P);
        blk_push(b, ls_gemm(&g));
    }
}

static void conv2d_bwd_weight_ws(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int dw = lower_buf_of(L, n);
    IdxMap mdy, mx;
    int dybuf, xbuf;
    need_buffer(L, n->in[1], &mdy, &dybuf);
    zero_fill(L, k, dw, 0, shape_numel(n->shape));
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    if (c.P == 0 || c.CK == 0 || c.Co == 0)
        return;
    LGemm g = {0};
    g.alpha = 1, g.beta = 1, g.c_buf = dw, g.c_off = iconst(0);
    g.m = c.Co, g.n = c.CK, g.k = c.P, g.ldc = c.CK;
    g.a_buf = dybuf, g.lda = c.P;
    g.trans_b = true;
    if (conv_is_pointwise(&c) && operand_buffer(L, n->in[0], &mx, &xbuf) && map_contig_from(&mx, 1)) {
        LExpr *img;
        Block b = open_loop(blk_top(k), c.N, &img);
        g.a_off = iadd(iconst(mdy.offset), imul(img, mdy.stride[0]));
        g.b_buf = xbuf, g.ldb = c.P;
        g.b_off = iadd(iconst(mx.offset), imul(img, mx.stride[0]));
        blk_push(b, ls_gemm(&g));
        return;
    }
    int64_t G = conv_chunk(&c, n->dtype);
    int col = lower_scratch(L, xfmt("t%d_col", n->id), n->dtype, G * c.CK * c.P);
    g.b_buf = col, g.ldb = c.P;
    for (int64_t n0 = 0; n0 < c.N; n0 += G) {
        int64_t cnt = c.N - n0 < G ? c.N - n0 : G;
        im2col_ws(kc, &c, n->in[0], col, n0, cnt);
        LExpr *gi;
        Block b = open_loop(blk_top(k), cnt, &gi);
        g.a_off = iadd(iconst(mdy.offset), imul(iadd(gi, iconst(n0)), mdy.stride[0]));
        g.b_off = imul(gi, c.CK * c.P);
        blk_push(b, ls_gemm(&g));
    }
}

static void conv2d_bwd_input_ws(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int dx = lower_buf_of(L, n);
    IdxMap mdy, mw;
    int dybuf, wbuf;
    need_buffer(L, n->in[0], &mdy, &dybuf);
    need_buffer(L, n->in[1], &mw, &wbuf);
    if (!conv_prologue(L, kc, n, &c, dx, c.Co * c.P))
        return;
    LGemm g = {0};
    g.alpha = 1, g.beta = 0;
    g.trans_a = true, g.a_buf = wbuf, g.a_off = iconst(mw.offset), g.lda = c.CK;
    g.b_buf = dybuf, g.ldb = c.P;
    g.m = c.CK, g.n = c.P, g.k = c.Co;
    if (conv_is_pointwise(&c)) {
        LExpr *img;
        Block b = open_loop(blk_top(k), c.N, &img);
        g.c_buf = dx, g.ldc = c.P;
        g.b_off = iadd(iconst(mdy.offset), imul(img, mdy.stride[0]));
        g.c_off = imul(img, c.Ci * c.P);
        blk_push(b, ls_gemm(&g));
        return;
    }
    int64_t G = conv_chunk(&c, n->dtype);
    int col = lower_scratch(L, xfmt("t%d_col", n->id), n->dtype, G * c.CK * c.P);
    g.c_buf = col, g.ldc = c.P;
    int64_t HW = c.H * c.W;
    for (int64_t n0 = 0; n0 < c.N; n0 += G) {
        int64_t cnt = c.N - n0 < G ? c.N - n0 : G;
        LExpr *gi;
        Block b = open_loop(blk_top(k), cnt, &gi);
        g.b_off = iadd(iconst(mdy.offset), imul(iadd(gi, iconst(n0)), mdy.stride[0]));
        g.c_off = imul(gi, c.CK * c.P);
        blk_push(b, ls_gemm(&g));
        /* col2im as a gather: one iteration per pixel of dx (g, ci, h, w), all
         * independent, summing the kh x kw column entries that land on it: the
         * entry (i, j) of output position (p, q) with p sh + i - ph = h. (A
         * scatter per (g, ci) plane gave a GPU a few thousand threads of
         * 9 x OH x OW adds each.) */
        int64_t px[4] = {cnt, c.Ci, c.H, c.W};
        LExpr *xi[4], *xl;
        Block bp = nest_outer(blk_top(k), px, 4, (double)(cnt * c.CK * c.P), &L->opt, xi, &xl);
        LExpr *dst = let_i64(bp, iadd(xl, iconst(n0 * c.Ci * HW)));
        blk_push(bp, ls_store(dx, dst, le_const_f(n->dtype, 0), false));
        int64_t kk[2] = {c.kh, c.kw};
        LExpr *ij[2];
        Block bij = nest_serial(bp, kk, 2, ij, NULL);
        LExpr *hp = let_i64(bij, le_op2(OP_SUB, DT_I64, iadd(xi[2], iconst(c.ph)), ij[0]));
        LExpr *wp = let_i64(bij, le_op2(OP_SUB, DT_I64, iadd(xi[3], iconst(c.pw)), ij[1]));
        /* index division wants a non-negative dividend: a negative hp (no
         * output row) divides as 0 and is invalid anyway */
        LExpr *hn = c.sh == 1 ? hp : let_i64(bij, isel(ile(iconst(0), hp), hp, iconst(0)));
        LExpr *wn = c.sw == 1 ? wp : let_i64(bij, isel(ile(iconst(0), wp), wp, iconst(0)));
        LExpr *p = c.sh == 1 ? hp : let_i64(bij, idiv(hn, c.sh)), *q = c.sw == 1 ? wp : let_i64(bij, idiv(wn, c.sw));
        /* with hp >= 0, hp % sh lies in [0, sh): <= 0 means divisible */
        LExpr *valid = band(band(ile(iconst(0), hp), ilt(p, iconst(c.OH))), band(ile(iconst(0), wp), ilt(q, iconst(c.OW))));
        if (c.sh > 1)
            valid = band(valid, ile(imod(hn, c.sh), iconst(0)));
        if (c.sw > 1)
            valid = band(valid, ile(imod(wn, c.sw), iconst(0)));
        /* column row (ci*kh + i)*kw + j of image g; an invalid entry reads the
         * column's first element and adds 0 */
        LExpr *crow = iadd(imul(iadd(imul(xi[1], c.kh), ij[0]), c.kw), ij[1]);
        LExpr *cidx = iadd(imul(iadd(imul(xi[0], c.CK), crow), c.P), iadd(imul(p, c.OW), q));
        LExpr *v = le_load(L->p, col, isel(valid, cidx, iconst(0)), NULL);
        blk_push(bij, ls_store(dx, dst, le_op3(OP_WHERE, n->dtype, valid, v, le_const_f(n->dtype, 0)), true));
    }
}


/* ----------------------------------------------------------------------------
 * GEMMs inside parallel loops (the default) */

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
    LExpr *lo = ilt(h, iconst(0)), *hi = ilt(h, iconst(c->H));
    return let_i64(b, isel(lo, iconst(0), isel(hi, h, iconst(c->H - 1))));
}

/* The columns of convolution c can be an im2col GEMM operand read in place
 * (loopir.h: stride 1, the width kept). Strided ones use private tiles: a
 * gathering operand measured 3x slower (bench/RESULTS.md). */
static bool im2col_ok(const Conv *c) { return c->sh == 1 && c->sw == 1 && c->OW == c->W && 2 * c->pw == c->kw - 1; }

/* Whether x can be read at (n, c, h, w) with w outside [0, W) as long as
 * h*W + w stays inside [0, H*W): every value it reads comes from a buffer
 * whose planes are contiguous rows, or does not vary along h and w (a batch
 * norm's per-channel factors). Then such a read lands inside the plane. */
static bool planes_flat(Lower *L, const Node *x, int depth) {
    IdxMap m;
    int buf;
    if (operand_buffer(L, x, &m, &buf)) {
        if (m.ncons || m.rank != 4)
            return false;
        return (m.stride[3] == 1 && (m.stride[2] == m.dim[3] || m.dim[2] == 1)) || (m.stride[2] == 0 && m.stride[3] == 0);
    }
    if (depth > 32)
        return false;
    if (x->op == OP_EXPAND)
        return x->in[0]->shape.rank == 4 && x->in[0]->shape.dim[2] == 1 && x->in[0]->shape.dim[3] == 1;
    if (x->op == OP_CONST)
        return true;
    if (op_info[x->op].kind != OK_ELEM)
        return false;
    for (int i = 0; i < x->nin; i++)
        if (!planes_flat(L, x->in[i], depth + 1))
            return false;
    return true;
}

/* im2col_tile for a tile of whole images when the convolution has stride 1
 * and keeps the size: row (cl, i, j) of image g is x's plane shifted by
 * off = (i - ph)*W + (j - pw), zero where the window leaves the image, so
 * it is one loop over the image's pixels masked by column: a loop per
 * output row (4-14 pixels in ResNet's deep layers) cost more than the
 * copying. */
static void im2col_planes(KCtx *kc, Block b, const Conv *c, const Tile *t, const Node *x, int col, LExpr *gr0, LExpr *ci0) {
    DType dt = x->dtype;
    int64_t P = c->P, W = c->W, taps = c->kh * c->kw;
    LExpr *n0 = let_i64(b, idiv(gr0, c->OH));
    LExpr *cl, *gi, *p;
    Block bc = open_loop(b, t->Cb, &cl);
    LExpr *ci = let_i64(bc, iadd(ci0, cl));
    Block bg = open_loop(bc, t->RT / c->OH, &gi);
    LExpr *img = let_i64(bg, iadd(n0, gi));
    for (int64_t i = 0; i < c->kh; i++)
        for (int64_t j = 0; j < c->kw; j++) {
            int64_t off = (i - c->ph) * W + (j - c->pw);
            int64_t lo = (c->ph - i > 0 ? c->ph - i : 0) * W, hi = (c->H + c->ph - i < c->OH ? c->H + c->ph - i : c->OH) * W;
            if (lo < -off)
                lo = -off;
            if (hi > c->H * W - off)
                hi = c->H * W - off;
            if (hi < lo)
                hi = lo;
            LExpr *base = let_i64(bg, iadd(imul(iadd(imul(cl, taps), iconst(i * c->kw + j)), t->PT), imul(gi, P)));
            int64_t zr[2][2] = {{0, lo}, {hi, P}};
            for (int z = 0; z < 2; z++)
                if (zr[z][1] > zr[z][0]) {
                    Block bz = open_loop(bg, zr[z][1] - zr[z][0], &p);
                    blk_push(bz, ls_store(col, iadd(base, iadd(p, iconst(zr[z][0]))), le_const_f(dt, 0), false));
                }
            if (hi <= lo)
                continue;
            Block bp = open_loop(bg, hi - lo, &p);
            LExpr *pp = iadd(p, iconst(lo));
            LExpr *xi[4] = {img, ci, iadd(idiv(pp, W), iconst(i - c->ph)), iadd(imod(pp, W), iconst(j - c->pw))};
            blk_push(bp, ls_store(col, iadd(base, pp), read_at(kc, bp, x, xi, 4, NULL), false));
            /* then zeros into the columns whose window leaves the image
             * sideways (those entries read a neighbouring row): a masked
             * copy loop computes p % W per element and stays scalar */
            int64_t wz[2] = {c->pw - j > 0 ? c->pw - j : 0, j - c->pw > 0 ? j - c->pw : 0};
            for (int side = 0; side < 2; side++)
                for (int64_t e = 0; e < wz[side] && e < W; e++) {
                    LExpr *r;
                    Block br = open_loop(bg, c->OH, &r);
                    int64_t wc = side ? W - 1 - e : e;
                    blk_push(br, ls_store(col, iadd(base, iadd(imul(r, W), iconst(wc))), le_const_f(dt, 0), false));
                }
        }
}

/* col[r * PT + lr * OW + q] = x[n, ci0 + cl, oh*sh + i - ph, q*sw + j - pw]
 * (0 outside x) for the rows r = (cl*kh + i)*kw + j of one K block and the
 * tile's rows lr from global row gr0: one loop nest per tap (i, j), with the
 * columns that fall into the padding stored as zeros by loops of their own,
 * so that the copy loop is branch-free and contiguous for stride 1. */
static void im2col_tile(KCtx *kc, Block b, const Conv *c, const Tile *t, const Node *x, int col, LExpr *gr0, LExpr *ci0) {
    if (t->RT % c->OH == 0 && im2col_ok(c) && planes_flat(kc->L, x, 0)) {
        im2col_planes(kc, b, c, t, x, col, gr0, ci0);
        return;
    }
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
 * [N, Co, P] in ybuf, x any view (the general form): a parallel loop over
 * tiles; each builds its columns K block by K block into a private buffer
 * and multiplies them into y, beta 0 for the first block and 1 after.
 * Tiles of whole images (small images, deep layers) multiply into a
 * channel-major copy yc [Co, N*P], one GEMM per tile as wide as its
 * images, which a last loop copies into y: a GEMM per 4x4 image is 16
 * columns wide and ran at half the speed (bench/RESULTS.md). */
static void conv_forward_tiles(Lower *L, KCtx *kc, const Conv *c, const Node *x, int wbuf, int64_t woff, int ybuf,
                               const char *name) {
    LKernel *k = kc->k;
    DType dt = x->dtype;
    Tile t = conv_tile(c, dt, 256);
    int col = lower_private(L, xfmt("%s_col", name), dt, t.KC * t.PT);
    bool images = t.RT > c->OH;
    int64_t NP = c->N * c->P;
    int yc = images ? lower_scratch(L, xfmt("%s_cn", name), dt, c->Co * NP) : ybuf;
    LExpr *it;
    Block bi = blk_open_loop(k, t.ntiles, (double)(c->N * c->Co * c->P * c->CK), &L->opt, &it);
    LExpr *gr0 = let_i64(bi, imul(it, t.RT));
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
        g.b_buf = col, g.ldb = t.PT, g.b_off = iconst(0);
        g.c_buf = yc, g.n = t.PT;
        if (!images)
            g.c_off = coff;
        else
            g.ldc = NP, g.c_off = imul(it, t.PT);
        blk_push(bb, ls_gemm(&g));
    }
    if (images) {
        /* y[n, co, p] = yc[co, n*P + p] */
        int64_t rows[2] = {c->N, c->Co};
        LExpr *ri[2], *rl, *p;
        Block b = nest_outer(blk_top(k), rows, 2, (double)(c->Co * NP), &L->opt, ri, &rl);
        Block bp = open_loop(b, c->P, &p);
        LExpr *src = iadd(iadd(imul(ri[1], NP), imul(ri[0], c->P)), p);
        blk_push(bp, ls_store(ybuf, iadd(imul(rl, c->P), p), le_load(L->p, yc, src, NULL), false));
    }
}


static LIm2col *im2col_of(const Conv *c, int64_t channels, LExpr *p0) {
    LIm2col *ic = xalloc(sizeof *ic);
    ic->c = channels, ic->h = c->H, ic->w = c->W;
    ic->kh = c->kh, ic->kw = c->kw, ic->ph = c->ph, ic->pw = c->pw;
    ic->oh = c->OH;
    ic->p0 = p0;
    return ic;
}

/* The images of x (a view of a buffer): direct when each image is
 * contiguous, as an im2col GEMM operand reads them. */
static bool images_direct(Lower *L, const Node *x, IdxMap *m, int *buf) {
    return operand_buffer(L, x, m, buf) && map_contig_from(m, 1);
}

/* y = conv(x, w) as above, also the input gradient of a stride-1
 * convolution (a convolution of dy with the flipped weights). When x's
 * images are contiguous and not tiny (64 pixels; smaller ones take the
 * tiles above, im2col costs 1/Co of those GEMMs), the GEMMs read them as
 * im2col operands in place (no
 * columns are built: for 16 channels the copy cost 3-5x the GEMM,
 * bench/RESULTS.md): a parallel loop over items of G images, or of one
 * image's pixel tile, each running its K blocks (channel blocks whose
 * weights, Co x KC, stay in L2 across the item's images) over its images. */
static void conv_forward(Lower *L, KCtx *kc, const Conv *c, const Node *x, int wbuf, int64_t woff, int ybuf,
                         const char *name) {
    IdxMap mx;
    int xbuf;
    if (!im2col_ok(c) || c->P < 64 || !images_direct(L, x, &mx, &xbuf)) {
        conv_forward_tiles(L, kc, c, x, wbuf, woff, ybuf, name);
        return;
    }
    LKernel *k = kc->k;
    int64_t esz = dtype_size(x->dtype), taps = c->kh * c->kw;
    int64_t G = c->P >= 256 ? 1 : divisor_upto(c->N, 256 / (c->P ? c->P : 1));
    int64_t PT = c->P;
    if (G == 1 && c->P > 1024)
        PT = divisor_upto(c->OH, 1024 / c->OW) * c->OW;
    int64_t tiles = c->P / PT;
    int64_t Cb = divisor_upto(c->Ci, 2 * lower_conv_tile_bytes / (c->Co * taps * esz));
    int64_t nK = c->Ci / Cb;
    LExpr *it;
    Block bi = blk_open_loop(k, c->N / G * tiles, (double)(c->N * c->Co * c->P * c->CK), &L->opt, &it);
    LExpr *n0 = tiles == 1 ? imul(it, G) : let_i64(bi, idiv(it, tiles));
    LExpr *p0 = tiles == 1 ? iconst(0) : let_i64(bi, imul(imod(it, tiles), PT));
    for (int blk = 0; blk < 2 && blk < nK; blk++) {
        LExpr *cb = iconst(0);
        Block bb = bi;
        if (blk == 1 && nK > 2)
            bb = open_loop(bi, nK - 1, &cb);
        if (blk == 1)
            cb = let_i64(bb, iadd(cb, iconst(1)));
        LExpr *gi;
        Block bg = open_loop(bb, G, &gi);
        LExpr *img = iadd(n0, gi);
        LGemm g = {0};
        g.alpha = 1, g.beta = blk;
        g.m = c->Co, g.n = PT, g.k = Cb * taps;
        g.a_buf = wbuf, g.lda = c->CK, g.a_off = iadd(iconst(woff), imul(cb, Cb * taps));
        g.b_buf = xbuf, g.b_off = iadd(iadd(iconst(mx.offset), imul(img, mx.stride[0])), imul(cb, Cb * c->H * c->W));
        g.b_im2col = im2col_of(c, Cb, p0);
        g.c_buf = ybuf, g.ldc = c->P, g.c_off = iadd(imul(img, c->Co * c->P), p0);
        blk_push(bg, ls_gemm(&g));
    }
}

static void conv2d_loops(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int y = lower_buf_of(L, n);
    IdxMap mw, mx;
    int wbuf, xbuf;
    need_buffer(L, n->in[1], &mw, &wbuf);
    if (!conv_prologue(L, kc, n, &c, y, c.CK))
        return;
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

/* The blocks of dw of a parallel loop over items: rows of dw are split
 * only when channel blocks alone give fewer than 8 items (for the pool's
 * dynamic chunks to balance). */
static void dw_blocks(const Conv *c, int64_t nK, int64_t *MB, int64_t *nMB) {
    *MB = c->Co;
    if (nK < 8)
        *MB = c->Co / divisor_upto(c->Co, (8 + nK - 1) / nK);
    *nMB = c->Co / *MB;
}

/* dw when x's images are contiguous and large (P >= 512 pixels, the K of
 * one GEMM: below, the sums of its short dot products cost more than the
 * private tiles of several images, 89 against 105 GFLOP/s at 16x16,
 * bench/RESULTS.md), the NT GEMMs dy[n] (Co x P) @ COL[n]^T reading the
 * columns in place. A small dw (the early layers, where the images are large) is
 * summed in G partial copies: a parallel loop over G groups of images, each
 * adding its images into its copy with GEMMs over all of dw (the widest
 * tiles: 16 channels cannot feed 24 accumulators in blocks of dw), then a
 * parallel sum of the copies in a fixed order, the same at every thread
 * count. A large dw is split into blocks (channels x rows), each summed
 * over all images. */
static void conv_bwd_weight_inplace(Lower *L, KCtx *kc, const Node *n, const Conv *c, const IdxMap *mdy, int dybuf,
                                    const IdxMap *mx, int xbuf, int dw) {
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int64_t taps = c->kh * c->kw, nw = c->Co * c->CK;
    int64_t G = divisor_upto(c->N, 8);
    LGemm g = {0};
    g.alpha = 1, g.beta = 1, g.trans_b = true;
    g.a_buf = dybuf, g.lda = c->P, g.b_buf = xbuf, g.ldc = c->CK, g.k = c->P;
    if (G > 1 && nw * G * dtype_size(dt) <= 4 * lower_conv_tile_bytes * 8) {
        int part = lower_scratch(L, xfmt("t%d_dwpart", n->id), dt, G * nw);
        LExpr *gi, *z, *img;
        Block bi = blk_open_loop(k, G, k->flops, &L->opt, &gi);
        LExpr *base = let_i64(bi, imul(gi, nw));
        Block bz = open_loop(bi, nw, &z);
        blk_push(bz, ls_store(part, iadd(base, z), le_const_f(dt, 0), false));
        Block bn = open_loop(bi, c->N / G, &img);
        LExpr *im = iadd(imul(gi, c->N / G), img);
        g.m = c->Co, g.n = c->CK;
        g.a_off = iadd(iconst(mdy->offset), imul(im, mdy->stride[0]));
        g.b_off = iadd(iconst(mx->offset), imul(im, mx->stride[0]));
        g.b_im2col = im2col_of(c, c->Ci, iconst(0));
        g.c_buf = part, g.c_off = base;
        blk_push(bn, ls_gemm(&g));
        LExpr *e, *lin;
        Block be = nest_outer(blk_top(k), &nw, 1, (double)(nw * G), &L->opt, &e, &lin);
        LExpr *sum = le_load(L->p, part, e, NULL);
        for (int64_t i = 1; i < G; i++)
            sum = le_op2(OP_ADD, dt, sum, le_load(L->p, part, iadd(e, iconst(i * nw)), NULL));
        blk_push(be, ls_store(dw, e, sum, false));
        return;
    }
    int64_t Cb = divisor_upto(c->Ci, c->Ci >= 8 ? c->Ci / 8 : 1), nK = c->Ci / Cb, MB, nMB;
    dw_blocks(c, nK, &MB, &nMB);
    LExpr *it;
    Block bi = blk_open_loop(k, nK * nMB, k->flops, &L->opt, &it);
    LExpr *cb = nMB == 1 ? it : let_i64(bi, idiv(it, nMB));
    LExpr *mb = nMB == 1 ? iconst(0) : let_i64(bi, imod(it, nMB));
    LExpr *dwoff = let_i64(bi, iadd(imul(mb, MB * c->CK), imul(cb, Cb * taps)));
    LExpr *zr, *zc;
    Block bz = open_loop(open_loop(bi, MB, &zr), Cb * taps, &zc);
    blk_push(bz, ls_store(dw, iadd(dwoff, iadd(imul(zr, c->CK), zc)), le_const_f(dt, 0), false));
    LExpr *img;
    Block bn = open_loop(bi, c->N, &img);
    g.m = MB, g.n = Cb * taps;
    g.a_off = iadd(iadd(iconst(mdy->offset), imul(img, mdy->stride[0])), imul(mb, MB * c->P));
    g.b_off = iadd(iadd(iconst(mx->offset), imul(img, mx->stride[0])), imul(cb, Cb * c->H * c->W));
    g.b_im2col = im2col_of(c, Cb, iconst(0));
    g.c_buf = dw, g.c_off = dwoff;
    blk_push(bn, ls_gemm(&g));
}

/* dy copied into a scratch buffer (returned) as d[co * ld_co + (n*P + p) *
 * ld_px]: channel-major (ld_px 1: the pixels of consecutive images side by
 * side, so that one GEMM spans several small images) or transposed (ld_co
 * 1: output channels along a GEMM's vectors). The inner loop runs along the
 * copy's contiguous axis. */
static int copy_dy(Lower *L, KCtx *kc, int id, const Conv *c, const IdxMap *mdy, int dybuf, int64_t ld_co, int64_t ld_px) {
    int64_t NP = c->N * c->P;
    int d = lower_scratch(L, xfmt("t%d_dyt", id), L->p->bufs.data[dybuf].dtype, ld_co == 1 ? NP * ld_px : c->Co * ld_co);
    bool px_inner = ld_co != 1;
    int64_t dims[2] = {c->N, px_inner ? c->Co : c->P};
    LExpr *ri[2], *rl, *v;
    Block b = nest_outer(blk_top(kc->k), dims, 2, (double)(c->Co * NP), &L->opt, ri, &rl);
    Block bv = open_loop(b, px_inner ? c->P : c->Co, &v);
    LExpr *co = px_inner ? ri[1] : v, *p = px_inner ? v : ri[1];
    LExpr *src = iadd(iadd(iconst(mdy->offset), imul(ri[0], mdy->stride[0])), iadd(imul(co, c->P), p));
    LExpr *dst = iadd(imul(co, ld_co), imul(iadd(imul(ri[0], c->P), p), ld_px));
    blk_push(bv, ls_store(d, dst, le_load(L->p, dybuf, src, NULL), false));
    return d;
}

/* dw for 32 or more output channels, as NN GEMMs: dw^T (CK x Co) is the sum
 * over tiles of COL (KC x PT, built into a private buffer as for the
 * forward) @ dyT (PT x Co), with dyT [N*P, Co] dy transposed once (a pass
 * over dy: one element per 2*CK flops). The NN micro-kernel broadcasts
 * COL's entries against vectors of output channels: per FMA it loads a
 * twelfth of a vector from L2, where the NT form (dot products along the
 * pixels) loads a quarter and adds horizontal sums; the deep layers' weight
 * gradients ran at 40-110 GFLOP/s that way (bench/RESULTS.md). Tiles hold
 * a panel of dyT (PT x 64 columns at most) within 32 KiB, so that the GEMM
 * keeps it in L1, and KC x Co of dw^T within 512 KiB. Items
 * are (image group, K block): when the K blocks alone give fewer than 8,
 * the tiles are split into G groups summing into G partial copies of dw^T,
 * which a last pass adds up in a fixed order while transposing them into
 * dw: the same at every thread count. */
static void conv_bwd_weight_nn(Lower *L, KCtx *kc, const Node *n, const Conv *c, const IdxMap *mdy, int dybuf, int dw) {
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int64_t esz = dtype_size(dt), nw = c->Co * c->CK, taps = c->kh * c->kw;
    int64_t cols = ((int64_t)32 << 10) / ((c->Co < 64 ? c->Co : 64) * esz);
    Tile t = conv_tile(c, dt, cols);
    int64_t cb_cap = ((int64_t)512 << 10) / (taps * c->Co * esz);
    if (t.Cb > cb_cap) {
        t.Cb = divisor_upto(c->Ci, cb_cap > 1 ? cb_cap : 1);
        t.KC = t.Cb * taps, t.nK = c->Ci / t.Cb;
    }
    int64_t G = 1;
    if (t.nK < 8) {
        G = divisor_upto(t.ntiles, (8 + t.nK - 1) / t.nK);
        while (G > 1 && G * nw * esz > ((int64_t)8 << 20))
            G = divisor_upto(t.ntiles, G - 1);
    }
    /* dyT[n*P + p][co] = dy[n][co][p], rows padded by a cache line from
     * 128 channels (a panel's rows otherwise share a few L1 sets) */
    int64_t ldt = c->Co >= 128 ? c->Co + 64 / esz : c->Co;
    int dyt = copy_dy(L, kc, n->id, c, mdy, dybuf, 1, ldt);
    int part = lower_scratch(L, xfmt("t%d_dwpart", n->id), dt, G * nw);
    int col = lower_private(L, xfmt("t%d_col", n->id), dt, t.KC * t.PT);
    int64_t TG = t.ntiles / G;
    LExpr *it;
    Block bi = blk_open_loop(k, G * t.nK, k->flops, &L->opt, &it);
    LExpr *gi = t.nK == 1 ? it : let_i64(bi, idiv(it, t.nK));
    LExpr *cb = t.nK == 1 ? iconst(0) : let_i64(bi, imod(it, t.nK));
    LExpr *coff = let_i64(bi, iadd(imul(gi, nw), imul(cb, t.KC * c->Co)));
    LExpr *z;
    Block bz = open_loop(bi, t.KC * c->Co, &z);
    blk_push(bz, ls_store(part, iadd(coff, z), le_const_f(dt, 0), false));
    LExpr *ti;
    Block bt = open_loop(bi, TG, &ti);
    LExpr *gr0 = let_i64(bt, imul(iadd(imul(gi, TG), ti), t.RT));
    im2col_tile(kc, bt, c, &t, n->in[0], col, gr0, imul(cb, t.Cb));
    LGemm g = {0};
    g.alpha = 1, g.beta = 1;
    g.m = t.KC, g.n = c->Co, g.k = t.PT;
    g.a_buf = col, g.lda = t.PT, g.a_off = iconst(0);
    g.b_buf = dyt, g.ldb = ldt, g.b_off = imul(gr0, c->OW * ldt);
    g.c_buf = part, g.ldc = c->Co, g.c_off = coff;
    blk_push(bt, ls_gemm(&g));
    /* dw[co][r] = sum_g part[g][r][co], in blocks of RB rows r (the RB
     * lines of part that a column co reads stay in L1 for the next one) */
    int64_t RB = divisor_upto(c->CK, 16);
    LExpr *rb, *co, *rr;
    Block bw = blk_open_loop(k, c->CK / RB, (double)(nw * G), &L->opt, &rb);
    Block br = open_loop(open_loop(bw, c->Co, &co), RB, &rr);
    LExpr *r = iadd(imul(rb, RB), rr);
    LExpr *e = let_i64(br, iadd(imul(r, c->Co), co));
    LExpr *sum = le_load(L->p, part, e, NULL);
    for (int64_t i = 1; i < G; i++)
        sum = le_op2(OP_ADD, dt, sum, le_load(L->p, part, iadd(e, iconst(i * nw)), NULL));
    blk_push(br, ls_store(dw, iadd(imul(co, c->CK), r), sum, false));
}

static void conv2d_bwd_weight_loops(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int dw = lower_buf_of(L, n);
    IdxMap mdy, mx;
    int dybuf, xbuf;
    need_buffer(L, n->in[1], &mdy, &dybuf);
    if (!conv_prologue(L, kc, n, &c, dw, c.N * c.P))
        return;
    bool direct = conv_is_pointwise(&c) && operand_buffer(L, n->in[0], &mx, &xbuf) && map_contig_from(&mx, 1);
    bool large = c.P >= 512 && im2col_ok(&c);
    if (!direct && large && images_direct(L, n->in[0], &mx, &xbuf)) {
        conv_bwd_weight_inplace(L, kc, n, &c, &mdy, dybuf, &mx, xbuf, dw);
        return;
    }
    /* the NN form for smaller or strided images; on 32x32 images the NT
     * tiles below were as fast in isolation and faster inside the network */
    if (!direct && !large && c.Co >= 32) {
        conv_bwd_weight_nn(L, kc, n, &c, &mdy, dybuf, dw);
        return;
    }
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
        dyt = copy_dy(L, kc, n->id, &c, &mdy, dybuf, NP, 1);
        dyt_off = 0, dyt_ld = NP;
    }
    int64_t MB, nMB;
    dw_blocks(&c, t.nK, &MB, &nMB);
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
static void conv2d_bwd_input_loops(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    DType dt = n->dtype;
    int dx = lower_buf_of(L, n);
    IdxMap mdy, mw;
    int dybuf, wbuf;
    need_buffer(L, n->in[0], &mdy, &dybuf);
    need_buffer(L, n->in[1], &mw, &wbuf);
    if (!conv_prologue(L, kc, n, &c, dx, c.Co * c.P))
        return;
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
    /* an item is G whole images or one image in tiles of rows. Images of
     * under 32 pixels go side by side, dy read from a channel-major copy:
     * a GEMM 16 pixels wide ran at 40% of the speed (ResNet's 4x4 layer,
     * 24 -> 10 ms at w64); at 7x7 and for 1x1 kernels the copy and the
     * larger tiles cost more than they gained */
    int64_t G = t.RT > c.OH && c.P < 32 && c.kh * c.kw > 1 ? t.RT / c.OH : 1, NP = c.N * c.P;
    if (G == 1 && t.RT > c.OH)
        t.RT = c.OH, t.PT = c.P;
    int64_t HW = c.H * c.W, tiles = c.OH * G / t.RT;
    int64_t dyoff = mdy.offset, dyimg = mdy.stride[0];
    if (G > 1) {
        g.b_buf = copy_dy(L, kc, n->id, &c, &mdy, dybuf, NP, 1), g.ldb = NP;
        dyoff = 0, dyimg = c.P;
    }
    int col = lower_private(L, xfmt("t%d_col", n->id), dt, t.KC * t.PT);
    LExpr *item;
    Block bi = blk_open_loop(k, c.N / G, (double)k->flops, &L->opt, &item);
    LExpr *img = G == 1 ? item : let_i64(bi, imul(item, G));
    LExpr *z;
    Block bz = open_loop(bi, G * c.Ci * HW, &z);
    blk_push(bz, ls_store(dx, iadd(imul(img, c.Ci * HW), z), le_const_f(dt, 0), false));
    LExpr *ti, *cb;
    Block bt = open_loop(open_loop(bi, tiles, &ti), t.nK, &cb);
    LExpr *gr0 = let_i64(bt, iadd(imul(img, c.OH), imul(ti, t.RT)));   /* first global output row */
    g.m = t.KC, g.n = t.PT, g.beta = 0;
    g.a_off = iadd(iconst(mw.offset), imul(cb, t.KC));
    g.b_off = iadd(iadd(iconst(dyoff), imul(img, dyimg)), imul(ti, t.PT));
    g.c_buf = col, g.ldc = t.PT, g.c_off = iconst(0);
    blk_push(bt, ls_gemm(&g));
    /* col2im of the tile: row r = (cl*kh + i)*kw + j, columns lr*OW + q */
    LExpr *cl;
    Block bc = open_loop(bt, t.Cb, &cl);
    LExpr *ci = let_i64(bc, iadd(imul(cb, t.Cb), cl));
    for (int64_t i = 0; i < c.kh; i++)
        for (int64_t j = 0; j < c.kw; j++) {
            int64_t lo, hi;
            valid_cols(&c, j, &lo, &hi);
            if (hi <= lo)
                continue;
            LExpr *lr, *hv, *q, *rn, *roh;
            Block br = open_loop(bc, t.RT, &lr);
            row_of(br, &c, iadd(gr0, lr), &rn, &roh);
            LExpr *h = tap_row(br, &c, roh, i, &hv);
            LExpr *crow = let_i64(br, iadd(imul(iadd(imul(cl, c.kh * c.kw), iconst(i * c.kw + j)), t.PT), imul(lr, c.OW)));
            LExpr *drow = let_i64(br, iadd(imul(iadd(imul(rn, c.Ci), ci), HW), imul(h, c.W)));
            Block bq = open_loop(br, hi - lo, &q);
            LExpr *qq = iadd(q, iconst(lo));
            LExpr *v = le_load(L->p, col, iadd(crow, qq), NULL);
            if (hv)
                v = le_op3(OP_WHERE, dt, hv, v, le_const_f(dt, 0));
            blk_push(bq, ls_store(dx, iadd(drow, iadd(imul(qq, c.sw), iconst(j - c.pw))), v, true));
        }
}

/* ----------------------------------------------------------------------------
 * dispatch */

void lower_conv2d(Lower *L, KCtx *kc, const Node *n) {
    if (L->opt.top_gemms)
        conv2d_ws(L, kc, n);
    else
        conv2d_loops(L, kc, n);
}

void lower_conv2d_bwd_input(Lower *L, KCtx *kc, const Node *n) {
    if (L->opt.top_gemms)
        conv2d_bwd_input_ws(L, kc, n);
    else
        conv2d_bwd_input_loops(L, kc, n);
}

void lower_conv2d_bwd_weight(Lower *L, KCtx *kc, const Node *n) {
    if (L->opt.top_gemms)
        conv2d_bwd_weight_ws(L, kc, n);
    else
        conv2d_bwd_weight_loops(L, kc, n);
}
