/* run.c: execute an experiment plan (run.h): poison, train, unlearn with
 * every method and budget, evaluate, record.
 *
 * The protocol (ALGORITHMS.md sections 1-4):
 *   - a fraction of the training set, chosen from the seed, gets Gaussian
 *     noise xi ~ N(0, eps^2 I) in the network's input space, before
 *     augmentation, regenerated from (seed, sample id) and never stored;
 *     or, when the experiment names an attack objective, poison.c crafts
 *     edits (or added samples) against a clean surrogate and they are
 *     applied to the training set (the target's prediction is then recorded
 *     instead of the Gaussian scores);
 *   - the original model trains on the poisoned set; retrain trains the same
 *     recipe on the retain set (everything but the poisons);
 *   - each method starts from the original model and stops when the
 *     forward+backward sample passes it used reach its budget, a share of
 *     the original training's (N x epochs);
 *   - evaluation: test accuracy; the Gaussian score I = <xi, g> / (eps |g|)
 *     with g the input gradient of the per-sample loss at the clean input in
 *     eval mode, against fresh noise (empirical null) and N(0, 1); TPR at
 *     FPR 0.01; the loss-threshold membership test; the parameter shift.
 *
 * Every artifact is written atomically and a finished one is never redone:
 * a killed run started again continues where it stopped.
 *
 * This file holds the data, the poison sets and the stages; run_steps.c calls
 * the program's entries (streams, steps, training), run_eval.c evaluates and
 * writes the records; run_internal.h is what they share.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "json.h"
#include "mpi.h"
#include "audit.h"
#include "progress.h"
#include "run_internal.h"
#include "run_text.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

const lethe_entry *run_entry(const Run *r, const char *name, char *err) {
    const lethe_entry *e = lethe_entry_find(r->prog->p, name);
    if (!e)
        lethe_errf(err, LETHE_ENOTFOUND, "the program has no entry '%s': was it compiled from this experiment?", name);
    return e;
}

/* ---------------------------------------------------------------------------
 * data */

static int load_data(Run *r, char *err) {
    const exp_plan *p = r->plan;
    const run_opts *o = r->o;
    int rc = LETHE_OK;
    int image = 1;
    if (!strcmp(p->data, RUN_TEXT_DATA) || !strcmp(p->data, RUN_TEXT_PROMPTS))
        return run_text_load(r, err);
    if (!strcmp(p->data, "fashion_mnist") || !strcmp(p->data, "mnist")) {
        const char *dir = o->data_dir ? o->data_dir : !strcmp(p->data, "mnist") ? "/usr/share/datasets/mnist" : NULL;
        rc = ds_load_mnist_dir(dir, 1, &r->train, err);
        if (!rc)
            rc = ds_load_mnist_dir(dir, 0, &r->test, err);
    } else if (!strcmp(p->data, "cifar10")) {
        rc = ds_load_cifar10_dir(o->data_dir ? o->data_dir : "data/cifar-10-batches-bin", 1, &r->train, err);
        if (!rc)
            rc = ds_load_cifar10_dir(o->data_dir ? o->data_dir : "data/cifar-10-batches-bin", 0, &r->test, err);
    } else
        image = 0;
    if (rc && o->synthetic_fallback) {
        fprintf(stderr, "lethe: note: %s\nlethe: note: the %s data set is missing: using a synthetic stand-in of the same "
                        "shape (install dataset-fashion-mnist for the real one)\n", err, p->data);
        ds_free(&r->train);
        ds_free(&r->test);
        r->synthetic_stand_in = 1;
        image = 0;
        rc = LETHE_OK;
    } else if (rc) {
        char why[LETHE_ERR_LEN];
        snprintf(why, sizeof why, "%s", err);
        return lethe_errf(err, rc, "%s\n---> HINT: install the data set (Fashion-MNIST: apt-get install dataset-fashion-mnist), "
                                   "point --data-dir at its files, or run on a synthetic stand-in with --synthetic-fallback", why);
    }
    if (!image) {
        ds_synth s = {.kind = DS_SYNTH_BLOBS, .rank = 3, .c = p->c, .h = p->h, .w = p->w, .classes = p->classes,
                      .sep = p->synth_sep, .noise = 1, .seed = 1234};
        s.n = o->train_limit ? o->train_limit : p->synth_n;
        s.first_id = 0;
        if ((rc = ds_synthetic(&s, &r->train, err)))
            return rc;
        s.n = o->test_limit ? o->test_limit : p->synth_n_test;
        s.first_id = r->train.n;
        if ((rc = ds_synthetic(&s, &r->test, err)))
            return rc;
    } else {
        ds_divide(&r->train, 255);
        ds_divide(&r->test, 255);
    }
    /* a slice of the data: the first n samples */
    lethe_dataset *sets[2] = {&r->train, &r->test};
    int64_t limits[2] = {o->train_limit ? o->train_limit : p->limit_train, o->test_limit ? o->test_limit : p->limit_test};
    for (int k = 0; k < 2; k++)
        if (limits[k] > 0 && limits[k] < sets[k]->n) {
            int64_t *idx = malloc(sizeof(int64_t) * (size_t)limits[k]);
            lethe_dataset sub = {0};
            for (int64_t i = 0; i < limits[k]; i++)
                idx[i] = i;
            rc = ds_subset(sets[k], idx, limits[k], &sub, err);
            free(idx);
            if (rc)
                return rc;
            ds_free(sets[k]);
            *sets[k] = sub;
        }
    if (r->train.c != p->c || r->train.h != p->h || r->train.w != p->w || r->train.num_classes > p->classes)
        return lethe_errf(err, LETHE_EFORMAT, "the data (%d x %d x %d, %d classes) does not match the experiment's model input "
                                              "(%d x %d x %d, %d classes)", r->train.c, r->train.h, r->train.w,
                          r->train.num_classes, p->c, p->h, p->w, p->classes);
    ds_norm nm;
    if ((rc = ds_norm_fit(&r->train, &nm, err)) || (rc = ds_norm_apply(&r->train, &nm, err)) ||
        (rc = ds_norm_apply(&r->test, &nm, err)))
        return rc;
    r->norm = nm;
    r->image = image;
    if (p->has_attack) {
        size_t bytes = sizeof(float) * (size_t)(r->train.n * r->train.d);
        if (!(r->clean_x = malloc(bytes + 1)))
            return lethe_errf(err, LETHE_ENOMEM, "out of memory");
        memcpy(r->clean_x, r->train.x, bytes);
        r->clean_n = r->train.n;
    }
    ds_hash(&r->train, r->data_hash);
    return LETHE_OK;
}

static void free_seed(Run *r) {
    free(r->choice.pos);
    memset(&r->choice, 0, sizeof r->choice);
    free(r->all);
    free(r->poison);
    free(r->retain);
    free(r->mask);
    free(r->lira_phi);
    run_text_mia_free(r);
    r->all = r->poison = r->retain = NULL;
    r->mask = NULL;
    r->lira_phi = NULL;
}

/* The poisoned subset of this seed: positions in the training set, and a
 * mask by sample id for the batch builder. */
/* all, retain and the mask by sample id, from the poison positions
 * r->poison[0..r->n_poison) of the training set as it is now. */
static int poison_sets(Run *r, char *err) {
    int64_t n = r->train.n, k = r->n_poison;
    free(r->all);
    free(r->retain);
    free(r->mask);
    r->retain = NULL;
    r->mask = NULL;
    r->n_all = n;
    if (!(r->all = malloc(sizeof(int64_t) * (size_t)n + 1)))
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        r->all[i] = i;
    int rc = ds_complement(n, r->poison, k, &r->retain, &r->n_retain, err);
    if (rc)
        return rc;
    r->mask_n = 0;
    for (int64_t i = 0; i < n; i++)
        if (r->train.id[i] + 1 > r->mask_n)
            r->mask_n = r->train.id[i] + 1;
    r->mask = calloc((size_t)r->mask_n + 1, 1);
    if (!r->mask)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; i < k; i++)
        r->mask[r->train.id[r->poison[i]]] = 1;
    return LETHE_OK;
}

static int choose_poisons(Run *r, char *err) {
    free_seed(r);
    if (r->clean_x) {   /* an earlier seed's attack edited or extended the training set */
        r->train.n = r->clean_n;
        memcpy(r->train.x, r->clean_x, sizeof(float) * (size_t)(r->clean_n * r->train.d));
    }
    if (r->plan->has_trigger) {   /* the trigger transform's edits (run_text_trigger.c) */
        int rc = run_text_trigger_poisons(r, err);
        return rc ? rc : poison_sets(r, err);
    }
    int64_t n = r->train.n;
    int rc = r->plan->has_attack ? attack_choose(&r->plan->attack, &r->train, &r->test, r->seed, &r->choice, err) : LETHE_OK;
    if (rc)
        return rc;
    int64_t k = r->plan->has_attack ? r->choice.n : (int64_t)llround(r->plan->poison_fraction * (double)n);
    r->poison = malloc(sizeof(int64_t) * (size_t)(k + 1));
    if (!r->poison)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (r->plan->has_attack)
        memcpy(r->poison, r->choice.pos, sizeof(int64_t) * (size_t)k);
    else
        rc = ds_random_subset(n, k, r->seed ^ POISON_SALT, r->poison, err);
    r->n_poison = k;
    return rc ? rc : poison_sets(r, err);
}

/* seed<K>/poison.json: the poison set of this seed by sample id (the noise
 * is regenerated from the seed, never stored) */
static int write_poisons(Run *r, char *err) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    char key[65];
    poison_key(r->plan, r->seed, r->data_hash, key);
    jw_kv_str(&w, "experiment", r->plan->name);
    jw_kv_int(&w, "seed", (int64_t)r->seed);
    jw_kv_str(&w, "key", key);   /* checked by whoever reads the set back (audit.c) */
    jw_kv_num(&w, "eps", r->plan->poison_eps);
    jw_key(&w, "ids");
    jw_arr_begin(&w);
    for (int64_t i = 0; i < r->n_poison; i++)
        jw_int(&w, r->train.id[r->poison[i]]);
    jw_arr_end(&w);
    jw_obj_end(&w);
    size_t len;
    const char *text = jw_finish(&w, &len);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/poison.json", r->seed_dir);
    int rc = fs_write_atomic(path, text, len, err);
    jw_free(&w);
    return rc;
}

/* ---------------------------------------------------------------------------
 * stages */

/* Fault injection for the resume test: LETHE_KILL_AFTER_RECORDS=N makes the
 * process kill itself (SIGKILL, as a crash or an operator would) right after
 * its N-th new record. */
static void fault_point(void) {
    static long left = -2;
    if (left == -2) {
        const char *v = getenv("LETHE_KILL_AFTER_RECORDS");
        left = v && *v ? atol(v) : -1;
    }
    if (left > 0 && --left == 0)
        raise(SIGKILL);
}

static int record_exists(const Run *r, const char *method, double budget) {
    char path[PATH_MAX + 128], tag[32];
    snprintf(path, sizeof path, "%s/records/%s_%s_seed%llu.json", r->dir, method, run_budget_tag(budget, tag, sizeof tag),
             (unsigned long long)r->seed);
    return fs_exists(path);
}

static int save_model(const Run *r, const ts_store *m, const char *path, const char *what, char *err) {
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    const char *meta[] = {"format", "lethe", "experiment", r->plan->name, "model", what, "seed", seed,
                          "data_hash", r->data_hash, NULL};
    return ts_save(m, path, meta, err);
}

/* The original model of this seed: trained once, then read back. */
/* A model trained from scratch on set[0..n) (the original model, retrain),
 * or the one an earlier run saved: <name>.safetensors, with the training's
 * time and final loss in <name>.train.json beside it, so that a resumed run
 * writes the same record. The sidecar is written first: the model's presence
 * means the stage is done. Sets u's seconds and final_loss. */
static int trained_model(Run *r, const char *name, const int64_t *set, int64_t n, ts_store *model, Used *u,
                         char *err) {
    char path[PATH_MAX + 64], info[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.safetensors", r->seed_dir, name);
    snprintf(info, sizeof info, "%s/%s.train.json", r->seed_dir, name);
    if (fs_exists(path)) {
        uint8_t *text = NULL;
        size_t len = 0;
        json_doc *doc = NULL;
        u->seconds = u->final_loss = NAN;
        if (!fs_read_file(info, 1 << 16, &text, &len, err) && !json_parse((char *)text, len, NULL, &doc, err)) {
            const json_value *root = json_doc_root(doc), *sec = json_obj_get(root, "seconds"),
                             *loss = json_obj_get(root, "final_loss");
            u->seconds = sec && sec->type == JSON_NUMBER ? sec->num : NAN;
            u->final_loss = loss && loss->type == JSON_NUMBER ? loss->num : NAN;
        }
        json_doc_free(doc);
        free(text);
        return ts_load(model, path, err);
    }
    double t0 = now();
    char label[64];
    snprintf(label, sizeof label, "%s seed %llu", strcmp(name, "original") ? name : "train", (unsigned long long)r->seed);
    int rc = run_train_on(r, set, n, model, label, &u->final_loss, err);
    u->seconds = now() - t0;
    if (!rc) {
        char text[128];
        int len = snprintf(text, sizeof text, "{\"seconds\": %.3f, \"final_loss\": %.17g}\n", u->seconds, u->final_loss);
        rc = fs_write_atomic(info, text, (size_t)len, err);
    }
    return rc ? rc : save_model(r, model, path, name, err);
}

static int original_model(Run *r, ts_store *orig, Used *u, char *err) {
    memset(u, 0, sizeof *u);
    u->steps = (r->n_all / r->plan->batch) * r->epochs;
    u->samples = u->steps * r->plan->batch;
    u->budget_used = 1;
    return trained_model(r, "original", r->all, r->n_all, orig, u, err);
}

/* The surrogate rule (GradPC): one pass over the training set from the
 * clean model; the poisons are crafted against the result. */
static int surrogate_pass(Run *r, ts_store *model, char *err) {
    const plan_rule *rule = &r->plan->attack.surrogate;
    const lethe_entry *e = run_entry(r, rule->entry, err);
    if (!e)
        return LETHE_ENOTFOUND;
    ts_store state = {0};
    char init[128], label[128];
    snprintf(init, sizeof init, "%s.init_state", rule->entry);
    snprintf(label, sizeof label, "%s seed %llu", rule->rule, (unsigned long long)r->seed);
    int rc = run_call_init(r, init, model, &state, err);
    double loss;
    r->steps_done = 0;
    if (!rc)
        rc = run_steps(r, e, rule, model, NULL, &state, r->n_all / r->plan->batch, 0, NULL, SURROGATE_SALT, label, &loss, err);
    ts_clear(&state);
    return rc;
}

/* Added poisons (Gradient Canceling): appended to the training set with new
 * ids and labels copied from the samples they started as; they are the
 * forget set, the clean set is the retain set. */
static int add_poisons(Run *r, const float *x, char *err) {
    int64_t k = r->choice.n, n0 = r->train.n;
    int32_t *y = malloc(sizeof(int32_t) * (size_t)k + 1);
    if (!y)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; i < k; i++)
        y[i] = r->train.y[r->choice.pos[i]];
    int64_t first_id = r->mask_n;   /* past every id in use, the test set's included */
    for (int64_t i = 0; i < r->test.n; i++)
        if (r->test.id[i] + 1 > first_id)
            first_id = r->test.id[i] + 1;
    int rc = ds_append(&r->train, x, y, k, first_id, err);
    free(y);
    for (int64_t i = 0; !rc && i < k; i++)
        r->poison[i] = n0 + i;
    return rc ? rc : poison_sets(r, err);
}

/* An attack's poisons for this seed: a clean surrogate trained on the clean
 * set (SEED/clean.safetensors), the objective crafted against it
 * (SEED/poison.safetensors, the edits with their sample ids), then the edits
 * added to the poison samples' inputs for every stage that follows. Both
 * files are read back when they exist. */
static int attack_stage(Run *r, char *err) {
    const plan_attack *a = &r->plan->attack;
    int64_t n = r->choice.n, d = r->train.d;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/poison.safetensors", r->seed_dir);
    ts_store surrogate = {0};
    char key[65];
    poison_key(r->plan, r->seed, r->data_hash, key);
    attack_job j = {.key = key, .prog = r->prog, .attack = &r->plan->attack, .ctx = &r->ctx, .train = &r->train, .test = &r->test,
                    .choice = &r->choice, .norm = &r->norm, .image = r->image, .surrogate = &surrogate, .seed = r->seed,
                    .dir = r->seed_dir, .quiet = r->o->quiet};
    float *delta = malloc(sizeof(float) * (size_t)(n * d) + 1);
    double loss = NAN;
    int rc = delta ? LETHE_OK : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (!rc && fs_exists(path))
        rc = attack_load(&j, delta, &loss, path, err);
    else if (!rc) {
        Used u;
        rc = trained_model(r, "clean", r->all, r->n_all, &surrogate, &u, err);
        if (!rc && a->has_surrogate)
            rc = surrogate_pass(r, &surrogate, err);
        if (!rc)
            rc = attack_craft(&j, delta, &loss, err);
        if (!rc)
            rc = attack_save(&j, delta, loss, path, err);
    }
    if (!rc && a->added)
        rc = add_poisons(r, delta, err);
    for (int64_t i = 0; !rc && !a->added && i < n; i++) {
        float *x = r->train.x + r->choice.pos[i] * d;
        for (int64_t k = 0; k < d; k++)
            x[k] += delta[i * d + k];
    }
    if (!rc && !r->o->quiet && a->added)
        fprintf(stderr, "lethe: seed %llu: %s added %lld poisons (loss %.6g)\n", (unsigned long long)r->seed, a->name,
                (long long)n, loss);
    else if (!rc && !r->o->quiet)
        fprintf(stderr, "lethe: seed %llu: %s poisons ready (%lld samples of class %d, target test sample %lld of class %d, "
                        "loss %.6g)\n", (unsigned long long)r->seed, a->name, (long long)n, r->choice.adv,
                (long long)r->choice.target, r->choice.target_class, loss);
    free(delta);
    ts_clear(&surrogate);
    return rc;
}

/* An attack that adds samples is measured by the test accuracy it costs: the
 * baseline is the clean model of this seed (SEED/clean.safetensors, trained
 * on the clean set before anything was added; retrained on that same set,
 * in the same order, if an earlier run's file is gone). */
static int clean_baseline(Run *r, char *err) {
    r->clean_accuracy = NAN;
    if (!r->plan->has_attack || !r->plan->attack.added)
        return LETHE_OK;
    ts_store clean = {0};
    Used u;
    Eval ev;
    int rc = trained_model(r, "clean", r->retain, r->n_retain, &clean, &u, err);
    if (!rc)
        rc = run_evaluate(r, &clean, &ev, err);
    if (!rc)
        r->clean_accuracy = ev.accuracy;
    ts_clear(&clean);
    return rc;
}

static double const_of(const plan_rule *rule, const char *name, double deflt) {
    for (int i = 0; i < rule->nconsts; i++)
        if (!strcmp(rule->const_name[i], name))
            return rule->const_value[i];
    return deflt;
}

/* EUk: re-initialise the matrix layers the method trains (the PARAM
 * arguments its step writes whose layer counts toward k); batch-norm layers
 * on the way are trained but keep their values, as in the original code.
 * reinit 1 draws fresh weights, 2 regenerates the original training's
 * initial weights from its seed. */
static int reinit_layers(Run *r, const lethe_entry *e, int mode, ts_store *model, char *err) {
    ts_store fresh = {0};
    int rc = run_init_model(r, &fresh, mode == 2 ? r->seed : r->seed ^ REINIT_SALT, err);
    for (int i = 0; !rc && i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind != LETHE_PARAM || !(a->access & LETHE_WRITE) || !a->layer_counts)
            continue;
        ts_tensor *src = ts_get(&fresh, a->path), *dst = ts_get(model, a->path);
        if (!src || !dst || src->nbytes != dst->nbytes)
            rc = lethe_errf(err, LETHE_EFORMAT, "cannot re-initialise %s", a->path);
        else
            memcpy(dst->data, src->data, dst->nbytes);
    }
    ts_clear(&fresh);
    return rc;
}

static int64_t passes_of(const Run *r, const char *stream, int64_t b) {
    int64_t n = !strcmp(stream, "retain") ? r->n_retain : !strcmp(stream, "forget") ? r->n_poison : r->n_all;
    return (n + b - 1) / b;
}

/* Run a method's schedule from the original model until its budget (in
 * sample passes) is spent. */
static int run_method(Run *r, const plan_method *pm, const ts_store *orig, ts_store *model, int64_t *budget, const char *label,
                      double *loss, int64_t *steps_out, char *err) {
    const lethe_entry *e[3];
    for (int p = 0; p < pm->nphases; p++)
        if (!(e[p] = run_entry(r, pm->phase[p].entry, err)))
            return LETHE_ENOTFOUND;
    ts_store state = {0};
    int rc = ts_copy(model, orig, err);
    int reinit = (int)const_of(&pm->phase[0], "reinit", 0);
    if (!rc && reinit)
        rc = reinit_layers(r, e[0], reinit, model, err);
    for (int p = 0; !rc && p < pm->nphases; p++) {
        char init[128];
        snprintf(init, sizeof init, "%s.init_state", pm->phase[p].entry);
        rc = run_call_init(r, init, model, &state, err);
    }
    uint32_t salt = METHOD_SALT ^ (uint32_t)fs_fnv1a64(pm->name, strlen(pm->name), 0xcbf29ce484222325ull);
    int64_t b = r->plan->batch, before = r->steps_done = 0;
    char plabel[160];
    switch (pm->schedule) {
    case SCHED_REPEAT: {
        /* at least one step, even when one batch is more than the budget */
        int64_t cost = b * (pm->phase[0].nstreams ? pm->phase[0].nstreams : 1);
        if (*budget < cost)
            *budget = cost;
        if (!rc)
            rc = run_steps(r, e[0], &pm->phase[0], model, orig, &state, INT64_MAX, 0, budget, salt, label, loss, err);
        break;
    }
    case SCHED_MAX_MIN:
        /* SCRUB: max passes over the forget set for the first msteps epochs,
         * then a min pass over the retain set, every epoch, until the budget ends */
        for (uint32_t epoch = 0; !rc && *budget >= b; epoch++) {
            for (int p = epoch < pm->msteps ? 0 : 1; !rc && p < 2 && *budget >= b; p++) {
                const plan_rule *ph = &pm->phase[p];
                snprintf(plabel, sizeof plabel, "%s %s epoch %u", label, p ? "min" : "max", epoch + 1);
                rc = run_steps(r, e[p], ph, model, orig, &state, passes_of(r, ph->streams[0], b), epoch, budget, salt,
                               plabel, loss, err);
            }
        }
        break;
    case SCHED_FISHER:
        /* SSD: one pass of each statistic (costs counted, never cut short), then the apply step */
        for (int p = 0; !rc && p < 3; p++) {
            const plan_rule *ph = &pm->phase[p];
            int64_t n = ph->nstreams ? passes_of(r, ph->streams[0], b) : 1;
            int64_t unlimited = INT64_MAX;
            snprintf(plabel, sizeof plabel, "%s %s", label, ph->rule);
            rc = run_steps(r, e[p], ph, model, orig, &state, n, 0, &unlimited, salt, plabel, loss, err);
            *budget -= (INT64_MAX - unlimited);
        }
        break;
    }
    *steps_out = (int64_t)r->steps_done - before;
    ts_clear(&state);
    return rc;
}

static int unlearn(Run *r, const plan_method *pm, double budget, const ts_store *orig, ts_store *model, Used *u, char *err) {
    memset(u, 0, sizeof *u);
    double t0 = now();
    char label[96];
    snprintf(label, sizeof label, "%s seed %llu", pm->name, (unsigned long long)r->seed);
    int rc;
    double full = (double)r->n_all * (double)r->epochs;   /* the original training's sample passes */
    if (pm->retrain) {
        rc = trained_model(r, "retrain", r->retain, r->n_retain, model, u, err);
        u->steps = (r->n_retain / r->plan->batch) * r->epochs;
        u->samples = u->steps * r->plan->batch;
    } else {
        int64_t budget_left = (int64_t)floor(budget * full);
        if (pm->sisa)   /* exact unlearning: it costs what it costs, whatever the budget (the record says so) */
            rc = sisa_method_run(r, pm, model, u, err);
        else {
            rc = run_method(r, pm, orig, model, &budget_left, label, &u->final_loss, &u->steps, err);
            u->samples = (int64_t)floor(budget * full) - budget_left;
        }
        if (!rc) {
            char path[PATH_MAX + 128], tag[32];
            snprintf(path, sizeof path, "%s/%s_%s.safetensors", r->seed_dir, pm->name, run_budget_tag(budget, tag, sizeof tag));
            rc = save_model(r, model, path, pm->name, err);
        }
    }
    u->budget_used = (double)u->samples / full;
    if (!pm->retrain && !pm->sisa)
        u->seconds = now() - t0;
    u->shift = pm->sisa ? NAN : sqrt(ts_distance2(model, orig));   /* an ensemble has no one parameter vector */
    return rc;
}

int run_method_listed(const char *methods, const char *name) {
    if (!methods)
        return 1;
    size_t n = strlen(name);
    for (const char *p = methods; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n))
            return 1;
        p += len + (e ? 1 : 0);
    }
    return 0;
}

static int run_seed(Run *r, int k, char *err) {
    r->seed = (uint64_t)(r->o->seed_base + k);
    snprintf(r->seed_dir, sizeof r->seed_dir, "%s/seed%llu", r->dir, (unsigned long long)r->seed);
    int rc = fs_mkdir_p(r->seed_dir, 0755, err);
    if (!rc)
        rc = choose_poisons(r, err);
    if (!rc && r->plan->has_attack)
        rc = attack_stage(r, err);
    if (!rc)
        rc = clean_baseline(r, err);
    if (!rc)
        rc = write_poisons(r, err);
    if (rc)
        return rc;
    if (!r->o->quiet) {
        char how[96];   /* an attack's poisons have no Gaussian eps: its name says what they are */
        if (r->plan->has_attack)
            snprintf(how, sizeof how, "by %s", r->plan->attack.name);
        else if (r->plan->has_trigger)
            snprintf(how, sizeof how, "by trigger_flip('%s')", r->plan->trigger);
        else
            snprintf(how, sizeof how, "eps %g", r->plan->poison_eps);
        fprintf(stderr, "lethe: seed %llu: %lld training samples, %lld poisoned (%s), %lld test\n",
                (unsigned long long)r->seed, (long long)r->n_all, (long long)r->n_poison, how, (long long)r->test.n);
    }
    ts_store orig = {0}, model = {0};
    Used u;
    Eval ev;
    rc = original_model(r, &orig, &u, err);
    if (!rc && !record_exists(r, "original", 0)) {
        rc = run_evaluate(r, &orig, &ev, err);
        if (!rc)
            rc = run_write_record(r, "original", 0, &ev, &u, err);
        if (!rc)
            rc = run_write_results(r->dir, err);
        if (!rc)
            fault_point();
    }
    for (int m = 0; !rc && m < r->plan->nmethods; m++) {
        const plan_method *pm = &r->plan->methods[m];
        if (!run_method_listed(r->o->methods, pm->name))
            continue;
        for (int b = 0; !rc && b < (pm->retrain ? 1 : r->plan->nbudgets); b++) {
            double budget = pm->retrain ? -1 : r->plan->budgets[b];
            if (record_exists(r, pm->name, budget))
                continue;
            rc = unlearn(r, pm, budget, &orig, &model, &u, err);
            if (!rc)
                rc = run_evaluate(r, &model, &ev, err);
            if (!rc)
                rc = run_write_record(r, pm->name, budget, &ev, &u, err);
            if (!rc)
                rc = run_write_results(r->dir, err);
            if (!rc)
                fault_point();
        }
    }
    ts_clear(&orig);
    ts_clear(&model);
    return rc;
}

/* A run killed while writing leaves its temporary (".NAME.tmp.PID@HOST.N",
 * see fsutil.c) behind; the target itself is never partial. Clear those of
 * dead writers only: stages of a sweep share the folder and run at once. */
static void remove_stale_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[PATH_MAX * 2];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (fs_temp_is_orphan(de->d_name))
            unlink(path);
        else if (!strncmp(de->d_name, "seed", 4) && de->d_type == DT_DIR)
            remove_stale_temps(path);
    }
    closedir(d);
}

static int run_open(Run *r, const lethe_prog *prog, exp_plan *plan, const run_opts *o, char *err) {
    memset(r, 0, sizeof *r);
    r->prog = prog;
    r->plan = plan;
    r->o = o;
    r->epochs = o->epochs ? o->epochs : plan->epochs;
    snprintf(r->dir, sizeof r->dir, "%s", o->out ? o->out : "out");
    char rdir[PATH_MAX + 16];
    snprintf(rdir, sizeof rdir, "%s/records", r->dir);
    int rc = fs_mkdir_p(rdir, 0755, err);
    if (rc)
        return rc;
    remove_stale_temps(r->dir);
    remove_stale_temps(rdir);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    r->pool = lethe_pool_new(o->threads > 0 ? o->threads : cores > 0 ? (int)cores : 1);
    lethe_ctx_init(&r->ctx, r->pool, 0);
    r->ctx.device = o->device;
    r->ctx.allreduce = lethe_mpi_hook();   /* data-parallel programs average their gradients */
    return load_data(r, err);
}

void run_close(Run *r) {
    free_seed(r);
    free(r->clean_x);
    run_text_trigger_free(r);
    ds_free(&r->train);
    ds_free(&r->test);
    if (r->pool)
        lethe_pool_free(r->pool);
}

int run_experiment(const lethe_prog *prog, exp_plan *plan, const run_opts *o, char *err) {
    Run r;
    int rc = run_open(&r, prog, plan, o, err);
    int seeds = o->seeds ? o->seeds : plan->seeds;
    for (int k = 0; !rc && k < seeds; k++)
        rc = run_seed(&r, k, err);
    if (!rc)
        rc = run_write_results(r.dir, err);
    run_close(&r);
    return rc;
}

int run_open_seed(Run *r, const lethe_prog *prog, exp_plan *plan, const run_opts *o, int seed, char *err) {
    int rc = run_open(r, prog, plan, o, err);
    if (rc)
        return rc;
    r->seed = (uint64_t)seed;
    snprintf(r->seed_dir, sizeof r->seed_dir, "%s/seed%d", r->dir, seed);
    rc = fs_mkdir_p(r->seed_dir, 0755, err);
    if (!rc)
        rc = choose_poisons(r, err);
    if (!rc && plan->has_attack)
        rc = attack_stage(r, err);
    return rc;
}

int run_stage(const lethe_prog *prog, exp_plan *plan, const run_opts *o, const char *stage, const char *method, double budget,
              int seed, const char *model_path, char *err) {
    Run r;
    int rc = run_open_seed(&r, prog, plan, o, seed, err);
    ts_store orig = {0}, model = {0};
    Used u;
    Eval ev;
    if (!rc && !strcmp(stage, "poison")) {
        rc = write_poisons(&r, err);
        if (!rc && o->export_data)
            rc = audit_export_data(&r, o->export_data, err);
        if (!rc)
            printf("%s/%s: %lld poisoned samples\n", r.seed_dir, plan->has_attack ? "poison.safetensors" : "poison.json",
                   (long long)r.n_poison);
    } else if (!rc && !strcmp(stage, "train")) {
        rc = original_model(&r, &orig, &u, err);
        if (!rc)
            printf("%s/original.safetensors\n", r.seed_dir);
    } else if (!rc && !strcmp(stage, "unlearn")) {
        const plan_method *pm = NULL;
        for (int m = 0; m < plan->nmethods; m++)
            if (!strcmp(plan->methods[m].name, method))
                pm = &plan->methods[m];
        if (!pm)
            rc = lethe_errf(err, LETHE_ENOTFOUND, "the experiment has no method '%s'", method);
        /* finished work is not redone, as in `lethe run` (a sweep reruns stages freely) */
        if (!rc && record_exists(&r, pm->name, pm->retrain ? -1 : budget)) {
            char tag[32];
            printf("%s/records/%s_%s_seed%d.json exists: nothing to do (remove it to unlearn again)\n", r.dir,
                   pm->name, run_budget_tag(pm->retrain ? -1 : budget, tag, sizeof tag), seed);
            pm = NULL;
        }
        if (!rc && pm)
            rc = clean_baseline(&r, err);
        if (!rc && pm)
            rc = original_model(&r, &orig, &u, err);
        if (!rc && pm)
            rc = unlearn(&r, pm, pm->retrain ? -1 : budget, &orig, &model, &u, err);
        if (!rc && pm)
            rc = run_evaluate(&r, &model, &ev, err);
        if (!rc && pm)
            rc = run_write_record(&r, pm->name, pm->retrain ? -1 : budget, &ev, &u, err);
        if (!rc && pm)
            rc = run_write_results(r.dir, err);
    } else if (!rc && !strcmp(stage, "eval")) {
        char path[PATH_MAX + 64];
        if (model_path)
            snprintf(path, sizeof path, "%s", model_path);
        else
            snprintf(path, sizeof path, "%s/original.safetensors", r.seed_dir);
        rc = ts_load(&model, path, err);
        if (!rc)
            rc = run_evaluate(&r, &model, &ev, err);
        if (!rc) {
            printf("{\"model\": \"%s\", \"accuracy\": %.6f, \"test_loss\": %.6f", path, ev.accuracy, ev.test_loss);
            if (plan->has_attack && !plan->attack.added)
                printf(", \"target\": %lld, \"adv\": %d, \"target_pred\": %d, \"target_adv_prob\": %.9g",
                       (long long)r.choice.target, r.choice.adv, ev.target_pred, ev.target_adv_prob);
            if (r.n_poison && !plan->has_attack)
                printf(", \"gus\": %.6f, \"gus_se\": %.6f, \"tpr_at_fpr_0.01\": %.6f, \"loss_mia_tpr\": %.6f", ev.gus.mean,
                       ev.gus.se, ev.two_emp.tpr, ev.mia.tpr);
            if (ev.has_lira)
                printf(", \"lira_tpr_at_fpr_0.01\": %.6f, \"lira_auc\": %.6f", ev.lira_01.tpr, ev.lira_auc);
            printf("}\n");
        }
    } else if (!rc)
        rc = lethe_errf(err, LETHE_EARG, "unknown stage '%s'", stage);
    ts_clear(&orig);
    ts_clear(&model);
    run_close(&r);
    return rc;
}
