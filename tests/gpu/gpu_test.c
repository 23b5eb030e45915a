/* gpu_test.c: the GPU side of the CUDA backend's checks, built by
 * tests/gpu/build.sh into the bundle that tests/gpu/run.sh runs on a GPU
 * host (which has no LLVM: every program is linked in, compiled on the
 * development machine twice, for the CPU and with --target=cuda).
 *
 *   lethe-gpu-test info               the device, NVRTC and cuBLAS found
 *   lethe-gpu-test check              every entry of the linked programs on
 *                                     the CPU and on the GPU, compared
 *   lethe-gpu-test check-r18 T1 T3    only ResNet-18, with tolerances T1 (one
 *                                     step) and T3 (three): the TF32 check
 *   lethe-gpu-test bench ENTRY [W S]  time an entry of bench/resnet18.lth on
 *                                     the GPU (W warm-up calls, S timed)
 *   lethe-gpu-test bench-gpt2 ENTRY [W S]  the same for tests/gpu/gpt2_bench.lth
 *                                     (GPT-2 124M, batch 8, 1024 tokens), with
 *                                     tokens per second
 *
 * check prints PASS / FAIL / SKIP lines (tests/support/harness.h's protocol)
 * and exits non-zero on a failure; without a GPU every line is a SKIP and
 * the exit status 0. Single ops are judged per output tensor, relative to
 * its scale (max |a - b| / max |b|): 1e-5 in f32 (no fast math on either
 * side), 1e-12 in f64. Whole networks are judged on all their outputs
 * together (|a - b| / |b| over every written tensor), with weights from
 * their own initializers: 2e-4 for the small ones after two steps and for
 * ResNet-18 after one training step, 1e-2 after three (sums run in another
 * order on the GPU, and SGD at lr 0.1 amplifies that some ten times a step;
 * the same networks in f64 agree to 1e-13 on the mock device of make test).
 * Networks and entries that draw random numbers also report the share of
 * bit-identical elements.
 *
 * An input gradient (an output shaped like the input x, such as the
 * Gaussian score's pass) is judged at 1e-2 in f32: through ReLU masks it
 * is piecewise constant in the weights, and rounding that moves a
 * pre-activation across zero changes it by a finite step. Measured on the
 * CPU for ResNet-18 w16 at batch 32: weights moved by a relative 1e-6 change
 * it by 3.5e-4 (l2, relative), by 1e-5 by 9e-3, while f32 against f64 at the
 * same weights differs by 6e-7; the GPU's cuBLAS, summing in another order,
 * gave 2.4e-3 on an H200. The f64 pair of ResNet-18 checks the same
 * kernels at 1e-9, where no mask flips.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device_cuda.h"
#include "lethe_abi.h"

extern const lethe_program lethe_program_ops, lethe_program_ops_cuda, lethe_program_ops64, lethe_program_ops64_cuda,
    lethe_program_models, lethe_program_models_cuda, lethe_program_r18, lethe_program_r18_cuda, lethe_program_r18_64,
    lethe_program_r18_64_cuda, lethe_program_bench_cuda, lethe_program_gpt2, lethe_program_gpt2_cuda,
    lethe_program_gpt2_bench_cuda;

static lethe_device *dev;
static int failures;

/* ---------------------------------------------------------------------------
 * frames */

typedef struct Frame {
    const lethe_entry *e;
    void **args;
} Frame;

static size_t dsize(int dt) { return dt == LETHE_F64 ? 8 : dt == LETHE_BOOL ? 1 : 4; }

static int64_t numel(const lethe_arg *a) {
    int64_t n = 1;
    for (int d = 0; d < a->rank; d++)
        n *= a->shape[d];
    return n;
}

static void *zeroed(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) {
        fprintf(stderr, "gpu_test: out of memory\n");
        exit(2);
    }
    memset(p, 0, n ? (n + 63) / 64 * 64 : 64);
    return p;
}

/* deterministic data in [lo, hi): xorshift, as tests/support/harness.c */
static void fill(void *buf, int dt, int64_t n, double lo, double hi, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        double v = lo + (hi - lo) * ((double)(s >> 11) * 0x1p-53);
        switch (dt) {
        case LETHE_F32: ((float *)buf)[i] = (float)v; break;
        case LETHE_F64: ((double *)buf)[i] = v; break;
        case LETHE_I32: ((int32_t *)buf)[i] = (int32_t)floor(v); break;
        default: ((uint8_t *)buf)[i] = v > (lo + hi) / 2; break;
        }
    }
}

/* a padding mask (its name ends in "mask"): weights of a mean */
static int is_mask(const lethe_arg *a) {
    size_t len = strlen(a->name);
    return a->kind == LETHE_INPUT && len >= 4 && !strcmp(a->name + len - 4, "mask");
}

static Frame frame_of(const lethe_entry *e) {
    Frame f = {e, calloc((size_t)e->nargs + 1, sizeof(void *))};
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        f.args[i] = zeroed((size_t)numel(a) * dsize(a->dtype));
        if (a->kind == LETHE_SCALAR && !isnan(a->scalar_default))
            fill(f.args[i], a->dtype, 1, a->scalar_default, a->scalar_default, 0);
        else if (a->kind == LETHE_BUFFER || is_mask(a))   /* a variance, a padding mask's weights: positive */
            fill(f.args[i], a->dtype, numel(a), 0.5, 1.5, (uint64_t)i + 1);
        else if (a->kind != LETHE_SCALAR)
            fill(f.args[i], a->dtype, numel(a), a->dtype == LETHE_I32 ? 0 : -1, a->dtype == LETHE_I32 ? 4 : 1,
                 (uint64_t)i + 1);
    }
    return f;
}

static void frame_drop(Frame *f) {
    for (int i = 0; i < f->e->nargs; i++)
        free(f->args[i]);
    free(f->args);
}

static const lethe_entry *find(const lethe_program *p, const char *name) {
    for (uint32_t i = 0; i < p->nentries; i++)
        if (!strcmp(p->entries[i].name, name))
            return &p->entries[i];
    return NULL;
}

/* How far a (GPU) is from b (CPU). */
typedef struct Err {
    double scaled;         /* worst over tensors of max |a - b| / max |b| */
    const char *where;     /* the tensor of that worst */
    double d2, b2;         /* sums of (a - b)^2 and b^2 over every tensor */
    int64_t same, total;   /* bit-identical elements */
} Err;

static double l2_rel(const Err *e) { return e->d2 == 0 ? 0 : sqrt(e->d2 / fmax(e->b2, 1e-300)); }

/* adds one tensor; NaN where the other has a number is infinitely far */
static void add_err(Err *e, const void *a, const void *b, int dt, int64_t n, const char *name) {
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = lethe_elem_f64(a, dt, i), y = lethe_elem_f64(b, dt, i);
        e->same += !memcmp((const char *)a + i * (int64_t)dsize(dt), (const char *)b + i * (int64_t)dsize(dt), dsize(dt));
        if (isnan(x) != isnan(y) || isinf(x) != isinf(y) || (isinf(x) && x != y)) {
            diff = INFINITY;
            continue;
        }
        if (isnan(x) || isinf(x))
            continue;
        diff = fmax(diff, fabs(x - y));
        scale = fmax(scale, fabs(y));
        e->d2 += (x - y) * (x - y);
        e->b2 += y * y;
    }
    e->total += n;
    double s = diff == 0 ? 0 : diff / fmax(scale, 1e-30);
    if ((dt != LETHE_F32 && dt != LETHE_F64 && s > 0) || isinf(diff))
        s = e->d2 = INFINITY;
    if (s > e->scaled || !e->where) {
        e->scaled = s;
        e->where = name;
    }
}

/* ---------------------------------------------------------------------------
 * check */

/* Realistic weights for a network: the entry's own initializer (e.g.
 * r18_train.init_model, Kaiming), run on the CPU, into both frames by
 * argument name. Uniform random weights make a deep network's activations
 * grow layer by layer until rounding dominates the comparison; single ops
 * keep them (an initializer's zeros can make an output pure rounding
 * noise, a batch-norm shift's update for one). */
static void init_weights(const lethe_program *cpu, const lethe_entry *e, Frame *fc, Frame *fg) {
    char name[256];
    snprintf(name, sizeof name, "%s.init_model", e->name);
    const lethe_entry *init = find(cpu, name);
    if (!init)
        return;
    Frame fi = frame_of(init);
    lethe_ctx ctx = {.seed = 42};
    void *ws = zeroed(init->workspace_bytes);
    if (init->fn(fi.args, ws, &ctx) == 0)
        for (int i = 0; i < init->nargs; i++)
            for (int j = 0; j < e->nargs; j++)
                if ((init->args[i].access & LETHE_WRITE) && !strcmp(init->args[i].name, e->args[j].name)) {
                    size_t n = (size_t)numel(&e->args[j]) * dsize(e->args[j].dtype);
                    memcpy(fc->args[j], fi.args[i], n);
                    memcpy(fg->args[j], fi.args[i], n);
                }
    free(ws);
    frame_drop(&fi);
}

static int compare(const lethe_program *cpu, const lethe_program *gpu, const lethe_entry *ec, int steps, int network,
                   Err *err, char *why, size_t whylen) {
    const lethe_entry *eg = find(gpu, ec->name);
    memset(err, 0, sizeof *err);
    if (!eg || eg->nargs != ec->nargs) {
        snprintf(why, whylen, "the CUDA program has no entry %s", ec->name);
        return -1;
    }
    Frame fc = frame_of(ec), fg = frame_of(eg);
    if (network)
        init_weights(cpu, ec, &fc, &fg);
    int rc = 0;
    for (int s = 0; s < steps && !rc; s++) {
        lethe_ctx cc = {.seed = 0x5eed1234abcdull, .counter = (uint64_t)s + 3};
        lethe_ctx cg = cc;
        cg.device = dev;
        void *ws = zeroed(ec->workspace_bytes);
        int rcpu = ec->fn(fc.args, ws, &cc), rgpu = eg->fn(fg.args, NULL, &cg);
        free(ws);
        if (rcpu || rgpu) {
            snprintf(why, whylen, "calls returned %d (CPU) and %d (GPU)", rcpu, rgpu);
            rc = -1;
        }
    }
    if (!rc && dev->sync(dev)) {
        snprintf(why, whylen, "device sync failed");
        rc = -1;
    }
    for (int i = 0; i < ec->nargs && !rc; i++)
        if (ec->args[i].access & LETHE_WRITE)
            add_err(err, fg.args[i], fc.args[i], ec->args[i].dtype, numel(&ec->args[i]), ec->args[i].name);
    frame_drop(&fc);
    frame_drop(&fg);
    return rc;
}

/* An output named out shaped like the input x: the gradient with respect to
 * the input (see the tolerance above). */
#define INPUT_GRAD_TOL_F32 1e-2
static int is_input_grad(const lethe_entry *e) {
    const lethe_arg *x = NULL, *out = NULL;
    for (int i = 0; i < e->nargs; i++) {
        if (!strcmp(e->args[i].name, "x"))
            x = &e->args[i];
        if (!strcmp(e->args[i].name, "out") && e->args[i].kind == LETHE_OUTPUT)
            out = &e->args[i];
    }
    if (!x || !out || x->rank != out->rank || x->dtype != LETHE_F32)
        return 0;
    for (int d = 0; d < x->rank; d++)
        if (x->shape[d] != out->shape[d])
            return 0;
    return 1;
}

/* Every entry of cpu against gpu. Single ops pass on the worst tensor's
 * scaled error; whole networks on the error of all their outputs together
 * (a tensor near zero, a batch-norm scale's gradient say, is all rounding
 * noise, and training steps amplify it). */
static void check_pair(const char *label, const lethe_program *cpu, const lethe_program *gpu, double tol, int rule_steps,
                       int network) {
    int bad = 0;
    double worst = 0;
    const char *worst_at = "-";
    for (uint32_t i = 0; i < cpu->nentries; i++) {
        const lethe_entry *e = &cpu->entries[i];
        char why[256] = "";
        Err err;
        int steps = !strcmp(e->kind, "rule") ? rule_steps : 1;
        int rc = compare(cpu, gpu, e, steps, network, &err, why, sizeof why);
        double x = network ? l2_rel(&err) : err.scaled;
        double etol = network && is_input_grad(e) && tol < INPUT_GRAD_TOL_F32 ? INPUT_GRAD_TOL_F32 : tol;
        if (rc || !(x <= etol)) {
            printf("FAIL gpu %s %s: %s: relative error %.3g (tolerance %.0e; worst tensor %s at %.3g)\n", label, e->name,
                   rc ? why : network ? "all outputs" : "worst tensor", rc ? NAN : x, etol, err.where ? err.where : "-",
                   err.scaled);
            bad++;
            continue;
        }
        if (e->uses_rng || network)
            printf("PASS gpu %s %s%s: relative error %.2g (worst tensor %s at %.2g), %.4f%% of elements bit-identical\n",
                   label, e->name, e->uses_rng ? " (draws random numbers)" : "", x, err.where ? err.where : "-", err.scaled,
                   err.total ? 100.0 * (double)err.same / (double)err.total : 100.0);
        if (x > worst) {
            worst = x;
            worst_at = e->name;
        }
    }
    failures += bad;
    if (!bad)
        printf("PASS gpu %s: %u entries match the CPU backend (worst relative error %.2g, %s)\n", label, cpu->nentries,
               worst, worst_at);
    fflush(stdout);
}

/* ---------------------------------------------------------------------------
 * bench */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the launch list behind an entry function: call it once on a device that
 * only records what it is given */
static const lethe_cuda_entry *probed;
static int probe_run(lethe_ctx *ctx, const lethe_cuda_entry *e, void *const *args) {
    probed = e;
    return 0;
}

/* An entry of a CUDA program timed on the GPU. Weights get a plausible
 * scale; token ids (i32 inputs) are drawn from the first 256 ids and
 * padding masks are all ones, so a GPT-2 step does a real step's work. */
static int bench(const lethe_program *prog, const char *name, int warmup, int steps) {
    const lethe_entry *e = find(prog, name);
    if (!e) {
        fprintf(stderr, "gpu_test: the program has no entry %s\n", name);
        return 2;
    }
    Frame f = frame_of(e);
    int64_t tokens = 0;
    for (int i = 0; i < e->nargs; i++) {
        const lethe_arg *a = &e->args[i];
        if (a->kind == LETHE_PARAM || a->kind == LETHE_BUFFER)
            fill(f.args[i], a->dtype, numel(a), -0.1, 0.1, (uint64_t)i + 7);
        else if (a->kind == LETHE_INPUT && a->dtype == LETHE_I32 && a->rank == 2) {
            fill(f.args[i], a->dtype, numel(a), 0, 256, (uint64_t)i + 7);
            tokens = numel(a);
        } else if (is_mask(a))
            fill(f.args[i], a->dtype, numel(a), 1, 1, 0);
    }
    lethe_device probe = {.name = "probe", .run = probe_run};
    lethe_ctx ctx = {.seed = 1, .device = &probe};
    e->fn(f.args, NULL, &ctx);
    ctx.device = dev;
    double *t = calloc((size_t)steps + 1, sizeof(double));
    int rc = 0;
    for (int s = 0; s < warmup + steps && !rc; s++) {
        ctx.counter = (uint64_t)s;
        double t0 = now();
        rc = e->fn(f.args, NULL, &ctx);
        if (s >= warmup)
            t[s - warmup] = now() - t0;
    }
    rc |= dev->sync(dev);
    if (!rc) {
        qsort(t, (size_t)steps, sizeof(double), cmp_double);
        double total = 0;
        for (int s = 0; s < steps; s++)
            total += t[s];
        printf("entry=%s device=\"%s\" median_ms=%.3f min_ms=%.3f max_ms=%.3f total_ms=%.1f steps=%d launches=%u", name,
               dev->name, 1e3 * t[steps / 2], 1e3 * t[0], 1e3 * t[steps - 1], 1e3 * total, steps,
               probed ? probed->nlaunches : 0u);
        if (tokens)
            printf(" tokens_per_s=%.0f", (double)tokens / t[steps / 2]);
        printf("\n");
    }
    free(t);
    frame_drop(&f);
    return rc ? 1 : 0;
}

/* ---------------------------------------------------------------------------
 * main */

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "check";
    char err[LETHE_ERR_LEN];
    if (lethe_cuda_open(0, &dev, err)) {
        if (!strcmp(cmd, "check")) {
            static const char *const what[] = {"ops", "ops f64", "models", "ResNet-18 w16, 1 step", "ResNet-18 w16, 3 steps",
                                               "ResNet-18 w16 f64, 1 step", "GPT-2 small, 2 steps"};
            for (int i = 0; i < 7; i++)
                printf("SKIP gpu %s: no GPU here (%s)\n", what[i], err);
            return 0;
        }
        fprintf(stderr, "gpu_test: no GPU: %s\n", err);
        return 77;
    }
    if (!strcmp(cmd, "info")) {
        lethe_nvrtc *nv = lethe_nvrtc_open(err);
        int major = 0, minor = 0;
        if (nv)
            lethe_nvrtc_version(nv, &major, &minor);
        printf("device=\"%s\" nvrtc=%d.%d programs_arch=%s\n", dev->name, major, minor,
               lethe_program_bench_cuda.target ? lethe_program_bench_cuda.target : "?");
        lethe_nvrtc_close(nv);
    } else if (!strcmp(cmd, "check")) {
        check_pair("ops", &lethe_program_ops, &lethe_program_ops_cuda, 1e-5, 2, 0);
        check_pair("ops f64", &lethe_program_ops64, &lethe_program_ops64_cuda, 1e-12, 2, 0);
        check_pair("models", &lethe_program_models, &lethe_program_models_cuda, 2e-4, 2, 1);
        check_pair("ResNet-18 w16, 1 step", &lethe_program_r18, &lethe_program_r18_cuda, 2e-4, 1, 1);
        check_pair("ResNet-18 w16, 3 steps", &lethe_program_r18, &lethe_program_r18_cuda, 1e-2, 3, 1);
        check_pair("ResNet-18 w16 f64, 1 step", &lethe_program_r18_64, &lethe_program_r18_64_cuda, 1e-9, 1, 1);
        check_pair("GPT-2 small, 2 steps", &lethe_program_gpt2, &lethe_program_gpt2_cuda, 2e-4, 2, 1);
    } else if (!strcmp(cmd, "check-r18") && argc > 3) {
        check_pair("ResNet-18 w16, 1 step", &lethe_program_r18, &lethe_program_r18_cuda, atof(argv[2]), 1, 1);
        check_pair("ResNet-18 w16, 3 steps", &lethe_program_r18, &lethe_program_r18_cuda, atof(argv[3]), 3, 1);
    } else if ((!strcmp(cmd, "bench") || !strcmp(cmd, "bench-gpt2")) && argc > 2) {
        const lethe_program *prog = !strcmp(cmd, "bench") ? &lethe_program_bench_cuda : &lethe_program_gpt2_bench_cuda;
        int rc = bench(prog, argv[2], argc > 3 ? atoi(argv[3]) : 3, argc > 4 ? atoi(argv[4]) : 20);
        lethe_cuda_close(dev);
        return rc;
    } else {
        fprintf(stderr, "usage: lethe-gpu-test info | check | check-r18 TOL1 TOL3 | bench ENTRY [WARMUP STEPS] | "
                        "bench-gpt2 ENTRY [WARMUP STEPS]\n");
        return 2;
    }
    lethe_cuda_close(dev);
    return failures ? 1 : 0;
}
