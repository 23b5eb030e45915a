/* test_attacks_cuda.c: a Witches' Brew crafting step with the bilinear
 * flip-and-shift augmentation (tests/lth/attacks_cuda.lth) compiled for the
 * CPU and with --target=cuda, the CUDA side run through the real device
 * layer on the mock driver, NVRTC and cuBLAS of tests/cuda_mock.c (as
 * tests/unit/test_cuda_device.c runs the op table and the models). The
 * objective's init_state (the target gradient) and three steps (the
 * augmentation's Philox draws, the gradient of the cosine through the
 * parameter gradients, signed Adam and the projections; state kept on the
 * device between steps) must write the same numbers on both: in f64 to
 * 1e-11, in f32 to 2e-4 over all written tensors together (sums run in
 * another order). Also: no out-of-bounds device access, kernels ran.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_cuda.h"
#include "harness.h"

#define WB_LTH "tests/lth/attacks_cuda.lth"

static lethe_device *dev;
static void (*mock_stats)(long *launches, long *compiles, long *faults);
static const char *mock_path;

static long faults_now(void) {
    long launches, compiles, faults;
    mock_stats(&launches, &compiles, &faults);
    return faults;
}

static long launches_now(void) {
    long launches, compiles, faults;
    mock_stats(&launches, &compiles, &faults);
    return launches;
}

/* lethec embeds no CUBIN (its NVRTC is absent): the device compiles the
 * kernels with the mock NVRTC on first use. */
static const lethe_program *compile(const char *flags) {
    setenv("LETHE_NVRTC", "/nonexistent/libnvrtc.so", 1);
    char *err = NULL;
    const lethe_program *p = th_compile_file(WB_LTH, flags, &err);
    setenv("LETHE_NVRTC", mock_path, 1);
    if (!p)
        th_fail("attacks_cuda.compile", "lethec %s %s failed: %s", WB_LTH, flags, err ? err : "?");
    free(err);
    return p;
}

/* Sums of (a - b)^2 and b^2 over every written float argument of the two
 * frames (a: CUDA, b: CPU); a NaN or an integer difference makes it
 * infinite. */
static void add_diff(const th_frame *g, const th_frame *c, double *d2, double *b2) {
    const lethe_entry *e = c->entry;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (!(a->access & LETHE_WRITE))
            continue;
        for (int64_t j = 0; j < th_arg_numel(a); j++) {
            double x = lethe_elem_f64(g->args[i], a->dtype, j), y = lethe_elem_f64(c->args[i], a->dtype, j);
            if (!isfinite(x) || !isfinite(y) || (a->dtype == LETHE_I32 && x != y)) {
                *d2 = INFINITY;
                continue;
            }
            *d2 += (x - y) * (x - y);
            *b2 += y * y;
        }
    }
}

/* The same inputs in both frames: cpu's, filled here, copied to gpu. */
static void fill_both(th_frame *cpu, th_frame *gpu, uint64_t *seed) {
    th_fill_args(cpu, TH_INPUT_KINDS, 3, seed);
    const lethe_entry *e = cpu->entry;
    for (int i = 0; i < e->nargs; i++)
        memcpy(gpu->args[i], cpu->args[i], (size_t)th_arg_numel(&e->args[i]) * th_dtype_size(e->args[i].dtype));
}

/* The image box and scale a normalised data set gives, and the step's
 * hyperparameters, on one frame. */
static void set_scales(th_frame *f, bool f64) {
    static const char *const names[] = {"pixel_std", "pixel_lo", "pixel_hi", "eps", "lr"};
    static const double values[] = {0.5, -1.5, 1.5, 0.06, 0.01};
    for (int k = 0; k < 5; k++) {
        if (f64)
            *th_f64(f, names[k]) = values[k];
        else
            *th_f32(f, names[k]) = (float)values[k];
    }
}

static void check_precision(const char *label, const char *flags, double tol) {
    char name[200];
    snprintf(name, sizeof name, "attacks_cuda.witches_brew_bilinear %s", label);
    char cflags[256], gflags[256];
    snprintf(cflags, sizeof cflags, "-O0 --no-fast-math %s", flags);
    snprintf(gflags, sizeof gflags, "--target=cuda --no-fast-math %s", flags);
    const lethe_program *cpu = compile(cflags), *gpu = compile(gflags);
    if (!cpu || !gpu)
        return;
    const lethe_entry *sc = th_entry(cpu, "wb_bilinear"), *sg = th_entry(gpu, "wb_bilinear");
    const lethe_entry *ic = th_entry(cpu, "wb_bilinear.init_state"), *ig = th_entry(gpu, "wb_bilinear.init_state");
    if (!sc || !sg || !ic || !ig || sc->nargs != sg->nargs || ic->nargs != ig->nargs) {
        th_fail(name, "the programs lack matching wb_bilinear and wb_bilinear.init_state entries");
        return;
    }
    bool f64 = strstr(flags, "--f64") != NULL;
    long faults = faults_now(), launches = launches_now();
    uint64_t seed = 11;
    th_frame *fic = th_frame_new(ic), *fig = th_frame_new(ig), *fc = th_frame_new(sc), *fg = th_frame_new(sg);
    fill_both(fic, fig, &seed);
    lethe_ctx cc = {.seed = 0x5eed1234abcdull}, cg = cc;
    cg.device = dev;
    int rc = th_call(fic, &cc), rg = th_call(fig, &cg);
    rg |= dev->sync(dev);
    double d2 = 0, b2 = 0;
    add_diff(fig, fic, &d2, &b2);
    /* the step: the same inputs, each side's own init_state results */
    fill_both(fc, fg, &seed);
    set_scales(fc, f64);
    set_scales(fg, f64);
    th_copy_by_name(fc, fic, ~(1u << LETHE_OUTPUT));
    th_copy_by_name(fg, fig, ~(1u << LETHE_OUTPUT));
    for (uint64_t s = 0; s < 3 && !rc && !rg; s++) {
        cc.counter = cg.counter = s;
        rc |= th_call(fc, &cc);
        rg |= th_call(fg, &cg);
    }
    rg |= dev->sync(dev);
    add_diff(fg, fc, &d2, &b2);
    double err = d2 == 0 ? 0 : sqrt(d2 / fmax(b2, 1e-300));
    double loss = f64 ? *th_f64(fc, "loss") : *th_f32(fc, "loss");
    if (rc || rg)
        th_fail(name, "calls returned %d (CPU) and %d (CUDA)", rc, rg);
    else if (!(loss > 0 && loss < 2))
        th_fail(name, "the CPU's 1 - cosine is %g", loss);
    else if (!(err <= tol))
        th_fail(name, "relative error %.3g over the written tensors (tolerance %.0e)", err, tol);
    else {
        char pn[300];
        snprintf(pn, sizeof pn, "%s: init_state and 3 steps match the CPU (relative error %.2g, loss %.4f)", name, err, loss);
        th_pass(pn);
    }
    snprintf(name, sizeof name, "attacks_cuda %s: no out-of-bounds device access", label);
    th_check(faults_now() == faults, name, "%ld faults", faults_now() - faults);
    snprintf(name, sizeof name, "attacks_cuda %s: kernels ran", label);
    th_check(launches_now() > launches, name, "no launch");
    th_frame_free(fic), th_frame_free(fig), th_frame_free(fc), th_frame_free(fg);
}

int main(void) {
    const char *b = getenv("B") ? getenv("B") : "build";
    static char mock[512], cache[600];
    snprintf(mock, sizeof mock, "%s/tests/libcudamock.so", b);
    mock_path = mock;
    void *h = dlopen(mock, RTLD_NOW | RTLD_LOCAL);
    if (!h || !(mock_stats = (void (*)(long *, long *, long *))dlsym(h, "lethe_mock_stats"))) {
        th_fail("attacks_cuda mock driver", "cannot load %s (built by make): %s", mock, dlerror());
        return th_exit();
    }
    snprintf(cache, sizeof cache, "%s/cache", th_tmpdir());
    setenv("LETHE_LIBCUDA", mock, 1);
    setenv("LETHE_NVRTC", mock, 1);
    setenv("LETHE_CUBLAS", mock, 1);
    setenv("LETHE_MOCK_ARCH", "sm_90", 1);
    setenv("LETHE_MOCK_SHIM", "tests/cuda_shim.h", 1);
    setenv("LETHE_MOCK_DIR", th_tmpdir(), 1);
    setenv("LETHE_CACHE", cache, 1);
#if defined(__SANITIZE_ADDRESS__)
    /* the kernels run inside this process: let ASan watch them too */
    setenv("LETHE_MOCK_CFLAGS", "-fsanitize=address -fno-omit-frame-pointer", 1);
#endif
    char err[LETHE_ERR_LEN];
    if (lethe_cuda_open(0, &dev, err)) {
        th_fail("attacks_cuda open the mock device", "%s", err);
        return th_exit();
    }
    check_precision("f64", "--f64", 1e-11);
    check_precision("f32", "", 2e-4);
    lethe_cuda_close(dev);
    return th_exit();
}
