/* sisa.c: SISA's layout, incremental training with checkpoints, exact
 * unlearning and aggregation (sisa.h), over an abstract trainer. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fsutil.h"
#include "sisa.h"

int sisa_layout_make(int64_t n, int shards, int slices, uint64_t seed, sisa_layout *l, char *err) {
    memset(l, 0, sizeof *l);
    if (shards < 1 || shards > SISA_MAX || slices < 1 || slices > SISA_MAX)
        return lethe_errf(err, LETHE_EARG, "sisa: shards and slices must be in 1..%d", SISA_MAX);
    if (n < (int64_t)shards * slices)
        return lethe_errf(err, LETHE_EARG, "sisa(shards = %d, slices = %d) needs at least %d training samples (one per "
                          "slice); there are %lld", shards, slices, shards * slices, (long long)n);
    l->shards = shards;
    l->slices = slices;
    l->n = n;
    l->order = malloc(sizeof(int64_t) * (size_t)n);
    l->start = malloc(sizeof(int64_t) * (size_t)(shards * slices + 1));
    if (!l->order || !l->start) {
        sisa_layout_free(l);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n; i++)
        l->order[i] = i;
    ds_shuffle(l->order, n, seed, DS_STREAM_SUBSET, 0);
    for (int s = 0; s < shards; s++) {
        int64_t lo = n * s / shards, hi = n * (s + 1) / shards;
        for (int j = 0; j < slices; j++)
            l->start[s * slices + j] = lo + (hi - lo) * j / slices;
    }
    l->start[shards * slices] = n;
    return LETHE_OK;
}

void sisa_layout_free(sisa_layout *l) {
    free(l->order);
    free(l->start);
    memset(l, 0, sizeof *l);
}

int64_t sisa_step_count(const sisa_trainer *t, int slices, int64_t n) {
    if (n <= 0)
        return 0;
    int64_t steps = llround(2.0 * (double)t->epochs * (double)n / ((slices + 1.0) * (double)t->batch));
    return steps < 1 ? 1 : steps;
}

/* ---------------------------------------------------------------------------
 * checkpoints: the model under "model/", the optimiser state under "state/" */

static void checkpoint_path(const char *dir, int shard, int slice, char *path, size_t n) {
    snprintf(path, n, "%s/shard%d_slice%d.safetensors", dir, shard, slice);
}

static int put_prefixed(ts_store *dst, const ts_store *src, const char *prefix, char *err) {
    for (int i = 0; i < src->n; i++) {
        const ts_tensor *t = &src->t[i];
        char name[512];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        ts_tensor *d = ts_put(dst, name, t->dtype, t->rank, t->shape, err);
        if (!d)
            return LETHE_EFORMAT;
        memcpy(d->data, t->data, t->nbytes);
    }
    return LETHE_OK;
}

/* The tensors of `src` named "<prefix>rest", as "rest", into dst (cleared first). */
static int take_prefixed(ts_store *dst, const ts_store *src, const char *prefix, char *err) {
    size_t k = strlen(prefix);
    ts_clear(dst);
    for (int i = 0; i < src->n; i++) {
        const ts_tensor *t = &src->t[i];
        if (strncmp(t->name, prefix, k))
            continue;
        ts_tensor *d = ts_put(dst, t->name + k, t->dtype, t->rank, t->shape, err);
        if (!d)
            return LETHE_EFORMAT;
        memcpy(d->data, t->data, t->nbytes);
    }
    return LETHE_OK;
}

static int save_checkpoint(const char *path, const ts_store *model, const ts_store *state, int shard, int slice, char *err) {
    ts_store all = {0};
    char what[64];
    snprintf(what, sizeof what, "sisa shard %d after slice %d", shard, slice);
    const char *meta[] = {"format", "lethe", "model", what, NULL};
    int rc = put_prefixed(&all, model, "model/", err);
    if (!rc)
        rc = put_prefixed(&all, state, "state/", err);
    if (!rc)
        rc = ts_save(&all, path, meta, err);
    ts_clear(&all);
    return rc;
}

static int load_checkpoint(const char *path, ts_store *model, ts_store *state, char *err) {
    ts_store all = {0};
    int rc = ts_load(&all, path, err);
    if (!rc)
        rc = take_prefixed(model, &all, "model/", err);
    if (!rc)
        rc = take_prefixed(state, &all, "state/", err);
    if (!rc && !model->n)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not a SISA checkpoint (no model/ tensors)", path);
    ts_clear(&all);
    return rc;
}

/* ---------------------------------------------------------------------------
 * training */

/* Slices 0..j of a shard without the forgotten positions, in layout order. */
static int64_t union_of(const sisa_layout *l, int shard, int j, const uint8_t *forget, int64_t *out) {
    int64_t n = 0;
    for (int64_t p = l->start[shard * l->slices]; p < l->start[shard * l->slices + j + 1]; p++)
        if (!forget || !forget[l->order[p]])
            out[n++] = l->order[p];
    return n;
}

/* Shard `shard` from (model, state) after checkpoint `from` through the last
 * slice, checkpoint by checkpoint into `dir`. */
static int train_from(const sisa_layout *l, const sisa_trainer *t, int shard, int from, const uint8_t *forget, const char *dir,
                      ts_store *model, ts_store *state, char *err) {
    int64_t *set = malloc(sizeof(int64_t) * (size_t)(l->start[(shard + 1) * l->slices] - l->start[shard * l->slices] + 1));
    if (!set)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    int rc = LETHE_OK;
    for (int j = from; !rc && j < l->slices; j++) {
        int64_t n = union_of(l, shard, j, forget, set);
        int64_t steps = sisa_step_count(t, l->slices, n);
        if (steps)
            rc = t->train(t->user, shard, j + 1, set, n, steps, model, state, err);
        char path[PATH_MAX];
        checkpoint_path(dir, shard, j + 1, path, sizeof path);
        if (!rc)
            rc = save_checkpoint(path, model, state, shard, j + 1, err);
    }
    free(set);
    return rc;
}

/* The latest checkpoint of `shard` in dir among slices [lo, R], read into
 * (model, state); returns its slice number, or lo - 1 when there is none. */
static int latest_checkpoint(const sisa_layout *l, const char *dir, int shard, int lo, ts_store *model, ts_store *state,
                             int *rc, char *err) {
    for (int j = l->slices; j >= lo && j >= 1; j--) {
        char path[PATH_MAX];
        checkpoint_path(dir, shard, j, path, sizeof path);
        if (fs_exists(path)) {
            *rc = load_checkpoint(path, model, state, err);
            return j;
        }
    }
    return lo - 1;
}

int sisa_train(const sisa_layout *l, const sisa_trainer *t, const char *dir, char *err) {
    int rc = fs_mkdir_p(dir, 0755, err);
    for (int s = 0; !rc && s < l->shards; s++) {
        ts_store model = {0}, state = {0};
        int from = latest_checkpoint(l, dir, s, 1, &model, &state, &rc, err);
        if (!rc && from == 0)
            rc = t->init(t->user, s, &model, &state, err);
        if (!rc)
            rc = train_from(l, t, s, from, NULL, dir, &model, &state, err);
        ts_clear(&model);
        ts_clear(&state);
    }
    return rc;
}

int sisa_unlearn(const sisa_layout *l, const uint8_t *forget, const sisa_trainer *t, const char *dir, const char *out_dir,
                 sisa_unlearned *u, char *err) {
    memset(u, 0, sizeof *u);
    int rc = fs_mkdir_p(out_dir, 0755, err);
    int64_t *set = malloc(sizeof(int64_t) * (size_t)l->n + 1);
    if (!rc && !set)
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    for (int s = 0; !rc && s < l->shards; s++) {
        int first = -1;   /* the first slice (0-based) holding a forgotten position */
        for (int j = 0; first < 0 && j < l->slices; j++)
            for (int64_t p = l->start[s * l->slices + j]; first < 0 && p < l->start[s * l->slices + j + 1]; p++)
                if (forget[l->order[p]])
                    first = j;
        u->restart[s] = first;   /* checkpoint `first` is the state after slices 0..first-1 */
        if (first < 0)
            continue;
        u->retrained++;
        for (int j = first; j < l->slices; j++)
            u->steps += sisa_step_count(t, l->slices, union_of(l, s, j, forget, set));
        ts_store model = {0}, state = {0};
        /* a retraining an earlier run left part way continues from its own checkpoint */
        int from = latest_checkpoint(l, out_dir, s, first + 1, &model, &state, &rc, err);
        if (!rc && from == first) {
            if (first == 0)
                rc = t->init(t->user, s, &model, &state, err);
            else {
                char path[PATH_MAX];
                checkpoint_path(dir, s, first, path, sizeof path);
                rc = load_checkpoint(path, &model, &state, err);
            }
        }
        if (!rc)
            rc = train_from(l, t, s, from, forget, out_dir, &model, &state, err);
        ts_clear(&model);
        ts_clear(&state);
    }
    free(set);
    return rc;
}

/* ---------------------------------------------------------------------------
 * the ensemble */

int sisa_ensemble_load(const sisa_layout *l, const char *dir, const char *out_dir, const sisa_unlearned *u,
                       ts_store *ensemble, char *err) {
    ts_clear(ensemble);
    int rc = LETHE_OK;
    for (int s = 0; !rc && s < l->shards; s++) {
        ts_store model = {0}, state = {0};
        char path[PATH_MAX], prefix[32];
        checkpoint_path(u && u->restart[s] >= 0 ? out_dir : dir, s, l->slices, path, sizeof path);
        snprintf(prefix, sizeof prefix, "shard%d/", s);
        rc = load_checkpoint(path, &model, &state, err);
        if (!rc)
            rc = put_prefixed(ensemble, &model, prefix, err);
        ts_clear(&model);
        ts_clear(&state);
    }
    int64_t one = 1;
    ts_tensor *n = rc ? NULL : ts_put(ensemble, SISA_SHARDS_TENSOR, LETHE_I32, 1, &one, err);
    if (n)
        *(int32_t *)n->data = l->shards;
    else if (!rc)
        rc = LETHE_EFORMAT;
    if (rc)
        ts_clear(ensemble);
    return rc;
}

int sisa_ensemble_size(const ts_store *m) {
    const ts_tensor *t = ts_get(m, SISA_SHARDS_TENSOR);
    if (!t || t->dtype != LETHE_I32 || t->nbytes != sizeof(int32_t))
        return 0;
    int32_t n = *(const int32_t *)t->data;
    return n >= 1 && n <= SISA_MAX ? n : 0;
}

int sisa_ensemble_member(const ts_store *ensemble, int s, ts_store *model, char *err) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "shard%d/", s);
    int rc = take_prefixed(model, ensemble, prefix, err);
    if (!rc && !model->n)
        rc = lethe_errf(err, LETHE_EFORMAT, "the SISA ensemble has no shard %d", s);
    return rc;
}

/* ---------------------------------------------------------------------------
 * aggregation */

int sisa_aggregate(const float *logits, int S, int64_t rows, int k, const int32_t *y, double *out_logp, double *w) {
    double *logp = malloc(sizeof(double) * (size_t)S * (size_t)k);   /* log_softmax of each member, one row */
    if (!logp)
        return LETHE_ENOMEM;
    for (int64_t i = 0; i < rows; i++) {
        for (int s = 0; w && s < S; s++)
            w[(int64_t)s * rows + i] = 0;   /* stays 0 for a label outside 0..k-1 */
        for (int s = 0; s < S; s++) {
            const float *r = logits + ((int64_t)s * rows + i) * k;
            double m = -INFINITY, z = 0;
            for (int c = 0; c < k; c++)
                m = r[c] > m ? r[c] : m;
            for (int c = 0; c < k; c++)
                z += exp((double)r[c] - m);
            for (int c = 0; c < k; c++)
                logp[s * k + c] = (double)r[c] - m - log(z);
        }
        /* log of the mean over members, class by class */
        for (int c = 0; c < k; c++) {
            double mx = -INFINITY, z = 0;
            for (int s = 0; s < S; s++)
                mx = logp[s * k + c] > mx ? logp[s * k + c] : mx;
            for (int s = 0; s < S; s++)
                z += exp(logp[s * k + c] - mx);
            out_logp[i * k + c] = mx + log(z) - log((double)S);
            if (w && c == y[i])
                for (int s = 0; s < S; s++)
                    w[(int64_t)s * rows + i] = exp(logp[s * k + c] - mx) / z;
        }
    }
    free(logp);
    return LETHE_OK;
}
