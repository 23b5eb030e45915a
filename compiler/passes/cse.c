/* passes/cse.c: common subexpressions, by hashing.
 *
 * Two nodes are the same value if they have the same op, dtype, shape,
 * attributes (memcmp: node_new zeroes every byte an op does not use) and the
 * same inputs after earlier merges. Inputs of commutative ops are compared
 * as a set. RAND nodes merge too: equal stream and shape draw equal numbers.
 * One sweep in topological order finds every merge, because a node's inputs
 * are merged before the node is looked at.
 */
#include <string.h>

#include "graph.h"

static bool commutative(Op op) {
    switch (op) {
    case OP_ADD: case OP_MUL: case OP_MAX: case OP_MIN:
    case OP_EQ: case OP_NE: case OP_AND: case OP_OR:
        return true;
    default:
        return false;
    }
}

/* inputs in a canonical order: by id for commutative ops */
static void key_inputs(const Node *n, Node **in) {
    for (int k = 0; k < n->nin; k++)
        in[k] = n->in[k];
    if (commutative(n->op) && in[0]->id > in[1]->id) {
        Node *t = in[0];
        in[0] = in[1];
        in[1] = t;
    }
}

static uint64_t node_hash(const Node *n) {
    Node *in[3];
    key_inputs(n, in);
    uint64_t h = hash_bytes(&n->op, sizeof n->op, 0);
    h = hash_bytes(&n->dtype, sizeof n->dtype, h);
    h = hash_bytes(&n->shape.rank, sizeof n->shape.rank, h);
    h = hash_bytes(n->shape.dim, sizeof(int64_t) * (size_t)n->shape.rank, h);
    for (int k = 0; k < n->nin; k++)
        h = hash_bytes(&in[k]->id, sizeof(int), h);
    return hash_bytes(&n->attr, sizeof n->attr, h);
}

static bool node_same(const Node *a, const Node *b) {
    if (a->op != b->op || a->dtype != b->dtype || !shape_eq(a->shape, b->shape) || a->nin != b->nin)
        return false;
    Node *ia[3], *ib[3];
    key_inputs(a, ia);
    key_inputs(b, ib);
    for (int k = 0; k < a->nin; k++)
        if (ia[k] != ib[k])
            return false;
    return memcmp(&a->attr, &b->attr, sizeof a->attr) == 0;
}

void pass_cse(Entry *e) {
    Graph *g = e->g;
    size_t cap = 16;
    while (cap < 2 * (size_t)g->nodes.len)
        cap *= 2;
    Node **table = xalloc(sizeof(Node *) * cap);
    for (int i = 0; i < g->nodes.len; i++)
        g->nodes.data[i]->repl = NULL;
    for (int i = 0; i < g->nodes.len; i++) {
        Node *n = g->nodes.data[i];
        for (int k = 0; k < n->nin; k++)
            while (n->in[k]->repl)
                n->in[k] = n->in[k]->repl;
        size_t h = (size_t)node_hash(n) & (cap - 1);
        while (table[h] && !node_same(table[h], n))
            h = (h + 1) & (cap - 1);
        if (table[h])
            n->repl = table[h];
        else
            table[h] = n;
    }
    entry_replace_uses(e);
}
