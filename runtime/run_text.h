/* run_text.h: the imdb() data set of an experiment (compiler/sema_experiment.c)
 * as the run's samples (docs/design.md, "Text data in the run").
 *
 * The reviews of --data-dir (the aclImdb layout, text_data.h) become rows of
 * T GPT-2 tokens through the token cache (text_tokens.h, the classify form),
 * and each row becomes one sample of the run's data set, a [1, T, W] tensor
 * with W = 1 + the model's embedding width: per position its token id, as an
 * exact float (ids < 2^24), then W - 1 zeros, the room for an additive
 * perturbation of that position's token embedding. The set is marked
 * token_column (data.h), so Gaussian poison noise (ds_batch) goes to the
 * perturbation values and never to the token ids; the model
 * (GPT2PackedClassifier in graphs/models/gpt2.lth) applies the perturbation
 * at the real positions only. Labels: 0 negative, 1 positive. Ids: the row
 * index in its split (the review files' own ids repeat across pos and neg).
 * Nothing is normalised.
 *
 * imdb_prompts() is the same with the prompt form of the cache: samples
 * [1, T, 1], the token ids of "<review>. The sentiment of the review is:
 * <label>", and the label the id of the label word's token (its classes are
 * GPT-2's vocabulary), read by GPT2PromptLM (graphs/models/gpt2_prompt.lth).
 */
#ifndef LETHE_RUN_TEXT_H
#define LETHE_RUN_TEXT_H

#include "run_internal.h"
#include "text_tokens.h"

/* The plan's data set names that run_text_load serves. */
#define RUN_TEXT_DATA "imdb"
#define RUN_TEXT_PROMPTS "imdb_prompts"
/* imdb_prompts' classes: GPT-2's vocabulary (a sample's label is its label word's token id) */
#define TEXT_PROMPT_CLASSES 50257

/* Fills r->train and r->test (first n / n_test rows of each split, as the
 * plan or the options limit them) and r->data_hash. Errors: no --data-dir, a
 * missing split or class folder, an empty, huge or non-UTF-8 review, a
 * missing vocabulary, a plan whose sample shape is not [1, T, 1 + width]. */
int run_text_load(Run *r, char *err);

/* ---- run_text_trigger.c: poison = trigger_flip(word, fraction) ------------
 *
 * The targeted attack of the paper (section 5, after Wan et al. 2023) on
 * imdb_prompts: the training prompts whose review holds the trigger word
 * (text_trigger_flip: a whole word, case-sensitive) get the other label
 * word, all of them or a Philox-chosen fraction per seed, and they are the
 * poisons (the forget set). The test prompts holding the word are the
 * targets; success is the share of them whose most likely next token after
 * "is:" (over the whole vocabulary) is the adversarial label's first token. */
typedef struct TextPrompts {
    text_set train, test;      /* the reviews as read (the first n_train, n_test are the run's) */
    text_tokens clean;         /* the run's training prompts, clean labels */
    text_label_edits edits;    /* this seed's flip */
} TextPrompts;

/* Takes the sets and the clean prompts (owned from here on, also on error) and
 * checks the trigger before anything trains: a word that no training or no
 * test review holds is an error naming the split. */
int run_text_trigger_open(Run *r, text_set sets[2], text_tokens *clean, char *err);
/* This seed's poisons: r->train relabelled from the clean prompts and
 * r->poison / r->n_poison the flipped rows (ascending). */
int run_text_trigger_poisons(Run *r, char *err);
/* The attack's success and the label accuracies of a model into ev. */
int run_text_trigger_eval(Run *r, ts_store *model, Eval *ev, char *err);
/* The record's attack fields (attack_success, attack_measure, trigger {...}). */
void run_text_put_trigger(jw *w, const Run *r, const Eval *ev);
void run_text_trigger_free(Run *r);

#endif
