/* test_dropout.c: the dropout(x, p) builtin (compiler/builtins.c), which
 * graphs/models/gpt2.lth uses for HF's attn/resid/embd dropout.
 *
 *   train mode   every element is 0 or x / (1 - p), about a fraction p of
 *                them 0 (4096 elements: within 0.03 of p)
 *   eval mode    `eval m(x)` is x exactly
 *   fresh noise  two calls of the step (the runtime's call counter bumped
 *                between them) draw different masks
 *   lists        the elements of a module list called as l(x) draw
 *                independent masks (the same call site): two p = 0.5
 *                dropouts in a row keep about a quarter, not a half
 *   p = 0        the identity; p outside [0, 1) is a compile error
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "threadpool.h"

static const char *src =
    "module Drop(p: f32) {\n"
    "    fn (x) = dropout(x, p)\n"
    "}\n"
    "module Two() {\n"
    "    sub l = [Drop(0.5), Drop(0.5)]\n"
    "    fn (x) = l(x)\n"
    "}\n"
    "fn both(m: model, x: f32[64, 64]) = [m(x), eval m(x)]\n"
    "export drop = both(Drop(0.25), f32[64, 64])\n"
    "export two = both(Two(), f32[64, 64])\n"
    "export none = both(Drop(0.0), f32[64, 64])\n";

enum { N = 64 * 64 };

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_source("dropout.lth", src, "", &err);
    if (!p) {
        th_fail("dropout compiles", "%s", err ? err : "");
        free(err);
        return th_exit();
    }
    lethe_pool *pool = lethe_pool_new(1);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 7);

    th_frame *f = th_frame_new(th_entry(p, "drop"));
    float *x = th_f32(f, "x");
    th_fill(x, LETHE_F32, N, 0.5, 1.5, 1);
    th_call(f, &ctx);
    float *y = th_f32(f, "out.0"), *e = th_f32(f, "out.1");
    int zeros = 0, bad = 0, eval_same = 1;
    for (int i = 0; i < N; i++) {
        zeros += y[i] == 0;
        bad += y[i] != 0 && fabsf(y[i] - x[i] / 0.75f) > 1e-6f * fabsf(x[i]);
        eval_same &= e[i] == x[i];
    }
    th_check(!bad && fabs(zeros / (double)N - 0.25) < 0.03, "dropout: train mode zeros ~p, scales the rest by 1/(1-p)",
             "%d zeros of %d, %d wrong values", zeros, N, bad);
    th_check(eval_same, "dropout: eval mode is the identity", "eval output differs from x");
    float *first = malloc(sizeof(float) * N);
    memcpy(first, y, sizeof(float) * N);
    ctx.counter++;   /* as the runtime does before every call */
    th_call(f, &ctx);
    th_check(memcmp(first, th_f32(f, "out.0"), sizeof(float) * N) != 0, "dropout: a new mask on every call",
             "two calls drew the same mask");
    free(first);
    th_frame_free(f);

    f = th_frame_new(th_entry(p, "two"));
    th_fill(th_f32(f, "x"), LETHE_F32, N, 0.5, 1.5, 2);
    th_call(f, &ctx);
    int kept = 0;
    for (int i = 0; i < N; i++)
        kept += th_f32(f, "out.0")[i] != 0;
    th_check(fabs(kept / (double)N - 0.25) < 0.03, "dropout: list elements draw independent masks",
             "%d of %d kept (0.25 expected; 0.5 means one mask for both)", kept, N);
    th_frame_free(f);

    f = th_frame_new(th_entry(p, "none"));
    x = th_f32(f, "x");
    th_fill(x, LETHE_F32, N, 0.5, 1.5, 3);
    th_call(f, &ctx);
    th_check(!memcmp(x, th_f32(f, "out.0"), sizeof(float) * N), "dropout: p = 0 is the identity", "values changed");
    th_frame_free(f);

    char *out = NULL;
    const char *badsrc = "fn f(x: f32[4]) = dropout(x, 1.0)\nexport g = f(f32[4])\n";
    const lethe_program *q = th_compile_source("dropout_bad.lth", badsrc, "", &out);
    th_check(!q && out && strstr(out, ".lth:1:19: error") && strstr(out, "p must be a compile-time number in [0, 1)"),
             "dropout: p = 1 is a compile error at its line", "%s", out ? out : "(compiled)");
    free(out);
    lethe_pool_free(pool);
    return th_exit();
}
