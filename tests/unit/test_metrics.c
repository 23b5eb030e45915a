/* test_metrics.c: accuracy and loss, normal CDF/quantiles, the Gaussian
 * score's N(0,1) null, ROC/AUC and TPR at FPR on hand-computed cases, the
 * loss-threshold MIA on constructed data, table helpers, parameter shift. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "harness.h"
#include "metrics.h"
#include "philox.h"

static int near(double a, double b, double tol) { return fabs(a - b) <= tol; }

static void test_accuracy_ce(void) {
    const float logits[] = {1, 2, 0,   /* argmax 1 */
                            5, 5, 1,   /* tie: first max, 0 */
                            -1, -2, -0.5f, /* 2 */
                            0, 0, 0};  /* all equal: 0 */
    const int32_t y[] = {1, 1, 2, 0};
    int64_t c = mt_correct(logits, y, 4, 3);
    double acc = mt_accuracy(logits, y, 4, 3);
    double ce = mt_cross_entropy(logits, 3, 1);
    double want = -(2.0 - log(exp(1.0) + exp(2.0) + exp(0.0)));
    double big[3] = {1000, 0, -1000};
    float bigf[3] = {1000, 0, -1000};
    double ce_big = mt_cross_entropy(bigf, 3, 1); /* log-sum-exp keeps it finite: 1000 */
    (void)big;
    th_check(c == 3 && acc == 0.75 && near(ce, want, 1e-12) && near(ce_big, 1000, 1e-9) &&
                 isnan(mt_cross_entropy(logits, 3, 7)),
             "metrics_accuracy_cross_entropy", "correct %lld acc %g ce %.17g (want %.17g) ce_big %g", (long long)c, acc,
             ce, want, ce_big);
}

/* reference quantiles: mpmath at 50 digits, root of erfc(-x/sqrt2)/2 = p */
static void test_normal(void) {
    static const struct {
        double p, x;
    } q[] = {
        {0.5, 0.0},
        {0.975, 1.959963984540054},
        {0.99, 2.3263478740408408},
        {0.995, 2.5758293035489004},
        {0.8413447460685429, 1.0},
        {0.02275013194817921, -2.0},
        {0.001, -3.090232306167813},
        {1e-10, -6.361340902404056},
        {1e-20, -9.2623400897984076},
        {1e-300, -37.047096299361199},
        {1 - 1e-12, 7.0344869100478352},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        double x = mt_normal_quantile(q[i].p);
        if (!near(x, q[i].x, 1e-9 * fmax(1, fabs(q[i].x)))) {
            printf("# quantile(%.17g) = %.17g, want %.17g\n", q[i].p, x, q[i].x);
            bad++;
        }
    }
    /* Phi(quantile(p)) == p over the whole range, relative 1e-12 */
    for (int e = -300; e <= -1; e += 1) {
        for (int m = 1; m <= 9; m += 4) {
            double p = m * pow(10, e);
            if (p >= 1)
                continue;
            double x = mt_normal_quantile(p);
            double back = mt_normal_cdf(x);
            if (!(fabs(back - p) <= 1e-12 * p)) {
                if (bad < 10)
                    printf("# cdf(quantile(%g)) = %.17g\n", p, back);
                bad++;
            }
            /* symmetry, against the exact complement of the rounded 1 - p */
            double hi = 1 - p, c = 1 - hi, up = mt_normal_quantile(hi), xc = mt_normal_quantile(c);
            if (c > 0 && !near(up, -xc, 1e-12 * fmax(1, fabs(xc)))) {
                printf("# quantile(%.17g) = %.17g vs %.17g\n", hi, up, -xc);
                bad++;
            }
        }
    }
    bad += !isinf(mt_normal_quantile(0)) || !isinf(mt_normal_quantile(1)) || !isnan(mt_normal_quantile(-0.1)) ||
           !isnan(mt_normal_quantile(NAN));
    bad += !near(mt_normal_cdf(1.959963984540054), 0.975, 1e-15) || !near(mt_normal_sf(8), 6.22096057427178e-16, 1e-28);
    th_check(bad == 0, "metrics_normal_quantiles", "%d values off", bad);
}

/* xi from the poison stream and g independent of it: I ~ N(0, 1). */
static void test_gauss_score_null(void) {
    enum { N = 20000, D = 64 };
    double *I = malloc(N * sizeof *I), *In = malloc(N * sizeof *In);
    float xi[D], g[D];
    double eps = 0.3;
    int bad_null = 0;
    for (int i = 0; i < N; i++) {
        ds_gauss_noise(7, DS_STREAM_POISON, eps, i, D, xi);
        /* an anisotropic gradient that changes per sample, independent of xi */
        for (int j = 0; j < D; j++)
            g[j] = (float)((1 + j % 5) * philox_normal_at(99, 5, (uint64_t)i, (uint64_t)j) + 0.2);
        I[i] = mt_gauss_score(xi, g, D, eps);
        In[i] = mt_gauss_score_null(g, D, eps, 7, i);
        float xin[D];
        ds_gauss_noise(7, DS_STREAM_NULL, eps, i, D, xin);
        if (mt_gauss_score(xin, g, D, eps) != In[i])
            bad_null++;
    }
    mt_summary s = mt_summarize(I, N), sn = mt_summarize(In, N);
    int ok = fabs(s.mean) < 3 * s.se && fabs(s.std - 1) < 0.03 && fabs(sn.mean) < 3 * sn.se && fabs(sn.std - 1) < 0.03;
    th_check(ok, "metrics_gauss_score_is_standard_normal", "mean %g (se %g) std %g; null mean %g std %g", s.mean, s.se,
             s.std, sn.mean, sn.std);
    th_check(bad_null == 0, "metrics_gauss_null_matches_regenerated_noise", "%d scores differ", bad_null);

    /* under the null, TPR at FPR 0.01 is about 0.01 against both nulls */
    mt_tpr ta, te;
    char err[LETHE_ERR_LEN];
    int rc1 = mt_tpr_at_fpr_normal(I, N, MT_SIDE_TWO, 0.01, &ta, err);
    int rc2 = mt_tpr_at_fpr_empirical(I, N, In, N, MT_SIDE_TWO, 0.01, &te, err);
    double tol = 4 * sqrt(0.01 * 0.99 / N);
    th_check(rc1 == 0 && rc2 == 0 && near(ta.tpr, 0.01, tol) && near(te.tpr, 0.01, 2 * tol) && te.fpr <= 0.01,
             "metrics_tpr_at_null_is_fpr", "analytic %g empirical %g (fpr %g)", ta.tpr, te.tpr, te.fpr);

    /* a memorising model: g leans against xi, I is strongly negative */
    for (int i = 0; i < 1000; i++) {
        ds_gauss_noise(7, DS_STREAM_POISON, eps, i, D, xi);
        for (int j = 0; j < D; j++)
            g[j] = (float)(-xi[j] / eps + 0.5 * philox_normal_at(99, 6, (uint64_t)i, (uint64_t)j));
        I[i] = mt_gauss_score(xi, g, D, eps);
    }
    mt_summary sm = mt_summarize(I, 1000);
    mt_tpr tm, tpos;
    mt_tpr_at_fpr_normal(I, 1000, MT_SIDE_TWO, 0.01, &tm, err);
    mt_tpr_at_fpr_normal(I, 1000, MT_SIDE_POS, 0.01, &tpos, err);
    th_check(sm.mean < -5 && tm.tpr > 0.99 && tpos.tpr == 0 && sm.p_two_sided < 1e-10, "metrics_gauss_memorised",
             "mean %g tpr two-sided %g tpr pos %g", sm.mean, tm.tpr, tpos.tpr);
    float zero[D] = {0};
    th_check(isnan(mt_gauss_score(xi, zero, D, eps)) && isnan(mt_gauss_score(xi, g, D, 0)),
             "metrics_gauss_degenerate_is_nan", "zero gradient or eps gave a number");
    free(I);
    free(In);
}

static void test_roc(void) {
    const double pos[] = {0.9, 0.8, 0.4}, neg[] = {0.7, 0.3, 0.2, 0.1};
    mt_roc_point pts[8];
    int64_t n;
    char err[LETHE_ERR_LEN];
    int rc = mt_roc(pos, 3, neg, 4, pts, &n, err);
    static const mt_roc_point want[] = {{INFINITY, 0, 0},       {0.9, 0, 1.0 / 3}, {0.8, 0, 2.0 / 3},
                                        {0.7, 0.25, 2.0 / 3},   {0.4, 0.25, 1},    {0.3, 0.5, 1},
                                        {0.2, 0.75, 1},         {0.1, 1, 1}};
    int ok = rc == 0 && n == 8;
    for (int i = 0; ok && i < 8; i++)
        ok = pts[i].threshold == want[i].threshold && near(pts[i].fpr, want[i].fpr, 1e-15) &&
             near(pts[i].tpr, want[i].tpr, 1e-15);
    ok = ok && near(mt_auc(pts, n), 11.0 / 12, 1e-15);
    th_check(ok, "metrics_roc_hand_case", "rc %d n %lld auc %g", rc, (long long)n, mt_auc(pts, n));

    const double tp[] = {1, 1}, tn[] = {1, 0};
    rc = mt_roc(tp, 2, tn, 2, pts, &n, err);
    th_check(rc == 0 && n == 3 && near(mt_auc(pts, n), 0.75, 1e-15), "metrics_roc_ties", "n %lld auc %g",
             (long long)n, mt_auc(pts, n));
}

static void test_tpr_hand(void) {
    double neg[100];
    for (int i = 0; i < 100; i++)
        neg[i] = i;
    const double pos[] = {94, 94.5, 100, 200};
    mt_tpr t;
    char err[LETHE_ERR_LEN];
    int rc = mt_tpr_at_fpr_empirical(pos, 4, neg, 100, MT_SIDE_POS, 0.05, &t, err);
    th_check(rc == 0 && t.threshold == 94 && t.fpr == 0.05 && t.tpr == 0.75, "metrics_tpr_empirical_hand",
             "tau %g fpr %g tpr %g", t.threshold, t.fpr, t.tpr);
    /* 0.29 * 100 is 28.999999999999996 in binary: still 29 negatives allowed */
    rc = mt_tpr_at_fpr_empirical(pos, 4, neg, 100, MT_SIDE_POS, 0.29, &t, err);
    th_check(rc == 0 && t.threshold == 70 && near(t.fpr, 0.29, 1e-15), "metrics_tpr_alpha_rounding",
             "tau %g fpr %g", t.threshold, t.fpr);
    /* ties at the threshold: nothing strictly above, FPR below alpha */
    const double tied[] = {5, 5, 5, 5, 1, 1, 1, 1, 1, 1};
    const double p2[] = {5, 6};
    rc = mt_tpr_at_fpr_empirical(p2, 2, tied, 10, MT_SIDE_POS, 0.2, &t, err);
    th_check(rc == 0 && t.threshold == 5 && t.fpr == 0 && t.tpr == 0.5, "metrics_tpr_ties", "tau %g fpr %g tpr %g",
             t.threshold, t.fpr, t.tpr);
    /* the sides against the analytic null */
    const double I[] = {3, -3, 2.5, 0, NAN};
    mt_tpr two, negs, poss;
    mt_tpr_at_fpr_normal(I, 5, MT_SIDE_TWO, 0.01, &two, err);
    mt_tpr_at_fpr_normal(I, 5, MT_SIDE_NEG, 0.01, &negs, err);
    mt_tpr_at_fpr_normal(I, 5, MT_SIDE_POS, 0.01, &poss, err);
    th_check(two.tpr == 0.5 && negs.tpr == 0.25 && poss.tpr == 0.5 && two.npos == 4 &&
                 near(two.threshold, 2.5758293035489004, 1e-12) && near(negs.threshold, 2.3263478740408408, 1e-12),
             "metrics_tpr_normal_sides", "two %g neg %g pos %g", two.tpr, negs.tpr, poss.tpr);
    rc = mt_tpr_at_fpr_normal(I, 5, MT_SIDE_TWO, 1.5, &t, err);
    int rc2 = mt_tpr_at_fpr_empirical(I, 5, neg, 0, MT_SIDE_TWO, 0.01, &t, err);
    th_check(rc == LETHE_EARG && rc2 == LETHE_EARG, "metrics_tpr_bad_arguments", "rc %d %d", rc, rc2);
}

static void test_loss_mia(void) {
    double test[100];
    for (int i = 0; i < 100; i++)
        test[i] = i + 1;
    const double forget[] = {0.5, 1.5, 2, 3};
    mt_tpr t;
    char err[LETHE_ERR_LEN];
    int rc = mt_loss_mia(forget, 4, test, 100, 0.01, &t, err);
    th_check(rc == 0 && t.threshold == 2 && t.fpr == 0.01 && t.tpr == 0.5, "metrics_loss_mia_hand",
             "tau %g fpr %g tpr %g", t.threshold, t.fpr, t.tpr);
    /* constructed: members have much lower loss -> high TPR; same
     * distribution -> TPR near FPR */
    enum { N = 5000 };
    double *tl = malloc(N * sizeof *tl), *fl = malloc(N * sizeof *fl), *fs = malloc(N * sizeof *fs);
    for (int i = 0; i < N; i++) {
        tl[i] = exp(philox_normal_at(3, 1, 0, (uint64_t)i));
        fl[i] = exp(philox_normal_at(3, 2, 0, (uint64_t)i) - 4);
        fs[i] = exp(philox_normal_at(3, 3, 0, (uint64_t)i));
    }
    mt_tpr hi, same;
    mt_loss_mia(fl, N, tl, N, 0.01, &hi, err);
    mt_loss_mia(fs, N, tl, N, 0.01, &same, err);
    th_check(hi.tpr > 0.5 && near(same.tpr, 0.01, 0.008) && hi.fpr <= 0.01, "metrics_loss_mia_constructed",
             "separated %g same %g", hi.tpr, same.tpr);
    free(tl);
    free(fl);
    free(fs);
}

static void test_tables(void) {
    const double v[] = {1, 2, 3, 4, NAN};
    mt_summary s = mt_summarize(v, 5);
    int ok = s.n == 4 && s.skipped == 1 && s.mean == 2.5 && near(s.std, 1.2909944487358056, 1e-15) &&
             near(s.se, 0.6454972243679028, 1e-15) && near(s.t, 2.5 / 0.6454972243679028, 1e-12);
    double m, sd;
    mt_mean_std(v, 4, &m, &sd);
    char buf[64];
    mt_format_pm(buf, sizeof buf, 93.2149, 0.3351, 2);
    ok = ok && m == 2.5 && !strcmp(buf, "93.21 \xc2\xb1 0.34");
    const double one[] = {7};
    mt_mean_std(one, 1, &m, &sd);
    ok = ok && m == 7 && sd == 0;
    const double qv[] = {4, 1, 3, 2};
    ok = ok && mt_quantile(qv, 4, 0.5) == 2.5 && mt_quantile(qv, 4, 0.25) == 1.75 && mt_quantile(qv, 4, 1) == 4 &&
         isnan(mt_quantile(qv, 0, 0.5));
    th_check(ok, "metrics_table_helpers", "summary/format/quantile mismatch (%s)", buf);
}

static void test_shift(void) {
    const float a[] = {1, 2, 3}, b[] = {1, 0, -1};
    mt_shift s;
    mt_shift_init(&s);
    mt_shift_add(&s, a, b, 2);
    mt_shift_add(&s, a + 2, b + 2, 1); /* across tensors */
    th_check(near(mt_shift_l2(&s), sqrt(20), 1e-15) && s.l1 == 6 && s.linf == 4 && s.n == 3 &&
                 near(mt_shift_rel_l2(&s), sqrt(20.0 / 2), 1e-15) && near(mt_param_shift_l2(a, b, 3), sqrt(20), 1e-15),
             "metrics_param_shift", "l2 %g l1 %g linf %g", mt_shift_l2(&s), s.l1, s.linf);
}

int main(void) {
    test_accuracy_ce();
    test_normal();
    test_gauss_score_null();
    test_roc();
    test_tpr_hand();
    test_loss_mia();
    test_tables();
    test_shift();
    return th_exit();
}
