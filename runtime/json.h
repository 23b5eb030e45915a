/* json.h: a small JSON writer and a small, strict, bounded JSON parser.
 *
 * WRITER. Builds one JSON text in a growable buffer; commas and nesting are
 * tracked for the caller. Numbers are printed with the SHORTEST "%.{15,16,17}g"
 * form that reads back (strtod) to the identical double, so every value
 * round-trips exactly and 0.1 is written "0.1", not "0.10000000000000001".
 * NaN and infinities have no JSON spelling and are written as null. Strings
 * are escaped (", \, control characters); bytes that are not valid UTF-8
 * become U+FFFD so the output is always valid JSON. Misuse (a value where a
 * key is due, unbalanced ends, depth > JSON_MAX_DEPTH) or running out of
 * memory makes the writer fail stickily: jw_finish returns NULL.
 *
 *     jw w; jw_init(&w);
 *     jw_obj_begin(&w);
 *     jw_kv_str(&w, "method", "scrub");
 *     jw_kv_num(&w, "gus", 0.31);
 *     jw_key(&w, "tpr"); jw_arr_begin(&w); jw_num(&w, 0.5); jw_arr_end(&w);
 *     jw_obj_end(&w);
 *     const char *text = jw_finish(&w, &len);   // valid until jw_free(&w)
 *
 * PARSER. RFC 8259, strictly: no comments, no trailing commas, no NaN, no
 * leading zeros, no lone surrogates, valid UTF-8 only, duplicate object keys
 * refused, exactly one value (whitespace around it is fine). It is bounded by
 * json_limits (input size, nesting depth, number of values) and allocates
 * everything in one arena freed by json_doc_free, so errors never leak. It
 * never reads outside [text, text + len) and needs no NUL terminator.
 * Messages are "line L, column C: what"; callers prefix the file name.
 *
 * The runtime never calls setlocale(), so strtod and printf use '.' as the
 * decimal point; a host program that changes LC_NUMERIC must restore it.
 */
#ifndef LETHE_JSON_H
#define LETHE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

#define JSON_MAX_DEPTH 64

/* ---- writer --------------------------------------------------------------- */

typedef struct jw {
    char *buf;
    size_t len, cap;
    int depth;
    char kind[JSON_MAX_DEPTH];      /* 'o' object, 'a' array */
    int count[JSON_MAX_DEPTH];      /* values (object: keys) written at this depth */
    int want_value;                 /* a key was written, its value is due */
    int done;                       /* a complete top-level value was written */
    int failed;
} jw;

void jw_init(jw *w);
void jw_free(jw *w);
void jw_reset(jw *w);               /* empty again, keeps the buffer */
void jw_obj_begin(jw *w);
void jw_obj_end(jw *w);
void jw_arr_begin(jw *w);
void jw_arr_end(jw *w);
void jw_key(jw *w, const char *key);
void jw_str(jw *w, const char *s);            /* NULL writes null */
void jw_strn(jw *w, const char *s, size_t n);
void jw_num(jw *w, double v);
/* An already-serialised JSON value, inserted as is (the caller vouches for it). */
void jw_raw(jw *w, const char *json, size_t n);
void jw_int(jw *w, int64_t v);
void jw_uint(jw *w, uint64_t v);
void jw_bool(jw *w, int v);
void jw_null(jw *w);
/* Shorthands for one object member. */
void jw_kv_str(jw *w, const char *key, const char *s);
void jw_kv_num(jw *w, const char *key, double v);
void jw_kv_int(jw *w, const char *key, int64_t v);
void jw_kv_bool(jw *w, const char *key, int v);
/* The text (NUL-terminated, no newline), or NULL if incomplete or failed. */
const char *jw_finish(jw *w, size_t *len);

/* Writes the shortest round-trip form of v into buf (>= 32 bytes); "null"
 * for NaN/inf. Returns the length. */
int json_format_double(char *buf, size_t size, double v);

/* ---- parser ---------------------------------------------------------------- */

typedef enum json_type {
    JSON_NULL = 0,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    int boolean;              /* BOOL */
    int is_int;               /* NUMBER written without fraction/exponent, fits int64 */
    int64_t i64;              /* NUMBER when is_int */
    double num;               /* NUMBER (always set, nearest double) */
    const char *str;          /* STRING: decoded UTF-8, NUL-terminated (may hold \0) */
    size_t len;               /* STRING: bytes; ARRAY/OBJECT: number of elements */
    json_value *items;        /* ARRAY elements, OBJECT values (in input order) */
    const char **keys;        /* OBJECT keys, decoded, NUL-terminated */
    size_t *key_lens;
    int line, col;            /* where the value starts (1-based) */
};

typedef struct json_limits {
    size_t max_bytes;         /* 0: 64 MiB */
    int max_depth;            /* 0: JSON_MAX_DEPTH (never more) */
    size_t max_values;        /* 0: 4 Mi values */
} json_limits;

typedef struct json_doc json_doc;

/* Parses text[0..len); lim may be NULL for the defaults. On success *out owns
 * the tree (free with json_doc_free). */
int json_parse(const char *text, size_t len, const json_limits *lim, json_doc **out, char *err);
const json_value *json_doc_root(const json_doc *d);
void json_doc_free(json_doc *d);

/* Object member by key (NULL if absent or not an object). */
const json_value *json_obj_get(const json_value *obj, const char *key);
/* The type's name, for messages: "null", "boolean", "number", ... */
const char *json_type_name(json_type t);

#endif
