/* sisa.h: SISA exact unlearning (Bourtoule et al. 2021, "Machine Unlearning",
 * IEEE S&P), the method an experiment names as `sisa(shards = 5, slices = 4)`
 * (docs/unlearning.md).
 *
 * Sharded, Isolated, Sliced, Aggregated:
 *   - the training set is split, by a seeded permutation (DS_STREAM_SUBSET),
 *     into `shards` disjoint shards of (almost) equal size and each shard into
 *     `slices` slices;
 *   - one model per shard, from its own fresh weights, trains incrementally:
 *     step j trains on slices 1..j (the union) for 2E/(R+1) of the recipe's E
 *     epochs, so that a shard's sample passes add up to E passes over the shard
 *     (the paper's schedule), and its weights and optimiser state are saved
 *     after every step (checkpoint j);
 *   - prediction aggregates the shard models: the mean of their softmax
 *     outputs;
 *   - unlearning a set of samples retrains, for every shard that holds one,
 *     from checkpoint i0 - 1 (i0 the first slice with a removed sample; 0 is
 *     the fresh weights) over slices i0..R without the removed samples; the
 *     other shards are kept as they are, bit for bit.
 *
 * Each training step j of shard s draws its batches and random numbers from
 * (seed, s, j) alone, so a retrained shard is exactly the shard SISA would
 * have trained had the removed samples never been there.
 *
 * This file's layer knows nothing of the run: the training is a sisa_trainer
 * (sisa_run.c binds it to the experiment's recipe; the tests bind it to a
 * trainer that records what it saw). */
#ifndef LETHE_SISA_H
#define LETHE_SISA_H

#include <stdint.h>

#include "lethe.h"

enum { SISA_MAX = 64 };   /* shards and slices, each */

/* Which training positions each shard and slice holds: shard s, slice j
 * (0-based) is order[start[s * slices + j] .. start[s * slices + j + 1]). */
typedef struct sisa_layout {
    int shards, slices;
    int64_t n;
    int64_t *order;
    int64_t *start;
} sisa_layout;

/* Positions 0..n) shuffled by `seed` and cut into equal shards and slices;
 * every slice gets at least one sample (n >= shards * slices). */
int sisa_layout_make(int64_t n, int shards, int slices, uint64_t seed, sisa_layout *l, char *err);
void sisa_layout_free(sisa_layout *l);

/* How a shard model is made and trained. */
typedef struct sisa_trainer {
    void *user;
    int64_t batch;              /* samples a step draws */
    int64_t epochs;             /* E, the recipe's epochs */
    /* fresh weights and optimiser state of shard `shard` */
    int (*init)(void *user, int shard, ts_store *model, ts_store *state, char *err);
    /* `steps` steps of the recipe on the positions set[0..n) (n >= 1), at
     * step `step` (1-based) of shard `shard` */
    int (*train)(void *user, int shard, int step, const int64_t *set, int64_t n, int64_t steps, ts_store *model,
                 ts_store *state, char *err);
} sisa_trainer;

/* Steps of training step j over a union of n samples: 2E/(R+1) epochs of
 * n / batch steps (rounded, at least one; 0 for an empty union). */
int64_t sisa_step_count(const sisa_trainer *t, int slices, int64_t n);

/* Train every shard (checkpoints DIR/shard<s>_slice<j>.safetensors, j =
 * 1..slices, model tensors under "model/" and state under "state/"); a
 * checkpoint already there is read back instead of being trained again. */
int sisa_train(const sisa_layout *l, const sisa_trainer *t, const char *dir, char *err);

typedef struct sisa_unlearned {
    int restart[SISA_MAX];      /* per shard: the checkpoint retraining started from (0: fresh weights), -1: kept */
    int retrained;              /* shards retrained */
    int64_t steps;              /* steps of all the retraining (the same when a resumed run did part of it) */
} sisa_unlearned;

/* Unlearn the positions with forget[pos] != 0: affected shards retrain from
 * DIR's checkpoints into OUT_DIR (same names; a checkpoint already there is
 * read back). */
int sisa_unlearn(const sisa_layout *l, const uint8_t *forget, const sisa_trainer *t, const char *dir,
                 const char *out_dir, sisa_unlearned *u, char *err);

/* ---- the ensemble as one store ------------------------------------------------------ */

/* The shard models in one store: shard s's tensors named "shard<s>/<name>",
 * and SISA_SHARDS_TENSOR (i32[1]) their count. Built from the last
 * checkpoints: OUT_DIR's for the shards `u` retrained, DIR's for the others
 * (u NULL: the ensemble before unlearning). */
#define SISA_SHARDS_TENSOR "sisa.shards"
int sisa_ensemble_load(const sisa_layout *l, const char *dir, const char *out_dir, const sisa_unlearned *u,
                       ts_store *ensemble, char *err);
/* The number of shard models in `m`; 0 for a single model. */
int sisa_ensemble_size(const ts_store *m);
/* Shard s's model (a copy) out of an ensemble store. */
int sisa_ensemble_member(const ts_store *ensemble, int s, ts_store *model, char *err);

/* ---- aggregation -------------------------------------------------------------------- */

/* From the members' logits (S blocks of rows x k, row-major), per row:
 *   out_logp[i][c] = log((1/S) sum_s softmax(logits_s[i])[c])   the ensemble's
 *                    log-probabilities (its prediction is their argmax);
 *   w[s][i]        = p_s(y_i) / sum_t p_t(y_i)                  (if w is not NULL)
 * The ensemble's loss is L = -log((1/S) sum_s p_s(y)), whose input gradient is
 * sum_s w_s grad(-log p_s(y)): the members' input gradients weighted by w.
 * Computed in double with log-sum-exp (no underflow to log 0). LETHE_ENOMEM
 * if its row buffer cannot be had. */
int sisa_aggregate(const float *logits, int S, int64_t rows, int k, const int32_t *y, double *out_logp, double *w);

#endif
