/* memplan.c: kernel order, where values live, and workspace offsets.
 *
 * Rules:
 *  - An entry's written arguments receive their values directly: the kernel
 *    computing the value stores into the argument's buffer (fusion.c).
 *  - PARAM/BUFFER/STATE arguments are updated in place. The kernel W that
 *    writes argument a may write a's buffer only if no kernel after W reads
 *    a's old value, and W itself reads the old value only at the element it
 *    writes (an elementwise kernel reading it through the identity map).
 *    Otherwise W writes a workspace temporary and a copy kernel moves it into
 *    a right after the last reader of the old value. Before checking, the
 *    order is chosen to make that rare: a writer of a is delayed while some
 *    reader of a's old value that does not depend on it is still waiting.
 *  - Every other materialized value gets a workspace buffer, 64-byte
 *    aligned, live from the first kernel that uses it to the last (taken
 *    from the loop IR itself, so scratch buffers of opaque kernels are
 *    planned the same way). Offsets come from a sweep over the kernel order
 *    with a best-fit free list (ggml-alloc's dynamic allocator, tinygrad's
 *    memory.py intervals): buffers whose last use has passed are freed and
 *    coalesced before the kernel's new buffers are placed, so two buffers
 *    share bytes only if no kernel uses both.
 * `-d memory` prints each workspace buffer's [first,last] kernel, size and
 * offset, and the workspace total against the sum without reuse.
 */
#include <stdlib.h>
#include <string.h>

#include "lower_int.h"

/* ----------------------------------------------------------------------------
 * order */

/* Who writes each argument and who reads its old value, from one pass over
 * the kernels (indices into Fusion.kernels at the time of the call). */
typedef struct ArgUse {
    int writer, root;      /* kernel and root index storing the new value; -1 */
    VEC(int) readers;      /* kernels reading the old value (INPUT), writer excluded */
    bool self, self_ident; /* the writer reads the old value; only in place */
} ArgUse;

static ArgUse *arg_uses(const Fusion *f) {
    int na = f->e->args.len;
    ArgUse *u = xalloc(sizeof(ArgUse) * ((size_t)na + 1));
    for (int a = 0; a < na; a++)
        u[a].writer = -1;
    for (int i = 0; i < f->kernels.len; i++) {
        const FKernel *k = f->kernels.data[i];
        for (int j = 0; j < k->dsts.len; j++)
            if (k->dsts.data[j]->arg >= 0) {
                u[k->dsts.data[j]->arg].writer = i;
                u[k->dsts.data[j]->arg].root = j;
            }
    }
    for (int i = 0; i < f->kernels.len; i++) {
        const FKernel *k = f->kernels.data[i];
        for (int r = 0; r < k->reads.len; r++) {
            const Node *n = k->reads.data[r].n;
            if (n->op != OP_INPUT)
                continue;
            ArgUse *x = &u[n->attr.arg];
            if (x->writer == i) {
                x->self = true;
                x->self_ident = k->reads.data[r].identity;
            } else {
                vec_push(&x->readers, i);
            }
        }
    }
    return u;
}

/* Longest dependency chain below each kernel: a kernel can only depend on
 * kernels of a lower level, which prunes the searches below. Iterative:
 * chains of tens of thousands of kernels would overflow the C stack. */
static void levels(const Fusion *f, int *level) {
    VEC(int) stack = {0};
    for (int r = 0; r < f->kernels.len; r++) {
        if (level[r])
            continue;
        vec_push(&stack, r);
        while (stack.len) {
            int k = stack.data[stack.len - 1];
            const FKernel *x = f->kernels.data[k];
            int l = 1;
            bool ready = true;
            for (int i = 0; i < x->deps.len; i++) {
                int d = x->deps.data[i];
                if (!level[d]) {
                    ready = false;
                    vec_push(&stack, d);
                } else if (level[d] + 1 > l) {
                    l = level[d] + 1;
                }
            }
            if (ready) {
                level[k] = l;
                stack.len--;
            }
        }
    }
}

/* Does kernel `from` depend, transitively, on kernel `to`? (stamp/gen avoid
 * clearing the visited set per query) */
static bool depends(const Fusion *f, int from, int to, const int *level, int *stamp, int gen) {
    VEC(int) stack = {0};
    vec_push(&stack, from);
    while (stack.len) {
        int k = stack.data[--stack.len];
        if (k == to)
            return true;
        if (level[k] <= level[to] || stamp[k] == gen)
            continue;
        stamp[k] = gen;
        const FKernel *x = f->kernels.data[k];
        for (int i = 0; i < x->deps.len; i++)
            vec_push(&stack, x->deps.data[i]);
    }
    return false;
}

/* List scheduling in the original (topological) order, except that a state
 * writer waits for the independent readers of the old state. */
static void schedule(Fusion *f) {
    int n = f->kernels.len;
    const Entry *e = f->e;
    ArgUse *u = arg_uses(f);
    VEC(int) *blockers = xalloc(sizeof(*blockers) * ((size_t)n + 1));
    int *stamp = xalloc(sizeof(int) * ((size_t)n + 1));
    int *level = xalloc(sizeof(int) * ((size_t)n + 1));
    levels(f, level);
    int gen = 0;
    for (int a = 0; a < e->args.len; a++) {
        int w = u[a].writer;
        for (int i = 0; w >= 0 && i < u[a].readers.len; i++) {
            int r = u[a].readers.data[i];
            if (!depends(f, r, w, level, stamp, ++gen))
                vec_push(&blockers[w], r);
        }
    }
    bool *done = xalloc((size_t)n + 1);
    FKernel **order = xalloc(sizeof(FKernel *) * ((size_t)n + 1));
    int lo = 0;   /* every kernel before lo is done */
    for (int step = 0; step < n; step++) {
        while (lo < n && done[lo])
            lo++;
        int pick = -1, fallback = -1;
        for (int i = lo; i < n && pick < 0; i++) {
            if (done[i])
                continue;
            FKernel *k = f->kernels.data[i];
            bool ready = true;
            for (int d = 0; d < k->deps.len && ready; d++)
                ready = done[k->deps.data[d]];
            if (!ready)
                continue;
            if (fallback < 0)
                fallback = i;
            bool blocked = false;
            for (int b = 0; b < blockers[i].len && !blocked; b++)
                blocked = !done[blockers[i].data[b]];
            if (!blocked)
                pick = i;
        }
        if (pick < 0)
            pick = fallback;
        ASSERT(pick >= 0);
        done[pick] = true;
        order[step] = f->kernels.data[pick];
    }
    /* deps are rewritten to the new positions */
    int *pos = xalloc(sizeof(int) * ((size_t)n + 1));
    for (int i = 0; i < n; i++)
        pos[order[i]->index] = i;
    for (int i = 0; i < n; i++) {
        FKernel *k = order[i];
        for (int d = 0; d < k->deps.len; d++)
            k->deps.data[d] = pos[k->deps.data[d]];
        f->kernels.data[i] = k;
    }
    fusion_producers(f);
}

/* The in-place rule of the file comment for every written argument. The
 * checks are independent (a copy kernel reads a temporary, never an old
 * value), so the copies are collected and inserted at the end. */
static void fix_hazards(Fusion *f) {
    const Entry *e = f->e;
    ArgUse *u = arg_uses(f);
    int n = f->kernels.len;
    VEC(FKernel *) *after = xalloc(sizeof(*after) * ((size_t)n + 1));   /* copies to run after kernel i */
    int ncopies = 0;
    for (int a = 0; a < e->args.len; a++) {
        int wi = u[a].writer;
        if (wi < 0)
            continue;
        FKernel *w = f->kernels.data[wi];
        int last = -1;
        for (int i = 0; i < u[a].readers.len; i++)
            last = u[a].readers.data[i] > last ? u[a].readers.data[i] : last;
        bool in_place_ok = !u[a].self || (u[a].self_ident && (w->kind == KK_ELEM || w->kind == KK_COPY));
        if (last < wi && in_place_ok)
            continue;
        Node *v = w->roots.data[u[a].root];
        FBuf *t = xalloc(sizeof *t);
        t->arg = -1;
        t->node = v;
        t->lbuf = -1;
        if (w->kind != KK_COPY) {
            f->home[v->id] = t;
            if (f->alias[v->id])
                f->home[f->alias[v->id]->id] = t;
        }
        w->dsts.data[u[a].root] = t;
        FKernel *c = xalloc(sizeof *c);
        c->kind = KK_COPY;
        vec_push(&c->roots, v);
        vec_push(&c->dsts, f->argbuf[a]);
        c->src = t;
        vec_push(&c->nodes, v);
        vec_push(&after[last > wi ? last : wi], c);
        ncopies++;
    }
    if (!ncopies)
        return;
    FKernel **old = f->kernels.data;
    int *pos = xalloc(sizeof(int) * ((size_t)n + 1));
    f->kernels.data = NULL;
    f->kernels.len = f->kernels.cap = 0;
    for (int i = 0; i < n; i++) {
        pos[i] = f->kernels.len;
        vec_push(&f->kernels, old[i]);
        for (int j = 0; j < after[i].len; j++) {
            vec_push(&after[i].data[j]->deps, pos[i]);   /* not needed any more, but kept true */
            vec_push(&f->kernels, after[i].data[j]);
        }
    }
    for (int i = 0; i < n; i++)
        for (int d = 0; d < old[i]->deps.len; d++)
            old[i]->deps.data[d] = pos[old[i]->deps.data[d]];
    fusion_producers(f);
}

void memplan_homes(Fusion *f) {
    fusion_producers(f);
    schedule(f);
    fix_hazards(f);
}

/* ----------------------------------------------------------------------------
 * offsets */

typedef struct Interval {
    int buf, first, last;
    uint64_t size;
} Interval;

typedef struct FreeBlock {
    uint64_t off, size;
} FreeBlock;

typedef struct FreeList {
    VEC(FreeBlock) b;    /* sorted by offset, coalesced */
    uint64_t top;    /* bytes in use at the end of the workspace */
} FreeList;

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

static void note_buf(int *first, int *last, int buf, int k) {
    if (first[buf] < 0)
        first[buf] = k;
    last[buf] = k;
}

static void scan_expr(const LExpr *e, int *first, int *last, int k) {
    if (!e)
        return;
    if (e->kind == LE_LOAD) {
        note_buf(first, last, e->buf, k);
        scan_expr(e->index, first, last, k);
        scan_expr(e->valid, first, last, k);
    }
    for (int i = 0; i < 3; i++)
        scan_expr(e->a[i], first, last, k);
}

static void scan_stmts(LStmt *const *s, int n, int *first, int *last, int k) {
    for (int i = 0; i < n; i++) {
        const LStmt *st = s[i];
        switch (st->kind) {
        case LS_FOR: scan_stmts(st->body.data, st->body.len, first, last, k); break;
        case LS_LET:
        case LS_ASSIGN: scan_expr(st->value, first, last, k); break;
        case LS_STORE:
            note_buf(first, last, st->buf, k);
            scan_expr(st->index, first, last, k);
            scan_expr(st->value, first, last, k);
            break;
        case LS_GEMM:
            note_buf(first, last, st->gemm.a_buf, k);
            note_buf(first, last, st->gemm.b_buf, k);
            note_buf(first, last, st->gemm.c_buf, k);
            scan_expr(st->gemm.a_off, first, last, k);
            scan_expr(st->gemm.b_off, first, last, k);
            scan_expr(st->gemm.c_off, first, last, k);
            break;
        }
    }
}

static uint64_t fl_alloc(FreeList *fl, uint64_t size) {
    int best = -1;
    for (int i = 0; i < fl->b.len; i++)
        if (fl->b.data[i].size >= size && (best < 0 || fl->b.data[i].size < fl->b.data[best].size))
            best = i;
    if (best >= 0) {
        FreeBlock *b = &fl->b.data[best];
        uint64_t off = b->off;
        b->off += size;
        b->size -= size;
        if (!b->size) {
            memmove(b, b + 1, sizeof(FreeBlock) * (size_t)(fl->b.len - best - 1));
            fl->b.len--;
        }
        return off;
    }
    /* a free block touching the end grows instead of leaving a hole */
    if (fl->b.len && fl->b.data[fl->b.len - 1].off + fl->b.data[fl->b.len - 1].size == fl->top) {
        uint64_t off = fl->b.data[fl->b.len - 1].off;
        fl->b.len--;
        fl->top = off + size;
        return off;
    }
    uint64_t off = fl->top;
    fl->top += size;
    return off;
}

static void fl_free(FreeList *fl, uint64_t off, uint64_t size) {
    int i = 0;
    while (i < fl->b.len && fl->b.data[i].off < off)
        i++;
    FreeBlock nb = {off, size};
    vec_push(&fl->b, nb);
    memmove(&fl->b.data[i + 1], &fl->b.data[i], sizeof(FreeBlock) * (size_t)(fl->b.len - 1 - i));
    fl->b.data[i] = nb;
    if (i + 1 < fl->b.len && fl->b.data[i].off + fl->b.data[i].size == fl->b.data[i + 1].off) {
        fl->b.data[i].size += fl->b.data[i + 1].size;
        memmove(&fl->b.data[i + 1], &fl->b.data[i + 2], sizeof(FreeBlock) * (size_t)(fl->b.len - i - 2));
        fl->b.len--;
    }
    if (i > 0 && fl->b.data[i - 1].off + fl->b.data[i - 1].size == fl->b.data[i].off) {
        fl->b.data[i - 1].size += fl->b.data[i].size;
        memmove(&fl->b.data[i], &fl->b.data[i + 1], sizeof(FreeBlock) * (size_t)(fl->b.len - i - 1));
        fl->b.len--;
    }
}

static int cmp_first_then_size(const void *pa, const void *pb) {
    const Interval *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    if (a->size != b->size)
        return a->size > b->size ? -1 : 1;
    return a->buf - b->buf;
}

void memplan_offsets(LProgram *p, FILE *dump) {
    int nb = p->bufs.len;
    int *first = xalloc(sizeof(int) * ((size_t)nb + 1));
    int *last = xalloc(sizeof(int) * ((size_t)nb + 1));
    for (int i = 0; i < nb; i++)
        first[i] = last[i] = -1;
    for (int k = 0; k < p->kernels.len; k++)
        scan_stmts(p->kernels.data[k]->body.data, p->kernels.data[k]->body.len, first, last, k);

    VEC(Interval) iv = {0};
    uint64_t sum = 0;
    for (int i = 0; i < nb; i++) {
        LBuf *b = &p->bufs.data[i];
        if (b->kind != LB_WORKSPACE)
            continue;
        Interval t = {i, first[i], last[i], align64((uint64_t)b->nelem * (uint64_t)dtype_size(b->dtype))};
        if (t.first < 0)
            t.first = t.last = 0;   /* never used: placed, but shares bytes with anything */
        if (!t.size)
            t.size = 64;
        sum += t.size;
        vec_push(&iv, t);
    }
    if (iv.len)
        qsort(iv.data, (size_t)iv.len, sizeof(Interval), cmp_first_then_size);

    /* sweep: at kernel k, free what died before k, then place what starts */
    FreeList fl = {0};
    VEC(int) open = {0};   /* indices into iv, placed and not yet freed */
    int next = 0;
    for (int k = 0; next < iv.len; k++) {
        for (int j = 0; j < open.len;) {
            Interval *t = &iv.data[open.data[j]];
            if (t->last < k) {
                fl_free(&fl, p->bufs.data[t->buf].offset, t->size);
                open.data[j] = open.data[--open.len];
            } else {
                j++;
            }
        }
        while (next < iv.len && iv.data[next].first == k) {
            Interval *t = &iv.data[next];
            p->bufs.data[t->buf].offset = fl_alloc(&fl, t->size);
            vec_push(&open, next);
            next++;
        }
    }
    p->workspace_bytes = fl.top;

    if (dump) {
        fprintf(dump, "memory %s: workspace %llu bytes (%.2f MiB), %llu without reuse, %d buffers\n",
                p->entry && p->entry->name ? p->entry->name : "?", (unsigned long long)p->workspace_bytes,
                (double)p->workspace_bytes / (1024.0 * 1024.0), (unsigned long long)sum, iv.len);
        for (int i = 0; i < iv.len; i++) {
            const Interval *t = &iv.data[i];
            const LBuf *b = &p->bufs.data[t->buf];
            fprintf(dump, "  %-24s [k%d, k%d] %12llu bytes at %12llu\n", b->name ? b->name : "?", t->first, t->last,
                    (unsigned long long)t->size, (unsigned long long)b->offset);
        }
    }
}
