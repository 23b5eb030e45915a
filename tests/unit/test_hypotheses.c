/* test_hypotheses.c: the runner of the paper's hypotheses (runtime/hypotheses.c)
 * with the rules of graphs/experiments/hypotheses_models.lth at a tiny size
 * (tests/lth/hypotheses_small.lth), against closed forms:
 *   - a weighted ridge-regression fit (some samples removed by weight 0)
 *     equals the solution of its normal equations
 *   - the H2 cosine equals the one computed from the closed form: the
 *     retain-set gradient at theta(clean) against theta(retain) - theta(clean)
 *   - a case's shift_poison and cos_poison, from the normal equations with
 *     the poisons it crafted
 *   - H1 on a case where it must hold: a target far from the clean fit
 *     (eps 3), whose poisons move the fit far more than removing as many of
 *     64 clean samples; the canceling loss falls
 *   - a case is a function of its seed (bit-identical twice), and bad
 *     requests are refused with a message
 *   - the random clean rows: for regression from the first label vector's
 *     half only (appendix C.2), for classification from all clean rows
 *   - a network's features as a setting's rows (hyp_use_features): rows and
 *     classes copied; regression labels as appendix C.2 makes them (least
 *     squares on each half of the rows recovers two orthogonal unit vectors);
 *     features of another width, too few rows or more classes than outputs
 *     refused
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hypotheses.h"
#include "threadpool.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

#define SMALL_LTH "tests/lth/hypotheses_small.lth"

/* Solves a x = b (n x n, row-major, overwritten) by Gaussian elimination
 * with partial pivoting. */
static void solve(double *a, double *b, int n) {
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[piv * n + c]))
                piv = r;
        for (int k = 0; k < n; k++) {
            double t = a[c * n + k];
            a[c * n + k] = a[piv * n + k], a[piv * n + k] = t;
        }
        double t = b[c];
        b[c] = b[piv], b[piv] = t;
        for (int r = c + 1; r < n; r++) {
            double f = a[r * n + c] / a[c * n + c];
            for (int k = c; k < n; k++)
                a[r * n + k] -= f * a[c * n + k];
            b[r] -= f * b[c];
        }
    }
    for (int c = n - 1; c >= 0; c--) {
        for (int k = c + 1; k < n; k++)
            b[c] -= a[c * n + k] * b[k];
        b[c] /= a[c * n + c];
    }
}

/* The normal equations of mean_w 0.5 (x.a + b - y)^2 + 0.5 l2 |(a, b)|^2:
 * H theta = g with H = X~' W X~ / S + l2 I, g = X~' W y / S, X~ = [x, 1]. */
static void normal_equations(const hyp_setting *s, const float *w, double l2, double *h, double *g) {
    int n = (int)s->d + 1;
    double total = 0;
    memset(h, 0, sizeof(double) * (size_t)(n * n));
    memset(g, 0, sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < s->n + s->p; i++) {
        if (!w[i])
            continue;
        total += w[i];
        for (int r = 0; r < n; r++) {
            double xr = r < s->d ? s->x[i * s->d + r] : 1;
            g[r] += w[i] * xr * s->y_real[i];
            for (int c = 0; c < n; c++)
                h[r * n + c] += w[i] * xr * (c < s->d ? s->x[i * s->d + c] : 1);
        }
    }
    for (int r = 0; r < n; r++) {
        g[r] /= total;
        for (int c = 0; c < n; c++)
            h[r * n + c] = h[r * n + c] / total + (r == c ? l2 : 0);
    }
}

static void closed_form(const hyp_setting *s, const float *w, double l2, double *theta) {
    int n = (int)s->d + 1;
    double *h = malloc(sizeof(double) * (size_t)(n * n));
    normal_equations(s, w, l2, h, theta);
    solve(h, theta, n);
    free(h);
}

/* theta = (m.w..., m.b) of a model store. */
static void theta_of(const ts_store *m, int64_t d, double *theta) {
    const ts_tensor *w = ts_get(m, "w"), *b = ts_get(m, "b");
    for (int64_t j = 0; j < d; j++)
        theta[j] = w ? ((const float *)w->data)[j] : NAN;
    theta[d] = b ? ((const float *)b->data)[0] : NAN;
}

static double l2_default(const hyp_setting *s) {
    for (int i = 0; i < s->fit->nargs; i++)
        if (!strcmp(s->fit->args[i].name, "l2"))
            return s->fit->args[i].scalar_default;
    return NAN;
}

static void closed_form_cases(const lethe_program *p, lethe_ctx *ctx) {
    char err[LETHE_ERR_LEN] = "";
    hyp_setting s;
    if (hyp_setting_open(p, "lin", &s, err)) {
        th_fail("hypotheses.linear.fit", "%s", err);
        return;
    }
    hyp_make_data(&s, 3);
    int n = (int)s.d + 1;
    int64_t rows = s.n + s.p;
    float *w_clean = calloc((size_t)rows, sizeof(float)), *w_retain = calloc((size_t)rows, sizeof(float));
    double *want = calloc((size_t)n, sizeof(double)), *got = calloc((size_t)n, sizeof(double));
    double *clean_theta = calloc((size_t)n, sizeof(double)), *h = calloc((size_t)(n * n), sizeof(double));
    double *g = calloc((size_t)n, sizeof(double)), l2 = l2_default(&s);
    for (int64_t i = 0; i < s.n; i++)
        w_clean[i] = 1, w_retain[i] = i % 5 != 2;   /* retain: every fifth clean sample removed */
    ts_store clean = {0}, retain = {0};
    int iters = 0;
    int rc = hyp_fit(&s, ctx, w_clean, 200000, 1e-6, &clean, &iters, err);
    if (!rc)
        rc = hyp_fit(&s, ctx, w_retain, 200000, 1e-6, &retain, &iters, err);
    if (rc)
        th_fail("hypotheses.linear.fit", "%s", err);
    else {
        closed_form(&s, w_retain, l2, want);
        theta_of(&retain, s.d, got);
        double worst = 0;
        for (int j = 0; j < n; j++)
            worst = fmax(worst, fabs(got[j] - want[j]) / fmax(1.0, fabs(want[j])));
        th_check(worst < 1e-4, "hypotheses.linear.fit", "worst error %.3g against the normal equations (%d steps)",
                 worst, iters);
        /* the retain-set gradient at theta(clean), and the shift to theta(retain) */
        theta_of(&clean, s.d, clean_theta);
        normal_equations(&s, w_retain, l2, h, g);
        double dot = 0, uu = 0, vv = 0, cosine = NAN;
        for (int r = 0; r < n; r++) {
            double grad = -g[r];
            for (int c = 0; c < n; c++)
                grad += h[r * n + c] * clean_theta[c];
            double u = -grad, v = want[r] - clean_theta[r];
            dot += u * v, uu += u * u, vv += v * v;
        }
        double expect = dot / sqrt(uu * vv);
        rc = hyp_update_cosine(&s, ctx, w_retain, &clean, &retain, &cosine, err);
        if (rc)
            th_fail("hypotheses.linear.cosine", "%s", err);
        else
            th_check(fabs(cosine - expect) < 2e-3, "hypotheses.linear.cosine", "cosine %.6f, closed form %.6f",
                     cosine, expect);
    }
    ts_clear(&clean), ts_clear(&retain);
    free(w_clean), free(w_retain), free(want), free(got), free(clean_theta), free(h), free(g);
    hyp_setting_free(&s);
}

/* shift_poison and cos_poison of a linear-regression case, from the normal
 * equations of clean and clean + the case's poisons (left in s->x). */
static void closed_form_case(const hyp_setting *s, const hyp_result *r, char *name) {
    int n = (int)s->d + 1;
    int64_t rows = s->n + s->p;
    float *w = calloc((size_t)rows, sizeof(float));
    double *clean = calloc((size_t)n, sizeof(double)), *full = calloc((size_t)n, sizeof(double));
    double *h = calloc((size_t)(n * n), sizeof(double)), *g = calloc((size_t)n, sizeof(double)), l2 = l2_default(s);
    for (int64_t i = 0; i < s->n; i++)
        w[i] = 1;
    closed_form(s, w, l2, clean);
    normal_equations(s, w, l2, h, g);   /* the retain set: the clean rows */
    for (int j = 0; j < r->n_poison; j++)
        w[s->n + j] = 1;
    closed_form(s, w, l2, full);
    double shift = 0, dot = 0, uu = 0, vv = 0;
    for (int a = 0; a < n; a++) {
        double grad = -g[a];
        for (int c = 0; c < n; c++)
            grad += h[a * n + c] * full[c];
        double v = clean[a] - full[a];
        shift += v * v, dot += -grad * v, uu += grad * grad, vv += v * v;
    }
    shift = sqrt(shift);
    double cosine = dot / sqrt(uu * vv);
    snprintf(name, 96, "hypotheses.lin.closed_form_case");
    th_check(fabs(r->shift_poison - shift) < 1e-3 * fmax(1, shift) && fabs(r->cos_poison - cosine) < 2e-3, name,
             "shift %.6g (closed form %.6g), cosine %.6f (closed form %.6f)", r->shift_poison, shift, r->cos_poison,
             cosine);
    free(w), free(clean), free(full), free(h), free(g);
}

static int same_result(const hyp_result *a, const hyp_result *b) {
    return a->shift_poison == b->shift_poison && a->shift_random == b->shift_random && a->cos_poison == b->cos_poison &&
           a->cos_random == b->cos_random && a->cancel_loss == b->cancel_loss &&
           a->random_equal_k == b->random_equal_k;
}

static void h1_case(const lethe_program *p, lethe_ctx *ctx, const char *setting) {
    char name[96], err[LETHE_ERR_LEN] = "";
    snprintf(name, sizeof name, "hypotheses.%s.h1_ordering", setting);
    hyp_setting s;
    if (hyp_setting_open(p, setting, &s, err)) {
        th_fail(name, "%s", err);
        return;
    }
    hyp_make_data(&s, 0);
    hyp_opts o;
    hyp_opts_default(&o);
    o.target_eps = 3.0;
    o.cancel_steps = 200;
    float *w_clean = calloc((size_t)(s.n + s.p), sizeof(float));
    for (int64_t i = 0; i < s.n; i++)
        w_clean[i] = 1;
    ts_store clean = {0};
    hyp_result r[2], again;
    int rc = hyp_fit(&s, ctx, w_clean, o.fit_iters, o.fit_tol, &clean, NULL, err);
    for (int seed = 0; !rc && seed < 2; seed++)
        rc = hyp_case(&s, ctx, &o, &clean, 8, seed, &r[seed], err);
    if (!rc)
        rc = hyp_case(&s, ctx, &o, &clean, 8, 1, &again, err);
    if (rc)
        th_fail(name, "%s", err);
    else {
        int ok = 1;
        for (int k = 0; k < 2; k++)
            ok &= r[k].shift_poison > 3 * r[k].shift_random && r[k].cancel_loss < r[k].cancel_loss_start &&
                  fabs(r[k].target_distance - 3.0) < 1e-3 && r[k].cos_poison >= -1 && r[k].cos_poison <= 1;
        th_check(ok, name, "seed 0: shift %.4g against random %.4g, canceling loss %.3g -> %.3g, target at %.4g; "
                 "seed 1: shift %.4g against %.4g, loss %.3g -> %.3g", r[0].shift_poison, r[0].shift_random,
                 r[0].cancel_loss_start, r[0].cancel_loss, r[0].target_distance, r[1].shift_poison,
                 r[1].shift_random, r[1].cancel_loss_start, r[1].cancel_loss);
        if (s.regression)   /* the last case's poisons are in s.x: its measures against closed forms */
            closed_form_case(&s, &again, name);
        snprintf(name, sizeof name, "hypotheses.%s.deterministic", setting);
        th_check(same_result(&r[1], &again), name, "seed 1 twice: shift %.17g and %.17g", r[1].shift_poison,
                 again.shift_poison);
        snprintf(name, sizeof name, "hypotheses.%s.bad_size", setting);
        rc = hyp_case(&s, ctx, &o, &clean, 9, 0, &again, err);
        th_check(rc != 0 && strstr(err, "poison set of 9"), name, "9 poisons where 8 fit: rc %d, '%s'", rc, err);
    }
    ts_clear(&clean);
    free(w_clean);
    hyp_setting_free(&s);
}

/* Least squares y ~ x u over rows [from, to) of a setting (d <= 16). */
static void least_squares(const hyp_setting *s, int64_t from, int64_t to, double *u) {
    double a[16 * 16] = {0};
    const int64_t d = s->d;
    for (int64_t j = 0; j < d; j++)
        u[j] = 0;
    for (int64_t i = from; i < to; i++)
        for (int64_t j = 0; j < d; j++) {
            u[j] += (double)s->x[i * d + j] * s->y_real[i];
            for (int64_t k = 0; k < d; k++)
                a[j * d + k] += (double)s->x[i * d + j] * s->x[i * d + k];
        }
    solve(a, u, (int)d);
}

/* The small file's two settings, or a failure under `name`. */
static int open_settings(const lethe_program *p, hyp_setting *lin, hyp_setting *logi, const char *name) {
    char err[LETHE_ERR_LEN] = "";
    if (!hyp_setting_open(p, "lin", lin, err) && !hyp_setting_open(p, "logi", logi, err))
        return 1;
    th_fail(name, "%s", err);
    return 0;
}

static void features_cases(const lethe_program *p) {
    char err[LETHE_ERR_LEN] = "";
    hyp_setting lin, logi;
    if (!open_settings(p, &lin, &logi, "hypotheses.features"))
        return;
    /* features of 64 rows, 6 wide, 3 classes: a fixed pseudo-random pattern */
    hyp_features f = {.n = 64, .d = 6, .classes = 3};
    f.x = malloc(sizeof(float) * 64 * 6);
    f.y = malloc(sizeof(int32_t) * 64);
    uint32_t state = 12345;
    for (int i = 0; i < 64 * 6; i++) {
        state = state * 1664525u + 1013904223u;
        f.x[i] = (float)((state >> 8) / 16777216.0 * 2 - 1);
    }
    for (int i = 0; i < 64; i++)
        f.y[i] = i % 3;
    int rc = hyp_use_features(&logi, &f, 0, err);
    th_check(!rc && !memcmp(logi.x, f.x, sizeof(float) * 64 * 6) && !memcmp(logi.y_class, f.y, sizeof(int32_t) * 64),
             "hypotheses.features_rows", "rc %d, '%s'", rc, err);
    rc = hyp_use_features(&lin, &f, 7, err);
    double u[16], v[16], uu = 0, vv = 0, uv = 0;
    least_squares(&lin, 0, 32, u);
    least_squares(&lin, 32, 64, v);
    for (int j = 0; j < 6; j++)
        uu += u[j] * u[j], vv += v[j] * v[j], uv += u[j] * v[j];
    th_check(!rc && fabs(sqrt(uu) - 1) < 0.15 && fabs(sqrt(vv) - 1) < 0.15 && fabs(uv) < 0.15,
             "hypotheses.features_c2_labels", "rc %d: |u| %.3f, |v| %.3f, u.v %.3f (want 1, 1, 0)", rc, sqrt(uu),
             sqrt(vv), uv);
    f.d = 5;
    rc = hyp_use_features(&lin, &f, 0, err);
    th_check(rc != 0 && strstr(err, "the network gives 64 of 5"), "hypotheses.features_width", "rc %d, '%s'", rc, err);
    f.d = 6, f.n = 60;
    rc = hyp_use_features(&logi, &f, 0, err);
    th_check(rc != 0 && strstr(err, "fits 64 rows"), "hypotheses.features_rows_short", "rc %d, '%s'", rc, err);
    f.n = 64, f.classes = 4;
    rc = hyp_use_features(&logi, &f, 0, err);
    th_check(rc != 0 && strstr(err, "3 outputs for the data's 4 classes"), "hypotheses.features_classes", "rc %d, '%s'",
             rc, err);
    hyp_features_free(&f);
    hyp_setting_free(&lin);
    hyp_setting_free(&logi);
}

/* The random clean rows: for regression a permutation of the first label
 * vector's rows (the first half; appendix C.2), for classification of all
 * clean rows; a function of the seed. */
static void random_rows_cases(const lethe_program *p) {
    hyp_setting lin, logi;
    if (!open_settings(p, &lin, &logi, "hypotheses.random_rows"))
        return;
    const hyp_setting *set[2] = {&lin, &logi};
    for (int k = 0; k < 2; k++) {
        const hyp_setting *s = set[k];
        int64_t *perm = malloc(sizeof(int64_t) * (size_t)s->n), *again = malloc(sizeof(int64_t) * (size_t)s->n);
        char *seen = calloc((size_t)s->n, 1);
        int64_t pool = hyp_random_rows(s, 3, perm), want = s->regression ? s->n / 2 : s->n;
        int ok = pool == want && hyp_random_rows(s, 3, again) == pool && !memcmp(perm, again, sizeof(int64_t) * (size_t)pool);
        for (int64_t i = 0; ok && i < pool; i++) {
            ok = perm[i] >= 0 && perm[i] < want && !seen[perm[i]];
            if (ok)
                seen[perm[i]] = 1;
        }
        th_check(ok, s->regression ? "hypotheses.lin.random_rows_first_labeling" : "hypotheses.logi.random_rows_all",
                 "pool %lld of %lld clean rows (want %lld), a permutation of them, the same twice", (long long)pool,
                 (long long)s->n, (long long)want);
        free(perm), free(again), free(seen);
    }
    hyp_setting_free(&lin);
    hyp_setting_free(&logi);
}

int main(void) {
    char *cerr = NULL;
    const lethe_program *p = th_compile_file(SMALL_LTH, "", &cerr);
    if (!p) {
        th_fail("hypotheses.compile", "%s", cerr ? cerr : "?");
        free(cerr);
        return th_exit();
    }
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, NULL, 0);
    closed_form_cases(p, &ctx);
    h1_case(p, &ctx, "lin");
    h1_case(p, &ctx, "logi");
    features_cases(p);
    random_rows_cases(p);
    char err[LETHE_ERR_LEN] = "";
    hyp_setting s;
    int rc = hyp_setting_open(p, "nothing", &s, err);
    th_check(rc != 0 && strstr(err, "nothing_fit"), "hypotheses.missing_setting", "rc %d, '%s'", rc, err);
    return th_exit();
}
