/* fuse_rows.c: a GEMM into its row-wise consumers.
 *
 * A product X = A @ B of shape [..., M, N] that only row-wise kernels read
 * (reductions over the last axis: softmax's max and sum; elementwise kernels
 * over X's index space: its exp) need not be written at all: one kernel
 * loops, in parallel, over (batch, block of rows), computes the block's rows
 * of X with one LS_GEMM into a private scratch of rows x N (in cache), and
 * runs each consumer's loops over those rows reading the scratch
 * (lower_rows.c). X's buffer disappears from the memory plan. That is
 * attention: the scores q @ k^T, read by the row max and the masked exp
 * forward, and d e = dy @ v^T, read by the one kernel writing d s backward,
 * are no longer [B, H, T, T] buffers (docs/design.md, "Fused cross entropy
 * and attention").
 *
 * A consumer qualifies when it reads X only at the element it computes
 * (the identity map), writes workspace values only, and reads the results of
 * earlier consumers of the group only within the row it computes (a row
 * max broadcast along the row, an exp at its own element): then an
 * iteration reads nothing another iteration writes. Its reductions reduce
 * exactly the last axis. Every kernel that reads X must qualify, and no
 * other kernel may lie on a dependency path between two kernels of the
 * group (merging them would make a cycle).
 *
 * Each block of R rows reads all of B (K x N per batch) again: (M / R) K N
 * reads against the 2 M N saved (writing X and reading it back). K <= 2 R
 * keeps that no worse even when B is not in cache, so attention (K = the
 * head size, 64) qualifies and a layer with a deep K (an MLP's 768) stays a
 * top-level GEMM. The GEMM's operands must not both be transposed (the LLVM
 * backend has no micro-kernel for that case, and the GEMM now runs inside a
 * parallel loop).
 *
 * Only for backends that take GEMMs inside parallel loops and private
 * buffers: lower_entry skips this for LowerOptions.top_gemms (CUDA), where
 * the product stays a buffer.
 */
#include <string.h>

#include "lower_int.h"

/* A walk over one consumer's inlined tree, checking each buffer it reads. */
typedef struct RowWalk {
    const Fusion *f;
    VStacks *vs;
    const Node *x;             /* the product */
    const FKernel *self;       /* the consumer walked */
    const unsigned char *out;  /* by id: 1 a root of an earlier consumer of the
                                * group, 2 of this one or a later one */
    int64_t rows, n;           /* X is rows x n */
    struct {
        int node, stack;
    } seen[256];
    int nseen;
    bool ok;
} RowWalk;

static bool is_root(const FKernel *k, const Node *n) {
    for (int i = 0; i < k->roots.len; i++)
        if (k->roots.data[i] == n)
            return true;
    return false;
}

/* m maps the product's index space [..., M, N] onto row r of a value of w
 * elements per row (1: a per-row value broadcast along the row; n: the
 * row's own elements), for every row r */
static bool row_aligned(const IdxMap *m, const Shape *xs, int64_t w, int64_t n) {
    int r = xs->rank;
    if (m->offset != 0 || m->ncons != 0)
        return false;
    if (n > 1 && m->stride[r - 1] != (w == 1 ? 0 : 1))
        return false;
    int64_t step = w;
    for (int d = r - 2; d >= 0; d--) {
        if (xs->dim[d] > 1 && m->stride[d] != step)
            return false;
        step *= xs->dim[d];
    }
    return true;
}

static void walk(RowWalk *w, const Node *n, int stack, bool root) {
    if (!w->ok)
        return;
    for (int i = 0; i < w->nseen; i++)
        if (w->seen[i].node == n->id && w->seen[i].stack == stack)
            return;
    if (w->nseen == (int)(sizeof w->seen / sizeof *w->seen)) {
        w->ok = false;
        return;
    }
    w->seen[w->nseen].node = n->id;
    w->seen[w->nseen++].stack = stack;
    bool buffer = !root && w->f->mat[n->id];
    if (buffer || fusion_is_cheap_leaf(n)) {
        IdxMap m;
        LeafForm form;
        const Node *failed = NULL;
        if (!leaf_compose(w->vs, stack, n, buffer, &m, &form, &failed)) {
            w->ok = false;
            return;
        }
        if (!buffer)
            return;
        if (n == w->x || is_root(w->self, n))
            w->ok = map_is_identity(&m);
        else if (w->out[n->id] == 2)
            w->ok = false;   /* computed after this consumer in the merged kernel */
        else if (w->out[n->id]) {
            int64_t per_row = shape_numel(n->shape) / w->rows;
            w->ok = (per_row == 1 || per_row == w->n) && per_row * w->rows == shape_numel(n->shape) &&
                    row_aligned(&m, &w->x->shape, per_row, w->n);
        }
        return;
    }
    switch (op_info[n->op].kind) {
    case OK_VIEW: walk(w, n->in[0], vstack_push(w->vs, stack, n), false); return;
    case OK_ELEM:
        for (int i = 0; i < n->nin; i++)
            walk(w, n->in[i], stack, false);
        return;
    default: w->ok = false; return;
    }
}

static bool float_dtype(DType dt) { return dt == DT_F32 || dt == DT_F64; }

/* c computes, row by row of x, what the lowering supports (walk aside) */
static bool row_consumer_form(const FKernel *c, const Node *x) {
    int r = x->shape.rank;
    for (int i = 0; i < c->dsts.len; i++)
        if (c->dsts.data[i]->arg >= 0)
            return false;
    for (int i = 0; i < c->roots.len; i++) {
        const Node *n = c->roots.data[i];
        if (c->kind == KK_ELEM) {
            if (!shape_eq(n->shape, x->shape))
                return false;
        } else if (c->kind == KK_REDUCE) {
            if (n->op != OP_SUM && n->op != OP_RMAX && n->op != OP_RMIN)
                return false;
            if (!float_dtype(n->dtype) || !shape_eq(n->in[0]->shape, x->shape) ||
                n->attr.axes != (1u << (r - 1)))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

/* The GEMM operand n's map, through its views to the buffer it rests on. */
static bool operand_map(const Fusion *f, VStacks *vs, const Node *n, IdxMap *m) {
    int stack = 0;
    while (!f->mat[n->id] && op_info[n->op].kind == OK_VIEW) {
        stack = vstack_push(vs, stack, n);
        n = n->in[0];
    }
    LeafForm form;
    return f->mat[n->id] && leaf_compose(vs, stack, n, true, m, &form, NULL);
}

static bool gemm_ok(const Fusion *f, VStacks *vs, const FKernel *g) {
    const Node *x = KROOT(g);
    int r = x->shape.rank;
    if (g->kind != KK_OPAQUE || x->op != OP_MATMUL || g->roots.len != 1 || g->rows.len || KDST(g)->arg >= 0 ||
        f->output[x->id] || f->alias[x->id] || r < 2 || !float_dtype(x->dtype))
        return false;
    int64_t m = x->shape.dim[r - 2], n = x->shape.dim[r - 1], k = x->in[0]->shape.dim[r - 1];
    int64_t rows = m && n ? rows_block(m, n, x->dtype) : 0;
    if (!rows || k == 0 || k > 2 * rows)
        return false;
    IdxMap ma, mb;
    bool ta, tb;
    int64_t lda, ldb;
    return operand_map(f, vs, x->in[0], &ma) && operand_map(f, vs, x->in[1], &mb) && map_matrix(&ma, &ta, &lda) &&
           map_matrix(&mb, &tb, &ldb) && !(ta && tb);
}

/* Does kernel `from` depend, transitively, on a kernel marked in `group`? */
static bool reaches_group(const Fusion *f, int from, const unsigned char *group, int *stamp, int gen) {
    VEC(int) stack = {0};
    vec_push(&stack, from);
    while (stack.len) {
        int k = stack.data[--stack.len];
        if (group[k])
            return true;
        if (stamp[k] == gen)
            continue;
        stamp[k] = gen;
        const FKernel *x = f->kernels.data[k];
        for (int i = 0; i < x->deps.len; i++)
            vec_push(&stack, x->deps.data[i]);
    }
    return false;
}

/* Kernel g absorbs the consumers marked in group (g marked too); they leave
 * the kernel list and whoever depended on them depends on g. */
static void merge_group(Fusion *f, int gi, const unsigned char *group) {
    FKernel *g = f->kernels.data[gi];
    const Node *x = KROOT(g);
    int n = f->kernels.len;
    for (int i = 0; i < n; i++) {
        FKernel *c = f->kernels.data[i];
        if (!group[i] || i == gi)
            continue;
        vec_push(&g->rows, c);
        for (int j = 0; j < c->roots.len; j++) {
            vec_push(&g->roots, c->roots.data[j]);
            vec_push(&g->dsts, c->dsts.data[j]);
        }
        for (int j = 0; j < c->nodes.len; j++)
            vec_push(&g->nodes, c->nodes.data[j]);
        for (int j = 0; j < c->reads.len; j++) {
            const FRead *rd = &c->reads.data[j];
            bool have = rd->n == x;
            for (int t = 0; t < g->reads.len && !have; t++)
                have = g->reads.data[t].n == rd->n;
            if (!have)
                vec_push(&g->reads, *rd);
        }
        for (int j = 0; j < c->deps.len; j++)
            vec_push(&g->deps, c->deps.data[j]);
    }
    int *owner = xalloc(sizeof(int) * ((size_t)n + 1));
    for (int i = 0; i < n; i++)
        owner[i] = group[i] ? gi : i;
    fusion_compact(f, owner);
}

/* Try the GEMM kernel gi; true if it absorbed its consumers. */
static bool try_gemm(Fusion *f, VStacks *vs, int gi, unsigned char *group, unsigned char *out, int *stamp, int *gen) {
    const FKernel *g = f->kernels.data[gi];
    const Node *x = KROOT(g);
    int n = f->kernels.len, r = x->shape.rank;
    memset(group, 0, (size_t)n + 1);
    group[gi] = 1;
    int nc = 0;
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        const FKernel *c = f->kernels.data[i];
        bool reads_x = false;
        for (int j = 0; j < c->reads.len && !reads_x; j++)
            reads_x = c->reads.data[j].n == x;
        if (!reads_x)
            continue;
        ok = i != gi && row_consumer_form(c, x);
        group[i] = 1;
        nc++;
    }
    if (!ok || !nc)
        return false;
    /* the consumers run in kernel order: each may read earlier ones'
     * results, within its row only, and no later one's */
    for (int i = 0; i < n; i++)
        if (group[i] && i != gi)
            for (int j = 0; j < f->kernels.data[i]->roots.len; j++)
                out[f->kernels.data[i]->roots.data[j]->id] = 2;
    for (int i = 0; i < n && ok; i++) {
        const FKernel *c = f->kernels.data[i];
        if (!group[i] || i == gi)
            continue;
        RowWalk w = {.f = f, .vs = vs, .x = x, .self = c, .out = out, .n = x->shape.dim[r - 1], .ok = true};
        w.rows = shape_numel(x->shape) / w.n;
        for (int j = 0; j < c->roots.len && w.ok; j++) {
            const Node *root = c->roots.data[j];
            if (c->kind == KK_REDUCE)
                walk(&w, root->in[0], 0, false);
            else
                walk(&w, root, 0, true);
        }
        ok = w.ok;
        for (int j = 0; j < c->roots.len; j++)
            out[c->roots.data[j]->id] = 1;
    }
    for (int i = 0; i < n; i++)
        if (group[i] && i != gi)
            for (int j = 0; j < f->kernels.data[i]->roots.len; j++)
                out[f->kernels.data[i]->roots.data[j]->id] = 0;
    /* a consumer must not depend on the group through a kernel outside it */
    for (int i = 0; i < n && ok; i++) {
        const FKernel *c = f->kernels.data[i];
        for (int d = 0; group[i] && d < c->deps.len && ok; d++) {
            int dep = c->deps.data[d];
            if (!group[dep])
                ok = !reaches_group(f, dep, group, stamp, ++*gen);
        }
    }
    if (!ok)
        return false;
    merge_group(f, gi, group);
    return true;
}

void fuse_rows(Fusion *f) {
    VStacks vs;
    vstacks_init(&vs);
    size_t n = (size_t)f->kernels.len + 1;
    unsigned char *group = xalloc(n), *out = xalloc((size_t)f->nid + 1);
    int *stamp = xalloc(sizeof(int) * n), gen = 0;
    for (int gi = 0; gi < f->kernels.len; gi++)
        if (gemm_ok(f, &vs, f->kernels.data[gi]))
            try_gemm(f, &vs, gi, group, out, stamp, &gen);
}
