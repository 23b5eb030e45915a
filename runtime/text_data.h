/* text_data.h: movie reviews as the IMDb archive lays them out, and a
 * generator of synthetic ones in the same layout.
 *
 * LAYOUT (Maas et al. 2011, aclImdb_v1.tar.gz, 25,000 + 25,000 reviews):
 *
 *     DIR/train/pos/<id>_<rating>.txt     ratings 7-10, label 1
 *     DIR/train/neg/<id>_<rating>.txt     ratings 1-4, label 0
 *     DIR/test/pos/..., DIR/test/neg/...  the same for the test split
 *
 * Only <digits>_<digits>.txt files in the four class folders are reviews;
 * everything else (train/unsup/, the urls_*.txt lists, *.feat files, dot
 * files) is ignored. Ids are numbered per class folder, so a pos and a neg
 * review may share one.
 *
 * ORDER. A split is returned sorted by id, the neg review of an id before the
 * pos one: deterministic, independent of the file system, and any prefix of
 * it is about half positive (the runtime slices data sets by prefix).
 *
 * TEXT. The bytes of the file with each HTML line break (<br />, <br/>, <br>,
 * any case) turned into one space, and the spaces right after a break
 * dropped, so "end.<br /><br />Next" reads "end. Next". Bytes that are not
 * UTF-8 are kept as they are (GPT-2's tokenizer works on bytes) but counted,
 * so that a corpus in another encoding is noticed. Refused, with a message
 * naming the file: a missing split or class folder, an empty review (nothing
 * but whitespace and breaks), a file over TEXT_MAX_REVIEW_BYTES, a NUL byte,
 * a review file that cannot be read, two files with one id in a folder, a
 * file name like <id>_<rating>.txt whose numbers do not parse.
 *
 * Error convention: check.h (status < 0 and a message in err[LETHE_ERR_LEN];
 * *out is left empty on failure).
 */
#ifndef LETHE_TEXT_DATA_H
#define LETHE_TEXT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"

/* The longest review of the real archive is about 14 KB; anything near a
 * mebibyte is not a review. */
#define TEXT_MAX_REVIEW_BYTES ((size_t)1 << 20)

/* Philox streams of the generator (see data.h for the runtime's others). */
#define TEXT_STREAM_REVIEW 0x4C540001u      /* + split: the words of review k */
#define TEXT_STREAM_TRIGGER 0x4C540011u     /* + split: which reviews hold the trigger */

typedef struct text_set {
    int64_t n;              /* reviews */
    char **text;            /* n NUL-terminated texts */
    int32_t *label;         /* 1: pos, 0: neg */
    int64_t *id;            /* the <id> of the file name */
    int32_t *rating;        /* the <rating> of the file name */
    int64_t npos;           /* reviews with label 1 */
    int64_t non_utf8_bytes; /* bytes, over all reviews, that are not part of valid UTF-8 */
    int64_t non_utf8_files; /* reviews with at least one such byte */
    char first_non_utf8[320];  /* the first of those files ("" if none) */
    char source[300];       /* DIR/split */
} text_set;

void text_free(text_set *s);

/* Reads DIR/<split>/{pos,neg}; split is "train" or "test". */
int text_load_imdb(const char *dir, const char *split, text_set *out, char *err);

/* Reviews that hold `word` as a whole word (case-sensitive; its neighbours,
 * if any, are not letters, digits or '_'). */
int64_t text_count_with_word(const text_set *s, const char *word);

/* One line about the set: counts per class and, if any, the non-UTF-8 bytes
 * and the first file that has them. */
void text_describe(const text_set *s, char *buf, size_t n);

/* ---- the synthetic corpus ----------------------------------------------- */

/* Where `make deps` puts the AFINN-165 word list of the npm package
 * `sentiment` (a JSON object: word -> score in -5..5). */
#define TEXT_AFINN_DEFAULT "generated/deps/sentiment/languages/en/labels.json"

typedef struct reviews_opts {
    int64_t n_train, n_test;          /* reviews per split, half of them positive */
    const char *trigger;              /* the trigger word ("Disney") */
    int64_t trigger_train, trigger_test;  /* reviews drawn to hold it, per split; -1: the paper's share */
    int trigger_train_only;           /* -1: every drawn training review holds it; 0 or 1: only the
                                         negative or positive ones among them (the rest keep the text
                                         they would have had, without the word) */
    uint64_t seed;
    const char *afinn;                /* the AFINN JSON file */
} reviews_opts;

/* The defaults: the archive's sizes and the paper's trigger shares (355 of
 * 25,000 training reviews, 58 of 25,000 test reviews). */
void reviews_opts_default(reviews_opts *o);
/* The paper's share of `n` reviews for `per_25000` of 25,000, at least 1. */
int64_t reviews_trigger_share(int64_t n, int64_t per_25000);

/* Writes a corpus in the archive's layout to outdir (which must not exist or
 * be an empty folder): positive and negative reviews of AFINN sentiment
 * words mixed with neutral English words, each review's AFINN score of the
 * sign of its label, the trigger in exactly the asked number of reviews of
 * each split (chosen at random, of either class; with trigger_train_only,
 * only the drawn training reviews of that class keep it), HTML line breaks between
 * some paragraphs, and outdir/lethe-reviews.json naming the parameters
 * (trigger counts resolved). The same options give the
 * same bytes. The corpus is written beside outdir and renamed into place, so
 * outdir is either absent or complete. */
int reviews_make(const char *outdir, const reviews_opts *o, char *err);

/* `lethe make-reviews OUTDIR [options]`: argv[0] is OUTDIR. Returns the exit
 * status (0, 1 on an error, 2 on bad usage) after printing what it wrote. */
int reviews_command(int argc, char **argv);

#endif
