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

int64_t lower_conv_workspace_bytes = (int64_t)64 << 20;

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

static int64_t conv_chunk(const Conv *c, DType dt) {
    int64_t per = c->CK * c->P * dtype_size(dt);
    int64_t g = per ? lower_conv_workspace_bytes / per : c->N;
    if (g < 1)
        g = 1;
    return g < c->N ? g : c->N;
}

/* col[g, (ci*kh+i)*kw+j, p*OW+q] = x[n0+g, ci, p*sh+i-ph, q*sw+j-pw] for the
 * G images from n0: a parallel loop over (g, ci, i, j) rows. */
static void im2col(KCtx *kc, const Conv *c, const Node *x, int col, int64_t n0, int64_t G) {
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

static void lower_conv2d(Lower *L, KCtx *kc, const Node *n) {
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
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    if (c.CK == 0) {
        zero_fill(L, k, y, 0, shape_numel(n->shape));
        return;
    }
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
        im2col(kc, &c, n->in[0], col, n0, cnt);
        LExpr *gi;
        Block b = open_loop(blk_top(k), cnt, &gi);
        g.b_off = imul(gi, c.CK * c.P);
        g.c_off = imul(iadd(gi, iconst(n0)), c.Co * c.P);
        blk_push(b, ls_gemm(&g));
    }
}

static void lower_conv2d_bwd_weight(Lower *L, KCtx *kc, const Node *n) {
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
        im2col(kc, &c, n->in[0], col, n0, cnt);
        LExpr *gi;
        Block b = open_loop(blk_top(k), cnt, &gi);
        g.a_off = iadd(iconst(mdy.offset), imul(iadd(gi, iconst(n0)), mdy.stride[0]));
        g.b_off = imul(gi, c.CK * c.P);
        blk_push(b, ls_gemm(&g));
    }
}

static void lower_conv2d_bwd_input(Lower *L, KCtx *kc, const Node *n) {
    Conv c = conv_geom(n);
    LKernel *k = kc->k;
    int dx = lower_buf_of(L, n);
    IdxMap mdy, mw;
    int dybuf, wbuf;
    need_buffer(L, n->in[0], &mdy, &dybuf);
    need_buffer(L, n->in[1], &mw, &wbuf);
    k->flops = 2.0 * (double)(c.N * c.Co * c.P * c.CK);
    LGemm g = {0};
    g.alpha = 1, g.beta = 0;
    g.trans_a = true, g.a_buf = wbuf, g.a_off = iconst(mw.offset), g.lda = c.CK;
    g.b_buf = dybuf, g.ldb = c.P;
    g.m = c.CK, g.n = c.P, g.k = c.Co;
    if (c.Co == 0 || c.P == 0 || c.CK == 0) {
        zero_fill(L, k, dx, 0, shape_numel(n->shape));
        return;
    }
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
        /* col2im over (g, ci) planes */
        int64_t planes[2] = {cnt, c.Ci};
        LExpr *pi[2], *pl;
        double work = (double)(cnt * c.CK * c.P);
        Block bp = nest_outer(blk_top(k), planes, 2, work, &L->opt, pi, &pl);
        LExpr *base = let_i64(bp, imul(iadd(pl, iconst(n0 * c.Ci)), HW));
        LExpr *z;
        Block bz = open_loop(bp, HW, &z);
        blk_push(bz, ls_store(dx, iadd(base, z), le_const_f(n->dtype, 0), false));
        int64_t kk[2] = {c.kh, c.kw};
        LExpr *ij[2];
        Block bij = nest_serial(bp, kk, 2, ij, NULL);
        LExpr *p, *q;
        Block bpp = open_loop(bij, c.OH, &p);
        LExpr *h = let_i64(bpp, isub(iadd(imul(p, c.sh), ij[0]), c.ph));
        LExpr *vh = in_range(h, -c.ph, (c.OH - 1) * c.sh + c.kh - 1 - c.ph, c.H);
        Block bq = open_loop(bpp, c.OW, &q);
        LExpr *w = isub(iadd(imul(q, c.sw), ij[1]), c.pw);
        LExpr *vw = in_range(w, -c.pw, (c.OW - 1) * c.sw + c.kw - 1 - c.pw, c.W);
        LExpr *valid = band(vh, vw);
        /* column row (ci*kh + i)*kw + j of image g */
        LExpr *crow = iadd(imul(iadd(imul(pi[1], c.kh), ij[0]), c.kw), ij[1]);
        LExpr *cidx = iadd(imul(iadd(imul(pi[0], c.CK), crow), c.P), iadd(imul(p, c.OW), q));
        LExpr *v = le_load(L->p, col, cidx, NULL);
        LExpr *pix = iadd(imul(h, c.W), w);
        /* an entry in the padding adds 0 to the plane's first pixel: the
         * address stays inside the plane this iteration owns */
        if (valid) {
            pix = isel(valid, pix, iconst(0));
            v = le_op3(OP_WHERE, n->dtype, valid, v, le_const_f(n->dtype, 0));
        }
        blk_push(bq, ls_store(dx, iadd(base, pix), v, true));
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
