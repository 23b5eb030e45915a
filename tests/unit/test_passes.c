/* test_passes.c: the graph passes.
 *
 *  - On random graphs built with the builders (values, constants 0/1,
 *    duplicates, view chains, dead branches), every pass and the whole
 *    pipeline keep the reference evaluator's results and pass_verify.
 *  - Each rewrite actually happens on a graph made for it (node counts,
 *    which node an argument receives).
 *  - pass_verify catches deliberately broken graphs (in a forked child,
 *    since a broken invariant aborts).
 *  - The pipeline on a gradient graph keeps its values and shrinks it.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graph.h"
#include "harness.h"
#include "refeval.h"

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

static uint64_t rng;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}
static int irand(int n) { return (int)(urand() * n); }

/* An entry with its argument values. */
typedef struct TG {
    Entry e;
    double *vals[64];
} TG;

static void tg_init(TG *t) {
    memset(t, 0, sizeof *t);
    t->e.g = graph_new();
    t->e.name = "passes";
    t->e.kind = "fn";
}

static Node *tg_input(TG *t, Shape s) {
    int arg = t->e.args.len;
    Node *n = g_input(t->e.g, arg, DT_F64, s, xfmt("x%d", arg), L0);
    EntryArg a = {.name = n->name, .kind = LETHE_INPUT, .access = LETHE_READ, .dtype = DT_F64, .shape = s, .in = n};
    vec_push(&t->e.args, a);
    t->vals[arg] = malloc(sizeof(double) * (size_t)(shape_numel(s) + 1));
    for (int64_t i = 0; i < shape_numel(s); i++)
        t->vals[arg][i] = (urand() < 0.5 ? -1 : 1) * (0.1 + urand());
    return n;
}

static void tg_output(TG *t, Node *n) {
    EntryArg a = {.name = xfmt("out%d", t->e.args.len), .kind = LETHE_OUTPUT, .access = LETHE_WRITE, .dtype = n->dtype,
                  .shape = n->shape, .out = n};
    vec_push(&t->e.args, a);
}

static void tg_free(TG *t) {
    for (int i = 0; i < t->e.args.len; i++)
        free(t->vals[i]);
}

/* the values of every output, concatenated (malloc'd) */
static double *outputs(TG *t, int64_t *count) {
    double **v = refeval(&t->e, t->vals, 0, 0);
    int64_t n = 0;
    for (int i = 0; i < t->e.args.len; i++)
        if (t->e.args.data[i].out)
            n += shape_numel(t->e.args.data[i].shape);
    double *r = malloc(sizeof(double) * (size_t)(n + 1));
    n = 0;
    for (int i = 0; i < t->e.args.len; i++) {
        const double *o = refeval_out(&t->e, v, i);
        for (int64_t j = 0; o && j < shape_numel(t->e.args.data[i].shape); j++)
            r[n++] = o[j];
    }
    refeval_free(v);
    *count = n;
    return r;
}

/* ----------------------------------------------------------------------------
 * random graphs
 */

static bool broadcastable(Shape a, Shape b) {
    for (int i = 1; i <= a.rank && i <= b.rank; i++) {
        int64_t x = a.dim[a.rank - i], y = b.dim[b.rank - i];
        if (x != y && x != 1 && y != 1)
            return false;
    }
    return true;
}

typedef VEC(Node *) NodeVec;

static Node *pick(NodeVec *pool) {
    /* favour recent nodes so that chains get deep */
    int n = pool->len;
    int i = urand() < 0.6 ? n - 1 - irand(n < 4 ? n : 4) : irand(n);
    return pool->data[i];
}

static Node *rand_const(Graph *g, Node *like) {
    static const double vals[] = {0, 1, 2, -1, 0.5};
    double v = vals[irand(5)];
    return urand() < 0.5 ? g_scalar(g, v, DT_F64, L0) : g_const(g, v, DT_F64, like->shape, L0);
}

static Node *rand_step(Graph *g, NodeVec *pool) {
    Node *x = pick(pool);
    Shape s = x->shape;
    int r = s.rank;
    switch (irand(12)) {
    case 0: {
        static const Op ops[] = {OP_NEG, OP_TANH, OP_SIGMOID, OP_RELU, OP_ABS, OP_DETACH};
        return g_unary(g, ops[irand(6)], x, L0);
    }
    case 1:
    case 2: {
        static const Op ops[] = {OP_ADD, OP_SUB, OP_MUL, OP_MAX, OP_MIN};
        Node *y = pick(pool);
        if (!broadcastable(x->shape, y->shape) || x->shape.rank + y->shape.rank > 6)
            return NULL;
        return g_binary(g, ops[irand(5)], x, y, L0);
    }
    case 3: {
        static const Op ops[] = {OP_ADD, OP_SUB, OP_MUL, OP_DIV};
        Op op = ops[irand(4)];
        Node *k = rand_const(g, x);
        if (op == OP_DIV && k->attr.value == 0)
            k = g_scalar(g, 2, DT_F64, L0);
        return urand() < 0.5 || op == OP_DIV ? g_binary(g, op, x, k, L0) : g_binary(g, op, k, x, L0);
    }
    case 4: {   /* a reshape chain that ends where it started or reversed */
        Node *f = g_reshape(g, x, S(1, (int)shape_numel(s)), L0);
        if (urand() < 0.5 || r < 2)
            return g_reshape(g, f, s, L0);
        Shape rev = s;
        for (int d = 0; d < r; d++)
            rev.dim[d] = s.dim[r - 1 - d];
        return g_reshape(g, g_reshape(g, f, rev, L0), s, L0);
    }
    case 5: {   /* permutes, often a permutation followed by its inverse */
        if (r < 2)
            return NULL;
        int p[MAX_RANK], inv[MAX_RANK];
        for (int d = 0; d < r; d++)
            p[d] = d;
        for (int d = r - 1; d > 0; d--) {
            int j = irand(d + 1), tmp = p[d];
            p[d] = p[j];
            p[j] = tmp;
        }
        for (int d = 0; d < r; d++)
            inv[p[d]] = d;
        Node *y = g_permute(g, x, p, L0);
        return urand() < 0.6 ? g_permute(g, y, inv, L0) : y;
    }
    case 6: {   /* reductions, sometimes over size-1 axes only */
        uint32_t axes = 0;
        for (int d = 0; d < r; d++)
            if (urand() < 0.5 || s.dim[d] == 1)
                axes |= 1u << d;
        Op op = urand() < 0.7 ? OP_SUM : OP_RMAX;
        return g_reduce(g, op, x, axes, true, L0);
    }
    case 7: {   /* broadcast up: [..] -> [2, ..] */
        if (r >= 4)
            return NULL;
        Shape t = {0};
        t.rank = r + 1;
        t.dim[0] = 2;
        for (int d = 0; d < r; d++)
            t.dim[d + 1] = s.dim[d];
        return g_broadcast_to(g, x, t, L0);
    }
    case 8: {   /* where with a constant or computed condition */
        Node *y = pick(pool);
        if (!shape_eq(x->shape, y->shape))
            y = rand_const(g, x);
        Node *c = urand() < 0.5 ? g_const(g, irand(2), DT_BOOL, x->shape, L0) : g_binary(g, OP_GT, x, y, L0);
        return g_where(g, c, x, urand() < 0.2 ? x : y, L0);
    }
    case 9: {   /* a duplicate of an existing node: CSE merges it */
        Node *n = pick(pool);
        if (n->nin == 0)
            return NULL;
        return node_new(g, n->op, n->dtype, n->nin, n->in, &n->attr, L0);
    }
    case 10: {  /* slice then pad back, or the reverse */
        if (r == 0)
            return NULL;
        int64_t lo[MAX_RANK] = {0}, cnt[MAX_RANK];
        int d = irand(r);
        for (int k = 0; k < r; k++)
            cnt[k] = s.dim[k];
        if (s.dim[d] > 1) {
            lo[d] = 1;
            cnt[d] = s.dim[d] - 1;
        }
        Node *y = g_slice(g, x, lo, cnt, NULL, L0);
        int64_t z[MAX_RANK] = {0};
        return g_pad(g, y, z, lo, L0);
    }
    default: {  /* constant arithmetic and views of constants */
        Node *k = g_binary(g, OP_MUL, rand_const(g, x), g_const(g, 3, DT_F64, s, L0), L0);
        k = g_unary(g, OP_TANH, g_binary(g, OP_ADD, k, rand_const(g, x), L0), L0);
        return g_binary(g, OP_ADD, x, g_reduce(g, OP_SUM, k, r ? 1 : 0, true, L0), L0);
    }
    }
}

static void gen_graph(TG *t, uint64_t seed) {
    rng = seed * 2654435761u + 1;
    tg_init(t);
    NodeVec pool = {0};
    Shape shapes[] = {S(2, 3, 4), S(1, 4), S(2, 3, 1), S(0)};
    for (int i = 0; i < 4; i++)
        vec_push(&pool, tg_input(t, shapes[i]));
    int steps = 8 + irand(16);
    for (int i = 0; i < steps; i++) {
        Node *n = rand_step(t->e.g, &pool);
        if (n && n->dtype == DT_F64 && n->shape.rank <= 5)
            vec_push(&pool, n);
    }
    tg_output(t, pool.data[pool.len - 1]);
    tg_output(t, pool.data[irand(pool.len)]);
}

typedef void (*PassFn)(Entry *);

static void pipeline(Entry *e) {
    for (int i = 0; i < 2; i++) {
        pass_fold(e);
        pass_simplify(e);
        pass_cse(e);
        pass_dce(e);
    }
}

/* Nodes that compute something: fold replaces computations by constants
 * without removing nodes (dce does), so it is measured by these. */
static int computing(const Graph *g) {
    int n = 0;
    for (int i = 0; i < g->nodes.len; i++)
        n += op_info[g->nodes.data[i]->op].kind != OK_LEAF;
    return n;
}

/* run pass on many random graphs; values and invariants must hold */
static void random_graphs(const char *name, PassFn pass, int ngraphs) {
    int bad = 0, before = 0, after = 0;
    char why[256] = "";
    for (int s = 0; s < ngraphs; s++) {
        TG t;
        gen_graph(&t, (uint64_t)s + 1);
        int64_t n0, n1;
        double *ref = outputs(&t, &n0);
        before += pass == pass_fold ? computing(t.e.g) : t.e.g->nodes.len;
        pass(&t.e);
        pass_verify(&t.e, name);
        after += pass == pass_fold ? computing(t.e.g) : t.e.g->nodes.len;
        double *got = outputs(&t, &n1);
        for (int64_t i = 0; i < n0 && n0 == n1; i++)
            if (!(fabs(ref[i] - got[i]) <= 1e-12 * (1 + fabs(ref[i])))) {
                if (!bad++)
                    snprintf(why, sizeof why, "graph %d output element %lld: %.17g became %.17g", s, (long long)i, ref[i], got[i]);
                break;
            }
        if (n0 != n1 && !bad++)
            snprintf(why, sizeof why, "graph %d: output size changed", s);
        free(ref);
        free(got);
        tg_free(&t);
    }
    th_check(!bad, xfmt("random graphs: %s keeps values", name), "%d of %d graphs differ; first: %s", bad, ngraphs, why);
    th_check(pass == pipeline ? after < before / 2 : after < before, xfmt("random graphs: %s shrinks graphs", name),
             "%d nodes became %d", before, after);
}

/* ----------------------------------------------------------------------------
 * targeted rewrites
 */

static int count_op(const Graph *g, Op op) {
    int n = 0;
    for (int i = 0; i < g->nodes.len; i++)
        n += g->nodes.data[i]->op == op;
    return n;
}

static void test_fold(void) {
    TG t;
    tg_init(&t);
    Graph *g = t.e.g;
    Node *x = tg_input(&t, S(2, 4, 3));
    /* (2 + 3) * x: the constant part folds */
    Node *k = g_binary(g, OP_ADD, g_scalar(g, 2, DT_F64, L0), g_scalar(g, 3, DT_F64, L0), L0);
    tg_output(&t, g_binary(g, OP_MUL, k, x, L0));
    /* sum over axis 1 of a [4, 3] constant 2 -> 6, then exp(0) = 1, views of constants */
    Node *s = g_reduce(g, OP_SUM, g_const(g, 2, DT_F64, S(2, 4, 3), L0), 2, false, L0);
    Node *e = g_unary(g, OP_EXP, g_const(g, 0, DT_F64, S(1, 4), L0), L0);
    Node *v = g_permute(g, g_broadcast_to(g, g_binary(g, OP_ADD, s, e, L0), S(2, 3, 4), L0), (int[]){1, 0}, L0);
    tg_output(&t, v);
    /* a matmul with a zero constant, a pad of a nonzero constant (must stay) */
    tg_output(&t, g_matmul(g, x, g_const(g, 0, DT_F64, S(2, 3, 5), L0), L0));
    Node *pd = g_pad(g, g_const(g, 1, DT_F64, S(1, 2), L0), (int64_t[]){1}, (int64_t[]){0}, L0);
    tg_output(&t, pd);
    int64_t n;
    double *ref = outputs(&t, &n);
    pass_fold(&t.e);
    pass_dce(&t.e);
    pass_verify(&t.e, "fold");
    double *got = outputs(&t, &n);
    const Node *o1 = t.e.args.data[2].out, *o3 = t.e.args.data[3].out;
    th_check(o1->op == OP_CONST && o1->attr.value == 7 && shape_eq(o1->shape, S(2, 4, 3)), "fold: sum, exp, views of constants",
             "output is %s", op_info[o1->op].name);
    th_check(o3->op == OP_CONST && o3->attr.value == 0, "fold: matmul by zero", "output is %s", op_info[o3->op].name);
    th_check(t.e.args.data[4].out->op == OP_PAD, "fold: pad of a nonzero constant stays", "folded");
    th_check(count_op(t.e.g, OP_CONST) == 4 && count_op(t.e.g, OP_ADD) == 0, "fold: 2 + 3 folds",
             "%d constants, %d adds", count_op(t.e.g, OP_CONST), count_op(t.e.g, OP_ADD));
    bool same = true;
    for (int64_t i = 0; i < n; i++)
        same &= ref[i] == got[i];
    th_check(same, "fold: values kept", "values changed");
    free(ref);
    free(got);
    tg_free(&t);
}

static void test_simplify(void) {
    TG t;
    tg_init(&t);
    Graph *g = t.e.g;
    Node *x = tg_input(&t, S(2, 4, 3)), *y = tg_input(&t, S(2, 4, 3));
    Node *zero = g_scalar(g, 0, DT_F64, L0), *one = g_scalar(g, 1, DT_F64, L0);
    Node *a = g_binary(g, OP_ADD, g_binary(g, OP_MUL, one, x, L0), zero, L0);     /* 1*x + 0 */
    a = g_binary(g, OP_DIV, g_binary(g, OP_SUB, a, zero, L0), one, L0);          /* (.. - 0) / 1 */
    a = g_unary(g, OP_NEG, g_unary(g, OP_NEG, g_unary(g, OP_DETACH, a, L0), L0), L0);
    tg_output(&t, a);                                                             /* -> x */
    tg_output(&t, g_binary(g, OP_MUL, y, zero, L0));                              /* -> 0 */
    Node *r = g_reshape(g, g_reshape(g, g_reshape(g, y, S(1, 12), L0), S(2, 6, 2), L0), S(3, 2, 2, 3), L0);
    tg_output(&t, r);                                                             /* one reshape */
    Node *p = g_permute(g, g_permute(g, y, (int[]){1, 0}, L0), (int[]){1, 0}, L0);
    tg_output(&t, p);                                                             /* -> y */
    Node *w = g_where(g, g_const(g, 1, DT_BOOL, S(2, 4, 3), L0), x, y, L0);
    tg_output(&t, w);                                                             /* -> x */
    Node *s = g_reduce(g, OP_SUM, g_reduce(g, OP_SUM, y, 1, true, L0), 1, true, L0);
    tg_output(&t, s);                                                             /* one sum */
    Node *pp = g_permute(g, g_permute(g, g_reshape(g, y, S(3, 2, 2, 3), L0), (int[]){1, 2, 0}, L0), (int[]){2, 0, 1}, L0);
    tg_output(&t, pp);                                                            /* -> reshape */
    int64_t n;
    double *ref = outputs(&t, &n);
    pass_simplify(&t.e);
    pass_dce(&t.e);
    pass_verify(&t.e, "simplify");
    double *got = outputs(&t, &n);
    EntryArg *o = &t.e.args.data[2];
    th_check(o[0].out == x, "simplify: x*1, +0, -0, /1, neg neg, detach", "output is %s", op_info[o[0].out->op].name);
    th_check(o[1].out->op == OP_CONST && o[1].out->attr.value == 0, "simplify: x*0", "output is %s", op_info[o[1].out->op].name);
    th_check(o[2].out->op == OP_RESHAPE && o[2].out->in[0] == y, "simplify: reshape chain", "not one reshape");
    th_check(o[3].out == y, "simplify: permute then inverse", "output is %s", op_info[o[3].out->op].name);
    th_check(o[4].out == x, "simplify: where with constant condition", "output is %s", op_info[o[4].out->op].name);
    th_check(o[5].out->op == OP_SUM && o[5].out->in[0] == y, "simplify: sum over size-1 axes", "output is %s",
             op_info[o[5].out->op].name);
    th_check(o[6].out->op == OP_RESHAPE, "simplify: permute chain composes", "output is %s", op_info[o[6].out->op].name);
    bool same = true;
    for (int64_t i = 0; i < n; i++)
        same &= ref[i] == got[i];
    th_check(same, "simplify: values kept", "values changed");
    free(ref);
    free(got);
    tg_free(&t);
}

static void test_cse_dce(void) {
    TG t;
    tg_init(&t);
    Graph *g = t.e.g;
    Node *x = tg_input(&t, S(2, 4, 3)), *y = tg_input(&t, S(1, 3)), *unused = tg_input(&t, S(1, 2));
    Node *a = g_unary(g, OP_EXP, g_binary(g, OP_ADD, x, y, L0), L0);
    Node *b = g_unary(g, OP_EXP, g_binary(g, OP_ADD, y, x, L0), L0);   /* same value, operands swapped */
    Node *c = g_unary(g, OP_TANH, g_binary(g, OP_ADD, x, y, L0), L0);  /* shares x + y only */
    g_unary(g, OP_SIGMOID, g_unary(g, OP_NEG, unused, L0), L0);          /* dead */
    tg_output(&t, g_binary(g, OP_MUL, g_binary(g, OP_ADD, a, b, L0), c, L0));
    int n0 = g->nodes.len;
    int64_t n;
    double *ref = outputs(&t, &n);
    pass_cse(&t.e);
    pass_verify(&t.e, "cse");
    int n1 = g->nodes.len;
    th_check(count_op(g, OP_EXP) == 1 && count_op(g, OP_ADD) == 2 && count_op(g, OP_EXPAND) == 1,
             "cse: duplicate subgraphs merge", "%d exp, %d add, %d expand", count_op(g, OP_EXP), count_op(g, OP_ADD),
             count_op(g, OP_EXPAND));
    pass_dce(&t.e);
    pass_verify(&t.e, "dce");
    int n2 = g->nodes.len;
    th_check(n1 < n0 && n2 < n1 && count_op(g, OP_SIGMOID) == 0 && count_op(g, OP_NEG) == 0, "dce: unused nodes go",
             "%d -> %d -> %d nodes", n0, n1, n2);
    th_check(t.e.args.data[2].in == NULL && t.e.args.data[0].in == x, "dce: an unread argument loses its input node",
             "args[2].in is %p", (void *)t.e.args.data[2].in);
    double *got = outputs(&t, &n);
    bool same = true;
    for (int64_t i = 0; i < n; i++)
        same &= ref[i] == got[i];
    th_check(same, "cse + dce: values kept", "values changed");
    free(ref);
    free(got);
    tg_free(&t);
}

/* a pass that links a node to a later one: entry_replace_uses restores order */
static void test_replace_uses(void) {
    TG t;
    tg_init(&t);
    Graph *g = t.e.g;
    Node *x = tg_input(&t, S(1, 4));
    Node *a = g_unary(g, OP_EXP, x, L0);
    Node *b = g_unary(g, OP_TANH, a, L0);
    Node *late = g_unary(g, OP_SIGMOID, x, L0);
    tg_output(&t, b);
    for (int i = 0; i < g->nodes.len; i++)
        g->nodes.data[i]->repl = NULL;
    a->repl = late;
    entry_replace_uses(&t.e);
    pass_verify(&t.e, "replace_uses");
    th_check(b->in[0] == late && g->nodes.len == 3, "entry_replace_uses: later replacement, order restored",
             "b reads %%%d, %d nodes", b->in[0]->id, g->nodes.len);
    tg_free(&t);
}

/* pass_verify must abort on each kind of broken graph. */
typedef void (*Breaker)(TG *t);

static void br_order(TG *t) {
    Node **d = t->e.g->nodes.data;
    int n = t->e.g->nodes.len;
    Node *tmp = d[n - 1];
    d[n - 1] = d[n - 2];
    d[n - 2] = tmp;
}
static void br_shape(TG *t) { t->e.g->nodes.data[t->e.g->nodes.len - 1]->shape.dim[0] = 7; }
static void br_dtype(TG *t) { t->e.g->nodes.data[t->e.g->nodes.len - 1]->dtype = DT_F32; }
static void br_dangling(TG *t) {
    Node *stray = g_unary(t->e.g, OP_NEG, t->e.g->nodes.data[0], L0);
    t->e.g->nodes.len--;   /* stray is no longer in the graph */
    t->e.g->nodes.data[t->e.g->nodes.len - 1]->in[0] = stray;
}
static void br_dup_id(TG *t) { t->e.g->nodes.data[1]->id = t->e.g->nodes.data[0]->id; }
static void br_arg(TG *t) { t->e.g->nodes.data[0]->attr.arg = 5; }
static void br_out(TG *t) { t->e.args.data[1].out = g_unary(graph_new(), OP_NEG, t->e.args.data[0].in, L0); }
static void br_arity(TG *t) { t->e.g->nodes.data[t->e.g->nodes.len - 1]->nin = 2; }

static void expect_verify_abort(const char *name, Breaker br) {
    fflush(stdout);
    fflush(stderr);
    char path[600];
    snprintf(path, sizeof path, "%s/verify.err", th_tmpdir());
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(path, "w", stderr))
            _exit(3);
        TG t;
        tg_init(&t);
        Node *x = tg_input(&t, S(2, 2, 3));
        Node *y = g_unary(t.e.g, OP_EXP, x, L0);
        tg_output(&t, g_unary(t.e.g, OP_TANH, y, L0));
        pass_verify(&t.e, "setup");   /* the unbroken graph is fine */
        br(&t);
        pass_verify(&t.e, "breaker");
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char msg[2048] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        size_t k = fread(msg, 1, sizeof msg - 1, f);
        msg[k] = 0;
        fclose(f);
    }
    bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
    th_check(aborted && strstr(msg, "graph broken after breaker"), name, "status %d, stderr: %s", status, msg);
}

/* the pipeline on a gradient graph: a two-layer MLP loss */
static void test_gradient_graph(void) {
    TG t;
    tg_init(&t);
    Graph *g = t.e.g;
    Node *x = tg_input(&t, S(2, 4, 5)), *w1 = tg_input(&t, S(2, 6, 5)), *b1 = tg_input(&t, S(1, 6));
    Node *w2 = tg_input(&t, S(2, 3, 6));
    Node *h = g_unary(g, OP_RELU, g_binary(g, OP_ADD, g_matmul(g, x, g_permute(g, w1, (int[]){1, 0}, L0), L0), b1, L0), L0);
    Node *z = g_matmul(g, h, g_permute(g, w2, (int[]){1, 0}, L0), L0);
    Node *m = g_unary(g, OP_DETACH, g_reduce(g, OP_RMAX, z, 2, true, L0), L0);
    Node *lse = g_unary(g, OP_LOG, g_reduce(g, OP_SUM, g_unary(g, OP_EXP, g_binary(g, OP_SUB, z, m, L0), L0), 2, true, L0), L0);
    Node *loss = g_reduce(g, OP_SUM, g_binary(g, OP_ADD, lse, m, L0), 3, false, L0);
    Node *xs[3] = {w1, b1, w2}, *gr[3];
    autodiff(g, &loss, NULL, 1, xs, 3, gr, L0);
    for (int i = 0; i < 3; i++)
        tg_output(&t, gr[i]);
    tg_output(&t, loss);
    int64_t n;
    double *ref = outputs(&t, &n);
    int n0 = g->nodes.len;
    pipeline(&t.e);
    pass_verify(&t.e, "pipeline");
    double *got = outputs(&t, &n);
    double err = 0;
    for (int64_t i = 0; i < n; i++)
        err = fmax(err, fabs(ref[i] - got[i]) / (1 + fabs(ref[i])));
    th_check(err < 1e-13, "pipeline on a gradient graph keeps values", "max error %g", err);
    th_check(g->nodes.len < n0, "pipeline on a gradient graph shrinks it", "%d -> %d nodes", n0, g->nodes.len);
    free(ref);
    free(got);
    tg_free(&t);
}

int main(void) {
    L0.file = srcfile_from_string("p.lth", "x\n", 2);
    L0.line = L0.col = L0.len = 1;
    random_graphs("fold", pass_fold, 400);
    random_graphs("simplify", pass_simplify, 400);
    random_graphs("cse", pass_cse, 400);
    random_graphs("dce", pass_dce, 400);
    random_graphs("pipeline", pipeline, 400);
    test_fold();
    test_simplify();
    test_cse_dce();
    test_replace_uses();
    expect_verify_abort("verify catches nodes out of order", br_order);
    expect_verify_abort("verify catches a wrong shape", br_shape);
    expect_verify_abort("verify catches a wrong dtype", br_dtype);
    expect_verify_abort("verify catches an input outside the graph", br_dangling);
    expect_verify_abort("verify catches a duplicate id", br_dup_id);
    expect_verify_abort("verify catches a bad argument index", br_arg);
    expect_verify_abort("verify catches an output outside the graph", br_out);
    expect_verify_abort("verify catches a wrong arity", br_arity);
    test_gradient_graph();
    return th_exit();
}
