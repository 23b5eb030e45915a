/* test_train.c: an MLP and a small CNN written in .lth (graphs/models) are
 * trained by the compiled sgd rule (graphs/train/sgd.lth), called from C
 * through the generated shared object and its descriptor, and must reach
 * over 95% test accuracy on a synthetic linearly separable problem. */
#include <stdio.h>
#include <string.h>

#include "data.h"
#include "harness.h"
#include "metrics.h"
#include "threadpool.h"

enum { BATCH = 32, EVAL = 200, EPOCHS = 8 };

/* Test accuracy of the logits entry with the step frame's current parameters. */
static double score(const lethe_entry *step, th_frame *fs, const lethe_entry *lg, th_frame *fl, const lethe_dataset *te,
                    lethe_ctx *ctx) {
    char err[LETHE_ERR_LEN];
    for (int i = 0; i < lg->nargs; i++)
        if (lg->args[i].kind == LETHE_PARAM || lg->args[i].kind == LETHE_BUFFER)
            memcpy(fl->args[i], fs->args[th_arg(step, lg->args[i].name)], (size_t)th_arg_numel(&lg->args[i]) * 4);
    int64_t correct = 0;
    for (int64_t s = 0; s + EVAL <= te->n; s += EVAL) {
        int64_t eidx[EVAL];
        int32_t y[EVAL];
        for (int i = 0; i < EVAL; i++)
            eidx[i] = s + i;
        if (ds_batch(te, eidx, EVAL, NULL, NULL, th_f32(fl, "x"), y, err))
            return -1;
        th_call(fl, ctx);
        correct += mt_correct(th_f32(fl, "out"), y, EVAL, 4);
    }
    return (double)correct / (double)(te->n / EVAL * EVAL);
}

static double train_and_score(const lethe_program *p, const char *step_name, const char *logits_name, const lethe_dataset *tr,
                              const lethe_dataset *te, lethe_ctx *ctx, double *before) {
    char init_model[64], init_state[64];
    snprintf(init_model, sizeof init_model, "%s.init_model", step_name);
    snprintf(init_state, sizeof init_state, "%s.init_state", step_name);
    const lethe_entry *step = th_entry(p, step_name), *im = th_entry(p, init_model), *is = th_entry(p, init_state),
                      *lg = th_entry(p, logits_name);
    if (!step || !im || !is || !lg)
        return -1;
    th_frame *fs = th_frame_new(step), *fm = th_frame_new(im), *fi = th_frame_new(is), *fl = th_frame_new(lg);
    /* fresh weights, then the momentum buffers, shared with the step by name */
    th_call(fm, ctx);
    for (int i = 0; i < im->nargs; i++) {
        int j = th_arg(step, im->args[i].name);
        if (j >= 0)
            memcpy(fs->args[j], fm->args[i], (size_t)th_arg_numel(&im->args[i]) * th_dtype_size(im->args[i].dtype));
    }
    for (int i = 0; i < is->nargs; i++)
        if (is->args[i].kind == LETHE_PARAM || is->args[i].kind == LETHE_BUFFER)
            memcpy(fi->args[i], fs->args[th_arg(step, is->args[i].name)], (size_t)th_arg_numel(&is->args[i]) * 4);
    th_call(fi, ctx);
    for (int i = 0; i < is->nargs; i++)
        if (is->args[i].kind == LETHE_STATE)
            memcpy(fs->args[th_arg(step, is->args[i].name)], fi->args[i], (size_t)th_arg_numel(&is->args[i]) * 4);
    *before = score(step, fs, lg, fl, te, ctx);
    int64_t idx[BATCH], perm[4096];
    char err[LETHE_ERR_LEN];
    for (int e = 0; e < EPOCHS; e++) {
        for (int64_t i = 0; i < tr->n; i++)
            perm[i] = i;
        ds_shuffle(perm, tr->n, 7, DS_STREAM_SHUFFLE, (uint32_t)e);
        for (int64_t s = 0; s + BATCH <= tr->n; s += BATCH) {
            memcpy(idx, perm + s, sizeof idx);
            if (ds_batch(tr, idx, BATCH, NULL, NULL, th_f32(fs, "batch.x"), th_i32(fs, "batch.y"), err))
                return -1;
            th_call(fs, ctx);
        }
    }
    /* evaluate with the trained parameters (and running statistics) */
    double after = score(step, fs, lg, fl, te, ctx);
    th_frame_free(fs);
    th_frame_free(fm);
    th_frame_free(fi);
    th_frame_free(fl);
    return after;
}

int main(void) {
    char *err = NULL;
    const lethe_program *p = th_compile_file("tests/lth/train.lth", "", &err);
    if (!th_check(p != NULL, "train.compile", "%s", err ? err : ""))
        return th_exit();
    char derr[LETHE_ERR_LEN];
    ds_synth spec = {.kind = DS_SYNTH_LINEAR, .n = 2000, .rank = 3, .c = 1, .h = 12, .w = 12, .classes = 4, .sep = 4,
                     .seed = 11};
    lethe_dataset tr = {0}, te = {0};
    int ok = !ds_synthetic(&spec, &tr, derr);
    spec.n = 1000;
    spec.first_id = 2000;
    ok = ok && !ds_synthetic(&spec, &te, derr);
    if (!th_check(ok, "train.data", "%s", derr))
        return th_exit();
    lethe_pool *pool = lethe_pool_new(2);
    lethe_ctx ctx;
    lethe_ctx_init(&ctx, pool, 3);
    double mlp0, cnn0;
    double mlp = train_and_score(p, "mlp_step", "mlp_logits", &tr, &te, &ctx, &mlp0);
    th_check(mlp > 0.95 && mlp0 < 0.6, "train.mlp_above_95", "test accuracy %.4f (%.4f before training)", mlp, mlp0);
    double cnn = train_and_score(p, "cnn_step", "cnn_logits", &tr, &te, &ctx, &cnn0);
    th_check(cnn > 0.95 && cnn0 < 0.6, "train.cnn_above_95", "test accuracy %.4f (%.4f before training)", cnn, cnn0);
    printf("# test accuracy: MLP %.4f (%.4f before), small CNN %.4f (%.4f before)\n", mlp, mlp0, cnn, cnn0);
    ds_free(&tr);
    ds_free(&te);
    lethe_pool_free(pool);
    return th_exit();
}
