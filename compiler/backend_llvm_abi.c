/* backend_llvm_abi.c: the program descriptor of runtime/lethe_abi.h as
 * constant LLVM globals.
 *
 *   @<symbol>           = constant %lethe_program { abi, n, @entries, ... }
 *   @<symbol>.entries   = private constant [n x %lethe_entry]
 *   @<symbol>.args.E    = private constant [nargs x %lethe_arg]
 *   @<symbol>.shape.E.A = private constant [rank x i64]
 *   strings             = private unnamed_addr constant [len x i8], shared
 *
 * The LLVM struct types mirror the C structs field by field; their natural
 * layout under the target's data layout is checked against offsetof() of the
 * C structs, which is exact because lethec targets the machine it runs on
 * (the triple is always the host's).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backend_llvm.h"
#include "lethe_abi.h"

typedef struct Strings {   /* string constants, deduplicated */
    VEC(const char *) text;
    VEC(LLVMValueRef) global;
} Strings;

static LLVMValueRef str_const(LL *ll, Strings *st, const char *s) {
    if (!s)
        return LLVMConstPointerNull(ll->t_ptr);
    for (int i = 0; i < st->text.len; i++)
        if (!strcmp(st->text.data[i], s))
            return st->global.data[i];
    size_t n = strlen(s);
    LLVMValueRef init = LLVMConstStringInContext2(ll->ctx, s, n, 0);
    LLVMValueRef g = LLVMAddGlobal(ll->mod, LLVMTypeOf(init), ".str");
    LLVMSetInitializer(g, init);
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
    LLVMSetAlignment(g, 1);
    vec_push(&st->text, s);
    vec_push(&st->global, g);
    return g;
}

static LLVMValueRef private_const(LL *ll, LLVMValueRef init, const char *name) {
    LLVMValueRef g = LLVMAddGlobal(ll->mod, LLVMTypeOf(init), name);
    LLVMSetInitializer(g, init);
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    return g;
}

/* Checks that LLVM lays `ty` out at the C offsets `off` (n fields) and size. */
static void check_layout(LL *ll, LLVMTypeRef ty, const size_t *off, int n, size_t size, const char *what) {
    for (int i = 0; i < n; i++)
        if (LLVMOffsetOfElement(ll->td, ty, (unsigned)i) != off[i])
            internal_error(__FILE__, __LINE__, "%s field %d: LLVM offset %llu, C offset %zu", what, i,
                           LLVMOffsetOfElement(ll->td, ty, (unsigned)i), off[i]);
    if (LLVMABISizeOfType(ll->td, ty) != size)
        internal_error(__FILE__, __LINE__, "%s: LLVM size %llu, C size %zu", what, LLVMABISizeOfType(ll->td, ty), size);
}

static LLVMValueRef i32v(LL *ll, int64_t v) { return LLVMConstInt(ll->t_i32, (unsigned long long)v, 1); }

static int32_t abi_dtype(DType dt) {
    switch (dt) {
    case DT_BOOL: return LETHE_BOOL;
    case DT_I32: return LETHE_I32;
    case DT_F32: return LETHE_F32;
    case DT_F64: return LETHE_F64;
    case DT_I64: break;
    }
    internal_error(__FILE__, __LINE__, "an entry argument has the index dtype i64");
}

void ll_emit_descriptor(LL *ll, const CompUnit *cu, LProgram **progs, int n, LLVMValueRef *entry_fns,
                        const char *symbol) {
    LLVMTypeRef P = ll->t_ptr, I32 = ll->t_i32, I64 = ll->t_i64;
    LLVMTypeRef arg_t = LLVMStructCreateNamed(ll->ctx, "lethe_arg");
    LLVMTypeRef arg_f[] = {P, P, P, I32, I32, I32, I32, P, ll->t_f64, I32, I32};
    LLVMStructSetBody(arg_t, arg_f, 11, 0);
    static const size_t arg_off[] = {offsetof(lethe_arg, name),  offsetof(lethe_arg, binding),
                                     offsetof(lethe_arg, path),  offsetof(lethe_arg, kind),
                                     offsetof(lethe_arg, access), offsetof(lethe_arg, dtype),
                                     offsetof(lethe_arg, rank),  offsetof(lethe_arg, shape),
                                     offsetof(lethe_arg, scalar_default), offsetof(lethe_arg, layer),
                                     offsetof(lethe_arg, layer_counts)};
    check_layout(ll, arg_t, arg_off, 11, sizeof(lethe_arg), "lethe_arg");

    LLVMTypeRef entry_t = LLVMStructCreateNamed(ll->ctx, "lethe_entry");
    LLVMTypeRef entry_f[] = {P, P, I32, P, I64, P, I32};
    LLVMStructSetBody(entry_t, entry_f, 7, 0);
    static const size_t entry_off[] = {offsetof(lethe_entry, name),     offsetof(lethe_entry, kind),
                                       offsetof(lethe_entry, nargs),    offsetof(lethe_entry, args),
                                       offsetof(lethe_entry, workspace_bytes), offsetof(lethe_entry, fn),
                                       offsetof(lethe_entry, uses_rng)};
    check_layout(ll, entry_t, entry_off, 7, sizeof(lethe_entry), "lethe_entry");

    LLVMTypeRef prog_t = LLVMStructCreateNamed(ll->ctx, "lethe_program");
    LLVMTypeRef prog_f[] = {I32, I32, P, P, P, P};
    LLVMStructSetBody(prog_t, prog_f, 6, 0);
    static const size_t prog_off[] = {offsetof(lethe_program, abi_version), offsetof(lethe_program, nentries),
                                      offsetof(lethe_program, entries),     offsetof(lethe_program, source_hash),
                                      offsetof(lethe_program, target),      offsetof(lethe_program, experiment)};
    check_layout(ll, prog_t, prog_off, 6, sizeof(lethe_program), "lethe_program");

    Strings st = {0};
    LLVMValueRef *entries = xalloc(sizeof(LLVMValueRef) * ((size_t)n + 1));
    for (int i = 0; i < n; i++) {
        const Entry *e = progs[i]->entry;
        LLVMValueRef *args = xalloc(sizeof(LLVMValueRef) * ((size_t)e->args.len + 1));
        for (int a = 0; a < e->args.len; a++) {
            const EntryArg *ea = &e->args.data[a];
            LLVMValueRef shape = LLVMConstPointerNull(P);
            if (ea->shape.rank > 0) {
                LLVMValueRef dims[MAX_RANK];
                for (int d = 0; d < ea->shape.rank; d++)
                    dims[d] = LLVMConstInt(I64, (unsigned long long)ea->shape.dim[d], 1);
                shape = private_const(ll, LLVMConstArray2(I64, dims, (uint64_t)ea->shape.rank), xfmt("%s.shape.%d.%d", symbol, i, a));
            }
            LLVMValueRef f[11] = {
                str_const(ll, &st, ea->name), str_const(ll, &st, ea->binding), str_const(ll, &st, ea->path ? ea->path : ""),
                i32v(ll, ea->kind), i32v(ll, ea->access), i32v(ll, abi_dtype(ea->dtype)), i32v(ll, ea->shape.rank),
                shape, LLVMConstReal(ll->t_f64, ea->scalar_default), i32v(ll, ea->layer), i32v(ll, ea->layer_counts),
            };
            args[a] = LLVMConstNamedStruct(arg_t, f, 11);
        }
        LLVMValueRef args_g = e->args.len ? private_const(ll, LLVMConstArray2(arg_t, args, (uint64_t)e->args.len), xfmt("%s.args.%d", symbol, i))
                                          : LLVMConstPointerNull(P);
        LLVMValueRef f[7] = {
            str_const(ll, &st, e->name), str_const(ll, &st, e->kind), i32v(ll, e->args.len), args_g,
            LLVMConstInt(I64, progs[i]->workspace_bytes, 0), entry_fns[i], i32v(ll, e->uses_rng ? 1 : 0),
        };
        entries[i] = LLVMConstNamedStruct(entry_t, f, 7);
    }
    LLVMValueRef entries_g = n ? private_const(ll, LLVMConstArray2(entry_t, entries, (uint64_t)n), xfmt("%s.entries", symbol))
                               : LLVMConstPointerNull(P);
    LLVMValueRef pf[6] = {
        i32v(ll, LETHE_ABI_VERSION), i32v(ll, n), entries_g, str_const(ll, &st, cu->source_hash),
        str_const(ll, &st, xfmt("cpu:%s:%s", ll->triple, ll->cpu)), str_const(ll, &st, cu->experiment_json),
    };
    LLVMValueRef prog = LLVMAddGlobal(ll->mod, prog_t, symbol);
    LLVMSetInitializer(prog, LLVMConstNamedStruct(prog_t, pf, 6));
    LLVMSetGlobalConstant(prog, 1);
    LLVMSetLinkage(prog, LLVMExternalLinkage);
}

/* ----------------------------------------------------------------------------
 * the kernel profile
 *
 * Every program carries a mutable table, the global <symbol>_profile, that a
 * benchmark or a debugging session reads through dlsym; it is not part of
 * lethe_abi.h (nothing in the runtime depends on it):
 *
 *   struct { int32_t enabled; int32_t nentries; const E *entries; }
 *   E = struct { const char *entry; int64_t nkernels; const char *const *kernel;
 *                const char *const *what; const double *flops; int64_t *ns; }
 *
 * When `enabled` is non-zero at the start of a call, the entry function reads
 * clock `enabled - 1` (clock_gettime's clock id: CLOCK_MONOTONIC for wall
 * time, CLOCK_THREAD_CPUTIME_ID for the calling thread's CPU time, which on a
 * shared machine does not count the time other processes take) around each
 * kernel and adds the elapsed nanoseconds to ns[kernel]; otherwise it runs
 * the plain sequence of calls. The cost when
 * disabled is one load and one branch per call of an entry, nothing per
 * kernel. Kernel names and `what` are those of `-d loops`; flops the rough
 * count of LKernel.flops.
 */

static LLVMTypeRef prof_table_type(LL *ll) {
    LLVMTypeRef t = LLVMGetTypeByName2(ll->ctx, "lethe_kprofile");
    if (!t) {
        t = LLVMStructCreateNamed(ll->ctx, "lethe_kprofile");
        LLVMTypeRef f[] = {ll->t_i32, ll->t_i32, ll->t_ptr};
        LLVMStructSetBody(t, f, 3, 0);
    }
    return t;
}

void ll_profile_begin(LL *ll, const char *symbol) {
    ll->prof_table = LLVMAddGlobal(ll->mod, prof_table_type(ll), xfmt("%s_profile", symbol));
    LLVMSetLinkage(ll->prof_table, LLVMExternalLinkage);
}

/* nanoseconds of clock `clk` through clock_gettime (vDSO: ~20 ns) */
static LLVMValueRef now_ns(LL *ll, LLVMBuilderRef b, LLVMValueRef clk, LLVMValueRef ts) {
    LLVMTypeRef pt[2] = {ll->t_i32, ll->t_ptr};
    LLVMTypeRef fty = LLVMFunctionType(ll->t_i32, pt, 2, 0);
    LLVMValueRef fn = LLVMGetNamedFunction(ll->mod, "clock_gettime");
    if (!fn) {
        fn = LLVMAddFunction(ll->mod, "clock_gettime", fty);
        ll_fn_attr(ll, fn, "nounwind");
    }
    LLVMValueRef args[2] = {clk, ts};
    LLVMBuildCall2(b, fty, fn, args, 2, "");
    LLVMValueRef one = LLVMConstInt(ll->t_i64, 1, 0);
    LLVMValueRef sec = LLVMBuildLoad2(b, ll->t_i64, ts, "");
    LLVMValueRef nsec = LLVMBuildLoad2(b, ll->t_i64, LLVMBuildInBoundsGEP2(b, ll->t_i64, ts, &one, 1, ""), "");
    return LLVMBuildAdd(b, LLVMBuildMul(b, sec, LLVMConstInt(ll->t_i64, 1000000000, 0), ""), nsec, "");
}

void ll_profile_calls(LL *top, LL *ll, LLVMBuilderRef b, int prog, LLVMValueRef *kfn, int nk, LLVMValueRef *clo) {
    const char *table_name = LLVMGetValueName(top->prof_table);
    LLVMTypeRef at = LLVMArrayType2(ll->t_i64, (uint64_t)(nk ? nk : 1));
    LLVMValueRef ns = LLVMAddGlobal(ll->mod, at, xfmt("%s.ns.%d", table_name, prog));
    LLVMSetInitializer(ns, LLVMConstNull(at));
    LLVMValueRef table = top->prof_table, ns_in_top = ns;
    if (ll == top) {
        LLVMSetLinkage(ns, LLVMPrivateLinkage);
    } else {
        /* the entry is in a partition module (backend_llvm_split.c): its
         * counters are a hidden global there, the table the top module's */
        LLVMSetVisibility(ns, LLVMHiddenVisibility);
        LLVMValueRef decl = LLVMAddGlobal(top->mod, LLVMArrayType2(top->t_i64, (uint64_t)(nk ? nk : 1)), LLVMGetValueName(ns));
        LLVMSetVisibility(decl, LLVMHiddenVisibility);
        ns_in_top = decl;
        table = LLVMGetNamedGlobal(ll->mod, table_name);
        if (!table)
            table = LLVMAddGlobal(ll->mod, prof_table_type(ll), table_name);
    }
    ASSERT(top->prof_ns.len == prog);
    vec_push(&top->prof_ns, ns_in_top);

    LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(b));
    LLVMValueRef ts = LLVMBuildArrayAlloca(b, ll->t_i64, LLVMConstInt(ll->t_i64, 2, 0), "ts");
    LLVMValueRef on = LLVMBuildLoad2(b, ll->t_i32, table, "");
    LLVMBasicBlockRef plain = LLVMAppendBasicBlockInContext(ll->ctx, fn, "plain");
    LLVMBasicBlockRef timed = LLVMAppendBasicBlockInContext(ll->ctx, fn, "timed");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(ll->ctx, fn, "done");
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntEQ, on, LLVMConstInt(ll->t_i32, 0, 0), ""), plain, timed);
    LLVMPositionBuilderAtEnd(b, plain);
    for (int i = 0; i < nk; i++)
        LLVMBuildCall2(b, LLVMGlobalGetValueType(kfn[i]), kfn[i], &clo[i], 1, "");
    LLVMBuildBr(b, done);
    LLVMPositionBuilderAtEnd(b, timed);
    LLVMValueRef clk = LLVMBuildSub(b, on, LLVMConstInt(ll->t_i32, 1, 0), "");
    for (int i = 0; i < nk; i++) {
        LLVMValueRef t0 = now_ns(ll, b, clk, ts);
        LLVMBuildCall2(b, LLVMGlobalGetValueType(kfn[i]), kfn[i], &clo[i], 1, "");
        LLVMValueRef t1 = now_ns(ll, b, clk, ts);
        LLVMValueRef idx[2] = {LLVMConstInt(ll->t_i64, 0, 0), LLVMConstInt(ll->t_i64, (unsigned long long)i, 0)};
        LLVMValueRef slot = LLVMBuildInBoundsGEP2(b, at, ns, idx, 2, "");
        LLVMValueRef acc = LLVMBuildAdd(b, LLVMBuildLoad2(b, ll->t_i64, slot, ""), LLVMBuildSub(b, t1, t0, ""), "");
        LLVMBuildStore(b, acc, slot);
    }
    LLVMBuildBr(b, done);
    LLVMPositionBuilderAtEnd(b, done);
}

void ll_profile_end(LL *ll, LProgram **progs, int n) {
    LLVMTypeRef P = ll->t_ptr, I64 = ll->t_i64;
    LLVMTypeRef et = LLVMStructCreateNamed(ll->ctx, "lethe_kprofile_entry");
    LLVMTypeRef ef[] = {P, I64, P, P, P, P};
    LLVMStructSetBody(et, ef, 6, 0);
    Strings st = {0};
    const char *sym = LLVMGetValueName(ll->prof_table);
    LLVMValueRef *ents = xalloc(sizeof(LLVMValueRef) * ((size_t)n + 1));
    for (int i = 0; i < n; i++) {
        const LProgram *p = progs[i];
        int nk = p->kernels.len;
        LLVMValueRef *names = xalloc(sizeof(LLVMValueRef) * ((size_t)nk + 1));
        LLVMValueRef *whats = xalloc(sizeof(LLVMValueRef) * ((size_t)nk + 1));
        LLVMValueRef *flops = xalloc(sizeof(LLVMValueRef) * ((size_t)nk + 1));
        for (int k = 0; k < nk; k++) {
            const LKernel *kk = p->kernels.data[k];
            names[k] = str_const(ll, &st, kk->name);
            whats[k] = str_const(ll, &st, kk->what ? kk->what : "");
            flops[k] = LLVMConstReal(ll->t_f64, kk->flops);
        }
        LLVMValueRef f[6] = {
            str_const(ll, &st, p->entry->name ? p->entry->name : ""),
            LLVMConstInt(I64, (unsigned long long)nk, 0),
            nk ? private_const(ll, LLVMConstArray2(P, names, (uint64_t)nk), xfmt("%s.kernel.%d", sym, i)) : LLVMConstPointerNull(P),
            nk ? private_const(ll, LLVMConstArray2(P, whats, (uint64_t)nk), xfmt("%s.what.%d", sym, i)) : LLVMConstPointerNull(P),
            nk ? private_const(ll, LLVMConstArray2(ll->t_f64, flops, (uint64_t)nk), xfmt("%s.flops.%d", sym, i)) : LLVMConstPointerNull(P),
            ll->prof_ns.data[i],
        };
        ents[i] = LLVMConstNamedStruct(et, f, 6);
    }
    LLVMValueRef eg = n ? private_const(ll, LLVMConstArray2(et, ents, (uint64_t)n), xfmt("%s.entries", sym)) : LLVMConstPointerNull(P);
    LLVMValueRef tf[3] = {i32v(ll, 0), i32v(ll, n), eg};
    LLVMSetInitializer(ll->prof_table, LLVMConstNamedStruct(prof_table_type(ll), tf, 3));
}
