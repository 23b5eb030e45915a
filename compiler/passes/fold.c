/* passes/fold.c: constant folding.
 *
 * A CONST is one scalar filling a shape, so constants stay cheap however big
 * they are, and folding works on that scalar:
 *  - views and broadcasts of a CONST are the CONST in the new shape (PAD and
 *    UNFOLD only when the value is 0, since they bring in zeros);
 *  - elementwise ops whose inputs are all CONSTs are evaluated;
 *  - SUM of a CONST is value * (number of elements summed), RMAX/RMIN the
 *    value;
 *  - GATHER from a CONST is the CONST; FOLD, SCATTER_ADD of zeros and MATMUL
 *    and the convolutions with a zero operand are zero (the last assumes
 *    finite values, as x * 0 -> 0 in simplify does).
 * Nothing is folded whose value would depend on the target: an integer
 * division by zero or an i32 result outside the i32 range stays in the graph.
 */
#include <math.h>

#include "graph.h"

static bool is_const(const Node *n) { return n->op == OP_CONST; }
static bool is_zero(const Node *n) { return n->op == OP_CONST && n->attr.value == 0; }
static bool is_int(DType t) { return t == DT_BOOL || t == DT_I32 || t == DT_I64; }

/* The value of an elementwise op on constants, the C template's semantics;
 * false if it cannot be folded portably. */
static bool eval_elem(const Node *n, double *out) {
    double a = n->in[0]->attr.value;
    double b = n->nin > 1 ? n->in[1]->attr.value : 0;
    double c = n->nin > 2 ? n->in[2]->attr.value : 0;
    DType dt = n->in[n->nin - 1]->dtype;   /* operand dtype (WHERE: the branches') */
    double r;
    switch (n->op) {
    case OP_NEG: r = -a; break;
    case OP_EXP: r = exp(a); break;
    case OP_LOG: r = log(a); break;
    case OP_SQRT: r = sqrt(a); break;
    case OP_RSQRT: r = 1 / sqrt(a); break;
    case OP_TANH: r = tanh(a); break;
    case OP_SIGMOID: r = 1 / (1 + exp(-a)); break;
    case OP_RELU: r = a > 0 ? a : 0; break;
    case OP_GELU: r = 0.5 * a * (1 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a))); break;
    case OP_ABS: r = a < 0 ? -a : a; break;
    case OP_SIGN: r = (a > 0) - (a < 0); break;
    case OP_NOT: r = !a; break;
    case OP_CAST:
        if (is_int(n->dtype) && n->dtype != DT_BOOL && !isfinite(a))
            return false;
        r = a;
        break;
    case OP_DETACH: r = a; break;
    case OP_ADD: r = a + b; break;
    case OP_SUB: r = a - b; break;
    case OP_MUL: r = a * b; break;
    case OP_DIV:
        if (is_int(dt) && b == 0)
            return false;
        r = is_int(dt) ? trunc(a / b) : a / b;
        break;
    case OP_MOD:
        if (is_int(dt) && b == 0)
            return false;
        r = fmod(a, b);
        break;
    case OP_POW: r = pow(a, b); break;
    case OP_MAX: r = a > b ? a : b; break;
    case OP_MIN: r = a < b ? a : b; break;
    case OP_LT: r = a < b; break;
    case OP_LE: r = a <= b; break;
    case OP_GT: r = a > b; break;
    case OP_GE: r = a >= b; break;
    case OP_EQ: r = a == b; break;
    case OP_NE: r = a != b; break;
    case OP_AND: r = a && b; break;
    case OP_OR: r = a || b; break;
    case OP_WHERE: r = a ? b : c; break;
    default: return false;
    }
    if (n->dtype == DT_I32 && (r < -2147483648.0 || r > 2147483647.0))
        return false;
    *out = r;
    return true;
}

/* The folded value of n, or NULL. */
static Node *fold_node(Graph *g, Node *n) {
    double v;
    switch (op_info[n->op].kind) {
    case OK_LEAF:
        return NULL;
    case OK_VIEW:
        if (!is_const(n->in[0]) || ((n->op == OP_PAD || n->op == OP_UNFOLD) && !is_zero(n->in[0])))
            return NULL;
        return g_const(g, n->in[0]->attr.value, n->dtype, n->shape, n->loc);
    case OK_ELEM:
        for (int k = 0; k < n->nin; k++)
            if (!is_const(n->in[k]))
                return NULL;
        if (!eval_elem(n, &v))
            return NULL;
        return g_const(g, v, n->dtype, n->shape, n->loc);
    case OK_REDUCE: {
        Node *x = n->in[0];
        int64_t count = shape_numel(n->shape) ? shape_numel(x->shape) / shape_numel(n->shape) : 0;
        if (!is_const(x) || count == 0)
            return NULL;
        v = n->op == OP_SUM    ? x->attr.value * (double)count
            : n->op == OP_RLSE ? x->attr.value + log((double)count)
                               : x->attr.value;
        if (n->dtype == DT_I32 && fabs(v) > 2147483647.0)
            return NULL;
        return g_const(g, v, n->dtype, n->shape, n->loc);
    }
    case OK_OPAQUE:
        switch (n->op) {
        case OP_FOLD:
            return is_zero(n->in[0]) ? g_const(g, 0, n->dtype, n->shape, n->loc) : NULL;
        case OP_SCATTER_ADD:
            return is_zero(n->in[1]) ? g_const(g, 0, n->dtype, n->shape, n->loc) : NULL;
        case OP_ALLREDUCE_MEAN:   /* every rank holds the same constant */
            return is_const(n->in[0]) ? g_const(g, n->in[0]->attr.value, n->dtype, n->shape, n->loc) : NULL;
        case OP_GATHER:
            if (!is_const(n->in[0]) || shape_numel(n->in[0]->shape) == 0)
                return NULL;
            return g_const(g, n->in[0]->attr.value, n->dtype, n->shape, n->loc);
        default:   /* MATMUL and the convolutions: bilinear */
            return is_zero(n->in[0]) || is_zero(n->in[1]) ? g_const(g, 0, n->dtype, n->shape, n->loc) : NULL;
        }
    }
    return NULL;
}

/* One sweep in order: the list is rebuilt as it goes, so a folded constant
 * (appended by g_const) lands before the users of the node it replaces, and
 * every node sees its inputs already folded. */
void pass_fold(Entry *e) {
    Graph *g = e->g;
    int n0 = g->nodes.len;
    Node **old = g->nodes.data;
    for (int i = 0; i < n0; i++)
        old[i]->repl = NULL;
    g->nodes.data = NULL;
    g->nodes.len = g->nodes.cap = 0;
    for (int i = 0; i < n0; i++) {
        Node *n = old[i];
        for (int k = 0; k < n->nin; k++)
            while (n->in[k]->repl)
                n->in[k] = n->in[k]->repl;
        Node *r = fold_node(g, n);
        if (r)
            n->repl = r;
        else
            vec_push(&g->nodes, n);
    }
    entry_replace_uses(e);
}
