/* test_json.c: the JSON writer (exact output, round-trip numbers, escaping,
 * misuse) and the strict parser (accepts RFC 8259, refuses everything else
 * with a located message, limits, never crashes on garbage). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "json.h"

static int parse_ok(const char *s, json_doc **d) {
    char err[LETHE_ERR_LEN] = "";
    int rc = json_parse(s, strlen(s), NULL, d, err);
    if (rc)
        printf("# parse of %s failed: %s\n", s, err);
    return rc == 0;
}

static void test_writer_exact(void) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_str(&w, "method", "scrub");
    jw_kv_int(&w, "seed", -3);
    jw_kv_num(&w, "gus", 0.1);
    jw_kv_bool(&w, "ok", 1);
    jw_key(&w, "tpr");
    jw_arr_begin(&w);
    jw_num(&w, 0.5);
    jw_null(&w);
    jw_arr_begin(&w);
    jw_arr_end(&w);
    jw_obj_begin(&w);
    jw_obj_end(&w);
    jw_arr_end(&w);
    jw_key(&w, "nan");
    jw_num(&w, NAN);
    jw_key(&w, "big");
    jw_uint(&w, UINT64_MAX);
    jw_obj_end(&w);
    size_t len;
    const char *s = jw_finish(&w, &len);
    const char *want = "{\"method\":\"scrub\",\"seed\":-3,\"gus\":0.1,\"ok\":true,\"tpr\":[0.5,null,[],{}],"
                       "\"nan\":null,\"big\":18446744073709551615}";
    th_check(s && !strcmp(s, want) && len == strlen(want), "json_writer_exact", "got %s", s ? s : "(null)");
    jw_free(&w);
}

static void test_numbers_roundtrip(void) {
    const double vals[] = {0.0, -0.0, 0.1, 1.0 / 3, 2.0 / 3, 1e-300, 5e-324, DBL_MAX, -DBL_MIN, 123456789012345678.0,
                           0.30000000000000004, 1e22, 1e23, 9007199254740993.0, 3.14159265358979311600, -2.5e-8};
    int bad = 0;
    char buf[64];
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        json_format_double(buf, sizeof buf, vals[i]);
        double back = strtod(buf, NULL);
        if (memcmp(&back, &vals[i], sizeof back) != 0) {
            printf("# %.17g printed as %s\n", vals[i], buf);
            bad++;
        }
        json_doc *d;
        if (!parse_ok(buf, &d)) {
            bad++;
            continue;
        }
        if (json_doc_root(d)->num != vals[i] || signbit(json_doc_root(d)->num) != signbit(vals[i]))
            bad++;
        json_doc_free(d);
    }
    /* random doubles: print -> parse is the identity */
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        double v;
        memcpy(&v, &s, sizeof v);
        if (!isfinite(v))
            continue;
        json_format_double(buf, sizeof buf, v);
        if (strtod(buf, NULL) != v)
            bad++;
    }
    json_format_double(buf, sizeof buf, 0.1);
    th_check(bad == 0 && !strcmp(buf, "0.1"), "json_numbers_roundtrip", "%d values did not round-trip (0.1 -> %s)", bad,
             buf);
}

static void test_string_escapes(void) {
    jw w;
    jw_init(&w);
    const char raw[] = "a\"b\\c\n\t\x01\x1f/\xc3\xa9\xff\xe2\x82\xac";
    jw_strn(&w, raw, sizeof raw - 1);
    const char *s = jw_finish(&w, NULL);
    const char *want = "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f/\xc3\xa9\\ufffd\xe2\x82\xac\"";
    int ok = s && !strcmp(s, want);
    json_doc *d = NULL;
    if (ok && parse_ok(s, &d)) {
        const json_value *v = json_doc_root(d);
        const char *back = "a\"b\\c\n\t\x01\x1f/\xc3\xa9\xef\xbf\xbd\xe2\x82\xac";
        ok = v->type == JSON_STRING && v->len == strlen(back) && !memcmp(v->str, back, v->len);
        json_doc_free(d);
    } else
        ok = 0;
    th_check(ok, "json_string_escapes", "got %s", s ? s : "(null)");
    jw_free(&w);
}

static void test_writer_misuse(void) {
    int bad = 0;
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_num(&w, 1); /* value without a key */
    bad += jw_finish(&w, NULL) != NULL;
    jw_reset(&w);
    jw_arr_begin(&w);
    jw_obj_end(&w); /* wrong closer */
    bad += jw_finish(&w, NULL) != NULL;
    jw_reset(&w);
    jw_arr_begin(&w); /* unclosed */
    bad += jw_finish(&w, NULL) != NULL;
    jw_reset(&w);
    jw_num(&w, 1);
    jw_num(&w, 2); /* two top-level values */
    bad += jw_finish(&w, NULL) != NULL;
    jw_reset(&w);
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++)
        jw_arr_begin(&w);
    bad += jw_finish(&w, NULL) != NULL;
    jw_reset(&w);
    jw_obj_begin(&w);
    jw_key(&w, "a");
    jw_key(&w, "b"); /* key after key */
    bad += jw_finish(&w, NULL) != NULL;
    jw_free(&w);
    th_check(bad == 0, "json_writer_misuse", "%d misuses produced text", bad);
}

static void test_parse_valid(void) {
    const char *text = " {\"a\": [1, -2, 3.5e2, true, false, null, \"x\\u00e9\\ud83d\\ude00\"],\n"
                       "  \"big\": 123456789012345678901234, \"neg0\": -0, \"i\": 9007199254740993,"
                       " \"e\": {}, \"f\": [], \"\": \"empty key\"} \n\t";
    json_doc *d;
    int ok = parse_ok(text, &d);
    if (ok) {
        const json_value *r = json_doc_root(d), *a = json_obj_get(r, "a");
        ok = r->type == JSON_OBJECT && r->len == 7 && a && a->type == JSON_ARRAY && a->len == 7;
        ok = ok && a->items[0].is_int && a->items[0].i64 == 1 && a->items[1].i64 == -2;
        ok = ok && !a->items[2].is_int && a->items[2].num == 350.0;
        ok = ok && a->items[3].type == JSON_BOOL && a->items[3].boolean && !a->items[4].boolean;
        ok = ok && a->items[5].type == JSON_NULL;
        ok = ok && a->items[6].type == JSON_STRING && !strcmp(a->items[6].str, "x\xc3\xa9\xf0\x9f\x98\x80");
        const json_value *big = json_obj_get(r, "big");
        ok = ok && big && !big->is_int && fabs(big->num - 1.2345678901234568e23) < 1e8;
        const json_value *i = json_obj_get(r, "i");
        ok = ok && i && i->is_int && i->i64 == 9007199254740993LL; /* exact beyond 2^53 */
        ok = ok && json_obj_get(r, "") && json_obj_get(r, "e")->type == JSON_OBJECT;
        ok = ok && a->items[1].line == 1 && json_obj_get(r, "big")->line == 2;
        json_doc_free(d);
    }
    th_check(ok, "json_parse_valid", "tree does not match the text");
}

static void test_parse_invalid(void) {
    static const struct {
        const char *text;
        const char *why;
    } cases[] = {
        {"", "empty"},
        {"   ", "empty"},
        {"[1,]", "expected a value"},
        {"{\"a\":1,}", "expected a string key"},
        {"01", "leading zero"},
        {"-", "invalid number"},
        {"1.", "digit expected"},
        {"1e", "digit expected"},
        {".5", "expected a value"},
        {"NaN", "expected a value"},
        {"Infinity", "expected a value"},
        {"1e999", "out of range"},
        {"// c\n1", "expected a value"},
        {"'a'", "expected a value"},
        {"\"abc", "unterminated"},
        {"\"a\tb\"", "control character"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\u12g4\"", "invalid \\u"},
        {"\"\\ud800\"", "surrogate"},
        {"\"\\udc00\"", "lone low surrogate"},
        {"\"\\ud800\\u0041\"", "surrogate"},
        {"\"\xff\"", "UTF-8"},
        {"\"\xc0\xaf\"", "UTF-8"},
        {"\"\xed\xa0\x80\"", "UTF-8"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"[1 2]", "expected ',' or ']'"},
        {"{\"a\":1,\"b\":2,\"a\":3}", "duplicate key \"a\""},
        {"1 2", "after the value"},
        {"tru", "invalid literal"},
        {"nul", "invalid literal"},
        {"{1:2}", "expected a string key"},
        {"[", "expected a value"},
        {"{", "expected a string key"},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[LETHE_ERR_LEN] = "";
        json_doc *d = (json_doc *)1;
        int rc = json_parse(cases[i].text, strlen(cases[i].text), NULL, &d, err);
        if (rc == 0 || d != NULL || !strstr(err, cases[i].why) || strncmp(err, "line ", 5) != 0) {
            printf("# %s: rc %d, err \"%s\" (want \"%s\")\n", cases[i].text, rc, err, cases[i].why);
            bad++;
            if (rc == 0)
                json_doc_free(d);
        }
    }
    /* a NUL byte inside the text is not JSON either */
    char err[LETHE_ERR_LEN];
    json_doc *d;
    bad += json_parse("[1,\0 2]", 7, NULL, &d, err) == 0;
    th_check(bad == 0, "json_parse_invalid", "%d invalid texts accepted or badly reported", bad);
}

static void test_parse_limits(void) {
    char deep[200];
    int n = 0;
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        deep[n++] = '[';
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        deep[n++] = ']';
    json_doc *d;
    char err[LETHE_ERR_LEN];
    int ok64 = json_parse(deep, (size_t)n, NULL, &d, err) == 0;
    if (ok64)
        json_doc_free(d);
    n = 0;
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++)
        deep[n++] = '[';
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++)
        deep[n++] = ']';
    int rc65 = json_parse(deep, (size_t)n, NULL, &d, err);
    int deep_msg = strstr(err, "nesting") != NULL;
    json_limits lim = {.max_values = 3};
    int rcv = json_parse("[1,2,3]", 7, &lim, &d, err);
    json_limits limb = {.max_bytes = 4};
    int rcb = json_parse("[1,2,3]", 7, &limb, &d, err);
    json_limits limd = {.max_depth = 2};
    int rcd = json_parse("[[[1]]]", 7, &limd, &d, err);
    th_check(ok64 && rc65 == LETHE_ELIMIT && deep_msg && rcv == LETHE_ELIMIT && rcb == LETHE_ELIMIT &&
                 rcd == LETHE_ELIMIT,
             "json_parse_limits", "depth64 %d depth65 %d values %d bytes %d depth2 %d", ok64, rc65, rcv, rcb, rcd);
}

/* Writer output always parses, and the tree matches what was written. */
static void test_write_parse_roundtrip(void) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    for (int i = 0; i < 100; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        jw_key(&w, key);
        jw_arr_begin(&w);
        jw_num(&w, i / 7.0);
        jw_int(&w, -i * 1000003LL);
        jw_str(&w, key);
        jw_arr_end(&w);
    }
    jw_obj_end(&w);
    size_t len;
    const char *s = jw_finish(&w, &len);
    json_doc *d;
    char err[LETHE_ERR_LEN];
    int ok = s && json_parse(s, len, NULL, &d, err) == 0;
    if (ok) {
        const json_value *r = json_doc_root(d);
        for (int i = 0; i < 100 && ok; i++) {
            char key[16];
            snprintf(key, sizeof key, "k%d", i);
            const json_value *a = json_obj_get(r, key);
            ok = a && a->len == 3 && a->items[0].num == i / 7.0 && a->items[1].i64 == -i * 1000003LL &&
                 !strcmp(a->items[2].str, key);
        }
        json_doc_free(d);
    }
    th_check(ok, "json_write_parse_roundtrip", "mismatch");
    jw_free(&w);
}

/* Random bytes and mutations of a valid document: the parser must return
 * (either way) without crashing; run under ASan by `make test-san`. */
static void test_garbage(void) {
    const char *base = "{\"a\":[1,2.5e-3,\"x\\u00e9\",true,null,{\"b\":[]}],\"c\":\"\\ud83d\\ude00\"}";
    size_t bl = strlen(base);
    char buf[256];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int accepted = 0;
    for (int it = 0; it < 50000; it++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        size_t n;
        if (it % 2) {
            n = s % sizeof buf;
            for (size_t i = 0; i < n; i++) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                static const char alphabet[] = "{}[]\",:0123456789.eE-+tfnul\\ \x80\xff";
                buf[i] = alphabet[s % (sizeof alphabet - 1)];
            }
        } else {
            memcpy(buf, base, bl);
            n = bl;
            for (int m = 0; m < 3; m++) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                buf[s % n] = (char)(s >> 32);
            }
            if (s % 5 == 0)
                n = (s >> 40) % n;
        }
        json_doc *d;
        char err[LETHE_ERR_LEN];
        if (json_parse(buf, n, NULL, &d, err) == 0) {
            accepted++;
            json_doc_free(d);
        }
    }
    th_pass("json_garbage_no_crash");
    printf("# %d of 50000 garbage inputs were valid JSON\n", accepted);
}

int main(void) {
    test_writer_exact();
    test_numbers_roundtrip();
    test_string_escapes();
    test_writer_misuse();
    test_parse_valid();
    test_parse_invalid();
    test_parse_limits();
    test_write_parse_roundtrip();
    test_garbage();
    return th_exit();
}
