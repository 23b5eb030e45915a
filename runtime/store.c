/* store.c: named tensor stores and call frames (see lethe.h).
 *
 * A store holds the state the runtime owns between calls: a model's params
 * and buffers keyed by their path ("c1.bn.mean"), or a rule's state keyed by
 * its full name ("v.c1.w"). Frames point an entry's arguments into stores,
 * so a training step updates the store in place and no tensor is copied per
 * step.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "safetensors.h"

size_t ts_dtype_size(int dtype) {
    switch (dtype) {
    case LETHE_BOOL: return 1;
    case LETHE_I32: return 4;
    case LETHE_F32: return 4;
    case LETHE_F64: return 8;
    }
    return 0;
}

static int64_t numel(int rank, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= shape[i];
    return n;
}

static void *aligned_zeroed(size_t n) {
    void *p = NULL;
    size_t size = n ? (n + 63) / 64 * 64 : 64;
    if (posix_memalign(&p, 64, size) != 0)
        return NULL;
    memset(p, 0, size);
    return p;
}

ts_tensor *ts_get(const ts_store *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name))
            return &s->t[i];
    return NULL;
}

const char *ts_shape_text(int rank, const int64_t *shape, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < rank && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

ts_tensor *ts_put(ts_store *s, const char *name, int dtype, int rank, const int64_t *shape, char *err) {
    ts_tensor *t = ts_get(s, name);
    if (t) {
        bool same = t->dtype == dtype && t->rank == rank;
        for (int i = 0; same && i < rank; i++)
            same = t->shape[i] == shape[i];
        if (!same) {
            char a[128], b[128];
            lethe_errf(err, LETHE_EFORMAT, "tensor %s is %s, but the program expects %s", name,
                       ts_shape_text(t->rank, t->shape, a, sizeof a), ts_shape_text(rank, shape, b, sizeof b));
            return NULL;
        }
        return t;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 32;
        ts_tensor *nt = realloc(s->t, sizeof(ts_tensor) * (size_t)cap);
        if (!nt) {
            lethe_errf(err, LETHE_ENOMEM, "out of memory for tensor %s", name);
            return NULL;
        }
        s->t = nt;
        s->cap = cap;
    }
    t = &s->t[s->n];
    memset(t, 0, sizeof *t);
    t->nbytes = (size_t)numel(rank, shape) * ts_dtype_size(dtype);
    t->data = aligned_zeroed(t->nbytes);
    t->name = strdup(name);
    if (!t->data || !t->name) {
        free(t->data);
        free(t->name);
        lethe_errf(err, LETHE_ENOMEM, "out of memory for tensor %s (%zu bytes)", name, t->nbytes);
        return NULL;
    }
    t->dtype = dtype;
    t->rank = rank;
    if (rank > 0)
        memcpy(t->shape, shape, sizeof(int64_t) * (size_t)rank);
    s->n++;
    return t;
}

void ts_clear(ts_store *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->t[i].name);
        free(s->t[i].data);
    }
    free(s->t);
    memset(s, 0, sizeof *s);
}

int ts_copy(ts_store *dst, const ts_store *src, char *err) {
    ts_clear(dst);
    for (int i = 0; i < src->n; i++) {
        const ts_tensor *a = &src->t[i];
        ts_tensor *b = ts_put(dst, a->name, a->dtype, a->rank, a->shape, err);
        if (!b)
            return LETHE_ENOMEM;
        memcpy(b->data, a->data, a->nbytes);
    }
    return LETHE_OK;
}

int ts_save(const ts_store *s, const char *path, const char *const *meta, char *err) {
    st_tensor *ts = calloc((size_t)s->n + 1, sizeof *ts);
    st_kv kv[32];
    size_t nkv = 0;
    for (; meta && meta[2 * nkv] && nkv < 32; nkv++) {
        kv[nkv].key = meta[2 * nkv];
        kv[nkv].value = meta[2 * nkv + 1];
    }
    if (!ts)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory writing %s", path);
    for (int i = 0; i < s->n; i++) {
        ts[i].name = s->t[i].name;
        ts[i].dtype = (st_dtype)st_from_lethe(s->t[i].dtype);
        ts[i].rank = s->t[i].rank;
        memcpy(ts[i].shape, s->t[i].shape, sizeof(int64_t) * (size_t)s->t[i].rank);
        ts[i].data = s->t[i].data;
    }
    int rc = st_save(path, ts, (size_t)s->n, kv, nkv, err);
    free(ts);
    return rc;
}

int ts_load(ts_store *s, const char *path, char *err) {
    st_file *f = NULL;
    int rc = st_load(path, (size_t)8 << 30, &f, err);
    if (rc)
        return rc;
    ts_clear(s);
    for (size_t i = 0; i < f->ntensors && rc == LETHE_OK; i++) {
        const st_tensor *t = &f->tensors[i];
        int dt = st_to_lethe(t->dtype);
        if (dt < 0) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: tensor %s has dtype %s, which Lethe programs do not use", path, t->name,
                            st_dtype_name(t->dtype));
            break;
        }
        ts_tensor *d = ts_put(s, t->name, dt, t->rank, t->shape, err);
        if (!d)
            rc = LETHE_ENOMEM;
        else
            memcpy(d->data, t->data, d->nbytes);
    }
    st_free(f);
    if (rc)
        ts_clear(s);
    return rc;
}

double ts_distance2(const ts_store *a, const ts_store *b) {
    double sum = 0;
    for (int i = 0; i < a->n; i++) {
        const ts_tensor *x = &a->t[i], *y = ts_get(b, x->name);
        if (!y || y->nbytes != x->nbytes || x->dtype != y->dtype)
            continue;
        int64_t n = numel(x->rank, x->shape);
        if (x->dtype == LETHE_F32)
            for (int64_t k = 0; k < n; k++) {
                double d = (double)((float *)x->data)[k] - (double)((float *)y->data)[k];
                sum += d * d;
            }
        else if (x->dtype == LETHE_F64)
            for (int64_t k = 0; k < n; k++) {
                double d = ((double *)x->data)[k] - ((double *)y->data)[k];
                sum += d * d;
            }
    }
    return sum;
}

/* ---------------------------------------------------------------------------
 * frames */

static ts_store *model_store(const frame_models *models, int n, const char *binding) {
    for (int i = 0; i < n; i++)
        if (!models[i].binding || !strcmp(models[i].binding, binding))
            return models[i].store;
    return NULL;
}

lethe_frame *frame_new(const lethe_entry *e, const frame_models *models, int nmodels, ts_store *state, char *err) {
    lethe_frame *f = calloc(1, sizeof *f);
    if (!f || !(f->args = calloc((size_t)e->nargs + 1, sizeof(void *))) ||
        !(f->owned = calloc((size_t)e->nargs + 1, sizeof(void *)))) {
        frame_free(f);
        lethe_errf(err, LETHE_ENOMEM, "out of memory for a frame of %s", e->name);
        return NULL;
    }
    f->e = e;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        ts_tensor *t = NULL;
        if (a->kind == LETHE_PARAM || a->kind == LETHE_BUFFER) {
            ts_store *s = model_store(models, nmodels, a->binding);
            if (!s) {
                lethe_errf(err, LETHE_EARG, "entry %s reads model '%s', which this run does not provide", e->name, a->binding);
                frame_free(f);
                return NULL;
            }
            if (!(a->access & LETHE_READ) || ts_get(s, a->path))
                t = ts_put(s, a->path, a->dtype, a->rank, a->shape, err);
            else
                lethe_errf(err, LETHE_ENOTFOUND, "the model has no tensor %s (entry %s needs it): is the checkpoint from "
                                                 "another model?", a->path, e->name);
        } else if (a->kind == LETHE_STATE) {
            if (!state)
                lethe_errf(err, LETHE_EARG, "entry %s keeps state, but no state store was given", e->name);
            else
                t = ts_put(state, a->name, a->dtype, a->rank, a->shape, err);
        } else {
            size_t n = (size_t)numel(a->rank, a->shape) * ts_dtype_size(a->dtype);
            f->owned[i] = aligned_zeroed(n);
            if (!f->owned[i])
                lethe_errf(err, LETHE_ENOMEM, "out of memory for argument %s of %s", a->name, e->name);
            f->args[i] = f->owned[i];
            if (f->owned[i] && a->kind == LETHE_SCALAR && !isnan(a->scalar_default))
                frame_set_scalar(f, a->name, a->scalar_default);
            if (!f->owned[i]) {
                frame_free(f);
                return NULL;
            }
            continue;
        }
        if (!t) {
            frame_free(f);
            return NULL;
        }
        f->args[i] = t->data;
    }
    f->workspace = aligned_zeroed(e->workspace_bytes);
    if (!f->workspace) {
        lethe_errf(err, LETHE_ENOMEM, "out of memory for the %llu-byte workspace of %s",
                   (unsigned long long)e->workspace_bytes, e->name);
        frame_free(f);
        return NULL;
    }
    return f;
}

void frame_free(lethe_frame *f) {
    if (!f)
        return;
    for (int i = 0; f->owned && f->e && i < f->e->nargs; i++)
        free(f->owned[i]);
    free(f->owned);
    free(f->args);
    free(f->workspace);
    free(f);
}

void *frame_arg(const lethe_frame *f, const char *name) {
    for (int i = 0; i < f->e->nargs; i++)
        if (!strcmp(f->e->args[i].name, name))
            return f->args[i];
    return NULL;
}

int frame_set_scalar(lethe_frame *f, const char *name, double v) {
    for (int i = 0; i < f->e->nargs; i++) {
        const lethe_arg *a = &f->e->args[i];
        if (strcmp(a->name, name))
            continue;
        if (a->kind != LETHE_SCALAR)
            return LETHE_EARG;
        switch (a->dtype) {
        case LETHE_F32: *(float *)f->args[i] = (float)v; break;
        case LETHE_F64: *(double *)f->args[i] = v; break;
        case LETHE_I32: *(int32_t *)f->args[i] = (int32_t)v; break;
        default: *(uint8_t *)f->args[i] = v != 0; break;
        }
        return LETHE_OK;
    }
    return LETHE_ENOTFOUND;
}

int lethe_ctx_sync(lethe_ctx *ctx, char *err) {
    if (ctx->device && ctx->device->sync(ctx->device))
        return lethe_errf(err, LETHE_EIO, "%s: copying state back from the device failed (its message is above)",
                          ctx->device->name);
    return LETHE_OK;
}

int frame_call(lethe_frame *f, lethe_ctx *ctx, char *err) {
    int rc = f->e->fn(f->args, f->workspace, ctx);
    if (rc)
        return lethe_errf(err, LETHE_EARG, "entry %s failed with status %d", f->e->name, rc);
    return LETHE_OK;
}
