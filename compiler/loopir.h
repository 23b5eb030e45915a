/* loopir.h: the loop IR, the one thing both backends read.
 *
 * lower.c turns each fused group of graph nodes into a kernel: a small tree of
 * loops, scalar lets, loads, stores and library GEMM calls over flat buffers.
 * backend_llvm.c renders it through the LLVM C API; backend_cuda.c renders
 * the same kernels as CUDA C (docs/cuda.md). Nothing here knows about LLVM
 * or CUDA.
 *
 * Semantics, precisely:
 *  - A buffer is a flat array of `nelem` elements of `dtype`. LB_ARG buffers
 *    are the entry's arguments (args[arg]); LB_WORKSPACE buffers live at
 *    `offset` bytes (a multiple of 64) inside the workspace. Two distinct
 *    buffers used by one kernel never overlap in memory (the memory planner
 *    guarantees it), so backends may mark them noalias.
 *  - LB_PRIVATE buffers are scratch owned by the iterations of one top-level
 *    LS_FOR (parallel or serial) of one kernel: every use (load, store, GEMM
 *    operand) lies inside that loop, the contents are undefined at the start
 *    of each iteration, and an iteration reads only elements it wrote itself.
 *    So iterations never communicate through it, and a backend may give each
 *    thread (CUDA: each block) its own copy, e.g. a stack array; it has no
 *    offset and takes no workspace. The private buffers of one loop take at
 *    most LOOPIR_PRIVATE_MAX_BYTES together. Writes to it by different
 *    iterations of a parallel loop are not a conflict.
 *  - Variables are numbered per kernel (0..nvars-1), each with a dtype. Loop
 *    variables are DT_I64. Every variable is defined exactly once (by its
 *    LS_FOR or its LS_LET) before use; LS_ASSIGN updates a variable already
 *    defined by LS_LET (reduction accumulators).
 *  - Index expressions are DT_I64 LE_OP trees using ADD SUB MUL DIV MOD and
 *    comparisons/AND/WHERE; DIV and MOD are only applied to non-negative values.
 *  - LE_LOAD reads buf[index] (element index). With `valid` set, the value is
 *    `valid ? buf[index] : 0` and memory is NOT touched when valid is false
 *    (backends clamp or predicate the address).
 *  - LE_OP applies an op of ops.def to scalars. Operand dtypes follow the op's
 *    dtype rule; CAST converts a[0] to the expression's dtype (float->int
 *    truncates, ->bool is != 0).
 *  - LE_RAND: op is OP_RAND_UNIFORM or OP_RAND_NORMAL; a[0] is the element
 *    index (DT_I64); the value is philox_*_at(ctx->seed, stream, ctx->counter,
 *    index) from runtime/philox.h, rounded to the expression's dtype.
 *  - LS_FOR with `parallel` set may only appear at the top level of a kernel.
 *    Its iterations are independent (they write disjoint elements and use no
 *    accumulating store on a shared element), and its body refers only to
 *    variables it defines (its loop variable included). The backend may run
 *    chunks [begin, end) of it on ctx->parallel_for.
 *  - LS_GEMM computes C = alpha * op(A) @ op(B) + beta * C on row-major
 *    sub-matrices starting at element offsets a_off/b_off/c_off (I64
 *    expressions, may use enclosing loop variables), op = transpose if trans_*.
 *    A,B,C share the dtype (f32 or f64). beta is 0 or 1 (beta 0 never reads
 *    C). A GEMM may stand anywhere, also inside a parallel loop: there it is
 *    one iteration's work and runs on that iteration's thread (it must not
 *    start threads of its own); elsewhere a backend may spread it over
 *    threads. Operands may be LB_PRIVATE buffers of the enclosing loop.
 *  - LS_GEMM with b_im2col set reads B in place as the column matrix of a
 *    stride-1 convolution that keeps the width (implicit im2col) instead of
 *    a strided matrix. With X = b_buf + b_off an image of c channels of
 *    h x w (contiguous), a kernel kh x kw with padding ph, pw where
 *    2*pw == kw - 1, and oh = h + 2*ph - kh + 1 output rows, the column
 *    matrix is, for rows r = (ci*kh + i)*kw + j (r < c*kh*kw) and columns
 *    q = qh*w + qw (q < oh*w), with hh = qh + i - ph and ww = qw + j - pw:
 *        COL[r][q] = X[(ci*h + hh)*w + ww] if 0 <= hh < h and 0 <= ww < w,
 *                    else 0 (memory outside is not touched).
 *    Without trans_b, B (k x n) is B[r][jj] = COL[r][p0 + jj], and k is
 *    c*kh*kw; with trans_b, B (n x k, op(B) = B^T) is B[r][kk] =
 *    COL[r][p0 + kk], and n is c*kh*kw. p0 is an I64 expression; the columns
 *    used lie in [0, oh*w). ldb is unused. A block of input channels
 *    [ci0, ci0 + c) of a larger image is b_off advanced by ci0*h*w. (Within
 *    one input row, consecutive columns read consecutive elements of X:
 *    backends read vectors of COL with masked loads.)
 *  - Kernels run one after another in LProgram order; a kernel sees every
 *    write of the kernels before it.
 */
#ifndef LETHE_LOOPIR_H
#define LETHE_LOOPIR_H

#include "graph.h"

typedef enum LBufKind { LB_ARG, LB_WORKSPACE, LB_PRIVATE } LBufKind;

/* Bytes of LB_PRIVATE buffers one top-level loop may use (see above): small
 * enough for any thread's stack, large enough for an im2col tile in L2. */
#define LOOPIR_PRIVATE_MAX_BYTES ((int64_t)1 << 20)

typedef struct LBuf {
    LBufKind kind;
    int arg;               /* LB_ARG: index into Entry.args */
    uint64_t offset;       /* LB_WORKSPACE: bytes, multiple of 64 */
    DType dtype;
    int64_t nelem;
    const char *name;      /* for dumps: the arg name or "t<node id>" */
} LBuf;

typedef enum LExprKind { LE_CONST, LE_VAR, LE_LOAD, LE_OP, LE_RAND } LExprKind;

typedef struct LExpr LExpr;
struct LExpr {
    LExprKind kind;
    DType dtype;
    double cval;           /* LE_CONST, floating dtypes */
    int64_t ival;          /* LE_CONST, integer and bool dtypes */
    int var;               /* LE_VAR */
    int buf;               /* LE_LOAD: index into LProgram.bufs */
    LExpr *index;          /* LE_LOAD */
    LExpr *valid;          /* LE_LOAD: NULL = always valid */
    Op op;                 /* LE_OP, LE_RAND */
    LExpr *a[3];           /* LE_OP operands; LE_RAND: a[0] = element index */
    uint64_t stream;       /* LE_RAND */
};

typedef enum LStmtKind { LS_FOR, LS_LET, LS_ASSIGN, LS_STORE, LS_GEMM } LStmtKind;

/* B of an LS_GEMM as the column matrix of a convolution (see above). */
typedef struct LIm2col {
    int64_t c, h, w;                   /* the image */
    int64_t kh, kw, ph, pw;            /* the convolution (stride 1, 2*pw == kw - 1) */
    int64_t oh;                        /* output rows; the output is oh x w */
    LExpr *p0;                         /* first column (output pixel) */
} LIm2col;

typedef struct LGemm {
    bool trans_a, trans_b;
    int64_t m, n, k;
    double alpha, beta;
    int a_buf, b_buf, c_buf;
    LExpr *a_off, *b_off, *c_off;
    int64_t lda, ldb, ldc;
    const LIm2col *b_im2col;           /* NULL: B is a strided matrix */
} LGemm;

typedef struct LStmt LStmt;
struct LStmt {
    LStmtKind kind;
    int var;               /* LS_FOR: loop var; LS_LET/LS_ASSIGN: the variable */
    int64_t extent;        /* LS_FOR: var runs over [0, extent) */
    bool parallel;         /* LS_FOR */
    VEC(LStmt *) body;     /* LS_FOR */
    int buf;               /* LS_STORE */
    LExpr *index;          /* LS_STORE */
    LExpr *value;          /* LS_STORE, LS_LET, LS_ASSIGN */
    bool accumulate;       /* LS_STORE: buf[index] += value */
    LGemm gemm;            /* LS_GEMM */
};

typedef struct LKernel {
    const char *name;      /* unique in the program: "k3_reduce_sum" */
    VEC(LStmt *) body;
    VEC(DType) vars;       /* dtype of each variable */
    const char *what;      /* for dumps: the graph nodes it computes */
    double flops;          /* rough count, for dumps and benchmarks */
    /* After the body: ctx->allreduce(ctx, allreduce_buf, nelem, dtype) when
     * the runtime installed one (ALLREDUCE_MEAN, lower_opaque.c). */
    bool allreduce;
    int allreduce_buf;
} LKernel;

typedef struct LProgram {
    const Entry *entry;
    VEC(LBuf) bufs;
    VEC(LKernel *) kernels;
    uint64_t workspace_bytes;
} LProgram;

/* loopir.c: constructors and the -d loops dump. */
LExpr *le_const_f(DType dt, double v);
LExpr *le_const_i(DType dt, int64_t v);   /* DT_I64 / DT_I32 / DT_BOOL */
LExpr *le_var(LKernel *k, int var);
LExpr *le_load(LProgram *p, int buf, LExpr *index, LExpr *valid);
LExpr *le_op1(Op op, DType dt, LExpr *a);
LExpr *le_op2(Op op, DType dt, LExpr *a, LExpr *b);  /* folds I64 constants, x*1, x+0 */
LExpr *le_op3(Op op, DType dt, LExpr *a, LExpr *b, LExpr *c);
LExpr *le_rand(Op op, DType dt, uint64_t stream, LExpr *index);
int lk_new_var(LKernel *k, DType dt);
LStmt *ls_for(LKernel *k, int64_t extent, bool parallel, int *var_out);
LStmt *ls_let(LKernel *k, DType dt, LExpr *value, int *var_out);
LStmt *ls_assign(int var, LExpr *value);
LStmt *ls_store(int buf, LExpr *index, LExpr *value, bool accumulate);
LStmt *ls_gemm(const LGemm *gm);
LKernel *lk_new(LProgram *p, const char *name);
int lp_add_buf(LProgram *p, LBuf b);
void loopir_dump(const LProgram *p, FILE *out);
void loopir_verify(const LProgram *p);   /* internal_error on a broken invariant */

/* A kernel's key: a canonical serialization of its statements with buffers
 * numbered by first use and described by kind, dtype and size. Two kernels
 * with equal keys (of any programs) compute the same thing on the buffers
 * `bufs` lists, position for position, so a backend may emit one function
 * for both (an equal layer of two training rules, a forward pass shared by
 * an unlearning method and the evaluation). */
typedef struct LKernelKey {
    VEC(uint64_t) words;
    VEC(int) bufs;          /* program buffers in the order of their first use */
    uint64_t hash;
} LKernelKey;
LKernelKey lk_key(const LProgram *p, const LKernel *k);
bool lk_key_equal(const LKernelKey *a, const LKernelKey *b);

/* lower.c + fusion.c + memplan.c: graph -> loop IR. */
typedef struct LowerOptions {
    int64_t parallel_min_work;  /* below this many scalar ops a loop stays serial */
    /* GEMMs only at the top level of kernels and over workspace buffers: no
     * GEMM inside a parallel loop, no LB_PRIVATE buffer, no im2col operand
     * (convolutions then build columns in the workspace). For backends that
     * launch GEMMs from the host (CUDA); the LLVM backend runs the others
     * faster (lower_conv.c). */
    bool top_gemms;
} LowerOptions;
LProgram *lower_entry(const Entry *e, const LowerOptions *opt);

/* backend_llvm.c: loop IR -> object file / shared object / IR / assembly. */
typedef enum EmitKind { EMIT_OBJ, EMIT_SO, EMIT_LL, EMIT_ASM, EMIT_HEADER, EMIT_CU } EmitKind;
typedef struct BackendOptions {
    int opt_level;              /* 0..3 */
    const char *cpu;            /* NULL: the host CPU; e.g. "x86-64-v3" */
    const char *features;       /* NULL: host features when cpu is NULL, else none */
    bool fast_math;             /* reassoc/contract/afn etc. on float math */
    const char *program_symbol; /* "lethe_program" by default */
    const char *cuda_arch;      /* cuda_emit: "sm_90" by default */
    const char *nvrtc_flags;    /* cuda_emit: extra NVRTC options, space-separated */
    /* llvm_emit of obj and so: the kernels in split_modules modules besides
     * the entries' (0: the default, 8; 1: one module), compiled on `jobs`
     * threads (0: one per online CPU); the output does not depend on jobs */
    int split_modules;
    int jobs;
} BackendOptions;
/* Emits every program of `cu` into one output. Errors are reported with
 * error_noloc. */
void llvm_emit(const CompUnit *cu, LProgram **progs, int nprogs, EmitKind kind,
               const char *out_path, const BackendOptions *opt);
/* backend_cuda.c: loop IR -> CUDA kernels compiled by NVRTC, and a host
 * object (obj, so, ll, asm) whose program table runs them through
 * lethe_ctx.device (runtime/lethe_abi.h, docs/cuda.md); EMIT_CU writes the
 * CUDA source; EMIT_HEADER is emit_header's. Lowering for this target should
 * use LowerOptions.parallel_min_work = 1, so that every loop that may run in
 * parallel is marked so. */
void cuda_emit(const CompUnit *cu, LProgram **progs, int nprogs, EmitKind kind, const char *out_path,
               const BackendOptions *opt);
/* header.c: the --emit=header C header (argument indices per entry). */
void emit_header(const CompUnit *cu, LProgram **progs, int nprogs, const char *out_path, const char *program_symbol);

#endif
