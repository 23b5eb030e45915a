/* autodiff.c: reverse-mode differentiation as a graph-to-graph transform.
 *
 * The design is tinygrad's, not ggml's: every gradient rule below writes the
 * vector-Jacobian product of its op with the ordinary builders, in the
 * primitives of ops.def, never with special backward ops. The gradient is
 * therefore an ordinary graph and can be differentiated again, which the
 * attack objectives (gradient matching, gradient canceling) need.
 *
 * A rule receives the node n, the gradient dy of n (n's dtype and shape) and
 * fills dx[i] for each input that needs a gradient (wants()); it leaves the
 * others NULL so that no dead nodes are built. Rules may reuse n's own value
 * (exp, sqrt, tanh, sigmoid ...), as tinygrad's do.
 */

#include "graph.h"
#include "stage_time.h"

/* Which node ids carry a gradient in the autodiff call that is running, so
 * that rules skip inputs that need none. NULL outside autodiff (a rule called
 * on its own computes every input's gradient). */
static const unsigned char *ad_dep;
static int ad_ndep;

static bool wants(const Node *x) { return !ad_dep || x->id >= ad_ndep || ad_dep[x->id]; }

static bool is_float(DType t) { return t == DT_F32 || t == DT_F64; }

/* Shorthands over the builders; every new node is located at the grad call. */
static Node *K(GradCtx *gc, double v, const Node *like) { return g_const(gc->g, v, like->dtype, like->shape, gc->loc); }
static Node *add(GradCtx *gc, Node *a, Node *b) { return g_binary(gc->g, OP_ADD, a, b, gc->loc); }
static Node *sub(GradCtx *gc, Node *a, Node *b) { return g_binary(gc->g, OP_SUB, a, b, gc->loc); }
static Node *mul(GradCtx *gc, Node *a, Node *b) { return g_binary(gc->g, OP_MUL, a, b, gc->loc); }
static Node *dvd(GradCtx *gc, Node *a, Node *b) { return g_binary(gc->g, OP_DIV, a, b, gc->loc); }
static Node *cmp(GradCtx *gc, Op op, Node *a, Node *b) { return g_binary(gc->g, op, a, b, gc->loc); }
static Node *neg(GradCtx *gc, Node *a) { return g_unary(gc->g, OP_NEG, a, gc->loc); }
static Node *sel(GradCtx *gc, Node *c, Node *a, Node *b) { return g_where(gc->g, c, a, b, gc->loc); }

/* ----------------------------------------------------------------------------
 * elementwise
 */

void grad_neg(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = neg(gc, dy); }

void grad_exp(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = mul(gc, dy, n); }

void grad_log(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = dvd(gc, dy, n->in[0]); }

/* d sqrt(x) = 1 / (2 sqrt(x)) */
void grad_sqrt(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = dvd(gc, mul(gc, dy, K(gc, 0.5, n)), n); }

/* d x^(-1/2) = -1/2 x^(-3/2) = -1/2 y^3 */
void grad_rsqrt(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = mul(gc, dy, mul(gc, K(gc, -0.5, n), mul(gc, n, mul(gc, n, n))));
}

void grad_tanh(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = mul(gc, dy, sub(gc, K(gc, 1, n), mul(gc, n, n)));
}

void grad_sigmoid(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = mul(gc, dy, mul(gc, n, sub(gc, K(gc, 1, n), n)));
}

void grad_relu(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0];
    dx[0] = sel(gc, cmp(gc, OP_GT, x, K(gc, 0, x)), dy, K(gc, 0, dy));
}

/* gelu(x) = x/2 (1 + tanh(u)), u = c (x + k x^3):
 * gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3k x^2), t = tanh(u) */
void grad_gelu(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    const double c = 0.7978845608028654, k = 0.044715;
    Node *x = n->in[0];
    Node *x2 = mul(gc, x, x);
    Node *u = mul(gc, K(gc, c, x), add(gc, x, mul(gc, K(gc, k, x), mul(gc, x2, x))));
    Node *t = g_unary(gc->g, OP_TANH, u, gc->loc);
    Node *left = mul(gc, K(gc, 0.5, x), add(gc, K(gc, 1, x), t));
    Node *right = mul(gc, mul(gc, K(gc, 0.5 * c, x), x),
                      mul(gc, sub(gc, K(gc, 1, x), mul(gc, t, t)), add(gc, K(gc, 1, x), mul(gc, K(gc, 3 * k, x), x2))));
    dx[0] = mul(gc, dy, add(gc, left, right));
}

/* sign(0) = 0: PyTorch's subgradient of |x| at 0 */
void grad_abs(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = mul(gc, dy, g_unary(gc->g, OP_SIGN, n->in[0], gc->loc)); }

/* Only reached for float -> float casts: integer nodes carry no gradient. */
void grad_cast(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    if (is_float(n->in[0]->dtype))
        dx[0] = g_cast(gc->g, dy, n->in[0]->dtype, gc->loc);
}

/* detach(x) is x with a zero derivative: nothing flows back */
void grad_detach(GradCtx *gc, Node *n, Node *dy, Node **dx) {}

void grad_add(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = dy;
    dx[1] = dy;
}

void grad_sub(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = dy;
    if (wants(n->in[1]))
        dx[1] = neg(gc, dy);
}

void grad_mul(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    if (wants(n->in[0]))
        dx[0] = mul(gc, dy, n->in[1]);
    if (wants(n->in[1]))
        dx[1] = mul(gc, dy, n->in[0]);
}

/* d(a/b) = da / b - a db / b^2 */
void grad_div(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *a = n->in[0], *b = n->in[1];
    if (wants(a))
        dx[0] = dvd(gc, dy, b);
    if (wants(b))
        dx[1] = neg(gc, dvd(gc, mul(gc, dy, a), mul(gc, b, b)));
}

/* da = dy b a^(b-1); db = dy log(a) a^b where a > 0 and 0 elsewhere. The
 * log reads a where a > 0 and 1 elsewhere, so that no NaN is built even in
 * branches that the mask discards (they would poison second derivatives). */
void grad_pow(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *a = n->in[0], *b = n->in[1];
    if (wants(a))
        dx[0] = mul(gc, dy, mul(gc, b, g_binary(gc->g, OP_POW, a, sub(gc, b, K(gc, 1, b)), gc->loc)));
    if (wants(b)) {
        Node *pos = cmp(gc, OP_GT, a, K(gc, 0, a));
        Node *loga = g_unary(gc->g, OP_LOG, sel(gc, pos, a, K(gc, 1, a)), gc->loc);
        dx[1] = sel(gc, pos, mul(gc, dy, mul(gc, loga, n)), K(gc, 0, dy));
    }
}

/* max/min: the winner takes dy; ties split it in half (PyTorch). */
static void grad_minmax(GradCtx *gc, Node *n, Node *dy, Node **dx, Op win_a) {
    Node *a = n->in[0], *b = n->in[1];
    Node *zero = K(gc, 0, dy);
    Node *half = mul(gc, dy, K(gc, 0.5, dy));
    Node *tie = cmp(gc, OP_EQ, a, b);
    if (wants(a))
        dx[0] = sel(gc, cmp(gc, win_a, a, b), dy, sel(gc, tie, half, zero));
    if (wants(b))
        dx[1] = sel(gc, cmp(gc, win_a, b, a), dy, sel(gc, tie, half, zero));
}

void grad_max(GradCtx *gc, Node *n, Node *dy, Node **dx) { grad_minmax(gc, n, dy, dx, OP_GT); }
void grad_min(GradCtx *gc, Node *n, Node *dy, Node **dx) { grad_minmax(gc, n, dy, dx, OP_LT); }

void grad_where(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *c = n->in[0], *zero = K(gc, 0, dy);
    if (wants(n->in[1]))
        dx[1] = sel(gc, c, dy, zero);
    if (wants(n->in[2]))
        dx[2] = sel(gc, c, zero, dy);
}

/* ----------------------------------------------------------------------------
 * reductions
 */

void grad_sum(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = g_expand(gc->g, dy, n->in[0]->shape, gc->loc); }

/* The elements equal to the extreme share dy evenly. */
static void grad_extreme(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0];
    Node *mask = cmp(gc, OP_EQ, x, g_expand(gc->g, n, x->shape, gc->loc));
    Node *ones = sel(gc, mask, K(gc, 1, x), K(gc, 0, x));
    Node *count = g_reduce(gc->g, OP_SUM, ones, n->attr.axes, true, gc->loc);
    Node *share = g_expand(gc->g, dvd(gc, dy, count), x->shape, gc->loc);
    dx[0] = sel(gc, mask, share, K(gc, 0, x));
}

void grad_rmax(GradCtx *gc, Node *n, Node *dy, Node **dx) { grad_extreme(gc, n, dy, dx); }
void grad_rmin(GradCtx *gc, Node *n, Node *dy, Node **dx) { grad_extreme(gc, n, dy, dx); }

/* d logsumexp(x) / dx = softmax(x) = exp(x - logsumexp(x)), from the result
 * node: one elementwise expression that fuses into the consumer (cross
 * entropy's gradient is one kernel), no second reduction. */
void grad_rlse(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0];
    Node *p = g_unary(gc->g, OP_EXP, g_binary(gc->g, OP_SUB, x, g_expand(gc->g, n, x->shape, gc->loc), gc->loc), gc->loc);
    dx[0] = mul(gc, g_expand(gc->g, dy, x->shape, gc->loc), p);
}

/* ----------------------------------------------------------------------------
 * views
 */

void grad_reshape(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = g_reshape(gc->g, dy, n->in[0]->shape, gc->loc); }

void grad_permute(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    int inv[MAX_RANK];
    for (int d = 0; d < n->shape.rank; d++)
        inv[n->attr.a[d]] = d;
    dx[0] = g_permute(gc->g, dy, inv, gc->loc);
}

/* the adjoint of a broadcast is a sum over the broadcast axes (kept) */
void grad_expand(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0];
    uint32_t axes = 0;
    for (int d = 0; d < x->shape.rank; d++)
        if (x->shape.dim[d] != n->shape.dim[d])
            axes |= 1u << d;
    dx[0] = axes ? g_reduce(gc->g, OP_SUM, dy, axes, true, gc->loc) : dy;
}

/* The adjoint of a slice puts dy back in place with zeros around it. Strided
 * axes are spread out with views only, so that the result stays
 * differentiable: along an axis with c elements at step s,
 * [pre, c, post] -> [pre, c, 1, post] -> pad -> [pre, c, s, post]
 * -> [pre, c*s, post], which holds element j at position j*s; it is then cut
 * or padded to the axis length and reshaped back. Unit-step axes are padded
 * once at the end. */
void grad_slice(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Graph *g = gc->g;
    Shape xs = n->in[0]->shape;
    const Attr *a = &n->attr;
    int r = xs.rank;
    Node *cur = dy;
    int64_t lo[MAX_RANK], hi[MAX_RANK];
    for (int d = 0; d < r; d++) {
        int64_t start = a->a[d], step = a->b[d], c = n->shape.dim[d], len = xs.dim[d];
        lo[d] = start;
        hi[d] = len - start - c;
        if (step == 1 || c <= 1)
            continue;
        int64_t pre = 1, post = 1;
        for (int k = 0; k < d; k++)
            pre *= cur->shape.dim[k];
        for (int k = d + 1; k < r; k++)
            post *= cur->shape.dim[k];
        Node *v = g_reshape(g, cur, shape_make(4, (int64_t[]){pre, c, 1, post}), gc->loc);
        v = g_pad(g, v, (int64_t[]){0, 0, 0, 0}, (int64_t[]){0, 0, step - 1, 0}, gc->loc);
        v = g_reshape(g, v, shape_make(3, (int64_t[]){pre, c * step, post}), gc->loc);
        int64_t tail = len - start - c * step;   /* < 0: the spread overshoots the axis */
        if (tail < 0)
            v = g_slice(g, v, (int64_t[]){0, 0, 0}, (int64_t[]){pre, c * step + tail, post}, NULL, gc->loc);
        v = g_pad(g, v, (int64_t[]){0, start, 0}, (int64_t[]){0, tail > 0 ? tail : 0, 0}, gc->loc);
        Shape back = cur->shape;
        back.dim[d] = len;
        cur = g_reshape(g, v, back, gc->loc);
        lo[d] = hi[d] = 0;
    }
    dx[0] = g_pad(g, cur, lo, hi, gc->loc);
}

void grad_pad(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = g_slice(gc->g, dy, n->attr.a, n->in[0]->shape.dim, NULL, gc->loc);
}

void grad_unfold(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    const Attr *a = &n->attr;
    dx[0] = g_fold(gc->g, dy, n->in[0]->shape, a->kh, a->kw, a->sh, a->sw, a->ph, a->pw, gc->loc);
}

void grad_fold(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    const Attr *a = &n->attr;
    dx[0] = g_unfold(gc->g, dy, a->kh, a->kw, a->sh, a->sw, a->ph, a->pw, gc->loc);
}

/* ----------------------------------------------------------------------------
 * opaque ops
 */

static Node *transpose_last2(GradCtx *gc, Node *x) {
    int perm[MAX_RANK], r = x->shape.rank;
    for (int d = 0; d < r; d++)
        perm[d] = d;
    perm[r - 2] = r - 1;
    perm[r - 1] = r - 2;
    return g_permute(gc->g, x, perm, gc->loc);
}

/* C = A @ B: dA = dC @ B^T, dB = A^T @ dC (batch dims are already equal) */
void grad_matmul(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *a = n->in[0], *b = n->in[1];
    if (wants(a))
        dx[0] = g_matmul(gc->g, dy, transpose_last2(gc, b), gc->loc);
    if (wants(b))
        dx[1] = g_matmul(gc->g, transpose_last2(gc, a), dy, gc->loc);
}

/* The three convolution ops are closed under differentiation. With
 * conv(x, w) = y, bwd_input(dy, w) the adjoint in x and bwd_weight(x, dy) the
 * adjoint in w, all three are bilinear and <conv(x, w), d> = <x, bwd_input(d, w)>
 * = <w, bwd_weight(x, d)>; each VJP below follows from that identity. */
void grad_conv2d(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0], *w = n->in[1];
    const Attr *a = &n->attr;
    if (wants(x))
        dx[0] = g_conv2d_bwd_input(gc->g, dy, w, x->shape, a->sh, a->sw, a->ph, a->pw, gc->loc);
    if (wants(w))
        dx[1] = g_conv2d_bwd_weight(gc->g, x, dy, a->kh, a->kw, a->sh, a->sw, a->ph, a->pw, gc->loc);
}

/* z = bwd_input(d, w): <dz, z> = <conv(dz, w), d> */
void grad_conv2d_bwd_input(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *d = n->in[0], *w = n->in[1];
    const Attr *a = &n->attr;
    if (wants(d))
        dx[0] = g_conv2d(gc->g, dy, w, a->sh, a->sw, a->ph, a->pw, gc->loc);
    if (wants(w))
        dx[1] = g_conv2d_bwd_weight(gc->g, dy, d, a->kh, a->kw, a->sh, a->sw, a->ph, a->pw, gc->loc);
}

/* z = bwd_weight(x, d): <dz, z> = <conv(x, dz), d> */
void grad_conv2d_bwd_weight(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    Node *x = n->in[0], *d = n->in[1];
    const Attr *a = &n->attr;
    if (wants(x))
        dx[0] = g_conv2d_bwd_input(gc->g, d, dy, x->shape, a->sh, a->sw, a->ph, a->pw, gc->loc);
    if (wants(d))
        dx[1] = g_conv2d(gc->g, x, dy, a->sh, a->sw, a->ph, a->pw, gc->loc);
}

void grad_gather(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[0] = g_scatter_add(gc->g, n->in[1], dy, n->in[0]->shape, n->attr.axis, n->attr.batch_dims, gc->loc);
}

void grad_scatter_add(GradCtx *gc, Node *n, Node *dy, Node **dx) {
    dx[1] = g_gather(gc->g, dy, n->in[0], n->attr.axis, n->attr.batch_dims, gc->loc);
}

/* The mean over ranks is linear: its adjoint is the mean of the adjoints. */
void grad_allreduce_mean(GradCtx *gc, Node *n, Node *dy, Node **dx) { dx[0] = g_allreduce_mean(gc->g, dy, gc->loc); }

/* ----------------------------------------------------------------------------
 * the transform
 */

static void accumulate(GradCtx *gc, Node **slot, Node *x, Node *d) {
    if (d->dtype != x->dtype || !shape_eq(d->shape, x->shape))
        internal_error(__FILE__, __LINE__, "autodiff: gradient %s for node %%%d of type %s",
                       type_str(d->dtype, d->shape), x->id, type_str(x->dtype, x->shape));
    *slot = *slot ? add(gc, *slot, d) : d;
}

void autodiff(Graph *g, Node **ys, Node **seeds, int nys, Node **xs, int nxs, Node **out, Loc loc) {
    stage_push(ST_AUTODIFF);
    GradCtx gc = {g, loc};
    int nold = g->nodes.len, cap = g->next_id;
    unsigned char *isx = xalloc((size_t)cap + 1), *dep = xalloc((size_t)cap + 1);
    Node **grad = xalloc(sizeof(Node *) * ((size_t)cap + 1));
    for (int j = 0; j < nxs; j++) {
        ASSERT(xs[j]->id < cap);
        isx[xs[j]->id] = 1;
    }
    if (!seeds && (nys != 1 || shape_numel(ys[0]->shape) != 1)) {
        for (int i = 0; i < nys; i++)
            diag_note(ys[i]->loc, "%s comes from here", type_str(ys[i]->dtype, ys[i]->shape));
        error_at(loc, "grad needs a scalar to differentiate, got %s", nys == 1 ? type_str(ys[0]->dtype, ys[0]->shape) : "several values");
    }

    /* forward: which nodes depend on an x through differentiable float ops */
    for (int i = 0; i < nold; i++) {
        Node *n = g->nodes.data[i];
        if (!is_float(n->dtype))
            continue;
        if (isx[n->id]) {
            dep[n->id] = 1;
            continue;
        }
        if (!op_info[n->op].grad || n->op == OP_DETACH)
            continue;
        for (int k = 0; k < n->nin; k++)
            dep[n->id] |= dep[n->in[k]->id];
    }

    for (int i = 0; i < nys; i++) {
        Node *y = ys[i];
        ASSERT(y->id < cap);
        if (!dep[y->id])
            continue;
        Node *s = seeds ? seeds[i] : g_const(g, 1, y->dtype, y->shape, loc);
        if (!shape_eq(s->shape, y->shape))
            internal_error(__FILE__, __LINE__, "autodiff: seed %s for %s", type_str(s->dtype, s->shape), type_str(y->dtype, y->shape));
        accumulate(&gc, &grad[y->id], y, g_cast(g, s, y->dtype, loc));
    }

    /* backward, in reverse topological order over the nodes that existed */
    const unsigned char *saved_dep = ad_dep;
    int saved_n = ad_ndep;
    ad_dep = dep;
    ad_ndep = cap;
    for (int i = nold - 1; i >= 0; i--) {
        Node *n = g->nodes.data[i];
        Node *dy = grad[n->id];
        if (!dy || !op_info[n->op].grad)
            continue;
        bool any = false;
        for (int k = 0; k < n->nin; k++)
            any |= dep[n->in[k]->id];
        if (!any)
            continue;
        Node *dx[3] = {0};
        op_info[n->op].grad(&gc, n, dy, dx);
        for (int k = 0; k < n->nin; k++)
            if (dx[k] && dep[n->in[k]->id])
                accumulate(&gc, &grad[n->in[k]->id], n->in[k], dx[k]);
    }
    ad_dep = saved_dep;
    ad_ndep = saved_n;

    for (int j = 0; j < nxs; j++)
        out[j] = grad[xs[j]->id] ? grad[xs[j]->id] : g_const(g, 0, xs[j]->dtype, xs[j]->shape, loc);
    stage_pop();
}
