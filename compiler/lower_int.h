/* lower_int.h: what the lowering files share (fusion.c, lower_view.c,
 * lower.c, lower_opaque.c, memplan.c). Nothing outside them includes it; the
 * public entry point is lower_entry() in loopir.h.
 *
 * The pipeline inside lower_entry:
 *   fusion_run      decide which nodes get a buffer (are "materialized") and
 *                   cut the graph into kernels, one per materialized node
 *   memplan_homes   order the kernels, put each value in an argument buffer
 *                   or a workspace temporary, repair in-place state hazards
 *   lower_kernel    one FKernel -> one LKernel (lower.c, lower_opaque.c)
 *   memplan_offsets workspace offsets from liveness over the kernel order
 */
#ifndef LETHE_LOWER_INT_H
#define LETHE_LOWER_INT_H

#include "loopir.h"

/* ----------------------------------------------------------------------------
 * lower_view.c: index maps (a ShapeTracker with one view).
 *
 * An IdxMap describes how a tensor of shape dim[0..rank) sits in a flat base
 * buffer: element idx is base[offset + sum_d stride[d] * idx[d]] when every
 * constraint 0 <= sum_d coef[d] * idx[d] + c < bound holds, and 0 otherwise.
 * PERMUTE, EXPAND, SLICE, PAD, UNFOLD and most RESHAPEs of such a map are
 * again such a map; a RESHAPE that would need div/mod is refused, and fusion
 * then materializes its input.
 */
enum { MAX_CONS = 16 };

typedef struct IdxCons {
    int64_t coef[MAX_RANK];
    int64_t c, bound;
} IdxCons;

typedef struct IdxMap {
    int rank;
    int64_t dim[MAX_RANK], stride[MAX_RANK];
    int64_t offset;
    int ncons;
    IdxCons cons[MAX_CONS];
} IdxMap;

IdxMap map_contig(Shape s);                         /* row-major, offset 0 */
IdxMap map_zero(Shape s);                           /* every stride 0 */
bool map_apply_view(IdxMap *m, const Node *view);   /* m over view->in[0] -> over view */
bool map_reshape(IdxMap *m, const int64_t *dims, int rank);
void map_permute(IdxMap *m, const int *perm);       /* new dim i is old dim perm[i] */
bool map_is_contig(const IdxMap *m);                /* row-major strides, no constraints */
bool map_is_identity(const IdxMap *m);              /* contiguous and offset 0 */
/* dims first.. row-major among themselves (earlier dims: any stride), no
 * constraints: per-image contiguity of a convolution operand */
bool map_contig_from(const IdxMap *m, int first);
/* The last two dims as a BLAS operand: row-major (trans false) or
 * column-major (trans true) with leading dimension *ld; no constraints. */
bool map_matrix(const IdxMap *m, bool *trans, int64_t *ld);
LExpr *map_index(const IdxMap *m, LExpr *const *idx);
LExpr *map_valid(const IdxMap *m, LExpr *const *idx);   /* NULL: always valid */
void map_dump(const IdxMap *m, FILE *out);

/* Interned stacks of pending views. Evaluating node n "under" stack s means
 * evaluating the views of s (outermost first) applied to n; a leaf's map is
 * composed by applying its views innermost first. Stack 0 is empty. Equal
 * ids mean equal view sequences, which is what common-subexpression
 * elimination inside a kernel keys on. */
typedef struct VStackEnt {
    int parent;
    const Node *view;
} VStackEnt;

typedef struct VStacks {
    VEC(VStackEnt) ent;
    int *table;        /* open addressing over ent indices + 1 */
    int tcap;
} VStacks;

void vstacks_init(VStacks *s);
int vstack_push(VStacks *s, int parent, const Node *view);
/* Apply the views of stack s to m (innermost first). On failure returns
 * false and names the view that could not be composed. */
bool vstack_compose(const VStacks *s, int stack, IdxMap *m, const Node **failed);

/* How a leaf is addressed: a buffer and RAND by their row-major element
 * index, IOTA by its index along the axis (LEAF_IOTA_LIN: from the
 * row-major index with div/mod, when the axis form does not compose),
 * CONST only by validity. */
typedef enum LeafForm { LEAF_BUFFER, LEAF_RAND, LEAF_IOTA, LEAF_IOTA_LIN, LEAF_CONST } LeafForm;
/* Compose the map of leaf n (a buffer if as_buffer) seen through stack.
 * false: a view could not be composed (*failed names it). */
bool leaf_compose(const VStacks *s, int stack, const Node *n, bool as_buffer, IdxMap *m, LeafForm *form,
                  const Node **failed);

/* ----------------------------------------------------------------------------
 * fusion.c: kernels and where values live.
 */
typedef enum KKind {
    KK_ELEM,     /* root ELEM, VIEW or leaf: elementwise loop nest */
    KK_REDUCE,   /* root SUM/RMAX/RMIN with its fused prologue */
    KK_OPAQUE,   /* MATMUL, CONV2D*, GATHER, SCATTER_ADD, FOLD */
    KK_COPY,     /* copy a buffer into another (outputs, state hazards) */
} KKind;

/* A buffer at plan level: an argument or a workspace temporary holding the
 * value of `node`. */
typedef struct FBuf {
    int arg;           /* >= 0: Entry.args index; -1: workspace temporary */
    const Node *node;  /* the value (shape, dtype, name) */
    int lbuf;          /* LProgram.bufs index once lowered, -1 before */
} FBuf;

typedef struct FRead {
    Node *n;           /* a materialized node (INPUT: the argument's old value) */
    bool identity;     /* every read is at the element the kernel writes */
} FRead;

typedef struct FKernel {
    KKind kind;
    /* The nodes computed (KK_COPY: the value copied) and where each is
     * stored. Only a KK_ELEM kernel has several: sibling updates of one shape
     * fused into one loop (fusion.c). */
    VEC(Node *) roots;
    VEC(FBuf *) dsts;
    FBuf *src;             /* KK_COPY: where it is read from */
    VEC(Node *) nodes;     /* root first, then the nodes inlined into it */
    VEC(FRead) reads;      /* materialized nodes it reads */
    VEC(int) deps;         /* indices (into Fusion.kernels) of producers */
    int index;             /* position in Fusion.kernels */
    /* A MATMUL kernel that also runs these consumers of its product, block
     * of rows by block of rows, so the product is never written (fuse_rows.c).
     * Its roots and dsts list theirs after its own. Empty: a plain kernel. */
    VEC(struct FKernel *) rows;
} FKernel;

#define KROOT(k) ((k)->roots.data[0])
#define KDST(k) ((k)->dsts.data[0])

typedef struct Fusion {
    const Entry *e;
    int nid;               /* node ids are < nid */
    Node **node;           /* by id (NULL: not in the graph) */
    unsigned char *live;   /* by id: needed by some written argument */
    unsigned char *mat;    /* by id: has a buffer */
    unsigned char *output; /* by id: the value of some written argument */
    int *producer;         /* by id: index of the kernel computing it, -1 */
    Node **alias;          /* by id: an output that is an identity view of this
                              materialized node shares its buffer (NULL: none) */
    FBuf **home;           /* by id: buffer holding a materialized node */
    FBuf **argbuf;         /* by arg: the argument's buffer */
    VEC(FKernel *) kernels;
} Fusion;

Fusion *fusion_run(const Entry *e);
void fusion_producers(Fusion *f);          /* renumber kernels, recompute producer[] */
void fusion_compact(Fusion *f, const int *owner);   /* drop merged kernels (owner[i] != i), renumber deps */
void fusion_dump(const Fusion *f, FILE *out);
bool fusion_is_cheap_leaf(const Node *n);  /* CONST, IOTA, RAND */
/* fuse_rows.c: GEMMs into their row-wise consumers (CPU backends only) */
void fuse_rows(Fusion *f);

/* ----------------------------------------------------------------------------
 * memplan.c */
void memplan_homes(Fusion *f);                  /* order, homes, state hazards */
void memplan_offsets(LProgram *p, FILE *dump);  /* dump: -d memory or NULL */

/* ----------------------------------------------------------------------------
 * lower.c + lower_opaque.c: one kernel at a time.
 */
typedef struct Lower {
    Fusion *f;
    LProgram *p;
    LowerOptions opt;
    VStacks vs;
} Lower;

/* Where statements go: the body of `loop`, or the kernel's top level when
 * loop is NULL. */
typedef struct Block {
    LKernel *k;
    LStmt *loop;
} Block;

/* Per-kernel state of the expression builder. */
typedef struct MemoEnt {
    int node, stack;       /* key; node -1 = empty slot */
    int uses;              /* counting pass: how often the key is evaluated */
    LExpr *val;            /* building pass: the value (a LET variable if uses > 1) */
} MemoEnt;

typedef struct KCtx {
    Lower *L;
    FKernel *fk;
    LKernel *k;
    const Node *root;      /* evaluated by its op; every other materialized node is a load */
    bool counting;         /* first pass: count uses, collect leaf maps */
    int ops;               /* counting pass: elementwise ops evaluated */
    VEC(IdxMap) maps;      /* counting pass: leaf maps in the root's index space */
    /* building pass */
    bool reshape_top;      /* leaf maps are reshaped to the iteration space */
    int irank;
    int64_t idim[MAX_RANK];
    const int *perm;       /* then permuted to loop order (NULL: none) */
    LExpr *idx[MAX_RANK];  /* the iteration space's index expressions */
    LExpr *extra_valid;    /* ANDed into every leaf's validity (NULL: none) */
    Block body;            /* where LETs go */
    /* a kernel with several roots evaluates them in order; a later root
     * reading an earlier one (at the same element) takes its value */
    int roots_done;
    LExpr **rootval;
    /* lower_rows.c: rows_src is read from the private block rows_buf at
     * rows_at instead of its buffer (NULL: no such node) */
    const Node *rows_src;
    int rows_buf;
    LExpr *rows_at;
    MemoEnt *memo;
    int memo_cap, memo_len;
} KCtx;

void kctx_init(KCtx *kc, Lower *L, FKernel *fk, LKernel *k, const Node *root);
void kctx_reset_memo(KCtx *kc);
/* The value of n (under stack) at kc->idx, building LETs into kc->body. */
LExpr *lower_eval(KCtx *kc, const Node *n, int stack);
void lower_root_values(KCtx *kc, LKernel *k, Node *const *roots, int nr, Block body);
/* A reduction's identity (lower.c) and one step of it: acc op v. */
LExpr *reduce_init(Op op, DType dt);
LExpr *reduce_combine(Op op, DType dt, LExpr *acc, LExpr *v);
/* The offset of a batched GEMM operand at batch indices bidx[0..nb) (lower_opaque.c). */
LExpr *gemm_off(const IdxMap *m, LExpr *const *bidx, int nb);
/* Buffer index of a materialized node. */
int lower_buf_of(Lower *L, const Node *n);
int lower_scratch(Lower *L, const char *name, DType dt, int64_t nelem);
int lower_private(Lower *L, const char *name, DType dt, int64_t nelem);   /* LB_PRIVATE */
/* Loop helpers. An "outer" nest is one flattened loop over dims (parallel
 * when work >= parallel_min_work and the extent is >= 2) that defines the
 * per-dim indices with div/mod; a "serial" nest is one loop per dim. Both
 * open their loops in block b and return the innermost body. Size-1 dims
 * get index 0; *lin is the row-major index over dims. */
Block blk_top(LKernel *k);
void blk_push(Block b, LStmt *s);
Block nest_outer(Block b, const int64_t *dims, int n, double work, const LowerOptions *opt, LExpr **idx, LExpr **lin);
Block nest_serial(Block b, const int64_t *dims, int n, LExpr **idx, LExpr **lin);
LExpr *iconst(int64_t v);
LExpr *iadd(LExpr *a, LExpr *b);
LExpr *imul(LExpr *a, int64_t b);
LExpr *isub(LExpr *a, int64_t b);
LExpr *idiv(LExpr *a, int64_t b);
LExpr *imod(LExpr *a, int64_t b);
LExpr *ilt(LExpr *a, LExpr *b);
LExpr *ile(LExpr *a, LExpr *b);
LExpr *isel(LExpr *c, LExpr *a, LExpr *b);   /* I64 where */
LExpr *band(LExpr *a, LExpr *b);             /* NULL-tolerant AND */
/* 0 <= e < bound, testing only the sides that can fail given e's range
 * [emin, emax]; NULL when none can */
LExpr *in_range(LExpr *e, int64_t emin, int64_t emax, int64_t bound);
LExpr *let_i64(Block b, LExpr *e);           /* e, or a LET of it */
/* A top-level loop over independent items, parallel when `work` reaches
 * parallel_min_work; a serial loop in b. No loop for extent 1: *var is 0. */
Block blk_open_loop(LKernel *k, int64_t extent, double work, const LowerOptions *opt, LExpr **var);
Block open_loop(Block b, int64_t extent, LExpr **var);

/* lower_opaque.c: the OPAQUE ops, and operand helpers for lower_conv.c */
void lower_opaque(Lower *L, FKernel *fk, LKernel *k);
/* A materialized operand seen through its views: its buffer and the map of
 * the operand's index space into it; false if it rests on a CONST, IOTA or
 * RAND. need_buffer: the same, an internal error if not a buffer. */
bool operand_buffer(Lower *L, const Node *n, IdxMap *m, int *buf);
void need_buffer(Lower *L, const Node *n, IdxMap *m, int *buf);
/* operand n (views of a buffer or a cheap leaf) at idx, in block b, with an
 * extra validity (NULL: none) */
LExpr *read_at(KCtx *kc, Block b, const Node *n, LExpr **idx, int rank, LExpr *valid);
void zero_fill(Lower *L, LKernel *k, int buf, int64_t from, int64_t n);

/* lower_rows.c: a kernel with FKernel.rows; rows_block is how many rows of
 * an m x n product of dtype dt one iteration computes (a divisor of m; 0:
 * not even one row fits the private scratch) */
void lower_rows(Lower *L, FKernel *fk, LKernel *k);
int64_t rows_block(int64_t m, int64_t n, DType dt);

/* lower_conv.c */
void lower_conv2d(Lower *L, KCtx *kc, const Node *n);
void lower_conv2d_bwd_input(Lower *L, KCtx *kc, const Node *n);
void lower_conv2d_bwd_weight(Lower *L, KCtx *kc, const Node *n);
/* Bytes of im2col columns one private tile holds (256 KiB, an L2 share),
 * and one workspace chunk (top_gemms: 64 MiB); the tests lower them to
 * exercise row tiles, K blocks and chunks. */
extern int64_t lower_conv_tile_bytes, lower_conv_chunk_bytes;

#endif
