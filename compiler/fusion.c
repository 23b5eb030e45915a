/* fusion.c: cut an entry's graph into kernels.
 *
 * The policy is tinygrad's "inline unless expensive", kept simple enough to
 * predict from the graph alone. A node is *materialized* (gets a buffer and
 * a kernel of its own, the kernel's root) when it is:
 *   - an INPUT (its buffer is the argument; no kernel computes it);
 *   - a REDUCE (SUM/RMAX/RMIN/RLSE): its ELEM/VIEW producers are fused in as the
 *     prologue, and ELEM consumers read its result through views;
 *   - OPAQUE (MATMUL, CONV2D*, GATHER, SCATTER_ADD, FOLD): a hand-written
 *     lowering (lower_opaque.c, lower_conv.c) that reads materialized
 *     inputs. GEMM operands
 *     may be strided views of a buffer (MATMUL: any batch strides, and the
 *     last two axes row- or column-major, which become trans flags);
 *     operands read by loop nests (the im2col input, GATHER, SCATTER_ADD,
 *     FOLD) may be any view of a buffer, or CONST/IOTA/RAND;
 *   - the value of a written argument (an output or new state);
 *   - an ELEM node evaluated by more than one kernel (through any views),
 *     unless recomputing it in each costs no extra memory traffic
 *     (recomputation, below), or evaluated twice in one kernel at different
 *     indices (through different views): recomputing it would duplicate
 *     work;
 *   - the input of a RESHAPE whose index map needs div/mod (lower_view.c).
 * An output that is an identity view of a materialized value (the RESHAPE
 * that g_reduce(keep=false) or g_matmul put on top) is not copied: the value
 * is computed straight into the output's buffer. Elementwise kernels of one
 * shape that write arguments and read each other or a common tensor are
 * fused into one loop with several stores (sibling fusion, below), and
 * independent reductions of one shape over the same axes that read a common
 * tensor into one kernel with several accumulators (sibling reductions).
 * Everything else is inlined into the one kernel that reads it: ELEM and
 * VIEW nodes with a single consumer kernel, and always CONST, IOTA, RAND and
 * views of buffers (recomputing those is free). An ELEM node read twice in one
 * kernel at the same index is computed once there (a LET, lower.c).
 *
 * Why inline through broadcasts too (an EXPAND of exp(v) recomputes exp per
 * element): the loop order puts the contiguous axis innermost and an
 * expanded value is usually invariant along it, so LLVM hoists it out of the
 * inner loop; materializing it would cost a kernel and a round trip through
 * memory instead.
 *
 * The decisions depend on each other (materializing a node changes which
 * kernels read its inputs), so they are iterated to a fixpoint: each round
 * simulates every kernel's index maps (which also marks the operands opaque
 * ops need in buffers), then recomputes the consumer kernels of every node
 * and marks the shared ones that are not recomputed. Nodes are only ever
 * added, so the loop ends.
 *
 * `-d fusion` prints one line per kernel: its roots, the nodes inlined into
 * it, the buffers it reads and the buffers it writes.
 */
#include <string.h>

#include "lower_int.h"

enum { KS_NONE = -1, KS_MULTI = -2 };

bool fusion_is_cheap_leaf(const Node *n) {
    return n->op == OP_CONST || n->op == OP_IOTA || n->op == OP_RAND_UNIFORM || n->op == OP_RAND_NORMAL;
}

static OpKind kind_of(const Node *n) { return op_info[n->op].kind; }

/* ----------------------------------------------------------------------------
 * kernel simulation: walk a kernel's inlined tree the way lower.c will,
 * composing every leaf's index map, and mark what cannot be inlined. */

typedef struct Sim {
    Fusion *f;
    VStacks vs;
    const Node *root;
    int *seen_stack, *seen_gen;   /* by node id: the stack an ELEM node was evaluated under */
    int gen;
    bool changed;
    FKernel *collect;             /* final round: record nodes and reads here */
} Sim;

static void mark(Sim *s, const Node *n) {
    if (!s->f->mat[n->id]) {
        s->f->mat[n->id] = 1;
        s->changed = true;
    }
}

static void add_read(FKernel *k, Node *n, bool identity) {
    for (int i = 0; i < k->reads.len; i++)
        if (k->reads.data[i].n == n) {
            k->reads.data[i].identity &= identity;
            return;
        }
    FRead r = {n, identity};
    vec_push(&k->reads, r);
}

static void add_node(FKernel *k, Node *n) {
    for (int i = 0; i < k->nodes.len; i++)
        if (k->nodes.data[i] == n)
            return;
    vec_push(&k->nodes, n);
}

/* A leaf: a materialized node read from its buffer, or a cheap leaf. */
static bool sim_leaf(Sim *s, Node *n, int stack, IdxMap *m) {
    LeafForm form;
    const Node *failed = NULL;
    bool buffer = n != s->root && s->f->mat[n->id];
    if (!leaf_compose(&s->vs, stack, n, buffer, m, &form, &failed)) {
        /* a reshape (or a pad past MAX_CONS constraints) that does not
         * compose: give its input a buffer, whose contiguous map always
         * composes with one view */
        mark(s, failed->in[0]);
        return false;
    }
    if (s->collect && buffer)
        add_read(s->collect, n, s->collect->kind == KK_ELEM && map_is_identity(m));
    return true;
}

static void sim_node(Sim *s, Node *n, int stack) {
    Fusion *f = s->f;
    IdxMap m;
    if ((n != s->root && f->mat[n->id]) || fusion_is_cheap_leaf(n)) {
        sim_leaf(s, n, stack, &m);
        return;
    }
    switch (kind_of(n)) {
    case OK_VIEW:
        if (s->collect)
            add_node(s->collect, n);
        sim_node(s, n->in[0], vstack_push(&s->vs, stack, n));
        return;
    case OK_ELEM:
        if (s->seen_gen[n->id] == s->gen) {
            if (s->seen_stack[n->id] != stack)
                mark(s, n);
            return;
        }
        s->seen_gen[n->id] = s->gen;
        s->seen_stack[n->id] = stack;
        if (s->collect)
            add_node(s->collect, n);
        for (int i = 0; i < n->nin; i++)
            sim_node(s, n->in[i], stack);
        return;
    default:
        internal_error(__FILE__, __LINE__, "fusion: %s %%%d reached unmaterialized", op_info[n->op].name, n->id);
    }
}

/* An operand of an opaque op read by a loop nest: views down to a buffer or
 * a cheap leaf. An ELEM node on the way gets a buffer. */
static bool sim_operand(Sim *s, Node *n, int stack, IdxMap *m, bool *is_buffer) {
    Fusion *f = s->f;
    if (f->mat[n->id] || fusion_is_cheap_leaf(n)) {
        *is_buffer = f->mat[n->id];
        return sim_leaf(s, n, stack, m);
    }
    if (kind_of(n) == OK_VIEW) {
        if (s->collect)
            add_node(s->collect, n);
        return sim_operand(s, n->in[0], vstack_push(&s->vs, stack, n), m, is_buffer);
    }
    mark(s, n);
    return false;
}

typedef enum Access { ACC_LOOP, ACC_MATRIX, ACC_CONTIG, ACC_IMAGES } Access;

static Access operand_access(const Node *op, int i) {
    switch (op->op) {
    case OP_MATMUL: return ACC_MATRIX;
    case OP_CONV2D: return i == 0 ? ACC_LOOP : ACC_CONTIG;
    case OP_CONV2D_BWD_INPUT: return i == 0 ? ACC_IMAGES : ACC_CONTIG;
    case OP_CONV2D_BWD_WEIGHT: return i == 0 ? ACC_LOOP : ACC_IMAGES;
    default: return ACC_LOOP;
    }
}

static void sim_opaque(Sim *s, Node *n) {
    for (int i = 0; i < n->nin; i++) {
        Access acc = operand_access(n, i);
        IdxMap m;
        bool buffer = false;
        if (!sim_operand(s, n->in[i], 0, &m, &buffer) || acc == ACC_LOOP)
            continue;
        bool trans;
        int64_t ld;
        bool ok = buffer && (acc == ACC_MATRIX   ? map_matrix(&m, &trans, &ld)
                             : acc == ACC_CONTIG ? map_contig_from(&m, 0)
                                                 : map_contig_from(&m, 1));
        if (!ok)
            mark(s, n->in[i]);   /* a contiguous copy of exactly this operand */
    }
}

static void sim_kernel(Sim *s, Node *root) {
    s->root = root;
    s->gen++;
    if (s->collect)
        add_node(s->collect, root);
    switch (kind_of(root)) {
    case OK_REDUCE: sim_node(s, root->in[0], 0); break;
    case OK_OPAQUE: sim_opaque(s, root); break;
    default: sim_node(s, root, 0); break;
    }
}

/* ----------------------------------------------------------------------------
 * the fixpoint */

static bool is_output(const Fusion *f, const Node *n) { return f->output[n->id]; }

static void mark_live(Fusion *f) {
    VEC(Node *) stack = {0};
    for (int a = 0; a < f->e->args.len; a++) {
        Node *n = f->e->args.data[a].out;
        if (n && !f->live[n->id]) {
            f->live[n->id] = 1;
            vec_push(&stack, n);
        }
    }
    while (stack.len) {
        Node *n = stack.data[--stack.len];
        for (int i = 0; i < n->nin; i++)
            if (!f->live[n->in[i]->id]) {
                f->live[n->in[i]->id] = 1;
                vec_push(&stack, n->in[i]);
            }
    }
}

/* ----------------------------------------------------------------------------
 * recomputation
 *
 * An ELEM node read by several kernels is recomputed in each of them instead
 * of getting a buffer when that costs no extra memory traffic: its inlined
 * tree reads at most one full-size tensor (other leaves are broadcast,
 * e.g. per-channel statistics, or constants) and is a short chain of cheap
 * arithmetic. Materializing costs a write plus a read per consumer;
 * recomputing costs the one full-size read per consumer, the same reads,
 * and saves the write and the buffer (memory the plan no longer needs). It
 * is what a batch norm's backward pass needs: x - mean, x_hat, dy * gamma
 * and their products are each read by 3-5 reductions and elementwise
 * kernels, and were 17 passes over the activation per layer where 5 suffice
 * (bench/RESULTS.md).
 * A node read by exactly two kernels may read two full-size tensors: 2 x 2
 * reads against 2 reads + a write + 2 reads materialized. That is a
 * softmax's backward pass, dz = dp * p read by sum(dz) and by dz - p *
 * sum(dz): attention's [B, H, T, T] dz is no longer written (docs/design.md,
 * "Fused cross entropy and attention"). */

enum { RECOMPUTE_MAX_OPS = 12 };

static bool cheap_op(Op op) {
    switch (op) {
    case OP_EXP: case OP_LOG: case OP_TANH: case OP_SIGMOID: case OP_GELU: case OP_POW: case OP_SQRT: case OP_RSQRT:
    case OP_DIV: case OP_MOD:
        return false;
    default:
        return true;
    }
}

typedef struct Rc {
    Fusion *f;
    const int *ks;          /* consumer kernels by id at the start of the round */
    const int *ks2;         /* a second consumer kernel when ks is KS_MULTI: KS_MULTI
                             * for three or more, KS_NONE when unknown */
    signed char *verdict;   /* by id, this round: 0 unknown, 1 recomputed, -1 gets a buffer */
} Rc;

/* One walk over the tree a node would inline. */
typedef struct RcWalk {
    const Node *root;
    int64_t numel;
    int ops, nseen;
    const Node *big[2];     /* the full-size leaves */
    int maxbig;             /* how many may be read: 1, or 2 for two consumers */
    const Node *seen[4 * RECOMPUTE_MAX_OPS];
    bool ok;
} RcWalk;

static bool recompute_ok(Rc *r, const Node *n);

/* n is a leaf of the walk: it has a buffer, or will get one this round (a
 * shared ELEM node that is not recomputed itself) */
static bool rc_leaf(Rc *r, const Node *n) {
    if (r->f->mat[n->id] || n->op == OP_INPUT)
        return true;
    return kind_of(n) == OK_ELEM && r->ks[n->id] == KS_MULTI && !recompute_ok(r, n);
}

static void rc_walk(Rc *r, RcWalk *w, const Node *n) {
    if (!w->ok)
        return;
    for (int i = 0; i < w->nseen; i++)
        if (w->seen[i] == n)
            return;
    if (w->nseen == (int)(sizeof w->seen / sizeof *w->seen)) {
        w->ok = false;
        return;
    }
    w->seen[w->nseen++] = n;
    if (n != w->root && rc_leaf(r, n)) {
        if (shape_numel(n->shape) >= w->numel && w->big[0] != n && w->big[1] != n) {
            if (w->big[w->maxbig - 1])
                w->ok = false;
            else
                w->big[w->big[0] ? 1 : 0] = n;
        }
        return;
    }
    /* a smaller tree reached through a broadcast (per-channel statistics)
     * costs no traffic; whether it gets a buffer is decided on its own */
    if (shape_numel(n->shape) < w->numel)
        return;
    if (fusion_is_cheap_leaf(n)) {
        w->ok = n->op == OP_CONST || n->op == OP_IOTA;   /* Philox per element is not cheap */
        return;
    }
    switch (kind_of(n)) {
    case OK_VIEW: rc_walk(r, w, n->in[0]); return;
    case OK_ELEM:
        if (!cheap_op(n->op) || ++w->ops > RECOMPUTE_MAX_OPS) {
            w->ok = false;
            return;
        }
        for (int i = 0; i < n->nin; i++)
            rc_walk(r, w, n->in[i]);
        return;
    default: w->ok = false; return;
    }
}

static bool recompute_ok(Rc *r, const Node *n) {
    if (r->verdict[n->id])
        return r->verdict[n->id] > 0;
    r->verdict[n->id] = -1;   /* a cycle cannot happen in a DAG; this only guards */
    bool two = r->ks[n->id] == KS_MULTI && r->ks2 && r->ks2[n->id] >= 0;
    RcWalk w = {.root = n, .numel = shape_numel(n->shape), .ok = true, .maxbig = two ? 2 : 1};
    rc_walk(r, &w, n);
    r->verdict[n->id] = w.ok ? 1 : -1;
    return w.ok;
}

/* what n's inputs see: n's own kernel if it has one, else the kernels n is
 * evaluated in */
static void push_consumer(const Fusion *f, int *ks, const Node *n) {
    int mine = f->mat[n->id] ? n->id : ks[n->id];
    for (int k = 0; k < n->nin; k++) {
        int *t = &ks[n->in[k]->id];
        if (*t == KS_NONE)
            *t = mine;
        else if (*t != mine)
            *t = KS_MULTI;
    }
}

/* As push_consumer, also keeping a second consumer kernel in ks2 (KS_MULTI
 * once there are three): which shared nodes have exactly two. */
static void push_consumer2(const Fusion *f, int *ks, int *ks2, const Node *n) {
    int mine = f->mat[n->id] ? n->id : ks[n->id];
    int mine2 = f->mat[n->id] ? KS_NONE : ks2[n->id];
    for (int k = 0; k < n->nin; k++) {
        int id = n->in[k]->id;
        int cand[2] = {mine, mine2};
        for (int c = 0; c < 2; c++) {
            int m = cand[c];
            if (m == KS_NONE || m == ks[id] || m == ks2[id])
                continue;
            if (ks[id] == KS_NONE)
                ks[id] = m;
            else if (ks2[id] == KS_NONE && m != KS_MULTI && ks[id] != KS_MULTI)
                ks2[id] = m;
            else
                ks[id] = ks2[id] = KS_MULTI;
        }
    }
}

/* Consumer kernels of every unmaterialized node; an ELEM node with more
 * than one gets a buffer unless it is recomputed (above). One pass in
 * reverse topological order, so that a node's consumers have all decided
 * before it does. Whether a shared producer will be recomputed is not known
 * yet when a consumer asks (recompute_ok walks down), so that uses the
 * consumer sets of the round's start (pre). */
static bool split_shared(Fusion *f, int *ks, int *pre, int *pre2, Rc *rc) {
    const Graph *g = f->e->g;
    bool changed = false;
    for (int i = 0; i < f->nid; i++)
        pre[i] = pre2[i] = ks[i] = KS_NONE;
    for (int i = g->nodes.len - 1; i >= 0; i--)
        if (f->live[g->nodes.data[i]->id])
            push_consumer2(f, pre, pre2, g->nodes.data[i]);
    /* two distinct kernels are pre/pre2; push_consumer's KS_MULTI marks them */
    for (int i = 0; i < f->nid; i++)
        if (pre2[i] != KS_NONE)
            pre[i] = KS_MULTI;
    memset(rc->verdict, 0, (size_t)f->nid + 1);
    for (int i = g->nodes.len - 1; i >= 0; i--) {
        Node *n = g->nodes.data[i];
        if (!f->live[n->id])
            continue;
        if (!f->mat[n->id] && kind_of(n) == OK_ELEM && ks[n->id] == KS_MULTI && !recompute_ok(rc, n)) {
            f->mat[n->id] = 1;
            changed = true;
        }
        push_consumer(f, ks, n);
    }
    return changed;
}

/* Outputs that are identity views of a materialized, not otherwise written
 * value become aliases of it (see the file comment). */
static void alias_outputs(Fusion *f, VStacks *vs) {
    const Entry *e = f->e;
    for (int a = 0; a < e->args.len; a++) {
        Node *n = e->args.data[a].out;
        if (!n || kind_of(n) != OK_VIEW || !f->mat[n->id])
            continue;
        Node *b = n;
        int stack = 0;
        do {
            stack = vstack_push(vs, stack, b);
            b = b->in[0];
        } while (!f->mat[b->id] && kind_of(b) == OK_VIEW);
        if (!f->mat[b->id] || b->op == OP_INPUT || is_output(f, b) || f->alias[b->id] ||
            shape_numel(b->shape) != shape_numel(n->shape))
            continue;
        IdxMap m = map_contig(b->shape);
        if (!vstack_compose(vs, stack, &m, NULL) || !map_is_identity(&m))
            continue;
        f->mat[n->id] = 0;
        f->alias[b->id] = n;
    }
}

static FKernel *new_kernel(Fusion *f, KKind kind, Node *root) {
    FKernel *k = xalloc(sizeof *k);
    k->kind = kind;
    vec_push(&k->roots, root);
    vec_push(&k->dsts, (FBuf *)NULL);
    k->index = f->kernels.len;
    vec_push(&f->kernels, k);
    return k;
}

static FBuf *new_fbuf(int arg, const Node *node) {
    FBuf *b = xalloc(sizeof *b);
    b->arg = arg;
    b->node = node;
    b->lbuf = -1;
    return b;
}

static void add_dep(FKernel *k, int dep) {
    if (dep < 0 || dep == k->index)
        return;
    for (int i = 0; i < k->deps.len; i++)
        if (k->deps.data[i] == dep)
            return;
    vec_push(&k->deps, dep);
}

/* ----------------------------------------------------------------------------
 * sibling fusion
 *
 * Elementwise kernels of one shape that write arguments (optimizer updates:
 * v <- mu*v + g next to p <- p - lr*v, or Adam's m, v and p) become one loop
 * with several stores when one reads the other's result at the same element
 * or both read a common tensor of their size, and either each reads every
 * tensor of its size at the element it writes (so the fused loop is as flat
 * as each loop alone) or one reads the old value of an argument the other
 * writes (fused, that costs no temporary and copy). The common inputs are read
 * once, and an update reading another's old value no longer needs a
 * temporary (memplan.c): all loads of an iteration happen before its stores.
 * Elementwise kernels with workspace results fuse only as a chain: one that
 * reads another's result where it writes (chain_pair).
 */

/* Merging marks kernels dead and forwards them to their new owner; the list
 * is compacted once at the end. */
typedef struct Sib {
    Fusion *f;
    int *fwd;          /* kernel index -> index of the kernel that absorbed it */
    int *stamp, gen;
    VEC(int) *readers; /* by node id: update kernels reading it at full size */
} Sib;

static int resolve(const Sib *s, int k) {
    while (s->fwd[k] != k)
        k = s->fwd[k];
    return k;
}

static bool reaches(Sib *s, int from, int to) {
    VEC(int) stack = {0};
    s->gen++;
    vec_push(&stack, from);
    while (stack.len) {
        int k = resolve(s, stack.data[--stack.len]);
        if (k == to)
            return true;
        if (s->stamp[k] == s->gen)
            continue;
        s->stamp[k] = s->gen;
        const FKernel *x = s->f->kernels.data[k];
        for (int i = 0; i < x->deps.len; i++)
            vec_push(&stack, x->deps.data[i]);
    }
    return false;
}

static bool is_update(const FKernel *k) {
    if (k->kind != KK_ELEM)
        return false;
    for (int i = 0; i < k->dsts.len; i++)
        if (k->dsts.data[i]->arg < 0)
            return false;
    return true;
}

static bool is_root_of(const FKernel *k, const Node *n) {
    for (int i = 0; i < k->roots.len; i++)
        if (k->roots.data[i] == n)
            return true;
    return false;
}

/* An elementwise kernel with a workspace result may absorb one that reads
 * that result where it writes (a ResNet block's sum and its ReLU: the sum
 * is kept for the backward pass, the ReLU feeds the next convolution), so
 * the result is not read back from memory. */
static bool chain_pair(const FKernel *a, const FKernel *b) {
    if (a->kind != KK_ELEM || b->kind != KK_ELEM || is_update(a) || is_update(b))
        return false;
    for (int i = 0; i < b->reads.len; i++)
        if (is_root_of(a, b->reads.data[i].n))
            return true;
    return false;
}

/* Every tensor of the kernel's size is read at the element written: then
 * the fused loop flattens exactly as each one alone would. */
static bool reads_in_place(const FKernel *k, int64_t numel) {
    for (int i = 0; i < k->reads.len; i++)
        if (shape_numel(k->reads.data[i].n->shape) == numel && !k->reads.data[i].identity)
            return false;
    return true;
}

/* x reads the old value of an argument y writes */
static bool reads_old_of(const FKernel *x, const FKernel *y) {
    for (int i = 0; i < x->reads.len; i++) {
        const Node *n = x->reads.data[i].n;
        for (int j = 0; n->op == OP_INPUT && j < y->dsts.len; j++)
            if (y->dsts.data[j]->arg == n->attr.arg)
                return true;
    }
    return false;
}

static bool siblings(Sib *s, int ai, int bi) {
    const FKernel *a = s->f->kernels.data[ai], *b = s->f->kernels.data[bi];
    bool chain = chain_pair(a, b);
    if ((!chain && (!is_update(a) || !is_update(b))) || !shape_eq(KROOT(a)->shape, KROOT(b)->shape))
        return false;
    int64_t numel = shape_numel(KROOT(a)->shape);
    bool hazard = reads_old_of(a, b) || reads_old_of(b, a);
    if (!hazard && (!reads_in_place(a, numel) || !reads_in_place(b, numel)))
        return false;
    bool direct = false, shared = false;
    for (int i = 0; i < b->reads.len; i++) {
        const FRead *rb = &b->reads.data[i];
        if (is_root_of(a, rb->n)) {
            if (!rb->identity)
                return false;
            direct = true;
            continue;
        }
        for (int j = 0; j < a->reads.len && !shared; j++)
            shared = a->reads.data[j].n == rb->n && shape_numel(rb->n->shape) == numel;
    }
    if (!direct && (!shared || chain))
        return false;
    /* no path between them other than b's direct reads of a */
    for (int i = 0; i < b->deps.len; i++) {
        int d = resolve(s, b->deps.data[i]);
        if (d != ai && reaches(s, d, ai))
            return false;
    }
    return !reaches(s, ai, bi);
}

static void absorb(Sib *s, int ai, int bi) {
    FKernel *a = s->f->kernels.data[ai], *b = s->f->kernels.data[bi];
    for (int i = 0; i < b->roots.len; i++) {
        vec_push(&a->roots, b->roots.data[i]);
        vec_push(&a->dsts, b->dsts.data[i]);
    }
    for (int i = 0; i < b->nodes.len; i++)
        add_node(a, b->nodes.data[i]);
    for (int i = 0; i < b->reads.len; i++)
        add_read(a, b->reads.data[i].n, b->reads.data[i].identity);
    for (int i = 0; i < b->deps.len; i++)
        vec_push(&a->deps, b->deps.data[i]);
    s->fwd[bi] = ai;
}

static Sib sib_new(Fusion *f) {
    int n = f->kernels.len;
    Sib s = {.f = f};
    s.fwd = xalloc(sizeof(int) * ((size_t)n + 1));
    s.stamp = xalloc(sizeof(int) * ((size_t)n + 1));
    s.readers = xalloc(sizeof(*s.readers) * ((size_t)f->nid + 1));
    for (int i = 0; i < n; i++)
        s.fwd[i] = i;
    return s;
}

/* Drops every kernel i with owner[i] != i (it was merged into kernel
 * owner[i], itself kept) and renumbers the dependencies: a dependency on a
 * dropped kernel becomes one on its owner, none on the kernel itself, each
 * once. */
void fusion_compact(Fusion *f, const int *owner) {
    int n = f->kernels.len;
    int *pos = xalloc(sizeof(int) * ((size_t)n + 1));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (owner[i] == i) {
            pos[i] = m;
            f->kernels.data[m++] = f->kernels.data[i];
        }
    f->kernels.len = m;
    for (int i = 0; i < m; i++) {
        FKernel *k = f->kernels.data[i];
        int nd = 0;
        for (int d = 0; d < k->deps.len; d++) {
            int x = pos[owner[k->deps.data[d]]];
            bool dup = x == i;
            for (int e = 0; e < nd && !dup; e++)
                dup = k->deps.data[e] == x;
            if (!dup)
                k->deps.data[nd++] = x;
        }
        k->deps.len = nd;
    }
    fusion_producers(f);
}

/* Drop the absorbed kernels and renumber the dependencies. */
static void sib_compact(Fusion *f, Sib *s) {
    int n = f->kernels.len;
    int *owner = xalloc(sizeof(int) * ((size_t)n + 1));
    for (int i = 0; i < n; i++)
        owner[i] = resolve(s, i);
    fusion_compact(f, owner);
}

/* Merges each kernel b that `rule` admits into an earlier kernel it pairs
 * with: among the producers of what b reads (when rule->producers) and the
 * kernels that read the same tensors at the size b works at. */
typedef struct SibRule {
    bool (*admits)(const FKernel *b);
    int64_t (*numel)(const FKernel *b);        /* the size b works at */
    bool producers;                            /* also try the producers of b's reads */
    bool (*pair)(Sib *s, int a, int b);
} SibRule;

static void fuse_by(Fusion *f, const SibRule *rule) {
    int n = f->kernels.len;
    Sib s = sib_new(f);
    int *tried = xalloc(sizeof(int) * ((size_t)n + 1));
    for (int bi = 0; bi < n; bi++) {
        FKernel *b = f->kernels.data[bi];
        if (!rule->admits(b))
            continue;
        int64_t numel = rule->numel(b);
        int merged = -1;
        for (int i = 0; i < b->reads.len && merged < 0; i++) {
            const Node *r = b->reads.data[i].n;
            int p = rule->producers ? f->producer[r->id] : -1;
            if (p >= 0 && p != bi) {
                p = resolve(&s, p);
                if (tried[p] != bi + 1) {
                    tried[p] = bi + 1;
                    if (rule->pair(&s, p, bi))
                        merged = p;
                }
            }
            if (!rule->producers && shape_numel(r->shape) != numel)
                continue;
            for (int j = 0; j < s.readers[r->id].len && merged < 0; j++) {
                int a = resolve(&s, s.readers[r->id].data[j]);
                if (tried[a] == bi + 1)
                    continue;
                tried[a] = bi + 1;
                if (rule->pair(&s, a, bi))
                    merged = a;
            }
        }
        if (merged >= 0)
            absorb(&s, merged, bi);
        for (int i = 0; i < b->reads.len; i++)
            if (shape_numel(b->reads.data[i].n->shape) == numel)
                vec_push(&s.readers[b->reads.data[i].n->id], bi);
    }
    sib_compact(f, &s);
}

static bool elem_admitted(const FKernel *b) { return b->kind == KK_ELEM; }
static int64_t out_numel(const FKernel *b) { return shape_numel(KROOT(b)->shape); }

/* elementwise kernels: with the producers of their inputs, and with the
 * update kernels that read the same tensors at full size */
static void fuse_siblings(Fusion *f) {
    const SibRule rule = {elem_admitted, out_numel, true, siblings};
    fuse_by(f, &rule);
}

/* ----------------------------------------------------------------------------
 * sibling reductions
 *
 * Reductions over the same axes of inputs of one shape that read a common
 * full-size tensor and do not depend on each other become one kernel with an
 * accumulator each (lower.c), so the common tensor is read once: a batch
 * norm's backward pass sums dy, dy * x_hat, dy * (x - mean) and dy * rstd
 * per channel, four passes over dy (and x) that become one. Full reductions
 * (no kept dim) are left alone: they split across threads one at a time. */

static bool keeps_a_dim(const Node *r) {
    const Shape *s = &r->in[0]->shape;
    for (int d = 0; d < s->rank; d++)
        if (!(r->attr.axes >> d & 1) && s->dim[d] > 1)
            return true;
    return false;
}

static bool reduce_siblings(Sib *s, int ai, int bi) {
    const FKernel *a = s->f->kernels.data[ai], *b = s->f->kernels.data[bi];
    const Node *ra = KROOT(a), *rb = KROOT(b);
    if (a->kind != KK_REDUCE || !shape_eq(ra->in[0]->shape, rb->in[0]->shape) || ra->attr.axes != rb->attr.axes)
        return false;
    /* a reads before b in topological order: only b can depend on a */
    return !reaches(s, bi, ai);
}

static bool reduce_admitted(const FKernel *b) { return b->kind == KK_REDUCE && keeps_a_dim(KROOT(b)); }
static int64_t in_numel(const FKernel *b) { return shape_numel(KROOT(b)->in[0]->shape); }

static void fuse_reductions(Fusion *f) {
    const SibRule rule = {reduce_admitted, in_numel, false, reduce_siblings};
    fuse_by(f, &rule);
}

void fusion_producers(Fusion *f) {
    for (int i = 0; i < f->nid; i++)
        f->producer[i] = -1;
    for (int i = 0; i < f->kernels.len; i++) {
        FKernel *k = f->kernels.data[i];
        k->index = i;
        for (int r = 0; k->kind != KK_COPY && r < k->roots.len; r++)
            f->producer[k->roots.data[r]->id] = i;
    }
    for (int i = 0; i < f->nid; i++)
        if (f->alias[i])
            f->producer[f->alias[i]->id] = f->producer[i];
}

Fusion *fusion_run(const Entry *e) {
    const Graph *g = e->g;
    Fusion *f = xalloc(sizeof *f);
    f->e = e;
    f->nid = g->next_id;
    for (int i = 0; i < g->nodes.len; i++)
        if (g->nodes.data[i]->id >= f->nid)
            f->nid = g->nodes.data[i]->id + 1;
    size_t n = (size_t)f->nid + 1;
    f->node = xalloc(sizeof(Node *) * n);
    f->live = xalloc(n);
    f->mat = xalloc(n);
    f->output = xalloc(n);
    for (int a = 0; a < e->args.len; a++)
        if (e->args.data[a].out)
            f->output[e->args.data[a].out->id] = 1;
    f->producer = xalloc(sizeof(int) * n);
    f->home = xalloc(sizeof(FBuf *) * n);
    f->alias = xalloc(sizeof(Node *) * n);
    f->argbuf = xalloc(sizeof(FBuf *) * ((size_t)e->args.len + 1));
    for (int i = 0; i < g->nodes.len; i++)
        f->node[g->nodes.data[i]->id] = g->nodes.data[i];
    for (int i = 0; i < f->nid; i++)
        f->producer[i] = -1;
    mark_live(f);

    for (int i = 0; i < g->nodes.len; i++) {
        Node *x = g->nodes.data[i];
        if (!f->live[x->id])
            continue;
        OpKind k = kind_of(x);
        if (x->op == OP_INPUT || k == OK_REDUCE || k == OK_OPAQUE || is_output(f, x))
            f->mat[x->id] = 1;
    }

    Sim s = {.f = f};
    vstacks_init(&s.vs);
    s.seen_stack = xalloc(sizeof(int) * n);
    s.seen_gen = xalloc(sizeof(int) * n);
    int *ks = xalloc(sizeof(int) * n), *pre = xalloc(sizeof(int) * n), *pre2 = xalloc(sizeof(int) * n);
    Rc rc = {.f = f, .ks = pre, .ks2 = pre2, .verdict = xalloc(n)};
    /* the kernels first: the operands an opaque op needs in buffers are
     * known before sharing is decided (a shared node feeding one is not
     * recomputed but read) */
    for (;;) {
        s.changed = false;
        for (int i = 0; i < g->nodes.len; i++) {
            Node *x = g->nodes.data[i];
            if (f->live[x->id] && f->mat[x->id] && x->op != OP_INPUT)
                sim_kernel(&s, x);
        }
        bool changed = split_shared(f, ks, pre, pre2, &rc);
        if (!changed && !s.changed)
            break;
    }
    alias_outputs(f, &s.vs);

    /* kernels in topological order, with what each one reads */
    for (int i = 0; i < g->nodes.len; i++) {
        Node *x = g->nodes.data[i];
        if (!f->live[x->id] || !f->mat[x->id] || x->op == OP_INPUT)
            continue;
        OpKind k = kind_of(x);
        FKernel *fk = new_kernel(f, k == OK_REDUCE ? KK_REDUCE : k == OK_OPAQUE ? KK_OPAQUE : KK_ELEM, x);
        f->producer[x->id] = fk->index;
        s.collect = fk;
        s.changed = false;
        sim_kernel(&s, x);
        ASSERT(!s.changed);
        for (int r = 0; r < fk->reads.len; r++)
            add_dep(fk, f->producer[fk->reads.data[r].n->id]);
    }
    s.collect = NULL;

    /* homes: every argument has one buffer; a written value lives in the
     * first argument that receives it, further receivers get copies */
    for (int a = 0; a < e->args.len; a++) {
        const EntryArg *ea = &e->args.data[a];
        f->argbuf[a] = new_fbuf(a, ea->out ? ea->out : ea->in);
    }
    for (int i = 0; i < g->nodes.len; i++) {
        Node *x = g->nodes.data[i];
        if (x->op == OP_INPUT && f->live[x->id]) {
            ASSERT(x->attr.arg >= 0 && x->attr.arg < e->args.len);
            f->home[x->id] = f->argbuf[x->attr.arg];
        }
    }
    fusion_producers(f);
    for (int a = 0; a < e->args.len; a++) {
        Node *x = e->args.data[a].out;
        if (!x || (x->op == OP_INPUT && x->attr.arg == a))
            continue;   /* not written, or written with its own old value */
        if (!f->mat[x->id] && !f->home[x->id]) {
            /* an alias: its base is computed into this argument */
            Node *b = x;
            while (!f->mat[b->id])
                b = b->in[0];
            f->home[b->id] = f->home[x->id] = f->argbuf[a];
            KDST(f->kernels.data[f->producer[b->id]]) = f->argbuf[a];
            continue;
        }
        if (!f->home[x->id]) {
            f->home[x->id] = f->argbuf[a];
            KDST(f->kernels.data[f->producer[x->id]]) = f->argbuf[a];
            continue;
        }
        /* a second receiver: an elementwise producer stores twice, anything
         * else is copied */
        int pk = f->mat[x->id] ? f->producer[x->id] : -1;
        if (pk >= 0 && f->kernels.data[pk]->kind == KK_ELEM) {
            vec_push(&f->kernels.data[pk]->roots, x);
            vec_push(&f->kernels.data[pk]->dsts, f->argbuf[a]);
            continue;
        }
        FKernel *c = new_kernel(f, KK_COPY, x);
        KDST(c) = f->argbuf[a];
        add_node(c, x);
        add_read(c, x, true);
        add_dep(c, f->producer[x->id]);
    }
    for (int i = 0; i < f->kernels.len; i++) {
        FKernel *k = f->kernels.data[i];
        if (k->kind != KK_COPY && !KDST(k)) {
            KDST(k) = new_fbuf(-1, KROOT(k));
            f->home[KROOT(k)->id] = KDST(k);
        }
    }
    fuse_siblings(f);
    fuse_reductions(f);
    return f;
}

/* ----------------------------------------------------------------------------
 * -d fusion */

static const char *kind_name(KKind k) {
    switch (k) {
    case KK_ELEM: return "elem";
    case KK_REDUCE: return "reduce";
    case KK_OPAQUE: return "opaque";
    case KK_COPY: return "copy";
    }
    return "?";
}

static void dump_buf(const Fusion *f, const FBuf *b, FILE *out) {
    if (b->arg >= 0)
        fprintf(out, "%s", f->e->args.data[b->arg].name ? f->e->args.data[b->arg].name : "?");
    else
        fprintf(out, "t%d", b->node->id);
}

void fusion_dump(const Fusion *f, FILE *out) {
    fprintf(out, "fusion %s: %d kernels\n", f->e->name ? f->e->name : "?", f->kernels.len);
    for (int i = 0; i < f->kernels.len; i++) {
        const FKernel *k = f->kernels.data[i];
        fprintf(out, "  k%-3d %-6s", i, kind_name(k->kind));
        for (int j = 0; j < k->roots.len; j++)
            fprintf(out, "%s%%%d %s", j ? " + " : " ", k->roots.data[j]->id, op_info[k->roots.data[j]->op].name);
        if (k->nodes.len > k->roots.len) {
            fprintf(out, " <-");
            for (int j = 1; j < k->nodes.len; j++) {
                bool is_root = false;
                for (int r = 0; r < k->roots.len; r++)
                    is_root |= k->roots.data[r] == k->nodes.data[j];
                if (is_root)
                    continue;
                fprintf(out, " %%%d %s", k->nodes.data[j]->id, op_info[k->nodes.data[j]->op].name);
            }
        }
        fprintf(out, "  reads");
        if (k->kind == KK_COPY) {
            fprintf(out, " ");
            dump_buf(f, k->src ? k->src : f->home[KROOT(k)->id], out);
        }
        for (int j = 0; k->kind != KK_COPY && j < k->reads.len; j++) {
            fprintf(out, " ");
            dump_buf(f, f->home[k->reads.data[j].n->id], out);
        }
        fprintf(out, "  ->");
        for (int j = 0; j < k->dsts.len; j++) {
            fprintf(out, " ");
            dump_buf(f, k->dsts.data[j], out);
        }
        fprintf(out, "\n");
    }
}
