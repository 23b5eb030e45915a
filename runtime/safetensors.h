/* safetensors.h: checkpoints in the safetensors format, independent of any
 * graph: the API is lists of (name, dtype, rank, shape, data).
 *
 * FORMAT (https://github.com/huggingface/safetensors, as the Python/Rust
 * library reads and writes it):
 *
 *     u64 little-endian  N = header length in bytes
 *     N bytes            JSON object, UTF-8:
 *                          { "__metadata__": {"key": "value", ...},      (optional)
 *                            "<name>": {"dtype": "F32", "shape": [2, 3],
 *                                       "data_offsets": [begin, end]}, ... }
 *     rest               data section; each tensor's bytes are
 *                        data[begin:end), row-major, little-endian
 *
 * WRITING (st_save) follows the library's conventions so both sides read each
 * other's files: header entries in the caller's order; the data section laid
 * out by decreasing element size (stable), so every tensor is aligned to its
 * element size without holes; the header padded with spaces so the data
 * section starts at a multiple of 8 bytes; the file written atomically
 * (fsutil.h: temp file + fsync + rename).
 *
 * READING (st_load, st_parse) checks everything before trusting it, and
 * refuses with a message naming the file, the tensor and the fault:
 * header length vs. file size (and <= 100 MB, the library's own limit), a
 * strict JSON object (json.h: duplicate names are refused there), each entry
 * exactly {dtype, shape, data_offsets}, a known dtype, rank <= 8,
 * non-negative dimensions without overflow, begin <= end <= data size,
 * end - begin == numel x element size, and offsets that tile the data section
 * exactly (no overlaps, no holes, nothing after the last tensor), names
 * non-empty without NUL bytes, metadata a string-to-string map.
 *
 * All standard safetensors dtypes are read; Lethe computes in F32, F64, I32
 * and BOOL (lethe_abi.h), and st_read_as converts on loading (F16/BF16 GPT-2
 * weights, I64 indices) with range checks.
 */
#ifndef LETHE_SAFETENSORS_H
#define LETHE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "lethe_abi.h"

#define ST_MAX_RANK LETHE_MAX_RANK
#define ST_MAX_HEADER 100000000u  /* bytes, as the reference library */

typedef enum st_dtype {
    ST_BOOL = 0,
    ST_U8,
    ST_I8,
    ST_U16,
    ST_I16,
    ST_F16,
    ST_BF16,
    ST_U32,
    ST_I32,
    ST_F32,
    ST_U64,
    ST_I64,
    ST_F64,
    ST_NDTYPES
} st_dtype;

const char *st_dtype_name(st_dtype t);      /* "F32", ...; "?" if out of range */
int st_dtype_from_name(const char *s);     /* -1 if unknown */
size_t st_dtype_size(st_dtype t);
/* lethe_abi.h dtype <-> safetensors dtype; -1 where there is none */
int st_from_lethe(int lethe_dtype);
int st_to_lethe(st_dtype t);

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int rank;
    int64_t shape[ST_MAX_RANK];
    const void *data;   /* writer: the caller's bytes; reader: inside the file
                           buffer, aligned to the element size when the file is
                           (always for files from Lethe or the library) */
    uint64_t nbytes;    /* reader: end - begin; writer: computed, ignored */
} st_tensor;

typedef struct st_kv {
    const char *key;
    const char *value;
} st_kv;

int64_t st_numel(const st_tensor *t);      /* product of shape, 1 for rank 0 */

/* Writes tensors (names unique, non-empty, not "__metadata__") and optional
 * metadata to path atomically. */
int st_save(const char *path, const st_tensor *tensors, size_t n, const st_kv *meta, size_t nmeta, char *err);
/* The same bytes into a malloc'd buffer (for tests and fuzzing). */
int st_serialize(const st_tensor *tensors, size_t n, const st_kv *meta, size_t nmeta, uint8_t **out,
                 size_t *len, char *err);

typedef struct st_file {
    size_t ntensors;
    st_tensor *tensors;     /* in header order */
    size_t nmeta;
    st_kv *meta;            /* in header order */
    /* private */
    uint8_t *alloc;         /* owned file bytes (st_load) */
    struct json_doc *doc;   /* owns names and metadata strings */
    const st_tensor **by_name; /* sorted by name, for st_find */
} st_file;

/* Loads a file; files larger than max_bytes (0: no limit but memory) are
 * refused before reading. The data section is 64-byte aligned in memory. */
int st_load(const char *path, size_t max_bytes, st_file **out, char *err);
/* Parses a buffer in place (tensor data points into buf, which must outlive
 * the result). `what` names the buffer in messages ("<memory>" if NULL). */
int st_parse(const void *buf, size_t n, const char *what, st_file **out, char *err);
void st_free(st_file *f);

const st_tensor *st_find(const st_file *f, const char *name);   /* NULL if absent */
const char *st_meta_get(const st_file *f, const char *key);    /* NULL if absent */

/* Copies t into dst (count elements of dtype want), converting: any numeric
 * dtype to F32/F64; integer dtypes to I32 with a range check; BOOL/U8 (0/1) to
 * BOOL. count must equal st_numel(t). Unaligned data is handled. */
int st_read_as(const st_tensor *t, st_dtype want, void *dst, int64_t count, char *err);

#endif
