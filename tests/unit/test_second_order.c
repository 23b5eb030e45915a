/* test_second_order.c: gradients through gradients, through the real
 * compiler, against finite differences of the compiled first-order quantity.
 *
 * tests/lth/second_order.lth (compiled once with --f64):
 *   (a) ||grad_theta L(theta; x, y)||^2 of an MLP (graphs/models/mlp.lth,
 *       relu) and of a gelu/tanh MLP, w.r.t. x; the MLP's value is also
 *       checked against a hand-written forward/backward pass in C
 *   (b) 1 - cosine(grad_theta L(x1, y1), grad_theta L(x2, y2)) of
 *       graphs/models/cnn.lth's SmallCNN (conv, batch norm in train mode,
 *       relu, max pooling, linear), w.r.t. x1
 *   (c) ||g||^2 + 0.5 ||g|| with g the parameter gradient of a tiny causal
 *       attention block (layer norm, single head, causal_mask + softmax,
 *       residual, linear head; T = 4, C = 8), w.r.t. the input
 *   (d) the gradient-matching objective of docs/language.md: its `grad`
 *       output against differences of its `loss`, and its step
 *       delta <- clamp(delta - lr sign(grad), -eps, eps)
 * Central differences with h = 1e-6; error max_j |g_j - fd_j| / max(|fd_j|,
 * 0.1 max|fd|) must stay below 1e-6.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

#define SO_LTH "tests/lth/second_order.lth"
static const double FD_H = 1e-6, TOL = 1e-6;

static const lethe_program *P;
static uint64_t next_seed = 11;

/* Fill the workspace and every output with 0xFF bytes (NaN, -1, 255) so that
 * a kernel that reads memory it did not write shows up. */
static void poison(th_frame *f) {
    memset(f->workspace, 0xFF, (size_t)f->entry->workspace_bytes);
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_OUTPUT)
            memset(f->args[i], 0xFF, (size_t)th_arg_numel(&f->entry->args[i]) * th_dtype_size(f->entry->args[i].dtype));
}

static void report(const char *name, double worst, double tol, int64_t n, const char *what, int64_t at, double got, double want) {
    if (worst < tol) {
        char pn[256];
        snprintf(pn, sizeof pn, "%s (worst rel err %.2e over %lld elements)", name, worst, (long long)n);
        th_pass(pn);
    } else
        th_fail(name, "worst rel err %.3e at %s[%lld]: %.12g, expected %.12g", worst, what, (long long)at, got, want);
}

/* ---------------------------------------------------------------------------
 * (a) check: the squared parameter-gradient norm of the relu MLP, by hand.
 * MLP(din, hidden, classes): z = x W1^T + b1, h = relu(z), o = h W2^T + b2,
 * L = mean_n (logsumexp(o_n) - o_n[y_n]). */
static double mlp_sq_grad_norm(th_frame *f) {
    const lethe_entry *e = f->entry;
    const lethe_arg *wa = &e->args[th_arg(e, "m.fc1.w")], *w2a = &e->args[th_arg(e, "m.fc2.w")], *xa = &e->args[th_arg(e, "x")];
    int H = (int)wa->shape[0], D = (int)wa->shape[1], K = (int)w2a->shape[0], N = (int)xa->shape[0];
    const double *W1 = th_f64(f, "m.fc1.w"), *b1 = th_f64(f, "m.fc1.b"), *W2 = th_f64(f, "m.fc2.w"), *b2 = th_f64(f, "m.fc2.b");
    const double *x = th_f64(f, "x");
    const int32_t *y = th_i32(f, "y");
    double *z = calloc((size_t)(N * H), sizeof(double)), *dz = calloc((size_t)(N * H), sizeof(double));
    double *dW1 = calloc((size_t)(H * D), sizeof(double)), *db1 = calloc((size_t)H, sizeof(double));
    double *dW2 = calloc((size_t)(K * H), sizeof(double)), *db2 = calloc((size_t)K, sizeof(double));
    double *o = calloc((size_t)K, sizeof(double));
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < H; j++) {
            double s = b1[j];
            for (int d = 0; d < D; d++)
                s += x[n * D + d] * W1[j * D + d];
            z[n * H + j] = s;
        }
        double mx = -INFINITY, se = 0;
        for (int k = 0; k < K; k++) {
            double s = b2[k];
            for (int j = 0; j < H; j++)
                s += fmax(z[n * H + j], 0) * W2[k * H + j];
            o[k] = s;
            mx = fmax(mx, s);
        }
        for (int k = 0; k < K; k++)
            se += exp(o[k] - mx);
        for (int k = 0; k < K; k++) {
            double dout = (exp(o[k] - mx) / se - (k == y[n])) / N;   /* dL/do */
            db2[k] += dout;
            for (int j = 0; j < H; j++) {
                dW2[k * H + j] += dout * fmax(z[n * H + j], 0);
                dz[n * H + j] += dout * W2[k * H + j] * (z[n * H + j] > 0);
            }
        }
    }
    for (int n = 0; n < N; n++)
        for (int j = 0; j < H; j++) {
            db1[j] += dz[n * H + j];
            for (int d = 0; d < D; d++)
                dW1[j * D + d] += dz[n * H + j] * x[n * D + d];
        }
    double s = 0;
    for (int i = 0; i < H * D; i++)
        s += dW1[i] * dW1[i];
    for (int i = 0; i < H; i++)
        s += db1[i] * db1[i];
    for (int i = 0; i < K * H; i++)
        s += dW2[i] * dW2[i];
    for (int i = 0; i < K; i++)
        s += db2[i] * db2[i];
    free(z), free(dz), free(dW1), free(db1), free(dW2), free(db2), free(o);
    return s;
}

/* ---------------------------------------------------------------------------
 * (a)-(c): g = grad(f, x) against differences of f */

static void second_order_case(const char *name, const char *fe, const char *ge, const char *wrt, int classes, bool check_mlp) {
    const lethe_entry *ef = th_entry(P, fe), *eg = th_entry(P, ge);
    if (!ef || !eg) {
        th_fail(name, "entry %s missing", !ef ? fe : ge);
        return;
    }
    th_frame *ff = th_frame_new(ef), *fg = th_frame_new(eg);
    poison(ff);
    poison(fg);
    th_fill_args(ff, TH_INPUT_KINDS, classes, &next_seed);
    int xi = th_arg(ef, wrt);
    if (th_copy_by_name(fg, ff, ~(1u << LETHE_OUTPUT)) || xi < 0 || th_arg(eg, "out") < 0 ||
        th_arg_numel(&eg->args[th_arg(eg, "out")]) != th_arg_numel(&ef->args[xi])) {
        th_fail(name, "%s and %s do not have matching arguments", fe, ge);
        goto done;
    }
    int rc = th_call(fg, NULL) | th_call(ff, NULL);
    double f0 = th_f64(ff, "out")[0];
    if (check_mlp) {
        char vn[128];
        snprintf(vn, sizeof vn, "%s.value", name);
        double want = mlp_sq_grad_norm(ff), e = fabs(f0 - want) / fabs(want);
        char pn[200];
        snprintf(pn, sizeof pn, "%s (rel err %.2e against a hand-written backward pass)", vn, e);
        if (e < 1e-12)
            th_pass(pn);
        else
            th_fail(vn, "||grad||^2 = %.15g, the hand-written backward pass gives %.15g", f0, want);
    }
    const double *g = th_f64(fg, "out");
    double *x = ff->args[xi];
    int64_t n = th_arg_numel(&ef->args[xi]);
    double *fd = malloc(sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++) {
        double save = x[j];
        x[j] = save + FD_H;
        rc |= th_call(ff, NULL);
        double lp = th_f64(ff, "out")[0];
        x[j] = save - FD_H;
        rc |= th_call(ff, NULL);
        double lm = th_f64(ff, "out")[0];
        x[j] = save;
        fd[j] = (lp - lm) / (2 * FD_H);
    }
    if (rc)
        th_fail(name, "an entry returned non-zero");
    else if (!isfinite(f0) || f0 == 0)
        th_fail(name, "the first-order quantity is %g", f0);
    else {
        int64_t at;
        double worst = th_fd_err(g, fd, n, &at);
        report(name, worst, TOL, n, wrt, at, g[at], fd[at]);
    }
    free(fd);
done:
    th_frame_free(ff);
    th_frame_free(fg);
}

/* ---------------------------------------------------------------------------
 * (d) the objective: loss and grad outputs, delta updated in place */

static void objective_case(void) {
    const char *name = "second_order.gradient_matching";
    const lethe_entry *e = th_entry(P, "so_gm");
    if (!e) {
        th_fail(name, "entry so_gm missing");
        return;
    }
    if (th_arg(e, "delta") < 0 || th_arg(e, "loss") < 0 || th_arg(e, "grad") < 0 || th_arg(e, "lr") < 0 || th_arg(e, "eps") < 0) {
        th_fail(name, "so_gm lacks one of delta, loss, grad, lr, eps");
        return;
    }
    th_frame *f = th_frame_new(e);
    poison(f);
    th_fill_args(f, TH_INPUT_KINDS, 3, &next_seed);
    int64_t n = th_arg_numel(&e->args[th_arg(e, "delta")]);
    double *delta = th_f64(f, "delta"), *base = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)n);
    double *fd = malloc(sizeof(double) * (size_t)n);
    th_fill(base, LETHE_F64, n, -0.05, 0.05, next_seed++);
    double eps = *th_f64(f, "eps"), lr = *th_f64(f, "lr");
    /* lr large enough that some steps leave the ball and get clamped */
    lr = 0.03;
    *th_f64(f, "lr") = lr;
    memcpy(delta, base, sizeof(double) * (size_t)n);
    int rc = th_call(f, NULL);
    double loss0 = *th_f64(f, "loss");
    memcpy(g, th_f64(f, "grad"), sizeof(double) * (size_t)n);
    /* the step: delta <- clamp(delta - lr sign(grad), -eps, eps) */
    double worst_step = 0;
    int64_t at_step = 0, clamped = 0;
    for (int64_t j = 0; j < n; j++) {
        double s = g[j] > 0 ? 1 : g[j] < 0 ? -1 : 0;
        double want = fmin(fmax(base[j] - lr * s, -eps), eps);
        clamped += fabs(base[j] - lr * s) > eps;
        double err = fabs(delta[j] - want);
        if (err > worst_step)
            worst_step = err, at_step = j;
    }
    for (int64_t j = 0; j < n; j++) {
        memcpy(delta, base, sizeof(double) * (size_t)n);
        delta[j] = base[j] + FD_H;
        rc |= th_call(f, NULL);
        double lp = *th_f64(f, "loss");
        memcpy(delta, base, sizeof(double) * (size_t)n);
        delta[j] = base[j] - FD_H;
        rc |= th_call(f, NULL);
        double lm = *th_f64(f, "loss");
        fd[j] = (lp - lm) / (2 * FD_H);
    }
    if (rc)
        th_fail(name, "so_gm returned non-zero");
    else if (!(loss0 > 0 && loss0 < 2))
        th_fail(name, "1 - cosine = %g is outside (0, 2)", loss0);
    else {
        int64_t at;
        double worst = th_fd_err(g, fd, n, &at);
        report(name, worst, TOL, n, "delta", at, g[at], fd[at]);
        char sn[200], pn[300];
        snprintf(sn, sizeof sn, "%s.step", name);
        snprintf(pn, sizeof pn, "%s (worst abs err %.2e; %lld of %lld elements clamped to eps)", sn, worst_step, (long long)clamped, (long long)n);
        if (worst_step <= 1e-15)
            th_pass(pn);
        else
            th_fail(sn, "delta after the step differs from clamp(delta - lr sign(grad), -eps, eps) by %.3e at %lld: got %.17g", worst_step,
                    (long long)at_step, delta[at_step]);
    }
    free(base), free(g), free(fd);
    th_frame_free(f);
}

int main(void) {
    char *err = NULL;
    P = th_compile_file(SO_LTH, "--f64", &err);
    if (!P) {
        th_fail("second_order.compile", "lethec %s --f64 failed:\n%s", SO_LTH, err ? err : "?");
        free(err);
        return th_exit();
    }
    second_order_case("second_order.mlp_sq_grad_norm", "so_mlp_f", "so_mlp_g", "x", 3, true);
    second_order_case("second_order.gelu_tanh_mlp_sq_grad_norm", "so_tanh_f", "so_tanh_g", "x", 4, false);
    second_order_case("second_order.cnn_bn_grad_cosine", "so_cnn_f", "so_cnn_g", "x1", 3, false);
    second_order_case("second_order.causal_attention_grad_loss", "so_attn_f", "so_attn_g", "x", 3, false);
    objective_case();
    return th_exit();
}
