/* poison.h: the poison stage of an attack objective (poison.c).
 *
 * The experiment names an objective (graphs/attacks/): lethec compiles it as
 * the entry `poison.step` with its `poison.step.init_state`, and the plan
 * carries the stage's schedule (run.h: plan_attack). The stage is generic: it
 * knows the parameter names it feeds (docs/attacks.md), never an attack.
 *
 *   attack_choose   the target test sample, the adversarial class and the
 *                   poison samples (from that class), from the seed; bad
 *                   budgets and targets are refused before any work
 *   attack_craft    restarts x poison batches x steps of the objective from
 *                   a surrogate model; the restart with the lowest final
 *                   loss wins. Each finished batch is saved, so a killed run
 *                   resumes at the last batch boundary.
 *   attack_save / attack_load   SEED/poison.safetensors: the edits with their
 *                   sample ids (and the target, the class, the loss)
 *   poison_key      the identity of a seed's poison set, stored in
 *                   poison.json and poison.safetensors and checked on reading
 */
#ifndef LETHE_POISON_H
#define LETHE_POISON_H

#include "data.h"
#include "lethe.h"
#include "run.h"

typedef struct attack_choice {
    int64_t target;           /* index in the test set */
    int target_class, adv;    /* the target's true class, the class the attack wants */
    int64_t *pos;             /* poison positions in the training set (malloc'd) */
    int64_t n;
} attack_choice;

int attack_choose(const plan_attack *a, const lethe_dataset *train, const lethe_dataset *test, uint64_t seed,
                  attack_choice *out, char *err);

typedef struct attack_job {
    const lethe_prog *prog;
    const plan_attack *attack;
    lethe_ctx *ctx;
    const lethe_dataset *train, *test;  /* normalised and clean */
    const attack_choice *choice;
    const ds_norm *norm;                /* for the image box and the pixel scale */
    int image;                          /* 1: values were pixels in [0, 1] before normalising (there is a box) */
    ts_store *surrogate;                /* the clean model the poisons are crafted against */
    uint64_t seed;
    const char *dir;                    /* the seed's folder: progress files and the result */
    const char *key;                    /* poison_key of this experiment and seed */
    int quiet;
} attack_job;

/* delta: choice->n x d edits, added to the poison samples' inputs. */
int attack_craft(const attack_job *j, float *delta, double *loss, char *err);

/* SHA-256 (hex) of the experiment's descriptor (less its "file", the path
 * it was compiled from), the seed and the hash of the training data the
 * poisons index (ds_hash, after any slice): a poison set read back under
 * another experiment, seed or data is refused. */
void poison_key(const exp_plan *plan, uint64_t seed, const char *data_hash, char key[65]);

int attack_save(const attack_job *j, const float *delta, double loss, const char *path, char *err);
/* Reads a saved result back, checking that it is this seed's poison set: its
 * key (a file without one, from an older lethe, gets a note) and its ids. */
int attack_load(const attack_job *j, float *delta, double *loss, const char *path, char *err);

#endif
