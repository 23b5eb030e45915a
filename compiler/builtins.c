/* builtins.c: the language's builtin functions.
 *
 * Every builtin that denotes tensor math expands into the primitives of
 * ops.def through the g_* builders. Composites (mean, logsumexp, softmax,
 * batchnorm, layernorm, pooling, concat, one_hot, ...) are written here once,
 * in primitives, so their gradients of every order come from the op table and
 * the fusion pass puts them back together into few kernels.
 *
 * Builtins on compile-time numbers (sqrt(1.0 / fin)) are computed at once.
 * Trees are handled leaf by leaf where that makes sense.
 */
#include <math.h>
#include <string.h>

#include "sema.h"

/* name, parameters ("x,axis=,keep=": '=' marks an optional one) */
#define BUILTINS(X)                                             \
    X(EXP, "exp", "x") X(LOG, "log", "x") X(SQRT, "sqrt", "x")   \
    X(RSQRT, "rsqrt", "x") X(TANH, "tanh", "x")                 \
    X(SIGMOID, "sigmoid", "x") X(RELU, "relu", "x")             \
    X(GELU, "gelu", "x") X(ABS, "abs", "x") X(SIGN, "sign", "x") \
    X(DETACH, "detach", "x")                                    \
    X(POW, "pow", "a,b") X(MAXIMUM, "maximum", "a,b")           \
    X(MINIMUM, "minimum", "a,b") X(WHERE, "where", "cond,a,b")  \
    X(SUM, "sum", "x,axis=,keep=") X(MEAN, "mean", "x,axis=,keep=") \
    X(MAX, "max", "x,axis=,keep=") X(MIN, "min", "x,axis=,keep=") \
    X(LOGSUMEXP, "logsumexp", "x,axis=,keep=")                  \
    X(VAR, "var", "x,axis=,keep=") X(NORM, "norm", "x,axis=,keep=") \
    X(RESHAPE, "reshape", "x,shape") X(TRANSPOSE, "transpose", "x,perm=") \
    X(BROADCAST, "broadcast", "x,shape") X(UNSQUEEZE, "unsqueeze", "x,axis") \
    X(SQUEEZE, "squeeze", "x,axis=") X(FLATTEN, "flatten", "x,start=") \
    X(CONCAT, "concat", "xs,axis=") X(SPLIT, "split", "x,sections,axis=") \
    X(RANGE, "range", "n") X(CLIP_NORM, "clip_norm", "t,max")   \
    X(TAKE, "take", "x,idx,axis=") X(ONE_HOT, "one_hot", "y,n")  \
    X(EMBEDDING, "embedding", "w,idx") X(ARANGE, "arange", "n")  \
    X(CONV2D, "conv2d", "x,w,stride=,pad=")                     \
    X(MAX_POOL2D, "max_pool2d", "x,k,stride=,pad=")             \
    X(AVG_POOL2D, "avg_pool2d", "x,k,stride=,pad=")             \
    X(BATCHNORM, "batchnorm", "x,gamma,beta,mean,var,momentum=,eps=") \
    X(LAYERNORM, "layernorm", "x,gamma,beta,eps=")              \
    X(SOFTMAX, "softmax", "x,axis=") X(LOG_SOFTMAX, "log_softmax", "x,axis=") \
    X(CAUSAL_MASK, "causal_mask", "x")                          \
    X(DROPOUT, "dropout", "x,p")                                \
    X(DOT, "dot", "a,b") X(COSINE, "cosine", "a,b")             \
    X(ZEROS_LIKE, "zeros_like", "t") X(ONES_LIKE, "ones_like", "t") \
    X(NORMAL_LIKE, "normal_like", "t,std=,mean=")               \
    X(UNIFORM_LIKE, "uniform_like", "t,lo=,hi=")                \
    X(GRAD, "grad", "f,wrt") X(LAST, "last", "m,k")             \
    X(DATA, "data", "")  X(LEN, "len", "x")                      \
    X(ZEROS, "zeros", "") X(ONES, "ones", "") X(CONSTANT, "constant", "value") \
    X(NORMAL, "normal", "std=,mean=") X(UNIFORM, "uniform", "lo=,hi=") \
    X(KAIMING_NORMAL, "kaiming_normal", "fan_in")               \
    X(KAIMING_UNIFORM, "kaiming_uniform", "fan_in")             \
    X(LINF, "linf", "eps") X(L2, "l2", "eps") X(BOX, "box", "lo,hi") \
    X(IDENTITY, "Identity", "")

enum {
    B_NONE_ = BUILTIN_NONE,
#define X(e, name, sig) B_##e,
    BUILTINS(X)
#undef X
    B_COUNT
};

static const struct { const char *name, *sig; } table[] = {
    [BUILTIN_NONE] = {"", ""},
#define X(e, name, sig) [B_##e] = {name, sig},
    BUILTINS(X)
#undef X
};

int builtin_lookup(const char *name) {
    for (int i = 1; i < B_COUNT; i++)
        if (!strcmp(table[i].name, name))
            return i;
    return 0;
}

const char *builtin_name(int id) { return id > 0 && id < B_COUNT ? table[id].name : "?"; }

/* Parameters of a builtin from its signature string; opt[i] marks optional. */
static int sig_params(int id, Param *out, bool *opt) {
    const char *s = table[id].sig;
    int n = 0;
    while (*s) {
        const char *e = s;
        while (*e && *e != ',')
            e++;
        bool o = e > s && e[-1] == '=';
        out[n].name = xstrndup(s, (size_t)(e - s - o));
        opt[n++] = o;
        s = *e ? e + 1 : e;
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * helpers */

static Graph *G(Loc loc, const char *what) {
    if (!cur)
        error_at(loc, "%s needs tensors, which only exist inside an exported fn, rule or objective", what);
    return cur->g;
}

static Node *N(Value v, Loc loc, const char *what) { return value_as_node(v, loc, what); }

static bool is_float(DType d) { return d == DT_F32 || d == DT_F64; }

static Node *need_float(Node *x, Loc loc, const char *what) {
    if (!is_float(x->dtype))
        error_at(loc, "%s needs a float tensor, not %s", what, type_str(x->dtype, x->shape));
    return x;
}

static Node *scalar_like(Graph *g, double v, Node *like, Loc loc) { return g_scalar(g, v, like->dtype, loc); }

uint32_t axes_arg(const Value *axis, int rank, Loc loc) {
    if (!axis || axis->kind == V_NONE)
        return rank ? (uint32_t)((1u << rank) - 1) : 0;
    uint32_t mask = 0;
    int n = axis->kind == V_TREE ? axis->tree->n : 1;
    for (int i = 0; i < n; i++) {
        const Value *a = axis->kind == V_TREE ? &axis->tree->vals[i] : axis;
        int64_t k = value_as_int(a, a->loc.file ? a->loc : loc, "an axis");
        if (k < 0)
            k += rank;
        if (k < 0 || k >= rank)
            error_at(a->loc.file ? a->loc : loc, "axis %lld is out of range for a tensor of rank %d", (long long)value_as_int(a, loc, "an axis"),
                     rank);
        if (mask & (1u << k))
            error_at(loc, "axis %lld is given twice", (long long)k);
        mask |= 1u << k;
    }
    return mask;
}

static int axis_arg(const Value *axis, int rank, int deflt, Loc loc) {
    if (!axis || axis->kind == V_NONE)
        return deflt;
    int64_t k = value_as_int(axis, axis->loc.file ? axis->loc : loc, "an axis");
    if (k < 0)
        k += rank;
    if (k < 0 || k >= rank)
        error_at(axis->loc.file ? axis->loc : loc, "axis %lld is out of range for a tensor of rank %d",
                 (long long)value_as_int(axis, loc, "an axis"), rank);
    return (int)k;
}

static bool bool_arg(const Value *v, bool deflt, Loc loc) {
    if (!v || v->kind == V_NONE)
        return deflt;
    if (v->kind != V_BOOL && v->kind != V_INT)
        error_at(v->loc.file ? v->loc : loc, "expected true or false, not %s", value_kind_name(v));
    return v->i != 0;
}

static double num_arg(const Value *v, double deflt, Loc loc, const char *what) {
    if (!v || v->kind == V_NONE)
        return deflt;
    return value_as_double(v, v->loc.file ? v->loc : loc, what);
}

static int64_t int_arg(const Value *v, int64_t deflt, Loc loc, const char *what) {
    if (!v || v->kind == V_NONE)
        return deflt;
    return value_as_int(v, v->loc.file ? v->loc : loc, what);
}

static int64_t count_axes(Shape s, uint32_t axes) {
    int64_t n = 1;
    for (int i = 0; i < s.rank; i++)
        if (axes & (1u << i))
            n *= s.dim[i];
    return n;
}

static Shape shape_from_list(const Value *v, Loc loc, const char *what) {
    Shape s = {0};
    if (v->kind == V_INT) {
        s.rank = 1;
        s.dim[0] = v->i;
        return s;
    }
    if (v->kind != V_TREE || !v->tree->is_list)
        error_at(loc, "%s is a list of sizes such as [4, -1]", what);
    if (v->tree->n > MAX_RANK)
        error_at(loc, "tensors have at most %d dimensions", MAX_RANK);
    s.rank = v->tree->n;
    for (int i = 0; i < s.rank; i++)
        s.dim[i] = value_as_int(&v->tree->vals[i], v->tree->vals[i].loc.file ? v->tree->vals[i].loc : loc, "a size");
    return s;
}

static Node *reduce(Graph *g, Op op, Node *x, uint32_t axes, bool keep, Loc loc) { return g_reduce(g, op, x, axes, keep, loc); }

static Node *mean_of(Graph *g, Node *x, uint32_t axes, bool keep, Loc loc) {
    need_float(x, loc, "mean");
    Node *s = reduce(g, OP_SUM, x, axes, keep, loc);
    return g_binary(g, OP_MUL, s, scalar_like(g, 1.0 / (double)count_axes(x->shape, axes), x, loc), loc);
}

/* One reduction op (OP_RLSE, lowered to one kernel that keeps no exp(x - max)
 * buffer); its gradient exp(x - lse) is a row of the table like any other. */
static Node *logsumexp_of(Graph *g, Node *x, uint32_t axes, bool keep, Loc loc) {
    need_float(x, loc, "logsumexp");
    return reduce(g, OP_RLSE, x, axes, keep, loc);
}

/* log_softmax is x - lse (OP_RLSE: no exp(x - max) buffer). softmax keeps
 * exp(x - max) / sum: the exp buffer it writes is read by the sum and the
 * division, where exp(x - lse) would compute every exp twice (once in the
 * reduction), which costs more than the buffer while a row of scores fits
 * in cache (docs/design.md, "Fused cross entropy and attention"). */
static Node *softmax_of(Graph *g, Node *x, int axis, bool log_space, Loc loc) {
    need_float(x, loc, log_space ? "log_softmax" : "softmax");
    uint32_t ax = 1u << axis;
    if (log_space)
        return g_binary(g, OP_SUB, x, g_expand(g, reduce(g, OP_RLSE, x, ax, true, loc), x->shape, loc), loc);
    Node *m = g_unary(g, OP_DETACH, reduce(g, OP_RMAX, x, ax, true, loc), loc);
    Node *e = g_unary(g, OP_EXP, g_binary(g, OP_SUB, x, m, loc), loc);
    return g_binary(g, OP_DIV, e, reduce(g, OP_SUM, e, ax, true, loc), loc);
}

/* Flatten a value into its tensor leaves (numbers stay numbers). */
void tree_leaves(Value v, ValueVec *out) {
    if (v.kind == V_TREE)
        for (int i = 0; i < v.tree->n; i++)
            tree_leaves(v.tree->vals[i], out);
    else
        vec_push(out, v);
}

static bool same_structure(const Tree *a, const Tree *b) {
    if (a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++) {
        const char *x = a->names[i], *y = b->names[i];
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y)))
            return false;
        if ((a->vals[i].kind == V_TREE) != (b->vals[i].kind == V_TREE))
            return false;
        if (a->vals[i].kind == V_TREE && !same_structure(a->vals[i].tree, b->vals[i].tree))
            return false;
    }
    return true;
}

Value tree_map2(Op op, Value a, Value b, Loc loc) {
    if (a.kind == V_TREE || b.kind == V_TREE) {
        if (a.kind == V_TREE && b.kind == V_TREE && !same_structure(a.tree, b.tree)) {
            diag_note(a.loc, "the left side is a tree of %d", a.tree->n);
            diag_note(b.loc, "the right side is a tree of %d", b.tree->n);
            error_at(loc, "operator '%s' needs two trees of the same structure", op_info[op].name);
        }
        const Tree *t = a.kind == V_TREE ? a.tree : b.tree;
        Value r = v_tree_new(t->n, t->is_list, loc);
        for (int i = 0; i < t->n; i++) {
            r.tree->names[i] = t->names[i];
            r.tree->vals[i] = tree_map2(op, a.kind == V_TREE ? a.tree->vals[i] : a, b.kind == V_TREE ? b.tree->vals[i] : b, loc);
        }
        return r;
    }
    Graph *g = G(loc, xfmt("'%s'", op_info[op].name));
    Node *x = N(a, a.loc.file ? a.loc : loc, "the left operand");
    Node *y = N(b, b.loc.file ? b.loc : loc, "the right operand");
    return v_tensor(g_binary(g, op, x, y, loc));
}

static Value map1(Op op, Value v, Loc loc, double (*f)(double)) {
    if (is_scalar_value(&v) && f)
        return v_float(f(value_as_double(&v, loc, "x")), loc);
    if (v.kind == V_TREE) {
        Value r = v_tree_new(v.tree->n, v.tree->is_list, loc);
        for (int i = 0; i < v.tree->n; i++) {
            r.tree->names[i] = v.tree->names[i];
            r.tree->vals[i] = map1(op, v.tree->vals[i], loc, f);
        }
        return r;
    }
    Graph *g = G(loc, op_info[op].name);
    return v_tensor(g_unary(g, op, N(v, loc, "x"), loc));
}

static double d_rsqrt(double x) { return 1 / sqrt(x); }
static double d_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double d_relu(double x) { return x > 0 ? x : 0; }
static double d_sign(double x) { return (x > 0) - (x < 0); }
static double d_gelu(double x) { return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

/* where(c, a, b) leaf by leaf when any of them is a tree (the others broadcast). */
static Value where_tree(Value c, Value a, Value b, Loc loc) {
    const Value *t = c.kind == V_TREE ? &c : a.kind == V_TREE ? &a : &b;
    const Value *args[3] = {&c, &a, &b};
    for (int k = 0; k < 3; k++)
        if (args[k]->kind == V_TREE && !same_structure(args[k]->tree, t->tree))
            error_at(loc, "where needs trees of the same structure");
    Value r = v_tree_new(t->tree->n, t->tree->is_list, loc);
    for (int i = 0; i < t->tree->n; i++) {
        Value l[3];
        for (int k = 0; k < 3; k++)
            l[k] = args[k]->kind == V_TREE ? args[k]->tree->vals[i] : *args[k];
        r.tree->names[i] = t->tree->names[i];
        if (l[0].kind == V_TREE || l[1].kind == V_TREE || l[2].kind == V_TREE)
            r.tree->vals[i] = where_tree(l[0], l[1], l[2], loc);
        else {
            Node *cn = N(l[0], loc, "the condition");
            if (cn->dtype != DT_BOOL)
                error_at(loc, "where needs a bool condition, not %s", type_str(cn->dtype, cn->shape));
            r.tree->vals[i] = v_tensor(g_where(cur->g, cn, N(l[1], loc, "a"), N(l[2], loc, "b"), loc));
        }
    }
    return r;
}

/* Like-a-tree: the same structure, each leaf made by `make`. */
static Value like(Value t, Loc loc, Node *(*make)(Node *like, const double *p, uint64_t stream, Loc loc), const double *p,
                  uint64_t salt) {
    if (t.kind == V_TREE) {
        Value r = v_tree_new(t.tree->n, t.tree->is_list, loc);
        for (int i = 0; i < t.tree->n; i++) {
            r.tree->names[i] = t.tree->names[i];
            const char *nm = t.tree->names[i] ? t.tree->names[i] : "";
            r.tree->vals[i] = like(t.tree->vals[i], loc, make, p, hash_bytes(nm, strlen(nm), salt + (uint64_t)i));
        }
        return r;
    }
    return v_tensor(make(N(t, loc, "the template tensor"), p, salt, loc));
}

static Node *make_const(Node *x, const double *p, uint64_t stream, Loc loc) {
    DType dt = is_float(x->dtype) ? x->dtype : promote_dtype(DT_F32);
    return g_const(cur->g, p[0], dt, x->shape, loc);
}

static Node *make_rand(Node *x, const double *p, uint64_t stream, Loc loc) {
    /* p[0]: 0 standard normal, 1 uniform on (0, 1) */
    DType dt = is_float(x->dtype) ? x->dtype : promote_dtype(DT_F32);
    return g_rand(cur->g, p[0] == 0 ? OP_RAND_NORMAL : OP_RAND_UNIFORM, dt, x->shape, stream, loc);
}

static uint64_t call_site_stream(Loc loc) {
    uint64_t h = hash_bytes(&loc.line, sizeof loc.line, cur ? cur->stream_salt : 0);
    return hash_bytes(&loc.col, sizeof loc.col, h);
}

static Value spec(const char *name, Value *vals, const Param *params, int n, Loc loc) {
    Value s = {.kind = V_SPEC, .s = name, .loc = loc};
    Value t = v_tree_new(n, false, loc);
    for (int i = 0; i < n; i++) {
        t.tree->names[i] = params[i].name;
        t.tree->vals[i] = vals[i];
    }
    s.tree = t.tree;
    return s;
}

/* tensor or tree: sum of squares / inner products over every leaf */
static Node *tree_dot(Value a, Value b, Loc loc) {
    Graph *g = G(loc, "dot");
    ValueVec la = {0}, lb = {0};
    tree_leaves(a, &la);
    tree_leaves(b, &lb);
    if (la.len != lb.len || (a.kind == V_TREE && b.kind == V_TREE && !same_structure(a.tree, b.tree)))
        error_at(loc, "dot needs two tensors or two trees of the same structure");
    Node *acc = NULL;
    for (int i = 0; i < la.len; i++) {
        Node *x = N(la.data[i], loc, "a leaf"), *y = N(lb.data[i], loc, "a leaf");
        Node *p = g_binary(g, OP_MUL, x, y, loc);
        uint32_t all = p->shape.rank ? (1u << p->shape.rank) - 1 : 0;
        Node *s = reduce(g, OP_SUM, p, all, false, loc);
        acc = acc ? g_binary(g, OP_ADD, acc, s, loc) : s;
    }
    if (!acc)
        error_at(loc, "dot of empty trees");
    return acc;
}

/* ---------------------------------------------------------------------------
 * neural-network composites */

static Node *bn_stat_shape(Graph *g, Node *v, Node *x, Loc loc) {
    /* [C] statistics broadcast against x[N, C, ...] */
    Shape s = {.rank = x->shape.rank};
    for (int i = 0; i < s.rank; i++)
        s.dim[i] = i == 1 ? x->shape.dim[1] : 1;
    return g_reshape(g, v, s, loc);
}

static Value batchnorm(Value *a, bool *given, Loc loc) {
    Graph *g = G(loc, "batchnorm");
    Node *x = need_float(N(a[0], loc, "x"), loc, "batchnorm");
    if (x->shape.rank < 2)
        error_at(loc, "batchnorm needs x of rank >= 2 ([N, C, ...]), not %s", type_str(x->dtype, x->shape));
    Node *gamma = N(a[1], loc, "gamma"), *beta = N(a[2], loc, "beta");
    Node *rmean = N(a[3], loc, "mean"), *rvar = N(a[4], loc, "var");
    int64_t c = x->shape.dim[1];
    Node *stats[4] = {gamma, beta, rmean, rvar};
    const char *names[4] = {"gamma", "beta", "mean", "var"};
    for (int i = 0; i < 4; i++)
        if (stats[i]->shape.rank != 1 || stats[i]->shape.dim[0] != c) {
            diag_note(stats[i]->loc, "%s comes from here", type_str(stats[i]->dtype, stats[i]->shape));
            diag_note(x->loc, "x is %s", type_str(x->dtype, x->shape));
            error_at(loc, "batchnorm: %s must be [%lld] (one per channel of x)", names[i], (long long)c);
        }
    double momentum = num_arg(given[5] ? &a[5] : NULL, 0.1, loc, "momentum");
    double eps = num_arg(given[6] ? &a[6] : NULL, 1e-5, loc, "eps");
    uint32_t axes = ((1u << x->shape.rank) - 1) & ~2u;   /* every axis but the channel */
    Node *mean, *var;
    if (cur->train) {
        int64_t n = count_axes(x->shape, axes);
        if (n < 2)
            error_at(loc, "batchnorm in train mode needs more than one value per channel (x is %s)", type_str(x->dtype, x->shape));
        Node *mu = mean_of(g, x, axes, true, loc);
        Node *xc = g_binary(g, OP_SUB, x, mu, loc);
        var = mean_of(g, g_binary(g, OP_MUL, xc, xc, loc), axes, true, loc);
        mean = mu;
        /* running statistics (PyTorch: unbiased variance), written at the end of a rule's step */
        Value *bufs[2] = {&a[3], &a[4]};
        Node *batch[2] = {g_reshape(g, g_unary(g, OP_DETACH, mu, loc), rmean->shape, loc),
                          g_reshape(g, g_binary(g, OP_MUL, g_unary(g, OP_DETACH, var, loc), scalar_like(g, (double)n / (double)(n - 1), x, loc), loc),
                                    rvar->shape, loc)};
        for (int k = 0; k < 2; k++) {
            if (!bufs[k]->leaf_model)
                continue;   /* statistics that are not buffers are not tracked */
            Model *m = bufs[k]->leaf_model;
            Node *old = model_running(m, bufs[k]->leaf, loc);
            Node *upd = g_binary(g, OP_ADD, g_binary(g, OP_MUL, old, scalar_like(g, 1 - momentum, old, loc), loc),
                                 g_binary(g, OP_MUL, batch[k], scalar_like(g, momentum, old, loc), loc), loc);
            model_train_update(m, bufs[k]->leaf, upd, loc);
        }
    } else {
        mean = bn_stat_shape(g, rmean, x, loc);
        var = bn_stat_shape(g, rvar, x, loc);
    }
    Node *inv = g_unary(g, OP_RSQRT, g_binary(g, OP_ADD, var, scalar_like(g, eps, x, loc), loc), loc);
    Node *y = g_binary(g, OP_MUL, g_binary(g, OP_SUB, x, mean, loc), inv, loc);
    y = g_binary(g, OP_MUL, y, bn_stat_shape(g, gamma, x, loc), loc);
    return v_tensor(g_binary(g, OP_ADD, y, bn_stat_shape(g, beta, x, loc), loc));
}

static Value layernorm(Value *a, bool *given, Loc loc) {
    Graph *g = G(loc, "layernorm");
    Node *x = need_float(N(a[0], loc, "x"), loc, "layernorm");
    Node *gamma = N(a[1], loc, "gamma"), *beta = N(a[2], loc, "beta");
    int k = gamma->shape.rank;
    if (k < 1 || k > x->shape.rank)
        error_at(loc, "layernorm: gamma must cover the last dimensions of x");
    for (int i = 0; i < k; i++)
        if (gamma->shape.dim[i] != x->shape.dim[x->shape.rank - k + i]) {
            diag_note(gamma->loc, "gamma is %s", type_str(gamma->dtype, gamma->shape));
            diag_note(x->loc, "x is %s", type_str(x->dtype, x->shape));
            error_at(loc, "layernorm: gamma's shape must equal the trailing dimensions of x");
        }
    double eps = num_arg(given[3] ? &a[3] : NULL, 1e-5, loc, "eps");
    uint32_t axes = 0;
    for (int i = x->shape.rank - k; i < x->shape.rank; i++)
        axes |= 1u << i;
    Node *mu = mean_of(g, x, axes, true, loc);
    Node *xc = g_binary(g, OP_SUB, x, mu, loc);
    Node *var = mean_of(g, g_binary(g, OP_MUL, xc, xc, loc), axes, true, loc);
    Node *y = g_binary(g, OP_MUL, xc, g_unary(g, OP_RSQRT, g_binary(g, OP_ADD, var, scalar_like(g, eps, x, loc), loc), loc), loc);
    return v_tensor(g_binary(g, OP_ADD, g_binary(g, OP_MUL, y, gamma, loc), beta, loc));
}

static Value pool(bool is_max, Value *a, bool *given, Loc loc) {
    Graph *g = G(loc, is_max ? "max_pool2d" : "avg_pool2d");
    Node *x = N(a[0], loc, "x");
    if (x->shape.rank != 4)
        error_at(loc, "%s needs x[N, C, H, W], not %s", is_max ? "max_pool2d" : "avg_pool2d", type_str(x->dtype, x->shape));
    int64_t k = int_arg(&a[1], 2, loc, "k");
    int64_t s = int_arg(given[2] ? &a[2] : NULL, k, loc, "stride");
    int64_t p = int_arg(given[3] ? &a[3] : NULL, 0, loc, "pad");
    if (k < 1 || s < 1 || p < 0 || 2 * p > k)
        error_at(loc, "pooling needs k >= 1, stride >= 1 and 0 <= pad <= k / 2");
    Node *u = g_unfold(g, x, k, k, s, s, p, p, loc);
    uint32_t win = (1u << 4) | (1u << 5);
    if (!is_max)   /* PyTorch's default count_include_pad = true */
        return v_tensor(g_binary(g, OP_MUL, reduce(g, OP_SUM, u, win, false, loc), scalar_like(g, 1.0 / (double)(k * k), x, loc), loc));
    if (p > 0) {   /* padding must never win a max: mask it with -inf */
        Node *ones = g_const(g, 1, x->dtype, x->shape, loc);
        Node *inside = g_binary(g, OP_GT, g_unfold(g, ones, k, k, s, s, p, p, loc), scalar_like(g, 0, x, loc), loc);
        u = g_where(g, inside, u, scalar_like(g, -INFINITY, x, loc), loc);
    }
    return v_tensor(reduce(g, OP_RMAX, u, win, false, loc));
}

/* ---------------------------------------------------------------------------
 * shapes */

static Value concat(Value *a, bool *given, Loc loc) {
    Graph *g = G(loc, "concat");
    if (a[0].kind != V_TREE || !a[0].tree->is_list || a[0].tree->n == 0)
        error_at(loc, "concat takes a non-empty list of tensors: concat([a, b], axis = 0)");
    Tree *t = a[0].tree;
    Node *first = N(t->vals[0], loc, "a concat operand");
    int rank = first->shape.rank;
    if (rank == 0)
        error_at(loc, "concat needs tensors of rank >= 1");
    int axis = axis_arg(given[1] ? &a[1] : NULL, rank, 0, loc);
    int64_t total = 0;
    for (int i = 0; i < t->n; i++) {
        Node *x = N(t->vals[i], loc, "a concat operand");
        bool ok = x->shape.rank == rank && x->dtype == first->dtype;
        for (int d = 0; ok && d < rank; d++)
            ok = d == axis || x->shape.dim[d] == first->shape.dim[d];
        if (!ok) {
            diag_note(first->loc, "the first is %s", type_str(first->dtype, first->shape));
            diag_note(x->loc, "operand %d is %s", i, type_str(x->dtype, x->shape));
            error_at(loc, "concat along axis %d needs equal dtypes and sizes in the other axes", axis);
        }
        total += x->shape.dim[axis];
    }
    /* a sum of zero-padded operands: views and adds, so it fuses and differentiates */
    Node *acc = NULL;
    int64_t at = 0;
    for (int i = 0; i < t->n; i++) {
        Node *x = t->vals[i].node;
        int64_t lo[MAX_RANK] = {0}, hi[MAX_RANK] = {0};
        lo[axis] = at;
        hi[axis] = total - at - x->shape.dim[axis];
        at += x->shape.dim[axis];
        Node *p = g_pad(g, x, lo, hi, loc);
        acc = acc ? g_binary(g, x->dtype == DT_BOOL ? OP_OR : OP_ADD, acc, p, loc) : p;
    }
    return v_tensor(acc);
}

static Value split(Value *a, bool *given, Loc loc);

/* split(batch, k) of a record (a data batch): each field split the same way,
 * giving a list of k smaller records. */
static Value split_record(Value *a, bool *given, Loc loc) {
    Tree *t = a[0].tree;
    Value r = {.kind = V_NONE};
    for (int f = 0; f < t->n; f++) {
        Value args[3] = {t->vals[f], a[1], a[2]};
        Value parts = split(args, given, loc);
        if (f == 0) {
            r = v_tree_new(parts.tree->n, true, loc);
            for (int i = 0; i < parts.tree->n; i++)
                r.tree->vals[i] = v_tree_new(t->n, false, loc);
        }
        for (int i = 0; i < parts.tree->n; i++) {
            r.tree->vals[i].tree->names[f] = t->names[f];
            r.tree->vals[i].tree->vals[f] = parts.tree->vals[i];
        }
    }
    if (r.kind == V_NONE)
        error_at(loc, "split of an empty record");
    return r;
}

static Value split(Value *a, bool *given, Loc loc) {
    if (a[0].kind == V_TREE && !a[0].tree->is_list)
        return split_record(a, given, loc);
    Graph *g = G(loc, "split");
    Node *x = N(a[0], loc, "x");
    if (x->shape.rank == 0)
        error_at(loc, "split needs a tensor of rank >= 1");
    int axis = axis_arg(given[2] ? &a[2] : NULL, x->shape.rank, 0, loc);
    int64_t n = x->shape.dim[axis];
    int64_t sizes[256];
    int count;
    if (a[1].kind == V_TREE) {
        count = a[1].tree->n;
        if (count < 1 || count > 256)
            error_at(loc, "split into 1 to 256 pieces");
        int64_t sum = 0;
        for (int i = 0; i < count; i++) {
            sizes[i] = value_as_int(&a[1].tree->vals[i], loc, "a piece size");
            if (sizes[i] < 0)
                error_at(loc, "piece sizes must not be negative");
            sum += sizes[i];
        }
        if (sum != n)
            error_at(loc, "split sizes add up to %lld, but axis %d has %lld", (long long)sum, axis, (long long)n);
    } else {
        int64_t k = value_as_int(&a[1], loc, "the number of pieces");
        if (k < 1 || k > 256 || n % k)
            error_at(loc, "split: axis %d of size %lld cannot be cut into %lld equal pieces", axis, (long long)n, (long long)k);
        count = (int)k;
        for (int i = 0; i < count; i++)
            sizes[i] = n / k;
    }
    Value r = v_tree_new(count, true, loc);
    int64_t at = 0;
    for (int i = 0; i < count; i++) {
        int64_t start[MAX_RANK] = {0}, cnt[MAX_RANK], step[MAX_RANK];
        for (int d = 0; d < x->shape.rank; d++) {
            cnt[d] = x->shape.dim[d];
            step[d] = 1;
        }
        start[axis] = at;
        cnt[axis] = sizes[i];
        at += sizes[i];
        r.tree->vals[i] = v_tensor(g_slice(g, x, start, cnt, step, loc));
    }
    return r;
}

static Value take(Value *a, bool *given, Loc loc) {
    Graph *g = G(loc, "take");
    Node *x = N(a[0], loc, "x"), *idx = N(a[1], loc, "idx");
    if (idx->dtype != DT_I32)
        error_at(loc, "take needs i32 indices, not %s", type_str(idx->dtype, idx->shape));
    if (x->shape.rank == 0)
        error_at(loc, "take needs x of rank >= 1");
    int axis = axis_arg(given[2] ? &a[2] : NULL, x->shape.rank, 0, loc);
    /* idx shaped like x's leading axes picks one element per row (take_along) */
    bool batched = idx->shape.rank == axis && axis > 0;
    for (int i = 0; batched && i < axis; i++)
        batched = idx->shape.dim[i] == x->shape.dim[i];
    return v_tensor(g_gather(g, x, idx, axis, batched ? axis : 0, loc));
}

/* ---------------------------------------------------------------------------
 * dispatch */

/* The same tree structure as `like`, with leaves taken from `leaves` in order. */
static Value rebuild(Value like, Node **leaves, int *k, Loc loc) {
    if (like.kind != V_TREE)
        return v_tensor(leaves[(*k)++]);
    Value r = v_tree_new(like.tree->n, like.tree->is_list, loc);
    for (int i = 0; i < like.tree->n; i++) {
        r.tree->names[i] = like.tree->names[i];
        r.tree->vals[i] = rebuild(like.tree->vals[i], leaves, k, loc);
    }
    return r;
}

/* Whether x is computed from a data argument (a batch, an fn input): then
 * each data-parallel rank holds its own, not a replica. */
static bool reads_data(const Entry *e, const Node *x, char *seen) {
    if (seen[x->id])
        return false;
    seen[x->id] = 1;
    if (x->op == OP_INPUT)
        return x->attr.arg >= 0 && x->attr.arg < e->args.len && e->args.data[x->attr.arg].kind == 3 /* LETHE_INPUT */;
    for (int i = 0; i < x->nin; i++)
        if (reads_data(e, x->in[i], seen))
            return true;
    return false;
}

/* In a data-parallel rule (lethec --world=N) each rank differentiates the
 * loss of its share of the batch; the gradient with respect to a replicated
 * tensor (parameters, rule state) becomes the mean over the ranks, which for
 * a loss that is a mean over the batch is the gradient of the whole batch. */
static void average_over_ranks(Graph *g, Node **xs, Node **out, int n, Loc loc) {
    if (!cur || !cur->data_parallel)
        return;
    for (int i = 0; i < n; i++) {
        char *seen = xalloc((size_t)g->next_id + 1);
        if (!reads_data(cur->e, xs[i], seen))
            out[i] = g_allreduce_mean(g, out[i], loc);
    }
}

static Value grad_builtin(Value f, Value wrt, Loc loc) {
    Graph *g = G(loc, "grad");
    Node *y = N(f, loc, "the differentiated value");
    if (y->shape.rank != 0)
        error_at(loc, "grad of a non-scalar: %s (reduce it first, e.g. with sum or mean)", type_str(y->dtype, y->shape));
    if (!is_float(y->dtype))
        error_at(loc, "grad of a non-float value: %s", type_str(y->dtype, y->shape));
    ValueVec leaves = {0};
    tree_leaves(wrt, &leaves);
    if (!leaves.len)
        error_at(loc, "grad with respect to an empty tree");
    Node **xs = xalloc(sizeof(Node *) * (size_t)leaves.len), **out = xalloc(sizeof(Node *) * (size_t)leaves.len);
    for (int i = 0; i < leaves.len; i++) {
        if (leaves.data[i].kind != V_TENSOR)
            error_at(loc, "grad is taken with respect to tensors, not %s", value_kind_name(&leaves.data[i]));
        xs[i] = leaves.data[i].node;
        if (!is_float(xs[i]->dtype))
            error_at(loc, "grad with respect to a non-float tensor (%s)", type_str(xs[i]->dtype, xs[i]->shape));
    }
    int before = g->next_id;
    autodiff(g, &y, NULL, 1, xs, leaves.len, out, loc);
    average_over_ranks(g, xs, out, leaves.len, loc);
    if ((dump_flags & DUMP_GRAD) && dump_file) {
        fprintf(dump_file, "grad at %s:%d:%d: %d new nodes (ids %d..%d)\n", loc.file ? loc.file->path : "?", loc.line, loc.col,
                g->next_id - before, before, g->next_id - 1);
        for (int i = 0; i < g->nodes.len; i++)
            if (g->nodes.data[i]->id >= before) {
                Node *n = g->nodes.data[i];
                fprintf(dump_file, "  %%%d = %s", n->id, op_info[n->op].name);
                for (int k = 0; k < n->nin; k++)
                    fprintf(dump_file, " %%%d", n->in[k]->id);
                fprintf(dump_file, " : %s\n", type_str(n->dtype, n->shape));
            }
    }
    int k = 0;
    return rebuild(wrt, out, &k, loc);
}

Value builtin_call(int id, Value *pos, int npos, const char **kwnames, Value *kwvals, int nkw, Loc loc) {
    Param params[8];
    bool opt[8];
    int np = sig_params(id, params, opt);
    const char *what = xfmt("%s()", table[id].name);
    if (id == B_DATA) {   /* data(x = f32[...], y = i32[...]): a record of types */
        if (npos)
            error_at(loc, "data() takes named fields: data(x = f32[32, 784], y = i32[32])");
        Value r = v_tree_new(nkw, false, loc);
        for (int i = 0; i < nkw; i++) {
            for (int j = 0; j < i; j++)
                if (!strcmp(kwnames[i], kwnames[j]))
                    error_at(kwvals[i].loc, "field '%s' is given twice", kwnames[i]);
            r.tree->names[i] = kwnames[i];
            r.tree->vals[i] = kwvals[i];
        }
        return r;
    }
    Bound b = bind_args(what, params, np, pos, npos, kwnames, kwvals, nkw, loc);
    for (int i = 0; i < np; i++)
        if (!b.given[i] && !opt[i])
            error_at(loc, "%s needs an argument for '%s'", what, params[i].name);
    Value *a = b.vals;
    bool *given = b.given;
    Graph *g;
    switch (id) {
    case B_EXP: return map1(OP_EXP, a[0], loc, exp);
    case B_LOG: return map1(OP_LOG, a[0], loc, log);
    case B_SQRT: return map1(OP_SQRT, a[0], loc, sqrt);
    case B_RSQRT: return map1(OP_RSQRT, a[0], loc, d_rsqrt);
    case B_TANH: return map1(OP_TANH, a[0], loc, tanh);
    case B_SIGMOID: return map1(OP_SIGMOID, a[0], loc, d_sigmoid);
    case B_RELU: return map1(OP_RELU, a[0], loc, d_relu);
    case B_GELU: return map1(OP_GELU, a[0], loc, d_gelu);
    case B_ABS: return map1(OP_ABS, a[0], loc, fabs);
    case B_SIGN: return map1(OP_SIGN, a[0], loc, d_sign);
    case B_DETACH: return map1(OP_DETACH, a[0], loc, NULL);
    case B_POW:
        if (is_scalar_value(&a[0]) && is_scalar_value(&a[1]))
            return v_float(pow(value_as_double(&a[0], loc, "a"), value_as_double(&a[1], loc, "b")), loc);
        return tree_map2(OP_POW, a[0], a[1], loc);
    case B_MAXIMUM:
    case B_MINIMUM:
        if (is_scalar_value(&a[0]) && is_scalar_value(&a[1])) {
            double x = value_as_double(&a[0], loc, "a"), y = value_as_double(&a[1], loc, "b");
            bool ints = a[0].kind == V_INT && a[1].kind == V_INT;
            double r = id == B_MAXIMUM ? fmax(x, y) : fmin(x, y);
            return ints ? v_int((int64_t)r, loc) : v_float(r, loc);
        }
        return tree_map2(id == B_MAXIMUM ? OP_MAX : OP_MIN, a[0], a[1], loc);
    case B_WHERE: {
        if (a[0].kind == V_TREE || a[1].kind == V_TREE || a[2].kind == V_TREE)
            return where_tree(a[0], a[1], a[2], loc);
        g = G(loc, "where");
        Node *c = N(a[0], loc, "the condition");
        if (c->dtype != DT_BOOL)
            error_at(loc, "where needs a bool condition, not %s", type_str(c->dtype, c->shape));
        return v_tensor(g_where(g, c, N(a[1], loc, "a"), N(a[2], loc, "b"), loc));
    }
    case B_SUM:
    case B_MEAN:
    case B_MAX:
    case B_MIN:
    case B_LOGSUMEXP:
    case B_VAR:
    case B_NORM: {
        if ((id == B_MAX || id == B_MIN) && is_scalar_value(&a[0]) && given[1] && is_scalar_value(&a[1]) && !given[2]) {
            /* max(3, k): compile-time numbers */
            double x = value_as_double(&a[0], loc, "a"), y = value_as_double(&a[1], loc, "b");
            double r = id == B_MAX ? fmax(x, y) : fmin(x, y);
            return a[0].kind == V_INT && a[1].kind == V_INT ? v_int((int64_t)r, loc) : v_float(r, loc);
        }
        if ((id == B_SUM || id == B_MEAN) && a[0].kind == V_TREE && a[0].tree->is_list && !given[1]) {
            /* sum([t1, t2, ...]) of tensors or trees: element by element */
            Tree *t = a[0].tree;
            if (t->n == 0)
                error_at(loc, "%s of an empty list", table[id].name);
            Value acc = t->vals[0];
            for (int i = 1; i < t->n; i++)
                acc = tree_map2(OP_ADD, acc, t->vals[i], loc);
            return id == B_SUM ? acc : tree_map2(OP_MUL, acc, v_float(1.0 / t->n, loc), loc);
        }
        if (id == B_NORM && (a[0].kind == V_TREE) && !given[1])
            return v_tensor(g_unary(G(loc, "norm"), OP_SQRT, tree_dot(a[0], a[0], loc), loc));
        g = G(loc, table[id].name);
        Node *x = N(a[0], loc, "x");
        uint32_t axes = axes_arg(given[1] ? &a[1] : NULL, x->shape.rank, loc);
        bool keep = bool_arg(given[2] ? &a[2] : NULL, false, loc);
        switch (id) {
        case B_SUM: return v_tensor(reduce(g, OP_SUM, x, axes, keep, loc));
        case B_MAX: return v_tensor(reduce(g, OP_RMAX, x, axes, keep, loc));
        case B_MIN: return v_tensor(reduce(g, OP_RMIN, x, axes, keep, loc));
        case B_MEAN: return v_tensor(mean_of(g, x, axes, keep, loc));
        case B_LOGSUMEXP: return v_tensor(logsumexp_of(g, x, axes, keep, loc));
        case B_VAR: {
            Node *xc = g_binary(g, OP_SUB, x, mean_of(g, x, axes, true, loc), loc);
            return v_tensor(mean_of(g, g_binary(g, OP_MUL, xc, xc, loc), axes, keep, loc));
        }
        default:
            need_float(x, loc, "norm");
            return v_tensor(g_unary(g, OP_SQRT, reduce(g, OP_SUM, g_binary(g, OP_MUL, x, x, loc), axes, keep, loc), loc));
        }
    }
    case B_RESHAPE: {
        g = G(loc, "reshape");
        Node *x = N(a[0], loc, "x");
        Shape s = shape_from_list(&a[1], loc, "the new shape");
        int infer = -1;
        int64_t known = 1;
        for (int i = 0; i < s.rank; i++) {
            if (s.dim[i] == -1) {
                if (infer >= 0)
                    error_at(loc, "reshape: at most one -1");
                infer = i;
            } else if (s.dim[i] < 0)
                error_at(loc, "reshape: sizes must be >= 0 (or one -1)");
            else
                known *= s.dim[i];
        }
        int64_t total = shape_numel(x->shape);
        if (infer >= 0) {
            if (known == 0 || total % known)
                error_at(loc, "reshape: %s cannot be viewed as %s", type_str(x->dtype, x->shape), shape_str(s));
            s.dim[infer] = total / known;
        }
        if (shape_numel(s) != total)
            error_at(loc, "reshape: %s has %lld elements, %s has %lld", type_str(x->dtype, x->shape), (long long)total, shape_str(s),
                     (long long)shape_numel(s));
        return v_tensor(g_reshape(g, x, s, loc));
    }
    case B_TRANSPOSE: {
        g = G(loc, "transpose");
        Node *x = N(a[0], loc, "x");
        int r = x->shape.rank, perm[MAX_RANK];
        if (given[1]) {
            Shape p = shape_from_list(&a[1], loc, "the permutation");
            if (p.rank != r)
                error_at(loc, "transpose: a permutation of %d axes is needed", r);
            uint32_t seen = 0;
            for (int i = 0; i < r; i++) {
                int64_t k = p.dim[i] < 0 ? p.dim[i] + r : p.dim[i];
                if (k < 0 || k >= r || (seen & (1u << k)))
                    error_at(loc, "transpose: %s is not a permutation of 0..%d", shape_str(p), r - 1);
                seen |= 1u << k;
                perm[i] = (int)k;
            }
        } else {
            if (r < 2)
                error_at(loc, "transpose needs rank >= 2 (it swaps the last two axes), not %s", type_str(x->dtype, x->shape));
            for (int i = 0; i < r; i++)
                perm[i] = i;
            perm[r - 2] = r - 1;
            perm[r - 1] = r - 2;
        }
        return v_tensor(g_permute(g, x, perm, loc));
    }
    case B_BROADCAST:
        g = G(loc, "broadcast");
        return v_tensor(g_broadcast_to(g, N(a[0], loc, "x"), shape_from_list(&a[1], loc, "the shape"), loc));
    case B_UNSQUEEZE:
    case B_SQUEEZE: {
        g = G(loc, table[id].name);
        Node *x = N(a[0], loc, "x");
        Shape s = x->shape;
        if (id == B_UNSQUEEZE) {
            if (s.rank == MAX_RANK)
                error_at(loc, "tensors have at most %d dimensions", MAX_RANK);
            int64_t k = value_as_int(&a[1], loc, "axis");
            if (k < 0)
                k += s.rank + 1;
            if (k < 0 || k > s.rank)
                error_at(loc, "unsqueeze: axis out of range");
            for (int i = s.rank; i > k; i--)
                s.dim[i] = s.dim[i - 1];
            s.dim[k] = 1;
            s.rank++;
        } else {
            uint32_t axes = 0;
            if (given[1])
                axes = axes_arg(&a[1], s.rank, loc);
            else
                for (int i = 0; i < s.rank; i++)
                    if (s.dim[i] == 1)
                        axes |= 1u << i;
            Shape t = {0};
            for (int i = 0; i < s.rank; i++) {
                if (axes & (1u << i)) {
                    if (s.dim[i] != 1)
                        error_at(loc, "squeeze: axis %d has size %lld, not 1", i, (long long)s.dim[i]);
                    continue;
                }
                t.dim[t.rank++] = s.dim[i];
            }
            s = t;
        }
        return v_tensor(g_reshape(g, x, s, loc));
    }
    case B_FLATTEN: {
        g = G(loc, "flatten");
        Node *x = N(a[0], loc, "x");
        int64_t start = int_arg(given[1] ? &a[1] : NULL, 1, loc, "start");
        if (start < 0)
            start += x->shape.rank;
        if (start < 0 || start >= (x->shape.rank ? x->shape.rank : 1))
            error_at(loc, "flatten: start out of range for %s", type_str(x->dtype, x->shape));
        Shape s = {.rank = (int)start + 1};
        for (int i = 0; i < start; i++)
            s.dim[i] = x->shape.dim[i];
        s.dim[start] = 1;
        for (int i = (int)start; i < x->shape.rank; i++)
            s.dim[start] *= x->shape.dim[i];
        return v_tensor(g_reshape(g, x, s, loc));
    }
    case B_CONCAT: return concat(a, given, loc);
    case B_SPLIT: return split(a, given, loc);
    case B_TAKE: return take(a, given, loc);
    case B_EMBEDDING: {
        Value args[3] = {a[0], a[1], v_int(0, loc)};
        bool gv[3] = {true, true, true};
        return take(args, gv, loc);
    }
    case B_ONE_HOT: {
        g = G(loc, "one_hot");
        Node *y = N(a[0], loc, "y");
        int64_t n = value_as_int(&a[1], loc, "the number of classes");
        if (y->dtype != DT_I32)
            error_at(loc, "one_hot needs i32 labels, not %s", type_str(y->dtype, y->shape));
        if (n < 1 || y->shape.rank >= MAX_RANK)
            error_at(loc, "one_hot needs n >= 1");
        Shape s = y->shape;
        s.dim[s.rank++] = n;
        Shape s1 = y->shape;
        s1.dim[s1.rank++] = 1;
        Node *eq = g_binary(g, OP_EQ, g_reshape(g, y, s1, loc), g_iota(g, DT_I32, s, s.rank - 1, loc), loc);
        return v_tensor(g_cast(g, eq, promote_dtype(DT_F32), loc));
    }
    case B_ARANGE: {
        g = G(loc, "arange");
        int64_t n = value_as_int(&a[0], loc, "n");
        if (n < 0)
            error_at(loc, "arange needs n >= 0");
        Shape s = {.rank = 1, .dim = {n}};
        return v_tensor(g_iota(g, DT_I32, s, 0, loc));
    }
    case B_CONV2D: {
        g = G(loc, "conv2d");
        int64_t s = int_arg(given[2] ? &a[2] : NULL, 1, loc, "stride");
        int64_t p = int_arg(given[3] ? &a[3] : NULL, 0, loc, "pad");
        if (s < 1 || p < 0)
            error_at(loc, "conv2d needs stride >= 1 and pad >= 0");
        return v_tensor(g_conv2d(g, N(a[0], loc, "x"), N(a[1], loc, "w"), s, s, p, p, loc));
    }
    case B_MAX_POOL2D: return pool(true, a, given, loc);
    case B_AVG_POOL2D: return pool(false, a, given, loc);
    case B_BATCHNORM: return batchnorm(a, given, loc);
    case B_LAYERNORM: return layernorm(a, given, loc);
    case B_SOFTMAX:
    case B_LOG_SOFTMAX: {
        g = G(loc, table[id].name);
        Node *x = N(a[0], loc, "x");
        if (x->shape.rank == 0)
            error_at(loc, "%s needs a tensor of rank >= 1", table[id].name);
        return v_tensor(softmax_of(g, x, axis_arg(given[1] ? &a[1] : NULL, x->shape.rank, x->shape.rank - 1, loc), id == B_LOG_SOFTMAX, loc));
    }
    case B_CAUSAL_MASK: {
        g = G(loc, "causal_mask");
        Node *x = need_float(N(a[0], loc, "x"), loc, "causal_mask");
        int r = x->shape.rank;
        if (r < 2)
            error_at(loc, "causal_mask needs scores [..., T, T]");
        Shape s = x->shape;
        Node *row = g_iota(g, DT_I32, s, r - 2, loc), *col = g_iota(g, DT_I32, s, r - 1, loc);
        return v_tensor(g_where(g, g_binary(g, OP_GE, row, col, loc), x, scalar_like(g, -INFINITY, x, loc), loc));
    }
    case B_DROPOUT: {
        /* inverted dropout (torch.nn.functional.dropout): zero each element
         * with probability p, scale the others by 1 / (1 - p); the identity
         * under `eval` and at p = 0, so evaluation entries carry no noise */
        double p = value_as_double(&a[1], loc, "p");
        if (!(p >= 0 && p < 1))
            error_at(loc, "dropout: p must be a compile-time number in [0, 1), not %g", p);
        g = G(loc, "dropout");
        Node *x = need_float(N(a[0], loc, "x"), loc, "dropout");
        if (!cur->train || p == 0)
            return a[0];
        Node *u = make_rand(x, (double[]){1}, call_site_stream(loc), loc);
        Node *keep = g_binary(g, OP_GE, u, scalar_like(g, p, u, loc), loc);
        return v_tensor(g_where(g, keep, g_binary(g, OP_MUL, x, scalar_like(g, 1 / (1 - p), x, loc), loc),
                                scalar_like(g, 0, x, loc), loc));
    }
    case B_DOT: return v_tensor(tree_dot(a[0], a[1], loc));
    case B_RANGE: {
        int64_t n = value_as_int(&a[0], loc, "range(n)");
        if (n < 0 || n > 4096)
            error_at(loc, "range(n) needs 0 <= n <= 4096 (it unrolls at compile time)");
        Value r = v_tree_new((int)n, true, loc);
        for (int64_t i = 0; i < n; i++)
            r.tree->vals[i] = v_int(i, loc);
        return r;
    }
    case B_CLIP_NORM: {
        /* t * min(1, max / |t|), with |t| the norm over every leaf */
        g = G(loc, "clip_norm");
        Node *nrm = g_unary(g, OP_SQRT, tree_dot(a[0], a[0], loc), loc);
        Node *mx = N(a[1], loc, "max");
        Node *scale = g_binary(g, OP_MIN, g_scalar(g, 1, nrm->dtype, loc),
                               g_binary(g, OP_DIV, mx, g_binary(g, OP_ADD, nrm, g_scalar(g, 1e-12, nrm->dtype, loc), loc), loc),
                               loc);
        return tree_map2(OP_MUL, a[0], v_tensor(scale), loc);
    }
    case B_COSINE: {
        g = G(loc, "cosine");
        Node *ab = tree_dot(a[0], a[1], loc);
        Node *na = g_unary(g, OP_SQRT, tree_dot(a[0], a[0], loc), loc);
        Node *nb = g_unary(g, OP_SQRT, tree_dot(a[1], a[1], loc), loc);
        return v_tensor(g_binary(g, OP_DIV, ab, g_binary(g, OP_MUL, na, nb, loc), loc));
    }
    case B_ZEROS_LIKE:
    case B_ONES_LIKE: {
        G(loc, table[id].name);
        double p[1] = {id == B_ONES_LIKE};
        return like(a[0], loc, make_const, p, 0);
    }
    case B_NORMAL_LIKE:
    case B_UNIFORM_LIKE: {
        /* unit noise per leaf, then scaled: the bounds may be runtime scalars */
        G(loc, table[id].name);
        double kind[1] = {id == B_UNIFORM_LIKE};
        Value r = like(a[0], loc, make_rand, kind, call_site_stream(loc));
        Value lo_or_mean = given[2] ? a[2] : v_float(0, loc);
        Value scale = given[1] ? a[1] : v_float(id == B_NORMAL_LIKE ? 1 : 0, loc);
        if (id == B_UNIFORM_LIKE) {   /* lo + (hi - lo) * u */
            Value lo = given[1] ? a[1] : v_float(0, loc), hi = given[2] ? a[2] : v_float(1, loc);
            lo_or_mean = lo;
            scale = is_scalar_value(&lo) && is_scalar_value(&hi)
                        ? v_float(value_as_double(&hi, loc, "hi") - value_as_double(&lo, loc, "lo"), loc)
                        : tree_map2(OP_SUB, hi, lo, loc);
        }
        bool unit_scale = is_scalar_value(&scale) && value_as_double(&scale, loc, "std") == 1;
        bool zero_shift = is_scalar_value(&lo_or_mean) && value_as_double(&lo_or_mean, loc, "mean") == 0;
        if (!unit_scale)
            r = tree_map2(OP_MUL, r, scale, loc);
        if (!zero_shift)
            r = tree_map2(OP_ADD, r, lo_or_mean, loc);
        return r;
    }
    case B_GRAD: return grad_builtin(a[0], a[1], loc);
    case B_LAST:
        if (a[0].kind != V_MODULE)
            error_at(loc, "last(m, k) takes a model, not %s", value_kind_name(&a[0]));
        return module_last(a[0], value_as_int(&a[1], loc, "k"), loc);
    case B_LEN:
        if (a[0].kind == V_TREE)
            return v_int(a[0].tree->n, loc);
        if (a[0].kind == V_TENSOR && a[0].node->shape.rank)
            return v_int(a[0].node->shape.dim[0], loc);
        error_at(loc, "len() takes a list or a tensor of rank >= 1");
    case B_ZEROS:
    case B_ONES:
    case B_CONSTANT:
    case B_NORMAL:
    case B_UNIFORM:
    case B_KAIMING_NORMAL:
    case B_KAIMING_UNIFORM:
    case B_LINF:
    case B_L2:
    case B_BOX:
        for (int i = 0; i < np; i++) {
            /* constraint bounds may be runtime tensors (per channel, per element): sema_entry.c checks their shapes */
            bool constraint = id == B_LINF || id == B_L2 || id == B_BOX;
            if (given[i] && !(constraint && a[i].kind == V_TENSOR))
                value_as_double(&a[i], a[i].loc.file ? a[i].loc : loc, xfmt("'%s' of %s", params[i].name, what));
        }
        return spec(table[id].name, a, params, np, loc);
    case B_IDENTITY:
        return (Value){.kind = V_MODULE, .inst = identity_module(loc), .loc = loc};
    }
    unreachable();
}
