/* bpe_tiny_vocab.h: a small GPT-2-style vocabulary built in memory, for the
 * BPE branch of tests/fuzz/fuzz_loaders.c and for tests/unit/test_bpe.c when
 * the real files are absent: the 256 byte tokens (id = byte), one token per
 * merge of tiny_merges (id 256 + rank), then <|endoftext|>. Both files are
 * written as GPT-2 writes them, in its byte alphabet (bpe_byte_to_codepoint).
 * Include after bpe.h; the functions are static so each program gets its own. */
#ifndef LETHE_BPE_TINY_VOCAB_H
#define LETHE_BPE_TINY_VOCAB_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const tiny_merges[][2] = {
    {"h", "e"},   {"l", "l"},   {"he", "ll"},   {"hell", "o"}, {" ", "w"},      {"o", "r"},
    {" w", "or"}, {"l", "d"},   {" wor", "ld"}, {"0", "0"},    {"00", "00"},    {"\xc3", "\xa9"},
    {"'", "s"},   {" ", "t"},   {" t", "he"},   {"\n", "\n"},  {" ", "hello"},  {"a", "f"},
    {"c", "af"},
};
#define TINY_NMERGES (sizeof tiny_merges / sizeof tiny_merges[0])

typedef struct tiny_buf {
    char *p;
    size_t n, cap;
} tiny_buf;

static void tiny_put(tiny_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1);
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* bytes in GPT-2's alphabet, UTF-8; JSON-escaped when json is set */
static void tiny_put_alphabet(tiny_buf *b, const char *bytes, int json) {
    for (const unsigned char *c = (const unsigned char *)bytes; *c; c++) {
        uint32_t cp = bpe_byte_to_codepoint(*c);
        char u[4];
        if (json && (cp == '"' || cp == '\\')) {
            u[0] = '\\';
            u[1] = (char)cp;
            tiny_put(b, u, 2);
        } else if (cp < 0x80)
            tiny_put(b, (char[]){(char)cp}, 1);
        else {
            u[0] = (char)(0xC0 | cp >> 6);
            u[1] = (char)(0x80 | (cp & 0x3F));
            tiny_put(b, u, 2);
        }
    }
}

/* encoder.json; the caller frees */
static char *tiny_encoder_json(size_t *len) {
    tiny_buf b = {0};
    char num[32];
    tiny_put(&b, "{", 1);
    for (int i = 0; i < 256; i++) {
        char one[2] = {(char)i, 0};
        tiny_put(&b, i ? ", \"" : "\"", i ? 3 : 1);
        if (i == 0)
            tiny_put(&b, "\xc4\x80", 2); /* byte 0 is U+0100; the strings here end at NUL */
        else
            tiny_put_alphabet(&b, one, 1);
        tiny_put(&b, num, (size_t)snprintf(num, sizeof num, "\": %d", i));
    }
    for (size_t m = 0; m < TINY_NMERGES; m++) {
        tiny_put(&b, ", \"", 3);
        tiny_put_alphabet(&b, tiny_merges[m][0], 1);
        tiny_put_alphabet(&b, tiny_merges[m][1], 1);
        tiny_put(&b, num, (size_t)snprintf(num, sizeof num, "\": %zu", 256 + m));
    }
    tiny_put(&b, num, (size_t)snprintf(num, sizeof num, ", \"<|endoftext|>\": %zu}", 256 + TINY_NMERGES));
    *len = b.n;
    return b.p;
}

/* vocab.bpe; the caller frees */
static char *tiny_vocab_bpe(size_t *len) {
    tiny_buf b = {0};
    tiny_put(&b, "#version: 0.2\n", 14);
    for (size_t m = 0; m < TINY_NMERGES; m++) {
        tiny_put_alphabet(&b, tiny_merges[m][0], 0);
        tiny_put(&b, " ", 1);
        tiny_put_alphabet(&b, tiny_merges[m][1], 0);
        tiny_put(&b, "\n", 1);
    }
    *len = b.n;
    return b.p;
}

#endif
