/* test_unlearn_more.c: the vision unlearning methods beyond the paper
 * (graphs/unlearn/random_labels.lth, salun.lth, l1_sparse.lth,
 * boundary_shrink.lth), compiled by lethec and called through the ABI as the
 * runtime calls them. An MLP is trained by sgd on a synthetic 4-class problem
 * until it fits its first 16 samples (the forget set); then a few steps of
 * each method must move it the way the method means to: the forget loss up
 * and the forget accuracy down for random labels, SalUn and boundary shrink,
 * the l1 norm down against the same fine-tuning without the penalty for
 * l1-sparse. SalUn's mask must leave every unmasked weight bit for bit as it
 * was, and keep the weights of largest summed forget gradient. The label
 * helpers are checked on hand-made cases. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "data.h"
#include "harness.h"
#include "threadpool.h"

enum { B = 16, N_TRAIN = 256, CLASSES = 4, TRAIN_EPOCHS = 40 };

static lethe_dataset g_train;
static lethe_ctx g_ctx;
static int64_t g_retain_next = B;   /* the retain set is every sample after the first batch */

/* Call a step as the runtime does: a fresh Philox counter per call. */
static void step(th_frame *f) {
    g_ctx.counter++;
    th_call(f, &g_ctx);
}

static void fill(th_frame *f, const char *binding, const int64_t *idx) {
    char x[64], y[64], err[LETHE_ERR_LEN];
    snprintf(x, sizeof x, "%s.x", binding);
    snprintf(y, sizeof y, "%s.y", binding);
    if (ds_batch(&g_train, idx, B, NULL, NULL, th_f32(f, x), th_i32(f, y), err))
        fprintf(stderr, "test_unlearn_more: %s\n", err);
}

static void fill_forget(th_frame *f, const char *binding) {
    int64_t idx[B];
    for (int i = 0; i < B; i++)
        idx[i] = i;
    fill(f, binding, idx);
}

static void fill_retain(th_frame *f, const char *binding) {
    int64_t idx[B];
    for (int i = 0; i < B; i++) {
        idx[i] = g_retain_next++;
        if (g_retain_next == N_TRAIN)
            g_retain_next = B;
    }
    fill(f, binding, idx);
}

/* Mean cross entropy and accuracy of the model in `model` on the forget set (eval mode). */
static void forget_metrics(th_frame *lg, const th_frame *model, double *loss, double *acc) {
    th_copy_model(lg, model, NULL);
    int32_t y[B];
    char err[LETHE_ERR_LEN];
    int64_t idx[B];
    for (int i = 0; i < B; i++)
        idx[i] = i;
    ds_batch(&g_train, idx, B, NULL, NULL, th_f32(lg, "x"), y, err);
    th_call(lg, &g_ctx);
    const float *out = th_f32(lg, "out");
    double l = 0;
    int correct = 0;
    for (int i = 0; i < B; i++) {
        const float *r = out + i * CLASSES;
        double mx = r[0], s = 0;
        int arg = 0;
        for (int k = 1; k < CLASSES; k++)
            if (r[k] > mx)
                mx = r[k], arg = k;
        for (int k = 0; k < CLASSES; k++)
            s += exp(r[k] - mx);
        l += mx + log(s) - r[y[i]];
        correct += arg == y[i];
    }
    *loss = l / B;
    *acc = (double)correct / B;
}

/* Sum of |p| over the model's parameters. */
static double l1_of(th_frame *f) {
    double s = 0;
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_PARAM)
            for (int64_t k = 0; k < th_arg_numel(&f->entry->args[i]); k++)
                s += fabs(((const float *)f->args[i])[k]);
    return s;
}

/* The state tensor of `binding` for the parameter at `path` (SalUn's mask, gsum). */
static const float *state_of(th_frame *f, const char *binding, const char *path) {
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_STATE && !strcmp(f->entry->args[i].binding, binding) &&
            !strcmp(f->entry->args[i].path, path))
            return f->args[i];
    return NULL;
}

static void test_random_other_label(const lethe_program *p) {
    th_frame *f = th_frame_new(th_entry(p, "other"));
    int32_t *y = th_i32(f, "y");
    for (int i = 0; i < 3000; i++)
        y[i] = i % CLASSES;
    g_ctx.counter = 1;
    th_call(f, &g_ctx);
    const int32_t *out = th_i32(f, "out");
    int bad = 0, count[CLASSES][CLASSES] = {{0}};
    for (int i = 0; i < 3000; i++) {
        if (out[i] < 0 || out[i] >= CLASSES || out[i] == y[i])
            bad++;
        else
            count[y[i]][out[i]]++;
    }
    /* 750 rows per label, 250 expected per other class: within 5 sigma (~ 64) */
    int uneven = 0;
    for (int a = 0; a < CLASSES; a++)
        for (int b = 0; b < CLASSES; b++)
            if (a != b && abs(count[a][b] - 250) > 64)
                uneven++;
    th_check(!bad && !uneven, "unlearn_more.random_other_label", "%d labels equal y or out of range, %d uneven counts", bad,
             uneven);
    int32_t first[8];
    memcpy(first, out, sizeof first);
    g_ctx.counter = 2;
    th_call(f, &g_ctx);
    th_check(memcmp(first, th_i32(f, "out"), sizeof first) != 0, "unlearn_more.random_other_label_fresh",
             "the labels did not change with the call counter");
    th_frame_free(f);
}

static void test_nearest_wrong_class(const lethe_program *p) {
    th_frame *f = th_frame_new(th_entry(p, "nearest"));
    /* row 0: the label is the argmax, the runner-up wins; row 1: the argmax is
     * already wrong; row 2: a tie between classes 1 and 3 goes to 1; row 3: all
     * equal, label 0 excluded */
    const float logits[4][5] = {{5, 1, 4, 0, -1}, {0, 1, 2, 9, 3}, {9, 2, 0, 2, 1}, {1, 1, 1, 1, 1}};
    const int32_t y[4] = {0, 2, 0, 0}, want[4] = {2, 3, 1, 1};
    memcpy(th_f32(f, "logits"), logits, sizeof logits);
    memcpy(th_i32(f, "y"), y, sizeof y);
    th_call(f, &g_ctx);
    const int32_t *out = th_i32(f, "out");
    th_check(!memcmp(out, want, sizeof want), "unlearn_more.nearest_wrong_class", "got %d %d %d %d, want 2 3 1 1", out[0],
             out[1], out[2], out[3]);
    th_frame_free(f);
}

static void check_forgets(const char *name, th_frame *lg, const th_frame *before, const th_frame *after) {
    double l0, a0, l1, a1;
    forget_metrics(lg, before, &l0, &a0);
    forget_metrics(lg, after, &l1, &a1);
    char test[96];
    snprintf(test, sizeof test, "unlearn_more.%s_forgets", name);
    th_check(l1 > l0 + 0.5 && a1 < a0, test, "forget loss %.4f -> %.4f, accuracy %.3f -> %.3f", l0, l1, a0, a1);
    printf("# %s: forget loss %.4f -> %.4f, accuracy %.3f -> %.3f\n", name, l0, l1, a0, a1);
}

static void test_salun(const lethe_program *p, th_frame *lg, const th_frame *trained) {
    const int mask_steps = 2;
    th_frame *f = th_frame_new(th_entry(p, "sal"));
    th_copy_model(f, trained, NULL);
    *th_f32(f, "lr") = 0.05f;
    *th_f32(f, "fraction") = 0.3f;
    *th_f32(f, "mask_steps") = (float)mask_steps;
    for (int s = 0; s < mask_steps; s++) {
        fill_forget(f, "forget");
        fill_retain(f, "retain");
        step(f);
    }
    /* the mask steps change no parameter; the mask keeps 30% of the weights,
     * those of largest |sum of forget gradients| */
    int64_t total = 0, kept = 0, moved = 0;
    double min_kept = INFINITY, max_dropped = 0;
    for (int i = 0; i < f->entry->nargs; i++) {
        const lethe_arg *a = &f->entry->args[i];
        if (a->kind != LETHE_PARAM)
            continue;
        const float *w0 = trained->args[th_arg(trained->entry, a->name)], *w = f->args[i];
        const float *mask = state_of(f, "mask", a->path), *gsum = state_of(f, "gsum", a->path);
        for (int64_t k = 0; k < th_arg_numel(a); k++) {
            total++;
            moved += memcmp(&w[k], &w0[k], sizeof(float)) != 0;
            if (mask[k] > 0.5f) {
                kept++;
                min_kept = fmin(min_kept, fabs(gsum[k]));
            } else
                max_dropped = fmax(max_dropped, fabs(gsum[k]));
        }
    }
    double share = (double)kept / (double)total;
    th_check(moved == 0, "unlearn_more.salun_mask_steps_keep_weights", "%lld weights moved while the mask was built",
             (long long)moved);
    th_check(fabs(share - 0.3) < 0.01 && min_kept >= max_dropped, "unlearn_more.salun_mask_is_top_fraction",
             "mask keeps %.4f of %lld weights; smallest kept |g| %.6g, largest dropped %.6g", share, (long long)total,
             min_kept, max_dropped);
    for (int s = 0; s < 10; s++) {
        fill_forget(f, "forget");
        fill_retain(f, "retain");
        step(f);
    }
    int64_t unmasked_moved = 0, masked_moved = 0;
    for (int i = 0; i < f->entry->nargs; i++) {
        const lethe_arg *a = &f->entry->args[i];
        if (a->kind != LETHE_PARAM)
            continue;
        const float *w0 = trained->args[th_arg(trained->entry, a->name)], *w = f->args[i];
        const float *mask = state_of(f, "mask", a->path);
        for (int64_t k = 0; k < th_arg_numel(a); k++) {
            bool changed = memcmp(&w[k], &w0[k], sizeof(float)) != 0;
            if (mask[k] > 0.5f)
                masked_moved += changed;
            else
                unmasked_moved += changed;
        }
    }
    th_check(unmasked_moved == 0 && masked_moved > kept / 2, "unlearn_more.salun_unmasked_bit_for_bit",
             "%lld unmasked weights changed, %lld of %lld masked ones", (long long)unmasked_moved, (long long)masked_moved,
             (long long)kept);
    check_forgets("salun", lg, trained, f);
    th_frame_free(f);
}

static void test_l1_sparse(const lethe_program *p, const th_frame *trained) {
    const int steps = 20;
    double l1[2];
    for (int with = 0; with < 2; with++) {
        th_frame *f = th_frame_new(th_entry(p, "l1"));
        th_copy_model(f, trained, NULL);
        *th_f32(f, "lr") = 0.02f;
        *th_f32(f, "alpha") = with ? 1e-2f : 0.0f;
        *th_f32(f, "total_steps") = (float)steps;
        int bad_weight = 0;
        g_retain_next = B;   /* both runs see the same retain batches */
        for (int s = 0; s < steps + 2; s++) {
            fill_retain(f, "retain");
            step(f);
            /* the penalty weight of step s: alpha * (1 - s / total), 0 from s = total on */
            double want = with ? 1e-2 * fmax(1.0 - (double)s / steps, 0.0) : 0.0;
            if (fabs(*th_f32(f, "l1_weight") - want) > 1e-9)
                bad_weight++;
        }
        l1[with] = l1_of(f);
        th_check(!bad_weight, with ? "unlearn_more.l1_weight_schedule" : "unlearn_more.l1_weight_zero_alpha",
                 "%d steps reported a penalty weight off the linear decay", bad_weight);
        th_frame_free(f);
    }
    th_check(l1[1] < 0.97 * l1[0], "unlearn_more.l1_sparse_shrinks_l1", "l1 norm %.4f with the penalty, %.4f without", l1[1],
             l1[0]);
    printf("# l1-sparse: l1 norm %.4f with the penalty, %.4f without\n", l1[1], l1[0]);
}

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_file("tests/lth/unlearn_more.lth", "", &err);
    if (!th_check(p != NULL, "unlearn_more.compile", "%s", err ? err : ""))
        return th_exit();
    char derr[LETHE_ERR_LEN];
    ds_synth spec = {.kind = DS_SYNTH_LINEAR, .n = N_TRAIN, .rank = 3, .c = 1, .h = 4, .w = 4, .classes = CLASSES,
                     .sep = 3, .seed = 5};
    if (!th_check(!ds_synthetic(&spec, &g_train, derr), "unlearn_more.data", "%s", derr))
        return th_exit();
    lethe_pool *pool = lethe_pool_new(1);
    lethe_ctx_init(&g_ctx, pool, 9);
    test_random_other_label(p);
    test_nearest_wrong_class(p);

    /* the original model: sgd from fresh weights over the whole set, forget set included */
    th_frame *trained = th_frame_new(th_entry(p, "train_step")), *init = th_frame_new(th_entry(p, "train_step.init_model"));
    th_call(init, &g_ctx);
    th_copy_model(trained, init, NULL);
    th_frame_free(init);
    for (int e = 0; e < TRAIN_EPOCHS; e++)
        for (int64_t s = 0; s < N_TRAIN; s += B) {
            int64_t idx[B];
            for (int i = 0; i < B; i++)
                idx[i] = s + i;
            fill(trained, "batch", idx);
            step(trained);
        }
    th_frame *lg = th_frame_new(th_entry(p, "logits"));
    double loss0, acc0;
    forget_metrics(lg, trained, &loss0, &acc0);
    if (!th_check(acc0 >= 0.9, "unlearn_more.original_fits_forget_set", "forget accuracy %.3f, loss %.4f", acc0, loss0))
        return th_exit();

    th_frame *f = th_frame_new(th_entry(p, "rl"));
    th_copy_model(f, trained, NULL);   /* the state starts at zeros, as its init_state makes it */
    *th_f32(f, "lr") = 0.05f;
    for (int s = 0; s < 10; s++) {
        fill_forget(f, "forget");
        fill_retain(f, "retain");
        step(f);
    }
    check_forgets("random_labels", lg, trained, f);
    th_frame_free(f);
    test_salun(p, lg, trained);
    test_l1_sparse(p, trained);
    f = th_frame_new(th_entry(p, "bs"));
    th_copy_model(f, trained, NULL);
    *th_f32(f, "lr") = 0.05f;
    *th_f32(f, "eps") = 1.0f;
    for (int s = 0; s < 10; s++) {
        fill_forget(f, "forget");
        step(f);
    }
    check_forgets("boundary_shrink", lg, trained, f);
    th_frame_free(f);

    th_frame_free(lg);
    th_frame_free(trained);
    ds_free(&g_train);
    lethe_pool_free(pool);
    return th_exit();
}
