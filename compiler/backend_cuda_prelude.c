/* backend_cuda_prelude.c: the fixed CUDA text of every module (helpers the
 * generated kernels call) and the tiled GEMM kernel.
 *
 * All of it is CUDA C++ that is also C: tests/cuda_shim.h defines
 * LETHE_HOST_SHIM, LK_KERNEL, LK_DEV, __shared__, __syncthreads and the
 * thread indices, and the tests compile the same source for the host.
 *
 * Semantics follow the CPU backend (backend_llvm.c) exactly where it is
 * defined by more than IEEE arithmetic: 32-bit integers wrap and divide
 * without trapping, float -> int saturates, reductions' max/min propagate
 * NaN, and Philox is runtime/philox.h word for word, with the Box-Muller
 * step in double (see docs/cuda.md for how exact the normals are).
 */
#include <string.h>

#include "backend_cuda.h"
#include "lethe_abi.h"

static const char cu_prelude[] =
    "/* Lethe CUDA prelude (compiler/backend_cuda_prelude.c) */\n"
    "#ifndef LETHE_HOST_SHIM\n"
    "#define LK_KERNEL extern \"C\" __global__\n"
    "#define LK_DEV static __device__ __forceinline__\n"
    "#endif\n"
    "typedef unsigned int lk_u32;\n"
    "typedef unsigned long long lk_u64;\n"
    "\n"
    "/* 32-bit user integers wrap; x / 0 = x % 0 = 0 and INT_MIN / -1 = INT_MIN, as on the CPU */\n"
    "LK_DEV int lk_addi(int a, int b) { return (int)((lk_u32)a + (lk_u32)b); }\n"
    "LK_DEV int lk_subi(int a, int b) { return (int)((lk_u32)a - (lk_u32)b); }\n"
    "LK_DEV int lk_muli(int a, int b) { return (int)((lk_u32)a * (lk_u32)b); }\n"
    "LK_DEV int lk_divi(int a, int b) { return b == 0 ? 0 : (a == -2147483647 - 1 && b == -1) ? a : a / b; }\n"
    "LK_DEV int lk_modi(int a, int b) { return b == 0 || (a == -2147483647 - 1 && b == -1) ? 0 : a % b; }\n"
    "/* float -> integer truncates and saturates, NaN -> 0 (llvm.fptosi.sat) */\n"
    "LK_DEV int lk_f2i(double x) {\n"
    "    return x != x ? 0 : x >= 2147483647.0 ? 2147483647 : x <= -2147483648.0 ? -2147483647 - 1 : (int)x;\n"
    "}\n"
    "LK_DEV long long lk_f2l(double x) {\n"
    "    return x != x ? 0 : x >= 9223372036854775807.0 ? 9223372036854775807LL\n"
    "         : x <= -9223372036854775808.0 ? -9223372036854775807LL - 1 : (long long)x;\n"
    "}\n"
    "/* max / min of reductions propagate NaN (llvm.maximum / llvm.minimum) */\n"
    "LK_DEV float lk_maxnan_f32(float a, float b) { return a != a ? a : b != b ? b : a > b ? a : b; }\n"
    "LK_DEV float lk_minnan_f32(float a, float b) { return a != a ? a : b != b ? b : a < b ? a : b; }\n"
    "LK_DEV double lk_maxnan_f64(double a, double b) { return a != a ? a : b != b ? b : a > b ? a : b; }\n"
    "LK_DEV double lk_minnan_f64(double a, double b) { return a != a ? a : b != b ? b : a < b ? a : b; }\n"
    "\n"
    "/* Philox-4x32-10, runtime/philox.h: element i of the tensor drawn at call\n"
    " * site `stream` during call `step` takes lane i % 4 of block i / 4 (lanes are\n"
    " * picked with selects: an indexed array would live in local memory) */\n"
    "typedef struct lk_philox4 {\n"
    "    lk_u32 v0, v1, v2, v3;\n"
    "} lk_philox4;\n"
    "LK_DEV lk_philox4 lk_philox(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    lk_u64 g = i >> 2;\n"
    "    lk_u32 c0 = (lk_u32)g, c1 = (lk_u32)(g >> 32), c2 = (lk_u32)stream, c3 = (lk_u32)step;\n"
    "    lk_u32 k0 = (lk_u32)seed, k1 = (lk_u32)(seed >> 32);\n"
    "    for (int r = 0; r < 10; r++) {\n"
    "        lk_u64 p0 = (lk_u64)0xD2511F53u * c0, p1 = (lk_u64)0xCD9E8D57u * c2;\n"
    "        lk_u32 n0 = (lk_u32)(p1 >> 32) ^ c1 ^ k0, n2 = (lk_u32)(p0 >> 32) ^ c3 ^ k1;\n"
    "        c0 = n0;\n"
    "        c1 = (lk_u32)p1;\n"
    "        c2 = n2;\n"
    "        c3 = (lk_u32)p0;\n"
    "        k0 += 0x9E3779B9u;\n"
    "        k1 += 0xBB67AE85u;\n"
    "    }\n"
    "    lk_philox4 b = {c0, c1, c2, c3};\n"
    "    return b;\n"
    "}\n"
    "LK_DEV lk_u32 lk_philox_lane(lk_philox4 b, lk_u64 i) {\n"
    "    int lane = (int)(i & 3);\n"
    "    return lane == 0 ? b.v0 : lane == 1 ? b.v1 : lane == 2 ? b.v2 : b.v3;\n"
    "}\n"
    "LK_DEV float lk_uniform_f32(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    return ((float)(lk_philox_lane(lk_philox(seed, stream, step, i), i) >> 8) + 0.5f) * 0x1p-24f;\n"
    "}\n"
    "LK_DEV double lk_uniform_f64(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    return ((double)lk_philox_lane(lk_philox(seed, stream, step, i), i) + 0.5) * 0x1p-32;\n"
    "}\n"
    "/* Box-Muller in double; lanes 0, 2 take the cos branch, 1, 3 the sin branch */\n"
    "LK_DEV double lk_normal(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    lk_philox4 b = lk_philox(seed, stream, step, i);\n"
    "    int lane = (int)(i & 3);\n"
    "    double u1 = ((double)(lane < 2 ? b.v0 : b.v2) + 0.5) * 0x1p-32;\n"
    "    double u2 = ((double)(lane < 2 ? b.v1 : b.v3) + 0.5) * 0x1p-32;\n"
    "    double r = sqrt(-2.0 * log(u1));\n"
    "    double t = 6.283185307179586476925286766559 * u2;\n"
    "    return (lane & 1) ? r * sin(t) : r * cos(t);\n"
    "}\n"
    "\n"
    "/* Block-wide reductions (blockDim.x a power of two): every thread passes\n"
    " * its partial and gets the total; s has blockDim.x elements. */\n"
    "#define LK_BLOCK_REDUCE(name, T, COMBINE)                              \\\n"
    "    LK_DEV T name(T v, T *s) {                                         \\\n"
    "        unsigned t = threadIdx.x;                                      \\\n"
    "        s[t] = v;                                                      \\\n"
    "        __syncthreads();                                               \\\n"
    "        for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {            \\\n"
    "            if (t < h)                                                 \\\n"
    "                s[t] = COMBINE(s[t], s[t + h]);                        \\\n"
    "            __syncthreads();                                           \\\n"
    "        }                                                              \\\n"
    "        T r = s[0];                                                    \\\n"
    "        __syncthreads();                                               \\\n"
    "        return r;                                                      \\\n"
    "    }\n"
    "#define LK_ADD(a, b) ((a) + (b))\n"
    "#define LK_OR(a, b) ((a) | (b))\n"
    "#define LK_AND(a, b) ((a) & (b))\n"
    "#define LK_MAX(a, b) ((a) > (b) ? (a) : (b))\n"
    "#define LK_MIN(a, b) ((a) < (b) ? (a) : (b))\n"
    "LK_BLOCK_REDUCE(lk_bred_add_f32, float, LK_ADD)\n"
    "LK_BLOCK_REDUCE(lk_bred_max_f32, float, lk_maxnan_f32)\n"
    "LK_BLOCK_REDUCE(lk_bred_min_f32, float, lk_minnan_f32)\n"
    "LK_BLOCK_REDUCE(lk_bred_add_f64, double, LK_ADD)\n"
    "LK_BLOCK_REDUCE(lk_bred_max_f64, double, lk_maxnan_f64)\n"
    "LK_BLOCK_REDUCE(lk_bred_min_f64, double, lk_minnan_f64)\n"
    "LK_BLOCK_REDUCE(lk_bred_add_i32, int, lk_addi)\n"
    "LK_BLOCK_REDUCE(lk_bred_max_i32, int, LK_MAX)\n"
    "LK_BLOCK_REDUCE(lk_bred_min_i32, int, LK_MIN)\n"
    "LK_BLOCK_REDUCE(lk_bred_add_bool, int, LK_OR)\n"
    "LK_BLOCK_REDUCE(lk_bred_max_bool, int, LK_OR)\n"
    "LK_BLOCK_REDUCE(lk_bred_min_bool, int, LK_AND)\n"
    "\n";

/* The tiled GEMM, for one dtype ($T): the 256 threads of a block compute
 * the 64 x 64 tile of C at (i0, j0) of alpha sum_b op(A_b) op(B_b) + beta C
 * over `nbatch` products (A_b = A + b sa, B_b = B + b sb), 4 x 4 outputs per
 * thread, staging 16-deep slices of op(A) and op(B) in shared memory As and
 * Bs (16 x 65 each; read along each operand's contiguous direction, so
 * loads coalesce). All threads of the block must call it. Two variants: B a
 * strided matrix (lk_gemm_tile_$T, with ldb), or B the implicit column
 * matrix of a convolution of image B (lk_gemm_tile_col_$T, with the
 * geometry cv and the first column p0; loopir.h, LS_GEMM with b_im2col). */
static const char gemm_tile_template[] =
    "LK_DEV void lk_gemm_tile$V_$T(const $T *A, const $T *B, $T *C, long long m, long long n, long long k,\n"
    "        long long lda, $BPARAMS, long long ldc, int ta, int tb, $T alpha, $T beta, long long i0,\n"
    "        long long j0, long long nbatch, long long sa, long long sb, $T *As, $T *Bs) {\n"
    "    int t = threadIdx.x, tx = t % 16, ty = t / 16;\n"
    "    $T acc[4][4];\n"
    "    for (int r = 0; r < 4; r++)\n"
    "        for (int c = 0; c < 4; c++)\n"
    "            acc[r][c] = 0;\n"
    "    for (long long b = 0; b < nbatch; b++) {\n"
    "        const $T *Ab = A + b * sa, *Bb = B + b * sb;\n"
    "        for (long long k0 = 0; k0 < k; k0 += 16) {\n"
    "            for (int e = t; e < 1024; e += 256) {\n"
    "                int kk = ta ? e / 64 : e % 16, ii = ta ? e % 64 : e / 16;\n"
    "                long long gi = i0 + ii, gk = k0 + kk;\n"
    "                As[kk * 65 + ii] = gi < m && gk < k ? Ab[ta ? gk * lda + gi : gi * lda + gk] : ($T)0;\n"
    "                int kb = tb ? e % 16 : e / 64, jj = tb ? e / 16 : e % 64;\n"
    "                long long gj = j0 + jj, gl = k0 + kb;\n"
    "                Bs[kb * 65 + jj] = gj < n && gl < k ? $BLOAD : ($T)0;\n"
    "            }\n"
    "            __syncthreads();\n"
    "            for (int kk = 0; kk < 16; kk++) {\n"
    "                $T a[4], bv[4];\n"
    "                for (int r = 0; r < 4; r++)\n"
    "                    a[r] = As[kk * 65 + ty * 4 + r];\n"
    "                for (int c = 0; c < 4; c++)\n"
    "                    bv[c] = Bs[kk * 65 + tx * 4 + c];\n"
    "                for (int r = 0; r < 4; r++)\n"
    "                    for (int c = 0; c < 4; c++)\n"
    "                        acc[r][c] += a[r] * bv[c];\n"
    "            }\n"
    "            __syncthreads();\n"
    "        }\n"
    "    }\n"
    "    for (int r = 0; r < 4; r++)\n"
    "        for (int c = 0; c < 4; c++) {\n"
    "            long long gi = i0 + ty * 4 + r, gj = j0 + tx * 4 + c;\n"
    "            if (gi < m && gj < n) {\n"
    "                $T *p = C + gi * ldc + gj;\n"
    "                *p = beta == 0 ? alpha * acc[r][c] : alpha * acc[r][c] + beta * *p;\n"
    "            }\n"
    "        }\n"
    "}\n";

/* COL[r][q] of a convolution's input x (loopir.h): 0 outside the image, whose
 * memory is not touched */
static const char col_template[] =
    "LK_DEV $T lk_col_$T(const $T *x, lk_conv cv, long long r, long long q) {\n"
    "    int ri = (int)r, qi = (int)q, kk = (int)(cv.kh * cv.kw);\n"
    "    int ci = ri / kk, i = ri / (int)cv.kw % (int)cv.kh, j = ri % (int)cv.kw;\n"
    "    int hh = qi / (int)cv.ow * (int)cv.sh + i - (int)cv.ph, ww = qi % (int)cv.ow * (int)cv.sw + j - (int)cv.pw;\n"
    "    return hh >= 0 && hh < cv.h && ww >= 0 && ww < cv.w ? x[((long long)ci * cv.h + hh) * cv.w + ww] : ($T)0;\n"
    "}\n";

/* The GEMM of lethe_cuda_gemm (lethe_abi.h): one block per 64 x 64 tile and
 * product. When stride_c = 0 accumulates the batch, one block per tile and
 * group of products: with groups = 1 the tile sums every product in
 * registers before touching C once; with more (the runtime chooses them
 * from the shapes alone, so the sums run in the same order on every card)
 * group g writes its partial sum to P + g m n, and a second launch of the
 * same kernel with phase 1 adds the partials in group order into C. A
 * weight gradient's few tiles over a batch of 128 thus fill the GPU. */
#define GEMM_REDUCE_PHASE                                                                               \
    "    if (phase) {   /* C = alpha sum_g P_g + beta C, one thread per element */\n"                     \
    "        long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x, mn = m * n;\n"                \
    "        if (e >= mn)\n"                                                                             \
    "            return;\n"                                                                              \
    "        $T s = 0;\n"                                                                                \
    "        for (long long g = 0; g < groups; g++)\n"                                                   \
    "            s += P[g * mn + e];\n"                                                                  \
    "        $T *p = C + e / n * ldc + e % n;\n"                                                          \
    "        *p = beta == 0 ? alpha * s : alpha * s + beta * *p;\n"                                      \
    "        return;\n"                                                                                  \
    "    }\n"                                                                                            \
    "    long long tn = (n + 63) / 64, tiles = (m + 63) / 64 * tn;\n"                                    \
    "    long long tile = blockIdx.x % tiles, bz = blockIdx.x / tiles;\n"                                \
    "    int sum_batch = sc == 0 && batch > 1, split = sum_batch && groups > 1;\n"                       \
    "    long long per = split ? (batch + groups - 1) / groups : 1;\n"                                   \
    "    long long first = sum_batch && !split ? 0 : bz * per;\n"                                        \
    "    long long count = !sum_batch ? 1 : !split ? batch : batch - first < per ? batch - first : per;\n" \
    "    $T *Cg = split ? P + bz * m * n : C + (sum_batch ? 0 : bz * sc);\n"


static const char gemm_template[] =
    "LK_KERNEL void $NAME(const $T *__restrict__ A, const $T *__restrict__ B, $T *__restrict__ C,\n"
    "        long long m, long long n, long long k, long long lda, long long ldb, long long ldc, int ta, int tb,\n"
    "        $T alpha, $T beta, long long batch, long long sa, long long sb, long long sc,\n"
    "        $T *__restrict__ P, long long groups, int phase) {\n"
    "    __shared__ $T As[16 * 65];\n"
    "    __shared__ $T Bs[16 * 65];\n"
    GEMM_REDUCE_PHASE
    "    lk_gemm_tile_$T(A + first * sa, B + first * sb, Cg, m, n, k, lda, ldb, split ? n : ldc, ta, tb,\n"
    "                    split ? ($T)1 : alpha, split ? ($T)0 : beta, tile / tn * 64, tile % tn * 64, count, sa, sb,\n"
    "                    As, Bs);\n"
    "}\n"
    "#ifdef LETHE_HOST_SHIM\n"
    "static void $NAME__thunk(void *const *a) {\n"
    "    $NAME(*(const $T *const *)a[0], *(const $T *const *)a[1], *($T *const *)a[2], *(const long long *)a[3],\n"
    "        *(const long long *)a[4], *(const long long *)a[5], *(const long long *)a[6], *(const long long *)a[7],\n"
    "        *(const long long *)a[8], *(const int *)a[9], *(const int *)a[10], *(const $T *)a[11],\n"
    "        *(const $T *)a[12], *(const long long *)a[13], *(const long long *)a[14], *(const long long *)a[15],\n"
    "        *(const long long *)a[16], *($T *const *)a[17], *(const long long *)a[18], *(const int *)a[19]);\n"
    "}\n"
    "LK_SHIM_ENTRY($NAME, 1)\n"
    "#endif\n";

/* The same with B the column matrix of image B + b sb (convolution as an
 * implicit GEMM): the geometry follows the GEMM's parameters. */
static const char gemm_col_template[] =
    "LK_KERNEL void $NAME(const $T *__restrict__ A, const $T *__restrict__ B, $T *__restrict__ C,\n"
    "        long long m, long long n, long long k, long long lda, long long ldc, int ta, int tb,\n"
    "        $T alpha, $T beta, long long batch, long long sa, long long sb, long long sc,\n"
    "        long long c, long long h, long long w, long long kh, long long kw, long long sh, long long sw,\n"
    "        long long ph, long long pw, long long oh, long long ow, long long p0,\n"
    "        $T *__restrict__ P, long long groups, int phase) {\n"
    "    __shared__ $T As[16 * 65];\n"
    "    __shared__ $T Bs[16 * 65];\n"
    "    lk_conv cv = {c, h, w, kh, kw, sh, sw, ph, pw, oh, ow};\n"
    GEMM_REDUCE_PHASE
    "    lk_gemm_tile_col_$T(A + first * sa, B + first * sb, Cg, m, n, k, lda, cv, p0, split ? n : ldc, ta, tb,\n"
    "                        split ? ($T)1 : alpha, split ? ($T)0 : beta, tile / tn * 64, tile % tn * 64, count, sa,\n"
    "                        sb, As, Bs);\n"
    "}\n"
    "#ifdef LETHE_HOST_SHIM\n"
    "static void $NAME__thunk(void *const *a) {\n"
    "    const long long *q[31];\n"
    "    for (int i = 0; i < 31; i++)\n"
    "        q[i] = (const long long *)a[i];\n"
    "    $NAME(*(const $T *const *)a[0], *(const $T *const *)a[1], *($T *const *)a[2], *q[3], *q[4], *q[5], *q[6],\n"
    "        *q[7], *(const int *)a[8], *(const int *)a[9], *(const $T *)a[10], *(const $T *)a[11], *q[12], *q[13],\n"
    "        *q[14], *q[15], *q[16], *q[17], *q[18], *q[19], *q[20], *q[21], *q[22], *q[23], *q[24], *q[25], *q[26],\n"
    "        *q[27], *($T *const *)a[28], *q[29], *(const int *)a[30]);\n"
    "}\n"
    "LK_SHIM_ENTRY($NAME, 1)\n"
    "#endif\n";

/* s with $T the C type t (and _$T its suffix), $NAME name, and the other
 * placeholders as given (NULL: not used) */
static const char *instantiate(const char *s, const char *t, const char *name, const char *variant,
                               const char *bparams, const char *bload) {
    const char *suffix = !strcmp(t, "float") ? "f32" : "f64";
    static const char *keys[] = {"_$T", "$T", "$NAME", "$V", "$BPARAMS", "$BLOAD"};
    Sb b = {0};
    while (*s) {
        int k = -1;
        for (int i = 0; i < 6 && k < 0; i++)
            if (!strncmp(s, keys[i], strlen(keys[i])))
                k = i;
        const char *val = k == 0 ? xfmt("_%s", suffix) : k == 1 ? t : k == 2 ? name : k == 3 ? variant : k == 4 ? bparams : bload;
        if (k < 0 || !val) {
            char c[2] = {*s++, 0};
            sb_puts(&b, c);
            continue;
        }
        sb_puts(&b, val);
        s += strlen(keys[k]);
    }
    return sb_str(&b);
}

const char *cu_prelude_text(void) {
    Sb b = {0};
    sb_puts(&b, cu_prelude);
    sb_puts(&b, "typedef struct lk_conv {\n    long long c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;\n} lk_conv;\n");
    static const char *const types[] = {"float", "double"};
    for (int i = 0; i < 2; i++) {
        const char *t = types[i];
        sb_puts(&b, instantiate(col_template, t, "", NULL, NULL, NULL));
        sb_puts(&b, instantiate(gemm_tile_template, t, "", "", "long long ldb", "Bb[tb ? gj * ldb + gl : gl * ldb + gj]"));
        sb_puts(&b, instantiate(gemm_tile_template, t, "", "_col", "lk_conv cv, long long p0",
                                xfmt("lk_col_%s(Bb, cv, tb ? gj : gl, p0 + (tb ? gl : gj))", i ? "f64" : "f32")));
    }
    sb_puts(&b, "\n");
    return sb_str(&b);
}

int cu_gemm_kernel(CuProgram *cp, DType dt, bool im2col) {
    int w = (dt == DT_F64) + 2 * im2col;
    ASSERT(dt == DT_F32 || dt == DT_F64);
    if (cp->gemm_kernel[w] < 0) {
        const char *name = xfmt("lethe_gemm%s_%s", im2col ? "_col" : "", dt == DT_F64 ? "f64" : "f32");
        const char *text = instantiate(im2col ? gemm_col_template : gemm_template, dt == DT_F64 ? "double" : "float", name,
                                       NULL, NULL, NULL);
        cp->gemm_kernel[w] = cu_push_kernel(cp, name, text, true);
    }
    return cp->gemm_kernel[w];
}
