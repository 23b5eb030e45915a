/* text_tokens.c: review sets as fixed-length token rows, and their cache
 * (see text_tokens.h). */
#include "text_tokens.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "safetensors.h"

const char *text_form_name(text_form f) { return f == TEXT_FORM_PROMPT ? "prompt" : "classify"; }

int text_form_parse(const char *s) {
    if (!strcmp(s, "classify"))
        return TEXT_FORM_CLASSIFY;
    if (!strcmp(s, "prompt"))
        return TEXT_FORM_PROMPT;
    return -1;
}

void text_tokens_free(text_tokens *t) {
    if (!t)
        return;
    free(t->tokens);
    free(t->mask);
    free(t->labels);
    free(t->ids);
    free(t->last);
    free(t->answer_at);
    free(t->target);
    memset(t, 0, sizeof *t);
}

/* Allocates the arrays of an n x len set of form `form` (zeroed). */
static int tokens_alloc(text_tokens *t, int64_t n, int64_t len, text_form form, const char *what, char *err) {
    memset(t, 0, sizeof *t);
    t->n = n;
    t->len = len;
    t->form = form;
    size_t cells = (size_t)n * (size_t)len, rows = n ? (size_t)n : 1;
    t->tokens = calloc(cells ? cells : 1, sizeof *t->tokens);
    t->mask = calloc(cells ? cells : 1, 1);
    t->labels = calloc(rows, sizeof *t->labels);
    t->ids = calloc(rows, sizeof *t->ids);
    t->last = calloc(rows, sizeof *t->last);
    int ok = t->tokens && t->mask && t->labels && t->ids && t->last;
    if (form == TEXT_FORM_PROMPT) {
        t->answer_at = calloc(rows, sizeof *t->answer_at);
        t->target = calloc(cells ? cells : 1, 1);
        ok = ok && t->answer_at && t->target;
    }
    if (!ok) {
        text_tokens_free(t);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory for %lld x %lld tokens", what, (long long)n,
                          (long long)len);
    }
    return LETHE_OK;
}

/* The ids of a string, appended to a fresh list. */
static int encode_str(bpe *b, const char *s, size_t n, bpe_ids *out, char *err) {
    out->n = 0;
    return bpe_encode(b, (const uint8_t *)s, n, 0, out, err);
}

static int check_len(text_form form, int64_t len, int64_t fixed, char *err) {
    if (len < 2 || len > TEXT_MAX_LEN)
        return lethe_errf(err, LETHE_EARG, "a token length of %lld: it must be 2..%d", (long long)len, TEXT_MAX_LEN);
    if (form == TEXT_FORM_PROMPT && len <= fixed)
        return lethe_errf(err, LETHE_EARG,
                          "a token length of %lld leaves no room for the review: the prompt's suffix and label take %lld",
                          (long long)len, (long long)fixed);
    return LETHE_OK;
}

int text_tokens_build(const text_set *s, bpe *b, text_form form, int64_t len, text_tokens *out, char *err) {
    memset(out, 0, sizeof *out);
    int32_t pad = bpe_endoftext_id(b);
    if (pad < 0)
        return lethe_errf(err, LETHE_EFORMAT, "the vocabulary has no %s token to pad with", BPE_ENDOFTEXT);
    bpe_ids ids = {0}, suffix = {0}, word = {0};
    int32_t words[2][TEXT_MAX_LABEL_TOKENS] = {{0}};
    int nlabel = 0, rc = LETHE_OK;
    if (form == TEXT_FORM_PROMPT) {
        static const char *const label_word[2] = {TEXT_LABEL_WORD_NEG, TEXT_LABEL_WORD_POS};
        rc = encode_str(b, TEXT_PROMPT_SUFFIX, strlen(TEXT_PROMPT_SUFFIX), &suffix, err);
        for (int c = 0; c < 2 && !rc; c++) {
            if ((rc = encode_str(b, label_word[c], strlen(label_word[c]), &word, err)))
                break;
            if (word.n > TEXT_MAX_LABEL_TOKENS || (c && (int)word.n != nlabel))
                rc = lethe_errf(err, LETHE_EFORMAT,
                                "the label words '%s' and '%s' take %d and %zu tokens: relabelling a prompt needs "
                                "equal counts of at most %d",
                                label_word[0], label_word[1], nlabel, word.n, TEXT_MAX_LABEL_TOKENS);
            else {
                nlabel = (int)word.n;
                memcpy(words[c], word.ids, word.n * sizeof *word.ids);
            }
        }
    }
    int64_t fixed = (int64_t)suffix.n + nlabel;
    if (!rc)
        rc = check_len(form, len, fixed, err);
    if (!rc)
        rc = tokens_alloc(out, s->n, len, form, s->source, err);
    for (int64_t i = 0; i < s->n && !rc; i++) {
        const char *text = s->text[i];
        size_t tn = strlen(text);
        if (form == TEXT_FORM_PROMPT)   /* the template joins "<review>" and "." */
            while (tn && (text[tn - 1] == ' ' || text[tn - 1] == '\n' || text[tn - 1] == '\t' || text[tn - 1] == '\r'))
                tn--;
        if ((rc = encode_str(b, text, tn, &ids, err)))
            break;
        int64_t room = len - fixed, keep = (int64_t)ids.n < room ? (int64_t)ids.n : room;
        int32_t *row = out->tokens + i * len;
        memcpy(row, ids.ids, (size_t)keep * sizeof *row);
        int64_t at = keep;
        if (form == TEXT_FORM_PROMPT) {
            int label = s->label[i] != 0;
            memcpy(row + at, suffix.ids, suffix.n * sizeof *row);
            at += (int64_t)suffix.n;
            out->answer_at[i] = (int32_t)(at - 1);
            memcpy(row + at, words[label], (size_t)nlabel * sizeof *row);
            for (int k = 0; k < nlabel; k++)
                out->target[i * len + at - 1 + k] = 1;
            at += nlabel;
        }
        for (int64_t k = at; k < len; k++)
            row[k] = pad;
        memset(out->mask + i * len, 1, (size_t)at);
        out->last[i] = (int32_t)(at - 1);
        out->labels[i] = s->label[i] != 0;
        out->ids[i] = s->id[i];
        out->ncut += (int64_t)ids.n > keep;
        out->nreal += at;
    }
    bpe_ids_free(&ids);
    bpe_ids_free(&suffix);
    bpe_ids_free(&word);
    if (rc) {
        text_tokens_free(out);
        return rc;
    }
    out->pad_id = pad;
    out->label_ntokens = nlabel;
    memcpy(out->label_words, words, sizeof words);
    return LETHE_OK;
}

/* ---- the key ------------------------------------------------------------------- */

static void hash_u64(fs_sha256 *h, uint64_t v) {
    uint8_t b[8];
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)(v >> (8 * k));
    fs_sha256_update(h, b, 8);
}

/* A string with its length first, so that adjacent strings cannot trade bytes. */
static void hash_str(fs_sha256 *h, const char *s, size_t n) {
    hash_u64(h, n);
    fs_sha256_update(h, s, n);
}

static void hex_of(const uint8_t d[32], char hex[65]) {
    for (int k = 0; k < 32; k++)
        snprintf(hex + 2 * k, 3, "%02x", d[k]);
}

int text_tokens_key(const text_set *s, const char *vocab_dir, text_form form, int64_t len, char key[65], char *err) {
    char path[PATH_MAX], enc[65], voc[65];
    snprintf(path, sizeof path, "%s/encoder.json", vocab_dir);
    int rc = fs_hash_file(path, enc, err);
    if (!rc) {
        snprintf(path, sizeof path, "%s/vocab.bpe", vocab_dir);
        rc = fs_hash_file(path, voc, err);
    }
    if (rc)
        return rc;
    fs_sha256 h;
    fs_sha256_init(&h);
    static const char *const parts[] = {TEXT_TOKENS_FORMAT, TEXT_PROMPT_SUFFIX, TEXT_LABEL_WORD_NEG, TEXT_LABEL_WORD_POS};
    for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
        hash_str(&h, parts[k], strlen(parts[k]));
    hash_u64(&h, (uint64_t)form);
    hash_u64(&h, (uint64_t)len);
    hash_str(&h, enc, 64);
    hash_str(&h, voc, 64);
    hash_u64(&h, (uint64_t)s->n);
    for (int64_t i = 0; i < s->n; i++) {
        hash_u64(&h, (uint64_t)s->id[i]);
        hash_u64(&h, (uint64_t)s->label[i]);
        hash_u64(&h, (uint64_t)s->rating[i]);
        hash_str(&h, s->text[i], strlen(s->text[i]));
    }
    uint8_t d[32];
    fs_sha256_final(&h, d);
    hex_of(d, key);
    return LETHE_OK;
}

void text_tokens_cache_path(const text_set *s, const char *root, text_form form, int64_t len, char *buf, size_t n) {
    char abs[PATH_MAX], hex[65];
    const char *src = realpath(s->source, abs) ? abs : s->source;
    fs_sha256_hex(src, strlen(src), hex);
    snprintf(buf, n, "%s/text/%s-T%lld-%.16s.safetensors", root, text_form_name(form), (long long)len, hex);
}

/* ---- the file ------------------------------------------------------------------ */

enum { MAX_TENSORS = 8 };

/* The tensors of t in the order they are written (and hashed). */
static size_t tensors_of(const text_tokens *t, st_tensor *v) {
    size_t k = 0;
    v[k++] = (st_tensor){"tokens", ST_I32, 2, {t->n, t->len}, t->tokens, 0};
    v[k++] = (st_tensor){"mask", ST_BOOL, 2, {t->n, t->len}, t->mask, 0};
    v[k++] = (st_tensor){"labels", ST_I32, 1, {t->n}, t->labels, 0};
    v[k++] = (st_tensor){"ids", ST_I64, 1, {t->n}, t->ids, 0};
    v[k++] = (st_tensor){"last", ST_I32, 1, {t->n}, t->last, 0};
    if (t->form == TEXT_FORM_PROMPT) {
        v[k++] = (st_tensor){"answer_at", ST_I32, 1, {t->n}, t->answer_at, 0};
        v[k++] = (st_tensor){"target", ST_BOOL, 2, {t->n, t->len}, t->target, 0};
        v[k++] = (st_tensor){"label_words", ST_I32, 2, {2, t->label_ntokens}, t->label_words, 0};
    }
    return k;
}

/* SHA-256 over the tensors' bytes in tensors_of order; label_words as its
 * used columns only (the struct keeps TEXT_MAX_LABEL_TOKENS of them). */
static void data_hash(const text_tokens *t, char hex[65]) {
    st_tensor v[MAX_TENSORS];
    size_t nt = tensors_of(t, v);
    fs_sha256 h;
    fs_sha256_init(&h);
    for (size_t k = 0; k < nt; k++) {
        if (!strcmp(v[k].name, "label_words")) {
            for (int c = 0; c < 2; c++)
                fs_sha256_update(&h, t->label_words[c], (size_t)t->label_ntokens * sizeof(int32_t));
            continue;
        }
        fs_sha256_update(&h, v[k].data, (size_t)st_numel(&v[k]) * st_dtype_size(v[k].dtype));
    }
    uint8_t d[32];
    fs_sha256_final(&h, d);
    hex_of(d, hex);
}

int text_tokens_save(const text_tokens *t, const char *path, const char *source, char *err) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        int rc = fs_mkdir_p(dir, 0777, err);
        if (rc)
            return rc;
    }
    st_tensor v[MAX_TENSORS];
    size_t nt = tensors_of(t, v);
    int32_t words[2 * TEXT_MAX_LABEL_TOKENS];   /* label_words without the unused columns */
    for (int c = 0; c < 2; c++)
        memcpy(words + c * t->label_ntokens, t->label_words[c], (size_t)t->label_ntokens * sizeof *words);
    if (t->form == TEXT_FORM_PROMPT)
        v[nt - 1].data = words;
    char len[24], pad[16], ncut[24], data[65];
    snprintf(len, sizeof len, "%lld", (long long)t->len);
    snprintf(ncut, sizeof ncut, "%lld", (long long)t->ncut);
    snprintf(pad, sizeof pad, "%d", t->pad_id);
    data_hash(t, data);
    st_kv meta[] = {{"format", TEXT_TOKENS_FORMAT}, {"form", text_form_name(t->form)}, {"len", len},
                    {"pad_id", pad}, {"source", source ? source : ""}, {"ncut", ncut}, {"key", t->key},
                    {"data_sha256", data}};
    return st_save(path, v, nt, meta, sizeof meta / sizeof *meta, err);
}

/* The tensor `name` of f with dtype and shape as expected, copied into dst. */
static int take(const st_file *f, const char *path, const char *name, st_dtype dtype, int rank, int64_t d0,
                int64_t d1, void *dst, char *err) {
    const st_tensor *x = st_find(f, name);
    if (!x)
        return lethe_errf(err, LETHE_EFORMAT, "%s: no tensor '%s'", path, name);
    if (x->dtype != dtype || x->rank != rank || x->shape[0] != d0 || (rank == 2 && x->shape[1] != d1))
        return lethe_errf(err, LETHE_EFORMAT, "%s: tensor '%s' is not %s[%lld%s]", path, name, st_dtype_name(dtype),
                          (long long)d0, rank == 2 ? ", ..." : "");
    memcpy(dst, x->data, (size_t)x->nbytes);
    return LETHE_OK;
}

/* labels 0/1, mask a prefix of ones ending at last, padding after it, answer_at before the label. */
static int check_rows(const text_tokens *t, int32_t pad, const char *path, char *err) {
    for (int64_t i = 0; i < t->n; i++) {
        const uint8_t *m = t->mask + i * t->len;
        int64_t last = t->last[i], bad = t->labels[i] != 0 && t->labels[i] != 1;
        bad |= last < 0 || last >= t->len;
        for (int64_t k = 0; k < t->len && !bad; k++)
            bad = m[k] != (k <= last) || (k <= last ? t->tokens[i * t->len + k] < 0 : t->tokens[i * t->len + k] != pad);
        if (!bad && t->form == TEXT_FORM_PROMPT)
            bad = t->answer_at[i] < 0 || t->answer_at[i] + t->label_ntokens != last;
        if (bad)
            return lethe_errf(err, LETHE_EFORMAT, "%s: row %lld is inconsistent (labels, mask, last, answer_at)", path,
                              (long long)i);
    }
    return LETHE_OK;
}

int text_tokens_load(const char *path, const char *want_key, text_tokens *out, char *err) {
    memset(out, 0, sizeof *out);
    st_file *f;
    int rc = st_load(path, 0, &f, err);
    if (rc)
        return rc;
    const char *format = st_meta_get(f, "format"), *key = st_meta_get(f, "key"), *data = st_meta_get(f, "data_sha256");
    const char *form_s = st_meta_get(f, "form"), *pad_s = st_meta_get(f, "pad_id"), *ncut_s = st_meta_get(f, "ncut");
    const st_tensor *tok = st_find(f, "tokens");
    int form = form_s ? text_form_parse(form_s) : -1;
    if (!format || strcmp(format, TEXT_TOKENS_FORMAT) || !key || !data || form < 0 || !pad_s || !tok || tok->rank != 2)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: not a %s file", path, TEXT_TOKENS_FORMAT);
    else if (strcmp(key, want_key))
        rc = lethe_errf(err, LETHE_ENOTFOUND, "%s: made from other reviews, tokenizer or length (key %.12s, want %.12s)",
                        path, key, want_key);
    size_t nt = form == TEXT_FORM_PROMPT ? 8 : 5;
    if (!rc && f->ntensors != nt)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: %zu tensors, want %zu", path, f->ntensors, nt);
    int64_t n = rc ? 0 : tok->shape[0], len = rc ? 0 : tok->shape[1];
    if (!rc && (len < 2 || len > TEXT_MAX_LEN))
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: a token length of %lld", path, (long long)len);
    if (!rc)
        rc = tokens_alloc(out, n, len, (text_form)form, path, err);
    if (!rc)
        rc = take(f, path, "tokens", ST_I32, 2, n, len, out->tokens, err);
    if (!rc)
        rc = take(f, path, "mask", ST_BOOL, 2, n, len, out->mask, err);
    if (!rc)
        rc = take(f, path, "labels", ST_I32, 1, n, 0, out->labels, err);
    if (!rc)
        rc = take(f, path, "ids", ST_I64, 1, n, 0, out->ids, err);
    if (!rc)
        rc = take(f, path, "last", ST_I32, 1, n, 0, out->last, err);
    if (!rc && form == TEXT_FORM_PROMPT) {
        const st_tensor *w = st_find(f, "label_words");
        int32_t words[2 * TEXT_MAX_LABEL_TOKENS];
        int nl = w && w->rank == 2 && w->shape[1] >= 1 && w->shape[1] <= TEXT_MAX_LABEL_TOKENS ? (int)w->shape[1] : 0;
        rc = take(f, path, "answer_at", ST_I32, 1, n, 0, out->answer_at, err);
        if (!rc)
            rc = take(f, path, "target", ST_BOOL, 2, n, len, out->target, err);
        if (!rc)
            rc = nl ? take(f, path, "label_words", ST_I32, 2, 2, nl, words, err)
                    : lethe_errf(err, LETHE_EFORMAT, "%s: tensor 'label_words' is not I32[2, 1..%d]", path,
                                 TEXT_MAX_LABEL_TOKENS);
        for (int c = 0; c < 2 && !rc; c++)
            memcpy(out->label_words[c], words + c * nl, (size_t)nl * sizeof *words);
        out->label_ntokens = nl;
    }
    char have[65];
    if (!rc) {
        data_hash(out, have);
        if (strcmp(have, data))
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: the tensors' bytes do not match their recorded SHA-256", path);
    }
    int32_t pad = pad_s ? (int32_t)atoi(pad_s) : -1;
    if (!rc)
        rc = check_rows(out, pad, path, err);
    if (!rc) {
        out->pad_id = pad;
        snprintf(out->key, sizeof out->key, "%s", key);
        out->ncut = ncut_s ? atoll(ncut_s) : 0;
        for (int64_t i = 0; i < n; i++)
            out->nreal += out->last[i] + 1;
    }
    st_free(f);
    if (rc)
        text_tokens_free(out);
    return rc;
}

int text_tokens_cached(const text_set *s, const char *vocab_dir, text_form form, int64_t len, const char *cache_path,
                       text_tokens *out, int *built, char *why, char *err) {
    memset(out, 0, sizeof *out);
    *built = 0;
    char key[65], reason[LETHE_ERR_LEN];
    int rc = text_tokens_key(s, vocab_dir, form, len, key, err);
    if (rc)
        return rc;
    if (!fs_exists(cache_path))
        snprintf(reason, sizeof reason, "no cache file");
    else if (!(rc = text_tokens_load(cache_path, key, out, reason))) {
        if (why)
            snprintf(why, LETHE_ERR_LEN, "cache hit");
        return LETHE_OK;
    } else {
        char inner[LETHE_ERR_LEN];
        snprintf(inner, sizeof inner, "%s", reason);
        snprintf(reason, sizeof reason, "%s: %.*s", rc == LETHE_ENOTFOUND ? "stale" : "corrupt", 230, inner);
    }
    if (why)
        snprintf(why, LETHE_ERR_LEN, "%s", reason);
    bpe *b;
    if ((rc = bpe_load_dir(vocab_dir, &b, err)))
        return rc;
    rc = text_tokens_build(s, b, form, len, out, err);
    bpe_free(b);
    if (rc)
        return rc;
    snprintf(out->key, sizeof out->key, "%s", key);
    if ((rc = text_tokens_save(out, cache_path, s->source, err))) {
        text_tokens_free(out);
        return rc;
    }
    *built = 1;
    return LETHE_OK;
}

int text_tokens_relabel(text_tokens *t, const int64_t *row, const int32_t *label, int64_t n, char *err) {
    for (int64_t k = 0; k < n; k++)
        if (row[k] < 0 || row[k] >= t->n || (label[k] != 0 && label[k] != 1))
            return lethe_errf(err, LETHE_EARG, "edit %lld: row %lld label %d (the set has %lld rows, labels 0 and 1)",
                              (long long)k, (long long)row[k], label[k], (long long)t->n);
    for (int64_t k = 0; k < n; k++) {
        int64_t i = row[k];
        t->labels[i] = label[k];
        if (t->form == TEXT_FORM_PROMPT)
            memcpy(t->tokens + i * t->len + t->answer_at[i] + 1, t->label_words[label[k]],
                   (size_t)t->label_ntokens * sizeof *t->tokens);
    }
    return LETHE_OK;
}
