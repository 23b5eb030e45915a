/* hypotheses_features.c: the feature stage of `lethe hypotheses`: a trained
 * network's penultimate features as the rows of the hypotheses' linear
 * settings (hypotheses.h; graphs/experiments/hypotheses_fmnist.lth).
 *
 * The runner knows roles here too: the file's experiment names the data, the
 * model and its training, the export `features` maps a batch of inputs to
 * their features. The network comes from the run's own train stage (so data
 * loading, normalisation, seeding, progress, the atomic checkpoint and its
 * reuse are those of `lethe train`) or from a checkpoint the user names.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hypotheses.h"
#include "run_internal.h"

/* The features of the training samples, row by row (a run_take_fn). */
static void take_features(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows) {
    hyp_features *f = user;
    memcpy(f->x + start * f->d, out, sizeof(float) * (size_t)(rows * f->d));
    memcpy(f->y + start, y, sizeof(int32_t) * (size_t)rows);
}

/* Each feature to mean 0 and standard deviation 1 over the rows (float64
 * sums); a feature constant over them (a unit that never fires) becomes 0. */
static void standardise(hyp_features *f) {
    for (int64_t j = 0; j < f->d; j++) {
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < f->n; i++)
            sum += f->x[i * f->d + j];
        const double mean = sum / (double)f->n;
        for (int64_t i = 0; i < f->n; i++) {
            double v = f->x[i * f->d + j] - mean;
            sq += v * v;
        }
        const double sd = sqrt(sq / (double)f->n);
        for (int64_t i = 0; i < f->n; i++)
            f->x[i * f->d + j] = sd > 1e-12 ? (float)((f->x[i * f->d + j] - mean) / sd) : 0.0f;
    }
}

/* The export `features`: a fn entry of x [eval_batch, C, H, W] to out
 * [eval_batch, D] (run_eval_over fills and reads whole batches of those). */
static int features_entry(const lethe_program *p, const exp_plan *plan, int64_t *d, char *err) {
    const lethe_entry *e = lethe_entry_find(p, "features");
    const lethe_arg *x = NULL, *out = NULL;
    for (int i = 0; e && i < e->nargs; i++) {
        if (!strcmp(e->args[i].name, "x"))
            x = &e->args[i];
        if (!strcmp(e->args[i].name, "out"))
            out = &e->args[i];
    }
    if (!e)
        return lethe_errf(err, LETHE_ENOTFOUND, "experiment %s: the program exports no `features` (the model's penultimate "
                          "features, see graphs/experiments/hypotheses_fmnist.lth)", plan->name);
    if (!x || !out || x->rank != 4 || out->rank != 2 || x->dtype != LETHE_F32 || out->dtype != LETHE_F32 ||
        x->shape[0] != plan->eval_batch || x->shape[1] != plan->c || x->shape[2] != plan->h || x->shape[3] != plan->w ||
        out->shape[0] != plan->eval_batch)
        return lethe_errf(err, LETHE_EARG, "export features must map f32 x [%lld, %d, %d, %d] (the eval batch and the data's "
                          "shape) to f32 features [%lld, D]", (long long)plan->eval_batch, plan->c, plan->h, plan->w,
                          (long long)plan->eval_batch);
    *d = out->shape[1];
    return LETHE_OK;
}

/* err becomes "<what><name>: <err>" (which checkpoint a failure is about). */
static void prefix_error(char *err, int rc, const char *what, const char *name) {
    char why[LETHE_ERR_LEN];
    snprintf(why, sizeof why, "%s", err);
    lethe_errf(err, rc, "%s%s: %s", what, name, why);
}

void hyp_features_free(hyp_features *f) {
    free(f->x), free(f->y);
    f->x = NULL, f->y = NULL;
}

int hyp_features_compute(const lethe_prog *prog, const hyp_opts *o, hyp_features *f, char *err) {
    memset(f, 0, sizeof *f);
    exp_plan plan;
    int rc = plan_parse(prog->p->experiment, &plan, err);
    if (rc)
        return rc;
    if (o->data_seed > INT_MAX) {
        plan_free(&plan);
        return lethe_errf(err, LETHE_EARG, "--data-seed %llu: the network's seed must be below 2^31",
                          (unsigned long long)o->data_seed);
    }
    const int seed = (int)o->data_seed;
    run_opts ro = {.out = o->out, .threads = o->threads, .quiet = o->quiet, .data_dir = o->data_dir};
    snprintf(f->experiment, sizeof f->experiment, "%s", plan.name);
    if (!(rc = features_entry(prog->p, &plan, &f->d, err)) && !o->features_from) {
        if (!o->quiet)
            fprintf(stderr, "lethe hypotheses: the network of experiment %s (its train stage, seed %d)\n", plan.name, seed);
        rc = run_stage(prog, &plan, &ro, "train", NULL, 0, seed, NULL, err);
    }
    if (!rc && o->features_from)
        snprintf(f->checkpoint, sizeof f->checkpoint, "%s", o->features_from);
    else if (!rc && snprintf(f->checkpoint, sizeof f->checkpoint, "%s/seed%d/original.safetensors", o->out, seed) >=
                        (int)sizeof f->checkpoint)
        rc = lethe_errf(err, LETHE_EARG, "the output folder's name is too long");
    ts_store model = {0};
    if (!rc && (rc = ts_load(&model, f->checkpoint, err)))
        prefix_error(err, rc, "the network's checkpoint", "");
    Run r;
    int opened = 0;
    if (!rc) {
        opened = 1;
        rc = run_open_seed(&r, prog, &plan, &ro, seed, err);
    }
    int64_t *pos = NULL;
    if (!rc) {
        f->n = r.train.n;
        f->classes = r.train.num_classes;
        f->x = malloc(sizeof(float) * (size_t)(f->n * f->d));
        f->y = malloc(sizeof(int32_t) * (size_t)f->n);
        pos = malloc(sizeof(int64_t) * (size_t)(f->n > r.test.n ? f->n : r.test.n));
        if (!f->x || !f->y || !pos)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory for %lld x %lld features", (long long)f->n, (long long)f->d);
    }
    for (int64_t i = 0; !rc && i < f->n; i++)
        pos[i] = i;
    if (!rc && !o->quiet)
        fprintf(stderr, "lethe hypotheses: %lld features of %lld training samples from %s\n", (long long)f->d,
                (long long)f->n, f->checkpoint);
    if (!rc && (rc = run_eval_over(&r, "features", &model, &r.train, pos, f->n, 0, take_features, f, err)))
        prefix_error(err, rc, "the features of the network ", f->checkpoint);
    for (int64_t i = 0; !rc && i < r.test.n; i++)
        pos[i] = i;
    if (!rc)
        rc = run_accuracy(&r, &model, &r.test, pos, r.test.n, &f->test_accuracy, err);
    if (!rc) {
        standardise(f);
        if (!o->quiet)
            fprintf(stderr, "lethe hypotheses: the network's test accuracy %.4f (%lld samples)\n", f->test_accuracy,
                    (long long)r.test.n);
    }
    free(pos);
    ts_clear(&model);
    if (opened) {
        /* opening the run made OUT/records and OUT/seed<K>; what the feature
         * stage left empty goes (rmdir keeps a folder with files) */
        char dir[PATH_MAX + 16];
        run_close(&r);
        snprintf(dir, sizeof dir, "%s/records", r.dir);
        rmdir(dir);
        rmdir(r.seed_dir);
    }
    plan_free(&plan);
    if (rc)
        hyp_features_free(f);
    return rc;
}

int hyp_use_features(hyp_setting *s, const hyp_features *f, uint64_t seed, char *err) {
    if (s->d != f->d || s->n > f->n)
        return lethe_errf(err, LETHE_EARG, "setting '%s' fits %lld rows of %lld features, but the network gives %lld of %lld "
                          "(the export features and the experiment's training samples)", s->name, (long long)s->n,
                          (long long)s->d, (long long)f->n, (long long)f->d);
    if (!s->regression && s->outputs < f->classes)
        return lethe_errf(err, LETHE_EARG, "setting '%s' has %lld outputs for the data's %d classes", s->name,
                          (long long)s->outputs, f->classes);
    memcpy(s->x, f->x, sizeof(float) * (size_t)(s->n * s->d));
    if (s->regression)
        hyp_regression_labels(s, seed, s->d);
    else
        memcpy(s->y_class, f->y, sizeof(int32_t) * (size_t)s->n);
    return LETHE_OK;
}
