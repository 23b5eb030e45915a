/* backend_llvm_gemm.c: LS_GEMM as generated vector code.
 *
 * Why not OpenBLAS: 0.3.21 runs its AVX2 kernel under
 * OPENBLAS_CORETYPE=Haswell (half of the AVX-512 peak, PERF-ANCHORS) and
 * falls back to its SSE3 "Prescott" kernel on a CPU it does not know (the
 * Intel Xeon guest of bench/RESULTS.md: 18 GFLOP/s for a 2048^3 sgemm, 120
 * with its AVX-512 kernel forced). Its threads also compete with the
 * runtime's pool, and it cannot run inside a parallel loop, where the
 * convolutions of lower_conv.c put their GEMMs. Every shape here is a
 * compile-time constant, so each GEMM statement gets a function specialised
 * for its sizes, strides and transposes, with register-blocked
 * micro-kernels in the host's widest vectors (llvm.fma on <16 x float> with
 * AVX-512, <8 x float> with AVX2; f64 the same way).
 *
 * Two micro-kernels, chosen by the operand layouts:
 *   NN  (A either way): C[MR x NV vectors] += A[i][k] broadcast x
 *       B[k][j..j+VW), vectors along N. Covers C = A B and C = A^T B, and
 *       C = A B^T through a packed copy of B (below). Per k step: NV vector
 *       loads, MR broadcasts, MR*NV FMAs.
 *   NT  (B transposed, A not): C[i][j] = dot(A[i][:], B[j][:]), vectors
 *       along K with MR x NR vector accumulators summed at the end. Used
 *       where B is not packed: the weight gradient of a convolution over an
 *       implicit im2col B (K = pixels, long) and products of few rows.
 * Both read an im2col B (LIm2col, below) as well as a strided one. A
 * transposed together with B transposed has no micro-kernel here (the
 * backend calls BLAS, see llg_supported).
 *
 * The generated function is
 *     void gemm.S(ptr A, ptr B, ptr C, i64 bi0, i64 bi1, i64 bj0, i64 bj1, i64 p0)
 * computing the tiles of row blocks [bi0, bi1) x column blocks [bj0, bj1) of
 * C = alpha op(A) op(B) + beta C (p0: an im2col B's first column), so that
 * a top-level GEMM is split over ctx->parallel_for by tiles and a GEMM
 * inside a parallel loop calls it once for everything. Blocks: MR rows (the
 * last block may have fewer: a second micro-kernel instance with static
 * size), NR columns (NN: the last panel is masked per lane; NT: a smaller
 * instance). Row blocks are the outer loop: a block of A stays in L1 while
 * B streams past. A K over 768 (not an im2col B) runs in blocks of 128-384
 * steps (NN: a K no such size divides ends in one shorter block, as the
 * GPT-2 LM head's K = 50257 does), outermost, and within a block the
 * columns run in chunks whose part of B fits in L2, so that it stays there
 * while every row block passes
 * (without K blocks the 2048^3 products ran at 0.4-0.7x OpenBLAS, with them
 * 0.65-0.86x; bench/RESULTS.md); a later block adds its partial sums to
 * what the earlier ones stored in C. Where M has rows enough (PACK_MIN_M)
 * and B streams past L2 anyway (or is transposed), the chunk of B is copied
 * per K block into contiguous panels (pack_b, as BLIS and OpenBLAS do),
 * transposed on the way for C = A B^T: the micro-kernel then streams its
 * panel instead of striding over B's rows (NT at 2048^3: 0.55-0.66 ->
 * 0.84-0.92x OpenBLAS), and the next K block's part of B is prefetched
 * meanwhile. A is read in place (a copy of it per row block group, tried
 * for C = A^T B, gained nothing at 2048^3 and lost 10% at 4608 x 2048 x
 * 512). Results
 * are the same at every thread count and optimisation level: each C element
 * is one fixed sequence of fused multiply-adds in a fixed K order per block
 * (NN), or fixed per-lane partial sums combined by a fixed tree (NT), its
 * blocks added in order; chunks and copies change no sum.
 */
#include <string.h>

#include "backend_llvm.h"

typedef struct GB {
    LL *ll;
    LLVMBuilderRef b;
    LLVMValueRef fn;
    const LGemm *gm;
    int vw, esz;            /* lanes per vector, bytes per element */
    LLVMTypeRef et, vt;     /* element type (float or double), <vw x et> */
    int64_t kc;             /* NN with K blocks: the block's depth (0: one pass over K) */
    LLVMValueRef kb;        /* and the current block's first k */
    LLVMValueRef bpack;     /* NN with a packed B: the chunk's panels (else NULL) */
    LLVMValueRef pj0;       /* and the chunk's first column */
    int64_t pnr;            /* and a panel's columns */
} GB;

static LLVMValueRef c64(GB *g, int64_t v) { return LLVMConstInt(g->ll->t_i64, (unsigned long long)v, 1); }
static LLVMValueRef c32(GB *g, int64_t v) { return LLVMConstInt(g->ll->t_i32, (unsigned long long)v, 1); }

static LLVMValueRef fptr(GB *g, LLVMValueRef base, LLVMValueRef idx) {
    return LLVMBuildInBoundsGEP2(g->b, g->et, base, &idx, 1, "");
}

static LLVMValueRef add64(GB *g, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(g->b, a, b, ""); }
static LLVMValueRef mul64(GB *g, LLVMValueRef a, int64_t b) { return LLVMBuildNSWMul(g->b, a, c64(g, b), ""); }

static LLVMValueRef splat(GB *g, LLVMValueRef s) {
    LLVMValueRef v = LLVMBuildInsertElement(g->b, LLVMGetUndef(g->vt), s, c32(g, 0), "");
    return LLVMBuildShuffleVector(g->b, v, LLVMGetUndef(g->vt), LLVMConstNull(LLVMVectorType(g->ll->t_i32, (unsigned)g->vw)), "");
}

/* lanes l with start + l < limit */
static LLVMValueRef lane_mask(GB *g, LLVMValueRef start, int64_t limit) {
    LLVMValueRef lanes[64];
    for (int l = 0; l < g->vw; l++)
        lanes[l] = c64(g, l);
    LLVMTypeRef it = LLVMVectorType(g->ll->t_i64, (unsigned)g->vw);
    LLVMValueRef s = LLVMBuildInsertElement(g->b, LLVMGetUndef(it), start, c32(g, 0), "");
    s = LLVMBuildShuffleVector(g->b, s, LLVMGetUndef(it), LLVMConstNull(LLVMVectorType(g->ll->t_i32, (unsigned)g->vw)), "");
    LLVMValueRef idx = LLVMBuildAdd(g->b, s, LLVMConstVector(lanes, (unsigned)g->vw), "");
    LLVMValueRef lim[64];
    for (int l = 0; l < g->vw; l++)
        lim[l] = c64(g, limit);
    return LLVMBuildICmp(g->b, LLVMIntSLT, idx, LLVMConstVector(lim, (unsigned)g->vw), "");
}

static LLVMValueRef call_intr(GB *g, const char *name, LLVMTypeRef *tys, int ntys, LLVMValueRef *args, int nargs) {
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    ASSERT(id);
    LLVMValueRef fn = LLVMGetIntrinsicDeclaration(g->ll->mod, id, tys, (size_t)ntys);
    LLVMTypeRef fty = LLVMIntrinsicGetType(g->ll->ctx, id, tys, (size_t)ntys);
    return LLVMBuildCall2(g->b, fty, fn, args, (unsigned)nargs, "");
}

/* a vector from p, lanes outside mask read as 0 without touching memory */
static LLVMValueRef vload(GB *g, LLVMValueRef p, LLVMValueRef mask) {
    if (!mask) {
        LLVMValueRef v = LLVMBuildLoad2(g->b, g->vt, p, "");
        LLVMSetAlignment(v, (unsigned)g->esz);
        return v;
    }
    LLVMTypeRef tys[2] = {g->vt, g->ll->t_ptr};
    LLVMValueRef args[4] = {p, c32(g, g->esz), mask, LLVMConstNull(g->vt)};
    return call_intr(g, "llvm.masked.load", tys, 2, args, 4);
}

static void vstore(GB *g, LLVMValueRef v, LLVMValueRef p, LLVMValueRef mask) {
    if (!mask) {
        LLVMSetAlignment(LLVMBuildStore(g->b, v, p), (unsigned)g->esz);
        return;
    }
    LLVMTypeRef tys[2] = {g->vt, g->ll->t_ptr};
    LLVMValueRef args[4] = {v, p, c32(g, g->esz), mask};
    call_intr(g, "llvm.masked.store", tys, 2, args, 4);
}

/* A hint to fetch p's line into L2, used by the copy of B's chunk for one
 * K block for the same chunk of the next block: the copy runs between the
 * tiles, so a line it waits for from memory holds up the whole block (the
 * GPT-2 LM head's input gradient reads its 154 MB B from memory, once per
 * K block a part); prefetched, the next block's lines arrive while this
 * block's tiles compute. Never faults, past the end either, and moves no
 * value. */
static void prefetch(GB *g, LLVMValueRef p) {
    LLVMValueRef args[4] = {p, c32(g, 0), c32(g, 2), c32(g, 1)};
    call_intr(g, "llvm.prefetch", &g->ll->t_ptr, 1, args, 4);
}

static LLVMValueRef fma3(GB *g, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
    LLVMValueRef args[3] = {a, b, c};
    return call_intr(g, "llvm.fma", &g->vt, 1, args, 3);
}

/* A counted loop: for iv in [begin, end) step `step`; begin < end is known
 * by the caller. gl_close adds the back edge and leaves the builder after
 * the loop. */
typedef struct GL {
    LLVMValueRef iv, end;
    LLVMBasicBlockRef body, exit, pre;
    int64_t step;
} GL;

static LLVMValueRef gl_open(GB *g, GL *L, LLVMValueRef begin, LLVMValueRef end, int64_t step) {
    L->pre = LLVMGetInsertBlock(g->b);
    L->body = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "");
    L->exit = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "");
    L->end = end;
    L->step = step;
    LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, begin, end, ""), L->body, L->exit);
    LLVMPositionBuilderAtEnd(g->b, L->body);
    L->iv = LLVMBuildPhi(g->b, g->ll->t_i64, "");
    LLVMAddIncoming(L->iv, &begin, &L->pre, 1);
    return L->iv;
}

static void gl_close(GB *g, GL *L) {
    LLVMValueRef next = add64(g, L->iv, c64(g, L->step));
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(g->b);
    LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, next, L->end, ""), L->body, L->exit);
    LLVMAddIncoming(L->iv, &next, &latch, 1);
    LLVMPositionBuilderAtEnd(g->b, L->exit);
}

/* The K loop of a micro-kernel: k = 0, step, ... below `end` (at least one
 * trip) carrying n vector accumulators that start as acc[]. acc_loop_open
 * leaves the builder in the body and returns k, with L->phi[] the
 * accumulators on entry to the trip; acc_loop_close takes the trip's
 * results next[], closes the loop and sets acc[] to the final values. */
typedef struct AccLoop {
    LLVMBasicBlockRef body, exit;
    LLVMValueRef k, phi[32];
    int n;
} AccLoop;

static LLVMValueRef acc_loop_open(GB *g, AccLoop *L, const LLVMValueRef *acc, int n) {
    LLVMBuilderRef b = g->b;
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(b);
    L->body = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "k");
    L->exit = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "k.end");
    L->n = n;
    LLVMBuildBr(b, L->body);
    LLVMPositionBuilderAtEnd(b, L->body);
    L->k = LLVMBuildPhi(b, g->ll->t_i64, "k");
    LLVMValueRef zero = c64(g, 0);
    LLVMAddIncoming(L->k, &zero, &pre, 1);
    for (int t = 0; t < n; t++) {
        L->phi[t] = LLVMBuildPhi(b, g->vt, "acc");
        LLVMAddIncoming(L->phi[t], (LLVMValueRef *)&acc[t], &pre, 1);
    }
    return L->k;
}

static void acc_loop_close(GB *g, AccLoop *L, LLVMValueRef *next, int64_t step, int64_t end, LLVMValueRef *acc) {
    LLVMBuilderRef b = g->b;
    LLVMValueRef kn = add64(g, L->k, c64(g, step));
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(b);
    LLVMAddIncoming(L->k, &kn, &latch, 1);
    for (int t = 0; t < L->n; t++)
        LLVMAddIncoming(L->phi[t], &next[t], &latch, 1);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, kn, c64(g, end), ""), L->body, L->exit);
    LLVMPositionBuilderAtEnd(b, L->exit);
    for (int t = 0; t < L->n; t++)
        acc[t] = next[t];
}

/* ----------------------------------------------------------------------------
 * C = alpha acc + beta C for one vector of C */

/* first (K blocks only, else NULL): whether this is the first block; the
 * later ones add to what the earlier ones stored (C's old value enters once,
 * and is never read when beta = 0: the select keeps its bits out of the sum) */
static void store_c(GB *g, LLVMValueRef acc, LLVMValueRef cp, LLVMValueRef mask, LLVMValueRef first) {
    const LGemm *gm = g->gm;
    LLVMValueRef v = acc;
    if (gm->alpha != 1)
        v = LLVMBuildFMul(g->b, v, splat(g, LLVMConstReal(g->et, gm->alpha)), "");
    if (gm->beta != 0)
        v = LLVMBuildFAdd(g->b, v, vload(g, cp, mask), "");
    else if (first)
        v = LLVMBuildFAdd(g->b, v, LLVMBuildSelect(g->b, first, LLVMConstNull(g->vt), vload(g, cp, mask), ""), "");
    vstore(g, v, cp, mask);
}

/* ----------------------------------------------------------------------------
 * B as the column matrix of a convolution (LIm2col, loopir.h)
 *
 * A call computes, once, a table of lane masks: for each vector u of its
 * columns (pixels q = p0 + u*VW + lane) and each tap t = (i, j), which
 * lanes read inside the image (and inside the call's columns). The vector
 * of row (ci, t) at u is then one masked load at X + ci*h*w + q + (i-ph)*w
 * + (j-pw): with stride 1 and the width kept, the pixel index and the input
 * offset advance together. Masked lanes read nothing, so padding costs no
 * branch and no copy. (Stride 2 through gathers ran at a third of the
 * speed of a private im2col tile, which lower_opaque.c uses instead.) */

typedef struct BSrc {
    LLVMValueRef B;             /* the image (im2col) or the matrix */
    const LIm2col *ic;          /* NULL: a strided matrix */
    LLVMValueRef p0;            /* i64: first column of the call */
    LLVMValueRef masks;         /* per-call table (an alloca) */
    LLVMTypeRef mt;             /* <VW x i1> */
    int64_t nu;                 /* vectors of columns */
} BSrc;

static LLVMValueRef isplat(GB *g, LLVMTypeRef vt, LLVMValueRef s) {
    LLVMValueRef v = LLVMBuildInsertElement(g->b, LLVMGetUndef(vt), s, c32(g, 0), "");
    return LLVMBuildShuffleVector(g->b, v, LLVMGetUndef(vt), LLVMConstNull(LLVMVectorType(g->ll->t_i32, (unsigned)g->vw)), "");
}

static LLVMValueRef i32v(GB *g, int64_t v) { return isplat(g, LLVMVectorType(g->ll->t_i32, (unsigned)g->vw), c32(g, v)); }

/* an alloca in the function's entry block */
static LLVMValueRef entry_alloca(GB *g, LLVMTypeRef t, int64_t n, const char *name) {
    LLVMBuilderRef eb = LLVMCreateBuilderInContext(g->ll->ctx);
    LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(g->fn);
    LLVMValueRef first = LLVMGetFirstInstruction(entry);
    if (first)
        LLVMPositionBuilderBefore(eb, first);
    else
        LLVMPositionBuilderAtEnd(eb, entry);
    LLVMValueRef a = LLVMBuildArrayAlloca(eb, t, LLVMConstInt(g->ll->t_i64, (unsigned long long)n, 0), name);
    LLVMSetAlignment(a, 64);
    LLVMDisposeBuilder(eb);
    return a;
}

static BSrc bsrc_im2col(GB *g, LLVMValueRef B, LLVMValueRef p0, int64_t ncols) {
    const LIm2col *ic = g->gm->b_im2col;
    BSrc s = {.B = B, .ic = ic, .p0 = p0};
    LLVMBuilderRef b = g->b;
    LLVMTypeRef it = LLVMVectorType(g->ll->t_i32, (unsigned)g->vw);
    s.mt = LLVMVectorType(g->ll->t_i1, (unsigned)g->vw);
    s.nu = (ncols + g->vw - 1) / g->vw;
    int64_t taps = ic->kh * ic->kw;
    s.masks = entry_alloca(g, s.mt, taps * s.nu, "im2col.masks");
    LLVMValueRef lanes[64];
    for (int l = 0; l < g->vw; l++)
        lanes[l] = c32(g, l);
    LLVMValueRef iota = LLVMConstVector(lanes, (unsigned)g->vw);
    LLVMValueRef p032 = LLVMBuildTrunc(b, p0, g->ll->t_i32, "");
    GL L;
    LLVMValueRef u = gl_open(g, &L, c64(g, 0), c64(g, s.nu), 1);
    LLVMValueRef c0 = LLVMBuildMul(b, LLVMBuildTrunc(b, u, g->ll->t_i32, ""), c32(g, g->vw), "");
    LLVMValueRef col = LLVMBuildAdd(b, isplat(g, it, c0), iota, "");              /* column in the call */
    LLVMValueRef q = LLVMBuildAdd(b, col, isplat(g, it, p032), "");              /* output pixel */
    LLVMValueRef inside = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntSLT, col, i32v(g, ncols), ""),
                                       LLVMBuildICmp(b, LLVMIntSLT, q, i32v(g, ic->oh * ic->w), ""), "");
    LLVMValueRef qh = LLVMBuildUDiv(b, q, i32v(g, ic->w), "");
    LLVMValueRef qw = LLVMBuildSub(b, q, LLVMBuildMul(b, qh, i32v(g, ic->w), ""), "");
    LLVMValueRef *hv = xalloc(sizeof(LLVMValueRef) * (size_t)ic->kh), *wv = xalloc(sizeof(LLVMValueRef) * (size_t)ic->kw);
    /* 0 <= qh + i - ph < h and 0 <= qw + j - pw < w, as unsigned compares */
    for (int64_t i = 0; i < ic->kh; i++)
        hv[i] = LLVMBuildICmp(b, LLVMIntULT, LLVMBuildAdd(b, qh, i32v(g, i - ic->ph), ""), i32v(g, ic->h), "");
    for (int64_t j = 0; j < ic->kw; j++)
        wv[j] = LLVMBuildICmp(b, LLVMIntULT, LLVMBuildAdd(b, qw, i32v(g, j - ic->pw), ""), i32v(g, ic->w), "");
    for (int64_t t = 0; t < taps; t++) {
        LLVMValueRef m = LLVMBuildAnd(b, inside, LLVMBuildAnd(b, hv[t / ic->kw], wv[t % ic->kw], ""), "");
        LLVMValueRef idx = add64(g, u, c64(g, t * s.nu));
        LLVMBuildStore(b, m, LLVMBuildInBoundsGEP2(b, s.mt, s.masks, &idx, 1, ""));
    }
    gl_close(g, &L);
    return s;
}

/* the lanes of COL[. * taps + t][p0 + u*VW + lane] inside the image */
static LLVMValueRef col_mask(GB *g, const BSrc *s, LLVMValueRef t, LLVMValueRef u) {
    LLVMValueRef midx = add64(g, u, mul64(g, t, s->nu));
    return LLVMBuildLoad2(g->b, s->mt, LLVMBuildInBoundsGEP2(g->b, s->mt, s->masks, &midx, 1, ""), "");
}

/* the vector COL[ci*taps + t][p0 + u*VW + lane], mask from col_mask (i64
 * values: a static tap folds to constants) */
static LLVMValueRef col_vec(GB *g, const BSrc *s, LLVMValueRef ci, LLVMValueRef t, LLVMValueRef u, LLVMValueRef mask) {
    const LIm2col *ic = s->ic;
    LLVMBuilderRef b = g->b;
    LLVMValueRef i = LLVMBuildUDiv(b, t, c64(g, ic->kw), ""), j = LLVMBuildURem(b, t, c64(g, ic->kw), "");
    /* (i - ph) * w + (j - pw) */
    LLVMValueRef tap = add64(g, mul64(g, LLVMBuildSub(b, i, c64(g, ic->ph), ""), ic->w), LLVMBuildSub(b, j, c64(g, ic->pw), ""));
    LLVMValueRef plane = fptr(g, s->B, mul64(g, ci, ic->h * ic->w));
    LLVMValueRef off = add64(g, add64(g, s->p0, mul64(g, u, g->vw)), tap);
    return vload(g, fptr(g, plane, off), mask);
}

/* ----------------------------------------------------------------------------
 * NN: one MR x NV tile at rows i0 (static count mr), columns j0 */

static void nn_tile(GB *g, int mr, int nv, LLVMValueRef A, const BSrc *bs, LLVMValueRef C, LLVMValueRef i0,
                    LLVMValueRef j0, LLVMValueRef *mask) {
    const LGemm *gm = g->gm;
    LLVMBuilderRef b = g->b;
    int n = mr * nv;
    /* A's rows at i0: element (i, k) at a_row + i * ri + k * rk */
    int64_t ri = gm->trans_a ? 1 : gm->lda, rk = gm->trans_a ? gm->lda : 1;
    LLVMValueRef a_row = fptr(g, A, mul64(g, i0, ri));
    if (g->kc)
        a_row = fptr(g, a_row, mul64(g, g->kb, rk));
    LLVMValueRef acc[32];
    for (int t = 0; t < n; t++)
        acc[t] = LLVMConstNull(g->vt);
    /* K in one loop over its columns, or for an im2col B one loop over the
     * input channels per tap (k = ci * taps + t), so that a tap's lane masks
     * are loaded once for all channels; the sum runs in that order */
    int64_t taps = bs->ic ? bs->ic->kh * bs->ic->kw : 1;
    int64_t steps = (g->kc ? g->kc : gm->k) / taps;
    LLVMValueRef u0 = bs->ic ? LLVMBuildUDiv(b, j0, c64(g, g->vw), "") : NULL;
    for (int64_t t = 0; t < taps && steps > 0; t++) {
        LLVMValueRef tm[8];
        for (int v = 0; bs->ic && v < nv; v++)
            tm[v] = col_mask(g, bs, c64(g, t), add64(g, u0, c64(g, v)));
        AccLoop L;
        LLVMValueRef k = acc_loop_open(g, &L, acc, n), cur[32];
        for (int x = 0; x < n; x++)
            cur[x] = L.phi[x];
        LLVMValueRef bv[8];
        for (int v = 0; v < nv; v++) {
            if (bs->ic) {
                bv[v] = col_vec(g, bs, k, c64(g, t), add64(g, u0, c64(g, v)), tm[v]);
            } else {
                /* packed: panel (j0 - pj0) / NR of the chunk, kc x NR elements each */
                LLVMValueRef brow =
                    g->bpack ? fptr(g, fptr(g, g->bpack, mul64(g, LLVMBuildNSWSub(b, j0, g->pj0, ""), g->kc)),
                                    mul64(g, k, g->pnr))
                             : fptr(g, fptr(g, bs->B, j0), mul64(g, g->kc ? add64(g, k, g->kb) : k, gm->ldb));
                bv[v] = vload(g, fptr(g, brow, c64(g, (int64_t)v * g->vw)), mask[v]);
            }
        }
        LLVMValueRef akp = fptr(g, a_row, add64(g, mul64(g, k, taps * rk), c64(g, t * rk)));
        for (int i = 0; i < mr; i++) {
            LLVMValueRef a = LLVMBuildLoad2(b, g->et, fptr(g, akp, c64(g, (int64_t)i * ri)), "");
            LLVMSetAlignment(a, (unsigned)g->esz);
            LLVMValueRef as = splat(g, a);
            for (int v = 0; v < nv; v++)
                cur[i * nv + v] = fma3(g, as, bv[v], cur[i * nv + v]);
        }
        acc_loop_close(g, &L, cur, 1, steps, acc);
    }
    LLVMValueRef c_row = fptr(g, fptr(g, C, mul64(g, i0, gm->ldc)), j0);
    LLVMValueRef first = g->kc ? LLVMBuildICmp(b, LLVMIntEQ, g->kb, c64(g, 0), "") : NULL;
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            store_c(g, acc[i * nv + v], fptr(g, c_row, c64(g, (int64_t)i * gm->ldc + (int64_t)v * g->vw)), mask[v], first);
}

/* The loops over NN tiles. A row block is MR rows, the last one (static
 * index) the M % MR left; a column panel is NV vectors, a partial last one
 * (static index) as many vectors as it needs, with constant lane masks.
 * Either loop can be the outer one: rows outside keep a block of A (MR x K)
 * in L1 while B's panels stream past; panels outside keep a panel of B
 * (K x NV vectors) in L1 while A's rows stream past as broadcasts, a few
 * bytes per K step against NV vectors (choose() takes that order when the
 * panel fits in L1). */
typedef struct NNLoops {
    int mr, nv;                  /* full block and panel */
    LLVMValueRef *p;             /* the function's parameters */
    const BSrc *bs;
    bool panels_outer;
    LLVMValueRef jlo, jhi;       /* the column blocks of the panel loop */
    LLVMValueRef i0, j0;         /* the current tile's first row and column */
    int cur_mr, cur_nv;
    LLVMValueRef mask[8];        /* NULL: all lanes */
} NNLoops;

static void nn_level(GB *g, NNLoops *s, int level);

/* if (iv < nfull) {full} else {last}, each emitting the next level */
static void nn_split(GB *g, NNLoops *s, int level, LLVMValueRef iv, int64_t nfull, bool rows, int full, int last) {
    int *cur = rows ? &s->cur_mr : &s->cur_nv;
    if (!last) {
        *cur = full;
        nn_level(g, s, level + 1);
        return;
    }
    LLVMBasicBlockRef bf = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, rows ? "full" : "panel");
    LLVMBasicBlockRef bl = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, rows ? "tail" : "last");
    LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "");
    LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, iv, c64(g, nfull), ""), bf, bl);
    for (int k = 0; k < 2; k++) {
        LLVMPositionBuilderAtEnd(g->b, k ? bl : bf);
        *cur = k ? last : full;
        if (!rows) {
            /* the masks of the last panel's vectors */
            int64_t nr = (int64_t)s->nv * g->vw;
            for (int v = 0; v < 8; v++)
                s->mask[v] = k && v < last && (int64_t)(v + 1) * g->vw > g->gm->n % nr
                                 ? lane_mask(g, c64(g, nfull * nr + (int64_t)v * g->vw), g->gm->n)
                                 : NULL;
        }
        nn_level(g, s, level + 1);
        LLVMBuildBr(g->b, join);
    }
    LLVMPositionBuilderAtEnd(g->b, join);
    if (!rows)
        memset(s->mask, 0, sizeof s->mask);
}

/* level 0: the outer loop, 1: the inner one, 2: the tile */
static void nn_level(GB *g, NNLoops *s, int level) {
    if (level == 2) {
        nn_tile(g, s->cur_mr, s->cur_nv, s->p[0], s->bs, s->p[2], s->i0, s->j0, s->mask);
        return;
    }
    const LGemm *gm = g->gm;
    bool rows = (level == 0) != s->panels_outer;
    GL L;
    LLVMValueRef iv = gl_open(g, &L, rows ? s->p[3] : s->jlo, rows ? s->p[4] : s->jhi, 1);
    if (rows) {
        s->i0 = mul64(g, iv, s->mr);
        nn_split(g, s, level, iv, gm->m / s->mr, true, s->mr, (int)(gm->m % s->mr));
    } else {
        int64_t nr = (int64_t)s->nv * g->vw, rest = gm->n % nr;
        s->j0 = mul64(g, iv, nr);
        nn_split(g, s, level, iv, gm->n / nr, false, s->nv, (int)((rest + g->vw - 1) / g->vw));
    }
    gl_close(g, &L);
}

/* The column blocks [bj0, bj1) in chunks of `cb` (0: one chunk), each
 * chunk's columns of B (for one K block) sized to stay in L2 while every
 * row block of A passes over them: opens the chunk loop (L) when there is
 * one and sets [*lo, *hi) to the chunk. */
static void chunk_open(GB *g, GL *L, LLVMValueRef bj0, LLVMValueRef bj1, int64_t cb, LLVMValueRef *lo, LLVMValueRef *hi) {
    if (!cb) {
        *lo = bj0;
        *hi = bj1;
        return;
    }
    *lo = gl_open(g, L, bj0, bj1, cb);
    LLVMValueRef end = add64(g, *lo, c64(g, cb));
    *hi = LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, end, bj1, ""), end, bj1, "");
}

/* Copies columns [j0, j1) of B (j0 the chunk's first, g->pj0) for the K
 * block at g->kb into g->bpack as panels of g->pnr columns, kc x pnr
 * elements each with a row of the panel contiguous, so that the
 * micro-kernel streams its panel in order instead of striding over B's
 * rows (4 KiB apart at 2048^3, the same cache sets). B transposed (NT) is
 * transposed here, element by element; B as it is, a vector at a time. A
 * copy moves values only: no sum changes. */
static void pack_b(GB *g, LLVMValueRef B, LLVMValueRef j1) {
    const LGemm *gm = g->gm;
    LLVMBuilderRef b = g->b;
    int64_t nr = g->pnr;
    GL LO, LI;
    if (gm->trans_b) {
        LLVMValueRef j = gl_open(g, &LO, g->pj0, j1, 1);
        LLVMValueRef jl = LLVMBuildNSWSub(b, j, g->pj0, "");
        LLVMValueRef lane = LLVMBuildURem(b, jl, c64(g, nr), "");
        LLVMValueRef dst = fptr(g, g->bpack, add64(g, mul64(g, LLVMBuildNSWSub(b, jl, lane, ""), g->kc), lane));
        LLVMValueRef src = fptr(g, B, add64(g, mul64(g, j, gm->ldb), g->kb));
        LLVMValueRef k = gl_open(g, &LI, c64(g, 0), c64(g, g->kc), 1);
        LLVMValueRef v = LLVMBuildLoad2(b, g->et, fptr(g, src, k), "");
        LLVMSetAlignment(v, (unsigned)g->esz);
        LLVMSetAlignment(LLVMBuildStore(b, v, fptr(g, dst, mul64(g, k, nr))), (unsigned)g->esz);
        gl_close(g, &LI);
        if (gm->k > g->kc) {   /* the row's next block, a line at a time */
            k = gl_open(g, &LI, c64(g, 0), c64(g, g->kc), 64 / g->esz);
            prefetch(g, fptr(g, src, add64(g, k, c64(g, g->kc))));
            gl_close(g, &LI);
        }
        gl_close(g, &LO);
        return;
    }
    LLVMValueRef k = gl_open(g, &LO, c64(g, 0), c64(g, g->kc), 1);
    LLVMValueRef src = fptr(g, B, mul64(g, add64(g, k, g->kb), gm->ldb));
    LLVMValueRef dst = fptr(g, g->bpack, mul64(g, k, nr));
    LLVMValueRef j = gl_open(g, &LI, g->pj0, j1, g->vw);
    LLVMValueRef jl = LLVMBuildNSWSub(b, j, g->pj0, "");
    LLVMValueRef lane = LLVMBuildURem(b, jl, c64(g, nr), "");
    LLVMValueRef mask = gm->n % g->vw ? lane_mask(g, j, gm->n) : NULL;
    LLVMValueRef v = vload(g, fptr(g, src, j), mask);
    vstore(g, v, fptr(g, dst, add64(g, mul64(g, LLVMBuildNSWSub(b, jl, lane, ""), g->kc), lane)), mask);
    if (gm->k > g->kc)
        prefetch(g, fptr(g, src, add64(g, j, c64(g, g->kc * gm->ldb))));
    gl_close(g, &LI);
    gl_close(g, &LO);
}

/* One K block (g->kb, g->kc) or the whole K: the chunks of column panels,
 * each packed first where B is (g->bpack), then its tiles. */
static void nn_block(GB *g, NNLoops *s, int64_t cb) {
    GL LC;
    LLVMValueRef *p = s->p;
    chunk_open(g, &LC, p[5], p[6], cb, &s->jlo, &s->jhi);
    if (g->bpack) {
        int64_t nr = (int64_t)s->nv * g->vw;
        g->pnr = nr;
        g->pj0 = mul64(g, s->jlo, nr);
        LLVMValueRef j1 = mul64(g, s->jhi, nr);
        j1 = LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, j1, c64(g, g->gm->n), ""), j1, c64(g, g->gm->n), "");
        pack_b(g, p[1], j1);
    }
    nn_level(g, s, 0);
    if (cb)
        gl_close(g, &LC);
}

/* With K blocks (kc > 0) the tiles run once per block of kc steps of K,
 * blocks outermost, and within a block in chunks of cb column panels: a
 * chunk of B (kc x cb panels) stays in L2 while every row block of A
 * passes, where a whole K, or all of a task's columns, would stream B from
 * L3 for each row block (the 2048^3 products ran at 0.4-0.7x OpenBLAS
 * without K blocks; bench/RESULTS.md). A K that kc does not divide ends in
 * one shorter block, a second instance of the block's code with its depth
 * static. Each C element still sums its K blocks in order, so chunks change
 * no result. */
static void nn_body(GB *g, int mr, int nv, bool panels_outer, LLVMValueRef *p, const BSrc *bs, int64_t kc, int64_t cb) {
    NNLoops s = {.mr = mr, .nv = nv, .p = p, .bs = bs, .panels_outer = panels_outer};
    if (!kc) {
        nn_block(g, &s, cb);
        return;
    }
    int64_t nfull = g->gm->k / kc, rest = g->gm->k % kc;
    GL LK;
    g->kb = mul64(g, gl_open(g, &LK, c64(g, 0), c64(g, nfull), 1), kc);
    g->kc = kc;
    nn_block(g, &s, cb);
    gl_close(g, &LK);
    if (rest) {
        g->kb = c64(g, nfull * kc);
        g->kc = rest;
        nn_block(g, &s, cb);
    }
    g->kc = 0;
}

/* ----------------------------------------------------------------------------
 * NT: an mr x nr tile of dot products at rows i0, columns j0 */

/* the sum of a vector's lanes by halving: a fixed tree */
static LLVMValueRef hsum(GB *g, LLVMValueRef v) {
    for (int w = g->vw / 2; w >= 1; w /= 2) {
        LLVMValueRef lo[32], hi[32];
        for (int l = 0; l < w; l++) {
            lo[l] = c32(g, l);
            hi[l] = c32(g, l + w);
        }
        LLVMValueRef a = LLVMBuildShuffleVector(g->b, v, LLVMGetUndef(LLVMTypeOf(v)), LLVMConstVector(lo, (unsigned)w), "");
        LLVMValueRef c = LLVMBuildShuffleVector(g->b, v, LLVMGetUndef(LLVMTypeOf(v)), LLVMConstVector(hi, (unsigned)w), "");
        v = LLVMBuildFAdd(g->b, a, c, "");
    }
    return LLVMBuildExtractElement(g->b, v, c32(g, 0), "");
}

/* The columns of an NT tile: plain, columns j0 + j of B's rows; with an
 * im2col B, block jb holds one tap t of nr consecutive channels from ci0
 * (column r = ci * taps + t of COL), so that a step loads the tap's lane
 * mask once for all of them. */
typedef struct NtCols {
    LLVMValueRef j0;        /* plain: first column */
    LLVMValueRef t, ci0;    /* im2col: the tap and the first channel */
} NtCols;

static NtCols nt_cols(GB *g, const BSrc *bs, LLVMValueRef jb, int nr) {
    NtCols c = {0};
    if (!bs->ic) {
        c.j0 = mul64(g, jb, nr);
        return c;
    }
    int64_t taps = bs->ic->kh * bs->ic->kw;
    c.t = LLVMBuildURem(g->b, jb, c64(g, taps), "");
    c.ci0 = mul64(g, LLVMBuildUDiv(g->b, jb, c64(g, taps), ""), nr);
    return c;
}

/* One K step of an NT tile: vectors at k0 of A's rows and B's rows (mask:
 * the last, partial step; an im2col B takes its masks from its tables). */
static void nt_step(GB *g, int mr, int nr, LLVMValueRef a_row, const BSrc *bs, const NtCols *cols, LLVMValueRef k0,
                    LLVMValueRef mask, LLVMValueRef *in, LLVMValueRef *out) {
    const LGemm *gm = g->gm;
    LLVMValueRef av[32], bv[32];
    for (int i = 0; i < mr; i++)
        av[i] = vload(g, fptr(g, a_row, add64(g, k0, c64(g, (int64_t)i * gm->lda))), mask);
    if (bs->ic) {
        LLVMValueRef u = LLVMBuildUDiv(g->b, k0, c64(g, g->vw), "");
        LLVMValueRef tm = col_mask(g, bs, cols->t, u);
        for (int j = 0; j < nr; j++)
            bv[j] = col_vec(g, bs, add64(g, cols->ci0, c64(g, j)), cols->t, u, tm);
    } else {
        LLVMValueRef b_row = fptr(g, bs->B, mul64(g, cols->j0, gm->ldb));
        for (int j = 0; j < nr; j++)
            bv[j] = vload(g, fptr(g, b_row, add64(g, k0, c64(g, (int64_t)j * gm->ldb))), mask);
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            out[i * nr + j] = fma3(g, av[i], bv[j], in[i * nr + j]);
}

static void nt_tile(GB *g, int mr, int nr, LLVMValueRef A, const BSrc *bs, LLVMValueRef C, LLVMValueRef i0,
                    LLVMValueRef jb, int nrb) {
    const LGemm *gm = g->gm;
    LLVMBuilderRef b = g->b;
    int n = mr * nr;
    NtCols cols = nt_cols(g, bs, jb, nrb);
    LLVMValueRef a_row = fptr(g, A, mul64(g, i0, gm->lda));
    LLVMValueRef b_base = bs->B;
    if (g->kc) {   /* a block of K (a multiple of the vector width): A's and B's rows from kb */
        a_row = fptr(g, a_row, g->kb);
        b_base = fptr(g, b_base, g->kb);
    }
    BSrc bk = *bs;
    bk.B = b_base;
    bs = &bk;
    int64_t klen = g->kc ? g->kc : gm->k, kfull = klen / g->vw, krest = klen % g->vw;
    LLVMValueRef acc[32];
    for (int t = 0; t < n; t++)
        acc[t] = LLVMConstNull(g->vt);
    if (kfull > 0) {
        AccLoop L;
        LLVMValueRef k = acc_loop_open(g, &L, acc, n), next[32];
        nt_step(g, mr, nr, a_row, bs, &cols, k, NULL, L.phi, next);
        acc_loop_close(g, &L, next, g->vw, kfull * g->vw, acc);
    }
    if (krest) {
        LLVMValueRef k0 = c64(g, kfull * g->vw);
        nt_step(g, mr, nr, a_row, bs, &cols, k0, lane_mask(g, k0, gm->k), acc, acc);
    }
    LLVMValueRef c_row = fptr(g, C, mul64(g, i0, gm->ldc));
    LLVMValueRef first = g->kc ? LLVMBuildICmp(b, LLVMIntEQ, g->kb, c64(g, 0), "") : NULL;
    int64_t taps = bs->ic ? bs->ic->kh * bs->ic->kw : 1;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            LLVMValueRef s = hsum(g, acc[i * nr + j]);
            if (gm->alpha != 1)
                s = LLVMBuildFMul(b, s, LLVMConstReal(g->et, gm->alpha), "");
            /* column j0 + j, or (ci0 + j) * taps + t */
            LLVMValueRef col = bs->ic ? add64(g, mul64(g, add64(g, cols.ci0, c64(g, j)), taps), cols.t)
                                      : add64(g, cols.j0, c64(g, j));
            LLVMValueRef cp = fptr(g, c_row, add64(g, col, c64(g, (int64_t)i * gm->ldc)));
            if (gm->beta != 0 || first) {   /* as store_c: a later K block adds to the earlier ones */
                LLVMValueRef old = LLVMBuildLoad2(b, g->et, cp, "");
                LLVMSetAlignment(old, (unsigned)g->esz);
                if (gm->beta == 0)
                    old = LLVMBuildSelect(b, first, LLVMConstNull(g->et), old, "");
                s = LLVMBuildFAdd(b, s, old, "");
            }
            LLVMSetAlignment(LLVMBuildStore(b, s, cp), (unsigned)g->esz);
        }
}

/* rows [bi0, bi1) x columns [bj0, bj1) in blocks of mr x nr, the last of
 * each (static index) possibly smaller */
static void nt_body(GB *g, int mr, int nr, LLVMValueRef *p, const BSrc *bs, int64_t kc, int64_t cb) {
    const LGemm *gm = g->gm;
    int64_t nfi = gm->m / mr, ri = gm->m % mr, nfj = gm->n / nr, rj = gm->n % nr;
    ASSERT(!bs->ic || rj == 0);
    GL LK;   /* K blocks outermost, as nn_body's */
    if (kc) {
        g->kb = mul64(g, gl_open(g, &LK, c64(g, 0), c64(g, gm->k / kc), 1), kc);
        g->kc = kc;
    }
    /* row blocks outside: a block of A's rows (mr x K) stays in L1 while
     * B's rows stream past it (per image of a convolution's weight
     * gradient: 1.5x faster than the other order, bench/RESULTS.md) */
    GL LC, LJ, LI;
    LLVMValueRef jlo, jhi;
    chunk_open(g, &LC, p[5], p[6], cb, &jlo, &jhi);
    LLVMValueRef ib = gl_open(g, &LI, p[3], p[4], 1);
    LLVMValueRef jb = gl_open(g, &LJ, jlo, jhi, 1);
    LLVMValueRef i0 = mul64(g, ib, mr);
    /* up to four instances: (full or last row block) x (full or last column block) */
    LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "");
    for (int lr = 0; lr < 2; lr++)
        for (int lc = 0; lc < 2; lc++) {
            int tr = lr ? (int)ri : mr, tc = lc ? (int)rj : nr;
            if (!tr || !tc)
                continue;
            LLVMValueRef cond = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, lr ? LLVMIntEQ : LLVMIntSLT, ib, c64(g, nfi), ""),
                                             LLVMBuildICmp(g->b, lc ? LLVMIntEQ : LLVMIntSLT, jb, c64(g, nfj), ""), "");
            LLVMBasicBlockRef yes = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "tile");
            LLVMBasicBlockRef no = LLVMAppendBasicBlockInContext(g->ll->ctx, g->fn, "");
            LLVMBuildCondBr(g->b, cond, yes, no);
            LLVMPositionBuilderAtEnd(g->b, yes);
            nt_tile(g, tr, tc, p[0], bs, p[2], i0, jb, nr);
            LLVMBuildBr(g->b, join);
            LLVMPositionBuilderAtEnd(g->b, no);
        }
    LLVMBuildBr(g->b, join);
    LLVMPositionBuilderAtEnd(g->b, join);
    gl_close(g, &LJ);
    gl_close(g, &LI);
    if (cb)
        gl_close(g, &LC);
    if (kc) {
        gl_close(g, &LK);
        g->kc = 0;
    }
}

/* ----------------------------------------------------------------------------
 * variants and functions */

typedef struct Shape2 {
    bool nt;          /* NT micro-kernel, else NN */
    bool panels;      /* NN: column panels as the outer loop */
    int mr, nv;       /* NN: rows x vectors; NT: rows x columns */
    int64_t bm, bn;   /* rows and columns per block */
    int64_t kc;       /* K in blocks of kc (0: one pass) */
    int64_t cb;       /* column blocks per L2 chunk (0: no chunks) */
    bool pack;        /* NN: B's chunk copied into panels per K block */
} Shape2;

/* lanes of the widest vector register for elements of `size` bytes */
static int lanes(LL *ll, int size) {
    int bytes = strstr(ll->features, "+avx512f") ? 64 : strstr(ll->features, "+avx") ? 32 : 16;
    return bytes / size;
}

static int64_t divisor_upto(int64_t n, int64_t cap) {
    for (int64_t d = cap < n ? cap : n; d > 1; d--)
        if (n % d == 0)
            return d;
    return 1;
}

/* Spread n items over blocks of at most cap: the fewest blocks, as even as
 * possible (M = 16 with 14-row blocks wastes nothing as 2 x 8). */
static int even_block(int64_t n, int cap) {
    if (n <= 0)
        return cap;
    int64_t nb = (n + cap - 1) / cap;
    return (int)((n + nb - 1) / nb);
}

/* A long K (over 768) in blocks of 128-384 steps: a divisor of K that is a
 * multiple of `unit` (NT: the vector width, so no block has a partial
 * vector), else where a shorter last block is allowed (NN: nn_body) blocks
 * of even depth up to 384 with the rest in the last one (K = 50257 = 29 x
 * 1733, the GPT-2 LM head's input gradient, has no divisor there and ran
 * as one pass over K at 0.3-0.36x OpenBLAS: bench/RESULTS.md); 0: one
 * pass. */
enum { KC_MAX = 384 };
static int64_t k_block(int64_t k, int unit, bool rest_ok) {
    if (k <= 2 * KC_MAX || k % unit)
        return 0;
    int64_t kc = divisor_upto(k / unit, KC_MAX / unit) * unit;
    if (kc >= KC_MAX / 3)
        return kc;
    if (!rest_ok)
        return 0;
    int64_t blocks = (k + KC_MAX - 1) / KC_MAX;
    return (k + blocks - 1) / blocks;
}

/* Column blocks of bn columns per chunk whose part of B (depth x the
 * chunk's columns) fills about half of L2 (1 MiB per core on the Zen 5 of
 * PERF-ANCHORS, 2 MiB on recent Intel); 0 where all of them fit. */
enum { L2_CHUNK_BYTES = 512 << 10 };
static int64_t l2_chunk(const LGemm *gm, int64_t depth, int64_t bn, int esz) {
    int64_t cb = L2_CHUNK_BYTES / (depth * bn * esz);
    if (cb < 1)
        cb = 1;
    return (gm->n + bn - 1) / bn > cb ? cb : 0;
}

/* B is packed (pack_b) where A has rows enough to repay the copy: each
 * copied element then feeds at least 2 x PACK_MIN_M flops. */
enum { PACK_MIN_M = 128 };

static Shape2 choose(LL *ll, const LGemm *gm, DType dt) {
    Shape2 s = {0};
    int vw = lanes(ll, dtype_size(dt)), wide = strstr(ll->features, "+avx512f") != NULL;
    int regs = wide ? 24 : 12;
    /* a packed B is one K block of kc <= 768 (the short K whole); B
     * transposed is packed only for 4 vectors of columns at least (a
     * linear layer's few outputs, 128 x 10 x 512, ran 3.1x OpenBLAS as dot
     * products and 0.7-0.9x packed into a mostly masked panel) */
    int64_t pack_kc = gm->k <= 2 * KC_MAX ? gm->k : k_block(gm->k, 1, true);
    bool pack = !gm->b_im2col && !(gm->trans_a && gm->trans_b) && pack_kc && gm->m >= PACK_MIN_M &&
                (!gm->trans_b || gm->n >= 4 * vw);
    if (gm->trans_b && !pack) {
        s.nt = true;
        int mr = wide ? 4 : 3, nr = regs / mr;
        if (gm->b_im2col) {
            /* blocks of channels of one tap (nr | c), and as many rows as
             * the accumulators allow: a step loads mr + nr + 1 vectors */
            nr = (int)divisor_upto(gm->b_im2col->c, nr);
            mr = regs / nr < 12 ? regs / nr : 12;
        }
        s.mr = even_block(gm->m, mr);
        s.nv = gm->b_im2col ? nr : even_block(gm->n, nr);
        s.bm = s.mr;
        s.bn = s.nv;
        s.kc = gm->b_im2col ? 0 : k_block(gm->k, vw, false);
        if (!gm->b_im2col)
            s.cb = l2_chunk(gm, s.kc ? s.kc : gm->k, s.bn, dtype_size(dt));
        return s;
    }
    /* the NN micro-kernel, B transposed (NT) only through a packed copy.
     * Register blocking: accumulators MR x NV within 24 of AVX-512's 32
     * registers (12 of AVX2's 16), leaving room for B's vectors and A's
     * broadcasts; wide panels first since they need fewer loads per FMA. */
    int64_t vecs = (gm->n + vw - 1) / vw;
    int nv = vecs >= 4 ? 4 : (int)(vecs ? vecs : 1);
    if (!wide && nv > 2)
        nv = 2;
    int mr = regs / nv;
    if (nv == 1 && mr > 16)
        mr = 16;
    s.mr = even_block(gm->m, mr);
    s.nv = nv;
    s.bm = s.mr;
    s.bn = (int64_t)nv * vw;
    /* B's panel in L1 (32 of its 48 KiB), A's rows read as broadcasts */
    s.panels = !gm->b_im2col && !gm->trans_a && !gm->trans_b && gm->m > s.mr &&
               gm->k * s.bn * dtype_size(dt) <= (32 << 10);
    if (s.panels || gm->b_im2col)
        return s;
    s.kc = k_block(gm->k, 1, true);
    s.cb = l2_chunk(gm, s.kc ? s.kc : gm->k, s.bn, dtype_size(dt));
    /* B as it is is packed only where it streams past L2 anyway (K blocks
     * or column chunks): one that fits is read as the lowering laid it out
     * (the small GEMMs of the convolutions' backward passes) */
    if (pack && (gm->trans_b || s.kc || s.cb)) {
        s.pack = true;
        s.kc = pack_kc;
        s.cb = l2_chunk(gm, s.kc, s.bn, dtype_size(dt));
    }
    return s;
}

static bool same_im2col(const LIm2col *a, const LIm2col *b) {
    if (!a || !b)
        return a == b;
    return a->c == b->c && a->h == b->h && a->w == b->w && a->kh == b->kh && a->kw == b->kw && a->ph == b->ph &&
           a->pw == b->pw && a->oh == b->oh;
}

static LLVMValueRef gemm_lookup(LL *ll, const LGemm *gm, DType dt) {
    for (int i = 0; i < ll->gemm_keys.len; i++) {
        const LGemm *o = &ll->gemm_keys.data[i];
        if (ll->gemm_dts.data[i] == dt && o->m == gm->m && o->n == gm->n && o->k == gm->k && o->lda == gm->lda &&
            (gm->b_im2col || o->ldb == gm->ldb) && o->ldc == gm->ldc && o->trans_a == gm->trans_a &&
            o->trans_b == gm->trans_b && o->alpha == gm->alpha && o->beta == gm->beta &&
            same_im2col(o->b_im2col, gm->b_im2col))
            return ll->gemm_fns.data[i];
    }
    return NULL;
}

bool llg_defined(LL *ll, const LGemm *gm, DType dt) { return gemm_lookup(ll, gm, dt) != NULL; }

static LLVMValueRef gemm_fn(LL *ll, const LGemm *gm, DType dt, Shape2 sh) {
    LLVMValueRef found = gemm_lookup(ll, gm, dt);
    if (found)
        return found;
    LLVMTypeRef pt[8] = {ll->t_ptr, ll->t_ptr, ll->t_ptr, ll->t_i64, ll->t_i64, ll->t_i64, ll->t_i64, ll->t_i64};
    const char *name = xfmt("lethe.%sgemm.%s%s.%lldx%lldx%lld.%lld.%lld.%lld%s%s", dt == DT_F32 ? "s" : "d",
                            gm->trans_a ? "t" : "n", gm->trans_b ? "t" : "n", (long long)gm->m, (long long)gm->n,
                            (long long)gm->k, (long long)gm->lda, (long long)gm->ldb, (long long)gm->ldc,
                            gm->beta != 0 ? ".acc" : "", gm->b_im2col ? ".im2col" : "");
    LLVMValueRef fn = ll_new_function(ll, name, LLVMFunctionType(ll->t_void, pt, 8, 0), true);
    ll_fn_attr(ll, fn, "noinline");
    /* keep the explicit 512-bit vectors in zmm registers even where the
     * target prefers 256-bit vectorization (sapphirerapids) */
    LLVMAddTargetDependentFunctionAttr(fn, "min-legal-vector-width", "512");
    for (int i = 0; i < 3; i++) {
        ll_param_attr(ll, fn, i, "nocapture", 0);
        if (i == 2)
            ll_param_attr(ll, fn, i, "noalias", 0);
    }
    GB g = {.ll = ll, .fn = fn, .gm = gm, .vw = lanes(ll, dtype_size(dt)), .esz = dtype_size(dt), .et = ll_type(ll, dt)};
    g.vt = LLVMVectorType(g.et, (unsigned)g.vw);
    g.b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(g.b, LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry"));
    LLVMValueRef p[8];
    for (int i = 0; i < 8; i++)
        p[i] = LLVMGetParam(fn, (unsigned)i);
    BSrc bs = {.B = p[1]};
    if (gm->b_im2col)
        bs = bsrc_im2col(&g, p[1], p[7], gm->trans_b ? gm->k : gm->n);
    if (sh.pack) {
        /* on the stack, per call (each task of a split GEMM packs its own
         * columns): at most L2_CHUNK_BYTES, see l2_chunk */
        int64_t cols = (sh.cb ? sh.cb : (gm->n + sh.bn - 1) / sh.bn) * sh.bn;
        g.bpack = entry_alloca(&g, g.et, sh.kc * cols, "b.panels");
    }
    if (sh.nt)
        nt_body(&g, sh.mr, sh.nv, p, &bs, sh.kc, sh.cb);
    else
        nn_body(&g, sh.mr, sh.nv, sh.panels, p, &bs, sh.kc, sh.cb);
    LLVMBuildRetVoid(g.b);
    LLVMDisposeBuilder(g.b);
    vec_push(&ll->gemm_keys, *gm);
    vec_push(&ll->gemm_dts, dt);
    vec_push(&ll->gemm_fns, fn);
    return fn;
}

bool llg_supported(const LGemm *gm, DType dt) { return (dt == DT_F32 || dt == DT_F64) && !(gm->trans_a && gm->trans_b); }

/* The task of a top-level GEMM split into tiles: closure = {A, B, C, p0};
 * tile t covers row blocks [ti*tbi, ...) and column blocks [tj*tbj, ...). */
static LLVMValueRef gemm_task(LL *ll, LLVMValueRef fn, int64_t nbi, int64_t nbj, int64_t tbi, int64_t tbj) {
    int64_t ntj = (nbj + tbj - 1) / tbj;
    LLVMTypeRef pt[3] = {ll->t_ptr, ll->t_i64, ll->t_i64};
    LLVMValueRef task = ll_new_function(ll, xfmt("%s.task", LLVMGetValueName(fn)), LLVMFunctionType(ll->t_void, pt, 3, 0), true);
    ll_fn_attr(ll, task, "noinline");
    GB g = {.ll = ll, .fn = task};
    g.b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(g.b, LLVMAppendBasicBlockInContext(ll->ctx, task, "entry"));
    LLVMValueRef clo = LLVMGetParam(task, 0), ops[4];
    for (int i = 0; i < 4; i++) {
        LLVMValueRef idx = c64(&g, i);
        ops[i] = LLVMBuildLoad2(g.b, i < 3 ? ll->t_ptr : ll->t_i64, LLVMBuildInBoundsGEP2(g.b, ll->t_i64, clo, &idx, 1, ""), "");
    }
    GL L;
    LLVMValueRef t = gl_open(&g, &L, LLVMGetParam(task, 1), LLVMGetParam(task, 2), 1);
    LLVMValueRef ti = LLVMBuildUDiv(g.b, t, c64(&g, ntj), ""), tj = LLVMBuildURem(g.b, t, c64(&g, ntj), "");
    LLVMValueRef bi0 = mul64(&g, ti, tbi), bj0 = mul64(&g, tj, tbj);
    LLVMValueRef bi1 = add64(&g, bi0, c64(&g, tbi)), bj1 = add64(&g, bj0, c64(&g, tbj));
    bi1 = LLVMBuildSelect(g.b, LLVMBuildICmp(g.b, LLVMIntSLT, bi1, c64(&g, nbi), ""), bi1, c64(&g, nbi), "");
    bj1 = LLVMBuildSelect(g.b, LLVMBuildICmp(g.b, LLVMIntSLT, bj1, c64(&g, nbj), ""), bj1, c64(&g, nbj), "");
    LLVMValueRef args[8] = {ops[0], ops[1], ops[2], bi0, bi1, bj0, bj1, ops[3]};
    LLVMBuildCall2(g.b, LLVMGlobalGetValueType(fn), fn, args, 8, "");
    gl_close(&g, &L);
    LLVMBuildRetVoid(g.b);
    LLVMDisposeBuilder(g.b);
    return task;
}

/* The tiles of a split GEMM: tbi row blocks x tbj column blocks each, at
 * least MIN_TILES of at least ~256 KFLOP when the GEMM is big enough, so
 * that the pool's dynamic chunks balance, but only FEW_TILES where each is
 * a GFLOP or more: two threads balance four equal tiles, and fewer tiles
 * re-read less (the GPT-2 LM head's input gradient, 256 x 768 x 50257, ran
 * at 0.82x OpenBLAS in 2 x 12 tiles, 1.03x in 1 x 4). Columns first (B's
 * panels are what a tile keeps in cache). Where B is packed per K block,
 * each tile reads its rows of A once per chunk of its columns and packs
 * its columns of B once, ntj x chunks x |A| + nti x |B| bytes from L3 or
 * memory in all, and a split that needs under 2/3 of what the
 * columns-first one does is taken instead: the LM head's weight gradient
 * (50257 x 768 x 256, A 51 MB, B 0.8 MB) in 4 x 1 tiles reads 105 MB
 * against 206 MB in 1 x 4 (0.65-0.70x -> 0.91-1.04x OpenBLAS with the rest
 * of this file's blocking; bench/RESULTS.md). A closer call keeps columns
 * first: the model leaves out that a copy of B waits for memory where A's
 * rows stream. Tiles change no sum: every C element is one tile's. */
enum { MIN_TILES = 16, FEW_TILES = 4 };
static const double MIN_TILE_FLOPS = 2.5e5, BIG_TILE_FLOPS = 1e9;

/* Tiles of tbi x tbj blocks over nbi x nbj blocks. */
static int64_t tile_count(int64_t nbi, int64_t nbj, int64_t tbi, int64_t tbj) {
    return ((nbi + tbi - 1) / tbi) * ((nbj + tbj - 1) / tbj);
}

static double tile_traffic(const LGemm *gm, DType dt, Shape2 sh, int64_t nbi, int64_t nbj, int64_t bi, int64_t bj) {
    int64_t nti = (nbi + bi - 1) / bi, ntj = (nbj + bj - 1) / bj, chunks = sh.cb ? (bj + sh.cb - 1) / sh.cb : 1;
    return ((double)(ntj * chunks) * (double)gm->m + (double)nti * (double)gm->n) * (double)gm->k * dtype_size(dt);
}

static void split_tiles(const LGemm *gm, DType dt, Shape2 sh, int64_t nbi, int64_t nbj, int64_t *tbi, int64_t *tbj) {
    double flops = 2.0 * (double)gm->m * (double)gm->n * (double)gm->k;
    double per_block = flops / (double)(nbi * nbj);
    *tbi = nbi;
    *tbj = nbj;
    for (;;) {
        int64_t tiles = tile_count(nbi, nbj, *tbi, *tbj);
        if ((*tbj == 1 && *tbi == 1) || tiles >= MIN_TILES ||
            per_block * (double)((*tbj + 1) / 2) * (double)*tbi < MIN_TILE_FLOPS ||
            (tiles >= FEW_TILES && per_block * (double)*tbj * (double)*tbi >= BIG_TILE_FLOPS))
            break;
        if (*tbj > 1)
            *tbj = (*tbj + 1) / 2;
        else
            *tbi = (*tbi + 1) / 2;
    }
    if (!sh.pack)
        return;
    int64_t tiles = tile_count(nbi, nbj, *tbi, *tbj);
    double best = tile_traffic(gm, dt, sh, nbi, nbj, *tbi, *tbj) * (2.0 / 3.0);
    for (int64_t bi = nbi;; bi = (bi + 1) / 2) {
        for (int64_t bj = nbj;; bj = (bj + 1) / 2) {
            double cost = tile_traffic(gm, dt, sh, nbi, nbj, bi, bj);
            if (tile_count(nbi, nbj, bi, bj) >= tiles && cost < best) {
                best = cost;
                *tbi = bi;
                *tbj = bj;
            }
            if (bj == 1)
                break;
        }
        if (bi == 1)
            break;
    }
}

void llg_emit(LL *ll, LLVMBuilderRef b, const LGemm *gm, DType dt, LLVMValueRef a, LLVMValueRef bp, LLVMValueRef c,
              LLVMValueRef p0, LLVMValueRef ctx) {
    Shape2 sh = choose(ll, gm, dt);
    LLVMValueRef fn = gemm_fn(ll, gm, dt, sh);
    int64_t nbi = (gm->m + sh.bm - 1) / sh.bm, nbj = (gm->n + sh.bn - 1) / sh.bn;
    double flops = 2.0 * (double)gm->m * (double)gm->n * (double)gm->k;
    LLVMValueRef zero = LLVMConstInt(ll->t_i64, 0, 0);
    if (!p0)
        p0 = zero;
    /* below ~1 MFLOP a split costs more than it gains */
    if (!ctx || flops < 1e6 || nbi * nbj < 2) {
        LLVMValueRef args[8] = {a, bp, c, zero, LLVMConstInt(ll->t_i64, (unsigned long long)nbi, 0), zero,
                                LLVMConstInt(ll->t_i64, (unsigned long long)nbj, 0), p0};
        LLVMBuildCall2(b, LLVMGlobalGetValueType(fn), fn, args, 8, "");
        return;
    }
    int64_t tbi, tbj;
    split_tiles(gm, dt, sh, nbi, nbj, &tbi, &tbj);
    int64_t ntiles = tile_count(nbi, nbj, tbi, tbj);
    LLVMValueRef task = gemm_task(ll, fn, nbi, nbj, tbi, tbj);
    /* the closure in the entry block: a GEMM inside a serial loop must not
     * grow the stack per iteration */
    LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(LLVMGetBasicBlockParent(LLVMGetInsertBlock(b)));
    LLVMBuilderRef eb = LLVMCreateBuilderInContext(ll->ctx);
    LLVMValueRef first = LLVMGetFirstInstruction(entry);
    if (first)
        LLVMPositionBuilderBefore(eb, first);
    else
        LLVMPositionBuilderAtEnd(eb, entry);
    LLVMValueRef clo = LLVMBuildArrayAlloca(eb, ll->t_i64, LLVMConstInt(ll->t_i64, 4, 0), "gemm.ops");
    LLVMDisposeBuilder(eb);
    LLVMValueRef ops[4] = {a, bp, c, p0};
    for (int i = 0; i < 4; i++) {
        LLVMValueRef idx = LLVMConstInt(ll->t_i64, (unsigned long long)i, 0);
        LLVMBuildStore(b, ops[i], LLVMBuildInBoundsGEP2(b, ll->t_i64, clo, &idx, 1, ""));
    }
    LLVMValueRef helper = ll_parallel_helper(ll);
    LLVMValueRef args[5] = {ctx, task, clo, LLVMConstInt(ll->t_i64, (unsigned long long)ntiles, 0),
                            LLVMConstInt(ll->t_i64, 1, 0)};
    LLVMBuildCall2(b, LLVMGlobalGetValueType(helper), helper, args, 5, "");
}
