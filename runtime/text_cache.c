/* text_cache.c: `lethe text-cache`, which tokenizes a review folder into the
 * token cache once (text_tokens.h) so that experiments start from it, and
 * says what it holds.
 *
 *   lethe text-cache DIR [--len T] [--form classify|prompt|both] [--vocab DIR]
 *                        [--cache DIR] [--trigger WORD [--fraction F] [--seed S]]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lethe.h"
#include "text_tokens.h"


static const char text_cache_usage[] =
    "usage: lethe text-cache DIR [--len T] [--form classify|prompt|both] [--vocab DIR] [--cache DIR]\n"
    "                        [--trigger WORD [--fraction F] [--seed S]]\n"
    "  tokenizes DIR/{train,test} (the aclImdb layout, or `lethe make-reviews`') into the token\n"
    "  cache, or checks the cache there, and prints what each split holds\n"
    "  --len T        tokens per row (default 128, the paper's)\n"
    "  --form F       classify (the review), prompt (\"<review>" TEXT_PROMPT_SUFFIX " <label>\")\n"
    "                 or both (default)\n"
    "  --vocab DIR    encoder.json and vocab.bpe (default $LETHE_BPE_DIR, else " BPE_DEFAULT_DIR ")\n"
    "  --cache DIR    the cache root (default $LETHE_CACHE, else ~/.cache/lethe); files go to DIR/text/\n"
    "  --trigger W    also count the reviews holding W and choose the poisons of the label flip\n"
    "  --fraction F   the share of the trigger reviews flipped (default 1)\n"
    "  --seed S       the seed of that choice (default 0)\n";

static int usage_error(const char *what, const char *arg) {
    fprintf(stderr, "lethe: error: text-cache: %s '%s'\n%s", what, arg, text_cache_usage);
    return 2;
}

/* Tokenizes (or finds in the cache) one split in one form and prints a line about it. */
static int cache_one(const text_set *s, const char *split, const char *vocab, const char *root, text_form form,
                     int64_t len) {
    char path[4096], why[LETHE_ERR_LEN], err[LETHE_ERR_LEN];
    text_tokens_cache_path(s, root, form, len, path, sizeof path);
    text_tokens t;
    int built;
    if (text_tokens_cached(s, vocab, form, len, path, &t, &built, why, err))
        return lethe_cli_fail("text-cache", err, strstr(err, "encoder.json") || strstr(err, "vocab.bpe") ? BPE_MISSING_HINT : NULL);
    printf("%-5s %-8s T=%lld: %lld rows, %lld cut (%.1f%%), %.1f real tokens per row; %s%s%s\n    %s\n", split,
           text_form_name(form), (long long)len, (long long)t.n, (long long)t.ncut,
           t.n ? 100.0 * (double)t.ncut / (double)t.n : 0.0, t.n ? (double)t.nreal / (double)t.n : 0.0,
           built ? "tokenized (" : "cache hit", built ? why : "", built ? ")" : "", path);
    if (form == TEXT_FORM_PROMPT && !strcmp(split, "train"))
        printf("    label tokens: '" TEXT_LABEL_WORD_NEG "' %d, '" TEXT_LABEL_WORD_POS "' %d (first of %d each)\n",
               t.label_words[0][0], t.label_words[1][0], t.label_ntokens);
    text_tokens_free(&t);
    return 0;
}

int text_cache_command(int argc, char **argv) {
    const char *vocab = bpe_default_dir(), *root = lethe_cache_dir(), *dir = NULL;
    const char *form_s = "both";
    text_flip_opts flip = {.fraction = 1, .to_label = -1};
    int64_t len = 128;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(text_cache_usage, stdout);
            return 0;
        } else if (a[0] == '-' && a[1] && !v) {
            return usage_error("missing value of", a);
        } else if (!strcmp(a, "--len")) {
            len = strtoll(v, &end, 10);
            if (*end || end == v)
                return usage_error("--len needs an integer, not", v);
            i++;
        } else if (!strcmp(a, "--form")) {
            form_s = argv[++i];
        } else if (!strcmp(a, "--vocab")) {
            vocab = argv[++i];
        } else if (!strcmp(a, "--cache")) {
            root = argv[++i];
        } else if (!strcmp(a, "--trigger")) {
            flip.trigger = argv[++i];
        } else if (!strcmp(a, "--fraction")) {
            flip.fraction = strtod(v, &end);
            if (*end || end == v)
                return usage_error("--fraction needs a number, not", v);
            i++;
        } else if (!strcmp(a, "--seed")) {
            flip.seed = strtoull(v, &end, 10);
            if (*end || end == v || v[0] == '-')
                return usage_error("--seed needs a non-negative integer, not", v);
            i++;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option", a);
        } else if (!dir) {
            dir = a;
        } else {
            return usage_error("a second folder", a);
        }
    }
    if (!dir) {
        fputs(text_cache_usage, stderr);
        return 2;
    }
    if (len < 2 || len > TEXT_MAX_LEN) {
        fprintf(stderr, "lethe: error: text-cache: --len takes 2..%d tokens, not %lld\n", TEXT_MAX_LEN, (long long)len);
        return 2;
    }
    int both = !strcmp(form_s, "both"), form = both ? TEXT_FORM_CLASSIFY : text_form_parse(form_s);
    if (form < 0)
        return usage_error("the forms are classify, prompt and both, not", form_s);
    static const char *const splits[2] = {"train", "test"};
    text_set sets[2] = {{0}};
    char err[LETHE_ERR_LEN], line[1024];
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        if (text_load_imdb(dir, splits[k], &sets[k], err)) {
            rc = lethe_cli_fail("text-cache", err, NULL);
            break;
        }
        text_describe(&sets[k], line, sizeof line);
        printf("%s\n", line);
        for (int f = both ? 0 : form; f <= (both ? 1 : form) && !rc; f++)
            rc = cache_one(&sets[k], splits[k], vocab, root, (text_form)f, len);
    }
    if (!rc && flip.trigger) {
        text_label_edits e;
        if (text_trigger_flip(&sets[0], &sets[1], &flip, &e, err))
            rc = lethe_cli_fail("text-cache", err, "choose a word the reviews hold; `lethe make-reviews --trigger W` puts one in a synthetic corpus");
        else
            printf("trigger '%s': in %lld training reviews; %lld flipped (%.0f%%, seed %llu); %lld test targets\n",
                   flip.trigger, (long long)e.with_trigger, (long long)e.n, 100 * flip.fraction,
                   (unsigned long long)flip.seed, (long long)e.ntargets);
        text_label_edits_free(&e);
    }
    text_free(&sets[0]);
    text_free(&sets[1]);
    if (!rc && (fflush(stdout) || ferror(stdout)))
        rc = lethe_cli_fail("text-cache", "writing the output failed", NULL);
    return rc;
}
