/* bpe.c: GPT-2's byte-level BPE tokenizer (see bpe.h).
 *
 * Tokens are kept as byte strings (encoder.json's keys mapped back through
 * GPT-2's byte alphabet), so encoding never builds the alphabet's strings:
 * a piece starts as one token per byte and merges token ids.
 *
 * Merging follows encoder.py's loop exactly: take the lowest-ranked adjacent
 * pair, merge every occurrence of it left to right (an occurrence overlapping
 * a merged one is skipped), repeat. Instead of rescanning the word each
 * round, a heap of (rank, position) holds every adjacent pair that has a
 * rank; a round pops all entries of the lowest rank in position order, skips
 * the ones a merge made stale, and only then pushes the pairs the merges
 * formed, so a new pair of lower rank waits for the next round as it does in
 * the reference. O(m log m) for a piece of m bytes, where the reference's
 * loop is quadratic (a megabyte of zeros is one piece).
 *
 * Pieces up to CACHE_MAX_PIECE bytes go through a direct-mapped cache of
 * their ids: in text most pieces are words seen before.
 */
#define _GNU_SOURCE /* memmem */
#include "bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "unicode_tables.h"

#define BPE_MAX_FILE_BYTES ((size_t)64 << 20)
#define BPE_MAX_TOKENS (1 << 24)
#define CACHE_SLOTS (1 << 15)
#define CACHE_MAX_PIECE 128
#define INVALID_CP 0xFFFFFFFFu

enum { CL_OTHER, CL_LETTER, CL_NUMBER, CL_SPACE };

typedef struct merge_slot {
    uint64_t pair;       /* left id << 32 | right id */
    int32_t rank;        /* -1: empty slot */
    int32_t merged;      /* the id of left + right */
} merge_slot;

typedef struct cache_slot {
    uint64_t hash;
    uint32_t len, nids;
    int32_t *blob;       /* nids ids, then the piece's len bytes; NULL: empty */
} cache_slot;

typedef struct heap_entry {
    int32_t rank, pos;   /* ordered by rank, then position */
    int32_t left, right, merged;
} heap_entry;

struct bpe {
    size_t ntok, nmerges;
    uint32_t *tok_off;   /* token id's bytes are tok_bytes[tok_off[id] .. tok_off[id + 1]) */
    uint8_t *tok_bytes;
    int32_t byte_tok[256];
    int32_t endoftext;
    merge_slot *merges;
    size_t merge_mask;
    cache_slot *cache;
    /* scratch of one piece's merge, grown as needed */
    int32_t *tok, *next, *prev, *touched;
    heap_entry *heap;
    size_t scratch_cap;
};

/* ---- GPT-2's byte alphabet -------------------------------------------------- */

static int byte_is_printable(unsigned b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

uint32_t bpe_byte_to_codepoint(uint8_t b) {
    if (byte_is_printable(b))
        return b;
    uint32_t n = 0; /* the rest count up from U+0100 in byte order */
    for (unsigned c = 0; c < b; c++)
        n += !byte_is_printable(c);
    return 0x100 + n;
}

/* ---- UTF-8 and character classes --------------------------------------------- */

/* The code point at s[i] and its length in bytes; a byte that does not start
 * a valid (shortest-form, non-surrogate, <= U+10FFFF) sequence is INVALID_CP
 * of length 1. */
static size_t utf8_next(const uint8_t *s, size_t n, size_t i, uint32_t *cp) {
    uint8_t c = s[i];
    *cp = INVALID_CP;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 1;
    if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
        return 1;
    uint32_t v = c & (0x3F >> need);
    for (size_t k = 1; k <= need; k++) {
        if ((s[i + k] & 0xC0) != 0x80)
            return 1;
        v = v << 6 | (s[i + k] & 0x3F);
    }
    *cp = v;
    return need + 1;
}

static int in_ranges(uint32_t cp, const uint32_t (*r)[2], size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

#define NRANGES(t) (sizeof(t) / sizeof((t)[0]))

static int cp_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
            return CL_LETTER;
        if (cp >= '0' && cp <= '9')
            return CL_NUMBER;
        return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) ? CL_SPACE : CL_OTHER;
    }
    if (cp == INVALID_CP)
        return CL_OTHER; /* as the U+FFFD (a symbol, So) a UTF-8 reader would put there */
    if (in_ranges(cp, unicode_letter_ranges, NRANGES(unicode_letter_ranges)))
        return CL_LETTER;
    if (in_ranges(cp, unicode_number_ranges, NRANGES(unicode_number_ranges)))
        return CL_NUMBER;
    if (in_ranges(cp, unicode_space_ranges, NRANGES(unicode_space_ranges)))
        return CL_SPACE;
    return CL_OTHER;
}

/* ---- the pre-tokenizer ------------------------------------------------------ */

/* The pattern's alternatives are tried in order at pos, and the first that
 * matches wins (a backtracking regex), which comes down to:
 *   - an apostrophe followed by s t m d re ve ll is a contraction;
 *   - a letter, number or other character (or a space, U+0020 only, before
 *     one) starts a maximal run of that class;
 *   - whitespace: \s+(?!\S) takes the whole run when it ends the text or is
 *     followed by more whitespace, else all of it but its last character
 *     (which then starts the next piece: " word" or a lone "\n");
 *     when that leaves nothing, \s+ takes the one character. */
size_t bpe_piece_end(const uint8_t *s, size_t n, size_t pos) {
    if (s[pos] == '\'' && pos + 1 < n) {
        uint8_t a = s[pos + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return pos + 2;
        if (pos + 2 < n) {
            uint8_t b = s[pos + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return pos + 3;
        }
    }
    uint32_t cp;
    size_t start = pos, len = utf8_next(s, n, pos, &cp);
    int cls = cp_class(cp);
    if (s[pos] == ' ' && pos + 1 < n) {
        size_t len2 = utf8_next(s, n, pos + 1, &cp);
        int cls2 = cp_class(cp);
        if (cls2 != CL_SPACE) {
            cls = cls2;
            start = pos + 1;
            len = len2;
        }
    }
    size_t j = start + len;
    if (cls != CL_SPACE) {
        while (j < n) {
            size_t l = utf8_next(s, n, j, &cp);
            if (cp_class(cp) != cls)
                break;
            j += l;
        }
        return j;
    }
    size_t last = pos; /* where the run's last character starts */
    while (j < n) {
        size_t l = utf8_next(s, n, j, &cp);
        if (cp_class(cp) != CL_SPACE)
            break;
        last = j;
        j += l;
    }
    return j == n || last == pos ? j : last;
}

/* ---- hash tables ------------------------------------------------------------ */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static const merge_slot *merge_find(const bpe *b, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = mix64(key) & b->merge_mask;; i = (i + 1) & b->merge_mask) {
        const merge_slot *s = &b->merges[i];
        if (s->rank < 0)
            return NULL;
        if (s->pair == key)
            return s;
    }
}

/* Token bytes -> id, used while loading only. */
typedef struct token_index {
    int32_t *slots; /* -1 empty */
    size_t mask;
} token_index;

static size_t tok_len(const bpe *b, int32_t id) { return b->tok_off[id + 1] - b->tok_off[id]; }
static const uint8_t *tok_ptr(const bpe *b, int32_t id) { return b->tok_bytes + b->tok_off[id]; }

static int32_t token_lookup(const bpe *b, const token_index *ix, const uint8_t *p, size_t n) {
    for (size_t i = fs_fnv1a64(p, n, FS_FNV1A64_INIT) & ix->mask;; i = (i + 1) & ix->mask) {
        int32_t id = ix->slots[i];
        if (id < 0 || (tok_len(b, id) == n && !memcmp(tok_ptr(b, id), p, n)))
            return id;
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

/* ---- loading ---------------------------------------------------------------- */

/* Printable ASCII as is, other bytes as \xNN, cut at about 40 bytes: tokens in messages. */
static const char *show(const uint8_t *p, size_t n, char buf[200]) {
    size_t o = 0;
    for (size_t i = 0; i < n && o < 160; i++)
        o += (size_t)snprintf(buf + o, 200 - o, p[i] >= 0x20 && p[i] < 0x7F && p[i] != '\\' ? "%c" : "\\x%02X", p[i]);
    if (o >= 160)
        snprintf(buf + o, 200 - o, "...");
    return buf;
}

/* Maps a string of GPT-2's byte alphabet (UTF-8) to its bytes in out (at
 * least n bytes); returns the byte count, or -1 and the offending code point
 * (INVALID_CP for bad UTF-8). */
static long alphabet_to_bytes(const uint8_t *s, size_t n, const int16_t *cp_to_byte, uint8_t *out, uint32_t *bad) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += utf8_next(s, n, i, &cp);
        if (cp >= 0x144 || cp_to_byte[cp] < 0) {
            *bad = cp;
            return -1;
        }
        out[o++] = (uint8_t)cp_to_byte[cp];
    }
    return (long)o;
}

static int alphabet_error(char *err, const char *where, uint32_t bad) {
    if (bad == INVALID_CP)
        return lethe_errf(err, LETHE_EFORMAT, "%s: not valid UTF-8", where);
    return lethe_errf(err, LETHE_EFORMAT, "%s: U+%04X is not a character of GPT-2's byte alphabet", where,
                      (unsigned)bad);
}

/* encoder.json: every key a token in the byte alphabet, every value an id in
 * 0..n-1 given once. Fills tok_off, tok_bytes, byte_tok. */
static int load_encoder(bpe *b, const json_value *root, const char *name, const int16_t *cp_to_byte, char *err) {
    if (root->type != JSON_OBJECT)
        return lethe_errf(err, LETHE_EFORMAT, "%s: expected an object of token -> id, found a %s", name,
                          json_type_name(root->type));
    size_t n = root->len;
    if (n < 256 || n > BPE_MAX_TOKENS)
        return lethe_errf(err, n < 256 ? LETHE_EFORMAT : LETHE_ELIMIT,
                          "%s: %zu tokens (a byte-level vocabulary has 256 to %d)", name, n, BPE_MAX_TOKENS);
    int32_t *key_of_id = malloc(n * sizeof *key_of_id);
    b->tok_off = calloc(n + 1, sizeof *b->tok_off);
    if (!key_of_id || !b->tok_off) {
        free(key_of_id);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
    }
    for (size_t i = 0; i < n; i++)
        key_of_id[i] = -1;
    size_t total = 0;
    int rc = 0;
    for (size_t k = 0; k < n && !rc; k++) {
        const json_value *v = &root->items[k];
        char shown[200];
#define WHERE name, show((const uint8_t *)root->keys[k], root->key_lens[k], shown), v->line
        if (v->type != JSON_NUMBER || !v->is_int || v->i64 < 0 || v->i64 >= (int64_t)n)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: token \"%s\" (line %d): the id must be an integer in 0..%zu",
                            WHERE, n - 1);
        else if (key_of_id[v->i64] >= 0)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: token \"%s\" (line %d): id %lld is also the id of line %d's",
                            WHERE, (long long)v->i64, root->items[key_of_id[v->i64]].line);
        else if (root->key_lens[k] == 0)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: token \"%s\" (line %d): an empty token", WHERE);
#undef WHERE
        else {
            key_of_id[v->i64] = (int32_t)k;
            total += root->key_lens[k]; /* at least the bytes it maps to */
        }
    }
    b->tok_bytes = rc ? NULL : malloc(total);
    if (!rc && !b->tok_bytes)
        rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
    for (int i = 0; i < 256; i++)
        b->byte_tok[i] = -1;
    size_t off = 0;
    for (size_t id = 0; id < n && !rc; id++) {
        int32_t k = key_of_id[id];
        uint32_t bad = 0;
        long len = alphabet_to_bytes((const uint8_t *)root->keys[k], root->key_lens[k], cp_to_byte, b->tok_bytes + off,
                                     &bad);
        if (len < 0) {
            char where[300], shown[200];
            snprintf(where, sizeof where, "%s: token \"%s\" (line %d)", name,
                     show((const uint8_t *)root->keys[k], root->key_lens[k], shown), root->items[k].line);
            rc = alphabet_error(err, where, bad);
            break;
        }
        b->tok_off[id] = (uint32_t)off;
        if (len == 1)
            b->byte_tok[b->tok_bytes[off]] = (int32_t)id;
        off += (size_t)len;
    }
    b->tok_off[n] = (uint32_t)off;
    for (int i = 0; i < 256 && !rc; i++)
        if (b->byte_tok[i] < 0)
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: no token for the byte 0x%02X (GPT-2's \"\\u%04x\")", name, i,
                            (unsigned)bpe_byte_to_codepoint((uint8_t)i));
    free(key_of_id);
    b->ntok = n;
    return rc;
}

/* vocab.bpe: a "#version" line, then one merge per line ("left right", both
 * in the byte alphabet), rank = order; the file ends with a newline. */
static int load_merges(bpe *b, const token_index *ix, const char *text, size_t len, const char *name,
                       const int16_t *cp_to_byte, char *err) {
    if (len == 0 || text[len - 1] != '\n')
        return lethe_errf(err, LETHE_EFORMAT, "%s: %s", name,
                          len ? "the last line has no newline: truncated?" : "the file is empty");
    if (len < 8 || memcmp(text, "#version", 8))
        return lethe_errf(err, LETHE_EFORMAT, "%s: line 1 is not a \"#version\" header: not GPT-2's vocab.bpe?", name);
    size_t nlines = 0;
    for (size_t i = 0; i < len; i++)
        nlines += text[i] == '\n';
    if (nlines - 1 > BPE_MAX_TOKENS)
        return lethe_errf(err, LETHE_ELIMIT, "%s: more than %d merges", name, BPE_MAX_TOKENS);
    size_t cap = pow2_at_least(2 * nlines);
    b->merges = malloc(cap * sizeof *b->merges);
    uint8_t *made = calloc(b->ntok, 1);
    uint8_t *buf = malloc(2 * len);
    int rc = 0;
    if (!b->merges || !made || !buf)
        rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
    else {
        for (size_t i = 0; i < cap; i++)
            b->merges[i].rank = -1;
        b->merge_mask = cap - 1;
    }
    const char *p = (const char *)memchr(text, '\n', len) + 1, *end = text + len;
    for (long line = 2; p < end && !rc; line++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p)), *q = eol;
        if (q > p && q[-1] == '\r')
            q--;
        const char *part[2];
        size_t plen[2];
        int nparts = 0;
        for (const char *c = p; c < q && nparts <= 2;) {
            while (c < q && (*c == ' ' || *c == '\t'))
                c++;
            if (c == q)
                break;
            const char *w = c;
            while (c < q && *c != ' ' && *c != '\t')
                c++;
            if (nparts < 2) {
                part[nparts] = w;
                plen[nparts] = (size_t)(c - w);
            }
            nparts++;
        }
        char where[120];
        snprintf(where, sizeof where, "%s: line %ld", name, line);
        if (nparts != 2) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: expected two tokens separated by a space, found %s", where,
                            nparts < 2 ? (nparts ? "one" : "none") : "more");
            break;
        }
        int32_t id[3];
        long n0 = 0;
        for (int k = 0; k < 2 && !rc; k++) {
            uint32_t bad = 0;
            long n = alphabet_to_bytes((const uint8_t *)part[k], plen[k], cp_to_byte, buf + n0, &bad);
            if (n < 0) {
                rc = alphabet_error(err, where, bad);
                break;
            }
            id[k] = token_lookup(b, ix, buf + n0, (size_t)n);
            char shown[200];
            if (id[k] < 0)
                rc = lethe_errf(err, LETHE_EFORMAT, "%s: \"%s\" is not a token of the encoder", where,
                                show(buf + n0, (size_t)n, shown));
            n0 += n;
        }
        if (rc)
            break;
        id[2] = token_lookup(b, ix, buf, (size_t)n0);
        char shown[200];
        if (id[2] < 0) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: the merged token \"%s\" is not in the encoder", where,
                            show(buf, (size_t)n0, shown));
            break;
        }
        uint64_t key = (uint64_t)(uint32_t)id[0] << 32 | (uint32_t)id[1];
        size_t i = mix64(key) & b->merge_mask;
        while (b->merges[i].rank >= 0 && b->merges[i].pair != key)
            i = (i + 1) & b->merge_mask;
        if (b->merges[i].rank >= 0) {
            rc = lethe_errf(err, LETHE_EFORMAT, "%s: the merge of line %d again", where, b->merges[i].rank + 2);
            break;
        }
        b->merges[i] = (merge_slot){key, (int32_t)b->nmerges++, id[2]};
        made[id[2]] = 1;
        p = eol + 1;
    }
    /* Every token longer than a byte is made by a merge, but the special one:
     * a vocab.bpe cut short at a line end leaves tokens no merge makes. */
    for (size_t id = 0; id < b->ntok && !rc; id++)
        if (tok_len(b, (int32_t)id) > 1 && !made[id] && (int32_t)id != b->endoftext) {
            char shown[200];
            rc = lethe_errf(err, LETHE_EFORMAT,
                            "%s: no merge of its %zu makes the token \"%s\" (id %zu): truncated, or from another "
                            "vocabulary than the encoder's?",
                            name, b->nmerges, show(tok_ptr(b, (int32_t)id), tok_len(b, (int32_t)id), shown), id);
        }
    free(made);
    free(buf);
    return rc;
}

int bpe_load_mem(const char *encoder_json, size_t encoder_len, const char *encoder_name, const char *vocab_bpe,
                 size_t vocab_len, const char *vocab_name, bpe **out, char *err) {
    *out = NULL;
    int16_t cp_to_byte[0x144];
    for (int i = 0; i < 0x144; i++)
        cp_to_byte[i] = -1;
    for (int i = 0; i < 256; i++)
        cp_to_byte[bpe_byte_to_codepoint((uint8_t)i)] = (int16_t)i;
    json_doc *doc = NULL;
    char jerr[LETHE_ERR_LEN];
    json_limits lim = {.max_bytes = BPE_MAX_FILE_BYTES};
    if (json_parse(encoder_json, encoder_len, &lim, &doc, jerr))
        return lethe_errf(err, LETHE_EFORMAT, "%s: %s", encoder_name, jerr);
    bpe *b = calloc(1, sizeof *b);
    token_index ix = {0};
    int rc = b ? 0 : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    if (!rc)
        rc = load_encoder(b, json_doc_root(doc), encoder_name, cp_to_byte, err);
    json_doc_free(doc);
    if (!rc) {
        ix.mask = pow2_at_least(2 * b->ntok) - 1;
        ix.slots = malloc((ix.mask + 1) * sizeof *ix.slots);
        if (!ix.slots)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    if (!rc) {
        memset(ix.slots, 0xFF, (ix.mask + 1) * sizeof *ix.slots);
        for (size_t id = 0; id < b->ntok; id++) {
            size_t i = fs_fnv1a64(tok_ptr(b, (int32_t)id), tok_len(b, (int32_t)id), FS_FNV1A64_INIT) & ix.mask;
            while (ix.slots[i] >= 0)
                i = (i + 1) & ix.mask;
            ix.slots[i] = (int32_t)id; /* keys are distinct: JSON refused duplicates and the alphabet is 1:1 */
        }
        b->endoftext = token_lookup(b, &ix, (const uint8_t *)BPE_ENDOFTEXT, strlen(BPE_ENDOFTEXT));
        rc = load_merges(b, &ix, vocab_bpe, vocab_len, vocab_name, cp_to_byte, err);
    }
    free(ix.slots);
    if (!rc) {
        b->cache = calloc(CACHE_SLOTS, sizeof *b->cache);
        if (!b->cache)
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory");
    }
    if (rc) {
        bpe_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

int bpe_load_files(const char *encoder_json_path, const char *vocab_bpe_path, bpe **out, char *err) {
    *out = NULL;
    uint8_t *enc = NULL, *voc = NULL;
    size_t enc_len, voc_len;
    int rc = fs_read_file(encoder_json_path, BPE_MAX_FILE_BYTES, &enc, &enc_len, err);
    if (!rc)
        rc = fs_read_file(vocab_bpe_path, BPE_MAX_FILE_BYTES, &voc, &voc_len, err);
    if (!rc)
        rc = bpe_load_mem((const char *)enc, enc_len, encoder_json_path, (const char *)voc, voc_len, vocab_bpe_path,
                          out, err);
    free(enc);
    free(voc);
    return rc;
}

int bpe_load_dir(const char *dir, bpe **out, char *err) {
    char enc[4096], voc[4096];
    if (snprintf(enc, sizeof enc, "%s/encoder.json", dir) >= (int)sizeof enc ||
        snprintf(voc, sizeof voc, "%s/vocab.bpe", dir) >= (int)sizeof voc) {
        *out = NULL;
        return lethe_errf(err, LETHE_EARG, "%.100s...: path too long", dir);
    }
    return bpe_load_files(enc, voc, out, err);
}

void bpe_free(bpe *b) {
    if (!b)
        return;
    if (b->cache)
        for (size_t i = 0; i < CACHE_SLOTS; i++)
            free(b->cache[i].blob);
    free(b->cache);
    free(b->tok_off);
    free(b->tok_bytes);
    free(b->merges);
    free(b->tok);
    free(b->next);
    free(b->prev);
    free(b->touched);
    free(b->heap);
    free(b);
}

size_t bpe_vocab_size(const bpe *b) { return b->ntok; }
size_t bpe_merge_count(const bpe *b) { return b->nmerges; }
int32_t bpe_endoftext_id(const bpe *b) { return b->endoftext; }

/* ---- encoding --------------------------------------------------------------- */

static int heap_less(const heap_entry *a, const heap_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(heap_entry *h, size_t *n, heap_entry e) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(&e, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, size_t *n) {
    heap_entry top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void push_pair(const bpe *b, heap_entry *h, size_t *nh, int32_t pos, int32_t right_pos) {
    const merge_slot *m = merge_find(b, b->tok[pos], b->tok[right_pos]);
    if (m)
        heap_push(h, nh, (heap_entry){m->rank, pos, b->tok[pos], b->tok[right_pos], m->merged});
}

static int grow_scratch(bpe *b, size_t m) {
    if (m <= b->scratch_cap)
        return 0;
    size_t cap = pow2_at_least(m);
    int32_t **arrays[] = {&b->tok, &b->next, &b->prev, &b->touched};
    for (size_t k = 0; k < 4; k++) {
        int32_t *p = realloc(*arrays[k], cap * sizeof(int32_t));
        if (!p)
            return -1;
        *arrays[k] = p;
    }
    heap_entry *h = realloc(b->heap, 3 * cap * sizeof *h); /* m - 1 pairs, then at most 2 per merge */
    if (!h)
        return -1;
    b->heap = h;
    b->scratch_cap = cap;
    return 0;
}

/* Merges the piece p[0..m) (m >= 2, m < 2^31); its ids are left in b->tok,
 * linked from index 0 by b->next. */
static int merge_piece(bpe *b, const uint8_t *p, size_t m) {
    if (grow_scratch(b, m))
        return -1;
    int32_t *tok = b->tok, *next = b->next, *prev = b->prev;
    size_t nh = 0;
    for (size_t i = 0; i < m; i++) {
        tok[i] = b->byte_tok[p[i]];
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < m; i++)
        push_pair(b, b->heap, &nh, (int32_t)i, (int32_t)i + 1);
    while (nh) {
        int32_t rank = b->heap[0].rank;
        size_t ntouched = 0;
        while (nh && b->heap[0].rank == rank) {
            heap_entry e = heap_pop(b->heap, &nh);
            int32_t q = next[e.pos];
            if (tok[e.pos] != e.left || q < 0 || tok[q] != e.right)
                continue; /* a merge of this round took one of its tokens */
            tok[e.pos] = e.merged;
            tok[q] = -1;
            next[e.pos] = next[q];
            if (next[q] >= 0)
                prev[next[q]] = e.pos;
            b->touched[ntouched++] = e.pos;
        }
        for (size_t k = 0; k < ntouched; k++) {
            int32_t pos = b->touched[k];
            if (prev[pos] >= 0)
                push_pair(b, b->heap, &nh, prev[pos], pos);
            if (next[pos] >= 0)
                push_pair(b, b->heap, &nh, pos, next[pos]);
        }
    }
    return 0;
}

static int ids_reserve(bpe_ids *out, size_t more) {
    if (out->n + more <= out->cap)
        return 0;
    size_t cap = out->cap ? out->cap : 256;
    while (cap < out->n + more)
        cap *= 2;
    int32_t *p = realloc(out->ids, cap * sizeof *p);
    if (!p)
        return -1;
    out->ids = p;
    out->cap = cap;
    return 0;
}

static int encode_piece(bpe *b, const uint8_t *p, size_t m, bpe_ids *out) {
    if (m == 1) {
        if (ids_reserve(out, 1))
            return -1;
        out->ids[out->n++] = b->byte_tok[p[0]];
        return 0;
    }
    cache_slot *slot = NULL;
    uint64_t hash = 0;
    if (m <= CACHE_MAX_PIECE) {
        hash = fs_fnv1a64(p, m, FS_FNV1A64_INIT);
        slot = &b->cache[hash & (CACHE_SLOTS - 1)];
        if (slot->blob && slot->hash == hash && slot->len == m && !memcmp(slot->blob + slot->nids, p, m)) {
            if (ids_reserve(out, slot->nids))
                return -1;
            memcpy(out->ids + out->n, slot->blob, slot->nids * sizeof(int32_t));
            out->n += slot->nids;
            return 0;
        }
    }
    if (merge_piece(b, p, m) || ids_reserve(out, m))
        return -1;
    size_t first = out->n;
    for (int32_t i = 0; i >= 0; i = b->next[i])
        out->ids[out->n++] = b->tok[i];
    if (slot) { /* a failed allocation only leaves the slot empty */
        size_t nids = out->n - first;
        int32_t *blob = malloc(nids * sizeof(int32_t) + m);
        free(slot->blob);
        *slot = (cache_slot){hash, (uint32_t)m, (uint32_t)nids, blob};
        if (blob) {
            memcpy(blob, out->ids + first, nids * sizeof(int32_t));
            memcpy(blob + nids, p, m);
        }
    }
    return 0;
}

static int encode_ordinary(bpe *b, const uint8_t *text, size_t n, bpe_ids *out) {
    for (size_t i = 0; i < n;) {
        size_t end = bpe_piece_end(text, n, i);
        if (encode_piece(b, text + i, end - i, out))
            return -1;
        i = end;
    }
    return 0;
}

int bpe_encode(bpe *b, const uint8_t *text, size_t n, int flags, bpe_ids *out, char *err) {
    size_t had = out->n;
    int rc = 0;
    if (n >= (size_t)1 << 31)
        return lethe_errf(err, LETHE_ELIMIT, "%zu bytes to encode at once is more than 2 GiB", n);
    if ((flags & BPE_ALLOW_SPECIAL) && b->endoftext >= 0) {
        const size_t slen = strlen(BPE_ENDOFTEXT);
        size_t i = 0;
        for (;;) {
            const uint8_t *hit = memmem(text + i, n - i, BPE_ENDOFTEXT, slen);
            size_t seg_end = hit ? (size_t)(hit - text) : n;
            if ((rc = encode_ordinary(b, text + i, seg_end - i, out)) || !hit)
                break;
            if ((rc = ids_reserve(out, 1)))
                break;
            out->ids[out->n++] = b->endoftext;
            i = seg_end + slen;
        }
    } else
        rc = encode_ordinary(b, text, n, out);
    if (rc) {
        out->n = had;
        return lethe_errf(err, LETHE_ENOMEM, "out of memory encoding %zu bytes", n);
    }
    return 0;
}

const char *bpe_default_dir(void) {
    const char *env = getenv("LETHE_BPE_DIR");
    return env && *env ? env : BPE_DEFAULT_DIR;
}

int bpe_parse_ids(const char *name, const char *text, size_t len, bpe_ids *ids, char *err) {
    for (size_t i = 0; i < len;) {
        if (strchr(" \n\t\r", text[i]) && text[i]) {
            i++;
            continue;
        }
        size_t start = i;
        long long v = 0;
        while (i < len && text[i] >= '0' && text[i] <= '9' && v <= INT32_MAX)
            v = v * 10 + (text[i++] - '0');
        int ends = i == len || (text[i] && strchr(" \n\t\r", text[i]));
        if (i == start || !ends || v > INT32_MAX) {
            size_t end = start;   /* the offending word, up to the next whitespace */
            while (end < len && end - start < 20 && !(text[end] && strchr(" \n\t\r", text[end])))
                end++;
            return lethe_errf(err, LETHE_EFORMAT, "%s: byte %zu: \"%.*s\" is not a token id (a non-negative integer)",
                              name, start, (int)(end - start), text + start);
        }
        if (ids->n == ids->cap) {
            size_t cap = ids->cap ? 2 * ids->cap : 4096;
            int32_t *p = realloc(ids->ids, cap * sizeof *p);
            if (!p)
                return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", name);
            ids->ids = p, ids->cap = cap;
        }
        ids->ids[ids->n++] = (int32_t)v;
    }
    return 0;
}

void bpe_ids_free(bpe_ids *ids) {
    free(ids->ids);
    *ids = (bpe_ids){0};
}

/* ---- decoding --------------------------------------------------------------- */

int bpe_decode(const bpe *b, const int32_t *ids, size_t n, uint8_t **out, size_t *len, char *err) {
    *out = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= b->ntok)
            return lethe_errf(err, LETHE_EARG, "token %zu: id %lld is not in the vocabulary (0..%zu)", i,
                              (long long)ids[i], b->ntok - 1);
        total += tok_len(b, ids[i]);
    }
    uint8_t *buf = malloc(total + 1);
    if (!buf)
        return lethe_errf(err, LETHE_ENOMEM, "out of memory decoding %zu tokens", n);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + o, tok_ptr(b, ids[i]), tok_len(b, ids[i]));
        o += tok_len(b, ids[i]);
    }
    buf[o] = 0;
    *out = buf;
    *len = o;
    return 0;
}
