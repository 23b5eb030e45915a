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
 */
#ifndef LETHE_RUN_TEXT_H
#define LETHE_RUN_TEXT_H

#include "run_internal.h"

/* The plan's data set name that run_text_load serves. */
#define RUN_TEXT_DATA "imdb"

/* Fills r->train and r->test (first n / n_test rows of each split, as the
 * plan or the options limit them) and r->data_hash. Errors: no --data-dir, a
 * missing split or class folder, an empty, huge or non-UTF-8 review, a
 * missing vocabulary, a plan whose sample shape is not [1, T, 1 + width]. */
int run_text_load(Run *r, char *err);

#endif
