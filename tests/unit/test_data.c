/* test_data.c: the data loaders on the real Fashion-MNIST (when the Debian
 * package is installed) and on broken files the test writes itself, the
 * synthetic sets, normalisation, shuffling, augmentation and Gaussian-poison
 * noise (determinism, bit-identical regeneration, moments, ordering relative
 * to augmentation), subsets and splits. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "data.h"
#include "fsutil.h"
#include "harness.h"
#include "philox.h"

static char dir[512];

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An IDX image file of n images h x w with pixel (i, y, x) = (i + y * w + x) % 256,
 * declaring dims (dn, dh, dw) and magic. */
static uint8_t *idx_images(uint32_t magic, uint32_t dn, uint32_t dh, uint32_t dw, size_t npix, size_t *len) {
    uint8_t *b = malloc(16 + npix + 1);
    put_be32(b, magic);
    put_be32(b + 4, dn);
    put_be32(b + 8, dh);
    put_be32(b + 12, dw);
    for (size_t i = 0; i < npix; i++)
        b[16 + i] = (uint8_t)(i * 7 % 256);
    *len = 16 + npix;
    return b;
}

static uint8_t *idx_labels(uint32_t magic, uint32_t n, size_t nlab, int bad_at, size_t *len) {
    uint8_t *b = malloc(8 + nlab + 1);
    put_be32(b, magic);
    put_be32(b + 4, n);
    for (size_t i = 0; i < nlab; i++)
        b[8 + i] = (uint8_t)(i % 10);
    if (bad_at >= 0)
        b[8 + bad_at] = 12;
    *len = 8 + nlab;
    return b;
}

static void write_file(const char *path, const void *data, size_t n) {
    char err[LETHE_ERR_LEN];
    if (fs_write_atomic(path, data, n, err))
        printf("# cannot write %s: %s\n", path, err);
}

static void write_gz(const char *path, const void *data, size_t n) {
    gzFile g = gzopen(path, "wb");
    gzwrite(g, data, (unsigned)n);
    gzclose(g);
}

static char *tmp(const char *name) {
    static char bufs[8][700];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

/* ---- real Fashion-MNIST ---------------------------------------------------------- */

static void test_fashion_mnist(void) {
    char probe[600];
    snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte.gz", DS_FASHION_MNIST_DIR);
    if (!fs_exists(probe)) {
        th_skip("data_fashion_mnist_real", "%s not found (apt-get install dataset-fashion-mnist)", probe);
        return;
    }
    lethe_dataset tr, te;
    char err[LETHE_ERR_LEN];
    int rc = ds_load_mnist_dir(NULL, 1, &tr, err);
    if (rc) {
        th_fail("data_fashion_mnist_real", "%s", err);
        return;
    }
    int rc2 = ds_load_mnist_dir(NULL, 0, &te, err);
    int64_t h[10], ht[10];
    ds_label_counts(&tr, h);
    ds_label_counts(&te, ht);
    int balanced = 1;
    for (int k = 0; k < 10; k++)
        balanced &= h[k] == 6000 && (rc2 || ht[k] == 1000);
    float lo = 1e9f, hi = -1e9f;
    int integral = 1;
    for (int64_t i = 0; i < tr.n * tr.d; i++) {
        lo = fminf(lo, tr.x[i]);
        hi = fmaxf(hi, tr.x[i]);
        integral &= tr.x[i] == floorf(tr.x[i]);
    }
    th_check(rc2 == 0 && tr.n == 60000 && te.n == 10000 && tr.rank == 3 && tr.c == 1 && tr.h == 28 && tr.w == 28 &&
                 tr.d == 784 && tr.num_classes == 10 && balanced && lo == 0 && hi == 255 && integral,
             "data_fashion_mnist_real", "n %" PRId64 "/%" PRId64 " shape %dx%dx%d range [%g, %g] balanced %d (%s)",
             tr.n, te.n, tr.c, tr.h, tr.w, lo, hi, balanced, rc2 ? err : "");
    /* [0, 1] and the well-known normalisation constants 0.2860 / 0.3530 */
    ds_divide(&tr, 255);
    ds_norm nm;
    ds_norm_fit(&tr, &nm, err);
    int ok = nm.c == 1 && fabs(nm.mean[0] - 0.2860) < 5e-4 && fabs(nm.std[0] - 0.3530) < 5e-4;
    ok = ok && ds_norm_apply(&tr, &nm, err) == 0;
    ds_norm after;
    ds_norm_fit(&tr, &after, err);
    ok = ok && fabs(after.mean[0]) < 1e-4 && fabs(after.std[0] - 1) < 1e-4 && fabsf(tr.pad[0] + 0.2860f / 0.3530f) < 1e-2f;
    th_check(ok, "data_fashion_mnist_normalisation", "mean %g std %g, after %g %g", nm.mean[0], nm.std[0],
             after.mean[0], after.std[0]);
    ds_free(&tr);
    ds_free(&te);
}

/* ---- IDX files written here ------------------------------------------------------------ */

static void test_idx_valid(void) {
    size_t il, ll;
    uint8_t *img = idx_images(0x803, 5, 3, 4, 5 * 12, &il);
    uint8_t *lbl = idx_labels(0x801, 5, 5, -1, &ll);
    write_file(tmp("ok-images"), img, il);
    write_file(tmp("ok-labels"), lbl, ll);
    write_gz(tmp("ok-images.gz"), img, il);
    write_gz(tmp("ok-labels.gz"), lbl, ll);
    lethe_dataset a, b;
    char err[LETHE_ERR_LEN];
    int rc1 = ds_load_idx(tmp("ok-images"), tmp("ok-labels"), 10, NULL, &a, err);
    int rc2 = ds_load_idx(tmp("ok-images.gz"), tmp("ok-labels.gz"), 10, NULL, &b, err);
    int ok = rc1 == 0 && rc2 == 0 && a.n == 5 && a.h == 3 && a.w == 4 && a.c == 1 && a.num_classes == 10;
    ok = ok && !memcmp(a.x, b.x, 60 * sizeof(float)) && !memcmp(a.y, b.y, 5 * sizeof(int32_t));
    for (int i = 0; ok && i < 60; i++)
        ok = a.x[i] == (float)(i * 7 % 256);
    for (int i = 0; ok && i < 5; i++)
        ok = a.y[i] == i && a.id[i] == i;
    th_check(ok, "data_idx_raw_and_gzip", "rc %d %d (%s)", rc1, rc2, err);
    if (!rc1) ds_free(&a);
    if (!rc2) ds_free(&b);
    free(img);
    free(lbl);
}

typedef struct broken {
    const char *name;
    uint8_t *img;
    size_t il;
    uint8_t *lbl;
    size_t ll;
    int gz_img;           /* write the image file gzip'd */
    int status;
    const char *why;
    int blame_labels;     /* the message must name the label file */
} broken;

static void test_idx_broken(void) {
    broken cases[16];
    int nc = 0;
    size_t il, ll;
    uint8_t *good_lbl = idx_labels(0x801, 5, 5, -1, &ll);
    size_t gll = ll;
#define LBL_COPY() (memcpy(malloc(gll), good_lbl, gll))
    cases[nc++] = (broken){"truncated", idx_images(0x803, 5, 3, 4, 5 * 12 - 7, &il), il, LBL_COPY(), gll, 0,
                           LETHE_EFORMAT, "truncated", 0};
    cases[nc++] = (broken){"wrong-magic", idx_images(0x00000802, 5, 3, 4, 60, &il), il, LBL_COPY(), gll, 0,
                           LETHE_EFORMAT, "wrong magic 0x00000802", 0};
    cases[nc++] = (broken){"labels-as-images", idx_images(0x801, 5, 3, 4, 60, &il), il, LBL_COPY(), gll, 0,
                           LETHE_EFORMAT, "wrong magic", 0};
    cases[nc++] = (broken){"wrong-dims", idx_images(0x803, 5, 3, 3, 60, &il), il, LBL_COPY(), gll, 0, LETHE_EFORMAT,
                           "bytes after the declared", 0};
    cases[nc++] = (broken){"huge-declared", idx_images(0x803, 0x7fffffff, 28, 28, 60, &il), il, LBL_COPY(), gll, 0,
                           LETHE_ELIMIT, "limit", 0};
    cases[nc++] = (broken){"huge-side", idx_images(0x803, 1, 100000, 1, 60, &il), il, LBL_COPY(), gll, 0,
                           LETHE_ELIMIT, "side", 0};
    cases[nc++] = (broken){"overflow-dims", idx_images(0x803, 0xffffffff, 0xffffffff, 0xffffffff, 60, &il), il,
                           LBL_COPY(), gll, 0, LETHE_ELIMIT, "overflow", 0};
    cases[nc++] = (broken){"zero-dim", idx_images(0x803, 5, 0, 4, 0, &il), il, LBL_COPY(), gll, 0, LETHE_EFORMAT,
                           "dimension 1 is 0", 0};
    cases[nc++] = (broken){"short-header", idx_images(0x803, 5, 3, 4, 0, &il), 10, LBL_COPY(), gll, 0, LETHE_EFORMAT,
                           "too short", 0};
    cases[nc++] = (broken){"labels-out-of-range", idx_images(0x803, 5, 3, 4, 60, &il), il,
                           idx_labels(0x801, 5, 5, 3, &ll), ll, 0, LETHE_EFORMAT, "label 12 of sample 3", 1};
    cases[nc++] = (broken){"label-count", idx_images(0x803, 5, 3, 4, 60, &il), il, idx_labels(0x801, 4, 4, -1, &ll),
                           ll, 0, LETHE_EFORMAT, "has 4 labels", 1};
    cases[nc++] = (broken){"labels-truncated", idx_images(0x803, 5, 3, 4, 60, &il), il,
                           idx_labels(0x801, 5, 3, -1, &ll), ll, 0, LETHE_EFORMAT, "truncated", 1};
    /* gzip'd but truncated / corrupted */
    cases[nc++] = (broken){"gz-truncated", idx_images(0x803, 5, 3, 4, 60, &il), il, LBL_COPY(), gll, 1,
                           LETHE_EFORMAT, "truncated gzip", 0};
    cases[nc++] = (broken){"gz-corrupt", idx_images(0x803, 5, 3, 4, 60, &il), il, LBL_COPY(), gll, 2, LETHE_EFORMAT,
                           "corrupt gzip", 0};
    cases[nc++] = (broken){"gz-trailing-garbage", idx_images(0x803, 5, 3, 4, 60, &il), il, LBL_COPY(), gll, 3,
                           LETHE_EFORMAT, "garbage after the gzip", 0};
    int bad = 0;
    for (int i = 0; i < nc; i++) {
        broken *c = &cases[i];
        char ipath[700], lpath[700];
        snprintf(ipath, sizeof ipath, "%s/%s-images", dir, c->name);
        snprintf(lpath, sizeof lpath, "%s/%s-labels", dir, c->name);
        if (c->gz_img) {
            char gzp[720];
            snprintf(gzp, sizeof gzp, "%s.tmpgz", ipath);
            write_gz(gzp, c->img, c->il);
            uint8_t *g;
            size_t gn;
            char err[LETHE_ERR_LEN];
            fs_read_file(gzp, 1 << 20, &g, &gn, err);
            if (c->gz_img == 1)
                gn -= 9; /* cut into the deflate stream and trailer */
            else if (c->gz_img == 2)
                for (size_t k = 12; k < gn - 8; k++)
                    g[k] ^= 0x5a;
            else {
                g = realloc(g, gn + 4);
                memcpy(g + gn, "junk", 4);
                gn += 4;
            }
            write_file(ipath, g, gn);
            free(g);
        } else
            write_file(ipath, c->img, c->il);
        write_file(lpath, c->lbl, c->ll);
        lethe_dataset ds;
        char err[LETHE_ERR_LEN] = "";
        int rc = ds_load_idx(ipath, lpath, 10, NULL, &ds, err);
        const char *blame = c->blame_labels ? lpath : ipath;
        printf("# %-20s %s\n", c->name, err + (strncmp(err, dir, strlen(dir)) ? 0 : strlen(dir) + 1));
        if (rc != c->status || !strstr(err, c->why) || !strstr(err, blame) || ds.x != NULL) {
            printf("# %s: rc %d \"%s\" (want %d \"%s\" naming %s)\n", c->name, rc, err, c->status, c->why, blame);
            bad++;
        }
        if (rc == 0)
            ds_free(&ds);
        free(c->img);
        free(c->lbl);
    }
    free(good_lbl);
    th_check(bad == 0, "data_idx_broken_files_refused", "%d of %d broken files accepted or misreported", bad, nc);

    lethe_dataset ds;
    char err[LETHE_ERR_LEN];
    int rc = ds_load_idx(tmp("no-such-images"), tmp("ok-labels"), 10, NULL, &ds, err);
    int rc2 = ds_load_mnist_dir(dir, 1, &ds, err);
    th_check(rc == LETHE_ENOTFOUND && strstr(err, "train-images") && rc2 == LETHE_ENOTFOUND, "data_idx_missing_file",
             "rc %d %d: %s", rc, rc2, err);

    /* a small decoded-size limit refuses before parsing */
    size_t n1, n2;
    uint8_t *img = idx_images(0x803, 5, 3, 4, 60, &n1), *lbl = idx_labels(0x801, 5, 5, -1, &n2);
    ds_limits lim = {.max_decoded_bytes = 50};
    rc = ds_parse_idx(img, n1, "small.idx", lbl, n2, NULL, 10, &lim, &ds, err);
    ds_limits lim2 = {.max_samples = 4};
    rc2 = ds_parse_idx(img, n1, "few.idx", lbl, n2, NULL, 10, &lim2, &ds, err);
    th_check(rc == LETHE_ELIMIT && rc2 == LETHE_ELIMIT && strstr(err, "few.idx"), "data_idx_limits", "rc %d %d (%s)",
             rc, rc2, err);
    free(img);
    free(lbl);
}

/* ---- CIFAR-10 -------------------------------------------------------------------------------- */

static uint8_t *cifar_records(int n, int base_label, size_t *len) {
    uint8_t *b = malloc((size_t)n * 3073);
    for (int r = 0; r < n; r++) {
        b[r * 3073] = (uint8_t)((base_label + r) % 10);
        for (int j = 0; j < 3072; j++)
            b[r * 3073 + 1 + j] = (uint8_t)((r * 31 + j) % 251);
    }
    *len = (size_t)n * 3073;
    return b;
}

static void test_cifar(void) {
    char err[LETHE_ERR_LEN];
    size_t n;
    for (int k = 1; k <= 5; k++) {
        char name[64];
        snprintf(name, sizeof name, "data_batch_%d.bin", k);
        uint8_t *b = cifar_records(3, k, &n);
        write_file(tmp(name), b, n);
        free(b);
    }
    uint8_t *b = cifar_records(2, 7, &n);
    write_file(tmp("test_batch.bin"), b, n);
    free(b);
    lethe_dataset tr, te;
    int rc = ds_load_cifar10_dir(dir, 1, &tr, err);
    int rc2 = ds_load_cifar10_dir(dir, 0, &te, err);
    int ok = rc == 0 && rc2 == 0 && tr.n == 15 && te.n == 2 && tr.c == 3 && tr.h == 32 && tr.w == 32 && tr.d == 3072;
    /* record 4 = file 2, record 1: label (2 + 1) % 10, pixels (1 * 31 + j) % 251; R plane first */
    ok = ok && tr.y[4] == 3 && tr.x[4 * 3072 + 0] == 31 && tr.x[4 * 3072 + 1024] == (float)((31 + 1024) % 251) &&
         tr.id[14] == 14 && te.y[1] == 8;
    th_check(ok, "data_cifar10_batches", "rc %d %d n %" PRId64 " (%s)", rc, rc2, rc ? 0 : tr.n, err);
    if (!rc) ds_free(&tr);
    if (!rc2) ds_free(&te);

    /* wrong size, bad label, empty, gzip'd */
    b = cifar_records(2, 0, &n);
    write_file(tmp("cifar-short.bin"), b, n - 5);
    b[3073] = 10;
    write_file(tmp("cifar-label.bin"), b, n);
    write_file(tmp("cifar-empty.bin"), b, 0);
    b[3073] = 1;
    write_gz(tmp("cifar.bin.gz"), b, n);
    free(b);
    lethe_dataset ds;
    const char *p1 = tmp("cifar-short.bin"), *p2 = tmp("cifar-label.bin"), *p3 = tmp("cifar-empty.bin"),
               *p4 = tmp("cifar.bin.gz");
    int r1 = ds_load_cifar10_files(&p1, 1, NULL, &ds, err);
    int m1 = r1 == LETHE_EFORMAT && strstr(err, "multiple of 3073") && strstr(err, p1);
    int r2 = ds_load_cifar10_files(&p2, 1, NULL, &ds, err);
    int m2 = r2 == LETHE_EFORMAT && strstr(err, "label 10 of record 1") && strstr(err, p2);
    int r3 = ds_load_cifar10_files(&p3, 1, NULL, &ds, err);
    int r4 = ds_load_cifar10_files(&p4, 1, NULL, &ds, err);
    int m4 = r4 == 0 && ds.n == 2 && ds.y[1] == 1;
    if (!r4) ds_free(&ds);
    const char *both[2] = {p4, p1};
    int r5 = ds_load_cifar10_files(both, 2, NULL, &ds, err);
    th_check(m1 && m2 && r3 == LETHE_EFORMAT && m4 && r5 == LETHE_EFORMAT && strstr(err, p1),
             "data_cifar10_broken_files_refused", "rc %d %d %d %d %d (%s)", r1, r2, r3, r4, r5, err);
}

/* ---- synthetic data, normalisation ------------------------------------------------------------ */

static void test_synthetic(void) {
    ds_synth s = {.kind = DS_SYNTH_BLOBS, .n = 600, .rank = 3, .c = 2, .h = 4, .w = 4, .classes = 3, .sep = 3,
                  .noise = 1, .seed = 42};
    lethe_dataset a, b, c;
    char err[LETHE_ERR_LEN];
    int rc = ds_synthetic(&s, &a, err);
    int rc2 = ds_synthetic(&s, &b, err);
    s.seed = 43;
    int rc3 = ds_synthetic(&s, &c, err);
    int ok = rc == 0 && rc2 == 0 && rc3 == 0 && !memcmp(a.x, b.x, (size_t)(a.n * a.d) * sizeof(float)) &&
             memcmp(a.x, c.x, (size_t)(a.n * a.d) * sizeof(float)) != 0;
    int64_t cnt[3];
    ds_label_counts(&a, cnt);
    ok = ok && cnt[0] == 200 && cnt[1] == 200 && cnt[2] == 200;
    /* nearest class mean separates well-separated blobs */
    double mu[3][32] = {{0}};
    for (int64_t i = 0; i < a.n; i++)
        for (int j = 0; j < 32; j++)
            mu[a.y[i]][j] += a.x[i * 32 + j] / 200.0;
    int correct = 0;
    for (int64_t i = 0; i < a.n; i++) {
        int best = 0;
        double bd = 1e300;
        for (int k = 0; k < 3; k++) {
            double dd = 0;
            for (int j = 0; j < 32; j++)
                dd += (a.x[i * 32 + j] - mu[k][j]) * (a.x[i * 32 + j] - mu[k][j]);
            if (dd < bd) {
                bd = dd;
                best = k;
            }
        }
        correct += best == a.y[i];
    }
    ok = ok && correct > 590;
    th_check(ok, "data_synthetic_blobs", "rc %d %d %d, counts %" PRId64 " %" PRId64 " %" PRId64 ", nearest-mean %d/600",
             rc, rc2, rc3, cnt[0], cnt[1], cnt[2], correct);
    ds_free(&a);
    ds_free(&b);
    ds_free(&c);

    /* linear: labels are the argmax of a fixed linear map; a test set from
     * first_id = n continues the same distribution with new samples */
    ds_synth l = {.kind = DS_SYNTH_LINEAR, .n = 500, .rank = 1, .c = 10, .classes = 4, .sep = 1, .seed = 5};
    lethe_dataset tr, te;
    rc = ds_synthetic(&l, &tr, err);
    l.first_id = 500;
    l.n = 100;
    rc2 = ds_synthetic(&l, &te, err);
    int64_t lc[4];
    ds_label_counts(&tr, lc);
    ok = rc == 0 && rc2 == 0 && tr.rank == 1 && tr.d == 10 && tr.h == 1 && te.id[0] == 500 &&
         memcmp(tr.x, te.x, 10 * sizeof(float)) != 0 && lc[0] > 50 && lc[1] > 50 && lc[2] > 50 && lc[3] > 50;
    th_check(ok, "data_synthetic_linear", "rc %d %d counts %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64, rc, rc2,
             lc[0], lc[1], lc[2], lc[3]);
    if (!rc) ds_free(&tr);
    if (!rc2) ds_free(&te);
    ds_synth bad = {.kind = DS_SYNTH_BLOBS, .n = 0, .rank = 1, .c = 3, .classes = 2};
    rc = ds_synthetic(&bad, &a, err);
    bad.n = 10;
    bad.rank = 2;
    rc2 = ds_synthetic(&bad, &a, err);
    th_check(rc == LETHE_EARG && rc2 == LETHE_EARG, "data_synthetic_bad_spec", "rc %d %d", rc, rc2);
}

static void test_norm(void) {
    lethe_dataset ds;
    char err[LETHE_ERR_LEN];
    ds_synth s = {.kind = DS_SYNTH_BLOBS, .n = 50, .rank = 3, .c = 3, .h = 2, .w = 2, .classes = 2, .sep = 1,
                  .noise = 1, .seed = 1};
    ds_synthetic(&s, &ds, err);
    /* channel k = constant 2k + 1 plus +-k alternating per sample */
    for (int64_t i = 0; i < ds.n; i++)
        for (int c = 0; c < 3; c++)
            for (int j = 0; j < 4; j++)
                ds.x[i * 12 + c * 4 + j] = (float)(2 * c + 1 + (i % 2 ? c : -c));
    ds_norm nm;
    int rc = ds_norm_fit(&ds, &nm, err);
    int ok = rc == 0 && nm.c == 3 && nm.mean[0] == 1 && nm.mean[1] == 3 && nm.mean[2] == 5 && nm.std[1] == 1 &&
             nm.std[2] == 2;
    int rc2 = ds_norm_apply(&ds, &nm, err); /* channel 0 is constant: refused */
    ok = ok && rc2 == LETHE_EARG && strstr(err, "channel 0");
    nm.std[0] = 0.5f;
    ok = ok && ds_norm_apply(&ds, &nm, err) == 0 && ds.x[0] == 0 && ds.x[4] == -1 && ds.x[12 + 8] == 1 &&
         ds.pad[2] == -2.5f && ds.normalized;
    th_check(ok, "data_normalisation", "mean %g %g %g std %g %g %g", nm.mean[0], nm.mean[1], nm.mean[2], nm.std[0],
             nm.std[1], nm.std[2]);
    ds_free(&ds);
}

/* ---- shuffles and subsets ------------------------------------------------------------------------ */

static void test_shuffle(void) {
    enum { N = 1000 };
    int64_t a[N], b[N], c[N];
    ds_permutation(a, N, 9, DS_STREAM_SHUFFLE, 3);
    ds_permutation(b, N, 9, DS_STREAM_SHUFFLE, 3);
    ds_permutation(c, N, 9, DS_STREAM_SHUFFLE, 4);
    char seen[N] = {0};
    int perm = 1;
    for (int i = 0; i < N; i++) {
        if (a[i] < 0 || a[i] >= N || seen[a[i]])
            perm = 0;
        else
            seen[a[i]] = 1;
    }
    int same = !memcmp(a, b, sizeof a), differs = memcmp(a, c, sizeof a) != 0;
    /* uniformity: where element 0 lands over many epochs, for n = 5 */
    int count[5][5] = {{0}};
    for (uint32_t e = 0; e < 50000; e++) {
        int64_t p[5];
        ds_permutation(p, 5, 1, DS_STREAM_SHUFFLE, e);
        for (int i = 0; i < 5; i++)
            count[p[i]][i]++;
    }
    double chi = 0;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++)
            chi += (count[i][j] - 10000.0) * (count[i][j] - 10000.0) / 10000.0;
    /* 25 cells, 16 degrees of freedom: chi^2 > 40 has p < 0.001 */
    th_check(perm && same && differs && chi < 40, "data_shuffle_deterministic_uniform",
             "perm %d same %d differs %d chi2 %g", perm, same, differs, chi);

    int64_t sub[100];
    char err[LETHE_ERR_LEN];
    int rc = ds_random_subset(N, 100, 77, sub, err);
    int ok = rc == 0;
    for (int i = 1; i < 100 && ok; i++)
        ok = sub[i] > sub[i - 1] && sub[i] < N && sub[0] >= 0;
    int64_t sub2[100];
    ds_random_subset(N, 100, 77, sub2, err);
    ok = ok && !memcmp(sub, sub2, sizeof sub) && ds_random_subset(10, 11, 1, sub2, err) == LETHE_EARG;
    int64_t *comp, m;
    ok = ok && ds_complement(N, sub, 100, &comp, &m, err) == 0 && m == N - 100;
    for (int64_t i = 0, j = 0; ok && i < m; i++) {
        while (j < 100 && sub[j] < comp[i])
            j++;
        ok = (j == 100 || sub[j] != comp[i]) && (i == 0 || comp[i] > comp[i - 1]);
    }
    free(comp);
    int64_t badidx = N;
    ok = ok && ds_complement(N, &badidx, 1, &comp, &m, err) == LETHE_EARG;
    uint8_t *mask;
    ok = ok && ds_mask_from_indices(N, sub, 100, &mask, err) == 0;
    int64_t set = 0;
    for (int i = 0; ok && i < N; i++)
        set += mask[i];
    ok = ok && set == 100 && mask[sub[50]] == 1;
    free(mask);
    ok = ok && ds_mask_from_indices(N, &badidx, 1, &mask, err) == LETHE_EARG && mask == NULL;
    th_check(ok, "data_random_subset_complement", "subset/complement wrong (%s)", err);
}

static void test_subset_split(void) {
    lethe_dataset ds, a, b, s;
    char err[LETHE_ERR_LEN];
    ds_synth sp = {.kind = DS_SYNTH_BLOBS, .n = 100, .rank = 1, .c = 5, .classes = 4, .sep = 2, .noise = 1, .seed = 3};
    ds_synthetic(&sp, &ds, err);
    int rc = ds_split(&ds, 70, 11, &a, &b, err);
    int ok = rc == 0 && a.n == 70 && b.n == 30;
    char seen[100] = {0};
    for (int64_t i = 0; ok && i < a.n; i++)
        seen[a.id[i]]++;
    for (int64_t i = 0; ok && i < b.n; i++)
        seen[b.id[i]]++;
    for (int i = 0; ok && i < 100; i++)
        ok = seen[i] == 1;
    ok = ok && !memcmp(a.x + 5, ds.x + a.id[1] * 5, 5 * sizeof(float)) && a.y[1] == ds.y[a.id[1]];
    /* subsets of subsets keep the original ids */
    int64_t idx[2] = {1, 0};
    ok = ok && ds_subset(&a, idx, 2, &s, err) == 0 && s.id[0] == a.id[1] && s.id[1] == a.id[0];
    ds_free(&s);
    int64_t bad = 70;
    ok = ok && ds_subset(&a, &bad, 1, &s, err) == LETHE_EARG;
    int64_t *ci, cm;
    ok = ok && ds_indices_of_class(&ds, 2, &ci, &cm, err) == 0 && cm == 25 && ds.y[ci[24]] == 2;
    free(ci);
    char h1[65], h2[65], h3[65];
    ds_hash(&ds, h1);
    ds_hash(&ds, h2);
    ds.x[7] += 1;
    ds_hash(&ds, h3);
    ok = ok && !strcmp(h1, h2) && strcmp(h1, h3) && strlen(h1) == 64;
    th_check(ok, "data_subset_split_ids", "split/subset/hash wrong (%s)", err);
    ds_free(&ds);
    ds_free(&a);
    ds_free(&b);
    ds_free(&s);
}

/* ---- poisons and augmentation ---------------------------------------------------------------------- */

static lethe_dataset image_set(int n) {
    lethe_dataset ds;
    char err[LETHE_ERR_LEN];
    ds_synth sp = {.kind = DS_SYNTH_BLOBS, .n = n, .rank = 3, .c = 3, .h = 8, .w = 6, .classes = 10, .sep = 1,
                   .noise = 1, .seed = 8};
    ds_synthetic(&sp, &ds, err);
    return ds;
}

static void test_poison_noise(void) {
    lethe_dataset ds = image_set(64);
    int64_t d = ds.d;
    char err[LETHE_ERR_LEN];
    uint8_t mask[64];
    for (int i = 0; i < 64; i++)
        mask[i] = i % 3 == 0;
    ds_poison p = {.eps = 0.25, .seed = 2024, .mask = mask, .mask_n = 64};
    int64_t idx[64];
    for (int i = 0; i < 64; i++)
        idx[i] = 63 - i;
    float *x = malloc(64 * d * sizeof(float)), *x2 = malloc(64 * d * sizeof(float));
    int32_t y[64];
    float *before = malloc(64 * d * sizeof(float));
    memcpy(before, ds.x, 64 * d * sizeof(float));
    int rc = ds_batch(&ds, idx, 64, &p, NULL, x, y, err);
    int rc2 = ds_batch(&ds, idx, 64, &p, NULL, x2, y, err);
    float *xi = malloc(d * sizeof(float));
    int exact = rc == 0 && rc2 == 0 && !memcmp(x, x2, 64 * d * sizeof(float));
    for (int k = 0; k < 64 && exact; k++) {
        int64_t id = idx[k];
        ds_gauss_noise(2024, DS_STREAM_POISON, 0.25, id, d, xi);
        for (int64_t j = 0; j < d && exact; j++) {
            float want = ds.x[id * d + j] + (mask[id] ? xi[j] : 0.0f);
            /* the documented counter layout, element by element */
            float direct = (float)(0.25 * philox_normal_at(2024, DS_STREAM_POISON, (uint64_t)id, (uint64_t)j));
            exact = x[k * d + j] == want && xi[j] == direct && y[k] == ds.y[id];
        }
    }
    int untouched = !memcmp(before, ds.x, 64 * d * sizeof(float));
    th_check(exact && untouched, "data_poison_noise_bit_identical", "rc %d %d exact %d stored %d (%s)", rc, rc2, exact,
             !untouched, err);

    /* moments: 4000 samples x 48 values of eps * N(0, 1) */
    double sum = 0, sq = 0, m4 = 0;
    int64_t n = 0;
    for (int64_t id = 0; id < 4000; id++) {
        ds_gauss_noise(7, DS_STREAM_POISON, 0.5, id, d, xi);
        for (int64_t j = 0; j < d; j++) {
            sum += xi[j];
            sq += (double)xi[j] * xi[j];
            m4 += pow(xi[j] / 0.5, 4);
            n++;
        }
    }
    double mean = sum / n, var = sq / n - mean * mean, kurt = m4 / n;
    /* se of the mean: 0.5 / sqrt(n); of the variance: 0.25 sqrt(2 / n) */
    int mom = fabs(mean) < 4 * 0.5 / sqrt((double)n) && fabs(var - 0.25) < 4 * 0.25 * sqrt(2.0 / n) &&
              fabs(kurt - 3) < 0.15;
    /* null noise is a different stream */
    float *xn = malloc(d * sizeof(float));
    ds_gauss_noise(7, DS_STREAM_NULL, 0.5, 0, d, xn);
    ds_gauss_noise(7, DS_STREAM_POISON, 0.5, 0, d, xi);
    int differ = memcmp(xn, xi, d * sizeof(float)) != 0;
    free(xn);
    th_check(mom && differ, "data_poison_noise_moments", "mean %g var %g kurtosis %g (n %" PRId64 ")", mean, var, kurt,
             n);

    /* a forget-set subset with mask = NULL (all poisoned) gets the same noise */
    int64_t forget[3] = {0, 3, 6};
    lethe_dataset fs;
    ds_subset(&ds, forget, 3, &fs, err);
    ds_poison pall = {.eps = 0.25, .seed = 2024};
    int64_t fi[3] = {0, 1, 2};
    ds_batch(&fs, fi, 3, &pall, NULL, x2, y, err);
    ds_batch(&ds, forget, 3, &p, NULL, x, y, err);
    int sub_same = !memcmp(x, x2, 3 * d * sizeof(float));
    /* ids outside the mask are an error, not silently clean */
    ds_poison small = {.eps = 0.25, .seed = 1, .mask = mask, .mask_n = 5};
    int rc3 = ds_batch(&ds, idx, 64, &small, NULL, x, y, err);
    int64_t oob = 64;
    int rc4 = ds_batch(&ds, &oob, 1, NULL, NULL, x, y, err);
    th_check(sub_same && rc3 == LETHE_EARG && strstr(err, "outside") && rc4 == LETHE_EARG, "data_poison_subset_ids",
             "subset same %d rc %d %d", sub_same, rc3, rc4);
    ds_free(&fs);
    ds_free(&ds);
    free(x);
    free(x2);
    free(xi);
    free(before);
}

static void test_augmentation(void) {
    lethe_dataset ds = image_set(200);
    char err[LETHE_ERR_LEN];
    ds_norm nm;
    ds_norm_fit(&ds, &nm, err);
    ds_norm_apply(&ds, &nm, err);
    int64_t d = ds.d, n = ds.n;
    int64_t fwd[200], rev[200];
    for (int i = 0; i < 200; i++) {
        fwd[i] = i;
        rev[i] = 199 - i;
    }
    float *x1 = malloc(n * d * sizeof(float)), *x2 = malloc(n * d * sizeof(float)), *x3 = malloc(n * d * sizeof(float));
    int32_t y[200];
    ds_aug aug = {.crop_pad = 2, .flip = 1, .seed = 5, .epoch = 1};
    ds_batch(&ds, fwd, n, NULL, &aug, x1, y, err);
    ds_batch(&ds, rev, n, NULL, &aug, x2, y, err);
    int order_free = 1;
    for (int i = 0; i < 200; i++)
        order_free &= !memcmp(x1 + i * d, x2 + (199 - i) * d, d * sizeof(float));
    aug.epoch = 2;
    ds_batch(&ds, fwd, n, NULL, &aug, x3, y, err);
    int epoch_differs = memcmp(x1, x3, n * d * sizeof(float)) != 0;
    th_check(order_free && epoch_differs, "data_augmentation_deterministic", "independent of order %d, epochs differ %d",
             order_free, epoch_differs);

    /* every output is a shifted (and maybe mirrored) copy of the input, with
     * the normalised zero pixel filling the border; flips happen about half
     * the time and all 5 x 5 shifts occur */
    int flips = 0, good = 1;
    int shifts[5][5] = {{0}};
    for (int i = 0; i < 200 && good; i++) {
        int found = 0;
        for (int f = 0; f < 2 && !found; f++)
            for (int dy = -2; dy <= 2 && !found; dy++)
                for (int dx = -2; dx <= 2 && !found; dx++) {
                    int match = 1;
                    for (int c = 0; c < 3 && match; c++)
                        for (int yy = 0; yy < 8 && match; yy++)
                            for (int xx = 0; xx < 6 && match; xx++) {
                                int sy = yy + dy, sx = (f ? 5 - xx : xx) + dx;
                                float want = sy >= 0 && sy < 8 && sx >= 0 && sx < 6
                                                 ? ds.x[i * d + c * 48 + sy * 6 + sx]
                                                 : ds.pad[c];
                                match = x1[i * d + c * 48 + yy * 6 + xx] == want;
                            }
                    if (match) {
                        found = 1;
                        flips += f;
                        shifts[dy + 2][dx + 2]++;
                    }
                }
        good = found;
    }
    int all_shifts = 1;
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            all_shifts &= shifts[a][b] > 0;
    th_check(good && flips > 70 && flips < 130 && all_shifts, "data_augmentation_crop_flip",
             "explained %d, flips %d/200, all shifts %d", good, flips, all_shifts);

    /* noise goes in before the crop: output == augment(clean + xi) */
    ds_poison p = {.eps = 0.3, .seed = 77};
    float *noisy = malloc(n * d * sizeof(float));
    ds_batch(&ds, fwd, n, &p, NULL, noisy, y, err); /* clean + xi, not augmented */
    lethe_dataset tmp = ds;
    tmp.x = noisy; /* same ids and pad, values = clean + xi */
    aug.epoch = 1;
    ds_batch(&tmp, fwd, n, NULL, &aug, x2, y, err);
    ds_batch(&ds, fwd, n, &p, &aug, x3, y, err);
    int before_aug = !memcmp(x2, x3, n * d * sizeof(float));
    /* flat data cannot be cropped */
    lethe_dataset flat;
    ds_synth sp = {.kind = DS_SYNTH_BLOBS, .n = 4, .rank = 1, .c = 6, .classes = 2, .sep = 1, .noise = 1, .seed = 1};
    ds_synthetic(&sp, &flat, err);
    int rc = ds_batch(&flat, fwd, 2, NULL, &aug, x2, y, err);
    th_check(before_aug && rc == LETHE_EARG, "data_noise_before_augmentation", "noise/augment order wrong (%d, rc %d)",
             before_aug, rc);
    ds_free(&flat);
    ds_free(&ds);
    free(x1);
    free(x2);
    free(x3);
    free(noisy);
}

static void test_gunzip(void) {
    /* multi-member gzip is one stream; the size limit is enforced */
    char p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/m1.gz", dir);
    snprintf(p2, sizeof p2, "%s/m2.gz", dir);
    write_gz(p1, "hello ", 6);
    write_gz(p2, "world", 5);
    uint8_t *a, *b, *out;
    size_t na, nb, no;
    char err[LETHE_ERR_LEN];
    fs_read_file(p1, 1 << 20, &a, &na, err);
    fs_read_file(p2, 1 << 20, &b, &nb, err);
    uint8_t *cat = malloc(na + nb);
    memcpy(cat, a, na);
    memcpy(cat + na, b, nb);
    int rc = ds_gunzip(cat, na + nb, 100, "cat.gz", &out, &no, err);
    int ok = rc == 0 && no == 11 && !memcmp(out, "hello world", 11);
    if (!rc)
        free(out);
    rc = ds_gunzip(cat, na + nb, 8, "cat.gz", &out, &no, err);
    ok = ok && rc == LETHE_ELIMIT && strstr(err, "cat.gz");
    /* a zero-filled 10 MB payload (ratio ~1000:1) against a 1 MB limit */
    uint8_t *zeros = calloc(10 << 20, 1);
    snprintf(p1, sizeof p1, "%s/bomb.gz", dir);
    write_gz(p1, zeros, 10 << 20);
    free(zeros);
    free(a);
    fs_read_file(p1, 1 << 24, &a, &na, err);
    rc = ds_gunzip(a, na, 1 << 20, "bomb.gz", &out, &no, err);
    ok = ok && rc == LETHE_ELIMIT;
    th_check(ok, "data_gunzip_members_and_limits", "rc %d (%s)", rc, err);
    free(a);
    free(b);
    free(cat);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/data", th_tmpdir());
    char err[LETHE_ERR_LEN];
    if (fs_mkdir_p(dir, 0777, err)) {
        th_fail("data_setup", "%s", err);
        return th_exit();
    }
    test_fashion_mnist();
    test_idx_valid();
    test_idx_broken();
    test_cifar();
    test_synthetic();
    test_norm();
    test_shuffle();
    test_subset_split();
    test_poison_noise();
    test_augmentation();
    test_gunzip();
    return th_exit();
}
