/* json.c: see json.h */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* =========================================================================
 * writer
 * ========================================================================= */

void jw_init(jw *w) { memset(w, 0, sizeof *w); }

void jw_free(jw *w) {
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void jw_reset(jw *w) {
    char *buf = w->buf;
    size_t cap = w->cap;
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->cap = cap;
}

static void put(jw *w, const char *s, size_t n) {
    if (w->failed)
        return;
    if (w->len + n + 1 > w->cap) {
        size_t ncap = w->cap ? w->cap : 256;
        while (w->len + n + 1 > ncap)
            ncap *= 2;
        char *nb = realloc(w->buf, ncap);
        if (!nb) {
            w->failed = 1;
            return;
        }
        w->buf = nb;
        w->cap = ncap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

/* Called before every value: writes the separating comma and checks that a
 * value is allowed here. */
static void before_value(jw *w) {
    if (w->failed)
        return;
    if (w->depth == 0) {
        if (w->done)
            w->failed = 1; /* a second top-level value */
        return;
    }
    if (w->kind[w->depth - 1] == 'o') {
        if (!w->want_value)
            w->failed = 1; /* value without a key */
        w->want_value = 0;
        return;
    }
    if (w->count[w->depth - 1]++ > 0)
        put(w, ",", 1);
}

static void after_value(jw *w) {
    if (w->depth == 0)
        w->done = 1;
}

static void open_container(jw *w, char kind) {
    before_value(w);
    if (w->depth >= JSON_MAX_DEPTH)
        w->failed = 1;
    if (w->failed)
        return;
    put(w, kind == 'o' ? "{" : "[", 1);
    w->kind[w->depth] = kind;
    w->count[w->depth] = 0;
    w->depth++;
}

static void close_container(jw *w, char kind) {
    if (w->failed)
        return;
    if (w->depth == 0 || w->kind[w->depth - 1] != kind || w->want_value) {
        w->failed = 1;
        return;
    }
    w->depth--;
    put(w, kind == 'o' ? "}" : "]", 1);
    after_value(w);
}

void jw_obj_begin(jw *w) { open_container(w, 'o'); }
void jw_obj_end(jw *w) { close_container(w, 'o'); }
void jw_arr_begin(jw *w) { open_container(w, 'a'); }
void jw_arr_end(jw *w) { close_container(w, 'a'); }

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if invalid.
 * Shared with the parser: overlong forms, surrogates and code points above
 * U+10FFFF are invalid. */
static size_t utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < len)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

static void put_escaped(jw *w, const char *s, size_t n) {
    put(w, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && !w->failed) {
        size_t run = i;
        /* copy plain runs in one go */
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            put(w, s + i, run - i);
            i = run;
            continue;
        }
        unsigned c = p[i];
        char esc[8];
        switch (c) {
        case '"': put(w, "\\\"", 2); i++; continue;
        case '\\': put(w, "\\\\", 2); i++; continue;
        case '\n': put(w, "\\n", 2); i++; continue;
        case '\r': put(w, "\\r", 2); i++; continue;
        case '\t': put(w, "\\t", 2); i++; continue;
        case '\b': put(w, "\\b", 2); i++; continue;
        case '\f': put(w, "\\f", 2); i++; continue;
        }
        if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(w, esc, 6);
            i++;
            continue;
        }
        size_t l = utf8_valid_len(p + i, n - i);
        if (l == 0) {
            put(w, "\\ufffd", 6);
            i++;
        } else {
            put(w, s + i, l);
            i += l;
        }
    }
    put(w, "\"", 1);
}

void jw_key(jw *w, const char *key) {
    if (w->failed)
        return;
    if (w->depth == 0 || w->kind[w->depth - 1] != 'o' || w->want_value || !key) {
        w->failed = 1;
        return;
    }
    if (w->count[w->depth - 1]++ > 0)
        put(w, ",", 1);
    put_escaped(w, key, strlen(key));
    put(w, ":", 1);
    w->want_value = 1;
}

void jw_strn(jw *w, const char *s, size_t n) {
    before_value(w);
    put_escaped(w, s, n);
    after_value(w);
}

void jw_str(jw *w, const char *s) {
    if (!s) {
        jw_null(w);
        return;
    }
    jw_strn(w, s, strlen(s));
}

int json_format_double(char *buf, size_t size, double v) {
    if (!isfinite(v))
        return snprintf(buf, size, "null");
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return n;
}

void jw_raw(jw *w, const char *json, size_t n) {
    before_value(w);
    put(w, json, n);
    after_value(w);
}

void jw_num(jw *w, double v) {
    char tmp[40];
    int n = json_format_double(tmp, sizeof tmp, v);
    before_value(w);
    put(w, tmp, (size_t)n);
    after_value(w);
}

void jw_int(jw *w, int64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    before_value(w);
    put(w, tmp, (size_t)n);
    after_value(w);
}

void jw_uint(jw *w, uint64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    before_value(w);
    put(w, tmp, (size_t)n);
    after_value(w);
}

void jw_bool(jw *w, int v) {
    before_value(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
    after_value(w);
}

void jw_null(jw *w) {
    before_value(w);
    put(w, "null", 4);
    after_value(w);
}

void jw_kv_str(jw *w, const char *key, const char *s) { jw_key(w, key); jw_str(w, s); }
void jw_kv_num(jw *w, const char *key, double v) { jw_key(w, key); jw_num(w, v); }
void jw_kv_int(jw *w, const char *key, int64_t v) { jw_key(w, key); jw_int(w, v); }
void jw_kv_bool(jw *w, const char *key, int v) { jw_key(w, key); jw_bool(w, v); }

const char *jw_finish(jw *w, size_t *len) {
    if (w->failed || w->depth != 0 || !w->done || !w->buf) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = w->len;
    return w->buf;
}

/* =========================================================================
 * parser
 * ========================================================================= */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_chunk;

struct json_doc {
    arena_chunk *chunks;
    json_value root;
};

typedef struct parser {
    const unsigned char *s;
    size_t n, pos;
    int line;
    size_t line_start;
    int depth, max_depth;
    size_t values, max_values;
    json_doc *doc;
    char *err;
    int status;               /* lethe_status of the failure */
    jmp_buf fail;
} parser;

/* All parser memory comes from here; a failure unwinds by longjmp and
 * json_doc_free releases every chunk, so no path can leak. */
static void *arena_alloc(parser *p, size_t n);

static _Noreturn void vfail(parser *p, int status, const char *fmt, va_list ap) {
    p->status = status;
    if (p->err) {
        int k = snprintf(p->err, LETHE_ERR_LEN, "line %d, column %zu: ", p->line, p->pos - p->line_start + 1);
        if (k < 0 || k >= LETHE_ERR_LEN)
            k = 0;
        vsnprintf(p->err + k, LETHE_ERR_LEN - (size_t)k, fmt, ap);
    }
    longjmp(p->fail, 1);
}

__attribute__((format(printf, 2, 3))) static _Noreturn void fail_at(parser *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(p, LETHE_EFORMAT, fmt, ap);
}

__attribute__((format(printf, 2, 3))) static _Noreturn void fail_limit(parser *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(p, LETHE_ELIMIT, fmt, ap);
}

static _Noreturn void fail_oom(parser *p) {
    p->status = LETHE_ENOMEM;
    if (p->err)
        snprintf(p->err, LETHE_ERR_LEN, "out of memory parsing JSON");
    longjmp(p->fail, 1);
}

static void *arena_alloc(parser *p, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_chunk *c = p->doc->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = malloc(sizeof *c + cap);
        if (!c)
            fail_oom(p);
        c->cap = cap;
        c->used = 0;
        c->next = p->doc->chunks;
        p->doc->chunks = c;
    }
    void *r = c->data + c->used;
    c->used += n;
    return r;
}

void json_doc_free(json_doc *d) {
    if (!d)
        return;
    arena_chunk *c = d->chunks;
    while (c) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(d);
}

const json_value *json_doc_root(const json_doc *d) { return d ? &d->root : NULL; }

static void skip_ws(parser *p) {
    while (p->pos < p->n) {
        unsigned char c = p->s[p->pos];
        if (c == '\n') {
            p->pos++;
            p->line++;
            p->line_start = p->pos;
        } else if (c == ' ' || c == '\t' || c == '\r')
            p->pos++;
        else
            break;
    }
}

static int peek(parser *p) { return p->pos < p->n ? p->s[p->pos] : -1; }

static const char *describe(parser *p) {
    static __thread char buf[32];
    int c = peek(p);
    if (c < 0)
        return "end of input";
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, sizeof buf, "'%c'", c);
    else
        snprintf(buf, sizeof buf, "byte 0x%02x", c);
    return buf;
}

static void expect_word(parser *p, const char *w) {
    size_t n = strlen(w);
    if (p->n - p->pos < n || memcmp(p->s + p->pos, w, n) != 0)
        fail_at(p, "invalid literal (expected %s)", w);
    p->pos += n;
}

static unsigned hex4(parser *p) {
    if (p->n - p->pos < 4)
        fail_at(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p->s[p->pos + i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else fail_at(p, "invalid \\u escape");
        v = v * 16 + (unsigned)d;
    }
    p->pos += 4;
    return v;
}

static size_t put_utf8(unsigned char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At the opening quote. The decoded string is never longer than its source
 * (an escape of k bytes decodes to <= k bytes), which bounds the buffer. */
static const char *parse_string(parser *p, size_t *out_len) {
    p->pos++; /* '"' */
    size_t start = p->pos, end = start;
    while (end < p->n && p->s[end] != '"') {
        if (p->s[end] == '\\')
            end++;
        end++;
    }
    if (end >= p->n)
        fail_at(p, "unterminated string");
    unsigned char *o = arena_alloc(p, end - start + 1);
    size_t k = 0;
    while (p->s[p->pos] != '"') {
        unsigned c = p->s[p->pos];
        if (c < 0x20)
            fail_at(p, "control character 0x%02x in a string (escape it)", c);
        if (c == '\\') {
            p->pos++;
            unsigned e = p->s[p->pos++];
            switch (e) {
            case '"': o[k++] = '"'; break;
            case '\\': o[k++] = '\\'; break;
            case '/': o[k++] = '/'; break;
            case 'b': o[k++] = '\b'; break;
            case 'f': o[k++] = '\f'; break;
            case 'n': o[k++] = '\n'; break;
            case 'r': o[k++] = '\r'; break;
            case 't': o[k++] = '\t'; break;
            case 'u': {
                unsigned cp = hex4(p);
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    fail_at(p, "lone low surrogate \\u%04x", cp);
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->n - p->pos < 6 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                        fail_at(p, "high surrogate \\u%04x without a low surrogate", cp);
                    p->pos += 2;
                    unsigned lo = hex4(p);
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        fail_at(p, "high surrogate \\u%04x followed by \\u%04x", cp, lo);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                k += put_utf8(o + k, cp);
                break;
            }
            default:
                p->pos--;
                fail_at(p, "invalid escape '\\%c'", e >= 0x20 && e < 0x7f ? (int)e : '?');
            }
            continue;
        }
        size_t l = utf8_valid_len(p->s + p->pos, p->n - p->pos);
        if (l == 0)
            fail_at(p, "invalid UTF-8 byte 0x%02x in a string", c);
        memcpy(o + k, p->s + p->pos, l);
        k += l;
        p->pos += l;
    }
    p->pos++; /* closing quote */
    o[k] = 0;
    *out_len = k;
    return (const char *)o;
}

static void parse_number(parser *p, json_value *v) {
    size_t start = p->pos;
    int is_int = 1;
    if (peek(p) == '-')
        p->pos++;
    if (peek(p) == '0') {
        p->pos++;
        if (peek(p) >= '0' && peek(p) <= '9')
            fail_at(p, "leading zero in a number");
    } else if (peek(p) >= '1' && peek(p) <= '9') {
        while (peek(p) >= '0' && peek(p) <= '9')
            p->pos++;
    } else
        fail_at(p, "invalid number");
    if (peek(p) == '.') {
        is_int = 0;
        p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9'))
            fail_at(p, "digit expected after the decimal point");
        while (peek(p) >= '0' && peek(p) <= '9')
            p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        is_int = 0;
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-')
            p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9'))
            fail_at(p, "digit expected in the exponent");
        while (peek(p) >= '0' && peek(p) <= '9')
            p->pos++;
    }
    size_t len = p->pos - start;
    char small[64];
    char *tmp = len < sizeof small ? small : arena_alloc(p, len + 1);
    memcpy(tmp, p->s + start, len);
    tmp[len] = 0;
    errno = 0;
    double d = strtod(tmp, NULL);
    if (!isfinite(d)) {
        p->pos = start;
        fail_at(p, "number out of range");
    }
    v->type = JSON_NUMBER;
    v->num = d;
    if (is_int) {
        errno = 0;
        long long ll = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            v->is_int = 1;
            v->i64 = (int64_t)ll;
        }
    }
}

typedef struct key_ref {
    const char *key;
    size_t len;
    size_t index;
} key_ref;

static int key_cmp(const void *a, const void *b) {
    const key_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void parse_value(parser *p, json_value *v);

/* Growable arrays live in the arena too: doubling wastes at most the
 * final size again, and nothing needs freeing on the error path. */
static void *grow(parser *p, void *old, size_t elem, size_t n, size_t *cap) {
    if (n < *cap)
        return old;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *nb = arena_alloc(p, ncap * elem);
    if (old)
        memcpy(nb, old, n * elem);
    *cap = ncap;
    return nb;
}

static void enter(parser *p) {
    if (++p->depth > p->max_depth)
        fail_limit(p, "nesting deeper than %d levels", p->max_depth);
}

static void parse_array(parser *p, json_value *v) {
    enter(p);
    p->pos++; /* '[' */
    json_value *items = NULL;
    size_t n = 0, cap = 0;
    skip_ws(p);
    if (peek(p) == ']') {
        p->pos++;
    } else {
        for (;;) {
            items = grow(p, items, sizeof *items, n, &cap);
            parse_value(p, &items[n++]);
            skip_ws(p);
            if (peek(p) == ',') {
                p->pos++;
                continue;
            }
            if (peek(p) == ']') {
                p->pos++;
                break;
            }
            fail_at(p, "expected ',' or ']' in an array, found %s", describe(p));
        }
    }
    v->type = JSON_ARRAY;
    v->items = items;
    v->len = n;
    p->depth--;
}

static void parse_object(parser *p, json_value *v) {
    enter(p);
    p->pos++; /* '{' */
    json_value *items = NULL;
    const char **keys = NULL;
    size_t *lens = NULL;
    size_t n = 0, cap = 0, kcap = 0, lcap = 0;
    skip_ws(p);
    if (peek(p) == '}') {
        p->pos++;
    } else {
        for (;;) {
            skip_ws(p);
            if (peek(p) != '"')
                fail_at(p, "expected a string key in an object, found %s", describe(p));
            items = grow(p, items, sizeof *items, n, &cap);
            keys = grow(p, keys, sizeof *keys, n, &kcap);
            lens = grow(p, lens, sizeof *lens, n, &lcap);
            keys[n] = parse_string(p, &lens[n]);
            skip_ws(p);
            if (peek(p) != ':')
                fail_at(p, "expected ':' after an object key, found %s", describe(p));
            p->pos++;
            parse_value(p, &items[n]);
            n++;
            skip_ws(p);
            if (peek(p) == ',') {
                p->pos++;
                continue;
            }
            if (peek(p) == '}') {
                p->pos++;
                break;
            }
            fail_at(p, "expected ',' or '}' in an object, found %s", describe(p));
        }
    }
    /* Duplicate keys: sort references instead of comparing all pairs, so a
     * hostile object with many keys costs n log n, not n^2. */
    if (n > 1) {
        key_ref *refs = arena_alloc(p, n * sizeof *refs);
        for (size_t i = 0; i < n; i++)
            refs[i] = (key_ref){keys[i], lens[i], i};
        qsort(refs, n, sizeof *refs, key_cmp);
        for (size_t i = 1; i < n; i++)
            if (key_cmp(&refs[i - 1], &refs[i]) == 0) {
                /* point at the later of the two values */
                const json_value *dup = &items[refs[i - 1].index > refs[i].index ? refs[i - 1].index : refs[i].index];
                p->line = dup->line;
                p->line_start = 0;
                p->pos = (size_t)(dup->col - 1);
                fail_at(p, "duplicate key \"%.64s\" in an object", refs[i].key);
            }
    }
    v->type = JSON_OBJECT;
    v->items = items;
    v->keys = keys;
    v->key_lens = lens;
    v->len = n;
    p->depth--;
}

static void parse_value(parser *p, json_value *v) {
    skip_ws(p);
    memset(v, 0, sizeof *v);
    v->line = p->line;
    v->col = (int)(p->pos - p->line_start + 1);
    if (++p->values > p->max_values)
        fail_limit(p, "more than %zu values", p->max_values);
    int c = peek(p);
    switch (c) {
    case '{': parse_object(p, v); return;
    case '[': parse_array(p, v); return;
    case '"': v->type = JSON_STRING; v->str = parse_string(p, &v->len); return;
    case 't': expect_word(p, "true"); v->type = JSON_BOOL; v->boolean = 1; return;
    case 'f': expect_word(p, "false"); v->type = JSON_BOOL; return;
    case 'n': expect_word(p, "null"); v->type = JSON_NULL; return;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        parse_number(p, v);
        return;
    }
    fail_at(p, "expected a value, found %s", describe(p));
}

int json_parse(const char *text, size_t len, const json_limits *lim, json_doc **out, char *err) {
    *out = NULL;
    size_t max_bytes = lim && lim->max_bytes ? lim->max_bytes : (size_t)64 << 20;
    int max_depth = lim && lim->max_depth > 0 && lim->max_depth < JSON_MAX_DEPTH ? lim->max_depth : JSON_MAX_DEPTH;
    size_t max_values = lim && lim->max_values ? lim->max_values : (size_t)4 << 20;
    if (len > max_bytes)
        return lethe_errf(err, LETHE_ELIMIT, "JSON text of %zu bytes is larger than the limit of %zu", len,
                          max_bytes);
    json_doc *doc = calloc(1, sizeof *doc);
    if (!doc)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    /* volatile: read after longjmp */
    parser *volatile pp = calloc(1, sizeof(parser));
    if (!pp) {
        free(doc);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    parser *p = pp;
    p->s = (const unsigned char *)text;
    p->n = len;
    p->line = 1;
    p->max_depth = max_depth;
    p->max_values = max_values;
    p->doc = doc;
    p->err = err;
    if (setjmp(p->fail)) {
        int status = pp->status;
        json_doc_free(pp->doc);
        free(pp);
        return status;
    }
    if (!text && len)
        fail_at(p, "no text");
    skip_ws(p);
    if (p->pos >= p->n)
        fail_at(p, "empty input (expected a value)");
    parse_value(p, &doc->root);
    skip_ws(p);
    if (p->pos < p->n)
        fail_at(p, "unexpected %s after the value", describe(p));
    free(p);
    *out = doc;
    return LETHE_OK;
}

const json_value *json_obj_get(const json_value *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT || !key)
        return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->len; i++)
        if (obj->key_lens[i] == kl && memcmp(obj->keys[i], key, kl) == 0)
            return &obj->items[i];
    return NULL;
}

const char *json_type_name(json_type t) {
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "boolean";
    case JSON_NUMBER: return "number";
    case JSON_STRING: return "string";
    case JSON_ARRAY: return "array";
    case JSON_OBJECT: return "object";
    }
    return "?";
}
