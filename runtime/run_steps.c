/* run_steps.c: calling a program's entries for the run (run.c): data streams
 * that draw batches from the retain, forget or whole set, rule steps under a
 * budget, and training from fresh weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "mpi.h"
#include "progress.h"
#include "run_internal.h"

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
 * (a set smaller than b repeats within the batch). In a data-parallel run
 * every rank draws the same b and loads its own b / world of them (mpi.h). */
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
    ds_poison p = run_poison_of(r);
    ds_aug a = {.crop_pad = r->plan->crop_pad, .flip = r->plan->flip, .seed = r->seed, .epoch = s->epoch};
    int64_t share = b / lethe_mpi_world();
    int rc = ds_batch(&r->train, pos + share * lethe_mpi_rank(), share, &p, &a, s->x, s->y, err);
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
int run_steps(Run *r, const lethe_entry *e, const plan_rule *rule, ts_store *model, const ts_store *orig,
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
        double l = loss ? lethe_mpi_mean((double)*loss) : NAN;   /* each rank's loss is its share's */
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
int run_init_model(Run *r, ts_store *model, uint64_t seed, char *err) {
    const lethe_entry *e = run_entry(r, "train.init_model", err);
    return e ? call_once(r, e, model, NULL, seed, err) : LETHE_ENOTFOUND;
}

/* Run an init entry (init_model, init_state) into a scratch store and keep
 * only what `into` lacks: state shared by name between a method's phases
 * (SCRUB's momentum, SSD's statistics) is initialised once. */
int run_call_init(Run *r, const char *name, ts_store *model, ts_store *into, char *err) {
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
int run_train_on(Run *r, const int64_t *set, int64_t n, ts_store *model, const char *label, double *loss, char *err) {
    const exp_plan *p = r->plan;
    const lethe_entry *step = run_entry(r, p->train.entry, err);
    if (!step)
        return LETHE_ENOTFOUND;
    int64_t per_epoch = n / p->batch;
    if (per_epoch < 1)
        return lethe_errf(err, LETHE_EARG, "%lld training samples are fewer than one batch of %lld", (long long)n,
                          (long long)p->batch);
    ts_store state = {0};
    ts_clear(model);
    int rc = run_init_model(r, model, r->seed, err);
    if (!rc)
        rc = run_pretrained(r, model, err);
    if (!rc)
        rc = run_call_init(r, "train.init_state", model, &state, err);
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

