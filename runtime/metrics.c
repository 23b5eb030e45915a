/* metrics.c: see metrics.h */
#include "metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "philox.h"

/* ---- classification ----------------------------------------------------------- */

int64_t mt_correct(const float *logits, const int32_t *y, int64_t n, int k) {
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *row = logits + i * k;
        int best = 0;
        for (int j = 1; j < k; j++)
            if (row[j] > row[best])
                best = j;
        correct += best == y[i];
    }
    return correct;
}

double mt_accuracy(const float *logits, const int32_t *y, int64_t n, int k) {
    return n > 0 ? (double)mt_correct(logits, y, n, k) / (double)n : NAN;
}

double mt_cross_entropy(const float *logits, int k, int32_t y) {
    if (y < 0 || y >= k)
        return NAN;
    double m = -INFINITY;
    for (int j = 0; j < k; j++)
        if (logits[j] > m)
            m = logits[j];
    double s = 0;
    for (int j = 0; j < k; j++)
        s += exp((double)logits[j] - m);
    return m + log(s) - (double)logits[y];
}

/* ---- Gaussian score ---------------------------------------------------------------- */

double mt_gauss_score(const float *xi, const float *g, int64_t d, double eps) {
    double dot = 0, gg = 0;
    for (int64_t j = 0; j < d; j++) {
        dot += (double)xi[j] * (double)g[j];
        gg += (double)g[j] * (double)g[j];
    }
    double den = eps * sqrt(gg);
    if (!(eps > 0) || !(den > 0) || !isfinite(den) || !isfinite(dot))
        return NAN;
    return dot / den;
}

double mt_gauss_score_null(const float *g, int64_t d, double eps, uint64_t seed, int64_t id) {
    double dot = 0, gg = 0;
    /* the same blocks and rounding as ds_gauss_noise, without a buffer */
    for (int64_t base = 0; base < d; base += 4) {
        philox_block b = philox_tensor_block(seed, DS_STREAM_NULL, (uint64_t)id, (uint64_t)base);
        double z[4] = {philox_normal_pair(b.v[0], b.v[1], 0), philox_normal_pair(b.v[0], b.v[1], 1),
                       philox_normal_pair(b.v[2], b.v[3], 0), philox_normal_pair(b.v[2], b.v[3], 1)};
        for (int l = 0; l < 4 && base + l < d; l++) {
            float xi = (float)(eps * z[l]);
            dot += (double)xi * (double)g[base + l];
            gg += (double)g[base + l] * (double)g[base + l];
        }
    }
    double den = eps * sqrt(gg);
    if (!(eps > 0) || !(den > 0) || !isfinite(den) || !isfinite(dot))
        return NAN;
    return dot / den;
}

mt_summary mt_summarize(const double *v, int64_t n) {
    mt_summary s;
    memset(&s, 0, sizeof s);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            s.skipped++;
            continue;
        }
        sum += v[i];
        s.n++;
    }
    if (s.n == 0) {
        s.mean = s.std = s.se = s.t = s.p_two_sided = NAN;
        return s;
    }
    s.mean = sum / (double)s.n;
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(v[i]))
            ss += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = s.n > 1 ? sqrt(ss / (double)(s.n - 1)) : 0;
    s.se = s.std / sqrt((double)s.n);
    s.t = s.se > 0 ? s.mean / s.se : 0;
    s.p_two_sided = s.se > 0 ? erfc(fabs(s.t) / M_SQRT2) : 1.0;
    return s;
}

/* ---- detection ------------------------------------------------------------------------ */

double mt_stat(double score, mt_side side) {
    switch (side) {
    case MT_SIDE_POS: return score;
    case MT_SIDE_NEG: return -score;
    case MT_SIDE_TWO: return fabs(score);
    }
    return NAN;
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Finite statistics s(v) (times `sign`) into a new array; *m their number. */
static double *finite_stats(const double *v, int64_t n, mt_side side, double sign, int64_t *m) {
    double *r = malloc((size_t)n * sizeof *r + 1);
    if (!r)
        return NULL;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        double s = sign * mt_stat(v[i], side);
        if (isfinite(s))
            r[k++] = s;
    }
    *m = k;
    return r;
}

/* floor(alpha * n) without being fooled by 0.29 * 100 = 28.999999999999996 */
static int64_t alpha_count(double alpha, int64_t n) {
    double k = floor(alpha * (double)n + 1e-9);
    return k > (double)n ? n : (int64_t)k;
}

static int tpr_empirical(const double *pos, int64_t npos, const double *neg, int64_t nneg, mt_side side,
                         double sign, double alpha, mt_tpr *out, char *err) {
    memset(out, 0, sizeof *out);
    if (!(alpha > 0 && alpha < 1))
        return lethe_errf(err, LETHE_EARG, "TPR at FPR: alpha = %g must be in (0, 1)", alpha);
    int64_t np, nn;
    double *p = finite_stats(pos, npos, side, sign, &np);
    double *q = p ? finite_stats(neg, nneg, side, sign, &nn) : NULL;
    if (!p || !q) {
        free(p);
        return lethe_errf(err, LETHE_ENOMEM, "TPR at FPR: out of memory");
    }
    if (np == 0 || nn == 0) {
        free(p);
        free(q);
        return lethe_errf(err, LETHE_EARG, "TPR at FPR: %s set has no finite scores", np == 0 ? "positive" : "negative");
    }
    qsort(q, (size_t)nn, sizeof *q, cmp_desc);
    int64_t k = alpha_count(alpha, nn);
    double tau = k < nn ? q[k] : -INFINITY;
    int64_t fp = 0, tp = 0;
    for (int64_t i = 0; i < nn; i++)
        fp += q[i] > tau;
    for (int64_t i = 0; i < np; i++)
        tp += p[i] > tau;
    out->tpr = (double)tp / (double)np;
    out->fpr = (double)fp / (double)nn;
    out->threshold = sign * tau;
    out->npos = np;
    out->nneg = nn;
    free(p);
    free(q);
    return LETHE_OK;
}

int mt_tpr_at_fpr_empirical(const double *pos, int64_t npos, const double *neg, int64_t nneg, mt_side side,
                            double alpha, mt_tpr *out, char *err) {
    return tpr_empirical(pos, npos, neg, nneg, side, 1.0, alpha, out, err);
}

int mt_loss_mia(const double *forget_loss, int64_t nforget, const double *test_loss, int64_t ntest, double alpha,
                mt_tpr *out, char *err) {
    /* member = low loss: the empirical rule on s = -loss; the threshold is
     * reported back as a loss */
    return tpr_empirical(forget_loss, nforget, test_loss, ntest, MT_SIDE_POS, -1.0, alpha, out, err);
}

int mt_tpr_at_fpr_normal(const double *pos, int64_t npos, mt_side side, double alpha, mt_tpr *out, char *err) {
    memset(out, 0, sizeof *out);
    if (!(alpha > 0 && alpha < 1))
        return lethe_errf(err, LETHE_EARG, "TPR at FPR: alpha = %g must be in (0, 1)", alpha);
    double tau = side == MT_SIDE_TWO ? mt_normal_quantile(1 - alpha / 2) : mt_normal_quantile(1 - alpha);
    int64_t np = 0, tp = 0;
    for (int64_t i = 0; i < npos; i++) {
        double s = mt_stat(pos[i], side);
        if (!isfinite(s))
            continue;
        np++;
        tp += s > tau;
    }
    if (np == 0)
        return lethe_errf(err, LETHE_EARG, "TPR at FPR: positive set has no finite scores");
    out->tpr = (double)tp / (double)np;
    out->fpr = alpha;
    out->threshold = tau;
    out->npos = np;
    return LETHE_OK;
}

int mt_roc(const double *pos, int64_t npos, const double *neg, int64_t nneg, mt_roc_point *out, int64_t *nout,
           char *err) {
    *nout = 0;
    int64_t np, nn;
    double *p = finite_stats(pos, npos, MT_SIDE_POS, 1.0, &np);
    double *q = p ? finite_stats(neg, nneg, MT_SIDE_POS, 1.0, &nn) : NULL;
    if (!p || !q) {
        free(p);
        return lethe_errf(err, LETHE_ENOMEM, "ROC: out of memory");
    }
    if (np == 0 || nn == 0) {
        free(p);
        free(q);
        return lethe_errf(err, LETHE_EARG, "ROC: %s set has no finite scores", np == 0 ? "positive" : "negative");
    }
    qsort(p, (size_t)np, sizeof *p, cmp_desc);
    qsort(q, (size_t)nn, sizeof *q, cmp_desc);
    int64_t k = 0, i = 0, j = 0;
    out[k++] = (mt_roc_point){INFINITY, 0, 0};
    while (i < np || j < nn) {
        /* next distinct score, highest first; everything >= it is positive */
        double t = i < np && (j >= nn || p[i] >= q[j]) ? p[i] : q[j];
        while (i < np && p[i] >= t)
            i++;
        while (j < nn && q[j] >= t)
            j++;
        out[k++] = (mt_roc_point){t, (double)j / (double)nn, (double)i / (double)np};
    }
    *nout = k;
    free(p);
    free(q);
    return LETHE_OK;
}

double mt_auc(const mt_roc_point *pts, int64_t n) {
    double a = 0;
    for (int64_t i = 1; i < n; i++)
        a += (pts[i].fpr - pts[i - 1].fpr) * (pts[i].tpr + pts[i - 1].tpr) / 2;
    return a;
}

/* ---- normal distribution ---------------------------------------------------------------- */

double mt_normal_cdf(double x) { return 0.5 * erfc(-x / M_SQRT2); }
double mt_normal_sf(double x) { return 0.5 * erfc(x / M_SQRT2); }

/* Lower half, 0 < p <= 0.5. */
static double quantile_lower(double p) {
    static const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                6.680131188771972e+01,  -1.328068155288572e+01};
    static const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
    static const double d[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                3.754408661907416e+00};
    double x;
    if (p < 0.02425) {
        double q = sqrt(-2 * log(p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else {
        double q = p - 0.5, r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    }
    /* Halley's method on Phi(x) - p; erfc keeps Phi accurate for x < 0,
     * where all of the lower half lives. */
    for (int it = 0; it < 2; it++) {
        double e = 0.5 * erfc(-x / M_SQRT2) - p;
        double u = e * sqrt(2 * M_PI) * exp(x * x / 2);
        if (!isfinite(u))
            break; /* deep subnormal p: exp overflows; Acklam's value stands */
        x = x - u / (1 + x * u / 2);
    }
    return x;
}

double mt_normal_quantile(double p) {
    if (isnan(p) || p < 0 || p > 1)
        return NAN;
    if (p == 0)
        return -INFINITY;
    if (p == 1)
        return INFINITY;
    if (p <= 0.5)
        return quantile_lower(p);
    /* 1 - p is exact for p in [0.5, 1] (Sterbenz), so symmetry loses nothing */
    return -quantile_lower(1 - p);
}

/* ---- tables --------------------------------------------------------------------------------- */

void mt_mean_std(const double *v, int64_t n, double *mean, double *std) {
    mt_summary s = mt_summarize(v, n);
    *mean = s.mean;
    *std = s.n >= 1 ? s.std : NAN;
}

int mt_format_pm(char *buf, size_t size, double mean, double std, int decimals) {
    if (decimals < 0) decimals = 0;
    if (decimals > 12) decimals = 12;
    return snprintf(buf, size, "%.*f \xc2\xb1 %.*f", decimals, mean, decimals, std);
}

static int cmp_asc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double mt_quantile(const double *v, int64_t n, double q) {
    if (n <= 0 || isnan(q))
        return NAN;
    double *s = malloc((size_t)n * sizeof *s);
    if (!s)
        return NAN;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_asc);
    if (q < 0) q = 0;
    if (q > 1) q = 1;
    double h = q * (double)(n - 1);
    int64_t lo = (int64_t)floor(h);
    int64_t hi = lo + 1 < n ? lo + 1 : lo;
    double r = s[lo] + (h - (double)lo) * (s[hi] - s[lo]);
    free(s);
    return r;
}

/* ---- parameter shift ---------------------------------------------------------------------------- */

void mt_shift_init(mt_shift *s) { memset(s, 0, sizeof *s); }

void mt_shift_add(mt_shift *s, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i], ad = fabs(d);
        s->l2sq += d * d;
        s->l1 += ad;
        if (ad > s->linf)
            s->linf = ad;
        s->ref_l2sq += (double)b[i] * (double)b[i];
    }
    s->n += n;
}

double mt_shift_l2(const mt_shift *s) { return sqrt(s->l2sq); }
double mt_shift_rel_l2(const mt_shift *s) { return s->ref_l2sq > 0 ? sqrt(s->l2sq / s->ref_l2sq) : NAN; }

double mt_param_shift_l2(const float *a, const float *b, int64_t n) {
    mt_shift s;
    mt_shift_init(&s);
    mt_shift_add(&s, a, b, n);
    return mt_shift_l2(&s);
}
