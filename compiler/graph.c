/* graph.c: building the graph IR.
 *
 * node_new is the one constructor: it canonicalises the attributes, runs the
 * op's shape rule (shape.c), and only then gives the node an id and appends
 * it, so a rejected node never enters a graph.
 *
 * The g_* builders are what the tracer calls. They do the user-level work
 * that the primitives leave out on purpose: NumPy broadcasting (RESHAPE +
 * EXPAND), dtype promotion (CAST, or a retyped CONST for a weak scalar),
 * NumPy matmul of 1-D and batched operands. Identities (a reshape to the same
 * shape, a cast to the same dtype, ...) return their input instead of adding
 * a node.
 *
 * Dtype promotion in the builders: bool < i32 < i64 < f32 < f64, except that a
 * rank-0 CONST is "weak": it takes the other operand's dtype when that dtype
 * is of the same kind or a wider kind (kinds: bool < integer < float), so
 * `2 * x` stays f32 and `0.5 * i` becomes the constant's float dtype.
 * Arithmetic on bools computes in i32, and float-only ops (exp, pow, matmul,
 * conv, ...) compute integers in f32.
 */
#include <math.h>
#include <string.h>

#include "graph.h"

static const char *kind_names[] = {"param", "buffer", "state", "input", "scalar", "output"};
static const char *access_names[] = {"?", "read", "write", "readwrite"};

/* ----------------------------------------------------------------------------
 * shapes and dtypes
 */

const char *shape_str(Shape s) {
    char buf[MAX_RANK * 24 + 4];
    int n = 0;
    buf[n++] = '[';
    for (int i = 0; i < s.rank && i < MAX_RANK; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%s%lld", i ? ", " : "", (long long)s.dim[i]);
    buf[n++] = ']';
    buf[n] = 0;
    return xstrdup(buf);
}

const char *type_str(DType dt, Shape s) { return xfmt("%s%s", dtype_name(dt), shape_str(s)); }

int64_t shape_numel(Shape s) {
    int64_t n = 1;
    for (int i = 0; i < s.rank; i++)
        n *= s.dim[i];
    return n;
}

bool shape_eq(Shape a, Shape b) {
    if (a.rank != b.rank)
        return false;
    for (int i = 0; i < a.rank; i++)
        if (a.dim[i] != b.dim[i])
            return false;
    return true;
}

Shape shape_make(int rank, const int64_t *dims) {
    ASSERT(rank >= 0 && rank <= MAX_RANK);
    Shape s = {0};
    s.rank = rank;
    for (int i = 0; i < rank; i++)
        s.dim[i] = dims[i];
    return s;
}

Shape shape_scalar(void) {
    Shape s = {0};
    return s;
}

static bool is_float(DType t) { return t == DT_F32 || t == DT_F64; }

/* position in bool < i32 < i64 < f32 < f64 */
static int dtype_order(DType t) {
    switch (t) {
    case DT_BOOL: return 0;
    case DT_I32: return 1;
    case DT_I64: return 2;
    case DT_F32: return 3;
    case DT_F64: return 4;
    }
    return 0;
}

static int dtype_kind(DType t) { return t == DT_BOOL ? 0 : is_float(t) ? 2 : 1; }

static bool is_weak(const Node *n) { return n->op == OP_CONST && n->shape.rank == 0; }

/* The dtype two operands meet in (see the file comment for weak constants). */
static DType common_dtype(const Node *a, const Node *b) {
    if (is_weak(a) && !is_weak(b) && dtype_kind(a->dtype) <= dtype_kind(b->dtype))
        return b->dtype;
    if (is_weak(b) && !is_weak(a) && dtype_kind(b->dtype) <= dtype_kind(a->dtype))
        return a->dtype;
    return dtype_order(a->dtype) >= dtype_order(b->dtype) ? a->dtype : b->dtype;
}

/* A value as a tensor of dtype dt stores it: the same rounding a cast does. */
static double value_as(double v, DType dt) {
    switch (dt) {
    case DT_BOOL: return v != 0;
    case DT_I32:
    case DT_I64: return isfinite(v) ? trunc(v) : 0;
    case DT_F32: return (double)(float)v;
    case DT_F64: return v;
    }
    return v;
}

/* ----------------------------------------------------------------------------
 * nodes
 */

Graph *graph_new(void) { return xalloc(sizeof(Graph)); }

/* Field by field into a zeroed struct, so that padding bytes and dims past a
 * shape's rank are zero whatever the caller passed: CSE compares attributes
 * with memcmp. */
static void attr_canon(Attr *d, const Attr *s) {
    memset(d, 0, sizeof *d);
    if (!s)
        return;
    d->value = s->value;
    d->axes = s->axes;
    d->axis = s->axis;
    d->batch_dims = s->batch_dims;
    d->arg = s->arg;
    for (int i = 0; i < MAX_RANK; i++) {
        d->a[i] = s->a[i];
        d->b[i] = s->b[i];
    }
    d->kh = s->kh, d->kw = s->kw, d->sh = s->sh, d->sw = s->sw, d->ph = s->ph, d->pw = s->pw;
    d->stream = s->stream;
    d->shape.rank = s->shape.rank;
    for (int i = 0; i < s->shape.rank && i < MAX_RANK; i++)
        d->shape.dim[i] = s->shape.dim[i];
}

/* dt is the node's dtype for DR_ATTR ops (leaves, CAST); for every other op
 * the shape rule derives the dtype from the inputs and dt is not read. */
Node *node_new(Graph *g, Op op, DType dt, int nin, Node **in, const Attr *attr, Loc loc) {
    if (op < 0 || op >= OP_COUNT)
        internal_error(__FILE__, __LINE__, "node_new: bad op %d", (int)op);
    if (nin != op_info[op].arity)
        internal_error(__FILE__, __LINE__, "node_new: %s takes %d inputs, got %d", op_info[op].name, op_info[op].arity, nin);
    Node *n = xalloc(sizeof *n);
    n->op = op;
    n->dtype = dt;
    n->nin = nin;
    for (int i = 0; i < nin; i++) {
        if (!in[i])
            internal_error(__FILE__, __LINE__, "node_new: %s: input %d is NULL", op_info[op].name, i);
        n->in[i] = in[i];
    }
    attr_canon(&n->attr, attr);
    n->loc = loc;
    op_info[op].shape(n);
    n->id = g->next_id++;
    vec_push(&g->nodes, n);
    return n;
}

static Node *node1(Graph *g, Op op, Node *x, const Attr *attr, Loc loc) {
    return node_new(g, op, x->dtype, 1, &x, attr, loc);
}

static Node *node2(Graph *g, Op op, Node *a, Node *b, const Attr *attr, Loc loc) {
    Node *in[2] = {a, b};
    return node_new(g, op, a->dtype, 2, in, attr, loc);
}

/* ----------------------------------------------------------------------------
 * leaves
 */

static Node *leaf(Graph *g, Op op, DType dt, Shape sh, Attr *a, Loc loc) {
    a->shape = sh;
    return node_new(g, op, dt, 0, NULL, a, loc);
}

Node *g_input(Graph *g, int arg, DType dt, Shape sh, const char *name, Loc loc) {
    Attr a = {0};
    a.arg = arg;
    Node *n = leaf(g, OP_INPUT, dt, sh, &a, loc);
    n->name = name;
    return n;
}

Node *g_const(Graph *g, double v, DType dt, Shape sh, Loc loc) {
    Attr a = {0};
    a.value = value_as(v, dt);
    return leaf(g, OP_CONST, dt, sh, &a, loc);
}

Node *g_scalar(Graph *g, double v, DType dt, Loc loc) { return g_const(g, v, dt, shape_scalar(), loc); }

Node *g_iota(Graph *g, DType dt, Shape sh, int axis, Loc loc) {
    Attr a = {0};
    a.axis = axis;
    return leaf(g, OP_IOTA, dt, sh, &a, loc);
}

Node *g_rand(Graph *g, Op op, DType dt, Shape sh, uint64_t stream, Loc loc) {
    ASSERT(op == OP_RAND_UNIFORM || op == OP_RAND_NORMAL);
    Attr a = {0};
    a.stream = stream;
    return leaf(g, op, dt, sh, &a, loc);
}

/* ----------------------------------------------------------------------------
 * elementwise
 */

/* x as dtype dt: a weak constant is retyped rather than cast. */
static Node *convert(Graph *g, Node *x, DType dt, Loc loc) {
    if (x->dtype == dt)
        return x;
    if (is_weak(x))
        return g_const(g, x->attr.value, dt, x->shape, x->loc);
    return g_cast(g, x, dt, loc);
}

Node *g_cast(Graph *g, Node *x, DType dt, Loc loc) {
    if (x->dtype == dt)
        return x;
    return node_new(g, OP_CAST, dt, 1, &x, NULL, loc);
}

static void note_inputs(Node **in, int n) {
    for (int i = 0; i < n; i++)
        diag_note(in[i]->loc, "%s comes from here", type_str(in[i]->dtype, in[i]->shape));
}

/* NumPy broadcasting of n shapes; false if they do not broadcast. */
static bool broadcast_shapes(Node **in, int n, Shape *out) {
    int rank = 0;
    for (int i = 0; i < n; i++)
        if (in[i]->shape.rank > rank)
            rank = in[i]->shape.rank;
    Shape s = {0};
    s.rank = rank;
    for (int d = 0; d < rank; d++) {
        int64_t dim = 1;
        for (int i = 0; i < n; i++) {
            int k = d - (rank - in[i]->shape.rank);
            if (k < 0)
                continue;
            int64_t v = in[i]->shape.dim[k];
            if (v == dim || v == 1)
                continue;
            if (dim != 1)
                return false;
            dim = v;
        }
        s.dim[d] = dim;
    }
    *out = s;
    return true;
}

static Shape broadcast_or_error(Node **in, int n, Loc loc) {
    Shape s;
    if (broadcast_shapes(in, n, &s))
        return s;
    note_inputs(in, n);
    if (n == 2)
        error_at(loc, "shapes %s and %s do not broadcast", type_str(in[0]->dtype, in[0]->shape),
                 type_str(in[1]->dtype, in[1]->shape));
    error_at(loc, "shapes %s, %s and %s do not broadcast", type_str(in[0]->dtype, in[0]->shape),
             type_str(in[1]->dtype, in[1]->shape), type_str(in[2]->dtype, in[2]->shape));
}

static bool is_arith(Op op) {
    return op == OP_ADD || op == OP_SUB || op == OP_MUL || op == OP_DIV || op == OP_MOD ||
           op == OP_NEG || op == OP_ABS || op == OP_SIGN || op == OP_RELU;
}

Node *g_unary(Graph *g, Op op, Node *x, Loc loc) {
    if (op_info[op].arity != 1 || op_info[op].kind != OK_ELEM || op == OP_CAST)
        internal_error(__FILE__, __LINE__, "g_unary: %s is not a unary elementwise op", op_info[op].name);
    DType dt = x->dtype;
    if (op_info[op].dtype_rule == DR_BOOL && dt != DT_BOOL) {
        note_inputs(&x, 1);
        error_at(loc, "'%s' needs a bool operand, got %s", op_info[op].name, type_str(x->dtype, x->shape));
    }
    if (op_info[op].dtype_rule == DR_FLOAT && !is_float(dt))
        dt = DT_F32;
    if (is_arith(op) && dt == DT_BOOL)
        dt = DT_I32;
    x = convert(g, x, dt, loc);
    return node1(g, op, x, NULL, loc);
}

Node *g_binary(Graph *g, Op op, Node *a, Node *b, Loc loc) {
    if (op_info[op].arity != 2 || op_info[op].kind != OK_ELEM)
        internal_error(__FILE__, __LINE__, "g_binary: %s is not a binary elementwise op", op_info[op].name);
    Node *in[2] = {a, b};
    DType dt = common_dtype(a, b);
    if (op_info[op].dtype_rule == DR_BOOL && (a->dtype != DT_BOOL || b->dtype != DT_BOOL)) {
        note_inputs(in, 2);
        error_at(loc, "'%s' needs bool operands, got %s and %s", op_info[op].name, type_str(a->dtype, a->shape),
                 type_str(b->dtype, b->shape));
    }
    if (op_info[op].dtype_rule == DR_FLOAT && !is_float(dt))
        dt = DT_F32;
    if (is_arith(op) && dt == DT_BOOL)
        dt = DT_I32;
    Shape s = broadcast_or_error(in, 2, loc);
    a = g_broadcast_to(g, convert(g, a, dt, loc), s, loc);
    b = g_broadcast_to(g, convert(g, b, dt, loc), s, loc);
    return node2(g, op, a, b, NULL, loc);
}

Node *g_where(Graph *g, Node *c, Node *a, Node *b, Loc loc) {
    Node *in[3] = {c, a, b};
    if (c->dtype != DT_BOOL) {
        note_inputs(&c, 1);
        error_at(loc, "the condition of 'where' must be bool, got %s", type_str(c->dtype, c->shape));
    }
    DType dt = common_dtype(a, b);
    Shape s = broadcast_or_error(in, 3, loc);
    in[0] = g_broadcast_to(g, c, s, loc);
    in[1] = g_broadcast_to(g, convert(g, a, dt, loc), s, loc);
    in[2] = g_broadcast_to(g, convert(g, b, dt, loc), s, loc);
    return node_new(g, OP_WHERE, dt, 3, in, NULL, loc);
}

/* ----------------------------------------------------------------------------
 * reductions and views
 */

static noreturn void axis_error(Node *x, int axis, Loc loc) {
    note_inputs(&x, 1);
    error_at(loc, "axis %d is out of range for %s", axis, type_str(x->dtype, x->shape));
}

Node *g_reduce(Graph *g, Op op, Node *x, uint32_t axes, bool keep, Loc loc) {
    if (op != OP_SUM && op != OP_RMAX && op != OP_RMIN && op != OP_RLSE)
        internal_error(__FILE__, __LINE__, "g_reduce: %s is not a reduction", op_info[op].name);
    for (int d = 0; d < 32; d++)
        if ((axes >> d & 1) && d >= x->shape.rank)
            axis_error(x, d, loc);
    if (op == OP_SUM && x->dtype == DT_BOOL)
        x = g_cast(g, x, DT_I32, loc);
    Attr a = {0};
    a.axes = axes;
    Node *r = node1(g, op, x, &a, loc);
    if (keep || !axes)
        return r;
    Shape s = {0};
    for (int d = 0; d < x->shape.rank; d++)
        if (!(axes >> d & 1))
            s.dim[s.rank++] = x->shape.dim[d];
    return g_reshape(g, r, s, loc);
}

/* One dim of sh may be -1: it takes what the element count leaves. */
Node *g_reshape(Graph *g, Node *x, Shape sh, Loc loc) {
    int infer = -1;
    int64_t known = 1;
    for (int d = 0; d < sh.rank && d < MAX_RANK; d++) {
        if (sh.dim[d] == -1 && infer < 0)
            infer = d;
        else
            known *= sh.dim[d];
    }
    if (infer >= 0 && known > 0 && shape_numel(x->shape) % known == 0)
        sh.dim[infer] = shape_numel(x->shape) / known;
    if (shape_eq(sh, x->shape))
        return x;
    Attr a = {0};
    a.shape = sh;
    return node1(g, OP_RESHAPE, x, &a, loc);
}

Node *g_permute(Graph *g, Node *x, const int *perm, Loc loc) {
    Attr a = {0};
    bool ident = true;
    for (int d = 0; d < x->shape.rank; d++) {
        a.a[d] = perm[d];
        ident &= perm[d] == d;
    }
    if (ident)
        return x;
    return node1(g, OP_PERMUTE, x, &a, loc);
}

Node *g_expand(Graph *g, Node *x, Shape sh, Loc loc) {
    if (shape_eq(sh, x->shape))
        return x;
    Attr a = {0};
    a.shape = sh;
    return node1(g, OP_EXPAND, x, &a, loc);
}

Node *g_broadcast_to(Graph *g, Node *x, Shape sh, Loc loc) {
    if (shape_eq(x->shape, sh))
        return x;
    int lead = sh.rank - x->shape.rank;
    bool ok = lead >= 0;
    Shape r = sh;
    for (int d = 0; ok && d < sh.rank; d++) {
        int64_t v = d < lead ? 1 : x->shape.dim[d - lead];
        ok = v == sh.dim[d] || v == 1;
        r.dim[d] = v;
    }
    if (!ok) {
        note_inputs(&x, 1);
        error_at(loc, "cannot broadcast %s to %s", type_str(x->dtype, x->shape), shape_str(sh));
    }
    return g_expand(g, g_reshape(g, x, r, loc), sh, loc);
}

Node *g_sum_to(Graph *g, Node *x, Shape sh, Loc loc) {
    if (shape_eq(x->shape, sh))
        return x;
    int lead = x->shape.rank - sh.rank;
    bool ok = lead >= 0;
    uint32_t axes = 0;
    for (int d = 0; ok && d < x->shape.rank; d++) {
        if (d < lead) {
            axes |= 1u << d;
            continue;
        }
        int64_t want = sh.dim[d - lead], have = x->shape.dim[d];
        if (want == 1 && have != 1)
            axes |= 1u << d;
        else
            ok = want == have;
    }
    if (!ok) {
        note_inputs(&x, 1);
        error_at(loc, "cannot sum %s down to %s", type_str(x->dtype, x->shape), shape_str(sh));
    }
    return g_reshape(g, g_reduce(g, OP_SUM, x, axes, true, loc), sh, loc);
}

/* step may be NULL: every step is 1. */
Node *g_slice(Graph *g, Node *x, const int64_t *start, const int64_t *count, const int64_t *step, Loc loc) {
    Attr a = {0};
    a.shape.rank = x->shape.rank;
    bool ident = true;
    for (int d = 0; d < x->shape.rank; d++) {
        a.a[d] = start[d];
        a.b[d] = step ? step[d] : 1;
        a.shape.dim[d] = count[d];
        ident &= start[d] == 0 && count[d] == x->shape.dim[d] && (a.b[d] == 1 || count[d] <= 1);
    }
    if (ident)
        return x;
    return node1(g, OP_SLICE, x, &a, loc);
}

Node *g_pad(Graph *g, Node *x, const int64_t *lo, const int64_t *hi, Loc loc) {
    Attr a = {0};
    bool ident = true;
    for (int d = 0; d < x->shape.rank; d++) {
        a.a[d] = lo[d];
        a.b[d] = hi[d];
        ident &= lo[d] == 0 && hi[d] == 0;
    }
    if (ident)
        return x;
    return node1(g, OP_PAD, x, &a, loc);
}

static void set_window(Attr *a, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    a->kh = kh, a->kw = kw, a->sh = sh, a->sw = sw, a->ph = ph, a->pw = pw;
}

Node *g_unfold(Graph *g, Node *x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc) {
    Attr a = {0};
    set_window(&a, kh, kw, sh, sw, ph, pw);
    return node1(g, OP_UNFOLD, x, &a, loc);
}

Node *g_fold(Graph *g, Node *cols, Shape out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc) {
    Attr a = {0};
    set_window(&a, kh, kw, sh, sw, ph, pw);
    a.shape = out;
    return node1(g, OP_FOLD, cols, &a, loc);
}

/* ----------------------------------------------------------------------------
 * opaque ops
 */

static DType float_dtype(const Node *a, const Node *b) {
    DType dt = common_dtype(a, b);
    return is_float(dt) ? dt : DT_F32;
}

Node *g_matmul(Graph *g, Node *a, Node *b, Loc loc) {
    Node *in[2] = {a, b};
    if (a->shape.rank == 0 || b->shape.rank == 0) {
        note_inputs(in, 2);
        error_at(loc, "matmul needs operands of rank 1 or more, got %s and %s", type_str(a->dtype, a->shape),
                 type_str(b->dtype, b->shape));
    }
    int64_t ka = a->shape.dim[a->shape.rank - 1];
    int64_t kb = b->shape.rank == 1 ? b->shape.dim[0] : b->shape.dim[b->shape.rank - 2];
    if (ka != kb) {
        note_inputs(in, 2);
        error_at(loc, "cannot multiply %s by %s: inner dimensions %lld and %lld differ", type_str(a->dtype, a->shape),
                 type_str(b->dtype, b->shape), (long long)ka, (long long)kb);
    }
    DType dt = float_dtype(a, b);
    Node *a2 = convert(g, a, dt, loc), *b2 = convert(g, b, dt, loc);
    if (a->shape.rank == 1)
        a2 = g_reshape(g, a2, shape_make(2, (int64_t[]){1, ka}), loc);
    if (b->shape.rank == 1)
        b2 = g_reshape(g, b2, shape_make(2, (int64_t[]){kb, 1}), loc);
    /* batch dims: broadcast the leading dims of both, as NumPy does */
    int ra = a2->shape.rank - 2, rb = b2->shape.rank - 2;
    int rank = ra > rb ? ra : rb;
    if (rank + 2 > MAX_RANK)
        error_at(loc, "matmul result would have rank %d; at most %d is supported", rank + 2, MAX_RANK);
    Shape batch = {0};
    batch.rank = rank;
    for (int d = 0; d < rank; d++) {
        int64_t da = d - (rank - ra) >= 0 ? a2->shape.dim[d - (rank - ra)] : 1;
        int64_t db = d - (rank - rb) >= 0 ? b2->shape.dim[d - (rank - rb)] : 1;
        if (da != db && da != 1 && db != 1) {
            note_inputs(in, 2);
            error_at(loc, "batch dimensions of %s and %s do not broadcast", type_str(a->dtype, a->shape),
                     type_str(b->dtype, b->shape));
        }
        batch.dim[d] = da == 1 ? db : da;
    }
    int64_t m = a2->shape.dim[ra], n = b2->shape.dim[rb + 1];
    if (ra > 0 && rb == 0) {
        /* [..., M, K] @ [K, N]: one [prod(...) * M, K] @ [K, N] GEMM, so that
         * the gradient of the shared b is one GEMM too, not a [..., K, N]
         * batch of them summed afterwards (GPT-2's LM head: [B, V, C]) */
        Shape flat = shape_make(2, (int64_t[]){shape_numel(a2->shape) / ka, ka});
        Node *c = node2(g, OP_MATMUL, g_reshape(g, a2, flat, loc), b2, NULL, loc);
        Shape out = batch;
        out.dim[out.rank++] = m;
        if (b->shape.rank > 1)
            out.dim[out.rank++] = n;
        return g_reshape(g, c, out, loc);
    }
    Shape sa = batch, sb = batch;
    sa.rank = sb.rank = rank + 2;
    sa.dim[rank] = m, sa.dim[rank + 1] = ka;
    sb.dim[rank] = kb, sb.dim[rank + 1] = n;
    Node *c = node2(g, OP_MATMUL, g_broadcast_to(g, a2, sa, loc), g_broadcast_to(g, b2, sb, loc), NULL, loc);
    Shape out = batch;
    if (a->shape.rank > 1)
        out.dim[out.rank++] = m;
    if (b->shape.rank > 1)
        out.dim[out.rank++] = n;
    return g_reshape(g, c, out, loc);
}

Node *g_conv2d(Graph *g, Node *x, Node *w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc) {
    if (w->shape.rank != 4) {
        note_inputs(&w, 1);
        error_at(loc, "conv2d weight must be [Co, Ci, kh, kw], got %s", type_str(w->dtype, w->shape));
    }
    DType dt = float_dtype(x, w);
    Attr a = {0};
    set_window(&a, w->shape.dim[2], w->shape.dim[3], sh, sw, ph, pw);
    return node2(g, OP_CONV2D, convert(g, x, dt, loc), convert(g, w, dt, loc), &a, loc);
}

Node *g_conv2d_bwd_input(Graph *g, Node *dy, Node *w, Shape xshape, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc) {
    if (w->shape.rank != 4) {
        note_inputs(&w, 1);
        error_at(loc, "conv2d weight must be [Co, Ci, kh, kw], got %s", type_str(w->dtype, w->shape));
    }
    DType dt = float_dtype(dy, w);
    Attr a = {0};
    set_window(&a, w->shape.dim[2], w->shape.dim[3], sh, sw, ph, pw);
    a.shape = xshape;
    return node2(g, OP_CONV2D_BWD_INPUT, convert(g, dy, dt, loc), convert(g, w, dt, loc), &a, loc);
}

Node *g_conv2d_bwd_weight(Graph *g, Node *x, Node *dy, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc) {
    DType dt = float_dtype(x, dy);
    Attr a = {0};
    set_window(&a, kh, kw, sh, sw, ph, pw);
    return node2(g, OP_CONV2D_BWD_WEIGHT, convert(g, x, dt, loc), convert(g, dy, dt, loc), &a, loc);
}

/* Indices of any integer dtype become i32; float or bool indices are an error. */
static Node *index_operand(Graph *g, Node *idx, Loc loc) {
    if (idx->dtype == DT_I32)
        return idx;
    if (idx->dtype != DT_I64) {
        note_inputs(&idx, 1);
        error_at(loc, "indices must be integers, got %s", type_str(idx->dtype, idx->shape));
    }
    return g_cast(g, idx, DT_I32, loc);
}

Node *g_gather(Graph *g, Node *x, Node *idx, int axis, int batch_dims, Loc loc) {
    Attr a = {0};
    a.axis = axis;
    a.batch_dims = batch_dims;
    return node2(g, OP_GATHER, x, index_operand(g, idx, loc), &a, loc);
}

Node *g_scatter_add(Graph *g, Node *idx, Node *upd, Shape out, int axis, int batch_dims, Loc loc) {
    Attr a = {0};
    a.axis = axis;
    a.batch_dims = batch_dims;
    a.shape = out;
    Node *in[2] = {index_operand(g, idx, loc), upd};
    return node_new(g, OP_SCATTER_ADD, upd->dtype, 2, in, &a, loc);
}

Node *g_allreduce_mean(Graph *g, Node *x, Loc loc) {
    if (!is_float(x->dtype))
        internal_error(__FILE__, __LINE__, "allreduce_mean of a non-float tensor");
    return node1(g, OP_ALLREDUCE_MEAN, x, NULL, loc);
}

/* ----------------------------------------------------------------------------
 * order and dumps
 */

/* Depth-first: every node goes after its inputs and otherwise keeps its
 * place, so an already sorted graph is unchanged. Iterative, because chains
 * of tens of thousands of nodes (long gradient graphs) would overflow the C
 * stack. Inputs that are not in the list are pulled in before their users. */
void graph_toposort(Graph *g) {
    int cap = g->next_id;
    for (int i = 0; i < g->nodes.len; i++)
        if (g->nodes.data[i]->id >= cap)
            cap = g->nodes.data[i]->id + 1;
    unsigned char *state = xalloc((size_t)cap + 1);   /* 0 new, 1 on stack, 2 placed */
    Node **out = xalloc(sizeof(Node *) * (size_t)(g->nodes.len + 1));
    int nout = 0, outcap = g->nodes.len + 1;
    VEC(Node *) stack = {0};
    VEC(int) next = {0};
    for (int i = 0; i < g->nodes.len; i++) {
        Node *root = g->nodes.data[i];
        if (root->id >= cap || state[root->id])
            continue;
        vec_push(&stack, root);
        vec_push(&next, 0);
        state[root->id] = 1;
        while (stack.len) {
            Node *n = stack.data[stack.len - 1];
            int k = next.data[next.len - 1]++;
            if (k < n->nin) {
                Node *m = n->in[k];
                if (m->id >= cap)
                    internal_error(__FILE__, __LINE__, "toposort: node %%%d has an input with id %d past next_id", n->id, m->id);
                if (state[m->id] == 1)
                    internal_error(__FILE__, __LINE__, "toposort: cycle through node %%%d", m->id);
                if (!state[m->id]) {
                    state[m->id] = 1;
                    vec_push(&stack, m);
                    vec_push(&next, 0);
                }
                continue;
            }
            state[n->id] = 2;
            if (nout == outcap) {
                out = xrealloc(out, sizeof(Node *) * (size_t)outcap, sizeof(Node *) * (size_t)outcap * 2);
                outcap *= 2;
            }
            out[nout++] = n;
            stack.len--;
            next.len--;
        }
    }
    g->nodes.data = out;
    g->nodes.len = nout;
    g->nodes.cap = outcap;
}

static void dump_ints(FILE *out, const char *key, const int64_t *v, int n) {
    fprintf(out, "%s=[", key);
    for (int i = 0; i < n; i++)
        fprintf(out, "%s%lld", i ? "," : "", (long long)v[i]);
    fputc(']', out);
}

/* The attributes an op reads, compactly: {axes=[0,2]}, {[4, 3]}, ... */
static void dump_attr(const Node *n, FILE *out) {
    const Attr *a = &n->attr;
    int r = n->nin ? n->in[0]->shape.rank : 0;
    switch (n->op) {
    case OP_INPUT: fprintf(out, " {arg=%d}", a->arg); break;
    case OP_CONST: fprintf(out, " {%.17g}", a->value); break;
    case OP_IOTA: fprintf(out, " {axis=%d}", a->axis); break;
    case OP_RAND_UNIFORM:
    case OP_RAND_NORMAL: fprintf(out, " {stream=%llu}", (unsigned long long)a->stream); break;
    case OP_SUM:
    case OP_RMAX:
    case OP_RMIN:
    case OP_RLSE: {
        int64_t ax[32];
        int k = 0;
        for (int d = 0; d < 32; d++)
            if (a->axes >> d & 1)
                ax[k++] = d;
        fputs(" {", out);
        dump_ints(out, "axes", ax, k);
        fputc('}', out);
        break;
    }
    case OP_RESHAPE:
    case OP_EXPAND: fprintf(out, " {%s}", shape_str(a->shape)); break;
    case OP_PERMUTE: fputs(" {", out); dump_ints(out, "perm", a->a, r); fputc('}', out); break;
    case OP_SLICE:
        fputs(" {", out);
        dump_ints(out, "start", a->a, r);
        fputc(' ', out);
        dump_ints(out, "step", a->b, r);
        fputc('}', out);
        break;
    case OP_PAD:
        fputs(" {", out);
        dump_ints(out, "lo", a->a, r);
        fputc(' ', out);
        dump_ints(out, "hi", a->b, r);
        fputc('}', out);
        break;
    case OP_UNFOLD:
    case OP_FOLD:
    case OP_CONV2D:
    case OP_CONV2D_BWD_INPUT:
    case OP_CONV2D_BWD_WEIGHT:
        fprintf(out, " {k=%lldx%lld s=%lld,%lld p=%lld,%lld}", (long long)a->kh, (long long)a->kw, (long long)a->sh,
                (long long)a->sw, (long long)a->ph, (long long)a->pw);
        break;
    case OP_GATHER:
    case OP_SCATTER_ADD: fprintf(out, " {axis=%d batch=%d}", a->axis, a->batch_dims); break;
    default: break;
    }
}

/* One line per node:   %12 = add %10 %11 : f32[4, 3]  @file.lth:3:5
 * preceded by the entry's arguments and followed by what each argument
 * receives. */
void graph_dump(const Entry *e, FILE *out) {
    fprintf(out, "entry %s (%s)\n", e->name ? e->name : "?", e->kind ? e->kind : "?");
    for (int i = 0; i < e->args.len; i++) {
        const EntryArg *a = &e->args.data[i];
        const char *kind = a->kind >= 0 && a->kind < 6 ? kind_names[a->kind] : "?";
        const char *acc = a->access >= 0 && a->access < 4 ? access_names[a->access] : "?";
        fprintf(out, "  arg %d %s : %s  %s %s", i, a->name ? a->name : "?", type_str(a->dtype, a->shape), kind, acc);
        if (a->in)
            fprintf(out, "  in=%%%d", a->in->id);
        fputc('\n', out);
    }
    for (int i = 0; i < e->g->nodes.len; i++) {
        const Node *n = e->g->nodes.data[i];
        fprintf(out, "  %%%d = %s", n->id, op_info[n->op].name);
        if (n->op == OP_CAST)
            fprintf(out, "<%s>", dtype_name(n->dtype));
        for (int k = 0; k < n->nin; k++)
            fprintf(out, " %%%d", n->in[k]->id);
        dump_attr(n, out);
        fprintf(out, " : %s", type_str(n->dtype, n->shape));
        if (n->name)
            fprintf(out, "  \"%s\"", n->name);
        if (n->loc.file)
            fprintf(out, "  @%s:%d:%d", n->loc.file->path, n->loc.line, n->loc.col);
        fputc('\n', out);
    }
    for (int i = 0; i < e->args.len; i++)
        if (e->args.data[i].out)
            fprintf(out, "  %s <- %%%d\n", e->args.data[i].name ? e->args.data[i].name : "?", e->args.data[i].out->id);
}
