/* run_internal.h: what the run's stages share (run.c: data and stages,
 * run_steps.c: data streams and calling entries, run_eval.c: evaluation and
 * records). Private to the runtime's run*.c files. */
#ifndef LETHE_RUN_INTERNAL_H
#define LETHE_RUN_INTERNAL_H

#include <limits.h>
#include <stdint.h>

#include "data.h"
#include "metrics.h"
#include "poison.h"
#include "run.h"
#include "threadpool.h"

#define RUN_ALPHA 0.01   /* the operating point: TPR at FPR 1% */
#define POISON_SALT 0x9015011u
#define METHOD_SALT 0x3e7d0d5u
#define REINIT_SALT 0x5e1d1417u
#define SURROGATE_SALT 0x5a2202u

typedef struct Run {
    const lethe_prog *prog;
    const exp_plan *plan;
    const run_opts *o;
    lethe_pool *pool;
    lethe_ctx ctx;
    lethe_dataset train, test;
    char data_hash[65];
    int synthetic_stand_in;
    ds_norm norm;               /* the training set's normalisation (an attack's box and pixel scale) */
    int image;                  /* values were pixels in [0, 1] before normalising */
    float *clean_x;             /* an attack edits or extends train: the clean values, restored per seed */
    int64_t clean_n;
    attack_choice choice;       /* an attack's target, class and poisons for this seed */
    double clean_accuracy;      /* an attack that adds samples: the clean model's test accuracy this seed */
    int64_t epochs;
    /* per seed */
    uint64_t seed;
    int64_t *all, *poison, *retain;
    int64_t n_all, n_poison, n_retain;
    uint8_t *mask;
    int64_t mask_n;
    const int64_t *training;    /* while training: every data stream draws from this set */
    uint64_t steps_done;        /* steps of this model's stage: the RNG counter of the next call */
    int64_t n_training;
    char dir[PATH_MAX], seed_dir[PATH_MAX + 32];
} Run;

/* The runtime scalar the runtime fills with a rule's step count (run_steps). */
#define TOTAL_STEPS_ARG "total_steps"

static inline ds_poison run_poison_of(const Run *r) {
    ds_poison p = {.eps = r->n_poison ? r->plan->poison_eps : 0, .seed = r->seed, .mask = r->mask, .mask_n = r->mask_n};
    return p;
}

/* The program's entry `name`, or a message that it is missing. */
const lethe_entry *run_entry(const Run *r, const char *name, char *err);

/* ---- run_steps.c: calling entries ----------------------------------------- */
int run_steps(Run *r, const lethe_entry *e, const plan_rule *rule, ts_store *model, const ts_store *orig,
              ts_store *state, int64_t steps, uint32_t epoch0, int64_t *budget, uint32_t salt, const char *label,
              double *last_loss, char *err);
int run_init_model(Run *r, ts_store *model, uint64_t seed, char *err);
int run_call_init(Run *r, const char *name, ts_store *model, ts_store *into, char *err);
int run_train_on(Run *r, const int64_t *set, int64_t n, ts_store *model, const char *label, double *loss, char *err);

/* ---- run_eval.c: evaluation and records ---------------------------------------- */
typedef struct Eval {
    double accuracy, test_loss;
    mt_summary gus, gus_null;
    mt_tpr two_emp, two_norm, neg_emp, neg_norm, mia;
    double auc;
    int nroc;
    double roc_fpr[64], roc_tpr[64];   /* against the empirical null (fresh noise) */
    double roc_tpr_normal[64];         /* against N(0, 1): threshold Phi^-1(1 - fpr) */
    int target_pred;                   /* an attack's target: the predicted class */
    double target_adv_prob;            /* and the softmax probability of the adversarial class */
} Eval;

typedef struct Used {
    int64_t steps, samples;
    double budget_used, seconds, final_loss, shift;
} Used;

int run_evaluate(Run *r, ts_store *model, Eval *ev, char *err);
/* "full" for budget < 0, else b<percent> (record and model file names). */
const char *run_budget_tag(double b, char *buf, size_t n);
int run_write_record(Run *r, const char *method, double budget, const Eval *ev, const Used *u, char *err);
/* results.jsonl: every record of the folder, one per line, in name order. */
int run_write_results(const char *dir, char *err);

#endif
