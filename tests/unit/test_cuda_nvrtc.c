/* test_cuda_nvrtc.c: every CUDA kernel lethec generates for the library
 * graphs compiles through the real NVRTC, for sm_90, on a machine without a
 * GPU (NVRTC needs none). Skipped, visibly, where libnvrtc does not load.
 *
 * lethec compiles every module of a program itself and fails on the first
 * kernel NVRTC rejects, so each program is one lethec run; the test then
 * checks that every module of the result carries a CUBIN, and compiles the
 * models' modules once more to PTX to report local-memory use (register
 * spills show up as .local). Where NVRTC accepts it (12.8 and newer),
 * --Ofast-compile=max keeps this quick: it changes how much ptxas
 * optimizes, not what is accepted.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_cuda.h"
#include "harness.h"

/* A device whose run() only records the entry it was given: how a test
 * reaches the lethe_cuda_entry behind an entry function. */
static const lethe_cuda_entry *seen;
static int probe_run(lethe_ctx *ctx, const lethe_cuda_entry *e, void *const *args) {
    seen = e;
    return 0;
}

static const lethe_cuda_program *cuda_program_of(const lethe_program *p) {
    lethe_device probe = {.name = "probe", .run = probe_run};
    lethe_ctx ctx = {.device = &probe};
    seen = NULL;
    if (!p || !p->nentries || p->entries[0].fn(NULL, NULL, &ctx) != 0 || !seen)
        return NULL;
    return seen->program;
}

static const char *xfmt_name(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *xfmt_name(const char *fmt, ...) {
    static char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

int main(void) {
    char err[LETHE_ERR_LEN];
    unsetenv("LETHE_NVRTC");
    static const char *const programs[][3] = {
        {"graphs/experiments/gaussian_fmnist_demo.lth", "", "the demo experiment (SmallCNN, SGD, GD, NGD, GA, eval)"},
        {"bench/resnet18.lth", "", "ResNet-18 training, eval and GUS at widths 16 and 64"},
        {"tests/lth/cuda_models.lth", "", "the models of test_cuda_device"},
        {"tests/lth/ops.lth", "", "every op"},
        {"tests/lth/ops.lth", "--f64", "every op in f64"},
    };
    int n = (int)(sizeof programs / sizeof *programs);
    lethe_nvrtc *nv = lethe_nvrtc_open(err);
    if (!nv) {
        for (int i = 0; i < n; i++)
            th_skip(programs[i][2], "%s (install the CUDA toolkit's NVRTC to run it)", err);
        return th_exit();
    }
    int major, minor;
    lethe_nvrtc_version(nv, &major, &minor);
    const char *fast = major * 10 + minor >= 128 ? " --nvrtc-flags=--Ofast-compile=max" : "";
    for (int i = 0; i < n; i++) {
        char flags[256], *out = NULL;
        snprintf(flags, sizeof flags, "--target=cuda --arch=sm_90 -I graphs %s%s", programs[i][1], fast);
        const lethe_program *p = th_compile_file(programs[i][0], flags, &out);
        const lethe_cuda_program *cp = cuda_program_of(p);
        if (!p || !cp) {
            th_fail(programs[i][2], "lethec %s %s: %s", programs[i][0], flags, out ? out : "no CUDA program");
            free(out);
            continue;
        }
        uint32_t with_cubin = 0;
        for (uint32_t m = 0; m < cp->nmodules; m++)
            with_cubin += cp->modules[m].cubin && cp->modules[m].cubin_size > 0;
        th_check(with_cubin == cp->nmodules && !strcmp(cp->arch, "sm_90"),
                 xfmt_name("NVRTC %d.%d compiles %s: %u kernels in %u modules", major, minor, programs[i][2],
                           cp->nkernels, cp->nmodules),
                 "%u of %u modules have a CUBIN", with_cubin, cp->nmodules);
        if (strcmp(programs[i][0], "tests/lth/cuda_models.lth"))
            continue;
        int spills = 0, kernels = 0;
        const char *opts[] = {"--gpu-architecture=compute_90", "--std=c++17"};
        for (uint32_t m = 0; m < cp->nmodules; m++) {
            char *ptx = NULL, *log = NULL;
            if (lethe_nvrtc_compile_ptx(nv, cp->modules[m].source, "module.cu", opts, 2, &ptx, &log, err)) {
                th_fail("PTX of the models", "%s\n%s", err, log ? log : "");
            } else {
                spills += count(ptx, ".local");
                kernels += count(ptx, ".entry");
            }
            free(ptx);
            free(log);
        }
        th_pass(xfmt_name("PTX of the models: %d kernels, %d .local declarations (spills or stack arrays)", kernels, spills));
    }
    lethe_nvrtc_close(nv);
    return th_exit();
}
