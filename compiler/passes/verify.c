/* passes/verify.c: the graph invariants, checked between passes (QBE's
 * ssacheck). A broken invariant is a compiler bug: internal_error names the
 * pass that ran last, the entry and the node.
 *
 *  - every node has a unique id below next_id, a valid op and its arity;
 *  - every input is a node of the graph that comes earlier (topological);
 *  - the shape rule, re-run on a copy, gives the node's shape and dtype;
 *  - INPUT nodes read an existing argument of their own type, and every
 *    args[i].in / args[i].out is a node of the graph of args[i]'s type
 *    (args[i].in an INPUT of argument i).
 */
#include <string.h>

#include "graph.h"

static const char *verify_after, *verify_entry;

static noreturn __attribute__((format(printf, 2, 3))) void broken(const Node *n, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n)
        internal_error(__FILE__, __LINE__, "graph broken after %s in entry %s: node %%%d (%s): %s", verify_after,
                       verify_entry, n->id, n->op >= 0 && n->op < OP_COUNT ? op_info[n->op].name : "?", msg);
    internal_error(__FILE__, __LINE__, "graph broken after %s in entry %s: %s", verify_after, verify_entry, msg);
}

/* Re-run the shape rule on a copy. The rule reports through error_at, so a
 * recovery point catches it and the failure becomes an internal error. */
static void check_shape_rule(const Node *n) {
    Node copy = *n;
    jmp_buf here;
    jmp_buf *saved = diag_recover;
    int saved_count = diag_error_count;
    if (setjmp(here)) {
        diag_recover = saved;
        diag_error_count = saved_count;
        broken(n, "its shape rule rejects it (message above)");
    }
    diag_recover = &here;
    op_info[n->op].shape(&copy);
    diag_recover = saved;
    if (copy.dtype != n->dtype || !shape_eq(copy.shape, n->shape))
        broken(n, "it is %s but its shape rule gives %s", type_str(n->dtype, n->shape), type_str(copy.dtype, copy.shape));
}

static void check_arg_type(const Node *n, const EntryArg *a, int i, const char *what) {
    if (n->dtype != a->dtype || !shape_eq(n->shape, a->shape))
        broken(n, "%s of argument %d (%s) is %s, the argument is %s", what, i, a->name ? a->name : "?",
               type_str(n->dtype, n->shape), type_str(a->dtype, a->shape));
}

void pass_verify(Entry *e, const char *after) {
    Graph *g = e->g;
    verify_after = after ? after : "?";
    verify_entry = e->name ? e->name : "?";
    int cap = g->next_id;
    int *pos = xalloc(sizeof(int) * ((size_t)cap + 1));   /* 1 + index in g->nodes; 0 = absent */
    for (int i = 0; i < g->nodes.len; i++) {
        const Node *n = g->nodes.data[i];
        if (!n)
            broken(NULL, "node %d of %d is NULL", i, g->nodes.len);
        if (n->id < 0 || n->id >= cap)
            broken(n, "id outside [0, %d)", cap);
        if (pos[n->id])
            broken(n, "id used twice (positions %d and %d)", pos[n->id] - 1, i);
        if (n->op < 0 || n->op >= OP_COUNT)
            broken(n, "bad op %d", (int)n->op);
        if (n->nin != op_info[n->op].arity)
            broken(n, "%d inputs, the op takes %d", n->nin, op_info[n->op].arity);
        for (int k = 0; k < n->nin; k++) {
            const Node *m = n->in[k];
            if (!m)
                broken(n, "input %d is NULL", k);
            if (m->id < 0 || m->id >= cap || !pos[m->id] || g->nodes.data[pos[m->id] - 1] != m)
                broken(n, "input %d (%%%d) is not an earlier node of the graph", k, m->id);
        }
        check_shape_rule(n);
        if (n->op == OP_INPUT) {
            int arg = n->attr.arg;
            if (arg < 0 || arg >= e->args.len)
                broken(n, "reads argument %d of %d", arg, e->args.len);
            if (!e->args.data[arg].in)
                broken(n, "reads argument %d whose .in is NULL", arg);
            check_arg_type(n, &e->args.data[arg], arg, "the input node");
        }
        pos[n->id] = i + 1;
    }
    for (int i = 0; i < e->args.len; i++) {
        const EntryArg *a = &e->args.data[i];
        const Node *ends[2] = {a->in, a->out};
        for (int k = 0; k < 2; k++) {
            const Node *n = ends[k];
            if (!n)
                continue;
            if (n->id < 0 || n->id >= cap || !pos[n->id] || g->nodes.data[pos[n->id] - 1] != n)
                broken(NULL, "args[%d].%s (%s) is not a node of the graph", i, k ? "out" : "in", a->name ? a->name : "?");
            check_arg_type(n, a, i, k ? "the value written" : "the input node");
        }
        if (a->in && (a->in->op != OP_INPUT || a->in->attr.arg != i))
            broken(a->in, "args[%d].in is not an input node of argument %d", i, i);
    }
}
