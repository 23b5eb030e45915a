/* test_gemm_pack.c: the generated GEMM's packed paths
 * (compiler/backend_llvm_gemm.c: B's columns copied into panels per K block
 * and L2 chunk, B transposed on the way for NT). Shapes chosen so that every
 * part of it runs: K in three blocks (900 = 3 x 300), N = 1000 in three
 * chunks of panels with a last partial panel whose last vector is masked
 * (1000 = 15 x 64 + 40), M = 130 with a short last row block, in NN, NT and
 * TN, f32 and f64; and a K with no block size that divides it (1009, prime:
 * 337 + 337 + 335, the last block a second instance of the block's code),
 * as the GPT-2 LM head's input gradient has (K = 50257), packed (M = 130,
 * NN and TN, f32 and f64) and unpacked (M = 20). Checks each result
 * against a double reference (error relative to the sum of |terms|), and
 * that 1 and 2 threads give the same bits (the determinism the compiler
 * promises). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "threadpool.h"

static const char *SRC =
    "fn nn(a: f32[M, K], b: f32[K, N]) -> f32[M, N] = a @ b\n"
    "fn nt(a: f32[M, K], b: f32[N, K]) -> f32[M, N] = a @ transpose(b)\n"
    "fn tn(a: f32[K, M], b: f32[K, N]) -> f32[M, N] = transpose(a) @ b\n"
    "fn nt64(a: f64[M, K], b: f64[N, K]) -> f64[M, N] = a @ transpose(b)\n"
    "fn tn64(a: f64[K, M], b: f64[K, N]) -> f64[M, N] = transpose(a) @ b\n"
    "export nn = nn(f32[130, 900], f32[900, 1000])\n"
    "export nt = nt(f32[130, 900], f32[1000, 900])\n"
    "export tn = tn(f32[900, 130], f32[900, 1000])\n"
    "export nt64 = nt64(f64[130, 900], f64[1000, 900])\n"
    "export nn_krest = nn(f32[130, 1009], f32[1009, 200])\n"
    "export tn_krest = tn(f32[1009, 130], f32[1009, 200])\n"
    "export tn64_krest = tn64(f64[1009, 130], f64[1009, 200])\n"
    "export nn_krest_unpacked = nn(f32[20, 1009], f32[1009, 200])\n";

typedef struct gemm_case {
    const char *name;
    bool ta, tb, f64;
    int64_t m, n, k;
} gemm_case;

static const gemm_case CASES[] = {
    {"nn", false, false, false, 130, 1000, 900},
    {"nt", false, true, false, 130, 1000, 900},
    {"tn", true, false, false, 130, 1000, 900},
    {"nt64", false, true, true, 130, 1000, 900},
    {"nn_krest", false, false, false, 130, 200, 1009},
    {"tn_krest", true, false, false, 130, 200, 1009},
    {"tn64_krest", true, false, true, 130, 200, 1009},
    {"nn_krest_unpacked", false, false, false, 20, 200, 1009},
};

static const char *xname(const char *entry, const char *what) {
    static char buf[4][96];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "gemm_pack_%s_%s", entry, what);
    return b;
}

static double at(const void *p, bool f64, int64_t i) { return f64 ? ((const double *)p)[i] : ((const float *)p)[i]; }

static void check_entry(const lethe_program *pg, const gemm_case *gc, lethe_pool *pool) {
    const char *name = gc->name;
    bool ta = gc->ta, tb = gc->tb, f64 = gc->f64;
    int64_t M = gc->m, N = gc->n, K = gc->k;
    const lethe_entry *e = th_entry(pg, name);
    if (!th_check(e != NULL, xname(name, "exists"), "no entry"))
        return;
    th_frame *f1 = th_frame_new(e), *f2 = th_frame_new(e);
    int dt = f64 ? LETHE_F64 : LETHE_F32;
    uint64_t seed = 7;
    for (int i = 0; i < 2; i++) {
        const char *arg = i ? "b" : "a";
        void *p1 = f64 ? (void *)th_f64(f1, arg) : (void *)th_f32(f1, arg);
        void *p2 = f64 ? (void *)th_f64(f2, arg) : (void *)th_f32(f2, arg);
        th_fill(p1, dt, (int64_t)K * (i ? N : M), -1, 1, seed++);
        memcpy(p2, p1, (size_t)K * (i ? N : M) * th_dtype_size(dt));
    }
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 0);
    int rc1 = th_call(f1, NULL), rc2 = th_call(f2, &ctx);
    if (!th_check(rc1 == 0 && rc2 == 0, xname(name, "runs"), "rc %d / %d", rc1, rc2)) {
        th_frame_free(f1);
        th_frame_free(f2);
        return;
    }
    const void *a = f64 ? (void *)th_f64(f1, "a") : (void *)th_f32(f1, "a");
    const void *b = f64 ? (void *)th_f64(f1, "b") : (void *)th_f32(f1, "b");
    const void *c1 = f64 ? (void *)th_f64(f1, "out") : (void *)th_f32(f1, "out");
    const void *c2 = f64 ? (void *)th_f64(f2, "out") : (void *)th_f32(f2, "out");
    double worst = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0, mag = 0;
            for (int64_t q = 0; q < K; q++) {
                double x = at(a, f64, ta ? q * M + i : i * K + q) * at(b, f64, tb ? j * K + q : q * N + j);
                s += x;
                mag += fabs(x);
            }
            worst = fmax(worst, fabs(at(c1, f64, i * N + j) - s) / mag);
        }
    th_check(worst < (f64 ? 1e-14 : 1e-6), xname(name, "matches_reference"), "relative error %g", worst);
    size_t bytes = (size_t)M * N * th_dtype_size(dt);
    th_check(memcmp(c1, c2, bytes) == 0, xname(name, "same_bits_at_1_and_2_threads"), "results differ");
    th_frame_free(f1);
    th_frame_free(f2);
}

int main(void) {
    char *err = NULL;
    const lethe_program *pg = th_compile_source("gemm_pack", SRC, "", &err);
    if (!th_check(pg != NULL, "gemm_pack_compiles", "%s", err ? err : "?"))
        return th_exit();
    lethe_pool *pool = lethe_pool_new(2);
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        check_entry(pg, &CASES[i], pool);
    lethe_pool_free(pool);
    return th_exit();
}
