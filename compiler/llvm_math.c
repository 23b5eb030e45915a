/* llvm_math.c: exp, log, tanh, pow and Philox as small LLVM IR functions.
 *
 * Why our own: llvm.exp.v16f32 has no vector implementation without a vector
 * math library, so a loop calling it is scalarized into expf calls. These are
 * straight-line IR (selects, no branches), so after inlining the loop
 * vectorizer widens them like any arithmetic (tinygrad's decomp/transcendental
 * approach).
 *
 * Every function is internal + alwaysinline and carries NO fast-math flags:
 * instcombine may not reassociate or contract them, and the code generator
 * only fuses llvm.fmuladd (TargetOptions' default FPOpFusion::Standard), so a
 * value is the same bits at -O0 and -O3, in scalar and in vector code.
 *
 * Algorithms (accuracy measured by tests/unit/test_backend.c):
 *   exp   Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, n rounded with the
 *         1.5*2^p trick (no SSE4.1 needed); e^r = 1 + r + r^2 P(r): Cephes
 *         expf's minimax P for f32, Taylor to r^13 for f64; 2^n applied as two
 *         exact power-of-two factors so subnormal results round once.
 *   log   fdlibm/musl: x = 2^k m, m in [sqrt(1/2), sqrt(2)), f = m - 1,
 *         s = f/(2+f), log(1+f) = f - f^2/2 + s (f^2/2 + R(s^2)).
 *   tanh  Cephes: odd polynomial / rational for |x| < 0.625, else
 *         1 - 2/(e^{2|x|} + 1) with the sign put back.
 *   pow   exp(y log|x|) evaluated in f64 (for f32 too, so f32 stays within
 *         an ulp), with C99's special cases for x < 0, zeros, y = 0, |x| = 1.
 *   Philox-4x32-10 and the uniform / Box-Muller formulas exactly as in
 *   runtime/philox.h; Box-Muller calls llvm.log/sin/cos.f64, i.e. libm, the
 *   same functions the C version calls, so normals are bit-identical.
 */
#include <math.h>
#include <string.h>

#include "backend_llvm.h"

/* A builder positioned inside a helper function of float type ft. */
typedef struct M {
    LL *ll;
    LLVMBuilderRef b;
    DType dt;
    LLVMTypeRef ft, it;   /* float type and the integer type of its width */
} M;

static LLVMValueRef k(M *m, double v) { return LLVMConstReal(m->ft, v); }
static LLVMValueRef ki(M *m, long long v) { return LLVMConstInt(m->it, (unsigned long long)v, 1); }
static LLVMValueRef add(M *m, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFAdd(m->b, a, b, ""); }
static LLVMValueRef sub(M *m, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFSub(m->b, a, b, ""); }
static LLVMValueRef mul(M *m, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFMul(m->b, a, b, ""); }
static LLVMValueRef div_(M *m, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFDiv(m->b, a, b, ""); }
static LLVMValueRef sel(M *m, LLVMValueRef c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildSelect(m->b, c, a, b, ""); }
static LLVMValueRef fcmp(M *m, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFCmp(m->b, p, a, b, ""); }
static LLVMValueRef isnan_(M *m, LLVMValueRef x) { return fcmp(m, LLVMRealUNO, x, x); }

/* Horner: c[0] x^(n-1) + c[1] x^(n-2) + ... + c[n-1] */
static LLVMValueRef horner(M *m, LLVMValueRef x, const double *c, int n) {
    LLVMValueRef p = k(m, c[0]);
    for (int i = 1; i < n; i++)
        p = add(m, mul(m, p, x), k(m, c[i]));
    return p;
}

static LLVMValueRef fabs_(M *m, LLVMValueRef x) { return ll_call_intrinsic(m->ll, m->b, "llvm.fabs", m->ft, &x, 1); }

/* ---------------------------------------------------------------------------
 * function shells */

static const char *dt_suffix(DType dt) { return dt == DT_F64 ? "f64" : "f32"; }

/* Creates `name` (internal, alwaysinline, no memory access) with nparams
 * parameters of type pt returning rt, and positions m at its entry. */
static LLVMValueRef begin_fn(M *m, LL *ll, DType dt, const char *name, LLVMTypeRef rt, LLVMTypeRef *pt, int nparams) {
    LLVMValueRef fn = ll_new_function(ll, name, LLVMFunctionType(rt, pt, (unsigned)nparams, 0), true);
    ll_fn_attr(ll, fn, "alwaysinline");
    ll_fn_attr(ll, fn, "willreturn");
    ll_param_attr(ll, fn, -1, "memory", 0);   /* memory(none) */
    m->ll = ll;
    m->dt = dt;
    m->ft = ll_type(ll, dt);
    m->it = dt == DT_F64 ? ll->t_i64 : ll->t_i32;
    m->b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMPositionBuilderAtEnd(m->b, LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry"));
    return fn;
}

static void end_fn(M *m, LLVMValueRef ret) {
    LLVMBuildRet(m->b, ret);
    LLVMDisposeBuilder(m->b);
}

/* ---------------------------------------------------------------------------
 * exp */

static LLVMValueRef gen_exp(M *m, LLVMValueRef x) {
    bool d = m->dt == DT_F64;
    /* clamping keeps n in range for the two scale factors; past the bounds
     * the result is already 0 or inf through the normal path */
    double lo = d ? -746.0 : -104.0, hi = d ? 710.0 : 89.0;
    LLVMValueRef nan = isnan_(m, x);
    LLVMValueRef xc = sel(m, fcmp(m, LLVMRealOLT, x, k(m, lo)), k(m, lo), x);
    xc = sel(m, fcmp(m, LLVMRealOGT, xc, k(m, hi)), k(m, hi), xc);
    xc = sel(m, nan, k(m, 0), xc);
    /* n = round(x / ln2): adding and removing 1.5*2^p rounds to an integer */
    double magic = d ? 0x1.8p52 : 0x1.8p23;
    LLVMValueRef n = sub(m, add(m, mul(m, xc, k(m, 1.4426950408889634)), k(m, magic)), k(m, magic));
    /* Cody-Waite: ln2 = c1 + c2 with n*c1 exact */
    double c1 = d ? 6.93147180369123816490e-01 : 0.693359375;
    double c2 = d ? 1.90821492927058770002e-10 : -2.12194440e-4;
    LLVMValueRef r = sub(m, sub(m, xc, mul(m, n, k(m, c1))), mul(m, n, k(m, c2)));
    static const double pf[] = {1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3,
                                4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1};
    static const double pd[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
                                1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        0.5};
    LLVMValueRef p = d ? horner(m, r, pd, 12) : horner(m, r, pf, 6);
    LLVMValueRef y = add(m, add(m, mul(m, p, mul(m, r, r)), r), k(m, 1.0));
    /* 2^n = 2^n1 * 2^n2, both normal numbers for every clamped n */
    LLVMValueRef ni = LLVMBuildFPToSI(m->b, n, m->it, "");
    LLVMValueRef n1 = LLVMBuildAShr(m->b, ni, ki(m, 1), "");
    LLVMValueRef n2 = LLVMBuildSub(m->b, ni, n1, "");
    int bias = d ? 1023 : 127, mant = d ? 52 : 23;
    LLVMValueRef s1 = LLVMBuildBitCast(m->b, LLVMBuildShl(m->b, LLVMBuildAdd(m->b, n1, ki(m, bias), ""), ki(m, mant), ""), m->ft, "");
    LLVMValueRef s2 = LLVMBuildBitCast(m->b, LLVMBuildShl(m->b, LLVMBuildAdd(m->b, n2, ki(m, bias), ""), ki(m, mant), ""), m->ft, "");
    return sel(m, nan, x, mul(m, mul(m, y, s1), s2));
}

/* ---------------------------------------------------------------------------
 * log */

static LLVMValueRef gen_log(M *m, LLVMValueRef x) {
    bool d = m->dt == DT_F64;
    /* subnormals: scale into the normal range first */
    LLVMValueRef tiny = fcmp(m, LLVMRealOLT, x, k(m, d ? 0x1p-1022 : 0x1p-126));
    LLVMValueRef xs = sel(m, tiny, mul(m, x, k(m, d ? 0x1p54 : 0x1p25)), x);
    LLVMValueRef kadj = sel(m, tiny, ki(m, d ? -54 : -25), ki(m, 0));
    /* bias the exponent field so that m >= sqrt(2) carries into it, then
     * put the mantissa back over the exponent of sqrt(1/2) */
    long long sqrth = d ? 0x3fe6a09e00000000ll : 0x3f3504f3ll;
    long long one = d ? 0x3ff0000000000000ll : 0x3f800000ll;
    long long mmask = d ? 0x000fffffffffffffll : 0x007fffffll;
    int mant = d ? 52 : 23, bias = d ? 1023 : 127;
    LLVMValueRef ix = LLVMBuildAdd(m->b, LLVMBuildBitCast(m->b, xs, m->it, ""), ki(m, one - sqrth), "");
    LLVMValueRef e = LLVMBuildSub(m->b, LLVMBuildLShr(m->b, ix, ki(m, mant), ""), ki(m, bias), "");
    e = LLVMBuildAdd(m->b, e, kadj, "");
    ix = LLVMBuildAdd(m->b, LLVMBuildAnd(m->b, ix, ki(m, mmask), ""), ki(m, sqrth), "");
    LLVMValueRef f = sub(m, LLVMBuildBitCast(m->b, ix, m->ft, ""), k(m, 1.0));
    LLVMValueRef hfsq = mul(m, mul(m, k(m, 0.5), f), f);
    LLVMValueRef s = div_(m, f, add(m, k(m, 2.0), f));
    LLVMValueRef z = mul(m, s, s), w = mul(m, z, z), t1, t2;
    if (d) {
        static const double odd[] = {1.479819860511658591e-01, 1.818357216161805012e-01, 2.857142874366239149e-01,
                                     6.666666666666735130e-01};
        static const double even[] = {1.531383769920937332e-01, 2.222219843214978396e-01, 3.999999999940941908e-01};
        t1 = mul(m, w, horner(m, w, even, 3));
        t2 = mul(m, z, horner(m, w, odd, 4));
    } else {
        static const double odd[] = {0x91e9ee.0p-25, 0xaaaaaa.0p-24};
        static const double even[] = {0xf89e26.0p-26, 0xccce13.0p-25};
        t1 = mul(m, w, horner(m, w, even, 2));
        t2 = mul(m, z, horner(m, w, odd, 2));
    }
    LLVMValueRef R = add(m, t2, t1);
    LLVMValueRef dk = LLVMBuildSIToFP(m->b, e, m->ft, "");
    double ln2hi = d ? 6.93147180369123816490e-01 : 6.9313812256e-01;
    double ln2lo = d ? 1.90821492927058770002e-10 : 9.0580006145e-06;
    /* s*(hfsq+R) + dk*ln2_lo - hfsq + f + dk*ln2_hi, left to right */
    LLVMValueRef y = add(m, mul(m, s, add(m, hfsq, R)), mul(m, dk, k(m, ln2lo)));
    y = add(m, add(m, sub(m, y, hfsq), f), mul(m, dk, k(m, ln2hi)));
    y = sel(m, fcmp(m, LLVMRealOEQ, x, k(m, INFINITY)), x, y);
    y = sel(m, fcmp(m, LLVMRealOEQ, x, k(m, 0)), k(m, -INFINITY), y);
    y = sel(m, fcmp(m, LLVMRealOLT, x, k(m, 0)), k(m, NAN), y);
    return sel(m, isnan_(m, x), x, y);
}

/* ---------------------------------------------------------------------------
 * tanh, pow */

static LLVMValueRef call_math(M *m, LLMath f, DType dt, LLVMValueRef x) {
    /* helpers call each other through ordinary calls, inlined like the rest */
    return llm_call(m->ll, m->b, f, dt, x, NULL);
}

static LLVMValueRef gen_tanh(M *m, LLVMValueRef x) {
    bool d = m->dt == DT_F64;
    LLVMValueRef ax = fabs_(m, x);
    LLVMValueRef z = mul(m, x, x), small;
    if (d) {
        static const double P[] = {-9.64399179425052238628E-1, -9.92877231001918586564E1, -1.61468768441708447952E3};
        static const double Q[] = {1.0, 1.12811678491632931402E2, 2.23548839060100448583E3, 4.84406305325125486048E3};
        LLVMValueRef q = div_(m, horner(m, z, P, 3), horner(m, z, Q, 4));
        small = add(m, mul(m, mul(m, x, z), q), x);
    } else {
        static const double P[] = {-5.70498872745E-3, 2.06390887954E-2, -5.37397155531E-2, 1.33314422036E-1,
                                   -3.33332819422E-1};
        small = add(m, mul(m, mul(m, horner(m, z, P, 5), z), x), x);
    }
    LLVMValueRef e = call_math(m, LM_EXP, m->dt, add(m, ax, ax));
    LLVMValueRef big = sub(m, k(m, 1.0), div_(m, k(m, 2.0), add(m, e, k(m, 1.0))));
    LLVMValueRef args[2] = {big, x};
    big = ll_call_intrinsic(m->ll, m->b, "llvm.copysign", m->ft, args, 2);
    LLVMValueRef y = sel(m, fcmp(m, LLVMRealOLT, ax, k(m, 0.625)), small, big);
    return sel(m, fcmp(m, LLVMRealOEQ, x, k(m, 0)), x, y);   /* tanh(-0) = -0 */
}

static LLVMValueRef gen_pow(M *m, LLVMValueRef x, LLVMValueRef y) {
    LL *ll = m->ll;
    M d = *m;
    d.dt = DT_F64;
    d.ft = ll->t_f64;
    d.it = ll->t_i64;
    if (m->dt == DT_F32) {
        x = LLVMBuildFPExt(m->b, x, ll->t_f64, "");
        y = LLVMBuildFPExt(m->b, y, ll->t_f64, "");
    }
    LLVMValueRef l = call_math(&d, LM_LOG, DT_F64, fabs_(&d, x));
    /* |x| = 1 gives 1 even for y = inf (C99) */
    LLVMValueRef t = sel(&d, fcmp(&d, LLVMRealOEQ, l, k(&d, 0)), k(&d, 0), mul(&d, y, l));
    LLVMValueRef r = call_math(&d, LM_EXP, DT_F64, t);
    LLVMValueRef fy = ll_call_intrinsic(ll, d.b, "llvm.floor", ll->t_f64, &y, 1);
    LLVMValueRef is_int = fcmp(&d, LLVMRealOEQ, fy, y);
    LLVMValueRef h = mul(&d, y, k(&d, 0.5));
    LLVMValueRef fh = ll_call_intrinsic(ll, d.b, "llvm.floor", ll->t_f64, &h, 1);
    LLVMValueRef odd = LLVMBuildAnd(d.b, is_int, fcmp(&d, LLVMRealUNE, fh, h), "");
    LLVMValueRef sign = LLVMBuildICmp(d.b, LLVMIntSLT, LLVMBuildBitCast(d.b, x, ll->t_i64, ""), LLVMConstInt(ll->t_i64, 0, 0), "");
    r = sel(&d, LLVMBuildAnd(d.b, sign, odd, ""), LLVMBuildFNeg(d.b, r, ""), r);
    LLVMValueRef neg = fcmp(&d, LLVMRealOLT, x, k(&d, 0));
    r = sel(&d, LLVMBuildAnd(d.b, neg, LLVMBuildNot(d.b, is_int, ""), ""), k(&d, NAN), r);
    r = sel(&d, fcmp(&d, LLVMRealOEQ, y, k(&d, 0)), k(&d, 1.0), r);
    return m->dt == DT_F32 ? LLVMBuildFPTrunc(m->b, r, ll->t_f32, "") : r;
}

LLVMValueRef llm_call(LL *ll, LLVMBuilderRef b, LLMath f, DType dt, LLVMValueRef x, LLVMValueRef y) {
    ASSERT(dt == DT_F32 || dt == DT_F64);
    int di = dt == DT_F64;
    LLVMTypeRef ft = ll_type(ll, dt);
    LLVMValueRef fn = ll->math_fn[f][di];
    if (!fn) {
        static const char *names[] = {[LM_EXP] = "exp", [LM_LOG] = "log", [LM_TANH] = "tanh", [LM_POW] = "pow"};
        LLVMTypeRef pt[2] = {ft, ft};
        M m;
        fn = begin_fn(&m, ll, dt, xfmt("lethe.%s.%s", names[f], dt_suffix(dt)), ft, pt, f == LM_POW ? 2 : 1);
        ll->math_fn[f][di] = fn;
        LLVMValueRef a = LLVMGetParam(fn, 0), r = NULL;
        switch (f) {
        case LM_EXP: r = gen_exp(&m, a); break;
        case LM_LOG: r = gen_log(&m, a); break;
        case LM_TANH: r = gen_tanh(&m, a); break;
        case LM_POW: r = gen_pow(&m, a, LLVMGetParam(fn, 1)); break;
        }
        end_fn(&m, r);
    }
    LLVMValueRef args[2] = {x, y};
    return LLVMBuildCall2(b, LLVMGlobalGetValueType(fn), fn, args, f == LM_POW ? 2 : 1, "");
}

/* ---------------------------------------------------------------------------
 * Philox-4x32-10 (runtime/philox.h) */

enum { RAND_UNIFORM_F32, RAND_UNIFORM_F64, RAND_NORMAL };

static LLVMValueRef i32c(LL *ll, uint32_t v) { return LLVMConstInt(ll->t_i32, v, 0); }
static LLVMValueRef i64c(LL *ll, uint64_t v) { return LLVMConstInt(ll->t_i64, v, 0); }
static LLVMValueRef lo32(LLVMBuilderRef b, LL *ll, LLVMValueRef v) { return LLVMBuildTrunc(b, v, ll->t_i32, ""); }
static LLVMValueRef hi32(LLVMBuilderRef b, LL *ll, LLVMValueRef v) {
    return LLVMBuildTrunc(b, LLVMBuildLShr(b, v, i64c(ll, 32), ""), ll->t_i32, "");
}

/* The 32x32->64 products of one round, split into high and low words. */
static void mulhilo(LLVMBuilderRef b, LL *ll, uint32_t mconst, LLVMValueRef c, LLVMValueRef *hi, LLVMValueRef *lo) {
    LLVMValueRef p = LLVMBuildNUWMul(b, i64c(ll, mconst), LLVMBuildZExt(b, c, ll->t_i64, ""), "");
    *hi = hi32(b, ll, p);
    *lo = lo32(b, ll, p);
}

static void philox_block(LLVMBuilderRef b, LL *ll, LLVMValueRef ctr[4], LLVMValueRef seed, LLVMValueRef out[4]) {
    LLVMValueRef c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    LLVMValueRef k0 = lo32(b, ll, seed), k1 = hi32(b, ll, seed);
    for (int round = 0; round < 10; round++) {
        LLVMValueRef h0, l0, h1, l1;
        mulhilo(b, ll, 0xD2511F53u, c0, &h0, &l0);
        mulhilo(b, ll, 0xCD9E8D57u, c2, &h1, &l1);
        c0 = LLVMBuildXor(b, LLVMBuildXor(b, h1, c1, ""), k0, "");
        c1 = l1;
        c2 = LLVMBuildXor(b, LLVMBuildXor(b, h0, c3, ""), k1, "");
        c3 = l0;
        k0 = LLVMBuildAdd(b, k0, i32c(ll, 0x9E3779B9u), "");
        k1 = LLVMBuildAdd(b, k1, i32c(ll, 0xBB67AE85u), "");
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* ((double)x + 0.5) * 2^-32 */
static LLVMValueRef u01_f64(LLVMBuilderRef b, LL *ll, LLVMValueRef x) {
    LLVMValueRef d = LLVMBuildUIToFP(b, x, ll->t_f64, "");
    return LLVMBuildFMul(b, LLVMBuildFAdd(b, d, LLVMConstReal(ll->t_f64, 0.5), ""), LLVMConstReal(ll->t_f64, 0x1p-32), "");
}

static LLVMValueRef gen_rand_fn(LL *ll, int which) {
    static const char *names[] = {"lethe.rand.uniform.f32", "lethe.rand.uniform.f64", "lethe.rand.normal.f64"};
    LLVMTypeRef pt[4] = {ll->t_i64, ll->t_i64, ll->t_i64, ll->t_i64};   /* seed, stream, step, index */
    DType rdt = which == RAND_UNIFORM_F32 ? DT_F32 : DT_F64;
    M m;
    LLVMValueRef fn = begin_fn(&m, ll, rdt, names[which], ll_type(ll, rdt), pt, 4);
    LLVMBuilderRef b = m.b;
    LLVMValueRef seed = LLVMGetParam(fn, 0), stream = LLVMGetParam(fn, 1);
    LLVMValueRef step = LLVMGetParam(fn, 2), idx = LLVMGetParam(fn, 3);
    LLVMValueRef g = LLVMBuildLShr(b, idx, i64c(ll, 2), "");
    LLVMValueRef ctr[4] = {lo32(b, ll, g), hi32(b, ll, g), lo32(b, ll, stream), lo32(b, ll, step)}, v[4];
    philox_block(b, ll, ctr, seed, v);
    LLVMValueRef lane = lo32(b, ll, LLVMBuildAnd(b, idx, i64c(ll, 3), ""));
    LLVMValueRef r;
    if (which != RAND_NORMAL) {
        LLVMValueRef x = v[3];
        for (int i = 2; i >= 0; i--)
            x = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntEQ, lane, i32c(ll, (uint32_t)i), ""), v[i], x, "");
        if (which == RAND_UNIFORM_F32) {
            /* ((float)(x >> 8) + 0.5f) * 0x1p-24f */
            LLVMValueRef f = LLVMBuildUIToFP(b, LLVMBuildLShr(b, x, i32c(ll, 8), ""), ll->t_f32, "");
            r = LLVMBuildFMul(b, LLVMBuildFAdd(b, f, LLVMConstReal(ll->t_f32, 0.5), ""), LLVMConstReal(ll->t_f32, 0x1p-24), "");
        } else {
            r = u01_f64(b, ll, x);
        }
    } else {
        LLVMValueRef upper = LLVMBuildICmp(b, LLVMIntUGE, lane, i32c(ll, 2), "");
        LLVMValueRef u1 = u01_f64(b, ll, LLVMBuildSelect(b, upper, v[2], v[0], ""));
        LLVMValueRef u2 = u01_f64(b, ll, LLVMBuildSelect(b, upper, v[3], v[1], ""));
        /* r = sqrt(-2.0 * log(u1)); t = 2 pi u2; lane & 1 ? r sin t : r cos t */
        LLVMValueRef lg = ll_call_intrinsic(ll, b, "llvm.log", ll->t_f64, &u1, 1);
        LLVMValueRef rr = LLVMBuildFMul(b, LLVMConstReal(ll->t_f64, -2.0), lg, "");
        rr = ll_call_intrinsic(ll, b, "llvm.sqrt", ll->t_f64, &rr, 1);
        LLVMValueRef t = LLVMBuildFMul(b, LLVMConstReal(ll->t_f64, 6.283185307179586476925286766559), u2, "");
        LLVMValueRef sn = LLVMBuildFMul(b, rr, ll_call_intrinsic(ll, b, "llvm.sin", ll->t_f64, &t, 1), "");
        LLVMValueRef cs = LLVMBuildFMul(b, rr, ll_call_intrinsic(ll, b, "llvm.cos", ll->t_f64, &t, 1), "");
        LLVMValueRef odd = LLVMBuildTrunc(b, lane, ll->t_i1, "");
        r = LLVMBuildSelect(b, odd, sn, cs, "");
    }
    end_fn(&m, r);
    return fn;
}

LLVMValueRef llm_rand(LL *ll, LLVMBuilderRef b, Op op, DType dt, LLVMValueRef seed, uint64_t stream, LLVMValueRef step,
                      LLVMValueRef index) {
    ASSERT(op == OP_RAND_UNIFORM || op == OP_RAND_NORMAL);
    ASSERT(dt == DT_F32 || dt == DT_F64);
    int which = op == OP_RAND_NORMAL ? RAND_NORMAL : dt == DT_F32 ? RAND_UNIFORM_F32 : RAND_UNIFORM_F64;
    if (!ll->rand_fn[which])
        ll->rand_fn[which] = gen_rand_fn(ll, which);
    LLVMValueRef fn = ll->rand_fn[which];
    LLVMValueRef args[4] = {seed, i64c(ll, stream), step, index};
    LLVMValueRef r = LLVMBuildCall2(b, LLVMGlobalGetValueType(fn), fn, args, 4, "");
    /* the value is philox_*_at(...) rounded to the expression's dtype; the
     * f32 uniform is already exact in f32 */
    return dt == DT_F32 && which == RAND_NORMAL ? LLVMBuildFPTrunc(b, r, ll->t_f32, "") : r;
}
