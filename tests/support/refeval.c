/* refeval.c: see refeval.h. Deliberately naive: every op walks its output
 * (or, for scatters, its input) element by element with explicit index
 * arithmetic, so that it is easy to check against the Attr comment in
 * graph.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "philox.h"
#include "refeval.h"

static void fail(const Node *n, const char *why) {
    fprintf(stderr, "refeval: node %%%d (%s): %s\n", n->id, op_info[n->op].name, why);
    abort();
}

static bool is_int(DType t) { return t == DT_BOOL || t == DT_I32 || t == DT_I64; }

/* flat index -> multi-index */
static void unravel(Shape s, int64_t i, int64_t *ix) {
    for (int d = s.rank - 1; d >= 0; d--) {
        int64_t n = s.dim[d];
        ix[d] = n ? i % n : 0;
        i = n ? i / n : 0;
    }
}

static int64_t ravel(Shape s, const int64_t *ix) {
    int64_t i = 0;
    for (int d = 0; d < s.rank; d++)
        i = i * s.dim[d] + ix[d];
    return i;
}

double refeval_scalar(Op op, DType dt, double a, double b, double c) {
    switch (op) {
    case OP_NEG: return -a;
    case OP_EXP: return exp(a);
    case OP_LOG: return log(a);
    case OP_SQRT: return sqrt(a);
    case OP_RSQRT: return 1 / sqrt(a);
    case OP_TANH: return tanh(a);
    case OP_SIGMOID: return 1 / (1 + exp(-a));
    case OP_RELU: return a > 0 ? a : 0;
    case OP_GELU: return 0.5 * a * (1 + tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)));
    case OP_ABS: return a < 0 ? -a : a;
    case OP_SIGN: return (a > 0) - (a < 0);
    case OP_NOT: return !a;
    case OP_DETACH: return a;
    case OP_ADD: return a + b;
    case OP_SUB: return a - b;
    case OP_MUL: return a * b;
    case OP_DIV:
        if (is_int(dt))
            return b == 0 ? 0 : trunc(a / b);
        return a / b;
    case OP_MOD:
        if (is_int(dt) && b == 0)
            return 0;
        return fmod(a, b);
    case OP_POW: return pow(a, b);
    case OP_MAX: return a > b ? a : b;
    case OP_MIN: return a < b ? a : b;
    case OP_LT: return a < b;
    case OP_LE: return a <= b;
    case OP_GT: return a > b;
    case OP_GE: return a >= b;
    case OP_EQ: return a == b;
    case OP_NE: return a != b;
    case OP_AND: return a && b;
    case OP_OR: return a || b;
    case OP_WHERE: return a ? b : c;
    default: break;
    }
    fprintf(stderr, "refeval_scalar: %s is not elementwise\n", op_info[op].name);
    abort();
}

static double cast_value(double v, DType to) {
    switch (to) {
    case DT_BOOL: return v != 0;
    case DT_I32:
    case DT_I64: return isnan(v) ? 0 : trunc(v);
    default: return v;
    }
}

/* ----------------------------------------------------------------------------
 * one function per op family; out has shape_numel(n->shape) zeroed doubles
 */

static void eval_reduce(const Node *n, const double *x, double *out) {
    Shape xs = n->in[0]->shape;
    int64_t total = shape_numel(xs), ix[MAX_RANK];
    bool *seen = calloc((size_t)shape_numel(n->shape) + 1, 1);
    for (int64_t i = 0; i < total; i++) {
        unravel(xs, i, ix);
        for (int d = 0; d < xs.rank; d++)
            if (n->attr.axes >> d & 1)
                ix[d] = 0;
        int64_t o = ravel(n->shape, ix);
        double v = x[i];
        if (n->op == OP_SUM)
            out[o] += v;
        else if (n->op == OP_RLSE)   /* the sum of exp here, its log below */
            out[o] += exp(v);
        else if (!seen[o])
            out[o] = v;
        else if (n->op == OP_RMAX)
            out[o] = out[o] > v ? out[o] : v;
        else
            out[o] = out[o] < v ? out[o] : v;
        seen[o] = true;
    }
    if (n->op == OP_RLSE)
        for (int64_t o = 0; o < shape_numel(n->shape); o++)
            out[o] = log(out[o]);
    free(seen);
}

static void eval_view(const Node *n, const double *x, double *out) {
    Shape xs = n->in[0]->shape;
    const Attr *a = &n->attr;
    int64_t total = shape_numel(n->shape), o[MAX_RANK], ix[MAX_RANK];
    for (int64_t i = 0; i < total; i++) {
        unravel(n->shape, i, o);
        bool inside = true;
        switch (n->op) {
        case OP_RESHAPE:
            out[i] = x[i];
            continue;
        case OP_PERMUTE:
            for (int d = 0; d < xs.rank; d++)
                ix[a->a[d]] = o[d];
            break;
        case OP_EXPAND:
            for (int d = 0; d < xs.rank; d++)
                ix[d] = xs.dim[d] == 1 ? 0 : o[d];
            break;
        case OP_SLICE:
            for (int d = 0; d < xs.rank; d++)
                ix[d] = a->a[d] + o[d] * a->b[d];
            break;
        case OP_PAD:
            for (int d = 0; d < xs.rank; d++) {
                ix[d] = o[d] - a->a[d];
                inside &= ix[d] >= 0 && ix[d] < xs.dim[d];
            }
            break;
        case OP_UNFOLD:   /* out[n,c,p,q,i,j] = x[n,c,p*sh+i-ph,q*sw+j-pw] */
            ix[0] = o[0];
            ix[1] = o[1];
            ix[2] = o[2] * a->sh + o[4] - a->ph;
            ix[3] = o[3] * a->sw + o[5] - a->pw;
            inside = ix[2] >= 0 && ix[2] < xs.dim[2] && ix[3] >= 0 && ix[3] < xs.dim[3];
            break;
        default:
            fail(n, "not a view");
        }
        out[i] = inside ? x[ravel(xs, ix)] : 0;
    }
}

/* FOLD: the adjoint of UNFOLD, every window element summed into its pixel */
static void eval_fold(const Node *n, const double *cols, double *out) {
    Shape cs = n->in[0]->shape;
    const Attr *a = &n->attr;
    int64_t total = shape_numel(cs), o[MAX_RANK];
    for (int64_t i = 0; i < total; i++) {
        unravel(cs, i, o);
        int64_t h = o[2] * a->sh + o[4] - a->ph, w = o[3] * a->sw + o[5] - a->pw;
        if (h < 0 || h >= n->shape.dim[2] || w < 0 || w >= n->shape.dim[3])
            continue;
        out[ravel(n->shape, (int64_t[]){o[0], o[1], h, w})] += cols[i];
    }
}

static void eval_matmul(const Node *n, const double *A, const double *B, double *out) {
    Shape as = n->in[0]->shape;
    int r = as.rank;
    int64_t M = as.dim[r - 2], K = as.dim[r - 1], N = n->shape.dim[r - 1];
    int64_t batch = 1;
    for (int d = 0; d < r - 2; d++)
        batch *= as.dim[d];
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += A[bi * M * K + i * K + k] * B[bi * K * N + k * N + j];
                out[bi * M * N + i * N + j] = s;
            }
}

/* The three convolutions share one loop nest over
 * (n, co, p, q, ci, i, j) with h = p*sh+i-ph, w = q*sw+j-pw:
 *   CONV2D             y[n,co,p,q]   += x[n,ci,h,w] * W[co,ci,i,j]
 *   CONV2D_BWD_INPUT   dx[n,ci,h,w]  += dy[n,co,p,q] * W[co,ci,i,j]
 *   CONV2D_BWD_WEIGHT  dW[co,ci,i,j] += x[n,ci,h,w] * dy[n,co,p,q] */
static void eval_conv(const Node *n, const double *in0, const double *in1, double *out) {
    const Attr *a = &n->attr;
    Shape xs, ys, ws;
    switch (n->op) {
    case OP_CONV2D: xs = n->in[0]->shape, ws = n->in[1]->shape, ys = n->shape; break;
    case OP_CONV2D_BWD_INPUT: ys = n->in[0]->shape, ws = n->in[1]->shape, xs = n->shape; break;
    default: xs = n->in[0]->shape, ys = n->in[1]->shape, ws = n->shape; break;
    }
    int64_t N = xs.dim[0], Ci = xs.dim[1], H = xs.dim[2], W = xs.dim[3];
    int64_t Co = ys.dim[1], OH = ys.dim[2], OW = ys.dim[3], KH = ws.dim[2], KW = ws.dim[3];
    for (int64_t b = 0; b < N; b++)
        for (int64_t co = 0; co < Co; co++)
            for (int64_t p = 0; p < OH; p++)
                for (int64_t q = 0; q < OW; q++)
                    for (int64_t ci = 0; ci < Ci; ci++)
                        for (int64_t i = 0; i < KH; i++)
                            for (int64_t j = 0; j < KW; j++) {
                                int64_t h = p * a->sh + i - a->ph, w = q * a->sw + j - a->pw;
                                if (h < 0 || h >= H || w < 0 || w >= W)
                                    continue;
                                int64_t xi = ((b * Ci + ci) * H + h) * W + w;
                                int64_t yi = ((b * Co + co) * OH + p) * OW + q;
                                int64_t wi = ((co * Ci + ci) * KH + i) * KW + j;
                                if (n->op == OP_CONV2D)
                                    out[yi] += in0[xi] * in1[wi];
                                else if (n->op == OP_CONV2D_BWD_INPUT)
                                    out[xi] += in0[yi] * in1[wi];
                                else
                                    out[wi] += in0[xi] * in1[yi];
                            }
}

/* GATHER out[pre, rest, post] = x[pre, idx[pre[:bd], rest], post]; SCATTER_ADD
 * is its adjoint. `big` is x's (or the scatter's output) shape and `small`
 * the gather output's (or the updates') shape. */
static void eval_gather(const Node *n, const double *idx, const double *src, double *out) {
    const Node *in = n->in[n->op == OP_GATHER ? 1 : 0];
    Shape is = in->shape;
    Shape big = n->op == OP_GATHER ? n->in[0]->shape : n->shape;
    Shape small = n->op == OP_GATHER ? n->shape : n->in[1]->shape;
    int axis = n->attr.axis, bd = n->attr.batch_dims, nrest = is.rank - bd;
    int64_t total = shape_numel(small), o[MAX_RANK], ii[MAX_RANK], xi[MAX_RANK];
    for (int64_t e = 0; e < total; e++) {
        unravel(small, e, o);
        for (int d = 0; d < bd; d++)
            ii[d] = o[d];
        for (int d = 0; d < nrest; d++)
            ii[bd + d] = o[axis + d];
        int64_t k = (int64_t)idx[ravel(is, ii)];
        if (k < 0)
            k = 0;
        if (k >= big.dim[axis])
            k = big.dim[axis] - 1;
        for (int d = 0; d < axis; d++)
            xi[d] = o[d];
        xi[axis] = k;
        for (int d = axis + 1; d < big.rank; d++)
            xi[d] = o[axis + nrest + d - axis - 1];
        if (n->op == OP_GATHER)
            out[e] = src[ravel(big, xi)];
        else
            out[ravel(big, xi)] += src[e];
    }
}

static void eval_node(const Node *n, double **vals, double *const *inputs, uint64_t seed, uint64_t counter) {
    int64_t total = shape_numel(n->shape);
    double *out = calloc((size_t)total + 1, sizeof(double));
    const double *x = n->nin > 0 ? vals[n->in[0]->id] : NULL;
    const double *y = n->nin > 1 ? vals[n->in[1]->id] : NULL;
    const double *z = n->nin > 2 ? vals[n->in[2]->id] : NULL;
    for (int k = 0; k < n->nin; k++)
        if (!vals[n->in[k]->id])
            fail(n, "an input was not evaluated before it (graph not in topological order?)");
    int64_t ix[MAX_RANK];
    switch (op_info[n->op].kind) {
    case OK_LEAF:
        for (int64_t i = 0; i < total; i++) {
            switch (n->op) {
            case OP_INPUT:
                if (!inputs || !inputs[n->attr.arg])
                    fail(n, "no values given for this argument");
                out[i] = inputs[n->attr.arg][i];
                break;
            case OP_CONST: out[i] = n->attr.value; break;
            case OP_IOTA:
                unravel(n->shape, i, ix);
                out[i] = n->shape.rank ? (double)ix[n->attr.axis] : 0;
                break;
            case OP_RAND_UNIFORM: out[i] = philox_uniform_at(seed, n->attr.stream, counter, (uint64_t)i, n->dtype == DT_F32); break;
            case OP_RAND_NORMAL: out[i] = philox_normal_at(seed, n->attr.stream, counter, (uint64_t)i); break;
            default: fail(n, "unknown leaf");
            }
        }
        break;
    case OK_ELEM:
        for (int64_t i = 0; i < total; i++) {
            if (n->op == OP_CAST)
                out[i] = cast_value(x[i], n->dtype);
            else
                out[i] = refeval_scalar(n->op, n->in[n->nin - 1]->dtype, x[i], y ? y[i] : 0, z ? z[i] : 0);
        }
        break;
    case OK_REDUCE: eval_reduce(n, x, out); break;
    case OK_VIEW: eval_view(n, x, out); break;
    case OK_OPAQUE:
        switch (n->op) {
        case OP_FOLD: eval_fold(n, x, out); break;
        case OP_MATMUL: eval_matmul(n, x, y, out); break;
        case OP_CONV2D:
        case OP_CONV2D_BWD_INPUT:
        case OP_CONV2D_BWD_WEIGHT: eval_conv(n, x, y, out); break;
        case OP_GATHER: eval_gather(n, y, x, out); break;
        case OP_SCATTER_ADD: eval_gather(n, x, y, out); break;
        case OP_ALLREDUCE_MEAN: memcpy(out, x, sizeof(double) * (size_t)total); break;   /* one rank */
        default: fail(n, "unknown opaque op");
        }
        break;
    }
    vals[n->id] = out;
}

/* Marks the end of a result array, so that refeval_free needs no graph (the
 * graph may have grown since). */
static double end_marker;

double **refeval_graph(const Graph *g, double *const *inputs, uint64_t seed, uint64_t counter) {
    double **vals = calloc((size_t)g->next_id + 1, sizeof(double *));
    vals[g->next_id] = &end_marker;
    for (int i = 0; i < g->nodes.len; i++) {
        const Node *n = g->nodes.data[i];
        if (n->id < 0 || n->id >= g->next_id || vals[n->id])
            fail(n, "bad or duplicate node id");
        eval_node(n, vals, inputs, seed, counter);
    }
    return vals;
}

double **refeval(const Entry *e, double *const *inputs, uint64_t seed, uint64_t counter) {
    return refeval_graph(e->g, inputs, seed, counter);
}

double *refeval_out(const Entry *e, double **vals, int arg) {
    const Node *o = e->args.data[arg].out;
    return o ? vals[o->id] : NULL;
}

void refeval_free(double **vals) {
    if (!vals)
        return;
    for (int i = 0; vals[i] != &end_marker; i++)
        free(vals[i]);
    free(vals);
}
