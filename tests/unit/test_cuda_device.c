/* test_cuda_device.c: the CUDA backend end to end, without a GPU.
 *
 * Programs are compiled twice, for the CPU (LLVM, -O0: the same bits as -O3
 * by the backend's design) and with --target=cuda, and run on the same
 * random inputs (networks with weights from their own initializers). The CUDA
 * side runs through the real device layer (runtime/device_cuda.c) on the
 * mock driver, NVRTC and cuBLAS of tests/cuda_mock.c, which compile the
 * generated CUDA source as C with tests/cuda_shim.h and run every launch
 * on the host (blocks in turn; a block's threads as coroutines when the
 * kernel has barriers). Every written argument must match the CPU's:
 * single ops per tensor, relative to its scale, 1e-5 in f32 and 1e-12 in
 * f64; whole networks on all their outputs together (|a - b| / |b|), 2e-4
 * in f32 (sums run in another order, and training steps amplify that) and
 * 1e-12 in f64; integers exactly; the Philox draws of initializers bit for
 * bit. Rules run two steps before the device syncs, so state stays on the
 * device between calls as in a training loop.
 *
 * Also checked: each way a module reaches the device (a CUBIN embedded by
 * lethec, none embedded, one for another GPU) and the kernel cache, both
 * GEMM paths (cuBLAS and the generated kernel), a call without a device,
 * the mock's count of out-of-bounds device accesses, a small GPT-2
 * (tests/lth/cuda_gpt2.lth: attention, AdamW, the classifier), and programs lowered
 * as for the CPU (GEMMs inside loops, private scratch, implicit-im2col
 * convolutions), which lethec does not hand the CUDA backend.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_cuda.h"
#include "graph.h"
#include "harness.h"
#include "loopir.h"

static lethe_device *dev;
static void (*mock_stats)(long *launches, long *compiles, long *faults);

static long stat_of(int which) {
    long v[3];
    mock_stats(&v[0], &v[1], &v[2]);
    return v[which];
}

enum { LAUNCHES, COMPILES, FAULTS };

/* a formatted test name (a few live at once) */
static const char *name_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *name_of(const char *fmt, ...) {
    static char buf[8][512];
    static int next;
    char *b = buf[next++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof buf[0], fmt, ap);
    va_end(ap);
    return b;
}

static int is_float(int dt) { return dt == LETHE_F32 || dt == LETHE_F64; }

/* max |a - b| / max |b|: the error relative to the tensor's scale (a
 * gradient entry near zero is all cancellation, on either backend); NaN
 * where the other has a number is infinite. Also adds to the sums of
 * (a - b)^2 and b^2 over the entry's outputs. */
static double scaled_err(const void *a, const void *b, int dt, int64_t n, double *d2, double *b2) {
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = lethe_elem_f64(a, dt, i), y = lethe_elem_f64(b, dt, i);
        if (isnan(x) != isnan(y) || isinf(x) != isinf(y) || (isinf(x) && x != y))
            return INFINITY;
        if (isnan(x) || isinf(x))
            continue;
        diff = fmax(diff, fabs(x - y));
        scale = fmax(scale, fabs(y));
        *d2 += (x - y) * (x - y);
        *b2 += y * y;
    }
    return diff == 0 ? 0 : diff / fmax(scale, 1e-30);
}

/* Entries judged on all their outputs together: whole networks, where a
 * tensor near zero (a batch-norm scale's gradient) is rounding noise that
 * training steps amplify; single ops are judged per tensor. */
static bool whole_network;

/* Runs entry `name` of both programs on the same inputs; returns the worst
 * relative error over the written arguments (-1: a call failed). */
static double run_both(const lethe_program *cpu, const lethe_program *gpu, const char *name, char *why, size_t whylen) {
    const lethe_entry *ec = th_entry(cpu, name), *eg = th_entry(gpu, name);
    if (!ec || !eg || ec->nargs != eg->nargs) {
        snprintf(why, whylen, "the CUDA program has no matching entry");
        return -1;
    }
    th_frame *fc = th_frame_new(ec), *fg = th_frame_new(eg);
    for (int i = 0; i < ec->nargs; i++) {
        const lethe_arg *a = &ec->args[i];
        if (a->kind == LETHE_SCALAR)
            continue;
        int64_t n = th_arg_numel(a);
        /* running statistics are positive (a variance), and so are padding
         * masks (weights of a mean); the rest around 0 */
        size_t len = strlen(a->name);
        int positive = a->kind == LETHE_BUFFER || (len >= 4 && !strcmp(a->name + len - 4, "mask"));
        double lo = positive ? 0.5 : a->dtype == LETHE_I32 ? 0 : -1;
        double hi = positive ? 1.5 : a->dtype == LETHE_I32 ? 4 : 1;
        th_fill(fc->args[i], a->dtype, n, lo, hi, (uint64_t)i + 1);
        memcpy(fg->args[i], fc->args[i], (size_t)n * th_dtype_size(a->dtype));
    }
    /* a network gets realistic weights: the entry's own initializer, run
     * on the CPU (uniform random weights blow a deep network's activations
     * up until rounding dominates the comparison); single ops keep random
     * ones (an initializer's zeros can make an output pure rounding noise) */
    char iname[256];
    snprintf(iname, sizeof iname, "%s.init_model", name);
    const lethe_entry *init = whole_network ? th_entry(cpu, iname) : NULL;
    if (init) {
        th_frame *fi = th_frame_new(init);
        lethe_ctx ci = {.seed = 42};
        if (th_call(fi, &ci) == 0)
            for (int i = 0; i < init->nargs; i++)
                for (int j = 0; j < ec->nargs; j++)
                    if ((init->args[i].access & LETHE_WRITE) && !strcmp(init->args[i].name, ec->args[j].name)) {
                        size_t n = (size_t)th_arg_numel(&ec->args[j]) * th_dtype_size(ec->args[j].dtype);
                        memcpy(fc->args[j], fi->args[i], n);
                        memcpy(fg->args[j], fi->args[i], n);
                    }
        th_frame_free(fi);
    }
    int steps = !strcmp(ec->kind, "rule") ? 2 : 1;
    double worst = 0, d2 = 0, b2 = 0;
    for (int s = 0; s < steps && worst >= 0; s++) {
        lethe_ctx cc = {.seed = 0x5eed1234abcdull, .counter = (uint64_t)s + 3};
        lethe_ctx cg = cc;
        cg.device = dev;
        int rc = th_call(fc, &cc), rg = th_call(fg, &cg);
        if (rc || rg) {
            snprintf(why, whylen, "calls returned %d (CPU) and %d (CUDA)", rc, rg);
            worst = -1;
        }
    }
    if (dev->sync(dev)) {
        snprintf(why, whylen, "device sync failed");
        worst = -1;
    }
    for (int i = 0; i < ec->nargs && worst >= 0; i++) {
        const lethe_arg *a = &ec->args[i];
        if (!(a->access & LETHE_WRITE))
            continue;
        double e = scaled_err(fg->args[i], fc->args[i], a->dtype, th_arg_numel(a), &d2, &b2);
        if (!is_float(a->dtype) && e > 0)
            e = INFINITY;
        if (e > worst) {
            worst = e;
            snprintf(why, whylen, "argument %s", a->name);
        }
    }
    if (whole_network && worst >= 0 && isfinite(worst)) {
        snprintf(why, whylen, "all outputs");
        worst = d2 == 0 ? 0 : sqrt(d2 / fmax(b2, 1e-300));
    }
    th_frame_free(fc);
    th_frame_free(fg);
    return worst;
}

static const lethe_program *compile(const char *file, const char *flags, const char *nvrtc_for_lethec) {
    const char *saved = getenv("LETHE_NVRTC");
    char *keep = saved ? strdup(saved) : NULL;
    if (nvrtc_for_lethec)
        setenv("LETHE_NVRTC", nvrtc_for_lethec, 1);
    else
        unsetenv("LETHE_NVRTC");
    char *err = NULL;
    const lethe_program *p = th_compile_file(file, flags, &err);
    if (keep)
        setenv("LETHE_NVRTC", keep, 1);
    free(keep);
    if (!p)
        th_fail(name_of(file), "lethec %s failed: %s", flags, err ? err : "?");
    free(err);
    return p;
}

/* The CUDA program of `file` lowered as for the CPU: GEMMs inside parallel
 * loops, private scratch, convolutions as implicit im2col GEMMs (forms
 * lethec --target=cuda asks the lowering to avoid, LowerOptions.top_gemms,
 * which the backend still renders), compiled in this process. */
static const lethe_program *compile_cpu_lowering(const char *file) {
    static int counter;
    char so[600];
    snprintf(so, sizeof so, "%s/cpu_lowering_%d.so", th_tmpdir(), counter++);
    jmp_buf recover;
    diag_recover = &recover;
    if (setjmp(recover)) {
        diag_recover = NULL;
        arena_reset();
        th_fail(name_of("cuda %s lowered for the CPU", file), "the compiler stopped (its message is above)");
        return NULL;
    }
    SrcFile *src = srcfile_read(file);
    if (!src)
        error_noloc("cannot read %s", file);
    const char *inc[] = {"graphs"};
    SemaOptions so_opt = {.include_dirs = inc, .ninclude = 1};
    CompUnit *cu = sema_program(parse_file(src), &so_opt);
    LowerOptions lo = {.parallel_min_work = 1, .top_gemms = false};
    LProgram **progs = xalloc(sizeof(LProgram *) * ((size_t)cu->entries.len + 1));
    for (int i = 0; i < cu->entries.len; i++) {
        optimize_entry(cu->entries.data[i]);
        progs[i] = lower_entry(cu->entries.data[i], &lo);
    }
    BackendOptions bo = {.program_symbol = LETHE_PROGRAM_SYMBOL, .cuda_arch = "sm_90"};
    cuda_emit(cu, progs, cu->entries.len, EMIT_SO, so, &bo);
    diag_recover = NULL;
    arena_reset();
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    const lethe_program *p = h ? dlsym(h, LETHE_PROGRAM_SYMBOL) : NULL;
    if (!p)
        th_fail(name_of("cuda %s lowered for the CPU", file), "cannot load %s", so);
    return p;
}

/* every entry of `file`, CPU against CUDA (from lethec, or `gpu`); returns
 * the CUDA program */
static const lethe_program *check_program_with(const char *label, const char *file, const char *flags, double tol,
                                               const char *nvrtc_for_lethec, const lethe_program *gpu) {
    char cflags[512], gflags[512];
    snprintf(cflags, sizeof cflags, "-O0 --no-fast-math %s", flags);
    snprintf(gflags, sizeof gflags, "--target=cuda --no-fast-math %s", flags);
    const lethe_program *cpu = compile(file, cflags, NULL);
    if (!gpu)
        gpu = compile(file, gflags, nvrtc_for_lethec);
    if (!cpu || !gpu)
        return NULL;
    th_check(gpu->target && !strncmp(gpu->target, "cuda:sm_", 8), name_of("%s target", label), "target %s", gpu->target);
    long faults = stat_of(FAULTS), launches = stat_of(LAUNCHES);
    int bad = 0;
    double worst = 0;
    const char *worst_at = "";
    for (uint32_t i = 0; i < cpu->nentries; i++) {
        const char *name = cpu->entries[i].name;
        char why[256] = "";
        double e = run_both(cpu, gpu, name, why, sizeof why);
        /* initializers are Philox draws only: the same bits on both sides */
        if (cpu->entries[i].uses_rng && !strcmp(cpu->entries[i].kind, "init") && e != 0) {
            th_fail(name_of("cuda %s %s", label, name), "%s: random draws differ (relative error %.3g)", why, e);
            bad++;
            continue;
        }
        if (e < 0 || e > tol) {
            th_fail(name_of("cuda %s %s", label, name), "%s: relative error %.3g (tolerance %.0e)", why, e, tol);
            bad++;
        } else if (e > worst) {
            worst = e;
            worst_at = name;
        }
    }
    if (!bad)
        th_pass(name_of("cuda %s: %u entries match the CPU backend (worst relative error %.2g, %s)", label,
                          cpu->nentries, worst, worst_at));
    th_check(stat_of(FAULTS) == faults, name_of("cuda %s: no out-of-bounds device access", label), "%ld faults",
             stat_of(FAULTS) - faults);
    th_check(stat_of(LAUNCHES) > launches, name_of("cuda %s: kernels ran", label), "no launch");
    return gpu;
}

static const lethe_program *check_program(const char *label, const char *file, const char *flags, double tol,
                                          const char *nvrtc_for_lethec) {
    return check_program_with(label, file, flags, tol, nvrtc_for_lethec, NULL);
}

/* the launch list behind an entry function: a device that records it */
static const lethe_cuda_entry *probed;
static int probe_run(lethe_ctx *ctx, const lethe_cuda_entry *e, void *const *args) {
    probed = e;
    return 0;
}

/* implicit-im2col GEMM launches and kernels with in-block GEMMs in p */
static void count_forms(const lethe_program *p, int *im2col, int *tiles) {
    lethe_device probe = {.name = "probe", .run = probe_run};
    lethe_ctx ctx = {.device = &probe};
    *im2col = *tiles = 0;
    for (uint32_t i = 0; i < p->nentries; i++) {
        probed = NULL;
        if (p->entries[i].fn(NULL, NULL, &ctx) || !probed)
            continue;
        for (uint32_t l = 0; l < probed->nlaunches; l++)
            *im2col += probed->launches[l].gemm && probed->launches[l].gemm->im2col;
    }
    if (!probed)
        return;
    for (uint32_t m = 0; m < probed->program->nmodules; m++)
        for (const char *c = probed->program->modules[m].source; (c = strstr(c, "    lk_gemm_tile")); c++)
            (*tiles)++;
}

static bool reopen(const char *cublas, const char *arch) {
    char err[LETHE_ERR_LEN];
    lethe_cuda_close(dev);
    setenv("LETHE_CUBLAS", cublas, 1);
    setenv("LETHE_MOCK_ARCH", arch, 1);
    if (lethe_cuda_open(0, &dev, err)) {
        th_fail(name_of("cuda open a mock %s", arch), "%s", err);
        dev = NULL;
    }
    return dev != NULL;
}

int main(void) {
    const char *b = getenv("B") ? getenv("B") : "build";
    char mock[512], cache[600], small[600];
    snprintf(mock, sizeof mock, "%s/tests/libcudamock.so", b);
    void *h = dlopen(mock, RTLD_NOW | RTLD_LOCAL);
    if (!h || !(mock_stats = (void (*)(long *, long *, long *))dlsym(h, "lethe_mock_stats"))) {
        th_fail("cuda mock driver", "cannot load %s (built by make): %s", mock, dlerror());
        return th_exit();
    }
    snprintf(cache, sizeof cache, "%s/cache", th_tmpdir());
    setenv("LETHE_LIBCUDA", mock, 1);
    setenv("LETHE_NVRTC", mock, 1);
    setenv("LETHE_MOCK_SHIM", "tests/cuda_shim.h", 1);
    setenv("LETHE_MOCK_DIR", th_tmpdir(), 1);
    setenv("LETHE_CACHE", cache, 1);
#if defined(__SANITIZE_ADDRESS__)
    /* the kernels run inside this process: let ASan watch them too */
    setenv("LETHE_MOCK_CFLAGS", "-fsanitize=address -fno-omit-frame-pointer", 1);
#endif
    snprintf(small, sizeof small, "%s/small.lth", th_tmpdir());
    FILE *f = fopen(small, "w");
    if (!f) {
        th_fail("cuda write a test program", "%s", small);
        return th_exit();
    }
    fputs("import \"models/mlp.lth\"\nimport \"train/sgd.lth\"\n"
          "export step = sgd(MLP(12, 8, 3), data(x = f32[4, 12], y = i32[4]))\n", f);
    fclose(f);
    const char *none = "/nonexistent/libnvrtc.so";   /* lethec embeds no CUBIN */

    /* every op, with the CUBINs lethec made (with the mock NVRTC), GEMMs on
     * cuBLAS; models and rules without CUBINs: the device compiles them */
    if (!reopen(mock, "sm_90"))
        return th_exit();
    th_check(strstr(dev->name, "mock") && strstr(dev->name, "sm_90"), "cuda open the mock device", "name %s", dev->name);
    long before = stat_of(COMPILES);
    check_program("ops", "tests/lth/ops.lth", "", 1e-5, mock);
    th_check(stat_of(COMPILES) == before, "cuda embedded CUBINs load without compiling", "%ld compiles",
             stat_of(COMPILES) - before);
    before = stat_of(COMPILES);
    /* whole networks in f32: reductions run in another order, and two SGD
     * steps of the small-batch ResNet-18 amplify that some 300 times (the
     * same factor as in f64, where the run below pins the kernels to 1e-13) */
    whole_network = true;
    check_program("models", "tests/lth/cuda_models.lth", "", 2e-4, none);
    check_program("gpt2", "tests/lth/cuda_gpt2.lth", "", 2e-4, none);
    whole_network = false;
    check_program("mlp", small, "-I graphs", 1e-5, none);
    th_check(stat_of(COMPILES) > before, "cuda modules without a CUBIN are compiled on first use", "no compile");

    /* the lowering's CPU forms: GEMMs in parallel loops, private scratch,
     * implicit im2col (lethec asks for top-level GEMMs on a GPU) */
    int im2col = 0, tiles = 0;
    const lethe_program *free_form = compile_cpu_lowering("tests/lth/cuda_models.lth");
    if (free_form) {
        count_forms(free_form, &im2col, &tiles);
        th_check(im2col > 0 && tiles > 0, "cuda the CPU lowering's forms are rendered",
                 "%d implicit-im2col GEMM launches, %d in-kernel GEMMs", im2col, tiles);
        whole_network = true;
        check_program_with("models lowered for the CPU", "tests/lth/cuda_models.lth", "", 2e-4, none, free_form);
        whole_network = false;
    }
    free_form = compile_cpu_lowering("tests/lth/ops.lth");
    if (free_form)
        check_program_with("ops lowered for the CPU", "tests/lth/ops.lth", "", 1e-5, none, free_form);

    /* a new device finds those in the kernel cache */
    if (!reopen(mock, "sm_90"))
        return th_exit();
    before = stat_of(COMPILES);
    check_program("mlp again", small, "-I graphs", 1e-5, none);
    th_check(stat_of(COMPILES) == before, "cuda the kernel cache serves a new device", "%ld compiles",
             stat_of(COMPILES) - before);

    /* f64, GEMMs on the generated kernel: the CPU's numbers to rounding */
    if (!reopen("none", "sm_90"))
        return th_exit();
    check_program("ops f64", "tests/lth/ops.lth", "--f64", 1e-12, mock);
    whole_network = true;
    check_program("models f64", "tests/lth/cuda_models.lth", "--f64", 1e-12, none);
    check_program("gpt2 f64", "tests/lth/cuda_gpt2.lth", "--f64", 1e-12, none);
    whole_network = false;

    /* CUBINs for another GPU: the device compiles the source for its own */
    if (!reopen(mock, "sm_80"))
        return th_exit();
    before = stat_of(COMPILES);
    const lethe_program *gpu = check_program("mlp on another GPU", small, "-I graphs", 1e-5, mock);
    th_check(stat_of(COMPILES) > before, "cuda a CUBIN for another architecture is compiled again", "no compile");

    /* a CUDA entry without a device says so */
    if (gpu) {
        th_frame *fr = th_frame_new(th_entry(gpu, "step"));
        th_check(th_call(fr, NULL) == LETHE_NO_DEVICE, "cuda an entry without a device returns LETHE_NO_DEVICE", "no");
        th_frame_free(fr);
    }
    lethe_cuda_close(dev);
    return th_exit();
}
