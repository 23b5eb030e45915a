/* hf.c: loading and saving other frameworks' checkpoint layouts (see hf.h). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf.h"
#include "safetensors.h"

static const char *const gpt2_prefixes[] = {"transformer.", NULL};
static const char *const gpt2_buffers[] = {".attn.bias", ".attn.masked_bias", NULL};
static const char *const gpt2_tied[] = {"lm_head.weight", "wte.weight", NULL};

const hf_layout hf_gpt2 = {
    .name = "GPT-2",
    .prefixes = gpt2_prefixes,
    .buffers = gpt2_buffers,
    .tied = gpt2_tied,
};

static bool starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* the file's name for a Lethe path: each rename applied once, in order */
static void file_name(const hf_layout *L, const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    for (const char *const *r = L->renames; r && r[0]; r += 2) {
        char *at = strstr(out, r[0]);
        if (!at)
            continue;
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%.*s%s%s", (int)(at - out), out, r[1], at + strlen(r[0]));
        snprintf(out, n, "%s", tmp);
    }
}

/* the file tensor for model path `path`: its file name as is, with a prefix
 * added, or with the model's prefix removed; *prefix gets what the file adds */
static const st_tensor *match(const st_file *f, const hf_layout *L, const char *path, const char **prefix) {
    char name[512], alt[600];
    file_name(L, path, name, sizeof name);
    *prefix = "";
    const st_tensor *t = st_find(f, name);
    for (const char *const *p = L->prefixes; !t && p && *p; p++) {
        if (starts_with(name, *p)) {
            t = st_find(f, name + strlen(*p));
        } else {
            snprintf(alt, sizeof alt, "%s%s", *p, name);
            if ((t = st_find(f, alt)))
                *prefix = *p;
        }
    }
    return t;
}

static const char *strip_prefix(const hf_layout *L, const char *name) {
    for (const char *const *p = L->prefixes; p && *p; p++)
        if (starts_with(name, *p))
            return name + strlen(*p);
    return name;
}

/* a file tensor no model tensor took: a buffer, a tied copy (0), or not (1);
 * an untied copy is an error of its own (-1, message in err) */
static int is_extra(const st_file *f, const hf_layout *L, const st_tensor *t, char *err) {
    for (const char *const *b = L->buffers; b && *b; b++)
        if (ends_with(t->name, *b))
            return 0;
    const char *bare = strip_prefix(L, t->name);
    for (const char *const *p = L->tied; p && p[0]; p += 2) {
        if (strcmp(bare, p[0]))
            continue;
        const st_tensor *src = NULL;
        for (size_t i = 0; i < f->ntensors && !src; i++)
            if (!strcmp(strip_prefix(L, f->tensors[i].name), p[1]))
                src = &f->tensors[i];
        bool same = src && src->dtype == t->dtype && src->rank == t->rank && src->nbytes == t->nbytes &&
                    !memcmp(src->shape, t->shape, sizeof(int64_t) * (size_t)t->rank) &&
                    !memcmp(src->data, t->data, t->nbytes);
        if (same)
            return 0;
        lethe_errf(err, LETHE_EFORMAT, "tensor %s is not a copy of %s: an untied head, which the %s model does not have",
                   t->name, p[1], L->name);
        return -1;
    }
    return 1;
}

int hf_load(ts_store *s, const char *path, const hf_layout *L, const char *const *optional,
            char file_prefix[HF_PREFIX_LEN], char *err) {
    st_file *f = NULL;
    int rc = st_load(path, (size_t)16 << 30, &f, err);
    if (rc)
        return rc;
    const st_tensor **src = calloc((size_t)s->n + 1, sizeof *src);
    bool *used = calloc(f->ntensors + 1, 1);
    if (!src || !used) {
        rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    /* check everything first, so a refused file changes nothing */
    char first[LETHE_ERR_LEN] = "";
    int bad = 0;
    const char *prefix_seen = "";
    for (int i = 0; i < s->n; i++) {
        const ts_tensor *m = &s->t[i];
        const char *pfx;
        const st_tensor *t = match(f, L, m->name, &pfx);
        char a[96], b[96];
        if (!t) {
            bool opt = false;
            for (const char *const *o = optional; o && *o && !opt; o++)
                opt = starts_with(m->name, *o);
            if (!opt && !bad++)
                snprintf(first, sizeof first, "no tensor for %s %s", m->name, ts_shape_text(m->rank, m->shape, a, sizeof a));
            continue;
        }
        used[t - f->tensors] = true;
        if (*pfx)
            prefix_seen = pfx;
        bool same = t->rank == m->rank && !memcmp(t->shape, m->shape, sizeof(int64_t) * (size_t)m->rank);
        if (!same) {
            if (!bad++)
                snprintf(first, sizeof first, "tensor %s is %s in the file, %s in the model", t->name,
                         ts_shape_text(t->rank, t->shape, a, sizeof a), ts_shape_text(m->rank, m->shape, b, sizeof b));
            continue;
        }
        bool file_float = t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F32 || t->dtype == ST_F64;
        bool model_float = m->dtype == LETHE_F32 || m->dtype == LETHE_F64;
        if (!(model_float && file_float) && st_to_lethe(t->dtype) != m->dtype) {
            if (!bad++)
                snprintf(first, sizeof first, "tensor %s has dtype %s, which the model's tensor cannot take", t->name,
                         st_dtype_name(t->dtype));
            continue;
        }
        src[i] = t;
    }
    for (size_t j = 0; j < f->ntensors; j++) {
        if (used[j])
            continue;
        char why[LETHE_ERR_LEN];
        int x = is_extra(f, L, &f->tensors[j], why);
        if (x < 0) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: %s", path, why);
            goto out;
        }
        if (x > 0 && !bad++) {
            char a[96];
            snprintf(first, sizeof first, "tensor %s %s is not in the model", f->tensors[j].name,
                     ts_shape_text(f->tensors[j].rank, f->tensors[j].shape, a, sizeof a));
        }
    }
    if (bad) {
        char more[64] = "";
        if (bad > 1)
            snprintf(more, sizeof more, " (and %d more)", bad - 1);
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not this %s model: %s%s; a checkpoint of another configuration?", path,
                        L->name, first, more);
        goto out;
    }
    for (int i = 0; i < s->n && rc == LETHE_OK; i++) {
        if (!src[i])
            continue;
        char why[LETHE_ERR_LEN];
        rc = st_read_as(src[i], (st_dtype)st_from_lethe(s->t[i].dtype), s->t[i].data, st_numel(src[i]), why);
        if (rc)
            lethe_errf(err, rc, "%s: %s", path, why);
    }
    if (file_prefix)
        snprintf(file_prefix, HF_PREFIX_LEN, "%s", prefix_seen);
out:
    free(src);
    free(used);
    st_free(f);
    return rc;
}

int hf_save(const ts_store *s, const char *path, const hf_layout *L, const char *prefix, char *err) {
    st_tensor *ts = calloc((size_t)s->n + 1, sizeof *ts);
    char (*names)[512] = calloc((size_t)s->n + 1, sizeof *names);
    int rc = LETHE_OK;
    if (!ts || !names) {
        rc = lethe_errf(err, LETHE_ENOMEM, "out of memory writing %s", path);
        goto out;
    }
    for (int i = 0; i < s->n; i++) {
        char name[512];
        file_name(L, s->t[i].name, name, sizeof name);
        snprintf(names[i], sizeof names[i], "%s%s", prefix ? prefix : "", name);
        ts[i].name = names[i];
        ts[i].dtype = (st_dtype)st_from_lethe(s->t[i].dtype);
        ts[i].rank = s->t[i].rank;
        memcpy(ts[i].shape, s->t[i].shape, sizeof(int64_t) * (size_t)s->t[i].rank);
        ts[i].data = s->t[i].data;
    }
    const st_kv meta[] = {{"format", "pt"}};
    rc = st_save(path, ts, (size_t)s->n, meta, 1, err);
out:
    free(ts);
    free(names);
    return rc;
}
