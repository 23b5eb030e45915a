/* fuzz_loaders.c: one libFuzzer target over every parser of untrusted bytes
 * in the runtime, all from memory buffers:
 *
 *   first byte % 9    target
 *   0                 IDX images + labels (ds_parse_idx); the next two bytes
 *                     (little-endian) say where the image part ends
 *   1                 CIFAR-10 binary records (ds_parse_cifar10)
 *   2                 safetensors (st_parse), every tensor converted, and
 *                     the file re-serialised and re-parsed: the same tensors
 *   3                 JSON (json_parse), the tree walked, written back with
 *                     the writer and parsed again: the same tree
 *   4                 gzip (ds_gunzip)
 *   5                 GPT-2 BPE (bpe.h); the next byte's bit 0 picks:
 *                     0: the rest is text for the tiny vocabulary of
 *                        bpe_tiny_vocab.h (bit 1: <|endoftext|> allowed):
 *                        the pieces tile it, decode(encode(x)) == x
 *                     1: the rest is encoder.json, a NUL, vocab.bpe: refused
 *                        cleanly or, if loaded, it round-trips text
 *   6, 7, 8           readers that take a path (fuzz_disk.h): an aclImdb
 *                     split, a Hugging Face GPT-2 checkpoint through its
 *                     name map, a crafted poison set with its key
 *
 * The rest of the input is the file. Failures must leave a NUL-terminated,
 * non-empty message and nothing allocated; successes must be internally
 * consistent. Limits are small so the fuzzer explores structure, not size.
 *
 * Build and run (from the repository root):
 *   clang-19 -std=gnu11 -O1 -g -fsanitize=fuzzer,address,undefined -Iruntime \
 *       tests/fuzz/fuzz_loaders.c <every runtime source but main.c> \
 *       -lopenblas -lz -lm -lpthread -ldl -o build/fuzz_loaders   (or `make fuzz`)
 *   build/fuzz_loaders -max_total_time=300 -max_len=65536 \
 *       -dict=tests/fuzz/loaders.dict build/fuzz-corpus tests/fuzz/corpus_loaders
 * tests/unit/test_fuzz_loaders_replay.c replays tests/fuzz/corpus_loaders in `make test`.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "data.h"
#include "json.h"
#include "safetensors.h"

#include "bpe_tiny_vocab.h"

/* Any violated expectation aborts, which libFuzzer and the replay test report. */
#define FUZZ_EXPECT(cond)                                                      \
    do {                                                                       \
        if (!(cond))                                                           \
            abort();                                                           \
    } while (0)

static void check_error(int rc, const char *err) {
    FUZZ_EXPECT(rc < 0);
    size_t n = strnlen(err, LETHE_ERR_LEN);
    FUZZ_EXPECT(n > 0 && n < LETHE_ERR_LEN);
}

#include "fuzz_disk.h"

static void check_dataset(const lethe_dataset *ds) {
    FUZZ_EXPECT(ds->n > 0 && ds->d == (int64_t)ds->c * ds->h * ds->w);
    double sum = 0;
    for (int64_t i = 0; i < ds->n * ds->d; i++)
        sum += ds->x[i]; /* touches every value: ASan sees any overrun */
    FUZZ_EXPECT(sum >= 0);
    for (int64_t i = 0; i < ds->n; i++)
        FUZZ_EXPECT(ds->y[i] >= 0 && ds->y[i] < ds->num_classes && ds->id[i] == i);
}

static size_t walk(const json_value *v, int depth) {
    FUZZ_EXPECT(depth <= JSON_MAX_DEPTH);
    size_t n = 1;
    if (v->type == JSON_STRING)
        FUZZ_EXPECT(v->str[v->len] == 0);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++) {
            if (v->type == JSON_OBJECT)
                FUZZ_EXPECT(v->keys[i][v->key_lens[i]] == 0);
            n += walk(&v->items[i], depth + 1);
        }
    return n;
}

/* Writes a parsed tree back with the writer, for the round-trip check. */
static void rewrite(jw *w, const json_value *v) {
    switch (v->type) {
    case JSON_NULL: jw_null(w); break;
    case JSON_BOOL: jw_bool(w, v->boolean); break;
    case JSON_NUMBER:
        if (v->is_int)
            jw_int(w, v->i64);
        else
            jw_num(w, v->num);
        break;
    case JSON_STRING: jw_strn(w, v->str, v->len); break;
    case JSON_ARRAY:
        jw_arr_begin(w);
        for (size_t i = 0; i < v->len; i++)
            rewrite(w, &v->items[i]);
        jw_arr_end(w);
        break;
    case JSON_OBJECT:
        jw_obj_begin(w);
        for (size_t i = 0; i < v->len; i++) {
            /* jw_key takes C strings: keys with NUL bytes cannot be rewritten */
            FUZZ_EXPECT(strlen(v->keys[i]) == v->key_lens[i]);
            jw_key(w, v->keys[i]);
            rewrite(w, &v->items[i]);
        }
        jw_obj_end(w);
        break;
    }
}

static int has_nul_key(const json_value *v) {
    if (v->type == JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++)
            if (strlen(v->keys[i]) != v->key_lens[i])
                return 1;
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++)
            if (has_nul_key(&v->items[i]))
                return 1;
    return 0;
}

static void same_tree(const json_value *a, const json_value *b) {
    FUZZ_EXPECT(a->type == b->type);
    switch (a->type) {
    case JSON_BOOL: FUZZ_EXPECT(a->boolean == b->boolean); break;
    case JSON_NUMBER:
        /* an integral double (0e1) is written as an integer (0): only the
         * integer-ness of integer literals must survive */
        FUZZ_EXPECT(a->num == b->num && (!a->is_int || (b->is_int && a->i64 == b->i64)));
        break;
    case JSON_STRING: FUZZ_EXPECT(a->len == b->len && !memcmp(a->str, b->str, a->len)); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        FUZZ_EXPECT(a->len == b->len);
        for (size_t i = 0; i < a->len; i++) {
            if (a->type == JSON_OBJECT)
                FUZZ_EXPECT(a->key_lens[i] == b->key_lens[i] && !memcmp(a->keys[i], b->keys[i], a->key_lens[i]));
            same_tree(&a->items[i], &b->items[i]);
        }
        break;
    default: break;
    }
}

/* parse -> serialize -> parse gives the same tensors and metadata */
static void st_roundtrip(const st_file *f) {
    uint8_t *buf;
    size_t len;
    char err[LETHE_ERR_LEN];
    FUZZ_EXPECT(st_serialize(f->tensors, f->ntensors, f->meta, f->nmeta, &buf, &len, err) == 0);
    st_file *g = NULL;
    FUZZ_EXPECT(st_parse(buf, len, "again", &g, err) == 0);
    FUZZ_EXPECT(g->ntensors == f->ntensors && g->nmeta == f->nmeta);
    for (size_t i = 0; i < f->ntensors; i++) {
        const st_tensor *a = &f->tensors[i], *b = &g->tensors[i];
        FUZZ_EXPECT(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->rank == b->rank &&
                    a->nbytes == b->nbytes);
        FUZZ_EXPECT(!memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->rank));
        FUZZ_EXPECT(a->nbytes == 0 || !memcmp(a->data, b->data, a->nbytes));
        /* our writer aligns every tensor to its element size */
        FUZZ_EXPECT((size_t)((const uint8_t *)b->data - buf) % st_dtype_size(b->dtype) == 0);
    }
    for (size_t i = 0; i < f->nmeta; i++)
        FUZZ_EXPECT(!strcmp(f->meta[i].value, st_meta_get(g, f->meta[i].key)));
    st_free(g);
    free(buf);
}

/* The pre-tokenizer tiles the text and decode(encode(text)) == text. */
static void bpe_round_trip(bpe *b, const uint8_t *text, size_t n, int flags) {
    for (size_t i = 0; i < n;) {
        size_t end = bpe_piece_end(text, n, i);
        FUZZ_EXPECT(end > i && end <= n);
        i = end;
    }
    char err[LETHE_ERR_LEN];
    bpe_ids ids = {0};
    FUZZ_EXPECT(bpe_encode(b, text, n, flags, &ids, err) == 0);
    FUZZ_EXPECT(ids.n <= n); /* every token stands for at least one byte */
    uint8_t *back = NULL;
    size_t len = 0;
    FUZZ_EXPECT(bpe_decode(b, ids.ids, ids.n, &back, &len, err) == 0);
    FUZZ_EXPECT(len == n && (n == 0 || !memcmp(back, text, n)));
    free(back);
    bpe_ids_free(&ids);
}

/* bpe_tiny_vocab.h's vocabulary, loaded once and kept */
static bpe *tiny_bpe(void) {
    static bpe *b;
    if (!b) {
        size_t elen, vlen;
        char *enc = tiny_encoder_json(&elen), *voc = tiny_vocab_bpe(&vlen), err[LETHE_ERR_LEN];
        FUZZ_EXPECT(bpe_load_mem(enc, elen, "tiny.json", voc, vlen, "tiny.bpe", &b, err) == 0);
        free(enc);
        free(voc);
    }
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    int target = data[0] % 9;
    data++;
    size--;
    char err[LETHE_ERR_LEN];
    memset(err, 0, sizeof err);
    const ds_limits lim = {.max_samples = 1 << 16, .max_side = 1024, .max_file_bytes = 1 << 22,
                           .max_decoded_bytes = 1 << 22};
    switch (target) {
    case 0: {
        if (size < 2)
            return 0;
        size_t split = (size_t)data[0] | (size_t)data[1] << 8;
        data += 2;
        size -= 2;
        if (split > size)
            split = size;
        lethe_dataset ds;
        int rc = ds_parse_idx(data, split, "images", data + split, size - split, "labels", 10, &lim, &ds, err);
        if (rc == 0) {
            FUZZ_EXPECT(ds.c == 1 && ds.rank == 3);
            check_dataset(&ds);
            ds_free(&ds);
        } else {
            check_error(rc, err);
            FUZZ_EXPECT(ds.x == NULL && ds.y == NULL && ds.id == NULL);
        }
        break;
    }
    case 1: {
        lethe_dataset ds;
        int rc = ds_parse_cifar10(data, size, "cifar", &lim, &ds, err);
        if (rc == 0) {
            FUZZ_EXPECT(ds.c == 3 && ds.h == 32 && ds.w == 32);
            check_dataset(&ds);
            ds_free(&ds);
        } else {
            check_error(rc, err);
            FUZZ_EXPECT(ds.x == NULL);
        }
        break;
    }
    case 2: {
        st_file *f = NULL;
        int rc = st_parse(data, size, "st", &f, err);
        if (rc != 0) {
            check_error(rc, err);
            FUZZ_EXPECT(f == NULL);
            break;
        }
        for (size_t i = 0; i < f->ntensors; i++) {
            const st_tensor *t = &f->tensors[i];
            FUZZ_EXPECT(st_find(f, t->name) == t);
            FUZZ_EXPECT((const uint8_t *)t->data >= data && (const uint8_t *)t->data + t->nbytes <= data + size);
            int64_t n = st_numel(t);
            FUZZ_EXPECT((uint64_t)n * st_dtype_size(t->dtype) == t->nbytes);
            double *out = malloc((size_t)n * sizeof(double) + 8);
            FUZZ_EXPECT(out != NULL);
            FUZZ_EXPECT(st_read_as(t, ST_F64, out, n, err) == 0);
            int32_t *o32 = malloc((size_t)n * sizeof(int32_t) + 8);
            FUZZ_EXPECT(o32 != NULL);
            int r32 = st_read_as(t, ST_I32, o32, n, err);
            if (r32)
                check_error(r32, err);
            free(out);
            free(o32);
        }
        for (size_t i = 0; i < f->nmeta; i++)
            FUZZ_EXPECT(st_meta_get(f, f->meta[i].key) != NULL);
        st_roundtrip(f);
        st_free(f);
        break;
    }
    case 3: {
        json_doc *d = NULL;
        int rc = json_parse((const char *)data, size, NULL, &d, err);
        if (rc == 0) {
            walk(json_doc_root(d), 0);
            if (!has_nul_key(json_doc_root(d))) {
                jw w;
                jw_init(&w);
                rewrite(&w, json_doc_root(d));
                size_t len;
                const char *text = jw_finish(&w, &len);
                FUZZ_EXPECT(text != NULL);
                json_doc *d2 = NULL;
                FUZZ_EXPECT(json_parse(text, len, NULL, &d2, err) == 0);
                same_tree(json_doc_root(d), json_doc_root(d2));
                json_doc_free(d2);
                jw_free(&w);
            }
            json_doc_free(d);
        } else {
            check_error(rc, err);
            FUZZ_EXPECT(d == NULL);
        }
        break;
    }
    case 4: {
        uint8_t *out = NULL;
        size_t n = 0;
        int rc = ds_gunzip(data, size, 1 << 22, "gz", &out, &n, err);
        if (rc == 0) {
            FUZZ_EXPECT(n <= (1u << 22));
            free(out);
        } else {
            check_error(rc, err);
            FUZZ_EXPECT(out == NULL);
        }
        break;
    }
    case 5: {
        if (size < 1)
            return 0;
        int mode = data[0];
        data++;
        size--;
        if (!(mode & 1)) {
            bpe_round_trip(tiny_bpe(), data, size, mode & 2 ? BPE_ALLOW_SPECIAL : 0);
            break;
        }
        const uint8_t *nul = memchr(data, 0, size);
        size_t elen = nul ? (size_t)(nul - data) : size;
        const char *voc = nul ? (const char *)nul + 1 : "";
        size_t vlen = nul ? size - elen - 1 : 0;
        bpe *b = NULL;
        int rc = bpe_load_mem((const char *)data, elen, "encoder.json", voc, vlen, "vocab.bpe", &b, err);
        if (rc) {
            check_error(rc, err);
            FUZZ_EXPECT(b == NULL);
            break;
        }
        static const char text[] = "hello world, it's 2026: caf\xc3\xa9 \xe6\x97\xa5 \xff\xfe <|endoftext|>\n\n";
        bpe_round_trip(b, (const uint8_t *)text, sizeof text - 1, BPE_ALLOW_SPECIAL);
        bpe_round_trip(b, (const uint8_t *)voc, vlen, 0);
        bpe_free(b);
        break;
    }
    case 6: fuzz_imdb(data, size); break;
    case 7: fuzz_hf(data, size); break;
    case 8: fuzz_poison(data, size); break;
    }
    return 0;
}
