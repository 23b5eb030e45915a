/* pipeline.c: the graph passes of one entry point, in order, with the
 * verifier between them (QBE style: the list below is the optimiser). Shared
 * by the lethec driver and the fuzz harness.
 */
#include "graph.h"
#include "stage_time.h"

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

static void verify_timed(Entry *e, const char *after) {
    stage_push(ST_VERIFY);
    pass_verify(e, after);
    stage_pop();
}

void optimize_entry(Entry *e) {
    verify_timed(e, "sema");
    for (int round = 0; round < 2; round++) {
        stage_push(ST_FOLD);
        pass_fold(e);
        stage_pop();
        verify_timed(e, "fold");
        stage_push(ST_SIMPLIFY);
        pass_simplify(e);
        stage_pop();
        verify_timed(e, "simplify");
        stage_push(ST_CSE);
        pass_cse(e);
        stage_pop();
        verify_timed(e, "cse");
        stage_push(ST_DCE);
        pass_dce(e);
        stage_pop();
        verify_timed(e, "dce");
    }
    finish_args(e);
    verify_timed(e, "args");
}

