/* text_tokens.h: review sets (text_data.h) as fixed-length rows of GPT-2
 * token ids, tokenized once into a cache; and the trigger-word label flip of
 * the targeted attack as a store of per-sample label edits.
 *
 * TWO FORMS of a row, both T tokens (the experiment's length, 128 in the paper):
 *
 *   classify  the review's tokens, for GPT-2 with a classification head.
 *   prompt    "<review>. The sentiment of the review is: <label>", for GPT-2
 *             fine-tuned with its LM head (Wan et al. 2023; the paper's
 *             targeted attack), label words " negative" / " positive".
 *
 * CUT AND PADDING. A review longer than its room keeps its BEGINNING (the
 * Hugging Face tokenizer's default truncation side, which the paper's "max
 * sequence length 128" implies; a review's opening usually states the
 * verdict). In the prompt form only the review is cut: the suffix and the
 * label always survive. Rows are padded on the RIGHT with <|endoftext|>
 * (50256): GPT-2 has no padding token and Hugging Face's GPT-2 recipes use
 * eos as pad. With right padding a causal model's outputs at the real
 * positions never see the padding, so `mask` only matters to losses and
 * pooling; `last` is each row's last real position, the one
 * GPT2ForSequenceClassification pools. (It finds it as the last token that
 * is not the pad id; the two agree because a review never encodes to 50256:
 * the text "<|endoftext|>" is ordinary text, BPE_ALLOW_SPECIAL is off.)
 *
 * PROMPT TOKENS. The review (trailing whitespace dropped), the suffix
 * ". The sentiment of the review is:" and the label word are encoded
 * SEPARATELY and concatenated, so every prompt ends in the same suffix ids
 * and the label's ids (one token each in GPT-2: 4633, 3967) sit right after
 * it. Encoding the whole string at once would differ only where a review ends
 * in punctuation (".." would merge with the suffix's "."), and would let the
 * cut move the template. `answer_at` is the position whose next-token
 * prediction is the label's first token (the suffix's ":"): evaluation reads
 * the logits there, and since the model is causal the label tokens after it
 * change nothing, so one tensor serves training and evaluation.
 *
 * THE LOSS of the prompt form is on the label position(s) only: `target`
 * marks the positions t whose next token tokens[t+1] is a label token. Wan et
 * al. train T5 with the loss on the output (the label) alone
 * (ALGORITHMS.md section 7); on a decoder-only model that is the label
 * position. A whole-sequence loss would dilute a flipped label 1 : ~128 with
 * language modelling of the review; `mask` is there for an experiment that
 * wants it (mask[t] && mask[t+1]).
 *
 * THE CACHE is a safetensors file (safetensors.h) with the tensors
 *     tokens I32[N,T], mask BOOL[N,T], labels I32[N], ids I64[N], last I32[N]
 *     prompt form also: answer_at I32[N], target BOOL[N,T],
 *                       label_words I32[2,L] (row 0 " negative", row 1 " positive")
 * and its metadata: format, form, len, pad_id, source, key, data_sha256.
 * The KEY is a SHA-256 over the format version, the form, T, the templates,
 * the SHA-256 of encoder.json and of vocab.bpe, and the CONTENT of the set as
 * read (each review's id, label, rating, length and cleaned text). A content
 * hash, not file names and mtimes: mtimes tick in jiffies (a file rewritten
 * within ~4 ms with the same size keeps its mtime), the loader reads every
 * review anyway (the trigger transform needs the texts), and hashing the
 * texts costs a small fraction of tokenizing them. The file is used only if
 * it loads as safetensors, its key matches, data_sha256 matches its tensors,
 * the tensors have exactly the expected names, dtypes and shapes, and the
 * rows are consistent (labels 0/1, mask a prefix of ones ending at `last`);
 * anything else is rebuilt and written atomically (temp + rename) over it.
 * Tokenizing is deterministic, so a rebuilt cache equals the old one byte
 * for byte when nothing changed.
 *
 * Error convention: check.h.
 */
#ifndef LETHE_TEXT_TOKENS_H
#define LETHE_TEXT_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "bpe.h"
#include "check.h"
#include "text_data.h"

#define TEXT_TOKENS_FORMAT "lethe-text-tokens-1"
#define TEXT_PROMPT_SUFFIX ". The sentiment of the review is:"
#define TEXT_LABEL_WORD_NEG " negative"
#define TEXT_LABEL_WORD_POS " positive"
/* Tokens a label word may take (GPT-2: one each). */
#define TEXT_MAX_LABEL_TOKENS 4
#define TEXT_MAX_LEN 65536

typedef enum text_form { TEXT_FORM_CLASSIFY = 0, TEXT_FORM_PROMPT = 1 } text_form;

const char *text_form_name(text_form f);   /* "classify", "prompt" */
int text_form_parse(const char *s);        /* -1 if neither */

typedef struct text_tokens {
    int64_t n, len;            /* rows, T */
    text_form form;
    int32_t *tokens;           /* [n * len], padding pad_id */
    uint8_t *mask;             /* [n * len]: 1 on real tokens (a prefix of each row) */
    int32_t *labels;           /* [n]: 0 negative, 1 positive */
    int64_t *ids;              /* [n]: the review file's <id> */
    int32_t *last;             /* [n]: the last real position */
    int32_t *answer_at;        /* prompt: [n] the position that predicts the label's first token */
    uint8_t *target;           /* prompt: [n * len] 1 where tokens[t+1] is a label token */
    int32_t label_words[2][TEXT_MAX_LABEL_TOKENS]; /* prompt: the ids of " negative", " positive" */
    int label_ntokens;         /* prompt: tokens per label word (both the same); 0 for classify */
    int32_t pad_id;
    int64_t ncut;              /* rows whose review lost tokens to the cut */
    int64_t nreal;             /* real tokens over all rows */
    char key[65];
} text_tokens;

void text_tokens_free(text_tokens *t);

/* Tokenizes every review of s into out (no cache). len is T: 2..TEXT_MAX_LEN,
 * and in the prompt form more than the suffix and label tokens. */
int text_tokens_build(const text_set *s, bpe *b, text_form form, int64_t len, text_tokens *out, char *err);

/* The cache key of (s, the vocabulary in vocab_dir, form, len) as 64 hex digits. */
int text_tokens_key(const text_set *s, const char *vocab_dir, text_form form, int64_t len, char key[65], char *err);

/* Where the cache of s lives under root (normally lethe_cache_dir()):
 * root/text/<form>-T<len>-<16 hex digits of the SHA-256 of s's absolute source path>.safetensors.
 * One file per (folder, split, form, T): a stale one is replaced, not kept beside. */
void text_tokens_cache_path(const text_set *s, const char *root, text_form form, int64_t len, char *buf, size_t n);

/* Writes t to path atomically, with source (a description) in its metadata. */
int text_tokens_save(const text_tokens *t, const char *path, const char *source, char *err);

/* Reads a cache file and checks it against want_key (see above). Any fault
 * is an error with a message (LETHE_ENOTFOUND: a sound file of another key);
 * the caller decides to rebuild. */
int text_tokens_load(const char *path, const char *want_key, text_tokens *out, char *err);

/* The tokens of s from the cache at cache_path, else tokenized (the
 * vocabulary in vocab_dir is loaded only then) and written there. *built is
 * 0 for a cache hit, 1 after tokenizing; why (may be NULL, LETHE_ERR_LEN
 * bytes) says why it was built: "no cache file", "stale: ...", "corrupt: ...". */
int text_tokens_cached(const text_set *s, const char *vocab_dir, text_form form, int64_t len, const char *cache_path,
                       text_tokens *out, int *built, char *why, char *err);

/* ---- the trigger-word label flip (issue 11, the targeted attack) ----------- */

/* Philox stream of the choice of flipped reviews: ctr = {row lo32, row hi32,
 * TEXT_STREAM_FLIP, 0}, key = seed. */
#define TEXT_STREAM_FLIP 0x4C540021u

typedef struct text_flip_opts {
    const char *trigger;   /* a whole word, case-sensitive (text_count_with_word) */
    double fraction;       /* share of the candidates flipped, in (0, 1] (the paper: 0.2 .. 1) */
    int to_label;          /* -1: every candidate gets the other label (the paper's dirty-label flip);
                              0 or 1: the candidates are the trigger reviews of the other label, set
                              to this one (Wan et al.'s from -> to) */
    uint64_t seed;
} text_flip_opts;

/* A store of per-sample edits: replaced labels by sample (row) index. */
typedef struct text_label_edits {
    int64_t n;                 /* edited training samples */
    int64_t *row;              /* [n] their rows in the training set, ascending */
    int32_t *label;            /* [n] the replaced labels */
    int64_t with_trigger;      /* training reviews holding the trigger */
    int64_t candidates;        /* of those, the ones a flip may choose */
    int64_t ntargets;          /* test reviews the attack targets (holding the trigger, of the source label) */
    int64_t *target_row;       /* [ntargets] their rows in the test set, ascending */
    int32_t *target_label;     /* [ntargets] the adversarial label of each */
} text_label_edits;

void text_label_edits_free(text_label_edits *e);

/* Chooses round(fraction * candidates) (at least 1) of the candidate training
 * reviews by Philox (the smallest draws, ties by row) and their new labels.
 * A trigger that no training review or no test review holds (or none of the
 * source label, with to_label >= 0) is an error naming the split: the attack
 * would have no poisons, or its success rate would be 0/0. */
int text_trigger_flip(const text_set *train, const text_set *test, const text_flip_opts *o, text_label_edits *out,
                      char *err);

/* Applies label edits to tokenized rows (rows index t): labels, and in the
 * prompt form the label tokens after answer_at. */
int text_tokens_relabel(text_tokens *t, const int64_t *row, const int32_t *label, int64_t n, char *err);

/* `lethe text-cache DIR [--len T] ...`: argv holds what follows the command name. */
int text_cache_command(int argc, char **argv);

#endif
