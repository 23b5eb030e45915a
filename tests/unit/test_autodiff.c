/* test_autodiff.c: every gradient rule against central finite differences
 * of the reference evaluator, in f64, at first and second order.
 *
 * For each case: y = op(x...), L = sum(w * y) with w random. First order:
 * autodiff(L) vs (L(x + h e_j) - L(x - h e_j)) / 2h for every element of
 * every float input. Second order: L2 = sum_i sum(v_i * dL/dx_i) with v
 * random, differentiated with respect to the inputs and w (so that the
 * gradient rules of linear ops, which only involve w, are differentiated
 * too), against finite differences of L2, which evaluate the first gradient.
 * Inputs stay away from kinks (|x| >= 0.2, |a - b| >= 0.2) so that the
 * differences are smooth.
 */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "graph.h"
#include "harness.h"
#include "refeval.h"

enum { MAXIN = 4 };
static const double FD_H = 1e-6, TOL = 1e-6;

static Loc L0;

static Shape S(int rank, ...) {
    va_list ap;
    va_start(ap, rank);
    Shape s = {0};
    s.rank = rank;
    for (int i = 0; i < rank; i++)
        s.dim[i] = va_arg(ap, int);
    va_end(ap);
    return s;
}

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}

/* Domains of the random inputs */
typedef enum { D_ANY, D_POS, D_IDX, D_BOOL } Dom;

static double sample(Dom d, int hi) {
    switch (d) {
    case D_POS: return 0.5 + 1.5 * urand();
    case D_IDX: return (double)(int)(urand() * hi);
    case D_BOOL: return urand() < 0.5;
    default: return (urand() < 0.5 ? -1 : 1) * (0.2 + 1.8 * urand());
    }
}

/* A test graph: an entry whose arguments are its inputs, with their values. */
typedef struct TG {
    Graph *g;
    Entry e;
    double *vals[16];
} TG;

static Node *tg_input(TG *t, DType dt, Shape s, Dom d, int hi) {
    int arg = t->e.args.len;
    Node *n = g_input(t->g, arg, dt, s, xfmt("in%d", arg), L0);
    EntryArg a = {.name = n->name, .kind = LETHE_INPUT, .access = LETHE_READ, .dtype = dt, .shape = s, .in = n};
    vec_push(&t->e.args, a);
    int64_t k = shape_numel(s);
    t->vals[arg] = malloc(sizeof(double) * (size_t)(k + 1));
    for (int64_t i = 0; i < k; i++)
        t->vals[arg][i] = sample(d, hi);
    return n;
}

static void tg_init(TG *t) {
    memset(t, 0, sizeof *t);
    t->g = graph_new();
    t->e.name = "test";
    t->e.kind = "fn";
    t->e.g = t->g;
}

static void tg_free(TG *t) {
    for (int i = 0; i < t->e.args.len; i++)
        free(t->vals[i]);
}

static Node *sum_all(Graph *g, Node *x) {
    return g_reduce(g, OP_SUM, x, x->shape.rank ? (1u << x->shape.rank) - 1 : 0, false, L0);
}

static double eval1(TG *t, Node *n) {
    double **v = refeval_graph(t->g, t->vals, 0, 0);
    double r = v[n->id][0];
    refeval_free(v);
    return r;
}

/* Max error of autodiff gradients against central differences of L, relative
 * to the largest difference (floored at 1e-3). */
static double fd_error(TG *t, Node *L, Node **xs, Node **grads, int n, char *where, size_t wsz) {
    double **v = refeval_graph(t->g, t->vals, 0, 0);
    double maxdiff = 0, maxfd = 0;
    for (int i = 0; i < n; i++) {
        double *x = t->vals[xs[i]->attr.arg];
        const double *ad = v[grads[i]->id];
        for (int64_t j = 0; j < shape_numel(xs[i]->shape); j++) {
            double save = x[j];
            x[j] = save + FD_H;
            double lp = eval1(t, L);
            x[j] = save - FD_H;
            double lm = eval1(t, L);
            x[j] = save;
            double fd = (lp - lm) / (2 * FD_H);
            double diff = fabs(fd - ad[j]);
            if (!(diff <= maxdiff)) {
                maxdiff = diff;
                snprintf(where, wsz, "input %d element %lld: autodiff %.10g, differences %.10g", i, (long long)j, ad[j], fd);
            }
            if (fabs(fd) > maxfd)
                maxfd = fabs(fd);
        }
    }
    refeval_free(v);
    return maxdiff / (maxfd > 1e-3 ? maxfd : 1e-3);
}

/* ----------------------------------------------------------------------------
 * the cases
 */

typedef struct Case {
    const char *name;
    int nx;                /* differentiable inputs: the first nx */
    int naux;              /* then index / condition inputs */
    DType dt[MAXIN];
    Shape sh[MAXIN];
    Dom dom[MAXIN];
    int hi[MAXIN];         /* D_IDX: values in [0, hi) */
    Node *(*build)(Graph *g, Node **x);
} Case;

#define F64 DT_F64
#define UN(fn, op) static Node *fn(Graph *g, Node **x) { return g_unary(g, op, x[0], L0); }
#define BIN(fn, op) static Node *fn(Graph *g, Node **x) { return g_binary(g, op, x[0], x[1], L0); }
UN(b_neg, OP_NEG) UN(b_exp, OP_EXP) UN(b_log, OP_LOG) UN(b_sqrt, OP_SQRT) UN(b_rsqrt, OP_RSQRT)
UN(b_tanh, OP_TANH) UN(b_sigmoid, OP_SIGMOID) UN(b_relu, OP_RELU) UN(b_gelu, OP_GELU) UN(b_abs, OP_ABS)
BIN(b_add, OP_ADD) BIN(b_sub, OP_SUB) BIN(b_mul, OP_MUL) BIN(b_div, OP_DIV) BIN(b_pow, OP_POW)

static Node *b_cast(Graph *g, Node **x) { return g_cast(g, g_cast(g, x[0], DT_F32, L0), DT_F64, L0); }

/* max/min with the second operand kept 0.2..1 away from the first */
static Node *apart(Graph *g, Node **x) { return g_binary(g, OP_ADD, x[0], x[1], L0); }
static Node *b_max(Graph *g, Node **x) { return g_binary(g, OP_MAX, x[0], apart(g, x), L0); }
static Node *b_min(Graph *g, Node **x) { return g_binary(g, OP_MIN, apart(g, x), x[0], L0); }
static Node *b_where(Graph *g, Node **x) { return g_where(g, x[2], x[0], x[1], L0); }
static Node *b_sum(Graph *g, Node **x) { return g_reduce(g, OP_SUM, x[0], 0x5, false, L0); }
static Node *b_rmax(Graph *g, Node **x) { return g_reduce(g, OP_RMAX, x[0], 0x2, true, L0); }
static Node *b_rmin(Graph *g, Node **x) { return g_reduce(g, OP_RMIN, x[0], 0x1, false, L0); }
static Node *b_reshape(Graph *g, Node **x) { return g_reshape(g, x[0], S(3, 4, 3, 2), L0); }
static Node *b_permute(Graph *g, Node **x) { return g_permute(g, x[0], (int[]){2, 0, 1}, L0); }
static Node *b_expand(Graph *g, Node **x) { return g_expand(g, x[0], S(3, 3, 4, 2), L0); }
static Node *b_slice1(Graph *g, Node **x) {
    return g_slice(g, x[0], (int64_t[]){1, 0, 2}, (int64_t[]){2, 3, 3}, NULL, L0);
}
/* steps 2 and 3, one axis whose spread overshoots (start 1, 3 elements at step 3 of 8) */
static Node *b_slice_step(Graph *g, Node **x) {
    return g_slice(g, x[0], (int64_t[]){0, 1, 1}, (int64_t[]){2, 2, 3}, (int64_t[]){2, 2, 3}, L0);
}
static Node *b_slice_one(Graph *g, Node **x) {
    return g_slice(g, x[0], (int64_t[]){2, 0, 5}, (int64_t[]){1, 3, 1}, (int64_t[]){3, 2, 4}, L0);
}
static Node *b_pad(Graph *g, Node **x) { return g_pad(g, x[0], (int64_t[]){1, 0, 2}, (int64_t[]){0, 2, 1}, L0); }
static Node *b_unfold(Graph *g, Node **x) { return g_unfold(g, x[0], 3, 3, 2, 2, 1, 1, L0); }
static Node *b_unfold_s1(Graph *g, Node **x) { return g_unfold(g, x[0], 2, 3, 1, 2, 0, 1, L0); }
static Node *b_fold(Graph *g, Node **x) { return g_fold(g, x[0], S(4, 1, 2, 5, 5), 3, 3, 2, 2, 1, 1, L0); }
static Node *b_matmul(Graph *g, Node **x) { return g_matmul(g, x[0], x[1], L0); }
static Node *b_conv(Graph *g, Node **x) { return g_conv2d(g, x[0], x[1], 2, 2, 1, 1, L0); }
static Node *b_conv_s1(Graph *g, Node **x) { return g_conv2d(g, x[0], x[1], 1, 1, 0, 0, L0); }
static Node *b_conv_rect(Graph *g, Node **x) { return g_conv2d(g, x[0], x[1], 2, 1, 0, 1, L0); }
static Node *b_conv_bi(Graph *g, Node **x) { return g_conv2d_bwd_input(g, x[0], x[1], S(4, 2, 2, 5, 5), 2, 2, 1, 1, L0); }
static Node *b_conv_bw(Graph *g, Node **x) { return g_conv2d_bwd_weight(g, x[0], x[1], 3, 3, 2, 2, 1, 1, L0); }
static Node *b_gather_row(Graph *g, Node **x) { return g_gather(g, x[0], x[1], 1, 1, L0); }
static Node *b_gather_emb(Graph *g, Node **x) { return g_gather(g, x[0], x[1], 0, 0, L0); }
static Node *b_gather_mid(Graph *g, Node **x) { return g_gather(g, x[0], x[1], 1, 0, L0); }
static Node *b_scatter(Graph *g, Node **x) { return g_scatter_add(g, x[1], x[0], S(2, 6, 3), 0, 0, L0); }
static Node *b_scatter_b(Graph *g, Node **x) { return g_scatter_add(g, x[1], x[0], S(3, 2, 5, 3), 1, 1, L0); }
/* x used many times: gradients of every use are summed */
static Node *b_fanout(Graph *g, Node **x) {
    Node *e = g_unary(g, OP_EXP, x[0], L0);
    return g_binary(g, OP_ADD, g_binary(g, OP_MUL, x[0], x[0], L0), g_binary(g, OP_MUL, e, x[0], L0), L0);
}
/* a composite: softmax cross-entropy-like chain through rmax, exp, log, gather */
static Node *b_softmax(Graph *g, Node **x) {
    Node *m = g_reduce(g, OP_RMAX, x[0], 0x2, true, L0);
    Node *z = g_binary(g, OP_SUB, x[0], g_unary(g, OP_DETACH, m, L0), L0);
    Node *lse = g_unary(g, OP_LOG, g_reduce(g, OP_SUM, g_unary(g, OP_EXP, z, L0), 0x2, true, L0), L0);
    return g_gather(g, g_binary(g, OP_SUB, z, lse, L0), x[1], 1, 1, L0);
}

static const Case cases[] = {
    {"neg", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_neg},
    {"exp", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_exp},
    {"log", 1, 0, {F64}, {{2, {3, 4}}}, {D_POS}, {0}, b_log},
    {"sqrt", 1, 0, {F64}, {{2, {3, 4}}}, {D_POS}, {0}, b_sqrt},
    {"rsqrt", 1, 0, {F64}, {{2, {3, 4}}}, {D_POS}, {0}, b_rsqrt},
    {"tanh", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_tanh},
    {"sigmoid", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_sigmoid},
    {"relu", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_relu},
    {"gelu", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_gelu},
    {"abs", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_abs},
    {"cast", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_cast},
    {"add", 2, 0, {F64, F64}, {{2, {3, 4}}, {1, {4}}}, {D_ANY, D_ANY}, {0}, b_add},
    {"sub", 2, 0, {F64, F64}, {{2, {3, 1}}, {2, {1, 4}}}, {D_ANY, D_ANY}, {0}, b_sub},
    {"mul", 2, 0, {F64, F64}, {{3, {2, 3, 4}}, {2, {3, 1}}}, {D_ANY, D_ANY}, {0}, b_mul},
    {"div", 2, 0, {F64, F64}, {{2, {3, 4}}, {1, {4}}}, {D_ANY, D_ANY}, {0}, b_div},
    {"pow", 2, 0, {F64, F64}, {{2, {3, 4}}, {2, {3, 4}}}, {D_POS, D_ANY}, {0}, b_pow},
    {"pow (scalar exponent)", 2, 0, {F64, F64}, {{2, {3, 4}}, {0}}, {D_POS, D_ANY}, {0}, b_pow},
    {"max", 2, 0, {F64, F64}, {{2, {3, 4}}, {2, {3, 4}}}, {D_ANY, D_ANY}, {0}, b_max},
    {"min", 2, 0, {F64, F64}, {{2, {3, 4}}, {2, {3, 4}}}, {D_ANY, D_ANY}, {0}, b_min},
    {"where", 2, 1, {F64, F64, DT_BOOL}, {{2, {3, 4}}, {1, {4}}, {2, {3, 4}}}, {D_ANY, D_ANY, D_BOOL}, {0}, b_where},
    {"sum", 1, 0, {F64}, {{3, {2, 3, 4}}}, {D_ANY}, {0}, b_sum},
    {"rmax", 1, 0, {F64}, {{2, {3, 5}}}, {D_ANY}, {0}, b_rmax},
    {"rmin", 1, 0, {F64}, {{3, {4, 2, 3}}}, {D_ANY}, {0}, b_rmin},
    {"reshape", 1, 0, {F64}, {{2, {4, 6}}}, {D_ANY}, {0}, b_reshape},
    {"permute", 1, 0, {F64}, {{3, {2, 3, 4}}}, {D_ANY}, {0}, b_permute},
    {"expand", 1, 0, {F64}, {{3, {3, 1, 2}}}, {D_ANY}, {0}, b_expand},
    {"slice", 1, 0, {F64}, {{3, {4, 3, 6}}}, {D_ANY}, {0}, b_slice1},
    {"slice (steps 2, 3)", 1, 0, {F64}, {{3, {4, 5, 8}}}, {D_ANY}, {0}, b_slice_step},
    {"slice (one element, step > 1)", 1, 0, {F64}, {{3, {4, 5, 6}}}, {D_ANY}, {0}, b_slice_one},
    {"pad", 1, 0, {F64}, {{3, {2, 3, 2}}}, {D_ANY}, {0}, b_pad},
    {"unfold (stride 2, pad 1)", 1, 0, {F64}, {{4, {1, 2, 5, 5}}}, {D_ANY}, {0}, b_unfold},
    {"unfold (2x3, strides 1,2)", 1, 0, {F64}, {{4, {2, 1, 4, 5}}}, {D_ANY}, {0}, b_unfold_s1},
    {"fold", 1, 0, {F64}, {{6, {1, 2, 3, 3, 3, 3}}}, {D_ANY}, {0}, b_fold},
    {"matmul", 2, 0, {F64, F64}, {{2, {3, 4}}, {2, {4, 2}}}, {D_ANY, D_ANY}, {0}, b_matmul},
    {"matmul (batched)", 2, 0, {F64, F64}, {{3, {2, 3, 4}}, {3, {2, 4, 2}}}, {D_ANY, D_ANY}, {0}, b_matmul},
    {"matmul (1-D @ 2-D)", 2, 0, {F64, F64}, {{1, {4}}, {2, {4, 3}}}, {D_ANY, D_ANY}, {0}, b_matmul},
    {"matmul (batch broadcast)", 2, 0, {F64, F64}, {{4, {2, 1, 3, 2}}, {3, {3, 2, 2}}}, {D_ANY, D_ANY}, {0}, b_matmul},
    {"conv2d (stride 2, pad 1)", 2, 0, {F64, F64}, {{4, {2, 2, 5, 5}}, {4, {3, 2, 3, 3}}}, {D_ANY, D_ANY}, {0}, b_conv},
    {"conv2d (stride 1)", 2, 0, {F64, F64}, {{4, {1, 2, 4, 4}}, {4, {2, 2, 2, 2}}}, {D_ANY, D_ANY}, {0}, b_conv_s1},
    {"conv2d (strides 2,1, pads 0,1)", 2, 0, {F64, F64}, {{4, {1, 2, 6, 4}}, {4, {2, 2, 3, 2}}}, {D_ANY, D_ANY}, {0}, b_conv_rect},
    {"conv2d_bwd_input", 2, 0, {F64, F64}, {{4, {2, 3, 3, 3}}, {4, {3, 2, 3, 3}}}, {D_ANY, D_ANY}, {0}, b_conv_bi},
    {"conv2d_bwd_weight", 2, 0, {F64, F64}, {{4, {2, 2, 5, 5}}, {4, {2, 3, 3, 3}}}, {D_ANY, D_ANY}, {0}, b_conv_bw},
    {"gather (one per row)", 1, 1, {F64, DT_I32}, {{2, {4, 5}}, {1, {4}}}, {D_ANY, D_IDX}, {0, 5}, b_gather_row},
    {"gather (rows, repeats, clamped)", 1, 1, {F64, DT_I32}, {{2, {6, 3}}, {2, {2, 4}}}, {D_ANY, D_IDX}, {0, 8}, b_gather_emb},
    {"gather (middle axis)", 1, 1, {F64, DT_I32}, {{3, {2, 4, 3}}, {1, {5}}}, {D_ANY, D_IDX}, {0, 4}, b_gather_mid},
    {"scatter_add", 1, 1, {F64, DT_I32}, {{3, {2, 4, 3}}, {2, {2, 4}}}, {D_ANY, D_IDX}, {0, 6}, b_scatter},
    {"scatter_add (batched)", 1, 1, {F64, DT_I32}, {{3, {2, 4, 3}}, {2, {2, 4}}}, {D_ANY, D_IDX}, {0, 5}, b_scatter_b},
    {"fan-out", 1, 0, {F64}, {{2, {3, 4}}}, {D_ANY}, {0}, b_fanout},
    {"softmax cross-entropy chain", 1, 1, {F64, DT_I32}, {{2, {3, 5}}, {1, {3}}}, {D_ANY, D_IDX}, {0, 5}, b_softmax},
};

/* max/min: keep the offset input x[1] at 0.2..1 in magnitude */
static void fix_apart(TG *t, const Case *c) {
    if (c->build != b_max && c->build != b_min)
        return;
    double *d = t->vals[1];
    for (int64_t i = 0; i < shape_numel(c->sh[1]); i++)
        d[i] = (d[i] < 0 ? -1 : 1) * (0.2 + 0.8 * urand());
}

static void run_case(const Case *c) {
    TG t;
    tg_init(&t);
    Node *in[MAXIN + 1];
    for (int i = 0; i < c->nx + c->naux; i++)
        in[i] = tg_input(&t, c->dt[i], c->sh[i], c->dom[i], c->hi[i]);
    fix_apart(&t, c);
    Node *y = c->build(t.g, in);
    Node *w = tg_input(&t, y->dtype, y->shape, D_ANY, 0);
    Node *L = sum_all(t.g, g_binary(t.g, OP_MUL, w, y, L0));

    Node *g1[MAXIN + 1];
    autodiff(t.g, &L, NULL, 1, in, c->nx, g1, L0);
    pass_verify(&t.e, "autodiff");
    char where[256] = "";
    double err = fd_error(&t, L, in, g1, c->nx, where, sizeof where);
    th_check(err <= TOL, xfmt("grad1 %s", c->name), "relative error %.3g (%s)", err, where);

    /* second order, with respect to the inputs and w */
    Node *L2 = NULL;
    for (int i = 0; i < c->nx; i++) {
        Node *v = tg_input(&t, g1[i]->dtype, g1[i]->shape, D_ANY, 0);
        Node *term = sum_all(t.g, g_binary(t.g, OP_MUL, v, g1[i], L0));
        L2 = L2 ? g_binary(t.g, OP_ADD, L2, term, L0) : term;
    }
    Node *xs2[MAXIN + 1], *g2[MAXIN + 1];
    for (int i = 0; i < c->nx; i++)
        xs2[i] = in[i];
    xs2[c->nx] = w;
    autodiff(t.g, &L2, NULL, 1, xs2, c->nx + 1, g2, L0);
    pass_verify(&t.e, "autodiff (second order)");
    err = fd_error(&t, L2, xs2, g2, c->nx + 1, where, sizeof where);
    th_check(err <= TOL, xfmt("grad2 %s", c->name), "relative error %.3g (%s)", err, where);
    tg_free(&t);
}

/* ----------------------------------------------------------------------------
 * properties that differences cannot show
 */

static bool all_near(const double *a, const double *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > 1e-12 * (1 + fabs(b[i])))
            return false;
    return true;
}

static void test_ties(void) {
    TG t;
    tg_init(&t);
    Node *x = tg_input(&t, F64, S(1, 4), D_ANY, 0);
    memcpy(t.vals[0], (double[]){1, 3, 3, 2}, sizeof(double) * 4);
    Node *m = g_reduce(t.g, OP_RMAX, x, 1, false, L0);
    Node *mx = sum_all(t.g, g_binary(t.g, OP_MAX, x, x, L0));
    Node *mn = sum_all(t.g, g_binary(t.g, OP_MIN, x, g_const(t.g, 3, F64, S(1, 4), L0), L0));
    Node *gm, *gx, *gn;
    autodiff(t.g, &m, NULL, 1, &x, 1, &gm, L0);
    autodiff(t.g, &mx, NULL, 1, &x, 1, &gx, L0);
    autodiff(t.g, &mn, NULL, 1, &x, 1, &gn, L0);
    double **v = refeval_graph(t.g, t.vals, 0, 0);
    th_check(all_near(v[gm->id], (double[]){0, 0.5, 0.5, 0}, 4), "rmax ties share the gradient", "got %g %g %g %g",
             v[gm->id][0], v[gm->id][1], v[gm->id][2], v[gm->id][3]);
    th_check(all_near(v[gx->id], (double[]){1, 1, 1, 1}, 4), "max(x, x) gives half to each side", "got %g", v[gx->id][0]);
    th_check(all_near(v[gn->id], (double[]){1, 0.5, 0.5, 1}, 4), "min tie with a constant gives half", "got %g %g",
             v[gn->id][0], v[gn->id][1]);
    refeval_free(v);
    tg_free(&t);
}

static void test_detach_and_paths(void) {
    TG t;
    tg_init(&t);
    Node *x = tg_input(&t, F64, S(1, 5), D_ANY, 0);
    Node *u = tg_input(&t, F64, S(1, 5), D_ANY, 0);
    /* detach: d/dx sum(x * detach(x)) = detach(x) = x */
    Node *L = sum_all(t.g, g_binary(t.g, OP_MUL, x, g_unary(t.g, OP_DETACH, x, L0), L0));
    Node *gd;
    autodiff(t.g, &L, NULL, 1, &x, 1, &gd, L0);
    /* an independent x gets a zero CONST of its shape */
    Node *gu;
    autodiff(t.g, &L, NULL, 1, &u, 1, &gu, L0);
    th_check(gu->op == OP_CONST && gu->attr.value == 0 && shape_eq(gu->shape, u->shape) && gu->dtype == F64,
             "independent input gets zero", "got %s %s", op_info[gu->op].name, type_str(gu->dtype, gu->shape));
    /* integer paths carry nothing: d/dx sum(f64(i32(3x)) * x) = f64(i32(3x)) */
    Node *k = g_cast(t.g, g_cast(t.g, g_binary(t.g, OP_MUL, x, g_scalar(t.g, 3, F64, L0), L0), DT_I32, L0), F64, L0);
    Node *Li = sum_all(t.g, g_binary(t.g, OP_MUL, k, x, L0));
    Node *gi;
    autodiff(t.g, &Li, NULL, 1, &x, 1, &gi, L0);
    /* only nodes on a path from xs to ys: exp(u) is not differentiated */
    Node *z = g_unary(t.g, OP_EXP, u, L0);
    Node *Lp = g_binary(t.g, OP_ADD, sum_all(t.g, g_binary(t.g, OP_MUL, x, x, L0)), sum_all(t.g, z), L0);
    int before = t.g->nodes.len;
    Node *gp;
    autodiff(t.g, &Lp, NULL, 1, &x, 1, &gp, L0);
    bool clean = true;
    for (int i = before; i < t.g->nodes.len; i++)
        for (int j = 0; j < t.g->nodes.data[i]->nin; j++)
            clean &= t.g->nodes.data[i]->in[j] != z && t.g->nodes.data[i]->in[j] != u;
    /* the gradient with respect to an intermediate node, alongside x:
     * h = 3x, L = sum(h * h): dL/dh = 2h, dL/dx = 18x */
    Node *h = g_binary(t.g, OP_MUL, x, g_scalar(t.g, 3, F64, L0), L0);
    Node *Lh = sum_all(t.g, g_binary(t.g, OP_MUL, h, h, L0));
    Node *xs[2] = {h, x}, *gh[2];
    autodiff(t.g, &Lh, NULL, 1, xs, 2, gh, L0);
    /* explicit seeds on a vector output: J^T s */
    Node *sq = g_binary(t.g, OP_MUL, x, x, L0);
    Node *seed = tg_input(&t, F64, S(1, 5), D_ANY, 0);
    Node *gs;
    autodiff(t.g, &sq, &seed, 1, &x, 1, &gs, L0);
    pass_verify(&t.e, "autodiff");

    double **v = refeval_graph(t.g, t.vals, 0, 0);
    const double *xv = t.vals[0], *sv = t.vals[2];
    double want_i[5], want_h[5], want_x[5], want_s[5];
    for (int i = 0; i < 5; i++) {
        want_i[i] = trunc(3 * xv[i]);
        want_h[i] = 6 * xv[i];
        want_x[i] = 18 * xv[i];
        want_s[i] = 2 * xv[i] * sv[i];
    }
    th_check(all_near(v[gd->id], xv, 5), "detach stops gradients", "got %g want %g", v[gd->id][0], xv[0]);
    th_check(all_near(v[gi->id], want_i, 5), "integer paths carry no gradient", "got %g want %g", v[gi->id][0], want_i[0]);
    th_check(clean && all_near(v[gp->id], (double[]){2 * xv[0], 2 * xv[1], 2 * xv[2], 2 * xv[3], 2 * xv[4]}, 5),
             "only nodes on a path are differentiated", "gradient nodes read the unrelated branch");
    th_check(all_near(v[gh[0]->id], want_h, 5) && all_near(v[gh[1]->id], want_x, 5), "gradient w.r.t. an intermediate node",
             "got %g, %g want %g, %g", v[gh[0]->id][0], v[gh[1]->id][0], want_h[0], want_x[0]);
    th_check(all_near(v[gs->id], want_s, 5), "explicit seeds", "got %g want %g", v[gs->id][0], want_s[0]);
    refeval_free(v);
    tg_free(&t);
}

/* third order through tanh: d^3/dx^3 tanh = -2 (1 - t^2)(1 - 3 t^2) */
static void test_third_order(void) {
    TG t;
    tg_init(&t);
    Node *x = tg_input(&t, F64, S(1, 4), D_ANY, 0);
    Node *L = sum_all(t.g, g_unary(t.g, OP_TANH, x, L0)), *g = NULL;
    for (int order = 0; order < 3; order++) {
        autodiff(t.g, &L, NULL, 1, &x, 1, &g, L0);
        L = sum_all(t.g, g);
    }
    double **v = refeval_graph(t.g, t.vals, 0, 0);
    bool ok = true;
    for (int i = 0; i < 4; i++) {
        double th = tanh(t.vals[0][i]);
        ok &= fabs(v[g->id][i] - (-2 * (1 - th * th) * (1 - 3 * th * th))) < 1e-12;
    }
    th_check(ok, "third order tanh", "got %g", v[g->id][0]);
    refeval_free(v);
    tg_free(&t);
}

static void test_errors(void) {
    TG t;
    tg_init(&t);
    Node *x = tg_input(&t, F64, S(1, 3), D_ANY, 0);
    Node *out;
    jmp_buf jb;
    fflush(stderr);
    FILE *f = tmpfile();
    int saved = dup(2);
    dup2(fileno(f), 2);
    diag_recover = &jb;
    volatile bool raised = false;
    if (!setjmp(jb))
        autodiff(t.g, &x, NULL, 1, &x, 1, &out, L0);
    else
        raised = true;
    diag_recover = NULL;
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[2048] = {0};
    rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    th_check(raised && strstr(buf, "grad needs a scalar to differentiate, got f64[3]"), "grad of a non-scalar is an error",
             "got: %s", buf);
    tg_free(&t);
}

int main(void) {
    L0.file = srcfile_from_string("grad.lth", "grad(f, x)\n", 11);
    L0.line = L0.col = L0.len = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i]);
    test_ties();
    test_detach_and_paths();
    test_third_order();
    test_errors();
    return th_exit();
}
