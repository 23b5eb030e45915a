/* test_membership.c: the membership scores of membership.h against cases
 * computed by hand (the arithmetic is in the comments), the zlib length
 * against deflate streams decoded by hand, the per-token mu/sigma against a
 * direct float64 computation, offline LiRA on 3 shadow values, the edge
 * cases (Min-K% of less than one token, sigma 0, NaN inputs), and LiRA's TPR
 * at FPR 0.01 and 0.001 through metrics.h on constructed data. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "membership.h"
#include "metrics.h"
#include "philox.h"

static int near(double a, double b, double tol) { return fabs(a - b) <= tol; }

/* The sequence of every text test: 4 tokens, NLL 1, 2, 0.5, 4.5. */
static const double LOGP[4] = {-1, -2, -0.5, -4.5};

static void test_zlib_length(void) {
    char err[LETHE_ERR_LEN];
    /* zlib stream = 2-byte header (78 9c) + deflate + 4-byte Adler-32.
     * "": one fixed-Huffman block holding only end-of-block: 3 header bits +
     *     7 = 10 bits -> 2 bytes; 2 + 2 + 4 = 8.
     * "a": 3 + literal 'a' (8 bits) + end of block (7) = 18 bits -> 3 bytes; 9.
     * "abcabcabcabc": zlib's stream decodes (fixed Huffman) to literals
     *     a b c a (4 x 8 bits), a match of length 8 at distance 3 (length code
     *     7 bits + distance code 5 bits), end of block (7):
     *     3 + 32 + 12 + 7 = 54 bits -> 7 bytes; 2 + 7 + 4 = 13. */
    int64_t l0 = mi_zlib_length("", 0, err), l1 = mi_zlib_length("a", 1, err),
            l12 = mi_zlib_length("abcabcabcabc", 12, err);
    /* compression at work: 1000 bytes of one letter take a few dozen */
    char many[1000];
    memset(many, 'x', sizeof many);
    int64_t lmany = mi_zlib_length(many, sizeof many, err);
    th_check(l0 == 8 && l1 == 9 && l12 == 13 && lmany > 8 && lmany < 40, "membership_zlib_length_hand",
             "lengths %lld %lld %lld %lld (want 8 9 13 and < 40)", (long long)l0, (long long)l1, (long long)l12,
             (long long)lmany);
}

static void test_text_scores_hand(void) {
    mi_score s;
    char err[LETHE_ERR_LEN];
    int bad = 0;
    /* LOSS: mean NLL = (1 + 2 + 0.5 + 4.5) / 4 = 2, score -2 */
    bad += mi_loss_score(LOGP, 4, &s, err) != 0 || s.score != -2 || s.n != 4 || s.skipped != 0;
    double loss = s.score;
    /* zlib: mean NLL 2 / Z 13 ("abcabcabcabc", above), score -2/13 */
    bad += mi_zlib_score(LOGP, 4, "abcabcabcabc", 12, &s, err) != 0 || !near(s.score, -2.0 / 13, 1e-15) || s.n != 4;
    double zl = s.score;
    /* Min-K%, k = 50%: floor(0.5 * 4) = 2 lowest log-probs -4.5 and -2,
     * mean -3.25; k = 75%: 3 lowest -4.5, -2, -1, mean -2.5; k = 100%: all,
     * -2 (the LOSS score) */
    double mk50, mk75, mk100;
    bad += mi_min_k_score(LOGP, 4, 0.5, &s, err) != 0;
    mk50 = s.score;
    bad += mi_min_k_score(LOGP, 4, 0.75, &s, err) != 0;
    mk75 = s.score;
    bad += mi_min_k_score(LOGP, 4, 1.0, &s, err) != 0;
    mk100 = s.score;
    bad += mk50 != -3.25 || mk75 != -2.5 || mk100 != -2;
    /* Min-K%++ with mu = -1.5, -1, -1, -2 and sigma = 0.5, 2, 0.25, 1:
     * z = (-1 + 1.5)/0.5 = 1, (-2 + 1)/2 = -0.5, (-0.5 + 1)/0.25 = 2,
     * (-4.5 + 2)/1 = -2.5; k = 50%: the 2 lowest -2.5 and -0.5, mean -1.5 */
    const double mu[4] = {-1.5, -1, -1, -2}, sigma[4] = {0.5, 2, 0.25, 1};
    bad += mi_min_k_pp_score(LOGP, mu, sigma, 4, 0.5, &s, err) != 0 || s.score != -1.5 || s.n != 4;
    double mkpp = s.score;
    /* reference: reference log-probs -3, -1, -2.5 (mean NLL 13/6, a
     * different length), target mean NLL 2: score 13/6 - 2 = 1/6 */
    const double ref[3] = {-3, -1, -2.5};
    bad += mi_reference_score(LOGP, 4, ref, 3, &s, err) != 0 || !near(s.score, 1.0 / 6, 1e-15) || s.n != 7;
    double rs = s.score;
    th_check(bad == 0, "membership_text_scores_hand",
             "loss %g zlib %.17g min-k 50/75/100%% %g %g %g min-k++ %g reference %.17g", loss, zl, mk50, mk75, mk100,
             mkpp, rs);
}

static void test_text_edges(void) {
    mi_score s;
    char err[LETHE_ERR_LEN];
    /* k = 20% of 4 tokens is 0.8 token: rounds up to the 1 lowest, -4.5 */
    int rc = mi_min_k_score(LOGP, 4, 0.2, &s, err);
    int ok = rc == 0 && s.score == -4.5;
    /* k = 29% of 100 tokens logp = 0, -1, ..., -99: 0.29 * 100 is
     * 28.999999999999996 in binary, still 29 tokens: -99 .. -71, mean -85
     * (28 would give -85.5) */
    double ramp[100];
    for (int i = 0; i < 100; i++)
        ramp[i] = -i;
    rc = mi_min_k_score(ramp, 100, 0.29, &s, err);
    ok = ok && rc == 0 && s.score == -85;
    th_check(ok, "membership_min_k_rounding", "rc %d score %g", rc, s.score);

    /* NaN and inf tokens are skipped and counted: LOSS over -1, NaN, -2, inf
     * is the mean of -1, -2 = -1.5 with 2 skipped; Min-K% 50% of the 2
     * usable tokens is the lowest, -2 */
    const double holes[4] = {-1, NAN, -2, INFINITY};
    mi_score l, m;
    mi_loss_score(holes, 4, &l, err);
    mi_min_k_score(holes, 4, 0.5, &m, err);
    const double none[2] = {NAN, NAN};
    mi_score e, r;
    mi_loss_score(none, 2, &e, err);
    /* a reference score with no usable target token is NaN */
    mi_reference_score(none, 2, LOGP, 4, &r, err);
    th_check(l.score == -1.5 && l.n == 2 && l.skipped == 2 && m.score == -2 && m.skipped == 2 && isnan(e.score) &&
                 e.n == 0 && e.skipped == 2 && isnan(r.score) && r.n == 4 && r.skipped == 2,
             "membership_nan_tokens_skipped", "loss %g (n %lld skipped %lld) min-k %g empty %g reference %g", l.score,
             (long long)l.n, (long long)l.skipped, m.score, e.score, r.score);

    /* Min-K%++: the hand case plus a token of sigma 0 and one of NaN mu:
     * both skipped, the score stays -1.5 */
    const double lp[6] = {-1, -2, -0.5, -4.5, -0.7, -3};
    const double mu[6] = {-1.5, -1, -1, -2, -0.7, NAN}, sigma[6] = {0.5, 2, 0.25, 1, 0, 1};
    rc = mi_min_k_pp_score(lp, mu, sigma, 6, 0.5, &s, err);
    th_check(rc == 0 && s.score == -1.5 && s.n == 4 && s.skipped == 2, "membership_min_k_pp_sigma_zero_skipped",
             "rc %d score %g n %lld skipped %lld", rc, s.score, (long long)s.n, (long long)s.skipped);

    int r0 = mi_min_k_score(LOGP, 4, 0, &s, err);
    int r1 = mi_min_k_pp_score(LOGP, mu, sigma, 4, 1.5, &s, err);
    int r2 = mi_min_k_pp_score(LOGP, NULL, NULL, 4, 0.5, &s, err);
    int r3 = mi_loss_score(NULL, 3, &s, err);
    th_check(r0 == LETHE_EARG && r1 == LETHE_EARG && r2 == LETHE_EARG && r3 == LETHE_EARG && isnan(s.score),
             "membership_text_bad_arguments", "rc %d %d %d %d", r0, r1, r2, r3);
    mi_min_k_score(LOGP, 4, NAN, &s, err);
    th_check(strstr(err, "k = nan") != NULL, "membership_bad_k_message", "message: %s", err);
}

/* mu = sum p log p, sigma^2 = sum p (log p)^2 - mu^2, computed directly */
static void direct_stats(const float *x, int v, int next, double *logp, double *mu, double *sigma) {
    double s = 0;
    for (int j = 0; j < v; j++)
        s += exp((double)x[j]);
    double m1 = 0, m2 = 0;
    for (int j = 0; j < v; j++) {
        double p = exp((double)x[j]) / s, lp = log(p);
        m1 += p * lp;
        m2 += p * lp * lp;
    }
    *mu = m1;
    *sigma = sqrt(m2 - m1 * m1);
    *logp = log(exp((double)x[next]) / s);
}

static void test_token_stats(void) {
    const float x[5] = {1, 2, 0.5f, -1, 3};
    double lp, mu, sd;
    direct_stats(x, 5, 1, &lp, &mu, &sd);
    mi_token t = mi_token_stats(x, 5, 1);
    /* the same logits 1000 higher (exact in float): the direct sums would
     * overflow, the centred ones give the same numbers */
    float hi[5];
    for (int j = 0; j < 5; j++)
        hi[j] = x[j] + 1000;
    mi_token th = mi_token_stats(hi, 5, 1);
    th_check(near(t.mu, mu, 1e-13) && near(t.sigma, sd, 1e-13) && near(t.logp, lp, 1e-14) &&
                 near(t.logp, -mt_cross_entropy(x, 5, 1), 1e-15) && near(th.mu, mu, 1e-13) &&
                 near(th.sigma, sd, 1e-13) && near(th.logp, lp, 1e-13),
             "membership_token_stats_vs_direct", "mu %.17g/%.17g sigma %.17g/%.17g logp %.17g/%.17g (shifted mu %.17g)",
             t.mu, mu, t.sigma, sd, t.logp, lp, th.mu);

    /* equal logits: p = 1/4 each, mu = log p = -log 4, sigma exactly 0 */
    const float eq[4] = {0.3f, 0.3f, 0.3f, 0.3f};
    mi_token te = mi_token_stats(eq, 4, 2);
    /* a -inf logit is a token of probability 0: {0, 0, -inf} is the
     * uniform distribution on 2 tokens, and the impossible token's logp -inf */
    const float masked[3] = {0, 0, -INFINITY};
    mi_token tm = mi_token_stats(masked, 3, 2);
    const float bad[3] = {0, NAN, 1};
    mi_token tb = mi_token_stats(bad, 3, 0);
    mi_token to = mi_token_stats(x, 5, 5);
    th_check(te.sigma == 0 && near(te.mu, -log(4), 1e-15) && near(te.logp, -log(4), 1e-15) && tm.sigma == 0 &&
                 near(tm.mu, -log(2), 1e-15) && tm.logp == -INFINITY && isnan(tb.mu) && isnan(tb.sigma) &&
                 isnan(tb.logp) && isnan(to.logp) && near(to.mu, mu, 1e-13),
             "membership_token_stats_edges", "equal: mu %.17g sigma %g; masked: mu %.17g sigma %g logp %g", te.mu,
             te.sigma, tm.mu, tm.sigma, tm.logp);
}

static void test_logit_confidence(void) {
    /* logits 2, 0, 0, y = 0: p_y = e^2 / (e^2 + 2), 1 - p_y = 2 / (e^2 + 2),
     * phi = log(e^2 / 2) = 2 - log 2 */
    const float a[3] = {2, 0, 0};
    double phi = mi_logit_confidence(a, 3, 0);
    /* logits 100, 0, 0: p_y = 1 - 2e-44 rounds to 1 in float64, yet
     * phi = 100 - log 2 exactly as above; y = 1: phi = 0 - log(e^100 + 1)
     * = -100 - log1p(e^-100), which is -100 in float64 */
    const float b[3] = {100, 0, 0};
    double phib = mi_logit_confidence(b, 3, 0), phic = mi_logit_confidence(b, 3, 1);
    const float one[1] = {1};
    th_check(near(phi, 2 - log(2), 1e-15) && near(phib, 100 - log(2), 1e-13) && near(phic, -100, 1e-13) &&
                 isnan(mi_logit_confidence(one, 1, 0)) && isnan(mi_logit_confidence(a, 3, 3)),
             "membership_logit_confidence_hand", "phi %.17g, %.17g, %.17g", phi, phib, phic);
}

static void test_normal_tail(void) {
    /* references: mpmath at 50 digits, -log(erfc(z / sqrt 2) / 2) */
    static const struct {
        double z, v;
    } ref[] = {
        {0, 0.69314718055994530942},       {2, 3.7831843336820319488},       {-3, 0.0013508099647481937988},
        {-10, 7.619853024160526066e-24},   {29.999, 454.29121119612382879},  {30, 454.32124395634319711},
        {30.001, 454.35127771545879392},   {40, 804.60844201375378817},      {100, 5005.5242086942050886},
        {1000, 500007.82669481218431},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++) {
        double v = mi_neg_log_normal_sf(ref[i].z);
        if (!near(v, ref[i].v, 1e-13 * fmax(fabs(ref[i].v), 1e-300) + 1e-300)) {
            printf("# -log sf(%g) = %.17g, want %.17g\n", ref[i].z, v, ref[i].v);
            bad++;
        }
    }
    /* s > -log(alpha) is z > Phi^-1(1 - alpha): the Gaussian FPR alpha */
    bad += !near(mi_neg_log_normal_sf(mt_normal_quantile(0.99)), -log(0.01), 1e-12);
    bad += !near(mi_neg_log_normal_sf(mt_normal_quantile(0.999)), -log(0.001), 1e-12);
    bad += mi_neg_log_normal_sf(INFINITY) != INFINITY || mi_neg_log_normal_sf(-INFINITY) != 0 ||
           !isnan(mi_neg_log_normal_sf(NAN));
    th_check(bad == 0, "membership_normal_tail", "%d values off", bad);
}

static void test_lira_hand(void) {
    /* 4 examples x 3 OUT shadow models:
     *   ex0: 1, 2, 3     mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1; target 4
     *        z = 2, 1 - Phi(2) = 0.02275013194817921, s = 3.7831843336820319
     *   ex1: 0, .5, 1    mean .5, std sqrt((.25 + 0 + .25) / 2) = .5; target .5
     *        z = 0, s = log 2
     *   ex2: NaN, 5, 5   mean 5, std 0: no test (unscored); 1 skipped
     *   ex3: NaN x 3     no OUT value: unscored; 3 skipped */
    const double out[12] = {1, 2, 3, 0, 0.5, 1, NAN, 5, 5, NAN, NAN, NAN};
    const double target[4] = {4, 0.5, 6, 1};
    double s[4];
    mi_gauss fit[4];
    mi_lira_stats st;
    char err[LETHE_ERR_LEN];
    int rc = mi_lira_offline(out, target, 4, 3, MI_LIRA_PER_EXAMPLE_STD, s, fit, &st, err);
    th_check(rc == 0 && fit[0].mean == 2 && fit[0].std == 1 && fit[0].n == 3 && fit[1].mean == 0.5 &&
                 fit[1].std == 0.5 && fit[2].std == 0 && fit[2].n == 2 && isnan(fit[3].mean) && fit[3].n == 0 &&
                 near(s[0], 3.7831843336820319488, 1e-14) && near(s[1], log(2), 1e-15) && isnan(s[2]) &&
                 isnan(s[3]) && st.scored == 2 && st.unscored == 2 && st.skipped_out == 4 && isnan(st.global_std),
             "membership_lira_per_example_hand", "rc %d scores %.17g %.17g %g %g (scored %lld unscored %lld skipped %lld)",
             rc, s[0], s[1], s[2], s[3], (long long)st.scored, (long long)st.unscored, (long long)st.skipped_out);

    /* global std: pooled squared deviations 2 + 0.5 + 0 over degrees of
     * freedom 2 + 2 + 1 = 5: sigma = sqrt(0.5) = 1/sqrt 2.
     *   ex0: z = 2 sqrt 2, 1 - Phi(z) = erfc(2) / 2 = 0.0046777349810472658 / 2,
     *        s = -log(0.0023388674905236329) = 6.0580884451765828839
     *   ex1: z = 0, s = log 2
     *   ex2: z = (6 - 5) sqrt 2, 1 - Phi = erfc(1) / 2 = 0.15729920705028513 / 2,
     *        s = 2.542752690493193558
     *   ex3: still no mean: unscored */
    rc = mi_lira_offline(out, target, 4, 3, MI_LIRA_GLOBAL_STD, s, fit, &st, err);
    th_check(rc == 0 && near(st.global_std, sqrt(0.5), 1e-15) && fit[2].std == st.global_std &&
                 near(s[0], 6.0580884451765828839, 1e-13) && near(s[1], log(2), 1e-15) &&
                 near(s[2], 2.542752690493193558, 1e-14) && isnan(s[3]) && st.scored == 3 && st.unscored == 1,
             "membership_lira_global_std_hand", "rc %d sigma %.17g scores %.17g %.17g %.17g %g", rc, st.global_std,
             s[0], s[1], s[2], s[3]);

    /* without fit[], the same scores */
    double s2[4];
    mi_lira_offline(out, target, 4, 3, MI_LIRA_GLOBAL_STD, s2, NULL, &st, err);
    int same = 1;
    for (int i = 0; i < 4; i++)
        same = same && (s2[i] == s[i] || (isnan(s2[i]) && isnan(s[i])));
    th_check(same, "membership_lira_fit_optional", "scores differ without fit[]");

    /* errors: no shadow model; a global std with no example of 2 values;
     * a global std of 0 */
    const double single[2] = {1, NAN}, flat[4] = {2, 2, 3, 3};
    int r0 = mi_lira_offline(out, target, 4, 0, MI_LIRA_PER_EXAMPLE_STD, s, NULL, &st, err);
    int r1 = mi_lira_offline(single, target, 1, 2, MI_LIRA_GLOBAL_STD, s, NULL, &st, err);
    int r1m = strstr(err, "2 finite OUT values") != NULL;
    int r2 = mi_lira_offline(flat, target, 2, 2, MI_LIRA_GLOBAL_STD, s, NULL, &st, err);
    th_check(r0 == LETHE_EARG && r1 == LETHE_EARG && r1m && r2 == LETHE_EARG && isnan(s[0]),
             "membership_lira_bad_arguments", "rc %d %d %d (%s)", r0, r1, r2, err);
}

/* Members' target phi sits 3 OUT-stds above the OUT mean, non-members'
 * comes from the OUT distribution itself; 4 shadow models per example. */
static void test_lira_tpr_constructed(void) {
    enum { N = 4000, S = 4 };
    double *out = malloc(2 * N * S * sizeof *out), *target = malloc(2 * N * sizeof *target),
           *score = malloc(2 * N * sizeof *score);
    for (int i = 0; i < 2 * N; i++) {
        double m = 3 * philox_normal_at(11, 1, (uint64_t)i, 0), sd = 0.5 + (i % 7) * 0.25;
        for (int s = 0; s < S; s++)
            out[i * S + s] = m + sd * philox_normal_at(11, 2, (uint64_t)i, (uint64_t)s);
        target[i] = m + sd * (philox_normal_at(11, 3, (uint64_t)i, 0) + (i < N ? 3 : 0));
    }
    mi_lira_stats st;
    char err[LETHE_ERR_LEN];
    int ok = 1;
    double tpr2[2], tpr3[2];
    for (int mode = 0; mode < 2; mode++) {
        mi_lira_offline(out, target, 2 * N, S, (mi_lira_std)mode, score, NULL, &st, err);
        /* positives: members (first N), negatives: non-members */
        mt_tpr t2, t3, chance;
        mt_tpr_at_fpr_empirical(score, N, score + N, N, MT_SIDE_POS, 0.01, &t2, err);
        mt_tpr_at_fpr_empirical(score, N, score + N, N, MT_SIDE_POS, 0.001, &t3, err);
        /* one half of the non-members against the other: TPR ~ FPR */
        mt_tpr_at_fpr_empirical(score + N, N / 2, score + N + N / 2, N / 2, MT_SIDE_POS, 0.01, &chance, err);
        ok = ok && st.scored == 2 * N && t3.tpr <= t2.tpr && t2.fpr <= 0.01 && t3.fpr <= 0.001 && chance.tpr < 0.03;
        tpr2[mode] = t2.tpr;
        tpr3[mode] = t3.tpr;
        printf("# %s std: TPR %.3f at FPR 0.01, %.3f at FPR 0.001; non-members against non-members %.3f\n",
               mode ? "global" : "per-example", t2.tpr, t3.tpr, chance.tpr);
    }
    /* 4 values per example make each per-example sigma noisy (a t tail with
     * 3 degrees of freedom), which costs most at FPR 0.001: the paper's
     * reason for the global std at small N */
    ok = ok && tpr2[0] > 0.15 && tpr2[1] > 0.3 && tpr3[1] > 0.1 && tpr3[1] > 2 * tpr3[0];
    th_check(ok, "membership_lira_tpr_constructed", "see the # lines above");
    free(out);
    free(target);
    free(score);
}

int main(void) {
    test_zlib_length();
    test_text_scores_hand();
    test_text_edges();
    test_token_stats();
    test_logit_confidence();
    test_normal_tail();
    test_lira_hand();
    test_lira_tpr_constructed();
    return th_exit();
}
