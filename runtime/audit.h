/* audit.h: `lethe audit`, an experiment's poison tests applied to a model
 * trained anywhere (audit.c), and `lethe poison --export`, the data a model
 * trained elsewhere needs.
 *
 *   lethe poison EXP --seed K --out OUT --export DATA.safetensors
 *       writes OUT/seed<K>/poison.json and the seed's training set exactly as
 *       Lethe trains on it (normalised, the poisons carrying their noise, in
 *       training-set order), its labels, sample ids and poison mask, and the
 *       test set: train.x, train.y, train.id, train.poison, test.x, test.y,
 *       with the experiment, seed, poison key and normalisation as metadata.
 *
 *   lethe audit EXP --model FILE.safetensors --poisons OUT/seed<K>
 *               [--name-map lethe|torchvision|kuangliu|hf-gpt2] [--record FILE]
 *       loads FILE into the experiment's model through the name map (hf.h;
 *       a refused file lists every missing, mis-shaped and extra tensor),
 *       checks that the poison set is this experiment's and seed's (the key
 *       poison.json holds, poison.h: poison_key), and evaluates the model as
 *       `lethe eval` does: accuracy, the Gaussian Unlearning Score against
 *       both nulls, TPR at FPR 0.01, the loss-threshold membership test.
 *
 * The verdict (Gaussian poisons): under the hypothesis that the model never
 * saw the noise, each poison's score I = <xi, g> / (eps |g|) is exactly
 * N(0, 1) (xi is independent of the gradient g at the clean input), so
 * z = sqrt(n) mean(I) is N(0, 1). Memorisation drives I negative: the
 * poisons are "detected" when the one-sided p = Phi(z) is below 0.01, the
 * operating point of the TPR figures. The record also gives z against the
 * empirical null (the same gradients scored with fresh noise) as a check of
 * that calibration. A targeted attack's verdict is its target: still
 * classified as the adversarial class or not, with that class's probability.
 * An attack that adds samples has no per-model verdict (its measure is the
 * accuracy it costs against a clean model): the audit reports the metrics.
 *
 * The record, JSON, goes to OUT/audits/<model file name>_seed<K>.json (or
 * --record), written atomically.
 */
#ifndef LETHE_AUDIT_H
#define LETHE_AUDIT_H

#include "run.h"

typedef struct audit_opts {
    const char *model;          /* the model file */
    const char *name_map;       /* NULL: lethe */
    const char *poisons;        /* the seed folder; NULL: OUT/seed<seed> */
    int seed;                   /* -1: the folder's */
    const char *record;         /* NULL: OUT/audits/<model>_seed<K>.json */
} audit_opts;

/* o->out is the output folder holding seed<K>/ (ignored with a->poisons). */
int audit_run(const lethe_prog *prog, exp_plan *plan, run_opts *o, const audit_opts *a, char *err);

struct Run;
/* The seed's data as the run trains on it (see above), atomically. */
int audit_export_data(struct Run *r, const char *path, char *err);

#endif
