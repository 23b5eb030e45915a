/* run_lira.c: the offline LiRA membership test (Carlini et al. 2022,
 * runtime/membership.h) for the models of a run, asked for by the
 * experiment's `evaluate = [..., lira(shadows = 4)]`.
 *
 * Members are the forget set (the poisons, as they were trained on: with
 * their noise), non-members the test set. Shadow models are OUT models of
 * every one of them: shadow s trains the experiment's recipe from its own
 * initial weights on a random half of the retain set (never a poison, never
 * a test sample), and is saved as seed<k>/shadow<s>.safetensors so that a
 * resumed run or another stage of a sweep reads it back. Their logit-scaled
 * confidences phi are computed once per seed; each evaluated model's phi is
 * then scored against a Gaussian fitted per example to its shadows' phi, with
 * one pooled std below 16 shadows (the paper's advice for few shadows), and
 * the record gets TPR at FPR 0.01 and 0.001 (empirical, against the test
 * set's scores), the AUC and the ROC.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "membership.h"
#include "run_internal.h"

#define SHADOW_SALT 0x5ad0e5ull
#define LIRA_POOLED_BELOW 16   /* shadows: fewer share one pooled std */

typedef struct Phi {
    double *phi;      /* phi[i * stride + col] of example i */
    int64_t stride, col, k;
} Phi;

static void take_phi(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Phi *p = user;
    for (int64_t i = 0; i < rows; i++)
        p->phi[(start + i) * p->stride + p->col] = mi_logit_confidence(out + i * p->k, (int)p->k, y[i]);
}

/* phi of `model` on the forget set (noisy, as trained) then the test set,
 * into phi[i * stride + col]. */
static int confidences(Run *r, ts_store *model, double *phi, int64_t stride, int64_t col, char *err) {
    int64_t nt = r->test.n;
    int64_t *tpos = malloc(sizeof(int64_t) * (size_t)nt + 1);
    if (!tpos)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; i < nt; i++)
        tpos[i] = i;
    Phi forget = {phi, stride, col, r->plan->classes}, test = {phi + r->n_poison * stride, stride, col, r->plan->classes};
    int rc = run_eval_over(r, "eval.logits", model, &r->train, r->poison, r->n_poison, 1, take_phi, &forget, err);
    if (!rc)
        rc = run_eval_over(r, "eval.logits", model, &r->test, tpos, nt, 0, take_phi, &test, err);
    free(tpos);
    return rc;
}

/* Shadow s of this seed: read back, or trained on its half of the retain set
 * and saved. Its initial weights and batch order come from its own seed. */
static int shadow_model(Run *r, int s, ts_store *model, char *err) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/shadow%d.safetensors", r->seed_dir, s);
    if (fs_exists(path))
        return ts_load(model, path, err);
    uint64_t seed = r->seed, shadow_seed = r->seed ^ (SHADOW_SALT + (uint64_t)s * 0x9E3779B97F4A7C15ull);
    int64_t half = r->n_retain / 2;
    int64_t *set = malloc(sizeof(int64_t) * (size_t)half + 1);
    if (!set)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    int rc = ds_random_subset_of(r->retain, r->n_retain, half, shadow_seed, set, err);
    char label[64];
    snprintf(label, sizeof label, "shadow %d seed %llu", s, (unsigned long long)seed);
    double loss;
    /* the recipe draws from r->seed; the shadow's own seed only while it trains */
    r->seed = shadow_seed;
    if (!rc)
        rc = run_train_on(r, set, half, model, label, &loss, err);
    r->seed = seed;
    free(set);
    char seed_text[32];
    snprintf(seed_text, sizeof seed_text, "%llu", (unsigned long long)seed);
    const char *meta[] = {"format", "lethe", "experiment", r->plan->name, "model", "lira shadow", "seed", seed_text,
                          "data_hash", r->data_hash, NULL};
    return rc ? rc : ts_save(model, path, meta, err);
}

/* The shadows' phi of this seed, computed on first use. */
static int shadow_confidences(Run *r, char *err) {
    if (r->lira_phi && r->lira_seed == r->seed)
        return LETHE_OK;
    free(r->lira_phi);
    int64_t S = r->plan->lira_shadows, n = r->n_poison + r->test.n;
    r->lira_phi = malloc(sizeof(double) * (size_t)(n * S) + 1);
    r->lira_seed = r->seed;
    if (!r->lira_phi)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (r->n_retain < 4)
        return lethe_errf(err, LETHE_EARG, "lira: the retain set (%lld samples) is too small for shadow models",
                          (long long)r->n_retain);
    int rc = LETHE_OK;
    for (int s = 0; !rc && s < S; s++) {
        ts_store shadow = {0};
        rc = shadow_model(r, s, &shadow, err);
        if (!rc)
            rc = confidences(r, &shadow, r->lira_phi, S, s, err);
        ts_clear(&shadow);
    }
    if (rc) {
        free(r->lira_phi);
        r->lira_phi = NULL;
    }
    return rc;
}

int run_lira(Run *r, ts_store *model, Eval *ev, char *err) {
    int64_t np = r->n_poison, nt = r->test.n, n = np + nt, S = r->plan->lira_shadows;
    int rc = shadow_confidences(r, err);
    if (rc)
        return rc;
    double *target = malloc(sizeof(double) * (size_t)n + 1), *score = malloc(sizeof(double) * (size_t)n + 1);
    mt_roc_point *pts = malloc(sizeof(mt_roc_point) * (size_t)(n + 1));
    if (!target || !score || !pts)
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (!rc)
        rc = confidences(r, model, target, 1, 0, err);
    mi_lira_stats st;
    if (!rc)
        rc = mi_lira_offline(r->lira_phi, target, n, S, S < LIRA_POOLED_BELOW ? MI_LIRA_GLOBAL_STD : MI_LIRA_PER_EXAMPLE_STD,
                             score, NULL, &st, err);
    if (!rc)
        rc = mt_tpr_at_fpr_empirical(score, np, score + np, nt, MT_SIDE_POS, 0.01, &ev->lira_01, err);
    if (!rc)
        rc = mt_tpr_at_fpr_empirical(score, np, score + np, nt, MT_SIDE_POS, 0.001, &ev->lira_001, err);
    int64_t npts = 0;
    if (!rc)
        rc = mt_roc(score, np, score + np, nt, pts, &npts, err);
    if (!rc) {
        ev->has_lira = 1;
        ev->lira_auc = mt_auc(pts, npts);
        ev->lira_unscored = st.unscored;
        ev->nlira_roc = run_roc_sample(pts, npts, ev->lira_roc_fpr, ev->lira_roc_tpr);
    }
    free(target);
    free(score);
    free(pts);
    return rc;
}
