/* data.h: data sets, their loaders and transforms, and Gaussian poisons.
 *
 * A data set is N samples of one shape (C x H x W images, or flat vectors of
 * D features stored as C = D, H = W = 1 with rank 1), f32 values, i32 labels
 * in [0, num_classes), and a stable id per sample: its index in the set it
 * was first loaded as. Ids survive subsetting, so poison noise, augmentation
 * and forget/retain bookkeeping always refer to the original training index.
 *
 * PIPELINE (the order matters for the Gaussian Unlearning Score, see
 * ALGORITHMS.md 1.1):
 *
 *     load        pixel bytes as floats in [0, 255]     ds_load_* / ds_parse_*
 *     ds_divide   / 255 -> [0, 1] (torchvision ToTensor's division)
 *     ds_norm_*   per-channel (x - mean) / std, mean/std fitted on train
 *     ds_batch    copy -> + poison noise xi -> random crop + flip -> caller buffer
 *
 * so the noise lives in the network's input space, is added before
 * augmentation (crops and flips move it with the image), is never clipped and
 * never stored: it is regenerated from (seed, id) whenever needed.
 *
 * RANDOMNESS. Everything comes from philox.h, key = the caller's 64-bit seed,
 * counter = {c0, c1, stream, step} with these streams (high values, so they
 * never meet the small call-site streams of generated code):
 *
 *   poison noise   xi_id[j] = (float)(eps * philox_normal_at(seed, DS_STREAM_POISON, id, j))
 *                  i.e. ctr = {(j/4) lo32, (j/4) hi32, DS_STREAM_POISON, id}, lane j%4,
 *                  Box-Muller on words (0,1) for lanes 0,1 and (2,3) for lanes 2,3;
 *                  j = flat index c*H*W + y*W + x of the sample; id < 2^32.
 *   null noise     the same with DS_STREAM_NULL (fresh xi' for the empirical null).
 *   shuffle        Fisher-Yates from the top: for i = n-1 .. 1, swap i with
 *                  j = floor(u * (i + 1)), u = (v0 | v1 << 32) / 2^64 of block
 *                  ctr = {i lo32, i hi32, stream, epoch} (stream: DS_STREAM_SHUFFLE
 *                  for training order, DS_STREAM_SUBSET for subsets/splits).
 *   augmentation   per (seed, epoch, id): block ctr = {id lo32, id hi32,
 *                  DS_STREAM_AUGMENT, epoch}; dx = floor(v0 * (2p+1) / 2^32) - p,
 *                  dy likewise from v1, flip = top bit of v2. Independent of
 *                  batch composition and order.
 *   synthetic      class parameters from (DS_STREAM_SYNTH_CLASS, class, j),
 *                  samples from (DS_STREAM_SYNTH_SAMPLE, id, j).
 *
 * Error convention: check.h. Loaders refuse bad files with a message naming
 * the file and the fault, never exit, never crash, and leave *out empty.
 */
#ifndef LETHE_DATA_H
#define LETHE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

#define DS_MAX_CHANNELS 64

#define DS_STREAM_POISON 0x4C500001u
#define DS_STREAM_NULL 0x4C500002u
#define DS_STREAM_SHUFFLE 0x4C530001u
#define DS_STREAM_SUBSET 0x4C530002u
#define DS_STREAM_AUGMENT 0x4C410001u
#define DS_STREAM_SYNTH_CLASS 0x4C590001u
#define DS_STREAM_SYNTH_SAMPLE 0x4C590002u

#define DS_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

typedef struct lethe_dataset {
    int64_t n;              /* samples */
    int rank;               /* 3: C x H x W; 1: flat, D = c (h = w = 1) */
    int c, h, w;
    int64_t d;              /* values per sample = c * h * w */
    int num_classes;
    float *x;               /* n * d values, sample-major, row-major CHW */
    int32_t *y;             /* n labels */
    int64_t *id;            /* n stable ids */
    int normalized;         /* ds_norm_apply was run */
    float pad[DS_MAX_CHANNELS]; /* per-channel value of a zero pixel after normalisation:
                                   what random-crop padding fills in (0 if not normalised) */
    char source[160];       /* file or generator it came from */
    int token_column;       /* text (runtime/run_text.h): value 0 of each W-wide row is a token id,
                               which poison noise leaves alone (it perturbs the other W - 1) */
} lethe_dataset;

void ds_free(lethe_dataset *ds);

/* Sanity limits applied before allocating; NULL means the defaults. */
typedef struct ds_limits {
    int64_t max_samples;        /* default 1 << 26 */
    int64_t max_side;           /* max H or W, default 8192 */
    size_t max_file_bytes;      /* compressed/raw file size, default 4 GiB */
    size_t max_decoded_bytes;   /* after gunzip, default 4 GiB */
} ds_limits;

/* ---- loaders --------------------------------------------------------------- */

/* IDX (MNIST / Fashion-MNIST) image + label files, raw or gzip'd (detected
 * by content). Images: magic 0x00000803 (u8, dims N, H, W) -> C = 1.
 * Labels: magic 0x00000801 (u8, dim N), each < num_classes. */
int ds_load_idx(const char *images_path, const char *labels_path, int num_classes, const ds_limits *lim,
                lethe_dataset *out, char *err);
/* The same from memory buffers; names are used in messages (NULL: "<images>"/"<labels>"). */
int ds_parse_idx(const void *img, size_t img_len, const char *img_name, const void *lbl, size_t lbl_len,
                 const char *lbl_name, int num_classes, const ds_limits *lim, lethe_dataset *out, char *err);
/* dir/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; dir NULL = DS_FASHION_MNIST_DIR. */
int ds_load_mnist_dir(const char *dir, int train, lethe_dataset *out, char *err);

/* CIFAR-10 binary: records of 1 label byte (< 10) + 3072 bytes (1024 R, G, B,
 * each 32 x 32 row-major). A file must hold a positive whole number of records
 * (the real batches hold 10000). Raw or gzip'd. */
int ds_parse_cifar10(const void *buf, size_t len, const char *name, const ds_limits *lim, lethe_dataset *out,
                     char *err);
int ds_load_cifar10_files(const char *const *paths, int npaths, const ds_limits *lim, lethe_dataset *out, char *err);
/* dir/data_batch_{1..5}.bin (train) or dir/test_batch.bin; also looks in
 * dir/cifar-10-batches-bin/. */
int ds_load_cifar10_dir(const char *dir, int train, lethe_dataset *out, char *err);

/* Decompress a gzip buffer (multi-member allowed) into a malloc'd buffer of
 * at most max_out bytes; a buffer without the gzip magic is copied as is. */
int ds_gunzip(const void *in, size_t n, size_t max_out, const char *name, uint8_t **out, size_t *out_len, char *err);

/* Synthetic, seeded classification sets. */
typedef enum ds_synth_kind {
    DS_SYNTH_BLOBS = 0,     /* x = mu[y] + noise * N(0, I), mu[k] ~ sep * N(0, I), y = id % classes */
    DS_SYNTH_LINEAR = 1,    /* x ~ N(0, I), y = argmax_k <W_k, x>, then x += sep * W_y / |W_y|
                               (linearly separable, margin grows with sep) */
} ds_synth_kind;

typedef struct ds_synth {
    ds_synth_kind kind;
    int64_t n;
    int rank;               /* 1: flat (c = D), 3: c x h x w */
    int c, h, w;
    int classes;
    double sep;             /* class separation */
    double noise;           /* BLOBS: within-class std */
    uint64_t seed;
    int64_t first_id;       /* sample i gets id first_id + i: train at 0, test at n_train */
} ds_synth;

int ds_synthetic(const ds_synth *spec, lethe_dataset *out, char *err);

/* ---- transforms --------------------------------------------------------------- */

/* x /= divisor (255: bytes to [0, 1], bit-identical to torchvision's ToTensor). */
void ds_divide(lethe_dataset *ds, float divisor);

typedef struct ds_norm {
    int c;
    float mean[DS_MAX_CHANNELS];
    float std[DS_MAX_CHANNELS];
} ds_norm;

/* Per-channel mean and population std over all samples and pixels (float64
 * accumulation). Flat data (rank 1) has one channel: all features pooled. */
int ds_norm_fit(const lethe_dataset *ds, ds_norm *out, char *err);
/* x = (x - mean_c) / std_c in place; sets ds->pad to (0 - mean_c) / std_c. */
int ds_norm_apply(lethe_dataset *ds, const ds_norm *nm, char *err);

/* ---- order, subsets, splits ---------------------------------------------------- */

/* In-place Fisher-Yates of idx[0..n) (layout above). */
void ds_shuffle(int64_t *idx, int64_t n, uint64_t seed, uint32_t stream, uint32_t epoch);
/* idx = a seeded permutation of 0..n-1. */
void ds_permutation(int64_t *idx, int64_t n, uint64_t seed, uint32_t stream, uint32_t epoch);

/* k distinct positions of 0..n-1 chosen uniformly, ascending (the first k of
 * a DS_STREAM_SUBSET permutation at epoch 0). */
int ds_random_subset(int64_t n, int64_t k, uint64_t seed, int64_t *out, char *err);
/* The same but drawn from pool[0..npool) (e.g. the indices of one class). */
int ds_random_subset_of(const int64_t *pool, int64_t npool, int64_t k, uint64_t seed, int64_t *out, char *err);
/* Positions of samples with label cls; *out malloc'd (caller frees), *m its length. */
int ds_indices_of_class(const lethe_dataset *ds, int cls, int64_t **out, int64_t *m, char *err);
/* 0..n-1 minus idx (any order, duplicates ok), ascending; *out malloc'd. */
int ds_complement(int64_t n, const int64_t *idx, int64_t k, int64_t **out, int64_t *m, char *err);

/* mask[0..n) with 1 at idx[0..k) (the poison mask of ds_poison); *mask malloc'd. */
int ds_mask_from_indices(int64_t n, const int64_t *idx, int64_t k, uint8_t **mask, char *err);

/* out = the samples src[idx[0..k)] (copied; ids kept). */
int ds_subset(const lethe_dataset *src, const int64_t *idx, int64_t k, lethe_dataset *out, char *err);
/* Adds k samples (x: k * d values, y: k labels) at the end, with ids
 * first_id, first_id + 1, ... (added poisons). */
int ds_append(lethe_dataset *ds, const float *x, const int32_t *y, int64_t k, int64_t first_id, char *err);
/* Seeded split: a gets n_first samples, b the rest (DS_STREAM_SUBSET permutation). */
int ds_split(const lethe_dataset *src, int64_t n_first, uint64_t seed, lethe_dataset *a, lethe_dataset *b,
             char *err);

/* counts[0..num_classes) of labels. */
void ds_label_counts(const lethe_dataset *ds, int64_t *counts);
/* SHA-256 over shape, labels and values: names the data in result records. */
void ds_hash(const lethe_dataset *ds, char hex[65]);

/* ---- poisons and batches ---------------------------------------------------------- */

/* xi for sample `id`: d values eps * N(0, 1) from (seed, stream, id); stream is
 * DS_STREAM_POISON for the poison, DS_STREAM_NULL for fresh null noise. */
void ds_gauss_noise(uint64_t seed, uint32_t stream, double eps, int64_t id, int64_t d, float *out);

typedef struct ds_poison {
    double eps;             /* std of the noise; 0 = no poison */
    uint64_t seed;
    const uint8_t *mask;    /* mask[id] != 0: sample id is poisoned; NULL: every sample */
    int64_t mask_n;         /* entries in mask */
} ds_poison;

typedef struct ds_aug {
    int crop_pad;           /* random crop of the same size after padding by this many pixels; 0 = off */
    int flip;               /* random horizontal flip with p = 1/2 */
    uint64_t seed;
    uint32_t epoch;
} ds_aug;

/* x[b, d] and y[b] for the samples at positions idx[0..b): value, then
 * + xi (if poisoned), then crop/flip (if aug). poison and aug may be NULL. */
int ds_batch(const lethe_dataset *ds, const int64_t *idx, int64_t b, const ds_poison *poison, const ds_aug *aug,
             float *x, int32_t *y, char *err);

#endif
