/* test_gradcheck.c: the gradient of every differentiable builtin, through
 * the real compiler, against central finite differences.
 *
 * tests/lth/gradcheck.lth has, per case, f_NAME = sum(w * op(inputs)) (w a
 * fixed random input) and g_NAME = grad(f_NAME, one input). Both are
 * compiled once with --f64 and called on the same random inputs; g is
 * compared with (f(x + h e_j) - f(x - h e_j)) / 2h, h = 1e-6, for every
 * element j of the differentiated input. Inputs avoid kinks (logs and roots
 * of positives; th_fill never gives values near 0 for relu/abs; random
 * values make ties in max/maximum/pooling practically impossible).
 * Error: max_j |g_j - fd_j| / max(|fd_j|, 0.1 max|fd|) must stay below 1e-6.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

__attribute__((weak)) unsigned dump_flags;
__attribute__((weak)) FILE *dump_file;

#define GC_LTH "tests/lth/gradcheck.lth"
static const double FD_H = 1e-6, TOL = 1e-6;

static const lethe_program *P;
static uint64_t next_seed = 7;

typedef struct Case {
    const char *f, *g, *wrt;
    const char *ranges;   /* "name=lo:hi ..." overriding [-1, 1) (i32: [0, 3)) */
} Case;

static const Case cases[] = {
    /* unary */
    {"f_exp", "g_exp", "x", "x=-2:2"},
    {"f_log", "g_log", "x", "x=0.3:3"},
    {"f_sqrt", "g_sqrt", "x", "x=0.3:3"},
    {"f_rsqrt", "g_rsqrt", "x", "x=0.3:3"},
    {"f_tanh", "g_tanh", "x", "x=-2:2"},
    {"f_sigmoid", "g_sigmoid", "x", "x=-4:4"},
    {"f_relu", "g_relu", "x", ""},
    {"f_gelu", "g_gelu", "x", "x=-3:3"},
    {"f_abs", "g_abs", "x", ""},
    {"f_sign", "g_sign", "x", ""},
    {"f_neg", "g_neg", "x", ""},
    {"f_sq", "g_sq", "x", "x=-2:2"},
    {"f_cube", "g_cube", "x", "x=-2:2"},
    {"f_lit", "g_lit", "x", "x=0.5:2"},
    /* binary with broadcasting */
    {"f_add", "g_add_a", "a", ""},
    {"f_add", "g_add_b", "b", ""},
    {"f_sub", "g_sub_a", "a", ""},
    {"f_sub", "g_sub_b", "b", ""},
    {"f_mul", "g_mul_a", "a", ""},
    {"f_mul", "g_mul_b", "b", ""},
    {"f_div", "g_div_a", "a", "b=0.5:2"},
    {"f_div", "g_div_b", "b", "b=0.5:2"},
    {"f_pow", "g_pow_a", "a", "a=0.3:2 b=-2:2"},
    {"f_pow", "g_pow_b", "b", "a=0.3:2 b=-2:2"},
    {"f_maximum", "g_maximum_a", "a", ""},
    {"f_maximum", "g_maximum_b", "b", ""},
    {"f_minimum", "g_minimum_a", "a", ""},
    {"f_minimum", "g_minimum_b", "b", ""},
    {"f_where", "g_where_a", "a", ""},
    {"f_where", "g_where_b", "b", ""},
    /* reductions */
    {"f_sum", "g_sum", "x", ""},
    {"f_mean", "g_mean", "x", ""},
    {"f_max", "g_max", "x", "x=-2:2"},
    {"f_min", "g_min", "x", "x=-2:2"},
    {"f_lse", "g_lse", "x", "x=-2:2"},
    {"f_lse_all", "g_lse_all", "x", "x=-2:2"},
    {"f_var", "g_var", "x", "x=-2:2"},
    {"f_var_all", "g_var_all", "x", "x=-2:2"},
    {"f_norm", "g_norm", "x", "x=-2:2"},
    {"f_norm_all", "g_norm_all", "x", "x=-2:2"},
    /* matmul */
    {"f_mm", "g_mm_a", "a", ""},
    {"f_mm", "g_mm_b", "b", ""},
    {"f_bcmm", "g_bcmm_a", "a", ""},
    {"f_bcmm", "g_bcmm_b", "b", ""},
    {"f_vm", "g_vm_a", "a", ""},
    {"f_vm", "g_vm_b", "b", ""},
    {"f_mv", "g_mv_a", "a", ""},
    {"f_mv", "g_mv_b", "b", ""},
    {"f_mmt", "g_mmt_a", "a", "a=-0.5:0.5"},
    {"f_mmt", "g_mmt_b", "b", "a=-0.5:0.5"},
    /* shapes */
    {"f_reshape", "g_reshape", "x", ""},
    {"f_perm", "g_perm", "x", ""},
    {"f_bcast", "g_bcast", "x", ""},
    {"f_slice", "g_slice", "x", ""},
    {"f_concat", "g_concat_a", "a", ""},
    {"f_concat", "g_concat_b", "b", ""},
    {"f_split", "g_split", "x", ""},
    {"f_sqz", "g_sqz", "x", ""},
    /* indexing: repeated indices, so gradients accumulate */
    {"f_take", "g_take", "x", "idx=0:3"},
    {"f_take1", "g_take1", "x", "idx=0:4"},
    {"f_take_row", "g_take_row", "x", "y=0:4"},
    {"f_embedding", "g_embedding", "e", "idx=0:5"},
    /* neural */
    {"f_conv", "g_conv_x", "x", ""},
    {"f_conv", "g_conv_k", "k", ""},
    {"f_conv1", "g_conv1_x", "x", ""},
    {"f_conv1", "g_conv1_k", "k", ""},
    {"f_maxpool", "g_maxpool", "x", "x=-2:2"},
    {"f_maxpool2", "g_maxpool2", "x", "x=-2:2"},
    {"f_avgpool", "g_avgpool", "x", ""},
    {"f_softmax", "g_softmax", "x", "x=-2:2"},
    {"f_log_softmax", "g_log_softmax", "x", "x=-2:2"},
    {"f_causal", "g_causal", "s", "s=-2:2"},
    {"f_attn", "g_attn_q", "q", "q=-2:2 k=-2:2"},
    {"f_attn", "g_attn_k", "k", "q=-2:2 k=-2:2"},
    {"f_attn", "g_attn_v", "v", "q=-2:2 k=-2:2"},
    {"f_layernorm", "g_layernorm_x", "x", "x=-2:2 g=0.5:1.5"},
    {"f_layernorm", "g_layernorm_g", "g", "x=-2:2 g=0.5:1.5"},
    {"f_layernorm", "g_layernorm_b", "b", "x=-2:2 g=0.5:1.5"},
    {"f_batchnorm", "g_batchnorm_x", "x", "x=-2:2 g=0.5:1.5 rv=0.5:2"},
    {"f_batchnorm", "g_batchnorm_g", "g", "x=-2:2 g=0.5:1.5 rv=0.5:2"},
    {"f_xent", "g_xent", "x", "x=-2:2 y=0:5"},
    /* second order (gradcheck.lth's H_*): Hessian-vector products */
    {"f_lse_2", "g_lse_2", "x", "x=-2:2"},
    {"f_lse_all_2", "g_lse_all_2", "x", "x=-2:2"},
    {"f_softmax_2", "g_softmax_2", "x", "x=-2:2"},
    {"f_log_softmax_2", "g_log_softmax_2", "x", "x=-2:2"},
    {"f_causal_2", "g_causal_2", "s", "s=-2:2"},
    {"f_attn_2", "g_attn_2", "q", "q=-2:2 k=-2:2"},
    {"f_xent_2", "g_xent_2", "x", "x=-2:2 y=0:5"},
    {"f_take_row_2", "g_take_row_2", "x", "x=-2:2 y=0:4"},
    {"f_kl", "g_kl", "x", "x=-2:2 t=-2:2"},
    {"f_cosine", "g_cosine", "x", ""},
};

/* Fill the workspace and every output with 0xFF bytes (NaN, -1, 255) so that
 * a kernel that reads memory it did not write shows up. */
static void poison(th_frame *f) {
    memset(f->workspace, 0xFF, (size_t)f->entry->workspace_bytes);
    for (int i = 0; i < f->entry->nargs; i++)
        if (f->entry->args[i].kind == LETHE_OUTPUT)
            memset(f->args[i], 0xFF, (size_t)th_arg_numel(&f->entry->args[i]) * th_dtype_size(f->entry->args[i].dtype));
}

static void fill_arg(th_frame *f, int i, double lo, double hi) {
    const lethe_arg *a = &f->entry->args[i];
    th_fill(f->args[i], a->dtype, th_arg_numel(a), lo, hi, next_seed++);
}

/* apply "name=lo:hi" overrides */
static void apply_ranges(th_frame *f, const char *ranges) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", ranges);
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
        char name[64];
        double lo, hi;
        if (sscanf(tok, "%63[^=]=%lf:%lf", name, &lo, &hi) != 3)
            continue;
        int i = th_arg(f->entry, name);
        if (i >= 0)
            fill_arg(f, i, lo, hi);
    }
}

static double call_scalar(th_frame *f, int *rc) {
    *rc |= th_call(f, NULL);
    return th_f64(f, "out")[0];
}

static void run_case(const Case *c) {
    char name[128];
    snprintf(name, sizeof name, "grad.%s", c->g + 2);
    const lethe_entry *ef = th_entry(P, c->f), *eg = th_entry(P, c->g);
    if (!ef || !eg) {
        th_fail(name, "entry %s missing from the compiled program", !ef ? c->f : c->g);
        return;
    }
    th_frame *ff = th_frame_new(ef), *fg = th_frame_new(eg);
    poison(ff);
    poison(fg);
    for (int i = 0; i < ef->nargs; i++)
        if (ef->args[i].kind == LETHE_INPUT)
            fill_arg(ff, i, ef->args[i].dtype == LETHE_I32 ? 0 : -1, ef->args[i].dtype == LETHE_I32 ? 3 : 1);
    apply_ranges(ff, c->ranges);
    /* g gets the same inputs (it may read fewer: a linear op's gradient does not read x) */
    for (int i = 0; i < eg->nargs; i++) {
        const lethe_arg *a = &eg->args[i];
        if (a->kind != LETHE_INPUT)
            continue;
        int j = th_arg(ef, a->name);
        if (j < 0 || th_arg_numel(&ef->args[j]) != th_arg_numel(a) || ef->args[j].dtype != a->dtype) {
            th_fail(name, "%s reads %s, which %s does not have", c->g, a->name, c->f);
            goto done;
        }
        memcpy(fg->args[i], ff->args[j], (size_t)th_arg_numel(a) * th_dtype_size(a->dtype));
    }
    int xi = th_arg(ef, c->wrt), go = th_arg(eg, "out");
    if (xi < 0 || go < 0 || ef->args[xi].dtype != LETHE_F64) {
        th_fail(name, "%s has no f64 input %s, or %s no output", c->f, c->wrt, c->g);
        goto done;
    }
    const lethe_arg *xa = &ef->args[xi], *ga = &eg->args[go];
    bool same = xa->rank == ga->rank && th_arg_numel(xa) == th_arg_numel(ga);
    for (int d = 0; same && d < xa->rank; d++)
        same = xa->shape[d] == ga->shape[d];
    if (!same) {
        th_fail(name, "the gradient's shape differs from %s's", c->wrt);
        goto done;
    }
    int rc = th_call(fg, NULL);
    const double *g = th_f64(fg, "out");
    double *x = ff->args[xi];
    int64_t n = th_arg_numel(xa);
    double *fd = malloc(sizeof(double) * (size_t)n);
    for (int64_t j = 0; j < n; j++) {
        double save = x[j];
        x[j] = save + FD_H;
        double lp = call_scalar(ff, &rc);
        x[j] = save - FD_H;
        double lm = call_scalar(ff, &rc);
        x[j] = save;
        fd[j] = (lp - lm) / (2 * FD_H);
    }
    if (rc) {
        th_fail(name, "an entry returned non-zero");
        free(fd);
        goto done;
    }
    double mx = 0;
    for (int64_t j = 0; j < n; j++)
        mx = fmax(mx, fabs(fd[j]));
    double floor = mx > 0 ? 0.1 * mx : 1e-6, worst = 0;
    int64_t at = 0;
    for (int64_t j = 0; j < n; j++) {
        double e = fabs(g[j] - fd[j]) / fmax(fabs(fd[j]), floor);
        if (!(e <= worst)) {
            worst = e;
            at = j;
        }
    }
    if (worst < TOL) {
        char pn[200];
        snprintf(pn, sizeof pn, "%s (worst rel err %.2e over %lld elements)", name, worst, (long long)n);
        th_pass(pn);
    } else {
        th_fail(name, "worst rel err %.3e at %s[%lld]: grad %.12g, finite differences %.12g", worst, c->wrt, (long long)at, g[at], fd[at]);
    }
    free(fd);
done:
    th_frame_free(ff);
    th_frame_free(fg);
}

int main(void) {
    char *err = NULL;
    P = th_compile_file(GC_LTH, "--f64", &err);
    if (!P) {
        th_fail("grad.compile", "lethec %s --f64 failed:\n%s", GC_LTH, err ? err : "?");
        free(err);
        return th_exit();
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i]);
    return th_exit();
}
