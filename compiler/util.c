/* util.c: the compilation arena, strings and hashing.
 *
 * Why an arena: the compiler builds many small objects that all die together
 * at the end of a compilation (or at an error). One arena freed at once keeps
 * error recovery by longjmp leak-free and keeps the code free of ownership
 * bookkeeping (chibicc never frees; we free once).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethec.h"

typedef struct Chunk {
    struct Chunk *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} Chunk;

static Chunk *chunks;
static size_t total_bytes;
enum { CHUNK_SIZE = 1 << 20 };

void *xalloc(size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!chunks || chunks->used + n > chunks->size) {
        size_t size = n > CHUNK_SIZE ? n : CHUNK_SIZE;
        Chunk *c = malloc(sizeof(Chunk) + size);
        if (!c) {
            fprintf(stderr, "lethec: out of memory (asked for %zu bytes)\n", n);
            exit(1);
        }
        c->used = 0;
        c->size = size;
        /* a big one-off allocation goes behind the current chunk so that the
         * current chunk's free space is not abandoned */
        if (chunks && size > CHUNK_SIZE) {
            c->next = chunks->next;
            chunks->next = c;
            c->used = n;
            total_bytes += n;
            memset(c->data, 0, n);
            return c->data;
        }
        c->next = chunks;
        chunks = c;
    }
    void *p = chunks->data + chunks->used;
    chunks->used += n;
    total_bytes += n;
    memset(p, 0, n);
    return p;
}

void *xrealloc(void *p, size_t old, size_t n) {
    void *q = xalloc(n);
    if (p && old)
        memcpy(q, p, old < n ? old : n);
    return q;
}

void arena_reset(void) {
    while (chunks) {
        Chunk *next = chunks->next;
        free(chunks);
        chunks = next;
    }
    total_bytes = 0;
}

size_t arena_bytes(void) { return total_bytes; }

char *xstrndup(const char *s, size_t n) {
    char *d = xalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xfmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *buf = xalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(buf, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return buf;
}

uint64_t hash_bytes(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    if (!h)
        h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

void **ptrmap_slot(PtrMap *m, const void *key) {
    if (2 * (m->len + 1) > m->cap) {
        PtrMap old = *m;
        m->cap = old.cap ? 2 * old.cap : 64;
        m->key = xalloc(sizeof(void *) * m->cap);
        m->val = xalloc(sizeof(void *) * m->cap);
        m->len = 0;
        for (unsigned i = 0; i < old.cap; i++)
            if (old.key[i])
                *ptrmap_slot(m, old.key[i]) = old.val[i];
    }
    unsigned h = (unsigned)(((uintptr_t)key >> 4) * 2654435761u) & (m->cap - 1);
    while (m->key[h] && m->key[h] != key)
        h = (h + 1) & (m->cap - 1);
    if (!m->key[h]) {
        m->key[h] = key;
        m->len++;
    }
    return &m->val[h];
}

const char *dtype_name(DType t) {
    switch (t) {
    case DT_BOOL: return "bool";
    case DT_I32: return "i32";
    case DT_F32: return "f32";
    case DT_F64: return "f64";
    case DT_I64: return "i64";
    }
    return "?";
}

int dtype_size(DType t) {
    switch (t) {
    case DT_BOOL: return 1;
    case DT_I32: return 4;
    case DT_F32: return 4;
    case DT_F64: return 8;
    case DT_I64: return 8;
    }
    return 0;
}
