/* test_attacks.c: the attack objectives of graphs/attacks/ through the real
 * compiler, at test size, in f64 (tests/lth/attacks.lth):
 *   - each objective's `grad` output (d loss / d the optimised tensor,
 *     second order through the parameter gradients) against central
 *     differences of its `loss`: Witches' Brew without augmentation and with
 *     random flips and bilinear or whole-pixel shifts (fixed ctx, so the same
 *     draw every call), a quadratic of the bilinear augmentation alone (first
 *     order), Gradient Canceling on the last layer and on every parameter
 *   - a few steps of each objective's own optimiser (signed Adam, plain
 *     gradient descent) lower its loss, and Witches' Brew's perturbation
 *     stays inside the L-inf ball and the image box (without and with the
 *     bilinear augmentation)
 *   - GradPC raises the training loss and keeps the parameters within the
 *     L2 ball around the clean ones
 *   - the augmentation for given draws equals a direct bilinear sampler
 *     with zero padding (grid_sample's, written here with floor and
 *     fractions), for continuous and whole-pixel shifts; flip_shift with
 *     whole pixels moves whole images (each output is the input flipped or
 *     not and shifted by whole pixels, zero where the shift leaves the
 *     image), and with bilinear shifts it draws fractional ones
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

/* A step frame with its inputs filled and its state set by init_state (an
 * objective without `state` has no init_state). */
static th_frame *ready_frame(const char *entry, int classes) {
    char init_name[128];
    snprintf(init_name, sizeof init_name, "%s.init_state", entry);
    const lethe_entry *e = th_entry(P, entry), *ei = th_entry(P, init_name);
    if (!e)
        return NULL;
    th_frame *f = th_frame_new(e);
    unsigned inputs = TH_INPUT_KINDS & ~(1u << LETHE_STATE);
    th_fill_args(f, inputs, classes, &next_seed);
    if (!ei)
        return f;
    th_frame *fi = th_frame_new(ei);
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

static void witches_brew_descent(const char *name, const char *entry) {
    th_frame *f = ready_frame(entry, 3);
    if (!f) {
        th_fail(name, "%s missing or its init_state failed", entry);
        return;
    }
    const double std = 0.5, lo = -1.2, hi = 1.1, eps = 0.06;
    *th_f64(f, "pixel_std") = std, *th_f64(f, "pixel_lo") = lo, *th_f64(f, "pixel_hi") = hi;
    *th_f64(f, "eps") = eps, *th_f64(f, "lr") = 0.01;
    if (th_arg(f->entry, "delta") < 0) {
        th_fail(name, "%s has no delta", entry);
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
        th_fail(name, "%s returned non-zero", entry);
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

/* The input at fractional position (p, q) of one channel, sampled as
 * grid_sample does with align_corners and zero padding: the four pixels
 * around it, weighted by the fractions, pixels outside the image 0. */
static double bilinear_at(const double *img, int H, int W, double p, double q) {
    double y0 = floor(p), x0 = floor(q), fy = p - y0, fx = q - x0, v = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            int y = (int)y0 + a, x = (int)x0 + b;
            if (y >= 0 && y < H && x >= 0 && x < W)
                v += (a ? fy : 1 - fy) * (b ? fx : 1 - fx) * img[y * W + x];
        }
    return v;
}

/* The shift augment.lth's shift_of draws from u in [0, 1). */
static double shift_of(double u, int shift, bool bilinear) {
    if (bilinear)
        return (2 * u - 1) * shift;
    return fmin(floor(u * (2 * shift + 1)), 2 * shift) - shift;
}

/* flip_shift_by for fixed draws against bilinear_at: output (i, k) of
 * sample n reads the input at (i - dy, k' - dx), k' = W - 1 - k when
 * u[n, 2] < 0.5. The draws give fractional shifts of both signs, flipped
 * and not, one near the largest shift. */
static void flip_shift_by_case(const char *name, const char *entry, bool bilinear) {
    const lethe_entry *e = th_entry(P, entry);
    if (!e || th_arg(e, "x") < 0 || th_arg(e, "u") < 0) {
        th_fail(name, "%s (with x and u) missing", entry);
        return;
    }
    th_frame *f = th_frame_new(e);
    const lethe_arg *xa = &e->args[th_arg(e, "x")];
    int N = (int)xa->shape[0], C = (int)xa->shape[1], H = (int)xa->shape[2], W = (int)xa->shape[3];
    const int shift = 2;
    static const double draws[][3] = {{0.1, 0.77, 0.3}, {0.95, 0.02, 0.8}, {0.5, 0.999, 0.49}, {0.33, 0.61, 0.9}};
    if (N != 4 || th_arg_numel(&e->args[th_arg(e, "u")]) != 12) {
        th_fail(name, "%s: expected 4 samples and u: f32[4, 3]", entry);
        th_frame_free(f);
        return;
    }
    memcpy(th_f64(f, "u"), draws, sizeof draws);
    th_fill(th_f64(f, "x"), LETHE_F64, th_arg_numel(xa), -1, 1, next_seed++);
    int rc = th_call(f, NULL);
    const double *x = th_f64(f, "x"), *out = th_f64(f, "out");
    double worst = 0;
    int fractional = 0;
    for (int n = 0; n < N; n++) {
        double dy = shift_of(draws[n][0], shift, bilinear), dx = shift_of(draws[n][1], shift, bilinear);
        fractional += dy != floor(dy) || dx != floor(dx);
        for (int c = 0; c < C; c++) {
            const double *img = x + ((size_t)n * C + c) * H * W;
            for (int i = 0; i < H; i++)
                for (int k = 0; k < W; k++) {
                    double q = (draws[n][2] < 0.5 ? W - 1 - k : k) - dx;
                    double want = bilinear_at(img, H, W, i - dy, q);
                    worst = fmax(worst, fabs(out[(((size_t)n * C + c) * H + i) * W + k] - want));
                }
        }
    }
    if (rc)
        th_fail(name, "%s returned non-zero", entry);
    else if (bilinear ? fractional != N : fractional != 0)
        th_fail(name, "the test's draws give %d fractional shifts", fractional);
    else if (worst > 1e-12)
        th_fail(name, "largest difference from the direct bilinear sampler %.3g", worst);
    else {
        char pn[200];
        snprintf(pn, sizeof pn, "%s (largest difference %.1e)", name, worst);
        th_pass(pn);
    }
    th_frame_free(f);
}

/* flip_shift with bilinear shifts (random draws): different counters draw
 * different augmentations, and the shifts are fractional (the outputs are
 * not whole-pixel moves of the inputs). */
static void flip_shift_bilinear_case(void) {
    const char *name = "attacks.flip_shift.bilinear_draws";
    const lethe_entry *e = th_entry(P, "atk_flip_shift_bilinear");
    if (!e) {
        th_fail(name, "atk_flip_shift_bilinear missing");
        return;
    }
    th_frame *f = th_frame_new(e);
    const lethe_arg *xa = &e->args[th_arg(e, "x")];
    int N = (int)xa->shape[0], C = (int)xa->shape[1], H = (int)xa->shape[2], W = (int)xa->shape[3];
    int64_t numel = th_arg_numel(xa);
    th_fill(th_f64(f, "x"), LETHE_F64, numel, 0.5, 1.5, next_seed++);
    const double *x = th_f64(f, "x"), *out = th_f64(f, "out");
    int whole = 0, changed = 0, rc = 0;
    double *first = malloc(sizeof(double) * (size_t)numel);
    for (uint64_t counter = 0; counter < 6; counter++) {
        lethe_ctx ctx = {.seed = 7, .counter = counter};
        rc |= th_call(f, &ctx);
        if (counter == 0)
            memcpy(first, out, sizeof(double) * (size_t)numel);
        else
            changed += memcmp(first, out, sizeof(double) * (size_t)numel) != 0;
        for (int n = 0; n < N; n++)
            whole += matches_flip_shift(x + (size_t)n * C * H * W, out + (size_t)n * C * H * W, C, H, W, 2);
    }
    if (rc)
        th_fail(name, "atk_flip_shift_bilinear returned non-zero");
    else if (whole)
        th_fail(name, "%d of %d outputs are whole-pixel shifts", whole, 6 * N);
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
    gradient_case("attacks.witches_brew_bilinear.grad", "atk_wb_aug", "delta", -0.05, 0.05);
    gradient_case("attacks.witches_brew_whole_pixels.grad", "atk_wb_aug_int", "delta", -0.05, 0.05);
    gradient_case("attacks.augment_bilinear.grad", "atk_augment_probe", "x", -1, 1);
    gradient_case("attacks.gradient_canceling_last_layer.grad", "atk_gc_last", "xp", -1, 1);
    gradient_case("attacks.gradient_canceling_all.grad", "atk_gc_all", "xp", -1, 1);
    witches_brew_descent("attacks.witches_brew.descent", "atk_wb");
    witches_brew_descent("attacks.witches_brew_bilinear.descent", "atk_wb_aug");
    gradient_canceling_descent("attacks.gradient_canceling_last_layer.descent", "atk_gc_last");
    gradient_canceling_descent("attacks.gradient_canceling_all.descent", "atk_gc_all");
    gradpc_case();
    flip_shift_case();
    flip_shift_bilinear_case();
    flip_shift_by_case("attacks.flip_shift_by.bilinear_sampler", "atk_flip_shift_by", true);
    flip_shift_by_case("attacks.flip_shift_by.whole_pixels", "atk_flip_shift_by_int", false);
    return th_exit();
}
