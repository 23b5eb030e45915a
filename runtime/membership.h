/* membership.h: membership-inference scores beyond the loss threshold of
 * metrics.h: per-sequence text scores (LOSS, zlib, Min-K%, Min-K%++,
 * reference-model difference) and the offline LiRA test for classifiers.
 * All arithmetic is float64.
 *
 * SIGN CONVENTION. Every score is oriented so that LARGER = MORE LIKELY A
 * MEMBER, so members' scores go to metrics.h as the positives and
 * non-members' as the negatives: mt_tpr_at_fpr_empirical(pos, neg,
 * MT_SIDE_POS, alpha) and mt_roc(pos, neg). The papers state some of them
 * with the opposite sign (a loss, a p-value); the formulas below say how
 * each is flipped.
 *
 * TEXT SCORES, from the token log-probabilities the target model gives the
 * actual next tokens, logp[t] = log p(x_t | x_<t), t = 0 .. n-1:
 *     LOSS      (Yeom et al. 2018)      s = mean_t logp[t]  (= -mean NLL)
 *     zlib      (Carlini et al. 2021)   s = -(mean NLL) / Z, Z = bytes of
 *               zlib's compress() (default level) of the text
 *     Min-K%    (Shi et al. 2024)       s = mean of the m lowest logp[t],
 *               m = max(1, floor(k n)) over the n usable tokens, k in (0, 1]
 *     Min-K%++  (Zhang et al. 2024)     the same over z[t] = (logp[t] - mu[t]) / sigma[t],
 *               mu[t] = sum_v p(v) log p(v) and sigma[t]^2 = sum_v p(v) (log p(v))^2 - mu[t]^2
 *               under the model's own next-token distribution at t
 *     reference (Carlini et al. 2021)   s = mean NLL_reference - mean NLL_target
 *               (target NLL minus reference NLL, negated); the two
 *               sequences may differ in length (different tokenizers)
 * m uses floor as the reference code does (int(n * k)), so k = 20% of 4
 * tokens is 0.8 token, which becomes 1.
 *
 * OFFLINE LiRA (Carlini et al. 2022, "Membership inference attacks from
 * first principles", offline variant). Per example, the logit-scaled
 * confidence phi = log(p_y / (1 - p_y)) = x_y - logsumexp_{j != y} x_j. From
 * N shadow models trained WITHOUT the example (OUT models) fit a Gaussian
 * N(mu_out, sigma_out^2) to their phi; the target model's phi is scored by
 * the one-sided test against "phi comes from the OUT distribution":
 *     z = (phi - mu_out) / sigma_out,   p = 1 - Phi(z),   s = -log p
 * (a member's phi is high, so its p-value is small; -log keeps the order of
 * z and, unlike Phi(z), does not round to 1 in the tail that TPR at FPR
 * 0.001 needs). mu_out is the mean and sigma_out the sample std (n - 1) of
 * the example's finite OUT values; with MI_LIRA_GLOBAL_STD one sigma is
 * shared by every example, the pooled within-example std
 *     sqrt( sum_i sum_s (phi_is - mu_i)^2 / sum_i (n_i - 1) ),
 * which the paper recommends when N is small (every per-example sigma from
 * 2-4 values is noisy). A shared sigma rescales every z alike, so the ROC
 * and TPR at FPR do not depend on how it is estimated. Under the Gaussian
 * model s > -log(alpha) has FPR alpha; report TPR at FPR 0.01 and 0.001
 * with the empirical rule against held-out non-members' scores.
 *
 * NaN/inf inputs are skipped and counted, as in metrics.h: a text score
 * over no usable token is NaN (n = 0), which mt_summarize and the TPR/ROC
 * functions then skip in turn. Functions returning int follow check.h.
 */
#ifndef LETHE_MEMBERSHIP_H
#define LETHE_MEMBERSHIP_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

/* ---- per-token statistics ------------------------------------------------------ */

typedef struct mi_token {
    double logp;    /* log p(next); NaN if next is out of range */
    double mu;      /* sum_v p(v) log p(v) */
    double sigma;   /* sqrt(sum_v p(v) (log p(v) - mu)^2), >= 0 */
} mi_token;

/* From one row of logits[vocab] and the actual next token: log-softmax in
 * float64 around the maximum; sigma from the centred second moment (two
 * passes), so it is exactly 0 for equal logits instead of the rounding
 * residue of sum p (log p)^2 - mu^2. Logits of -inf are tokens of
 * probability 0; a NaN or +inf logit (or vocab < 1) makes all three NaN. */
mi_token mi_token_stats(const float *logits, int64_t vocab, int32_t next);

/* ---- text scores ----------------------------------------------------------------- */

typedef struct mi_score {
    double score;       /* larger = more likely a member; NaN if n = 0 */
    int64_t n;          /* token values used */
    int64_t skipped;    /* token values ignored: non-finite (Min-K%++: or sigma <= 0) */
} mi_score;

/* Bytes of zlib's compress() of text[0 .. len) at the default level (the
 * Z of the zlib score, as Python's zlib.compress gives it); < 0 on failure
 * (a check.h status, message in err). */
int64_t mi_zlib_length(const void *text, size_t len, char *err);

int mi_loss_score(const double *logp, int64_t n, mi_score *out, char *err);
int mi_zlib_score(const double *logp, int64_t n, const void *text, size_t text_len, mi_score *out, char *err);
/* k is the fraction of tokens kept, in (0, 1] (20% is 0.2). */
int mi_min_k_score(const double *logp, int64_t n, double k, mi_score *out, char *err);
/* mu, sigma per token as mi_token_stats gives them. */
int mi_min_k_pp_score(const double *logp, const double *mu, const double *sigma, int64_t n, double k, mi_score *out,
                      char *err);
/* n and skipped count the tokens of both sequences; NaN if either has no
 * usable token. */
int mi_reference_score(const double *logp, int64_t n, const double *ref_logp, int64_t ref_n, mi_score *out,
                       char *err);

/* ---- offline LiRA ------------------------------------------------------------------ */

/* phi = log(p_y / (1 - p_y)) from a row of logits[k]; NaN if y is out of
 * range, k < 2, or a logit is NaN/+inf; +inf if every other logit is -inf. */
double mi_logit_confidence(const float *logits, int k, int32_t y);

typedef enum mi_lira_std {
    MI_LIRA_PER_EXAMPLE_STD = 0,
    MI_LIRA_GLOBAL_STD = 1,
} mi_lira_std;

typedef struct mi_gauss {
    double mean, std;   /* NaN when the example has no finite OUT value */
    int64_t n;          /* finite OUT values used */
} mi_gauss;

typedef struct mi_lira_stats {
    int64_t scored;         /* examples with a finite score */
    int64_t unscored;       /* NaN score: target phi not finite, no OUT value,
                               or sigma not > 0 (per example: fewer than 2 values
                               or all equal) */
    int64_t skipped_out;    /* non-finite OUT values ignored */
    double global_std;      /* the pooled sigma (NaN in per-example mode) */
} mi_lira_stats;

/* out_phi[i * n_shadow + s]: phi of example i under OUT shadow model s (NaN
 * where shadow s is not an OUT model of example i: it is skipped). Writes
 * score[i] (NaN when unscored) and, if fit is not NULL, fit[i] (with the
 * std actually used). LETHE_EARG when the global std has no degree of
 * freedom (no example with 2 finite OUT values) or the pooled spread is 0. */
int mi_lira_offline(const double *out_phi, const double *target_phi, int64_t n_examples, int64_t n_shadow,
                    mi_lira_std std_mode, double *score, mi_gauss *fit, mi_lira_stats *stats, char *err);

/* -log(1 - Phi(z)), accurate for every z: erfc where it does not underflow,
 * the asymptotic series beyond. */
double mi_neg_log_normal_sf(double z);

#endif
