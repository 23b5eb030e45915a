/* safetensors.c: see safetensors.h */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "json.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c stores tensors in host order and needs a little-endian host"
#endif

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},   [ST_U16] = {"U16", 2},
    [ST_I16] = {"I16", 2},   [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2}, [ST_U32] = {"U32", 4},
    [ST_I32] = {"I32", 4},   [ST_F32] = {"F32", 4},   [ST_U64] = {"U64", 8}, [ST_I64] = {"I64", 8},
    [ST_F64] = {"F64", 8},
};

const char *st_dtype_name(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dtype_info[t].name : "?"; }
size_t st_dtype_size(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dtype_info[t].size : 0; }

int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(s, dtype_info[i].name))
            return i;
    return -1;
}

int st_from_lethe(int d) {
    switch (d) {
    case LETHE_BOOL: return ST_BOOL;
    case LETHE_I32: return ST_I32;
    case LETHE_F32: return ST_F32;
    case LETHE_F64: return ST_F64;
    }
    return -1;
}

int st_to_lethe(st_dtype t) {
    switch (t) {
    case ST_BOOL: return LETHE_BOOL;
    case ST_I32: return LETHE_I32;
    case ST_F32: return LETHE_F32;
    case ST_F64: return LETHE_F64;
    default: return -1;
    }
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->rank; i++)
        n *= t->shape[i];
    return n;
}

/* numel * elem size with overflow checks; 0 on success. */
static int tensor_bytes(const int64_t *shape, int rank, size_t elem, uint64_t *out) {
    uint64_t n = elem;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n))
            return -1;
    }
    *out = n;
    return 0;
}

/* ---- writing ------------------------------------------------------------- */

typedef struct layout {
    size_t *order;      /* data section order: indices into tensors */
    uint64_t *begin;    /* per tensor (caller order) */
    uint64_t *bytes;
    uint64_t data_len;
    char *header;       /* padded JSON header */
    size_t header_len;
} layout;

static void layout_free(layout *L) {
    free(L->order);
    free(L->begin);
    free(L->bytes);
    free(L->header);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Validates the tensors and builds the header and data layout. */
static int make_layout(const st_tensor *ts, size_t n, const st_kv *meta, size_t nmeta, layout *L, char *err) {
    memset(L, 0, sizeof *L);
    if (n && !ts)
        return lethe_errf(err, LETHE_EARG, "safetensors: NULL tensor list");
    L->order = malloc((n + 1) * sizeof *L->order);
    L->begin = malloc((n + 1) * sizeof *L->begin);
    L->bytes = malloc((n + 1) * sizeof *L->bytes);
    const char **names = malloc((n + 1) * sizeof *names);
    if (!L->order || !L->begin || !L->bytes || !names) {
        free(names);
        layout_free(L);
        return lethe_errf(err, LETHE_ENOMEM, "safetensors: out of memory");
    }
    int rc = LETHE_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        const st_tensor *t = &ts[i];
        if (!t->name || !t->name[0])
            rc = lethe_errf(err, LETHE_EARG, "safetensors: tensor %zu has no name", i);
        else if (!strcmp(t->name, "__metadata__"))
            rc = lethe_errf(err, LETHE_EARG, "safetensors: \"__metadata__\" cannot name a tensor");
        else if ((unsigned)t->dtype >= ST_NDTYPES)
            rc = lethe_errf(err, LETHE_EARG, "safetensors: tensor '%s' has an invalid dtype %d", t->name, (int)t->dtype);
        else if (t->rank < 0 || t->rank > ST_MAX_RANK)
            rc = lethe_errf(err, LETHE_EARG, "safetensors: tensor '%s' has rank %d (at most %d)", t->name, t->rank,
                            ST_MAX_RANK);
        else if (tensor_bytes(t->shape, t->rank, st_dtype_size(t->dtype), &L->bytes[i]))
            rc = lethe_errf(err, LETHE_EARG, "safetensors: tensor '%s' has a negative or overflowing shape", t->name);
        else if (L->bytes[i] && !t->data)
            rc = lethe_errf(err, LETHE_EARG, "safetensors: tensor '%s' has no data", t->name);
        names[i] = t->name;
    }
    if (!rc && n > 1) {
        qsort(names, n, sizeof *names, cmp_str);
        for (size_t i = 1; i < n && !rc; i++)
            if (!strcmp(names[i - 1], names[i]))
                rc = lethe_errf(err, LETHE_EARG, "safetensors: duplicate tensor name '%s'", names[i]);
    }
    free(names);
    for (size_t i = 0; i < nmeta && !rc; i++)
        if (!meta[i].key || !meta[i].value)
            rc = lethe_errf(err, LETHE_EARG, "safetensors: metadata entry %zu has a NULL key or value", i);
    if (rc) {
        layout_free(L);
        return rc;
    }
    /* Data order: stable by decreasing element size, so each tensor starts
     * at a multiple of its element size without padding (holes are not
     * allowed by the format). */
    size_t k = 0;
    for (size_t sz = 8; sz >= 1; sz /= 2)
        for (size_t i = 0; i < n; i++)
            if (st_dtype_size(ts[i].dtype) == sz)
                L->order[k++] = i;
    uint64_t off = 0;
    for (size_t j = 0; j < n; j++) {
        size_t i = L->order[j];
        L->begin[i] = off;
        off += L->bytes[i];
    }
    L->data_len = off;

    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    if (nmeta) {
        jw_key(&w, "__metadata__");
        jw_obj_begin(&w);
        for (size_t i = 0; i < nmeta; i++)
            jw_kv_str(&w, meta[i].key, meta[i].value);
        jw_obj_end(&w);
    }
    for (size_t i = 0; i < n; i++) {
        jw_key(&w, ts[i].name);
        jw_obj_begin(&w);
        jw_kv_str(&w, "dtype", st_dtype_name(ts[i].dtype));
        jw_key(&w, "shape");
        jw_arr_begin(&w);
        for (int d = 0; d < ts[i].rank; d++)
            jw_int(&w, ts[i].shape[d]);
        jw_arr_end(&w);
        jw_key(&w, "data_offsets");
        jw_arr_begin(&w);
        jw_uint(&w, L->begin[i]);
        jw_uint(&w, L->begin[i] + L->bytes[i]);
        jw_arr_end(&w);
        jw_obj_end(&w);
    }
    jw_obj_end(&w);
    size_t hlen;
    const char *h = jw_finish(&w, &hlen);
    if (!h) {
        jw_free(&w);
        layout_free(L);
        return lethe_errf(err, LETHE_ENOMEM, "safetensors: out of memory building the header");
    }
    size_t padded = (8 + hlen + 7) / 8 * 8 - 8;
    L->header = malloc(padded + 8);
    if (!L->header) {
        jw_free(&w);
        layout_free(L);
        return lethe_errf(err, LETHE_ENOMEM, "safetensors: out of memory");
    }
    for (int b = 0; b < 8; b++)
        L->header[b] = (char)((uint64_t)padded >> (8 * b));
    memcpy(L->header + 8, h, hlen);
    memset(L->header + 8 + hlen, ' ', padded - hlen);
    L->header_len = padded + 8;
    jw_free(&w);
    return LETHE_OK;
}

int st_save(const char *path, const st_tensor *ts, size_t n, const st_kv *meta, size_t nmeta, char *err) {
    layout L;
    int rc = make_layout(ts, n, meta, nmeta, &L, err);
    if (rc) {
        if (err) {
            char tmp[LETHE_ERR_LEN];
            snprintf(tmp, sizeof tmp, "%s: %s", path, err);
            memcpy(err, tmp, sizeof tmp);
        }
        return rc;
    }
    fs_atomic a;
    rc = fs_atomic_begin(&a, path, err);
    if (rc) {
        layout_free(&L);
        return rc;
    }
    fs_atomic_write(&a, L.header, L.header_len);
    for (size_t j = 0; j < n; j++) {
        size_t i = L.order[j];
        fs_atomic_write(&a, ts[i].data, L.bytes[i]);
    }
    layout_free(&L);
    return fs_atomic_commit(&a, err);
}

int st_serialize(const st_tensor *ts, size_t n, const st_kv *meta, size_t nmeta, uint8_t **out, size_t *len,
                 char *err) {
    *out = NULL;
    *len = 0;
    layout L;
    int rc = make_layout(ts, n, meta, nmeta, &L, err);
    if (rc)
        return rc;
    uint8_t *buf = malloc(L.header_len + L.data_len + 1);
    if (!buf) {
        layout_free(&L);
        return lethe_errf(err, LETHE_ENOMEM, "safetensors: out of memory");
    }
    memcpy(buf, L.header, L.header_len);
    for (size_t j = 0; j < n; j++) {
        size_t i = L.order[j];
        if (L.bytes[i])
            memcpy(buf + L.header_len + L.begin[i], ts[i].data, L.bytes[i]);
    }
    *out = buf;
    *len = L.header_len + L.data_len;
    layout_free(&L);
    return LETHE_OK;
}

/* ---- reading ---------------------------------------------------------------- */

void st_free(st_file *f) {
    if (!f)
        return;
    free(f->tensors);
    free(f->meta);
    free(f->by_name);
    json_doc_free(f->doc);
    free(f->alloc);
    free(f);
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

typedef struct span {
    uint64_t begin, end;
    size_t index;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Reads a non-negative JSON integer. */
static int get_u64(const json_value *v, uint64_t *out) {
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->i64 < 0)
        return -1;
    *out = (uint64_t)v->i64;
    return 0;
}

static int parse_entry(const char *what, const char *name, const json_value *e, uint64_t data_len, st_tensor *t,
                       uint64_t *begin, uint64_t *end, char *err) {
    if (e->type != JSON_OBJECT)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': expected an object, found a %s", what, name,
                          json_type_name(e->type));
    for (size_t i = 0; i < e->len; i++)
        if (strcmp(e->keys[i], "dtype") && strcmp(e->keys[i], "shape") && strcmp(e->keys[i], "data_offsets"))
            return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': unknown field \"%.32s\"", what, name,
                              e->keys[i]);
    const json_value *dt = json_obj_get(e, "dtype"), *sh = json_obj_get(e, "shape"),
                     *of = json_obj_get(e, "data_offsets");
    if (!dt || !sh || !of)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': missing \"%s\"", what, name,
                          !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (dt->type != JSON_STRING)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': dtype must be a string", what, name);
    int d = strlen(dt->str) == dt->len ? st_dtype_from_name(dt->str) : -1;
    if (d < 0)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': unknown dtype \"%.16s\"", what, name, dt->str);
    if (sh->type != JSON_ARRAY)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': shape must be an array", what, name);
    if (sh->len > ST_MAX_RANK)
        return lethe_errf(err, LETHE_ELIMIT, "%s: tensor '%.64s': rank %zu is more than %d", what, name, sh->len,
                          ST_MAX_RANK);
    t->name = name;
    t->dtype = (st_dtype)d;
    t->rank = (int)sh->len;
    for (size_t i = 0; i < sh->len; i++) {
        uint64_t v;
        if (get_u64(&sh->items[i], &v))
            return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': shape[%zu] is not a non-negative integer",
                              what, name, i);
        t->shape[i] = (int64_t)v;
    }
    uint64_t bytes;
    if (tensor_bytes(t->shape, t->rank, st_dtype_size(t->dtype), &bytes))
        return lethe_errf(err, LETHE_ELIMIT, "%s: tensor '%.64s': shape overflows", what, name);
    if (of->type != JSON_ARRAY || of->len != 2 || get_u64(&of->items[0], begin) || get_u64(&of->items[1], end))
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': data_offsets must be two non-negative integers",
                          what, name);
    if (*begin > *end)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': data_offsets [%" PRIu64 ", %" PRIu64
                          "] end before they begin", what, name, *begin, *end);
    if (*end > data_len)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': data_offsets end at %" PRIu64
                          " but the data section has %" PRIu64 " bytes (truncated file?)", what, name, *end, data_len);
    if (*end - *begin != bytes)
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s': %s shape needs %" PRIu64
                          " bytes but data_offsets span %" PRIu64, what, name, st_dtype_name(t->dtype), bytes,
                          *end - *begin);
    t->nbytes = bytes;
    return LETHE_OK;
}

static int parse_header(const uint8_t *buf, size_t n, const uint8_t *data, const char *what, st_file *f,
                        char *err) {
    if (n < 8)
        return lethe_errf(err, LETHE_EFORMAT, "%s: %zu bytes is too short for a safetensors file (8-byte header "
                          "length missing)", what, n);
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++)
        hlen |= (uint64_t)buf[b] << (8 * b);
    if (hlen > ST_MAX_HEADER)
        return lethe_errf(err, LETHE_ELIMIT, "%s: header length %" PRIu64 " is more than the limit of %u bytes "
                          "(not a safetensors file?)", what, hlen, ST_MAX_HEADER);
    if (hlen > n - 8)
        return lethe_errf(err, LETHE_EFORMAT, "%s: header length %" PRIu64 " exceeds the %zu bytes after it "
                          "(truncated or not a safetensors file)", what, hlen, n - 8);
    if (hlen < 2 || buf[8] != '{')
        return lethe_errf(err, LETHE_EFORMAT, "%s: the header is not a JSON object", what);
    uint64_t data_len = n - 8 - hlen;
    char jerr[LETHE_ERR_LEN];
    json_limits lim = {.max_bytes = ST_MAX_HEADER, .max_depth = 4, .max_values = 0};
    int rc = json_parse((const char *)buf + 8, hlen, &lim, &f->doc, jerr);
    if (rc)
        return lethe_errf(err, rc, "%s: header JSON: %s", what, jerr);
    const json_value *root = json_doc_root(f->doc);
    if (root->type != JSON_OBJECT)
        return lethe_errf(err, LETHE_EFORMAT, "%s: the header is not a JSON object", what);
    f->tensors = calloc(root->len + 1, sizeof *f->tensors);
    span *spans = calloc(root->len + 1, sizeof *spans);
    if (!f->tensors || !spans) {
        free(spans);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", what);
    }
    rc = LETHE_OK;
    for (size_t i = 0; i < root->len && !rc; i++) {
        const char *key = root->keys[i];
        const json_value *v = &root->items[i];
        if (strlen(key) != root->key_lens[i] || !key[0]) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: empty tensor name or a name with a NUL byte", what);
        } else if (!strcmp(key, "__metadata__")) {
            if (v->type != JSON_OBJECT) {
                rc = lethe_errf(err, LETHE_EFORMAT, "%s: __metadata__ must be an object", what);
                break;
            }
            f->meta = calloc(v->len + 1, sizeof *f->meta);
            if (!f->meta) {
                rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", what);
                break;
            }
            for (size_t j = 0; j < v->len; j++) {
                if (v->items[j].type != JSON_STRING) {
                    rc = lethe_errf(err, LETHE_EFORMAT, "%s: __metadata__ value of \"%.64s\" is a %s, not a string",
                                    what, v->keys[j], json_type_name(v->items[j].type));
                    break;
                }
                f->meta[f->nmeta++] = (st_kv){v->keys[j], v->items[j].str};
            }
        } else {
            st_tensor *t = &f->tensors[f->ntensors];
            span *s = &spans[f->ntensors];
            rc = parse_entry(what, key, v, data_len, t, &s->begin, &s->end, err);
            s->index = f->ntensors;
            if (rc == 0)
                t->data = data + s->begin; /* only once begin is known to lie in the data */
            f->ntensors++;
        }
    }
    if (!rc) {
        /* The tensors must tile [0, data_len) exactly, as the reference
         * library demands: sorted by offset, each begins where the last one
         * ended. This rules out overlaps (two names sharing bytes) and holes. */
        qsort(spans, f->ntensors, sizeof *spans, cmp_span);
        uint64_t at = 0;
        for (size_t i = 0; i < f->ntensors && !rc; i++) {
            const st_tensor *t = &f->tensors[spans[i].index];
            if (spans[i].begin < at)
                rc = lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%.64s' at bytes [%" PRIu64 ", %" PRIu64
                                ") overlaps the previous tensor", what, t->name, spans[i].begin, spans[i].end);
            else if (spans[i].begin > at)
                rc = lethe_errf(err, LETHE_EFORMAT, "%s: a hole of %" PRIu64 " bytes before tensor '%.64s' in the "
                                "data section", what, spans[i].begin - at, t->name);
            at = spans[i].end;
        }
        if (!rc && at != data_len)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: %" PRIu64 " bytes after the last tensor (data section has %"
                            PRIu64 ")", what, data_len - at, data_len);
    }
    free(spans);
    if (rc)
        return rc;
    f->by_name = malloc((f->ntensors + 1) * sizeof *f->by_name);
    if (!f->by_name)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", what);
    for (size_t i = 0; i < f->ntensors; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->ntensors, sizeof *f->by_name, cmp_by_name);
    return LETHE_OK;
}

int st_parse(const void *buf, size_t n, const char *what, st_file **out, char *err) {
    *out = NULL;
    if (!what)
        what = "<memory>";
    st_file *f = calloc(1, sizeof *f);
    if (!f)
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", what);
    const uint8_t *b = buf;
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && n >= 8; i++)
        hlen |= (uint64_t)b[i] << (8 * i);
    const uint8_t *data = n >= 8 && hlen <= n - 8 ? b + 8 + hlen : b;
    int rc = parse_header(b, n, data, what, f, err);
    if (rc) {
        st_free(f);
        return rc;
    }
    *out = f;
    return LETHE_OK;
}

int st_load(const char *path, size_t max_bytes, st_file **out, char *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lethe_errf(err, errno == ENOENT ? LETHE_ENOTFOUND : LETHE_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lethe_errf(err, LETHE_EIO, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if ((max_bytes && size > max_bytes) || size > SIZE_MAX / 2) {
        close(fd);
        return lethe_errf(err, LETHE_ELIMIT, "%s: %" PRIu64 " bytes is more than the limit of %zu", path, size,
                          max_bytes);
    }
    uint8_t head[8] = {0};
    uint64_t hlen = 0;
    if (size >= 8 && pread(fd, head, 8, 0) == 8)
        for (int i = 0; i < 8; i++)
            hlen |= (uint64_t)head[i] << (8 * i);
    if (hlen > size)
        hlen = 0; /* refused by the parser below; only the alignment is at stake */
    /* Place the bytes so that the data section (offset 8 + hlen) lands on a
     * 64-byte boundary: tensors are then aligned for any dtype and SIMD. */
    size_t shift = (64 - (size_t)((8 + hlen) % 64)) % 64;
    uint8_t *alloc = malloc((size_t)size + shift + 64);
    if (!alloc) {
        close(fd);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory for %" PRIu64 " bytes", path, size);
    }
    uint8_t *base = (uint8_t *)(((uintptr_t)alloc + 63) & ~(uintptr_t)63) + shift;
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(fd, base + got, (size_t)size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            free(alloc);
            return lethe_errf(err, LETHE_EIO, "%s: read failed after %zu of %" PRIu64 " bytes%s%s", path, got, size,
                              e ? ": " : " (file shrank)", e ? strerror(e) : "");
        }
        got += (size_t)r;
    }
    close(fd);
    st_file *f;
    int rc = st_parse(base, (size_t)size, path, &f, err);
    if (rc) {
        free(alloc);
        return rc;
    }
    f->alloc = alloc;
    *out = f;
    return LETHE_OK;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    if (!f || !name)
        return NULL;
    size_t lo = 0, hi = f->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *st_meta_get(const st_file *f, const char *key) {
    for (size_t i = 0; f && key && i < f->nmeta; i++)
        if (!strcmp(f->meta[i].key, key))
            return f->meta[i].value;
    return NULL;
}

/* ---- conversion --------------------------------------------------------------- */

static double half_to_double(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    double v;
    if (exp == 0)
        v = ldexp(man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexp(man | 0x400, exp - 25);
    return sign ? -v : v;
}

static double bf16_to_double(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Element i of t as a double; integers above 2^53 lose precision, which
 * only matters for conversion to floats. */
static double elem_f64(const st_tensor *t, int64_t i) {
    const uint8_t *p = (const uint8_t *)t->data + (size_t)i * st_dtype_size(t->dtype);
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } u;
    memcpy(&u, p, st_dtype_size(t->dtype));
    switch (t->dtype) {
    case ST_BOOL: return u.u8 != 0;
    case ST_U8: return u.u8;
    case ST_I8: return u.i8;
    case ST_U16: return u.u16;
    case ST_I16: return u.i16;
    case ST_F16: return half_to_double(u.u16);
    case ST_BF16: return bf16_to_double(u.u16);
    case ST_U32: return u.u32;
    case ST_I32: return u.i32;
    case ST_F32: return u.f32;
    case ST_U64: return (double)u.u64;
    case ST_I64: return (double)u.i64;
    case ST_F64: return u.f64;
    default: return NAN;
    }
}

static int is_integer_dtype(st_dtype t) {
    return t == ST_BOOL || t == ST_U8 || t == ST_I8 || t == ST_U16 || t == ST_I16 || t == ST_U32 || t == ST_I32 ||
           t == ST_U64 || t == ST_I64;
}

int st_read_as(const st_tensor *t, st_dtype want, void *dst, int64_t count, char *err) {
    int64_t n = st_numel(t);
    if (count != n)
        return lethe_errf(err, LETHE_EARG, "tensor '%.64s': has %" PRId64 " elements, expected %" PRId64, t->name, n,
                          count);
    if (t->dtype == want) {
        if (t->nbytes)
            memcpy(dst, t->data, t->nbytes);
        return LETHE_OK;
    }
    if (want == ST_F32 || want == ST_F64) {
        for (int64_t i = 0; i < n; i++) {
            double v = elem_f64(t, i);
            if (want == ST_F32)
                ((float *)dst)[i] = (float)v;
            else
                ((double *)dst)[i] = v;
        }
        return LETHE_OK;
    }
    if (want == ST_I32 && is_integer_dtype(t->dtype)) {
        size_t es = st_dtype_size(t->dtype);
        for (int64_t i = 0; i < n; i++) {
            const uint8_t *p = (const uint8_t *)t->data + (size_t)i * es;
            int64_t v;
            if (t->dtype == ST_U64) {
                uint64_t u;
                memcpy(&u, p, 8);
                v = u > INT32_MAX ? INT64_MAX : (int64_t)u;
            } else if (t->dtype == ST_I64) {
                memcpy(&v, p, 8);
            } else {
                v = (int64_t)elem_f64(t, i);
            }
            if (v < INT32_MIN || v > INT32_MAX)
                return lethe_errf(err, LETHE_ELIMIT, "tensor '%.64s': element %" PRId64 " does not fit in I32",
                                  t->name, i);
            ((int32_t *)dst)[i] = (int32_t)v;
        }
        return LETHE_OK;
    }
    if (want == ST_BOOL && t->dtype == ST_U8) {
        const uint8_t *p = t->data;
        for (int64_t i = 0; i < n; i++) {
            if (p[i] > 1)
                return lethe_errf(err, LETHE_EFORMAT, "tensor '%.64s': element %" PRId64 " is %u, not 0 or 1",
                                  t->name, i, p[i]);
            ((uint8_t *)dst)[i] = p[i];
        }
        return LETHE_OK;
    }
    return lethe_errf(err, LETHE_EARG, "tensor '%.64s': cannot convert %s to %s", t->name, st_dtype_name(t->dtype),
                      st_dtype_name(want));
}
