/* text_data.c: the IMDb review reader (see text_data.h). */
#include "text_data.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"

void text_free(text_set *s) {
    if (!s)
        return;
    for (int64_t i = 0; s->text && i < s->n; i++)
        free(s->text[i]);
    free(s->text);
    free(s->label);
    free(s->id);
    free(s->rating);
    memset(s, 0, sizeof *s);
}

/* Bytes of buf[0..n) that are not part of a well-formed UTF-8 sequence
 * (Unicode 15, table 3-7: no overlong forms, no surrogates, nothing past
 * U+10FFFF); a broken sequence counts its lead byte and resynchronises on
 * the next one. */
static int64_t count_non_utf8(const uint8_t *p, size_t n) {
    int64_t bad = 0;
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3
                                                             : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        if (ok && len > 1) {
            uint8_t lo = 0x80, hi = 0xBF;   /* the second byte's range */
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            ok = p[i + 1] >= lo && p[i + 1] <= hi;
            for (size_t k = 2; ok && k < len; k++)
                ok = p[i + k] >= 0x80 && p[i + k] <= 0xBF;
        }
        if (ok) {
            i += len;
        } else {
            bad++;
            i++;
        }
    }
    return bad;
}

/* Length of an HTML line break at p (<br />, <br/>, <br>, any case), 0 if none. */
static size_t line_break_at(const char *p) {
    if (p[0] != '<' || (p[1] != 'b' && p[1] != 'B') || (p[2] != 'r' && p[2] != 'R'))
        return 0;
    size_t k = 3;
    while (p[k] == ' ')
        k++;
    if (p[k] == '/')
        k++;
    return p[k] == '>' ? k + 1 : 0;
}

/* In place: each line break becomes one space and the spaces after it go. */
static void replace_line_breaks(char *s) {
    char *w = s;
    for (const char *r = s; *r;) {
        size_t k = line_break_at(r);
        if (k) {
            if (w == s || w[-1] != ' ')
                *w++ = ' ';
            r += k;
            while (*r == ' ')
                r++;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

static int only_whitespace(const char *s) {
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return 0;
    return 1;
}

/* Parses "<id>_<rating>.txt"; 1 if name has that form (with digits that fit). */
static int parse_review_name(const char *name, int64_t *id, int32_t *rating) {
    const char *p = name;
    int64_t a = 0, b = 0;
    int da = 0, db = 0;
    for (; isdigit((unsigned char)*p); p++, da++)
        if ((a = a * 10 + (*p - '0')) > (int64_t)1e15)
            return 0;
    if (!da || *p++ != '_')
        return 0;
    for (; isdigit((unsigned char)*p); p++, db++)
        if ((b = b * 10 + (*p - '0')) > 1000000)
            return 0;
    if (!db || strcmp(p, ".txt"))
        return 0;
    *id = a;
    *rating = (int32_t)b;
    return 1;
}

/* A review file name that looks meant as one ("*.txt", not hidden) but does not parse. */
static int looks_like_review(const char *name) {
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && !strcmp(name + n - 4, ".txt");
}

typedef struct entry {
    int64_t id;
    int32_t rating, label;
    char *text;
} entry;

typedef struct entries {
    entry *e;
    int64_t n, cap;
} entries;

static void entries_free(entries *v) {
    for (int64_t i = 0; i < v->n; i++)
        free(v->e[i].text);
    free(v->e);
    memset(v, 0, sizeof *v);
}

static int cmp_entry(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->id != y->id)
        return (x->id > y->id) - (x->id < y->id);
    return x->label - y->label;
}

/* Reads one review file into e (text cleaned), counting its non-UTF-8 bytes into s. */
static int read_review(const char *path, entry *e, text_set *s, char *err) {
    uint8_t *buf;
    size_t n;
    int rc = fs_read_file(path, TEXT_MAX_REVIEW_BYTES, &buf, &n, err);
    if (rc == LETHE_ELIMIT)
        return lethe_errf(err, rc, "%s: larger than the %zu-byte (1 MiB) limit of a review: not a review file", path,
                          TEXT_MAX_REVIEW_BYTES);
    if (rc)   /* fs_read_file's message names the file and the fault */
        return rc;
    const uint8_t *nul = memchr(buf, 0, n);
    if (nul) {
        size_t at = (size_t)(nul - buf);
        free(buf);
        return lethe_errf(err, LETHE_EFORMAT, "%s: NUL byte at offset %zu: not a text file", path, at);
    }
    int64_t bad = count_non_utf8(buf, n);
    replace_line_breaks((char *)buf);
    if (only_whitespace((char *)buf)) {
        free(buf);
        return lethe_errf(err, LETHE_EFORMAT, "%s: empty review (%s)", path,
                          n ? "nothing but whitespace and line breaks" : "0 bytes");
    }
    if (bad) {
        if (!s->non_utf8_files)
            snprintf(s->first_non_utf8, sizeof s->first_non_utf8, "%.319s", path);
        s->non_utf8_bytes += bad;
        s->non_utf8_files++;
    }
    e->text = (char *)buf;
    return LETHE_OK;
}

/* Appends the reviews of dir (one class folder) to v. */
static int read_class(const char *dir, int label, entries *v, text_set *s, char *err) {
    DIR *d = opendir(dir);
    if (!d)
        return lethe_errf(err, errno == ENOENT ? LETHE_ENOTFOUND : LETHE_EIO,
                          "%s: %s (an aclImdb folder has train/ and test/, each with pos/ and neg/)", dir,
                          errno == ENOENT ? "missing" : strerror(errno));
    int64_t first = v->n;
    int rc = LETHE_OK;
    char path[PATH_MAX + 300];
    for (struct dirent *de; !rc && (de = readdir(d));) {
        entry e = {.label = label};
        if (!parse_review_name(de->d_name, &e.id, &e.rating)) {
            if (looks_like_review(de->d_name))
                rc = lethe_errf(err, LETHE_EFORMAT, "%s/%s: a review file is named <id>_<rating>.txt", dir, de->d_name);
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (v->n == v->cap) {
            int64_t cap = v->cap ? 2 * v->cap : 1024;
            entry *ne = realloc(v->e, (size_t)cap * sizeof *ne);
            if (!ne) {
                rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory after %lld reviews", dir, (long long)v->n);
                break;
            }
            v->e = ne;
            v->cap = cap;
        }
        rc = read_review(path, &e, s, err);
        if (!rc)
            v->e[v->n++] = e;
    }
    closedir(d);
    if (rc)
        return rc;
    /* the same id twice in one folder (1_7.txt, 1_8.txt) has no defined order */
    if (v->n > first)
        qsort(v->e + first, (size_t)(v->n - first), sizeof *v->e, cmp_entry);
    for (int64_t i = first + 1; i < v->n; i++)
        if (v->e[i].id == v->e[i - 1].id)
            return lethe_errf(err, LETHE_EFORMAT, "%s: two reviews with id %lld (%lld_%d.txt and %lld_%d.txt)", dir,
                              (long long)v->e[i].id, (long long)v->e[i].id, v->e[i - 1].rating, (long long)v->e[i].id,
                              v->e[i].rating);
    return LETHE_OK;
}

int text_load_imdb(const char *dir, const char *split, text_set *out, char *err) {
    memset(out, 0, sizeof *out);
    if (!dir || !split || (strcmp(split, "train") && strcmp(split, "test")))
        return lethe_errf(err, LETHE_EARG, "the IMDb splits are train and test, not '%s'", split ? split : "(null)");
    char path[PATH_MAX + 16];
    snprintf(out->source, sizeof out->source, "%s/%s", dir, split);
    if (!fs_exists(dir))
        return lethe_errf(err, LETHE_ENOTFOUND, "%s: missing (the folder of the IMDb archive, aclImdb/)", dir);
    if (!fs_exists(out->source))
        return lethe_errf(err, LETHE_ENOTFOUND, "%s: missing split (an aclImdb folder has train/ and test/)", out->source);
    entries v = {0};
    int rc = LETHE_OK;
    static const char *const classes[2] = {"neg", "pos"};
    for (int label = 0; label < 2 && !rc; label++) {
        snprintf(path, sizeof path, "%s/%s", out->source, classes[label]);
        rc = read_class(path, label, &v, out, err);
    }
    if (!rc && v.n == 0)
        rc = lethe_errf(err, LETHE_EFORMAT, "%s: no review files (<id>_<rating>.txt) in pos/ or neg/", out->source);
    if (!rc) {
        qsort(v.e, (size_t)v.n, sizeof *v.e, cmp_entry);
        out->text = malloc((size_t)v.n * sizeof *out->text);
        out->label = malloc((size_t)v.n * sizeof *out->label);
        out->id = malloc((size_t)v.n * sizeof *out->id);
        out->rating = malloc((size_t)v.n * sizeof *out->rating);
        if (!out->text || !out->label || !out->id || !out->rating)
            rc = lethe_errf(err, LETHE_ENOMEM, "%s: out of memory for %lld reviews", out->source, (long long)v.n);
    }
    if (rc) {
        entries_free(&v);
        free(out->text);   /* the texts are still owned by v */
        out->text = NULL;
        text_free(out);
        return rc;
    }
    for (int64_t i = 0; i < v.n; i++) {
        out->npos += v.e[i].label;
        out->text[i] = v.e[i].text;
        out->label[i] = v.e[i].label;
        out->id[i] = v.e[i].id;
        out->rating[i] = v.e[i].rating;
    }
    out->n = v.n;
    free(v.e);
    return LETHE_OK;
}

static int word_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

int64_t text_count_with_word(const text_set *s, const char *word) {
    size_t wn = strlen(word);
    int64_t count = 0;
    if (!wn)
        return 0;
    for (int64_t i = 0; i < s->n; i++) {
        const char *t = s->text[i];
        for (const char *p = strstr(t, word); p; p = strstr(p + 1, word))
            if ((p == t || !word_char(p[-1])) && !word_char(p[wn])) {
                count++;
                break;
            }
    }
    return count;
}

void text_describe(const text_set *s, char *buf, size_t n) {
    int k = snprintf(buf, n, "%s: %lld reviews (%lld positive, %lld negative)", s->source, (long long)s->n,
                     (long long)s->npos, (long long)(s->n - s->npos));
    if (s->non_utf8_files && k >= 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, "; %lld bytes in %lld reviews are not UTF-8, kept as bytes (first: %s)",
                 (long long)s->non_utf8_bytes, (long long)s->non_utf8_files, s->first_non_utf8);
}
