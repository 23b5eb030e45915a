/* shape.c: the shape rules of ops.def.
 *
 * Each rule checks a node's inputs and attributes and sets n->shape and, by
 * the op's dtype rule, n->dtype. The builders in graph.c have already done
 * broadcasting and promotion, but the tracer can build nodes directly and a
 * user program can ask for impossible shapes (a matmul with mismatched inner
 * dimensions, a reshape that changes the element count), so every mismatch
 * is reported with error_at at the node, with a note at each input naming
 * its type. A malformed node that no program can cause (wrong arity) is an
 * internal error; node_new checks that before the rule runs.
 *
 * pass_verify re-runs these rules on copies of nodes, so they must not
 * depend on anything but the node, its inputs and its attributes.
 */
#include <stdio.h>

#include "graph.h"

static bool is_float(DType t) { return t == DT_F32 || t == DT_F64; }

/* Error at n with a note per input (chibicc style: notes first, then the
 * error that prints them). */
static noreturn __attribute__((format(printf, 2, 3))) void shape_error(Node *n, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (int i = 0; i < n->nin; i++)
        diag_note(n->in[i]->loc, "%s comes from here", type_str(n->in[i]->dtype, n->in[i]->shape));
    error_at(n->loc, "%s", msg);
}

static const char *tstr(const Node *n) { return type_str(n->dtype, n->shape); }
static const char *opname(const Node *n) { return op_info[n->op].name; }

/* A shape written by the user or a builder: rank and dims in range, and an
 * element count that fits comfortably in int64. */
static void check_shape(Node *n, Shape s, const char *what) {
    if (s.rank < 0 || s.rank > MAX_RANK)
        shape_error(n, "%s: rank %d is not supported (at most %d)", what, s.rank, MAX_RANK);
    int64_t numel = 1;
    for (int d = 0; d < s.rank; d++) {
        if (s.dim[d] < 0)
            shape_error(n, "%s: negative dimension in %s", what, shape_str(s));
        if (s.dim[d] && numel > ((int64_t)1 << 48) / s.dim[d])
            shape_error(n, "%s: %s has too many elements", what, shape_str(s));
        numel *= s.dim[d];
    }
}

/* Arithmetic has no meaning on bool: the builders compute bools in i32. */
static bool rejects_bool(Op op) {
    switch (op) {
    case OP_NEG: case OP_ABS: case OP_SIGN: case OP_RELU:
    case OP_ADD: case OP_SUB: case OP_MUL: case OP_DIV: case OP_MOD: case OP_SUM:
        return true;
    default:
        return false;
    }
}

static void need_dtype(Node *n, int i, DType dt) {
    if (n->in[i]->dtype != dt)
        shape_error(n, "'%s' needs %s for operand %d, got %s", opname(n), dtype_name(dt), i + 1, tstr(n->in[i]));
}

static void same_dtypes(Node *n, int from) {
    for (int i = from + 1; i < n->nin; i++)
        if (n->in[i]->dtype != n->in[from]->dtype)
            shape_error(n, "'%s' needs operands of one dtype, got %s and %s", opname(n), tstr(n->in[from]), tstr(n->in[i]));
}

/* Apply the op's dtype rule: check input dtypes, set n->dtype. */
static void dtype_rule(Node *n) {
    switch (op_info[n->op].dtype_rule) {
    case DR_SAME:
        same_dtypes(n, 0);
        n->dtype = n->in[0]->dtype;
        if (rejects_bool(n->op) && n->dtype == DT_BOOL)
            shape_error(n, "'%s' is not defined on bool (%s)", opname(n), tstr(n->in[0]));
        break;
    case DR_FLOAT:
        same_dtypes(n, 0);
        n->dtype = n->in[0]->dtype;
        if (!is_float(n->dtype))
            shape_error(n, "'%s' needs f32 or f64 operands, got %s", opname(n), tstr(n->in[0]));
        break;
    case DR_CMP:
        same_dtypes(n, 0);
        n->dtype = DT_BOOL;
        break;
    case DR_BOOL:
        for (int i = 0; i < n->nin; i++)
            need_dtype(n, i, DT_BOOL);
        n->dtype = DT_BOOL;
        break;
    case DR_WHERE:
        need_dtype(n, 0, DT_BOOL);
        same_dtypes(n, 1);
        n->dtype = n->in[1]->dtype;
        break;
    case DR_ATTR:
        break;
    case DR_GATHER:
        need_dtype(n, 1, DT_I32);
        n->dtype = n->in[0]->dtype;
        break;
    case DR_SCATTER:
        need_dtype(n, 0, DT_I32);
        n->dtype = n->in[1]->dtype;
        break;
    }
}

/* ----------------------------------------------------------------------------
 * leaves and elementwise
 */

void shape_leaf(Node *n) {
    check_shape(n, n->attr.shape, opname(n));
    n->shape = n->attr.shape;
    switch (n->op) {
    case OP_INPUT:
        if (n->attr.arg < 0)
            internal_error(__FILE__, __LINE__, "input node with argument index %d", n->attr.arg);
        break;
    case OP_IOTA:
        if (n->dtype == DT_BOOL)
            shape_error(n, "iota cannot be bool");
        if (n->attr.axis < 0 || n->attr.axis >= (n->shape.rank ? n->shape.rank : 1))
            shape_error(n, "iota axis %d is out of range for %s", n->attr.axis, shape_str(n->shape));
        break;
    case OP_RAND_UNIFORM:
    case OP_RAND_NORMAL:
        if (!is_float(n->dtype))
            shape_error(n, "random tensors are f32 or f64, not %s", dtype_name(n->dtype));
        break;
    default:
        break;
    }
}

void shape_same(Node *n) {
    for (int i = 1; i < n->nin; i++)
        if (!shape_eq(n->in[i]->shape, n->in[0]->shape))
            shape_error(n, "'%s' needs operands of one shape, got %s and %s", opname(n), tstr(n->in[0]), tstr(n->in[i]));
    dtype_rule(n);
    n->shape = n->in[0]->shape;
}

void shape_reduce(Node *n) {
    Node *x = n->in[0];
    if (x->shape.rank < 32 && (n->attr.axes >> x->shape.rank))
        shape_error(n, "'%s' over axes 0x%x of %s: an axis is out of range", opname(n), n->attr.axes, tstr(x));
    dtype_rule(n);
    n->shape = x->shape;
    for (int d = 0; d < x->shape.rank; d++)
        if (n->attr.axes >> d & 1)
            n->shape.dim[d] = 1;
}

/* ----------------------------------------------------------------------------
 * views
 */

void shape_reshape(Node *n) {
    Node *x = n->in[0];
    check_shape(n, n->attr.shape, "reshape");
    if (shape_numel(n->attr.shape) != shape_numel(x->shape))
        shape_error(n, "cannot reshape %s (%lld elements) to %s (%lld elements)", tstr(x),
                    (long long)shape_numel(x->shape), shape_str(n->attr.shape), (long long)shape_numel(n->attr.shape));
    dtype_rule(n);
    n->shape = n->attr.shape;
}

void shape_permute(Node *n) {
    Node *x = n->in[0];
    unsigned seen = 0;
    Shape s = x->shape;
    for (int d = 0; d < x->shape.rank; d++) {
        int64_t p = n->attr.a[d];
        if (p < 0 || p >= x->shape.rank || (seen >> p & 1))
            shape_error(n, "the permutation of %s is not a permutation of its %d axes", tstr(x), x->shape.rank);
        seen |= 1u << p;
        s.dim[d] = x->shape.dim[p];
    }
    dtype_rule(n);
    n->shape = s;
}

void shape_expand(Node *n) {
    Node *x = n->in[0];
    Shape t = n->attr.shape;
    check_shape(n, t, "expand");
    bool ok = t.rank == x->shape.rank;
    for (int d = 0; ok && d < t.rank; d++)
        ok = x->shape.dim[d] == t.dim[d] || x->shape.dim[d] == 1;
    if (!ok)
        shape_error(n, "cannot expand %s to %s", tstr(x), shape_str(t));
    dtype_rule(n);
    n->shape = t;
}

void shape_slice(Node *n) {
    Node *x = n->in[0];
    const Attr *a = &n->attr;
    if (a->shape.rank != x->shape.rank)
        shape_error(n, "a slice of %s needs %d dimensions, got %d", tstr(x), x->shape.rank, a->shape.rank);
    for (int d = 0; d < x->shape.rank; d++) {
        int64_t start = a->a[d], step = a->b[d], count = a->shape.dim[d], dim = x->shape.dim[d];
        bool ok = start >= 0 && step >= 1 && count >= 0 && start <= dim &&
                  (count == 0 || (count - 1) <= (dim - 1 - start) / step);
        if (!ok)
            shape_error(n, "slice of %s along axis %d (start %lld, %lld elements, step %lld) is out of range", tstr(x), d,
                        (long long)start, (long long)count, (long long)step);
    }
    dtype_rule(n);
    n->shape = a->shape;
}

void shape_pad(Node *n) {
    Node *x = n->in[0];
    Shape s = x->shape;
    for (int d = 0; d < s.rank; d++) {
        if (n->attr.a[d] < 0 || n->attr.b[d] < 0)
            shape_error(n, "padding of %s along axis %d must not be negative", tstr(x), d);
        s.dim[d] += n->attr.a[d] + n->attr.b[d];
    }
    check_shape(n, s, "pad");
    dtype_rule(n);
    n->shape = s;
}

/* Output size of a window along one axis; -1 if the window does not fit. */
static int64_t window_out(int64_t size, int64_t k, int64_t s, int64_t p) {
    if (k < 1 || s < 1 || p < 0 || size + 2 * p < k)
        return -1;
    return (size + 2 * p - k) / s + 1;
}

static void check_window(Node *n, const Node *x, int64_t *oh, int64_t *ow) {
    const Attr *a = &n->attr;
    *oh = window_out(x->shape.dim[2], a->kh, a->sh, a->ph);
    *ow = window_out(x->shape.dim[3], a->kw, a->sw, a->pw);
    if (*oh < 0 || *ow < 0)
        shape_error(n, "a %lldx%lld window with stride %lld,%lld and padding %lld,%lld does not fit %s", (long long)a->kh,
                    (long long)a->kw, (long long)a->sh, (long long)a->sw, (long long)a->ph, (long long)a->pw, tstr(x));
}

static void need_rank(Node *n, int i, int rank, const char *layout) {
    if (n->in[i]->shape.rank != rank)
        shape_error(n, "'%s' needs %s for operand %d, got %s", opname(n), layout, i + 1, tstr(n->in[i]));
}

void shape_unfold(Node *n) {
    Node *x = n->in[0];
    need_rank(n, 0, 4, "[N, C, H, W]");
    int64_t oh, ow;
    check_window(n, x, &oh, &ow);
    dtype_rule(n);
    n->shape = shape_make(6, (int64_t[]){x->shape.dim[0], x->shape.dim[1], oh, ow, n->attr.kh, n->attr.kw});
}

void shape_fold(Node *n) {
    Node *cols = n->in[0];
    Shape xs = n->attr.shape;
    check_shape(n, xs, "fold");
    if (xs.rank != 4)
        shape_error(n, "fold needs an output shape [N, C, H, W], got %s", shape_str(xs));
    /* the window geometry is checked on a stand-in for the output */
    Node img = {.dtype = cols->dtype, .shape = xs};
    int64_t oh, ow;
    check_window(n, &img, &oh, &ow);
    Shape want = shape_make(6, (int64_t[]){xs.dim[0], xs.dim[1], oh, ow, n->attr.kh, n->attr.kw});
    if (!shape_eq(cols->shape, want))
        shape_error(n, "fold into %s needs columns of shape %s, got %s", shape_str(xs), shape_str(want), tstr(cols));
    dtype_rule(n);
    n->shape = xs;
}

/* ----------------------------------------------------------------------------
 * opaque ops
 */

void shape_matmul(Node *n) {
    Node *a = n->in[0], *b = n->in[1];
    int r = a->shape.rank;
    if (r < 2 || b->shape.rank != r)
        shape_error(n, "matmul needs operands of one rank >= 2, got %s and %s", tstr(a), tstr(b));
    for (int d = 0; d < r - 2; d++)
        if (a->shape.dim[d] != b->shape.dim[d])
            shape_error(n, "matmul batch dimensions of %s and %s differ", tstr(a), tstr(b));
    if (a->shape.dim[r - 1] != b->shape.dim[r - 2])
        shape_error(n, "cannot multiply %s by %s: inner dimensions %lld and %lld differ", tstr(a), tstr(b),
                    (long long)a->shape.dim[r - 1], (long long)b->shape.dim[r - 2]);
    dtype_rule(n);
    n->shape = a->shape;
    n->shape.dim[r - 1] = b->shape.dim[r - 1];
}

/* kh/kw of a conv are stored by the builder from the weight; a mismatch is a
 * builder bug. */
static void check_kernel_attr(Node *n, const Node *w) {
    if (n->attr.kh != w->shape.dim[2] || n->attr.kw != w->shape.dim[3])
        internal_error(__FILE__, __LINE__, "%s: kernel attr %lldx%lld does not match weight %s", opname(n),
                       (long long)n->attr.kh, (long long)n->attr.kw, tstr(w));
}

void shape_conv2d(Node *n) {
    Node *x = n->in[0], *w = n->in[1];
    need_rank(n, 0, 4, "[N, Ci, H, W]");
    need_rank(n, 1, 4, "[Co, Ci, kh, kw]");
    if (x->shape.dim[1] != w->shape.dim[1])
        shape_error(n, "conv2d of %s with weight %s: %lld input channels but the weight expects %lld", tstr(x), tstr(w),
                    (long long)x->shape.dim[1], (long long)w->shape.dim[1]);
    check_kernel_attr(n, w);
    int64_t oh, ow;
    check_window(n, x, &oh, &ow);
    dtype_rule(n);
    n->shape = shape_make(4, (int64_t[]){x->shape.dim[0], w->shape.dim[0], oh, ow});
}

void shape_conv2d_bwd_input(Node *n) {
    Node *dy = n->in[0], *w = n->in[1];
    Shape xs = n->attr.shape;
    need_rank(n, 0, 4, "[N, Co, OH, OW]");
    need_rank(n, 1, 4, "[Co, Ci, kh, kw]");
    check_shape(n, xs, "conv2d_bwd_input");
    if (xs.rank != 4)
        shape_error(n, "conv2d_bwd_input needs an input shape [N, Ci, H, W], got %s", shape_str(xs));
    check_kernel_attr(n, w);
    Node img = {.dtype = dy->dtype, .shape = xs};
    int64_t oh, ow;
    check_window(n, &img, &oh, &ow);
    Shape want = shape_make(4, (int64_t[]){xs.dim[0], w->shape.dim[0], oh, ow});
    if (xs.dim[1] != w->shape.dim[1] || !shape_eq(dy->shape, want))
        shape_error(n, "conv2d_bwd_input to %s: gradient %s and weight %s do not fit together", shape_str(xs), tstr(dy), tstr(w));
    dtype_rule(n);
    n->shape = xs;
}

void shape_conv2d_bwd_weight(Node *n) {
    Node *x = n->in[0], *dy = n->in[1];
    need_rank(n, 0, 4, "[N, Ci, H, W]");
    need_rank(n, 1, 4, "[N, Co, OH, OW]");
    int64_t oh, ow;
    check_window(n, x, &oh, &ow);
    if (dy->shape.dim[0] != x->shape.dim[0] || dy->shape.dim[2] != oh || dy->shape.dim[3] != ow)
        shape_error(n, "conv2d_bwd_weight: input %s and gradient %s do not fit a %lldx%lld window", tstr(x), tstr(dy),
                    (long long)n->attr.kh, (long long)n->attr.kw);
    dtype_rule(n);
    n->shape = shape_make(4, (int64_t[]){dy->shape.dim[1], x->shape.dim[1], n->attr.kh, n->attr.kw});
}

/* out = x.shape[:axis] ++ idx.shape[batch_dims:] ++ x.shape[axis+1:] */
static Shape gather_shape(Node *n, Shape xs, const Node *idx) {
    int axis = n->attr.axis, bd = n->attr.batch_dims;
    if (axis < 0 || axis >= xs.rank || bd < 0 || bd > axis || bd > idx->shape.rank)
        shape_error(n, "'%s' along axis %d with %d batch dims does not fit %s and indices %s", opname(n), axis, bd,
                    shape_str(xs), tstr(idx));
    if (xs.dim[axis] == 0 && shape_numel(idx->shape) > 0)
        shape_error(n, "'%s' along axis %d of %s: the axis is empty, there is nothing to index", opname(n), axis, shape_str(xs));
    for (int d = 0; d < bd; d++)
        if (idx->shape.dim[d] != xs.dim[d])
            shape_error(n, "'%s': the first %d dims of indices %s must equal those of %s", opname(n), bd, tstr(idx),
                        shape_str(xs));
    int rank = axis + (idx->shape.rank - bd) + (xs.rank - axis - 1);
    if (rank > MAX_RANK)
        shape_error(n, "'%s' result would have rank %d; at most %d is supported", opname(n), rank, MAX_RANK);
    Shape s = {0};
    for (int d = 0; d < axis; d++)
        s.dim[s.rank++] = xs.dim[d];
    for (int d = bd; d < idx->shape.rank; d++)
        s.dim[s.rank++] = idx->shape.dim[d];
    for (int d = axis + 1; d < xs.rank; d++)
        s.dim[s.rank++] = xs.dim[d];
    return s;
}

void shape_gather(Node *n) {
    dtype_rule(n);
    n->shape = gather_shape(n, n->in[0]->shape, n->in[1]);
}

void shape_scatter_add(Node *n) {
    Node *idx = n->in[0], *upd = n->in[1];
    check_shape(n, n->attr.shape, "scatter_add");
    Shape want = gather_shape(n, n->attr.shape, idx);
    if (!shape_eq(upd->shape, want))
        shape_error(n, "scatter_add into %s with indices %s needs updates of shape %s, got %s", shape_str(n->attr.shape),
                    tstr(idx), shape_str(want), tstr(upd));
    dtype_rule(n);
    n->shape = n->attr.shape;
}
