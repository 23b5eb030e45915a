/* metrics.h: accuracy, the Gaussian Unlearning Score, TPR at FPR, the
 * loss-threshold membership-inference baseline, and table helpers.
 * Definitions follow ALGORITHMS.md sections 1.2-1.3; all sums are float64.
 *
 * GAUSSIAN SCORE. For a poisoned sample with noise xi (eps * N(0, I), see
 * data.h) and the input gradient g of its loss at the CLEAN input,
 *     I = <xi, g> / (eps * ||g||)
 * is exactly N(0, 1) when the model does not depend on xi, and is pushed
 * negative by memorisation. GUS = mean of I over the poisons (mt_summarize
 * also gives its standard error, t = mean / se and the two-sided normal
 * p-value). The empirical null uses fresh noise xi' with the same g
 * (mt_gauss_score_null).
 *
 * DETECTION STATISTIC. s(I) by mt_side: MT_SIDE_POS s = I, MT_SIDE_NEG
 * s = -I (memorisation makes I negative), MT_SIDE_TWO s = |I| (the project
 * default). Larger s = more evidence of membership.
 *
 * TPR AT FPR alpha, empirical negatives: with the negatives' statistics
 * sorted in decreasing order, the threshold tau is the (k+1)-th largest,
 * k = floor(alpha * n_neg), so at most k negatives are strictly above it
 * (FPR <= alpha; exactly k when there are no ties); TPR = fraction of
 * positives strictly above tau. With alpha * n_neg >= n_neg, tau = -inf.
 * Analytic null: tau = Phi^-1(1 - alpha) (one-sided) or Phi^-1(1 - alpha/2)
 * (two-sided, |I|); TPR = fraction of positives with s > tau; FPR = alpha.
 *
 * LOSS-THRESHOLD MIA: positives = per-sample losses on the forget set,
 * negatives = losses on the test set, member = low loss: tau is the
 * (k+1)-th smallest test loss, k = floor(alpha * n_test); TPR = fraction of
 * forget losses strictly below tau. (The same rule as above on s = -loss.)
 *
 * ROC: points (threshold t, fpr, tpr) where "s >= t" predicts positive, for
 * each distinct score from the highest down, after (inf, 0, 0).
 *
 * Error convention: check.h (functions returning int); NaN scores are
 * skipped by the aggregates and counted.
 */
#ifndef LETHE_METRICS_H
#define LETHE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

/* ---- classification ---------------------------------------------------------- */

/* argmax per row of logits[n, k] (first maximum wins) compared to y. */
int64_t mt_correct(const float *logits, const int32_t *y, int64_t n, int k);
double mt_accuracy(const float *logits, const int32_t *y, int64_t n, int k);
/* -log softmax(logits)[y] in float64 with log-sum-exp; NaN if y is out of range. */
double mt_cross_entropy(const float *logits, int k, int32_t y);

/* ---- Gaussian score ------------------------------------------------------------ */

/* I = <xi, g> / (eps * ||g||); NaN if ||g|| = 0, eps <= 0 or not finite. */
double mt_gauss_score(const float *xi, const float *g, int64_t d, double eps);
/* I' with fresh noise: xi' = ds_gauss_noise(seed, DS_STREAM_NULL, eps, id, d)
 * generated on the fly (bit-identical values), then mt_gauss_score. */
double mt_gauss_score_null(const float *g, int64_t d, double eps, uint64_t seed, int64_t id);

typedef struct mt_summary {
    int64_t n;              /* finite values used */
    int64_t skipped;        /* NaN/inf values ignored */
    double mean;
    double std;             /* sample std (n - 1); 0 if n < 2 */
    double se;              /* std / sqrt(n) */
    double t;               /* mean / se (0 if se = 0) */
    double p_two_sided;     /* 2 (1 - Phi(|t|)) */
} mt_summary;

mt_summary mt_summarize(const double *v, int64_t n);

/* ---- detection ----------------------------------------------------------------- */

typedef enum mt_side {
    MT_SIDE_POS = 0,
    MT_SIDE_NEG = 1,
    MT_SIDE_TWO = 2,
} mt_side;

double mt_stat(double score, mt_side side);

typedef struct mt_tpr {
    double tpr;
    double fpr;             /* achieved on the negatives (analytic: alpha) */
    double threshold;       /* tau, in the statistic's units (loss MIA: a loss) */
    int64_t npos, nneg;     /* finite values used */
} mt_tpr;

int mt_tpr_at_fpr_empirical(const double *pos, int64_t npos, const double *neg, int64_t nneg, mt_side side,
                            double alpha, mt_tpr *out, char *err);
int mt_tpr_at_fpr_normal(const double *pos, int64_t npos, mt_side side, double alpha, mt_tpr *out, char *err);
int mt_loss_mia(const double *forget_loss, int64_t nforget, const double *test_loss, int64_t ntest, double alpha,
                mt_tpr *out, char *err);

typedef struct mt_roc_point {
    double threshold, fpr, tpr;
} mt_roc_point;

/* Writes at most npos + nneg + 1 points to out and sets *nout; scores are
 * raw values (apply mt_stat first if needed). */
int mt_roc(const double *pos, int64_t npos, const double *neg, int64_t nneg, mt_roc_point *out, int64_t *nout,
           char *err);
/* Area under the ROC curve = P(pos > neg) + P(pos = neg) / 2. */
double mt_auc(const mt_roc_point *pts, int64_t n);

/* ---- the normal distribution ------------------------------------------------------ */

double mt_normal_cdf(double x);       /* Phi(x) */
double mt_normal_sf(double x);        /* 1 - Phi(x), accurate in the upper tail */
/* Phi^-1(p): Acklam's approximation refined by two Halley steps on erfc
 * (relative error ~1e-15); -inf/inf at 0/1, NaN outside [0, 1]. */
double mt_normal_quantile(double p);

/* ---- tables ------------------------------------------------------------------------ */

/* mean and sample std (n - 1; 0 for n = 1) over seeds. */
void mt_mean_std(const double *v, int64_t n, double *mean, double *std);
/* "93.21 ± 0.34" with `decimals` digits; returns snprintf's length. */
int mt_format_pm(char *buf, size_t size, double mean, double std, int decimals);
/* Quantile with linear interpolation between order statistics (numpy's
 * default); v need not be sorted. NaN for n = 0. */
double mt_quantile(const double *v, int64_t n, double q);

/* ---- parameter shift ------------------------------------------------------------------ */

/* Accumulates the difference a - b over any number of tensors. */
typedef struct mt_shift {
    double l2sq;            /* sum (a - b)^2 */
    double l1;              /* sum |a - b| */
    double linf;            /* max |a - b| */
    double ref_l2sq;        /* sum b^2, for the relative shift */
    int64_t n;
} mt_shift;

void mt_shift_init(mt_shift *s);
void mt_shift_add(mt_shift *s, const float *a, const float *b, int64_t n);
double mt_shift_l2(const mt_shift *s);
double mt_shift_rel_l2(const mt_shift *s);   /* ||a - b|| / ||b|| */
/* One flat array pair: ||a - b||_2. */
double mt_param_shift_l2(const float *a, const float *b, int64_t n);

#endif
