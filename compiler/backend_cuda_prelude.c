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

const char cu_prelude[] =
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
    " * site `stream` during call `step` takes lane i % 4 of block i / 4 */\n"
    "LK_DEV void lk_philox(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i, lk_u32 v[4]) {\n"
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
    "    v[0] = c0, v[1] = c1, v[2] = c2, v[3] = c3;\n"
    "}\n"
    "LK_DEV float lk_uniform_f32(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    lk_u32 v[4];\n"
    "    lk_philox(seed, stream, step, i, v);\n"
    "    return ((float)(v[i & 3] >> 8) + 0.5f) * 0x1p-24f;\n"
    "}\n"
    "LK_DEV double lk_uniform_f64(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    lk_u32 v[4];\n"
    "    lk_philox(seed, stream, step, i, v);\n"
    "    return ((double)v[i & 3] + 0.5) * 0x1p-32;\n"
    "}\n"
    "/* Box-Muller in double; lanes 0, 2 take the cos branch, 1, 3 the sin branch */\n"
    "LK_DEV double lk_normal(lk_u64 seed, lk_u64 stream, lk_u64 step, lk_u64 i) {\n"
    "    lk_u32 v[4];\n"
    "    lk_philox(seed, stream, step, i, v);\n"
    "    int lane = (int)(i & 3);\n"
    "    double u1 = ((double)(lane < 2 ? v[0] : v[2]) + 0.5) * 0x1p-32;\n"
    "    double u2 = ((double)(lane < 2 ? v[1] : v[3]) + 0.5) * 0x1p-32;\n"
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
 * loads coalesce). All threads of the block must call it. */
static const char gemm_tile_template[] =
    "LK_DEV void lk_gemm_tile_$T(const $T *A, const $T *B, $T *C, long long m, long long n, long long k,\n"
    "        long long lda, long long ldb, long long ldc, int ta, int tb, $T alpha, $T beta, long long i0,\n"
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
    "                Bs[kb * 65 + jj] = gj < n && gl < k ? Bb[tb ? gj * ldb + gl : gl * ldb + gj] : ($T)0;\n"
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

/* The GEMM of lethe_cuda_gemm (lethe_abi.h): one block per 64 x 64 tile and
 * product, or per tile only when stride_c = 0 accumulates the batch (the
 * tile then sums every product in registers before touching C once). */
static const char gemm_template[] =
    "LK_KERNEL void $NAME(const $T *__restrict__ A, const $T *__restrict__ B, $T *__restrict__ C,\n"
    "        long long m, long long n, long long k, long long lda, long long ldb, long long ldc, int ta, int tb,\n"
    "        $T alpha, $T beta, long long batch, long long sa, long long sb, long long sc) {\n"
    "    __shared__ $T As[16 * 65];\n"
    "    __shared__ $T Bs[16 * 65];\n"
    "    long long tn = (n + 63) / 64, tiles = (m + 63) / 64 * tn;\n"
    "    long long tile = blockIdx.x % tiles, bz = blockIdx.x / tiles;\n"
    "    int sum_batch = sc == 0 && batch > 1;\n"
    "    long long first = sum_batch ? 0 : bz;\n"
    "    lk_gemm_tile_$T(A + first * sa, B + first * sb, C + (sum_batch ? 0 : bz * sc), m, n, k, lda, ldb, ldc, ta, tb,\n"
    "                    alpha, beta, tile / tn * 64, tile % tn * 64, sum_batch ? batch : 1, sa, sb, As, Bs);\n"
    "}\n"
    "#ifdef LETHE_HOST_SHIM\n"
    "static void $NAME__thunk(void *const *a) {\n"
    "    $NAME(*(const $T *const *)a[0], *(const $T *const *)a[1], *($T *const *)a[2], *(const long long *)a[3],\n"
    "        *(const long long *)a[4], *(const long long *)a[5], *(const long long *)a[6], *(const long long *)a[7],\n"
    "        *(const long long *)a[8], *(const int *)a[9], *(const int *)a[10], *(const $T *)a[11],\n"
    "        *(const $T *)a[12], *(const long long *)a[13], *(const long long *)a[14], *(const long long *)a[15],\n"
    "        *(const long long *)a[16]);\n"
    "}\n"
    "LK_SHIM_ENTRY($NAME, 1)\n"
    "#endif\n";

/* s with every $T replaced by t and $NAME by name */
static const char *instantiate(const char *s, const char *t, const char *name) {
    const char *suffix = !strcmp(t, "float") ? "f32" : "f64";
    Sb b = {0};
    while (*s) {
        if (!strncmp(s, "_$T", 3)) {   /* a name suffix: lk_gemm_tile_f32 */
            sb_printf(&b, "_%s", suffix);
            s += 3;
        } else if (!strncmp(s, "$T", 2)) {
            sb_puts(&b, t);
            s += 2;
        } else if (!strncmp(s, "$NAME", 5)) {
            sb_puts(&b, name);
            s += 5;
        } else {
            char c[2] = {*s++, 0};
            sb_puts(&b, c);
        }
    }
    return sb_str(&b);
}

const char *cu_prelude_text(void) {
    Sb b = {0};
    sb_puts(&b, cu_prelude);
    sb_puts(&b, instantiate(gemm_tile_template, "float", ""));
    sb_puts(&b, instantiate(gemm_tile_template, "double", ""));
    sb_puts(&b, "\n");
    return sb_str(&b);
}

int cu_gemm_kernel(CuProgram *cp, DType dt) {
    int w = dt == DT_F64;
    ASSERT(dt == DT_F32 || dt == DT_F64);
    if (cp->gemm_kernel[w] < 0) {
        const char *name = w ? "lethe_gemm_f64" : "lethe_gemm_f32";
        const char *text = instantiate(gemm_template, w ? "double" : "float", name);
        cp->gemm_kernel[w] = cu_push_kernel(cp, name, text, true);
    }
    return cp->gemm_kernel[w];
}
