/* pipeline.c: the graph passes of one entry point, in order, with the
 * verifier between them (QBE style: the list below is the optimiser). Shared
 * by the lethec driver and the fuzz harness.
 */
#include "graph.h"

/* After the passes: arguments whose INPUT node died are not read, and an
 * argument neither read nor written (other than a scalar) leaves the
 * signature. */
static void finish_args(Entry *e) {
    bool *live = xalloc((size_t)e->args.len + 1);
    for (int i = 0; i < e->g->nodes.len; i++) {
        Node *n = e->g->nodes.data[i];
        if (n->op == OP_INPUT && n->attr.arg >= 0 && n->attr.arg < e->args.len && e->args.data[n->attr.arg].in == n)
            live[n->attr.arg] = true;
    }
    int n = 0;
    for (int i = 0; i < e->args.len; i++) {
        EntryArg a = e->args.data[i];
        if (!live[i])
            a.in = NULL;
        if (!a.in && !a.out && a.kind != 4 /* LETHE_SCALAR */)
            continue;
        a.access = (a.in || a.kind == 4 ? 1 : 0) | (a.out ? 2 : 0);
        if (a.in)
            a.in->attr.arg = n;
        e->args.data[n++] = a;
    }
    e->args.len = n;
}

void optimize_entry(Entry *e) {
    pass_verify(e, "sema");
    for (int round = 0; round < 2; round++) {
        pass_fold(e);
        pass_verify(e, "fold");
        pass_simplify(e);
        pass_verify(e, "simplify");
        pass_cse(e);
        pass_verify(e, "cse");
        pass_dce(e);
        pass_verify(e, "dce");
    }
    finish_args(e);
    pass_verify(e, "args");
}

