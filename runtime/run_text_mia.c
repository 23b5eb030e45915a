/* run_text_mia.c: the text membership scores of runtime/membership.h (LOSS,
 * zlib, Min-K%, Min-K%++ and the reference-model difference) for the models
 * of a text run, asked for by the experiment's `evaluate = [...,
 * text_mia(k = 20%)]`.
 *
 * MEMBERS are the forget set (the poisons), NON-MEMBERS as many test reviews
 * drawn at random per seed (all of them if the test set is smaller), so that
 * TPR at FPR 0.01 and the ROC compare sets of one size. The scores read the
 * TOKENS only, with no Gaussian perturbation of their embeddings: a text
 * attack holds the text, not the noise it was trained with (the loss and
 * LiRA tests score the poisons as trained; these score the reviews).
 *
 * TOKENS. The entry eval.token_stats (graphs/eval.lth) gives, per position
 * t < T - 1 of a row, log p of the actual next token and mu, sigma of log p
 * under the model's own next-token distribution; positions whose next token
 * is padding (<|endoftext|>, the pad of runtime/text_tokens.h) are not
 * scored. zlib's Z is the compressed size of the bytes those tokens decode to
 * (the text the model scored: a review cut to T tokens, or a whole prompt).
 *
 * THE REFERENCE MODEL is the run's initial checkpoint of the seed (the
 * weights the original and the retrained model start from: random ones, or
 * a pretrained model where the run starts from one), as Carlini et al. (2021)
 * and Mireshghallah et al. (2022) compare a fine-tuned model with one that
 * never saw the data. The retrained model (OpenUnlearning's choice, from
 * TOFU's retain model) would make the test a comparison with the exact
 * counterfactual that unlearning is judged against, and it exists only once
 * its stage has run; the initial checkpoint exists for every stage and costs
 * one pass per seed. Its log-probabilities, the texts and the non-member
 * draw are computed once per seed (TextMiaSeed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "membership.h"
#include "run_internal.h"

#define NON_MEMBER_SALT 0x7e47a1au

static const char *const score_names[TEXT_MIA_SCORES] = {"loss", "zlib", "min_k", "min_kpp", "reference"};

/* What does not depend on the evaluated model, for one seed. */
struct TextMiaSeed {
    uint64_t seed;
    int64_t n_mem, n_non, t;      /* members, non-members, scored positions per row (T - 1) */
    int32_t pad;                  /* the padding token, <|endoftext|> */
    int64_t *non;                 /* the non-members: positions in the test set */
    double *ref_logp;             /* the initial model's log p, [(n_mem + n_non) * t], NaN at padding */
    uint8_t **text;               /* each row's decoded real tokens */
    size_t *text_len;
};

typedef struct Stats {
    int64_t t, w, d;       /* positions scored, values per position of x, values per sample */
    int32_t pad;
    double *logp, *mu, *sigma;   /* [row * t + p]; mu and sigma may be NULL */
} Stats;

static void take_stats(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Stats *s = user;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t p = 0; p < s->t; p++) {
            int64_t at = (start + i) * s->t + p;
            const float *o = out + (i * s->t + p) * 3;
            int real = (int32_t)x[i * s->d + (p + 1) * s->w] != s->pad;
            s->logp[at] = real ? o[0] : NAN;
            if (s->mu) {
                s->mu[at] = real ? o[1] : NAN;
                s->sigma[at] = real ? o[2] : NAN;
            }
        }
}

/* eval.token_stats of `model` over the members then the non-members. */
static int token_stats(Run *r, ts_store *model, const struct TextMiaSeed *c, Stats *s, char *err) {
    int rc = run_eval_over(r, "eval.token_stats", model, &r->train, r->poison, c->n_mem, 0, take_stats, s, err);
    if (rc)
        return rc;
    Stats non = *s;
    int64_t off = c->n_mem * c->t;
    non.logp += off;
    if (non.mu) {
        non.mu += off;
        non.sigma += off;
    }
    return run_eval_over(r, "eval.token_stats", model, &r->test, c->non, c->n_non, 0, take_stats, &non, err);
}

void run_text_mia_free(Run *r) {
    struct TextMiaSeed *c = r->text_mia;
    if (!c)
        return;
    for (int64_t i = 0; c->text && i < c->n_mem + c->n_non; i++)
        free(c->text[i]);
    free(c->text);
    free(c->text_len);
    free(c->non);
    free(c->ref_logp);
    free(c);
    r->text_mia = NULL;
}

/* Row `pos` of ds as the bytes of its real tokens. */
static int row_text(const bpe *b, const lethe_dataset *ds, int64_t pos, int32_t pad, uint8_t **text, size_t *len,
                    char *err) {
    int64_t t = ds->h, n = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)t + 1);
    if (!ids)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t p = 0; p < t; p++) {
        int32_t id = (int32_t)ds->x[pos * ds->d + p * ds->w];
        if (id != pad)
            ids[n++] = id;
    }
    int rc = bpe_decode(b, ids, (size_t)n, text, len, err);
    free(ids);
    return rc;
}

/* This seed's non-members, texts and reference log-probabilities. */
static int seed_cache(Run *r, char *err) {
    if (r->text_mia && r->text_mia->seed == r->seed)
        return LETHE_OK;
    run_text_mia_free(r);
    if (!r->train.token_column || r->train.h < 2)
        return lethe_errf(err, LETHE_EARG, "text_mia: the run's data is not text (evaluate = [.., text_mia] needs imdb(...))");
    struct TextMiaSeed *c = calloc(1, sizeof *c);
    if (!c)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    r->text_mia = c;
    c->seed = r->seed;
    c->n_mem = r->n_poison;
    c->n_non = r->test.n < c->n_mem ? r->test.n : c->n_mem;
    c->t = r->train.h - 1;
    int64_t n = c->n_mem + c->n_non, nt = r->test.n;
    int64_t *all_test = malloc(sizeof(int64_t) * (size_t)nt + 1);
    c->non = malloc(sizeof(int64_t) * (size_t)c->n_non + 1);
    c->ref_logp = malloc(sizeof(double) * (size_t)(n * c->t) + 1);
    c->text = calloc((size_t)n + 1, sizeof(uint8_t *));
    c->text_len = calloc((size_t)n + 1, sizeof(size_t));
    if (!all_test || !c->non || !c->ref_logp || !c->text || !c->text_len) {
        free(all_test);
        run_text_mia_free(r);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < nt; i++)
        all_test[i] = i;
    int rc = ds_random_subset_of(all_test, nt, c->n_non, r->seed ^ NON_MEMBER_SALT, c->non, err);
    free(all_test);
    bpe *b = NULL;
    if (!rc)
        rc = bpe_load_dir(bpe_default_dir(), &b, err);
    int32_t eot = c->pad = b ? bpe_endoftext_id(b) : -1;
    if (!rc && eot < 0)
        rc = lethe_errf(err, LETHE_EFORMAT, "text_mia: the GPT-2 vocabulary has no <|endoftext|> (the padding token)");
    for (int64_t i = 0; !rc && i < n; i++)
        rc = i < c->n_mem ? row_text(b, &r->train, r->poison[i], eot, &c->text[i], &c->text_len[i], err)
                          : row_text(b, &r->test, c->non[i - c->n_mem], eot, &c->text[i], &c->text_len[i], err);
    bpe_free(b);
    ts_store init = {0};
    if (!rc)
        rc = run_init_model(r, &init, r->seed, err);
    if (!rc)   /* --init FILE: the pretrained start, as run_train_on's */
        rc = run_pretrained(r, &init, err);
    Stats s = {c->t, r->train.w, r->train.d, eot, c->ref_logp, NULL, NULL};
    if (!rc)
        rc = token_stats(r, &init, c, &s, err);
    ts_clear(&init);
    if (rc)
        run_text_mia_free(r);
    return rc;
}

int run_text_mia(Run *r, ts_store *model, Eval *ev, char *err) {
    int rc = seed_cache(r, err);
    if (rc)
        return rc;
    const struct TextMiaSeed *c = r->text_mia;
    int64_t n = c->n_mem + c->n_non, t = c->t;
    double *logp = malloc(sizeof(double) * (size_t)(n * t) + 1), *mu = malloc(sizeof(double) * (size_t)(n * t) + 1),
           *sigma = malloc(sizeof(double) * (size_t)(n * t) + 1),
           *score = malloc(sizeof(double) * (size_t)(n * TEXT_MIA_SCORES) + 1);
    mt_roc_point *pts = malloc(sizeof(mt_roc_point) * (size_t)(n + 1));
    if (!logp || !mu || !sigma || !score || !pts)
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    Stats s = {t, r->train.w, r->train.d, c->pad, logp, mu, sigma};
    if (!rc)
        rc = token_stats(r, model, c, &s, err);
    /* score[j * n + i]: score j of row i (members first) */
    for (int64_t i = 0; !rc && i < n; i++) {
        const double *lp = logp + i * t;
        mi_score v[TEXT_MIA_SCORES];
        rc = mi_loss_score(lp, t, &v[0], err);
        if (!rc) rc = mi_zlib_score(lp, t, c->text[i], c->text_len[i], &v[1], err);
        if (!rc) rc = mi_min_k_score(lp, t, r->plan->text_mia_k, &v[2], err);
        if (!rc) rc = mi_min_k_pp_score(lp, mu + i * t, sigma + i * t, t, r->plan->text_mia_k, &v[3], err);
        if (!rc) rc = mi_reference_score(lp, t, c->ref_logp + i * t, t, &v[4], err);
        for (int j = 0; !rc && j < TEXT_MIA_SCORES; j++)
            score[j * n + i] = v[j].score;
    }
    for (int j = 0; !rc && j < TEXT_MIA_SCORES; j++) {
        const double *pos = score + j * n, *neg = pos + c->n_mem;
        TextMia *m = &ev->text_mia[j];
        int64_t npts = 0;
        rc = mt_tpr_at_fpr_empirical(pos, c->n_mem, neg, c->n_non, MT_SIDE_POS, RUN_ALPHA, &m->tpr, err);
        if (!rc)
            rc = mt_roc(pos, c->n_mem, neg, c->n_non, pts, &npts, err);
        if (!rc) {
            m->auc = mt_auc(pts, npts);
            m->nroc = run_roc_sample(pts, npts, m->roc_fpr, m->roc_tpr);
        }
    }
    if (!rc) {
        ev->has_text_mia = 1;
        ev->text_mia_members = c->n_mem;
        ev->text_mia_non_members = c->n_non;
    }
    free(logp);
    free(mu);
    free(sigma);
    free(score);
    free(pts);
    return rc;
}

void run_put_text_mia(jw *w, const Run *r, const Eval *ev) {
    jw_key(w, "text_mia");
    jw_obj_begin(w);
    jw_kv_num(w, "k", r->plan->text_mia_k);
    jw_kv_int(w, "members", ev->text_mia_members);
    jw_kv_int(w, "non_members", ev->text_mia_non_members);
    jw_kv_str(w, "reference_model", "initial checkpoint");
    for (int j = 0; j < TEXT_MIA_SCORES; j++) {
        const TextMia *m = &ev->text_mia[j];
        jw_key(w, score_names[j]);
        jw_obj_begin(w);
        run_put_tpr(w, "tpr_at_fpr_0.01", &m->tpr);
        jw_kv_num(w, "auc", m->auc);
        jw_key(w, "roc");   /* [fpr, tpr] at log-spaced false positive rates */
        jw_arr_begin(w);
        for (int i = 0; i < m->nroc; i++) {
            jw_arr_begin(w);
            jw_num(w, m->roc_fpr[i]);
            jw_num(w, m->roc_tpr[i]);
            jw_arr_end(w);
        }
        jw_arr_end(w);
        jw_obj_end(w);
    }
    jw_obj_end(w);
}
