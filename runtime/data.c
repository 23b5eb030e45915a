/* data.c: see data.h */
#include "data.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fsutil.h"
#include "philox.h"

static const ds_limits default_limits = {
    .max_samples = (int64_t)1 << 26,
    .max_side = 8192,
    .max_file_bytes = (size_t)4 << 30,
    .max_decoded_bytes = (size_t)4 << 30,
};

static ds_limits limits_or_default(const ds_limits *lim) {
    ds_limits l = default_limits;
    if (lim) {
        if (lim->max_samples > 0) l.max_samples = lim->max_samples;
        if (lim->max_side > 0) l.max_side = lim->max_side;
        if (lim->max_file_bytes > 0) l.max_file_bytes = lim->max_file_bytes;
        if (lim->max_decoded_bytes > 0) l.max_decoded_bytes = lim->max_decoded_bytes;
    }
    return l;
}

void ds_free(lethe_dataset *ds) {
    if (!ds)
        return;
    free(ds->x);
    free(ds->y);
    free(ds->id);
    memset(ds, 0, sizeof *ds);
}

/* Allocates x, y and id for n samples of the given shape; ids = positions. */
static int ds_alloc(lethe_dataset *ds, int64_t n, int rank, int c, int h, int w, int classes, const char *source,
                    char *err) {
    memset(ds, 0, sizeof *ds);
    int64_t d = (int64_t)c * h * w;
    ds->x = malloc((size_t)(n * d) * sizeof(float) + 1);
    ds->y = malloc((size_t)n * sizeof(int32_t) + 1);
    ds->id = malloc((size_t)n * sizeof(int64_t) + 1);
    if (!ds->x || !ds->y || !ds->id) {
        ds_free(ds);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory for %" PRId64 " samples of %" PRId64 " values",
                          source, n, d);
    }
    ds->n = n;
    ds->rank = rank;
    ds->c = c;
    ds->h = h;
    ds->w = w;
    ds->d = d;
    ds->num_classes = classes;
    for (int64_t i = 0; i < n; i++)
        ds->id[i] = i;
    snprintf(ds->source, sizeof ds->source, "%s", source);
    return LETHE_OK;
}

/* =========================================================================
 * gzip
 * ========================================================================= */

int ds_gunzip(const void *in, size_t n, size_t max_out, const char *name, uint8_t **out, size_t *out_len,
              char *err) {
    *out = NULL;
    *out_len = 0;
    if (!name)
        name = "<memory>";
    const uint8_t *src = in;
    if (n < 2 || src[0] != 0x1f || src[1] != 0x8b) {
        if (n > max_out)
            return lethe_errf(err, LETHE_ELIMIT, "%s: %zu bytes is more than the limit of %zu", name, n, max_out);
        uint8_t *copy = malloc(n + 1);
        if (!copy)
            return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
        if (n)
            memcpy(copy, src, n);
        *out = copy;
        *out_len = n;
        return LETHE_OK;
    }
    /* First guess from the last member's ISIZE trailer (size mod 2^32),
     * trusted only up to 64x the input (real data compresses far less), so
     * a lying trailer cannot make us reserve much; the buffer grows by
     * doubling when the guess is short. */
    size_t cap = 1 << 16;
    if (n >= 18) {
        uint32_t isize = (uint32_t)src[n - 4] | (uint32_t)src[n - 3] << 8 | (uint32_t)src[n - 2] << 16 |
                         (uint32_t)src[n - 1] << 24;
        size_t bound = n > SIZE_MAX / 64 ? SIZE_MAX : n * 64;
        if (isize > cap && isize <= bound)
            cap = isize;
    }
    if (cap > max_out + 1)
        cap = max_out + 1;
    uint8_t *buf = malloc(cap + 1);
    if (!buf)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) {
        free(buf);
        return lethe_errf(err, LETHE_ENOMEM, "%s: cannot initialise zlib", name);
    }
    size_t in_pos = 0, len = 0;
    int rc = LETHE_OK;
    for (;;) {
        if (len == cap) {
            if (cap > max_out) {
                rc = lethe_errf(err, LETHE_ELIMIT, "%s: decompresses to more than the limit of %zu bytes", name,
                                max_out);
                break;
            }
            size_t ncap = cap > (max_out + 1) / 2 ? max_out + 1 : cap * 2;
            uint8_t *nb = realloc(buf, ncap + 1);
            if (!nb) {
                rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory decompressing", name);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t in_chunk = n - in_pos < (1u << 30) ? n - in_pos : (1u << 30);
        size_t out_chunk = cap - len < (1u << 30) ? cap - len : (1u << 30);
        z.next_in = (Bytef *)(src + in_pos);
        z.avail_in = (uInt)in_chunk;
        z.next_out = buf + len;
        z.avail_out = (uInt)out_chunk;
        int zr = inflate(&z, Z_NO_FLUSH);
        in_pos += in_chunk - z.avail_in;
        len += out_chunk - z.avail_out;
        if (zr == Z_STREAM_END) {
            if (in_pos == n)
                break;
            /* gzip allows concatenated members; anything else is garbage */
            if (n - in_pos >= 2 && src[in_pos] == 0x1f && src[in_pos + 1] == 0x8b) {
                inflateReset(&z);
                continue;
            }
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: %zu bytes of garbage after the gzip data", name, n - in_pos);
            break;
        }
        if (zr == Z_OK)
            continue;
        if (zr == Z_BUF_ERROR && len < cap)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: truncated gzip data (ends after %zu decompressed bytes)", name,
                            len);
        else if (zr == Z_BUF_ERROR)
            continue; /* output full: grow */
        else if (zr == Z_MEM_ERROR)
            rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory in zlib", name);
        else
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: corrupt gzip data (%s)", name, z.msg ? z.msg : "zlib error");
        break;
    }
    inflateEnd(&z);
    if (rc == LETHE_OK && len > max_out)
        rc = lethe_errf(err, LETHE_ELIMIT, "%s: decompresses to more than the limit of %zu bytes", name, max_out);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = len;
    return LETHE_OK;
}

/* =========================================================================
 * IDX
 * ========================================================================= */

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks an IDX header of unsigned bytes with `ndims` dimensions and that the
 * payload is exactly the declared size. */
static int idx_check(const uint8_t *b, size_t n, const char *name, int ndims, const char *what, const ds_limits *L,
                     uint32_t dims[3], char *err) {
    size_t hdr = 4 + 4 * (size_t)ndims;
    if (n < hdr)
        return lethe_errf(err, LETHE_EFORMAT, "%s: %zu bytes is too short for an IDX %s header (%zu bytes)", name, n,
                          what, hdr);
    uint32_t magic = be32(b), want = 0x800u | (uint32_t)ndims;
    if (magic != want)
        return lethe_errf(err, LETHE_EFORMAT, "%s: wrong magic 0x%08x, expected 0x%08x (IDX, unsigned bytes, %d "
                          "dimension%s: %s)", name, magic, want, ndims, ndims > 1 ? "s" : "", what);
    uint64_t total = 1;
    for (int i = 0; i < ndims; i++) {
        dims[i] = be32(b + 4 + 4 * i);
        if (dims[i] == 0)
            return lethe_errf(err, LETHE_EFORMAT, "%s: dimension %d is 0", name, i);
        if (total > ((uint64_t)1 << 62) / dims[i])
            return lethe_errf(err, LETHE_ELIMIT, "%s: declared dimensions overflow", name);
        total *= dims[i];
    }
    if ((int64_t)dims[0] > L->max_samples)
        return lethe_errf(err, LETHE_ELIMIT, "%s: declares %u samples, more than the limit of %" PRId64, name,
                          dims[0], L->max_samples);
    for (int i = 1; i < ndims; i++)
        if ((int64_t)dims[i] > L->max_side)
            return lethe_errf(err, LETHE_ELIMIT, "%s: declares a side of %u pixels, more than the limit of %" PRId64,
                              name, dims[i], L->max_side);
    if (total > L->max_decoded_bytes)
        return lethe_errf(err, LETHE_ELIMIT, "%s: declares %" PRIu64 " bytes of data, more than the limit of %zu",
                          name, total, L->max_decoded_bytes);
    uint64_t have = n - hdr;
    if (have < total)
        return lethe_errf(err, LETHE_EFORMAT, "%s: truncated: the header declares %" PRIu64 " bytes of %s but the file "
                          "has %" PRIu64, name, total, what, have);
    if (have > total)
        return lethe_errf(err, LETHE_EFORMAT, "%s: %" PRIu64 " bytes after the declared %" PRIu64 " bytes of %s "
                          "(wrong dimensions?)", name, have - total, total, what);
    return LETHE_OK;
}

static int idx_parse_raw(const uint8_t *img, size_t ni, const char *img_name, const uint8_t *lbl, size_t nl,
                         const char *lbl_name, int num_classes, const ds_limits *L, lethe_dataset *out, char *err) {
    uint32_t idim[3], ldim[3];
    int rc = idx_check(img, ni, img_name, 3, "images", L, idim, err);
    if (rc)
        return rc;
    rc = idx_check(lbl, nl, lbl_name, 1, "labels", L, ldim, err);
    if (rc)
        return rc;
    if (ldim[0] != idim[0])
        return lethe_errf(err, LETHE_EFORMAT, "%s has %u labels but %s has %u images", lbl_name, ldim[0], img_name,
                          idim[0]);
    const uint8_t *labels = lbl + 8;
    for (uint32_t i = 0; i < ldim[0]; i++)
        if (labels[i] >= num_classes)
            return lethe_errf(err, LETHE_EFORMAT, "%s: label %u of sample %u is not below the number of classes (%d)",
                              lbl_name, labels[i], i, num_classes);
    rc = ds_alloc(out, idim[0], 3, 1, (int)idim[1], (int)idim[2], num_classes, img_name, err);
    if (rc)
        return rc;
    const uint8_t *px = img + 16;
    size_t total = (size_t)idim[0] * idim[1] * idim[2];
    for (size_t i = 0; i < total; i++)
        out->x[i] = px[i];
    for (uint32_t i = 0; i < idim[0]; i++)
        out->y[i] = labels[i];
    return LETHE_OK;
}

int ds_parse_idx(const void *img, size_t img_len, const char *img_name, const void *lbl, size_t lbl_len,
                 const char *lbl_name, int num_classes, const ds_limits *lim, lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    if (!img_name) img_name = "<images>";
    if (!lbl_name) lbl_name = "<labels>";
    if (num_classes < 1 || num_classes > 256)
        return lethe_errf(err, LETHE_EARG, "%s: number of classes %d must be in 1..256 for byte labels", lbl_name,
                          num_classes);
    ds_limits L = limits_or_default(lim);
    uint8_t *ib = NULL, *lb = NULL;
    size_t in = 0, ln = 0;
    int rc = ds_gunzip(img, img_len, L.max_decoded_bytes, img_name, &ib, &in, err);
    if (!rc)
        rc = ds_gunzip(lbl, lbl_len, L.max_decoded_bytes, lbl_name, &lb, &ln, err);
    if (!rc)
        rc = idx_parse_raw(ib, in, img_name, lb, ln, lbl_name, num_classes, &L, out, err);
    free(ib);
    free(lb);
    return rc;
}

int ds_load_idx(const char *images_path, const char *labels_path, int num_classes, const ds_limits *lim,
                lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    ds_limits L = limits_or_default(lim);
    uint8_t *ib = NULL, *lb = NULL;
    size_t in = 0, ln = 0;
    int rc = fs_read_file(images_path, L.max_file_bytes, &ib, &in, err);
    if (!rc)
        rc = fs_read_file(labels_path, L.max_file_bytes, &lb, &ln, err);
    if (!rc)
        rc = ds_parse_idx(ib, in, images_path, lb, ln, labels_path, num_classes, &L, out, err);
    free(ib);
    free(lb);
    return rc;
}

int ds_load_mnist_dir(const char *dir, int train, lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    if (!dir)
        dir = DS_FASHION_MNIST_DIR;
    const char *split = train ? "train" : "t10k";
    char img[1024], lbl[1024];
    snprintf(img, sizeof img, "%s/%s-images-idx3-ubyte.gz", dir, split);
    if (!fs_exists(img))
        snprintf(img, sizeof img, "%s/%s-images-idx3-ubyte", dir, split);
    snprintf(lbl, sizeof lbl, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    if (!fs_exists(lbl))
        snprintf(lbl, sizeof lbl, "%s/%s-labels-idx1-ubyte", dir, split);
    if (!fs_exists(img))
        return lethe_errf(err, LETHE_ENOTFOUND, "%s: not found (nor with .gz)", img);
    if (!fs_exists(lbl))
        return lethe_errf(err, LETHE_ENOTFOUND, "%s: not found (nor with .gz)", lbl);
    return ds_load_idx(img, lbl, 10, NULL, out, err);
}

/* =========================================================================
 * CIFAR-10
 * ========================================================================= */

#define CIFAR_RECORD 3073

int ds_parse_cifar10(const void *buf, size_t len, const char *name, const ds_limits *lim, lethe_dataset *out,
                     char *err) {
    memset(out, 0, sizeof *out);
    if (!name)
        name = "<memory>";
    ds_limits L = limits_or_default(lim);
    uint8_t *raw = NULL;
    size_t n = 0;
    int rc = ds_gunzip(buf, len, L.max_decoded_bytes, name, &raw, &n, err);
    if (rc)
        return rc;
    if (n == 0 || n % CIFAR_RECORD != 0) {
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: %zu bytes is not a positive multiple of %d (CIFAR-10 records of "
                        "1 label byte + 3072 pixel bytes)", name, n, CIFAR_RECORD);
        free(raw);
        return rc;
    }
    int64_t count = (int64_t)(n / CIFAR_RECORD);
    if (count > L.max_samples) {
        free(raw);
        return lethe_errf(err, LETHE_ELIMIT, "%s: %" PRId64 " records, more than the limit of %" PRId64, name, count,
                          L.max_samples);
    }
    for (int64_t i = 0; i < count; i++)
        if (raw[(size_t)i * CIFAR_RECORD] >= 10) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: label %u of record %" PRId64 " is not below 10 (not a CIFAR-10 "
                            "file? CIFAR-100 records are 3074 bytes)", name, raw[(size_t)i * CIFAR_RECORD], i);
            free(raw);
            return rc;
        }
    rc = ds_alloc(out, count, 3, 3, 32, 32, 10, name, err);
    if (rc) {
        free(raw);
        return rc;
    }
    for (int64_t i = 0; i < count; i++) {
        const uint8_t *r = raw + (size_t)i * CIFAR_RECORD;
        out->y[i] = r[0];
        float *x = out->x + i * 3072;
        for (int j = 0; j < 3072; j++)
            x[j] = r[1 + j];
    }
    free(raw);
    return LETHE_OK;
}

int ds_load_cifar10_files(const char *const *paths, int npaths, const ds_limits *lim, lethe_dataset *out,
                          char *err) {
    memset(out, 0, sizeof *out);
    if (npaths < 1)
        return lethe_errf(err, LETHE_EARG, "CIFAR-10: no files given");
    ds_limits L = limits_or_default(lim);
    lethe_dataset all = {0};
    for (int f = 0; f < npaths; f++) {
        uint8_t *buf;
        size_t n;
        int rc = fs_read_file(paths[f], L.max_file_bytes, &buf, &n, err);
        if (rc) {
            ds_free(&all);
            return rc;
        }
        lethe_dataset part;
        rc = ds_parse_cifar10(buf, n, paths[f], &L, &part, err);
        free(buf);
        if (rc) {
            ds_free(&all);
            return rc;
        }
        if (f == 0) {
            all = part;
            continue;
        }
        int64_t total = all.n + part.n;
        if (total > L.max_samples) {
            ds_free(&all);
            ds_free(&part);
            return lethe_errf(err, LETHE_ELIMIT, "%s: more than %" PRId64 " samples in all", paths[f], L.max_samples);
        }
        float *x = realloc(all.x, (size_t)(total * 3072) * sizeof(float));
        if (x) all.x = x;
        int32_t *y = x ? realloc(all.y, (size_t)total * sizeof(int32_t)) : NULL;
        if (y) all.y = y;
        int64_t *id = y ? realloc(all.id, (size_t)total * sizeof(int64_t)) : NULL;
        if (id) all.id = id;
        if (!x || !y || !id) {
            ds_free(&all);
            ds_free(&part);
            return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", paths[f]);
        }
        memcpy(all.x + all.n * 3072, part.x, (size_t)(part.n * 3072) * sizeof(float));
        memcpy(all.y + all.n, part.y, (size_t)part.n * sizeof(int32_t));
        for (int64_t i = 0; i < part.n; i++)
            all.id[all.n + i] = all.n + i;
        all.n = total;
        ds_free(&part);
    }
    if (npaths > 1)
        snprintf(all.source, sizeof all.source, "%s (+%d more)", paths[0], npaths - 1);
    *out = all;
    return LETHE_OK;
}

int ds_load_cifar10_dir(const char *dir, int train, lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    char base[1024];
    snprintf(base, sizeof base, "%s", dir);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/%s", base, train ? "data_batch_1.bin" : "test_batch.bin");
    if (!fs_exists(probe)) {
        snprintf(probe, sizeof probe, "%s/cifar-10-batches-bin/%s", dir, train ? "data_batch_1.bin" : "test_batch.bin");
        if (fs_exists(probe))
            snprintf(base, sizeof base, "%s/cifar-10-batches-bin", dir);
    }
    char names[5][1100];
    const char *paths[5];
    int np = train ? 5 : 1;
    for (int i = 0; i < np; i++) {
        if (train)
            snprintf(names[i], sizeof names[i], "%s/data_batch_%d.bin", base, i + 1);
        else
            snprintf(names[i], sizeof names[i], "%s/test_batch.bin", base);
        if (!fs_exists(names[i]))
            return lethe_errf(err, LETHE_ENOTFOUND, "%s: not found (CIFAR-10 binary version expected)", names[i]);
        paths[i] = names[i];
    }
    return ds_load_cifar10_files(paths, np, NULL, out, err);
}

/* =========================================================================
 * synthetic data
 * ========================================================================= */

int ds_synthetic(const ds_synth *s, lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    if (s->n < 1 || s->n > default_limits.max_samples)
        return lethe_errf(err, LETHE_EARG, "synthetic: n = %" PRId64 " must be in 1..%" PRId64, s->n,
                          default_limits.max_samples);
    if (s->classes < 1 || s->classes > 65536)
        return lethe_errf(err, LETHE_EARG, "synthetic: %d classes (1..65536)", s->classes);
    if (s->rank != 1 && s->rank != 3)
        return lethe_errf(err, LETHE_EARG, "synthetic: rank %d (1: flat, 3: C x H x W)", s->rank);
    int c = s->c, h = s->rank == 3 ? s->h : 1, w = s->rank == 3 ? s->w : 1;
    if (c < 1 || h < 1 || w < 1 || c > (1 << 20) || h > 8192 || w > 8192)
        return lethe_errf(err, LETHE_EARG, "synthetic: bad shape %d x %d x %d", c, h, w);
    int64_t d = (int64_t)c * h * w;
    if (d > ((int64_t)1 << 28) || (double)s->n * (double)d * 4 > (double)default_limits.max_decoded_bytes)
        return lethe_errf(err, LETHE_ELIMIT, "synthetic: %" PRId64 " x %" PRId64 " values is too large", s->n, d);
    if (s->first_id < 0 || s->first_id + s->n > ((int64_t)1 << 32))
        return lethe_errf(err, LETHE_EARG, "synthetic: ids must stay below 2^32");
    if (s->kind != DS_SYNTH_BLOBS && s->kind != DS_SYNTH_LINEAR)
        return lethe_errf(err, LETHE_EARG, "synthetic: unknown kind %d", (int)s->kind);
    char src[160];
    snprintf(src, sizeof src, "synthetic:%s:seed=%" PRIu64, s->kind == DS_SYNTH_BLOBS ? "blobs" : "linear", s->seed);
    float *cls = malloc((size_t)(s->classes * d) * sizeof(float) + 1);
    if (!cls)
        return lethe_errf(err, LETHE_ENOMEM, "synthetic: out of memory");
    int rc = ds_alloc(out, s->n, s->rank, c, h, w, s->classes, src, err);
    if (rc) {
        free(cls);
        return rc;
    }
    /* per-class parameters: blob means (scaled by sep) or linear directions */
    double scale = s->kind == DS_SYNTH_BLOBS ? s->sep : 1.0;
    for (int k = 0; k < s->classes; k++)
        ds_gauss_noise(s->seed, DS_STREAM_SYNTH_CLASS, scale, k, d, cls + (int64_t)k * d);
    for (int64_t i = 0; i < s->n; i++) {
        int64_t id = s->first_id + i;
        float *x = out->x + i * d;
        out->id[i] = id;
        if (s->kind == DS_SYNTH_BLOBS) {
            int k = (int)(id % s->classes);
            ds_gauss_noise(s->seed, DS_STREAM_SYNTH_SAMPLE, s->noise, id, d, x);
            const float *mu = cls + (int64_t)k * d;
            for (int64_t j = 0; j < d; j++)
                x[j] += mu[j];
            out->y[i] = k;
        } else {
            ds_gauss_noise(s->seed, DS_STREAM_SYNTH_SAMPLE, 1.0, id, d, x);
            int best = 0;
            double best_v = -INFINITY;
            for (int k = 0; k < s->classes; k++) {
                const float *wk = cls + (int64_t)k * d;
                double dot = 0;
                for (int64_t j = 0; j < d; j++)
                    dot += (double)wk[j] * x[j];
                if (dot > best_v) {
                    best_v = dot;
                    best = k;
                }
            }
            const float *wb = cls + (int64_t)best * d;
            double nrm = 0;
            for (int64_t j = 0; j < d; j++)
                nrm += (double)wb[j] * wb[j];
            nrm = sqrt(nrm);
            if (nrm > 0)
                for (int64_t j = 0; j < d; j++)
                    x[j] += (float)(s->sep * wb[j] / nrm);
            out->y[i] = best;
        }
    }
    free(cls);
    return LETHE_OK;
}

/* =========================================================================
 * transforms
 * ========================================================================= */

void ds_divide(lethe_dataset *ds, float divisor) {
    int64_t total = ds->n * ds->d;
    for (int64_t i = 0; i < total; i++)
        ds->x[i] /= divisor;
}

/* Channels for normalisation: C for images, 1 for flat data. */
static int norm_channels(const lethe_dataset *ds) { return ds->rank == 3 ? ds->c : 1; }

int ds_norm_fit(const lethe_dataset *ds, ds_norm *out, char *err) {
    memset(out, 0, sizeof *out);
    int c = norm_channels(ds);
    if (c > DS_MAX_CHANNELS)
        return lethe_errf(err, LETHE_EARG, "%s: %d channels, normalisation supports at most %d", ds->source, c,
                          DS_MAX_CHANNELS);
    if (ds->n < 1)
        return lethe_errf(err, LETHE_EARG, "%s: cannot fit normalisation on an empty data set", ds->source);
    int64_t plane = ds->d / c;
    out->c = c;
    for (int ch = 0; ch < c; ch++) {
        /* two passes in float64: mean first, then squared deviations, which
         * stays accurate where sum-of-squares would cancel */
        double sum = 0;
        for (int64_t i = 0; i < ds->n; i++) {
            const float *p = ds->x + i * ds->d + ch * plane;
            for (int64_t j = 0; j < plane; j++)
                sum += p[j];
        }
        double count = (double)ds->n * (double)plane, mean = sum / count, ss = 0;
        for (int64_t i = 0; i < ds->n; i++) {
            const float *p = ds->x + i * ds->d + ch * plane;
            for (int64_t j = 0; j < plane; j++)
                ss += (p[j] - mean) * (p[j] - mean);
        }
        out->mean[ch] = (float)mean;
        out->std[ch] = (float)sqrt(ss / count);
    }
    return LETHE_OK;
}

int ds_norm_apply(lethe_dataset *ds, const ds_norm *nm, char *err) {
    int c = norm_channels(ds);
    if (nm->c != c)
        return lethe_errf(err, LETHE_EARG, "%s: normalisation has %d channels, the data %d", ds->source, nm->c, c);
    for (int ch = 0; ch < c; ch++)
        if (!(nm->std[ch] > 0) || !isfinite(nm->std[ch]) || !isfinite(nm->mean[ch]))
            return lethe_errf(err, LETHE_EARG, "%s: channel %d has std %g (constant channel?); cannot normalise",
                              ds->source, ch, (double)nm->std[ch]);
    int64_t plane = ds->d / c;
    for (int64_t i = 0; i < ds->n; i++)
        for (int ch = 0; ch < c; ch++) {
            float *p = ds->x + i * ds->d + ch * plane;
            float m = nm->mean[ch], s = nm->std[ch];
            for (int64_t j = 0; j < plane; j++)
                p[j] = (p[j] - m) / s; /* as torchvision's Normalize: sub, then div */
        }
    for (int ch = 0; ch < c && ch < DS_MAX_CHANNELS; ch++)
        ds->pad[ch] = (0.0f - nm->mean[ch]) / nm->std[ch];
    ds->normalized = 1;
    return LETHE_OK;
}

/* =========================================================================
 * order and subsets
 * ========================================================================= */

void ds_shuffle(int64_t *idx, int64_t n, uint64_t seed, uint32_t stream, uint32_t epoch) {
    for (int64_t i = n - 1; i > 0; i--) {
        uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), stream, epoch};
        philox_block b = philox4x32_10(ctr, seed);
        uint64_t u = (uint64_t)b.v[0] | (uint64_t)b.v[1] << 32;
        int64_t j = (int64_t)(((unsigned __int128)u * (uint64_t)(i + 1)) >> 64);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

void ds_permutation(int64_t *idx, int64_t n, uint64_t seed, uint32_t stream, uint32_t epoch) {
    for (int64_t i = 0; i < n; i++)
        idx[i] = i;
    ds_shuffle(idx, n, seed, stream, epoch);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ds_random_subset_of(const int64_t *pool, int64_t npool, int64_t k, uint64_t seed, int64_t *out, char *err) {
    if (k < 0 || k > npool)
        return lethe_errf(err, LETHE_EARG, "random subset: cannot choose %" PRId64 " of %" PRId64, k, npool);
    int64_t *perm = malloc((size_t)npool * sizeof *perm + 1);
    if (!perm)
        return lethe_errf(err, LETHE_ENOMEM, "random subset: out of memory");
    ds_permutation(perm, npool, seed, DS_STREAM_SUBSET, 0);
    for (int64_t i = 0; i < k; i++)
        out[i] = pool ? pool[perm[i]] : perm[i];
    free(perm);
    qsort(out, (size_t)k, sizeof *out, cmp_i64);
    return LETHE_OK;
}

int ds_random_subset(int64_t n, int64_t k, uint64_t seed, int64_t *out, char *err) {
    return ds_random_subset_of(NULL, n, k, seed, out, err);
}

int ds_indices_of_class(const lethe_dataset *ds, int cls, int64_t **out, int64_t *m, char *err) {
    *out = NULL;
    *m = 0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < ds->n; i++)
        cnt += ds->y[i] == cls;
    int64_t *r = malloc((size_t)cnt * sizeof *r + 1);
    if (!r)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", ds->source);
    int64_t k = 0;
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->y[i] == cls)
            r[k++] = i;
    *out = r;
    *m = cnt;
    return LETHE_OK;
}

int ds_complement(int64_t n, const int64_t *idx, int64_t k, int64_t **out, int64_t *m, char *err) {
    *out = NULL;
    *m = 0;
    uint8_t *mark = calloc((size_t)n + 1, 1);
    if (!mark)
        return lethe_errf(err, LETHE_ENOMEM, "complement: out of memory");
    for (int64_t i = 0; i < k; i++) {
        if (idx[i] < 0 || idx[i] >= n) {
            free(mark);
            return lethe_errf(err, LETHE_EARG, "complement: index %" PRId64 " is outside 0..%" PRId64, idx[i], n - 1);
        }
        mark[idx[i]] = 1;
    }
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; i++)
        cnt += !mark[i];
    int64_t *r = malloc((size_t)cnt * sizeof *r + 1);
    if (!r) {
        free(mark);
        return lethe_errf(err, LETHE_ENOMEM, "complement: out of memory");
    }
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++)
        if (!mark[i])
            r[j++] = i;
    free(mark);
    *out = r;
    *m = cnt;
    return LETHE_OK;
}

int ds_mask_from_indices(int64_t n, const int64_t *idx, int64_t k, uint8_t **mask, char *err) {
    *mask = NULL;
    if (n < 0)
        return lethe_errf(err, LETHE_EARG, "mask: negative size");
    uint8_t *m = calloc((size_t)n + 1, 1);
    if (!m)
        return lethe_errf(err, LETHE_ENOMEM, "mask: out of memory");
    for (int64_t i = 0; i < k; i++) {
        if (idx[i] < 0 || idx[i] >= n) {
            free(m);
            return lethe_errf(err, LETHE_EARG, "mask: index %" PRId64 " is outside 0..%" PRId64, idx[i], n - 1);
        }
        m[idx[i]] = 1;
    }
    *mask = m;
    return LETHE_OK;
}

int ds_subset(const lethe_dataset *src, const int64_t *idx, int64_t k, lethe_dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    if (k < 0)
        return lethe_errf(err, LETHE_EARG, "%s: negative subset size", src->source);
    for (int64_t i = 0; i < k; i++)
        if (idx[i] < 0 || idx[i] >= src->n)
            return lethe_errf(err, LETHE_EARG, "%s: subset index %" PRId64 " is outside 0..%" PRId64, src->source,
                              idx[i], src->n - 1);
    char name[160];
    snprintf(name, sizeof name, "%.120s[subset of %" PRId64 "]", src->source, k);
    int rc = ds_alloc(out, k, src->rank, src->c, src->h, src->w, src->num_classes, name, err);
    if (rc)
        return rc;
    for (int64_t i = 0; i < k; i++) {
        int64_t p = idx[i];
        memcpy(out->x + i * src->d, src->x + p * src->d, (size_t)src->d * sizeof(float));
        out->y[i] = src->y[p];
        out->id[i] = src->id ? src->id[p] : p;
    }
    out->normalized = src->normalized;
    memcpy(out->pad, src->pad, sizeof out->pad);
    out->token_column = src->token_column;
    return LETHE_OK;
}

int ds_append(lethe_dataset *ds, const float *x, const int32_t *y, int64_t k, int64_t first_id, char *err) {
    if (k < 0)
        return lethe_errf(err, LETHE_EARG, "%s: cannot append %" PRId64 " samples", ds->source, k);
    lethe_dataset out;
    int rc = ds_alloc(&out, ds->n + k, ds->rank, ds->c, ds->h, ds->w, ds->num_classes, ds->source, err);
    if (rc)
        return rc;
    memcpy(out.x, ds->x, (size_t)(ds->n * ds->d) * sizeof(float));
    memcpy(out.x + ds->n * ds->d, x, (size_t)(k * ds->d) * sizeof(float));
    memcpy(out.y, ds->y, (size_t)ds->n * sizeof(int32_t));
    memcpy(out.y + ds->n, y, (size_t)k * sizeof(int32_t));
    memcpy(out.id, ds->id, (size_t)ds->n * sizeof(int64_t));
    for (int64_t i = 0; i < k; i++)
        out.id[ds->n + i] = first_id + i;
    out.normalized = ds->normalized;
    memcpy(out.pad, ds->pad, sizeof out.pad);
    out.token_column = ds->token_column;
    ds_free(ds);
    *ds = out;
    return LETHE_OK;
}

int ds_split(const lethe_dataset *src, int64_t n_first, uint64_t seed, lethe_dataset *a, lethe_dataset *b,
             char *err) {
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    if (n_first < 0 || n_first > src->n)
        return lethe_errf(err, LETHE_EARG, "%s: cannot split %" PRId64 " samples at %" PRId64, src->source, src->n,
                          n_first);
    int64_t *perm = malloc((size_t)src->n * sizeof *perm + 1);
    if (!perm)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", src->source);
    ds_permutation(perm, src->n, seed, DS_STREAM_SUBSET, 0);
    /* each part keeps the original order: easier to read and to diff */
    qsort(perm, (size_t)n_first, sizeof *perm, cmp_i64);
    qsort(perm + n_first, (size_t)(src->n - n_first), sizeof *perm, cmp_i64);
    int rc = ds_subset(src, perm, n_first, a, err);
    if (!rc)
        rc = ds_subset(src, perm + n_first, src->n - n_first, b, err);
    if (rc) {
        ds_free(a);
        ds_free(b);
    }
    free(perm);
    return rc;
}

void ds_label_counts(const lethe_dataset *ds, int64_t *counts) {
    for (int k = 0; k < ds->num_classes; k++)
        counts[k] = 0;
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->y[i] >= 0 && ds->y[i] < ds->num_classes)
            counts[ds->y[i]]++;
}

void ds_hash(const lethe_dataset *ds, char hex[65]) {
    fs_sha256 s;
    fs_sha256_init(&s);
    int64_t hdr[6] = {ds->n, ds->rank, ds->c, ds->h, ds->w, ds->num_classes};
    fs_sha256_update(&s, hdr, sizeof hdr);
    if (ds->n > 0) {
        fs_sha256_update(&s, ds->y, (size_t)ds->n * sizeof(int32_t));
        if (ds->id)
            fs_sha256_update(&s, ds->id, (size_t)ds->n * sizeof(int64_t));
        fs_sha256_update(&s, ds->x, (size_t)(ds->n * ds->d) * sizeof(float));
    }
    uint8_t dg[32];
    fs_sha256_final(&s, dg);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
}

/* =========================================================================
 * poisons and batches
 * ========================================================================= */

void ds_gauss_noise(uint64_t seed, uint32_t stream, double eps, int64_t id, int64_t d, float *out) {
    /* One Philox block yields four normals (two Box-Muller pairs); the result
     * is identical to eps * philox_normal_at(seed, stream, id, j) for each j. */
    for (int64_t g = 0; g * 4 < d; g++) {
        philox_block b = philox_tensor_block(seed, stream, (uint64_t)id, (uint64_t)g * 4);
        double z[4] = {philox_normal_pair(b.v[0], b.v[1], 0), philox_normal_pair(b.v[0], b.v[1], 1),
                       philox_normal_pair(b.v[2], b.v[3], 0), philox_normal_pair(b.v[2], b.v[3], 1)};
        for (int l = 0; l < 4 && g * 4 + l < d; l++)
            out[g * 4 + l] = (float)(eps * z[l]);
    }
}

static int sample_poisoned(const ds_poison *p, int64_t id, int *yes, const char *src, char *err) {
    *yes = 0;
    if (!p || p->eps == 0)
        return LETHE_OK;
    if (!p->mask) {
        *yes = 1;
        return LETHE_OK;
    }
    if (id < 0 || id >= p->mask_n)
        return lethe_errf(err, LETHE_EARG, "%s: sample id %" PRId64 " is outside the poison mask (%" PRId64
                          " entries)", src, id, p->mask_n);
    *yes = p->mask[id] != 0;
    return LETHE_OK;
}

int ds_batch(const lethe_dataset *ds, const int64_t *idx, int64_t b, const ds_poison *poison, const ds_aug *aug,
             float *x, int32_t *y, char *err) {
    int augment = aug && (aug->crop_pad > 0 || aug->flip);
    if (augment && ds->rank != 3)
        return lethe_errf(err, LETHE_EARG, "%s: crop/flip need images (C x H x W), the data are flat", ds->source);
    if (augment && (aug->crop_pad < 0 || aug->crop_pad > 4096))
        return lethe_errf(err, LETHE_EARG, "%s: crop padding %d out of range", ds->source, aug->crop_pad);
    if (poison && !(poison->eps >= 0) )
        return lethe_errf(err, LETHE_EARG, "%s: poison eps %g must be >= 0", ds->source, poison->eps);
    float *tmp = NULL, *noise = NULL;
    if (augment && !(tmp = malloc((size_t)ds->d * sizeof(float))))
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", ds->source);
    if (poison && poison->eps > 0 && !(noise = malloc((size_t)ds->d * sizeof(float)))) {
        free(tmp);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", ds->source);
    }
    int rc = LETHE_OK;
    for (int64_t k = 0; k < b && !rc; k++) {
        int64_t pos = idx[k];
        if (pos < 0 || pos >= ds->n) {
            rc = lethe_errf(err, LETHE_EARG, "%s: batch index %" PRId64 " is outside 0..%" PRId64, ds->source, pos,
                            ds->n - 1);
            break;
        }
        int64_t id = ds->id ? ds->id[pos] : pos;
        int poisoned;
        rc = sample_poisoned(poison, id, &poisoned, ds->source, err);
        if (rc)
            break;
        float *dst = x + k * ds->d;
        float *work = augment ? tmp : dst;
        memcpy(work, ds->x + pos * ds->d, (size_t)ds->d * sizeof(float));
        if (poisoned) {
            ds_gauss_noise(poison->seed, DS_STREAM_POISON, poison->eps, id, ds->d, noise);
            for (int64_t j = 0; j < ds->d; j++)
                if (!ds->token_column || j % ds->w)
                    work[j] += noise[j];
        }
        y[k] = ds->y[pos];
        if (!augment)
            continue;
        int p = aug->crop_pad, dx = 0, dy = 0, flip = 0;
        uint32_t ctr[4] = {(uint32_t)id, (uint32_t)((uint64_t)id >> 32), DS_STREAM_AUGMENT, aug->epoch};
        philox_block r = philox4x32_10(ctr, aug->seed);
        if (p > 0) {
            dx = (int)(((uint64_t)r.v[0] * (uint64_t)(2 * p + 1)) >> 32) - p;
            dy = (int)(((uint64_t)r.v[1] * (uint64_t)(2 * p + 1)) >> 32) - p;
        }
        if (aug->flip)
            flip = (int)(r.v[2] >> 31);
        int H = ds->h, W = ds->w;
        for (int c = 0; c < ds->c; c++) {
            float fill = c < DS_MAX_CHANNELS ? ds->pad[c] : 0.0f;
            const float *in = work + (int64_t)c * H * W;
            float *o = dst + (int64_t)c * H * W;
            for (int yy = 0; yy < H; yy++) {
                int sy = yy + dy;
                for (int xx = 0; xx < W; xx++) {
                    int sx = (flip ? W - 1 - xx : xx) + dx;
                    o[(int64_t)yy * W + xx] =
                        (sy >= 0 && sy < H && sx >= 0 && sx < W) ? in[(int64_t)sy * W + sx] : fill;
                }
            }
        }
    }
    free(tmp);
    free(noise);
    return rc;
}
