/* run_internal.h: what the run's stages share (run.c: data and stages,
 * run_steps.c: data streams and calling entries, run_eval.c: evaluation and
 * records). Private to the runtime's run*.c files. */
#ifndef LETHE_RUN_INTERNAL_H
#define LETHE_RUN_INTERNAL_H

#include <limits.h>
#include <stdint.h>

#include "data.h"
#include "json.h"
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
    double *lira_phi;           /* LiRA: the shadows' phi of lira_seed's examples (run_lira.c) */
    uint64_t lira_seed;
    struct TextMiaSeed *text_mia;   /* text scores: what one seed's evaluations share (run_text_mia.c) */
    struct TextPrompts *text_prompts;   /* poison = trigger_flip(...): the reviews and clean prompts (run_text_trigger.c) */
} Run;

/* The runtime scalar the runtime fills with a rule's step count (run_steps). */
#define TOTAL_STEPS_ARG "total_steps"

static inline ds_poison run_poison_of(const Run *r) {
    ds_poison p = {.eps = r->n_poison ? r->plan->poison_eps : 0, .seed = r->seed, .mask = r->mask, .mask_n = r->mask_n};
    return p;
}

/* Opens the run (output folder, data) and sets up seed `seed`: its folder,
 * its poison set (an attack's crafted or read back). Close it with
 * run_close, also after a failure. */
int run_open_seed(Run *r, const lethe_prog *prog, exp_plan *plan, const run_opts *o, int seed, char *err);
void run_close(Run *r);

/* The program's entry `name`, or a message that it is missing. */
const lethe_entry *run_entry(const Run *r, const char *name, char *err);

/* ---- run_steps.c: calling entries ----------------------------------------- */
int run_steps(Run *r, const lethe_entry *e, const plan_rule *rule, ts_store *model, const ts_store *orig,
              ts_store *state, int64_t steps, uint32_t epoch0, int64_t *budget, uint32_t salt, const char *label,
              double *last_loss, char *err);
int run_init_model(Run *r, ts_store *model, uint64_t seed, char *err);
int run_call_init(Run *r, const char *name, ts_store *model, ts_store *into, char *err);
int run_train_on(Run *r, const int64_t *set, int64_t n, ts_store *model, const char *label, double *loss, char *err);
/* run_pretrained.c: lethe run --init FILE: a trained model's start from an HF-layout checkpoint (no-op without it) */
int run_pretrained(Run *r, ts_store *model, char *err);

/* ---- run_eval.c: evaluation and records ---------------------------------------- */
/* One text membership score of a model (run_text_mia.c). */
enum { TEXT_MIA_SCORES = 5 };   /* loss, zlib, min_k, min_kpp, reference */
typedef struct TextMia {
    mt_tpr tpr;                 /* at FPR 0.01 */
    double auc;
    int nroc;
    double roc_fpr[64], roc_tpr[64];
} TextMia;

typedef struct Eval {
    double accuracy, test_loss;
    mt_summary gus, gus_null;
    mt_tpr two_emp, two_norm, neg_emp, neg_norm, mia;
    double auc;
    int nroc;
    double roc_fpr[64], roc_tpr[64];   /* against the empirical null (fresh noise) */
    double roc_tpr_normal[64];         /* against N(0, 1): threshold Phi^-1(1 - fpr) */
    int has_lira;                      /* the offline LiRA test (run_lira.c) */
    mt_tpr lira_01, lira_001;          /* TPR at FPR 0.01 and 0.001 */
    double lira_auc;
    int64_t lira_unscored;
    int nlira_roc;
    double lira_roc_fpr[64], lira_roc_tpr[64];
    int has_text_mia;                  /* the text scores (run_text_mia.c) */
    int64_t text_mia_members, text_mia_non_members;
    TextMia text_mia[TEXT_MIA_SCORES];
    int target_pred;                   /* an attack's target: the predicted class */
    double target_adv_prob;            /* and the softmax probability of the adversarial class */
    int has_trigger;                   /* trigger_flip (run_text_trigger.c): */
    double trigger_success;            /* targets whose next token is the adversarial label's */
    double trigger_adv_label;          /* targets for which the adversarial label word beats the true one */
    double label_accuracy;             /* test prompts whose true label word beats the other */
    double clean_label_accuracy;       /* the same over the test prompts without the trigger */
} Eval;

typedef struct Used {
    int64_t steps, samples;
    double budget_used, seconds, final_loss, shift;
} Used;

int run_evaluate(Run *r, ts_store *model, Eval *ev, char *err);
/* What an evaluation pass hands each batch's output to: rows of `out` (and
 * their labels) for samples start..start+rows of the pass. */
typedef void (*run_take_fn)(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows);
/* Run fn entry `name` over samples pos[0..n) of `ds` in batches of the eval
 * batch size (the last one padded; noisy: with the poison noise), handing
 * each batch's output to `take`. */
int run_eval_over(Run *r, const char *name, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                  int noisy, run_take_fn take, void *user, char *err);
/* A run_take_fn for per-sample losses: out[i] into ((double *)user)[start + i]. */
void run_take_losses(void *user, const float *out, const int32_t *y, const float *x, int64_t start, int64_t rows);
/* The share of ds's samples at pos[0..n) the model classifies right ("eval.logits"; NaN for n = 0). */
int run_accuracy(Run *r, ts_store *model, const lethe_dataset *ds, const int64_t *pos, int64_t n, double *accuracy,
                 char *err);
/* A ROC kept at 41 log-spaced false positive rates 1e-3 .. 1: for each, the
 * best TPR at a FPR not above it. Returns the count. */
int run_roc_sample(const mt_roc_point *pts, int64_t npts, double *fpr, double *tpr);
/* ---- run_lira.c: the offline LiRA test, when the experiment asks for it ---- */
int run_lira(Run *r, ts_store *model, Eval *ev, char *err);
/* ---- run_text_mia.c: the text membership scores, when the experiment asks ---- */
int run_text_mia(Run *r, ts_store *model, Eval *ev, char *err);
/* The record's text_mia block. */
void run_put_text_mia(jw *w, const Run *r, const Eval *ev);
/* Frees the per-seed scratch (free_seed, run.c). */
void run_text_mia_free(Run *r);
/* "full" for budget < 0, else b<percent> (record and model file names). */
const char *run_budget_tag(double b, char *buf, size_t n);
/* A TPR object {tpr, fpr, threshold}, and the detection block of a record:
 * tpr_at_fpr (both sides, both nulls), loss_mia and the AUC. */
void run_put_tpr(jw *w, const char *key, const mt_tpr *t);
void run_put_detection(jw *w, const Eval *ev);
int run_write_record(Run *r, const char *method, double budget, const Eval *ev, const Used *u, char *err);
/* results.jsonl: every record of the folder, one per line, in name order. */
int run_write_results(const char *dir, char *err);

/* ---- sisa_run.c: SISA exact unlearning (sisa.h) ------------------------------------ */
/* Train the shard models (or read their checkpoints), unlearn the forget set,
 * and leave the unlearned ensemble in `ensemble`; u gets its compute. */
int sisa_method_run(Run *r, const plan_method *pm, ts_store *ensemble, Used *u, char *err);
/* run_eval.c's pass over an ensemble store: the aggregate's logits, loss or
 * input gradient, handed to `take` in one call. */
int sisa_eval_over(Run *r, const char *name, const ts_store *ensemble, const lethe_dataset *ds, const int64_t *pos, int64_t n,
                   int noisy, run_take_fn take, void *user, char *err);

#endif
