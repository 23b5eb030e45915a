/* backend_cuda_host.c: the host object of a CUDA program, through the LLVM C
 * API like the CPU backend's output, so that it links and loads the same way.
 *
 *   i32 @<sym>.<entry>(ptr args, ptr workspace, ptr ctx)      internal
 *       return ctx && ctx->device ? ctx->device->run(ctx, @<sym>.cuda.entry.E, args)
 *                                 : LETHE_NO_DEVICE
 *   @<sym>.cuda.entry.E    lethe_cuda_entry: arguments, workspace size, launches
 *   @<sym>.cuda.program    lethe_cuda_program: arch, NVRTC options, modules
 *                          (source, hash, CUBIN), kernel names
 *   @<sym>                 the lethe_program table, written by
 *                          ll_emit_descriptor (backend_llvm_abi.c) with
 *                          workspace_bytes 0 and target "cuda:<arch>"
 *
 * Every struct type mirrors runtime/lethe_abi.h field by field and is
 * checked against offsetof() of the C struct (lethec targets the machine it
 * runs on, as for CPU programs).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>

#include "backend_cuda.h"
#include "backend_llvm.h"
#include "lethe_abi.h"

typedef struct Host {
    LL ll;
    const char *sym;
    int nglobals;
    LLVMTypeRef module_t, program_t, ref_t, param_t, im2col_t, gemm_t, launch_t, arg_t, entry_t;
} Host;

static void check_layout(Host *h, LLVMTypeRef ty, const size_t *off, int n, size_t size, const char *what) {
    for (int i = 0; i < n; i++)
        if (LLVMOffsetOfElement(h->ll.td, ty, (unsigned)i) != off[i])
            internal_error(__FILE__, __LINE__, "%s field %d: LLVM offset %llu, C offset %zu", what, i,
                           LLVMOffsetOfElement(h->ll.td, ty, (unsigned)i), off[i]);
    if (LLVMABISizeOfType(h->ll.td, ty) != size)
        internal_error(__FILE__, __LINE__, "%s: LLVM size %llu, C size %zu", what, LLVMABISizeOfType(h->ll.td, ty), size);
}

static LLVMTypeRef struct_t(Host *h, const char *name, LLVMTypeRef *f, int n, const size_t *off, size_t size) {
    LLVMTypeRef t = LLVMStructCreateNamed(h->ll.ctx, name);
    LLVMStructSetBody(t, f, (unsigned)n, 0);
    check_layout(h, t, off, n, size, name);
    return t;
}

#define OFF(T, f) offsetof(T, f)

static void make_types(Host *h) {
    LL *ll = &h->ll;
    LLVMTypeRef P = ll->t_ptr, I32 = ll->t_i32, I64 = ll->t_i64, F64 = ll->t_f64;
    {
        LLVMTypeRef f[] = {P, P, P, I64};
        size_t o[] = {OFF(lethe_cuda_module, source), OFF(lethe_cuda_module, source_hash), OFF(lethe_cuda_module, cubin),
                      OFF(lethe_cuda_module, cubin_size)};
        h->module_t = struct_t(h, "lethe_cuda_module", f, 4, o, sizeof(lethe_cuda_module));
    }
    {
        LLVMTypeRef f[] = {P, P, I32, I32, P, P, P};
        size_t o[] = {OFF(lethe_cuda_program, arch), OFF(lethe_cuda_program, options), OFF(lethe_cuda_program, nmodules),
                      OFF(lethe_cuda_program, nkernels), OFF(lethe_cuda_program, modules),
                      OFF(lethe_cuda_program, kernel_names), OFF(lethe_cuda_program, kernel_module)};
        h->program_t = struct_t(h, "lethe_cuda_program", f, 7, o, sizeof(lethe_cuda_program));
    }
    {
        LLVMTypeRef f[] = {I32, I32, I64};
        size_t o[] = {OFF(lethe_cuda_ref, arg), OFF(lethe_cuda_ref, _pad), OFF(lethe_cuda_ref, offset)};
        h->ref_t = struct_t(h, "lethe_cuda_ref", f, 3, o, sizeof(lethe_cuda_ref));
    }
    {
        LLVMTypeRef f[] = {I32, I32, h->ref_t};
        size_t o[] = {OFF(lethe_cuda_param, kind), OFF(lethe_cuda_param, _pad), OFF(lethe_cuda_param, ref)};
        h->param_t = struct_t(h, "lethe_cuda_param", f, 3, o, sizeof(lethe_cuda_param));
    }
    {
        LLVMTypeRef f[12];
        size_t o[12];
        for (int i = 0; i < 12; i++)
            f[i] = I64, o[i] = (size_t)i * sizeof(int64_t);
        h->im2col_t = struct_t(h, "lethe_cuda_im2col", f, 12, o, sizeof(lethe_cuda_im2col));
        ASSERT(OFF(lethe_cuda_im2col, p0) == 11 * sizeof(int64_t));
    }
    {
        LLVMTypeRef f[] = {I32, I32, I32, I32, I64, I64, I64, I64, I64, I64, F64, F64, I64, I64, I64, I64,
                           h->ref_t, h->ref_t, h->ref_t, P};
        size_t o[] = {OFF(lethe_cuda_gemm, dtype), OFF(lethe_cuda_gemm, trans_a), OFF(lethe_cuda_gemm, trans_b),
                      OFF(lethe_cuda_gemm, _pad), OFF(lethe_cuda_gemm, m), OFF(lethe_cuda_gemm, n), OFF(lethe_cuda_gemm, k),
                      OFF(lethe_cuda_gemm, lda), OFF(lethe_cuda_gemm, ldb), OFF(lethe_cuda_gemm, ldc),
                      OFF(lethe_cuda_gemm, alpha), OFF(lethe_cuda_gemm, beta), OFF(lethe_cuda_gemm, batch),
                      OFF(lethe_cuda_gemm, stride_a), OFF(lethe_cuda_gemm, stride_b), OFF(lethe_cuda_gemm, stride_c),
                      OFF(lethe_cuda_gemm, a), OFF(lethe_cuda_gemm, b), OFF(lethe_cuda_gemm, c),
                      OFF(lethe_cuda_gemm, im2col)};
        h->gemm_t = struct_t(h, "lethe_cuda_gemm", f, 20, o, sizeof(lethe_cuda_gemm));
    }
    {
        LLVMTypeRef f[] = {I32, I32, I32, I32, I32, I32, P, P, I64};
        size_t o[] = {OFF(lethe_cuda_launch, kind),   OFF(lethe_cuda_launch, kernel),  OFF(lethe_cuda_launch, grid),
                      OFF(lethe_cuda_launch, block),  OFF(lethe_cuda_launch, nparams), OFF(lethe_cuda_launch, dtype),
                      OFF(lethe_cuda_launch, params), OFF(lethe_cuda_launch, gemm),    OFF(lethe_cuda_launch, count)};
        h->launch_t = struct_t(h, "lethe_cuda_launch", f, 9, o, sizeof(lethe_cuda_launch));
    }
    {
        LLVMTypeRef f[] = {I64, I32, I32};
        size_t o[] = {OFF(lethe_cuda_arg, bytes), OFF(lethe_cuda_arg, kind), OFF(lethe_cuda_arg, access)};
        h->arg_t = struct_t(h, "lethe_cuda_arg", f, 3, o, sizeof(lethe_cuda_arg));
    }
    {
        LLVMTypeRef f[] = {P, P, I32, I32, P, I64, P};
        size_t o[] = {OFF(lethe_cuda_entry, program), OFF(lethe_cuda_entry, name), OFF(lethe_cuda_entry, nargs),
                      OFF(lethe_cuda_entry, nlaunches), OFF(lethe_cuda_entry, args),
                      OFF(lethe_cuda_entry, workspace_bytes), OFF(lethe_cuda_entry, launches)};
        h->entry_t = struct_t(h, "lethe_cuda_entry", f, 7, o, sizeof(lethe_cuda_entry));
    }
}

/* ---------------------------------------------------------------------------
 * constants */

static LLVMValueRef i32v(Host *h, int64_t v) { return LLVMConstInt(h->ll.t_i32, (unsigned long long)v, 1); }
static LLVMValueRef i64v(Host *h, int64_t v) { return LLVMConstInt(h->ll.t_i64, (unsigned long long)v, 1); }
static LLVMValueRef nullp(Host *h) { return LLVMConstPointerNull(h->ll.t_ptr); }

static LLVMValueRef private_global(Host *h, LLVMValueRef init, unsigned align) {
    LLVMValueRef g = LLVMAddGlobal(h->ll.mod, LLVMTypeOf(init), xfmt("%s.cuda.%d", h->sym, h->nglobals++));
    LLVMSetInitializer(g, init);
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    if (align)
        LLVMSetAlignment(g, align);
    return g;
}

static LLVMValueRef bytes(Host *h, const void *data, size_t n, bool nul, unsigned align) {
    return private_global(h, LLVMConstStringInContext2(h->ll.ctx, data, n, nul ? 0 : 1), align);
}

static LLVMValueRef str(Host *h, const char *s) { return s ? bytes(h, s, strlen(s), true, 1) : nullp(h); }

static LLVMValueRef array(Host *h, LLVMTypeRef t, LLVMValueRef *v, int n) {
    return n ? private_global(h, LLVMConstArray2(t, v, (uint64_t)n), 8) : nullp(h);
}

/* the device workspace: the memory plan's, then the private scratch */
static uint64_t private_region(const LProgram *p) { return (p->workspace_bytes + 255) / 256 * 256; }

static LLVMValueRef ref(Host *h, const LProgram *p, int buf, int64_t elem_off) {
    if (buf < 0) {
        LLVMValueRef f[3] = {i32v(h, -1), i32v(h, 0), i64v(h, (int64_t)private_region(p))};
        return LLVMConstNamedStruct(h->ref_t, f, 3);
    }
    const LBuf *b = &p->bufs.data[buf];
    ASSERT(b->kind != LB_PRIVATE);
    uint64_t off = (uint64_t)(elem_off * dtype_size(b->dtype));
    LLVMValueRef f[3] = {i32v(h, b->kind == LB_ARG ? b->arg : -1), i32v(h, 0),
                         i64v(h, (int64_t)(b->kind == LB_ARG ? off : b->offset + off))};
    return LLVMConstNamedStruct(h->ref_t, f, 3);
}

static int32_t abi_dtype(DType dt) { return dt == DT_F64 ? LETHE_F64 : dt == DT_F32 ? LETHE_F32 : dt == DT_I32 ? LETHE_I32 : LETHE_BOOL; }

static LLVMValueRef program_desc(Host *h, const CuProgram *cp) {
    int nm = cp->modules.len, nk = cp->kernels.len;
    LLVMValueRef *mods = xalloc(sizeof(LLVMValueRef) * ((size_t)nm + 1));
    for (int m = 0; m < nm; m++) {
        const CuModule *md = &cp->modules.data[m];
        LLVMValueRef f[4] = {str(h, md->source), str(h, md->hash),
                             md->cubin ? bytes(h, md->cubin, md->cubin_size, false, 64) : nullp(h),
                             i64v(h, md->cubin ? (int64_t)md->cubin_size : 0)};
        mods[m] = LLVMConstNamedStruct(h->module_t, f, 4);
    }
    LLVMValueRef *names = xalloc(sizeof(LLVMValueRef) * ((size_t)nk + 1));
    LLVMValueRef *owner = xalloc(sizeof(LLVMValueRef) * ((size_t)nk + 1));
    for (int k = 0; k < nk; k++) {
        names[k] = str(h, cp->kernels.data[k].name);
        owner[k] = i32v(h, cp->kernels.data[k].module);
    }
    Sb opts = {0};
    for (int i = 0; i < cp->options.len; i++)
        sb_printf(&opts, "%s%s", i ? "\n" : "", cp->options.data[i]);
    LLVMValueRef f[7] = {str(h, cp->arch), str(h, sb_str(&opts)), i32v(h, nm), i32v(h, nk),
                         array(h, h->module_t, mods, nm), array(h, h->ll.t_ptr, names, nk), array(h, h->ll.t_i32, owner, nk)};
    return private_global(h, LLVMConstNamedStruct(h->program_t, f, 7), 8);
}

static LLVMValueRef launch_desc(Host *h, const LProgram *p, const CuLaunch *l) {
    int np = l->params.len;
    LLVMValueRef *params = xalloc(sizeof(LLVMValueRef) * ((size_t)np + 1));
    for (int i = 0; i < np; i++) {
        const CuParam *cpar = &l->params.data[i];
        LLVMValueRef r[3] = {i32v(h, -1), i32v(h, 0), i64v(h, 0)};
        LLVMValueRef rv = cpar->kind == LETHE_CUDA_PTR ? ref(h, p, cpar->buf, 0) : LLVMConstNamedStruct(h->ref_t, r, 3);
        LLVMValueRef f[3] = {i32v(h, cpar->kind), i32v(h, 0), rv};
        params[i] = LLVMConstNamedStruct(h->param_t, f, 3);
    }
    LLVMValueRef gemm = nullp(h);
    if (l->kind == LETHE_CUDA_GEMM) {
        const CuGemm *g = &l->gemm;
        LLVMValueRef im2col = nullp(h);
        if (g->im2col) {
            int64_t v[12];
            cu_conv_geometry(g->im2col, v);
            v[11] = g->p0;
            LLVMValueRef f[12];
            for (int i = 0; i < 12; i++)
                f[i] = i64v(h, v[i]);
            im2col = private_global(h, LLVMConstNamedStruct(h->im2col_t, f, 12), 8);
        }
        LLVMValueRef f[20] = {
            i32v(h, abi_dtype(g->dtype)), i32v(h, g->trans_a), i32v(h, g->trans_b), i32v(h, 0),
            i64v(h, g->m), i64v(h, g->n), i64v(h, g->k), i64v(h, g->lda), i64v(h, g->ldb), i64v(h, g->ldc),
            LLVMConstReal(h->ll.t_f64, g->alpha), LLVMConstReal(h->ll.t_f64, g->beta),
            i64v(h, g->batch), i64v(h, g->stride_a), i64v(h, g->stride_b), i64v(h, g->stride_c),
            ref(h, p, g->a_buf, g->a_off), ref(h, p, g->b_buf, g->b_off), ref(h, p, g->c_buf, g->c_off), im2col,
        };
        gemm = private_global(h, LLVMConstNamedStruct(h->gemm_t, f, 20), 8);
    }
    int dtype = l->kind == LETHE_CUDA_ALLREDUCE ? abi_dtype(l->dtype) : 0;
    LLVMValueRef f[9] = {i32v(h, l->kind), i32v(h, l->kernel), i32v(h, l->grid), i32v(h, l->block), i32v(h, np), i32v(h, dtype),
                         array(h, h->param_t, params, np), gemm, i64v(h, l->count)};
    return LLVMConstNamedStruct(h->launch_t, f, 9);
}

static LLVMValueRef entry_desc(Host *h, const CuEntry *ce, LLVMValueRef program) {
    const LProgram *p = ce->p;
    const Entry *e = p->entry;
    LLVMValueRef *args = xalloc(sizeof(LLVMValueRef) * ((size_t)e->args.len + 1));
    for (int a = 0; a < e->args.len; a++) {
        const EntryArg *ea = &e->args.data[a];
        LLVMValueRef f[3] = {i64v(h, shape_numel(ea->shape) * dtype_size(ea->dtype)), i32v(h, ea->kind), i32v(h, ea->access)};
        args[a] = LLVMConstNamedStruct(h->arg_t, f, 3);
    }
    int nl = ce->launches.len;
    LLVMValueRef *ls = xalloc(sizeof(LLVMValueRef) * ((size_t)nl + 1));
    for (int i = 0; i < nl; i++)
        ls[i] = launch_desc(h, p, &ce->launches.data[i]);
    LLVMValueRef f[7] = {program, str(h, e->name), i32v(h, e->args.len), i32v(h, nl), array(h, h->arg_t, args, e->args.len),
                         i64v(h, (int64_t)(ce->priv_bytes ? private_region(p) + (uint64_t)ce->priv_bytes : p->workspace_bytes)),
                         array(h, h->launch_t, ls, nl)};
    return private_global(h, LLVMConstNamedStruct(h->entry_t, f, 7), 8);
}

/* ---------------------------------------------------------------------------
 * entry functions */

static LLVMValueRef field_ptr(Host *h, LLVMBuilderRef b, LLVMValueRef base, size_t off) {
    LLVMValueRef idx = i64v(h, (int64_t)off);
    return LLVMBuildInBoundsGEP2(b, h->ll.t_i8, base, &idx, 1, "");
}

static LLVMValueRef thunk(Host *h, const char *name, LLVMValueRef desc) {
    LL *ll = &h->ll;
    LLVMTypeRef pt[3] = {ll->t_ptr, ll->t_ptr, ll->t_ptr};
    LLVMValueRef fn = ll_new_function(ll, name, LLVMFunctionType(ll->t_i32, pt, 3, 0), true);
    LLVMBuilderRef b = LLVMCreateBuilderInContext(ll->ctx);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ll->ctx, fn, "entry");
    LLVMBasicBlockRef has_ctx = LLVMAppendBasicBlockInContext(ll->ctx, fn, "has_ctx");
    LLVMBasicBlockRef run = LLVMAppendBasicBlockInContext(ll->ctx, fn, "run");
    LLVMBasicBlockRef none = LLVMAppendBasicBlockInContext(ll->ctx, fn, "no_device");
    LLVMValueRef args = LLVMGetParam(fn, 0), ctx = LLVMGetParam(fn, 2);
    LLVMPositionBuilderAtEnd(b, entry);
    LLVMBuildCondBr(b, LLVMBuildIsNull(b, ctx, ""), none, has_ctx);
    LLVMPositionBuilderAtEnd(b, has_ctx);
    LLVMValueRef dev = LLVMBuildLoad2(b, ll->t_ptr, field_ptr(h, b, ctx, offsetof(lethe_ctx, device)), "device");
    LLVMBuildCondBr(b, LLVMBuildIsNull(b, dev, ""), none, run);
    LLVMPositionBuilderAtEnd(b, run);
    LLVMValueRef runf = LLVMBuildLoad2(b, ll->t_ptr, field_ptr(h, b, dev, offsetof(lethe_device, run)), "run");
    LLVMValueRef cargs[3] = {ctx, desc, args};
    LLVMValueRef r = LLVMBuildCall2(b, LLVMFunctionType(ll->t_i32, pt, 3, 0), runf, cargs, 3, "");
    LLVMBuildRet(b, r);
    LLVMPositionBuilderAtEnd(b, none);
    LLVMBuildRet(b, i32v(h, LETHE_NO_DEVICE));
    LLVMDisposeBuilder(b);
    return fn;
}

/* ll_emit_descriptor writes a CPU target; a CUDA program names its arch */
static void set_target(Host *h, const char *target) {
    LLVMValueRef g = LLVMGetNamedGlobal(h->ll.mod, h->sym);
    ASSERT(g);
    LLVMValueRef init = LLVMGetInitializer(g);
    LLVMValueRef f[6];
    for (int i = 0; i < 6; i++)
        f[i] = LLVMGetOperand(init, (unsigned)i);
    ASSERT(offsetof(lethe_program, target) == 3 * 8);   /* field 4 of the LLVM struct */
    f[4] = str(h, target);
    LLVMSetInitializer(g, LLVMConstNamedStruct(LLVMTypeOf(init), f, 6));
}

/* ---------------------------------------------------------------------------
 * target machine and output */

void cu_emit_host(const CompUnit *cu, LProgram **progs, int nprogs, const CuProgram *cp, EmitKind kind,
                  const char *out_path) {
    const BackendOptions *opt = cp->opt;
    Host h = {.sym = opt->program_symbol ? opt->program_symbol : LETHE_PROGRAM_SYMBOL};
    char *diag_errs = NULL, *err = NULL, *hint = NULL;
    if (!ll_init(&h.ll, opt, "lethe_cuda_host", &diag_errs, &err)) {
        ll_dispose(&h.ll);
        error_noloc("%s", err);
    }
    make_types(&h);
    LLVMValueRef program = program_desc(&h, cp);
    LLVMValueRef *fns = xalloc(sizeof(LLVMValueRef) * ((size_t)nprogs + 1));
    LProgram **host = xalloc(sizeof(LProgram *) * ((size_t)nprogs + 1));
    for (int i = 0; i < nprogs; i++) {
        LLVMValueRef desc = entry_desc(&h, &cp->entries.data[i], program);
        const char *name = xfmt("%s.%s", h.sym, progs[i]->entry->name);
        fns[i] = thunk(&h, name, desc);
        /* the caller owes no host workspace: it lives on the device */
        host[i] = xalloc(sizeof(LProgram));
        *host[i] = *progs[i];
        host[i]->workspace_bytes = 0;
    }
    ll_emit_descriptor(&h.ll, cu, host, nprogs, fns, h.sym);
    set_target(&h, xfmt("cuda:%s", cp->arch));
    char *msg = NULL;
    if (LLVMVerifyModule(h.ll.mod, LLVMReturnStatusAction, &msg))
        internal_error(__FILE__, __LINE__, "the CUDA host module does not verify: %s", msg);
    LLVMDisposeMessage(msg);
    err = ll_emit_output(&h.ll, kind, out_path, &hint);
    if (!err && diag_errs)
        err = xfmt("LLVM: %s", diag_errs);
    ll_dispose(&h.ll);
    if (err && hint)
        error_noloc("%s\n---> HINT: %s", err, hint);
    if (err)
        error_noloc("%s", err);
}
