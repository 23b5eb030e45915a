/* run_eval.c: evaluating a model of the run (run.c): accuracy, the Gaussian
 * Unlearning Score against both nulls, TPR at FPR 0.01, the loss-threshold
 * membership test, an attack's target; and the records they go into. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "run_internal.h"
#include "run_text.h"
#include "sisa.h"

/* ---------------------------------------------------------------------------
 * evaluation */


int run_eval_over(Run *r, const char *name, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                  int noisy, run_take_fn take, void *user, char *err) {
    if (sisa_ensemble_size(model))
        return sisa_eval_over(r, name, model, ds, pos, n, noisy, take, user, err);
    const lethe_entry *e = run_entry(r, name, err);
    if (!e)
        return LETHE_ENOTFOUND;
    frame_models fm = {NULL, model};
    lethe_frame *f = frame_new(e, &fm, 1, NULL, err);
    if (!f)
        return LETHE_EARG;
    int64_t b = r->plan->eval_batch;
    float *x = frame_arg(f, "x"), *out = frame_arg(f, "out");
    int32_t *y = frame_arg(f, "y");
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)b);
    /* an entry that does not read the labels has no y argument */
    int32_t *own_y = y ? NULL : malloc(sizeof(int32_t) * (size_t)b);
    if (!y)
        y = own_y;
    int rc = !x || !out || !idx || !y ? lethe_errf(err, LETHE_EFORMAT, "entry %s lacks x or out", name) : LETHE_OK;
    ds_poison p = run_poison_of(r);
    for (int64_t start = 0; !rc && start < n; start += b) {
        int64_t rows = n - start < b ? n - start : b;
        for (int64_t i = 0; i < b; i++)
            idx[i] = pos[start + (i < rows ? i : rows - 1)];
        rc = ds_batch(ds, idx, b, noisy ? &p : NULL, NULL, x, y, err);
        if (!rc)
            rc = frame_call(f, &r->ctx, err);
        if (!rc)
            take(user, out, y, x, start, rows);
    }
    free(idx);
    free(own_y);
    if (!rc)
        rc = lethe_ctx_sync(&r->ctx, err);
    frame_free(f);
    return rc;
}

typedef struct Acc {
    int64_t correct;
    int k;
} Acc;

static void take_logits(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Acc *a = user;
    a->correct += mt_correct(out, y, rows, a->k);
}

int run_accuracy(Run *r, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n, double *accuracy,
                 char *err) {
    Acc acc = {.k = r->plan->classes};
    int rc = run_eval_over(r, "eval.logits", model, ds, pos, n, 0, take_logits, &acc, err);
    *accuracy = n ? (double)acc.correct / (double)n : NAN;
    return rc;
}

void run_take_losses(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    double *loss = user;
    for (int64_t i = 0; i < rows; i++)
        loss[start + i] = out[i];
}

typedef struct Scores {
    const Run *r;
    double *in, *null;
    float *xi;
} Scores;

static void take_grads(void *user, const float *g, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Scores *s = user;
    const Run *r = s->r;
    int64_t d = r->train.d;
    for (int64_t i = 0; i < rows; i++) {
        int64_t id = r->train.id[r->poison[start + i]];
        ds_gauss_noise(r->seed, DS_STREAM_POISON, r->plan->poison_eps, id, d, s->xi);
        s->in[start + i] = mt_gauss_score(s->xi, g + i * d, d, r->plan->poison_eps);
        s->null[start + i] = mt_gauss_score_null(g + i * d, d, r->plan->poison_eps, r->seed, id);
    }
}

typedef struct Target {
    int k;
    float logits[256];
} Target;

static void take_target(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Target *t = user;
    memcpy(t->logits, out, sizeof(float) * (size_t)t->k);
}

/* An attack's success at its target: the predicted class and p(adv). */
static int evaluate_target(Run *r, ts_store *model, Eval *ev, char *err) {
    Target t = {.k = r->plan->classes < 256 ? r->plan->classes : 256};
    int rc = run_eval_over(r, "eval.logits", model, &r->test, &r->choice.target, 1, 0, take_target, &t, err);
    double mx = -INFINITY, z = 0;
    for (int c = 0; c < t.k; c++)
        if (t.logits[c] > mx) {
            mx = t.logits[c];
            ev->target_pred = c;
        }
    for (int c = 0; c < t.k; c++)
        z += exp((double)t.logits[c] - mx);
    ev->target_adv_prob = exp((double)t.logits[r->choice.adv] - mx) / z;
    return rc;
}

int run_roc_sample(const mt_roc_point *pts, int64_t npts, double *fpr, double *tpr) {
    int n = 0;
    for (int k = 0; k < 41; k++) {
        double target = pow(10, -3 + 3.0 * k / 40), best = 0;
        for (int64_t j = 0; j < npts; j++)
            if (pts[j].fpr <= target + 1e-12 && pts[j].tpr >= best)
                best = pts[j].tpr;
        fpr[n] = target;
        tpr[n++] = best;
    }
    return n;
}

int run_evaluate(Run *r, ts_store *model, Eval *ev, char *err) {
    memset(ev, 0, sizeof *ev);
    int64_t nt = r->test.n;
    int64_t *tpos = malloc(sizeof(int64_t) * (size_t)nt);
    double *test_loss = malloc(sizeof(double) * (size_t)nt);
    if (!tpos || !test_loss) {
        free(tpos);
        free(test_loss);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < nt; i++)
        tpos[i] = i;
    int rc = run_accuracy(r, model, &r->test, tpos, nt, &ev->accuracy, err);
    if (!rc)
        rc = run_eval_over(r, "eval.loss_each", model, &r->test, tpos, nt, 0, run_take_losses, test_loss, err);
    mt_summary ts = mt_summarize(test_loss, nt);
    ev->test_loss = ts.mean;
    int64_t np = r->n_poison;
    if (!rc && r->plan->has_attack && !r->plan->attack.added)
        rc = evaluate_target(r, model, ev, err);
    if (!rc && r->plan->has_trigger)   /* no Gaussian noise to score: the attack's own measures */
        rc = run_text_trigger_eval(r, model, ev, err);
    if (!rc && np > 0 && !r->plan->has_attack && !r->plan->has_trigger) {
        double *forget_loss = malloc(sizeof(double) * (size_t)np);
        Scores s = {r, malloc(sizeof(double) * (size_t)np), malloc(sizeof(double) * (size_t)np),
                    malloc(sizeof(float) * (size_t)r->train.d)};
        if (!forget_loss || !s.in || !s.null || !s.xi)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
        /* membership by loss: the forget set as it was trained on (with its noise) */
        if (!rc)
            rc = run_eval_over(r, "eval.loss_each", model, &r->train, r->poison, np, 1, run_take_losses, forget_loss,
                               err);
        if (!rc)
            rc = mt_loss_mia(forget_loss, np, test_loss, nt, RUN_ALPHA, &ev->mia, err);
        /* the Gaussian score: gradients at the clean inputs */
        if (!rc)
            rc = run_eval_over(r, "eval.input_grad", model, &r->train, r->poison, np, 0, take_grads, &s, err);
        if (!rc) {
            ev->gus = mt_summarize(s.in, np);
            ev->gus_null = mt_summarize(s.null, np);
            rc = mt_tpr_at_fpr_empirical(s.in, np, s.null, np, MT_SIDE_TWO, RUN_ALPHA, &ev->two_emp, err);
        }
        if (!rc) rc = mt_tpr_at_fpr_normal(s.in, np, MT_SIDE_TWO, RUN_ALPHA, &ev->two_norm, err);
        if (!rc) rc = mt_tpr_at_fpr_empirical(s.in, np, s.null, np, MT_SIDE_NEG, RUN_ALPHA, &ev->neg_emp, err);
        if (!rc) rc = mt_tpr_at_fpr_normal(s.in, np, MT_SIDE_NEG, RUN_ALPHA, &ev->neg_norm, err);
        if (!rc) {
            /* the ROC of -I against -I' (memorisation makes I negative), kept at
             * log-spaced false positive rates */
            double *pos = malloc(sizeof(double) * (size_t)np), *neg = malloc(sizeof(double) * (size_t)np);
            mt_roc_point *pts = malloc(sizeof(mt_roc_point) * (size_t)(2 * np + 1));
            int64_t npts = 0;
            for (int64_t i = 0; pos && neg && i < np; i++) {
                pos[i] = mt_stat(s.in[i], MT_SIDE_NEG);
                neg[i] = mt_stat(s.null[i], MT_SIDE_NEG);
            }
            rc = pos && neg && pts ? mt_roc(pos, np, neg, np, pts, &npts, err) : lethe_errf(err, LETHE_ENOMEM, "out of memory");
            if (!rc) {
                ev->auc = mt_auc(pts, npts);
                ev->nroc = run_roc_sample(pts, npts, ev->roc_fpr, ev->roc_tpr);
                for (int k = 0; k < ev->nroc; k++) {   /* against N(0, 1): the threshold Phi^-1(1 - fpr) */
                    double t = mt_normal_quantile(1 - ev->roc_fpr[k]);
                    int64_t above = 0;
                    for (int64_t j = 0; j < np; j++)
                        above += pos[j] > t;
                    ev->roc_tpr_normal[k] = (double)above / (double)np;
                }
            }
            free(pos);
            free(neg);
            free(pts);
        }
        free(forget_loss);
        free(s.in);
        free(s.null);
        free(s.xi);
        if (!rc && r->plan->lira_shadows > 0)
            rc = run_lira(r, model, ev, err);
    }
    if (!rc && np > 0 && r->plan->text_mia_k > 0)
        rc = run_text_mia(r, model, ev, err);
    free(tpos);
    free(test_loss);
    return rc;
}

/* ---------------------------------------------------------------------------
 * records */

const char *run_budget_tag(double b, char *buf, size_t n) {
    if (b < 0)
        snprintf(buf, n, "full");
    else
        snprintf(buf, n, "b%g", 100 * b);
    return buf;
}


void run_put_tpr(jw *w, const char *key, const mt_tpr *t) {
    jw_key(w, key);
    jw_obj_begin(w);
    jw_kv_num(w, "tpr", t->tpr);
    jw_kv_num(w, "fpr", t->fpr);
    jw_kv_num(w, "threshold", t->threshold);
    jw_obj_end(w);
}

void run_put_detection(jw *w, const Eval *ev) {
    jw_key(w, "tpr_at_fpr");
    jw_obj_begin(w);
    run_put_tpr(w, "two_sided_empirical", &ev->two_emp);
    run_put_tpr(w, "two_sided_normal", &ev->two_norm);
    run_put_tpr(w, "negative_empirical", &ev->neg_emp);
    run_put_tpr(w, "negative_normal", &ev->neg_norm);
    jw_obj_end(w);
    run_put_tpr(w, "loss_mia", &ev->mia);
    jw_kv_num(w, "auc", ev->auc);
}

int run_write_record(Run *r, const char *method, double budget, const Eval *ev, const Used *u, char *err) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_str(&w, "experiment", r->plan->name);
    jw_kv_str(&w, "method", method);
    jw_kv_int(&w, "seed", (int64_t)r->seed);
    jw_key(&w, "budget");
    if (budget < 0)
        jw_null(&w);
    else
        jw_num(&w, budget);
    jw_kv_num(&w, "budget_used", u->budget_used);
    if (budget >= 0)   /* a method that cannot stop within its budget (SISA, SSD's passes, one step) says so */
        jw_kv_bool(&w, "over_budget", u->budget_used > budget * (1 + 1e-9));
    jw_kv_int(&w, "steps", u->steps);
    jw_kv_int(&w, "samples", u->samples);
    jw_kv_num(&w, "accuracy", ev->accuracy);
    jw_kv_num(&w, "test_loss", ev->test_loss);
    jw_kv_num(&w, "final_train_loss", u->final_loss);
    jw_kv_num(&w, "param_shift", u->shift);
    jw_kv_num(&w, "seconds", u->seconds);
    jw_kv_int(&w, "n_train", r->n_all);
    jw_kv_int(&w, "n_poison", r->n_poison);
    jw_kv_int(&w, "n_test", r->test.n);
    if (r->plan->has_attack) {
        jw_key(&w, "attack");
        jw_obj_begin(&w);
        jw_kv_str(&w, "name", r->plan->attack.name);
        jw_kv_int(&w, "n_poison", r->choice.n);
        jw_obj_end(&w);
        /* the report's bar chart: one number per model, averaged over seeds */
        if (r->plan->attack.added) {
            jw_kv_num(&w, "clean_accuracy", r->clean_accuracy);
            jw_kv_num(&w, "attack_success", 100 * (r->clean_accuracy - ev->accuracy));
            jw_kv_str(&w, "attack_measure", "test accuracy drop against the clean model (% points)");
        } else {
            jw_kv_num(&w, "attack_success", ev->target_pred == r->choice.adv);
            jw_kv_str(&w, "attack_measure", "target classified as the adversarial class (share of seeds)");
        }
    }
    if (r->plan->has_attack && !r->plan->attack.added) {
        jw_key(&w, "target");
        jw_obj_begin(&w);
        jw_kv_int(&w, "index", r->choice.target);
        jw_kv_int(&w, "target_class", r->choice.target_class);
        jw_kv_int(&w, "adv", r->choice.adv);
        jw_kv_int(&w, "target_pred", ev->target_pred);
        jw_kv_bool(&w, "target_flipped", ev->target_pred == r->choice.adv);
        jw_kv_num(&w, "target_adv_prob", ev->target_adv_prob);
        jw_obj_end(&w);
    }
    if (r->n_poison && !r->plan->has_attack) {
        jw_kv_num(&w, "gus", ev->gus.mean);
        jw_kv_num(&w, "gus_se", ev->gus.se);
        jw_kv_num(&w, "gus_std", ev->gus.std);
        jw_kv_num(&w, "gus_null", ev->gus_null.mean);
        jw_kv_num(&w, "gus_null_se", ev->gus_null.se);
        jw_kv_num(&w, "gus_p_two_sided", ev->gus.p_two_sided);
        jw_kv_num(&w, "alpha", RUN_ALPHA);
        run_put_detection(&w, ev);
        /* [fpr, tpr] of the statistic -I at log-spaced false positive rates */
        for (int k = 0; k < 2; k++) {
            jw_key(&w, k ? "roc_normal" : "roc");
            jw_arr_begin(&w);
            for (int i = 0; i < ev->nroc; i++) {
                jw_arr_begin(&w);
                jw_num(&w, ev->roc_fpr[i]);
                jw_num(&w, k ? ev->roc_tpr_normal[i] : ev->roc_tpr[i]);
                jw_arr_end(&w);
            }
            jw_arr_end(&w);
        }
    }
    if (ev->has_lira) {
        jw_key(&w, "lira");
        jw_obj_begin(&w);
        jw_kv_int(&w, "shadows", r->plan->lira_shadows);
        run_put_tpr(&w, "fpr_0.01", &ev->lira_01);
        run_put_tpr(&w, "fpr_0.001", &ev->lira_001);
        jw_kv_num(&w, "auc", ev->lira_auc);
        jw_kv_int(&w, "unscored", ev->lira_unscored);
        jw_key(&w, "roc");   /* members: the forget set as trained; non-members: the test set */
        jw_arr_begin(&w);
        for (int i = 0; i < ev->nlira_roc; i++) {
            jw_arr_begin(&w);
            jw_num(&w, ev->lira_roc_fpr[i]);
            jw_num(&w, ev->lira_roc_tpr[i]);
            jw_arr_end(&w);
        }
        jw_arr_end(&w);
        jw_obj_end(&w);
    }
    if (ev->has_trigger)
        run_text_put_trigger(&w, r, ev);
    if (ev->has_text_mia)
        run_put_text_mia(&w, r, ev);
    jw_key(&w, "run");
    jw_obj_begin(&w);
    jw_kv_str(&w, "data_hash", r->data_hash);
    if (r->o->init)   /* lethe run --init: the trained models' starting checkpoint */
        jw_kv_str(&w, "init", r->o->init);
    jw_kv_bool(&w, "synthetic_stand_in", r->synthetic_stand_in);
    jw_kv_int(&w, "epochs", r->epochs);
    jw_kv_int(&w, "train_limit", r->o->train_limit);
    jw_kv_int(&w, "test_limit", r->o->test_limit);
    jw_kv_str(&w, "program", r->prog->so_path);
    jw_kv_str(&w, "source_hash", r->prog->p->source_hash ? r->prog->p->source_hash : "");
    jw_obj_end(&w);
    jw_key(&w, "config");
    jw_raw(&w, r->plan->json, strlen(r->plan->json));
    jw_obj_end(&w);
    size_t len;
    const char *text = jw_finish(&w, &len);
    char path[PATH_MAX + 128], tag[32];
    snprintf(path, sizeof path, "%s/records/%s_%s_seed%llu.json", r->dir, method, run_budget_tag(budget, tag, sizeof tag),
             (unsigned long long)r->seed);
    int rc = text ? fs_write_atomic(path, text, len, err) : lethe_errf(err, LETHE_EFORMAT, "record is not valid JSON");
    jw_free(&w);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* results.jsonl: every record, one per line, in name order. */
int run_write_results(const char *dir, char *err) {
    char rdir[PATH_MAX + 16];
    snprintf(rdir, sizeof rdir, "%s/records", dir);
    DIR *d = opendir(rdir);
    if (!d)
        return LETHE_OK;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json") || de->d_name[0] == '.')
            continue;
        if (n == cap)
            names = realloc(names, sizeof(char *) * (cap = cap ? 2 * cap : 64));
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(char *), cmp_str);
    fs_atomic a;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    int rc = fs_atomic_begin(&a, path, err);
    for (size_t i = 0; i < n; i++) {
        char file[PATH_MAX * 2];
        snprintf(file, sizeof file, "%s/%s", rdir, names[i]);
        uint8_t *text = NULL;
        size_t len = 0;
        if (!rc && !(rc = fs_read_file(file, 16 << 20, &text, &len, err))) {
            fs_atomic_write(&a, text, len);
            fs_atomic_write(&a, "\n", 1);
        }
        free(text);
        free(names[i]);
    }
    free(names);
    if (!rc)
        rc = fs_atomic_commit(&a, err);
    else
        fs_atomic_abort(&a);
    return rc;
}

