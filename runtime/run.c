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
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "fsutil.h"
#include "json.h"
#include "metrics.h"
#include "poison.h"
#include "progress.h"
#include "run.h"
#include "threadpool.h"

#define RUN_ALPHA 0.01   /* the operating point: TPR at FPR 1% */
#define POISON_SALT 0x9015011u
#define METHOD_SALT 0x3e7d0d5u
#define REINIT_SALT 0x5e1d1417u
#define SURROGATE_SALT 0x5a2202u

typedef struct Run {
    const lethe_prog *prog;
    const exp_plan *plan;
    const run_opts *o;
    lethe_pool *pool;
    lethe_ctx ctx;
    lethe_dataset train, test;
    char data_hash[65];
    int synthetic_stand_in;
    ds_norm norm;               /* the training set's normalisation (an attack's box and pixel scale) */
    int image;                  /* values were pixels in [0, 1] before normalising */
    float *clean_x;             /* an attack edits or extends train: the clean values, restored per seed */
    int64_t clean_n;
    attack_choice choice;       /* an attack's target, class and poisons for this seed */
    double clean_accuracy;      /* an attack that adds samples: the clean model's test accuracy this seed */
    int64_t epochs;
    /* per seed */
    uint64_t seed;
    int64_t *all, *poison, *retain;
    int64_t n_all, n_poison, n_retain;
    uint8_t *mask;
    int64_t mask_n;
    const int64_t *training;    /* while training: every data stream draws from this set */
    uint64_t steps_done;        /* steps of this model's stage: the RNG counter of the next call */
    int64_t n_training;
    char dir[PATH_MAX], seed_dir[PATH_MAX + 32];
} Run;

/* The runtime scalar the runtime fills with a rule's step count (run_steps). */
#define TOTAL_STEPS_ARG "total_steps"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const lethe_entry *entry(const Run *r, const char *name, char *err) {
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
    r->all = r->poison = r->retain = NULL;
    r->mask = NULL;
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
    jw_kv_int(&w, "seed", (int64_t)r->seed);
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

static ds_poison poison_of(const Run *r) {
    ds_poison p = {.eps = r->n_poison ? r->plan->poison_eps : 0, .seed = r->seed, .mask = r->mask, .mask_n = r->mask_n};
    return p;
}

/* ---------------------------------------------------------------------------
 * calling entries */

static int set_args(lethe_frame *f, const plan_rule *rule, char *err) {
    for (int i = 0; i < rule->nargs; i++)
        if (frame_set_scalar(f, rule->arg_name[i], rule->arg_value[i]) == LETHE_EARG)
            return lethe_errf(err, LETHE_EARG, "'%s' of %s is not a runtime hyperparameter", rule->arg_name[i], rule->rule);
    return LETHE_OK;
}

/* Where a rule's data parameter draws from. */
typedef struct Stream {
    const int64_t *set;
    int64_t n, cursor;
    uint32_t epoch;
    int64_t *perm;
    float *x;
    int32_t *y, *own_y;
} Stream;

static int stream_open(Run *r, Stream *s, const char *name, const lethe_frame *f, char *err) {
    memset(s, 0, sizeof *s);
    if (r->training) {
        s->set = r->training;
        s->n = r->n_training;
    } else if (!strcmp(name, "retain")) {
        s->set = r->retain;
        s->n = r->n_retain;
    } else if (!strcmp(name, "forget")) {
        s->set = r->poison;
        s->n = r->n_poison;
    } else {
        s->set = r->all;
        s->n = r->n_all;
    }
    if (s->n == 0)
        return lethe_errf(err, LETHE_EARG, "the %s set is empty (is the poison fraction 0?)", name);
    char xn[96], yn[96];
    snprintf(xn, sizeof xn, "%s.x", name);
    snprintf(yn, sizeof yn, "%s.y", name);
    s->x = frame_arg(f, xn);
    s->y = frame_arg(f, yn);
    if (!s->x)
        return lethe_errf(err, LETHE_EFORMAT, "entry %s has no argument %s", f->e->name, xn);
    s->perm = malloc(sizeof(int64_t) * (size_t)s->n);
    if (!s->y)   /* a rule that never reads the labels (SCRUB's max pass) */
        s->y = s->own_y = malloc(sizeof(int32_t) * (size_t)r->plan->batch);
    if (!s->perm || !s->y)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    s->cursor = s->n;   /* shuffle on first use */
    s->epoch = (uint32_t)-1;
    return LETHE_OK;
}

/* The next b samples of the stream, reshuffled at every pass over its set
 * (a set smaller than b repeats within the batch). */
static int stream_next(Run *r, Stream *s, int64_t b, uint32_t salt, char *err) {
    int64_t idx[4096];
    int64_t *pos = b <= 4096 ? idx : malloc(sizeof(int64_t) * (size_t)b);
    for (int64_t i = 0; i < b; i++) {
        if (s->cursor == s->n) {
            s->epoch++;
            memcpy(s->perm, s->set, sizeof(int64_t) * (size_t)s->n);
            ds_shuffle(s->perm, s->n, r->seed ^ salt, DS_STREAM_SHUFFLE, s->epoch);
            s->cursor = 0;
        }
        pos[i] = s->perm[s->cursor++];
    }
    ds_poison p = poison_of(r);
    ds_aug a = {.crop_pad = r->plan->crop_pad, .flip = r->plan->flip, .seed = r->seed, .epoch = s->epoch};
    int rc = ds_batch(&r->train, pos, b, &p, &a, s->x, s->y, err);
    if (pos != idx)
        free(pos);
    return rc;
}

/* The models a rule's frame reads: frozen ones (a teacher) are the original
 * model, the others the model being trained. */
static int frame_models_of(const plan_rule *rule, ts_store *model, const ts_store *orig, frame_models *fm) {
    int n = 0;
    for (int i = 0; i < rule->nmodels; i++) {
        fm[n].binding = rule->model_binding[i];
        fm[n++].store = rule->model_original[i] && orig ? (ts_store *)orig : model;
    }
    if (!n) {
        fm[0].binding = NULL;
        fm[0].store = model;
        n = 1;
    }
    return n;
}

/* Run up to `steps` calls of a rule entry (fewer if the budget runs out: a
 * step costs one batch per data stream; cost-free steps are not limited).
 * Streams start at epoch `epoch0` so that consecutive passes reshuffle. */
static int run_steps(Run *r, const lethe_entry *e, const plan_rule *rule, ts_store *model, const ts_store *orig,
                     ts_store *state, int64_t steps, uint32_t epoch0, int64_t *budget, uint32_t salt, const char *label,
                     double *last_loss, char *err) {
    frame_models fm[PLAN_MAX_STREAMS];
    int nfm = frame_models_of(rule, model, orig, fm);
    lethe_frame *f = frame_new(e, fm, nfm, state, err);
    if (!f)
        return LETHE_EARG;
    int rc = set_args(f, rule, err);
    Stream streams[PLAN_MAX_STREAMS];
    int ns = rule->nstreams;
    for (int i = 0; !rc && i < ns; i++) {
        rc = stream_open(r, &streams[i], rule->streams[i], f, err);
        streams[i].epoch = epoch0 - 1;
    }
    int64_t cost = r->plan->batch * ns;
    if (budget && cost && steps > *budget / cost)
        steps = *budget / cost;
    /* A rule with the runtime scalar total_steps (a schedule over its run,
     * such as l1-sparse's decaying penalty) is told how many steps this call
     * takes, unless the experiment gives the number itself. */
    int planned = 0;
    for (int i = 0; i < rule->nargs; i++)
        planned |= !strcmp(rule->arg_name[i], TOTAL_STEPS_ARG);
    if (!rc && !planned && frame_set_scalar(f, TOTAL_STEPS_ARG, (double)steps) == LETHE_EARG)
        rc = lethe_errf(err, LETHE_EARG, "'%s' of %s must be a runtime scalar", TOTAL_STEPS_ARG, rule->rule);
    float *loss = frame_arg(f, "loss");
    lethe_progress pr;
    progress_init(&pr, label, steps, r->o->quiet);
    r->ctx.seed = r->seed ^ salt;
    for (int64_t s = 0; !rc && s < steps; s++) {
        for (int i = 0; !rc && i < ns; i++)
            rc = stream_next(r, &streams[i], r->plan->batch, salt, err);
        r->ctx.counter = r->steps_done++;
        if (!rc)
            rc = frame_call(f, &r->ctx, err);
        double l = loss ? (double)*loss : NAN;
        if (loss && !isfinite(l) && !rc)
            fprintf(stderr, "lethe: warning: %s: the loss is %g at step %lld\n", label, l, (long long)s);
        *last_loss = l;
        if (budget)
            *budget -= cost;
        progress_update(&pr, s + 1, l);
    }
    progress_finish(&pr);
    for (int i = 0; i < ns; i++) {
        free(streams[i].perm);
        free(streams[i].own_y);
    }
    if (!rc)
        rc = lethe_ctx_sync(&r->ctx, err);
    frame_free(f);
    return rc;
}

/* One call of an entry that needs no data (init_model, init_state). */
static int call_once(Run *r, const lethe_entry *e, ts_store *model, ts_store *state, uint64_t seed, char *err) {
    frame_models fm = {NULL, model};
    lethe_frame *f = frame_new(e, &fm, 1, state, err);
    if (!f)
        return LETHE_EARG;
    r->ctx.seed = seed;
    r->ctx.counter = 0;
    int rc = frame_call(f, &r->ctx, err);
    if (!rc)
        rc = lethe_ctx_sync(&r->ctx, err);
    frame_free(f);
    return rc;
}

/* Fresh weights from the declared initializers, drawn from `seed`. */
static int init_model(Run *r, ts_store *model, uint64_t seed, char *err) {
    const lethe_entry *e = entry(r, "train.init_model", err);
    return e ? call_once(r, e, model, NULL, seed, err) : LETHE_ENOTFOUND;
}

/* Run an init entry (init_model, init_state) into a scratch store and keep
 * only what `into` lacks: state shared by name between a method's phases
 * (SCRUB's momentum, SSD's statistics) is initialised once. */
static int call_init(Run *r, const char *name, ts_store *model, ts_store *into, char *err) {
    const lethe_entry *e = lethe_entry_find(r->prog->p, name);
    if (!e)
        return LETHE_OK;   /* a rule without state has no init_state */
    ts_store fresh = {0};
    int rc = call_once(r, e, model, &fresh, r->seed, err);
    for (int i = 0; !rc && into && i < fresh.n; i++) {
        const ts_tensor *t = &fresh.t[i];
        if (ts_get(into, t->name))
            continue;
        ts_tensor *d = ts_put(into, t->name, t->dtype, t->rank, t->shape, err);
        if (!d)
            rc = LETHE_ENOMEM;
        else
            memcpy(d->data, t->data, t->nbytes);
    }
    ts_clear(&fresh);
    return rc;
}

/* Train the plan's recipe from fresh weights on the samples `set`. */
static int train_on(Run *r, const int64_t *set, int64_t n, ts_store *model, const char *label, double *loss, char *err) {
    const exp_plan *p = r->plan;
    const lethe_entry *step = entry(r, p->train.entry, err);
    if (!step)
        return LETHE_ENOTFOUND;
    int64_t per_epoch = n / p->batch;
    if (per_epoch < 1)
        return lethe_errf(err, LETHE_EARG, "%lld training samples are fewer than one batch of %lld", (long long)n,
                          (long long)p->batch);
    ts_store state = {0};
    ts_clear(model);
    int rc = init_model(r, model, r->seed, err);
    if (!rc)
        rc = call_init(r, "train.init_state", model, &state, err);
    /* epochs of n / batch steps over `set` (the last incomplete batch of each
     * pass is dropped, as drop_last in PyTorch) */
    r->training = set;
    r->n_training = n;
    r->steps_done = 0;
    if (!rc)
        rc = run_steps(r, step, &p->train, model, NULL, &state, per_epoch * r->epochs, 0, NULL, 0, label, loss, err);
    r->training = NULL;
    ts_clear(&state);
    return rc;
}

/* ---------------------------------------------------------------------------
 * evaluation */

typedef struct Eval {
    double accuracy, test_loss;
    mt_summary gus, gus_null;
    mt_tpr two_emp, two_norm, neg_emp, neg_norm, mia;
    double auc;
    int nroc;
    double roc_fpr[64], roc_tpr[64];   /* against the empirical null (fresh noise) */
    double roc_tpr_normal[64];         /* against N(0, 1): threshold Phi^-1(1 - fpr) */
    int target_pred;                   /* an attack's target: the predicted class */
    double target_adv_prob;            /* and the softmax probability of the adversarial class */
} Eval;

/* Run fn entry `name` over samples pos[0..n) of `ds` in batches of the
 * eval batch size (the last one padded), calling `take` with each batch's
 * output and how many rows are real. */
typedef void (*take_fn)(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows);

static int eval_over(Run *r, const char *name, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                     int noisy, take_fn take, void *user, char *err) {
    const lethe_entry *e = entry(r, name, err);
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
    ds_poison p = poison_of(r);
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
    double *loss;
} Acc;

static void take_logits(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    Acc *a = user;
    a->correct += mt_correct(out, y, rows, a->k);
}

static void take_losses(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
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
    int rc = eval_over(r, "eval.logits", model, &r->test, &r->choice.target, 1, 0, take_target, &t, err);
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

static int evaluate(Run *r, ts_store *model, Eval *ev, char *err) {
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
    Acc acc = {.k = r->plan->classes};
    int rc = eval_over(r, "eval.logits", model, &r->test, tpos, nt, 0, take_logits, &acc, err);
    if (!rc)
        rc = eval_over(r, "eval.loss_each", model, &r->test, tpos, nt, 0, take_losses, test_loss, err);
    ev->accuracy = (double)acc.correct / (double)nt;
    mt_summary ts = mt_summarize(test_loss, nt);
    ev->test_loss = ts.mean;
    int64_t np = r->n_poison;
    if (!rc && r->plan->has_attack && !r->plan->attack.added)
        rc = evaluate_target(r, model, ev, err);
    if (!rc && np > 0 && !r->plan->has_attack) {
        double *forget_loss = malloc(sizeof(double) * (size_t)np);
        Scores s = {r, malloc(sizeof(double) * (size_t)np), malloc(sizeof(double) * (size_t)np),
                    malloc(sizeof(float) * (size_t)r->train.d)};
        if (!forget_loss || !s.in || !s.null || !s.xi)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
        /* membership by loss: the forget set as it was trained on (with its noise) */
        if (!rc)
            rc = eval_over(r, "eval.loss_each", model, &r->train, r->poison, np, 1, take_losses, forget_loss, err);
        if (!rc)
            rc = mt_loss_mia(forget_loss, np, test_loss, nt, RUN_ALPHA, &ev->mia, err);
        /* the Gaussian score: gradients at the clean inputs */
        if (!rc)
            rc = eval_over(r, "eval.input_grad", model, &r->train, r->poison, np, 0, take_grads, &s, err);
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
                for (int k = 0; k < 41; k++) {
                    double target = pow(10, -3 + 3.0 * k / 40);
                    double best = 0, at = 0;
                    for (int64_t j = 0; j < npts; j++)
                        if (pts[j].fpr <= target + 1e-12 && pts[j].tpr >= best) {
                            best = pts[j].tpr;
                            at = pts[j].fpr;
                        }
                    double t = mt_normal_quantile(1 - target);
                    int64_t above = 0;
                    for (int64_t j = 0; j < np; j++)
                        above += pos[j] > t;
                    ev->roc_fpr[ev->nroc] = target;
                    ev->roc_tpr_normal[ev->nroc] = (double)above / (double)np;
                    ev->roc_tpr[ev->nroc++] = best;
                    (void)at;
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
    }
    free(tpos);
    free(test_loss);
    return rc;
}

/* ---------------------------------------------------------------------------
 * records */

static const char *budget_tag(double b, char *buf, size_t n) {
    if (b < 0)
        snprintf(buf, n, "full");
    else
        snprintf(buf, n, "b%g", 100 * b);
    return buf;
}

typedef struct Used {
    int64_t steps, samples;
    double budget_used, seconds, final_loss, shift;
} Used;

static void put_tpr(jw *w, const char *key, const mt_tpr *t) {
    jw_key(w, key);
    jw_obj_begin(w);
    jw_kv_num(w, "tpr", t->tpr);
    jw_kv_num(w, "fpr", t->fpr);
    jw_kv_num(w, "threshold", t->threshold);
    jw_obj_end(w);
}

static int write_record(Run *r, const char *method, double budget, const Eval *ev, const Used *u, char *err) {
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
        jw_key(&w, "tpr_at_fpr");
        jw_obj_begin(&w);
        put_tpr(&w, "two_sided_empirical", &ev->two_emp);
        put_tpr(&w, "two_sided_normal", &ev->two_norm);
        put_tpr(&w, "negative_empirical", &ev->neg_emp);
        put_tpr(&w, "negative_normal", &ev->neg_norm);
        jw_obj_end(&w);
        put_tpr(&w, "loss_mia", &ev->mia);
        jw_kv_num(&w, "auc", ev->auc);
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
    jw_key(&w, "run");
    jw_obj_begin(&w);
    jw_kv_str(&w, "data_hash", r->data_hash);
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
    snprintf(path, sizeof path, "%s/records/%s_%s_seed%llu.json", r->dir, method, budget_tag(budget, tag, sizeof tag),
             (unsigned long long)r->seed);
    int rc = text ? fs_write_atomic(path, text, len, err) : lethe_errf(err, LETHE_EFORMAT, "record is not valid JSON");
    jw_free(&w);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* results.jsonl: every record, one per line, in name order. */
static int write_results(const char *dir, char *err) {
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
    snprintf(path, sizeof path, "%s/records/%s_%s_seed%llu.json", r->dir, method, budget_tag(budget, tag, sizeof tag),
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
    int rc = train_on(r, set, n, model, label, &u->final_loss, err);
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
    const lethe_entry *e = entry(r, rule->entry, err);
    if (!e)
        return LETHE_ENOTFOUND;
    ts_store state = {0};
    char init[128], label[128];
    snprintf(init, sizeof init, "%s.init_state", rule->entry);
    snprintf(label, sizeof label, "%s seed %llu", rule->rule, (unsigned long long)r->seed);
    int rc = call_init(r, init, model, &state, err);
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
    attack_job j = {.prog = r->prog, .attack = &r->plan->attack, .ctx = &r->ctx, .train = &r->train, .test = &r->test,
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
        rc = evaluate(r, &clean, &ev, err);
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
    int rc = init_model(r, &fresh, mode == 2 ? r->seed : r->seed ^ REINIT_SALT, err);
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
        if (!(e[p] = entry(r, pm->phase[p].entry, err)))
            return LETHE_ENOTFOUND;
    ts_store state = {0};
    int rc = ts_copy(model, orig, err);
    int reinit = (int)const_of(&pm->phase[0], "reinit", 0);
    if (!rc && reinit)
        rc = reinit_layers(r, e[0], reinit, model, err);
    for (int p = 0; !rc && p < pm->nphases; p++) {
        char init[128];
        snprintf(init, sizeof init, "%s.init_state", pm->phase[p].entry);
        rc = call_init(r, init, model, &state, err);
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
        rc = run_method(r, pm, orig, model, &budget_left, label, &u->final_loss, &u->steps, err);
        u->samples = (int64_t)floor(budget * full) - budget_left;
        if (!rc) {
            char path[PATH_MAX + 128], tag[32];
            snprintf(path, sizeof path, "%s/%s_%s.safetensors", r->seed_dir, pm->name, budget_tag(budget, tag, sizeof tag));
            rc = save_model(r, model, path, pm->name, err);
        }
    }
    u->budget_used = (double)u->samples / full;
    if (!pm->retrain)
        u->seconds = now() - t0;
    u->shift = sqrt(ts_distance2(model, orig));
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
        rc = evaluate(r, &orig, &ev, err);
        if (!rc)
            rc = write_record(r, "original", 0, &ev, &u, err);
        if (!rc)
            rc = write_results(r->dir, err);
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
                rc = evaluate(r, &model, &ev, err);
            if (!rc)
                rc = write_record(r, pm->name, budget, &ev, &u, err);
            if (!rc)
                rc = write_results(r->dir, err);
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
    return load_data(r, err);
}

static void run_close(Run *r) {
    free_seed(r);
    free(r->clean_x);
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
        rc = write_results(r.dir, err);
    run_close(&r);
    return rc;
}

int run_stage(const lethe_prog *prog, exp_plan *plan, const run_opts *o, const char *stage, const char *method, double budget,
              int seed, const char *model_path, char *err) {
    Run r;
    int rc = run_open(&r, prog, plan, o, err);
    if (rc) {
        run_close(&r);
        return rc;
    }
    r.seed = (uint64_t)seed;
    snprintf(r.seed_dir, sizeof r.seed_dir, "%s/seed%d", r.dir, seed);
    rc = fs_mkdir_p(r.seed_dir, 0755, err);
    if (!rc)
        rc = choose_poisons(&r, err);
    if (!rc && plan->has_attack)
        rc = attack_stage(&r, err);
    ts_store orig = {0}, model = {0};
    Used u;
    Eval ev;
    if (!rc && !strcmp(stage, "poison")) {
        rc = write_poisons(&r, err);
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
                   pm->name, budget_tag(pm->retrain ? -1 : budget, tag, sizeof tag), seed);
            pm = NULL;
        }
        if (!rc && pm)
            rc = clean_baseline(&r, err);
        if (!rc && pm)
            rc = original_model(&r, &orig, &u, err);
        if (!rc && pm)
            rc = unlearn(&r, pm, pm->retrain ? -1 : budget, &orig, &model, &u, err);
        if (!rc && pm)
            rc = evaluate(&r, &model, &ev, err);
        if (!rc && pm)
            rc = write_record(&r, pm->name, pm->retrain ? -1 : budget, &ev, &u, err);
        if (!rc && pm)
            rc = write_results(r.dir, err);
    } else if (!rc && !strcmp(stage, "eval")) {
        char path[PATH_MAX + 64];
        if (model_path)
            snprintf(path, sizeof path, "%s", model_path);
        else
            snprintf(path, sizeof path, "%s/original.safetensors", r.seed_dir);
        rc = ts_load(&model, path, err);
        if (!rc)
            rc = evaluate(&r, &model, &ev, err);
        if (!rc) {
            printf("{\"model\": \"%s\", \"accuracy\": %.6f, \"test_loss\": %.6f", path, ev.accuracy, ev.test_loss);
            if (plan->has_attack && !plan->attack.added)
                printf(", \"target\": %lld, \"adv\": %d, \"target_pred\": %d, \"target_adv_prob\": %.9g",
                       (long long)r.choice.target, r.choice.adv, ev.target_pred, ev.target_adv_prob);
            if (r.n_poison && !plan->has_attack)
                printf(", \"gus\": %.6f, \"gus_se\": %.6f, \"tpr_at_fpr_0.01\": %.6f, \"loss_mia_tpr\": %.6f", ev.gus.mean,
                       ev.gus.se, ev.two_emp.tpr, ev.mia.tpr);
            printf("}\n");
        }
    } else if (!rc)
        rc = lethe_errf(err, LETHE_EARG, "unknown stage '%s'", stage);
    ts_clear(&orig);
    ts_clear(&model);
    run_close(&r);
    return rc;
}
