/* test_unlearn_lm.c: the language-model unlearning rules
 * (graphs/unlearn/grad_diff.lth, npo.lth, simnpo.lth, rmu.lth), compiled by
 * lethec from tests/lth/unlearn_lm.lth and called through the ABI as the
 * runtime calls them. A 3-layer GPT-2 is fitted by adamw_lm to one forget
 * batch and two retain batches of random token sequences (right padding);
 * then a few steps of each method, from the fitted model with the fitted
 * model as the frozen original, must move it the way the method means to:
 *
 *   grad_diff, npo_rt, simnpo  forget NLL up, retain NLL within a bound
 *   npo                        forget NLL up; the first step's loss is
 *                              (2 / beta) log 2 (the model is its reference)
 *   rmu                        the forget activations of block 1 approach
 *                              c u, forget NLL up, retain NLL within a
 *                              bound, the state u a unit vector in the
 *                              positive orthant, and only the MLP down
 *                              projections of blocks 0 and 1 move
 *
 * Forget and retain sequences are drawn from disjoint halves of the
 * vocabulary (two "topics"). The learning rates are the tiny model's (the
 * rules' defaults are those of the papers' large models).
 *
 * The same checks run on the rules' answer forms (graphs/unlearn/lm_answer.lth,
 * what the targeted text experiment runs): a prompt LM of the same size fitted
 * by adamw to prompts of the same tokens whose last real token is the answer,
 * the NLL being the answer's.
 *
 * The helpers sequence_logp and softplus are checked against values computed
 * here in double precision. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "threadpool.h"


enum { B = 4, T = 16, VOCAB = 64, C = 32, FIT_STEPS = 240, UNLEARN_STEPS = 10, RMU_STEPS = 60 };

enum { PAD = VOCAB - 1 };   /* the prompt LM's padding id (no sequence draws it) */

/* 0: the forget batch, 1 and 2: the retain batches; as token sequences with
 * their masks, and as prompts (the ids as floats, padded with PAD) whose
 * answer is the last real token */
static int32_t g_tokens[3][B * T];
static float g_mask[3][B * T];
static float g_prompt[3][B * T];
static int32_t g_answer[3][B];
static lethe_ctx g_ctx;

/* One data form of the rules: its entries, the tag of its test names and
 * the prefix of the GPT-2's parameter paths in its model. */
typedef struct Form {
    const char *tag, *fit, *nll, *npo, *rmu, *path_prefix;
    double rmu_steer, rmu_rise;   /* RMU: the largest final/first activation distance, the least forget NLL rise */
    struct {
        const char *entry, *name;
        float lr;
    } methods[3];
} Form;
static const Form *g_form;

/* "<tag>.<suffix>": a test name of the current form (a few live at once) */
static const char *tname(const char *suffix) {
    static char buf[4][128];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s.%s", g_form->tag, suffix);
    return b;
}

/* Call a step as the runtime does: a fresh Philox counter per call. */
static void step(th_frame *f) {
    g_ctx.counter++;
    th_call(f, &g_ctx);
}

static void make_batches(void) {
    static const int lengths[3][B] = {{16, 14, 12, 10}, {16, 15, 11, 9}, {16, 13, 12, 8}};
    for (int k = 0; k < 3; k++) {
        /* forget and retain text share no tokens (two "topics"), so a method
         * can tell them apart by their content, as RMU's forget topic */
        th_fill(g_tokens[k], LETHE_I32, B * T, k == 0 ? 0 : VOCAB / 2, k == 0 ? VOCAB / 2 : PAD, 101 + (uint64_t)k);
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                g_mask[k][b * T + t] = t < lengths[k][b] ? 1.0f : 0.0f;
                g_prompt[k][b * T + t] = t < lengths[k][b] ? (float)g_tokens[k][b * T + t] : (float)PAD;
            }
            g_answer[k][b] = g_tokens[k][b * T + lengths[k][b] - 1];
        }
    }
}

/* batch k into a data binding: prompts (an f32 x) and their answers (if the
 * entry reads y), else token sequences and their mask */
static void set_batch(th_frame *f, const char *binding, int k) {
    char x[64], other[64];
    snprintf(x, sizeof x, "%s.x", binding);
    snprintf(other, sizeof other, "%s.y", binding);
    if (f->entry->args[th_arg(f->entry, x)].dtype == LETHE_F32) {
        memcpy(th_f32(f, x), g_prompt[k], sizeof g_prompt[k]);
        if (th_arg(f->entry, other) >= 0)
            memcpy(th_i32(f, other), g_answer[k], sizeof g_answer[k]);
        return;
    }
    snprintf(other, sizeof other, "%s.mask", binding);
    memcpy(th_i32(f, x), g_tokens[k], sizeof g_tokens[k]);
    memcpy(th_f32(f, other), g_mask[k], sizeof g_mask[k]);
}

/* A step frame of `entry` holding the model of `src`, its state set by its
 * init_state entry as the runtime does; NULL if an entry is missing. */
static th_frame *method_frame(const lethe_program *p, const char *entry, const th_frame *src) {
    char init_name[128];
    snprintf(init_name, sizeof init_name, "%s.init_state", entry);
    const lethe_entry *e = th_entry(p, entry), *ei = th_entry(p, init_name);
    if (!e || !ei)
        return NULL;
    th_frame *f = th_frame_new(e), *fi = th_frame_new(ei);
    th_copy_model(f, src, "m");
    th_copy_model(fi, src, "m");
    step(fi);
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        int j = th_arg(ei, a->name);
        if (a->kind == LETHE_STATE && j >= 0)
            memcpy(f->args[i], fi->args[j], (size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
    }
    th_frame_free(fi);
    return f;
}

/* The eval-mode loss of the model in `model` on batch k: the LM loss of the
 * sequences (probe "nll"), or the answers' NLL (probe "anll"). */
static double batch_nll(th_frame *probe, const th_frame *model, int k) {
    th_copy_model(probe, model, "m");
    if (th_arg(probe->entry, "y") >= 0) {
        memcpy(th_f32(probe, "x"), g_prompt[k], sizeof g_prompt[k]);
        memcpy(th_i32(probe, "y"), g_answer[k], sizeof g_answer[k]);
        th_call(probe, &g_ctx);
        return *th_f32(probe, "out");
    }
    memcpy(th_i32(probe, "idx"), g_tokens[k], sizeof g_tokens[k]);
    memcpy(th_f32(probe, "mask"), g_mask[k], sizeof g_mask[k]);
    th_call(probe, &g_ctx);
    return *th_f32(probe, "out.0");
}

typedef struct Nll {
    double forget, retain;
} Nll;

static Nll nll_of(th_frame *probe, const th_frame *model) {
    return (Nll){batch_nll(probe, model, 0), 0.5 * (batch_nll(probe, model, 1) + batch_nll(probe, model, 2))};
}

/* Run `steps` steps of a method that reads a forget batch and (when it has
 * one) a retain batch, alternating the two retain batches. */
static void run_method(th_frame *f, int steps) {
    bool has_retain = th_arg(f->entry, "retain.x") >= 0;
    for (int s = 0; s < steps; s++) {
        set_batch(f, "forget", 0);
        if (has_retain)
            set_batch(f, "retain", 1 + s % 2);
        step(f);
    }
}

/* forget NLL up by at least min_rise; retain NLL (when bounded) up by at most max_retain_rise */
static void check_direction(const char *name, Nll before, Nll after, double min_rise, double max_retain_rise) {
    char test[96];
    snprintf(test, sizeof test, "%s.%s_forgets", g_form->tag, name);
    th_check(after.forget > before.forget + min_rise, test, "forget NLL %.4f -> %.4f", before.forget, after.forget);
    if (max_retain_rise > 0) {
        snprintf(test, sizeof test, "%s.%s_keeps_retain", g_form->tag, name);
        th_check(after.retain < before.retain + max_retain_rise, test, "retain NLL %.4f -> %.4f (bound +%.2f)",
                 before.retain, after.retain, max_retain_rise);
    }
    printf("# %s %s: forget NLL %.4f -> %.4f, retain NLL %.4f -> %.4f\n", g_form->tag, name, before.forget, after.forget,
           before.retain, after.retain);
}

/* ln_f applied here to block_output(idx, 2), the last block's output, must
 * give the model's final hidden state (hidden(idx)) */
static void test_block_output(th_frame *probe, const th_frame *model) {
    batch_nll(probe, model, 0);
    const float *h = th_f32(probe, "out.1"), *want = th_f32(probe, "out.2");
    const float *g = th_f32(probe, "m.ln_f.weight"), *bias = th_f32(probe, "m.ln_f.bias");
    double worst = 0;
    for (int r = 0; r < B * T; r++) {
        const float *x = h + r * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++)
            mean += x[i] / (double)C;
        for (int i = 0; i < C; i++)
            var += (x[i] - mean) * (x[i] - mean) / C;
        for (int i = 0; i < C; i++)
            worst = fmax(worst, fabs((x[i] - mean) / sqrt(var + 1e-5) * g[i] + bias[i] - want[r * C + i]));
    }
    th_check(worst < 1e-4, "unlearn_lm.block_output_of_last_block_is_hidden",
             "ln_f(block_output(idx, 2)) differs from hidden(idx) by %.3g", worst);
}

static void test_sequence_logp(const lethe_program *p) {
    th_frame *f = th_frame_new(th_entry(p, "seq_logp"));
    float *logits = th_f32(f, "logits"), *mask = th_f32(f, "mask");
    int32_t *idx = th_i32(f, "idx");
    th_fill(logits, LETHE_F32, 2 * 4 * 3, -2, 2, 7);
    th_fill(idx, LETHE_I32, 2 * 4, 0, 3, 8);
    const float m[8] = {1, 1, 1, 1, 1, 1, 0, 0};   /* the second sequence has 2 real tokens */
    memcpy(mask, m, sizeof m);
    th_call(f, &g_ctx);
    double worst = 0;
    for (int b = 0; b < 2; b++) {
        double want = 0;
        for (int t = 0; t + 1 < 4; t++) {
            if (!m[b * 4 + t + 1])
                continue;
            const float *row = logits + (b * 4 + t) * 3;
            double z = log(exp(row[0]) + exp(row[1]) + exp(row[2]));
            want += row[idx[b * 4 + t + 1]] - z;
        }
        worst = fmax(worst, fabs(th_f32(f, "out")[b] - want));
    }
    th_check(worst < 1e-5, "unlearn_lm.sequence_logp", "worst difference %.3g from the hand-computed sums", worst);
    th_frame_free(f);
}

static void test_softplus(const lethe_program *p) {
    th_frame *f = th_frame_new(th_entry(p, "splus"));
    const float z[5] = {-100, -1, 0, 2, 100};
    memcpy(th_f32(f, "z"), z, sizeof z);
    th_call(f, &g_ctx);
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        double want = z[i] > 0 ? z[i] + log1p(exp(-z[i])) : log1p(exp(z[i]));
        worst = fmax(worst, fabs(th_f32(f, "out")[i] - want) / fmax(want, 1e-30));
    }
    th_check(worst < 1e-5, "unlearn_lm.softplus", "worst relative error %.3g (large |z| must not overflow)", worst);
    th_frame_free(f);
}

static void test_npo(const lethe_program *p, th_frame *probe, const th_frame *fitted, Nll before) {
    th_frame *f = method_frame(p, g_form->npo, fitted);
    if (!th_check(f != NULL, tname("npo_entry"), "%s or its init_state missing", g_form->npo))
        return;
    const double beta = 0.5;
    *th_f32(f, "beta") = (float)beta;
    *th_f32(f, "lr") = 3e-3f;
    set_batch(f, "forget", 0);
    step(f);
    double first = *th_f32(f, "loss"), want = 2.0 / beta * log(2.0);
    th_check(fabs(first - want) < 1e-5 * want, tname("npo_first_loss_is_2_log2_over_beta"),
             "first step's loss %.7f, (2 / beta) log 2 = %.7f", first, want);
    run_method(f, UNLEARN_STEPS - 1);
    double last = *th_f32(f, "loss");
    th_check(last < first, tname("npo_loss_falls"), "loss %.5f at the first step, %.5f at the last", first, last);
    check_direction("npo", before, nll_of(probe, f), 1.0, 0);
    th_frame_free(f);
}

/* RMU: the distance to c u falls, the retain NLL holds, and only the MLP down
 * projections of blocks 0..2 change */
static void test_rmu(const lethe_program *p, th_frame *probe, const th_frame *fitted, Nll before) {
    th_frame *f = method_frame(p, g_form->rmu, fitted);
    if (!th_check(f != NULL, tname("rmu_entry"), "%s or its init_state missing", g_form->rmu))
        return;
    const float *u = th_f32(f, "u");
    double norm2 = 0, min_u = INFINITY;
    for (int i = 0; i < C; i++)
        norm2 += (double)u[i] * u[i], min_u = fmin(min_u, u[i]);
    th_check(fabs(norm2 - 1) < 1e-5 && min_u >= 0, tname("rmu_direction_is_unit"),
             "|u|^2 = %.7f, smallest entry %.4f", norm2, min_u);
    *th_f32(f, "lr") = 1e-2f;
    *th_f32(f, "c") = 8.0f;
    *th_f32(f, "alpha") = 100.0f;
    set_batch(f, "forget", 0);
    set_batch(f, "retain", 1);
    step(f);
    double first = *th_f32(f, "forget_loss");
    run_method(f, RMU_STEPS - 1);
    double last = *th_f32(f, "forget_loss");
    th_check(last < g_form->rmu_steer * first, tname("rmu_steers_forget_activations"),
             "mean squared distance of block 1's forget activations to c u %.4f -> %.4f", first, last);
    printf("# rmu: forget activation distance to c u %.4f -> %.4f\n", first, last);
    int64_t moved_outside = 0, moved_inside = 0, inside = 0;
    for (int i = 0; i < f->entry->nargs; i++) {
        const lethe_arg *a = &f->entry->args[i];
        if (a->kind != LETHE_PARAM || strcmp(a->binding, "m"))
            continue;
        int j = th_arg(fitted->entry, a->name);
        const float *w0 = fitted->args[j], *w = f->args[i];
        char h0[96], h1[96];
        snprintf(h0, sizeof h0, "%sh.0.mlp.c_proj.weight", g_form->path_prefix);
        snprintf(h1, sizeof h1, "%sh.1.mlp.c_proj.weight", g_form->path_prefix);
        bool trained = !strcmp(a->path, h0) || !strcmp(a->path, h1);
        inside += trained ? th_arg_numel(a) : 0;
        for (int64_t k = 0; k < th_arg_numel(a); k++) {
            bool changed = memcmp(&w[k], &w0[k], sizeof(float)) != 0;
            if (trained)
                moved_inside += changed;
            else
                moved_outside += changed;
        }
    }
    th_check(moved_outside == 0 && moved_inside > inside / 2, tname("rmu_updates_only_mlp_down_projections"),
             "%lld weights outside the down projections changed, %lld of %lld inside", (long long)moved_outside,
             (long long)moved_inside, (long long)inside);
    Nll after = nll_of(probe, f);
    th_check(after.forget > before.forget + g_form->rmu_rise, tname("rmu_forgets"), "forget NLL %.4f -> %.4f",
             before.forget, after.forget);
    th_check(after.retain < before.retain + 0.1, tname("rmu_keeps_retain"), "retain NLL %.4f -> %.4f (bound +0.10)",
             before.retain, after.retain);
    printf("# rmu: forget NLL %.4f -> %.4f, retain NLL %.4f -> %.4f\n", before.forget, after.forget, before.retain,
           after.retain);
    th_frame_free(f);
}

/* Fit the original model of the current form, then run each method from it. */
static void test_form(const lethe_program *p) {
    /* the original model: adamw_lm (adamw on prompts) from fresh weights on every batch in turn */
    char init_name[128];
    snprintf(init_name, sizeof init_name, "%s.init_model", g_form->fit);
    th_frame *fitted = th_frame_new(th_entry(p, g_form->fit)), *init = th_frame_new(th_entry(p, init_name));
    th_call(init, &g_ctx);
    th_copy_model(fitted, init, "m");
    th_frame_free(init);
    for (int s = 0; s < FIT_STEPS; s++) {
        set_batch(fitted, "batch", s % 3);
        step(fitted);
    }
    th_frame *probe = th_frame_new(th_entry(p, g_form->nll));
    if (!strcmp(g_form->nll, "nll"))   /* the sequence probe has the block outputs */
        test_block_output(probe, fitted);
    Nll before = nll_of(probe, fitted);
    printf("# %s fitted: forget NLL %.4f, retain NLL %.4f (log %d = %.4f)\n", g_form->tag, before.forget, before.retain,
           VOCAB, log((double)VOCAB));
    if (!th_check(before.forget < 1.0 && before.retain < 1.0, tname("original_fits"), "forget NLL %.4f, retain %.4f",
                  before.forget, before.retain)) {
        th_frame_free(probe);
        th_frame_free(fitted);
        return;
    }

    for (size_t i = 0; i < 3 && g_form->methods[i].entry; i++) {
        th_frame *f = method_frame(p, g_form->methods[i].entry, fitted);
        char test[96];
        snprintf(test, sizeof test, "%s.%s_entry", g_form->tag, g_form->methods[i].name);
        if (!th_check(f != NULL, test, "%s or its init_state missing", g_form->methods[i].entry))
            continue;
        *th_f32(f, "lr") = g_form->methods[i].lr;
        run_method(f, UNLEARN_STEPS);
        check_direction(g_form->methods[i].name, before, nll_of(probe, f), 1.0, 0.25);
        th_frame_free(f);
    }
    test_npo(p, probe, fitted, before);
    test_rmu(p, probe, fitted, before);

    th_frame_free(probe);
    th_frame_free(fitted);
}

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_file("tests/lth/unlearn_lm.lth", "", &err);
    if (!th_check(p != NULL, "unlearn_lm.compile", "%s", err ? err : ""))
        return th_exit();
    lethe_pool *pool = lethe_pool_new(1);
    lethe_ctx_init(&g_ctx, pool, 11);
    make_batches();
    test_sequence_logp(p);
    test_softplus(p);

    static const Form forms[] = {
        {"unlearn_lm", "fit", "nll", "npo1", "rmu1", "", 0.6, 0.1,
         {{"gd", "grad_diff", 1e-3f}, {"npo_rt1", "npo_rt", 3e-3f}, {"simnpo1", "simnpo", 3e-3f}}},
        /* RMU on prompts moves the activations less (5.5 -> 3.8, at any lr from
         * 1e-2 to 1e-1) and the answer survives it (NLL 0.0009 -> 0.0046): the
         * direction is checked, with the weaker bounds measured here */
        {"unlearn_lm.answer", "afit", "anll", "anpo", "armu", "transformer.", 0.8, 0.002,
         {{"agd", "grad_diff", 1e-3f}, {"asimnpo", "simnpo", 3e-3f}}},
    };
    for (size_t k = 0; k < sizeof forms / sizeof *forms; k++) {
        g_form = &forms[k];
        test_form(p);
    }
    lethe_pool_free(pool);
    return th_exit();
}
