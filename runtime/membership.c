/* membership.c: see membership.h */
#include "membership.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- per-token statistics ------------------------------------------------------ */

mi_token mi_token_stats(const float *logits, int64_t vocab, int32_t next) {
    mi_token t = {NAN, NAN, NAN};
    if (vocab < 1)
        return t;
    double m = -INFINITY;
    for (int64_t j = 0; j < vocab; j++) {
        double x = logits[j];
        if (isnan(x) || x == INFINITY)
            return t;
        if (x > m)
            m = x;
    }
    if (m == -INFINITY)
        return t; /* every token has probability 0: no distribution */
    /* d_j = x_j - m <= 0; p_j = exp(d_j) / s; log p_j = d_j - log s */
    double s = 0;
    for (int64_t j = 0; j < vocab; j++)
        s += exp((double)logits[j] - m);
    double log_s = log(s);
    /* the moments of log p are those of d shifted by log s: take them on d,
     * where equal logits give d = 0 exactly and so sigma = 0 exactly */
    double dbar = 0;
    for (int64_t j = 0; j < vocab; j++) {
        double d = (double)logits[j] - m, p = exp(d) / s;
        if (p > 0) /* p = 0 contributes nothing (and d may be -inf) */
            dbar += p * d;
    }
    double var = 0;
    for (int64_t j = 0; j < vocab; j++) {
        double d = (double)logits[j] - m, p = exp(d) / s;
        if (p > 0)
            var += p * (d - dbar) * (d - dbar);
    }
    t.mu = dbar - log_s;
    t.sigma = sqrt(var);
    if (next >= 0 && next < vocab)
        t.logp = (double)logits[next] - m - log_s;
    return t;
}

/* ---- text scores ----------------------------------------------------------------- */

int64_t mi_zlib_length(const void *text, size_t len, char *err) {
    uLongf cap = compressBound((uLong)len);
    Bytef *buf = malloc(cap);
    if (!buf)
        return lethe_errf(err, LETHE_ENOMEM, "zlib score: out of memory compressing %zu bytes", len);
    int rc = compress(buf, &cap, (const Bytef *)text, (uLong)len);
    free(buf);
    if (rc != Z_OK)
        return lethe_errf(err, rc == Z_MEM_ERROR ? LETHE_ENOMEM : LETHE_EARG, "zlib score: compress failed (%s)",
                          zError(rc));
    return (int64_t)cap;
}

/* Mean of the finite values; *used and *skipped count them. NaN if none. */
static double finite_mean(const double *v, int64_t n, int64_t *used, int64_t *skipped) {
    double sum = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(v[i])) {
            sum += v[i];
            k++;
        }
    *used = k;
    *skipped = n - k;
    return k > 0 ? sum / (double)k : NAN;
}

static int check_seq(const void *v, int64_t n, const char *what, char *err) {
    if (n < 0 || (n > 0 && !v))
        return lethe_errf(err, LETHE_EARG, "%s: %lld tokens with %s array", what, (long long)n, v ? "an" : "no");
    return LETHE_OK;
}

int mi_loss_score(const double *logp, int64_t n, mi_score *out, char *err) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    int rc = check_seq(logp, n, "LOSS score", err);
    if (rc)
        return rc;
    out->score = finite_mean(logp, n, &out->n, &out->skipped);
    return LETHE_OK;
}

int mi_zlib_score(const double *logp, int64_t n, const void *text, size_t text_len, mi_score *out, char *err) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    int rc = check_seq(logp, n, "zlib score", err);
    if (rc)
        return rc;
    if (!text && text_len > 0)
        return lethe_errf(err, LETHE_EARG, "zlib score: %zu bytes of text with no text", text_len);
    int64_t z = mi_zlib_length(text ? text : "", text_len, err);
    if (z < 0)
        return (int)z;
    double mean_logp = finite_mean(logp, n, &out->n, &out->skipped);
    /* -(mean NLL) / Z = mean logp / Z */
    out->score = mean_logp / (double)z;
    return LETHE_OK;
}

static int cmp_asc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Mean of the max(1, floor(k * m)) lowest of v[0 .. m) (sorted in place). */
static double mean_lowest(double *v, int64_t m, double k) {
    if (m == 0)
        return NAN;
    qsort(v, (size_t)m, sizeof *v, cmp_asc);
    /* floor, not fooled by 0.3 * 10 = 3.0000000000000004 or 0.29 * 100 = 28.999999999999996 */
    double c = floor(k * (double)m + 1e-9);
    int64_t keep = c < 1 ? 1 : c > (double)m ? m : (int64_t)c;
    double sum = 0;
    for (int64_t i = 0; i < keep; i++)
        sum += v[i];
    return sum / (double)keep;
}

static int check_k(double k, const char *what, char *err) {
    if (!(k > 0 && k <= 1))
        return lethe_errf(err, LETHE_EARG, "%s: k = %g must be a fraction in (0, 1] (20%% is 0.2)", what, k);
    return LETHE_OK;
}

int mi_min_k_score(const double *logp, int64_t n, double k, mi_score *out, char *err) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    int rc = check_seq(logp, n, "Min-K% score", err);
    if (!rc)
        rc = check_k(k, "Min-K% score", err);
    if (rc)
        return rc;
    double *v = malloc((size_t)n * sizeof *v + 1);
    if (!v)
        return lethe_errf(err, LETHE_ENOMEM, "Min-K%% score: out of memory for %lld tokens", (long long)n);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(logp[i]))
            v[m++] = logp[i];
    out->n = m;
    out->skipped = n - m;
    out->score = mean_lowest(v, m, k);
    free(v);
    return LETHE_OK;
}

int mi_min_k_pp_score(const double *logp, const double *mu, const double *sigma, int64_t n, double k, mi_score *out,
                      char *err) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    int rc = check_seq(logp, n, "Min-K%++ score", err);
    if (!rc && n > 0 && (!mu || !sigma))
        rc = lethe_errf(err, LETHE_EARG, "Min-K%%++ score: needs mu and sigma per token");
    if (!rc)
        rc = check_k(k, "Min-K%++ score", err);
    if (rc)
        return rc;
    double *v = malloc((size_t)n * sizeof *v + 1);
    if (!v)
        return lethe_errf(err, LETHE_ENOMEM, "Min-K%%++ score: out of memory for %lld tokens", (long long)n);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        /* sigma = 0 (a point mass, or equal logits) leaves z undefined: the
         * token says nothing about membership, so it is skipped */
        if (!(sigma[i] > 0))
            continue;
        double z = (logp[i] - mu[i]) / sigma[i];
        if (isfinite(z))
            v[m++] = z;
    }
    out->n = m;
    out->skipped = n - m;
    out->score = mean_lowest(v, m, k);
    free(v);
    return LETHE_OK;
}

int mi_reference_score(const double *logp, int64_t n, const double *ref_logp, int64_t ref_n, mi_score *out,
                       char *err) {
    memset(out, 0, sizeof *out);
    out->score = NAN;
    int rc = check_seq(logp, n, "reference score", err);
    if (!rc)
        rc = check_seq(ref_logp, ref_n, "reference score (reference model)", err);
    if (rc)
        return rc;
    int64_t used, skipped, ref_used, ref_skipped;
    double target = finite_mean(logp, n, &used, &skipped);
    double ref = finite_mean(ref_logp, ref_n, &ref_used, &ref_skipped);
    out->n = used + ref_used;
    out->skipped = skipped + ref_skipped;
    /* NLL_ref - NLL_target = mean logp_target - mean logp_ref */
    out->score = target - ref;
    return LETHE_OK;
}

/* ---- offline LiRA ------------------------------------------------------------------ */

double mi_logit_confidence(const float *logits, int k, int32_t y) {
    if (k < 2 || y < 0 || y >= k)
        return NAN;
    /* log(p_y / (1 - p_y)) = x_y - logsumexp_{j != y} x_j: the shared
     * normaliser cancels, so nothing is lost when p_y rounds to 1 */
    double m = -INFINITY;
    for (int j = 0; j < k; j++) {
        double x = logits[j];
        if (isnan(x) || x == INFINITY)
            return NAN;
        if (j != y && x > m)
            m = x;
    }
    if (m == -INFINITY)
        return (double)logits[y] == -INFINITY ? NAN : INFINITY; /* p_y = 1 exactly */
    double s = 0;
    for (int j = 0; j < k; j++)
        if (j != y)
            s += exp((double)logits[j] - m);
    return (double)logits[y] - m - log(s);
}

double mi_neg_log_normal_sf(double z) {
    if (isnan(z))
        return NAN;
    if (z < 0) /* sf = 1 - Phi(z) with Phi(z) <= 1/2: log1p keeps the small Phi */
        return -log1p(-0.5 * erfc(-z / M_SQRT2));
    if (z <= 30) /* erfc(30 / sqrt 2) ~ 1e-197: far from underflow, relative accuracy kept */
        return -log(0.5 * erfc(z / M_SQRT2));
    if (z == INFINITY)
        return INFINITY;
    /* Mills ratio: sf(z) = phi(z) / z * (1 - 1/z^2 + 3/z^4 - 15/z^6 + 105/z^8 - ...); at
     * z > 30 the next term is below 1e-12 of the sum */
    double r = 1 / (z * z);
    double series = 1 - r * (1 - r * (3 - r * (15 - r * 105)));
    return 0.5 * z * z + log(z) + 0.5 * log(2 * M_PI) - log(series);
}

/* The Gaussian of one example's finite OUT values; *ss their squared
 * deviations from the mean, *skipped the non-finite ones. */
static mi_gauss fit_out(const double *row, int64_t n_shadow, double *ss, int64_t *skipped) {
    mi_gauss g;
    g.mean = finite_mean(row, n_shadow, &g.n, skipped);
    *ss = 0;
    for (int64_t s = 0; s < n_shadow; s++)
        if (isfinite(row[s]))
            *ss += (row[s] - g.mean) * (row[s] - g.mean);
    g.std = g.n > 1 ? sqrt(*ss / (double)(g.n - 1)) : NAN;
    return g;
}

int mi_lira_offline(const double *out_phi, const double *target_phi, int64_t n_examples, int64_t n_shadow,
                    mi_lira_std std_mode, double *score, mi_gauss *fit, mi_lira_stats *stats, char *err) {
    memset(stats, 0, sizeof *stats);
    stats->global_std = NAN;
    if (n_examples < 0 || n_shadow < 1)
        return lethe_errf(err, LETHE_EARG, "LiRA: %lld examples and %lld shadow models (need at least one)",
                          (long long)n_examples, (long long)n_shadow);
    if (std_mode != MI_LIRA_PER_EXAMPLE_STD && std_mode != MI_LIRA_GLOBAL_STD)
        return lethe_errf(err, LETHE_EARG, "LiRA: unknown std mode %d", (int)std_mode);
    for (int64_t i = 0; i < n_examples; i++)
        score[i] = NAN;
    if (std_mode == MI_LIRA_GLOBAL_STD) {
        double pooled_ss = 0;
        int64_t pooled_df = 0;
        for (int64_t i = 0; i < n_examples; i++) {
            double ss;
            int64_t skipped;
            mi_gauss g = fit_out(out_phi + i * n_shadow, n_shadow, &ss, &skipped);
            if (g.n > 1) {
                pooled_ss += ss;
                pooled_df += g.n - 1;
            }
        }
        if (pooled_df == 0)
            return lethe_errf(err, LETHE_EARG, "LiRA: the global std needs an example with 2 finite OUT values");
        if (!(pooled_ss > 0))
            return lethe_errf(err, LETHE_EARG, "LiRA: every example's OUT values are equal (global std 0)");
        stats->global_std = sqrt(pooled_ss / (double)pooled_df);
    }
    for (int64_t i = 0; i < n_examples; i++) {
        double ss;
        int64_t skipped;
        mi_gauss g = fit_out(out_phi + i * n_shadow, n_shadow, &ss, &skipped);
        stats->skipped_out += skipped;
        if (std_mode == MI_LIRA_GLOBAL_STD && g.n > 0)
            g.std = stats->global_std;
        if (fit)
            fit[i] = g;
        /* no OUT value (mean NaN) or no spread (std NaN or 0): no test */
        if (isfinite(target_phi[i]) && g.std > 0)
            score[i] = mi_neg_log_normal_sf((target_phi[i] - g.mean) / g.std);
        if (isfinite(score[i]))
            stats->scored++;
        else
            stats->unscored++;
    }
    return LETHE_OK;
}
