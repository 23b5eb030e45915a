/* passes/dce.c: dead-code elimination, and the replacement step the
 * rewriting passes share.
 *
 * A node is live if an argument receives it (Entry.args[].out) or a live
 * node reads it. Unread INPUT nodes go too: their argument's .in becomes
 * NULL (or another live INPUT of the same argument, should one remain).
 */
#include "graph.h"

static Node *resolve(Node *n) {
    for (int steps = 0; n && n->repl; steps++) {
        if (steps > 1 << 20)
            internal_error(__FILE__, __LINE__, "replacement links of node %%%d form a cycle", n->id);
        n = n->repl;
    }
    return n;
}

/* Every use of a node with a repl link now uses its replacement (following
 * chains); replaced nodes leave the graph. A pass that links a node to a
 * later one gets the order restored here. */
void entry_replace_uses(Entry *e) {
    Graph *g = e->g;
    int *pos = xalloc(sizeof(int) * ((size_t)g->next_id + 1));
    int kept = 0;
    bool sorted = true;
    for (int i = 0; i < g->nodes.len; i++) {
        Node *n = g->nodes.data[i];
        if (n->repl)
            continue;
        for (int k = 0; k < n->nin; k++) {
            n->in[k] = resolve(n->in[k]);
            sorted &= pos[n->in[k]->id] > 0;
        }
        g->nodes.data[kept++] = n;
        pos[n->id] = kept;
    }
    g->nodes.len = kept;
    for (int i = 0; i < e->args.len; i++) {
        e->args.data[i].in = resolve(e->args.data[i].in);
        e->args.data[i].out = resolve(e->args.data[i].out);
    }
    if (!sorted)
        graph_toposort(g);
}

void pass_dce(Entry *e) {
    Graph *g = e->g;
    unsigned char *live = xalloc((size_t)g->next_id + 1);
    for (int i = 0; i < e->args.len; i++)
        if (e->args.data[i].out)
            live[e->args.data[i].out->id] = 1;
    for (int i = g->nodes.len - 1; i >= 0; i--) {
        Node *n = g->nodes.data[i];
        if (live[n->id])
            for (int k = 0; k < n->nin; k++)
                live[n->in[k]->id] = 1;
    }
    int kept = 0;
    for (int i = 0; i < g->nodes.len; i++)
        if (live[g->nodes.data[i]->id])
            g->nodes.data[kept++] = g->nodes.data[i];
    g->nodes.len = kept;
    for (int i = 0; i < e->args.len; i++) {
        EntryArg *a = &e->args.data[i];
        if (!a->in || live[a->in->id])
            continue;
        a->in = NULL;
        for (int k = 0; k < g->nodes.len && !a->in; k++)
            if (g->nodes.data[k]->op == OP_INPUT && g->nodes.data[k]->attr.arg == i)
                a->in = g->nodes.data[k];
    }
}
