/* test_graph.c: the graph builders, the shape rules, their error messages,
 * the dump and toposort, and the reference evaluator on hand-computed
 * values. */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "graph.h"
#include "harness.h"
#include "refeval.h"

static const char src_text[] =
    "let a = x + y\n"
    "let b = w @ v\n"
    "let c = conv2d(x, w)\n";
static SrcFile *src;

static Loc at(int line, int col) { return (Loc){src, line, col, 1}; }

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

static Node *in_(Graph *g, int arg, DType dt, Shape s) { return g_input(g, arg, dt, s, xfmt("x%d", arg), at(1, 9)); }

static bool is_type(const Node *n, const char *want) { return strcmp(type_str(n->dtype, n->shape), want) == 0; }

#define CHECK_TYPE(name, node, want) \
    do { \
        const Node *n_ = (node); \
        th_check(is_type(n_, want), name, "got %s, want %s", type_str(n_->dtype, n_->shape), want); \
    } while (0)

/* Run stmt with stderr in a file and diag_recover set; *out gets what was
 * printed (malloc'd) and the macro's value is whether an error was raised. */
static char captured[8192];
static int saved_fd;
static FILE *cap_file;
static jmp_buf cap_jmp;

static void capture_begin(void) {
    fflush(stderr);
    cap_file = tmpfile();
    saved_fd = dup(2);
    dup2(fileno(cap_file), 2);
    diag_recover = &cap_jmp;
}

static void capture_end(void) {
    diag_recover = NULL;
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    rewind(cap_file);
    size_t n = fread(captured, 1, sizeof captured - 1, cap_file);
    captured[n] = 0;
    fclose(cap_file);
}

#define EXPECT_ERROR(name, stmt, ...) \
    do { \
        volatile bool raised_ = false; \
        capture_begin(); \
        if (!setjmp(cap_jmp)) { \
            stmt; \
        } else { \
            raised_ = true; \
        } \
        capture_end(); \
        const char *want_[] = {__VA_ARGS__, NULL}; \
        const char *miss_ = NULL; \
        for (int i_ = 0; want_[i_]; i_++) \
            if (!strstr(captured, want_[i_])) \
                miss_ = want_[i_]; \
        if (!raised_) \
            th_fail(name, "no error raised"); \
        else \
            th_check(!miss_, name, "message lacks \"%s\"; got:\n%s", miss_ ? miss_ : "", captured); \
    } while (0)

/* ---------------------------------------------------------------------------- */

static void test_shape_helpers(void) {
    th_check(strcmp(shape_str(S(2, 4, 3)), "[4, 3]") == 0 && strcmp(shape_str(shape_scalar()), "[]") == 0 &&
                 strcmp(type_str(DT_I32, S(1, 7)), "i32[7]") == 0,
             "shape_str", "got %s", shape_str(S(2, 4, 3)));
    th_check(shape_numel(S(3, 2, 3, 4)) == 24 && shape_numel(shape_scalar()) == 1 && shape_numel(S(2, 0, 5)) == 0,
             "shape_numel", "wrong counts");
    th_check(shape_eq(S(2, 4, 3), shape_make(2, (int64_t[]){4, 3})) && !shape_eq(S(2, 4, 3), S(2, 3, 4)) &&
                 !shape_eq(S(1, 4), S(2, 4, 1)),
             "shape_eq", "wrong answer");
}

static void test_broadcast(void) {
    Graph *g = graph_new();
    Node *a = in_(g, 0, DT_F32, S(2, 4, 3)), *b = in_(g, 1, DT_F32, S(1, 3));
    CHECK_TYPE("broadcast [4,3]+[3]", g_binary(g, OP_ADD, a, b, at(1, 11)), "f32[4, 3]");
    Node *c = in_(g, 2, DT_F32, S(2, 4, 1)), *d = in_(g, 3, DT_F32, S(2, 1, 5));
    CHECK_TYPE("broadcast [4,1]*[1,5]", g_binary(g, OP_MUL, c, d, at(1, 11)), "f32[4, 5]");
    Node *e = in_(g, 4, DT_F32, S(3, 5, 1, 3)), *f = in_(g, 5, DT_F32, S(2, 4, 1));
    CHECK_TYPE("broadcast [5,1,3]-[4,1]", g_binary(g, OP_SUB, e, f, at(1, 11)), "f32[5, 4, 3]");
    Node *s = in_(g, 6, DT_F32, shape_scalar());
    CHECK_TYPE("broadcast []+[4,3]", g_binary(g, OP_ADD, s, a, at(1, 11)), "f32[4, 3]");
    Node *z = in_(g, 7, DT_F32, S(2, 0, 3));
    CHECK_TYPE("broadcast [0,3]+[3]", g_binary(g, OP_ADD, z, b, at(1, 11)), "f32[0, 3]");
    Node *bad = in_(g, 8, DT_F32, S(1, 5));
    EXPECT_ERROR("broadcast error message", g_binary(g, OP_ADD, a, bad, at(1, 11)),
                 "t.lth:1:11: error: shapes f32[4, 3] and f32[5] do not broadcast", "note: f32[4, 3] comes from here",
                 "note: f32[5] comes from here", "let a = x + y");
    Node *cond = in_(g, 9, DT_BOOL, S(1, 3));
    CHECK_TYPE("where broadcasts three", g_where(g, cond, a, s, at(1, 11)), "f32[4, 3]");
    EXPECT_ERROR("where broadcast error", g_where(g, cond, a, bad, at(1, 11)),
                 "shapes bool[3], f32[4, 3] and f32[5] do not broadcast");
    EXPECT_ERROR("where needs bool", g_where(g, a, a, a, at(1, 11)), "the condition of 'where' must be bool, got f32[4, 3]");
    CHECK_TYPE("broadcast_to", g_broadcast_to(g, b, S(3, 2, 4, 3), at(1, 11)), "f32[2, 4, 3]");
    EXPECT_ERROR("broadcast_to error", g_broadcast_to(g, a, S(2, 4, 5), at(1, 11)), "cannot broadcast f32[4, 3] to [4, 5]");
    CHECK_TYPE("sum_to", g_sum_to(g, in_(g, 10, DT_F32, S(3, 2, 4, 3)), S(2, 1, 3), at(1, 11)), "f32[1, 3]");
    EXPECT_ERROR("sum_to error", g_sum_to(g, a, S(1, 4), at(1, 11)), "cannot sum f32[4, 3] down to [4]");
}

static void test_dtypes(void) {
    Graph *g = graph_new();
    Loc l = at(1, 11);
    Node *xf = in_(g, 0, DT_F32, S(1, 3)), *xd = in_(g, 1, DT_F64, S(1, 3));
    Node *xi = in_(g, 2, DT_I32, S(1, 3)), *xb = in_(g, 3, DT_BOOL, S(1, 3));
    CHECK_TYPE("promote i32+f32", g_binary(g, OP_ADD, xi, xf, l), "f32[3]");
    CHECK_TYPE("promote f32+f64", g_binary(g, OP_ADD, xf, xd, l), "f64[3]");
    CHECK_TYPE("weak const keeps f32", g_binary(g, OP_MUL, g_scalar(g, 2, DT_F64, l), xf, l), "f32[3]");
    CHECK_TYPE("weak float const on i32", g_binary(g, OP_MUL, g_scalar(g, 0.5, DT_F32, l), xi, l), "f32[3]");
    CHECK_TYPE("weak int const on i32", g_binary(g, OP_ADD, xi, g_scalar(g, 1, DT_I32, l), l), "i32[3]");
    CHECK_TYPE("bool arithmetic in i32", g_binary(g, OP_ADD, xb, xb, l), "i32[3]");
    CHECK_TYPE("compare gives bool", g_binary(g, OP_LT, xi, xf, l), "bool[3]");
    CHECK_TYPE("exp of i32 is f32", g_unary(g, OP_EXP, xi, l), "f32[3]");
    CHECK_TYPE("pow of ints is f32", g_binary(g, OP_POW, xi, xi, l), "f32[3]");
    CHECK_TYPE("neg of bool is i32", g_unary(g, OP_NEG, xb, l), "i32[3]");
    CHECK_TYPE("and of bools", g_binary(g, OP_AND, xb, xb, l), "bool[3]");
    CHECK_TYPE("cast", g_cast(g, xf, DT_I32, l), "i32[3]");
    th_check(g_cast(g, xf, DT_F32, l) == xf, "cast to same dtype is identity", "made a node");
    CHECK_TYPE("sum of bool counts in i32", g_reduce(g, OP_SUM, xb, 1, false, l), "i32[]");
    EXPECT_ERROR("and needs bools", g_binary(g, OP_AND, xf, xb, l), "'and' needs bool operands, got f32[3] and bool[3]");
    EXPECT_ERROR("not needs bool", g_unary(g, OP_NOT, xf, l), "'not' needs a bool operand, got f32[3]");
    Node *in2[2] = {xf, xd};
    EXPECT_ERROR("shape rule dtype mismatch", node_new(g, OP_ADD, DT_F32, 2, in2, NULL, l),
                 "'add' needs operands of one dtype, got f32[3] and f64[3]");
    Node *in1[1] = {xi};
    EXPECT_ERROR("shape rule float only", node_new(g, OP_EXP, DT_I32, 1, in1, NULL, l), "'exp' needs f32 or f64 operands");
    th_check(g_const(g, 2.7, DT_I32, S(1, 2), l)->attr.value == 2 && g_const(g, 0.1, DT_F32, S(0), l)->attr.value == (double)0.1f,
             "const rounds to its dtype", "values not rounded");
}

static void test_reduce_views(void) {
    Graph *g = graph_new();
    Loc l = at(1, 11);
    Node *x = in_(g, 0, DT_F32, S(3, 2, 3, 4));
    CHECK_TYPE("sum keep", g_reduce(g, OP_SUM, x, 0x5, true, l), "f32[1, 3, 1]");
    CHECK_TYPE("max drop", g_reduce(g, OP_RMAX, x, 0x2, false, l), "f32[2, 4]");
    CHECK_TYPE("min all", g_reduce(g, OP_RMIN, x, 0x7, false, l), "f32[]");
    EXPECT_ERROR("reduce axis error", g_reduce(g, OP_SUM, x, 0x8, true, l), "axis 3 is out of range for f32[2, 3, 4]");
    CHECK_TYPE("reshape", g_reshape(g, x, S(2, 6, 4), l), "f32[6, 4]");
    CHECK_TYPE("reshape -1", g_reshape(g, x, S(2, -1, 8), l), "f32[3, 8]");
    EXPECT_ERROR("reshape error", g_reshape(g, x, S(2, 5, 5), l), "cannot reshape f32[2, 3, 4] (24 elements) to [5, 5] (25 elements)",
                 "note: f32[2, 3, 4] comes from here");
    CHECK_TYPE("permute", g_permute(g, x, (int[]){2, 0, 1}, l), "f32[4, 2, 3]");
    EXPECT_ERROR("permute error", g_permute(g, x, (int[]){0, 0, 1}, l), "is not a permutation of its 3 axes");
    Node *y = in_(g, 1, DT_F32, S(3, 2, 1, 4));
    CHECK_TYPE("expand", g_expand(g, y, S(3, 2, 5, 4), l), "f32[2, 5, 4]");
    EXPECT_ERROR("expand error", g_expand(g, y, S(3, 3, 5, 4), l), "cannot expand f32[2, 1, 4] to [3, 5, 4]");
    Node *sl = g_slice(g, x, (int64_t[]){0, 1, 0}, (int64_t[]){2, 1, 2}, (int64_t[]){1, 1, 3}, l);
    CHECK_TYPE("slice with step", sl, "f32[2, 1, 2]");
    EXPECT_ERROR("slice error", g_slice(g, x, (int64_t[]){0, 0, 1}, (int64_t[]){2, 3, 2}, (int64_t[]){1, 1, 3}, l),
                 "slice of f32[2, 3, 4] along axis 2 (start 1, 2 elements, step 3) is out of range");
    CHECK_TYPE("pad", g_pad(g, x, (int64_t[]){0, 1, 2}, (int64_t[]){1, 0, 3}, l), "f32[3, 4, 9]");
    EXPECT_ERROR("pad error", g_pad(g, x, (int64_t[]){0, -1, 0}, (int64_t[]){0, 0, 0}, l), "must not be negative");
    th_check(g_reshape(g, x, x->shape, l) == x && g_permute(g, x, (int[]){0, 1, 2}, l) == x && g_expand(g, x, x->shape, l) == x,
             "identity views return their input", "made a node");
    CHECK_TYPE("iota", g_iota(g, DT_I32, S(2, 3, 4), 1, l), "i32[3, 4]");
    CHECK_TYPE("rand", g_rand(g, OP_RAND_NORMAL, DT_F32, S(1, 5), 7, l), "f32[5]");
    EXPECT_ERROR("rand of ints", g_rand(g, OP_RAND_UNIFORM, DT_I32, S(1, 5), 7, l), "random tensors are f32 or f64");
    Shape big = S(8, 1, 1, 1, 1, 1, 1, 1, 1);
    big.rank = 9;   /* a corrupt shape: more dims than a Shape holds */
    EXPECT_ERROR("rank too big", g_const(g, 0, DT_F32, big, l), "rank 9 is not supported");
}

static void test_matmul(void) {
    Graph *g = graph_new();
    Loc l = at(2, 11);
    Node *m34 = in_(g, 0, DT_F32, S(2, 3, 4)), *v4 = in_(g, 1, DT_F32, S(1, 4)), *m45 = in_(g, 2, DT_F32, S(2, 4, 5));
    CHECK_TYPE("matmul 2d@1d", g_matmul(g, m34, v4, l), "f32[3]");
    CHECK_TYPE("matmul 1d@2d", g_matmul(g, v4, m45, l), "f32[5]");
    CHECK_TYPE("matmul 1d@1d", g_matmul(g, v4, v4, l), "f32[]");
    CHECK_TYPE("matmul 2d@2d", g_matmul(g, m34, m45, l), "f32[3, 5]");
    Node *b234 = in_(g, 3, DT_F32, S(3, 2, 3, 4));
    CHECK_TYPE("matmul batched@2d", g_matmul(g, b234, m45, l), "f32[2, 3, 5]");
    Node *b2134 = in_(g, 4, DT_F32, S(4, 2, 1, 3, 4)), *b546 = in_(g, 5, DT_F32, S(3, 5, 4, 6));
    CHECK_TYPE("matmul batch broadcast", g_matmul(g, b2134, b546, l), "f32[2, 5, 3, 6]");
    CHECK_TYPE("matmul 1d@batched", g_matmul(g, v4, b546, l), "f32[5, 6]");
    CHECK_TYPE("matmul ints in f32", g_matmul(g, in_(g, 6, DT_I32, S(2, 2, 2)), in_(g, 7, DT_I32, S(2, 2, 2)), l), "f32[2, 2]");
    Node *m52 = in_(g, 8, DT_F32, S(2, 5, 2));
    EXPECT_ERROR("matmul error message", g_matmul(g, m34, m52, l),
                 "t.lth:2:11: error: cannot multiply f32[3, 4] by f32[5, 2]: inner dimensions 4 and 5 differ",
                 "note: f32[3, 4] comes from here", "let b = w @ v");
    EXPECT_ERROR("matmul batch error", g_matmul(g, in_(g, 9, DT_F32, S(3, 2, 3, 4)), in_(g, 10, DT_F32, S(3, 3, 4, 5)), l),
                 "batch dimensions of f32[2, 3, 4] and f32[3, 4, 5] do not broadcast");
    EXPECT_ERROR("matmul scalar error", g_matmul(g, in_(g, 11, DT_F32, shape_scalar()), v4, l), "rank 1 or more");
}

static void test_conv(void) {
    Graph *g = graph_new();
    Loc l = at(3, 9);
    Node *x = in_(g, 0, DT_F32, S(4, 2, 3, 8, 8)), *w = in_(g, 1, DT_F32, S(4, 4, 3, 3, 3));
    Node *y = g_conv2d(g, x, w, 2, 2, 1, 1, l);
    CHECK_TYPE("conv2d stride 2 pad 1", y, "f32[2, 4, 4, 4]");
    CHECK_TYPE("conv2d 1x1", g_conv2d(g, x, in_(g, 2, DT_F32, S(4, 5, 3, 1, 1)), 1, 1, 0, 0, l), "f32[2, 5, 8, 8]");
    CHECK_TYPE("conv2d 7x7 s2 p3", g_conv2d(g, in_(g, 3, DT_F32, S(4, 1, 3, 9, 9)), in_(g, 4, DT_F32, S(4, 6, 3, 7, 7)), 2, 2, 3, 3, l),
               "f32[1, 6, 5, 5]");
    CHECK_TYPE("conv2d_bwd_input", g_conv2d_bwd_input(g, y, w, x->shape, 2, 2, 1, 1, l), "f32[2, 3, 8, 8]");
    CHECK_TYPE("conv2d_bwd_weight", g_conv2d_bwd_weight(g, x, y, 3, 3, 2, 2, 1, 1, l), "f32[4, 3, 3, 3]");
    Node *u = g_unfold(g, x, 3, 3, 2, 2, 1, 1, l);
    CHECK_TYPE("unfold", u, "f32[2, 3, 4, 4, 3, 3]");
    CHECK_TYPE("fold", g_fold(g, u, x->shape, 3, 3, 2, 2, 1, 1, l), "f32[2, 3, 8, 8]");
    CHECK_TYPE("unfold 2x2 s2 (pooling)", g_unfold(g, x, 2, 2, 2, 2, 0, 0, l), "f32[2, 3, 4, 4, 2, 2]");
    Node *w5 = in_(g, 5, DT_F32, S(4, 4, 5, 3, 3));
    EXPECT_ERROR("conv channel error", g_conv2d(g, x, w5, 1, 1, 0, 0, l),
                 "conv2d of f32[2, 3, 8, 8] with weight f32[4, 5, 3, 3]: 3 input channels but the weight expects 5",
                 "note: f32[4, 5, 3, 3] comes from here", "let c = conv2d(x, w)");
    EXPECT_ERROR("conv window error", g_conv2d(g, in_(g, 6, DT_F32, S(4, 1, 3, 2, 2)), w, 1, 1, 0, 0, l),
                 "a 3x3 window with stride 1,1 and padding 0,0 does not fit f32[1, 3, 2, 2]");
    EXPECT_ERROR("conv rank error", g_conv2d(g, in_(g, 7, DT_F32, S(3, 3, 8, 8)), w, 1, 1, 0, 0, l),
                 "'conv2d' needs [N, Ci, H, W] for operand 1, got f32[3, 8, 8]");
    EXPECT_ERROR("fold shape error", g_fold(g, u, S(4, 2, 3, 9, 9), 3, 3, 2, 2, 1, 1, l), "fold into [2, 3, 9, 9] needs columns");
    EXPECT_ERROR("bwd_input shape error", g_conv2d_bwd_input(g, y, w, S(4, 2, 3, 12, 12), 2, 2, 1, 1, l),
                 "gradient f32[2, 4, 4, 4] and weight f32[4, 3, 3, 3] do not fit together");
}

static void test_gather(void) {
    Graph *g = graph_new();
    Loc l = at(1, 9);
    Node *logits = in_(g, 0, DT_F32, S(2, 5, 7)), *y = in_(g, 1, DT_I32, S(1, 5));
    CHECK_TYPE("gather one per row", g_gather(g, logits, y, 1, 1, l), "f32[5]");
    Node *emb = in_(g, 2, DT_F32, S(2, 10, 4)), *tok = in_(g, 3, DT_I32, S(2, 3, 2));
    Node *ge = g_gather(g, emb, tok, 0, 0, l);
    CHECK_TYPE("gather embedding", ge, "f32[3, 2, 4]");
    CHECK_TYPE("gather middle axis", g_gather(g, in_(g, 4, DT_F32, S(3, 2, 6, 3)), in_(g, 5, DT_I32, S(1, 4)), 1, 0, l),
               "f32[2, 4, 3]");
    CHECK_TYPE("scatter_add", g_scatter_add(g, tok, ge, emb->shape, 0, 0, l), "f32[10, 4]");
    EXPECT_ERROR("gather float indices", g_gather(g, emb, emb, 0, 0, l), "indices must be integers, got f32[10, 4]");
    EXPECT_ERROR("gather batch mismatch", g_gather(g, logits, in_(g, 6, DT_I32, S(1, 4)), 1, 1, l),
                 "the first 1 dims of indices i32[4] must equal those of [5, 7]");
    EXPECT_ERROR("gather axis error", g_gather(g, logits, y, 2, 0, l), "along axis 2 with 0 batch dims does not fit");
    EXPECT_ERROR("scatter shape error", g_scatter_add(g, tok, logits, emb->shape, 0, 0, l),
                 "scatter_add into [10, 4] with indices i32[3, 2] needs updates of shape [3, 2, 4], got f32[5, 7]");
}

/* toposort restores order after a shuffle; dump has one line per node */
static void test_toposort_dump(void) {
    Graph *g = graph_new();
    Loc l = at(1, 11);
    Node *a = in_(g, 0, DT_F32, S(2, 4, 3)), *b = in_(g, 1, DT_F32, S(1, 3));
    Node *c = g_binary(g, OP_ADD, a, b, l);
    g_reduce(g, OP_SUM, c, 1, false, l);
    int n = g->nodes.len;
    for (int i = 0; i < n / 2; i++) {
        Node *t = g->nodes.data[i];
        g->nodes.data[i] = g->nodes.data[n - 1 - i];
        g->nodes.data[n - 1 - i] = t;
    }
    graph_toposort(g);
    bool ok = g->nodes.len == n;
    for (int i = 0; ok && i < n; i++)
        for (int k = 0; k < g->nodes.data[i]->nin; k++)
            for (int j = i; j < n; j++)
                ok &= g->nodes.data[j] != g->nodes.data[i]->in[k];
    th_check(ok, "toposort", "order not restored");

    Entry e = {.name = "f", .kind = "fn", .g = g};
    EntryArg ea = {.name = "x", .kind = LETHE_INPUT, .access = LETHE_READ, .dtype = DT_F32, .shape = a->shape, .in = a};
    vec_push(&e.args, ea);
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    graph_dump(&e, f);
    fclose(f);
    char want[128];
    snprintf(want, sizeof want, "  %%%d = add %%%d %%%d : f32[4, 3]  @t.lth:1:11\n", c->id, c->in[0]->id, c->in[1]->id);
    th_check(strstr(buf, want) && strstr(buf, "arg 0 x : f32[4, 3]  input read") && strstr(buf, "sum %") &&
                 strstr(buf, "{axes=[0]}"),
             "graph_dump format", "got:\n%s", buf);
}

/* ---------------------------------------------------------------------------- */

static bool near(const double *a, const double *b, int n) {
    for (int i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > 1e-12 * (1 + fabs(b[i])))
            return false;
    return true;
}

static void test_refeval(void) {
    Graph *g = graph_new();
    Loc l = at(1, 1);
    Node *a = in_(g, 0, DT_F64, S(2, 2, 3)), *b = in_(g, 1, DT_F64, S(2, 3, 2));
    Node *mm = g_matmul(g, a, b, l);
    double av[] = {1, 2, 3, 4, 5, 6}, bv[] = {7, 8, 9, 10, 11, 12};
    Node *tr = g_permute(g, a, (int[]){1, 0}, l);
    Node *sl = g_slice(g, a, (int64_t[]){0, 0}, (int64_t[]){2, 2}, (int64_t[]){1, 2}, l);
    Node *pd = g_pad(g, sl, (int64_t[]){1, 0}, (int64_t[]){0, 1}, l);
    Node *mx = g_reduce(g, OP_RMAX, a, 2, false, l);
    Node *x = in_(g, 2, DT_F64, S(4, 1, 1, 3, 3));
    Node *w = in_(g, 3, DT_F64, S(4, 1, 1, 2, 2));
    Node *cv = g_conv2d(g, x, w, 1, 1, 0, 0, l);
    Node *cvp = g_conv2d(g, x, w, 2, 2, 1, 1, l);
    Node *un = g_unfold(g, x, 2, 2, 1, 1, 0, 0, l);
    Node *fo = g_fold(g, un, x->shape, 2, 2, 1, 1, 0, 0, l);
    double xv[] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, wv[] = {1, 0, 0, -1};
    Node *idx = in_(g, 4, DT_I32, S(1, 2));
    Node *ga = g_gather(g, a, idx, 1, 1, l);
    Node *gb = g_gather(g, a, idx, 0, 0, l);
    Node *sc = g_scatter_add(g, idx, ga, S(2, 2, 5), 1, 1, l);
    double iv[] = {2, 7};   /* 7 is clamped to 2 (row) / 1 (axis 0) */
    Node *io = g_iota(g, DT_I32, S(2, 2, 3), 1, l);
    Node *cs = g_cast(g, g_binary(g, OP_DIV, g_scalar(g, -7, DT_I32, l), g_const(g, 2, DT_I32, S(1, 1), l), l), DT_F64, l);
    double *in[] = {av, bv, xv, wv, iv};
    double **v = refeval_graph(g, in, 0, 0);
    th_check(near(v[mm->id], (double[]){58, 64, 139, 154}, 4), "refeval matmul", "%g %g %g %g", v[mm->id][0], v[mm->id][1],
             v[mm->id][2], v[mm->id][3]);
    th_check(near(v[tr->id], (double[]){1, 4, 2, 5, 3, 6}, 6), "refeval permute", "wrong");
    th_check(near(v[pd->id], (double[]){0, 0, 0, 1, 3, 0, 4, 6, 0}, 9), "refeval slice+pad", "wrong");
    th_check(near(v[mx->id], (double[]){3, 6}, 2), "refeval rmax", "wrong");
    th_check(near(v[cv->id], (double[]){-4, -4, -4, -4}, 4), "refeval conv2d", "%g %g", v[cv->id][0], v[cv->id][1]);
    /* stride 2 pad 1: windows at rows -1,1 and cols -1,1 */
    th_check(near(v[cvp->id], (double[]){-1, -3, -7, 5 - 9}, 4), "refeval conv2d stride pad", "%g %g %g %g", v[cvp->id][0],
             v[cvp->id][1], v[cvp->id][2], v[cvp->id][3]);
    th_check(near(v[fo->id], (double[]){1, 4, 3, 8, 20, 12, 7, 16, 9}, 9), "refeval unfold+fold", "wrong");
    th_check(near(v[ga->id], (double[]){3, 6}, 2), "refeval gather batched", "%g %g", v[ga->id][0], v[ga->id][1]);
    th_check(near(v[gb->id], (double[]){4, 5, 6, 4, 5, 6}, 6), "refeval gather rows", "wrong");
    th_check(near(v[sc->id], (double[]){0, 0, 3, 0, 0, 0, 0, 0, 0, 6}, 10), "refeval scatter_add", "wrong");
    th_check(near(v[io->id], (double[]){0, 1, 2, 0, 1, 2}, 6), "refeval iota", "wrong");
    th_check(v[cs->id][0] == -3, "refeval integer division truncates", "got %g", v[cs->id][0]);
    refeval_free(v);
}

int main(void) {
    src = srcfile_from_string("t.lth", src_text, sizeof src_text - 1);
    test_shape_helpers();
    test_broadcast();
    test_dtypes();
    test_reduce_views();
    test_matmul();
    test_conv();
    test_gather();
    test_toposort_dump();
    test_refeval();
    return th_exit();
}
