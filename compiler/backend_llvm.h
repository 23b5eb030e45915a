/* backend_llvm.h: what the files of the LLVM backend share (backend_llvm.c,
 * backend_llvm_abi.c, llvm_math.c). Nothing outside the backend includes it;
 * the public entry point is llvm_emit() in loopir.h.
 */
#ifndef LETHE_BACKEND_LLVM_H
#define LETHE_BACKEND_LLVM_H

#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>

#include "loopir.h"

/* One compilation: one LLVMContext, one module, one target machine. */
typedef struct LL {
    LLVMContextRef ctx;
    LLVMModuleRef mod;
    LLVMTargetMachineRef tm;
    LLVMTargetDataRef td;
    char *triple, *cpu, *features;   /* LLVMDisposeMessage'd at the end */
    const BackendOptions *opt;
    LLVMTypeRef t_void, t_i1, t_i8, t_i32, t_i64, t_f32, t_f64, t_ptr;
    /* lazily created helpers of llvm_math.c: [LLMath][f32, f64], [kind] */
    LLVMValueRef math_fn[4][2];
    LLVMValueRef rand_fn[3];
    /* the kernel profile of backend_llvm_abi.c: the table (mutable) and,
     * per program, its [nkernels x i64] nanosecond counters */
    LLVMValueRef prof_table;
    VEC(LLVMValueRef) prof_ns;
    /* the GEMM functions of backend_llvm_gemm.c, by shape */
    VEC(LGemm) gemm_keys;
    VEC(DType) gemm_dts;
    VEC(LLVMValueRef) gemm_fns;
    /* the kernel functions emitted so far, by key (loopir.h's lk_key) */
    VEC(LKernelKey) kernel_keys;
    VEC(LLVMValueRef) kernel_fns;
    /* NULL: every function in this module; else the kernels go to the
     * partition modules of backend_llvm_split.c and this one declares them */
    struct LLSplit *split;
} LL;

/* backend_llvm.c: the target machine, module and types for the host CPU
 * (or opt->cpu) in a new context; on failure *err says why. LLVM's codegen
 * errors accumulate in *errs. ll_dispose frees everything ll_init made. */
bool ll_init(LL *ll, const BackendOptions *opt, const char *module_name, char **errs, char **err);
void ll_dispose(LL *ll);
/* Writes the module as kind (obj, so, ll, asm) to out_path; returns an
 * error message (and maybe a hint) or NULL. */
char *ll_emit_output(LL *ll, EmitKind kind, const char *out_path, char **hint);

/* backend_llvm.c: runs the optimisation pipeline of ll->opt on the module;
 * returns NULL or why it failed (malloc'd, as nothing here may touch the
 * arena: partitions run it on worker threads). */
char *ll_run_passes(LL *ll);
/* internal_error (with the module on stderr) unless ll's module verifies */
void ll_verify(LL *ll);

/* backend_llvm_split.c: one program's kernels compiled as several modules,
 * each in its own context, optimised and code-generated on a pool of
 * threads and linked into one object or shared object.
 *
 * llsplit_begin gives ll (already ll_init'ed) nparts partition modules;
 * kernel_fn and gen_program then ask llsplit_pick which partition builds a
 * new kernel or entry function (deterministic: for a kernel the partition
 * that already has one of its GEMM shapes, else the smallest so far,
 * measured in LLVM instructions), and llsplit_export makes the function
 * there a hidden global (renamed if its name is taken) and returns its
 * declaration in ll's module, which declares every such function. llsplit_finish verifies, compiles
 * every module on `jobs` threads and links the objects (main module first,
 * then the partitions in order, so the output does not depend on `jobs`);
 * it returns an error (and maybe a hint) or NULL, and frees the partitions. */
enum { LL_DEFAULT_SPLIT = 8 };
bool llsplit_begin(LL *ll, int nparts, char **err);
LL *llsplit_pick(LL *ll, const LProgram *p, const LKernel *k);
LLVMValueRef llsplit_export(LL *ll, LL *part, LLVMValueRef fn, LLVMTypeRef fnty_in_ll);
/* fn (a hidden global of any module) in ll's module: fn itself or a
 * declaration of it with type fnty (of ll's context) */
LLVMValueRef ll_function_in(LL *ll, LLVMValueRef fn, LLVMTypeRef fnty);
char *llsplit_finish(LL *ll, int jobs, EmitKind kind, const char *out_path, char **hint);
/* The objects objs[0..n) as kind (EMIT_OBJ: one relocatable object, by
 * `cc -r`; EMIT_SO: a shared object, by `cc -shared`) at out_path, written
 * under a temporary name and renamed; returns an error (and hint) or NULL. */
char *ll_link_objects(LLVMMemoryBufferRef *objs, int n, EmitKind kind, const char *out_path, char **hint);

/* backend_llvm.c: small shared helpers */
LLVMTypeRef ll_type(LL *ll, DType dt);          /* register type: bool is i1 */
LLVMValueRef ll_call_intrinsic(LL *ll, LLVMBuilderRef b, const char *name, LLVMTypeRef overload, LLVMValueRef *args,
                               int nargs);
LLVMValueRef ll_new_function(LL *ll, const char *name, LLVMTypeRef fnty, bool internal);
void ll_fn_attr(LL *ll, LLVMValueRef fn, const char *attr);
void ll_param_attr(LL *ll, LLVMValueRef fn, int param, const char *attr, uint64_t val);
/* void lethe.parallel(ctx, task, closure, n, grain): ctx->parallel_for, or
 * task(closure, 0, n) on this thread when the context has no pool */
LLVMValueRef ll_parallel_helper(LL *ll);

/* backend_llvm_gemm.c: LS_GEMM as generated code. llg_emit calls the GEMM
 * of gm (dtype dt) on the element pointers a, b, c (p0: the first column of
 * an im2col B, i64, else NULL); with ctx (not NULL) it
 * may spread the tiles over ctx->parallel_for, without it runs on this
 * thread. llg_supported: the shapes it generates (f32 or f64, not both
 * operands transposed); the others call BLAS. */
bool llg_supported(const LGemm *gm, DType dt);
/* has ll's module the generated GEMM function of gm (dtype dt) already? */
bool llg_defined(LL *ll, const LGemm *gm, DType dt);
void llg_emit(LL *ll, LLVMBuilderRef b, const LGemm *gm, DType dt, LLVMValueRef a, LLVMValueRef bp, LLVMValueRef c,
              LLVMValueRef p0, LLVMValueRef ctx);

/* llvm_math.c: vectorizable transcendentals and Philox, each an internal
 * always-inline function without fast-math flags, so that -O0 and -O3 (and
 * scalar and vector code) compute the same bits. `x` has type ll_type(dt),
 * dt is DT_F32 or DT_F64. */
typedef enum LLMath { LM_EXP, LM_LOG, LM_TANH, LM_POW } LLMath;   /* indexes LL.math_fn */
LLVMValueRef llm_call(LL *ll, LLVMBuilderRef b, LLMath f, DType dt, LLVMValueRef x, LLVMValueRef y);
/* philox_{uniform,normal}_at(seed, stream, step, index) of runtime/philox.h,
 * rounded to dt (DT_F32 or DT_F64); all operands i64. */
LLVMValueRef llm_rand(LL *ll, LLVMBuilderRef b, Op op, DType dt, LLVMValueRef seed, uint64_t stream, LLVMValueRef step,
                      LLVMValueRef index);

/* backend_llvm_abi.c: the constant `lethe_program` descriptor of
 * runtime/lethe_abi.h for programs progs[0..n) whose entry functions are
 * entry_fns[0..n). */
void ll_emit_descriptor(LL *ll, const CompUnit *cu, LProgram **progs, int n, LLVMValueRef *entry_fns,
                        const char *symbol);
/* The kernel profile (backend_llvm_abi.c): ll_profile_begin creates the
 * table global <symbol>_profile before the programs are generated; each
 * entry function calls its kernels through ll_profile_call; ll_profile_end
 * fills in the table once every program has its counters. */
void ll_profile_begin(LL *ll, const char *symbol);
/* ll_profile_calls: the calls of an entry function built in ll, which is
 * top or one of its partitions; the table and counters belong to top. */
void ll_profile_calls(LL *top, LL *ll, LLVMBuilderRef b, int prog, LLVMValueRef *kfn, int nkernels, LLVMValueRef *clo);
void ll_profile_end(LL *ll, LProgram **progs, int n);

#endif
