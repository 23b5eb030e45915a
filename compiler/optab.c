/* optab.c: the op table, generated from ops.def.
 *
 * The shape rules live in shape.c and the gradient rules in autodiff.c; their
 * prototypes are generated here from the same rows, so a row of ops.def is
 * the only place an op is named.
 */
#include "graph.h"

/* The gradient column holds NULL for ops without a gradient. To declare the
 * prototypes from that column, NULL is renamed for the length of the
 * declarations to a name that is declared once and never defined or used. */
#pragma push_macro("NULL")
#undef NULL
#define NULL grad_none_
#define X(e, name, arity, kind, dt, shape, grad, c) \
    void shape(Node *n); \
    void grad(GradCtx *gc, Node *n, Node *dy, Node **dx);
#include "ops.def"
#undef X
#undef NULL
#pragma pop_macro("NULL")

const OpInfo op_info[OP_COUNT] = {
#define X(e, name, arity, kind, dt, shape, grad, c) \
    [OP_##e] = {name, arity, kind, dt, shape, grad, c},
#include "ops.def"
#undef X
};
