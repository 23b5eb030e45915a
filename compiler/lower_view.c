/* lower_view.c: index maps, the algebra that turns chains of view ops into
 * index arithmetic (see IdxMap in lower_int.h).
 *
 * Why a single strided view with affine constraints (and not tinygrad's
 * stack of views or general div/mod index expressions): every view op of
 * ops.def except a few RESHAPEs composes into this form exactly, and the
 * form gives the inner loop of a kernel a constant stride per buffer, which
 * is what LLVM's vectorizer (and coalescing on a GPU) needs. The RESHAPEs
 * that do not compose (merging axes that are not adjacent in memory, e.g.
 * after a transpose) are rare and cheap to fix by materializing the
 * reshape's input, which fusion.c does when map_reshape refuses.
 *
 * Constraints come from PAD and UNFOLD: 0 <= sum coef*idx + c < bound says
 * "this element exists in the unpadded input". normalize() drops the ones a
 * shape makes always true, so slicing the padding away again (or a pad that
 * is never reached) costs nothing in the generated code.
 */
#include <string.h>

#include "lower_int.h"

static int64_t rowmajor_stride(const int64_t *dim, int rank, int d) {
    int64_t s = 1;
    for (int k = d + 1; k < rank; k++)
        s *= dim[k];
    return s;
}

static bool has_zero_dim(const IdxMap *m) {
    for (int d = 0; d < m->rank; d++)
        if (m->dim[d] == 0)
            return true;
    return false;
}

/* The range of sum coef*idx + c over the index box. */
static void cons_range(const IdxMap *m, const IdxCons *k, int64_t *lo, int64_t *hi) {
    int64_t a = k->c, b = k->c;
    for (int d = 0; d < m->rank; d++) {
        int64_t t = k->coef[d] * (m->dim[d] - 1);
        if (t < 0)
            a += t;
        else
            b += t;
    }
    *lo = a;
    *hi = b;
}

/* Canonical form: size-1 dims carry no stride or coefficient (their index is
 * always 0), constraints that always hold are gone. An empty map keeps no
 * constraints at all: nothing is ever evaluated through it. */
static void normalize(IdxMap *m) {
    for (int d = 0; d < m->rank; d++)
        if (m->dim[d] == 1) {
            m->stride[d] = 0;
            for (int c = 0; c < m->ncons; c++)
                m->cons[c].coef[d] = 0;
        }
    if (has_zero_dim(m)) {
        m->ncons = 0;
        return;
    }
    int n = 0;
    for (int c = 0; c < m->ncons; c++) {
        IdxCons k = m->cons[c];
        int64_t lo, hi;
        cons_range(m, &k, &lo, &hi);
        if (lo >= 0 && hi < k.bound)
            continue;
        /* same coefficients as one already kept (pads stacked on one axis):
         * keep the intersection, -c <= e < bound - c of both */
        int j = 0;
        while (j < n && memcmp(m->cons[j].coef, k.coef, sizeof k.coef))
            j++;
        if (j < n) {
            IdxCons *o = &m->cons[j];
            int64_t l = -o->c > -k.c ? -o->c : -k.c;
            int64_t h = o->bound - o->c < k.bound - k.c ? o->bound - o->c : k.bound - k.c;
            o->c = -l;
            o->bound = h > l ? h - l : 0;
            continue;
        }
        m->cons[n++] = k;
    }
    m->ncons = n;
}

IdxMap map_contig(Shape s) {
    IdxMap m;
    memset(&m, 0, sizeof m);
    m.rank = s.rank;
    for (int d = 0; d < s.rank; d++) {
        m.dim[d] = s.dim[d];
        m.stride[d] = rowmajor_stride(s.dim, s.rank, d);
    }
    normalize(&m);
    return m;
}

IdxMap map_zero(Shape s) {
    IdxMap m;
    memset(&m, 0, sizeof m);
    m.rank = s.rank;
    for (int d = 0; d < s.rank; d++)
        m.dim[d] = s.dim[d];
    return m;
}

static bool add_cons(IdxMap *m, const IdxCons *k) {
    if (m->ncons == MAX_CONS)
        return false;
    m->cons[m->ncons++] = *k;
    return true;
}

bool map_apply_view(IdxMap *m, const Node *v) {
    const Attr *a = &v->attr;
    const Node *x = v->in[0];
    ASSERT(m->rank == x->shape.rank);
    IdxMap r = *m;
    switch (v->op) {
    case OP_RESHAPE:
        if (!map_reshape(&r, v->shape.dim, v->shape.rank))
            return false;
        break;
    case OP_PERMUTE:
        /* out dim i is in dim a[i] */
        for (int i = 0; i < x->shape.rank; i++) {
            int p = (int)a->a[i];
            r.dim[i] = m->dim[p];
            r.stride[i] = m->stride[p];
            for (int c = 0; c < m->ncons; c++)
                r.cons[c].coef[i] = m->cons[c].coef[p];
        }
        break;
    case OP_EXPAND:
        /* a grown dim had size 1: its index was always 0, so it already
         * carries no stride or coefficient */
        for (int d = 0; d < r.rank; d++)
            r.dim[d] = v->shape.dim[d];
        break;
    case OP_SLICE:
        /* in index = start + step * out index */
        for (int d = 0; d < r.rank; d++) {
            r.offset += m->stride[d] * a->a[d];
            r.stride[d] = m->stride[d] * a->b[d];
            for (int c = 0; c < r.ncons; c++) {
                r.cons[c].c += m->cons[c].coef[d] * a->a[d];
                r.cons[c].coef[d] = m->cons[c].coef[d] * a->b[d];
            }
            r.dim[d] = v->shape.dim[d];
        }
        break;
    case OP_PAD:
        /* in index = out index - lo, present iff 0 <= out - lo < in dim */
        for (int d = 0; d < r.rank; d++) {
            int64_t lo = a->a[d];
            r.offset -= m->stride[d] * lo;
            for (int c = 0; c < r.ncons; c++)
                r.cons[c].c -= m->cons[c].coef[d] * lo;
            r.dim[d] = v->shape.dim[d];
        }
        for (int d = 0; d < r.rank; d++) {
            if (a->a[d] == 0 && a->b[d] == 0)
                continue;
            IdxCons k;
            memset(&k, 0, sizeof k);
            k.coef[d] = 1;
            k.c = -a->a[d];
            k.bound = x->shape.dim[d];
            if (!add_cons(&r, &k))
                return false;
        }
        break;
    case OP_UNFOLD: {
        /* x[n, c, h, w] -> out[n, c, p, q, i, j] with h = p*sh + i - ph and
         * w = q*sw + j - pw */
        int64_t sh = a->sh, sw = a->sw, ph = a->ph, pw = a->pw;
        r.rank = 6;
        for (int d = 0; d < 6; d++)
            r.dim[d] = v->shape.dim[d];
        r.stride[0] = m->stride[0];
        r.stride[1] = m->stride[1];
        r.stride[2] = sh * m->stride[2];
        r.stride[3] = sw * m->stride[3];
        r.stride[4] = m->stride[2];
        r.stride[5] = m->stride[3];
        r.offset = m->offset - ph * m->stride[2] - pw * m->stride[3];
        for (int c = 0; c < m->ncons; c++) {
            const int64_t *k = m->cons[c].coef;
            int64_t nk[MAX_RANK] = {k[0], k[1], sh * k[2], sw * k[3], k[2], k[3]};
            memcpy(r.cons[c].coef, nk, sizeof nk);
            r.cons[c].c = m->cons[c].c - ph * k[2] - pw * k[3];
        }
        IdxCons kh, kw;
        memset(&kh, 0, sizeof kh);
        memset(&kw, 0, sizeof kw);
        kh.coef[2] = sh, kh.coef[4] = 1, kh.c = -ph, kh.bound = x->shape.dim[2];
        kw.coef[3] = sw, kw.coef[5] = 1, kw.c = -pw, kw.bound = x->shape.dim[3];
        if (!add_cons(&r, &kh) || !add_cons(&r, &kw))
            return false;
        break;
    }
    default:
        internal_error(__FILE__, __LINE__, "map_apply_view: %s is not a view", op_info[v->op].name);
    }
    normalize(&r);
    if (r.ncons > MAX_CONS)
        return false;
    *m = r;
    return true;
}

/* Reshape as groups: walk the non-1 dims of both shapes, cutting them into
 * minimal runs with equal products. Inside a run the old dims must merge
 * into one virtual dim (stride[k] == stride[k+1] * dim[k+1], and the same
 * for every constraint's coefficients); the new dims then split it. Minimal
 * runs make the merge necessary, so a refusal here really needs div/mod. */
bool map_reshape(IdxMap *m, const int64_t *dims, int rank) {
    IdxMap r;
    memset(&r, 0, sizeof r);
    r.rank = rank;
    for (int d = 0; d < rank; d++)
        r.dim[d] = dims[d];
    r.offset = m->offset;
    bool empty = has_zero_dim(m);
    for (int d = 0; d < rank; d++)
        empty |= dims[d] == 0;
    if (empty) {
        *m = r;
        return true;
    }
    normalize(m);
    r.ncons = m->ncons;
    for (int c = 0; c < m->ncons; c++) {
        r.cons[c].c = m->cons[c].c;
        r.cons[c].bound = m->cons[c].bound;
    }
    int oi[MAX_RANK], ni[MAX_RANK], no = 0, nn = 0;
    for (int d = 0; d < m->rank; d++)
        if (m->dim[d] != 1)
            oi[no++] = d;
    for (int d = 0; d < rank; d++)
        if (dims[d] != 1)
            ni[nn++] = d;
    int i = 0, j = 0;
    while (i < no) {
        ASSERT(j < nn);
        int i0 = i, j0 = j;
        int64_t po = m->dim[oi[i++]], pn = dims[ni[j++]];
        while (po != pn) {
            if (po < pn) {
                ASSERT(i < no);
                po *= m->dim[oi[i++]];
            } else {
                ASSERT(j < nn);
                pn *= dims[ni[j++]];
            }
        }
        for (int k = i0; k + 1 < i; k++) {
            int64_t inner = m->dim[oi[k + 1]];
            if (m->stride[oi[k]] != m->stride[oi[k + 1]] * inner)
                return false;
            for (int c = 0; c < m->ncons; c++)
                if (m->cons[c].coef[oi[k]] != m->cons[c].coef[oi[k + 1]] * inner)
                    return false;
        }
        int last = oi[i - 1];
        int64_t acc = 1;
        for (int t = j - 1; t >= j0; t--) {
            r.stride[ni[t]] = m->stride[last] * acc;
            for (int c = 0; c < m->ncons; c++)
                r.cons[c].coef[ni[t]] = m->cons[c].coef[last] * acc;
            acc *= dims[ni[t]];
        }
    }
    ASSERT(j == nn);
    normalize(&r);
    *m = r;
    return true;
}

void map_permute(IdxMap *m, const int *perm) {
    IdxMap r = *m;
    for (int i = 0; i < m->rank; i++) {
        r.dim[i] = m->dim[perm[i]];
        r.stride[i] = m->stride[perm[i]];
        for (int c = 0; c < m->ncons; c++)
            r.cons[c].coef[i] = m->cons[c].coef[perm[i]];
    }
    *m = r;
}

bool map_is_contig(const IdxMap *m) {
    if (m->ncons)
        return false;
    for (int d = 0; d < m->rank; d++)
        if (m->dim[d] != 1 && m->stride[d] != rowmajor_stride(m->dim, m->rank, d))
            return false;
    return true;
}

bool map_is_identity(const IdxMap *m) { return m->offset == 0 && map_is_contig(m); }

bool map_contig_from(const IdxMap *m, int first) {
    if (m->ncons)
        return false;
    for (int d = first; d < m->rank; d++)
        if (m->dim[d] != 1 && m->stride[d] != rowmajor_stride(m->dim, m->rank, d))
            return false;
    return true;
}

bool map_matrix(const IdxMap *m, bool *trans, int64_t *ld) {
    ASSERT(m->rank >= 2);
    if (m->ncons)
        return false;
    int64_t rows = m->dim[m->rank - 2], cols = m->dim[m->rank - 1];
    int64_t sr = m->stride[m->rank - 2], sc = m->stride[m->rank - 1];
    if ((cols <= 1 || sc == 1) && (rows <= 1 || sr >= cols)) {
        *trans = false;
        *ld = rows <= 1 ? cols : sr;
    } else if ((rows <= 1 || sr == 1) && (cols <= 1 || sc >= rows)) {
        *trans = true;
        *ld = cols <= 1 ? rows : sc;
    } else {
        return false;
    }
    if (*ld < 1)
        *ld = 1;
    return true;
}

LExpr *map_index(const IdxMap *m, LExpr *const *idx) {
    LExpr *e = iconst(m->offset);
    for (int d = 0; d < m->rank; d++)
        if (m->dim[d] != 1 && m->stride[d] != 0)
            e = iadd(e, imul(idx[d], m->stride[d]));
    return e;
}

/* Each side of a constraint is tested only where it can fail. */
LExpr *map_valid(const IdxMap *m, LExpr *const *idx) {
    LExpr *v = NULL;
    for (int c = 0; c < m->ncons; c++) {
        const IdxCons *k = &m->cons[c];
        LExpr *e = iconst(k->c);
        for (int d = 0; d < m->rank; d++)
            if (m->dim[d] != 1 && k->coef[d] != 0)
                e = iadd(e, imul(idx[d], k->coef[d]));
        int64_t lo, hi;
        cons_range(m, k, &lo, &hi);
        if (lo < 0)
            v = band(v, le_op2(OP_LE, DT_BOOL, iconst(0), e));
        if (hi >= k->bound)
            v = band(v, le_op2(OP_LT, DT_BOOL, e, iconst(k->bound)));
    }
    return v;
}

void map_dump(const IdxMap *m, FILE *out) {
    fprintf(out, "{dims");
    for (int d = 0; d < m->rank; d++)
        fprintf(out, " %lld", (long long)m->dim[d]);
    fprintf(out, " strides");
    for (int d = 0; d < m->rank; d++)
        fprintf(out, " %lld", (long long)m->stride[d]);
    fprintf(out, " +%lld", (long long)m->offset);
    for (int c = 0; c < m->ncons; c++) {
        fprintf(out, " [0<=");
        for (int d = 0; d < m->rank; d++)
            if (m->cons[c].coef[d])
                fprintf(out, "%+lld*i%d", (long long)m->cons[c].coef[d], d);
        fprintf(out, "%+lld<%lld]", (long long)m->cons[c].c, (long long)m->cons[c].bound);
    }
    fprintf(out, "}");
}

/* ----------------------------------------------------------------------------
 * view stacks */

void vstacks_init(VStacks *s) {
    memset(s, 0, sizeof *s);
    VStackEnt root = {0, NULL};
    vec_push(&s->ent, root);   /* id 0: the empty stack */
    s->tcap = 64;
    s->table = xalloc(sizeof(int) * (size_t)s->tcap);
}

static unsigned vs_hash(int parent, int view_id) {
    uint64_t h = (uint64_t)(uint32_t)parent * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)view_id * 0xC2B2AE3D27D4EB4Full;
    return (unsigned)(h >> 32);
}

int vstack_push(VStacks *s, int parent, const Node *view) {
    if (2 * s->ent.len >= s->tcap) {
        int ncap = s->tcap * 2;
        int *nt = xalloc(sizeof(int) * (size_t)ncap);
        for (int i = 1; i < s->ent.len; i++) {
            unsigned h = vs_hash(s->ent.data[i].parent, s->ent.data[i].view->id) & (unsigned)(ncap - 1);
            while (nt[h])
                h = (h + 1) & (unsigned)(ncap - 1);
            nt[h] = i;
        }
        s->table = nt;
        s->tcap = ncap;
    }
    unsigned h = vs_hash(parent, view->id) & (unsigned)(s->tcap - 1);
    while (s->table[h]) {
        VStackEnt *e = &s->ent.data[s->table[h]];
        if (e->parent == parent && e->view == view)
            return s->table[h];
        h = (h + 1) & (unsigned)(s->tcap - 1);
    }
    VStackEnt e = {parent, view};
    vec_push(&s->ent, e);
    s->table[h] = s->ent.len - 1;
    return s->ent.len - 1;
}

bool vstack_compose(const VStacks *s, int stack, IdxMap *m, const Node **failed) {
    for (int id = stack; id; id = s->ent.data[id].parent) {
        const Node *v = s->ent.data[id].view;
        if (!map_apply_view(m, v)) {
            if (failed)
                *failed = v;
            return false;
        }
    }
    return true;
}

bool leaf_compose(const VStacks *s, int stack, const Node *n, bool as_buffer, IdxMap *m, LeafForm *form,
                  const Node **failed) {
    if (as_buffer || n->op == OP_RAND_UNIFORM || n->op == OP_RAND_NORMAL) {
        *form = as_buffer ? LEAF_BUFFER : LEAF_RAND;
        *m = map_contig(n->shape);
        return vstack_compose(s, stack, m, failed);
    }
    if (n->op == OP_CONST) {
        *form = LEAF_CONST;
        *m = map_zero(n->shape);
        return vstack_compose(s, stack, m, failed);
    }
    ASSERT(n->op == OP_IOTA);
    /* the index along the axis as a stride-1 "buffer" composes through
     * expands and slices; if a reshape refuses it, the row-major element
     * index with a div/mod always composes as far as a buffer would */
    *form = LEAF_IOTA;
    *m = map_zero(n->shape);
    if (n->shape.rank)
        m->stride[n->attr.axis] = n->shape.dim[n->attr.axis] == 1 ? 0 : 1;
    if (vstack_compose(s, stack, m, failed))
        return true;
    *form = LEAF_IOTA_LIN;
    *m = map_contig(n->shape);
    return vstack_compose(s, stack, m, failed);
}
