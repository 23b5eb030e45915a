/* hypotheses.h: `lethe hypotheses FILE.lth`, the paper's hypotheses H1 and
 * H2 on linear models over features (Pawelczyk et al. 2025, section 6 and
 * appendix C; graphs/experiments/hypotheses.lth, docs/attacks.md).
 *
 * The science is in the .lth file; the runner knows three roles per setting
 * S (an export name prefix): S_fit (one full-batch step of an optimiser on a
 * weighted, regularised, strictly convex loss, reporting loss and grad_norm
 * at the parameters it starts from; weight 0 removes a sample; its state,
 * if any, is at rest when zero, and a step from rest is plain gradient
 * descent with step lr), S_target (the corrupted model the poisons aim
 * at, a rule with state, run from the clean fit) and S_cancel (an objective
 * over the added points `xp`, state `clean_grad` from init_state). For each
 * setting, poison-set size and seed (an initialisation of the poisons and of
 * the random subsets) it measures
 *
 *   shift_poison  ||theta(clean + poisons) - theta(clean)||: unlearning the poisons
 *   shift_random  ||theta(clean) - theta(clean - R)||, R as many random clean samples
 *                 (for regression, from the rows of the first label vector,
 *                 as appendix C.2 draws them)
 *   cos_poison    cosine between one gradient-descent step on the retain set
 *                 at theta(clean + poisons) and the shift to theta(clean)
 *   cos_random    the same for R, at theta(clean)
 *   random_equal_k, shift_random_equal, cos_random_equal: R grown (doubling)
 *                 until its shift reaches shift_poison, as appendix C.2 equates
 *                 the two shifts
 *
 * and writes one JSON line per case to OUT/hypotheses.jsonl (atomically, the
 * whole file); `lethe report OUT` draws them (report_hypotheses).
 *
 * The features come from one of two sources, chosen by the file:
 *
 *   synthetic (a file without an experiment), drawn from the data seed with
 *     Philox: a classification setting (integer labels) gets Gaussian classes
 *     whose means and spread live in the first half of the features (the rest
 *     is small noise); a regression setting (real labels) gets appendix C.2's
 *     recipe: labels from two orthogonal unit vectors in the informative
 *     half, one for each half of the samples, plus noise 0.1;
 *   a trained network's penultimate features (a file with an experiment and
 *     an export `features`; hypotheses_features.c): the experiment's model is
 *     trained by the runner's train stage (or read from --features-from), the
 *     export runs over the first training samples, each feature is
 *     standardised over them; classification fits the samples' classes,
 *     regression the C.2 labels of the two unit vectors over all features.
 */
#ifndef LETHE_HYPOTHESES_H
#define LETHE_HYPOTHESES_H

#include <limits.h>
#include <stdint.h>

#include "lethe.h"

enum { HYP_MAX_SIZES = 16 };

typedef struct hyp_opts {
    const char *out;              /* folder of hypotheses.jsonl */
    int seeds;                    /* initialisations (default 5) */
    int nsizes;                   /* 0: P/4, P/2, 3P/4, P of the export's P */
    int sizes[HYP_MAX_SIZES];
    int fit_iters;                /* most gradient steps per fit (default 20000) */
    double fit_tol;               /* a fit stops when grad_norm is below it (default 1e-5) */
    int cancel_steps;             /* Gradient Canceling steps (default 500) */
    int target_steps;             /* steps of S_target (default 20) */
    double target_eps;            /* > 0: overrides S_target's eps */
    uint64_t data_seed;           /* the synthetic features, or the network's seed and the C.2 labels (default 0) */
    const char *features_from;    /* a checkpoint of the experiment's model: no training */
    const char *data_dir;         /* where the experiment's data set files are (NULL: the default) */
    int threads;                  /* worker threads (0: all cores) */
    int quiet;
} hyp_opts;

void hyp_opts_default(hyp_opts *o);

/* One setting: its entries, sizes and data (clean rows, then P poison rows). */
typedef struct hyp_setting {
    char name[64];
    const lethe_entry *fit, *fit_init, *target, *target_state, *cancel, *cancel_state;
    int64_t n, p, d, outputs;
    int regression;               /* labels are f32 */
    float *x;                     /* (n + p) x d */
    int32_t *y_class;             /* n + p, classification */
    float *y_real;                /* n + p, regression */
} hyp_setting;

/* Finds S_fit, S_target, S_cancel (and their init entries) and checks that
 * their shapes agree; allocates the data (not drawn yet). */
int hyp_setting_open(const lethe_program *p, const char *name, hyp_setting *s, char *err);
void hyp_setting_free(hyp_setting *s);
/* Draws the clean rows from the seed (see above); the poison rows are zero. */
void hyp_make_data(hyp_setting *s, uint64_t seed);
/* Regression labels of the clean rows as appendix C.2 makes them: two
 * orthogonal unit vectors drawn from the seed over the first `informative`
 * features, the first for the first half of the rows, plus noise 0.1. */
void hyp_regression_labels(hyp_setting *s, uint64_t seed, int64_t informative);

/* A trained network's penultimate features (hypotheses_features.c). */
typedef struct hyp_features {
    int64_t n, d;                 /* rows (the first training samples) and features */
    float *x;                     /* n x d, each feature standardised over the rows */
    int32_t *y;                   /* n classes */
    int classes;
    char checkpoint[PATH_MAX];    /* the network's */
    char experiment[128];
    double test_accuracy;         /* the network's on the experiment's test set */
} hyp_features;

/* For a program with an experiment and an export `features` (a fn of the
 * model and x [eval_batch, C, H, W] to [eval_batch, D]): the model from
 * o->features_from, or trained by the train stage of seed o->data_seed into
 * o->out/seed<K>/original.safetensors (read back when there), its features of
 * the experiment's training samples and its test accuracy. */
int hyp_features_compute(const lethe_prog *prog, const hyp_opts *o, hyp_features *f, char *err);
void hyp_features_free(hyp_features *f);
/* The setting's clean rows from the features: the first n rows; labels the
 * classes (classification) or C.2's (regression, from seed). */
int hyp_use_features(hyp_setting *s, const hyp_features *f, uint64_t seed, char *err);

/* theta minimising S_fit's loss with sample weights w (n + p of them): from
 * S_fit.init_model, steps with the .lth's lr; when the loss rises the step
 * is undone and the optimiser's state zeroed (a restart), and lr halved if
 * the step was one from rest; until grad_norm < tol or max_iters. model
 * receives the params; *iters (may be NULL) the steps taken. */
int hyp_fit(const hyp_setting *s, lethe_ctx *ctx, const float *w, int max_iters, double tol, ts_store *model,
            int *iters, char *err);
/* One gradient step (lr 1) of S_fit at theta with weights w: the update
 * direction u = step(theta) - theta, returned as the cosine with `shift`
 * (a model store of the same tensors: the wanted change of theta). */
int hyp_update_cosine(const hyp_setting *s, lethe_ctx *ctx, const float *w, const ts_store *theta,
                      const ts_store *shift_to, double *cosine, char *err);

/* The random clean rows of case `seed` in the order a case takes them
 * (perm, room for s->n): the rows of the first label vector (the first half,
 * hyp_regression_labels) for a regression setting, as appendix C.2 draws
 * them, so that removing them moves the fit along one labeling; every clean
 * row otherwise. Returns how many rows perm holds. */
int64_t hyp_random_rows(const hyp_setting *s, int seed, int64_t *perm);

/* Everything measured for one (setting, poison-set size, seed). */
typedef struct hyp_result {
    int n_poison, seed;
    double cancel_loss_start, cancel_loss, target_distance, full_to_target;
    double shift_poison, shift_random, cos_poison, cos_random;
    int random_equal_k;
    double shift_random_equal, cos_random_equal;
    int fit_iters_max;
} hyp_result;

/* The case; clean is theta(clean), fitted once per setting by the caller. */
int hyp_case(hyp_setting *s, lethe_ctx *ctx, const hyp_opts *o, const ts_store *clean, int n_poison, int seed,
             hyp_result *r, char *err);

/* Every setting's exports and poison-set sizes (and, given features, that
 * they fit its rows); an error if there is none. */
int hyp_check_settings(const lethe_program *p, const hyp_opts *o, const hyp_features *features, char *err);
/* All settings the program has (every S with S_fit, S_target, S_cancel), on
 * the network's features, or synthetic ones when features is NULL. */
int hypotheses_run(const lethe_program *p, lethe_ctx *ctx, const hyp_opts *o, const hyp_features *features,
                   char *err);
/* `lethe hypotheses FILE.lth [--out DIR] [--seeds N] [--sizes a,b,..] ...` */
int hypotheses_command(int argc, char **argv);

/* report_hypotheses.c: DIR/hypotheses.jsonl as DIR/hypotheses.md (mean +-
 * std over seeds per setting and size) and, with plots, DIR/plots/h1_shift
 * and h2_cosine (.png and .svg: the paper's Figures 4 and 5). */
int report_hypotheses(const char *dir, int plots, char *err);
/* report.c: runs `gnuplot plots.gp` inside dir (output in dir/gnuplot.log);
 * the exit status, 127 when gnuplot is missing. */
int report_gnuplot(const char *dir);

#endif
