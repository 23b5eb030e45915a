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

/* ResNet-18 (graphs/models/resnet18.lth) from PyTorch state dicts. Lethe's
 * names: stem.w, stem.bn.{gamma,beta,mean,var}, layerN.i.{a,b}.w and .bn,
 * layerN.i.skip (the 1x1 projection), fc.{w,b}. The renames run in order on
 * a Lethe path, each once: the unit names first, then the batch-norm fields.
 * The shapes must still be the experiment's: torchvision's own resnet18 has
 * a 7x7 stride-2 stem (and a max-pool) where the CIFAR variant has a 3x3
 * one, so its conv1.weight is refused as mis-shaped; the usual CIFAR
 * adaptation (conv1 = 3x3 stride 1, maxpool = Identity) loads as it is.
 * BatchNorm's running_mean/running_var are Lethe's mean/var buffers (eval
 * mode uses them); num_batches_tracked counts steps and is skipped. A
 * DataParallel/DDP state dict puts everything under "module.". */
#define RESNET18_UNITS(skip_conv, skip_bn, head) \
    "stem.bn.", "bn1.", "stem.w", "conv1.weight", ".a.bn.", ".bn1.", ".a.w", ".conv1.weight", ".b.bn.", ".bn2.", \
    ".b.w", ".conv2.weight", ".skip.bn.", skip_bn, ".skip.w", skip_conv, "fc.w", head ".weight", "fc.b", head ".bias"
#define BN_FIELDS ".gamma", ".weight", ".beta", ".bias", ".mean", ".running_mean", ".var", ".running_var"

static const char *const torchvision_renames[] = {
    RESNET18_UNITS(".downsample.0.weight", ".downsample.1.", "fc"), BN_FIELDS, NULL};
static const char *const kuangliu_renames[] = {
    RESNET18_UNITS(".shortcut.0.weight", ".shortcut.1.", "linear"), BN_FIELDS, NULL};
static const char *const torch_prefixes[] = {"module.", NULL};
static const char *const torch_buffers[] = {".num_batches_tracked", NULL};

const hf_layout hf_torchvision_resnet18 = {
    .name = "torchvision ResNet-18",
    .renames = torchvision_renames,
    .prefixes = torch_prefixes,
    .buffers = torch_buffers,
};

const hf_layout hf_kuangliu_resnet18 = {
    .name = "kuangliu/pytorch-cifar ResNet-18",
    .renames = kuangliu_renames,
    .prefixes = torch_prefixes,
    .buffers = torch_buffers,
};

/* Lethe's own names, as `lethe train` saves them: nothing renamed or skipped. */
const hf_layout hf_lethe = {.name = "Lethe"};

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

/* Where the check reports each faulty tensor: the first message and a count
 * (hf_load's one-line error), and every line to `list` when there is one
 * (hf_list_faults). */
typedef struct faults {
    char first[LETHE_ERR_LEN];
    int n;
    FILE *list;
} faults;

static void fault(faults *fl, const char *line) {
    if (!fl->n++)
        snprintf(fl->first, sizeof fl->first, "%s", line);
    if (fl->list)
        fprintf(fl->list, "  %s\n", line);
}

/* Matches every model tensor to a file tensor (src[i], NULL for an optional
 * one the file lacks) and reports each missing, mis-shaped, mistyped or
 * extra tensor; an untied copy fails at once (-1, message in err). */
static int check_file(const ts_store *s, const st_file *f, const hf_layout *L, const char *const *optional,
                      const st_tensor **src, bool *used, const char **prefix_seen, faults *fl, char *err) {
    char line[LETHE_ERR_LEN];
    *prefix_seen = "";
    for (int i = 0; i < s->n; i++) {
        const ts_tensor *m = &s->t[i];
        const char *pfx;
        const st_tensor *t = match(f, L, m->name, &pfx);
        char a[96], b[96];
        if (!t) {
            bool opt = false;
            for (const char *const *o = optional; o && *o && !opt; o++)
                opt = starts_with(m->name, *o);
            char name[512];
            file_name(L, m->name, name, sizeof name);
            if (!opt && strcmp(name, m->name))
                snprintf(line, sizeof line, "no tensor for %s %s (%.160s in the file)", m->name,
                         ts_shape_text(m->rank, m->shape, a, sizeof a), name);
            else if (!opt)
                snprintf(line, sizeof line, "no tensor for %s %s", m->name, ts_shape_text(m->rank, m->shape, a, sizeof a));
            if (!opt)
                fault(fl, line);
            continue;
        }
        used[t - f->tensors] = true;
        if (*pfx)
            *prefix_seen = pfx;
        bool same = t->rank == m->rank && !memcmp(t->shape, m->shape, sizeof(int64_t) * (size_t)m->rank);
        if (!same) {
            snprintf(line, sizeof line, "tensor %s is %s in the file, %s in the model", t->name,
                     ts_shape_text(t->rank, t->shape, a, sizeof a), ts_shape_text(m->rank, m->shape, b, sizeof b));
            fault(fl, line);
            continue;
        }
        bool file_float = t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F32 || t->dtype == ST_F64;
        bool model_float = m->dtype == LETHE_F32 || m->dtype == LETHE_F64;
        if (!(model_float && file_float) && st_to_lethe(t->dtype) != m->dtype) {
            snprintf(line, sizeof line, "tensor %s has dtype %s, which the model's tensor cannot take", t->name,
                     st_dtype_name(t->dtype));
            fault(fl, line);
            continue;
        }
        src[i] = t;
    }
    for (size_t j = 0; j < f->ntensors; j++) {
        if (used[j])
            continue;
        int x = is_extra(f, L, &f->tensors[j], err);
        if (x < 0)
            return -1;
        if (x > 0) {
            char a[96];
            snprintf(line, sizeof line, "tensor %s %s is not in the model", f->tensors[j].name,
                     ts_shape_text(f->tensors[j].rank, f->tensors[j].shape, a, sizeof a));
            fault(fl, line);
        }
    }
    return 0;
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
    faults fl = {.list = NULL};
    const char *prefix_seen = "";
    char why[LETHE_ERR_LEN];
    if (check_file(s, f, L, optional, src, used, &prefix_seen, &fl, why)) {
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: %s", path, why);
        goto out;
    }
    if (fl.n) {
        char more[64] = "";
        if (fl.n > 1)
            snprintf(more, sizeof more, " (and %d more)", fl.n - 1);
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not this %s model: %s%s; a checkpoint of another configuration?", path,
                        L->name, fl.first, more);
        goto out;
    }
    for (int i = 0; i < s->n && rc == LETHE_OK; i++) {
        if (!src[i])
            continue;
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

int hf_list_faults(const ts_store *s, const char *path, const hf_layout *L, const char *const *optional, FILE *out,
                   char *err) {
    st_file *f = NULL;
    int rc = st_load(path, (size_t)16 << 30, &f, err);
    if (rc)
        return rc;
    const st_tensor **src = calloc((size_t)s->n + 1, sizeof *src);
    bool *used = calloc(f->ntensors + 1, 1);
    faults fl = {.list = out};
    const char *prefix_seen;
    if (!src || !used)
        rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    else if (check_file(s, f, L, optional, src, used, &prefix_seen, &fl, err))
        rc = LETHE_EFORMAT;
    free(src);
    free(used);
    st_free(f);
    return rc ? rc : fl.n;
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
