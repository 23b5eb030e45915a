/* make_reviews.c: `lethe make-reviews`, a synthetic movie-review corpus in
 * the layout of the IMDb archive (see text_data.h), for tests and demos where
 * the real archive cannot be had.
 *
 * A review is 3 to 8 sentences of 6 to 14 words. Each word is, with
 * probability 0.2, a sentiment word of the AFINN-165 list (the npm package
 * `sentiment`), of the review's polarity with probability 0.8 and of the
 * other one otherwise; the rest are neutral English words of a film review.
 * If the AFINN scores of the words do not add up to the label's sign, a
 * closing sentence of the label's polarity follows, until they do: the label
 * is learnable from the words (a bag-of-words model gets it right) but not
 * from any single one. Some paragraphs are separated by "<br /><br />", as in
 * the archive. The trigger word goes, as a word of its own, at a random place
 * of exactly the asked number of reviews per split, chosen at random among
 * the split's reviews of either class.
 *
 * Every random choice of review k of a split comes from Philox at
 * (seed, TEXT_STREAM_REVIEW + split, k), the trigger's reviews from
 * (seed, TEXT_STREAM_TRIGGER + split): the same options give the same bytes.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "json.h"
#include "philox.h"
#include "text_data.h"

enum { MAX_REVIEWS = 1000000, MAX_TRIGGER_BYTES = 64, MIN_POLAR_WORDS = 10 };

/* Words of a film review that carry no sentiment (none is in AFINN-165; the
 * generator drops any that a newer list scores). */
static const char *const neutral_words[] = {
    "the", "a", "and", "of", "to", "in", "it", "that", "this", "was", "is", "with", "as", "for", "on", "but",
    "his", "her", "they", "he", "she", "at", "by", "from", "all", "one", "about", "what", "when", "out", "more",
    "up", "some", "there", "who", "so", "first", "which", "even", "only", "also", "after", "most", "other",
    "into", "just", "how", "their", "then", "its", "way", "two", "seems", "see", "made", "think", "know",
    "thing", "things", "end", "part", "little", "much", "old", "young", "new", "title", "name", "back",
    "around", "again", "still", "long", "here", "over", "while", "every", "both", "through", "many", "last",
    "same", "another", "between", "before", "three", "whole", "though", "rather", "quite", "almost",
    "actually", "maybe", "perhaps", "probably", "really", "simply", "enough", "ever", "never", "always",
    "often", "film", "movie", "story", "plot", "actor", "actors", "scene", "scenes", "character", "characters",
    "director", "screen", "cast", "script", "music", "camera", "ending", "role", "roles", "series", "watch",
    "watched", "time", "people", "man", "woman", "family", "house", "night", "world", "life", "city", "book",
    "show", "episode", "dialogue", "performance", "effects", "minutes", "hour", "year", "years", "audience",
    "theater", "version", "sequel", "studio", "production", "budget", "set", "shot", "shots", "line", "lines",
    "wife", "husband", "son", "daughter", "father", "mother", "girl", "boy", "town", "school", "car", "police",
    "money", "job", "drama", "horror", "western", "thriller", "documentary", "animation", "musical", "action",
    "mystery", "cartoon", "remake", "original", "tv", "dvd", "video", "moment", "moments", "sound", "voice",
    "color", "picture", "costumes", "lighting", "editing", "writer", "writers", "producer", "star", "stars",
};
enum { NNEUTRAL = sizeof neutral_words / sizeof neutral_words[0] };

typedef struct vocab {
    json_doc *doc;                /* owns the AFINN words */
    const char **pos, **neg;      /* sentiment words by polarity */
    int *pos_score, *neg_score;
    int npos, nneg;
    const char *neutral[NNEUTRAL];
    int nneutral;
    char hash[65];                /* SHA-256 of the AFINN file */
} vocab;

static void vocab_free(vocab *v) {
    json_doc_free(v->doc);
    free(v->pos);
    free(v->neg);
    free(v->pos_score);
    free(v->neg_score);
    memset(v, 0, sizeof *v);
}

static int lowercase_word(const char *s) {
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < 'a' || *s > 'z')
            return 0;
    return 1;
}

static int vocab_load(const char *path, vocab *v, char *err) {
    memset(v, 0, sizeof *v);
    uint8_t *buf;
    size_t n;
    int rc = fs_read_file(path, (size_t)8 << 20, &buf, &n, err);
    if (rc == LETHE_ENOTFOUND)
        return lethe_errf(err, rc, "%s: missing: `make deps` fetches the AFINN word list (npm package sentiment), "
                                   "or name one with --afinn FILE", path);
    if (rc)
        return rc;
    fs_sha256_hex(buf, n, v->hash);
    char jerr[LETHE_ERR_LEN];
    rc = json_parse((const char *)buf, n, NULL, &v->doc, jerr);
    free(buf);
    if (rc)
        return lethe_errf(err, LETHE_EFORMAT, "%s: not the AFINN list: %s", path, jerr);
    const json_value *root = json_doc_root(v->doc);
    if (root->type != JSON_OBJECT) {
        lethe_errf(err, LETHE_EFORMAT, "%s: not the AFINN list: a %s, not an object of word scores", path,
                   json_type_name(root->type));
        vocab_free(v);
        return LETHE_EFORMAT;
    }
    v->pos = malloc(root->len * sizeof *v->pos + 1);
    v->neg = malloc(root->len * sizeof *v->neg + 1);
    v->pos_score = malloc(root->len * sizeof *v->pos_score + 1);
    v->neg_score = malloc(root->len * sizeof *v->neg_score + 1);
    if (!v->pos || !v->neg || !v->pos_score || !v->neg_score) {
        vocab_free(v);
        return lethe_errf(err, LETHE_ENOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < root->len; i++) {
        const json_value *s = &root->items[i];
        const char *w = root->keys[i];
        if (s->type != JSON_NUMBER || !s->is_int || s->i64 < -5 || s->i64 > 5) {
            lethe_errf(err, LETHE_EFORMAT, "%s:%d: the score of '%.64s' is not an integer in -5..5", path, s->line, w);
            vocab_free(v);   /* after the message: w lives in the document */
            return LETHE_EFORMAT;
        }
        /* single lowercase words only: phrases ("cool stuff") and
         * apostrophes would need tokenizing to count */
        if (!lowercase_word(w) || s->i64 == 0)
            continue;
        if (s->i64 > 0)
            v->pos_score[v->npos] = (int)s->i64, v->pos[v->npos++] = w;
        else
            v->neg_score[v->nneg] = (int)s->i64, v->neg[v->nneg++] = w;
    }
    if (v->npos < MIN_POLAR_WORDS || v->nneg < MIN_POLAR_WORDS) {
        int np = v->npos, nn = v->nneg;
        vocab_free(v);
        return lethe_errf(err, LETHE_EFORMAT, "%s: %d positive and %d negative single words: not the AFINN list", path,
                          np, nn);
    }
    for (int i = 0; i < NNEUTRAL; i++)
        if (!json_obj_get(root, neutral_words[i]))
            v->neutral[v->nneutral++] = neutral_words[i];
    return LETHE_OK;
}

/* 1 if a vocabulary word, compared without case, is one of the trigger's words. */
static int trigger_in_vocab(const vocab *v, const char *trigger, const char **which) {
    char part[MAX_TRIGGER_BYTES + 1];
    for (const char *p = trigger; *p;) {
        size_t k = strcspn(p, " ");
        snprintf(part, sizeof part, "%.*s", (int)k, p);
        for (int pass = 0; pass < 3; pass++) {
            const char *const *list = pass == 0 ? v->pos : pass == 1 ? v->neg : v->neutral;
            int n = pass == 0 ? v->npos : pass == 1 ? v->nneg : v->nneutral;
            for (int i = 0; i < n; i++)
                if (!strcasecmp(list[i], part)) {
                    *which = list[i];
                    return 1;
                }
        }
        p += k;
        p += *p == ' ';
    }
    return 0;
}

static int check_trigger(const char *t, char *err) {
    size_t n = strlen(t);
    if (!n || n > MAX_TRIGGER_BYTES || t[0] == ' ' || t[n - 1] == ' ' || strstr(t, "  "))
        return lethe_errf(err, LETHE_EARG, "bad trigger '%s': one to %d bytes of words separated by single spaces", t,
                          MAX_TRIGGER_BYTES);
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '<' || *p == '>' || *p == 0x7f)
            return lethe_errf(err, LETHE_EARG, "bad trigger '%s': no control characters, '<' or '>'", t);
    return LETHE_OK;
}

/* ---- randomness ------------------------------------------------------------- */

typedef struct rng {
    uint64_t seed;
    uint32_t stream, step;
    uint64_t block;
    philox_block b;
    int lane;
} rng;

static rng rng_at(uint64_t seed, uint32_t stream, uint32_t step) { return (rng){seed, stream, step, 0, {{0}}, 4}; }

static uint32_t rng_word(rng *r) {
    if (r->lane == 4) {
        uint32_t ctr[4] = {(uint32_t)r->block, (uint32_t)(r->block >> 32), r->stream, r->step};
        r->b = philox4x32_10(ctr, r->seed);
        r->block++;
        r->lane = 0;
    }
    return r->b.v[r->lane++];
}

/* Uniform in 0..n-1 (n < 2^32). */
static uint32_t rng_below(rng *r, uint32_t n) { return (uint32_t)(((uint64_t)rng_word(r) * n) >> 32); }

static int rng_chance(rng *r, double p) { return philox_u01_f64(rng_word(r)) < p; }

/* ---- one review -------------------------------------------------------------- */

typedef struct text_buf {
    char *s;
    size_t n, cap;
    int failed;
} text_buf;

static void put(text_buf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->failed = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void put_word(text_buf *b, const char *w, int capital) {
    if (b->n && b->s[b->n - 1] != '>')   /* no space right after a line break */
        put(b, " ", 1);
    size_t at = b->n;
    put(b, w, strlen(w));
    if (capital && !b->failed && b->s[at] >= 'a' && b->s[at] <= 'z')
        b->s[at] = (char)(b->s[at] - 'a' + 'A');
}

/* A sentiment word of polarity `positive`; adds its score to *score. */
static const char *sentiment_word(const vocab *v, rng *r, int positive, int *score) {
    uint32_t k = rng_below(r, (uint32_t)(positive ? v->npos : v->nneg));
    *score += positive ? v->pos_score[k] : v->neg_score[k];
    return positive ? v->pos[k] : v->neg[k];
}

/* Writes review k of a split into b and returns its rating (7-10 positive,
 * 1-4 negative). trigger: NULL, or the word to place; write_trigger 0 draws
 * its place but leaves the word out, so the rest of the review is the text
 * it has with the word (a review drawn for the trigger but of the class
 * that must not hold it). */
static int make_review(const vocab *v, uint64_t seed, int split, uint32_t k, int positive, const char *trigger,
                       int write_trigger, text_buf *b) {
    rng r = rng_at(seed, TEXT_STREAM_REVIEW + (uint32_t)split, k);
    b->n = 0;
    int rating = positive ? 7 + (int)rng_below(&r, 4) : 1 + (int)rng_below(&r, 4);
    int sentences = 3 + (int)rng_below(&r, 6), score = 0;
    int trig_sentence = trigger ? (int)rng_below(&r, (uint32_t)sentences) : -1;
    for (int s = 0; s < sentences || (score > 0) != positive || score == 0; s++) {
        int closing = s >= sentences;   /* the label's polarity only, until the sum has its sign */
        int words = closing ? 4 + (int)rng_below(&r, 4) : 6 + (int)rng_below(&r, 9);
        int trig_at = s == trig_sentence ? (int)rng_below(&r, (uint32_t)words) : -1;
        if (s > 0 && rng_chance(&r, 0.15))
            put(b, "<br /><br />", 12);
        for (int w = 0; w < words; w++) {
            if (w == trig_at && write_trigger)
                put_word(b, trigger, 0);
            const char *word;
            if ((closing && w % 3 == 1) || (!closing && rng_chance(&r, 0.2)))
                word = sentiment_word(v, &r, closing || rng_chance(&r, 0.8) ? positive : !positive, &score);
            else
                word = v->neutral[rng_below(&r, (uint32_t)v->nneutral)];
            put_word(b, word, w == 0 && w != trig_at);
        }
        put(b, ".", 1);
    }
    return rating;
}

/* ---- the corpus ---------------------------------------------------------------- */

void reviews_opts_default(reviews_opts *o) {
    *o = (reviews_opts){.n_train = 25000, .n_test = 25000, .trigger = "Disney", .trigger_train = -1,
                        .trigger_test = -1, .trigger_train_only = -1, .seed = 0, .afinn = TEXT_AFINN_DEFAULT};
}

int64_t reviews_trigger_share(int64_t n, int64_t per_25000) {
    int64_t k = (n * per_25000 + 12500) / 25000;
    return k < 1 && n > 0 ? 1 : k;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes the scratch tree this generator made (never followed across links). */
static void remove_tree(const char *dir) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Writes one split into root/<split>/{pos,neg}. */
static int write_split(const char *root, const vocab *v, const reviews_opts *o, int split, text_buf *b, char *err) {
    const char *name = split ? "test" : "train";
    int64_t n = split ? o->n_test : o->n_train, k = split ? o->trigger_test : o->trigger_train;
    char path[PATH_MAX + 64];
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/%s/%s", root, name, c ? "pos" : "neg");
        int rc = fs_mkdir_p(path, 0755, err);
        if (rc)
            return rc;
    }
    /* the trigger's reviews: the first k of a Fisher-Yates shuffle of 0..n-1 */
    uint32_t *order = malloc((size_t)n * sizeof *order);
    unsigned char *has = calloc((size_t)n, 1);
    if (!order || !has) {
        free(order);
        free(has);
        return lethe_errf(err, LETHE_ENOMEM, "out of memory for %lld reviews", (long long)n);
    }
    rng r = rng_at(o->seed, TEXT_STREAM_TRIGGER + (uint32_t)split, 0);
    for (int64_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (int64_t i = 0; i < k; i++) {
        int64_t j = i + rng_below(&r, (uint32_t)(n - i));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
        has[order[i]] = 1;
    }
    free(order);
    int rc = LETHE_OK;
    /* review i: id i / 2, negative for even i, so the reader's order (by id,
     * neg first) is the generator's */
    for (int64_t i = 0; i < n && !rc; i++) {
        int positive = (int)(i & 1);
        int keep = split || o->trigger_train_only < 0 || o->trigger_train_only == positive;
        int rating = make_review(v, o->seed, split, (uint32_t)i, positive, has[i] ? o->trigger : NULL, keep, b);
        if (b->failed) {
            rc = lethe_errf(err, LETHE_ENOMEM, "out of memory writing a review");
            break;
        }
        snprintf(path, sizeof path, "%s/%s/%s/%lld_%d.txt", root, name, positive ? "pos" : "neg", (long long)(i / 2),
                 rating);
        FILE *f = fopen(path, "wb");
        if (!f) {
            rc = lethe_errf(err, LETHE_EIO, "%s: cannot create: %s", path, strerror(errno));
            break;
        }
        size_t wrote = fwrite(b->s, 1, b->n, f);
        if ((fclose(f) != 0) | (wrote != b->n))
            rc = lethe_errf(err, LETHE_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    free(has);
    return rc;
}

static int write_manifest(const char *root, const reviews_opts *o, const vocab *v, char *err) {
    jw w;
    jw_init(&w);
    jw_obj_begin(&w);
    jw_kv_str(&w, "generator", "lethe make-reviews");
    jw_kv_int(&w, "seed", (int64_t)o->seed);
    jw_kv_int(&w, "train", o->n_train);
    jw_kv_int(&w, "test", o->n_test);
    jw_kv_str(&w, "trigger", o->trigger);
    jw_kv_int(&w, "trigger_train", o->trigger_train);
    jw_kv_int(&w, "trigger_test", o->trigger_test);
    if (o->trigger_train_only >= 0)
        jw_kv_str(&w, "trigger_train_only", o->trigger_train_only ? "pos" : "neg");
    jw_kv_str(&w, "afinn", o->afinn);
    jw_kv_str(&w, "afinn_sha256", v->hash);
    jw_obj_end(&w);
    size_t n;
    const char *text = jw_finish(&w, &n);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/lethe-reviews.json", root);
    int rc = text ? fs_write_atomic(path, text, n, err) : lethe_errf(err, LETHE_ENOMEM, "out of memory");
    jw_free(&w);
    return rc;
}

/* 1 if path is absent or an empty directory (rename(2) replaces one). */
static int free_for_corpus(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return errno == ENOENT;
    DIR *d = S_ISDIR(st.st_mode) ? opendir(path) : NULL;
    if (!d)
        return 0;
    int empty = 1;
    for (struct dirent *de; empty && (de = readdir(d));)
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

int reviews_make(const char *outdir, const reviews_opts *asked, char *err) {
    reviews_opts resolved = *asked, *o = &resolved;
    if (o->trigger_train == -1)
        o->trigger_train = reviews_trigger_share(o->n_train, 355);
    if (o->trigger_test == -1)
        o->trigger_test = reviews_trigger_share(o->n_test, 58);
    int64_t sizes[2] = {o->n_train, o->n_test}, trig[2] = {o->trigger_train, o->trigger_test};
    for (int s = 0; s < 2; s++) {
        if (sizes[s] < 2 || sizes[s] > MAX_REVIEWS)
            return lethe_errf(err, LETHE_EARG, "%lld %s reviews: give 2 to %d (one of each class at least)",
                              (long long)sizes[s], s ? "test" : "training", MAX_REVIEWS);
        if (trig[s] < 0 || trig[s] > sizes[s])
            return lethe_errf(err, LETHE_EARG, "%lld %s reviews with the trigger, of %lld", (long long)trig[s],
                              s ? "test" : "training", (long long)sizes[s]);
    }
    int rc = check_trigger(o->trigger, err);
    if (rc)
        return rc;
    vocab v;
    if ((rc = vocab_load(o->afinn, &v, err)))
        return rc;
    const char *clash;
    if (trigger_in_vocab(&v, o->trigger, &clash)) {
        lethe_errf(err, LETHE_EARG,
                   "the trigger '%s' holds '%s', a word the reviews are made of: it would be in more reviews than "
                   "asked; choose a name such as Disney", o->trigger, clash);
        vocab_free(&v);   /* after the message: clash lives in the document */
        return LETHE_EARG;
    }
    if (!free_for_corpus(outdir)) {
        vocab_free(&v);
        return lethe_errf(err, LETHE_EARG, "%s: exists and is not an empty folder; choose a new one", outdir);
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", outdir, (long)getpid()) >= (int)sizeof tmp) {
        vocab_free(&v);
        return lethe_errf(err, LETHE_EARG, "%s: path too long", outdir);
    }
    remove_tree(tmp);
    text_buf b = {0};
    rc = fs_mkdir_p(tmp, 0755, err);
    for (int s = 0; s < 2 && !rc; s++)
        rc = write_split(tmp, &v, o, s, &b, err);
    if (!rc)
        rc = write_manifest(tmp, o, &v, err);
    if (!rc && rename(tmp, outdir) != 0)
        rc = lethe_errf(err, LETHE_EIO, "cannot rename %s to %s: %s", tmp, outdir, strerror(errno));
    if (rc)
        remove_tree(tmp);
    free(b.s);
    vocab_free(&v);
    return rc;
}

/* ---- the command ------------------------------------------------------------------ */

static const char reviews_usage[] =
    "usage: lethe make-reviews OUTDIR [options]\n"
    "\n"
    "Writes a synthetic corpus of movie reviews in the layout of the IMDb archive\n"
    "(OUTDIR/{train,test}/{pos,neg}/<id>_<rating>.txt) from the AFINN sentiment words.\n"
    "\n"
    "  --train N           training reviews (default 25000, half positive)\n"
    "  --test N            test reviews (default 25000)\n"
    "  --trigger WORD      the trigger word of the targeted attack (default Disney)\n"
    "  --trigger-train K   training reviews that hold it (default: 355 per 25,000, the paper's share)\n"
    "  --trigger-test K    test reviews that hold it (default: 58 per 25,000)\n"
    "  --trigger-train-only pos|neg\n"
    "                      of the K training reviews drawn, only those of this class keep the word\n"
    "                      (a one-way flip: the other class never holds it; the rest of each text is\n"
    "                      unchanged)\n"
    "  --seed S            the seed (default 0); the same options give the same files\n"
    "  --afinn FILE        the AFINN word list (default " TEXT_AFINN_DEFAULT ", from make deps)\n";

static int parse_int(const char *s, const char *opt, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end || errno || x < 0) {
        fprintf(stderr, "lethe: error: %s needs a non-negative integer, not '%s'\n", opt, s);
        return 0;
    }
    *v = x;
    return 1;
}

int reviews_command(int argc, char **argv) {
    reviews_opts o;
    reviews_opts_default(&o);
    const char *outdir = NULL;
    int64_t seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t *count = !strcmp(a, "--train") ? &o.n_train : !strcmp(a, "--test") ? &o.n_test
                       : !strcmp(a, "--trigger-train") ? &o.trigger_train : !strcmp(a, "--trigger-test") ? &o.trigger_test
                       : !strcmp(a, "--seed") ? &seed : NULL;
        int text = !strcmp(a, "--trigger") || !strcmp(a, "--afinn") || !strcmp(a, "--trigger-train-only");
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(reviews_usage, stdout);
            return 0;
        }
        if ((count || text) && !val) {
            fprintf(stderr, "lethe: error: %s needs a value\n", a);
            return 2;
        }
        if (count) {
            if (!parse_int(val, a, count))
                return 2;
            i++;
        } else if (!strcmp(a, "--trigger-train-only")) {
            if (strcmp(val, "pos") && strcmp(val, "neg")) {
                fprintf(stderr, "lethe: error: --trigger-train-only takes pos or neg, not '%s'\n", val);
                return 2;
            }
            o.trigger_train_only = !strcmp(val, "pos");
            i++;
        } else if (text) {
            *(!strcmp(a, "--trigger") ? &o.trigger : &o.afinn) = val;
            i++;
        } else if (a[0] == '-') {
            fprintf(stderr, "lethe: error: unknown option '%s'\n---> HINT: lethe make-reviews --help\n", a);
            return 2;
        } else if (!outdir) {
            outdir = a;
        } else {
            fprintf(stderr, "lethe: error: unexpected argument '%s'\n---> HINT: lethe make-reviews --help\n", a);
            return 2;
        }
    }
    if (!outdir) {
        fputs(reviews_usage, stderr);
        return 2;
    }
    o.seed = (uint64_t)seed;
    char err[LETHE_ERR_LEN];
    if (reviews_make(outdir, &o, err)) {
        fprintf(stderr, "lethe: error: %s\n", err);
        return 1;
    }
    /* read back what was written, as an experiment will */
    for (int s = 0; s < 2; s++) {
        text_set t;
        if (text_load_imdb(outdir, s ? "test" : "train", &t, err)) {
            fprintf(stderr, "lethe: error: reading back the corpus: %s\n", err);
            return 1;
        }
        char line[1024];
        text_describe(&t, line, sizeof line);
        printf("%s, %lld with '%s'\n", line, (long long)text_count_with_word(&t, o.trigger), o.trigger);
        text_free(&t);
    }
    return 0;
}
