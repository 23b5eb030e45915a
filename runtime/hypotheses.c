/* hypotheses.c: `lethe hypotheses`, the runner of the paper's hypotheses H1
 * and H2 (hypotheses.h says what is measured; the models, losses, target and
 * poisons are .lth in graphs/experiments/hypotheses.lth).
 *
 * Every quantity is a distance or an angle between minimisers, so every fit
 * must converge: the .lth's optimiser from its own lr, restarted from rest
 * whenever the loss rises and with lr halved when a step from rest overshoots
 * (a step size that suits the clean rows can overshoot on poisons far from
 * them), until the gradient norm is below the tolerance.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "hypotheses.h"
#include "json.h"
#include "philox.h"
#include "threadpool.h"

void hyp_opts_default(hyp_opts *o) {
    memset(o, 0, sizeof *o);
    o->seeds = 5;
    o->fit_iters = 20000;
    o->fit_tol = 1e-5;
    o->cancel_steps = 500;
    o->target_steps = 20;
}

/* ---- the setting and its data ------------------------------------------------------ */

static const lethe_arg *arg_of(const lethe_entry *e, const char *name) {
    for (int i = 0; e && i < e->nargs; i++)
        if (!strcmp(e->args[i].name, name))
            return &e->args[i];
    return NULL;
}

static const lethe_entry *entry_of(const lethe_program *p, const char *setting, const char *role, char *err) {
    char name[160];
    snprintf(name, sizeof name, "%s_%s", setting, role);
    const lethe_entry *e = lethe_entry_find(p, name);
    if (!e)
        lethe_errf(err, LETHE_ENOTFOUND, "setting '%s' has no export %s", setting, name);
    return e;
}

/* The argument `name` of e with rank `rank`, or an error naming the role. */
static const lethe_arg *need_arg(const lethe_entry *e, const char *name, int rank, char *err) {
    const lethe_arg *a = arg_of(e, name);
    if (!a || a->rank != rank) {
        lethe_errf(err, LETHE_EARG, "export %s needs %s of rank %d (see graphs/experiments/hypotheses.lth)", e->name,
                   name, rank);
        return NULL;
    }
    return a;
}

int hyp_setting_open(const lethe_program *p, const char *name, hyp_setting *s, char *err) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    char init[200];
    if (!(s->fit = entry_of(p, name, "fit", err)) || !(s->target = entry_of(p, name, "target", err)) ||
        !(s->cancel = entry_of(p, name, "cancel", err)))
        return LETHE_ENOTFOUND;
    snprintf(init, sizeof init, "%s.init_model", s->fit->name);
    s->fit_init = lethe_entry_find(p, init);
    snprintf(init, sizeof init, "%s.init_state", s->target->name);
    s->target_state = lethe_entry_find(p, init);
    snprintf(init, sizeof init, "%s.init_state", s->cancel->name);
    s->cancel_state = lethe_entry_find(p, init);
    if (!s->fit_init || !s->target_state || !s->cancel_state)
        return lethe_errf(err, LETHE_EARG, "setting '%s': %s must be a rule with parameters, %s a rule with state and %s "
                          "an objective with state", name, s->fit->name, s->target->name, s->cancel->name);
    const lethe_arg *fx = need_arg(s->fit, "batch.x", 2, err), *fy = need_arg(s->fit, "batch.y", 1, err),
                    *cx = need_arg(s->cancel_state, "clean.x", 2, err), *xp = need_arg(s->cancel, "xp", 2, err),
                    *tx = need_arg(s->target, "batch.x", 2, err), *mw = need_arg(s->fit, "m.w", 2, err);
    if (!fx || !fy || !cx || !xp || !tx || !mw || !need_arg(s->fit, "batch.w", 1, err) ||
        !need_arg(s->fit, "loss", 0, err) || !need_arg(s->fit, "grad_norm", 0, err) ||
        !need_arg(s->cancel, "added.w", 1, err) || !need_arg(s->cancel, "added.y", 1, err) ||
        !need_arg(s->cancel, "loss", 0, err))
        return LETHE_EARG;
    s->n = cx->shape[0];
    s->p = xp->shape[0];
    s->d = xp->shape[1];
    s->outputs = mw->shape[0];
    s->regression = fy->dtype == LETHE_F32;
    if (fx->shape[0] != s->n + s->p || fx->shape[1] != s->d || cx->shape[1] != s->d || tx->shape[0] != s->n ||
        tx->shape[1] != s->d || fx->dtype != LETHE_F32 || (fy->dtype != LETHE_F32 && fy->dtype != LETHE_I32))
        return lethe_errf(err, LETHE_EARG, "setting '%s': %s's batch must hold the %lld clean rows of %s then its %lld "
                          "poisons, f32 features of width %lld, and f32 or i32 labels", name, s->fit->name,
                          (long long)s->n, s->cancel->name, (long long)s->p, (long long)s->d);
    if (s->p < 1 || s->n < 4 * s->p)
        return lethe_errf(err, LETHE_EARG, "setting '%s': %lld poisons for %lld clean rows (the random subsets need at "
                          "least 4 clean rows per poison)", name, (long long)s->p, (long long)s->n);
    int64_t rows = s->n + s->p;
    s->x = calloc((size_t)(rows * s->d), sizeof(float));
    if (s->regression)
        s->y_real = calloc((size_t)rows, sizeof(float));
    else
        s->y_class = calloc((size_t)rows, sizeof(int32_t));
    if (!s->x || (!s->y_real && !s->y_class)) {
        hyp_setting_free(s);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory for the data of setting '%s'", name);
    }
    return LETHE_OK;
}

void hyp_setting_free(hyp_setting *s) {
    free(s->x), free(s->y_class), free(s->y_real);
    s->x = NULL, s->y_class = NULL, s->y_real = NULL;
}

enum { STREAM_NOISE = 1, STREAM_CENTRES = 2, STREAM_LABELS = 3, STREAM_TARGETS = 4, STREAM_POISON_ROWS = 5,
       STREAM_RANDOM_ROWS = 6 };

static double normal_at(uint64_t seed, uint64_t stream, uint64_t i) {
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)stream, 0x48595031u /* "HYP1" */};
    philox_block b = philox4x32_10(ctr, seed);
    return philox_normal_pair(b.v[0], b.v[1], 0);
}

static double uniform_at(uint64_t seed, uint64_t stream, uint64_t i) {
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)stream, 0x48595031u};
    return philox_u01_f64(philox4x32_10(ctr, seed).v[2]);
}

void hyp_regression_labels(hyp_setting *s, uint64_t seed, int64_t informative) {
    const int64_t n = s->n, d = s->d;
    double *dir = calloc((size_t)(2 * d), sizeof(double));
    if (!dir)
        return;
    for (int64_t c = 0; c < 2; c++)
        for (int64_t j = 0; j < informative && j < d; j++)
            dir[c * d + j] = normal_at(seed, STREAM_CENTRES, (uint64_t)(c * d + j));
    /* two orthogonal unit label vectors (Gram-Schmidt) */
    double n0 = 0, dot = 0, n1 = 0;
    for (int64_t j = 0; j < d; j++)
        n0 += dir[j] * dir[j];
    for (int64_t j = 0; j < d; j++)
        dir[j] /= sqrt(n0), dot += dir[j] * dir[d + j];
    for (int64_t j = 0; j < d; j++)
        dir[d + j] -= dot * dir[j], n1 += dir[d + j] * dir[d + j];
    for (int64_t j = 0; j < d; j++)
        dir[d + j] /= sqrt(n1 > 0 ? n1 : 1);
    for (int64_t i = 0; i < n; i++) {
        const double *u = dir + (i < n / 2 ? 0 : d);
        double target = 0;
        for (int64_t j = 0; j < d; j++)
            target += (double)s->x[i * d + j] * u[j];
        s->y_real[i] = (float)(target + 0.1 * normal_at(seed, STREAM_TARGETS, (uint64_t)i));
    }
    free(dir);
}

void hyp_make_data(hyp_setting *s, uint64_t seed) {
    const int64_t n = s->n, d = s->d, informative = d > 1 ? d / 2 : 1;
    const int64_t k = s->outputs;
    double *centre = s->regression ? NULL : calloc((size_t)(k * d), sizeof(double));
    if (!s->regression && !centre)
        return;
    for (int64_t c = 0; centre && c < k; c++)
        for (int64_t j = 0; j < informative; j++)
            centre[c * d + j] = normal_at(seed, STREAM_CENTRES, (uint64_t)(c * d + j));
    for (int64_t i = 0; i < n; i++) {
        int64_t c = s->regression ? 0 : (int64_t)(uniform_at(seed, STREAM_LABELS, (uint64_t)i) * k);
        if (c >= k)
            c = k - 1;
        for (int64_t j = 0; j < d; j++) {
            double z = normal_at(seed, STREAM_NOISE, (uint64_t)(i * d + j)) * (j < informative ? 1.0 : 0.1);
            s->x[i * d + j] = (float)(centre ? centre[c * d + j] + z : z);
        }
        if (!s->regression)
            s->y_class[i] = (int32_t)c;
    }
    free(centre);
    if (s->regression)
        hyp_regression_labels(s, seed, informative);
}

/* ---- model stores ------------------------------------------------------------------- */

/* dst's tensors take src's values (same names and sizes; dst's data pointers,
 * which frames hold, stay). */
static void store_assign(ts_store *dst, const ts_store *src) {
    for (int i = 0; i < src->n; i++) {
        ts_tensor *t = ts_get(dst, src->t[i].name);
        if (t && t->nbytes == src->t[i].nbytes)
            memcpy(t->data, src->t[i].data, t->nbytes);
    }
}

static double store_distance(const ts_store *a, const ts_store *b) { return sqrt(ts_distance2(a, b)); }

/* Copies the rows [from, from + count) of the data into a frame's inputs
 * prefix.x, prefix.y (when the entry has them) and prefix.w = w. */
static void fill_rows(const hyp_setting *s, lethe_frame *f, const char *prefix, int64_t from, int64_t count,
                      const float *w) {
    char name[64];
    void *p;
    snprintf(name, sizeof name, "%s.x", prefix);
    if ((p = frame_arg(f, name)))
        memcpy(p, s->x + from * s->d, sizeof(float) * (size_t)(count * s->d));
    snprintf(name, sizeof name, "%s.y", prefix);
    if ((p = frame_arg(f, name))) {
        if (s->regression)
            memcpy(p, s->y_real + from, sizeof(float) * (size_t)count);
        else
            memcpy(p, s->y_class + from, sizeof(int32_t) * (size_t)count);
    }
    snprintf(name, sizeof name, "%s.w", prefix);
    if ((p = frame_arg(f, name)) && w)
        memcpy(p, w, sizeof(float) * (size_t)count);
}

static double out_scalar(const lethe_frame *f, const char *name) {
    const float *v = frame_arg(f, name);
    return v ? *v : NAN;
}

static double scalar_default(const lethe_entry *e, const char *name, double fallback) {
    const lethe_arg *a = arg_of(e, name);
    return a && a->kind == LETHE_SCALAR && !isnan(a->scalar_default) ? a->scalar_default : fallback;
}

/* ---- fits ---------------------------------------------------------------------------- */

/* A rise in f32 loss smaller than this share is rounding, not an overshoot. */
static const double LOSS_RISE = 1e-6;

/* Zeroes every tensor of a store (a rule's optimiser state: at rest). */
static void store_zero(ts_store *s) {
    for (int i = 0; i < s->n; i++)
        memset(s->t[i].data, 0, s->t[i].nbytes);
}

int hyp_fit(const hyp_setting *s, lethe_ctx *ctx, const float *w, int max_iters, double tol, ts_store *model,
            int *iters, char *err) {
    frame_models fm = {NULL, model};
    ts_store state = {0}, before = {0}, prev = {0};
    lethe_frame *fi = frame_new(s->fit_init, &fm, 1, NULL, err);
    int rc = fi ? frame_call(fi, ctx, err) : LETHE_ENOMEM;
    frame_free(fi);
    lethe_frame *f = rc ? NULL : frame_new(s->fit, &fm, 1, &state, err);
    if (!f) {
        ts_clear(&state);
        return rc ? rc : LETHE_ENOMEM;
    }
    fill_rows(s, f, "batch", 0, s->n + s->p, w);
    if ((rc = ts_copy(&before, model, err)) || (rc = ts_copy(&prev, model, err)))
        goto out;
    const double lr0 = scalar_default(s->fit, "lr", 0.1);
    double lr = lr0, prev_loss = INFINITY;
    int it = 0, since_rest = 0;
    for (; it < max_iters; it++) {
        store_assign(&before, model);
        frame_set_scalar(f, "lr", lr);
        if ((rc = frame_call(f, ctx, err)))
            goto out;
        double loss = out_scalar(f, "loss"), gnorm = out_scalar(f, "grad_norm");
        if (!isfinite(loss) || loss > prev_loss + LOSS_RISE * fabs(prev_loss)) {
            /* the last step overshot: back to where it started, at rest, and
             * shorter if it was a step from rest */
            store_assign(model, &prev);
            store_zero(&state);
            if (since_rest <= 1 && (lr *= 0.5) < lr0 * 1e-9) {
                rc = lethe_errf(err, LETHE_EARG, "%s diverges (loss %g) even at lr %g", s->fit->name, loss, lr);
                goto out;
            }
            since_rest = 0;
            continue;
        }
        if (gnorm < tol) {
            store_assign(model, &before);   /* the parameters whose gradient was measured */
            break;
        }
        store_assign(&prev, &before);
        prev_loss = loss;
        since_rest++;
    }
    if (iters)
        *iters = it;
out:
    ts_clear(&before), ts_clear(&prev), ts_clear(&state);
    frame_free(f);
    return rc;
}

int hyp_update_cosine(const hyp_setting *s, lethe_ctx *ctx, const float *w, const ts_store *theta,
                      const ts_store *shift_to, double *cosine, char *err) {
    ts_store m = {0}, state = {0};   /* state at rest: the step is plain gradient descent */
    int rc = ts_copy(&m, theta, err);
    frame_models fm = {NULL, &m};
    lethe_frame *f = rc ? NULL : frame_new(s->fit, &fm, 1, &state, err);
    if (f) {
        fill_rows(s, f, "batch", 0, s->n + s->p, w);
        frame_set_scalar(f, "lr", 1.0);
        rc = frame_call(f, ctx, err);
    } else if (!rc)
        rc = LETHE_ENOMEM;
    double dot = 0, uu = 0, vv = 0;
    for (int i = 0; !rc && i < theta->n; i++) {
        const ts_tensor *t0 = &theta->t[i], *t1 = ts_get(&m, t0->name), *t2 = ts_get(shift_to, t0->name);
        if (t0->dtype != LETHE_F32 || !t1 || !t2)
            continue;
        const float *a = t0->data, *b = t1->data, *c = t2->data;
        for (size_t j = 0; j < t0->nbytes / sizeof(float); j++) {
            double u = (double)b[j] - a[j], v = (double)c[j] - a[j];
            dot += u * v, uu += u * u, vv += v * v;
        }
    }
    *cosine = uu > 0 && vv > 0 ? dot / sqrt(uu * vv) : 0;
    frame_free(f);
    ts_clear(&m), ts_clear(&state);
    return rc;
}

/* ---- one case --------------------------------------------------------------------------- */

/* perm: a uniformly random permutation of 0..n-1 from (seed, stream). */
static void permutation(int64_t *perm, int64_t n, uint64_t seed, uint64_t stream) {
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(uniform_at(seed, stream, (uint64_t)i) * (double)(i + 1));
        if (j > i)
            j = i;
        int64_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
}

static uint64_t case_key(int seed) { return (uint64_t)seed * 0x9E3779B97F4A7C15ull + 0x5eed; }

int64_t hyp_random_rows(const hyp_setting *s, int seed, int64_t *perm) {
    const int64_t pool = s->regression ? s->n / 2 : s->n;
    permutation(perm, pool, case_key(seed), STREAM_RANDOM_ROWS);
    return pool;
}

/* The corrupted model: S_target's steps from the clean fit, on the clean rows. */
static int make_target(const hyp_setting *s, lethe_ctx *ctx, const hyp_opts *o, const float *w_clean,
                       ts_store *target, char *err) {
    ts_store state = {0};
    frame_models fm = {NULL, target};
    lethe_frame *fi = frame_new(s->target_state, &fm, 1, &state, err), *f = NULL;
    int rc = fi ? frame_call(fi, ctx, err) : LETHE_ENOMEM;
    if (!rc && !(f = frame_new(s->target, &fm, 1, &state, err)))
        rc = LETHE_ENOMEM;
    if (!rc) {
        fill_rows(s, f, "batch", 0, s->n, w_clean);
        if (o->target_eps > 0 && (rc = frame_set_scalar(f, "eps", o->target_eps)))
            lethe_errf(err, rc, "%s has no scalar eps to set", s->target->name);
    }
    for (int k = 0; !rc && k < o->target_steps; k++)
        rc = frame_call(f, ctx, err);
    frame_free(fi), frame_free(f);
    ts_clear(&state);
    return rc;
}

/* Gradient Canceling: the poison rows start as copies of the clean rows
 * starts[0..p) (their labels too); the first n_poison take part. The
 * objective steps with its own optimiser; the points with the lowest loss
 * seen are kept (each call reports the loss of the points it started from). */
static int cancel(hyp_setting *s, lethe_ctx *ctx, const hyp_opts *o, ts_store *target, const int64_t *starts,
                  int n_poison, const float *w_clean, hyp_result *r, char *err) {
    ts_store state = {0};
    frame_models fm = {NULL, target};
    float *added_w = calloc((size_t)s->p, sizeof(float)), *saved = malloc(sizeof(float) * (size_t)(s->p * s->d));
    lethe_frame *fi = NULL, *f = NULL;
    int rc = added_w && saved ? LETHE_OK : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t j = 0; !rc && j < s->p; j++) {
        memcpy(s->x + (s->n + j) * s->d, s->x + starts[j] * s->d, sizeof(float) * (size_t)s->d);
        if (s->regression)
            s->y_real[s->n + j] = s->y_real[starts[j]];
        else
            s->y_class[s->n + j] = s->y_class[starts[j]];
        added_w[j] = j < n_poison;
    }
    if (!rc && !(fi = frame_new(s->cancel_state, &fm, 1, &state, err)))
        rc = LETHE_ENOMEM;
    ts_tensor *xp = rc ? NULL : ts_get(&state, "xp");
    if (!rc && xp && xp->nbytes == sizeof(float) * (size_t)(s->p * s->d))
        memcpy(xp->data, s->x + s->n * s->d, xp->nbytes);   /* for initialisers that read the points */
    if (!rc) {
        fill_rows(s, fi, "clean", 0, s->n, w_clean);
        fill_rows(s, fi, "added", s->n, s->p, added_w);
        rc = frame_call(fi, ctx, err);
    }
    if (!rc && !(f = frame_new(s->cancel, &fm, 1, &state, err)))
        rc = LETHE_ENOMEM;
    if (!rc && !(xp = ts_get(&state, "xp")))
        rc = lethe_errf(err, LETHE_ENOTFOUND, "%s keeps no state xp", s->cancel->name);
    if (!rc) {
        fill_rows(s, f, "clean", 0, s->n, w_clean);
        fill_rows(s, f, "added", s->n, s->p, added_w);
        memcpy(xp->data, s->x + s->n * s->d, xp->nbytes);
    }
    const double lr = scalar_default(s->cancel, "lr", 0.01);
    double best = INFINITY;
    for (int k = 0; !rc && k <= o->cancel_steps; k++) {
        memcpy(saved, xp->data, xp->nbytes);
        frame_set_scalar(f, "lr", k < o->cancel_steps ? lr : 0.0);   /* the last call only measures */
        if ((rc = frame_call(f, ctx, err)))
            break;
        double loss = out_scalar(f, "loss");
        if (k == 0)
            r->cancel_loss_start = loss;
        if (loss < best) {
            best = loss;
            memcpy(s->x + s->n * s->d, saved, xp->nbytes);
        }
    }
    r->cancel_loss = best;
    frame_free(fi), frame_free(f);
    ts_clear(&state);
    free(added_w), free(saved);
    return rc;
}

int hyp_case(hyp_setting *s, lethe_ctx *ctx, const hyp_opts *o, const ts_store *clean, int n_poison, int seed,
             hyp_result *r, char *err) {
    memset(r, 0, sizeof *r);
    r->n_poison = n_poison, r->seed = seed;
    if (n_poison < 1 || n_poison > s->p)
        return lethe_errf(err, LETHE_EARG, "setting '%s': a poison set of %d (it has room for 1 to %lld)", s->name,
                          n_poison, (long long)s->p);
    const int64_t rows = s->n + s->p;
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)s->n);
    float *w = malloc(sizeof(float) * (size_t)rows), *w_clean = malloc(sizeof(float) * (size_t)rows);
    ts_store target = {0}, full = {0}, removed = {0};
    int rc = perm && w && w_clean ? LETHE_OK : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int64_t i = 0; !rc && i < rows; i++)
        w_clean[i] = i < s->n;
    int iters = 0;
    if (!rc)
        permutation(perm, s->n, case_key(seed), STREAM_POISON_ROWS);
    if (!rc && !(rc = ts_copy(&target, clean, err)) && !(rc = make_target(s, ctx, o, w_clean, &target, err)))
        rc = cancel(s, ctx, o, &target, perm, n_poison, w_clean, r, err);
    if (!rc) {
        r->target_distance = store_distance(&target, clean);
        memcpy(w, w_clean, sizeof(float) * (size_t)rows);
        for (int j = 0; j < n_poison; j++)
            w[s->n + j] = 1;
        rc = hyp_fit(s, ctx, w, o->fit_iters, o->fit_tol, &full, &iters, err);
        r->fit_iters_max = iters;
    }
    if (!rc) {
        r->shift_poison = store_distance(&full, clean);
        r->full_to_target = store_distance(&full, &target);
        rc = hyp_update_cosine(s, ctx, w_clean, &full, clean, &r->cos_poison, err);
    }
    /* random clean samples: nested subsets of one permutation, doubled until
     * their shift reaches the poisons' (or a quarter of the clean rows) */
    if (!rc)
        hyp_random_rows(s, seed, perm);
    for (int k = n_poison; !rc; k *= 2) {
        memcpy(w, w_clean, sizeof(float) * (size_t)rows);
        for (int j = 0; j < k; j++)
            w[perm[j]] = 0;
        double shift, cosine;
        if ((rc = hyp_fit(s, ctx, w, o->fit_iters, o->fit_tol, &removed, &iters, err)) ||
            (rc = hyp_update_cosine(s, ctx, w, clean, &removed, &cosine, err)))
            break;
        if (iters > r->fit_iters_max)
            r->fit_iters_max = iters;
        shift = store_distance(&removed, clean);
        if (k == n_poison)
            r->shift_random = shift, r->cos_random = cosine;
        r->random_equal_k = k, r->shift_random_equal = shift, r->cos_random_equal = cosine;
        if (shift >= r->shift_poison || 2 * (int64_t)k > s->n / 4)
            break;
    }
    ts_clear(&target), ts_clear(&full), ts_clear(&removed);
    free(perm), free(w), free(w_clean);
    return rc;
}

/* ---- the run ---------------------------------------------------------------------------- */

/* The lines of hypotheses.jsonl, written at once at the end. */
typedef struct Lines {
    char *buf;
    size_t len, cap;
} Lines;

static int lines_add(Lines *l, const char *text, size_t n) {
    if (!text)
        return 0;
    if (l->len + n + 2 > l->cap) {
        size_t cap = (l->cap ? l->cap * 2 : 4096) + n;
        char *b = realloc(l->buf, cap);
        if (!b)
            return 0;
        l->buf = b, l->cap = cap;
    }
    memcpy(l->buf + l->len, text, n);
    l->len += n;
    l->buf[l->len++] = '\n';
    return 1;
}

static int record(Lines *lines, const lethe_program *p, const hyp_setting *s, const hyp_opts *o,
                  const hyp_features *features, const hyp_result *r, int clean_iters) {
    jw wr, *w = &wr;
    jw_init(w);
    jw_obj_begin(w);
    jw_kv_str(w, "setting", s->name);
    jw_kv_str(w, "loss", s->regression ? "linear regression (squared error)" : "logistic regression (cross entropy)");
    jw_kv_int(w, "n_clean", s->n);
    jw_kv_int(w, "features", s->d);
    jw_kv_int(w, "outputs", s->outputs);
    jw_kv_int(w, "n_poison", r->n_poison);
    jw_kv_int(w, "seed", r->seed);
    jw_kv_int(w, "data_seed", (int64_t)o->data_seed);
    if (features) {   /* where the rows came from: the network's checkpoint and its quality */
        jw_key(w, "source");
        jw_obj_begin(w);
        jw_kv_str(w, "network", features->experiment);
        jw_kv_str(w, "checkpoint", features->checkpoint);
        jw_kv_num(w, "test_accuracy", features->test_accuracy);
        jw_obj_end(w);
    } else
        jw_kv_str(w, "source", "synthetic");
    jw_kv_num(w, "shift_poison", r->shift_poison);
    jw_kv_num(w, "shift_random", r->shift_random);
    jw_kv_num(w, "cos_poison", r->cos_poison);
    jw_kv_num(w, "cos_random", r->cos_random);
    jw_kv_int(w, "random_equal_k", r->random_equal_k);
    jw_kv_num(w, "shift_random_equal", r->shift_random_equal);
    jw_kv_num(w, "cos_random_equal", r->cos_random_equal);
    jw_kv_num(w, "target_distance", r->target_distance);
    jw_kv_num(w, "full_to_target", r->full_to_target);
    jw_kv_num(w, "cancel_loss_start", r->cancel_loss_start);
    jw_kv_num(w, "cancel_loss", r->cancel_loss);
    jw_kv_int(w, "fit_iters_max", r->fit_iters_max > clean_iters ? r->fit_iters_max : clean_iters);
    jw_key(w, "config");
    jw_obj_begin(w);
    jw_kv_int(w, "fit_iters", o->fit_iters);
    jw_kv_num(w, "fit_tol", o->fit_tol);
    jw_kv_int(w, "cancel_steps", o->cancel_steps);
    jw_kv_int(w, "target_steps", o->target_steps);
    jw_kv_num(w, "target_eps", o->target_eps > 0 ? o->target_eps : scalar_default(s->target, "eps", NAN));
    jw_kv_str(w, "source_hash", p->source_hash);
    jw_obj_end(w);
    jw_obj_end(w);
    size_t n = 0;
    const char *text = jw_finish(w, &n);
    int ok = lines_add(lines, text, n);
    jw_free(w);
    return ok;
}

/* The setting of entry i (an S_fit rule) into name, or 0 if it is not one. */
static int setting_name(const lethe_program *p, uint32_t i, char name[64]) {
    const char *e = p->entries[i].name;
    size_t len = strlen(e);
    if (len <= 4 || len >= 64 || strcmp(e + len - 4, "_fit") || strcmp(p->entries[i].kind, "rule"))
        return 0;
    snprintf(name, 64, "%.*s", (int)(len - 4), e);
    return 1;
}

/* The poison-set sizes of setting s: the options' or P/4, P/2, 3P/4, P. */
static int sizes_of(const hyp_setting *s, const hyp_opts *o, int *sizes) {
    if (o->nsizes) {
        memcpy(sizes, o->sizes, sizeof(int) * (size_t)o->nsizes);
        return o->nsizes;
    }
    for (int k = 0; k < 4; k++)
        sizes[k] = (int)(s->p * (k + 1) / 4) > 0 ? (int)(s->p * (k + 1) / 4) : 1;
    return 4;
}

/* The setting's clean rows: the network's features or synthetic ones. */
static int setting_data(hyp_setting *s, const hyp_features *features, uint64_t seed, char *err) {
    if (features)
        return hyp_use_features(s, features, seed, err);
    hyp_make_data(s, seed);
    return LETHE_OK;
}

int hyp_check_settings(const lethe_program *p, const hyp_opts *o, const hyp_features *features, char *err) {
    int rc = LETHE_OK, settings = 0, sizes[HYP_MAX_SIZES], nsizes;
    char setting[64];
    for (uint32_t i = 0; !rc && i < p->nentries; i++) {
        hyp_setting s;
        if (!setting_name(p, i, setting) || (rc = hyp_setting_open(p, setting, &s, err)))
            continue;
        settings++;
        if (features)
            rc = hyp_use_features(&s, features, o->data_seed, err);
        nsizes = sizes_of(&s, o, sizes);
        for (int k = 0; !rc && k < nsizes; k++)
            if (sizes[k] > s.p)
                rc = lethe_errf(err, LETHE_EARG, "setting '%s': a poison set of %d, but its exports have room for %lld",
                                s.name, sizes[k], (long long)s.p);
        hyp_setting_free(&s);
    }
    if (!rc && !settings)
        rc = lethe_errf(err, LETHE_ENOTFOUND, "the program exports no setting (S_fit, S_target, S_cancel; see "
                        "graphs/experiments/hypotheses.lth)");
    return rc;
}

int hypotheses_run(const lethe_program *p, lethe_ctx *ctx, const hyp_opts *o, const hyp_features *features,
                   char *err) {
    Lines lines = {0};
    int sizes[HYP_MAX_SIZES], nsizes;
    char setting[64];
    int rc = hyp_check_settings(p, o, features, err);   /* before any work */
    for (uint32_t i = 0; !rc && i < p->nentries; i++) {
        hyp_setting s;
        if (!setting_name(p, i, setting) || (rc = hyp_setting_open(p, setting, &s, err)))
            continue;
        rc = setting_data(&s, features, o->data_seed, err);
        nsizes = sizes_of(&s, o, sizes);
        float *w_clean = malloc(sizeof(float) * (size_t)(s.n + s.p));
        ts_store clean = {0};
        int clean_iters = 0;
        if (!rc && !w_clean)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
        for (int64_t j = 0; !rc && j < s.n + s.p; j++)
            w_clean[j] = j < s.n;
        if (!rc)
            rc = hyp_fit(&s, ctx, w_clean, o->fit_iters, o->fit_tol, &clean, &clean_iters, err);
        for (int k = 0; !rc && k < nsizes; k++)
            for (int seed = 0; !rc && seed < o->seeds; seed++) {
                hyp_result r;
                if ((rc = hyp_case(&s, ctx, o, &clean, sizes[k], seed, &r, err)))
                    break;
                if (!record(&lines, p, &s, o, features, &r, clean_iters)) {
                    rc = lethe_errf(err, LETHE_ENOMEM, "out of memory for the records");
                    break;
                }
                if (!o->quiet)
                    printf("%s: %d poisons, seed %d: shift %.4g (random %.4g), cos %.3f (random %.3f; %d random "
                           "samples shift %.4g, cos %.3f), canceling loss %.3g -> %.3g\n",
                           s.name, r.n_poison, seed, r.shift_poison, r.shift_random, r.cos_poison, r.cos_random,
                           r.random_equal_k, r.shift_random_equal, r.cos_random_equal, r.cancel_loss_start,
                           r.cancel_loss);
            }
        ts_clear(&clean);
        free(w_clean);
        hyp_setting_free(&s);
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/hypotheses.jsonl", o->out);
    if (!rc && !(rc = fs_mkdir_p(o->out, 0777, err)))
        rc = fs_write_atomic(path, lines.buf, lines.len, err);
    if (!rc && !o->quiet)
        printf("wrote %s\n", path);
    free(lines.buf);
    return rc;
}

/* ---- the command -------------------------------------------------------------------------- */

static const char usage[] =
    "usage: lethe hypotheses FILE.lth [--out DIR] [--seeds N] [--sizes A,B,...] [--fit-iters N] [--fit-tol X]\n"
    "                        [--cancel-steps N] [--target-steps N] [--target-eps X] [--data-seed N] [-t THREADS]\n"
    "                        [--features-from CKPT] [--data-dir DIR] [--quiet] [--no-plots]\n"
    "  the paper's hypotheses H1 and H2 (graphs/experiments/hypotheses.lth, docs/attacks.md): writes\n"
    "  DIR/hypotheses.jsonl (default DIR: out/<FILE's name>), DIR/hypotheses.md and DIR/plots/h1_shift, h2_cosine.\n"
    "  A file with an experiment and an export `features` (hypotheses_fmnist.lth) fits the penultimate\n"
    "  features of its trained network: trained into DIR/seed<data seed>/original.safetensors (read back when\n"
    "  there), or read from the experiment model's checkpoint CKPT (lethe train of the same file writes one)\n";

static int parse_int(const char *s, long lo, long hi, long *v) {
    char *end;
    errno = 0;
    *v = strtol(s, &end, 10);
    return !errno && end != s && !*end && *v >= lo && *v <= hi;
}

int hypotheses_command(int argc, char **argv) {
    hyp_opts o;
    hyp_opts_default(&o);
    const char *file = NULL;
    long threads = 0, v;
    int plots = 1, bad = 0;
    char out[PATH_MAX], err[LETHE_ERR_LEN] = "";
    for (int i = 0; i < argc && !bad; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = strncmp(a, "--", 2) == 0 && strcmp(a, "--quiet") && strcmp(a, "--no-plots") && strcmp(a, "--help");
        if ((takes || !strcmp(a, "-t")) && !val) {
            fprintf(stderr, "lethe hypotheses: %s needs a value\n%s", a, usage);
            return 2;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--out"))
            o.out = val, i++;
        else if (!strcmp(a, "--features-from"))
            o.features_from = val, i++;
        else if (!strcmp(a, "--data-dir"))
            o.data_dir = val, i++;
        else if (!strcmp(a, "--seeds"))
            bad = !parse_int(val, 1, 1000, &v), o.seeds = (int)v, i++;
        else if (!strcmp(a, "--fit-iters"))
            bad = !parse_int(val, 1, 100000000, &v), o.fit_iters = (int)v, i++;
        else if (!strcmp(a, "--cancel-steps"))
            bad = !parse_int(val, 0, 100000000, &v), o.cancel_steps = (int)v, i++;
        else if (!strcmp(a, "--target-steps"))
            bad = !parse_int(val, 0, 100000000, &v), o.target_steps = (int)v, i++;
        else if (!strcmp(a, "--data-seed"))
            bad = !parse_int(val, 0, LONG_MAX, &v), o.data_seed = (uint64_t)v, i++;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            bad = !parse_int(val, 0, 1024, &threads), i++;
        else if (!strcmp(a, "--fit-tol") || !strcmp(a, "--target-eps")) {
            char *end;
            double x = strtod(val, &end);
            bad = end == val || *end || !(x > 0) || !isfinite(x);
            *(!strcmp(a, "--fit-tol") ? &o.fit_tol : &o.target_eps) = x;
            i++;
        } else if (!strcmp(a, "--sizes")) {
            char *copy = strdup(val), *save = NULL;
            o.nsizes = 0;
            for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t && !bad; t = strtok_r(NULL, ",", &save)) {
                bad = o.nsizes == HYP_MAX_SIZES || !parse_int(t, 1, INT_MAX, &v);
                if (!bad)
                    o.sizes[o.nsizes++] = (int)v;
            }
            bad |= o.nsizes == 0;
            free(copy);
            i++;
        } else if (!strcmp(a, "--quiet"))
            o.quiet = 1;
        else if (!strcmp(a, "--no-plots"))
            plots = 0;
        else if (a[0] == '-' || file) {
            fprintf(stderr, "lethe hypotheses: unexpected argument '%s'\n%s", a, usage);
            return 2;
        } else
            file = a;
        if (bad) {
            fprintf(stderr, "lethe hypotheses: bad value '%s' for %s\n", val, a);
            return 2;
        }
    }
    if (!file) {
        fputs(usage, stderr);
        return 2;
    }
    if (!o.out) {
        const char *base = strrchr(file, '/');
        base = base ? base + 1 : file;
        size_t len = strlen(base);
        if (len > 4 && !strcmp(base + len - 4, ".lth"))
            len -= 4;
        snprintf(out, sizeof out, "out/%.*s", (int)len, base);
        o.out = out;
    }
    lethe_prog prog;
    int rc = lethe_prog_open(file, "", &prog, err);
    if (rc) {
        fprintf(stderr, "lethe: %s\n", err);
        return 1;
    }
    o.threads = (int)threads;
    /* the rows: a trained network's features when the file names the network */
    hyp_features features = {0};
    const int network = prog.p->experiment != NULL;
    if (!network && (lethe_entry_find(prog.p, "features") || o.features_from))
        rc = lethe_errf(err, LETHE_EARG, "%s: %s, but no experiment names the network (see "
                        "graphs/experiments/hypotheses_fmnist.lth)", file,
                        o.features_from ? "--features-from is given" : "the program exports features");
    else if (network && !(rc = hyp_check_settings(prog.p, &o, NULL, err)))   /* before training */
        rc = hyp_features_compute(&prog, &o, &features, err);
    lethe_pool *pool = rc ? NULL : lethe_pool_new((int)threads);
    lethe_ctx ctx;
    if (!rc && !pool)
        rc = lethe_errf(err, LETHE_ENOMEM, "no thread pool");
    if (pool) {
        lethe_ctx_init(&ctx, pool, 0);
        rc = hypotheses_run(prog.p, &ctx, &o, network ? &features : NULL, err);
        lethe_pool_free(pool);
    }
    if (!rc)
        rc = report_hypotheses(o.out, plots, err);
    hyp_features_free(&features);
    lethe_prog_close(&prog);
    if (rc) {
        fprintf(stderr, "lethe: %s\n", err);
        return 1;
    }
    return 0;
}
