/* test_opt_levels.c: -O0 and -O3 compute the same thing.
 *
 * tests/lth/opt_levels.lth (an MLP SGD step and a SmallCNN SGD step from
 * graphs/train/sgd.lth, and a few fused op mixes: conv + pooling +
 * log_softmax, GEMM + gelu/sigmoid/norm/logsumexp, layer norm + causal
 * attention, a gradient, random noise) is compiled at -O0 and at -O3. Rules
 * run init_model (same seed), init_state and then two steps on the same
 * batch; fns run on the same random inputs (and seed). Every output and
 * every updated parameter, buffer and state tensor must agree within 1e-5,
 * relative to the tensor's largest value (max|a - b| / max|b|). The steps
 * use runtime hyperparameters other than the defaults, and the MLP step is
 * also checked against a hand-written torch.optim.SGD step (momentum, weight
 * decay; the parameter update uses the new momentum) in double precision.
 * Two entries also run on a 2-thread lethe_pool against a serial run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "threadpool.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

#define OL_LTH "tests/lth/opt_levels.lth"
static const double TOL = 1e-5;

static const lethe_program *P0, *P3;
static lethe_pool *POOL;   /* when set, entries run on it (2 threads) */

/* Fill the workspace and every output with 0xFF bytes (NaN, -1, 255) so that
 * a kernel that reads memory it did not write shows up. */
static void poison(th_frame *f) {
    memset(f->workspace, 0xFF, (size_t)f->entry->workspace_bytes);
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_OUTPUT)
            memset(f->args[i], 0xFF, (size_t)th_arg_numel(&f->entry->args[i]) * th_dtype_size(f->entry->args[i].dtype));
}

/* Runtime hyperparameters of the SGD steps: not the defaults, so that the
 * scalars are really read */
static void set_scalars(th_frame *f) {
    static const struct {
        const char *name;
        double v;
    } sc[] = {{"lr", 0.05}, {"momentum", 0.8}, {"wd", 1e-3}};
    for (int k = 0; k < 3; k++) {
        int i = th_arg(f->entry, sc[k].name);
        if (i >= 0 && f->entry->args[i].dtype == LETHE_F32)
            *(float *)f->args[i] = (float)sc[k].v;
        else if (i >= 0 && f->entry->args[i].dtype == LETHE_F64)
            *(double *)f->args[i] = sc[k].v;
    }
}

/* Prepare an entry (a rule: init_model, init_state) with deterministic
 * inputs; if `steps`, run it (rules: two steps). Returns its frame, or NULL
 * (after a FAIL). */
static th_frame *run_steps(const lethe_program *p, const char *entry, const char *tag, bool steps) {
    char name[128];
    snprintf(name, sizeof name, "opt_levels.%s.%s", entry, tag);
    const lethe_entry *e = th_entry(p, entry);
    if (!e) {
        th_fail(name, "no entry %s", entry);
        return NULL;
    }
    th_frame *f = th_frame_new(e);
    poison(f);
    lethe_ctx ctx = {.seed = 20240611, .counter = 1};
    if (POOL) {
        lethe_ctx_init(&ctx, POOL, 20240611);
        ctx.counter = 1;
    }
    uint64_t seed = 100;
    int rc = 0;
    bool rule = !strcmp(e->kind, "rule");
    if (rule) {
        char nm[160];
        snprintf(nm, sizeof nm, "%s.init_model", entry);
        const lethe_entry *ei = th_entry(p, nm);
        snprintf(nm, sizeof nm, "%s.init_state", entry);
        const lethe_entry *es = th_entry(p, nm);
        if (!ei || !es) {
            th_fail(name, "no %s.init_model or %s.init_state", entry, entry);
            th_frame_free(f);
            return NULL;
        }
        th_frame *fi = th_frame_new(ei);
        poison(fi);
        rc |= th_call(fi, &ctx);
        th_copy_by_name(f, fi, 1u << LETHE_PARAM | 1u << LETHE_BUFFER);
        th_frame *fs = th_frame_new(es);
        poison(fs);
        th_copy_by_name(fs, f, 1u << LETHE_PARAM | 1u << LETHE_BUFFER);
        rc |= th_call(fs, &ctx);
        th_copy_by_name(f, fs, 1u << LETHE_STATE);
        th_frame_free(fi);
        th_frame_free(fs);
    }
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind != LETHE_INPUT)
            continue;
        if (a->dtype == LETHE_I32)
            th_fill(f->args[i], a->dtype, th_arg_numel(a), 0, 3, seed++);
        else
            th_fill(f->args[i], a->dtype, th_arg_numel(a), -1, 1, seed++);
    }
    set_scalars(f);
    if (steps) {
        rc |= th_call(f, &ctx);
        if (rule) {
            ctx.counter++;
            rc |= th_call(f, &ctx);
        }
    }
    if (rc) {
        th_fail(name, "an entry returned non-zero");
        th_frame_free(f);
        return NULL;
    }
    return f;
}

static th_frame *run(const lethe_program *p, const char *entry, const char *tag) { return run_steps(p, entry, tag, true); }

/* -O0 against -O3, or with `pooled`, -O3 serial against -O3 on 2 threads */
static void compare(const char *entry, bool pooled) {
    th_frame *a = run(pooled ? P3 : P0, entry, pooled ? "O3" : "O0");
    if (pooled)
        POOL = lethe_pool_new(2);
    th_frame *b = pooled && !POOL ? NULL : run(P3, entry, pooled ? "O3.pool2" : "O3");
    if (POOL) {
        lethe_pool_free(POOL);
        POOL = NULL;
    }
    if (!a || !b) {
        th_frame_free(a);
        th_frame_free(b);
        return;
    }
    char name[128];
    snprintf(name, sizeof name, "opt_levels.%s%s", entry, pooled ? ".serial_vs_pool2" : "");
    double worst = 0;
    const char *where = "";
    int64_t at = 0, nvals = 0;
    int nargs = 0;
    bool ok = true;
    for (int i = 0; i < a->entry->nargs; i++) {
        const lethe_arg *x = &a->entry->args[i];
        if (x->kind == LETHE_INPUT || x->kind == LETHE_SCALAR || !(x->access & LETHE_WRITE))
            continue;
        int j = th_arg(b->entry, x->name);
        if (j < 0 || th_arg_numel(&b->entry->args[j]) != th_arg_numel(x) || b->entry->args[j].dtype != x->dtype) {
            th_fail(name, "argument %s differs between -O0 and -O3", x->name);
            ok = false;
            continue;
        }
        int64_t n = th_arg_numel(x);
        double mx = 0;
        for (int64_t k = 0; k < n; k++)
            if (isfinite(lethe_elem_f64(b->args[j], x->dtype, k)))
                mx = fmax(mx, fabs(lethe_elem_f64(b->args[j], x->dtype, k)));
        /* norm-wise: relative to the tensor's largest value. Elementwise
         * comparisons would flag f32 rounding in small elements that come
         * from cancelling sums (a batch-norm gamma gradient over 4096
         * values), which reassociation at -O3 legitimately changes */
        double floor = mx > 0 ? mx : 1e-30;
        for (int64_t k = 0; k < n; k++) {
            double u = lethe_elem_f64(a->args[i], x->dtype, k), v = lethe_elem_f64(b->args[j], x->dtype, k);
            double e = u == v ? 0 : fabs(u - v) / fmax(fabs(v), floor);
            if (!(e <= worst)) {
                worst = e;
                where = x->name;
                at = k;
            }
        }
        nvals += n;
        nargs++;
    }
    if (!ok)
        ;
    else if (nargs == 0)
        th_fail(name, "nothing written to compare");
    else if (worst <= TOL) {
        char pn[256];
        snprintf(pn, sizeof pn, "%s (worst rel diff %.2e over %d outputs/updated tensors, %lld values)", name, worst, nargs, (long long)nvals);
        th_pass(pn);
    } else {
        int i = th_arg(a->entry, where), j = th_arg(b->entry, where);
        th_fail(name, pooled ? "serial and 2-thread runs differ by %.3e (relative) in %s[%lld]: %.9g vs %.9g" : "-O0 and -O3 differ by %.3e (relative) in %s[%lld]: %.9g vs %.9g", worst, where, (long long)at,
                lethe_elem_f64(a->args[i], a->entry->args[i].dtype, at), lethe_elem_f64(b->args[j], b->entry->args[j].dtype, at));
    }
    th_frame_free(a);
    th_frame_free(b);
}

/* ---------------------------------------------------------------------------
 * mlp_step against a hand-written SGD step (PyTorch's torch.optim.SGD with
 * momentum and weight decay) on MLP(din, hidden, classes) = fc2(relu(fc1(x)))
 * and the mean cross entropy, in double precision */

typedef struct MlpP {
    double *p[4];   /* fc1.w fc1.b fc2.w fc2.b */
    int64_t n[4];
} MlpP;
static const char *mlp_names[4] = {"fc1.w", "fc1.b", "fc2.w", "fc2.b"};

static double mlp_grad(const MlpP *m, const double *x, const int32_t *y, int N, int D, int H, int K, MlpP *g) {
    const double *W1 = m->p[0], *b1 = m->p[1], *W2 = m->p[2], *b2 = m->p[3];
    for (int k = 0; k < 4; k++)
        memset(g->p[k], 0, sizeof(double) * (size_t)m->n[k]);
    double loss = 0, *z = calloc((size_t)H, sizeof(double)), *o = calloc((size_t)K, sizeof(double));
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < H; j++) {
            z[j] = b1[j];
            for (int d = 0; d < D; d++)
                z[j] += x[n * D + d] * W1[j * D + d];
        }
        double mx = -INFINITY, se = 0;
        for (int k = 0; k < K; k++) {
            o[k] = b2[k];
            for (int j = 0; j < H; j++)
                o[k] += fmax(z[j], 0) * W2[k * H + j];
            mx = fmax(mx, o[k]);
        }
        for (int k = 0; k < K; k++)
            se += exp(o[k] - mx);
        loss += (mx + log(se) - o[y[n]]) / N;
        for (int k = 0; k < K; k++) {
            double dout = (exp(o[k] - mx) / se - (k == y[n])) / N;
            g->p[3][k] += dout;
            for (int j = 0; j < H; j++) {
                g->p[2][k * H + j] += dout * fmax(z[j], 0);
                if (z[j] > 0) {
                    g->p[1][j] += dout * W2[k * H + j];
                    for (int d = 0; d < D; d++)
                        g->p[0][j * D + d] += dout * W2[k * H + j] * x[n * D + d];
                }
            }
        }
    }
    free(z);
    free(o);
    return loss;
}

static double *as_double(th_frame *f, const char *name, int64_t *n) {
    int i = th_arg(f->entry, name);
    if (i < 0)
        return NULL;
    const lethe_arg *a = &f->entry->args[i];
    *n = th_arg_numel(a);
    double *v = malloc(sizeof(double) * (size_t)(*n + 1));
    for (int64_t k = 0; k < *n; k++)
        v[k] = lethe_elem_f64(f->args[i], a->dtype, k);
    return v;
}

/* Two SGD steps by hand from f0's parameters and batch; the worst error of
 * f2 (the compiled result) against them. lagged: the parameter update uses
 * the momentum from the step's start (p <- p - lr v_old) instead of
 * PyTorch's updated one. */
static double sgd_reference_error(th_frame *f0, th_frame *f2, bool lagged, char *where, size_t wsz) {
    MlpP m, v, g;
    int64_t nx = 0, ny = 0;
    bool ok = true;
    for (int k = 0; k < 4; k++) {
        char an[64];
        snprintf(an, sizeof an, "m.%s", mlp_names[k]);
        m.p[k] = as_double(f0, an, &m.n[k]);
        ok &= m.p[k] != NULL;
        if (!m.p[k])
            m.n[k] = 0;
        v.n[k] = g.n[k] = m.n[k];
        v.p[k] = calloc((size_t)m.n[k] + 1, sizeof(double));
        g.p[k] = calloc((size_t)m.n[k] + 1, sizeof(double));
    }
    double *x = as_double(f0, "batch.x", &nx), *yd = as_double(f0, "batch.y", &ny);
    double worst = INFINITY;
    snprintf(where, wsz, "mlp_step lacks m.fc1.w, ..., batch.x or batch.y");
    if (ok && x && yd && ny <= 64) {
        int32_t y[64];
        for (int64_t i = 0; i < ny; i++)
            y[i] = (int32_t)yd[i];
        int N = (int)ny, D = (int)(nx / ny), H = (int)m.n[1], K = (int)m.n[3];
        double lr = 0.05, mom = 0.8, wd = 1e-3, loss = 0;
        for (int step = 0; step < 2; step++) {
            loss = mlp_grad(&m, x, y, N, D, H, K, &g);
            for (int k = 0; k < 4; k++)
                for (int64_t i = 0; i < m.n[k]; i++) {
                    double vold = v.p[k][i];
                    v.p[k][i] = mom * v.p[k][i] + g.p[k][i] + wd * m.p[k][i];
                    m.p[k][i] -= lr * (lagged ? vold : v.p[k][i]);
                }
        }
        /* parameters, momentum, the loss reported by the second step */
        worst = 0;
        for (int k = 0; k < 9; k++) {
            char an[64];
            const double *ref;
            int64_t n, cn = 0;
            if (k < 4)
                snprintf(an, sizeof an, "m.%s", mlp_names[k]), ref = m.p[k], n = m.n[k];
            else if (k < 8)
                snprintf(an, sizeof an, "v.%s", mlp_names[k - 4]), ref = v.p[k - 4], n = v.n[k - 4];
            else
                snprintf(an, sizeof an, "loss"), ref = &loss, n = 1;
            double *got = as_double(f2, an, &cn);
            if (!got || cn != n) {
                snprintf(where, wsz, "no output %s", an);
                worst = INFINITY;
                free(got);
                break;
            }
            double mx = 0;
            for (int64_t i = 0; i < n; i++)
                mx = fmax(mx, fabs(ref[i]));
            for (int64_t i = 0; i < n; i++) {
                double e = fabs(got[i] - ref[i]) / fmax(fabs(ref[i]), 0.1 * mx);
                if (!(e <= worst)) {
                    worst = e;
                    snprintf(where, wsz, "%s[%d]: %.9g, expected %.9g", an, (int)i, got[i], ref[i]);
                }
            }
            free(got);
        }
    }
    for (int k = 0; k < 4; k++)
        free(m.p[k]), free(v.p[k]), free(g.p[k]);
    free(x);
    free(yd);
    return worst;
}

static void mlp_reference(void) {
    const char *name = "opt_levels.mlp_step.pytorch_sgd";
    th_frame *f0 = run_steps(P3, "mlp_step", "ref", false), *f2 = run(P3, "mlp_step", "ref");
    if (f0 && f2) {
        char where[160], where_lag[160];
        double worst = sgd_reference_error(f0, f2, false, where, sizeof where);
        if (worst <= TOL) {
            char pn[200];
            snprintf(pn, sizeof pn, "%s (worst rel err %.2e after two steps, lr 0.05 momentum 0.8 wd 1e-3)", name, worst);
            th_pass(pn);
        } else {
            double lag = sgd_reference_error(f0, f2, true, where_lag, sizeof where_lag);
            th_fail(name,
                    "two steps of graphs/train/sgd.lth differ from torch.optim.SGD (p <- p - lr v_new) by %.3e at %s%s",
                    worst, where,
                    lag <= TOL ? "; they match p <- p - lr v_old (rel err below 1e-5): the rule reads v from the step's start, "
                                 "so the parameters lag the momentum by one step (the first step does not move them)"
                               : "");
        }
    }
    th_frame_free(f0);
    th_frame_free(f2);
}

int main(void) {
    char *err = NULL;
    P0 = th_compile_file(OL_LTH, "-O0", &err);
    if (!P0) {
        th_fail("opt_levels.compile_O0", "lethec %s -O0 failed:\n%s", OL_LTH, err ? err : "?");
        free(err);
        return th_exit();
    }
    P3 = th_compile_file(OL_LTH, "-O3", &err);
    if (!P3) {
        th_fail("opt_levels.compile_O3", "lethec %s -O3 failed:\n%s", OL_LTH, err ? err : "?");
        free(err);
        return th_exit();
    }
    static const char *entries[] = {"mlp_step", "cnn_step", "cnn_big_step", "ops_conv_pool", "ops_gemm_mix", "ops_attn_mix", "ops_grad_mix", "ops_noise_mix"};
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++)
        compare(entries[i], false);
    compare("cnn_big_step", true);
    compare("ops_noise_mix", true);
    mlp_reference();
    return th_exit();
}
