/* graph.h: the graph IR, driven by the op table in ops.def.
 *
 * A graph is a flat SSA list of primitive tensor ops with static shapes, in
 * topological order (every input precedes its users). One graph per entry
 * point. All broadcasting is explicit: elementwise ops take inputs of one
 * shape; the builders (g_binary, ...) insert RESHAPE/EXPAND/CAST as needed.
 */
#ifndef LETHE_GRAPH_H
#define LETHE_GRAPH_H

#include <stdio.h>
#include "lethec.h"

enum { MAX_RANK = 8 };

typedef struct Shape {
    int rank;
    int64_t dim[MAX_RANK];
} Shape;

typedef enum Op {
#define X(e, name, arity, kind, dt, shape, grad, c) OP_##e,
#include "ops.def"
#undef X
    OP_COUNT
} Op;

typedef enum OpKind { OK_LEAF, OK_ELEM, OK_VIEW, OK_REDUCE, OK_OPAQUE } OpKind;
typedef enum DTypeRule { DR_SAME, DR_FLOAT, DR_CMP, DR_BOOL, DR_WHERE, DR_ATTR, DR_GATHER, DR_SCATTER } DTypeRule;

/* Attributes, one flat struct for every op (zeroed, so memcmp works for CSE).
 * Which fields an op reads:
 *   INPUT        arg (index into Entry.args)
 *   CONST        value
 *   IOTA         axis: value = index along `axis`
 *   RAND_*       stream: call-site id; element i of call number ctx->counter is
 *                philox_{uniform,normal}_at(ctx->seed, stream, ctx->counter, i)
 *   CAST         (node dtype is the target)
 *   SUM/RMAX/RMIN axes: bitmask of reduced axes; reduced dims stay, with size 1
 *   RESHAPE      shape: the new shape (same element count, row-major)
 *   PERMUTE      a[i]: out.dim[i] = in.dim[a[i]]
 *   EXPAND       shape: target (same rank; only size-1 dims grow)
 *   SLICE        a[i]: start, b[i]: step (>= 1), shape: element count per dim
 *   PAD          a[i]: zeros before, b[i]: zeros after (>= 0)
 *   UNFOLD       kh kw sh sw ph pw: x[N,C,H,W] -> [N,C,OH,OW,kh,kw],
 *                out[n,c,p,q,i,j] = x[n,c,p*sh+i-ph,q*sw+j-pw] (0 outside)
 *   FOLD         kh kw sh sw ph pw, shape = [N,C,H,W]: the adjoint of UNFOLD
 *                (sums every window element back into its pixel)
 *   MATMUL       a[..., M, K] @ b[..., K, N] -> [..., M, N], equal batch dims
 *   CONV2D       x[N,Ci,H,W], w[Co,Ci,kh,kw] -> [N,Co,OH,OW]; sh sw ph pw
 *                (kh kw are taken from w and also stored)
 *   CONV2D_BWD_INPUT   (dy[N,Co,OH,OW], w[Co,Ci,kh,kw]) -> shape [N,Ci,H,W]
 *   CONV2D_BWD_WEIGHT  (x[N,Ci,H,W], dy[N,Co,OH,OW]) -> [Co,Ci,kh,kw]
 *   GATHER       (x, idx:i32) axis, batch_dims:
 *                out = x.shape[:axis] ++ idx.shape[batch_dims:] ++ x.shape[axis+1:]
 *                with idx.shape[:batch_dims] == x.shape[:batch_dims] and
 *                batch_dims <= axis; indices are clamped into [0, dim)
 *   SCATTER_ADD  (idx:i32, upd) axis, batch_dims, shape: the adjoint of GATHER
 *                into a zero tensor of `shape`
 */
typedef struct Attr {
    double value;
    uint32_t axes;
    int axis, batch_dims;
    int arg;
    int64_t a[MAX_RANK], b[MAX_RANK];
    int64_t kh, kw, sh, sw, ph, pw;
    uint64_t stream;
    Shape shape;
} Attr;

typedef struct Node Node;
typedef struct GradCtx GradCtx;
struct Node {
    int id;                /* unique in its graph */
    Op op;
    DType dtype;
    Shape shape;
    int nin;
    Node *in[3];
    Attr attr;
    Loc loc;               /* the source expression that made it */
    const char *name;      /* INPUT: argument name; else optional label */
    /* scratch for passes; whoever uses a field resets it first */
    int nuses;
    Node *repl;
    void *aux;
    int64_t mark;
};

typedef struct OpInfo {
    const char *name;
    int arity;
    OpKind kind;
    DTypeRule dtype_rule;
    void (*shape)(Node *n);   /* validate inputs + attrs, set n->shape (and dtype) */
    void (*grad)(GradCtx *gc, Node *n, Node *dy, Node **dx);
    const char *c_template;
} OpInfo;
extern const OpInfo op_info[OP_COUNT];

/* ----------------------------------------------------------------------------
 * Entries: one compiled function of the program. The tracer (sema.c) builds
 * the graph and the argument list; passes rewrite the graph and keep
 * args[i].in / args[i].out pointing at live nodes.
 */
typedef struct EntryArg {
    const char *name, *binding, *path;   /* see lethe_arg in runtime/lethe_abi.h */
    int kind;                            /* lethe_kind */
    int access;                          /* lethe_access, derived from in/out */
    DType dtype;
    Shape shape;
    double scalar_default;               /* NaN if none */
    int layer, layer_counts;
    Node *in;    /* the INPUT node that reads it, NULL if never read */
    Node *out;   /* the node whose value it receives, NULL if not written */
} EntryArg;

typedef struct Graph {
    VEC(Node *) nodes;     /* topological order */
    int next_id;
} Graph;

typedef struct Entry {
    const char *name;
    const char *kind;      /* "fn", "rule", "rule_init", "objective", "init" */
    Loc loc;
    Graph *g;
    VEC(EntryArg) args;
    bool uses_rng;
} Entry;

typedef struct CompUnit {
    VEC(Entry *) entries;
    const char *experiment_json;  /* NULL if the file defines no experiment */
    const char *source_hash;
} CompUnit;

/* ----------------------------------------------------------------------------
 * graph.c: construction. Every g_* builder checks its inputs and reports
 * errors at `loc` with notes at the inputs' locations (chibicc style); shape
 * errors name both shapes.
 */
Graph *graph_new(void);
Node *node_new(Graph *g, Op op, DType dt, int nin, Node **in, const Attr *attr, Loc loc); /* runs the shape rule */
const char *shape_str(Shape s);                 /* "[4, 3]" */
const char *type_str(DType dt, Shape s);        /* "f32[4, 3]" */
int64_t shape_numel(Shape s);
bool shape_eq(Shape a, Shape b);
Shape shape_make(int rank, const int64_t *dims);
Shape shape_scalar(void);

Node *g_input(Graph *g, int arg, DType dt, Shape sh, const char *name, Loc loc);
Node *g_const(Graph *g, double v, DType dt, Shape sh, Loc loc);
Node *g_scalar(Graph *g, double v, DType dt, Loc loc);       /* rank 0 */
Node *g_iota(Graph *g, DType dt, Shape sh, int axis, Loc loc);
Node *g_rand(Graph *g, Op op, DType dt, Shape sh, uint64_t stream, Loc loc);

/* Elementwise with NumPy broadcasting. Dtypes: bool < i32 < f32 < f64; a
 * rank-0 CONST adapts to the other operand's dtype (so `2 * x` stays f32). */
Node *g_unary(Graph *g, Op op, Node *x, Loc loc);
Node *g_binary(Graph *g, Op op, Node *a, Node *b, Loc loc);
Node *g_where(Graph *g, Node *c, Node *a, Node *b, Loc loc);
Node *g_cast(Graph *g, Node *x, DType dt, Loc loc);

Node *g_reduce(Graph *g, Op op, Node *x, uint32_t axes, bool keep, Loc loc);
Node *g_reshape(Graph *g, Node *x, Shape sh, Loc loc);
Node *g_permute(Graph *g, Node *x, const int *perm, Loc loc);
Node *g_expand(Graph *g, Node *x, Shape sh, Loc loc);         /* same rank */
Node *g_broadcast_to(Graph *g, Node *x, Shape sh, Loc loc);   /* NumPy rules */
Node *g_sum_to(Graph *g, Node *x, Shape sh, Loc loc);         /* adjoint of g_broadcast_to */
Node *g_slice(Graph *g, Node *x, const int64_t *start, const int64_t *count, const int64_t *step, Loc loc);
Node *g_pad(Graph *g, Node *x, const int64_t *lo, const int64_t *hi, Loc loc);
Node *g_unfold(Graph *g, Node *x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc);
Node *g_fold(Graph *g, Node *cols, Shape out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc);
Node *g_matmul(Graph *g, Node *a, Node *b, Loc loc);          /* NumPy matmul: 1-D operands, batch broadcasting */
Node *g_conv2d(Graph *g, Node *x, Node *w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc);
Node *g_conv2d_bwd_input(Graph *g, Node *dy, Node *w, Shape xshape, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc);
Node *g_conv2d_bwd_weight(Graph *g, Node *x, Node *dy, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, Loc loc);
Node *g_gather(Graph *g, Node *x, Node *idx, int axis, int batch_dims, Loc loc);
Node *g_scatter_add(Graph *g, Node *idx, Node *upd, Shape out, int axis, int batch_dims, Loc loc);
Node *g_allreduce_mean(Graph *g, Node *x, Loc loc);           /* mean over data-parallel ranks */

void graph_toposort(Graph *g);                 /* restore topological order after appends */
void graph_dump(const Entry *e, FILE *out);   /* -d shapes / -d grad */

/* ----------------------------------------------------------------------------
 * autodiff.c: reverse mode as a graph-to-graph transform.
 *
 * Appends to g the nodes computing d(sum_i <seeds[i], ys[i]>)/d xs[j] and
 * stores them in out[j] (shape of xs[j]; a zero CONST when ys do not depend
 * on xs[j]). seeds may be NULL: then ys must be one scalar and the seed is 1.
 * xs may be any nodes, not only inputs. DETACH stops gradients. The result is
 * an ordinary graph, so autodiff can run on it again (grad of grad).
 */
struct GradCtx {
    Graph *g;
    Loc loc;               /* the grad(...) call, for errors and new nodes */
};
void autodiff(Graph *g, Node **ys, Node **seeds, int nys, Node **xs, int nxs, Node **out, Loc loc);

/* ----------------------------------------------------------------------------
 * passes/: graph -> graph. Each keeps Entry.args[].in/out valid. */
void pass_verify(Entry *e, const char *after);  /* internal_error on a broken invariant */
void pass_fold(Entry *e);        /* constant folding */
void pass_simplify(Entry *e);    /* algebra: x*1, x+0, x*0 (finite), detach, reshape chains, ... */
void pass_cse(Entry *e);         /* common subexpressions */
void pass_dce(Entry *e);         /* dead code */
void entry_replace_uses(Entry *e); /* apply Node.repl links (set by a pass) to every use */
/* pipeline.c: fold, simplify, CSE and DCE (twice), the verifier after each,
 * then arguments the graph no longer reads or writes leave the signature. */
void optimize_entry(Entry *e);

/* ----------------------------------------------------------------------------
 * sema.c + builtins.c: the tracer. Resolves names and imports, instantiates
 * modules with their compile-time arguments and evaluates every export (and
 * experiment) into an Entry whose graph has static shapes. */
typedef struct SemaOptions {
    bool promote_f64;            /* --f64: every f32 becomes f64 (gradient checks) */
    const char **include_dirs;   /* -I, searched after the importing file's folder */
    int ninclude;
    const char *experiment;      /* --experiment: which one to instantiate (NULL: the only one) */
    bool print_deps;             /* --deps: print every file read, one per line, to stdout */
    int world;                   /* --world: data-parallel ranks (0 or 1: one process) */
} SemaOptions;
CompUnit *sema_program(Program *p, const SemaOptions *opt);

/* ----------------------------------------------------------------------------
 * -d flags (main.c) */
enum {
    DUMP_AST = 1 << 0, DUMP_SHAPES = 1 << 1, DUMP_GRAD = 1 << 2, DUMP_OPT = 1 << 3,
    DUMP_FUSION = 1 << 4, DUMP_MEMORY = 1 << 5, DUMP_LOOPS = 1 << 6, DUMP_IR = 1 << 7,
};
extern unsigned dump_flags;
extern FILE *dump_file;    /* stderr unless -dump-to */

#endif
