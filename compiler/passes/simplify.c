/* passes/simplify.c: algebraic simplification, to a fixed point.
 *
 *   x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1      -> x
 *   x * 0, 0 * x                                  -> 0   (*)
 *   neg(neg(x)), detach(x)                        -> x   (autodiff has run)
 *   cast, reshape, permute, expand, slice, pad to what x already is -> x
 *   reshape(reshape(x)), permute(permute(x)), expand(expand(x))
 *                                                 -> one view of x
 *   where(CONST c, a, b)                          -> a or b
 *   where(c, a, a)                                -> a
 *   sum/rmax/rmin/rlogsumexp over no axes or size-1 axes -> x
 *   scatter_add of one index per row (take's gradient)
 *                                                 -> where(iota == idx, upd, 0)
 *   transpose(a @ b) of matrices, the product read nowhere else
 *                                                 -> transpose(b) @ transpose(a)
 *
 * The last one is for the gradient of a weight used transposed (h @
 * transpose(w), GPT-2's tied LM head): autodiff gives transpose(h^T @ dy),
 * which wrote the [C, V] product and then a strided [V, C] transpose of it
 * (154 MB at GPT-2's vocabulary) in the kernel adding it to the embedding's
 * gradient; dy^T @ h is the same sums in the same order (the GEMM reads
 * either operand transposed at no cost) and writes [V, C] directly.
 *
 * (*) assumes finite values, like -ffast-math: x * 0 is NaN for x = inf or
 * NaN. Gradients are full of products with masks and zeros, and this is
 * what removes them.
 */
#include "graph.h"

/* A CONST seen through the views that keep its value (the builders wrap
 * scalars in RESHAPE + EXPAND, and fold may not have run). */
static const Node *const_of(const Node *n) {
    while (n->op == OP_RESHAPE || n->op == OP_EXPAND || n->op == OP_PERMUTE || n->op == OP_SLICE)
        n = n->in[0];
    return n->op == OP_CONST ? n : NULL;
}

static bool is_value(const Node *n, double v) {
    const Node *c = const_of(n);
    return c && c->attr.value == v;
}

static bool same_as_input(const Node *n) {
    const Node *x = n->in[0];
    return x->dtype == n->dtype && shape_eq(x->shape, n->shape);
}

static bool identity_view(const Node *n) {
    const Attr *a = &n->attr;
    for (int d = 0; d < n->shape.rank; d++) {
        switch (n->op) {
        case OP_PERMUTE: if (a->a[d] != d) return false; break;
        case OP_SLICE: if (a->a[d] != 0 || (a->b[d] != 1 && n->shape.dim[d] > 1)) return false; break;
        case OP_PAD: if (a->a[d] != 0 || a->b[d] != 0) return false; break;
        default: break;
        }
    }
    return same_as_input(n);
}

/* scatter_add(idx, upd) into out along `axis` with one index per row (idx
 * of shape out[:axis], batch_dims == axis: the gradient of take(x, idx,
 * axis) along x's leading axes, as in cross entropy) as the elementwise
 *   out[pre, j, post] = where(j == clamp(idx[pre]), upd[pre, post], 0)
 * which fuses with its consumers (softmax - one_hot) instead of being an
 * opaque kernel that zeroes and writes a whole [N, V] buffer. Indices are
 * clamped into [0, dim) as the SCATTER_ADD lowering does. NULL: no match. */
static Node *scatter_as_select(Graph *g, Node *n) {
    Node *idx = n->in[0], *upd = n->in[1];
    int axis = n->attr.axis;
    Shape out = n->shape;
    if (axis < 1 || n->attr.batch_dims != axis || idx->shape.rank != axis || out.dim[axis] < 1)
        return NULL;
    Loc loc = n->loc;
    Shape row = out;   /* out with a 1 at axis: where idx and upd broadcast from */
    row.dim[axis] = 1;
    Shape ish = idx->shape;
    for (int d = axis; d < out.rank; d++)
        ish.dim[ish.rank++] = 1;
    Node *hi = g_const(g, (double)(out.dim[axis] - 1), DT_I32, idx->shape, loc);
    Node *lo = g_const(g, 0, DT_I32, idx->shape, loc);
    Node *ci = g_binary(g, OP_MAX, g_binary(g, OP_MIN, idx, hi, loc), lo, loc);
    Node *at = g_expand(g, g_reshape(g, ci, ish, loc), out, loc);
    Node *hit = g_binary(g, OP_EQ, g_iota(g, DT_I32, out, axis, loc), at, loc);
    Node *val = g_expand(g, g_reshape(g, upd, row, loc), out, loc);
    return g_where(g, hit, val, g_const(g, 0, n->dtype, out, loc), loc);
}

/* What n simplifies to: n itself (possibly rewritten in place, *changed
 * set), an existing node, or a new one (appended by the builder). */
/* transpose(a @ b) -> transpose(b) @ transpose(a) for an [M, N] product of
 * matrices that nothing else reads (else the product would be computed
 * twice); NULL if n is not that. The inner transposes of transposes fold in
 * the next sweep. */
static Node *transposed_product(Graph *g, Node *n) {
    Node *p = n->in[0];
    if (p->op != OP_MATMUL || p->nuses != 1 || n->shape.rank != 2 || n->attr.a[0] != 1 || n->attr.a[1] != 0 ||
        p->in[0]->shape.rank != 2 || p->in[1]->shape.rank != 2)
        return NULL;
    static const int swap[2] = {1, 0};
    return g_matmul(g, g_permute(g, p->in[1], swap, n->loc), g_permute(g, p->in[0], swap, n->loc), n->loc);
}

static Node *simplify_node(Graph *g, Node *n, bool *changed) {
    Node *a = n->nin > 0 ? n->in[0] : NULL, *b = n->nin > 1 ? n->in[1] : NULL;
    switch (n->op) {
    case OP_DETACH:
        return a;
    case OP_ADD:
        return is_value(b, 0) ? a : is_value(a, 0) ? b : n;
    case OP_SUB:
        return is_value(b, 0) ? a : n;
    case OP_MUL:
        if (is_value(a, 0) || is_value(b, 0))
            return g_const(g, 0, n->dtype, n->shape, n->loc);
        return is_value(b, 1) ? a : is_value(a, 1) ? b : n;
    case OP_DIV:
        return is_value(b, 1) ? a : n;
    case OP_NEG:
        return a->op == OP_NEG ? a->in[0] : n;
    case OP_CAST:
        return same_as_input(n) ? a : n;
    case OP_WHERE:
        if (const_of(a))
            return const_of(a)->attr.value ? b : n->in[2];
        return b == n->in[2] ? b : n;
    case OP_SUM:
    case OP_RMAX:
    case OP_RMIN:
    case OP_RLSE:
        return same_as_input(n) ? a : n;
    case OP_RESHAPE:
        if (same_as_input(n))
            return a;
        if (a->op == OP_RESHAPE) {
            n->in[0] = a->in[0];
            *changed = true;
        }
        return n;
    case OP_EXPAND:
        if (same_as_input(n))
            return a;
        if (a->op == OP_EXPAND) {
            n->in[0] = a->in[0];
            *changed = true;
        }
        return n;
    case OP_PERMUTE: {
        if (identity_view(n))
            return a;
        Node *t = transposed_product(g, n);
        if (t)
            return t;
        if (a->op == OP_PERMUTE) {
            /* out.dim[d] = mid.dim[p[d]] = x.dim[q[p[d]]] */
            int64_t comp[MAX_RANK];
            for (int d = 0; d < n->shape.rank; d++)
                comp[d] = a->attr.a[n->attr.a[d]];
            for (int d = 0; d < n->shape.rank; d++)
                n->attr.a[d] = comp[d];
            n->in[0] = a->in[0];
            *changed = true;
        }
        return n;
    }
    case OP_SLICE:
    case OP_PAD:
        return identity_view(n) ? a : n;
    case OP_SCATTER_ADD: {
        Node *r = scatter_as_select(g, n);
        return r ? r : n;
    }
    default:
        return n;
    }
}

/* One sweep, rebuilding the list as in pass_fold; true if anything changed. */
static bool sweep(Entry *e) {
    Graph *g = e->g;
    int n0 = g->nodes.len;
    Node **old = g->nodes.data;
    bool changed = false;
    for (int i = 0; i < n0; i++) {
        old[i]->repl = NULL;
        old[i]->nuses = 0;
    }
    for (int i = 0; i < n0; i++)
        for (int k = 0; k < old[i]->nin; k++)
            old[i]->in[k]->nuses++;
    for (int i = 0; i < e->args.len; i++)
        if (e->args.data[i].out)
            e->args.data[i].out->nuses++;
    g->nodes.data = NULL;
    g->nodes.len = g->nodes.cap = 0;
    for (int i = 0; i < n0; i++) {
        Node *n = old[i];
        for (int k = 0; k < n->nin; k++)
            while (n->in[k]->repl)
                n->in[k] = n->in[k]->repl;
        Node *r = simplify_node(g, n, &changed);
        if (r != n) {
            n->repl = r;
            changed = true;
        } else {
            vec_push(&g->nodes, n);
        }
    }
    entry_replace_uses(e);
    return changed;
}

void pass_simplify(Entry *e) {
    while (sweep(e))
        ;
}
