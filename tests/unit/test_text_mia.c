/* test_text_mia.c: the per-token statistics the text membership scores read
 * (runtime/run_text_mia.c), compiled by lethec from tests/lth/text_mia.lth:
 *
 *   token_stats       on random logits [2, 5, 7]: at each position t < 4,
 *                     log p of the next token, mu and sigma, against
 *                     mi_token_stats (runtime/membership.c, itself checked
 *                     against hand-computed cases in test_membership.c);
 *   eval_token_stats  through a tiny packed GPT-2 classifier with random
 *                     weights and embedding perturbations: the same against
 *                     mi_token_stats on the LM-head logits it reads
 *                     (token_logits), the token ids taken from value 0 of
 *                     each packed row, padding included (the runtime skips
 *                     padding positions, not the entry).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "membership.h"

/* The worst difference of stats [b, t - 1, 3] from mi_token_stats on logits
 * [b, t, v] with next tokens next[b * t + p + 1]. */
static double worst_against_reference(const float *stats, const float *logits, const int32_t *next, int b, int t,
                                      int v) {
    double worst = 0;
    for (int i = 0; i < b; i++)
        for (int p = 0; p + 1 < t; p++) {
            mi_token ref = mi_token_stats(logits + ((int64_t)i * t + p) * v, v, next[i * t + p + 1]);
            const float *got = stats + ((int64_t)i * (t - 1) + p) * 3;
            double d = fmax(fabs(got[0] - ref.logp), fmax(fabs(got[1] - ref.mu), fabs(got[2] - ref.sigma)));
            worst = isnan(d) ? INFINITY : fmax(worst, d);
        }
    return worst;
}

static void test_token_stats(const lethe_program *p) {
    enum { B = 2, T = 5, V = 7 };
    th_frame *f = th_frame_new(th_entry(p, "stats"));
    float *logits = th_f32(f, "logits");
    int32_t *idx = th_i32(f, "idx");
    th_fill(logits, LETHE_F32, B * T * V, -4, 4, 21);
    th_fill(idx, LETHE_I32, B * T, 0, V, 22);
    th_call(f, NULL);
    double worst = worst_against_reference(th_f32(f, "out"), logits, idx, B, T, V);
    th_check(worst < 1e-5, "text_mia.token_stats", "worst difference %.3g from mi_token_stats", worst);
    th_frame_free(f);
}

static void test_eval_token_stats(const lethe_program *p) {
    enum { B = 2, T = 6, W = 9, V = 64, PAD = 63 };
    th_frame *f = th_frame_new(th_entry(p, "packed"));
    uint64_t seed = 5;
    th_fill_args(f, 1u << LETHE_PARAM | 1u << LETHE_INPUT, 2, &seed);
    float *x = th_f32(f, "x");
    int32_t ids[B * T];
    th_fill(ids, LETHE_I32, B * T, 0, PAD, 23);
    ids[B * T - 2] = ids[B * T - 1] = PAD;   /* the second row ends in two padding tokens */
    for (int i = 0; i < B * T; i++)
        x[i * W] = (float)ids[i];
    th_call(f, NULL);
    double worst = worst_against_reference(th_f32(f, "out.1"), th_f32(f, "out.0"), ids, B, T, V);
    th_check(worst < 1e-4, "text_mia.eval_token_stats", "worst difference %.3g from mi_token_stats on token_logits",
             worst);
    /* the statistics are of a real distribution over 64 tokens: mu in
     * [-log 64, 0], sigma > 0, log p <= 0 */
    const float *s = th_f32(f, "out.1");
    int bad = 0;
    for (int i = 0; i < B * (T - 1); i++)
        bad += !(s[i * 3] <= 0 && s[i * 3 + 1] <= 0 && s[i * 3 + 1] >= -log((double)V) - 1e-4 && s[i * 3 + 2] > 0);
    th_check(bad == 0, "text_mia.eval_token_stats_ranges", "%d positions out of range", bad);
    th_frame_free(f);
}

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_file("tests/lth/text_mia.lth", "", &err);
    if (!th_check(p != NULL, "text_mia.compile", "%s", err ? err : ""))
        return th_exit();
    test_token_stats(p);
    test_eval_token_stats(p);
    return th_exit();
}
