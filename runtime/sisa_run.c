/* sisa_run.c: SISA (sisa.h) as a method of the run (run.c): the shard models
 * train with the experiment's recipe (run_steps), unlearning removes the
 * forget set, and the ensemble is evaluated by every metric of run_eval.c.
 *
 * Artifacts, under OUT/seed<k>/sisa/s<shards>_r<slices>/ (the counts in the
 * name: another configuration never reads these):
 *   shard<s>_slice<j>.safetensors            checkpoint j of shard s, trained on the poisoned set
 *   ensemble.safetensors                     the ensemble before unlearning (`lethe eval --model` reads it)
 *   unlearned/shard<s>_slice<j>.safetensors  the retrained shards' checkpoints
 *   unlearned.json                           which checkpoint each shard restarted from, the steps and time
 * and, as for every method, OUT/seed<k>/sisa_b<pct>.safetensors (the
 * unlearned ensemble) and its records.
 *
 * Evaluation of an ensemble (a store sisa_ensemble_size() recognises):
 *   eval.logits      log of the mean of the shard models' softmax outputs
 *                    (softmax of it is that mean: an attack's target
 *                    probability and the accuracy use the aggregate);
 *   eval.loss_each   L = -log(mean_s p_s(y)), the aggregate's cross entropy
 *                    (the loss-threshold membership test);
 *   eval.input_grad  the input gradient of that L: the shard models' input
 *                    gradients of their own cross entropy, weighted by
 *                    p_s(y) / sum_t p_t(y) (sisa_aggregate), which is what the
 *                    Gaussian Unlearning Score reads.
 * A shard model reads the input exactly as a single model would (eval mode). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fsutil.h"
#include "json.h"
#include "run_internal.h"
#include "sisa.h"

#define SISA_SALT 0x515a5a1u

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The random stream of shard `shard`'s training step `step` (0: its fresh
 * weights): nothing else, so a step retrained from a checkpoint draws what it
 * drew the first time, but for the removed samples. */
static uint32_t step_salt(int shard, int step) {
    int32_t key[2] = {shard, step};
    return SISA_SALT ^ (uint32_t)fs_fnv1a64(key, sizeof key, 0xcbf29ce484222325ull);
}

static int shard_init(void *user, int shard, ts_store *model, ts_store *state, char *err) {
    Run *r = user;
    ts_clear(model);
    ts_clear(state);
    int rc = run_init_model(r, model, r->seed ^ ((uint64_t)step_salt(shard, 0) << 32), err);
    return rc ? rc : run_call_init(r, "train.init_state", model, state, err);
}

static int shard_train(void *user, int shard, int step, const int64_t *set, int64_t n, int64_t steps, ts_store *model,
                       ts_store *state, char *err) {
    Run *r = user;
    const lethe_entry *e = run_entry(r, r->plan->train.entry, err);
    if (!e)
        return LETHE_ENOTFOUND;
    char label[128];
    snprintf(label, sizeof label, "sisa seed %llu shard %d slice %d", (unsigned long long)r->seed, shard, step);
    double loss;
    r->training = set;
    r->n_training = n;
    r->steps_done = 0;
    int rc = run_steps(r, e, &r->plan->train, model, NULL, state, steps, 0, NULL, step_salt(shard, step), label, &loss, err);
    r->training = NULL;
    return rc;
}

/* unlearned.json: what the unlearning did; an earlier run's time is kept. */
static int unlearn_summary(const char *path, const sisa_layout *l, const sisa_unlearned *un, double *seconds, char *err) {
    if (fs_exists(path)) {
        uint8_t *text = NULL;
        size_t len = 0;
        json_doc *doc = NULL;
        *seconds = NAN;
        if (!fs_read_file(path, 1 << 16, &text, &len, err) && !json_parse((char *)text, len, NULL, &doc, err)) {
            const json_value *s = json_obj_get(json_doc_root(doc), "seconds");
            *seconds = s && s->type == JSON_NUMBER ? s->num : NAN;
        }
        json_doc_free(doc);
        free(text);
        return LETHE_OK;
    }
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_int(&w, "shards", l->shards);
    jw_kv_int(&w, "slices", l->slices);
    jw_kv_int(&w, "retrained", un->retrained);
    jw_kv_int(&w, "steps", un->steps);
    jw_kv_num(&w, "seconds", *seconds);
    jw_key(&w, "restart");   /* per shard: the checkpoint retraining started from (0: fresh weights), -1: kept */
    jw_arr_begin(&w);
    for (int s = 0; s < l->shards; s++)
        jw_int(&w, un->restart[s]);
    jw_arr_end(&w);
    jw_obj_end(&w);
    size_t len;
    const char *text = jw_finish(&w, &len);
    int rc = text ? fs_write_atomic(path, text, len, err) : lethe_errf(err, LETHE_EFORMAT, "unlearned.json is not valid JSON");
    jw_free(&w);
    return rc;
}

int sisa_method_run(Run *r, const plan_method *pm, ts_store *ensemble, Used *u, char *err) {
    sisa_layout l;
    int rc = sisa_layout_make(r->n_all, pm->sisa_shards, pm->sisa_slices, r->seed ^ SISA_SALT, &l, err);
    if (rc)
        return rc;
    sisa_trainer t = {.user = r, .batch = r->plan->batch, .epochs = r->epochs, .init = shard_init, .train = shard_train};
    char dir[PATH_MAX + 64], out_dir[PATH_MAX + 96], path[PATH_MAX + 96];
    snprintf(dir, sizeof dir, "%s/sisa/s%d_r%d", r->seed_dir, l.shards, l.slices);
    snprintf(out_dir, sizeof out_dir, "%s/unlearned", dir);
    rc = sisa_train(&l, &t, dir, err);
    snprintf(path, sizeof path, "%s/ensemble.safetensors", dir);
    if (!rc && !fs_exists(path)) {
        char seed[32];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
        const char *meta[] = {"format", "lethe", "experiment", r->plan->name, "model", "sisa ensemble before unlearning",
                              "seed", seed, "data_hash", r->data_hash, NULL};
        rc = sisa_ensemble_load(&l, dir, NULL, NULL, ensemble, err);
        if (!rc)
            rc = ts_save(ensemble, path, meta, err);
    }
    uint8_t *forget = calloc((size_t)r->n_all + 1, 1);
    if (!rc && !forget)
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < r->n_poison; i++)
        forget[r->poison[i]] = 1;
    sisa_unlearned un;
    double t0 = seconds_now();
    if (!rc)
        rc = sisa_unlearn(&l, forget, &t, dir, out_dir, &un, err);
    u->seconds = seconds_now() - t0;
    snprintf(path, sizeof path, "%s/unlearned.json", dir);
    if (!rc)
        rc = unlearn_summary(path, &l, &un, &u->seconds, err);
    if (!rc)
        rc = sisa_ensemble_load(&l, dir, out_dir, &un, ensemble, err);
    /* the compute of unlearning: the retraining's steps, in the units every method's budget counts */
    u->steps = un.steps;
    u->samples = un.steps * r->plan->batch * (r->plan->train.nstreams ? r->plan->train.nstreams : 1);
    u->final_loss = NAN;
    free(forget);
    sisa_layout_free(&l);
    return rc;
}

/* ---------------------------------------------------------------------------
 * evaluation */

/* Entry `name` on one model over pos[0..n) (run_eval_over): `width`
 * floats a row into out, the labels into y. */
typedef struct Member {
    int64_t width;
    float *out;
    int32_t *y;
} Member;

static void take_member(void *user, const float *o, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Member *m = user;
    memcpy(m->out + start * m->width, o, sizeof(float) * (size_t)(rows * m->width));
    memcpy(m->y + start, y, sizeof(int32_t) * (size_t)rows);
}

static int member_over(Run *r, const char *name, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                       int noisy, int64_t width, float *out, int32_t *y, char *err) {
    Member m = {width, out, y};
    return run_eval_over(r, name, model, ds, pos, n, noisy, take_member, &m, err);
}

int sisa_eval_over(Run *r, const char *name, const ts_store *ensemble, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                   int noisy, run_take_fn take, void *user, char *err) {
    int S = sisa_ensemble_size(ensemble), k = r->plan->classes;
    int grad = !strcmp(name, "eval.input_grad"), loss = !strcmp(name, "eval.loss_each");
    if (!grad && !loss && strcmp(name, "eval.logits"))
        return lethe_errf(err, LETHE_EARG, "a SISA ensemble is not evaluated through %s", name);
    if (n == 0)
        return LETHE_OK;
    int64_t d = ds->d, width = grad ? d : loss ? 1 : k;
    ts_store *members = calloc((size_t)S, sizeof(ts_store));
    float *logits = malloc(sizeof(float) * (size_t)(S * n * k)), *out = malloc(sizeof(float) * (size_t)(n * width));
    float *g = grad ? malloc(sizeof(float) * (size_t)(n * d)) : NULL;
    double *logp = malloc(sizeof(double) * (size_t)(n * k)), *w = malloc(sizeof(double) * (size_t)(S * n));
    double *sum = grad ? calloc((size_t)(n * d), sizeof(double)) : NULL;
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    int rc = !members || !logits || !out || !logp || !w || !y || (grad && (!g || !sum))
                 ? lethe_errf(err, LETHE_ENOMEM, "out of memory evaluating the SISA ensemble")
                 : LETHE_OK;
    for (int s = 0; !rc && s < S; s++) {
        rc = sisa_ensemble_member(ensemble, s, &members[s], err);
        if (!rc)
            rc = member_over(r, "eval.logits", &members[s], ds, pos, n, noisy, k, logits + (int64_t)s * n * k, y, err);
    }
    if (!rc && sisa_aggregate(logits, S, n, k, y, logp, w))
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory evaluating the SISA ensemble");
    for (int s = 0; !rc && grad && s < S; s++) {
        rc = member_over(r, "eval.input_grad", &members[s], ds, pos, n, noisy, d, g, y, err);
        for (int64_t i = 0; !rc && i < n; i++)
            for (int64_t j = 0; j < d; j++)
                sum[i * d + j] += w[(int64_t)s * n + i] * (double)g[i * d + j];
    }
    for (int64_t i = 0; !rc && i < n; i++) {
        if (grad)
            for (int64_t j = 0; j < d; j++)
                out[i * d + j] = (float)sum[i * d + j];
        else if (loss)
            out[i] = y[i] >= 0 && y[i] < k ? (float)-logp[i * k + y[i]] : NAN;
        else
            for (int c = 0; c < k; c++)
                out[i * k + c] = (float)logp[i * k + c];
    }
    if (!rc)
        take(user, out, y, NULL, 0, n);
    for (int s = 0; members && s < S; s++)
        ts_clear(&members[s]);
    free(members);
    free(logits);
    free(out);
    free(g);
    free(logp);
    free(w);
    free(sum);
    free(y);
    return rc;
}
