/* run.h: the experiment plan and its execution (plan.c; run.c, run_steps.c,
 * run_eval.c; report.c).
 *
 * A plan is the JSON descriptor lethec stores in a compiled experiment
 * (compiler/sema_experiment.c writes it); run.c executes it stage by stage,
 * writing every artifact atomically under the output folder so that a killed
 * run resumes without redoing finished work:
 *
 *   OUT/seed<k>/clean.safetensors        an attack's clean surrogate (poison.c)
 *   OUT/seed<k>/poison.safetensors       an attack's poisons: edits or added samples, with their ids
 *   OUT/seed<k>/original.safetensors     the poisoned, trained model
 *   OUT/seed<k>/retrain.safetensors      trained from scratch on the retain set
 *   OUT/seed<k>/<method>_b<pct>.safetensors  each unlearned model
 *   OUT/records/<method>_b<pct>_seed<k>.json  one record per (method, budget, seed)
 *   OUT/results.jsonl                    all records, rebuilt after each one
 *   OUT/audits/<model>_seed<k>.json      lethe audit's records of models trained elsewhere (audit.c)
 */
#ifndef LETHE_RUN_H
#define LETHE_RUN_H

#include <stdint.h>

#include "lethe.h"

enum { PLAN_MAX_ARGS = 16, PLAN_MAX_STREAMS = 4, PLAN_MAX_METHODS = 16, PLAN_MAX_BUDGETS = 8 };

typedef struct plan_rule {
    char rule[64];
    char entry[96];
    int nargs;
    char arg_name[PLAN_MAX_ARGS][48];
    double arg_value[PLAN_MAX_ARGS];      /* runtime hyperparameters given in the experiment */
    int nconsts;
    char const_name[PLAN_MAX_ARGS][48];
    double const_value[PLAN_MAX_ARGS];    /* compile-time ints (k, reinit, ...) */
    int nstreams;
    char streams[PLAN_MAX_STREAMS][48];   /* data parameters: retain, forget, or the whole set */
    int nmodels;
    char model_binding[PLAN_MAX_STREAMS][48];
    int model_original[PLAN_MAX_STREAMS]; /* 1: a frozen model, bound to the original model */
} plan_rule;

enum { SCHED_REPEAT, SCHED_MAX_MIN, SCHED_FISHER };

typedef struct plan_method {
    char name[64];
    int retrain;                          /* repeat the training recipe on the retain set */
    int schedule;                         /* SCHED_*: how the phases run (docs/unlearning.md) */
    int nphases;
    plan_rule phase[3];
    double msteps;                        /* max_min: epochs with a max pass */
    int sisa;                             /* SISA exact unlearning with the training recipe (sisa.h) */
    int sisa_shards, sisa_slices;
} plan_method;

/* An attack objective run by the poison stage (docs/attacks.md): the
 * objective's step entry and the stage's schedule. */
enum { ATTACK_LR_MULTISTEP, ATTACK_LR_COSINE, ATTACK_LR_CONSTANT };

typedef struct plan_attack {
    char name[64];                        /* the objective (witches_brew) */
    plan_rule step;                       /* entry poison.step; its state from poison.step.init_state */
    char over[48];                        /* the tensor it optimises: one edit per poison sample */
    int64_t restarts, steps, batch;       /* restarts keep the lowest final loss; steps per poison batch */
    int64_t target, adv;                  /* test index and adversarial class; -1: drawn per seed */
    double budget;                        /* poisons as a share of the training set */
    int schedule;                         /* ATTACK_LR_*: how `lr` decays over a batch's steps */
    int added;                            /* 1: the optimised tensor is added samples (started from copies of
                                             the chosen ones), 0: edits added to the chosen samples */
    int has_surrogate;                    /* craft against the clean model after one pass of this rule */
    plan_rule surrogate;
} plan_attack;

typedef struct exp_plan {
    char name[128];
    char file[512];
    char data[32];                        /* fashion_mnist, mnist, cifar10, synthetic */
    int c, h, w, classes;
    int64_t synth_n, synth_n_test;
    int64_t limit_train, limit_test;      /* fashion_mnist(n = 10000): use the first n samples (0: all) */
    double synth_sep;
    int64_t batch, eval_batch, epochs;
    int64_t world;                        /* lethec --world=N: rule steps split each batch over N ranks */
    plan_rule train;
    int nmethods;
    plan_method methods[PLAN_MAX_METHODS];
    int nbudgets;
    double budgets[PLAN_MAX_BUDGETS];
    double poison_fraction, poison_eps;   /* gaussian(fraction, eps); fraction 0 = none */
    int has_attack;                       /* the poison is an attack objective, not gaussian */
    int has_trigger;                      /* the poison is trigger_flip(word, fraction) (run_text_trigger.c) */
    char trigger[64];                     /* its word */
    double trigger_fraction;              /* the share of the trigger reviews flipped, (0, 1] */
    int trigger_to;                       /* -1: each gets the other label; 0 / 1: those of the other label get this one */
    plan_attack attack;
    int seeds;
    int crop_pad, flip;
    int lira_shadows;                     /* evaluate = [.., lira(shadows = N)]: N shadow models, 0: no LiRA */
    double text_mia_k;                    /* evaluate = [.., text_mia(k = K)]: Min-K%'s share K, 0: no text scores */
    char *json;                           /* the descriptor itself (malloc'd) */
} exp_plan;

int plan_parse(const char *json, exp_plan *p, char *err);
void plan_free(exp_plan *p);

typedef struct run_opts {
    const char *out;            /* output folder */
    int seeds;                  /* 0: the plan's */
    int seed_base;              /* seed k runs with seed_base + k */
    int64_t train_limit;        /* 0: all training samples, else the first n */
    int64_t test_limit;
    int64_t epochs;             /* 0: the plan's */
    const char *methods;        /* comma list to run, NULL: all */
    const char *data_dir;       /* where the data set files are (NULL: the default) */
    const char *init;           /* --init FILE: trained models start from this HF-layout checkpoint (run_pretrained.c) */
    int threads;                /* 0: all cores */
    int quiet;
    int synthetic_fallback;     /* a missing data set becomes a synthetic one (with a note) */
    int stop_after;             /* tests: exit(3) after this many new records (0: never) */
    lethe_device *device;       /* NULL: the CPU; else the device the program runs on */
    const char *export_data;    /* lethe poison --export FILE: the seed's data as it trains (audit.c) */
} run_opts;

/* lethe run: every seed, the original model, every method and budget. */
int run_experiment(const lethe_prog *prog, exp_plan *plan, const run_opts *o, char *err);
/* lethe train / unlearn / eval: one stage of one seed (see main.c). */
/* 1 if `name` is in the comma list `methods` (NULL: every method is). */
int run_method_listed(const char *methods, const char *name);
int run_stage(const lethe_prog *prog, exp_plan *plan, const run_opts *o, const char *stage, const char *method,
              double budget, int seed, const char *model_path, char *err);

/* report.c: the table (mean ± std over seeds) and the plots of a run folder. */
int report_run(const char *dir, int plots, char *err);

#endif
