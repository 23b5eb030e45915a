/* backend_cuda.h: what the files of the CUDA backend share
 * (backend_cuda.c, backend_cuda_analysis.c, backend_cuda_render.c,
 * backend_cuda_prelude.c, backend_cuda_host.c). Nothing outside the backend
 * includes it; the public entry point is cuda_emit() in loopir.h. The design
 * is in docs/cuda.md.
 *
 * A CUDA program is a list of deduplicated kernels (CUDA C++ that is also
 * C, so that the host shim of the tests compiles it) spread over modules,
 * and one launch list per entry: kernel launches with their parameters and
 * GEMMs for cuBLAS or the generated tiled GEMM kernel (which also reads a
 * convolution's input as an implicit im2col matrix).
 */
#ifndef LETHE_BACKEND_CUDA_H
#define LETHE_BACKEND_CUDA_H

#include <stdarg.h>

#include "loopir.h"

/* ---------------------------------------------------------------------------
 * text */

typedef struct Sb {
    char *s;
    size_t len, cap;
} Sb;

void sb_puts(Sb *b, const char *s);
void sb_printf(Sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *sb_str(Sb *b);   /* "" for an empty builder */

/* ---------------------------------------------------------------------------
 * the program being built */

enum { CU_MAX_BLOCK = 256, CU_KERNELS_PER_MODULE = 48 };

typedef struct CuParam {
    int kind;              /* LETHE_CUDA_PTR / _SEED / _STEP */
    int buf;               /* LProgram buffer of a pointer; -1: the private scratch */
} CuParam;

typedef struct CuGemm {
    DType dtype;
    bool trans_a, trans_b;
    int64_t m, n, k, lda, ldb, ldc;
    double alpha, beta;
    int64_t batch, stride_a, stride_b, stride_c;   /* elements */
    int a_buf, b_buf, c_buf;
    int64_t a_off, b_off, c_off;                   /* elements */
    const LIm2col *im2col;                         /* NULL: B is strided */
    int64_t p0;                                    /* im2col: the first column */
} CuGemm;

typedef struct CuLaunch {
    int kind;              /* LETHE_CUDA_KERNEL / _GEMM / _ALLREDUCE */
    int kernel;            /* index into CuProgram.kernels */
    uint32_t grid, block;
    VEC(CuParam) params;
    CuGemm gemm;
    DType dtype;           /* ALLREDUCE: of params[0], `count` elements */
    int64_t count;
} CuLaunch;

typedef struct CuKernel {
    const char *name;
    const char *text;      /* the definition, with its host-shim thunk */
    int module;
    bool barriers;         /* calls __syncthreads */
} CuKernel;

typedef struct CuEntry {
    const LProgram *p;
    VEC(CuLaunch) launches;
    int64_t priv_bytes;    /* device scratch for LB_PRIVATE copies, after the workspace */
} CuEntry;

typedef struct CuModule {
    const char *source;
    const char *hash;      /* SHA-256 of source, hex */
    const uint8_t *cubin;  /* NULL: not compiled */
    size_t cubin_size;
} CuModule;

typedef struct CuProgram {
    const BackendOptions *opt;
    const char *arch;
    VEC(CuKernel) kernels;
    VEC(CuEntry) entries;
    VEC(CuModule) modules;
    VEC(const char *) options;   /* NVRTC options */
    int gemm_kernel[4];          /* GEMM kernel for f32, f64, and with im2col; -1: none yet */
    /* dedup: kernel bodies (without name) -> kernel index */
    const char **dedup_key;
    int *dedup_val;
    int dedup_cap, dedup_len;
} CuProgram;

/* backend_cuda_render.c: appends the launches of kernel k of p to ce,
 * adding kernels to cp. */
void cu_render_kernel(CuProgram *cp, CuEntry *ce, const LProgram *p, const LKernel *k, int entry_index);

/* backend_cuda.c: a kernel's text is "LK_KERNEL void <name>(<params>)<body>"
 * plus its host-shim thunk. Kernels with the same parameter types and body
 * are one kernel (layers of equal shapes share their code). ptypes are the
 * C types of the parameters (pointers without __restrict__, which is added);
 * returns the kernel's index. */
int cu_add_kernel(CuProgram *cp, const char *name, const char *comment, const char *const *ptypes, int nparams,
                  const char *body, bool barriers);
/* A kernel whose text is complete (the GEMM kernel). */
int cu_push_kernel(CuProgram *cp, const char *name, const char *text, bool barriers);

/* backend_cuda_host.c: the host object of the program (kind: obj, so, ll
 * or asm). */
void cu_emit_host(const CompUnit *cu, LProgram **progs, int nprogs, const CuProgram *cp, EmitKind kind,
                  const char *out_path);

/* The geometry of an implicit-im2col operand as the prelude's lk_conv and
 * lethe_cuda_im2col order it: c h w kh kw sh sw ph pw oh ow (backend_cuda.c;
 * the one place that reads LIm2col's fields). */
void cu_conv_geometry(const LIm2col *ic, int64_t g[11]);

/* backend_cuda_prelude.c */
const char *cu_prelude_text(void);             /* the helpers every module starts with */
/* the tiled GEMM kernel (B strided, or implicit im2col), added once */
int cu_gemm_kernel(CuProgram *cp, DType dt, bool im2col);


/* ---------------------------------------------------------------------------
 * backend_cuda_analysis.c: facts about a kernel's statements that decide how
 * a loop may be spread over the threads of a block.
 */

typedef struct CuVarInfo {
    const LStmt *def;      /* its LS_FOR or LS_LET */
    int64_t lo, hi;        /* value range of an I64 variable (lo > hi: unknown) */
} CuVarInfo;

typedef struct CuKernelInfo {
    const LProgram *p;
    const LKernel *k;
    CuVarInfo *var;        /* per variable */
    bool idx32;            /* every I64 value of the kernel fits in int */
} CuKernelInfo;

void cu_kernel_info(CuKernelInfo *ki, const LProgram *p, const LKernel *k);

/* How a serial loop may run on the threads of one block. */
typedef enum CuLoopClass {
    CL_SERIAL,             /* one thread runs it */
    CL_REDUCE,             /* only LETs, inner loops and reductions into
                              variables defined outside: threads take
                              iterations, then the partials are combined */
    CL_SPREAD,             /* iterations write distinct elements and read no
                              element another iteration writes */
} CuLoopClass;

/* The loops of a perfect nest starting at `loop` that can run together as
 * one flat index space: levels[0] = loop, levels[i + 1] the only statement
 * after the LETs of levels[i]'s body. Returns the class and the depth n >= 1
 * (CL_SERIAL: n = 0). Variables defined outside `loop` are taken to have
 * the same value in every iteration (they are the enclosing loops'). */
CuLoopClass cu_classify(const CuKernelInfo *ki, const LStmt *loop, const LStmt **levels, int *n);
/* The next level of a perfect nest: loop's body is LETs and then this serial
 * loop (NULL: it is not). */
const LStmt *cu_next_level(const LStmt *loop);

/* Reduction form of an assignment: acc = acc op x or x op acc with op
 * ADD, MAX or MIN; returns the op (OP_COUNT: not one) and the other operand. */
Op cu_reduction_op(const LStmt *assign, const LExpr **other);

/* Scalar work of a statement, for choosing between block and thread maps. */
double cu_work(const LStmt *s);

/* Statically evaluable I64 expression over the variables in env (values,
 * known[] flags): true and *out on success. */
bool cu_eval_static(const LExpr *e, const int64_t *env, const bool *known, int64_t *out);

/* Structural equality of two expressions. */
bool cu_expr_equal(const LExpr *a, const LExpr *b);

#endif
