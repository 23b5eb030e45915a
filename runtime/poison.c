/* poison.c: the poison stage of an attack objective (poison.h).
 *
 * Crafting, for each restart r:
 *   - every poison's edit starts as eps N(0, 1) / std_c (clamped to the
 *     L-inf ball and the image box) drawn from (seed, r, sample id), or at 0
 *     when the objective has no `eps`;
 *   - the poisons are cut into batches of the plan's size (the last one is
 *     filled up with repeats of its own samples, whose edits are dropped);
 *     each batch gets fresh objective state from poison.step.init_state and
 *     `steps` calls of poison.step, with the learning rate `lr` on the
 *     plan's schedule (lr_factor); one more call measures the loss at the
 *     final edits;
 *   - the restart's loss is the mean final loss over the poisons.
 * An objective's loss over one batch depends only on that batch's edits, so
 * batches are independent problems and stepping them one after another is
 * the same as the reference's accumulate-over-all-batches-then-step.
 *
 * Resuming: after each batch the restart's edits so far and its loss sum go
 * to SEED/poison.restart<r>.safetensors; a run started again continues after
 * the last saved batch. RNG: the ctx seed is (seed ^ ATTACK_SALT ^ r) and
 * the counter counts calls within the restart, so a seed gives bit-identical
 * edits however often the run was interrupted.
 */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "poison.h"
#include "safetensors.h"
#include "progress.h"

#define ATTACK_SALT 0xa77ac4u
#define ATTACK_TARGET_SALT 0x7a26e7u
#define ATTACK_CLASS_SALT 0xc1a55u
#define ATTACK_POISON_SALT 0x9015012u
#define DS_STREAM_ATTACK_INIT 0x4C500003u

int attack_choose(const plan_attack *a, const lethe_dataset *train, const lethe_dataset *test, uint64_t seed,
                  attack_choice *out, char *err) {
    memset(out, 0, sizeof *out);
    int64_t k = (int64_t)ceil(a->budget * (double)train->n - 1e-9);
    if (a->added) {   /* added samples start as copies of k training samples of any class; there is no target */
        out->target = -1;
        out->target_class = out->adv = -1;
        if (k < 1 || k > train->n)
            return lethe_errf(err, LETHE_EARG, "attack %s: a budget of %g of %lld training samples is %lld poisons", a->name,
                              a->budget, (long long)train->n, (long long)k);
        if (!(out->pos = malloc(sizeof(int64_t) * (size_t)k)))
            return lethe_errf(err, LETHE_ENOMEM, "out of memory");
        out->n = k;
        return ds_random_subset(train->n, k, seed ^ ATTACK_POISON_SALT, out->pos, err);
    }
    if (a->target >= test->n)
        return lethe_errf(err, LETHE_EARG, "attack %s: target %lld is outside the test set (%lld samples)", a->name,
                          (long long)a->target, (long long)test->n);
    int64_t t = a->target;
    if (t < 0 && ds_random_subset(test->n, 1, seed ^ ATTACK_TARGET_SALT, &t, err))
        return LETHE_EARG;
    int classes = train->num_classes > test->num_classes ? train->num_classes : test->num_classes;
    if (classes < 2)
        return lethe_errf(err, LETHE_EARG, "attack %s needs at least two classes", a->name);
    out->target = t;
    out->target_class = test->y[t];
    if (a->adv >= 0)
        out->adv = (int)a->adv;
    else {
        int64_t off;
        if (ds_random_subset(classes - 1, 1, seed ^ ATTACK_CLASS_SALT, &off, err))
            return LETHE_EARG;
        out->adv = (int)((out->target_class + 1 + off) % classes);
    }
    if (out->adv == out->target_class)
        return lethe_errf(err, LETHE_EARG, "attack %s: the adversarial class %d is the target's own class", a->name, out->adv);
    int64_t *pool = NULL, npool = 0;
    int rc = ds_indices_of_class(train, out->adv, &pool, &npool, err);
    if (!rc && (k < 1 || k > npool))
        rc = lethe_errf(err, LETHE_EARG, "attack %s: a budget of %g of %lld training samples is %lld poisons, but class %d "
                                         "has %lld samples", a->name, a->budget, (long long)train->n, (long long)k, out->adv,
                        (long long)npool);
    if (!rc && !(out->pos = malloc(sizeof(int64_t) * (size_t)k)))
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (!rc)
        rc = ds_random_subset_of(pool, npool, k, seed ^ ATTACK_POISON_SALT, out->pos, err);
    free(pool);
    if (rc) {
        free(out->pos);
        out->pos = NULL;
        return rc;
    }
    out->n = k;
    return LETHE_OK;
}

/* ---------------------------------------------------------------------------
 * crafting */

typedef struct Craft {
    const attack_job *j;
    const lethe_entry *step, *init;
    int64_t d, P;
    float lo[DS_MAX_CHANNELS], hi[DS_MAX_CHANNELS], std[DS_MAX_CHANNELS];
} Craft;

/* pixel_lo, pixel_hi, pixel_std: f32[C, 1, 1] inputs, when the objective reads them */
static void set_channel_input(lethe_frame *f, const char *name, const float *v, int c) {
    float *x = frame_arg(f, name);
    for (int k = 0; x && k < c; k++)
        x[k] = v[k];
}

/* The starting edit of one sample: eps N(0, 1) / std_c inside the ball and
 * the box; an added sample starts as a copy of the sample it was drawn as. */
static void initial_edit(const Craft *c, int restart, double eps, int64_t pos, float *out) {
    const lethe_dataset *ds = c->j->train;
    if (c->j->attack->added) {
        memcpy(out, ds->x + pos * ds->d, sizeof(float) * (size_t)ds->d);
        return;
    }
    int64_t plane = ds->d / ds->c;
    ds_gauss_noise(c->j->seed ^ ATTACK_SALT ^ (uint64_t)restart, DS_STREAM_ATTACK_INIT, 1.0, ds->id[pos], ds->d, out);
    const float *x = ds->x + pos * ds->d;
    for (int64_t i = 0; i < ds->d; i++) {
        int ch = (int)(i / plane);
        float r = (float)eps / c->std[ch];
        float v = eps > 0 ? fminf(fmaxf(out[i] * r, -r), r) : 0;
        out[i] = fminf(fmaxf(v, c->lo[ch] - x[i]), c->hi[ch] - x[i]);
    }
}

/* The learning rate's factor at `step` of `steps`: Geiping et al.'s
 * MultiStepLR (x0.1 at steps/2.667, /1.6, /1.142), Lu et al.'s cosine decay
 * 0.5 (1 + cos(pi step / steps)), or none. */
static double lr_factor(int schedule, int64_t step, int64_t steps) {
    if (schedule == ATTACK_LR_CONSTANT)
        return 1;
    if (schedule == ATTACK_LR_COSINE)
        return 0.5 * (1 + cos(M_PI * (double)step / (double)steps));
    double f = 1;
    const double at[3] = {2.667, 1.6, 1.142};
    for (int k = 0; k < 3; k++)
        if (step >= (int64_t)floor((double)steps / at[k]))
            f *= 0.1;
    return f;
}

/* init_state of the objective for one batch: the target sample and the surrogate */
static int batch_state(const Craft *c, ts_store *state, char *err) {
    if (!c->init)
        return LETHE_OK;
    const attack_job *j = c->j;
    frame_models fm = {NULL, j->surrogate};
    lethe_frame *f = frame_new(c->init, &fm, 1, state, err);
    if (!f)
        return LETHE_EARG;
    int rc = LETHE_OK;
    float *tx = frame_arg(f, "target.x");
    int32_t *ty = frame_arg(f, "target.y");
    if (tx)
        memcpy(tx, j->test->x + j->choice->target * j->test->d, sizeof(float) * (size_t)j->test->d);
    if (ty)
        *ty = j->choice->adv;
    /* the whole clean training set, as one batch (Gradient Canceling's clean gradient) */
    float *cx = frame_arg(f, "clean.x");
    int32_t *cy = frame_arg(f, "clean.y");
    if (cx) {
        int64_t n = j->train->n, want = 0;
        for (int i = 0; i < c->init->nargs; i++)
            if (!strcmp(c->init->args[i].name, "clean.x"))
                want = c->init->args[i].shape[0];
        int64_t *all = malloc(sizeof(int64_t) * (size_t)n + 1);
        int32_t *own_y = cy ? NULL : malloc(sizeof(int32_t) * (size_t)n + 1);
        if (want != n)
            rc = lethe_errf(err, LETHE_EARG, "attack %s was compiled for a clean set of %lld samples, but the training set has "
                                             "%lld (drop --train-limit, or change the data set's n)", j->attack->name,
                            (long long)want, (long long)n);
        else if (!all || (!cy && !own_y))
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
        for (int64_t k = 0; !rc && k < n; k++)
            all[k] = k;
        if (!rc)
            rc = ds_batch(j->train, all, n, NULL, NULL, cx, cy ? cy : own_y, err);
        free(all);
        free(own_y);
    }
    for (int i = 0; !rc && i < j->attack->step.nargs; i++)
        frame_set_scalar(f, j->attack->step.arg_name[i], j->attack->step.arg_value[i]);
    j->ctx->seed = j->seed ^ ATTACK_SALT;
    j->ctx->counter = 0;
    if (!rc)
        rc = frame_call(f, j->ctx, err);
    if (!rc)
        rc = lethe_ctx_sync(j->ctx, err);
    frame_free(f);
    return rc;
}

/* One batch of poisons (positions idx[0..P), the first `rows` real): its
 * edits start at delta[0..rows) and end there; *loss is the final loss. */
static int craft_batch(const Craft *c, int restart, const int64_t *idx, int64_t rows, uint64_t *counter, float *delta,
                       double *loss, lethe_progress *pr, int64_t done_steps, char *err) {
    const attack_job *j = c->j;
    const plan_attack *a = j->attack;
    ts_store state = {0};
    int rc = batch_state(c, &state, err);
    ts_tensor *over = NULL;
    int64_t shape[4] = {c->P, j->train->c, j->train->h, j->train->w};
    if (!rc && !(over = ts_put(&state, a->over, LETHE_F32, 4, shape, err)))
        rc = LETHE_EFORMAT;
    lethe_frame *f = NULL;
    frame_models fm = {NULL, j->surrogate};
    if (!rc && !(f = frame_new(c->step, &fm, 1, &state, err)))
        rc = LETHE_EARG;
    if (!rc)
        over = ts_get(&state, a->over);   /* frame_new may have grown the store */
    for (int i = 0; !rc && i < a->step.nargs; i++)
        if (frame_set_scalar(f, a->step.arg_name[i], a->step.arg_value[i]))
            rc = lethe_errf(err, LETHE_EARG, "'%s' of %s is not a runtime hyperparameter", a->step.arg_name[i], a->name);
    float *lr = f ? frame_arg(f, "lr") : NULL, *lossp = f ? frame_arg(f, "loss") : NULL;
    const float *eps = f ? frame_arg(f, "eps") : NULL;
    if (!rc && !lossp)
        rc = lethe_errf(err, LETHE_EFORMAT, "entry %s has no output loss", c->step->name);
    /* the poison samples as they are (`poison`), or the labels and starting
     * values of the samples to add (`added`) */
    const char *rec[2] = {"poison", "added"};
    int32_t *ybuf = malloc(sizeof(int32_t) * (size_t)c->P + 1);
    for (int k = 0; !rc && k < 2; k++) {
        char xn[32], yn[32];
        snprintf(xn, sizeof xn, "%s.x", rec[k]);
        snprintf(yn, sizeof yn, "%s.y", rec[k]);
        float *bx = frame_arg(f, xn), *xbuf = bx ? NULL : malloc(sizeof(float) * (size_t)(c->P * c->d) + 1);
        int32_t *by = frame_arg(f, yn);
        if (bx || by)
            rc = ybuf && (bx || xbuf) ? ds_batch(j->train, idx, c->P, NULL, NULL, bx ? bx : xbuf, by ? by : ybuf, err)
                                      : lethe_errf(err, LETHE_ENOMEM, "out of memory");
        free(xbuf);
    }
    free(ybuf);
    if (!rc) {
        set_channel_input(f, "pixel_lo", c->lo, j->train->c);
        set_channel_input(f, "pixel_hi", c->hi, j->train->c);
        set_channel_input(f, "pixel_std", c->std, j->train->c);
        float *o = over->data;
        for (int64_t i = 0; i < c->P; i++)
            initial_edit(c, restart, eps ? *eps : 0, idx[i], o + i * c->d);
    }
    double lr0 = lr ? *lr : 0;
    j->ctx->seed = j->seed ^ ATTACK_SALT ^ (uint64_t)restart;
    float *final = malloc(sizeof(float) * (size_t)(rows * c->d) + 1);
    if (!rc && !final)
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t s = 0; !rc && s <= a->steps; s++) {
        if (s == a->steps) {   /* the loss at the final edits: measured by one more call whose step is dropped */
            rc = lethe_ctx_sync(j->ctx, err);
            memcpy(final, over->data, sizeof(float) * (size_t)(rows * c->d));
        }
        if (lr)
            *lr = (float)(lr0 * lr_factor(a->schedule, s, a->steps));
        j->ctx->counter = (*counter)++;
        if (!rc)
            rc = frame_call(f, j->ctx, err);
        if (!rc && s < a->steps)
            progress_update(pr, done_steps + s + 1, *lossp);
    }
    if (!rc)
        rc = lethe_ctx_sync(j->ctx, err);
    if (!rc) {
        *loss = *lossp;
        memcpy(delta, final, sizeof(float) * (size_t)(rows * c->d));
    }
    free(final);
    frame_free(f);
    ts_clear(&state);
    return rc;
}

static void restart_path(const attack_job *j, int r, char *path, size_t n) {
    snprintf(path, n, "%s/poison.restart%d.safetensors", j->dir, r);
}

/* A restart's progress: its edits so far, batches done, summed loss. */
static int save_restart(const attack_job *j, int r, const float *delta, int64_t n, int64_t d, int64_t batches, double loss_sum,
                        char *err) {
    ts_store s = {0};
    int64_t shape[2] = {n, d}, two = 2;
    ts_tensor *t = ts_put(&s, "delta", LETHE_F32, 2, shape, err), *p = t ? ts_put(&s, "progress", LETHE_F64, 1, &two, err) : NULL;
    int rc = p ? LETHE_OK : LETHE_ENOMEM;
    if (!rc) {
        memcpy(t->data, delta, sizeof(float) * (size_t)(n * d));
        ((double *)p->data)[0] = (double)batches;
        ((double *)p->data)[1] = loss_sum;
        char path[PATH_MAX + 64];
        restart_path(j, r, path, sizeof path);
        rc = ts_save(&s, path, NULL, err);
    }
    ts_clear(&s);
    return rc;
}

/* A poison file of this job into s: refused when its key names another
 * experiment, seed or data; a file without one (an older lethe) loads with a
 * note. */
static int load_keyed(const attack_job *j, const char *path, ts_store *s, char *err) {
    st_file *f = NULL;
    int rc = st_load(path, 0, &f, err);
    const char *key = rc ? NULL : st_meta_get(f, "poison_key");
    if (!rc && key && strcmp(key, j->key))
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: the poison set of another experiment, seed or data (key %.12s, this one's "
                                            "%.12s)", path, key, j->key);
    if (!rc && !key)
        fprintf(stderr, "lethe: note: %s was written by an older lethe without the experiment's key: only its sample ids "
                        "are checked (delete it to craft the poisons again)\n", path);
    st_free(f);
    return rc ? rc : ts_load(s, path, err);
}

static int load_restart(const attack_job *j, int r, float *delta, int64_t n, int64_t d, int64_t *batches, double *loss_sum,
                        char *err) {
    char path[PATH_MAX + 64];
    restart_path(j, r, path, sizeof path);
    *batches = 0;
    *loss_sum = 0;
    if (!fs_exists(path))
        return LETHE_OK;
    ts_store s = {0};
    int rc = load_keyed(j, path, &s, err);
    ts_tensor *t = rc ? NULL : ts_get(&s, "delta"), *p = rc ? NULL : ts_get(&s, "progress");
    if (!rc && (!t || !p || t->dtype != LETHE_F32 || t->nbytes != sizeof(float) * (size_t)(n * d) || p->dtype != LETHE_F64 ||
                p->nbytes != 2 * sizeof(double)))
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not the progress of this poison set (delete it to start the restart again)",
                        path);
    if (!rc) {
        memcpy(delta, t->data, t->nbytes);
        *batches = (int64_t)((double *)p->data)[0];
        *loss_sum = ((double *)p->data)[1];
    }
    ts_clear(&s);
    return rc;
}

/* Fault injection for the resume test: LETHE_KILL_AFTER_POISON_BATCHES=N
 * makes the process kill itself (SIGKILL) right after its N-th saved batch. */
static void batch_fault_point(void) {
    static long left = -2;
    if (left == -2) {
        const char *v = getenv("LETHE_KILL_AFTER_POISON_BATCHES");
        left = v && *v ? atol(v) : -1;
    }
    if (left > 0 && --left == 0)
        raise(SIGKILL);
}

int attack_craft(const attack_job *j, float *delta, double *loss, char *err) {
    const plan_attack *a = j->attack;
    const attack_choice *ch = j->choice;
    Craft c = {.j = j, .d = j->train->d, .P = a->batch};
    c.step = lethe_entry_find(j->prog->p, a->step.entry);
    char init[128];
    snprintf(init, sizeof init, "%s.init_state", a->step.entry);
    c.init = lethe_entry_find(j->prog->p, init);
    if (!c.step)
        return lethe_errf(err, LETHE_ENOTFOUND, "the program has no entry '%s': was it compiled from this experiment?",
                          a->step.entry);
    for (int k = 0; k < j->train->c && k < DS_MAX_CHANNELS; k++) {
        double m = j->norm->mean[k], s = j->norm->std[k];
        c.std[k] = (float)s;
        c.lo[k] = j->image ? (float)((0 - m) / s) : -1e30f;
        c.hi[k] = j->image ? (float)((1 - m) / s) : 1e30f;
    }
    int64_t n = ch->n, d = c.d, nb = (n + c.P - 1) / c.P;
    float *cur = malloc(sizeof(float) * (size_t)(n * d) + 1);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)c.P);
    if (!cur || !idx) {
        free(cur);
        free(idx);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    int rc = LETHE_OK;
    double best = INFINITY;
    for (int r = 0; !rc && r < a->restarts; r++) {
        int64_t done;
        double sum;
        rc = load_restart(j, r, cur, n, d, &done, &sum, err);
        char label[160];
        snprintf(label, sizeof label, "%s restart %d/%lld", a->name, r + 1, (long long)a->restarts);
        lethe_progress pr;
        progress_init(&pr, label, nb * a->steps, j->quiet || done == nb);
        uint64_t counter = (uint64_t)done * (uint64_t)(a->steps + 1);
        for (int64_t b = done; !rc && b < nb; b++) {
            int64_t first = b * c.P, rows = n - first < c.P ? n - first : c.P;
            for (int64_t i = 0; i < c.P; i++)
                idx[i] = ch->pos[first + i % rows];
            double l = NAN;
            rc = craft_batch(&c, r, idx, rows, &counter, cur + first * d, &l, &pr, b * a->steps, err);
            sum += l * (double)rows;
            if (!rc)
                rc = save_restart(j, r, cur, n, d, b + 1, sum, err);
            if (!rc)
                batch_fault_point();
        }
        progress_finish(&pr);
        double mean = sum / (double)n;
        if (!rc && !j->quiet)
            fprintf(stderr, "lethe: %s restart %d: loss %.6g\n", a->name, r + 1, mean);
        if (!rc && (mean < best || r == 0)) {
            best = mean;
            memcpy(delta, cur, sizeof(float) * (size_t)(n * d));
        }
    }
    free(cur);
    free(idx);
    *loss = best;
    return rc;
}

/* ---------------------------------------------------------------------------
 * the result */

static void put_json(jw *w, const json_value *v, int root) {
    switch (v->type) {
    case JSON_NULL: jw_null(w); break;
    case JSON_BOOL: jw_bool(w, v->boolean); break;
    case JSON_NUMBER:
        if (v->is_int)
            jw_int(w, v->i64);
        else
            jw_num(w, v->num);
        break;
    case JSON_STRING: jw_strn(w, v->str, v->len); break;
    case JSON_ARRAY:
        jw_arr_begin(w);
        for (size_t i = 0; i < v->len; i++)
            put_json(w, &v->items[i], 0);
        jw_arr_end(w);
        break;
    case JSON_OBJECT:
        jw_obj_begin(w);
        for (size_t i = 0; i < v->len; i++) {
            if (root && !strcmp(v->keys[i], "file"))
                continue;
            jw_key(w, v->keys[i]);
            put_json(w, &v->items[i], 0);
        }
        jw_obj_end(w);
        break;
    }
}

void poison_key(const exp_plan *plan, uint64_t seed, const char *data_hash, char key[65]) {
    /* the descriptor without its "file", the path lethec was given: the same
     * experiment named by another path is the same experiment */
    json_doc *doc = NULL;
    jw w;
    jw_init(&w);
    const char *text = plan->json;
    size_t len = strlen(text), clen;
    if (!json_parse(plan->json, len, NULL, &doc, NULL)) {
        put_json(&w, json_doc_root(doc), 1);
        const char *canon = jw_finish(&w, &clen);
        if (canon)
            text = canon, len = clen;
    }
    fs_sha256 h;
    fs_sha256_init(&h);
    char tail[160];
    int n = snprintf(tail, sizeof tail, "\nseed %llu\ndata %s\n", (unsigned long long)seed, data_hash);
    fs_sha256_update(&h, text, len);
    jw_free(&w);
    json_doc_free(doc);
    fs_sha256_update(&h, tail, (size_t)n);
    uint8_t d[32];
    fs_sha256_final(&h, d);
    for (int i = 0; i < 32; i++)
        snprintf(key + 2 * i, 3, "%02x", d[i]);
}

int attack_save(const attack_job *j, const float *delta, double loss, const char *path, char *err) {
    const attack_choice *ch = j->choice;
    const lethe_dataset *ds = j->train;
    ts_store s = {0};
    int64_t shape[4] = {ch->n, ds->c, ds->h, ds->w}, one = 1;
    ts_tensor *t = ts_put(&s, "delta", LETHE_F32, 4, shape, err);
    ts_tensor *ids = t ? ts_put(&s, "ids", LETHE_I32, 1, &ch->n, err) : NULL;
    ts_tensor *tg = ids ? ts_put(&s, "target", LETHE_I32, 1, &one, err) : NULL;
    ts_tensor *adv = tg ? ts_put(&s, "adv", LETHE_I32, 1, &one, err) : NULL;
    ts_tensor *lt = adv ? ts_put(&s, "loss", LETHE_F64, 1, &one, err) : NULL;
    if (!lt) {
        ts_clear(&s);
        return LETHE_ENOMEM;
    }
    memcpy(t->data, delta, sizeof(float) * (size_t)(ch->n * ds->d));
    for (int64_t i = 0; i < ch->n; i++)
        ((int32_t *)ids->data)[i] = (int32_t)ds->id[ch->pos[i]];
    *(int32_t *)tg->data = (int32_t)ch->target;
    *(int32_t *)adv->data = ch->adv;
    *(double *)lt->data = loss;
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)j->seed);
    const char *meta[] = {"format", "lethe", "attack", j->attack->name, "seed", seed, "poison_key", j->key, NULL};
    int rc = ts_save(&s, path, meta, err);
    ts_clear(&s);
    return rc;
}

int attack_load(const attack_job *j, float *delta, double *loss, const char *path, char *err) {
    const attack_choice *ch = j->choice;
    const lethe_dataset *ds = j->train;
    ts_store s = {0};
    int rc = load_keyed(j, path, &s, err);
    ts_tensor *t = rc ? NULL : ts_get(&s, "delta"), *ids = rc ? NULL : ts_get(&s, "ids"), *lt = rc ? NULL : ts_get(&s, "loss");
    int ok = !rc && t && ids && t->dtype == LETHE_F32 && ids->dtype == LETHE_I32 &&
             t->nbytes == sizeof(float) * (size_t)(ch->n * ds->d) && ids->nbytes == sizeof(int32_t) * (size_t)ch->n;
    for (int64_t i = 0; ok && i < ch->n; i++)
        ok = ((int32_t *)ids->data)[i] == (int32_t)ds->id[ch->pos[i]];
    if (!rc && !ok)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not this seed's poison set (its ids or shapes differ)", path);
    if (!rc)
        memcpy(delta, t->data, t->nbytes);
    *loss = lt && lt->dtype == LETHE_F64 && lt->nbytes == sizeof(double) ? *(double *)lt->data : NAN;
    ts_clear(&s);
    return rc;
}
