/* test_attacks.c: the attack objectives of graphs/attacks/ through the real
 * compiler, at test size, in f64 (tests/lth/attacks.lth):
 *   - each objective's `grad` output (d loss / d the optimised tensor,
 *     second order through the parameter gradients) against central
 *     differences of its `loss`: Witches' Brew without and with the random
 *     flip-and-shift augmentation (fixed ctx, so the same draw every call),
 *     Gradient Canceling on the last layer and on every parameter
 *   - a few steps of each objective's own optimiser (signed Adam, plain
 *     gradient descent) lower its loss, and Witches' Brew's perturbation
 *     stays inside the L-inf ball and the image box
 *   - GradPC raises the training loss and keeps the parameters within the
 *     L2 ball around the clean ones
 *   - flip_shift moves whole images: each output is the input flipped or
 *     not and shifted by whole pixels, zero where the shift leaves the image
 * State is initialised by each entry's init_state, as the runtime does.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

#define ATK_LTH "tests/lth/attacks.lth"
static const double FD_H = 1e-6, TOL = 1e-6;

static const lethe_program *P;
static uint64_t next_seed = 101;

/* A step frame with its inputs filled and its state set by init_state. */
static th_frame *ready_frame(const char *entry, int classes) {
    char init_name[128];
    snprintf(init_name, sizeof init_name, "%s.init_state", entry);
    const lethe_entry *e = th_entry(P, entry), *ei = th_entry(P, init_name);
    if (!e || !ei)
        return NULL;
    th_frame *f = th_frame_new(e), *fi = th_frame_new(ei);
    unsigned inputs = TH_INPUT_KINDS & ~(1u << LETHE_STATE);
    th_fill_args(f, inputs, classes, &next_seed);
    th_copy_by_name(fi, f, inputs);
    th_fill_args(fi, inputs, classes, &next_seed);   /* what only init_state reads: the target, the clean data */
    int rc = th_call(fi, NULL);
    th_copy_by_name(f, fi, ~(1u << LETHE_OUTPUT));   /* the inputs and the state init_state wrote */
    th_frame_free(fi);
    if (rc) {
        th_frame_free(f);
        return NULL;
    }
    return f;
}

/* The loss at x = base (the entry steps x in place, so it is reset first). */
static double loss_at(th_frame *f, double *x, const double *base, int64_t n, int *rc) {
    memcpy(x, base, sizeof(double) * (size_t)n);
    *rc |= th_call(f, NULL);
    return *th_f64(f, "loss");
}

static void gradient_case(const char *name, const char *entry, const char *over, double lo, double hi) {
    th_frame *f = ready_frame(entry, 3);
    if (!f || th_arg(f->entry, over) < 0 || th_arg(f->entry, "grad") < 0) {
        th_fail(name, "entry %s (with init_state, %s and grad) missing or failed", entry, over);
        if (f)
            th_frame_free(f);
        return;
    }
    int64_t n = th_arg_numel(&f->entry->args[th_arg(f->entry, over)]);
    double *x = th_f64(f, over), *base = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)n);
    double *fd = malloc(sizeof(double) * (size_t)n);
    th_fill(base, LETHE_F64, n, lo, hi, next_seed++);
    int rc = 0;
    double l0 = loss_at(f, x, base, n, &rc);
    memcpy(g, th_f64(f, "grad"), sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++) {
        double save = base[j];
        base[j] = save + FD_H;
        double lp = loss_at(f, x, base, n, &rc);
        base[j] = save - FD_H;
        double lm = loss_at(f, x, base, n, &rc);
        base[j] = save;
        fd[j] = (lp - lm) / (2 * FD_H);
    }
    int64_t at;
    double worst = th_fd_err(g, fd, n, &at);
    if (rc)
        th_fail(name, "%s returned non-zero", entry);
    else if (!isfinite(l0) || l0 <= 0)
        th_fail(name, "the loss is %g", l0);
    else if (worst < TOL) {
        char pn[256];
        snprintf(pn, sizeof pn, "%s (loss %.4g; worst rel err %.2e over %lld elements)", name, l0, worst, (long long)n);
        th_pass(pn);
    } else
        th_fail(name, "worst rel err %.3e at %s[%lld]: %.12g, expected %.12g", worst, over, (long long)at, g[at], fd[at]);
    free(base), free(g), free(fd);
    th_frame_free(f);
}

/* Run `steps` steps from `over` = base; returns the first and the last loss
 * (each step reports the loss before its update). */
static int descend(th_frame *f, const char *over, const double *base, int steps, double *first, double *last) {
    int64_t n = th_arg_numel(&f->entry->args[th_arg(f->entry, over)]);
    memcpy(th_f64(f, over), base, sizeof(double) * (size_t)n);
    int rc = 0;
    for (int s = 0; s <= steps; s++) {
        rc |= th_call(f, NULL);
        if (s == 0)
            *first = *th_f64(f, "loss");
    }
    *last = *th_f64(f, "loss");
    return rc;
}

static void witches_brew_descent(void) {
    const char *name = "attacks.witches_brew.descent";
    th_frame *f = ready_frame("atk_wb", 3);
    if (!f) {
        th_fail(name, "atk_wb missing or its init_state failed");
        return;
    }
    const double std = 0.5, lo = -1.2, hi = 1.1, eps = 0.06;
    *th_f64(f, "pixel_std") = std, *th_f64(f, "pixel_lo") = lo, *th_f64(f, "pixel_hi") = hi;
    *th_f64(f, "eps") = eps, *th_f64(f, "lr") = 0.01;
    if (th_arg(f->entry, "delta") < 0) {
        th_fail(name, "atk_wb has no delta");
        th_frame_free(f);
        return;
    }
    double *px = th_f64(f, "poison.x");
    int64_t n = th_arg_numel(&f->entry->args[th_arg(f->entry, "delta")]);
    for (int64_t j = 0; j < n; j += 7)
        px[j] = j % 2 ? hi - 0.01 : lo + 0.01;   /* some pixels near the box's edges */
    double *zero = calloc((size_t)(n > 0 ? n : 1), sizeof(double)), first, last;
    int rc = descend(f, "delta", zero, 30, &first, &last);
    const double *d = th_f64(f, "delta");
    double worst_ball = 0, worst_box = 0;
    for (int64_t j = 0; j < n; j++) {
        worst_ball = fmax(worst_ball, fabs(d[j]) - eps / std);
        worst_box = fmax(worst_box, fmax(lo - (px[j] + d[j]), px[j] + d[j] - hi));
    }
    if (rc)
        th_fail(name, "atk_wb returned non-zero");
    else if (!(last < first - 0.01))
        th_fail(name, "30 signed Adam steps took 1 - cosine from %.6f to %.6f", first, last);
    else if (worst_ball > 1e-12 || worst_box > 1e-12)
        th_fail(name, "the perturbation leaves the ball (by %g) or the box (by %g)", worst_ball, worst_box);
    else {
        char pn[200];
        snprintf(pn, sizeof pn, "%s (1 - cosine %.4f -> %.4f in 30 steps, inside the ball and the box)", name, first, last);
        th_pass(pn);
    }
    free(zero);
    th_frame_free(f);
}

static void gradient_canceling_descent(const char *name, const char *entry) {
    th_frame *f = ready_frame(entry, 3);
    if (!f) {
        th_fail(name, "%s missing or its init_state failed", entry);
        return;
    }
    *th_f64(f, "lr") = 0.5;
    int64_t n = th_arg_numel(&f->entry->args[th_arg(f->entry, "xp")]);
    double *base = malloc(sizeof(double) * (size_t)n), first, last;
    th_fill(base, LETHE_F64, n, -1, 1, next_seed++);
    int rc = descend(f, "xp", base, 20, &first, &last);
    if (rc)
        th_fail(name, "%s returned non-zero", entry);
    else if (!(last < 0.9 * first))
        th_fail(name, "20 gradient steps took the canceling loss from %.6g to %.6g", first, last);
    else {
        char pn[200];
        snprintf(pn, sizeof pn, "%s (||mean gradient||^2 %.4g -> %.4g in 20 steps)", name, first, last);
        th_pass(pn);
    }
    free(base);
    th_frame_free(f);
}

static void gradpc_case(void) {
    const char *name = "attacks.gradpc.ascent_in_ball";
    th_frame *f = ready_frame("atk_gradpc", 3);
    if (!f) {
        th_fail(name, "atk_gradpc missing or its init_state failed");
        return;
    }
    const double eps = 0.8;
    *th_f64(f, "eps") = eps, *th_f64(f, "lr") = 0.3;
    const lethe_entry *e = f->entry;
    int64_t total = 0;
    for (int i = 0; i < e->nargs; i++)
        if (e->args[i].kind == LETHE_PARAM)
            total += th_arg_numel(&e->args[i]);
    double *clean = malloc(sizeof(double) * (size_t)total), first = 0, last = 0;
    for (int i = 0, o = 0; i < e->nargs; i++)
        if (e->args[i].kind == LETHE_PARAM) {
            memcpy(clean + o, f->args[i], sizeof(double) * (size_t)th_arg_numel(&e->args[i]));
            o += (int)th_arg_numel(&e->args[i]);
        }
    int rc = 0;
    for (int s = 0; s <= 8; s++) {
        rc |= th_call(f, NULL);
        if (s == 0)
            first = *th_f64(f, "loss");
    }
    last = *th_f64(f, "loss");
    double shift2 = 0;
    for (int i = 0, o = 0; i < e->nargs; i++)
        if (e->args[i].kind == LETHE_PARAM)
            for (int64_t j = 0; j < th_arg_numel(&e->args[i]); j++, o++) {
                double d = ((double *)f->args[i])[j] - clean[o];
                shift2 += d * d;
            }
    double reported = *th_f64(f, "shift_norm");
    if (rc)
        th_fail(name, "atk_gradpc returned non-zero");
    else if (!(last > first))
        th_fail(name, "8 ascent steps took the loss from %.6f to %.6f", first, last);
    else if (!(sqrt(shift2) <= eps * (1 + 1e-12)) || fabs(sqrt(shift2) - reported) > 1e-9)
        th_fail(name, "||theta - theta_clean|| = %.12g (reported %.12g), the ball's radius is %g", sqrt(shift2), reported, eps);
    else {
        char pn[200];
        snprintf(pn, sizeof pn, "%s (loss %.4f -> %.4f, ||shift|| %.4f <= %.2f)", name, first, last, sqrt(shift2), eps);
        th_pass(pn);
    }
    free(clean);
    th_frame_free(f);
}

/* out[n] must equal in[n] shifted by (dy, dx) whole pixels, flipped or not:
 * out[n, c, i, j] = in[n, c, i - dy, src(j)], 0 outside. */
static bool matches_flip_shift(const double *in, const double *out, int C, int H, int W, int shift) {
    for (int flip = 0; flip < 2; flip++)
        for (int dy = -shift; dy <= shift; dy++)
            for (int dx = -shift; dx <= shift; dx++) {
                bool ok = true;
                for (int c = 0; ok && c < C; c++)
                    for (int i = 0; ok && i < H; i++)
                        for (int j = 0; ok && j < W; j++) {
                            int si = i - dy, sj = (flip ? W - 1 - j : j) - dx;
                            double want = si >= 0 && si < H && sj >= 0 && sj < W ? in[(c * H + si) * W + sj] : 0;
                            ok = out[(c * H + i) * W + j] == want;
                        }
                if (ok)
                    return true;
            }
    return false;
}

static void flip_shift_case(void) {
    const char *name = "attacks.flip_shift.moves_whole_images";
    const lethe_entry *e = th_entry(P, "atk_flip_shift");
    if (!e) {
        th_fail(name, "atk_flip_shift missing");
        return;
    }
    th_frame *f = th_frame_new(e);
    const lethe_arg *xa = &e->args[th_arg(e, "x")];
    int N = (int)xa->shape[0], C = (int)xa->shape[1], H = (int)xa->shape[2], W = (int)xa->shape[3];
    th_fill(th_f64(f, "x"), LETHE_F64, th_arg_numel(xa), 0.5, 1.5, next_seed++);
    const double *x = th_f64(f, "x"), *out = th_f64(f, "out");
    int bad = -1, changed = 0, rc = 0;
    double *first = malloc(sizeof(double) * (size_t)th_arg_numel(xa));
    for (uint64_t counter = 0; counter < 6; counter++) {
        lethe_ctx ctx = {.seed = 7, .counter = counter};
        rc |= th_call(f, &ctx);
        if (counter == 0)
            memcpy(first, out, sizeof(double) * (size_t)th_arg_numel(xa));
        else
            changed += memcmp(first, out, sizeof(double) * (size_t)th_arg_numel(xa)) != 0;
        for (int n = 0; n < N && bad < 0; n++)
            if (!matches_flip_shift(x + (size_t)n * C * H * W, out + (size_t)n * C * H * W, C, H, W, 2))
                bad = n;
    }
    if (rc)
        th_fail(name, "atk_flip_shift returned non-zero");
    else if (bad >= 0)
        th_fail(name, "sample %d is not a flipped and shifted copy of its input", bad);
    else if (!changed)
        th_fail(name, "six calls with different counters drew the same augmentation");
    else
        th_pass(name);
    free(first);
    th_frame_free(f);
}

int main(void) {
    char *err = NULL;
    P = th_compile_file(ATK_LTH, "--f64", &err);
    if (!P) {
        th_fail("attacks.compile", "lethec %s --f64 failed:\n%s", ATK_LTH, err ? err : "?");
        free(err);
        return th_exit();
    }
    gradient_case("attacks.witches_brew.grad", "atk_wb", "delta", -0.05, 0.05);
    gradient_case("attacks.witches_brew_augmented.grad", "atk_wb_aug", "delta", -0.05, 0.05);
    gradient_case("attacks.gradient_canceling_last_layer.grad", "atk_gc_last", "xp", -1, 1);
    gradient_case("attacks.gradient_canceling_all.grad", "atk_gc_all", "xp", -1, 1);
    witches_brew_descent();
    gradient_canceling_descent("attacks.gradient_canceling_last_layer.descent", "atk_gc_last");
    gradient_canceling_descent("attacks.gradient_canceling_all.descent", "atk_gc_all");
    gradpc_case();
    flip_shift_case();
    return th_exit();
}
