/* test_text_data.c: the IMDb review reader on archives the test writes
 * itself (order, labels, line breaks, ignored files, and every refused or
 * counted kind of bad input with its message), and `lethe make-reviews`'
 * generator read back through it (counts, labels, trigger counts, the label
 * learnable from the AFINN words, determinism, refused options). The
 * generator's tests SKIP when the AFINN list of `make deps` is absent. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "harness.h"
#include "json.h"
#include "text_data.h"

static char root[600];

static void mkdirs(const char *path) {
    char err[LETHE_ERR_LEN];
    if (fs_mkdir_p(path, 0755, err))
        printf("# %s\n", err);
}

/* Writes n bytes to base/rel, creating folders (plainly: no fsync, these are scratch files). */
static void put_file(const char *base, const char *rel, const void *data, size_t n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", base, rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    mkdirs(path);
    *slash = '/';
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if ((f && fclose(f) != 0) || !ok)
        printf("# cannot write %s\n", path);
}

static void put_text(const char *base, const char *rel, const char *text) { put_file(base, rel, text, strlen(text)); }

/* A fresh folder root/name holding a valid little archive: train and test, each
 * with two reviews per class. */
static const char *archive(const char *name) {
    static char dir[800];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    static const char *const splits[] = {"train", "test"};
    for (int s = 0; s < 2; s++) {
        char rel[64];
        snprintf(rel, sizeof rel, "%s/pos/3_8.txt", splits[s]);
        put_text(dir, rel, "Great<br /><br />movie.<BR>End<br/>  x");
        snprintf(rel, sizeof rel, "%s/pos/1_10.txt", splits[s]);
        put_text(dir, rel, "I loved this Disney film.");
        snprintf(rel, sizeof rel, "%s/neg/1_2.txt", splits[s]);
        put_text(dir, rel, "Dull, like Disneyland on a Monday.");
        snprintf(rel, sizeof rel, "%s/neg/0_1.txt", splits[s]);
        put_text(dir, rel, "Bad. Disney.");
    }
    return dir;
}

static void test_reader_valid(void) {
    const char *dir = archive("valid");
    /* what the real archive has beside the reviews, all ignored */
    put_text(dir, "train/urls_pos.txt", "http://www.imdb.com/title/tt0453418/usercomments\n");
    put_text(dir, "train/labeledBow.feat", "9 0:9 1:1\n");
    put_text(dir, "train/unsup/0_0.txt", "unlabelled");
    put_text(dir, "train/pos/.0_9.txt.swp", "editor junk");
    text_set t;
    char err[LETHE_ERR_LEN];
    int rc = text_load_imdb(dir, "train", &t, err);
    if (!th_check(rc == 0, "text.reader_loads", "%s", err))
        return;
    int ok = t.n == 4 && t.npos == 2 && t.id[0] == 0 && t.label[0] == 0 && t.id[1] == 1 && t.label[1] == 0 &&
             t.id[2] == 1 && t.label[2] == 1 && t.id[3] == 3 && t.label[3] == 1 && t.rating[3] == 8 && t.rating[0] == 1;
    th_check(ok, "text.reader_order_by_id_neg_first", "n %lld, npos %lld, first id %lld label %d", (long long)t.n,
             (long long)t.npos, t.n ? (long long)t.id[0] : -1LL, t.n ? t.label[0] : -1);
    th_check(t.n == 4 && !strcmp(t.text[3], "Great movie. End x"), "text.reader_line_breaks", "got '%s'",
             t.n == 4 ? t.text[3] : "");
    th_check(text_count_with_word(&t, "Disney") == 2, "text.count_whole_words",
             "%lld reviews with 'Disney' (Disneyland does not count; 'Disney.' does)",
             (long long)text_count_with_word(&t, "Disney"));
    char line[600];
    text_describe(&t, line, sizeof line);
    th_check(strstr(line, "4 reviews (2 positive, 2 negative)") && !strstr(line, "UTF-8"), "text.describe", "%s", line);
    text_free(&t);
    rc = text_load_imdb(dir, "validation", &t, err);
    th_check(rc == LETHE_EARG && strstr(err, "train and test"), "text.reader_bad_split_name", "rc %d: %s", rc, err);
}

/* A copy of the valid archive with one change; the train split must be
 * refused with a message holding `want` (and the file's name when named). */
static void expect_refused(const char *name, const char *rel, const void *data, size_t n, const char *want) {
    const char *dir = archive(name);
    char test_name[96];
    snprintf(test_name, sizeof test_name, "text.refuses_%s", name);
    if (rel)
        put_file(dir, rel, data, n);
    text_set t;
    char err[LETHE_ERR_LEN] = "";
    int rc = text_load_imdb(dir, "train", &t, err);
    const char *base = rel ? strrchr(rel, '/') + 1 : "";
    th_check(rc < 0 && strstr(err, want) && strstr(err, base) && t.n == 0 && !t.text, test_name, "rc %d: '%s' (want '%s')",
             rc, err, want);
    text_free(&t);
}

static void test_reader_bad_input(void) {
    char err[LETHE_ERR_LEN], path[1200];
    text_set t;
    expect_refused("empty_file", "train/pos/7_9.txt", "", 0, "empty review (0 bytes)");
    expect_refused("only_breaks", "train/neg/7_2.txt", "<br /><br />\n \t", 15, "nothing but whitespace and line breaks");
    expect_refused("nul_byte", "train/neg/8_2.txt", "ab\0cd", 5, "NUL byte at offset 2");
    expect_refused("bad_name", "train/pos/abc_7.txt", "fine", 4, "named <id>_<rating>.txt");
    expect_refused("duplicate_id", "train/pos/1_7.txt", "again", 5, "two reviews with id 1");
    size_t big = TEXT_MAX_REVIEW_BYTES + 1;
    char *huge = malloc(big);
    memset(huge, 'a', big);
    expect_refused("huge_file", "train/pos/9_9.txt", huge, big, "1 MiB) limit of a review");
    free(huge);

    /* unreadable (as root nothing is unreadable by mode): a dangling link, a folder */
    const char *dir = archive("dangling_link");
    snprintf(path, sizeof path, "%s/train/pos/5_7.txt", dir);
    th_check(symlink("/nonexistent/review", path) == 0, "text.setup_symlink", "cannot make %s", path);
    int rc = text_load_imdb(dir, "train", &t, err);
    th_check(rc < 0 && strstr(err, "5_7.txt") && strstr(err, "cannot open"), "text.refuses_unreadable_file", "rc %d: %s",
             rc, err);
    dir = archive("folder_as_review");
    snprintf(path, sizeof path, "%s/train/neg/6_3.txt", dir);
    mkdirs(path);
    rc = text_load_imdb(dir, "train", &t, err);
    th_check(rc < 0 && strstr(err, "6_3.txt") && strstr(err, "is a directory"), "text.refuses_folder_as_review",
             "rc %d: %s", rc, err);

    /* missing pieces of the layout */
    snprintf(path, sizeof path, "%s/no_such_archive", root);
    rc = text_load_imdb(path, "train", &t, err);
    th_check(rc == LETHE_ENOTFOUND && strstr(err, "no_such_archive: missing"), "text.refuses_missing_dir", "rc %d: %s",
             rc, err);
    snprintf(path, sizeof path, "%s/only_train", root);
    put_text(path, "train/pos/0_7.txt", "ok");
    put_text(path, "train/neg/0_3.txt", "ok");
    rc = text_load_imdb(path, "test", &t, err);
    th_check(rc == LETHE_ENOTFOUND && strstr(err, "only_train/test: missing split"), "text.refuses_missing_split",
             "rc %d: %s", rc, err);
    snprintf(path, sizeof path, "%s/no_neg", root);
    put_text(path, "train/pos/0_7.txt", "ok");
    rc = text_load_imdb(path, "train", &t, err);
    th_check(rc == LETHE_ENOTFOUND && strstr(err, "no_neg/train/neg: missing"), "text.refuses_missing_class_folder",
             "rc %d: %s", rc, err);
    snprintf(path, sizeof path, "%s/no_reviews", root);
    put_text(path, "train/pos/README", "nothing here");
    put_text(path, "train/neg/README", "nothing here");
    rc = text_load_imdb(path, "train", &t, err);
    th_check(rc == LETHE_EFORMAT && strstr(err, "no review files"), "text.refuses_no_reviews", "rc %d: %s", rc, err);

    /* not UTF-8: kept and counted; valid multi-byte text is not counted */
    dir = archive("latin1");
    put_text(dir, "train/pos/4_8.txt", "caf\xe9 \xff ok");                    /* 2 bad bytes */
    put_text(dir, "train/neg/4_2.txt", "overlong \xc0\xaf, surrogate \xed\xa0\x80"); /* 2 + 3 */
    put_text(dir, "train/neg/5_2.txt", "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 fine"); /* valid */
    rc = text_load_imdb(dir, "train", &t, err);
    int ok = rc == 0 && t.non_utf8_bytes == 7 && t.non_utf8_files == 2 && strstr(t.first_non_utf8, "_") != NULL;
    char line[800] = "";
    if (rc == 0)
        text_describe(&t, line, sizeof line);
    th_check(ok && strstr(line, "7 bytes in 2 reviews are not UTF-8"), "text.non_utf8_counted_and_kept",
             "rc %d (%s): %lld bytes in %lld files; %s", rc, rc ? err : "", (long long)t.non_utf8_bytes,
             (long long)t.non_utf8_files, line);
    int kept = 0;
    for (int64_t i = 0; i < t.n; i++)
        kept |= !strcmp(t.text[i], "caf\xe9 \xff ok");
    th_check(kept, "text.non_utf8_bytes_kept", "the Latin-1 review was changed");
    text_free(&t);
}

/* Reviews of random bytes, biased towards what the reader looks at (line
 * breaks, multi-byte leads, NUL, whitespace): each one is read or refused
 * with a message, never a crash (the sanitizer build checks the memory). */
static void test_reader_random_bytes(void) {
    static const char *const pieces[] = {"<br />", "<BR/>", "<br", " ", "\n", "\xc3", "\xa9", "\xf0\x9f", "\xed\xa0",
                                         "\xff", "a", "Disney", ">", "/"};
    const char *dir = archive("random_bytes");
    char buf[256], err[LETHE_ERR_LEN];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int bad = 0, accepted = 0;
    for (int it = 0; it < 300; it++) {
        size_t n = 0;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int parts = (int)(x % 24);
        for (int k = 0; k < parts; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            if (x % 5 == 0) {
                buf[n++] = (char)(x >> 32);   /* any byte, NUL included */
            } else {
                const char *p = pieces[(x >> 8) % (sizeof pieces / sizeof pieces[0])];
                memcpy(buf + n, p, strlen(p));
                n += strlen(p);
            }
        }
        put_file(dir, "train/pos/9_9.txt", buf, n);
        text_set t;
        err[0] = 0;
        int rc = text_load_imdb(dir, "train", &t, err);
        if (rc == 0) {
            accepted++;
            bad += t.n != 5 || t.non_utf8_bytes < 0 || t.non_utf8_bytes > (int64_t)n;
        } else {
            bad += rc != LETHE_EFORMAT || !strstr(err, "9_9.txt") || t.n != 0;
        }
        text_free(&t);
    }
    th_check(bad == 0 && accepted > 0, "text.reader_random_bytes", "%d of 300 random reviews misread or refused without a "
             "message naming the file (%d accepted)", bad, accepted);
}

/* ---- the generator ---------------------------------------------------------- */

/* The AFINN score of a text: the sum over its words (lowercased) that the list scores. */
static int review_score(const json_value *words, const char *text) {
    int score = 0;
    char w[64];
    for (const char *p = text; *p;) {
        size_t k = 0;
        while (isalpha((unsigned char)p[k]))
            k++;
        if (k && k < sizeof w) {
            for (size_t i = 0; i < k; i++)
                w[i] = (char)tolower((unsigned char)p[i]);
            w[k] = 0;
            const json_value *v = json_obj_get(words, w);
            if (v && v->type == JSON_NUMBER)
                score += (int)v->num;
        }
        p += k ? k : 1;
    }
    return score;
}

static int same_files(const char *a, const char *b) {
    char cmd[1800];
    snprintf(cmd, sizeof cmd, "diff -r '%s' '%s' > /dev/null 2>&1", a, b);
    return system(cmd) == 0;
}

static void test_generator(void) {
    if (!fs_exists(TEXT_AFINN_DEFAULT)) {
        th_skip("text.generator", "%s is absent (make deps fetches the npm package sentiment)", TEXT_AFINN_DEFAULT);
        return;
    }
    char out[800], out2[800], out3[800], err[LETHE_ERR_LEN];
    snprintf(out, sizeof out, "%s/gen_a", root);
    snprintf(out2, sizeof out2, "%s/gen_b", root);
    snprintf(out3, sizeof out3, "%s/gen_c", root);
    reviews_opts o;
    reviews_opts_default(&o);
    o.n_train = 301, o.n_test = 120, o.trigger_train = 9, o.trigger_test = 4, o.seed = 7;
    int rc = reviews_make(out, &o, err);
    if (!th_check(rc == 0, "text.generator_writes", "%s", err))
        return;
    uint8_t *raw;
    size_t rawn;
    fs_read_file(TEXT_AFINN_DEFAULT, 1 << 23, &raw, &rawn, err);
    json_doc *doc = NULL;
    json_parse((const char *)raw, rawn, NULL, &doc, err);
    free(raw);
    const json_value *words = doc ? json_doc_root(doc) : NULL;
    static const char *const splits[] = {"train", "test"};
    int64_t sizes[] = {301, 120}, trig[] = {9, 4};
    for (int s = 0; s < 2; s++) {
        text_set t;
        char name[64];
        rc = text_load_imdb(out, splits[s], &t, err);
        snprintf(name, sizeof name, "text.generated_%s_reads_back", splits[s]);
        if (!th_check(rc == 0, name, "%s", err))
            continue;
        int order_ok = t.n == sizes[s] && t.npos == sizes[s] / 2 && t.non_utf8_bytes == 0;
        for (int64_t i = 0; order_ok && i < t.n; i++)
            order_ok = t.id[i] == i / 2 && t.label[i] == (int)(i & 1) &&
                       (t.label[i] ? t.rating[i] >= 7 && t.rating[i] <= 10 : t.rating[i] >= 1 && t.rating[i] <= 4);
        snprintf(name, sizeof name, "text.generated_%s_counts_labels_ratings", splits[s]);
        th_check(order_ok, name, "n %lld (want %lld), npos %lld", (long long)t.n, (long long)sizes[s], (long long)t.npos);
        snprintf(name, sizeof name, "text.generated_%s_trigger_count", splits[s]);
        int64_t with = text_count_with_word(&t, "Disney");
        th_check(with == trig[s], name, "%lld reviews with Disney, asked %lld", (long long)with, (long long)trig[s]);
        int wrong = 0, breaks = 0, words_total = 0;
        for (int64_t i = 0; i < t.n; i++) {
            int sc = words ? review_score(words, t.text[i]) : 0;
            wrong += t.label[i] ? sc <= 0 : sc >= 0;
            breaks += strstr(t.text[i], "<br") != NULL;
            for (const char *p = t.text[i]; *p; p++)
                words_total += *p == ' ';
        }
        snprintf(name, sizeof name, "text.generated_%s_label_follows_afinn", splits[s]);
        th_check(words && wrong == 0, name, "%d of %lld reviews whose AFINN score has the wrong sign", wrong,
                 (long long)t.n);
        snprintf(name, sizeof name, "text.generated_%s_plausible_reviews", splits[s]);
        th_check(breaks == 0 && words_total / t.n >= 20 && words_total / t.n <= 150, name,
                 "%d texts keep a line break; %d words a review on average", breaks, words_total / (int)t.n);
        text_free(&t);
    }
    json_doc_free(doc);
    char cmd[1000];
    snprintf(cmd, sizeof cmd, "grep -rlq '<br /><br />' '%s/train'", out);
    th_check(system(cmd) == 0, "text.generated_files_have_line_breaks", "no <br /><br /> in the files, as the archive has");

    rc = reviews_make(out2, &o, err);
    th_check(rc == 0 && same_files(out, out2), "text.generator_deterministic", "rc %d %s: the same seed gave other files",
             rc, rc ? err : "");
    o.seed = 8;
    rc = reviews_make(out3, &o, err);
    th_check(rc == 0 && !same_files(out, out3), "text.generator_seed_matters", "rc %d %s: seed 8 gave seed 7's files", rc,
             rc ? err : "");
    th_check(reviews_trigger_share(25000, 355) == 355 && reviews_trigger_share(25000, 58) == 58 &&
                 reviews_trigger_share(2000, 355) == 28 && reviews_trigger_share(100, 58) == 1,
             "text.trigger_share_scales", "355 / 58 per 25,000 not scaled as documented");

    /* refused options: each with its message, and no folder left behind */
    struct {
        const char *name, *want;
        reviews_opts o;
        const char *dir;
    } bad[] = {
        {"trigger_is_a_vocabulary_word", "holds 'good'", o, "gen_bad1"},
        {"trigger_with_markup", "no control characters", o, "gen_bad2"},
        {"more_triggers_than_reviews", "reviews with the trigger", o, "gen_bad3"},
        {"too_few_reviews", "give 2 to", o, "gen_bad4"},
        {"existing_folder", "exists and is not an empty folder", o, "gen_a"},
        {"missing_afinn", "make deps", o, "gen_bad6"},
        {"afinn_not_a_word_list", "not the AFINN list", o, "gen_bad7"},
    };
    bad[0].o.trigger = "Good";
    bad[1].o.trigger = "<br />";
    bad[2].o.trigger_test = 121;
    bad[3].o.n_train = 1;
    bad[5].o.afinn = "/nonexistent/labels.json";
    char notlist[900];
    snprintf(notlist, sizeof notlist, "%s/labels_array.json", root);
    put_text(root, "labels_array.json", "[1, 2, 3]");
    bad[6].o.afinn = notlist;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char dir[900], name[96];
        snprintf(dir, sizeof dir, "%s/%s", root, bad[i].dir);
        snprintf(name, sizeof name, "text.generator_refuses_%s", bad[i].name);
        err[0] = 0;
        rc = reviews_make(dir, &bad[i].o, err);
        th_check(rc < 0 && strstr(err, bad[i].want) && (i == 4 || !fs_exists(dir)), name, "rc %d: '%s' (want '%s')", rc,
                 err, bad[i].want);
    }
}

/* the command line: usage errors are exit status 2 before any work */
static void test_command(void) {
    char out[800];
    snprintf(out, sizeof out, "%s/cli_never", root);
    char *bad_count[] = {out, "--train", "many"}, *unknown[] = {out, "--frobnicate"}, *no_value[] = {out, "--trigger"},
         *no_dir[] = {"--train", "10"};
    int a = reviews_command(3, bad_count), b = reviews_command(2, unknown), c = reviews_command(2, no_value),
        d = reviews_command(2, no_dir);
    th_check(a == 2 && b == 2 && c == 2 && d == 2 && !fs_exists(out), "text.command_usage_errors",
             "exit statuses %d %d %d %d (want 2)", a, b, c, d);
}

int main(void) {
    snprintf(root, sizeof root, "%s/text_data", th_tmpdir());
    mkdirs(root);
    test_reader_valid();
    test_reader_bad_input();
    test_reader_random_bytes();
    test_generator();
    test_command();
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", root);
    return th_exit();
}
